//! SMTP sessions per mailbox: reused while idle, within the mailbox's connection cap,
//! opened with its credentials (a token, or a password).

use super::*;

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Smtp(#[from] SmtpFailure),
    #[error(transparent)]
    Token(#[from] OAuthError),
}

impl SessionError {
    /// Neither case is the message's fault: a token that cannot be had is the mailbox's, and
    /// so is a session that cannot be opened (timeout, lost connection, 4xx before MAIL):
    /// the mailbox is held back with backoff and the message goes elsewhere.
    pub fn class(&self) -> ReplyClass {
        match self {
            SessionError::Smtp(f) => match f.class() {
                ReplyClass::Transient | ReplyClass::MessagePermanent | ReplyClass::Accepted => {
                    ReplyClass::Mailbox(MailboxProblem::Unreachable)
                }
                other => other,
            },
            SessionError::Token(_) => ReplyClass::Mailbox(MailboxProblem::Auth),
        }
    }
}

impl MailboxPool {
    /// An idle session of this mailbox (`true`: reused), or a new one. The throttle's
    /// connection cap bounds in-flight sends, and a new session is opened only when none is
    /// idle, so open connections never exceed the cap.
    pub async fn session(&self, idx: usize) -> Result<(SmtpSession, bool), SessionError> {
        let (reusable, stale) = {
            let mut idle = self.idle[idx].lock().unwrap_or_else(|e| e.into_inner());
            let mut stale = Vec::new();
            let mut found = None;
            while let Some((s, since)) = idle.pop() {
                if since.elapsed() < self.idle_timeout && s.is_usable() {
                    found = Some(s);
                    break;
                }
                stale.push(s);
            }
            (found, stale)
        };
        // Stale sessions are closed before a new one opens: the server counts them until then.
        for s in stale {
            s.quit().await;
        }
        match reusable {
            Some(s) => Ok((s, true)),
            None => Ok((self.open(idx, true).await?, false)),
        }
    }

    /// A new session with one connection and one AUTH attempt: a refused token is not
    /// refreshed and retried (preflight checks report the refusal instead).
    pub async fn open_once(&self, idx: usize) -> Result<SmtpSession, SessionError> {
        self.open(idx, false).await
    }

    pub fn return_session(&self, idx: usize, session: SmtpSession) {
        if session.is_usable() {
            self.idle[idx]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((session, Instant::now()));
        }
    }

    /// A new session of this mailbox (the caller holds its connection slot). With
    /// `retry_refused_token`, a refused OAuth token is refreshed and AUTH tried once more, but
    /// only when the token came from the cache (it may have been revoked or expired early) and
    /// the mailbox is not on probation: a fresh token that is refused would be refused again,
    /// and a probe has one AUTH, so a broken mailbox gets one failed AUTH per backoff period.
    pub async fn open(
        &self,
        idx: usize,
        retry_refused_token: bool,
    ) -> Result<SmtpSession, SessionError> {
        let m = &self.mailboxes[idx];
        match &m.auth {
            MailboxAuth::Password { login, password } => {
                let creds = Credentials::new(login.clone(), password.expose_secret().to_owned());
                Ok(SmtpSession::open(&m.endpoint, Mechanism::Login, &creds).await?)
            }
            MailboxAuth::OAuth(tokens) => {
                let mut may_retry = retry_refused_token && !self.on_probation(idx);
                loop {
                    let (token, fresh) = tokens.token_since(Instant::now()).await?;
                    let creds =
                        Credentials::new(m.address.to_string(), token.expose_secret().to_owned());
                    match SmtpSession::open(&m.endpoint, Mechanism::Xoauth2, &creds).await {
                        Err(SmtpFailure::Reply {
                            stage: SmtpStage::Auth,
                            ..
                        }) if may_retry && !fresh => {
                            tracing::info!(mailbox = %m.address, "cached token refused; fetching a new one");
                            tokens.invalidate(&token).await;
                            may_retry = false;
                        }
                        Err(
                            e @ SmtpFailure::Reply {
                                stage: SmtpStage::Auth,
                                ..
                            },
                        ) if !fresh => {
                            // Forgotten (it may be stale), so the next try fetches anew.
                            tokens.invalidate(&token).await;
                            return Err(e.into());
                        }
                        other => return Ok(other?),
                    }
                }
            }
        }
    }

    /// Closes the idle sessions of one mailbox (before its lease goes to another process,
    /// which would otherwise find its connections counted against it).
    pub async fn close_idle_of(&self, idx: usize) {
        let sessions: Vec<_> = self.idle[idx]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for (s, _) in sessions {
            s.quit().await;
        }
    }

    /// Closes idle sessions (shutdown).
    pub async fn close_idle(&self) {
        for idx in 0..self.idle.len() {
            self.close_idle_of(idx).await;
        }
    }
}
