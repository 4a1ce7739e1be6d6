//! Short `opencode` subcommands (`--version`, `export`, `import`, `session delete`, `db`) run
//! to completion under a time limit.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::time::timeout;

use super::NAME;
use crate::{ProviderEnv, ProviderError, Result};

/// Time limit of `--version`.
pub(super) const VERSION_TIMEOUT: Duration = Duration::from_secs(15);
/// Time limit of `export`, `import`, `session delete` and `db` (each takes 1–3 s; the first
/// start on a fresh home also creates and migrates the database).
pub(super) const CLI_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest stderr text kept in error messages.
const MAX_STDERR: usize = 2000;

/// The `opencode` program on one machine.
#[derive(Clone, Debug)]
pub(super) struct Cli {
    pub(super) env: ProviderEnv,
    pub(super) program: PathBuf,
}

/// What a finished subcommand printed.
#[derive(Debug)]
pub(super) struct Output {
    pub(super) success: bool,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl Cli {
    /// A command `opencode <args>` run in `cwd` (with `PWD` set to it: OpenCode takes its
    /// working directory from `$PWD`, not from the real cwd), with `env` added. Own process
    /// group, killed on drop.
    pub(super) fn command(&self, args: &[&str], cwd: &Path, env: &[(String, String)]) -> Command {
        let mut cmd = self.env.command(&self.program, env);
        cmd.args(args)
            .current_dir(cwd)
            .env("PWD", cwd)
            .process_group(0);
        cmd
    }

    /// Runs `opencode <args>` in `cwd` to completion within `limit`, feeding `stdin` if given.
    /// A timeout kills its process group and is an error; a non-zero exit is not (see
    /// [`Output::success`]).
    pub(super) async fn run(
        &self,
        args: &[&str],
        cwd: &Path,
        stdin: Option<&[u8]>,
        limit: Duration,
    ) -> Result<Output> {
        let mut cmd = self.command(args, cwd, &[]);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let what = format!("opencode {}", args.first().copied().unwrap_or_default());
        let mut child = cmd
            .spawn()
            .map_err(|e| ProviderError::Process(format!("cannot start {what}: {e}")))?;
        let pid = child.id();
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A CLI that exits without reading is reported by its exit status, not here.
            let _ = pipe.write_all(data).await;
        }
        match timeout(limit, child.wait_with_output()).await {
            Ok(Ok(out)) => Ok(Output {
                success: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: clean_stderr(&String::from_utf8_lossy(&out.stderr)),
            }),
            Ok(Err(e)) => Err(ProviderError::Process(format!("{what} failed: {e}"))),
            Err(_) => {
                // The child was dropped (and killed) with the future; take its group too.
                kill_group(pid, libc::SIGKILL);
                Err(ProviderError::Process(format!(
                    "{what} did not finish within {} s",
                    limit.as_secs()
                )))
            }
        }
    }

    /// Runs `opencode db <sql> --format json` and parses the rows.
    pub(super) async fn query(&self, sql: &str) -> Result<Vec<Value>> {
        let out = self
            .run(
                &["db", sql, "--format", "json"],
                &self.env.home,
                None,
                CLI_TIMEOUT,
            )
            .await?;
        if !out.success {
            return Err(ProviderError::Process(format!(
                "opencode db failed: {}",
                out.stderr
            )));
        }
        let text = out.stdout.trim();
        if text.is_empty() {
            return Ok(Vec::new());
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(rows)) => Ok(rows),
            _ => Err(ProviderError::Process(format!(
                "opencode db printed something that is not a JSON array: {}",
                cut(text, 200)
            ))),
        }
    }

    /// `opencode export <id>` in `cwd`: `Ok(None)` when the session does not exist here.
    pub(super) async fn export(&self, id: &str, cwd: &Path) -> Result<Option<(String, Value)>> {
        let out = self.run(&["export", id], cwd, None, CLI_TIMEOUT).await?;
        if !out.success {
            if out.stderr.contains("not found") {
                return Ok(None);
            }
            return Err(ProviderError::Process(format!(
                "opencode export {id} failed: {}",
                out.stderr
            )));
        }
        let value: Value = serde_json::from_str(out.stdout.trim()).map_err(|e| {
            ProviderError::Process(format!("opencode export {id} printed invalid JSON: {e}"))
        })?;
        if value.pointer("/info/id").and_then(Value::as_str) != Some(id) {
            return Err(ProviderError::Process(format!(
                "opencode export {id} returned another session"
            )));
        }
        Ok(Some((out.stdout, value)))
    }

    /// `opencode session delete <id>`; a session that is not there is fine.
    pub(super) async fn delete(&self, id: &str) -> Result<()> {
        let out = self
            .run(
                &["session", "delete", id],
                &self.env.home,
                None,
                CLI_TIMEOUT,
            )
            .await?;
        if out.success || out.stderr.contains("not found") {
            Ok(())
        } else {
            Err(ProviderError::Process(format!(
                "opencode session delete {id} failed: {}",
                out.stderr
            )))
        }
    }

    /// `opencode import <file>` run in `workspace` (import records the importing directory as
    /// the session's directory).
    pub(super) async fn import(&self, file: &Path, workspace: &Path) -> Result<()> {
        let file = file
            .to_str()
            .ok_or_else(|| ProviderError::Process(format!("{} is not UTF-8", file.display())))?;
        let out = self
            .run(&["import", file], workspace, None, CLI_TIMEOUT)
            .await?;
        if out.success {
            Ok(())
        } else {
            Err(ProviderError::Process(format!(
                "opencode import failed: {}",
                out.stderr
            )))
        }
    }
}

/// Sends `sig` to the process group led by `pid` (our children are group leaders).
pub(super) fn kill_group(pid: Option<u32>, sig: libc::c_int) {
    if let Some(pgid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: plain syscall on a group we created; ESRCH (already gone) is fine.
        unsafe {
            libc::killpg(pgid, sig);
        }
    }
}

/// Stderr without terminal colour codes, cut to a readable length.
pub(super) fn clean_stderr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            // CSI: parameters up to a final byte in '@'..='~'.
            chars.next();
            for f in chars.by_ref() {
                if ('@'..='~').contains(&f) {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    let trimmed = out.trim();
    // The tail says what went wrong; the head is usually progress noise.
    let n = trimmed.chars().count();
    if n > MAX_STDERR {
        trimmed.chars().skip(n - MAX_STDERR).collect()
    } else {
        trimmed.to_string()
    }
}

/// The first `max` characters of `s`.
pub(super) fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The `NotInstalled` error.
pub(super) fn not_installed(detail: impl Into<String>) -> ProviderError {
    ProviderError::NotInstalled {
        provider: NAME.into(),
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_cleaned() {
        assert_eq!(
            clean_stderr("Exporting\n\u{1b}[91m\u{1b}[1mError: \u{1b}[0mSession not found: x\n"),
            "Exporting\nError: Session not found: x"
        );
    }
}
