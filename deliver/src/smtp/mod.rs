//! One SMTP client-submission session with Exchange: connect, STARTTLS (TLS 1.2+, the
//! certificate verified), AUTH, then messages. Every step runs under a timeout (lettre's
//! async connection has none on reads and writes), and each reply is kept whole (code,
//! enhanced code, text) so `classify` can judge it. Recipients are sent one RCPT at a
//! time so a refusal of one recipient is recorded without failing the others. A reply after
//! which the server closes (421) or a lost connection retires the session.

pub mod classify;
mod starttls_guard;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, MailBodyParameter, MailParameter};
use mailpipe_common::contract::SmtpReply;
use mailpipe_common::domain::EmailAddress;

use crate::smtp::classify::{MailboxProblem, ReplyClass, classify};
use starttls_guard::{GuardState, GuardedStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpStage {
    Connect,
    StartTls,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    Message,
}

impl SmtpStage {
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpStage::Connect => "connect",
            SmtpStage::StartTls => "starttls",
            SmtpStage::Auth => "auth",
            SmtpStage::MailFrom => "mail_from",
            SmtpStage::RcptTo => "rcpt_to",
            SmtpStage::Data => "data",
            SmtpStage::Message => "message",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SmtpFailure {
    #[error("server refused at {}: {reply}", stage.as_str())]
    Reply { stage: SmtpStage, reply: SmtpReply },
    #[error("no answer within the timeout at {}", stage.as_str())]
    Timeout { stage: SmtpStage },
    #[error("connection failed at {}: {message}", stage.as_str())]
    Network { stage: SmtpStage, message: String },
    /// The server broke the protocol in a way that could be an attack (data injected after
    /// the STARTTLS reply): the connection is closed, nothing is sent.
    #[error("protocol violation at {}: {message}", stage.as_str())]
    Protocol { stage: SmtpStage, message: String },
    /// TLS could not be established or verified, or STARTTLS is not offered: we never
    /// authenticate without it, so this endpoint is unusable until fixed.
    #[error("no secure channel at {}: {message}", stage.as_str())]
    Insecure { stage: SmtpStage, message: String },
    /// The mailbox's lease (or the send's time budget) ended before DATA: nothing was
    /// handed over, and the session is closed, since another process may own the mailbox now.
    #[error("not sent: the mailbox's lease ended before the data")]
    Fenced,
}

impl SmtpFailure {
    pub fn class(&self) -> ReplyClass {
        match self {
            SmtpFailure::Reply { reply, .. } => classify(reply),
            SmtpFailure::Insecure { .. } => ReplyClass::Mailbox(MailboxProblem::Auth),
            SmtpFailure::Timeout { .. }
            | SmtpFailure::Network { .. }
            | SmtpFailure::Protocol { .. }
            | SmtpFailure::Fenced => ReplyClass::Transient,
        }
    }

    pub fn stage(&self) -> SmtpStage {
        match self {
            SmtpFailure::Reply { stage, .. }
            | SmtpFailure::Timeout { stage }
            | SmtpFailure::Network { stage, .. }
            | SmtpFailure::Protocol { stage, .. }
            | SmtpFailure::Insecure { stage, .. } => *stage,
            SmtpFailure::Fenced => SmtpStage::Data,
        }
    }

    /// After this the connection is gone or not to be trusted: a 421 (RFC 5321 3.8: the
    /// server closes the channel), a timeout, a lost connection, a protocol violation.
    pub fn ends_session(&self) -> bool {
        match self {
            SmtpFailure::Reply { reply, .. } => reply.code == 421,
            _ => true,
        }
    }

    /// The first command on a reused idle session failed because the server had closed
    /// (or abandoned) it: nothing reached the server, so the message is not at fault.
    pub fn stale_session(&self) -> bool {
        match self {
            SmtpFailure::Timeout { stage } | SmtpFailure::Network { stage, .. } => {
                *stage == SmtpStage::MailFrom
            }
            SmtpFailure::Reply { stage, reply } => {
                *stage == SmtpStage::MailFrom && reply.code == 421
            }
            _ => false,
        }
    }

    /// Could the server have accepted the message? Only a failure that leaves us blind
    /// after the message was handed over (timeout or dropped connection while waiting for
    /// the final reply). Throttling counts such a send as made.
    pub fn maybe_accepted(&self) -> bool {
        matches!(
            self,
            SmtpFailure::Timeout {
                stage: SmtpStage::Message
            } | SmtpFailure::Network {
                stage: SmtpStage::Message,
                ..
            }
        )
    }

    /// The reply for events: the server's, or a synthetic 4xx describing the failure.
    pub fn reply(&self) -> SmtpReply {
        match self {
            SmtpFailure::Reply { reply, .. } => reply.clone(),
            other => SmtpReply {
                code: 0,
                enhanced: None,
                text: other.to_string(),
            },
        }
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct SmtpEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: TlsParameters,
    pub hello: ClientId,
    pub timeout: Duration,
}

impl std::fmt::Debug for SmtpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// What the server did with one message.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// The final reply to the message data (or to the last RCPT when all were refused).
    pub reply: SmtpReply,
    pub accepted: Vec<EmailAddress>,
    pub refused: Vec<(EmailAddress, SmtpReply)>,
}

impl SendReport {
    pub fn delivered(&self) -> bool {
        !self.accepted.is_empty() && self.reply.is_positive()
    }
}

pub struct SmtpSession {
    conn: AsyncSmtpConnection,
    timeout: Duration,
    /// The server's answer to AUTH (check-pool shows it).
    auth_reply: SmtpReply,
    /// Set once the server closed the session or can no longer be trusted on it.
    retired: bool,
    /// The socket's guard (STARTTLS injection; the `during_data` crash drill).
    guard: Arc<GuardState>,
}

impl std::fmt::Debug for SmtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SmtpSession")
    }
}

