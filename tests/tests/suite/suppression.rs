//! The suppression list with the real binaries and the simulator: a suppressed address
//! never gets a RCPT (the others of its job get the mail), a job whose every recipient is
//! suppressed ends `suppressed` unsent, and a recipient Exchange refuses at RCPT with
//! `550 5.1.1` goes on the list (`rcpt_refused`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailpipe_tests::invoices::write_batch;
use mailpipe_tests::stack::{Binary, Stack, StackOptions};
use serde_json::Value;

const REFUSED: &str = "ap3-1@fabrikam.example";

async fn api(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(method, format!("{}{path}", stack.url(Binary::Ingest)))
        .bearer_auth(&stack.token);
    if let Some(body) = body {
        r = r
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressed_addresses_are_never_sent_to_and_rcpt_refusals_are_suppressed() {
    let opts = StackOptions {
        name: "suppress".into(),
        sim_extra: format!("[faults]\nrefuse_recipients = [{REFUSED:?}]\n"),
        ..StackOptions::default()
    };
    let stack = Stack::start(opts).await.expect("stack starts");
    // Job 0 goes to customer0 only (all suppressed); job 1 to customer1 and ap1-1 (one
    // suppressed); job 2 to customer2; job 3 to customer3 and ap3-1 (refused at RCPT).
    for address in ["customer0@fabrikam.example", "AP1-1@fabrikam.example"] {
        let (status, body) = api(
            &stack,
            reqwest::Method::PUT,
            &format!("/v1/suppressions/{address}"),
            Some(r#"{"reason":"hard bounce last month"}"#),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let jsonl = write_batch(&stack.attachments_root(), "sp", 4, |i| {
        if i % 2 == 1 { 2 } else { 1 }
    })
    .unwrap();
    assert_eq!(stack.post_batch("sp", jsonl, false).await.unwrap().0, 202);
    let done = stack
        .wait_batch_done("sp", 4, Duration::from_secs(120))
        .await
        .expect("the batch ends");
    assert_eq!(done["counts"]["suppressed"], 1, "{done}");
    assert_eq!(done["counts"]["delivered"], 3, "{done}");
    assert_eq!(done["finished"], true, "{done}");

    let accepted = stack.sim.accepted();
    let rcpts: Vec<String> = accepted
        .iter()
        .flat_map(|m| m.rcpt_to.iter().map(|r| r.to_ascii_lowercase()))
        .collect();
    for sent in [
        "customer1@fabrikam.example",
        "customer2@fabrikam.example",
        "customer3@fabrikam.example",
    ] {
        assert!(
            rcpts.iter().any(|r| r == sent),
            "{sent} got the mail: {rcpts:?}"
        );
    }
    // Every RCPT the simulator took is in an accepted message (every transaction here
    // completes), and the only one it refused is REFUSED's: so the suppressed addresses
    // never got a RCPT at all.
    for never in ["customer0@fabrikam.example", "ap1-1@fabrikam.example"] {
        assert!(
            !rcpts.iter().any(|r| r == never),
            "{never} was sent to: {rcpts:?}"
        );
    }
    let rcpt_refusals: Vec<_> = stack
        .sim
        .refusals()
        .into_iter()
        .filter(|r| r.command == "RCPT")
        .collect();
    assert_eq!(rcpt_refusals.len(), 1, "{rcpt_refusals:?}");
    assert_eq!(
        (rcpt_refusals[0].code, rcpt_refusals[0].enhanced.as_str()),
        (550, "5.1.1")
    );

    let (_, job) = api(&stack, reqwest::Method::GET, "/v1/jobs/sp-00000", None).await;
    assert_eq!(job["status"], "suppressed", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("customer0@fabrikam.example"),
        "{job}"
    );
    let (_, job) = api(&stack, reqwest::Method::GET, "/v1/jobs/sp-00001", None).await;
    assert_eq!(job["status"], "delivered", "{job}");
    assert_eq!(
        job["suppressed_recipients"][0]["address"], "ap1-1@fabrikam.example",
        "{job}"
    );

    // The RCPT refusal put the address on the list.
    let (_, list) = api(
        &stack,
        reqwest::Method::GET,
        "/v1/suppressions?source=rcpt_refused",
        None,
    )
    .await;
    let entries = list["suppressions"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["address"], REFUSED);
    assert_eq!(entries[0]["status"], "5.1.1");
    assert_eq!(entries[0]["job_id"], "sp-00003");
    stack.shutdown().await.unwrap();
}
