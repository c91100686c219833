//! What operators and clients ask the system of record: a batch's report with its ETA,
//! one job with its events, lists of jobs by batch, state, recipient and time. Every
//! answer is a few indexed queries: its cost follows the batch asked about, never the
//! history kept.

mod batch_list;
pub mod progress;
mod report;

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use mailpipe_common::contract::{
    DeliveryEvent, EventKind, RecipientRefusal, SmtpReply, SuppressedRecipient,
};
use mailpipe_common::domain::{BatchId, EmailAddress, JobId};
use mailpipe_common::store::{BatchControl, JobState, Store, StoreError};
use sqlx::types::Json;

pub use batch_list::{
    BatchCursor, BatchFilter, BatchPage, BatchState, BatchSummary, DEFAULT_BATCH_PAGE,
    MAX_BATCH_PAGE,
};
pub use report::{
    BatchReport, FAILURES_SHOWN, Failure, Failures, JobPage, JobStatus, KINDS, KindCounts,
    MailboxCounts,
};

use crate::eta::{self, Eta, PoolCapacity, QuotaLog};

/// Most jobs one page of `GET /v1/jobs` holds.
pub const MAX_PAGE: u32 = 1000;

const JOB_COLUMNS: &str = "id, batch_id, state, template, updated_at, accepted_at, attempt, \
     mailbox, message_id, recipient_count, recipients, smtp_code, smtp_enhanced, smtp_text, \
     reason, refused, uncertain, suppressed";

/// A batch's counts, read from its counters (kept by the statements that change its jobs,
/// migration 0011): a few rows whatever the batch's size or the history kept.
const BATCH_SUMMARY: &str = r#"
SELECT coalesce(sum(jobs) FILTER (WHERE state = 'accepted'), 0)::int8,
       coalesce(sum(jobs) FILTER (WHERE state = 'rendered'), 0)::int8,
       coalesce(sum(jobs) FILTER (WHERE state = 'delivered'), 0)::int8,
       coalesce(sum(jobs) FILTER (WHERE state = 'retrying'), 0)::int8,
       coalesce(sum(jobs) FILTER (WHERE state = 'failed'), 0)::int8,
       coalesce(sum(jobs) FILTER (WHERE state = 'cancelled'), 0)::int8,
       coalesce(sum(jobs) FILTER (WHERE state = 'expired'), 0)::int8,
       coalesce(sum(jobs) FILTER (WHERE state = 'bounced'), 0)::int8,
       coalesce(sum(jobs) FILTER (WHERE state = 'suppressed'), 0)::int8,
       (SELECT count(*) FROM jobs WHERE batch_id = $1 AND not_before > now()
            AND state NOT IN ('received', 'delivered', 'failed', 'cancelled', 'expired', 'bounced', 'suppressed')),
       coalesce(sum(recipients), 0)::int8,
       coalesce(sum(failures), 0)::int8,
       coalesce(sum(uncertain), 0)::int8,
       min(first_at) FILTER (WHERE jobs > 0),
       max(last_at) FILTER (WHERE jobs > 0),
       (SELECT control FROM batches WHERE id = $1)
FROM batch_counts WHERE batch_id = $1
"#;

type Summary = (
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
);

/// Which jobs `GET /v1/jobs` and `mailpipe-ingest jobs` list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    pub batch: Option<BatchId>,
    pub state: Option<JobState>,
    /// An address among the job's To, Cc and Bcc (any case).
    pub recipient: Option<mailpipe_common::domain::EmailAddress>,
    /// Changed at or after.
    pub since: Option<DateTime<Utc>>,
    /// Ids after this one (the previous page's `next_after`).
    pub after: Option<JobId>,
    /// At most this many (1..=1000).
    pub limit: u32,
    /// Only jobs of batches with this owner label (a `submit` token's view).
    pub owner: Option<String>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    batch_id: Option<String>,
    state: String,
    template: Option<String>,
    updated_at: DateTime<Utc>,
    accepted_at: Option<DateTime<Utc>>,
    attempt: i32,
    mailbox: Option<String>,
    message_id: Option<String>,
    recipient_count: i32,
    recipients: Vec<String>,
    smtp_code: Option<i32>,
    smtp_enhanced: Option<String>,
    smtp_text: Option<String>,
    reason: Option<String>,
    refused: Json<Vec<RecipientRefusal>>,
    uncertain: bool,
    suppressed: Json<Vec<SuppressedRecipient>>,
}

