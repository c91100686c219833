//! A rotated webhook secret: during the configured overlap every call carries a signature
//! by the old secret and one by the new, so a receiver that knows only the old one and a
//! receiver that knows only the new one both verify it; after the overlap only the new
//! one signs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use mailpipe_common::config::SecretRef;
use mailpipe_ingest::webhooks::signature::SigningKey;
use mailpipe_ingest::webhooks::{Dispatcher, PreviousSecret, WebhookSettings, Webhooks};
use tokio_util::sync::CancellationToken;

use super::delivery::{event, run_until};
use super::{CALLBACK_SECRET, bounded};

/// The secret being rotated out (the new one is [`CALLBACK_SECRET`]).
const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What a receiver got: `webhook-id`, `webhook-timestamp`, `webhook-signature`, body.
type Received = Arc<Mutex<Vec<(String, i64, String, String)>>>;

async fn receiver() -> (u16, Received) {
    let got: Received = Arc::default();
    let record = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let record = record.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let ts = h("webhook-timestamp").parse().unwrap_or_default();
                record
                    .lock()
                    .unwrap()
                    .push((h("webhook-id"), ts, h("webhook-signature"), body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, got)
}

/// A receiver's check, as the Standard Webhooks libraries do it: any of the
/// space-separated `v1,<sig>` entries made with the one secret it knows.
fn verifies(secret: &str, call: &(String, i64, String, String)) -> bool {
    let key = SigningKey::parse(secret).unwrap();
    let (id, ts, header, body) = call;
    let expected = key.sign(id, *ts, body.as_bytes());
    header.split(' ').any(|entry| entry == expected)
}

fn rotating(dir: &std::path::Path, port: u16, until: chrono::DateTime<chrono::Utc>) -> Webhooks {
    let (new, old) = (dir.join("new-secret"), dir.join("old-secret"));
    std::fs::write(&new, CALLBACK_SECRET).unwrap();
    std::fs::write(&old, OLD_SECRET).unwrap();
    let file = |p: std::path::PathBuf| SecretRef {
        env: None,
        file: Some(p),
    };
    let settings = WebhookSettings {
        callback_secret: Some(file(new)),
        previous_callback_secret: Some(PreviousSecret {
            secret: file(old),
            until: until.to_rfc3339(),
        }),
        allowed_callback_hosts: vec![format!("127.0.0.1:{port}")],
        allow_http_loopback: true,
        connect_timeout_ms: 1_000,
        request_timeout_ms: 2_000,
        poll_ms: 50,
        ..WebhookSettings::default()
    };
    assert!(settings.problems().is_empty(), "{:?}", settings.problems());
    Webhooks::resolve(&settings).unwrap()
}

#[tokio::test]
async fn old_and_new_receivers_both_verify_during_the_overlap_and_only_new_after() {
    bounded("secret rotation", Duration::from_secs(60), async {
        let (store, _) =
            mailpipe_common::testkit::test_store("sec-rotation", CancellationToken::new()).await;
        let dir = tempfile::tempdir().unwrap();
        let (port, got) = receiver().await;
        let url = format!("http://127.0.0.1:{port}/hook");
        let delivered = |d: &(String, Option<String>)| d.0 == "delivered";

        // During the overlap.
        let until = chrono::Utc::now() + chrono::Duration::hours(1);
        event(&store, "b-rot", "j-during", &url).await;
        let dispatcher = Dispatcher::new(store.clone(), rotating(dir.path(), port, until)).unwrap();
        run_until(
            &store,
            dispatcher,
            "j-during",
            Duration::from_secs(20),
            delivered,
        )
        .await;
        let during = got.lock().unwrap().last().cloned().unwrap();
        assert!(
            verifies(OLD_SECRET, &during),
            "the old receiver failed: {during:?}"
        );
        assert!(
            verifies(CALLBACK_SECRET, &during),
            "the new receiver failed: {during:?}"
        );

        // After it.
        let ended = chrono::Utc::now() - chrono::Duration::seconds(1);
        event(&store, "b-rot", "j-after", &url).await;
        let dispatcher = Dispatcher::new(store.clone(), rotating(dir.path(), port, ended)).unwrap();
        run_until(
            &store,
            dispatcher,
            "j-after",
            Duration::from_secs(20),
            delivered,
        )
        .await;
        let after = got.lock().unwrap().last().cloned().unwrap();
        assert_ne!(after.0, during.0, "a second event was called");
        assert!(verifies(CALLBACK_SECRET, &after), "{after:?}");
        assert!(
            !verifies(OLD_SECRET, &after),
            "the old secret still signs after the overlap: {after:?}"
        );
        store.close().await;
    })
    .await;
}
