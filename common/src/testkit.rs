//! Test support (feature `testkit`): a real RabbitMQ under a unique name prefix and a
//! real PostgreSQL under a unique schema, so test runs never collide, and helpers to look
//! into queues. A test that needs RabbitMQ or PostgreSQL fails loudly when it is
//! missing; it never passes without having run.
//!
//! No test can hang the run: every harness ([`TestBroker`], and what holds one) arms a
//! [`Watchdog`] for the test that made it, and cleanups run [`within`] a limit.

use std::io::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use tokio_util::sync::CancellationToken;

use crate::amqp::{Broker, Publisher};
use crate::config::RabbitSettings;
use crate::pipeline::Pipeline;
use crate::store::{DatabaseSettings, Store};

/// How long one test may run, harness to cleanup: `MAILPIPE_TEST_LIMIT_SECS`, default 900
/// (above every deadline a test sets itself, so its own assertion speaks first).
pub fn test_limit() -> Duration {
    std::env::var("MAILPIPE_TEST_LIMIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(900), Duration::from_secs)
}

/// How long a harness's cleanup (stopping processes, deleting queues and schemas) may take.
pub const CLEANUP_LIMIT: Duration = Duration::from_secs(120);

/// Runs `fut`, failing the test with a message naming `what` if it has not finished
/// within `limit`. For awaits with no bound of their own (a cleanup, a process's stop).
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?} (a hang)"),
    }
}

/// Child processes a test started (ids): a watchdog that fires kills them before it
/// stops the test binary, so nothing outlives the run.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Registers a child process for [`Watchdog`] (stacks of real binaries call it).
pub fn register_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

