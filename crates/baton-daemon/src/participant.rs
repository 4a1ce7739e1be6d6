//! The daemon's side of a handoff: answering the coordinator's commands as target or source.
//! Staging lives in `BATON_HOME/handoffs/<handoff id>/` until activation or abort.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_crypto::SessionCipher;
use baton_proto::handoff::{SealedHandoffOptions, WorkspacePass};
use baton_proto::ws::{DaemonCommand, DaemonReply};
use baton_proto::{
    ApiError, AuthState, EntryBody, EntryRole, ErrorCode, HandoffId, HandoffRecord, HandoffResult,
    MachineInfo, Sealed, SessionId, SessionMeta, SessionMode, SessionRecord, VersionCheck,
};
use tokio::sync::oneshot;

use crate::client::ClientError;
use crate::runner::{RunnerCmd, Writer};
use crate::{Daemon, SourceState, lock};

type Reply = Result<DaemonReply, ApiError>;

pub(crate) fn api(e: ClientError) -> ApiError {
    e.to_api()
}

/// Answers one coordinator command.
pub async fn handle(d: &Arc<Daemon>, cmd: DaemonCommand) -> Reply {
    let hid = cmd.handoff_id();
    test_delay(cmd.op_name()).await;
    let result = match cmd {
        DaemonCommand::Preflight {
            handoff_id,
            session,
            sealed_options,
            workspace_bytes,
        } => {
            preflight(
                d,
                handoff_id,
                &session,
                sealed_options.as_ref(),
                workspace_bytes,
            )
            .await
        }
        DaemonCommand::WorkspaceCheck {
            handoff_id,
            session,
            sealed_options,
        } => crate::workspace::check(d, handoff_id, &session, sealed_options.as_ref()).await,
        DaemonCommand::WorkspaceSend {
            handoff_id,
            transfer_id,
            session,
            sealed_options,
            final_pass,
            base_transfer,
            pass,
        } => {
            let pass = crate::workspace::SendPass {
                final_pass,
                base_transfer,
                // An older server does not say: keep the walk, as a plan would.
                keeps_walk: matches!(pass, None | Some(WorkspacePass::Plan)),
            };
            crate::workspace::send(
                d,
                handoff_id,
                transfer_id,
                &session,
                sealed_options.as_ref(),
                pass,
            )
            .await
        }
        DaemonCommand::WorkspaceStatus {
            handoff_id,
            transfer_id,
        } => crate::workspace::status(d, handoff_id, transfer_id),
        DaemonCommand::WorkspaceReceive {
            handoff_id,
            transfer_id,
            session,
            sealed_options,
            conflict,
            pass,
        } => {
            crate::workspace::receive(
                d,
                handoff_id,
                transfer_id,
                &session,
                sealed_options.as_ref(),
                conflict,
                pass,
            )
            .await
        }
        DaemonCommand::PrepareTarget {
            handoff_id,
            session_id,
        } => prepare(d, handoff_id, session_id),
        DaemonCommand::Quiesce {
            handoff_id,
            session_id,
            epoch,
        } => quiesce(d, handoff_id, session_id, epoch).await,
        DaemonCommand::Export {
            handoff_id,
            session_id,
        } => export(d, handoff_id, session_id).await,
        DaemonCommand::Import {
            handoff_id,
            session,
            sealed_options,
        } => import(d, handoff_id, &session, sealed_options.as_ref()).await,
        DaemonCommand::Activate {
            handoff_id,
            session,
        } => activate(d, handoff_id, session).await,
        DaemonCommand::Abort { handoff_id, .. } => {
            crate::workspace::forget(d, handoff_id).await;
            remove_dir(&d.handoff_dir(handoff_id));
            Ok(DaemonReply::Ok)
        }
        DaemonCommand::Cleanup { handoff_id, .. } => cleanup(d, handoff_id).await,
        DaemonCommand::ListProviderSessions { .. }
        | DaemonCommand::ReadTranscript { .. }
        | DaemonCommand::AnswerPermission { .. } => Err(ApiError::new(
            ErrorCode::BadRequest,
            "not a handoff command",
        )),
    };
    match result {
        Ok(r) => Ok(r),
        Err(e) => {
            // Full detail stays in this machine's log; the server gets the code and a message
            // with no paths in it, since it must never hold workspace or home paths in clear.
            tracing::warn!(handoff_id = ?hid, code = %e.code, message = %e.message, "handoff command failed");
            Err(ApiError::raw(e.code, redact_paths(&e.message)))
        }
    }
}

