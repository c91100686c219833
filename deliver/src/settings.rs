//! `[deliver]`: the pool (tenants and mailboxes with their limits and credentials), the
//! From policy, timeouts and retry policy. Everything is checked at load, secrets included,
//! so `--check-config` catches what would otherwise fail at the first send.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mailpipe_common::config::{ConfigError, ConfigSource, Problems};
pub use mailpipe_common::pool::{
    AuthMethod, LimitSettings, MailboxSettings, OAuthApp, TenantSettings, Transport,
};
use serde::{Deserialize, Serialize};

use crate::auth::oauth::ClientCredential;
use crate::auth::token_endpoint::TokenEndpoint;
pub use crate::check_pool::CheckPoolSettings;
pub use crate::graph::GraphSettings;

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
    /// First pause of a mailbox after a mailbox-level refusal (doubles with each hold
    /// episode: each failed probe after a hold).
    pub pause_ms: u64,
    /// Longest pause or quarantine.
    pub max_pause_ms: u64,
    /// The most messages each deliver queue's consumer holds at once (its RabbitMQ
    /// prefetch). Below it, the prefetch follows the mailboxes this process owns: twice
    /// their `max_connections`, at least 1, so a message waits only in a process that can
    /// send it soon and a process that joins finds work in the queue.
    pub prefetch: u16,
    /// What becomes of a job whose send has an unknown outcome (no reply after the data,
    /// or its deliver process died mid-send): `hold` it for an operator
    /// (`mailpipe-ingest uncertain`), or `resend` it after `uncertain_hold_ms` (at least
    /// once: the recipient may get it twice). docs/deliver.md, "Uncertain sends".
    pub uncertain_policy: UncertainPolicy,
    /// Under `resend`, an uncertain send is not sent again before this long: the longest
    /// Exchange could still accept it (see docs/deliver.md).
    pub uncertain_hold_ms: u64,
    /// How long a deliver process's lease on a mailbox lasts unless renewed (every third
    /// of it). A process that dies loses its mailboxes to the others after at most this.
    pub lease_ttl_ms: u64,
    /// `[deliver.graph]`: reading the pool's mailboxes through Microsoft Graph.
    pub graph: GraphSettings,
    /// `[deliver.check_pool]`: the sender-domain checks of `check-pool`.
    pub check_pool: CheckPoolSettings,
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
            uncertain_policy: UncertainPolicy::Hold,
            uncertain_hold_ms: 600_000,
            lease_ttl_ms: 6_000,
            graph: GraphSettings::default(),
            check_pool: CheckPoolSettings::default(),
            tenants: Vec::new(),
            mailboxes: Vec::new(),
        }
    }
}

