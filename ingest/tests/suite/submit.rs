//! `submit`: the library function the CLI uses, and the binary itself.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::process::Command;

use mailpipe_common::testkit::TestBroker;
use mailpipe_ingest::batch::ImportError;
use mailpipe_ingest::submit::{Display, SubmitError, SubmitOptions, submit};
use support::{fixture_dir, job_json, settings_for, write_jsonl};

#[tokio::test]
async fn ten_thousand_lines_are_published_completely_and_a_second_submit_publishes_nothing() {
    let t = TestBroker::start("sub-10k").await;
    let dir = fixture_dir();
    let settings = settings_for(dir.path());
    let file = write_jsonl(
        dir.path(),
        "jobs.jsonl",
        (0..10_000).map(|i| job_json(&format!("inv-{i:05}"))),
    );
    let options = SubmitOptions {
        file: file.clone(),
        batch: Some("nov".parse().unwrap()),
        partial: false,
        display: Display::Quiet,
        callback_url: None,
    };
    let report = submit(&t.pipeline, &settings, &options)
        .await
        .expect("submit");
    assert_eq!(
        (
            report.lines,
            report.accepted,
            report.duplicates,
            report.rejected
        ),
        (10_000, 10_000, 0, 0)
    );
    let queue = t
        .broker
        .topology()
        .stage_queue(mailpipe_common::amqp::Stage::Render);
    assert_eq!(t.depth(&queue).await, 10_000);

    let again = submit(&t.pipeline, &settings, &options)
        .await
        .expect("second submit");
    assert_eq!(
        (again.accepted, again.duplicates),
        (0, 10_000),
        "ids accepted before are skipped"
    );
    assert_eq!(t.depth(&queue).await, 10_000);
    t.cleanup().await;
}

#[tokio::test]
async fn bad_lines_are_reported_exactly_and_nothing_is_published() {
    let t = TestBroker::start("sub-bad").await;
    let dir = fixture_dir();
    let settings = settings_for(dir.path());
    let lines = (1..=100).map(|i| match i {
        7 => r#"{"id":"x7","template":"invoice","to":["nope"]}"#.to_owned(),
        50 => "{not json".to_owned(),
        99 => {
            r#"{"id":"x99","template":"invoice","to":["a@example.com"],"colour":"red"}"#.to_owned()
        }
        _ => job_json(&format!("ok-{i}")),
    });
    let file = write_jsonl(dir.path(), "jobs.jsonl", lines);
    let options = SubmitOptions {
        file,
        batch: None,
        partial: false,
        display: Display::Quiet,
        callback_url: None,
    };
    let err = submit(&t.pipeline, &settings, &options)
        .await
        .expect_err("rejected");
    assert_eq!(err.exit_code(), 1);
    let SubmitError::Import(ImportError::Rejected(report)) = err else {
        panic!("{err}")
    };
    assert_eq!(
        report.errors.iter().map(|e| e.line).collect::<Vec<_>>(),
        vec![7, 50, 99]
    );
    assert_eq!((report.lines, report.rejected), (100, 3));
    let queue = t
        .broker
        .topology()
        .stage_queue(mailpipe_common::amqp::Stage::Render);
    assert_eq!(t.depth(&queue).await, 0);
    t.cleanup().await;
}

fn config_file(dir: &std::path::Path, t: &TestBroker) -> std::path::PathBuf {
    let path = dir.join("mailpipe.toml");
    // The topology arguments must match the test broker's, or declaring it fails.
    let r = &t.settings;
    let delays: Vec<String> = r
        .retry_delays_ms
        .iter()
        .map(|d| d.as_millis().to_string())
        .collect();
    let text = format!(
        "[rabbitmq]\nurl = {:?}\nprefix = {:?}\ndelivery_limit = {}\nretry_delays_ms = [{}]\nevents_max_age = {:?}\n\n[ingest]\ntemplates_dir = {:?}\n",
        r.url,
        r.prefix,
        r.delivery_limit,
        delays.join(", "),
        r.events_max_age,
        dir.join("templates")
    );
    let text = format!("{text}{}", t.database_toml());
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn the_binary_reports_bad_lines_exits_non_zero_and_partial_publishes_the_rest() {
    let t = TestBroker::start("sub-bin").await;
    let dir = fixture_dir();
    let config = config_file(dir.path(), &t);
    let lines = (1..=20).map(|i| match i {
        3 => r#"{"id":"x3","template":"invoice","to":[{"name":"Eve\r\nBcc: x@y.com","address":"a@example.com"}]}"#.to_owned(),
        11 => r#"{"id":"x11","template":"missing","to":["a@example.com"]}"#.to_owned(),
        _ => job_json(&format!("bin-{i}")),
    });
    let file = write_jsonl(dir.path(), "jobs.jsonl", lines);
    let bin = env!("CARGO_BIN_EXE_mailpipe-ingest");
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["submit", "--batch", "b1"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("20 lines, 0 accepted, 0 duplicates (skipped), 2 rejected"),
        "{stdout}"
    );
    assert!(
        stdout.contains("line 3: to[0]:") && stdout.contains("line 11: template:"),
        "{stdout}"
    );
    assert!(stdout.contains("nothing was published"), "{stdout}");
    let queue = t
        .broker
        .topology()
        .stage_queue(mailpipe_common::amqp::Stage::Render);
    assert_eq!(t.depth(&queue).await, 0);

    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["submit", "--partial"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "rejected lines still make the exit non-zero: {stdout}"
    );
    assert!(stdout.contains("18 accepted"), "{stdout}");
    assert_eq!(t.depth(&queue).await, 18);
    t.cleanup().await;
}

#[test]
fn config_errors_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[ingest]\nmax_in_flight = \"lots\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-ingest"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ingest.max_in_flight"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = Command::new(env!("CARGO_BIN_EXE_mailpipe-ingest"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Examples:"));
}

