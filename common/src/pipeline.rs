//! The records every stage writes, in one place: jobs onto the render queue, rendered
//! messages onto the deliver queue, delivery events into the system of record (and then
//! onto the events stream, the live feed for subscribers), messages into the retry ladder
//! or dead letters. Each returns a `PendingConfirm`, so a stage acks its input only after
//! what it wrote is recorded and confirmed.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::amqp::{
    Broker, DEAD_REASON_HEADER, DEAD_STAGE_HEADER, Outgoing, PendingConfirm, PublishError,
    Publisher, Stage, Topology, header_str, persistent_properties, set_header,
};
use crate::contract::{
    CONTRACT_VERSION, DeliveryEvent, Job, META_HEADER, RenderedMeta, VERSION_HEADER,
};
use crate::store::{SendOutcome, Store};
use crate::telemetry::inject_trace_context;
use uuid::Uuid;

/// Header with the job id on every message, so the management UI and dead-letter tools
/// can show it without parsing bodies.
pub const JOB_ID_HEADER: &str = "mailpipe-job-id";
pub const BATCH_HEADER: &str = "mailpipe-batch";
/// Delivery attempts already spent, on messages in the retry ladder.
pub const ATTEMPT_HEADER: &str = "mailpipe-attempt";

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

    /// The confirmed publisher underneath (test support reads the events stream with it).
    #[cfg(feature = "testkit")]
    pub(crate) fn publisher(&self) -> &Publisher {
        &self.publisher
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
                routing_key: Topology::render_key(job.lane.unwrap_or_default()),
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
        let queue = meta.deliver_queue().routing_key();
        self.publisher
            .send(Outgoing {
                exchange: &exchange,
                routing_key: &queue,
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
        self.publish_event(event).await
    }

    /// Closes a write-ahead send with its outcome and records its job's `event`, in one
    /// statement (`Store::record_outcome`), then publishes the event to the events stream.
    pub async fn record_outcome(
        &self,
        send: Uuid,
        outcome: SendOutcome,
        event: &DeliveryEvent,
    ) -> Result<PendingConfirm, PublishError> {
        self.store.record_outcome(send, outcome, event).await?;
        self.publish_event(event).await
    }

    /// The live feed: an event already on record goes onto the events stream.
    async fn publish_event(&self, event: &DeliveryEvent) -> Result<PendingConfirm, PublishError> {
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
        let properties = match stage {
            Stage::Deliver => with_return_route(properties),
            Stage::Render => properties,
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
}

/// A rendered message on its way into deliver's retry ladder carries its deliver queue's
/// key in `CC`: the ladder's queues dead-letter with the message's own keys, so it comes
/// back to its lane (topology.rs). Without readable metadata: the first bulk queue.
fn with_return_route(properties: BasicProperties) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    let queue = header_str(&properties, META_HEADER)
        .and_then(|v| RenderedMeta::from_header_value(&v).ok())
        .map_or_else(
            || Stage::Deliver.as_str().to_owned(),
            |m| m.deliver_queue().routing_key(),
        );
    headers.insert(
        "CC".into(),
        AMQPValue::FieldArray(vec![AMQPValue::LongString(queue.into())].into()),
    );
    properties.with_headers(headers)
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
