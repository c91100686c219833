//! The pool's Inboxes under what invoices draw, with the real binaries, the simulator's
//! Graph and a real database: 5,000 out-of-office replies arrive, then the NDR of a job:
//! the job is `bounced` within two of the reader's rounds after the NDR arrived, and the
//! backlog drains to `mailpipe-other`, every message fetched once. And a pool mailbox
//! over its storage quota (`554 5.2.2 … QuotaExceeded`) is held with the reason while its
//! Sent Items size shows on /metrics; once retention frees it, it sends again. With
//! `sent_items_retention_days`, deliver deletes old Sent Items that are sends of ours on
//! record, and leaves a person's message and young sends alone.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;
use mailpipe_sim::FailedRecipient;
use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Binary, Stack, StackOptions};
use serde_json::Value;

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn job(stack: &Stack, id: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/v1/jobs/{id}", stack.url(Binary::Ingest)))
        .bearer_auth(&stack.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn deliver_metrics(stack: &Stack) -> String {
    reqwest::get(format!("{}/metrics", stack.url(Binary::Deliver)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series `name{labels}` (labels as written on /metrics).
fn series(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name_and_labels)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_behind_five_thousand_auto_replies_is_read_within_two_rounds() {
    let opts = StackOptions {
        name: "inbox_backlog".into(),
        tenants: 1,
        mailboxes_per_tenant: 1,
        graph_poll_ms: Some(1000),
        graph_extra: "messages_per_round = 1000\n".into(),
        ..StackOptions::default()
    };
    let stack = Stack::start(opts).await.expect("stack starts");
    let batch = write_batch(&stack.attachments_root(), "ooo", 1, |_| 1).unwrap();
    assert_eq!(stack.post_batch("ooo", batch, false).await.unwrap().0, 202);
    stack
        .wait_batch_done("ooo", 1, Duration::from_secs(120))
        .await
        .unwrap();
    let sent = stack.sim.accepted().remove(0);
    let mailbox = sent.mailbox.clone();

    stack.sim.inject_auto_replies(&mailbox, 5000);
    let arrived = Utc::now();
    let ndr = stack.sim.file_tenant_ndr(
        &mailbox,
        &sent.raw,
        &[FailedRecipient {
            address: sent.rcpt_to[0].clone(),
            status: "5.1.10".into(),
            diagnostic: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup".into(),
        }],
    );
    wait_for("the job bounced", Duration::from_secs(120), async || {
        job(&stack, "ooo-00000").await["status"] == "bounced"
    })
    .await;

    // Rounds counted by the first page of their oldest-first listing (every round makes
    // one; later pages carry a $skip), from the NDR's arrival to its move out of the Inbox.
    let requests = stack.sim.graph_requests();
    let moved = requests
        .iter()
        .find(|r| r.method == "POST" && r.path.contains(&format!("/messages/{ndr}/move")))
        .expect("the NDR was moved");
    let rounds = requests
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.path.contains("/mailFolders/inbox/messages")
                && r.path.contains("asc")
                && !r.path.contains("desc")
                && !r.path.contains("skip")
                && r.at >= arrived
                && r.at <= moved.at
        })
        .count();
    assert!(
        rounds <= 2,
        "the NDR was read {rounds} rounds after it arrived"
    );

    // Nothing is skipped forever: the backlog drains, each message fetched once.
    wait_for("the Inbox emptied", Duration::from_secs(240), async || {
        stack
            .sim
            .folder(&mailbox, "inbox")
            .is_some_and(|f| f.messages.is_empty())
    })
    .await;
    let other = stack
        .sim
        .folder(&mailbox, "mailpipe-other")
        .unwrap()
        .messages;
    assert_eq!(other.len(), 5000);
    assert!(other.iter().all(|m| m.fetches == 1), "each fetched once");
    let bounces = stack
        .sim
        .folder(&mailbox, "mailpipe-bounces")
        .unwrap()
        .messages;
    assert_eq!(bounces.len(), 1);
    let metrics = deliver_metrics(&stack).await;
    assert_eq!(
        series(
            &metrics,
            "mailpipe_deliver_inbox_messages_total{outcome=\"other\"}"
        ),
        Some(5000.0),
        "{metrics}"
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_over_its_storage_quota_is_held_with_the_reason_until_retention_frees_it() {
    let opts = StackOptions {
        name: "storage_quota".into(),
        tenants: 1,
        mailboxes_per_tenant: 2,
        graph_poll_ms: Some(1000),
        graph_extra: "storage_interval_ms = 1000\n".into(),
        ..StackOptions::default()
    };
    let stack = Stack::start(opts).await.expect("stack starts");
    let full = "sender0@contoso.example";
    let other = "sender1@contoso.example";
    // sender0 holds more than its quota (a large scan in its Inbox, soon in mailpipe-other).
    stack.sim.inject_inbox(
        full,
        &mailpipe_sim::large_message("bob@fabrikam.example", full, 60_000),
    );
    stack.sim.set_storage_quota(full, Some(50_000));

    let first = write_batch(&stack.attachments_root(), "q1", 6, |_| 1).unwrap();
    assert_eq!(stack.post_batch("q1", first, false).await.unwrap().0, 202);
    let done = stack
        .wait_batch_done("q1", 6, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(done["counts"]["delivered"], 6, "{done}");
    assert!(
        stack.sim.accepted().iter().all(|m| m.mailbox == other),
        "nothing was accepted from the full mailbox"
    );
    let refused: Vec<_> = stack
        .sim
        .refusals()
        .into_iter()
        .filter(|r| r.mailbox.as_deref() == Some(full))
        .collect();
    assert!(
        !refused.is_empty()
            && refused
                .iter()
                .all(|r| r.code == 554 && r.enhanced == "5.2.2"),
        "{refused:?}"
    );
    // Held with the reason, and the sender's Sent Items watched.
    wait_for("the storage gauges", Duration::from_secs(30), async || {
        let m = deliver_metrics(&stack).await;
        series(
            &m,
            &format!("mailpipe_deliver_mailbox_sent_items_messages{{mailbox=\"{other}\"}}"),
        ) == Some(6.0)
    })
    .await;
    let metrics = deliver_metrics(&stack).await;
    assert!(
        series(
            &metrics,
            &format!(
                "mailpipe_deliver_provider_refusals_total{{mailbox=\"{full}\",reason=\"mailbox_full\"}}"
            )
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    let sent_bytes = series(
        &metrics,
        &format!("mailpipe_deliver_mailbox_sent_items_bytes{{mailbox=\"{other}\"}}"),
    )
    .unwrap();
    let accepted_bytes: usize = stack.sim.accepted().iter().map(|m| m.raw.len()).sum();
    assert_eq!(sent_bytes, accepted_bytes as f64);
    assert_eq!(
        series(
            &metrics,
            &format!("mailpipe_deliver_mailbox_sent_items_messages{{mailbox=\"{full}\"}}"),
        ),
        Some(0.0)
    );

    // Retention frees sender0; sender1 fills up: the next batch goes through sender0.
    let freed = ["inbox", "mailpipe-other"]
        .iter()
        .map(|f| stack.sim.expire_folder(full, f, Utc::now()))
        .sum::<usize>();
    assert_eq!(freed, 1);
    stack.sim.set_storage_quota(other, Some(0));
    let accepted_before = stack.sim.accepted().len();
    let second = write_batch(&stack.attachments_root(), "q2", 3, |_| 1).unwrap();
    assert_eq!(stack.post_batch("q2", second, false).await.unwrap().0, 202);
    let done = stack
        .wait_batch_done("q2", 3, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(done["counts"]["delivered"], 3, "{done}");
    assert!(
        stack.sim.accepted()[accepted_before..]
            .iter()
            .all(|m| m.mailbox == full)
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_items_retention_deletes_old_sends_of_ours_and_nothing_else() {
    let opts = StackOptions {
        name: "sent_retention".into(),
        tenants: 1,
        mailboxes_per_tenant: 1,
        graph_poll_ms: Some(1000),
        graph_extra: "storage_interval_ms = 1000\nsent_items_retention_days = 1\n".into(),
        ..StackOptions::default()
    };
    let stack = Stack::start(opts).await.expect("stack starts");
    let mailbox = "sender0@contoso.example";
    let old = write_batch(&stack.attachments_root(), "old", 3, |_| 1).unwrap();
    assert_eq!(stack.post_batch("old", old, false).await.unwrap().0, 202);
    stack
        .wait_batch_done("old", 3, Duration::from_secs(120))
        .await
        .unwrap();
    // A person's message sent from Outlook, and the three invoices: two days old.
    stack.sim.file_sent_item(
        mailbox,
        b"From: sender0@contoso.example\r\nTo: boss@contoso.example\r\nSubject: Personal note\r\nMessage-ID: <person-1@contoso.example>\r\n\r\nhi\r\n",
    );
    assert_eq!(
        stack
            .sim
            .age_folder(mailbox, "sentitems", chrono::Duration::days(2)),
        4
    );
    wait_for("old sends deleted", Duration::from_secs(60), async || {
        stack
            .sim
            .folder(mailbox, "sentitems")
            .is_some_and(|f| f.messages.len() == 1)
    })
    .await;
    let kept = stack.sim.folder(mailbox, "sentitems").unwrap().messages;
    assert_eq!(kept[0].subject.as_deref(), Some("Personal note"));

    // A young send of ours stays: once the gauge counts it, retention has run past it.
    let young = write_batch(&stack.attachments_root(), "young", 1, |_| 1).unwrap();
    assert_eq!(
        stack.post_batch("young", young, false).await.unwrap().0,
        202
    );
    stack
        .wait_batch_done("young", 1, Duration::from_secs(120))
        .await
        .unwrap();
    wait_for(
        "the gauge counts two",
        Duration::from_secs(60),
        async || {
            let m = deliver_metrics(&stack).await;
            series(
                &m,
                &format!("mailpipe_deliver_mailbox_sent_items_messages{{mailbox=\"{mailbox}\"}}"),
            ) == Some(2.0)
        },
    )
    .await;
    assert_eq!(
        stack
            .sim
            .folder(mailbox, "sentitems")
            .unwrap()
            .messages
            .len(),
        2
    );
    let metrics = deliver_metrics(&stack).await;
    assert_eq!(
        series(&metrics, "mailpipe_deliver_sent_items_deleted_total"),
        Some(3.0)
    );
    stack.shutdown().await.unwrap();
}
