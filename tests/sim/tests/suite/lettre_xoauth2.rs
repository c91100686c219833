//! lettre (the client mailpipe's deliver uses) against the simulator: STARTTLS with the
//! simulator's CA, XOAUTH2 with a token fetched from the simulated Entra endpoint.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::*;
use lettre::message::Mailbox as LettreMailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use mailpipe_sim::RunningSim;

const CONFIG: &str = r#"
[[tenants]]
id = "contoso"
domains = ["contoso.example"]

[[apps]]
tenant = "contoso"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "contoso-secret"
mailboxes = ["*"]

[[apps]]
tenant = "contoso"
client_id = "short-lived"
client_secret = "s"
mailboxes = ["a@contoso.example"]
token_lifetime_secs = 1

[[apps]]
tenant = "contoso"
client_id = "only-b"
client_secret = "b"
mailboxes = ["b@contoso.example"]

[[mailboxes]]
address = "a@contoso.example"
tenant = "contoso"
send_as = ["billing@contoso.example"]

[[mailboxes]]
address = "b@contoso.example"
tenant = "contoso"
"#;

fn transport(sim: &RunningSim, user: &str, token: &str) -> AsyncSmtpTransport<Tokio1Executor> {
    let cert = Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap();
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(cert)
        .build_rustls()
        .unwrap();
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(sim.smtp_addr().port())
        .tls(Tls::Required(tls))
        .authentication(vec![Mechanism::Xoauth2])
        .credentials(Credentials::new(user.to_owned(), token.to_owned()))
        .timeout(Some(Duration::from_secs(10)))
        .build()
}

fn invoice(from: &str, to: &str) -> Message {
    Message::builder()
        .from(from.parse::<LettreMailbox>().unwrap())
        .to(to.parse::<LettreMailbox>().unwrap())
        .subject("Invoice 42")
        .body(String::from(
            "Please find your invoice.\r\n.leading dot line\r\n",
        ))
        .unwrap()
}

#[tokio::test]
async fn lettre_sends_with_xoauth2_and_message_is_recorded() {
    let sim = start(CONFIG).await;
    let tok = token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    let t = transport(&sim, "a@contoso.example", &tok);
    let resp = t
        .send(invoice(
            "Billing <billing@contoso.example>",
            "customer@fabrikam.example",
        ))
        .await
        .unwrap();
    assert_eq!(resp.code().to_string(), "250");

    let accepted = sim.accepted();
    assert_eq!(accepted.len(), 1);
    let m = &accepted[0];
    assert_eq!(m.mailbox, "a@contoso.example");
    assert_eq!(m.mail_from, "billing@contoso.example");
    assert_eq!(m.rcpt_to, vec!["customer@fabrikam.example".to_owned()]);
    let raw = String::from_utf8_lossy(&m.raw);
    assert!(raw.contains("Subject: Invoice 42"), "{raw}");
    // lettre dot-stuffs; the simulator must have removed the stuffing again.
    assert!(raw.contains("\r\n.leading dot line\r\n"), "{raw}");
    let stats = sim.mailbox("a@contoso.example").unwrap();
    assert_eq!((stats.accepted, stats.recipients_accepted), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_token_is_refused_with_535_5_7_3() {
    let sim = start(CONFIG).await;
    let tok = token(&sim, "contoso", "short-lived", "s").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = transport(&sim, "a@contoso.example", &tok)
        .send(invoice("a@contoso.example", "x@fabrikam.example"))
        .await
        .expect_err("expired token must be refused");
    assert_eq!(
        err.status().map(|c| c.to_string()).as_deref(),
        Some("535"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("5.7.3 Authentication unsuccessful"),
        "{err}"
    );
    assert!(sim.accepted().is_empty());
    let refusal = sim
        .refusals()
        .into_iter()
        .find(|r| r.code == 535)
        .expect("refusal recorded");
    assert_eq!(refusal.enhanced, "5.7.3");
    assert_eq!(refusal.mailbox.as_deref(), Some("a@contoso.example"));
    sim.shutdown().await;
}

#[tokio::test]
async fn token_of_app_not_granted_the_mailbox_is_refused() {
    let sim = start(CONFIG).await;
    let tok = token(&sim, "contoso", "only-b", "b").await;
    let err = transport(&sim, "a@contoso.example", &tok)
        .send(invoice("a@contoso.example", "x@fabrikam.example"))
        .await
        .expect_err("app not granted a@");
    assert_eq!(
        err.status().map(|c| c.to_string()).as_deref(),
        Some("535"),
        "{err}"
    );
    // The same token works for the mailbox it was granted.
    transport(&sim, "b@contoso.example", &tok)
        .send(invoice("b@contoso.example", "x@fabrikam.example"))
        .await
        .unwrap();
    // A made-up token never works.
    let err = transport(&sim, "b@contoso.example", "not-a-token")
        .send(invoice("b@contoso.example", "x@fabrikam.example"))
        .await
        .expect_err("unknown token");
    assert_eq!(
        err.status().map(|c| c.to_string()).as_deref(),
        Some("535"),
        "{err}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn refreshed_token_works_after_expire_tokens() {
    let sim = start(CONFIG).await;
    let tok = token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    sim.expire_tokens();
    let err = transport(&sim, "a@contoso.example", &tok)
        .send(invoice("a@contoso.example", "x@fabrikam.example"))
        .await
        .expect_err("expired");
    assert!(err.to_string().contains("5.7.3"), "{err}");
    let fresh = token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    transport(&sim, "a@contoso.example", &fresh)
        .send(invoice("a@contoso.example", "x@fabrikam.example"))
        .await
        .unwrap();
    assert_eq!(sim.accepted().len(), 1);
    sim.shutdown().await;
}
