//! A real ingest `Application` on port 0 against a real RabbitMQ (unique prefix per test).

#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mailpipe_common::amqp::Stage;
use mailpipe_common::config::{SecretRef, TelemetrySettings};
use mailpipe_common::contract::JobLimits;
use mailpipe_common::testkit::TestBroker;
use mailpipe_ingest::{Application, Config, IngestSettings};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "first-token-0123456789";
pub const ROTATED_TOKEN: &str = "second-token-9876543210";

pub struct TestApp {
    pub broker: TestBroker,
    pub base: String,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
    pub config: Config,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The shipped example templates and jobs.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The data the example `invoice` template reads.
pub const INVOICE_DATA: &str = r#"{"invoice_number":"INV-1","due_date":"2026-12-15","currency":"EUR","customer":{"name":"Ann Example"},"items":[{"description":"Support","quantity":1,"unit_price":12.5}]}"#;

/// A directory with two token files, a copy of the example templates, and an
/// attachments root holding `2026/inv-1.pdf`.
pub fn fixture_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token1"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("token2"), ROTATED_TOKEN).unwrap();
    for template in std::fs::read_dir(examples_dir().join("templates")).unwrap() {
        let template = template.unwrap().path();
        let to = dir
            .path()
            .join("templates")
            .join(template.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(&template).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(dir.path().join("files/2026")).unwrap();
    std::fs::write(dir.path().join("files/2026/inv-1.pdf"), b"%PDF-1.4").unwrap();
    std::fs::write(dir.path().join("outside.txt"), b"secret").unwrap();
    dir
}

pub fn settings_for(dir: &Path) -> IngestSettings {
    IngestSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_tokens: vec![
            SecretRef {
                env: None,
                file: Some(dir.join("token1")),
            }
            .into(),
            SecretRef {
                env: None,
                file: Some(dir.join("token2")),
            }
            .into(),
        ],
        limits: JobLimits {
            max_recipients: 3,
            ..JobLimits::default()
        },
        templates_dir: Some(dir.join("templates")),
        attachments_root: Some(dir.join("files")),
        max_request_bytes: 64 * 1024,
        max_batch_bytes: 8 * 1024 * 1024,
        max_in_flight: 64,
        ..IngestSettings::default()
    }
}

impl TestApp {
    pub async fn spawn(name: &str) -> Self {
        let broker = TestBroker::start(name).await;
        let dir = fixture_dir();
        let config = Config {
            rabbitmq: broker.settings.clone(),
            telemetry: TelemetrySettings::default(),
            database: broker.database.clone(),
            ingest: settings_for(dir.path()),
            pool: Ok(test_pool()),
        };
        Self::spawn_with(broker, dir, config).await
    }

    pub async fn spawn_with(broker: TestBroker, dir: tempfile::TempDir, config: Config) -> Self {
        let shutdown = CancellationToken::new();
        let app = Application::build(config.clone(), shutdown.clone())
            .await
            .expect("application starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let server = tokio::spawn(app.run_until_stopped());
        let client = reqwest::Client::new();
        // Liveness bounds, wide for a loaded 2-core machine.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ingest did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            broker,
            base,
            client,
            shutdown,
            dir,
            config,
            server,
        }
    }

    pub fn render_queue(&self) -> String {
        self.broker.broker.topology().stage_queue(Stage::Render)
    }

    pub async fn render_depth(&self) -> u32 {
        self.broker.depth(&self.render_queue()).await
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    /// `GET path`, its body as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).send().await.unwrap().json().await.unwrap()
    }

    pub async fn post_job(&self, body: &str) -> (u16, serde_json::Value) {
        let r = self
            .post("/v1/jobs")
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Polls `path` until `check` holds on its JSON (the status index is fed asynchronously).
    pub async fn eventually(
        &self,
        path: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.get(path).send().await.unwrap();
            let json: serde_json::Value = r.json().await.unwrap_or_default();
            if check(&json) {
                return json;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never satisfied the check; last: {json}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server but keeps the broker topology (for restart tests).
    pub async fn stop(self) -> (TestBroker, tempfile::TempDir, Config) {
        self.shutdown.cancel();
        mailpipe_common::testkit::within(
            mailpipe_common::testkit::CLEANUP_LIMIT,
            "stopping ingest",
            self.server,
        )
        .await
        .unwrap()
        .unwrap();
        (self.broker, self.dir, self.config)
    }

    pub async fn cleanup(self) {
        let (broker, _, _) = self.stop().await;
        broker.cleanup().await;
    }
}

/// The `[deliver]` pool the tests estimate with: two mailboxes of 30 messages per 60 s
/// (1 message/s together) and 100 recipients per 1,440 s window.
pub const POOL_TOML: &str = r#"
[deliver]
http_listen = "127.0.0.1:0"
max_attempts = 3
[[deliver.tenants]]
id = "contoso"
[[deliver.mailboxes]]
address = "a@pool.example"
tenant = "contoso"
auth = "password"
limits = { messages_per_window = 30, message_window_ms = 60000, recipients_per_window = 100, recipient_window_ms = 1440000 }
[[deliver.mailboxes]]
address = "b@pool.example"
tenant = "contoso"
auth = "password"
limits = { messages_per_window = 30, message_window_ms = 60000, recipients_per_window = 100, recipient_window_ms = 1440000 }
"#;

pub fn test_pool() -> mailpipe_common::pool::PoolSettings {
    mailpipe_common::config::ConfigSource::from_toml(POOL_TOML)
        .section("deliver")
        .unwrap()
}

pub fn job_json(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","template":"invoice","to":["ann@example.com"],"data":{INVOICE_DATA}}}"#
    )
}

pub fn write_jsonl(dir: &Path, name: &str, lines: impl IntoIterator<Item = String>) -> PathBuf {
    let path = dir.join(name);
    let mut text = String::new();
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}
