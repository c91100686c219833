//! The write-ahead decision is the one place a send is allowed (migration 0009): two
//! deliver instances (each with its own owner id, leases and database connections, as two
//! processes have) against the simulator, a real RabbitMQ and PostgreSQL. Copies of a job in
//! both at once are mailed once; a job accepted but never recorded (a crash between the two)
//! is recorded, not sent again; a cancel is final; a tenant's external-recipient window is
//! shared exactly.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailpipe_common::amqp::Stage;
use mailpipe_common::contract::{DeliveryEvent, EventKind};
use mailpipe_common::domain::{BatchId, EmailAddress, JobId};
use mailpipe_common::store::{BatchControl, Decision, SendOutcome, SendRules, SendStart};
use support::{Harness, Limits, PoolSpec, mailbox_address, recipients};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Every test ends within this, or fails saying what it waited for.
const LIMIT: Duration = Duration::from_secs(120);

/// Waits until every deliver queue (and the retry ladder) is empty.
async fn drained(h: &Harness) {
    let topology = h.broker.broker.topology();
    let mut queues = topology.stage_queues(Stage::Deliver);
    for level in 1..=topology.retry_levels() as u32 {
        if let Some((_, _, delay)) = topology.retry_route(Stage::Deliver, level) {
            queues.push(topology.retry_queue(Stage::Deliver, delay));
        }
    }
    let deadline = tokio::time::Instant::now() + LIMIT;
    'outer: loop {
        for q in &queues {
            if h.broker.depth(q).await > 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "queue {q} never drained"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'outer;
            }
        }
        return;
    }
}

/// Waits until no job of the record is left unfinished.
async fn all_finished(h: &Harness, jobs: i64) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let finished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state IN ('delivered', 'cancelled', 'failed', 'suppressed', 'expired')",
        )
        .fetch_one(h.broker.store().pool())
        .await
        .unwrap();
        if finished >= jobs {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {finished} of {jobs} jobs finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the gauge `name` with these labels in this process's registry (deliver
/// instances run in the test's process).
fn gauge(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    prometheus::gather()
        .into_iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().to_vec())
        .find(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_gauge().get_value())
}

/// Deliver instances of one pool, as separate processes (own owner ids and leases).
struct Instances(Vec<(CancellationToken, JoinHandle<anyhow::Result<()>>)>);

impl Instances {
    async fn start(h: &Harness, n: usize) -> Self {
        let mut all = Vec::new();
        for _ in 0..n {
            all.push(h.start_deliver().await);
        }
        Self(all)
    }

    /// Stops them all; each must stop cleanly.
    async fn stop(self) {
        for (shutdown, task) in self.0 {
            shutdown.cancel();
            task.await.unwrap().unwrap();
        }
    }
}

