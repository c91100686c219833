//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256(key,
//! "<webhook-id>.<webhook-timestamp>.<body>")>`, the key given as `whsec_<base64>`. A
//! receiver checks it with any Standard Webhooks library, or with a few lines of its own
//! (docs/webhooks.md).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Shortest and longest key the scheme allows (bytes, once decoded).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A signing key. Its bytes never appear in Debug output or logs.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(redacted)")
    }
}

impl SigningKey {
    /// Reads a `whsec_<base64>` secret; the error says what is wrong, never the secret.
    pub fn parse(secret: &str) -> Result<Self, String> {
        let Some(encoded) = secret.strip_prefix("whsec_") else {
            return Err("must be in the Standard Webhooks form whsec_<base64> (e.g. whsec_ followed by `openssl rand -base64 32`)".into());
        };
        let key = STANDARD
            .decode(encoded.trim())
            .map_err(|_| "the part after whsec_ is not valid base64".to_owned())?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(format!(
                "the key is {} bytes once decoded; give {} to {} (openssl rand -base64 32)",
                key.len(),
                KEY_BYTES.start(),
                KEY_BYTES.end()
            ));
        }
        Ok(Self(key))
    }

    /// The `webhook-signature` header's value for one try.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_reference_does() {
        // The reference libraries' test vector (standard-webhooks, libraries/*/tests).
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn refuses_keys_not_in_the_whsec_form_and_never_shows_them() {
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningKey::parse("whsec_***").is_err());
        let short = SigningKey::parse("whsec_c2hvcnQ=").unwrap_err();
        assert!(short.contains("5 bytes"), "{short}");
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(redacted)");
    }
}
