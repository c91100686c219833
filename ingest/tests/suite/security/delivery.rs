//! At every call, a callback goes only where the allow-list and the address checks say:
//! an allowed name that now resolves to 127.0.0.1 (DNS rebinding, played by a resolver
//! this test controls) is not connected to, and a delivery whose host left the allow-list
//! is dropped with the reason, not called.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailpipe_common::config::SecretRef;
use mailpipe_common::store::Store;
use mailpipe_ingest::webhooks::address_guard::{Lookup, LookupFuture};
use mailpipe_ingest::webhooks::{Dispatcher, WebhookSettings, Webhooks};
use tokio_util::sync::CancellationToken;

use super::{CALLBACK_SECRET, bounded};

/// A DNS server the test controls: `hooks.test` resolves to whatever it is told now.
#[derive(Debug)]
struct Rebinding {
    answer: Mutex<IpAddr>,
    asked: AtomicUsize,
}

impl Lookup for Rebinding {
    fn lookup(&self, host: &str) -> LookupFuture {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let answer = match host {
            "hooks.test" => Ok(vec![*self.answer.lock().unwrap()]),
            other => Err(std::io::Error::other(format!("{other}: no such name here"))),
        };
        Box::pin(async move { answer })
    }
}

/// A listener on 127.0.0.1 that counts the connections made to it.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, seen)
}

fn webhooks(dir: &std::path::Path, allowed: &[String], loopback: bool) -> Webhooks {
    let secret = dir.join("callback-secret");
    std::fs::write(&secret, CALLBACK_SECRET).unwrap();
    let settings = WebhookSettings {
        callback_secret: Some(SecretRef {
            env: None,
            file: Some(secret),
        }),
        allowed_callback_hosts: allowed.to_vec(),
        allow_http_loopback: loopback,
        connect_timeout_ms: 1_000,
        request_timeout_ms: 2_000,
        retry_initial_ms: 600_000,
        retry_max_ms: 600_000,
        poll_ms: 50,
        ..WebhookSettings::default()
    };
    assert!(settings.problems().is_empty(), "{:?}", settings.problems());
    Webhooks::resolve(&settings).unwrap()
}

/// One `job.delivered` event of `batch`, whose callback is `url`.
pub(crate) async fn event(store: &Store, batch: &str, job: &str, url: &str) {
    let opener = mailpipe_common::store::Opener::TRUSTED;
    assert!(store.open_batch(batch, opener, Some(url)).await.unwrap());
    sqlx::query(
        "SELECT mailpipe_webhook_record('job.delivered', 'job:' || $1 || ':delivered', $1, $2,
                now(), jsonb_build_object('job_id', $1), false)",
    )
    .bind(job)
    .bind(batch)
    .execute(store.pool())
    .await
    .unwrap();
}

/// The callback delivery of `job`'s event: (state, last_error).
pub(crate) async fn delivery(store: &Store, job: &str) -> Option<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT d.state, d.last_error FROM webhook_deliveries d
         JOIN webhook_events e ON e.id = d.event_id
         WHERE e.job_id = $1 AND d.endpoint = 'callback'",
    )
    .bind(job)
    .fetch_optional(store.pool())
    .await
    .unwrap()
}

