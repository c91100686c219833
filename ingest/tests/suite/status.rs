//! Batch status from the events stream: counts, per mailbox, failures and the ETA, over
//! HTTP and through `mailpipe-ingest status` (real RabbitMQ, events fed as the stages
//! write them).

#![allow(clippy::unwrap_used)]

use crate::support;

use std::process::Command;

use chrono::Utc;
use mailpipe_common::contract::{DeliveryEvent, EventKind, RecipientRefusal, SmtpReply};
use mailpipe_common::domain::{BatchId, EmailAddress, JobId};
use mailpipe_common::pipeline::Pipeline;
use mailpipe_common::testkit::TestBroker;
use serde_json::Value;
use support::{POOL_TOML, TestApp};

fn event(job: &str, batch: &str, kind: EventKind) -> DeliveryEvent {
    DeliveryEvent::new(
        JobId::parse(job).unwrap(),
        Some(BatchId::parse(batch).unwrap()),
        kind,
    )
}

async fn record(p: &Pipeline, e: DeliveryEvent) {
    p.record_event(&e).await.unwrap().confirmed().await.unwrap();
}

/// Batch `b`: 10 jobs of 2 recipients; j0..j2 delivered by a@, j3 by b@ with one recipient
/// refused, j4 failed (550 5.1.1), j5..j9 still on their way.
async fn feed_batch(p: &Pipeline, b: &str) {
    let t0 = Utc::now() - chrono::Duration::seconds(30);
    for i in 0..10 {
        let mut e = event(&format!("{b}-j{i}"), b, EventKind::Accepted);
        e.recipients = 2;
        e.at = t0;
        record(p, e).await;
    }
    for i in 0..4 {
        let mut e = event(&format!("{b}-j{i}"), b, EventKind::Delivered);
        e.mailbox = Some(
            EmailAddress::parse(if i < 3 {
                "a@pool.example"
            } else {
                "b@pool.example"
            })
            .unwrap(),
        );
        e.recipients = 2;
        e.smtp = Some(SmtpReply::new(250, "2.6.0 Queued mail for delivery"));
        e.at = t0 + chrono::Duration::seconds(1 + i);
        if i == 3 {
            e.recipients = 1;
            e.refused_recipients = vec![RecipientRefusal {
                address: EmailAddress::parse("gone@example.com").unwrap(),
                reply: SmtpReply::new(550, "5.1.1 RESOLVER.ADR.RecipNotFound; not found"),
            }];
        }
        record(p, e).await;
    }
    let mut e = event(&format!("{b}-j4"), b, EventKind::Failed);
    e.mailbox = Some(EmailAddress::parse("a@pool.example").unwrap());
    e.smtp = Some(SmtpReply::new(
        550,
        "5.7.1 Delivery not authorized, message refused",
    ));
    e.reason =
        Some("refused by the server: 550 5.7.1 Delivery not authorized, message refused".into());
    e.attempt = 1;
    e.at = t0 + chrono::Duration::seconds(10);
    record(p, e).await;
    for i in 5..7 {
        let mut e = event(&format!("{b}-j{i}"), b, EventKind::Rendered);
        e.at = t0 + chrono::Duration::seconds(11);
        record(p, e).await;
    }
}

