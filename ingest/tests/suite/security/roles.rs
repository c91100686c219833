//! Token roles: every route × every role answers as SECURITY.md says (a table that must
//! name every route the router has), and a `submit` token sees, controls and adds to only
//! the batches created with its owner label.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use mailpipe_common::config::SecretRef;
use mailpipe_ingest::api::{Role, api_routes};
use mailpipe_ingest::tokens::TokenEntry;
use serde_json::Value;

use super::{bounded, callback_of, spawn_with_callbacks};
use crate::support::{TestApp, job_json};

const ERP: &str = "erp-submit-token-0123456789";
const HR: &str = "hr-submit-token-0123456789";
const READ: &str = "read-token-0123456789";
const OPERATE: &str = "operate-token-0123456789";

/// The roles in the order of a row's expected statuses, with their tokens.
const ROLES: [(&str, &str); 3] = [("submit", ERP), ("read", READ), ("operate", OPERATE)];

const CALLBACK: &str = "http://127.0.0.1:9/erp";

/// `tokens` as `api_tokens` entries, each in a file of `dir`.
fn entries(dir: &Path, tokens: &[(&str, Role, Option<&str>)]) -> Vec<TokenEntry> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, (token, role, owner))| {
            let file = dir.join(format!("token-{i}"));
            std::fs::write(&file, token).unwrap();
            TokenEntry::from(SecretRef {
                env: None,
                file: Some(file),
            })
            .with_role(*role, *owner)
        })
        .collect()
}

async fn spawn(name: &str, tokens_dir: &Path) -> TestApp {
    let tokens = entries(
        tokens_dir,
        &[
            (ERP, Role::Submit, Some("erp")),
            (HR, Role::Submit, Some("hr")),
            (READ, Role::Read, None),
            (OPERATE, Role::Operate, None),
        ],
    );
    spawn_with_callbacks(name, &["127.0.0.1:9"], move |s| s.api_tokens = tokens).await
}