/// Replaces every absolute path in `msg` with `<path>`.
pub(crate) fn redact_paths(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.char_indices().peekable();
    let mut prev: Option<char> = None;
    while let Some((_, c)) = chars.next() {
        let starts_path =
            c == '/' && prev.is_none_or(|p| p.is_whitespace() || "\"'`(=:[{<,".contains(p));
        if starts_path {
            // A quoted path runs to its closing quote (it may hold spaces); a bare one to the
            // next whitespace or closing delimiter. A sentence's final period is kept.
            let quote = prev.filter(|p| "\"'`".contains(*p));
            let mut path = String::from(c);
            while let Some(&(_, n)) = chars.peek() {
                let end = match quote {
                    Some(q) => n == q,
                    None => n.is_whitespace() || "\"'`)]}>,".contains(n),
                };
                if end {
                    break;
                }
                path.push(n);
                chars.next();
            }
            out.push_str("<path>");
            if path.ends_with('.') {
                out.push('.');
            }
            prev = path.chars().last();
        } else {
            out.push(c);
            prev = Some(c);
        }
    }
    out
}

fn remove_dir(p: &Path) {
    if p.exists()
        && let Err(e) = std::fs::remove_dir_all(p)
    {
        tracing::warn!(path = %p.display(), error = %e, "could not remove");
    }
}

fn machine_name(d: &Daemon) -> String {
    d.client.identity().config.name.clone()
}

/// The participant-only options of a handoff (defaults when none were given).
pub(crate) fn open_options(
    cipher: &SessionCipher,
    handoff: HandoffId,
    sealed_options: Option<&Sealed>,
) -> Result<SealedHandoffOptions, ApiError> {
    match sealed_options {
        Some(s) => cipher
            .open_options(handoff, s)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("Handoff options: {e}."))),
        None => Ok(SealedHandoffOptions::default()),
    }
}

/// Where the session's workspace is on this machine: `--path` if given, else the source's path,
/// resolved to its physical location (providers key state by the physical cwd).
fn target_workspace(
    d: &Daemon,
    cipher: &SessionCipher,
    handoff: HandoffId,
    meta: &SessionMeta,
    sealed_options: Option<&Sealed>,
) -> Result<PathBuf, ApiError> {
    let options = open_options(cipher, handoff, sealed_options)?;
    let wanted = options
        .target_path
        .unwrap_or_else(|| meta.workspace.clone());
    let p = PathBuf::from(&wanted);
    if !p.is_absolute() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "The target workspace path is not absolute.",
        ));
    }
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() => std::fs::canonicalize(&p).map_err(|e| {
            ApiError::new(
                ErrorCode::TargetPathMissing,
                format!(
                    "The workspace directory on {} cannot be resolved ({}).",
                    machine_name(d),
                    e.kind()
                ),
            )
        }),
        Ok(_) => Err(ApiError::new(
            ErrorCode::TargetPathMissing,
            format!(
                "The workspace path on {} is not a directory.",
                machine_name(d)
            ),
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::TargetPathMissing,
            format!(
                "The workspace directory does not exist on {}.",
                machine_name(d)
            ),
        )),
    }
}

async fn preflight(
    d: &Daemon,
    handoff: HandoffId,
    session: &SessionRecord,
    sealed_options: Option<&Sealed>,
    workspace_bytes: Option<u64>,
) -> Reply {
    let name = machine_name(d);
    let Some(provider) = d.provider(&session.provider) else {
        return Err(ApiError::new(
            ErrorCode::ProviderNotInstalled,
            format!("{} is not known on {name}.", session.provider),
        ));
    };
    let info = d.detect(provider).await;
    if !info.installed {
        return Err(ApiError::new(
            ErrorCode::ProviderNotInstalled,
            format!("{} is not installed on {name}.", session.provider),
        ));
    }
    if info.auth == AuthState::Missing {
        return Err(ApiError::new(
            ErrorCode::ProviderAuthMissing,
            format!("{} is not logged in on {name}.", session.provider),
        ));
    }
    if info.version_check == VersionCheck::Incompatible {
        return Err(ApiError::new(
            ErrorCode::AgentVersionUnsupported,
            format!(
                "{} {} on {name} stores sessions in a format Baton cannot move.",
                session.provider,
                info.version.as_deref().unwrap_or("(unknown version)")
            ),
        ));
    }
    let cipher = d.client.cipher(session).map_err(api)?;
    let meta = cipher
        .open_meta(&session.sealed_meta)
        .map_err(|e| api(e.into()))?;
    match workspace_bytes {
        Some(bytes) => {
            crate::workspace::check_destination(d, &cipher, handoff, &meta, sealed_options, bytes)
                .await?;
        }
        None => {
            target_workspace(d, &cipher, handoff, &meta, sealed_options)?;
        }
    }
    Ok(DaemonReply::Ok)
}

