//! Bounces and the suppression list against a real PostgreSQL: an NDR moves a delivered
//! job to `bounced` and suppresses the dead address, once per report; a soft bounce
//! suppresses nothing; a report that does not bind to a send of the mailbox, or names
//! someone that send did not go to, changes nothing (which reports are trusted); operators
//! add, list and remove suppressions.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use mailpipe_common::contract::{
    Bounce, BouncedRecipient, DeliveryEvent, DsnAction, EventKind, OriginalLink, Provenance,
    ReportOrigin, SuppressionSource,
};
use mailpipe_common::domain::{BatchId, DsnStatus, EmailAddress, JobId};
use mailpipe_common::store::{ClaimInput, JobState, NewSuppression, Store, SuppressionFilter};
use mailpipe_common::testkit::{drop_schema, test_store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const MAILBOX: &str = "billing1@contoso.example";

fn addr(s: &str) -> EmailAddress {
    EmailAddress::parse(s).unwrap()
}

fn t0() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap()
}

/// A job sent to `to` through MAILBOX with Message-ID `<id@mailpipe>`, delivered at t0.
async fn delivered_job(s: &Store, id: &str, to: &[&str]) {
    delivered_job_from(s, id, to, MAILBOX).await;
}

/// The same through `mailbox`: the job's events and the send deliver wrote for it.
async fn delivered_job_from(s: &Store, id: &str, to: &[&str], mailbox: &str) {
    let input = ClaimInput {
        id: JobId::parse(id).unwrap(),
        batch: Some("b1".into()),
        template: "invoice".into(),
        recipients: to.iter().map(|a| a.to_ascii_lowercase()).collect(),
        content_hash: vec![1],
        not_before: None,
        not_after: None,
    };
    s.claim_jobs(Uuid::new_v4(), &[input]).await.unwrap();
    let batch = Some(BatchId::parse("b1").unwrap());
    let mut rendered = DeliveryEvent::new(
        JobId::parse(id).unwrap(),
        batch.clone(),
        EventKind::Rendered,
    );
    rendered.message_id = Some(format!("<{id}@mailpipe>"));
    rendered.at = t0() - Duration::seconds(5);
    s.record_event(&rendered).await.unwrap();
    let mut delivered = DeliveryEvent::new(JobId::parse(id).unwrap(), batch, EventKind::Delivered);
    delivered.mailbox = Some(addr(mailbox));
    delivered.message_id = rendered.message_id.clone();
    delivered.at = t0();
    s.record_event(&delivered).await.unwrap();
    // The send as the send decision and its outcome leave it (migration 0009).
    sqlx::query(
        "INSERT INTO sends (id, mailbox, job_id, message_id, owner, token, recipients,
                            external_recipients, started_at, deadline, ended_at, outcome)
         VALUES (gen_random_uuid(), $1, $2, $3, gen_random_uuid(), 1, $4, $4, $5, $5, $5, 'accepted')",
    )
    .bind(mailbox)
    .bind(id)
    .bind(format!("<{id}@mailpipe>"))
    .bind(to.len() as i32)
    .bind(t0())
    .execute(s.pool())
    .await
    .unwrap();
}

/// The tenant's own Exchange NDR, the original's headers attached.
fn from_tenant() -> Provenance {
    Provenance {
        origin: ReportOrigin::Tenant,
        link: Some(OriginalLink::Attached),
        from: Some(addr("postmaster@contoso.example")),
    }
}

fn bounced(address: &str, status: &str, message_id: Option<&str>) -> Bounce {
    Bounce {
        original_message_id: message_id.map(str::to_owned),
        recipients: vec![BouncedRecipient {
            address: addr(address),
            status: DsnStatus::parse(status).unwrap(),
            action: if status.starts_with('4') {
                DsnAction::Delayed
            } else {
                DsnAction::Failed
            },
            diagnostic: Some(format!(
                "Remote Server returned '550 {status} RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup'"
            )),
        }],
        provenance: from_tenant(),
    }
}

