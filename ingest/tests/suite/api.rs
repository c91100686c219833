//! The HTTP API against a real RabbitMQ: what is accepted arrives as the contract says;
//! what is refused names its field and publishes nothing.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::time::Duration;

use mailpipe_common::amqp::header_str;
use mailpipe_common::contract::Job;
use mailpipe_common::pipeline::JOB_ID_HEADER;
use serde_json::Value;
use support::{ROTATED_TOKEN, TestApp, job_json};

#[tokio::test]
async fn a_valid_job_arrives_in_the_render_queue_exactly_as_posted() {
    let app = TestApp::spawn("ing-valid").await;
    let body = r#"{"id":"inv-1","batch":"nov","template":"invoice","from":{"name":"Billing","address":"billing@example.com"},
        "to":[{"name":"Ann Example","address":"ann@example.com"}],"cc":["c@example.com"],"bcc":["audit@example.com"],
        "data":{"invoice_number":"INV-1","due_date":"2026-12-15","currency":"EUR","customer":{"name":"Ann Example"},"items":[{"description":"Consulting","quantity":2,"unit_price":45.0}]},
        "attachments":[{"filename":"inv-1.pdf","content_type":"application/pdf","path":"2026/inv-1.pdf"}]}"#;
    let (status, json) = app.post_job(body).await;
    assert_eq!(status, 202, "{json}");
    assert_eq!(
        json,
        serde_json::json!({"id": "inv-1", "status": "accepted"})
    );

    let msg = app
        .broker
        .get(&app.render_queue(), Duration::from_secs(5))
        .await
        .expect("job in the render queue");
    let queued = Job::from_queue(&msg.delivery.data).unwrap();
    let mut expected = Job::from_json(body.as_bytes()).unwrap();
    assert!(queued.accepted_at.is_some(), "accepted_at is set");
    expected.accepted_at = queued.accepted_at;
    // ingest adds the lane (bulk by default) and its batch's bulk deliver queue.
    assert_eq!(queued.lane, Some(mailpipe_common::contract::Lane::Bulk));
    assert!(
        queued.bulk_queue.is_some_and(|q| q >= 1),
        "a batch's job waits in a batch queue: {:?}",
        queued.bulk_queue
    );
    expected.lane = queued.lane;
    expected.bulk_queue = queued.bulk_queue;
    assert_eq!(queued, expected);
    assert_eq!(
        header_str(&msg.delivery.properties, JOB_ID_HEADER).as_deref(),
        Some("inv-1")
    );
    assert_eq!(
        msg.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        Some("inv-1")
    );

    let job = app
        .eventually("/v1/jobs/inv-1", |j| j["status"] == "accepted")
        .await;
    assert_eq!(job["batch"], "nov");
    app.eventually("/v1/batches/nov", |b| {
        b["counts"]["accepted"] == 1 && b["jobs"] == 1
    })
    .await;
    let r = app.get("/v1/jobs/nope").send().await.unwrap();
    assert_eq!(r.status(), 404);
    app.cleanup().await;
}

