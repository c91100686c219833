//! `mailpipe-deliver check-pool` against the simulator, run as a user runs it: the
//! examples from `check-pool --help` pass on a healthy pool; a pool with a wrong secret, a
//! tenant with basic auth off, a blocked tenant and a mailbox the app was not granted
//! names each failing mailbox with Exchange's (or Entra's) reply and the fix, exits 1, and
//! never makes more than one AUTH attempt per mailbox.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use mailpipe_sim::{RunningSim, SimConfig, Simulator};
use serde_json::Value;

const SIM: &str = r#"
[[tenants]]
id = "contoso"
domains = ["contoso.example", "contoso.onmicrosoft.com"]
[[tenants]]
id = "fabrikam"
domains = ["fabrikam.example", "fabrikam.onmicrosoft.com"]
basic_auth_enabled = false
[[tenants]]
id = "northwind"
domains = ["northwind.example", "northwind.onmicrosoft.com"]
blocked = true
[[tenants]]
id = "tailspin"
domains = ["tailspin.example", "tailspin.onmicrosoft.com"]

[[apps]]
tenant = "contoso"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "contoso-secret"
mailboxes = ["sender1@contoso.example", "sender2@contoso.example"]
[[apps]]
tenant = "northwind"
client_id = "33333333-3333-3333-3333-333333333333"
client_secret = "northwind-secret"
mailboxes = ["*"]
[[apps]]
tenant = "tailspin"
client_id = "44444444-4444-4444-4444-444444444444"
client_secret = "tailspin-secret"
mailboxes = ["*"]

[[mailboxes]]
address = "sender1@contoso.example"
tenant = "contoso"
[[mailboxes]]
address = "sender2@contoso.example"
tenant = "contoso"
[[mailboxes]]
address = "ungranted@contoso.example"
tenant = "contoso"
[[mailboxes]]
address = "invoices@fabrikam.example"
tenant = "fabrikam"
password = "right-password"
[[mailboxes]]
address = "blocked@northwind.example"
tenant = "northwind"
[[mailboxes]]
address = "wrong-secret@tailspin.example"
tenant = "tailspin"
"#;

async fn sim() -> RunningSim {
    Simulator::start(SimConfig::from_toml_str(SIM).unwrap())
        .await
        .unwrap()
}

pub(crate) fn tenant(id: &str, client_id: &str, secret_env: &str, authority: &str) -> String {
    format!(
        "[[deliver.tenants]]\nid = \"{id}\"\n[deliver.tenants.oauth]\ntenant_id = \"{id}.onmicrosoft.com\"\nclient_id = \"{client_id}\"\nclient_secret = {{ env = \"{secret_env}\" }}\nauthority = \"{authority}\"\nallow_loopback_http = true\n"
    )
}

pub(crate) fn mailbox(address: &str, tenant: &str, port: u16, extra: &str) -> String {
    format!(
        "[[deliver.mailboxes]]\naddress = \"{address}\"\ntenant = \"{tenant}\"\nhost = \"localhost\"\nport = {port}\n{extra}"
    )
}

