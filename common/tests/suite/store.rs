//! The system of record against a real PostgreSQL: a job only moves forward, ids are
//! claimed once across processes, retention prunes, deliver's questions are answered.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use mailpipe_common::contract::{DeliveryEvent, EventKind, Job, SmtpReply};
use mailpipe_common::domain::{BatchId, EmailAddress, JobId};
use mailpipe_common::store::{
    AcceptedSend, ClaimHeld, ClaimInput, ClaimOutcome, DatabaseSettings, Decision, JobState,
    Resolution, SendOutcome, SendRules, SendStart, Store, StoreError, UnsettledSend,
};
use mailpipe_common::testkit::{assert_counters_add_up, drop_schema, test_store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn event(job: &str, kind: EventKind, secs: i64) -> DeliveryEvent {
    let mut e = DeliveryEvent::new(
        JobId::parse(job).unwrap(),
        Some(BatchId::parse("b1").unwrap()),
        kind,
    );
    e.at = at(secs);
    e
}

fn job(id: &str, invoice: &str) -> Job {
    Job::from_json(
        serde_json::json!({
            "id": id,
            "template": "invoice",
            "to": [{"address": "Billing@Example.com"}],
            "data": {"invoice": invoice},
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

async fn state(store: &Store, id: &str) -> Option<JobState> {
    store
        .send_check(&JobId::parse(id).unwrap())
        .await
        .unwrap()
        .state
}

struct Db {
    store: Store,
    settings: DatabaseSettings,
}

impl Db {
    async fn new(name: &str) -> Self {
        let (store, settings) = test_store(name, CancellationToken::new()).await;
        Self { store, settings }
    }

    /// A second process on the same schema (another replica).
    fn replica(&self) -> Store {
        Store::new(&self.settings, CancellationToken::new()).unwrap()
    }

    /// Every test ends with status adding up: the batch counters equal a recount.
    async fn cleanup(self) {
        assert_counters_add_up(&self.store).await;
        drop_schema(&self.store, &self.settings.schema).await;
    }
}

#[tokio::test]
async fn a_job_only_moves_forward_whatever_order_events_arrive_in() {
    let db = Db::new("forward").await;
    let s = &db.store;
    s.record_event(&event("a", EventKind::Accepted, 0))
        .await
        .unwrap();
    s.record_event(&event("a", EventKind::Rendered, 1))
        .await
        .unwrap();
    let mut delivered = event("a", EventKind::Delivered, 2);
    delivered.mailbox = Some(EmailAddress::parse("sender@example.com").unwrap());
    delivered.smtp = Some(SmtpReply::new(250, "2.6.0 Queued mail for delivery"));
    delivered.message_id = Some("<m1@example.com>".into());
    s.record_event(&delivered).await.unwrap();
    // Another host stamps a render after the delivery; a second accept arrives late.
    s.record_event(&event("a", EventKind::Rendered, 3))
        .await
        .unwrap();
    s.record_event(&event("a", EventKind::Accepted, 4))
        .await
        .unwrap();
    s.record_event(&event("a", EventKind::Failed, 5))
        .await
        .unwrap();
    assert_eq!(state(s, "a").await, Some(JobState::Delivered));
    let (mailbox, message_id, code): (Option<String>, Option<String>, Option<i32>) =
        sqlx::query_as("SELECT mailbox, message_id, smtp_code FROM jobs WHERE id = 'a'")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(mailbox.as_deref(), Some("sender@example.com"));
    assert_eq!(message_id.as_deref(), Some("<m1@example.com>"));
    assert_eq!(code, Some(250));

    // Failed gives way to delivered only (a replayed dead letter).
    s.record_event(&event("b", EventKind::Failed, 1))
        .await
        .unwrap();
    s.record_event(&event("b", EventKind::Retrying, 9))
        .await
        .unwrap();
    assert_eq!(state(s, "b").await, Some(JobState::Failed));
    s.record_event(&event("b", EventKind::Delivered, 2))
        .await
        .unwrap();
    assert_eq!(state(s, "b").await, Some(JobState::Delivered));

    // Expired is final too, except for a send already under way.
    s.record_event(&event("x", EventKind::Expired, 1))
        .await
        .unwrap();
    s.record_event(&event("x", EventKind::Retrying, 9))
        .await
        .unwrap();
    assert_eq!(state(s, "x").await, Some(JobState::Expired));
    s.record_event(&event("x", EventKind::Delivered, 2))
        .await
        .unwrap();
    assert_eq!(state(s, "x").await, Some(JobState::Delivered));

    // Between non-final events the later stamp wins, whatever the arrival order.
    s.record_event(&event("c", EventKind::Retrying, 5))
        .await
        .unwrap();
    s.record_event(&event("c", EventKind::Rendered, 3))
        .await
        .unwrap();
    assert_eq!(state(s, "c").await, Some(JobState::Retrying));

    // The trail keeps every event once, even when one is recorded twice.
    s.record_event(&event("c", EventKind::Retrying, 5))
        .await
        .unwrap();
    let trail: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events WHERE job_id = 'a'")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(trail, 6);
    let c: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events WHERE job_id = 'c'")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(c, 2);
    db.cleanup().await;
}

#[tokio::test]
async fn one_id_submitted_to_two_replicas_at_once_is_claimed_once() {
    let db = Db::new("claims").await;
    for round in 0..20 {
        let id = format!("inv-{round}");
        let (a, b) = (db.replica(), db.replica());
        let input = ClaimInput::of(&job(&id, "1"));
        let (ca, cb) = (Uuid::new_v4(), Uuid::new_v4());
        let (ra, rb) = tokio::join!(
            a.claim_jobs(ca, std::slice::from_ref(&input)),
            b.claim_jobs(cb, std::slice::from_ref(&input)),
        );
        let outcomes = [ra.unwrap()[0], rb.unwrap()[0]];
        let claimed = outcomes
            .iter()
            .filter(|o| **o == ClaimOutcome::Claimed)
            .count();
        assert_eq!(claimed, 1, "round {round}: {outcomes:?}");
        assert!(outcomes.contains(&ClaimOutcome::InFlight), "{outcomes:?}");
    }
    db.cleanup().await;
}

#[tokio::test]
async fn same_content_is_a_duplicate_other_content_a_conflict_and_a_release_frees_the_id() {
    let db = Db::new("conflict").await;
    let s = &db.store;
    let claim = Uuid::new_v4();
    let first = ClaimInput::of(&job("inv-1", "100.00"));
    assert_eq!(
        s.claim_jobs(claim, std::slice::from_ref(&first))
            .await
            .unwrap(),
        vec![ClaimOutcome::Claimed]
    );
    // A publish that failed gives the id back.
    assert_eq!(s.release_claims(claim, &["inv-1"]).await.unwrap(), 1);
    let claim = Uuid::new_v4();
    assert_eq!(
        s.claim_jobs(claim, std::slice::from_ref(&first))
            .await
            .unwrap(),
        vec![ClaimOutcome::Claimed]
    );
    let mut accepted = event("inv-1", EventKind::Accepted, 0);
    accepted.batch = None;
    s.confirm_accepted(claim, &[accepted]).await.unwrap();
    assert_eq!(state(s, "inv-1").await, Some(JobState::Accepted));

    let again = Uuid::new_v4();
    let other = ClaimInput::of(&job("inv-1", "999.00"));
    let outcomes = s.claim_jobs(again, &[first, other]).await.unwrap();
    assert_eq!(
        outcomes,
        vec![ClaimOutcome::Duplicate, ClaimOutcome::Conflict]
    );
    let recipients: Vec<String> =
        sqlx::query_scalar("SELECT unnest(recipients) FROM jobs WHERE id = 'inv-1'")
            .fetch_all(s.pool())
            .await
            .unwrap();
    assert_eq!(recipients, vec!["billing@example.com"]);
    db.cleanup().await;
}

#[tokio::test]
async fn a_claim_left_by_a_dead_publish_is_taken_over_after_its_ttl() {
    let db = Db::new("takeover").await;
    let s = &db.store;
    let dead = Uuid::new_v4();
    let input = ClaimInput::of(&job("inv-7", "1"));
    s.claim_jobs(dead, std::slice::from_ref(&input))
        .await
        .unwrap();
    let live = Uuid::new_v4();
    assert_eq!(
        s.claim_jobs(live, std::slice::from_ref(&input))
            .await
            .unwrap(),
        vec![ClaimOutcome::InFlight]
    );
    // The dead publish's heartbeat stops: six minutes later its claim is stale.
    age_claims(s, "6 minutes").await;
    assert_eq!(
        s.claim_jobs(live, std::slice::from_ref(&input))
            .await
            .unwrap(),
        vec![ClaimOutcome::Claimed]
    );
    // The dead publish's claim is no longer its own: it would not publish.
    assert_eq!(
        s.refresh_claim(dead).await.unwrap(),
        ClaimHeld::Only(Default::default())
    );
    assert_eq!(s.refresh_claim(live).await.unwrap(), ClaimHeld::All);
    db.cleanup().await;
}

/// Makes every job's claim and every claim's heartbeat `age` old, as if the publishes
/// had stopped that long ago.
async fn age_claims(s: &Store, age: &str) {
    for sql in [
        "UPDATE jobs SET claimed_at = now() - $1::interval WHERE claim IS NOT NULL",
        "UPDATE publish_claims SET heartbeat = now() - $1::interval",
    ] {
        sqlx::query(sql).bind(age).execute(s.pool()).await.unwrap();
    }
}

/// A publish longer than the TTL keeps its jobs as long as its heartbeat is fresh: a
/// month-end file claims for minutes before it publishes its last chunk.
#[tokio::test]
async fn a_live_publish_older_than_the_ttl_keeps_its_claim_by_its_heartbeat() {
    let db = Db::new("heartbeat").await;
    let s = &db.store;
    let long = Uuid::new_v4();
    let inputs: Vec<ClaimInput> = (0..2_000)
        .map(|i| ClaimInput::of(&job(&format!("m-{i}"), "1")))
        .collect();
    for chunk in inputs.chunks(500) {
        s.claim_jobs(long, chunk).await.unwrap();
    }
    age_claims(s, "10 minutes").await;
    // One row refreshed, not 2,000.
    assert_eq!(s.refresh_claim(long).await.unwrap(), ClaimHeld::All);
    let heartbeats: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM publish_claims WHERE heartbeat > now() - interval '1 minute'",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(heartbeats, 1);
    // A resubmission of the same ids finds them in flight, not free.
    let other = Uuid::new_v4();
    let outcomes = s.claim_jobs(other, &inputs[..10]).await.unwrap();
    assert_eq!(outcomes, vec![ClaimOutcome::InFlight; 10]);
    // The publish ends: its row goes, the jobs it confirmed stay.
    s.end_claim(long).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_claims WHERE claim = $1")
        .bind(long)
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
    db.cleanup().await;
}

/// Two resubmissions taking over one dead claim at the same instant: exactly one gets
/// each job (the job's own row decides), so no job is published twice.
#[tokio::test]
async fn two_take_overs_at_once_get_each_job_once() {
    let db = Db::new("takeover2").await;
    let s = &db.store;
    let dead = Uuid::new_v4();
    let inputs: Vec<ClaimInput> = (0..200)
        .map(|i| ClaimInput::of(&job(&format!("t-{i}"), "1")))
        .collect();
    s.claim_jobs(dead, &inputs).await.unwrap();
    age_claims(s, "6 minutes").await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (ra, rb) = tokio::join!(s.claim_jobs(a, &inputs), s.claim_jobs(b, &inputs));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    for (i, (x, y)) in ra.iter().zip(&rb).enumerate() {
        let claimed = [x, y]
            .iter()
            .filter(|o| ***o == ClaimOutcome::Claimed)
            .count();
        assert_eq!(claimed, 1, "job t-{i}: {x:?} and {y:?}");
    }
    let taken_from: bool =
        sqlx::query_scalar("SELECT taken_from FROM publish_claims WHERE claim = $1")
            .bind(dead)
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert!(taken_from, "the dead claim is marked");
    db.cleanup().await;
}

#[tokio::test]
async fn a_job_render_moved_on_before_the_confirm_keeps_its_state_and_gets_its_accepted_event() {
    let db = Db::new("earlyrender").await;
    let s = &db.store;
    let claim = Uuid::new_v4();
    s.claim_jobs(claim, &[ClaimInput::of(&job("j", "1"))])
        .await
        .unwrap();
    s.record_event(&event("j", EventKind::Rendered, 1))
        .await
        .unwrap();
    let mut accepted = event("j", EventKind::Accepted, 0);
    accepted.batch = None;
    s.confirm_accepted(claim, &[accepted]).await.unwrap();
    assert_eq!(state(s, "j").await, Some(JobState::Rendered));
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM job_events WHERE job_id = 'j' ORDER BY at")
            .fetch_all(s.pool())
            .await
            .unwrap();
    assert_eq!(kinds, vec!["accepted", "rendered"]);
    db.cleanup().await;
}

fn send(job: &str, owner: uuid::Uuid, token: i64) -> SendStart {
    SendStart {
        id: Uuid::now_v7(),
        mailbox: "mbx0@contoso.example".into(),
        tenant: Some("contoso".into()),
        job_id: job.into(),
        batch: None,
        message_id: format!("<{job}@mailpipe>"),
        owner,
        token,
        recipients: vec![
            EmailAddress::parse("a@fabrikam.example").unwrap(),
            EmailAddress::parse("b@contoso.example").unwrap(),
        ],
        external_recipients: 1,
        budget: std::time::Duration::from_secs(90),
        rules: SendRules::default(),
    }
}

#[tokio::test]
async fn a_send_is_written_ahead_only_under_the_current_lease_and_counts_until_settled() {
    let db = Db::new("sends").await;
    let s = &db.store;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mailbox = "mbx0@contoso.example";
    let ttl = std::time::Duration::from_secs(60);
    let token = s.acquire_lease(a, mailbox, ttl).await.unwrap().unwrap();
    assert_eq!(
        s.acquire_lease(b, mailbox, ttl).await.unwrap(),
        None,
        "held by a"
    );

    // The fence: only the owner, only under its token.
    let first = send("first", a, token);
    assert_eq!(s.open_send(&first).await.unwrap(), Decision::Written);
    assert_eq!(
        s.open_send(&send("by-b", b, token)).await.unwrap(),
        Decision::Fenced
    );
    assert_eq!(
        s.open_send(&send("old-token", a, token - 1)).await.unwrap(),
        Decision::Fenced
    );
    // One open send per job, whichever process holds the second copy.
    assert!(matches!(
        s.open_send(&send("first", a, token)).await.unwrap(),
        Decision::InFlight(_)
    ));
    // A retry of the same insert (its commit's answer lost) finds its own row.
    assert_eq!(s.open_send(&first).await.unwrap(), Decision::Written);

    // Open: counted at its deadline, the latest the server could count it.
    let counted = s
        .mailbox_sends(mailbox, Utc::now() - Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(counted.len(), 1);
    assert!(
        counted[0].at > Utc::now() + Duration::seconds(80),
        "{counted:?}"
    );
    s.close_send(
        first.id,
        SendOutcome::Accepted {
            recipients: 1,
            external: 0,
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(
            s.open_send(&send("first", a, token)).await.unwrap(),
            Decision::AcceptedBefore(AcceptedSend { recipients: 1, .. })
        ),
        "an accepted job is never sent again"
    );
    let refused_early = send("before-data", a, token);
    assert_eq!(
        s.open_send(&refused_early).await.unwrap(),
        Decision::Written
    );
    s.close_send(refused_early.id, SendOutcome::NotCounted)
        .await
        .unwrap();
    let counted = s
        .mailbox_sends(mailbox, Utc::now() - Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        counted.len(),
        1,
        "a send that ended before the data does not count"
    );
    assert!(counted[0].at <= Utc::now());
    assert_eq!(
        (counted[0].recipients, counted[0].external_recipients),
        (1, 0),
        "what the server took"
    );

    // The tenant windows of other processes see a's sends with external recipients only.
    let orphan = send("orphan", a, token);
    assert_eq!(s.open_send(&orphan).await.unwrap(), Decision::Written);
    let tenants = vec!["contoso".to_owned()];
    let since = Utc::now() - Duration::hours(1);
    assert_eq!(s.tenant_sends(&tenants, b, since).await.unwrap().len(), 1);
    assert_eq!(
        s.tenant_sends(&tenants, a, since).await.unwrap().len(),
        0,
        "its own are counted live"
    );

    // a dies with "orphan" open; its lease lapses (released here) and b takes over.
    s.release_leases(a, &[mailbox.to_owned()]).await.unwrap();
    let token_b = s.acquire_lease(b, mailbox, ttl).await.unwrap().unwrap();
    assert!(
        token_b > token,
        "every change of owner raises the fencing token"
    );
    assert!(
        s.open_send(&send("late", a, token)).await.unwrap() == Decision::Fenced,
        "a is fenced out"
    );
    assert_eq!(
        s.settle_orphans(mailbox, token_b).await.unwrap(),
        vec!["orphan".to_owned()]
    );
    let counted = s.mailbox_sends(mailbox, since).await.unwrap();
    assert_eq!(counted.len(), 2, "the orphan still counts, at its deadline");
    // Its job shows it, in the same statement: flagged, `retrying`, with an event.
    let (state, uncertain): (String, bool) =
        sqlx::query_as("SELECT state, uncertain FROM jobs WHERE id = 'orphan'")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), uncertain), ("retrying", true));
    let flagged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE job_id = 'orphan' AND kind = 'retrying' AND uncertain",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(flagged, 1, "one uncertain event for the orphaned send");

    // It is uncertain, listed for an operator, and settled by a decision.
    let listed = s.uncertain_sends(100).await.unwrap();
    assert_eq!(
        listed.iter().map(|u| u.job_id.as_str()).collect::<Vec<_>>(),
        vec!["orphan"]
    );
    let check = s
        .send_check(&JobId::parse("orphan").unwrap())
        .await
        .unwrap();
    assert!(
        matches!(
            check.unsettled,
            Some(UnsettledSend::Uncertain {
                resolution: None,
                ..
            })
        ),
        "{check:?}"
    );
    assert_eq!(
        s.resolve_uncertain("orphan", Resolution::MarkedSent)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.resolve_uncertain("orphan", Resolution::Resend)
            .await
            .unwrap(),
        0,
        "decided once"
    );
    assert!(s.uncertain_sends(100).await.unwrap().is_empty());
    let check = s
        .send_check(&JobId::parse("orphan").unwrap())
        .await
        .unwrap();
    assert!(
        matches!(&check.unsettled, Some(UnsettledSend::Uncertain { resolution: Some(r), .. }) if r == "marked_sent"),
        "{check:?}"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn retention_deletes_old_jobs_with_their_events_and_keeps_the_rest() {
    let db = Db::new("prune").await;
    let s = &db.store;
    let now = Utc::now();
    for i in 0..2500 {
        let mut e = event(&format!("old-{i}"), EventKind::Delivered, 0);
        e.at = now - Duration::days(401);
        s.record_event(&e).await.unwrap();
    }
    let mut recent = event("recent", EventKind::Delivered, 0);
    recent.at = now - Duration::days(399);
    s.record_event(&recent).await.unwrap();
    let report = s.prune(now).await.unwrap();
    assert_eq!(report.jobs, 2500);
    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_all(s.pool())
        .await
        .unwrap();
    assert_eq!(left, vec!["recent"]);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(events, 1);
    let counted: i64 = sqlx::query_scalar("SELECT sum(jobs)::int8 FROM batch_counts")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(counted, 1, "the pruned jobs left their counts behind");
    db.cleanup().await;
}

#[tokio::test]
async fn a_schema_behind_the_build_is_refused_when_migrations_are_not_applied_at_start() {
    let db = Db::new("behind").await;
    let mut settings = db.settings.clone();
    settings.schema = format!("{}_empty", settings.schema);
    settings.migrate_on_start = false;
    let store = Store::new(&settings, CancellationToken::new()).unwrap();
    let err = store.prepare(None).await.unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaBehind { applied: None, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("mailpipe-ingest migrate"), "{err}");
    // Migrating twice is harmless; afterwards the check passes.
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
    drop_schema(&store, &settings.schema).await;
    db.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_database_is_reported_and_reads_fail_at_once() {
    let mut settings = mailpipe_common::testkit::database_settings("down");
    // Nothing listens on port 1.
    settings.url = "postgres://postgres@127.0.0.1:1/mailpipe_test".into();
    settings.connect_timeout_ms = 500;
    let store = Store::new(&settings, CancellationToken::new()).unwrap();
    let err = store
        .claim_jobs(Uuid::new_v4(), &[ClaimInput::of(&job("x", "1"))])
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let why = store.readiness().unwrap_err();
    assert!(why.contains("database unreachable"), "{why}");
    let err = store
        .prepare(Some(std::time::Duration::from_millis(600)))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[tokio::test]
async fn a_batch_is_paused_resumed_and_cancelled_and_a_cancel_is_final() {
    use mailpipe_common::store::BatchControl;
    let db = Db::new("control").await;
    let s = &db.store;
    let in_batch = |job: &str, kind, secs| {
        let mut e = event(job, kind, secs);
        e.batch = Some(BatchId::parse("bc").unwrap());
        e
    };
    for j in ["c1", "c2", "c3"] {
        s.record_event(&in_batch(j, EventKind::Accepted, 0))
            .await
            .unwrap();
    }
    s.record_event(&in_batch("c1", EventKind::Delivered, 1))
        .await
        .unwrap();
    let id = |j: &str| JobId::parse(j).unwrap();

    assert_eq!(
        s.set_batch_control("nope", BatchControl::Paused)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.set_batch_control("bc", BatchControl::Paused)
            .await
            .unwrap(),
        Some((BatchControl::Paused, 0))
    );
    let check = s.send_check(&id("c2")).await.unwrap();
    assert_eq!(
        (check.state, check.control),
        (Some(JobState::Accepted), BatchControl::Paused)
    );
    s.set_batch_control("bc", BatchControl::Running)
        .await
        .unwrap();
    assert_eq!(
        s.send_check(&id("c2")).await.unwrap().control,
        BatchControl::Running
    );

    // Cancel: every unsent job at once, with its event; the delivered one stays delivered.
    assert_eq!(
        s.set_batch_control("bc", BatchControl::Cancelled)
            .await
            .unwrap(),
        Some((BatchControl::Cancelled, 2))
    );
    assert_eq!(state(s, "c1").await, Some(JobState::Delivered));
    assert_eq!(state(s, "c2").await, Some(JobState::Cancelled));
    // A render arriving late does not revive it; a send already under way may end delivered.
    s.record_event(&in_batch("c2", EventKind::Rendered, 100))
        .await
        .unwrap();
    assert_eq!(state(s, "c2").await, Some(JobState::Cancelled));
    s.record_event(&in_batch("c3", EventKind::Delivered, 100))
        .await
        .unwrap();
    assert_eq!(state(s, "c3").await, Some(JobState::Delivered));
    // Final: resuming or pausing a cancelled batch leaves it cancelled.
    assert_eq!(
        s.set_batch_control("bc", BatchControl::Running)
            .await
            .unwrap(),
        Some((BatchControl::Cancelled, 0))
    );
    let cancelled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_events WHERE kind = 'cancelled'")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(cancelled, 2);
    db.cleanup().await;
}

/// `n` jobs of batch `batch`, accepted (as ingest leaves a job it published).
async fn accepted_jobs(store: &Store, batch: &str, n: i64) {
    sqlx::query(
        "INSERT INTO jobs (id, batch_id, state, recipient_count, accepted_at, updated_at)
         SELECT $1 || '-' || g, $1, 'accepted', 1, now(), now() FROM generate_series(1, $2) g",
    )
    .bind(batch)
    .bind(n)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// A statement that moves many jobs stays linear whatever its connection ran before.
/// PL/pgSQL keeps, per session, the plan its triggers made at their first call for the
/// join of a statement's old and new rows; on a connection that first moved single jobs
/// (as every send does) that was a nested loop, and a 20,000-job statement on it then
/// compared 20,000 × 20,000 rows, far past the 30 s statement timeout.
#[tokio::test]
async fn a_bulk_update_on_a_connection_that_moved_single_jobs_finishes() {
    let db = Db::new("bulk-after-single").await;
    let s = &db.store;
    accepted_jobs(s, "month", 20_000).await;
    let mut conn = s.pool().acquire().await.unwrap();
    for i in 1..=10 {
        let state = if i % 2 == 0 { "delivered" } else { "rendered" };
        sqlx::query("UPDATE jobs SET state = $2, updated_at = now() WHERE id = $1")
            .bind(format!("month-{i}"))
            .bind(state)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let moved = mailpipe_common::testkit::within(
        std::time::Duration::from_secs(120),
        "a 20,000-job update",
        sqlx::query(
            "UPDATE jobs SET state = 'failed', updated_at = now(), reason = 'bulk'
             WHERE batch_id = 'month' AND state IN ('accepted', 'rendered')",
        )
        .execute(&mut *conn),
    )
    .await
    .expect("the bulk update finishes within the statement timeout")
    .rows_affected();
    drop(conn);
    assert_eq!(moved, 19_995);
    // Each job's outcome is recorded for webhooks once, as a single move records it.
    assert_eq!(
        count(
            s,
            "SELECT count(*) FROM webhook_events WHERE type = 'job.failed'"
        )
        .await,
        19_995
    );
    assert_eq!(
        count(
            s,
            "SELECT count(*) FROM webhook_events WHERE type = 'job.delivered'"
        )
        .await,
        5
    );
    db.cleanup().await;
}

/// A cancel ends a batch of any size in bounded statements: 11,999 unsent jobs (more than
/// two chunks) all end `cancelled` with one event each, a delivered job stays delivered,
/// a job whose send is under way is left to its send, and one whose send's outcome is
/// unknown to its settling (it may have been delivered).
#[tokio::test]
async fn a_cancel_ends_every_unsent_job_of_a_large_batch_once() {
    use mailpipe_common::store::BatchControl;
    let db = Db::new("chunked-cancel").await;
    let s = &db.store;
    accepted_jobs(s, "month", 12_002).await;
    let mut delivered = DeliveryEvent::new(
        JobId::parse("month-1").unwrap(),
        Some(BatchId::parse("month").unwrap()),
        EventKind::Delivered,
    );
    delivered.at = Utc::now();
    s.record_event(&delivered).await.unwrap();
    let owner = Uuid::new_v4();
    let token = s
        .acquire_lease(
            owner,
            "mbx0@contoso.example",
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
    let under_way = SendStart {
        batch: Some("month".into()),
        ..send("month-2", owner, token)
    };
    assert_eq!(s.open_send(&under_way).await.unwrap(), Decision::Written);
    // One whose send had no reply after its data: it may have been delivered.
    let unknown = SendStart {
        batch: Some("month".into()),
        ..send("month-3", owner, token)
    };
    assert_eq!(s.open_send(&unknown).await.unwrap(), Decision::Written);
    s.close_send(unknown.id, SendOutcome::Uncertain)
        .await
        .unwrap();

    let (control, cancelled) = s
        .set_batch_control("month", BatchControl::Cancelled)
        .await
        .unwrap()
        .expect("the batch is known");
    assert_eq!((control, cancelled), (BatchControl::Cancelled, 11_999));
    assert_eq!(state(s, "month-1").await, Some(JobState::Delivered));
    assert_eq!(state(s, "month-2").await, Some(JobState::Accepted));
    assert_eq!(state(s, "month-3").await, Some(JobState::Accepted));
    assert_eq!(
        count(s, "SELECT count(*) FROM jobs WHERE state = 'cancelled'").await,
        11_999
    );
    assert_eq!(
        count(
            s,
            "SELECT count(*) FROM job_events WHERE kind = 'cancelled'"
        )
        .await,
        11_999
    );
    // A second cancel finds nothing left to end.
    assert_eq!(
        s.set_batch_control("month", BatchControl::Cancelled)
            .await
            .unwrap(),
        Some((BatchControl::Cancelled, 0))
    );
    db.cleanup().await;
}

/// Polls `store.readiness()` until `want` holds or `limit` passes; returns the last answer.
async fn readiness_until(
    store: &Store,
    limit: std::time::Duration,
    want: impl Fn(&Result<(), String>) -> bool,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let r = store.readiness();
        if want(&r) || tokio::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Readiness is a live check with the schema in it: not ready before anything was
/// checked, "not migrated" while the schema is behind, ready once it is current, and an
/// outage shows (and ends) within seconds with no operation running; the probe stops on
/// shutdown. Margins are for a loaded machine (the probe asks every second).
#[tokio::test]
async fn readiness_follows_the_database_within_seconds_and_includes_the_schema() {
    use mailpipe_common::testkit::{
        DatabaseOutage, database_settings, ensure_test_database, within,
    };
    let limit = std::time::Duration::from_secs(10);
    ensure_test_database().await;
    let outage = DatabaseOutage::start().await;
    let mut settings = database_settings("probe");
    settings.url = outage.url();
    settings.migrate_on_start = false;
    let shutdown = CancellationToken::new();
    let store = Store::new(&settings, shutdown.clone()).unwrap();
    let why = store.readiness().unwrap_err();
    assert!(why.contains("database"), "before any check: {why}");

    let probe = store.spawn_probe();
    let r = readiness_until(&store, limit, |r| {
        r.as_ref().is_err_and(|why| why.contains("not migrated"))
    })
    .await;
    assert!(
        r.as_ref().is_err_and(|why| why.contains("not migrated")),
        "an empty schema: {r:?}"
    );
    store.migrate().await.unwrap();
    assert_eq!(store.readiness(), Ok(()), "ready once migrated");

    outage.cut().await;
    let r = readiness_until(&store, limit, Result::is_err).await;
    assert!(
        r.as_ref()
            .is_err_and(|why| why.contains("database unreachable")),
        "within 10 s of the outage, no operation running: {r:?}"
    );
    outage.restore();
    let r = readiness_until(&store, limit, Result::is_ok).await;
    assert_eq!(
        r,
        Ok(()),
        "ready again within 10 s of the database's return"
    );

    shutdown.cancel();
    within(limit, "the probe stopping on shutdown", probe)
        .await
        .unwrap();
    drop_schema(&store, &settings.schema).await;
    store.close().await;
}

/// A test that hangs fails its binary with a message naming it, instead of hanging the
/// run: this test runs itself again as a child with a 1 s limit and a hang, and checks
/// the child's exit status (124) and what it wrote.
#[test]
fn a_hung_test_stops_its_binary_with_a_message() {
    use mailpipe_common::testkit::Watchdog;
    const NAME: &str = "a_hung_test_stops_its_binary_with_a_message";
    if std::env::var_os("MAILPIPE_TEST_HANG_ON_PURPOSE").is_some() {
        let _limit = Watchdog::arm(std::time::Duration::from_secs(1), "a hang on purpose");
        loop {
            std::thread::park();
        }
    }
    // The runner names tests by their path below the binary's root: `store::NAME`.
    let path = module_path!().split_once("::").map_or("", |(_, m)| m);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &format!("{path}::{NAME}"), "--test-threads", "2"])
        .env("MAILPIPE_TEST_HANG_ON_PURPOSE", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The child must end by itself; 60 s is the margin before it is killed and this fails.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("the watchdog did not stop a hung test within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(124), "{stderr}");
    assert!(
        stderr.contains(NAME) && stderr.contains("a hang on purpose") && stderr.contains("hangs"),
        "the message names the test and what hung: {stderr}"
    );
}

/// A process that held a member lock and lost it (its connection ended: a crash) is dead
/// at once: it leaves the live list and its lease passes on before it lapses. While the
/// lock is held, the lease is its own.
#[tokio::test]
async fn a_lease_passes_on_as_soon_as_its_owners_member_lock_is_gone() {
    use mailpipe_common::store::MemberLock;
    let db = Db::new("memberlock").await;
    let s = &db.store;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let ttl = std::time::Duration::from_secs(60);
    let key = MemberLock::new_key();
    let lock = s.hold_member_lock(key).await.unwrap();
    s.heartbeat(a, "host-a", ttl, Some(key)).await.unwrap();
    s.heartbeat(b, "host-b", ttl, None).await.unwrap();
    let mailbox = "mbx9@contoso.example";
    let first = s.acquire_lease(a, mailbox, ttl).await.unwrap().unwrap();
    assert_eq!(s.acquire_lease(b, mailbox, ttl).await.unwrap(), None);
    let mut live = vec![a, b];
    live.sort();
    assert_eq!(s.live_member_ids().await.unwrap(), live);

    // The lock's connection ends; the lease still has a minute to run.
    lock.release().await;
    assert_eq!(s.live_member_ids().await.unwrap(), vec![b]);
    let taken = s.acquire_lease(b, mailbox, ttl).await.unwrap();
    assert_eq!(taken, Some(first + 1), "taken at once, under a new token");
    // a's write-ahead sends are refused from now on.
    assert_eq!(
        s.open_send(&send("late", a, first)).await.unwrap(),
        Decision::Fenced
    );
    db.cleanup().await;
}
