//! Secrets never reach the logs, whatever the log level: a binary run at `trace` against the
//! real broker with a RabbitMQ password that is a unique canary (refused by the broker, so
//! the process tries again and again) never writes the canary, in text or JSON.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailpipe_common::testkit::{amqp_url, unique_prefix};
use mailpipe_tests::stack::{Binary, bin_dir, workspace_root};

/// Runs render at `trace` for a few connection attempts and returns what it logged.
fn trace_logs_of_render(format: &str, canary: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rabbitmq-password"), canary).unwrap();
    // The test broker's URL, with its password taken out: the canary replaces it.
    let url = amqp_url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let config = dir.path().join("mailpipe.toml");
    std::fs::write(
        &config,
        format!(
            "[rabbitmq]\nurl = \"{scheme}://guest@{host}\"\npassword = {{ file = \"rabbitmq-password\" }}\n\
             prefix = \"{prefix}\"\nreconnect_max_backoff_ms = 200\n\
             [telemetry]\nlog_format = \"{format}\"\nlog_filter = \"trace\"\n\
             [render]\ntemplates_dir = {templates:?}\nmessage_id_domain = \"mail.example.com\"\n\
             http_listen = \"127.0.0.1:0\"\n",
            prefix = unique_prefix("logs"),
            templates = workspace_root().join("examples/templates"),
        ),
    )
    .unwrap();
    let mut child = Command::new(bin_dir().unwrap().join(Binary::Render.name()))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "trace")
        .env_remove("MAILPIPE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stderr.read_to_string(&mut out);
        out
    });
    // Several AUTH attempts (the broker refuses each; backoff is capped at 200 ms), or the
    // process ends by itself (a refused password may be final): 6 s is ample for both.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap()
}

#[test]
fn the_rabbitmq_password_is_not_logged_even_at_trace() {
    for format in ["text", "json"] {
        let canary = format!("pw-canary-{}", uuid::Uuid::new_v4().simple());
        let logs = trace_logs_of_render(format, &canary);
        // The run did log below info and did try the broker (else this proves nothing).
        assert!(
            logs.contains("DEBUG") || logs.contains("\"level\":\"DEBUG\""),
            "no debug output ({format}):\n{logs}"
        );
        assert!(
            logs.contains("ACCESS_REFUSED"),
            "the broker was not asked ({format}):\n{logs}"
        );
        // As text, or as the bytes lapin's frame dumps print (`LongString([0, 103, ...])`).
        let as_bytes = canary
            .bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for line in logs.lines() {
            assert!(
                !line.contains(&canary) && !line.contains(&as_bytes),
                "the password is in the {format} log: {line}"
            );
            // stderr is a pipe here: no colour escapes.
            assert!(
                !line.contains('\u{1b}'),
                "ANSI escape in the {format} log: {line:?}"
            );
        }
    }
}