#[tokio::test]
async fn every_class_of_bad_input_gets_its_4xx_naming_the_field_and_publishes_nothing() {
    let app = TestApp::spawn("ing-bad").await;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("malformed JSON", r#"{"id":"j1","template":"invoice","to":["#.to_owned(), 400, ""),
        ("bad address", r#"{"id":"j1","template":"invoice","to":["ann@"]}"#.to_owned(), 422, "to[0]"),
        (
            "CR/LF in a display name",
            r#"{"id":"j1","template":"invoice","to":[{"name":"Eve\r\nBcc: x@evil.example","address":"ann@example.com"}]}"#.to_owned(),
            422,
            "to[0]",
        ),
        ("CR/LF in an address", r#"{"id":"j1","template":"invoice","to":["ann@example.com\r\nBcc: x@y.com"]}"#.to_owned(), 422, "to[0]"),
        (
            "too many recipients",
            r#"{"id":"j1","template":"invoice","to":["a@x.com","b@x.com"],"cc":["c@x.com"],"bcc":["d@x.com"]}"#.to_owned(),
            422,
            "to",
        ),
        (
            "path escaping the root",
            r#"{"id":"j1","template":"invoice","to":["a@x.com"],"attachments":[{"filename":"a.pdf","path":"../outside.txt"}]}"#.to_owned(),
            422,
            "attachments[0]",
        ),
        (
            "absolute path",
            r#"{"id":"j1","template":"invoice","to":["a@x.com"],"attachments":[{"filename":"a.pdf","path":"/etc/passwd"}]}"#.to_owned(),
            422,
            "attachments[0]",
        ),
        (
            "missing attachment file",
            r#"{"id":"j1","template":"invoice","to":["a@x.com"],"attachments":[{"filename":"a.pdf","path":"2026/none.pdf"}]}"#.to_owned(),
            422,
            "attachments[0].path",
        ),
        ("unknown template", r#"{"id":"j1","template":"reminder","to":["a@x.com"]}"#.to_owned(), 422, "template"),
        ("malformed template name", r#"{"id":"j1","template":"../x","to":["a@x.com"]}"#.to_owned(), 422, "template"),
        ("unknown field", r#"{"id":"j1","template":"invoice","to":["a@x.com"],"colour":"red"}"#.to_owned(), 422, ""),
        ("bad id", r#"{"id":"j 1","template":"invoice","to":["a@x.com"]}"#.to_owned(), 422, "id"),
        (
            "oversize body",
            format!(r#"{{"id":"j1","template":"invoice","to":["a@x.com"],"data":{{"x":"{}"}}}}"#, "y".repeat(70 * 1024)),
            413,
            "body",
        ),
    ];
    for (what, body, status, field) in cases {
        let (got, json) = app.post_job(&body).await;
        assert_eq!(got, status, "{what}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: no error text: {json}"
        );
        let named = json["field"].as_str().unwrap_or_default();
        assert!(!named.is_empty(), "{what}: no field named: {json}");
        if !field.is_empty() {
            assert_eq!(named, field, "{what}: {json}");
        }
        if what == "unknown field" {
            assert!(
                json["error"].as_str().unwrap().contains("colour"),
                "{what}: {json}"
            );
        }
    }
    let r = app
        .post("/v1/jobs")
        .header("content-type", "text/plain")
        .body(job_json("j1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.render_depth().await, 0, "nothing invalid was published");
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mailpipe_ingest_rejections_total{reason=\"to\"}"),
        "{metrics}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn tokens_are_required_rotated_tokens_work_and_ops_routes_stay_open() {
    let app = TestApp::spawn("ing-auth").await;
    let url = format!("{}/v1/jobs", app.base);
    let r = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(job_json("a1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let json: Value = r.json().await.unwrap();
    assert!(json["error"].as_str().unwrap().contains("token"), "{json}");
    let r = app
        .client
        .post(&url)
        .bearer_auth("first-token-012345678X")
        .body(job_json("a1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .get(format!("{}/v1/jobs/a1", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "status routes need a token too");
    assert_eq!(app.render_depth().await, 0);

    let r = app
        .client
        .post(&url)
        .bearer_auth(ROTATED_TOKEN)
        .header("content-type", "application/json")
        .body(job_json("a1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "the second configured token works");

    for open in ["/metrics", "/healthz", "/readyz", "/v1/openapi.yaml"] {
        let r = app
            .client
            .get(format!("{}{open}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mailpipe_ingest_http_request_duration_seconds"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/v1/jobs\""), "{metrics}");
    app.cleanup().await;
}

#[tokio::test]
async fn the_same_id_twice_is_published_once_even_across_a_restart() {
    let app = TestApp::spawn("ing-dup").await;
    let (s1, _) = app.post_job(&job_json("once")).await;
    let (s2, json) = app.post_job(&job_json("once")).await;
    assert_eq!((s1, s2), (202, 200), "{json}");
    assert_eq!(json["duplicate"], true);
    assert_eq!(json["status"], "accepted");

    // A new process learns the accepted id from the events stream.
    let (broker, dir, config) = app.stop().await;
    let app = TestApp::spawn_with(broker, dir, config).await;
    let (s3, json) = app.post_job(&job_json("once")).await;
    assert_eq!(s3, 200, "{json}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.render_depth().await, 1, "published exactly once");
    app.cleanup().await;
}

fn batch_lines(bad: &[usize], n: usize) -> String {
    (1..=n)
        .map(|i| {
            if bad.contains(&i) {
                format!(r#"{{"id":"b-{i}","template":"invoice","to":["not-an-address"]}}"#)
            } else {
                job_json(&format!("b-{i}"))
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_batch_with_bad_lines_is_refused_whole_unless_partial() {
    let app = TestApp::spawn("ing-batch").await;
    let body = batch_lines(&[2, 4], 6);
    let r = app
        .post("/v1/batches?batch=nov")
        .header("content-type", "application/x-ndjson")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let json: Value = r.json().await.unwrap();
    let lines: Vec<(u64, String)> = json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![(2, "to[0]".to_owned()), (4, "to[0]".to_owned())],
        "{json}"
    );
    assert_eq!(json["rejected"], 2);
    assert_eq!(
        app.render_depth().await,
        0,
        "all or nothing: nothing published"
    );

    let r = app
        .post("/v1/batches?batch=nov&partial=true")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let json: Value = r.json().await.unwrap();
    assert_eq!(
        (
            json["accepted"].as_u64(),
            json["rejected"].as_u64(),
            json["lines"].as_u64()
        ),
        (Some(4), Some(2), Some(6)),
        "{json}"
    );
    assert_eq!(json["errors"].as_array().unwrap().len(), 2);
    assert_eq!(app.render_depth().await, 4);
    let status = app
        .eventually("/v1/batches/nov", |b| b["counts"]["accepted"] == 4)
        .await;
    assert_eq!(status["jobs"], 4);

    // The same upload again: every good line is a duplicate now.
    let r = app
        .post("/v1/batches?batch=nov&partial=true")
        .header("content-type", "application/x-ndjson")
        .body(batch_lines(&[], 6))
        .send()
        .await
        .unwrap();
    let json: Value = r.json().await.unwrap();
    assert_eq!(
        (json["accepted"].as_u64(), json["duplicates"].as_u64()),
        (Some(2), Some(4)),
        "{json}"
    );
    assert_eq!(app.render_depth().await, 6);
    app.cleanup().await;
}

#[tokio::test]
async fn a_csv_batch_follows_the_column_convention() {
    let app = TestApp::spawn("ing-csv").await;
    let csv = "id,to,to_name,template,attachment_path,data.invoice_number,data.due_date,data.currency,data.customer.name,data.items.0.description,data.items.0.quantity:number,data.items.0.unit_price:number\n\
               c-1,ann@example.com,Ann Example,invoice,2026/inv-1.pdf,INV-1,2026-12-15,EUR,Ann Example,Consulting,2,45.00\n\
               c-2,bob@example.com,,invoice,,INV-2,2026-12-15,EUR,Bob Example,Widget,3,1.50\n";
    let r = app
        .post("/v1/batches?batch=csv-1")
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let json: Value = r.json().await.unwrap();
    assert_eq!(json["accepted"], 2, "{json}");
    let msg = app
        .broker
        .get(&app.render_queue(), Duration::from_secs(5))
        .await
        .unwrap();
    let job = Job::from_queue(&msg.delivery.data).unwrap();
    assert_eq!(job.to[0].name.as_deref(), Some("Ann Example"));
    assert_eq!(job.data["items"][0]["description"], "Consulting");
    assert_eq!(job.data["items"][0]["quantity"], 2);
    assert_eq!(job.data["customer"]["name"], "Ann Example");
    assert_eq!(job.batch.as_ref().map(|b| b.as_str()), Some("csv-1"));

    let r = app
        .post("/v1/batches")
        .header("content-type", "text/csv")
        .body("id,colour\nx,red\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let json: Value = r.json().await.unwrap();
    assert_eq!(json["field"], "colour", "{json}");
    let r = app
        .post("/v1/batches")
        .header("content-type", "application/pdf")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    app.cleanup().await;
}

#[tokio::test]
async fn an_oversize_batch_is_refused_and_publishes_nothing() {
    let app = TestApp::spawn("ing-bigbatch").await;
    // 8 MiB limit in tests; send ~9 MiB of valid lines as a stream without Content-Length.
    let line = job_json("x");
    let n = 9 * 1024 * 1024 / line.len() + 1;
    let chunks: Vec<Result<String, std::io::Error>> = (0..n)
        .map(|i| Ok(format!("{}\n", job_json(&format!("big-{i}")))))
        .collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let r = app
        .post("/v1/batches?partial=true")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let json: Value = r.json().await.unwrap();
    assert_eq!(json["field"], "body", "{json}");
    assert_eq!(app.render_depth().await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn a_job_that_would_not_render_is_refused_before_202_naming_the_variable() {
    let app = TestApp::spawn("ing-render").await;
    // The data says `invoice_numbr`; the template reads `invoice_number`.
    let misspelled = job_json("r-1").replace("invoice_number", "invoice_numbr");
    let (status, json) = app.post_job(&misspelled).await;
    assert_eq!(status, 422, "{json}");
    assert_eq!(json["field"], "data.invoice_number", "{json}");
    let error = json["error"].as_str().unwrap();
    assert!(
        error.contains("undefined variable `data.invoice_number` in invoice/subject.txt line 1"),
        "{json}"
    );

    // A misspelled variable inside a filter is named too.
    let misspelled = job_json("r-1b").replace("unit_price", "unit_prize");
    let (status, json) = app.post_job(&misspelled).await;
    assert_eq!(status, 422, "{json}");
    let error = json["error"].as_str().unwrap();
    assert!(
        error.contains("undefined variable `") && error.contains("item.unit_price"),
        "the error should name item.unit_price: {json}"
    );

    // Per line in a JSONL batch...
    let body = format!(
        "{}\n{}\n{}\n",
        job_json("r-2"),
        job_json("r-3").replace("\"customer\"", "\"client\""),
        job_json("r-4")
    );
    let r = app
        .post("/v1/batches?batch=render-1")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let json: Value = r.json().await.unwrap();
    assert_eq!(json["errors"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["errors"][0]["line"], 2, "{json}");
    assert_eq!(json["errors"][0]["field"], "data.customer.name", "{json}");

    // ...and in a CSV batch (a misspelled column).
    let csv = "id,to,template,data.invoice_numbr,data.due_date,data.currency,data.customer.name,data.items.0.description,data.items.0.quantity:number,data.items.0.unit_price:number\n\
               r-5,ann@example.com,invoice,INV-5,2026-12-15,EUR,Ann,Support,1,12.50\n";
    let r = app
        .post("/v1/batches?batch=render-2")
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let json: Value = r.json().await.unwrap();
    assert_eq!(
        (&json["errors"][0]["line"], &json["errors"][0]["field"]),
        (&Value::from(2), &Value::from("data.invoice_number")),
        "{json}"
    );
    assert_eq!(app.render_depth().await, 0, "nothing was published");
    app.cleanup().await;
}

#[tokio::test]
async fn four_megabytes_of_garbage_get_a_small_answer() {
    let app = TestApp::spawn("ing-garbage").await;
    let body = "x\n".repeat(2 * 1024 * 1024);
    let r = app
        .post("/v1/batches")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(text.len() < 32 * 1024, "a {} byte answer", text.len());
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["rejected"], 2 * 1024 * 1024, "{json}");
    assert_eq!(json["errors"].as_array().unwrap().len(), 100);
    assert_eq!(json["errors"][99]["line"], 100);
    assert_eq!(json["error_counts"]["malformed"], 2 * 1024 * 1024, "{json}");
    app.cleanup().await;
}

#[tokio::test]
async fn requests_are_parsed_exactly() {
    let app = TestApp::spawn("ing-parse").await;
    let job = job_json("p-1");
    // Bytes after the object, and a second object, are refused.
    for body in [format!("{job}xyz"), format!("{job} {job}")] {
        let (status, json) = app.post_job(&body).await;
        assert_eq!(status, 400, "{body}: {json}");
        assert_eq!(json["field"], "job", "{json}");
    }
    // Unknown keys in a mailbox object.
    let typo = job.replace(
        r#""to":["ann@example.com"]"#,
        r#""to":[{"name":"Ann","address":"ann@example.com","adress":"x@example.com"}]"#,
    );
    let (status, json) = app.post_job(&typo).await;
    assert_eq!(
        (status, json["field"].as_str()),
        (422, Some("to[0]")),
        "{json}"
    );
    // `./x` is refused at the edge, as render would refuse it.
    let dot = job.replace(
        r#""data""#,
        r#""attachments":[{"filename":"a.pdf","path":"./2026/inv-1.pdf"}],"data""#,
    );
    let (status, json) = app.post_job(&dot).await;
    assert_eq!(status, 422, "{json}");
    assert!(
        json["field"]
            .as_str()
            .unwrap()
            .starts_with("attachments[0]"),
        "{json}"
    );
    // Content-Type: missing or not exactly application/json → 415; parameters are fine.
    for ct in [
        None,
        Some("text/json"),
        Some("application/jsonx"),
        Some("application/x-json"),
    ] {
        let mut r = app.post("/v1/jobs").body(job.clone());
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 415, "{ct:?}");
    }
    let r = app
        .post("/v1/batches")
        .body(job.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415, "a batch without Content-Type");
    assert_eq!(app.render_depth().await, 0);
    // The scheme name is case-insensitive.
    let r = app
        .client
        .post(format!("{}/v1/jobs", app.base))
        .header("authorization", format!("BEARER {}", support::TOKEN))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(job)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    app.cleanup().await;
}
