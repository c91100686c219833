//! Each Exchange limit refuses at exactly the configured point, with Exchange's reply, and
//! rolling windows slide (they are not fixed buckets).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use mailpipe_sim::RunningSim;

/// contoso: internal domain contoso.example; `a@` gets the limits under test.
fn config(mailbox_limits: &str, tenant_extra: &str) -> String {
    format!(
        r#"
[[tenants]]
id = "contoso"
domains = ["contoso.example"]
{tenant_extra}

[[apps]]
tenant = "contoso"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "contoso-secret"
mailboxes = ["*"]

[[mailboxes]]
address = "a@contoso.example"
tenant = "contoso"
send_as = ["billing@contoso.example"]
[mailboxes.limits]
{mailbox_limits}

[[mailboxes]]
address = "b@contoso.example"
tenant = "contoso"
"#
    )
}

async fn session(sim: &RunningSim, user: &str) -> Smtp {
    let tok = token(sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    Smtp::authed(sim, user, &tok).await
}

async fn send_one(s: &mut Smtp, n: usize) -> Reply {
    s.send_mail(
        "a@contoso.example",
        &["x@fabrikam.example"],
        &message("a@contoso.example", "x@fabrikam.example", &format!("m{n}")),
    )
    .await
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
}

#[tokio::test]
async fn message_rate_window_slides() {
    // 3 messages per 2 s window.
    let sim = start(&config(
        "messages_per_window = 3\nmessage_window_ms = 2000",
        "",
    ))
    .await;
    let mut s = session(&sim, "a@contoso.example").await;
    let t0 = Instant::now();
    send_one(&mut s, 1).await.assert(250, "2.0.0");
    sleep_until(t0 + Duration::from_millis(1000)).await;
    send_one(&mut s, 2).await.assert(250, "2.0.0");
    send_one(&mut s, 3).await.assert(250, "2.0.0");
    // 4th inside the window: throttled, and the server closes the connection after 421.
    let r = send_one(&mut s, 4).await;
    r.assert(421, "4.4.2");
    assert!(
        r.text()
            .contains("Message submission rate for this client has exceeded the configured limit"),
        "{r:?}"
    );
    assert!(
        s.read_reply().await.is_none(),
        "connection must be closed after 421"
    );

    // At t0+2.2 s message 1 has left the window, messages 2 and 3 have not: one slot.
    sleep_until(t0 + Duration::from_millis(2200)).await;
    let mut s = session(&sim, "a@contoso.example").await;
    send_one(&mut s, 5).await.assert(250, "2.0.0");
    let mut s = session(&sim, "a@contoso.example").await;
    send_one(&mut s, 6).await.assert(421, "4.4.2");
    // A fixed 2 s bucket would have reset at t0+2 s; the rolling window frees 2 more only
    // once messages 2 and 3 are 2 s old.
    sleep_until(t0 + Duration::from_millis(3200)).await;
    let mut s = session(&sim, "a@contoso.example").await;
    send_one(&mut s, 7).await.assert(250, "2.0.0");
    send_one(&mut s, 8).await.assert(250, "2.0.0");

    let stats = sim.mailbox("a@contoso.example").unwrap();
    assert_eq!(stats.accepted, 6);
    assert_eq!(stats.max_messages_in_window, 3);
    let throttled: Vec<_> = sim
        .refusals()
        .into_iter()
        .filter(|r| r.enhanced == "4.4.2")
        .collect();
    assert_eq!(throttled.len(), 2);
    assert_eq!(throttled[0].mailbox.as_deref(), Some("a@contoso.example"));
    // Other mailboxes are not affected.
    let mut s = session(&sim, "b@contoso.example").await;
    s.send_mail(
        "b@contoso.example",
        &["x@fabrikam.example"],
        &message("b@contoso.example", "x@fabrikam.example", "b"),
    )
    .await
    .assert(250, "2.0.0");
    sim.shutdown().await;
}

#[tokio::test]
async fn recipient_window_refuses_with_554_5_2_0_then_slides() {
    let sim = start(&config(
        "recipients_per_window = 5\nrecipient_window_ms = 1500",
        "",
    ))
    .await;
    let mut s = session(&sim, "a@contoso.example").await;
    let body = message("a@contoso.example", "r1@fabrikam.example", "r");
    let t0 = Instant::now();
    s.send_mail(
        "a@contoso.example",
        &[
            "r1@fabrikam.example",
            "r2@contoso.example",
            "r3@fabrikam.example",
        ],
        &body,
    )
    .await
    .assert(250, "2.0.0");
    // 3 + 3 > 5: refused at the end of DATA, and not counted.
    let r = s
        .send_mail(
            "a@contoso.example",
            &[
                "r4@fabrikam.example",
                "r5@fabrikam.example",
                "r6@fabrikam.example",
            ],
            &body,
        )
        .await;
    r.assert(554, "5.2.0");
    assert!(
        r.text().contains("SubmissionQuotaExceededException"),
        "{r:?}"
    );
    // 3 + 2 = 5: exactly the limit is allowed.
    s.send_mail(
        "a@contoso.example",
        &["r4@fabrikam.example", "r5@fabrikam.example"],
        &body,
    )
    .await
    .assert(250, "2.0.0");
    s.send_mail("a@contoso.example", &["r6@fabrikam.example"], &body)
        .await
        .assert(554, "5.2.0");
    sleep_until(t0 + Duration::from_millis(1700)).await;
    // The first message's 3 recipients have left the window (the second's 2 have not).
    s.send_mail(
        "a@contoso.example",
        &[
            "r7@fabrikam.example",
            "r8@fabrikam.example",
            "r9@fabrikam.example",
        ],
        &body,
    )
    .await
    .assert(250, "2.0.0");
    let stats = sim.mailbox("a@contoso.example").unwrap();
    assert_eq!(
        (
            stats.accepted,
            stats.recipients_accepted,
            stats.max_recipients_in_window
        ),
        (3, 8, 5)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn connection_cap_gives_432_at_auth() {
    let sim = start(&config("max_connections = 3", "")).await;
    let tok = token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Smtp::authed(&sim, "a@contoso.example", &tok).await);
    }
    let mut fourth = Smtp::tls(&sim).await;
    let r = fourth.auth_xoauth2("a@contoso.example", &tok).await;
    r.assert(432, "4.3.2");
    assert!(
        r.text()
            .contains("STOREDRV.ClientSubmit; sender thread limit exceeded"),
        "{r:?}"
    );
    // Another mailbox is not limited by a@'s connections.
    Smtp::authed(&sim, "b@contoso.example", &tok).await;
    // Closing one frees a slot (the server notices the close asynchronously).
    let mut closing = held.pop().unwrap();
    closing.cmd("QUIT").await.assert(221, "2.0.0");
    drop(closing);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = fourth.auth_xoauth2("a@contoso.example", &tok).await;
        if r.code == 235 {
            break;
        }
        r.assert(432, "4.3.2");
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = sim.mailbox("a@contoso.example").unwrap();
    assert_eq!(stats.max_concurrent_connections, 3);
    assert_eq!(stats.current_connections, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn recipients_per_message_cap_gives_452_on_the_extra_rcpt() {
    let sim = start(&config("max_recipients_per_message = 3", "")).await;
    let mut s = session(&sim, "a@contoso.example").await;
    s.cmd("MAIL FROM:<a@contoso.example>")
        .await
        .assert(250, "2.1.0");
    for i in 1..=3 {
        s.cmd(&format!("RCPT TO:<r{i}@fabrikam.example>"))
            .await
            .assert(250, "2.1.5");
    }
    s.cmd("RCPT TO:<r4@fabrikam.example>")
        .await
        .assert(452, "4.5.3");
    s.cmd("DATA").await.assert(354, "Start");
    s.send(dot_stuff(&message("a@contoso.example", "r1@fabrikam.example", "cap")).as_bytes())
        .await;
    s.send(b".\r\n").await;
    s.read_reply().await.unwrap().assert(250, "2.0.0");
    assert_eq!(sim.accepted()[0].rcpt_to.len(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn message_size_cap_gives_552_5_3_4() {
    let sim = start(&config("max_message_size = 1000", "")).await;
    let mut s = session(&sim, "a@contoso.example").await;
    // Declared too big: refused at MAIL.
    s.cmd("MAIL FROM:<a@contoso.example> SIZE=1001")
        .await
        .assert(552, "5.3.4");
    s.cmd("MAIL FROM:<a@contoso.example> SIZE=1000")
        .await
        .assert(250, "2.1.0");
    s.cmd("RSET").await.assert(250, "2.0.0");
    // Actually too big: refused after DATA.
    let mut big = message("a@contoso.example", "x@fabrikam.example", "big");
    big.push_str(&"0123456789".repeat(100));
    big.push_str("\r\n");
    let r = s
        .send_mail("a@contoso.example", &["x@fabrikam.example"], &big)
        .await;
    r.assert(552, "5.3.4");
    assert!(
        r.text()
            .contains("Message size exceeds fixed maximum message size"),
        "{r:?}"
    );
    // A small one still goes through on the same connection.
    send_one(&mut s, 1).await.assert(250, "2.0.0");
    // EHLO after AUTH advertises the mailbox's size.
    let ehlo = s.cmd("EHLO client.example").await;
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 1000"), "{ehlo:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn send_as_envelope_and_header() {
    let sim = start(&config("", "")).await;
    let mut s = session(&sim, "a@contoso.example").await;
    // Envelope sender not allowed.
    let r = s.cmd("MAIL FROM:<ceo@contoso.example>").await;
    r.assert(550, "5.7.60");
    assert!(
        r.text()
            .contains("Client does not have permissions to send as this sender"),
        "{r:?}"
    );
    // Envelope allowed, From header not: 554 5.2.252 after DATA.
    let r = s
        .send_mail(
            "a@contoso.example",
            &["x@fabrikam.example"],
            &message("CEO <ceo@contoso.example>", "x@fabrikam.example", "s"),
        )
        .await;
    r.assert(554, "5.2.252");
    assert!(
        r.text()
            .contains("SendAsDenied; a@contoso.example not allowed to send as ceo@contoso.example"),
        "{r:?}"
    );
    // Send As right: both envelope and header may use billing@.
    s.send_mail(
        "billing@contoso.example",
        &["x@fabrikam.example"],
        &message(
            "\"Contoso Billing\" <Billing@contoso.example>",
            "x@fabrikam.example",
            "ok",
        ),
    )
    .await
    .assert(250, "2.0.0");
    // b@ has no Send As rights on billing@.
    let mut s = session(&sim, "b@contoso.example").await;
    s.cmd("MAIL FROM:<billing@contoso.example>")
        .await
        .assert(550, "5.7.60");
    assert_eq!(sim.accepted().len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn tenant_external_recipient_limit_gives_550_5_7_233() {
    let sim = start(&config(
        "",
        "external_recipient_limit = 3\nexternal_window_ms = 1500",
    ))
    .await;
    let mut a = session(&sim, "a@contoso.example").await;
    let mut b = session(&sim, "b@contoso.example").await;
    let body = message("a@contoso.example", "x@fabrikam.example", "t");
    let t0 = Instant::now();
    // 2 external + 2 internal: only the external ones count.
    a.send_mail(
        "a@contoso.example",
        &[
            "x1@fabrikam.example",
            "x2@fabrikam.example",
            "i1@contoso.example",
            "i2@contoso.example",
        ],
        &body,
    )
    .await
    .assert(250, "2.0.0");
    // The limit is per tenant: b@ shares it. 2 + 2 > 3.
    let body_b = message("b@contoso.example", "x@fabrikam.example", "t");
    b.send_mail(
        "b@contoso.example",
        &["x3@fabrikam.example", "x4@tailspin.example"],
        &body_b,
    )
    .await
    .assert(550, "5.7.233");
    // Internal-only mail is never limited by it.
    b.send_mail("b@contoso.example", &["i3@contoso.example"], &body_b)
        .await
        .assert(250, "2.0.0");
    b.send_mail("b@contoso.example", &["x3@fabrikam.example"], &body_b)
        .await
        .assert(250, "2.0.0");
    a.send_mail("a@contoso.example", &["x5@fabrikam.example"], &body)
        .await
        .assert(550, "5.7.233");
    sleep_until(t0 + Duration::from_millis(1700)).await;
    a.send_mail(
        "a@contoso.example",
        &["x5@fabrikam.example", "x6@fabrikam.example"],
        &body,
    )
    .await
    .assert(250, "2.0.0");
    sim.shutdown().await;
}

#[tokio::test]
async fn limits_can_be_switched_off() {
    let toml = format!(
        "limits_enabled = false\n{}",
        config(
            "messages_per_window = 1\nmax_recipients_per_message = 1\nmax_connections = 1",
            "external_recipient_limit = 1"
        )
    );
    let sim = start(&toml).await;
    let tok = token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    let mut s1 = Smtp::authed(&sim, "a@contoso.example", &tok).await;
    let mut s2 = Smtp::authed(&sim, "a@contoso.example", &tok).await;
    for i in 0..5 {
        let s = if i % 2 == 0 { &mut s1 } else { &mut s2 };
        s.send_mail(
            "a@contoso.example",
            &["x@fabrikam.example", "y@fabrikam.example"],
            &message("a@contoso.example", "x@fabrikam.example", "u"),
        )
        .await
        .assert(250, "2.0.0");
    }
    assert_eq!(sim.accepted().len(), 5);
    assert!(sim.refusals().is_empty(), "{:?}", sim.refusals());
    // Send As still applies: it is not a rate limit.
    s1.cmd("MAIL FROM:<ceo@contoso.example>")
        .await
        .assert(550, "5.7.60");
    sim.shutdown().await;
}
