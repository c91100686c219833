//! `MailboxPool`: the async face of the throttle. `acquire` waits exactly until some
//! eligible mailbox may send (a timer for time-bound waits, a notification for releases:
//! no polling), sessions are reused per mailbox within its connection cap, and mailboxes
//! or tenants that the server refuses are held back and re-admitted automatically: a
//! re-admitted mailbox takes one send (a probe) until that send proves it healthy, and its
//! backoff doubles per hold episode, not per failed send (see `health`), so a broken mailbox
//! gets at most one failed AUTH per backoff period (Exchange throttles repeated errors).

mod booking;
pub mod eligibility;
mod health;
pub mod hold_report;
mod line;
mod sessions;

pub use booking::{AcquireError, Completion, Fence, Lease};
pub use sessions::SessionError;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, TlsParameters, TlsVersion};
use lettre::transport::smtp::extension::ClientId;
use mailpipe_common::contract::RenderedMeta;
use mailpipe_common::domain::EmailAddress;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Notify;

use crate::auth::oauth::{ClientCredential, OAuthError, TokenSource};
use crate::auth::token_endpoint::TokenEndpoint;
use crate::pool::eligibility::{ClassCache, EligibilityKey};
use crate::settings::{AuthMethod, DeliverSettings, FromPolicy, Transport};
use crate::smtp::classify::{MailboxProblem, ReplyClass, TenantProblem};
use crate::smtp::{SmtpEndpoint, SmtpFailure, SmtpSession, SmtpStage};
use crate::throttle::{
    ClassId, Impossible, MailboxLimits, MailboxState, MailboxThrottle, Millis, Pick, PoolSchedule,
    Reservation, Snapshot, TenantLimit,
};
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
    /// SMTP, or Graph (draft, then send): only the last step of a send differs.
    pub transport: Transport,
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
    /// `oauth2 (secret)`, `oauth2 (certificate)`, `oauth2 (federated)` or `password`, for
    /// reports.
    pub fn auth_label(&self) -> &'static str {
        match &self.auth {
            MailboxAuth::OAuth(t) => match t.credential_kind() {
                "certificate" => "oauth2 (certificate)",
                "federated" => "oauth2 (federated)",
                _ => "oauth2 (secret)",
            },
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
    /// What held each mailbox back last (`auth`, `rate`, `tenant_blocked`...): the
    /// reason shown with its hold.
    held_for: Vec<&'static str>,
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
        let http = crate::auth::oauth::token_http_client(extra_ca.as_deref())?;

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
                transport: m.transport,
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
                held_for: vec![""; n],
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

    /// A tenant's external-recipient window now: (left, limit, seconds until one more
    /// external recipient fits — 0 when one fits now, `None` when only a send in flight can
    /// free room). `None` for a tenant without a limit.
    pub fn tenant_room(&self, tenant: usize) -> Option<(u64, u64, Option<f64>)> {
        let now = now_millis();
        let book = self.book();
        let limit = book.schedule.tenant(tenant)?;
        let until = match limit.earliest_admit(now, 1) {
            crate::throttle::Admit::Now => Some(0.0),
            crate::throttle::Admit::At(t) => Some(t.0.saturating_sub(now.0) as f64 / 1000.0),
            crate::throttle::Admit::Busy | crate::throttle::Admit::Never => None,
        };
        Some((limit.remaining(now), limit.window().limit(), until))
    }

    /// The ids of the pool's tenants.
    pub fn tenant_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.mailboxes.iter().map(|m| m.tenant_id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
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

    /// Whether `idx` is held back now: its state (paused or quarantined), why, and until
    /// when (on the pool's clock).
    pub fn hold_of(&self, idx: usize) -> Option<(MailboxState, &'static str)> {
        let book = self.book();
        match book.schedule.state(idx)?.at(now_millis()) {
            MailboxState::Active => None,
            held => Some((held, book.held_for.get(idx).copied().unwrap_or(""))),
        }
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

    async fn acquire(pool: &MailboxPool) -> Lease<'_> {
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

    /// A send slot dropped on an error path (no `finish`) frees its connection: the
    /// mailbox goes on sending.
    #[tokio::test]
    async fn a_dropped_lease_frees_its_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(&dir);
        let first = acquire(&pool).await;
        let tf = first.ticket();
        pool.finish(first, Completion::Counted);
        pool.mark_healthy(tf);
        let idx = {
            let lease = acquire(&pool).await;
            assert_eq!(pool.in_flight(lease.idx), 1);
            lease.idx
        };
        assert_eq!(pool.in_flight(idx), 0, "the slot was freed by Drop");
        let again = acquire(&pool).await;
        assert_eq!(again.idx, idx, "the mailbox sends on");
        pool.finish(again, Completion::NotCounted);
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
