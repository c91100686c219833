//! STARTTLS and AUTH as Exchange Online does them: what EHLO advertises before and after
//! TLS, 530 5.7.57 without TLS/AUTH, old TLS versions refused at the handshake, password
//! auth with the tenant switch (5.7.139), blocked tenants (5.7.708).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
[[tenants]]
id = "contoso"
domains = ["contoso.example"]
basic_auth_enabled = true

[[tenants]]
id = "fabrikam"
domains = ["fabrikam.example"]
basic_auth_enabled = false

[[apps]]
tenant = "contoso"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "contoso-secret"
mailboxes = ["*"]

[[mailboxes]]
address = "a@contoso.example"
tenant = "contoso"
password = "pw-a"

[[mailboxes]]
address = "nosmtp@contoso.example"
tenant = "contoso"
password = "pw-n"
smtp_auth_enabled = false

[[mailboxes]]
address = "f@fabrikam.example"
tenant = "fabrikam"
password = "pw-f"
"#;

#[tokio::test]
async fn greeting_and_ehlo_before_and_after_tls() {
    let sim = start(CONFIG).await;
    let (mut s, greeting) = Smtp::connect(&sim).await;
    assert_eq!(greeting.code, 220);
    assert!(
        greeting
            .text()
            .contains("Microsoft ESMTP MAIL Service ready"),
        "{greeting:?}"
    );

    let ehlo = s.cmd("EHLO client.example").await;
    assert_eq!(ehlo.code, 250);
    for ext in [
        "SIZE 36700160",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "STARTTLS",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l == ext),
            "{ext} missing in {ehlo:?}"
        );
    }
    assert!(
        !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
        "AUTH before TLS: {ehlo:?}"
    );

    let mut s = s.starttls(&sim.ca_pem()).await;
    let ehlo = s.cmd("EHLO client.example").await;
    assert!(
        ehlo.lines.iter().any(|l| l == "AUTH LOGIN XOAUTH2"),
        "{ehlo:?}"
    );
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    s.cmd("QUIT").await.assert(221, "2.0.0");
    sim.shutdown().await;
}

#[tokio::test]
async fn auth_and_mail_before_starttls_get_530_5_7_57() {
    let sim = start(CONFIG).await;
    let tok = token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    let (mut s, _) = Smtp::connect(&sim).await;
    s.cmd("EHLO client.example").await;
    s.auth_xoauth2("a@contoso.example", &tok)
        .await
        .assert(530, "5.7.57");
    s.cmd("AUTH LOGIN").await.assert(530, "5.7.57");
    s.cmd("MAIL FROM:<a@contoso.example>")
        .await
        .assert(530, "5.7.57");
    // The connection still works: STARTTLS then AUTH succeeds.
    let mut s = s.starttls(&sim.ca_pem()).await;
    s.cmd("EHLO client.example").await;
    // MAIL after TLS but before AUTH: also 530 5.7.57.
    s.cmd("MAIL FROM:<a@contoso.example>")
        .await
        .assert(530, "5.7.57");
    s.auth_xoauth2("a@contoso.example", &tok)
        .await
        .assert(235, "2.7.0");
    let refusals = sim.refusals();
    assert_eq!(
        refusals.iter().filter(|r| r.enhanced == "5.7.57").count(),
        4,
        "{refusals:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn ehlo_is_required_again_after_starttls() {
    let sim = start(CONFIG).await;
    let (mut s, _) = Smtp::connect(&sim).await;
    s.cmd("STARTTLS").await.assert(503, "5.5.2");
    s.cmd("EHLO client.example").await;
    let mut s = s.starttls(&sim.ca_pem()).await;
    s.cmd("AUTH LOGIN").await.assert(503, "5.5.2");
    s.cmd("EHLO client.example").await;
    s.auth_login("a@contoso.example", "pw-a")
        .await
        .assert(235, "2.7.0");
    sim.shutdown().await;
}

/// A ClientHello that offers only TLS 1.1 (legacy_version 0x0302, no supported_versions
/// extension, TLS 1.0-era cipher suites), as an old .NET SmtpClient would send it.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    let suites: [u8; 8] = [0xc0, 0x13, 0xc0, 0x09, 0x00, 0x2f, 0x00, 0x35];
    body.extend_from_slice(&(suites.len() as u16).to_be_bytes());
    body.extend_from_slice(&suites);
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let host = b"localhost";
    let mut sni = vec![0x00, 0x00]; // server_name extension
    let list_len = host.len() + 3;
    sni.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    sni.extend_from_slice(&(list_len as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    let mut ext = sni;
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17]); // groups: secp256r1
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // point formats
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test]
async fn tls_1_1_only_client_gets_protocol_version_alert() {
    let sim = start(CONFIG).await;
    let mut tcp = tokio::net::TcpStream::connect(sim.smtp_addr())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    // Greeting, EHLO, STARTTLS in plain text.
    let _ = tcp.read(&mut buf).await.unwrap();
    tcp.write_all(b"EHLO old.client\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = tcp.read(&mut buf).await.unwrap();
    tcp.write_all(b"STARTTLS\r\n").await.unwrap();
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"220 2.0.0"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );

    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut reply)).await;
    // A fatal TLS alert record (content type 21, level 2) and certainly no ServerHello
    // (content type 22). rustls answers handshake_failure (40) because no TLS 1.1 cipher
    // suite is acceptable, or protocol_version (70).
    assert!(reply.len() >= 7, "no alert: {reply:?}");
    assert_eq!(
        (reply[0], reply[5]),
        (0x15, 2),
        "expected a fatal alert record, got {reply:?}"
    );
    assert!(
        [40, 70].contains(&reply[6]),
        "unexpected alert, got {reply:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refusal = sim
        .refusals()
        .into_iter()
        .find(|r| r.command == "STARTTLS")
        .expect("handshake failure recorded");
    assert_eq!(
        (refusal.code, refusal.enhanced.as_str()),
        (421, "4.7.66"),
        "{refusal:?}"
    );
    sim.shutdown().await;
}