fn prepare(d: &Daemon, handoff: HandoffId, session: SessionId) -> Reply {
    let dir = d.handoff_dir(handoff);
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("Cannot create {}: {e}.", staging.display()),
        )
    })?;
    std::fs::write(dir.join("session"), session.to_string()).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("Cannot write staging marker: {e}."),
        )
    })?;
    Ok(DaemonReply::Ok)
}

async fn quiesce(d: &Daemon, handoff: HandoffId, session: SessionId, epoch: u64) -> Reply {
    let tx = {
        let mut runners = lock(&d.runners);
        match runners.get_mut(&session) {
            Some(slot) if slot.handle.epoch == epoch => {
                slot.stopping = true;
                Some(slot.handle.tx.clone())
            }
            _ => None,
        }
    };
    let last_seq = match tx {
        Some(tx) => {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(RunnerCmd::Quiesce(done_tx)).await.is_err() {
                stored_last_seq(d, session).await?
            } else {
                tokio::time::timeout(d.quiesce_grace + Duration::from_secs(30), done_rx)
                    .await
                    .map_err(|_| {
                        ApiError::new(ErrorCode::Timeout, "The session did not stop in time.")
                    })?
                    .map_err(|_| ApiError::new(ErrorCode::Internal, "The runner vanished."))?
            }
        }
        None => stored_last_seq(d, session).await?,
    };
    tracing::info!(handoff_id = %handoff, %session, last_seq, "source quiesced");
    Ok(DaemonReply::Quiesced { last_seq })
}

/// The session's last seq as the server has it (no runner here wrote anything since).
async fn stored_last_seq(d: &Daemon, id: SessionId) -> Result<u64, ApiError> {
    d.client
        .get::<SessionRecord>(&format!("/v1/sessions/{id}"))
        .await
        .map(|s| s.last_seq)
        .map_err(api)
}

async fn session_and_meta(
    d: &Daemon,
    id: SessionId,
) -> Result<(SessionRecord, SessionCipher, SessionMeta), ApiError> {
    let s: SessionRecord = d
        .client
        .get(&format!("/v1/sessions/{id}"))
        .await
        .map_err(api)?;
    let cipher = d.client.cipher(&s).map_err(api)?;
    let meta = cipher
        .open_meta(&s.sealed_meta)
        .map_err(|e| api(e.into()))?;
    Ok((s, cipher, meta))
}

