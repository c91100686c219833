//! Settings that shape the topology, changed between two starts against the real broker:
//! a new retry ladder just works; a new delivery limit or events retention is reported with
//! the queue's value, the configured one and what to do.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use mailpipe_common::amqp::{Stage, Topology, persistent_properties};
use mailpipe_common::config::RabbitSettings;
use mailpipe_common::testkit::TestBroker;

/// The first start declared the topology with `TestBroker`'s settings; a second process
/// starts with `change` applied. Returns the outcome of its declare.
async fn second_start(
    t: &TestBroker,
    change: impl FnOnce(&mut RabbitSettings),
) -> (Topology, Result<(), lapin::Error>) {
    let mut settings = t.settings.clone();
    change(&mut settings);
    let topology = Topology::new(&settings);
    let ch = t.broker.channel().await.expect("channel");
    let result = topology.declare(&ch).await;
    (topology, result)
}

#[tokio::test]
async fn a_new_retry_ladder_declares_new_queues_and_retries_through_them() {
    let t = TestBroker::start("ladder").await;
    let (topology, result) = second_start(&t, |s| {
        s.retry_delays_ms = vec![Duration::from_millis(200), Duration::from_millis(900)];
    })
    .await;
    result.expect("a changed retry_delays_ms declares without a conflict");
    // A message on the new ladder's first step comes back to its stage after the delay.
    let (exchange, key, delay) = topology.retry_route(Stage::Deliver, 1).expect("a ladder");
    assert_eq!(delay, Duration::from_millis(200));
    let ch = t.broker.channel().await.unwrap();
    // deliver's ladder returns a message to the queue its `CC` header names (its lane).
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "CC".into(),
        lapin::types::AMQPValue::FieldArray(
            vec![lapin::types::AMQPValue::LongString("deliver".into())].into(),
        ),
    );
    ch.basic_publish(
        exchange.as_str().into(),
        key.as_str().into(),
        BasicPublishOptions::default(),
        b"retry me",
        persistent_properties("text/plain", headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let back = t
        .get(
            &topology.stage_queue(Stage::Deliver),
            Duration::from_secs(30),
        )
        .await
        .expect("the retried message returns to the deliver queue");
    assert_eq!(back.delivery.data, b"retry me");
    // The old ladder's queues are still there (they drain as their messages expire).
    assert_eq!(
        t.depth(
            &t.broker
                .topology()
                .retry_queue(Stage::Deliver, Duration::from_millis(600))
        )
        .await,
        0
    );
    let ch = t.broker.channel().await.unwrap();
    topology.delete(&ch).await.unwrap();
    t.cleanup().await;
}

#[tokio::test]
async fn a_new_delivery_limit_is_refused_with_the_way_out() {
    let t = TestBroker::start("limit").await;
    let queue = t.broker.topology().stage_queue(Stage::Render);
    for (limit, way) in [
        (7, "To raise it, stop what publishes to"),
        (
            1,
            "To lower it, set rabbitmq.delivery_limit = 2 again and add a policy",
        ),
    ] {
        let (topology, result) = second_start(&t, |s| s.delivery_limit = limit).await;
        let err = result.expect_err("RabbitMQ refuses another x-delivery-limit");
        let help = topology.explain(&err).expect("the mismatch is recognised");
        assert!(
            help.starts_with(&format!(
                "rabbitmq.delivery_limit is {limit} but queue {queue} was created with 2, \
                 and RabbitMQ cannot change a queue's arguments. {way}"
            )),
            "{help}"
        );
    }
    let (topology, result) = second_start(&t, |s| s.delivery_limit = 1).await;
    let help = topology.explain(&result.unwrap_err()).unwrap();
    assert!(help.contains("'{\"delivery-limit\":1}'"), "{help}");
    t.cleanup().await;
}

#[tokio::test]
async fn a_new_events_retention_is_refused_with_the_policy_that_applies_it() {
    let t = TestBroker::start("maxage").await;
    let stream = t.broker.topology().events_stream();
    let before = t.settings.events_max_age.clone();
    let (topology, result) = second_start(&t, |s| s.events_max_age = "14D".into()).await;
    let err = result.expect_err("RabbitMQ refuses another x-max-age");
    let help = topology.explain(&err).expect("the mismatch is recognised");
    assert!(
        help.starts_with(&format!(
            "rabbitmq.events_max_age is 14D but stream {stream} was created with {before},"
        )),
        "{help}"
    );
    assert!(help.contains("\"max-age\":\"14D\""), "{help}");
    assert!(
        help.contains(&format!("'^{}$'", stream.replace('.', "\\."))),
        "{help}"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn other_errors_are_not_explained_as_a_mismatch() {
    let t = TestBroker::start("other").await;
    let ch = t.broker.channel().await.unwrap();
    let err = ch
        .queue_declare(
            "amq.reserved-name".into(),
            lapin::options::QueueDeclareOptions::default(),
            Default::default(),
        )
        .await
        .expect_err("amq.* names are reserved");
    assert_eq!(t.broker.topology().explain(&err), None);
    t.cleanup().await;
}

#[tokio::test]
async fn a_read_only_start_checks_the_deployment_and_creates_nothing() {
    let t = TestBroker::start("readonly").await;
    let read_only = |prefix: &str| {
        Topology::new(&RabbitSettings {
            prefix: prefix.to_owned(),
            ..t.settings.clone()
        })
    };
    // The existing deployment passes.
    let ch = t.broker.channel().await.unwrap();
    read_only(&t.settings.prefix)
        .check_exists(&ch)
        .await
        .expect("an existing deployment passes the check");
    // A mistyped prefix: refused, explained, and still absent afterwards.
    let typo = format!("{}x", t.settings.prefix);
    let topology = read_only(&typo);
    let ch = t.broker.channel().await.unwrap();
    let err = topology
        .check_exists(&ch)
        .await
        .expect_err("nothing under the typo");
    let help = topology.explain_missing(&err);
    assert!(
        help.starts_with(&format!(
            "no such deployment (prefix {typo:?} on vhost \"/\")"
        )),
        "{help}"
    );
    let ch = t.broker.channel().await.unwrap();
    let still = ch
        .queue_declare(
            topology.stage_queue(Stage::Deliver).as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    assert!(
        still.is_err(),
        "the check created {}",
        topology.stage_queue(Stage::Deliver)
    );
    t.cleanup().await;
}
