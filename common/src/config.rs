//! Configuration: one TOML file shared by all binaries, each reading its own section,
//! with environment overrides (`MAILPIPE_RABBITMQ__PREFETCH=64` sets `rabbitmq.prefetch`).
//! Errors name the key path and where the value came from. Relative paths in the file
//! (secret files, CA files, template and attachment directories) are relative to the
//! file's directory, so a configuration works from any working directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::DatabaseSettings;

/// Environment variable prefix for overrides; `__` separates nested keys.
pub const ENV_PREFIX: &str = "MAILPIPE_";
/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "MAILPIPE_CONFIG";
/// The sections of the shared file; anything else at the top level is a mistake.
pub const SECTIONS: [&str; 6] = [
    "rabbitmq",
    "telemetry",
    "database",
    "ingest",
    "render",
    "deliver",
];

/// One problem with the configuration: the key path it concerns (`deliver.smtp_timeout_ms`,
/// `deliver.mailboxes[2].host`) and what is wrong, never a secret's value. `key` is `None`
/// when the file as a whole is the problem (unreadable, not TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    /// One or more problems, each naming its key path and (for figment's) where the value
    /// came from.
    #[error("{}", join(.0))]
    Invalid(Vec<Problem>),
    #[error("secret {what}: {message}")]
    Secret { what: String, message: String },
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConfigError {
    /// One problem with `key`.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid(vec![Problem::new(key, message)])
    }

    /// Every problem this error holds, one per key.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::File { .. } => vec![Problem {
                key: None,
                message: self.to_string(),
            }],
            ConfigError::Invalid(problems) => problems.clone(),
            ConfigError::Secret { what, message } => vec![Problem::new(what, message)],
        }
    }

    /// One problem per figment error (figment reports them all), each naming the full key
    /// path (`rabbitmq.prefetch`) and where the value came from.
    fn in_section(section: &str, e: figment::Error) -> Self {
        ConfigError::Invalid(
            e.into_iter()
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
                    let kind = match &e.kind {
                        // `password = "hunter2"`: the value is a secret written where a
                        // reference belongs; say so without repeating it.
                        figment::error::Kind::InvalidType(
                            figment::error::Actual::Str(_),
                            expected,
                        ) if holds_secret(&e.path) => format!(
                            "invalid type: found a string (not shown), expected {expected}: secrets are references, {{ env = \"VAR\" }} or {{ file = \"path\" }}"
                        ),
                        kind => kind.to_string(),
                    };
                    Problem::new(key, format!("{kind}{source}"))
                })
                .collect(),
        )
    }
}

/// Whether a key path names a secret reference (whose misplaced value must not be echoed).
fn holds_secret(path: &[String]) -> bool {
    path.iter().any(|k| {
        let k = k.to_ascii_lowercase();
        k.contains("password")
            || k.contains("secret")
            || k.contains("token")
            || k.ends_with("key")
            || k == "client_certificate"
    })
}

/// Every problem found while loading, so that one run reports them all: each part is
/// checked, and its problems kept, whatever the parts before it found.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(key, message));
    }

    /// The value, or `None` with the error's problems recorded.
    pub fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.extend(e.problems());
                None
            }
        }
    }

    pub fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.0.extend(problems);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[Problem] {
        &self.0
    }

    /// Every problem found (for a part that could not be read at all).
    pub fn into_error(self) -> ConfigError {
        ConfigError::Invalid(self.0)
    }

    /// `Ok(value)` when nothing was found, else every problem.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }
}

/// The loaded configuration: file, then environment on top.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    figment: Figment,
    /// Sections and top-level keys the file should not have, reported by
    /// [`common`](Self::common) with everything else that is wrong.
    unknown: Vec<Problem>,
}

