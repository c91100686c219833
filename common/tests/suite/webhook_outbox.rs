//! The webhook outbox against a real PostgreSQL: an outcome recorded is one event, born in
//! the same statement, however often it is recorded; uncertain sends and batch
//! completion are events once; deliveries are fanned out, held, retried, expired and
//! requeued.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use mailpipe_common::contract::{DeliveryEvent, EventKind, SmtpReply};
use mailpipe_common::domain::{BatchId, JobId};
use mailpipe_common::store::{
    AfterAttempt, AttemptOutcome, BatchControl, Decision, DeliveryFilter, Route, SendOutcome,
    SendRules, SendStart, Store,
};
use mailpipe_common::testkit::{drop_schema, test_store};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn event(job: &str, batch: &str, kind: EventKind, secs: i64) -> DeliveryEvent {
    let mut e = DeliveryEvent::new(
        JobId::parse(job).unwrap(),
        Some(BatchId::parse(batch).unwrap()),
        kind,
    );
    e.at = at(secs);
    e
}

/// Events as (type, dedupe key, payload), in dedupe-key order.
async fn events(s: &Store) -> Vec<(String, String, Value)> {
    sqlx::query_as::<_, (String, String, sqlx::types::Json<Value>)>(
        "SELECT type, dedupe_key, payload FROM webhook_events ORDER BY dedupe_key",
    )
    .fetch_all(s.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|(t, k, p)| (t, k, p.0))
    .collect()
}

async fn journey(s: &Store, job: &str, batch: &str) {
    s.record_event(&event(job, batch, EventKind::Accepted, 0))
        .await
        .unwrap();
    s.record_event(&event(job, batch, EventKind::Rendered, 1))
        .await
        .unwrap();
}

fn delivered(job: &str, batch: &str, secs: i64) -> DeliveryEvent {
    let mut e = event(job, batch, EventKind::Delivered, secs);
    e.smtp = Some(SmtpReply::new(250, "2.6.0 Queued mail for delivery"));
    e.message_id = Some(format!("<{job}@mailpipe.test>"));
    e
}

#[tokio::test]
async fn an_outcome_recorded_is_one_event_however_often_it_is_recorded() {
    let (s, settings) = test_store("wh_outcome", CancellationToken::new()).await;
    journey(&s, "a", "b1").await;
    assert!(events(&s).await.is_empty(), "no event before an outcome");
    s.record_event(&delivered("a", "b1", 2)).await.unwrap();
    // The same event again (a redelivered message), and a replay stamped later.
    s.record_event(&delivered("a", "b1", 2)).await.unwrap();
    s.record_event(&delivered("a", "b1", 7)).await.unwrap();
    let all = events(&s).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let (kind, key, payload) = &all[0];
    assert_eq!(kind, "job.delivered");
    assert_eq!(key, "job:a:delivered");
    assert_eq!(payload["type"], "job.delivered");
    assert_eq!(payload["timestamp"], "2027-01-15T08:00:02.000000Z");
    let data = &payload["data"];
    assert_eq!(data["job_id"], "a");
    assert_eq!(data["batch"], "b1");
    assert_eq!(data["state"], "delivered");
    assert_eq!(data["smtp"]["code"], 250);
    assert_eq!(data["message_id"], "<a@mailpipe.test>");
    // The stage's event recorded in the same statement rides along.
    assert_eq!(data["event"]["kind"], "delivered", "{payload}");

    // A failure, then a replayed dead letter delivered: two outcomes, two events.
    journey(&s, "f", "b2").await;
    s.record_event(&event("f", "b2", EventKind::Failed, 3))
        .await
        .unwrap();
    s.record_event(&event("f", "b2", EventKind::Failed, 4))
        .await
        .unwrap();
    s.record_event(&delivered("f", "b2", 5)).await.unwrap();
    // A job first known from a final event (no ingest record) fires too.
    s.record_event(&event("late", "b2", EventKind::Expired, 1))
        .await
        .unwrap();
    let keys: Vec<String> = events(&s).await.into_iter().map(|e| e.1).collect();
    assert_eq!(
        keys,
        [
            "job:a:delivered",
            "job:f:delivered",
            "job:f:failed",
            "job:late:expired"
        ]
    );

    // A cancel ends the batch's unsent jobs in one statement: one event each.
    journey(&s, "c1", "b3").await;
    journey(&s, "c2", "b3").await;
    s.set_batch_control("b3", BatchControl::Cancelled)
        .await
        .unwrap();
    s.set_batch_control("b3", BatchControl::Cancelled)
        .await
        .unwrap();
    let cancelled: Vec<(String, String, Value)> = events(&s)
        .await
        .into_iter()
        .filter(|e| e.0 == "job.cancelled")
        .collect();
    assert_eq!(cancelled.len(), 2, "{cancelled:?}");
    assert_eq!(cancelled[0].2["data"]["reason"], "batch cancelled");
    drop_schema(&s, &settings.schema).await;
}

