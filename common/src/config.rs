//! Configuration: one TOML file shared by all binaries, each reading its own section,
//! with environment overrides (`MAILPIPE_RABBITMQ__PREFETCH=64` sets `rabbitmq.prefetch`).
//! Errors name the key path and where the value came from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Environment variable prefix for overrides; `__` separates nested keys.
pub const ENV_PREFIX: &str = "MAILPIPE_";
/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "MAILPIPE_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    /// figment's message names the key path (`rabbitmq.prefetch`) and the source.
    #[error("{0}")]
    Invalid(String),
    #[error("secret {what}: {message}")]
    Secret { what: String, message: String },
}

impl ConfigError {
    /// One line per problem (figment reports them all), each naming the full key path
    /// (`rabbitmq.prefetch`) and where the value came from.
    fn in_section(section: &str, e: figment::Error) -> Self {
        let lines: Vec<String> = e
            .into_iter()
            .map(|e| {
                let key = std::iter::once(section.to_owned())
                    .chain(e.path.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(".");
                let source = e
                    .metadata
                    .as_ref()
                    .map(|m| format!(" (from {})", m.name))
                    .unwrap_or_default();
                format!("{key}: {}{source}", e.kind)
            })
            .collect();
        ConfigError::Invalid(lines.join("; "))
    }
}

/// The loaded configuration: file, then environment on top.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    figment: Figment,
}

impl ConfigSource {
    /// Loads `path` (or `$MAILPIPE_CONFIG`, or nothing: defaults and environment only).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
        let mut figment = Figment::new();
        if let Some(path) = path {
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
                path: path.clone(),
                message: e.to_string(),
            })?;
            // Parse once here so a syntax error names the file and line, not just a key.
            toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::File {
                path: path.clone(),
                message: e.to_string(),
            })?;
            figment = figment.merge(Toml::file_exact(&path));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]));
        Ok(Self { figment })
    }

    /// Builds a source from TOML text (tests, embedded examples).
    pub fn from_toml(text: &str) -> Self {
        Self {
            figment: Figment::new().merge(Toml::string(text)),
        }
    }

    /// Reads one section (`rabbitmq`, `deliver`...); missing sections take their defaults.
    pub fn section<T: DeserializeOwned + Serialize + Default>(
        &self,
        key: &str,
    ) -> Result<T, ConfigError> {
        let figment = Figment::new()
            .merge(Serialized::default(key, T::default()))
            .merge(self.figment.clone());
        figment
            .focus(key)
            .extract()
            .map_err(|e| ConfigError::in_section(key, e))
    }

    /// Like `section`, for sections without a sensible default (a pool of mailboxes).
    pub fn required_section<T: DeserializeOwned>(&self, key: &str) -> Result<T, ConfigError> {
        if !self.figment.contains(key) {
            return Err(ConfigError::Invalid(format!("{key}: section is missing")));
        }
        self.figment
            .focus(key)
            .extract()
            .map_err(|e| ConfigError::in_section(key, e))
    }

    pub fn common(&self) -> Result<CommonSettings, ConfigError> {
        Ok(CommonSettings {
            rabbitmq: self.section("rabbitmq")?,
            telemetry: self.section("telemetry")?,
        })
    }
}

/// The sections every binary reads.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    pub rabbitmq: RabbitSettings,
    pub telemetry: TelemetrySettings,
}

/// `[rabbitmq]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitSettings {
    /// AMQP URI. A password here is allowed for local use; in production use `password`.
    pub url: String,
    /// Replaces the URI's password (by env or file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretRef>,
    /// Prefix of every exchange and queue name, so deployments and tests never collide.
    pub prefix: String,
    /// Unacked messages per consumer: bounds memory whatever the backlog.
    pub prefetch: u16,
    /// Deliveries of one message before the broker dead-letters it (poison protection).
    pub delivery_limit: u32,
    /// The retry ladder: one TTL queue per delay, in order.
    #[serde(with = "millis_list")]
    pub retry_delays_ms: Vec<Duration>,
    /// How long to wait for a publisher confirm before calling the publish failed.
    pub confirm_timeout_ms: u64,
    /// Upper bound of the reconnect backoff.
    pub reconnect_max_backoff_ms: u64,
    /// Bound on every other broker operation (connect and declare, open a channel,
    /// subscribe): a broker that accepts TCP but does not answer cannot hang a process.
    pub operation_timeout_ms: u64,
    /// Retention of the events stream (RabbitMQ `x-max-age`, e.g. `7D`).
    pub events_max_age: String,
}

