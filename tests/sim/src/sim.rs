//! Starting and stopping a simulator, and the handle tests use to inspect it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{FaultsConfig, SimConfig};
use crate::directory::Directory;
use crate::error::SimError;
use crate::faults::Faults;
use crate::graph::{GraphActivity, GraphMailboxStats, GraphRequest};
use crate::mail_store::{FolderView, MailStore, WellKnown};
use crate::metrics::Metrics;
use crate::records::{AcceptedMessage, AuthFailure, MailboxStats, Records, Refusal, lock};
use crate::smtp::error_throttle::ErrorThrottle;
use crate::smtp::limits::LimitState;
use crate::state::Shared;
use crate::tokens::TokenStore;

/// Entry point: `Simulator::start(config).await?` gives a [`RunningSim`].
#[derive(Debug)]
pub struct Simulator;

/// A running simulator: both listeners are bound and serving. Dropping it stops the
/// listeners too; `shutdown().await` also waits for them and removes a temporary state dir.
#[derive(Debug)]
pub struct RunningSim {
    shared: Arc<Shared>,
    smtp_addr: SocketAddr,
    http_addr: SocketAddr,
    state_dir: PathBuf,
    ca_pem_path: PathBuf,
    ca_pem: String,
    /// Set when the state dir was created by us (no `state_dir` in the config).
    temp_state_dir: bool,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Simulator {
    /// Validates the config, generates the CA and server certificate, writes `ca.pem`,
    /// binds both listeners and starts serving.
    pub async fn start(config: SimConfig) -> Result<RunningSim, SimError> {
        config.validate()?;
        let pki = crate::tls::generate()?;

        let (state_dir, temp_state_dir) = match &config.state_dir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir()
                    .join(format!("mailpipe-sim-{}", uuid::Uuid::new_v4().simple())),
                true,
            ),
        };
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| SimError::Write { path, source }
        };
        std::fs::create_dir_all(&state_dir).map_err(write_err(&state_dir))?;
        let ca_pem_path = state_dir.join("ca.pem");
        std::fs::write(&ca_pem_path, &pki.ca_pem).map_err(write_err(&ca_pem_path))?;
        let eml_dir = if config.record_eml {
            let dir = state_dir.join("messages");
            std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
            Some(dir)
        } else {
            None
        };

        let smtp = TcpListener::bind(config.smtp_listen)
            .await
            .map_err(|source| SimError::Bind {
                what: "SMTP",
                addr: config.smtp_listen,
                source,
            })?;
        let http = TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| SimError::Bind {
                what: "HTTP",
                addr: config.http_listen,
                source,
            })?;
        let local = |l: &TcpListener, what: &'static str, addr: SocketAddr| {
            l.local_addr()
                .map_err(|source| SimError::Bind { what, addr, source })
        };
        let smtp_addr = local(&smtp, "SMTP", config.smtp_listen)?;
        let http_addr = local(&http, "HTTP", config.http_listen)?;

        let limits = LimitState::new(
            config.limits_enabled,
            config
                .mailboxes
                .iter()
                .map(|m| (m.address.to_ascii_lowercase(), config.limits_for(m))),
            config.tenants.iter().map(|t| {
                (
                    t.id.to_ascii_lowercase(),
                    t.effective_external_limit(),
                    Duration::from_millis(t.external_window_ms),
                )
            }),
        );
        let per_mailbox_faults: HashMap<String, FaultsConfig> = config
            .mailboxes
            .iter()
            .filter_map(|m| {
                m.faults
                    .clone()
                    .map(|f| (m.address.to_ascii_lowercase(), f))
            })
            .collect();
        let blocked: HashSet<String> = config
            .tenants
            .iter()
            .filter(|t| t.blocked)
            .map(|t| t.id.to_ascii_lowercase())
            .collect();

        let graph_denied: HashSet<String> = config
            .mailboxes
            .iter()
            .filter(|m| !m.graph_access)
            .map(|m| m.address.to_ascii_lowercase())
            .collect();
        let storage_quotas: HashMap<String, u64> = config
            .mailboxes
            .iter()
            .filter_map(|m| {
                m.storage_quota_bytes
                    .map(|q| (m.address.to_ascii_lowercase(), q))
            })
            .collect();
        let graph_activity = GraphActivity::new(config.graph.max_logged_requests);
        for m in &config.mailboxes {
            if let Some(t) = m.graph_throttle {
                graph_activity.arm_throttle(
                    &m.address.to_ascii_lowercase(),
                    t.requests,
                    t.retry_after_secs,
                );
            }
        }
        let shared = Arc::new(Shared {
            mail: MailStore::new(config.max_recorded_messages),
            graph_activity,
            graph_uploads: crate::graph::UploadSessions::default(),
            graph_denied: Mutex::new(graph_denied),
            storage_quotas: Mutex::new(storage_quotas),
            directory: Directory::new(&config),
            tokens: TokenStore::default(),
            federated: Default::default(),
            records: Records::new(
                config.max_recorded_messages,
                config.max_recorded_refusals,
                eml_dir,
            ),
            limits: Arc::new(limits),
            faults: Faults::new(config.seed, config.faults.clone(), per_mailbox_faults),
            error_throttle: ErrorThrottle::new(config.error_throttling.clone()),
            metrics: Metrics::new()?,
            tls: pki.server_config,
            blocked_tenants: Mutex::new(blocked),
            config,
        });

        let cancel = CancellationToken::new();
        let smtp_task = tokio::spawn(crate::smtp::serve(
            smtp,
            Arc::clone(&shared),
            cancel.clone(),
        ));
        let router = crate::http::router(Arc::clone(&shared));
        let http_cancel = cancel.clone();
        let http_task = tokio::spawn(async move {
            let serve =
                axum::serve(http, router).with_graceful_shutdown(http_cancel.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "http server failed");
            }
        });
        tracing::info!(%smtp_addr, %http_addr, ca = %ca_pem_path.display(), "mailpipe-sim started");
        Ok(RunningSim {
            shared,
            smtp_addr,
            http_addr,
            state_dir,
            ca_pem_path,
            ca_pem: pki.ca_pem,
            temp_state_dir,
            cancel,
            tasks: vec![smtp_task, http_task],
        })
    }
}

