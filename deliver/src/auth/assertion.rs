//! Certificate credentials: signs the client assertion Entra's client-credentials flow
//! takes instead of a secret (a JWT, RS256, header `x5t#S256` = the certificate's SHA-256
//! thumbprint, `aud` = the token URL, `iss` = `sub` = the client id, a few minutes of life,
//! a unique `jti`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mailpipe_common::config::ConfigError;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// How long an assertion is valid: Entra only needs it for the one token request.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

/// The posted `client_assertion_type`.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    aud: String,
    iss: String,
    sub: String,
    jti: String,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// The private key and the thumbprint of its certificate. The key never leaves here.
pub struct AssertionSigner {
    key: EncodingKey,
    thumbprint: String,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("x5t#S256", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl AssertionSigner {
    /// From the certificate (PEM) and its RSA private key (PEM). Checks that the key belongs
    /// to the certificate, so a mismatch is a configuration error, not an AADSTS700027
    /// at the first send. `key` names the config keys in errors.
    pub fn from_pem(
        certificate_pem: &str,
        private_key_pem: &SecretString,
        key: &str,
    ) -> Result<Self, ConfigError> {
        let cert_key = format!("{key}.client_certificate");
        let key_key = format!("{key}.client_certificate_key");
        let der = rustls_pemfile::certs(&mut certificate_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| {
                ConfigError::invalid(
                    &cert_key,
                    "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
                )
            })?;
        let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(der.as_ref()));
        let signing = EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes())
            .map_err(|e| {
                // jsonwebtoken's errors describe the format, never the key material.
                ConfigError::invalid(&key_key, format!("not an RSA private key in PEM: {e}"))
            })?;
        let public = DecodingKey::from_rsa_pem(certificate_pem.as_bytes()).map_err(|e| {
            ConfigError::invalid(
                &cert_key,
                format!("not an RSA certificate (Entra takes RSA): {e}"),
            )
        })?;
        let signer = Self {
            key: signing,
            thumbprint,
        };
        let probe = signer
            .sign("probe", "https://probe.invalid/token")
            .map_err(|e| ConfigError::invalid(&key_key, format!("cannot sign: {e}")))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["https://probe.invalid/token"]);
        if jsonwebtoken::decode::<Claims>(&probe, &public, &validation).is_err() {
            return Err(ConfigError::invalid(
                &key_key,
                format!("this key does not belong to the certificate in {cert_key}"),
            ));
        }
        Ok(signer)
    }

    /// The certificate's `x5t#S256` thumbprint (base64url of SHA-256 over its DER).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A fresh assertion for one token request to `audience` (the token URL).
    pub fn sign(
        &self,
        client_id: &str,
        audience: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            aud: audience.to_owned(),
            iss: client_id.to_owned(),
            sub: client_id.to_owned(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            nbf: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.x5t_s256 = Some(self.thumbprint.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
    }
}
