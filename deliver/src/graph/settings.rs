//! `[deliver.graph]`: how deliver reaches the pool's mailboxes through Microsoft Graph
//! (reading bounces from the Inbox, looking up Sent Items, watching their size), checked at
//! load.

use std::time::Duration;

use mailpipe_common::config::Problems;
use serde::{Deserialize, Serialize};

/// Exchange Online allows 4 concurrent Graph requests per app and mailbox.
pub const MAX_CONCURRENT_PER_MAILBOX: u32 = 4;
/// Default app-wide cap on Graph requests in flight from one process.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 64;
/// Highest accepted app-wide cap (each request holds a connection and a task).
pub const MAX_CONCURRENT_REQUESTS_CEILING: u32 = 4096;
/// `messages_per_round` bounds: one from each end of the Inbox at least; each half one
/// page of Graph's largest (1000).
pub const MIN_PER_ROUND: u32 = 2;
pub const MAX_PER_ROUND: u32 = 2000;
/// Exchange Online's default message size limit (35 MB), what `max_send_bytes` defaults to.
pub const DEFAULT_MAX_SEND_BYTES: u64 = 35 * 1024 * 1024;
/// The largest message size limit Exchange Online can be set to (150 MB), and the largest
/// attachment an upload session takes.
pub const MAX_SEND_BYTES_CEILING: u64 = 150 * 1024 * 1024;
/// `sent_items_retention_days` at most (ten years).
pub const MAX_RETENTION_DAYS: u32 = 3650;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GraphSettings {
    /// Read the pool's mailboxes through Graph (bounces, Sent Items). Needs the tenant's
    /// app registration to hold `Mail.ReadWrite` (docs/microsoft365.md).
    pub enabled: bool,
    /// `https://graph.microsoft.com` (global); sovereign clouds differ
    /// (`https://graph.microsoft.us`, `https://microsoftgraph.chinacloudapi.cn`, ...).
    pub base_url: String,
    /// The scope app-only Graph tokens are requested for (`{base_url}/.default`).
    pub scope: String,
    /// Lets `base_url` be plain `http://` to a loopback host (a local simulator).
    pub allow_loopback_http: bool,
    /// Requests in flight per mailbox (at most 4: Exchange answers the fifth `429`).
    pub max_concurrent_per_mailbox: u32,
    /// Graph requests in flight from this process at most, all mailboxes together.
    pub max_concurrent_requests: u32,
    /// Timeout of one request, body included.
    pub request_timeout_ms: u64,
    /// Timeout of the TCP + TLS connect.
    pub connect_timeout_ms: u64,
    /// Largest message (MIME) fetched; bigger ones are refused, naming the limit.
    pub max_message_bytes: u64,
    /// Largest message (MIME, as deliver would send it) sent through a Graph mailbox:
    /// Exchange Online's message size limit for the pool's mailboxes (35 MB unless the
    /// admin changed `MaxSendSize`, at most 150 MB). A larger one fails permanently before
    /// any Graph request, naming this key.
    pub max_send_bytes: u64,
    /// Hosts an upload session's `uploadUrl` may point to (besides `base_url`'s own):
    /// Exchange answers with a pre-authenticated URL on Outlook's host, and its bytes go
    /// there without the bearer token. Over https only. Sovereign clouds differ
    /// (`outlook.office365.us`, ...).
    pub upload_hosts: Vec<String>,
    /// The folder handled NDRs are moved to (created when missing).
    pub bounce_folder: String,
    /// The folder reports that may change nothing are moved to, for a person (created when
    /// missing): forged ones, and real ones not about a send of ours (docs/deliver.md,
    /// "Which reports are trusted"). Never deleted, never acted on.
    pub untrusted_folder: String,
    /// The folder everything else the Inbox reader looked at is moved to (auto-replies,
    /// delay notices, customers' answers, messages too large to fetch), so the Inbox holds
    /// only what it has not seen yet (created when missing; never deleted, never acted on).
    pub other_folder: String,
    /// How often each mailbox's Inbox is read for bounces.
    pub poll_interval_ms: u64,
    /// Inbox messages looked at per mailbox and round at most: half from the oldest end of
    /// the Inbox (so every message gets its turn), half from the newest (so what just
    /// arrived is read at once, whatever the backlog). Each costs a fetch and a move.
    pub messages_per_round: u32,
    /// How often each mailbox's Sent Items size and count are read (the storage gauges).
    pub storage_interval_ms: u64,
    /// When set, each storage interval permanently deletes the Sent Items older than this
    /// many days that mailpipe itself sent and has on record (a closed send of that mailbox
    /// with the message's Message-ID), and never anything else. Keep it below
    /// `database.retention_days`: a send that left the record is no longer known as ours.
    pub sent_items_retention_days: Option<u32>,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "https://graph.microsoft.com".into(),
            scope: "https://graph.microsoft.com/.default".into(),
            allow_loopback_http: false,
            max_concurrent_per_mailbox: MAX_CONCURRENT_PER_MAILBOX,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            request_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            max_message_bytes: 40 * 1024 * 1024,
            max_send_bytes: DEFAULT_MAX_SEND_BYTES,
            upload_hosts: vec!["outlook.office.com".into(), "outlook.office365.com".into()],
            bounce_folder: "mailpipe-bounces".into(),
            untrusted_folder: "mailpipe-untrusted".into(),
            other_folder: "mailpipe-other".into(),
            poll_interval_ms: 60_000,
            messages_per_round: 200,
            storage_interval_ms: 15 * 60_000,
            sent_items_retention_days: None,
        }
    }
}

