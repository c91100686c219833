//! Fenced ownership of the pool's mailboxes across deliver processes (docs/deliver.md,
//! "Several processes, one pool").
//!
//! Every `lease_ttl / 3` a process renews its membership and its mailbox leases in
//! PostgreSQL, computes the fair share of every live process ([`crate::ownership::shares`]), gives
//! back the mailboxes that are no longer its own (once its sends through them ended and
//! its idle sessions are closed) and takes the ones that are, if their lease is free or
//! lapsed. A mailbox taken is rebuilt from the write-ahead record (open sends of a dead
//! owner included, counted at their deadline) before its first send. A process that
//! cannot renew stops at its local deadline, which falls before the database lets the
//! lease pass on; and the database refuses its write-ahead sends from then on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mailpipe_common::store::{MemberLock, Store, StoreError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod prefetch;
pub mod replay;
pub mod shares;

use crate::metrics;
use crate::pool::{Fence, MailboxPool};
use crate::throttle::Millis;
use prefetch::PrefetchShare;
use replay::ReplayProgress;

/// How often a process checks whether another one crashed, left or joined, or gave
/// mailboxes back.
const LANDSCAPE_CHECKED_EVERY: Duration = Duration::from_millis(500);

/// Rows committed a little after a later-started one are still read: the tenant import
/// reads this far back past the newest send it saw (and skips the ones it has).
const IMPORT_OVERLAP: chrono::Duration = chrono::Duration::seconds(30);

#[derive(Debug)]
pub struct MailboxOwnership {
    me: Uuid,
    host: String,
    store: Store,
    pool: Arc<MailboxPool>,
    ttl: Duration,
    /// The longest window: older sends do not matter.
    horizon: Duration,
    /// Mailboxes being given back: no new send; released once nothing is in flight.
    draining: HashSet<usize>,
    tenants: TenantImport,
    /// This process's life line: while it is held, no other process takes its leases
    /// before they lapse; once it is gone (a crash), they take them at once.
    lock: Option<MemberLock>,
    lock_key: i64,
    /// The live processes and the free leases as the last round left them: a change
    /// (a process crashed, left or joined; another gave mailboxes back) starts the next
    /// round at once.
    landscape: Option<(Vec<Uuid>, i64)>,
    /// The consumers' prefetch, sized after every round to the mailboxes held.
    prefetch: Option<PrefetchShare>,
}

/// Other processes' sends counted in this process's tenant windows.
#[derive(Debug)]
struct TenantImport {
    newest: Option<DateTime<Utc>>,
    seen: HashMap<Uuid, DateTime<Utc>>,
}

/// What one round found, for the start-up log and readiness.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub members: usize,
    pub held: usize,
    pub sends_restored: usize,
}

