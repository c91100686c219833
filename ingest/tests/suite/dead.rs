//! Dead letters: `dead list` shows them and leaves the queue intact; `dead replay` moves
//! exactly the matching ones back to the queue of the stage they died in.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::process::Command;
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicNackOptions};
use mailpipe_common::amqp::{Stage, header_str};
use mailpipe_common::contract::{DeliveryEvent, EventKind, Job, META_HEADER, RenderedMeta};
use mailpipe_common::domain::{BatchId, JobId};
use mailpipe_common::pipeline::rendered_properties;
use mailpipe_common::testkit::{TestBroker, assert_counters_add_up};
use mailpipe_ingest::dead::{self, DeadFilter};
use serde_json::Value;
use support::{INVOICE_DATA, TestApp};

fn job(id: &str, batch: &str) -> Job {
    let json = format!(
        r#"{{"id":"{id}","batch":"{batch}","template":"invoice","to":["ann@example.com"],"data":{}}}"#,
        support::INVOICE_DATA
    );
    Job::from_json(json.as_bytes()).unwrap()
}

fn meta(id: &str, batch: &str, attempt: u32) -> RenderedMeta {
    let json = format!(
        r#"{{"job_id":"{id}","batch":"{batch}","from":{{"address":"billing@example.com"}},"has_reply_to":false,"recipients":["ann@example.com"],"message_id":"<{id}@mailpipe.test>","attempt":{attempt},"rendered_at":"2026-11-01T10:00:00Z"}}"#
    );
    RenderedMeta::from_header_value(&json).unwrap()
}

const MIME: &[u8] = b"Subject: Invoice\r\nTo: ann@example.com\r\n\r\nHello\r\n";

