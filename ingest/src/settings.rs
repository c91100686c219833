//! The `[ingest]` configuration section, and the whole configuration ingest reads.

use std::net::SocketAddr;
use std::path::PathBuf;

use mailpipe_common::config::{
    ConfigError, ConfigSource, Problem, Problems, RabbitSettings, TelemetrySettings,
};
use mailpipe_common::contract::JobLimits;
use mailpipe_common::pool::PoolSettings;
use mailpipe_common::store::DatabaseSettings;
use serde::{Deserialize, Serialize};

/// `[ingest]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Where the HTTP API (and /metrics, /healthz, /readyz) listens.
    pub listen: SocketAddr,
    /// Bearer tokens the API accepts, each with its role and owner label:
    /// `[{ env = "VAR", role = "operate" }, { file = "path", role = "submit", owner = "erp" }]`
    /// (crate::tokens). Several at once make rotation possible (add the new one, move
    /// clients, drop the old one).
    pub api_tokens: Vec<crate::tokens::TokenEntry>,
    /// Limits every job must respect (shared with render).
    pub limits: JobLimits,
    /// When set, a job's template must exist as a directory here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub templates_dir: Option<PathBuf>,
    /// When set, attachment paths must name an existing file inside this directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments_root: Option<PathBuf>,
    /// Largest body `POST /v1/jobs` accepts.
    pub max_request_bytes: usize,
    /// Largest body `POST /v1/batches` accepts (read as a stream, never held whole).
    pub max_batch_bytes: u64,
    /// Publishes awaiting their broker confirm at once during a batch.
    pub max_in_flight: usize,
    /// Client connections open at once (more wait in the listen backlog); kept below the
    /// open-file limit, which is raised to its hard limit at start.
    pub max_connections: usize,
    /// Connections one client address may hold at once (the rest are closed at once), so
    /// one client cannot hold every slot. Behind a reverse proxy every client has the
    /// proxy's address: raise it to `max_connections` there.
    pub max_connections_per_peer: usize,
    /// Time a client has to send a request's line and headers; idle keep-alive
    /// connections are closed after it too.
    pub header_read_timeout_ms: u64,
    /// The same for the connections of a client that holds a quarter of
    /// `max_connections_per_peer` or more already.
    pub busy_peer_header_read_timeout_ms: u64,
    /// `POST /v1/jobs`: time to send the whole body. `POST /v1/batches`: the longest
    /// pause between two pieces of the body.
    pub body_read_timeout_ms: u64,
    /// Batch uploads checked at once (each holds a blocking thread while it is read);
    /// one more is answered 503 with `Retry-After`.
    pub max_concurrent_batches: usize,
    /// Templates whose jobs go in the `transactional` lane unless the job names its lane
    /// (a password reset, an urgent single invoice): they wait for at most one free slot
    /// of a mailbox, whatever the bulk backlog.
    pub transactional_templates: Vec<String>,
    /// Outcome webhooks (docs/webhooks.md).
    pub webhooks: crate::webhooks::WebhookSettings,
    /// A job to an address on the suppression list: `drop` (accepted; deliver leaves the
    /// address out) or `refuse` (refused at submission with a 422 naming it).
    pub suppressed_recipients: crate::suppressed::SuppressedPolicy,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_tokens: Vec::new(),
            limits: JobLimits::default(),
            templates_dir: None,
            attachments_root: None,
            max_request_bytes: 10 * 1024 * 1024,
            max_batch_bytes: 1024 * 1024 * 1024,
            max_in_flight: 256,
            max_connections: 1024,
            max_connections_per_peer: 64,
            header_read_timeout_ms: 30_000,
            busy_peer_header_read_timeout_ms: 2_000,
            body_read_timeout_ms: 30_000,
            max_concurrent_batches: 16,
            transactional_templates: Vec::new(),
            webhooks: crate::webhooks::WebhookSettings::default(),
            suppressed_recipients: crate::suppressed::SuppressedPolicy::Drop,
        }
    }
}

/// Everything ingest reads from the shared file.
#[derive(Debug, Clone)]
pub struct Config {
    pub rabbitmq: RabbitSettings,
    pub telemetry: TelemetrySettings,
    pub database: DatabaseSettings,
    pub ingest: IngestSettings,
    /// The pool as `[deliver]` describes it (for batch ETAs), or why it is not there. Never
    /// an error for ingest: without it the ETA is `null` with this reason.
    pub pool: Result<PoolSettings, String>,
}