impl JobRow {
    /// Rows were written through the domain types, so they parse; a row that does not
    /// (edited by hand) is skipped rather than failing the whole answer.
    fn into_status(self) -> Option<JobStatus> {
        let smtp = self.smtp_code.map(|code| SmtpReply {
            code: u16::try_from(code).unwrap_or(0),
            enhanced: self.smtp_enhanced,
            text: self.smtp_text.unwrap_or_default(),
        });
        let detail = smtp
            .as_ref()
            .map(|r| format!("{} {}", r.code, r.text))
            .or_else(|| self.reason.clone());
        Some(JobStatus {
            id: JobId::parse(&self.id).ok()?,
            batch: self.batch_id.and_then(|b| BatchId::parse(&b).ok()),
            status: self.state.parse().ok()?,
            template: self.template,
            updated_at: self.updated_at,
            accepted_at: self.accepted_at,
            attempt: u32::try_from(self.attempt).unwrap_or(0),
            detail,
            mailbox: self.mailbox.and_then(|m| EmailAddress::parse(&m).ok()),
            message_id: self.message_id,
            recipients: u32::try_from(self.recipient_count).unwrap_or(0),
            recipient_addresses: self.recipients,
            smtp,
            reason: self.reason,
            refused_recipients: self.refused.0,
            suppressed_recipients: self.suppressed.0,
            uncertain: self.uncertain,
            events: None,
        })
    }
}

/// The queries, with the pool's limits for ETAs (or why there are none).
#[derive(Debug, Clone)]
pub struct Records {
    store: Store,
    pool: Result<PoolCapacity, String>,
}