impl ConfigSource {
    /// Loads `path` (or `$MAILPIPE_CONFIG`, or nothing: defaults and environment only).
    /// Fails only when the file cannot be read or is not TOML; every other problem is
    /// found by the sections' readers, so that all of them are reported at once.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
        let mut figment = Figment::new();
        let mut unknown = Vec::new();
        if let Some(path) = path {
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
                path: path.clone(),
                message: e.to_string(),
            })?;
            // Parse once here so a syntax error names the file and line, not just a key.
            let mut table =
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let sections = format!("the sections are [{}]", SECTIONS.join("], ["));
            unknown = table
                .iter()
                .filter(|(k, v)| !(SECTIONS.contains(&k.as_str()) && v.is_table()))
                .map(|(k, v)| {
                    let what = match v.is_table() {
                        true => format!("unknown section [{k}]"),
                        false => format!("unknown top-level key `{k}` (keys belong in a section)"),
                    };
                    Problem::new(k, format!("{what} in {}; {sections}", path.display()))
                })
                .collect();
            let dir = std::path::absolute(&path)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_default();
            resolve_relative_paths(&mut table, &dir);
            figment = figment.merge(ConfigFile { path, table });
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]));
        Ok(Self { figment, unknown })
    }

    /// Builds a source from TOML text (tests, embedded examples).
    pub fn from_toml(text: &str) -> Self {
        Self {
            figment: Figment::new().merge(Toml::string(text)),
            unknown: Vec::new(),
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
            return Err(ConfigError::invalid(key, "section is missing"));
        }
        self.figment
            .focus(key)
            .extract()
            .map_err(|e| ConfigError::in_section(key, e))
    }

    /// `[rabbitmq]`, `[telemetry]`, `[database]` and the file's shape (unknown sections
    /// and top-level keys), with every problem reported at once. Every binary calls it.
    pub fn common(&self) -> Result<CommonSettings, ConfigError> {
        let mut problems = Problems::default();
        problems.extend(self.unknown.iter().cloned());
        let rabbitmq = problems.check(self.section::<RabbitSettings>("rabbitmq"));
        let telemetry = problems.check(self.section::<TelemetrySettings>("telemetry"));
        let database = problems.check(self.section::<DatabaseSettings>("database"));
        if let Some(r) = &rabbitmq {
            problems.extend(r.problems());
        }
        if let Some(t) = &telemetry {
            problems.extend(t.problems());
        }
        if let Some(d) = &database {
            problems.extend(d.problems());
        }
        match (rabbitmq, telemetry, database) {
            (Some(rabbitmq), Some(telemetry), Some(database)) => {
                problems.into_result(CommonSettings {
                    rabbitmq,
                    telemetry,
                    database,
                })
            }
            _ => Err(problems.into_error()),
        }
    }

    /// Reads the secrets `[rabbitmq]` and `[database]` reference (`password`) as a
    /// connection would, whatever else is wrong with the sections, so that
    /// `--check-config` reports a missing variable or file with everything else. The
    /// values are dropped at once.
    pub fn check_common_secrets(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        if let Ok(r) = self.section::<RabbitSettings>("rabbitmq") {
            problems.check(r.check_secrets());
        }
        if let Ok(d) = self.section::<DatabaseSettings>("database")
            && let Some(p) = &d.password
        {
            problems.check(p.resolve("database.password").map(drop));
        }
        problems.into_result(())
    }
}

/// The file's table as a figment provider that names the file in errors.
struct ConfigFile {
    path: PathBuf,
    table: toml::Table,
}

impl figment::Provider for ConfigFile {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::from("TOML file", self.path.as_path())
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::defaults(&self.table).data()
    }
}

/// Whether a key holds a filesystem path: `file` (of a secret or certificate reference),
/// `*_file`, `*_dir`, `*_root`.
fn is_path_key(key: &str) -> bool {
    key == "file" || key.ends_with("_file") || key.ends_with("_dir") || key.ends_with("_root")
}

