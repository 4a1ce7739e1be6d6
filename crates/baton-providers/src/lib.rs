//! Provider adapters: one per agent CLI (`scripted` now; `claude`, `codex`, `opencode` later),
//! behind one trait: detect the CLI and its login, start or resume a session as a child process,
//! normalise its stream into [`AgentEvent`]s, and export/import its runtime state with absolute
//! paths rewritten for the target machine.
//!
//! This crate never talks to the server and never holds Baton's keys; it sees provider files and
//! processes on the local machine only. It never copies machine-local secrets (credentials, auth
//! files) into a bundle.

pub mod approval;
pub mod claude;
pub mod codex;
pub mod enc;
mod error;
mod files;
pub mod opencode;
mod process;
pub mod rewrite;
pub mod scripted;

pub use error::ProviderError;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use baton_proto::ws::ProviderBundle;
use baton_proto::{AuthState, HandoffSupport, ProviderInfo, ProviderSessionInfo, VersionCheck};

/// Result type of provider operations.
pub type Result<T> = std::result::Result<T, ProviderError>;

/// Where a provider runs: the machine's home directory and extra environment for its CLI.
#[derive(Clone, Debug)]
pub struct ProviderEnv {
    /// `$HOME` of the daemon's user (provider state lives under it).
    pub home: PathBuf,
    /// Extra environment passed to provider processes, on top of the daemon's own.
    pub extra_env: Vec<(String, String)>,
    /// Configured program paths by provider name (`--provider-bin claude=/opt/claude`); a
    /// provider without one is looked up on `PATH`.
    pub programs: Vec<(String, PathBuf)>,
}

impl ProviderEnv {
    /// An environment for `home` with nothing extra.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self {
            home: home.into(),
            extra_env: Vec::new(),
            programs: Vec::new(),
        }
    }

    /// The value of an environment variable as provider processes see it: `extra_env` first,
    /// then the daemon's own environment. Empty values count as unset.
    pub fn var(&self, name: &str) -> Option<String> {
        self.extra_env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
            .filter(|v| !v.is_empty())
    }

    /// The program for `provider`: its configured path, else `bin` found on `PATH` (as provider
    /// processes see it). `None` when it is nowhere.
    pub fn find_program(&self, provider: &str, bin: &str) -> Option<PathBuf> {
        if let Some((_, p)) = self.programs.iter().find(|(n, _)| n == provider) {
            return Some(p.clone());
        }
        let path = self.var("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(bin))
            .find(|candidate| is_executable(candidate))
    }

    /// A command for `program` with this machine's `HOME`, the extra environment and `env`
    /// (per-session additions, e.g. connected-service credentials) applied; killed on drop.
    pub fn command(&self, program: &Path, env: &[(String, String)]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.env("HOME", &self.home)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        cmd
    }
}

/// Runs blocking work (file walks, hashing, parsing) on the blocking pool; a panicked task
/// becomes a process error naming `what`.
pub(crate) async fn blocking<T, F>(what: &str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProviderError::Process(format!("{what} task failed: {e}")))?
}

/// What `detect` reports before it finds the CLI: not installed, not logged in.
pub(crate) fn undetected(name: &str, handoff: HandoffSupport) -> ProviderInfo {
    ProviderInfo {
        name: name.into(),
        installed: false,
        version: None,
        auth: AuthState::Missing,
        handoff,
        version_check: VersionCheck::Tested,
    }
}

/// True when `path` is a regular file with an execute bit.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What to start.
#[derive(Clone, Debug)]
pub struct StartSpec {
    /// The provider's own session id. For a new conversation (`resume == false`) this is Baton's
    /// session id: providers that accept a chosen id (`scripted`, Claude `--session-id`) use it;
    /// providers that pick their own (Codex, OpenCode) ignore it and report theirs with
    /// [`AgentEvent::SessionRef`] as soon as they know it.
    pub provider_ref: String,
    /// Absolute workspace path; the process runs there.
    pub workspace: PathBuf,
    /// Resume existing state (true) or create a new conversation (false).
    pub resume: bool,
    /// Extra environment for this session's processes: connected-service credentials from the
    /// account, on top of [`ProviderEnv::extra_env`].
    pub env: Vec<(String, String)>,
}

/// Token counts a provider reported for one turn.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// A turn-by-turn transcript entry read back from a provider's own files (Direct sessions,
/// imports): what [`AgentEvent`]s would have produced live.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadEntry {
    /// The normalised event; `User` entries carry the prompt text.
    pub event: AgentEvent,
    /// When it happened, in milliseconds since the epoch, when the provider recorded it.
    pub at: Option<i64>,
}

