//! The pool's Inboxes: every message read once, reports recorded, everything moved out.
//!
//! A 250 after the data means Exchange took the message, not that the customer got it. The
//! reports of what happened later (unknown recipient, full mailbox, refusing domain) land
//! in the sending mailbox's Inbox, among everything else invoices draw: out-of-office
//! answers by the thousand, read receipts, customers' replies. The reader must reach every
//! report however much else arrives, so:
//!
//! - **What it has looked at leaves the Inbox.** Reports go to `deliver.graph.bounce_folder`
//!   (trusted) or `untrusted_folder` (for a person); everything else to `other_folder`. The
//!   Inbox is the queue of what the reader has not seen: no cursor to keep, and nothing a
//!   cursor could skip (Graph's `receivedDateTime` has one-second steps and arrivals are
//!   not listed in the order of their timestamps).
//! - **Each round is bounded, and takes from both ends.** Up to `messages_per_round`
//!   messages: half the oldest of the Inbox, so every message gets its turn however fast
//!   others arrive (a message is reached after at most its place in the line divided by
//!   the half), and half the newest, so a report that arrives behind a backlog of 5,000
//!   auto-replies is read in the next round, not in the twenty-fifth. Newest and oldest
//!   take turns, so a round cut short by throttling still served both.
//! - **A message too large to fetch costs one fetch.** It is recorded in the database
//!   (`Store::set_aside`, by its Graph id, which holds while it stays in the Inbox), then
//!   moved to the other folder; if the move fails, later rounds find the record and only
//!   move it. One message Graph refuses is skipped for the round, not the whole round.
//!
//! A report is recorded before it is moved (`Store::record_bounce`, keyed by the report's
//! own Message-ID, since a moved message gets a new Graph id), which decides whether it is
//! trusted (docs/deliver.md, "Which reports are trusted"): bound to a send of this mailbox,
//! the job ends `bounced` and dead addresses go on the suppression list; refused, nothing
//! changes (counted `untrusted`, never deleted). A crash between record and move, or a
//! restart, records nothing twice: the report is found handled and only moved (to the
//! folder its first handling chose).

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use mailpipe_common::domain::EmailAddress;
use mailpipe_common::store::{BounceError, SetAsideError, Store, StoreError};

use crate::bounce::{self, Report};
use crate::graph::{FolderId, GraphClient, GraphError, GraphSettings, MessageSummary, Order};
use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Record(#[from] BounceError),
    #[error(transparent)]
    SetAside(#[from] SetAsideError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl InboxError {
    /// Whether the error is about one message (gone, refused, unreadable) rather than the
    /// mailbox, Graph or the database: the round goes on with the next message.
    fn is_about_the_message(&self) -> bool {
        match self {
            InboxError::Graph(GraphError::Api { status, .. }) => {
                matches!(status, 400 | 404 | 409 | 413 | 422)
            }
            InboxError::Graph(GraphError::Malformed { .. }) => true,
            InboxError::Record(BounceError::BadKey)
            | InboxError::SetAside(SetAsideError::BadKey) => true,
            _ => false,
        }
    }
}

/// What one round did in one mailbox's Inbox.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InboxRound {
    /// Messages listed for this round (at most `messages_per_round`).
    pub picked: usize,
    pub reports: usize,
    pub other: usize,
    pub too_large: usize,
    /// Messages Graph refused this round (tried again in a later one).
    pub failed: usize,
}

/// What became of one message.
enum Looked {
    Report,
    Other,
    TooLarge,
    /// Found too large in an earlier round; moved aside now.
    SetAsideMoved,
}

#[derive(Debug)]
pub struct InboxReader {
    bounce_folder: String,
    untrusted_folder: String,
    other_folder: String,
    per_round: usize,
    /// Folder ids per (mailbox, folder name), once found or created.
    folders: HashMap<(String, String), FolderId>,
}

impl InboxReader {
    pub fn new(settings: &GraphSettings) -> Self {
        Self {
            bounce_folder: settings.bounce_folder.clone(),
            untrusted_folder: settings.untrusted_folder.clone(),
            other_folder: settings.other_folder.clone(),
            per_round: usize::try_from(settings.messages_per_round)
                .unwrap_or(usize::MAX)
                .max(2),
            folders: HashMap::new(),
        }
    }

    /// One round over `mailbox`'s Inbox. `Err` when Graph, the mailbox or the database
    /// cannot be used right now (the next round tries again); what was done stays done.
    pub async fn read(
        &mut self,
        graph: &GraphClient,
        store: &Store,
        mailbox: &EmailAddress,
    ) -> Result<InboxRound, InboxError> {
        let picked = self.pick(graph, mailbox).await?;
        let ids: Vec<String> = picked.iter().map(|m| m.id.clone()).collect();
        let set_aside = store.set_aside_among(mailbox, &ids).await?;
        let mut round = InboxRound {
            picked: picked.len(),
            ..InboxRound::default()
        };
        for message in &picked {
            let looked = self
                .look(
                    graph,
                    store,
                    mailbox,
                    message,
                    set_aside.contains(&message.id),
                )
                .await;
            let outcome = match looked {
                Ok(Looked::Report) => {
                    round.reports += 1;
                    "report"
                }
                Ok(Looked::Other) => {
                    round.other += 1;
                    "other"
                }
                Ok(Looked::TooLarge) => {
                    round.too_large += 1;
                    "too_large"
                }
                Ok(Looked::SetAsideMoved) => continue,
                Err(e) if e.is_about_the_message() => {
                    tracing::warn!(mailbox = %mailbox, message = %message.id, error = %e, "an Inbox message could not be handled; trying it again next round");
                    round.failed += 1;
                    "failed"
                }
                Err(e) => return Err(e),
            };
            metrics::INBOX_MESSAGES.with_label_values(&[outcome]).inc();
        }
        Ok(round)
    }