/// Makes every relative path value absolute against `dir` (the config file's directory).
fn resolve_relative_paths(table: &mut toml::Table, dir: &Path) {
    for (key, value) in table.iter_mut() {
        match value {
            toml::Value::String(s) if is_path_key(key) && Path::new(s.as_str()).is_relative() => {
                *s = dir.join(s.as_str()).to_string_lossy().into_owned();
            }
            toml::Value::Table(t) => resolve_relative_paths(t, dir),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(t) = item {
                        resolve_relative_paths(t, dir);
                    }
                }
            }
            _ => {}
        }
    }
}

/// RabbitMQ's `x-max-age` syntax, strictly: a positive number and one unit, `Y`, `M`, `D`,
/// `h`, `m` or `s` (`7D`, `36h`). `7 days` is not accepted (the broker would refuse it).
pub fn parse_max_age(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok().filter(|&n| n > 0)?;
    let secs = match unit {
        'Y' => 365 * 86_400,
        'M' => 30 * 86_400,
        'D' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(secs)?))
}

/// The sections every binary reads.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    pub rabbitmq: RabbitSettings,
    pub telemetry: TelemetrySettings,
    pub database: DatabaseSettings,
}

/// More bulk queues than batches that run at once buy nothing, and each costs a quorum queue
/// and a consumer's prefetch.
pub const MAX_BULK_QUEUES: u16 = 64;

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
    /// Bulk deliver queues for batches, taken in turn (plus `<prefix>.deliver` for jobs
    /// without a batch): up to this many batches running at once share the pool evenly.
    pub bulk_queues: u16,
}

impl RabbitSettings {
    /// What serde cannot check: values that parse but cannot work, each naming its key.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad =
            |key: &str, why: String| out.push(Problem::new(format!("rabbitmq.{key}"), why));
        match self.url.split_once("://") {
            Some(("amqp" | "amqps", rest)) if !rest.is_empty() => {}
            _ => bad(
                "url",
                format!(
                    "{:?} is not an AMQP URI (amqp://user@host:5672/vhost or amqps://...)",
                    redact_userinfo(&self.url)
                ),
            ),
        }
        if self.prefix.is_empty()
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            bad(
                "prefix",
                format!(
                    "{:?} must be letters, digits, '-', '_' or '.' (it starts every queue name)",
                    self.prefix
                ),
            );
        }
        if self.bulk_queues > MAX_BULK_QUEUES {
            bad(
                "bulk_queues",
                format!(
                    "{} is more than {MAX_BULK_QUEUES}: each is a quorum queue deliver reads with its own prefetch",
                    self.bulk_queues
                ),
            );
        }
        if self.prefetch == 0 {
            bad(
                "prefetch",
                "must be at least 1 (0 means unlimited to RabbitMQ)".into(),
            );
        }
        if self.delivery_limit == 0 {
            bad("delivery_limit", "must be at least 1".into());
        }
        if self.retry_delays_ms.is_empty() {
            bad(
                "retry_delays_ms",
                "needs at least one delay (e.g. [30000])".into(),
            );
        }
        if self.retry_delays_ms.iter().any(Duration::is_zero) {
            bad(
                "retry_delays_ms",
                "every delay must be at least 1 ms".into(),
            );
        }
        if self.confirm_timeout_ms == 0 {
            bad("confirm_timeout_ms", "must be at least 1".into());
        }
        if self.reconnect_max_backoff_ms == 0 {
            bad("reconnect_max_backoff_ms", "must be at least 1".into());
        }
        if self.operation_timeout_ms == 0 {
            bad("operation_timeout_ms", "must be at least 1".into());
        }
        if parse_max_age(&self.events_max_age).is_none() {
            bad(
                "events_max_age",
                format!(
                    "{:?} is not a RabbitMQ max-age: a number and one unit of Y, M, D, h, m, s (e.g. \"7D\")",
                    self.events_max_age
                ),
            );
        }
        out
    }
}