fn lettre_failure(stage: SmtpStage, e: lettre::transport::smtp::Error) -> SmtpFailure {
    if let Some(code) = e.status() {
        let full = e.to_string();
        // lettre formats "permanent error (550): <reply text>".
        let text = full
            .split_once("): ")
            .map(|(_, t)| t)
            .unwrap_or(&full)
            .trim()
            .to_owned();
        return SmtpFailure::Reply {
            stage,
            reply: SmtpReply::new(u16::from(code), text),
        };
    }
    if e.is_timeout() {
        SmtpFailure::Timeout { stage }
    } else if e.is_tls() {
        SmtpFailure::Insecure {
            stage,
            message: e.to_string(),
        }
    } else {
        SmtpFailure::Network {
            stage,
            message: e.to_string(),
        }
    }
}

async fn step<T>(
    timeout: Duration,
    stage: SmtpStage,
    fut: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, SmtpFailure> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(SmtpFailure::Timeout { stage }),
        Ok(r) => r.map_err(|e| lettre_failure(stage, e)),
    }
}

/// Envelope addresses must be ASCII: ingest turns IDN domains into punycode and refuses
/// non-ASCII local parts, so anything else here is refused, never sent as raw UTF-8 (that
/// would need SMTPUTF8, which mailpipe does not use).
pub fn check_envelope_address(address: &str, stage: SmtpStage) -> Result<(), SmtpFailure> {
    if address.is_ascii() {
        return Ok(());
    }
    Err(SmtpFailure::Reply {
        stage,
        reply: SmtpReply::new(
            553,
            format!(
                "5.6.7 address {address} has non-ASCII characters: mailpipe sends ASCII envelope addresses only (IDN domains as punycode), never raw UTF-8 without SMTPUTF8"
            ),
        ),
    })
}

fn lettre_address(a: &EmailAddress, stage: SmtpStage) -> Result<lettre::Address, SmtpFailure> {
    check_envelope_address(a.as_str(), stage)?;
    a.as_str().parse().map_err(|e| SmtpFailure::Reply {
        stage,
        reply: SmtpReply::new(
            553,
            format!("5.1.3 address {a} not accepted by the SMTP client: {e}"),
        ),
    })
}

