//! The Pool page: every configured mailbox with the process holding its lease, the hold
//! that process reports (paused or quarantined, why, for how long), and what its windows hold (messages, recipients, open sends: room left), and every tenant's
//! external-recipient budget used and left, with when room frees up.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use mailpipe_common::store::{MailboxHold, MailboxView, TenantView};
use serde::Serialize;

use super::ConsoleState;
use super::page::{self, Page};
use super::session::Session;

#[derive(Debug, Serialize)]
struct MailboxRow {
    view: MailboxView,
    tenant: String,
    /// `sending` (a live process holds it), `no owner`, or the hold its owner reports:
    /// `paused: rate`, `quarantined: auth`...
    state: String,
    /// Until when it is held back, when it is.
    held_for_seconds: Option<f64>,
    messages_limit: u64,
    messages_left: u64,
    recipients_limit: u64,
    recipients_left: u64,
    max_connections: u32,
}

#[derive(Debug, Serialize)]
struct TenantRow {
    view: TenantView,
    limit: u64,
    left: u64,
    /// Seconds until room frees up, when none is left.
    wait_seconds: Option<f64>,
}

fn left(limit: u64, used: i64) -> u64 {
    limit.saturating_sub(u64::try_from(used).unwrap_or(0))
}

fn wait(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<f64> {
    at.map(|t| (t - now).num_milliseconds().max(0) as f64 / 1000.0)
}

pub async fn page(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
) -> Response {
    let Some(pool) = state.pool.as_deref() else {
        return Page::new("pool", "Pool")
            .with("missing", "this ingest has no [deliver] section: add the pool's mailboxes to its configuration to see them here")
            .render(&session);
    };
    let secs = |ms: u64| ms as f64 / 1000.0;
    let asked: Vec<(String, f64, f64)> = pool
        .mailboxes
        .iter()
        .map(|m| {
            (
                m.address.as_str().to_owned(),
                secs(m.limits.message_window_ms),
                secs(m.limits.recipient_window_ms),
            )
        })
        .collect();
    let tenants: Vec<(String, f64)> = pool
        .tenants
        .iter()
        .map(|t| (t.id.clone(), secs(t.external_window_ms)))
        .collect();
    let store = state.api.records.store();
    let (views, budgets, holds) = match (
        store.mailbox_views(&asked).await,
        store.tenant_views(&tenants).await,
        store.mailbox_holds().await,
    ) {
        (Ok(v), Ok(b), Ok(h)) => (v, b, h),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return page::store_error(e),
    };
    let holds: HashMap<String, MailboxHold> = holds
        .into_iter()
        .map(|h| (h.mailbox.to_ascii_lowercase(), h))
        .collect();
    let now = Utc::now();
    let mut views: HashMap<String, MailboxView> =
        views.into_iter().map(|v| (v.mailbox.clone(), v)).collect();
    let mut budgets: HashMap<String, TenantView> =
        budgets.into_iter().map(|b| (b.tenant.clone(), b)).collect();
    let mailboxes: Vec<MailboxRow> = pool
        .mailboxes
        .iter()
        .filter_map(|m| Some((m, views.remove(m.address.as_str())?)))
        .map(|(m, view)| MailboxRow {
            tenant: m.tenant.clone(),
            state: match holds.get(&m.address.as_str().to_ascii_lowercase()) {
                Some(h) if view.owner.is_some() => format!("{}: {}", h.state, h.reason),
                _ if view.owner.is_some() => "sending".into(),
                _ => "no owner".into(),
            },
            held_for_seconds: holds
                .get(&m.address.as_str().to_ascii_lowercase())
                .filter(|_| view.owner.is_some())
                .and_then(|h| wait(Some(h.until), now)),
            messages_limit: m.limits.messages_per_window,
            messages_left: left(m.limits.messages_per_window, view.messages_in_window),
            recipients_limit: m.limits.recipients_per_window,
            recipients_left: left(m.limits.recipients_per_window, view.recipients_in_window),
            max_connections: m.limits.max_connections,
            view,
        })
        .collect();
    let tenants: Vec<TenantRow> = pool
        .tenants
        .iter()
        .filter_map(|t| Some((t, budgets.remove(&t.id)?)))
        .map(|(t, view)| {
            let limit = t.external_limit();
            let left = left(limit, view.external_used);
            TenantRow {
                limit,
                left,
                wait_seconds: if left == 0 {
                    wait(view.next_room_at, now)
                } else {
                    None
                },
                view,
            }
        })
        .collect();
    Page::new("pool", "Pool")
        .with("mailboxes", mailboxes)
        .with("tenants", tenants)
        .render(&session)
}
