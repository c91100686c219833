//! One entry of `ingest.webhooks.allowed_callback_hosts`: a host name (`erp.example.com`),
//! every name below a domain (`*.example.com`) or an address, and the one port a
//! callback may use there: 443 unless the entry names another (`erp.example.com:8443`,
//! `[::1]:8443`). Any other port of an allowed host (`:25`, `:6379`) is refused.

use std::net::Ipv6Addr;

/// The port a callback uses when its allow-list entry names none.
pub const DEFAULT_PORT: u16 = 443;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// Lower case; `*.example.com` for any name below `example.com`; an IPv6 address
    /// without brackets.
    pattern: String,
    port: u16,
}

impl AllowedHost {
    /// Reads an entry, or says what is wrong with it.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{entry:?}: give a host name (erp.example.com, *.example.com) or an IP address, \
                 with :PORT when it is not 443"
            )
        };
        let entry_lc = entry.trim().to_ascii_lowercase();
        let (host, port) = if let Some(rest) = entry_lc.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
            v6.parse::<Ipv6Addr>().map_err(|_| bad())?;
            let port = match after {
                "" => DEFAULT_PORT,
                p => parse_port(p.strip_prefix(':').ok_or_else(bad)?).ok_or_else(bad)?,
            };
            (v6.to_owned(), port)
        } else if entry_lc.parse::<Ipv6Addr>().is_ok() {
            (entry_lc.clone(), DEFAULT_PORT)
        } else {
            match entry_lc.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), parse_port(port).ok_or_else(bad)?),
                None => (entry_lc.clone(), DEFAULT_PORT),
            }
        };
        let name = host.strip_prefix("*.").unwrap_or(&host);
        let odd = name.is_empty()
            || name.contains(['/', '@', '*', ' ', '[', ']', '?', '#'])
            || (name.contains(':') && name.parse::<Ipv6Addr>().is_err());
        if odd {
            return Err(bad());
        }
        Ok(Self {
            pattern: host,
            port,
        })
    }

    /// Whether `host` (lower case, IPv6 without brackets) on `port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        port == self.port && self.names(host)
    }

    /// Whether the entry names `host`, whatever the port (to say "wrong port" rather
    /// than "not allowed").
    pub fn names(&self, host: &str) -> bool {
        match self.pattern.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            None => self.pattern == host,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_a_host_and_one_port() {
        let e = AllowedHost::parse("ERP.example.com").unwrap();
        assert!(e.allows("erp.example.com", 443));
        assert!(!e.allows("erp.example.com", 25));
        let e = AllowedHost::parse("erp.example.com:8443").unwrap();
        assert!(e.allows("erp.example.com", 8443));
        assert!(!e.allows("erp.example.com", 443));
        let e = AllowedHost::parse("*.hooks.example.net").unwrap();
        assert!(e.allows("a.hooks.example.net", 443));
        assert!(!e.allows("hooks.example.net", 443));
        assert!(!e.allows("xhooks.example.net", 443));
        assert!(AllowedHost::parse("::1").unwrap().allows("::1", 443));
        assert!(
            AllowedHost::parse("[::1]:8443")
                .unwrap()
                .allows("::1", 8443)
        );
        assert!(
            AllowedHost::parse("127.0.0.1:9")
                .unwrap()
                .allows("127.0.0.1", 9)
        );
        for bad in [
            "",
            "https://erp.example.com",
            "erp.example.com:0",
            "erp.example.com:x",
            "a@b",
            "[::1",
            "*.",
            "a:b:c",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad:?}");
        }
    }
}
