//! The state shared by the SMTP sessions and the HTTP handlers of one running simulator.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::SimConfig;
use crate::directory::Directory;
use crate::faults::Faults;
use crate::graph::GraphActivity;
use crate::mail_store::MailStore;
use crate::metrics::Metrics;
use crate::records::{Records, Refusal, Stage};
use crate::smtp::error_throttle::ErrorThrottle;
use crate::smtp::limits::LimitState;
use crate::smtp::replies::Reply;
use crate::tokens::TokenStore;

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: SimConfig,
    pub directory: Directory,
    pub tokens: TokenStore,
    /// Federated assertions that got tokens (which token a client presented).
    pub federated: crate::federated::FederatedLog,
    pub records: Records,
    pub limits: Arc<LimitState>,
    pub faults: Faults,
    pub error_throttle: ErrorThrottle,
    pub metrics: Metrics,
    pub tls: Arc<rustls::ServerConfig>,
    /// Lower-case ids of blocked tenants; starts from the config, changeable at run time.
    pub blocked_tenants: Mutex<HashSet<String>>,
    /// Every mailbox's folders (Inbox, Sent Items, folders clients made), seen through Graph.
    pub mail: MailStore,
    /// Graph requests: concurrency, throttling, the request log.
    pub graph_activity: GraphActivity,
    /// Attachment upload sessions open on drafts.
    pub graph_uploads: crate::graph::UploadSessions,
    /// Lower-case addresses the access policy denies Graph access to.
    pub graph_denied: Mutex<HashSet<String>>,
    /// Storage quotas by lower-case address; starts from the config, changeable at run time.
    pub storage_quotas: Mutex<HashMap<String, u64>>,
}

impl Shared {
    pub fn hostname(&self) -> &str {
        &self.config.hostname
    }

    pub fn tenant_blocked(&self, tenant: &str) -> bool {
        crate::records::lock(&self.blocked_tenants).contains(&tenant.to_ascii_lowercase())
    }

    /// Whether apps may reach `mailbox` through Graph (its access policy).
    pub fn graph_access(&self, mailbox: &str) -> bool {
        !crate::records::lock(&self.graph_denied).contains(&mailbox.to_ascii_lowercase())
    }

    /// Whether `mailbox` is at or over its storage quota (what its folders hold).
    pub fn storage_full(&self, mailbox: &str) -> bool {
        let quota = crate::records::lock(&self.storage_quotas)
            .get(&mailbox.to_ascii_lowercase())
            .copied();
        quota.is_some_and(|q| self.mail.mailbox_bytes(mailbox) >= q)
    }

    /// The tenant's postmaster address NDRs come from (its first domain, else its id).
    pub fn postmaster_of(&self, mailbox: &str) -> String {
        let domain = self
            .directory
            .mailbox(mailbox)
            .and_then(|m| self.directory.tenant(&m.tenant))
            .map(|t| t.domains.first().cloned().unwrap_or_else(|| t.id.clone()))
            .unwrap_or_else(|| "localhost".to_owned());
        format!("postmaster@{domain}")
    }

    /// Forgets messages, refusals, windows and counters (not tokens, not open connections).
    pub fn reset(&self) {
        self.records.clear();
        self.mail.clear();
        self.graph_activity.clear();
        self.graph_uploads.clear();
        self.limits.reset();
        self.faults.reseed();
        self.error_throttle.reset();
        self.federated.clear();
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.config.idle_timeout_secs.max(1))
    }

    /// Records a refusal in the log, the mailbox's counters and the metrics.
    pub fn refuse(&self, mailbox: Option<&str>, stage: Stage, command: &str, reply: &Reply) {
        let enhanced = reply.enhanced().to_owned();
        self.metrics
            .refusals
            .with_label_values(&[stage_label(stage), &reply.code.to_string(), &enhanced])
            .inc();
        if let Some(mb) = mailbox {
            self.limits.note_refusal(mb);
        }
        self.records.push_refusal(Refusal {
            mailbox: mailbox.map(str::to_owned),
            stage,
            command: command.to_owned(),
            code: reply.code,
            enhanced,
            text: reply.text.clone(),
            at: chrono::Utc::now(),
        });
    }
}

fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::Connect => "connect",
        Stage::Helo => "helo",
        Stage::StartTls => "starttls",
        Stage::Auth => "auth",
        Stage::MailFrom => "mail_from",
        Stage::RcptTo => "rcpt_to",
        Stage::Data => "data",
        Stage::DataEnd => "data_end",
        Stage::Other => "other",
    }
}
