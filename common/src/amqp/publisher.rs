//! `Publisher`: publishes with publisher confirms and `mandatory`, so that a nack, a
//! confirm timeout, an unroutable message or a missing exchange is an error the caller
//! sees, never a silent loss. Publishes can be pipelined: `send` returns a
//! `PendingConfirm` to await later, so many publishes are in flight at once.
//!
//! A confirm lost because the connection dropped is not a refusal: `PendingConfirm`
//! publishes the message again on a fresh channel (at-least-once; consumers are
//! idempotent by job id), so callers only ever see the broker's real answers.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};

use super::{Broker, BrokerError};

/// How often a message whose confirm was lost to a dropped connection is published again.
const REPUBLISH_LIMIT: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker refused (nack) the message for {exchange}/{routing_key}")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error("message for {exchange}/{routing_key} is unroutable: {reply}")]
    Unroutable {
        exchange: String,
        routing_key: String,
        reply: String,
    },
    #[error("no publisher confirm for {exchange}/{routing_key} within {timeout:?}")]
    Timeout {
        exchange: String,
        routing_key: String,
        timeout: Duration,
    },
    #[error("publishing to {exchange}/{routing_key}: {source}")]
    Amqp {
        exchange: String,
        routing_key: String,
        #[source]
        source: lapin::Error,
    },
    /// The system of record could not take the record (shutdown while it waited for
    /// the database, or a statement it refused): the input is not acked.
    #[error("recording in the database: {0}")]
    Store(#[source] Box<crate::store::StoreError>),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<crate::store::StoreError> for PublishError {
    fn from(e: crate::store::StoreError) -> Self {
        PublishError::Store(Box::new(e))
    }
}

impl PublishError {
    /// True when the broker did not refuse the message: the connection or channel went
    /// away before the confirm arrived, so publishing again is the fix.
    pub fn is_connection_loss(&self) -> bool {
        match self {
            PublishError::Amqp { source, .. } => !matches!(
                source.kind(),
                lapin::ErrorKind::ProtocolError(e) if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(_))
            ),
            _ => false,
        }
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

/// Cheap to clone: clones share one confirm-mode channel.
#[derive(Debug, Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    broker: Broker,
    channel: std::sync::Mutex<Option<Channel>>,
    /// Held while a channel is opened: concurrent first publishes share one new channel.
    /// (Two openers racing used to replace each other's channel, and the replaced one,
    /// dropped, closed under its own publishes: each of them was then published again.)
    opening: tokio::sync::Mutex<()>,
    timeout: Duration,
}