/// One normalised event from a running agent.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    /// The provider's own id for this conversation, once known (Codex thread id, OpenCode
    /// `ses_…`); the daemon records it in the session's metadata. Emitted at most once per
    /// process, before the first entry of the first turn when possible.
    SessionRef {
        /// The provider's session id.
        provider_ref: String,
    },
    /// A user message (only in transcripts read back from provider files; live turns record the
    /// user's input themselves).
    User {
        /// The text.
        text: String,
    },
    /// Agent text.
    Assistant {
        /// The text.
        text: String,
    },
    /// A tool call.
    ToolCall {
        /// Tool name.
        name: String,
        /// Tool input.
        input: serde_json::Value,
    },
    /// A tool's result.
    ToolResult {
        /// Result text.
        output: String,
    },
    /// An error the agent reported; the turn ends with it.
    Error {
        /// What went wrong.
        message: String,
    },
    /// The agent asks to run a tool and waits for an answer
    /// ([`AgentSession::answer_permission`]).
    PermissionRequest {
        /// The provider's id for the request (unique within the process).
        request_id: String,
        /// Tool name.
        tool: String,
        /// Tool input.
        input: serde_json::Value,
    },
    /// The turn ended.
    TurnEnd {
        /// Turn number within the conversation (1-based), when the agent reports it.
        turn: Option<u64>,
        /// True when the turn was interrupted.
        interrupted: bool,
        /// Token usage of the turn, when reported.
        usage: Option<Usage>,
    },
    /// The process exited (the session is no longer running).
    Exited {
        /// Exit code, if any.
        code: Option<i32>,
        /// Last lines of its stderr, for the error entry.
        stderr_tail: String,
    },
}

/// A running agent conversation (a child process of the daemon).
#[async_trait]
pub trait AgentSession: Send {
    /// Sends one user message, starting a turn.
    async fn send_turn(&mut self, text: &str) -> Result<()>;

    /// The next event; after [`AgentEvent::Exited`] every call returns `Exited` again.
    async fn next_event(&mut self) -> AgentEvent;

    /// Asks the agent to stop the current turn (it ends with `TurnEnd { interrupted: true }`).
    async fn interrupt(&mut self) -> Result<()>;

    /// Ends the process: closes its input, waits briefly, then kills its process group.
    async fn shutdown(self: Box<Self>) -> Result<()>;

    /// Answers an open [`AgentEvent::PermissionRequest`]. Providers without tool approvals
    /// refuse with [`ProviderError::Unsupported`].
    async fn answer_permission(&mut self, request_id: &str, allow: bool) -> Result<()> {
        let _ = (request_id, allow);
        Err(ProviderError::Unsupported(
            "this provider does not ask for tool approvals".into(),
        ))
    }

    /// OS process id, while running.
    fn pid(&self) -> Option<u32>;
}

/// A provider adapter.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Provider name (`scripted`, `claude`, …).
    fn name(&self) -> &'static str;

    /// Whether the CLI is installed, its version, login state and handoff support. Offline and
    /// read-only.
    async fn detect(&self) -> ProviderInfo;

    /// Starts (or resumes) a session process in `spec.workspace`.
    async fn start(&self, spec: &StartSpec) -> Result<Box<dyn AgentSession>>;

    /// True when state for `provider_ref` exists for `workspace` on this machine.
    async fn has_state(&self, provider_ref: &str, workspace: &Path) -> Result<bool>;

    /// Collects the session's runtime state into a bundle (the process must be stopped).
    async fn export_state(&self, provider_ref: &str, workspace: &Path) -> Result<ProviderBundle>;

    /// Writes the bundle's files into `staging` with absolute paths rewritten for
    /// `target_workspace` and this machine's home, laid out as they must end up under the
    /// provider's state directory. Refuses with `TargetIdentityConflict` when different state for
    /// the same id already exists here; identical state is fine (idempotent).
    async fn stage_import(
        &self,
        bundle: &ProviderBundle,
        target_workspace: &Path,
        staging: &Path,
    ) -> Result<()>;

    /// Moves staged files into the provider's state directory (each file atomically).
    async fn activate_import(&self, staging: &Path) -> Result<()>;

    /// Removes the session's state from this machine (after it moved away).
    async fn remove_state(&self, provider_ref: &str, workspace: &Path) -> Result<()>;

    /// The conversations in this provider's files on this machine, newest first. Read-only.
    async fn list_sessions(&self) -> Result<Vec<ProviderSessionInfo>>;

    /// The conversation `provider_ref` read from the provider's files, in order (Direct
    /// sessions, `open --sync`, `--direct sync`). Unknown record types are skipped.
    async fn read_transcript(&self, provider_ref: &str, workspace: &Path)
    -> Result<Vec<ReadEntry>>;

    /// Copies the conversation into a new one (new provider id) holding its first `turns`
    /// completed user turns (all when `None`), in the same workspace; returns the new provider
    /// id. `new_session_id` is Baton's id of the fork, for providers that accept a chosen id.
    async fn fork_state(
        &self,
        provider_ref: &str,
        workspace: &Path,
        new_session_id: &str,
        turns: Option<usize>,
    ) -> Result<String>;

    /// Names of environment variables a connected service for this provider usually sets
    /// (shown by `baton services add` when none is given).
    fn service_env_vars(&self) -> &'static [&'static str] {
        &[]
    }
}

/// All adapters this build knows, for a machine with `env`.
pub fn all(env: &ProviderEnv) -> Vec<Box<dyn Provider>> {
    vec![
        Box::new(scripted::ScriptedProvider::new(env.clone())),
        Box::new(claude::ClaudeProvider::new(env.clone())),
        Box::new(codex::CodexProvider::new(env.clone())),
        Box::new(opencode::OpenCodeProvider::new(env.clone())),
    ]
}
