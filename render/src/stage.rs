//! One delivery from the render queue → one `RenderOutcome`, with everything it wrote
//! confirmed by the broker. `process` wraps it with the span, the ack and the metrics;
//! tests drive `handle` directly.
//!
//! | outcome    | written (all confirmed before the ack)          | then          |
//! |------------|-------------------------------------------------|---------------|
//! | `Rendered` | message on the deliver queue, `rendered` event  | ack           |
//! | `Dead`     | job in dead letters with reason, `failed` event | ack           |
//! | `Requeue`  | (a publish failed: broker trouble)              | nack, requeue |
//!
//! A requeued job comes back; the quorum queue's delivery limit bounds how often.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicNackOptions};
use mailpipe_common::amqp::{BasicProperties, Delivery, PublishError, Stage, header_str};
use mailpipe_common::contract::{ContractError, DeliveryEvent, EventKind, Job, RenderedMessage};
use mailpipe_common::domain::{BatchId, JobId};
use mailpipe_common::pipeline::{BATCH_HEADER, JOB_ID_HEADER, Pipeline};
use mailpipe_common::telemetry::adopt_trace_context;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::metrics;
use crate::renderer::Renderer;

/// Pause before handing a job back after a publish failure, so a broker in trouble is
/// not hammered with instant redeliveries.
const REQUEUE_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderOutcome {
    /// Published to the deliver queue, `rendered` event recorded.
    Rendered { job_id: JobId, bytes: usize },
    /// Cannot ever be rendered: in dead letters with `reason`, `failed` event recorded
    /// (when the job id could be read).
    Dead { reason: String, kind: &'static str },
    /// A publish failed; nothing is acked and the broker will deliver the job again.
    Requeue { error: String },
}

#[derive(Debug, Clone)]
pub struct RenderStage {
    renderer: Arc<Renderer>,
    pipeline: Pipeline,
    /// Bounds jobs rendering at once (`render.concurrency`) on the blocking pool.
    permits: Arc<Semaphore>,
    /// Bound on one render (`render.job_timeout_ms`).
    job_timeout: Duration,
}

impl RenderStage {
    pub fn new(
        renderer: Arc<Renderer>,
        pipeline: Pipeline,
        concurrency: usize,
        job_timeout: Duration,
    ) -> Self {
        Self {
            renderer,
            pipeline,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            job_timeout,
        }
    }

    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// Handles one delivery: span, outcome, ack or nack, metrics.
    pub async fn process(&self, delivery: Delivery) {
        let job_id = header_str(&delivery.properties, JOB_ID_HEADER).unwrap_or_default();
        let span =
            tracing::info_span!("render", job_id = %job_id, redelivered = delivery.redelivered);
        adopt_trace_context(&span, &delivery.properties);
        async {
            let outcome = self.handle(&delivery.data, &delivery.properties).await;
            let settled = match &outcome {
                RenderOutcome::Rendered { bytes, .. } => {
                    tracing::debug!(bytes, "rendered");
                    delivery.acker.ack(BasicAckOptions::default()).await
                }
                RenderOutcome::Dead { reason, .. } => {
                    tracing::warn!(%reason, "job cannot be rendered; dead-lettered");
                    delivery.acker.ack(BasicAckOptions::default()).await
                }
                RenderOutcome::Requeue { error } => {
                    tracing::warn!(%error, "publishing failed; job goes back to the queue");
                    metrics::requeued();
                    tokio::time::sleep(REQUEUE_PAUSE).await;
                    delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await
                }
            };
            if let Err(e) = settled {
                // The channel is gone: the broker redelivers, and handling is idempotent by job id.
                tracing::warn!(error = %e, "ack/nack failed; the broker will redeliver");
            }
        }
        .instrument(span)
        .await
    }

    /// Renders and publishes (or dead-letters) one job body; never acks.
    pub async fn handle(&self, body: &[u8], props: &BasicProperties) -> RenderOutcome {
        let job = match Job::from_queue(body) {
            Ok(job) => job,
            Err(e) => {
                let kind = match e {
                    ContractError::TooNew { .. } => "contract_version",
                    _ => "bad_job",
                };
                let (job_id, batch) = ids_of_unreadable(body, props);
                return self
                    .dead(
                        body,
                        props,
                        job_id,
                        batch,
                        format!("cannot read the job: {e}"),
                        kind,
                    )
                    .await;
            }
        };
        let (job_id, batch) = (job.id.clone(), job.batch.clone());

        let started = Instant::now();
        let rendered = self.render(job).await;
        match rendered {
            Ok(msg) => {
                let bytes = msg.mime.len();
                metrics::rendered(started.elapsed(), bytes);
                match self.publish(&msg).await {
                    Ok(()) => RenderOutcome::Rendered { job_id, bytes },
                    Err(e) => RenderOutcome::Requeue {
                        error: e.to_string(),
                    },
                }
            }
            Err((reason, kind)) => {
                self.dead(body, props, Some(job_id), batch, reason, kind)
                    .await
            }
        }
    }

    /// Runs the renderer on the blocking pool, at most `concurrency` at once, for at most
    /// `job_timeout`. A render past its time (slow attachment I/O, say) is given up: the
    /// job is dead-lettered and the slot freed at once. The blocking thread cannot be
    /// stopped and finishes on its own; what it returns is dropped.
    async fn render(&self, job: Job) -> Result<RenderedMessage, (String, &'static str)> {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ("render pool closed".to_owned(), "internal"))?;
        let renderer = self.renderer.clone();
        let task = tokio::task::spawn_blocking(move || renderer.render(&job));
        match tokio::time::timeout(self.job_timeout, task).await {
            Ok(Ok(Ok(msg))) => Ok(msg),
            Ok(Ok(Err(e))) => Err((e.to_string(), e.kind())),
            // A panic on this input would recur on every redelivery: treat it like bad input.
            Ok(Err(e)) => Err((format!("internal error while rendering: {e}"), "internal")),
            Err(_) => Err((
                format!(
                    "rendering took longer than render.job_timeout_ms ({} ms): given up (slow attachment I/O?)",
                    self.job_timeout.as_millis()
                ),
                "timeout",
            )),
        }
    }

    async fn publish(&self, msg: &RenderedMessage) -> Result<(), PublishError> {
        // Recorded (and stamped) before the message is published: deliver may send it and
        // record `delivered` within a millisecond, and the record is the truth. While the
        // database is away this waits, so nothing new is taken.
        let mut event = DeliveryEvent::new(
            msg.meta.job_id.clone(),
            msg.meta.batch.clone(),
            EventKind::Rendered,
        );
        event.message_id = Some(msg.meta.message_id.clone());
        let recorded = self.pipeline.record_event(&event).await?;
        let sent = self.pipeline.send_rendered(&msg.meta, &msg.mime).await?;
        sent.confirmed().await?;
        recorded.confirmed().await
    }

    async fn dead(
        &self,
        body: &[u8],
        props: &BasicProperties,
        job_id: Option<JobId>,
        batch: Option<BatchId>,
        reason: String,
        kind: &'static str,
    ) -> RenderOutcome {
        let written = async {
            let dead = self
                .pipeline
                .dead_letter(Stage::Render, body, props, &reason)
                .await?;
            let event = match job_id {
                Some(id) => {
                    let mut event = DeliveryEvent::new(id, batch, EventKind::Failed);
                    event.reason = Some(reason.clone());
                    Some(self.pipeline.record_event(&event).await?)
                }
                None => None,
            };
            dead.confirmed().await?;
            if let Some(e) = event {
                e.confirmed().await?;
            }
            Ok::<_, PublishError>(())
        }
        .await;
        match written {
            Ok(()) => {
                metrics::dead(kind);
                RenderOutcome::Dead { reason, kind }
            }
            Err(e) => RenderOutcome::Requeue {
                error: e.to_string(),
            },
        }
    }
}

/// The job id and batch of a body that is not a readable job: from the headers ingest
/// wrote, else from the JSON if it is JSON at all. Without an id no event can be written.
fn ids_of_unreadable(body: &[u8], props: &BasicProperties) -> (Option<JobId>, Option<BatchId>) {
    let json = serde_json::from_slice::<serde_json::Value>(body).ok();
    let field = |key: &str| {
        json.as_ref()
            .and_then(|v| v.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let id = header_str(props, JOB_ID_HEADER)
        .or_else(|| field("id"))
        .and_then(|s| JobId::parse(&s).ok());
    let batch = header_str(props, BATCH_HEADER)
        .or_else(|| field("batch"))
        .and_then(|s| BatchId::parse(&s).ok());
    (id, batch)
}
