//! Stable error codes. The string form of each code is part of the protocol and never changes;
//! every code carries a sentence for the user and the next step to take.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or a value was out of range.
    BadRequest,
    /// No valid credentials were presented.
    Unauthorized,
    /// The thing does not exist, or belongs to another account.
    NotFound,
    /// A name or id is already taken.
    Conflict,
    /// A pairing code is unknown, used or expired.
    PairingInvalid,
    /// The handoff target machine is not connected.
    TargetOffline,
    /// The source (current owner) is not connected, so it cannot be stopped cleanly.
    SourceOffline,
    /// The provider is not installed on the target.
    ProviderNotInstalled,
    /// The provider is installed on the target but not logged in.
    ProviderAuthMissing,
    /// The provider does not support handoff.
    ProviderUnsupported,
    /// The provider's version on the target cannot read the session's state.
    AgentVersionUnsupported,
    /// The workspace path on the target does not exist.
    TargetPathMissing,
    /// The workspace source is unsafe to transfer (`/`, home, not a directory).
    UnsafeWorkspacePath,
    /// The destination workspace conflicts with existing files.
    WorkspaceConflict,
    /// The target already holds different provider state for this session.
    TargetIdentityConflict,
    /// The write carried an epoch older than the session's: the writer no longer owns it.
    StaleEpoch,
    /// A handoff of this session is already running.
    HandoffInProgress,
    /// The session is being handed off; input is queued, not delivered.
    HandingOff,
    /// The target is the session's current owner.
    SameMachine,
    /// The transcript sequence number did not follow the last one.
    SeqConflict,
    /// This input was already consumed.
    DuplicateInput,
    /// The session is stopped or archived and cannot take this action.
    SessionNotActive,
    /// Moving the provider state failed.
    TransferFailed,
    /// The moved state did not verify on the target.
    VerifyFailed,
    /// Starting the session on the target failed after commit.
    ActivateFailed,
    /// The provider process failed.
    ProviderFailed,
    /// The permission request is not open (already answered, or its turn ended).
    PermissionNotOpen,
    /// A participant did not answer in time.
    Timeout,
    /// The server restarted during the handoff before it committed; nothing moved.
    Interrupted,
    /// The person declined the plan (or asked only for it, `--dry-run`); nothing moved.
    Cancelled,
    /// Too large for the configured limits.
    TooLarge,
    /// The destination's filesystem lacks the space the workspace needs.
    InsufficientSpace,
    /// The workspace selection exceeds the transfer limits (files or bytes).
    TransferTooLarge,
    /// A received workspace manifest or chunk is malformed or unsafe.
    InvalidWorkspaceManifest,
    /// Something unexpected failed on the server or daemon.
    Internal,
}

