//! Where a non-delivery report comes from and how it names the original message: what the
//! store's trust decision (`Store::record_bounce`, docs/deliver.md "Which reports are
//! trusted") needs to know besides the recipients. Anyone who can mail a pool mailbox can
//! write a report, so these say what the report *proves*, not what it claims.

use serde::{Deserialize, Serialize};

use crate::domain::EmailAddress;

/// Who wrote the report, as far as headers an outsider cannot write prove it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportOrigin {
    /// The sending mailbox's own Exchange Online tenant (an NDR Microsoft wrote for it):
    /// the headers that prove it are stamped by the tenant and removed by Exchange from
    /// every message that enters the tenant from outside.
    Tenant,
    /// Anyone else: a remote mail server, or someone pretending to be one.
    #[default]
    Outside,
}

/// Where the report named the original's Message-ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginalLink {
    /// In the returned original: a `message/rfc822` part or a `text/rfc822-headers` (or
    /// `message/global-headers`) part.
    Attached,
    /// In a per-message field of the delivery-status part (`Original-Message-ID`,
    /// `X-Original-Message-ID`): the report's own words about the original.
    StatusField,
    /// In a `Message-ID:` line of a prose bounce's quoted copy of the original.
    QuotedText,
    /// Only in the report's `In-Reply-To`: every recipient of the original knows it, and
    /// any reply carries it. Trusted only from the tenant's own Exchange.
    InReplyTo,
}

/// What a report says about itself, beside its recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub origin: ReportOrigin,
    /// How `Bounce::original_message_id` was found (`None` when it was not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<OriginalLink>,
    /// The report's `From` address: a recipient of the original never reports on another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<EmailAddress>,
}
