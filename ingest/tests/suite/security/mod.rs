//! Issue 28's security properties, each against the real thing (ingest on port 0, a real
//! RabbitMQ and PostgreSQL, real sockets): a refused request changes nothing, control
//! characters are refused at the edge, callbacks go only where the allow-list and the
//! address checks say, one peer cannot starve the others of connections, each token does
//! only what its role allows, pending webhooks can be dropped, and a rotated webhook
//! secret keeps both receivers verifying during the overlap.

#![allow(clippy::unwrap_used)]

use crate::support;

mod callbacks;
mod console_login;
mod delivery;
mod fairness;
mod input;
mod roles;
mod rotation;
mod webhooks_drop;

use std::time::Duration;

use mailpipe_common::config::SecretRef;
use support::{TestApp, fixture_dir, settings_for, test_pool};

/// The callbacks' signing key (32 bytes, base64).
pub(crate) const CALLBACK_SECRET: &str = "whsec_dGVzdC1jYWxsYmFjay1zZWNyZXQtMzItYnl0ZXMhIQ==";

/// Every test here is bounded: a hang fails with its name instead of stalling the suite.
pub(crate) async fn bounded<F: std::future::Future<Output = ()>>(
    what: &str,
    limit: Duration,
    test: F,
) {
    if tokio::time::timeout(limit, test).await.is_err() {
        panic!("{what}: did not finish within {limit:?}");
    }
}

/// An ingest whose callbacks are on, `allowed` as its allow-list and plain http to
/// loopback allowed (the receivers here are on 127.0.0.1); `tweak` changes the rest.
pub(crate) async fn spawn_with_callbacks(
    name: &str,
    allowed: &[&str],
    tweak: impl FnOnce(&mut mailpipe_ingest::IngestSettings),
) -> TestApp {
    let broker = mailpipe_common::testkit::TestBroker::start(name).await;
    let dir = fixture_dir();
    std::fs::write(dir.path().join("callback-secret"), CALLBACK_SECRET).unwrap();
    let mut ingest = settings_for(dir.path());
    ingest.webhooks.callback_secret = Some(SecretRef {
        env: None,
        file: Some(dir.path().join("callback-secret")),
    });
    ingest.webhooks.allowed_callback_hosts = allowed.iter().map(|h| h.to_string()).collect();
    ingest.webhooks.allow_http_loopback = true;
    tweak(&mut ingest);
    let config = mailpipe_ingest::Config {
        rabbitmq: broker.settings.clone(),
        telemetry: Default::default(),
        database: broker.database.clone(),
        ingest,
        pool: Ok(test_pool()),
    };
    TestApp::spawn_with(broker, dir, config).await
}

/// `batches.callback_url` of `batch`; `None` when the batch has no row.
pub(crate) async fn callback_of(app: &TestApp, batch: &str) -> Option<Option<String>> {
    sqlx::query_scalar::<_, Option<String>>("SELECT callback_url FROM batches WHERE id = $1")
        .bind(batch)
        .fetch_optional(app.broker.store().pool())
        .await
        .unwrap()
}
