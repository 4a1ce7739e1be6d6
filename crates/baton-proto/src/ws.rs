//! WebSocket frames (`GET /v1/ws`), JSON text messages. Daemons and watching clients use the same
//! socket: clients subscribe to events; daemons also answer the server's commands.

use serde::{Deserialize, Serialize};

use crate::sealed::Bytes;

use crate::{
    AccountId, ApiError, HandoffId, HandoffRecord, InputRecord, MachineId, MachineInfo,
    ProviderInfo, Sealed, SealedEntry, SessionId, SessionRecord,
};

/// Which role a connection plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnRole {
    /// The machine's daemon: marks the machine online and takes commands.
    Daemon,
    /// A watching client (CLI, browser).
    Client,
}

/// Frames sent to the server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame on every connection.
    Hello {
        /// Role of this connection.
        role: ConnRole,
        /// Protocol version the client speaks.
        protocol: u32,
        /// Providers (daemons only).
        #[serde(default)]
        providers: Vec<ProviderInfo>,
    },
    /// Receive events of one session (or of all sessions of the account when `session_id` is
    /// absent); `entries` selects whether transcript entries are pushed too.
    Subscribe {
        /// Session, or all.
        session_id: Option<SessionId>,
        /// Push transcript entries as they are appended.
        entries: bool,
    },
    /// Daemon's updated provider report.
    Capabilities {
        /// Providers detected.
        providers: Vec<ProviderInfo>,
    },
    /// Daemon's answer to a [`ServerFrame::Command`].
    Reply {
        /// The command's id.
        id: u64,
        /// Outcome.
        result: Result<DaemonReply, ApiError>,
    },
}

/// Frames sent by the server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Answer to hello.
    Welcome {
        /// Caller's machine.
        machine_id: MachineId,
        /// Caller's account.
        account_id: AccountId,
    },
    /// Something changed.
    Event {
        /// What changed.
        event: Event,
    },
    /// A command for the daemon; answer with [`ClientFrame::Reply`].
    Command {
        /// Id to answer with.
        id: u64,
        /// What to do.
        command: DaemonCommand,
    },
}

/// Live updates pushed to subscribers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A session's owner, epoch, status or metadata changed (or it was created).
    SessionChanged {
        /// The session now.
        session: SessionRecord,
    },
    /// Entries were appended.
    Entries {
        /// Session.
        session_id: SessionId,
        /// New entries, in seq order.
        entries: Vec<SealedEntry>,
    },
    /// An input was queued for the session.
    InputQueued {
        /// The input.
        input: InputRecord,
    },
    /// A handoff moved to another phase or ended.
    HandoffChanged {
        /// The handoff now.
        handoff: HandoffRecord,
    },
    /// A workspace transfer advanced (sent a few times a second while it runs).
    HandoffProgress {
        /// Handoff.
        handoff_id: HandoffId,
        /// Its session.
        session_id: SessionId,
        /// Where it is.
        progress: crate::handoff::TransferProgress,
    },
    /// The account's connected services changed; daemons fetch them again.
    ServicesChanged,
    /// A machine came online, went offline or reported new providers.
    MachineChanged {
        /// The machine now.
        machine: MachineInfo,
    },
}

