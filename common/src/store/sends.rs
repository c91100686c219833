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

/// A send about to start: what the write-ahead decision checks and records.
#[derive(Debug, Clone)]
pub struct SendStart {
    pub id: Uuid,
    pub mailbox: String,
    pub tenant: Option<String>,
    pub job_id: String,
    /// The job's batch (its control is checked under the batch row's lock).
    pub batch: Option<String>,
    pub message_id: String,
    /// The deliver process and the lease token it holds the mailbox under.
    pub owner: Uuid,
    pub token: i64,
    /// The envelope's recipients (screened against the suppression list once more).
    pub recipients: Vec<EmailAddress>,
    pub external_recipients: u32,
    /// How long after its start the server could still count it, at most.
    pub budget: std::time::Duration,
    pub rules: SendRules,
}

/// What the decision applies besides the record: deliver's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendRules {
    /// How long after an uncertain send the job may be sent again (`resend`); `None`: an
    /// uncertain send holds the job until an operator decides (`hold`).
    pub uncertain_hold: Option<std::time::Duration>,
    /// The tenant's external-recipient limit and its window, shared by every process.
    pub tenant_budget: Option<(u32, std::time::Duration)>,
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
    /// Recipients (external ones among them) an accepted send went to, as columns.
    pub(super) fn counts(self) -> (Option<i32>, Option<i32>) {
        match self {
            SendOutcome::Accepted {
                recipients,
                external,
            } => (Some(recipients as i32), Some(external as i32)),
            _ => (None, None),
        }
    }

    pub(super) fn as_str(self) -> &'static str {
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
    /// The Graph draft a Graph send created (migration 0015); `None` for SMTP sends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_draft_id: Option<String>,
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

/// What the write-ahead decision (`mailpipe_open_send`, migration 0009) found: `Written`
/// is the one answer that allows the send; every other says why not, and nothing was
/// written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// On record: send it.
    Written,
    /// The lease is another process's now: nothing may be sent through the mailbox.
    Fenced,
    /// The job is delivered (or bounced, or ended suppressed): never sent again.
    Duplicate,
    /// A send of it was accepted (or marked sent) but the job not recorded `delivered`
    /// (a crash in between): recorded now from the send, never sent again.
    AcceptedBefore(AcceptedSend),
    Cancelled,
    Expired,
    Paused,
    /// Another send of it is open (another process sends it now) until its deadline.
    InFlight(DateTime<Utc>),
    /// Its last send is uncertain: held until an operator decides (`None`) or until then.
    Uncertain(Option<DateTime<Utc>>),
    /// These recipients were suppressed since the message was screened.
    Suppressed(Vec<String>),
    /// The tenant's external-recipient window has no room before `until`.
    TenantFull {
        until: DateTime<Utc>,
        detail: String,
    },
}

/// A send of a job the server accepted (or an operator marked sent), as the record has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedSend {
    pub mailbox: String,
    pub recipients: u32,
    pub external_recipients: u32,
    pub at: Option<DateTime<Utc>>,
}

impl Decision {
    /// Its name in metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Written => "written",
            Decision::Fenced => "fenced",
            Decision::Duplicate => "duplicate",
            Decision::AcceptedBefore(_) => "accepted_before",
            Decision::Cancelled => "cancelled",
            Decision::Expired => "expired",
            Decision::Paused => "paused",
            Decision::InFlight(_) => "in_flight",
            Decision::Uncertain(_) => "uncertain",
            Decision::Suppressed(_) => "suppressed",
            Decision::TenantFull { .. } => "tenant_full",
        }
    }
}

type DecisionRow = (
    String,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i32>,
);

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

/// A decision on a job's uncertain sends (and its sends left open past their deadline).
const RESOLVE_UNCERTAIN: &str = "UPDATE sends SET resolution = $2, resolved_at = now(),
        outcome = COALESCE(outcome, 'uncertain'), ended_at = COALESCE(ended_at, deadline)
 WHERE job_id = $1 AND resolution IS NULL
   AND (outcome = 'uncertain' OR (outcome IS NULL AND deadline <= now()))";

