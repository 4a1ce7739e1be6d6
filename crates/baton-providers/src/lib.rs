//! Provider adapters: one per agent CLI (`scripted` now; `claude`, `codex`, `opencode` later),
//! behind one trait: detect the CLI and its login, start or resume a session as a child process,
//! normalise its stream into [`AgentEvent`]s, and export/import its runtime state with absolute
//! paths rewritten for the target machine.
//!
//! This crate never talks to the server and never holds Baton's keys; it sees provider files and
//! processes on the local machine only. It never copies machine-local secrets (credentials, auth
//! files) into a bundle.

pub mod enc;
mod error;
pub mod rewrite;
pub mod scripted;

pub use error::ProviderError;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use baton_proto::ProviderInfo;
use baton_proto::ws::ProviderBundle;

/// Result type of provider operations.
pub type Result<T> = std::result::Result<T, ProviderError>;

/// Where a provider runs: the machine's home directory and extra environment for its CLI.
#[derive(Clone, Debug)]
pub struct ProviderEnv {
    /// `$HOME` of the daemon's user (provider state lives under it).
    pub home: PathBuf,
    /// Extra environment passed to provider processes (e.g. connected-service credentials).
    pub extra_env: Vec<(String, String)>,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct StartSpec {
    /// The provider's own session id (for `scripted`: Baton's session id).
    pub provider_ref: String,
    /// Absolute workspace path; the process runs there.
    pub workspace: PathBuf,
    /// Resume existing state (true) or create a new conversation (false).
    pub resume: bool,
}

/// One normalised event from a running agent.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
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
    /// The turn ended.
    TurnEnd {
        /// Turn number within the conversation (1-based), when the agent reports it.
        turn: Option<u64>,
        /// True when the turn was interrupted.
        interrupted: bool,
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
}

/// All adapters this build knows, for a machine with `env`.
pub fn all(env: &ProviderEnv) -> Vec<Box<dyn Provider>> {
    vec![Box::new(scripted::ScriptedProvider::new(env.clone()))]
}
