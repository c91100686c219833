//! mailpipe-tests: the whole product run for real.
//!
//! - [`stack`]: one configuration file, the Exchange Online simulator in-process, and the
//!   three real binaries as child processes on a real RabbitMQ (unique name prefix).
//! - [`invoices`]: a sample invoice batch with PDF attachments.
//! - [`demo`]: the quick start: a batch through the stack, progress, summary.

pub mod demo;
pub mod invoices;
pub mod stack;
