//! What an app may do in the simulated Graph: its tokens are JWT-shaped and carry the
//! consented application permissions in `roles` (Exchange tokens `SMTP.SendAsApp`); Graph
//! refuses a request the roles do not cover, and a mailbox outside the app's RBAC for
//! Applications scope, with `403 ErrorAccessDenied`; an unlicensed mailbox with `404
//! MailboxNotEnabledForRESTAPI`.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;

use crate::common::*;

/// Every request of these tests is bounded.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

const CONFIG: &str = r#"
[[tenants]]
id = "contoso"
domains = ["contoso.example"]

[[apps]]
tenant = "contoso"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "contoso-secret"
mailboxes = ["*"]
roles = ["Mail.Read"]
graph_scope = ["a@contoso.example"]

[[apps]]
tenant = "contoso"
client_id = "22222222-2222-2222-2222-222222222222"
client_secret = "other-secret"
mailboxes = ["*"]

[[mailboxes]]
address = "a@contoso.example"
tenant = "contoso"

[[mailboxes]]
address = "b@contoso.example"
tenant = "contoso"

[[mailboxes]]
address = "unlicensed@contoso.example"
tenant = "contoso"
licensed = false
"#;

async fn token_for(
    sim: &mailpipe_sim::RunningSim,
    client_id: &str,
    secret: &str,
    scope: &str,
) -> String {
    let reply: serde_json::Value = http()
        .post(sim.token_url("contoso"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["access_token"].as_str().unwrap().to_owned()
}

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn status_and_body(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn tokens_carry_the_apps_roles_and_graph_enforces_them_and_the_scope() {
    let sim = start(CONFIG).await;
    let graph = "https://graph.microsoft.com/.default";
    let scoped = token_for(
        &sim,
        "11111111-1111-1111-1111-111111111111",
        "contoso-secret",
        graph,
    )
    .await;
    let c = claims(&scoped);
    assert_eq!(c["roles"], serde_json::json!(["Mail.Read"]), "{c}");
    assert_eq!(c["aud"], "https://graph.microsoft.com", "{c}");
    assert_eq!(c["appid"], "11111111-1111-1111-1111-111111111111", "{c}");
    let full = token_for(
        &sim,
        "22222222-2222-2222-2222-222222222222",
        "other-secret",
        graph,
    )
    .await;
    assert_eq!(
        claims(&full)["roles"],
        serde_json::json!(["Mail.ReadWrite", "Mail.Send"])
    );
    let smtp = token_for(
        &sim,
        "22222222-2222-2222-2222-222222222222",
        "other-secret",
        "https://outlook.office365.com/.default",
    )
    .await;
    assert_eq!(
        claims(&smtp)["roles"],
        serde_json::json!(["SMTP.SendAsApp"])
    );

    let http = http();
    let base = sim.graph_base_url();
    let inbox = |mbx: &str| format!("{base}/v1.0/users/{mbx}/mailFolders/inbox/messages?$top=1");
    // Mail.Read reads the mailbox in scope, ...
    let (status, _) =
        status_and_body(http.get(inbox("a@contoso.example")).bearer_auth(&scoped)).await;
    assert_eq!(status, 200);
    // ... not one outside it, ...
    let (status, body) =
        status_and_body(http.get(inbox("b@contoso.example")).bearer_auth(&scoped)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "ErrorAccessDenied", "{body}");
    assert_eq!(
        body["error"]["message"],
        "Access is denied. Check credentials and try again."
    );
    // ... and creates no draft (Mail.ReadWrite) in it.
    let (status, body) = status_and_body(
        http.post(format!("{base}/v1.0/users/a@contoso.example/messages"))
            .bearer_auth(&scoped)
            .header("content-type", "text/plain")
            .body(base64::engine::general_purpose::STANDARD.encode(
                "From: a@contoso.example\r\nTo: x@fabrikam.example\r\nSubject: s\r\n\r\nbody\r\n",
            )),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "ErrorAccessDenied", "{body}");
    // The unscoped app with the default roles reads both.
    for mbx in ["a@contoso.example", "b@contoso.example"] {
        let (status, body) = status_and_body(http.get(inbox(mbx)).bearer_auth(&full)).await;
        assert_eq!(status, 200, "{mbx}: {body}");
    }
    // A mailbox without an Exchange Online licence is not served, whoever asks.
    let (status, body) = status_and_body(
        http.get(inbox("unlicensed@contoso.example"))
            .bearer_auth(&full),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["error"]["code"], "MailboxNotEnabledForRESTAPI",
        "{body}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_scope_naming_a_mailbox_the_tenant_does_not_have_is_refused_at_load() {
    let config = CONFIG.replace(
        r#"graph_scope = ["a@contoso.example"]"#,
        r#"graph_scope = ["nobody@contoso.example"]"#,
    );
    let err = mailpipe_sim::SimConfig::from_toml_str(&config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("apps[0].graph_scope[0]") && err.contains("nobody@contoso.example"),
        "{err}"
    );
}
