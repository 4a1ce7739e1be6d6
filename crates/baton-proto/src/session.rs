//! Sessions, transcript entries and input messages.

use serde::{Deserialize, Serialize};

use crate::{HandoffId, InputId, MachineId, Millis, Sealed, SessionId};

/// Where a session's transcript lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    /// Baton's transcript (on the server, encrypted) is the truth.
    Synced,
    /// The provider's own files on the owning machine are the truth.
    Direct,
}

/// Lifecycle state of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Provider ready, no turn running.
    Idle,
    /// A turn is running.
    Running,
    /// A handoff has stopped the source; input is queued.
    HandingOff,
    /// No provider process runs; a new message resumes it.
    Stopped,
    /// Kept for reading only.
    Archived,
}

impl SessionStatus {
    /// The stable string, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Running => "running",
            Self::HandingOff => "handing_off",
            Self::Stopped => "stopped",
            Self::Archived => "archived",
        }
    }

    /// Parses the stable string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "idle" => Self::Idle,
            "running" => Self::Running,
            "handing_off" => Self::HandingOff,
            "stopped" => Self::Stopped,
            "archived" => Self::Archived,
            _ => return None,
        })
    }
}

impl SessionMode {
    /// The stable string, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "synced",
            Self::Direct => "direct",
        }
    }

    /// Parses the stable string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "synced" => Self::Synced,
            "direct" => Self::Direct,
            _ => return None,
        })
    }
}

/// A session as the server stores and serves it: ownership in clear, everything else sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Session id; never changes.
    pub id: SessionId,
    /// Provider name; in clear because the server checks it in handoff preflight.
    pub provider: String,
    /// Synced or direct.
    pub mode: SessionMode,
    /// Owning machine.
    pub owner: MachineId,
    /// +1 at every change of owner.
    pub epoch: u64,
    /// Lifecycle state.
    pub status: SessionStatus,
    /// Seq of the last transcript entry (0 when empty).
    pub last_seq: u64,
    /// The handoff currently running, if any.
    pub active_handoff: Option<HandoffId>,
    /// [`SessionMeta`] sealed with the session's data key.
    pub sealed_meta: Sealed,
    /// The session's data key sealed under the account secret.
    pub sealed_key: Sealed,
    /// Creation time.
    pub created_at: Millis,
    /// Last change of ownership, status or metadata.
    pub updated_at: Millis,
}

/// Session metadata (plaintext; sealed before it leaves the client or daemon).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    /// Absolute workspace path on the owning machine.
    pub workspace: String,
    /// The provider's own session id.
    pub provider_ref: Option<String>,
    /// Short title (first prompt), when known.
    #[serde(default)]
    pub title: Option<String>,
    /// Set on a fork until its owner has copied the parent's state and transcript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_of: Option<ForkOf>,
}

/// Where a forked session comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkOf {
    /// The parent session (same account, same owner).
    pub session: SessionId,
    /// The fork holds the parent's transcript up to this seq.
    pub at_seq: u64,
}

/// An account setting, sealed with the account secret (the server cannot read it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingRecord {
    /// Its name (`handoff` for the handoff dialog's defaults).
    pub name: String,
    /// The sealed value (account record kind `settings`, id = name).
    pub sealed: Sealed,
    /// Last change.
    pub updated_at: Millis,
}

/// A provider credential stored in the account (a connected service): the daemon passes its
/// variables to the provider's CLI so a machine needs no local login.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Provider name (`claude`, `codex`, `opencode`).
    pub provider: String,
    /// Sealed [`ServiceSecret`] (account secret; the server cannot read it).
    pub sealed: Sealed,
    /// Last change.
    pub updated_at: Millis,
}

/// The plaintext of a connected service.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSecret {
    /// Environment variables to set for the provider's processes.
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for ServiceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ServiceSecret")
            .field("env", &names)
            .finish()
    }
}

/// Kind of a transcript entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryRole {
    /// A message from the user.
    User,
    /// Text from the agent.
    Assistant,
    /// The agent called a tool.
    ToolCall,
    /// A tool's result.
    ToolResult,
    /// An error (provider crash, refused action).
    Error,
    /// A note from Baton itself (e.g. a handoff happened).
    System,
    /// A tool approval: the agent's request, or its answer ([`EntryBody::permission`]).
    Permission,
}

impl EntryRole {
    /// The stable string, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::ToolCall => "tool_call",
            Self::ToolResult => "tool_result",
            Self::Error => "error",
            Self::System => "system",
            Self::Permission => "permission",
        }
    }
}

/// A transcript entry's plaintext body (sealed before it leaves the daemon).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryBody {
    /// Kind of entry.
    pub role: EntryRole,
    /// Text for a person.
    pub text: String,
    /// For user entries: the input message this entry consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_id: Option<InputId>,
    /// True on the last entry of a turn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub turn_end: bool,
    /// Structured details (tool input, usage), provider-specific.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// On [`EntryRole::Permission`] entries: what happened to which request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<PermissionNote>,
}

