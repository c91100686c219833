//! A broker that accepts TCP but stops answering (a partition, an overloaded node): the
//! real render `Application` behind a TCP proxy that can be switched to swallow every
//! byte. `/readyz` must say so while it lasts, and work must flow again within seconds
//! of the broker answering again, without a restart.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mailpipe_common::amqp::{Stage, header_str};
use mailpipe_common::config::CommonSettings;
use mailpipe_common::contract::{META_HEADER, RenderedMeta};
use mailpipe_common::testkit::TestBroker;
use mailpipe_render::Application;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use support::{examples_dir, invoice_job, pdf::sample_pdf, settings};

/// Forwards to RabbitMQ, or (while `silent`) accepts and reads everything and answers
/// nothing. A connection that swallowed a byte stays silent: its AMQP stream is broken,
/// as after a real partition the client must notice and reconnect.
struct SilentProxy {
    addr: SocketAddr,
    silent: Arc<AtomicBool>,
}

impl SilentProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let flag = silent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let broken = Arc::new(AtomicBool::new(flag.load(Ordering::SeqCst)));
                    if broken.load(Ordering::SeqCst) {
                        swallow(client).await;
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(
                        pipe(cr, sw, flag.clone(), broken.clone()),
                        pipe(sr, cw, flag, broken)
                    );
                });
            }
        });
        Self { addr, silent }
    }

    fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }
}

async fn swallow(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
    broken: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            broken.store(true, Ordering::SeqCst);
        }
        if broken.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn readyz(addr: SocketAddr) -> String {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return String::new();
    };
    s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok();
    out
}

/// Polls `/readyz` until `want(response)` or `within` passes; returns the last response.
async fn wait_readyz(addr: SocketAddr, within: Duration, want: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let r = readyz(addr).await;
        if want(&r) || tokio::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_makes_render_unready_and_work_resumes_once_it_answers() {
    let t = TestBroker::start("render-silent").await;
    let upstream: SocketAddr = "127.0.0.1:5672".parse().unwrap();
    let proxy = SilentProxy::start(upstream).await;

    let mut rabbitmq = t.settings.clone();
    rabbitmq.url = format!("amqp://guest:guest@{}/%2f?heartbeat=2", proxy.addr);
    rabbitmq.operation_timeout_ms = 3_000;
    rabbitmq.reconnect_max_backoff_ms = 1_000;
    let shutdown = CancellationToken::new();
    let common = CommonSettings {
        rabbitmq,
        telemetry: Default::default(),
        database: t.database.clone(),
    };
    let app = Application::build(settings(&examples_dir(), None), common, shutdown.clone())
        .await
        .expect("builds");
    let http = app.http_addr();
    let run = tokio::spawn(app.run_until_stopped());
    let deliver_queue = t.broker.topology().stage_queue(Stage::Deliver);
    let pdf = sample_pdf(2_000);

    // Work flows through the proxy.
    t.pipeline
        .send_job(&invoice_job("silent-1", &pdf))
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    assert!(
        t.get(&deliver_queue, Duration::from_secs(30))
            .await
            .is_some(),
        "rendered through the proxy before the silence"
    );
    assert!(readyz(http).await.starts_with("HTTP/1.0 200"));

    // The broker goes silent: readiness must say so (heartbeats of 2 s: within ~4 s;
    // the margin is for a loaded machine).
    proxy.set_silent(true);
    let during = wait_readyz(http, Duration::from_secs(60), |r| {
        r.starts_with("HTTP/1.0 503")
    })
    .await;
    assert!(
        during.starts_with("HTTP/1.0 503") && during.contains("RabbitMQ at amqp://guest@"),
        "/readyz while the broker is silent: {during}"
    );
    // A job published (straight to RabbitMQ) during the silence waits in the queue:
    // render, cut off, cannot take it.
    t.pipeline
        .send_job(&invoice_job("silent-2", &pdf))
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    // The broker may first push it into render's dead connection (it looks alive to the
    // broker until the missed heartbeats end it, ~4 s); then it requeues it. (The first
    // job may be back there too: its ack can have been on its way when the silence began.)
    let render_queue = t.broker.topology().stage_queue(Stage::Render);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let waiting = t.depth(&render_queue).await;
        if (1..=2).contains(&waiting) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job waits in render's queue during the silence: {waiting} there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The broker answers again: the job is rendered and readiness comes back, without
    // a restart (connect attempts are bounded at 3 s, backoff at 1 s: seconds, not
    // minutes; 60 s is the margin).
    proxy.set_silent(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let out = t.get(&deliver_queue, left).await;
        let out = out.expect("the job published during the silence is rendered after it");
        let meta = header_str(&out.delivery.properties, META_HEADER)
            .map(|h| RenderedMeta::from_header_value(&h).expect("rendered meta"));
        if meta.is_some_and(|m| m.job_id.as_str() == "silent-2") {
            break;
        }
    }
    let after = wait_readyz(http, Duration::from_secs(60), |r| {
        r.starts_with("HTTP/1.0 200")
    })
    .await;
    assert!(after.starts_with("HTTP/1.0 200"), "/readyz after: {after}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("render stops after the silence")
        .unwrap()
        .unwrap();
    t.cleanup().await;
}
