//! `Mailbox`: an address with an optional display name, as in `To: "Name" <addr>`.

use serde::{Deserialize, Deserializer, Serialize};

use super::EmailAddress;

/// Display names longer than this are refused: no mail client shows them and they only
/// serve to inflate headers.
const MAX_NAME_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: EmailAddress,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    #[error("display name contains a control character (CR, LF, tab...)")]
    NameControl,
    #[error("display name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
}

impl Mailbox {
    pub fn new(name: Option<String>, address: EmailAddress) -> Result<Self, MailboxError> {
        let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
        if let Some(n) = &name {
            if n.chars().any(char::is_control) {
                return Err(MailboxError::NameControl);
            }
            if n.chars().count() > MAX_NAME_LEN {
                return Err(MailboxError::NameTooLong);
            }
        }
        Ok(Self { name, address })
    }

    pub fn address_only(address: EmailAddress) -> Self {
        Self {
            name: None,
            address,
        }
    }
}

/// Accepts either `"a@b.com"` or `{"name": "A", "address": "a@b.com"}`.
impl<'de> Deserialize<'de> for Mailbox {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(default)]
            name: Option<String>,
            address: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bare(String),
            Full(Full),
        }
        let (name, address) = match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected an address string or {\"name\", \"address\"} (no other keys)",
            )
        })? {
            Raw::Bare(a) => (None, a),
            Raw::Full(Full { name, address }) => (name, address),
        };
        let address = EmailAddress::parse(&address)
            .map_err(|e| serde::de::Error::custom(format!("{address:?}: {e}")))?;
        Mailbox::new(name, address).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_deserialize() {
        let m: Mailbox = serde_json::from_str(r#""a@b.com""#).unwrap();
        assert_eq!(m.name, None);
        let m: Mailbox = serde_json::from_str(r#"{"name":"Zoë Ä","address":"a@b.com"}"#).unwrap();
        assert_eq!(m.name.as_deref(), Some("Zoë Ä"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<Mailbox>(
            r#"{"name":"Ann","address":"a@b.com","adress":"typo@b.com"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("no other keys"), "{err}");
    }

    #[test]
    fn names_with_line_breaks_are_refused() {
        let err = serde_json::from_str::<Mailbox>(
            r#"{"name":"Eve\r\nBcc: x@y.com","address":"a@b.com"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("control"), "{err}");
    }
}