impl Publisher {
    pub fn new(broker: Broker, confirm_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker,
                channel: std::sync::Mutex::new(None),
                opening: tokio::sync::Mutex::new(()),
                timeout: confirm_timeout,
            }),
        }
    }

    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// Publishes and waits for the confirm.
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        self.send(msg).await?.confirmed().await
    }

    /// Hands the message to the broker; the returned `PendingConfirm` resolves when the
    /// broker has taken responsibility for it.
    pub async fn send(&self, msg: Outgoing<'_>) -> Result<PendingConfirm, PublishError> {
        let confirm = self.basic_publish(&msg).await?;
        Ok(PendingConfirm {
            confirm,
            publisher: self.clone(),
            exchange: msg.exchange.to_owned(),
            routing_key: msg.routing_key.to_owned(),
            body: msg.body.to_vec(),
            properties: msg.properties,
        })
    }

    async fn basic_publish(&self, msg: &Outgoing<'_>) -> Result<PublisherConfirm, PublishError> {
        // A dead channel (broker restart, or closed by a previous error such as a missing
        // exchange) is replaced once; a second failure is the caller's to see.
        let mut last = None;
        for _ in 0..2 {
            let channel = self.channel().await?;
            match channel
                .basic_publish(
                    ShortString::from(msg.exchange),
                    ShortString::from(msg.routing_key),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    msg.body,
                    msg.properties.clone(),
                )
                .await
            {
                Ok(confirm) => return Ok(confirm),
                Err(e) => {
                    tracing::debug!(error = %e, "publish channel failed; opening a new one");
                    // Forgotten only if it is still the stored one: a channel another caller
                    // has opened meanwhile is healthy.
                    let mut stored = self.lock_channel();
                    if stored.as_ref().is_some_and(|ch| ch.id() == channel.id()) {
                        *stored = None;
                    }
                    drop(stored);
                    last = Some(e);
                }
            }
        }
        Err(PublishError::Amqp {
            exchange: msg.exchange.to_owned(),
            routing_key: msg.routing_key.to_owned(),
            source: last.unwrap_or_else(|| {
                lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Closed, "basic.publish")
                    .into()
            }),
        })
    }

    /// The shared confirm-mode channel, opened when missing. The lock is held only to
    /// read or store it, never while the broker is being waited for.
    async fn channel(&self) -> Result<Channel, PublishError> {
        if let Some(ch) = self.open_channel() {
            return Ok(ch);
        }
        let _opening = self.inner.opening.lock().await;
        if let Some(ch) = self.open_channel() {
            // Another caller opened it while this one waited.
            return Ok(ch);
        }
        let broker = &self.inner.broker;
        let ch = broker.channel().await?;
        broker
            .bounded(
                "confirm.select",
                ch.confirm_select(ConfirmSelectOptions::default()),
            )
            .await?;
        *self.lock_channel() = Some(ch.clone());
        Ok(ch)
    }

    /// The stored channel, if it is still usable.
    fn open_channel(&self) -> Option<Channel> {
        self.lock_channel()
            .as_ref()
            .filter(|ch| ch.status().connected())
            .cloned()
    }

    fn lock_channel(&self) -> std::sync::MutexGuard<'_, Option<Channel>> {
        self.inner.channel.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A publish the broker has not confirmed yet.
#[derive(Debug)]
pub struct PendingConfirm {
    confirm: PublisherConfirm,
    publisher: Publisher,
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
}

impl PendingConfirm {
    pub async fn confirmed(mut self) -> Result<(), PublishError> {
        let timeout = self.publisher.inner.timeout;
        let mut republished = 0;
        loop {
            let result = match tokio::time::timeout(timeout, &mut self.confirm).await {
                Err(_) => {
                    // A broker that confirms nothing for this long is not answering:
                    // reconnect, and say so on /readyz until then.
                    self.publisher
                        .broker()
                        .report_unresponsive("a publisher confirm timed out");
                    return Err(PublishError::Timeout {
                        exchange: self.exchange,
                        routing_key: self.routing_key,
                        timeout,
                    });
                }
                Ok(Err(source)) => Err(PublishError::Amqp {
                    exchange: self.exchange.clone(),
                    routing_key: self.routing_key.clone(),
                    source,
                }),
                Ok(Ok(Confirmation::Ack(None))) => return Ok(()),
                Ok(Ok(Confirmation::Ack(Some(ret)) | Confirmation::Nack(Some(ret)))) => {
                    return Err(PublishError::Unroutable {
                        exchange: self.exchange,
                        routing_key: self.routing_key,
                        reply: format!("{} {}", ret.reply_code, ret.reply_text),
                    });
                }
                // NotRequested cannot happen (our channels are in confirm mode); count it as a nack.
                Ok(Ok(Confirmation::Nack(None) | Confirmation::NotRequested)) => {
                    return Err(PublishError::Nacked {
                        exchange: self.exchange,
                        routing_key: self.routing_key,
                    });
                }
            };
            match result {
                Err(e) if e.is_connection_loss() && republished < REPUBLISH_LIMIT => {
                    republished += 1;
                    tracing::warn!(error = %e, "confirm lost with the connection; publishing again");
                    let msg = Outgoing {
                        exchange: &self.exchange,
                        routing_key: &self.routing_key,
                        body: &self.body,
                        properties: self.properties.clone(),
                    };
                    self.confirm = self.publisher.basic_publish(&msg).await?;
                }
                other => return other,
            }
        }
    }
}
