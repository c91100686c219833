//! Recording what happened to a job (render's and deliver's events), and which sends are
//! inside the quota windows (what deliver rebuilds at start).

use sqlx::types::Json;

use super::{JobState, Store, StoreError};
use crate::contract::DeliveryEvent;

/// Appends the event to the job's trail (once: the same event recorded twice is one row)
/// and moves the job when the event moves it forward (`mailpipe_moves_forward`, in the
/// migration). A job the database does not know yet (accepted before it was deployed) is
/// created from the event. One statement: atomic without a transaction.
const RECORD_EVENT: &str = r#"
WITH job AS (
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
)
INSERT INTO job_events (job_id, kind, at, mailbox, tenant, recipients, external_recipients,
                        uncertain, event)
VALUES ($1, $3, $14, $5, $15, $16, $17, $12, $18)
ON CONFLICT (job_id, at, kind) DO NOTHING
"#;

impl Store {
    /// Records `event` durably. While the database is unreachable it waits (retrying)
    /// until it is back or shutdown: a stage calls this before it acks, so it takes
    /// nothing new meanwhile and loses nothing.
    pub async fn record_event(&self, e: &DeliveryEvent) -> Result<(), StoreError> {
        let state = JobState::of(e.kind).as_str();
        let smtp = e.smtp.as_ref();
        let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        let recipients = clamp(
            e.recipients
                .saturating_add(e.refused_recipients.len() as u32),
        );
        self.durably("recording an event", || {
            sqlx::query(RECORD_EVENT)
                .bind(e.job_id.as_str())
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
                .execute(&self.pool)
        })
        .await
        .map(|_| ())
    }
}
