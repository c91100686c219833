//! The simulated Microsoft Graph over real HTTP: what SMTP accepted is in Sent Items, a
//! bouncing recipient's NDR lands in the sender's Inbox and parses as a delivery-status
//! report naming the original Message-ID; Graph's answers to a fifth concurrent request,
//! to unknown users, other tenants, denied mailboxes and unsupported queries; and the
//! inspection API (inject, folders, throttle, access, request log).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::*;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use mail_parser::{MessageParser, MimeHeaders as _};
use mailpipe_sim::RunningSim;

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

const CONFIG: &str = r#"
[graph]
latency_ms = 300

[[bounces]]
recipient = "nobody@fabrikam.example"
status = "5.1.10"
delay_ms = 200

[[bounces]]
domain = "full.example"
status = "5.2.2"
delay_ms = 200

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

[[apps]]
tenant = "fabrikam"
client_id = "22222222-2222-2222-2222-222222222222"
client_secret = "fabrikam-secret"
mailboxes = ["*"]

[[mailboxes]]
address = "a@contoso.example"
tenant = "contoso"

[[mailboxes]]
address = "b@contoso.example"
tenant = "contoso"

[[mailboxes]]
address = "x@fabrikam.example"
tenant = "fabrikam"
"#;

async fn graph_token(sim: &RunningSim, tenant: &str, client_id: &str, secret: &str) -> String {
    let reply: serde_json::Value = reqwest::Client::new()
        .post(sim.token_url(tenant))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("scope", GRAPH_SCOPE),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["access_token"].as_str().unwrap().to_owned()
}