/// A tool approval as the transcript records it. A request is named by the seq of the entry
/// that carries it, so it stays the same request across handoffs and restarts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PermissionNote {
    /// The agent asks to use a tool; open until a later entry answers, closes or re-raises it.
    Request {
        /// Tool name, as the provider calls it.
        tool: String,
        /// Tool input, as the provider gave it.
        input: serde_json::Value,
        /// The request (seq) this one asks again: its process is gone (the session moved to
        /// another machine, or its daemon restarted) and this one replaces it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reraises: Option<u64>,
    },
    /// The request at seq `request` was answered.
    Answer {
        /// Seq of the request.
        request: u64,
        /// True when the tool may run.
        allow: bool,
    },
    /// The request at seq `request` ended unanswered (the agent gave up on it).
    Closed {
        /// Seq of the request.
        request: u64,
    },
}

/// A person's answer to a tool approval request (sealed from the client to the owning daemon).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionAnswer {
    /// True when the tool may run.
    pub allow: bool,
}

/// An open tool approval request.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenPermission {
    /// Seq of the entry that asks.
    pub seq: u64,
    /// Tool name.
    pub tool: String,
    /// Tool input.
    pub input: serde_json::Value,
}

/// The requests still open after `entries` (seq, body) in transcript order: asked, and neither
/// answered, closed nor re-raised by a later entry.
pub fn open_permissions<'a>(
    entries: impl IntoIterator<Item = (u64, &'a EntryBody)>,
) -> Vec<OpenPermission> {
    let mut open: Vec<OpenPermission> = Vec::new();
    for (seq, body) in entries {
        match &body.permission {
            Some(PermissionNote::Request {
                tool,
                input,
                reraises,
            }) => {
                if let Some(old) = reraises {
                    open.retain(|p| p.seq != *old);
                }
                open.push(OpenPermission {
                    seq,
                    tool: tool.clone(),
                    input: input.clone(),
                });
            }
            Some(PermissionNote::Answer { request, .. } | PermissionNote::Closed { request }) => {
                open.retain(|p| p.seq != *request);
            }
            None => {}
        }
    }
    open
}

impl EntryBody {
    /// A plain entry of `role` with `text`.
    pub fn new(role: EntryRole, text: impl Into<String>) -> Self {
        Self {
            role,
            text: text.into(),
            input_id: None,
            turn_end: false,
            data: None,
            permission: None,
        }
    }
}

/// A transcript entry as stored: identity in clear, body sealed with the identity bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEntry {
    /// Dense, strictly increasing per session, from 1.
    pub seq: u64,
    /// Owner epoch that wrote it.
    pub epoch: u64,
    /// The input this entry consumed (user entries only); lets the server mark it delivered.
    pub input_id: Option<InputId>,
    /// Sealed [`EntryBody`].
    pub sealed: Sealed,
    /// When the server stored it.
    pub created_at: Millis,
}

/// An input message waiting for, or delivered to, the session's owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    /// Client-generated id (idempotency key).
    pub id: InputId,
    /// Session it goes to.
    pub session_id: SessionId,
    /// Server-assigned arrival order within the session.
    pub order: u64,
    /// Sealed text.
    pub sealed: Sealed,
    /// True once the owner consumed it into the transcript.
    pub consumed: bool,
    /// Seq of the user entry that consumed it.
    pub consumed_seq: Option<u64>,
    /// Arrival time.
    pub created_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(p: PermissionNote) -> EntryBody {
        EntryBody {
            permission: Some(p),
            ..EntryBody::new(EntryRole::Permission, "")
        }
    }

    fn ask(reraises: Option<u64>) -> EntryBody {
        note(PermissionNote::Request {
            tool: "Bash".into(),
            input: serde_json::json!({"command": "ls"}),
            reraises,
        })
    }

    #[test]
    fn open_permissions_follow_answers_closes_and_reraises() {
        let entries = [
            (1, EntryBody::new(EntryRole::User, "hi")),
            (2, ask(None)),
            (3, ask(None)),
            (4, ask(None)),
            (
                5,
                note(PermissionNote::Answer {
                    request: 2,
                    allow: true,
                }),
            ),
            (6, note(PermissionNote::Closed { request: 3 })),
            (7, ask(Some(4))),
        ];
        let open = open_permissions(entries.iter().map(|(s, b)| (*s, b)));
        assert_eq!(open.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![7]);
        assert_eq!(open[0].tool, "Bash");
        let more = [(
            8,
            note(PermissionNote::Answer {
                request: 7,
                allow: false,
            }),
        )];
        let all = entries.iter().chain(more.iter()).map(|(s, b)| (*s, b));
        assert!(open_permissions(all).is_empty());
    }

    #[test]
    fn permission_notes_have_stable_json() {
        let v = serde_json::to_value(ask(Some(4))).unwrap();
        assert_eq!(v["role"], "permission");
        assert_eq!(v["permission"]["kind"], "request");
        assert_eq!(v["permission"]["reraises"], 4);
        let plain = serde_json::to_value(EntryBody::new(EntryRole::User, "x")).unwrap();
        assert!(
            plain.get("permission").is_none(),
            "absent when not a permission"
        );
    }
}
