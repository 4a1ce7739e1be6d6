//! [`ScriptedProvider`]: the [`Provider`] adapter that runs the scripted agent program and moves
//! its conversation files between machines.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use baton_proto::ws::{BundleFile, ProviderBundle};
use baton_proto::{AuthState, Bytes, HandoffSupport, ProviderInfo, ProviderSessionInfo};
use tokio::process::Command;
use tokio::time::timeout;

use super::library;
use super::session::ScriptedSession;
use super::state::{activate, plan_import, read_stopped, write_staging};
use super::{BUNDLE_FORMAT, NAME, SUBCOMMAND, check_ref, session_rel_path, state_dir};
use crate::files::workspace_str;
use crate::{AgentSession, Provider, ProviderEnv, ProviderError, ReadEntry, Result, StartSpec};

/// Environment variable naming the program to run as `<program> scripted-agent …`.
pub const PROGRAM_ENV: &str = "BATON_SCRIPTED_AGENT";

/// Time limit of `--version` and `auth status` probes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit for the agent's `ready` line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The `scripted` provider adapter.
#[derive(Clone, Debug)]
pub struct ScriptedProvider {
    env: ProviderEnv,
    /// The program to run as `<program> scripted-agent …`; `None` when it cannot be found.
    program: Option<PathBuf>,
}

