//! Messages above Graph's single-request limit through the Graph transport, against the
//! simulator's Graph with a real RabbitMQ and PostgreSQL: a 10 MB attachment goes through
//! an upload session (its ranges to the session's pre-authenticated URL, which refuses a
//! bearer token) and arrives byte-identical in the message the simulator accepted; a
//! message above `deliver.graph.max_send_bytes` fails with that reason before any Graph
//! call; and a half-built draft an earlier send left in Drafts is deleted and built again,
//! never sent as found.

use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};
use mailpipe_common::testkit::within;

use crate::support::{Harness, Limits, PoolSpec, mailbox_address, recipients};

fn graph_pool() -> PoolSpec {
    PoolSpec {
        mailboxes: 1,
        limits: Limits {
            messages: 5,
            message_window_ms: 1_000,
            ..Limits::default()
        },
        graph_transport: true,
        ..PoolSpec::default()
    }
}

/// Bytes that do not repeat (a file base64 does not shrink).
fn file_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A rendered job `job` whose MIME carries `files` (type, name, bytes) as attachments.
fn rendered_with(
    job: &str,
    files: &[(&str, &str, Vec<u8>)],
) -> (mailpipe_common::contract::RenderedMeta, Vec<u8>) {
    let to = recipients(0, 1);
    let (meta, _) = crate::support::rendered(job, "billing@contoso.example", &to, |_| {});
    let mut builder = mail_builder::MessageBuilder::new()
        .to(to[0].as_str())
        .subject(format!("Invoice {job}"))
        .message_id(format!("{job}@mailpipe.test"))
        .text_body(format!("Hello from {job}.\r\n"));
    for (ctype, name, bytes) in files {
        builder = builder.attachment(*ctype, *name, bytes.clone());
    }
    (meta, builder.write_to_vec().unwrap())
}

async fn publish_rendered(
    h: &Harness,
    meta: &mailpipe_common::contract::RenderedMeta,
    mime: &[u8],
) {
    h.broker
        .pipeline
        .send_rendered(meta, mime)
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
}

