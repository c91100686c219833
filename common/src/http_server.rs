//! The HTTP accept loop every binary serves with, bounded so that clients without a
//! token cannot make it unreachable: a cap on open connections (further clients wait in
//! the kernel's backlog, holding no descriptor of ours), a time limit on reading a
//! request's head (which also closes idle keep-alive connections), HTTP/1.1 only, and the
//! descriptor limit raised to its hard limit with the cap kept below it.

use std::sync::Arc;
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
    /// Time a client has to send a request's line and headers (and how long an idle
    /// keep-alive connection stays open).
    pub header_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

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
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        // A permit first: at the cap, new clients wait in the backlog, not in our fds.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: wait for descriptors to free up instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
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
