//! `[deliver]`: the pool (tenants and mailboxes with their limits and credentials), the
//! From policy, timeouts and retry policy. Everything is checked at load, secrets included,
//! so `--check-config` catches what would otherwise fail at the first send.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mailpipe_common::config::{ConfigError, ConfigSource};
pub use mailpipe_common::pool::{
    AuthMethod, LimitSettings, MailboxSettings, OAuthApp, TenantSettings,
};
use serde::{Deserialize, Serialize};

use crate::oauth::ClientCredential;
use crate::token_endpoint::TokenEndpoint;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverSettings {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http_listen: SocketAddr,
    /// `mailbox`: From becomes the sending mailbox (the job's From is kept as Reply-To when
    /// the message has none). `send_as`: From is kept; only mailboxes allowed to send as it
    /// are used.
    pub from_policy: FromPolicy,
    /// Transient failures (4xx, timeouts, dropped connections) a message may have before it
    /// goes to dead letters.
    pub max_attempts: u32,
    /// Timeout of each SMTP exchange step (connect, STARTTLS, AUTH, each command, DATA).
    pub smtp_timeout_ms: u64,
    /// How long an idle SMTP connection is kept for reuse.
    pub idle_connection_ms: u64,
    /// Extra CA certificates (PEM) to trust for SMTP and token endpoints (the simulator's).
    pub extra_ca_file: Option<PathBuf>,
    /// The EHLO name.
    pub hello_name: String,
    /// First pause of a mailbox after a mailbox-level refusal (doubles while it repeats).
    pub pause_ms: u64,
    /// Longest pause or quarantine.
    pub max_pause_ms: u64,
    /// Concurrent messages in hand (RabbitMQ prefetch of the deliver queue).
    pub prefetch: u16,
    /// Rebuild the quota ledger from the database at start (the sends of the last window).
    pub replay_ledger: bool,
    /// A send whose outcome is unknown (no reply after the message data) is not retried
    /// before this long: the longest Exchange could still accept it (see docs/deliver.md).
    pub uncertain_hold_ms: u64,
    pub tenants: Vec<TenantSettings>,
    pub mailboxes: Vec<MailboxSettings>,
}

impl Default for DeliverSettings {
    fn default() -> Self {
        Self {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9103)),
            from_policy: FromPolicy::Mailbox,
            max_attempts: 6,
            smtp_timeout_ms: 60_000,
            idle_connection_ms: 30_000,
            extra_ca_file: None,
            hello_name: "mailpipe.localhost".into(),
            pause_ms: 60_000,
            max_pause_ms: 3_600_000,
            prefetch: 64,
            replay_ledger: true,
            uncertain_hold_ms: 600_000,
            tenants: Vec::new(),
            mailboxes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromPolicy {
    Mailbox,
    SendAs,
}

impl DeliverSettings {
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        let settings: DeliverSettings = source.section("deliver")?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn smtp_timeout(&self) -> Duration {
        Duration::from_millis(self.smtp_timeout_ms)
    }

    /// Cross-checks and secret resolution; errors name the key path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.mailboxes.is_empty() {
            return invalid("deliver.mailboxes: the pool is empty; configure at least one [[deliver.mailboxes]]".into());
        }
        let mut tenants = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if !tenants.insert(t.id.as_str()) {
                return invalid(format!(
                    "deliver.tenants[{i}].id: tenant {:?} is configured twice",
                    t.id
                ));
            }
            if let Some(app) = &t.oauth {
                let key = format!("deliver.tenants[{i}].oauth");
                TokenEndpoint::new(app, &key)?;
                ClientCredential::from_settings(app, &key)?;
            }
        }
        let mut addresses = HashSet::new();
        for (i, m) in self.mailboxes.iter().enumerate() {
            let key = format!("deliver.mailboxes[{i}]");
            if !addresses.insert(m.address.as_str().to_ascii_lowercase()) {
                return invalid(format!("{key}.address: {} is configured twice", m.address));
            }
            let Some(tenant) = self.tenants.iter().find(|t| t.id == m.tenant) else {
                return invalid(format!(
                    "{key}.tenant: no [[deliver.tenants]] with id {:?}",
                    m.tenant
                ));
            };
            match m.auth {
                AuthMethod::Oauth2 if tenant.oauth.is_none() => {
                    return invalid(format!(
                        "{key}.auth: oauth2 needs deliver.tenants.oauth for tenant {:?}",
                        m.tenant
                    ));
                }
                AuthMethod::Password => match &m.password {
                    None => {
                        return invalid(format!(
                            "{key}.password: auth = \"password\" needs a password reference"
                        ));
                    }
                    Some(p) => {
                        p.resolve(&format!("{key}.password"))?;
                    }
                },
                _ => {}
            }
            let l = &m.limits;
            if l.messages_per_window == 0
                || l.recipients_per_window == 0
                || l.max_connections == 0
                || l.max_recipients_per_message == 0
            {
                return invalid(format!("{key}.limits: limits must be at least 1"));
            }
            if l.message_window_ms == 0 || l.recipient_window_ms == 0 {
                return invalid(format!("{key}.limits: windows must be longer than 0 ms"));
            }
        }
        if let Some(ca) = &self.extra_ca_file
            && let Err(e) = std::fs::read(ca)
        {
            return invalid(format!(
                "deliver.extra_ca_file: cannot read {}: {e}",
                ca.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mailbox_of_an_unknown_tenant_is_named() {
        let src = ConfigSource::from_toml(
            r#"
            [[deliver.tenants]]
            id = "contoso"
            [[deliver.mailboxes]]
            address = "a@contoso.example"
            tenant = "fabrikam"
            auth = "password"
            password = { env = "X" }
            "#,
        );
        let err = DeliverSettings::load(&src).unwrap_err().to_string();
        assert!(err.contains("deliver.mailboxes[0].tenant"), "{err}");
    }

    #[test]
    fn defaults_are_exchange_online_limits() {
        let l = LimitSettings::default();
        assert_eq!(
            (
                l.messages_per_window,
                l.message_window_ms,
                l.recipients_per_window,
                l.max_connections
            ),
            (30, 60_000, 10_000, 3)
        );
        let t = TenantSettings {
            id: "t".into(),
            oauth: None,
            domains: vec![],
            external_recipient_limit: None,
            licenses: Some(100),
            external_window_ms: 86_400_000,
        };
        assert_eq!(t.external_limit(), 22_059);
    }
}
