//! Write-ahead sends: every SMTP send is on record before MAIL FROM, under the sending
//! process's mailbox lease, and its outcome closes it. This table is deliver's quota
//! ledger: a rebuilt window counts every send the server may have counted, an open one
//! (its process died mid-send) at its `deadline`, the latest instant the server could
//! have counted it. So no crash, at whatever moment, lets a restart overrun a window.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::contract::{DeliveryEvent, EventKind};
use crate::domain::{EmailAddress, JobId};

/// A send about to start.
#[derive(Debug, Clone)]
pub struct SendStart {
    pub id: Uuid,
    pub mailbox: String,
    pub tenant: Option<String>,
    pub job_id: String,
    pub message_id: String,
    /// The deliver process and the lease token it holds the mailbox under.
    pub owner: Uuid,
    pub token: i64,
    pub recipients: u32,
    pub external_recipients: u32,
    /// How long after its start the server could still count it, at most.
    pub budget: std::time::Duration,
}

/// How a send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// The server took it, for this many recipients (external ones among them).
    Accepted { recipients: u32, external: u32 },
    /// Refused or lost after the data: the server may have counted it.
    Counted,
    /// Ended before the data: the server counted nothing.
    NotCounted,
    /// No reply after the data: the server may have accepted it.
    Uncertain,
}

impl SendOutcome {
    fn as_str(self) -> &'static str {
        match self {
            SendOutcome::Accepted { .. } => "accepted",
            SendOutcome::Counted => "counted",
            SendOutcome::NotCounted => "not_counted",
            SendOutcome::Uncertain => "uncertain",
        }
    }
}

/// A send as the quota ledger counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedSend {
    pub id: Uuid,
    pub mailbox: String,
    pub tenant: Option<String>,
    pub started_at: DateTime<Utc>,
    /// When it counts: its end, or its deadline while it is open.
    pub at: DateTime<Utc>,
    pub recipients: u32,
    pub external_recipients: u32,
}

/// The last send of a job whose outcome is not known, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsettledSend {
    /// Still open: its process is sending it, or died while it did.
    Open { id: Uuid, deadline: DateTime<Utc> },
    /// No reply after the data (or its process died): may have been accepted.
    Uncertain {
        ended_at: DateTime<Utc>,
        /// An operator's (or the policy's) decision: `resend` or `marked_sent`.
        resolution: Option<String>,
    },
}

/// An uncertain send waiting for a decision (`mailpipe-ingest uncertain list`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UncertainSend {
    pub job_id: String,
    pub batch: Option<String>,
    pub mailbox: String,
    pub message_id: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub recipients: u32,
}

/// What an operator decides about an uncertain send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Send it again (at least once: it may have been accepted).
    Resend,
    /// It was delivered (e.g. found in the mailbox's Sent Items): never send it again.
    MarkedSent,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Resend => "resend",
            Resolution::MarkedSent => "marked_sent",
        }
    }
}

const OPEN: &str = r#"
WITH fenced AS (
    SELECT 1 FROM mailbox_leases
    WHERE mailbox = $2 AND owner = $6 AND token = $7 AND expires_at > now()
), resent AS (
    UPDATE sends SET resolution = 'resend', resolved_at = now()
    WHERE job_id = $4 AND outcome = 'uncertain' AND resolution IS NULL
      AND EXISTS (SELECT 1 FROM fenced)
)
INSERT INTO sends (id, mailbox, tenant, job_id, message_id, owner, token, recipients,
                   external_recipients, started_at, deadline)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, now(), now() + make_interval(secs => $10)
WHERE EXISTS (SELECT 1 FROM fenced)
  AND NOT EXISTS (SELECT 1 FROM sends WHERE job_id = $4 AND outcome = 'accepted')
  AND NOT EXISTS (SELECT 1 FROM jobs WHERE id = $4 AND state = 'delivered')
ON CONFLICT DO NOTHING
"#;

/// Why the insert wrote nothing: its own row is there (an earlier try's commit whose
/// answer was lost), the lease is gone, or the job is busy (another send of it is open,
/// or one was accepted).
const AFTER_NO_INSERT: &str = r#"
SELECT
    EXISTS (
        SELECT 1 FROM sends s JOIN mailbox_leases l ON l.mailbox = s.mailbox
        WHERE s.id = $1 AND s.outcome IS NULL
          AND l.owner = s.owner AND l.token = s.token AND l.expires_at > now()
    ),
    EXISTS (
        SELECT 1 FROM mailbox_leases
        WHERE mailbox = $2 AND owner = $3 AND token = $4 AND expires_at > now()
    )
"#;