/// The same with a real client when openssl is installed: TLS 1.1 fails, TLS 1.2 (the
/// positive control, verifying the certificate for `localhost`) succeeds.
#[tokio::test]
async fn openssl_s_client_tls_1_1_refused_tls_1_2_accepted() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("openssl not installed; the raw ClientHello test covers this");
        return;
    }
    let sim = start(CONFIG).await;
    let port = sim.smtp_addr().port();
    let ca = sim.ca_pem_path().to_owned();
    let run = move |version: &'static str| {
        let ca = ca.clone();
        async move {
            tokio::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    "-starttls",
                    "smtp",
                ])
                .args([
                    "-servername",
                    "localhost",
                    "-verify_hostname",
                    "localhost",
                    "-verify_return_error",
                ])
                .arg("-CAfile")
                .arg(&ca)
                .arg(version)
                // OpenSSL 3 refuses to even offer TLS 1.1 at the default security level.
                .args(["-cipher", "DEFAULT@SECLEVEL=0"])
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .unwrap()
        }
    };
    let old = run("-tls1_1").await;
    let old_out = format!(
        "{}{}",
        String::from_utf8_lossy(&old.stdout),
        String::from_utf8_lossy(&old.stderr)
    );
    assert!(
        !old.status.success(),
        "TLS 1.1 handshake succeeded: {old_out}"
    );
    assert!(old_out.contains("Cipher is (NONE)"), "{old_out}");
    assert!(old_out.contains("alert"), "{old_out}");

    let good = run("-tls1_2").await;
    let good_out = format!(
        "{}{}",
        String::from_utf8_lossy(&good.stdout),
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(good.status.success(), "TLS 1.2 failed: {good_out}");
    assert!(
        good_out.contains("Verify return code: 0 (ok)"),
        "{good_out}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn password_auth_and_its_refusals() {
    let sim = start(CONFIG).await;
    let mut s = Smtp::tls(&sim).await;
    s.auth_login("a@contoso.example", "wrong")
        .await
        .assert(535, "5.7.3");
    s.auth_login("a@contoso.example", "pw-a")
        .await
        .assert(235, "2.7.0");
    s.cmd("AUTH LOGIN").await.assert(503, "5.5.2");

    // PLAIN is not advertised (as on Exchange) but works.
    let mut s = Smtp::tls(&sim).await;
    s.cmd("AUTH PLAIN AGFAY29udG9zby5leGFtcGxlAHB3LWE=")
        .await
        .assert(235, "2.7.0");

    // Tenant with SMTP AUTH basic auth disabled: 5.7.139 even with the right password.
    let mut s = Smtp::tls(&sim).await;
    let r = s.auth_login("f@fabrikam.example", "pw-f").await;
    r.assert(535, "5.7.139");
    assert!(
        r.text()
            .contains("SmtpClientAuthentication is disabled for the Tenant"),
        "{r:?}"
    );
    assert!(
        r.text().contains("https://aka.ms/smtp_auth_disabled"),
        "{r:?}"
    );

    // Mailbox with SMTP AUTH disabled.
    let r = s.auth_login("nosmtp@contoso.example", "pw-n").await;
    r.assert(535, "5.7.139");
    assert!(r.text().contains("disabled for the Mailbox"), "{r:?}");

    // Unknown mechanism, garbage base64, cancelled exchange.
    s.cmd("AUTH CRAM-MD5").await.assert(504, "5.7.4");
    s.cmd("AUTH XOAUTH2 !!!notbase64")
        .await
        .assert(501, "5.5.2");
    s.cmd("AUTH LOGIN").await.assert(334, "VXNlcm5hbWU6");
    s.cmd("*").await.assert(501, "5.0.0");
    sim.shutdown().await;
}

#[tokio::test]
async fn blocked_tenant_gets_550_5_7_708_at_auth_and_mail() {
    let sim = start(&CONFIG.replace(
        "basic_auth_enabled = true",
        "basic_auth_enabled = true\nblocked = true",
    ))
    .await;
    let tok = token(&sim, "contoso", CONTOSO_APP, CONTOSO_SECRET).await;
    let mut s = Smtp::tls(&sim).await;
    s.auth_xoauth2("a@contoso.example", &tok)
        .await
        .assert(550, "5.7.708");
    assert!(sim.set_tenant_blocked("contoso", false));
    s.auth_xoauth2("a@contoso.example", &tok)
        .await
        .assert(235, "2.7.0");
    // Blocked while connected: MAIL is refused.
    assert!(sim.set_tenant_blocked("contoso.example", true));
    s.cmd("MAIL FROM:<a@contoso.example>")
        .await
        .assert(550, "5.7.708");
    sim.shutdown().await;
}
