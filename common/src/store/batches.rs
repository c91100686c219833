//! Batch control: pause, resume and cancel, kept in `batches.control` so every deliver
//! process sees it on its next check (before each send) and it survives restarts.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::sends::{AcceptedSend, UnsettledSend};
use super::{JobState, Store, StoreError};
use sqlx::types::Json;

use crate::contract::SuppressedRecipient;
use crate::domain::{EmailAddress, JobId};

/// What a batch's owner said about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchControl {
    Running,
    /// No further job of it is sent until it is resumed.
    Paused,
    /// No further job of it is sent, ever: its unsent jobs end `cancelled`.
    Cancelled,
}

impl BatchControl {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchControl::Running => "running",
            BatchControl::Paused => "paused",
            BatchControl::Cancelled => "cancelled",
        }
    }

    /// `batches.control` as stored (`None`: no row, a batch never controlled).
    pub fn from_column(text: Option<&str>) -> Self {
        match text {
            Some("paused") => BatchControl::Paused,
            Some("cancelled") => BatchControl::Cancelled,
            _ => BatchControl::Running,
        }
    }
}

/// What deliver learns before a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendCheck {
    /// The job's state, `None` when the database does not know the job.
    pub state: Option<JobState>,
    /// Its batch's control (`Running` without a batch).
    pub control: BatchControl,
    /// Its last send whose outcome is unknown, if any (open, or uncertain).
    pub unsettled: Option<UnsettledSend>,
    /// A send the server accepted (or an operator marked sent) while the job is not
    /// recorded delivered: a crash between the two before they were one transaction.
    pub accepted: Option<AcceptedSend>,
    /// Which of the recipients asked about are on the suppression list.
    pub suppressed: Vec<SuppressedRecipient>,
}

const SEND_CHECK: &str = r#"
SELECT j.state, b.control, s.id, s.outcome, s.resolution, s.deadline, s.ended_at,
       a.mailbox, a.recipients, a.external_recipients, a.ended_at,
       (SELECT jsonb_agg(jsonb_build_object('address', x.address, 'source', x.source,
                                            'reason', x.reason))
        FROM suppressions x WHERE x.address = ANY($2::text[])) AS suppressed
FROM (SELECT $1::text AS id) q
LEFT JOIN jobs j ON j.id = q.id
LEFT JOIN batches b ON b.id = j.batch_id
LEFT JOIN LATERAL (
    SELECT id, outcome, resolution, deadline, ended_at FROM sends
    WHERE job_id = q.id AND (outcome IS NULL OR outcome = 'uncertain')
    ORDER BY started_at DESC LIMIT 1
) s ON true
LEFT JOIN LATERAL (
    SELECT mailbox, recipients, external_recipients, ended_at FROM sends
    WHERE job_id = q.id AND (outcome = 'accepted' OR resolution = 'marked_sent')
      AND COALESCE(j.state, '') NOT IN ('delivered', 'bounced')
    ORDER BY started_at DESC LIMIT 1
) a ON true
"#;

type CheckRow = (
    Option<String>,
    Option<String>,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<i32>,
    Option<i32>,
    Option<DateTime<Utc>>,
    Option<Json<Vec<SuppressedRecipient>>>,
);

/// Sets the control of a batch that has jobs (or a row), creating its row when only jobs
/// name it (jobs recorded by render or deliver without ingest's claim).
const SET_CONTROL: &str = r#"
INSERT INTO batches (id, control, control_changed_at)
SELECT $1, $2, now()
WHERE EXISTS (SELECT 1 FROM batches WHERE id = $1) OR EXISTS (SELECT 1 FROM jobs WHERE batch_id = $1)
ON CONFLICT (id) DO UPDATE SET
    control = CASE WHEN batches.control = 'cancelled' THEN 'cancelled' ELSE EXCLUDED.control END,
    control_changed_at = now()
RETURNING control
"#;