impl ErrorCode {
    /// The code's stable string, as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::PairingInvalid => "pairing_invalid",
            Self::TargetOffline => "target_offline",
            Self::SourceOffline => "source_offline",
            Self::ProviderNotInstalled => "provider_not_installed",
            Self::ProviderAuthMissing => "provider_auth_missing",
            Self::ProviderUnsupported => "provider_unsupported",
            Self::AgentVersionUnsupported => "agent_version_unsupported",
            Self::TargetPathMissing => "target_path_missing",
            Self::UnsafeWorkspacePath => "unsafe_workspace_path",
            Self::WorkspaceConflict => "workspace_conflict",
            Self::TargetIdentityConflict => "target_identity_conflict",
            Self::StaleEpoch => "stale_epoch",
            Self::HandoffInProgress => "handoff_in_progress",
            Self::HandingOff => "handing_off",
            Self::SameMachine => "same_machine",
            Self::SeqConflict => "seq_conflict",
            Self::DuplicateInput => "duplicate_input",
            Self::SessionNotActive => "session_not_active",
            Self::TransferFailed => "transfer_failed",
            Self::VerifyFailed => "verify_failed",
            Self::ActivateFailed => "activate_failed",
            Self::ProviderFailed => "provider_failed",
            Self::PermissionNotOpen => "permission_not_open",
            Self::Timeout => "timeout",
            Self::Interrupted => "interrupted",
            Self::Cancelled => "cancelled",
            Self::TooLarge => "too_large",
            Self::InsufficientSpace => "insufficient_space",
            Self::TransferTooLarge => "transfer_too_large",
            Self::InvalidWorkspaceManifest => "invalid_workspace_manifest",
            Self::Internal => "internal",
        }
    }

    /// What the user should do next, in one sentence.
    pub fn next_step(self) -> &'static str {
        match self {
            Self::BadRequest => "Check the command's arguments (`baton help`) and try again.",
            Self::Unauthorized => "Run `baton login` on this machine again.",
            Self::NotFound => "Check the id or name with `baton sessions` / `baton machines`.",
            Self::Conflict => "Pick another name.",
            Self::PairingInvalid => {
                "Run `baton pair` on a machine of the account for a fresh code (codes last 10 minutes and work once)."
            }
            Self::TargetOffline => {
                "Start `baton daemon` on the target machine (or wake it), then retry the handoff."
            }
            Self::SourceOffline => {
                "Start `baton daemon` on the machine that owns the session, then retry."
            }
            Self::ProviderNotInstalled => {
                "Install the provider's CLI on the target machine and restart its daemon, then retry."
            }
            Self::ProviderAuthMissing => {
                "Log the provider in on the target machine (or add a connected service), then retry."
            }
            Self::ProviderUnsupported => "This provider's sessions cannot be handed off.",
            Self::AgentVersionUnsupported => {
                "Update the provider's CLI on the target to a supported version, then retry."
            }
            Self::TargetPathMissing => {
                "Create the directory on the target, pass another one with --path, or transfer the workspace."
            }
            Self::UnsafeWorkspacePath => {
                "Use a project directory, not / or your home directory, as the workspace."
            }
            Self::WorkspaceConflict => "Pick another --path or the other conflict policy.",
            Self::TargetIdentityConflict => {
                "The target holds a different copy of this session's provider state; remove it there, then retry."
            }
            Self::StaleEpoch => {
                "This machine no longer owns the session; it has been stopped here. Use `baton sessions` to see the owner."
            }
            Self::HandoffInProgress => {
                "Wait for the running handoff to finish (`baton handoffs SESSION`), then retry."
            }
            Self::HandingOff => "Your input is queued and will be delivered once the handoff ends.",
            Self::SameMachine => "Pick a machine other than the current owner.",
            Self::SeqConflict => "Retry; the writer will resynchronise.",
            Self::DuplicateInput => "Nothing to do: the message was already delivered.",
            Self::SessionNotActive => {
                "Start a new session, or send a message to resume a stopped one."
            }
            Self::TransferFailed => {
                "Nothing changed: the session stays with its owner. Check both daemons' logs and retry."
            }
            Self::VerifyFailed => {
                "Nothing changed: the session stays with its owner. Retry; if it fails again, check the target daemon's log."
            }
            Self::ActivateFailed => {
                "The target owns the session but could not start it; see `baton log` and send a message to retry."
            }
            Self::ProviderFailed => "See `baton log SESSION` for the provider's error.",
            Self::PermissionNotOpen => {
                "Nothing to answer: it was already answered or its turn ended. See `baton permissions SESSION`."
            }
            Self::Timeout => "Check that both machines are online and retry.",
            Self::Interrupted => {
                "Nothing changed: the session stays with its owner. Retry the handoff."
            }
            Self::Cancelled => {
                "Nothing changed: the session stays with its owner. Run the handoff again to go ahead."
            }
            Self::TooLarge => "Reduce the size or raise the server's limit.",
            Self::InsufficientSpace => {
                "Free space on the target's disk or pick another --path, then retry; nothing changed."
            }
            Self::TransferTooLarge => {
                "Leave large ignored files behind (--ignored skip), or transfer less, then retry; nothing changed."
            }
            Self::InvalidWorkspaceManifest => {
                "Nothing changed at the destination. Update Baton on both machines and retry; if it persists, report it."
            }
            Self::Internal => "Retry; if it persists, check the server and daemon logs.",
        }
    }

    /// The HTTP status the server answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::UnsafeWorkspacePath | Self::InvalidWorkspaceManifest => 400,
            Self::Unauthorized | Self::PairingInvalid => 401,
            Self::NotFound => 404,
            Self::TooLarge | Self::TransferTooLarge => 413,
            Self::InsufficientSpace => 507,
            Self::Internal => 500,
            Self::Timeout => 504,
            _ => 409,
        }
    }

    /// True for refusals found before anything changed (CLI exit code 3).
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Self::TargetOffline
                | Self::SourceOffline
                | Self::ProviderNotInstalled
                | Self::ProviderAuthMissing
                | Self::ProviderUnsupported
                | Self::AgentVersionUnsupported
                | Self::TargetPathMissing
                | Self::UnsafeWorkspacePath
                | Self::WorkspaceConflict
                | Self::TargetIdentityConflict
                | Self::HandoffInProgress
                | Self::SameMachine
                | Self::InsufficientSpace
                | Self::TransferTooLarge
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it travels: a stable code and a human message (which includes the next step).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// What went wrong and what to do, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with `what` as the first sentence and the code's next step appended.
    pub fn new(code: ErrorCode, what: impl Into<String>) -> Self {
        let what = what.into();
        let message = if what.is_empty() {
            code.next_step().to_string()
        } else {
            format!("{what} {}", code.next_step())
        };
        Self { code, message }
    }

    /// An error whose message is exactly `message` (no next step appended).
    pub fn raw(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_strings_match_serde() {
        for code in [
            ErrorCode::TargetOffline,
            ErrorCode::ProviderNotInstalled,
            ErrorCode::ProviderAuthMissing,
            ErrorCode::TargetPathMissing,
            ErrorCode::HandoffInProgress,
            ErrorCode::StaleEpoch,
            ErrorCode::PermissionNotOpen,
            ErrorCode::InsufficientSpace,
            ErrorCode::TransferTooLarge,
            ErrorCode::InvalidWorkspaceManifest,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn message_carries_next_step() {
        let e = ApiError::new(ErrorCode::TargetOffline, "Machine desktop is offline.");
        assert!(e.message.starts_with("Machine desktop is offline."));
        assert!(e.message.contains("baton daemon"));
    }
}
