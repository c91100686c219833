//! Failed-AUTH discipline against the simulator (over TLS), a real RabbitMQ and a real
//! PostgreSQL: a mailbox with a wrong password gets one failed AUTH per backoff period, the
//! backoff doubles per hold episode, and the good mailbox carries every message, once.
//! The simulator punishes bursts as Exchange does (continuous error throttling), and
//! records every failed AUTH with its instant: that record is the judge.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use support::{Harness, Limits, PoolSpec, mailbox_address, recipients};

const PAUSE_MS: u64 = 1_000;
const MAX_PAUSE_MS: u64 = 8_000;
/// Clock rounding between deliver's hold (whole milliseconds) and the simulator's record.
const TOLERANCE_MS: i64 = 50;

/// The hold after the `episode`th failure: `pause_ms` doubled per episode, capped.
fn backoff_ms(episode: u32) -> i64 {
    (PAUSE_MS << (episode - 1).min(16)).min(MAX_PAUSE_MS) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_gets_one_failed_auth_per_backoff_period_and_the_good_mailbox_carries_all()
{
    // Three messages per second through the good mailbox: 48 messages keep the pool busy for
    // about 16 s, long enough for several hold episodes of the broken one (1 + 2 + 4 + 8 s).
    let limits = Limits {
        messages: 3,
        message_window_ms: 1_000,
        ..Limits::default()
    };
    // A client that fails AUTH in bursts (three within 2.5 s) is locked out by the simulator;
    // one failure per period never is (its holds are 1 s, then 2 s, 4 s, 8 s).
    let throttling = "[error_throttling]\nauth_failures = 3\nwindow_ms = 2500\nblock_ms = 60000\n";
    let mut h = Harness::new(
        "authdisc",
        PoolSpec {
            mailboxes: 2,
            wrong_password: vec![1],
            limits,
            faults: throttling.into(),
            ..PoolSpec::default()
        },
    )
    .await;
    h.settings.pause_ms = PAUSE_MS;
    h.settings.max_pause_ms = MAX_PAUSE_MS;
    let jobs = 48;
    for i in 0..jobs {
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
        )
        .await;
    }
    let (shutdown, task) = h.start_deliver().await;
    h.wait_accepted(jobs, Duration::from_secs(180)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    // Every message delivered once, through the good mailbox.
    let accepted = h.sim.accepted();
    assert_eq!(accepted.len(), jobs, "no job delivered twice");
    let subjects: HashSet<String> = h.subjects().into_iter().collect();
    assert_eq!(subjects.len(), jobs, "every job delivered");
    assert!(
        accepted.iter().all(|m| m.mailbox == mailbox_address(0)),
        "only the good mailbox sends"
    );
    assert!(h.dead_letters().await.is_empty(), "nothing dead-lettered");

    // The broken mailbox: failed AUTHs spaced by at least the growing backoff.
    let broken = mailbox_address(1);
    let failures: Vec<_> = h
        .sim
        .auth_failures()
        .into_iter()
        .filter(|f| f.mailbox.as_deref() == Some(broken.as_str()))
        .collect();
    let instants: Vec<_> = failures.iter().map(|f| f.at).collect();
    assert!(
        failures.iter().all(|f| f.code == 535 && !f.throttled),
        "bad credentials only, never locked out for a burst: {failures:?}"
    );
    assert!(
        failures.len() >= 3,
        "the broken mailbox was probed again after each hold while messages waited: {instants:?}"
    );
    for (k, pair) in instants.windows(2).enumerate() {
        let episode = k as u32 + 1;
        let gap = (pair[1] - pair[0]).num_milliseconds();
        assert!(
            gap >= backoff_ms(episode) - TOLERANCE_MS,
            "failed AUTH {} came {gap} ms after the one before, within episode {episode}'s backoff of {} ms: {instants:?}",
            k + 2,
            backoff_ms(episode)
        );
    }
    assert!(
        h.sim
            .auth_failures()
            .iter()
            .all(|f| f.mailbox.as_deref() == Some(broken.as_str())),
        "the good mailbox never failed AUTH"
    );
    h.finish().await;
}
