//! The shapes the API and the CLI answer with (one shape for both): a batch's report, a
//! job's record, a page of jobs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use mailpipe_common::contract::{
    DeliveryEvent, EventKind, RecipientRefusal, SmtpReply, SuppressedRecipient,
};
use mailpipe_common::domain::{BatchId, EmailAddress, JobId};
use mailpipe_common::store::{BatchControl, JobState};
use serde::Serialize;

use crate::eta::Eta;

/// The states a report counts (a `received` job is not accepted yet), in report order.
pub const KINDS: [EventKind; 9] = [
    EventKind::Accepted,
    EventKind::Rendered,
    EventKind::Delivered,
    EventKind::Retrying,
    EventKind::Failed,
    EventKind::Cancelled,
    EventKind::Expired,
    EventKind::Bounced,
    EventKind::Suppressed,
];

/// Failures listed in a batch report (the total is always given).
pub const FAILURES_SHOWN: usize = 100;

/// Jobs per current state, for one batch. Serialised as a map by state, plus `dead`
/// (the same number as `failed`: a failed job's message is in dead letters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts(pub(crate) [u64; 9]);

impl KindCounts {
    pub fn get(&self, kind: EventKind) -> u64 {
        KINDS
            .iter()
            .position(|k| *k == kind)
            .map(|i| self.0[i])
            .unwrap_or(0)
    }

    pub(crate) fn set(&mut self, kind: EventKind, n: u64) {
        if let Some(i) = KINDS.iter().position(|k| *k == kind) {
            self.0[i] = n;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Jobs that reached an end: delivered, failed, cancelled, expired, bounced or
    /// suppressed.
    pub fn finished(&self) -> u64 {
        self.get(EventKind::Delivered)
            + self.get(EventKind::Failed)
            + self.get(EventKind::Cancelled)
            + self.get(EventKind::Expired)
            + self.get(EventKind::Bounced)
            + self.get(EventKind::Suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_final_state_finishes_a_job() {
        let mut counts = KindCounts::default();
        for kind in KINDS {
            counts.0[KINDS.iter().position(|k| *k == kind).unwrap_or(0)] = 1;
        }
        // Of the nine states, accepted, rendered and retrying are not ends.
        assert_eq!(counts.total(), 9);
        assert_eq!(counts.finished(), 6);
    }
}

impl Serialize for KindCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(KINDS.len() + 1))?;
        for k in KINDS {
            m.serialize_entry(&k, &self.get(k))?;
        }
        m.serialize_entry("dead", &self.get(EventKind::Failed))?;
        m.end()
    }
}

/// One failure in a batch report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub job_id: JobId,
    /// `failed`, or `delivered` when only some recipients were refused.
    pub status: JobState,
    pub at: DateTime<Utc>,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<EmailAddress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpReply>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_recipients: Vec<RecipientRefusal>,
}

impl From<&JobStatus> for Failure {
    fn from(j: &JobStatus) -> Self {
        Self {
            job_id: j.id.clone(),
            status: j.status,
            at: j.updated_at,
            attempt: j.attempt,
            mailbox: j.mailbox.clone(),
            reason: j.reason.clone(),
            smtp: j.smtp.clone(),
            refused_recipients: j.refused_recipients.clone(),
        }
    }
}

/// The batch answer of the API and of `mailpipe-ingest status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchReport {
    pub batch: BatchId,
    /// `running`, `paused` or `cancelled` (`POST /v1/batches/{id}/pause|resume|cancel`).
    pub control: BatchControl,
    /// Jobs accepted in this batch.
    pub jobs: u64,
    /// Every job delivered, failed, cancelled or expired.
    pub finished: bool,
    /// Jobs not at an end yet.
    pub remaining: u64,
    /// Of those, jobs whose `not_before` is still ahead (scheduled sends).
    pub scheduled: u64,
    /// Of those, jobs whose last send is uncertain (the server may have accepted it): held
    /// for a decision (`mailpipe-ingest uncertain list`) or until they may be sent again.
    pub uncertain: u64,
    /// Jobs by current state (`dead` = `failed`).
    pub counts: KindCounts,
    /// Per sending mailbox: jobs delivered through it.
    pub per_mailbox: BTreeMap<EmailAddress, MailboxCounts>,
    pub failures: Failures,
    pub eta: Eta,
    pub first_event_at: DateTime<Utc>,
    pub last_event_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MailboxCounts {
    pub delivered: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failures {
    /// Jobs failed, or delivered with some recipients refused.
    pub total: u64,
    /// How many `items` hold (the oldest first, at most 100).
    pub shown: u64,
    pub items: Vec<Failure>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A job as the system of record holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    pub id: JobId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchId>,
    /// Its current state (docs/data.md).
    pub status: JobState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<DateTime<Utc>>,
    /// Delivery attempts so far.
    pub attempt: u32,
    /// SMTP reply or reason of the latest failure or retry, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The pool mailbox that sent (or last tried to send) it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<EmailAddress>,
    /// The Message-ID of what was sent (or rendered last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// How many recipients (To + Cc + Bcc).
    #[serde(skip_serializing_if = "is_zero")]
    pub recipients: u32,
    /// Their addresses, lower-cased.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recipient_addresses: Vec<String>,
    /// The latest SMTP reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpReply>,
    /// The latest reason (failures without a reply, dead-letter reasons).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Recipients the server refused (the message itself may still be delivered).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_recipients: Vec<RecipientRefusal>,
    /// Recipients deliver left out because they are on the suppression list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suppressed_recipients: Vec<SuppressedRecipient>,
    /// The last send's outcome is unknown (held back, see docs/deliver.md).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub uncertain: bool,
    /// Every event of the job, oldest first (`GET /v1/jobs/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<DeliveryEvent>>,
}

impl JobStatus {
    /// Failed, bounced, or delivered with some recipients refused.
    pub fn has_failure(&self) -> bool {
        matches!(self.status, JobState::Failed | JobState::Bounced)
            || (self.status == JobState::Delivered && !self.refused_recipients.is_empty())
    }
}

/// A page of `GET /v1/jobs`: pass `next_after` as `after` for the next page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobPage {
    pub jobs: Vec<JobStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<JobId>,
}
