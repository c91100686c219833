//! deliver across crashes and processes (issue 15), with the real binaries: kill -9 at
//! any instant (also while the simulator holds a 250 it already counted), several deliver
//! processes on one pool, one of them killed or frozen past its lease. The simulator
//! judges: no window over its limit, no message twice; and every send whose outcome is
//! unknown is on record as uncertain and settled the way an operator would (`mailpipe-ingest
//! uncertain`, after looking the Message-ID up in the Sent Items).

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mailpipe_common::store::Store;
use mailpipe_sim::Refusal;
use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Binary, Stack, StackOptions};
use rand::{Rng as _, SeedableRng as _};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Leases of 3 s and 2 s SMTP steps: a dead process's open sends count for 6 s.
const LEASE_TTL: Duration = Duration::from_secs(3);

fn options(name: &str, tenants: usize, per_tenant: usize) -> StackOptions {
    StackOptions {
        name: name.into(),
        tenants,
        mailboxes_per_tenant: per_tenant,
        messages_per_window: 10,
        message_window_ms: 2_000,
        // Every 250 is held 300 ms after the simulator counted the message: a kill then
        // leaves a send the server took and the sender never heard of.
        sim_extra: "[faults]\naccepted_reply_delay_ms = 300\n".into(),
        deliver_extra: format!("lease_ttl_ms = {}\nprefetch = 16\n", LEASE_TTL.as_millis()),
        smtp_timeout_ms: 2_000,
        retry_delays_ms: vec![500, 1_000, 2_000],
        ..StackOptions::default()
    }
}

/// Refusals that mean a limit was overrun: rate, recipient quota, connections, tenant.
fn limit_refusals(stack: &Stack) -> Vec<Refusal> {
    stack
        .sim
        .refusals()
        .into_iter()
        .filter(|r| matches!(r.enhanced.as_str(), "4.4.2" | "5.2.0" | "4.3.2" | "5.7.233"))
        .collect()
}

/// Message-ID -> instants the simulator accepted it.
fn accepted_by_message_id(stack: &Stack) -> HashMap<String, Vec<DateTime<Utc>>> {
    let mut out: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
    for m in stack.sim.accepted() {
        let parsed = mail_parser::MessageParser::default().parse(&m.raw).unwrap();
        let id = parsed.message_id().expect("Message-ID").to_owned();
        out.entry(format!("<{id}>"))
            .or_default()
            .push(m.received_at);
    }
    out
}

fn store(stack: &Stack) -> Store {
    Store::new(&stack.database, CancellationToken::new()).unwrap()
}

fn ingest(stack: &Stack, args: &[&str]) -> std::process::Output {
    std::process::Command::new(
        mailpipe_tests::stack::bin_dir()
            .unwrap()
            .join("mailpipe-ingest"),
    )
    .arg("--config")
    .arg(&stack.config_path)
    .args(args)
    .output()
    .unwrap()
}

