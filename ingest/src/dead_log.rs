//! Records the jobs RabbitMQ dead-lettered on its own.
//!
//! A stage that dead-letters a message on purpose records the job `failed` first. The
//! broker can dead-letter one too — a consumer died on it `x-delivery-limit` times, or it
//! expired — and then nobody did: the job would stay `rendered` for ever and its batch
//! never finish. The dead exchange is a fanout, so every dead letter also lands in
//! `<prefix>.dead.log` (the operator's `<prefix>.dead` is left as it is); this consumer
//! records each broker dead letter's job `failed`, with the broker's reason, and acks.
//! The record's rule that a job only moves forward keeps a job that was delivered meanwhile
//! delivered; a replayed dead letter that is then delivered moves the job on as usual.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use mailpipe_common::amqp::{Broker, ConsumerSpec, consume, death_time};
use mailpipe_common::contract::{DeliveryEvent, EventKind};
use mailpipe_common::domain::{BatchId, JobId};
use mailpipe_common::store::Store;

use crate::dead;

/// Dead letters recorded at once.
const PREFETCH: u16 = 16;

/// Consumes `<prefix>.dead.log` until the broker's shutdown token fires, once the schema
/// is current (`schema_ready`).
pub async fn run(broker: Broker, store: Store, schema_ready: Arc<AtomicBool>) {
    while !schema_ready.load(Ordering::SeqCst) {
        tokio::select! {
            _ = broker.shutdown_token().cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let queue = broker.topology().dead_log_queue();
    let prefix = broker.topology().prefix().to_owned();
    consume(&broker, ConsumerSpec::queue(queue, PREFETCH), move |d| {
        let store = store.clone();
        let prefix = prefix.clone();
        async move { record(&store, &prefix, d).await }
    })
    .await;
}

/// The `failed` event for a dead letter the broker made, or `None` for one a stage made
/// (already recorded) or that names no job.
pub fn broker_failure(
    props: &lapin::BasicProperties,
    body: &[u8],
    prefix: &str,
) -> Option<DeliveryEvent> {
    let d = dead::describe(props, body, prefix, |_| false);
    if d.reason_from != Some("broker") {
        return None;
    }
    let job = JobId::parse(d.job_id.as_deref()?).ok()?;
    let batch = d.batch.as_deref().and_then(|b| BatchId::parse(b).ok());
    let mut e = DeliveryEvent::new(job, batch, EventKind::Failed);
    // The broker's time of death: the same dead letter recorded twice is one event.
    e.at = death_time(props).unwrap_or_else(Utc::now);
    e.reason = Some(format!(
        "dead-lettered by RabbitMQ ({}) in {}: `mailpipe-ingest dead list` shows it",
        d.reason.as_deref().unwrap_or("no reason given"),
        d.stage.as_deref().unwrap_or("an unknown queue"),
    ));
    Some(e)
}

async fn record(store: &Store, prefix: &str, d: Delivery) {
    if let Some(e) = broker_failure(&d.properties, &d.data, prefix) {
        if let Err(err) = store.record_event(&e).await {
            // Shutting down (or a refusal the record gave): the broker keeps it for later.
            tracing::warn!(error = %err, job = %e.job_id, "recording a dead letter failed; it stays queued");
            // Not at once: a refusal that lasts must not spin.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = d
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
            return;
        }
        tracing::warn!(job = %e.job_id, reason = e.reason.as_deref().unwrap_or(""), "the broker dead-lettered a job; recorded failed");
    }
    if let Err(err) = d.acker.ack(BasicAckOptions::default()).await {
        tracing::debug!(error = %err, "acking a recorded dead letter failed; it comes back and is recorded once");
    }
}
