//! [`ClaudeProvider`]: the [`Provider`] adapter for Claude Code.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use baton_proto::ws::ProviderBundle;
use baton_proto::{AuthState, HandoffSupport, ProviderInfo, ProviderSessionInfo, VersionCheck};
use tokio::process::Command;
use tokio::time::timeout;

use super::session::ClaudeSession;
use super::state::{self, Target};
use super::{BUNDLE_FORMAT, NAME, check_ref, config_dir, library, utf8, workspace_str};
use crate::blocking;
use crate::{AgentSession, Provider, ProviderEnv, ProviderError, ReadEntry, Result, StartSpec};

/// Time limit of `--version` and `auth status` probes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit for the `initialize` handshake of a new process (loading takes 1–2 s; more on a
/// busy machine).
const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The Claude Code adapter.
#[derive(Clone, Debug)]
pub struct ClaudeProvider {
    env: ProviderEnv,
}

/// Outcome of a short CLI probe.
enum Probe {
    /// Exited 0; its stdout.
    Ok(String),
    /// Ran and exited non-zero.
    Failed,
    /// Did not run or did not finish in time.
    NoAnswer,
}

impl ClaudeProvider {
    /// The adapter for a machine with `env`.
    pub fn new(env: ProviderEnv) -> Self {
        Self { env }
    }

    /// The config dir on this machine.
    fn config_dir(&self) -> PathBuf {
        config_dir(&self.env)
    }

    /// The `claude` program: configured path, else on `PATH`.
    fn program(&self) -> Result<PathBuf> {
        self.env
            .find_program(NAME, "claude")
            .ok_or_else(|| ProviderError::NotInstalled {
                provider: NAME.into(),
                detail: "no `claude` on PATH and no configured path".into(),
            })
    }

    /// Runs `claude <args>` with a time limit.
    async fn probe(&self, program: &Path, args: &[&str]) -> Probe {
        let mut cmd = self.env.command(program, &[]);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match timeout(PROBE_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) if out.status.success() => {
                Probe::Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(Ok(out)) => {
                tracing::debug!(?args, status = %out.status, "claude probe failed");
                Probe::Failed
            }
            Ok(Err(e)) => {
                tracing::debug!(?args, error = %e, "claude probe did not run");
                Probe::NoAnswer
            }
            Err(_) => {
                tracing::warn!(?args, "claude probe timed out");
                Probe::NoAnswer
            }
        }
    }

    /// The CLI's version (`2.1.331` from `2.1.331 (Claude Code)`), when it runs.
    async fn version(&self, program: &Path) -> Option<String> {
        let Probe::Ok(out) = self.probe(program, &["--version"]).await else {
            return None;
        };
        let version = out.split_whitespace().next()?;
        version
            .starts_with(|c: char| c.is_ascii_digit())
            .then(|| version.to_string())
    }

    /// Target paths for an import on this machine.
    fn target_paths(&self, workspace: &Path) -> Result<(String, String, String)> {
        Ok((
            workspace_str(workspace)?,
            utf8(&self.env.home, "home")?,
            utf8(&self.config_dir(), "config dir")?,
        ))
    }
}

/// How `version` relates to what the adapter was tested with.
///
/// Every fact the adapter relies on (transcript layout and line types, `--session-id`, the
/// stream-json control protocol, `sessions/<pid>.json`) was measured on 2.1.331 only, so 2.1.x
/// is "tested" and any other 2.x "untested" (allowed with a warning). Below 2.0 is refused: the
/// reference notes that 1.x releases kept other state (legacy `todos/` lists, `summary` lines)
/// and we never ran one, so a handoff could silently lose state. That boundary is a judgement
/// from the major version, not a measurement.
fn version_check(version: &str) -> VersionCheck {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(2), Some(1)) => VersionCheck::Tested,
        (Some(major), _) if major >= 2 => VersionCheck::Untested,
        (Some(_), _) => VersionCheck::Incompatible,
        (None, _) => VersionCheck::Untested,
    }
}

