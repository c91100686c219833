//! Property tests for reading a server's reply: the enhanced status code pulled from the
//! text, and the class that decides whether a message spends an attempt, is dead-lettered,
//! or holds a mailbox. Whatever text a server (or someone on the path) sends, the parser
//! never panics and the class follows the documented table in `classify.rs`.

#![allow(clippy::unwrap_used)]

use mailpipe_common::contract::SmtpReply;
use mailpipe_deliver::smtp::classify::{MailboxProblem, ReplyClass, TenantProblem, classify};
use proptest::prelude::*;

/// Codes that mean "this mailbox (or tenant) cannot send now": never the message's fault.
const MAILBOX_CODES: &[(&str, ReplyClass)] = &[
    ("5.7.3", ReplyClass::Mailbox(MailboxProblem::Auth)),
    ("5.7.139", ReplyClass::Mailbox(MailboxProblem::Auth)),
    ("5.7.30", ReplyClass::Mailbox(MailboxProblem::Auth)),
    ("5.7.57", ReplyClass::Mailbox(MailboxProblem::Auth)),
    ("5.7.60", ReplyClass::Mailbox(MailboxProblem::SendAs)),
    ("5.2.252", ReplyClass::Mailbox(MailboxProblem::SendAs)),
    ("5.2.251", ReplyClass::Mailbox(MailboxProblem::Throttled)),
    ("5.2.253", ReplyClass::Mailbox(MailboxProblem::Throttled)),
    ("5.2.254", ReplyClass::Mailbox(MailboxProblem::Throttled)),
    ("5.2.255", ReplyClass::Mailbox(MailboxProblem::Throttled)),
    ("5.7.708", ReplyClass::Tenant(TenantProblem::Blocked)),
    ("5.7.233", ReplyClass::Tenant(TenantProblem::ExternalLimit)),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any code and any text: a class, never a panic; the enhanced code, when found, is
    /// the text's first token and of the form class.subject.detail.
    #[test]
    fn any_reply_is_classified(code in 0u16..1000, text in "\\PC{0,120}") {
        let reply = SmtpReply::new(code, text.clone());
        let class = classify(&reply);
        if let Some(enhanced) = &reply.enhanced {
            prop_assert!(text.trim_start().starts_with(enhanced.as_str()));
            let parts: Vec<&str> = enhanced.split('.').collect();
            prop_assert_eq!(parts.len(), 3);
            prop_assert!(matches!(parts[0], "2" | "4" | "5"));
        }
        if (200..400).contains(&code) {
            prop_assert_eq!(class, ReplyClass::Accepted);
        } else {
            prop_assert!(class != ReplyClass::Accepted, "{} {} accepted", code, text);
        }
        // A transient reply never dead-letters a message on its own.
        if (400..500).contains(&code) {
            prop_assert!(class != ReplyClass::MessagePermanent, "{} {}", code, text);
        }
    }

    /// The mailbox- and tenant-level codes are recognised whatever text follows them and
    /// whatever trailing punctuation Exchange puts after the code.
    #[test]
    fn mailbox_level_codes_never_burn_an_attempt(pick in 0usize..MAILBOX_CODES.len(), rest in "[ -~]{0,80}", punct in prop::sample::select(vec!["", ",", ";", ":"]), lead in " {0,3}", code in prop::sample::select(vec![530u16, 535, 550, 554])) {
        let (enhanced, expected) = MAILBOX_CODES[pick];
        let reply = SmtpReply::new(code, format!("{lead}{enhanced}{punct} {rest}"));
        prop_assert_eq!(reply.enhanced.as_deref(), Some(enhanced));
        prop_assert_eq!(classify(&reply), expected);
    }

    /// A 5xx about the message or a recipient (5.1.x, 5.3.x, 5.6.x) is the message's fault:
    /// dead letters, not a mailbox hold and not a retry.
    #[test]
    fn message_faults_are_permanent(subject in prop::sample::select(vec!["1", "3", "6"]), detail in 0u16..20, rest in "[a-zA-Z ]{0,60}") {
        let reply = SmtpReply::new(550, format!("5.{subject}.{detail} {rest}"));
        prop_assert_eq!(classify(&reply), ReplyClass::MessagePermanent);
    }
}