/// A job dead-lettered by render, as render does it (taken from its queue, then `dead_letter`).
async fn dead_job(t: &TestBroker, id: &str, batch: &str, reason: &str) {
    t.pipeline
        .send_job(&job(id, batch))
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    let msg = t
        .get(
            &t.broker.topology().stage_queue(Stage::Render),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    t.pipeline
        .dead_letter(
            Stage::Render,
            &msg.delivery.data,
            &msg.delivery.properties,
            reason,
        )
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
}

/// A rendered message dead-lettered by deliver.
async fn dead_rendered(t: &TestBroker, id: &str, batch: &str, attempt: u32, reason: &str) {
    t.pipeline
        .dead_letter(
            Stage::Deliver,
            MIME,
            &rendered_properties(&meta(id, batch, attempt)),
            reason,
        )
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
}

/// A job the broker dead-lettered after its consumers gave it back too often.
async fn dead_by_delivery_limit(t: &TestBroker, id: &str, batch: &str) {
    t.pipeline
        .send_job(&job(id, batch))
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    give_back_until_dead(t, 4).await;
}

/// Takes render's message and gives it back, as a consumer that dies on it would, until
/// the broker has dead-lettered it (the dead queue holds `dead` messages).
async fn give_back_until_dead(t: &TestBroker, dead: u32) {
    let queue = t.broker.topology().stage_queue(Stage::Render);
    let ch = t.broker.channel().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while t.depth(&t.broker.topology().dead_queue()).await < dead {
        if let Some(m) = ch
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            m.delivery
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
                .unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker never dead-lettered it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fill(t: &TestBroker) {
    dead_job(
        t,
        "r1",
        "b1",
        "render failed: template \"invoice\" not found",
    )
    .await;
    dead_rendered(
        t,
        "d1",
        "b1",
        3,
        "gave up after 3 attempts; last: 451 4.7.500 Server busy, try again later",
    )
    .await;
    dead_rendered(
        t,
        "d2",
        "b2",
        0,
        "refused by the server: 550 5.7.1 Delivery not authorized",
    )
    .await;
    dead_by_delivery_limit(t, "r2", "b2").await;
    dead_rendered(
        t,
        "dd",
        "b1",
        0,
        "recipients refused: bob@example.com: 550 5.1.1 RESOLVER.ADR.RecipNotFound; not found",
    )
    .await;
    // dd's job itself was delivered (only a recipient was refused), as deliver records it.
    let mut e = DeliveryEvent::new(
        JobId::parse("dd").unwrap(),
        Some(BatchId::parse("b1").unwrap()),
        EventKind::Delivered,
    );
    e.recipients = 1;
    e.refused_recipients = vec![mailpipe_common::contract::RecipientRefusal {
        address: mailpipe_common::domain::EmailAddress::parse("bob@example.com").unwrap(),
        reply: mailpipe_common::contract::SmtpReply::new(
            550,
            "5.1.1 RESOLVER.ADR.RecipNotFound; not found",
        ),
    }];
    t.pipeline
        .record_event(&e)
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
}

fn config_file(dir: &std::path::Path, t: &TestBroker) -> std::path::PathBuf {
    let path = dir.join("mailpipe.toml");
    let r = &t.settings;
    let delays: Vec<String> = r
        .retry_delays_ms
        .iter()
        .map(|d| d.as_millis().to_string())
        .collect();
    let text = format!(
        "[rabbitmq]\nurl = {:?}\nprefix = {:?}\ndelivery_limit = {}\nretry_delays_ms = [{}]\nevents_max_age = {:?}\n",
        r.url,
        r.prefix,
        r.delivery_limit,
        delays.join(", "),
        r.events_max_age
    );
    let text = format!("{text}{}", t.database_toml());
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits until the queues hold `expected` ready messages (returns to a quorum queue take
/// a moment to show in its depth).
async fn depths(t: &TestBroker, queues: [&str; 3], expected: (u32, u32, u32)) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = (
            t.depth(queues[0]).await,
            t.depth(queues[1]).await,
            t.depth(queues[2]).await,
        );
        if got == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "depths {got:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    let mut ids: Vec<String> = v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["job_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn dead_list_shows_stage_reason_and_reply_and_leaves_the_queue_intact() {
    let t = TestBroker::start("ing-dead-list").await;
    fill(&t).await;
    let dead_queue = t.broker.topology().dead_queue();
    assert_eq!(t.depth(&dead_queue).await, 5);

    let listing = dead::list(&t.broker, &DeadFilter::default(), |id| id.as_str() == "dd")
        .await
        .unwrap();
    assert_eq!((listing.total, listing.matched), (5, 5));
    let by_id = |id: &str| {
        listing
            .dead_letters
            .iter()
            .find(|d| d.job_id.as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    let r1 = by_id("r1");
    assert_eq!(
        (r1.stage.as_deref(), r1.batch.as_deref(), r1.reason_from),
        (Some("render"), Some("b1"), Some("mailpipe"))
    );
    assert!(r1.reason.unwrap().contains("template"));
    assert_eq!(r1.smtp, None);
    let d1 = by_id("d1");
    assert_eq!(
        (d1.stage.as_deref(), d1.attempt),
        (Some("deliver"), Some(3))
    );
    assert_eq!(
        d1.smtp.as_ref().map(|r| (r.code, r.enhanced.clone())),
        Some((451, Some("4.7.500".into())))
    );
    let r2 = by_id("r2");
    assert_eq!(
        (r2.stage.as_deref(), r2.reason.as_deref(), r2.reason_from),
        (Some("render"), Some("delivery_limit"), Some("broker"))
    );
    assert_eq!(r2.batch.as_deref(), Some("b2"));
    let dd = by_id("dd");
    assert!(dd.delivered);
    assert_eq!(dd.smtp.as_ref().unwrap().enhanced.as_deref(), Some("5.1.1"));
    depths(&t, [&dead_queue, &dead_queue, &dead_queue], (5, 5, 5)).await; // listing took nothing away

    // Filtered, through the binary.
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &t);
    let bin = env!("CARGO_BIN_EXE_mailpipe-ingest");
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["dead", "list", "--batch", "b2", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total"], 5);
    assert_eq!(ids(&json, "dead_letters"), ["d2", "r2"]);
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["dead", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("reason (broker): delivery_limit"), "{text}");
    assert!(
        text.contains("last reply: 550 5.7.1 Delivery not authorized"),
        "{text}"
    );
    assert!(text.contains("(job delivered)"), "{text}");
    depths(&t, [&dead_queue, &dead_queue, &dead_queue], (5, 5, 5)).await; // listing took nothing away
    t.cleanup().await;
}

#[tokio::test]
async fn dead_replay_moves_exactly_the_matching_messages_back_to_their_stage() {
    let t = TestBroker::start("ing-dead-replay").await;
    fill(&t).await;
    let topo = t.broker.topology().clone();
    let (render, deliver, dead_queue) = (
        topo.stage_queue(Stage::Render),
        topo.stage_queue(Stage::Deliver),
        topo.dead_queue(),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &t);
    let bin = env!("CARGO_BIN_EXE_mailpipe-ingest");

    // A dry run changes nothing.
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["dead", "replay", "--batch", "b1", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&json, "replayed"), ["d1", "r1"]);
    depths(&t, [&dead_queue, &render, &deliver], (5, 0, 0)).await;

    // By batch: r1 to render, d1 to deliver; dd (job delivered) and b2's stay.
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["dead", "replay", "--batch", "b1", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&json, "replayed"), ["d1", "r1"]);
    assert_eq!(ids(&json, "skipped"), ["dd"]);
    assert!(
        json["skipped"][0]["why"]
            .as_str()
            .unwrap()
            .contains("already delivered")
    );
    depths(&t, [&dead_queue, &render, &deliver], (3, 1, 1)).await;
    let r1 = t.get(&render, Duration::from_secs(5)).await.unwrap();
    let replayed_job = Job::from_queue(&r1.delivery.data).unwrap();
    assert_eq!(replayed_job.id.as_str(), "r1");
    assert_eq!(replayed_job, job("r1", "b1"), "the job as it was");
    let d1 = t.get(&deliver, Duration::from_secs(5)).await.unwrap();
    let m =
        RenderedMeta::from_header_value(&header_str(&d1.delivery.properties, META_HEADER).unwrap())
            .unwrap();
    assert_eq!(
        (m.job_id.as_str(), m.attempt),
        ("d1", 0),
        "attempts start again"
    );
    assert_eq!(&d1.delivery.data[..], MIME);
    assert_eq!(header_str(&d1.delivery.properties, "x-death"), None);

    // By id, through the library: only r2 (dead-lettered by the broker) goes back.
    let filter = DeadFilter {
        batch: None,
        job: Some(JobId::parse("r2").unwrap()),
    };
    let report = dead::replay(&t.pipeline, &filter, false, |_| false)
        .await
        .unwrap();
    assert_eq!(
        (report.total, report.matched, report.replayed.len()),
        (3, 1, 1)
    );
    depths(&t, [&dead_queue, &render, &deliver], (2, 1, 0)).await;
    let r2 = t.get(&render, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        Job::from_queue(&r2.delivery.data).unwrap().id.as_str(),
        "r2"
    );

    let left = dead::list(&t.broker, &DeadFilter::default(), |_| false)
        .await
        .unwrap();
    let mut left: Vec<_> = left
        .dead_letters
        .iter()
        .map(|d| d.job_id.clone().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["d2", "dd"]);
    t.cleanup().await;
}

#[tokio::test]
async fn a_job_the_broker_dead_lettered_is_recorded_failed_and_its_batch_finishes() {
    let app = TestApp::spawn("ing-dead-log").await;
    let job = format!(
        r#"{{"id":"lost-1","batch":"dl","template":"invoice","to":["ann@example.com"],"data":{INVOICE_DATA}}}"#
    );
    assert_eq!(app.post_job(&job).await.0, 202);
    let t = &app.broker;
    tokio::time::timeout(Duration::from_secs(60), give_back_until_dead(t, 1))
        .await
        .expect("the broker dead-letters the message within 60 s");

    let job = app
        .eventually("/v1/jobs/lost-1", |j| j["status"] == "failed")
        .await;
    let detail = job["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("dead-lettered by RabbitMQ (delivery_limit) in render"),
        "{job}"
    );
    let batch = app.get_json("/v1/batches/dl").await;
    assert_eq!(batch["finished"], true, "{batch}");
    assert_eq!(batch["counts"]["dead"], 1, "{batch}");
    // The operator's dead letters are untouched: it can still be replayed.
    assert_eq!(t.depth(&t.broker.topology().dead_queue()).await, 1);
    assert_counters_add_up(t.store()).await;
    app.cleanup().await;
}
