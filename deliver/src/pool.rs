//! `MailboxPool`: the async face of the throttle. `acquire` waits exactly until some
//! eligible mailbox may send (a timer for time-bound waits, a notification for releases:
//! no polling), sessions are reused per mailbox within its connection cap, and mailboxes
//! or tenants that the server refuses are held back and re-admitted automatically: a
//! re-admitted mailbox takes one send (a probe) until that send proves it healthy, and its
//! backoff doubles per hold episode, not per failed send (see `health`), so a broken mailbox
//! gets at most one failed AUTH per backoff period (Exchange throttles repeated errors).

mod health;
mod line;

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
use health::Health;
pub use health::SendTicket;
use line::{Place, WaitingLine};

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
/// [`MailboxPool::finish`] (or [`MailboxPool::release_unsent`] when nothing was sent).
#[derive(Debug)]
pub struct Lease {
    pub idx: usize,
    reservation: Reservation,
    ticket: SendTicket,
}

impl Lease {
    /// What this send's outcome is reported with ([`MailboxPool::mark_healthy`],
    /// [`MailboxPool::hold_mailbox`]) after the lease is finished.
    pub fn ticket(&self) -> SendTicket {
        self.ticket
    }
}

/// The right to send through a mailbox: its lease's fencing token, and until when this
/// process may start a send's data (the lease's end on the local clock, less a margin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub token: i64,
    pub until: Instant,
}

/// Why `acquire` gives a message up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireError {
    /// No mailbox of the pool could ever send it.
    Impossible(Impossible),
    /// Only mailboxes other deliver processes own could send it: it goes back to the
    /// queue for them.
    OwnedElsewhere,
}

/// Whether the server may have counted the send (see `SmtpFailure::maybe_accepted`).
#[derive(Debug, Clone, Copy)]
pub enum Completion {
    Counted,
    NotCounted,
}

/// Distinct (group, From) keys whose class is remembered; beyond it the cache starts over.
const CLASS_CACHE_CAPACITY: usize = 1_024;

/// The schedule and each mailbox's health, under one lock: a pick and the probe's hold it
/// may set must be one step, or a second send could pick the mailbox in between.
#[derive(Debug)]
struct Book {
    schedule: PoolSchedule,
    health: Vec<Health>,
    /// Eligibility class per (group, From) key.
    classes: ClassCache,
    /// Who of the waiting messages picks next (lanes, batches in turn).
    line: WaitingLine,
}

impl Book {
    /// Lifts a probe's hold if it is still the mailbox's state (another hold, a tenant's,
    /// may have replaced it since). True when it did.
    fn lift(&mut self, idx: usize, hold: Option<MailboxState>) -> bool {
        match hold {
            Some(hold) if self.schedule.state(idx) == Some(hold) => {
                let _ = self.schedule.set_state(idx, MailboxState::Active);
                true
            }
            _ => false,
        }
    }
}

/// Longest a waiter behind others in line sleeps before it looks again.
const LINE_RECHECK: Duration = Duration::from_secs(1);

/// What a waiter in [`MailboxPool::acquire`] waits for.
enum Wait {
    /// The instant the pool admits it.
    Until(Millis),
    /// A send in flight to finish.
    Release,
    /// Its turn in the line.
    Line,
}

/// A waiter's place in the line; leaves it when the waiter is dropped (the message went
/// back to the queue, or the process stops) so that the next in line may pick.
struct InLine<'a> {
    pool: &'a MailboxPool,
    place: Place,
}

impl InLine<'_> {
    /// The waiter got its mailbox (and left the line in the same step).
    fn served(self) {
        std::mem::forget(self);
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.pool.book().line.leave(self.place);
        self.pool.changed.notify_waiters();
    }
}

