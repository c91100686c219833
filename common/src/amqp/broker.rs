//! `Broker`: one AMQP connection per process, re-established with backoff (and jitter)
//! whenever it drops, with the topology declared again on every new connection.
//!
//! We reconnect ourselves instead of using lapin's auto-recovery: after a recovery, acks
//! on old channels fail anyway and the broker redelivers, so the simple model is
//! "a channel is disposable; ask the broker for a fresh one", with idempotent handlers.
//!
//! A broker that accepts TCP and then says nothing must not hang anything: every broker
//! operation is bounded by `rabbitmq.operation_timeout_ms`, heartbeats (10 s unless the
//! URI says otherwise) close a silent connection, and no lock is held across an await
//! that is not bounded. Readiness is "the last broker operation worked and the
//! connection is up", not "a lock is held".
//!
//! Refusals that no retry can fix (ACCESS_REFUSED: wrong user or password;
//! NOT_ALLOWED: no such vhost or no access to it; PRECONDITION_FAILED: the topology
//! exists with other arguments) end at once: the error is returned, recorded as the
//! broker's [`failure`](Broker::failure), and the shutdown token is cancelled so the
//! whole process stops and exits non-zero.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use rand::Rng as _;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use super::Topology;
use crate::config::{ConfigError, RabbitSettings};

/// Heartbeat asked of the broker unless the URI sets one: a silent connection is closed
/// after two missed heartbeats (~20 s), even when idle.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// How often [`Broker::spawn_probe`] asks the broker for a round trip, and how long it
/// waits for the answer: readiness is at most a few seconds old, even when idle.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

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
    #[error("RabbitMQ at {endpoint} did not answer {operation} within {after:?}")]
    Timeout {
        endpoint: String,
        operation: &'static str,
        after: Duration,
    },
    /// A refusal no retry can fix; see the module documentation.
    #[error("RabbitMQ at {endpoint} refused: {reason} ({hint})")]
    Refused {
        endpoint: String,
        reason: String,
        hint: &'static str,
    },
    #[error("RabbitMQ at {endpoint} unavailable for {after:?}, giving up: {last}")]
    GaveUp {
        endpoint: String,
        after: Duration,
        last: String,
    },
}

impl BrokerError {
    /// True when retrying cannot help: the process must stop and say why.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            BrokerError::BadUri(_)
                | BrokerError::Secret(_)
                | BrokerError::Refused { .. }
                | BrokerError::GaveUp { .. }
        )
    }
}

/// The AMQP reply code of a broker error (404, 403...), if it is one.
fn amqp_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.kind().get_id()),
        _ => None,
    }
}

fn amqp_message(e: &lapin::Error) -> Option<String> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_message().to_string()),
        _ => None,
    }
}

/// The AMQP reply codes that mean "this will never work as configured", with what to check.
fn permanent_refusal(e: &lapin::Error) -> Option<(String, &'static str)> {
    let hint = match amqp_code(e)? {
        403 => "check rabbitmq.url's user and rabbitmq.password",
        530 => "check the vhost in rabbitmq.url exists and the user may use it",
        406 => {
            "a queue or exchange exists with other arguments; see docs/operations.md, changing settings"
        }
        _ => return None,
    };
    Some((amqp_message(e)?, hint))
}

/// How a [`Broker`] connects; the default is a daemon's: retry until shutdown, declare
/// the topology.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectOptions {
    /// Command-line tools stop retrying once the broker has been unavailable this long.
    pub give_up_after: Option<Duration>,
    /// Read-only tools check that the deployment exists (passive declares) instead of
    /// declaring it: a typo'd `rabbitmq.prefix` is "no such deployment", not new queues.
    pub passive: bool,
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
    op_timeout: Duration,
    options: ConnectOptions,
    /// The current connection and its generation. A std mutex, held only to read or
    /// swap the `Arc`: never across an await.
    connection: Mutex<Option<(u64, Arc<Connection>)>>,
    generation: AtomicU64,
    /// One connection attempt at a time; the attempt is bounded, so the lock is too.
    connecting: tokio::sync::Mutex<()>,
    /// The last broker operation succeeded (readiness).
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Why the last probe got no answer; `None` when it did (or none ran yet).
    probe_error: Mutex<Option<String>>,
    failure: OnceLock<String>,
    shutdown: CancellationToken,
}

/// A handle that does not keep the broker alive (for observers such as a metric).
#[derive(Debug, Clone)]
pub struct WeakBroker(std::sync::Weak<Inner>);

