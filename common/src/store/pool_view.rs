//! Read-only views of the pool for the operator's console: per mailbox, who holds its
//! lease and what its windows hold; per tenant, the external recipients its window
//! holds. Each is one query over indexed rows inside the windows (`sends_by_mailbox`,
//! `sends_by_tenant`), never the history.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};

/// One mailbox as the database sees it now.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MailboxView {
    pub mailbox: String,
    /// The deliver process holding its lease (a live lease only).
    pub owner: Option<Uuid>,
    /// That process's host.
    pub owner_host: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Sends the server may have counted in the message window.
    pub messages_in_window: i64,
    /// Their recipients, in the recipient window.
    pub recipients_in_window: i64,
    /// Sends decided and not ended yet (each holds a connection).
    pub open_sends: i64,
}

/// One tenant's external-recipient window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TenantView {
    pub tenant: String,
    /// External recipients the server may have counted in the window.
    pub external_used: i64,
    /// When the oldest of them leaves the window (room frees up then).
    pub next_room_at: Option<DateTime<Utc>>,
}

const MAILBOXES: &str = r#"
SELECT q.mailbox, l.owner, m.host, l.expires_at,
       (SELECT count(*) FROM sends s WHERE s.mailbox = q.mailbox
            AND s.started_at > now() - make_interval(secs => q.message_window)
            AND (s.outcome IS NULL OR s.outcome <> 'not_counted')),
       (SELECT coalesce(sum(s.recipients), 0)::int8 FROM sends s WHERE s.mailbox = q.mailbox
            AND s.started_at > now() - make_interval(secs => q.recipient_window)
            AND (s.outcome IS NULL OR s.outcome <> 'not_counted')),
       (SELECT count(*) FROM sends s WHERE s.mailbox = q.mailbox AND s.outcome IS NULL
            AND s.started_at > now() - make_interval(secs => q.recipient_window))
FROM unnest($1::text[], $2::float8[], $3::float8[]) AS q(mailbox, message_window, recipient_window)
LEFT JOIN mailbox_leases l ON l.mailbox = q.mailbox AND l.expires_at > now()
LEFT JOIN deliver_members m ON m.id = l.owner AND m.expires_at > now()
"#;

const TENANTS: &str = r#"
SELECT q.tenant, coalesce(sum(s.external_recipients), 0)::int8,
       min(coalesce(s.ended_at, s.deadline)) + make_interval(secs => min(q.window_secs))
FROM unnest($1::text[], $2::float8[]) AS q(tenant, window_secs)
LEFT JOIN sends s ON s.tenant = q.tenant AND s.external_recipients > 0
     AND s.started_at > now() - make_interval(secs => q.window_secs) - interval '1 hour'
     AND (s.outcome IS NULL OR s.outcome <> 'not_counted')
     AND coalesce(s.ended_at, s.deadline) > now() - make_interval(secs => q.window_secs)
GROUP BY q.tenant
"#;

type MailboxRow = (
    String,
    Option<Uuid>,
    Option<String>,
    Option<DateTime<Utc>>,
    i64,
    i64,
    i64,
);

impl Store {
    /// Each mailbox given as `(address, message window s, recipient window s)`, in order.
    pub async fn mailbox_views(
        &self,
        mailboxes: &[(String, f64, f64)],
    ) -> Result<Vec<MailboxView>, StoreError> {
        let names: Vec<&str> = mailboxes.iter().map(|m| m.0.as_str()).collect();
        let messages: Vec<f64> = mailboxes.iter().map(|m| m.1).collect();
        let recipients: Vec<f64> = mailboxes.iter().map(|m| m.2).collect();
        let r = sqlx::query_as::<_, MailboxRow>(MAILBOXES)
            .bind(&names)
            .bind(&messages)
            .bind(&recipients)
            .fetch_all(&self.pool)
            .await;
        Ok(self
            .observe("reading the pool's mailboxes", r)?
            .into_iter()
            .map(|(mailbox, owner, host, expires, m, r, open)| MailboxView {
                mailbox,
                owner: host.as_ref().and(owner),
                owner_host: host,
                lease_expires_at: expires,
                messages_in_window: m,
                recipients_in_window: r,
                open_sends: open,
            })
            .collect())
    }

    /// Each tenant given as `(id, external window s)`.
    pub async fn tenant_views(
        &self,
        tenants: &[(String, f64)],
    ) -> Result<Vec<TenantView>, StoreError> {
        let names: Vec<&str> = tenants.iter().map(|t| t.0.as_str()).collect();
        let windows: Vec<f64> = tenants.iter().map(|t| t.1).collect();
        let r = sqlx::query_as::<_, (String, i64, Option<DateTime<Utc>>)>(TENANTS)
            .bind(&names)
            .bind(&windows)
            .fetch_all(&self.pool)
            .await;
        Ok(self
            .observe("reading the tenants' budgets", r)?
            .into_iter()
            .map(|(tenant, external_used, next_room_at)| TenantView {
                tenant,
                external_used,
                next_room_at,
            })
            .collect())
    }
}
