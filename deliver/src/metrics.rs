//! deliver's metrics (docs/metrics.md lists them). Per-mailbox gauges are refreshed from
//! the pool once a second; counters and histograms are bumped where things happen.

use std::sync::LazyLock;
use std::time::Duration;

use mailpipe_common::pool::Transport;
use prometheus::{
    GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    register_gauge_vec, register_histogram, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
};

use crate::pool::MailboxPool;
use crate::throttle::MailboxState;

pub static SENDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_deliver_sends_total",
        "Send attempts by mailbox, transport (smtp, graph) and reply class",
        &["mailbox", "transport", "outcome"]
    )
    .expect("metric registers once")
});
/// Counts one send attempt of `mailbox` through `transport` ending in `outcome` (a reply
/// class, `accepted` or `uncertain`).
pub fn count_send(mailbox: &str, transport: Transport, outcome: &str) {
    SENDS
        .with_label_values(&[mailbox, transport.as_str(), outcome])
        .inc();
}

/// Records how long one send's exchange took through `transport`.
pub fn observe_send(transport: Transport, took: Duration) {
    SMTP_SECONDS
        .with_label_values(&[transport.as_str()])
        .observe(took.as_secs_f64());
}

pub static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_deliver_messages_total",
        "Messages handled, by outcome (delivered, retry, uncertain, held, dead, duplicate, returned, cancelled, paused, scheduled, expired, suppressed)",
        &["outcome"]
    )
    .expect("metric registers once")
});
pub static SEND_DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_deliver_send_decisions_total",
        "Write-ahead send decisions by verdict (written, tenant_full, in_flight, fenced, cancelled, paused, duplicate, accepted_before, uncertain, suppressed, expired)",
        &["verdict"]
    )
    .expect("metric registers once")
});
pub static SUPPRESSED_RECIPIENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "mailpipe_deliver_suppressed_recipients_total",
        "Recipients dropped from an envelope before the send because they are on the suppression list"
    )
    .expect("metric registers once")
});
pub static REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_deliver_provider_refusals_total",
        "Replies where the provider refused for speed, volume or the mailbox (should stay 0 for rate, quota, connections)",
        &["mailbox", "reason"]
    )
    .expect("metric registers once")
});
pub static REPLAYED_EVENTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "mailpipe_deliver_replayed_events",
        "Sends read back from the write-ahead record into this process's windows by its first lease round (readiness waits for its end)"
    )
    .expect("metric registers once")
});
pub static MAILBOXES_OWNED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "mailpipe_deliver_mailboxes_owned",
        "Pool mailboxes whose lease this process holds (it alone sends through them)"
    )
    .expect("metric registers once")
});
pub static PREFETCH: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "mailpipe_deliver_prefetch",
        "Prefetch of each deliver queue consumer: twice the connections of the mailboxes this process owns, at most deliver.prefetch"
    )
    .expect("metric registers once")
});
pub static DELIVER_MEMBERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "mailpipe_deliver_processes",
        "Live deliver processes sharing the pool, as this process last saw them"
    )
    .expect("metric registers once")
});
pub static GRAPH_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_deliver_graph_requests_total",
        "Microsoft Graph requests by operation and outcome (ok, throttled, unauthorized, not_found, conflict, client_error, server_error, redirected, too_large, transport)",
        &["operation", "outcome"]
    )
    .expect("metric registers once")
});
pub static GRAPH_THROTTLED_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "mailpipe_deliver_graph_throttled_wait_seconds",
        "Time a Graph request waited for its mailbox's Retry-After instant before going out (0 when not throttled)",
        vec![0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0]
    )
    .expect("metric registers once")
});
pub static UNCERTAIN_SETTLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_deliver_uncertain_settled_total",
        "Uncertain sends settled from the sending mailbox's Sent Items (found_in_sent_items: recorded delivered; resent: absent after the grace, sent again)",
        &["how"]
    )
    .expect("metric registers once")
});
pub static BOUNCE_REPORTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_deliver_bounce_reports_total",
        "Non-delivery reports read from the pool's Inboxes (bounced: recorded on its job, moved to the bounce folder; untrusted: not bound to a send of ours or naming someone it may not, changed nothing, moved to the untrusted folder; already_handled: recorded before, only moved now)",
        &["outcome"]
    )
    .expect("metric registers once")
});
pub static INBOX_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_deliver_inbox_messages_total",
        "Messages the Inbox reader looked at and moved out of a pool mailbox's Inbox (report: a non-delivery report, see mailpipe_deliver_bounce_reports_total; other: auto-replies, delay notices, customers' mail, moved to the other folder; too_large: over deliver.graph.max_message_bytes, fetched once, recorded and moved to the other folder; failed: Graph refused this one message, tried again next round)",
        &["outcome"]
    )
    .expect("metric registers once")
});
pub static SENT_ITEMS_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "mailpipe_deliver_mailbox_sent_items_bytes",
        "Size of the mailbox's Sent Items folder in bytes, as Graph last gave it (read every deliver.graph.storage_interval_ms); SMTP AUTH saves every message sent there",
        &["mailbox"]
    )
    .expect("metric registers once")
});
pub static SENT_ITEMS_DELETED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "mailpipe_deliver_sent_items_deleted_total",
        "Sent Items permanently deleted by deliver.graph.sent_items_retention_days: older than that, and sends of ours on record"
    )
    .expect("metric registers once")
});
pub static SENT_ITEMS_MESSAGES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "mailpipe_deliver_mailbox_sent_items_messages",
        "Messages in the mailbox's Sent Items folder, as Graph last gave it",
        &["mailbox"]
    )
    .expect("metric registers once")
});
/// One send's exchange by transport; the name predates the Graph transport and is kept so
/// dashboards and alerts keep working (docs/metrics.md).
pub static SMTP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "mailpipe_deliver_smtp_duration_seconds",
        "Duration of one send's exchange by transport: SMTP (session setup when needed, MAIL, RCPT, DATA) or Graph (draft, attachments, send)",
        &["transport"],
        vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
    )
    .expect("metric registers once")
});
pub static WAIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "mailpipe_deliver_mailbox_wait_seconds",
        "Time a message waited for a mailbox with room in its limits",
        vec![
            0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 3600.0
        ]
    )
    .expect("metric registers once")
});
static MESSAGES_LEFT: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "mailpipe_deliver_mailbox_messages_left",
        "Messages the mailbox may still start in its current window",
        &["mailbox"]
    )
    .expect("metric registers once")
});
static MESSAGES_LIMIT: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "mailpipe_deliver_mailbox_messages_limit",
        "Messages per window the mailbox may send",
        &["mailbox"]
    )
    .expect("metric registers once")
});
static RECIPIENTS_LEFT: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "mailpipe_deliver_mailbox_recipients_left",
        "Recipients left in the mailbox's (24 h) recipient window",
        &["mailbox"]
    )
    .expect("metric registers once")
});
static RECIPIENTS_LIMIT: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "mailpipe_deliver_mailbox_recipients_limit",
        "Recipients per window the mailbox may send",
        &["mailbox"]
    )
    .expect("metric registers once")
});
static CONNECTIONS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "mailpipe_deliver_mailbox_connections",
        "Sends in flight (SMTP connections in use)",
        &["mailbox"]
    )
    .expect("metric registers once")
});
static STATE: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "mailpipe_deliver_mailbox_state",
        "1 for the mailbox's current state (active, paused, quarantined)",
        &["mailbox", "state"]
    )
    .expect("metric registers once")
});
static TOKEN_EXPIRY: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "mailpipe_deliver_oauth_token_seconds_to_expiry",
        "Seconds until the cached OAuth token expires",
        &["tenant"]
    )
    .expect("metric registers once")
});

