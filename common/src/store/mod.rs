//! The system of record: PostgreSQL holds every job, its events (the audit trail) and
//! batches, for as long as the retention says. RabbitMQ moves the work; what happened to
//! a job is asked here. Each stage records its own change before it acks its input, in
//! the order the stages already follow (docs/data.md).
//!
//! A store is lazy: `Store::new` does no I/O, so a process binds its health endpoints
//! first and `/readyz` says when the database is not reachable or its schema not current
//! (`health.rs`: a probe in the background keeps that answer a second or two old).
//! Writes that must not be lost (`record_event`) wait for the database to come back,
//! until shutdown; reads and ingest's claims fail at once, so the API can answer 503.

mod batch_owner;
mod batches;
mod bounces;
mod claims;
mod events;
mod health;
mod inbox_set_aside;
mod leases;
mod mailbox_holds;
mod member_lock;
mod pool_view;
mod prune;
mod report_binding;
mod sends;
mod sent_record;
mod settings;
mod state;
mod suppressions;
mod webhook_drop;
mod webhooks;

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio_util::sync::CancellationToken;

pub use batch_owner::Opener;
pub use batches::{BatchControl, SendCheck};
pub use bounces::{BounceError, BounceRecord};
pub use claims::{ClaimHeld, ClaimInput, ClaimOutcome};
pub use health::{PROBE_EVERY, PROBE_TIMEOUT};
pub use inbox_set_aside::{MAX_INBOX_KEY, SetAsideError};
pub use mailbox_holds::MailboxHold;
pub use member_lock::MemberLock;
pub use pool_view::{MailboxView, TenantView};
pub use prune::PruneReport;
pub use sends::{
    AcceptedSend, CountedSend, Decision, Resolution, SendOutcome, SendRules, SendStart,
    UncertainSend, UnsettledSend,
};
pub use settings::DatabaseSettings;
pub use state::{JobState, UnknownState};
pub use suppressions::{
    MAX_REASON, MAX_SUPPRESSION_PAGE, NewSuppression, Suppression, SuppressionFilter,
};
pub use webhook_drop::DropFilter;
pub use webhooks::{
    AfterAttempt, AttemptOutcome, DeliveryFilter, DueDelivery, OutboxEvent, Route, WebhookDelivery,
};

use crate::config::ConfigError;

/// The schema, embedded in every binary: `mailpipe-ingest migrate` and start-up apply it.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Longest wait between two tries of a write that waits for the database.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unreachable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("{what}: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying the database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the database schema is behind this build (applied {applied:?}, this build needs {needed}): run `mailpipe-ingest migrate`, or set database.migrate_on_start = true"
    )]
    SchemaBehind { applied: Option<i64>, needed: i64 },
    #[error("stopping: the write was not made")]
    Stopped,
}

impl StoreError {
    /// Whether trying again later may succeed (the database is down or restarting).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Whether an error means "the database is not there right now" rather than "this
/// statement is wrong".
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P0x: shutting down / cannot connect now;
            // 53300: too many connections; 40001/40P01: serialization failure / deadlock.
            code.starts_with("08")
                || code.starts_with("57P")
                || matches!(code.as_ref(), "53300" | "40001" | "40P01")
        }),
        _ => false,
    }
}

/// Worth a retry, but not a sign the database is away: a serialization failure or
/// deadlock (40001, 40P01) is the database answering, and no free connection within the
/// acquire timeout is this process's pool being busy.
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40001" | "40P01")),
        _ => false,
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    retention: chrono::Duration,
    migrate_on_start: bool,
    schema: String,
    /// Readiness: the probe's and the last operation's answer, and the schema's state.
    health: health::Health,
    shutdown: CancellationToken,
}

impl Store {
    /// A pool that connects on first use. Fails only on configuration (URL, secret).
    pub fn new(
        settings: &DatabaseSettings,
        shutdown: CancellationToken,
    ) -> Result<Self, ConfigError> {
        let problems = settings.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let options = settings.connect_options()?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.connect_timeout())
            // No ping before every statement: a statement on a dead connection fails and
            // is classified (and retried by `durably`) like the ping's failure would be.
            .test_before_acquire(false)
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            retention: settings.retention(),
            migrate_on_start: settings.migrate_on_start,
            schema: settings.schema.clone(),
            health: health::Health::default(),
            shutdown,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How long jobs are kept (and ids stay duplicates).
    pub fn retention(&self) -> chrono::Duration {
        self.retention
    }

