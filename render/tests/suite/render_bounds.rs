//! Render is bounded: an attachment that is not a regular file (a FIFO would block the
//! open forever) is dead-lettered naming it, a job that takes longer than
//! `render.job_timeout_ms` is dead-lettered with the reason and frees its slot, other
//! jobs render meanwhile, and shutdown still works. The real render `Application`
//! against the real RabbitMQ.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mailpipe_common::amqp::{DEAD_REASON_HEADER, Stage, header_str};
use mailpipe_common::config::CommonSettings;
use mailpipe_common::testkit::TestBroker;
use mailpipe_render::Application;
use mailpipe_render::attachments::{AttachmentError, AttachmentLoader};
use tokio_util::sync::CancellationToken;

use support::{examples_dir, job, settings};

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Runs `f` on a thread; fails the test (instead of hanging it) if it has not returned
/// within `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()).ok());
    rx.recv_timeout(limit)
        .expect("blocked: did not return within the limit")
}

#[test]
fn a_fifo_or_device_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("stuck.pdf"));
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.pdf")).unwrap();
    let loader = AttachmentLoader::new(Some(dir.path()), 1024).unwrap();
    let fifo = loader.clone();
    let err = within(Duration::from_secs(30), move || {
        fifo.read_path("x.pdf", "stuck.pdf").unwrap_err()
    });
    assert!(matches!(err, AttachmentError::NotAFile { .. }), "{err}");
    assert!(err.to_string().contains("is not a regular file"), "{err}");
    // A symlink to a device leaves the root before it is anything else.
    let err = within(Duration::from_secs(30), move || {
        loader.read_path("x.pdf", "zero.pdf").unwrap_err()
    });
    assert!(matches!(err, AttachmentError::Escapes { .. }), "{err}");
}

/// The example templates plus `slow`, whose body loops `n`³ times over the job's data.
fn templates_with_a_slow_one(dir: &Path) {
    for entry in std::fs::read_dir(examples_dir().join("invoice")).unwrap() {
        let entry = entry.unwrap();
        std::fs::create_dir_all(dir.join("invoice")).unwrap();
        std::fs::copy(entry.path(), dir.join("invoice").join(entry.file_name())).unwrap();
    }
    let slow = dir.join("slow");
    std::fs::create_dir_all(&slow).unwrap();
    std::fs::write(
        slow.join("template.toml"),
        "from = { address = \"billing@acme.example\" }\n",
    )
    .unwrap();
    std::fs::write(slow.join("subject.txt"), "slow").unwrap();
    std::fs::write(
        slow.join("body.txt"),
        "{% for a in data.n %}{% for b in data.n %}{% for c in data.n %}{% endfor %}{% endfor %}{% endfor %}done",
    )
    .unwrap();
}

fn invoice_with_path(id: &str, path: &str) -> mailpipe_common::contract::Job {
    job(serde_json::json!({
        "id": id,
        "template": "invoice",
        "to": ["zoe@kunde.example"],
        "data": {
            "invoice_number": "INV-1", "due_date": "2026-12-15", "currency": "EUR",
            "customer": {"name": "Zoë"},
            "items": [{"description": "x", "quantity": 1, "unit_price": 1.0}]
        },
        "attachments": [{"filename": "invoice.pdf", "path": path}]
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_and_a_slow_job_are_dead_lettered_and_the_others_render() {
    let t = TestBroker::start("render-bounds").await;
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    templates_with_a_slow_one(&templates);
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("ok.pdf"), b"%PDF-1.4 fine").unwrap();
    mkfifo(&files.join("stuck.pdf"));

    let mut render = settings(&templates, Some(&files));
    // One slot: the fine job renders only if the FIFO and the slow job give theirs back.
    render.concurrency = 1;
    render.job_timeout_ms = 2_000;
    let shutdown = CancellationToken::new();
    let common = CommonSettings {
        rabbitmq: t.settings.clone(),
        telemetry: Default::default(),
        database: t.database.clone(),
    };
    let app = Application::build(render, common, shutdown.clone())
        .await
        .expect("builds");
    let run = tokio::spawn(app.run_until_stopped());

    // 200³ = 8 million loop turns: seconds in a test build, past the 2 s bound.
    let n: Vec<u32> = (0..200).collect();
    let slow = job(serde_json::json!({
        "id": "bounds-slow", "template": "slow", "to": ["a@kunde.example"], "data": {"n": n}
    }));
    for j in [
        invoice_with_path("bounds-fifo", "stuck.pdf"),
        slow,
        invoice_with_path("bounds-fine", "ok.pdf"),
    ] {
        t.pipeline
            .send_job(&j)
            .await
            .unwrap()
            .confirmed()
            .await
            .unwrap();
    }

    let rendered = t
        .get(
            &t.broker.topology().stage_queue(Stage::Deliver),
            Duration::from_secs(90),
        )
        .await
        .expect("the fine job is rendered behind the FIFO and the slow job");
    assert_eq!(
        header_str(&rendered.delivery.properties, "mailpipe-job-id").as_deref(),
        Some("bounds-fine")
    );

    let mut reasons = std::collections::HashMap::new();
    for _ in 0..2 {
        let dead = t
            .get(&t.broker.topology().dead_queue(), Duration::from_secs(60))
            .await
            .expect("dead letter");
        reasons.insert(
            header_str(&dead.delivery.properties, "mailpipe-job-id").unwrap(),
            header_str(&dead.delivery.properties, DEAD_REASON_HEADER).unwrap(),
        );
    }
    let fifo = &reasons["bounds-fifo"];
    assert!(
        fifo.contains("stuck.pdf") && fifo.contains("is not a regular file"),
        "{fifo}"
    );
    let slow = &reasons["bounds-slow"];
    assert!(slow.contains("render.job_timeout_ms"), "{slow}");

    // Shutdown is not held up by the render still spinning on its blocking thread.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("render stops")
        .unwrap()
        .unwrap();
    t.cleanup().await;
}
