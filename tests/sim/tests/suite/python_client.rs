//! A client that is not ours: Python's smtplib (STARTTLS with the simulator's CA and the
//! name `localhost`, then AUTH LOGIN) sends through the simulator.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;

const CONFIG: &str = r#"
[[tenants]]
id = "contoso"
domains = ["contoso.example"]

[[tenants]]
id = "fabrikam"
domains = ["fabrikam.example"]
basic_auth_enabled = false

[[mailboxes]]
address = "a@contoso.example"
tenant = "contoso"
password = "pw-a"

[[mailboxes]]
address = "f@fabrikam.example"
tenant = "fabrikam"
password = "pw-f"
"#;

const SCRIPT: &str = r#"
import json, smtplib, ssl, sys
from email.message import EmailMessage
port, cafile, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=cafile)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
msg = EmailMessage()
msg["From"] = user
msg["To"] = "customer@tailspin.example"
msg["Subject"] = "from python"
msg.set_content("Line one\n.starts with a dot\n")
try:
    with smtplib.SMTP("localhost", port, timeout=10) as s:
        s.ehlo()
        s.starttls(context=ctx)
        s.ehlo()
        s.login(user, password)
        refused = s.send_message(msg)
        print(json.dumps({"ok": True, "refused": refused, "auth": s.esmtp_features.get("auth", "").strip()}))
except smtplib.SMTPResponseException as e:
    print(json.dumps({"ok": False, "code": e.smtp_code, "error": e.smtp_error.decode()}))
"#;

fn python() -> Option<&'static str> {
    ["python3", "python"].into_iter().find(|p| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok()
    })
}

async fn run(sim: &mailpipe_sim::RunningSim, user: &str, password: &str) -> serde_json::Value {
    let py = python().expect("python3 is on the machine");
    let out = tokio::process::Command::new(py)
        .arg("-c")
        .arg(SCRIPT)
        .arg(sim.smtp_addr().port().to_string())
        .arg(sim.ca_pem_path())
        .arg(user)
        .arg(password)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test]
async fn python_smtplib_starttls_login_sends() {
    let sim = start(CONFIG).await;
    let v = run(&sim, "a@contoso.example", "pw-a").await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["auth"], "LOGIN XOAUTH2", "{v}");
    let accepted = sim.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].mailbox, "a@contoso.example");
    assert_eq!(
        accepted[0].rcpt_to,
        vec!["customer@tailspin.example".to_owned()]
    );
    let raw = String::from_utf8_lossy(&accepted[0].raw);
    assert!(raw.contains("\r\n.starts with a dot\r\n"), "{raw}");
    sim.shutdown().await;
}

#[tokio::test]
async fn python_smtplib_sees_5_7_139_when_basic_auth_is_off() {
    let sim = start(CONFIG).await;
    let v = run(&sim, "f@fabrikam.example", "pw-f").await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["code"], 535, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("5.7.139 Authentication unsuccessful"),
        "{v}"
    );
    let v = run(&sim, "a@contoso.example", "wrong").await;
    assert_eq!(
        (v["code"].as_u64(), v["error"].as_str().map(|e| &e[..5])),
        (Some(535), Some("5.7.3")),
        "{v}"
    );
    assert!(sim.accepted().is_empty());
    sim.shutdown().await;
}
