//! The system of record going away mid-batch, with the real binaries: ingest answers 503
//! (nothing accepted that is not recorded), render and deliver stop taking work and
//! resume on their own once PostgreSQL is back; nothing is lost, nothing sent twice.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailpipe_common::testkit::{DatabaseOutage, database_settings, ensure_test_database};
use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Binary, Stack, StackOptions};

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
    // An interval with nothing sent is what is asserted: it has to pass.
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

/// `GET {url}/readyz`: the status and the body (`0` when nothing answers).
async fn readyz(http: &reqwest::Client, url: &str) -> (u16, String) {
    match http.get(format!("{url}/readyz")).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Polls `/readyz` until `want(status, body)` or `limit` passes; returns the last answer.
async fn readyz_until(
    http: &reqwest::Client,
    url: &str,
    limit: Duration,
    want: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (status, body) = readyz(http, url).await;
        if want(status, &body) || tokio::time::Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drops a schema the test gave the stack (the stack drops only its own).
async fn drop_given_schema(database: &mailpipe_common::store::DatabaseSettings) {
    let direct = mailpipe_common::store::DatabaseSettings {
        url: mailpipe_common::testkit::database_url(),
        ..database.clone()
    };
    let store =
        mailpipe_common::store::Store::new(&direct, tokio_util::sync::CancellationToken::new())
            .unwrap();
    mailpipe_common::testkit::drop_schema(&store, &database.schema).await;
    store.close().await;
}

/// A proxy in front of the test database, and a stack's options (named `name`) whose
/// database is reached through it.
async fn behind_a_proxy(
    name: &str,
) -> (
    DatabaseOutage,
    mailpipe_common::store::DatabaseSettings,
    StackOptions,
) {
    ensure_test_database().await;
    let outage = DatabaseOutage::start().await;
    let mut database = database_settings(name);
    database.url = outage.url();
    let opts = StackOptions {
        name: name.into(),
        database: Some(database.clone()),
        ..StackOptions::default()
    };
    (outage, database, opts)
}

/// Readiness is a live check: with no work flowing, a database outage shows on every
/// binary's `/readyz` (naming the database) within seconds, a request that needs the
/// database is answered 503 with the reason instead of being held, and all are ready
/// again once it is back. The margins (10 s, 30 s) are for a loaded machine: the probe
/// asks every second and waits 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_shows_on_every_readyz_within_seconds_and_ingest_answers_503_at_once() {
    let (outage, database, opts) = behind_a_proxy("readyz-db").await;
    let stack = Stack::start(opts).await.expect("stack starts");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for b in Binary::ALL {
        let (status, body) = readyz(&http, &stack.url(b)).await;
        assert_eq!(status, 200, "{} before the outage: {body}", b.name());
    }

    outage.cut().await;
    for b in Binary::ALL {
        let (status, body) = readyz_until(&http, &stack.url(b), Duration::from_secs(10), |s, _| {
            s == 503
        })
        .await;
        assert!(
            status == 503 && body.contains("database unreachable"),
            "{} within 10 s of the outage: {status} {body}",
            b.name()
        );
    }
    // A client with a 10 s timeout gets a reason, not a timeout.
    let jsonl = write_batch(&stack.attachments_root(), "during", 1, |_| 1).unwrap();
    let r = http
        .post(format!(
            "{}/v1/batches?batch=during",
            stack.url(Binary::Ingest)
        ))
        .bearer_auth(&stack.token)
        .header("content-type", "application/x-ndjson")
        .body(jsonl)
        .send()
        .await
        .expect("ingest answers during the outage (no client timeout)");
    assert_eq!(r.status().as_u16(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap_or("").contains("database"),
        "the 503 says why: {body}"
    );

    outage.restore();
    for b in Binary::ALL {
        let (status, body) = readyz_until(&http, &stack.url(b), Duration::from_secs(30), |s, _| {
            s == 200
        })
        .await;
        assert_eq!(status, 200, "{} after the outage: {body}", b.name());
    }
    stack.shutdown().await.unwrap();
    drop_given_schema(&database).await;
}

/// render is never ready before its schema is migrated: started while the database is
/// away, its `/readyz` says so; once it answers 200 the schema is this build's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_is_not_ready_before_its_schema_is_migrated() {
    let (outage, database, opts) = behind_a_proxy("readyz-mig").await;
    let mut stack = Stack::prepare(opts).await.expect("stack prepared");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    outage.cut().await;
    stack.spawn_binary(Binary::Render).unwrap();
    let url = stack.url(Binary::Render);
    let (status, body) = readyz_until(&http, &url, Duration::from_secs(60), |s, _| s != 0).await;
    assert!(
        status == 503 && body.contains("database"),
        "render's first answer with the database away: {status} {body}"
    );

    outage.restore();
    let (status, body) = readyz_until(&http, &url, Duration::from_secs(60), |s, _| s == 200).await;
    assert_eq!(
        status, 200,
        "render ready once the database is back: {body}"
    );
    let store = mailpipe_common::store::Store::new(
        &mailpipe_common::store::DatabaseSettings {
            url: mailpipe_common::testkit::database_url(),
            ..database.clone()
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .unwrap();
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(store.pool())
            .await
            .expect("the migrations table exists once render is ready");
    store.close().await;
    let needed = mailpipe_common::store::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max();
    assert_eq!(
        applied, needed,
        "the schema is current when render is ready"
    );
    stack.shutdown().await.unwrap();
    drop_given_schema(&database).await;
}
