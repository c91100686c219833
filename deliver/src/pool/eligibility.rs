//! Which mailboxes may send a message, as a cached eligibility class of the scheduler.
//!
//! Eligibility depends only on the message's group and, under the send-as policy, its From
//! address, so messages that share both share a class: computing the member set costs a scan
//! of the pool, done once per distinct key instead of once per message.

use std::collections::HashMap;

use mailpipe_common::contract::RenderedMeta;

use crate::settings::FromPolicy;
use crate::throttle::ClassId;

/// What eligibility depends on: the message's group, and its From address (lowercased) when
/// the policy makes From matter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EligibilityKey {
    group: Option<String>,
    from: Option<String>,
}

impl EligibilityKey {
    /// The key of `meta` under `policy`.
    pub fn of(meta: &RenderedMeta, policy: FromPolicy) -> EligibilityKey {
        EligibilityKey {
            group: meta.group.clone(),
            from: match policy {
                FromPolicy::Mailbox => None,
                FromPolicy::SendAs => Some(meta.from.address.as_str().to_ascii_lowercase()),
            },
        }
    }
}

/// Registered classes by key. Bounded, because keys come from messages (any From address):
/// when full it is cleared and refilled on demand. The scheduler itself shares one class per
/// distinct member set, so re-registering after a clear adds nothing there.
#[derive(Debug)]
pub struct ClassCache {
    classes: HashMap<EligibilityKey, ClassId>,
    capacity: usize,
}

impl ClassCache {
    /// A cache of at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> ClassCache {
        ClassCache {
            classes: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The class of `key`, registered with `register` when not cached.
    pub fn get_or_register(
        &mut self,
        key: EligibilityKey,
        register: impl FnOnce() -> ClassId,
    ) -> ClassId {
        if let Some(&class) = self.classes.get(&key) {
            return class;
        }
        if self.classes.len() >= self.capacity {
            self.classes.clear();
        }
        let class = register();
        self.classes.insert(key, class);
        class
    }

    /// Keys cached.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throttle::PoolSchedule;

    fn key(group: &str) -> EligibilityKey {
        EligibilityKey {
            group: Some(group.to_owned()),
            from: None,
        }
    }

    #[test]
    fn registers_once_per_key_and_clears_when_full() {
        let mut pool = PoolSchedule::new();
        let mut cache = ClassCache::new(2);
        let mut registered = 0;
        let mut get = |cache: &mut ClassCache, k: &str, members: Vec<usize>| {
            cache.get_or_register(key(k), || {
                registered += 1;
                pool.class(members)
            })
        };
        let a = get(&mut cache, "a", vec![]);
        assert_eq!(get(&mut cache, "a", vec![]), a);
        get(&mut cache, "b", vec![]);
        assert_eq!(cache.len(), 2);
        get(&mut cache, "c", vec![]);
        assert_eq!(cache.len(), 1);
        get(&mut cache, "a", vec![]);
        assert_eq!(registered, 4);
    }
}
