//! The simulated Graph's attachments over real HTTP, as a client of upload sessions meets
//! them: the session's URL takes ranges without a bearer token (and refuses one), checks
//! each range (the next expected byte, 320 KiB multiples, the declared size, its own
//! credential), expires, and the finished attachment is in the message that is sent, byte
//! for byte; a session that would take the draft over the message size limit is refused.
#![allow(clippy::unwrap_used)]

use crate::common;

use base64::Engine as _;
use mail_parser::{MessageParser, MimeHeaders as _};
use mailpipe_sim::RunningSim;
use serde_json::{Value, json};

const CONFIG: &str = r#"
[graph]
max_message_bytes = 3000000

[[tenants]]
id = "contoso"
domains = ["contoso.example"]

[[apps]]
tenant = "contoso"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "contoso-secret"
mailboxes = ["*"]

[[mailboxes]]
address = "a@contoso.example"
tenant = "contoso"
"#;

const MAILBOX: &str = "a@contoso.example";

async fn graph_token(sim: &RunningSim) -> String {
    let reply: Value = reqwest::Client::new()
        .post(sim.token_url("contoso"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "11111111-1111-1111-1111-111111111111"),
            ("client_secret", "contoso-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["access_token"].as_str().unwrap().to_owned()
}

async fn post(sim: &RunningSim, token: &str, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "{}/v1.0/users/{MAILBOX}{path}",
            sim.graph_base_url()
        ))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn new_draft(sim: &RunningSim, token: &str) -> String {
    let mime = "From: a@contoso.example\r\nTo: b@fabrikam.example\r\nSubject: s\r\nMessage-ID: <u1@test>\r\nContent-Type: text/plain\r\n\r\nHello.\r\n";
    let draft: Value = reqwest::Client::new()
        .post(format!(
            "{}/v1.0/users/{MAILBOX}/messages",
            sim.graph_base_url()
        ))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(base64::engine::general_purpose::STANDARD.encode(mime))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    draft["id"].as_str().unwrap().to_owned()
}

async fn session(sim: &RunningSim, token: &str, draft: &str, size: usize) -> reqwest::Response {
    post(
        sim,
        token,
        &format!("/messages/{draft}/attachments/createUploadSession"),
        json!({"AttachmentItem": {"attachmentType": "file", "name": "a.bin", "size": size, "contentType": "application/octet-stream"}}),
    )
    .await
}

async fn put(url: &str, start: usize, bytes: &[u8], total: usize) -> reqwest::Response {
    reqwest::Client::new()
        .put(url)
        .header(
            "content-range",
            format!("bytes {start}-{}/{total}", start + bytes.len() - 1),
        )
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_upload_session_checks_each_range_and_its_attachment_is_sent_byte_for_byte() {
    let sim = common::start(CONFIG).await;
    let token = graph_token(&sim).await;
    let draft = new_draft(&sim, &token).await;
    const SIZE: usize = 1_000_000;
    let file: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 253) as u8).collect();

    let created = session(&sim, &token, &draft, SIZE).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["nextExpectedRanges"], json!(["0"]));
    let url = created["uploadUrl"].as_str().unwrap().to_owned();
    assert!(url.contains("authtoken="), "{url}");

    // A bearer token is refused at the pre-authenticated URL.
    let with_bearer = reqwest::Client::new()
        .put(&url)
        .bearer_auth(&token)
        .header("content-range", format!("bytes 0-9/{SIZE}"))
        .body(file[..10].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(with_bearer.status(), 401);
    // So is a wrong credential in the URL.
    let (base, _) = url.split_once("authtoken=").unwrap();
    assert_eq!(
        put(
            &format!("{base}authtoken=forged"),
            0,
            &file[..327_680],
            SIZE
        )
        .await
        .status(),
        401
    );
    // A range that is not a multiple of 320 KiB (and not the last), one that skips ahead,
    // one that names another size.
    assert_eq!(put(&url, 0, &file[..100_000], SIZE).await.status(), 400);
    assert_eq!(put(&url, 5, &file[5..327_685], SIZE).await.status(), 416);
    assert_eq!(put(&url, 0, &file[..327_680], SIZE + 1).await.status(), 400);

    let first = put(&url, 0, &file[..327_680], SIZE).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["nextExpectedRanges"], json!(["327680"]));
    let last = put(&url, 327_680, &file[327_680..], SIZE).await;
    assert_eq!(last.status(), 201);
    assert!(last.headers().contains_key("location"));
    assert_eq!(sim.open_upload_sessions(), 0);

    let sent = post(&sim, &token, &format!("/messages/{draft}/send"), json!({})).await;
    assert_eq!(sent.status(), 202);
    let accepted = sim.accepted();
    let message = MessageParser::new().parse(&accepted[0].raw).unwrap();
    let attachment = message.attachments().next().unwrap();
    assert_eq!(attachment.attachment_name(), Some("a.bin"));
    assert!(attachment.contents() == file.as_slice());
    assert_eq!(message.body_text(0).unwrap().trim(), "Hello.");
    sim.shutdown().await;
}

#[tokio::test]
async fn an_expired_session_is_gone_and_a_draft_may_not_outgrow_the_size_limit() {
    let sim = common::start(CONFIG).await;
    let token = graph_token(&sim).await;
    let draft = new_draft(&sim, &token).await;
    let created: Value = session(&sim, &token, &draft, 400_000)
        .await
        .json()
        .await
        .unwrap();
    let url = created["uploadUrl"].as_str().unwrap().to_owned();
    sim.expire_upload_sessions();
    assert_eq!(put(&url, 0, &[0u8; 327_680], 400_000).await.status(), 404);

    // 2.5 MB is 3.3 MB as base64 in the message: above the 3 MB limit configured.
    let over = session(&sim, &token, &draft, 2_500_000).await;
    assert_eq!(over.status(), 413);
    let body: Value = over.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ErrorMessageSizeExceeded");
    sim.shutdown().await;
}
