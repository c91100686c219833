//! Harness for deliver's tests: a simulator with a pool of mailboxes, matching deliver
//! settings (secrets in files, as in production), a real RabbitMQ under a unique prefix,
//! and helpers to publish rendered messages and wait for outcomes.
#![allow(dead_code, clippy::unwrap_used)]

pub mod dns_zone;

use std::time::Duration;

use chrono::Utc;
use mailpipe_common::config::{CommonSettings, SecretRef, TelemetrySettings};
use mailpipe_common::contract::{DeliveryEvent, RenderedMeta};
use mailpipe_common::domain::{BatchId, EmailAddress, JobId, Mailbox};
use mailpipe_common::testkit::TestBroker;
use mailpipe_deliver::settings::{
    AuthMethod, DeliverSettings, FromPolicy, LimitSettings, MailboxSettings, OAuthApp,
    TenantSettings, Transport,
};
use mailpipe_deliver::startup::Application;
use mailpipe_sim::{
    AppConfig, FaultsConfig, LimitsConfig, MailboxConfig, RunningSim, SimConfig, Simulator,
    TenantConfig,
};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "s3cret-value-for-tests";

/// Limits applied identically in the simulator and in deliver.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub messages: u64,
    pub message_window_ms: u64,
    pub recipients: u64,
    pub recipient_window_ms: u64,
    pub connections: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            messages: 10,
            message_window_ms: 1_000,
            recipients: 10_000,
            recipient_window_ms: 60_000,
            connections: 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub mailboxes: usize,
    pub limits: Limits,
    /// Mailbox indexes whose tenant app gets a wrong secret in deliver's settings.
    pub wrong_secret: Vec<usize>,
    /// Mailbox indexes that authenticate with a password (AUTH LOGIN), and a wrong one.
    pub wrong_password: Vec<usize>,
    pub token_lifetime_secs: u64,
    /// Mailbox indexes allowed to send as `billing@contoso.example`.
    pub send_as_billing: Vec<usize>,
    pub from_policy: FromPolicy,
    pub faults: String,
    /// `[mailboxes.faults]` TOML lines for single mailboxes (by index).
    pub mailbox_faults: Vec<(usize, String)>,
    /// Every mailbox in one tenant (`t0`) with this external-recipient limit per window
    /// (ms), the same in the simulator and in deliver; `None`: a tenant per mailbox, no limit.
    pub shared_tenant: Option<(u64, u64)>,
    /// Every mailbox sends through Graph (`transport = "graph"`, `[deliver.graph]` on the
    /// simulator's Graph), and the simulator refuses them SMTP AUTH (`535 5.7.139`).
    pub graph_transport: bool,
    /// With `graph_transport`: mailbox indexes that stay on SMTP (SMTP AUTH on), for a
    /// mixed pool.
    pub smtp_mailboxes: Vec<usize>,
}

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            mailboxes: 4,
            limits: Limits::default(),
            wrong_secret: vec![],
            wrong_password: vec![],
            token_lifetime_secs: 3600,
            send_as_billing: vec![],
            from_policy: FromPolicy::Mailbox,
            faults: String::new(),
            mailbox_faults: vec![],
            shared_tenant: None,
            graph_transport: false,
            smtp_mailboxes: vec![],
        }
    }
}

/// The tenant of mailbox `i`.
pub fn tenant_of(spec: &PoolSpec, i: usize) -> String {
    match spec.shared_tenant {
        Some(_) => "t0".into(),
        None => format!("t{i}"),
    }
}

pub fn mailbox_address(i: usize) -> String {
    format!("mbx{i}@contoso.example")
}

/// Each mailbox in its own tenant, so one tenant's app can carry a wrong secret alone.
pub async fn start_sim(spec: &PoolSpec) -> RunningSim {
    let l = spec.limits;
    // The test's own simulator settings (`faults`, TOML) first; the pool is added in code.
    let mut config = SimConfig::from_toml_str(&format!("limits_enabled = true\n{}\n", spec.faults))
        .expect("the spec's simulator settings");
    for i in 0..spec.mailboxes {
        let t = tenant_of(spec, i);
        // With a shared tenant, only t0 (and its app) is declared.
        if spec.shared_tenant.is_none() || i == 0 {
            let mut tenant =
                TenantConfig::new(&t, &["contoso.example", &format!("{t}.onmicrosoft.com")]);
            if let Some((n, ms)) = spec.shared_tenant {
                tenant = tenant.with_external_limit(n, ms);
            }
            let app = AppConfig {
                token_lifetime_secs: spec.token_lifetime_secs,
                ..AppConfig::with_secret(&t, &format!("app-{i}"), SECRET)
            };
            config = config.with_tenant(tenant, app);
        }
        let faults = spec
            .mailbox_faults
            .iter()
            .find(|(m, _)| *m == i)
            .map(|(_, f)| FaultsConfig::from_toml_fragment(f).expect("a mailbox's faults"));
        config = config.with_mailbox(MailboxConfig {
            send_as: if spec.send_as_billing.contains(&i) {
                vec!["billing@contoso.example".into()]
            } else {
                vec![]
            },
            password: spec
                .wrong_password
                .contains(&i)
                .then(|| "the-right-password".to_owned()),
            smtp_auth_enabled: !spec.graph_transport || spec.smtp_mailboxes.contains(&i),
            limits: LimitsConfig {
                max_connections: Some(l.connections),
                ..LimitsConfig::windows(
                    l.messages,
                    l.message_window_ms,
                    l.recipients,
                    l.recipient_window_ms,
                )
            },
            faults,
            ..MailboxConfig::new(&mailbox_address(i), &t)
        });
    }
    config.validate().expect("sim config");
    Simulator::start(config).await.expect("simulator starts")
}

