//! The HTTP surface every binary serves: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive) and `/readyz` (the broker connection and topology are up, plus
//! whatever the stage adds: the database and its schema). The checks read answers cached
//! by background probes (`Broker::spawn_probe`, `Store::spawn_probe`), so `/readyz` never
//! waits on the broker or the database. Stages may merge their own routes (ingest's API).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::amqp::{Broker, WeakBroker};
use crate::http_server::{HttpLimits, serve_bounded};

/// A readiness check; all must pass for `/readyz` to answer 200.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The broker whose connection `mailpipe_rabbitmq_connected` reports: the one of the last
/// [`ops_router`] built (a process has one). Weak, so the metric keeps no broker alive.
static REPORTED_BROKER: Mutex<Option<WeakBroker>> = Mutex::new(None);

/// `mailpipe_rabbitmq_connected`: read from the broker at each scrape, so it is as current
/// as `/readyz` (1 while the connection is up and the last broker operation worked).
struct BrokerConnected {
    gauge: prometheus::IntGauge,
}

impl BrokerConnected {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            gauge: prometheus::IntGauge::new(
                "mailpipe_rabbitmq_connected",
                "1 while connected to RabbitMQ with the topology in place, 0 otherwise (connecting, reconnecting, refused)",
            )?,
        })
    }
}

impl prometheus::core::Collector for BrokerConnected {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let connected = REPORTED_BROKER
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(WeakBroker::upgrade)
            .is_some_and(|b| b.is_connected());
        self.gauge.set(i64::from(connected));
        self.gauge.collect()
    }
}

/// The metrics every binary exports besides its own: the process's (`process_*`: CPU,
/// resident memory, open file descriptors, start time; Linux),
/// `mailpipe_build_info{version, binary}` and `mailpipe_rabbitmq_connected`. Registered
/// once, by the first router built.
fn register_process_metrics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The default registry carries the process collector already (prometheus'
        // `process` feature, on Linux): registering it again only fails.
        let registry = prometheus::default_registry();
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let info = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "mailpipe_build_info",
                "Always 1; the labels say which build runs (version, binary)",
            ),
            &["version", "binary"],
        )
        .expect("valid metric");
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), binary.as_str()])
            .set(1);
        if let Err(e) = registry.register(Box::new(info)) {
            tracing::warn!(error = %e, "mailpipe_build_info unavailable");
        }
        if let Err(e) = BrokerConnected::new().and_then(|gauge| registry.register(Box::new(gauge)))
        {
            tracing::warn!(error = %e, "mailpipe_rabbitmq_connected unavailable");
        }
    });
}

/// The routes `/metrics`, `/healthz`, `/readyz`. `/readyz` checks `broker` first, then
/// `checks`; `mailpipe_rabbitmq_connected` reports `broker`.
pub fn ops_router(broker: &Broker, checks: Vec<ReadyCheck>) -> Router {
    register_process_metrics();
    *REPORTED_BROKER.lock().unwrap_or_else(|e| e.into_inner()) = Some(broker.downgrade());
    let checks: Vec<ReadyCheck> = {
        let broker = broker.clone();
        std::iter::once(Arc::new(move || broker.readiness()) as ReadyCheck)
            .chain(checks)
            .collect()
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let checks = checks.clone();
                async move {
                    let failing: Vec<String> = checks.iter().filter_map(|c| c().err()).collect();
                    if failing.is_empty() {
                        (StatusCode::OK, "ready\n".to_owned())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}\n", failing.join("; ")),
                        )
                    }
                }
            }),
        )
}

async fn metrics() -> impl IntoResponse {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut buf) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string().into_bytes(),
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        buf,
    )
}

/// A bound HTTP server; `addr` is the real address (port 0 picks a free one).
#[derive(Debug)]
pub struct HttpServer {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds now (so the caller learns the port and bind errors early) and serves until
/// `shutdown` fires, within the default [`HttpLimits`].
pub async fn serve(
    listen: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<HttpServer> {
    serve_with_limits(listen, router, HttpLimits::default(), shutdown).await
}

/// [`serve`] within the given limits.
pub async fn serve_with_limits(
    listen: SocketAddr,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<HttpServer> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTP listening (/metrics, /healthz, /readyz)");
    let task = tokio::spawn(serve_bounded(listener, router, limits, shutdown));
    Ok(HttpServer { addr, task })
}