/// Commands the server's handoff coordinator sends to daemons.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DaemonCommand {
    /// Target: read-only check that it can take the session (provider, login, path).
    Preflight {
        /// Handoff.
        handoff_id: HandoffId,
        /// The session as it is now.
        session: SessionRecord,
        /// Sealed participant-only options.
        sealed_options: Option<Sealed>,
        /// With workspace transfer, the bytes the source selected: the destination may then be
        /// absent (it is created), must be a safe path, and its disk must hold this much.
        #[serde(default)]
        workspace_bytes: Option<u64>,
    },
    /// Source, in preflight of a handoff with workspace transfer: check that the session's
    /// workspace may be sent (never `/`, the home directory or a non-directory) and measure
    /// the selection. Read-only.
    WorkspaceCheck {
        /// Handoff.
        handoff_id: HandoffId,
        /// The session as it is now.
        session: SessionRecord,
        /// Sealed participant-only options (ignored-files policy).
        sealed_options: Option<Sealed>,
    },
    /// Source: serve the workspace on the handoff's transfer socket. The first pass sends the
    /// tree scanned in preflight while the session runs; the final pass (after quiesce) rescans,
    /// reusing the hashes of unchanged files, so only what changed since travels.
    WorkspaceSend {
        /// Handoff.
        handoff_id: HandoffId,
        /// This pass's transfer (its own socket pair and key).
        transfer_id: HandoffId,
        /// The session as it is now.
        session: SessionRecord,
        /// Sealed participant-only options (ignored-files policy).
        sealed_options: Option<Sealed>,
        /// True after quiesce: the tree the target must end up with.
        final_pass: bool,
        /// The last earlier pass of this handoff that the target completed: when the source
        /// still holds that pass's scan, it sends only what changed since.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_transfer: Option<HandoffId>,
        /// Which pass this is (absent from servers that predate it): the source keeps its
        /// preflight walk through the plan, for the pre-copy to start from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pass: Option<crate::handoff::WorkspacePass>,
    },
    /// Source: answer whether this daemon still serves `transfer_id` (after it reconnected:
    /// a restarted daemon does not, and the pass fails at once).
    WorkspaceStatus {
        /// Handoff.
        handoff_id: HandoffId,
        /// The pass's transfer.
        transfer_id: HandoffId,
    },
    /// Target: receive the workspace pass the source serves into staging beside the
    /// destination, asking only for the chunks it lacks; the final pass ends with every file
    /// verified.
    WorkspaceReceive {
        /// Handoff.
        handoff_id: HandoffId,
        /// This pass's transfer, as given to the source.
        transfer_id: HandoffId,
        /// The session as it is now.
        session: SessionRecord,
        /// Sealed participant-only options (destination path).
        sealed_options: Option<Sealed>,
        /// Conflict policy when the destination exists.
        conflict: crate::workspace::ConflictPolicy,
        /// Which pass.
        pass: crate::handoff::WorkspacePass,
    },
    /// Target: make the staging area.
    PrepareTarget {
        /// Handoff.
        handoff_id: HandoffId,
        /// Session.
        session_id: SessionId,
    },
    /// Source: finish the turn, flush, stop the provider; take no more input.
    Quiesce {
        /// Handoff.
        handoff_id: HandoffId,
        /// Session.
        session_id: SessionId,
        /// Epoch being handed off.
        epoch: u64,
    },
    /// Source: export the provider state, seal it and upload it as the handoff's bundle.
    Export {
        /// Handoff.
        handoff_id: HandoffId,
        /// Session.
        session_id: SessionId,
    },
    /// Target: download the bundle, verify it, import it into staging with paths rewritten.
    Import {
        /// Handoff.
        handoff_id: HandoffId,
        /// The session as it is now.
        session: SessionRecord,
        /// Sealed participant-only options.
        sealed_options: Option<Sealed>,
    },
    /// Target, after commit: put the staged state in place and resume the session.
    Activate {
        /// Handoff.
        handoff_id: HandoffId,
        /// The session after commit (owner = target).
        session: SessionRecord,
    },
    /// Either side, before commit: forget this handoff (drop staging / resume).
    Abort {
        /// Handoff.
        handoff_id: HandoffId,
        /// Session.
        session_id: SessionId,
    },
    /// Source, after activation: remove the local provider state copy.
    Cleanup {
        /// Handoff.
        handoff_id: HandoffId,
        /// Session.
        session_id: SessionId,
    },
    /// List the conversations in the providers' own files on this machine
    /// (`baton provider-sessions`); the answer is sealed under the account secret.
    ListProviderSessions {
        /// Request id, bound into the sealed answer.
        request: String,
        /// Only this provider, when set.
        provider: Option<String>,
    },
    /// Read a Direct session's transcript from the provider's files; the answer is sealed with
    /// the session's data key.
    ReadTranscript {
        /// Request id, bound into the sealed answer.
        request: String,
        /// The session (owned by this machine).
        session: SessionRecord,
    },
    /// Answer the tool approval request at seq `request` of a session this machine runs.
    AnswerPermission {
        /// Session.
        session_id: SessionId,
        /// Seq of the request entry.
        request: u64,
        /// Sealed [`crate::PermissionAnswer`], bound to the session and `request`.
        sealed: Sealed,
    },
}