static TENANT_READY: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "mailpipe_deliver_tenant_mailboxes_ready",
        "Mailboxes of the tenant that are active with recipients left in their window",
        &["tenant"]
    )
    .expect("metric registers once")
});

static TENANT_EXTERNAL_LEFT: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "mailpipe_deliver_tenant_external_recipients_left",
        "External recipients the tenant's window has room for now (this process's view: its own sends and the ones it imported from the others)",
        &["tenant"]
    )
    .expect("metric registers once")
});

static TENANT_EXTERNAL_LIMIT: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "mailpipe_deliver_tenant_external_recipients_limit",
        "The tenant's external-recipient limit per window",
        &["tenant"]
    )
    .expect("metric registers once")
});

static TENANT_ROOM_IN: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "mailpipe_deliver_tenant_external_room_in_seconds",
        "Seconds until the tenant's window has room for one more external recipient (0: now)",
        &["tenant"]
    )
    .expect("metric registers once")
});

static TENANT_BLOCKED: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "mailpipe_deliver_tenant_blocked_reason",
        "1 for what keeps the tenant's mailboxes from sending now (none, tenant_external_budget, mailboxes_held, mailbox_quota), 0 for the others",
        &["tenant", "reason"]
    )
    .expect("metric registers once")
});

/// What keeps a tenant's mailboxes from sending now, as `mailpipe_deliver_tenant_blocked_reason`
/// names it.
pub const BLOCKED_REASONS: [&str; 4] = [
    "none",
    "tenant_external_budget",
    "mailboxes_held",
    "mailbox_quota",
];

