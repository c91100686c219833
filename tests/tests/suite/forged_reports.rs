//! Which reports are trusted, with the real binaries and the simulator's Graph Inbox: four
//! reports an outsider (or a recipient) can put into a pool mailbox's Inbox, none of which
//! may bounce a job or suppress an address. Each lands in the untrusted folder, is counted
//! `untrusted`, and changes nothing: the jobs stay `delivered`, nobody is suppressed, no
//! `job.bounced` webhook is recorded. The tenant's own NDR for a real bounce still counts
//! (tests/tests/suite/feedback.rs).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailpipe_common::store::Store;
use mailpipe_sim::{AcceptedMessage, FailedRecipient};
use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Binary, Stack, StackOptions};
use serde_json::Value;

const UNTRUSTED: &str = "mailpipe-untrusted";

/// The message the simulator accepted for `rcpt`.
fn sent_to(stack: &Stack, rcpt: &str) -> AcceptedMessage {
    stack
        .sim
        .accepted()
        .into_iter()
        .find(|m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(rcpt)))
        .unwrap_or_else(|| panic!("nothing was sent to {rcpt}"))
}

/// The Message-ID of a raw message.
fn message_id(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("message-id")
                .then(|| value.trim().to_owned())
        })
        .expect("a Message-ID")
}

fn domain(mailbox: &str) -> &str {
    mailbox.rsplit_once('@').unwrap().1
}

/// An RFC 3464 report from a mailer daemon that names `victim` and no original at all.
fn dsn_without_original(mailbox: &str, victim: &str) -> Vec<u8> {
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@attacker.example>\r\nTo: {mailbox}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <forged-1@attacker.example>\r\n\
         Auto-Submitted: auto-replied\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n\
         --B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
         --B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.attacker.example\r\n\r\n\
         Final-Recipient: rfc822; {victim}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n--B--\r\n"
    )
    .into_bytes()
}

/// A prose bounce, as qmail or a hand writes it.
fn prose_undeliverable(mailbox: &str, victim: &str) -> Vec<u8> {
    format!(
        "From: postmaster@attacker.example\r\nTo: {mailbox}\r\nSubject: Undeliverable: Invoice\r\n\
         Message-ID: <forged-2@attacker.example>\r\nContent-Type: text/plain\r\n\r\n\
         Delivery has failed to these recipients or groups:\r\n\r\n\
         {victim}\r\n550 5.1.1 The email address couldn't be found.\r\n"
    )
    .into_bytes()
}

/// An NDR in Exchange's own shape, claiming to be internal, linked to the original only by
/// `In-Reply-To`, naming the cc co-recipient. Exchange's header firewall strips the claim.
fn in_reply_to_only(mailbox: &str, original_id: &str, cc: &str) -> Vec<u8> {
    format!(
        "From: Microsoft Outlook <postmaster@{domain}>\r\nTo: <{mailbox}>\r\n\
         Subject: Undeliverable: Invoice\r\nMessage-ID: <forged-3@attacker.example>\r\n\
         In-Reply-To: {original_id}\r\nReferences: {original_id}\r\n\
         X-MS-Exchange-Message-Is-Ndr: \r\nX-MS-Exchange-Organization-AuthAs: Internal\r\n\
         Auto-Submitted: auto-replied\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n\
         --B\r\nContent-Type: text/plain\r\n\r\nDelivery has failed to these recipients or groups:\r\n\
         --B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns;attacker.example\r\n\r\n\
         Original-Recipient: rfc822;{cc}\r\nFinal-Recipient: rfc822;{cc}\r\nAction: failed\r\n\
         Status: 5.1.10\r\nDiagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound\r\n\r\n--B--\r\n",
        domain = domain(mailbox),
    )
    .into_bytes()
}

