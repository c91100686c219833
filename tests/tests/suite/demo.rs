//! The README's first quick-start command runs as shown: `mailpipe-demo` (what
//! deploy/local/demo.sh executes) with its default relative `--dir .demo`, from a fresh
//! working directory, delivers every invoice with no provider refusal.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_demo_delivers_every_invoice_from_a_relative_dir() {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-demo"))
        .args(["--invoices", "12", "--dir", ".demo", "--json"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {stderr}"));
    assert_eq!(summary["counts"]["delivered"], 12, "{summary:#}");
    assert_eq!(
        summary["provider_refusals"],
        serde_json::json!([]),
        "{summary:#}"
    );
    // The run's files are where the relative --dir says, not nested under it.
    assert!(cwd.path().join(".demo/mailpipe.toml").is_file());
    // The records command it prints runs as shown and lists every invoice of the batch.
    let records = summary["inspect"]["records"].as_str().unwrap();
    let mut words = records.split_whitespace();
    let out = Command::new(words.next().unwrap())
        .args(words)
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{records}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), 12, "{listed}");
    assert!(
        listed.lines().all(|l| l.contains(" delivered ")),
        "{listed}"
    );
    assert!(!cwd.path().join(".demo/.demo").exists());
}