impl Store {
    /// The one decision point of a send: checks the job, its batch, the suppression list,
    /// the mailbox's fence and the tenant's budget, and writes the send ahead, in one
    /// transaction under the row locks that make it exact across processes (migration
    /// 0009). Waits while the database is unreachable: nothing is sent that is not on
    /// record. Idempotent: a retry after a lost commit finds its own row.
    pub async fn open_send(&self, s: &SendStart) -> Result<Decision, StoreError> {
        let recipients: Vec<String> = s
            .recipients
            .iter()
            .map(|r| r.as_str().to_ascii_lowercase())
            .collect();
        let hold = s.rules.uncertain_hold.map(|d| d.as_secs_f64());
        let (limit, window) = match s.rules.tenant_budget {
            Some((limit, window)) => (Some(limit as i32), Some(window.as_secs_f64())),
            None => (None, None),
        };
        let (verdict, until, detail, mailbox, n, external): DecisionRow = self
            .durably("deciding a send", || {
                sqlx::query_as(
                    "SELECT * FROM mailpipe_open_send($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                )
                .bind(s.id)
                .bind(&s.mailbox)
                .bind(&s.tenant)
                .bind(&s.job_id)
                .bind(&s.batch)
                .bind(&s.message_id)
                .bind(s.owner)
                .bind(s.token)
                .bind(&recipients)
                .bind(s.external_recipients as i32)
                .bind(s.budget.as_secs_f64())
                .bind(hold)
                .bind(limit)
                .bind(window)
                .fetch_one(&self.pool)
            })
            .await?;
        Ok(match verdict.as_str() {
            "written" => Decision::Written,
            "fenced" => Decision::Fenced,
            "duplicate" => Decision::Duplicate,
            "accepted" => Decision::AcceptedBefore(AcceptedSend {
                mailbox: mailbox.unwrap_or_default(),
                recipients: n.unwrap_or(0).max(0) as u32,
                external_recipients: external.unwrap_or(0).max(0) as u32,
                at: until,
            }),
            "cancelled" => Decision::Cancelled,
            "expired" => Decision::Expired,
            "paused" => Decision::Paused,
            "in_flight" => Decision::InFlight(until.unwrap_or_else(Utc::now)),
            "uncertain" => Decision::Uncertain(until),
            "suppressed" => Decision::Suppressed(
                detail
                    .unwrap_or_default()
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            "tenant_full" => Decision::TenantFull {
                until: until.unwrap_or_else(Utc::now),
                detail: detail.unwrap_or_default(),
            },
            other => {
                return Err(StoreError::Query {
                    what: "deciding a send",
                    source: sqlx::Error::Protocol(format!("unknown send decision {other:?}")),
                });
            }
        })
    }

    /// Closes a send with its outcome. Not fenced: what happened is recorded whoever owns
    /// the mailbox now (an uncertain send found accepted becomes accepted).
    pub async fn close_send(&self, id: Uuid, outcome: SendOutcome) -> Result<(), StoreError> {
        let (recipients, external) = outcome.counts();
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

    /// Notes the Graph draft an open send created (between the draft and its send): a
    /// send left open or uncertain then names its draft. Only while the send is open.
    pub async fn note_graph_draft(&self, id: Uuid, draft_id: &str) -> Result<(), StoreError> {
        self.durably("noting a send's Graph draft", || {
            sqlx::query("UPDATE sends SET graph_draft_id = $2 WHERE id = $1 AND outcome IS NULL")
                .bind(id)
                .bind(draft_id)
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
    /// uncertain, counted at their deadline, and their jobs show it (`uncertain`, an
    /// event). Returns the jobs they belong to.
    pub async fn settle_orphans(
        &self,
        mailbox: &str,
        token: i64,
    ) -> Result<Vec<String>, StoreError> {
        let r = sqlx::query_scalar::<_, String>(
            "SELECT mailpipe_end_uncertain(ARRAY(
                 SELECT id FROM sends WHERE mailbox = $1 AND token < $2 AND outcome IS NULL))",
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
                "SELECT mailpipe_end_uncertain(ARRAY(
                     SELECT id FROM sends WHERE id = $1 AND outcome IS NULL AND deadline <= now()))",
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
            "SELECT s.job_id, j.batch_id, s.mailbox, s.message_id, s.started_at, s.ended_at, s.recipients,
                    s.graph_draft_id
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
                graph_draft_id: r.graph_draft_id,
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
        let mut event = DeliveryEvent::new(job.clone(), None, EventKind::Delivered);
        event.at = Utc::now();
        event.reason = Some(why.to_owned());
        event.mailbox = mailbox;
        // One transaction: a send marked sent and its job delivered become visible
        // together, so a redelivered copy's decision never finds the one without the other
        // (it would record the delivery itself, under another reason).
        let r = async {
            let mut tx = self.pool.begin().await?;
            let settled = sqlx::query(RESOLVE_UNCERTAIN)
                .bind(job.as_str())
                .bind(resolution.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if settled > 0 && resolution == Resolution::MarkedSent {
                super::events::bind_event(sqlx::query(super::events::RECORD_EVENT), &event)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(settled)
        }
        .await;
        Ok(self.observe("settling an uncertain send", r)? > 0)
    }

    /// Records a decision on a job's uncertain sends; how many it settled (0: the job has
    /// none waiting).
    pub async fn resolve_uncertain(
        &self,
        job_id: &str,
        resolution: Resolution,
    ) -> Result<u64, StoreError> {
        let r = sqlx::query(RESOLVE_UNCERTAIN)
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
    graph_draft_id: Option<String>,
}
