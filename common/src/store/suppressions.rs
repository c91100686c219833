//! The suppression list: addresses never sent to again, for every sender of the pool
//! (global, docs/data.md "Bounces and suppression"). Fed by hard bounces, by RCPT
//! refusals that prove an address dead, and by operators; read by deliver before each send
//! and by ingest (its `suppressed_recipients` policy, the API and the CLI).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Store, StoreError};
use crate::contract::SuppressionSource;
use crate::domain::EmailAddress;

/// Most suppressions one page holds.
pub const MAX_SUPPRESSION_PAGE: u32 = 1000;

/// Longest reason kept (characters).
pub const MAX_REASON: usize = 500;

/// One address on the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suppression {
    /// Lower-cased: what is compared.
    pub address: String,
    /// As first seen.
    pub original: String,
    pub source: SuppressionSource,
    pub reason: String,
    /// The DSN status or the RCPT reply's enhanced code that put it there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// An address to put on the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSuppression {
    pub address: EmailAddress,
    pub source: SuppressionSource,
    pub reason: String,
    pub status: Option<String>,
    pub job_id: Option<String>,
    pub mailbox: Option<String>,
    pub created_by: Option<String>,
}

impl NewSuppression {
    /// An operator's entry.
    pub fn by_operator(address: EmailAddress, reason: &str, created_by: Option<String>) -> Self {
        Self {
            address,
            source: SuppressionSource::Operator,
            reason: reason.to_owned(),
            status: None,
            job_id: None,
            mailbox: None,
            created_by,
        }
    }
}

/// Which suppressions `list_suppressions` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuppressionFilter {
    /// Addresses containing this text (any case): a whole address or a domain.
    pub address: Option<String>,
    pub source: Option<SuppressionSource>,
    /// Addresses after this one (the previous page's last), in address order.
    pub after: Option<String>,
    /// At most this many (1..=`MAX_SUPPRESSION_PAGE`).
    pub limit: u32,
}

type Row = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    Option<String>,
);

const COLUMNS: &str =
    "address, original, source, reason, status, job_id, mailbox, created_at, created_by";

fn from_row(r: Row) -> Option<Suppression> {
    Some(Suppression {
        address: r.0,
        original: r.1,
        source: SuppressionSource::parse(&r.2)?,
        reason: r.3,
        status: r.4,
        job_id: r.5,
        mailbox: r.6,
        created_at: r.7,
        created_by: r.8,
    })
}

/// An automatic entry keeps the first reason; an operator's replaces what is there (a PUT).
const INSERT: &str = r#"
INSERT INTO suppressions AS s (address, original, source, reason, status, job_id, mailbox, created_by)
VALUES (lower($1), $1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (address) DO UPDATE SET
    source = EXCLUDED.source, reason = EXCLUDED.reason, status = EXCLUDED.status,
    job_id = EXCLUDED.job_id, mailbox = EXCLUDED.mailbox, created_by = EXCLUDED.created_by,
    created_at = now()
WHERE EXCLUDED.source = 'operator'
RETURNING (xmax = 0)
"#;

pub(super) fn bounded_reason(reason: &str) -> String {
    reason
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect()
}

impl Store {
    /// Puts an address on the list. `true` when it was not there before. An automatic
    /// source (bounce, RCPT refusal) leaves an existing entry as it is; an operator's
    /// replaces its reason.
    pub async fn suppress(&self, s: &NewSuppression) -> Result<bool, StoreError> {
        let r = suppress_in(&self.pool, s).await;
        Ok(self.observe("adding a suppression", r)?.unwrap_or(false))
    }

    /// Takes an address off the list; `false` when it was not on it.
    pub async fn unsuppress(&self, address: &EmailAddress) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM suppressions WHERE address = lower($1)")
            .bind(address.as_str())
            .execute(&self.pool)
            .await;
        Ok(self.observe("removing a suppression", r)?.rows_affected() > 0)
    }

    /// The list, in address order, a page at a time.
    pub async fn list_suppressions(
        &self,
        filter: &SuppressionFilter,
    ) -> Result<Vec<Suppression>, StoreError> {
        let query = format!(
            "SELECT {COLUMNS} FROM suppressions
             WHERE ($1::text IS NULL OR strpos(address, lower($1)) > 0)
               AND ($2::text IS NULL OR source = $2)
               AND ($3::text IS NULL OR address > $3)
             ORDER BY address LIMIT $4"
        );
        let r = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(query))
            .bind(filter.address.as_deref())
            .bind(filter.source.map(|s| s.as_str()))
            .bind(filter.after.as_deref())
            .bind(i64::from(filter.limit.clamp(1, MAX_SUPPRESSION_PAGE)))
            .fetch_all(&self.pool)
            .await;
        Ok(self
            .observe("listing suppressions", r)?
            .into_iter()
            .filter_map(from_row)
            .collect())
    }

    /// Which of these addresses are suppressed (one indexed query). Waits while the
    /// database is unreachable: deliver asks this before a send.
    pub async fn suppressed_among(
        &self,
        addresses: &[EmailAddress],
    ) -> Result<Vec<Suppression>, StoreError> {
        if addresses.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = addresses
            .iter()
            .map(|a| a.as_str().to_ascii_lowercase())
            .collect();
        let query = format!("SELECT {COLUMNS} FROM suppressions WHERE address = ANY($1)");
        let rows: Vec<Row> = self
            .durably("reading the suppression list", || {
                sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(query.clone()))
                    .bind(&keys)
                    .fetch_all(&self.pool)
            })
            .await?;
        Ok(rows.into_iter().filter_map(from_row).collect())
    }
}

/// The insert, on a pool or inside a transaction. `None`: nothing inserted or changed.
pub(super) async fn suppress_in<'e, E>(
    db: E,
    s: &NewSuppression,
) -> Result<Option<bool>, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query_scalar::<_, bool>(INSERT)
        .bind(s.address.as_str())
        .bind(s.source.as_str())
        .bind(bounded_reason(&s.reason))
        .bind(s.status.as_deref())
        .bind(s.job_id.as_deref())
        .bind(s.mailbox.as_deref())
        .bind(s.created_by.as_deref())
        .fetch_optional(db)
        .await
}

impl Store {
    /// Notes on the job the recipients deliver dropped because they are suppressed
    /// (`jobs.suppressed`), so its status shows them.
    pub async fn record_dropped_recipients(
        &self,
        job: &crate::domain::JobId,
        dropped: &[crate::contract::SuppressedRecipient],
    ) -> Result<(), StoreError> {
        let json = sqlx::types::Json(dropped);
        self.durably("noting suppressed recipients", || {
            sqlx::query("UPDATE jobs SET suppressed = $2 WHERE id = $1")
                .bind(job.as_str())
                .bind(json)
                .execute(&self.pool)
        })
        .await
        .map(|_| ())
    }
}
