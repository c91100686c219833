//! The HTTP side: the Entra ID token endpoint's answers and errors, and the inspection API
//! (/api/*, /metrics, /healthz).
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use serde_json::Value;

const CONFIG: &str = r#"
[[tenants]]
id = "contoso"
domains = ["contoso.example"]

[[tenants]]
id = "fabrikam"
domains = ["fabrikam.example"]

[[apps]]
tenant = "contoso"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "contoso-secret"
mailboxes = ["*"]
token_lifetime_secs = 1234

[[apps]]
tenant = "fabrikam"
client_id = "fab-app"
client_secret = "fab-secret"
mailboxes = ["*"]

[[mailboxes]]
address = "a@contoso.example"
tenant = "contoso"
"#;

async fn post_token(
    sim: &mailpipe_sim::RunningSim,
    tenant: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(sim.token_url(tenant))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn form<'a>(client_id: &'a str, secret: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", secret),
        ("scope", scope),
    ]
}

#[tokio::test]
async fn token_success_shape() {
    let sim = start(CONFIG).await;
    let (status, v) = post_token(&sim, "contoso", &form(CONTOSO_APP, CONTOSO_SECRET, SCOPE)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 1234);
    assert_eq!(v["ext_expires_in"], 1234);
    assert!(v["access_token"].as_str().unwrap().len() > 20);
    // The tenant may be given by one of its domains too.
    let (status, _) = post_token(
        &sim,
        "contoso.example",
        &form(CONTOSO_APP, CONTOSO_SECRET, SCOPE),
    )
    .await;
    assert_eq!(status, 200);
    // Two requests, two different tokens.
    assert_ne!(
        token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await,
        token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn token_errors_are_entra_shaped() {
    let sim = start(CONFIG).await;
    let check = |status: u16, v: &Value, want_status: u16, error: &str, code: u64| {
        assert_eq!(status, want_status, "{v}");
        assert_eq!(v["error"], error, "{v}");
        assert_eq!(v["error_codes"][0], code, "{v}");
        assert!(
            v["error_description"]
                .as_str()
                .unwrap()
                .starts_with(&format!("AADSTS{code}:")),
            "{v}"
        );
        assert!(
            v["trace_id"].is_string()
                && v["correlation_id"].is_string()
                && v["timestamp"].is_string(),
            "{v}"
        );
    };
    let (s, v) = post_token(&sim, "contoso", &form(CONTOSO_APP, "wrong", SCOPE)).await;
    check(s, &v, 401, "invalid_client", 7000215);
    let (s, v) = post_token(
        &sim,
        "contoso",
        &form(
            CONTOSO_APP,
            CONTOSO_SECRET,
            "https://management.azure.com/.default",
        ),
    )
    .await;
    check(s, &v, 400, "invalid_scope", 70011);
    let (s, v) = post_token(&sim, "contoso", &form("no-such-app", "x", SCOPE)).await;
    check(s, &v, 400, "unauthorized_client", 700016);
    // An app of another tenant is unknown in this one.
    let (s, v) = post_token(&sim, "contoso", &form("fab-app", "fab-secret", SCOPE)).await;
    check(s, &v, 400, "unauthorized_client", 700016);
    let (s, v) = post_token(
        &sim,
        "contoso",
        &[("grant_type", "password"), ("client_id", CONTOSO_APP)],
    )
    .await;
    check(s, &v, 400, "unsupported_grant_type", 70003);
    let (s, v) = post_token(&sim, "contoso", &[("client_id", CONTOSO_APP)]).await;
    check(s, &v, 400, "invalid_request", 900144);
    let (s, v) = post_token(&sim, "nowhere", &form(CONTOSO_APP, CONTOSO_SECRET, SCOPE)).await;
    check(s, &v, 400, "invalid_request", 90002);
    let metrics = sim.metrics_text();
    assert!(
        metrics.contains("mailpipe_sim_token_errors_total{error=\"invalid_client\"} 1"),
        "{metrics}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn inspection_api_reset_and_metrics() {
    let sim = start(CONFIG).await;
    let http = reqwest::Client::new();
    let base = sim.authority();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );

    let tok = token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    let mut s = Smtp::authed(&sim, "a@contoso.example", &tok).await;
    let body = message("a@contoso.example", "x@fabrikam.example", "api");
    s.send_mail("a@contoso.example", &["x@fabrikam.example"], &body)
        .await
        .assert(250, "2.0.0");
    s.cmd("MAIL FROM:<other@contoso.example>")
        .await
        .assert(550, "5.7.60");

    let msgs: Value = http
        .get(format!("{base}/api/messages?raw=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = &msgs[0];
    assert_eq!(m["mailbox"], "a@contoso.example");
    assert_eq!(m["mail_from"], "a@contoso.example");
    assert_eq!(m["rcpt_to"][0], "x@fabrikam.example");
    assert_eq!(m["size"], body.len());
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(m["raw_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, body.as_bytes());
    let without: Value = http
        .get(format!("{base}/api/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(without[0].get("raw_base64").is_none());
    let id = m["id"].as_str().unwrap();
    let raw2 = http
        .get(format!("{base}/api/messages/{id}/raw"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&raw2[..], body.as_bytes());

    let refusals: Value = http
        .get(format!("{base}/api/refusals"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(refusals[0]["code"], 550);
    assert_eq!(refusals[0]["enhanced"], "5.7.60");
    assert_eq!(refusals[0]["stage"], "mail_from");
    assert_eq!(refusals[0]["mailbox"], "a@contoso.example");

    let boxes: Value = http
        .get(format!("{base}/api/mailboxes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(boxes[0]["address"], "a@contoso.example");
    assert_eq!(boxes[0]["accepted"], 1);
    assert_eq!(boxes[0]["max_messages_in_window"], 1);
    assert_eq!(boxes[0]["current_connections"], 1);

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mailpipe_sim_messages_accepted_total{mailbox=\"a@contoso.example\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "mailpipe_sim_refusals_total{code=\"550\",enhanced=\"5.7.60\",stage=\"mail_from\"} 1"
        ),
        "{metrics}"
    );

    // Faults over HTTP.
    let resp = http
        .put(format!("{base}/api/faults"))
        .body(r#"{"reply_451_rate": 1.0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(sim.faults().reply_451_rate, 1.0);

    let resp = http.post(format!("{base}/api/reset")).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(sim.accepted().is_empty() && sim.refusals().is_empty());
    let stats = sim.mailbox("a@contoso.example").unwrap();
    assert_eq!(
        (
            stats.accepted,
            stats.max_messages_in_window,
            stats.current_connections
        ),
        (0, 0, 1)
    );
    sim.shutdown().await;
}