pub struct Harness {
    pub sim: RunningSim,
    pub broker: TestBroker,
    pub common: CommonSettings,
    pub settings: DeliverSettings,
    _secrets: tempfile::TempDir,
}

impl Harness {
    pub async fn new(name: &str, spec: PoolSpec) -> Self {
        let sim = start_sim(&spec).await;
        let broker = TestBroker::start(name).await;
        let secrets = tempfile::tempdir().unwrap();
        let good = secrets.path().join("good");
        let bad = secrets.path().join("bad");
        std::fs::write(&good, SECRET).unwrap();
        std::fs::write(&bad, "not-the-secret").unwrap();
        let l = spec.limits;
        let mut tenants = Vec::new();
        let mut mailboxes = Vec::new();
        for i in 0..spec.mailboxes {
            let secret = if spec.wrong_secret.contains(&i) {
                &bad
            } else {
                &good
            };
            if spec.shared_tenant.is_some() && i > 0 {
                // One tenant for all (declared with mailbox 0).
            } else {
                tenants.push(TenantSettings {
                    id: format!("t{i}"),
                    oauth: Some(OAuthApp {
                        tenant_id: Some(format!("t{i}.onmicrosoft.com")),
                        client_id: format!("app-{i}"),
                        client_secret: Some(SecretRef {
                            env: None,
                            file: Some(secret.clone()),
                        }),
                        client_certificate: None,
                        client_certificate_key: None,
                        client_assertion_file: None,
                        client_assertion_file_env: None,
                        authority: sim.authority(),
                        scope: "https://outlook.office365.com/.default".into(),
                        allow_loopback_http: true,
                    }),
                    domains: vec!["contoso.example".into()],
                    external_recipient_limit: spec.shared_tenant.map(|(n, _)| n),
                    licenses: None,
                    external_window_ms: spec.shared_tenant.map_or(86_400_000, |(_, ms)| ms),
                });
            }
            let wrong_password = spec.wrong_password.contains(&i);
            mailboxes.push(MailboxSettings {
                address: EmailAddress::parse(&mailbox_address(i)).unwrap(),
                tenant: tenant_of(&spec, i),
                transport: if spec.graph_transport && !spec.smtp_mailboxes.contains(&i) {
                    Transport::Graph
                } else {
                    Transport::Smtp
                },
                auth: if wrong_password {
                    AuthMethod::Password
                } else {
                    AuthMethod::Oauth2
                },
                password: wrong_password.then(|| SecretRef {
                    env: None,
                    file: Some(bad.clone()),
                }),
                username: None,
                host: "localhost".into(),
                port: sim.smtp_addr().port(),
                limits: LimitSettings {
                    messages_per_window: l.messages,
                    message_window_ms: l.message_window_ms,
                    recipients_per_window: l.recipients,
                    recipient_window_ms: l.recipient_window_ms,
                    max_connections: l.connections as u32,
                    max_recipients_per_message: 500,
                },
                send_as: if spec.send_as_billing.contains(&i) {
                    vec![EmailAddress::parse("billing@contoso.example").unwrap()]
                } else {
                    vec![]
                },
                groups: vec![],
            });
        }
        let settings = DeliverSettings {
            http_listen: "127.0.0.1:0".parse().unwrap(),
            from_policy: spec.from_policy,
            max_attempts: 8,
            smtp_timeout_ms: 10_000,
            idle_connection_ms: 30_000,
            extra_ca_file: Some(sim.ca_pem_path().to_owned()),
            pause_ms: 2_000,
            max_pause_ms: 30_000,
            prefetch: 64,
            tenants,
            mailboxes,
            ..DeliverSettings::default()
        };
        let mut settings = settings;
        if spec.graph_transport {
            settings.graph.enabled = true;
            settings.graph.base_url = sim.graph_base_url();
            settings.graph.allow_loopback_http = true;
            settings.graph.request_timeout_ms = settings.smtp_timeout_ms;
            settings.graph.poll_interval_ms = 1_000;
        }
        settings.validate().expect("deliver settings");
        let common = CommonSettings {
            rabbitmq: broker.settings.clone(),
            telemetry: TelemetrySettings::default(),
            database: broker.database.clone(),
        };
        Self {
            sim,
            broker,
            common,
            settings,
            _secrets: secrets,
        }
    }

    /// Starts deliver in this process; returns its shutdown token and task.
    pub async fn start_deliver(
        &self,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let shutdown = CancellationToken::new();
        let app = Application::build(&self.common, &self.settings, shutdown.clone())
            .await
            .expect("deliver starts");
        (shutdown, tokio::spawn(app.run_until_stopped()))
    }

