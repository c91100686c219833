//! The simulator's configuration: TOML shape, defaults (Exchange Online's), and validation.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Exchange Online's per-mailbox defaults (see DESIGN.md, "Exchange Online facts").
pub mod defaults {
    pub const MESSAGES_PER_WINDOW: u64 = 30;
    pub const MESSAGE_WINDOW_MS: u64 = 60_000;
    pub const RECIPIENTS_PER_WINDOW: u64 = 10_000;
    pub const RECIPIENT_WINDOW_MS: u64 = 86_400_000;
    pub const MAX_CONNECTIONS: u64 = 3;
    pub const MAX_RECIPIENTS_PER_MESSAGE: u64 = 500;
    /// 35 MiB, what Exchange advertises by default.
    pub const MAX_MESSAGE_SIZE: u64 = 36_700_160;
    /// The largest size Exchange can be configured to; also the memory cap when limits are off.
    pub const HARD_MAX_MESSAGE_SIZE: u64 = 157_286_400;
    pub const EXTERNAL_RECIPIENT_LIMIT: u64 = 10_000;
    pub const EXTERNAL_WINDOW_MS: u64 = 86_400_000;
    /// Entra ID answers `expires_in: 3599` for a one-hour token.
    pub const TOKEN_LIFETIME_SECS: u64 = 3599;
    /// The Graph application permissions an app has unless `[[apps]] roles` says otherwise.
    pub const GRAPH_ROLES: [&str; 2] = ["Mail.ReadWrite", "Mail.Send"];
    pub const SCOPE: &str = "https://outlook.office365.com/.default";
    /// The scope of app-only Microsoft Graph tokens (global cloud).
    pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
    /// Failed AUTHs that lock a mailbox's AUTH: Entra ID smart lockout's default threshold.
    pub const AUTH_FAILURES_BEFORE_LOCKOUT: u64 = 10;
    /// Unknown recipients that throttle a mailbox's sending (Microsoft publishes no number).
    pub const INVALID_RECIPIENTS_BEFORE_THROTTLING: u64 = 20;
    /// How far back failures are counted.
    pub const ERROR_WINDOW_MS: u64 = 600_000;
    /// How long a lockout or throttling lasts: smart lockout's first lockout is 60 s.
    pub const ERROR_BLOCK_MS: u64 = 60_000;
}

/// Whole simulator configuration. Every key except the lists has a default, so an empty
/// document is a valid (if useless) configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// SMTP submission listener; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub smtp_listen: SocketAddr,
    /// HTTP listener: token endpoint, inspection API, /metrics, /healthz.
    #[serde(default = "default_listen")]
    pub http_listen: SocketAddr,
    /// Where `ca.pem` (and `messages/*.eml` when `record_eml`) are written. A fresh
    /// directory under the system temp dir when unset.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Also write each accepted message to `state_dir/messages/<id>.eml`.
    #[serde(default)]
    pub record_eml: bool,
    /// Seed for fault injection; the same seed and the same order of messages per mailbox
    /// gives the same faults.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Host name used in the greeting and reply texts (Exchange puts its server name there).
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Switch every mailbox and tenant limit off (throughput benchmarks).
    #[serde(default = "default_true")]
    pub limits_enabled: bool,
    /// How many accepted messages (with their raw bytes) are kept in memory; older ones are
    /// dropped but still counted. Keeps long benchmarks from growing without bound.
    #[serde(default = "default_max_recorded")]
    pub max_recorded_messages: usize,
    /// How many refusals are kept in memory.
    #[serde(default = "default_max_recorded")]
    pub max_recorded_refusals: usize,
    /// Idle time after which a connection is closed with 421 4.4.1.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Longest accepted command line (bytes, including CRLF).
    #[serde(default = "default_max_line")]
    pub max_line_length: usize,
    /// Scopes the token endpoint accepts.
    #[serde(default = "default_scopes")]
    pub accepted_scopes: Vec<String>,
    /// Scopes the token endpoint grants Microsoft Graph tokens for (audience Graph: good for
    /// the Graph endpoints, refused by SMTP AUTH).
    #[serde(default = "default_graph_scopes")]
    pub graph_scopes: Vec<String>,
    /// The Microsoft Graph endpoints: concurrency cap, page sizes, latency.
    #[serde(default)]
    pub graph: GraphConfig,
    /// Recipients whose messages are accepted and then bounced: an Exchange-style NDR is
    /// filed into the sender's Inbox `delay_ms` after the `250`.
    #[serde(default)]
    pub bounces: Vec<BounceRule>,
    /// Default limits for every mailbox; each `[mailboxes.limits]` key overrides one of these.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Faults for every mailbox that has no `[mailboxes.faults]` of its own.
    #[serde(default)]
    pub faults: FaultsConfig,
    /// Exchange's continuous error throttling: mailboxes that keep failing are refused a while.
    #[serde(default)]
    pub error_throttling: ErrorThrottlingConfig,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    #[serde(default)]
    pub mailboxes: Vec<MailboxConfig>,
}

