//! The crate's one error type, with the stable code each failure reports.

use std::io;
use std::path::PathBuf;

use baton_proto::workspace::ContentHash;
use baton_proto::{ApiError, ErrorCode};

/// Everything that can go wrong while scanning, staging or applying a workspace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A source or destination path that must not be transferred to or from.
    #[error("{path}: {reason}")]
    UnsafePath {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The destination's parent directory does not exist.
    #[error("{path}: parent directory does not exist")]
    MissingParent {
        /// The destination.
        path: PathBuf,
    },
    /// A received manifest breaks a rule; names the offending path.
    #[error("invalid workspace manifest: {path}: {reason}")]
    InvalidManifest {
        /// The entry at fault (or `(manifest)` for a whole-manifest rule).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A received chunk is not what the manifest announced; nothing was written.
    #[error("chunk {hash}: {reason}")]
    BadChunk {
        /// The hash the chunk was sent under.
        hash: ContentHash,
        /// What is wrong with it.
        reason: String,
    },
    /// A staged file does not match the manifest after all its chunks were written.
    #[error("{path}: staged file does not verify: {reason}")]
    VerifyFailed {
        /// The file, relative to the workspace root.
        path: String,
        /// What differs.
        reason: String,
    },
    /// `finish` was called while chunks are still missing.
    #[error("transfer incomplete: {missing} chunks still missing")]
    Incomplete {
        /// How many.
        missing: usize,
    },
    /// The destination's filesystem has too little free space.
    #[error("{path}: needs {needed} bytes, {available} available")]
    InsufficientSpace {
        /// Where the space was measured.
        path: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes free for this user.
        available: u64,
    },
    /// The selection exceeds a limit (entries or bytes).
    #[error("workspace too large: {0}")]
    TooLarge(String),
    /// The destination holds something that stops the operation.
    #[error("{path}: {reason}")]
    Conflict {
        /// The path in the way.
        path: PathBuf,
        /// Why it is in the way.
        reason: String,
    },
    /// An option value is unusable (glob, transfer id, chunk parameters).
    #[error("{0}")]
    BadOption(String),
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`read`, `create`, `rename`, …).
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The stable code this error reports on the wire and to the user.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnsafePath { .. } => ErrorCode::UnsafeWorkspacePath,
            Self::MissingParent { .. } => ErrorCode::TargetPathMissing,
            Self::InvalidManifest { .. } => ErrorCode::InvalidWorkspaceManifest,
            Self::BadChunk { .. } | Self::VerifyFailed { .. } => ErrorCode::VerifyFailed,
            Self::Incomplete { .. } => ErrorCode::TransferFailed,
            Self::InsufficientSpace { .. } => ErrorCode::InsufficientSpace,
            Self::TooLarge(_) => ErrorCode::TransferTooLarge,
            Self::Conflict { .. } => ErrorCode::WorkspaceConflict,
            Self::BadOption(_) => ErrorCode::BadRequest,
            Self::Io { source, .. } => match source.kind() {
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                    ErrorCode::InsufficientSpace
                }
                _ => ErrorCode::TransferFailed,
            },
        }
    }

    /// The error as it travels: its code and a message with the next step.
    pub fn to_api(&self) -> ApiError {
        ApiError::new(self.code(), format!("{self}."))
    }

    pub(crate) fn unsafe_path(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::UnsafePath {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn manifest(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidManifest {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an `io::Error` with what was being done and where: `.map_err(io_err("read", &path))`.
pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_next_steps() {
        let e = Error::unsafe_path("/", "is the filesystem root");
        assert_eq!(e.code(), ErrorCode::UnsafeWorkspacePath);
        let api = e.to_api();
        assert!(api.message.starts_with("/: is the filesystem root."));
        let full = Error::Io {
            action: "write",
            path: "x".into(),
            source: io::Error::from(io::ErrorKind::StorageFull),
        };
        assert_eq!(full.code(), ErrorCode::InsufficientSpace);
        assert_eq!(
            Error::TooLarge("x".into()).code(),
            ErrorCode::TransferTooLarge
        );
        assert_eq!(
            Error::manifest("a", "b").code(),
            ErrorCode::InvalidWorkspaceManifest
        );
    }
}
