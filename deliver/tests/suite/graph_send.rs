//! The Graph transport (`transport = "graph"`) against the simulator's Graph, with a real
//! RabbitMQ and PostgreSQL, on mailboxes whose SMTP AUTH is switched off (`535 5.7.139`):
//! a batch ends every job delivered once through draft-then-send within the windows; `429`s
//! with and without `Retry-After` are waited out (the header's seconds to the instant, a
//! backoff without it) and nothing is sent twice; a message too large for one Graph request
//! is refused with that reason, nothing on record as sent; a mixed pool (SMTP and Graph
//! mailboxes) shares one batch, each job once, both transports used, no window overrun.

use std::collections::HashMap;
use std::time::Duration;

use mailpipe_common::testkit::within;

use crate::support::{Harness, Limits, PoolSpec, mailbox_address, recipients};

fn graph_pool(mailboxes: usize) -> PoolSpec {
    PoolSpec {
        mailboxes,
        limits: Limits {
            messages: 5,
            message_window_ms: 1_000,
            ..Limits::default()
        },
        graph_transport: true,
        ..PoolSpec::default()
    }
}

/// Message-ID → how many times the simulator accepted it.
fn accepted_per_message_id(h: &Harness) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for m in h.sim.accepted() {
        let text = String::from_utf8_lossy(&m.raw).into_owned();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .expect("a Message-ID")
            .trim()
            .to_owned();
        *out.entry(id).or_default() += 1;
    }
    out
}

async fn delivered_jobs(h: &Harness) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'delivered'")
        .fetch_one(h.broker.store().pool())
        .await
        .unwrap()
}

