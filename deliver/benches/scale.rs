//! The pool at scale (issue 30): 10, 100 and 1,000 mailboxes, carried by 1 deliver and by
//! 3, end to end (real RabbitMQ and PostgreSQL, the simulator with its limits on, windows
//! scaled to seconds so the pool's limit stays near what 2 cores can carry). Prints, per
//! run: the fraction of the pool's limit carried, CPU per message (this process: the
//! deliver instances, the simulator and the publisher; and PostgreSQL's), database
//! transactions per message, and the simulator's limit refusals (must be 0).
//!
//! ```text
//! cargo bench -p mailpipe-deliver --bench scale              # ~4 min
//! cargo bench -p mailpipe-deliver --bench scale -- --quick   # 10 and 100 mailboxes only
//! ```
//!
//! Several deliver "processes" here are several `Application`s in this process, each with
//! its own member lock, leases and consumers (what scenario 5 of pool_throughput does), so
//! the CPU figure is this process's, not one deliver's. A benchmark, not a test: it prints
//! figures and only fails if a run does not finish.

#[path = "measure/mod.rs"]
mod measure;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use support::{Harness, Limits, PoolSpec, recipients};

fn accepted_count(h: &Harness) -> u64 {
    h.sim.mailbox_stats().iter().map(|s| s.accepted).sum()
}

fn is_limit_refusal(r: &mailpipe_sim::Refusal) -> bool {
    let text = format!("{} {} {}", r.code, r.enhanced, r.text);
    text.contains("4.4.2")
        || text.contains("SubmissionQuotaExceeded")
        || text.contains("thread limit")
        || text.contains("Concurrent connections")
        || text.contains("5.7.233")
}

/// One run: `mailboxes` limited to `limits`, a backlog of `windows` windows' worth carried
/// by `processes` deliver instances.
async fn run(mailboxes: usize, limits: Limits, windows: u64, processes: usize) {
    let n = mailboxes as u64 * limits.messages * windows;
    let mut h = Harness::new(
        &format!("bench-scale-{mailboxes}-{processes}"),
        PoolSpec {
            mailboxes,
            limits,
            ..PoolSpec::default()
        },
    )
    .await;
    h.settings.lease_ttl_ms = 6_000;
    let mut running = Vec::new();
    for _ in 0..processes {
        running.push(h.start_deliver().await);
    }
    // Every mailbox leased (fair shares) before the work arrives.
    let store = h.broker.pipeline.store().clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let owners = store.lease_owners().await.expect("database");
        let distinct: std::collections::HashSet<_> =
            owners.iter().filter_map(|(_, o, _)| *o).collect();
        if owners.len() == mailboxes
            && owners.iter().all(|(_, o, _)| o.is_some())
            && distinct.len() == processes
        {
            break;
        }
        assert!(Instant::now() < deadline, "shares never settled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    futures::stream::iter(0..n as usize)
        .for_each_concurrent(128, |i| {
            let h = &h;
            async move {
                h.publish(
                    &format!("scale-{i:07}"),
                    "billing@contoso.example",
                    &recipients(i, 1),
                )
                .await;
            }
        })
        .await;
    let tx0 = measure::transactions(h.broker.store()).await;
    let cpu0 = measure::cpu_seconds_of("self").unwrap_or(0.0);
    let pg0 = measure::postgres_cpu_seconds();
    let window = Duration::from_millis(limits.message_window_ms);
    let limit = window * (windows as u32) * 4 + Duration::from_secs(60);
    let deadline = Instant::now() + limit;
    while accepted_count(&h) < n {
        assert!(
            Instant::now() < deadline,
            "{mailboxes} mailboxes, {processes} processes: {} of {n} within {limit:?}",
            accepted_count(&h)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = measure::cpu_seconds_of("self").unwrap_or(0.0) - cpu0;
    let pg = measure::postgres_cpu_seconds() - pg0;
    let tx = measure::transactions(h.broker.store()).await - tx0;
    let accepted = h.sim.accepted();
    let first = accepted.iter().map(|m| m.received_at).min().expect("some");
    let last = accepted.iter().map(|m| m.received_at).max().expect("some");
    // The pool's limit over the run: n messages may take (windows - 1) windows at best
    // (the first window's burst at t = 0, the last at t = (windows - 1) W).
    let elapsed = (last - first).to_std().unwrap_or_default() + window;
    let rate = accepted.len() as f64 / elapsed.as_secs_f64();
    let capacity = mailboxes as f64 * limits.messages as f64 / window.as_secs_f64();
    let refused = h
        .sim
        .refusals()
        .iter()
        .filter(|r| is_limit_refusal(r))
        .count();
    println!(
        "| {mailboxes} | {processes} | {} msgs / {:.0} s | {:.3} | {:.0} | {:.0} | {:.1} | {refused} |",
        limits.messages,
        window.as_secs_f64(),
        rate / capacity,
        cpu / n as f64 * 1e6,
        pg / n as f64 * 1e6,
        tx as f64 / n as f64,
    );
    for (shutdown, task) in running {
        shutdown.cancel();
        task.await
            .expect("deliver task")
            .expect("deliver stops cleanly");
    }
    h.finish().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    if !bench && !quick {
        println!("scale: run with `cargo bench -p mailpipe-deliver --bench scale`");
        return;
    }
    println!(
        "fraction = messages / (last - first acceptance + one window) / the pool's limit; CPU in µs per message\n\
         (this process: deliver instances + simulator + publisher; PostgreSQL: all its processes);\n\
         transactions per message in the test database; refusals: the simulator's rate/quota/connection refusals.\n"
    );
    println!(
        "| mailboxes | processes | window | fraction of the limit | CPU µs/msg (bench process) | PostgreSQL CPU µs/msg | transactions/msg | limit refusals |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // Windows scaled so the pool's limit is 100-200 messages a second.
    let mut sizes = vec![
        (
            10,
            Limits {
                messages: 20,
                message_window_ms: 2_000,
                recipients: 1_000_000,
                recipient_window_ms: 60_000,
                connections: 3,
            },
            8,
        ),
        (
            100,
            Limits {
                messages: 4,
                message_window_ms: 2_000,
                recipients: 1_000_000,
                recipient_window_ms: 60_000,
                connections: 3,
            },
            8,
        ),
    ];
    if !quick {
        sizes.push((
            1_000,
            Limits {
                messages: 1,
                message_window_ms: 5_000,
                recipients: 1_000_000,
                recipient_window_ms: 60_000,
                connections: 3,
            },
            6,
        ));
    }
    for (mailboxes, limits, windows) in sizes {
        for processes in [1, 3] {
            run(mailboxes, limits, windows, processes).await;
        }
    }
}