    /// This round's messages: up to half of `messages_per_round` from each end of the
    /// Inbox, newest and oldest taking turns, each once.
    async fn pick(
        &self,
        graph: &GraphClient,
        mailbox: &EmailAddress,
    ) -> Result<Vec<MessageSummary>, GraphError> {
        let oldest_n = self.per_round.div_ceil(2);
        let newest_n = self.per_round - oldest_n;
        let inbox = FolderId::inbox();
        // Pages of 100 (`list_all`): a page of long subjects stays far below the 1 MiB
        // bound on an answer, whatever a sender puts in them.
        let oldest = graph
            .list_all(mailbox, &inbox, Order::OldestFirst, oldest_n)
            .await?;
        // Fewer than asked: that was the whole Inbox.
        let newest = if oldest.len() < oldest_n {
            Vec::new()
        } else {
            graph
                .list_all(mailbox, &inbox, Order::NewestFirst, newest_n)
                .await?
        };
        Ok(take_turns(newest, oldest))
    }

    /// Handles one message: a report recorded and moved to its folder, anything else moved
    /// to the other folder, one too large to fetch recorded and moved there.
    async fn look(
        &mut self,
        graph: &GraphClient,
        store: &Store,
        mailbox: &EmailAddress,
        message: &MessageSummary,
        set_aside: bool,
    ) -> Result<Looked, InboxError> {
        if set_aside {
            self.move_to(graph, mailbox, &message.id, Folder::Other)
                .await?;
            store.forget_set_aside(mailbox, &message.id).await?;
            return Ok(Looked::SetAsideMoved);
        }
        let mime = match graph.message_mime(mailbox, &message.id).await {
            Ok(mime) => mime,
            Err(GraphError::TooLarge { limit, .. }) => {
                let why = format!("larger than deliver.graph.max_message_bytes ({limit} bytes)");
                store
                    .set_aside(
                        mailbox,
                        &message.id,
                        message.internet_message_id.as_deref(),
                        &why,
                    )
                    .await?;
                tracing::warn!(
                    mailbox = %mailbox, message_id = ?message.internet_message_id,
                    from = ?message.from, "an Inbox message is {why}: not read, moved to the other folder"
                );
                self.move_to(graph, mailbox, &message.id, Folder::Other)
                    .await?;
                store.forget_set_aside(mailbox, &message.id).await?;
                return Ok(Looked::TooLarge);
            }
            Err(e) => return Err(e.into()),
        };
        let mut bounce = match bounce::parse(&mime) {
            Report::Bounce(bounce) => bounce,
            Report::Delayed(_) | Report::NotAReport(_) => {
                self.move_to(graph, mailbox, &message.id, Folder::Other)
                    .await?;
                return Ok(Looked::Other);
            }
        };
        bounce::origin::confirm_for_mailbox(&mut bounce, mailbox);
        if let Some(domain) = bounce::sender_domain_refusal(&bounce) {
            tracing::warn!(
                mailbox = %mailbox, refusal = domain.as_str(),
                "a non-delivery report blames the sender's domain: {}", domain.hint()
            );
        }
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
        let folder = if record.untrusted.is_some() {
            Folder::Untrusted
        } else {
            Folder::Bounces
        };
        self.move_to(graph, mailbox, &message.id, folder).await?;
        Ok(Looked::Report)
    }

    async fn move_to(
        &mut self,
        graph: &GraphClient,
        mailbox: &EmailAddress,
        id: &str,
        folder: Folder,
    ) -> Result<(), GraphError> {
        let name = match folder {
            Folder::Bounces => self.bounce_folder.clone(),
            Folder::Untrusted => self.untrusted_folder.clone(),
            Folder::Other => self.other_folder.clone(),
        };
        let key = (mailbox.as_str().to_ascii_lowercase(), name);
        let folder = match self.folders.get(&key) {
            Some(id) => id.clone(),
            None => {
                let id = graph.ensure_folder(mailbox, &key.1).await?;
                self.folders.insert(key, id.clone());
                id
            }
        };
        graph.move_message(mailbox, id, &folder).await?;
        Ok(())
    }
}

/// Where a message the reader looked at goes.
#[derive(Debug, Clone, Copy)]
enum Folder {
    Bounces,
    Untrusted,
    Other,
}

/// `newest[0], oldest[0], newest[1], …`, each message once (the two ends overlap when the
/// Inbox holds fewer than a round's worth).
fn take_turns(newest: Vec<MessageSummary>, oldest: Vec<MessageSummary>) -> Vec<MessageSummary> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(newest.len() + oldest.len());
    let mut newest = newest.into_iter();
    let mut oldest = oldest.into_iter();
    loop {
        let (n, o) = (newest.next(), oldest.next());
        if n.is_none() && o.is_none() {
            return out;
        }
        for m in [n, o].into_iter().flatten() {
            if seen.insert(m.id.clone()) {
                out.push(m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str) -> MessageSummary {
        MessageSummary {
            id: id.into(),
            internet_message_id: None,
            subject: None,
            received: None,
            from: None,
        }
    }

    fn ids(v: &[MessageSummary]) -> Vec<&str> {
        v.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn the_ends_take_turns_and_each_message_comes_once() {
        let both = take_turns(vec![m("z"), m("y")], vec![m("a"), m("b"), m("c")]);
        assert_eq!(ids(&both), ["z", "a", "y", "b", "c"]);
        // A small Inbox: both ends list the same messages.
        let small = take_turns(vec![m("c"), m("b"), m("a")], vec![m("a"), m("b"), m("c")]);
        assert_eq!(ids(&small), ["c", "a", "b"]);
        assert!(take_turns(vec![], vec![]).is_empty());
    }
}
