//! `EmailAddress`: an addr-spec that is safe to put in a header or an SMTP envelope.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest address SMTP allows in a path (RFC 5321 4.5.3.1.3).
const MAX_LEN: usize = 254;
const MAX_LOCAL_LEN: usize = 64;

/// A syntactically valid address (`local@domain`), without display name, all ASCII:
/// an internationalised domain (`müller.example`) is stored in punycode
/// (`xn--mller-kva.example`, IDNA/UTS 46); a non-ASCII local part is refused, since
/// mailpipe does not send SMTPUTF8.
///
/// The parser is deliberately stricter than RFC 5322: no quoted local parts, no comments,
/// no whitespace and no control characters, because every address ends up in a header line
/// and an SMTP command, where CR/LF would be an injection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailAddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("address contains a control character or whitespace")]
    ControlOrSpace,
    #[error("address must contain exactly one '@' between a local part and a domain")]
    Shape,
    #[error(
        "local part {0:?} is not allowed (1-64 characters of letters, digits and !#$%&'*+/=?^_`{{|}}~.- without leading, trailing or doubled dots)"
    )]
    LocalPart(String),
    #[error("domain {0:?} is not a valid host name")]
    Domain(String),
    #[error(
        "local part {0:?} is not ASCII: mailpipe does not send SMTPUTF8, so only ASCII local parts can be delivered (an internationalised domain is fine: it is sent as punycode)"
    )]
    NonAsciiLocalPart(String),
}

impl EmailAddress {
    pub fn parse(input: &str) -> Result<Self, EmailAddressError> {
        if input.is_empty() {
            return Err(EmailAddressError::Empty);
        }
        if input.len() > MAX_LEN {
            return Err(EmailAddressError::TooLong);
        }
        if input.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(EmailAddressError::ControlOrSpace);
        }
        let (local, domain) = match input.split_once('@') {
            Some((l, d)) if !d.contains('@') => (l, d),
            _ => return Err(EmailAddressError::Shape),
        };
        if !local.is_ascii() {
            return Err(EmailAddressError::NonAsciiLocalPart(local.to_owned()));
        }
        if !valid_local(local) {
            return Err(EmailAddressError::LocalPart(local.to_owned()));
        }
        // Only a non-ASCII domain is converted, so ASCII ones stay as written.
        let ascii = if domain.is_ascii() {
            domain.to_owned()
        } else {
            idna::domain_to_ascii(domain)
                .map_err(|_| EmailAddressError::Domain(domain.to_owned()))?
        };
        if !valid_domain(&ascii) {
            return Err(EmailAddressError::Domain(domain.to_owned()));
        }
        let address = format!("{local}@{ascii}");
        if address.len() > MAX_LEN {
            return Err(EmailAddressError::TooLong);
        }
        Ok(Self(address))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn local_part(&self) -> &str {
        self.0.split_once('@').map(|(l, _)| l).unwrap_or_default()
    }

    /// The domain, as written (compare with `eq_ignore_ascii_case`).
    pub fn domain(&self) -> &str {
        self.0.split_once('@').map(|(_, d)| d).unwrap_or_default()
    }

    /// Addresses compare case-insensitively in practice (Exchange does), so
    /// send-as lists and idempotency use this form.
    pub fn eq_ignore_case(&self, other: &EmailAddress) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

fn valid_local(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+/=?^_`{|}~.-";
    !local.is_empty()
        && local.len() <= MAX_LOCAL_LEN
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || SPECIALS.contains(c))
}

fn valid_domain(domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let labels: Vec<&str> = domain.split('.').collect();
    domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        // The top-level label is never all digits: rules out bare IPs like 1.2.3.4.
        && labels.last().is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()))
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for EmailAddress {
    type Err = EmailAddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for EmailAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_addresses() {
        for ok in [
            "a@b.co",
            "first.last+tag@sub.example.com",
            "o'neil@example.org",
            "x_y-z@ex-ample.de",
        ] {
            assert!(EmailAddress::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_malformed_addresses() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@@b.com",
            "a@b@c.com",
            "a..b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a@example",
            "a@-bad.com",
            "a@1.2.3.4",
            "a b@example.com",
            "<a@example.com>",
            "a@example.com\r\nBcc: victim@example.com",
            "a@exa\nmple.com",
            "a\u{0}@example.com",
            "\"quoted\"@example.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn internationalised_domains_become_punycode_and_non_ascii_local_parts_are_refused() {
        let a = EmailAddress::parse("zoe@müller.example").unwrap();
        assert_eq!(a.as_str(), "zoe@xn--mller-kva.example");
        assert_eq!(a.domain(), "xn--mller-kva.example");
        assert_eq!(
            EmailAddress::parse("info@例え.jp").unwrap().as_str(),
            "info@xn--r8jz45g.jp"
        );
        // ASCII domains are kept as written.
        assert_eq!(
            EmailAddress::parse("a@Example.COM").unwrap().as_str(),
            "a@Example.COM"
        );
        for bad in ["zoë@example.com", "用户@例え.jp"] {
            let e = EmailAddress::parse(bad).unwrap_err();
            assert!(
                matches!(e, EmailAddressError::NonAsciiLocalPart(_)),
                "{bad}"
            );
            assert!(e.to_string().contains("SMTPUTF8"), "{e}");
        }
        assert!(EmailAddress::parse("a@exa mple.com").is_err());
        assert!(EmailAddress::parse("a@xn--.example").is_err());
    }

    #[test]
    fn deserialising_validates() {
        let err =
            serde_json::from_str::<EmailAddress>("\"x@y.com\\r\\nBcc: z@w.com\"").unwrap_err();
        assert!(err.to_string().contains("control"), "{err}");
    }

    proptest! {
        /// Whatever is put around a valid address, a CR, LF or other control character
        /// anywhere makes it unconstructible: header injection cannot start here.
        #[test]
        fn control_characters_never_pass(prefix in "[a-z]{1,10}", suffix in "[a-z]{0,10}", ctl in prop::char::range('\u{0}', '\u{1f}')) {
            let input = format!("{prefix}{ctl}{suffix}@example.com");
            prop_assert!(EmailAddress::parse(&input).is_err());
            let input = format!("{prefix}@example.com{ctl}{suffix}");
            prop_assert!(EmailAddress::parse(&input).is_err());
        }

        /// Anything that parses is free of characters that could break a header or a command.
        #[test]
        fn parsed_addresses_are_header_safe(input in "\\PC{0,40}") {
            if let Ok(addr) = EmailAddress::parse(&input) {
                prop_assert!(addr.as_str().is_ascii());
                prop_assert!(!addr.as_str().chars().any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>' || c == ',' || c == ':' || c == '"'));
                prop_assert_eq!(addr.as_str().matches('@').count(), 1);
            }
        }

        #[test]
        fn generated_valid_addresses_parse(local in "[a-z0-9][a-z0-9._+-]{0,20}[a-z0-9]", domain in "[a-z][a-z0-9-]{0,10}[a-z0-9]\\.(com|org|example)") {
            prop_assume!(!local.contains(".."));
            let input = format!("{local}@{domain}");
            let addr = EmailAddress::parse(&input).expect("valid");
            prop_assert_eq!(addr.domain(), domain.as_str());
        }
    }
}