pub struct MailboxPool {
    book: Mutex<Book>,
    changed: Notify,
    mailboxes: Vec<PoolMailbox>,
    tokens: Vec<Option<Arc<TokenSource>>>,
    idle: Vec<Mutex<Vec<(SmtpSession, Instant)>>>,
    /// This process's leases, by mailbox (`None`: another process's, or no one's).
    fences: Vec<Mutex<Option<Fence>>>,
    /// How long a message waits for a mailbox owned here before it goes back to the
    /// queue, when only mailboxes owned elsewhere could send it.
    elsewhere_grace: Duration,
    policy: FromPolicy,
    idle_timeout: Duration,
    pause: Duration,
    max_pause: Duration,
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
        // Nothing is sent through a mailbox before its lease is taken (`grant`).
        for idx in 0..n {
            schedule.set_available(idx, false)?;
        }
        Ok(Self {
            fences: (0..n).map(|_| Mutex::new(None)).collect(),
            elsewhere_grace: settings.lease_ttl() * 2,
            book: Mutex::new(Book {
                schedule,
                health: vec![Health::unproven(); n],
                classes: ClassCache::new(CLASS_CACHE_CAPACITY),
                line: WaitingLine::default(),
            }),
            changed: Notify::new(),
            tokens,
            idle: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            mailboxes,
            policy: settings.from_policy,
            idle_timeout: Duration::from_millis(settings.idle_connection_ms),
            pause: Duration::from_millis(settings.pause_ms),
            max_pause: Duration::from_millis(settings.max_pause_ms),
        })
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // The book's invariants hold between calls; a panic elsewhere cannot break them.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a probe may keep its mailbox to itself before it is presumed lost (its task
    /// gone): every SMTP step of a send is bounded by the SMTP timeout, and a send has about
    /// ten. A lost probe must not hold its mailbox forever.
    fn probe_limit(&self, idx: usize) -> Duration {
        self.mailboxes[idx].endpoint.timeout * 10
    }

    /// Whether the mailbox was held back and has not proved healthy since (its next send is,
    /// or its current one is, a probe).
    pub fn on_probation(&self, idx: usize) -> bool {
        self.book()
            .health
            .get(idx)
            .is_some_and(Health::on_probation)
    }

