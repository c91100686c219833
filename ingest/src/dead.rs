//! `mailpipe-ingest dead list|replay`: dead letters an operator can read and act on.
//!
//! Both walk `<prefix>.dead` once without losing anything: the queue depth is read first
//! (a passive declare), then that many messages are taken with `basic.get` and **held
//! unacked** until the pass ends, so none is seen twice; every message not replayed is
//! then returned with `basic.nack(requeue)`. If the tool dies half-way, the broker returns
//! the unacked messages itself. A replayed message is acked only after its republish is
//! confirmed; at worst it exists twice (in its stage queue and still in dead letters),
//! never zero times.
//!
//! What a dead letter says:
//! * `stage`: the `mailpipe-dead-stage` header (render, deliver), or for messages the
//!   broker dead-lettered (`x-death`), the queue they died in;
//! * `reason`: the `mailpipe-dead-reason` header, or the broker's `x-death` reason
//!   (`delivery_limit`: a consumer died on it too often);
//! * `smtp`: the last SMTP reply quoted in the reason, when it has one.

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Acker, BasicProperties};
use mailpipe_common::amqp::{
    Broker, BrokerError, DEAD_REASON_HEADER, DEAD_STAGE_HEADER, PublishError, Stage, death_reason,
    header_str,
};
use mailpipe_common::contract::{Job, META_HEADER, RenderedMeta, SmtpReply};
use mailpipe_common::domain::{BatchId, EmailAddress, JobId};
use mailpipe_common::pipeline::{BATCH_HEADER, JOB_ID_HEADER, Pipeline};
use serde::Serialize;

/// Which dead letters a command is about (`None` for both: all of them).
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    pub batch: Option<BatchId>,
    pub job: Option<JobId>,
}

impl DeadFilter {
    pub fn matches(&self, d: &DeadLetter) -> bool {
        self.batch
            .as_ref()
            .is_none_or(|b| d.batch.as_deref() == Some(b.as_str()))
            && self
                .job
                .as_ref()
                .is_none_or(|j| d.job_id.as_deref() == Some(j.as_str()))
    }
}

/// One dead letter, as `dead list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub job_id: Option<String>,
    pub batch: Option<String>,
    /// `render` or `deliver` (`null` when neither header nor `x-death` says).
    pub stage: Option<String>,
    pub reason: Option<String>,
    /// `mailpipe` (a stage dead-lettered it on purpose) or `broker` (`x-death`).
    pub reason_from: Option<&'static str>,
    /// The last SMTP reply the reason quotes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpReply>,
    /// Envelope recipients of a rendered message (a replay sends to these).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<EmailAddress>,
    /// Delivery attempts spent (rendered messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Whether ingest's view of the events stream shows the job delivered.
    pub delivered: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub queue: String,
    /// Messages in the queue when the pass started.
    pub total: u64,
    /// Of those, the ones matching the filter (all listed).
    pub matched: u64,
    pub dead_letters: Vec<DeadLetter>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    pub job_id: Option<String>,
    pub stage: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub job_id: Option<String>,
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub queue: String,
    pub dry_run: bool,
    /// Messages in the queue when the pass started.
    pub total: u64,
    pub matched: u64,
    /// Republished to their stage (with `dry_run`: would be).
    pub replayed: Vec<Replayed>,
    /// Matching but left in dead letters, with why.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("republishing {job}: {source} (it stays in dead letters)")]
    Publish {
        job: String,
        #[source]
        source: PublishError,
    },
}

/// Lists the dead letters matching `filter`; the queue is left as it was.
pub async fn list(
    broker: &Broker,
    filter: &DeadFilter,
    delivered: impl Fn(&JobId) -> bool,
) -> Result<Listing, DeadError> {
    let mut pass = Pass::open(broker).await?;
    let mut dead_letters = Vec::new();
    let result: Result<(), DeadError> = async {
        while let Some(msg) = pass.next().await? {
            let d = describe(
                &msg.delivery.properties,
                &msg.delivery.data,
                broker.topology().prefix(),
                &delivered,
            );
            pass.hold(msg.delivery.acker);
            if filter.matches(&d) {
                dead_letters.push(d);
            }
        }
        Ok(())
    }
    .await;
    pass.release().await;
    result?;
    Ok(Listing {
        queue: pass.queue,
        total: pass.total,
        matched: dead_letters.len() as u64,
        dead_letters,
    })
}

