//! Delivering one rendered message: pick a mailbox, send, classify the reply, record the
//! outcome durably, and only then let the caller ack. `DeliverStage::handle` returns what
//! happened, so tests can drive it one message at a time; the consume loop is dull.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use mailpipe_common::amqp::{PublishError, Stage, header_str};
use mailpipe_common::contract::{
    DeliveryEvent, EventKind, META_HEADER, RecipientRefusal, RenderedMeta, SmtpReply,
    SuppressedRecipient,
};
use mailpipe_common::domain::EmailAddress;
use mailpipe_common::pipeline::{Pipeline, rendered_properties};
use mailpipe_common::store::{
    AcceptedSend, BatchControl, Decision, JobState, SendOutcome, SendRules, SendStart,
    UnsettledSend,
};
use uuid::Uuid;

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub mod claims;
pub mod compose;
pub mod drill;
pub mod ledger;
pub mod suppression;

mod attempt;
mod graph_attempt;
mod settle;
mod verdict;

use crate::graph::GraphClient;
use crate::metrics;
use crate::pool::{AcquireError, Completion, Lease, MailboxPool, SessionError};
use crate::settings::{DeliverSettings, UncertainPolicy};
use crate::smtp::classify::ReplyClass;
use crate::smtp::{SendReport, SmtpFailure, SmtpStage};
use attempt::{Attempt, SentRecord};
use claims::JobClaims;
use ledger::DeliveredJobs;
use settle::refusals;
use suppression::Screened;
use verdict::Verdict;

/// How long a job of a paused batch waits in the retry ladder before it is looked at
/// again (the ladder's first delay at least this long; 30 s by default).
const PAUSED_RECHECK: chrono::Duration = chrono::Duration::seconds(10);

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The server accepted it (some recipients may have been refused: see the event).
    Delivered { mailbox: String },
    /// The events stream already shows this job delivered: not sent again.
    AlreadyDelivered,
    /// A transient failure: the message waits in the retry ladder.
    Retry { attempt: u32 },
    /// No reply came after the message data: it may have been accepted, so it waits in the
    /// retry ladder and is not sent again before `until`.
    Uncertain { until: DateTime<Utc> },
    /// A copy of a job whose last send is uncertain, or of a paused batch: back to the
    /// retry ladder, unsent, with no attempt spent.
    Held { until: DateTime<Utc> },
    /// Its batch was cancelled: recorded `cancelled`, never sent.
    Cancelled,
    /// Its `not_after` passed: recorded `expired`, never sent.
    Expired,
    /// Every recipient is on the suppression list: recorded `suppressed`, never sent.
    Suppressed,
    /// Permanently failed: in dead letters with its reason.
    Dead { reason: String },
    /// Shutdown came while it waited for a mailbox: it goes back to the queue unsent.
    Returned,
}

#[derive(Debug, Clone)]
pub struct DeliverStage {
    pool: Arc<MailboxPool>,
    pipeline: Pipeline,
    delivered: Arc<DeliveredJobs>,
    claims: Arc<JobClaims>,
    max_attempts: u32,
    uncertain_policy: UncertainPolicy,
    uncertain_hold: chrono::Duration,
    /// The longest a send may take before its data starts; the record counts an open
    /// send at its start plus this and one more step (its deadline).
    data_budget: std::time::Duration,
    step_timeout: std::time::Duration,
    /// This process among the deliver processes (the owner of its leases and sends).
    owner: Uuid,
    /// Microsoft Graph, for mailboxes with `transport = "graph"` (and feedback's reads).
    graph: Option<Arc<GraphClient>>,
    shutdown: CancellationToken,
}

/// Why the last try failed, carried into the retry or dead-letter record.
struct LastFailure {
    reply: SmtpReply,
    mailbox: Option<usize>,
}