/// Nothing happened to `id`: still delivered, nobody suppressed, no `job.bounced` webhook.
async fn untouched(s: &Store, id: &str, addresses: &[&str]) {
    assert_eq!(state(s, id).await, Some(JobState::Delivered), "{id}");
    let listed: Vec<EmailAddress> = addresses.iter().map(|a| addr(a)).collect();
    assert!(s.suppressed_among(&listed).await.unwrap().is_empty());
    let (hooks,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM webhook_events WHERE type = 'job.bounced'")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(hooks, 0, "a job.bounced webhook was recorded");
}

async fn state(s: &Store, id: &str) -> Option<JobState> {
    s.send_check(&JobId::parse(id).unwrap())
        .await
        .unwrap()
        .state
}

async fn db(name: &str) -> (Store, String) {
    let (store, settings) = test_store(name, CancellationToken::new()).await;
    (store, settings.schema)
}

#[tokio::test]
async fn a_hard_bounce_moves_a_delivered_job_to_bounced_and_suppresses_the_address() {
    let (s, schema) = db("bounce_hard").await;
    delivered_job(&s, "inv-1", &["Ann@Example.com", "bob@example.com"]).await;
    let report = bounced("ann@example.com", "5.1.10", Some("<inv-1@mailpipe>"));
    let at = t0() + Duration::seconds(30);
    let record = s
        .record_bounce(&addr(MAILBOX), "AAMkAD-graph-id-1", &report, at)
        .await
        .unwrap();
    assert!(record.newly);
    assert_eq!(record.job.as_ref().map(|j| j.as_str()), Some("inv-1"));
    assert_eq!(record.suppressed, vec![addr("ann@example.com")]);
    assert_eq!(state(&s, "inv-1").await, Some(JobState::Bounced));

    let (code, enhanced, reason): (Option<i32>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT smtp_code, smtp_enhanced, reason FROM jobs WHERE id = 'inv-1'")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(code, Some(550));
    assert_eq!(enhanced.as_deref(), Some("5.1.10"));
    assert!(reason.unwrap().contains("ann@example.com: 5.1.10"));
    let (event,): (serde_json::Value,) =
        sqlx::query_as("SELECT event FROM job_events WHERE job_id = 'inv-1' AND kind = 'bounced'")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(event["bounced_recipients"][0]["address"], "ann@example.com");
    assert_eq!(event["bounced_recipients"][0]["status"], "5.1.10");

    let on_list = s
        .suppressed_among(&[addr("ANN@example.com"), addr("bob@example.com")])
        .await
        .unwrap();
    assert_eq!(on_list.len(), 1);
    assert_eq!(on_list[0].address, "ann@example.com");
    assert_eq!(on_list[0].source, SuppressionSource::Bounce);
    assert_eq!(on_list[0].status.as_deref(), Some("5.1.10"));
    assert_eq!(on_list[0].job_id.as_deref(), Some("inv-1"));

    // A late `delivered` (a redelivered message recorded again) does not undo the bounce.
    let mut again = DeliveryEvent::new(JobId::parse("inv-1").unwrap(), None, EventKind::Delivered);
    again.at = t0() + Duration::seconds(60);
    s.record_event(&again).await.unwrap();
    assert_eq!(state(&s, "inv-1").await, Some(JobState::Bounced));
    drop_schema(&s, &schema).await;
}

#[tokio::test]
async fn the_same_report_recorded_twice_is_handled_once() {
    let (s, schema) = db("bounce_once").await;
    delivered_job(&s, "inv-2", &["carl@example.com"]).await;
    let report = bounced("carl@example.com", "5.1.1", Some("<inv-2@mailpipe>"));
    let first = s
        .record_bounce(
            &addr(MAILBOX),
            "<ndr-2@outlook.example>",
            &report,
            t0() + Duration::seconds(10),
        )
        .await
        .unwrap();
    assert!(first.newly);
    // A restart reads the same NDR again (it was not moved out of the Inbox), later.
    let second = s
        .record_bounce(
            &addr("Billing1@Contoso.example"),
            "<ndr-2@outlook.example>",
            &report,
            t0() + Duration::seconds(99),
        )
        .await
        .unwrap();
    assert!(!second.newly);
    assert_eq!(second.job.as_ref().map(|j| j.as_str()), Some("inv-2"));
    assert!(second.suppressed.is_empty());
    let (events,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM job_events WHERE job_id = 'inv-2' AND kind = 'bounced'",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(events, 1);
    drop_schema(&s, &schema).await;
}

#[tokio::test]
async fn a_soft_bounce_suppresses_nothing_and_leaves_the_job_delivered() {
    let (s, schema) = db("bounce_soft").await;
    delivered_job(&s, "inv-3", &["dora@example.com"]).await;
    let report = bounced("dora@example.com", "4.4.7", Some("<inv-3@mailpipe>"));
    let record = s
        .record_bounce(
            &addr(MAILBOX),
            "delay-1",
            &report,
            t0() + Duration::seconds(10),
        )
        .await
        .unwrap();
    assert!(record.newly);
    assert!(record.suppressed.is_empty());
    assert_eq!(state(&s, "inv-3").await, Some(JobState::Delivered));
    // A 5.2.2 (mailbox full) bounces the job but does not suppress the address.
    let full = bounced("dora@example.com", "5.2.2", Some("<inv-3@mailpipe>"));
    let record = s
        .record_bounce(
            &addr(MAILBOX),
            "full-1",
            &full,
            t0() + Duration::seconds(20),
        )
        .await
        .unwrap();
    assert!(record.suppressed.is_empty());
    assert_eq!(state(&s, "inv-3").await, Some(JobState::Bounced));
    assert!(
        s.suppressed_among(&[addr("dora@example.com")])
            .await
            .unwrap()
            .is_empty()
    );
    drop_schema(&s, &schema).await;
}

#[tokio::test]
async fn reports_that_do_not_bind_to_a_send_of_the_mailbox_change_nothing() {
    let (s, schema) = db("bounce_untrusted").await;
    delivered_job(&s, "inv-4", &["erin@example.com", "cc.frank@example.com"]).await;
    delivered_job(&s, "inv-5", &["gina@example.com"]).await;
    delivered_job_from(
        &s,
        "inv-6",
        &["hal@example.com"],
        "billing2@contoso.example",
    )
    .await;
    let everyone = [
        "erin@example.com",
        "cc.frank@example.com",
        "gina@example.com",
        "hal@example.com",
        "victim@customer.example",
    ];
    let at = t0() + Duration::seconds(10);
    let outside = |link: Option<OriginalLink>, from: &str| Provenance {
        origin: ReportOrigin::Outside,
        link,
        from: Some(addr(from)),
    };
    let cases: Vec<(&str, Bounce, &str)> = vec![
        // A report from anyone, with no Message-ID of ours: the old fallback matched it by
        // recipient and mailbox.
        (
            "no-original",
            Bounce {
                provenance: outside(None, "MAILER-DAEMON@attacker.example"),
                ..bounced("erin@example.com", "5.1.1", None)
            },
            "names no Message-ID",
        ),
        // A Message-ID that is no send of ours.
        (
            "not-ours",
            Bounce {
                provenance: outside(
                    Some(OriginalLink::Attached),
                    "MAILER-DAEMON@attacker.example",
                ),
                ..bounced("victim@customer.example", "5.1.1", Some("<not-ours@x>"))
            },
            "not a send of this mailbox",
        ),
        // The co-recipient, linked only by In-Reply-To (every recipient knows it).
        (
            "in-reply-to",
            Bounce {
                provenance: outside(Some(OriginalLink::InReplyTo), "postmaster@attacker.example"),
                ..bounced("cc.frank@example.com", "5.1.1", Some("<inv-4@mailpipe>"))
            },
            "In-Reply-To",
        ),
        // A real NDR of the tenant about inv-4, naming the recipient of another job.
        (
            "stranger",
            bounced("gina@example.com", "5.1.1", Some("<inv-4@mailpipe>")),
            "did not go to: gina@example.com",
        ),
        // A real NDR about a send of another mailbox.
        (
            "other-mailbox",
            bounced("hal@example.com", "5.1.1", Some("<inv-6@mailpipe>")),
            "not a send of this mailbox",
        ),
        // The To recipient, with the original attached, reporting on the cc.
        (
            "from-a-recipient",
            Bounce {
                provenance: outside(Some(OriginalLink::Attached), "Erin@Example.com"),
                ..bounced("cc.frank@example.com", "5.1.1", Some("<inv-4@mailpipe>"))
            },
            "recipient of the original",
        ),
    ];
    for (key, report, why) in cases {
        let record = s
            .record_bounce(&addr(MAILBOX), key, &report, at)
            .await
            .unwrap();
        assert!(record.newly, "{key}");
        assert_eq!(record.job, None, "{key}");
        assert!(record.suppressed.is_empty(), "{key}");
        let reason = record
            .untrusted
            .unwrap_or_else(|| panic!("{key} was trusted"));
        assert!(reason.contains(why), "{key}: {reason}");
        // Read again (a crash before the move): still untrusted, still nothing.
        let again = s
            .record_bounce(&addr(MAILBOX), key, &report, at)
            .await
            .unwrap();
        assert!(!again.newly);
        assert_eq!(again.untrusted.as_deref(), Some(reason.as_str()), "{key}");
    }
    for job in ["inv-4", "inv-5", "inv-6"] {
        untouched(&s, job, &everyone).await;
    }
    let (untrusted,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM handled_reports WHERE outcome = 'untrusted' AND reason IS NOT NULL",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(untrusted, 6);

    // A remote server's DSN carrying the original binds, and suppresses the one it names.
    let remote = Bounce {
        provenance: outside(Some(OriginalLink::Attached), "MAILER-DAEMON@mx.example.com"),
        ..bounced("cc.frank@example.com", "5.1.1", Some("<inv-4@mailpipe>"))
    };
    let record = s
        .record_bounce(&addr(MAILBOX), "remote-dsn", &remote, at)
        .await
        .unwrap();
    assert_eq!(record.untrusted, None);
    assert_eq!(record.job.as_ref().map(|j| j.as_str()), Some("inv-4"));
    assert_eq!(record.suppressed, vec![addr("cc.frank@example.com")]);
    assert!(
        s.suppressed_among(&[addr("erin@example.com")])
            .await
            .unwrap()
            .is_empty()
    );
    drop_schema(&s, &schema).await;
}

#[tokio::test]
async fn operators_add_list_and_remove_suppressions() {
    let (s, schema) = db("suppress_ops").await;
    let entry = NewSuppression::by_operator(
        addr("Gone@Example.org"),
        "left the company",
        Some("ops".into()),
    );
    assert!(s.suppress(&entry).await.unwrap());
    // Again, with another reason: replaced, not new.
    let entry = NewSuppression::by_operator(addr("gone@example.org"), "asked to stop\r\n", None);
    assert!(!s.suppress(&entry).await.unwrap());
    for a in ["a@example.net", "b@example.net", "c@example.org"] {
        s.suppress(&NewSuppression::by_operator(addr(a), "test", None))
            .await
            .unwrap();
    }
    let page = |address: Option<&str>, after: Option<&str>| SuppressionFilter {
        address: address.map(str::to_owned),
        source: None,
        after: after.map(str::to_owned),
        limit: 2,
    };
    let first = s.list_suppressions(&page(None, None)).await.unwrap();
    assert_eq!(
        first.iter().map(|x| x.address.as_str()).collect::<Vec<_>>(),
        ["a@example.net", "b@example.net"]
    );
    let next = s
        .list_suppressions(&page(None, Some("b@example.net")))
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|x| x.address.as_str()).collect::<Vec<_>>(),
        ["c@example.org", "gone@example.org"]
    );
    assert_eq!(next[1].reason, "asked to stop");
    assert_eq!(next[1].original, "Gone@Example.org");
    let org = s
        .list_suppressions(&page(Some("EXAMPLE.ORG"), None))
        .await
        .unwrap();
    assert_eq!(org.len(), 2);
    assert!(s.unsuppress(&addr("GONE@example.org")).await.unwrap());
    assert!(!s.unsuppress(&addr("gone@example.org")).await.unwrap());
    drop_schema(&s, &schema).await;
}

#[tokio::test]
async fn bounced_and_suppressed_take_their_place_in_the_forward_order() {
    let (s, schema) = db("bounce_order").await;
    let ev = |id: &str, kind: EventKind, secs: i64| {
        let mut e = DeliveryEvent::new(JobId::parse(id).unwrap(), None, kind);
        e.at = t0() + Duration::seconds(secs);
        e
    };
    // An NDR for a send recorded uncertain (retrying) or given up on (failed): it was sent.
    for (id, before) in [("u-1", EventKind::Retrying), ("u-2", EventKind::Failed)] {
        s.record_event(&ev(id, EventKind::Accepted, 0))
            .await
            .unwrap();
        s.record_event(&ev(id, before, 5)).await.unwrap();
        s.record_event(&ev(id, EventKind::Bounced, 1))
            .await
            .unwrap();
        assert_eq!(state(&s, id).await, Some(JobState::Bounced), "{id}");
    }
    // Suppressed is final: a late retry or cancel does not move it; a send already under
    // way that was delivered does.
    s.record_event(&ev("x-1", EventKind::Accepted, 0))
        .await
        .unwrap();
    s.record_event(&ev("x-1", EventKind::Suppressed, 1))
        .await
        .unwrap();
    s.record_event(&ev("x-1", EventKind::Retrying, 9))
        .await
        .unwrap();
    s.record_event(&ev("x-1", EventKind::Cancelled, 9))
        .await
        .unwrap();
    assert_eq!(state(&s, "x-1").await, Some(JobState::Suppressed));
    s.record_event(&ev("x-1", EventKind::Delivered, 2))
        .await
        .unwrap();
    assert_eq!(state(&s, "x-1").await, Some(JobState::Delivered));
    drop_schema(&s, &schema).await;
}