/// A job whose data misspells what the invoice template reads (`invoice_numbr`).
fn misspelled_job(id: &str) -> String {
    job_json(id).replace("invoice_number", "invoice_numbr")
}

#[tokio::test]
async fn a_misspelled_variable_is_refused_naming_it_and_nothing_is_published() {
    let t = TestBroker::start("sub-undef").await;
    let dir = fixture_dir();
    let settings = settings_for(dir.path());
    let lines = (1..=5).map(|i| match i {
        4 => misspelled_job("u4"),
        _ => job_json(&format!("u-{i}")),
    });
    let options = SubmitOptions {
        file: write_jsonl(dir.path(), "jobs.jsonl", lines),
        batch: None,
        partial: false,
        display: Display::Quiet,
        callback_url: None,
    };
    let err = submit(&t.pipeline, &settings, &options)
        .await
        .expect_err("rejected");
    let SubmitError::Import(ImportError::Rejected(report)) = err else {
        panic!("{err}")
    };
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let e = &report.errors[0];
    assert_eq!((e.line, e.field.as_str()), (4, "data.invoice_number"));
    assert!(
        e.reason
            .contains("undefined variable `data.invoice_number`")
            && e.reason.contains("invoice/subject.txt line 1"),
        "{}",
        e.reason
    );
    let queue = t
        .broker
        .topology()
        .stage_queue(mailpipe_common::amqp::Stage::Render);
    assert_eq!(t.depth(&queue).await, 0);
    t.cleanup().await;
}

/// A configuration whose broker cannot be reached: what works with it needs no broker.
fn brokerless_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("no-broker.toml");
    std::fs::write(
        &path,
        format!(
            "[rabbitmq]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\n\n[ingest]\ntemplates_dir = {:?}\n",
            dir.join("templates")
        ),
    )
    .unwrap();
    path
}

fn ingest(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-ingest"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dry_run_checks_and_renders_every_line_without_a_broker() {
    let dir = fixture_dir();
    let config = brokerless_config(dir.path());
    let good = write_jsonl(
        dir.path(),
        "good.jsonl",
        (1..=3).map(|i| job_json(&format!("d-{i}"))),
    );
    let (code, stdout, stderr) = ingest(&[
        "--config".as_ref(),
        config.as_os_str(),
        "submit".as_ref(),
        "--dry-run".as_ref(),
        good.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("3 lines checked and rendered, 3 good, 0 bad; nothing was published"),
        "{stdout}"
    );

    let bad = write_jsonl(
        dir.path(),
        "bad.jsonl",
        (1..=3).map(|i| match i {
            2 => misspelled_job("d-2"),
            _ => job_json(&format!("d-{i}")),
        }),
    );
    let (code, stdout, stderr) = ingest(&[
        "--config".as_ref(),
        config.as_os_str(),
        "submit".as_ref(),
        "--dry-run".as_ref(),
        bad.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("line 2: data.invoice_number: undefined variable `data.invoice_number`"),
        "{stdout}"
    );
    assert!(stdout.contains("2 good, 1 bad"), "{stdout}");

    // The shipped CSV example, nested columns and all, passes the same check.
    let csv = support::examples_dir().join("jobs/batch.csv");
    let (code, stdout, stderr) = ingest(&[
        "--config".as_ref(),
        config.as_os_str(),
        "submit".as_ref(),
        "--dry-run".as_ref(),
        csv.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
}

#[cfg(unix)]
#[test]
fn submit_refuses_what_is_not_a_regular_file_before_connecting() {
    let dir = fixture_dir();
    // The broker is unreachable: exit 3 would mean the file was not checked first.
    let config = brokerless_config(dir.path());
    let fifo = dir.path().join("fifo.jsonl");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let zero = dir.path().join("zero.jsonl");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let directory = dir.path().join("folder.csv");
    std::fs::create_dir(&directory).unwrap();
    let missing = dir.path().join("nosuchfile.jsonl");
    for (path, expected) in [
        (&fifo, "is a FIFO, not a regular file"),
        (&zero, "is a device, not a regular file"),
        (&directory, "is a directory, not a regular file"),
        (&missing, "No such file or directory"),
    ] {
        for dry_run in [false, true] {
            let mut args = vec!["--config".as_ref(), config.as_os_str(), "submit".as_ref()];
            if dry_run {
                args.push("--dry-run".as_ref());
            }
            args.push(path.as_os_str());
            let (code, stdout, stderr) = ingest(&args);
            assert_eq!(code, Some(2), "{path:?}: {stdout}\n{stderr}");
            let said = format!("{stdout}{stderr}");
            assert!(
                said.contains(expected) && said.contains(&*path.to_string_lossy()),
                "{path:?}: {said}"
            );
            assert!(!said.contains("RabbitMQ"), "{said}");
        }
    }
}