impl DeliverStage {
    pub fn new(
        pool: Arc<MailboxPool>,
        pipeline: Pipeline,
        delivered: Arc<DeliveredJobs>,
        settings: &DeliverSettings,
        owner: Uuid,
        graph: Option<Arc<GraphClient>>,
        shutdown: CancellationToken,
    ) -> Self {
        let step_timeout = settings.smtp_timeout();
        Self {
            pool,
            pipeline,
            delivered,
            claims: Arc::new(JobClaims::default()),
            max_attempts: settings.max_attempts.max(1),
            uncertain_policy: settings.uncertain_policy,
            uncertain_hold: chrono::Duration::from_std(std::time::Duration::from_millis(
                settings.uncertain_hold_ms,
            ))
            .unwrap_or_default(),
            data_budget: step_timeout * 2,
            step_timeout,
            owner,
            graph,
            shutdown,
        }
    }

    pub fn pool(&self) -> &Arc<MailboxPool> {
        &self.pool
    }

    /// Handles one message. `Err` only when the outcome could not be recorded (broker
    /// trouble): the caller must not ack then, so the message comes back.
    pub async fn handle(
        &self,
        props: &BasicProperties,
        mime: &[u8],
    ) -> Result<DeliveryOutcome, PublishError> {
        let meta = match header_str(props, META_HEADER).map(|v| RenderedMeta::from_header_value(&v))
        {
            Some(Ok(meta)) => meta,
            Some(Err(e)) => return self.unreadable(props, mime, &e.to_string()).await,
            None => {
                return self
                    .unreadable(props, mime, "no mailpipe-meta header")
                    .await;
            }
        };
        // One send per job at a time: a second copy waits here until the first is done,
        // then finds it delivered (or held back) below.
        let _claim = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Ok(DeliveryOutcome::Returned),
            claim = self.claims.claim(&meta.job_id) => claim,
        };
        if let Some((send, outcome, event)) = self.delivered.pending(&meta.job_id) {
            // Delivered here, and its record failed before: write the record, never the
            // mail again.
            self.pipeline
                .record_outcome(send, outcome, &event)
                .await?
                .confirmed()
                .await?;
            self.delivered.mark_recorded(&meta.job_id);
            metrics::MESSAGES.with_label_values(&["duplicate"]).inc();
            return Ok(DeliveryOutcome::AlreadyDelivered);
        }
        let listed = match self.verdict(&meta).await? {
            (Verdict::Send, listed) => listed,
            (other, _) => return self.not_sent(&meta, mime, other).await,
        };
        // Suppressed recipients leave the envelope here (before the mailbox is picked, so
        // the quota counts only the others); with nobody left the job ends `suppressed`.
        let mut meta = match suppression::screen_against(self.pipeline.store(), meta, &listed)
            .await?
        {
            Screened::Unchanged(meta) | Screened::Reduced(meta, _) => meta,
            Screened::Nobody(meta, dropped) => return self.all_suppressed(&meta, dropped).await,
        };

