//! Work reaches the process that can send it (issue 30), with the real binaries: a
//! deliver process that joins near the end of a batch gets mailboxes that still have work,
//! because the first process holds only what its own mailboxes can send (its prefetch
//! follows the mailboxes it owns) and the rest waits in the queue. With a fixed prefetch
//! of 64, the first process held the whole rest of the batch and the joiner's mailboxes
//! sent nothing.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use mailpipe_common::store::Store;
use mailpipe_common::testkit::Watchdog;
use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Binary, Stack, StackOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Mailbox -> owner, as the leases stand now (the mailbox key is its address).
async fn owners(store: &Store) -> HashMap<String, Uuid> {
    store
        .lease_owners()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|(mailbox, owner, _)| owner.map(|o| (mailbox, o)))
        .collect()
}

/// The id of the deliver process started as replica `host`, once it has its membership.
async fn member_id(store: &Store, host: &str, limit: Duration) -> Uuid {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let id = sqlx::query_scalar::<_, Uuid>("SELECT id FROM deliver_members WHERE host = $1")
            .bind(host)
            .fetch_optional(store.pool())
            .await
            .unwrap();
        if let Some(id) = id {
            return id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{host} never became a member"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_accepted(stack: &Stack, n: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while stack.sim.accepted().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} accepted",
            stack.sim.accepted().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 4 mailboxes of one connection each, 4 messages per 2 s: 8 messages a second in all,
/// 120 jobs in about 15 s. One process owning all four holds 8 messages (2 per owned
/// connection); the default ceiling (`deliver.prefetch`, 64) would hold the whole batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_joins_late_in_a_batch_sends_part_of_its_rest() {
    let _watchdog = Watchdog::arm(Duration::from_secs(240), "the late-join rebalance");
    let mut stack = Stack::prepare(StackOptions {
        name: "rejoin".into(),
        tenants: 1,
        mailboxes_per_tenant: 4,
        messages_per_window: 4,
        message_window_ms: 2_000,
        max_connections: 1,
        deliver_extra: "lease_ttl_ms = 3000\n".into(),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    stack.start_binary(Binary::Ingest).await.unwrap();
    stack.start_binary(Binary::Render).await.unwrap();
    stack.start_deliver_replica("d1").await.unwrap();
    let db = Store::new(&stack.database, CancellationToken::new()).unwrap();
    const JOBS: usize = 120;
    let jsonl = write_batch(&stack.attachments_root(), "rejoin", JOBS, |_| 1).unwrap();
    let (status, body) = stack.post_batch("rejoin", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");

    // A third of the batch left: the second process joins.
    wait_accepted(&stack, JOBS * 2 / 3, Duration::from_secs(90)).await;
    stack.start_deliver_replica("d2").await.unwrap();
    let d2 = member_id(&db, "d2", Duration::from_secs(30)).await;
    // Its share: two mailboxes (given back by d1 once their sends in flight ended).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (joined_at, mine) = loop {
        let theirs: HashSet<String> = owners(&db)
            .await
            .into_iter()
            .filter(|(_, o)| *o == d2)
            .map(|(m, _)| m)
            .collect();
        if theirs.len() == 2 {
            break (Utc::now(), theirs);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "d2 holds {theirs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let status = stack.batch_status("rejoin").await.unwrap();
        if status["counts"]["delivered"].as_u64() == Some(JOBS as u64) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not finished: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stack.assert_exactly_once(JOBS);
    let overruns: Vec<_> = stack
        .sim
        .refusals()
        .into_iter()
        .filter(|r| matches!(r.enhanced.as_str(), "4.4.2" | "5.2.0" | "4.3.2" | "5.7.233"))
        .collect();
    assert!(overruns.is_empty(), "{overruns:?}");
    // The joiner's mailboxes carried part of the rest once they were its own (less the
    // one send each d1 may still have had in flight through them when it gave them back),
    // and d2 sent them itself.
    let after: usize = stack
        .sim
        .accepted()
        .into_iter()
        .filter(|m| mine.contains(&m.mailbox) && m.received_at > joined_at)
        .count();
    let by_d2: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sends WHERE owner = $1 AND outcome = 'accepted'")
            .bind(d2)
            .fetch_one(db.pool())
            .await
            .unwrap();
    eprintln!(
        "after d2 joined: {after} accepted through its mailboxes {mine:?}; {by_d2} sent by d2"
    );
    assert!(
        after >= 6 && by_d2 >= 4,
        "the joiner's mailboxes sent {after} after it joined, d2 itself {by_d2}: work waited in the other process"
    );
    db.close().await;
    stack.shutdown().await.unwrap();
}