impl RunningSim {
    /// Where the SMTP listener is bound (connect with the name `localhost`).
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The token authority to give clients instead of `https://login.microsoftonline.com`.
    pub fn authority(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.authority())
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The CA that signed the server certificate, as a PEM file clients can trust.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Accepted messages, oldest first (at most `max_recorded_messages`).
    pub fn accepted(&self) -> Vec<AcceptedMessage> {
        self.shared.records.accepted()
    }

    /// Refusals (4xx/5xx replies, and `code == 0` for dropped connections), oldest first.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.shared.records.refusals()
    }

    /// SMTP AUTH attempts made as `mailbox` (any mechanism, any outcome) since start or reset.
    pub fn auth_attempts(&self, mailbox: &str) -> u64 {
        self.shared
            .records
            .auth_attempts(&mailbox.to_ascii_lowercase())
    }

    /// Refused AUTHs, oldest first, with the mailbox and the instant (at most
    /// `max_recorded_refusals`): what a client's discipline with a broken mailbox is judged by.
    pub fn auth_failures(&self) -> Vec<AuthFailure> {
        self.shared.records.auth_failures()
    }

    /// Per-mailbox counters, sorted by address.
    pub fn mailbox_stats(&self) -> Vec<MailboxStats> {
        self.shared.limits.stats()
    }

    /// The stats of one mailbox.
    pub fn mailbox(&self, address: &str) -> Option<MailboxStats> {
        let address = address.to_ascii_lowercase();
        self.mailbox_stats()
            .into_iter()
            .find(|m| m.address == address)
    }

    /// Replaces the global faults (mailboxes with their own faults keep theirs).
    pub fn set_faults(&self, faults: FaultsConfig) {
        self.shared.faults.set_global(faults);
    }

    pub fn faults(&self) -> FaultsConfig {
        self.shared.faults.global()
    }

    /// Gives one mailbox its own faults, or (`None`) makes it follow the global ones.
    pub fn set_mailbox_faults(&self, mailbox: &str, faults: Option<FaultsConfig>) {
        self.shared
            .faults
            .set_mailbox(&mailbox.to_ascii_lowercase(), faults);
    }

    /// Blocks or unblocks a tenant (`550 5.7.708` at AUTH and MAIL). False if unknown.
    pub fn set_tenant_blocked(&self, tenant: &str, blocked: bool) -> bool {
        let Some(t) = self.shared.directory.tenant(tenant) else {
            return false;
        };
        let id = t.id.to_ascii_lowercase();
        let mut set = lock(&self.shared.blocked_tenants);
        if blocked {
            set.insert(id);
        } else {
            set.remove(&id);
        }
        true
    }

    /// Puts a raw message (an auto-reply, an NDR, ordinary mail) into a mailbox's Inbox, as
    /// if it had been delivered there; returns its Graph message id.
    pub fn inject_inbox(&self, mailbox: &str, raw: &[u8]) -> String {
        self.shared
            .mail
            .file(mailbox, WellKnown::Inbox, raw.to_vec())
    }

    /// Files `count` out-of-office replies (from `count` different customers) into a
    /// mailbox's Inbox, oldest first, as a large batch of invoices draws them; returns
    /// their Graph ids.
    pub fn inject_auto_replies(&self, mailbox: &str, count: usize) -> Vec<String> {
        (0..count)
            .map(|n| {
                let from = format!("customer{n}@fabrikam.example");
                self.inject_inbox(mailbox, &crate::inbox_mail::auto_reply(&from, mailbox, n))
            })
            .collect()
    }

    /// What a mailbox's folders hold, in bytes: what its `storage_quota_bytes` is judged by.
    pub fn mailbox_bytes(&self, mailbox: &str) -> u64 {
        self.shared.mail.mailbox_bytes(mailbox)
    }

    /// Sets (or, `None`, lifts) a mailbox's storage quota: at or over it, every submission
    /// is refused `554 5.2.2 mailbox full; …QuotaExceededException…`.
    pub fn set_storage_quota(&self, mailbox: &str, bytes: Option<u64>) {
        let mut quotas = lock(&self.shared.storage_quotas);
        match bytes {
            Some(q) => quotas.insert(mailbox.to_ascii_lowercase(), q),
            None => quotas.remove(&mailbox.to_ascii_lowercase()),
        };
    }

    /// Deletes the messages of a folder (well-known name, id or display name) received
    /// before `before`, as an Exchange retention tag does when the Managed Folder Assistant
    /// processes the mailbox; returns how many.
    pub fn expire_folder(
        &self,
        mailbox: &str,
        folder: &str,
        before: chrono::DateTime<chrono::Utc>,
    ) -> usize {
        match self.folder(mailbox, folder) {
            Some(f) => self.shared.mail.expire(mailbox, &f.id, before),
            None => 0,
        }
    }

    /// Files a message into a mailbox's Sent Items as if a person had sent it from Outlook
    /// (not through SMTP: nothing is accepted or counted); returns its Graph id.
    pub fn file_sent_item(&self, mailbox: &str, raw: &[u8]) -> String {
        self.shared
            .mail
            .file(mailbox, WellKnown::SentItems, raw.to_vec())
    }

    /// Makes the messages of a folder (well-known name, id or display name) `by` older, as
    /// if they had arrived that much earlier; returns how many.
    pub fn age_folder(&self, mailbox: &str, folder: &str, by: chrono::Duration) -> usize {
        match self.folder(mailbox, folder) {
            Some(f) => self.shared.mail.age(mailbox, &f.id, by),
            None => 0,
        }
    }

    /// Delivers a message from the internet into a mailbox's Inbox, through Exchange's
    /// header firewall ([`crate::strip_organization_headers`]): what an outsider who mails
    /// a pool mailbox achieves. Returns its Graph message id.
    pub fn deliver_from_internet(&self, mailbox: &str, raw: &[u8]) -> String {
        self.inject_inbox(mailbox, &crate::ndr::strip_organization_headers(raw))
    }

    /// Files the NDR the tenant's own Exchange writes for `mailbox` about `original` (as
    /// submitted) failing for `failed`, as [[bounces]] does after a send; returns its id.
    pub fn file_tenant_ndr(
        &self,
        mailbox: &str,
        original: &[u8],
        failed: &[crate::FailedRecipient],
    ) -> String {
        let ndr = crate::exchange_ndr(
            self.shared.hostname(),
            &self.shared.postmaster_of(mailbox),
            mailbox,
            original,
            failed,
            chrono::Utc::now(),
        );
        self.inject_inbox(mailbox, &ndr)
    }

    /// Every folder of a mailbox (Inbox, Sent Items, folders clients created) with its
    /// messages, as Graph would list them.
    pub fn folders(&self, mailbox: &str) -> Vec<FolderView> {
        self.shared.mail.view(mailbox)
    }

    /// One folder by well-known name (`inbox`, `sentitems`), id or display name.
    pub fn folder(&self, mailbox: &str, name: &str) -> Option<FolderView> {
        self.folders(mailbox).into_iter().find(|f| {
            f.id == name
                || f.display_name.eq_ignore_ascii_case(name)
                || f.well_known_name
                    .as_deref()
                    .is_some_and(|w| w.eq_ignore_ascii_case(name))
        })
    }

    /// Files `raw` into the mailbox's Drafts (a draft an earlier client left); returns its id.
    pub fn file_draft(&self, mailbox: &str, raw: &[u8]) -> String {
        self.shared.mail.file(
            &mailbox.to_ascii_lowercase(),
            crate::mail_store::WellKnown::Drafts,
            raw.to_vec(),
        )
    }

    /// Attachment upload sessions open (created, not finished, not expired).
    pub fn open_upload_sessions(&self) -> usize {
        self.shared.graph_uploads.open()
    }

    /// Ends every open upload session's life now: its next range is answered `404`.
    pub fn expire_upload_sessions(&self) {
        self.shared.graph_uploads.expire_all();
    }

    /// Graph requests answered so far, oldest first (at most `graph.max_logged_requests`).
    pub fn graph_requests(&self) -> Vec<GraphRequest> {
        self.shared.graph_activity.requests()
    }

    /// Graph counters per mailbox: requests, `429`s with the next request's instant, the
    /// most requests in flight at once.
    pub fn graph_stats(&self) -> Vec<GraphMailboxStats> {
        self.shared.graph_activity.stats()
    }

    /// The Graph counters of one mailbox (default ones when it saw no request).
    pub fn graph_mailbox(&self, mailbox: &str) -> GraphMailboxStats {
        let address = mailbox.to_ascii_lowercase();
        self.graph_stats()
            .into_iter()
            .find(|m| m.address == address)
            .unwrap_or(GraphMailboxStats {
                address,
                ..Default::default()
            })
    }

    /// Answers the next `requests` Graph requests for `mailbox` with `429 ApplicationThrottled`
    /// and `Retry-After: retry_after_secs`.
    pub fn throttle_graph(&self, mailbox: &str, requests: u64, retry_after_secs: u64) {
        self.shared.graph_activity.arm_throttle(
            &mailbox.to_ascii_lowercase(),
            requests,
            Some(retry_after_secs),
        );
    }

    /// `throttle_graph` with `429`s that carry no `Retry-After`.
    pub fn throttle_graph_without_retry_after(&self, mailbox: &str, requests: u64) {
        self.shared
            .graph_activity
            .arm_throttle(&mailbox.to_ascii_lowercase(), requests, None);
    }

    /// Grants or denies apps Graph access to a mailbox (its application access policy).
    pub fn set_graph_access(&self, mailbox: &str, allowed: bool) {
        let mut denied = lock(&self.shared.graph_denied);
        if allowed {
            denied.remove(&mailbox.to_ascii_lowercase());
        } else {
            denied.insert(mailbox.to_ascii_lowercase());
        }
    }

    /// The Graph base URL to give clients instead of `https://graph.microsoft.com`.
    pub fn graph_base_url(&self) -> String {
        self.authority()
    }

    /// The federated assertions that got tokens so far, oldest first: which issuer's
    /// token (subject, `jti`) a client presented.
    pub fn federated_assertions(&self) -> Vec<crate::FederatedAssertion> {
        self.shared.federated.all()
    }

    /// Makes every token issued so far expired (tests of token refresh).
    pub fn expire_tokens(&self) {
        self.shared.tokens.expire_all();
    }

    /// Forgets messages, refusals, quota windows and counters (like `POST /api/reset`).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// The Prometheus text exposition (as served on /metrics).
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }

    /// Stops both listeners and every open session, and removes a temporary state dir.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in self.tasks.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if self.temp_state_dir {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
