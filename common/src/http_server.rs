//! The HTTP accept loop every binary serves with, bounded so that clients without a
//! token cannot make it unreachable: a cap on open connections (further clients wait in
//! the kernel's backlog, holding no descriptor of ours), a cap per client address (one
//! client's idle or half-sent connections cannot hold every slot: past its cap it is
//! refused at once), a time limit on reading a request's head (which also closes idle
//! keep-alive connections), shorter for a client that already holds many connections,
//! HTTP/1.1 only, and the descriptor limit raised to its hard limit with the cap kept
//! below it. `mailpipe_http_connections_refused_total{reason}` counts the connections
//! refused at the per-client cap (`peer_limit`) and those cut for a head not sent in time
//! (`head_timeout`).

mod peers;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Descriptors kept free for everything but client connections (broker, files, logs).
const RESERVED_FDS: u64 = 128;

/// Bounds on one HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpLimits {
    /// Client connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one client address may hold at once; one more is closed at once.
    pub max_connections_per_peer: usize,
    /// Time a client has to send a request's line and headers (and how long an idle
    /// keep-alive connection stays open).
    pub header_read_timeout: Duration,
    /// The same for a connection whose client already holds a quarter of its
    /// `max_connections_per_peer` or more: a client that opens many connections must
    /// use them.
    pub busy_peer_header_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_peer: 64,
            header_read_timeout: Duration::from_secs(30),
            busy_peer_header_read_timeout: Duration::from_secs(2),
        }
    }
}

impl HttpLimits {
    /// Connections a client may hold before its new ones get the short head deadline.
    fn busy_from(&self) -> usize {
        (self.max_connections_per_peer / 4).max(1)
    }
}

/// `mailpipe_http_connections_refused_total{reason}`: `peer_limit` (refused at the
/// per-client cap), `head_timeout` (cut: no complete request head in time).
pub static CONNECTIONS_REFUSED: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    let counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "mailpipe_http_connections_refused_total",
            "HTTP connections refused at the per-client cap or cut for a request head not sent in time",
        ),
        &["reason"],
    )
    .expect("valid metric");
    if let Err(e) = prometheus::default_registry().register(Box::new(counter.clone())) {
        tracing::warn!(error = %e, "mailpipe_http_connections_refused_total unavailable");
    }
    // Both series from the start (at 0), so a dashboard sees the metric before any refusal.
    for reason in ["peer_limit", "head_timeout"] {
        counter.with_label_values(&[reason]);
    }
    counter
});

/// Raises the soft limit on open descriptors to the hard limit (once per process is
/// enough; repeating is harmless) and returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            limit.current = limit.maximum;
            if let Err(e) = setrlimit(Resource::Nofile, limit) {
                tracing::warn!(error = %e, "cannot raise the open-file limit");
            }
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    None
}

/// `wanted`, lowered so that the connections fit under the descriptor limit.
pub fn connection_cap(wanted: usize, fd_limit: Option<u64>) -> usize {
    let fits = fd_limit.map_or(u64::MAX, |l| l.saturating_sub(RESERVED_FDS).max(16));
    wanted
        .min(usize::try_from(fits).unwrap_or(usize::MAX))
        .max(1)
}

/// Serves `router` on `listener` within `limits` until `shutdown` fires, then lets the
/// requests in flight finish (idle connections are closed at once).
pub async fn serve_bounded(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let fd_limit = raise_fd_limit();
    let cap = connection_cap(limits.max_connections, fd_limit);
    if cap < limits.max_connections {
        tracing::warn!(
            wanted = limits.max_connections,
            cap,
            ?fd_limit,
            "fewer HTTP connections than configured: the open-file limit is lower"
        );
    }
    let permits = Arc::new(Semaphore::new(cap));
    let peers = peers::PeerTable::new(limits.max_connections_per_peer);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut busy_http = http.clone();
    busy_http.header_read_timeout(
        limits
            .busy_peer_header_read_timeout
            .min(limits.header_read_timeout),
    );
    LazyLock::force(&CONNECTIONS_REFUSED);
    loop {
        // A permit first: at the cap, new clients wait in the backlog, not in our fds.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: wait for descriptors to free up instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Past its cap a client is refused at once: its slot goes to someone else.
        let Some((peer_slot, held)) = peers.try_take(peer.ip()) else {
            CONNECTIONS_REFUSED.with_label_values(&["peer_limit"]).inc();
            tracing::debug!(peer = %peer.ip(), "HTTP connection refused: the client holds its share");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = if held >= limits.busy_from() {
            &busy_http
        } else {
            &http
        };
        // Handlers that need the client's address (the console's login limit) take it
        // with axum's `ConnectInfo` extractor.
        let service = tower_layer::Layer::layer(
            &axum::Extension(axum::extract::ConnectInfo(peer)),
            router.clone(),
        );
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    CONNECTIONS_REFUSED
                        .with_label_values(&["head_timeout"])
                        .inc();
                }
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            drop(peer_slot);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_under_the_descriptor_limit() {
        assert_eq!(
            connection_cap(1024, Some(1024)),
            1024 - RESERVED_FDS as usize
        );
        assert_eq!(connection_cap(100, Some(1_048_576)), 100);
        assert_eq!(connection_cap(100, None), 100);
        assert_eq!(connection_cap(0, None), 1);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let after = raise_fd_limit();
        #[cfg(unix)]
        assert_eq!(
            after,
            rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum
        );
        let _ = after;
    }
}
