//! Retention: jobs (with their events) whose last change is older than the retention are
//! deleted in bounded batches, so writers are never locked out for long, and several
//! processes pruning at once skip each other's rows instead of waiting on them.

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
    LIMIT $1 FOR UPDATE SKIP LOCKED
)
"#;

const PRUNE_BATCHES: &str = r#"
DELETE FROM batches b WHERE b.created_at < $1
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id)
"#;

/// Write-ahead sends past the retention (the quota windows read one day at most); an
/// uncertain one still waiting for a decision is kept.
const PRUNE_SENDS: &str = r#"
DELETE FROM sends WHERE id IN (
    SELECT id FROM sends WHERE started_at < $1
        AND NOT (outcome = 'uncertain' AND resolution IS NULL)
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

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    pub jobs: u64,
    pub stale_claims: u64,
    pub batches: u64,
    pub sends: u64,
    pub reports: u64,
}

impl Store {
    /// Deletes what is older than the retention at `now`.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<PruneReport, StoreError> {
        let cutoff = now - self.retention;
        let mut report = PruneReport::default();
        loop {
            let r = sqlx::query(PRUNE_JOBS)
                .bind(cutoff)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await;
            let n = self.observe("pruning jobs", r)?.rows_affected();
            report.jobs += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        loop {
            let r = sqlx::query(PRUNE_CLAIMS)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await;
            let n = self.observe("pruning stale claims", r)?.rows_affected();
            report.stale_claims += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
        }
        loop {
            let r = sqlx::query(PRUNE_SENDS)
                .bind(cutoff)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await;
            let n = self.observe("pruning sends", r)?.rows_affected();
            report.sends += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        loop {
            let r = sqlx::query(PRUNE_REPORTS)
                .bind(cutoff)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await;
            let n = self.observe("pruning handled reports", r)?.rows_affected();
            report.reports += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let r = sqlx::query(PRUNE_BATCHES)
            .bind(cutoff)
            .execute(&self.pool)
            .await;
        report.batches = self.observe("pruning batches", r)?.rows_affected();
        Ok(report)
    }
}
