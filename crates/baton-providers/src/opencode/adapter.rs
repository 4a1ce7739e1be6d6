//! [`OpenCodeProvider`]: the [`Provider`] adapter for the OpenCode CLI.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use baton_proto::ws::{BundleFile, ProviderBundle};
use baton_proto::{AuthState, Bytes, HandoffSupport, ProviderInfo, ProviderSessionInfo};
use serde_json::Value;

use super::cli::{Cli, VERSION_TIMEOUT, not_installed};
use super::session::{OpenCodeSession, Running};
use super::state::{
    ExportCompare, Plan, bundle_order, compare_exports, foreign_run_alive, read_staging,
    write_staging,
};
use super::{
    BIN, BUNDLE_DIR, BUNDLE_FORMAT, NAME, check_ref, config, library, version_check, workspace_str,
};
use crate::files::write_atomic;
use crate::rewrite::PathMap;
use crate::{AgentSession, Provider, ProviderEnv, ProviderError, ReadEntry, Result, StartSpec};

/// The `opencode` provider adapter.
#[derive(Clone, Debug)]
pub struct OpenCodeProvider {
    env: ProviderEnv,
    /// Sessions with a live run started by this adapter.
    running: Running,
}

impl OpenCodeProvider {
    /// The adapter for a machine with `env`; the program is `--provider-bin opencode=…` or
    /// `opencode` on `PATH`.
    pub fn new(env: ProviderEnv) -> Self {
        Self {
            env,
            running: Running::default(),
        }
    }

    /// Names of the environment variables that carry the key of the configured default model's
    /// provider on this machine (its `env` list in the OpenCode config, or the well-known name
    /// of a built-in provider); empty when no model is configured.
    pub fn configured_env_vars(&self) -> Vec<String> {
        let config = config::load(&self.env);
        config::model_provider(&config)
            .map(|p| config::provider_env_vars(&config, &p))
            .unwrap_or_default()
    }

    /// The CLI, if the program exists.
    fn cli(&self) -> Result<Cli> {
        let program = self
            .env
            .find_program(NAME, BIN)
            .ok_or_else(|| not_installed("opencode is not on PATH"))?;
        if !program.is_file() {
            return Err(not_installed(format!(
                "{} does not exist",
                program.display()
            )));
        }
        Ok(Cli {
            env: self.env.clone(),
            program,
        })
    }

    /// `opencode --version`, when it runs.
    async fn version(&self, cli: &Cli) -> Option<String> {
        let out = cli
            .run(&["--version"], &self.env.home, None, VERSION_TIMEOUT)
            .await
            .map_err(|e| tracing::debug!(error = %e, "opencode --version failed"))
            .ok()?;
        let line = out.stdout.lines().next()?.trim();
        (out.success && !line.is_empty()).then(|| line.to_string())
    }

    /// Refuses while a run of `id` is alive (ours, or another `opencode` process naming it):
    /// it would add messages the export or the removal misses.
    fn check_stopped(&self, id: &str) -> Result<()> {
        if self.running.contains(id) || foreign_run_alive(id) {
            return Err(ProviderError::Process(format!(
                "OpenCode session {id} is still running; stop it first"
            )));
        }
        Ok(())
    }

    /// The session's recorded directory on this machine, `None` when it is not here.
    async fn directory_of(&self, cli: &Cli, id: &str) -> Result<Option<String>> {
        check_ref(id)?;
        // `id` is checked to be `ses_` + alphanumerics, so it is safe inside the literal.
        let rows = cli
            .query(&format!("select directory from session where id = '{id}'"))
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.get("directory"))
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// Ids of every session descending from `id` (subagent sessions), parents first.
    async fn descendants(&self, cli: &Cli, id: &str) -> Result<Vec<String>> {
        let rows = cli
            .query("select id, parent_id from session where parent_id is not null")
            .await?;
        let edges: Vec<(&str, &str)> = rows
            .iter()
            .filter_map(|r| Some((r.get("id")?.as_str()?, r.get("parent_id")?.as_str()?)))
            .filter(|(c, _)| super::is_valid_id("ses", c))
            .collect();
        let mut out: Vec<String> = Vec::new();
        let mut frontier = vec![id.to_string()];
        while let Some(parent) = frontier.pop() {
            for (child, _) in edges.iter().filter(|(_, p)| *p == parent) {
                if !out.iter().any(|o| o == child) && *child != id {
                    out.push(child.to_string());
                    frontier.push(child.to_string());
                }
            }
        }
        Ok(out)
    }

