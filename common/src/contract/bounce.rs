//! What a non-delivery report says, once parsed (deliver's `bounce` parser makes it, the
//! store records it): which recipients of which message failed, with which status.

use serde::{Deserialize, Serialize};

use super::provenance::Provenance;
use crate::domain::{DsnStatus, EmailAddress};

/// Longest diagnostic text kept per recipient (characters).
pub const MAX_DIAGNOSTIC: usize = 1000;

/// A DSN's `Action` field (RFC 3464 section 2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DsnAction {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

impl DsnAction {
    pub fn parse(s: &str) -> Option<Self> {
        // "failed (bad address)": RFC 3464 allows a comment after the keyword.
        let word = s.trim().split([' ', '(', ';']).next()?.to_ascii_lowercase();
        Some(match word.as_str() {
            "failed" => DsnAction::Failed,
            "delayed" => DsnAction::Delayed,
            "delivered" => DsnAction::Delivered,
            "relayed" => DsnAction::Relayed,
            "expanded" => DsnAction::Expanded,
            _ => return None,
        })
    }
}

/// One recipient the report is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BouncedRecipient {
    pub address: EmailAddress,
    pub status: DsnStatus,
    pub action: DsnAction,
    /// The remote server's words (`Diagnostic-Code`, or Exchange's "Remote Server
    /// returned ..."), at most `MAX_DIAGNOSTIC` characters, control characters removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostic: Option<String>,
}

/// A report of permanent failure for some recipients of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounce {
    /// The original's Message-ID, with angle brackets, when the report carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_message_id: Option<String>,
    pub recipients: Vec<BouncedRecipient>,
    /// Who wrote the report and how it names the original: what decides whether it may
    /// change anything.
    #[serde(default)]
    pub provenance: Provenance,
}

/// A diagnostic as it may be stored and shown: control characters become spaces, runs of
/// spaces one, at most `MAX_DIAGNOSTIC` characters; `None` when nothing is left.
pub fn clean_diagnostic(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut space = false;
    for c in raw.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' {
            if space || out.is_empty() {
                continue;
            }
            space = true;
        } else {
            space = false;
        }
        if out.chars().count() >= MAX_DIAGNOSTIC {
            break;
        }
        out.push(c);
    }
    let out = out.trim_end().to_owned();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_are_cleaned_and_bounded() {
        assert_eq!(
            clean_diagnostic("smtp;\r\n 550\t5.1.1 \x1b[31mno\x07").as_deref(),
            Some("smtp; 550 5.1.1 [31mno")
        );
        assert_eq!(clean_diagnostic(" \r\n"), None);
        assert_eq!(
            clean_diagnostic(&"x".repeat(5000)).unwrap().len(),
            MAX_DIAGNOSTIC
        );
    }

    #[test]
    fn actions_allow_comments() {
        assert_eq!(DsnAction::parse("Failed (bad)"), Some(DsnAction::Failed));
        assert_eq!(DsnAction::parse("delayed"), Some(DsnAction::Delayed));
        assert_eq!(DsnAction::parse("bogus"), None);
    }
}