async fn job_status(stack: &Stack, job: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/v1/jobs/{job}", stack.url(Binary::Ingest)))
        .bearer_auth(&stack.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn untrusted_counted(stack: &Stack) -> u64 {
    let text = reqwest::get(format!("{}/metrics", stack.url(Binary::Deliver)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("mailpipe_deliver_bounce_reports_total{outcome=\"untrusted\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn in_folder(stack: &Stack, folder: &str) -> usize {
    stack
        .mailboxes
        .iter()
        .filter_map(|m| stack.sim.folder(&m.address, folder))
        .map(|f| f.messages.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_reports_change_nothing_and_are_left_for_a_person() {
    let opts = StackOptions {
        name: "forged".into(),
        graph_poll_ms: Some(1000),
        ..StackOptions::default()
    };
    let stack = Stack::start(opts).await.expect("stack starts");
    // fr-00000 to customer0 with ap0-1 in cc; fr-00001 to customer1; fr-00002 to customer2.
    let jsonl = write_batch(&stack.attachments_root(), "fr", 3, |i| {
        if i == 0 { 2 } else { 1 }
    })
    .unwrap();
    assert_eq!(stack.post_batch("fr", jsonl, false).await.unwrap().0, 202);
    let done = stack
        .wait_batch_done("fr", 3, Duration::from_secs(120))
        .await
        .expect("the batch ends");
    assert_eq!(done["counts"]["delivered"], 3, "{done}");

    let first = sent_to(&stack, "customer0@fabrikam.example");
    let second = sent_to(&stack, "customer1@fabrikam.example");
    let third = sent_to(&stack, "customer2@fabrikam.example");
    // 1. RFC 3464 from MAILER-DAEMON@attacker.example, no Message-ID of ours.
    stack.sim.deliver_from_internet(
        &third.mailbox,
        &dsn_without_original(&third.mailbox, "customer2@fabrikam.example"),
    );
    // 2. A prose "Undeliverable:" from postmaster@attacker.example.
    stack.sim.deliver_from_internet(
        &second.mailbox,
        &prose_undeliverable(&second.mailbox, "customer1@fabrikam.example"),
    );
    // 3. In-Reply-To the first invoice's Message-ID, naming its cc co-recipient.
    stack.sim.deliver_from_internet(
        &first.mailbox,
        &in_reply_to_only(
            &first.mailbox,
            &message_id(&first.raw),
            "ap0-1@fabrikam.example",
        ),
    );
    // 4. The tenant's own NDR about the first invoice, naming the second's recipient.
    stack.sim.file_tenant_ndr(
        &first.mailbox,
        &first.raw,
        &[FailedRecipient {
            address: "customer1@fabrikam.example".into(),
            status: "5.1.10".into(),
            diagnostic: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup".into(),
        }],
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while in_folder(&stack, UNTRUSTED) < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the four reports were not moved to {UNTRUSTED}: {} there, {} in the bounce folder",
            in_folder(&stack, UNTRUSTED),
            in_folder(&stack, "mailpipe-bounces"),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(in_folder(&stack, UNTRUSTED), 4);
    assert_eq!(in_folder(&stack, "mailpipe-bounces"), 0);
    assert_eq!(untrusted_counted(&stack).await, 4);

    for job in ["fr-00000", "fr-00001", "fr-00002"] {
        let record = job_status(&stack, job).await;
        assert_eq!(record["status"], "delivered", "{record}");
    }
    let listed: Value = reqwest::Client::new()
        .get(format!("{}/v1/suppressions", stack.url(Binary::Ingest)))
        .bearer_auth(&stack.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["suppressions"].as_array().unwrap().len(),
        0,
        "{listed}"
    );
    let store = Store::new(&stack.database, tokio_util::sync::CancellationToken::new()).unwrap();
    let (hooks,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM webhook_events WHERE type = 'job.bounced'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(hooks, 0, "a job.bounced webhook was recorded");
    let (untrusted,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM handled_reports WHERE outcome = 'untrusted'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(untrusted, 4);
    store.close().await;
    stack.shutdown().await.unwrap();
}
