//! `check-pool`'s sender-domain checks against a DNS server the test starts (a fixed zone,
//! `support::dns_zone`) and the simulator for the mailboxes: a domain with SPF through a
//! nested include, both DKIM selectors at Microsoft's keys and a DMARC policy passes; a
//! domain with nothing, one with the wrong SPF, a foreign DKIM key and a policy-less DMARC,
//! one with two SPF records, and one whose name server never answers are each named with
//! the fix; below Outlook.com's 5,000-a-day bar a missing record is a warning.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use mailpipe_sim::{RunningSim, SimConfig, Simulator};
use serde_json::Value;

use super::check_pool::{mailbox, run, tenant};
use crate::support::dns_zone::{DnsZone, Rec};

const APP: &str = "11111111-1111-1111-1111-111111111111";
const MAILBOXES: [&str; 6] = [
    "billing@good-domain.net",
    "billing@bare-domain.net",
    "billing@wrong-domain.net",
    "billing@twice-domain.net",
    "billing@silent-domain.net",
    "billing@contoso.onmicrosoft.com",
];

fn good_zone() -> Vec<Rec> {
    vec![
        Rec::Txt(
            "good-domain.net",
            "v=spf1 include:_spf.good-domain.net -all".into(),
        ),
        Rec::Txt("good-domain.net", "MS=ms12345678".into()),
        Rec::Txt(
            "_spf.good-domain.net",
            "v=spf1 ip4:192.0.2.0/24 include:spf.protection.outlook.com -all".into(),
        ),
        Rec::Cname(
            "selector1._domainkey.good-domain.net",
            "selector1-good-domain-net._domainkey.contoso.onmicrosoft.com",
        ),
        Rec::Cname(
            "selector2._domainkey.good-domain.net",
            "selector2-good-domain-net._domainkey.contoso.n-v1.dkim.mail.microsoft",
        ),
        Rec::Txt(
            "_dmarc.good-domain.net",
            "v=DMARC1; p=reject; rua=mailto:dmarc@good-domain.net".into(),
        ),
    ]
}

fn zone() -> Vec<Rec> {
    let mut z = good_zone();
    z.extend([
        // bare-domain.net exists (an A-less apex with a verification TXT) but has none of
        // the three.
        Rec::Txt("bare-domain.net", "google-site-verification=abc".into()),
        Rec::Txt(
            "wrong-domain.net",
            "v=spf1 include:_spf.google.com ~all".into(),
        ),
        Rec::Cname(
            "selector1._domainkey.wrong-domain.net",
            "s1.domainkey.u123.wl.sendgrid.net",
        ),
        Rec::Txt(
            "_dmarc.wrong-domain.net",
            "v=DMARC1; rua=mailto:d@wrong-domain.net".into(),
        ),
        Rec::Txt(
            "twice-domain.net",
            "v=spf1 include:spf.protection.outlook.com -all".into(),
        ),
        Rec::Txt("twice-domain.net", "v=spf1 mx -all".into()),
    ]);
    z
}

async fn sim() -> RunningSim {
    let mut toml = String::from(
        "[[tenants]]\nid = \"contoso\"\ndomains = [\"good-domain.net\", \"bare-domain.net\", \"wrong-domain.net\", \"twice-domain.net\", \"silent-domain.net\", \"contoso.onmicrosoft.com\"]\n",
    );
    toml += &format!(
        "[[apps]]\ntenant = \"contoso\"\nclient_id = \"{APP}\"\nclient_secret = \"contoso-secret\"\nmailboxes = [\"*\"]\n"
    );
    for m in MAILBOXES {
        toml += &format!("[[mailboxes]]\naddress = \"{m}\"\ntenant = \"contoso\"\n");
    }
    Simulator::start(SimConfig::from_toml_str(&toml).unwrap())
        .await
        .unwrap()
}

