//! deliver's Graph client against the simulator's Microsoft Graph over real HTTP: list,
//! page, fetch MIME, move and find-or-create folders; find a message Exchange accepted over
//! SMTP in Sent Items (even while its `250` is still held); the throttling discipline
//! (`Retry-After` honoured to the instant, at most 4 requests in flight per mailbox);
//! tokens bound to their audience, an expired one replaced once; no redirect and no foreign
//! nextLink followed; oversized MIME refused; mailboxes without Graph named with the reason.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use mailpipe_common::config::ConfigSource;
use mailpipe_common::domain::EmailAddress;
use mailpipe_deliver::graph::{FolderId, GraphClient, GraphError, Order};
use mailpipe_deliver::settings::DeliverSettings;
use mailpipe_sim::{FailedRecipient, RunningSim, SimConfig, Simulator, exchange_ndr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CLIENT_ID: &str = "11111111-1111-1111-1111-111111111111";
const SECRET: &str = "graph-test-secret";
pub(crate) const SENDER: &str = "sender1@contoso.example";
const SMTP_SCOPE: &str = "https://outlook.office365.com/.default";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

fn sim_toml(graph_latency_ms: u64) -> String {
    format!(
        r#"
[graph]
latency_ms = {graph_latency_ms}

[[tenants]]
id = "contoso"
domains = ["contoso.example", "contoso.onmicrosoft.com"]

[[apps]]
tenant = "contoso"
client_id = "{CLIENT_ID}"
client_secret = "{SECRET}"
mailboxes = ["*"]

[[mailboxes]]
address = "{SENDER}"
tenant = "contoso"

[[mailboxes]]
address = "denied@contoso.example"
tenant = "contoso"
graph_access = false

[[mailboxes]]
address = "pw@contoso.example"
tenant = "contoso"
password = "pw"
"#
    )
}

pub(crate) async fn start_sim(graph_latency_ms: u64) -> RunningSim {
    Simulator::start(SimConfig::from_toml_str(&sim_toml(graph_latency_ms)).unwrap())
        .await
        .unwrap()
}

/// deliver's Graph client for the simulator's pool; `graph` lines go into `[deliver.graph]`.
pub(crate) fn client_for(sim: &RunningSim, dir: &tempfile::TempDir, graph: &str) -> GraphClient {
    GraphClient::from_settings(&settings_for(sim, dir, graph)).unwrap()
}

/// deliver's settings for the simulator's pool; `graph` lines go into `[deliver.graph]`.
pub(crate) fn settings_for(
    sim: &RunningSim,
    dir: &tempfile::TempDir,
    graph: &str,
) -> DeliverSettings {
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let toml = format!(
        r#"
[deliver.graph]
enabled = true
base_url = "{base}"
allow_loopback_http = true
{graph}

[[deliver.tenants]]
id = "contoso"
[deliver.tenants.oauth]
tenant_id = "contoso.onmicrosoft.com"
client_id = "{CLIENT_ID}"
client_secret = {{ file = {secret:?} }}
authority = "{authority}"
allow_loopback_http = true

[[deliver.mailboxes]]
address = "{SENDER}"
tenant = "contoso"
host = "localhost"

[[deliver.mailboxes]]
address = "denied@contoso.example"
tenant = "contoso"
host = "localhost"

[[deliver.mailboxes]]
address = "pw@contoso.example"
tenant = "contoso"
auth = "password"
password = {{ file = {secret:?} }}
host = "localhost"
"#,
        base = sim.graph_base_url(),
        authority = sim.authority(),
        secret = secret.display().to_string(),
    );
    DeliverSettings::load(&ConfigSource::from_toml(&toml)).unwrap()
}

fn addr(a: &str) -> EmailAddress {
    EmailAddress::parse(a).unwrap()
}

fn mail(message_id: &str, subject: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "From: someone@fabrikam.example\r\nTo: {SENDER}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n{extra_headers}\r\nbody of {subject}\r\n"
    )
    .into_bytes()
}