    /// Hold episodes in a row since the mailbox last proved healthy (its backoff doubles
    /// with each).
    pub fn episodes(&self, idx: usize) -> u32 {
        self.book().health.get(idx).map_or(0, Health::episodes)
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

    /// The key a mailbox has in the system of record (its address, lower-cased).
    pub fn mailbox_address(&self, idx: usize) -> &EmailAddress {
        &self.mailboxes[idx].address
    }

    pub fn mailbox_key(&self, idx: usize) -> String {
        self.mailboxes[idx].address.as_str().to_ascii_lowercase()
    }

    fn lock_fence(&self, idx: usize) -> MutexGuard<'_, Option<Fence>> {
        self.fences[idx].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This process's right to send through `idx` now, if it has it.
    pub fn fence(&self, idx: usize) -> Option<Fence> {
        let fence = (*self.lock_fence(idx))?;
        (fence.until > Instant::now()).then_some(fence)
    }

    /// The lease on `idx` is this process's (taken or renewed): sends may use it.
    pub fn grant(&self, idx: usize, fence: Fence) {
        *self.lock_fence(idx) = Some(fence);
        let _ = self.book().schedule.set_available(idx, true);
        self.changed.notify_waiters();
    }

    /// The lease on `idx` is lost or given back: no new send picks it.
    pub fn revoke(&self, idx: usize) {
        *self.lock_fence(idx) = None;
        let _ = self.book().schedule.set_available(idx, false);
        self.changed.notify_waiters();
    }

    /// Mailboxes whose lease this process holds (valid or not yet known lost).
    pub fn held(&self) -> Vec<usize> {
        (0..self.mailboxes.len())
            .filter(|&i| self.lock_fence(i).is_some())
            .collect()
    }

    /// Sends in flight through `idx` in this process.
    pub fn in_flight(&self, idx: usize) -> u32 {
        self.book()
            .schedule
            .mailbox(idx)
            .map(|m| m.connections_in_use())
            .unwrap_or(0)
    }

    /// Rebuilds the windows of `idx` from the record (a new owner, before its first send):
    /// `sends` are (instant it counts at, recipients). Only with nothing in flight on it.
    pub fn rebuild_mailbox(
        &self,
        idx: usize,
        sends: impl IntoIterator<Item = (Millis, u64)>,
    ) -> Result<(), crate::throttle::ThrottleError> {
        let mut book = self.book();
        book.schedule.reset_mailbox(idx)?;
        for (at, recipients) in sends {
            book.schedule.restore_mailbox(idx, at, recipients)?;
        }
        Ok(())
    }

    /// Counts another process's send against a tenant's external window.
    pub fn restore_tenant(&self, tenant_id: &str, at: Millis, external: u64) -> bool {
        let Some(t) = self
            .mailboxes
            .iter()
            .find(|m| m.tenant_id == tenant_id)
            .map(|m| m.tenant)
        else {
            return false;
        };
        match self.book().schedule.tenant_mut(t) {
            Some(limit) => {
                limit.restore(at, external);
                true
            }
            None => false,
        }
    }

    /// A tenant's external-recipient limit and window, which the write-ahead decision
    /// enforces across processes.
    pub fn tenant_budget(&self, tenant: usize) -> Option<(u32, Duration)> {
        let book = self.book();
        let window = book.schedule.tenant(tenant)?.window();
        Some((
            u32::try_from(window.limit()).unwrap_or(u32::MAX),
            window.window(),
        ))
    }

    /// The ids of the pool's tenants.
    pub fn tenant_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.mailboxes.iter().map(|m| m.tenant_id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Whether a mailbox owned here could send `meta`.
    fn owned_here_may_send(&self, meta: &RenderedMeta) -> bool {
        self.mailboxes
            .iter()
            .enumerate()
            .any(|(i, m)| m.may_send(meta, self.policy) && self.lock_fence(i).is_some())
    }

    /// The eligibility class of the mailboxes that may send `meta`, registered on first use
    /// of its (group, From) key.
    fn class_of(&self, book: &mut Book, meta: &RenderedMeta) -> ClassId {
        let Book {
            schedule, classes, ..
        } = book;
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

    /// Waits until a mailbox may send `meta` and reserves it. `Err` when no mailbox ever
    /// could, or when only mailboxes owned by other processes could for a while.
    ///
    /// Waiters of one eligibility class pick in the order of the [`WaitingLine`]:
    /// transactional messages first, bulk batches in turn.
    pub async fn acquire(&self, meta: &RenderedMeta) -> Result<Lease, AcquireError> {
        let recipients = meta.recipients.len() as u64;
        let mut elsewhere_since: Option<Instant> = None;
        let mut place: Option<InLine<'_>> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = now_millis();
            let wait_until = {
                let mut book = self.book();
                let at = match place.as_ref() {
                    Some(p) => p.place,
                    None => {
                        let class = self.class_of(&mut book, meta);
                        let at = book.line.join(class, meta);
                        place = Some(InLine {
                            pool: self,
                            place: at,
                        });
                        at
                    }
                };
                if !book.line.is_first(at) {
                    Wait::Line
                } else {
                    let external = self.external_count(&book.schedule, &meta.recipients);
                    match book.schedule.pick(now, recipients, external, at.class()) {
                        Pick::Mailbox(idx, reservation) => {
                            book.line.granted(at);
                            if let Some(p) = place.take() {
                                p.served();
                            }
                            let lease = self.lease(&mut book, now, idx, reservation);
                            drop(book);
                            // The next in line may pick now.
                            self.changed.notify_waiters();
                            return Ok(lease);
                        }
                        Pick::Impossible(why) => return Err(AcquireError::Impossible(why)),
                        Pick::WaitUntil(at) => Wait::Until(at),
                        Pick::WaitForRelease => Wait::Release,
                    }
                }
            };
            let wait_until = match wait_until {
                Wait::Until(at) => Some(at),
                Wait::Release => None,
                Wait::Line if self.owned_here_may_send(meta) => {
                    elsewhere_since = None;
                    // Woken when the one ahead picks or leaves; the bounded wait is a
                    // safety net only (a turn never depends on it).
                    tokio::select! {
                        _ = tokio::time::sleep(LINE_RECHECK) => {}
                        _ = &mut notified => {}
                    }
                    continue;
                }
                // Behind others, and only other processes' mailboxes could send it: the
                // hand-back below runs for every waiter at once, not one after another.
                Wait::Line => None,
            };
            match wait_until {
                Some(at) => {
                    elsewhere_since = None;
                    let wait = at.saturating_duration_since(now);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut notified => {}
                    }
                }
                None if self.owned_here_may_send(meta) => {
                    elsewhere_since = None;
                    notified.await;
                }
                None => {
                    // Only mailboxes of other processes could take it: wait a little (a
                    // lease may be on its way here), then hand it back to the queue.
                    let since = *elsewhere_since.get_or_insert_with(Instant::now);
                    let left = self.elsewhere_grace.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        return Err(AcquireError::OwnedElsewhere);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(left) => {}
                        _ = &mut notified => {}
                    }
                }
            }
        }
    }

