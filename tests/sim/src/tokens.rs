//! OAuth2 access tokens issued by the simulated Entra ID endpoint: opaque random strings
//! remembered with their app, tenant and expiry.

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
    ) -> String {
        let mut bytes = [0u8; 48];
        rand::rng().fill_bytes(&mut bytes);
        // Real tokens are JWTs starting with "eyJ"; clients must treat them as opaque, and a
        // different shape catches clients that try to parse them.
        let token = format!(
            "simtok.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
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
