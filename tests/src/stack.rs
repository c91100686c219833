//! A whole mailpipe for tests and the demo: the simulator in-process, one configuration
//! file, and `mailpipe-ingest serve`, `mailpipe-render` and `mailpipe-deliver` as real
//! child processes on a real RabbitMQ under a unique prefix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use mailpipe_common::config::RabbitSettings;
use mailpipe_common::store::{DatabaseSettings, Store};
use mailpipe_common::testkit::{
    CLEANUP_LIMIT, TestBroker, Watchdog, amqp_url, database_settings, drop_schema,
    ensure_test_database, forget_child, register_child, unique_prefix, within,
};
use mailpipe_sim::{
    AppConfig, LimitsConfig, MailboxConfig, RunningSim, SimConfig, Simulator, TenantConfig,
};
use serde_json::Value;
use tokio::process::{Child, Command};

/// The three stage binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binary {
    Ingest,
    Render,
    Deliver,
}

impl Binary {
    pub const ALL: [Binary; 3] = [Binary::Ingest, Binary::Render, Binary::Deliver];

    pub fn name(self) -> &'static str {
        match self {
            Binary::Ingest => "mailpipe-ingest",
            Binary::Render => "mailpipe-render",
            Binary::Deliver => "mailpipe-deliver",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Names the RabbitMQ prefix and the run.
    pub name: String,
    /// Where config, logs, attachments and simulator state go (default: a temp dir).
    pub dir: Option<PathBuf>,
    pub tenants: usize,
    pub mailboxes_per_tenant: usize,
    pub messages_per_window: u64,
    pub message_window_ms: u64,
    pub recipients_per_window: u64,
    pub recipient_window_ms: u64,
    /// deliver's `max_connections` per mailbox (the simulator keeps Exchange's 3).
    pub max_connections: u32,
    /// This mailbox (index over all) authenticates with a wrong password.
    pub wrong_password_mailbox: Option<usize>,
    pub record_eml: bool,
    /// Extra simulator TOML (e.g. a `[faults]` table).
    pub sim_extra: String,
    pub retry_delays_ms: Vec<u64>,
    /// `RUST_LOG` for the children.
    pub log_filter: String,
    /// Extra environment for the children (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub env: Vec<(String, String)>,
    /// The database (default: a fresh schema of the test database).
    pub database: Option<DatabaseSettings>,
    /// Extra `[deliver]` settings (TOML lines), e.g. `lease_ttl_ms = 3000`.
    pub deliver_extra: String,
    /// deliver's `smtp_timeout_ms`.
    pub smtp_timeout_ms: u64,
    /// `[rabbitmq] delivery_limit`.
    pub delivery_limit: u32,
    /// Reads the pool's mailboxes through the simulator's Graph, every this many ms
    /// (`[deliver.graph]`); `None`: Graph off.
    pub graph_poll_ms: Option<u64>,
    /// Every mailbox sends through Graph (`transport = "graph"`; `[deliver.graph]` on, read
    /// every `graph_poll_ms` or every second), and the simulator refuses them SMTP AUTH.
    pub graph_transport: bool,
    /// Extra `[deliver.graph]` settings (TOML lines), with `graph_poll_ms` set.
    pub graph_extra: String,
    /// Extra `[ingest]` TOML, written at the end of that section (keys, or subtables such
    /// as `[ingest.webhooks]`).
    pub ingest_extra: String,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            name: "e2e".into(),
            dir: None,
            tenants: 2,
            mailboxes_per_tenant: 2,
            messages_per_window: 30,
            message_window_ms: 2_000,
            recipients_per_window: 10_000,
            recipient_window_ms: 60_000,
            max_connections: 3,
            wrong_password_mailbox: None,
            record_eml: false,
            sim_extra: String::new(),
            retry_delays_ms: vec![500, 1_000, 2_000],
            log_filter: "info".into(),
            env: Vec::new(),
            database: None,
            deliver_extra: String::new(),
            smtp_timeout_ms: 15_000,
            delivery_limit: 5,
            graph_poll_ms: None,
            graph_transport: false,
            graph_extra: String::new(),
            ingest_extra: String::new(),
        }
    }
}