/// See `DeliverSettings::uncertain_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UncertainPolicy {
    /// Never sent again until an operator decides: no duplicate, ever (invoices).
    Hold,
    /// Sent again after `uncertain_hold_ms`: never lost, maybe twice.
    Resend,
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

    /// How long an uncertain send may still turn out accepted (and appear in Sent Items).
    pub fn uncertain_hold(&self) -> Duration {
        Duration::from_millis(self.uncertain_hold_ms)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// Cross-checks, values that parse but cannot work, and secret resolution. Every
    /// problem is reported, each naming its key path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        for (key, value) in [
            ("max_attempts", u64::from(self.max_attempts)),
            ("smtp_timeout_ms", self.smtp_timeout_ms),
            ("idle_connection_ms", self.idle_connection_ms),
            ("pause_ms", self.pause_ms),
            ("max_pause_ms", self.max_pause_ms),
            ("prefetch", u64::from(self.prefetch)),
        ] {
            if value == 0 {
                p.push(format!("deliver.{key}"), "must be at least 1");
            }
        }
        if self.lease_ttl_ms < 1_000 {
            p.push(
                "deliver.lease_ttl_ms",
                format!(
                    "{} is too short: at least 1000 (leases are renewed every third of it)",
                    self.lease_ttl_ms
                ),
            );
        }
        if self.max_pause_ms < self.pause_ms {
            p.push(
                "deliver.max_pause_ms",
                format!(
                    "{} is shorter than deliver.pause_ms ({})",
                    self.max_pause_ms, self.pause_ms
                ),
            );
        }
        self.graph.check(&mut p);
        self.check_pool.check(&mut p);
        if let Err(why) = check_hello_name(&self.hello_name) {
            p.push("deliver.hello_name", why);
        }
        if let Some(ca) = &self.extra_ca_file
            && let Err(why) = check_ca_file(ca)
        {
            p.push("deliver.extra_ca_file", why);
        }
        if self.mailboxes.is_empty() {
            p.push(
                "deliver.mailboxes",
                "the pool is empty; configure at least one [[deliver.mailboxes]]",
            );
        }
        let mut tenants = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let key = format!("deliver.tenants[{i}]");
            if t.id.trim().is_empty() {
                p.push(format!("{key}.id"), "must not be empty");
            } else if !tenants.insert(t.id.as_str()) {
                p.push(
                    format!("{key}.id"),
                    format!("tenant {:?} is configured twice", t.id),
                );
            }
            if t.external_window_ms == 0 {
                p.push(format!("{key}.external_window_ms"), "must be at least 1");
            }
            if t.external_recipient_limit == Some(0) {
                p.push(
                    format!("{key}.external_recipient_limit"),
                    "must be at least 1 (leave it out to derive it from licenses)",
                );
            }
            if let Some(j) = t.domains.iter().position(|d| d.trim().is_empty()) {
                p.push(format!("{key}.domains[{j}]"), "must not be empty");
            }
            if let Some(app) = &t.oauth {
                let key = format!("{key}.oauth");
                if app.client_id.trim().is_empty() {
                    p.push(format!("{key}.client_id"), "must not be empty");
                }
                if app.scope.trim().is_empty() {
                    p.push(format!("{key}.scope"), "must not be empty");
                }
                p.check(TokenEndpoint::new(app, &key));
                p.check(ClientCredential::from_settings(app, &key));
            }
        }
        let mut addresses = HashSet::new();
        for (i, m) in self.mailboxes.iter().enumerate() {
            let key = format!("deliver.mailboxes[{i}]");
            if !addresses.insert(m.address.as_str().to_ascii_lowercase()) {
                p.push(
                    format!("{key}.address"),
                    format!("{} is configured twice", m.address),
                );
            }
            if let Err(why) = check_host(&m.host) {
                p.push(format!("{key}.host"), why);
            }
            if m.port == 0 {
                p.push(format!("{key}.port"), "must be a port number (587)");
            }
            if m.username.as_deref().is_some_and(|u| u.trim().is_empty()) {
                p.push(
                    format!("{key}.username"),
                    "must not be empty (leave it out to log in as the address)",
                );
            }
            match self.tenants.iter().find(|t| t.id == m.tenant) {
                None => p.push(
                    format!("{key}.tenant"),
                    format!("no [[deliver.tenants]] with id {:?}", m.tenant),
                ),
                Some(tenant) if m.auth == AuthMethod::Oauth2 && tenant.oauth.is_none() => p.push(
                    format!("{key}.auth"),
                    format!(
                        "oauth2 needs deliver.tenants.oauth for tenant {:?}",
                        m.tenant
                    ),
                ),
                Some(_) => {}
            }
            if m.auth == AuthMethod::Password {
                match &m.password {
                    None => p.push(
                        format!("{key}.password"),
                        "auth = \"password\" needs a password reference",
                    ),
                    Some(secret) => {
                        p.check(secret.resolve(&format!("{key}.password")).map(drop));
                    }
                }
            }
            if m.transport == Transport::Graph {
                self.check_graph_transport(m, &key, &mut p);
            }
            let l = &m.limits;
            for (name, value) in [
                ("messages_per_window", l.messages_per_window),
                ("message_window_ms", l.message_window_ms),
                ("recipients_per_window", l.recipients_per_window),
                ("recipient_window_ms", l.recipient_window_ms),
                ("max_connections", u64::from(l.max_connections)),
                ("max_recipients_per_message", l.max_recipients_per_message),
            ] {
                if value == 0 {
                    p.push(format!("{key}.limits.{name}"), "must be at least 1");
                }
            }
            let most = mailpipe_common::pool::EXCHANGE_MAX_RECIPIENTS_PER_MESSAGE;
            if l.max_recipients_per_message > most {
                p.push(
                    format!("{key}.limits.max_recipients_per_message"),
                    format!(
                        "{} is above Exchange Online's maximum of {most} recipients per message",
                        l.max_recipients_per_message
                    ),
                );
            }
        }
        p.into_result(())
    }
}

impl DeliverSettings {
    /// What a mailbox with `transport = "graph"` needs: the Graph endpoint (and the app's
    /// `Mail.Send` permission, which only Exchange can check: `check-pool`), an app-only
    /// token, sends at once within Graph's 4 requests per mailbox, and requests that end
    /// within the step the send's deadline on record allows.
    fn check_graph_transport(&self, m: &MailboxSettings, key: &str, p: &mut Problems) {
        if !self.graph.enabled {
            p.push(
                format!("{key}.transport"),
                "transport = \"graph\" needs [deliver.graph] enabled = true (its base_url and scope), and the tenant's app needs the Mail.Send and Mail.ReadWrite application permissions (docs/microsoft365.md)",
            );
        }
        if m.auth == AuthMethod::Password {
            p.push(
                format!("{key}.auth"),
                "transport = \"graph\" needs auth = \"oauth2\": Graph takes an app-only token of the tenant's app registration, never a password",
            );
        }
        let most = crate::graph::settings::MAX_CONCURRENT_PER_MAILBOX;
        if m.limits.max_connections > most {
            p.push(
                format!("{key}.limits.max_connections"),
                format!(
                    "{} sends at once is more than Graph allows a mailbox ({most} concurrent requests): at most {most} with transport = \"graph\"",
                    m.limits.max_connections
                ),
            );
        }
        if self.graph.request_timeout_ms > self.smtp_timeout_ms {
            p.push(
                "deliver.graph.request_timeout_ms",
                format!(
                    "{} is longer than deliver.smtp_timeout_ms ({}): with Graph mailboxes a send's deadline on record allows one step of smtp_timeout_ms for the answer",
                    self.graph.request_timeout_ms, self.smtp_timeout_ms
                ),
            );
        }
    }
}

