//! DMARC (RFC 7489): one `v=DMARC1` TXT record at `_dmarc.<domain>`, or failing that at
//! the organisational domain's, naming a policy (`p=none`, `quarantine` or `reject`).
//! Outlook.com, Gmail and Yahoo want one from bulk senders; `p=none` satisfies them.

use super::lookup::{Dns, LookupError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dmarc {
    Present(Record),
    Missing,
    /// A record receivers ignore (several, or no valid `p=`).
    Invalid {
        at: String,
        why: String,
    },
    Unknown(LookupError),
}

/// The parts of a DMARC record the checks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where it was found (`_dmarc.contoso.com`).
    pub at: String,
    /// `none`, `quarantine` or `reject`.
    pub policy: String,
    /// `adkim`: `r` (relaxed, the default) or `s`.
    pub dkim_alignment: char,
    /// `aspf`: `r` or `s`.
    pub spf_alignment: char,
    pub reports: bool,
}

/// Parses one TXT record; `None` when it is not a DMARC record at all.
pub fn parse(at: &str, txt: &str) -> Option<Result<Record, String>> {
    let mut tags = txt.split(';').map(|t| {
        let (k, v) = t.split_once('=').unwrap_or((t, ""));
        (k.trim().to_ascii_lowercase(), v.trim().to_owned())
    });
    match tags.next() {
        Some((k, v)) if k == "v" && v.eq_ignore_ascii_case("DMARC1") => {}
        _ => return None,
    }
    let mut policy = None;
    let mut dkim_alignment = 'r';
    let mut spf_alignment = 'r';
    let mut reports = false;
    for (k, v) in tags {
        let v_lower = v.to_ascii_lowercase();
        match k.as_str() {
            "p" => policy = Some(v_lower),
            "adkim" => dkim_alignment = if v_lower == "s" { 's' } else { 'r' },
            "aspf" => spf_alignment = if v_lower == "s" { 's' } else { 'r' },
            "rua" => reports = !v.is_empty(),
            _ => {}
        }
    }
    Some(match policy.as_deref() {
        Some(p @ ("none" | "quarantine" | "reject")) => Ok(Record {
            at: at.to_owned(),
            policy: p.to_owned(),
            dkim_alignment,
            spf_alignment,
            reports,
        }),
        Some(other) => Err(format!("p={other} is not none, quarantine or reject")),
        None => Err("it names no policy (p=)".into()),
    })
}

/// The organisational domain a subdomain inherits DMARC from: its last two labels (the
/// Public Suffix List is not consulted: `mail.contoso.co.uk` looks at `co.uk`, which has
/// no record, and is reported missing rather than wrongly inherited).
pub fn organisational(domain: &str) -> Option<&str> {
    let mut dots = domain.rmatch_indices('.');
    dots.next()?;
    let (i, _) = dots.next()?;
    Some(&domain[i + 1..])
}

pub async fn check(dns: &Dns, domain: &str) -> Dmarc {
    let mut names = vec![format!("_dmarc.{domain}")];
    if let Some(org) = organisational(domain) {
        names.push(format!("_dmarc.{org}"));
    }
    for at in names {
        let txt = match dns.txt(&at).await {
            Ok(txt) => txt,
            Err(LookupError::NotFound { .. }) => continue,
            Err(e) => return Dmarc::Unknown(e),
        };
        let parsed: Vec<_> = txt.iter().filter_map(|t| parse(&at, t)).collect();
        return match parsed.as_slice() {
            [] => continue,
            [Ok(record)] => Dmarc::Present(record.clone()),
            [Err(why)] => Dmarc::Invalid {
                at,
                why: why.clone(),
            },
            several => Dmarc::Invalid {
                at,
                why: format!("{} DMARC records: receivers ignore them all", several.len()),
            },
        };
    }
    Dmarc::Missing
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_are_parsed_with_their_policy_and_alignment() {
        let r = parse(
            "_dmarc.contoso.com",
            "v=DMARC1; p=Quarantine; adkim=s; rua=mailto:d@contoso.com",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.policy, "quarantine");
        assert_eq!((r.dkim_alignment, r.spf_alignment), ('s', 'r'));
        assert!(r.reports);
        assert!(parse("x", "v=spf1 -all").is_none());
        assert!(parse("x", "v=DMARC1; rua=mailto:a@b").unwrap().is_err());
        assert!(parse("x", "v=DMARC1; p=maybe").unwrap().is_err());
    }

    #[test]
    fn the_organisational_domain_is_the_last_two_labels() {
        assert_eq!(organisational("mail.contoso.com"), Some("contoso.com"));
        assert_eq!(organisational("a.b.contoso.com"), Some("contoso.com"));
        assert_eq!(organisational("contoso.com"), None);
        assert_eq!(organisational("com"), None);
    }
}
