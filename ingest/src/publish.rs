//! Publishing accepted jobs: claim the id, publish to the render queue, and only after
//! the broker's confirm mark it accepted and record the `accepted` event. Batches keep
//! up to `window` confirms in flight and settle them in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use mailpipe_common::amqp::{PendingConfirm, PublishError};
use mailpipe_common::contract::{DeliveryEvent, EventKind, Job};
use mailpipe_common::pipeline::Pipeline;

use crate::idempotency::{AcceptedIds, Claim, Reservation};
use crate::metrics;
use crate::status::StatusIndex;

/// The status index, shared by the API, the events follower and the publishers.
pub type SharedStatus = Arc<Mutex<StatusIndex>>;

pub fn lock_status(s: &SharedStatus) -> std::sync::MutexGuard<'_, StatusIndex> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// What happened to one submitted job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Already accepted before: not published again.
    Duplicate,
    /// Another request of this process is publishing the same id right now.
    InFlight,
}

#[derive(Debug, Clone)]
pub struct JobPublisher {
    pipeline: Pipeline,
    ids: AcceptedIds,
    status: SharedStatus,
    window: usize,
}

impl JobPublisher {
    pub fn new(pipeline: Pipeline, ids: AcceptedIds, status: SharedStatus, window: usize) -> Self {
        Self {
            pipeline,
            ids,
            status,
            window: window.max(1),
        }
    }

    pub fn ids(&self) -> &AcceptedIds {
        &self.ids
    }

    pub fn status(&self) -> &SharedStatus {
        &self.status
    }

    /// Publishes one job and waits for its confirm.
    pub async fn publish_one(&self, job: Job) -> Result<Outcome, PublishError> {
        let mut sender = self.sender();
        let outcome = sender.send(job).await?;
        sender.finish().await?;
        Ok(outcome)
    }

    /// A pipelined sender for many jobs.
    pub fn sender(&self) -> BatchSender {
        BatchSender {
            publisher: self.clone(),
            jobs: VecDeque::new(),
            events: VecDeque::new(),
            accepted: 0,
            duplicates: 0,
        }
    }

    fn accepted(&self, reservation: Reservation, event: &DeliveryEvent) {
        reservation.commit();
        lock_status(&self.status).apply(event);
        metrics::accepted(1);
    }
}

struct InFlightJob {
    reservation: Reservation,
    event: DeliveryEvent,
    started: Instant,
    confirm: PendingConfirm,
}

/// Keeps up to `window` job publishes (and as many accepted events) awaiting their
/// confirm. Dropping it unfinished frees the ids of unconfirmed jobs (they may still
/// reach the queue; a resubmission then publishes them again, which render and deliver
/// tolerate because they are idempotent by job id).
pub struct BatchSender {
    publisher: JobPublisher,
    jobs: VecDeque<InFlightJob>,
    events: VecDeque<PendingConfirm>,
    /// Jobs confirmed so far.
    pub accepted: u64,
    pub duplicates: u64,
}

impl std::fmt::Debug for BatchSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSender")
            .field("in_flight", &self.jobs.len())
            .field("accepted", &self.accepted)
            .finish()
    }
}

impl BatchSender {
    /// Publishes `job` unless its id is known; returns once at most `window` confirms are
    /// outstanding. `Accepted` here means "published"; the confirm is settled later.
    pub async fn send(&mut self, mut job: Job) -> Result<Outcome, PublishError> {
        let reservation = match self.publisher.ids.reserve(&job.id) {
            Claim::New(r) => r,
            Claim::Accepted => {
                self.duplicates += 1;
                metrics::duplicate(1);
                return Ok(Outcome::Duplicate);
            }
            Claim::InFlight => {
                self.duplicates += 1;
                metrics::duplicate(1);
                return Ok(Outcome::InFlight);
            }
        };
        let now = Utc::now();
        job.accepted_at = Some(now);
        let started = Instant::now();
        let confirm = self.publisher.pipeline.send_job(&job).await?;
        let recipients = u32::try_from(job.recipient_count()).unwrap_or(u32::MAX);
        let mut event = DeliveryEvent::new(job.id, job.batch, EventKind::Accepted);
        event.at = now;
        // On `accepted`, the job's to + cc + bcc: batch ETAs need the recipients left.
        event.recipients = recipients;
        self.jobs.push_back(InFlightJob {
            reservation,
            event,
            started,
            confirm,
        });
        while self.jobs.len() >= self.publisher.window {
            self.settle_one().await?;
        }
        Ok(Outcome::Accepted)
    }

    async fn settle_one(&mut self) -> Result<(), PublishError> {
        let Some(job) = self.jobs.pop_front() else {
            return Ok(());
        };
        job.confirm.confirmed().await?;
        metrics::CONFIRM_SECONDS.observe(job.started.elapsed().as_secs_f64());
        self.publisher.accepted(job.reservation, &job.event);
        self.accepted += 1;
        // The event feeds status and idempotency after a restart; losing one costs only
        // that, never the job, so a failure is logged rather than failing the upload.
        match self.publisher.pipeline.record_event(&job.event).await {
            Ok(pending) => self.events.push_back(pending),
            Err(e) => {
                tracing::warn!(job_id = %job.event.job_id, error = %e, "accepted event not recorded")
            }
        }
        while self.events.len() >= self.publisher.window {
            self.settle_event().await;
        }
        Ok(())
    }

    async fn settle_event(&mut self) {
        if let Some(pending) = self.events.pop_front()
            && let Err(e) = pending.confirmed().await
        {
            tracing::warn!(error = %e, "accepted event not confirmed");
        }
    }

    /// Waits for every outstanding confirm.
    pub async fn finish(&mut self) -> Result<(), PublishError> {
        while !self.jobs.is_empty() {
            self.settle_one().await?;
        }
        while !self.events.is_empty() {
            self.settle_event().await;
        }
        Ok(())
    }
}
