//! A rendered message on the deliver queue: the MIME bytes are the AMQP body, the
//! metadata (envelope, policy inputs, attempt) rides in one AMQP header as JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ContractError, DeliverQueue, Lane, check_version, current_version};
use crate::domain::{BatchId, EmailAddress, JobId, Mailbox};

/// AMQP header holding the `RenderedMeta` JSON.
pub const META_HEADER: &str = "mailpipe-meta";

/// Everything deliver needs besides the MIME bytes.
///
/// The MIME has no `From:` header: deliver writes it at the top according to the pool's
/// From policy (`mailbox` writes the sending mailbox and keeps `from` as Reply-To when the
/// message has none; `send_as` writes `from`). This way render needs no knowledge of the
/// pool, and deliver never re-parses or rewrites a rendered body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderedMeta {
    #[serde(default = "current_version")]
    pub v: u16,
    pub job_id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchId>,
    /// The business sender (job's From, else the template's default).
    pub from: Mailbox,
    /// Whether the MIME already carries a Reply-To header.
    pub has_reply_to: bool,
    /// To + Cc + Bcc, deduplicated: the SMTP envelope.
    pub recipients: Vec<EmailAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub message_id: String,
    /// How many delivery attempts were already spent (0 on first delivery).
    pub attempt: u32,
    pub rendered_at: DateTime<Utc>,
    /// The job's schedule: not sent before `not_before`, `expired` past `not_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
    /// The job's lane (bulk when absent: messages rendered before lanes existed).
    #[serde(default, skip_serializing_if = "Lane::is_bulk")]
    pub lane: Lane,
    /// The bulk deliver queue of the job's batch (0: the first queue).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bulk_queue: u16,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

impl RenderedMeta {
    pub fn to_header_value(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The deliver queue this message waits in (and comes back to from the retry ladder).
    pub fn deliver_queue(&self) -> DeliverQueue {
        DeliverQueue::of(self.lane, self.bulk_queue)
    }

    pub fn from_header_value(value: &str) -> Result<Self, ContractError> {
        let meta: RenderedMeta =
            serde_json::from_str(value).map_err(|source| ContractError::Malformed {
                what: "rendered message metadata",
                source,
            })?;
        check_version(meta.v)?;
        Ok(meta)
    }
}

/// A rendered message as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedMessage {
    pub meta: RenderedMeta,
    /// RFC 5322 message without a From header (see `RenderedMeta`).
    pub mime: Vec<u8>,
}
