//! Ingest's exact idempotency: a job id is published once within the retention, across
//! restarts and any number of ingest replicas.
//!
//! A publish first *claims* its jobs: it inserts them `received`, with its claim token,
//! and the unique key on `jobs.id` decides between two replicas submitting one id at the
//! same instant (the second waits on the first's row and finds it). The claim itself is
//! one `publish_claims` row with a heartbeat: a long publish *refreshes* it every minute
//! (one row, however many jobs it holds) and publishes only what it still holds; after the
//! broker's confirm it *confirms* the jobs `accepted` with their `accepted` events. A publish that
//! fails *releases* its claim, so the id can be submitted again. A claim whose heartbeat
//! is older than [`CLAIM_TTL`] belongs to a process that died or stalled: a resubmission
//! takes its jobs over and marks the claim, so a stalled publish that wakes up re-reads
//! what it still holds before it publishes more.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::contract::{DeliveryEvent, EventKind, Job};
use crate::domain::JobId;

/// A claim not refreshed for this long belongs to a publish that died: a resubmission
/// takes it over. Far longer than a chunk's publish and confirm take.
pub const CLAIM_TTL: chrono::Duration = chrono::Duration::minutes(5);

/// What claiming one job found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Ours: publish it, then confirm it.
    Claimed,
    /// Accepted before with the same content: not published again.
    Duplicate,
    /// Being published right now by another request (this replica or another).
    InFlight,
    /// Accepted before with different content: refused.
    Conflict,
}

/// What a publish still holds of its claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimHeld {
    /// Every job it claimed and has not confirmed.
    All,
    /// Only these ids: the others were taken over.
    Only(std::collections::HashSet<String>),
}

impl ClaimHeld {
    /// Whether the job `id` may still be published by this claim.
    pub fn holds(&self, id: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(ids) => ids.contains(id),
        }
    }
}

/// One job to claim, with what the record keeps of it.
#[derive(Debug, Clone)]
pub struct ClaimInput {
    pub id: JobId,
    pub batch: Option<String>,
    pub template: String,
    /// To + Cc + Bcc, lower-cased.
    pub recipients: Vec<String>,
    pub content_hash: Vec<u8>,
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
}

impl ClaimInput {
    pub fn of(job: &Job) -> Self {
        Self {
            id: job.id.clone(),
            batch: job.batch.as_ref().map(|b| b.as_str().to_owned()),
            template: job.template.as_str().to_owned(),
            recipients: job
                .to
                .iter()
                .chain(&job.cc)
                .chain(&job.bcc)
                .map(|m| m.address.as_str().to_ascii_lowercase())
                .collect(),
            content_hash: job.content_hash().to_vec(),
            not_before: job.not_before,
            not_after: job.not_after,
        }
    }
}

const CLAIM: &str = r#"
WITH heartbeat AS (
    INSERT INTO publish_claims (claim) VALUES ($7)
    ON CONFLICT (claim) DO UPDATE SET heartbeat = now()
)
INSERT INTO jobs (id, batch_id, template, recipients, recipient_count, content_hash, state,
                  claim, claimed_at, updated_at, not_before, not_after)
SELECT u.id, u.batch, u.template, string_to_array(u.rcpts, E'\n'), u.n, u.hash, 'received',
       $7, now(), now(), u.not_before, u.not_after
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::bytea[],
            $8::timestamptz[], $9::timestamptz[])
     AS u(id, batch, template, rcpts, n, hash, not_before, not_after)
ON CONFLICT (id) DO NOTHING
RETURNING id
"#;

/// Jobs whose claim has no fresh heartbeat become `$2`'s; the claims they came from are
/// marked `taken_from`. One statement.
const TAKE_OVER: &str = r#"
WITH taken AS (
    UPDATE jobs SET claim = $2, claimed_at = now()
    FROM jobs AS old
    WHERE jobs.id = old.id AND jobs.id = ANY($1) AND jobs.state = 'received'
      -- The job's own row decides between two take-overs at once: the second, waiting on
      -- the first's row lock, re-checks it and finds it just taken.
      AND jobs.claimed_at < now() - make_interval(secs => $3)
      AND NOT EXISTS (
          SELECT 1 FROM publish_claims c
          WHERE c.claim = jobs.claim AND c.heartbeat >= now() - make_interval(secs => $3))
    RETURNING jobs.id, old.claim AS from_claim
), marked AS (
    UPDATE publish_claims SET taken_from = true
    WHERE claim IN (SELECT from_claim FROM taken)
)
SELECT id FROM taken
"#;

