//! Publishing accepted jobs, exactly once per id: claim the ids in the system of record,
//! then, chunk by chunk, refresh the claim, publish to the render queue, and once the
//! broker confirmed, record the jobs `accepted` (see `mailpipe_common::store` claims).

use std::time::Instant;

use chrono::Utc;
use mailpipe_common::amqp::{PendingConfirm, PublishError};
use mailpipe_common::contract::{DeliveryEvent, EventKind, FieldError, Job};
use mailpipe_common::pipeline::Pipeline;
use mailpipe_common::store::{ClaimHeld, ClaimInput, ClaimOutcome, Opener, StoreError};
use uuid::Uuid;

use crate::lanes::{LaneAssigner, LanePolicy};
use crate::metrics;
use crate::settings::IngestSettings;
use crate::suppressed::SuppressedPolicy;

/// Jobs published together (two chunks in flight at once).
const PUBLISH_CHUNK: usize = 500;
/// Confirmed jobs recorded `accepted` in one statement.
const RECORD_BATCH: usize = 1000;
/// How often a long publish refreshes its claim; far below `CLAIM_TTL`, so a claim is
/// never taken over while its publish is alive.
const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What happened to one submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Accepted before with the same content: not published again.
    Duplicate,
    /// Another request (here or on another replica) is publishing the same id right now.
    InFlight,
    /// Accepted before with different content: refused.
    Conflict,
    /// A recipient is suppressed and the policy is `refuse`: the field and address.
    Suppressed(FieldError),
    /// Its batch exists and is another owner's (a `submit` token): nothing was written.
    NotYours,
}

#[derive(Debug, Clone)]
pub struct JobPublisher {
    pipeline: Pipeline,
    chunk: usize,
    lanes: LanePolicy,
    suppressed: SuppressedPolicy,
}

impl JobPublisher {
    /// Publishes awaiting their confirm at once: `ingest.max_in_flight`, in two chunks.
    pub fn new(pipeline: Pipeline, settings: &IngestSettings) -> Self {
        let lanes = LanePolicy::new(
            &settings.transactional_templates,
            pipeline.topology().bulk_queues(),
        );
        Self {
            pipeline,
            chunk: (settings.max_in_flight / 2).clamp(1, PUBLISH_CHUNK),
            lanes,
            // What a job to a suppressed address gets (`ingest.suppressed_recipients`).
            suppressed: settings.suppressed_recipients,
        }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Claims and publishes one job, and waits until it is confirmed and recorded.
    /// The job's batch is opened by `opener` (its row, owner and `callback_url`, checked)
    /// only when the job is accepted or a duplicate, before it is published: a refused
    /// job changes nothing.
    pub async fn publish_one(
        &self,
        job: Job,
        callback_url: Option<&str>,
        opener: Opener<'_>,
    ) -> Result<Outcome, PublishError> {
        let mut sender = self.sender();
        if let Some(Some(refusal)) = sender.suppression_refusals(&[&job]).await?.pop() {
            return Ok(Outcome::Suppressed(refusal));
        }
        let outcome = match sender.claim(&[&job]).await?.first() {
            Some(ClaimOutcome::Claimed) => Outcome::Accepted,
            Some(ClaimOutcome::InFlight) => Outcome::InFlight,
            Some(ClaimOutcome::Conflict) => Outcome::Conflict,
            Some(ClaimOutcome::Duplicate) | None => Outcome::Duplicate,
        };
        if matches!(outcome, Outcome::Accepted | Outcome::Duplicate)
            && let Some(batch) = &job.batch
        {
            let store = self.pipeline.store();
            match store.open_batch(batch.as_str(), opener, callback_url).await {
                Ok(true) => {}
                Ok(false) => {
                    sender.abandon().await;
                    return Ok(Outcome::NotYours);
                }
                Err(e) => {
                    sender.abandon().await;
                    return Err(e.into());
                }
            }
        }
        if outcome == Outcome::Accepted {
            let sent = match sender.send(job).await {
                Ok(()) => sender.finish().await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                sender.abandon().await;
                return Err(e);
            }
        } else {
            sender.settled = true;
            metrics::duplicate(1);
        }
        Ok(outcome)
    }

    /// A sender for many jobs, under one claim.
    pub fn sender(&self) -> BatchSender {
        BatchSender {
            publisher: self.clone(),
            claim: Uuid::new_v4(),
            chunk: Vec::new(),
            published: None,
            lanes: LaneAssigner::new(self.lanes.clone()),
            confirmed: Vec::new(),
            refreshed: Instant::now(),
            ours: ClaimHeld::All,
            recording: None,
            accepted: 0,
            settled: false,
        }
    }
}

/// Publishes of one chunk awaiting their confirms, with their `accepted` events.
#[derive(Default)]
struct PublishedChunk {
    in_flight: Vec<(DeliveryEvent, Instant, PendingConfirm)>,
    /// Publishing stopped at this error (the jobs before it are in flight).
    failure: Option<PublishError>,
}

/// Claims jobs, then publishes claimed ones chunk by chunk. Dropped unfinished (a request
/// cancelled), it releases the claims it still holds, so the ids can be submitted again.
pub struct BatchSender {
    publisher: JobPublisher,
    claim: Uuid,
    chunk: Vec<Job>,
    /// The chunk published last, awaiting its confirms.
    published: Option<PublishedChunk>,
    lanes: LaneAssigner,
    /// Confirmed by the broker, not yet handed to a record.
    confirmed: Vec<DeliveryEvent>,
    /// When the claim was last refreshed, and what it still held then.
    refreshed: Instant,
    ours: ClaimHeld,
    /// The previous chunk's `accepted` record, written while the next chunk is published.
    recording: Option<tokio::task::JoinHandle<Result<u64, StoreError>>>,
    /// Jobs confirmed and recorded so far.
    pub accepted: u64,
    /// `finish` or `abandon` ran: nothing left to release.
    settled: bool,
}

impl std::fmt::Debug for BatchSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSender")
            .field("claim", &self.claim)
            .field("pending", &self.chunk.len())
            .field("accepted", &self.accepted)
            .finish()
    }
}

