//! The send decision's cost (`Store::open_send`, migration 0009): serial, then at 12 and at
//! 100 concurrent sends, each without and with a tenant external-recipient budget that
//! every send must pass (the budget's row lock and its window's sum). Each send is then
//! closed `accepted` with its job's event (`Store::record_outcome`), as deliver does, so
//! the window the budget sums grows as in a real run. Prints decisions per second and the
//! decision's latency (p50, p99, max). Needs PostgreSQL, like the tests.
//!
//! `cargo bench -p mailpipe-common --bench send_decision` (`MAILPIPE_BENCH_SENDS=N`: sends
//! per scenario, default 3,000).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpipe_common::contract::{DeliveryEvent, EventKind};
use mailpipe_common::domain::{BatchId, EmailAddress, JobId};
use mailpipe_common::store::{Decision, SendOutcome, SendRules, SendStart, Store};
use mailpipe_common::testkit::{drop_schema, test_store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Mailboxes the sends spread over (one lease each, as one deliver process holds them).
const MAILBOXES: usize = 100;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Scenario {
    name: &'static str,
    concurrency: usize,
    tenant_budget: Option<(u32, Duration)>,
}

/// Runs `sends` decisions (and their outcomes) from `concurrency` tasks; returns the
/// decisions' latencies and the wall time.
async fn run(
    store: &Store,
    owner: Uuid,
    tokens: &Arc<Vec<(String, i64)>>,
    s: &Scenario,
    sends: usize,
    round: usize,
) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..s.concurrency {
        let store = store.clone();
        let tokens = tokens.clone();
        let rules = SendRules {
            uncertain_hold: None,
            tenant_budget: s.tenant_budget,
        };
        let per_task = sends / s.concurrency + usize::from(t < sends % s.concurrency);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let (mailbox, token) = &tokens[(t + i * 7) % tokens.len()];
                let job = format!("r{round}-t{t}-{i}");
                let start = SendStart {
                    id: Uuid::now_v7(),
                    mailbox: mailbox.clone(),
                    tenant: Some("contoso".into()),
                    job_id: job.clone(),
                    batch: Some(format!("bench-{round}")),
                    message_id: format!("<{job}@mailpipe.bench>"),
                    owner,
                    token: *token,
                    recipients: vec![EmailAddress::parse("ann@fabrikam.example").unwrap()],
                    external_recipients: 1,
                    budget: Duration::from_secs(90),
                    rules,
                };
                let t0 = Instant::now();
                let decision = store.open_send(&start).await.expect("the decision");
                latencies.push(t0.elapsed());
                assert_eq!(decision, Decision::Written, "{job}");
                let mut e = DeliveryEvent::new(
                    JobId::parse(&job).unwrap(),
                    Some(BatchId::parse(&format!("bench-{round}")).unwrap()),
                    EventKind::Delivered,
                );
                e.mailbox = Some(EmailAddress::parse(mailbox).unwrap());
                e.recipients = 1;
                e.external_recipients = 1;
                store
                    .record_outcome(
                        start.id,
                        SendOutcome::Accepted {
                            recipients: 1,
                            external: 1,
                        },
                        &e,
                    )
                    .await
                    .expect("the outcome");
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(sends);
    for t in tasks {
        all.extend(t.await.expect("a bench task"));
    }
    (all, started.elapsed())
}

#[tokio::main]
async fn main() {
    let sends: usize = std::env::var("MAILPIPE_BENCH_SENDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let (store, settings) = test_store("bench-decision", CancellationToken::new()).await;
    let owner = Uuid::new_v4();
    let mut tokens = Vec::new();
    for m in 0..MAILBOXES {
        let mailbox = format!("sender{m}@contoso.example");
        let token = store
            .acquire_lease(owner, &mailbox, Duration::from_secs(3600))
            .await
            .expect("a lease")
            .expect("a free mailbox");
        tokens.push((mailbox, token));
    }
    let tokens = Arc::new(tokens);
    // Room for every send of the run: the budget is checked (locked and summed), never full.
    let budget = Some((u32::MAX / 2, Duration::from_secs(86_400)));
    let scenarios = [
        Scenario {
            name: "serial",
            concurrency: 1,
            tenant_budget: None,
        },
        Scenario {
            name: "serial, tenant budget",
            concurrency: 1,
            tenant_budget: budget,
        },
        Scenario {
            name: "12 concurrent",
            concurrency: 12,
            tenant_budget: None,
        },
        Scenario {
            name: "12 concurrent, tenant budget",
            concurrency: 12,
            tenant_budget: budget,
        },
        Scenario {
            name: "100 concurrent",
            concurrency: 100,
            tenant_budget: None,
        },
        Scenario {
            name: "100 concurrent, tenant budget",
            concurrency: 100,
            tenant_budget: budget,
        },
    ];
    println!("send decision: {sends} sends per scenario over {MAILBOXES} mailboxes, one tenant");
    for (round, s) in scenarios.iter().enumerate() {
        let (mut lat, wall) = run(&store, owner, &tokens, s, sends, round).await;
        lat.sort();
        println!(
            "{:<32} {:>8.0} decisions/s   decision p50={:.2} ms p99={:.2} ms max={:.2} ms",
            s.name,
            lat.len() as f64 / wall.as_secs_f64(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().unwrap_or(&Duration::ZERO)),
        );
    }
    drop_schema(&store, &settings.schema).await;
    store.close().await;
}
