//! Property tests for the batch readers (JSONL and CSV): whatever an upload holds, every
//! non-blank line is reported once, under its own line number, valid ones as jobs and bad
//! ones as errors, and a line over the size limit is refused without stopping the rest.

#![allow(clippy::unwrap_used)]

use mailpipe_common::contract::JobLimits;
use mailpipe_ingest::batch_reader::{Format, read_jobs};
use mailpipe_ingest::validate::Validator;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Line {
    Good,
    Blank,
    Garbage(String),
    TooLong,
}

fn line() -> impl Strategy<Value = Line> {
    prop_oneof![
        4 => Just(Line::Good),
        1 => Just(Line::Blank),
        2 => "[a-z{}\\[\\]\",:0-9 ]{1,40}".prop_map(Line::Garbage),
        1 => Just(Line::TooLong),
    ]
}

const MAX_JOB_BYTES: usize = 2_000;
/// What the CSV reader may buffer beyond the job limit (`batch_reader::CSV_BUFFER`).
const CSV_BUFFER: usize = 64 * 1024;

fn validator() -> Validator {
    let limits = JobLimits {
        max_job_bytes: MAX_JOB_BYTES,
        ..JobLimits::default()
    };
    Validator::new(limits, None, None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn jsonl_lines_are_reported_once_under_their_own_number(lines in prop::collection::vec(line(), 0..40), crlf in any::<bool>()) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut upload = String::new();
        let mut expected = Vec::new(); // (line number, should be ok)
        for (i, l) in lines.iter().enumerate() {
            let n = i as u64 + 1;
            match l {
                Line::Good => {
                    upload.push_str(&format!(r#"{{"id":"j{n}","template":"invoice","to":["a{n}@example.com"]}}"#));
                    expected.push((n, true));
                }
                Line::Blank => {}
                Line::Garbage(g) => {
                    if g.trim().is_empty() { continue_blank(&mut upload, eol); continue; }
                    upload.push_str(g);
                    // Garbage that happens to be a valid job is impossible: no "id" key.
                    expected.push((n, false));
                }
                Line::TooLong => {
                    upload.push_str(&format!(r#"{{"id":"j{n}","template":"invoice","to":["a@example.com"],"data":{{"pad":"{}"}}}}"#, "x".repeat(MAX_JOB_BYTES)));
                    expected.push((n, false));
                }
            }
            upload.push_str(eol);
        }
        let mut seen = Vec::new();
        read_jobs(upload.as_bytes(), Format::Jsonl, &validator(), |n, r| seen.push((n, r.is_ok())))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(seen, expected);
    }

    /// Any bytes as an upload, in either format: an error or some lines, never a panic, and
    /// line numbers only grow.
    #[test]
    fn any_upload_is_read_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..600), csv in any::<bool>()) {
        let format = if csv { Format::Csv } else { Format::Jsonl };
        let mut last = 0u64;
        let mut ordered = true;
        let _ = read_jobs(&bytes[..], format, &validator(), |n, _| {
            ordered &= n > last;
            last = n;
        });
        prop_assert!(ordered);
    }

    /// A CSV record that never ends (an unterminated quote) is refused once it passes the
    /// size limit (the job limit plus the reader's 64 KiB buffer: memory stays bounded),
    /// naming the line where it started; the rows before it are read.
    #[test]
    fn csv_records_are_bounded(good_rows in 0usize..5, tail in prop_oneof![0usize..MAX_JOB_BYTES, (MAX_JOB_BYTES + CSV_BUFFER + 1)..(MAX_JOB_BYTES + CSV_BUFFER + 200_000)]) {
        let mut upload = String::from("id,template,to\n");
        for i in 0..good_rows {
            upload.push_str(&format!("j{i},invoice,a{i}@example.com\n"));
        }
        upload.push_str("jx,invoice,\"");
        upload.push_str(&"y".repeat(tail));
        let mut rows = 0;
        let result = read_jobs(upload.as_bytes(), Format::Csv, &validator(), |_, _| rows += 1);
        prop_assert!(rows >= good_rows);
        if tail > MAX_JOB_BYTES + CSV_BUFFER {
            let err = result.expect_err("a record past the limit");
            let text = err.to_string();
            let expected_line = format!("line {}", good_rows + 2);
            prop_assert!(text.contains(&expected_line), "{}", text);
        }
    }
}

fn continue_blank(upload: &mut String, eol: &str) {
    upload.push_str(eol);
}