impl WeakBroker {
    /// The broker, while something else still holds it.
    pub fn upgrade(&self) -> Option<Broker> {
        self.0.upgrade().map(|inner| Broker { inner })
    }
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
    /// A broker handle that has not connected yet (no I/O): the first
    /// [`channel`](Self::channel) or [`wait_connected`](Self::wait_connected) connects.
    /// `name` shows in the RabbitMQ management UI.
    pub fn new(
        settings: &RabbitSettings,
        name: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
        Self::with_options(settings, name, shutdown, ConnectOptions::default())
    }

    /// Like [`new`](Self::new), connecting as `options` say.
    pub fn with_options(
        settings: &RabbitSettings,
        name: &str,
        shutdown: CancellationToken,
        options: ConnectOptions,
    ) -> Result<Self, BrokerError> {
        let mut uri = AMQPUri::from_str(&settings.url).map_err(BrokerError::BadUri)?;
        if let Some(password) = &settings.password {
            uri.authority.userinfo.password = password
                .resolve("rabbitmq.password")?
                .expose_secret()
                .to_owned();
        }
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
        }
        let endpoint = format!(
            "amqp://{}@{}:{}/{}",
            uri.authority.userinfo.username, uri.authority.host, uri.authority.port, uri.vhost
        );
        Ok(Self {
            inner: Arc::new(Inner {
                uri,
                endpoint,
                name: name.to_owned(),
                topology: Topology::new(settings),
                max_backoff: Duration::from_millis(settings.reconnect_max_backoff_ms.max(100)),
                op_timeout: Duration::from_millis(settings.operation_timeout_ms.max(100)),
                options,
                connection: Mutex::new(None),
                generation: AtomicU64::new(0),
                connecting: tokio::sync::Mutex::new(()),
                healthy: AtomicBool::new(false),
                last_error: Mutex::new(None),
                probe_error: Mutex::new(None),
                failure: OnceLock::new(),
                shutdown,
            }),
        })
    }

    /// Connects (retrying with backoff until it succeeds, a permanent refusal, or
    /// `shutdown`) and declares the topology.
    pub async fn connect(
        settings: &RabbitSettings,
        name: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
        let broker = Self::new(settings, name, shutdown)?;
        broker.wait_connected().await?;
        Ok(broker)
    }

    /// Like [`connect`](Self::connect), as `options` say (command-line tools: give up
    /// after a while; read-only ones: never declare).
    pub async fn connect_with(
        settings: &RabbitSettings,
        name: &str,
        shutdown: CancellationToken,
        options: ConnectOptions,
    ) -> Result<Self, BrokerError> {
        let broker = Self::with_options(settings, name, shutdown, options)?;
        broker.wait_connected().await?;
        Ok(broker)
    }

    /// Waits until a connection is up and the topology declared.
    pub async fn wait_connected(&self) -> Result<(), BrokerError> {
        let ch = self.channel().await?;
        self.bounded("channel.close", ch.close(200, "connected".into()))
            .await
            .ok();
        Ok(())
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    pub fn downgrade(&self) -> WeakBroker {
        WeakBroker(Arc::downgrade(&self.inner))
    }

    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Why the broker stopped the process (a permanent refusal), if it did.
    pub fn failure(&self) -> Option<&str> {
        self.inner.failure.get().map(String::as_str)
    }

    /// True while the connection is up and the last broker operation worked.
    pub fn is_connected(&self) -> bool {
        self.readiness().is_ok()
    }

    /// A `/readyz` check: `Err` says what is wrong, naming the broker.
    pub fn readiness(&self) -> Result<(), String> {
        let current = self.current();
        let up = current
            .as_ref()
            .is_some_and(|(_, c)| c.status().connected());
        let probe = self.lock_probe_error().clone();
        if up && self.inner.healthy.load(Ordering::SeqCst) {
            return match probe {
                None => Ok(()),
                Some(why) => Err(format!("RabbitMQ at {}: {why}", self.inner.endpoint)),
            };
        }
        let why = self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| match current {
                Some(_) => "connection lost".to_owned(),
                None => "not connected yet".to_owned(),
            });
        Err(format!("RabbitMQ at {}: {why}", self.inner.endpoint))
    }

    fn lock_probe_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.inner
            .probe_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps [`readiness`](Self::readiness) current between operations: every
    /// `PROBE_EVERY` (2 s), while connected, a channel is opened and closed (one round
    /// trip each), so a broker that stops answering shows on `/readyz` within seconds
    /// rather than after missed heartbeats. A probe only reports: it never drops the
    /// connection (a slow answer on a loaded machine must not cost a reconnect and the
    /// confirms in flight); heartbeats and bounded operations do that. Ends on shutdown
    /// or when the broker is dropped. Needs a Tokio runtime.
    pub fn spawn_probe(&self) -> tokio::task::JoinHandle<()> {
        let weak = self.downgrade();
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(PROBE_EVERY) => {}
                }
                let Some(broker) = weak.upgrade() else { return };
                broker.probe().await;
            }
        })
    }

    async fn probe(&self) {
        let Some((_, conn)) = self.current() else {
            // Not connected: readiness says so already.
            return;
        };
        if !conn.status().connected() {
            return;
        }
        let round_trip = async {
            let ch = conn.create_channel().await?;
            ch.close(200, "probe".into()).await
        };
        let why = match tokio::time::timeout(PROBE_TIMEOUT, round_trip).await {
            Ok(Ok(())) => None,
            // The connection closed meanwhile: readiness says so from its status.
            Ok(Err(_)) if !conn.status().connected() => None,
            Ok(Err(e)) => Some(format!("probe failed: {e}")),
            Err(_) => Some(format!("no answer to a probe within {PROBE_TIMEOUT:?}")),
        };
        *self.lock_probe_error() = why;
    }

    /// Runs one broker operation with the operation timeout. A timeout marks the
    /// connection suspect: the next `channel()` opens a new one.
    pub async fn bounded<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T, lapin::Error>>,
    ) -> Result<T, BrokerError> {
        let generation = self.current().map(|(g, _)| g);
        match tokio::time::timeout(self.inner.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => match self.amqp_error(source) {
                e if e.is_permanent() => Err(self.fail(e)),
                e => Err(e),
            },
            Err(_) => {
                let e = self.timeout_error(operation);
                if let Some(g) = generation {
                    self.suspect(g, &e.to_string());
                }
                Err(e)
            }
        }
    }

    /// Something timed out on the current connection (a publish confirm, say): drop it
    /// so that the next `channel()` reconnects, and report not ready until then.
    pub fn report_unresponsive(&self, what: &str) {
        if let Some((g, _)) = self.current() {
            self.suspect(g, what);
        }
    }

    /// A fresh channel, reconnecting first if the connection is gone. Waits (with
    /// backoff) until the broker is back; fails on shutdown, a permanent refusal, or
    /// (command-line tools) after the give-up time.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut backoff = Duration::from_millis(100);
        let started = Instant::now();
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Err(BrokerError::ShuttingDown);
            }
            let e = match self.try_channel().await {
                Ok(ch) => {
                    self.inner.healthy.store(true, Ordering::SeqCst);
                    *self
                        .inner
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = None;
                    // The broker answered: as good as a probe.
                    *self.lock_probe_error() = None;
                    return Ok(ch);
                }
                Err(e) => e,
            };
            self.inner.healthy.store(false, Ordering::SeqCst);
            self.set_last_error(e.to_string());
            if e.is_permanent() {
                return Err(self.fail(e));
            }
            if let Some(limit) = self.inner.options.give_up_after
                && started.elapsed() >= limit
            {
                return Err(self.fail(BrokerError::GaveUp {
                    endpoint: self.inner.endpoint.clone(),
                    after: limit,
                    last: e.to_string(),
                }));
            }
            // Full jitter: many processes losing one broker must not return in lockstep.
            let sleep = rand::rng().random_range(backoff / 2..=backoff);
            tracing::warn!(endpoint = %self.inner.endpoint, error = %e, retry_in_ms = sleep.as_millis() as u64, "RabbitMQ unavailable");
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return Err(BrokerError::ShuttingDown),
                _ = tokio::time::sleep(sleep) => {}
            }
            backoff = (backoff * 2).min(self.inner.max_backoff);
        }
    }

    async fn try_channel(&self) -> Result<Channel, BrokerError> {
        if let Some(ch) = self.channel_on_current().await? {
            return Ok(ch);
        }
        let op_timeout = self.inner.op_timeout;
        let _connecting = tokio::time::timeout(op_timeout, self.inner.connecting.lock())
            .await
            .map_err(|_| self.timeout_error("connect (another attempt in progress)"))?;
        // Another task may have connected while this one waited.
        if let Some(ch) = self.channel_on_current().await? {
            return Ok(ch);
        }
        let props =
            ConnectionProperties::default().with_connection_name(self.inner.name.clone().into());
        let passive = self.inner.options.passive;
        let connect = async {
            let conn = Connection::connect_uri(self.inner.uri.clone(), props).await?;
            let ch = conn.create_channel().await?;
            if passive {
                // Read-only tools create nothing: a missing deployment fails with NOT_FOUND.
                self.inner.topology.check_exists(&ch).await?;
            } else {
                self.inner.topology.declare(&ch).await?;
            }
            Ok::<_, lapin::Error>((conn, ch))
        };
        let (conn, ch) = match tokio::time::timeout(op_timeout, connect).await {
            Ok(Ok(v)) => v,
            Ok(Err(source)) if passive && amqp_code(&source) == Some(404) => {
                return Err(BrokerError::Refused {
                    endpoint: self.inner.endpoint.clone(),
                    reason: self.inner.topology.explain_missing(&source),
                    hint: "check rabbitmq.prefix; read-only commands never create queues",
                });
            }
            Ok(Err(source)) => {
                // A changed setting that RabbitMQ cannot apply: say which and what to do.
                if let Some(help) = self.inner.topology.explain(&source) {
                    tracing::error!(endpoint = %self.inner.endpoint, "{help}");
                }
                return Err(self.amqp_error(source));
            }
            Err(_) => return Err(self.timeout_error("connect and declare the topology")),
        };
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *self.lock_connection() = Some((generation, Arc::new(conn)));
        tracing::info!(endpoint = %self.inner.endpoint, prefix = self.inner.topology.prefix(), "connected to RabbitMQ; topology declared");
        Ok(ch)
    }

    /// A channel on the current connection, `None` when there is no usable connection.
    async fn channel_on_current(&self) -> Result<Option<Channel>, BrokerError> {
        let Some((generation, conn)) = self.current() else {
            return Ok(None);
        };
        if !conn.status().connected() {
            self.forget(generation);
            return Ok(None);
        }
        match tokio::time::timeout(self.inner.op_timeout, conn.create_channel()).await {
            Ok(Ok(ch)) => Ok(Some(ch)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "channel creation failed; reconnecting");
                self.forget(generation);
                Ok(None)
            }
            Err(_) => {
                let e = self.timeout_error("channel.open");
                self.suspect(generation, &e.to_string());
                Err(e)
            }
        }
    }

    fn lock_connection(&self) -> std::sync::MutexGuard<'_, Option<(u64, Arc<Connection>)>> {
        self.inner
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> Option<(u64, Arc<Connection>)> {
        self.lock_connection().clone()
    }

    /// Drops connection `generation` if it is still the current one.
    fn forget(&self, generation: u64) -> Option<Arc<Connection>> {
        let mut guard = self.lock_connection();
        if guard.as_ref().is_some_and(|(g, _)| *g == generation) {
            return guard.take().map(|(_, c)| c);
        }
        None
    }

    fn suspect(&self, generation: u64, why: &str) {
        self.inner.healthy.store(false, Ordering::SeqCst);
        self.set_last_error(why.to_owned());
        if let Some(conn) = self.forget(generation) {
            tracing::warn!(endpoint = %self.inner.endpoint, why, "RabbitMQ connection unresponsive; reconnecting");
            // Closing a silent connection would wait on it: close in the background, bounded.
            let timeout = self.inner.op_timeout;
            tokio::spawn(async move {
                tokio::time::timeout(timeout, conn.close(320, "unresponsive".into()))
                    .await
                    .ok();
            });
        }
    }

    fn set_last_error(&self, why: String) {
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Records a permanent error, stops the process (shutdown token) and returns it.
    fn fail(&self, e: BrokerError) -> BrokerError {
        let message = e.to_string();
        if self.inner.failure.set(message.clone()).is_ok() {
            tracing::error!(endpoint = %self.inner.endpoint, error = %message, "RabbitMQ refused permanently; stopping");
            self.inner.shutdown.cancel();
        }
        e
    }

    fn amqp_error(&self, source: lapin::Error) -> BrokerError {
        match permanent_refusal(&source) {
            Some((reason, hint)) => BrokerError::Refused {
                endpoint: self.inner.endpoint.clone(),
                reason,
                hint,
            },
            None => BrokerError::Amqp {
                endpoint: self.inner.endpoint.clone(),
                source,
            },
        }
    }

    fn timeout_error(&self, operation: &'static str) -> BrokerError {
        BrokerError::Timeout {
            endpoint: self.inner.endpoint.clone(),
            operation,
            after: self.inner.op_timeout,
        }
    }

    /// Closes the connection (unacked messages go back to their queues). Bounded: a broker
    /// that does not answer the close must not hold up a process's exit.
    pub async fn close(&self) {
        let conn = self.lock_connection().take();
        if let Some((_, conn)) = conn
            && tokio::time::timeout(Duration::from_secs(5), conn.close(200, "shutdown".into()))
                .await
                .is_err()
        {
            tracing::warn!(endpoint = %self.inner.endpoint, "RabbitMQ did not confirm the connection close within 5 s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_and_configuration_are_permanent() {
        let endpoint = "amqp://guest@h:5672/v".to_owned();
        assert!(
            BrokerError::Refused {
                endpoint: endpoint.clone(),
                reason: "ACCESS_REFUSED".into(),
                hint: ""
            }
            .is_permanent()
        );
        assert!(
            !BrokerError::Timeout {
                endpoint,
                operation: "connect",
                after: Duration::from_secs(1)
            }
            .is_permanent()
        );
        assert!(!BrokerError::ShuttingDown.is_permanent());
    }
}
