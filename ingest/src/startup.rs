//! `Application`: binds the HTTP server first, then reaches RabbitMQ and PostgreSQL (the
//! schema made current) in the background, prunes what is older than the retention, and
//! runs until the shutdown token fires. Port 0 picks a free port: tests read it back
//! with `port()`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mailpipe_common::amqp::{Broker, BrokerError, Publisher};
use mailpipe_common::config::ConfigError;
use mailpipe_common::pipeline::Pipeline;
use mailpipe_common::service::{HttpServer, ReadyCheck, ops_router, serve_with_limits};
use mailpipe_common::store::Store;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::console::ConsoleState;
use crate::eta::PoolCapacity;
use crate::metrics;
use crate::publish::JobPublisher;
use crate::records::Records;
use crate::settings::Config;
use crate::tokens::ApiTokens;
use crate::validate::Validator;
use crate::webhooks::{Dispatcher, Webhooks};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Listen(#[from] std::io::Error),
    #[error("the webhook HTTP client: {0}")]
    Webhooks(#[from] reqwest::Error),
}

#[derive(Debug)]
pub struct Application {
    server: HttpServer,
    keeper: tokio::task::JoinHandle<()>,
    dispatcher: tokio::task::JoinHandle<()>,
    dead_log: tokio::task::JoinHandle<()>,
    broker: Broker,
    store: Store,
}

/// How often what is older than the retention is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The queries, with ETAs from the configured pool (or why there are none).
pub fn records(config: &Config, store: Store) -> Records {
    let pool = config
        .pool
        .as_ref()
        .map_err(Clone::clone)
        .and_then(PoolCapacity::from_settings);
    Records::new(store, pool)
}

/// Reaches RabbitMQ (so `/readyz` tells), makes the schema current, then prunes every
/// `every` until shutdown. `ready` turns true once the schema is current.
async fn keep_database(
    broker: Broker,
    store: Store,
    ready: Arc<AtomicBool>,
    every: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        if let Err(e) = broker.wait_connected().await {
            tracing::debug!(error = %e, "not connected to RabbitMQ");
        }
    });
    // /readyz and the API's 503 follow the database as of a second ago.
    let probe = store.spawn_probe();
    match store.prepare(None).await {
        Ok(()) => ready.store(true, Ordering::SeqCst),
        Err(e) => {
            tracing::error!(error = %e, "the database cannot be used: submissions are answered 503");
            probe.await.ok();
            return;
        }
    }
    loop {
        match store.prune(chrono::Utc::now()).await {
            Ok(r) if r.jobs + r.stale_claims + r.batches > 0 => {
                tracing::info!(
                    jobs = r.jobs,
                    stale_claims = r.stale_claims,
                    batches = r.batches,
                    "pruned what is older than database.retention_days"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning failed; trying again later"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    // The probe ends on the same token; its connection is closed before the pool is.
    probe.await.ok();
}

impl Application {
    /// Everything up to a listening socket; returns once the port is bound. RabbitMQ and
    /// PostgreSQL are reached in the background: `/healthz` answers at once, `/readyz`
    /// says what it still waits for, and submissions are answered 503 meanwhile.
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        metrics::register();
        let tokens = ApiTokens::resolve(&config.ingest.api_tokens)?;
        for (key, message) in crate::tokens::legacy_warnings(&config.ingest.api_tokens) {
            tracing::warn!(key = %key, "{message}");
        }
        let validator = Validator::from_settings(&config.ingest)?;
        let webhooks = Webhooks::resolve(&config.ingest.webhooks)?;
        let broker = Broker::new(&config.rabbitmq, "mailpipe-ingest", shutdown.clone())?;
        let store = Store::new(&config.database, shutdown.clone())?;
        let confirm_timeout = Duration::from_millis(config.rabbitmq.confirm_timeout_ms);
        let pipeline = Pipeline::new(
            Publisher::new(broker.clone(), confirm_timeout),
            store.clone(),
        );
        let schema_ready = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(keep_database(
            broker.clone(),
            store.clone(),
            schema_ready.clone(),
            PRUNE_EVERY,
            shutdown.clone(),
        ));
        let publisher = JobPublisher::new(pipeline, &config.ingest);
        let dispatcher = tokio::spawn(
            Dispatcher::new(store.clone(), webhooks)?.run(schema_ready.clone(), shutdown.clone()),
        );

        let dead_log = tokio::spawn(crate::dead_log::run(
            broker.clone(),
            store.clone(),
            schema_ready.clone(),
        ));

        let reachable = store.clone();
        let schema = schema_ready.clone();
        let checks: Vec<ReadyCheck> = vec![
            Arc::new(move || {
                if schema.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("making the database schema current".to_owned())
                }
            }),
            Arc::new(move || reachable.readiness()),
        ];
        let listen = config.ingest.listen;
        let limits = config.ingest.http_limits();
        let records = records(&config, store.clone());
        let pool = config.pool.as_ref().ok().cloned();
        let state = AppState::new(
            validator,
            publisher,
            records,
            tokens,
            config.ingest,
            schema_ready,
        );
        broker.spawn_probe();
        let console = crate::console::router(ConsoleState::new(state.clone(), pool));
        let router = api::router(state)
            .merge(console)
            .merge(ops_router(&broker, checks))
            .layer(axum::middleware::from_fn(api::track));
        let server = serve_with_limits(listen, router, limits, shutdown).await?;
        Ok(Self {
            server,
            keeper,
            dispatcher,
            dead_log,
            broker,
            store,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }

    /// Serves until the shutdown token given to `build` fires (or RabbitMQ refuses for
    /// good, which is an error); in-flight requests finish (a batch being published is
    /// published to the end) before this returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.task.await.map_err(std::io::Error::other)?;
        self.keeper.await.ok();
        self.dispatcher.await.ok();
        self.dead_log.await.ok();
        self.broker.close().await;
        self.store.close().await;
        if let Some(failure) = self.broker.failure() {
            return Err(std::io::Error::other(failure.to_owned()));
        }
        served
    }
}
