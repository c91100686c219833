//! The plaintext socket under lettre, refusing bytes sent after the STARTTLS reply (RFC 3207 §6).
//!
//! lettre reads replies through a `BufReader` that it keeps across the TLS upgrade: whatever
//! arrived in the same segment as `220 go ahead` would later be read as if the TLS server had
//! sent it, so a man in the middle could answer EHLO, AUTH, MAIL and the message itself with
//! `250`. While armed (from STARTTLS until its reply), this stream hands lettre the reply and
//! nothing more, and fails if anything follows it before the handshake.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A STARTTLS reply longer than this is refused (lettre's own reply cap is larger, but a
/// one-line `220` is all a server needs).
const MAX_STARTTLS_REPLY: usize = 4096;

/// Shared between the session (which arms it) and the stream (owned by lettre).
#[derive(Debug, Default)]
pub(crate) struct GuardState {
    armed: AtomicBool,
    injected: AtomicBool,
    /// A `during_data` crash drill: abort at the next read (the message is written whole).
    crash_on_read: AtomicBool,
}

impl GuardState {
    /// The next reply is the STARTTLS reply: nothing may follow it before the handshake.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// A crash drill (`MAILPIPE_CRASH_AT=during_data:N`): the process aborts when this
    /// connection next reads, which is once everything written before (the message and
    /// its final `.`) is in the socket and the reply is awaited.
    pub fn crash_on_next_read(&self) {
        self.crash_on_read.store(true, Ordering::SeqCst);
    }

    /// Did the server send data after its STARTTLS reply?
    pub fn injected(&self) -> bool {
        self.injected.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
pub(crate) struct GuardedStream {
    inner: TcpStream,
    state: Arc<GuardState>,
    /// Read while armed and not yet handed to lettre.
    pending: Vec<u8>,
}

impl GuardedStream {
    pub fn new(inner: TcpStream, state: Arc<GuardState>) -> Self {
        Self {
            inner,
            state,
            pending: Vec::new(),
        }
    }

    fn hand_over(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.drain(..n);
    }
}

/// The end (exclusive) of the first complete reply in `bytes`: its last line is the first
/// whose code is followed by a space (or by nothing).
fn reply_end(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = bytes[start..].iter().position(|&b| b == b'\n') {
        let line = &bytes[start..start + nl + 1];
        start += nl + 1;
        if line.get(3) != Some(&b'-') {
            return Some(start);
        }
    }
    None
}

fn injection() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the server sent data after its STARTTLS reply, before the TLS handshake (RFC 3207 \u{a7}6 response injection)",
    )
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.crash_on_read.load(Ordering::Relaxed) {
            crate::send::drill::abort_at(crate::send::drill::CrashPoint::DuringData);
        }
        if !this.state.armed.load(Ordering::SeqCst) {
            if !this.pending.is_empty() {
                this.hand_over(buf);
                return Poll::Ready(Ok(()));
            }
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        loop {
            if let Some(end) = reply_end(&this.pending) {
                // Data in the same read, or already waiting in the socket, is injected.
                let mut probe = [0u8; 1];
                let waiting = matches!(this.inner.try_read(&mut probe), Ok(n) if n > 0);
                if this.pending.len() > end || waiting {
                    this.state.injected.store(true, Ordering::SeqCst);
                    return Poll::Ready(Err(injection()));
                }
                this.state.armed.store(false, Ordering::SeqCst);
                this.hand_over(buf);
                return Poll::Ready(Ok(()));
            }
            if this.pending.len() > MAX_STARTTLS_REPLY {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "STARTTLS reply too long",
                )));
            }
            let mut chunk = [0u8; 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: lettre sees what there is, then the end.
                this.state.armed.store(false, Ordering::SeqCst);
                this.hand_over(buf);
                return Poll::Ready(Ok(()));
            }
            this.pending.extend_from_slice(read.filled());
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for GuardedStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_ends_at_its_last_line() {
        assert_eq!(reply_end(b"220 go ahead\r\n"), Some(14));
        assert_eq!(reply_end(b"220-a\r\n220 b\r\n250 x\r\n"), Some(14));
        assert_eq!(reply_end(b"220\r\n"), Some(5));
        assert_eq!(reply_end(b"220-a\r\n220 b"), None);
        assert_eq!(reply_end(b""), None);
    }
}
