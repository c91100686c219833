//! The sender's domain as receivers judge it: refusals that blame it (`refusal`), and the
//! DNS records that decide it (`spf`, `dkim`, `dmarc` through the bounded `lookup`),
//! checked by `check-pool` for every From domain of the pool (`check`).

pub mod check;
pub mod dkim;
pub mod dmarc;
pub mod lookup;
pub mod refusal;
pub mod spf;

pub use refusal::SenderDomainRefusal;
