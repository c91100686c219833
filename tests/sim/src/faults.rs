//! Fault injection: which faults apply to a mailbox, and seeded per-mailbox random draws so
//! a run is reproducible for the same seed and the same order of messages per mailbox.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::config::FaultsConfig;
use crate::records::lock;

/// What happens to a message at the end of DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataEndFault {
    /// Close the connection without a reply.
    Drop,
    /// `421 4.3.2 Service not available`, then close.
    Reply421,
    /// `451 4.7.0 Temporary server error`.
    Reply451,
    /// No reply at all; the connection stays open.
    Silent,
}

#[derive(Debug)]
pub(crate) struct Faults {
    seed: u64,
    global: RwLock<FaultsConfig>,
    per_mailbox: RwLock<HashMap<String, FaultsConfig>>,
    rngs: Mutex<HashMap<String, StdRng>>,
}

impl Faults {
    pub fn new(
        seed: u64,
        global: FaultsConfig,
        per_mailbox: HashMap<String, FaultsConfig>,
    ) -> Self {
        Self {
            seed,
            global: RwLock::new(global),
            per_mailbox: RwLock::new(per_mailbox),
            rngs: Mutex::new(HashMap::new()),
        }
    }

    fn with<R>(&self, mailbox: Option<&str>, f: impl FnOnce(&FaultsConfig) -> R) -> R {
        if let Some(mb) = mailbox {
            let per = self.per_mailbox.read().unwrap_or_else(|p| p.into_inner());
            if let Some(cfg) = per.get(mb) {
                return f(cfg);
            }
        }
        f(&self.global.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn accepted_reply_delay_ms(&self, mailbox: &str) -> u64 {
        self.with(Some(mailbox), |f| f.accepted_reply_delay_ms)
    }

    pub fn slow_reply_ms(&self, mailbox: Option<&str>) -> u64 {
        self.with(mailbox, |f| f.slow_reply_ms)
    }

    pub fn refuses_recipient(&self, mailbox: Option<&str>, rcpt: &str) -> bool {
        self.with(mailbox, |f| {
            f.refuse_recipients
                .iter()
                .any(|r| r.eq_ignore_ascii_case(rcpt))
        })
    }

    /// One draw per message from the mailbox's own seeded stream.
    pub fn data_end(&self, mailbox: &str) -> Option<DataEndFault> {
        let (drop, r421, r451, silent) = self.with(Some(mailbox), |f| {
            (
                f.drop_after_data_rate,
                f.reply_421_rate,
                f.reply_451_rate,
                f.silent_after_data_rate,
            )
        });
        if drop <= 0.0 && r421 <= 0.0 && r451 <= 0.0 && silent <= 0.0 {
            return None;
        }
        let u: f64 = {
            let mut rngs = lock(&self.rngs);
            let rng = rngs
                .entry(mailbox.to_owned())
                .or_insert_with(|| StdRng::seed_from_u64(self.seed ^ fnv1a(mailbox.as_bytes())));
            rng.random()
        };
        if u < drop {
            Some(DataEndFault::Drop)
        } else if u < drop + r421 {
            Some(DataEndFault::Reply421)
        } else if u < drop + r421 + r451 {
            Some(DataEndFault::Reply451)
        } else if u < drop + r421 + r451 + silent {
            Some(DataEndFault::Silent)
        } else {
            None
        }
    }

    pub fn global(&self) -> FaultsConfig {
        self.global
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_global(&self, faults: FaultsConfig) {
        *self.global.write().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// `None` makes the mailbox follow the global faults again.
    pub fn set_mailbox(&self, mailbox: &str, faults: Option<FaultsConfig>) {
        let mut per = self.per_mailbox.write().unwrap_or_else(|p| p.into_inner());
        match faults {
            Some(f) => per.insert(mailbox.to_owned(), f),
            None => per.remove(mailbox),
        };
    }

    /// Restarts every random stream from the seed.
    pub fn reseed(&self) {
        lock(&self.rngs).clear();
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: f64) -> FaultsConfig {
        FaultsConfig {
            reply_451_rate: rate,
            ..FaultsConfig::default()
        }
    }

    #[test]
    fn same_seed_same_faults() {
        let draw = || {
            let f = Faults::new(7, cfg(0.5), HashMap::new());
            (0..64).map(|_| f.data_end("a@x")).collect::<Vec<_>>()
        };
        let a = draw();
        assert_eq!(a, draw());
        assert!(a.contains(&Some(DataEndFault::Reply451)));
        assert!(a.contains(&None));
    }

    #[test]
    fn mailbox_override_replaces_global() {
        let mut per = HashMap::new();
        per.insert("a@x".to_owned(), FaultsConfig::default());
        let f = Faults::new(7, cfg(1.0), per);
        assert_eq!(f.data_end("a@x"), None);
        assert_eq!(f.data_end("b@x"), Some(DataEndFault::Reply451));
    }
}
