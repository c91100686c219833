//! The SMTP submission listener (the smtp.office365.com:587 stand-in).

pub(crate) mod auth;
pub(crate) mod error_throttle;
pub(crate) mod io;
pub(crate) mod limits;
pub(crate) mod parse;
#[cfg(test)]
mod parse_props;
pub(crate) mod replies;
pub(crate) mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// Accepts connections until cancelled; then every open session is aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    sessions.spawn(session::handle(Arc::clone(&shared), tcp, peer));
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "smtp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    sessions.abort_all();
}
