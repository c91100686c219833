//! A deliver process's life line to PostgreSQL: a session-level advisory lock held on a
//! connection of its own. The server drops the lock the moment that connection ends, so
//! the other processes see a crashed member as dead at once (`mailpipe_member_alive`,
//! migration 0016) and take its mailboxes without waiting for its leases to lapse.
//! Nothing is sent on the connection after the lock but a ping now and then.

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use super::{Store, StoreError};

/// The advisory lock of one member, held as long as this value lives.
#[derive(Debug)]
pub struct MemberLock {
    key: i64,
    conn: Option<PgConnection>,
}

impl MemberLock {
    /// A fresh random key (positive, so the server's two 32-bit halves add up to it).
    pub fn new_key() -> i64 {
        (rand::random::<u64>() >> 2) as i64
    }

    /// The key to record with the membership.
    pub fn key(&self) -> i64 {
        self.key
    }

    /// Whether the lock's connection still answers (a dead one means the lock is gone).
    pub async fn holds(&mut self) -> bool {
        match self.conn.as_mut() {
            Some(conn) => {
                let alive = conn.ping().await.is_ok();
                if !alive {
                    self.conn = None;
                }
                alive
            }
            None => false,
        }
    }

    /// Ends the lock now (a process leaving); dropping it ends the lock too, when the
    /// connection closes.
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}

impl Store {
    /// Opens a connection of its own and takes the advisory lock `key` on it.
    pub async fn hold_member_lock(&self, key: i64) -> Result<MemberLock, StoreError> {
        let options = (*self.pool.connect_options()).clone();
        let r = async {
            let mut conn = PgConnection::connect_with(&options).await?;
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(key)
                .execute(&mut conn)
                .await?;
            Ok::<_, sqlx::Error>(conn)
        }
        .await;
        let conn = self.observe("taking this process's member lock", r)?;
        Ok(MemberLock {
            key,
            conn: Some(conn),
        })
    }
}
