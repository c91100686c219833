//! What the pool's mailboxes learn after a send, read through Microsoft Graph: whether an
//! uncertain send is in the mailbox's Sent Items ([`sent_items`]), the non-delivery
//! reports that land in its Inbox among everything else ([`inbox`]), how much its Sent
//! Items hold ([`storage`]), and, when configured, its old Sent Items of ours deleted
//! ([`retention`]).
//!
//! A task of deliver rather than a fourth binary: it needs the pool's app registration and
//! its tokens, and the mailbox leases already say which process looks after which mailbox.
//! So each process reads exactly the mailboxes it sends through, and no mailbox is read
//! twice. It runs beside the sends and never holds them up: Graph has its own throttling
//! (per-mailbox concurrency, `Retry-After`) in [`crate::graph`], and a round that fails is
//! tried again at the next.

pub mod inbox;
pub mod retention;
pub mod sent_items;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use mailpipe_common::domain::EmailAddress;
use mailpipe_common::store::Store;
use tokio_util::sync::CancellationToken;

use crate::graph::GraphClient;
use crate::pool::MailboxPool;
use crate::settings::DeliverSettings;

/// The Graph-side work of one deliver process, over the mailboxes it holds.
#[derive(Debug)]
pub struct MailboxFeedback {
    graph: Arc<GraphClient>,
    pool: Arc<MailboxPool>,
    store: Store,
    poll: Duration,
    sent_items: sent_items::SentItemsLookup,
    inbox: inbox::InboxReader,
    storage: storage::StorageWatch,
    retention: Option<retention::SentItemsRetention>,
}

impl MailboxFeedback {
    /// `None` when `[deliver.graph]` is not enabled.
    pub fn new(
        settings: &DeliverSettings,
        graph: Option<Arc<GraphClient>>,
        pool: Arc<MailboxPool>,
        store: Store,
    ) -> Option<Self> {
        let graph = graph?;
        Some(Self {
            sent_items: sent_items::SentItemsLookup::new(settings.uncertain_hold()),
            inbox: inbox::InboxReader::new(&settings.graph),
            storage: storage::StorageWatch::new(settings.graph.storage_interval()),
            retention: settings
                .graph
                .sent_items_retention_days
                .map(retention::SentItemsRetention::new),
            poll: settings.graph.poll_interval(),
            graph,
            pool,
            store,
        })
    }

    /// Rounds until `stop`: one now, then one every `poll_interval_ms`.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            self.round().await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// One pass over the mailboxes this process holds that Graph can read.
    pub async fn round(&mut self) {
        let held: Vec<EmailAddress> = self
            .pool
            .held()
            .into_iter()
            .map(|idx| self.pool.mailbox_address(idx).clone())
            .filter(|m| self.graph.check_mailbox(m).is_ok())
            .collect();
        self.storage.forget_others(&held);
        if held.is_empty() {
            // Not yet holding any (start-up): the storage interval starts with the first.
            return;
        }
        if self.storage.due() {
            if let Some(retention) = self.retention {
                for mailbox in &held {
                    match retention.prune(&self.graph, &self.store, mailbox).await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(mailbox = %mailbox, deleted = n, "old Sent Items of ours deleted (deliver.graph.sent_items_retention_days)");
                        }
                        Err(e) => {
                            tracing::warn!(mailbox = %mailbox, error = %e, "deleting old Sent Items failed; trying again at the next storage interval");
                        }
                    }
                }
            }
            self.storage.read(&self.graph, &held).await;
        }
        for mailbox in &held {
            match self.inbox.read(&self.graph, &self.store, mailbox).await {
                Ok(round) if round.picked > 0 => {
                    tracing::debug!(mailbox = %mailbox, ?round, "Inbox round");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(mailbox = %mailbox, error = %e, "reading the Inbox failed; trying again next round");
                }
            }
        }
        if let Err(e) = self
            .sent_items
            .settle(&self.graph, &self.store, &held)
            .await
        {
            tracing::warn!(error = %e, "looking up uncertain sends failed; trying again next round");
        }
    }
}
