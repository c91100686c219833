//! One SMTP connection: the command state machine of Exchange Online's client submission
//! endpoint (STARTTLS, AUTH, MAIL/RCPT/DATA with its policy checks).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{Limits, defaults};
use crate::directory::Mailbox;
use crate::faults::DataEndFault;
use crate::records::{AcceptedMessage, AuthFailure, Stage};
use crate::smtp::auth;
use crate::smtp::io::{Conn, Line, Stream, offers_only_old_tls};
use crate::smtp::limits::{ConnectionSlot, Verdict};
use crate::smtp::parse::{Command, header_from_addresses, parse_command};
use crate::smtp::replies::{self, Reply};
use crate::state::Shared;

/// Longest line accepted inside DATA; longer lines make the message fail (RFC 5321 allows
/// 1000, real mail has longer ones, so be generous but bounded).
const MAX_DATA_LINE: usize = 1024 * 1024;
/// TLS handshakes that take longer than this are abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the command loop does after a command.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Upgrade the stream to TLS now (the 220 has been queued).
    StartTls,
    /// Send what is queued, then close.
    Close,
    /// Close at once, without sending anything more (fault injection).
    Drop,
}

struct Authed {
    mailbox: Mailbox,
    limits: Limits,
    /// Held for the life of the authenticated connection; counts against max_connections.
    _slot: ConnectionSlot,
}

struct Txn {
    from: String,
    rcpts: Vec<String>,
}

struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    tls: bool,
    helo: Option<String>,
    auth: Option<Authed>,
    txn: Option<Txn>,
}

/// Serves one accepted TCP connection until it closes.
pub(crate) async fn handle(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    shared.metrics.connections_total.inc();
    shared.metrics.connections_active.inc();
    let mut session = Session {
        shared: Arc::clone(&shared),
        peer,
        tls: false,
        helo: None,
        auth: None,
        txn: None,
    };
    if let Err(e) = session.run(Conn::new(Stream::Tcp(tcp))).await {
        tracing::debug!(%peer, error = %e, "smtp session ended with an I/O error");
    }
    shared.metrics.connections_active.dec();
}

impl Session {
    fn host(&self) -> String {
        self.shared.hostname().to_owned()
    }

    fn mailbox_name(&self) -> Option<String> {
        self.auth.as_ref().map(|a| a.mailbox.address.clone())
    }

