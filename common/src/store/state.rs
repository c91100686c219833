//! A job's state in the system of record (`jobs.state`).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::contract::EventKind;

/// Where a job is. docs/data.md tells what each state means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Claimed by an ingest publish that is not confirmed yet (not counted as accepted).
    Received,
    Accepted,
    Rendered,
    Retrying,
    Delivered,
    Failed,
    /// Its batch was cancelled before it was sent.
    Cancelled,
    /// Its `not_after` passed before it could be sent.
    Expired,
    /// Accepted by the server, then a non-delivery report came back (final).
    Bounced,
    /// Never sent: every recipient is on the suppression list (final).
    Suppressed,
}

impl JobState {
    pub const ALL: [JobState; 10] = [
        JobState::Received,
        JobState::Accepted,
        JobState::Rendered,
        JobState::Retrying,
        JobState::Delivered,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Expired,
        JobState::Bounced,
        JobState::Suppressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Received => "received",
            JobState::Accepted => "accepted",
            JobState::Rendered => "rendered",
            JobState::Retrying => "retrying",
            JobState::Delivered => "delivered",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
            JobState::Bounced => "bounced",
            JobState::Suppressed => "suppressed",
        }
    }

    /// Delivered, failed, cancelled, expired, bounced or suppressed: nothing more happens
    /// to it on its own (a delivered job may still bounce).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Delivered
                | JobState::Failed
                | JobState::Cancelled
                | JobState::Expired
                | JobState::Bounced
                | JobState::Suppressed
        )
    }

    /// The state an event of `kind` puts a job in.
    pub fn of(kind: EventKind) -> Self {
        match kind {
            EventKind::Accepted => JobState::Accepted,
            EventKind::Rendered => JobState::Rendered,
            EventKind::Delivered => JobState::Delivered,
            EventKind::Retrying => JobState::Retrying,
            EventKind::Failed => JobState::Failed,
            EventKind::Cancelled => JobState::Cancelled,
            EventKind::Expired => JobState::Expired,
            EventKind::Bounced => JobState::Bounced,
            EventKind::Suppressed => JobState::Suppressed,
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown job state {0:?}: one of received, accepted, rendered, retrying, delivered, failed, cancelled, expired, bounced, suppressed"
)]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}
