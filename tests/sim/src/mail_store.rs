//! The mailboxes' folders as Microsoft Graph shows them: Inbox, Sent Items and the folders
//! clients create, each holding messages. A message's id changes when it is moved, as
//! Exchange's do, so a client must use the id the move returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use serde::Serialize;

use crate::records::lock;

/// The well-known folders every mailbox has (Graph's `inbox` and `sentitems` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WellKnown {
    Inbox,
    SentItems,
    Drafts,
}

impl WellKnown {
    fn name(self) -> &'static str {
        match self {
            WellKnown::Inbox => "inbox",
            WellKnown::SentItems => "sentitems",
            WellKnown::Drafts => "drafts",
        }
    }

    fn display_name(self) -> &'static str {
        match self {
            WellKnown::Inbox => "Inbox",
            WellKnown::SentItems => "Sent Items",
            WellKnown::Drafts => "Drafts",
        }
    }
}

/// One message in a folder; `raw` is shared, not copied, by listings.
#[derive(Debug, Clone)]
pub(crate) struct StoredMessage {
    pub id: String,
    /// The Message-ID header, angle brackets included (as Graph's `internetMessageId`).
    pub internet_message_id: Option<String>,
    pub subject: Option<String>,
    /// The From header's address.
    pub from: Option<String>,
    pub received: DateTime<Utc>,
    pub raw: Arc<Vec<u8>>,
    /// How many times its MIME was served (`$value`), across moves: what a test counts a
    /// client's fetches by.
    pub fetches: u64,
}

/// A folder and what it holds, for the inspection API and tests.
#[derive(Debug, Clone, Serialize)]
pub struct FolderView {
    pub id: String,
    pub display_name: String,
    /// `inbox`, `sentitems`, or none for folders clients created.
    pub well_known_name: Option<String>,
    pub messages: Vec<FolderMessage>,
}

/// A message as the inspection API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct FolderMessage {
    pub id: String,
    pub internet_message_id: Option<String>,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub received: DateTime<Utc>,
    pub size: usize,
    /// How many times its MIME was served, across moves.
    pub fetches: u64,
}

/// A folder's item count and size, as Graph's `mailFolder` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FolderUsage {
    pub id: String,
    pub display_name: String,
    pub total_item_count: usize,
    pub size_in_bytes: u64,
}

#[derive(Debug)]
struct Folder {
    id: String,
    display_name: String,
    well_known: Option<WellKnown>,
    messages: Vec<StoredMessage>,
}

impl Folder {
    fn usage(&self) -> FolderUsage {
        FolderUsage {
            id: self.id.clone(),
            display_name: self.display_name.clone(),
            total_item_count: self.messages.len(),
            size_in_bytes: self.messages.iter().map(|x| x.raw.len() as u64).sum(),
        }
    }
}

#[derive(Debug)]
struct MailboxFolders {
    folders: Vec<Folder>,
}

impl MailboxFolders {
    fn new() -> Self {
        let folder = |w: WellKnown| Folder {
            id: new_id("AQMkAD"),
            display_name: w.display_name().to_owned(),
            well_known: Some(w),
            messages: Vec::new(),
        };
        Self {
            folders: vec![
                folder(WellKnown::Inbox),
                folder(WellKnown::SentItems),
                folder(WellKnown::Drafts),
            ],
        }
    }

    fn folder_index(&self, name_or_id: &str) -> Option<usize> {
        self.folders.iter().position(|f| {
            f.id == name_or_id
                || f.well_known
                    .is_some_and(|w| w.name().eq_ignore_ascii_case(name_or_id))
        })
    }
}

/// Why a create or move failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreError {
    NoSuchFolder,
    NoSuchMessage,
    FolderExists,
}

/// Every mailbox's folders. Folders keep at most `max_per_folder` messages (oldest dropped),
/// like the simulator's other logs.
#[derive(Debug)]
pub(crate) struct MailStore {
    mailboxes: Mutex<HashMap<String, MailboxFolders>>,
    max_per_folder: usize,
}

impl MailStore {
    pub fn new(max_per_folder: usize) -> Self {
        Self {
            mailboxes: Mutex::new(HashMap::new()),
            max_per_folder: max_per_folder.max(1),
        }
    }

    fn with<R>(&self, mailbox: &str, f: impl FnOnce(&mut MailboxFolders) -> R) -> R {
        let mut map = lock(&self.mailboxes);
        let folders = map
            .entry(mailbox.to_ascii_lowercase())
            .or_insert_with(MailboxFolders::new);
        f(folders)
    }