/// Runs `dispatcher` until `done` holds for `job`'s delivery, or fails after `limit`.
pub(crate) async fn run_until(
    store: &Store,
    dispatcher: Dispatcher,
    job: &str,
    limit: Duration,
    done: impl Fn(&(String, Option<String>)) -> bool,
) -> (String, Option<String>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(dispatcher.run(Arc::new(true.into()), stop.clone()));
    let deadline = tokio::time::Instant::now() + limit;
    let last = loop {
        let d = delivery(store, job).await;
        if let Some(d) = d.as_ref().filter(|d| done(d)) {
            break d.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{job}: the delivery did not get there within {limit:?}; last: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.cancel();
    task.await.unwrap();
    last
}

#[tokio::test]
async fn an_allowed_name_rebound_to_loopback_is_not_connected_to() {
    bounded("rebinding", Duration::from_secs(60), async {
        let (store, _) =
            mailpipe_common::testkit::test_store("sec-rebind", CancellationToken::new()).await;
        let dir = tempfile::tempdir().unwrap();
        let (port, connections) = counting_listener().await;
        let url = format!("https://hooks.test:{port}/hook");
        let allowed = vec![format!("hooks.test:{port}")];
        let dns = Arc::new(Rebinding {
            answer: Mutex::new("203.0.113.7".parse().unwrap()),
            asked: AtomicUsize::new(0),
        });

        // At submission the name resolves to a public address: accepted.
        let strict = webhooks(dir.path(), &allowed, false);
        strict
            .policy
            .check_and_resolve(&url, dns.as_ref())
            .await
            .unwrap();
        // Then it is rebound to loopback, before the call.
        *dns.answer.lock().unwrap() = "127.0.0.1".parse().unwrap();
        assert!(
            strict
                .policy
                .check_and_resolve(&url, dns.as_ref())
                .await
                .unwrap_err()
                .contains("loopback")
        );

        // Control: with loopback allowed (tests' setting), the call connects to the
        // address the resolver gave (hooks.test exists nowhere else).
        event(&store, "b-control", "j-control", &url).await;
        let lenient = Dispatcher::with_lookup(
            store.clone(),
            webhooks(dir.path(), &allowed, true),
            dns.clone(),
        )
        .unwrap();
        run_until(&store, lenient, "j-control", Duration::from_secs(20), |d| {
            d.1.is_some()
        })
        .await;
        let made = connections.load(Ordering::SeqCst);
        assert!(made >= 1, "the control call never reached the listener");

        // Loopback not allowed: the rebound name is refused at the call, nothing connects.
        event(&store, "b-rebound", "j-rebound", &url).await;
        let asked = dns.asked.load(Ordering::SeqCst);
        let dispatcher = Dispatcher::with_lookup(store.clone(), strict, dns.clone()).unwrap();
        let (state, error) = run_until(
            &store,
            dispatcher,
            "j-rebound",
            Duration::from_secs(20),
            |d| d.1.is_some(),
        )
        .await;
        assert_eq!(state, "pending", "tried again later: {error:?}");
        let error = error.unwrap();
        assert!(
            error.contains("127.0.0.1") && error.contains("loopback"),
            "{error}"
        );
        assert!(
            dns.asked.load(Ordering::SeqCst) > asked,
            "the call did not resolve the name again"
        );
        assert_eq!(
            connections.load(Ordering::SeqCst),
            made,
            "a callback connected to a loopback address"
        );
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_delivery_whose_host_left_the_allow_list_is_dropped_not_called() {
    bounded("host removed", Duration::from_secs(60), async {
        let (store, _) = mailpipe_common::testkit::test_store("sec-dropped", CancellationToken::new()).await;
        let dir = tempfile::tempdir().unwrap();
        let (port, connections) = counting_listener().await;
        let dns = Arc::new(Rebinding {
            answer: Mutex::new("127.0.0.1".parse().unwrap()),
            asked: AtomicUsize::new(0),
        });
        // Fanned out while the host was allowed (before a restart with a new list).
        for (job, url) in [
            ("j-removed", format!("https://hooks.test:{port}/hook")),
            ("j-port", format!("http://127.0.0.1:{port}/hook")),
        ] {
            let batch = format!("b-{job}");
            event(&store, &batch, job, &url).await;
            sqlx::query(
                "INSERT INTO webhook_deliveries (event_id, endpoint, url, expires_at)
                 SELECT id, 'callback', $2, now() + interval '1 hour' FROM webhook_events WHERE job_id = $1",
            )
            .bind(job)
            .bind(&url)
            .execute(store.pool())
            .await
            .unwrap();
            sqlx::query("UPDATE webhook_events SET fanned_out = true WHERE job_id = $1")
                .bind(job)
                .execute(store.pool())
                .await
                .unwrap();
        }
        // Now: hooks.test is gone from the list, and 127.0.0.1 only on another port.
        let allowed = vec!["other.test".to_owned(), "127.0.0.1:1".to_owned()];
        let dispatcher = Dispatcher::with_lookup(store.clone(), webhooks(dir.path(), &allowed, true), dns.clone()).unwrap();
        let (state, error) =
            run_until(&store, dispatcher.clone(), "j-removed", Duration::from_secs(20), |d| d.0 != "pending").await;
        assert_eq!(state, "dropped", "{error:?}");
        let error = error.unwrap();
        assert!(error.contains("allowed_callback_hosts") && error.contains("hooks.test"), "{error}");
        let (state, error) =
            run_until(&store, dispatcher, "j-port", Duration::from_secs(20), |d| d.0 != "pending").await;
        assert_eq!(state, "dropped", "{error:?}");
        assert!(error.unwrap().contains(&format!("port {port}")));
        assert_eq!(connections.load(Ordering::SeqCst), 0, "a dropped delivery was called");
        store.close().await;
    })
    .await;
}