    async fn run(&mut self, mut conn: Conn) -> io::Result<()> {
        self.reply(
            &mut conn,
            Stage::Connect,
            "",
            replies::greeting(&self.host()),
        )
        .await;
        loop {
            let max = self.shared.config.max_line_length;
            let line =
                match tokio::time::timeout(self.shared.idle_timeout(), conn.read_line(max)).await {
                    Err(_) => {
                        self.reply(&mut conn, Stage::Other, "", replies::idle_timeout())
                            .await;
                        conn.shutdown().await;
                        return Ok(());
                    }
                    Ok(r) => r?,
                };
            let line = match line {
                Line::Eof => return Ok(()),
                Line::TooLong => {
                    self.reply(&mut conn, Stage::Other, "", replies::line_too_long())
                        .await;
                    continue;
                }
                Line::Complete(l) => l,
            };
            let text = String::from_utf8_lossy(&line);
            let verb = text
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let flow = self
                .dispatch(&mut conn, &verb, parse_command(&text))
                .await?;
            match flow {
                Flow::Continue => {}
                Flow::Close => {
                    conn.shutdown().await;
                    return Ok(());
                }
                Flow::Drop => return Ok(()),
                Flow::StartTls => {
                    conn.flush().await?;
                    let Stream::Tcp(tcp) = conn.into_inner() else {
                        // STARTTLS is refused once TLS is up, so this cannot happen.
                        return Ok(());
                    };
                    let old_tls = offers_only_old_tls(&tcp).await == Some(true);
                    let acceptor = TlsAcceptor::from(Arc::clone(&self.shared.tls));
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            conn = Conn::new(Stream::Tls(Box::new(tls)));
                            // RFC 3207: forget everything learnt before the handshake.
                            self.tls = true;
                            self.helo = None;
                            self.txn = None;
                        }
                        Ok(Err(e)) => {
                            self.record_tls_failure(old_tls, &e.to_string());
                            return Ok(());
                        }
                        Err(_) => {
                            self.record_tls_failure(old_tls, "handshake timed out");
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// A failed handshake cannot be answered in SMTP (the client is speaking TLS), so it is
    /// only recorded. Exchange's equivalent for old TLS versions is 421 4.7.66.
    fn record_tls_failure(&self, old_version: bool, error: &str) {
        let reply = if old_version {
            Reply::new(
                421,
                format!(
                    "4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2. (handshake failed: {error})"
                ),
            )
        } else {
            Reply::new(0, format!("TLS handshake failed: {error}"))
        };
        self.shared
            .refuse(None, Stage::StartTls, "STARTTLS", &reply);
    }

    /// Queues a reply (after the configured slow-reply delay) and records it if it refuses.
    async fn reply(&mut self, conn: &mut Conn, stage: Stage, command: &str, r: Reply) {
        let mailbox = self.mailbox_name();
        self.reply_for(conn, mailbox.as_deref(), stage, command, r)
            .await;
    }

    async fn reply_for(
        &self,
        conn: &mut Conn,
        mailbox: Option<&str>,
        stage: Stage,
        command: &str,
        r: Reply,
    ) {
        let delay = self.shared.faults.slow_reply_ms(mailbox);
        if delay > 0 {
            conn.flush().await.ok();
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if r.code >= 400 {
            self.shared.refuse(mailbox, stage, command, &r);
        }
        conn.queue(r.code, &r.text);
    }

    async fn dispatch(&mut self, conn: &mut Conn, verb: &str, cmd: Command) -> io::Result<Flow> {
        match cmd {
            Command::Ehlo(domain) => self.ehlo(conn, domain, true).await,
            Command::Helo(domain) => self.ehlo(conn, domain, false).await,
            Command::StartTls => return Ok(self.starttls(conn).await),
            Command::Auth { mechanism, initial } => {
                return self.auth(conn, &mechanism, initial).await;
            }
            Command::Mail { from, size } => self.mail(conn, from, size).await,
            Command::Rcpt { to } => self.rcpt(conn, to).await,
            Command::Data => return self.data(conn).await,
            Command::Rset => {
                self.txn = None;
                self.reply(conn, Stage::Other, "RSET", replies::reset())
                    .await;
            }
            Command::Noop => self.reply(conn, Stage::Other, "NOOP", replies::ok()).await,
            Command::Vrfy => {
                self.reply(conn, Stage::Other, "VRFY", replies::cannot_vrfy())
                    .await
            }
            Command::Help => {
                self.reply(
                    conn,
                    Stage::Other,
                    "HELP",
                    Reply::new(214, "2.0.0 See RFC 5321"),
                )
                .await;
            }
            Command::Quit => {
                self.reply(conn, Stage::Other, "QUIT", replies::closing())
                    .await;
                return Ok(Flow::Close);
            }
            Command::Invalid => {
                let stage = stage_of(verb);
                self.reply(conn, stage, verb, replies::invalid_arguments())
                    .await;
            }
            Command::Unknown(v) => {
                self.reply(conn, Stage::Other, &v, replies::unrecognized(&v))
                    .await
            }
        }
        Ok(Flow::Continue)
    }

    async fn ehlo(&mut self, conn: &mut Conn, domain: String, extended: bool) {
        self.helo = Some(domain);
        self.txn = None;
        let greeting = format!("{} Hello [{}]", self.host(), self.peer.ip());
        if !extended {
            self.reply(conn, Stage::Helo, "HELO", Reply::new(250, greeting))
                .await;
            return;
        }
        let size = match &self.auth {
            Some(a) => a.limits.max_message_size,
            None => self
                .shared
                .config
                .limits
                .max_message_size
                .unwrap_or(defaults::MAX_MESSAGE_SIZE),
        };
        let mut lines = vec![
            greeting,
            format!("SIZE {size}"),
            "PIPELINING".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.tls {
            // Exactly what Exchange Online advertises: no PLAIN (it is still accepted).
            lines.push("AUTH LOGIN XOAUTH2".into());
        } else {
            lines.push("STARTTLS".into());
        }
        lines.push("8BITMIME".into());
        lines.push("SMTPUTF8".into());
        let delay = self
            .shared
            .faults
            .slow_reply_ms(self.mailbox_name().as_deref());
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        conn.queue_multi(250, &lines);
    }

    async fn starttls(&mut self, conn: &mut Conn) -> Flow {
        if self.tls {
            self.reply(conn, Stage::StartTls, "STARTTLS", replies::bad_sequence())
                .await;
            return Flow::Continue;
        }
        if self.helo.is_none() {
            self.reply(
                conn,
                Stage::StartTls,
                "STARTTLS",
                replies::send_hello_first(),
            )
            .await;
            return Flow::Continue;
        }
        self.reply(conn, Stage::StartTls, "STARTTLS", replies::starttls_ready())
            .await;
        Flow::StartTls
    }

    /// Reads one SASL continuation response after a 334 challenge. `Err(flow)` when the
    /// exchange ended (cancelled, connection lost, line too long).
    async fn sasl_step(
        &mut self,
        conn: &mut Conn,
        challenge: &str,
    ) -> io::Result<Result<String, Flow>> {
        conn.queue(334, challenge);
        let max = self.shared.config.max_line_length;
        let line = match tokio::time::timeout(self.shared.idle_timeout(), conn.read_line(max)).await
        {
            Err(_) => {
                self.reply(conn, Stage::Auth, "AUTH", replies::idle_timeout())
                    .await;
                return Ok(Err(Flow::Close));
            }
            Ok(r) => r?,
        };
        match line {
            Line::Eof => Ok(Err(Flow::Drop)),
            Line::TooLong => {
                self.reply(conn, Stage::Auth, "AUTH", replies::line_too_long())
                    .await;
                Ok(Err(Flow::Continue))
            }
            Line::Complete(l) => {
                let s = String::from_utf8_lossy(&l).trim().to_owned();
                if s == "*" {
                    self.reply(conn, Stage::Auth, "AUTH", replies::auth_cancelled())
                        .await;
                    return Ok(Err(Flow::Continue));
                }
                Ok(Ok(s))
            }
        }
    }

    /// Decodes base64 or answers 501 5.5.2.
    async fn decode(&mut self, conn: &mut Conn, s: &str) -> Option<Vec<u8>> {
        let decoded = auth::decode_b64(s);
        if decoded.is_none() {
            self.reply(conn, Stage::Auth, "AUTH", replies::cannot_decode())
                .await;
        }
        decoded
    }

    async fn auth(
        &mut self,
        conn: &mut Conn,
        mechanism: &str,
        initial: Option<String>,
    ) -> io::Result<Flow> {
        let host = self.host();
        let early = if !self.tls {
            Some(replies::auth_before_tls(&host))
        } else if self.helo.is_none() {
            Some(replies::send_hello_first())
        } else if self.auth.is_some() {
            Some(replies::already_authenticated())
        } else if self.txn.is_some() {
            Some(replies::bad_sequence())
        } else {
            None
        };
        if let Some(r) = early {
            self.reply(conn, Stage::Auth, "AUTH", r).await;
            return Ok(Flow::Continue);
        }
        macro_rules! step {
            ($challenge:expr) => {
                match self.sasl_step(conn, $challenge).await? {
                    Ok(s) => s,
                    Err(flow) => return Ok(flow),
                }
            };
        }
        macro_rules! decoded {
            ($s:expr) => {
                match self.decode(conn, &$s).await {
                    Some(d) => d,
                    None => return Ok(Flow::Continue),
                }
            };
        }
        let shared = Arc::clone(&self.shared);
        let dir = &shared.directory;
        let result = match mechanism {
            "XOAUTH2" => {
                let resp = match initial {
                    Some(i) => i,
                    None => step!(""),
                };
                let raw = decoded!(resp);
                match auth::parse_xoauth2(&raw) {
                    Some((user, token)) => {
                        auth::check_xoauth2(dir, &shared.tokens, &host, &user, &token)
                    }
                    None => Err((None, replies::auth_failed(&host))),
                }
            }
            "PLAIN" => {
                let resp = match initial {
                    Some(i) => i,
                    None => step!(""),
                };
                let raw = decoded!(resp);
                match auth::parse_plain(&raw) {
                    Some((authz, user, pass))
                        if authz.is_empty() || authz.eq_ignore_ascii_case(&user) =>
                    {
                        auth::check_password(dir, &host, &user, &pass)
                    }
                    Some((_, user, _)) => {
                        Err((Some(user.to_ascii_lowercase()), replies::auth_failed(&host)))
                    }
                    None => Err((None, replies::auth_failed(&host))),
                }
            }
            "LOGIN" => {
                let user_b64 = match initial {
                    Some(i) => i,
                    None => step!("VXNlcm5hbWU6"),
                };
                let user = decoded!(user_b64);
                let pass_b64 = step!("UGFzc3dvcmQ6");
                let pass = decoded!(pass_b64);
                let user = String::from_utf8_lossy(&user).into_owned();
                let pass = String::from_utf8_lossy(&pass).into_owned();
                auth::check_password(dir, &host, &user, &pass)
            }
            _ => {
                self.reply(conn, Stage::Auth, "AUTH", replies::unrecognized_auth_type())
                    .await;
                return Ok(Flow::Continue);
            }
        };
        let label = mechanism.to_ascii_lowercase();
        let who = match &result {
            Ok(m) => Some(m.address.clone()),
            Err((who, _)) => who.clone(),
        };
        let known = who
            .as_deref()
            .and_then(|w| dir.mailbox(w))
            .map(|m| m.address.clone());
        if let Some(known) = &known {
            shared.records.count_auth(known);
        }
        let now = Instant::now();
        // A locked-out mailbox is refused whatever it presents, as Entra's smart lockout does.
        let locked = known
            .as_deref()
            .is_some_and(|k| shared.error_throttle.auth_locked(k, now));
        let mailbox = match result {
            _ if locked => {
                let reply = replies::auth_failed(&host);
                self.refuse_auth(conn, known.as_deref(), reply, &label, "locked_out", true)
                    .await;
                return Ok(Flow::Continue);
            }
            Ok(m) => m,
            Err((who, reply)) => {
                // Bad credentials count towards a lockout (only those of a real mailbox, so
                // the map stays bounded).
                if reply.code == 535
                    && let Some(k) = &known
                    && shared.error_throttle.note_auth_failure(k, now)
                {
                    tracing::info!(mailbox = %k, "mailbox locked out after repeated failed AUTHs");
                }
                self.refuse_auth(conn, who.as_deref(), reply, &label, "failed", false)
                    .await;
                return Ok(Flow::Continue);
            }
        };
        if shared.tenant_blocked(&mailbox.tenant) {
            let reply = replies::tenant_blocked(&host);
            self.refuse_auth(
                conn,
                Some(&mailbox.address),
                reply,
                &label,
                "blocked",
                false,
            )
            .await;
            return Ok(Flow::Continue);
        }
        let Some(slot) = shared.limits.try_connect(&mailbox.address) else {
            let reply = replies::sender_thread_limit(&host);
            let who = Some(mailbox.address.as_str());
            self.refuse_auth(conn, who, reply, &label, "thread_limit", false)
                .await;
            return Ok(Flow::Continue);
        };
        let limits = shared
            .limits
            .limits(&mailbox.address)
            .unwrap_or_else(|| shared.config.limits_for_default());
        shared
            .metrics
            .auth_attempts
            .with_label_values(&[&label, "ok"])
            .inc();
        self.auth = Some(Authed {
            mailbox,
            limits,
            _slot: slot,
        });
        self.reply(conn, Stage::Auth, "AUTH", replies::auth_ok())
            .await;
        Ok(Flow::Continue)
    }

    /// Answers a refused AUTH, and records it (metrics, refusals, failed AUTHs).
    async fn refuse_auth(
        &self,
        conn: &mut Conn,
        who: Option<&str>,
        reply: Reply,
        mechanism: &str,
        result: &str,
        throttled: bool,
    ) {
        self.shared
            .metrics
            .auth_attempts
            .with_label_values(&[mechanism, result])
            .inc();
        self.shared.records.push_auth_failure(AuthFailure {
            mailbox: who.map(str::to_owned),
            code: reply.code,
            enhanced: reply.enhanced().to_owned(),
            throttled,
            at: chrono::Utc::now(),
        });
        self.reply_for(conn, who, Stage::Auth, "AUTH", reply).await;
    }

    async fn mail(&mut self, conn: &mut Conn, from: String, size: Option<u64>) {
        let host = self.host();
        let r = if self.helo.is_none() {
            replies::send_hello_first()
        } else if !self.tls {
            replies::mail_not_authenticated(&host)
        } else if let Some(a) = &self.auth {
            if self.txn.is_some() {
                replies::sender_already_specified()
            } else if self.shared.tenant_blocked(&a.mailbox.tenant) {
                replies::tenant_blocked(&host)
            } else if self
                .shared
                .error_throttle
                .sending_throttled(&a.mailbox.address, Instant::now())
            {
                replies::throttled_invalid_recipients(&host)
            } else if size.is_some_and(|s| s > a.limits.max_message_size) {
                replies::message_too_big()
            } else if !a.mailbox.may_send_as(&from) {
                replies::send_as_envelope(&host)
            } else {
                self.txn = Some(Txn {
                    from,
                    rcpts: Vec::new(),
                });
                replies::sender_ok()
            }
        } else {
            replies::mail_not_authenticated(&host)
        };
        self.reply(conn, Stage::MailFrom, "MAIL", r).await;
    }

    async fn rcpt(&mut self, conn: &mut Conn, to: String) {
        let mailbox = self.mailbox_name();
        let r = match (&mut self.txn, &self.auth) {
            (Some(txn), Some(a)) => {
                if self
                    .shared
                    .faults
                    .refuses_recipient(mailbox.as_deref(), &to)
                {
                    let address = &a.mailbox.address;
                    if self
                        .shared
                        .error_throttle
                        .note_invalid_recipient(address, Instant::now())
                    {
                        tracing::info!(mailbox = %address, "sender throttled after repeated invalid recipients");
                    }
                    replies::recipient_not_found()
                } else if !a.limits.unlimited
                    && txn.rcpts.len() as u64 >= a.limits.max_recipients_per_message
                {
                    replies::too_many_recipients()
                } else {
                    txn.rcpts.push(to);
                    replies::recipient_ok()
                }
            }
            _ => replies::need_mail(),
        };
        self.reply(conn, Stage::RcptTo, "RCPT", r).await;
    }

    async fn data(&mut self, conn: &mut Conn) -> io::Result<Flow> {
        let early = match &self.txn {
            None => Some(replies::need_mail()),
            Some(t) if t.rcpts.is_empty() => Some(replies::need_rcpt()),
            Some(_) => None,
        };
        if let Some(r) = early {
            self.reply(conn, Stage::Data, "DATA", r).await;
            return Ok(Flow::Continue);
        }
        let limit = self
            .auth
            .as_ref()
            .map(|a| {
                if a.limits.unlimited {
                    defaults::HARD_MAX_MESSAGE_SIZE
                } else {
                    a.limits.max_message_size
                }
            })
            .unwrap_or(defaults::MAX_MESSAGE_SIZE);
        self.reply(conn, Stage::Data, "DATA", replies::start_data())
            .await;

        let mut raw = Vec::new();
        let mut too_big = false;
        let mut line_too_long = false;
        loop {
            let line = match tokio::time::timeout(
                self.shared.idle_timeout(),
                conn.read_line(MAX_DATA_LINE),
            )
            .await
            {
                Err(_) => {
                    self.reply(conn, Stage::Data, "DATA", replies::idle_timeout())
                        .await;
                    return Ok(Flow::Close);
                }
                Ok(r) => r?,
            };
            match line {
                // Connection lost in the middle of the message: nothing to answer.
                Line::Eof => return Ok(Flow::Drop),
                Line::TooLong => line_too_long = true,
                Line::Complete(l) => {
                    if l == b".\r\n" || l == b".\n" {
                        break;
                    }
                    // Dot-unstuffing (RFC 5321 4.5.2).
                    let content = if l.first() == Some(&b'.') {
                        &l[1..]
                    } else {
                        &l[..]
                    };
                    if !too_big {
                        if (raw.len() + content.len()) as u64 > limit {
                            too_big = true;
                            raw = Vec::new();
                        } else {
                            raw.extend_from_slice(content);
                        }
                    }
                }
            }
        }
        let Some(txn) = self.txn.take() else {
            return Ok(Flow::Continue);
        };
        if too_big {
            self.reply(conn, Stage::DataEnd, "DATA", replies::message_too_big())
                .await;
            return Ok(Flow::Continue);
        }
        if line_too_long {
            self.reply(conn, Stage::DataEnd, "DATA", replies::line_too_long())
                .await;
            return Ok(Flow::Continue);
        }
        self.end_of_data(conn, txn, raw).await
    }

    /// The policy checks Exchange makes once the whole message is in, in this order:
    /// injected faults, Send As on the From header, the mailbox's storage quota, message
    /// rate, recipient quota, tenant external recipients. A refused message is not counted in any window.
    async fn end_of_data(&mut self, conn: &mut Conn, txn: Txn, raw: Vec<u8>) -> io::Result<Flow> {
        let host = self.host();
        let Some(a) = &self.auth else {
            return Ok(Flow::Continue);
        };
        let mailbox = a.mailbox.clone();
        let shared = Arc::clone(&self.shared);

        match shared.faults.data_end(&mailbox.address) {
            Some(DataEndFault::Drop) => {
                shared
                    .metrics
                    .faults_injected
                    .with_label_values(&["drop_after_data"])
                    .inc();
                let r = Reply::new(0, "connection dropped after DATA (fault injection)");
                shared.refuse(Some(&mailbox.address), Stage::DataEnd, "DATA", &r);
                return Ok(Flow::Drop);
            }
            Some(DataEndFault::Reply421) => {
                shared
                    .metrics
                    .faults_injected
                    .with_label_values(&["reply_421"])
                    .inc();
                self.reply(
                    conn,
                    Stage::DataEnd,
                    "DATA",
                    replies::service_not_available(),
                )
                .await;
                return Ok(Flow::Close);
            }
            Some(DataEndFault::Silent) => {
                shared
                    .metrics
                    .faults_injected
                    .with_label_values(&["silent_after_data"])
                    .inc();
                let r = Reply::new(0, "no reply after DATA (fault injection)");
                shared.refuse(Some(&mailbox.address), Stage::DataEnd, "DATA", &r);
                // Read and ignore whatever comes (QUIT, RSET) until the client gives up.
                let max = shared.config.max_line_length;
                while let Ok(Ok(Line::Complete(_) | Line::TooLong)) =
                    tokio::time::timeout(shared.idle_timeout(), conn.read_line(max)).await
                {
                }
                return Ok(Flow::Drop);
            }
            Some(DataEndFault::Reply451) => {
                shared
                    .metrics
                    .faults_injected
                    .with_label_values(&["reply_451"])
                    .inc();
                self.reply(conn, Stage::DataEnd, "DATA", replies::temporary_error())
                    .await;
                return Ok(Flow::Continue);
            }
            None => {}
        }

        if let Some(bad) = header_from_addresses(&raw)
            .into_iter()
            .find(|f| !mailbox.may_send_as(f))
        {
            let r = replies::send_as_header(&host, &mailbox.address, &bad);
            self.reply(conn, Stage::DataEnd, "DATA", r).await;
            return Ok(Flow::Continue);
        }

        if shared.storage_full(&mailbox.address) {
            let r = replies::mailbox_full(&host);
            self.reply(conn, Stage::DataEnd, "DATA", r).await;
            return Ok(Flow::Continue);
        }

        let tenant = shared.directory.tenant(&mailbox.tenant);
        let external = txn
            .rcpts
            .iter()
            .filter(|r| !tenant.is_some_and(|t| t.is_internal(r)))
            .count() as u64;
        let n = txn.rcpts.len() as u64;
        match shared.limits.admit(
            &mailbox.address,
            &mailbox.tenant,
            n,
            external,
            Instant::now(),
        ) {
            Verdict::MessageRate => {
                self.reply(conn, Stage::DataEnd, "DATA", replies::message_rate(&host))
                    .await;
                // 421 means the server closes the channel (RFC 5321 3.8); Exchange does.
                return Ok(Flow::Close);
            }
            Verdict::RecipientQuota => {
                self.reply(
                    conn,
                    Stage::DataEnd,
                    "DATA",
                    replies::recipient_quota(&host),
                )
                .await;
                return Ok(Flow::Continue);
            }
            Verdict::TenantExternal => {
                self.reply(
                    conn,
                    Stage::DataEnd,
                    "DATA",
                    replies::tenant_external_limit(&host),
                )
                .await;
                return Ok(Flow::Continue);
            }
            Verdict::Accept => {}
        }

        let id = format!("{}@{}", uuid::Uuid::new_v4().simple(), host);
        shared
            .metrics
            .messages_accepted
            .with_label_values(&[&mailbox.address])
            .inc();
        shared
            .metrics
            .recipients_accepted
            .with_label_values(&[&mailbox.address])
            .inc_by(n);
        shared.metrics.bytes_accepted.inc_by(raw.len() as u64);
        // Exchange files the message in Sent Items when it accepts it, before the 250
        // reaches the client (which may never see it: accepted_reply_delay_ms).
        crate::filing::file_accepted(&shared, &mailbox.address, &txn.rcpts, &raw);
        shared.records.push_accepted(AcceptedMessage {
            id: id.clone(),
            mailbox: mailbox.address.clone(),
            mail_from: txn.from,
            rcpt_to: txn.rcpts,
            received_at: chrono::Utc::now(),
            raw,
        });
        let hold = shared.faults.accepted_reply_delay_ms(&mailbox.address);
        if hold > 0 {
            tokio::time::sleep(Duration::from_millis(hold)).await;
        }
        self.reply(conn, Stage::DataEnd, "DATA", replies::accepted(&host, &id))
            .await;
        Ok(Flow::Continue)
    }
}

fn stage_of(verb: &str) -> Stage {
    match verb {
        "EHLO" | "HELO" => Stage::Helo,
        "STARTTLS" => Stage::StartTls,
        "AUTH" => Stage::Auth,
        "MAIL" => Stage::MailFrom,
        "RCPT" => Stage::RcptTo,
        "DATA" => Stage::Data,
        _ => Stage::Other,
    }
}
