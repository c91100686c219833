//! OAuth2 access tokens issued by the simulated Entra ID endpoint: JWT-shaped like Entra's
//! (a header, the claims a client may read: `aud`, `tid`, `appid`, `roles`, `exp`, and a
//! random "signature" that makes each one unique), remembered with their app, tenant and
//! expiry; the store, not the signature, is what validates them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::RngCore as _;

use crate::records::lock;

/// Which API a token is good for: its `aud`. A token for one resource does not
/// authenticate at the other, as with Entra ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    /// Exchange Online (`https://outlook.office365.com`): SMTP AUTH XOAUTH2.
    Exchange,
    /// Microsoft Graph (`https://graph.microsoft.com`).
    Graph,
}

/// What a token stands for.
#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    pub client_id: String,
    pub audience: Audience,
    /// Tenant id (lower case).
    pub tenant: String,
    pub expires_at: Instant,
    /// The application permissions in its `roles` claim.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenProblem {
    Unknown,
    Expired,
}

#[derive(Debug, Default)]
pub(crate) struct TokenStore {
    tokens: Mutex<HashMap<String, IssuedToken>>,
}

impl TokenStore {
    /// Issues a new token. Expired tokens are forgotten here, so the map stays small.
    pub fn issue(
        &self,
        client_id: &str,
        tenant: &str,
        lifetime: Duration,
        audience: Audience,
        roles: &[String],
    ) -> String {
        let token = jwt_shaped(client_id, tenant, lifetime, audience, roles);
        let now = Instant::now();
        let mut map = lock(&self.tokens);
        map.retain(|_, t| t.expires_at > now);
        map.insert(
            token.clone(),
            IssuedToken {
                client_id: client_id.to_owned(),
                audience,
                tenant: tenant.to_owned(),
                expires_at: now + lifetime,
                roles: roles.to_vec(),
            },
        );
        token
    }

    pub fn validate(&self, token: &str) -> Result<IssuedToken, TokenProblem> {
        let map = lock(&self.tokens);
        let t = map.get(token).ok_or(TokenProblem::Unknown)?;
        if Instant::now() >= t.expires_at {
            return Err(TokenProblem::Expired);
        }
        Ok(t.clone())
    }

    /// Makes every issued token expired (tests of refresh logic).
    pub fn expire_all(&self) {
        let now = Instant::now();
        for t in lock(&self.tokens).values_mut() {
            t.expires_at = now;
        }
    }
}

/// `header.claims.signature`, base64url without padding, as Entra's access tokens are;
/// the signature is 48 random bytes (nothing verifies it: the store does).
fn jwt_shaped(
    client_id: &str,
    tenant: &str,
    lifetime: Duration,
    audience: Audience,
    roles: &[String],
) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = chrono::Utc::now().timestamp();
    let aud = match audience {
        Audience::Exchange => "https://outlook.office365.com",
        Audience::Graph => "https://graph.microsoft.com",
    };
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": "mailpipe-sim"});
    let claims = serde_json::json!({
        "aud": aud,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
        "appid": client_id,
        "tid": tenant,
        "roles": roles,
    });
    let mut signature = [0u8; 48];
    rand::rng().fill_bytes(&mut signature);
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(&signature)
    )
}
