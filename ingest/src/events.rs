//! Follows the events stream from its first retained event: feeds the status index and
//! the accepted ids, and says when the replay has caught up with "now" (readiness, and
//! the moment submissions may trust the duplicate check).
//!
//! "Now" is found as `Pipeline::read_events_since` finds it: a marker published at start
//! comes back through the stream after everything that was there before it. Events are
//! applied in the synchronous part of the handler, which `consume` calls in delivery
//! order, so the marker is never seen before the events ahead of it are applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use lapin::options::BasicAckOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use mailpipe_common::amqp::{ConsumerSpec, Delivery, consume, header_i64};
use mailpipe_common::contract::DeliveryEvent;
use mailpipe_common::pipeline::{Pipeline, events_marker};
use tokio::sync::watch;

use crate::idempotency::AcceptedIds;
use crate::publish::{SharedStatus, lock_status};

/// Stream deliveries carry their offset in this header.
const OFFSET_HEADER: &str = "x-stream-offset";
/// Events in hand at once (stream consumers need a prefetch; this bounds memory).
const PREFETCH: u16 = 1000;

/// `true` once the replay reached the marker.
pub type Replayed = watch::Receiver<bool>;

/// Starts following; returns the replay flag and the task (ends on the broker's shutdown).
pub async fn follow(
    pipeline: &Pipeline,
    ids: AcceptedIds,
    status: SharedStatus,
) -> Result<(Replayed, tokio::task::JoinHandle<()>), mailpipe_common::amqp::PublishError> {
    let broker = pipeline.broker().clone();
    let topology = broker.topology().clone();
    let marker = pipeline.publish_events_marker().await?;

    let (tx, rx) = watch::channel(false);
    let tx = Arc::new(tx);
    // Where to resume after a reconnect: the offset after the last one seen.
    let next_offset = Arc::new(AtomicI64::new(-1));
    let resume = next_offset.clone();
    let arguments = Arc::new(move || {
        let mut args = FieldTable::default();
        let offset = match resume.load(Ordering::SeqCst) {
            n if n >= 0 => AMQPValue::LongLongInt(n),
            _ => AMQPValue::LongString(LongString::from("first")),
        };
        args.insert(ShortString::from(OFFSET_HEADER), offset);
        args
    });
    let spec = ConsumerSpec {
        queue: topology.events_stream(),
        prefetch: PREFETCH,
        arguments,
    };
    let task = tokio::spawn(async move {
        consume(&broker, spec, move |d: Delivery| {
            handle(&d, &marker, &next_offset, &ids, &status, &tx);
            async move {
                d.acker.ack(BasicAckOptions::default()).await.ok();
            }
        })
        .await;
    });
    Ok((rx, task))
}

fn handle(
    d: &Delivery,
    marker: &str,
    next_offset: &AtomicI64,
    ids: &AcceptedIds,
    status: &SharedStatus,
    replayed: &watch::Sender<bool>,
) {
    if let Some(offset) = header_i64(&d.properties, OFFSET_HEADER) {
        next_offset.fetch_max(offset + 1, Ordering::SeqCst);
    }
    if let Some(m) = events_marker(&d.properties) {
        if m == marker && !*replayed.borrow() {
            tracing::info!(
                jobs_known = lock_status(status).jobs_known(),
                "events stream replayed; duplicate checks are complete"
            );
            replayed.send_replace(true);
        }
        return; // our marker, or another reader's
    }
    match DeliveryEvent::from_json(&d.data) {
        Ok(e) => {
            // Any event of a job means it was accepted once (its own `accepted` event
            // may have been lost to a crash between the job's confirm and the event).
            ids.learn(&e.job_id);
            lock_status(status).apply(&e);
        }
        Err(e) => tracing::warn!(error = %e, "skipping unreadable event"),
    }
}
