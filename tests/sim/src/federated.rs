//! Federated identity credentials of simulated app registrations: an assertion issued by a
//! trusted issuer (a Kubernetes cluster's service-account token, a GitHub Actions OIDC token)
//! is checked the way Entra checks workload identity federation: a credential on the app
//! whose issuer, subject and audience match the token's `iss`, `sub` and `aud` exactly, a
//! valid RS256 signature by that issuer's key, and a current time range. Refusals carry
//! Entra's AADSTS codes. Accepted assertions are remembered (subject and `jti`) so tests
//! can see which token a client presented.

use std::collections::VecDeque;
use std::sync::Mutex;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::app_certificate::AssertionRefusal;
use crate::config::AppConfig;
use crate::records::lock;

/// An issuer's public key (from PEM: an RSA public key or a certificate).
#[derive(Clone)]
pub(crate) struct IssuerKey(DecodingKey);

impl IssuerKey {
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        DecodingKey::from_rsa_pem(pem.as_bytes())
            .map(Self)
            .map_err(|e| format!("not an RSA public key or certificate in PEM: {e}"))
    }
}

/// The claims read before the signature is checked, to find the credential (as Entra does:
/// the issuer names the keys to check it with).
#[derive(Debug, Deserialize)]
struct Unverified {
    #[serde(default)]
    iss: String,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    aud: Audiences,
    #[serde(default)]
    jti: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Audiences {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

impl Audiences {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audiences::One(a) => a == wanted,
            Audiences::Many(list) => list.iter().any(|a| a == wanted),
            Audiences::None => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Audiences::One(a) => a.clone(),
            Audiences::Many(list) => list.join(","),
            Audiences::None => String::new(),
        }
    }
}

/// The issuer of an assertion, when it is readable: an assertion whose issuer is not the
/// app itself is meant for a federated credential.
pub(crate) fn issuer_of(assertion: &str) -> Option<String> {
    unverified(assertion).ok().map(|c| c.iss)
}

fn unverified(assertion: &str) -> Result<Unverified, AssertionRefusal> {
    let malformed = |why: &str| AssertionRefusal {
        code: 50027,
        message: format!("JWT token is invalid or malformed: {why}."),
    };
    let payload = assertion
        .split('.')
        .nth(1)
        .ok_or_else(|| malformed("not three segments"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| malformed("the payload is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| malformed("the payload is not JSON claims"))
}

/// A federated assertion that got a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FederatedAssertion {
    pub client_id: String,
    pub issuer: String,
    pub subject: String,
    /// The assertion's `jti`, when it has one (Kubernetes tokens do).
    pub jti: Option<String>,
}

/// Checks `assertion` against `app`'s federated credentials.
pub(crate) fn verify(
    app: &AppConfig,
    assertion: &str,
) -> Result<FederatedAssertion, AssertionRefusal> {
    let refuse = |code: u32, message: String| AssertionRefusal { code, message };
    let hint = "Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation";
    let claims = unverified(assertion)?;
    let by_issuer: Vec<_> = app
        .federated
        .iter()
        .filter(|f| f.issuer == claims.iss)
        .collect();
    if by_issuer.is_empty() {
        return Err(refuse(
            700211,
            format!(
                "No matching federated identity record found for presented assertion issuer '{}'. {hint}",
                claims.iss
            ),
        ));
    }
    let by_subject: Vec<_> = by_issuer
        .into_iter()
        .filter(|f| f.subject == claims.sub)
        .collect();
    if by_subject.is_empty() {
        return Err(refuse(
            700213,
            format!(
                "No matching federated identity record found for presented assertion subject '{}'. {hint}",
                claims.sub
            ),
        ));
    }
    let Some(credential) = by_subject
        .into_iter()
        .find(|f| claims.aud.contains(&f.audience))
    else {
        return Err(refuse(
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'. {hint}",
                claims.aud.describe()
            ),
        ));
    };
    let key = IssuerKey::from_pem(&credential.issuer_key).map_err(|e| {
        refuse(
            700027,
            format!("Client assertion failed signature validation: {e}."),
        )
    })?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[credential.audience.as_str()]);
    validation.set_issuer(&[credential.issuer.as_str()]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = 60;
    jsonwebtoken::decode::<serde_json::Value>(assertion, &key.0, &validation).map_err(|e| {
        match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature
            | jsonwebtoken::errors::ErrorKind::ImmatureSignature => refuse(
                700024,
                "Client assertion is not within its valid time range.".into(),
            ),
            jsonwebtoken::errors::ErrorKind::InvalidSignature
            | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => refuse(
                700027,
                format!(
                    "Client assertion failed signature validation. [Reason - The key used to sign the assertion is not among the keys of issuer '{}'.]",
                    credential.issuer
                ),
            ),
            other => refuse(50027, format!("JWT token is invalid or malformed: {other:?}.")),
        }
    })?;
    Ok(FederatedAssertion {
        client_id: app.client_id.clone(),
        issuer: claims.iss,
        subject: claims.sub,
        jti: claims.jti,
    })
}

/// The federated assertions that got tokens, newest last (bounded).
#[derive(Debug, Default)]
pub(crate) struct FederatedLog {
    seen: Mutex<VecDeque<FederatedAssertion>>,
}

/// Kept entries: enough for any test, small for a long-running demo.
const MAX_LOGGED: usize = 1_000;

impl FederatedLog {
    pub fn record(&self, a: FederatedAssertion) {
        let mut seen = lock(&self.seen);
        if seen.len() == MAX_LOGGED {
            seen.pop_front();
        }
        seen.push_back(a);
    }

    pub fn all(&self) -> Vec<FederatedAssertion> {
        lock(&self.seen).iter().cloned().collect()
    }

    pub fn clear(&self) {
        lock(&self.seen).clear();
    }
}
