//! The RabbitMQ layer against the real broker (each test under its own name prefix).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{BasicNackOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use mailpipe_common::amqp::{
    ConsumerSpec, DEAD_REASON_HEADER, Outgoing, PublishError, Stage, consume, death_reason,
    header_str, persistent_properties,
};
use mailpipe_common::contract::{DeliverQueue, Job, Lane, RenderedMeta};
use mailpipe_common::pipeline::rendered_properties;
use mailpipe_common::testkit::TestBroker;

fn job(id: &str) -> Job {
    Job::from_json(
        format!(r#"{{"id":"{id}","template":"invoice","to":["a@example.com"]}}"#).as_bytes(),
    )
    .unwrap()
}

#[tokio::test]
async fn declaring_the_topology_twice_is_harmless() {
    let t = TestBroker::start("declare").await;
    let ch = t.broker.channel().await.unwrap();
    t.broker
        .topology()
        .declare(&ch)
        .await
        .expect("second declare");
    t.broker
        .topology()
        .declare(&ch)
        .await
        .expect("third declare");
    t.pipeline
        .send_job(&job("j1"))
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    assert_eq!(
        t.depth(&t.broker.topology().stage_queue(Stage::Render))
            .await,
        1
    );
    t.cleanup().await;
}

#[tokio::test]
async fn a_message_rejected_past_the_delivery_limit_is_dead_lettered_with_its_reason() {
    let t = TestBroker::start("dlimit").await;
    t.pipeline
        .send_job(&job("poison"))
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    let ch = t.broker.channel().await.unwrap();
    let queue = t.broker.topology().stage_queue(Stage::Render);
    // delivery_limit is 2 in tests: the third requeue crosses it.
    for _ in 0..3 {
        let mut got = None;
        for _ in 0..100 {
            got = ch
                .basic_get(queue.as_str().into(), Default::default())
                .await
                .unwrap();
            if got.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let msg = got.expect("message redelivered");
        msg.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let dead = t
        .get(&t.broker.topology().dead_queue(), Duration::from_secs(5))
        .await
        .expect("dead letter");
    assert_eq!(
        death_reason(&dead.delivery.properties).as_deref(),
        Some("delivery_limit")
    );
    assert_eq!(
        Job::from_queue(&dead.delivery.data).unwrap().id.as_str(),
        "poison"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn dead_letters_written_on_purpose_carry_the_reason() {
    let t = TestBroker::start("dreason").await;
    let props = persistent_properties("application/json", FieldTable::default());
    t.pipeline
        .dead_letter(Stage::Render, b"{}", &props, "unknown template \"x\"")
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    let dead = t
        .get(&t.broker.topology().dead_queue(), Duration::from_secs(5))
        .await
        .expect("dead letter");
    assert_eq!(
        header_str(&dead.delivery.properties, DEAD_REASON_HEADER).as_deref(),
        Some("unknown template \"x\"")
    );
    t.cleanup().await;
}

#[tokio::test]
async fn a_message_in_the_retry_ladder_returns_to_its_stage_after_its_delay() {
    let t = TestBroker::start("ladder").await;
    let props = persistent_properties("application/json", FieldTable::default());
    let started = std::time::Instant::now();
    let (delay, pending) = t
        .pipeline
        .retry(Stage::Deliver, 1, b"again", props)
        .await
        .unwrap()
        .expect("ladder configured");
    pending.confirmed().await.unwrap();
    assert_eq!(delay, Duration::from_millis(300));
    let queue = t.broker.topology().stage_queue(Stage::Deliver);
    assert_eq!(t.depth(&queue).await, 0, "not back before its delay");
    let back = t
        .get(&queue, Duration::from_secs(10))
        .await
        .expect("back in its stage");
    assert_eq!(back.delivery.data, b"again");
    assert!(started.elapsed() >= Duration::from_millis(300));
    t.cleanup().await;
}

/// A rendered message goes to its lane's queue, and the retry ladder brings it back there
/// (not to the first bulk queue): a transactional message stays ahead of the bulk backlog
/// after a retry, and a batch's messages stay in their batch's queue.
#[tokio::test]
async fn a_rendered_message_waits_in_its_lane_and_the_ladder_returns_it_there() {
    let t = TestBroker::start("lanes").await;
    let topology = t.broker.topology().clone();
    // A transactional job has its own render queue too.
    let mut urgent = job("lane-0");
    urgent.lane = Some(Lane::Transactional);
    t.pipeline
        .send_job(&urgent)
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    let queued = t
        .get(
            &topology.render_queue(Lane::Transactional),
            Duration::from_secs(5),
        )
        .await
        .expect("in render's transactional queue");
    assert_eq!(
        Job::from_queue(&queued.delivery.data).unwrap().id.as_str(),
        "lane-0"
    );
    assert_eq!(t.depth(&topology.render_queue(Lane::Bulk)).await, 0);
    for (lane, bulk_queue) in [(Lane::Transactional, 0), (Lane::Bulk, 2), (Lane::Bulk, 0)] {
        let meta = RenderedMeta::from_header_value(
            &serde_json::json!({
                "job_id": "lane-1", "from": {"address": "billing@example.com"},
                "has_reply_to": false, "recipients": ["ann@example.com"],
                "message_id": "<lane-1@example.com>", "attempt": 0,
                "rendered_at": "2026-12-01T10:00:00Z",
                "lane": lane, "bulk_queue": bulk_queue,
            })
            .to_string(),
        )
        .unwrap();
        let queue = topology.deliver_queue(DeliverQueue::of(lane, bulk_queue));
        t.pipeline
            .send_rendered(&meta, b"first")
            .await
            .unwrap()
            .confirmed()
            .await
            .unwrap();
        let first = t
            .get(&queue, Duration::from_secs(5))
            .await
            .expect("in its lane");
        assert_eq!(first.delivery.data, b"first");
        let (_, pending) = t
            .pipeline
            .retry(Stage::Deliver, 1, b"again", rendered_properties(&meta))
            .await
            .unwrap()
            .expect("ladder configured");
        pending.confirmed().await.unwrap();
        let back = t
            .get(&queue, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("not back in {queue}"));
        assert_eq!(back.delivery.data, b"again");
        for (_, other) in topology.deliver_queues() {
            assert_eq!(t.depth(&other).await, 0, "{other} holds a copy");
        }
    }
    t.cleanup().await;
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_or_an_unroutable_key_fails_loudly() {
    let t = TestBroker::start("loud").await;
    let publisher = mailpipe_common::amqp::Publisher::new(t.broker.clone(), Duration::from_secs(5));
    let props = persistent_properties("text/plain", FieldTable::default());
    let missing = publisher
        .publish(Outgoing {
            exchange: "t-no-such-exchange-anywhere",
            routing_key: "x",
            body: b"1",
            properties: props.clone(),
        })
        .await
        .expect_err("missing exchange must fail");
    assert!(
        missing.to_string().contains("NOT_FOUND") || missing.to_string().contains("no exchange"),
        "{missing}"
    );

    let work = t.broker.topology().work_exchange();
    let unroutable = publisher
        .publish(Outgoing {
            exchange: &work,
            routing_key: "nowhere",
            body: b"1",
            properties: props.clone(),
        })
        .await
        .expect_err("unroutable must fail");
    assert!(
        matches!(unroutable, PublishError::Unroutable { .. }),
        "{unroutable}"
    );

    // The publisher recovers from the channel the missing exchange closed.
    publisher
        .publish(Outgoing {
            exchange: &work,
            routing_key: "render",
            body: b"1",
            properties: props,
        })
        .await
        .expect("publishes again");
    t.cleanup().await;
}

/// Closes this test's connections from the broker side, as an operator or a broker restart would.
fn close_connections_named(prefix: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "-q",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl is required for this test");
    let mut closed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.contains(prefix) {
            let pid = line.split('\t').next().expect("pid column");
            let status = std::process::Command::new("rabbitmqctl")
                .args(["close_connection", pid, "test: broker-side close"])
                .status()
                .unwrap();
            assert!(status.success());
            closed += 1;
        }
    }
    assert!(closed > 0, "no connection of {prefix} found to close");
}

#[tokio::test]
async fn a_consumer_keeps_working_after_the_broker_drops_its_connection_without_losing_unacked_work()
 {
    let t = TestBroker::start("reconnect").await;
    let queue = t.broker.topology().stage_queue(Stage::Render);
    for i in 0..3 {
        t.pipeline
            .send_job(&job(&format!("before-{i}")))
            .await
            .unwrap()
            .confirmed()
            .await
            .unwrap();
    }
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = Arc::new(AtomicUsize::new(0));
    let (acked2, seen2) = (acked.clone(), seen.clone());
    let hold = Arc::new(tokio::sync::Notify::new());
    let hold2 = hold.clone();
    let broker = t.broker.clone();
    let consumer = tokio::spawn(async move {
        consume(&broker, ConsumerSpec::queue(queue, 4), move |d| {
            let (acked, seen, hold) = (acked2.clone(), seen2.clone(), hold2.clone());
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let id = Job::from_queue(&d.data).unwrap().id.to_string();
                if n == 0 {
                    // The first message is in hand (unacked) when the connection drops.
                    hold.notified().await;
                    let _ = d.acker.reject(BasicRejectOptions { requeue: true }).await;
                    return;
                }
                if d.acker.ack(Default::default()).await.is_ok() {
                    acked.lock().unwrap().push(id);
                }
            }
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    close_connections_named(&t.settings.prefix);
    hold.notify_one();
    for i in 0..3 {
        t.pipeline
            .send_job(&job(&format!("after-{i}")))
            .await
            .unwrap()
            .confirmed()
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut ids = acked.lock().unwrap().clone();
        ids.sort();
        ids.dedup();
        if ids.len() == 6 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only acked {ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.shutdown.cancel();
    consumer.await.unwrap();
    t.cleanup().await;
}

/// Many first publishes at once (render right after its start) share one new channel:
/// none is lost to a channel another publish replaced, so none is published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_publishes_are_each_published_once() {
    let t = TestBroker::start("firstpub").await;
    // A publisher of its own, with no channel yet.
    let publisher =
        mailpipe_common::amqp::Publisher::new(t.broker.clone(), Duration::from_secs(10));
    let exchange = t.broker.topology().work_exchange();
    let sends = (0..200).map(|i| {
        let publisher = publisher.clone();
        let exchange = exchange.clone();
        tokio::spawn(async move {
            let body = serde_json::to_vec(&job(&format!("j{i}"))).unwrap();
            publisher
                .publish(Outgoing {
                    exchange: &exchange,
                    routing_key: "render",
                    body: &body,
                    properties: persistent_properties("application/json", FieldTable::default()),
                })
                .await
        })
    });
    for send in futures::future::join_all(sends).await {
        send.unwrap().unwrap();
    }
    let queue = t.broker.topology().render_queue(Lane::Bulk);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while t.depth(&queue).await < 200 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every publish was confirmed before this point: a republish would show as a 201st.
    assert_eq!(t.depth(&queue).await, 200);
    t.cleanup().await;
}
