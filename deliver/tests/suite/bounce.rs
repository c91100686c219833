//! The NDR parser on real-shaped reports: Exchange Online, Postfix, Gmail, a qmail prose
//! bounce, a delay; and what it must leave alone: an Exchange auto-reply, a read receipt,
//! ordinary mail. And what each report proves about itself (`Bounce::provenance`): the
//! tenant's own Exchange or outside, and how it names the original.

#![allow(clippy::unwrap_used)]

use mailpipe_common::contract::{DsnAction, OriginalLink, ReportOrigin};
use mailpipe_common::domain::EmailAddress;
use mailpipe_deliver::bounce::{MAX_SCAN, Report, Why, origin, parse};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/bounces/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn bounce(name: &str) -> mailpipe_common::contract::Bounce {
    match parse(&fixture(name)) {
        Report::Bounce(b) => b,
        other => panic!("{name}: expected a bounce, got {other:?}"),
    }
}

#[test]
fn an_exchange_online_ndr_gives_the_address_the_code_and_the_original_message_id() {
    let b = bounce("exchange_online_ndr.eml");
    assert_eq!(
        b.original_message_id.as_deref(),
        Some("<inv-2026-11-0042.7f3a9c@mailpipe.contoso.example>")
    );
    assert_eq!(b.recipients.len(), 1);
    let r = &b.recipients[0];
    assert_eq!(r.address.as_str(), "nobody@fabrikam.example");
    assert_eq!(r.status.to_string(), "5.1.10");
    assert_eq!(r.action, DsnAction::Failed);
    assert_eq!(
        r.diagnostic.as_deref(),
        Some(
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
        )
    );
    assert!(r.status.suppresses());
}

#[test]
fn a_postfix_dsn_gives_the_original_recipient_and_the_returned_message_id() {
    let b = bounce("postfix_dsn.eml");
    assert_eq!(
        b.original_message_id.as_deref(),
        Some("<inv-2026-11-0007.1b2c@mailpipe.contoso.example>")
    );
    let r = &b.recipients[0];
    assert_eq!(r.address.as_str(), "Old.Account@fabrikam.example");
    assert_eq!(r.status.to_string(), "5.1.1");
    assert!(
        r.diagnostic
            .as_deref()
            .unwrap()
            .starts_with("550 5.1.1 <old.account@fabrikam.example>: Recipient address rejected")
    );
}

#[test]
fn a_gmail_bounce_is_read() {
    let b = bounce("gmail_bounce.eml");
    assert_eq!(
        b.original_message_id.as_deref(),
        Some("<inv-2026-11-0099.aa11@mailpipe.contoso.example>")
    );
    assert_eq!(
        b.recipients[0].address.as_str(),
        "no.such.user.9081@gmail.com"
    );
    assert_eq!(b.recipients[0].status.to_string(), "5.1.1");
}

#[test]
fn a_prose_bounce_from_a_mailer_daemon_is_read_best_effort() {
    let b = bounce("qmail_plain_bounce.eml");
    assert_eq!(b.recipients.len(), 1);
    assert_eq!(b.recipients[0].address.as_str(), "gone@northwind.example");
    assert_eq!(b.recipients[0].status.to_string(), "5.1.1");
    assert_eq!(
        b.original_message_id.as_deref(),
        Some("<inv-2026-11-0200.dd44@mailpipe.contoso.example>")
    );
}

#[test]
fn a_delay_notice_is_not_a_bounce() {
    match parse(&fixture("delay_dsn.eml")) {
        Report::Delayed(d) => {
            assert_eq!(d.recipients[0].address.as_str(), "slow@fabrikam.example");
            assert_eq!(d.recipients[0].status.to_string(), "4.4.1");
            assert_eq!(
                d.original_message_id.as_deref(),
                Some("<inv-2026-11-0123.cc33@mailpipe.contoso.example>")
            );
        }
        other => panic!("expected a delay, got {other:?}"),
    }
}

#[test]
fn auto_replies_read_receipts_and_ordinary_mail_are_left_alone() {
    assert_eq!(
        parse(&fixture("exchange_auto_reply.eml")),
        Report::NotAReport(Why::AutoReply)
    );
    assert_eq!(
        parse(&fixture("read_receipt.eml")),
        Report::NotAReport(Why::ReadReceipt)
    );
    assert_eq!(
        parse(&fixture("ordinary_mail.eml")),
        Report::NotAReport(Why::OrdinaryMail)
    );
    assert_eq!(parse(b""), Report::NotAReport(Why::Unreadable));
}

#[test]
fn a_huge_returned_original_is_not_read_past_the_scan_limit() {
    // The report parts come first; 30 MiB of attachment after them changes nothing.
    let mut raw = fixture("postfix_dsn.eml");
    let tail = raw.split_off(raw.len() - "--4Q1Kx20Zz9z1.1793610001/mx.fabrikam.example--\n".len());
    raw.extend(
        std::iter::repeat_n(
            b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n".as_slice(),
            30 * 1024 * 1024 / 37,
        )
        .flatten(),
    );
    raw.extend(tail);
    assert!(raw.len() > MAX_SCAN * 20);
    let Report::Bounce(b) = parse(&raw) else {
        panic!("expected a bounce");
    };
    assert_eq!(b.recipients[0].status.to_string(), "5.1.1");
}

