//! The sender's domain as receivers judge it: refusals that blame it (`refusal`), and the
//! DNS records that decide it (SPF, DKIM, DMARC), checked by `check-pool` for every From
//! domain of the pool.

pub mod refusal;

pub use refusal::SenderDomainRefusal;
