//! The `mailpipe-sim` binary: --check-config, --print-json, clean exit on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_mailpipe-sim");

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/sim.toml");
    let out = Command::new(BIN)
        .args(["--config", example, "--check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[tenants]]\nid = \"t\"\n[[mailboxes]]\naddress = \"a@t.example\"\ntenant = \"zzz\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mailboxes[0].tenant"), "{err}");
}

#[test]
fn runs_prints_json_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sim.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n[[tenants]]\nid = \"t\"\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--print-json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let ca = v["ca_pem"].as_str().unwrap();
    assert!(
        std::fs::read_to_string(ca)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert_eq!(v["smtp_host"], "localhost");
    // The SMTP port answers with Exchange's greeting.
    let mut tcp = std::net::TcpStream::connect(v["smtp_addr"].as_str().unwrap()).unwrap();
    let mut greeting = String::new();
    BufReader::new(&mut tcp).read_line(&mut greeting).unwrap();
    assert!(
        greeting.starts_with("220 ") && greeting.contains("Microsoft ESMTP MAIL Service ready"),
        "{greeting}"
    );
    drop(tcp);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not exit on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