    /// The lease of a picked mailbox. A mailbox on probation is held at once for its probe, in
    /// the same step as the pick: nobody else picks it until the probe's verdict.
    fn lease(&self, book: &mut Book, now: Millis, idx: usize, reservation: Reservation) -> Lease {
        let until = now + self.probe_limit(idx);
        let (ticket, probe_hold) = book.health[idx].start(idx, reservation.id(), until);
        if let Some(hold) = probe_hold {
            let _ = book.schedule.set_state(idx, hold);
            tracing::info!(mailbox = %self.mailboxes[idx].address, episodes = book.health[idx].episodes(), "probing a re-admitted mailbox with one send");
        }
        Lease {
            idx,
            reservation,
            ticket,
        }
    }

    /// Ends a send: its quota counts from now (if the server may have counted it) or is
    /// given back; its connection slot frees; waiters re-check. A probe's hold stays: its
    /// verdict follows ([`Self::mark_healthy`], [`Self::hold_mailbox`], a tenant hold), so no
    /// other send slips in between.
    pub fn finish(&self, lease: Lease, completion: Completion) {
        let result = {
            let mut book = self.book();
            match completion {
                // Rounded up to the next millisecond: instants are whole milliseconds, and a
                // truncated completion could let the next send in up to 1 ms early.
                Completion::Counted => book
                    .schedule
                    .settle(lease.reservation, now_millis().plus_ms(1)),
                Completion::NotCounted => book.schedule.release(lease.reservation),
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "throttle bookkeeping error");
        }
        self.changed.notify_waiters();
    }

    /// Ends a send that never went out (the record said not to send): quota and slot are
    /// given back, and a probe's hold is lifted with the mailbox still on probation, so the
    /// next send probes it.
    pub fn release_unsent(&self, lease: Lease) {
        let ticket = lease.ticket;
        self.finish(lease, Completion::NotCounted);
        let lifted = {
            let mut book = self.book();
            let hold = book.health[ticket.idx].released(&ticket);
            book.lift(ticket.idx, hold)
        };
        if lifted {
            self.changed.notify_waiters();
        }
    }

    /// The send of `ticket` proved its mailbox works: its session was opened (AUTH passed)
    /// and the server answered for the message's sake, not the mailbox's. For a probe, the
    /// mailbox is active again and its episodes end. A send that was in flight before the
    /// mailbox was held proves nothing (its session may predate the fault).
    pub fn mark_healthy(&self, ticket: SendTicket) {
        let lifted = {
            let mut book = self.book();
            let hold = book.health[ticket.idx].proved(&ticket);
            book.lift(ticket.idx, hold)
        };
        if lifted {
            tracing::info!(mailbox = %self.mailboxes[ticket.idx].address, "probe passed; mailbox active again");
            self.changed.notify_waiters();
        }
    }