fn check_batch(json: &Value, b: &str) {
    assert_eq!(json["batch"], b);
    assert_eq!(json["jobs"], 10);
    assert_eq!(json["finished"], false);
    assert_eq!(json["remaining"], 5);
    let c = &json["counts"];
    assert_eq!(
        (
            c["accepted"].as_u64(),
            c["rendered"].as_u64(),
            c["delivered"].as_u64()
        ),
        (Some(3), Some(2), Some(4)),
        "{json}"
    );
    assert_eq!(
        (
            c["retrying"].as_u64(),
            c["failed"].as_u64(),
            c["dead"].as_u64()
        ),
        (Some(0), Some(1), Some(1)),
        "{json}"
    );
    assert_eq!(json["per_mailbox"]["a@pool.example"]["delivered"], 3);
    assert_eq!(json["per_mailbox"]["b@pool.example"]["delivered"], 1);
    let f = &json["failures"];
    assert_eq!(
        (f["total"].as_u64(), f["shown"].as_u64()),
        (Some(2), Some(2)),
        "{json}"
    );
    assert_eq!(
        f["items"][0]["job_id"],
        format!("{b}-j3"),
        "oldest first: the partial refusal"
    );
    assert_eq!(f["items"][0]["status"], "delivered");
    assert_eq!(
        f["items"][0]["refused_recipients"][0]["address"],
        "gone@example.com"
    );
    assert_eq!(
        f["items"][0]["refused_recipients"][0]["reply"]["enhanced"],
        "5.1.1"
    );
    assert_eq!(f["items"][1]["job_id"], format!("{b}-j4"));
    assert_eq!(f["items"][1]["smtp"]["code"], 550);
    assert_eq!(f["items"][1]["smtp"]["enhanced"], "5.7.1");
    assert!(
        f["items"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("refused by the server")
    );
    // ETA: 5 jobs x 2 recipients; quota left (100 - 6) + (100 - 1) = 193 >= 10, so the
    // rate decides: 5 jobs at 1 message/s.
    let eta = &json["eta"];
    assert_eq!(eta["jobs_left"], 5);
    assert_eq!(eta["recipients_left"], 10);
    assert_eq!(eta["pool_messages_per_second"], 1.0);
    assert_eq!(eta["pool_recipients_available"], 193);
    assert_eq!(eta["pool_recipients_per_window"], 200);
    assert_eq!(eta["quota_wait_seconds"], 0.0);
    assert_eq!(eta["eta_seconds"], 5.0, "{eta}");
    let at = chrono::DateTime::parse_from_rfc3339(eta["eta_at"].as_str().unwrap()).unwrap();
    let computed =
        chrono::DateTime::parse_from_rfc3339(eta["computed_at"].as_str().unwrap()).unwrap();
    assert_eq!((at - computed).num_seconds(), 5);
}

#[tokio::test]
async fn batch_status_over_http_has_counts_mailboxes_failures_and_an_eta() {
    let app = TestApp::spawn("ing-status").await;
    feed_batch(&app.broker.pipeline, "nov").await;
    let json = app
        .eventually("/v1/batches/nov", |j| {
            j["counts"]["failed"] == 1 && j["counts"]["rendered"] == 2
        })
        .await;
    check_batch(&json, "nov");

    let job = app
        .eventually("/v1/jobs/nov-j4", |j| j["status"] == "failed")
        .await;
    assert_eq!(job["mailbox"], "a@pool.example");
    assert_eq!(job["smtp"]["enhanced"], "5.7.1");
    assert_eq!(job["recipients"], 2);

    // The rest delivered: finished, ETA 0.
    for i in 5..10 {
        let mut e = event(&format!("nov-j{i}"), "nov", EventKind::Delivered);
        e.mailbox = Some(EmailAddress::parse("b@pool.example").unwrap());
        e.recipients = 2;
        record(&app.broker.pipeline, e).await;
    }
    let json = app
        .eventually("/v1/batches/nov", |j| j["finished"] == true)
        .await;
    assert_eq!(json["eta"]["eta_seconds"], 0.0);
    assert_eq!(json["per_mailbox"]["b@pool.example"]["delivered"], 6);
    app.cleanup().await;
}

/// Mailboxes their deliver process reports held for a fault send nothing: the ETA leaves
/// them out, and with every mailbox held it is null and says which and why. A mailbox held
/// for a window (rate) still counts: the model already waits for windows.
#[tokio::test]
async fn the_eta_leaves_out_mailboxes_held_for_a_fault_and_is_null_when_all_are() {
    use mailpipe_common::store::MailboxHold;
    let app = TestApp::spawn("ing-held").await;
    feed_batch(&app.broker.pipeline, "held").await;
    let store = app.broker.store();
    let deliver = uuid::Uuid::new_v4();
    let hold = |mailbox: &str, state: &str, reason: &str| MailboxHold {
        mailbox: mailbox.into(),
        state: state.into(),
        reason: reason.into(),
        until: chrono::Utc::now() + chrono::Duration::minutes(10),
    };
    // b held for its credentials: only a's 0.5 message/s is left.
    store
        .report_mailbox_holds(
            deliver,
            &[hold("b@pool.example", "quarantined", "auth")],
            &[],
        )
        .await
        .unwrap();
    let json = app
        .eventually("/v1/batches/held", |j| {
            j["eta"]["pool_messages_per_second"] == 0.5
        })
        .await;
    assert_eq!(json["eta"]["eta_seconds"], 10.0, "{json}");
    // a held for its rate window: still counted.
    store
        .report_mailbox_holds(deliver, &[hold("a@pool.example", "paused", "rate")], &[])
        .await
        .unwrap();
    let json = app.get_json("/v1/batches/held").await;
    assert_eq!(json["eta"]["pool_messages_per_second"], 0.5, "{json}");
    // a quarantined too: nothing can send.
    store
        .report_mailbox_holds(
            deliver,
            &[hold("a@pool.example", "quarantined", "tenant_blocked")],
            &[],
        )
        .await
        .unwrap();
    let json = app.get_json("/v1/batches/held").await;
    assert_eq!(json["eta"]["eta_seconds"], Value::Null, "{json}");
    let reason = json["eta"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("every mailbox")
            && reason.contains("a@pool.example (tenant_blocked")
            && reason.contains("b@pool.example (auth"),
        "{reason}"
    );
    // Lifted: back to the whole pool.
    store
        .report_mailbox_holds(
            deliver,
            &[],
            &["a@pool.example".into(), "b@pool.example".into()],
        )
        .await
        .unwrap();
    let json = app.get_json("/v1/batches/held").await;
    assert_eq!(json["eta"]["eta_seconds"], 5.0, "{json}");
    app.cleanup().await;
}

#[tokio::test]
async fn without_a_pool_the_eta_is_null_with_a_reason() {
    let broker = TestBroker::start("ing-nopool").await;
    let dir = support::fixture_dir();
    let config = mailpipe_ingest::Config {
        rabbitmq: broker.settings.clone(),
        telemetry: Default::default(),
        database: broker.database.clone(),
        ingest: support::settings_for(dir.path()),
        pool: Err(
            "no [[deliver.mailboxes]] in the configuration: the ETA needs the pool's limits".into(),
        ),
    };
    let app = TestApp::spawn_with(broker, dir, config).await;
    record(
        &app.broker.pipeline,
        event("x1", "solo", EventKind::Accepted),
    )
    .await;
    let json = app.eventually("/v1/batches/solo", |j| j["jobs"] == 1).await;
    assert_eq!(json["eta"]["eta_seconds"], Value::Null);
    assert_eq!(json["eta"]["eta_at"], Value::Null);
    assert!(
        json["eta"]["reason"]
            .as_str()
            .unwrap()
            .contains("deliver.mailboxes"),
        "{json}"
    );
    app.cleanup().await;
}

pub fn config_file(dir: &std::path::Path, t: &TestBroker, with_pool: bool) -> std::path::PathBuf {
    let path = dir.join("mailpipe.toml");
    let r = &t.settings;
    let delays: Vec<String> = r
        .retry_delays_ms
        .iter()
        .map(|d| d.as_millis().to_string())
        .collect();
    let text = format!(
        "[rabbitmq]\nurl = {:?}\nprefix = {:?}\ndelivery_limit = {}\nretry_delays_ms = [{}]\nevents_max_age = {:?}\n{}",
        r.url,
        r.prefix,
        r.delivery_limit,
        delays.join(", "),
        r.events_max_age,
        if with_pool { POOL_TOML } else { "" }
    );
    let text = format!("{text}{}", t.database_toml());
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn the_status_command_reads_the_database_and_prints_the_same_json() {
    let t = TestBroker::start("ing-status-bin").await;
    feed_batch(&t.pipeline, "dec").await;
    let mut ok = event("ok-1", "clean", EventKind::Accepted);
    ok.recipients = 1;
    record(&t.pipeline, ok).await;
    let mut ok = event("ok-1", "clean", EventKind::Delivered);
    // A mailbox outside the pool: the quota log ignores it.
    ok.mailbox = Some(EmailAddress::parse("other@elsewhere.example").unwrap());
    ok.recipients = 1;
    record(&t.pipeline, ok).await;

    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &t, true);
    let bin = env!("CARGO_BIN_EXE_mailpipe-ingest");
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["status", "dec", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "failures make it 1: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_str(stdout.trim()).unwrap();
    check_batch(&json, "dec");

    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["status", "dec"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("10 jobs: 4 delivered, 1 failed, 5 to go"),
        "{text}"
    );
    assert!(text.contains("a@pool.example  3"), "{text}");
    assert!(text.contains("550 5.7.1 Delivery not authorized"), "{text}");
    assert!(
        text.contains("refused gone@example.com: 550 5.1.1"),
        "{text}"
    );
    assert!(text.contains("ETA: 5s"), "{text}");

    // Finished without failures: 0, and --watch returns at once.
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["status", "clean", "--watch"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": finished"));

    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["status", "nope", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown batch nope"));

    // No pool in the file: the ETA is null with the reason.
    let config = config_file(dir.path(), &t, false);
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["status", "dec", "--json"])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["eta"]["eta_seconds"], Value::Null);
    assert!(
        json["eta"]["reason"]
            .as_str()
            .unwrap()
            .contains("deliver.mailboxes")
    );
    t.cleanup().await;
}

