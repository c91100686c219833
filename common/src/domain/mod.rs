//! Domain types that parse at the edge: once constructed, they are valid, so nothing
//! downstream re-checks them and nothing invalid can travel through the queues.

mod dsn_status;
mod email;
mod ident;
mod mailbox;

pub use dsn_status::{DsnStatus, DsnStatusError};
pub use email::{EmailAddress, EmailAddressError};
pub use ident::{BatchId, IdError, JobId, TemplateName};
pub use mailbox::{Mailbox, MailboxError};
