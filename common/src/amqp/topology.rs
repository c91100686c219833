//! Names and declaration of every exchange and queue, all under one prefix.
//!
//! ```text
//! {p}.work    direct  --render-->  {p}.render   quorum, x-delivery-limit, DLX {p}.dead
//!                     --render.transactional--> {p}.render.transactional  (the same)
//!                     --deliver--> {p}.deliver  quorum, x-delivery-limit, DLX {p}.dead
//!                     --deliver.transactional--> {p}.deliver.transactional  (the same)
//!                     --deliver.bulk.{n}-->      {p}.deliver.bulk.{n}       (n = 1..=bulk_queues)
//! {p}.retry   direct  --render.{ms}--> {p}.retry.render.{ms}  TTL = ms, DLX {p}.work/render
//!                     --deliver.lanes.{ms}--> {p}.retry.deliver.lanes.{ms}  TTL = ms, DLX {p}.work
//! {p}.dead    fanout  --> {p}.dead     quorum: dead letters, with their reason in headers
//!                     --> {p}.dead.log quorum: a copy ingest reads to record broker dead letters
//! {p}.events  fanout  --> {p}.events   stream: delivery events, replayable from a timestamp
//! ```
//! Declaring is idempotent, so every process declares on every (re)connect and no
//! separate migration step exists.
//!
//! RabbitMQ never changes the arguments of an existing queue (a declare with other values
//! fails with PRECONDITION_FAILED). So a retry queue is named by its delay: a changed
//! `retry_delays_ms` declares new queues, and the old ones drain into the stage as their
//! messages expire. `delivery_limit` and `events_max_age` are arguments of queues that hold
//! data; a changed value is reported by [`Topology::explain`] with what to do
//! (docs/operations.md, "Upgrading and changing settings").
//!
//! deliver reads several queues (its lanes, see `contract::DeliverQueue`), and a message
//! must come back from the retry ladder to the queue it came from. So deliver's retry queues
//! set no dead-letter routing key: an expired message keeps the keys it was published with,
//! and it is published with its deliver queue's key in the `CC` header (RabbitMQ routes on
//! `CC` keys too, and keeps them when dead-lettering). The work exchange has no binding for
//! the ladder's own key, so only the `CC` key routes it.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use super::set_header;
use crate::config::RabbitSettings;
use crate::contract::{DeliverQueue, Lane};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Render,
    Deliver,
}

impl Stage {
    pub const ALL: [Stage; 2] = [Stage::Render, Stage::Deliver];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Render => "render",
            Stage::Deliver => "deliver",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    retry_delays: Vec<Duration>,
    delivery_limit: u32,
    events_max_age: String,
    vhost: String,
    bulk_queues: u16,
}

impl Topology {
    pub fn new(settings: &RabbitSettings) -> Self {
        Self {
            prefix: settings.prefix.clone(),
            retry_delays: settings.retry_delays_ms.clone(),
            delivery_limit: settings.delivery_limit,
            events_max_age: settings.events_max_age.clone(),
            vhost: vhost_of(&settings.url),
            bulk_queues: settings.bulk_queues,
        }
    }

    pub fn bulk_queues(&self) -> u16 {
        self.bulk_queues
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn work_exchange(&self) -> String {
        format!("{}.work", self.prefix)
    }

    pub fn stage_queue(&self, stage: Stage) -> String {
        format!("{}.{}", self.prefix, stage.as_str())
    }

    /// The queue of one deliver lane (`stage_queue(Stage::Deliver)` is bulk queue 0).
    pub fn deliver_queue(&self, queue: DeliverQueue) -> String {
        format!("{}.{}", self.prefix, queue.routing_key())
    }

    /// Every deliver queue, the transactional one first.
    pub fn deliver_queues(&self) -> Vec<(DeliverQueue, String)> {
        DeliverQueue::all(self.bulk_queues)
            .map(|q| (q, self.deliver_queue(q)))
            .collect()
    }

    /// render's queue for `lane`: transactional jobs have their own, so that they never
    /// wait behind a batch's backlog in render either.
    pub fn render_queue(&self, lane: Lane) -> String {
        format!("{}.{}", self.prefix, Self::render_key(lane))
    }

    /// The routing key of render's queue for `lane`.
    pub fn render_key(lane: Lane) -> &'static str {
        match lane {
            Lane::Transactional => "render.transactional",
            Lane::Bulk => "render",
        }
    }

