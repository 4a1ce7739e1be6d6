//! The Claude Code adapter ([`ClaudeProvider`]): runs `claude -p` as one long-lived stream-json
//! process per session (tool approvals over the stdio control protocol), and moves its
//! conversation files (`<config>/projects/<enc(cwd)>/<id>.jsonl` and friends) between machines.
//!
//! Facts it relies on were measured on Claude Code 2.1.331 (providers.md §2).

mod adapter;
mod library;
mod session;
mod state;

pub use adapter::ClaudeProvider;

use std::path::{Path, PathBuf};

use crate::{ProviderEnv, ProviderError, Result};

/// Provider name.
pub const NAME: &str = "claude";

/// Provider-state bundle format written and accepted.
const BUNDLE_FORMAT: u32 = 1;

/// The config directory: `$CLAUDE_CONFIG_DIR` as the CLI sees it, else `$HOME/.claude`.
fn config_dir(env: &ProviderEnv) -> PathBuf {
    env.var("CLAUDE_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env.home.join(".claude"))
}

/// Whether `id` is a UUID in its canonical text form (what `--session-id` accepts; ids also
/// become file names, so nothing else may pass).
fn is_valid_session_id(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Refuses ids that are not UUIDs.
fn check_ref(provider_ref: &str) -> Result<()> {
    if is_valid_session_id(provider_ref) {
        Ok(())
    } else {
        Err(ProviderError::InvalidBundle(format!(
            "invalid Claude session id {provider_ref:?} (want a UUID)"
        )))
    }
}

/// The workspace as Claude records it: the physical path (Claude uses `getcwd`, so symlinks are
/// resolved) when it exists, else the path as given; absolute, UTF-8, without `.` parts or a
/// trailing `/`. Blocking (it may resolve symlinks).
fn workspace_str(workspace: &Path) -> Result<String> {
    if !workspace.is_absolute() {
        return Err(ProviderError::Process(format!(
            "workspace {} is not absolute",
            workspace.display()
        )));
    }
    let physical = std::fs::canonicalize(workspace)
        .unwrap_or_else(|_| workspace.components().collect::<PathBuf>());
    physical.into_os_string().into_string().map_err(|_| {
        ProviderError::Process(format!("workspace {} is not UTF-8", workspace.display()))
    })
}

/// A path as UTF-8, or a process error naming `what`.
fn utf8(path: &Path, what: &str) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| ProviderError::Process(format!("{what} {} is not UTF-8", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        assert!(is_valid_session_id("11111111-2222-4333-8444-555555555555"));
        assert!(is_valid_session_id("019a1b2c-3d4e-7f00-8abc-DEF012345678"));
        assert!(!is_valid_session_id(""));
        assert!(!is_valid_session_id(
            "../11111111-2222-4333-8444-555555555555"
        ));
        assert!(!is_valid_session_id("11111111-2222-4333-8444-55555555555g"));
        assert!(!is_valid_session_id("11111111-2222-4333-8444"));
    }

    #[test]
    fn config_dir_prefers_env() {
        let mut env = ProviderEnv::new("/h");
        env.extra_env
            .push(("CLAUDE_CONFIG_DIR".into(), String::new()));
        assert_eq!(config_dir(&env), PathBuf::from("/h/.claude"));
        env.extra_env
            .push(("CLAUDE_CONFIG_DIR".into(), "/cfg".into()));
        assert_eq!(config_dir(&env), PathBuf::from("/cfg"));
    }
}