fn in_batch(id: &str, batch: &str) -> String {
    job_json(id).replacen('{', &format!(r#"{{"batch":"{batch}","#), 1)
}

/// One request: method, path and query, and a body with its media type.
struct Request {
    method: reqwest::Method,
    path: String,
    body: Option<(&'static str, String)>,
}

async fn send(app: &TestApp, token: Option<&str>, r: &Request) -> (u16, Value) {
    let mut req = app
        .client
        .request(r.method.clone(), format!("{}{}", app.base, r.path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some((media, body)) = &r.body {
        req = req.header("content-type", *media).body(body.clone());
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn request(method: &str, path: String, body: Option<(&'static str, String)>) -> Request {
    Request {
        method: method.parse().unwrap(),
        path,
        body,
    }
}

/// A route (as `api_routes` names it), the status each role gets (submit, read,
/// operate), and the request a role sends (fresh ids per role where it creates).
struct Row {
    method: &'static str,
    route: &'static str,
    expect: [u16; 3],
    request: fn(&str) -> Request,
}

fn table() -> Vec<Row> {
    vec![
        Row {
            method: "POST",
            route: "/v1/jobs",
            expect: [202, 403, 202],
            request: |role| {
                let body = in_batch(&format!("post-{role}"), "erp-b");
                request("POST", "/v1/jobs".into(), Some(("application/json", body)))
            },
        },
        Row {
            method: "GET",
            route: "/v1/jobs",
            expect: [200, 200, 200],
            request: |_| request("GET", "/v1/jobs".into(), None),
        },
        Row {
            method: "GET",
            route: "/v1/jobs/{id}",
            expect: [200, 200, 200],
            request: |_| request("GET", "/v1/jobs/seed-1".into(), None),
        },
        Row {
            method: "POST",
            route: "/v1/batches",
            expect: [202, 403, 202],
            request: |role| {
                let body = format!("{}\n", job_json(&format!("upload-{role}")));
                request(
                    "POST",
                    "/v1/batches?batch=erp-b".into(),
                    Some(("application/x-ndjson", body)),
                )
            },
        },
        Row {
            method: "GET",
            route: "/v1/batches",
            expect: [200, 200, 200],
            request: |_| request("GET", "/v1/batches".into(), None),
        },
        Row {
            method: "GET",
            route: "/v1/batches/{id}",
            expect: [200, 200, 200],
            request: |_| request("GET", "/v1/batches/erp-b".into(), None),
        },
        Row {
            method: "POST",
            route: "/v1/batches/{id}/pause",
            expect: [200, 403, 200],
            request: |_| request("POST", "/v1/batches/erp-b/pause".into(), None),
        },
        Row {
            method: "POST",
            route: "/v1/batches/{id}/resume",
            expect: [200, 403, 200],
            request: |_| request("POST", "/v1/batches/erp-b/resume".into(), None),
        },
        Row {
            method: "POST",
            route: "/v1/batches/{id}/cancel",
            expect: [200, 403, 200],
            request: |_| request("POST", "/v1/batches/erp-c/cancel".into(), None),
        },
        Row {
            method: "GET",
            route: "/v1/suppressions",
            expect: [403, 200, 200],
            request: |_| request("GET", "/v1/suppressions".into(), None),
        },
        Row {
            method: "PUT",
            route: "/v1/suppressions/{address}",
            expect: [403, 403, 201],
            request: |role| {
                request(
                    "PUT",
                    format!("/v1/suppressions/x-{role}@example.com"),
                    Some(("application/json", r#"{"reason":"test"}"#.into())),
                )
            },
        },
        Row {
            method: "DELETE",
            route: "/v1/suppressions/{address}",
            expect: [403, 403, 204],
            request: |role| {
                request(
                    "DELETE",
                    format!("/v1/suppressions/x-{role}@example.com"),
                    None,
                )
            },
        },
        Row {
            method: "GET",
            route: "/v1/openapi.yaml",
            expect: [200, 200, 200],
            request: |_| request("GET", "/v1/openapi.yaml".into(), None),
        },
    ]
}

#[tokio::test]
async fn every_route_answers_each_role_as_documented() {
    bounded("roles × routes", Duration::from_secs(180), async {
        let tokens = tempfile::tempdir().unwrap();
        let app = spawn("sec-roles", tokens.path()).await;
        let table = table();
        let described: BTreeSet<(String, String)> = table
            .iter()
            .map(|r| (r.method.to_owned(), r.route.to_owned()))
            .collect();
        let routed: BTreeSet<(String, String)> = api_routes()
            .into_iter()
            .map(|(m, p, _, _)| (m.to_string(), p.to_owned()))
            .collect();
        assert_eq!(described, routed, "the table must name every route once");

        for (id, batch) in [("seed-1", "erp-b"), ("seed-c", "erp-c")] {
            let seed = request(
                "POST",
                "/v1/jobs".into(),
                Some(("application/json", in_batch(id, batch))),
            );
            assert_eq!(send(&app, Some(ERP), &seed).await.0, 202, "seeding {id}");
        }

        for row in &table {
            let needs_token = api_routes()
                .into_iter()
                .find(|(m, p, _, _)| m.as_str() == row.method && *p == row.route)
                .and_then(|(_, _, _, action)| action)
                .is_some();
            let (status, body) = send(&app, None, &(row.request)("anonymous")).await;
            let want = if needs_token { 401 } else { 200 };
            assert_eq!(
                status, want,
                "{} {} without a token: {body}",
                row.method, row.route
            );
            for ((role, token), want) in ROLES.iter().zip(row.expect) {
                let (status, body) = send(&app, Some(token), &(row.request)(role)).await;
                assert_eq!(
                    status, want,
                    "{} {} as {role}: {body}",
                    row.method, row.route
                );
                if status == 403 {
                    let error = body["error"].as_str().unwrap_or_default();
                    assert!(
                        error.contains(&format!("role is `{role}`")) && error.contains("needs"),
                        "a 403 names the role it has and the one needed: {error}"
                    );
                }
            }
        }
        app.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn a_submit_token_sees_and_controls_only_its_own_batches() {
    bounded("submit confinement", Duration::from_secs(180), async {
        let tokens = tempfile::tempdir().unwrap();
        let app = spawn("sec-owner", tokens.path()).await;
        let job = |id: &str, batch: &str| {
            request(
                "POST",
                "/v1/jobs".into(),
                Some(("application/json", in_batch(id, batch))),
            )
        };
        let get = |path: &str| request("GET", path.into(), None);
        let erp_upload = request(
            "POST",
            format!("/v1/batches?batch=erp-b&callback_url={CALLBACK}"),
            Some(("application/x-ndjson", format!("{}\n", job_json("erp-1")))),
        );
        assert_eq!(send(&app, Some(ERP), &erp_upload).await.0, 202);
        assert_eq!(send(&app, Some(HR), &job("hr-1", "hr-b")).await.0, 202);
        let owner: Option<String> =
            sqlx::query_scalar("SELECT owner FROM batches WHERE id = 'erp-b'")
                .fetch_one(app.broker.store().pool())
                .await
                .unwrap();
        assert_eq!(
            owner.as_deref(),
            Some("erp"),
            "the creator's owner label is recorded"
        );

        // Another owner's batch and its jobs are answered as unknown.
        for path in ["/v1/batches/erp-b", "/v1/jobs/erp-1"] {
            assert_eq!(send(&app, Some(HR), &get(path)).await.0, 404, "{path}");
            assert_eq!(send(&app, Some(ERP), &get(path)).await.0, 200, "{path}");
            assert_eq!(send(&app, Some(READ), &get(path)).await.0, 200, "{path}");
        }
        for control in ["pause", "resume", "cancel"] {
            let r = request("POST", format!("/v1/batches/erp-b/{control}"), None);
            assert_eq!(send(&app, Some(HR), &r).await.0, 404, "{control}");
        }
        let control: String = sqlx::query_scalar("SELECT control FROM batches WHERE id = 'erp-b'")
            .fetch_one(app.broker.store().pool())
            .await
            .unwrap();
        assert_eq!(
            control, "running",
            "another owner's control changed the batch"
        );

        // Lists hold its own batches' jobs only.
        let ids = |body: &Value| -> Vec<String> {
            body["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned())
                .collect()
        };
        let (_, hr_list) = send(&app, Some(HR), &get("/v1/jobs")).await;
        assert_eq!(ids(&hr_list), ["hr-1"]);
        let (_, erp_list) = send(&app, Some(ERP), &get("/v1/jobs?batch=hr-b")).await;
        assert!(ids(&erp_list).is_empty(), "{erp_list}");
        let (_, all) = send(&app, Some(READ), &get("/v1/jobs")).await;
        assert_eq!(ids(&all), ["erp-1", "hr-1"]);
        // And the batch list its own batches only.
        let batches = |body: &Value| -> Vec<String> {
            let mut b: Vec<String> = body["batches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["batch"].as_str().unwrap().to_owned())
                .collect();
            b.sort();
            b
        };
        let (_, hr_batches) = send(&app, Some(HR), &get("/v1/batches")).await;
        assert_eq!(batches(&hr_batches), ["hr-b"], "{hr_batches}");
        let (_, every) = send(&app, Some(READ), &get("/v1/batches")).await;
        assert_eq!(batches(&every), ["erp-b", "hr-b"], "{every}");

        // Adding to another owner's batch is refused, and writes nothing: no job, no
        // re-pointed callback.
        let (status, body) = send(&app, Some(HR), &job("hr-2", "erp-b")).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["field"], "batch");
        let hijack = request(
            "POST",
            "/v1/batches?batch=erp-b&callback_url=http://127.0.0.1:9/hr".into(),
            Some(("application/x-ndjson", format!("{}\n", job_json("hr-3")))),
        );
        assert_eq!(send(&app, Some(HR), &hijack).await.0, 403);
        for id in ["hr-2", "hr-3"] {
            let path = format!("/v1/jobs/{id}");
            assert_eq!(send(&app, Some(OPERATE), &get(&path)).await.0, 404, "{id}");
        }
        assert_eq!(
            callback_of(&app, "erp-b").await,
            Some(Some(CALLBACK.into()))
        );

        // A submit token's job belongs to a batch (where its owner is recorded).
        let (status, body) = send(
            &app,
            Some(HR),
            &request(
                "POST",
                "/v1/jobs".into(),
                Some(("application/json", job_json("hr-4"))),
            ),
        )
        .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (422, Some("batch")),
            "{body}"
        );

        // An operate token may add to any batch; the batch keeps its owner.
        assert_eq!(
            send(&app, Some(OPERATE), &job("ops-1", "erp-b")).await.0,
            202
        );
        let owner: Option<String> =
            sqlx::query_scalar("SELECT owner FROM batches WHERE id = 'erp-b'")
                .fetch_one(app.broker.store().pool())
                .await
                .unwrap();
        assert_eq!(owner.as_deref(), Some("erp"));
        app.cleanup().await;
    })
    .await;
}
