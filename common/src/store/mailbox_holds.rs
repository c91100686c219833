//! Mailboxes held back, as their deliver process reports them: the one fact about the
//! pool that only deliver knows (it follows the server's replies), written on change so
//! the console and the ETA can tell "sending" from "held for auth until 10:42".

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};

/// One mailbox held back now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MailboxHold {
    pub mailbox: String,
    /// `paused` (a window or a short backoff) or `quarantined` (a fault).
    pub state: String,
    /// What held it: `auth`, `rate`, `quota`, `tenant_blocked`...
    pub reason: String,
    pub until: DateTime<Utc>,
}

const REPORT: &str = r#"
WITH held AS (
    INSERT INTO mailbox_holds (mailbox, state, reason, until, owner)
    SELECT h.mailbox, h.state, h.reason, h.until, $1
    FROM UNNEST($2::text[], $3::text[], $4::text[], $5::timestamptz[])
         AS h(mailbox, state, reason, until)
    ON CONFLICT (mailbox) DO UPDATE
        SET state = EXCLUDED.state, reason = EXCLUDED.reason, until = EXCLUDED.until,
            owner = EXCLUDED.owner, reported_at = now()
)
DELETE FROM mailbox_holds WHERE mailbox = ANY($6::text[])
"#;

impl Store {
    /// Records what `owner` reports: the mailboxes it holds back now, and those it no
    /// longer holds (sending again). One statement.
    pub async fn report_mailbox_holds(
        &self,
        owner: Uuid,
        held: &[MailboxHold],
        lifted: &[String],
    ) -> Result<(), StoreError> {
        if held.is_empty() && lifted.is_empty() {
            return Ok(());
        }
        let r = sqlx::query(REPORT)
            .bind(owner)
            .bind(held.iter().map(|h| h.mailbox.as_str()).collect::<Vec<_>>())
            .bind(held.iter().map(|h| h.state.as_str()).collect::<Vec<_>>())
            .bind(held.iter().map(|h| h.reason.as_str()).collect::<Vec<_>>())
            .bind(held.iter().map(|h| h.until).collect::<Vec<_>>())
            .bind(lifted)
            .execute(&self.pool)
            .await;
        self.observe("reporting held mailboxes", r).map(|_| ())
    }

    /// Every mailbox held back now (a hold past its `until` is none).
    pub async fn mailbox_holds(&self) -> Result<Vec<MailboxHold>, StoreError> {
        let r = sqlx::query_as::<_, (String, String, String, DateTime<Utc>)>(
            "SELECT mailbox, state, reason, until FROM mailbox_holds WHERE until > now() ORDER BY mailbox",
        )
        .fetch_all(&self.pool)
        .await;
        Ok(self
            .observe("reading held mailboxes", r)?
            .into_iter()
            .map(|(mailbox, state, reason, until)| MailboxHold {
                mailbox,
                state,
                reason,
                until,
            })
            .collect())
    }
}
