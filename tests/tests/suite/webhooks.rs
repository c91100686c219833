//! Outcome webhooks through the real stack (ingest, render, deliver, the simulator, a
//! real RabbitMQ and PostgreSQL) to a receiver that is an axum server in this test. The
//! receiver checks every signature on its own, per the Standard Webhooks spec, without
//! mailpipe's code: a receiver gets exactly one signed call per outcome and one
//! `batch.completed`; a receiver that is down at first gets every call once it is up; a
//! receiver that holds every request open never slows delivery.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use mailpipe_common::store::Store;
use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Binary, Stack, StackOptions, bin_dir};
use serde_json::Value;
use sha2::Sha256;

/// The callbacks' key (32 bytes, base64) and a global endpoint's.
const CALLBACK_SECRET: &str = "whsec_dGVzdC1jYWxsYmFjay1zZWNyZXQtMzItYnl0ZXMhIQ==";
const ENDPOINT_SECRET: &str = "whsec_Z2xvYmFsLWVuZHBvaW50LXNlY3JldC0zMi1ieXRlcyE=";

/// One call as the receiver saw it.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    id: String,
    kind: String,
    /// The job, or the batch for `batch.completed`.
    subject: String,
    signed: bool,
}

#[derive(Clone)]
struct Receiver {
    calls: Arc<Mutex<Vec<Call>>>,
    /// How long each request is held before its answer.
    hold: Arc<Mutex<Duration>>,
}

impl Receiver {
    fn new() -> Self {
        Self {
            calls: Arc::default(),
            hold: Arc::new(Mutex::new(Duration::ZERO)),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Serves on `listener` until the task is aborted.
    fn serve(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .route("/global", axum::routing::post(receive))
            .with_state(self.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        })
    }

    /// Waits until `done` holds for the calls (or fails after `limit`).
    async fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&[Call]) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let calls = self.calls();
            if done(&calls) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} not within {limit:?}; calls so far: {calls:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The Standard Webhooks check, written from the spec: HMAC-SHA256 with the decoded key
/// over `id.timestamp.body`, base64, compared with each `v1,` entry of the header.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sigs)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(ts_secs) = ts.parse::<i64>() else {
        return false;
    };
    // The spec's replay window: five minutes either way.
    if (chrono::Utc::now().timestamp() - ts_secs).abs() > 300 {
        return false;
    }
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    sigs.split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

async fn receive(
    State(r): State<Receiver>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let secret = if uri.path() == "/global" {
        ENDPOINT_SECRET
    } else {
        CALLBACK_SECRET
    };
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let data = &payload["data"];
    let call = Call {
        path: uri.path().to_owned(),
        id: headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        kind: payload["type"].as_str().unwrap_or("").to_owned(),
        subject: data["job_id"]
            .as_str()
            .or(data["batch"].as_str())
            .unwrap_or("")
            .to_owned(),
        signed: verify(secret, &headers, &body),
    };
    r.calls.lock().unwrap().push(call);
    let hold = *r.hold.lock().unwrap();
    tokio::time::sleep(hold).await;
    StatusCode::NO_CONTENT
}

/// A stack whose ingest calls back to 127.0.0.1 (plain http allowed to loopback for the
/// test) and has one global endpoint for `batch.completed` only.
async fn stack(name: &str, receiver_port: u16, request_timeout_ms: u64) -> Stack {
    let ingest_extra = format!(
        r#"
[ingest.webhooks]
callback_secret = {{ env = "TEST_WEBHOOK_CALLBACK_SECRET" }}
allowed_callback_hosts = ["127.0.0.1:{receiver_port}"]
allow_http_loopback = true
connect_timeout_ms = 1000
request_timeout_ms = {request_timeout_ms}
retry_initial_ms = 200
retry_max_ms = 1000
poll_ms = 200
max_in_flight_per_endpoint = 4

[[ingest.webhooks.endpoints]]
name = "erp"
url = "http://127.0.0.1:{receiver_port}/global"
secret = {{ env = "TEST_WEBHOOK_ENDPOINT_SECRET" }}
events = ["batch.completed"]
"#
    );
    let options = StackOptions {
        name: name.into(),
        ingest_extra,
        env: vec![
            (
                "TEST_WEBHOOK_CALLBACK_SECRET".into(),
                CALLBACK_SECRET.into(),
            ),
            (
                "TEST_WEBHOOK_ENDPOINT_SECRET".into(),
                ENDPOINT_SECRET.into(),
            ),
        ],
        ..StackOptions::default()
    };
    Stack::start(options).await.expect("stack starts")
}

