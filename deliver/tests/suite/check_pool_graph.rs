//! `check-pool` on Graph mailboxes against the simulator: the permissions in the app's Graph
//! token and the app's reach on each mailbox. An app consented only Mail.ReadWrite is
//! warned that `transport = "graph"` needs Mail.Send (with the RBAC command and the one that
//! checks it); an app without any Graph permission fails with the feature that needs each;
//! an app scoped by RBAC for Applications to some mailboxes fails on the others with the
//! role assignment that fixes it; a mailbox Graph does not know, or one without an Exchange
//! Online licence, is named as such.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use mailpipe_sim::{RunningSim, SimConfig, Simulator};
use serde_json::Value;

use super::check_pool::{mailbox, run, tenant};

const APP: &str = "11111111-1111-1111-1111-111111111111";

/// One tenant, three mailboxes; `app` is the `[[apps]]` table's extra keys (roles, scope).
fn sim_config(app: &str) -> String {
    format!(
        r#"
[[tenants]]
id = "contoso"
domains = ["contoso.example", "contoso.onmicrosoft.com"]

[[apps]]
tenant = "contoso"
client_id = "{APP}"
client_secret = "contoso-secret"
mailboxes = ["*"]
{app}

[[mailboxes]]
address = "sender1@contoso.example"
tenant = "contoso"
[[mailboxes]]
address = "sender2@contoso.example"
tenant = "contoso"
[[mailboxes]]
address = "reader@contoso.example"
tenant = "contoso"
[[mailboxes]]
address = "unlicensed@contoso.example"
tenant = "contoso"
licensed = false
"#
    )
}

async fn sim(app: &str) -> RunningSim {
    Simulator::start(SimConfig::from_toml_str(&sim_config(app)).unwrap())
        .await
        .unwrap()
}

/// Two Graph-transport mailboxes and one SMTP mailbox whose Inbox deliver reads through
/// Graph; `extra` mailboxes' TOML appended.
fn write_config(sim: &RunningSim, dir: &Path, extra: &str) {
    let port = sim.smtp_addr().port();
    let mut toml = format!(
        "[deliver]\nextra_ca_file = {:?}\n",
        sim.ca_pem_path().display().to_string()
    );
    toml += &tenant("contoso", APP, "CONTOSO_SECRET", &sim.authority());
    toml += &mailbox(
        "sender1@contoso.example",
        "contoso",
        port,
        "transport = \"graph\"\n",
    );
    toml += &mailbox(
        "sender2@contoso.example",
        "contoso",
        port,
        "transport = \"graph\"\n",
    );
    toml += &mailbox("reader@contoso.example", "contoso", port, "");
    toml += extra;
    toml += &format!(
        "[deliver.graph]\nenabled = true\nbase_url = \"{}\"\nallow_loopback_http = true\n",
        sim.graph_base_url()
    );
    std::fs::write(dir.join("mailpipe.toml"), toml).unwrap();
}

async fn check(dir: &Path) -> (i32, Value, String) {
    let (code, out, err) = run(dir, &["--config", "mailpipe.toml", "check-pool", "--json"]).await;
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    // Neither the app's tokens (JWTs start "eyJ") nor its secret reach the report.
    let all = out + &err;
    assert!(
        !all.contains("eyJ") && !all.contains("contoso-secret"),
        "{all}"
    );
    (code, v, all)
}

fn row<'a>(v: &'a Value, address: &str) -> &'a Value {
    v["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mailbox"] == address)
        .unwrap_or_else(|| panic!("no row for {address}: {v}"))
}

fn text(v: &Value) -> String {
    v.to_string()
}

