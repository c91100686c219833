//! What Exchange does with a message after it accepted it: files it in the sender's Sent
//! Items at once (before the `250` reaches the client), and, for recipients configured to
//! bounce, files an NDR into the sender's Inbox some time later.

use std::sync::Arc;
use std::time::Duration;

use crate::mail_store::WellKnown;
use crate::ndr::{FailedRecipient, exchange_ndr};
use crate::state::Shared;

/// Files an accepted message of `mailbox` and schedules its bounces.
pub(crate) fn file_accepted(shared: &Arc<Shared>, mailbox: &str, rcpts: &[String], raw: &[u8]) {
    shared
        .mail
        .file(mailbox, WellKnown::SentItems, raw.to_vec());
    // One NDR per delay: recipients bouncing after the same time are reported together,
    // as Exchange reports the recipients one attempt failed for.
    let mut by_delay: Vec<(u64, Vec<FailedRecipient>)> = Vec::new();
    for rcpt in rcpts {
        let Some(rule) = shared.config.bounces.iter().find(|b| b.matches(rcpt)) else {
            continue;
        };
        let failed = FailedRecipient {
            address: rcpt.clone(),
            status: rule.status.clone(),
            diagnostic: rule.diagnostic_text(),
        };
        match by_delay.iter_mut().find(|(d, _)| *d == rule.delay_ms) {
            Some((_, list)) => list.push(failed),
            None => by_delay.push((rule.delay_ms, vec![failed])),
        }
    }
    let arrived = chrono::Utc::now();
    for (delay_ms, failed) in by_delay {
        let shared = Arc::clone(shared);
        let mailbox = mailbox.to_owned();
        let raw = raw.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let ndr = exchange_ndr(
                shared.hostname(),
                &shared.postmaster_of(&mailbox),
                &mailbox,
                &raw,
                &failed,
                arrived,
            );
            shared.mail.file(&mailbox, WellKnown::Inbox, ndr);
            tracing::debug!(%mailbox, recipients = failed.len(), "NDR filed into the Inbox");
        });
    }
}