async fn token(sim: &RunningSim, scope: &str) -> String {
    let reply: serde_json::Value = reqwest::Client::new()
        .post(sim.token_url("contoso"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
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

fn smtp(sim: &RunningSim, token: &str) -> AsyncSmtpTransport<Tokio1Executor> {
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(sim.smtp_addr().port())
        .tls(Tls::Required(tls))
        .authentication(vec![Mechanism::Xoauth2])
        .credentials(Credentials::new(SENDER.into(), token.into()))
        .timeout(Some(Duration::from_secs(120)))
        .build()
}

#[tokio::test]
async fn list_page_fetch_move_and_ensure_folder_round_trip() {
    let sim = start_sim(20).await;
    let dir = tempfile::tempdir().unwrap();
    let graph = client_for(&sim, &dir, "");
    let me = addr(SENDER);

    let auto_reply = mail(
        "<ooo-1@fabrikam.example>",
        "Automatic reply: Invoice 7",
        "Auto-Submitted: auto-replied\r\n",
    );
    let ordinary = mail("<hello-2@fabrikam.example>", "Question about invoice 7", "");
    let original = mail("<job-3@mailpipe.example>", "Invoice 3", "");
    let ndr = exchange_ndr(
        "SIM0PR01MB0001.mailpipe-sim.localhost",
        "postmaster@contoso.example",
        SENDER,
        &original,
        &[FailedRecipient {
            address: "nobody@fabrikam.example".into(),
            status: "5.1.10".into(),
            diagnostic: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup".into(),
        }],
        chrono::Utc::now(),
    );
    for raw in [&auto_reply, &ordinary, &ndr] {
        sim.inject_inbox(SENDER, raw);
    }

    // Everything, oldest first, across pages of 2.
    let first = graph
        .list_messages(&me, &FolderId::inbox(), Order::OldestFirst, 2)
        .await
        .unwrap();
    assert_eq!(first.messages.len(), 2);
    let next = first.next.clone().expect("a second page");
    let second = graph.next_page(&me, &next).await.unwrap();
    assert_eq!(second.messages.len(), 1);
    assert!(second.next.is_none());
    let all = graph
        .list_all(&me, &FolderId::inbox(), Order::OldestFirst, 100)
        .await
        .unwrap();
    let ids: Vec<_> = all
        .iter()
        .map(|m| m.internet_message_id.clone().unwrap_or_default())
        .collect();
    assert_eq!(ids[0], "<ooo-1@fabrikam.example>");
    assert_eq!(ids[1], "<hello-2@fabrikam.example>");
    assert!(all[2].subject.as_deref() == Some("Undeliverable: Invoice 3"));
    assert_eq!(all[0].from.as_deref(), Some("someone@fabrikam.example"));
    assert!(all[0].received.is_some());

    // The MIME is the message as delivered.
    let mime = graph.message_mime(&me, &all[1].id).await.unwrap();
    assert_eq!(&mime[..], &ordinary[..]);

    // Three callers racing to create the same folder all get the one folder.
    let (a, b, c) = tokio::join!(
        graph.ensure_folder(&me, "mailpipe-bounces"),
        graph.ensure_folder(&me, "mailpipe-bounces"),
        graph.ensure_folder(&me, "mailpipe-bounces"),
    );
    let folder = a.unwrap();
    assert_eq!(b.unwrap(), folder);
    assert_eq!(c.unwrap(), folder);
    assert_eq!(
        graph.ensure_folder(&me, "mailpipe-bounces").await.unwrap(),
        folder
    );

    // Moving the NDR gives it a new id; the old one is gone.
    let ndr_id = all[2].id.clone();
    let new_id = graph.move_message(&me, &ndr_id, &folder).await.unwrap();
    assert_ne!(new_id, ndr_id);
    let bounces = sim.folder(SENDER, "mailpipe-bounces").unwrap();
    assert_eq!(bounces.id, folder.as_str());
    assert_eq!(bounces.messages.len(), 1);
    assert_eq!(bounces.messages[0].id, new_id);
    assert_eq!(sim.folder(SENDER, "inbox").unwrap().messages.len(), 2);
    assert_eq!(
        &graph.message_mime(&me, &new_id).await.unwrap()[..],
        &ndr[..]
    );
    let gone = graph.message_mime(&me, &ndr_id).await.unwrap_err();
    assert_eq!(gone.code(), Some("ErrorItemNotFound"), "{gone}");
    assert_eq!(gone.status(), Some(404));
    sim.shutdown().await;
}

#[tokio::test]
async fn find_sent_finds_a_message_exchange_accepted_while_its_250_is_still_held() {
    let sim = start_sim(0).await;
    let dir = tempfile::tempdir().unwrap();
    let graph = client_for(&sim, &dir, "");
    let me = addr(SENDER);
    // A quote in the Message-ID must stay inside the OData literal.
    let message_id = "<inv-42'x@mailpipe.example>";
    sim.set_faults(mailpipe_sim::FaultsConfig {
        accepted_reply_delay_ms: 600_000,
        ..Default::default()
    });
    let transport = smtp(&sim, &token(&sim, SMTP_SCOPE).await);
    let raw = format!(
        "From: {SENDER}\r\nTo: customer@fabrikam.example\r\nSubject: Invoice 42\r\nMessage-ID: {message_id}\r\n\r\nInvoice 42\r\n"
    );
    let envelope = Envelope::new(
        Some(SENDER.parse().unwrap()),
        vec!["customer@fabrikam.example".parse().unwrap()],
    )
    .unwrap();
    let send = tokio::spawn(async move { transport.send_raw(&envelope, raw.as_bytes()).await });

    // The 250 is held for ten minutes; the message is in Sent Items already.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let found = loop {
        if let Some(m) = graph.find_sent(&me, message_id).await.unwrap() {
            break m;
        }
        assert!(!send.is_finished(), "the send ended: {:?}", send.await);
        assert!(tokio::time::Instant::now() < deadline, "not in Sent Items");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(found.internet_message_id.as_deref(), Some(message_id));
    assert_eq!(found.subject.as_deref(), Some("Invoice 42"));
    assert!(!send.is_finished(), "the 250 is still held");
    send.abort();

    for other in [
        "<inv-43@mailpipe.example>",
        "<inv-42'x@mailpipe.example",
        "<x' or internetMessageId ne 'y>",
    ] {
        assert_eq!(graph.find_sent(&me, other).await.unwrap(), None, "{other}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_honoured_to_the_instant() {
    let sim = start_sim(0).await;
    let dir = tempfile::tempdir().unwrap();
    let graph = client_for(&sim, &dir, "");
    let me = addr(SENDER);
    sim.throttle_graph(SENDER, 2, 2);
    let page = graph
        .list_messages(&me, &FolderId::inbox(), Order::OldestFirst, 10)
        .await
        .unwrap();
    assert!(page.messages.is_empty());
    // Another request after the throttled ones waits for nothing.
    graph.find_sent(&me, "<none@x>").await.unwrap();

    let stats = sim.graph_mailbox(SENDER);
    assert_eq!(stats.throttled, 2, "{stats:?}");
    assert_eq!(stats.requests, 4, "{stats:?}");
    for reply in &stats.throttle_replies {
        assert!(reply.next_request_at.is_some(), "{reply:?}");
        assert!(
            reply.honoured(),
            "next request before Retry-After: {reply:?}"
        );
    }
    let log = sim.graph_requests();
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 429, 200, 200]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_twenty_calls_never_has_more_than_four_in_flight() {
    let sim = start_sim(100).await;
    let dir = tempfile::tempdir().unwrap();
    let graph = Arc::new(client_for(&sim, &dir, ""));
    let me = addr(SENDER);
    let calls = (0..20).map(|i| {
        let graph = Arc::clone(&graph);
        let me = me.clone();
        async move { graph.find_sent(&me, &format!("<burst-{i}@x>")).await }
    });
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap(), None);
    }
    let stats = sim.graph_mailbox(SENDER);
    assert_eq!(stats.requests, 20, "{stats:?}");
    assert_eq!(stats.throttled, 0, "{stats:?}");
    assert!(
        (1..=4).contains(&stats.max_concurrent),
        "{} in flight at once",
        stats.max_concurrent
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn tokens_are_good_for_their_audience_only() {
    let sim = start_sim(0).await;
    let url = format!(
        "{}/v1.0/users/{SENDER}/mailFolders/inbox/messages",
        sim.graph_base_url()
    );
    let http = reqwest::Client::new();
    let smtp_token = token(&sim, SMTP_SCOPE).await;
    let graph_token = token(&sim, GRAPH_SCOPE).await;
    let refused = http
        .get(&url)
        .bearer_auth(&smtp_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    let ok = http
        .get(&url)
        .bearer_auth(&graph_token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // And a Graph token does not authenticate SMTP.
    let envelope = Envelope::new(
        Some(SENDER.parse().unwrap()),
        vec!["customer@fabrikam.example".parse().unwrap()],
    )
    .unwrap();
    let err = smtp(&sim, &graph_token)
        .send_raw(&envelope, b"Subject: x\r\n\r\nx\r\n")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("5.7.3"), "{err}");

    // A client configured with the SMTP scope by mistake is told so by Graph.
    let dir = tempfile::tempdir().unwrap();
    let graph = client_for(&sim, &dir, &format!("scope = \"{SMTP_SCOPE}\""));
    let err = graph.find_sent(&addr(SENDER), "<a@b>").await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert_eq!(err.code(), Some("InvalidAuthenticationToken"), "{err}");
    assert!(!err.to_string().contains("eyJ"), "{err}");
    sim.shutdown().await;
}

#[tokio::test]
async fn mailboxes_without_graph_access_are_named_with_the_reason() {
    let sim = start_sim(0).await;
    let dir = tempfile::tempdir().unwrap();
    let graph = client_for(&sim, &dir, "");
    let err = graph
        .check_mailbox(&addr("pw@contoso.example"))
        .unwrap_err();
    assert!(matches!(err, GraphError::NoGraph { .. }), "{err}");
    assert!(err.to_string().contains("password"), "{err}");
    let err = graph
        .check_mailbox(&addr("stranger@contoso.example"))
        .unwrap_err();
    assert!(
        err.to_string().contains("not a mailbox of the pool"),
        "{err}"
    );
    // The access policy does not grant this one.
    let err = graph
        .list_messages(
            &addr("denied@contoso.example"),
            &FolderId::inbox(),
            Order::OldestFirst,
            10,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert_eq!(err.code(), Some("ErrorAccessDenied"), "{err}");
    sim.shutdown().await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_naming_the_limit() {
    let sim = start_sim(0).await;
    let dir = tempfile::tempdir().unwrap();
    let graph = client_for(&sim, &dir, "max_message_bytes = 4096");
    let me = addr(SENDER);
    let small = sim.inject_inbox(SENDER, &mail("<small@x>", "small", ""));
    let big_body = "x".repeat(10_000);
    let big = sim.inject_inbox(SENDER, &mail("<big@x>", &big_body, ""));
    assert!(graph.message_mime(&me, &small).await.is_ok());
    let err = graph.message_mime(&me, &big).await.unwrap_err();
    assert!(
        matches!(err, GraphError::TooLarge { limit: 4096, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("deliver.graph.max_message_bytes"),
        "{err}"
    );
    sim.shutdown().await;
}

/// A one-request-at-a-time HTTP server that records what it received and answers `reply`.
async fn recording_server(reply: String) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = Vec::new();
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            record.lock().unwrap().extend_from_slice(&got);
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    (port, seen)
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_the_token_stays_home() {
    let sim = start_sim(0).await;
    let (target, target_seen) = recording_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\nconnection: close\r\n\r\n{\"value\":[]}".into(),
    )
    .await;
    let (redirector, redirector_seen) = recording_server(format!(
        "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{target}/steal\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let toml = format!(
        r#"
[deliver.graph]
enabled = true
base_url = "http://127.0.0.1:{redirector}"
allow_loopback_http = true
[[deliver.tenants]]
id = "contoso"
[deliver.tenants.oauth]
tenant_id = "contoso.onmicrosoft.com"
client_id = "{CLIENT_ID}"
client_secret = {{ file = {secret:?} }}
authority = "{authority}"
allow_loopback_http = true
[[deliver.mailboxes]]
address = "{SENDER}"
tenant = "contoso"
host = "localhost"
"#,
        authority = sim.authority(),
        secret = secret.display().to_string(),
    );
    let settings = DeliverSettings::load(&ConfigSource::from_toml(&toml)).unwrap();
    let graph = GraphClient::from_settings(&settings).unwrap();
    let err = graph
        .list_messages(&addr(SENDER), &FolderId::inbox(), Order::OldestFirst, 10)
        .await
        .unwrap_err();
    assert!(
        matches!(err, GraphError::Redirected { status: 302, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("never followed"), "{err}");
    let asked = String::from_utf8_lossy(&redirector_seen.lock().unwrap()).into_owned();
    assert!(asked.contains("authorization: Bearer eyJ"), "{asked}");
    assert!(
        target_seen.lock().unwrap().is_empty(),
        "the redirect target was contacted"
    );
    sim.shutdown().await;
}

#[test]
fn graph_settings_that_cannot_work_are_refused_naming_each_key() {
    let src = ConfigSource::from_toml(
        r#"
        [deliver.graph]
        base_url = "http://graph.example"
        max_concurrent_per_mailbox = 5
        max_concurrent_requests = 0
        request_timeout_ms = 0
        max_message_bytes = 10
        bounce_folder = ""
        poll_interval_ms = 10
        scope = ""
        [[deliver.tenants]]
        id = "contoso"
        [[deliver.mailboxes]]
        address = "a@contoso.example"
        tenant = "contoso"
        auth = "password"
        password = { env = "X" }
        "#,
    );
    let problems = DeliverSettings::load(&src).unwrap_err().problems();
    let keys: Vec<&str> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
    for key in [
        "deliver.graph.base_url",
        "deliver.graph.max_concurrent_per_mailbox",
        "deliver.graph.max_concurrent_requests",
        "deliver.graph.request_timeout_ms",
        "deliver.graph.max_message_bytes",
        "deliver.graph.bounce_folder",
        "deliver.graph.poll_interval_ms",
        "deliver.graph.scope",
    ] {
        assert!(keys.contains(&key), "{key} not in {problems:#?}");
    }
    let defaults = DeliverSettings::default().graph;
    assert!(!defaults.enabled);
    assert_eq!(defaults.base_url, "https://graph.microsoft.com");
    assert_eq!(defaults.max_concurrent_per_mailbox, 4);
    assert_eq!(defaults.max_concurrent_requests, 64);
    assert_eq!(defaults.max_message_bytes, 40 * 1024 * 1024);
    assert_eq!(defaults.bounce_folder, "mailpipe-bounces");
    assert_eq!(defaults.untrusted_folder, "mailpipe-untrusted");
    assert_eq!(defaults.poll_interval_ms, 60_000);

    // Refused reports are for a person: never mixed with the handled bounces.
    let src = ConfigSource::from_toml(
        r#"
        [deliver.graph]
        untrusted_folder = "Mailpipe-Bounces"
        "#,
    );
    let problems = DeliverSettings::load(&src).unwrap_err().problems();
    assert!(
        problems
            .iter()
            .any(|p| p.key.as_deref() == Some("deliver.graph.untrusted_folder")),
        "{problems:#?}"
    );
}

#[tokio::test]
async fn an_expired_token_is_replaced_once_and_the_call_goes_through() {
    let sim = start_sim(0).await;
    let dir = tempfile::tempdir().unwrap();
    let graph = client_for(&sim, &dir, "");
    let me = addr(SENDER);
    assert_eq!(graph.find_sent(&me, "<a@x>").await.unwrap(), None);
    sim.expire_tokens();
    assert_eq!(graph.find_sent(&me, "<a@x>").await.unwrap(), None);
    let statuses: Vec<u16> = sim.graph_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401, 200]);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_next_link_to_another_host_is_not_followed() {
    let sim = start_sim(0).await;
    let body =
        r#"{"value":[],"@odata.nextLink":"http://evil.example/v1.0/users/x/messages?$skip=10"}"#;
    let (graph_port, _) = recording_server(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let toml = format!(
        r#"
[deliver.graph]
base_url = "http://127.0.0.1:{graph_port}"
allow_loopback_http = true
[[deliver.tenants]]
id = "contoso"
[deliver.tenants.oauth]
tenant_id = "contoso.onmicrosoft.com"
client_id = "{CLIENT_ID}"
client_secret = {{ file = {secret:?} }}
authority = "{authority}"
allow_loopback_http = true
[[deliver.mailboxes]]
address = "{SENDER}"
tenant = "contoso"
host = "localhost"
"#,
        authority = sim.authority(),
        secret = secret.display().to_string(),
    );
    let settings = DeliverSettings::load(&ConfigSource::from_toml(&toml)).unwrap();
    let graph = GraphClient::from_settings(&settings).unwrap();
    let err = graph
        .list_messages(&addr(SENDER), &FolderId::inbox(), Order::OldestFirst, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::ForeignLink { .. }), "{err}");
    assert!(err.to_string().contains("evil.example"), "{err}");
    sim.shutdown().await;
}
