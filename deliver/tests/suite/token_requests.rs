//! Token requests cannot leak the app's credential, and certificate credentials work end
//! to end: a redirecting token server never gets the secret re-posted elsewhere; authority
//! URLs that only look local are refused by `--check-config` naming the key; an app with
//! a certificate gets a token from the simulator and authenticates a mailbox, and a wrong
//! certificate is refused with Entra's code.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailpipe_common::config::ConfigSource;
use mailpipe_deliver::pool::{MailboxPool, SessionError};
use mailpipe_deliver::settings::DeliverSettings;
use mailpipe_sim::{AppCertificate, SimConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SECRET: &str = "leak-canary-7f3a9c";

/// A one-request-at-a-time HTTP server that records what it received and answers `reply`.
async fn recording_server(reply: String) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 16 * 1024];
            // Headers and a small form arrive together on loopback; wait a moment for the rest.
            let mut got = Vec::new();
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            record.lock().unwrap().extend_from_slice(&got);
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    (port, seen)
}

fn settings_toml(authority: &str, tenant_id: &str, credential: &str) -> String {
    format!(
        r#"
[deliver]
[[deliver.tenants]]
id = "contoso"
[deliver.tenants.oauth]
tenant_id = "{tenant_id}"
client_id = "11111111-1111-1111-1111-111111111111"
{credential}
authority = "{authority}"
allow_loopback_http = true
[[deliver.mailboxes]]
address = "sender1@contoso.example"
tenant = "contoso"
host = "localhost"
port = 1
"#
    )
}

#[tokio::test]
async fn a_redirect_is_refused_and_the_secret_never_reaches_its_target() {
    let (target, target_seen) = recording_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 44\r\nconnection: close\r\n\r\n{\"access_token\":\"stolen\",\"expires_in\":3600}".into(),
    )
    .await;
    let (redirector, redirector_seen) = recording_server(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{target}/steal\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let src = ConfigSource::from_toml(&settings_toml(
        &format!("http://127.0.0.1:{redirector}"),
        "contoso.onmicrosoft.com",
        &format!(
            "client_secret = {{ file = {:?} }}",
            secret.display().to_string()
        ),
    ));
    let settings = DeliverSettings::load(&src).unwrap();
    let pool = MailboxPool::build(&settings).unwrap();
    let err = pool.session(0).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SessionError::Token(_)), "{text}");
    assert!(
        text.contains("307") && text.contains("redirects are never followed"),
        "{text}"
    );
    assert!(!text.contains(SECRET), "{text}");
    // The configured endpoint got the secret (that is its job); the redirect target got nothing.
    let asked = String::from_utf8_lossy(&redirector_seen.lock().unwrap()).into_owned();
    assert!(
        asked.contains("POST /contoso.onmicrosoft.com/oauth2/v2.0/token"),
        "{asked}"
    );
    assert!(
        asked.contains(SECRET),
        "the request reached the configured endpoint: {asked}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        target_seen.lock().unwrap().is_empty(),
        "the redirect target was contacted"
    );
}