    /// Holds a mailbox back after a mailbox-level refusal of the send of `ticket`, until a
    /// window frees or its backoff ends. A healthy mailbox's first failure and a failed probe
    /// start an episode (the backoff doubles per episode); failures of sends that were in
    /// flight when the hold began belong to it and change nothing.
    pub fn hold_mailbox(&self, ticket: SendTicket, problem: MailboxProblem) {
        let idx = ticket.idx;
        let now = now_millis();
        let (episode, pause) = {
            let mut book = self.book();
            let Some(episode) = book.health[idx].failed(&ticket, problem.is_quarantine()) else {
                drop(book);
                tracing::debug!(mailbox = %self.mailboxes[idx].address, problem = problem.as_str(), "failure of a send from an episode already counted");
                return;
            };
            let limits = book
                .schedule
                .mailbox(idx)
                .map(|m| m.limits().clone())
                .unwrap_or_default();
            let pause = match problem {
                // The window tells exactly when room comes back.
                MailboxProblem::Rate => limits.message_window,
                MailboxProblem::Quota => limits.recipient_window.min(self.max_pause),
                MailboxProblem::Connections => Duration::from_secs(2).min(self.pause),
                // Credentials, send-as, throttling for repeated errors (5.2.25x), sessions
                // that cannot be opened: each episode waits twice as long as the last.
                MailboxProblem::Auth
                | MailboxProblem::SendAs
                | MailboxProblem::Throttled
                | MailboxProblem::Unreachable => self.backoff(episode),
            };
            let state = book.health[idx].held_until(now + pause);
            let _ = book.schedule.set_state(idx, state);
            (episode, pause)
        };
        tracing::warn!(mailbox = %self.mailboxes[idx].address, problem = problem.as_str(), episode, pause_ms = pause.as_millis() as u64, quarantined = problem.is_quarantine(), "mailbox held back");
        self.changed.notify_waiters();
    }

    /// Holds back every mailbox of a tenant (blocked, or its external limit reached).
    pub fn hold_tenant(&self, tenant: usize, problem: TenantProblem) {
        let now = now_millis();
        let pause = match problem {
            TenantProblem::ExternalLimit => {
                let book = self.book();
                book.schedule
                    .tenant(tenant)
                    .map(|t| t.window().window())
                    .unwrap_or(self.pause)
                    .min(self.max_pause)
            }
            TenantProblem::Blocked => self.max_pause,
        };
        let until = now + pause;
        {
            let mut book = self.book();
            for (idx, m) in self.mailboxes.iter().enumerate() {
                if m.tenant == tenant {
                    let _ = book
                        .schedule
                        .set_state(idx, MailboxState::Quarantined { until });
                }
            }
        }
        tracing::warn!(tenant = %self.mailboxes.iter().find(|m| m.tenant == tenant).map(|m| m.tenant_id.as_str()).unwrap_or("?"), problem = problem.as_str(), pause_ms = pause.as_millis() as u64, "tenant held back");
        self.changed.notify_waiters();
    }

    /// `pause_ms` doubled per episode after the first, up to `max_pause_ms`.
    fn backoff(&self, episode: u32) -> Duration {
        let factor = 1u32 << episode.saturating_sub(1).min(16);
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
        let mut book = self.book();
        let schedule = &mut book.schedule;
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
        let book = self.book();
        Some((
            book.schedule.snapshot(idx, now)?,
            book.schedule.state(idx)?.at(now),
        ))
    }

    pub fn limits(&self, idx: usize) -> Option<MailboxLimits> {
        self.book()
            .schedule
            .mailbox(idx)
            .map(|m| m.limits().clone())
    }

    pub fn token_seconds_to_expiry(&self, tenant: usize) -> Option<f64> {
        self.tokens.get(tenant)?.as_ref()?.seconds_to_expiry()
    }