/// A mailbox of the generated pool.
#[derive(Debug, Clone)]
pub struct PoolMailbox {
    pub address: String,
    pub tenant: String,
}

/// A child process; registered with the test's watchdog while it runs.
struct Proc {
    child: Child,
    pid: Option<u32>,
}

impl Proc {
    fn new(child: Child) -> Self {
        let pid = child.id();
        if let Some(pid) = pid {
            register_child(pid);
        }
        Self { child, pid }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            forget_child(pid);
        }
    }
}

pub struct Stack {
    pub options: StackOptions,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub sim: RunningSim,
    pub config_path: PathBuf,
    pub rabbit: RabbitSettings,
    pub database: DatabaseSettings,
    pub token: String,
    pub mailboxes: Vec<PoolMailbox>,
    ports: HashMap<Binary, u16>,
    procs: HashMap<Binary, Proc>,
    /// Extra deliver processes on the same pool, by name.
    replicas: HashMap<String, Proc>,
    http: reqwest::Client,
    /// The test's time limit (a hang fails the run with a message, children killed).
    _watchdog: Watchdog,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("dir", &self.dir)
            .field("prefix", &self.rabbit.prefix)
            .finish()
    }
}

/// Waits until `url` answers 2xx, failing early when `child` exits (`what` and `log` name
/// it in the error).
async fn await_ready(
    http: &reqwest::Client,
    mut child: Option<&mut Child>,
    url: &str,
    what: &str,
    log: &Path,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(c) = child.as_deref_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!(
                "{what} exited during start ({status}); see {}",
                log.display()
            );
        }
        if let Ok(r) = http.get(url).timeout(Duration::from_secs(2)).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what} not ready within {limit:?}; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The directory holding the workspace's built binaries: `MAILPIPE_BIN_DIR`, or the one