/// A harness of `mailboxes`, each allowed `per_second` messages a second.
async fn harness(
    name: &str,
    mailboxes: usize,
    per_second: u64,
    shared_tenant: Option<(u64, u64)>,
) -> Harness {
    Harness::new(
        name,
        PoolSpec {
            mailboxes,
            limits: Limits {
                messages: per_second,
                message_window_ms: 1_000,
                ..Limits::default()
            },
            shared_tenant,
            ..PoolSpec::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_two_copies_of_every_job_mail_each_once() {
    let h = harness("decide-dupes", 4, 200, None).await;
    const JOBS: usize = 300;
    // Each job twice, side by side: both instances take copies from the same queue.
    h.publish_jobs(JOBS, 2).await;
    let deliver = Instances::start(&h, 2).await;
    h.wait_accepted(JOBS, LIMIT).await;
    all_finished(&h, JOBS as i64).await;
    drained(&h).await;
    deliver.stop().await;

    let subjects = h.subjects();
    let unique: HashSet<_> = subjects.iter().collect();
    assert_eq!(unique.len(), JOBS, "every job delivered");
    assert_eq!(subjects.len(), JOBS, "no job mailed twice");
    let accepted: i64 = sqlx::query_scalar("SELECT count(*) FROM sends WHERE outcome = 'accepted'")
        .fetch_one(h.broker.store().pool())
        .await
        .unwrap();
    assert_eq!(accepted, JOBS as i64, "one accepted send per job on record");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_accepted_but_never_recorded_is_recorded_delivered_without_a_second_mail() {
    let h = Harness::new("decide-crashed", PoolSpec::default()).await;
    let store = h.broker.store().clone();
    // A process that died right after the 250: its send is closed `accepted`, the job is
    // still `rendered` (what a crash between two records left before they were one).
    let dead = Uuid::new_v4();
    let mailbox = mailbox_address(0);
    let token = store
        .acquire_lease(dead, &mailbox, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let send = SendStart {
        id: Uuid::now_v7(),
        mailbox: mailbox.clone(),
        tenant: Some("t0".into()),
        job_id: "crashed".into(),
        batch: Some("batch-1".into()),
        message_id: "<crashed@mailpipe.test>".into(),
        owner: dead,
        token,
        recipients: vec![EmailAddress::parse(&recipients(0, 1)[0]).unwrap()],
        external_recipients: 1,
        budget: Duration::from_secs(30),
        rules: SendRules::default(),
    };
    assert_eq!(store.open_send(&send).await.unwrap(), Decision::Written);
    store
        .close_send(
            send.id,
            SendOutcome::Accepted {
                recipients: 1,
                external: 1,
            },
        )
        .await
        .unwrap();
    store
        .release_leases(dead, std::slice::from_ref(&mailbox))
        .await
        .unwrap();

    h.publish("crashed", "billing@contoso.example", &recipients(0, 1))
        .await;
    h.publish("fresh", "billing@contoso.example", &recipients(1, 1))
        .await;
    let (shutdown, task) = h.start_deliver().await;
    h.wait_accepted(1, LIMIT).await;
    all_finished(&h, 2).await;
    drained(&h).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    assert_eq!(h.subjects(), vec!["Subject: Invoice fresh".to_owned()]);
    let (state, mailbox_recorded): (String, Option<String>) =
        sqlx::query_as("SELECT state, mailbox FROM jobs WHERE id = 'crashed'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(state, "delivered");
    assert_eq!(mailbox_recorded.as_deref(), Some(mailbox.as_str()));
    let sends: i64 = sqlx::query_scalar("SELECT count(*) FROM sends WHERE job_id = 'crashed'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(sends, 1, "no further send was even tried (no loop)");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_cancel_commits_no_send_of_its_batch_starts() {
    // Slow enough that the cancel lands mid-batch: 6 mailboxes, 4 messages per second each.
    let h = harness("decide-cancel", 6, 4, None).await;
    // A month-end batch: the cancel is one statement over 20,000 jobs while 2 processes send.
    const JOBS: usize = 20_000;
    // On record as ingest leaves a job it published (so the cancel finds it unsent).
    let accepted = DeliveryEvent::new(
        JobId::parse("job-0").unwrap(),
        Some(BatchId::parse("batch-1").unwrap()),
        EventKind::Accepted,
    );
    h.broker.store().record_event(&accepted).await.unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, batch_id, state, recipient_count, accepted_at, updated_at)
         SELECT 'job-' || g, 'batch-1', 'accepted', 1, now(), now() FROM generate_series(1, $1) g",
    )
    .bind(JOBS as i64 - 1)
    .execute(h.broker.store().pool())
    .await
    .unwrap();
    h.publish_jobs(JOBS, 1).await;
    let deliver = Instances::start(&h, 2).await;
    h.wait_accepted(30, LIMIT).await;
    let store = h.broker.store().clone();
    let (control, cancelled) = store
        .set_batch_control("batch-1", BatchControl::Cancelled)
        .await
        .unwrap()
        .expect("the batch is known");
    let committed: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(control, BatchControl::Cancelled);
    assert!(cancelled > 0, "the cancel came mid-batch");
    all_finished(&h, JOBS as i64).await;
    drained(&h).await;
    deliver.stop().await;

    let late: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT job_id, started_at FROM sends WHERE started_at > $1 ORDER BY started_at",
    )
    .bind(committed)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(late.is_empty(), "sends started after the cancel: {late:?}");
    let both: Vec<String> = sqlx::query_scalar(
        "SELECT job_id FROM job_events GROUP BY job_id
         HAVING bool_or(kind = 'cancelled') AND bool_or(kind = 'delivered')",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(both.is_empty(), "cancelled and delivered: {both:?}");
    // The cancel ended what it answered; deliver ended the few it met meanwhile (the
    // cancel works through the batch in chunks after it committed); the rest were delivered.
    let counts: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT state, count(*) FROM jobs GROUP BY state")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .collect();
    let all_cancelled = counts.get("cancelled").copied().unwrap_or(0);
    assert!(all_cancelled >= cancelled as i64, "{counts:?}");
    assert_eq!(
        all_cancelled + counts.get("delivered").copied().unwrap_or(0),
        JOBS as i64,
        "{counts:?}"
    );
    assert_eq!(
        counts.get("delivered").copied().unwrap_or(0) as usize,
        h.sim.accepted().len(),
        "{counts:?}"
    );
    assert_eq!(counts.values().sum::<i64>(), JOBS as i64, "{counts:?}");
    h.finish().await;
}

/// One tenant, 30 external recipients per 4 s, the same in the simulator: the mailboxes
/// could send far more, so the tenant's window binds, and every instance fills it at once.
async fn instances_share_a_tenant_window(instances: usize) {
    let h = harness(
        &format!("decide-tenant-{instances}"),
        6,
        100,
        Some((30, 4_000)),
    )
    .await;
    const JOBS: usize = 100;
    h.publish_jobs(JOBS, 1).await;
    let deliver = Instances::start(&h, instances).await;
    // Meanwhile /metrics says why nothing is sent: the tenant's external budget is spent.
    let sampler = tokio::spawn(async {
        let (mut spent, mut named) = (false, false);
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !(spent && named) && tokio::time::Instant::now() < deadline {
            spent |= gauge(
                "mailpipe_deliver_tenant_external_recipients_left",
                &[("tenant", "t0")],
            ) == Some(0.0);
            named |= gauge(
                "mailpipe_deliver_tenant_blocked_reason",
                &[("tenant", "t0"), ("reason", "tenant_external_budget")],
            ) == Some(1.0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (spent, named)
    });
    h.wait_accepted(JOBS, LIMIT).await;
    all_finished(&h, JOBS as i64).await;
    deliver.stop().await;
    assert_eq!(
        sampler.await.unwrap(),
        (true, true),
        "while the tenant's window was full, the gauges showed 0 left and the reason"
    );

    let refused: Vec<_> = h
        .sim
        .refusals()
        .into_iter()
        .filter(|r| r.code != 0)
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert_eq!(h.subjects().len(), JOBS, "each job once");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_tenant_window_without_a_single_refusal() {
    instances_share_a_tenant_window(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_a_tenant_window_without_a_single_refusal() {
    instances_share_a_tenant_window(3).await;
}
