//! The suppression list from ingest's side: the API (`GET/PUT/DELETE /v1/suppressions`),
//! the `suppress` CLI with the commands `--help` shows, the `refuse` policy at submission,
//! and `bounced` / `suppressed` jobs in batch status and job queries.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::process::Command;

use mailpipe_common::contract::{DeliveryEvent, EventKind};
use mailpipe_common::domain::{BatchId, JobId};
use mailpipe_ingest::suppressed::SuppressedPolicy;
use support::{INVOICE_DATA, TestApp, fixture_dir, settings_for, write_jsonl};

fn job_to(id: &str, batch: &str, to: &str) -> String {
    format!(
        r#"{{"id":"{id}","batch":"{batch}","template":"invoice","to":["ok@example.com",{{"address":"{to}"}}],"data":{INVOICE_DATA}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_adds_lists_pages_and_removes_suppressions() {
    let app = TestApp::spawn("supp-api").await;
    let put = |address: &str, body: &str| {
        app.client
            .put(format!("{}/v1/suppressions/{address}", app.base))
            .bearer_auth(support::TOKEN)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let r = put("Ann@Example.com", r#"{"reason":"left the company"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let entry: serde_json::Value = r.json().await.unwrap();
    assert_eq!(entry["address"], "ann@example.com");
    assert_eq!(entry["source"], "operator");
    assert_eq!(entry["created_by"], "api");
    let r = put("ann@example.com", r#"{"reason":"asked to stop"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for a in ["bob@example.com", "carl@example.org"] {
        assert_eq!(put(a, r#"{"reason":"test"}"#).await.unwrap().status(), 201);
    }
    // Bad input names what is wrong.
    let r = put("not-an-address", r#"{"reason":"x"}"#).await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["field"],
        "address"
    );
    let r = put("dan@example.com", r#"{"why":"x"}"#).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["field"],
        "reason"
    );
    let r = put("dan@example.com", r#"{"reason":"  "}"#).await.unwrap();
    assert_eq!(r.status(), 422);

    let page = app.get_json("/v1/suppressions?limit=2").await;
    let addresses: Vec<&str> = page["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap())
        .collect();
    assert_eq!(addresses, ["ann@example.com", "bob@example.com"]);
    assert_eq!(page["suppressions"][0]["reason"], "asked to stop");
    let next = app
        .get_json(&format!(
            "/v1/suppressions?limit=2&after={}",
            page["next_after"].as_str().unwrap()
        ))
        .await;
    assert_eq!(next["suppressions"][0]["address"], "carl@example.org");
    assert!(next["next_after"].is_null());
    let org = app
        .get_json("/v1/suppressions?address=%40EXAMPLE.ORG")
        .await;
    assert_eq!(org["suppressions"].as_array().unwrap().len(), 1);
    let r = app
        .get("/v1/suppressions?source=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .get(format!("{}/v1/suppressions", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "same auth as the rest of the API");

    let delete = |address: &str| {
        app.client
            .delete(format!("{}/v1/suppressions/{address}", app.base))
            .bearer_auth(support::TOKEN)
            .send()
    };
    assert_eq!(delete("ANN@example.com").await.unwrap().status(), 204);
    let r = delete("ann@example.com").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["field"],
        "address"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_refuse_policy_a_job_to_a_suppressed_address_is_refused_naming_the_field() {
    let broker = mailpipe_common::testkit::TestBroker::start("supp-refuse").await;
    let dir = fixture_dir();
    let mut ingest = settings_for(dir.path());
    ingest.suppressed_recipients = SuppressedPolicy::Refuse;
    let config = mailpipe_ingest::Config {
        rabbitmq: broker.settings.clone(),
        telemetry: Default::default(),
        database: broker.database.clone(),
        ingest,
        pool: Ok(support::test_pool()),
    };
    let app = TestApp::spawn_with(broker, dir, config).await;
    let store = {
        let s =
            mailpipe_common::store::Store::new(&app.config.database, Default::default()).unwrap();
        s.suppress(&mailpipe_common::store::NewSuppression::by_operator(
            mailpipe_common::domain::EmailAddress::parse("dead@example.com").unwrap(),
            "hard bounce",
            None,
        ))
        .await
        .unwrap();
        s
    };
    let (status, body) = app
        .post_job(&job_to("r-1", "refuse-b", "Dead@Example.com"))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "to[1].address");
    assert!(
        body["error"].as_str().unwrap().contains("Dead@Example.com"),
        "{body}"
    );
    let (status, _) = app
        .post_job(&job_to("r-2", "refuse-b", "alive@example.com"))
        .await;
    assert_eq!(status, 202);

    // A batch: all or nothing by default, the suppressed line named.
    let path = write_jsonl(
        app.dir.path(),
        "b.jsonl",
        [
            job_to("r-3", "refuse-b", "x@example.com"),
            job_to("r-4", "refuse-b", "dead@example.com"),
        ],
    );
    let r = app
        .post("/v1/batches?batch=refuse-b")
        .header("content-type", "application/x-ndjson")
        .body(std::fs::read(&path).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let report: serde_json::Value = r.json().await.unwrap();
    assert_eq!(report["errors"][0]["line"], 2, "{report}");
    assert_eq!(report["errors"][0]["field"], "to[1].address", "{report}");
    assert_eq!(app.render_depth().await, 1, "only r-2 was published");
    store.close().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_status_counts_bounced_and_suppressed_and_jobs_can_be_listed_by_them() {
    let app = TestApp::spawn("supp-status").await;
    let store =
        mailpipe_common::store::Store::new(&app.config.database, Default::default()).unwrap();
    let batch = BatchId::parse("st-b").unwrap();
    for (id, kind) in [
        ("s-1", EventKind::Delivered),
        ("s-2", EventKind::Bounced),
        ("s-3", EventKind::Suppressed),
    ] {
        let mut e = DeliveryEvent::new(
            JobId::parse(id).unwrap(),
            Some(batch.clone()),
            EventKind::Accepted,
        );
        store.record_event(&e).await.unwrap();
        e.kind = kind;
        e.at += chrono::Duration::seconds(1);
        store.record_event(&e).await.unwrap();
    }
    let report = app.get_json("/v1/batches/st-b").await;
    assert_eq!(report["counts"]["bounced"], 1, "{report}");
    assert_eq!(report["counts"]["suppressed"], 1, "{report}");
    assert_eq!(report["counts"]["delivered"], 1, "{report}");
    assert_eq!(report["finished"], true, "{report}");
    let page = app.get_json("/v1/jobs?state=bounced").await;
    assert_eq!(page["jobs"][0]["id"], "s-2", "{page}");
    let page = app.get_json("/v1/jobs?state=suppressed").await;
    assert_eq!(page["jobs"][0]["id"], "s-3", "{page}");
    store.close().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suppress_commands_shown_in_help_run_as_shown() {
    mailpipe_common::testkit::ensure_test_database().await;
    let database = mailpipe_common::testkit::database_settings("ing-suppress");
    let store = mailpipe_common::store::Store::new(&database, Default::default()).unwrap();
    store
        .prepare(Some(std::time::Duration::from_secs(30)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailpipe.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = {:?}\nschema = {:?}\n",
            database.url, database.schema
        ),
    )
    .unwrap();
    let ingest = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-ingest"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Every `suppress` line of --help, in its order, with this test's config.
    let (_, help, _) = ingest(&["--help"]);
    let shown: Vec<Vec<String>> = help
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("mailpipe-ingest") && l.contains(" suppress "))
        .map(|l| {
            let mut words = shell_words(l);
            words.remove(0);
            if words.first().map(String::as_str) == Some("--config") {
                words.drain(..2);
            }
            words
        })
        .collect();
    assert_eq!(shown.len(), 4, "{help}");
    let run = |words: &Vec<String>| ingest(&words.iter().map(String::as_str).collect::<Vec<_>>());
    let (code, out, err) = run(&shown[0]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), "no suppressed addresses"),
        "{err}"
    );
    let (code, out, err) = run(&shown[1]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ann@example.com: suppressed"), "{out}");
    let (code, out, _) = run(&shown[2]);
    assert_eq!(code, Some(0));
    let entry: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(entry["address"], "ann@example.com");
    assert_eq!(entry["reason"], "left the company");
    let (code, out, _) = ingest(&["suppress", "list", "--address", "@EXAMPLE.com"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("ann@example.com") && out.contains("operator"),
        "{out}"
    );
    let (code, out, err) = run(&shown[3]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("removed"), "{out}");
    let (code, _, err) = run(&shown[3]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not on the suppression list"), "{err}");
    let (code, _, err) = ingest(&["suppress", "add", "bad address", "--reason", "x"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("address"), "{err}");
    mailpipe_common::testkit::drop_schema(&store, &database.schema).await;
}

/// Splits a help line into words, honouring double quotes and dropping a `# comment`.
fn shell_words(line: &str) -> Vec<String> {
    let line = line.split("  #").next().unwrap_or(line);
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}
