//! `Application`: builds the stage from settings (templates, broker, ops HTTP server) and
//! runs the consume loop until the shutdown token fires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailpipe_common::amqp::{Broker, BrokerError, ConsumerSpec, Publisher, Stage, consume};
use mailpipe_common::config::{CommonSettings, ConfigError};
use mailpipe_common::pipeline::Pipeline;
use mailpipe_common::service::{self, HttpServer, ReadyCheck};
use mailpipe_common::store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::attachments::AttachmentLoader;
use crate::metrics;
use crate::renderer::Renderer;
use crate::settings::Settings;
use crate::stage::RenderStage;
use crate::templates::{TemplateLoadError, Templates};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Templates(#[from] TemplateLoadError),
    #[error("render.attachments_root: {0}")]
    AttachmentsRoot(std::io::Error),
    #[error("render.http_listen: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("database: {0}")]
    DatabaseConfig(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StartupError {
    /// Errors an operator fixes in the configuration or the template files (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartupError::Templates(_)
                | StartupError::AttachmentsRoot(_)
                | StartupError::Broker(BrokerError::BadUri(_) | BrokerError::Secret(_))
                | StartupError::DatabaseConfig(_)
                | StartupError::Store(StoreError::SchemaBehind { .. })
        )
    }
}

#[derive(Debug)]
pub struct Application {
    http: HttpServer,
    broker: Broker,
    stage: RenderStage,
    queues: Vec<String>,
    prefetch: u16,
}

impl Application {
    /// Loads and checks the templates, binds the ops server (so `/healthz` answers while
    /// the broker is still being reached), then connects to RabbitMQ (waiting for it, or
    /// for `shutdown`).
    pub async fn build(
        settings: Settings,
        common: CommonSettings,
        shutdown: CancellationToken,
    ) -> Result<Self, StartupError> {
        metrics::init();
        let templates = Templates::load(&settings.templates_dir)?;
        tracing::info!(dir = %settings.templates_dir.display(), templates = ?templates.names().collect::<Vec<_>>(), "templates loaded");
        let attachments = AttachmentLoader::new(
            settings.attachments_root.as_deref(),
            settings.max_attachment_bytes,
        )
        .map_err(StartupError::AttachmentsRoot)?;
        let renderer = Arc::new(Renderer::new(templates, attachments, &settings));

        let broker = Broker::new(&common.rabbitmq, "mailpipe-render", shutdown.clone())?;
        let templates_check: ReadyCheck = {
            let renderer = renderer.clone();
            // Templates are loaded before anything is served; the check states it for /readyz readers.
            Arc::new(move || {
                if renderer.templates().is_empty() {
                    Err("no templates loaded".to_owned())
                } else {
                    Ok(())
                }
            })
        };
        let store = Store::new(&common.database, shutdown.clone())?;
        // Not ready until the database answers with this build's schema (probed every second).
        store.spawn_probe();
        let store_check: ReadyCheck = {
            let store = store.clone();
            Arc::new(move || store.readiness())
        };
        broker.spawn_probe();
        let router = service::ops_router(&broker, vec![templates_check, store_check]);
        let http = service::serve(settings.http_listen, router, shutdown.clone())
            .await
            .map_err(StartupError::Http)?;

        broker.wait_connected().await?;
        store.prepare(None).await?;
        let publisher = Publisher::new(
            broker.clone(),
            Duration::from_millis(common.rabbitmq.confirm_timeout_ms),
        );
        let stage = RenderStage::new(
            renderer,
            Pipeline::new(publisher, store),
            settings.concurrency,
            Duration::from_millis(settings.job_timeout_ms),
        );
        let queues = broker.topology().stage_queues(Stage::Render);
        Ok(Self {
            http,
            broker,
            stage,
            queues,
            prefetch: common.rabbitmq.prefetch,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` answer (port 0 in settings picks one).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.addr
    }

    pub fn stage(&self) -> &RenderStage {
        &self.stage
    }

    /// Consumes until shutdown, finishes the jobs in hand, then closes the connection.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        // Transactional jobs have a queue of their own: they wait for at most the renders
        // already in hand, not for a batch's backlog.
        let consumers = self.queues.into_iter().map(|queue| {
            let stage = self.stage.clone();
            consume(
                &self.broker,
                ConsumerSpec::queue(queue, self.prefetch),
                move |delivery| {
                    let stage = stage.clone();
                    async move { stage.process(delivery).await }
                },
            )
        });
        futures::future::join_all(consumers).await;
        self.broker.close().await;
        self.http.task.await??;
        match self.broker.failure() {
            Some(failure) => Err(anyhow::anyhow!("{failure}")),
            None => Ok(()),
        }
    }
}
