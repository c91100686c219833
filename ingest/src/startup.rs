//! `Application`: binds the HTTP server first, then connects and follows the events stream
//! (port 0 picks a free one: tests read it back with `port()`), and runs until the
//! shutdown token fires.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailpipe_common::amqp::{Broker, BrokerError, Publisher};
use mailpipe_common::config::ConfigError;
use mailpipe_common::pipeline::Pipeline;
use mailpipe_common::service::{HttpServer, ReadyCheck, ops_router, serve_with_limits};
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::eta::PoolCapacity;
use crate::events;
use crate::idempotency::AcceptedIds;
use crate::metrics;
use crate::publish::{JobPublisher, SharedStatus};
use crate::settings::{ApiTokens, Config};
use crate::status::StatusIndex;
use crate::validate::Validator;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Listen(#[from] std::io::Error),
}

#[derive(Debug)]
pub struct Application {
    server: HttpServer,
    follower: tokio::task::JoinHandle<()>,
    pruner: tokio::task::JoinHandle<()>,
    broker: Broker,
}

/// How often finished batches older than the stream's retention are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// A status index that estimates ETAs from the configured pool (or says why it cannot).
pub fn status_index(config: &Config) -> StatusIndex {
    let pool = config
        .pool
        .as_ref()
        .map_err(Clone::clone)
        .and_then(PoolCapacity::from_settings);
    StatusIndex::with_pool(pool)
}

/// Forgets, every `every`, batches (and their jobs) whose last event is older than the
/// events stream's retention: the stream has forgotten them too, so memory stays bounded
/// by what the stream holds.
pub async fn prune_periodically(
    status: SharedStatus,
    retention: chrono::Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let cutoff = chrono::Utc::now() - retention;
        let mut index = crate::publish::lock_status(&status);
        let forgotten = index.prune_before(cutoff);
        if forgotten > 0 {
            tracing::info!(forgotten, jobs = index.jobs_known(), batches = index.batches_known(), %cutoff, "forgot batches older than the events stream's retention");
        }
    }
}

impl Application {
    /// Everything up to a listening socket; returns once the port is bound. The broker
    /// is reached and the events stream replayed in the background: `/healthz` answers
    /// at once, `/readyz` says what it still waits for, and submissions wait (bounded)
    /// for the replay.
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        metrics::register();
        let tokens = ApiTokens::resolve(&config.ingest.api_tokens)?;
        let validator = Validator::from_settings(&config.ingest)?;
        let broker = Broker::new(&config.rabbitmq, "mailpipe-ingest", shutdown.clone())?;
        let confirm_timeout = Duration::from_millis(config.rabbitmq.confirm_timeout_ms);
        let pipeline = Pipeline::new(Publisher::new(broker.clone(), confirm_timeout));
        let ids = AcceptedIds::new();
        let status = Arc::new(Mutex::new(status_index(&config)));
        let (replayed, applied, follower) = events::follow(&pipeline, ids.clone(), status.clone());
        let pruner = tokio::spawn(prune_periodically(
            status.clone(),
            config.events_retention(),
            PRUNE_EVERY,
            shutdown.clone(),
        ));
        let publisher = JobPublisher::new(pipeline, ids, status, config.ingest.max_in_flight);

        let replay = replayed.clone();
        let checks: Vec<ReadyCheck> = vec![Arc::new(move || {
            if *replay.borrow() {
                Ok(())
            } else {
                Err(format!(
                    "replaying the events stream: {} events so far",
                    applied.load(Ordering::Relaxed)
                ))
            }
        })];
        let listen = config.ingest.listen;
        let limits = config.ingest.http_limits();
        let state = AppState::new(validator, publisher, tokens, config.ingest, replayed);
        let router = api::router(state)
            .merge(ops_router(&broker, checks))
            .layer(axum::middleware::from_fn(api::track));
        let server = serve_with_limits(listen, router, limits, shutdown).await?;
        Ok(Self {
            server,
            follower,
            pruner,
            broker,
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
        self.follower.await.ok();
        self.pruner.await.ok();
        self.broker.close().await;
        if let Some(failure) = self.broker.failure() {
            return Err(std::io::Error::other(failure.to_owned()));
        }
        served
    }
}