#[tokio::test]
async fn an_uncertain_send_is_one_event_per_job() {
    let (s, settings) = test_store("wh_uncertain", CancellationToken::new()).await;
    journey(&s, "u", "b1").await;
    let owner = Uuid::new_v4();
    let mailbox = "mbx0@contoso.example";
    let token = s
        .acquire_lease(owner, mailbox, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    for _ in 0..2 {
        let send = SendStart {
            id: Uuid::now_v7(),
            mailbox: mailbox.into(),
            tenant: Some("contoso".into()),
            job_id: "u".into(),
            message_id: "<u@mailpipe.test>".into(),
            owner,
            token,
            batch: None,
            recipients: vec![
                mailpipe_common::domain::EmailAddress::parse("x@fabrikam.example").unwrap(),
            ],
            external_recipients: 1,
            budget: Duration::from_secs(90),
            rules: SendRules {
                uncertain_hold: Some(Duration::ZERO),
                tenant_budget: None,
            },
        };
        assert_eq!(s.open_send(&send).await.unwrap(), Decision::Written);
        s.close_send(send.id, SendOutcome::Uncertain).await.unwrap();
    }
    let all = events(&s).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].0, "job.uncertain");
    assert_eq!(all[0].2["data"]["batch"], "b1");
    assert_eq!(all[0].2["data"]["mailbox"], mailbox);
    assert_eq!(all[0].2["data"]["message_id"], "<u@mailpipe.test>");
    // Not an outcome of the batch: the completion sweep has nothing to look at.
    assert_eq!(s.sweep_completed_batches(100).await.unwrap(), 0);
    drop_schema(&s, &settings.schema).await;
}

#[tokio::test]
async fn a_batch_completes_once_when_no_job_is_left_unfinished() {
    let (s, settings) = test_store("wh_batch", CancellationToken::new()).await;
    journey(&s, "j1", "nov").await;
    journey(&s, "j2", "nov").await;
    s.record_event(&delivered("j1", "nov", 2)).await.unwrap();
    assert_eq!(s.sweep_completed_batches(100).await.unwrap(), 1);
    assert!(
        !events(&s).await.iter().any(|e| e.0 == "batch.completed"),
        "j2 is still under way"
    );
    s.record_event(&event("j2", "nov", EventKind::Failed, 3))
        .await
        .unwrap();
    assert_eq!(s.sweep_completed_batches(100).await.unwrap(), 1);
    assert_eq!(
        s.sweep_completed_batches(100).await.unwrap(),
        0,
        "swept once"
    );
    // A replayed dead letter delivered later is an event of its job, not a second completion.
    s.record_event(&delivered("j2", "nov", 4)).await.unwrap();
    s.sweep_completed_batches(100).await.unwrap();
    let done: Vec<Value> = events(&s)
        .await
        .into_iter()
        .filter(|e| e.0 == "batch.completed")
        .map(|e| e.2)
        .collect();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["data"]["batch"], "nov");
    assert_eq!(done[0]["data"]["jobs"], 2);
    assert_eq!(done[0]["data"]["counts"]["delivered"], 1);
    assert_eq!(done[0]["data"]["counts"]["failed"], 1);
    drop_schema(&s, &settings.schema).await;
}