#[test]
fn recipients_are_bounded() {
    let mut raw = String::from(
        "From: MAILER-DAEMON@x.example\r\nTo: billing1@contoso.example\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n",
    );
    for i in 0..3000 {
        raw.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; u{i}@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
    }
    raw.push_str("\r\n--B--\r\n");
    let Report::Bounce(b) = parse(raw.as_bytes()) else {
        panic!("expected a bounce");
    };
    assert_eq!(b.recipients.len(), mailpipe_deliver::bounce::MAX_RECIPIENTS);
}

#[test]
fn each_report_says_who_wrote_it_and_how_it_names_the_original() {
    let exchange = bounce("exchange_online_ndr.eml");
    assert_eq!(exchange.provenance.origin, ReportOrigin::Tenant);
    assert_eq!(exchange.provenance.link, Some(OriginalLink::Attached));
    for (name, link) in [
        ("postfix_dsn.eml", OriginalLink::Attached),
        ("gmail_bounce.eml", OriginalLink::Attached),
        ("qmail_plain_bounce.eml", OriginalLink::QuotedText),
    ] {
        let b = bounce(name);
        assert_eq!(b.provenance.origin, ReportOrigin::Outside, "{name}");
        assert_eq!(b.provenance.link, Some(link), "{name}");
    }
}

/// A report as an outsider writes it: Exchange's NDR marker and a system sender, but only
/// `In-Reply-To` to link it, and (unless `auth_as` says otherwise) the `Anonymous` stamp
/// Exchange puts on mail from the internet.
fn forged(from: &str, auth_as: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: billing1@contoso.example\r\nSubject: Undeliverable: Invoice\r\n\
         In-Reply-To: <inv-1@mailpipe.contoso.example>\r\nX-MS-Exchange-Message-Is-Ndr: \r\n\
         X-MS-Exchange-Organization-AuthAs: {auth_as}\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n\
         --B\r\nContent-Type: text/plain\r\n\r\nDelivery has failed.\r\n\
         --B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n\
         Final-Recipient: rfc822; ap1@fabrikam.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--B--\r\n"
    )
    .into_bytes()
}

#[test]
fn a_report_from_outside_is_outside_whatever_it_claims() {
    let Report::Bounce(b) = parse(&forged("postmaster@contoso.example", "Anonymous")) else {
        panic!("expected a bounce");
    };
    assert_eq!(b.provenance.origin, ReportOrigin::Outside);
    assert_eq!(b.provenance.link, Some(OriginalLink::InReplyTo));
    assert_eq!(
        b.original_message_id.as_deref(),
        Some("<inv-1@mailpipe.contoso.example>")
    );
    // Claiming `Internal` past a header firewall that did not strip it (or from inside the
    // tenant) still needs a system sender of the mailbox's own tenant.
    let mailbox = EmailAddress::parse("billing1@contoso.example").unwrap();
    for (from, expected) in [
        ("postmaster@attacker.example", ReportOrigin::Outside),
        ("ann@contoso.example", ReportOrigin::Outside),
        ("postmaster@contoso.example", ReportOrigin::Tenant),
        (
            "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.onmicrosoft.com",
            ReportOrigin::Tenant,
        ),
    ] {
        let Report::Bounce(mut b) = parse(&forged(from, "Internal")) else {
            panic!("expected a bounce");
        };
        origin::confirm_for_mailbox(&mut b, &mailbox);
        assert_eq!(b.provenance.origin, expected, "{from}");
    }
}

/// Outlook.com's refusal of a domain without SPF, DKIM and DMARC comes back as an Exchange
/// NDR: it is a bounce like any other, and it names the sender-domain problem (the fix is
/// in DNS, not in the message).
#[test]
fn an_ndr_for_outlook_coms_authentication_requirement_names_the_sender_domain() {
    use mailpipe_deliver::bounce::sender_domain_refusal;
    use mailpipe_deliver::sender_domain::SenderDomainRefusal;
    let original = b"From: billing@contoso.com\r\nTo: someone@outlook.com\r\nMessage-ID: <inv-9@contoso.com>\r\nSubject: Invoice\r\n\r\nbody\r\n";
    let ndr = |status: &str, diagnostic: &str| {
        mailpipe_sim::exchange_ndr(
            "AM0PR01MB1234.eurprd01.prod.exchangelabs.com",
            "postmaster@contoso.com",
            "billing@contoso.com",
            original,
            &[mailpipe_sim::FailedRecipient {
                address: "someone@outlook.com".into(),
                status: status.into(),
                diagnostic: diagnostic.into(),
            }],
            chrono::Utc::now(),
        )
    };
    let refused = ndr(
        "5.7.515",
        "550 5.7.515 Access denied, sending domain contoso.com doesn't meet the required authentication level. The sender's domain in the 5322.From address doesn't meet the authentication requirements defined for the sender.",
    );
    let Report::Bounce(b) = parse(&refused) else {
        panic!("not a bounce")
    };
    assert_eq!(b.recipients[0].status.to_string(), "5.7.515");
    let problem = sender_domain_refusal(&b);
    assert_eq!(problem, Some(SenderDomainRefusal::Authentication));
    assert!(problem.unwrap().hint().contains("check-pool"));
    let dmarc = ndr(
        "5.7.509",
        "550 5.7.509 Access denied, sending domain contoso.com does not pass DMARC verification and has a DMARC policy of reject.",
    );
    let Report::Bounce(b) = parse(&dmarc) else {
        panic!("not a bounce")
    };
    assert_eq!(
        sender_domain_refusal(&b),
        Some(SenderDomainRefusal::Authentication)
    );
    let unknown = ndr(
        "5.1.10",
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    );
    let Report::Bounce(b) = parse(&unknown) else {
        panic!("not a bounce")
    };
    assert_eq!(sender_domain_refusal(&b), None);
}
