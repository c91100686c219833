//! Microsoft Graph access to the pool's mailboxes, for reading bounces from their Inbox
//! and finding uncertain sends in their Sent Items (docs/deliver.md, "Microsoft Graph"),
//! and for sending through mailboxes with `transport = "graph"` (draft, then send).
//!
//! - [`client`] has `GraphClient`, the operations (list, MIME, move, folders, Sent Items);
//!   [`usage`] adds a folder's count and size (the storage watch).
//! - [`throttling`] keeps the per-mailbox concurrency cap and `Retry-After` discipline.
//! - [`settings`] is the `[deliver.graph]` section.
//! - [`types`] and [`error`] are what the operations return; [`odata`] quotes `$filter`
//!   literals.
//! - [`send`] creates and sends drafts, [`draft_mime`] makes a draft's headers name exactly
//!   the envelope, [`send_outcome`] says what a failed step means for the send.
//! - [`split_attachments`] takes a large message's attachments out of its draft, and
//!   [`upload`] adds them back to the draft (in one request, or an upload session).

mod body;
pub mod client;
pub mod draft_mime;
pub mod error;
pub mod odata;
pub mod send;
pub mod send_outcome;
pub mod settings;
pub mod split_attachments;
pub mod throttling;
pub mod types;
pub mod upload;
pub mod usage;

pub use client::GraphClient;
pub use error::GraphError;
pub use settings::GraphSettings;
pub use types::{FolderId, MessageSummary, NextPage, Order, Page};
pub use usage::FolderUsage;