/// The reason last reported per tenant: a change is logged once, not every second.
static LAST_BLOCKED: LazyLock<std::sync::Mutex<std::collections::HashMap<String, &'static str>>> =
    LazyLock::new(Default::default);

/// Forces registration so every metric shows on /metrics from the start.
pub fn register() {
    // Outcome series exist from the start, so rate() and absence-based alerts see zeros.
    for outcome in [
        "delivered",
        "retry",
        "uncertain",
        "held",
        "dead",
        "duplicate",
        "returned",
        "elsewhere",
        "suppressed",
    ] {
        MESSAGES.with_label_values(&[outcome]);
    }
    for transport in [Transport::Smtp, Transport::Graph] {
        SMTP_SECONDS.with_label_values(&[transport.as_str()]);
    }
    let _ = (
        &*SENDS,
        &*MESSAGES,
        &*SUPPRESSED_RECIPIENTS,
        &*REFUSALS,
        &*WAIT_SECONDS,
        &*MESSAGES_LEFT,
        &*MESSAGES_LIMIT,
    );
    let _ = (
        &*RECIPIENTS_LEFT,
        &*RECIPIENTS_LIMIT,
        &*CONNECTIONS,
        &*STATE,
        &*TOKEN_EXPIRY,
        &*REPLAYED_EVENTS,
        &*TENANT_READY,
    );
    let _ = (
        &*MAILBOXES_OWNED,
        &*DELIVER_MEMBERS,
        &*GRAPH_THROTTLED_WAIT,
        &*PREFETCH,
    );
    let _ = &*SENT_ITEMS_DELETED;
    let _ = (
        &*TENANT_EXTERNAL_LEFT,
        &*TENANT_EXTERNAL_LIMIT,
        &*TENANT_ROOM_IN,
        &*TENANT_BLOCKED,
    );
    // Graph's success and throttling series too, at 0 while Graph is unused.
    for outcome in ["bounced", "untrusted", "already_handled"] {
        BOUNCE_REPORTS.with_label_values(&[outcome]);
    }
    for outcome in ["report", "other", "too_large", "failed"] {
        INBOX_MESSAGES.with_label_values(&[outcome]);
    }
    for how in ["found_in_sent_items", "resent"] {
        UNCERTAIN_SETTLED.with_label_values(&[how]);
    }
    for operation in crate::graph::client::OPERATIONS {
        for outcome in ["ok", "throttled"] {
            GRAPH_REQUESTS.with_label_values(&[operation, outcome]);
        }
    }
}

