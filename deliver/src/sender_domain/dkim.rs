//! DKIM for a custom domain in Exchange Online: until the domain's own signing is set up,
//! Exchange signs with the tenant's `onmicrosoft.com` key, whose `d=` does not align with
//! the From domain for DMARC. Setting it up means two CNAMEs, `selector1._domainkey` and
//! `selector2._domainkey`, pointing at Microsoft's keys (`…onmicrosoft.com`, or
//! `…dkim.mail.microsoft` for domains set up since 2025), then enabling signing.

use super::lookup::{Dns, LookupError};

pub const SELECTORS: [&str; 2] = ["selector1", "selector2"];

/// Where Microsoft's DKIM keys live: a CNAME target ending in one of these.
const MICROSOFT_KEY_SUFFIXES: [&str; 2] = [".onmicrosoft.com", ".dkim.mail.microsoft"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dkim {
    /// Both selectors point at Microsoft's keys.
    Published {
        targets: Vec<String>,
    },
    /// These selectors have no CNAME.
    Missing {
        selectors: Vec<&'static str>,
    },
    /// A selector points somewhere other than Microsoft: Exchange cannot sign with it.
    Elsewhere {
        selector: &'static str,
        target: String,
    },
    Unknown(LookupError),
}

pub fn is_microsoft_key(target: &str) -> bool {
    MICROSOFT_KEY_SUFFIXES.iter().any(|s| target.ends_with(s))
}

pub async fn check(dns: &Dns, domain: &str) -> Dkim {
    let mut targets = Vec::new();
    let mut missing = Vec::new();
    for selector in SELECTORS {
        match dns.cname(&format!("{selector}._domainkey.{domain}")).await {
            Ok(target) if is_microsoft_key(&target) => targets.push(target),
            Ok(target) => return Dkim::Elsewhere { selector, target },
            Err(LookupError::NotFound { .. }) => missing.push(selector),
            Err(e) => return Dkim::Unknown(e),
        }
    }
    if missing.is_empty() {
        Dkim::Published { targets }
    } else {
        Dkim::Missing { selectors: missing }
    }
}

#[cfg(test)]
mod tests {
    use super::is_microsoft_key;

    #[test]
    fn microsofts_old_and_new_key_hosts_are_recognised() {
        assert!(is_microsoft_key(
            "selector1-contoso-com._domainkey.contoso.onmicrosoft.com"
        ));
        assert!(is_microsoft_key(
            "selector1-contoso-com._domainkey.contoso.n-v1.dkim.mail.microsoft"
        ));
        assert!(!is_microsoft_key("s1.domainkey.u123.wl.sendgrid.net"));
        assert!(!is_microsoft_key("evil.onmicrosoft.com.example"));
    }
}
