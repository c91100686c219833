//! The contract between stages: what travels on each queue, in one place.
//!
//! Every message carries a contract version `v`. A binary refuses (dead-letters) a message
//! whose version is newer than it understands instead of misreading it; older versions are
//! read as long as they stay readable.

mod bounce;
mod event;
mod job;
mod lane;
mod provenance;
mod rendered;
mod smtp;
mod suppression;

pub use bounce::{Bounce, BouncedRecipient, DsnAction, MAX_DIAGNOSTIC, clean_diagnostic};
pub use event::{DeliveryEvent, EventKind, RecipientRefusal};
pub use job::{
    Attachment, AttachmentPath, AttachmentSource, EXCHANGE_MAX_ATTACHMENTS,
    EXCHANGE_MAX_MESSAGE_BYTES, EXCHANGE_MAX_RECIPIENTS, FieldError, Job, JobLimits,
};
pub use lane::{DeliverQueue, Lane};
pub use provenance::{OriginalLink, Provenance, ReportOrigin};
pub use rendered::{META_HEADER, RenderedMessage, RenderedMeta};
pub use smtp::SmtpReply;
pub use suppression::{SuppressedRecipient, SuppressionSource};

/// The contract version this build writes and the newest it reads.
pub const CONTRACT_VERSION: u16 = 1;

/// AMQP header that carries the contract version of a message.
pub const VERSION_HEADER: &str = "mailpipe-contract";

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error(
        "contract version {found} is newer than this build understands ({CONTRACT_VERSION}); upgrade this binary"
    )]
    TooNew { found: u16 },
    #[error("malformed {what}: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("missing header {0}")]
    MissingHeader(&'static str),
}

pub(crate) fn check_version(v: u16) -> Result<(), ContractError> {
    if v > CONTRACT_VERSION {
        Err(ContractError::TooNew { found: v })
    } else {
        Ok(())
    }
}

pub(crate) fn current_version() -> u16 {
    CONTRACT_VERSION
}