/// The pool of `mailboxes`, asking `dns` with a 1 s limit per lookup; `daily_volume` set
/// when given.
fn write_config(
    sim: &RunningSim,
    dir: &Path,
    dns: &DnsZone,
    mailboxes: &[&str],
    daily_volume: Option<u64>,
) {
    let port = sim.smtp_addr().port();
    let mut toml = format!(
        "[deliver]\nextra_ca_file = {:?}\n",
        sim.ca_pem_path().display().to_string()
    );
    toml += &format!(
        "[deliver.check_pool]\ndns = \"{}\"\ndns_timeout_ms = 1000\n",
        dns.addr
    );
    if let Some(v) = daily_volume {
        toml += &format!("daily_volume = {v}\n");
    }
    toml += &tenant("contoso", APP, "CONTOSO_SECRET", &sim.authority());
    for m in mailboxes {
        toml += &mailbox(m, "contoso", port, "");
    }
    std::fs::write(dir.join("mailpipe.toml"), toml).unwrap();
}

fn domain<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == name)
        .unwrap_or_else(|| panic!("no {name}: {v}"))
}

/// The finding of `check` (`spf`, `dkim`, `dmarc`, `domain`) for `name`.
fn finding<'a>(v: &'a Value, name: &str, check: &str) -> &'a Value {
    domain(v, name)["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} for {name}: {v}"))
}

fn expect(v: &Value, name: &str, check: &str, result: &str, detail: &str, fix: &str) {
    let f = finding(v, name, check);
    assert_eq!(f["result"], result, "{name} {check}: {f}");
    assert!(
        f["detail"].as_str().unwrap().contains(detail),
        "{name} {check}: {detail:?} not in {f}"
    );
    if fix.is_empty() {
        assert!(f.get("fix").is_none(), "{name} {check}: {f}");
    } else {
        assert!(
            f["fix"].as_str().unwrap().contains(fix),
            "{name} {check}: {fix:?} not in {f}"
        );
    }
}

