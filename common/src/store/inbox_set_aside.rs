//! Inbox messages deliver's reader must not fetch again: the ones too large to fetch,
//! recorded after the one fetch that found out and forgotten once they are moved out of the
//! Inbox (migration 0014). The reader asks once per round which of the messages it listed
//! are recorded, so the common case (nothing set aside) costs one statement.

use std::collections::HashSet;

use crate::domain::EmailAddress;

use super::{Store, StoreError};

/// Longest Graph id or Message-ID kept (Exchange's ids are ~150 characters).
pub const MAX_INBOX_KEY: usize = 1024;
/// Longest reason kept.
const MAX_REASON: usize = 500;

const AMONG: &str = r#"
SELECT graph_id FROM inbox_set_aside WHERE mailbox = lower($1) AND graph_id = ANY($2)
"#;

const RECORD: &str = r#"
INSERT INTO inbox_set_aside (mailbox, graph_id, internet_message_id, reason)
VALUES (lower($1), $2, $3, $4)
ON CONFLICT (mailbox, graph_id) DO NOTHING
"#;

const FORGET: &str = "DELETE FROM inbox_set_aside WHERE mailbox = lower($1) AND graph_id = $2";

/// A Graph id or Message-ID longer than [`MAX_INBOX_KEY`]: not kept, and said so.
#[derive(Debug, thiserror::Error)]
pub enum SetAsideError {
    #[error("the Graph id is empty or longer than {MAX_INBOX_KEY} characters")]
    BadKey,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Which of `graph_ids` (messages listed in `mailbox`'s Inbox) are set aside.
    pub async fn set_aside_among(
        &self,
        mailbox: &EmailAddress,
        graph_ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        if graph_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let r = sqlx::query_scalar::<_, String>(AMONG)
            .bind(mailbox.as_str())
            .bind(graph_ids)
            .fetch_all(&self.pool)
            .await;
        Ok(self
            .observe("reading the Inbox's set-aside messages", r)?
            .into_iter()
            .collect())
    }

    /// Records that the Inbox message `graph_id` must not be fetched again, and why.
    pub async fn set_aside(
        &self,
        mailbox: &EmailAddress,
        graph_id: &str,
        internet_message_id: Option<&str>,
        reason: &str,
    ) -> Result<(), SetAsideError> {
        if graph_id.is_empty() || graph_id.len() > MAX_INBOX_KEY {
            return Err(SetAsideError::BadKey);
        }
        let message_id = internet_message_id.filter(|m| m.len() <= MAX_INBOX_KEY);
        let reason: String = reason.chars().take(MAX_REASON).collect();
        let r = sqlx::query(RECORD)
            .bind(mailbox.as_str())
            .bind(graph_id)
            .bind(message_id)
            .bind(reason)
            .execute(&self.pool)
            .await;
        self.observe("recording an Inbox message set aside", r)?;
        Ok(())
    }

    /// The set-aside message `graph_id` has left the Inbox: its record goes.
    pub async fn forget_set_aside(
        &self,
        mailbox: &EmailAddress,
        graph_id: &str,
    ) -> Result<(), StoreError> {
        let r = sqlx::query(FORGET)
            .bind(mailbox.as_str())
            .bind(graph_id)
            .execute(&self.pool)
            .await;
        self.observe("forgetting an Inbox message set aside", r)?;
        Ok(())
    }
}
