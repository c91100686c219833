//! The consumer loop: bounded prefetch, one task per delivery, reconnect on any broker
//! failure, and on shutdown stop taking new messages and wait for the ones in hand.
//!
//! The prefetch may follow a value that changes (deliver sizes it to the mailboxes it
//! owns). RabbitMQ applies a per-consumer `basic.qos` (global = false) only to consumers
//! created after it, and quorum queues refuse a channel-wide (global) one, so a change
//! re-subscribes on the same channel: `basic.cancel` (the deliveries already sent to us
//! are handled and acked as usual on that channel), then, once the deliveries in hand are
//! down to half the new prefetch, `basic.qos` and `basic.consume`. A process therefore
//! holds at most what it held before the change, or 1.5 × the new prefetch while the
//! older deliveries finish, and the new prefetch from then on.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use tokio::sync::{Notify, watch};
use tokio_util::task::TaskTracker;

use super::{Broker, BrokerError};

/// What to consume and how.
pub struct ConsumerSpec {
    pub queue: String,
    /// Unacked deliveries in hand at once: bounds both memory and concurrency. With
    /// `prefetch_follows`, only the value until that receiver says otherwise.
    pub prefetch: u16,
    /// A prefetch that changes while consuming (0 counts as 1): every change re-subscribes
    /// with the new value (see the module's doc).
    pub prefetch_follows: Option<watch::Receiver<u16>>,
    /// Arguments for `basic.consume`, computed on every (re)subscription, so a stream
    /// consumer can resume from the last offset it saw.
    pub arguments: Arc<dyn Fn() -> FieldTable + Send + Sync>,
}

impl std::fmt::Debug for ConsumerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerSpec")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("prefetch_follows", &self.prefetch_follows.is_some())
            .finish()
    }
}

impl ConsumerSpec {
    pub fn queue(queue: impl Into<String>, prefetch: u16) -> Self {
        Self {
            queue: queue.into(),
            prefetch,
            prefetch_follows: None,
            arguments: Arc::new(FieldTable::default),
        }
    }

    /// The prefetch follows `prefetch` (its current value to start with).
    pub fn following(mut self, prefetch: watch::Receiver<u16>) -> Self {
        self.prefetch = (*prefetch.borrow()).max(1);
        self.prefetch_follows = Some(prefetch);
        self
    }
}

/// Deliveries taken and not yet handled (their handler has not returned).
#[derive(Default)]
struct InHand {
    count: AtomicUsize,
    done: Notify,
}

/// One delivery in hand until dropped (whatever way its handler ends).
struct Held(Arc<InHand>);

impl Held {
    fn take(in_hand: &Arc<InHand>) -> Self {
        in_hand.count.fetch_add(1, Ordering::SeqCst);
        Held(in_hand.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.done.notify_waiters();
    }
}

impl InHand {
    /// Returns once at most `most` deliveries are in hand.
    async fn down_to(&self, most: usize) {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.count.load(Ordering::SeqCst) <= most {
                return;
            }
            done.await;
        }
    }
}

/// Why the loop on one subscription ended.
enum Ended {
    Shutdown,
    /// The prefetch changed: subscribe again on the same channel with this value.
    Resize(u16),
    /// The consumer or its channel failed: a new channel.
    Failed,
}

