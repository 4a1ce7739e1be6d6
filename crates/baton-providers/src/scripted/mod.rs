//! The `scripted` provider: Baton's own small deterministic agent program ([`agent`]), which
//! behaves like a real provider CLI (state files with absolute paths, resume by id, a JSON-lines
//! stream), and its adapter ([`ScriptedProvider`]). Core tests use it instead of real CLIs.

mod adapter;
pub mod agent;
mod library;
mod session;
mod state;

pub use adapter::{PROGRAM_ENV, ScriptedProvider};

use std::path::{Path, PathBuf};

use crate::enc::enc;
use crate::{ProviderError, Result};

/// Provider name.
pub const NAME: &str = "scripted";

/// Version the agent program reports.
pub const VERSION: &str = "1.0.0";

/// The agent's state directory, relative to `$HOME`.
pub const STATE_DIR: &str = ".scripted-agent";

/// Environment variable that logs the agent in without the `auth` file (a connected service).
pub const API_KEY_ENV: &str = "SCRIPTED_AGENT_API_KEY";

/// Subcommand of the `baton` binary that runs the agent program.
pub const SUBCOMMAND: &str = "scripted-agent";

/// Provider-state bundle format written and accepted.
const BUNDLE_FORMAT: u32 = 1;

/// Longest session id accepted (ids become file names).
const MAX_ID_LEN: usize = 128;

/// The agent's state directory under `home`.
fn state_dir(home: &Path) -> PathBuf {
    home.join(STATE_DIR)
}

/// Whether `id` is safe as a file name: `[A-Za-z0-9_-]`, starting with an alphanumeric.
fn is_valid_session_id(id: &str) -> bool {
    id.len() <= MAX_ID_LEN
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Refuses ids that are not safe file names.
fn check_ref(provider_ref: &str) -> Result<()> {
    if is_valid_session_id(provider_ref) {
        Ok(())
    } else {
        Err(ProviderError::InvalidBundle(format!(
            "invalid scripted session id {provider_ref:?}"
        )))
    }
}

/// Path of a conversation file relative to the state directory.
fn session_rel_path(workspace: &str, id: &str) -> String {
    format!("projects/{}/{id}.jsonl", enc(workspace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        assert!(is_valid_session_id("0b9c-42_x"));
        assert!(!is_valid_session_id(""));
        assert!(!is_valid_session_id("-x"));
        assert!(!is_valid_session_id("../x"));
        assert!(!is_valid_session_id("a/b"));
        assert!(!is_valid_session_id(&"a".repeat(MAX_ID_LEN + 1)));
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            session_rel_path("/home/dev/ws", "s1"),
            "projects/-home-dev-ws/s1.jsonl"
        );
    }
}