        let waited = Instant::now();
        // Mailbox-level refusals reroute without spending an attempt; but a message that
        // every mailbox refuses is itself suspect, so after this many reroutes it is
        // treated as a transient failure (an attempt is spent).
        let reroute_limit = self.pool.mailboxes().len() + 2;
        let mut reroutes = 0;
        let last = loop {
            // A message waiting for quota (maybe for hours) must not hold up shutdown.
            let acquired = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(DeliveryOutcome::Returned),
                acquired = self.pool.acquire(&meta) => acquired,
            };
            let lease = match acquired {
                Ok(lease) => lease,
                Err(AcquireError::Impossible(impossible)) => {
                    let reason = format!("cannot be sent by this pool: {impossible}");
                    return self
                        .dead(&meta, props, mime, &reason, None, None, vec![])
                        .await;
                }
                Err(AcquireError::OwnedElsewhere) => {
                    // Back to the queue, where the process owning a mailbox for it takes it.
                    metrics::MESSAGES.with_label_values(&["elsewhere"]).inc();
                    return Ok(DeliveryOutcome::Returned);
                }
            };
            metrics::WAIT_SECONDS.observe(waited.elapsed().as_secs_f64());
            // Right before the send, the record decides (`send_on`, one transaction):
            // delivered before (by another process, or before a restart) is never sent
            // twice, a batch paused or cancelled while this one waited is honoured, the
            // tenant's budget is shared exactly with the other processes, and while the
            // database is away this waits, so nothing is sent that could not be recorded.
            let idx = lease.idx;
            let ticket = lease.ticket();
            let refusal = match self.attempt(&meta, mime, lease).await? {
                Attempt::Fenced => {
                    // The mailbox's lease ended: nothing was sent; another mailbox (or
                    // process) takes it, and no attempt is spent.
                    continue;
                }
                Attempt::NotSent(verdict) => {
                    // The decision said no (another copy in flight or done, a batch
                    // control, an uncertain send): nothing was sent, and the answer is final
                    // for this message.
                    return self.not_sent(&meta, mime, verdict).await;
                }
                Attempt::Rescreen => {
                    // Suppressed since it was screened: screened again, then another pick.
                    meta = match suppression::screen(self.pipeline.store(), meta).await? {
                        Screened::Unchanged(meta) | Screened::Reduced(meta, _) => meta,
                        Screened::Nobody(meta, dropped) => {
                            return self.all_suppressed(&meta, dropped).await;
                        }
                    };
                    continue;
                }
                Attempt::TenantFull(until) => {
                    // Another process took the tenant's last room: no send until the
                    // window frees it (the ownership round imports those sends meanwhile).
                    let wait = (until - Utc::now()).to_std().unwrap_or_default();
                    tokio::select! {
                        biased;
                        _ = self.shutdown.cancelled() => return Ok(DeliveryOutcome::Returned),
                        _ = tokio::time::sleep(wait.max(std::time::Duration::from_millis(10))) => {}
                    }
                    continue;
                }
                Attempt::Delivered(report, send) => {
                    self.note_refusals(&meta, idx, &report).await;
                    return self.delivered(&meta, mime, idx, report, send).await;
                }
                Attempt::Uncertain(reply, send) => {
                    return self.uncertain(&meta, props, mime, idx, reply, send).await;
                }
                Attempt::AllRefused(report) => {
                    self.note_refusals(&meta, idx, &report).await;
                    let reason = format!("every recipient refused: {}", report.reply);
                    let refused = refusals(&report);
                    return self
                        .dead(
                            &meta,
                            props,
                            mime,
                            &reason,
                            Some(report.reply),
                            Some(idx),
                            refused,
                        )
                        .await;
                }
                Attempt::Failed { class, reply } => match class {
                    ReplyClass::Mailbox(problem) => {
                        metrics::REFUSALS
                            .with_label_values(&[
                                self.pool.mailboxes()[idx].address.as_str(),
                                problem.as_str(),
                            ])
                            .inc();
                        self.pool.hold_mailbox(ticket, problem);
                        reply
                    }
                    ReplyClass::Tenant(problem) => {
                        metrics::REFUSALS
                            .with_label_values(&[
                                self.pool.mailboxes()[idx].address.as_str(),
                                problem.as_str(),
                            ])
                            .inc();
                        self.pool
                            .hold_tenant(self.pool.mailboxes()[idx].tenant, problem);
                        reply
                    }
                    ReplyClass::MessagePermanent => {
                        let reason = match crate::smtp::classify::sender_domain_refusal(&reply) {
                            Some(domain) => {
                                format!("refused by the server: {reply} ({})", domain.hint())
                            }
                            None => format!("refused by the server: {reply}"),
                        };
                        return self
                            .dead(&meta, props, mime, &reason, Some(reply), Some(idx), vec![])
                            .await;
                    }
                    ReplyClass::Transient | ReplyClass::Accepted => {
                        break LastFailure {
                            reply,
                            mailbox: Some(idx),
                        };
                    }
                },
            };
            reroutes += 1;
            if reroutes >= reroute_limit {
                break LastFailure {
                    reply: SmtpReply {
                        code: 0,
                        enhanced: None,
                        text: format!(
                            "refused at mailbox level by {reroutes} mailboxes in a row; last: {refusal}"
                        ),
                    },
                    mailbox: None,
                };
            }
        };
        self.retry(&meta, props, mime, last).await
    }
}