impl RabbitSettings {
    /// Reads the secret `[rabbitmq]` references (`password`) as a connection would, so that
    /// `--check-config` reports a missing variable or file; the value is dropped at once.
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        match &self.password {
            Some(p) => p.resolve("rabbitmq.password").map(drop),
            None => Ok(()),
        }
    }
}

/// A URI with its password (if any) shown as `***`, the user kept:
/// `amqp://mailpipe:***@rabbit:5672/prod`. For summaries.
pub fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A URI with any `user:password@` replaced, for error messages.
pub fn redact_userinfo(uri: &str) -> String {
    match (uri.split_once("://"), uri.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://…{}", &uri[at..]),
        _ => uri.to_owned(),
    }
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
            bulk_queues: 4,
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

impl TelemetrySettings {
    /// What serde cannot check, each naming its key.
    pub fn problems(&self) -> Vec<Problem> {
        match tracing_subscriber::EnvFilter::try_new(&self.log_filter) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Problem::new(
                "telemetry.log_filter",
                format!(
                    "{:?} is not a tracing filter ({e}); e.g. \"info\" or \"info,mailpipe_deliver=debug\"",
                    self.log_filter
                ),
            )],
        }
    }
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
                let v = read_secret_file(path)
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

/// Secret files are small: anything larger is not a secret file (a path to a log, or to
/// `/dev/zero`).
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Reads a secret file: a regular file (a FIFO would block the start, a device never end),
/// at most [`MAX_SECRET_FILE_BYTES`].
fn read_secret_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let not_a_file = || std::io::Error::other("not a regular file");
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_a_file());
    }
    // Non-blocking open: a FIFO swapped in after the check above must not block the open
    // (it is then refused by the check on what was opened). No effect on a regular file.
    #[cfg(unix)]
    let file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?
    };
    #[cfg(not(unix))]
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_a_file());
    }
    let mut text = String::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_SECRET_FILE_BYTES} bytes"
        )));
    }
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
    fn unknown_sections_and_top_level_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "prefix = \"x\"\n[rabitmq]\nurl = \"amqp://h\"\n[render]\nconcurrency = 2\n",
        )
        .unwrap();
        let err = ConfigSource::load(Some(&path))
            .unwrap()
            .common()
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown section [rabitmq]"), "{err}");
        assert!(err.contains("unknown top-level key `prefix`"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(conf.join("secrets")).unwrap();
        std::fs::write(conf.join("secrets/pw"), "s3cret\n").unwrap();
        std::fs::write(
            conf.join("m.toml"),
            "[rabbitmq]\npassword = { file = \"secrets/pw\" }\n\
             [render]\ntemplates_dir = \"tpl\"\nattachments_root = \"/abs/root\"\n\
             [ingest]\napi_tokens = [{ file = \"secrets/pw\" }, { env = \"X\" }]\n",
        )
        .unwrap();
        // Loaded through a relative path from another working directory: the process's
        // working directory plays no part.
        let src = ConfigSource::load(Some(&conf.join("m.toml"))).unwrap();
        let r: RabbitSettings = src.section("rabbitmq").unwrap();
        let secret = r.password.unwrap().resolve("rabbitmq.password").unwrap();
        assert_eq!(secret.expose_secret(), "s3cret");
        let render: toml::Table = src.section("render").unwrap();
        assert_eq!(
            render["templates_dir"].as_str(),
            Some(conf.join("tpl").to_str().unwrap())
        );
        assert_eq!(render["attachments_root"].as_str(), Some("/abs/root"));
        let ingest: toml::Table = src.section("ingest").unwrap();
        let tokens = ingest["api_tokens"].as_array().unwrap();
        assert_eq!(
            tokens[0]["file"].as_str(),
            Some(conf.join("secrets/pw").to_str().unwrap())
        );
        assert_eq!(tokens[1]["env"].as_str(), Some("X"));
    }

    #[test]
    fn values_that_cannot_work_are_refused_naming_each_key() {
        let src = ConfigSource::from_toml(
            "[rabbitmq]\nurl = \"http://x\"\nprefix = \"\"\nprefetch = 0\ndelivery_limit = 0\n\
             retry_delays_ms = []\nconfirm_timeout_ms = 0\nevents_max_age = \"7 days\"\n\
             [telemetry]\nlog_format = \"yaml\"\n",
        );
        let err = src.common().unwrap_err().to_string();
        for key in [
            "rabbitmq.url",
            "rabbitmq.prefix",
            "rabbitmq.prefetch",
            "rabbitmq.delivery_limit",
            "rabbitmq.retry_delays_ms",
            "rabbitmq.confirm_timeout_ms",
            "rabbitmq.events_max_age",
            "telemetry.log_format",
        ] {
            assert!(err.contains(key), "{key} not named in: {err}");
        }
        let pw = ConfigSource::from_toml("[rabbitmq]\nurl = \"http://u:hunter2@h\"\n")
            .common()
            .unwrap_err()
            .to_string();
        assert!(!pw.contains("hunter2"), "{pw}");
        assert!(ConfigSource::from_toml("").common().is_ok());
    }

    #[test]
    fn every_problem_of_every_common_section_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "[rabitmq]\n[rabbitmq]\nprefetch = 0\noperation_timeout_ms = 0\n\
             password = \"hunter2\"\n[telemetry]\nlog_filter = \"info,foo=lots\"\n",
        )
        .unwrap();
        let err = ConfigSource::load(Some(&path))
            .unwrap()
            .common()
            .unwrap_err();
        let keys: Vec<Option<String>> = err.problems().into_iter().map(|p| p.key).collect();
        // The password is a type error: the other rabbitmq values are not checked then,
        // but the unknown section and telemetry are.
        assert_eq!(
            keys,
            [
                Some("rabitmq".to_owned()),
                Some("rabbitmq.password".to_owned()),
                Some("telemetry.log_filter".to_owned()),
            ]
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
        std::fs::write(
            &path,
            "[rabbitmq]\nprefetch = 0\noperation_timeout_ms = 0\n",
        )
        .unwrap();
        let keys: Vec<Option<String>> = ConfigSource::load(Some(&path))
            .unwrap()
            .common()
            .unwrap_err()
            .problems()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(
            keys,
            [
                Some("rabbitmq.prefetch".to_owned()),
                Some("rabbitmq.operation_timeout_ms".to_owned()),
            ]
        );
    }

    #[test]
    fn the_rabbitmq_password_is_resolved_naming_the_key_never_the_value() {
        // Found whatever else is wrong with the section.
        let src = ConfigSource::from_toml(
            "[rabbitmq]\nprefetch = 0\npassword = { env = \"MAILPIPE_TEST_SURELY_UNSET_PW\" }\n",
        );
        assert!(src.common().is_err());
        let problems = src.check_common_secrets().unwrap_err().problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key.as_deref(), Some("rabbitmq.password"));
        assert!(
            problems[0]
                .message
                .contains("MAILPIPE_TEST_SURELY_UNSET_PW")
        );
        assert!(
            ConfigSource::from_toml("")
                .common()
                .unwrap()
                .rabbitmq
                .check_secrets()
                .is_ok()
        );
        assert_eq!(
            redact_password("amqp://u:hunter2@h:5672/v"),
            "amqp://u:***@h:5672/v"
        );
        assert_eq!(redact_password("amqp://h/v"), "amqp://h/v");
    }

    #[test]
    fn max_age_is_parsed_strictly() {
        assert_eq!(parse_max_age("7D"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_max_age("36h"), Some(Duration::from_secs(36 * 3_600)));
        for bad in [
            "7 days", "7d", "D", "0D", "-1D", "+7D", " 7D", "7D ", "", "1.5h",
        ] {
            assert_eq!(parse_max_age(bad), None, "{bad:?}");
        }
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
