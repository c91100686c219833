//! Control characters are refused at the edge with a 400 naming the field, on every query
//! parameter and body member that would reach the database; no answer carries the
//! database's own error text.

use std::time::Duration;

use serde_json::Value;

use super::{bounded, spawn_with_callbacks};

/// What the database says when NUL reaches it; never in an answer.
const DATABASE_TEXT: [&str; 4] = ["0x00", "UTF8", "invalid byte sequence", "SQLSTATE"];

#[tokio::test]
async fn control_characters_are_refused_naming_the_field() {
    bounded("control characters", Duration::from_secs(120), async {
        let app = spawn_with_callbacks("sec-input", &["127.0.0.1:9"], |_| {}).await;
        let gets = [
            ("/v1/jobs?recipient=x%00y", "recipient"),
            ("/v1/jobs?recipient=ann%40example.com%0D%0A", "recipient"),
            ("/v1/jobs?batch=nov&after=a%00b", "after"),
            ("/v1/suppressions?after=a%00b", "after"),
            ("/v1/suppressions?address=a%01b", "address"),
            ("/v1/suppressions?source=bounce%00", "source"),
        ];
        for (path, field) in gets {
            let r = app.get(path).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert_eq!(status, 400, "{path}: {text}");
            let json: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(json["field"], field, "{path}: {text}");
            for t in DATABASE_TEXT {
                assert!(
                    !text.contains(t),
                    "{path}: database text in the answer: {text}"
                );
            }
        }
        let posts = [
            "/v1/jobs?callback_url=http%3A%2F%2F127.0.0.1%2Fa%00b",
            "/v1/batches?batch=nov&callback_url=http%3A%2F%2F127.0.0.1%2Fa%00b",
        ];
        for path in posts {
            let r = app
                .post(path)
                .header("content-type", "application/json")
                .body(crate::support::job_json("n-1"))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let json: Value = r.json().await.unwrap();
            assert_eq!(status, 400, "{path}: {json}");
            assert_eq!(json["field"], "callback_url", "{path}: {json}");
        }
        let r = app
            .client
            .put(format!("{}/v1/suppressions/ann@example.com", app.base))
            .bearer_auth(crate::support::TOKEN)
            .json(&serde_json::json!({"reason": "left\u{0}the company"}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let json: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{json}");
        assert_eq!(json["field"], "reason", "{json}");
        // Nothing of it reached the database: the list is still empty.
        let list = app.get_json("/v1/suppressions").await;
        assert_eq!(list["suppressions"], serde_json::json!([]), "{list}");
        app.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn a_413_names_the_limit_that_applied() {
    bounded("413 names its limit", Duration::from_secs(120), async {
        let app = spawn_with_callbacks("sec-413", &["127.0.0.1:9"], |s| {
            s.limits.max_job_bytes = 8 * 1024;
        })
        .await;
        let big = crate::support::job_json("big-1")
            .replace(r#""INV-1""#, &format!("\"{}\"", "x".repeat(20 * 1024)));
        let (status, json) = app.post_job(&big).await;
        assert_eq!(status, 413, "{json}");
        let error = json["error"].as_str().unwrap();
        assert!(error.contains("ingest.limits.max_job_bytes"), "{error}");

        let r = app
            .client
            .put(format!("{}/v1/suppressions/ann@example.com", app.base))
            .bearer_auth(crate::support::TOKEN)
            .json(&serde_json::json!({"reason": "x".repeat(5000)}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let json: Value = r.json().await.unwrap();
        assert_eq!(status, 413, "{json}");
        let error = json["error"].as_str().unwrap();
        assert!(
            !error.contains("ingest.max_request_bytes") && error.contains("suppression"),
            "{error}"
        );
        app.cleanup().await;
    })
    .await;
}
