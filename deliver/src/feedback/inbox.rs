//! Non-delivery reports in the pool's mailboxes: read, recorded, moved out of the way.
//!
//! A 250 after the data means Exchange took the message, not that the customer got it. The
//! reports of what happened later (unknown recipient, full mailbox, refusing domain) land
//! in the sending mailbox's Inbox, where nobody reads them. Each round lists the Inbox
//! (summaries only, oldest first), fetches the MIME of messages not looked at before,
//! and hands it to [`crate::bounce::parse`]:
//!
//! - a bounce is recorded (`Store::record_bounce`: the job ends `bounced` with the status
//!   and diagnostic, dead addresses go on the suppression list), then moved to
//!   `deliver.graph.bounce_folder`. The record comes first and is keyed by the report's own
//!   Message-ID (a moved message gets a new Graph id), so a crash between the two, or a
//!   restart, records nothing twice: the report is found handled and only moved;
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
    folder_name: String,
    /// The bounce folder's id per mailbox, once found or created.
    folders: HashMap<String, FolderId>,
    /// Graph ids of Inbox messages that are not bounces.
    left_alone: HashSet<String>,
}

impl InboxReader {
    pub fn new(settings: &GraphSettings) -> Self {
        Self {
            folder_name: settings.bounce_folder.clone(),
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
            let bounce = match bounce::parse(&mime) {
                Report::Bounce(bounce) => bounce,
                Report::Delayed(_) | Report::NotAReport(_) => {
                    if self.left_alone.len() >= LEFT_ALONE_MAX {
                        self.left_alone.clear();
                    }
                    self.left_alone.insert(message.id);
                    continue;
                }
            };
            let key = message
                .internet_message_id
                .clone()
                .unwrap_or_else(|| message.id.clone());
            let record = store
                .record_bounce(mailbox, &key, &bounce, Utc::now())
                .await?;
            let outcome = match (&record.job, record.newly) {
                (_, false) => "already_handled",
                (Some(job), true) => {
                    tracing::info!(
                        mailbox = %mailbox, job = %job, suppressed = record.suppressed.len(),
                        "non-delivery report recorded"
                    );
                    "bounced"
                }
                (None, true) => {
                    tracing::info!(mailbox = %mailbox, report = %key, "non-delivery report matches no job of ours");
                    "unmatched"
                }
            };
            metrics::BOUNCE_REPORTS.with_label_values(&[outcome]).inc();
            let folder = self.folder(graph, mailbox).await?;
            graph.move_message(mailbox, &message.id, &folder).await?;
        }
        Ok(())
    }

    async fn folder(
        &mut self,
        graph: &GraphClient,
        mailbox: &EmailAddress,
    ) -> Result<FolderId, GraphError> {
        let key = mailbox.as_str().to_ascii_lowercase();
        if let Some(id) = self.folders.get(&key) {
            return Ok(id.clone());
        }
        let id = graph.ensure_folder(mailbox, &self.folder_name).await?;
        self.folders.insert(key, id.clone());
        Ok(id)
    }
}
