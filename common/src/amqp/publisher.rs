//! `Publisher`: publishes with publisher confirms and `mandatory`, so that a nack, a
//! confirm timeout, an unroutable message or a missing exchange is an error the caller
//! sees, never a silent loss. Publishes can be pipelined: `send` returns a
//! `PendingConfirm` to await later, so many publishes are in flight at once.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::sync::Mutex;

use super::{Broker, BrokerError};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker refused (nack) the message for {exchange}/{routing_key}")]
    Nacked { exchange: String, routing_key: String },
    #[error("message for {exchange}/{routing_key} is unroutable: {reply}")]
    Unroutable { exchange: String, routing_key: String, reply: String },
    #[error("no publisher confirm for {exchange}/{routing_key} within {timeout:?}")]
    Timeout { exchange: String, routing_key: String, timeout: Duration },
    #[error("publishing to {exchange}/{routing_key}: {source}")]
    Amqp {
        exchange: String,
        routing_key: String,
        #[source]
        source: lapin::Error,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

#[derive(Debug)]
pub struct Publisher {
    broker: Broker,
    channel: Mutex<Option<Channel>>,
    timeout: Duration,
}

impl Publisher {
    pub fn new(broker: Broker, confirm_timeout: Duration) -> Self {
        Self { broker, channel: Mutex::new(None), timeout: confirm_timeout }
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Publishes and waits for the confirm.
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        self.send(msg).await?.confirmed().await
    }

    /// Hands the message to the broker; the returned `PendingConfirm` resolves when the
    /// broker has taken responsibility for it.
    pub async fn send(&self, msg: Outgoing<'_>) -> Result<PendingConfirm, PublishError> {
        let amqp = |source| PublishError::Amqp { exchange: msg.exchange.to_owned(), routing_key: msg.routing_key.to_owned(), source };
        // A dead channel (broker restart, or closed by a previous error such as a missing
        // exchange) is replaced once; a second failure is the caller's to handle.
        for attempt in 0..2 {
            let channel = self.channel().await?;
            let result = channel
                .basic_publish(
                    ShortString::from(msg.exchange),
                    ShortString::from(msg.routing_key),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    msg.body,
                    msg.properties.clone(),
                )
                .await;
            match result {
                Ok(confirm) => {
                    return Ok(PendingConfirm {
                        confirm,
                        timeout: self.timeout,
                        exchange: msg.exchange.to_owned(),
                        routing_key: msg.routing_key.to_owned(),
                    });
                }
                Err(e) if attempt == 0 => {
                    tracing::debug!(error = %e, "publish channel failed; opening a new one");
                    *self.channel.lock().await = None;
                }
                Err(e) => return Err(amqp(e)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut guard = self.channel.lock().await;
        if let Some(ch) = guard.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let ch = self.broker.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|source| PublishError::Amqp { exchange: String::new(), routing_key: String::new(), source })?;
        *guard = Some(ch.clone());
        Ok(ch)
    }
}

/// A publish the broker has not confirmed yet.
#[derive(Debug)]
pub struct PendingConfirm {
    confirm: PublisherConfirm,
    timeout: Duration,
    exchange: String,
    routing_key: String,
}

impl PendingConfirm {
    pub async fn confirmed(self) -> Result<(), PublishError> {
        let Self { confirm, timeout, exchange, routing_key } = self;
        match tokio::time::timeout(timeout, confirm).await {
            Err(_) => Err(PublishError::Timeout { exchange, routing_key, timeout }),
            Ok(Err(source)) => Err(PublishError::Amqp { exchange, routing_key, source }),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(ret)) | Confirmation::Nack(Some(ret)))) => Err(PublishError::Unroutable {
                exchange,
                routing_key,
                reply: format!("{} {}", ret.reply_code, ret.reply_text),
            }),
            Ok(Ok(Confirmation::Nack(None))) => Err(PublishError::Nacked { exchange, routing_key }),
            // confirm_select is always on for our channels; treat the impossible as a loss.
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked { exchange, routing_key }),
        }
    }
}
