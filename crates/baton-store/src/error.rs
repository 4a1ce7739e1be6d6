//! The store's error type.

use baton_proto::{ApiError, ErrorCode};

/// Errors of store operations. The refusals map one-to-one to protocol error codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such row (or it belongs to another account).
    #[error("not found")]
    NotFound,
    /// A unique name or id is taken.
    #[error("already exists: {0}")]
    Conflict(String),
    /// The writer is not the owner at the session's current epoch.
    #[error("stale epoch: the session is at epoch {current}")]
    StaleEpoch {
        /// The session's epoch now.
        current: u64,
    },
    /// Another handoff of the session is active.
    #[error("a handoff of this session is already running")]
    HandoffInProgress,
    /// Input cannot be consumed while the session is handed off.
    #[error("the session is being handed off")]
    HandingOff,
    /// The appended seq did not follow the last one.
    #[error("seq conflict: the session's last seq is {last_seq}")]
    SeqConflict {
        /// The session's last seq now.
        last_seq: u64,
    },
    /// The input is unknown or was already consumed.
    #[error("input already consumed or unknown")]
    DuplicateInput,
    /// The pairing is unknown, used or expired.
    #[error("pairing code unknown, used or expired")]
    PairingInvalid,
    /// A stored value could not be decoded.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// The protocol error code this maps to.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound => ErrorCode::NotFound,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::StaleEpoch { .. } => ErrorCode::StaleEpoch,
            Self::HandoffInProgress => ErrorCode::HandoffInProgress,
            Self::HandingOff => ErrorCode::HandingOff,
            Self::SeqConflict { .. } => ErrorCode::SeqConflict,
            Self::DuplicateInput => ErrorCode::DuplicateInput,
            Self::PairingInvalid => ErrorCode::PairingInvalid,
            Self::Corrupt(_) | Self::Database(_) => ErrorCode::Internal,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = e.code();
        let what = match &e {
            // Database details stay in the server log, not on the wire.
            StoreError::Database(_) | StoreError::Corrupt(_) => "Storage failed.".to_string(),
            other => {
                let mut s = other.to_string();
                if let Some(first) = s.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                format!("{s}.")
            }
        };
        ApiError::new(code, what)
    }
}
