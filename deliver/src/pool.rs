//! `MailboxPool`: the async face of the throttle. `acquire` waits exactly until some
//! eligible mailbox may send (a timer for time-bound waits, a notification for releases:
//! no polling), sessions are reused per mailbox within its connection cap, and mailboxes
//! or tenants that the server refuses are held back and re-admitted automatically.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, TlsParameters, TlsVersion};
use lettre::transport::smtp::extension::ClientId;
use mailpipe_common::contract::RenderedMeta;
use mailpipe_common::domain::EmailAddress;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Notify;

use crate::classify::{MailboxProblem, ReplyClass, TenantProblem};
use crate::eligibility::{ClassCache, EligibilityKey};
use crate::oauth::{ClientCredential, OAuthError, TokenSource};
use crate::settings::{AuthMethod, DeliverSettings, FromPolicy};
use crate::smtp::{SmtpEndpoint, SmtpFailure, SmtpSession, SmtpStage};
use crate::throttle::{
    ClassId, Impossible, MailboxLimits, MailboxState, MailboxThrottle, Millis, Pick, PoolSchedule,
    Reservation, Snapshot, TenantLimit,
};
use crate::token_endpoint::TokenEndpoint;

/// How a mailbox authenticates. Secrets stay wrapped until the moment of AUTH.
enum MailboxAuth {
    OAuth(Arc<TokenSource>),
    Password {
        login: String,
        password: SecretString,
    },
}

/// One pool mailbox: what it is and how to reach it.
pub struct PoolMailbox {
    pub address: EmailAddress,
    pub tenant: usize,
    pub tenant_id: String,
    send_as: Vec<EmailAddress>,
    groups: Vec<String>,
    endpoint: SmtpEndpoint,
    auth: MailboxAuth,
}

impl std::fmt::Debug for PoolMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMailbox")
            .field("address", &self.address)
            .field("tenant", &self.tenant_id)
            .finish()
    }
}

impl PoolMailbox {
    /// `oauth2 (secret)`, `oauth2 (certificate)` or `password`, for reports.
    pub fn auth_label(&self) -> &'static str {
        match &self.auth {
            MailboxAuth::OAuth(t) if t.credential_kind() == "certificate" => "oauth2 (certificate)",
            MailboxAuth::OAuth(_) => "oauth2 (secret)",
            MailboxAuth::Password { .. } => "password",
        }
    }

    pub fn is_oauth(&self) -> bool {
        matches!(self.auth, MailboxAuth::OAuth(_))
    }

    /// `host:port` of its SMTP endpoint.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.endpoint.host, self.endpoint.port)
    }

    fn may_send(&self, meta: &RenderedMeta, policy: FromPolicy) -> bool {
        let group_ok = meta
            .group
            .as_ref()
            .is_none_or(|g| self.groups.iter().any(|mine| mine == g));
        let from_ok = match policy {
            FromPolicy::Mailbox => true,
            FromPolicy::SendAs => {
                meta.from.address.eq_ignore_case(&self.address)
                    || self
                        .send_as
                        .iter()
                        .any(|a| a.eq_ignore_case(&meta.from.address))
            }
        };
        group_ok && from_ok
    }
}

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

/// A reserved send: one mailbox, its quota and one connection. Give it back with
/// [`MailboxPool::finish`].
#[derive(Debug)]
pub struct Lease {
    pub idx: usize,
    reservation: Reservation,
}

/// Whether the server may have counted the send (see `SmtpFailure::maybe_accepted`).
#[derive(Debug, Clone, Copy)]
pub enum Completion {
    Counted,
    NotCounted,
}

/// Distinct (group, From) keys whose class is remembered; beyond it the cache starts over.
const CLASS_CACHE_CAPACITY: usize = 1_024;

pub struct MailboxPool {
    schedule: Mutex<PoolSchedule>,
    /// Eligibility class per (group, From) key; locked only while `schedule` is held.
    classes: Mutex<ClassCache>,
    changed: Notify,
    mailboxes: Vec<PoolMailbox>,
    tokens: Vec<Option<Arc<TokenSource>>>,
    idle: Vec<Mutex<Vec<(SmtpSession, Instant)>>>,
    strikes: Vec<AtomicU32>,
    policy: FromPolicy,
    idle_timeout: Duration,
    pause: Duration,
    max_pause: Duration,
    uncertain_hold: Duration,
}

