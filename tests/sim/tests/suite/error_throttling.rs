//! Exchange's continuous error throttling: repeated failed AUTHs lock a mailbox out (535 5.7.3
//! whatever it presents), repeated unknown recipients throttle its sending (550 5.2.255), each
//! for `block_ms`; every failed AUTH is recorded with its mailbox and instant.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::*;

const CONFIG: &str = r#"
[error_throttling]
auth_failures = 3
invalid_recipients = 2
window_ms = 60000
block_ms = 1500

[faults]
refuse_recipients = ["nobody@fabrikam.example"]

[[tenants]]
id = "contoso"
domains = ["contoso.example"]

[[mailboxes]]
address = "a@contoso.example"
tenant = "contoso"
password = "pw-a"

[[mailboxes]]
address = "b@contoso.example"
tenant = "contoso"
password = "pw-b"
"#;

#[tokio::test]
async fn repeated_failed_auths_lock_the_mailbox_out_for_the_block_time() {
    let sim = start(CONFIG).await;
    let mut s = Smtp::tls(&sim).await;
    for _ in 0..3 {
        s.auth_login("a@contoso.example", "wrong")
            .await
            .assert(535, "5.7.3");
    }
    // Locked out: the right password is refused too; another mailbox is not affected.
    s.auth_login("a@contoso.example", "pw-a")
        .await
        .assert(535, "5.7.3");
    s.auth_login("b@contoso.example", "pw-b")
        .await
        .assert(235, "2.7.0");

    let failures = sim.auth_failures();
    assert_eq!(failures.len(), 4, "{failures:?}");
    assert!(
        failures
            .iter()
            .all(|f| f.mailbox.as_deref() == Some("a@contoso.example") && f.code == 535),
        "{failures:?}"
    );
    let throttled: Vec<bool> = failures.iter().map(|f| f.throttled).collect();
    assert_eq!(throttled, [false, false, false, true]);
    assert!(failures.windows(2).all(|w| w[0].at <= w[1].at));

    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let mut s = Smtp::tls(&sim).await;
    s.auth_login("a@contoso.example", "pw-a")
        .await
        .assert(235, "2.7.0");
    sim.shutdown().await;
}

#[tokio::test]
async fn repeated_invalid_recipients_throttle_sending_with_5_2_255() {
    let sim = start(CONFIG).await;
    let mut s = Smtp::tls(&sim).await;
    s.auth_login("a@contoso.example", "pw-a")
        .await
        .assert(235, "2.7.0");
    s.cmd("MAIL FROM:<a@contoso.example>")
        .await
        .assert(250, "2.1.0");
    for _ in 0..2 {
        s.cmd("RCPT TO:<nobody@fabrikam.example>")
            .await
            .assert(550, "5.1.1");
    }
    s.cmd("RSET").await;
    let r = s.cmd("MAIL FROM:<a@contoso.example>").await;
    r.assert(550, "5.2.255");
    assert!(r.text().contains("Sender throttled"), "{r:?}");
    let refused = sim.refusals();
    assert!(
        refused
            .iter()
            .any(|r| r.enhanced == "5.2.255" && r.mailbox.as_deref() == Some("a@contoso.example")),
        "{refused:?}"
    );

    tokio::time::sleep(Duration::from_millis(1_700)).await;
    s.cmd("MAIL FROM:<a@contoso.example>")
        .await
        .assert(250, "2.1.0");
    sim.shutdown().await;
}
