//! The keys that sign one endpoint's calls: the current one, and during a rotation the
//! previous one until the end of the overlap. Standard Webhooks lets one
//! `webhook-signature` header carry several space-separated `v1,<sig>` entries; a receiver
//! accepts the call when any of them verifies with a key it knows. So during the overlap a
//! receiver that still has only the old key and one that already has the new key both
//! verify every call, pending retries included (each try is signed when it is made).

use chrono::{DateTime, Utc};

use super::signature::SigningKey;

#[derive(Debug, Clone)]
pub struct Keyring {
    current: SigningKey,
    /// The key being rotated out, and when it stops signing.
    previous: Option<(SigningKey, DateTime<Utc>)>,
}

impl Keyring {
    pub fn new(current: SigningKey, previous: Option<(SigningKey, DateTime<Utc>)>) -> Self {
        Self { current, previous }
    }

    /// The `webhook-signature` value for one try made at `now`: the current key's
    /// signature, then the previous key's while the overlap lasts.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8], now: DateTime<Utc>) -> String {
        let mut value = self.current.sign(id, timestamp, body);
        if let Some((key, until)) = &self.previous
            && now < *until
        {
            value.push(' ');
            value.push_str(&key.sign(id, timestamp, body));
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const NEW: &str = "whsec_dGVzdC1jYWxsYmFjay1zZWNyZXQtMzItYnl0ZXMhIQ==";

    #[test]
    fn both_keys_sign_during_the_overlap_and_only_the_new_one_after() {
        let (old, new) = (
            SigningKey::parse(OLD).unwrap(),
            SigningKey::parse(NEW).unwrap(),
        );
        let until = Utc::now();
        let ring = Keyring::new(new.clone(), Some((old.clone(), until)));
        let body = b"{}";
        let during = ring.sign("msg_1", 1, body, until - chrono::Duration::seconds(1));
        assert_eq!(
            during,
            format!(
                "{} {}",
                new.sign("msg_1", 1, body),
                old.sign("msg_1", 1, body)
            )
        );
        let after = ring.sign("msg_1", 1, body, until);
        assert_eq!(after, new.sign("msg_1", 1, body));
    }
}
