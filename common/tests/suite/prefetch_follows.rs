//! A consumer whose prefetch follows a value (deliver's, sized to the mailboxes it owns),
//! against the real broker: each change re-subscribes on the same channel, the broker
//! then holds back what the new prefetch leaves, and the deliveries already in hand are
//! acked as usual: none comes twice.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailpipe_common::amqp::{ConsumerSpec, Stage, consume};
use mailpipe_common::contract::Job;
use mailpipe_common::testkit::TestBroker;
use tokio::sync::{Semaphore, watch};

const JOBS: usize = 20;

#[derive(Default)]
struct Seen {
    ids: Vec<String>,
    redelivered: usize,
    acked: usize,
}

/// Waits until `seen` has `n` deliveries and the queue `n` fewer ready messages: the
/// broker has sent exactly `n`, and holds the rest back.
async fn wait_delivered(t: &TestBroker, queue: &str, seen: &Mutex<Seen>, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = seen.lock().unwrap().ids.len();
        let ready = t.depth(queue).await as usize;
        if got == n && ready == JOBS - n {
            return;
        }
        assert!(
            got <= n && tokio::time::Instant::now() < deadline,
            "{got} delivered, {ready} ready; expected {n} and {}",
            JOBS - n
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The prefetch of each live consumer of `queue`, as the broker lists them (a cancelled
/// consumer whose deliveries are still unacked is not listed).
fn consumer_prefetches(queue: &str) -> Vec<u32> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_consumers",
            "-q",
            "--no-table-headers",
            "queue_name",
            "prefetch_count",
        ])
        .output()
        .expect("rabbitmqctl is required for this test");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(q, _)| *q == queue)
        .map(|(_, p)| p.trim().parse().unwrap())
        .collect()
}

/// Waits until the live consumers of `queue` have these prefetches.
async fn wait_consumers(queue: &str, want: &[u32]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = consumer_prefetches(queue);
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumers' prefetch {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_prefetch_applies_to_what_the_broker_sends_next_and_nothing_comes_twice() {
    let t = TestBroker::start("prefollow").await;
    let queue = t.broker.topology().stage_queue(Stage::Render);
    for i in 0..JOBS {
        let job = Job::from_json(
            format!(r#"{{"id":"p{i}","template":"invoice","to":["a@example.com"]}}"#).as_bytes(),
        )
        .unwrap();
        t.pipeline
            .send_job(&job)
            .await
            .unwrap()
            .confirmed()
            .await
            .unwrap();
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    // Handlers hold their delivery (unacked) until the test lets them go.
    let release = Arc::new(Semaphore::new(0));
    let (prefetch, follows) = watch::channel(2u16);
    let consumer = {
        let (broker, seen, release) = (t.broker.clone(), seen.clone(), release.clone());
        let spec = ConsumerSpec::queue(queue.clone(), 64).following(follows);
        tokio::spawn(async move {
            consume(&broker, spec, move |d| {
                let (seen, release) = (seen.clone(), release.clone());
                async move {
                    {
                        let mut s = seen.lock().unwrap();
                        s.ids.push(Job::from_queue(&d.data).unwrap().id.to_string());
                        s.redelivered += usize::from(d.redelivered);
                    }
                    release.acquire().await.unwrap().forget();
                    d.acker.ack(Default::default()).await.unwrap();
                    seen.lock().unwrap().acked += 1;
                }
            })
            .await
        })
    };

    // 2 to start with (not the spec's 64).
    wait_delivered(&t, &queue, &seen, 2).await;
    wait_consumers(&queue, &[2]).await;
    // Raised to 6 with 2 in hand (at most half of 6): a new consumer, 6 more.
    prefetch.send(6).unwrap();
    wait_delivered(&t, &queue, &seen, 8).await;
    wait_consumers(&queue, &[6]).await;
    // Lowered to 2 with 8 in hand: nothing new until at most 1 is left in hand, then 2.
    prefetch.send(2).unwrap();
    // Cancelled at once (8 in hand): acks from now on bring nothing of the old consumer.
    wait_consumers(&queue, &[]).await;
    release.add_permits(7);
    wait_delivered(&t, &queue, &seen, 10).await;
    wait_consumers(&queue, &[2]).await;
    assert_eq!(seen.lock().unwrap().acked, 7, "acked on the same channel");

    // The rest: every job once, none redelivered (the old consumers' acks all counted).
    release.add_permits(JOBS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().acked < JOBS {
        assert!(tokio::time::Instant::now() < deadline, "not all acked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        s.ids.iter().collect::<HashSet<_>>().len(),
        JOBS,
        "{:?}",
        s.ids
    );
    assert_eq!(s.ids.len(), JOBS, "{:?}", s.ids);
    assert_eq!(s.redelivered, 0);
    assert_eq!(t.depth(&queue).await, 0);
    t.shutdown.cancel();
    consumer.await.unwrap();
    t.cleanup().await;
}