impl DaemonCommand {
    /// The command's name in upper case (`EXPORT`, `ACTIVATE`, …), for logs and test hooks.
    pub fn op_name(&self) -> &'static str {
        match self {
            Self::Preflight { .. } => "PREFLIGHT",
            Self::WorkspaceCheck { .. } => "WORKSPACE_CHECK",
            Self::WorkspaceSend { .. } => "WORKSPACE_SEND",
            Self::WorkspaceStatus { .. } => "WORKSPACE_STATUS",
            Self::WorkspaceReceive { .. } => "WORKSPACE_RECEIVE",
            Self::PrepareTarget { .. } => "PREPARE_TARGET",
            Self::Quiesce { .. } => "QUIESCE",
            Self::Export { .. } => "EXPORT",
            Self::Import { .. } => "IMPORT",
            Self::Activate { .. } => "ACTIVATE",
            Self::Abort { .. } => "ABORT",
            Self::Cleanup { .. } => "CLEANUP",
            Self::ListProviderSessions { .. } => "LIST_PROVIDER_SESSIONS",
            Self::ReadTranscript { .. } => "READ_TRANSCRIPT",
            Self::AnswerPermission { .. } => "ANSWER_PERMISSION",
        }
    }

    /// The handoff this command belongs to.
    pub fn handoff_id(&self) -> Option<HandoffId> {
        Some(match self {
            Self::Preflight { handoff_id, .. }
            | Self::WorkspaceCheck { handoff_id, .. }
            | Self::WorkspaceSend { handoff_id, .. }
            | Self::WorkspaceStatus { handoff_id, .. }
            | Self::WorkspaceReceive { handoff_id, .. }
            | Self::PrepareTarget { handoff_id, .. }
            | Self::Quiesce { handoff_id, .. }
            | Self::Export { handoff_id, .. }
            | Self::Import { handoff_id, .. }
            | Self::Activate { handoff_id, .. }
            | Self::Abort { handoff_id, .. }
            | Self::Cleanup { handoff_id, .. } => *handoff_id,
            Self::ListProviderSessions { .. }
            | Self::ReadTranscript { .. }
            | Self::AnswerPermission { .. } => return None,
        })
    }
}

/// Successful answers to [`DaemonCommand`]s.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum DaemonReply {
    /// Done, nothing to report.
    Ok,
    /// Quiesced; the transcript is flushed up to `last_seq`.
    Quiesced {
        /// Last seq the source wrote.
        last_seq: u64,
    },
    /// Answer to [`DaemonCommand::WorkspaceCheck`]: the size of the selected tree, which the
    /// server needs for its per-account caps (counts only; paths stay on the machines).
    WorkspaceChecked {
        /// Regular files selected.
        files: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// Answer to [`DaemonCommand::WorkspaceSend`]: serving; the tree of this pass.
    WorkspaceServing {
        /// Regular files in the manifest.
        files: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// Answer to a plan pass of [`DaemonCommand::WorkspaceReceive`].
    WorkspacePlanned {
        /// The sealed [`crate::workspace::PlanSummary`] (it names paths).
        sealed_plan: Sealed,
        /// Bytes of file data that will travel (after delta).
        transfer_bytes: u64,
        /// True when the target planned from the whole manifest and keeps it, so the next pass
        /// may send only what changed since (false for a plan made from the source's counts).
        #[serde(default)]
        holds_manifest: bool,
    },
    /// Answer to [`DaemonCommand::WorkspaceReceive`]: what this pass moved.
    WorkspaceReceived {
        /// Regular files in the manifest.
        files: u64,
        /// Their bytes.
        bytes_total: u64,
        /// Bytes of file data that travelled in this pass (after delta).
        bytes_sent: u64,
        /// Bytes the target already had (destination tree, earlier pass).
        bytes_reused: u64,
        /// The final path, the entries left out and the pass's figures, sealed for the
        /// session's clients ([`crate::handoff::WorkspaceOutcome`]); final pass only.
        sealed_outcome: Option<Sealed>,
        /// True when the target keeps this pass's whole manifest and takes the next pass's as
        /// a change to it (a target that does not say so is sent whole manifests).
        #[serde(default)]
        holds_manifest: bool,
    },
    /// Bundle uploaded.
    Exported {
        /// Sealed bundle size.
        bytes: u64,
    },
    /// Bundle verified and staged; metadata re-sealed with the target's workspace path.
    Imported {
        /// New sealed [`crate::SessionMeta`] to store at commit.
        sealed_meta: Sealed,
    },
    /// Answer to [`DaemonCommand::ListProviderSessions`]: a sealed
    /// `Vec<ProviderSessionInfo>` (account record kind `provider-sessions`, id = request).
    ProviderSessions {
        /// The sealed listing.
        sealed: Sealed,
    },
    /// Answer to [`DaemonCommand::ReadTranscript`]: a sealed `Vec<EntryBody>`.
    Transcript {
        /// The sealed entries.
        sealed: Sealed,
    },
}

/// The provider runtime state that moves in a handoff (plaintext; sealed as a whole).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderBundle {
    /// Bundle format version.
    pub format: u32,
    /// Provider name.
    pub provider: String,
    /// Provider's own session id.
    pub provider_ref: String,
    /// Provider version that wrote the state.
    pub provider_version: Option<String>,
    /// Absolute workspace path on the source.
    pub source_workspace: String,
    /// Home directory on the source.
    pub source_home: String,
    /// Files, paths relative to the provider's state directory.
    pub files: Vec<BundleFile>,
}

/// One file of a [`ProviderBundle`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFile {
    /// Path relative to the provider's state directory, `/`-separated, no `..`.
    pub path: String,
    /// Unix mode bits.
    pub mode: u32,
    /// Contents (base64 in JSON).
    pub data: Bytes,
}
