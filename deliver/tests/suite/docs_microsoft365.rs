//! Every TOML snippet in docs/microsoft365.md is a valid pool: each is loaded by
//! `mailpipe-deliver --check-config` (paths pointed at real files: a generated certificate
//! and key, as the guide makes them, and a token file for the federated credential).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use mailpipe_sim::AppCertificate;

fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_config_snippet_in_the_guide_passes_check_config() {
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/microsoft365.md"),
    )
    .unwrap();
    let blocks = toml_blocks(&guide);
    assert_eq!(blocks.len(), 7, "the guide's TOML snippets");
    let dir = tempfile::tempdir().unwrap();
    let cert = AppCertificate::generate("mailpipe contoso").unwrap();
    std::fs::write(dir.path().join("contoso-app.crt"), &cert.certificate_pem).unwrap();
    std::fs::write(dir.path().join("contoso-app.key"), &cert.private_key_pem).unwrap();
    // The service-account token the federated snippet reads (a JWT's shape is enough for
    // --check-config; Entra checks the signature).
    let token = dir.path().join("azure-identity-token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\n").unwrap();
    let here = format!("{}/", dir.path().display());
    for (i, block) in blocks.iter().enumerate() {
        let config = block
            .replace("/etc/mailpipe/", &here)
            .replace("/run/secrets/", &here);
        let path = dir.path().join(format!("snippet{i}.toml"));
        std::fs::write(&path, &config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-deliver"))
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .env_remove("MAILPIPE_CONFIG")
            .env("CONTOSO_CLIENT_SECRET", "s")
            .env("CONTOSO_GOV_CLIENT_SECRET", "s")
            .env("AZURE_FEDERATED_TOKEN_FILE", &token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "snippet {i}:\n{block}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `mailpipe-deliver` command lines of the guide's `sh` blocks.
fn deliver_commands(markdown: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in markdown.lines() {
        match line.trim_end() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && l.starts_with("mailpipe-deliver ") => {
                let command = l.split(" #").next().unwrap_or(l);
                out.push(
                    command
                        .split_whitespace()
                        .skip(1)
                        .map(str::to_owned)
                        .collect(),
                );
            }
            _ => {}
        }
    }
    out
}

/// Every `mailpipe-deliver` command the guide shows is one the binary takes: its options and
/// values parse (with `--help` appended, so nothing runs against a tenant; `check-pool` itself
/// runs as shown in `check_pool.rs` against the simulator).
#[test]
fn every_command_in_the_guide_parses() {
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/microsoft365.md"),
    )
    .unwrap();
    let commands = deliver_commands(&guide);
    assert!(
        commands.iter().any(|c| c.iter().any(|a| a == "check-pool")),
        "{commands:?}"
    );
    for args in &commands {
        let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-deliver"))
            .args(args)
            .arg("--help")
            .env_remove("MAILPIPE_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A misspelt option is refused the same way, so the check above means something.
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-deliver"))
        .args(["check-pool", "--sendtest", "you@contoso.com", "--help"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
