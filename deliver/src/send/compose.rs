//! The last touch on a rendered message: the From header (and Reply-To) per the pool's
//! From policy, written in front of the MIME render produced (which has no From).

use mail_builder::headers::Header;
use mail_builder::headers::address::Address;
use mailpipe_common::contract::RenderedMeta;
use mailpipe_common::domain::EmailAddress;

use crate::settings::FromPolicy;

/// The bytes to submit through `mailbox`.
///
/// - `mailbox` policy: `From: "<business display name>" <mailbox>`, and the business From
///   as `Reply-To` unless the message has one, so replies reach the business address.
/// - `send_as` policy: `From:` is the business From (the pool only picks mailboxes with
///   Send As rights on it).
pub fn finalize(
    meta: &RenderedMeta,
    mime: &[u8],
    policy: FromPolicy,
    mailbox: &EmailAddress,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(mime.len() + 256);
    let name = meta.from.name.as_deref();
    match policy {
        FromPolicy::Mailbox => {
            write_address(&mut out, "From", name, mailbox.as_str());
            if !meta.has_reply_to && !meta.from.address.eq_ignore_case(mailbox) {
                write_address(&mut out, "Reply-To", name, meta.from.address.as_str());
            }
        }
        FromPolicy::SendAs => write_address(&mut out, "From", name, meta.from.address.as_str()),
    }
    out.extend_from_slice(mime);
    out
}

fn write_address(out: &mut Vec<u8>, header: &str, name: Option<&str>, address: &str) {
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(b": ");
    // mail-builder encodes non-ASCII display names (RFC 2047) and quotes specials.
    Address::new_address(name, address).write_header(out, header.len() + 2);
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailpipe_common::domain::{JobId, Mailbox};

    fn meta(has_reply_to: bool) -> RenderedMeta {
        RenderedMeta {
            v: 1,
            job_id: JobId::parse("j").unwrap(),
            batch: None,
            from: Mailbox::new(
                Some("Zoë Billing".into()),
                EmailAddress::parse("billing@contoso.example").unwrap(),
            )
            .unwrap(),
            has_reply_to,
            recipients: vec![],
            group: None,
            message_id: "<x@y>".into(),
            attempt: 0,
            rendered_at: chrono::Utc::now(),
            not_before: None,
            not_after: None,
            lane: mailpipe_common::contract::Lane::Bulk,
            bulk_queue: 0,
        }
    }

    #[test]
    fn mailbox_policy_rewrites_from_and_keeps_the_business_address_for_replies() {
        let mbx = EmailAddress::parse("mbx1@contoso.example").unwrap();
        let out = String::from_utf8(finalize(
            &meta(false),
            b"Subject: x\r\n\r\nbody",
            FromPolicy::Mailbox,
            &mbx,
        ))
        .unwrap();
        let from = out.lines().find(|l| l.starts_with("From: ")).unwrap();
        assert!(
            from.contains("<mbx1@contoso.example>") && from.contains("=?utf-8?"),
            "{from}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("Reply-To: ") && l.contains("<billing@contoso.example>")),
            "{out}"
        );
        let out = String::from_utf8(finalize(
            &meta(true),
            b"Reply-To: a@b.example\r\n\r\n",
            FromPolicy::Mailbox,
            &mbx,
        ))
        .unwrap();
        assert_eq!(out.matches("Reply-To:").count(), 1, "{out}");
    }

    #[test]
    fn send_as_policy_keeps_the_business_from() {
        let mbx = EmailAddress::parse("mbx1@contoso.example").unwrap();
        let out =
            String::from_utf8(finalize(&meta(false), b"\r\n", FromPolicy::SendAs, &mbx)).unwrap();
        assert!(
            out.starts_with("From: ")
                && out.contains("<billing@contoso.example>")
                && !out.contains("Reply-To"),
            "{out}"
        );
    }
}