/// What writing a send ahead found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAhead {
    /// On record: send it.
    Written,
    /// The lease is another process's now: nothing may be sent through the mailbox.
    Fenced,
    /// Another send of this job is open (a second copy in another process), or one was
    /// accepted: not now; ask the record again.
    JobBusy,
}

const MAILBOX_SENDS: &str = r#"
SELECT id, mailbox, tenant, started_at, COALESCE(ended_at, deadline) AS at, recipients, external_recipients
FROM sends
WHERE mailbox = $1 AND started_at > $2
  AND (outcome IS NULL OR outcome <> 'not_counted')
ORDER BY started_at
"#;

const TENANT_SENDS: &str = r#"
SELECT id, mailbox, tenant, started_at, COALESCE(ended_at, deadline) AS at, recipients, external_recipients
FROM sends
WHERE tenant = ANY($1) AND external_recipients > 0 AND owner <> $3 AND started_at > $2
  AND (outcome IS NULL OR outcome <> 'not_counted')
ORDER BY started_at
"#;

impl Store {
    /// Puts a send on record before it starts, if `owner` still holds the mailbox under
    /// `token` (checked by the database, on its clock: the fence), and no other send of
    /// the job is open or was accepted (one send per job across processes). Marks earlier
    /// uncertain sends of the job as resent.
    /// Waits while the database is unreachable: nothing is sent that is not on record.
    /// Idempotent: a retry after a lost commit finds its own row.
    pub async fn open_send(&self, s: &SendStart) -> Result<WriteAhead, StoreError> {
        let budget = s.budget.as_secs_f64();
        let r = self
            .durably("writing a send ahead", || {
                sqlx::query(OPEN)
                    .bind(s.id)
                    .bind(&s.mailbox)
                    .bind(&s.tenant)
                    .bind(&s.job_id)
                    .bind(&s.message_id)
                    .bind(s.owner)
                    .bind(s.token)
                    .bind(s.recipients as i32)
                    .bind(s.external_recipients as i32)
                    .bind(budget)
                    .execute(&self.pool)
            })
            .await?;
        if r.rows_affected() == 1 {
            return Ok(WriteAhead::Written);
        }
        let (ours, leased): (bool, bool) = self
            .durably("checking a send written ahead", || {
                sqlx::query_as(AFTER_NO_INSERT)
                    .bind(s.id)
                    .bind(&s.mailbox)
                    .bind(s.owner)
                    .bind(s.token)
                    .fetch_one(&self.pool)
            })
            .await?;
        Ok(match (ours, leased) {
            (true, _) => WriteAhead::Written,
            (false, false) => WriteAhead::Fenced,
            (false, true) => WriteAhead::JobBusy,
        })
    }

