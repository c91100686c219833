//! Settling uncertain sends from the sending mailbox's Sent Items.
//!
//! A send with no reply after its data (or whose process died mid-send) may or may not
//! have been accepted. Exchange files every message it accepts in the mailbox's Sent Items,
//! so the Message-ID there answers it: found → the job was delivered, never send it again;
//! still absent once the grace (`deliver.uncertain_hold_ms`, Exchange's 10-minute
//! server-side session limit, past which it cannot still accept it) has passed → send it
//! again, once. This is what makes a crash after the data neither a lost nor a duplicate
//! invoice. Without Graph, `deliver.uncertain_policy` decides (docs/deliver.md).

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use mailpipe_common::domain::{EmailAddress, JobId};
use mailpipe_common::store::{Resolution, Store, StoreError, UncertainSend};

use crate::graph::{GraphClient, GraphError};
use crate::metrics;

/// Uncertain sends looked at per round (oldest first); more wait for the next round.
const PER_ROUND: i64 = 200;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Graph(#[from] GraphError),
}

#[derive(Debug)]
pub struct SentItemsLookup {
    grace: Duration,
}

impl SentItemsLookup {
    pub fn new(grace: Duration) -> Self {
        Self { grace }
    }

    /// Looks up the uncertain sends of `held` (the mailboxes this process holds) in their
    /// Sent Items and settles those it can.
    pub async fn settle(
        &self,
        graph: &GraphClient,
        store: &Store,
        held: &[EmailAddress],
    ) -> Result<(), LookupError> {
        let by_key: HashMap<String, &EmailAddress> = held
            .iter()
            .map(|m| (m.as_str().to_ascii_lowercase(), m))
            .collect();
        for send in store.uncertain_sends(PER_ROUND).await? {
            let Some(mailbox) = by_key.get(&send.mailbox.to_ascii_lowercase()) else {
                continue;
            };
            if let Err(e) = self.settle_one(graph, store, mailbox, &send).await {
                tracing::warn!(job = %send.job_id, mailbox = %mailbox, error = %e, "could not look up an uncertain send");
            }
        }
        Ok(())
    }

    async fn settle_one(
        &self,
        graph: &GraphClient,
        store: &Store,
        mailbox: &EmailAddress,
        send: &UncertainSend,
    ) -> Result<(), LookupError> {
        let Ok(job) = JobId::parse(&send.job_id) else {
            return Ok(());
        };
        let found = graph.find_sent(mailbox, &send.message_id).await?;
        let (resolution, why, how) = match found {
            Some(_) => (
                Resolution::MarkedSent,
                format!("found in the Sent Items of {mailbox} after an uncertain send"),
                "found_in_sent_items",
            ),
            None => {
                let since = send.ended_at.unwrap_or(send.started_at);
                let grace = chrono::Duration::from_std(self.grace).unwrap_or_default();
                if since + grace > Utc::now() {
                    return Ok(());
                }
                (
                    Resolution::Resend,
                    format!(
                        "not in the Sent Items of {mailbox} {}s after an uncertain send: sent again",
                        self.grace.as_secs()
                    ),
                    "resent",
                )
            }
        };
        if store
            .settle_uncertain(&job, resolution, &why, Some(mailbox.clone()))
            .await?
        {
            tracing::info!(job = %job, mailbox = %mailbox, message_id = %send.message_id, "{why}");
            metrics::UNCERTAIN_SETTLED.with_label_values(&[how]).inc();
        }
        Ok(())
    }
}
