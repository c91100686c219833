//! `[ingest.webhooks]`: where outcome webhooks go and how hard ingest tries. Resolved into
//! [`Webhooks`] (secrets read, keys parsed) when `serve` starts.

use std::time::Duration;

use chrono::{DateTime, Utc};

use mailpipe_common::config::{ConfigError, Problem, SecretRef, parse_max_age};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::allowed_host::AllowedHost;
use super::callback_url::UrlPolicy;
use super::keyring::Keyring;
use super::signature::SigningKey;

/// Every event type; an endpoint's `events` filter names some of them.
pub const EVENT_TYPES: [&str; 8] = [
    "job.delivered",
    "job.failed",
    "job.bounced",
    "job.cancelled",
    "job.expired",
    "job.suppressed",
    "job.uncertain",
    "batch.completed",
];

/// The endpoint name reserved for batches' callback URLs.
pub const CALLBACK: &str = "callback";

/// `[ingest.webhooks]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Global endpoints: every event (or those of `events`) goes to each.
    pub endpoints: Vec<EndpointSettings>,
    /// Signs the calls to batches' callback URLs (`whsec_<base64>`). Without it, a
    /// submission with a callback URL is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_secret: Option<SecretRef>,
    /// During a rotation: the callback secret being replaced, which signs too (a second
    /// signature in the same header) until `until`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_callback_secret: Option<PreviousSecret>,
    /// Hosts a callback URL may name: `erp.example.com`, or `*.example.com` for any name
    /// below it, on port 443 unless the entry names another (`erp.example.com:8443`).
    /// Empty: callback URLs are refused.
    pub allowed_callback_hosts: Vec<String>,
    /// Allows `http://` to loopback addresses, and callbacks to loopback addresses at all
    /// (tests, a local receiver). Off: https only, public addresses only.
    pub allow_http_loopback: bool,
    /// How long an event is tried before its delivery ends `expired` (`3D`, `36h`, ...).
    pub max_age: String,
    /// Time allowed to connect to a receiver.
    pub connect_timeout_ms: u64,
    /// Time allowed for a whole call (connect, send, status line and headers).
    pub request_timeout_ms: u64,
    /// First wait after a failed try; doubles with every try (with jitter).
    pub retry_initial_ms: u64,
    /// Longest wait between two tries.
    pub retry_max_ms: u64,
    /// Calls in flight at once, over all endpoints (per ingest process).
    pub max_in_flight: usize,
    /// Calls in flight at once to one endpoint (per ingest process).
    pub max_in_flight_per_endpoint: usize,
    /// How often the outbox is looked at when there is nothing to do.
    pub poll_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            callback_secret: None,
            previous_callback_secret: None,
            allowed_callback_hosts: Vec::new(),
            allow_http_loopback: false,
            max_age: "3D".into(),
            connect_timeout_ms: 5_000,
            request_timeout_ms: 15_000,
            retry_initial_ms: 5_000,
            retry_max_ms: 3_600_000,
            max_in_flight: 32,
            max_in_flight_per_endpoint: 4,
            poll_ms: 1_000,
        }
    }
}

/// `[[ingest.webhooks.endpoints]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSettings {
    /// Names the endpoint in the outbox, the CLI and the logs (letters, digits, `-`, `_`).
    pub name: String,
    pub url: String,
    /// `whsec_<base64>`: `{ env = "VAR" }` or `{ file = "path" }`.
    pub secret: SecretRef,
    /// Only these event types (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// During a rotation: the secret being replaced, which signs too until `until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<PreviousSecret>,
}

/// A secret being rotated out: `{ secret = { env = "OLD" }, until = "2026-12-10T00:00:00Z" }`.
/// Until then every call carries its signature beside the current secret's, so receivers
/// can move to the new secret at their own pace; after it, only the new one signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousSecret {
    pub secret: SecretRef,
    /// The end of the overlap (RFC 3339).
    pub until: String,
}