/// Writes `mailpipe.toml` into `dir`: the healthy contoso pool, plus the broken mailboxes.
fn write_config(sim: &RunningSim, dir: &Path, broken: bool) {
    let a = sim.authority();
    let port = sim.smtp_addr().port();
    let mut toml = format!(
        "[deliver]\nextra_ca_file = {:?}\n",
        sim.ca_pem_path().display().to_string()
    );
    toml += &tenant(
        "contoso",
        "11111111-1111-1111-1111-111111111111",
        "CONTOSO_SECRET",
        &a,
    );
    toml += &mailbox("sender1@contoso.example", "contoso", port, "");
    toml += &mailbox("sender2@contoso.example", "contoso", port, "");
    if broken {
        let password = dir.join("fabrikam-password");
        std::fs::write(&password, "right-password").unwrap();
        toml += &tenant(
            "fabrikam",
            "22222222-2222-2222-2222-222222222222",
            "CONTOSO_SECRET",
            &a,
        );
        toml += &tenant(
            "northwind",
            "33333333-3333-3333-3333-333333333333",
            "NORTHWIND_SECRET",
            &a,
        );
        toml += &tenant(
            "tailspin",
            "44444444-4444-4444-4444-444444444444",
            "TAILSPIN_SECRET",
            &a,
        );
        toml += &mailbox("ungranted@contoso.example", "contoso", port, "");
        toml += &mailbox(
            "invoices@fabrikam.example",
            "fabrikam",
            port,
            &format!(
                "auth = \"password\"\npassword = {{ file = {:?} }}\n",
                password.display().to_string()
            ),
        );
        toml += &mailbox("blocked@northwind.example", "northwind", port, "");
        toml += &mailbox("wrong-secret@tailspin.example", "tailspin", port, "");
    }
    std::fs::write(dir.join("mailpipe.toml"), toml).unwrap();
}

