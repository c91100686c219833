//! check-pool's sender-domain part: every From domain the pool can send as (its mailboxes'
//! domains and their Send As addresses'), each checked once through DNS, judged by the
//! volume the pool may send From it.

use futures::StreamExt as _;

use crate::sender_domain::check::{DomainCheck, Volume, check_domain, without_lookup};
use crate::sender_domain::lookup::Dns;
use crate::settings::{DeliverSettings, LimitSettings};

/// Domains checked at once.
const PARALLEL: usize = 4;
const DAY_MS: u64 = 86_400_000;

/// What one mailbox can send in a day at its limits (messages, each with one recipient at
/// least).
fn mailbox_daily(l: &LimitSettings) -> u64 {
    let per_day = |n: u64, window_ms: u64| n.saturating_mul(DAY_MS) / window_ms.max(1);
    per_day(l.messages_per_window, l.message_window_ms)
        .min(per_day(l.recipients_per_window, l.recipient_window_ms))
}

/// The pool's From domains in configuration order, each with the volume it is judged by.
pub fn from_domains(settings: &DeliverSettings) -> Vec<(String, Volume)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for m in &settings.mailboxes {
        let mut domains: Vec<String> = std::iter::once(&m.address)
            .chain(&m.send_as)
            .map(|a| a.domain().to_ascii_lowercase())
            .collect();
        domains.dedup();
        for d in domains {
            let daily = mailbox_daily(&m.limits);
            match out.iter_mut().find(|(known, _)| *known == d) {
                Some((_, total)) => *total = total.saturating_add(daily),
                None => out.push((d, daily)),
            }
        }
    }
    out.into_iter()
        .map(|(d, capacity)| {
            let volume = match settings.check_pool.daily_volume {
                Some(daily) => Volume {
                    daily,
                    from: "deliver.check_pool.daily_volume",
                },
                None => Volume {
                    daily: capacity,
                    from: "pool capacity",
                },
            };
            (d, volume)
        })
        .collect()
}

/// Checks every From domain of the pool (none when `sender_domains = false`).
pub async fn check_domains(settings: &DeliverSettings) -> anyhow::Result<Vec<DomainCheck>> {
    let cfg = &settings.check_pool;
    if !cfg.sender_domains {
        return Ok(Vec::new());
    }
    let domains = from_domains(settings);
    // Only when some domain's records must be read (a resolver reads the system's
    // configuration, which a host may lack).
    let dns = match domains.iter().any(|(d, v)| without_lookup(d, *v).is_none()) {
        true => Some(Dns::new(cfg.dns, cfg.dns_timeout()).map_err(|e| {
            anyhow::anyhow!(
                "deliver.check_pool: {e} (set deliver.check_pool.dns, or sender_domains = false)"
            )
        })?),
        false => None,
    };
    let dns = dns.as_ref();
    Ok(futures::stream::iter(domains)
        .map(|(domain, volume)| async move { check_domain(dns, &domain, volume).await })
        .buffered(PARALLEL)
        .collect()
        .await)
}