/// Copies the pool's state into the gauges.
pub fn refresh(pool: &MailboxPool) {
    let mut tenants_seen = std::collections::HashSet::new();
    // Alerts tell a pool that waits on purpose (quota spent, mailboxes held) from a stuck one.
    // Per tenant: (its index, mailboxes active, active ones with recipients left (ready),
    // active ones with room for a message and a recipient).
    let mut sending: std::collections::BTreeMap<&str, (usize, u32, u32, u32)> =
        std::collections::BTreeMap::new();
    for (idx, m) in pool.mailboxes().iter().enumerate() {
        let mbx = m.address.as_str();
        if let Some((snap, state, limits)) = pool
            .snapshot(idx)
            .and_then(|(s, st)| pool.limits(idx).map(|l| (s, st, l)))
        {
            MESSAGES_LEFT
                .with_label_values(&[mbx])
                .set(snap.messages_left as f64);
            RECIPIENTS_LEFT
                .with_label_values(&[mbx])
                .set(snap.recipients_left as f64);
            MESSAGES_LIMIT
                .with_label_values(&[mbx])
                .set(limits.messages as f64);
            RECIPIENTS_LIMIT
                .with_label_values(&[mbx])
                .set(limits.recipients as f64);
            CONNECTIONS
                .with_label_values(&[mbx])
                .set(f64::from(snap.connections_in_use));
            let active = matches!(state, MailboxState::Active);
            let ready = active && snap.recipients_left >= 1;
            let with_room = ready && snap.messages_left >= 1;
            let s = sending
                .entry(m.tenant_id.as_str())
                .or_insert((m.tenant, 0, 0, 0));
            s.1 += u32::from(active);
            s.2 += u32::from(ready);
            s.3 += u32::from(with_room);
            let current = match state {
                MailboxState::Active => "active",
                MailboxState::Paused { .. } => "paused",
                MailboxState::Quarantined { .. } => "quarantined",
            };
            for s in ["active", "paused", "quarantined"] {
                STATE
                    .with_label_values(&[mbx, s])
                    .set(if s == current { 1.0 } else { 0.0 });
            }
        }
        if tenants_seen.insert(m.tenant)
            && let Some(secs) = pool.token_seconds_to_expiry(m.tenant)
        {
            TOKEN_EXPIRY
                .with_label_values(&[m.tenant_id.as_str()])
                .set(secs);
        }
    }
    for (tenant, (idx, active, ready, with_room)) in sending {
        TENANT_READY
            .with_label_values(&[tenant])
            .set(f64::from(ready));
        let room = pool.tenant_room(idx);
        if let Some((left, limit, room_in)) = room {
            TENANT_EXTERNAL_LEFT
                .with_label_values(&[tenant])
                .set(left as f64);
            TENANT_EXTERNAL_LIMIT
                .with_label_values(&[tenant])
                .set(limit as f64);
            TENANT_ROOM_IN
                .with_label_values(&[tenant])
                .set(room_in.unwrap_or(-1.0));
        }
        let reason = blocked_reason(room.map(|(left, _, _)| left), active, with_room);
        for r in BLOCKED_REASONS {
            TENANT_BLOCKED
                .with_label_values(&[tenant, r])
                .set(if r == reason { 1.0 } else { 0.0 });
        }
        let mut last = LAST_BLOCKED.lock().unwrap_or_else(|e| e.into_inner());
        if last
            .insert(tenant.to_owned(), reason)
            .is_none_or(|before| before != reason)
        {
            match (reason, room) {
                ("none", _) => tracing::info!(tenant, "the tenant's mailboxes can send"),
                ("tenant_external_budget", Some((_, limit, room_in))) => tracing::warn!(
                    tenant,
                    limit,
                    room_in_seconds = room_in.unwrap_or(-1.0),
                    "the tenant's external-recipient budget is spent: nothing with external recipients is sent until the window frees room"
                ),
                _ => tracing::warn!(tenant, reason, "the tenant's mailboxes cannot send now"),
            }
        }
    }
}

/// Why a tenant sends nothing now (`none` when it can): its external budget is spent
/// (`left` = 0), every mailbox is held, or every active mailbox's own window is full.
pub fn blocked_reason(left: Option<u64>, active: u32, with_room: u32) -> &'static str {
    if left == Some(0) {
        "tenant_external_budget"
    } else if active == 0 {
        "mailboxes_held"
    } else if with_room == 0 {
        "mailbox_quota"
    } else {
        "none"
    }
}

/// Refreshes the gauges every second until `shutdown`.
pub async fn refresh_loop(
    pool: std::sync::Arc<MailboxPool>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => refresh(&pool),
        }
    }
}
