//! The NDR parser never panics, whatever bytes a mailbox holds, and what it returns is
//! bounded.

use mailpipe_common::contract::MAX_DIAGNOSTIC;
use mailpipe_deliver::bounce::{MAX_RECIPIENTS, Report, parse};
use proptest::prelude::*;

fn check(report: &Report) {
    let recipients = match report {
        Report::Bounce(b) => &b.recipients,
        Report::Delayed(d) => &d.recipients,
        Report::NotAReport(_) => return,
    };
    assert!(recipients.len() <= MAX_RECIPIENTS);
    for r in recipients {
        if let Some(d) = &r.diagnostic {
            assert!(d.chars().count() <= MAX_DIAGNOSTIC);
            assert!(!d.chars().any(char::is_control));
        }
    }
}

/// Pieces of real reports, shuffled together with noise.
fn report_like() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::collection::vec(
        prop_oneof![
            Just(
                "Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n"
                    .to_owned()
            ),
            Just("Content-Type: message/delivery-status\r\n".to_owned()),
            Just("Content-Type: text/rfc822-headers\r\n".to_owned()),
            Just("Content-Type: message/rfc822\r\n".to_owned()),
            Just("--B\r\n".to_owned()),
            Just("\r\n".to_owned()),
            Just("Final-Recipient: rfc822; a@b.example\r\n".to_owned()),
            Just("Status: 5.1.1\r\n".to_owned()),
            Just("Action: failed\r\n".to_owned()),
            Just("Message-ID: <x@y>\r\n".to_owned()),
            Just("X-MS-Exchange-Message-Is-Ndr:\r\n".to_owned()),
            Just("Remote Server returned '550 5.1.10 \x01\x1b'\r\n".to_owned()),
            Just("From: MAILER-DAEMON@x\r\n".to_owned()),
            "[ -~\r\n\t]{0,40}",
            any::<String>(),
        ],
        0..60,
    );
    pieces.prop_map(|p| p.concat().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..4096)) {
        check(&parse(&raw));
    }

    #[test]
    fn report_like_input_never_panics(raw in report_like()) {
        check(&parse(&raw));
    }
}