async fn get(sim: &RunningSim, token: &str, path_and_query: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path_and_query}", sim.graph_base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn accepted_mail_is_in_sent_items_and_bouncing_recipients_get_an_ndr_in_the_inbox() {
    let sim = start(CONFIG).await;
    let smtp_token = token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(sim.smtp_addr().port())
        .tls(Tls::Required(tls))
        .authentication(vec![Mechanism::Xoauth2])
        .credentials(Credentials::new("a@contoso.example".into(), smtp_token))
        .timeout(Some(Duration::from_secs(30)))
        .build();
    let envelope = Envelope::new(
        Some("a@contoso.example".parse().unwrap()),
        vec![
            "nobody@fabrikam.example".parse().unwrap(),
            "fine@fabrikam.example".parse().unwrap(),
            "ann@full.example".parse().unwrap(),
        ],
    )
    .unwrap();
    let raw = b"From: a@contoso.example\r\nTo: nobody@fabrikam.example, fine@fabrikam.example, ann@full.example\r\nSubject: Invoice 9\r\nMessage-ID: <job-9@mailpipe.example>\r\n\r\nInvoice 9\r\n";
    transport.send_raw(&envelope, raw).await.unwrap();

    // In Sent Items as soon as the 250 came.
    let sent = sim.folder("a@contoso.example", "sentitems").unwrap();
    assert_eq!(sent.display_name, "Sent Items");
    assert_eq!(sent.messages.len(), 1);
    assert_eq!(
        sent.messages[0].internet_message_id.as_deref(),
        Some("<job-9@mailpipe.example>")
    );

    // The NDR arrives a little later, through Graph like any mail.
    let token = graph_token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let body: serde_json::Value = get(
            &sim,
            &token,
            "/v1.0/users/a@contoso.example/mailFolders/inbox/messages?$select=id,subject,internetMessageId",
        )
        .await
        .json()
        .await
        .unwrap();
        if !body["value"].as_array().unwrap().is_empty() {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "no NDR arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ndrs = listed["value"].as_array().unwrap();
    assert_eq!(
        ndrs.len(),
        1,
        "one NDR for both bouncing recipients: {listed}"
    );
    assert_eq!(ndrs[0]["subject"], "Undeliverable: Invoice 9");
    let id = ndrs[0]["id"].as_str().unwrap();
    let mime = get(
        &sim,
        &token,
        &format!("/v1.0/users/a@contoso.example/messages/{id}/$value"),
    )
    .await;
    assert_eq!(mime.headers()["content-type"], "text/plain");
    let mime = mime.bytes().await.unwrap();
    let ndr = MessageParser::default().parse(&mime[..]).unwrap();
    let ct = ndr.content_type().unwrap();
    assert_eq!(
        (ct.ctype(), ct.subtype(), ct.attribute("report-type")),
        ("multipart", Some("report"), Some("delivery-status"))
    );
    assert_eq!(ndr.in_reply_to().as_text(), Some("job-9@mailpipe.example"));
    let text = String::from_utf8_lossy(&mime);
    assert!(text.contains("Final-Recipient: rfc822;nobody@fabrikam.example"));
    assert!(text.contains("Status: 5.1.10"));
    assert!(text.contains("Final-Recipient: rfc822;ann@full.example"));
    assert!(text.contains("Status: 5.2.2"));
    assert!(!text.contains("Final-Recipient: rfc822;fine@fabrikam.example"));
    assert!(text.contains("From: Microsoft Outlook <postmaster@contoso.example>"));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_fifth_concurrent_request_for_a_mailbox_is_throttled_with_retry_after() {
    // Each request takes 3 s in the simulator: all 8 overlap even on a loaded machine.
    let sim = start(&CONFIG.replace("latency_ms = 300", "latency_ms = 3000")).await;
    let token = graph_token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    let calls = (0..8).map(|_| {
        get(
            &sim,
            &token,
            "/v1.0/users/a@contoso.example/mailFolders/inbox/messages",
        )
    });
    let responses = futures::future::join_all(calls).await;
    let throttled: Vec<_> = responses.iter().filter(|r| r.status() == 429).collect();
    assert!(
        !throttled.is_empty(),
        "8 at once with 3 s each: some over 4"
    );
    for r in &throttled {
        assert!(r.headers().contains_key("retry-after"));
    }
    let stats = sim.graph_mailbox("a@contoso.example");
    assert!(stats.max_concurrent > 4, "{stats:?}");
    assert_eq!(stats.throttled as usize, throttled.len());
    sim.shutdown().await;
}

#[tokio::test]
async fn graph_refuses_like_graph() {
    let sim = start(CONFIG).await;
    let token = graph_token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    let code = |v: &serde_json::Value| v["error"]["code"].as_str().unwrap_or("").to_owned();
    let check = |status: u16, path: &'static str, expected: &'static str| {
        let sim = &sim;
        let token = token.clone();
        async move {
            let r = get(sim, &token, path).await;
            assert_eq!(r.status(), status, "{path}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(code(&body), expected, "{path}: {body}");
        }
    };
    check(
        404,
        "/v1.0/users/nobody@contoso.example/mailFolders/inbox/messages",
        "ErrorInvalidUser",
    )
    .await;
    // Another tenant's mailbox is not in this token's directory.
    check(
        404,
        "/v1.0/users/x@fabrikam.example/mailFolders/inbox/messages",
        "ErrorInvalidUser",
    )
    .await;
    check(
        400,
        "/v1.0/users/a@contoso.example/mailFolders/inbox/messages?$top=5000",
        "BadRequest",
    )
    .await;
    check(
        400,
        "/v1.0/users/a@contoso.example/mailFolders/inbox/messages?$filter=subject%20eq%20'x'",
        "BadRequest",
    )
    .await;
    check(400, "/v1.0/users/a@contoso.example/mailFolders/inbox/messages?$filter=internetMessageId%20eq%20'x'%20or%20true", "BadRequest").await;
    check(
        404,
        "/v1.0/users/a@contoso.example/mailFolders/nosuchfolder/messages",
        "ErrorItemNotFound",
    )
    .await;
    let none = get(
        &sim,
        "not-a-token",
        "/v1.0/users/a@contoso.example/mailFolders",
    )
    .await;
    assert_eq!(none.status(), 401);

    // The access policy stops granting the mailbox.
    sim.set_graph_access("a@contoso.example", false);
    check(
        403,
        "/v1.0/users/a@contoso.example/mailFolders",
        "ErrorAccessDenied",
    )
    .await;
    sim.set_graph_access("a@contoso.example", true);

    // Creating a folder twice: 409 ErrorFolderExists.
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v1.0/users/a@contoso.example/mailFolders",
        sim.graph_base_url()
    );
    let create = || {
        http.post(&url)
            .bearer_auth(&token)
            .json(&serde_json::json!({"displayName": "done"}))
            .send()
    };
    assert_eq!(create().await.unwrap().status(), 201);
    let again = create().await.unwrap();
    assert_eq!(again.status(), 409);
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(code(&body), "ErrorFolderExists");
    sim.shutdown().await;
}

#[tokio::test]
async fn the_inspection_api_injects_lists_throttles_and_logs() {
    let sim = start(CONFIG).await;
    let http = reqwest::Client::new();
    let api = format!("http://{}", sim.http_addr());
    let injected: serde_json::Value = http
        .post(format!("{api}/api/mailboxes/b@contoso.example/inbox"))
        .body("Subject: Automatic reply: Invoice 1\r\nAuto-Submitted: auto-replied\r\nMessage-ID: <ooo@x>\r\n\r\nI am away.\r\n")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = injected["id"].as_str().unwrap().to_owned();
    let folders: serde_json::Value = http
        .get(format!("{api}/api/mailboxes/b@contoso.example/folders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(folders[0]["well_known_name"], "inbox");
    assert_eq!(folders[0]["messages"][0]["id"], id.as_str());
    assert_eq!(folders[0]["messages"][0]["internet_message_id"], "<ooo@x>");
    assert_eq!(folders[1]["well_known_name"], "sentitems");

    let r = http
        .put(format!(
            "{api}/api/mailboxes/b@contoso.example/graph-throttle"
        ))
        .json(&serde_json::json!({"requests": 1, "retry_after_secs": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let token = graph_token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    let throttled = get(&sim, &token, "/v1.0/users/b@contoso.example/mailFolders").await;
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "7");
    let log: serde_json::Value = http
        .get(format!("{api}/api/graph/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log[0]["status"], 429);
    assert_eq!(log[0]["retry_after_secs"], 7);
    assert_eq!(log[0]["mailbox"], "b@contoso.example");
    let stats: serde_json::Value = http
        .get(format!("{api}/api/graph/mailboxes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats[0]["throttled"], 1);
    assert!(stats[0]["throttle_replies"][0]["next_request_at"].is_null());

    let r = http
        .put(format!(
            "{api}/api/mailboxes/b@contoso.example/graph-access"
        ))
        .body("false")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        get(&sim, &token, "/v1.0/users/b@contoso.example/mailFolders")
            .await
            .status(),
        403
    );
    sim.shutdown().await;
}
