//! deliver under SMTP faults, against the simulator and a real RabbitMQ: duplicate copies of
//! jobs in flight, 421 replies that close the session, a mailbox that cannot open sessions,
//! and a server that stays silent after the message data.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use mailpipe_common::amqp::Stage;
use mailpipe_common::contract::EventKind;
use mailpipe_common::store::Resolution;
use mailpipe_deliver::settings::UncertainPolicy;
use support::{Harness, Limits, PoolSpec, mailbox_address, recipients};

fn roomy() -> Limits {
    Limits {
        messages: 200,
        message_window_ms: 1_000,
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_of_each_job_in_flight_at_once_are_mailed_once() {
    let h = Harness::new(
        "dupes",
        PoolSpec {
            mailboxes: 4,
            limits: roomy(),
            ..PoolSpec::default()
        },
    )
    .await;
    // Each job twice, side by side: with prefetch 64 both copies are in hand together.
    for i in 0..200 {
        for _copy in 0..2 {
            h.publish(
                &format!("job-{i}"),
                "billing@contoso.example",
                &recipients(i, 1),
            )
            .await;
        }
    }
    let (shutdown, task) = h.start_deliver().await;
    h.wait_accepted(200, Duration::from_secs(90)).await;
    let queue = h.broker.broker.topology().stage_queue(Stage::Deliver);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while h.broker.depth(&queue).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second copies were never taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let subjects = h.subjects();
    let unique: HashSet<_> = subjects.iter().collect();
    assert_eq!(unique.len(), 200, "every job delivered");
    assert_eq!(subjects.len(), 200, "no job mailed twice");
    let delivered = h
        .events()
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::Delivered)
        .count();
    assert_eq!(delivered, 200, "one delivered event per job");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_retires_its_session_and_costs_only_its_own_retry() {
    let h = Harness::new(
        "reply421",
        PoolSpec {
            mailboxes: 2,
            limits: roomy(),
            faults: "[faults]\nreply_421_rate = 0.2\n".into(),
            ..PoolSpec::default()
        },
    )
    .await;
    for i in 0..100 {
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
        )
        .await;
    }
    let (shutdown, task) = h.start_deliver().await;
    h.wait_accepted(100, Duration::from_secs(90)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let injected = h.sim.refusals().iter().filter(|r| r.code == 421).count();
    assert!(injected > 0, "faults were injected");
    let retries: Vec<_> = h
        .events()
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::Retrying)
        .collect();
    // Each 421 costs its own message one attempt; the session it closed costs nothing more.
    assert_eq!(
        retries.len(),
        injected,
        "retries that were not an injected 421: {:?}",
        retries
            .iter()
            .filter(|e| e.smtp.as_ref().is_none_or(|r| r.code != 421))
            .collect::<Vec<_>>()
    );
    assert!(h.dead_letters().await.is_empty(), "no job died of it");
    let subjects = h.subjects();
    assert_eq!(subjects.iter().collect::<HashSet<_>>().len(), 100);
    assert_eq!(subjects.len(), 100);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_that_cannot_open_sessions_is_held_back_and_no_job_dies() {
    let mut h = Harness::new(
        "slowmbx",
        PoolSpec {
            mailboxes: 5,
            limits: roomy(),
            // Mailbox 0 answers nothing in time from AUTH on.
            mailbox_faults: vec![(0, "slow_reply_ms = 6000".into())],
            ..PoolSpec::default()
        },
    )
    .await;
    h.settings.smtp_timeout_ms = 2_000;
    // Two attempts: a job that spent both on the slow mailbox would die.
    h.settings.max_attempts = 2;
    h.settings.pause_ms = 500;
    h.settings.max_pause_ms = 10_000;
    for i in 0..200 {
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
        )
        .await;
    }
    let (shutdown, task) = h.start_deliver().await;
    h.wait_accepted(200, Duration::from_secs(120)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let dead = h.dead_letters().await;
    assert!(
        dead.is_empty(),
        "dead: {:?}",
        dead.iter().map(|d| &d.0).collect::<Vec<_>>()
    );
    let slow = h.sim.mailbox(&mailbox_address(0)).unwrap();
    assert_eq!(slow.accepted, 0, "{slow:?}");
    let retries = h
        .events()
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::Retrying)
        .count();
    assert_eq!(retries, 0, "a session that never opened costs no attempt");
    assert_eq!(h.subjects().len(), 200);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_after_the_data_is_uncertain_and_held_for_an_operator() {
    let mut h = Harness::new(
        "silent",
        PoolSpec {
            mailboxes: 2,
            limits: roomy(),
            faults: "[faults]\nsilent_after_data_rate = 1.0\n".into(),
            ..PoolSpec::default()
        },
    )
    .await;
    h.settings.smtp_timeout_ms = 1_000;
    let jobs = ["job-0", "job-1", "job-2"];
    for (i, job) in jobs.iter().enumerate() {
        h.publish(job, "billing@contoso.example", &recipients(i, 1))
            .await;
    }
    let (shutdown, task) = h.start_deliver().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let uncertain = loop {
        let events: HashMap<String, _> = h
            .events()
            .await
            .into_iter()
            .filter(|e| e.kind == EventKind::Retrying && e.uncertain)
            .map(|e| (e.job_id.as_str().to_owned(), e))
            .collect();
        if events.len() == jobs.len() {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "uncertain events so far: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The test ladder brings each message back every 300-600 ms: several chances to resend.
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    // A restarted deliver knows the holds from the record.
    let (shutdown, task) = h.start_deliver().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let transmissions = || {
        h.sim
            .refusals()
            .iter()
            .filter(|r| r.text.contains("no reply after DATA"))
            .count()
    };
    assert_eq!(
        transmissions(),
        jobs.len(),
        "each message transmitted once, across a restart too"
    );
    for (job, e) in &uncertain {
        assert!(e.mailbox.is_some() && e.recipients == 1, "{e:?}");
        assert!(
            e.reason
                .as_deref()
                .is_some_and(|r| r.contains("uncertain") && r.contains("operator")),
            "{job}: {e:?}"
        );
    }
    // Listed for an operator, who resends one: it goes out again (and is uncertain again).
    let store = h.broker.pipeline.store();
    let mut listed: Vec<String> = store
        .uncertain_sends(100)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.job_id)
        .collect();
    listed.sort();
    assert_eq!(listed, jobs);
    assert_eq!(
        store
            .resolve_uncertain("job-1", Resolution::Resend)
            .await
            .unwrap(),
        1
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while transmissions() < jobs.len() + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the resend never went out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(transmissions(), jobs.len() + 1, "only the one resent");
    let events = h.events().await;
    assert!(
        !events.iter().any(|e| e.kind == EventKind::Delivered),
        "nothing was accepted"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_resend_policy_an_uncertain_send_goes_again_after_the_hold() {
    let mut h = Harness::new(
        "silent-resend",
        PoolSpec {
            mailboxes: 1,
            limits: roomy(),
            faults: "[faults]\nsilent_after_data_rate = 1.0\n".into(),
            ..PoolSpec::default()
        },
    )
    .await;
    h.settings.smtp_timeout_ms = 1_000;
    h.settings.uncertain_policy = UncertainPolicy::Resend;
    h.settings.uncertain_hold_ms = 2_000;
    h.publish("job-0", "billing@contoso.example", &recipients(0, 1))
        .await;
    let (shutdown, task) = h.start_deliver().await;
    let instants = || {
        let mut at: Vec<_> = h
            .sim
            .refusals()
            .iter()
            .filter(|r| r.text.contains("no reply after DATA"))
            .map(|r| r.at)
            .collect();
        at.sort();
        at
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while instants().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never resent: {:?}",
            instants()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let at = instants();
    // Its silence lasts the 1 s timeout, then the 2 s hold: the next is no sooner.
    assert!(
        at[1] - at[0] >= chrono::Duration::milliseconds(2_900),
        "resent too soon: {at:?}"
    );
    h.finish().await;
}
