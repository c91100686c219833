//! RFC 3464 delivery-status fields, per recipient, into `BouncedRecipient`s.

use mailpipe_common::contract::{BouncedRecipient, DsnAction, clean_diagnostic};
use mailpipe_common::domain::{DsnStatus, EmailAddress};

use super::MAX_RECIPIENTS;
use super::fields::{self, Block};

/// What a delivery-status part says: its recipients, and a Message-ID of the original
/// when a per-message field carries one (`X-Original-Message-ID`, Gmail).
#[derive(Debug, Default)]
pub struct Status {
    pub recipients: Vec<BouncedRecipient>,
    pub original_message_id: Option<String>,
}

pub fn parse(text: &str) -> Status {
    let blocks = fields::blocks(text);
    let mut status = Status::default();
    for block in &blocks {
        if let Some(id) = fields::get(block, "x-original-message-id")
            .or_else(|| fields::get(block, "original-message-id"))
            && status.original_message_id.is_none()
        {
            status.original_message_id = super::message_id(id);
        }
        if status.recipients.len() >= MAX_RECIPIENTS {
            break;
        }
        if let Some(r) = recipient(block) {
            status.recipients.push(r);
        }
    }
    status
}

/// A per-recipient block; `None` for the per-message block or an unreadable one.
fn recipient(block: &Block) -> Option<BouncedRecipient> {
    let address = fields::get(block, "original-recipient")
        .and_then(address_of)
        .or_else(|| fields::get(block, "final-recipient").and_then(address_of))?;
    let status = fields::get(block, "status").and_then(status_of);
    let action = fields::get(block, "action").and_then(DsnAction::parse);
    let diagnostic = fields::get(block, "diagnostic-code").and_then(|d| {
        // "smtp; 550 ..." : the type before the first ';' says little.
        let text = d.split_once(';').map_or(d, |(_, rest)| rest);
        clean_diagnostic(text)
    });
    // A status is required by RFC 3464; without one, the diagnostic's enhanced code, or
    // what the action implies.
    let status = status
        .or_else(|| diagnostic.as_deref().and_then(super::plain::first_status))
        .or(match action {
            Some(DsnAction::Failed) => DsnStatus::parse("5.0.0").ok(),
            Some(DsnAction::Delayed) => DsnStatus::parse("4.0.0").ok(),
            _ => None,
        })?;
    let action = action.unwrap_or(match status.class {
        5 => DsnAction::Failed,
        4 => DsnAction::Delayed,
        _ => DsnAction::Delivered,
    });
    Some(BouncedRecipient {
        address,
        status,
        action,
        diagnostic,
    })
}

/// `rfc822; Ann@Example.com` or `rfc822;<ann@example.com>`. Exchange's internal
/// `IMCEAEX-...` forms are not addresses we sent to.
fn address_of(value: &str) -> Option<EmailAddress> {
    let (kind, addr) = value.split_once(';').unwrap_or(("rfc822", value));
    if !kind.trim().eq_ignore_ascii_case("rfc822") {
        return None;
    }
    let addr = addr
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    if addr.len() > 254 || addr.to_ascii_uppercase().starts_with("IMCEA") {
        return None;
    }
    EmailAddress::parse(addr).ok()
}

/// `5.1.1` or `5.1.1 (comment)`.
fn status_of(value: &str) -> Option<DsnStatus> {
    DsnStatus::parse(value.split([' ', '(']).next()?).ok()
}