    /// The work queues of a stage (its lanes), the transactional one first.
    pub fn stage_queues(&self, stage: Stage) -> Vec<String> {
        match stage {
            Stage::Render => [Lane::Transactional, Lane::Bulk]
                .map(|l| self.render_queue(l))
                .to_vec(),
            Stage::Deliver => self.deliver_queues().into_iter().map(|(_, q)| q).collect(),
        }
    }

    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }

    /// The retry queue for `delay`: named by the delay, so changing the ladder never
    /// redeclares an existing queue with another TTL.
    pub fn retry_queue(&self, stage: Stage, delay: Duration) -> String {
        format!("{}.retry.{}", self.prefix, Self::retry_key(stage, delay))
    }

    fn retry_key(stage: Stage, delay: Duration) -> String {
        match stage {
            // Named apart from the ladder before lanes (`deliver.{ms}`, which routed back to
            // one queue): its queues keep their arguments and drain into `{p}.deliver`.
            Stage::Deliver => format!("deliver.lanes.{}", delay.as_millis()),
            Stage::Render => format!("render.{}", delay.as_millis()),
        }
    }

    pub fn retry_levels(&self) -> usize {
        self.retry_delays.len()
    }

    /// Where a message that failed `attempt` times (1-based) waits: the ladder's step for
    /// that attempt, the last step once the ladder is climbed. `None` when no ladder exists.
    pub fn retry_route(&self, stage: Stage, attempt: u32) -> Option<(String, String, Duration)> {
        let last = self.retry_delays.len().checked_sub(1)?;
        let level = (attempt.saturating_sub(1) as usize).min(last);
        let delay = self.retry_delays[level];
        Some((self.retry_exchange(), Self::retry_key(stage, delay), delay))
    }

    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// A copy of every dead letter, for ingest to record the jobs the broker
    /// dead-lettered (`ingest/src/dead_log.rs`); the operator's `<p>.dead` is untouched.
    pub fn dead_log_queue(&self) -> String {
        format!("{}.dead.log", self.prefix)
    }

    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    pub fn events_stream(&self) -> String {
        format!("{}.events", self.prefix)
    }

    pub async fn declare(&self, ch: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let durable_q = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (name, kind) in [
            (self.work_exchange(), ExchangeKind::Direct),
            (self.retry_exchange(), ExchangeKind::Direct),
            (self.dead_exchange(), ExchangeKind::Fanout),
            (self.events_exchange(), ExchangeKind::Fanout),
        ] {
            ch.exchange_declare(
                ShortString::from(name),
                kind,
                durable,
                FieldTable::default(),
            )
            .await?;
        }

        let mut dead_args = FieldTable::default();
        set_header(&mut dead_args, "x-queue-type", "quorum");
        ch.queue_declare(ShortString::from(self.dead_queue()), durable_q, dead_args)
            .await?;
        self.bind(ch, &self.dead_queue(), &self.dead_exchange(), "")
            .await?;
        let mut log_args = FieldTable::default();
        set_header(&mut log_args, "x-queue-type", "quorum");
        ch.queue_declare(
            ShortString::from(self.dead_log_queue()),
            durable_q,
            log_args,
        )
        .await?;
        self.bind(ch, &self.dead_log_queue(), &self.dead_exchange(), "")
            .await?;

        // `<p>.render` first: a refused declare names the queue every deployment has.
        let mut work: Vec<(String, String)> = [Lane::Bulk, Lane::Transactional]
            .map(|l| (self.render_queue(l), Self::render_key(l).to_owned()))
            .to_vec();
        work.extend(
            self.deliver_queues()
                .into_iter()
                .map(|(q, name)| (name, q.routing_key())),
        );
        for (queue, key) in work {
            let mut args = FieldTable::default();
            set_header(&mut args, "x-queue-type", "quorum");
            args.insert(
                ShortString::from("x-delivery-limit"),
                AMQPValue::LongInt(self.delivery_limit as i32),
            );
            set_header(&mut args, "x-dead-letter-exchange", self.dead_exchange());
            ch.queue_declare(ShortString::from(queue.clone()), durable_q, args)
                .await?;
            self.bind(ch, &queue, &self.work_exchange(), &key).await?;
        }

        for stage in Stage::ALL {
            for &delay in &self.retry_delays {
                let retry = self.retry_queue(stage, delay);
                let mut args = FieldTable::default();
                args.insert(
                    ShortString::from("x-message-ttl"),
                    AMQPValue::LongLongInt(delay.as_millis() as i64),
                );
                set_header(&mut args, "x-dead-letter-exchange", self.work_exchange());
                if stage == Stage::Render {
                    set_header(&mut args, "x-dead-letter-routing-key", stage.as_str());
                }
                ch.queue_declare(ShortString::from(retry.clone()), durable_q, args)
                    .await?;
                self.bind(
                    ch,
                    &retry,
                    &self.retry_exchange(),
                    &Self::retry_key(stage, delay),
                )
                .await?;
            }
        }

        let mut stream_args = FieldTable::default();
        set_header(&mut stream_args, "x-queue-type", "stream");
        set_header(&mut stream_args, "x-max-age", &self.events_max_age);
        ch.queue_declare(
            ShortString::from(self.events_stream()),
            durable_q,
            stream_args,
        )
        .await?;
        self.bind(ch, &self.events_stream(), &self.events_exchange(), "")
            .await?;
        Ok(())
    }

    /// Passive declares of the queues a deployment under this prefix has: nothing is
    /// created; a missing one fails with NOT_FOUND, which [`Topology::explain`] words as
    /// "no such deployment".
    pub async fn check_exists(&self, ch: &Channel) -> Result<(), lapin::Error> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let mut queues = vec![self.events_stream(), self.dead_queue()];
        queues.extend(Stage::ALL.map(|s| self.stage_queue(s)));
        queues.push(self.deliver_queue(DeliverQueue::Transactional));
        queues.push(self.render_queue(Lane::Transactional));
        for q in queues {
            ch.queue_declare(ShortString::from(q), passive, FieldTable::default())
                .await?;
        }
        Ok(())
    }

    /// Removes everything under the prefix (tests clean up after themselves with this).
    pub async fn delete(&self, ch: &Channel) -> Result<(), lapin::Error> {
        let mut queues = vec![
            self.dead_queue(),
            self.dead_log_queue(),
            self.events_stream(),
        ];
        for stage in Stage::ALL {
            queues.extend(self.stage_queues(stage));
            queues.extend(
                self.retry_delays
                    .iter()
                    .map(|&d| self.retry_queue(stage, d)),
            );
        }
        queues.dedup();
        for q in queues {
            ch.queue_delete(ShortString::from(q), QueueDeleteOptions::default())
                .await?;
        }
        for x in [
            self.work_exchange(),
            self.retry_exchange(),
            self.dead_exchange(),
            self.events_exchange(),
        ] {
            ch.exchange_delete(ShortString::from(x), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Words a failed [`Topology::check_exists`]: which deployment is missing, and where.
    pub fn explain_missing(&self, err: &lapin::Error) -> String {
        let text = err.to_string();
        format!(
            "no such deployment (prefix {:?} on vhost {:?}): {}. Check rabbitmq.prefix and \
             the vhost in rabbitmq.url; a read-only command creates nothing",
            self.prefix,
            self.vhost,
            text.split("NOT_FOUND - ")
                .nth(1)
                .unwrap_or("a queue is missing")
        )
    }

    /// What to do when the broker refused a declare because a queue exists with other
    /// arguments (`PRECONDITION_FAILED - inequivalent arg ...`): which setting differs, the
    /// queue's value and the configured one, and the ways out. `None` for other errors.
    pub fn explain(&self, err: &lapin::Error) -> Option<String> {
        let text = err.to_string();
        let at = text.find("inequivalent arg '")?;
        let quoted: Vec<&str> = text[at..].split('\'').skip(1).step_by(2).collect();
        let (arg, queue) = (*quoted.first()?, *quoted.get(1)?);
        // 3.10: "received '7' but current is '2'" (newer: "received the value '7' of type
        // 'signedint' but current is the value '2' ..."; "current is none" when unset).
        let value_after = |marker: &str| {
            let rest = &text[text.find(marker)? + marker.len()..];
            let rest = rest.strip_prefix(" the value").unwrap_or(rest);
            rest.trim_start().strip_prefix('\'')?.split('\'').next()
        };
        let received = value_after("received").unwrap_or("?");
        let current = value_after("current is").unwrap_or("none");
        let vhost = quoted.get(2).copied().unwrap_or("/");
        // A policy can only lower these two: a quorum queue's delivery limit and a stream's
        // max-age are the lower of argument and policy.
        let escaped = regex_escape(queue);
        let policy = |name: &str, definition: String| {
            format!(
                "rabbitmqctl set_policy --vhost '{vhost}' --apply-to queues {queue}-{name} \
                 '^{escaped}$' '{definition}'"
            )
        };
        let recreate = format!(
            "stop what publishes to {queue}, let it empty, delete it (rabbitmqctl delete_queue \
             --vhost '{vhost}' {queue}) and start again"
        );
        let help = match arg {
            "x-delivery-limit" => {
                let lower = matches!(
                    (received.parse::<u64>(), current.parse::<u64>()),
                    (Ok(r), Ok(c)) if r < c
                );
                let way = if lower {
                    format!(
                        "To lower it, set rabbitmq.delivery_limit = {current} again and add a policy \
                         (a quorum queue uses the lower of the two): {}",
                        policy("limit", format!("{{\"delivery-limit\":{received}}}"))
                    )
                } else {
                    format!(
                        "To raise it, {recreate}; or set rabbitmq.delivery_limit = {current} again"
                    )
                };
                format!(
                    "rabbitmq.delivery_limit is {received} but queue {queue} was created with \
                     {current}, and RabbitMQ cannot change a queue's arguments. {way}"
                )
            }
            "x-max-age" => format!(
                "rabbitmq.events_max_age is {received} but stream {queue} was created with \
                 {current}, and RabbitMQ cannot change a queue's arguments. To shorten the \
                 retention, set rabbitmq.events_max_age = \"{current}\" again and add a policy \
                 (a stream keeps the shorter of the two): {}. To lengthen it, the stream must be \
                 recreated, losing the history it holds (batch status, deduplication, the quota \
                 ledger): {recreate}",
                policy("retention", format!("{{\"max-age\":\"{received}\"}}"))
            ),
            _ => format!(
                "queue {queue} exists with {arg} = {current}, this version declares {received}; \
                 see docs/operations.md, \"Upgrading and changing settings\""
            ),
        };
        Some(help)
    }

    async fn bind(
        &self,
        ch: &Channel,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), lapin::Error> {
        ch.queue_bind(
            ShortString::from(queue),
            ShortString::from(exchange),
            ShortString::from(key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    }
}

/// The vhost an AMQP URI names (`%2f` decoded; `/` when the URI has none).
fn vhost_of(url: &str) -> String {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|u| u.vhost)
        .unwrap_or_else(|_| "/".into())
}

/// A queue name as a policy pattern (names are `[A-Za-z0-9._-]`; only `.` is special).
fn regex_escape(name: &str) -> String {
    name.replace('.', "\\.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_ladder_is_climbed_then_stays_on_its_last_step() {
        let settings = RabbitSettings {
            retry_delays_ms: vec![Duration::from_secs(1), Duration::from_secs(5)],
            prefix: "p".into(),
            ..Default::default()
        };
        let t = Topology::new(&settings);
        assert_eq!(
            t.retry_route(Stage::Deliver, 1).unwrap().1,
            "deliver.lanes.1000"
        );
        assert_eq!(
            t.retry_queue(Stage::Deliver, Duration::from_secs(5)),
            "p.retry.deliver.lanes.5000"
        );
        assert_eq!(
            t.retry_queue(Stage::Render, Duration::from_secs(5)),
            "p.retry.render.5000"
        );
        assert_eq!(
            t.retry_route(Stage::Deliver, 2).unwrap().2,
            Duration::from_secs(5)
        );
        assert_eq!(
            t.retry_route(Stage::Deliver, 9).unwrap().1,
            "deliver.lanes.5000"
        );
        let none = Topology::new(&RabbitSettings {
            retry_delays_ms: vec![],
            ..Default::default()
        });
        assert!(none.retry_route(Stage::Render, 1).is_none());
    }
}