/// Runs `handler` for every delivery until the broker's shutdown token fires, then waits
/// for in-flight handlers. The handler owns the ack: it acks after its outcome is durable.
pub async fn consume<H, Fut>(broker: &Broker, mut spec: ConsumerSpec, handler: H)
where
    H: Fn(Delivery) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let shutdown = broker.shutdown_token().clone();
    let tracker = TaskTracker::new();
    let in_hand = Arc::new(InHand::default());
    let mut follows = spec.prefetch_follows.take();
    let mut prefetch = match follows.as_mut() {
        Some(rx) => *rx.borrow_and_update(),
        None => spec.prefetch,
    }
    .max(1);
    let spawn = |delivery: Delivery| {
        let held = Held::take(&in_hand);
        let handler = handler.clone();
        tracker.spawn(async move {
            handler(delivery).await;
            drop(held);
        });
    };
    let mut backoff = Duration::from_millis(200);
    'channel: while !shutdown.is_cancelled() {
        let channel = match broker.channel().await {
            Ok(ch) => ch,
            Err(BrokerError::ShuttingDown) => break,
            Err(e) => {
                tracing::error!(error = %e, queue = %spec.queue, "cannot open a channel");
                break;
            }
        };
        loop {
            let mut consumer = match subscribe(broker, &channel, &spec, prefetch).await {
                Ok(c) => c,
                Err(e) if e.is_permanent() => {
                    tracing::error!(error = %e, queue = %spec.queue, "cannot subscribe");
                    break 'channel;
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = %spec.queue, "subscribe failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'channel,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue 'channel;
                }
            };
            backoff = Duration::from_millis(200);
            tracing::info!(queue = %spec.queue, prefetch, "consuming");
            let ended = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break Ended::Shutdown,
                    next = prefetch_changed(&mut follows) => {
                        if next != prefetch {
                            break Ended::Resize(next);
                        }
                    }
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => spawn(delivery),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, queue = %spec.queue, "consumer failed; resubscribing");
                            break Ended::Failed;
                        }
                        None => {
                            tracing::warn!(queue = %spec.queue, "consumer cancelled by the broker; resubscribing");
                            break Ended::Failed;
                        }
                    }
                }
            };
            match ended {
                Ended::Shutdown => {
                    broker
                        .bounded(
                            "basic.cancel",
                            channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
                        )
                        .await
                        .ok();
                    break 'channel;
                }
                Ended::Failed => continue 'channel,
                Ended::Resize(next) => {
                    prefetch = next;
                    // Stop the deliveries; the ones already sent to us are handled here.
                    let cancelled = broker
                        .bounded("basic.cancel", cancel_and_drain(&channel, consumer))
                        .await;
                    match cancelled {
                        Ok(rest) => rest.into_iter().for_each(&spawn),
                        Err(e) => {
                            tracing::warn!(error = %e, queue = %spec.queue, "cancel for a new prefetch failed; resubscribing");
                            continue 'channel;
                        }
                    }
                    // Subscribe again once the deliveries in hand are down to half of the
                    // (latest) new prefetch.
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => break 'channel,
                            _ = in_hand.down_to(usize::from(prefetch / 2)) => break,
                            next = prefetch_changed(&mut follows) => prefetch = next,
                        }
                    }
                    tracing::info!(queue = %spec.queue, prefetch, "prefetch changed: subscribing again");
                }
            }
        }
    }
    tracker.close();
    tracker.wait().await;
    tracing::info!(queue = %spec.queue, "consumer stopped; in-flight work finished");
}

/// `basic.qos` for the consumer about to be created, then `basic.consume`.
async fn subscribe(
    broker: &Broker,
    channel: &Channel,
    spec: &ConsumerSpec,
    prefetch: u16,
) -> Result<Consumer, BrokerError> {
    broker
        .bounded(
            "basic.qos",
            channel.basic_qos(prefetch, BasicQosOptions::default()),
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

/// Cancels `consumer` and returns the deliveries the broker sent before its cancel-ok
/// (lapin ends the stream after them).
async fn cancel_and_drain(
    channel: &Channel,
    mut consumer: Consumer,
) -> Result<Vec<Delivery>, lapin::Error> {
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await?;
    let mut rest = Vec::new();
    while let Some(delivery) = consumer.next().await {
        rest.push(delivery?);
    }
    Ok(rest)
}

/// The next prefetch when it changes (at least 1); pending forever without a follower, or
/// once its sender is gone.
async fn prefetch_changed(follows: &mut Option<watch::Receiver<u16>>) -> u16 {
    match follows {
        Some(rx) => match rx.changed().await {
            Ok(()) => (*rx.borrow_and_update()).max(1),
            Err(_) => {
                *follows = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}