/// What an operator does with the uncertain sends: a Message-ID the mailbox has sent is
/// marked sent, any other is resent. Returns (marked sent, resent).
fn settle_uncertain(stack: &Stack, seen: &mut HashSet<String>) -> (usize, usize) {
    let out = ingest(stack, &["uncertain", "list", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = accepted_by_message_id(stack);
    let (mut marked, mut resent) = (0, 0);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let u: serde_json::Value = serde_json::from_str(line).unwrap();
        let job = u["job_id"].as_str().unwrap().to_owned();
        let message_id = u["message_id"].as_str().unwrap();
        let verb = if sent.contains_key(message_id) {
            marked += 1;
            "mark-sent"
        } else {
            resent += 1;
            "resend"
        };
        seen.insert(job.clone());
        let out = ingest(stack, &["uncertain", verb, &job]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // With Graph on, deliver settles from the Sent Items itself: it may have done so
        // between the list and this decision, as it can for an operator.
        if stderr.contains("no uncertain send waiting for a decision") {
            continue;
        }
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }
    (marked, resent)
}

/// Waits until every job is delivered, settling uncertain sends as an operator would.
/// Returns the jobs that were uncertain.
async fn finish(stack: &Stack, batch: &str, jobs: u64, limit: Duration) -> HashSet<String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut uncertain = HashSet::new();
    loop {
        settle_uncertain(stack, &mut uncertain);
        let status = stack.batch_status(batch).await.unwrap();
        if status["counts"]["delivered"].as_u64() == Some(jobs) {
            return uncertain;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not finished: {status}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn member_id(store: &Store, host: &str) -> Uuid {
    sqlx::query_scalar::<_, Uuid>("SELECT id FROM deliver_members WHERE host = $1")
        .bind(host)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Mailbox -> owner, as the leases stand now.
async fn owners(store: &Store) -> HashMap<String, Uuid> {
    store
        .lease_owners()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|(mailbox, owner, _)| owner.map(|o| (mailbox, o)))
        .collect()
}

async fn wait_accepted(stack: &Stack, n: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while stack.sim.accepted().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} accepted",
            stack.sim.accepted().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_never_overrun_a_window_and_never_send_a_job_twice() {
    let mut stack = Stack::prepare(StackOptions {
        // Twenty crashes in two minutes: the messages in hand at each come back every
        // time, and the default limit (5, meant for poison messages) would dead-letter
        // them (docs/operations.md, "A crash-looping deliver").
        delivery_limit: 50,
        ..options("hakill", 2, 2)
    })
    .await
    .unwrap();
    stack.start_binary(Binary::Ingest).await.unwrap();
    stack.start_binary(Binary::Render).await.unwrap();
    stack.start_deliver_replica("d1").await.unwrap();
    const JOBS: usize = 400;
    let jsonl = write_batch(&stack.attachments_root(), "kills", JOBS, |_| 1).unwrap();
    let (status, body) = stack.post_batch("kills", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");

    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    for kill in 0..20 {
        if kill % 2 == 0 {
            // At a random instant.
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..2_000))).await;
        } else {
            // Right after the simulator counted a message: its 250 is still held, so
            // the send is in flight (and there are more behind it).
            let seen = stack.sim.accepted().len();
            wait_accepted(&stack, seen + 1, Duration::from_secs(60)).await;
        }
        stack.signal_replica("d1", "KILL").await.unwrap();
        stack.start_deliver_replica("d1").await.unwrap();
    }
    let uncertain = finish(&stack, "kills", JOBS as u64, Duration::from_secs(300)).await;

    assert!(
        limit_refusals(&stack).is_empty(),
        "{:?}",
        limit_refusals(&stack)
    );
    stack.assert_exactly_once(JOBS);
    // The kills did hit sends in flight, and each one is on record as uncertain.
    assert!(!uncertain.is_empty(), "20 kills and no send in flight?");
    stack.shutdown().await.unwrap();
}

/// A crash at one instant of a send (`MAILPIPE_CRASH_AT`, the 5th time deliver reaches
/// it), then a restart: every job ends delivered exactly once in the simulator and in the
/// record, the batch finishes, and no job is tried over and over.
async fn crash_drill(point: &str) {
    crash_drill_with(point, "").await;
}

/// [`crash_drill`] with more `[deliver]` settings (an uncertain-send policy).
async fn crash_drill_with(point: &str, deliver_extra: &str) {
    crash_drill_as(point, deliver_extra, false).await;
}

/// [`crash_drill_with`], through Graph (`transport = "graph"`, SMTP AUTH off) or SMTP.
async fn crash_drill_as(point: &str, deliver_extra: &str, graph: bool) {
    let name = if graph {
        format!("gdrill-{point}")
    } else {
        format!("drill-{point}")
    };
    let mut opts = options(&name, 1, 2);
    opts.deliver_extra.push_str(deliver_extra);
    opts.graph_transport = graph;
    crash_drill_in(point, opts, Settler::Operator).await;
}

/// Who settles the sends a crash left uncertain.
#[derive(Clone, Copy, PartialEq)]
enum Settler {
    /// This test, as an operator would (`mailpipe-ingest uncertain`).
    Operator,
    /// deliver itself, from the Sent Items (Graph).
    Deliver,
}

/// [`crash_drill_with`] with Graph on (Sent Items settle uncertain sends).
async fn crash_drill_graph(point: &str, deliver_extra: &str) {
    let mut opts = options(&format!("drillg-{point}"), 1, 2);
    opts.deliver_extra.push_str(deliver_extra);
    opts.graph_poll_ms = Some(1000);
    crash_drill_in(point, opts, Settler::Deliver).await;
}

async fn crash_drill_in(point: &str, opts: StackOptions, settler: Settler) {
    let mut stack = Stack::prepare(opts).await.unwrap();
    stack.start_binary(Binary::Ingest).await.unwrap();
    stack.start_binary(Binary::Render).await.unwrap();
    let drill = format!("{point}:5");
    stack
        .start_deliver_replica_with("d1", &[("MAILPIPE_CRASH_AT", drill.as_str())])
        .await
        .unwrap();
    const JOBS: usize = 40;
    let jsonl = write_batch(&stack.attachments_root(), "drill", JOBS, |_| 1).unwrap();
    let (status, body) = stack.post_batch("drill", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");
    stack
        .wait_replica_exit("d1", Duration::from_secs(60))
        .await
        .unwrap();
    stack.start_deliver_replica("d1").await.unwrap();
    match settler {
        Settler::Operator => {
            finish(&stack, "drill", JOBS as u64, Duration::from_secs(120)).await;
        }
        Settler::Deliver => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                let status = stack.batch_status("drill").await.unwrap();
                if status["counts"]["delivered"].as_u64() == Some(JOBS as u64) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "not finished without an operator: {status}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    stack.assert_exactly_once(JOBS);
    let store = store(&stack);
    let delivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_events WHERE kind = 'delivered'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(delivered, JOBS as i64, "one delivered event per job");
    let most: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM sends GROUP BY job_id) s",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(most <= 2, "a job was tried {most} times");
    if settler == Settler::Deliver {
        // The drill's own send reached the server whole before the crash: deliver found it.
        let found: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM job_events
             WHERE kind = 'delivered' AND event->>'reason' LIKE 'found in the Sent Items%'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert!(
            found >= 1,
            "no uncertain send was settled from the Sent Items"
        );
    }
    let status = stack.batch_status("drill").await.unwrap();
    assert_eq!(status["finished"], true, "{status}");
    store.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_decision_ends_every_job_once() {
    crash_drill("after_decision").await;
}

/// Under `resend` the send the crash left open (nothing handed to the server) is ended
/// uncertain and sent again after its hold: still once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_decision_under_resend_ends_every_job_once() {
    crash_drill_with(
        "after_decision",
        "uncertain_policy = \"resend\"\nuncertain_hold_ms = 2000\n",
    )
    .await;
}

/// Killed while the server holds the 250 of a message it has whole: the send is uncertain
/// and held; the operator (this test, from the simulator's record, as from Sent Items)
/// settles it: once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_the_data_ends_every_job_once() {
    crash_drill("during_data").await;
}

/// The same under `resend`, with Graph on: deliver finds the message in the Sent Items
/// itself and records it delivered instead of sending it again. The crash also leaves
/// the other connections' sends open; on a loaded machine some of them had not reached
/// the server yet: absent from the Sent Items, they are sent again once the hold (15 s
/// here) has passed, and nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_the_data_under_resend_with_graph_ends_every_job_once() {
    crash_drill_graph(
        "during_data",
        "uncertain_policy = \"resend\"\nuncertain_hold_ms = 15000\n",
    )
    .await;
}

/// Through Graph, a crash at each step of draft-then-send: the send left open is ended
/// uncertain by the restart and settled from Sent Items (found: delivered) or, absent past
/// `uncertain_hold_ms`, sent again, and then the draft it left in Drafts is the one sent.
const GRAPH_DRILL: &str = "uncertain_hold_ms = 2000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_a_crash_before_the_draft_ends_every_job_once() {
    crash_drill_as("after_decision", GRAPH_DRILL, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_a_crash_between_the_draft_and_its_send_ends_every_job_once() {
    crash_drill_as("after_draft", GRAPH_DRILL, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_a_crash_between_the_send_and_its_record_ends_every_job_once() {
    crash_drill_as("after_reply", GRAPH_DRILL, true).await;
}

/// A batch of `jobs` invoices, each with two more attachments of 2.5 MB and 1.5 MB (files
/// that do not repeat): each message is about 5.5 MB as base64, over Graph's single-request
/// cap, so it goes as a draft without attachments plus the attachments (one upload session,
/// one attachment in one request).
fn large_batch(stack: &Stack, batch: &str, jobs: usize) -> String {
    let root = stack.attachments_root();
    let jsonl = write_batch(&root, batch, jobs, |_| 1).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(27);
    let mut out = String::new();
    for (i, line) in jsonl.lines().enumerate() {
        let mut job: serde_json::Value = serde_json::from_str(line).unwrap();
        for (n, size) in [(1, 2_500_000usize), (2, 1_500_000)] {
            let path = format!("invoices/{batch}-{i}-annex{n}.bin");
            let bytes: Vec<u8> = (0..size).map(|_| rng.random()).collect();
            std::fs::write(root.join(&path), bytes).unwrap();
            job["attachments"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "filename": format!("annex{n}.bin"),
                    "path": path,
                    "content_type": "application/octet-stream",
                }));
        }
        out.push_str(&job.to_string());
        out.push('\n');
    }
    out
}

/// Through Graph, messages too large for one request: a crash after the draft (no
/// attachment on it yet) or between its attachments leaves a half-built draft in Drafts.
/// The restart ends the open send uncertain, the operator finds it was not accepted, and
/// the resend deletes that draft and builds it again: every job once, every attachment in
/// every accepted message (a half-built draft sent would lack some).
async fn graph_large_crash_drill(point: &str) {
    let mut opts = options(&format!("gdrill-large-{point}"), 1, 2);
    opts.deliver_extra.push_str(GRAPH_DRILL);
    opts.graph_transport = true;
    opts.dir = Some(std::path::PathBuf::from(format!(
        "/tmp/gdrill-debug/{point}"
    )));
    let mut stack = Stack::prepare(opts).await.unwrap();
    stack.start_binary(Binary::Ingest).await.unwrap();
    stack.start_binary(Binary::Render).await.unwrap();
    let drill = format!("{point}:3");
    stack
        .start_deliver_replica_with("d1", &[("MAILPIPE_CRASH_AT", drill.as_str())])
        .await
        .unwrap();
    const JOBS: usize = 8;
    let jsonl = large_batch(&stack, "large", JOBS);
    let (status, body) = stack.post_batch("large", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");
    stack
        .wait_replica_exit("d1", Duration::from_secs(90))
        .await
        .unwrap();
    stack.start_deliver_replica("d1").await.unwrap();
    finish(&stack, "large", JOBS as u64, Duration::from_secs(180)).await;

    stack.assert_exactly_once(JOBS);
    for m in stack.sim.accepted() {
        let parsed = mail_parser::MessageParser::new().parse(&m.raw).unwrap();
        assert_eq!(
            parsed.attachment_count(),
            3,
            "a message went out without all its attachments"
        );
    }
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_a_crash_after_a_large_messages_draft_ends_every_job_once_with_its_attachments() {
    graph_large_crash_drill("after_draft").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_a_crash_between_attachments_ends_every_job_once_with_its_attachments() {
    graph_large_crash_drill("mid_attachments").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_servers_250_ends_every_job_once() {
    crash_drill("after_reply").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_outcome_is_recorded_ends_every_job_once() {
    crash_drill("after_outcome").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_six_mailboxes_and_a_killed_ones_mailboxes_send_again_within_ten_seconds()
 {
    let mut stack = Stack::prepare(options("ha3", 2, 3)).await.unwrap();
    stack.start_binary(Binary::Ingest).await.unwrap();
    stack.start_binary(Binary::Render).await.unwrap();
    for name in ["d1", "d2", "d3"] {
        stack.start_deliver_replica(name).await.unwrap();
    }
    let db = store(&stack);
    // Fair shares: two mailboxes each, within a few lease rounds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let o = owners(&db).await;
        let mut per: HashMap<Uuid, usize> = HashMap::new();
        for owner in o.values() {
            *per.entry(*owner).or_default() += 1;
        }
        if o.len() == 6 && per.len() == 3 && per.values().all(|n| *n == 2) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "shares: {o:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    const JOBS: usize = 600;
    let jsonl = write_batch(&stack.attachments_root(), "three", JOBS, |_| 1).unwrap();
    let (status, body) = stack.post_batch("three", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");
    wait_accepted(&stack, 150, Duration::from_secs(120)).await;

    let d2 = member_id(&db, "d2").await;
    let orphaned: Vec<String> = owners(&db)
        .await
        .into_iter()
        .filter(|(_, o)| *o == d2)
        .map(|(m, _)| m)
        .collect();
    assert_eq!(orphaned.len(), 2);
    stack.signal_replica("d2", "KILL").await.unwrap();
    let killed_at = Utc::now();

    finish(&stack, "three", JOBS as u64, Duration::from_secs(300)).await;
    assert!(
        limit_refusals(&stack).is_empty(),
        "{:?}",
        limit_refusals(&stack)
    );
    stack.assert_exactly_once(JOBS);
    for mailbox in &orphaned {
        let first_after = stack
            .sim
            .accepted()
            .into_iter()
            .filter(|m| &m.mailbox == mailbox && m.received_at > killed_at)
            .map(|m| m.received_at)
            .min()
            .expect("the killed process's mailbox sent again");
        assert!(
            first_after - killed_at <= chrono::Duration::seconds(10),
            "{mailbox} sent again only after {:?}",
            first_after - killed_at
        );
    }
    db.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_frozen_past_its_lease_sends_nothing_after_the_lease_ended() {
    let mut stack = Stack::prepare(options("hastop", 2, 2)).await.unwrap();
    stack.start_binary(Binary::Ingest).await.unwrap();
    stack.start_binary(Binary::Render).await.unwrap();
    stack.start_deliver_replica("d1").await.unwrap();
    stack.start_deliver_replica("d2").await.unwrap();
    let db = store(&stack);
    const JOBS: usize = 400;
    let jsonl = write_batch(&stack.attachments_root(), "frozen", JOBS, |_| 1).unwrap();
    let (status, body) = stack.post_batch("frozen", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");
    wait_accepted(&stack, 60, Duration::from_secs(120)).await;

    let d2 = member_id(&db, "d2").await;
    // A partition from the database, as the process sees it: it runs no code at all.
    stack.signal_replica("d2", "STOP").await.unwrap();
    let stopped_at = Utc::now();
    tokio::time::sleep(LEASE_TTL * 3).await;
    stack.signal_replica("d2", "CONT").await.unwrap();

    finish(&stack, "frozen", JOBS as u64, Duration::from_secs(300)).await;
    stack.assert_exactly_once(JOBS);
    // Windows held (a frozen process's idle connections may still count against the
    // connection cap while it is frozen: documented in docs/deliver.md).
    let overruns: Vec<Refusal> = limit_refusals(&stack)
        .into_iter()
        .filter(|r| r.enhanced != "4.3.2")
        .collect();
    assert!(overruns.is_empty(), "{overruns:?}");

    // Nothing of d2 reached the server after its lease ended (renewed at most LEASE_TTL
    // before the stop): every message d2 sent was taken before stopped_at + LEASE_TTL.
    let lease_end = stopped_at + chrono::Duration::from_std(LEASE_TTL).unwrap();
    // Its sends written ahead before the freeze. After it, it may rejoin and take
    // mailboxes again under new leases, fenced by their own tokens.
    let by_d2: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT message_id, outcome FROM sends WHERE owner = $1 AND started_at < $2",
    )
    .bind(d2)
    .bind(stopped_at)
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert!(!by_d2.is_empty(), "d2 sent before it was frozen");
    // A message that another send may have carried (another process's, or d2's own after
    // it rejoined under a new lease; accepted, or uncertain and then marked sent) cannot
    // be told apart by its Message-ID: only the frozen sends' own messages are judged.
    let others: HashSet<String> = sqlx::query_scalar::<_, String>(
        "SELECT message_id FROM sends WHERE (outcome IS NULL OR outcome <> 'not_counted')
           AND (owner <> $1 OR started_at >= $2)",
    )
    .bind(d2)
    .bind(stopped_at)
    .fetch_all(db.pool())
    .await
    .unwrap()
    .into_iter()
    .collect();
    let accepted = accepted_by_message_id(&stack);
    for (message_id, _) in &by_d2 {
        if others.contains(message_id) {
            continue;
        }
        for at in accepted.get(message_id).into_iter().flatten() {
            assert!(
                *at < lease_end,
                "{message_id} from the frozen process reached the server at {at}, after its lease ended at {lease_end}"
            );
        }
    }
    db.close().await;
    stack.shutdown().await.unwrap();
}

/// Waits until the leases stand as `want` says (owner per mailbox), or fails naming them.
async fn wait_owners(
    store: &Store,
    limit: Duration,
    what: &str,
    want: impl Fn(&HashMap<String, Uuid>) -> bool,
) -> HashMap<String, Uuid> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let o = owners(store).await;
        if want(&o) {
            return o;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {o:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With leases of a minute, a crashed process's mailboxes pass on as soon as PostgreSQL
/// sees its connection end (its member lock), not a lease later; a frozen one keeps them
/// (its connection, and so its lock, lives on: for it the lease stays the fence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_process_loses_its_mailboxes_at_once_and_a_frozen_one_keeps_them() {
    const LONG_LEASE: Duration = Duration::from_secs(60);
    let mut stack = Stack::prepare(StackOptions {
        deliver_extra: format!("lease_ttl_ms = {}\nprefetch = 16\n", LONG_LEASE.as_millis()),
        ..options("halock", 2, 2)
    })
    .await
    .unwrap();
    stack.start_binary(Binary::Ingest).await.unwrap();
    stack.start_binary(Binary::Render).await.unwrap();
    stack.start_deliver_replica("d1").await.unwrap();
    stack.start_deliver_replica("d2").await.unwrap();
    let db = store(&stack);
    // A joining process takes its share without waiting for a lease round (20 s here).
    let shared = wait_owners(&db, Duration::from_secs(15), "two mailboxes each", |o| {
        let mut per: HashMap<Uuid, usize> = HashMap::new();
        for owner in o.values() {
            *per.entry(*owner).or_default() += 1;
        }
        o.len() == 4 && per.len() == 2 && per.values().all(|n| *n == 2)
    })
    .await;
    let d1 = member_id(&db, "d1").await;

    // Frozen for 5 s (ten of the others' checks): nothing moves.
    stack.signal_replica("d2", "STOP").await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        owners(&db).await,
        shared,
        "a frozen process keeps its leases"
    );
    stack.signal_replica("d2", "CONT").await.unwrap();

    // Killed: d1 holds all four well before d2's leases (a minute) could have lapsed.
    stack.signal_replica("d2", "KILL").await.unwrap();
    wait_owners(
        &db,
        Duration::from_secs(20),
        "d1 takes every mailbox",
        |o| o.len() == 4 && o.values().all(|owner| *owner == d1),
    )
    .await;

    // And they send: a batch through all four, each job once.
    const JOBS: usize = 40;
    let jsonl = write_batch(&stack.attachments_root(), "afterkill", JOBS, |_| 1).unwrap();
    let (status, body) = stack.post_batch("afterkill", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");
    finish(&stack, "afterkill", JOBS as u64, Duration::from_secs(180)).await;
    stack.assert_exactly_once(JOBS);
    let mailboxes: HashSet<String> = stack
        .sim
        .accepted()
        .into_iter()
        .map(|m| m.mailbox)
        .collect();
    assert_eq!(mailboxes.len(), 4, "{mailboxes:?}");
    db.close().await;
    stack.shutdown().await.unwrap();
}
