//! Property tests for the simulator's SMTP parser: it faces whatever a client writes, so any
//! line parses to some command without panicking, and what it extracts is exactly what the
//! client sent.

use proptest::prelude::*;

use super::parse::{Command, header_from_addresses, parse_command};

fn address() -> impl Strategy<Value = String> {
    ("[a-z0-9._+-]{1,12}", "[a-z]{1,10}\\.(com|org|example)").prop_map(|(l, d)| format!("{l}@{d}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any line at all is some command; never a panic (multi-byte text included).
    #[test]
    fn any_line_parses(line in "\\PC{0,200}") {
        let _ = parse_command(&line);
    }

    /// Any bytes as a message: the From header reader never panics.
    #[test]
    fn any_message_has_some_from(raw in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = header_from_addresses(&raw);
    }

    /// MAIL and RCPT give back exactly the client's address, whatever the case of the verb,
    /// and SIZE is read as sent.
    #[test]
    fn envelope_paths_round_trip(addr in address(), size in proptest::option::of(0u64..100_000_000), upper in any::<bool>()) {
        let (mail, rcpt) = if upper { ("MAIL FROM:", "RCPT TO:") } else { ("mail from:", "rcpt to:") };
        let line = match size {
            Some(n) => format!("{mail}<{addr}> SIZE={n}"),
            None => format!("{mail}<{addr}>"),
        };
        prop_assert_eq!(parse_command(&line), Command::Mail { from: addr.clone(), size });
        prop_assert_eq!(parse_command(&format!("{rcpt}<{addr}>")), Command::Rcpt { to: addr });
    }

    /// A path with whitespace or angle brackets inside is never taken as an address.
    #[test]
    fn broken_paths_are_invalid(addr in address(), bad in prop::sample::select(vec![" ", "<", ">", "\t"]), at in 0usize..5) {
        let cut = at.min(addr.len());
        let broken = format!("{}{}{}", &addr[..cut], bad, &addr[cut..]);
        let cmd = parse_command(&format!("RCPT TO:<{broken}>"));
        prop_assert!(!matches!(cmd, Command::Rcpt { ref to } if to.contains(bad)), "{:?}", cmd);
    }

    /// The From header's addresses are found whatever display name and folding surround them.
    #[test]
    fn from_header_addresses(addr in address(), name in "[A-Za-z ,]{0,20}", fold in any::<bool>()) {
        let sep = if fold { "\r\n " } else { " " };
        let raw = format!("Subject: x\r\nFrom: \"{name}\"{sep}<{addr}>\r\nTo: y@example.com\r\n\r\nFrom: body@example.com\r\n");
        prop_assert_eq!(header_from_addresses(raw.as_bytes()), vec![addr.to_ascii_lowercase()]);
    }
}