#[test]
fn check_config_warns_about_missing_tokens_and_the_pool_but_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, "[ingest]\nmax_in_flight = 8\n").unwrap();
    let bin = env!("CARGO_BIN_EXE_mailpipe-ingest");
    let out = Command::new(bin)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("no API tokens configured: `serve` will refuse to start"),
        "{stdout}"
    );
    assert!(stdout.contains("batch ETAs will be null"), "{stdout}");

    std::fs::write(
        &path,
        format!(
            "[ingest]\napi_tokens = [{{ env = \"MAILPIPE_TEST_UNSET_TOKEN_VAR\" }}]\n{POOL_TOML}"
        ),
    )
    .unwrap();
    let out = Command::new(bin)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a configured token that cannot be read is an error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ingest.api_tokens[0]"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 mailboxes, 1.00 messages/s"));
}

#[tokio::test]
async fn a_jobs_state_only_moves_forward_whatever_order_its_events_arrive_in() {
    let app = TestApp::spawn("ing-status-order").await;
    let p = &app.broker.pipeline;
    let t0 = Utc::now() - chrono::Duration::seconds(60);
    let at = |e: EventKind, job: &str, secs: i64| {
        let mut e = event(job, "ooo", e);
        e.at = t0 + chrono::Duration::seconds(secs);
        e
    };
    // ooo-1: a duplicate render stamped after the delivery, arriving after it.
    // ooo-2: the same render arriving first, the delivery (stamped earlier) after it.
    // ooo-3: failed, then a late retry and render of a duplicate.
    for e in [
        at(EventKind::Accepted, "ooo-1", 0),
        at(EventKind::Delivered, "ooo-1", 2),
        at(EventKind::Rendered, "ooo-1", 3),
        at(EventKind::Accepted, "ooo-2", 0),
        at(EventKind::Rendered, "ooo-2", 5),
        at(EventKind::Delivered, "ooo-2", 4),
        at(EventKind::Accepted, "ooo-3", 0),
        at(EventKind::Failed, "ooo-3", 2),
        at(EventKind::Retrying, "ooo-3", 6),
        at(EventKind::Rendered, "ooo-3", 7),
    ] {
        record(p, e).await;
    }
    // Events are applied in stream order: once this one shows, all above were applied.
    record(p, event("ooo-sentinel", "ooo-end", EventKind::Accepted)).await;
    app.eventually("/v1/jobs/ooo-sentinel", |j| j["status"] == "accepted")
        .await;

    for (job, want) in [
        ("ooo-1", "delivered"),
        ("ooo-2", "delivered"),
        ("ooo-3", "failed"),
    ] {
        let r = app.get(&format!("/v1/jobs/{job}")).send().await.unwrap();
        let json: Value = r.json().await.unwrap();
        assert_eq!(json["status"], want, "{job}: {json}");
    }
    let r = app.get("/v1/batches/ooo").send().await.unwrap();
    let json: Value = r.json().await.unwrap();
    assert_eq!(json["finished"], true, "{json}");
    assert_eq!(json["counts"]["delivered"], 2, "{json}");
    assert_eq!(json["counts"]["failed"], 1, "{json}");
    app.cleanup().await;
}