    /// The machine's home as a UTF-8 string.
    fn home_str(&self) -> Result<String> {
        self.env.home.to_str().map(str::to_string).ok_or_else(|| {
            ProviderError::Process(format!("home {} is not UTF-8", self.env.home.display()))
        })
    }

    /// For each staged session: what to do with what is already here. Refuses the whole import
    /// when any session here has messages the incoming state lacks.
    async fn decide(&self, cli: &Cli, docs: &[(String, Value)]) -> Result<Vec<ExportCompare>> {
        let mut out = Vec::with_capacity(docs.len());
        for (id, incoming) in docs {
            self.check_stopped(id)?;
            let decision = cli
                .export(id, &self.env.home)
                .await?
                .map(|(_, existing)| compare_exports(&existing, incoming));
            match decision {
                Some(ExportCompare::Diverged) => {
                    return Err(ProviderError::TargetIdentityConflict {
                        provider_ref: id.clone(),
                        path: format!("the OpenCode database of {}", self.env.home.display()),
                    });
                }
                Some(d) => out.push(d),
                // Nothing here: a plain import (like replacing a stale copy).
                None => out.push(ExportCompare::Extends),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Provider for OpenCodeProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn detect(&self) -> ProviderInfo {
        let mut info = crate::undetected(NAME, HandoffSupport::Supported);
        let Ok(cli) = self.cli() else {
            return info;
        };
        let Some(version) = self.version(&cli).await else {
            return info;
        };
        info.installed = true;
        info.version_check = version_check(&version);
        info.version = Some(version);
        let env = self.env.clone();
        info.auth = tokio::task::spawn_blocking(move || config::auth_state(&env))
            .await
            .unwrap_or(AuthState::Missing);
        info
    }

    #[tracing::instrument(skip_all, fields(provider_ref = %spec.provider_ref, resume = spec.resume))]
    async fn start(&self, spec: &StartSpec) -> Result<Box<dyn AgentSession>> {
        let cli = self.cli()?;
        let ws = workspace_str(&spec.workspace)?;
        if !tokio::fs::metadata(&ws).await.is_ok_and(|m| m.is_dir()) {
            return Err(ProviderError::Process(format!(
                "workspace {ws} does not exist"
            )));
        }
        let session_id = if spec.resume {
            check_ref(&spec.provider_ref)?;
            // `run -s` on a session recorded for another directory prints nothing and never
            // exits (1.18.33), so check here rather than hang the first turn.
            match self.directory_of(&cli, &spec.provider_ref).await? {
                None => {
                    return Err(ProviderError::StateMissing {
                        provider: NAME.into(),
                        provider_ref: spec.provider_ref.clone(),
                    });
                }
                Some(dir) if dir != ws => {
                    return Err(ProviderError::Process(format!(
                        "OpenCode session {} belongs to {dir}, not {ws}",
                        spec.provider_ref
                    )));
                }
                Some(_) => Some(spec.provider_ref.clone()),
            }
        } else {
            // OpenCode picks its own `ses_…` id; Baton's id is not used.
            None
        };
        Ok(Box::new(OpenCodeSession::new(
            cli,
            PathBuf::from(ws),
            spec.env.clone(),
            session_id,
            self.running.clone(),
        )))
    }

    async fn has_state(&self, provider_ref: &str, workspace: &Path) -> Result<bool> {
        // A new session's ref is Baton's own id until OpenCode names it: no state yet.
        if check_ref(provider_ref).is_err() {
            return Ok(false);
        }
        let cli = self.cli()?;
        let ws = workspace_str(workspace)?;
        Ok(self.directory_of(&cli, provider_ref).await? == Some(ws))
    }

    #[tracing::instrument(skip(self, workspace))]
    async fn export_state(&self, provider_ref: &str, workspace: &Path) -> Result<ProviderBundle> {
        check_ref(provider_ref)?;
        self.check_stopped(provider_ref)?;
        let cli = self.cli()?;
        let ws = workspace_str(workspace)?;
        let home = self.home_str()?;
        let mut ids = vec![provider_ref.to_string()];
        ids.extend(self.descendants(&cli, provider_ref).await?);
        let mut files = Vec::with_capacity(ids.len());
        for id in &ids {
            // Never `--sanitize`: it blanks the content the target needs.
            let (text, value) = cli.export(id, &self.env.home).await?.ok_or_else(|| {
                ProviderError::StateMissing {
                    provider: NAME.into(),
                    provider_ref: id.clone(),
                }
            })?;
            if id == provider_ref {
                let dir = value.pointer("/info/directory").and_then(Value::as_str);
                if dir != Some(ws.as_str()) {
                    tracing::warn!(?dir, %ws, "session directory differs from the workspace; paths under it will not be rewritten");
                }
            }
            files.push(BundleFile {
                path: format!("{BUNDLE_DIR}/{id}.json"),
                mode: 0o600,
                data: Bytes(text.into_bytes()),
            });
        }
        // Checked again after reading: a run that started meanwhile makes the copy stale.
        self.check_stopped(provider_ref)?;
        Ok(ProviderBundle {
            format: BUNDLE_FORMAT,
            provider: NAME.into(),
            provider_ref: provider_ref.into(),
            provider_version: self.version(&cli).await,
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
        let target_ws = workspace_str(target_workspace)?;
        let home = self.home_str()?;
        let cli = self.cli()?;
        let b = bundle.clone();
        let ws = target_ws.clone();
        let docs = tokio::task::spawn_blocking(move || -> Result<Vec<(String, Value)>> {
            let map = PathMap::new(vec![
                (b.source_workspace.as_str(), ws.as_str()),
                (b.source_home.as_str(), home.as_str()),
            ]);
            let mut docs = bundle_order(&b)?;
            for (_, v) in &mut docs {
                map.rewrite_json(v);
            }
            Ok(docs)
        })
        .await
        .map_err(|e| ProviderError::Process(format!("import task failed: {e}")))??;
        // Different state under the same id here is refused before anything is written.
        self.decide(&cli, &docs).await?;
        let plan = Plan {
            format: BUNDLE_FORMAT,
            provider_ref: bundle.provider_ref.clone(),
            workspace: target_ws,
            order: docs.iter().map(|(id, _)| id.clone()).collect(),
        };
        let staging = staging.to_path_buf();
        tokio::task::spawn_blocking(move || write_staging(&staging, &plan, &docs))
            .await
            .map_err(|e| ProviderError::Process(format!("staging task failed: {e}")))?
    }

    /// Imports the staged sessions with `opencode import` run in the target workspace.
    ///
    /// A session already here is compared with the staged one: the same → left alone
    /// (idempotent); a stale copy of it (every message here is in the staged state: this
    /// machine held the session before it moved away and the source's removal did not happen)
    /// → `opencode session delete` and import, since import never updates existing messages;
    /// anything else → `TargetIdentityConflict`. After a normal hand-back nothing is here any
    /// more (the daemon removes the state on the source once a handoff committed).
    #[tracing::instrument(skip_all)]
    async fn activate_import(&self, staging: &Path) -> Result<()> {
        let dir = staging.to_path_buf();
        let Some((plan, staged)) = tokio::task::spawn_blocking(move || read_staging(&dir))
            .await
            .map_err(|e| ProviderError::Process(format!("activate task failed: {e}")))??
        else {
            tracing::debug!(staging = %staging.display(), "nothing staged, already activated");
            return Ok(());
        };
        let ws = PathBuf::from(&plan.workspace);
        if !tokio::fs::metadata(&ws).await.is_ok_and(|m| m.is_dir()) {
            return Err(ProviderError::Process(format!(
                "target workspace {} does not exist",
                plan.workspace
            )));
        }
        let cli = self.cli()?;
        let docs: Vec<(String, Value)> = staged
            .iter()
            .map(|(id, _, v)| (id.clone(), v.clone()))
            .collect();
        let decisions = self.decide(&cli, &docs).await?;
        for ((id, path, _), decision) in staged.iter().zip(decisions) {
            if decision == ExportCompare::Same {
                tracing::debug!(%id, "identical session already here");
                continue;
            }
            cli.delete(id).await?;
            cli.import(path, &ws).await?;
        }
        match self.directory_of(&cli, &plan.provider_ref).await? {
            Some(d) if d == plan.workspace => {}
            other => {
                return Err(ProviderError::Process(format!(
                    "after import, session {} is recorded for {other:?}, not {}",
                    plan.provider_ref, plan.workspace
                )));
            }
        }
        tokio::fs::remove_dir_all(staging)
            .await
            .map_err(|e| ProviderError::io(format!("remove {}", staging.display()), e))
    }

    #[tracing::instrument(skip(self, workspace))]
    async fn remove_state(&self, provider_ref: &str, workspace: &Path) -> Result<()> {
        check_ref(provider_ref)?;
        self.check_stopped(provider_ref)?;
        let cli = self.cli()?;
        let ws = workspace_str(workspace)?;
        match self.directory_of(&cli, provider_ref).await? {
            None => Ok(()),
            Some(dir) if dir != ws => {
                // The same id recorded for another workspace is not the state that moved away.
                tracing::warn!(%dir, %ws, "not removing an OpenCode session of another workspace");
                Ok(())
            }
            // Deleting a session deletes its subagent sessions too.
            Some(_) => cli.delete(provider_ref).await,
        }
    }

    async fn list_sessions(&self) -> Result<Vec<ProviderSessionInfo>> {
        let cli = self.cli()?;
        let rows = cli.query(library::LIST_SQL).await?;
        Ok(library::sessions_from_rows(&rows))
    }

    async fn read_transcript(
        &self,
        provider_ref: &str,
        _workspace: &Path,
    ) -> Result<Vec<ReadEntry>> {
        check_ref(provider_ref)?;
        let cli = self.cli()?;
        let (_, export) = cli
            .export(provider_ref, &self.env.home)
            .await?
            .ok_or_else(|| ProviderError::StateMissing {
                provider: NAME.into(),
                provider_ref: provider_ref.into(),
            })?;
        Ok(library::entries_from_export(&export))
    }

    /// Forks by export → new ids → import (offline, no server, no model call; `run --fork`
    /// would need a prompt and `serve` a port). Subagent sessions are not copied.
    async fn fork_state(
        &self,
        provider_ref: &str,
        workspace: &Path,
        new_session_id: &str,
        turns: Option<usize>,
    ) -> Result<String> {
        check_ref(provider_ref)?;
        self.check_stopped(provider_ref)?;
        let cli = self.cli()?;
        let ws = PathBuf::from(workspace_str(workspace)?);
        let (_, export) = cli
            .export(provider_ref, &self.env.home)
            .await?
            .ok_or_else(|| ProviderError::StateMissing {
                provider: NAME.into(),
                provider_ref: provider_ref.into(),
            })?;
        let new_id = library::new_session_id(new_session_id);
        let forked = library::fork_export(&export, &new_id, turns);
        let data = serde_json::to_vec(&forked)
            .map_err(|e| ProviderError::Process(format!("cannot encode the fork: {e}")))?;
        let file = config::data_dir(&self.env).join(format!("baton-fork-{new_id}.json"));
        let f = file.clone();
        tokio::task::spawn_blocking(move || write_atomic(&f, &data, 0o600))
            .await
            .map_err(|e| ProviderError::Process(format!("fork task failed: {e}")))??;
        let imported = cli.import(&file, &ws).await;
        let _ = tokio::fs::remove_file(&file).await;
        imported?;
        if self.directory_of(&cli, &new_id).await?.is_none() {
            return Err(ProviderError::Process(format!(
                "opencode import did not create the fork {new_id}"
            )));
        }
        tracing::debug!(%new_id, "forked");
        Ok(new_id)
    }

    /// The key variables of common OpenCode providers. Which one a machine needs depends on
    /// its configured model (see [`OpenCodeProvider::configured_env_vars`]); this list has to
    /// be static, so it offers the usual ones, OpenCode's own gateway first.
    fn service_env_vars(&self) -> &'static [&'static str] {
        &["OPENCODE_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"]
    }
}
