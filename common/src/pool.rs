//! The pool of sending mailboxes as configured in `[deliver]`: tenants (with their OAuth
//! app and external-recipient limit) and mailboxes (with their limits). deliver sends
//! through it; ingest reads it to compute a batch's ETA from the pool's capacity.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::SecretRef;
use crate::domain::EmailAddress;

/// Exchange Online's external-recipient limit for a tenant: 500 x licenses^0.7 + 9,500
/// recipients per 24 h.
pub fn external_recipient_limit(licenses: u64) -> u64 {
    let scaled = (500.0 * (licenses as f64).powf(0.7)).floor() as u64;
    scaled.saturating_add(9_500)
}

/// The pool as configured, for readers that only need its shape and limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolSettings {
    pub tenants: Vec<TenantSettings>,
    pub mailboxes: Vec<MailboxSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// Our name for the tenant, referenced by mailboxes.
    pub id: String,
    /// The app registration for OAuth2 client credentials (absent: password auth only).
    #[serde(default)]
    pub oauth: Option<OAuthApp>,
    /// The tenant's own domains: recipients elsewhere count against the external limit.
    #[serde(default)]
    pub domains: Vec<String>,
    /// External recipients per window for the whole tenant. Default from `licenses`
    /// (500 x licenses^0.7 + 9,500), or 10,000 without.
    #[serde(default)]
    pub external_recipient_limit: Option<u64>,
    #[serde(default)]
    pub licenses: Option<u64>,
    #[serde(default = "day_ms")]
    pub external_window_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthApp {
    /// Directory (tenant) id, a GUID, or a verified domain such as `contoso.onmicrosoft.com`,
    /// in the token URL. Required for OAuth (deliver checks it).
    #[serde(default)]
    pub tenant_id: Option<String>,
    pub client_id: String,
    /// How the app proves itself, exactly one of: a client secret; `client_certificate` +
    /// `client_certificate_key`; or a federated token file (`client_assertion_file` or
    /// `client_assertion_file_env`).
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// The certificate uploaded to the app registration (PEM).
    #[serde(default)]
    pub client_certificate: Option<SecretRef>,
    /// Its RSA private key (PEM, PKCS#8 or PKCS#1).
    #[serde(default)]
    pub client_certificate_key: Option<SecretRef>,
    /// A file holding a token of an issuer the app trusts through a federated identity
    /// credential (workload identity: Kubernetes' projected service-account token), sent
    /// as the client assertion. Re-read for every token request: kubelet rotates it.
    #[serde(default)]
    pub client_assertion_file: Option<PathBuf>,
    /// The name of an environment variable holding that file's path, read at start:
    /// `AZURE_FEDERATED_TOKEN_FILE`, which Azure Workload Identity's webhook sets.
    #[serde(default)]
    pub client_assertion_file_env: Option<String>,
    /// `https://login.microsoftonline.com` (global); sovereign clouds differ.
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Lets `authority` be plain `http://` when its host is a loopback address or
    /// `localhost` (a local simulator). Never for a real authority.
    #[serde(default)]
    pub allow_loopback_http: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    Oauth2,
    Password,
}

/// How a mailbox hands its messages to Exchange Online.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// SMTP AUTH client submission (port 587, STARTTLS, XOAUTH2 or password).
    #[default]
    Smtp,
    /// Microsoft Graph: a draft created from the MIME, then sent (`Mail.Send`), for tenants
    /// that switched SMTP AUTH off (docs/deliver.md, "The Graph transport").
    Graph,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Smtp => "smtp",
            Transport::Graph => "graph",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxSettings {
    pub address: EmailAddress,
    pub tenant: String,
    /// `smtp` (the default) or `graph`.
    #[serde(default)]
    pub transport: Transport,
    #[serde(default = "default_auth")]
    pub auth: AuthMethod,
    /// For `auth = "password"`.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// Login name when it differs from the address.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub limits: LimitSettings,
    /// Addresses this mailbox has Send As rights on.
    #[serde(default)]
    pub send_as: Vec<EmailAddress>,
    /// Groups a job may ask for.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Exchange Online's largest recipients-per-message limit (a tenant may set 1 to 1,000;
/// 500 by default): a message with more is refused, whatever mailpipe is told.
pub const EXCHANGE_MAX_RECIPIENTS_PER_MESSAGE: u64 = 1_000;

/// Exchange Online's defaults; windows in milliseconds so tests can scale time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    pub messages_per_window: u64,
    pub message_window_ms: u64,
    pub recipients_per_window: u64,
    pub recipient_window_ms: u64,
    pub max_connections: u32,
    pub max_recipients_per_message: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            messages_per_window: 30,
            message_window_ms: 60_000,
            recipients_per_window: 10_000,
            recipient_window_ms: day_ms(),
            max_connections: 3,
            max_recipients_per_message: 500,
        }
    }
}

pub(crate) fn day_ms() -> u64 {
    86_400_000
}
fn default_authority() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_scope() -> String {
    "https://outlook.office365.com/.default".into()
}
fn default_auth() -> AuthMethod {
    AuthMethod::Oauth2
}
fn default_host() -> String {
    "smtp.office365.com".into()
}
fn default_port() -> u16 {
    587
}

impl TenantSettings {
    pub fn external_limit(&self) -> u64 {
        self.external_recipient_limit
            .unwrap_or_else(|| match self.licenses {
                Some(l) => external_recipient_limit(l),
                None => 10_000,
            })
    }
}