#[tokio::test]
async fn deliveries_are_fanned_out_held_retried_expired_and_requeued() {
    let (s, settings) = test_store("wh_deliveries", CancellationToken::new()).await;
    let opened = s
        .open_batch(
            "cb",
            mailpipe_common::store::Opener::TRUSTED,
            Some("https://erp.example.com/hook"),
        )
        .await
        .unwrap();
    assert!(opened);
    journey(&s, "d1", "cb").await;
    s.record_event(&delivered("d1", "cb", 2)).await.unwrap();
    let day = Duration::from_secs(86_400);
    let route = |e: &mailpipe_common::store::OutboxEvent| {
        let mut r = vec![Route {
            endpoint: "erp".into(),
            url: "https://hooks.example.com/in".into(),
        }];
        if let Some(url) = &e.callback_url {
            r.push(Route {
                endpoint: "callback".into(),
                url: url.clone(),
            });
        }
        r
    };
    assert_eq!(s.fan_out_webhooks(100, day, route).await.unwrap(), 1);
    assert_eq!(s.fan_out_webhooks(100, day, route).await.unwrap(), 0);
    // An hour to live from here on (a day from the event's birth by default).
    sqlx::query("UPDATE webhook_deliveries SET expires_at = now() + interval '1 hour'")
        .execute(s.pool())
        .await
        .unwrap();

    let hold = Duration::from_secs(60);
    let held = s
        .claim_webhooks(10, &["erp".to_owned()], |_| true, hold)
        .await
        .unwrap();
    assert_eq!(held.len(), 1, "the saturated endpoint is skipped");
    assert_eq!(held[0].endpoint, "callback");
    assert!(held[0].payload.contains("job.delivered"));
    let again = s.claim_webhooks(10, &[], |_| true, hold).await.unwrap();
    assert_eq!(again.len(), 1, "the held one is not taken twice");
    assert_eq!(again[0].endpoint, "erp");

    let failed = AttemptOutcome::Failed {
        status: Some(503),
        error: "503 Service Unavailable".into(),
        retry_at: Utc::now(),
    };
    assert_eq!(
        s.record_webhook_attempt(held[0].id, &failed).await.unwrap(),
        AfterAttempt::Retrying
    );
    let failing = s
        .webhook_deliveries(DeliveryFilter::Failed, 10)
        .await
        .unwrap();
    assert_eq!(failing.len(), 1);
    assert_eq!(failing[0].last_status, Some(503));
    let retried = s.claim_webhooks(10, &[], |_| true, hold).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].attempts, 1);
    assert_eq!(
        s.record_webhook_attempt(retried[0].id, &AttemptOutcome::Delivered { status: 204 })
            .await
            .unwrap(),
        AfterAttempt::Done
    );
    // A try whose next one would be past the expiry ends it.
    let too_late = AttemptOutcome::Failed {
        status: None,
        error: "timed out".into(),
        retry_at: Utc::now() + chrono::Duration::hours(2),
    };
    assert_eq!(
        s.record_webhook_attempt(again[0].id, &too_late)
            .await
            .unwrap(),
        AfterAttempt::Expired
    );
    assert_eq!(
        s.record_webhook_attempt(again[0].id, &too_late)
            .await
            .unwrap(),
        AfterAttempt::Stale
    );
    let expired = s
        .webhook_deliveries(DeliveryFilter::Expired, 10)
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(s.webhook_backlog().await.unwrap().0, 0);
    assert_eq!(s.retry_webhooks(Some(expired[0].id), day).await.unwrap(), 1);
    assert_eq!(s.webhook_backlog().await.unwrap().0, 1);
    assert_eq!(
        s.claim_webhooks(10, &[], |_| true, hold)
            .await
            .unwrap()
            .len(),
        1
    );

    // 410 from a callback: not tried again, and the batch's later events skip it.
    let gone_id = retried[0].id;
    sqlx::query("UPDATE webhook_deliveries SET state = 'pending' WHERE id = $1")
        .bind(gone_id)
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(
        s.record_webhook_attempt(gone_id, &AttemptOutcome::Gone)
            .await
            .unwrap(),
        AfterAttempt::Done
    );
    let callback: Option<String> =
        sqlx::query_scalar("SELECT callback_url FROM batches WHERE id = 'cb'")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(callback, None);

    // Past the retention, settled events go with the pruning.
    let report = s
        .prune(Utc::now() + chrono::Duration::days(10_000))
        .await
        .unwrap();
    assert_eq!(report.webhook_events, 0, "one delivery is still pending");
    sqlx::query("UPDATE webhook_deliveries SET state = 'expired'")
        .execute(s.pool())
        .await
        .unwrap();
    // The batch's completion sweep looks at the outcome first.
    s.sweep_completed_batches(100).await.unwrap();
    let report = s
        .prune(Utc::now() + chrono::Duration::days(10_000))
        .await
        .unwrap();
    assert_eq!(report.webhook_events, 1);
    drop_schema(&s, &settings.schema).await;
}