impl SmtpSession {
    /// Connects in clear, upgrades with STARTTLS, then authenticates. AUTH is never sent
    /// before TLS is up: a server that does not offer STARTTLS is refused.
    pub async fn open(
        ep: &SmtpEndpoint,
        mechanism: Mechanism,
        credentials: &Credentials,
    ) -> Result<Self, SmtpFailure> {
        // Our own socket, for TCP_NODELAY: SMTP is small request/reply exchanges, and with
        // Nagle on, each command can wait out the peer's delayed ACK (~40 ms per step).
        let tcp = match tokio::time::timeout(
            ep.timeout,
            tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)),
        )
        .await
        {
            Err(_) => {
                return Err(SmtpFailure::Timeout {
                    stage: SmtpStage::Connect,
                });
            }
            Ok(Err(e)) => {
                return Err(SmtpFailure::Network {
                    stage: SmtpStage::Connect,
                    message: format!("{}:{}: {e}", ep.host, ep.port),
                });
            }
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let guard = Arc::new(GuardState::default());
        let mut conn = step(
            ep.timeout,
            SmtpStage::Connect,
            AsyncSmtpConnection::connect_with_transport(
                Box::new(GuardedStream::new(tcp, guard.clone())),
                &ep.hello,
            ),
        )
        .await?;
        if !conn.can_starttls() {
            conn.abort().await;
            return Err(SmtpFailure::Insecure {
                stage: SmtpStage::StartTls,
                message: format!("{}:{} does not offer STARTTLS", ep.host, ep.port),
            });
        }
        guard.arm();
        let upgraded = step(
            ep.timeout,
            SmtpStage::StartTls,
            conn.starttls(ep.tls.clone(), &ep.hello),
        )
        .await;
        if guard.injected() {
            conn.abort().await;
            return Err(SmtpFailure::Protocol {
                stage: SmtpStage::StartTls,
                message: format!(
                    "{}:{} sent data after its STARTTLS reply, before the TLS handshake (RFC 3207 \u{a7}6 response injection); connection closed",
                    ep.host, ep.port
                ),
            });
        }
        upgraded.map_err(|e| match e {
            SmtpFailure::Network { stage, message } => SmtpFailure::Insecure { stage, message },
            other => other,
        })?;
        if !conn.is_encrypted() {
            conn.abort().await;
            return Err(SmtpFailure::Insecure {
                stage: SmtpStage::StartTls,
                message: "STARTTLS did not encrypt the connection".into(),
            });
        }
        let auth = step(
            ep.timeout,
            SmtpStage::Auth,
            conn.auth(&[mechanism], credentials),
        )
        .await?;
        Ok(Self {
            conn,
            timeout: ep.timeout,
            auth_reply: SmtpReply::new(
                u16::from(auth.code()),
                auth.message().collect::<Vec<_>>().join(" "),
            ),
            retired: false,
            guard,
        })
    }

    /// Sends one message: MAIL FROM, one RCPT per recipient (refusals collected), DATA.
    pub async fn send(
        &mut self,
        mail_from: &EmailAddress,
        recipients: &[EmailAddress],
        message: &[u8],
        data_by: Instant,
    ) -> Result<SendReport, SmtpFailure> {
        let result = self
            .transaction(mail_from, recipients, message, data_by)
            .await;
        if let Err(failure) = &result
            && failure.ends_session()
        {
            self.retired = true;
        }
        result
    }

    async fn transaction(
        &mut self,
        mail_from: &EmailAddress,
        recipients: &[EmailAddress],
        message: &[u8],
        data_by: Instant,
    ) -> Result<SendReport, SmtpFailure> {
        let mut params = Vec::new();
        if !message.is_ascii() {
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        // Every address is checked before MAIL, so a refusal never leaves a transaction open.
        let from = lettre_address(mail_from, SmtpStage::MailFrom)?;
        let rcpts = recipients
            .iter()
            .map(|r| lettre_address(r, SmtpStage::RcptTo))
            .collect::<Result<Vec<_>, _>>()?;
        step(
            self.timeout,
            SmtpStage::MailFrom,
            self.conn.command(Mail::new(Some(from), params)),
        )
        .await?;

        let mut accepted = Vec::with_capacity(recipients.len());
        let mut refused = Vec::new();
        for (rcpt, address) in recipients.iter().zip(rcpts) {
            match step(
                self.timeout,
                SmtpStage::RcptTo,
                self.conn.command(Rcpt::new(address, vec![])),
            )
            .await
            {
                Ok(_) => accepted.push(rcpt.clone()),
                // This recipient can never be delivered: note it and go on with the rest.
                Err(SmtpFailure::Reply { reply, .. })
                    if classify(&reply) == ReplyClass::MessagePermanent =>
                {
                    refused.push((rcpt.clone(), reply));
                }
                Err(other) => {
                    if !other.ends_session() {
                        self.reset().await;
                    }
                    return Err(other);
                }
            }
        }
        if accepted.is_empty() {
            self.reset().await;
            let reply = refused
                .last()
                .map(|(_, r)| r.clone())
                .unwrap_or_else(|| SmtpReply::new(554, "5.5.1 no valid recipients"));
            return Ok(SendReport {
                reply,
                accepted,
                refused,
            });
        }
        // The fence: past the mailbox's lease (another process may own it by now) or the
        // send's budget (the ledger counts an unclosed send at its deadline), no data goes out.
        if Instant::now() >= data_by {
            return Err(SmtpFailure::Fenced);
        }
        if let Err(failure) = step(self.timeout, SmtpStage::Data, self.conn.command(Data)).await {
            // Refused before the data: the transaction is still open on the server.
            if !failure.ends_session() {
                self.reset().await;
            }
            return Err(failure);
        }
        // Again after the 354: the wait for it may have outlived the lease. Leaving now,
        // without the final `.`, makes the server drop the message (the caller closes
        // the connection).
        if Instant::now() >= data_by {
            return Err(SmtpFailure::Fenced);
        }
        if crate::send::drill::armed(crate::send::drill::CrashPoint::DuringData) {
            self.guard.crash_on_next_read();
        }
        let response = step(self.timeout, SmtpStage::Message, self.conn.message(message)).await?;
        let text = response.message().collect::<Vec<_>>().join(" ");
        Ok(SendReport {
            reply: SmtpReply::new(u16::from(response.code()), text),
            accepted,
            refused,
        })
    }

    async fn reset(&mut self) {
        if self.is_usable() {
            let _ = tokio::time::timeout(self.timeout, self.conn.command(Rset)).await;
        }
    }

    /// The server's reply to AUTH (`235 2.7.0 Authentication successful`).
    pub fn auth_reply(&self) -> &SmtpReply {
        &self.auth_reply
    }

    /// Worth keeping for the next message.
    pub fn is_usable(&self) -> bool {
        !self.retired && !self.conn.has_broken()
    }

    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.quit()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_envelope_addresses_are_refused_permanently_naming_why() {
        assert!(check_envelope_address("a@b.example", SmtpStage::RcptTo).is_ok());
        assert!(check_envelope_address("a@xn--bcher-kva.example", SmtpStage::RcptTo).is_ok());
        for address in ["jörg@example.com", "a@bücher.example"] {
            let refused = check_envelope_address(address, SmtpStage::RcptTo)
                .expect_err("non-ASCII is never sent");
            assert_eq!(refused.class(), ReplyClass::MessagePermanent, "{refused}");
            assert_eq!(refused.stage(), SmtpStage::RcptTo);
            let text = refused.to_string();
            assert!(
                text.contains(address) && text.contains("non-ASCII"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_421_or_a_lost_connection_ends_the_session_and_other_replies_do_not() {
        let reply = |code, text| SmtpFailure::Reply {
            stage: SmtpStage::Message,
            reply: SmtpReply::new(code, text),
        };
        assert!(reply(421, "4.3.2 Service not available").ends_session());
        assert!(!reply(451, "4.7.0 Temporary server error").ends_session());
        assert!(!reply(550, "5.1.1 not found").ends_session());
        let timeout = SmtpFailure::Timeout {
            stage: SmtpStage::Message,
        };
        assert!(timeout.ends_session() && timeout.maybe_accepted());
        // Only a failure before anything reached the server marks a stale idle session.
        assert!(
            SmtpFailure::Network {
                stage: SmtpStage::MailFrom,
                message: "incomplete response".into()
            }
            .stale_session()
        );
        assert!(!timeout.stale_session());
        assert!(
            !SmtpFailure::Reply {
                stage: SmtpStage::MailFrom,
                reply: SmtpReply::new(550, "5.7.60 send as denied"),
            }
            .stale_session()
        );
    }
}