impl PreviousSecret {
    fn until(&self) -> Result<DateTime<Utc>, String> {
        DateTime::parse_from_rfc3339(&self.until)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                format!(
                    "{:?} is not an RFC 3339 time (2026-12-10T00:00:00Z): {e}",
                    self.until
                )
            })
    }
}

impl WebhookSettings {
    /// The callback URL policy; entries that cannot be read are left out (`problems`
    /// names them).
    pub fn policy(&self) -> UrlPolicy {
        UrlPolicy {
            allowed_hosts: self
                .allowed_callback_hosts
                .iter()
                .filter_map(|h| AllowedHost::parse(h).ok())
                .collect(),
            allow_http_loopback: self.allow_http_loopback,
        }
    }

    /// `max_age` as a duration (checked by `problems`; 3 days if unreadable).
    pub fn max_age(&self) -> Duration {
        parse_max_age(&self.max_age).unwrap_or(Duration::from_secs(3 * 86_400))
    }

    /// Whether submissions may carry a callback URL.
    pub fn callbacks_enabled(&self) -> bool {
        self.callback_secret.is_some() && !self.allowed_callback_hosts.is_empty()
    }

    /// What serde cannot check, each naming its key.
    pub fn problems(&self) -> Vec<Problem> {
        let key = |k: &str| format!("ingest.webhooks.{k}");
        let mut out = Vec::new();
        for (k, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("retry_initial_ms", self.retry_initial_ms),
            ("retry_max_ms", self.retry_max_ms),
            ("max_in_flight", self.max_in_flight as u64),
            (
                "max_in_flight_per_endpoint",
                self.max_in_flight_per_endpoint as u64,
            ),
            ("poll_ms", self.poll_ms),
        ] {
            if v == 0 {
                out.push(Problem::new(key(k), "must be at least 1"));
            }
        }
        if self.retry_max_ms < self.retry_initial_ms {
            out.push(Problem::new(
                key("retry_max_ms"),
                "must be at least retry_initial_ms",
            ));
        }
        if parse_max_age(&self.max_age).is_none() {
            out.push(Problem::new(
                key("max_age"),
                format!(
                    "{:?}: give a number and a unit (D, h, m, s), e.g. \"3D\"",
                    self.max_age
                ),
            ));
        }
        for (i, h) in self.allowed_callback_hosts.iter().enumerate() {
            if let Err(why) = AllowedHost::parse(h) {
                out.push(Problem::new(
                    key(&format!("allowed_callback_hosts[{i}]")),
                    why,
                ));
            }
        }
        if let Some(p) = &self.previous_callback_secret {
            if let Err(why) = p.until() {
                out.push(Problem::new(key("previous_callback_secret.until"), why));
            }
            if self.callback_secret.is_none() {
                out.push(Problem::new(
                    key("previous_callback_secret"),
                    "a rotation needs the new secret in callback_secret",
                ));
            }
        }
        let policy = self.policy();
        let mut names = std::collections::HashSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let at = |k: &str| key(&format!("endpoints[{i}].{k}"));
            let valid = !e.name.is_empty()
                && e.name.len() <= 64
                && e.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                out.push(Problem::new(
                    at("name"),
                    format!("{:?}: 1 to 64 letters, digits, '-' or '_'", e.name),
                ));
            } else if e.name == CALLBACK {
                out.push(Problem::new(
                    at("name"),
                    "\"callback\" is reserved for batches' callback URLs",
                ));
            } else if !names.insert(e.name.as_str()) {
                out.push(Problem::new(
                    at("name"),
                    format!("{:?} is used twice", e.name),
                ));
            }
            if let Err(why) = policy.check_shape(&e.url) {
                out.push(Problem::new(at("url"), why));
            }
            if let Some(Err(why)) = e.previous_secret.as_ref().map(PreviousSecret::until) {
                out.push(Problem::new(at("previous_secret.until"), why));
            }
            for ev in &e.events {
                if !EVENT_TYPES.contains(&ev.as_str()) {
                    out.push(Problem::new(
                        at("events"),
                        format!("{ev:?}: give some of {}", EVENT_TYPES.join(", ")),
                    ));
                }
            }
        }
        out
    }
}

