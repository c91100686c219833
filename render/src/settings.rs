//! `[render]` settings: where templates and attachments live, limits, concurrency.

use std::net::SocketAddr;
use std::path::PathBuf;

use mailpipe_common::config::{ConfigError, ConfigSource, Problems};
use serde::{Deserialize, Serialize};

/// Exchange Online's default message size limit, counted on the encoded message.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 35 * 1024 * 1024;
/// Per attachment, decoded; the same default ingest applies (`JobLimits`).
pub const DEFAULT_MAX_ATTACHMENT_BYTES: usize = 25 * 1024 * 1024;

/// `[render]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// One subdirectory per template (`invoice/subject.txt`, `invoice/body.html`...).
    pub templates_dir: PathBuf,
    /// Jobs' `path` attachments are read below this directory only. Unset: path
    /// attachments are refused (inline attachments still work).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments_root: Option<PathBuf>,
    /// Right-hand side of every Message-ID (`<uuid@domain>`): a domain you own.
    pub message_id_domain: String,
    /// Jobs rendered at once (CPU work, on the blocking pool). Defaults to the CPU count.
    pub concurrency: usize,
    /// Largest encoded message (headers, base64 and all) render publishes.
    pub max_message_bytes: usize,
    /// Largest single attachment, decoded.
    pub max_attachment_bytes: usize,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http_listen: SocketAddr,
    /// Longest one job may take to render (attachment reads included): past it the job
    /// is dead-lettered with the reason and its slot released.
    pub job_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            templates_dir: PathBuf::from("templates"),
            attachments_root: None,
            message_id_domain: String::new(),
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_attachment_bytes: DEFAULT_MAX_ATTACHMENT_BYTES,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9102)),
            job_timeout_ms: 30_000,
        }
    }
}

impl Settings {
    /// Reads `[render]` and checks what serde cannot; every problem is reported at once.
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        let settings: Settings = source.section("render")?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        if !valid_domain(&self.message_id_domain) {
            problems.push(
                "render.message_id_domain",
                format!(
                    "{:?} is not a domain name; set a domain you own (e.g. mail.example.com)",
                    self.message_id_domain
                ),
            );
        }
        if self.concurrency == 0 {
            problems.push("render.concurrency", "must be at least 1");
        }
        if self.max_message_bytes < 1024 {
            problems.push("render.max_message_bytes", "must be at least 1024");
        }
        if self.job_timeout_ms == 0 {
            problems.push("render.job_timeout_ms", "must be at least 1");
        }
        if self.max_attachment_bytes == 0 {
            problems.push("render.max_attachment_bytes", "must be at least 1");
        }
        problems.into_result(())
    }
}

/// Letters, digits, '-' and '.', at least two labels: what may follow the '@' of a Message-ID.
fn valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_the_domain_is_required() {
        let err = Settings::load(&ConfigSource::from_toml(""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("render.message_id_domain"), "{err}");
        let s = Settings::load(&ConfigSource::from_toml(
            "[render]\nmessage_id_domain = \"mail.example.com\"\n",
        ))
        .unwrap();
        assert_eq!(s.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(s.http_listen.port(), 9102);
        assert!(s.concurrency >= 1);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Settings::load(&ConfigSource::from_toml(
            "[render]\nmessage_id_domain = \"a.b\"\nconcurrency = \"lots\"\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("render.concurrency"), "{err}");
        let err = Settings::load(&ConfigSource::from_toml(
            "[render]\nmessage_id_domain = \"x\r\ny.com\"\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("message_id_domain"), "{err}");
        let err = Settings::load(&ConfigSource::from_toml(
            "[render]\nmessage_id_domain = \"a.b\"\ntemplate_dir = \"x\"\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("template_dir"), "{err}");
    }
}
