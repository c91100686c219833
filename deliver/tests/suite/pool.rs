//! deliver against the Exchange Online simulator and a real RabbitMQ, with limits scaled
//! to seconds. The simulator is the judge: it records every acceptance and refusal and
//! the most messages and recipients it ever saw inside one window.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use mailpipe_deliver::settings::FromPolicy;
use support::{Harness, Limits, PoolSpec, mailbox_address, recipients};

fn assert_no_limit_refusals(h: &Harness) {
    let refusals = h.sim.refusals();
    let limit_refusals: Vec<_> = refusals
        .iter()
        .filter(|r| {
            let text = format!("{} {}", r.code, r.text);
            text.contains("4.4.2")
                || text.contains("SubmissionQuotaExceeded")
                || text.contains("thread limit")
                || text.contains("5.7.233")
        })
        .collect();
    assert!(
        limit_refusals.is_empty(),
        "the simulator refused for speed or volume: {limit_refusals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mailboxes_carry_400_messages_at_the_pools_limit_without_a_refusal() {
    // 4 mailboxes x 20 per 4 s: 400 messages are at least 5 full windows (20 s); the
    // deadline is a liveness bound with a wide margin for a loaded machine.
    let limits = Limits {
        messages: 20,
        message_window_ms: 4_000,
        ..Limits::default()
    };
    let h = Harness::new(
        "pool400",
        PoolSpec {
            mailboxes: 4,
            limits,
            ..PoolSpec::default()
        },
    )
    .await;
    for i in 0..400 {
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
        )
        .await;
    }
    let (shutdown, task) = h.start_deliver().await;
    h.wait_accepted(400, Duration::from_secs(180)).await;

    assert_no_limit_refusals(&h);
    let accepted = h.sim.accepted();
    let ids: HashSet<_> = h.subjects().into_iter().collect();
    assert_eq!(ids.len(), 400, "every job delivered");
    assert_eq!(accepted.len(), 400, "no job delivered twice");
    for stats in h.sim.mailbox_stats() {
        assert!(stats.max_messages_in_window <= limits.messages, "{stats:?}");
        assert!(
            stats.max_concurrent_connections <= limits.connections,
            "{stats:?}"
        );
        // Every mailbox carries a share (exactly 100 each at full speed; a slow one less).
        assert!(
            stats.accepted >= 25,
            "load spreads over the pool: {stats:?}"
        );
    }
    // How close to the pool's limit this ran is the pool_throughput benchmark's figure, not
    // a test's: on a loaded machine it varies, the exactness above does not.

    shutdown.cancel();
    task.await.unwrap().unwrap();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_recipient_counts_keep_the_recipient_window() {
    let limits = Limits {
        messages: 50,
        message_window_ms: 1_000,
        recipients: 120,
        recipient_window_ms: 2_000,
        connections: 3,
    };
    let h = Harness::new(
        "rcptwin",
        PoolSpec {
            mailboxes: 2,
            limits,
            ..PoolSpec::default()
        },
    )
    .await;
    let mut total = 0;
    for i in 0..40 {
        let n = 1 + (i * 37 % 50);
        total += n;
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, n),
        )
        .await;
    }
    let (shutdown, task) = h.start_deliver().await;
    h.wait_accepted(40, Duration::from_secs(180)).await;
    assert_no_limit_refusals(&h);
    let mut seen = 0;
    for stats in h.sim.mailbox_stats() {
        assert!(
            stats.max_recipients_in_window <= limits.recipients,
            "{stats:?}"
        );
        seen += stats.recipients_accepted;
    }
    assert_eq!(seen, total as u64);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_with_a_wrong_secret_is_quarantined_and_the_others_carry_its_share() {
    let h = Harness::new(
        "wrongsecret",
        PoolSpec {
            mailboxes: 3,
            wrong_secret: vec![1],
            ..PoolSpec::default()
        },
    )
    .await;
    for i in 0..30 {
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
        )
        .await;
    }
    let (shutdown, task) = h.start_deliver().await;
    // The hold is on record for the console and the ETA, with its reason.
    let store = h.broker.store();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let holds = store.mailbox_holds().await.unwrap();
        if let Some(hold) = holds
            .iter()
            .find(|m| m.mailbox.eq_ignore_ascii_case(&mailbox_address(1)))
        {
            assert_eq!(hold.reason, "auth", "{holds:?}");
            assert!(hold.until > chrono::Utc::now(), "{holds:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken mailbox's hold was never reported: {holds:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.wait_accepted(30, Duration::from_secs(180)).await;
    let broken = h.sim.mailbox(&mailbox_address(1)).unwrap();
    assert_eq!(broken.accepted, 0);
    assert!(h.dead_letters().await.is_empty(), "nothing dead-lettered");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_run_never_overruns_a_window() {
    // A recipient window longer than the run: only the ledger rebuilt from the events
    // stream can keep the restarted deliver inside it.
    let limits = Limits {
        messages: 100,
        message_window_ms: 1_000,
        recipients: 30,
        recipient_window_ms: 60_000,
        connections: 3,
    };
    let h = Harness::new(
        "restart",
        PoolSpec {
            mailboxes: 2,
            limits,
            ..PoolSpec::default()
        },
    )
    .await;
    for i in 0..40 {
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
        )
        .await;
    }
    let (shutdown, task) = h.start_deliver().await;
    h.wait_accepted(20, Duration::from_secs(180)).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let (shutdown, task) = h.start_deliver().await;
    // The pool's 24-hour-like window holds 2 x 30 = 60 recipients: all 40 fit, but the
    // restarted process must know about the first ones.
    h.wait_accepted(40, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_no_limit_refusals(&h);
    for stats in h.sim.mailbox_stats() {
        assert!(
            stats.max_recipients_in_window <= limits.recipients,
            "{stats:?}"
        );
    }
    assert_eq!(
        h.sim.accepted().len(),
        40,
        "nothing sent twice across the restart"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_refresh_mid_run_without_a_failed_send() {
    let limits = Limits {
        messages: 5,
        message_window_ms: 1_000,
        ..Limits::default()
    };
    let mut h = Harness::new(
        "tokens",
        PoolSpec {
            mailboxes: 2,
            limits,
            token_lifetime_secs: 2,
            ..PoolSpec::default()
        },
    )
    .await;
    // Short idle time so new sessions (new AUTH) keep happening across token lifetimes.
    h.settings.idle_connection_ms = 300;
    for i in 0..50 {
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
        )
        .await;
    }
    let (shutdown, task) = h.start_deliver().await;
    h.wait_accepted(50, Duration::from_secs(180)).await;
    let auth_refusals: Vec<_> = h
        .sim
        .refusals()
        .into_iter()
        .filter(|r| r.code == 535)
        .collect();
    assert!(auth_refusals.is_empty(), "{auth_refusals:?}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_as_policy_never_uses_a_mailbox_without_rights() {
    let spec = PoolSpec {
        mailboxes: 3,
        send_as_billing: vec![0, 2],
        from_policy: FromPolicy::SendAs,
        ..PoolSpec::default()
    };
    let h = Harness::new("sendas", spec).await;
    for i in 0..30 {
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
        )
        .await;
    }
    let (shutdown, task) = h.start_deliver().await;
    h.wait_accepted(30, Duration::from_secs(180)).await;
    let without = h.sim.mailbox(&mailbox_address(1)).unwrap();
    assert_eq!((without.accepted, without.refused), (0, 0), "{without:?}");
    for m in h.sim.accepted() {
        let raw = String::from_utf8_lossy(&m.raw);
        assert!(
            raw.lines()
                .any(|l| l.starts_with("From:") && l.contains("<billing@contoso.example>")),
            "{raw}"
        );
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_end_delivered_and_a_refused_recipient_is_dead_lettered_once() {
    let spec = PoolSpec {
        mailboxes: 2,
        faults:
            "[faults]\nreply_451_rate = 0.3\nrefuse_recipients = [\"nobody@fabrikam.example\"]\n"
                .into(),
        ..PoolSpec::default()
    };
    let h = Harness::new("faults", spec).await;
    for i in 0..20 {
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
        )
        .await;
    }
    h.publish(
        "job-partial",
        "billing@contoso.example",
        &[
            "ok@fabrikam.example".into(),
            "nobody@fabrikam.example".into(),
        ],
    )
    .await;
    let (shutdown, task) = h.start_deliver().await;
    h.wait_accepted(21, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        h.sim.refusals().iter().any(|r| r.code == 451),
        "faults were injected"
    );
    let subjects: Vec<String> = h.subjects();
    let unique: HashSet<_> = subjects.iter().collect();
    assert_eq!(unique.len(), 21, "every job delivered");
    assert_eq!(subjects.len(), 21, "none twice");
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].0.contains("nobody@fabrikam.example") && dead[0].0.contains("5.1.1"),
        "{}",
        dead[0].0
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mailboxes_with_fast_sends_get_no_limit_refusals() {
    let limits = Limits {
        messages: 20,
        message_window_ms: 2_000,
        ..Limits::default()
    };
    let h = Harness::new(
        "fast10",
        PoolSpec {
            mailboxes: 10,
            limits,
            ..PoolSpec::default()
        },
    )
    .await;
    for i in 0..600 {
        h.publish(
            &format!("job-{i}"),
            "billing@contoso.example",
            &recipients(i, 1),
        )
        .await;
    }
    let (shutdown, task) = h.start_deliver().await;
    h.wait_accepted(600, Duration::from_secs(180)).await;
    assert_no_limit_refusals(&h);
    for stats in h.sim.mailbox_stats() {
        assert!(stats.max_messages_in_window <= limits.messages, "{stats:?}");
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    h.finish().await;
}