/// Fault injection for tests: `BATON_TEST_DELAY_<OP>_MS` (OP = PREFLIGHT, PREPARE_TARGET,
/// QUIESCE, EXPORT, IMPORT, ACTIVATE, ABORT, CLEANUP) holds this daemon in that command so a
/// test can kill a process during it. Unset in normal use.
async fn test_delay(op: &str) {
    let var = format!("BATON_TEST_DELAY_{op}_MS");
    if let Some(ms) = std::env::var(&var).ok().and_then(|v| v.parse::<u64>().ok()) {
        tracing::warn!(ms, "{var} set: delaying the command");
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

async fn export(d: &Daemon, handoff: HandoffId, session: SessionId) -> Reply {
    let (s, cipher, meta) = session_and_meta(d, session).await?;
    let provider = d.provider(&s.provider).ok_or_else(|| {
        ApiError::new(
            ErrorCode::ProviderNotInstalled,
            format!("{} is not known here.", s.provider),
        )
    })?;
    let provider_ref = meta
        .provider_ref
        .clone()
        .unwrap_or_else(|| s.id.to_string());
    let workspace = PathBuf::from(&meta.workspace);
    let bundle = provider
        .export_state(&provider_ref, &workspace)
        .await
        .map_err(|e| ApiError::new(ErrorCode::TransferFailed, e.to_string()))?;
    let sealed = cipher.seal_bundle(handoff, &bundle);
    let bytes = sealed.len() as u64;
    d.client
        .put_bytes(&format!("/v1/handoffs/{handoff}/bundle"), sealed.0)
        .await
        .map_err(api)?;
    lock(&d.sources).insert(
        handoff,
        SourceState {
            provider: s.provider.clone(),
            provider_ref,
            workspace,
        },
    );
    Ok(DaemonReply::Exported { bytes })
}

async fn import(
    d: &Daemon,
    handoff: HandoffId,
    session: &SessionRecord,
    sealed_options: Option<&Sealed>,
) -> Reply {
    let staging = d.handoff_dir(handoff).join("staging");
    if !staging.is_dir() {
        return Err(ApiError::new(
            ErrorCode::VerifyFailed,
            "The staging area is missing (was the target restarted?).",
        ));
    }
    let cipher = d.client.cipher(session).map_err(api)?;
    let meta = cipher
        .open_meta(&session.sealed_meta)
        .map_err(|e| api(e.into()))?;
    // A workspace that travels lands at a path that may not exist yet (it is put in place at
    // activation); otherwise the session's directory must already be there.
    let target = match crate::workspace::final_path(d, handoff).await {
        Some(p) => p,
        None => target_workspace(d, &cipher, handoff, &meta, sealed_options)?,
    };
    let sealed = d
        .client
        .get_bytes(&format!("/v1/handoffs/{handoff}/bundle"))
        .await
        .map_err(api)?;
    let bundle = cipher.open_bundle(handoff, &sealed).map_err(|e| {
        ApiError::new(
            ErrorCode::VerifyFailed,
            format!("The provider state did not verify: {e}."),
        )
    })?;
    if bundle.provider != session.provider {
        return Err(ApiError::new(
            ErrorCode::VerifyFailed,
            format!(
                "The bundle holds {} state, but the session is {}.",
                bundle.provider, session.provider
            ),
        ));
    }
    let provider = d.provider(&session.provider).ok_or_else(|| {
        ApiError::new(
            ErrorCode::ProviderNotInstalled,
            format!("{} is not known here.", session.provider),
        )
    })?;
    provider
        .stage_import(&bundle, &target, &staging)
        .await
        .map_err(|e| {
            let code = match e.code() {
                ErrorCode::Internal => ErrorCode::VerifyFailed,
                c => c,
            };
            ApiError::new(code, e.to_string())
        })?;
    let new_meta = SessionMeta {
        workspace: target.to_string_lossy().into_owned(),
        provider_ref: Some(bundle.provider_ref.clone()),
        title: meta.title,
        fork_of: None,
    };
    Ok(DaemonReply::Imported {
        sealed_meta: cipher.seal_meta(&new_meta),
    })
}

async fn activate(d: &Arc<Daemon>, handoff: HandoffId, session: SessionRecord) -> Reply {
    let already_running = lock(&d.runners)
        .get(&session.id)
        .is_some_and(|s| s.handle.epoch == session.epoch && !s.stopping);
    if already_running {
        return Ok(DaemonReply::Ok);
    }
    let dir = d.handoff_dir(handoff);
    let staging = dir.join("staging");
    let provider = d.provider(&session.provider).ok_or_else(|| {
        ApiError::new(
            ErrorCode::ActivateFailed,
            format!("{} is not known here.", session.provider),
        )
    })?;
    crate::workspace::activate(d, handoff).await?;
    if staging.is_dir() {
        provider.activate_import(&staging).await.map_err(|e| {
            ApiError::new(
                ErrorCode::ActivateFailed,
                format!("Putting the provider state in place failed: {e}"),
            )
        })?;
    }
    remove_dir(&dir);
    // A Direct session's provider files are in place, and that is all it is: no Baton
    // transcript to note the move in and no runner.
    if session.mode == SessionMode::Direct {
        return Ok(DaemonReply::Ok);
    }
    let mut session = session;
    let note = handoff_note(d, handoff, &session).await;
    let cipher = d.client.cipher(&session).map_err(api)?;
    let mut writer = Writer::new(d.clone(), &session, cipher.clone());
    if session.last_seq == 0 {
        // A Direct session converted to synced: its transcript comes from the provider's files,
        // before the note of the move.
        let meta = cipher
            .open_meta(&session.sealed_meta)
            .map_err(|e| api(e.into()))?;
        let provider_ref = meta
            .provider_ref
            .clone()
            .unwrap_or_else(|| session.id.to_string());
        crate::runner::import_transcript(
            provider,
            &provider_ref,
            &std::path::PathBuf::from(&meta.workspace),
            &mut writer,
        )
        .await
        .map_err(|msg| ApiError::new(ErrorCode::ActivateFailed, msg))?;
    }
    writer
        .append(&[EntryBody::new(EntryRole::System, note)], None, None)
        .await
        .map_err(api)?;
    session.last_seq = writer.last_seq;
    let (ready_tx, ready_rx) = oneshot::channel();
    d.spawn_runner(session, Some(ready_tx));
    match tokio::time::timeout(Duration::from_secs(45), ready_rx).await {
        Ok(Ok(Ok(()))) => Ok(DaemonReply::Ok),
        Ok(Ok(Err(e))) => Err(ApiError::new(ErrorCode::ActivateFailed, e.to_string())),
        Ok(Err(_)) => Err(ApiError::new(
            ErrorCode::ActivateFailed,
            "The session runner ended before the provider started.",
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::ActivateFailed,
            "The provider did not start within 45 s.",
        )),
    }
}

/// The transcript's record of the move: where from, where to, and honestly what came along.
async fn handoff_note(d: &Daemon, handoff: HandoffId, session: &SessionRecord) -> String {
    let from = match d
        .client
        .get::<HandoffRecord>(&format!("/v1/handoffs/{handoff}"))
        .await
    {
        Ok(h) => {
            let machines: Vec<MachineInfo> = d.client.get("/v1/machines").await.unwrap_or_default();
            machines
                .into_iter()
                .find(|m| m.id == h.from)
                .map(|m| m.name)
                .unwrap_or_else(|| h.from.to_string())
        }
        Err(_) => "another machine".to_string(),
    };
    format!(
        "Session handed off from {from} to {} (epoch {}). Came along: the transcript and the {} provider state. Did not come along: running tool processes and background jobs of the source.",
        machine_name(d),
        session.epoch,
        session.provider
    )
}

async fn cleanup(d: &Daemon, handoff: HandoffId) -> Reply {
    crate::workspace::forget(d, handoff).await;
    let source = lock(&d.sources).remove(&handoff);
    let Some(src) = source else {
        tracing::info!(handoff_id = %handoff, "nothing recorded to clean up (daemon restarted since export)");
        return Ok(DaemonReply::Ok);
    };
    if let Some(p) = d.provider(&src.provider)
        && let Err(e) = p.remove_state(&src.provider_ref, &src.workspace).await
    {
        tracing::warn!(error = %e, "removing the old provider state failed");
    }
    Ok(DaemonReply::Ok)
}

/// After a (re)connect: staging left by handoffs that ended while this daemon was away is
/// removed (aborted) or put in place (committed to this machine).
pub async fn recover_staging(d: &Arc<Daemon>) -> Result<(), ClientError> {
    crate::workspace::finish_commits(d).await?;
    let root = d.baton_home.join("handoffs");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(id) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<HandoffId>().ok())
        else {
            continue;
        };
        let h: HandoffRecord = match d.client.get(&format!("/v1/handoffs/{id}")).await {
            Ok(h) => h,
            Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => {
                remove_dir(&dir);
                continue;
            }
            Err(e) => return Err(e),
        };
        match h.result {
            HandoffResult::Aborted => {
                crate::workspace::remove_recorded_staging(d, id);
                remove_dir(&dir);
            }
            HandoffResult::Active => {}
            HandoffResult::Committed => {
                let s: SessionRecord = d
                    .client
                    .get(&format!("/v1/sessions/{}", h.session_id))
                    .await?;
                // Activation not running on the server any more: finish it here.
                if s.owner == d.machine && s.active_handoff != Some(id) {
                    if let Some(p) = d.provider(&s.provider)
                        && dir.join("staging").is_dir()
                        && let Err(e) = p.activate_import(&dir.join("staging")).await
                    {
                        tracing::warn!(error = %e, "late activation of staged state failed");
                        continue;
                    }
                    remove_dir(&dir);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact_paths;

    #[test]
    fn absolute_paths_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_paths("Directory /home/a/ws does not exist on desktop."),
            "Directory <path> does not exist on desktop."
        );
        assert_eq!(
            redact_paths("cannot write \"/tmp/x y/z\": denied"),
            "cannot write \"<path>\": denied"
        );
        assert_eq!(redact_paths("at /a/b."), "at <path>.");
        assert_eq!(
            redact_paths("ratio 1/2 and and/or stay"),
            "ratio 1/2 and and/or stay"
        );
        assert_eq!(redact_paths("(/x/y) [/z]"), "(<path>) [<path>]");
        assert!(
            !redact_paths("see /home/me/.scripted-agent/projects/-home-me-ws/1.jsonl")
                .contains("home")
        );
    }
}