/// Runs `mailpipe-deliver` with `args` in `dir`, killed if it has not finished in 120 s.
pub(crate) async fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailpipe-deliver"))
        .args(args)
        .current_dir(dir)
        .env_remove("MAILPIPE_CONFIG")
        .env("CONTOSO_SECRET", "contoso-secret")
        .env("NORTHWIND_SECRET", "northwind-secret")
        .env("TAILSPIN_SECRET", "not-the-secret")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), child)
        .await
        .unwrap_or_else(|_| panic!("mailpipe-deliver {args:?} ran longer than 120 s"))
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_help_examples_pass_on_a_healthy_pool() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(&sim, dir.path(), false);
    let (code, help, _) = run(dir.path(), &["check-pool", "--help"]).await;
    assert_eq!(code, 0);
    let examples: Vec<Vec<String>> = help
        .lines()
        .skip_while(|l| !l.starts_with("Examples:"))
        .skip(1)
        .take_while(|l| l.starts_with("  mailpipe-deliver "))
        .map(|l| l.split_whitespace().skip(1).map(str::to_owned).collect())
        .collect();
    assert_eq!(examples.len(), 3, "{help}");
    for args in &examples {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run(dir.path(), &args).await;
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        if args.contains(&"--json") {
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["ok"], true);
            assert_eq!(v["mailboxes"].as_array().unwrap().len(), 2);
            assert!(
                v["mailboxes"][0]["reply"]
                    .as_str()
                    .unwrap()
                    .starts_with("235 2.7.0"),
                "{out}"
            );
        } else {
            assert!(out.contains("all 2 mailboxes passed"), "{out}");
            for m in ["sender1@contoso.example", "sender2@contoso.example"] {
                let row = out.lines().find(|l| l.starts_with(m)).unwrap();
                assert!(
                    row.contains("oauth2 (secret)") && row.contains(" ok ") && row.contains("235"),
                    "{row}"
                );
            }
        }
    }
    // Only the --send-test run sent: one message per mailbox, to the given address.
    let accepted = sim.accepted();
    assert_eq!(accepted.len(), 2);
    for m in &accepted {
        assert_eq!(m.rcpt_to, vec!["you@example.com".to_owned()]);
    }
    // Three runs, so three AUTHs per mailbox: one per run.
    assert_eq!(sim.auth_attempts("sender1@contoso.example"), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn each_broken_mailbox_is_named_with_its_reply_and_fix() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(&sim, dir.path(), true);
    let (code, out, err) = run(
        dir.path(),
        &["--config", "mailpipe.toml", "check-pool", "--json"],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    let row = |m: &str| -> Value {
        v["mailboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["mailbox"] == m)
            .cloned()
            .unwrap_or_else(|| panic!("no row for {m}: {out}"))
    };
    for ok in ["sender1@contoso.example", "sender2@contoso.example"] {
        assert_eq!(row(ok)["ok"], true, "{out}");
    }
    let expect = |m: &str, stage: &str, reply: &str, hint: &str| {
        let r = row(m);
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["stage"], stage, "{r}");
        assert!(r["reply"].as_str().unwrap().contains(reply), "{m}: {r}");
        assert!(r["hint"].as_str().unwrap().contains(hint), "{m}: {r}");
    };
    expect(
        "wrong-secret@tailspin.example",
        "token",
        "AADSTS7000215",
        "client secret is wrong or expired",
    );
    expect(
        "invoices@fabrikam.example",
        "auth",
        "535 5.7.139",
        "Set-CASMailbox -Identity invoices@fabrikam.example -SmtpClientAuthenticationDisabled $false",
    );
    expect(
        "blocked@northwind.example",
        "auth",
        "550 5.7.708",
        "support request",
    );
    expect(
        "ungranted@contoso.example",
        "auth",
        "535 5.7.3",
        "Add-MailboxPermission -Identity ungranted@contoso.example",
    );
    assert!(
        row("ungranted@contoso.example")["hint"]
            .as_str()
            .unwrap()
            .contains("New-ServicePrincipal -AppId 11111111-1111-1111-1111-111111111111")
    );

    // The table says the same.
    let (code, table, _) = run(dir.path(), &["--config", "mailpipe.toml", "check-pool"]).await;
    assert_eq!(code, 1);
    assert!(table.contains("4 of 6 mailboxes failed"), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with("blocked@northwind.example"))
        .unwrap();
    assert!(
        line.contains("FAILED at auth") && line.contains("550 5.7.708"),
        "{line}"
    );

    // Two runs: at most one AUTH per mailbox per run, none without a token.
    for (m, n) in [
        ("sender1@contoso.example", 2),
        ("ungranted@contoso.example", 2),
        ("invoices@fabrikam.example", 2),
        ("blocked@northwind.example", 2),
        ("wrong-secret@tailspin.example", 0),
    ] {
        assert_eq!(sim.auth_attempts(m), n, "{m}");
    }
    assert!(sim.accepted().is_empty(), "check-pool sent a message");
    assert!(
        !out.contains("not-the-secret")
            && !table.contains("not-the-secret")
            && !out.contains("contoso-secret")
    );
    sim.shutdown().await;
}

/// With `[deliver.graph]` enabled, each mailbox's Inbox is read once through Graph: a
/// mailbox the app may not read (its access policy does not grant it) fails at `graph`
/// with the permission to grant; the others pass.
#[tokio::test]
async fn graph_access_is_checked_for_each_mailbox() {
    let sim = sim().await;
    sim.set_graph_access("sender2@contoso.example", false);
    let dir = tempfile::tempdir().unwrap();
    write_config(&sim, dir.path(), false);
    let mut toml = std::fs::read_to_string(dir.path().join("mailpipe.toml")).unwrap();
    toml += &format!(
        "[deliver.graph]\nenabled = true\nbase_url = \"{}\"\nallow_loopback_http = true\n",
        sim.graph_base_url()
    );
    std::fs::write(dir.path().join("mailpipe.toml"), toml).unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["--config", "mailpipe.toml", "check-pool", "--json"],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let by = |address: &str| -> Value {
        report["mailboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mailbox"] == address)
            .cloned()
            .unwrap()
    };
    let granted = by("sender1@contoso.example");
    assert_eq!(granted["ok"], true, "{granted}");
    assert_eq!(granted["graph"], "ok (Inbox readable)", "{granted}");
    let denied = by("sender2@contoso.example");
    assert_eq!(denied["ok"], false, "{denied}");
    assert_eq!(denied["stage"], "graph", "{denied}");
    assert!(
        denied["graph"]
            .as_str()
            .unwrap()
            .contains("ErrorAccessDenied"),
        "{denied}"
    );
    assert!(
        denied["hint"].as_str().unwrap().contains("Mail.ReadWrite"),
        "{denied}"
    );
    sim.shutdown().await;
}