/// `POST /v1/batches?batch=..&callback_url=..`.
async fn post_batch(stack: &Stack, batch: &str, jobs: usize, callback: &str) -> (u16, Value) {
    let jsonl = write_batch(&stack.attachments_root(), batch, jobs, |_| 1).unwrap();
    let url = reqwest::Url::parse_with_params(
        &format!("{}/v1/batches", stack.url(Binary::Ingest)),
        [("batch", batch), ("callback_url", callback)],
    )
    .unwrap();
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(&stack.token)
        .header("content-type", "application/x-ndjson")
        .body(jsonl)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn job_ids(stack: &Stack, batch: &str) -> HashSet<String> {
    let store = Store::new(&stack.database, tokio_util::sync::CancellationToken::new()).unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1")
        .bind(batch)
        .fetch_all(store.pool())
        .await
        .unwrap();
    store.close().await;
    ids.into_iter().collect()
}

/// The callback's calls: every one signed, and per job (and for the batch's completion)
/// exactly one webhook-id. Returns how many calls each subject got.
fn check_callbacks(calls: &[Call], jobs: &HashSet<String>, batch: &str) -> HashMap<String, usize> {
    let hook: Vec<&Call> = calls.iter().filter(|c| c.path == "/hook").collect();
    assert!(
        hook.iter().all(|c| c.signed),
        "every signature verifies: {hook:#?}"
    );
    let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
    let mut count: HashMap<String, usize> = HashMap::new();
    for c in &hook {
        let key = format!("{}/{}", c.kind, c.subject);
        ids.entry(key.clone()).or_default().insert(c.id.clone());
        *count.entry(key).or_default() += 1;
    }
    let mut expected: HashSet<String> = jobs.iter().map(|j| format!("job.delivered/{j}")).collect();
    expected.insert(format!("batch.completed/{batch}"));
    let got: HashSet<String> = ids.keys().cloned().collect();
    assert_eq!(got, expected, "one outcome per job and the completion");
    for (key, ids) in &ids {
        assert_eq!(ids.len(), 1, "{key}: every call carries one webhook-id");
    }
    count
}

fn outcomes_arrived(calls: &[Call], jobs: usize) -> bool {
    let distinct: HashSet<(&str, &str)> = calls
        .iter()
        .filter(|c| c.path == "/hook")
        .map(|c| (c.kind.as_str(), c.subject.as_str()))
        .collect();
    distinct.len() > jobs
}

/// `mailpipe-ingest --config mailpipe.toml ARGS` run in the stack's directory, as the
/// `--help` examples show it. Returns the exit code and stdout.
async fn ingest_cli(stack: &Stack, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(bin_dir().unwrap().join("mailpipe-ingest"))
        .current_dir(&stack.dir)
        .args(["--config", "mailpipe.toml"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_gets_one_signed_call_per_outcome_and_one_batch_completed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = Receiver::new();
    let server = receiver.serve(listener);
    let stack = stack("webhooks_signed", port, 5_000).await;

    // A callback URL outside the allow-list is refused, naming the field.
    let (status, body) = post_batch(&stack, "w0", 1, "https://evil.example.com/x").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "callback_url", "{body}");

    let jobs = 6;
    let callback = format!("http://127.0.0.1:{port}/hook");
    let (status, body) = post_batch(&stack, "w1", jobs, &callback).await;
    assert_eq!(status, 202, "{body}");
    stack
        .wait_batch_done("w1", jobs as u64, Duration::from_secs(120))
        .await
        .unwrap();
    receiver
        .wait_for(Duration::from_secs(120), "every callback", |c| {
            outcomes_arrived(c, jobs)
                && c.iter()
                    .any(|c| c.path == "/global" && c.kind == "batch.completed")
        })
        .await;
    // Time for a duplicate to show up, were one to be sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = receiver.calls();
    let ids = job_ids(&stack, "w1").await;
    assert_eq!(ids.len(), jobs);
    let count = check_callbacks(&calls, &ids, "w1");
    assert!(
        count.values().all(|n| *n == 1),
        "exactly one call each: {count:?}"
    );
    // The global endpoint wants batch completions only, signed with its own key.
    let global: Vec<&Call> = calls.iter().filter(|c| c.path == "/global").collect();
    assert_eq!(global.len(), 1, "{global:#?}");
    assert!(global[0].signed);
    assert_eq!(global[0].subject, "w1");
    let completed = calls
        .iter()
        .find(|c| c.path == "/hook" && c.kind == "batch.completed")
        .unwrap();
    assert_ne!(global[0].id, "", "{global:?}");
    assert_eq!(
        global[0].id, completed.id,
        "one event, one webhook-id, whichever endpoint"
    );

    // submit refuses a callback URL outside the allow-list before it reads anything.
    let out = tokio::process::Command::new(bin_dir().unwrap().join("mailpipe-ingest"))
        .current_dir(&stack.dir)
        .args([
            "--config",
            "mailpipe.toml",
            "submit",
            "jobs.jsonl",
            "--batch",
            "w2",
        ])
        .args(["--callback-url", "https://evil.example.com/x"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--callback-url: host \"evil.example.com\" is not in ingest.webhooks.allowed_callback_hosts"),
        "{stderr}"
    );

    // The CLI's --help examples, as shown.
    let (code, out) = ingest_cli(&stack, &["webhooks", "list"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no webhook deliveries"), "{out}");
    let (code, out) = ingest_cli(
        &stack,
        &["webhooks", "list", "--state", "expired", "--json"],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, ""));
    let (code, out) = ingest_cli(&stack, &["webhooks", "retry", "--all"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 webhook deliveries queued again"), "{out}");
    let (code, out) = ingest_cli(&stack, &["webhooks", "list", "--state", "all", "--json"]).await;
    assert_eq!(code, 0);
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), jobs + 2, "{out}");
    assert!(rows.iter().all(|r| r["state"] == "delivered"), "{out}");

    server.abort();
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_arrive_once_the_receiver_is_back_after_its_downtime() {
    // A port with nothing listening on it yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stack = stack("webhooks_downtime", port, 5_000).await;
    let jobs = 5;
    let callback = format!("http://127.0.0.1:{port}/hook");
    let (status, body) = post_batch(&stack, "d1", jobs, &callback).await;
    assert_eq!(status, 202, "{body}");
    stack
        .wait_batch_done("d1", jobs as u64, Duration::from_secs(120))
        .await
        .expect("a dead receiver does not hold delivery back");

    // Tries failed while it was down: they are in the outbox, waiting.
    let store = Store::new(&stack.database, tokio_util::sync::CancellationToken::new()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let failed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending' AND attempts > 0",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if failed > jobs as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "failed tries recorded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store.close().await;

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let receiver = Receiver::new();
    let server = receiver.serve(tokio::net::TcpListener::bind(addr).await.unwrap());
    receiver
        .wait_for(
            Duration::from_secs(120),
            "every callback after the downtime",
            |c| outcomes_arrived(c, jobs),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Delivery is at least once; a repeat would carry the same webhook-id (checked). With
    // every 2xx recorded and no dispatcher dying, none is sent twice here.
    let count = check_callbacks(&receiver.calls(), &job_ids(&stack, "d1").await, "d1");
    assert!(count.values().all(|n| *n == 1), "no call twice: {count:?}");
    server.abort();
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_holds_every_request_open_does_not_slow_delivery() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = Receiver::new();
    *receiver.hold.lock().unwrap() = Duration::from_secs(300);
    let server = receiver.serve(listener);
    // Calls are cut after a second.
    let stack = stack("webhooks_slow", port, 1_000).await;
    let jobs = 20;
    let callback = format!("http://127.0.0.1:{port}/hook");
    let (status, body) = post_batch(&stack, "s1", jobs, &callback).await;
    assert_eq!(status, 202, "{body}");
    // Liveness, with a wide margin: every job is delivered while the receiver stalls.
    let done = stack
        .wait_batch_done("s1", jobs as u64, Duration::from_secs(180))
        .await
        .expect("a stalled receiver does not hold delivery back");
    assert_eq!(done["counts"]["delivered"], jobs as u64, "{done}");
    // The dispatcher cuts the stalled calls (and records why).
    let store = Store::new(&stack.database, tokio_util::sync::CancellationToken::new()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let errors: Vec<Option<String>> =
            sqlx::query_scalar("SELECT last_error FROM webhook_deliveries")
                .fetch_all(store.pool())
                .await
                .unwrap();
        if errors
            .iter()
            .flatten()
            .any(|e| e.starts_with("no answer within 1000 ms"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dispatcher cut the stalled calls: {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store.close().await;

    // Once the receiver answers again, the cut calls are tried again and arrive; a call
    // the receiver saw before it was cut is a repeat with the same webhook-id.
    *receiver.hold.lock().unwrap() = Duration::ZERO;
    let ids = job_ids(&stack, "s1").await;
    receiver
        .wait_for(
            Duration::from_secs(180),
            "every callback once answered",
            |c| outcomes_arrived(c, jobs),
        )
        .await;
    let store = Store::new(&stack.database, tokio_util::sync::CancellationToken::new()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (pending,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered' AND endpoint = 'callback'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store.close().await;
    check_callbacks(&receiver.calls(), &ids, "s1");
    server.abort();
    stack.shutdown().await.unwrap();
}
