//! Recording what happened to a job (render's and deliver's events), and which sends are
//! inside the quota windows (what deliver rebuilds at start).

use sqlx::types::Json;

use uuid::Uuid;

use super::{JobState, SendOutcome, Store, StoreError};
use crate::contract::DeliveryEvent;

/// Appends the event to the job's trail (once: the same event recorded twice is one row)
/// and moves the job when the event moves it forward (`mailpipe_moves_forward`, in the
/// migration). A job the database does not know yet (accepted before it was deployed) is
/// created from the event. One statement: atomic without a transaction.
macro_rules! record_event_ctes {
    () => {
        r#"
job AS (
    INSERT INTO jobs AS j (id, batch_id, state, attempt, mailbox, message_id, smtp_code,
                           smtp_enhanced, smtp_text, reason, refused, uncertain,
                           recipient_count, accepted_at, updated_at, suppressed)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
            CASE WHEN $3 = 'accepted' THEN $14 END, $14, $19)
    ON CONFLICT (id) DO UPDATE SET
        state = EXCLUDED.state,
        attempt = GREATEST(j.attempt, EXCLUDED.attempt),
        mailbox = COALESCE(EXCLUDED.mailbox, j.mailbox),
        message_id = COALESCE(EXCLUDED.message_id, j.message_id),
        smtp_code = EXCLUDED.smtp_code,
        smtp_enhanced = EXCLUDED.smtp_enhanced,
        smtp_text = EXCLUDED.smtp_text,
        reason = EXCLUDED.reason,
        refused = EXCLUDED.refused,
        uncertain = EXCLUDED.uncertain,
        suppressed = CASE WHEN EXCLUDED.suppressed = '[]'::jsonb THEN j.suppressed
                          ELSE EXCLUDED.suppressed END,
        batch_id = COALESCE(j.batch_id, EXCLUDED.batch_id),
        accepted_at = COALESCE(j.accepted_at, EXCLUDED.accepted_at),
        updated_at = EXCLUDED.updated_at
    WHERE mailpipe_moves_forward(j.state, j.updated_at, EXCLUDED.state, EXCLUDED.updated_at)
    RETURNING 1
)
INSERT INTO job_events (job_id, kind, at, mailbox, tenant, recipients, external_recipients,
                        uncertain, event)
SELECT $1, $3, $14, $5, $15, $16, $17, $12, $18
-- A job is delivered once: a second `delivered` (a crash's redelivery recorded from its
-- accepted send while the Sent Items lookup records the same send) adds no event, so
-- the trail and the per-minute sends count it once.
WHERE $3 <> 'delivered' OR EXISTS (SELECT 1 FROM job)
ON CONFLICT (job_id, at, kind) DO NOTHING
"#
    };
}

pub(super) const RECORD_EVENT: &str = concat!("WITH ", record_event_ctes!());

/// A send's outcome and its job's event, in one statement: a crash can never leave a send
/// `accepted` (or `uncertain`) and its job as it was before the send. Not fenced: what
/// happened is recorded whoever owns the mailbox now.
const CLOSE_AND_RECORD: &str = concat!(
    r#"WITH closed AS (
    UPDATE sends SET outcome = $21, ended_at = now(),
           recipients = COALESCE($22, recipients),
           external_recipients = COALESCE($23, external_recipients)
    WHERE id = $20 AND (outcome IS NULL OR outcome = 'uncertain')
), "#,
    record_event_ctes!()
);

type EventQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// The event's 19 parameters, `$1`..`$19` of `record_event_ctes!`.
pub(super) fn bind_event<'q>(q: EventQuery<'q>, e: &'q DeliveryEvent) -> EventQuery<'q> {
    let state = JobState::of(e.kind).as_str();
    let smtp = e.smtp.as_ref();
    let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let recipients = clamp(
        e.recipients
            .saturating_add(e.refused_recipients.len() as u32),
    );
    q.bind(e.job_id.as_str())
        .bind(e.batch.as_ref().map(|b| b.as_str()))
        .bind(state)
        .bind(clamp(e.attempt))
        .bind(e.mailbox.as_ref().map(|m| m.as_str()))
        .bind(e.message_id.as_deref())
        .bind(smtp.map(|r| i32::from(r.code)))
        .bind(smtp.and_then(|r| r.enhanced.as_deref()))
        .bind(smtp.map(|r| r.text.as_str()))
        .bind(e.reason.as_deref())
        .bind(Json(&e.refused_recipients))
        .bind(e.uncertain)
        .bind(recipients)
        .bind(e.at)
        .bind(e.tenant.as_deref())
        .bind(clamp(e.recipients))
        .bind(clamp(e.external_recipients))
        .bind(Json(e))
        .bind(Json(&e.suppressed_recipients))
}

impl Store {
    /// Records `event` durably. While the database is unreachable it waits (retrying)
    /// until it is back or shutdown: a stage calls this before it acks, so it takes
    /// nothing new meanwhile and loses nothing.
    pub async fn record_event(&self, e: &DeliveryEvent) -> Result<(), StoreError> {
        self.durably("recording an event", || {
            bind_event(sqlx::query(RECORD_EVENT), e).execute(&self.pool)
        })
        .await
        .map(|_| ())
    }

    /// Closes send `id` with its outcome and records its job's event `e`, in one statement
    /// (waits while the database is unreachable, like [`Store::record_event`]).
    pub async fn record_outcome(
        &self,
        id: Uuid,
        outcome: SendOutcome,
        e: &DeliveryEvent,
    ) -> Result<(), StoreError> {
        let (recipients, external) = outcome.counts();
        self.durably("recording a send's outcome", || {
            bind_event(sqlx::query(CLOSE_AND_RECORD), e)
                .bind(id)
                .bind(outcome.as_str())
                .bind(recipients)
                .bind(external)
                .execute(&self.pool)
        })
        .await
        .map(|_| ())
    }
}