impl Default for RabbitSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            password: None,
            prefix: "mailpipe".into(),
            prefetch: 32,
            delivery_limit: 5,
            retry_delays_ms: [30, 120, 600, 1800, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            confirm_timeout_ms: 30_000,
            reconnect_max_backoff_ms: 30_000,
            operation_timeout_ms: 10_000,
            events_max_age: "7D".into(),
        }
    }
}

mod millis_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|d| d.as_millis() as u64)
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Ok(Vec::<u64>::deserialize(d)?
            .into_iter()
            .map(Duration::from_millis)
            .collect())
    }
}

/// `[telemetry]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info,mailpipe_deliver=debug` (`RUST_LOG` wins when set).
    pub log_filter: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where a secret lives: `{ env = "VAR" }` or `{ file = "/run/secrets/x" }`. Secrets are
/// never written inline in the file, so the file can be shared and committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl SecretRef {
    pub fn env(var: impl Into<String>) -> Self {
        Self {
            env: Some(var.into()),
            file: None,
        }
    }

    /// Reads the secret now. Trailing newlines of files are dropped (editors add them).
    pub fn resolve(&self, what: &str) -> Result<SecretString, ConfigError> {
        let err = |message: String| ConfigError::Secret {
            what: what.to_owned(),
            message,
        };
        match (&self.env, &self.file) {
            (Some(var), None) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
                _ => Err(err(format!("environment variable {var} is not set"))),
            },
            (None, Some(path)) => {
                let v = std::fs::read_to_string(path)
                    .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
                let v = v.trim_end_matches(['\r', '\n']).to_owned();
                if v.is_empty() {
                    return Err(err(format!("{} is empty", path.display())));
                }
                Ok(SecretString::from(v))
            }
            _ => Err(err("give exactly one of `env` or `file`".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn defaults_apply_and_file_values_win() {
        let src = ConfigSource::from_toml("[rabbitmq]\nprefetch = 7\nretry_delays_ms = [10, 20]\n");
        let r: RabbitSettings = src.section("rabbitmq").unwrap();
        assert_eq!(r.prefetch, 7);
        assert_eq!(r.prefix, "mailpipe");
        assert_eq!(
            r.retry_delays_ms,
            vec![Duration::from_millis(10), Duration::from_millis(20)]
        );
        let t: TelemetrySettings = src.section("telemetry").unwrap();
        assert_eq!(t.log_format, LogFormat::Text);
    }

    #[test]
    fn errors_name_the_key_path() {
        let src = ConfigSource::from_toml("[rabbitmq]\nprefetch = \"many\"\n");
        let err = src
            .section::<RabbitSettings>("rabbitmq")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rabbitmq.prefetch"), "{err}");
        let src = ConfigSource::from_toml("[rabbitmq]\nprefech = 3\n");
        let err = src
            .section::<RabbitSettings>("rabbitmq")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefech"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "m.toml",
                "[rabbitmq]\nprefix = \"file\"\ndelivery_limit = 3\n",
            )?;
            jail.set_env("MAILPIPE_RABBITMQ__DELIVERY_LIMIT", "9");
            let r: RabbitSettings = ConfigSource::load(Some(Path::new("m.toml")))
                .unwrap()
                .section("rabbitmq")
                .unwrap();
            assert_eq!(r.prefix, "file");
            assert_eq!(r.delivery_limit, 9);
            Ok(())
        });
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = ConfigSource::load(Some(Path::new("/nonexistent/m.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/m.toml"), "{err}");
    }

    #[test]
    fn secrets_come_from_env_or_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "hunter2\n").unwrap();
        let s = SecretRef {
            env: None,
            file: Some(path),
        }
        .resolve("x")
        .unwrap();
        assert_eq!(s.expose_secret(), "hunter2");
        let err = SecretRef::env("MAILPIPE_TEST_SURELY_UNSET_VAR")
            .resolve("tenant secret")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MAILPIPE_TEST_SURELY_UNSET_VAR") && err.contains("tenant secret"),
            "{err}"
        );
        assert!(
            ConfigSource::from_toml("[x]\ns = \"inline\"\n")
                .required_section::<std::collections::HashMap<String, SecretRef>>("x")
                .is_err()
        );
    }
}