impl BatchSender {
    /// Under the `refuse` policy, why each job is refused for a suppressed recipient (one
    /// query); under `drop`, nothing (no query).
    pub async fn suppression_refusals(
        &self,
        jobs: &[&Job],
    ) -> Result<Vec<Option<FieldError>>, PublishError> {
        if self.publisher.suppressed == SuppressedPolicy::Drop {
            return Ok(vec![None; jobs.len()]);
        }
        Ok(crate::suppressed::refusals(self.publisher.pipeline.store(), jobs).await?)
    }

    /// Claims `jobs` for this sender: one outcome per job. Fails at once (nothing
    /// claimed) when the database is unreachable.
    pub async fn claim(&self, jobs: &[&Job]) -> Result<Vec<ClaimOutcome>, PublishError> {
        let inputs: Vec<ClaimInput> = jobs.iter().map(|j| ClaimInput::of(j)).collect();
        Ok(self
            .publisher
            .pipeline
            .store()
            .claim_jobs(self.claim, &inputs)
            .await?)
    }

    /// Publishes a job claimed by this sender (in chunks: it may return before the job is
    /// confirmed; `finish` waits for the rest).
    pub async fn send(&mut self, job: Job) -> Result<(), PublishError> {
        self.chunk.push(job);
        if self.chunk.len() >= self.publisher.chunk {
            self.flush().await?;
        }
        Ok(())
    }

