//! One client holding idle and half-sent connections cannot starve the others: past its
//! share it is refused at once, and `/healthz` and an authenticated POST from another
//! address answer within a second throughout the flood.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use super::{bounded, spawn_with_callbacks};
use crate::support::job_json;

/// The flooding client's address; the well-behaved one is 127.0.0.2 (all of 127/8 is
/// loopback on Linux).
const FLOODER: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];
/// Connections of each kind the flooder opens: together twice the server's default
/// `max_connections` (1,024), as in the attack that was reported.
const FLOOD: usize = 1_100;
/// The default per-client cap.
const PER_PEER: usize = 64;

async fn connect_from(source: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::from(source), 0))?;
    socket.connect(to).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_from_one_client_does_not_starve_another() {
    bounded("idle flood", Duration::from_secs(120), async {
        // The flood's sockets and the server's live in this one process.
        let fds = mailpipe_common::http_server::raise_fd_limit().unwrap_or(u64::MAX);
        assert!(
            fds > 3 * FLOOD as u64,
            "this test opens {} sockets; the open-file limit is {fds}: raise `ulimit -n`",
            2 * FLOOD
        );
        // The defaults (1,024 connections, 64 per client, a 30 s head timeout): without
        // the per-client cap the flood would hold every slot for 30 s.
        let app = spawn_with_callbacks("sec-flood", &["127.0.0.1:9"], |s| {
            assert_eq!(s.max_connections, 1024);
            assert_eq!(s.header_read_timeout_ms, 30_000);
            assert_eq!(s.max_connections_per_peer, PER_PEER);
        })
        .await;
        let server: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();

        // Idle connections, then connections that send half a request head.
        let mut held = Vec::new();
        for _ in 0..FLOOD {
            held.push(connect_from(FLOODER, server).await.expect("connect"));
        }
        for _ in 0..FLOOD {
            let mut s = connect_from(FLOODER, server).await.expect("connect");
            // Writes may fail on a connection the server refused already: that is fine.
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
            held.push(s);
        }

        let other = reqwest::Client::builder()
            .local_address(IpAddr::from(OTHER))
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        for round in 0..5 {
            let started = Instant::now();
            let health = other.get(format!("{}/healthz", app.base)).send().await;
            assert!(
                health.as_ref().is_ok_and(|r| r.status() == 200),
                "round {round}: /healthz did not answer within 1 s under the flood: {health:?}"
            );
            let post = other
                .post(format!("{}/v1/jobs", app.base))
                .bearer_auth(crate::support::TOKEN)
                .header("content-type", "application/json")
                .body(job_json(&format!("flood-{round}")))
                .send()
                .await;
            assert!(
                post.as_ref().is_ok_and(|r| r.status() == 202),
                "round {round}: an authenticated POST did not answer within 1 s: {post:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(2), "round {round}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        let metrics = other
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let refused = metrics
            .lines()
            .find(|l| {
                l.starts_with("mailpipe_http_connections_refused_total{reason=\"peer_limit\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(
            refused >= (2 * FLOOD - PER_PEER) as f64,
            "refusals not counted: {refused}"
        );
        drop(held);
        app.cleanup().await;
    })
    .await;
}
