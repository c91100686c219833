//! MIME assembly with mail-builder: multipart/alternative (text, HTML) inside
//! multipart/mixed when there are attachments.
//!
//! mail-builder does the encodings: RFC 2047 words for non-ASCII subjects and display
//! names, RFC 2231 for non-ASCII or long file names, base64 for binary parts (the tests
//! check each with an independent parser). Two rules are ours: the message has **no From**
//! (deliver writes it, see `RenderedMeta`) and **no Bcc** (Bcc lives in the envelope only),
//! and the subject is collapsed to one line so template data can never start a header.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::text::Text;
use mail_builder::mime::MimePart;
use mailpipe_common::domain::Mailbox;

use crate::attachments::LoadedAttachment;
use crate::templates::RenderedParts;

/// What goes into one message.
#[derive(Debug, Clone, Copy)]
pub struct MimeInput<'a> {
    pub to: &'a [Mailbox],
    pub cc: &'a [Mailbox],
    pub reply_to: Option<&'a Mailbox>,
    pub parts: &'a RenderedParts,
    /// Without angle brackets: `uuid@domain`.
    pub message_id: &'a str,
    pub date: DateTime<Utc>,
    /// Extra headers from the template (names and values checked when it was loaded).
    pub headers: &'a BTreeMap<String, String>,
    pub attachments: &'a [LoadedAttachment],
}

/// A fresh Message-ID (without angle brackets) under `domain`.
pub fn new_message_id(domain: &str) -> String {
    format!("{}@{domain}", uuid::Uuid::new_v4())
}

/// One line: every run of CR/LF (and other vertical breaks) becomes one space, and
/// surrounding whitespace is trimmed.
pub fn single_line(s: &str) -> Cow<'_, str> {
    let is_break = |c: char| {
        matches!(
            c,
            '\r' | '\n' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}'
        )
    };
    if !s.contains(is_break) && s.trim() == s {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut in_break = false;
    for c in s.chars() {
        if is_break(c) {
            if !in_break {
                out.push(' ');
            }
            in_break = true;
        } else {
            out.push(c);
            in_break = false;
        }
    }
    Cow::Owned(out.trim().to_owned())
}

fn address(m: &Mailbox) -> Address<'_> {
    Address::new_address(m.name.as_deref(), m.address.as_str())
}

fn address_list(list: &[Mailbox]) -> Address<'_> {
    Address::new_list(list.iter().map(address).collect())
}

/// Builds the RFC 5322 bytes (CRLF line endings).
pub fn build(input: MimeInput<'_>) -> Vec<u8> {
    let subject = single_line(&input.parts.subject);
    let mut msg = MessageBuilder::new()
        .message_id(MessageId::new(input.message_id))
        .date(Date::new(input.date.timestamp()))
        .subject(Text::new(subject.as_ref()));
    if !input.to.is_empty() {
        msg = msg.to(address_list(input.to));
    }
    if !input.cc.is_empty() {
        msg = msg.cc(address_list(input.cc));
    }
    if input.to.is_empty() && input.cc.is_empty() {
        // Bcc-only jobs: a visible, empty group instead of no recipient header at all.
        msg = msg.to(Address::new_group(
            Some("undisclosed-recipients"),
            Vec::new(),
        ));
    }
    if let Some(r) = input.reply_to {
        msg = msg.reply_to(address(r));
    }
    for (name, value) in input.headers {
        msg = msg.header(name.as_str(), Text::new(single_line(value)));
    }
    if let Some(text) = &input.parts.text {
        msg = msg.text_body(text.as_str());
    }
    if let Some(html) = &input.parts.html {
        msg = msg.html_body(html.as_str());
    }
    for a in input.attachments {
        let part = MimePart::new(a.content_type.as_str(), a.bytes.as_slice())
            .attachment(a.filename.as_str());
        msg.attachments.get_or_insert_with(Vec::new).push(part);
    }
    let mut out = Vec::new();
    msg.serialize(&mut out);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_collapse_to_one_space() {
        assert_eq!(single_line("a\r\nBcc: x@y.com"), "a Bcc: x@y.com");
        assert_eq!(single_line("a\n\n\rb\u{2028}c"), "a b c");
        assert_eq!(single_line("  plain  "), "plain");
        assert!(matches!(single_line("plain"), Cow::Borrowed(_)));
    }
}