/// One Microsoft 365 tenant.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Used in the token URL path (`/{id}/oauth2/v2.0/token`); any of `domains` works there too.
    pub id: String,
    /// The tenant's own (accepted) domains; recipients elsewhere are external.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Tenant-wide SMTP AUTH with passwords (AUTH LOGIN / PLAIN).
    #[serde(default = "default_true")]
    pub basic_auth_enabled: bool,
    /// External recipients per tenant per `external_window_ms` (TERRL).
    #[serde(default)]
    pub external_recipient_limit: Option<u64>,
    /// Number of licenses; when set and `external_recipient_limit` is not, the limit is
    /// Microsoft's formula `500 × licenses^0.7 + 9500`.
    #[serde(default)]
    pub licenses: Option<u64>,
    #[serde(default = "default_external_window")]
    pub external_window_ms: u64,
    /// A blocked tenant gets `550 5.7.708` at AUTH and MAIL.
    #[serde(default)]
    pub blocked: bool,
}

/// An Entra ID app registration with client credentials.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub tenant: String,
    pub client_id: String,
    /// The client secret; an app has a secret, a certificate, federated credentials, or
    /// several.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// A certificate (PEM text) uploaded to the app: clients sign assertions with its key.
    #[serde(default)]
    pub client_certificate: Option<String>,
    /// Federated identity credentials (`[[apps.federated]]`): tokens of another issuer
    /// (a Kubernetes cluster, GitHub Actions) that this app accepts as its assertion.
    #[serde(default)]
    pub federated: Vec<FederatedCredentialConfig>,
    /// Mailboxes the app may authenticate as (Exchange's service principal grants); `"*"` = all
    /// mailboxes of its tenant.
    #[serde(default)]
    pub mailboxes: Vec<String>,
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime_secs: u64,
    /// Microsoft Graph application permissions an admin consented to: the `roles` claim of
    /// the app's Graph tokens, and what Graph lets the app do (`Mail.ReadWrite` to read,
    /// move and create drafts, `Mail.Send` to send). Default: both.
    #[serde(default = "default_graph_roles")]
    pub roles: Vec<String>,
    /// RBAC for Applications (or an application access policy) scoping the app to these
    /// mailboxes of its tenant; others get `403 ErrorAccessDenied` from Graph. None: every
    /// mailbox of the tenant.
    #[serde(default)]
    pub graph_scope: Option<Vec<String>>,
}

/// A federated identity credential on an app registration: an assertion issued by `issuer`
/// for `subject` and `audience`, signed by the issuer's key, gets the app a token.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedCredentialConfig {
    /// The issuer URL, compared exactly with the assertion's `iss` (Entra is case-sensitive).
    pub issuer: String,
    /// Compared exactly with `sub`, e.g. `system:serviceaccount:mailpipe:mailpipe-deliver`.
    pub subject: String,
    /// Compared with `aud`; Entra's recommended value is the default.
    #[serde(default = "default_federated_audience")]
    pub audience: String,
    /// The issuer's signing key (PEM: an RSA public key or a certificate), standing in for
    /// the keys Entra fetches from the issuer's JWKS.
    pub issuer_key: String,
}

