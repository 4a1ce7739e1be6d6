//! Handoff records, phases and options (DESIGN §4).

use serde::{Deserialize, Serialize};

use crate::workspace::{ConflictPolicy, IgnoredFiles};
use crate::{ApiError, HandoffId, MachineId, Millis, Sealed, SessionId};

/// Phases of a handoff, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffPhase {
    /// The client asked for it.
    Requested,
    /// Read-only checks of target and source.
    Preflight,
    /// Target checks its destination and makes a staging area.
    PrepareTarget,
    /// With workspace transfer only: the bulk of the tree travels while the session still runs
    /// on the source.
    Precopy,
    /// Source finishes its turn and stops the provider.
    QuiesceSource,
    /// Provider state travels, sealed, source → server → target.
    Transfer,
    /// Target checks and imports the state into staging, paths rewritten.
    Verify,
    /// Server switches the owner and bumps the epoch in one transaction.
    Commit,
    /// Target puts the state in place and resumes the provider.
    Activate,
    /// Source cleans up; the handoff is over.
    Done,
}

impl HandoffPhase {
    /// Every phase in order.
    pub const ALL: [HandoffPhase; 10] = [
        Self::Requested,
        Self::Preflight,
        Self::PrepareTarget,
        Self::Precopy,
        Self::QuiesceSource,
        Self::Transfer,
        Self::Verify,
        Self::Commit,
        Self::Activate,
        Self::Done,
    ];

    /// The stable string, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Preflight => "preflight",
            Self::PrepareTarget => "prepare_target",
            Self::Precopy => "precopy",
            Self::QuiesceSource => "quiesce_source",
            Self::Transfer => "transfer",
            Self::Verify => "verify",
            Self::Commit => "commit",
            Self::Activate => "activate",
            Self::Done => "done",
        }
    }

    /// Parses the stable string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The phase after this one, if any.
    pub fn next(self) -> Option<Self> {
        let i = Self::ALL.iter().position(|p| *p == self)?;
        Self::ALL.get(i + 1).copied()
    }

    /// True for phases that come after the owner switched (the handoff can no longer abort).
    pub fn is_after_commit(self) -> bool {
        self >= Self::Activate
    }
}

/// Outcome of a handoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffResult {
    /// Still running.
    Active,
    /// Ownership moved to the target.
    Committed,
    /// Nothing moved; the source owns the session.
    Aborted,
}

impl HandoffResult {
    /// The stable string, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Committed => "committed",
            Self::Aborted => "aborted",
        }
    }

    /// Parses the stable string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "committed" => Self::Committed,
            "aborted" => Self::Aborted,
            _ => return None,
        })
    }
}

/// One phase as it ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// Which phase.
    pub phase: HandoffPhase,
    /// When it started.
    pub started_at: Millis,
    /// When it ended (absent while running).
    pub ended_at: Option<Millis>,
    /// True when it ended successfully.
    pub ok: bool,
}

/// Options of a handoff that the server may read (no paths: those are sealed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffOptions {
    /// Transfer the workspace too (off by default).
    #[serde(default)]
    pub workspace: bool,
    /// What a Direct session becomes on the target (ignored for synced sessions).
    #[serde(default)]
    pub direct: DirectTarget,
    /// With `workspace`: what happens when the destination already exists.
    #[serde(default)]
    pub conflict: ConflictPolicy,
    /// With `workspace`: after the plan is made, wait for the client's go-ahead
    /// (`POST /v1/handoffs/{id}/confirm`) before anything moves.
    #[serde(default)]
    pub await_confirm: bool,
}

/// How far a workspace pass is, as the target reports it (counts only: no paths).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferProgress {
    /// Which pass (`precopy` or `final`).
    pub pass: Option<WorkspacePass>,
    /// Files of the tree complete at the target.
    pub files_done: u64,
    /// Files in the tree.
    pub files_total: u64,
    /// Bytes of file data received in this pass.
    pub bytes_done: u64,
    /// Bytes of file data this pass must receive (after delta).
    pub bytes_total: u64,
}

/// A client's answer to a handoff waiting on its plan (`POST /v1/handoffs/{id}/confirm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmHandoff {
    /// Go ahead (true) or cancel, nothing having moved (false).
    pub proceed: bool,
}