/// Republishes the dead letters matching `filter` to the stage they died in: a job to
/// the render queue, a rendered message (its attempts reset to 0) to the deliver queue.
/// Each is acked only after the republish is confirmed. Left in dead letters: the ones
/// not matching, jobs the events stream shows delivered (deliver would not send them
/// again: replaying them would only lose the dead letter), and the unreadable.
pub async fn replay(
    pipeline: &Pipeline,
    filter: &DeadFilter,
    dry_run: bool,
    delivered: impl Fn(&JobId) -> bool,
) -> Result<ReplayReport, DeadError> {
    let broker = pipeline.broker();
    let mut pass = Pass::open(broker).await?;
    let (mut replayed, mut skipped, mut matched) = (Vec::new(), Vec::new(), 0);
    let result: Result<(), DeadError> = async {
        while let Some(msg) = pass.next().await? {
            let props = &msg.delivery.properties;
            let body = &msg.delivery.data;
            let d = describe(props, body, broker.topology().prefix(), &delivered);
            if !filter.matches(&d) {
                pass.hold(msg.delivery.acker);
                continue;
            }
            matched += 1;
            let skip = |why: String| Skipped {
                job_id: d.job_id.clone(),
                why,
            };
            if d.delivered {
                skipped.push(skip(
                    "the job is already delivered (deliver never sends a delivered job id again)"
                        .into(),
                ));
                pass.hold(msg.delivery.acker);
                continue;
            }
            let stage = match d.stage.as_deref() {
                Some("render") => Stage::Render,
                Some("deliver") => Stage::Deliver,
                other => {
                    skipped.push(skip(format!(
                        "unknown stage {other:?}: cannot tell where it goes"
                    )));
                    pass.hold(msg.delivery.acker);
                    continue;
                }
            };
            let publish = match prepare(stage, props, body) {
                Ok(p) => p,
                Err(why) => {
                    skipped.push(skip(why));
                    pass.hold(msg.delivery.acker);
                    continue;
                }
            };
            if dry_run {
                replayed.push(Replayed {
                    job_id: d.job_id.clone(),
                    stage: stage.as_str().into(),
                });
                pass.hold(msg.delivery.acker);
                continue;
            }
            let job = d.job_id.clone().unwrap_or_default();
            let sent = match &publish {
                Republish::Job(job) => pipeline.send_job(job).await,
                Republish::Rendered(meta) => pipeline.send_rendered(meta, body).await,
            };
            let confirmed = match sent {
                Ok(pending) => pending.confirmed().await,
                Err(e) => Err(e),
            };
            if let Err(source) = confirmed {
                pass.hold(msg.delivery.acker);
                return Err(DeadError::Publish { job, source });
            }
            msg.delivery.acker.ack(BasicAckOptions::default()).await?;
            tracing::info!(job = %job, stage = stage.as_str(), "dead letter replayed");
            replayed.push(Replayed {
                job_id: d.job_id.clone(),
                stage: stage.as_str().into(),
            });
        }
        Ok(())
    }
    .await;
    pass.release().await;
    result?;
    Ok(ReplayReport {
        queue: pass.queue,
        dry_run,
        total: pass.total,
        matched,
        replayed,
        skipped,
    })
}

enum Republish {
    Job(Box<Job>),
    Rendered(Box<RenderedMeta>),
}

fn prepare(stage: Stage, props: &BasicProperties, body: &[u8]) -> Result<Republish, String> {
    match stage {
        Stage::Render => Job::from_queue(body)
            .map(|j| Republish::Job(Box::new(j)))
            .map_err(|e| format!("not a readable job: {e}")),
        Stage::Deliver => {
            let header = header_str(props, META_HEADER)
                .ok_or("no mailpipe-meta header: not a rendered message")?;
            let mut meta = RenderedMeta::from_header_value(&header)
                .map_err(|e| format!("unreadable mailpipe-meta: {e}"))?;
            meta.attempt = 0;
            Ok(Republish::Rendered(Box::new(meta)))
        }
    }
}

/// One pass over the dead-letter queue: at most the depth it had at the start.
struct Pass {
    channel: lapin::Channel,
    queue: String,
    total: u64,
    taken: u64,
    held: Vec<Acker>,
}

impl Pass {
    async fn open(broker: &Broker) -> Result<Self, DeadError> {
        let channel = broker.channel().await?;
        let queue = broker.topology().dead_queue();
        let q = channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            channel,
            queue,
            total: u64::from(q.message_count()),
            taken: 0,
            held: Vec::new(),
        })
    }

    async fn next(&mut self) -> Result<Option<BasicGetMessage>, DeadError> {
        if self.taken >= self.total {
            return Ok(None);
        }
        self.taken += 1;
        Ok(self
            .channel
            .basic_get(
                ShortString::from(self.queue.as_str()),
                BasicGetOptions { no_ack: false },
            )
            .await?)
    }

    fn hold(&mut self, acker: Acker) {
        self.held.push(acker);
    }

    /// Returns every held message to the queue.
    async fn release(&mut self) {
        for acker in self.held.drain(..) {
            if let Err(e) = acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
            {
                // The channel is gone: the broker returns unacked messages by itself.
                tracing::warn!(error = %e, "returning a dead letter failed; the broker requeues it when the channel closes");
            }
        }
        self.channel
            .close(200, "dead-letter pass done".into())
            .await
            .ok();
    }
}

