//! `deliver.graph.sent_items_retention_days`: Sent Items older than that which mailpipe
//! itself sent and has on record are permanently deleted, so a pool mailbox never fills up
//! with copies of its invoices, and nothing else is ever touched.
//!
//! At each storage interval, per held mailbox: Sent Items listed oldest first (pages of
//! [`PAGE`], at most [`MAX_PAGES`]), up to the first message younger than the cutoff; of
//! those, the ones whose Message-ID a closed send of *this* mailbox carries
//! (`Store::sent_by`) are deleted with Graph's `permanentDelete` (a plain `DELETE` moves to
//! Deleted Items, which still counts against the quota). A message without a Message-ID,
//! or one not on record (a person's mail, or a send older than `database.retention_days`),
//! stays. At most [`MAX_DELETES`] per mailbox and interval: Graph's budget is shared with
//! the Inbox reader, and what is left goes at the next interval. An Exchange retention
//! policy on Sent Items (docs/microsoft365.md) does the same without mailpipe.

use chrono::{Duration, Utc};
use mailpipe_common::domain::EmailAddress;
use mailpipe_common::store::{Store, StoreError};

use crate::graph::{FolderId, GraphClient, GraphError, MessageSummary, Order};
use crate::metrics;

/// Sent Items listed per page.
pub const PAGE: u32 = 100;
/// Pages looked at per mailbox and interval.
pub const MAX_PAGES: usize = 10;
/// Deletions per mailbox and interval.
pub const MAX_DELETES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy)]
pub struct SentItemsRetention {
    days: u32,
}

impl SentItemsRetention {
    pub fn new(days: u32) -> Self {
        Self { days }
    }

    /// Deletes `mailbox`'s old Sent Items that are sends of ours; returns how many.
    pub async fn prune(
        &self,
        graph: &GraphClient,
        store: &Store,
        mailbox: &EmailAddress,
    ) -> Result<usize, RetentionError> {
        let cutoff = Utc::now() - Duration::days(i64::from(self.days));
        let mut page = graph
            .list_messages(mailbox, &FolderId::sent_items(), Order::OldestFirst, PAGE)
            .await?;
        let mut deleted = 0;
        for _ in 0..MAX_PAGES {
            let old: Vec<&MessageSummary> = page
                .messages
                .iter()
                .take_while(|m| m.received.is_some_and(|r| r < cutoff))
                .collect();
            let reached_young = old.len() < page.messages.len();
            let ids: Vec<String> = old
                .iter()
                .filter_map(|m| m.internet_message_id.clone())
                .collect();
            let ours = store.sent_by(mailbox, &ids).await?;
            for m in old {
                if deleted >= MAX_DELETES {
                    return Ok(deleted);
                }
                if m.internet_message_id
                    .as_ref()
                    .is_some_and(|id| ours.contains(id))
                {
                    match graph.permanent_delete(mailbox, &m.id).await {
                        Ok(()) => {
                            deleted += 1;
                            metrics::SENT_ITEMS_DELETED.inc();
                        }
                        // Gone meanwhile: nothing to do.
                        Err(e) if e.status() == Some(404) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if reached_young {
                break;
            }
            // Deleting shifts the pages after this one; what a shifted page skips goes at
            // the next interval.
            match page.next {
                Some(next) => page = graph.next_page(mailbox, &next).await?,
                None => break,
            }
        }
        Ok(deleted)
    }
}