    pub fn external_count_for(&self, tenant: usize, recipients: &[EmailAddress]) -> u64 {
        self.book()
            .schedule
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

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use mailpipe_common::domain::{JobId, Mailbox};

    use super::*;
    use crate::settings::{MailboxSettings, TenantSettings};

    /// One password mailbox whose server is never reached: acquire and holds only.
    fn pool(dir: &tempfile::TempDir) -> MailboxPool {
        let password = dir.path().join("password");
        std::fs::write(&password, "pw").expect("write");
        let tenant: TenantSettings =
            serde_json::from_value(serde_json::json!({"id": "t"})).expect("tenant");
        let mailbox: MailboxSettings = serde_json::from_value(serde_json::json!({
            "address": "a@contoso.example", "tenant": "t", "auth": "password",
            "password": {"file": password}, "host": "localhost", "port": 1,
        }))
        .expect("mailbox");
        let settings = DeliverSettings {
            pause_ms: 100,
            max_pause_ms: 10_000,
            tenants: vec![tenant],
            mailboxes: vec![mailbox],
            ..DeliverSettings::default()
        };
        let pool = MailboxPool::build(&settings).expect("pool");
        // This process owns the mailbox (as if its lease were taken).
        pool.grant(
            0,
            Fence {
                token: 1,
                until: Instant::now() + Duration::from_secs(3_600),
            },
        );
        pool
    }

    fn meta() -> RenderedMeta {
        RenderedMeta {
            v: 1,
            job_id: JobId::parse("job-1").expect("id"),
            batch: None,
            from: Mailbox::new(None, EmailAddress::parse("a@contoso.example").expect("a"))
                .expect("from"),
            has_reply_to: false,
            recipients: vec![EmailAddress::parse("b@fabrikam.example").expect("b")],
            group: None,
            message_id: "<job-1@test>".into(),
            attempt: 0,
            rendered_at: Utc::now(),
            not_before: None,
            not_after: None,
            lane: mailpipe_common::contract::Lane::Bulk,
            bulk_queue: 0,
        }
    }

    /// Three mailboxes of 3 messages per 100 ms, owned here.
    fn busy_pool(dir: &tempfile::TempDir) -> MailboxPool {
        let password = dir.path().join("password");
        std::fs::write(&password, "pw").expect("write");
        let tenant: TenantSettings =
            serde_json::from_value(serde_json::json!({"id": "t"})).expect("tenant");
        let mailboxes: Vec<MailboxSettings> = (0..3)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "address": format!("m{i}@contoso.example"), "tenant": "t", "auth": "password",
                    "password": {"file": password}, "host": "localhost", "port": 1,
                    "limits": {"messages_per_window": 3, "message_window_ms": 100},
                }))
                .expect("mailbox")
            })
            .collect();
        let settings = DeliverSettings {
            tenants: vec![tenant],
            mailboxes,
            ..DeliverSettings::default()
        };
        let pool = MailboxPool::build(&settings).expect("pool");
        for idx in 0..3 {
            pool.grant(
                idx,
                Fence {
                    token: 1,
                    until: Instant::now() + Duration::from_secs(3_600),
                },
            );
        }
        pool
    }

    /// Many messages of several batches and lanes wait at once while a mailbox comes and
    /// goes (its lease taken away and given back): every one of them gets a mailbox. A
    /// waiter left behind in the line would hang here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_waiter_in_line_gets_a_mailbox_while_mailboxes_come_and_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Arc::new(busy_pool(&dir));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flapping = {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut token = 2;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    pool.revoke(2);
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    pool.grant(
                        2,
                        Fence {
                            token,
                            until: Instant::now() + Duration::from_secs(3_600),
                        },
                    );
                    token += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            })
        };
        let mut tasks = Vec::new();
        for i in 0..300u32 {
            let pool = pool.clone();
            let mut m = meta();
            m.lane = if i % 10 == 0 {
                mailpipe_common::contract::Lane::Transactional
            } else {
                mailpipe_common::contract::Lane::Bulk
            };
            m.batch = Some(
                mailpipe_common::domain::BatchId::parse(&format!("b{}", i % 3)).expect("batch"),
            );
            tasks.push(tokio::spawn(async move {
                // Some give up waiting (a message handed back): they must leave the line.
                if i % 7 == 0 {
                    let _ = tokio::time::timeout(Duration::from_millis(5), pool.acquire(&m)).await;
                }
                let lease = tokio::time::timeout(Duration::from_secs(60), pool.acquire(&m))
                    .await
                    .unwrap_or_else(|_| panic!("message {i} never got a mailbox"))
                    .expect("possible");
                let ticket = lease.ticket();
                tokio::time::sleep(Duration::from_millis(u64::from(i % 4))).await;
                pool.finish(lease, Completion::Counted);
                pool.mark_healthy(ticket);
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flapping.await.expect("flapping");
        assert_eq!(pool.book().line.len(), 0, "nobody left in line");
    }

    async fn acquire(pool: &MailboxPool) -> Lease {
        tokio::time::timeout(Duration::from_secs(10), pool.acquire(&meta()))
            .await
            .expect("a mailbox within the hold")
            .expect("possible")
    }

    /// How long the mailbox is held from now (zero when active).
    fn held_for(pool: &MailboxPool) -> Duration {
        let (_, state) = pool.snapshot(0).expect("mailbox");
        state.until().map_or(Duration::ZERO, |u| {
            u.saturating_duration_since(now_millis())
        })
    }

    #[tokio::test]
    async fn a_readmitted_mailbox_takes_one_probe_and_backs_off_per_episode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(&dir);
        // Unproven at start: the first send probes alone.
        let first = acquire(&pool).await;
        assert!(first.ticket().is_probe());
        let other = tokio::time::timeout(Duration::from_millis(300), pool.acquire(&meta())).await;
        assert!(other.is_err(), "a second send picked a mailbox under probe");
        let tf = first.ticket();
        pool.finish(first, Completion::Counted);
        pool.mark_healthy(tf);
        assert!(!pool.on_probation(0));

        // Two sends in flight when the mailbox fails: one episode, one backoff.
        let (a, b) = (acquire(&pool).await, acquire(&pool).await);
        let (ta, tb) = (a.ticket(), b.ticket());
        assert!(!ta.is_probe());
        pool.finish(a, Completion::NotCounted);
        pool.finish(b, Completion::NotCounted);
        pool.hold_mailbox(ta, MailboxProblem::Auth);
        pool.hold_mailbox(tb, MailboxProblem::Auth);
        assert_eq!(pool.episodes(0), 1);
        assert!(held_for(&pool) <= Duration::from_millis(100));

        // Re-admitted: one probe, and nobody else while it runs.
        let probe = acquire(&pool).await;
        assert!(probe.ticket().is_probe());
        assert!(
            held_for(&pool) > Duration::from_secs(60),
            "held for the probe"
        );
        let other = tokio::time::timeout(Duration::from_millis(300), pool.acquire(&meta())).await;
        assert!(other.is_err(), "a second send picked a mailbox under probe");

        // The probe fails: the next episode, twice the backoff.
        let tp = probe.ticket();
        pool.finish(probe, Completion::NotCounted);
        pool.hold_mailbox(tp, MailboxProblem::Auth);
        pool.hold_mailbox(tb, MailboxProblem::Auth);
        assert_eq!(pool.episodes(0), 2);
        let held = held_for(&pool);
        assert!(held > Duration::from_millis(100) && held <= Duration::from_millis(200));

        // A probe that ends unsent leaves the mailbox on probation: the next send probes.
        let probe = acquire(&pool).await;
        assert!(probe.ticket().is_probe());
        pool.release_unsent(probe);
        assert!(pool.on_probation(0));
        assert_eq!(held_for(&pool), Duration::ZERO);

        // A probe that proves the mailbox ends the episodes: sends share it again.
        let probe = acquire(&pool).await;
        let tp = probe.ticket();
        pool.finish(probe, Completion::Counted);
        pool.mark_healthy(tp);
        assert!(!pool.on_probation(0));
        assert_eq!(pool.episodes(0), 0);
        let (c, d) = (acquire(&pool).await, acquire(&pool).await);
        assert!(!c.ticket().is_probe() && !d.ticket().is_probe());
        pool.finish(c, Completion::NotCounted);
        pool.finish(d, Completion::NotCounted);

        // A throttled mailbox (5.2.25x) backs off per episode too.
        pool.hold_mailbox(tp, MailboxProblem::Throttled);
        assert_eq!(pool.episodes(0), 0, "a stale probe changes nothing");
        let e = acquire(&pool).await;
        let te = e.ticket();
        pool.finish(e, Completion::NotCounted);
        pool.hold_mailbox(te, MailboxProblem::Throttled);
        assert_eq!(pool.episodes(0), 1);
        let probe = acquire(&pool).await;
        let tp = probe.ticket();
        pool.finish(probe, Completion::NotCounted);
        pool.hold_mailbox(tp, MailboxProblem::Throttled);
        assert_eq!(pool.episodes(0), 2);
        assert!(held_for(&pool) > Duration::from_millis(100));
    }
}
