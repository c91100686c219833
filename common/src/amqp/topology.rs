//! Names and declaration of every exchange and queue, all under one prefix.
//!
//! ```text
//! {p}.work    direct  --render-->  {p}.render   quorum, x-delivery-limit, DLX {p}.dead
//!                     --deliver--> {p}.deliver  quorum, x-delivery-limit, DLX {p}.dead
//! {p}.retry   direct  --{stage}.{n}--> {p}.retry.{stage}.{n}  TTL = delay n, DLX {p}.work/{stage}
//! {p}.dead    fanout  --> {p}.dead     quorum: dead letters, with their reason in headers
//! {p}.events  fanout  --> {p}.events   stream: delivery events, replayable from a timestamp
//! ```
//! Declaring is idempotent, so every process declares on every (re)connect and no
//! separate migration step exists.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use super::set_header;
use crate::config::RabbitSettings;

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
}

impl Topology {
    pub fn new(settings: &RabbitSettings) -> Self {
        Self {
            prefix: settings.prefix.clone(),
            retry_delays: settings.retry_delays_ms.clone(),
            delivery_limit: settings.delivery_limit,
            events_max_age: settings.events_max_age.clone(),
        }
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

    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }

    pub fn retry_queue(&self, stage: Stage, level: usize) -> String {
        format!("{}.retry.{}.{}", self.prefix, stage.as_str(), level)
    }

    pub fn retry_levels(&self) -> usize {
        self.retry_delays.len()
    }

    /// Where a message that failed `attempt` times (1-based) waits: the ladder's step for
    /// that attempt, the last step once the ladder is climbed. `None` when no ladder exists.
    pub fn retry_route(&self, stage: Stage, attempt: u32) -> Option<(String, String, Duration)> {
        let last = self.retry_delays.len().checked_sub(1)?;
        let level = (attempt.saturating_sub(1) as usize).min(last);
        Some((
            self.retry_exchange(),
            format!("{}.{}", stage.as_str(), level),
            self.retry_delays[level],
        ))
    }

    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
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

        for stage in Stage::ALL {
            let queue = self.stage_queue(stage);
            let mut args = FieldTable::default();
            set_header(&mut args, "x-queue-type", "quorum");
            args.insert(
                ShortString::from("x-delivery-limit"),
                AMQPValue::LongInt(self.delivery_limit as i32),
            );
            set_header(&mut args, "x-dead-letter-exchange", &self.dead_exchange());
            ch.queue_declare(ShortString::from(queue.clone()), durable_q, args)
                .await?;
            self.bind(ch, &queue, &self.work_exchange(), stage.as_str())
                .await?;

            for (level, delay) in self.retry_delays.iter().enumerate() {
                let retry = self.retry_queue(stage, level);
                let mut args = FieldTable::default();
                args.insert(
                    ShortString::from("x-message-ttl"),
                    AMQPValue::LongLongInt(delay.as_millis() as i64),
                );
                set_header(&mut args, "x-dead-letter-exchange", &self.work_exchange());
                set_header(&mut args, "x-dead-letter-routing-key", stage.as_str());
                ch.queue_declare(ShortString::from(retry.clone()), durable_q, args)
                    .await?;
                self.bind(
                    ch,
                    &retry,
                    &self.retry_exchange(),
                    &format!("{}.{}", stage.as_str(), level),
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

    /// Removes everything under the prefix (tests clean up after themselves with this).
    pub async fn delete(&self, ch: &Channel) -> Result<(), lapin::Error> {
        let mut queues = vec![self.dead_queue(), self.events_stream()];
        for stage in Stage::ALL {
            queues.push(self.stage_queue(stage));
            queues.extend((0..self.retry_delays.len()).map(|l| self.retry_queue(stage, l)));
        }
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
        assert_eq!(t.retry_route(Stage::Deliver, 1).unwrap().1, "deliver.0");
        assert_eq!(
            t.retry_route(Stage::Deliver, 2).unwrap().2,
            Duration::from_secs(5)
        );
        assert_eq!(t.retry_route(Stage::Deliver, 9).unwrap().1, "deliver.1");
        let none = Topology::new(&RabbitSettings {
            retry_delays_ms: vec![],
            ..Default::default()
        });
        assert!(none.retry_route(Stage::Render, 1).is_none());
    }
}
