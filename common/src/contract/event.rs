//! Delivery events: the one record of what happened to a job, written to the events stream.
//! Batch status, the quota ledger after a restart and audits are all read from it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    BouncedRecipient, ContractError, SmtpReply, SuppressedRecipient, check_version, current_version,
};
use crate::domain::{BatchId, EmailAddress, JobId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// ingest published the job.
    Accepted,
    /// render published the MIME message.
    Rendered,
    /// The server answered 250 to the message (maybe with some recipients refused).
    Delivered,
    /// A transient failure; the message waits in the retry ladder.
    Retrying,
    /// A permanent failure: the message is in dead letters.
    Failed,
    /// Its batch was cancelled before it was sent: it never will be.
    Cancelled,
    /// Its `not_after` passed before it could be sent: it never will be.
    Expired,
    /// A non-delivery report came back after the server accepted it.
    Bounced,
    /// Every recipient is on the suppression list: it was never sent.
    Suppressed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientRefusal {
    pub address: EmailAddress,
    pub reply: SmtpReply,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    #[serde(default = "current_version")]
    pub v: u16,
    pub job_id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchId>,
    pub kind: EventKind,
    /// The pool mailbox that sent (or tried to send) it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<EmailAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// On `delivered`: envelope recipients the server accepted (what counts against the
    /// 24 h quota). On `accepted`: the job's To+Cc+Bcc count (for the batch ETA).
    #[serde(default)]
    pub recipients: u32,
    /// Of those, recipients outside the sending tenant's domains.
    #[serde(default)]
    pub external_recipients: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpReply>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_recipients: Vec<RecipientRefusal>,
    /// Recipients dropped before the send because they are suppressed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed_recipients: Vec<SuppressedRecipient>,
    /// On `bounced`: the recipients the non-delivery report names, with its status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bounced_recipients: Vec<BouncedRecipient>,
    /// Why, in words, for failures that have no SMTP reply (render errors, timeouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub attempt: u32,
    /// When the retry ladder will bring it back, for `retrying`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// On `retrying`: the message was handed over and no reply came (timeout or lost
    /// connection after the final dot), so the server may have accepted it. It counts
    /// against the mailbox's windows and is not sent again before `retry_at`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uncertain: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// The message's Message-ID (with angle brackets): set by render on `rendered` and by
    /// deliver on what it sent, so an audit can find the message in a mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub at: DateTime<Utc>,
}

impl DeliveryEvent {
    pub fn new(job_id: JobId, batch: Option<BatchId>, kind: EventKind) -> Self {
        Self {
            v: current_version(),
            job_id,
            batch,
            kind,
            mailbox: None,
            tenant: None,
            recipients: 0,
            external_recipients: 0,
            smtp: None,
            refused_recipients: Vec::new(),
            suppressed_recipients: Vec::new(),
            bounced_recipients: Vec::new(),
            reason: None,
            attempt: 0,
            retry_at: None,
            uncertain: false,
            started_at: None,
            message_id: None,
            at: Utc::now(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, ContractError> {
        let e: DeliveryEvent =
            serde_json::from_slice(bytes).map_err(|source| ContractError::Malformed {
                what: "delivery event",
                source,
            })?;
        check_version(e.v)?;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_newer_versions_are_refused() {
        let mut e = DeliveryEvent::new(JobId::parse("j1").unwrap(), None, EventKind::Delivered);
        e.smtp = Some(SmtpReply::new(250, "2.6.0 Queued mail for delivery"));
        let back = DeliveryEvent::from_json(&e.to_json()).unwrap();
        assert_eq!(back, e);
        let mut v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        v["v"] = 2.into();
        let err = DeliveryEvent::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, ContractError::TooNew { found: 2 }));
    }
}