impl std::fmt::Debug for MailboxPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxPool")
            .field("mailboxes", &self.mailboxes)
            .finish()
    }
}

pub fn now_millis() -> Millis {
    Millis::from_system_time(SystemTime::now())
}

impl MailboxPool {
    /// Builds the pool from validated settings (secrets resolved here).
    pub fn build(settings: &DeliverSettings) -> anyhow::Result<Self> {
        let extra_ca =
            match &settings.extra_ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("deliver.extra_ca_file {}: {e}", path.display())
                })?),
                None => None,
            };
        let http = crate::oauth::token_http_client(extra_ca.as_deref())?;

        let mut schedule = PoolSchedule::new();
        let mut tokens = Vec::new();
        for (i, t) in settings.tenants.iter().enumerate() {
            schedule.add_tenant(TenantLimit::new(
                t.external_limit(),
                Duration::from_millis(t.external_window_ms),
                t.domains.iter(),
            ));
            tokens.push(match &t.oauth {
                Some(app) => {
                    let key = format!("deliver.tenants[{i}].oauth");
                    Some(Arc::new(TokenSource::new(
                        app,
                        TokenEndpoint::new(app, &key)?,
                        ClientCredential::from_settings(app, &key)?,
                        http.clone(),
                    )))
                }
                None => None,
            });
        }
        let mut mailboxes = Vec::new();
        for (i, m) in settings.mailboxes.iter().enumerate() {
            let tenant = settings
                .tenants
                .iter()
                .position(|t| t.id == m.tenant)
                .ok_or_else(|| anyhow::anyhow!("deliver.mailboxes[{i}].tenant unknown"))?;
            let l = &m.limits;
            let limits = MailboxLimits {
                messages: l.messages_per_window,
                message_window: Duration::from_millis(l.message_window_ms),
                recipients: l.recipients_per_window,
                recipient_window: Duration::from_millis(l.recipient_window_ms),
                connections: l.max_connections,
                recipients_per_message: l.max_recipients_per_message,
            };
            schedule.add_mailbox(MailboxThrottle::new(limits), tenant)?;
            let mut tls =
                TlsParameters::builder(m.host.clone()).set_min_tls_version(TlsVersion::Tlsv12);
            if let Some(pem) = &extra_ca {
                tls = tls.add_root_certificate(Certificate::from_pem(pem)?);
            }
            let auth = match m.auth {
                AuthMethod::Oauth2 => {
                    MailboxAuth::OAuth(tokens[tenant].clone().ok_or_else(|| {
                        anyhow::anyhow!("deliver.mailboxes[{i}]: tenant has no oauth app")
                    })?)
                }
                AuthMethod::Password => MailboxAuth::Password {
                    login: m.username.clone().unwrap_or_else(|| m.address.to_string()),
                    password: m
                        .password
                        .as_ref()
                        .ok_or_else(|| anyhow::anyhow!("deliver.mailboxes[{i}].password missing"))?
                        .resolve(&format!("deliver.mailboxes[{i}].password"))?,
                },
            };
            mailboxes.push(PoolMailbox {
                address: m.address.clone(),
                tenant,
                tenant_id: m.tenant.clone(),
                send_as: m.send_as.clone(),
                groups: m.groups.clone(),
                endpoint: SmtpEndpoint {
                    host: m.host.clone(),
                    port: m.port,
                    tls: tls.build_rustls()?,
                    hello: ClientId::Domain(settings.hello_name.clone()),
                    timeout: settings.smtp_timeout(),
                },
                auth,
            });
        }
        let n = mailboxes.len();
        Ok(Self {
            schedule: Mutex::new(schedule),
            classes: Mutex::new(ClassCache::new(CLASS_CACHE_CAPACITY)),
            changed: Notify::new(),
            tokens,
            idle: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            strikes: (0..n).map(|_| AtomicU32::new(0)).collect(),
            mailboxes,
            policy: settings.from_policy,
            idle_timeout: Duration::from_millis(settings.idle_connection_ms),
            pause: Duration::from_millis(settings.pause_ms),
            max_pause: Duration::from_millis(settings.max_pause_ms),
            uncertain_hold: Duration::from_millis(settings.uncertain_hold_ms),
        })
    }

    /// How long a send of unknown outcome holds its message back (`uncertain_hold_ms`).
    pub fn uncertain_hold(&self) -> Duration {
        self.uncertain_hold
    }

    fn schedule(&self) -> MutexGuard<'_, PoolSchedule> {
        // The schedule's invariants hold between calls; a panic elsewhere cannot break them.
        self.schedule.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mailboxes(&self) -> &[PoolMailbox] {
        &self.mailboxes
    }

    pub fn policy(&self) -> FromPolicy {
        self.policy
    }

    pub fn index_of(&self, address: &EmailAddress) -> Option<usize> {
        self.mailboxes
            .iter()
            .position(|m| m.address.eq_ignore_case(address))
    }

    /// External recipients of a message: counted against each candidate tenant's own
    /// domains; the largest count is reserved (exact for one tenant, safe for several).
    fn external_count(&self, schedule: &PoolSchedule, recipients: &[EmailAddress]) -> u64 {
        (0..schedule.tenant_count())
            .filter_map(|t| schedule.tenant(t))
            .map(|t| t.count_external(recipients.iter().map(EmailAddress::domain)))
            .max()
            .unwrap_or(0)
    }

    /// The eligibility class of the mailboxes that may send `meta`, registered on first use
    /// of its (group, From) key. The caller holds the schedule's lock.
    fn class_of(&self, schedule: &mut PoolSchedule, meta: &RenderedMeta) -> ClassId {
        let mut classes = self.classes.lock().unwrap_or_else(|e| e.into_inner());
        classes.get_or_register(EligibilityKey::of(meta, self.policy), || {
            schedule.class(
                self.mailboxes
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.may_send(meta, self.policy))
                    .map(|(i, _)| i),
            )
        })
    }

    /// Waits until a mailbox may send `meta` and reserves it. `Err` when no mailbox ever could.
    pub async fn acquire(&self, meta: &RenderedMeta) -> Result<Lease, Impossible> {
        let recipients = meta.recipients.len() as u64;
        let mut class = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = now_millis();
            let pick = {
                let mut schedule = self.schedule();
                let external = self.external_count(&schedule, &meta.recipients);
                let class = *class.get_or_insert_with(|| self.class_of(&mut schedule, meta));
                schedule.pick(now, recipients, external, class)
            };
            match pick {
                Pick::Mailbox(idx, reservation) => return Ok(Lease { idx, reservation }),
                Pick::Impossible(why) => return Err(why),
                Pick::WaitUntil(at) => {
                    let wait = at.saturating_duration_since(now);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut notified => {}
                    }
                }
                Pick::WaitForRelease => notified.await,
            }
        }
    }

    /// Ends a send: its quota counts from now (if the server may have counted it) or is
    /// given back; its connection slot frees; waiters re-check.
    pub fn finish(&self, lease: Lease, completion: Completion) {
        let result = {
            let mut schedule = self.schedule();
            match completion {
                // Rounded up to the next millisecond: instants are whole milliseconds, and a
                // truncated completion could let the next send in up to 1 ms early.
                Completion::Counted => schedule.settle(lease.reservation, now_millis().plus_ms(1)),
                Completion::NotCounted => schedule.release(lease.reservation),
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "throttle bookkeeping error");
        }
        self.changed.notify_waiters();
    }

    /// The mailbox worked: its failure streak ends.
    pub fn mark_healthy(&self, idx: usize) {
        self.strikes[idx].store(0, Ordering::Relaxed);
    }

    /// Holds a mailbox back after a mailbox-level refusal, until a window frees or its backoff ends.
    pub fn hold_mailbox(&self, idx: usize, problem: MailboxProblem) {
        let strikes = self.strikes[idx].fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_millis();
        let pause = {
            let schedule = self.schedule();
            let limits = schedule
                .mailbox(idx)
                .map(|m| m.limits().clone())
                .unwrap_or_default();
            match problem {
                // The window tells exactly when room comes back.
                MailboxProblem::Rate => limits.message_window,
                MailboxProblem::Quota => limits.recipient_window.min(self.max_pause),
                MailboxProblem::Connections => Duration::from_secs(2).min(self.pause),
                _ => self.backoff(strikes),
            }
        };
        let until = now + pause;
        let state = if problem.is_quarantine() {
            MailboxState::Quarantined { until }
        } else {
            MailboxState::Paused { until }
        };
        let _ = self.schedule().set_state(idx, state);
        tracing::warn!(mailbox = %self.mailboxes[idx].address, problem = problem.as_str(), pause_ms = pause.as_millis() as u64, quarantined = problem.is_quarantine(), "mailbox held back");
        self.changed.notify_waiters();
    }

    /// Holds back every mailbox of a tenant (blocked, or its external limit reached).
    pub fn hold_tenant(&self, tenant: usize, problem: TenantProblem) {
        let now = now_millis();
        let pause = match problem {
            TenantProblem::ExternalLimit => {
                let schedule = self.schedule();
                schedule
                    .tenant(tenant)
                    .map(|t| t.window().window())
                    .unwrap_or(self.pause)
                    .min(self.max_pause)
            }
            TenantProblem::Blocked => self.max_pause,
        };
        let until = now + pause;
        {
            let mut schedule = self.schedule();
            for (idx, m) in self.mailboxes.iter().enumerate() {
                if m.tenant == tenant {
                    let _ = schedule.set_state(idx, MailboxState::Quarantined { until });
                }
            }
        }
        tracing::warn!(tenant = %self.mailboxes.iter().find(|m| m.tenant == tenant).map(|m| m.tenant_id.as_str()).unwrap_or("?"), problem = problem.as_str(), pause_ms = pause.as_millis() as u64, "tenant held back");
        self.changed.notify_waiters();
    }

    fn backoff(&self, strikes: u32) -> Duration {
        let factor = 1u32 << strikes.saturating_sub(1).min(16);
        (self.pause * factor).min(self.max_pause)
    }

    /// Re-applies a send recorded in the events stream (ledger rebuild after a restart).
    pub fn restore(
        &self,
        mailbox: &EmailAddress,
        tenant_id: Option<&str>,
        at: Millis,
        recipients: u64,
        external: u64,
    ) -> bool {
        let mut schedule = self.schedule();
        if let Some(idx) = self.index_of(mailbox) {
            return schedule.restore(idx, at, recipients, external).is_ok();
        }
        // Another mailbox of one of our tenants: only the tenant-wide external limit applies.
        if let Some(t) = tenant_id
            .and_then(|id| self.mailboxes.iter().find(|m| m.tenant_id == id))
            .map(|m| m.tenant)
            && let Some(limit) = schedule.tenant_mut(t)
        {
            limit.restore(at, external);
            return true;
        }
        false
    }

    pub fn snapshot(&self, idx: usize) -> Option<(Snapshot, MailboxState)> {
        let now = now_millis();
        let schedule = self.schedule();
        Some((schedule.snapshot(idx, now)?, schedule.state(idx)?.at(now)))
    }

    pub fn limits(&self, idx: usize) -> Option<MailboxLimits> {
        self.schedule().mailbox(idx).map(|m| m.limits().clone())
    }

    pub fn token_seconds_to_expiry(&self, tenant: usize) -> Option<f64> {
        self.tokens.get(tenant)?.as_ref()?.seconds_to_expiry()
    }

    pub fn external_count_for(&self, tenant: usize, recipients: &[EmailAddress]) -> u64 {
        self.schedule()
            .tenant(tenant)
            .map(|t| t.count_external(recipients.iter().map(EmailAddress::domain)))
            .unwrap_or(0)
    }

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

    /// A new session of this mailbox (the caller holds its connection slot).
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
                // A refused token is refreshed once: it may have been revoked or expired early.
                let mut refreshed = !retry_refused_token;
                loop {
                    let token = tokens.token().await?;
                    let creds =
                        Credentials::new(m.address.to_string(), token.expose_secret().to_owned());
                    match SmtpSession::open(&m.endpoint, Mechanism::Xoauth2, &creds).await {
                        Err(SmtpFailure::Reply {
                            stage: SmtpStage::Auth,
                            ..
                        }) if !refreshed => {
                            tracing::info!(mailbox = %m.address, "token refused; fetching a new one");
                            tokens.invalidate(&token).await;
                            refreshed = true;
                        }
                        other => return Ok(other?),
                    }
                }
            }
        }
    }

    /// Closes idle sessions (shutdown).
    pub async fn close_idle(&self) {
        for idle in &self.idle {
            let sessions: Vec<_> = idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .collect();
            for (s, _) in sessions {
                s.quit().await;
            }
        }
    }
}
