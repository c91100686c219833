//! Identifiers supplied by clients (`JobId`, `BatchId`) and template names: bounded and
//! limited to characters that are safe in URLs, AMQP headers, file names and logs.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} may contain only letters, digits and . _ - : (found {found:?})")]
    Charset { kind: &'static str, found: char },
}

fn check(kind: &'static str, max: usize, input: &str, extra: &[char]) -> Result<(), IdError> {
    if input.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if input.len() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if let Some(found) = input
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(c)))
    {
        return Err(IdError::Charset { kind, found });
    }
    Ok(())
}

macro_rules! ident {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(input: &str) -> Result<Self, IdError> {
                check($kind, $max, input, $extra)?;
                Ok(Self(input.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

ident!(
    /// The client-supplied id of one job: the idempotency key of the whole pipeline.
    JobId, "job id", 128, &['.', '_', '-', ':']
);
ident!(
    /// Groups jobs for status and ETA (a month's invoices, say).
    BatchId, "batch id", 128, &['.', '_', '-', ':']
);
ident!(
    /// A template directory name under the render stage's template root: no dots, so it
    /// can never name a parent directory.
    TemplateName, "template name", 64, &['_', '-']
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_bounded() {
        assert!(JobId::parse("inv-2026-11:000123").is_ok());
        assert!(matches!(JobId::parse(""), Err(IdError::Empty { .. })));
        assert!(matches!(
            JobId::parse(&"x".repeat(129)),
            Err(IdError::TooLong { .. })
        ));
        assert!(matches!(
            JobId::parse("a/b"),
            Err(IdError::Charset { found: '/', .. })
        ));
        assert!(TemplateName::parse("..").is_err());
        assert!(TemplateName::parse("invoice").is_ok());
    }

    proptest! {
        #[test]
        fn job_ids_never_hold_separators_or_controls(input in "\\PC{0,140}") {
            if let Ok(id) = JobId::parse(&input) {
                prop_assert!(id.as_str().len() <= JobId::MAX_LEN);
                prop_assert!(id.as_str().chars().all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c)));
            }
        }

        #[test]
        fn injected_line_breaks_are_refused(a in "[a-z0-9]{1,20}", b in "[a-z0-9: ]{0,20}") {
            let crlf = format!("{a}\r\n{b}");
            prop_assert!(JobId::parse(&crlf).is_err());
            prop_assert!(BatchId::parse(&crlf).is_err());
        }
    }
}
