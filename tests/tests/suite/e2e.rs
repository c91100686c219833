//! The product end to end: the real binaries as processes, a real RabbitMQ, the Exchange
//! Online simulator as the judge of what was delivered.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Binary, Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_job_batch_with_attachments_is_delivered_exactly_once_and_status_completes() {
    let opts = StackOptions {
        name: "e2e500".into(),
        messages_per_window: 100,
        message_window_ms: 1_000,
        ..StackOptions::default()
    };
    let stack = Stack::start(opts).await.expect("stack starts");
    let jsonl = write_batch(&stack.attachments_root(), "b500", 500, |i| 1 + i % 4).unwrap();
    let (status, body) = stack.post_batch("b500", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let done = stack
        .wait_batch_done("b500", 500, Duration::from_secs(240))
        .await
        .expect("batch completes");
    assert_eq!(done["jobs"], 500, "{done}");
    assert_eq!(done["counts"]["delivered"], 500, "{done}");
    assert_eq!(done["counts"]["failed"], 0, "{done}");
    stack.assert_exactly_once(500);

    let mut recipients = 0;
    for m in stack.sim.accepted() {
        let parsed = mail_parser::MessageParser::default().parse(&m.raw).unwrap();
        let pdf = parsed
            .attachments()
            .next()
            .expect("the invoice PDF is attached");
        assert!(
            pdf.contents().starts_with(b"%PDF-1.4"),
            "attachment decodes to the PDF"
        );
        assert!(parsed.from().is_some(), "From was written by deliver");
        recipients += m.rcpt_to.len();
    }
    assert_eq!(
        recipients,
        (0..500).map(|i| 1 + i % 4).sum::<usize>(),
        "every recipient in the envelope"
    );
    assert!(
        stack.sim.refusals().is_empty(),
        "{:?}",
        stack.sim.refusals()
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_bad_rows_reports_exactly_those_and_delivers_the_rest() {
    let opts = StackOptions {
        name: "e2ebad".into(),
        messages_per_window: 100,
        message_window_ms: 1_000,
        ..StackOptions::default()
    };
    let stack = Stack::start(opts).await.expect("stack starts");
    let good = write_batch(&stack.attachments_root(), "bbad", 20, |_| 1).unwrap();
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    // Line 3: an address that is not one; line 8: a template that does not exist;
    // line 15: an attachment outside the root.
    lines[2] = lines[2].replace("customer2@fabrikam.example", "customer2 at fabrikam");
    lines[7] = lines[7].replace(
        "\"template\":\"invoice\"",
        "\"template\":\"no-such-template\"",
    );
    lines[14] = lines[14].replace("invoices/INV-2026-11-00014.pdf", "../../etc/passwd");
    let jsonl = lines.join("\n") + "\n";

    let (status, body) = stack
        .post_batch("bbad", jsonl.clone(), false)
        .await
        .unwrap();
    assert_eq!(status, 422, "all or nothing by default: {body}");
    let (status, body) = stack.post_batch("bbad", jsonl, true).await.unwrap();
    assert!(status < 300, "partial accepts the good lines: {body}");
    let body_text = body.to_string();
    let reported: Vec<u64> = body["rejected"]
        .as_array()
        .or(body["errors"].as_array())
        .expect("bad lines reported")
        .iter()
        .filter_map(|e| e["line"].as_u64())
        .collect();
    let mut unique = reported.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique, vec![3, 8, 15], "{body_text}");

    let done = stack
        .wait_batch_done("bbad", 17, Duration::from_secs(120))
        .await
        .expect("good lines delivered");
    assert_eq!(done["counts"]["delivered"], 17, "{done}");
    stack.assert_exactly_once(17);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_each_binary_mid_batch_loses_nothing_and_sends_nothing_twice() {
    // Slow enough that the batch is in flight while each binary is stopped and restarted.
    let opts = StackOptions {
        name: "e2eterm".into(),
        messages_per_window: 10,
        message_window_ms: 1_000,
        ..StackOptions::default()
    };
    let mut stack = Stack::start(opts).await.expect("stack starts");
    let jobs = 240;
    let jsonl = write_batch(&stack.attachments_root(), "bterm", jobs, |_| 1).unwrap();
    let (status, body) = stack.post_batch("bterm", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");

    for b in [
        Binary::Deliver,
        Binary::Render,
        Binary::Ingest,
        Binary::Deliver,
    ] {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let exit = stack
            .stop_binary(b, Duration::from_secs(30))
            .await
            .expect("stops on SIGTERM");
        assert!(
            exit.success(),
            "{} exits cleanly on SIGTERM: {exit}",
            b.name()
        );
        stack.start_binary(b).await.expect("restarts");
    }
    let done = stack
        .wait_batch_done("bterm", jobs as u64, Duration::from_secs(180))
        .await
        .expect("batch completes");
    assert_eq!(done["counts"]["delivered"], jobs as u64, "{done}");
    stack.assert_exactly_once(jobs);
    for m in stack.sim.mailbox_stats() {
        assert!(
            m.max_messages_in_window <= 10,
            "no window overrun across restarts: {m:?}"
        );
    }
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_with_wrong_credentials_does_not_stop_the_batch() {
    let opts = StackOptions {
        name: "e2ecreds".into(),
        messages_per_window: 50,
        message_window_ms: 1_000,
        wrong_password_mailbox: Some(1),
        ..StackOptions::default()
    };
    let stack = Stack::start(opts).await.expect("stack starts");
    let jsonl = write_batch(&stack.attachments_root(), "bcreds", 100, |_| 1).unwrap();
    let (status, body) = stack.post_batch("bcreds", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let done = stack
        .wait_batch_done("bcreds", 100, Duration::from_secs(120))
        .await
        .expect("batch completes");
    assert_eq!(done["counts"]["delivered"], 100, "{done}");
    assert_eq!(done["counts"]["failed"], 0, "{done}");
    let broken = &stack.mailboxes[1].address;
    assert_eq!(
        stack.sim.mailbox(broken).map(|m| m.accepted),
        Some(0),
        "the broken mailbox sent nothing"
    );
    stack.assert_exactly_once(100);
    stack.shutdown().await.unwrap();
}

/// render started with a backlog waiting publishes each job once, and says nothing of
/// lost confirms: the issue saw bursts of "confirm lost with the connection; publishing
/// again" 1-2 s after start on a healthy broker (a channel the client closed itself), each
/// a second copy in deliver's queue. The real binary: ingest queues the batch first, then
/// render starts into it; deliver is not started, so deliver's queue holds every copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_started_into_a_backlog_publishes_each_job_once() {
    use mailpipe_common::amqp::{Stage, header_str};
    use mailpipe_common::contract::{META_HEADER, RenderedMeta};

    let jobs = 400;
    let mut stack = Stack::prepare(StackOptions {
        name: "render-once".into(),
        ..StackOptions::default()
    })
    .await
    .expect("stack prepared");
    stack.start_binary(Binary::Ingest).await.unwrap();
    let jsonl = write_batch(&stack.attachments_root(), "ro", jobs, |_| 1).unwrap();
    let (status, body) = stack.post_batch("ro", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");

    let broker = mailpipe_common::testkit::TestBroker::with_settings(stack.rabbit.clone()).await;
    // A batch's jobs go to one of the bulk queues: count them all.
    let deliver_queues = broker.broker.topology().stage_queues(Stage::Deliver);
    let depth = || async {
        let mut n = 0;
        for q in &deliver_queues {
            n += broker.depth(q).await as usize;
        }
        n
    };
    stack.start_binary(Binary::Render).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while depth().await < jobs {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {jobs} rendered within 180 s",
            depth().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stopped, render has finished every publish it started: all copies are in the queue.
    let exit = stack
        .stop_binary(Binary::Render, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(exit.success(), "render stops cleanly: {exit}");

    let mut copies: std::collections::HashMap<String, usize> = Default::default();
    for q in &deliver_queues {
        while let Some(m) = broker.get(q, Duration::ZERO).await {
            let meta = RenderedMeta::from_header_value(
                &header_str(&m.delivery.properties, META_HEADER).expect("meta header"),
            )
            .unwrap();
            *copies.entry(meta.job_id.as_str().to_owned()).or_default() += 1;
        }
    }
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    assert_eq!(copies.len(), jobs, "every job published");
    let log = std::fs::read_to_string(stack.log_path(Binary::Render)).unwrap();
    let republished = log
        .lines()
        .filter(|l| l.contains("publishing again"))
        .count();
    assert_eq!(
        republished,
        0,
        "render republished on a healthy broker; see {}",
        stack.log_path(Binary::Render).display()
    );
    stack.shutdown().await.unwrap();
    broker.cleanup().await;
}
