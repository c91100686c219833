//! One From domain checked: SPF, DKIM and DMARC, each finding with its fix. How serious a
//! missing record is depends on volume: Outlook.com refuses (`550 5.7.515`) domains that
//! send it more than 5,000 messages a day without all three, so above that bar a missing
//! record fails the check, below it it is a warning. `onmicrosoft.com` domains are
//! Microsoft's and authenticated as they are, but Microsoft lets a tenant send them to at
//! most 100 external recipients a day (`550 5.7.236`): above that, a warning. Reserved
//! names (`.example`, `.test`, ...) cannot be looked up and are skipped.

use serde::Serialize;

use super::dkim::{self, Dkim};
use super::dmarc::{self, Dmarc};
use super::lookup::Dns;
use super::spf::{self, Spf};

/// Outlook.com's bar for high-volume senders (messages a day).
pub const OUTLOOK_HIGH_VOLUME: u64 = 5_000;
/// External recipients a day Exchange Online lets a tenant send From its onmicrosoft.com
/// domain (the MOERA limit, enforced for every tenant since June 2026).
pub const ONMICROSOFT_DAILY_LIMIT: u64 = 100;

/// Top-level names reserved by RFC 2606 / RFC 6761: never in public DNS.
const RESERVED_TLDS: [&str; 4] = ["example", "test", "invalid", "localhost"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Warning,
    Failed,
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Warning => "warning",
            Outcome::Failed => "FAILED",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One check of one domain.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `spf`, `dkim`, `dmarc`, or `domain` (skipped domains).
    pub check: &'static str,
    pub result: Outcome,
    /// What was found.
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// A From domain's checks.
#[derive(Debug, Clone, Serialize)]
pub struct DomainCheck {
    pub domain: String,
    /// No finding failed.
    pub ok: bool,
    /// Messages a day the pool may send From it (what the severity was judged by), and
    /// where that number comes from.
    pub daily_volume: u64,
    pub volume_from: &'static str,
    pub findings: Vec<Finding>,
}

/// The volume a domain is judged by.
#[derive(Debug, Clone, Copy)]
pub struct Volume {
    pub daily: u64,
    /// `deliver.check_pool.daily_volume`, or `pool capacity`.
    pub from: &'static str,
}

impl Volume {
    /// How serious a missing or broken record is at this volume.
    fn missing(self) -> Outcome {
        if self.daily > OUTLOOK_HIGH_VOLUME {
            Outcome::Failed
        } else {
            Outcome::Warning
        }
    }
}

fn finding(check: &'static str, result: Outcome, detail: String, fix: Option<String>) -> Finding {
    Finding {
        check,
        result,
        detail,
        fix,
    }
}

/// The findings of a domain that is not looked up (Microsoft's own, or a reserved name),
/// `None` for a domain whose records must be read.
pub fn without_lookup(domain: &str, volume: Volume) -> Option<Vec<Finding>> {
    if domain.ends_with(".onmicrosoft.com") {
        let detail = "a Microsoft onmicrosoft.com domain: Microsoft publishes its SPF and signs it with DKIM";
        return Some(vec![if volume.daily > ONMICROSOFT_DAILY_LIMIT {
            finding(
                "domain",
                Outcome::Warning,
                format!(
                    "{detail}, but Exchange Online lets a tenant send From onmicrosoft.com addresses to at most {ONMICROSOFT_DAILY_LIMIT} external recipients a day (550 5.7.236 beyond)"
                ),
                Some(format!(
                    "send From a custom domain of the tenant (Microsoft 365 admin center > Settings > Domains), with SPF, DKIM and DMARC: use its addresses for the pool's mailboxes instead of {domain}"
                )),
            )
        } else {
            finding("domain", Outcome::Ok, detail.into(), None)
        }]);
    }
    let tld = domain.rsplit('.').next().unwrap_or(domain);
    RESERVED_TLDS.contains(&tld).then(|| {
        vec![finding(
            "domain",
            Outcome::Skipped,
            "a reserved name (RFC 2606/6761): not in public DNS, not looked up".into(),
            None,
        )]
    })
}

/// Checks `domain` (lower case) through `dns` (needed only when `without_lookup` is
/// `None`).
pub async fn check_domain(dns: Option<&Dns>, domain: &str, volume: Volume) -> DomainCheck {
    let findings = match (without_lookup(domain, volume), dns) {
        (Some(findings), _) => findings,
        (None, None) => vec![finding(
            "domain",
            Outcome::Failed,
            "no DNS resolver".into(),
            Some("set deliver.check_pool.dns".into()),
        )],
        (None, Some(dns)) => {
            let (spf, dkim, dmarc) = tokio::join!(
                spf::check(dns, domain),
                dkim::check(dns, domain),
                dmarc::check(dns, domain)
            );
            let dkim_ok = matches!(dkim, Dkim::Published { .. });
            vec![
                spf_finding(domain, spf, volume),
                dkim_finding(domain, dkim, volume),
                dmarc_finding(domain, dmarc, dkim_ok, volume),
            ]
        }
    };
    DomainCheck {
        domain: domain.to_owned(),
        ok: findings.iter().all(|f| f.result != Outcome::Failed),
        daily_volume: volume.daily,
        volume_from: volume.from,
        findings,
    }
}

fn spf_finding(domain: &str, spf: Spf, volume: Volume) -> Finding {
    let add = format!(
        "Exchange Online's servers must be allowed to send for {domain}: without it every message fails SPF, and DMARC rests on DKIM alone"
    );
    match spf {
        Spf::Authorises { record } => finding(
            "spf",
            Outcome::Ok,
            format!("{record:?} includes {}", spf::MICROSOFT_INCLUDE),
            None,
        ),
        Spf::Missing => finding(
            "spf",
            volume.missing(),
            format!("no SPF record at {domain}"),
            Some(format!(
                "publish a TXT record at {domain}: \"v=spf1 include:{} -all\" ({add})",
                spf::MICROSOFT_INCLUDE
            )),
        ),
        Spf::WithoutMicrosoft { record } => finding(
            "spf",
            volume.missing(),
            format!(
                "{record:?} does not include {}, directly or through its includes",
                spf::MICROSOFT_INCLUDE
            ),
            Some(format!(
                "add include:{} to the SPF record at {domain}, before its all term ({add})",
                spf::MICROSOFT_INCLUDE
            )),
        ),
        Spf::Several(n) => finding(
            "spf",
            Outcome::Failed,
            format!(
                "{n} SPF records at {domain}: receivers treat that as a permanent error (RFC 7208 4.5)"
            ),
            Some(format!(
                "merge them into one v=spf1 record at {domain} that includes {}",
                spf::MICROSOFT_INCLUDE
            )),
        ),
        Spf::TooManyLookups { record } => finding(
            "spf",
            Outcome::Failed,
            format!(
                "{record:?} needs more than {} DNS lookups: receivers treat that as a permanent error (RFC 7208 4.6.4)",
                spf::MAX_LOOKUPS
            ),
            Some(format!(
                "flatten the SPF record at {domain}: fewer include:, a:, mx: and redirect= terms, keeping include:{}",
                spf::MICROSOFT_INCLUDE
            )),
        ),
        Spf::Unknown(e) => lookup_failed("spf", e),
    }
}

fn dkim_finding(domain: &str, dkim: Dkim, volume: Volume) -> Finding {
    let enable = format!(
        "in Exchange Online PowerShell: New-DkimSigningConfig -DomainName {domain} -Enabled $false; Get-DkimSigningConfig -Identity {domain} | Format-List Selector1CNAME,Selector2CNAME; publish CNAME records selector1._domainkey.{domain} and selector2._domainkey.{domain} to those two targets; then Set-DkimSigningConfig -Identity {domain} -Enabled $true (or the Microsoft Defender portal's DKIM page under Email authentication settings)"
    );
    match dkim {
        Dkim::Published { targets } => finding(
            "dkim",
            Outcome::Ok,
            format!(
                "selector1 and selector2 point at Microsoft's keys ({}); Get-DkimSigningConfig -Identity {domain} shows whether signing is enabled",
                targets.join(", ")
            ),
            None,
        ),
        Dkim::Missing { selectors } => finding(
            "dkim",
            volume.missing(),
            format!(
                "no CNAME at {}: DKIM is not set up for {domain}, so Exchange signs with the tenant's onmicrosoft.com key, which does not align with {domain} for DMARC",
                selectors
                    .iter()
                    .map(|s| format!("{s}._domainkey.{domain}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            Some(enable),
        ),
        Dkim::Elsewhere { selector, target } => finding(
            "dkim",
            volume.missing(),
            format!(
                "{selector}._domainkey.{domain} points at {target}, not at a Microsoft key: Exchange Online cannot sign with it"
            ),
            Some(format!(
                "Exchange Online signs with its own selector1/selector2 keys: {enable}"
            )),
        ),
        Dkim::Unknown(e) => lookup_failed("dkim", e),
    }
}

fn dmarc_finding(domain: &str, dmarc: Dmarc, dkim_ok: bool, volume: Volume) -> Finding {
    let publish = format!(
        "publish a TXT record at _dmarc.{domain}: \"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}\" (p=none satisfies Outlook.com, Gmail and Yahoo; move to quarantine or reject once the reports show your mail aligned)"
    );
    match dmarc {
        Dmarc::Present(r) => {
            let mut detail = format!(
                "{}: p={}, adkim={}, aspf={}",
                r.at, r.policy, r.dkim_alignment, r.spf_alignment
            );
            if !dkim_ok {
                detail.push_str(&format!(
                    "; it passes only through SPF alignment (the envelope sender is the mailbox, in {domain}) until DKIM is set up for {domain}: forwarded mail will fail it"
                ));
            }
            if !r.reports {
                detail.push_str("; no rua= reports address: you will not see who fails it");
            }
            finding("dmarc", Outcome::Ok, detail, None)
        }
        Dmarc::Missing => finding(
            "dmarc",
            volume.missing(),
            format!("no DMARC record at _dmarc.{domain} (nor at its organisational domain)"),
            Some(publish),
        ),
        Dmarc::Invalid { at, why } => finding(
            "dmarc",
            Outcome::Failed,
            format!("the record at {at} is not valid: {why}"),
            Some(format!(
                "replace it with one TXT record at {at}: \"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}\" (p=quarantine or p=reject once the reports show your mail aligned)"
            )),
        ),
        Dmarc::Unknown(e) => lookup_failed("dmarc", e),
    }
}

fn lookup_failed(check: &'static str, e: super::lookup::LookupError) -> Finding {
    finding(
        check,
        Outcome::Failed,
        e.to_string(),
        Some("the record could not be read: check the resolver (deliver.check_pool.dns, or the system's) and the domain's name servers; run check-pool again".into()),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn microsofts_domains_pass_and_reserved_names_are_skipped_without_dns() {
        let v = |daily| Volume {
            daily,
            from: "test",
        };
        let f = without_lookup("contoso.onmicrosoft.com", v(100)).unwrap();
        assert_eq!(f[0].result, Outcome::Ok);
        let f = without_lookup("contoso.onmicrosoft.com", v(101)).unwrap();
        assert_eq!(f[0].result, Outcome::Warning);
        assert!(f[0].detail.contains("5.7.236"));
        for reserved in ["contoso.example", "a.test", "x.invalid", "localhost"] {
            assert_eq!(
                without_lookup(reserved, v(1)).unwrap()[0].result,
                Outcome::Skipped
            );
        }
        assert!(without_lookup("contoso.com", v(1)).is_none());
        assert!(without_lookup("onmicrosoft.com.evil.net", v(1)).is_none());
    }

    #[test]
    fn a_missing_record_fails_above_outlooks_bar_and_warns_below() {
        let v = |daily| Volume {
            daily,
            from: "test",
        };
        assert_eq!(v(5_000).missing(), Outcome::Warning);
        assert_eq!(v(5_001).missing(), Outcome::Failed);
    }
}
