//! Follows the events stream from its first retained event: feeds the status index and
//! the accepted ids, and says when the replay has caught up with "now" (readiness, and
//! the moment submissions may trust the duplicate check).
//!
//! "Now" is found as `Pipeline::read_events_since` finds it: a marker published at start
//! comes back through the stream after everything that was there before it. Events are
//! applied in the synchronous part of the handler, which `consume` calls in delivery
//! order, so the marker is never seen before the events ahead of it are applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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

/// Starts following in the background (connecting first, if the broker is not reached
/// yet); returns at once with the replay flag, the count of events applied so far (for
/// `/readyz` while replaying) and the task (ends on the broker's shutdown).
pub fn follow(
    pipeline: &Pipeline,
    ids: AcceptedIds,
    status: SharedStatus,
) -> (Replayed, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let pipeline = pipeline.clone();
    let (tx, rx) = watch::channel(false);
    let applied = Arc::new(AtomicU64::new(0));
    let counter = applied.clone();
    let task = tokio::spawn(async move {
        let Some(marker) = publish_marker(&pipeline).await else {
            return;
        };
        let broker = pipeline.broker().clone();
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
            queue: broker.topology().events_stream(),
            prefetch: PREFETCH,
            arguments,
        };
        consume(&broker, spec, move |d: Delivery| {
            handle(&d, &marker, &next_offset, &ids, &status, &tx, &counter);
            async move {
                d.acker.ack(BasicAckOptions::default()).await.ok();
            }
        })
        .await;
    });
    (rx, applied, task)
}

/// The marker that says where "now" is; retried until published or shutdown.
async fn publish_marker(pipeline: &Pipeline) -> Option<String> {
    let broker = pipeline.broker();
    loop {
        match pipeline.publish_events_marker().await {
            Ok(m) => return Some(m),
            Err(e) if broker.shutdown_token().is_cancelled() || broker.failure().is_some() => {
                tracing::debug!(error = %e, "not following the events stream: stopping");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing the replay marker failed; retrying");
                tokio::select! {
                    _ = broker.shutdown_token().cancelled() => return None,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

fn handle(
    d: &Delivery,
    marker: &str,
    next_offset: &AtomicI64,
    ids: &AcceptedIds,
    status: &SharedStatus,
    replayed: &watch::Sender<bool>,
    applied: &AtomicU64,
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
            applied.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, "skipping unreadable event"),
    }
}
