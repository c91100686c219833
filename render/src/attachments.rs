//! Attachments: decode inline base64 or read a file under the attachments root, refusing
//! anything that would leave the root (absolute paths, `..`, symlinks pointing out) and
//! anything but a regular file (a FIFO or device would block or never end).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use mailpipe_common::contract::{Attachment, AttachmentSource};

/// An attachment ready for MIME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedAttachment {
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachmentError {
    #[error(
        "attachment {filename:?}: path attachments are disabled (render.attachments_root is not set)"
    )]
    NoRoot { filename: String },
    #[error("attachment {filename:?}: path {path:?} leaves the attachments root")]
    Escapes { filename: String, path: String },
    #[error("attachment {filename:?}: {path:?} not found under the attachments root")]
    Missing { filename: String, path: String },
    #[error("attachment {filename:?}: {path:?} is not a regular file")]
    NotAFile { filename: String, path: String },
    #[error("attachment {filename:?}: {size} bytes exceed the limit of {max} bytes")]
    TooLarge {
        filename: String,
        size: u64,
        max: usize,
    },
    #[error("attachment {filename:?}: content_base64 does not decode: {message}")]
    BadBase64 { filename: String, message: String },
    #[error("attachment {filename:?}: reading {path:?}: {message}")]
    Io {
        filename: String,
        path: String,
        message: String,
    },
}

impl AttachmentError {
    /// Low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AttachmentError::NoRoot { .. }
            | AttachmentError::Escapes { .. }
            | AttachmentError::NotAFile { .. } => "attachment_path",
            AttachmentError::Missing { .. } => "attachment_missing",
            AttachmentError::TooLarge { .. } => "attachment_too_large",
            AttachmentError::BadBase64 { .. } => "attachment_invalid",
            AttachmentError::Io { .. } => "attachment_io",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AttachmentLoader {
    /// Canonical (symlinks resolved), so a prefix check on canonical paths is meaningful.
    root: Option<PathBuf>,
    max_bytes: usize,
}

impl AttachmentLoader {
    /// Resolves `root` now: a missing root is a start-up error, not a per-job one.
    pub fn new(root: Option<&Path>, max_bytes: usize) -> std::io::Result<Self> {
        let root = root
            .map(|r| {
                r.canonicalize().map_err(|e| {
                    std::io::Error::new(e.kind(), format!("attachments root {}: {e}", r.display()))
                })
            })
            .transpose()?;
        Ok(Self { root, max_bytes })
    }

    pub fn load(&self, a: &Attachment) -> Result<LoadedAttachment, AttachmentError> {
        let bytes = match &a.source {
            AttachmentSource::Inline(b64) => self.decode(&a.filename, b64)?,
            AttachmentSource::Path(p) => self.read_path(&a.filename, p.as_str())?,
        };
        let content_type = a.content_type.clone().unwrap_or_else(|| {
            mime_guess::from_path(&a.filename)
                .first_or_octet_stream()
                .essence_str()
                .to_owned()
        });
        Ok(LoadedAttachment {
            filename: a.filename.clone(),
            content_type,
            bytes,
        })
    }

    fn decode(&self, filename: &str, b64: &str) -> Result<Vec<u8>, AttachmentError> {
        // Decoded size is at most 3/4 of the text: refuse before allocating.
        let estimate = (b64.len() / 4 * 3) as u64;
        if estimate > self.max_bytes as u64 + 2 {
            return Err(AttachmentError::TooLarge {
                filename: filename.to_owned(),
                size: estimate,
                max: self.max_bytes,
            });
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| AttachmentError::BadBase64 {
                filename: filename.to_owned(),
                message: e.to_string(),
            })?;
        if bytes.len() > self.max_bytes {
            return Err(AttachmentError::TooLarge {
                filename: filename.to_owned(),
                size: bytes.len() as u64,
                max: self.max_bytes,
            });
        }
        Ok(bytes)
    }

    /// Reads `relative` below the root. Public so the checks can be tested with paths the
    /// contract type would never let through.
    pub fn read_path(&self, filename: &str, relative: &str) -> Result<Vec<u8>, AttachmentError> {
        let escapes = || AttachmentError::Escapes {
            filename: filename.to_owned(),
            path: relative.to_owned(),
        };
        let root = self.root.as_ref().ok_or_else(|| AttachmentError::NoRoot {
            filename: filename.to_owned(),
        })?;
        // The contract type already refuses these; checked again because this is where it matters.
        let rel = Path::new(relative);
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(escapes());
        }
        let real = match root.join(rel).canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Say "missing" only when the nearest existing ancestor is inside the root,
                // so the answer reveals nothing about files outside it.
                let inside = root
                    .join(rel)
                    .ancestors()
                    .find_map(|a| a.canonicalize().ok())
                    .is_some_and(|a| a.starts_with(root));
                return Err(if inside {
                    AttachmentError::Missing {
                        filename: filename.to_owned(),
                        path: relative.to_owned(),
                    }
                } else {
                    escapes()
                });
            }
            Err(e) => {
                return Err(AttachmentError::Io {
                    filename: filename.to_owned(),
                    path: relative.to_owned(),
                    message: e.to_string(),
                });
            }
        };
        // Symlinks are resolved by canonicalize: whatever they point at must still be inside.
        if !real.starts_with(root) {
            return Err(escapes());
        }
        let io = |e: std::io::Error| AttachmentError::Io {
            filename: filename.to_owned(),
            path: relative.to_owned(),
            message: e.to_string(),
        };
        let not_a_file = || AttachmentError::NotAFile {
            filename: filename.to_owned(),
            path: relative.to_owned(),
        };
        // Checked before opening: opening a FIFO for reading blocks until a writer
        // appears, and a device may block or never end.
        if !std::fs::metadata(&real).map_err(io)?.is_file() {
            return Err(not_a_file());
        }
        // Opened without blocking all the same (the path may have been swapped since the
        // check), then the opened file's own type is what counts.
        let file = open_nonblocking(&real).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(not_a_file());
        }
        if meta.len() > self.max_bytes as u64 {
            return Err(AttachmentError::TooLarge {
                filename: filename.to_owned(),
                size: meta.len(),
                max: self.max_bytes,
            });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // `take` guards against a file that grows between the check and the read.
        file.take(self.max_bytes as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() > self.max_bytes {
            return Err(AttachmentError::TooLarge {
                filename: filename.to_owned(),
                size: bytes.len() as u64,
                max: self.max_bytes,
            });
        }
        Ok(bytes)
    }
}

/// Opens for reading without waiting for a FIFO's writer (O_NONBLOCK; regular files
/// read as usual).
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}