/// Forgets a child process that has exited.
pub fn forget_child(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

/// A time limit on the test that creates it. If it is still armed after the limit, the
/// test hangs (an await that never ends, a runtime blocked): the watchdog writes which
/// test and what to stderr, kills the registered child processes and exits the test
/// binary with status 124, so the run fails with a message instead of hanging. Disarmed
/// (its thread ended) when dropped, whether the test passed or panicked.
#[derive(Debug)]
pub struct Watchdog {
    disarm: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a limit for the current test (named after its thread, as the test runner
    /// names them); `what` says what was running.
    pub fn arm(limit: Duration, what: impl Into<String>) -> Self {
        let what = what.into();
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        let (disarm, armed) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-watchdog".into())
            .spawn(move || {
                if armed.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                {
                    // Straight to stderr: the test runner captures `eprintln!`.
                    let _ = writeln!(
                        std::io::stderr(),
                        "\n{test}: {what} still running after {limit:?}: the test hangs; stopping this test binary (MAILPIPE_TEST_LIMIT_SECS sets the limit)"
                    );
                    let children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    for pid in children {
                        let _ = std::process::Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .status();
                    }
                    std::process::exit(124);
                }
            })
            .ok();
        Self {
            disarm: Some(disarm),
            thread,
        }
    }

    /// Arms [`test_limit`] for the current test.
    pub fn for_test(what: impl Into<String>) -> Self {
        Self::arm(test_limit(), what)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Disconnecting ends the thread's wait at once.
        drop(self.disarm.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `MAILPIPE_TEST_AMQP_URL` or the development default.
pub fn amqp_url() -> String {
    std::env::var("MAILPIPE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A unique prefix per test: `t-<name>-<random>`.
pub fn unique_prefix(name: &str) -> String {
    format!(
        "t-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Settings for a test: unique prefix, short retry ladder, small delivery limit.
pub fn settings(name: &str) -> RabbitSettings {
    RabbitSettings {
        url: amqp_url(),
        prefix: unique_prefix(name),
        prefetch: 16,
        delivery_limit: 2,
        retry_delays_ms: vec![Duration::from_millis(300), Duration::from_millis(600)],
        confirm_timeout_ms: 10_000,
        reconnect_max_backoff_ms: 1_000,
        ..RabbitSettings::default()
    }
}

/// `MAILPIPE_TEST_DATABASE_URL` or the development default (trust auth on localhost).
pub fn database_url() -> String {
    std::env::var("MAILPIPE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/mailpipe_test".into())
}

/// Database settings for a test: the test database, a schema of its own.
pub fn database_settings(name: &str) -> DatabaseSettings {
    let clean: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .take(40)
        .collect();
    DatabaseSettings {
        url: database_url(),
        schema: format!(
            "t_{clean}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        ),
        max_connections: 4,
        ..DatabaseSettings::default()
    }
}

/// Creates the test database when it does not exist yet (several test binaries may race
/// to create it: "already exists" is success).
pub async fn ensure_test_database() {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let url = database_url();
    let target = sqlx::postgres::PgConnectOptions::from_str(&url)
        .expect("MAILPIPE_TEST_DATABASE_URL is a PostgreSQL URL");
    let name = target.get_database().unwrap_or("mailpipe_test").to_owned();
    let admin = target.clone().database("postgres");
    let mut conn = match tokio::time::timeout(Duration::from_secs(10), admin.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!(
            "PostgreSQL is required for this test ({url}): {e} (start it: pg_ctlcluster 15 main start)"
        ),
        Err(_) => {
            panic!("PostgreSQL is required for this test and did not answer at {url} within 10 s")
        }
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .expect("query pg_database");
    if !exists {
        let create = format!("CREATE DATABASE \"{name}\"");
        match sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
        {
            Ok(_) => {}
            // 42P04 duplicate_database, 23505 unique_violation: another binary won the race.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => panic!("creating the test database {name}: {e}"),
        }
    }
}

/// A migrated store in a fresh schema of the test database.
pub async fn test_store(name: &str, shutdown: CancellationToken) -> (Store, DatabaseSettings) {
    ensure_test_database().await;
    let settings = database_settings(name);
    let store = Store::new(&settings, shutdown).expect("test database settings");
    store
        .prepare(Some(Duration::from_secs(10)))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for this test ({}): {e}",
                settings.url
            )
        });
    (store, settings)
}

#[derive(Debug)]
pub struct TestBroker {
    pub settings: RabbitSettings,
    pub database: DatabaseSettings,
    pub broker: Broker,
    pub pipeline: Pipeline,
    pub shutdown: CancellationToken,
    /// The test's time limit, from the harness's start to its cleanup.
    _watchdog: Watchdog,
}

impl TestBroker {
    /// Connects and declares a fresh topology; panics with a clear message when
    /// RabbitMQ is not reachable within 10 s.
    pub async fn start(name: &str) -> Self {
        Self::with_settings(settings(name)).await
    }

    pub async fn with_settings(settings: RabbitSettings) -> Self {
        let watchdog = Watchdog::for_test(format!("the test using {}", settings.prefix));
        let shutdown = CancellationToken::new();
        let name = format!("test {}", settings.prefix);
        let connect = Broker::connect(&settings, &name, shutdown.clone());
        let broker = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => panic!("RabbitMQ is required for this test ({}): {e}", amqp_url()),
            Err(_) => panic!(
                "RabbitMQ is required for this test and did not answer at {} within 10 s (start it: rabbitmq-server -detached)",
                amqp_url()
            ),
        };
        let publisher = Publisher::new(
            broker.clone(),
            Duration::from_millis(settings.confirm_timeout_ms),
        );
        let (store, database) = test_store(&settings.prefix, shutdown.clone()).await;
        Self {
            pipeline: Pipeline::new(publisher, store),
            settings,
            database,
            broker,
            shutdown,
            _watchdog: watchdog,
        }
    }

    /// Takes one message from `queue` (acking it), waiting up to `wait`.
    pub async fn get(&self, queue: &str, wait: Duration) -> Option<BasicGetMessage> {
        let ch = self.broker.channel().await.expect("channel");
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(msg) = ch
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .expect("basic.get")
            {
                msg.delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                return Some(msg);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Number of ready messages in `queue`.
    pub async fn depth(&self, queue: &str) -> u32 {
        let ch = self.broker.channel().await.expect("channel");
        let q = ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("queue exists");
        q.message_count()
    }

    /// The `[database]` section of a configuration file for this test's schema.
    pub fn database_toml(&self) -> String {
        format!(
            "\n[database]\nurl = {:?}\nschema = {:?}\n",
            self.database.url, self.database.schema
        )
    }

    pub fn store(&self) -> &Store {
        self.pipeline.store()
    }

    /// Deletes the test's exchanges, queues and schema, stops background loops and closes
    /// the connections; fails the test if that takes longer than [`CLEANUP_LIMIT`].
    pub async fn cleanup(self) {
        let what = format!("cleaning up {}", self.settings.prefix);
        within(CLEANUP_LIMIT, &what, self.clean()).await;
    }

    async fn clean(self) {
        drop_schema(self.pipeline.store(), &self.database.schema).await;
        self.shutdown.cancel();
        if let Ok(ch) = self.broker.channel().await {
            let _ = self.broker.topology().delete(&ch).await;
        } else if let Ok(b) =
            Broker::connect(&self.settings, "cleanup", CancellationToken::new()).await
        {
            if let Ok(ch) = b.channel().await {
                let _ = b.topology().delete(&ch).await;
            }
            b.close().await;
        }
        self.broker.close().await;
        self.pipeline.store().close().await;
    }
}

/// Drops a test's schema (best effort: a test that failed leaves it for inspection only
/// if this is never reached).
pub async fn drop_schema(store: &Store, schema: &str) {
    let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(store.pool())
        .await;
}

/// Batch counters that disagree with a recount of the jobs (migration 0011): one line per
/// batch and state whose jobs, recipients left, uncertain or failures differ. Empty when
/// status adds up; tests assert it after the changes they make.
pub async fn counter_mismatches(store: &Store) -> Vec<String> {
    const RECOUNT: &str = r#"
WITH kept AS (
    SELECT batch_id, state, sum(jobs)::int8 AS jobs, sum(recipients)::int8 AS recipients,
           sum(uncertain)::int8 AS uncertain, sum(failures)::int8 AS failures
    FROM batch_counts GROUP BY 1, 2
), counted AS (
    SELECT coalesce(batch_id, '') AS batch_id, state, count(*)::int8 AS jobs,
           coalesce(sum(recipient_count) FILTER (WHERE state NOT IN ('delivered', 'failed', 'cancelled', 'expired', 'bounced', 'suppressed')), 0)::int8 AS recipients,
           count(*) FILTER (WHERE uncertain AND state NOT IN ('delivered', 'failed', 'cancelled', 'expired', 'bounced', 'suppressed'))::int8 AS uncertain,
           count(*) FILTER (WHERE state IN ('failed', 'bounced') OR (state = 'delivered' AND refused <> '[]'::jsonb))::int8 AS failures
    FROM jobs WHERE state <> 'received' GROUP BY 1, 2
)
SELECT format('batch %L state %s: counters %s, recount %s', coalesce(k.batch_id, c.batch_id),
              coalesce(k.state, c.state),
              row(k.jobs, k.recipients, k.uncertain, k.failures),
              row(c.jobs, c.recipients, c.uncertain, c.failures))
FROM kept k FULL JOIN counted c USING (batch_id, state)
WHERE row(coalesce(k.jobs, 0), coalesce(k.recipients, 0), coalesce(k.uncertain, 0), coalesce(k.failures, 0))
      IS DISTINCT FROM row(coalesce(c.jobs, 0), coalesce(c.recipients, 0), coalesce(c.uncertain, 0), coalesce(c.failures, 0))
ORDER BY 1
"#;
    sqlx::query_scalar::<_, String>(RECOUNT)
        .fetch_all(store.pool())
        .await
        .expect("recounting the batches' jobs")
}

/// Fails the test when the batch counters disagree with a recount of the jobs.
pub async fn assert_counters_add_up(store: &Store) {
    let wrong = counter_mismatches(store).await;
    assert!(
        wrong.is_empty(),
        "batch counters disagree with the jobs:\n{}",
        wrong.join("\n")
    );
}

/// A TCP proxy in front of PostgreSQL that a test can cut, as if the database went down:
/// `cut` closes every connection through it and refuses new ones (accepted, then closed
/// at once); `restore` lets them through again. Only the processes pointed at the proxy
/// see the outage, so tests running beside it are not disturbed.
#[derive(Debug)]
pub struct DatabaseOutage {
    pub addr: std::net::SocketAddr,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bumped on every cut: connections opened before it end.
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Connections open through the proxy now.
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl DatabaseOutage {
    /// A proxy to the test database's server.
    pub async fn start() -> Self {
        use std::str::FromStr;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let target = sqlx::postgres::PgConnectOptions::from_str(&database_url())
            .expect("MAILPIPE_TEST_DATABASE_URL is a PostgreSQL URL");
        let upstream = format!("{}:{}", target.get_host(), target.get_port());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let down = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (d, e, o) = (down.clone(), epoch.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let started = e.load(Ordering::SeqCst);
                let (upstream, e, o) = (upstream.clone(), e.clone(), o.clone());
                o.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                        let cut = async {
                            while e.load(Ordering::SeqCst) == started {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        };
                        tokio::select! {
                            _ = copy => {}
                            _ = cut => {}
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            down,
            epoch,
            open,
        }
    }

    /// The test database's URL, through the proxy.
    pub fn url(&self) -> String {
        let url = database_url();
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (userinfo, rest) = rest.split_once('@').unwrap_or(("", rest));
        let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
        let at = if userinfo.is_empty() { "" } else { "@" };
        format!("{scheme}://{userinfo}{at}{}{path}", self.addr)
    }

    /// Cuts the database off; returns once every connection through the proxy is closed.
    pub async fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.down.store(true, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.open.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Marks the sentinel a reader publishes to know where "now" is in the events stream.
const MARKER_HEADER: &str = "mailpipe-marker";

impl TestBroker {
    /// What the events stream (the live feed for subscribers) carried since `since`, up to
    /// the moment of the call: a marker is published and the stream read until it comes
    /// back, so nothing published before the call is missed.
    pub async fn stream_events_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Vec<crate::contract::DeliveryEvent> {
        use futures::StreamExt;
        use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
        use lapin::types::{AMQPValue, FieldTable, ShortString};

        use crate::amqp::{Outgoing, header_str, persistent_properties, set_header};

        let topology = self.broker.topology().clone();
        let marker = uuid::Uuid::new_v4().to_string();
        let mut headers = FieldTable::default();
        set_header(&mut headers, MARKER_HEADER, marker.clone());
        self.pipeline
            .publisher()
            .publish(Outgoing {
                exchange: &topology.events_exchange(),
                routing_key: "",
                body: b"",
                properties: persistent_properties("application/octet-stream", headers),
            })
            .await
            .expect("publish the stream marker");
        let ch = self.broker.channel().await.expect("channel");
        ch.basic_qos(1000, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-stream-offset"),
            AMQPValue::Timestamp(since.timestamp().max(0) as u64),
        );
        let mut consumer = ch
            .basic_consume(
                ShortString::from(topology.events_stream()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .expect("consume the events stream");
        let mut events = Vec::new();
        while let Some(delivery) = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("the marker comes back within 30 s")
        {
            let delivery = delivery.expect("stream delivery");
            delivery.acker.ack(BasicAckOptions::default()).await.ok();
            match header_str(&delivery.properties, MARKER_HEADER) {
                Some(m) if m == marker => break,
                Some(_) => continue,
                None => {}
            }
            // x-stream-offset by timestamp is chunk-granular: filter precisely here.
            if let Ok(e) = crate::contract::DeliveryEvent::from_json(&delivery.data)
                && e.at >= since
            {
                events.push(e);
            }
        }
        ch.close(200, "read".into()).await.ok();
        events
    }
}