#[async_trait]
impl Provider for ClaudeProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn detect(&self) -> ProviderInfo {
        let mut info = crate::undetected(NAME, HandoffSupport::Supported);
        let Ok(program) = self.program() else {
            return info;
        };
        let Some(version) = self.version(&program).await else {
            return info;
        };
        info.installed = true;
        info.version_check = version_check(&version);
        info.version = Some(version);
        // Exit 0 when logged in (API key, OAuth token or stored login), 1 when not; offline.
        if let Probe::Ok(_) = self.probe(&program, &["auth", "status"]).await {
            info.auth = AuthState::MachineLocal;
        }
        info
    }

    #[tracing::instrument(skip_all, fields(provider_ref = %spec.provider_ref, resume = spec.resume))]
    async fn start(&self, spec: &StartSpec) -> Result<Box<dyn AgentSession>> {
        let program = self.program()?;
        check_ref(&spec.provider_ref)?;
        let workspace = spec.workspace.clone();
        let ws = blocking("workspace", move || workspace_str(&workspace)).await?;
        let mode = if spec.resume {
            "--resume"
        } else {
            "--session-id"
        };
        let mut cmd = self.env.command(&program, &spec.env);
        cmd.args([
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
            // Edits inside the workspace are approved; every other tool asks, over stdio.
            "--permission-mode",
            "acceptEdits",
            "--permission-prompt-tool",
            "stdio",
            mode,
            &spec.provider_ref,
        ])
        .current_dir(&ws)
        .env("PWD", &ws)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that interrupt and shutdown reach the tools it started as well.
        .process_group(0);
        let child = spawn(cmd, &ws)?;
        let mut session = ClaudeSession::new(child)?;
        session.initialize(INIT_TIMEOUT).await?;
        tracing::debug!("claude ready");
        Ok(Box::new(session))
    }

    async fn has_state(&self, provider_ref: &str, workspace: &Path) -> Result<bool> {
        check_ref(provider_ref)?;
        let (cfg, workspace, id) = (
            self.config_dir(),
            workspace.to_path_buf(),
            provider_ref.to_string(),
        );
        blocking("has_state", move || {
            let ws = workspace_str(&workspace)?;
            Ok(state::find_transcript(&cfg, &ws, &id).is_some())
        })
        .await
    }

    #[tracing::instrument(skip(self, workspace))]
    async fn export_state(&self, provider_ref: &str, workspace: &Path) -> Result<ProviderBundle> {
        check_ref(provider_ref)?;
        let home = utf8(&self.env.home, "home")?;
        let (cfg, workspace, id) = (
            self.config_dir(),
            workspace.to_path_buf(),
            provider_ref.to_string(),
        );
        let (ws, files) = blocking("export", move || {
            let ws = workspace_str(&workspace)?;
            let files = state::collect(&cfg, &ws, &id)?;
            Ok((ws, files))
        })
        .await?;
        let provider_version = match self.program() {
            Ok(program) => self.version(&program).await,
            Err(_) => None,
        };
        Ok(ProviderBundle {
            format: BUNDLE_FORMAT,
            provider: NAME.into(),
            provider_ref: provider_ref.into(),
            provider_version,
            source_workspace: ws,
            source_home: home,
            files,
        })
    }

    #[tracing::instrument(skip_all, fields(provider_ref = %bundle.provider_ref))]
    async fn stage_import(
        &self,
        bundle: &ProviderBundle,
        target_workspace: &Path,
        staging: &Path,
    ) -> Result<()> {
        let (bundle, workspace, staging, this) = (
            bundle.clone(),
            target_workspace.to_path_buf(),
            staging.to_path_buf(),
            self.clone(),
        );
        // Rewriting and file I/O are blocking work.
        blocking("import", move || {
            let (ws, home, cfg) = this.target_paths(&workspace)?;
            let target = Target {
                workspace: &ws,
                home: &home,
                config_dir: &cfg,
            };
            let plan = state::plan_import(&bundle, &target, &this.config_dir())?;
            state::write_staging(&plan, &staging)
        })
        .await
    }

    async fn activate_import(&self, staging: &Path) -> Result<()> {
        let (cfg, staging) = (self.config_dir(), staging.to_path_buf());
        blocking("activate", move || state::activate(&staging, &cfg)).await
    }

    #[tracing::instrument(skip(self, workspace))]
    async fn remove_state(&self, provider_ref: &str, workspace: &Path) -> Result<()> {
        let (cfg, workspace, id) = (
            self.config_dir(),
            workspace.to_path_buf(),
            provider_ref.to_string(),
        );
        blocking("remove", move || {
            state::remove(&cfg, &workspace_str(&workspace)?, &id)
        })
        .await
    }

    async fn list_sessions(&self) -> Result<Vec<ProviderSessionInfo>> {
        let cfg = self.config_dir();
        blocking("list", move || library::list(&cfg)).await
    }

    async fn read_transcript(
        &self,
        provider_ref: &str,
        workspace: &Path,
    ) -> Result<Vec<ReadEntry>> {
        let (cfg, workspace, id) = (
            self.config_dir(),
            workspace.to_path_buf(),
            provider_ref.to_string(),
        );
        blocking("read", move || {
            library::read(&cfg, &workspace_str(&workspace)?, &id)
        })
        .await
    }

    async fn fork_state(
        &self,
        provider_ref: &str,
        workspace: &Path,
        new_session_id: &str,
        turns: Option<usize>,
    ) -> Result<String> {
        let (cfg, workspace, id, new_id) = (
            self.config_dir(),
            workspace.to_path_buf(),
            provider_ref.to_string(),
            new_session_id.to_string(),
        );
        blocking("fork", move || {
            library::fork(&cfg, &workspace_str(&workspace)?, &id, &new_id, turns)
        })
        .await
    }

    fn service_env_vars(&self) -> &'static [&'static str] {
        &[
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN",
            "CLAUDE_CODE_OAUTH_TOKEN",
        ]
    }
}

/// Spawns the session process.
fn spawn(mut cmd: Command, ws: &str) -> Result<tokio::process::Child> {
    cmd.spawn()
        .map_err(|e| ProviderError::Process(format!("cannot start claude in {ws}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ranges() {
        assert_eq!(version_check("2.1.331"), VersionCheck::Tested);
        assert_eq!(version_check("2.1.0"), VersionCheck::Tested);
        assert_eq!(version_check("2.0.14"), VersionCheck::Untested);
        assert_eq!(version_check("2.2.1"), VersionCheck::Untested);
        assert_eq!(version_check("3.0.0"), VersionCheck::Untested);
        assert_eq!(version_check("1.0.128"), VersionCheck::Incompatible);
        assert_eq!(version_check("0.2.9"), VersionCheck::Incompatible);
    }
}
