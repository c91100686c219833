//! Mailbox leases: which deliver process may send through a mailbox, until when. Every
//! process renews a membership row and the leases it holds; a lease not renewed lapses on
//! the database's clock and passes to another process with a higher fencing token. A
//! process whose member lock is gone (it crashed: [`super::MemberLock`]) loses its leases
//! at once. A
//! write-ahead send (`Store::open_send`) is only written under the current owner and
//! token, so a process that lost its lease cannot start a send, whatever its clock says.

use std::time::Duration;

use uuid::Uuid;

use super::{Store, StoreError};

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Store {
    /// Says this process is alive for `ttl` more, and while it holds the advisory lock
    /// `lock_key` ([`super::MemberLock`]; `None`: judged by the time alone).
    pub async fn heartbeat(
        &self,
        me: Uuid,
        host: &str,
        ttl: Duration,
        lock_key: Option<i64>,
    ) -> Result<(), StoreError> {
        let r = sqlx::query(
            "INSERT INTO deliver_members (id, host, expires_at, lock_key)
             VALUES ($1, $2, now() + make_interval(secs => $3), $4)
             ON CONFLICT (id) DO UPDATE
                SET expires_at = EXCLUDED.expires_at, lock_key = EXCLUDED.lock_key",
        )
        .bind(me)
        .bind(host)
        .bind(secs(ttl))
        .bind(lock_key)
        .execute(&self.pool)
        .await;
        self.observe("renewing this process's membership", r)?;
        Ok(())
    }

    /// Processes alive now, in a stable order (every process computes the same shares).
    /// Rows of processes gone for an hour are removed on the way.
    pub async fn live_members(&self) -> Result<Vec<Uuid>, StoreError> {
        let r =
            sqlx::query("DELETE FROM deliver_members WHERE expires_at < now() - interval '1 hour'")
                .execute(&self.pool)
                .await;
        self.observe("forgetting dead processes", r)?;
        self.live_member_ids().await
    }

    /// Processes alive now (read only): membership not expired and, for a member that
    /// holds a lock, its lock's connection still open. A crashed process drops out at once.
    pub async fn live_member_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        let r = sqlx::query_scalar::<_, Uuid>(
            "SELECT id FROM deliver_members
             WHERE expires_at > now() AND mailpipe_member_alive(lock_key) ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await;
        self.observe("listing live processes", r)
    }

    /// What a process watches between its lease rounds, in one read: the live processes
    /// and how many leases are free (given back or lapsed). When either changes (a process
    /// crashed, left or joined; another gave mailboxes back), a round is due at once.
    pub async fn lease_landscape(&self) -> Result<(Vec<Uuid>, i64), StoreError> {
        let r = sqlx::query_as::<_, (Vec<Uuid>, i64)>(
            "SELECT ARRAY(SELECT id FROM deliver_members
                          WHERE expires_at > now() AND mailpipe_member_alive(lock_key)
                          ORDER BY id),
                    (SELECT count(*) FROM mailbox_leases
                     WHERE owner IS NULL OR expires_at <= now())",
        )
        .fetch_one(&self.pool)
        .await;
        self.observe("reading the live processes and free leases", r)
    }

    /// Renews the leases `me` holds among `mailboxes` for `ttl`; returns those still held,
    /// with their tokens. A lease missing from the answer is lost.
    pub async fn renew_leases(
        &self,
        me: Uuid,
        mailboxes: &[String],
        ttl: Duration,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let r = sqlx::query_as::<_, (String, i64)>(
            "UPDATE mailbox_leases SET expires_at = now() + make_interval(secs => $3)
             WHERE mailbox = ANY($2) AND owner = $1 AND expires_at > now()
             RETURNING mailbox, token",
        )
        .bind(me)
        .bind(mailboxes)
        .bind(secs(ttl))
        .fetch_all(&self.pool)
        .await;
        self.observe("renewing mailbox leases", r)
    }

    /// Takes `mailbox` for `ttl` if no one else holds it (or their lease lapsed, or they
    /// are known dead: they held a member lock and it is gone); the new fencing token, or `None` when another
    /// live process holds it. Taking a lease again bumps the token too: call it with no
    /// send of this process in flight on the mailbox. A dead owner's sends in flight are
    /// fenced by the token (its write-ahead sends are refused from now on) and counted
    /// open by the taker (`settle_orphans`).
    pub async fn acquire_lease(
        &self,
        me: Uuid,
        mailbox: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let r = sqlx::query_scalar::<_, i64>(
            "INSERT INTO mailbox_leases (mailbox, owner, token, expires_at, acquired_at)
             VALUES ($2, $1, 1, now() + make_interval(secs => $3), now())
             ON CONFLICT (mailbox) DO UPDATE
                SET owner = $1, token = mailbox_leases.token + 1,
                    expires_at = EXCLUDED.expires_at, acquired_at = now()
                WHERE mailbox_leases.owner IS NULL OR mailbox_leases.expires_at <= now()
                   OR mailbox_leases.owner = $1
                   OR EXISTS (SELECT 1 FROM deliver_members m
                              WHERE m.id = mailbox_leases.owner AND m.lock_key IS NOT NULL
                                AND NOT mailpipe_member_alive(m.lock_key))
             RETURNING token",
        )
        .bind(me)
        .bind(mailbox)
        .bind(secs(ttl))
        .fetch_optional(&self.pool)
        .await;
        self.observe("acquiring a mailbox lease", r)
    }

    /// Gives leases back at once (the process stopped sending through them), so another
    /// process need not wait for them to lapse.
    pub async fn release_leases(&self, me: Uuid, mailboxes: &[String]) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE mailbox_leases SET owner = NULL, expires_at = '-infinity'
             WHERE owner = $1 AND mailbox = ANY($2)",
        )
        .bind(me)
        .bind(mailboxes)
        .execute(&self.pool)
        .await;
        Ok(self.observe("releasing mailbox leases", r)?.rows_affected())
    }

    /// This process stops: its membership ends now.
    pub async fn leave(&self, me: Uuid) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM deliver_members WHERE id = $1")
            .bind(me)
            .execute(&self.pool)
            .await;
        self.observe("leaving the deliver processes", r)?;
        Ok(())
    }

    /// Who holds which mailbox now (for `/readyz`-style reports and tests).
    pub async fn lease_owners(&self) -> Result<Vec<(String, Option<Uuid>, i64)>, StoreError> {
        let r = sqlx::query_as::<_, (String, Option<Uuid>, i64)>(
            "SELECT mailbox, CASE WHEN expires_at > now() THEN owner END, token
             FROM mailbox_leases ORDER BY mailbox",
        )
        .fetch_all(&self.pool)
        .await;
        self.observe("reading mailbox leases", r)
    }
}