impl Records {
    pub fn new(store: Store, pool: Result<PoolCapacity, String>) -> Self {
        Self { store, pool }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The batch's report at `now`, or `None` when no job of it was accepted.
    pub async fn batch_report(
        &self,
        id: &BatchId,
        now: DateTime<Utc>,
    ) -> Result<Option<BatchReport>, StoreError> {
        let db = self.store.pool();
        let r = sqlx::query_as::<_, Summary>(BATCH_SUMMARY)
            .bind(id.as_str())
            .fetch_one(db)
            .await;
        let (
            accepted,
            rendered,
            delivered,
            retrying,
            failed,
            cancelled,
            expired,
            bounced,
            suppressed,
            scheduled,
            recipients_left,
            failures,
            uncertain,
            first,
            last,
            control,
        ) = self.store.observe("reading a batch", r)?;
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(None);
        };
        let mut counts = KindCounts::default();
        for (kind, n) in [
            (EventKind::Accepted, accepted),
            (EventKind::Rendered, rendered),
            (EventKind::Delivered, delivered),
            (EventKind::Retrying, retrying),
            (EventKind::Failed, failed),
            (EventKind::Cancelled, cancelled),
            (EventKind::Expired, expired),
            (EventKind::Bounced, bounced),
            (EventKind::Suppressed, suppressed),
        ] {
            counts.set(kind, n.max(0) as u64);
        }
        let r = sqlx::query_as::<_, (String, i64)>(
            "SELECT mailbox, sum(jobs)::int8 FROM batch_counts WHERE batch_id = $1 AND state = 'delivered' AND mailbox <> '' GROUP BY mailbox HAVING sum(jobs) > 0",
        )
        .bind(id.as_str())
        .fetch_all(db)
        .await;
        let per_mailbox: BTreeMap<EmailAddress, MailboxCounts> = self
            .store
            .observe("counting a batch's mailboxes", r)?
            .into_iter()
            .filter_map(|(m, n)| {
                Some((
                    EmailAddress::parse(&m).ok()?,
                    MailboxCounts {
                        delivered: n.max(0) as u64,
                    },
                ))
            })
            .collect();
        let query = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id = $1 AND (state IN ('failed', 'bounced') OR (state = 'delivered' AND refused <> '[]'::jsonb)) ORDER BY updated_at, id LIMIT $2"
        );
        let r = sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(query))
            .bind(id.as_str())
            .bind(FAILURES_SHOWN as i64)
            .fetch_all(db)
            .await;
        let items: Vec<Failure> = self
            .store
            .observe("listing a batch's failures", r)?
            .into_iter()
            .filter_map(JobRow::into_status)
            .map(|j| Failure::from(&j))
            .collect();
        let remaining = counts.total() - counts.finished();
        let recipients_left = recipients_left.max(0) as u64;
        // The jobs left of every other batch that is not paused (jobs without a batch count
        // as one): they take their turns with this one.
        let r = sqlx::query_scalar::<_, i64>(
            "SELECT sum(c.jobs)::int8 FROM batch_counts c LEFT JOIN batches b ON b.id = c.batch_id \
             WHERE c.state IN ('accepted', 'rendered', 'retrying') \
             AND c.batch_id <> $1 AND coalesce(b.control, 'running') = 'running' \
             GROUP BY c.batch_id HAVING sum(c.jobs) > 0",
        )
        .bind(id.as_str())
        .fetch_all(db)
        .await;
        let others: Vec<u64> = self
            .store
            .observe("counting other batches", r)?
            .into_iter()
            .map(|n| n.max(0) as u64)
            .collect();
        let control = BatchControl::from_column(control.as_deref());
        let eta = match control {
            // Nothing of it is sent while paused: no date would be true.
            BatchControl::Paused if remaining > 0 => Eta::unknown(
                now,
                remaining,
                recipients_left,
                "the batch is paused: nothing of it is sent until it is resumed",
            ),
            _ => self.eta(remaining, recipients_left, &others, now).await?,
        };
        Ok(Some(BatchReport {
            batch: id.clone(),
            control,
            jobs: counts.total(),
            finished: remaining == 0,
            remaining,
            scheduled: scheduled.max(0) as u64,
            uncertain: uncertain.max(0) as u64,
            counts,
            per_mailbox,
            failures: Failures {
                total: failures.max(0) as u64,
                shown: items.len() as u64,
                items,
            },
            eta,
            first_event_at: first,
            last_event_at: last,
        }))
    }

    /// The ETA from the pool's limits and what its mailboxes sent inside their windows
    /// (per minute: an estimate does not need each send).
    async fn eta(
        &self,
        remaining: u64,
        recipients_left: u64,
        others: &[u64],
        now: DateTime<Utc>,
    ) -> Result<Eta, StoreError> {
        let pool = match &self.pool {
            Ok(pool) => pool,
            Err(why) => {
                let mut e = Eta::unknown(now, remaining, recipients_left, why.clone());
                if remaining == 0 {
                    e.eta_seconds = Some(0.0);
                    e.eta_at = Some(now);
                }
                return Ok(e);
            }
        };
        // Mailboxes held back for a fault (credentials, send-as, blocked tenant, sessions
        // that will not open) send nothing until they are back: the estimate leaves them out.
        let holds = self.store.mailbox_holds().await?;
        let faulted: Vec<&mailpipe_common::store::MailboxHold> =
            holds.iter().filter(|h| is_fault(&h.reason)).collect();
        let sending = PoolCapacity {
            mailboxes: pool
                .mailboxes
                .iter()
                .filter(|m| {
                    !faulted
                        .iter()
                        .any(|h| h.mailbox.eq_ignore_ascii_case(m.address.as_str()))
                })
                .cloned()
                .collect(),
        };
        if sending.mailboxes.is_empty() && remaining > 0 {
            let list: Vec<String> = faulted
                .iter()
                .take(5)
                .map(|h| {
                    format!(
                        "{} ({}, until {})",
                        h.mailbox,
                        h.reason,
                        h.until.to_rfc3339()
                    )
                })
                .collect();
            return Ok(Eta::unknown(
                now,
                remaining,
                recipients_left,
                format!(
                    "every mailbox of the pool is held back, so nothing can be sent now: {}{}",
                    list.join(", "),
                    if faulted.len() > 5 { ", ..." } else { "" }
                ),
            ));
        }
        let pool = &sending;
        let window_ms = pool
            .mailboxes
            .iter()
            .map(|m| m.recipient_window_ms)
            .max()
            .unwrap_or(0);
        let since = now - chrono::Duration::milliseconds(window_ms);
        let r = sqlx::query_as::<_, (String, DateTime<Utc>, i64)>(
            "SELECT mailbox, minute, recipients FROM mailbox_minutes WHERE minute >= date_bin('1 minute', $1, TIMESTAMPTZ 'epoch') ORDER BY minute",
        )
        .bind(since)
        .fetch_all(self.store.pool())
        .await;
        let mut log = QuotaLog::new(pool);
        for (mailbox, minute, recipients) in self.store.observe("reading the pool's sends", r)? {
            if let Ok(mailbox) = EmailAddress::parse(&mailbox) {
                log.record(&mailbox, minute, recipients.max(0) as u64);
            }
        }
        Ok(eta::estimate(
            pool,
            &log,
            remaining,
            recipients_left,
            others,
            now,
        ))
    }

    /// One job with every event of it, oldest first.
    pub async fn job(&self, id: &JobId) -> Result<Option<JobStatus>, StoreError> {
        let query = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let r = sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(query))
            .bind(id.as_str())
            .fetch_optional(self.store.pool())
            .await;
        let Some(mut job) = self
            .store
            .observe("reading a job", r)?
            .and_then(JobRow::into_status)
        else {
            return Ok(None);
        };
        let r = sqlx::query_scalar::<_, Json<DeliveryEvent>>(
            "SELECT event FROM job_events WHERE job_id = $1 ORDER BY at, id",
        )
        .bind(id.as_str())
        .fetch_all(self.store.pool())
        .await;
        job.events = Some(
            self.store
                .observe("reading a job's events", r)?
                .into_iter()
                .map(|Json(e)| e)
                .collect(),
        );
        Ok(Some(job))
    }

    /// A page of jobs matching `filter`, by id.
    pub async fn jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        let limit = filter.limit.clamp(1, MAX_PAGE);
        let query = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state <> 'received' \
             AND ($1::text IS NULL OR batch_id = $1) AND ($2::text IS NULL OR state = $2) \
             AND ($3::text IS NULL OR recipients @> ARRAY[$3::text]) \
             AND ($4::timestamptz IS NULL OR updated_at >= $4) AND ($5::text IS NULL OR id > $5) \
             AND ($7::text IS NULL OR batch_id IN (SELECT b.id FROM batches b WHERE b.owner = $7)) \
             ORDER BY id LIMIT $6"
        );
        let r = sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(query))
            .bind(filter.batch.as_ref().map(|b| b.as_str()))
            .bind(filter.state.map(JobState::as_str))
            .bind(
                filter
                    .recipient
                    .as_ref()
                    .map(|r| r.as_str().to_ascii_lowercase()),
            )
            .bind(filter.since)
            .bind(filter.after.as_ref().map(|a| a.as_str()))
            .bind(i64::from(limit))
            .bind(filter.owner.as_deref())
            .fetch_all(self.store.pool())
            .await;
        let jobs: Vec<JobStatus> = self
            .store
            .observe("listing jobs", r)?
            .into_iter()
            .filter_map(JobRow::into_status)
            .collect();
        let next_after = (jobs.len() == limit as usize)
            .then(|| jobs.last().map(|j| j.id.clone()))
            .flatten();
        Ok(JobPage { jobs, next_after })
    }

    /// Jobs delivered that also failed once, or were delivered with recipients refused:
    /// the delivered jobs that can have a dead letter (a replay leaves those alone). As
    /// many as there are failures, never the whole history.
    pub async fn delivered_with_dead_letters(&self) -> Result<HashSet<String>, StoreError> {
        let r = sqlx::query_scalar::<_, String>(
            "SELECT id FROM jobs j WHERE state = 'delivered' AND (refused <> '[]'::jsonb \
             OR EXISTS (SELECT 1 FROM job_events e WHERE e.job_id = j.id AND e.kind = 'failed'))",
        )
        .fetch_all(self.store.pool())
        .await;
        Ok(self
            .store
            .observe("reading delivered jobs", r)?
            .into_iter()
            .collect())
    }
}

/// Whether a hold's reason is a fault (the mailbox sends nothing until it is over), not a
/// window that the ETA's model already counts (rate, recipient quota, connections, the
/// tenant's external window).
fn is_fault(reason: &str) -> bool {
    !matches!(
        reason,
        "rate" | "quota" | "connections" | "tenant_external_limit"
    )
}
