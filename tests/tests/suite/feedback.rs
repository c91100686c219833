//! After Exchange says 250, with the real binaries and the simulator's Graph: non-delivery
//! reports read from the sending mailboxes end their jobs `bounced` with the report's code,
//! put the addresses on the suppression list (the next batch does not send to them), and
//! are each handled once, across a restart too; auto-replies and other mail are moved out of
//! the Inbox to `mailpipe-other`, untouched otherwise. An uncertain send (deliver killed while the simulator holds the 250) is settled
//! from the mailbox's Sent Items: delivered once, neither lost nor sent twice.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Binary, Stack, StackOptions};
use serde_json::Value;

/// Every pool mailbox of a default stack (2 tenants x 2 mailboxes).
fn mailboxes() -> Vec<String> {
    ["contoso", "fabrikam"]
        .iter()
        .flat_map(|t| (0..2).map(move |m| format!("sender{m}@{t}.example")))
        .collect()
}

async fn get(stack: &Stack, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}{path}", stack.url(Binary::Ingest)))
        .bearer_auth(&stack.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Messages in `folder` of every pool mailbox whose subject starts with `prefix`.
fn in_folder(stack: &Stack, folder: &str, prefix: &str) -> usize {
    mailboxes()
        .iter()
        .filter_map(|m| stack.sim.folder(m, folder))
        .flat_map(|f| f.messages)
        .filter(|m| m.subject.as_deref().unwrap_or_default().starts_with(prefix))
        .count()
}

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const AUTO_REPLY: &str = "From: Ann Example <customer1@fabrikam.example>\r\nTo: sender0@contoso.example\r\nSubject: Automatic reply: Invoice\r\nAuto-Submitted: auto-replied\r\nX-Auto-Response-Suppress: All\r\nMessage-ID: <ooo-1@fabrikam.example>\r\nContent-Type: text/plain\r\n\r\nI am out of the office until Monday.\r\n";
const CUSTOMER_MAIL: &str = "From: Bob Example <customer2@fabrikam.example>\r\nTo: sender0@contoso.example\r\nSubject: Question about my invoice\r\nMessage-ID: <q-1@fabrikam.example>\r\nContent-Type: text/plain\r\n\r\nWhy is the total higher this month?\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_end_their_jobs_suppress_the_addresses_and_are_handled_once() {
    let opts = StackOptions {
        name: "bounces".into(),
        graph_poll_ms: Some(1000),
        sim_extra: "[[bounces]]\nrecipient = \"customer3@fabrikam.example\"\nstatus = \"5.1.10\"\ndelay_ms = 1000\n\
                    [[bounces]]\nrecipient = \"customer7@fabrikam.example\"\nstatus = \"5.1.1\"\ndelay_ms = 1500\n"
            .into(),
        ..StackOptions::default()
    };
    let mut stack = Stack::start(opts).await.expect("stack starts");
    stack
        .sim
        .inject_inbox("sender0@contoso.example", AUTO_REPLY.as_bytes());
    stack
        .sim
        .inject_inbox("sender0@contoso.example", CUSTOMER_MAIL.as_bytes());

    let first = write_batch(&stack.attachments_root(), "oct", 10, |_| 1).unwrap();
    assert_eq!(stack.post_batch("oct", first, false).await.unwrap().0, 202);
    wait_for("two jobs bounced", Duration::from_secs(120), async || {
        stack.batch_status("oct").await.unwrap()["counts"]["bounced"] == 2
    })
    .await;
    let status = stack.batch_status("oct").await.unwrap();
    assert_eq!(status["counts"]["delivered"], 8, "{status}");
    for (job, code) in [("oct-00003", "5.1.10"), ("oct-00007", "5.1.1")] {
        let record = get(&stack, &format!("/v1/jobs/{job}")).await;
        assert_eq!(record["status"], "bounced", "{record}");
        let bounced: Vec<&Value> = record["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "bounced")
            .collect();
        assert_eq!(bounced.len(), 1, "one bounce recorded: {record}");
        let recipient = &bounced[0]["bounced_recipients"][0];
        assert_eq!(recipient["status"], code, "{record}");
        assert!(
            !recipient["diagnostic"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "the NDR's diagnostic text: {record}"
        );
    }
    let listed = get(&stack, "/v1/suppressions").await;
    let mut suppressed: Vec<&str> = listed["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap())
        .collect();
    suppressed.sort();
    assert_eq!(
        suppressed,
        ["customer3@fabrikam.example", "customer7@fabrikam.example"],
        "{listed}"
    );

    // Each NDR was moved out of the Inbox once; other mail to the other folder.
    wait_for("the Inboxes emptied", Duration::from_secs(30), async || {
        mailboxes()
            .iter()
            .filter_map(|m| stack.sim.folder(m, "inbox"))
            .all(|f| f.messages.is_empty())
    })
    .await;
    assert_eq!(in_folder(&stack, "mailpipe-bounces", "Undeliverable"), 2);
    assert_eq!(in_folder(&stack, "mailpipe-other", "Automatic reply"), 1);
    assert_eq!(in_folder(&stack, "mailpipe-other", "Question about"), 1);

    // A restart reads the Inboxes again: nothing is recorded twice.
    stack.restart_binary(Binary::Deliver).await.unwrap();

    // The next month's batch goes to the same addresses: not to the suppressed ones.
    let accepted_before = stack.sim.accepted().len();
    let second = write_batch(&stack.attachments_root(), "nov", 10, |_| 1).unwrap();
    assert_eq!(stack.post_batch("nov", second, false).await.unwrap().0, 202);
    let done = stack
        .wait_batch_done("nov", 10, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(done["counts"]["delivered"], 8, "{done}");
    assert_eq!(done["counts"]["suppressed"], 2, "{done}");
    let rcpts: Vec<String> = stack.sim.accepted()[accepted_before..]
        .iter()
        .flat_map(|m| m.rcpt_to.clone())
        .collect();
    assert_eq!(rcpts.len(), 8, "{rcpts:?}");
    for dead in ["customer3@fabrikam.example", "customer7@fabrikam.example"] {
        assert!(!rcpts.iter().any(|r| r == dead), "sent to {dead} again");
    }
    for job in ["oct-00003", "oct-00007"] {
        let record = get(&stack, &format!("/v1/jobs/{job}")).await;
        let bounces = record["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "bounced")
            .count();
        assert_eq!(bounces, 1, "handled once across the restart: {record}");
    }
    assert_eq!(in_folder(&stack, "mailpipe-bounces", "Undeliverable"), 2);
    assert_eq!(in_folder(&stack, "mailpipe-other", "Automatic reply"), 1);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncertain_send_is_settled_from_sent_items_without_loss_or_duplicate() {
    let opts = StackOptions {
        name: "sentitems".into(),
        graph_poll_ms: Some(1000),
        // The 250 is held far longer than deliver waits here: deliver is killed meanwhile.
        sim_extra: "[faults]\naccepted_reply_delay_ms = 120000\n".into(),
        smtp_timeout_ms: 60_000,
        deliver_extra: "lease_ttl_ms = 2000\n".into(),
        ..StackOptions::default()
    };
    let mut stack = Stack::start(opts).await.expect("stack starts");
    let batch = write_batch(&stack.attachments_root(), "held", 1, |_| 1).unwrap();
    assert_eq!(stack.post_batch("held", batch, false).await.unwrap().0, 202);
    wait_for(
        "the simulator took the message",
        Duration::from_secs(60),
        async || !stack.sim.accepted().is_empty(),
    )
    .await;
    // The server has it (and filed it in Sent Items); deliver never saw the 250.
    stack.kill_binary(Binary::Deliver).await.unwrap();
    stack.start_binary(Binary::Deliver).await.unwrap();

    let done = stack
        .wait_batch_done("held", 1, Duration::from_secs(120))
        .await
        .expect("the uncertain send is settled from Sent Items");
    assert_eq!(done["counts"]["delivered"], 1, "{done}");
    let record = get(&stack, "/v1/jobs/held-00000").await;
    let delivered = record["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "delivered")
        .cloned()
        .unwrap();
    assert!(
        delivered["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("Sent Items"),
        "{record}"
    );
    // The message comes back from the retry ladder meanwhile: it is not sent again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(stack.sim.accepted().len(), 1, "sent twice");
    stack.shutdown().await.unwrap();
}