/// Refreshes the heartbeat; answers whether any of the claim's jobs were taken over.
/// No row: the claim was released or pruned (everything it held is gone).
const HEARTBEAT: &str = r#"
UPDATE publish_claims SET heartbeat = now() WHERE claim = $1 RETURNING taken_from
"#;

const CONFIRM: &str = r#"
WITH confirmed AS (
    UPDATE jobs SET
        state = CASE WHEN state = 'received' THEN 'accepted' ELSE state END,
        updated_at = CASE WHEN state = 'received' THEN u.at ELSE updated_at END,
        accepted_at = u.at,
        claim = NULL,
        claimed_at = NULL
    FROM UNNEST($1::text[], $3::timestamptz[], $4::text[]) AS u(id, at, event)
    WHERE jobs.id = u.id AND jobs.claim = $2
    RETURNING jobs.id, u.at, jobs.recipient_count, u.event
)
INSERT INTO job_events (job_id, kind, at, recipients, event)
SELECT id, 'accepted', at, recipient_count, event::jsonb FROM confirmed
ON CONFLICT (job_id, at, kind) DO NOTHING
"#;

impl Store {
    /// The turn of each batch in `batches` that has a row (ingest records the row once a
    /// submission to the batch is accepted: `open_batch`): the order batches were first seen in, which
    /// spreads them over the bulk deliver queues.
    pub async fn batch_turns(
        &self,
        batches: &[&str],
    ) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        let r = sqlx::query_as::<_, (String, i64)>(
            "SELECT id, turn FROM batches WHERE id = ANY($1::text[])",
        )
        .bind(batches)
        .fetch_all(&self.pool)
        .await;
        Ok(self
            .observe("reading batch turns", r)?
            .into_iter()
            .collect())
    }

    /// Claims `jobs` for the publish `claim`; one outcome per job, in order. Writes no
    /// batch row (a refused submission must leave none): `open_batch` does, once the
    /// submission is accepted. Fails at once
    /// when the database is unreachable (the API answers 503: nothing is accepted that is
    /// not recorded).
    pub async fn claim_jobs(
        &self,
        claim: Uuid,
        jobs: &[ClaimInput],
    ) -> Result<Vec<ClaimOutcome>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        let r = sqlx::query_scalar::<_, String>(CLAIM)
            .bind(&ids)
            .bind(jobs.iter().map(|j| j.batch.as_deref()).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.template.as_str()).collect::<Vec<_>>())
            .bind(
                jobs.iter()
                    .map(|j| j.recipients.join("\n"))
                    .collect::<Vec<_>>(),
            )
            .bind(
                jobs.iter()
                    .map(|j| i32::try_from(j.recipients.len()).unwrap_or(i32::MAX))
                    .collect::<Vec<_>>(),
            )
            .bind(
                jobs.iter()
                    .map(|j| j.content_hash.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(claim)
            .bind(jobs.iter().map(|j| j.not_before).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.not_after).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await;
        let claimed: std::collections::HashSet<String> =
            self.observe("claiming jobs", r)?.into_iter().collect();
        if claimed.len() == jobs.len() {
            return Ok(vec![ClaimOutcome::Claimed; jobs.len()]);
        }

        // The others exist already: same content or not, finished or in flight.
        let others: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !claimed.contains(*id))
            .collect();
        let r = sqlx::query_as::<_, (String, Option<Vec<u8>>, String)>(
            "SELECT id, content_hash, state FROM jobs WHERE id = ANY($1)",
        )
        .bind(&others)
        .fetch_all(&self.pool)
        .await;
        let existing: HashMap<String, (Option<Vec<u8>>, String)> = self
            .observe("reading claimed jobs", r)?
            .into_iter()
            .map(|(id, hash, state)| (id, (hash, state)))
            .collect();
        let stale: Vec<&str> = others
            .iter()
            .copied()
            .filter(|id| existing.get(*id).is_some_and(|(_, s)| s == "received"))
            .collect();
        let taken: std::collections::HashSet<String> = if stale.is_empty() {
            Default::default()
        } else {
            let r = sqlx::query_scalar::<_, String>(TAKE_OVER)
                .bind(&stale)
                .bind(claim)
                .bind(CLAIM_TTL.num_seconds() as f64)
                .fetch_all(&self.pool)
                .await;
            self.observe("taking over stale claims", r)?
                .into_iter()
                .collect()
        };
        Ok(jobs
            .iter()
            .map(|j| {
                let id = j.id.as_str();
                if claimed.contains(id) {
                    return ClaimOutcome::Claimed;
                }
                match existing.get(id) {
                    Some((Some(hash), _)) if hash != &j.content_hash => ClaimOutcome::Conflict,
                    _ if taken.contains(id) => ClaimOutcome::Claimed,
                    Some((_, state)) if state == "received" => ClaimOutcome::InFlight,
                    // Gone between the two statements (pruned): count it as a duplicate
                    // rather than publish what was just known to exist.
                    _ => ClaimOutcome::Duplicate,
                }
            })
            .collect())
    }

    /// Keeps the publish `claim` fresh (a long publish calls it well within
    /// [`CLAIM_TTL`]): one row, however many jobs the claim holds. Answers what it still
    /// holds: [`ClaimHeld::All`] unless a resubmission took some of its jobs over (after
    /// this process stalled past the TTL), and then the ids left, so the others are not
    /// published here.
    pub async fn refresh_claim(&self, claim: Uuid) -> Result<ClaimHeld, StoreError> {
        let r = sqlx::query_scalar::<_, bool>(HEARTBEAT)
            .bind(claim)
            .fetch_optional(&self.pool)
            .await;
        if self.observe("refreshing a claim", r)? == Some(false) {
            return Ok(ClaimHeld::All);
        }
        let r = sqlx::query_scalar::<_, String>(
            "SELECT id FROM jobs WHERE claim = $1 AND state = 'received'",
        )
        .bind(claim)
        .fetch_all(&self.pool)
        .await;
        Ok(ClaimHeld::Only(
            self.observe("reading what a claim holds", r)?
                .into_iter()
                .collect(),
        ))
    }

    /// After the broker confirmed the publish: the jobs are `accepted` (unless render
    /// already moved them on), with their `accepted` events. Waits while the database is
    /// unreachable: the jobs are published, their record must follow.
    pub async fn confirm_accepted(
        &self,
        claim: Uuid,
        accepted: &[DeliveryEvent],
    ) -> Result<(), StoreError> {
        if accepted.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = accepted.iter().map(|e| e.job_id.as_str()).collect();
        let ats: Vec<DateTime<Utc>> = accepted.iter().map(|e| e.at).collect();
        let events: Vec<String> = accepted
            .iter()
            .map(|e| {
                debug_assert_eq!(e.kind, EventKind::Accepted);
                String::from_utf8_lossy(&e.to_json()).into_owned()
            })
            .collect();
        self.durably("confirming accepted jobs", || {
            sqlx::query(CONFIRM)
                .bind(&ids)
                .bind(claim)
                .bind(&ats)
                .bind(&events)
                .execute(&self.pool)
        })
        .await
        .map(|_| ())
    }

    /// Gives up this publish's claim on `ids` (never published, or not confirmed): they
    /// may be submitted again at once.
    pub async fn release_claims(&self, claim: Uuid, ids: &[&str]) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "DELETE FROM jobs WHERE id = ANY($1) AND claim = $2 AND state = 'received'",
        )
        .bind(ids)
        .bind(claim)
        .execute(&self.pool)
        .await;
        Ok(self.observe("releasing claims", r)?.rows_affected())
    }

    /// Gives up every claim of the publish `claim` that is not accepted, and the claim.
    pub async fn release_claim(&self, claim: Uuid) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "WITH gone AS (DELETE FROM publish_claims WHERE claim = $1) \
             DELETE FROM jobs WHERE claim = $1 AND state = 'received'",
        )
        .bind(claim)
        .execute(&self.pool)
        .await;
        Ok(self.observe("releasing claims", r)?.rows_affected())
    }

    /// Ends a publish whose jobs are all confirmed or released: its claim row goes.
    pub async fn end_claim(&self, claim: Uuid) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM publish_claims WHERE claim = $1")
            .bind(claim)
            .execute(&self.pool)
            .await;
        self.observe("ending a claim", r).map(|_| ())
    }
}
