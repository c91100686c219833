//! `[deliver.check_pool]`: how `check-pool` checks the pool's sender domains (SPF, DKIM,
//! DMARC): which resolver it asks, how long a lookup may take, and the daily volume that
//! decides whether a missing record is a warning or a failure (Outlook.com's 5,000 a day).

use std::net::SocketAddr;
use std::time::Duration;

use mailpipe_common::config::Problems;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckPoolSettings {
    /// Check every From domain's SPF, DKIM and DMARC.
    pub sender_domains: bool,
    /// The DNS server to ask (`"127.0.0.1:53"`); absent: the system's (`/etc/resolv.conf`).
    pub dns: Option<SocketAddr>,
    /// Time limit of each DNS lookup.
    pub dns_timeout_ms: u64,
    /// Messages a day the pool sends From each domain; absent: what the pool could send
    /// (its mailboxes' limits). Above 5,000 a missing SPF, DKIM or DMARC fails the check.
    pub daily_volume: Option<u64>,
}

impl Default for CheckPoolSettings {
    fn default() -> Self {
        Self {
            sender_domains: true,
            dns: None,
            dns_timeout_ms: 5_000,
            daily_volume: None,
        }
    }
}

impl CheckPoolSettings {
    pub fn dns_timeout(&self) -> Duration {
        Duration::from_millis(self.dns_timeout_ms)
    }

    pub fn check(&self, p: &mut Problems) {
        if !(100..=60_000).contains(&self.dns_timeout_ms) {
            p.push(
                "deliver.check_pool.dns_timeout_ms",
                format!(
                    "{} is out of range: 100 to 60000 (each DNS lookup's time limit)",
                    self.dns_timeout_ms
                ),
            );
        }
    }
}
