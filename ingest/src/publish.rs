//! Publishing accepted jobs, exactly once per id: claim the ids in the system of record,
//! then, chunk by chunk, refresh the claim, publish to the render queue, and once the
//! broker confirmed, record the jobs `accepted` (see `mailpipe_common::store` claims).

use std::time::Instant;

use chrono::Utc;
use mailpipe_common::amqp::PublishError;
use mailpipe_common::contract::{DeliveryEvent, EventKind, Job};
use mailpipe_common::pipeline::Pipeline;
use mailpipe_common::store::{ClaimInput, ClaimOutcome};
use uuid::Uuid;

use crate::metrics;

/// Jobs published, confirmed and recorded together.
const PUBLISH_CHUNK: usize = 500;

/// What happened to one submitted job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Accepted before with the same content: not published again.
    Duplicate,
    /// Another request (here or on another replica) is publishing the same id right now.
    InFlight,
    /// Accepted before with different content: refused.
    Conflict,
}

#[derive(Debug, Clone)]
pub struct JobPublisher {
    pipeline: Pipeline,
    chunk: usize,
}

impl JobPublisher {
    /// `window`: publishes awaiting their confirm at once (`ingest.max_in_flight`).
    pub fn new(pipeline: Pipeline, window: usize) -> Self {
        Self {
            pipeline,
            chunk: window.clamp(1, PUBLISH_CHUNK),
        }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Claims and publishes one job, and waits until it is confirmed and recorded.
    pub async fn publish_one(&self, job: Job) -> Result<Outcome, PublishError> {
        let mut sender = self.sender();
        let outcome = match sender.claim(&[&job]).await?.first() {
            Some(ClaimOutcome::Claimed) => Outcome::Accepted,
            Some(ClaimOutcome::InFlight) => Outcome::InFlight,
            Some(ClaimOutcome::Conflict) => Outcome::Conflict,
            Some(ClaimOutcome::Duplicate) | None => Outcome::Duplicate,
        };
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
            accepted: 0,
            settled: false,
        }
    }
}

/// Claims jobs, then publishes claimed ones chunk by chunk. Dropped unfinished (a request
/// cancelled), it releases the claims it still holds, so the ids can be submitted again.
pub struct BatchSender {
    publisher: JobPublisher,
    claim: Uuid,
    chunk: Vec<Job>,
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

    /// Refreshes the claim of the chunk, publishes what is still ours, waits for the
    /// confirms, records them accepted.
    async fn flush(&mut self) -> Result<(), PublishError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.chunk);
        let store = self.publisher.pipeline.store();
        let ids: Vec<&str> = chunk.iter().map(|j| j.id.as_str()).collect();
        let ours = store.refresh_claims(self.claim, &ids).await?;
        let mut in_flight = Vec::with_capacity(chunk.len());
        let mut failure = None;
        for mut job in chunk {
            if !ours.contains(job.id.as_str()) {
                // Taken over by a resubmission after this claim went stale: theirs now.
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
                    in_flight.push((event, started, confirm));
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
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
        // What the broker confirmed is recorded even when the rest failed.
        store.confirm_accepted(self.claim, &confirmed).await?;
        self.accepted += confirmed.len() as u64;
        metrics::accepted(confirmed.len() as u64);
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Publishes what is left and waits until everything is confirmed and recorded.
    pub async fn finish(&mut self) -> Result<(), PublishError> {
        self.flush().await?;
        self.settled = true;
        Ok(())
    }

    /// Gives up: releases every claim of this sender that is not accepted (never
    /// published, or not confirmed), so those ids can be submitted again at once.
    pub async fn abandon(mut self) {
        self.settled = true;
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
