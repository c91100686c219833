//! Telling the tenant's own Exchange Online NDRs from everything else, by the headers
//! Exchange stamps on its own system messages.
//!
//! An NDR that Exchange Online writes for a mailbox of the tenant is delivered inside the
//! tenant and carries, at its top level:
//! - `X-MS-Exchange-Message-Is-Ndr` (empty value);
//! - `X-MS-Exchange-Organization-AuthAs: Internal`: an *organization header*. Exchange's
//!   header firewall removes every `X-MS-Exchange-Organization-*` header from a message
//!   that enters the organization from outside (and stamps `AuthAs: Anonymous` on mail from
//!   the internet), so an outsider cannot put `Internal` there; this is the proof;
//! - `From: postmaster@<a domain of the tenant>` or
//!   `MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@<a domain of the tenant>`
//!   (display name "Microsoft Outlook"), the tenant's system sender.
//!
//! All three are required; any one missing makes the report `Outside`. "A domain of the
//! tenant" is judged without a directory: the sending mailbox's own domain, or the tenant's
//! `*.onmicrosoft.com` domain (cross-tenant mail from another tenant's onmicrosoft.com
//! domain crosses the header firewall too, so it cannot carry `AuthAs: Internal`).

use mail_parser::Message;
use mailpipe_common::contract::{Bounce, ReportOrigin};
use mailpipe_common::domain::EmailAddress;

use super::signals;

/// The local parts Exchange Online sends its system messages from.
const SYSTEM_SENDERS: [&str; 2] = [
    "postmaster",
    "microsoftexchange329e71ec88ae4615bbc36ab6ce41109e",
];

/// `Tenant` when the headers prove an Exchange Online NDR written inside the organization
/// (the sender's domain is checked later, against the mailbox: [`confirm_for_mailbox`]).
pub fn of(msg: &Message<'_>) -> ReportOrigin {
    let is_ndr = signals::is_exchange_ndr(msg);
    let auth_as = signals::headers(msg, "X-MS-Exchange-Organization-AuthAs");
    let internal = !auth_as.is_empty()
        && auth_as
            .iter()
            .all(|v| v.trim().eq_ignore_ascii_case("internal"));
    let system_sender = signals::from_address(msg).is_some_and(|a| {
        a.split_once('@')
            .is_some_and(|(local, _)| SYSTEM_SENDERS.iter().any(|s| local.eq_ignore_ascii_case(s)))
    });
    if is_ndr && internal && system_sender {
        ReportOrigin::Tenant
    } else {
        ReportOrigin::Outside
    }
}

/// Keeps `Tenant` only when the report's sender is of `mailbox`'s own domain or an
/// `*.onmicrosoft.com` domain; otherwise the report counts as `Outside`.
pub fn confirm_for_mailbox(bounce: &mut Bounce, mailbox: &EmailAddress) {
    if bounce.provenance.origin != ReportOrigin::Tenant {
        return;
    }
    let own = mailbox.as_str().rsplit_once('@').map(|(_, d)| d);
    let tenant_domain = bounce
        .provenance
        .from
        .as_ref()
        .and_then(|f| {
            f.as_str()
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
        })
        .is_some_and(|d| {
            own.is_some_and(|o| o.eq_ignore_ascii_case(&d)) || d.ends_with(".onmicrosoft.com")
        });
    if !tenant_domain {
        bounce.provenance.origin = ReportOrigin::Outside;
    }
}
