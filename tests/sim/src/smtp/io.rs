//! The connection's byte stream (plain TCP, then TLS after STARTTLS): bounded line reading
//! and reply buffering that is flushed only when the client has nothing more pipelined.

use std::io;

use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};

/// Anything a session can run over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One line read from the client.
#[derive(Debug)]
pub(crate) enum Line {
    /// The line including its terminator.
    Line(Vec<u8>),
    /// The line exceeded the limit; it has been consumed and discarded.
    TooLong,
    Eof,
}

pub(crate) struct Conn {
    reader: BufReader<Box<dyn Io>>,
    out: Vec<u8>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("pending_out", &self.out.len()).finish_non_exhaustive()
    }
}

impl Conn {
    pub fn new(io: Box<dyn Io>) -> Self {
        Self { reader: BufReader::with_capacity(64 * 1024, io), out: Vec::with_capacity(1024) }
    }

    /// Queues a single-line reply.
    pub fn queue(&mut self, code: u16, text: &str) {
        self.out.extend_from_slice(format!("{code} {text}\r\n").as_bytes());
    }

    /// Queues a multi-line reply (`250-a`, `250-b`, `250 c`).
    pub fn queue_multi(&mut self, code: u16, lines: &[String]) {
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.out.extend_from_slice(format!("{code}{sep}{l}\r\n").as_bytes());
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
                return Ok(if too_long { Line::TooLong } else { Line::Line(line) });
            }
        }
    }

    /// The raw stream for the TLS handshake. Input the client pipelined after STARTTLS is
    /// discarded, as RFC 3207 requires (it would be a plaintext injection).
    pub fn into_inner(self) -> Box<dyn Io> {
        self.reader.into_inner()
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.reader.get_mut().shutdown().await;
    }
}
