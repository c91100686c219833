//! deliver's start: the ops HTTP server answers before RabbitMQ is reached (so a liveness
//! probe never kills a process that is waiting or replaying), `/readyz` says what it waits
//! for, and a broker that refuses for good ends the start with the reason.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::time::Duration;

use mailpipe_deliver::startup::Application;
use support::{Harness, PoolSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_the_broker_is_unreachable_and_readyz_names_it() {
    let mut h = Harness::new("deliver-unreachable", PoolSpec::default()).await;
    let broker_port = free_port();
    h.common.rabbitmq.url = format!("amqp://guest:guest@127.0.0.1:{broker_port}/%2f");
    let http_port = free_port();
    h.settings.http_listen = format!("127.0.0.1:{http_port}").parse().unwrap();

    let shutdown = CancellationToken::new();
    let (common, settings, stop) = (h.common.clone(), h.settings.clone(), shutdown.clone());
    let build = tokio::spawn(async move { Application::build(&common, &settings, stop).await });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let health = loop {
        match http_get(http_port, "/healthz").await {
            Some(r) => break r,
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            None => panic!("/healthz never answered while RabbitMQ was unreachable"),
        }
    };
    assert!(health.starts_with("HTTP/1.0 200"), "{health}");
    let ready = http_get(http_port, "/readyz").await.unwrap();
    assert!(ready.starts_with("HTTP/1.0 503"), "{ready}");
    assert!(
        ready.contains(&format!("RabbitMQ at amqp://guest@127.0.0.1:{broker_port}"))
            && ready.contains("taking mailbox leases and rebuilding their windows: 0 sends read"),
        "says what it waits for: {ready}"
    );
    let metrics = http_get(http_port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("mailpipe_deliver_replayed_events 0"),
        "{metrics}"
    );
    assert!(!build.is_finished(), "still waiting for RabbitMQ");

    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), build)
        .await
        .expect("the start ends on shutdown")
        .unwrap();
    assert!(result.is_err(), "no application without a broker");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_ends_the_start_at_once_with_the_reason() {
    let mut h = Harness::new("deliver-refused", PoolSpec::default()).await;
    h.common.rabbitmq.url = h
        .common
        .rabbitmq
        .url
        .replace("guest:guest@", "guest:wrong-password@");
    let shutdown = CancellationToken::new();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        Application::build(&h.common, &h.settings, shutdown.clone()),
    )
    .await
    .expect("a refused login is not retried");
    let err = format!("{:#}", result.unwrap_err());
    assert!(
        err.contains("ACCESS_REFUSED") && err.contains("rabbitmq.password"),
        "{err}"
    );
    assert!(!err.contains("wrong-password"), "{err}");
    assert!(
        shutdown.is_cancelled(),
        "the process is told to stop (every loop ends, exit non-zero)"
    );
    h.finish().await;
}