async fn wait_delivered(h: &Harness, n: i64) {
    within(Duration::from_secs(90), "the job is delivered", async {
        loop {
            let done: i64 =
                sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'delivered'")
                    .fetch_one(h.broker.store().pool())
                    .await
                    .unwrap();
            if done >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// The attachments (name, bytes) of the one message the simulator accepted.
fn accepted_attachments(h: &Harness) -> Vec<(String, Vec<u8>)> {
    let accepted = h.sim.accepted();
    assert_eq!(accepted.len(), 1, "one message accepted");
    let message = MessageParser::new().parse(&accepted[0].raw).unwrap();
    message
        .attachments()
        .map(|a| {
            (
                a.attachment_name().unwrap_or_default().to_owned(),
                a.contents().to_vec(),
            )
        })
        .collect()
}

async fn stop(
    h: Harness,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    stop.cancel();
    within(Duration::from_secs(30), "deliver stops", task)
        .await
        .unwrap()
        .unwrap();
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_attachment_goes_through_an_upload_session_and_arrives_byte_identical() {
    let h = Harness::new("graph-upload", graph_pool()).await;
    let pdf = file_bytes(10 * 1024 * 1024, 7);
    let csv = "n;amount\r\n1;12.50 €\r\n".as_bytes().to_vec();
    let (meta, mime) = rendered_with(
        "job-upload",
        &[
            ("application/pdf", "invoice.pdf", pdf.clone()),
            ("text/csv", "lines.csv", csv.clone()),
        ],
    );
    publish_rendered(&h, &meta, &mime).await;
    let (token, task) = h.start_deliver().await;
    wait_delivered(&h, 1).await;
    h.wait_accepted(1, Duration::from_secs(30)).await;

    // Byte-identical, both attachments, with the body and our Message-ID.
    let attachments = accepted_attachments(&h);
    assert_eq!(
        attachments.len(),
        2,
        "{:?}",
        attachments.iter().map(|a| &a.0).collect::<Vec<_>>()
    );
    assert_eq!(attachments[0].0, "invoice.pdf");
    assert!(
        attachments[0].1 == pdf,
        "the 10 MB attachment changed on the way"
    );
    assert_eq!(attachments[1], ("lines.csv".to_owned(), csv));
    let raw = &h.sim.accepted()[0].raw;
    let message = MessageParser::new().parse(raw).unwrap();
    assert_eq!(message.message_id(), Some("job-upload@mailpipe.test"));
    assert_eq!(
        message.body_text(0).unwrap().trim(),
        "Hello from job-upload."
    );

    // The large one through an upload session, in ranges; the small one in one request.
    let log = h.sim.graph_requests();
    let sessions = log
        .iter()
        .filter(|r| r.path.ends_with("/attachments/createUploadSession"))
        .count();
    assert_eq!(sessions, 1, "{log:#?}");
    let ranges: Vec<_> = log.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(
        ranges.len(),
        (10 * 1024 * 1024usize).div_ceil(mailpipe_deliver::graph::upload::CHUNK_BYTES),
        "{ranges:#?}"
    );
    // The session's URL refuses a bearer token: every range was taken without one.
    assert!(
        ranges.iter().all(|r| r.status == 200 || r.status == 201),
        "{ranges:#?}"
    );
    assert_eq!(ranges.last().unwrap().status, 201);
    assert_eq!(
        log.iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/attachments"))
            .count(),
        1
    );
    assert_eq!(h.sim.open_upload_sessions(), 0);
    let drafts = h.sim.folder(&mailbox_address(0), "Drafts").unwrap();
    assert!(drafts.messages.is_empty(), "{drafts:?}");
    let (noted, accepted): (i64, i64) = sqlx::query_as(
        "SELECT count(graph_draft_id), count(*) FILTER (WHERE outcome = 'accepted') FROM sends",
    )
    .fetch_one(h.broker.store().pool())
    .await
    .unwrap();
    assert_eq!((noted, accepted), (1, 1));
    stop(h, token, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_above_the_configured_maximum_fails_with_the_reason_and_no_graph_call() {
    let mut h = Harness::new("graph-over-max", graph_pool()).await;
    h.settings.graph.max_send_bytes = 5 * 1024 * 1024;
    let (meta, mime) = rendered_with(
        "job-over",
        &[("application/pdf", "big.pdf", file_bytes(6 * 1024 * 1024, 3))],
    );
    publish_rendered(&h, &meta, &mime).await;
    let (token, task) = h.start_deliver().await;
    let dead = within(
        Duration::from_secs(60),
        "the message is dead-lettered",
        async {
            loop {
                let dead = h.dead_letters().await;
                if !dead.is_empty() {
                    return dead;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    let reason = &dead[0].0;
    assert!(
        reason.contains("deliver.graph.max_send_bytes") && reason.contains("message size limit"),
        "reason: {reason}"
    );
    // No request that writes: the Inbox reader's reads are all Graph saw.
    let writes: Vec<_> = h
        .sim
        .graph_requests()
        .into_iter()
        .filter(|r| r.method != "GET" && !r.path.contains("/mailFolders"))
        .collect();
    assert!(writes.is_empty(), "{writes:#?}");
    assert!(h.sim.accepted().is_empty());
    let sends: i64 = sqlx::query_scalar("SELECT count(*) FROM sends")
        .fetch_one(h.broker.store().pool())
        .await
        .unwrap();
    assert_eq!(sends, 0, "nothing on record as sent");
    stop(h, token, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_built_draft_left_by_an_earlier_send_is_deleted_and_built_again() {
    let h = Harness::new("graph-half-draft", graph_pool()).await;
    let pdf = file_bytes(4 * 1024 * 1024, 11);
    let (meta, mime) = rendered_with("job-half", &[("application/pdf", "a.pdf", pdf.clone())]);
    // What a crash in the middle of the uploads leaves: the draft of our Message-ID,
    // without its attachment.
    let (_, bare) = rendered_with("job-half", &[]);
    let stale = h.sim.file_draft(&mailbox_address(0), &bare);
    publish_rendered(&h, &meta, &mime).await;
    let (token, task) = h.start_deliver().await;
    wait_delivered(&h, 1).await;
    h.wait_accepted(1, Duration::from_secs(30)).await;

    assert_eq!(accepted_attachments(&h), vec![("a.pdf".to_owned(), pdf)]);
    let log = h.sim.graph_requests();
    assert!(
        log.iter().any(|r| r
            .path
            .contains(&format!("/messages/{stale}/permanentDelete"))
            && r.status == 204),
        "the stale draft was not deleted: {log:#?}"
    );
    assert!(
        !log.iter()
            .any(|r| r.path.contains(&format!("/messages/{stale}/send"))),
        "the half-built draft was sent"
    );
    let drafts = h.sim.folder(&mailbox_address(0), "Drafts").unwrap();
    assert!(drafts.messages.is_empty(), "{drafts:?}");
    stop(h, token, task).await;
}