fn check_config(toml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailpipe.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-deliver"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .env("MAILPIPE_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn authorities_that_only_look_local_and_bad_tenant_ids_fail_check_config() {
    let secret = r#"client_secret = { env = "MAILPIPE_TEST_SECRET" }"#;
    let (code, err) = check_config(&settings_toml(
        "http://127.0.0.1:8025",
        "contoso.onmicrosoft.com",
        secret,
    ));
    assert_eq!(code, 0, "{err}");
    for tricky in [
        "http://127.0.0.1@evil.example",
        "http://localhost.evil.example",
        "http://127.0.0.1.evil.example:8025",
    ] {
        let (code, err) = check_config(&settings_toml(tricky, "contoso.onmicrosoft.com", secret));
        assert_eq!(code, 2, "{tricky} accepted: {err}");
        assert!(
            err.contains("deliver.tenants[0].oauth.authority"),
            "{tricky}: {err}"
        );
    }
    // Plain http without the opt-in.
    let no_opt_in = settings_toml("http://127.0.0.1:8025", "contoso.onmicrosoft.com", secret)
        .replace("allow_loopback_http = true\n", "");
    let (code, err) = check_config(&no_opt_in);
    assert_eq!(code, 2);
    assert!(
        err.contains("deliver.tenants[0].oauth.authority") && err.contains("https"),
        "{err}"
    );
    // Tenant ids: required, and a directory's id or domain (`contoso` is our own name).
    let (code, err) = check_config(&settings_toml(
        "https://login.microsoftonline.com",
        "contoso",
        secret,
    ));
    assert_eq!(code, 2);
    assert!(err.contains("deliver.tenants[0].oauth.tenant_id"), "{err}");
    let missing = settings_toml("https://login.microsoftonline.com", "x", secret)
        .replace("tenant_id = \"x\"\n", "");
    let (code, err) = check_config(&missing);
    assert_eq!(code, 2);
    assert!(
        err.contains("deliver.tenants[0].oauth.tenant_id: required"),
        "{err}"
    );
    assert!(!err.contains(SECRET));
}

async fn sim_with_certificate(registered: &AppCertificate) -> mailpipe_sim::RunningSim {
    let toml = format!(
        "[[tenants]]\nid = \"contoso\"\ndomains = [\"contoso.example\", \"contoso.onmicrosoft.com\"]\n[[apps]]\ntenant = \"contoso\"\nclient_id = \"11111111-1111-1111-1111-111111111111\"\nclient_certificate = '''\n{}'''\nmailboxes = [\"*\"]\n[[mailboxes]]\naddress = \"sender1@contoso.example\"\ntenant = \"contoso\"\n",
        registered.certificate_pem
    );
    Simulator::start(SimConfig::from_toml_str(&toml).unwrap())
        .await
        .unwrap()
}

fn certificate_settings(
    sim: &mailpipe_sim::RunningSim,
    cert: &AppCertificate,
    dir: &std::path::Path,
) -> DeliverSettings {
    let cert_path = dir.join("app.crt");
    let key_path = dir.join("app.key");
    std::fs::write(&cert_path, &cert.certificate_pem).unwrap();
    std::fs::write(&key_path, &cert.private_key_pem).unwrap();
    let toml = settings_toml(
        &sim.authority(),
        "contoso.onmicrosoft.com",
        &format!(
            "client_certificate = {{ file = {:?} }}\nclient_certificate_key = {{ file = {:?} }}",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
    )
    .replace("port = 1", &format!("port = {}", sim.smtp_addr().port()))
    .replace(
        "[deliver]\n",
        &format!(
            "[deliver]\nextra_ca_file = {:?}\n",
            sim.ca_pem_path().display().to_string()
        ),
    );
    DeliverSettings::load(&ConfigSource::from_toml(&toml)).unwrap()
}

#[tokio::test]
async fn a_certificate_credential_gets_a_token_and_authenticates() {
    let registered = AppCertificate::generate("mailpipe app").unwrap();
    let other = AppCertificate::generate("not registered").unwrap();
    let sim = sim_with_certificate(&registered).await;
    let dir = tempfile::tempdir().unwrap();

    let pool = MailboxPool::build(&certificate_settings(&sim, &registered, dir.path())).unwrap();
    let (session, _reused) = pool
        .session(0)
        .await
        .expect("assertion accepted, XOAUTH2 accepted");
    session.quit().await;

    let pool = MailboxPool::build(&certificate_settings(&sim, &other, dir.path())).unwrap();
    let err = pool.session(0).await.unwrap_err().to_string();
    assert!(
        err.contains("invalid_client") && err.contains("AADSTS700027"),
        "{err}"
    );
    sim.shutdown().await;
}

#[test]
fn a_key_that_does_not_belong_to_the_certificate_is_a_config_error() {
    let a = AppCertificate::generate("a").unwrap();
    let b = AppCertificate::generate("b").unwrap();
    let mixed = AppCertificate {
        certificate_pem: a.certificate_pem,
        private_key_pem: b.private_key_pem,
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.crt"), &mixed.certificate_pem).unwrap();
    std::fs::write(dir.path().join("app.key"), &mixed.private_key_pem).unwrap();
    let toml = settings_toml(
        "https://login.microsoftonline.com",
        "contoso.onmicrosoft.com",
        &format!(
            "client_certificate = {{ file = {:?} }}\nclient_certificate_key = {{ file = {:?} }}",
            dir.path().join("app.crt").display().to_string(),
            dir.path().join("app.key").display().to_string()
        ),
    );
    let err = DeliverSettings::load(&ConfigSource::from_toml(&toml))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("deliver.tenants[0].oauth.client_certificate_key")
            && err.contains("does not belong"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}
