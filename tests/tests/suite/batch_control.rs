//! Batch control with the real binaries: a paused batch stops being sent within seconds
//! while another batch goes on, and completes once resumed; a cancelled batch's unsent
//! jobs end `cancelled`, none of them sent, and status says so; both across a restart of
//! deliver.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Binary, Stack, StackOptions};
use serde_json::Value;

/// Messages the simulator accepted, per batch.
async fn sent_per_batch(stack: &Stack) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (batch, job) in stack.sent_jobs().await {
        out.entry(batch).or_default().push(job);
    }
    out
}

async fn sent(stack: &Stack, batch: &str) -> usize {
    sent_per_batch(stack)
        .await
        .get(batch)
        .map(Vec::len)
        .unwrap_or(0)
}

async fn control(stack: &Stack, batch: &str, verb: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/batches/{batch}/{verb}",
            stack.url(Binary::Ingest)
        ))
        .bearer_auth(&stack.token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_sent(stack: &Stack, batch: &str, at_least: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while sent(stack, batch).await < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{batch}: fewer than {at_least} sent within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_batch_stops_while_another_goes_on_and_completes_once_resumed() {
    let opts = StackOptions {
        name: "pause".into(),
        messages_per_window: 2,
        message_window_ms: 1_000,
        ..StackOptions::default()
    };
    let mut stack = Stack::start(opts).await.expect("stack starts");
    let jobs = 100;
    let jsonl = write_batch(&stack.attachments_root(), "pa", jobs, |_| 1).unwrap();
    assert_eq!(stack.post_batch("pa", jsonl, false).await.unwrap().0, 202);
    wait_sent(&stack, "pa", 10).await;

    let (status, report) = control(&stack, "pa", "pause").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["control"], "paused");
    // Sends under way when it was paused finish; then nothing more of it goes out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_pause = sent(&stack, "pa").await;
    let other = write_batch(&stack.attachments_root(), "pb", 20, |_| 1).unwrap();
    assert_eq!(stack.post_batch("pb", other, false).await.unwrap().0, 202);
    stack
        .wait_batch_done("pb", 20, Duration::from_secs(120))
        .await
        .expect("the other batch goes on at full speed");
    assert_eq!(
        sent(&stack, "pa").await,
        at_pause,
        "nothing of the paused batch was sent"
    );
    assert!(at_pause < jobs, "paused mid-run");
    let status = stack.batch_status("pa").await.unwrap();
    assert_eq!(status["control"], "paused", "{status}");
    assert!(!status["finished"].as_bool().unwrap(), "{status}");

    // The pause is on record: a restarted deliver honours it too.
    stack.restart_binary(Binary::Deliver).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sent(&stack, "pa").await,
        at_pause,
        "a restarted deliver sent a job of the paused batch"
    );

    let (status, report) = control(&stack, "pa", "resume").await;
    assert_eq!(status, 200, "{report}");
    let done = stack
        .wait_batch_done("pa", jobs as u64, Duration::from_secs(180))
        .await
        .expect("the batch completes once resumed");
    assert_eq!(done["counts"]["delivered"], jobs as u64, "{done}");
    let per_batch = sent_per_batch(&stack).await;
    let mut pa = per_batch["pa"].clone();
    pa.sort();
    pa.dedup();
    assert_eq!(pa.len(), jobs, "every job once");
    assert_eq!(per_batch["pa"].len(), jobs, "none twice");
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_sends_nothing_more_and_status_says_so() {
    let opts = StackOptions {
        name: "cancel".into(),
        messages_per_window: 2,
        message_window_ms: 1_000,
        ..StackOptions::default()
    };
    let mut stack = Stack::start(opts).await.expect("stack starts");
    let jobs = 100;
    let jsonl = write_batch(&stack.attachments_root(), "pc", jobs, |_| 1).unwrap();
    assert_eq!(stack.post_batch("pc", jsonl, false).await.unwrap().0, 202);
    wait_sent(&stack, "pc", 10).await;

    let (status, report) = control(&stack, "pc", "cancel").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["control"], "cancelled");
    assert!(
        report["counts"]["cancelled"].as_u64().unwrap() > 0,
        "{report}"
    );
    // A cancel is final.
    assert_eq!(control(&stack, "pc", "resume").await.0, 409);

    let done = stack
        .wait_batch_done("pc", jobs as u64, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("a cancelled batch finishes: {e}"));
    assert!(done["finished"].as_bool().unwrap(), "{done}");
    // Sends under way at the cancel may still end delivered; then nothing moves, also
    // after a restart of deliver (the messages still in the queue and the retry ladder
    // meet a cancelled batch there too).
    stack.restart_binary(Binary::Deliver).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let done = stack.batch_status("pc").await.unwrap();
    let delivered = done["counts"]["delivered"].as_u64().unwrap();
    let cancelled = done["counts"]["cancelled"].as_u64().unwrap();
    assert_eq!(delivered + cancelled, jobs as u64, "{done}");
    assert!(delivered < jobs as u64, "cancelled mid-run: {done}");
    let per_batch = sent_per_batch(&stack).await;
    assert_eq!(
        per_batch["pc"].len() as u64,
        delivered,
        "exactly the delivered ones were sent, each once, and nothing after the cancel"
    );
    stack.shutdown().await.unwrap();
}
