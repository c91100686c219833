//! One job is one trace: spans from ingest, render and deliver (down to the SMTP exchange)
//! share a trace id, linked through the W3C trace context in AMQP headers. A local OTLP/HTTP
//! collector (JSON encoding) receives what the real binaries export.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Stack, StackOptions};
use serde_json::Value;

/// (service, trace id, span name) of every span received.
type Spans = Arc<Mutex<Vec<(String, String, String)>>>;

async fn collector() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let sink = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                    let service = rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.name")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or("?")
                        .to_owned();
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for span in ss["spans"].as_array().into_iter().flatten() {
                            let trace = span["traceId"].as_str().unwrap_or("").to_owned();
                            let name = span["name"].as_str().unwrap_or("").to_owned();
                            sink.lock().unwrap().push((service.clone(), trace, name));
                        }
                    }
                }
                ([("content-type", "application/json")], "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_is_one_trace_across_ingest_render_deliver_and_smtp() {
    let (endpoint, spans) = collector().await;
    let opts = StackOptions {
        name: "trace".into(),
        messages_per_window: 100,
        message_window_ms: 1_000,
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/json".into()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
        ],
        ..StackOptions::default()
    };
    let stack = Stack::start(opts).await.expect("stack starts");
    let jsonl = write_batch(&stack.attachments_root(), "btrace", 1, |_| 1).unwrap();
    let (status, body) = stack.post_batch("btrace", jsonl, false).await.unwrap();
    assert_eq!(status, 202, "{body}");
    stack
        .wait_batch_done("btrace", 1, Duration::from_secs(60))
        .await
        .unwrap();
    // SIGTERM flushes each binary's span exporter.
    stack.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let spans = spans.lock().unwrap().clone();
    let services_of = |trace: &str| {
        let mut s: Vec<String> = spans
            .iter()
            .filter(|(_, t, _)| t == trace)
            .map(|(svc, _, _)| svc.clone())
            .collect();
        s.sort();
        s.dedup();
        s
    };
    let smtp = spans
        .iter()
        .find(|(svc, _, name)| svc == "mailpipe-deliver" && name == "smtp.send")
        .unwrap_or_else(|| panic!("an SMTP exchange span among {spans:?}"));
    assert_eq!(
        services_of(&smtp.1),
        vec![
            "mailpipe-deliver".to_owned(),
            "mailpipe-ingest".to_owned(),
            "mailpipe-render".to_owned()
        ],
        "the SMTP span's trace spans all three stages: {spans:?}"
    );
    let names: Vec<&str> = spans
        .iter()
        .filter(|(_, t, _)| *t == smtp.1)
        .map(|(_, _, n)| n.as_str())
        .collect();
    assert!(
        names.contains(&"render") && names.contains(&"deliver"),
        "{names:?}"
    );
}