/// A licensed mailbox that can submit mail.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxConfig {
    pub address: String,
    pub tenant: String,
    /// Password for AUTH LOGIN / PLAIN; without one only XOAUTH2 works.
    #[serde(default)]
    pub password: Option<String>,
    /// Addresses this mailbox has Send As rights on (`"*"` = any).
    #[serde(default)]
    pub send_as: Vec<String>,
    /// Per-mailbox SMTP AUTH switch (`Set-CASMailbox -SmtpClientAuthenticationDisabled`).
    #[serde(default = "default_true")]
    pub smtp_auth_enabled: bool,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Replaces the global `[faults]` for this mailbox when present.
    #[serde(default)]
    pub faults: Option<FaultsConfig>,
    /// Whether the tenant's application access policy (or RBAC for Applications) grants apps
    /// Graph access to this mailbox; `false`: every Graph request for it gets `403
    /// ErrorAccessDenied`.
    #[serde(default = "default_true")]
    pub graph_access: bool,
    /// Whether the mailbox has an Exchange Online licence; `false` (unlicensed, or living
    /// on-premises): Graph answers `404 MailboxNotEnabledForRESTAPI` (SMTP is unchanged).
    #[serde(default = "default_true")]
    pub licensed: bool,
    /// Answer this mailbox's next Graph requests `429` (armed at start, as
    /// `RunningSim::throttle_graph` does at run time).
    #[serde(default)]
    pub graph_throttle: Option<GraphThrottle>,
    /// The mailbox's storage quota (Exchange's `ProhibitSendQuota`; 50 GB or 100 GB on
    /// Exchange Online plans): once what its folders hold reaches it, every submission is
    /// refused `554 5.2.2 mailbox full; … QuotaExceededException …`. None: unlimited.
    #[serde(default)]
    pub storage_quota_bytes: Option<u64>,
}

/// `[graph]`: how the simulated Microsoft Graph behaves.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GraphConfig {
    /// Concurrent requests per mailbox before `429 ApplicationThrottled` (Exchange's
    /// MailboxConcurrency limit is 4).
    pub max_concurrent_requests: u64,
    /// Page size when a list request has no `$top` (Graph's is 10).
    pub default_page_size: usize,
    /// Largest `$top` accepted (Graph's is 1000 for messages); larger gets `400`.
    pub max_page_size: usize,
    /// Time each Graph request takes before it is answered, so overlapping requests are
    /// seen overlapping (concurrency tests).
    pub latency_ms: u64,
    /// Graph requests kept in the request log (`GET /api/graph/requests`).
    pub max_logged_requests: usize,
    /// Exchange Online's message size limit (35 MB by default): a draft above it is not
    /// sent (`413 ErrorMessageSizeExceeded`), an upload session that would take the draft
    /// above it is not created.
    pub max_message_bytes: u64,
    /// How long an attachment upload session lives without a range arriving (each range
    /// extends it); an expired session's URL answers `404`.
    pub upload_session_expiry_secs: u64,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 4,
            default_page_size: 10,
            max_page_size: 1000,
            latency_ms: 0,
            max_logged_requests: 100_000,
            max_message_bytes: 35 * 1024 * 1024,
            upload_session_expiry_secs: 900,
        }
    }
}

/// The next `requests` Graph requests of a mailbox get `429` with `Retry-After:
/// retry_after_secs`, or without `Retry-After` when it is left out (Graph sometimes does).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GraphThrottle {
    pub requests: u64,
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
}

/// `[[bounces]]`: a recipient (or a whole domain) that Exchange accepts mail for and then
/// reports undeliverable.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BounceRule {
    /// One address; or give `domain`.
    #[serde(default)]
    pub recipient: Option<String>,
    /// Every recipient in this domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// The enhanced status code of the NDR (`5.1.10` recipient not found, `5.2.2` mailbox
    /// full, `5.4.1` relay access denied, ...).
    #[serde(default = "default_bounce_status")]
    pub status: String,
    /// The remote server's reply quoted in the NDR; derived from `status` when unset.
    #[serde(default)]
    pub diagnostic: Option<String>,
    /// How long after the `250` the NDR reaches the sender's Inbox.
    #[serde(default = "default_bounce_delay")]
    pub delay_ms: u64,
}

impl BounceRule {
    /// Whether `rcpt` bounces under this rule.
    pub fn matches(&self, rcpt: &str) -> bool {
        match (&self.recipient, &self.domain) {
            (Some(r), _) => r.eq_ignore_ascii_case(rcpt),
            (None, Some(d)) => rcpt
                .rsplit_once('@')
                .is_some_and(|(_, rd)| rd.eq_ignore_ascii_case(d)),
            (None, None) => false,
        }
    }