    /// Closes a send with its outcome. Not fenced: what happened is recorded whoever owns
    /// the mailbox now (an uncertain send found accepted becomes accepted).
    pub async fn close_send(&self, id: Uuid, outcome: SendOutcome) -> Result<(), StoreError> {
        let (recipients, external) = match outcome {
            SendOutcome::Accepted {
                recipients,
                external,
            } => (Some(recipients as i32), Some(external as i32)),
            _ => (None, None),
        };
        self.durably("closing a send", || {
            sqlx::query(
                "UPDATE sends SET outcome = $2, ended_at = now(),
                        recipients = COALESCE($3, recipients),
                        external_recipients = COALESCE($4, external_recipients)
                 WHERE id = $1 AND (outcome IS NULL OR outcome = 'uncertain')",
            )
            .bind(id)
            .bind(outcome.as_str())
            .bind(recipients)
            .bind(external)
            .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    /// Sends of `mailbox` started after `since` that the server may have counted.
    pub async fn mailbox_sends(
        &self,
        mailbox: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<CountedSend>, StoreError> {
        let r = sqlx::query_as::<_, CountedRow>(MAILBOX_SENDS)
            .bind(mailbox)
            .bind(since)
            .fetch_all(&self.pool)
            .await;
        Ok(self
            .observe("reading a mailbox's sends", r)?
            .into_iter()
            .map(CountedRow::into_send)
            .collect())
    }

    /// Sends with external recipients of `tenants` started after `since` by any process
    /// but `not_owner`: the tenant windows a process shares with the others.
    pub async fn tenant_sends(
        &self,
        tenants: &[String],
        not_owner: Uuid,
        since: DateTime<Utc>,
    ) -> Result<Vec<CountedSend>, StoreError> {
        let r = sqlx::query_as::<_, CountedRow>(TENANT_SENDS)
            .bind(tenants)
            .bind(since)
            .bind(not_owner)
            .fetch_all(&self.pool)
            .await;
        Ok(self
            .observe("reading a tenant's sends", r)?
            .into_iter()
            .map(CountedRow::into_send)
            .collect())
    }

    /// A new owner of `mailbox` (lease `token`) ends the sends earlier owners left open:
    /// uncertain, counted at their deadline. Returns the jobs they belong to.
    pub async fn settle_orphans(
        &self,
        mailbox: &str,
        token: i64,
    ) -> Result<Vec<String>, StoreError> {
        let r = sqlx::query_scalar::<_, String>(
            "UPDATE sends SET outcome = 'uncertain', ended_at = deadline
             WHERE mailbox = $1 AND token < $2 AND outcome IS NULL
             RETURNING job_id",
        )
        .bind(mailbox)
        .bind(token)
        .fetch_all(&self.pool)
        .await;
        self.observe("settling a dead owner's open sends", r)
    }

    /// An open send whose deadline passed (its process died): uncertain from now on.
    pub async fn expire_open_send(&self, id: Uuid) -> Result<(), StoreError> {
        self.durably("ending a dead process's send", || {
            sqlx::query(
                "UPDATE sends SET outcome = 'uncertain', ended_at = deadline
                 WHERE id = $1 AND outcome IS NULL AND deadline <= now()",
            )
            .bind(id)
            .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    /// Uncertain sends no one decided on yet, oldest first (at most `limit`).
    pub async fn uncertain_sends(&self, limit: i64) -> Result<Vec<UncertainSend>, StoreError> {
        let r = sqlx::query_as::<_, UncertainRow>(
            "SELECT s.job_id, j.batch_id, s.mailbox, s.message_id, s.started_at, s.ended_at, s.recipients
             FROM sends s LEFT JOIN jobs j ON j.id = s.job_id
             WHERE (s.outcome = 'uncertain' AND s.resolution IS NULL)
                OR (s.outcome IS NULL AND s.deadline <= now())
             ORDER BY s.started_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await;
        Ok(self
            .observe("listing uncertain sends", r)?
            .into_iter()
            .map(|r| UncertainSend {
                job_id: r.job_id,
                batch: r.batch_id,
                mailbox: r.mailbox,
                message_id: r.message_id,
                started_at: r.started_at,
                ended_at: r.ended_at,
                recipients: r.recipients.max(0) as u32,
            })
            .collect())
    }

    /// Settles a job's uncertain sends with `resolution`, and for `MarkedSent` records the
    /// job `delivered` (`why` in the event's reason, `mailbox` the one that sent it). The one
    /// way an operator (`mailpipe-ingest uncertain`) and deliver's Sent Items lookup decide.
    /// False when the job had no uncertain send waiting.
    pub async fn settle_uncertain(
        &self,
        job: &JobId,
        resolution: Resolution,
        why: &str,
        mailbox: Option<EmailAddress>,
    ) -> Result<bool, StoreError> {
        if self.resolve_uncertain(job.as_str(), resolution).await? == 0 {
            return Ok(false);
        }
        if resolution == Resolution::MarkedSent {
            let mut event = DeliveryEvent::new(job.clone(), None, EventKind::Delivered);
            event.at = Utc::now();
            event.reason = Some(why.to_owned());
            event.mailbox = mailbox;
            self.record_event(&event).await?;
        }
        Ok(true)
    }

    /// Records a decision on a job's uncertain sends; how many it settled (0: the job has
    /// none waiting).
    pub async fn resolve_uncertain(
        &self,
        job_id: &str,
        resolution: Resolution,
    ) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE sends SET resolution = $2, resolved_at = now(),
                    outcome = COALESCE(outcome, 'uncertain'), ended_at = COALESCE(ended_at, deadline)
             WHERE job_id = $1 AND resolution IS NULL
               AND (outcome = 'uncertain' OR (outcome IS NULL AND deadline <= now()))",
        )
        .bind(job_id)
        .bind(resolution.as_str())
        .execute(&self.pool)
        .await;
        Ok(self
            .observe("resolving an uncertain send", r)?
            .rows_affected())
    }
}

#[derive(sqlx::FromRow)]
struct CountedRow {
    id: Uuid,
    mailbox: String,
    tenant: Option<String>,
    started_at: DateTime<Utc>,
    at: DateTime<Utc>,
    recipients: i32,
    external_recipients: i32,
}

impl CountedRow {
    fn into_send(self) -> CountedSend {
        CountedSend {
            id: self.id,
            mailbox: self.mailbox,
            tenant: self.tenant,
            started_at: self.started_at,
            at: self.at,
            recipients: self.recipients.max(0) as u32,
            external_recipients: self.external_recipients.max(0) as u32,
        }
    }
}

#[derive(sqlx::FromRow)]
struct UncertainRow {
    job_id: String,
    batch_id: Option<String>,
    mailbox: String,
    message_id: String,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    recipients: i32,
}
