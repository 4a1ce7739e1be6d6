//! [`CodexProvider`]: the [`Provider`] adapter for the Codex CLI.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use baton_proto::ws::{BundleFile, ProviderBundle};
use baton_proto::{AuthState, Bytes, HandoffSupport, ProviderInfo, ProviderSessionInfo};
use tokio::time::timeout;

use super::session::{CodexSession, TurnConfig};
use super::state::{self, Target};
use super::{BUNDLE_FORMAT, NAME, check_ref, codex_home, library, parse_version, version_check};
use crate::blocking;
use crate::files::workspace_str;
use crate::{AgentSession, Provider, ProviderEnv, ProviderError, ReadEntry, Result, StartSpec};

/// Time limit of `--version` and `login status` probes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit of `codex delete` (it opens the SQLite indexes).
const DELETE_TIMEOUT: Duration = Duration::from_secs(15);

/// The `codex` provider adapter.
#[derive(Clone, Debug)]
pub struct CodexProvider {
    env: ProviderEnv,
}

impl CodexProvider {
    /// The adapter for a machine with `env`; `codex` is its configured program or found on
    /// `PATH` (an npm install's `codex` is a node launcher for the native binary, which is fine).
    pub fn new(env: ProviderEnv) -> Self {
        Self { env }
    }

    /// `$CODEX_HOME` on this machine.
    fn codex_home(&self) -> PathBuf {
        codex_home(&self.env)
    }

    /// Directories holding Codex's SQLite indexes.
    fn index_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.codex_home()];
        if let Some(dir) = self.env.var("CODEX_SQLITE_HOME") {
            dirs.push(dir.into());
        }
        dirs
    }

    /// The `codex` program, when it exists.
    fn program(&self) -> Result<PathBuf> {
        let not_installed = |detail: String| ProviderError::NotInstalled {
            provider: NAME.into(),
            detail,
        };
        let program = self.env.find_program(NAME, "codex").ok_or_else(|| {
            not_installed(
                "`codex` is not on PATH (install @openai/codex or configure its path)".into(),
            )
        })?;
        if program.is_file() {
            Ok(program)
        } else {
            Err(not_installed(format!(
                "{} does not exist",
                program.display()
            )))
        }
    }

    /// Runs `codex <args>` with stdin closed; `Some(output)` when it ran to completion in time.
    async fn run(
        &self,
        program: &Path,
        args: &[&str],
        limit: Duration,
    ) -> Option<std::process::Output> {
        let mut cmd = self.env.command(program, &[]);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::debug!(?args, error = %e, "codex did not run");
                return None;
            }
        };
        let pgid = child.id().and_then(|p| libc::pid_t::try_from(p).ok());
        match timeout(limit, child.wait_with_output()).await {
            Ok(Ok(out)) => Some(out),
            Ok(Err(e)) => {
                tracing::debug!(?args, error = %e, "codex did not run");
                None
            }
            Err(_) => {
                tracing::warn!(?args, "codex timed out");
                // `kill_on_drop` took the node launcher; the native binary is in its group.
                if let Some(pgid) = pgid {
                    // SAFETY: plain syscall on the group of the child we just spawned.
                    unsafe {
                        libc::killpg(pgid, libc::SIGKILL);
                    }
                }
                None
            }
        }
    }

    /// The version `codex --version` reports.
    async fn version(&self, program: &Path) -> Option<String> {
        let out = self.run(program, &["--version"], PROBE_TIMEOUT).await?;
        if !out.status.success() {
            return None;
        }
        parse_version(&String::from_utf8_lossy(&out.stdout))
    }

    /// `codex delete --force <id>`: removes the rollout and the thread's rows in Codex's
    /// indexes. True when Codex confirmed it.
    async fn codex_delete(&self, id: &str) -> bool {
        let Ok(program) = self.program() else {
            return false;
        };
        match self
            .run(&program, &["delete", "--force", id], DELETE_TIMEOUT)
            .await
        {
            Some(out) if out.status.success() => true,
            Some(out) => {
                tracing::info!(
                    thread_id = id,
                    stderr = %String::from_utf8_lossy(&out.stderr).lines().find(|l| l.starts_with("Error")).unwrap_or(""),
                    "codex delete failed"
                );
                false
            }
            None => false,
        }
    }

    /// Whether Codex on this machine knows thread `id`: a rollout exists or its indexes
    /// mention it.
    async fn knows(&self, id: &str) -> bool {
        let (home, dirs, id) = (self.codex_home(), self.index_dirs(), id.to_string());
        tokio::task::spawn_blocking(move || {
            !state::find_rollouts(&home, &id).is_empty() || state::index_mentions(&dirs, &id)
        })
        .await
        .unwrap_or(true)
    }
}

