//! Errors that end: the command-line tools against a real RabbitMQ that refuses them (or
//! is not there) exit 3 with a message naming the problem, at once for a refusal and
//! after `--broker-timeout` for an unreachable broker; `serve` binds its HTTP first and
//! says on `/readyz` what it waits for. (`status` and `jobs` read the database only: no
//! broker is involved.)

#![allow(clippy::unwrap_used)]

use crate::support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mailpipe_common::config::TelemetrySettings;
use mailpipe_common::testkit::{amqp_url, unique_prefix};
use mailpipe_ingest::{Application, Config};
use tokio_util::sync::CancellationToken;

use support::{fixture_dir, settings_for, test_pool};

/// Runs `mailpipe-ingest` with the broker at `url`; kills it (and fails) after `limit`, so
/// a tool that retries forever makes the test fail instead of hang.
fn run_ingest(url: &str, args: &[&str], limit: Duration) -> (Output, Duration) {
    run_ingest_on(url, &unique_prefix("ing-brokererr"), args, limit)
}

fn run_ingest_on(url: &str, prefix: &str, args: &[&str], limit: Duration) -> (Output, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailpipe.toml");
    let database = test_database();
    std::fs::write(
        &config,
        format!(
            "[rabbitmq]\nurl = {url:?}\nprefix = {prefix:?}\n[database]\nurl = {:?}\nschema = {:?}\n",
            database.url, database.schema
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailpipe-ingest"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), started.elapsed());
        }
        if started.elapsed() > limit {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!(
                "mailpipe-ingest {args:?} still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh schema of the test database (the database must work: these tests are about
/// the broker).
fn test_database() -> mailpipe_common::store::DatabaseSettings {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(mailpipe_common::testkit::ensure_test_database());
    mailpipe_common::testkit::database_settings("ing-brokererr")
}

/// The development broker's URL with other credentials or another vhost.
fn url_with(userinfo: &str, vhost: &str) -> String {
    let url = amqp_url();
    let host = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    format!("amqp://{userinfo}@{host}/{vhost}")
}

fn batch_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("jobs.jsonl");
    std::fs::write(&path, format!("{}\n", support::job_json("brokererr-1"))).unwrap();
    path
}

#[test]
fn a_refused_password_ends_every_command_at_once_with_exit_3() {
    let url = url_with("guest:not-the-password", "%2f");
    let dir = tempfile::tempdir().unwrap();
    let file = batch_file(dir.path());
    for args in [vec!["dead", "list"], vec!["submit", file.to_str().unwrap()]] {
        // --broker-timeout 10m: only a refusal taken as permanent ends within the limit.
        let mut all = vec!["--broker-timeout", "10m"];
        all.extend(&args);
        let (out, _) = run_ingest(&url, &all, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(
            stderr.contains("ACCESS_REFUSED") && stderr.contains("rabbitmq.password"),
            "{args:?} says what was refused and what to check: {stderr}"
        );
        assert!(
            !stderr.contains("not-the-password"),
            "the password never shows: {stderr}"
        );
    }
}

#[test]
fn a_missing_vhost_ends_at_once_with_exit_3() {
    let url = url_with("guest:guest", "no-such-vhost-mailpipe");
    let (out, _) = run_ingest(
        &url,
        &["--broker-timeout", "10m", "dead", "list"],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("NOT_ALLOWED") && stderr.contains("vhost"),
        "names the vhost problem: {stderr}"
    );
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn an_unreachable_broker_ends_after_the_broker_timeout_with_exit_3() {
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port());
    let dir = tempfile::tempdir().unwrap();
    let file = batch_file(dir.path());
    for args in [
        vec!["--broker-timeout", "2s", "dead", "list"],
        vec!["--broker-timeout", "2s", "submit", file.to_str().unwrap()],
    ] {
        let (out, took) = run_ingest(&url, &args, Duration::from_secs(90));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(
            stderr.contains("giving up") && stderr.contains("127.0.0.1"),
            "{args:?}: {stderr}"
        );
        assert!(
            took >= Duration::from_secs(2),
            "it tried for the whole --broker-timeout first ({took:?})"
        );
    }
}

#[test]
fn a_bad_broker_timeout_is_refused_naming_the_flag() {
    let (out, _) = run_ingest(
        &amqp_url(),
        &["--broker-timeout", "soon", "dead", "list"],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--broker-timeout"), "{stderr}");
}

#[tokio::test]
async fn serve_answers_healthz_at_once_and_readyz_names_the_broker_it_waits_for() {
    let dir = fixture_dir();
    let port = closed_port();
    let mut rabbitmq = mailpipe_common::testkit::settings("ing-unreachable");
    rabbitmq.url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let config = Config {
        rabbitmq,
        telemetry: TelemetrySettings::default(),
        database: mailpipe_common::testkit::database_settings("ing-unreachable"),
        ingest: settings_for(dir.path()),
        pool: Ok(test_pool()),
    };
    let shutdown = CancellationToken::new();
    let app = tokio::time::timeout(
        Duration::from_secs(30),
        Application::build(config, shutdown.clone()),
    )
    .await
    .expect("build binds without waiting for RabbitMQ")
    .expect("builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let run = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(
        body.contains(&format!("RabbitMQ at amqp://guest@127.0.0.1:{port}"))
            && body.contains("making the database schema current"),
        "{body}"
    );
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("stops while still waiting for RabbitMQ")
        .unwrap()
        .unwrap();
}

#[test]
fn submit_checks_its_file_before_the_broker_and_refuses_what_is_not_a_regular_file() {
    // An unreachable broker with a long timeout: only a check made first ends in time.
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port());
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.jsonl");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let fifo = dir.path().join("pipe.jsonl");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let missing = dir.path().join("no-such-file.jsonl");
    for (file, says) in [
        (&zero, "not a regular file"),
        (&fifo, "not a regular file"),
        (&missing, "No such file"),
    ] {
        let (out, _) = run_ingest(
            &url,
            &["--broker-timeout", "10m", "submit", file.to_str().unwrap()],
            Duration::from_secs(60),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file:?}: {stderr}");
        assert!(stderr.contains(says), "{file:?}: {stderr}");
    }
}

#[test]
fn read_only_commands_never_create_a_deployment_and_say_there_is_none() {
    let prefix = unique_prefix("ing-typo");
    // Twice each: the second answer proves the first created nothing.
    for args in [["dead", "list"], ["dead", "list"]] {
        let (out, _) = run_ingest_on(&amqp_url(), &prefix, &args, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no such deployment")
                && stderr.contains(&prefix)
                && stderr.contains("rabbitmq.prefix"),
            "{args:?}: {stderr}"
        );
    }
}
