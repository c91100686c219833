//! SPF (RFC 7208) as Exchange Online needs it: the domain's one `v=spf1` record must let
//! Microsoft's servers send, by `include:spf.protection.outlook.com` directly or through
//! records it includes or redirects to. Followed within SPF's own budget of 10 DNS lookups
//! (a record needing more is a permanent error at every receiver).

use super::lookup::{Dns, LookupError};

/// The include that authorises Exchange Online's outbound servers.
pub const MICROSOFT_INCLUDE: &str = "spf.protection.outlook.com";
/// RFC 7208 4.6.4: more DNS-querying terms than this is a permanent error.
pub const MAX_LOOKUPS: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spf {
    /// The record (at the domain) authorises Microsoft.
    Authorises { record: String },
    /// No `v=spf1` record at the domain.
    Missing,
    /// The record does not reach `spf.protection.outlook.com`.
    WithoutMicrosoft { record: String },
    /// Several `v=spf1` records: a permanent error at receivers.
    Several(usize),
    /// More than 10 lookups to follow: a permanent error at receivers.
    TooManyLookups { record: String },
    /// The lookup itself failed.
    Unknown(LookupError),
}

/// The `v=spf1` records among a name's TXT records.
pub fn spf_records(txt: &[String]) -> Vec<&str> {
    txt.iter()
        .map(String::as_str)
        .filter(|r| {
            let r = r.trim_start();
            r.len() >= 6
                && r[..6].eq_ignore_ascii_case("v=spf1")
                && r[6..].chars().next().is_none_or(|c| c == ' ')
        })
        .collect()
}

/// The names a record sends the check on to: `include:` targets and a `redirect=`.
pub fn referrals(record: &str) -> Vec<String> {
    record
        .split_ascii_whitespace()
        .filter_map(|term| {
            let t = term.trim_start_matches(['+', '-', '~', '?']);
            let lower = t.to_ascii_lowercase();
            if lower.starts_with("include:") {
                Some(t[8..].to_ascii_lowercase())
            } else if lower.starts_with("redirect=") {
                Some(t[9..].to_ascii_lowercase())
            } else {
                None
            }
        })
        .map(|d| d.trim_end_matches('.').to_owned())
        .collect()
}

/// Checks `domain`'s SPF.
pub async fn check(dns: &Dns, domain: &str) -> Spf {
    let txt = match dns.txt(domain).await {
        Ok(txt) => txt,
        Err(LookupError::NotFound { .. }) => return Spf::Missing,
        Err(e) => return Spf::Unknown(e),
    };
    let records = spf_records(&txt);
    let record = match records.as_slice() {
        [] => return Spf::Missing,
        [one] => (*one).to_owned(),
        several => return Spf::Several(several.len()),
    };
    let mut queue = referrals(&record);
    let mut lookups = 0;
    while let Some(name) = (!queue.is_empty()).then(|| queue.remove(0)) {
        if name == MICROSOFT_INCLUDE {
            return Spf::Authorises { record };
        }
        lookups += 1;
        if lookups > MAX_LOOKUPS {
            return Spf::TooManyLookups { record };
        }
        match dns.txt(&name).await {
            Ok(txt) => {
                if let Some(nested) = spf_records(&txt).first() {
                    queue.extend(referrals(nested));
                }
            }
            // A void include: the receiver's problem to count, not a Microsoft include.
            Err(LookupError::NotFound { .. }) => {}
            Err(e) => return Spf::Unknown(e),
        }
    }
    Spf::WithoutMicrosoft { record }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_v_spf1_records_count() {
        let txt = vec![
            "v=spf1 include:spf.protection.outlook.com -all".to_owned(),
            "MS=ms12345".to_owned(),
            "v=spf10 nonsense".to_owned(),
            "V=SPF1 -all".to_owned(),
        ];
        assert_eq!(spf_records(&txt).len(), 2);
    }

    #[test]
    fn includes_and_redirects_are_followed_with_any_qualifier() {
        assert_eq!(
            referrals(
                "v=spf1 ip4:192.0.2.1 +include:_spf.Contoso.com ~include:x.example. redirect=_spf.fabrikam.com -all"
            ),
            ["_spf.contoso.com", "x.example", "_spf.fabrikam.com"]
        );
        assert!(referrals("v=spf1 a mx -all").is_empty());
    }
}
