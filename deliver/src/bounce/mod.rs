//! Reading non-delivery reports: `parse` tells a bounce (with its recipients, their DSN
//! status and the original's Message-ID) from a delay notice and from everything the
//! caller must leave alone (auto-replies, read receipts, ordinary mail). Pure: no I/O.
//!
//! Recognised: RFC 3464 `multipart/report; report-type=delivery-status` (Postfix, Gmail,
//! Exchange Online, whose human text "Remote Server returned '...'" fills a missing
//! diagnostic), and, best effort, prose bounces from a mailer daemon (qmail) where an
//! address and a status code stand next to each other.
//!
//! Each bounce says where it comes from and how it names the original
//! (`Bounce::provenance`: the tenant's own Exchange or outside, attached original, status
//! field, quoted text or only `In-Reply-To`); whether it may change anything is decided
//! when it is recorded (docs/deliver.md, "Which reports are trusted").
//!
//! Bounded: only the first `MAX_SCAN` bytes are parsed (a report's parts come before the
//! returned original, whose attachments are never decoded), at most `MAX_RECIPIENTS`
//! recipients are kept, diagnostics are cleaned and cut (`clean_diagnostic`). Any bytes
//! give an answer, never a panic (tests/suite/bounce_props.rs).

mod dsn;
mod fields;
pub mod origin;
mod plain;
mod signals;

use mail_parser::{Message, MessageParser, MimeHeaders};
use mailpipe_common::contract::{Bounce, BouncedRecipient, DsnAction, OriginalLink, Provenance};
use mailpipe_common::domain::EmailAddress;

/// Bytes of a message parsed; the rest (the returned original's body) is ignored.
pub const MAX_SCAN: usize = 1024 * 1024;
/// Recipients kept from one report (Exchange allows up to 1,000 per message).
pub const MAX_RECIPIENTS: usize = 1000;
/// Longest Message-ID accepted (RFC 5322 line length).
const MAX_MESSAGE_ID: usize = 998;

/// What a message in a pool mailbox's Inbox is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Some recipients failed for good: record it (`Store::record_bounce`).
    Bounce(Bounce),
    /// A server is still trying (4.x.x, `Action: delayed`): not a bounce.
    Delayed(Delay),
    /// Not a delivery report: leave it where it is.
    NotAReport(Why),
}

/// A delay notice: who is still being retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delay {
    pub original_message_id: Option<String>,
    pub recipients: Vec<BouncedRecipient>,
}

/// Why a message is not a delivery report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Not a readable MIME message at all.
    Unreadable,
    /// An out-of-office or other automatic answer (`Auto-Submitted: auto-replied`
    /// without a delivery-status, `X-Auto-Response-Suppress`, "Automatic reply:").
    AutoReply,
    /// A read receipt (`disposition-notification`).
    ReadReceipt,
    /// A delivery report that reports success only (`Action: delivered`, `relayed`).
    SuccessNotice,
    /// It looks like a bounce but names no recipient with a status we can read.
    NoRecipients,
    /// Anything else: a person's mail.
    OrdinaryMail,
}

/// Reads `raw` (the whole message as fetched, `$value`).
pub fn parse(raw: &[u8]) -> Report {
    let scanned = &raw[..raw.len().min(MAX_SCAN)];
    // mail-parser's accessors index `parts[0]`: a message without parts is unreadable.
    let Some(msg) = MessageParser::default()
        .parse(scanned)
        .filter(|m| !m.parts.is_empty())
    else {
        return Report::NotAReport(Why::Unreadable);
    };
    if signals::is_read_receipt(&msg) {
        return Report::NotAReport(Why::ReadReceipt);
    }
    let exchange_text = signals::is_exchange_ndr(&msg)
        .then(|| {
            body_text(&msg)
                .as_deref()
                .and_then(plain::remote_server_returned)
        })
        .flatten();
    let provenance = Provenance {
        origin: origin::of(&msg),
        link: None,
        from: signals::from_address(&msg).and_then(|a| EmailAddress::parse(&a).ok()),
    };
    let original = original_message_id(&msg);
    if let Some(part) = msg.parts.iter().skip(1).find(|p| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("message")
                && ct.subtype().is_some_and(|s| {
                    s.eq_ignore_ascii_case("delivery-status")
                        || s.eq_ignore_ascii_case("global-delivery-status")
                })
        })
    }) {
        let status = dsn::parse(&String::from_utf8_lossy(part.contents()));
        let mut recipients = status.recipients;
        if let Some(text) = exchange_text {
            for r in recipients.iter_mut().filter(|r| r.diagnostic.is_none()) {
                r.diagnostic = Some(text.clone());
            }
        }
        // The returned original first, then the report's own field, then In-Reply-To.
        let original = match original {
            Some(o) if o.1 == OriginalLink::Attached => Some(o),
            other => status
                .original_message_id
                .map(|id| (id, OriginalLink::StatusField))
                .or(other),
        };
        return classify(recipients, original, provenance);
    }
    let bounce_like = signals::is_from_mailer_daemon(&msg) || signals::is_exchange_ndr(&msg);
    if !bounce_like && signals::is_auto_reply(&msg) {
        return Report::NotAReport(Why::AutoReply);
    }
    if bounce_like || signals::has_bounce_subject(&msg) {
        let Some(text) = body_text(&msg) else {
            return Report::NotAReport(Why::NoRecipients);
        };
        let own = signals::own_addresses(&msg);
        let mut recipients = plain::recipients(&text, &own);
        if recipients.is_empty() {
            return Report::NotAReport(Why::NoRecipients);
        }
        if let Some(text) = plain::remote_server_returned(&text) {
            for r in recipients.iter_mut() {
                r.diagnostic = Some(text.clone());
            }
        }
        let original = match original {
            Some(o) if o.1 == OriginalLink::Attached => Some(o),
            other => quoted_message_id(&text)
                .map(|id| (id, OriginalLink::QuotedText))
                .or(other),
        };
        return classify(recipients, original, provenance);
    }
    Report::NotAReport(Why::OrdinaryMail)
}

