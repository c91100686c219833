//! Publishes N jobs (default 20,000; `MAILPIPE_BENCH_JOBS=N` or the first argument) from
//! a generated JSONL file through the `submit` path (parse, validate, spool, publish with
//! pipelined confirms, record `accepted` events), then the same N bodies through a plain
//! lapin publisher (confirms, same window) for comparison. Prints jobs/s and peak RSS.
//! Needs RabbitMQ (127.0.0.1:5672 or MAILPIPE_TEST_AMQP_URL).
//!
//! `cargo bench -p mailpipe-ingest --bench publish_jobs`

use std::collections::VecDeque;
use std::io::Write;
use std::time::Instant;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use mailpipe_common::amqp::{FieldTable, Stage, persistent_properties};
use mailpipe_common::testkit::TestBroker;
use mailpipe_ingest::IngestSettings;
use mailpipe_ingest::submit::{Display, SubmitOptions, submit};

const WINDOW: usize = 256;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn job_line(i: usize) -> String {
    format!(
        r#"{{"id":"bench-{i:07}","template":"invoice","to":[{{"name":"Customer {i}","address":"customer{i}@example.com"}}],"data":{{"invoice_number":"INV-{i}","due_date":"2026-12-15","currency":"EUR","customer":{{"name":"Customer {i}"}},"items":[{{"description":"Support plan","quantity":2,"unit_price":{}.{:02}}}]}}}}"#,
        i % 1000,
        i % 100
    )
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with('-'))
        .or_else(|| std::env::var("MAILPIPE_BENCH_JOBS").ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobs.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    let mut bodies = Vec::with_capacity(n);
    for i in 0..n {
        let line = job_line(i);
        writeln!(file, "{line}").expect("write");
        bodies.push(line.into_bytes());
    }
    file.flush().expect("flush");
    drop(file);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "publish_jobs: {n} jobs, {:.1} MiB of JSONL, window {WINDOW}",
        size as f64 / 1048576.0
    );

    // 1. The submit path.
    let t = TestBroker::start("bench-submit").await;
    // With the example templates: every job is rendered before it is published.
    let settings = IngestSettings {
        max_in_flight: WINDOW,
        templates_dir: Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/templates"),
        ),
        ..IngestSettings::default()
    };
    let options = SubmitOptions {
        file: path.clone(),
        batch: Some("bench".parse().expect("id")),
        partial: false,
        display: Display::Quiet,
        callback_url: None,
    };
    let rss_before = peak_rss_kib();
    let started = Instant::now();
    let report = submit(&t.pipeline, &settings, &options)
        .await
        .expect("submit");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(report.accepted as usize, n, "every job published");
    println!(
        "submit path:    {n} jobs in {secs:.2} s = {:>8.0} jobs/s (plus {n} accepted events); peak RSS {} MiB (before: {} MiB)",
        n as f64 / secs,
        peak_rss_kib() / 1024,
        rss_before / 1024
    );
    t.cleanup().await;

    // 2. Plain lapin, same bodies, same confirm window, no validation, no events.
    let t = TestBroker::start("bench-lapin").await;
    let ch = t.broker.channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let exchange = t.broker.topology().work_exchange();
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    for body in &bodies {
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                Stage::Render.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                persistent_properties("application/json", FieldTable::default()),
            )
            .await
            .expect("publish");
        in_flight.push_back(confirm);
        if in_flight.len() >= WINDOW {
            in_flight
                .pop_front()
                .expect("front")
                .await
                .expect("confirm");
        }
    }
    for c in in_flight {
        c.await.expect("confirm");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "plain lapin:    {n} jobs in {secs:.2} s = {:>8.0} jobs/s (no validation, no events)",
        n as f64 / secs
    );
    t.cleanup().await;
}