/// What a dead letter says about itself.
pub fn describe(
    props: &BasicProperties,
    body: &[u8],
    prefix: &str,
    delivered: impl Fn(&JobId) -> bool,
) -> DeadLetter {
    let meta =
        header_str(props, META_HEADER).and_then(|h| RenderedMeta::from_header_value(&h).ok());
    let stage = header_str(props, DEAD_STAGE_HEADER).or_else(|| {
        death_queue(props)
            // `<p>.deliver.bulk.3`, `<p>.render.transactional`: the stage is the first part.
            .and_then(|q| {
                q.strip_prefix(&format!("{prefix}."))
                    .and_then(|rest| rest.split('.').next())
                    .map(str::to_owned)
            })
            .filter(|s| s == "render" || s == "deliver")
    });
    let job = (stage.as_deref() == Some("render"))
        .then(|| Job::from_queue(body).ok())
        .flatten();
    let job_id = header_str(props, JOB_ID_HEADER)
        .or_else(|| props.message_id().as_ref().map(|m| m.as_str().to_owned()))
        .or_else(|| meta.as_ref().map(|m| m.job_id.as_str().to_owned()))
        .or_else(|| job.as_ref().map(|j| j.id.as_str().to_owned()));
    let batch = header_str(props, BATCH_HEADER)
        .or_else(|| {
            meta.as_ref()
                .and_then(|m| m.batch.as_ref())
                .map(|b| b.as_str().to_owned())
        })
        .or_else(|| {
            job.as_ref()
                .and_then(|j| j.batch.as_ref())
                .map(|b| b.as_str().to_owned())
        });
    let (reason, reason_from) = match header_str(props, DEAD_REASON_HEADER) {
        Some(r) => (Some(r), Some("mailpipe")),
        None => match death_reason(props) {
            Some(r) => (Some(r), Some("broker")),
            None => (None, None),
        },
    };
    let smtp = reason.as_deref().and_then(last_reply);
    let delivered = job_id
        .as_deref()
        .and_then(|j| JobId::parse(j).ok())
        .is_some_and(|j| delivered(&j));
    DeadLetter {
        job_id,
        batch,
        stage,
        smtp,
        reason,
        reason_from,
        recipients: meta
            .as_ref()
            .map(|m| m.recipients.clone())
            .unwrap_or_default(),
        attempt: meta.as_ref().map(|m| m.attempt),
        delivered,
    }
}

/// The queue of the newest `x-death` entry.
fn death_queue(props: &BasicProperties) -> Option<String> {
    let headers = props.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("queue")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The last SMTP reply quoted in a reason: `... last: 451 4.7.500 Server busy`,
/// `recipients refused: a@x: 550 5.1.1 unknown; b@y: 550 5.1.1 unknown`.
pub fn last_reply(reason: &str) -> Option<SmtpReply> {
    let bytes = reason.as_bytes();
    let mut found = None;
    for i in 0..bytes.len().saturating_sub(3) {
        let starts = i == 0 || (i >= 2 && matches!(&bytes[i - 2..i], b": " | b"; "));
        if starts
            && matches!(bytes[i], b'2'..=b'5')
            && bytes[i + 1].is_ascii_digit()
            && bytes[i + 2].is_ascii_digit()
            && bytes[i + 3] == b' '
        {
            found = Some(i);
        }
    }
    let i = found?;
    let code: u16 = reason[i..i + 3].parse().ok()?;
    let rest = &reason[i + 4..];
    // In a list of refusals, the reply ends where the next address begins.
    let text = match rest.find("; ") {
        Some(end) if rest[end + 2..].contains(": ") => &rest[..end],
        _ => rest,
    };
    Some(SmtpReply::new(code, text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_reply_is_found_in_the_reasons_deliver_writes() {
        let r = last_reply("gave up after 6 attempts; last: 451 4.7.500 Server busy, try later")
            .unwrap();
        assert_eq!(
            (r.code, r.enhanced.as_deref(), r.text.as_str()),
            (451, Some("4.7.500"), "4.7.500 Server busy, try later")
        );
        let r =
            last_reply("refused by the server: 550 5.1.1 RESOLVER.ADR.RecipNotFound; not found")
                .unwrap();
        assert_eq!(r.text, "5.1.1 RESOLVER.ADR.RecipNotFound; not found");
        let r = last_reply("recipients refused: a@x.example: 550 5.1.1 unknown; b@x.example: 552 5.2.2 mailbox full").unwrap();
        assert_eq!((r.code, r.text.as_str()), (552, "5.2.2 mailbox full"));
        assert_eq!(
            last_reply("render failed: template \"nope\" not found"),
            None
        );
        assert_eq!(last_reply("delivery_limit"), None);
        assert_eq!(
            last_reply("cannot be sent by this pool: 600 recipients > 500"),
            None
        );
    }
}
