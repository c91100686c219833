//! A refused submission changes nothing: neither a bad body (4xx) nor a conflicting id
//! (409) may re-point a batch's callback, or create the batch's row.

use std::time::Duration;

use super::{bounded, callback_of, spawn_with_callbacks};
use crate::support::{TestApp, job_json};

const FIRST: &str = "http://127.0.0.1:9/first";
const ATTACKER: &str = "http://127.0.0.1:9/attacker";

async fn post_batch(app: &TestApp, batch: &str, callback: &str, body: &str) -> u16 {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/v1/batches", app.base),
        [("batch", batch), ("callback_url", callback)],
    )
    .unwrap();
    app.client
        .post(url)
        .bearer_auth(crate::support::TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn post_job(app: &TestApp, callback: &str, body: String) -> u16 {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/v1/jobs", app.base),
        [("callback_url", callback)],
    )
    .unwrap();
    app.client
        .post(url)
        .bearer_auth(crate::support::TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn in_batch(id: &str, batch: &str, invoice: &str) -> String {
    job_json(id)
        .replacen('{', &format!(r#"{{"batch":"{batch}","#), 1)
        .replace("INV-1", invoice)
}

#[tokio::test]
async fn a_refused_batch_upload_leaves_the_batch_callback_as_it_was() {
    bounded("refused batch upload", Duration::from_secs(120), async {
        let app = spawn_with_callbacks("sec-cb-batch", &["127.0.0.1:9"], |_| {}).await;
        let good = format!("{}\n", job_json("b-1"));
        assert_eq!(post_batch(&app, "victim", FIRST, &good).await, 202);
        assert_eq!(callback_of(&app, "victim").await, Some(Some(FIRST.into())));

        // Not JSON: 422, nothing published, and nothing re-pointed.
        assert_eq!(
            post_batch(&app, "victim", ATTACKER, "not json\n").await,
            422
        );
        // The same id with other content: 409.
        let other = format!("{}\n", job_json("b-1").replace("INV-1", "INV-2"));
        assert_eq!(post_batch(&app, "victim", ATTACKER, &other).await, 409);
        assert_eq!(
            callback_of(&app, "victim").await,
            Some(Some(FIRST.into())),
            "a refused upload re-pointed the batch's callback"
        );
        // A refused upload to a new batch does not create it either: neither a bad body
        // nor an id accepted before with other content (409).
        assert_eq!(post_batch(&app, "fresh", ATTACKER, "not json\n").await, 422);
        assert_eq!(callback_of(&app, "fresh").await, None);
        assert_eq!(post_batch(&app, "fresh", ATTACKER, &other).await, 409);
        assert_eq!(
            callback_of(&app, "fresh").await,
            None,
            "a 409 for a new batch created its row"
        );
        app.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn a_refused_job_leaves_its_batch_callback_as_it_was() {
    bounded("refused job", Duration::from_secs(120), async {
        let app = spawn_with_callbacks("sec-cb-job", &["127.0.0.1:9"], |_| {}).await;
        assert_eq!(
            post_job(&app, FIRST, in_batch("j-1", "victim", "INV-1")).await,
            202
        );
        assert_eq!(callback_of(&app, "victim").await, Some(Some(FIRST.into())));
        // The same id with other content: 409.
        assert_eq!(
            post_job(&app, ATTACKER, in_batch("j-1", "victim", "INV-2")).await,
            409
        );
        // A job that breaks a rule: 422.
        let bad = in_batch("j-2", "victim", "INV-3").replace("ann@example.com", "ann@");
        assert_eq!(post_job(&app, ATTACKER, bad).await, 422);
        assert_eq!(
            callback_of(&app, "victim").await,
            Some(Some(FIRST.into())),
            "a refused job re-pointed its batch's callback"
        );
        // A conflicting id naming a new batch leaves no row of that batch at all.
        assert_eq!(
            post_job(&app, ATTACKER, in_batch("j-1", "other", "INV-9")).await,
            409
        );
        assert_eq!(
            callback_of(&app, "other").await,
            None,
            "a refused job created its batch's row"
        );
        // A duplicate (200) is an accepted submission: it may set the callback.
        assert_eq!(
            post_job(&app, ATTACKER, in_batch("j-1", "victim", "INV-1")).await,
            200
        );
        assert_eq!(
            callback_of(&app, "victim").await,
            Some(Some(ATTACKER.into()))
        );
        app.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn a_callback_on_another_port_or_resolving_inward_is_refused_at_submission() {
    bounded(
        "callback checks at submission",
        Duration::from_secs(120),
        async {
            let app = spawn_with_callbacks(
                "sec-cb-submit",
                &["erp.example.com", "localhost:8443", "127.0.0.1:8443"],
                |s| s.webhooks.allow_http_loopback = false,
            )
            .await;
            let cases = [
                ("https://erp.example.com:25/x", "port 25"),
                ("https://erp.example.com:6379/x", "port 6379"),
                // An allowed name that resolves to loopback (the system's resolver).
                ("https://localhost:8443/x", "loopback"),
                ("https://127.0.0.1:8443/x", "loopback"),
            ];
            for (url, why) in cases {
                let (status, json) = {
                    let url = reqwest::Url::parse_with_params(
                        &format!("{}/v1/batches", app.base),
                        [("batch", "b-x"), ("callback_url", url)],
                    )
                    .unwrap();
                    let r = app
                        .client
                        .post(url)
                        .bearer_auth(crate::support::TOKEN)
                        .header("content-type", "application/x-ndjson")
                        .body(format!("{}\n", job_json("x-1")))
                        .send()
                        .await
                        .unwrap();
                    (
                        r.status().as_u16(),
                        r.json::<serde_json::Value>().await.unwrap(),
                    )
                };
                assert_eq!(status, 422, "{url}: {json}");
                assert_eq!(json["field"], "callback_url", "{url}: {json}");
                assert!(
                    json["error"].as_str().unwrap().contains(why),
                    "{url}: {json}"
                );
            }
            assert_eq!(
                callback_of(&app, "b-x").await,
                None,
                "a refused callback wrote something"
            );
            app.cleanup().await;
        },
    )
    .await;
}
