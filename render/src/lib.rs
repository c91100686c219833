//! mailpipe-render: jobs from the render queue in, MIME messages onto the deliver queue out.
//!
//! ```text
//! render queue ──> stage (one delivery → RenderOutcome) ──> deliver queue + `rendered` event
//!                    │  renderer (blocking pool, `concurrency` at once)     or dead letters + `failed` event
//!                    │    templates   (MiniJinja: subject, HTML, text)
//!                    │    attachments (inline base64 or a file under the root)
//!                    │    mime        (mail-builder; no From, no Bcc)
//! ```
//! - [`settings`] — the `[render]` section.
//! - [`templates`] — template directories, compiled and checked at start.
//! - [`attachments`] — attachment bytes, never from outside the root.
//! - [`mime`] — the message bytes.
//! - [`renderer`] — a job to a `RenderedMessage`; pure CPU, used by the stage and the benchmark.
//! - [`stage`] — one delivery to an outcome, with everything written confirmed before the ack.
//! - [`metrics`] — the `mailpipe_render_*` series.
//! - [`startup`] — `Application::build` and `run_until_stopped`.

pub mod attachments;
pub mod metrics;
pub mod mime;
pub mod renderer;
pub mod settings;
pub mod stage;
pub mod startup;
pub mod templates;

pub use renderer::{RenderError, Renderer};
pub use settings::Settings;
pub use stage::{RenderOutcome, RenderStage};
pub use startup::{Application, StartupError};
