//! ingest stays reachable under slow and idle clients without a token: header and body
//! read timeouts, a connection cap under the open-file limit, and a cap on batch uploads
//! being read. Its own test binary: it counts this process's descriptors.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use mailpipe_common::config::TelemetrySettings;
use mailpipe_common::testkit::TestBroker;
use mailpipe_ingest::Config;
use support::{TOKEN, TestApp, fixture_dir, job_json, settings_for, test_pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tests run one at a time: one counts the process's descriptors, which the others'
/// hundreds of sockets would move.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn spawn(name: &str, header_ms: u64, max_connections: usize) -> TestApp {
    let broker = TestBroker::start(name).await;
    let dir = fixture_dir();
    let mut ingest = settings_for(dir.path());
    ingest.header_read_timeout_ms = header_ms;
    ingest.body_read_timeout_ms = 1_000;
    ingest.max_connections = max_connections;
    ingest.max_concurrent_batches = 2;
    let config = Config {
        rabbitmq: broker.settings.clone(),
        telemetry: TelemetrySettings::default(),
        database: broker.database.clone(),
        ingest,
        pool: Ok(test_pool()),
    };
    TestApp::spawn_with(broker, dir, config).await
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; returns what it said.
async fn until_closed(mut s: TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server never closed a slow connection");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_and_normal_requests_still_served() {
    let _serial = SERIAL.lock().await;
    let app = spawn("lim-slow", 1_000, 64).await;
    let target = addr(&app);
    let mut slow = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(&target).await.unwrap();
        if i % 2 == 0 {
            // Half a request head, never finished.
            s.write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Ty")
                .await
                .unwrap();
        }
        slow.push(s);
    }
    // Served while the 300 are held (connections beyond the cap wait in the backlog
    // until the header timeout frees a slot).
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{}/v1/jobs", app.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(job_json("under-siege"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    // Every slow connection is closed by the server.
    for s in slow {
        until_closed(s).await;
    }

    // A body that stops halfway: 408 naming the setting.
    let mut s = TcpStream::connect(&target).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"id\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = until_closed(s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("ingest.body_read_timeout_ms"), "{answer}");
    app.cleanup().await;
}

/// Stalled batch uploads hold at most `max_concurrent_batches` threads; one more is told
/// to retry, and a stalled one ends with 408.
#[tokio::test]
async fn stalled_batch_uploads_are_capped_and_timed_out() {
    let _serial = SERIAL.lock().await;
    let app = spawn("lim-batch", 30_000, 64).await;
    let target = addr(&app);
    let stalled_head = format!(
        "POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{{\"id\r\n"
    );
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(&target).await.unwrap();
        s.write_all(stalled_head.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    // Both slots are taken once the server has started reading both uploads: a third
    // is refused while they last (polled, since the server picks them up asynchronously).
    let mut third = None;
    for _ in 0..200 {
        let r = app
            .post("/v1/batches")
            .header("content-type", "application/x-ndjson")
            .body(job_json("third"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            third = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let third = third.expect("a third upload was never refused");
    assert!(third.contains("ingest.max_concurrent_batches"), "{third}");
    for s in stalled {
        let answer = until_closed(s).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let r = app
        .post("/v1/batches")
        .header("content-type", "application/x-ndjson")
        .body(job_json("after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    app.cleanup().await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn open_connections_stay_under_the_cap() {
    let _serial = SERIAL.lock().await;
    let app = spawn("lim-cap", 60_000, 32).await;
    let target = addr(&app);
    let before = open_fds();
    let mut idle = Vec::new();
    // 100: more than the cap, and few enough to fit in the listen backlog.
    for _ in 0..100 {
        idle.push(TcpStream::connect(&target).await.unwrap());
    }
    // Our 100 ends, plus the server's accepted ones: it accepts up to the cap (less a
    // few descriptors that were open before and closed since)...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while open_fds() < before + 100 + 32 - 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server accepted fewer than its cap: {} fds, {before} before",
            open_fds()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and no more (without a cap it would hold all 100).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = open_fds() - before;
    assert!(
        held < 100 + 32 + 20,
        "{held} descriptors for 100 connections"
    );
    drop(idle);
    app.cleanup().await;
}
