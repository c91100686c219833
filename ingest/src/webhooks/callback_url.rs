//! A batch's callback URL is untrusted input: whoever may submit could otherwise make
//! ingest call any address its network reaches. It must be `https` (plain `http` only to
//! a loopback address, and only when `allow_http_loopback` says so, for tests), carry no
//! credentials, stay within a length bound and name a host of `allowed_callback_hosts`.

use std::net::IpAddr;

use url::{Host, Url};

/// Longest callback URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// What a URL must satisfy to be called.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Exact host names (lower case), or `*.example.com` for any name below it.
    pub allowed_hosts: Vec<String>,
    pub allow_http_loopback: bool,
}

impl UrlPolicy {
    /// A URL that may be called, or why not (in words naming the part at fault).
    pub fn check(&self, text: &str) -> Result<Url, String> {
        let url = self.check_shape(text)?;
        let host = host_name(&url);
        if !self.allowed_hosts.iter().any(|h| host_matches(h, &host)) {
            return Err(format!(
                "host {host:?} is not in ingest.webhooks.allowed_callback_hosts"
            ));
        }
        Ok(url)
    }

    /// Everything but the allow-list (configured endpoints are the operator's own).
    pub fn check_shape(&self, text: &str) -> Result<Url, String> {
        if text.len() > MAX_URL_LEN {
            return Err(format!("longer than {MAX_URL_LEN} characters"));
        }
        let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials (user:password@)".into());
        }
        if url.fragment().is_some() {
            return Err("must not have a #fragment".into());
        }
        if url.host().is_none() {
            return Err("has no host".into());
        }
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http_loopback && is_loopback(&url) => {}
            "http" if self.allow_http_loopback => {
                return Err("http is allowed to loopback addresses only; use https".into());
            }
            "http" => return Err("must use https".into()),
            other => return Err(format!("scheme {other:?}: must use https")),
        }
        Ok(url)
    }
}

fn host_name(url: &Url) -> String {
    match url.host() {
        Some(Host::Domain(d)) => d.to_ascii_lowercase(),
        Some(Host::Ipv4(ip)) => ip.to_string(),
        Some(Host::Ipv6(ip)) => ip.to_string(),
        None => String::new(),
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        None => pattern == host,
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(loopback: bool) -> UrlPolicy {
        UrlPolicy {
            allowed_hosts: vec![
                "erp.example.com".into(),
                "*.hooks.example.net".into(),
                "127.0.0.1".into(),
            ],
            allow_http_loopback: loopback,
        }
    }

    #[test]
    fn only_https_to_an_allowed_host_without_credentials_passes() {
        let p = policy(false);
        assert!(p.check("https://erp.example.com/mailpipe?b=1").is_ok());
        assert!(p.check("https://ERP.example.com/x").is_ok());
        assert!(p.check("https://a.hooks.example.net/x").is_ok());
        let refused = [
            ("http://erp.example.com/x", "https"),
            ("https://evil.example.com/x", "allowed_callback_hosts"),
            ("https://hooks.example.net/x", "allowed_callback_hosts"),
            ("https://xhooks.example.net/x", "allowed_callback_hosts"),
            ("https://user:pw@erp.example.com/x", "credentials"),
            ("https://erp.example.com/x#frag", "fragment"),
            ("ftp://erp.example.com/x", "scheme"),
            ("erp.example.com/x", "not a URL"),
            ("http://127.0.0.1:9/x", "https"),
        ];
        for (url, why) in refused {
            let e = p.check(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
        let long = format!("https://erp.example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(p.check(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn plain_http_goes_to_loopback_only_and_only_when_allowed() {
        let p = policy(true);
        assert!(p.check("http://127.0.0.1:9/x").is_ok());
        assert!(
            p.check("http://erp.example.com/x")
                .unwrap_err()
                .contains("loopback")
        );
    }
}