    /// The remote reply the NDR quotes: `diagnostic`, or Exchange's usual text for `status`.
    pub fn diagnostic_text(&self) -> String {
        if let Some(d) = &self.diagnostic {
            return d.clone();
        }
        match self.status.as_str() {
            "5.1.10" => "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup".into(),
            "5.1.1" => "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found".into(),
            "5.2.2" => "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded".into(),
            "5.4.1" => "550 5.4.1 Recipient address rejected: Access denied.".into(),
            "5.7.1" => "550 5.7.1 RESOLVER.RST.AuthRequired; authentication required".into(),
            other => format!("550 {other} Delivery failed"),
        }
    }
}

/// Limits as written in TOML: every key optional, unset keys fall back to the global
/// `[limits]` table and then to Exchange's defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub unlimited: Option<bool>,
    pub messages_per_window: Option<u64>,
    pub message_window_ms: Option<u64>,
    pub recipients_per_window: Option<u64>,
    pub recipient_window_ms: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_recipients_per_message: Option<u64>,
    pub max_message_size: Option<u64>,
}

/// Limits after resolution, as the SMTP server applies them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub unlimited: bool,
    pub messages_per_window: u64,
    pub message_window: Duration,
    pub recipients_per_window: u64,
    pub recipient_window: Duration,
    pub max_connections: u64,
    pub max_recipients_per_message: u64,
    pub max_message_size: u64,
}

/// Fault injection knobs. Rates are probabilities per message (0.0 – 1.0).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    /// Close the connection after the final `.` of DATA without replying.
    pub drop_after_data_rate: f64,
    /// Answer the final `.` with `421 4.3.2 Service not available` and close.
    pub reply_421_rate: f64,
    /// Answer the final `.` with `451 4.7.0 Temporary server error`.
    pub reply_451_rate: f64,
    /// Say nothing after the final `.` (the message is not accepted) and keep the connection
    /// open until the client closes it or the idle timeout: the client cannot know the outcome.
    pub silent_after_data_rate: f64,
    /// Delay before every reply, in milliseconds.
    pub slow_reply_ms: u64,
    /// After a message is accepted (counted, recorded), hold its `250` this long: a client
    /// that dies meanwhile sent a message it has no answer for.
    pub accepted_reply_delay_ms: u64,
    /// Recipients refused at RCPT with `550 5.1.1 RESOLVER.ADR.RecipNotFound`.
    pub refuse_recipients: Vec<String>,
}

/// Exchange punishes clients that keep repeating an error: after `auth_failures` failed AUTHs
/// (or `invalid_recipients` unknown recipients) of one mailbox within `window_ms`, that
/// mailbox's next attempts are refused for `block_ms`, whatever they present: AUTH with
/// `535 5.7.3` (as Entra's smart lockout does), MAIL with `550 5.2.255`. A count of 0 turns
/// that kind off.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorThrottlingConfig {
    pub auth_failures: u64,
    pub invalid_recipients: u64,
    pub window_ms: u64,
    pub block_ms: u64,
}