async fn wait_delivered(h: &Harness, n: i64, limit: Duration) {
    within(limit, "every job delivered", async {
        while delivered_jobs(h).await < n {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_through_graph_ends_every_job_delivered_once_on_a_tenant_without_smtp_auth() {
    let h = Harness::new("graph-batch", graph_pool(2)).await;
    const JOBS: usize = 30;
    h.publish_jobs(JOBS, 1).await;
    // A second copy of a few jobs (a redelivery): still sent once.
    h.publish_jobs(3, 1).await;
    let (stop, task) = h.start_deliver().await;
    wait_delivered(&h, JOBS as i64, Duration::from_secs(90)).await;
    h.wait_accepted(JOBS, Duration::from_secs(30)).await;

    let per_id = accepted_per_message_id(&h);
    assert_eq!(per_id.len(), JOBS, "every job accepted");
    assert!(
        per_id.values().all(|n| *n == 1),
        "a job sent twice: {per_id:?}"
    );
    assert!(h.sim.refusals().is_empty(), "{:?}", h.sim.refusals());
    for i in 0..2 {
        let stats = h.sim.mailbox(&mailbox_address(i)).unwrap();
        assert!(
            stats.max_messages_in_window <= 5,
            "window overrun: {stats:?}"
        );
        // Never over SMTP: its AUTH is off, and deliver does not try.
        assert_eq!(h.sim.auth_attempts(&mailbox_address(i)), 0);
        // Drafts are all sent; Sent Items has each message.
        let drafts = h.sim.folder(&mailbox_address(i), "Drafts").unwrap();
        assert!(drafts.messages.is_empty(), "{drafts:?}");
        assert!(h.sim.graph_mailbox(&mailbox_address(i)).max_concurrent <= 4);
    }
    let sent: usize = (0..2)
        .map(|i| {
            h.sim
                .folder(&mailbox_address(i), "Sent Items")
                .unwrap()
                .messages
                .len()
        })
        .sum();
    assert_eq!(sent, JOBS);
    // Each send on record names its draft, and ended accepted.
    let (drafts, accepted): (i64, i64) = sqlx::query_as(
        "SELECT count(graph_draft_id), count(*) FILTER (WHERE outcome = 'accepted') FROM sends",
    )
    .fetch_one(h.broker.store().pool())
    .await
    .unwrap();
    assert_eq!((drafts, accepted), (JOBS as i64, JOBS as i64));
    // The delivered event carries Graph's 202.
    let events = h.events().await;
    let delivered: Vec<_> = events
        .iter()
        .filter(|e| e.kind == mailpipe_common::contract::EventKind::Delivered)
        .collect();
    assert_eq!(delivered.len(), JOBS);
    assert!(
        delivered
            .iter()
            .all(|e| e.smtp.as_ref().is_some_and(|r| r.code == 202)),
        "{delivered:?}"
    );
    stop.cancel();
    within(Duration::from_secs(30), "deliver stops", task)
        .await
        .unwrap()
        .unwrap();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_429s_are_waited_out_with_and_without_retry_after_and_nothing_is_sent_twice() {
    // One send at a time, so a retry is told apart from another send's request.
    let mut spec = graph_pool(1);
    spec.limits.connections = 1;
    let h = Harness::new("graph-429", spec).await;
    let mailbox = mailbox_address(0);
    // The first two requests: 429 with Retry-After: 1.
    h.sim.throttle_graph(&mailbox, 2, 1);
    for i in 0..3 {
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
        )
        .await;
    }
    let (stop, task) = h.start_deliver().await;
    wait_delivered(&h, 3, Duration::from_secs(60)).await;
    // Then two more without Retry-After.
    h.sim.throttle_graph_without_retry_after(&mailbox, 2);
    for i in 3..6 {
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
        )
        .await;
    }
    wait_delivered(&h, 6, Duration::from_secs(60)).await;

    let stats = h.sim.graph_mailbox(&mailbox);
    assert_eq!(stats.throttle_replies.len(), 4, "{stats:?}");
    // Each throttled request is tried again only after its Retry-After (1 s), or, without
    // the header, after the client's own backoff (2 s at first). A request of the Inbox
    // reader already under way may arrive in between: the retry of the same request is
    // what is judged.
    let log = h.sim.graph_requests();
    let throttled: Vec<_> = log.iter().filter(|r| r.status == 429).collect();
    assert_eq!(throttled.len(), 4, "{log:#?}");
    for t in throttled {
        let retry = log
            .iter()
            .find(|r| r.at > t.answered_at && r.method == t.method && r.path == t.path)
            .unwrap_or_else(|| panic!("{t:?} never tried again"));
        let least = if t.retry_after_header {
            chrono::Duration::seconds(1)
        } else {
            chrono::Duration::milliseconds(1_900)
        };
        assert!(
            retry.at - t.answered_at >= least,
            "tried again too early: {t:?} then {retry:?}"
        );
    }
    let per_id = accepted_per_message_id(&h);
    assert_eq!(per_id.len(), 6);
    assert!(per_id.values().all(|n| *n == 1), "{per_id:?}");
    stop.cancel();
    within(Duration::from_secs(30), "deliver stops", task)
        .await
        .unwrap()
        .unwrap();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_one_graph_request_is_refused_with_that_reason() {
    let h = Harness::new("graph-large", graph_pool(1)).await;
    let (meta, mime) = crate::support::rendered(
        "job-big",
        "billing@contoso.example",
        &recipients(0, 1),
        |_| {},
    );
    // 3.2 MB of text and no attachment to upload apart: 4.3 MB as base64, over Graph's
    // 4 MB per request.
    let mut big = mime.into_bytes();
    big.extend(std::iter::repeat_n(b'x', 3_200_000));
    h.broker
        .pipeline
        .send_rendered(&meta, &big)
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    let (stop, task) = h.start_deliver().await;
    let dead = within(
        Duration::from_secs(60),
        "the message is dead-lettered",
        async {
            loop {
                let dead = h.dead_letters().await;
                if !dead.is_empty() {
                    return dead;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    assert!(
        dead[0].0.contains("single-request limit"),
        "reason: {}",
        dead[0].0
    );
    assert!(h.sim.accepted().is_empty());
    let sends: i64 = sqlx::query_scalar("SELECT count(*) FROM sends")
        .fetch_one(h.broker.store().pool())
        .await
        .unwrap();
    assert_eq!(sends, 0, "nothing on record as sent");
    stop.cancel();
    within(Duration::from_secs(30), "deliver stops", task)
        .await
        .unwrap()
        .unwrap();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_pool_of_smtp_and_graph_mailboxes_shares_one_batch() {
    // Mailboxes 0 and 1 send through Graph (their SMTP AUTH is off), 2 and 3 over SMTP.
    let spec = PoolSpec {
        mailboxes: 4,
        smtp_mailboxes: vec![2, 3],
        ..graph_pool(4)
    };
    let h = Harness::new("graph-mixed", spec).await;
    const JOBS: usize = 60;
    h.publish_jobs(JOBS, 1).await;
    let (stop, task) = h.start_deliver().await;
    wait_delivered(&h, JOBS as i64, Duration::from_secs(90)).await;
    h.wait_accepted(JOBS, Duration::from_secs(30)).await;

    let per_id = accepted_per_message_id(&h);
    assert_eq!(per_id.len(), JOBS, "every job accepted");
    assert!(
        per_id.values().all(|n| *n == 1),
        "a job sent twice: {per_id:?}"
    );
    assert!(h.sim.refusals().is_empty(), "{:?}", h.sim.refusals());
    // Both transports carried part of the batch, each mailbox within its window.
    let accepted_by: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT mailbox, count(*) FROM sends WHERE outcome = 'accepted' GROUP BY mailbox",
    )
    .fetch_all(h.broker.store().pool())
    .await
    .unwrap()
    .into_iter()
    .collect();
    for i in 0..4 {
        let address = mailbox_address(i);
        assert!(
            accepted_by.get(&address).copied().unwrap_or(0) > 0,
            "{address} sent nothing: {accepted_by:?}"
        );
        let stats = h.sim.mailbox(&address).unwrap();
        assert!(
            stats.max_messages_in_window <= 5,
            "window overrun: {stats:?}"
        );
    }
    for graph in [0, 1] {
        let address = mailbox_address(graph);
        assert_eq!(h.sim.auth_attempts(&address), 0, "{address} tried SMTP");
        let sent = h.sim.folder(&address, "Sent Items").unwrap().messages.len() as i64;
        assert_eq!(sent, accepted_by[&address], "{address}: sent through Graph");
        assert!(h.sim.graph_mailbox(&address).max_concurrent <= 4);
    }
    for smtp in [2, 3] {
        let address = mailbox_address(smtp);
        assert!(
            h.sim.auth_attempts(&address) > 0,
            "{address} never used SMTP"
        );
        let drafts = h
            .sim
            .graph_requests()
            .into_iter()
            .filter(|r| {
                r.mailbox == address
                    && r.method == "POST"
                    && (r.path.ends_with("/messages") || r.path.ends_with("/send"))
            })
            .count();
        assert_eq!(drafts, 0, "{address} sent through Graph");
    }
    // The records name the draft exactly for the Graph mailboxes' sends.
    let (graph_sends, with_draft): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE mailbox IN ($1, $2)), count(graph_draft_id) FROM sends WHERE outcome = 'accepted'",
    )
    .bind(mailbox_address(0))
    .bind(mailbox_address(1))
    .fetch_one(h.broker.store().pool())
    .await
    .unwrap();
    assert_eq!(graph_sends, with_draft);
    stop.cancel();
    within(Duration::from_secs(30), "deliver stops", task)
        .await
        .unwrap()
        .unwrap();
    h.finish().await;
}