    /// Refreshes the claim of the chunk and publishes what is still ours; then settles
    /// the chunk before it (whose confirms arrived meanwhile): two chunks in flight keep
    /// the broker busy while confirms and records catch up.
    async fn flush(&mut self) -> Result<(), PublishError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let mut chunk = std::mem::take(&mut self.chunk);
        let store = self.publisher.pipeline.store().clone();
        self.lanes.assign(&store, &mut chunk).await?;
        if self.refreshed.elapsed() >= REFRESH_EVERY {
            // Only what is still ours is published: a claim that went stale (a stalled
            // process) may have been taken over by a resubmission.
            let store = self.publisher.pipeline.store().clone();
            self.ours = store.refresh_claim(self.claim).await?;
            self.refreshed = Instant::now();
        }
        let mut published = PublishedChunk::default();
        for mut job in chunk {
            if !self.ours.holds(job.id.as_str()) {
                continue;
            }
            let now = Utc::now();
            job.accepted_at = Some(now);
            let started = Instant::now();
            match self.publisher.pipeline.send_job(&job).await {
                Ok(confirm) => {
                    let recipients = u32::try_from(job.recipient_count()).unwrap_or(u32::MAX);
                    let mut event = DeliveryEvent::new(job.id, job.batch, EventKind::Accepted);
                    event.at = now;
                    // On `accepted`, the job's to + cc + bcc: batch ETAs need the recipients left.
                    event.recipients = recipients;
                    published.in_flight.push((event, started, confirm));
                }
                Err(e) => {
                    published.failure = Some(e);
                    break;
                }
            }
        }
        let failed = published.failure.is_some();
        if let Some(previous) = self.published.replace(published) {
            self.settle_chunk(previous).await?;
        }
        if failed {
            self.settle_published().await?;
        }
        Ok(())
    }

    /// Settles the chunk still in flight, if any.
    async fn settle_published(&mut self) -> Result<(), PublishError> {
        match self.published.take() {
            Some(chunk) => self.settle_chunk(chunk).await,
            None => Ok(()),
        }
    }

    /// Waits for a chunk's confirms, then records what the broker confirmed (even when
    /// the rest failed) in the background, one chunk's record at a time.
    async fn settle_chunk(&mut self, chunk: PublishedChunk) -> Result<(), PublishError> {
        let PublishedChunk {
            in_flight,
            mut failure,
        } = chunk;
        let mut confirmed = Vec::with_capacity(in_flight.len());
        for (event, started, confirm) in in_flight {
            match confirm.confirmed().await {
                Ok(()) => {
                    metrics::CONFIRM_SECONDS.observe(started.elapsed().as_secs_f64());
                    confirmed.push(event);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        self.confirmed.extend(confirmed);
        if self.confirmed.len() >= RECORD_BATCH || failure.is_some() {
            self.record_confirmed().await?;
        }
        match failure {
            Some(e) => {
                self.settle_recording().await?;
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Records the confirmed jobs `accepted`, in the background (one record at a time):
    /// each commit waits for the disk, so they are few and large.
    async fn record_confirmed(&mut self) -> Result<(), PublishError> {
        self.settle_recording().await?;
        if self.confirmed.is_empty() {
            return Ok(());
        }
        let confirmed = std::mem::take(&mut self.confirmed);
        let store = self.publisher.pipeline.store().clone();
        let claim = self.claim;
        self.recording = Some(tokio::spawn(async move {
            store.confirm_accepted(claim, &confirmed).await?;
            Ok(confirmed.len() as u64)
        }));
        Ok(())
    }

    /// Waits for the previous chunk's record and counts it accepted.
    async fn settle_recording(&mut self) -> Result<(), PublishError> {
        let Some(task) = self.recording.take() else {
            return Ok(());
        };
        let recorded = task
            .await
            .map_err(|_| PublishError::from(StoreError::Stopped))??;
        self.accepted += recorded;
        metrics::accepted(recorded);
        Ok(())
    }

    /// Publishes what is left and waits until everything is confirmed and recorded.
    pub async fn finish(&mut self) -> Result<(), PublishError> {
        self.flush().await?;
        self.settle_published().await?;
        self.record_confirmed().await?;
        self.settle_recording().await?;
        self.settled = true;
        // Every job it published is accepted now: the claim's row goes (a failure only
        // leaves a row that pruning removes).
        let store = self.publisher.pipeline.store().clone();
        if let Err(e) = store.end_claim(self.claim).await {
            tracing::warn!(error = %e, "ending a publish's claim failed");
        }
        Ok(())
    }

    /// Gives up: releases every claim of this sender that is not accepted (never
    /// published, or not confirmed), so those ids can be submitted again at once.
    pub async fn abandon(mut self) {
        self.settled = true;
        // What is in flight first: what the broker confirms is accepted, not released.
        if let Err(e) = self.settle_published().await {
            tracing::warn!(error = %e, "publishing failed");
        }
        if let Err(e) = self.record_confirmed().await {
            tracing::warn!(error = %e, "recording accepted jobs failed");
        }
        if let Err(e) = self.settle_recording().await {
            tracing::warn!(error = %e, "recording accepted jobs failed");
        }
        let store = self.publisher.pipeline.store().clone();
        if let Err(e) = store.release_claim(self.claim).await {
            tracing::warn!(error = %e, "releasing a publish's claims failed; they expire after 5 minutes");
        }
    }
}

impl Drop for BatchSender {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let store = self.publisher.pipeline.store().clone();
        let claim = self.claim;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.release_claim(claim).await {
                    tracing::warn!(error = %e, "releasing a cancelled publish's claims failed; they expire after 5 minutes");
                }
            });
        }
    }
}
