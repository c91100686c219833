//! Where a callback may connect: never to this host, its network or other internal
//! addresses (loopback, link-local, private, shared, multicast, unspecified, reserved),
//! whatever name the URL gives. A name is resolved once per call, every address it
//! resolves to is checked, and the call connects to the checked addresses only: the
//! resolver below is the one the HTTP client connects with, so there is no second lookup
//! a rebinding DNS server could answer differently.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

/// Turns a host name into addresses: the system's resolver in production; tests give
/// their own to play a rebinding DNS server.
pub trait Lookup: Send + Sync + fmt::Debug {
    fn lookup(&self, host: &str) -> LookupFuture;
}

pub type LookupFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// The operating system's resolver (`getaddrinfo`, on a blocking thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str) -> LookupFuture {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// Which addresses a callback may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddressPolicy {
    /// Loopback addresses too (`allow_http_loopback`: tests, a local receiver).
    pub allow_loopback: bool,
}

impl AddressPolicy {
    /// Why `ip` may not be called, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let why = internal_kind(ip)?;
        (!(self.allow_loopback && why == LOOPBACK)).then_some(why)
    }

    /// Resolves `host` (or takes it as an address) and checks every address: all of them
    /// are callable, or the error names the first that is not.
    pub async fn resolve(&self, lookup: &dyn Lookup, host: &str) -> Result<Vec<IpAddr>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => lookup
                .lookup(host)
                .await
                .map_err(|e| format!("{host} cannot be resolved: {e}"))?,
        };
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        for ip in &addrs {
            if let Some(why) = self.refusal(*ip) {
                return Err(format!("{host} resolves to {ip}, {why}: not called"));
            }
        }
        Ok(addrs)
    }
}

const LOOPBACK: &str = "a loopback address";

/// What kind of internal address `ip` is, or `None` for a public one.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4_kind(v4),
            None => v6_kind(v6),
        },
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        _ if ip.is_loopback() => LOOPBACK,
        _ if ip.is_unspecified() || a == 0 => "an unspecified address",
        _ if ip.is_private() => "a private address",
        _ if a == 100 && (64..128).contains(&b) => "a shared (carrier-grade NAT) address",
        _ if ip.is_link_local() => "a link-local address",
        _ if ip.is_multicast() => "a multicast address",
        _ if ip.is_broadcast() || a >= 240 => "a reserved address",
        _ => return None,
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(match () {
        _ if ip.is_loopback() => LOOPBACK,
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_multicast() => "a multicast address",
        _ if (first & 0xffc0) == 0xfe80 || (first & 0xffc0) == 0xfec0 => "a link-local address",
        _ if (first & 0xfe00) == 0xfc00 => "a private (unique local) address",
        // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::/96) carry an IPv4 address.
        _ if ip.segments()[..6] == [0; 6] || ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            let [.., c, d] = ip.segments();
            let v4 = Ipv4Addr::new((c >> 8) as u8, c as u8, (d >> 8) as u8, d as u8);
            return v4_kind(v4);
        }
        _ => return None,
    })
}

/// The HTTP client's resolver for callback calls: resolves with `lookup`, refuses the
/// name when any of its addresses is internal, and hands the client exactly the
/// addresses it checked.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub lookup: Arc<dyn Lookup>,
    pub policy: AddressPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = this
                .policy
                .resolve(this.lookup.as_ref(), &host)
                .await
                .map_err(|why| -> Box<dyn std::error::Error + Send + Sync> { why.into() })?;
            // Port 0: the client puts the URL's port in.
            let addrs: reqwest::dns::Addrs =
                Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_and_public_ones_pass() {
        let policy = AddressPolicy::default();
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::7f00:1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(policy.refusal(ip).is_some(), "{ip} passed");
        }
        for ip in [
            "93.184.215.14",
            "8.8.8.8",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(policy.refusal(ip), None, "{ip}");
        }
        let tests = AddressPolicy {
            allow_loopback: true,
        };
        assert_eq!(tests.refusal("127.0.0.1".parse().unwrap()), None);
        assert!(tests.refusal("10.0.0.1".parse().unwrap()).is_some());
    }
}
