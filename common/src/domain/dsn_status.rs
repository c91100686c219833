//! `DsnStatus`: an RFC 3463 enhanced status code (`5.1.10`), parsed, and the one rule
//! that says which permanent failures put an address on the suppression list.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `class.subject.detail`: class 2 (success), 4 (persistent transient) or 5 (permanent),
/// subject and detail of 1 to 3 digits (RFC 3463 section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DsnStatus {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an enhanced status code (class.subject.detail: 2, 4 or 5, then 1 to 3 digits twice, e.g. 5.1.1)"
)]
pub struct DsnStatusError(pub String);

impl DsnStatus {
    pub fn parse(input: &str) -> Result<Self, DsnStatusError> {
        let bad = || DsnStatusError(input.chars().take(40).collect());
        let mut parts = input.trim().split('.');
        let (Some(class), Some(subject), Some(detail), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let digits = |s: &str| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
        if !matches!(class, "2" | "4" | "5") || !digits(subject) || !digits(detail) {
            return Err(bad());
        }
        Ok(Self {
            class: class.parse().map_err(|_| bad())?,
            subject: subject.parse().map_err(|_| bad())?,
            detail: detail.parse().map_err(|_| bad())?,
        })
    }

    /// 5.x.x: the server gave up for good.
    pub fn is_permanent(self) -> bool {
        self.class == 5
    }

    /// 4.x.x: the server is still trying (a delay), or a transient failure.
    pub fn is_transient(self) -> bool {
        self.class == 4
    }

    /// Whether this status proves the *address* is dead, so nothing should be sent to it
    /// again (docs/data.md, "What suppresses"): the address does not exist or cannot
    /// receive, whoever sends.
    ///
    /// - 5.1.0, 5.1.1 (no such mailbox), 5.1.2 (no such domain), 5.1.3 (bad syntax),
    ///   5.1.6 (moved, no forwarding), 5.1.10 (Exchange: RESOLVER.ADR.RecipientNotFound);
    /// - 5.2.1 (mailbox disabled);
    /// - 5.4.1 (Exchange Online: recipient address rejected, access denied: the tenant
    ///   knows no such recipient).
    ///
    /// Not: 4.x.x (still trying); 5.1.7/5.1.8 (the *sender's* address); 5.2.2 (mailbox
    /// full: it may be emptied); 5.2.3 (this message too big); 5.7.x (policy, spam,
    /// authentication: about the sender or the content, not the address); 5.4.x other than
    /// 5.4.1 (routing, DNS: may be fixed); 5.0.0 and the rest (not specific enough).
    pub fn suppresses(self) -> bool {
        self.class == 5
            && matches!(
                (self.subject, self.detail),
                (1, 0 | 1 | 2 | 3 | 6 | 10) | (2, 1) | (4, 1)
            )
    }
}

impl fmt::Display for DsnStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl FromStr for DsnStatus {
    type Err = DsnStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for DsnStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DsnStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_enhanced_codes() {
        let s = DsnStatus::parse("5.1.10").unwrap();
        assert_eq!((s.class, s.subject, s.detail), (5, 1, 10));
        assert_eq!(s.to_string(), "5.1.10");
        for bad in ["", "5.1", "6.1.1", "5.1.1.1", "5.1234.1", "5.a.1", "5..1"] {
            assert!(DsnStatus::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_address_failures_suppress() {
        for yes in ["5.1.1", "5.1.10", "5.1.2", "5.2.1", "5.4.1"] {
            assert!(DsnStatus::parse(yes).unwrap().suppresses(), "{yes}");
        }
        for no in [
            "4.1.1", "4.4.7", "5.2.2", "5.7.1", "5.1.8", "5.0.0", "5.4.4", "2.0.0",
        ] {
            assert!(!DsnStatus::parse(no).unwrap().suppresses(), "{no}");
        }
    }
}
