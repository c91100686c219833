//! Which messages of a mailbox's Sent Items mailpipe itself sent and has on record: what
//! `deliver.graph.sent_items_retention_days` may delete, and nothing else. A Message-ID in
//! Sent Items counts as ours only when a closed send of *that* mailbox carries it (`sends`,
//! kept for `database.retention_days`), so a person's mail in a pool mailbox, or a message whose
//! send has left the record, is never touched.

use std::collections::HashSet;

use crate::domain::EmailAddress;

use super::{Store, StoreError};

const SENT_BY: &str = r#"
SELECT DISTINCT message_id FROM sends
WHERE message_id = ANY($2) AND lower(mailbox) = lower($1) AND outcome IS NOT NULL
"#;

impl Store {
    /// The Message-IDs among `message_ids` (angle brackets included, as sent) that a closed
    /// send of `mailbox` carries.
    pub async fn sent_by(
        &self,
        mailbox: &EmailAddress,
        message_ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        if message_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let r = sqlx::query_scalar::<_, String>(SENT_BY)
            .bind(mailbox.as_str())
            .bind(message_ids)
            .fetch_all(&self.pool)
            .await;
        Ok(self
            .observe("looking up Sent Items among the sends", r)?
            .into_iter()
            .collect())
    }
}
