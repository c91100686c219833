//! Retention: jobs (with their events) whose last change is older than the retention are
//! deleted in bounded batches, so writers are never locked out for long, and several
//! processes pruning at once skip each other's rows instead of waiting on them. Webhook
//! events (with their deliveries) go the same way once none of them is pending, and
//! handled reports (NDRs) and set-aside Inbox messages with the retention.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// Jobs deleted per statement.
const PRUNE_BATCH: i64 = 1000;

const PRUNE_JOBS: &str = r#"
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE updated_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED
)
"#;

/// Claims of publishes that died before publishing (see `claims.rs`) are dropped after a
/// day: nobody resubmitted them, and they were never accepted.
const PRUNE_CLAIMS: &str = r#"
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE state = 'received' AND claimed_at < now() - interval '1 day'
      AND NOT EXISTS (SELECT 1 FROM publish_claims c
                      WHERE c.claim = jobs.claim AND c.heartbeat >= now() - interval '1 day')
    LIMIT $1 FOR UPDATE SKIP LOCKED
)
"#;

/// Claims whose publish died (no heartbeat for a day); their jobs went above.
const PRUNE_CLAIM_ROWS: &str =
    "DELETE FROM publish_claims WHERE heartbeat < now() - interval '1 day'";

/// Batches with no job left, with their counters (all zero by then).
const PRUNE_BATCHES: &str = r#"
WITH gone AS (
    DELETE FROM batches b WHERE b.created_at < $1
        AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id)
    RETURNING id
), counters AS (
    DELETE FROM batch_counts c USING gone WHERE c.batch_id = gone.id
), minutes AS (
    DELETE FROM batch_minutes m USING gone WHERE m.batch_id = gone.id
)
SELECT count(*) FROM gone
"#;

/// The ETA's per-minute rollup reads the last day at most.
const PRUNE_MINUTES: &str = "DELETE FROM mailbox_minutes WHERE minute < now() - interval '2 days'";

/// Write-ahead sends past the retention (the quota windows read one day at most); an
/// uncertain one still waiting for a decision is kept.
const PRUNE_SENDS: &str = r#"
DELETE FROM sends WHERE id IN (
    SELECT id FROM sends WHERE started_at < $1
        AND NOT (outcome = 'uncertain' AND resolution IS NULL)
    LIMIT $2 FOR UPDATE SKIP LOCKED
)
"#;

/// Webhook events past the retention, with their deliveries (by the cascade), once none
/// of them is still pending: delivered, expired and gone ones are kept for inspection
/// as long as jobs are.
const PRUNE_WEBHOOKS: &str = r#"
DELETE FROM webhook_events WHERE id IN (
    SELECT e.id FROM webhook_events e
    WHERE e.created_at < $1 AND e.fanned_out AND NOT e.batch_pending
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                      WHERE d.event_id = e.id AND d.state = 'pending')
    LIMIT $2 FOR UPDATE SKIP LOCKED
)
"#;

/// Reports (NDRs) handled before the retention: their job is gone too, so one seen again
/// later finds no job and changes nothing.
const PRUNE_REPORTS: &str = r#"
DELETE FROM handled_reports WHERE ctid IN (
    SELECT ctid FROM handled_reports WHERE handled_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED
)
"#;

/// Inbox messages set aside before the retention: moved long ago, or gone some other way.
const PRUNE_SET_ASIDE: &str = r#"
DELETE FROM inbox_set_aside WHERE ctid IN (
    SELECT ctid FROM inbox_set_aside WHERE recorded_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED
)
"#;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    pub jobs: u64,
    pub stale_claims: u64,
    pub batches: u64,
    pub sends: u64,
    pub webhook_events: u64,
    pub reports: u64,
}

impl Store {
    /// Deletes what is older than the retention at `now`.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<PruneReport, StoreError> {
        let cutoff = now - self.retention;
        let jobs = self
            .prune_in_steps(PRUNE_JOBS, cutoff, "pruning jobs")
            .await?;
        let mut stale_claims = 0;
        loop {
            let r = sqlx::query(PRUNE_CLAIMS)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await;
            let n = self.observe("pruning stale claims", r)?.rows_affected();
            stale_claims += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
        }
        let r = sqlx::query(PRUNE_CLAIM_ROWS).execute(&self.pool).await;
        self.observe("pruning dead claims", r)?;
        let sends = self
            .prune_in_steps(PRUNE_SENDS, cutoff, "pruning sends")
            .await?;
        let webhook_events = self
            .prune_in_steps(PRUNE_WEBHOOKS, cutoff, "pruning webhook events")
            .await?;
        let reports = self
            .prune_in_steps(PRUNE_REPORTS, cutoff, "pruning handled reports")
            .await?;
        self.prune_in_steps(PRUNE_SET_ASIDE, cutoff, "pruning set-aside Inbox messages")
            .await?;
        let r = sqlx::query_scalar::<_, i64>(PRUNE_BATCHES)
            .bind(cutoff)
            .fetch_one(&self.pool)
            .await;
        let batches = self.observe("pruning batches", r)?.max(0) as u64;
        let r = sqlx::query(PRUNE_MINUTES).execute(&self.pool).await;
        self.observe("pruning the per-minute sends", r)?;
        Ok(PruneReport {
            jobs,
            stale_claims,
            batches,
            sends,
            webhook_events,
            reports,
        })
    }

    /// Runs a `DELETE ... LIMIT $2` older than `$1` until it deletes less than a step,
    /// yielding between steps: no long lock, no long transaction. Rows deleted in all.
    async fn prune_in_steps(
        &self,
        sql: &'static str,
        cutoff: DateTime<Utc>,
        what: &'static str,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let r = sqlx::query(sql)
                .bind(cutoff)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await;
            let n = self.observe(what, r)?.rows_affected();
            total += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}