/// The EHLO name goes on the wire as is: a domain (or address literal), nothing that could
/// end the command line early.
fn check_hello_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty: a domain name such as mail.example.com".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'))
    {
        return Err(format!(
            "{name:?} must be a domain name or address literal: letters, digits, '-', '.' (no spaces, line breaks or control characters)"
        ));
    }
    Ok(())
}

/// An SMTP host name or address: not empty, no spaces or control characters.
fn check_host(host: &str) -> Result<(), String> {
    if host.trim().is_empty() {
        return Err("must not be empty (smtp.office365.com)".into());
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{host:?} must be a host name or address, without spaces or control characters"
        ));
    }
    Ok(())
}

/// The file holds PEM certificates, at least one, and nothing malformed.
fn check_ca_file(path: &Path) -> Result<(), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certificates = 0;
    for item in rustls_pemfile::certs(&mut pem.as_slice()) {
        match item {
            Ok(_) => certificates += 1,
            Err(e) => return Err(format!("{} is not valid PEM: {e}", path.display())),
        }
    }
    if certificates == 0 {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
    fn values_that_cannot_work_are_all_refused_naming_each_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let src = ConfigSource::from_toml(&format!(
            r#"
            [deliver]
            smtp_timeout_ms = 0
            idle_connection_ms = 0
            max_attempts = 0
            prefetch = 0
            hello_name = "mail.example.com\r\nRSET"
            extra_ca_file = {ca:?}
            [[deliver.tenants]]
            id = "contoso"
            oauth = {{ tenant_id = "contoso.onmicrosoft.com", client_id = "app", client_secret = {{ env = "X" }}, authority = "http://login.example" }}
            [[deliver.mailboxes]]
            address = "a@contoso.example"
            tenant = "contoso"
            host = ""
            [deliver.mailboxes.limits]
            max_connections = 0
            max_recipients_per_message = 100000
            "#
        ));
        let problems = DeliverSettings::load(&src).unwrap_err().problems();
        let keys: Vec<&str> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
        for key in [
            "deliver.smtp_timeout_ms",
            "deliver.idle_connection_ms",
            "deliver.max_attempts",
            "deliver.prefetch",
            "deliver.hello_name",
            "deliver.extra_ca_file",
            "deliver.tenants[0].oauth.authority",
            "deliver.tenants[0].oauth.client_secret",
            "deliver.mailboxes[0].host",
            "deliver.mailboxes[0].limits.max_connections",
            "deliver.mailboxes[0].limits.max_recipients_per_message",
        ] {
            assert!(keys.contains(&key), "{key} not in {problems:#?}");
        }
        assert_eq!(keys.len(), 11, "{problems:#?}");
        // A file with a certificate passes.
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        assert_eq!(check_ca_file(&ca), Ok(()));
        assert!(check_hello_name("[127.0.0.1]").is_ok());
        assert!(check_hello_name("").is_err());
    }

    #[test]
    fn a_graph_mailbox_needs_graph_an_app_and_at_most_four_sends_at_once() {
        let src = ConfigSource::from_toml(
            r#"
            [deliver]
            smtp_timeout_ms = 10000
            [deliver.graph]
            request_timeout_ms = 20000
            [[deliver.tenants]]
            id = "contoso"
            [[deliver.mailboxes]]
            address = "a@contoso.example"
            tenant = "contoso"
            transport = "graph"
            auth = "password"
            password = { env = "PATH" }
            [deliver.mailboxes.limits]
            max_connections = 5
            "#,
        );
        let problems = DeliverSettings::load(&src).unwrap_err().problems();
        let keys: Vec<&str> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
        for key in [
            "deliver.mailboxes[0].transport",
            "deliver.mailboxes[0].auth",
            "deliver.mailboxes[0].limits.max_connections",
            "deliver.graph.request_timeout_ms",
        ] {
            assert!(keys.contains(&key), "{key} not in {problems:#?}");
        }
        let text = format!("{problems:?}");
        assert!(text.contains("Mail.Send"), "{text}");
        let bad = ConfigSource::from_toml(
            r#"
            [[deliver.tenants]]
            id = "contoso"
            [[deliver.mailboxes]]
            address = "a@contoso.example"
            tenant = "contoso"
            transport = "pigeon"
            "#,
        );
        let err = DeliverSettings::load(&bad).unwrap_err().to_string();
        assert!(err.contains("transport") || err.contains("pigeon"), "{err}");
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
