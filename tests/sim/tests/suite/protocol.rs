//! SMTP protocol handling (pipelining, dot-stuffing, RSET, several messages per connection,
//! bounded lines) and fault injection (reproducible from the seed).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use mailpipe_sim::FaultsConfig;

const CONFIG: &str = r#"
seed = 7
[[tenants]]
id = "contoso"
domains = ["contoso.example"]

[[apps]]
tenant = "contoso"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "contoso-secret"
mailboxes = ["*"]

[[mailboxes]]
address = "a@contoso.example"
tenant = "contoso"

[[mailboxes]]
address = "flaky@contoso.example"
tenant = "contoso"
[mailboxes.faults]
reply_451_rate = 1.0
"#;

async fn authed(sim: &mailpipe_sim::RunningSim, user: &str) -> Smtp {
    let tok = token(sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    Smtp::authed(sim, user, &tok).await
}

#[tokio::test]
async fn pipelined_transaction_and_several_messages_per_connection() {
    let sim = start(CONFIG).await;
    let mut s = authed(&sim, "a@contoso.example").await;
    // RFC 2920: MAIL, RCPT, RCPT, DATA in one write; replies come back in order.
    s.send(b"MAIL FROM:<a@contoso.example>\r\nRCPT TO:<x@fabrikam.example>\r\nRCPT TO:<y@fabrikam.example>\r\nDATA\r\n")
        .await;
    s.read_reply().await.unwrap().assert(250, "2.1.0");
    s.read_reply().await.unwrap().assert(250, "2.1.5");
    s.read_reply().await.unwrap().assert(250, "2.1.5");
    s.read_reply().await.unwrap().assert(354, "Start");
    s.send(b"From: a@contoso.example\r\nSubject: one\r\n\r\n..dot stuffed\r\n.\r\n")
        .await;
    s.read_reply().await.unwrap().assert(250, "2.0.0");

    // RSET drops a transaction in progress; the next one starts clean.
    s.cmd("MAIL FROM:<a@contoso.example>")
        .await
        .assert(250, "2.1.0");
    s.cmd("RCPT TO:<dropped@fabrikam.example>")
        .await
        .assert(250, "2.1.5");
    s.cmd("RSET").await.assert(250, "2.0.0");
    s.cmd("RCPT TO:<z@fabrikam.example>")
        .await
        .assert(503, "5.5.2");
    s.cmd("DATA").await.assert(503, "5.5.2");
    s.cmd("NOOP").await.assert(250, "2.0.0");
    s.send_mail(
        "a@contoso.example",
        &["z@fabrikam.example"],
        &message("a@contoso.example", "z@fabrikam.example", "two"),
    )
    .await
    .assert(250, "2.0.0");
    s.cmd("MAIL FROM:<a@contoso.example>")
        .await
        .assert(250, "2.1.0");
    s.cmd("MAIL FROM:<a@contoso.example>")
        .await
        .assert(503, "5.5.2");
    s.cmd("DATA").await.assert(503, "5.5.2");
    s.cmd("BOGUS").await.assert(500, "5.3.3");
    s.cmd("RCPT TO:no-at-sign").await.assert(501, "5.5.4");
    s.cmd("QUIT").await.assert(221, "2.0.0");

    let accepted = sim.accepted();
    assert_eq!(accepted.len(), 2);
    assert_eq!(
        accepted[0].rcpt_to,
        vec!["x@fabrikam.example", "y@fabrikam.example"]
    );
    assert_eq!(
        accepted[0].raw,
        b"From: a@contoso.example\r\nSubject: one\r\n\r\n.dot stuffed\r\n"
    );
    assert_eq!(accepted[1].rcpt_to, vec!["z@fabrikam.example"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn overlong_command_line_is_refused_and_session_continues() {
    let sim = start(CONFIG).await;
    let (mut s, _) = Smtp::connect(&sim).await;
    let long = format!("EHLO {}", "x".repeat(5000));
    s.cmd(&long).await.assert(500, "5.5.2");
    assert_eq!(s.cmd("EHLO ok.example").await.code, 250);
    sim.shutdown().await;
}

#[tokio::test]
async fn refused_recipient_and_451_and_421_faults() {
    let sim = start(CONFIG).await;
    sim.set_faults(FaultsConfig {
        refuse_recipients: vec!["nobody@fabrikam.example".into()],
        ..FaultsConfig::default()
    });
    let mut s = authed(&sim, "a@contoso.example").await;
    s.cmd("MAIL FROM:<a@contoso.example>")
        .await
        .assert(250, "2.1.0");
    let r = s.cmd("RCPT TO:<Nobody@fabrikam.example>").await;
    r.assert(550, "5.1.1");
    assert!(r.text().contains("RESOLVER.ADR.RecipNotFound"), "{r:?}");
    s.cmd("RCPT TO:<somebody@fabrikam.example>")
        .await
        .assert(250, "2.1.5");
    s.cmd("RSET").await;

    // Per-mailbox faults from the config: every message of flaky@ gets 451.
    let mut f = authed(&sim, "flaky@contoso.example").await;
    let body = message("flaky@contoso.example", "x@fabrikam.example", "f");
    f.send_mail("flaky@contoso.example", &["x@fabrikam.example"], &body)
        .await
        .assert(451, "4.7.0");
    f.send_mail("flaky@contoso.example", &["x@fabrikam.example"], &body)
        .await
        .assert(451, "4.7.0");

    // Runtime change: 421 and the connection closes.
    sim.set_faults(FaultsConfig {
        reply_421_rate: 1.0,
        ..FaultsConfig::default()
    });
    let body = message("a@contoso.example", "x@fabrikam.example", "g");
    s.send_mail("a@contoso.example", &["x@fabrikam.example"], &body)
        .await
        .assert(421, "4.3.2");
    assert!(s.read_reply().await.is_none());
    assert!(sim.accepted().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn drop_after_data_closes_without_reply() {
    let sim = start(CONFIG).await;
    sim.set_faults(FaultsConfig {
        drop_after_data_rate: 1.0,
        ..FaultsConfig::default()
    });
    let mut s = authed(&sim, "a@contoso.example").await;
    let r = s
        .send_mail(
            "a@contoso.example",
            &["x@fabrikam.example"],
            &message("a@contoso.example", "x@fabrikam.example", "d"),
        )
        .await;
    assert_eq!(r.code, 0, "expected the connection to drop, got {r:?}");
    let refusal = sim.refusals().pop().unwrap();
    assert_eq!(
        (refusal.code, refusal.mailbox.as_deref()),
        (0, Some("a@contoso.example"))
    );
    assert!(sim.accepted().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn silent_after_data_gives_no_reply_and_accepts_nothing() {
    let sim = start(CONFIG).await;
    sim.set_faults(FaultsConfig {
        silent_after_data_rate: 1.0,
        ..FaultsConfig::default()
    });
    let mut s = authed(&sim, "a@contoso.example").await;
    let body = message("a@contoso.example", "x@fabrikam.example", "s");
    let send = s.send_mail("a@contoso.example", &["x@fabrikam.example"], &body);
    // No reply ever comes; the client gives up.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), send)
            .await
            .is_err()
    );
    let refusal = sim.refusals().pop().unwrap();
    assert_eq!(
        (refusal.code, refusal.mailbox.as_deref()),
        (0, Some("a@contoso.example"))
    );
    assert!(refusal.text.contains("no reply after DATA"), "{refusal:?}");
    assert!(sim.accepted().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn slow_replies_are_delayed() {
    let sim = start(CONFIG).await;
    let mut s = authed(&sim, "a@contoso.example").await;
    // A delay long enough that a loopback NOOP on a loaded machine never takes as long
    // without it: the second assertion is a wide upper bound, not a speed figure.
    sim.set_faults(FaultsConfig {
        slow_reply_ms: 2_000,
        ..FaultsConfig::default()
    });
    let t = Instant::now();
    s.cmd("NOOP").await.assert(250, "2.0.0");
    assert!(
        t.elapsed() >= Duration::from_millis(2_000),
        "{:?}",
        t.elapsed()
    );
    sim.set_faults(FaultsConfig::default());
    let t = Instant::now();
    s.cmd("NOOP").await.assert(250, "2.0.0");
    assert!(
        t.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        t.elapsed()
    );
    sim.shutdown().await;
}

/// The same seed gives the same faults for the same sequence of messages; another seed
/// gives another sequence.
#[tokio::test]
async fn faults_are_reproducible_from_the_seed() {
    async fn codes(seed: u64) -> Vec<u16> {
        let sim = start(&CONFIG.replace("seed = 7", &format!("seed = {seed}"))).await;
        sim.set_faults(FaultsConfig {
            reply_451_rate: 0.5,
            ..FaultsConfig::default()
        });
        let mut s = authed(&sim, "a@contoso.example").await;
        let mut out = Vec::new();
        for i in 0..24 {
            let body = message("a@contoso.example", "x@fabrikam.example", &format!("s{i}"));
            out.push(
                s.send_mail("a@contoso.example", &["x@fabrikam.example"], &body)
                    .await
                    .code,
            );
        }
        sim.shutdown().await;
        out
    }
    let a = codes(7).await;
    assert_eq!(a, codes(7).await);
    assert!(a.contains(&250) && a.contains(&451), "{a:?}");
    assert_ne!(a, codes(8).await);
}