/// Batches `lst-0` .. `lst-4` (two jobs each) submitted one after the other, so `lst-4` is
/// the newest.
async fn submit_batches(app: &TestApp) -> Vec<String> {
    let ids: Vec<String> = (0..5).map(|i| format!("lst-{i}")).collect();
    for b in &ids {
        let body = format!(
            "{}\n{}\n",
            support::job_json(&format!("{b}-a")),
            support::job_json(&format!("{b}-b"))
        );
        let r = app
            .post(&format!("/v1/batches?batch={b}"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{b}: {}", r.text().await.unwrap());
    }
    ids
}

fn names(page: &Value) -> Vec<String> {
    page["batches"]
        .as_array()
        .unwrap_or_else(|| panic!("no batches: {page}"))
        .iter()
        .map(|b| b["batch"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_batch_list_pages_newest_first_and_filters_by_state_time_and_text() {
    let app = TestApp::spawn("ing-batch-list").await;
    let ids = submit_batches(&app).await;
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();

    // Pages of two, by cursor: every batch once, newest first; the last page has no cursor.
    let mut seen = Vec::new();
    let mut path = "/v1/batches?limit=2".to_owned();
    for _ in 0..5 {
        let page = app.get_json(&path).await;
        seen.extend(names(&page));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/batches?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
    let page = app.get_json("/v1/batches").await;
    assert_eq!(names(&page), newest_first, "default page holds them all");
    assert!(page.get("next_cursor").is_none(), "{page}");
    let first = &page["batches"][0];
    assert_eq!(first["state"], "running", "{first}");
    assert_eq!(first["jobs"], 2, "{first}");
    assert_eq!(first["remaining"], 2, "{first}");
    assert_eq!(first["counts"]["accepted"], 2, "{first}");

    // States: one paused, one cancelled, one done (both jobs delivered).
    assert_eq!(
        app.post("/v1/batches/lst-1/pause")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.post("/v1/batches/lst-2/cancel")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A paused batch has no ETA: nothing of it goes out until it is resumed.
    let paused = app.get_json("/v1/batches/lst-1").await;
    assert_eq!(
        paused["eta"]["eta_seconds"],
        serde_json::Value::Null,
        "{paused}"
    );
    assert!(
        paused["eta"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("paused")),
        "{paused}"
    );
    for j in ["lst-3-a", "lst-3-b"] {
        let mut e = event(j, "lst-3", EventKind::Delivered);
        e.mailbox = Some(EmailAddress::parse("a@pool.example").unwrap());
        e.recipients = 1;
        record(&app.broker.pipeline, e).await;
    }
    app.eventually("/v1/batches/lst-3", |j| j["finished"] == true)
        .await;
    for (state, expected) in [
        ("running", vec!["lst-4", "lst-0"]),
        ("paused", vec!["lst-1"]),
        ("cancelled", vec!["lst-2"]),
        ("done", vec!["lst-3"]),
    ] {
        let page = app.get_json(&format!("/v1/batches?state={state}")).await;
        assert_eq!(names(&page), expected, "state={state}: {page}");
        for b in page["batches"].as_array().unwrap() {
            assert_eq!(b["state"], state, "{b}");
        }
    }

    // Created range: from is inclusive, to exclusive; together they split the list.
    let middle = page_created_at(&app, "lst-2").await;
    let from = app
        .get_json(&format!("/v1/batches?created_from={}", urlencode(&middle)))
        .await;
    assert_eq!(names(&from), ["lst-4", "lst-3", "lst-2"]);
    let to = app
        .get_json(&format!("/v1/batches?created_to={}", urlencode(&middle)))
        .await;
    assert_eq!(names(&to), ["lst-1", "lst-0"]);

    // Text: any part of the id, any case; with a state too.
    assert_eq!(names(&app.get_json("/v1/batches?q=ST-3").await), ["lst-3"]);
    assert!(names(&app.get_json("/v1/batches?q=nope").await).is_empty());
    assert_eq!(
        names(&app.get_json("/v1/batches?q=lst&state=paused").await),
        ["lst-1"]
    );

    // Bad parameters are named; a token is needed.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("state=finished", "state"),
        ("cursor=garbage", "cursor"),
        ("created_from=yesterday", "created_from"),
        ("q=a%00b", "q"),
        ("colour=red", "colour"),
    ] {
        let r = app
            .get(&format!("/v1/batches?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    let r = app
        .client
        .get(format!("{}/v1/batches", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The CLI lists the same batches, filtered the same way.
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &app.broker, true);
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-ingest"))
        .arg("--config")
        .arg(&config)
        .args(["batch", "list", "--state", "running", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["batch"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(listed, ["lst-4", "lst-0"]);
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-ingest"))
        .arg("--config")
        .arg(&config)
        .args(["batch", "list", "--limit", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("lst-4") && text.contains("lst-3") && !text.contains("lst-2"),
        "{text}"
    );
    assert!(text.contains("more: add --cursor "), "{text}");
    app.cleanup().await;
}

async fn page_created_at(app: &TestApp, batch: &str) -> String {
    let page = app.get_json(&format!("/v1/batches?q={batch}")).await;
    page["batches"][0]["created_at"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
