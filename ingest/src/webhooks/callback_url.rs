//! A batch's callback URL is untrusted input: whoever may submit could otherwise make
//! ingest call any address its network reaches. It must be `https` (plain `http` only to
//! a loopback address, and only when `allow_http_loopback` says so, for tests), carry no
//! credentials or control characters, stay within a length bound, name a host and port
//! of `allowed_callback_hosts`, and resolve to public addresses only
//! ([`address_guard`](super::address_guard)), at submission and again at every call.

use std::net::IpAddr;

use url::{Host, Url};

use super::address_guard::{AddressPolicy, Lookup};
use super::allowed_host::AllowedHost;

/// Longest callback URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// What a URL must satisfy to be called.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// The hosts and ports a callback may name.
    pub allowed_hosts: Vec<AllowedHost>,
    /// Plain http to loopback, and loopback addresses at all (tests, a local receiver).
    pub allow_http_loopback: bool,
}

impl UrlPolicy {
    /// A URL whose host and port are allowed, or why not (in words naming the part at
    /// fault). Its addresses are checked by [`check_and_resolve`](Self::check_and_resolve).
    pub fn check(&self, text: &str) -> Result<Url, String> {
        let url = self.check_shape(text)?;
        let host = host_name(&url);
        let port = url.port_or_known_default().unwrap_or(0);
        if self.allowed_hosts.iter().any(|h| h.allows(&host, port)) {
            return Ok(url);
        }
        match self.allowed_hosts.iter().find(|h| h.names(&host)) {
            Some(entry) => Err(format!(
                "port {port} of {host:?} is not allowed: ingest.webhooks.allowed_callback_hosts \
                 allows port {} there (an entry names another port as host:port)",
                entry.port()
            )),
            None => Err(format!(
                "host {host:?} is not in ingest.webhooks.allowed_callback_hosts"
            )),
        }
    }

    /// The whole check a submission gets: [`check`](Self::check), then every address the
    /// host resolves to must be callable.
    pub async fn check_and_resolve(&self, text: &str, lookup: &dyn Lookup) -> Result<Url, String> {
        let url = self.check(text)?;
        let host = url.host_str().unwrap_or_default();
        self.addresses().resolve(lookup, host).await?;
        Ok(url)
    }

    /// Which addresses callbacks may reach.
    pub fn addresses(&self) -> AddressPolicy {
        AddressPolicy {
            allow_loopback: self.allow_http_loopback,
        }
    }

    /// Everything but the allow-list and the addresses (configured endpoints are the
    /// operator's own).
    pub fn check_shape(&self, text: &str) -> Result<Url, String> {
        if text.len() > MAX_URL_LEN {
            return Err(format!("longer than {MAX_URL_LEN} characters"));
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(format!(
                "contains the control character U+{:04X}",
                u32::from(c)
            ));
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
            allowed_hosts: ["erp.example.com", "*.hooks.example.net", "127.0.0.1:9"]
                .into_iter()
                .map(|h| AllowedHost::parse(h).unwrap())
                .collect(),
            allow_http_loopback: loopback,
        }
    }

    #[test]
    fn only_https_to_an_allowed_host_and_port_without_credentials_passes() {
        let p = policy(false);
        assert!(p.check("https://erp.example.com/mailpipe?b=1").is_ok());
        assert!(p.check("https://ERP.example.com:443/x").is_ok());
        assert!(p.check("https://a.hooks.example.net/x").is_ok());
        let refused = [
            ("http://erp.example.com/x", "https"),
            ("https://erp.example.com:25/x", "port 25"),
            ("https://erp.example.com:6379/x", "port 6379"),
            ("https://evil.example.com/x", "allowed_callback_hosts"),
            ("https://hooks.example.net/x", "allowed_callback_hosts"),
            ("https://xhooks.example.net/x", "allowed_callback_hosts"),
            ("https://user:pw@erp.example.com/x", "credentials"),
            ("https://erp.example.com/x#frag", "fragment"),
            ("https://erp.example.com/a\0b", "U+0000"),
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
            p.check("http://127.0.0.1:10/x")
                .unwrap_err()
                .contains("port 10")
        );
        assert!(
            p.check("http://erp.example.com/x")
                .unwrap_err()
                .contains("loopback")
        );
    }
}