    /// Files `raw` into a well-known folder of `mailbox`; returns the message id.
    pub fn file(&self, mailbox: &str, folder: WellKnown, raw: Vec<u8>) -> String {
        let (internet_message_id, subject, from) = summary_headers(&raw);
        let message = StoredMessage {
            id: new_id("AAMkAD"),
            internet_message_id,
            subject,
            from,
            received: Utc::now(),
            raw: Arc::new(raw),
            fetches: 0,
        };
        let id = message.id.clone();
        let max = self.max_per_folder;
        self.with(mailbox, |m| {
            if let Some(i) = m.folder_index(folder.name()) {
                let messages = &mut m.folders[i].messages;
                messages.push(message);
                if messages.len() > max {
                    messages.remove(0);
                }
            }
        });
        id
    }

    /// Takes a message out of a well-known folder (a draft being sent); `None` when it
    /// is not there.
    pub fn take(&self, mailbox: &str, folder: WellKnown, id: &str) -> Option<StoredMessage> {
        self.with(mailbox, |m| {
            let i = m.folder_index(folder.name())?;
            let messages = &mut m.folders[i].messages;
            let pos = messages.iter().position(|x| x.id == id)?;
            Some(messages.remove(pos))
        })
    }

    /// Rewrites the MIME of a message in a well-known folder (an attachment added to a
    /// draft), under the store's lock so two changes never lose one another; the id stays.
    /// `f`'s `Err` leaves the message as it was and is given back.
    pub fn rewrite<E>(
        &self,
        mailbox: &str,
        folder: WellKnown,
        id: &str,
        f: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Option<Result<(), E>> {
        self.with(mailbox, |m| {
            let i = m.folder_index(folder.name())?;
            let msg = m.folders[i].messages.iter_mut().find(|x| x.id == id)?;
            Some(f(&msg.raw).map(|raw| {
                let (internet_message_id, subject, from) = summary_headers(&raw);
                msg.internet_message_id = internet_message_id;
                msg.subject = subject;
                msg.from = from;
                msg.raw = Arc::new(raw);
            }))
        })
    }

    /// The id of a folder given by well-known name or id.
    pub fn folder_id(&self, mailbox: &str, name_or_id: &str) -> Option<String> {
        self.with(mailbox, |m| {
            m.folder_index(name_or_id).map(|i| m.folders[i].id.clone())
        })
    }

    /// A folder's messages in arrival order.
    pub fn messages(&self, mailbox: &str, folder_id: &str) -> Option<Vec<StoredMessage>> {
        self.with(mailbox, |m| {
            m.folder_index(folder_id)
                .map(|i| m.folders[i].messages.clone())
        })
    }

    /// A message by id, in whatever folder it is.
    pub fn message(&self, mailbox: &str, id: &str) -> Option<StoredMessage> {
        self.with(mailbox, |m| {
            m.folders
                .iter()
                .flat_map(|f| f.messages.iter())
                .find(|msg| msg.id == id)
                .cloned()
        })
    }

    /// A message by id, its MIME served once more (counted in `fetches`).
    pub fn fetch(&self, mailbox: &str, id: &str) -> Option<StoredMessage> {
        self.with(mailbox, |m| {
            let msg = m
                .folders
                .iter_mut()
                .flat_map(|f| f.messages.iter_mut())
                .find(|msg| msg.id == id)?;
            msg.fetches += 1;
            Some(msg.clone())
        })
    }

    /// Deletes a message (Graph's `DELETE`: to Recoverable Items, out of the quota's count
    /// here, as a retention policy's permanent delete would be).
    pub fn delete_message(&self, mailbox: &str, id: &str) -> Result<(), StoreError> {
        self.with(mailbox, |m| {
            for f in &mut m.folders {
                if let Some(pos) = f.messages.iter().position(|x| x.id == id) {
                    f.messages.remove(pos);
                    return Ok(());
                }
            }
            Err(StoreError::NoSuchMessage)
        })
    }

    /// Deletes the messages of a folder received before `before`; returns how many (what
    /// an Exchange retention tag on the folder does when the Managed Folder Assistant runs).
    pub fn expire(&self, mailbox: &str, folder: &str, before: DateTime<Utc>) -> usize {
        self.with(mailbox, |m| {
            let Some(i) = m.folder_index(folder) else {
                return 0;
            };
            let messages = &mut m.folders[i].messages;
            let n = messages.len();
            messages.retain(|x| x.received >= before);
            n - messages.len()
        })
    }

    /// Makes a folder's messages `by` older (their `receivedDateTime`); returns how many.
    pub fn age(&self, mailbox: &str, folder: &str, by: chrono::Duration) -> usize {
        self.with(mailbox, |m| {
            let Some(i) = m.folder_index(folder) else {
                return 0;
            };
            for x in &mut m.folders[i].messages {
                x.received -= by;
            }
            m.folders[i].messages.len()
        })
    }

    /// A folder's count and size.
    pub fn folder_usage(&self, mailbox: &str, name_or_id: &str) -> Option<FolderUsage> {
        self.with(mailbox, |m| {
            m.folder_index(name_or_id).map(|i| m.folders[i].usage())
        })
    }

    /// What the mailbox holds in every folder, in bytes (what its storage quota counts).
    pub fn mailbox_bytes(&self, mailbox: &str) -> u64 {
        self.with(mailbox, |m| {
            m.folders
                .iter()
                .flat_map(|f| f.messages.iter())
                .map(|x| x.raw.len() as u64)
                .sum()
        })
    }

    /// Moves a message; it gets a new id, returned with it.
    pub fn move_message(
        &self,
        mailbox: &str,
        id: &str,
        destination: &str,
    ) -> Result<StoredMessage, StoreError> {
        self.with(mailbox, |m| {
            let to = m
                .folder_index(destination)
                .ok_or(StoreError::NoSuchFolder)?;
            let (from, pos) = m
                .folders
                .iter()
                .enumerate()
                .find_map(|(fi, f)| f.messages.iter().position(|x| x.id == id).map(|p| (fi, p)))
                .ok_or(StoreError::NoSuchMessage)?;
            let mut message = m.folders[from].messages.remove(pos);
            message.id = new_id("AAMkAD");
            m.folders[to].messages.push(message.clone());
            Ok(message)
        })
    }

    /// Folders with their count and size, well-known ones first.
    pub fn folder_list(&self, mailbox: &str) -> Vec<FolderUsage> {
        self.with(mailbox, |m| m.folders.iter().map(Folder::usage).collect())
    }

    /// Creates a folder under the mailbox's root; display names are unique, ignoring case.
    pub fn create_folder(&self, mailbox: &str, display_name: &str) -> Result<String, StoreError> {
        self.with(mailbox, |m| {
            if m.folders
                .iter()
                .any(|f| f.display_name.eq_ignore_ascii_case(display_name))
            {
                return Err(StoreError::FolderExists);
            }
            let id = new_id("AAMkAD");
            m.folders.push(Folder {
                id: id.clone(),
                display_name: display_name.to_owned(),
                well_known: None,
                messages: Vec::new(),
            });
            Ok(id)
        })
    }

    /// Every folder of `mailbox` with its messages.
    pub fn view(&self, mailbox: &str) -> Vec<FolderView> {
        self.with(mailbox, |m| {
            m.folders
                .iter()
                .map(|f| FolderView {
                    id: f.id.clone(),
                    display_name: f.display_name.clone(),
                    well_known_name: f.well_known.map(|w| w.name().to_owned()),
                    messages: f
                        .messages
                        .iter()
                        .map(|x| FolderMessage {
                            id: x.id.clone(),
                            internet_message_id: x.internet_message_id.clone(),
                            subject: x.subject.clone(),
                            from: x.from.clone(),
                            received: x.received,
                            size: x.raw.len(),
                            fetches: x.fetches,
                        })
                        .collect(),
                })
                .collect()
        })
    }

    pub fn clear(&self) {
        lock(&self.mailboxes).clear();
    }
}

/// An opaque id shaped like Exchange's (a base64 prefix and random bytes, URL-safe so it
/// stays one path segment).
fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 33];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Message-ID, Subject and From address from the header section (unfolded; encoded words
/// are left as they are).
pub(crate) fn summary_headers(raw: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    let end = find_header_end(raw);
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut unfolded: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = unfolded.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            unfolded.push(line.to_owned());
        }
    }
    let header = |name: &str| {
        unfolded.iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let from = header("From").map(|f| match (f.rfind('<'), f.rfind('>')) {
        (Some(a), Some(b)) if a < b => f[a + 1..b].trim().to_owned(),
        _ => f,
    });
    (header("Message-ID"), header("Subject"), from)
}

fn find_header_end(raw: &[u8]) -> usize {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(raw.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_changes_the_id_and_the_folder() {
        let store = MailStore::new(10);
        let id = store.file(
            "A@x",
            WellKnown::Inbox,
            b"Message-ID: <1@x>\r\nSubject: hi\r\nFrom: \"A\" <a@x>\r\n\r\nbody".to_vec(),
        );
        let folder = store.create_folder("a@x", "Bounces").expect("created");
        assert_eq!(
            store.create_folder("a@x", "bounces"),
            Err(StoreError::FolderExists)
        );
        let moved = store.move_message("a@x", &id, &folder).expect("moved");
        assert_ne!(moved.id, id);
        assert_eq!(moved.internet_message_id.as_deref(), Some("<1@x>"));
        assert_eq!(moved.from.as_deref(), Some("a@x"));
        assert!(store.message("a@x", &id).is_none());
        assert!(store.messages("a@x", "inbox").expect("inbox").is_empty());
        assert_eq!(store.messages("a@x", &folder).expect("folder").len(), 1);
    }
}
