//! The records every stage writes, in one place: jobs onto the render queue, rendered
//! messages onto the deliver queue, delivery events into the system of record (and then
//! onto the events stream, the live feed for subscribers), messages into the retry ladder
//! or dead letters. Each returns a `PendingConfirm`, so a stage acks its input only after
//! what it wrote is recorded and confirmed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::amqp::{
    Broker, BrokerError, DEAD_REASON_HEADER, DEAD_STAGE_HEADER, Outgoing, PendingConfirm,
    PublishError, Publisher, Stage, Topology, header_str, persistent_properties, set_header,
};
use crate::contract::{
    CONTRACT_VERSION, DeliveryEvent, Job, META_HEADER, RenderedMeta, VERSION_HEADER,
};
use crate::store::Store;
use crate::telemetry::inject_trace_context;

/// Header with the job id on every message, so the management UI and dead-letter tools
/// can show it without parsing bodies.
pub const JOB_ID_HEADER: &str = "mailpipe-job-id";
pub const BATCH_HEADER: &str = "mailpipe-batch";
/// Delivery attempts already spent, on messages in the retry ladder.
pub const ATTEMPT_HEADER: &str = "mailpipe-attempt";
/// Stream messages in hand while reading the events stream, and how often they are acked
/// (one multiple-ack per `ACK_EVERY`): large enough that the broker never waits on us.
const READ_PREFETCH: u16 = 2000;
const ACK_EVERY: u16 = 500;
/// Marks the sentinel a reader publishes to know where "now" is in the events stream.
const MARKER_HEADER: &str = "mailpipe-marker";

#[derive(Debug, Clone)]
pub struct Pipeline {
    publisher: Publisher,
    store: Store,
}

impl Pipeline {
    pub fn new(publisher: Publisher, store: Store) -> Self {
        Self { publisher, store }
    }

