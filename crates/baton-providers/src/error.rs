//! The providers crate's error type.

use baton_proto::ErrorCode;

/// Errors of provider adapters.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The CLI is not installed (or not at the configured path).
    #[error("{provider} is not installed: {detail}")]
    NotInstalled {
        /// Provider name.
        provider: String,
        /// What was looked for.
        detail: String,
    },
    /// The CLI is installed but not logged in.
    #[error("{provider} is not logged in")]
    AuthMissing {
        /// Provider name.
        provider: String,
    },
    /// No state for the session on this machine.
    #[error("no {provider} state for session {provider_ref}")]
    StateMissing {
        /// Provider name.
        provider: String,
        /// Provider session id.
        provider_ref: String,
    },
    /// Different state for the same session id already exists here.
    #[error("different state for session {provider_ref} already exists at {path}")]
    TargetIdentityConflict {
        /// Provider session id.
        provider_ref: String,
        /// Existing file.
        path: String,
    },
    /// A bundle is malformed or hostile (bad path, wrong provider).
    #[error("invalid bundle: {0}")]
    InvalidBundle(String),
    /// The provider cannot do this (no tool approvals, no fork, …).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The CLI's version is known to store state in a different format.
    #[error("{provider} {version} is not supported: {detail}")]
    VersionUnsupported {
        /// Provider name.
        provider: String,
        /// Detected version.
        version: String,
        /// What differs.
        detail: String,
    },
    /// The agent process failed.
    #[error("provider process failed: {0}")]
    Process(String),
    /// File I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl ProviderError {
    /// The protocol error code this maps to.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotInstalled { .. } => ErrorCode::ProviderNotInstalled,
            Self::AuthMissing { .. } => ErrorCode::ProviderAuthMissing,
            Self::StateMissing { .. } => ErrorCode::VerifyFailed,
            Self::TargetIdentityConflict { .. } => ErrorCode::TargetIdentityConflict,
            Self::InvalidBundle(_) => ErrorCode::VerifyFailed,
            Self::Process(_) => ErrorCode::ProviderFailed,
            Self::Unsupported(_) => ErrorCode::ProviderUnsupported,
            Self::VersionUnsupported { .. } => ErrorCode::AgentVersionUnsupported,
            Self::Io { .. } => ErrorCode::Internal,
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