    /// `/readyz`: `Err` says why the database cannot be used right now (unreachable, or
    /// its schema not checked or not current), as of the last probe or operation. Never
    /// waits on the database.
    pub fn readiness(&self) -> Result<(), String> {
        self.health.readiness()
    }

    /// Whether the database answered the last probe or operation (the schema aside).
    pub fn is_reachable(&self) -> bool {
        self.health.is_reachable()
    }

    /// Keeps [`readiness`](Self::readiness) current: probes the database every
    /// [`PROBE_EVERY`] (bounded by [`PROBE_TIMEOUT`]) on a connection of its own, until
    /// the store's shutdown token fires. Every daemon runs one; needs a Tokio runtime.
    pub fn spawn_probe(&self) -> tokio::task::JoinHandle<()> {
        let options = (*self.pool.connect_options()).clone();
        tokio::spawn(
            self.health
                .clone()
                .keep_probing(options, self.shutdown.clone()),
        )
    }

    /// Classifies a result (unreachable, or a failed statement named by `what`) and
    /// keeps the readiness current. Queries written outside this module report through it.
    pub fn observe<T>(
        &self,
        what: &'static str,
        r: Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        match r {
            Ok(v) => {
                self.health.reachable();
                Ok(v)
            }
            Err(e) if is_transient(&e) => {
                // Only what says the database is away marks it so (the probe says when it
                // is back, and notices a silent one on its own).
                if !is_busy(&e) {
                    self.health.unreachable(e.to_string());
                }
                Err(StoreError::Unavailable(e))
            }
            Err(source) => Err(StoreError::Query { what, source }),
        }
    }

    /// Runs `op` until it succeeds, fails for a reason other than the database being
    /// away, or shutdown: for writes a stage must make before it acks (nothing is lost,
    /// and the stage takes nothing new meanwhile).
    async fn durably<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.observe(what, op().await) {
                Err(StoreError::Unavailable(e)) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "{what}: the database is unreachable; waiting for it");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(StoreError::Stopped),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                other => return other,
            }
        }
    }

    /// Makes the schema current (`migrate_on_start`) or checks that it is, waiting up to
    /// `give_up_after` (forever: `None`) for the database to be reachable.
    pub async fn prepare(&self, give_up_after: Option<Duration>) -> Result<(), StoreError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(250);
        loop {
            let result = if self.migrate_on_start {
                self.migrate().await
            } else {
                self.check_schema().await
            };
            match result {
                Err(StoreError::Unavailable(e))
                    if give_up_after.is_none_or(|limit| started.elapsed() < limit) =>
                {
                    tracing::warn!(error = %e, "the database is unreachable; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(StoreError::Stopped),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                other => return other,
            }
        }
    }

    /// Creates the schema when missing and applies every migration not yet applied. Safe
    /// to run from several processes at once (the migrator takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        // Created only when missing: CREATE SCHEMA IF NOT EXISTS would need the CREATE
        // privilege on the database even when the schema is there.
        let r = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
        )
        .bind(&self.schema)
        .fetch_one(&self.pool)
        .await;
        if !self.observe("looking for the schema", r)? {
            // The name is checked (lower-case letters, digits, '_') by DatabaseSettings.
            let create = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema);
            let r = sqlx::query(sqlx::AssertSqlSafe(create))
                .execute(&self.pool)
                .await;
            match r {
                // Another process created it between the look and the create (IF NOT
                // EXISTS is not atomic in PostgreSQL: the loser gets 23505 or 42P06).
                Err(sqlx::Error::Database(db))
                    if matches!(db.code().as_deref(), Some("23505" | "42P06")) => {}
                r => {
                    self.observe("creating the schema", r)?;
                }
            }
        }
        match MIGRATOR.run(&self.pool).await {
            Ok(()) => {
                self.health.schema_at(Some(health::needed_version()));
                Ok(())
            }
            Err(sqlx::migrate::MigrateError::Execute(e)) => {
                self.observe("migrating", Err(e)).map(|_: ()| ())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses a schema older than this build's migrations.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let needed = health::needed_version();
        let applied = health::applied_version(&self.pool).await;
        let applied = self.observe("checking the schema", applied)?;
        self.health.schema_at(applied);
        if applied.unwrap_or(0) < needed {
            return Err(StoreError::SchemaBehind { applied, needed });
        }
        Ok(())
    }

    /// Closes the pool (waits for connections in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