#[tokio::test]
async fn a_token_without_mail_send_warns_the_graph_mailboxes_with_the_role_assignment() {
    let sim = sim(r#"roles = ["Mail.ReadWrite"]"#).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(&sim, dir.path(), "");
    let (code, v, all) = check(dir.path()).await;
    // The Inbox answered, so RBAC for Applications may grant Mail.Send where the token
    // cannot show it: a warning, not a failure.
    assert_eq!(code, 0, "{all}");
    for m in ["sender1@contoso.example", "sender2@contoso.example"] {
        let r = row(&v, m);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["graph"], "ok (Inbox readable)", "{r}");
        let warnings = r["warnings"].as_array().unwrap();
        assert_eq!(warnings.len(), 1, "{r}");
        let w = warnings[0].as_str().unwrap();
        for part in [
            "has no Mail.Send",
            "transport = \"graph\" (sends the draft)",
            &format!(
                "New-ManagementRoleAssignment -App {APP} -Role \"Application Mail.Send\" -CustomResourceScope \"mailpipe pool\""
            ),
            &format!("Test-ServicePrincipalAuthorization -Identity {APP} -Resource {m}"),
            "Grant admin consent",
        ] {
            assert!(w.contains(part), "{part:?} missing: {w}");
        }
    }
    // The SMTP mailbox only has its Inbox read: Mail.ReadWrite is all it needs.
    let reader = row(&v, "reader@contoso.example");
    assert_eq!(reader["ok"], true, "{reader}");
    assert!(reader.get("warnings").is_none(), "{reader}");
    // The table shows the warning under the row.
    let (code, table, _) = run(dir.path(), &["--config", "mailpipe.toml", "check-pool"]).await;
    assert_eq!(code, 0);
    assert!(table.contains("    warning: app 1111"), "{table}");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_token_without_graph_permissions_fails_each_mailbox_naming_the_feature() {
    let sim = sim("roles = []").await;
    let dir = tempfile::tempdir().unwrap();
    write_config(&sim, dir.path(), "");
    let (code, v, all) = check(dir.path()).await;
    assert_eq!(code, 1, "{all}");
    let graph_mailbox = row(&v, "sender1@contoso.example");
    assert_eq!(graph_mailbox["ok"], false, "{graph_mailbox}");
    assert_eq!(graph_mailbox["stage"], "graph", "{graph_mailbox}");
    assert!(
        text(&graph_mailbox["graph"]).contains("403 ErrorAccessDenied"),
        "{graph_mailbox}"
    );
    let hint = graph_mailbox["hint"].as_str().unwrap();
    for part in [
        "has no Mail.ReadWrite",
        "has no Mail.Send",
        "-Role \"Application Mail.ReadWrite\"",
        "-Role \"Application Mail.Send\"",
        "creates the draft from the MIME",
    ] {
        assert!(hint.contains(part), "{part:?} missing: {hint}");
    }
    let reader = row(&v, "reader@contoso.example");
    assert_eq!(reader["stage"], "graph", "{reader}");
    let hint = reader["hint"].as_str().unwrap();
    assert!(
        hint.contains("has no Mail.ReadWrite") && hint.contains("[deliver.graph] (reads bounces"),
        "{hint}"
    );
    assert!(!hint.contains("Mail.Send"), "{hint}");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_mailbox_outside_the_apps_rbac_scope_fails_with_the_assignment_that_fixes_it() {
    let sim = sim(r#"graph_scope = ["sender1@contoso.example", "reader@contoso.example"]"#).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(&sim, dir.path(), "");
    let (code, v, all) = check(dir.path()).await;
    assert_eq!(code, 1, "{all}");
    for ok in ["sender1@contoso.example", "reader@contoso.example"] {
        let r = row(&v, ok);
        assert_eq!(r["ok"], true, "{r}");
        assert!(r.get("warnings").is_none(), "{r}");
    }
    let out = row(&v, "sender2@contoso.example");
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["stage"], "graph", "{out}");
    let hint = out["hint"].as_str().unwrap();
    for part in [
        "outside its RBAC for Applications scope",
        "Set-Mailbox sender2@contoso.example -CustomAttribute1 mailpipe-pool",
        &format!(
            "New-ManagementRoleAssignment -App {APP} -Role \"Application Mail.ReadWrite\" -CustomResourceScope \"mailpipe pool\""
        ),
        &format!(
            "Test-ServicePrincipalAuthorization -Identity {APP} -Resource sender2@contoso.example"
        ),
    ] {
        assert!(hint.contains(part), "{part:?} missing: {hint}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_graph_mailbox_the_tenant_does_not_have_or_without_a_licence_is_named() {
    let sim = sim("").await;
    let dir = tempfile::tempdir().unwrap();
    let port = sim.smtp_addr().port();
    let extra = mailbox(
        "typo@contoso.example",
        "contoso",
        port,
        "transport = \"graph\"\n",
    ) + &mailbox(
        "unlicensed@contoso.example",
        "contoso",
        port,
        "transport = \"graph\"\n",
    );
    write_config(&sim, dir.path(), &extra);
    let (code, v, all) = check(dir.path()).await;
    assert_eq!(code, 1, "{all}");
    let r = row(&v, "typo@contoso.example");
    assert_eq!(r["stage"], "graph", "{r}");
    assert!(text(&r["graph"]).contains("404 ErrorInvalidUser"), "{r}");
    assert!(
        r["hint"]
            .as_str()
            .unwrap()
            .contains("Graph does not know typo@contoso.example"),
        "{r}"
    );
    let r = row(&v, "unlicensed@contoso.example");
    assert_eq!(r["stage"], "graph", "{r}");
    assert!(
        text(&r["graph"]).contains("404 MailboxNotEnabledForRESTAPI"),
        "{r}"
    );
    assert!(
        r["hint"]
            .as_str()
            .unwrap()
            .contains("assign it an Exchange Online licence"),
        "{r}"
    );
    for m in ["sender1@contoso.example", "sender2@contoso.example"] {
        assert_eq!(row(&v, m)["ok"], true, "{v}");
    }
    sim.shutdown().await;
}
