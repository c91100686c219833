//! The stage against the real RabbitMQ: jobs in, rendered messages, dead letters and
//! events out (each test under its own name prefix).

#![allow(clippy::unwrap_used)]

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::options::QueueDeleteOptions;
use mailpipe_common::amqp::{
    DEAD_REASON_HEADER, FieldTable, Outgoing, Publisher, Stage, header_str, persistent_properties,
};
use mailpipe_common::config::CommonSettings;
use mailpipe_common::contract::{DeliveryEvent, EventKind, META_HEADER, RenderedMeta};
use mailpipe_common::testkit::TestBroker;
use mailpipe_render::{Application, RenderOutcome, RenderStage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use support::{
    DOMAIN, example_renderer, examples_dir, invoice_job, job, pdf::sample_pdf, settings,
};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Events for `job_id` since `since`, polling until `want` shows up (or 10 s pass).
async fn events_for(
    t: &TestBroker,
    since: chrono::DateTime<Utc>,
    job_id: &str,
    want: EventKind,
) -> Vec<DeliveryEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<DeliveryEvent> = t
            .stream_events_since(since)
            .await
            .into_iter()
            .filter(|e| e.job_id.as_str() == job_id)
            .collect();
        if found.iter().any(|e| e.kind == want) || tokio::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_app(
    t: &TestBroker,
) -> (
    CancellationToken,
    std::net::SocketAddr,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let shutdown = CancellationToken::new();
    let common = CommonSettings {
        rabbitmq: t.settings.clone(),
        telemetry: Default::default(),
        database: t.database.clone(),
    };
    let app = Application::build(settings(&examples_dir(), None), common, shutdown.clone())
        .await
        .expect("builds");
    let addr = app.http_addr();
    (shutdown, addr, tokio::spawn(app.run_until_stopped()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_comes_out_rendered_on_the_deliver_queue_with_its_meta_and_event() {
    let t = TestBroker::start("render-ok").await;
    let since = Utc::now() - chrono::Duration::seconds(1);
    let (shutdown, addr, run) = start_app(&t).await;
    assert!(
        http_get(addr, "/readyz").await.starts_with("HTTP/1.0 200"),
        "ready once connected"
    );

    let pdf = sample_pdf(20_000);
    t.pipeline
        .send_job(&invoice_job("inv-rmq-1", &pdf))
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    let out = t
        .get(
            &t.broker.topology().stage_queue(Stage::Deliver),
            Duration::from_secs(10),
        )
        .await
        .expect("rendered message");

    let meta = RenderedMeta::from_header_value(
        &header_str(&out.delivery.properties, META_HEADER).expect("meta header"),
    )
    .unwrap();
    assert_eq!(meta.job_id.as_str(), "inv-rmq-1");
    assert_eq!(meta.batch.as_ref().map(|b| b.as_str()), Some("2026-11"));
    assert_eq!(meta.from.address.as_str(), "billing@acme.example");
    assert!(meta.has_reply_to);
    assert_eq!(meta.recipients.len(), 3);
    assert!(meta.message_id.ends_with(&format!("@{DOMAIN}>")));
    let msg = mail_parser::MessageParser::default()
        .parse(&out.delivery.data)
        .expect("MIME body");
    assert_eq!(
        msg.message_id().map(|id| format!("<{id}>")),
        Some(meta.message_id.clone())
    );
    assert_eq!(msg.attachments().next().unwrap().contents(), pdf.as_slice());

    let events = events_for(&t, since, "inv-rmq-1", EventKind::Rendered).await;
    assert!(
        events.iter().any(|e| e.kind == EventKind::Rendered),
        "{events:?}"
    );
    assert_eq!(
        t.depth(&t.broker.topology().stage_queue(Stage::Render))
            .await,
        0,
        "acked"
    );

    let metrics = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("mailpipe_render_jobs_total{outcome=\"rendered\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mailpipe_render_duration_seconds_bucket"),
        "{metrics}"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_job_goes_to_dead_letters_with_its_reason_and_a_failed_event() {
    let t = TestBroker::start("render-dead").await;
    let since = Utc::now() - chrono::Duration::seconds(1);
    let (shutdown, _addr, run) = start_app(&t).await;

    let bad = job(
        serde_json::json!({"id": "bad-1", "template": "invoice", "to": ["a@b.example"], "data": {"invoice_number": "1"}}),
    );
    t.pipeline
        .send_job(&bad)
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    // Not even a job: still dead-lettered, never a crash or a loop.
    let publisher = Publisher::new(t.broker.clone(), Duration::from_secs(5));
    let work = t.broker.topology().work_exchange();
    publisher
        .publish(Outgoing {
            exchange: &work,
            routing_key: "render",
            body: b"\x00not json",
            properties: persistent_properties("application/json", FieldTable::default()),
        })
        .await
        .unwrap();

    let mut reasons = Vec::new();
    for _ in 0..2 {
        let dead = t
            .get(&t.broker.topology().dead_queue(), Duration::from_secs(10))
            .await
            .expect("dead letter");
        reasons.push((
            header_str(&dead.delivery.properties, DEAD_REASON_HEADER).expect("reason header"),
            dead.delivery.data.clone(),
        ));
    }
    reasons.sort();
    assert!(
        reasons
            .iter()
            .any(|(r, _)| r.starts_with("cannot read the job")),
        "{reasons:?}"
    );
    let (reason, body) = reasons
        .iter()
        .find(|(r, _)| r.contains("undefined variable"))
        .expect("template failure");
    assert!(
        reason.contains("data.customer.name") || reason.contains("data.due_date"),
        "{reason}"
    );
    assert_eq!(
        mailpipe_common::contract::Job::from_queue(body)
            .unwrap()
            .id
            .as_str(),
        "bad-1",
        "the job is kept as it was"
    );

    let events = events_for(&t, since, "bad-1", EventKind::Failed).await;
    let failed = events
        .iter()
        .find(|e| e.kind == EventKind::Failed)
        .expect("failed event");
    assert_eq!(failed.reason.as_deref(), Some(reason.as_str()));
    assert!(!events.iter().any(|e| e.kind == EventKind::Rendered));
    assert_eq!(
        t.depth(&t.broker.topology().stage_queue(Stage::Deliver))
            .await,
        0
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_reports_each_outcome_and_requeues_when_publishing_fails() {
    let t = TestBroker::start("render-handle").await;
    let stage = RenderStage::new(
        Arc::new(example_renderer()),
        t.pipeline.clone(),
        2,
        Duration::from_secs(30),
    );
    let props = persistent_properties("application/json", FieldTable::default());

    let body = serde_json::to_vec(&invoice_job("h-1", b"%PDF-1.4")).unwrap();
    assert!(
        matches!(stage.handle(&body, &props).await, RenderOutcome::Rendered { ref job_id, .. } if job_id.as_str() == "h-1")
    );

    let newer = br#"{"v":9,"id":"h-2","template":"invoice","to":["a@b.example"]}"#;
    match stage.handle(newer, &props).await {
        RenderOutcome::Dead { reason, kind } => {
            assert_eq!(kind, "contract_version");
            assert!(reason.contains("newer"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    let unknown = serde_json::to_vec(&job(
        serde_json::json!({"id": "h-3", "template": "nope", "to": ["a@b.example"]}),
    ))
    .unwrap();
    assert!(matches!(
        stage.handle(&unknown, &props).await,
        RenderOutcome::Dead {
            kind: "unknown_template",
            ..
        }
    ));

    // Broker trouble: with the deliver queue gone the publish is unroutable; the job must not be acked.
    let ch = t.broker.channel().await.unwrap();
    ch.queue_delete(
        t.broker.topology().stage_queue(Stage::Deliver).into(),
        QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    match stage.handle(&body, &props).await {
        RenderOutcome::Requeue { error } => assert!(error.contains("unroutable"), "{error}"),
        other => panic!("{other:?}"),
    }
    t.cleanup().await;
}
