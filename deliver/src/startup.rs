//! Wiring: pool, broker, mailbox leases, ops HTTP server, consumer. `Application::build`
//! binds, connects and takes its first mailbox leases (tests learn the HTTP port),
//! `run_until_stopped` consumes until shutdown, then gives its leases back and closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use mailpipe_common::amqp::{Broker, ConsumerSpec, Publisher, Stage, consume};
use mailpipe_common::config::CommonSettings;
use mailpipe_common::pipeline::Pipeline;
use mailpipe_common::service::{HttpServer, ReadyCheck, ops_router, serve};
use mailpipe_common::store::{DatabaseSettings, Store};
use mailpipe_common::telemetry::adopt_trace_context;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::feedback::MailboxFeedback;
use crate::graph::GraphClient;
use crate::metrics;
use crate::ownership::MailboxOwnership;
use crate::ownership::prefetch::PrefetchShare;
use crate::ownership::replay::ReplayProgress;
use crate::pool::MailboxPool;
use crate::send::ledger::DeliveredJobs;
use crate::send::{DeliverStage, DeliveryOutcome};
use crate::settings::DeliverSettings;

/// Connections kept for the lease rounds (membership, renewals, takes), beside
/// `database.max_connections` for everything else and the member lock's own one.
const LEASE_CONNECTIONS: u32 = 2;

#[derive(Debug)]
pub struct Application {
    http: HttpServer,
    broker: Broker,
    stage: DeliverStage,
    /// Each consumer's prefetch: sized by the lease rounds to the mailboxes owned.
    prefetch: tokio::sync::watch::Receiver<u16>,
    shutdown: CancellationToken,
    /// Stops the lease rounds once the consumer is done (its sends ended): leases go back then.
    ownership_stop: CancellationToken,
    ownership: tokio::task::JoinHandle<()>,
}

