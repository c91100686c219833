//! What the client returns: message summaries, pages, folder ids; and the wire shapes of
//! Graph's JSON they are read from.

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// A message as a list shows it (the properties the client `$select`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSummary {
    /// Graph's id; it changes when the message is moved.
    pub id: String,
    /// The Message-ID header, angle brackets included.
    pub internet_message_id: Option<String>,
    pub subject: Option<String>,
    pub received: Option<DateTime<Utc>>,
    /// The From address.
    pub from: Option<String>,
}

/// One page of a folder listing; `next` continues it.
#[derive(Debug, Clone)]
pub struct Page {
    pub messages: Vec<MessageSummary>,
    pub next: Option<NextPage>,
}

/// The continuation of a listing: Graph's `@odata.nextLink`, already checked to point
/// at `base_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextPage(pub(crate) reqwest::Url);

/// A mail folder's id (or a well-known name: `inbox`, `sentitems`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FolderId(pub String);

impl FolderId {
    pub fn inbox() -> Self {
        FolderId("inbox".into())
    }
    pub fn sent_items() -> Self {
        FolderId("sentitems".into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which end of a folder a listing starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    OldestFirst,
    NewestFirst,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireList<T> {
    pub value: Vec<T>,
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireMessage {
    pub id: String,
    #[serde(default)]
    pub internet_message_id: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub received_date_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub from: Option<WireRecipient>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireRecipient {
    pub email_address: WireEmailAddress,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireEmailAddress {
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireFolder {
    pub id: String,
    pub display_name: String,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct WireError {
    #[serde(default)]
    pub error: WireErrorBody,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct WireErrorBody {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl From<WireMessage> for MessageSummary {
    fn from(m: WireMessage) -> Self {
        MessageSummary {
            id: m.id,
            internet_message_id: m.internet_message_id,
            subject: m.subject,
            received: m.received_date_time,
            from: m.from.and_then(|f| f.email_address.address),
        }
    }
}
