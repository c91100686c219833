//! The system of record going away mid-batch, with the real binaries: ingest answers 503
//! (nothing accepted that is not recorded), render and deliver stop taking work and
//! resume on their own once PostgreSQL is back; nothing is lost, nothing sent twice.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailpipe_common::testkit::{DatabaseOutage, database_settings, ensure_test_database};
use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Stack, StackOptions};

async fn wait_for_sends(stack: &Stack, at_least: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while stack.sim.accepted().len() < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} sent within {limit:?}",
            stack.sim.accepted().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stopped_mid_batch_pauses_the_pipeline_and_loses_nothing() {
    ensure_test_database().await;
    let outage = DatabaseOutage::start().await;
    let mut database = database_settings("e2edb");
    database.url = outage.url();
    database.connect_timeout_ms = 2_000;
    let opts = StackOptions {
        name: "e2edb".into(),
        messages_per_window: 10,
        message_window_ms: 1_000,
        database: Some(database.clone()),
        ..StackOptions::default()
    };
    let stack = Stack::start(opts).await.expect("stack starts");
    let jobs = 150;
    let jsonl = write_batch(&stack.attachments_root(), "bdb", jobs, |_| 1).unwrap();
    let (status, body) = stack.post_batch("bdb", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");
    wait_for_sends(&stack, 20, Duration::from_secs(120)).await;

    outage.cut().await;
    // Sends already handed to the server finish; after that nothing more goes out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = stack.sim.accepted().len();
    let more = write_batch(&stack.attachments_root(), "bdb2", 3, |_| 1).unwrap();
    let (status, body) = stack.post_batch("bdb2", more, false).await.unwrap();
    assert_eq!(
        status, 503,
        "nothing is accepted without its record: {body}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        stack.sim.accepted().len(),
        settled,
        "nothing sent while the database is away"
    );
    assert!(settled < jobs, "the outage came mid-batch ({settled} sent)");

    outage.restore();
    let done = stack
        .wait_batch_done("bdb", jobs as u64, Duration::from_secs(240))
        .await
        .expect("the batch completes once the database is back");
    assert_eq!(done["counts"]["delivered"], jobs as u64, "{done}");
    stack.assert_exactly_once(jobs);
    for m in stack.sim.mailbox_stats() {
        assert!(
            m.max_messages_in_window <= 10,
            "no window overrun across the outage: {m:?}"
        );
    }
    stack.shutdown().await.unwrap();
    let direct = database_settings("e2edb-cleanup");
    let store = mailpipe_common::store::Store::new(
        &mailpipe_common::store::DatabaseSettings {
            schema: database.schema.clone(),
            ..direct
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .unwrap();
    mailpipe_common::testkit::drop_schema(&store, &database.schema).await;
}
