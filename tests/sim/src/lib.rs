//! mailpipe-sim: an Exchange Online stand-in (SMTP AUTH client submission on STARTTLS with
//! XOAUTH2 / LOGIN, the Entra ID client-credentials token endpoint, and the Microsoft Graph
//! mail endpoints over the mailboxes' Inbox and Sent Items, NDRs included), with Exchange's
//! limits, reply texts and injectable faults, for tests, benchmarks and demos.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mailpipe_sim::SimError> {
//! let config = mailpipe_sim::SimConfig::from_file(std::path::Path::new("examples/sim.toml"))?;
//! let sim = mailpipe_sim::Simulator::start(config).await?;
//! println!("smtp on {}, tokens at {}", sim.smtp_addr(), sim.token_url("contoso"));
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod app_certificate;
mod config;
mod config_builder;
mod directory;
mod error;
mod faults;
mod federated;
mod filing;
mod graph;
mod http;
mod inbox_mail;
mod mail_store;
mod metrics;
mod ndr;
mod records;
mod scope;
mod sim;
mod smtp;
mod state;
mod tls;
mod tokens;

pub use app_certificate::AppCertificate;
pub use config::{
    AppConfig, BounceRule, ErrorThrottlingConfig, FaultsConfig, FederatedCredentialConfig,
    GraphConfig, GraphThrottle, Limits, LimitsConfig, MailboxConfig, SimConfig, TenantConfig,
    defaults,
};
pub use error::{ConfigError, SimError};
pub use federated::FederatedAssertion;
pub use graph::{GraphMailboxStats, GraphRequest, ThrottleReply};
pub use inbox_mail::{auto_reply, large_message};
pub use mail_store::{FolderMessage, FolderView};
pub use ndr::{FailedRecipient, exchange_ndr, strip_organization_headers};
pub use records::{AcceptedMessage, AuthFailure, MailboxStats, Refusal, Stage};
pub use sim::{RunningSim, Simulator};
