//! Memory rebuilt from the system of record at start: the quota each mailbox and tenant
//! used inside its windows (so a restart never resets a 24-hour quota), the jobs
//! delivered inside them, and the jobs whose last send is uncertain (not sent again
//! before their hold ends). Jobs delivered earlier are found by the state check before
//! each send (`Store::send_check`), so this reads one quota window, never the history.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailpipe_common::contract::{DeliveryEvent, EventKind};
use mailpipe_common::domain::JobId;
use mailpipe_common::store::{Store, StoreError};

use crate::metrics;
use crate::pool::MailboxPool;
use crate::throttle::Millis;

/// Jobs this process delivered whose `delivered` record is not written yet (the write
/// failed, and the message came back): the record is written again, the mail never.
/// Once recorded a job leaves this map: the record answers for it from then on
/// (`Store::send_check` before every send), so memory does not grow with what was sent.
#[derive(Debug, Default)]
pub struct DeliveredJobs {
    pending: Mutex<HashMap<JobId, DeliveryEvent>>,
    /// Jobs with an uncertain send, and until when they are held back.
    uncertain: Mutex<HashMap<JobId, DateTime<Utc>>>,
}

impl DeliveredJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, DeliveryEvent>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `delivered` event of a job sent here and not yet recorded.
    pub fn pending(&self, id: &JobId) -> Option<DeliveryEvent> {
        self.lock().get(id).cloned()
    }

    /// Delivered, not yet recorded: the event is kept so it can be written again.
    pub fn insert_pending(&self, event: DeliveryEvent) {
        self.lock().insert(event.job_id.clone(), event);
    }

    /// Recorded: the database answers for it now.
    pub fn mark_recorded(&self, id: &JobId) {
        self.lock().remove(id);
    }

    /// Jobs delivered here and not yet recorded.
    pub fn pending_len(&self) -> usize {
        self.lock().len()
    }

    fn lock_uncertain(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, DateTime<Utc>>> {
        self.uncertain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A send of this job may have been accepted: hold the job back until `until`.
    pub fn mark_uncertain(&self, id: &JobId, until: DateTime<Utc>) {
        let now = Utc::now();
        let mut held = self.lock_uncertain();
        held.retain(|_, u| *u > now);
        if until > now {
            let entry = held.entry(id.clone()).or_insert(until);
            *entry = (*entry).max(until);
        }
    }

    /// Until when this job is held back after an uncertain send, if it still is.
    pub fn uncertain_until(&self, id: &JobId) -> Option<DateTime<Utc>> {
        let until = *self.lock_uncertain().get(id)?;
        (until > Utc::now()).then_some(until)
    }
}

/// How far the start-up replay is, for `/readyz` and the replay metric.
#[derive(Debug, Default)]
pub struct ReplayProgress {
    /// Events read so far.
    pub events: AtomicU64,
    pub done: AtomicBool,
}

impl ReplayProgress {
    pub fn readiness(&self) -> Result<(), String> {
        if self.done.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(format!(
                "ledger replay in progress: {} events read",
                self.events.load(Ordering::Relaxed)
            ))
        }
    }
}

/// What a replay found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    pub events: usize,
    pub delivered_jobs: usize,
    pub sends_restored: usize,
}

/// Reads the sends inside `quota_horizon` back from the database and applies them:
/// delivered jobs into `delivered`, sends into the pool's windows. `progress` counts the
/// events read.
pub async fn replay(
    store: &Store,
    pool: &MailboxPool,
    delivered: &DeliveredJobs,
    quota_horizon: Duration,
    progress: &AtomicU64,
) -> Result<ReplayStats, StoreError> {
    let now = Utc::now();
    let quota_since = now - chrono::Duration::from_std(quota_horizon).unwrap_or_default();
    let mut stats = ReplayStats::default();
    stats.events = store
        .sends_since(quota_since, |event| {
            let read = progress.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::REPLAYED_EVENTS.set(read as i64);
            if read.is_multiple_of(10_000) {
                tracing::info!(events = read, "rebuilding the ledger from the database");
            }
            let uncertain = event.kind == EventKind::Retrying && event.uncertain;
            if event.kind != EventKind::Delivered && !uncertain {
                return;
            }
            if uncertain {
                if let Some(until) = event.retry_at {
                    delivered.mark_uncertain(&event.job_id, until);
                }
            } else {
                stats.delivered_jobs += 1;
            }
            if event.at >= quota_since
                && let Some(mailbox) = &event.mailbox
            {
                let at = Millis(event.at.timestamp_millis().max(0) as u64);
                if pool.restore(
                    mailbox,
                    event.tenant.as_deref(),
                    at,
                    u64::from(event.recipients),
                    u64::from(event.external_recipients),
                ) {
                    stats.sends_restored += 1;
                }
            }
        })
        .await?;
    Ok(stats)
}