/// The sender-domain problem a bounce names, when one of its recipients was refused for
/// the From domain's SPF/DKIM/DMARC (`5.7.515`, `5.7.509`, `5.7.26`...) or for a domain
/// the tenant does not have: every message From that domain meets it at that receiver.
pub fn sender_domain_refusal(bounce: &Bounce) -> Option<crate::sender_domain::SenderDomainRefusal> {
    bounce.recipients.iter().find_map(|r| {
        crate::sender_domain::SenderDomainRefusal::of(
            &r.status.to_string(),
            r.diagnostic.as_deref().unwrap_or(""),
        )
    })
}

/// A bounce when any recipient failed for good, else a delay when any is still tried.
fn classify(
    recipients: Vec<BouncedRecipient>,
    original: Option<(String, OriginalLink)>,
    mut provenance: Provenance,
) -> Report {
    provenance.link = original.as_ref().map(|(_, link)| *link);
    let original = original.map(|(id, _)| id);
    if recipients.is_empty() {
        return Report::NotAReport(Why::NoRecipients);
    }
    let (failed, rest): (Vec<_>, Vec<_>) = recipients.into_iter().partition(|r| {
        r.status.is_permanent()
            && !matches!(
                r.action,
                DsnAction::Delivered | DsnAction::Relayed | DsnAction::Expanded
            )
    });
    if !failed.is_empty() {
        return Report::Bounce(Bounce {
            original_message_id: original,
            recipients: failed,
            provenance,
        });
    }
    let delayed: Vec<_> = rest
        .into_iter()
        .filter(|r| r.action == DsnAction::Delayed || r.status.is_transient())
        .collect();
    if delayed.is_empty() {
        return Report::NotAReport(Why::SuccessNotice);
    }
    Report::Delayed(Delay {
        original_message_id: original,
        recipients: delayed,
    })
}

/// The first text part, decoded (from the scanned prefix only).
fn body_text(msg: &Message<'_>) -> Option<String> {
    msg.body_text(0).map(|t| t.into_owned())
}

/// The original's Message-ID and where it was found: in the returned headers
/// (`text/rfc822-headers`) or message (`message/rfc822`), else the report's own
/// `In-Reply-To` (Exchange and Gmail set it to the original; so does any reply, which is
/// why the link is kept with it).
fn original_message_id(msg: &Message<'_>) -> Option<(String, OriginalLink)> {
    for part in msg.parts.iter().skip(1) {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let sub = ct.subtype().unwrap_or_default().to_ascii_lowercase();
        let ctype = ct.ctype().to_ascii_lowercase();
        // A nested message without parts panics mail-parser's accessors (found by
        // tests/suite/bounce_props.rs): skipped.
        if let Some(nested) = part.message().filter(|n| !n.parts.is_empty())
            && let Some(id) = nested.message_id().and_then(message_id)
        {
            return Some((id, OriginalLink::Attached));
        }
        let headers_part = (ctype == "text" && sub == "rfc822-headers")
            || (ctype == "message" && (sub == "rfc822-headers" || sub == "global-headers"));
        if headers_part {
            let text = String::from_utf8_lossy(part.contents());
            if let Some(id) = fields::blocks(&text)
                .first()
                .and_then(|b| fields::get(b, "message-id"))
                .and_then(message_id)
            {
                return Some((id, OriginalLink::Attached));
            }
        }
    }
    signals::header(msg, "In-Reply-To")
        .and_then(|v| message_id(&v))
        .map(|id| (id, OriginalLink::InReplyTo))
}

/// A `Message-ID:` line in a prose bounce's copy of the original.
fn quoted_message_id(text: &str) -> Option<String> {
    text.lines().take(5000).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("message-id")
            .then(|| message_id(value))
            .flatten()
    })
}

/// `<id@host>` from a header value (with or without the brackets, first one only).
pub(crate) fn message_id(value: &str) -> Option<String> {
    let value = value.trim();
    let inner = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        (None, None) => value,
        _ => return None,
    };
    let inner = inner.trim();
    let ok = !inner.is_empty()
        && inner.len() <= MAX_MESSAGE_ID
        && !inner
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>');
    ok.then(|| format!("<{inner}>"))
}
