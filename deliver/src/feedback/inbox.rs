//! Non-delivery reports in the pool's mailboxes: read, recorded, moved out of the way.
//!
//! A 250 after the data means Exchange took the message, not that the customer got it. The
//! reports of what happened later (unknown recipient, full mailbox, refusing domain) land
//! in the sending mailbox's Inbox, where nobody reads them. Each round lists the Inbox
//! (summaries only, oldest first), fetches the MIME of messages not looked at before,
//! and hands it to [`crate::bounce::parse`]:
//!
//! - a bounce is recorded (`Store::record_bounce`), which decides whether it is trusted
//!   (docs/deliver.md, "Which reports are trusted"): bound to a send of this mailbox, the
//!   job ends `bounced` with the status and diagnostic, dead addresses go on the
//!   suppression list, and the report is moved to `deliver.graph.bounce_folder`; refused,
//!   nothing changes, and it is moved to `deliver.graph.untrusted_folder` for a person
//!   (counted `untrusted`, never deleted). The record comes first and is keyed by the
//!   report's own Message-ID (a moved message gets a new Graph id), so a crash between the
//!   two, or a restart, records nothing twice: the report is found handled and only moved
//!   (to the folder its first handling chose);
//! - anything else (auto-replies, read receipts, delay notices, customers' answers) is left
//!   where it is, and remembered so that its MIME is not fetched again every round.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use mailpipe_common::domain::EmailAddress;
use mailpipe_common::store::{BounceError, Store};

use crate::bounce::{self, Report};
use crate::graph::{FolderId, GraphClient, GraphError, GraphSettings, Order};
use crate::metrics;

/// Inbox messages listed per mailbox and round (summaries; the MIME only of new ones).
const LISTED_PER_ROUND: usize = 1000;
/// Messages remembered as left alone, per process; forgotten all at once past it (they
/// are then fetched once more, which changes nothing).
const LEFT_ALONE_MAX: usize = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Record(#[from] BounceError),
}

#[derive(Debug)]
pub struct InboxReader {
    bounce_folder: String,
    untrusted_folder: String,
    /// Folder ids per (mailbox, folder name), once found or created.
    folders: HashMap<(String, String), FolderId>,
    /// Graph ids of Inbox messages that are not bounces.
    left_alone: HashSet<String>,
}

impl InboxReader {
    pub fn new(settings: &GraphSettings) -> Self {
        Self {
            bounce_folder: settings.bounce_folder.clone(),
            untrusted_folder: settings.untrusted_folder.clone(),
            folders: HashMap::new(),
            left_alone: HashSet::new(),
        }
    }

    /// One pass over `mailbox`'s Inbox.
    pub async fn read(
        &mut self,
        graph: &GraphClient,
        store: &Store,
        mailbox: &EmailAddress,
    ) -> Result<(), InboxError> {
        let listed = graph
            .list_all(
                mailbox,
                &FolderId::inbox(),
                Order::OldestFirst,
                LISTED_PER_ROUND,
            )
            .await?;
        for message in listed {
            if self.left_alone.contains(&message.id) {
                continue;
            }
            let mime = graph.message_mime(mailbox, &message.id).await?;
            let mut bounce = match bounce::parse(&mime) {
                Report::Bounce(bounce) => bounce,
                Report::Delayed(_) | Report::NotAReport(_) => {
                    if self.left_alone.len() >= LEFT_ALONE_MAX {
                        self.left_alone.clear();
                    }
                    self.left_alone.insert(message.id);
                    continue;
                }
            };
            bounce::origin::confirm_for_mailbox(&mut bounce, mailbox);
            let key = message
                .internet_message_id
                .clone()
                .unwrap_or_else(|| message.id.clone());
            let record = store
                .record_bounce(mailbox, &key, &bounce, Utc::now())
                .await?;
            let outcome = match (&record.job, record.newly, &record.untrusted) {
                (_, false, _) => "already_handled",
                (_, true, Some(why)) => {
                    tracing::warn!(
                        mailbox = %mailbox, report = %key, origin = ?bounce.provenance.origin,
                        from = ?bounce.provenance.from.as_ref().map(|a| a.as_str()),
                        "untrusted report: {why}; moved aside for a person, nothing changed"
                    );
                    "untrusted"
                }
                (Some(job), true, None) => {
                    tracing::info!(
                        mailbox = %mailbox, job = %job, suppressed = record.suppressed.len(),
                        "non-delivery report recorded"
                    );
                    "bounced"
                }
                // It named no permanent failure: nothing to record, moved with the bounces.
                (None, true, None) => "bounced",
            };
            metrics::BOUNCE_REPORTS.with_label_values(&[outcome]).inc();
            let name = if record.untrusted.is_some() {
                self.untrusted_folder.clone()
            } else {
                self.bounce_folder.clone()
            };
            let folder = self.folder(graph, mailbox, &name).await?;
            graph.move_message(mailbox, &message.id, &folder).await?;
        }
        Ok(())
    }

    async fn folder(
        &mut self,
        graph: &GraphClient,
        mailbox: &EmailAddress,
        name: &str,
    ) -> Result<FolderId, GraphError> {
        let key = (mailbox.as_str().to_ascii_lowercase(), name.to_owned());
        if let Some(id) = self.folders.get(&key) {
            return Ok(id.clone());
        }
        let id = graph.ensure_folder(mailbox, name).await?;
        self.folders.insert(key, id.clone());
        Ok(id)
    }
}
