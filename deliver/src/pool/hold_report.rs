//! Reports this process's held-back mailboxes to the system of record: every second, the
//! mailboxes it owns whose hold changed (held, lifted, held for another reason or longer)
//! in one statement, nothing when nothing changed. The console's pool page shows them
//! with their reason, and the ETA leaves them out of the pool's capacity.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailpipe_common::store::{MailboxHold, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::MailboxPool;
use crate::throttle::MailboxState;

/// How often holds are compared with what was reported.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Reports holds until `stop`; then says every hold it reported is over (this process no
/// longer answers for those mailboxes).
pub async fn run(pool: Arc<MailboxPool>, store: Store, owner: Uuid, stop: CancellationToken) {
    let mut reported: HashMap<String, MailboxHold> = HashMap::new();
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = current(&pool);
        let held: Vec<MailboxHold> = now
            .values()
            .filter(|h| reported.get(&h.mailbox) != Some(*h))
            .cloned()
            .collect();
        let lifted: Vec<String> = reported
            .keys()
            .filter(|m| !now.contains_key(*m))
            .cloned()
            .collect();
        match store.report_mailbox_holds(owner, &held, &lifted).await {
            Ok(()) => reported = now,
            // Reported again next tick.
            Err(e) => tracing::debug!(error = %e, "reporting held mailboxes failed"),
        }
    }
    let lifted: Vec<String> = reported.into_keys().collect();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        store.report_mailbox_holds(owner, &[], &lifted),
    )
    .await;
}

/// The holds of the mailboxes this process owns now.
fn current(pool: &MailboxPool) -> HashMap<String, MailboxHold> {
    pool.held()
        .into_iter()
        .filter_map(|idx| {
            let (state, reason) = pool.hold_of(idx)?;
            // A mailbox never held for a problem is only probing (its first send after
            // start goes alone): it is sending, not held.
            if reason.is_empty() {
                return None;
            }
            let (label, until) = match state {
                MailboxState::Active => return None,
                MailboxState::Paused { until } => ("paused", until),
                MailboxState::Quarantined { until } => ("quarantined", until),
            };
            let mailbox = pool.mailbox_key(idx);
            Some((
                mailbox.clone(),
                MailboxHold {
                    mailbox,
                    state: label.into(),
                    reason: reason.into(),
                    until: DateTime::<Utc>::from(until.to_system_time()),
                },
            ))
        })
        .collect()
}
