//! Certificate credentials of simulated app registrations: checking client assertions the
//! way Entra does (signature by the registered certificate's key, `x5t#S256`, audience,
//! time range, issuer and subject), and making certificates for tests.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
use serde::Deserialize;
use sha2::Digest as _;

/// A certificate registered on an app: its public key and SHA-256 thumbprint.
#[derive(Clone)]
pub(crate) struct RegisteredCertificate {
    key: DecodingKey,
    /// base64url(SHA-256(DER)), as `x5t#S256` carries it.
    thumbprint: String,
}

impl std::fmt::Debug for RegisteredCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegisteredCertificate({})", self.thumbprint)
    }
}

/// Why an assertion is refused, with Entra's AADSTS code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AssertionRefusal {
    pub code: u32,
    pub message: String,
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
}

impl RegisteredCertificate {
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or("no PEM certificate (-----BEGIN CERTIFICATE-----) found")?;
        let key = DecodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| format!("not an RSA certificate: {e}"))?;
        Ok(Self {
            key,
            thumbprint: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(der.as_ref())),
        })
    }

    /// Checks `assertion` for `client_id` posted to `token_url`.
    pub fn verify(
        &self,
        assertion: &str,
        client_id: &str,
        token_url: &str,
    ) -> Result<(), AssertionRefusal> {
        let refuse = |code: u32, message: String| AssertionRefusal { code, message };
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|e| refuse(50027, format!("JWT token is invalid or malformed: {e}.")))?;
        let presented = header.x5t_s256.or(header.x5t).unwrap_or_default();
        if presented != self.thumbprint {
            return Err(refuse(
                700027,
                format!(
                    "Client assertion failed signature validation. [Reason - The key was not found., Thumbprint of key used by client: '{presented}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]"
                ),
            ));
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[token_url]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 60;
        let data = jsonwebtoken::decode::<Claims>(assertion, &self.key, &validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature
                | jsonwebtoken::errors::ErrorKind::ImmatureSignature => refuse(
                    700024,
                    "Client assertion is not within its valid time range.".into(),
                ),
                jsonwebtoken::errors::ErrorKind::InvalidAudience => refuse(
                    50013,
                    format!(
                        "Assertion audience claim does not match the required value. The expected audience is '{token_url}'."
                    ),
                ),
                jsonwebtoken::errors::ErrorKind::InvalidSignature
                | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => refuse(
                    700027,
                    "Client assertion failed signature validation.".into(),
                ),
                other => refuse(50027, format!("JWT token is invalid or malformed: {other:?}.")),
            },
        )?;
        if data.claims.iss != client_id || data.claims.sub != client_id {
            return Err(refuse(
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter."
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A self-signed RSA certificate and its private key, both PEM, as an admin would make
/// for an app registration (`New-SelfSignedCertificate`, `openssl req -x509`).
#[derive(Debug, Clone)]
pub struct AppCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

impl AppCertificate {
    /// A fresh 3072-bit key and a certificate for `common_name` (tests: a few seconds).
    pub fn generate(common_name: &str) -> Result<Self, String> {
        use rsa::Generate as _;
        let key = rsa::PrivateKey::generate();
        let private_key_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?
            .to_string();
        let key_pair =
            rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&private_key_pem, &rcgen::PKCS_RSA_SHA256)
                .map_err(|e| e.to_string())?;
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.self_signed(&key_pair).map_err(|e| e.to_string())?;
        Ok(Self {
            certificate_pem: cert.pem(),
            private_key_pem,
        })
    }
}
