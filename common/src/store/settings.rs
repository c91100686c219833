//! `[database]`: where the system of record lives and how hard to lean on it.

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::config::{ConfigError, Problem, SecretRef};

/// `[database]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// PostgreSQL URL. A password here is allowed for local use; in production use `password`.
    pub url: String,
    /// Replaces the URL's password (by env or file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretRef>,
    /// The schema mailpipe's tables live in (created when missing), so one database can
    /// hold several deployments, or mailpipe beside other software.
    pub schema: String,
    /// Connections this process keeps at most.
    pub max_connections: u32,
    /// Bound on waiting for a connection (connecting included): a request that needs the
    /// database fails after this long at most, so ingest answers 503 with the reason
    /// before a client's own timeout. Short on purpose.
    pub connect_timeout_ms: u64,
    /// Bound on every statement (PostgreSQL `statement_timeout`).
    pub statement_timeout_ms: u64,
    /// Jobs (with their events) whose last change is older than this many days are
    /// deleted; a job id is refused as a duplicate for as long as it is kept.
    pub retention_days: u32,
    /// Apply the embedded migrations at start. Off: the schema must already be current
    /// (`mailpipe-ingest migrate`), and a process that finds it behind refuses to start.
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://mailpipe@127.0.0.1:5432/mailpipe".into(),
            password: None,
            schema: "mailpipe".into(),
            max_connections: 10,
            connect_timeout_ms: 3_000,
            statement_timeout_ms: 30_000,
            retention_days: 400,
            migrate_on_start: true,
        }
    }
}

impl DatabaseSettings {
    /// What serde cannot check: values that parse but cannot work, each naming its key.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad =
            |key: &str, why: String| out.push(Problem::new(format!("database.{key}"), why));
        match self.url.split_once("://") {
            Some(("postgres" | "postgresql", rest)) if !rest.is_empty() => {
                if let Err(e) = PgConnectOptions::from_str(&self.url) {
                    bad("url", format!("not a PostgreSQL URL: {e}"));
                }
            }
            _ => bad(
                "url",
                "must be postgres://user@host:5432/database (a password only through `password`)"
                    .into(),
            ),
        }
        if self.schema.is_empty()
            || self.schema.len() > 63
            || !self
                .schema
                .starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            || !self
                .schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            bad(
                "schema",
                format!(
                    "{:?} must be lower-case letters, digits and '_' (at most 63), starting with a letter",
                    self.schema
                ),
            );
        }
        if self.max_connections == 0 {
            bad("max_connections", "must be at least 1".into());
        }
        if self.connect_timeout_ms == 0 {
            bad("connect_timeout_ms", "must be at least 1".into());
        }
        if self.statement_timeout_ms == 0 {
            bad("statement_timeout_ms", "must be at least 1".into());
        }
        if self.retention_days == 0 {
            bad(
                "retention_days",
                "must be at least 1 (it is also how long a job id stays a duplicate)".into(),
            );
        }
        out
    }

    /// Connection options, with the password resolved and the statement timeout set.
    pub fn connect_options(&self) -> Result<PgConnectOptions, ConfigError> {
        let mut options = PgConnectOptions::from_str(&self.url)
            .map_err(|e| ConfigError::Invalid(vec![Problem::new("database.url", e.to_string())]))?
            .application_name("mailpipe")
            .options([
                (
                    "statement_timeout",
                    format!("{}ms", self.statement_timeout_ms),
                ),
                ("search_path", self.schema.clone()),
            ])
            // sqlx warns of every statement over 1 s with its whole SQL: at `warn` that
            // floods `submit`'s progress display and the daemons' logs under load. Slow
            // statements stay visible at `debug`; the metrics and `/readyz` tell the rest.
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        if let Some(password) = &self.password {
            let secret = password.resolve("database.password")?;
            options = options.password(secret.expose_secret());
        }
        Ok(options)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn retention(&self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.retention_days))
    }
}