impl Application {
    pub async fn build(
        common: &CommonSettings,
        settings: &DeliverSettings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        metrics::register();
        let pool = Arc::new(MailboxPool::build(settings).context("building the mailbox pool")?);
        // Serve /healthz, /readyz and /metrics before anything waits on the broker or the
        // replay, so a liveness probe never kills a process that is starting up.
        let broker = Broker::new(&common.rabbitmq, "mailpipe-deliver", shutdown.clone())?;
        let replay = Arc::new(ReplayProgress::default());
        let store = Store::new(&common.database, shutdown.clone())?;
        // /readyz follows the database (reachable, schema current) as of a second ago.
        store.spawn_probe();
        let replay_check = replay.clone();
        let store_check = store.clone();
        let checks: Vec<ReadyCheck> = vec![
            Arc::new(move || store_check.readiness()),
            Arc::new(move || replay_check.readiness()),
        ];
        broker.spawn_probe();
        let http = serve(
            settings.http_listen,
            ops_router(&broker, checks),
            shutdown.clone(),
        )
        .await?;

        broker.wait_connected().await?;
        store.prepare(None).await?;
        let pipeline = Pipeline::new(
            Publisher::new(
                broker.clone(),
                Duration::from_millis(common.rabbitmq.confirm_timeout_ms),
            ),
            store,
        );
        let delivered = Arc::new(DeliveredJobs::default());
        // deliver.prefetch is the ceiling: a process holds what its mailboxes can send.
        let prefetch = PrefetchShare::new(
            settings
                .mailboxes
                .iter()
                .map(|m| m.limits.max_connections)
                .collect(),
            settings.prefetch,
        );
        let prefetch_sized = prefetch.subscribe();
        // Leases are renewed on connections of their own: on a loaded machine the sends
        // filled the shared pool, renewals waited past their deadline, and every mailbox
        // stopped until the next round (sends starved by their own bookkeeping).
        let lease_store = Store::new(
            &DatabaseSettings {
                max_connections: LEASE_CONNECTIONS,
                ..common.database.clone()
            },
            shutdown.clone(),
        )?;
        let mut ownership = MailboxOwnership::new(
            lease_store,
            pool.clone(),
            settings.lease_ttl(),
            quota_horizon(settings),
        )
        .sizing(prefetch);
        let owner = ownership.id();
        // The first round before consuming: this process's share of the pool is taken
        // (or known to be someone else's) and its windows rebuilt.
        match ownership.round().await {
            Ok(round) => {
                replay.finish(round.sends_restored);
                tracing::info!(
                    owner = %owner,
                    members = round.members,
                    mailboxes = round.held,
                    sends_restored = round.sends_restored,
                    "mailbox leases taken"
                );
            }
            Err(e) => tracing::warn!(error = %e, "first lease round failed; retrying"),
        }
        let ownership_stop = CancellationToken::new();
        let ownership = tokio::spawn(ownership.run(replay.clone(), ownership_stop.clone()));

        tokio::spawn(metrics::refresh_loop(pool.clone(), shutdown.clone()));
        tokio::spawn(crate::pool::hold_report::run(
            pool.clone(),
            pipeline.store().clone(),
            owner,
            ownership_stop.clone(),
        ));
        let graph = if settings.graph.enabled {
            Some(Arc::new(
                GraphClient::from_settings(settings).context("building the Graph client")?,
            ))
        } else {
            None
        };
        let feedback_stop = ownership_stop.clone();
        if let Some(feedback) = MailboxFeedback::new(
            settings,
            graph.clone(),
            pool.clone(),
            pipeline.store().clone(),
        ) {
            tokio::spawn(feedback.run(feedback_stop));
        }
        // One Graph client for reads and sends: its per-mailbox gates count both.
        let stage = DeliverStage::new(
            pool,
            pipeline,
            delivered,
            settings,
            owner,
            graph,
            shutdown.clone(),
        );
        Ok(Self {
            http,
            broker,
            stage,
            prefetch: prefetch_sized,
            shutdown,
            ownership_stop,
            ownership,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.addr
    }

    pub fn stage(&self) -> &DeliverStage {
        &self.stage
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let queues = self.broker.topology().stage_queues(Stage::Deliver);
        // No work is taken before this process owns a mailbox: messages held while a dead
        // predecessor's leases lapse would come back to the queue on every crash, and a
        // crash loop would push them past the queue's delivery limit.
        let mut waited = false;
        while self.stage.pool().held().is_empty() && !self.shutdown.is_cancelled() {
            if !waited {
                tracing::info!("waiting for a mailbox lease before taking work");
                waited = true;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        // One consumer per lane queue, each with its own prefetch: the pool chooses between
        // the messages they hold (transactional first, batches in turn). The prefetch
        // follows the mailboxes owned, so the rest stays in the queue for the others.
        let consumers = queues.into_iter().map(|queue| {
            let stage = self.stage.clone();
            let spec = ConsumerSpec::queue(queue, 1).following(self.prefetch.clone());
            consume(&self.broker, spec, move |delivery| {
            let stage = stage.clone();
            async move {
                let span = tracing::info_span!("deliver", job = tracing::field::Empty);
                adopt_trace_context(&span, &delivery.properties);
                let outcome = stage.handle(&delivery.properties, &delivery.data).instrument(span).await;
                let acked = match outcome {
                    Ok(DeliveryOutcome::Returned) => {
                        metrics::MESSAGES.with_label_values(&["returned"]).inc();
                        delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
                    }
                    Ok(_) => delivery.acker.ack(BasicAckOptions::default()).await,
                    Err(e) => {
                        // The outcome is not on record: the message must come back.
                        tracing::error!(error = %e, "could not record the outcome; returning the message to the queue");
                        delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
                    }
                };
                if let Err(e) = acked {
                    // The channel died; the broker redelivers, and the ledger prevents a resend.
                    tracing::warn!(error = %e, "ack failed; the broker will redeliver");
                }
            }
        })
        });
        futures::future::join_all(consumers).await;
        // Nothing is in flight any more: the leases go back, and the others take over now.
        self.ownership_stop.cancel();
        self.ownership.await.ok();
        self.stage.pool().close_idle().await;
        self.broker.close().await;
        self.shutdown.cancel();
        self.http.task.await.ok();
        if let Some(failure) = self.broker.failure() {
            anyhow::bail!("{failure}");
        }
        tracing::info!("mailpipe-deliver stopped");
        Ok(())
    }
}

/// The longest window any limit uses: sends older than this no longer matter.
fn quota_horizon(settings: &DeliverSettings) -> Duration {
    let mailbox = settings
        .mailboxes
        .iter()
        .map(|m| m.limits.recipient_window_ms.max(m.limits.message_window_ms))
        .max()
        .unwrap_or(0);
    let tenant = settings
        .tenants
        .iter()
        .map(|t| t.external_window_ms)
        .max()
        .unwrap_or(0);
    Duration::from_millis(mailbox.max(tenant))
}