impl ScriptedProvider {
    /// The adapter for a machine with `env`, running `$BATON_SCRIPTED_AGENT` if set, else the
    /// current executable (the daemon is the `baton` binary).
    pub fn new(env: ProviderEnv) -> Self {
        let program = std::env::var_os(PROGRAM_ENV)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::current_exe().ok());
        Self { env, program }
    }

    /// The adapter running `program` as `<program> scripted-agent …` (tests, custom installs).
    pub fn with_program(env: ProviderEnv, program: impl Into<PathBuf>) -> Self {
        Self {
            env,
            program: Some(program.into()),
        }
    }

    /// The agent's state directory on this machine.
    fn state_dir(&self) -> PathBuf {
        state_dir(&self.env.home)
    }

    /// The program, if it exists as a file.
    async fn program(&self) -> Result<&Path> {
        let not_installed = |detail: String| ProviderError::NotInstalled {
            provider: NAME.into(),
            detail,
        };
        let program = self
            .program
            .as_deref()
            .ok_or_else(|| not_installed("cannot find the current executable".into()))?;
        match tokio::fs::metadata(program).await {
            Ok(m) if m.is_file() => Ok(program),
            _ => Err(not_installed(format!(
                "{} does not exist",
                program.display()
            ))),
        }
    }

    /// A command `<program> scripted-agent <args>` with this machine's HOME and extra env.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = self.env.command(program, &[]);
        cmd.arg(SUBCOMMAND).args(args);
        cmd
    }

    /// Runs a short probe; `Some(stdout)` when it exits 0 in time.
    async fn probe(&self, program: &Path, args: &[&str]) -> Option<String> {
        let mut cmd = self.command(program, args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match timeout(PROBE_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) if out.status.success() => {
                Some(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(Ok(out)) => {
                tracing::debug!(?args, status = %out.status, "scripted probe failed");
                None
            }
            Ok(Err(e)) => {
                tracing::debug!(?args, error = %e, "scripted probe did not run");
                None
            }
            Err(_) => {
                tracing::warn!(?args, "scripted probe timed out");
                None
            }
        }
    }

    /// The agent's version, when it runs.
    async fn version(&self, program: &Path) -> Option<String> {
        let out = self.probe(program, &["--version"]).await?;
        let line = out.lines().next()?.trim();
        let version = line.strip_prefix(SUBCOMMAND)?.trim();
        (!version.is_empty()).then(|| version.to_string())
    }
}

#[async_trait]
impl Provider for ScriptedProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn detect(&self) -> ProviderInfo {
        let mut info = crate::undetected(NAME, HandoffSupport::Supported);
        let Ok(program) = self.program().await else {
            return info;
        };
        let Some(version) = self.version(program).await else {
            return info;
        };
        info.installed = true;
        info.version = Some(version);
        if self.probe(program, &["auth", "status"]).await.is_some() {
            info.auth = AuthState::MachineLocal;
        }
        info
    }

    #[tracing::instrument(skip_all, fields(provider_ref = %spec.provider_ref, resume = spec.resume))]
    async fn start(&self, spec: &StartSpec) -> Result<Box<dyn AgentSession>> {
        let program = self.program().await?;
        let ws = workspace_str(&spec.workspace)?;
        let ws = ws.as_str();
        check_ref(&spec.provider_ref)?;
        let mode = if spec.resume {
            "--resume"
        } else {
            "--session-id"
        };
        let mut cmd = self.command(program, &["run", "--cwd", ws, mode, &spec.provider_ref]);
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(ws)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so that shutdown can kill the tools it started as well.
            .process_group(0);
        let child = cmd.spawn().map_err(|e| {
            ProviderError::Process(format!("cannot start scripted-agent in {ws}: {e}"))
        })?;
        let mut session = ScriptedSession::new(child)?;
        let ready = session.wait_ready(READY_TIMEOUT).await?;
        tracing::debug!(provider_ref = %spec.provider_ref, %ready, "scripted agent ready");
        Ok(Box::new(session))
    }

    async fn has_state(&self, provider_ref: &str, workspace: &Path) -> Result<bool> {
        check_ref(provider_ref)?;
        let path = self
            .state_dir()
            .join(session_rel_path(&workspace_str(workspace)?, provider_ref));
        Ok(tokio::fs::try_exists(&path).await.unwrap_or(false))
    }

    #[tracing::instrument(skip(self, workspace))]
    async fn export_state(&self, provider_ref: &str, workspace: &Path) -> Result<ProviderBundle> {
        check_ref(provider_ref)?;
        let ws = workspace_str(workspace)?;
        let ws = ws.as_str();
        let home = self.env.home.to_str().ok_or_else(|| {
            ProviderError::Process(format!("home {} is not UTF-8", self.env.home.display()))
        })?;
        let rel = session_rel_path(ws, provider_ref);
        let path = self.state_dir().join(&rel);
        let id = provider_ref.to_string();
        let (data, mode) = crate::blocking("export", move || read_stopped(&path, &id)).await?;
        let provider_version = match self.program().await {
            Ok(program) => self.version(program).await,
            Err(_) => None,
        };
        // Only the conversation file: never `auth`, which is this machine's login.
        Ok(ProviderBundle {
            format: BUNDLE_FORMAT,
            provider: NAME.into(),
            provider_ref: provider_ref.into(),
            provider_version,
            source_workspace: ws.into(),
            source_home: home.into(),
            files: vec![BundleFile {
                path: rel,
                mode,
                data: Bytes(data),
            }],
        })
    }

    #[tracing::instrument(skip_all, fields(provider_ref = %bundle.provider_ref))]
    async fn stage_import(
        &self,
        bundle: &ProviderBundle,
        target_workspace: &Path,
        staging: &Path,
    ) -> Result<()> {
        let target_ws = workspace_str(target_workspace)?;
        let home = self.env.home.to_str().ok_or_else(|| {
            ProviderError::Process(format!("home {} is not UTF-8", self.env.home.display()))
        })?;
        let home = home.to_string();
        let (bundle, state, staging) = (bundle.clone(), self.state_dir(), staging.to_path_buf());
        // Rewriting and file I/O are blocking work.
        tokio::task::spawn_blocking(move || {
            let plan = plan_import(&bundle, &target_ws, &home, &state)?;
            write_staging(&plan, &staging)
        })
        .await
        .map_err(|e| ProviderError::Process(format!("import task failed: {e}")))?
    }

    async fn activate_import(&self, staging: &Path) -> Result<()> {
        let (state, staging) = (self.state_dir(), staging.to_path_buf());
        crate::blocking("activate", move || activate(&staging, &state)).await
    }

    #[tracing::instrument(skip(self, workspace))]
    async fn remove_state(&self, provider_ref: &str, workspace: &Path) -> Result<()> {
        check_ref(provider_ref)?;
        let path = self
            .state_dir()
            .join(session_rel_path(&workspace_str(workspace)?, provider_ref));
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ProviderError::io(format!("remove {}", path.display()), e)),
        }
        if let Some(dir) = path.parent() {
            // Leaves the project directory alone while other conversations live in it.
            let _ = tokio::fs::remove_dir(dir).await;
        }
        Ok(())
    }

    fn service_env_vars(&self) -> &'static [&'static str] {
        &[super::API_KEY_ENV]
    }

    async fn list_sessions(&self) -> Result<Vec<ProviderSessionInfo>> {
        let state = self.state_dir();
        crate::blocking("list", move || library::list(&state)).await
    }

    async fn read_transcript(
        &self,
        provider_ref: &str,
        workspace: &Path,
    ) -> Result<Vec<ReadEntry>> {
        let (state, ws, id) = (
            self.state_dir(),
            workspace_str(workspace)?,
            provider_ref.to_string(),
        );
        crate::blocking("read", move || library::read(&state, &ws, &id)).await
    }

    async fn fork_state(
        &self,
        provider_ref: &str,
        workspace: &Path,
        new_session_id: &str,
        turns: Option<usize>,
    ) -> Result<String> {
        let (state, ws, id, new_id) = (
            self.state_dir(),
            workspace_str(workspace)?,
            provider_ref.to_string(),
            new_session_id.to_string(),
        );
        crate::blocking("fork", move || {
            library::fork(&state, &ws, &id, &new_id, turns)
        })
        .await
    }
}