impl Default for ErrorThrottlingConfig {
    fn default() -> Self {
        Self {
            auth_failures: defaults::AUTH_FAILURES_BEFORE_LOCKOUT,
            invalid_recipients: defaults::INVALID_RECIPIENTS_BEFORE_THROTTLING,
            window_ms: defaults::ERROR_WINDOW_MS,
            block_ms: defaults::ERROR_BLOCK_MS,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
fn default_seed() -> u64 {
    42
}
fn default_hostname() -> String {
    "SIM0PR01MB0001.mailpipe-sim.localhost".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_max_recorded() -> usize {
    100_000
}
fn default_idle_timeout() -> u64 {
    600
}
fn default_max_line() -> usize {
    4096
}
fn default_scopes() -> Vec<String> {
    vec![
        defaults::SCOPE.to_owned(),
        "https://outlook.office.com/.default".to_owned(),
    ]
}
fn default_graph_scopes() -> Vec<String> {
    vec![defaults::GRAPH_SCOPE.to_owned()]
}
fn default_bounce_status() -> String {
    "5.1.10".to_owned()
}
fn default_bounce_delay() -> u64 {
    2000
}
fn default_external_window() -> u64 {
    defaults::EXTERNAL_WINDOW_MS
}
fn default_federated_audience() -> String {
    "api://AzureADTokenExchange".into()
}
fn default_token_lifetime() -> u64 {
    defaults::TOKEN_LIFETIME_SECS
}
fn default_graph_roles() -> Vec<String> {
    defaults::GRAPH_ROLES
        .iter()
        .map(|r| (*r).to_owned())
        .collect()
}

impl Default for SimConfig {
    fn default() -> Self {
        // Same values as an empty TOML document, so both paths agree.
        Self::from_toml_str("").unwrap_or_else(|_| unreachable!("empty config is valid"))
    }
}

impl SimConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg: SimConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Checks cross references and ranges; errors name the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        let mut tenant_ids = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if t.id.trim().is_empty() {
                return invalid(format!("tenants[{i}].id"), "must not be empty".into());
            }
            if !tenant_ids.insert(t.id.to_ascii_lowercase()) {
                return invalid(
                    format!("tenants[{i}].id"),
                    format!("duplicate tenant {:?}", t.id),
                );
            }
            if t.external_window_ms == 0 {
                return invalid(
                    format!("tenants[{i}].external_window_ms"),
                    "must be > 0".into(),
                );
            }
        }
        let mut addresses = HashSet::new();
        for (i, m) in self.mailboxes.iter().enumerate() {
            if !m.address.contains('@') {
                return invalid(
                    format!("mailboxes[{i}].address"),
                    format!("{:?} is not an email address", m.address),
                );
            }
            if !addresses.insert(m.address.to_ascii_lowercase()) {
                return invalid(
                    format!("mailboxes[{i}].address"),
                    format!("duplicate mailbox {:?}", m.address),
                );
            }
            if !tenant_ids.contains(&m.tenant.to_ascii_lowercase()) {
                return invalid(
                    format!("mailboxes[{i}].tenant"),
                    format!("unknown tenant {:?}", m.tenant),
                );
            }
            validate_limits(&m.limits, &format!("mailboxes[{i}].limits"))?;
            if let Some(f) = &m.faults {
                validate_faults(f, &format!("mailboxes[{i}].faults"))?;
            }
        }
        let mut client_ids = HashSet::new();
        for (i, a) in self.apps.iter().enumerate() {
            if !tenant_ids.contains(&a.tenant.to_ascii_lowercase()) {
                return invalid(
                    format!("apps[{i}].tenant"),
                    format!("unknown tenant {:?}", a.tenant),
                );
            }
            if !client_ids.insert(a.client_id.clone()) {
                return invalid(
                    format!("apps[{i}].client_id"),
                    format!("duplicate client id {:?}", a.client_id),
                );
            }
            if a.client_secret.is_none() && a.client_certificate.is_none() && a.federated.is_empty()
            {
                return invalid(
                    format!("apps[{i}].client_secret"),
                    "an app needs a client_secret, a client_certificate or a [[apps.federated]] credential".into(),
                );
            }
            if let Some(pem) = &a.client_certificate
                && let Err(e) = crate::app_certificate::RegisteredCertificate::from_pem(pem)
            {
                return invalid(format!("apps[{i}].client_certificate"), e);
            }
            for (j, f) in a.federated.iter().enumerate() {
                let key = format!("apps[{i}].federated[{j}]");
                for (name, value) in [
                    ("issuer", &f.issuer),
                    ("subject", &f.subject),
                    ("audience", &f.audience),
                ] {
                    if value.trim().is_empty() {
                        return invalid(format!("{key}.{name}"), "must not be empty".into());
                    }
                }
                if let Err(e) = crate::federated::IssuerKey::from_pem(&f.issuer_key) {
                    return invalid(format!("{key}.issuer_key"), e);
                }
            }
            for (j, mb) in a.graph_scope.iter().flatten().enumerate() {
                let known = self.mailboxes.iter().any(|m| {
                    m.address.eq_ignore_ascii_case(mb) && m.tenant.eq_ignore_ascii_case(&a.tenant)
                });
                if !known {
                    return invalid(
                        format!("apps[{i}].graph_scope[{j}]"),
                        format!("{mb:?} is not a mailbox of tenant {:?}", a.tenant),
                    );
                }
            }
            for (j, mb) in a.mailboxes.iter().enumerate() {
                if mb == "*" {
                    continue;
                }
                let found = self
                    .mailboxes
                    .iter()
                    .find(|m| m.address.eq_ignore_ascii_case(mb));
                match found {
                    None => {
                        return invalid(
                            format!("apps[{i}].mailboxes[{j}]"),
                            format!("unknown mailbox {mb:?}"),
                        );
                    }
                    Some(m) if !m.tenant.eq_ignore_ascii_case(&a.tenant) => {
                        return invalid(
                            format!("apps[{i}].mailboxes[{j}]"),
                            format!(
                                "mailbox {mb:?} belongs to tenant {:?}, not {:?}",
                                m.tenant, a.tenant
                            ),
                        );
                    }
                    Some(_) => {}
                }
            }
        }
        validate_limits(&self.limits, "limits")?;
        validate_faults(&self.faults, "faults")?;
        for (i, b) in self.bounces.iter().enumerate() {
            if b.recipient.is_some() == b.domain.is_some() {
                return invalid(
                    format!("bounces[{i}]"),
                    "give exactly one of `recipient` and `domain`".into(),
                );
            }
            let parts: Vec<&str> = b.status.split('.').collect();
            let status_ok = parts.len() == 3
                && (parts[0] == "5" || parts[0] == "4")
                && parts[1..].iter().all(|p| {
                    !p.is_empty() && p.len() <= 3 && p.bytes().all(|c| c.is_ascii_digit())
                });
            if !status_ok {
                return invalid(
                    format!("bounces[{i}].status"),
                    format!(
                        "{:?} is not an enhanced status code such as 5.1.10",
                        b.status
                    ),
                );
            }
        }
        if self.graph.max_concurrent_requests == 0 {
            return invalid("graph.max_concurrent_requests".into(), "must be > 0".into());
        }
        if self.graph.default_page_size == 0
            || self.graph.default_page_size > self.graph.max_page_size
        {
            return invalid(
                "graph.default_page_size".into(),
                "must be between 1 and graph.max_page_size".into(),
            );
        }
        for (name, v) in [
            ("window_ms", self.error_throttling.window_ms),
            ("block_ms", self.error_throttling.block_ms),
        ] {
            if v == 0 {
                return invalid(format!("error_throttling.{name}"), "must be > 0".into());
            }
        }
        if self.max_line_length < 512 {
            return invalid(
                "max_line_length".into(),
                "must be at least 512 (RFC 5321)".into(),
            );
        }
        Ok(())
    }

    /// The effective limits of one mailbox: its own keys, then `[limits]`, then Exchange's.
    pub fn limits_for(&self, mailbox: &MailboxConfig) -> Limits {
        self.resolve_limits(&mailbox.limits)
    }

    /// The limits a mailbox without a `[mailboxes.limits]` table gets.
    pub fn limits_for_default(&self) -> Limits {
        self.resolve_limits(&LimitsConfig::default())
    }

    fn resolve_limits(&self, own: &LimitsConfig) -> Limits {
        let global = &self.limits;
        let pick = |a: Option<u64>, b: Option<u64>, d: u64| a.or(b).unwrap_or(d);
        Limits {
            unlimited: !self.limits_enabled || own.unlimited.or(global.unlimited).unwrap_or(false),
            messages_per_window: pick(
                own.messages_per_window,
                global.messages_per_window,
                defaults::MESSAGES_PER_WINDOW,
            ),
            message_window: Duration::from_millis(pick(
                own.message_window_ms,
                global.message_window_ms,
                defaults::MESSAGE_WINDOW_MS,
            )),
            recipients_per_window: pick(
                own.recipients_per_window,
                global.recipients_per_window,
                defaults::RECIPIENTS_PER_WINDOW,
            ),
            recipient_window: Duration::from_millis(pick(
                own.recipient_window_ms,
                global.recipient_window_ms,
                defaults::RECIPIENT_WINDOW_MS,
            )),
            max_connections: pick(
                own.max_connections,
                global.max_connections,
                defaults::MAX_CONNECTIONS,
            ),
            max_recipients_per_message: pick(
                own.max_recipients_per_message,
                global.max_recipients_per_message,
                defaults::MAX_RECIPIENTS_PER_MESSAGE,
            ),
            max_message_size: pick(
                own.max_message_size,
                global.max_message_size,
                defaults::MAX_MESSAGE_SIZE,
            )
            .min(defaults::HARD_MAX_MESSAGE_SIZE),
        }
    }
}

impl TenantConfig {
    /// TERRL: explicit limit, else Microsoft's license formula, else 10,000.
    pub fn effective_external_limit(&self) -> u64 {
        if let Some(l) = self.external_recipient_limit {
            return l;
        }
        match self.licenses {
            Some(n) => (500.0 * (n as f64).powf(0.7) + 9500.0).floor() as u64,
            None => defaults::EXTERNAL_RECIPIENT_LIMIT,
        }
    }