impl IngestSettings {
    /// What serde cannot check: values that parse but cannot work, each naming its key.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for (key, value) in [
            ("max_in_flight", self.max_in_flight as u64),
            ("max_request_bytes", self.max_request_bytes as u64),
            ("max_batch_bytes", self.max_batch_bytes),
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_peer",
                self.max_connections_per_peer as u64,
            ),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            (
                "busy_peer_header_read_timeout_ms",
                self.busy_peer_header_read_timeout_ms,
            ),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("max_concurrent_batches", self.max_concurrent_batches as u64),
        ] {
            if value == 0 {
                out.push(Problem::new(format!("ingest.{key}"), "must be at least 1"));
            }
        }
        // No job could pass these (`max_attachments = 0` is a policy: no attachments).
        for (key, value) in [
            ("max_recipients", self.limits.max_recipients),
            ("max_job_bytes", self.limits.max_job_bytes),
        ] {
            if value == 0 {
                out.push(Problem::new(
                    format!("ingest.limits.{key}"),
                    "must be at least 1 (no job could be accepted)",
                ));
            }
        }
        use mailpipe_common::contract::{
            EXCHANGE_MAX_ATTACHMENTS, EXCHANGE_MAX_MESSAGE_BYTES, EXCHANGE_MAX_RECIPIENTS,
        };
        for (key, value, most, what) in [
            (
                "max_recipients",
                self.limits.max_recipients,
                EXCHANGE_MAX_RECIPIENTS,
                "recipients per message",
            ),
            (
                "max_attachments",
                self.limits.max_attachments,
                EXCHANGE_MAX_ATTACHMENTS,
                "attachments per message",
            ),
            (
                "max_attachment_bytes",
                self.limits.max_attachment_bytes,
                EXCHANGE_MAX_MESSAGE_BYTES,
                "bytes per message",
            ),
            (
                "max_job_bytes",
                self.limits.max_job_bytes,
                EXCHANGE_MAX_MESSAGE_BYTES,
                "bytes per message",
            ),
        ] {
            if value > most {
                out.push(Problem::new(
                    format!("ingest.limits.{key}"),
                    format!("{value} is above Exchange Online's maximum of {most} {what}"),
                ));
            }
        }
        for (key, dir) in [
            ("templates_dir", &self.templates_dir),
            ("attachments_root", &self.attachments_root),
        ] {
            if let Some(dir) = dir
                && !dir.is_dir()
            {
                out.push(Problem::new(
                    format!("ingest.{key}"),
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        out.extend(crate::tokens::problems(&self.api_tokens));
        out.extend(self.webhooks.problems());
        out
    }

    /// The bounds of the HTTP server.
    pub fn http_limits(&self) -> mailpipe_common::http_server::HttpLimits {
        mailpipe_common::http_server::HttpLimits {
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms),
            busy_peer_header_read_timeout: std::time::Duration::from_millis(
                self.busy_peer_header_read_timeout_ms,
            ),
        }
    }
}

impl Config {
    /// Reads `[rabbitmq]`, `[telemetry]`, `[database]` and `[ingest]` (and the pool from `[deliver]`);
    /// every problem of all of them is reported at once, each naming its key.
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        let mut problems = Problems::default();
        let common = problems.check(source.common());
        let ingest = problems.check(source.section::<IngestSettings>("ingest"));
        if let Some(ingest) = &ingest {
            problems.extend(ingest.problems());
        }
        match (common, ingest) {
            (Some(common), Some(ingest)) => problems.into_result(Self {
                rabbitmq: common.rabbitmq,
                telemetry: common.telemetry,
                database: common.database,
                ingest,
                pool: pool_of(source),
            }),
            _ => Err(problems.into_error()),
        }
    }
}

