//! Scheduled sends against the simulator and a real RabbitMQ and PostgreSQL: a job is not
//! sent before its `not_before` (it waits in the retry ladder, not in deliver), and a job
//! past its `not_after` ends `expired`, never sent.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::time::Duration;

use chrono::Utc;
use mailpipe_common::contract::EventKind;
use mailpipe_common::domain::JobId;
use mailpipe_common::store::JobState;
use support::{Harness, Limits, PoolSpec, recipients};

fn subject_of(m: &mailpipe_sim::AcceptedMessage) -> String {
    String::from_utf8_lossy(&m.raw)
        .lines()
        .find(|l| l.starts_with("Subject:"))
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_goes_out_before_not_before_and_nothing_after_not_after() {
    let h = Harness::new(
        "schedule",
        PoolSpec {
            mailboxes: 2,
            limits: Limits {
                messages: 100,
                message_window_ms: 1_000,
                ..Limits::default()
            },
            ..PoolSpec::default()
        },
    )
    .await;
    let start = Utc::now();
    let later = start + chrono::Duration::seconds(4);
    for i in 0..3 {
        h.publish_with(
            &format!("later-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
            |m| {
                m.not_before = Some(later);
            },
        )
        .await;
    }
    h.publish_with(
        "too-late",
        "billing@contoso.example",
        &recipients(9, 1),
        |m| {
            m.not_after = Some(start - chrono::Duration::seconds(1));
        },
    )
    .await;
    h.publish("now", "billing@contoso.example", &recipients(5, 1))
        .await;
    let (shutdown, task) = h.start_deliver().await;

    h.wait_accepted(4, Duration::from_secs(90)).await;
    let accepted = h.sim.accepted();
    assert_eq!(
        accepted.len(),
        4,
        "the three scheduled and the immediate one"
    );
    for m in &accepted {
        let subject = subject_of(m);
        if subject.contains("later-") {
            assert!(
                m.received_at >= later,
                "{subject} sent at {} before its not_before {later}",
                m.received_at
            );
        }
        assert!(!subject.contains("too-late"), "an expired job was sent");
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let store = h.broker.store();
    assert_eq!(
        store
            .send_check(&JobId::parse("too-late").unwrap())
            .await
            .unwrap()
            .state,
        Some(JobState::Expired)
    );
    let expired = h
        .events()
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::Expired)
        .count();
    assert_eq!(expired, 1);
    h.finish().await;
}
