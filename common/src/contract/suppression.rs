//! Why an address is on the suppression list, and what deliver records when it drops a
//! suppressed recipient from a send.

use serde::{Deserialize, Serialize};

use crate::domain::EmailAddress;

/// Where a suppression came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionSource {
    /// A hard bounce (an NDR with a status that proves the address dead).
    Bounce,
    /// The server refused the recipient at RCPT TO with such a status.
    RcptRefused,
    /// An operator (API or CLI).
    Operator,
}

impl SuppressionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionSource::Bounce => "bounce",
            SuppressionSource::RcptRefused => "rcpt_refused",
            SuppressionSource::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            SuppressionSource::Bounce,
            SuppressionSource::RcptRefused,
            SuppressionSource::Operator,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A recipient deliver dropped from the envelope because it is suppressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressedRecipient {
    pub address: EmailAddress,
    pub source: SuppressionSource,
    pub reason: String,
}
