//! Test support (feature `testkit`): a real RabbitMQ under a unique name prefix, so test
//! runs never collide, and helpers to look into queues. A test that needs RabbitMQ fails
//! loudly when it is missing; it never passes without having run.

use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use tokio_util::sync::CancellationToken;

use crate::amqp::{Broker, Publisher};
use crate::config::RabbitSettings;
use crate::pipeline::Pipeline;

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

#[derive(Debug)]
pub struct TestBroker {
    pub settings: RabbitSettings,
    pub broker: Broker,
    pub pipeline: Pipeline,
    pub shutdown: CancellationToken,
}

impl TestBroker {
    /// Connects and declares a fresh topology; panics with a clear message when
    /// RabbitMQ is not reachable within 10 s.
    pub async fn start(name: &str) -> Self {
        Self::with_settings(settings(name)).await
    }

    pub async fn with_settings(settings: RabbitSettings) -> Self {
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
        Self {
            pipeline: Pipeline::new(publisher),
            settings,
            broker,
            shutdown,
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

    /// Deletes the test's exchanges and queues and stops background loops.
    pub async fn cleanup(self) {
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
    }
}
