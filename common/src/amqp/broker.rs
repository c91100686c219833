//! `Broker`: one AMQP connection per process, re-established with backoff whenever it
//! drops, with the topology declared again on every new connection.
//!
//! We reconnect ourselves instead of using lapin's auto-recovery: after a recovery, acks
//! on old channels fail anyway and the broker redelivers, so the simple model is
//! "a channel is disposable; ask the broker for a fresh one", with idempotent handlers.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::Topology;
use crate::config::{ConfigError, RabbitSettings};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("rabbitmq.url is not a valid AMQP URI: {0}")]
    BadUri(String),
    #[error(transparent)]
    Secret(#[from] ConfigError),
    #[error("shutting down")]
    ShuttingDown,
    #[error("RabbitMQ at {endpoint}: {source}")]
    Amqp {
        endpoint: String,
        #[source]
        source: lapin::Error,
    },
}

#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    uri: AMQPUri,
    /// `amqp://user@host:port/vhost`: the URI without its password, for logs and errors.
    endpoint: String,
    name: String,
    topology: Topology,
    max_backoff: Duration,
    connection: Mutex<Option<Connection>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("endpoint", &self.inner.endpoint)
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Broker {
    /// Connects (retrying with backoff until it succeeds or `shutdown` fires) and declares
    /// the topology. `name` shows in the RabbitMQ management UI.
    pub async fn connect(
        settings: &RabbitSettings,
        name: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
        let mut uri = AMQPUri::from_str(&settings.url).map_err(BrokerError::BadUri)?;
        if let Some(password) = &settings.password {
            uri.authority.userinfo.password = password
                .resolve("rabbitmq.password")?
                .expose_secret()
                .to_owned();
        }
        if uri.query.heartbeat.is_none() {
            // Notice a dead broker within ~30 s even when idle.
            uri.query.heartbeat = Some(15);
        }
        let endpoint = format!(
            "amqp://{}@{}:{}/{}",
            uri.authority.userinfo.username, uri.authority.host, uri.authority.port, uri.vhost
        );
        let broker = Self {
            inner: Arc::new(Inner {
                uri,
                endpoint,
                name: name.to_owned(),
                topology: Topology::new(settings),
                max_backoff: Duration::from_millis(settings.reconnect_max_backoff_ms.max(100)),
                connection: Mutex::new(None),
                shutdown,
            }),
        };
        broker
            .channel()
            .await?
            .close(200, "connected".into())
            .await
            .ok();
        Ok(broker)
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// True while the connection is up (readiness).
    pub fn is_connected(&self) -> bool {
        self.inner
            .connection
            .try_lock()
            .map(|c| c.as_ref().is_some_and(|c| c.status().connected()))
            .unwrap_or(true)
    }

    /// A fresh channel, reconnecting first if the connection is gone. Waits (with backoff)
    /// until the broker is back; fails only on shutdown or a configuration error.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.try_channel().await {
                Ok(ch) => return Ok(ch),
                Err(e) => {
                    tracing::warn!(endpoint = %self.inner.endpoint, error = %e, retry_in_ms = backoff.as_millis() as u64, "RabbitMQ unavailable");
                    tokio::select! {
                        _ = self.inner.shutdown.cancelled() => return Err(BrokerError::ShuttingDown),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.inner.max_backoff);
                }
            }
        }
    }

    async fn try_channel(&self) -> Result<Channel, BrokerError> {
        let amqp = |source| BrokerError::Amqp {
            endpoint: self.inner.endpoint.clone(),
            source,
        };
        let mut guard = self.inner.connection.lock().await;
        if let Some(conn) = guard.as_ref()
            && conn.status().connected()
        {
            match conn.create_channel().await {
                Ok(ch) => return Ok(ch),
                Err(e) => {
                    tracing::warn!(error = %e, "channel creation failed; reconnecting");
                }
            }
        }
        *guard = None;
        let props =
            ConnectionProperties::default().with_connection_name(self.inner.name.clone().into());
        let conn = Connection::connect_uri(self.inner.uri.clone(), props)
            .await
            .map_err(amqp)?;
        let ch = conn.create_channel().await.map_err(amqp)?;
        if let Err(e) = self.inner.topology.declare(&ch).await {
            // A changed setting that RabbitMQ cannot apply: say which and what to do.
            if let Some(help) = self.inner.topology.explain(&e) {
                tracing::error!(endpoint = %self.inner.endpoint, "{help}");
            }
            return Err(amqp(e));
        }
        tracing::info!(endpoint = %self.inner.endpoint, prefix = self.inner.topology.prefix(), "connected to RabbitMQ; topology declared");
        *guard = Some(conn);
        Ok(ch)
    }

    /// Closes the connection (unacked messages go back to their queues). Bounded: a broker
    /// that does not answer the close must not hold up a process's exit.
    pub async fn close(&self) {
        if let Some(conn) = self.inner.connection.lock().await.take()
            && tokio::time::timeout(Duration::from_secs(5), conn.close(200, "shutdown".into()))
                .await
                .is_err()
        {
            tracing::warn!(endpoint = %self.inner.endpoint, "RabbitMQ did not confirm the connection close within 5 s");
        }
    }
}