    /// The system of record.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn broker(&self) -> &Broker {
        self.publisher.broker()
    }

    pub fn topology(&self) -> &Topology {
        self.publisher.broker().topology()
    }

    /// Headers of every message about a job. The trace context injected is that of a
    /// `publish` span, child of the caller's span when there is one: ingest's publish is
    /// the root of a job's trace, and each stage's work joins it from the headers.
    fn headers(job_id: &str, batch: Option<&str>) -> FieldTable {
        let span = tracing::info_span!("publish", job_id = job_id);
        span.in_scope(|| Self::headers_in_span(job_id, batch))
    }

    fn headers_in_span(job_id: &str, batch: Option<&str>) -> FieldTable {
        let mut h = FieldTable::default();
        set_header(&mut h, VERSION_HEADER, CONTRACT_VERSION.to_string());
        set_header(&mut h, JOB_ID_HEADER, job_id);
        if let Some(b) = batch {
            set_header(&mut h, BATCH_HEADER, b);
        }
        inject_trace_context(&mut h);
        h
    }

    /// ingest → render queue.
    pub async fn send_job(&self, job: &Job) -> Result<PendingConfirm, PublishError> {
        let body = serde_json::to_vec(job).unwrap_or_default();
        let headers = Self::headers(job.id.as_str(), job.batch.as_ref().map(|b| b.as_str()));
        let props = persistent_properties("application/json", headers)
            .with_message_id(job.id.as_str().into());
        let exchange = self.topology().work_exchange();
        self.publisher
            .send(Outgoing {
                exchange: &exchange,
                routing_key: Stage::Render.as_str(),
                body: &body,
                properties: props,
            })
            .await
    }

    /// render → deliver queue: MIME as the body, metadata in a header.
    pub async fn send_rendered(
        &self,
        meta: &RenderedMeta,
        mime: &[u8],
    ) -> Result<PendingConfirm, PublishError> {
        let exchange = self.topology().work_exchange();
        self.publisher
            .send(Outgoing {
                exchange: &exchange,
                routing_key: Stage::Deliver.as_str(),
                body: mime,
                properties: rendered_properties(meta),
            })
            .await
    }

    /// Records `event` in the database (the truth: it waits while the database is away,
    /// so the stage takes nothing new meanwhile), then publishes it to the events stream
    /// (the live feed).
    pub async fn record_event(
        &self,
        event: &DeliveryEvent,
    ) -> Result<PendingConfirm, PublishError> {
        self.store.record_event(event).await?;
        let body = event.to_json();
        let headers = Self::headers(
            event.job_id.as_str(),
            event.batch.as_ref().map(|b| b.as_str()),
        );
        let exchange = self.topology().events_exchange();
        self.publisher
            .send(Outgoing {
                exchange: &exchange,
                routing_key: "",
                body: &body,
                properties: persistent_properties("application/json", headers),
            })
            .await
    }

    /// Puts a message into dead letters with the reason, keeping its body and headers so
    /// it can be replayed as it was.
    pub async fn dead_letter(
        &self,
        stage: Stage,
        body: &[u8],
        original: &BasicProperties,
        reason: &str,
    ) -> Result<PendingConfirm, PublishError> {
        let mut headers = original.headers().clone().unwrap_or_default();
        set_header(&mut headers, DEAD_REASON_HEADER, reason);
        set_header(&mut headers, DEAD_STAGE_HEADER, stage.as_str());
        let props = original.clone().with_headers(headers).with_delivery_mode(2);
        let exchange = self.topology().dead_exchange();
        self.publisher
            .send(Outgoing {
                exchange: &exchange,
                routing_key: stage.as_str(),
                body,
                properties: props,
            })
            .await
    }

    /// Sends a message back to `stage` after the ladder's delay for `attempt` (1-based).
    /// Returns the delay, or `None` when no ladder is configured (caller dead-letters).
    pub async fn retry(
        &self,
        stage: Stage,
        attempt: u32,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Option<(Duration, PendingConfirm)>, PublishError> {
        let Some((exchange, key, delay)) = self.topology().retry_route(stage, attempt) else {
            return Ok(None);
        };
        let pending = self
            .publisher
            .send(Outgoing {
                exchange: &exchange,
                routing_key: &key,
                body,
                properties,
            })
            .await?;
        Ok(Some((delay, pending)))
    }

    /// Publishes a marker into the events stream and returns its id. A reader that
    /// meets its own marker ([`events_marker`]) has seen everything published before it:
    /// that is how "now" is found in a stream without guessing at idle timeouts.
    pub async fn publish_events_marker(&self) -> Result<String, PublishError> {
        let marker = uuid::Uuid::new_v4().to_string();
        let mut headers = FieldTable::default();
        set_header(&mut headers, MARKER_HEADER, marker.clone());
        let exchange = self.topology().events_exchange();
        self.publisher
            .publish(Outgoing {
                exchange: &exchange,
                routing_key: "",
                body: b"",
                properties: persistent_properties("application/octet-stream", headers),
            })
            .await?;
        Ok(marker)
    }

    /// Reads the events stream from `since` up to the moment of the call, then returns.
    pub async fn read_events_since(
        &self,
        since: DateTime<Utc>,
        mut each: impl FnMut(DeliveryEvent),
    ) -> Result<usize, StreamReadError> {
        let topo = self.topology().clone();
        let marker = self.publish_events_marker().await?;

        let broker = self.broker();
        let ch = broker.channel().await?;
        broker
            .bounded(
                "basic.qos",
                ch.basic_qos(READ_PREFETCH, BasicQosOptions::default()),
            )
            .await?;
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-stream-offset"),
            AMQPValue::Timestamp(since.timestamp().max(0) as u64),
        );
        let mut consumer = broker
            .bounded(
                "basic.consume",
                ch.basic_consume(
                    ShortString::from(topo.events_stream()),
                    ShortString::from(""),
                    BasicConsumeOptions::default(),
                    args,
                ),
            )
            .await?;
        let amqp = |source| BrokerError::Amqp {
            endpoint: broker.endpoint().to_owned(),
            source,
        };
        let mut count = 0;
        let mut unacked = 0u16;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.map_err(amqp)?;
            // One ack per ACK_EVERY events (multiple = true), not one per event: acking
            // each one made a 100k-event replay take a minute.
            unacked += 1;
            let is_marker = events_marker(&delivery.properties);
            if unacked >= ACK_EVERY || is_marker.is_some() {
                delivery
                    .acker
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .ok();
                unacked = 0;
            }
            if let Some(m) = is_marker {
                if m == marker {
                    break;
                }
                continue;
            }
            match DeliveryEvent::from_json(&delivery.data) {
                // x-stream-offset by timestamp is chunk-granular: filter precisely here.
                Ok(e) if e.at >= since => {
                    count += 1;
                    each(e);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "skipping unreadable event"),
            }
        }
        broker
            .bounded(
                "basic.cancel",
                ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
            )
            .await
            .ok();
        broker
            .bounded("channel.close", ch.close(200, "read".into()))
            .await
            .ok();
        Ok(count)
    }
}

/// The id of a marker (see [`Pipeline::publish_events_marker`]) if this stream message is one.
pub fn events_marker(props: &BasicProperties) -> Option<String> {
    header_str(props, MARKER_HEADER)
}

/// Why the events stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StreamReadError {
    #[error("publishing the events-stream marker: {0}")]
    Marker(#[from] PublishError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// AMQP properties of a rendered message (also used when deliver re-queues one).
pub fn rendered_properties(meta: &RenderedMeta) -> BasicProperties {
    let mut headers = Pipeline::headers(
        meta.job_id.as_str(),
        meta.batch.as_ref().map(|b| b.as_str()),
    );
    set_header(&mut headers, META_HEADER, meta.to_header_value());
    persistent_properties("message/rfc822", headers).with_message_id(meta.job_id.as_str().into())
}