    /// Whether `address` is in one of the tenant's own domains.
    pub fn is_internal(&self, address: &str) -> bool {
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

fn validate_limits(l: &LimitsConfig, key: &str) -> Result<(), ConfigError> {
    for (name, v) in [
        ("message_window_ms", l.message_window_ms),
        ("recipient_window_ms", l.recipient_window_ms),
    ] {
        if v == Some(0) {
            return Err(ConfigError::Invalid {
                key: format!("{key}.{name}"),
                message: "must be > 0".into(),
            });
        }
    }
    Ok(())
}

fn validate_faults(f: &FaultsConfig, key: &str) -> Result<(), ConfigError> {
    for (name, v) in [
        ("drop_after_data_rate", f.drop_after_data_rate),
        ("reply_421_rate", f.reply_421_rate),
        ("reply_451_rate", f.reply_451_rate),
        ("silent_after_data_rate", f.silent_after_data_rate),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(ConfigError::Invalid {
                key: format!("{key}.{name}"),
                message: format!("{v} is not a probability between 0.0 and 1.0"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_valid_and_uses_exchange_defaults() {
        let cfg = SimConfig::from_toml_str("").expect("valid");
        assert_eq!(cfg.seed, 42);
        assert!(cfg.limits_enabled);
        let mb = MailboxConfig {
            address: "a@b".into(),
            tenant: "t".into(),
            password: None,
            send_as: vec![],
            smtp_auth_enabled: true,
            limits: LimitsConfig::default(),
            faults: None,
            graph_access: true,
            licensed: true,
            graph_throttle: None,
            storage_quota_bytes: None,
        };
        let l = cfg.limits_for(&mb);
        assert_eq!(l.messages_per_window, 30);
        assert_eq!(l.message_window, Duration::from_secs(60));
        assert_eq!(l.max_connections, 3);
        assert_eq!(l.max_message_size, 36_700_160);
    }

    #[test]
    fn unknown_key_is_named() {
        let err =
            SimConfig::from_toml_str("[[tenants]]\nid = \"x\"\nbogus = 1\n").expect_err("invalid");
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn dangling_reference_names_key() {
        let err = SimConfig::from_toml_str(
            "[[tenants]]\nid = \"t\"\n[[mailboxes]]\naddress = \"a@t.example\"\ntenant = \"nope\"\n",
        )
        .expect_err("invalid");
        assert!(err.to_string().contains("mailboxes[0].tenant"), "{err}");
    }

    #[test]
    fn bad_rate_names_key() {
        let err =
            SimConfig::from_toml_str("[faults]\nreply_421_rate = 2.0\n").expect_err("invalid");
        assert!(err.to_string().contains("faults.reply_421_rate"), "{err}");
    }

    #[test]
    fn error_throttling_defaults_and_validation() {
        let cfg = SimConfig::from_toml_str("").expect("valid");
        assert_eq!(cfg.error_throttling.auth_failures, 10);
        assert_eq!(cfg.error_throttling.block_ms, 60_000);
        let cfg =
            SimConfig::from_toml_str("[error_throttling]\nauth_failures = 0\n").expect("valid");
        assert_eq!(cfg.error_throttling.auth_failures, 0);
        assert_eq!(cfg.error_throttling.window_ms, 600_000);
        let err =
            SimConfig::from_toml_str("[error_throttling]\nblock_ms = 0\n").expect_err("invalid");
        assert!(
            err.to_string().contains("error_throttling.block_ms"),
            "{err}"
        );
    }

    #[test]
    fn licenses_formula() {
        let t = TenantConfig {
            id: "t".into(),
            domains: vec![],
            basic_auth_enabled: true,
            external_recipient_limit: None,
            licenses: Some(1000),
            external_window_ms: 1,
            blocked: false,
        };
        // 500 * 1000^0.7 + 9500 = 500 * 125.89 + 9500
        assert_eq!(t.effective_external_limit(), 72_446);
    }
}
