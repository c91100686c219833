//! OAuth2 client-credentials tokens for SMTP XOAUTH2, one `TokenSource` per app
//! registration: fetched on first use, cached, refreshed ahead of expiry, and refreshed
//! once more when the server refuses a token. Secrets and tokens stay in `SecretString`
//! and never reach logs, errors or metrics.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::settings::OAuthApp;

/// Refresh when less than this is left (tokens live 60-90 minutes).
const REFRESH_AHEAD: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("token endpoint {endpoint} unreachable: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error(
        "token endpoint {endpoint} refused client {client_id}: {status} {error}: {description}"
    )]
    Refused {
        endpoint: String,
        client_id: String,
        status: u16,
        error: String,
        description: String,
    },
    #[error("token endpoint {endpoint} answered something that is not a token: {message}")]
    Malformed { endpoint: String, message: String },
}

#[derive(Debug)]
pub struct TokenSource {
    endpoint: String,
    client_id: String,
    secret: SecretString,
    scope: String,
    http: reqwest::Client,
    cached: Mutex<Option<CachedToken>>,
    /// Expiry of the cached token, readable without the lock (metrics).
    expires_at: std::sync::Mutex<Option<Instant>>,
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: SecretString,
    expires_at: Instant,
    refresh_at: Instant,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct ErrorReply {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl TokenSource {
    pub fn new(
        app: &OAuthApp,
        tenant_id: &str,
        secret: SecretString,
        http: reqwest::Client,
    ) -> Self {
        let tenant = app.tenant_id.as_deref().unwrap_or(tenant_id);
        Self {
            endpoint: format!(
                "{}/{}/oauth2/v2.0/token",
                app.authority.trim_end_matches('/'),
                tenant
            ),
            client_id: app.client_id.clone(),
            secret,
            scope: app.scope.clone(),
            http,
            cached: Mutex::new(None),
            expires_at: std::sync::Mutex::new(None),
        }
    }

    /// A valid token, from the cache or freshly fetched. Concurrent callers share one fetch.
    pub async fn token(&self) -> Result<SecretString, OAuthError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *self.expires_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.expires_at);
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets `used` if it is still the cached token, so the next `token()` fetches anew
    /// (after the server refused it). Comparing first avoids refetching when another send
    /// already refreshed.
    pub async fn invalidate(&self, used: &SecretString) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == used.expose_secret())
        {
            *cached = None;
        }
    }

    /// Seconds until the cached token expires (negative when expired), for the gauge.
    pub fn seconds_to_expiry(&self) -> Option<f64> {
        let at = (*self.expires_at.lock().unwrap_or_else(|e| e.into_inner()))?;
        let now = Instant::now();
        Some(if at >= now {
            (at - now).as_secs_f64()
        } else {
            -(now - at).as_secs_f64()
        })
    }

    async fn fetch(&self) -> Result<CachedToken, OAuthError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.secret.expose_secret()),
            ("scope", self.scope.as_str()),
        ];
        let started = Instant::now();
        let response = self
            .http
            .post(&self.endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| OAuthError::Unreachable {
                endpoint: self.endpoint.clone(),
                // reqwest's message may hold the URL (no secret in it) but never the form body.
                message: e.without_url().to_string(),
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| OAuthError::Unreachable {
                endpoint: self.endpoint.clone(),
                message: e.without_url().to_string(),
            })?;
        if !status.is_success() {
            let err: ErrorReply = serde_json::from_slice(&body).unwrap_or_default();
            return Err(OAuthError::Refused {
                endpoint: self.endpoint.clone(),
                client_id: self.client_id.clone(),
                status: status.as_u16(),
                error: err.error,
                // Entra's descriptions carry AADSTS codes and trace ids, never the secret.
                description: err
                    .error_description
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        let reply: TokenReply =
            serde_json::from_slice(&body).map_err(|e| OAuthError::Malformed {
                endpoint: self.endpoint.clone(),
                message: e.to_string(),
            })?;
        let lifetime = Duration::from_secs(reply.expires_in);
        let expires_at = started + lifetime;
        // Refresh 5 minutes ahead, or at 80% of very short lifetimes (tests, simulators).
        let ahead = REFRESH_AHEAD.min(lifetime / 5);
        tracing::info!(endpoint = %self.endpoint, client_id = %self.client_id, expires_in_s = reply.expires_in, "OAuth token obtained");
        Ok(CachedToken {
            token: SecretString::from(reply.access_token),
            expires_at,
            refresh_at: expires_at - ahead,
        })
    }
}
