//! RFC 3207 §6: replies a server (or anyone on the path) sends after its STARTTLS reply, in
//! the same plaintext segment, must never be read as if they came over TLS. A fake server
//! answers STARTTLS with `220` followed by `250`, `235`, `354` and `250 queued` in one
//! write, then speaks real TLS and refuses everything there.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailpipe_common::config::SecretRef;
use mailpipe_common::contract::EventKind;
use mailpipe_deliver::settings::AuthMethod;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::{Harness, PoolSpec, recipients};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

const INJECTED: &str = "220 2.0.0 SMTP server ready\r\n\
250-fake.example Hello\r\n\
250 AUTH LOGIN XOAUTH2\r\n\
235 2.7.0 Authentication successful\r\n\
250 2.1.0 Sender OK\r\n\
250 2.1.5 Recipient OK\r\n\
354 Start mail input; end with <CRLF>.<CRLF>\r\n\
250 2.6.0 <injected@fake.example> Queued mail for delivery\r\n";

#[derive(Default)]
struct Seen {
    starttls: AtomicUsize,
    handshakes: AtomicUsize,
    over_tls: Mutex<Vec<String>>,
}

/// A CA (PEM, for deliver's `extra_ca_file`) and a TLS acceptor for `localhost`.
fn pki() -> (String, TlsAcceptor) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone(), CertificateDer::from(ca.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    (ca.pem(), TlsAcceptor::from(Arc::new(config)))
}

async fn serve(tcp: TcpStream, acceptor: TlsAcceptor, seen: Arc<Seen>) {
    let mut plain = BufReader::new(tcp);
    plain
        .get_mut()
        .write_all(b"220 fake.example ESMTP\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        if plain.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let verb = line.trim().to_ascii_uppercase();
        let reply: &[u8] = if verb.starts_with("EHLO") {
            b"250-fake.example Hello\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
        } else if verb == "STARTTLS" {
            seen.starttls.fetch_add(1, Ordering::SeqCst);
            // One write: the injected replies travel in the same segment as the 220.
            plain
                .get_mut()
                .write_all(INJECTED.as_bytes())
                .await
                .unwrap();
            break;
        } else if verb == "QUIT" {
            return;
        } else {
            b"503 5.5.1 STARTTLS first\r\n"
        };
        plain.get_mut().write_all(reply).await.unwrap();
    }
    let Ok(Ok(tls)) =
        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(plain.into_inner())).await
    else {
        return;
    };
    seen.handshakes.fetch_add(1, Ordering::SeqCst);
    let mut tls = BufReader::new(tls);
    loop {
        line.clear();
        if tls.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        seen.over_tls.lock().unwrap().push(line.trim().to_owned());
        let _ = tls
            .get_mut()
            .write_all(b"554 5.7.0 refused over TLS\r\n")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_injected_after_the_starttls_reply_fail_the_send_and_nothing_is_sent() {
    let (ca_pem, acceptor) = pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, acceptor.clone(), seen.clone()));
            }
        });
    }

    let mut h = Harness::new(
        "inject",
        PoolSpec {
            mailboxes: 1,
            ..PoolSpec::default()
        },
    )
    .await;
    let files = tempfile::tempdir().unwrap();
    let ca = files.path().join("ca.pem");
    let password = files.path().join("password");
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&password, "hunter2").unwrap();
    h.settings.extra_ca_file = Some(ca);
    h.settings.pause_ms = 100;
    h.settings.max_pause_ms = 400;
    let m = &mut h.settings.mailboxes[0];
    m.host = "localhost".into();
    m.port = port;
    m.auth = AuthMethod::Password;
    m.password = Some(SecretRef {
        env: None,
        file: Some(password),
    });
    h.settings.validate().unwrap();

    h.publish("job-injected", "billing@contoso.example", &recipients(0, 1))
        .await;
    let (shutdown, task) = h.start_deliver().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let retry = loop {
        let events = h.events().await;
        assert!(
            !events.iter().any(|e| e.kind == EventKind::Delivered),
            "recorded delivered on injected replies: {events:?}"
        );
        if let Some(e) = events.into_iter().find(|e| e.kind == EventKind::Retrying) {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "no outcome");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    shutdown.cancel();
    task.await.unwrap().unwrap();

    // A transient failure that says why.
    let text = retry.smtp.map(|r| r.text).unwrap_or_default();
    assert!(text.contains("after its STARTTLS reply"), "{text}");
    assert!(seen.starttls.load(Ordering::SeqCst) >= 1);
    // The connection was closed before any handshake: the TLS side saw no command at all.
    assert_eq!(seen.handshakes.load(Ordering::SeqCst), 0);
    assert!(seen.over_tls.lock().unwrap().is_empty());
    assert!(
        h.events()
            .await
            .iter()
            .all(|e| e.kind != EventKind::Delivered)
    );
    h.finish().await;
}