/// A global endpoint, its key read.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    pub keys: Keyring,
    pub events: Vec<String>,
}

impl Endpoint {
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind)
    }
}

/// `[ingest.webhooks]` with its secrets read: what the dispatcher works with.
#[derive(Debug, Clone)]
pub struct Webhooks {
    pub settings: WebhookSettings,
    pub endpoints: Vec<Endpoint>,
    pub callback_keys: Option<Keyring>,
    pub policy: UrlPolicy,
}

impl Webhooks {
    /// Reads every secret now; errors name the key (`ingest.webhooks.endpoints[0].secret`).
    pub fn resolve(settings: &WebhookSettings) -> Result<Self, ConfigError> {
        let key_of = |r: &SecretRef, what: &str| -> Result<SigningKey, ConfigError> {
            let secret = r.resolve(what)?;
            SigningKey::parse(secret.expose_secret())
                .map_err(|why| ConfigError::invalid(what.to_owned(), why))
        };
        let ring = |current: &SecretRef,
                    previous: Option<&PreviousSecret>,
                    what: &str|
         -> Result<Keyring, ConfigError> {
            let previous = previous
                .map(|p| {
                    let what = format!("{what}.previous");
                    let until = p
                        .until()
                        .map_err(|why| ConfigError::invalid(format!("{what}.until"), why))?;
                    Ok::<_, ConfigError>((key_of(&p.secret, &what)?, until))
                })
                .transpose()?;
            Ok(Keyring::new(key_of(current, what)?, previous))
        };
        let endpoints = settings
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Ok(Endpoint {
                    name: e.name.clone(),
                    url: e.url.clone(),
                    keys: ring(
                        &e.secret,
                        e.previous_secret.as_ref(),
                        &format!("ingest.webhooks.endpoints[{i}].secret"),
                    )?,
                    events: e.events.clone(),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let callback_keys = settings
            .callback_secret
            .as_ref()
            .map(|r| {
                ring(
                    r,
                    settings.previous_callback_secret.as_ref(),
                    "ingest.webhooks.callback_secret",
                )
            })
            .transpose()?;
        Ok(Self {
            endpoints,
            callback_keys,
            policy: settings.policy(),
            settings: settings.clone(),
        })
    }

    /// The keys that sign calls to `endpoint` (`None`: no longer configured).
    pub fn keys_for(&self, endpoint: &str) -> Option<&Keyring> {
        if endpoint == CALLBACK {
            return self.callback_keys.as_ref();
        }
        self.endpoints
            .iter()
            .find(|e| e.name == endpoint)
            .map(|e| &e.keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_their_keys() {
        let s = WebhookSettings {
            max_age: "3 days".into(),
            request_timeout_ms: 0,
            allowed_callback_hosts: vec!["https://erp.example.com".into()],
            endpoints: vec![
                EndpointSettings {
                    name: "callback".into(),
                    url: "http://erp.example.com/x".into(),
                    secret: SecretRef::env("X"),
                    events: vec!["job.sent".into()],
                    previous_secret: Some(PreviousSecret {
                        secret: SecretRef::env("Y"),
                        until: "next week".into(),
                    }),
                },
                EndpointSettings {
                    name: "a b".into(),
                    url: "https://erp.example.com/x".into(),
                    secret: SecretRef::env("X"),
                    events: vec![],
                    previous_secret: None,
                },
            ],
            ..WebhookSettings::default()
        };
        let keys: Vec<String> = s.problems().into_iter().filter_map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "ingest.webhooks.request_timeout_ms",
                "ingest.webhooks.max_age",
                "ingest.webhooks.allowed_callback_hosts[0]",
                "ingest.webhooks.endpoints[0].name",
                "ingest.webhooks.endpoints[0].url",
                "ingest.webhooks.endpoints[0].previous_secret.until",
                "ingest.webhooks.endpoints[0].events",
                "ingest.webhooks.endpoints[1].name",
            ]
        );
        assert!(WebhookSettings::default().problems().is_empty());
    }
}
