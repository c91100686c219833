//! OAuth2 client-credentials tokens for SMTP XOAUTH2, one `TokenSource` per app
//! registration: fetched on first use, cached, refreshed ahead of expiry, and refreshed
//! once more when the server refuses a token. The app proves itself with a client secret, a
//! signed assertion (certificate credentials) or another issuer's token read from a file
//! (federated credentials). Secrets, keys and tokens stay wrapped and
//! never reach logs, errors or metrics; requests go only to the checked
//! [`TokenEndpoint`], and a redirect is an error, never followed.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use mailpipe_common::config::ConfigError;

use crate::auth::assertion::{ASSERTION_TYPE, AssertionSigner};
use crate::auth::federated::FederatedTokenFile;
use crate::auth::token_endpoint::TokenEndpoint;
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
    /// Following would post the credential to a place nobody configured.
    #[error(
        "token endpoint {endpoint} answered {status} redirecting to {location:?}; redirects are never followed: configure the final authority"
    )]
    Redirected {
        endpoint: String,
        status: u16,
        location: String,
    },
    #[error("signing the client assertion for {client_id} failed: {message}")]
    Assertion { client_id: String, message: String },
    /// The federated token file could not be used (the message names the file and what is
    /// wrong, never its content).
    #[error("the federated token for {client_id} is unusable: {message}")]
    AssertionFile { client_id: String, message: String },
}

/// The HTTP client for token requests: follows no redirects (a redirect would re-post the
/// credential to a place nobody checked), trusts `extra_ca_pem` besides the system roots.
pub fn token_http_client(extra_ca_pem: Option<&[u8]>) -> Result<reqwest::Client, reqwest::Error> {
    let mut http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        // TokenEndpoint allows http only to loopback, on opt-in.
        .https_only(false);
    if let Some(pem) = extra_ca_pem {
        http = http.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
    }
    http.build()
}

/// How the app proves itself to the token endpoint.
#[derive(Debug)]
pub enum ClientCredential {
    Secret(SecretString),
    Certificate(AssertionSigner),
    /// A token of a trusted issuer, read from its file for each request.
    Federated(FederatedTokenFile),
}

impl ClientCredential {
    /// Resolves the app's secret, its certificate and key, or its federated token file:
    /// exactly one. `key` is the app's key path (`deliver.tenants[0].oauth`).
    pub fn from_settings(app: &OAuthApp, key: &str) -> Result<Self, ConfigError> {
        let federated =
            app.client_assertion_file.is_some() || app.client_assertion_file_env.is_some();
        let certificate = app.client_certificate.is_some() || app.client_certificate_key.is_some();
        let given = [app.client_secret.is_some(), certificate, federated];
        match given.iter().filter(|g| **g).count() {
            0 => {
                return Err(ConfigError::invalid(
                    key,
                    "give client_secret, client_certificate and client_certificate_key, or client_assertion_file (or client_assertion_file_env) for a federated credential",
                ));
            }
            1 => {}
            _ => {
                return Err(ConfigError::invalid(
                    key,
                    "give one credential: client_secret, a certificate, or a federated client_assertion_file, not several",
                ));
            }
        }
        if federated {
            return Ok(ClientCredential::Federated(
                FederatedTokenFile::from_settings(app, key)?,
            ));
        }
        match (
            &app.client_secret,
            &app.client_certificate,
            &app.client_certificate_key,
        ) {
            (Some(secret), _, _) => Ok(ClientCredential::Secret(
                secret.resolve(&format!("{key}.client_secret"))?,
            )),
            (None, Some(cert), Some(private_key)) => {
                let cert = cert.resolve(&format!("{key}.client_certificate"))?;
                let private_key = private_key.resolve(&format!("{key}.client_certificate_key"))?;
                Ok(ClientCredential::Certificate(AssertionSigner::from_pem(
                    cert.expose_secret(),
                    &private_key,
                    key,
                )?))
            }
            _ => Err(ConfigError::invalid(
                key,
                "client_certificate and client_certificate_key go together",
            )),
        }
    }

    /// `"secret"`, `"certificate"` or `"federated"`, for tables and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientCredential::Secret(_) => "secret",
            ClientCredential::Certificate(_) => "certificate",
            ClientCredential::Federated(_) => "federated",
        }
    }
}