impl GraphSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn storage_interval(&self) -> Duration {
        Duration::from_millis(self.storage_interval_ms)
    }

    /// Pushes every problem, naming `deliver.graph.<key>`.
    pub fn check(&self, p: &mut Problems) {
        let key = |k: &str| format!("deliver.graph.{k}");
        if let Err(why) =
            crate::auth::token_endpoint::parse_authority(&self.base_url, self.allow_loopback_http)
        {
            p.push(key("base_url"), why);
        }
        if self.scope.trim().is_empty() || self.scope.contains(char::is_whitespace) {
            p.push(
                key("scope"),
                "must be one scope such as https://graph.microsoft.com/.default",
            );
        }
        if !(1..=MAX_CONCURRENT_PER_MAILBOX).contains(&self.max_concurrent_per_mailbox) {
            p.push(
                key("max_concurrent_per_mailbox"),
                format!(
                    "{} is out of range: 1 to {MAX_CONCURRENT_PER_MAILBOX} (Exchange refuses more concurrent requests per mailbox)",
                    self.max_concurrent_per_mailbox
                ),
            );
        }
        if !(1..=MAX_CONCURRENT_REQUESTS_CEILING).contains(&self.max_concurrent_requests) {
            p.push(
                key("max_concurrent_requests"),
                format!(
                    "{} is out of range: 1 to {MAX_CONCURRENT_REQUESTS_CEILING}",
                    self.max_concurrent_requests
                ),
            );
        }
        for (name, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if value == 0 {
                p.push(key(name), "must be at least 1");
            }
        }
        if self.max_message_bytes < 1024 {
            p.push(
                key("max_message_bytes"),
                format!("{} is too small: at least 1024", self.max_message_bytes),
            );
        }
        if !(1024 * 1024..=MAX_SEND_BYTES_CEILING).contains(&self.max_send_bytes) {
            p.push(
                key("max_send_bytes"),
                format!(
                    "{} is out of range: 1048576 to {MAX_SEND_BYTES_CEILING} (Exchange Online's message size limit is 35 MB by default, 150 MB at most)",
                    self.max_send_bytes
                ),
            );
        }
        for host in &self.upload_hosts {
            let valid = !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !valid {
                p.push(
                    key("upload_hosts"),
                    format!("{host:?} is not a host name such as outlook.office.com"),
                );
            }
        }
        for (name, folder) in [
            ("bounce_folder", &self.bounce_folder),
            ("untrusted_folder", &self.untrusted_folder),
            ("other_folder", &self.other_folder),
        ] {
            let folder = folder.trim();
            if folder.is_empty() || folder.len() > 255 || folder.chars().any(char::is_control) {
                p.push(
                    key(name),
                    "must be a folder name of 1 to 255 characters without control characters",
                );
            }
        }
        if self
            .untrusted_folder
            .trim()
            .eq_ignore_ascii_case(self.bounce_folder.trim())
        {
            p.push(
                key("untrusted_folder"),
                "must differ from bounce_folder: a person reads what is in it",
            );
        }
        if [&self.bounce_folder, &self.untrusted_folder]
            .iter()
            .any(|f| f.trim().eq_ignore_ascii_case(self.other_folder.trim()))
        {
            p.push(
                key("other_folder"),
                "must differ from bounce_folder and untrusted_folder: what is in it was never a report",
            );
        }
        if !(MIN_PER_ROUND..=MAX_PER_ROUND).contains(&self.messages_per_round) {
            p.push(
                key("messages_per_round"),
                format!(
                    "{} is out of range: {MIN_PER_ROUND} to {MAX_PER_ROUND} (half from each end of the Inbox, one page each)",
                    self.messages_per_round
                ),
            );
        }
        if let Some(days) = self.sent_items_retention_days
            && !(1..=MAX_RETENTION_DAYS).contains(&days)
        {
            p.push(
                key("sent_items_retention_days"),
                format!("{days} is out of range: 1 to {MAX_RETENTION_DAYS} days"),
            );
        }
        if self.storage_interval_ms < 1_000 {
            p.push(
                key("storage_interval_ms"),
                format!("{} is too short: at least 1000", self.storage_interval_ms),
            );
        }
        if self.poll_interval_ms < 1_000 {
            p.push(
                key("poll_interval_ms"),
                format!("{} is too short: at least 1000", self.poll_interval_ms),
            );
        }
    }
}