/// The `[deliver]` section's pool (its other keys are deliver's business and ignored).
fn pool_of(source: &ConfigSource) -> Result<PoolSettings, String> {
    match source.section::<PoolSettings>("deliver") {
        Ok(p) if p.mailboxes.is_empty() => Err(
            "no [[deliver.mailboxes]] in the configuration: the ETA needs the pool's limits".into(),
        ),
        Ok(p) => Ok(p),
        Err(e) => Err(format!("the [deliver] pool could not be read: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tokens::ApiTokens;
    use mailpipe_common::config::SecretRef;

    #[test]
    fn defaults_and_overrides() {
        let src = ConfigSource::from_toml(
            "[ingest]\nlisten = \"0.0.0.0:9000\"\nmax_in_flight = 64\napi_tokens = [{ env = \"A\" }, { file = \"/x\" }]\n[ingest.limits]\nmax_recipients = 50\n",
        );
        let c = Config::load(&src).unwrap();
        assert_eq!(c.ingest.listen.port(), 9000);
        assert_eq!(c.ingest.max_in_flight, 64);
        assert_eq!(c.ingest.api_tokens.len(), 2);
        assert_eq!(c.ingest.limits.max_recipients, 50);
        assert_eq!(
            c.ingest.limits.max_attachments,
            JobLimits::default().max_attachments
        );
        assert_eq!(
            Config::load(&ConfigSource::from_toml("")).unwrap().ingest,
            IngestSettings::default()
        );
    }

    #[test]
    fn the_pool_comes_from_the_deliver_section_despite_its_other_keys() {
        let src = ConfigSource::from_toml(
            r#"
            [deliver]
            http_listen = "127.0.0.1:9103"
            from_policy = "mailbox"
            max_attempts = 4
            [[deliver.tenants]]
            id = "contoso"
            oauth = { client_id = "app", client_secret = { env = "NOT_RESOLVED_BY_INGEST" } }
            [[deliver.mailboxes]]
            address = "a@contoso.example"
            tenant = "contoso"
            [deliver.mailboxes.limits]
            messages_per_window = 10
            [[deliver.mailboxes]]
            address = "b@contoso.example"
            tenant = "contoso"
            "#,
        );
        let pool = Config::load(&src).unwrap().pool.unwrap();
        assert_eq!(pool.mailboxes.len(), 2);
        assert_eq!(pool.mailboxes[0].limits.messages_per_window, 10);
        assert_eq!(pool.mailboxes[1].limits.recipients_per_window, 10_000);
        let none = Config::load(&ConfigSource::from_toml(""))
            .unwrap()
            .pool
            .unwrap_err();
        assert!(none.contains("deliver.mailboxes"), "{none}");
        let bad = Config::load(&ConfigSource::from_toml(
            "[[deliver.mailboxes]]\naddress = 3\n",
        ))
        .unwrap()
        .pool
        .unwrap_err();
        assert!(bad.contains("deliver"), "{bad}");
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::load(&ConfigSource::from_toml("[ingest]\nmax_in_flight = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ingest.max_in_flight"), "{err}");
        let err = Config::load(&ConfigSource::from_toml("[ingest]\nlisen = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = Config::load(&ConfigSource::from_toml(
            "[ingest]\ntemplates_dir = \"/surely/not/here\"\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("ingest.templates_dir"), "{err}");
        let err = ApiTokens::resolve(&[]).unwrap_err().to_string();
        assert!(err.contains("ingest.api_tokens"), "{err}");
        let err = ApiTokens::resolve(&[SecretRef::env("MAILPIPE_TEST_NO_SUCH_TOKEN_VAR").into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ingest.api_tokens[0]"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let err = Config::load(&ConfigSource::from_toml(
            "[rabbitmq]\nprefetch = 0\n[ingest]\nmax_in_flight = 0\nbody_read_timeout_ms = 0\n\
             templates_dir = \"/surely/not/here\"\n[ingest.limits]\nmax_recipients = 0\n",
        ))
        .unwrap_err();
        let keys: Vec<String> = err.problems().into_iter().filter_map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "rabbitmq.prefetch",
                "ingest.max_in_flight",
                "ingest.body_read_timeout_ms",
                "ingest.limits.max_recipients",
                "ingest.templates_dir",
            ]
        );
    }

    #[test]
    fn limits_above_exchange_online_maxima_are_refused_naming_the_key() {
        let err = Config::load(&ConfigSource::from_toml(
            "[ingest.limits]\nmax_recipients = 100000\nmax_attachments = 100000\n\
             max_job_bytes = 1000000000\n",
        ))
        .unwrap_err();
        let keys: Vec<String> = err.problems().into_iter().filter_map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "ingest.limits.max_recipients",
                "ingest.limits.max_attachments",
                "ingest.limits.max_job_bytes",
            ]
        );
        let ok = "[ingest.limits]\nmax_recipients = 1000\nmax_attachments = 250\n";
        assert!(Config::load(&ConfigSource::from_toml(ok)).is_ok());
    }
}