/// this executable was built into (`target/debug` for tests and the demo).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MAILPIPE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        if dir.join(Binary::Deliver.name()).is_file() {
            return Ok(dir.to_owned());
        }
    }
    bail!(
        "the mailpipe binaries are not built next to {}; run `cargo build --workspace --bins` first (or set MAILPIPE_BIN_DIR)",
        exe.display()
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The workspace root (for `examples/templates`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

impl Stack {
    /// Starts the simulator and all three binaries, and waits until each is ready.
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        let mut stack = Self::prepare(options).await?;
        for b in Binary::ALL {
            stack.start_binary(b).await?;
        }
        Ok(stack)
    }

    /// Writes the configuration and starts the simulator; binaries are started by the caller.
    pub async fn prepare(options: StackOptions) -> anyhow::Result<Self> {
        let watchdog = Watchdog::for_test(format!("the stack {}", options.name));
        let (dir, temp) = match &options.dir {
            // Absolute, because relative paths in the config it writes resolve against the
            // config file's directory (`--dir .demo` would otherwise mean `.demo/.demo`).
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (std::path::absolute(d)?, None)
            }
            // MAILPIPE_TEST_KEEP_DIR keeps each run's config and logs for a post-mortem.
            None => match std::env::var_os("MAILPIPE_TEST_KEEP_DIR") {
                Some(keep) => {
                    let d = PathBuf::from(keep).join(unique_prefix(&options.name));
                    std::fs::create_dir_all(&d)?;
                    (std::path::absolute(d)?, None)
                }
                None => {
                    let t = tempfile::tempdir()?;
                    (t.path().to_owned(), Some(t))
                }
            },
        };
        for sub in ["logs", "secrets", "attachments", "sim"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        std::fs::write(dir.join("secrets/api-token"), &token)?;
        let mut mailboxes = Vec::new();
        // The simulator's ports are chosen here so deliver's settings can name them.
        let (sim_smtp, sim_http) = (free_port()?, free_port()?);
        let authority = format!("http://127.0.0.1:{sim_http}");
        // The test's own simulator settings (`sim_extra`, TOML) first; the pool is added
        // in code below.
        let mut sim_config = SimConfig::from_toml_str(&format!(
            "smtp_listen = \"127.0.0.1:{sim_smtp}\"\nhttp_listen = \"127.0.0.1:{sim_http}\"\nstate_dir = {:?}\nrecord_eml = {}\nlimits_enabled = true\n{}\n",
            dir.join("sim").display().to_string(),
            options.record_eml,
            options.sim_extra
        ))
        .context("simulator configuration (sim_extra)")?;
        let mut deliver_toml = String::new();
        let graph_poll = match (options.graph_poll_ms, options.graph_transport) {
            (None, true) => Some(1_000),
            (poll, _) => poll,
        };
        if let Some(poll) = graph_poll {
            deliver_toml.push_str(&format!(
                "[deliver.graph]\nenabled = true\nbase_url = \"{authority}\"\nallow_loopback_http = true\npoll_interval_ms = {poll}\n{}\n",
                options.graph_extra
            ));
            if options.graph_transport {
                // A Graph request ends within the step the send's deadline allows.
                deliver_toml.push_str(&format!(
                    "request_timeout_ms = {}\n",
                    options.smtp_timeout_ms
                ));
            }
        }
        let transport = if options.graph_transport {
            "transport = \"graph\"\n"
        } else {
            ""
        };
        for t in 0..options.tenants {
            let tenant = ["contoso", "fabrikam", "northwind", "tailspin"]
                .get(t)
                .map(|s| (*s).to_owned())
                .unwrap_or_else(|| format!("tenant{t}"));
            let secret = uuid::Uuid::new_v4().simple().to_string();
            std::fs::write(dir.join(format!("secrets/{tenant}-client-secret")), &secret)?;
            sim_config = sim_config.with_tenant(
                TenantConfig::new(&tenant, &[&format!("{tenant}.example")]),
                AppConfig::with_secret(&tenant, &format!("{tenant}-app"), &secret),
            );
            deliver_toml.push_str(&format!(
                "[[deliver.tenants]]\nid = \"{tenant}\"\ndomains = [\"{tenant}.example\"]\n[deliver.tenants.oauth]\ntenant_id = \"{tenant}.example\"\nclient_id = \"{tenant}-app\"\nclient_secret = {{ file = {:?} }}\nauthority = \"{authority}\"\nallow_loopback_http = true\n",
                dir.join(format!("secrets/{tenant}-client-secret")).display().to_string(),
            ));
            for m in 0..options.mailboxes_per_tenant {
                let idx = mailboxes.len();
                let address = format!("sender{m}@{tenant}.example");
                let password = "correct-horse";
                sim_config = sim_config.with_mailbox(MailboxConfig {
                    password: Some(password.to_owned()),
                    smtp_auth_enabled: !options.graph_transport,
                    limits: LimitsConfig::windows(
                        options.messages_per_window,
                        options.message_window_ms,
                        options.recipients_per_window,
                        options.recipient_window_ms,
                    ),
                    ..MailboxConfig::new(&address, &tenant)
                });
                let auth = if options.wrong_password_mailbox == Some(idx) {
                    std::fs::write(dir.join(format!("secrets/{address}")), "wrong-password")?;
                    format!(
                        "auth = \"password\"\npassword = {{ file = {:?} }}\n",
                        dir.join(format!("secrets/{address}")).display().to_string()
                    )
                } else {
                    String::new()
                };
                deliver_toml.push_str(&format!(
                    "[[deliver.mailboxes]]\naddress = \"{address}\"\ntenant = \"{tenant}\"\nhost = \"localhost\"\nport = {sim_smtp}\n{transport}{auth}[deliver.mailboxes.limits]\nmessages_per_window = {}\nmessage_window_ms = {}\nrecipients_per_window = {}\nrecipient_window_ms = {}\nmax_connections = {}\n",
                    options.messages_per_window, options.message_window_ms, options.recipients_per_window, options.recipient_window_ms, options.max_connections
                ));
                mailboxes.push(PoolMailbox {
                    address,
                    tenant: tenant.clone(),
                });
            }
        }
        sim_config.validate().context("simulator configuration")?;
        std::fs::write(dir.join("sim.toml"), sim_config.to_toml())?;
        let sim = Simulator::start(sim_config).await?;

        let mut ports = HashMap::new();
        for b in Binary::ALL {
            ports.insert(b, free_port()?);
        }
        let rabbit = RabbitSettings {
            url: amqp_url(),
            prefix: unique_prefix(&options.name),
            retry_delays_ms: options
                .retry_delays_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            delivery_limit: options.delivery_limit,
            ..RabbitSettings::default()
        };
        let database = match &options.database {
            Some(d) => d.clone(),
            None => {
                ensure_test_database().await;
                database_settings(&options.name)
            }
        };
        let root = workspace_root();
        let config = format!(
            r#"# Generated by mailpipe-tests for one run.
[rabbitmq]
url = "{url}"
prefix = "{prefix}"
prefetch = 64
delivery_limit = {delivery_limit}
retry_delays_ms = {delays:?}

[database]
url = "{db_url}"
schema = "{db_schema}"

[telemetry]
log_filter = "{log}"

[ingest]
listen = "127.0.0.1:{ingest}"
api_tokens = [{{ file = {token:?} }}]
templates_dir = {templates:?}
attachments_root = {attachments:?}
{ingest_extra}

[render]
http_listen = "127.0.0.1:{render}"
templates_dir = {templates:?}
attachments_root = {attachments:?}
message_id_domain = "mailpipe.test"

[deliver]
http_listen = "127.0.0.1:{deliver}"
extra_ca_file = {ca:?}
from_policy = "mailbox"
smtp_timeout_ms = {smtp_timeout}
pause_ms = 2000
max_pause_ms = 20000
max_attempts = 6
{deliver_extra}
{deliver_toml}"#,
            deliver_extra = options.deliver_extra,
            ingest_extra = options.ingest_extra,
            delivery_limit = options.delivery_limit,
            smtp_timeout = options.smtp_timeout_ms,
            url = rabbit.url,
            prefix = rabbit.prefix,
            db_url = database.url,
            db_schema = database.schema,
            delays = options.retry_delays_ms,
            log = options.log_filter,
            ingest = ports[&Binary::Ingest],
            render = ports[&Binary::Render],
            deliver = ports[&Binary::Deliver],
            token = dir.join("secrets/api-token").display().to_string(),
            templates = root.join("examples/templates").display().to_string(),
            attachments = dir.join("attachments").display().to_string(),
            ca = sim.ca_pem_path().display().to_string(),
        );
        let config_path = dir.join("mailpipe.toml");
        std::fs::write(&config_path, config)?;
        Ok(Self {
            options,
            dir,
            _temp: temp,
            sim,
            config_path,
            rabbit,
            database,
            token,
            mailboxes,
            ports,
            procs: HashMap::new(),
            replicas: HashMap::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            _watchdog: watchdog,
        })
    }

    pub fn url(&self, b: Binary) -> String {
        format!("http://127.0.0.1:{}", self.ports[&b])
    }

    pub fn attachments_root(&self) -> PathBuf {
        self.dir.join("attachments")
    }

    pub fn log_path(&self, b: Binary) -> PathBuf {
        self.dir.join("logs").join(format!("{}.log", b.name()))
    }

    /// Messages per second the whole pool may send.
    pub fn pool_rate(&self) -> f64 {
        self.mailboxes.len() as f64 * self.options.messages_per_window as f64 * 1000.0
            / self.options.message_window_ms as f64
    }

    /// Spawns a binary (appending to its log) and waits for `/readyz`.
    pub async fn start_binary(&mut self, b: Binary) -> anyhow::Result<()> {
        self.spawn_binary(b)?;
        self.wait_ready(b, Duration::from_secs(90)).await
    }

    /// Spawns a binary (appending to its log) without waiting for it.
    pub fn spawn_binary(&mut self, b: Binary) -> anyhow::Result<()> {
        let path = bin_dir()?.join(b.name());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(b))?;
        let mut cmd = Command::new(&path);
        cmd.arg("--config").arg(&self.config_path);
        if b == Binary::Ingest {
            cmd.arg("serve");
        }
        cmd.envs(
            self.options
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        cmd.env("RUST_LOG", &self.options.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        self.procs.insert(b, Proc::new(child));
        Ok(())
    }

    pub async fn wait_ready(&mut self, b: Binary, limit: Duration) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.url(b));
        let log = self.log_path(b);
        let child = self.procs.get_mut(&b).map(|p| &mut p.child);
        await_ready(&self.http, child, &url, b.name(), &log, limit).await
    }

    /// SIGTERM, then waits for a clean exit (SIGKILL after `limit`).
    pub async fn stop_binary(
        &mut self,
        b: Binary,
        limit: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut p) = self.procs.remove(&b) else {
            bail!("{} is not running", b.name())
        };
        if let Some(pid) = p.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(limit, p.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                p.child.kill().await.ok();
                bail!("{} did not stop within {limit:?} after SIGTERM", b.name())
            }
        }
    }

    /// A clean stop (SIGTERM, its work finished), a start, and the wait until it is ready.
    pub async fn restart_binary(&mut self, b: Binary) -> anyhow::Result<()> {
        self.stop_binary(b, Duration::from_secs(30)).await?;
        self.start_binary(b).await?;
        self.wait_ready(b, Duration::from_secs(60)).await
    }

    /// SIGKILL: a crash.
    pub async fn kill_binary(&mut self, b: Binary) -> anyhow::Result<()> {
        if let Some(mut p) = self.procs.remove(&b) {
            p.child.kill().await?;
        }
        Ok(())
    }

    pub async fn post_batch(
        &self,
        batch: &str,
        jsonl: String,
        partial: bool,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!(
            "{}/v1/batches?batch={batch}{}",
            self.url(Binary::Ingest),
            if partial { "&partial=true" } else { "" }
        );
        let r = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .header("content-type", "application/x-ndjson")
            .body(jsonl)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn batch_status(&self, batch: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}/v1/batches/{batch}", self.url(Binary::Ingest)))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if r.status().as_u16() == 404 {
            return Ok(Value::Null);
        }
        Ok(r.error_for_status()?.json().await?)
    }

    /// Waits until every job of the batch reached a final state (delivered, failed,
    /// cancelled, bounced, suppressed); returns the last status.
    pub async fn wait_batch_done(
        &self,
        batch: &str,
        jobs: u64,
        limit: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let status = self.batch_status(batch).await.unwrap_or(Value::Null);
            let c = &status["counts"];
            let done = [
                "delivered",
                "failed",
                "cancelled",
                "expired",
                "bounced",
                "suppressed",
            ]
            .iter()
            .map(|k| c[*k].as_u64().unwrap_or(0))
            .sum::<u64>();
            if done >= jobs {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("batch {batch} not done within {limit:?}: {status}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every message the simulator accepted, in the order it accepted them, as the
    /// (batch, job id) the record gives its Message-ID (`?` and the Message-ID when the
    /// record does not know it).
    pub async fn sent_jobs(&self) -> Vec<(String, String)> {
        let store = mailpipe_common::store::Store::new(
            &self.database,
            tokio_util::sync::CancellationToken::new(),
        )
        .expect("store");
        let rows: Vec<(String, Option<String>, Option<String>)> =
            sqlx::query_as("SELECT id, batch_id, message_id FROM jobs")
                .fetch_all(store.pool())
                .await
                .expect("jobs");
        store.close().await;
        let by_message: HashMap<String, (String, String)> = rows
            .into_iter()
            .filter_map(|(id, batch, message)| {
                Some((message?.trim_matches(['<', '>']).to_owned(), (batch?, id)))
            })
            .collect();
        self.sim
            .accepted()
            .iter()
            .map(|m| {
                let parsed = mail_parser::MessageParser::default()
                    .parse(&m.raw)
                    .expect("every accepted message parses");
                let message_id = parsed.message_id().unwrap_or_default().to_owned();
                by_message
                    .get(&message_id)
                    .cloned()
                    .unwrap_or_else(|| ("?".into(), message_id))
            })
            .collect()
    }

    /// Invoice number (from the Subject) -> how many times the simulator accepted it.
    pub fn delivered_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for m in self.sim.accepted() {
            let parsed = mail_parser::MessageParser::default()
                .parse(&m.raw)
                .expect("every delivered message parses");
            let subject = parsed.subject().expect("subject").to_owned();
            let number = subject
                .split_whitespace()
                .find(|w| w.starts_with("INV-"))
                .expect("invoice number in the subject")
                .to_owned();
            *counts.entry(number).or_insert(0) += 1;
        }
        counts
    }

    /// The simulator received each of `jobs` invoices exactly once.
    pub fn assert_exactly_once(&self, jobs: usize) {
        let counts = self.delivered_counts();
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "sent more than once: {twice:?}");
        assert_eq!(counts.len(), jobs, "every job delivered");
    }

    /// Starts another `mailpipe-deliver` on the same configuration and pool (its own HTTP
    /// port, `HOSTNAME=name`, log `logs/mailpipe-deliver-<name>.log`) and waits for `/readyz`.
    pub async fn start_deliver_replica(&mut self, name: &str) -> anyhow::Result<()> {
        self.start_deliver_replica_with(name, &[]).await
    }

    /// Starts a deliver replica with extra environment (e.g. a crash drill).
    pub async fn start_deliver_replica_with(
        &mut self,
        name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let port = free_port()?;
        let config = std::fs::read_to_string(&self.config_path)?.replace(
            &format!(
                "http_listen = \"127.0.0.1:{}\"",
                self.ports[&Binary::Deliver]
            ),
            &format!("http_listen = \"127.0.0.1:{port}\""),
        );
        let config_path = self.dir.join(format!("mailpipe-{name}.toml"));
        std::fs::write(&config_path, config)?;
        let log_path = self
            .dir
            .join("logs")
            .join(format!("mailpipe-deliver-{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(bin_dir()?.join("mailpipe-deliver"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", &self.options.log_filter)
            .env("HOSTNAME", name)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting mailpipe-deliver")?;
        self.replicas.insert(name.to_owned(), Proc::new(child));
        let url = format!("http://127.0.0.1:{port}/readyz");
        let child = self.replicas.get_mut(name).map(|p| &mut p.child);
        let what = format!("deliver {name}");
        await_ready(
            &self.http,
            child,
            &url,
            &what,
            &log_path,
            Duration::from_secs(90),
        )
        .await
    }

    /// Waits until a deliver replica exits by itself (a crash drill), within `limit`.
    pub async fn wait_replica_exit(&mut self, name: &str, limit: Duration) -> anyhow::Result<()> {
        let Some(mut p) = self.replicas.remove(name) else {
            bail!("no deliver replica {name}")
        };
        match tokio::time::timeout(limit, p.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => {
                self.replicas.insert(name.to_owned(), p);
                bail!("deliver {name} did not exit within {limit:?}")
            }
        }
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, `TERM`) to a deliver replica. After `KILL`
    /// the replica is gone (reaped).
    pub async fn signal_replica(&mut self, name: &str, signal: &str) -> anyhow::Result<()> {
        let Some(p) = self.replicas.get_mut(name) else {
            bail!("no deliver replica {name}")
        };
        let pid = p.child.id().context("replica already exited")?;
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed");
        }
        if (signal == "KILL" || signal == "TERM")
            && let Some(mut p) = self.replicas.remove(name)
        {
            tokio::time::timeout(Duration::from_secs(30), p.child.wait()).await??;
        }
        Ok(())
    }

    /// Stops the binaries (SIGTERM), the simulator, and removes the run's queues (and its
    /// database schema, unless the caller gave the database). A hang fails the test with a
    /// message after [`CLEANUP_LIMIT`].
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let what = format!("shutting the stack {} down", self.rabbit.prefix);
        within(CLEANUP_LIMIT, &what, self.stop_all()).await
    }

    async fn stop_all(mut self) -> anyhow::Result<()> {
        let replicas: Vec<String> = self.replicas.keys().cloned().collect();
        for name in replicas {
            self.signal_replica(&name, "CONT").await.ok();
            self.signal_replica(&name, "TERM").await?;
        }
        let running: Vec<Binary> = self.procs.keys().copied().collect();
        for b in running {
            self.stop_binary(b, Duration::from_secs(30)).await?;
        }
        let broker = TestBroker::with_settings(self.rabbit.clone()).await;
        broker.cleanup().await;
        if self.options.database.is_none() {
            // The run's own schema of the test database.
            let store = Store::new(&self.database, tokio_util::sync::CancellationToken::new())?;
            drop_schema(&store, &self.database.schema).await;
            store.close().await;
        }
        self.sim.shutdown().await;
        Ok(())
    }
}