#[tokio::test]
async fn each_dns_failure_is_named_with_its_fix_and_a_good_domain_passes() {
    let sim = sim().await;
    let dns = DnsZone::start(zone(), &["silent-domain.net", "_dmarc.silent-domain.net"]).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(&sim, dir.path(), &dns, &MAILBOXES, None);
    let (code, out, err) = run(
        dir.path(),
        &["--config", "mailpipe.toml", "check-pool", "--json"],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    // Every mailbox itself is fine: only the domains fail.
    for m in v["mailboxes"].as_array().unwrap() {
        assert_eq!(m["ok"], true, "{m}");
    }

    let good = domain(&v, "good-domain.net");
    assert_eq!(good["ok"], true, "{good}");
    assert_eq!(good["volume_from"], "pool capacity", "{good}");
    expect(
        &v,
        "good-domain.net",
        "spf",
        "ok",
        "includes spf.protection.outlook.com",
        "",
    );
    expect(
        &v,
        "good-domain.net",
        "dkim",
        "ok",
        "point at Microsoft's keys",
        "",
    );
    expect(&v, "good-domain.net", "dmarc", "ok", "p=reject", "");

    // Authenticated by Microsoft, but limited to 100 external recipients a day.
    expect(
        &v,
        "contoso.onmicrosoft.com",
        "domain",
        "warning",
        "at most 100 external recipients a day (550 5.7.236 beyond)",
        "send From a custom domain of the tenant",
    );
    assert_eq!(domain(&v, "contoso.onmicrosoft.com")["ok"], true);

    // A single mailbox's capacity (10,000 recipients a day) is above Outlook.com's bar:
    // each missing record fails.
    assert_eq!(domain(&v, "bare-domain.net")["ok"], false);
    expect(
        &v,
        "bare-domain.net",
        "spf",
        "failed",
        "no SPF record at bare-domain.net",
        "\"v=spf1 include:spf.protection.outlook.com -all\"",
    );
    expect(
        &v,
        "bare-domain.net",
        "dkim",
        "failed",
        "no CNAME at selector1._domainkey.bare-domain.net and selector2._domainkey.bare-domain.net",
        "New-DkimSigningConfig -DomainName bare-domain.net",
    );
    expect(
        &v,
        "bare-domain.net",
        "dmarc",
        "failed",
        "no DMARC record at _dmarc.bare-domain.net",
        "TXT record at _dmarc.bare-domain.net: \"v=DMARC1; p=none;",
    );

    expect(
        &v,
        "wrong-domain.net",
        "spf",
        "failed",
        "does not include spf.protection.outlook.com",
        "add include:spf.protection.outlook.com to the SPF record at wrong-domain.net",
    );
    expect(
        &v,
        "wrong-domain.net",
        "dkim",
        "failed",
        "points at s1.domainkey.u123.wl.sendgrid.net, not at a Microsoft key",
        "Set-DkimSigningConfig -Identity wrong-domain.net -Enabled $true",
    );
    expect(
        &v,
        "wrong-domain.net",
        "dmarc",
        "failed",
        "names no policy (p=)",
        "replace it with one TXT record at _dmarc.wrong-domain.net: \"v=DMARC1; p=none;",
    );

    expect(
        &v,
        "twice-domain.net",
        "spf",
        "failed",
        "2 SPF records at twice-domain.net",
        "merge them into one v=spf1 record",
    );

    // A name server that never answers: each lookup ends at its limit, named.
    let silent = finding(&v, "silent-domain.net", "spf");
    assert_eq!(silent["result"], "failed", "{silent}");
    assert!(
        silent["detail"]
            .as_str()
            .unwrap()
            .contains("DNS lookup of TXT silent-domain.net failed"),
        "{silent}"
    );
    assert!(
        silent["fix"]
            .as_str()
            .unwrap()
            .contains("deliver.check_pool.dns"),
        "{silent}"
    );

    // The questions went to the test's server, fully qualified, not searched.
    let asked = dns.asked();
    assert!(
        asked.iter().any(|(n, _)| n == "_spf.good-domain.net"),
        "{asked:?}"
    );
    assert!(
        !asked.iter().any(|(n, _)| n.contains("onmicrosoft")),
        "{asked:?}"
    );

    // The table names the same, with the fixes.
    let (code, table, _) = run(dir.path(), &["--config", "mailpipe.toml", "check-pool"]).await;
    assert_eq!(code, 1);
    assert!(table.contains("all 6 mailboxes passed"), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with("bare-domain.net") && l.contains(" spf "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("FAILED"), "{line}");
    assert!(
        table.contains("    -> publish a TXT record at bare-domain.net"),
        "{table}"
    );
    assert!(table.contains("6 sender domains: 4 failed"), "{table}");
    sim.shutdown().await;
}

#[tokio::test]
async fn below_outlooks_bar_missing_records_are_warnings() {
    let sim = sim().await;
    let dns = DnsZone::start(zone(), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let pool = ["billing@good-domain.net", "billing@bare-domain.net"];
    write_config(&sim, dir.path(), &dns, &pool, Some(1_000));
    let (code, out, err) = run(
        dir.path(),
        &["--config", "mailpipe.toml", "check-pool", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let bare = domain(&v, "bare-domain.net");
    assert_eq!(bare["ok"], true, "{bare}");
    assert_eq!(bare["daily_volume"], 1_000, "{bare}");
    assert_eq!(bare["volume_from"], "deliver.check_pool.daily_volume");
    for check in ["spf", "dkim", "dmarc"] {
        let f = finding(&v, "bare-domain.net", check);
        assert_eq!(f["result"], "warning", "{f}");
        assert!(f["fix"].is_string(), "{f}");
    }
    let (code, table, _) = run(dir.path(), &["--config", "mailpipe.toml", "check-pool"]).await;
    assert_eq!(code, 0);
    assert!(
        table.contains("2 sender domains: 0 failed, 3 warnings"),
        "{table}"
    );
    sim.shutdown().await;
}