/// Which pass of a workspace transfer a command is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspacePass {
    /// Only the manifest travels: the target answers with the plan.
    Plan,
    /// The bulk of the tree, while the session still runs on the source.
    Precopy,
    /// After quiesce: what changed since, then every file verified.
    Final,
}

/// What a Direct session becomes on the target of a handoff.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectTarget {
    /// The provider's files move and stay the truth: the session stays direct.
    #[default]
    Keep,
    /// The target imports the provider's transcript into Baton: the session becomes synced.
    Sync,
}

impl DirectTarget {
    /// The stable string, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::Sync => "sync",
        }
    }
}

/// Options only the participants may read (sealed with the session's data key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedHandoffOptions {
    /// Workspace path on the target; default: the same path as on the source.
    pub target_path: Option<String>,
    /// With workspace transfer: which ignored files travel (globs are the user's, so sealed).
    #[serde(default)]
    pub ignored: IgnoredFiles,
}

/// What a workspace transfer did, as the target reports it to the session's clients (sealed
/// with the session's data key: it names paths).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceOutcome {
    /// The workspace's final path on the target (the destination, or its sibling).
    pub path: String,
    /// Regular files in the transferred tree.
    pub files: u64,
    /// Their bytes.
    pub bytes_total: u64,
    /// Bytes of file data that travelled, both passes together.
    pub bytes_sent: u64,
    /// Entries left out, with why.
    pub skipped: Vec<crate::workspace::SkippedEntry>,
}

/// A handoff as stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffRecord {
    /// Handoff id (client-generated, so options can be sealed before the request).
    pub id: HandoffId,
    /// Session moved.
    pub session_id: SessionId,
    /// Owner before.
    pub from: MachineId,
    /// Target machine.
    pub to: MachineId,
    /// Session epoch when the handoff started; commit requires it unchanged.
    pub from_epoch: u64,
    /// Current (or last) phase.
    pub phase: HandoffPhase,
    /// Outcome so far.
    pub result: HandoffResult,
    /// Phases that ran, with times.
    pub phases: Vec<PhaseRecord>,
    /// Why it aborted (or failed after commit).
    pub error: Option<ApiError>,
    /// Options readable by the server.
    pub options: HandoffOptions,
    /// [`SealedHandoffOptions`] sealed with the session's data key.
    pub sealed_options: Option<Sealed>,
    /// Bytes of provider state (and workspace) moved.
    pub bytes: u64,
    /// With workspace transfer: the target's sealed [`WorkspaceOutcome`], once the final pass
    /// ended.
    #[serde(default)]
    pub workspace: Option<Sealed>,
    /// With workspace transfer: the target's sealed plan
    /// ([`crate::workspace::PlanSummary`]), made before anything moves.
    #[serde(default)]
    pub plan: Option<Sealed>,
    /// When it was requested.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

impl HandoffRecord {
    /// True once nothing more will happen: aborted, or committed and its last phase (`done`, or
    /// a failed activation) has ended.
    pub fn is_finished(&self) -> bool {
        match self.result {
            HandoffResult::Active => false,
            HandoffResult::Aborted => true,
            HandoffResult::Committed => {
                self.error.is_some()
                    || self
                        .phases
                        .last()
                        .is_some_and(|p| p.phase == HandoffPhase::Done && p.ended_at.is_some())
            }
        }
    }

    /// Whole duration in milliseconds, when finished.
    pub fn duration_ms(&self) -> Option<i64> {
        match self.result {
            HandoffResult::Active => None,
            _ => Some(self.updated_at - self.created_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_ordered_and_parse() {
        let mut p = HandoffPhase::Requested;
        let mut seen = vec![p];
        while let Some(n) = p.next() {
            assert!(n > p);
            p = n;
            seen.push(p);
        }
        assert_eq!(seen, HandoffPhase::ALL.to_vec());
        for p in HandoffPhase::ALL {
            assert_eq!(HandoffPhase::parse(p.as_str()), Some(p));
        }
        assert!(!HandoffPhase::Commit.is_after_commit());
        assert!(HandoffPhase::Activate.is_after_commit());
    }
}
