//! Mailbox storage watched: each held mailbox's Sent Items size and count, read through
//! Graph every `deliver.graph.storage_interval_ms` into the gauges
//! `mailpipe_deliver_mailbox_sent_items_bytes` and `..._messages`.
//!
//! SMTP AUTH saves a copy of every message sent in the mailbox's Sent Items, so a busy pool
//! mailbox grows by what it sends (10,000 invoices a day with a 70 KB PDF: ~0.7 GB a day)
//! until it reaches its storage quota, and then Exchange refuses every submission (`554
//! 5.2.2 … QuotaExceeded`, a mailbox-level refusal: the mailbox is held, docs/deliver.md).
//! The gauges let an alert fire weeks before (deploy/prometheus/alerts.yml), and the remedy
//! is a retention policy on Sent Items (docs/microsoft365.md, "Sent Items").
//!
//! Sent Items rather than the whole mailbox: Graph gives a folder's size, not a
//! mailbox's (the tenant usage report is two days late and needs `Reports.Read.All`), and
//! in a pool mailbox Sent Items is where the growth is. A mailbox this process no longer
//! holds loses its series here (its new owner reports it), so two processes never report
//! one mailbox.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mailpipe_common::domain::EmailAddress;

use crate::graph::{FolderId, GraphClient};
use crate::metrics;

#[derive(Debug)]
pub struct StorageWatch {
    interval: Duration,
    last: Option<Instant>,
    /// Mailboxes whose series this process exports (lower case).
    reported: BTreeSet<String>,
}

impl StorageWatch {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            reported: BTreeSet::new(),
        }
    }

    /// Whether the interval has passed since the last read (true the first time): then
    /// the caller reads now.
    pub fn due(&mut self) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < self.interval) {
            return false;
        }
        self.last = Some(Instant::now());
        true
    }

    /// Drops the series of mailboxes no longer held.
    pub fn forget_others(&mut self, held: &[EmailAddress]) {
        let keys: BTreeSet<String> = held
            .iter()
            .map(|m| m.as_str().to_ascii_lowercase())
            .collect();
        for gone in self.reported.difference(&keys) {
            let _ = metrics::SENT_ITEMS_BYTES.remove_label_values(&[gone]);
            let _ = metrics::SENT_ITEMS_MESSAGES.remove_label_values(&[gone]);
        }
        self.reported.retain(|m| keys.contains(m));
    }

    /// Reads the held mailboxes' Sent Items into the gauges.
    pub async fn read(&mut self, graph: &GraphClient, held: &[EmailAddress]) {
        for mailbox in held {
            let key = mailbox.as_str().to_ascii_lowercase();
            match graph.folder_usage(mailbox, &FolderId::sent_items()).await {
                Ok(usage) => {
                    metrics::SENT_ITEMS_MESSAGES
                        .with_label_values(&[&key])
                        .set(i64::try_from(usage.total_item_count).unwrap_or(i64::MAX));
                    match usage.size_in_bytes {
                        Some(bytes) => metrics::SENT_ITEMS_BYTES
                            .with_label_values(&[&key])
                            .set(i64::try_from(bytes).unwrap_or(i64::MAX)),
                        None => {
                            tracing::debug!(mailbox = %mailbox, "Graph gave no sizeInBytes for Sent Items; only the count is watched")
                        }
                    }
                    self.reported.insert(key);
                }
                Err(e) => {
                    tracing::warn!(mailbox = %mailbox, error = %e, "reading the Sent Items size failed; trying again at the next storage interval");
                }
            }
        }
    }
}