    pub async fn publish(&self, job: &str, from: &str, recipients: &[String]) {
        self.publish_with(job, from, recipients, |_| {}).await;
    }

    /// `publish`, with `adjust` changing the metadata first (a schedule, another batch).
    pub async fn publish_with(
        &self,
        job: &str,
        from: &str,
        recipients: &[String],
        adjust: impl FnOnce(&mut RenderedMeta),
    ) {
        let (meta, mime) = rendered(job, from, recipients, adjust);
        self.broker
            .pipeline
            .send_rendered(&meta, mime.as_bytes())
            .await
            .unwrap()
            .confirmed()
            .await
            .unwrap();
    }

    /// Waits until the simulator has accepted `n` messages (or fails after `limit`).
    pub async fn wait_accepted(&self, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.sim.accepted().len();
            if got >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {got} of {n} accepted within {limit:?}; refusals: {:?}",
                self.sim.refusals()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Subject line of every message the simulator accepted, in order.
    pub fn subjects(&self) -> Vec<String> {
        self.sim
            .accepted()
            .iter()
            .map(|m| {
                String::from_utf8_lossy(&m.raw)
                    .lines()
                    .find(|l| l.starts_with("Subject:"))
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    }

    /// Publishes `jobs` rendered messages (`job-0`, `job-1`, ...), each with one external
    /// recipient, `copies` times each, side by side.
    /// Confirms are awaited a few hundred at a time: 20,000 jobs take seconds, not minutes.
    pub async fn publish_jobs(&self, jobs: usize, copies: usize) {
        let mut pending = Vec::new();
        for i in 0..jobs {
            for _copy in 0..copies {
                let (meta, mime) = rendered(
                    &format!("job-{i}"),
                    "billing@contoso.example",
                    &recipients(i, 1),
                    |_| {},
                );
                pending.push(
                    self.broker
                        .pipeline
                        .send_rendered(&meta, mime.as_bytes())
                        .await
                        .unwrap(),
                );
                if pending.len() >= 256 {
                    for p in pending.drain(..) {
                        p.confirmed().await.unwrap();
                    }
                }
            }
        }
        for p in pending {
            p.confirmed().await.unwrap();
        }
    }

    /// Every event recorded, oldest first, from the system of record (the events stream
    /// is a feed: a publish retried after a lost connection may show there twice).
    pub async fn events(&self) -> Vec<DeliveryEvent> {
        sqlx::query_scalar::<_, sqlx::types::Json<DeliveryEvent>>(
            "SELECT event FROM job_events ORDER BY at, id",
        )
        .fetch_all(self.broker.store().pool())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect()
    }

    pub async fn dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(m) = self
            .broker
            .get(
                &self.broker.broker.topology().dead_queue(),
                Duration::from_millis(200),
            )
            .await
        {
            let reason = mailpipe_common::amqp::header_str(
                &m.delivery.properties,
                mailpipe_common::amqp::DEAD_REASON_HEADER,
            )
            .unwrap_or_default();
            out.push((reason, m.delivery.data));
        }
        out
    }

    /// Ends the test: status adds up (the batch counters equal a recount), then the
    /// simulator, broker and database are cleaned up (bounded: a hang fails the test with
    /// a message).
    pub async fn finish(self) {
        mailpipe_common::testkit::assert_counters_add_up(self.broker.store()).await;
        mailpipe_common::testkit::within(
            mailpipe_common::testkit::CLEANUP_LIMIT,
            "stopping the simulator",
            self.sim.shutdown(),
        )
        .await;
        self.broker.cleanup().await;
    }
}

/// A rendered message of `job` as render leaves it (batch `batch-1`), `adjust`ed.
pub fn rendered(
    job: &str,
    from: &str,
    recipients: &[String],
    adjust: impl FnOnce(&mut RenderedMeta),
) -> (RenderedMeta, String) {
    let mut meta = RenderedMeta {
        v: 1,
        job_id: JobId::parse(job).unwrap(),
        batch: Some(BatchId::parse("batch-1").unwrap()),
        from: Mailbox::new(
            Some("Contoso Billing".into()),
            EmailAddress::parse(from).unwrap(),
        )
        .unwrap(),
        has_reply_to: false,
        recipients: recipients
            .iter()
            .map(|r| EmailAddress::parse(r).unwrap())
            .collect(),
        group: None,
        message_id: format!("<{job}@mailpipe.test>"),
        attempt: 0,
        rendered_at: Utc::now(),
        not_before: None,
        not_after: None,
        lane: mailpipe_common::contract::Lane::Bulk,
        bulk_queue: 0,
    };
    adjust(&mut meta);
    let mime = format!(
        "To: {}\r\nSubject: Invoice {job}\r\nMessage-ID: <{job}@mailpipe.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello from {job}.\r\n",
        recipients.join(", ")
    );
    (meta, mime)
}

pub fn recipients(job: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|r| format!("customer{job}-{r}@fabrikam.example"))
        .collect()
}
