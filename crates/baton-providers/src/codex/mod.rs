//! The `codex` provider: OpenAI's Codex CLI (tested with codex-cli 0.169.0).
//!
//! Codex runs headless as one `codex exec --json` process per turn ([`session`]); a thread
//! continues with `codex exec resume <thread id>`. Its state is one rollout file per thread,
//! `$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<local time>-<thread id>.jsonl`, which is what a
//! handoff moves ([`state`]); the SQLite files beside it are rebuildable indexes that are never
//! copied. [`library`] lists, reads and forks rollouts.

mod adapter;
mod library;
mod session;
mod state;

pub use adapter::CodexProvider;

use std::path::{Path, PathBuf};

use baton_proto::VersionCheck;

use crate::{ProviderEnv, ProviderError, Result};

/// Provider name.
pub const NAME: &str = "codex";

/// Provider-state bundle format written and accepted.
const BUNDLE_FORMAT: u32 = 1;

/// Injected user-message texts that are not what the user typed: Codex sends its environment
/// context, turn-abort notices and AGENTS.md contents as user messages.
fn is_injected_user_text(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with('<') || t.starts_with("# AGENTS.md instructions")
}

/// `$CODEX_HOME` as provider processes see it, else `$HOME/.codex`.
fn codex_home(env: &ProviderEnv) -> PathBuf {
    env.var("CODEX_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| env.home.join(".codex"))
}

/// Whether `id` looks like a Codex thread id (a UUID, `8-4-4-4-12` hex digits). Ids become
/// file names and command arguments, so nothing else is accepted.
fn is_thread_id(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Refuses ids that are not thread ids.
fn check_ref(provider_ref: &str) -> Result<()> {
    if is_thread_id(provider_ref) {
        Ok(())
    } else {
        Err(ProviderError::InvalidBundle(format!(
            "{provider_ref:?} is not a Codex thread id"
        )))
    }
}

/// Whether `name` is a rollout file name for thread `id`: `rollout-<anything>-<id>.jsonl`.
fn is_rollout_name(name: &str, id: &str) -> bool {
    name.strip_prefix("rollout-")
        .and_then(|rest| rest.strip_suffix(".jsonl"))
        .and_then(|rest| rest.strip_suffix(id))
        .is_some_and(|stamp| stamp.ends_with('-') && !stamp.contains('/'))
}

/// The thread id at the end of a rollout file name (`….jsonl` or `….jsonl.zst`).
fn rollout_id(name: &str) -> Option<&str> {
    let stem = name
        .strip_suffix(".jsonl")
        .or_else(|| name.strip_suffix(".jsonl.zst"))?;
    if !name.starts_with("rollout-") || stem.len() < 36 {
        return None;
    }
    let id = &stem[stem.len() - 36..];
    is_thread_id(id).then_some(id)
}

/// Checks a bundle path: exactly `sessions/<4 digits>/<2>/<2>/rollout-*-<id>.jsonl`, so that
/// nothing can land outside the rollout tree (no `..`, no absolute path, no other file).
fn check_rel_path(path: &str, id: &str) -> Result<()> {
    let bad = || {
        ProviderError::InvalidBundle(format!(
            "unexpected file {path:?} (want sessions/YYYY/MM/DD/rollout-…-{id}.jsonl)"
        ))
    };
    let parts: Vec<&str> = path.split('/').collect();
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        ["sessions", y, m, d, name]
            if digits(y, 4) && digits(m, 2) && digits(d, 2) && is_rollout_name(name, id) =>
        {
            // Belt and braces: the OS's own reading of the path must agree.
            if Path::new(path)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
                && !path.contains('\\')
                && !path.contains('\0')
            {
                Ok(())
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

/// The version out of `codex --version` output (`codex-cli 0.169.0`).
fn parse_version(out: &str) -> Option<String> {
    let line = out.lines().find(|l| !l.trim().is_empty())?.trim();
    let v = line.strip_prefix("codex-cli").unwrap_or(line).trim();
    (!v.is_empty() && v.starts_with(|c: char| c.is_ascii_digit())).then(|| v.to_string())
}

/// How a Codex version relates to what this adapter was tested with.
///
/// Tested: 0.169.x (every behaviour here was measured on 0.169.0). Untested: other 0.16x
/// releases and anything newer. Incompatible: older than 0.160. Why 0.160: the rollout lines
/// 0.169 writes carry fields older releases did not have (a contiguous `ordinal` per line,
/// paginated-history `metadata`, `world_state`/`token_usage_record` records), and a bundle from
/// one side would be read by a CLI that does not know them. We did not measure in which release
/// they appeared; 0.160 is our conservative guess, not a measured boundary.
fn version_check(version: &str) -> VersionCheck {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return VersionCheck::Untested;
    };
    match (major, minor) {
        (0, 169) => VersionCheck::Tested,
        (0, m) if m < 160 => VersionCheck::Incompatible,
        _ => VersionCheck::Untested,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "01a210e5-013b-7b73-8a81-d6bdea1d66b5";

    #[test]
    fn thread_ids() {
        assert!(is_thread_id(ID));
        assert!(!is_thread_id("01a210e5-013b-7b73-8a81-d6bdea1d66b"));
        assert!(!is_thread_id("01a210e5-013b-7b73-8a81-d6bdea1d66bg"));
        assert!(!is_thread_id("01a210e5/013b-7b73-8a81-d6bdea1d66b5"));
        assert!(!is_thread_id("../../../../../../../../../../etc/pa"));
    }

    #[test]
    fn rollout_names_and_paths() {
        let name = format!("rollout-2026-11-25T04-09-33-{ID}.jsonl");
        assert!(is_rollout_name(&name, ID));
        assert_eq!(rollout_id(&name), Some(ID));
        assert_eq!(rollout_id(&format!("{name}.zst")), Some(ID));
        assert_eq!(rollout_id("rollout-x.jsonl"), None);
        assert!(!is_rollout_name(&format!("rollout-{ID}.jsonl"), ID));
        assert!(check_rel_path(&format!("sessions/2026/11/25/{name}"), ID).is_ok());
        for bad in [
            format!("sessions/2026/11/25/{name}.zst"),
            format!("sessions/2026/11/{name}"),
            format!("sessions/26/11/25/{name}"),
            format!("sessions/2026/11/xx/{name}"),
            format!("sessions/2026/11/25/../{name}"),
            format!("/sessions/2026/11/25/{name}"),
            format!("archived_sessions/2026/11/25/{name}"),
            "auth.json".to_string(),
            "state_5.sqlite".to_string(),
            format!("sessions/2026/11/25/rollout-x-{}.jsonl", "0".repeat(36)),
        ] {
            assert!(check_rel_path(&bad, ID).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("codex-cli 0.169.0\n").as_deref(),
            Some("0.169.0")
        );
        assert_eq!(parse_version("WARNING x\n"), None);
        assert_eq!(version_check("0.169.0"), VersionCheck::Tested);
        assert_eq!(version_check("0.169.3"), VersionCheck::Tested);
        assert_eq!(version_check("0.165.1"), VersionCheck::Untested);
        assert_eq!(version_check("0.170.0"), VersionCheck::Untested);
        assert_eq!(version_check("1.0.0"), VersionCheck::Untested);
        assert_eq!(version_check("0.159.9"), VersionCheck::Incompatible);
        assert_eq!(version_check("0.98.0"), VersionCheck::Incompatible);
        assert_eq!(version_check("garbage"), VersionCheck::Untested);
    }

    #[test]
    fn injected_texts() {
        assert!(is_injected_user_text(
            "<environment_context>\n<cwd>/x</cwd>"
        ));
        assert!(is_injected_user_text("# AGENTS.md instructions for /x"));
        assert!(!is_injected_user_text("hello <b>"));
    }
}
