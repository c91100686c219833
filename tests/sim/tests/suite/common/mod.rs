//! Test helpers: start a simulator from TOML, fetch tokens over HTTP, and a raw SMTP client
//! (plain TCP + real STARTTLS with rustls) for asserting exact replies.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use mailpipe_sim::{RunningSim, SimConfig, Simulator};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const CONTOSO_APP: &str = "11111111-1111-1111-1111-111111111111";
pub const CONTOSO_SECRET: &str = "contoso-secret";
pub const SCOPE: &str = "https://outlook.office365.com/.default";

pub async fn start(toml: &str) -> RunningSim {
    let cfg = SimConfig::from_toml_str(toml).expect("test config is valid");
    Simulator::start(cfg).await.expect("simulator starts")
}

/// Client-credentials token from the simulator's endpoint.
pub async fn token(sim: &RunningSim, tenant: &str, client_id: &str, secret: &str) -> String {
    let resp = reqwest::Client::new()
        .post(sim.token_url(tenant))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("scope", SCOPE),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 200, "token endpoint refused");
    let body: serde_json::Value = resp.json().await.expect("json");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One SMTP reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
    pub fn enhanced(&self) -> String {
        self.lines
            .first()
            .and_then(|l| l.split(' ').next())
            .unwrap_or("")
            .to_owned()
    }
    #[track_caller]
    pub fn assert(&self, code: u16, enhanced: &str) -> &Self {
        assert_eq!(
            (self.code, self.enhanced().as_str()),
            (code, enhanced),
            "unexpected reply: {self:?}"
        );
        self
    }
}

pub struct Smtp {
    r: BufReader<Box<dyn Io>>,
}

pub fn tls_client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

impl Smtp {
    /// Connects and reads the greeting.
    pub async fn connect(sim: &RunningSim) -> (Smtp, Reply) {
        let tcp = TcpStream::connect(sim.smtp_addr()).await.expect("connect");
        let mut s = Smtp {
            r: BufReader::new(Box::new(tcp)),
        };
        let greeting = s.read_reply().await.expect("greeting");
        (s, greeting)
    }

    /// Reads one (possibly multi-line) reply; None on EOF.
    pub async fn read_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.r.read_line(&mut line))
                .await
                .expect("reply within 20 s")
                .ok()?;
            if n == 0 {
                return None;
            }
            let line = line.trim_end();
            let code: u16 = line.get(..3)?.parse().ok()?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if !more {
                return Some(Reply { code, lines });
            }
        }
    }

    pub async fn send(&mut self, data: &[u8]) {
        let w = self.r.get_mut();
        w.write_all(data).await.expect("write");
        w.flush().await.expect("flush");
    }

    /// Sends a command line and reads the reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.read_reply()
            .await
            .unwrap_or_else(|| panic!("connection closed after {line:?}"))
    }

    /// STARTTLS (expects 220) and a real TLS handshake with the name `localhost`.
    pub async fn starttls(self, ca_pem: &str) -> Smtp {
        let mut s = self;
        s.cmd("STARTTLS").await.assert(220, "2.0.0");
        let connector = tokio_rustls::TlsConnector::from(tls_client_config(ca_pem));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector
            .connect(name, s.r.into_inner())
            .await
            .expect("TLS handshake");
        Smtp {
            r: BufReader::new(Box::new(tls)),
        }
    }

    /// Connect, EHLO, STARTTLS, EHLO: ready for AUTH.
    pub async fn tls(sim: &RunningSim) -> Smtp {
        let (mut s, _) = Smtp::connect(sim).await;
        assert_eq!(s.cmd("EHLO client.example").await.code, 250);
        let mut s = s.starttls(&sim.ca_pem()).await;
        assert_eq!(s.cmd("EHLO client.example").await.code, 250);
        s
    }

    pub async fn auth_xoauth2(&mut self, user: &str, token: &str) -> Reply {
        let raw = format!("user={user}\x01auth=Bearer {token}\x01\x01");
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        self.cmd(&format!("AUTH XOAUTH2 {b64}")).await
    }

    pub async fn auth_login(&mut self, user: &str, password: &str) -> Reply {
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        self.cmd("AUTH LOGIN").await.assert(334, "VXNlcm5hbWU6");
        self.cmd(&enc(user)).await.assert(334, "UGFzc3dvcmQ6");
        self.cmd(&enc(password)).await
    }

    /// TLS session authenticated with XOAUTH2 (asserts 235).
    pub async fn authed(sim: &RunningSim, user: &str, token: &str) -> Smtp {
        let mut s = Smtp::tls(sim).await;
        s.auth_xoauth2(user, token).await.assert(235, "2.7.0");
        s
    }

    /// MAIL, RCPT..., DATA, body: the first non-success reply, or the reply to the final dot.
    pub async fn send_mail(&mut self, from: &str, rcpts: &[&str], body: &str) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        if r.code != 250 {
            return r;
        }
        for rc in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rc}>")).await;
            if r.code != 250 {
                self.cmd("RSET").await;
                return r;
            }
        }
        let r = self.cmd("DATA").await;
        if r.code != 354 {
            return r;
        }
        self.send(dot_stuff(body).as_bytes()).await;
        self.send(b".\r\n").await;
        self.read_reply().await.unwrap_or(Reply {
            code: 0,
            lines: vec!["connection closed".into()],
        })
    }
}

/// A small message with the given From header.
pub fn message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\nHello.\r\n"
    )
}

pub fn dot_stuff(body: &str) -> String {
    let mut out = String::new();
    for line in body.split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
    }
    if !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out
}
