//! Property tests for the configuration values that are parsed from text: RabbitMQ's
//! `x-max-age` durations and secret references. A value either means exactly what it says
//! or is refused; reading a secret never blocks or reads without bound.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailpipe_common::config::{MAX_SECRET_FILE_BYTES, SecretRef, parse_max_age};
use proptest::prelude::*;
use secrecy::ExposeSecret;

const UNITS: &[(char, u64)] = &[
    ('Y', 365 * 86_400),
    ('M', 30 * 86_400),
    ('D', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `<positive number><unit>` means exactly that many seconds.
    #[test]
    fn max_age_means_what_it_says(n in 1u64..1_000_000, pick in 0usize..UNITS.len()) {
        let (unit, secs) = UNITS[pick];
        prop_assert_eq!(parse_max_age(&format!("{n}{unit}")), Some(Duration::from_secs(n * secs)));
    }

    /// Anything else (spaces, words, signs, zero, other units, overflow) is refused, never a
    /// panic: `7 days` must fail at --check-config, not at run time.
    #[test]
    fn other_max_ages_are_refused(text in "\\PC{0,24}") {
        let strict = text.len() >= 2
            && UNITS.iter().any(|(u, _)| text.ends_with(*u))
            && text[..text.len() - 1].bytes().all(|b| b.is_ascii_digit());
        match parse_max_age(&text) {
            Some(d) => {
                prop_assert!(strict, "{:?} accepted", text);
                prop_assert!(d > Duration::ZERO);
            }
            None => prop_assert!(!strict || text[..text.len() - 1].parse::<u64>().map_or(true, |n| n == 0 || n.checked_mul(365 * 86_400).is_none()), "{:?} refused", text),
        }
    }

    /// A secret file's value is its content without trailing line ends; an env reference
    /// gives the variable's value.
    #[test]
    fn secret_references_resolve_to_their_value(value in "[ -~]{1,200}", eol in prop::sample::select(vec!["", "\n", "\r\n", "\n\n"])) {
        prop_assume!(!value.ends_with(['\r', '\n']));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{value}{eol}")).unwrap();
        let file = SecretRef { env: None, file: Some(path.clone()) };
        let resolved = file.resolve("x").unwrap();
        prop_assert_eq!(resolved.expose_secret(), value.as_str());
        let both = SecretRef { env: Some("HOME".into()), file: Some(path) };
        prop_assert!(both.resolve("x").is_err());
    }
}

/// A FIFO, a directory or a device as a secret file is refused at once (a FIFO would block
/// the start forever), and so is a file too large to be a secret.
#[test]
fn special_and_oversized_secret_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
    let cases: [(std::path::PathBuf, &str); 4] = [
        (fifo, "not a regular file"),
        (dir.path().to_owned(), "not a regular file"),
        ("/dev/zero".into(), "not a regular file"),
        (big, "larger than"),
    ];
    for (path, why) in cases {
        let secret = SecretRef {
            env: None,
            file: Some(path.clone()),
        };
        let err = secret.resolve("rabbitmq.password").unwrap_err().to_string();
        assert!(
            err.contains(why) && err.contains("rabbitmq.password"),
            "{}: {err}",
            path.display()
        );
    }
}
