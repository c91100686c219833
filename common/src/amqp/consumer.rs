//! The consumer loop: bounded prefetch, one task per delivery, reconnect on any broker
//! failure, and on shutdown stop taking new messages and wait for the ones in hand.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use tokio_util::task::TaskTracker;

use super::{Broker, BrokerError};

/// What to consume and how.
pub struct ConsumerSpec {
    pub queue: String,
    /// Unacked deliveries in hand at once: bounds both memory and concurrency.
    pub prefetch: u16,
    /// Arguments for `basic.consume`, computed on every (re)subscription, so a stream
    /// consumer can resume from the last offset it saw.
    pub arguments: Arc<dyn Fn() -> FieldTable + Send + Sync>,
}

impl std::fmt::Debug for ConsumerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerSpec")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

impl ConsumerSpec {
    pub fn queue(queue: impl Into<String>, prefetch: u16) -> Self {
        Self {
            queue: queue.into(),
            prefetch,
            arguments: Arc::new(FieldTable::default),
        }
    }
}

/// Runs `handler` for every delivery until the broker's shutdown token fires, then waits
/// for in-flight handlers. The handler owns the ack: it acks after its outcome is durable.
pub async fn consume<H, Fut>(broker: &Broker, spec: ConsumerSpec, handler: H)
where
    H: Fn(Delivery) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let shutdown = broker.shutdown_token().clone();
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(200);
    'subscribe: while !shutdown.is_cancelled() {
        let channel = match broker.channel().await {
            Ok(ch) => ch,
            Err(BrokerError::ShuttingDown) => break,
            Err(e) => {
                tracing::error!(error = %e, queue = %spec.queue, "cannot open a channel");
                break;
            }
        };
        let subscribed = async {
            broker
                .bounded(
                    "basic.qos",
                    channel.basic_qos(spec.prefetch, BasicQosOptions::default()),
                )
                .await?;
            broker
                .bounded(
                    "basic.consume",
                    channel.basic_consume(
                        ShortString::from(spec.queue.as_str()),
                        ShortString::from(""),
                        BasicConsumeOptions::default(),
                        (spec.arguments)(),
                    ),
                )
                .await
        }
        .await;
        let mut consumer = match subscribed {
            Ok(c) => c,
            Err(e) if e.is_permanent() => {
                tracing::error!(error = %e, queue = %spec.queue, "cannot subscribe");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, queue = %spec.queue, "subscribe failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break 'subscribe,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        tracing::info!(queue = %spec.queue, prefetch = spec.prefetch, "consuming");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    broker.bounded("basic.cancel", channel.basic_cancel(consumer.tag(), BasicCancelOptions::default())).await.ok();
                    break 'subscribe;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let handler = handler.clone();
                        tracker.spawn(handler(delivery));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, queue = %spec.queue, "consumer failed; resubscribing");
                        break;
                    }
                    None => {
                        tracing::warn!(queue = %spec.queue, "consumer cancelled by the broker; resubscribing");
                        break;
                    }
                }
            }
        }
    }
    tracker.close();
    tracker.wait().await;
    tracing::info!(queue = %spec.queue, "consumer stopped; in-flight work finished");
}