#[derive(Debug)]
pub struct TokenSource {
    endpoint: TokenEndpoint,
    client_id: String,
    credential: ClientCredential,
    scope: String,
    http: reqwest::Client,
    cached: Mutex<Option<CachedToken>>,
    /// Expiry of the cached token, readable without the lock (metrics).
    expires_at: std::sync::Mutex<Option<Instant>>,
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: SecretString,
    /// When it arrived.
    fetched_at: Instant,
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
    /// `http` must follow no redirects (see `MailboxPool::build`); a 3xx is refused here
    /// anyway.
    pub fn new(
        app: &OAuthApp,
        endpoint: TokenEndpoint,
        credential: ClientCredential,
        http: reqwest::Client,
    ) -> Self {
        Self {
            endpoint,
            client_id: app.client_id.clone(),
            credential,
            scope: app.scope.clone(),
            http,
            cached: Mutex::new(None),
            expires_at: std::sync::Mutex::new(None),
        }
    }

    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    pub fn credential_kind(&self) -> &'static str {
        self.credential.kind()
    }

    /// A valid token, from the cache or freshly fetched. Concurrent callers share one fetch.
    pub async fn token(&self) -> Result<SecretString, OAuthError> {
        Ok(self.current().await?.token)
    }

    /// `token()`, and whether it was fetched at or after `since`: a token fetched for this
    /// very attempt (by us or by a concurrent caller we waited for) cannot be a stale cache
    /// entry, so refreshing it after a refusal would only repeat the refusal.
    pub async fn token_since(&self, since: Instant) -> Result<(SecretString, bool), OAuthError> {
        let c = self.current().await?;
        Ok((c.token, c.fetched_at >= since))
    }

    async fn current(&self) -> Result<CachedToken, OAuthError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.clone());
        }
        let fresh = self.fetch().await?;
        *self.expires_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.expires_at);
        *cached = Some(fresh.clone());
        Ok(fresh)
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
        let endpoint = self.endpoint.to_string();
        let assertion;
        let federated;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        match &self.credential {
            ClientCredential::Secret(secret) => {
                form.push(("client_secret", secret.expose_secret()));
            }
            ClientCredential::Certificate(signer) => {
                assertion = signer
                    .sign(&self.client_id, self.endpoint.as_str())
                    .map_err(|e| OAuthError::Assertion {
                        client_id: self.client_id.clone(),
                        message: e.to_string(),
                    })?;
                form.push(("client_assertion_type", ASSERTION_TYPE));
                form.push(("client_assertion", assertion.as_str()));
            }
            ClientCredential::Federated(file) => {
                federated = file
                    .read()
                    .await
                    .map_err(|message| OAuthError::AssertionFile {
                        client_id: self.client_id.clone(),
                        message,
                    })?;
                form.push(("client_assertion_type", ASSERTION_TYPE));
                form.push(("client_assertion", federated.expose_secret()));
            }
        }
        let started = Instant::now();
        let response = self
            .http
            .post(self.endpoint.url().clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| OAuthError::Unreachable {
                endpoint: endpoint.clone(),
                // reqwest's message may hold the URL (no secret in it) but never the form body.
                message: e.without_url().to_string(),
            })?;
        if response.status().is_redirection() {
            return Err(OAuthError::Redirected {
                endpoint,
                status: response.status().as_u16(),
                location: redirect_location(&response),
            });
        }
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| OAuthError::Unreachable {
                endpoint: endpoint.clone(),
                message: e.without_url().to_string(),
            })?;
        if !status.is_success() {
            let err: ErrorReply = serde_json::from_slice(&body).unwrap_or_default();
            return Err(OAuthError::Refused {
                endpoint: endpoint.clone(),
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
                endpoint: endpoint.clone(),
                message: e.to_string(),
            })?;
        let lifetime = Duration::from_secs(reply.expires_in);
        let expires_at = started + lifetime;
        // Refresh 5 minutes ahead, or at 80% of very short lifetimes (tests, simulators).
        let ahead = REFRESH_AHEAD.min(lifetime / 5);
        tracing::info!(endpoint = %endpoint, client_id = %self.client_id, expires_in_s = reply.expires_in, "OAuth token obtained");
        Ok(CachedToken {
            token: SecretString::from(reply.access_token),
            fetched_at: Instant::now(),
            expires_at,
            refresh_at: expires_at - ahead,
        })
    }
}

/// Where a redirect points, for the error that refuses to follow it (a redirect could carry
/// a secret away): the `Location` header, at most 200 characters.
pub(crate) fn redirect_location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|l| {
            String::from_utf8_lossy(l.as_bytes())
                .chars()
                .take(200)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;

    use mailpipe_common::config::SecretRef;

    use super::*;

    fn app() -> OAuthApp {
        OAuthApp {
            tenant_id: Some("contoso.onmicrosoft.com".into()),
            client_id: "c".into(),
            client_secret: None,
            client_certificate: None,
            client_certificate_key: None,
            client_assertion_file: None,
            client_assertion_file_env: None,
            authority: "https://login.microsoftonline.com".into(),
            scope: "s".into(),
            allow_loopback_http: false,
        }
    }

    fn error(app: &OAuthApp) -> String {
        ClientCredential::from_settings(app, "k")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn an_app_has_exactly_one_credential() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln").unwrap();
        let secret = Some(SecretRef {
            env: None,
            file: Some(token.clone()),
        });
        let file = Some(token);

        let e = error(&app());
        assert!(e.starts_with("k: give client_secret") && e.contains("client_assertion_file"));

        let federated = OAuthApp {
            client_assertion_file: file.clone(),
            ..app()
        };
        let c = ClientCredential::from_settings(&federated, "k").unwrap();
        assert_eq!(c.kind(), "federated");

        for several in [
            OAuthApp {
                client_secret: secret.clone(),
                ..federated.clone()
            },
            OAuthApp {
                client_certificate: secret.clone(),
                client_certificate_key: secret.clone(),
                ..federated.clone()
            },
            OAuthApp {
                client_secret: secret.clone(),
                client_certificate: secret.clone(),
                ..app()
            },
        ] {
            assert!(error(&several).contains("not several"), "{several:?}");
        }
        let both_spellings = OAuthApp {
            client_assertion_file_env: Some("AZURE_FEDERATED_TOKEN_FILE".into()),
            ..federated.clone()
        };
        assert!(error(&both_spellings).contains("not both"));
        let half_certificate = OAuthApp {
            client_certificate: secret,
            ..app()
        };
        assert!(error(&half_certificate).contains("go together"));
        let missing = OAuthApp {
            client_assertion_file: Some(PathBuf::from("/nonexistent/token")),
            ..app()
        };
        assert!(error(&missing).starts_with("k.client_assertion_file:"));
    }
}