/// A path as UTF-8, or a clear error.
fn utf8<'a>(what: &str, p: &'a Path) -> Result<&'a str> {
    p.to_str()
        .ok_or_else(|| ProviderError::Process(format!("{what} {} is not UTF-8", p.display())))
}

#[async_trait]
impl Provider for CodexProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn detect(&self) -> ProviderInfo {
        // Allowed and flagged: rollouts move well in tests, but Codex's indexes are
        // rebuilt behind our back and its format changes quickly.
        let mut info = crate::undetected(NAME, HandoffSupport::Experimental);
        let Ok(program) = self.program() else {
            return info;
        };
        let Some(version) = self.version(&program).await else {
            return info;
        };
        info.installed = true;
        info.version_check = version_check(&version);
        info.version = Some(version);
        // `login status` reads only the machine's own login (auth.json or keyring) and works
        // offline; env keys such as CODEX_API_KEY do not count, which is what we want here.
        if let Some(out) = self
            .run(&program, &["login", "status"], PROBE_TIMEOUT)
            .await
            && out.status.success()
        {
            info.auth = AuthState::MachineLocal;
        }
        info
    }

    #[tracing::instrument(skip_all, fields(provider_ref = %spec.provider_ref, resume = spec.resume))]
    async fn start(&self, spec: &StartSpec) -> Result<Box<dyn AgentSession>> {
        let program = self.program()?;
        let ws = workspace_str(&spec.workspace)?;
        if !tokio::fs::metadata(&ws).await.is_ok_and(|m| m.is_dir()) {
            return Err(ProviderError::Process(format!(
                "workspace {ws} is not a directory"
            )));
        }
        let thread = if spec.resume {
            check_ref(&spec.provider_ref)?;
            let (home, id) = (self.codex_home(), spec.provider_ref.clone());
            // Fails early (StateMissing) instead of on the first turn.
            blocking("resume", move || state::rollout_path(&home, &id)).await?;
            Some(spec.provider_ref.clone())
        } else {
            // Codex picks its own thread id and reports it on the first turn.
            None
        };
        Ok(Box::new(CodexSession::new(
            TurnConfig {
                program,
                env: self.env.clone(),
                spec_env: spec.env.clone(),
                workspace: ws,
            },
            thread,
        )))
    }

    async fn has_state(&self, provider_ref: &str, _workspace: &Path) -> Result<bool> {
        check_ref(provider_ref)?;
        let (home, id) = (self.codex_home(), provider_ref.to_string());
        blocking("lookup", move || {
            Ok(!state::find_rollouts(&home, &id).is_empty())
        })
        .await
    }

    #[tracing::instrument(skip(self, workspace))]
    async fn export_state(&self, provider_ref: &str, workspace: &Path) -> Result<ProviderBundle> {
        let ws = workspace_str(workspace)?;
        let home = utf8("home", &self.env.home)?.to_string();
        let (codex_home, id) = (self.codex_home(), provider_ref.to_string());
        let (rel, data, mode) =
            blocking("export", move || state::read_rollout(&codex_home, &id)).await?;
        let provider_version = match self.program() {
            Ok(program) => self.version(&program).await,
            Err(_) => None,
        };
        // Only the rollout: never auth.json, the SQLite indexes, history.jsonl or
        // shell_snapshots/, which belong to this machine.
        Ok(ProviderBundle {
            format: BUNDLE_FORMAT,
            provider: NAME.into(),
            provider_ref: provider_ref.into(),
            provider_version,
            source_workspace: ws,
            source_home: home,
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
        let ws = workspace_str(target_workspace)?;
        let home = utf8("home", &self.env.home)?.to_string();
        let codex_home = self.codex_home();
        let codex_home_str = utf8("CODEX_HOME", &codex_home)?.to_string();
        let (bundle, staging) = (bundle.clone(), staging.to_path_buf());
        blocking("import", move || {
            let target = Target {
                workspace: &ws,
                home: &home,
                codex_home: &codex_home_str,
            };
            let file = state::plan_import(&bundle, &target, &codex_home)?;
            state::write_staging(&file, &staging)
        })
        .await
    }

    async fn activate_import(&self, staging: &Path) -> Result<()> {
        if !tokio::fs::try_exists(staging).await.unwrap_or(false) {
            tracing::debug!(staging = %staging.display(), "nothing staged, already activated");
            return Ok(());
        }
        let dir = staging.to_path_buf();
        let staged = blocking("activate", move || state::read_staging(&dir)).await?;
        for file in staged {
            // Check before deleting anything: state that appeared since staging must not be
            // lost.
            let (home, id, data) = (self.codex_home(), file.id.clone(), file.data.clone());
            let found = blocking("activate", move || state::existing(&home, &id, &data)).await?;
            if found == state::Existing::None && !self.knows(&file.id).await {
                tracing::debug!(thread_id = %file.id, "thread unknown here");
            } else if !matches!(found, state::Existing::Identical(_)) {
                // Handing back to a machine that had the thread: let Codex forget it (rollout,
                // `threads` row with its absolute rollout_path, history projection), otherwise
                // it would keep showing stale history for it.
                if !self.codex_delete(&file.id).await {
                    tracing::warn!(thread_id = %file.id, "codex delete failed; replacing the rollout directly");
                }
            }
            let home = self.codex_home();
            blocking("activate", move || state::place(&home, &file)).await?;
        }
        let dir = staging.to_path_buf();
        blocking("activate", move || {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| ProviderError::io(format!("remove {}", dir.display()), e))
        })
        .await
    }

    #[tracing::instrument(skip(self, _workspace))]
    async fn remove_state(&self, provider_ref: &str, _workspace: &Path) -> Result<()> {
        check_ref(provider_ref)?;
        if !self.knows(provider_ref).await {
            return Ok(());
        }
        // Codex's own delete also drops the thread from its SQLite indexes.
        if self.codex_delete(provider_ref).await {
            return Ok(());
        }
        let (home, id) = (self.codex_home(), provider_ref.to_string());
        blocking("remove", move || {
            for path in state::find_rollouts(&home, &id) {
                state::remove_file(&path)?;
            }
            Ok(())
        })
        .await
    }

    async fn list_sessions(&self) -> Result<Vec<ProviderSessionInfo>> {
        let home = self.codex_home();
        blocking("list", move || Ok(library::list(&home))).await
    }

    async fn read_transcript(
        &self,
        provider_ref: &str,
        _workspace: &Path,
    ) -> Result<Vec<ReadEntry>> {
        let (home, id) = (self.codex_home(), provider_ref.to_string());
        blocking("read", move || library::read(&home, &id)).await
    }

    async fn fork_state(
        &self,
        provider_ref: &str,
        _workspace: &Path,
        new_session_id: &str,
        turns: Option<usize>,
    ) -> Result<String> {
        let (home, id, new_id) = (
            self.codex_home(),
            provider_ref.to_string(),
            new_session_id.to_string(),
        );
        blocking("fork", move || library::fork(&home, &id, &new_id, turns)).await
    }

    fn service_env_vars(&self) -> &'static [&'static str] {
        &["CODEX_API_KEY"]
    }
}