impl MailboxOwnership {
    pub fn new(store: Store, pool: Arc<MailboxPool>, ttl: Duration, horizon: Duration) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".into());
        Self {
            me: Uuid::new_v4(),
            host,
            store,
            pool,
            ttl,
            horizon,
            draining: HashSet::new(),
            tenants: TenantImport {
                newest: None,
                seen: HashMap::new(),
            },
            lock: None,
            lock_key: MemberLock::new_key(),
            landscape: None,
            prefetch: None,
        }
    }

    /// After every round, `prefetch` follows the mailboxes this process holds.
    pub fn sizing(mut self, prefetch: PrefetchShare) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// Takes the member lock if it is not held (at start, or after its connection
    /// dropped); the key to record, or `None` while it cannot be taken (the process is
    /// then judged by its membership's time alone, as before locks).
    async fn member_lock(&mut self) -> Option<i64> {
        if let Some(lock) = self.lock.as_mut()
            && lock.holds().await
        {
            return Some(lock.key());
        }
        if self.lock.take().is_some() {
            tracing::warn!("the member lock's connection dropped; taking the lock again");
        }
        match self.store.hold_member_lock(self.lock_key).await {
            Ok(lock) => {
                self.lock = Some(lock);
                Some(self.lock_key)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the member lock; other processes take this one's mailboxes only when its leases lapse");
                None
            }
        }
    }

    /// Waits until the live processes or the free leases differ from what the last round
    /// left (checked every [`LANDSCAPE_CHECKED_EVERY`]): a crashed process's mailboxes are
    /// taken, and mailboxes given back are picked up, within about that, not a round later.
    async fn landscape_changed(&self) {
        loop {
            tokio::time::sleep(LANDSCAPE_CHECKED_EVERY).await;
            // A mailbox being given back whose last send ended: give it back now.
            if self
                .draining
                .iter()
                .any(|&idx| self.pool.in_flight(idx) == 0)
            {
                return;
            }
            match self.store.lease_landscape().await {
                Ok(now) if Some(&now) != self.landscape.as_ref() => return,
                _ => {}
            }
        }
    }

    /// This process's id among the deliver processes (the `owner` of its leases and sends).
    pub fn id(&self) -> Uuid {
        self.me
    }

    /// How long a renewed lease may be used here: its database end, less a margin for
    /// the time the renewal took to reach the database.
    fn valid_until(&self, asked_at: Instant) -> Instant {
        asked_at + self.ttl - self.ttl / 6
    }

    /// One round: membership, renewals, releases, takes, tenant windows.
    pub async fn round(&mut self) -> Result<Round, StoreError> {
        let asked_at = Instant::now();
        let until = self.valid_until(asked_at);
        let lock_key = self.member_lock().await;
        self.store
            .heartbeat(self.me, &self.host, self.ttl, lock_key)
            .await?;
        let members = self.store.live_members().await?;
        let keys: Vec<String> = (0..self.pool.mailboxes().len())
            .map(|i| self.pool.mailbox_key(i))
            .collect();
        let owners = shares::assign(&keys, &members);
        let mine = |idx: usize| owners[idx] == Some(self.me);
        let mut round = Round {
            members: members.len(),
            ..Round::default()
        };

        // Renew what is held (sending or draining).
        let held: HashSet<usize> = self
            .pool
            .held()
            .into_iter()
            .chain(self.draining.iter().copied())
            .collect();
        let held_keys: Vec<String> = held.iter().map(|&i| keys[i].clone()).collect();
        let renewed: HashMap<String, i64> = self
            .store
            .renew_leases(self.me, &held_keys, self.ttl)
            .await?
            .into_iter()
            .collect();
        for &idx in &held {
            match renewed.get(&keys[idx]) {
                Some(&token) if mine(idx) && !self.draining.contains(&idx) => {
                    self.pool.grant(idx, Fence { token, until });
                }
                Some(_) if !self.draining.contains(&idx) => {
                    // Another process's share now: no new sends; given back once idle.
                    self.pool.revoke(idx);
                    self.draining.insert(idx);
                }
                Some(_) => {}
                None => {
                    self.pool.revoke(idx);
                    self.draining.remove(&idx);
                    tracing::warn!(mailbox = %keys[idx], "mailbox lease lost: no more sends through it from this process");
                }
            }
        }

        // Give back drained mailboxes.
        let mut idle = Vec::new();
        for &idx in &self.draining {
            if self.pool.in_flight(idx) == 0 {
                idle.push(idx);
            }
        }
        for &idx in &idle {
            self.pool.close_idle_of(idx).await;
        }
        if !idle.is_empty() {
            let released: Vec<String> = idle.iter().map(|&i| keys[i].clone()).collect();
            self.store.release_leases(self.me, &released).await?;
            for idx in idle {
                self.draining.remove(&idx);
            }
            tracing::info!(mailboxes = ?released, "mailbox leases given back to their new owners");
        }

        // Take this process's share.
        for (idx, key) in keys.iter().enumerate() {
            if !mine(idx)
                || self.pool.fence(idx).is_some()
                || self.draining.contains(&idx)
                || self.pool.in_flight(idx) > 0
            {
                continue;
            }
            let Some(token) = self.store.acquire_lease(self.me, key, self.ttl).await? else {
                continue;
            };
            let orphans = self.store.settle_orphans(key, token).await?;
            if !orphans.is_empty() {
                tracing::warn!(mailbox = %key, jobs = ?orphans, "sends left open by the mailbox's previous owner are uncertain");
            }
            let since = Utc::now() - chrono::Duration::from_std(self.horizon).unwrap_or_default();
            let sends = self.store.mailbox_sends(key, since).await?;
            round.sends_restored += sends.len();
            let restored = sends
                .iter()
                .map(|s| (millis(s.at), u64::from(s.recipients)));
            if let Err(e) = self.pool.rebuild_mailbox(idx, restored) {
                tracing::error!(mailbox = %key, error = %e, "cannot rebuild the mailbox's windows; giving the lease back");
                self.store
                    .release_leases(self.me, std::slice::from_ref(key))
                    .await?;
                continue;
            }
            // The renewal clock started before this round's first query: still safe.
            self.pool.grant(idx, Fence { token, until });
            tracing::info!(mailbox = %key, token, sends_restored = sends.len(), "mailbox lease taken");
        }
        round.sends_restored += self.import_tenant_sends().await?;
        self.landscape = Some(self.store.lease_landscape().await?);
        let held = self.pool.held();
        round.held = held.len();
        if let Some(prefetch) = &self.prefetch {
            prefetch.follow(&held);
        }
        metrics::MAILBOXES_OWNED.set(round.held as i64);
        metrics::DELIVER_MEMBERS.set(round.members as i64);
        Ok(round)
    }

    /// Counts other processes' sends (external recipients) in this process's tenant windows.
    async fn import_tenant_sends(&mut self) -> Result<usize, StoreError> {
        let horizon = chrono::Duration::from_std(self.horizon).unwrap_or_default();
        let now = Utc::now();
        let since = match self.tenants.newest {
            Some(newest) => newest - IMPORT_OVERLAP,
            None => now - horizon,
        };
        let sends = self
            .store
            .tenant_sends(&self.pool.tenant_ids(), self.me, since)
            .await?;
        let mut imported = 0;
        for s in sends {
            if self.tenants.seen.contains_key(&s.id) {
                continue;
            }
            self.tenants.seen.insert(s.id, s.started_at);
            self.tenants.newest = Some(
                self.tenants
                    .newest
                    .map_or(s.started_at, |n| n.max(s.started_at)),
            );
            if let Some(tenant) = &s.tenant
                && self
                    .pool
                    .restore_tenant(tenant, millis(s.at), u64::from(s.external_recipients))
            {
                imported += 1;
            }
        }
        if let Some(newest) = self.tenants.newest {
            self.tenants
                .seen
                .retain(|_, started| *started >= newest - IMPORT_OVERLAP * 2);
        } else {
            self.tenants.newest = Some(since);
        }
        Ok(imported)
    }

    /// Rounds every third of the lease until `stop` (the first one ran at start-up);
    /// then gives every lease back. `progress` is done after the first round that reached
    /// the database.
    pub async fn run(mut self, progress: Arc<ReplayProgress>, stop: CancellationToken) {
        let every = self.ttl / 3;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
                _ = self.landscape_changed() => {}
            }
            match tokio::time::timeout(every, self.round()).await {
                Ok(Ok(round)) => progress.finish(round.sends_restored),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "mailbox leases could not be renewed; sends stop at each lease's end")
                }
                Err(_) => tracing::warn!(
                    "mailbox lease renewal timed out; sends stop at each lease's end"
                ),
            }
        }
        self.leave().await;
    }

    /// Gives every lease back and leaves, so the others take over at once.
    async fn leave(&mut self) {
        let held: Vec<usize> = self
            .pool
            .held()
            .into_iter()
            .chain(self.draining.drain())
            .collect();
        for &idx in &held {
            self.pool.revoke(idx);
            self.pool.close_idle_of(idx).await;
        }
        let keys: Vec<String> = held.iter().map(|&i| self.pool.mailbox_key(i)).collect();
        let released = tokio::time::timeout(Duration::from_secs(5), async {
            self.store.release_leases(self.me, &keys).await?;
            self.store.leave(self.me).await
        })
        .await;
        if let Some(lock) = self.lock.take() {
            tokio::time::timeout(Duration::from_secs(5), lock.release())
                .await
                .ok();
        }
        match released {
            Ok(Ok(())) => tracing::info!(mailboxes = keys.len(), "mailbox leases given back"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not give the mailbox leases back; they lapse on their own")
            }
            Err(_) => {
                tracing::warn!("giving the mailbox leases back timed out; they lapse on their own")
            }
        }
    }
}

fn millis(at: DateTime<Utc>) -> Millis {
    Millis(at.timestamp_millis().max(0) as u64)
}
