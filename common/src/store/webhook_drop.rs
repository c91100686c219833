//! `mailpipe-ingest webhooks drop`: an operator ends pending webhook deliveries
//! `dropped` (a receiver retired, a host no longer trusted, a batch whose outcomes must
//! not leave). `webhooks retry` puts them back.

use super::{Store, StoreError};

/// Which pending deliveries to drop: those to `host`, of `batch`, both, or all (neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropFilter<'a> {
    /// The URL's host, any case (`erp.example.com`, `[2001:db8::1]`).
    pub host: Option<&'a str>,
    pub batch: Option<&'a str>,
}

/// One statement: a dispatcher holding one of them (a call under way) finds it settled
/// when it records its try, and records nothing over it.
const DROP: &str = r#"
UPDATE webhook_deliveries d
SET state = 'dropped', last_error = 'dropped by an operator: ' || $3
FROM webhook_events e
WHERE e.id = d.event_id AND d.state = 'pending'
  AND ($1::text IS NULL
       OR lower(substring(d.url from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^]]*\]|[^:/?#]*)')) = lower($1))
  AND ($2::text IS NULL OR e.batch_id = $2)
"#;

impl Store {
    /// Ends the pending deliveries matching `filter` `dropped` with `reason`; returns how
    /// many.
    pub async fn drop_webhooks(
        &self,
        filter: DropFilter<'_>,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let r = sqlx::query(DROP)
            .bind(filter.host)
            .bind(filter.batch)
            .bind(reason)
            .execute(&self.pool)
            .await;
        Ok(self
            .observe("dropping webhook deliveries", r)?
            .rows_affected())
    }
}
