//! The connection's byte stream (plain TCP, then TLS after STARTTLS): bounded line reading
//! and reply buffering that is flushed only when the client has nothing more pipelined.

use std::io;

use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};

/// One line read from the client.
#[derive(Debug)]
pub(crate) enum Line {
    /// The line including its terminator.
    Complete(Vec<u8>),
    /// The line exceeded the limit; it has been consumed and discarded.
    TooLong,
    Eof,
}

pub(crate) struct Conn {
    reader: BufReader<Stream>,
    out: Vec<u8>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("pending_out", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl Conn {
    pub fn new(io: Stream) -> Self {
        Self {
            reader: BufReader::with_capacity(64 * 1024, io),
            out: Vec::with_capacity(1024),
        }
    }

    /// Queues a single-line reply.
    pub fn queue(&mut self, code: u16, text: &str) {
        self.out
            .extend_from_slice(format!("{code} {text}\r\n").as_bytes());
    }

    /// Queues a multi-line reply (`250-a`, `250-b`, `250 c`).
    pub fn queue_multi(&mut self, code: u16, lines: &[String]) {
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("{code}{sep}{l}\r\n").as_bytes());
        }
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let w = self.reader.get_mut();
            w.write_all(&self.out).await?;
            w.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads one line of at most `max` bytes. Pending replies are sent first unless the
    /// client has already pipelined more input (RFC 2920: reply in batches).
    pub async fn read_line(&mut self, max: usize) -> io::Result<Line> {
        if self.reader.buffer().is_empty() {
            self.flush().await?;
        }
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                // EOF; a partial last line without terminator is not a command.
                return Ok(Line::Eof);
            }
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..=i], true),
                None => (buf, false),
            };
            let n = chunk.len();
            if !too_long {
                if line.len() + n > max {
                    too_long = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            self.reader.consume(n);
            if done {
                return Ok(if too_long {
                    Line::TooLong
                } else {
                    Line::Complete(line)
                });
            }
        }
    }

    /// The raw stream for the TLS handshake. Input the client pipelined after STARTTLS is
    /// discarded, as RFC 3207 requires (it would be a plaintext injection).
    pub fn into_inner(self) -> Stream {
        self.reader.into_inner()
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.reader.get_mut().shutdown().await;
    }
}

/// The connection's transport: plain TCP until STARTTLS, then TLS over it. An enum rather
/// than a boxed trait object so the plain socket can still be peeked before the handshake.
pub(crate) enum Stream {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            Stream::Tls($s) => {
                let $s = std::pin::Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// Peeks at the first TLS record and tells whether the ClientHello's highest offered
/// version is below TLS 1.2 (legacy_version 0x0301/0x0302; TLS 1.2 and 1.3 clients both
/// send 0x0303 there). `None` when it cannot tell (not TLS, too slow).
pub(crate) async fn offers_only_old_tls(tcp: &tokio::net::TcpStream) -> Option<bool> {
    let mut buf = [0u8; 11];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if n >= buf.len() {
            break;
        }
        // Partial record: wait a little for the rest instead of spinning on peek.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
    // record type 22 (handshake), handshake type 1 (ClientHello) at offset 5.
    if buf[0] != 0x16 || buf[5] != 0x01 {
        return None;
    }
    let version = u16::from_be_bytes([buf[9], buf[10]]);
    Some(version < 0x0303)
}
