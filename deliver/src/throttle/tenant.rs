//! The tenant-wide limit on external recipients.

use std::collections::HashSet;
use std::time::Duration;

use super::admit::Admit;
use super::error::ThrottleError;
use super::time::Millis;
use super::window::{SlidingWindow, WindowReservation};

/// External recipients per rolling window for one tenant, shared by all its mailboxes.
#[derive(Debug)]
pub struct TenantLimit {
    window: SlidingWindow,
    own_domains: HashSet<String>,
}

/// External recipients held in a tenant's window by a send in flight.
#[must_use = "a reservation must be settled or released, or its quota is held forever"]
#[derive(Debug)]
pub struct TenantReservation(WindowReservation);

impl TenantReservation {
    /// External recipients held.
    pub fn external_recipients(&self) -> u64 {
        self.0.weight()
    }
}

fn normalize(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl TenantLimit {
    /// At most `limit` external recipients per `window`; `own_domains` are the tenant's accepted
    /// domains (case-insensitive, exact match: list subdomains explicitly).
    pub fn new<I, S>(limit: u64, window: Duration, own_domains: I) -> TenantLimit
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        TenantLimit {
            window: SlidingWindow::new(limit, window),
            own_domains: own_domains
                .into_iter()
                .map(|d| normalize(d.as_ref()))
                .filter(|d| !d.is_empty())
                .collect(),
        }
    }

    /// Exchange Online's limit per 24 h for a tenant with `licenses` licenses:
    /// `500 × licenses^0.7 + 9,500`, rounded down.
    pub fn production_limit(licenses: u64) -> u64 {
        mailpipe_common::pool::external_recipient_limit(licenses)
    }

    /// The window (read-only).
    pub fn window(&self) -> &SlidingWindow {
        &self.window
    }

    /// True unless `domain` is one of the tenant's own domains (case-insensitive).
    pub fn is_external(&self, domain: &str) -> bool {
        !self.own_domains.contains(&normalize(domain))
    }

    /// How many of these addresses are external. An address without `@` counts as external
    /// (over-counting is the safe side).
    pub fn count_external<'a, I>(&self, addresses: I) -> u64
    where
        I: IntoIterator<Item = &'a str>,
    {
        let external = addresses
            .into_iter()
            .filter(|a| {
                a.rsplit_once('@')
                    .is_none_or(|(_, d)| self.is_external(d.trim_end_matches('>')))
            })
            .count();
        u64::try_from(external).unwrap_or(u64::MAX)
    }

    /// When `external` external recipients could be sent.
    pub fn earliest_admit(&self, now: Millis, external: u64) -> Admit {
        self.window.earliest_admit(now, external)
    }

    /// Holds `external` external recipients if they fit now.
    pub fn reserve(&mut self, now: Millis, external: u64) -> Result<TenantReservation, Admit> {
        self.window.reserve(now, external).map(TenantReservation)
    }

    /// The send ended at `at`; see [`SlidingWindow::settle`].
    pub fn settle(&mut self, r: TenantReservation, at: Millis) -> Result<(), ThrottleError> {
        self.window.settle(r.0, at)
    }

    /// The server surely never counted the send.
    pub fn release(&mut self, r: TenantReservation) -> Result<(), ThrottleError> {
        self.window.release(r.0)
    }

    /// Rebuilds the ledger at startup (or imports another process's sends).
    pub fn restore(&mut self, at: Millis, external: u64) {
        self.window.record(at, external);
    }

    /// External recipients left at `now`.
    pub fn remaining(&self, now: Millis) -> u64 {
        self.window.remaining(now)
    }

    /// Drops log entries that no longer count at `now`.
    pub fn prune(&mut self, now: Millis) {
        self.window.prune(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_is_case_insensitive() {
        let t = TenantLimit::new(
            10,
            Duration::from_secs(60),
            ["Contoso.com", "fabrikam.example."],
        );
        assert!(!t.is_external("contoso.COM"));
        assert!(!t.is_external("FABRIKAM.example"));
        assert!(t.is_external("sub.contoso.com"));
        assert!(t.is_external("example.org"));
        assert!(t.is_external(""));
        assert_eq!(
            t.count_external(["a@Contoso.com", "b@x.org", "<c@fabrikam.example>", "nobody"]),
            2
        );
    }

    #[test]
    fn production_limit_formula() {
        assert_eq!(TenantLimit::production_limit(0), 9_500);
        assert_eq!(TenantLimit::production_limit(1), 10_000);
        // 500 * 100^0.7 = 500 * 25.118... = 12,559
        assert_eq!(TenantLimit::production_limit(100), 22_059);
    }

    #[test]
    fn tenant_window() {
        let mut t = TenantLimit::new(10, Duration::from_secs(60), ["contoso.com"]);
        let r = t.reserve(Millis(0), 8).expect("fits");
        assert_eq!(t.earliest_admit(Millis(0), 3), Admit::Busy);
        assert_eq!(t.earliest_admit(Millis(0), 11), Admit::Never);
        t.settle(r, Millis(1_000)).expect("own");
        assert_eq!(
            t.earliest_admit(Millis(1_000), 3),
            Admit::At(Millis(61_000))
        );
        assert_eq!(t.remaining(Millis(1_000)), 2);
        t.restore(Millis(500), 2);
        assert_eq!(t.remaining(Millis(1_000)), 0);
    }
}