/// Up to `$3` jobs of the batch not sent yet end `cancelled`, with their events; returns
/// how many. Runs after the cancel committed (`SET_CONTROL`): a send decision in progress
/// then held the batch row `FOR SHARE`, so the cancel waited for it, and every decision
/// since sees the batch cancelled and starts nothing. A job with an open send (decided
/// before the cancel), an accepted one or an uncertain one not settled yet (it may have
/// been delivered: the settling decides) is left as it is. The jobs are locked in
/// id order, so chunks and deliver's single-job statements never wait on each other
/// crosswise.
const CANCEL_JOBS: &str = r#"
WITH picked AS (
    SELECT id FROM jobs
    WHERE batch_id = $1 AND state IN ('accepted', 'rendered', 'retrying')
      AND NOT EXISTS (SELECT 1 FROM sends s WHERE s.job_id = jobs.id
                      AND (s.outcome IS NULL OR s.outcome = 'accepted'
                           OR (s.outcome = 'uncertain' AND s.resolution IS NULL)))
    ORDER BY id
    LIMIT $3
    FOR UPDATE
), cancelled AS (
    UPDATE jobs SET state = 'cancelled', updated_at = $2, reason = 'batch cancelled',
                    smtp_code = NULL, smtp_enhanced = NULL, smtp_text = NULL
    FROM picked
    WHERE jobs.id = picked.id AND jobs.state IN ('accepted', 'rendered', 'retrying')
    RETURNING jobs.id, jobs.attempt
), recorded AS (
    INSERT INTO job_events (job_id, kind, at, event)
    SELECT id, 'cancelled', $2,
           jsonb_build_object('v', 1, 'job_id', id, 'batch', $1::text, 'kind', 'cancelled',
                              'attempt', attempt, 'reason', 'batch cancelled', 'at', $2)
    FROM cancelled
    ON CONFLICT (job_id, at, kind) DO NOTHING
)
SELECT count(*) FROM cancelled
"#;

/// Jobs a cancel ends per statement: every statement stays bounded (a million-job batch
/// is 200 statements of a fraction of a second, not one past the statement timeout).
const CANCEL_CHUNK: i64 = 5_000;

impl Store {
    /// Sets a batch's control; `None` when no job of that batch is known. A cancelled
    /// batch stays cancelled. Once the cancel is committed no send of the batch starts;
    /// then every unsent job ends `cancelled`, in bounded chunks (a crash between chunks
    /// leaves jobs that deliver ends `cancelled` when it meets them, and a second cancel
    /// finishes them); returns how many this call ended.
    pub async fn set_batch_control(
        &self,
        batch: &str,
        control: BatchControl,
    ) -> Result<Option<(BatchControl, u64)>, StoreError> {
        let r = sqlx::query_scalar::<_, String>(SET_CONTROL)
            .bind(batch)
            .bind(control.as_str())
            .fetch_optional(&self.pool)
            .await;
        let Some(now) = self.observe("setting a batch's control", r)? else {
            return Ok(None);
        };
        let now = BatchControl::from_column(Some(&now));
        let mut cancelled = 0;
        if now == BatchControl::Cancelled {
            let at = chrono::Utc::now();
            loop {
                let r = sqlx::query_scalar::<_, i64>(CANCEL_JOBS)
                    .bind(batch)
                    .bind(at)
                    .bind(CANCEL_CHUNK)
                    .fetch_one(&self.pool)
                    .await;
                let n = self.observe("cancelling a batch's jobs", r)?;
                if n == 0 {
                    break;
                }
                cancelled += n as u64;
            }
        }
        Ok(Some((now, cancelled)))
    }

    /// The job's state, its batch's control and its last unsettled send. Waits while the
    /// database is unreachable (no send without a record).
    pub async fn send_check(&self, id: &JobId) -> Result<SendCheck, StoreError> {
        self.send_check_for(id, &[]).await
    }

    /// [`Store::send_check`], and which of `recipients` are suppressed, in one statement:
    /// what deliver asks before it waits for a mailbox.
    pub async fn send_check_for(
        &self,
        id: &JobId,
        recipients: &[EmailAddress],
    ) -> Result<SendCheck, StoreError> {
        let keys: Vec<String> = recipients
            .iter()
            .map(|a| a.as_str().to_ascii_lowercase())
            .collect();
        let (
            state,
            control,
            send,
            outcome,
            resolution,
            deadline,
            ended_at,
            accepted_by,
            recipients,
            external,
            accepted_at,
            suppressed,
        ): CheckRow = self
            .durably("checking a job before its send", || {
                sqlx::query_as(SEND_CHECK)
                    .bind(id.as_str())
                    .bind(&keys)
                    .fetch_one(&self.pool)
            })
            .await?;
        let unsettled = match (send, outcome, ended_at, deadline) {
            (Some(_), Some(_), Some(ended_at), _) => Some(UnsettledSend::Uncertain {
                ended_at,
                resolution,
            }),
            (Some(id), None, _, Some(deadline)) => Some(UnsettledSend::Open { id, deadline }),
            _ => None,
        };
        Ok(SendCheck {
            state: state.and_then(|s| s.parse().ok()),
            control: BatchControl::from_column(control.as_deref()),
            unsettled,
            accepted: accepted_by.map(|mailbox| AcceptedSend {
                mailbox,
                recipients: recipients.unwrap_or(0).max(0) as u32,
                external_recipients: external.unwrap_or(0).max(0) as u32,
                at: accepted_at,
            }),
            suppressed: suppressed.map(|s| s.0).unwrap_or_default(),
        })
    }
}
