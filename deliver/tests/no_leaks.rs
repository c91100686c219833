//! Nothing a harness opens outlives it: after a whole deliver run (simulator, broker,
//! database, deliver's own connections) and its cleanup, the test process holds no more
//! RabbitMQ connection threads (`lapin-io-loop`), watchdog threads or TCP sockets
//! (RabbitMQ, PostgreSQL, SMTP, HTTP) than before. Alone in its binary, so no other test's
//! connections are counted.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use mailpipe_common::testkit::within;
use support::{Harness, PoolSpec, recipients};

/// What a leak would show: threads by name, and open TCP sockets. (Unix socket pairs are
/// left out: Tokio's signal driver opens one per process, once, and keeps it.)
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Census {
    lapin_threads: usize,
    watchdogs: usize,
    tcp_sockets: usize,
}

fn census() -> Census {
    let mut c = Census {
        lapin_threads: 0,
        watchdogs: 0,
        tcp_sockets: tcp_sockets().len(),
    };
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        match name.trim() {
            "lapin-io-loop" => c.lapin_threads += 1,
            "test-watchdog" => c.watchdogs += 1,
            _ => {}
        }
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harness_run_leaves_no_connection_thread_or_socket_behind() {
    let before = census();
    {
        let h = Harness::new(
            "leaks",
            PoolSpec {
                mailboxes: 2,
                ..PoolSpec::default()
            },
        )
        .await;
        let (shutdown, run) = h.start_deliver().await;
        for i in 0..3 {
            h.publish(
                &format!("leak-{i}"),
                "billing@contoso.example",
                &recipients(i, 1),
            )
            .await;
        }
        h.wait_accepted(3, Duration::from_secs(60)).await;
        let during = census();
        assert!(
            during.lapin_threads > before.lapin_threads
                && during.watchdogs > before.watchdogs
                && during.tcp_sockets > before.tcp_sockets,
            "the census sees the harness's connections and watchdog: {during:?}"
        );
        shutdown.cancel();
        within(Duration::from_secs(60), "deliver stopping", run)
            .await
            .unwrap()
            .unwrap();
        h.finish().await;
    }
    // Closing is asynchronous (a connection's thread ends after the close handshake):
    // wait for it, with a wide margin, then compare.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut after = census();
    while after != before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = census();
    }
    assert_eq!(
        after,
        before,
        "left behind by the harness run; TCP sockets open now: {}",
        tcp_sockets().join("; ")
    );
}

/// The process's open TCP sockets, each with its line of /proc/net/tcp (addresses in hex).
fn tcp_sockets() -> Vec<String> {
    let mut table = String::new();
    for f in ["tcp", "tcp6"] {
        table.push_str(&std::fs::read_to_string(format!("/proc/self/net/{f}")).unwrap_or_default());
    }
    let mut out = Vec::new();
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        else {
            continue;
        };
        if let Some(line) = table
            .lines()
            .find(|l| l.split_whitespace().nth(9) == Some(inode))
        {
            out.push(line.trim().to_owned());
        }
    }
    out
}
