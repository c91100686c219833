//! The database's readiness as of a second or two ago: a cheap probe (the applied schema
//! version, on a connection of its own, bounded by [`PROBE_TIMEOUT`]) runs every
//! [`PROBE_EVERY`] in the background and its answer is cached, so `/readyz` never waits
//! on the database, an outage shows within seconds even when no work is flowing, and
//! "migrated" is part of ready. Operations that meet an unreachable database say so too
//! (`Store::observe`), and the next answer of either clears it.
//!
//! The probe has its own connection, not one of the pool's: a pool busy with work must
//! not read as "database down", and a probe must not wait behind that work.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio_util::sync::CancellationToken;

use super::MIGRATOR;

/// How often the probe asks.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long the probe waits for the database (connecting included) before it reports it
/// unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What is known of the schema this process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    /// Not looked at yet (start-up).
    Unchecked,
    /// Older than this build (`applied` is `None`: no migrations at all).
    Behind { applied: Option<i64>, needed: i64 },
    /// At least this build's version.
    Current,
}

#[derive(Debug)]
struct State {
    /// Why the database cannot be used right now; `None` while it answers.
    unreachable: Option<String>,
    schema: Schema,
}

/// The cached readiness, shared by a store's clones.
#[derive(Debug, Clone)]
pub(super) struct Health {
    state: Arc<Mutex<State>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                unreachable: Some("not reached yet".into()),
                schema: Schema::Unchecked,
            })),
        }
    }
}

/// The version this build's migrations end at.
pub(super) fn needed_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err` says why the database cannot be used: unreachable, or its schema not (yet)
    /// current.
    pub(super) fn readiness(&self) -> Result<(), String> {
        let state = self.lock();
        if let Some(why) = &state.unreachable {
            return Err(format!("database unreachable: {why}"));
        }
        match state.schema {
            Schema::Current => Ok(()),
            Schema::Unchecked => Err("database schema not checked yet".into()),
            Schema::Behind { applied, needed } => Err(format!(
                "database schema not migrated (applied {}, this build needs {needed})",
                applied.map_or_else(|| "none".to_owned(), |v| v.to_string())
            )),
        }
    }

    /// Whether the database answered the last operation or probe.
    pub(super) fn is_reachable(&self) -> bool {
        self.lock().unreachable.is_none()
    }

    pub(super) fn reachable(&self) {
        self.lock().unreachable = None;
    }

    pub(super) fn unreachable(&self, why: String) {
        self.lock().unreachable = Some(why);
    }

    /// Records the schema version found (`None`: no migrations applied).
    pub(super) fn schema_at(&self, applied: Option<i64>) {
        let needed = needed_version();
        let mut state = self.lock();
        state.unreachable = None;
        state.schema = if applied.unwrap_or(0) >= needed {
            Schema::Current
        } else {
            Schema::Behind { applied, needed }
        };
    }

    /// Probes every [`PROBE_EVERY`] until `shutdown`, then closes its connection.
    pub(super) async fn keep_probing(self, options: PgConnectOptions, shutdown: CancellationToken) {
        let mut conn: Option<PgConnection> = None;
        loop {
            match tokio::time::timeout(PROBE_TIMEOUT, probe(&options, &mut conn)).await {
                Ok(Ok(applied)) => self.schema_at(applied),
                Ok(Err(e)) => {
                    conn = None;
                    self.unreachable(e.to_string());
                }
                Err(_) => {
                    // Dropping the connection abandons the query it was waiting on.
                    conn = None;
                    self.unreachable(format!("no answer within {PROBE_TIMEOUT:?}"));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(PROBE_EVERY) => {}
            }
        }
        if let Some(conn) = conn {
            tokio::time::timeout(PROBE_TIMEOUT, conn.close()).await.ok();
        }
    }
}

/// One probe: the applied schema version, on `conn` (opened when missing).
async fn probe(
    options: &PgConnectOptions,
    conn: &mut Option<PgConnection>,
) -> Result<Option<i64>, sqlx::Error> {
    let mut c = match conn.take() {
        Some(c) => c,
        None => PgConnection::connect_with(options).await?,
    };
    let applied = applied_version(&mut c).await?;
    *conn = Some(c);
    Ok(applied)
}

/// The highest migration applied (`None`: none, or no migrations table at all).
pub(super) async fn applied_version<'c, E>(executor: E) -> Result<Option<i64>, sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    match sqlx::query_scalar::<_, Option<i64>>(
        "SELECT max(version) FROM _sqlx_migrations WHERE success",
    )
    .fetch_one(executor)
    .await
    {
        Ok(v) => Ok(v),
        // 42P01: no migrations table at all.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => Ok(None),
        Err(e) => Err(e),
    }
}
