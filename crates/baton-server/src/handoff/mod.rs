//! The handoff coordinator (DESIGN §4): one task per handoff drives the phases, persisting each
//! one, so a restarted server can abort an uncommitted handoff or finish a committed one.

pub mod machine;

use std::sync::Arc;
use std::time::Duration;

use baton_proto::api::HandoffRequest;
use baton_proto::handoff::WorkspacePass;
use baton_proto::ws::{DaemonCommand, DaemonReply, Event};
use baton_proto::{
    AccountId, ApiError, AuthState, DirectTarget, ErrorCode, HandoffId, HandoffPhase,
    HandoffRecord, HandoffResult, HandoffSupport, MachineKind, PhaseRecord, Sealed, SessionId,
    SessionMode, SessionRecord, SessionStatus, VersionCheck, now_millis,
};
use baton_store::{AbortHandoff, CommitHandoff, StoreError};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::AppState;
use crate::error::{ApiResult, ServerError};
use machine::{Outcome, Step, after, on_restart};

/// How long each participant may take for each phase.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// Target's read-only checks and staging.
    pub preflight: Duration,
    /// Source finishing its turn and stopping the provider.
    pub quiesce: Duration,
    /// Export, upload, download, import.
    pub transfer: Duration,
    /// Target resuming the provider.
    pub activate: Duration,
    /// A person reading a workspace plan before confirming it.
    pub confirm: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            preflight: Duration::from_secs(20),
            quiesce: Duration::from_secs(90),
            transfer: Duration::from_secs(300),
            activate: Duration::from_secs(60),
            confirm: Duration::from_secs(600),
        }
    }
}

/// Starts a handoff: validates the request, records it (refusing a second active handoff) and
/// spawns the task that drives it. Returns the record in phase `requested`.
pub async fn request(
    state: &Arc<AppState>,
    account: AccountId,
    session_id: SessionId,
    req: HandoffRequest,
) -> ApiResult<HandoffRecord> {
    let session = state
        .store
        .session(account, session_id)
        .await?
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "No such session."))?;
    let target = state
        .store
        .machine(req.to)
        .await?
        .filter(|m| m.account_id == account)
        .ok_or_else(|| ServerError::new(ErrorCode::NotFound, "No such target machine."))?;
    if target.kind == MachineKind::Browser {
        return Err(ServerError::new(
            ErrorCode::BadRequest,
            format!(
                "{} is a browser enrolled for the web UI; hand the session to a machine running `baton daemon`.",
                target.name
            ),
        ));
    }
    if target.id == session.owner {
        return Err(ServerError::new(
            ErrorCode::SameMachine,
            format!("{} already owns the session.", target.name),
        ));
    }
    if session.status == SessionStatus::Archived {
        return Err(ServerError::new(
            ErrorCode::SessionNotActive,
            "The session is archived.",
        ));
    }
    let now = now_millis();
    let record = HandoffRecord {
        id: req.id,
        session_id,
        from: session.owner,
        to: req.to,
        from_epoch: session.epoch,
        phase: HandoffPhase::Requested,
        result: HandoffResult::Active,
        phases: vec![PhaseRecord {
            phase: HandoffPhase::Requested,
            started_at: now,
            ended_at: Some(now),
            ok: true,
        }],
        error: None,
        options: req.options,
        sealed_options: req.sealed_options,
        bytes: 0,
        workspace: None,
        plan: None,
        created_at: now,
        updated_at: now,
    };
    state.store.begin_handoff(&record).await?;
    publish_handoff(state, account, &record);
    publish_session(state, account, session_id).await;
    spawn_drive(
        state.clone(),
        account,
        record.clone(),
        Step::Run(HandoffPhase::Preflight),
    );
    Ok(record)
}

/// Handoffs waiting for a client's go-ahead on their workspace plan.
#[derive(Default)]
pub struct Confirmations {
    waiting: std::sync::Mutex<std::collections::HashMap<HandoffId, oneshot::Sender<bool>>>,
}

impl Confirmations {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<HandoffId, oneshot::Sender<bool>>>
    {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expect(&self, id: HandoffId) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    fn forget(&self, id: HandoffId) {
        self.lock().remove(&id);
    }

    /// Delivers a client's answer; false when that handoff is not waiting for one.
    pub fn answer(&self, id: HandoffId, proceed: bool) -> bool {
        match self.lock().remove(&id) {
            Some(tx) => tx.send(proceed).is_ok(),
            None => false,
        }
    }
}

/// Picks up handoffs left unfinished by a previous server process.
pub async fn resume_unfinished(state: &Arc<AppState>) -> Result<usize, StoreError> {
    let unfinished = state.store.unfinished_handoffs().await?;
    let n = unfinished.len();
    for (account, handoff) in unfinished {
        let step = on_restart(handoff.phase, handoff.result);
        tracing::info!(handoff = %handoff.id, phase = ?handoff.phase, ?step, "resuming handoff after restart");
        spawn_drive(state.clone(), account, handoff, step);
    }
    Ok(n)
}

fn spawn_drive(state: Arc<AppState>, account: AccountId, handoff: HandoffRecord, step: Step) {
    let span =
        tracing::info_span!("handoff", handoff_id = %handoff.id, session_id = %handoff.session_id);
    tokio::spawn(
        async move {
            Driver {
                state,
                account,
                h: handoff,
                restore: SessionStatus::Idle,
                sealed_meta: None,
                last_error: None,
                workspace_bytes: 0,
                last_pass: None,
            }
            .drive(step)
            .await
        }
        .instrument(span),
    );
}

struct Driver {
    state: Arc<AppState>,
    account: AccountId,
    h: HandoffRecord,
    /// Status to give back to the session if the handoff aborts after quiescing it.
    restore: SessionStatus,
    /// Metadata re-sealed by the target for its workspace path, stored at commit.
    sealed_meta: Option<Sealed>,
    last_error: Option<ApiError>,
    /// Bytes of the workspace selection, as the source counted them in preflight.
    workspace_bytes: u64,
    /// The last workspace pass whose manifest the target took whole (its transfer id): the
    /// next pass may send only what changed since.
    last_pass: Option<HandoffId>,
}

impl Driver {
    async fn drive(mut self, mut step: Step) {
        loop {
            step = match step {
                Step::Run(phase) => {
                    self.begin_phase(phase).await;
                    let outcome = match self.run_phase(phase).await {
                        Ok(()) => Outcome::Ok,
                        Err(e) => {
                            tracing::warn!(phase = phase.as_str(), code = %e.code, message = %e.message, "handoff phase failed");
                            let code = e.code;
                            self.last_error = Some(e);
                            Outcome::Failed(code)
                        }
                    };
                    if phase != HandoffPhase::Commit {
                        self.end_phase(outcome == Outcome::Ok);
                    }
                    after(phase, outcome, self.h.options.workspace)
                }
                Step::Abort(code) => {
                    self.abort(code).await;
                    return;
                }
                Step::Finish(code) => {
                    self.finish(code).await;
                    return;
                }
            };
        }
    }

    async fn begin_phase(&mut self, phase: HandoffPhase) {
        let now = now_millis();
        self.h.phase = phase;
        self.h.updated_at = now;
        self.h.phases.push(PhaseRecord {
            phase,
            started_at: now,
            ended_at: None,
            ok: false,
        });
        // The commit transaction writes the handoff itself; writing it here too would only race.
        if phase != HandoffPhase::Commit {
            if let Err(e) = self.state.store.update_handoff(&self.h).await {
                tracing::error!(error = %e, "could not persist handoff phase");
            }
            publish_handoff(&self.state, self.account, &self.h);
        }
    }

    fn end_phase(&mut self, ok: bool) {
        let now = now_millis();
        if let Some(last) = self.h.phases.last_mut() {
            last.ended_at = Some(now);
            last.ok = ok;
        }
        self.h.updated_at = now;
    }

    async fn run_phase(&mut self, phase: HandoffPhase) -> Result<(), ApiError> {
        let t = self.state.timeouts.clone();
        let hub = &self.state.hub;
        match phase {
            HandoffPhase::Requested => Ok(()),
            HandoffPhase::Preflight => self.preflight().await,
            HandoffPhase::PrepareTarget => {
                hub.command(
                    self.h.to,
                    DaemonCommand::PrepareTarget {
                        handoff_id: self.h.id,
                        session_id: self.h.session_id,
                    },
                    t.preflight,
                )
                .await?;
                if self.h.options.workspace {
                    self.workspace_pass(WorkspacePass::Plan).await?;
                    if self.h.options.await_confirm {
                        self.await_confirm().await?;
                    }
                }
                Ok(())
            }
            HandoffPhase::Precopy => self.workspace_pass(WorkspacePass::Precopy).await,
            HandoffPhase::QuiesceSource => {
                self.restore = self
                    .state
                    .store
                    .begin_quiesce(self.h.session_id, self.h.from_epoch, now_millis())
                    .await
                    .map_err(ApiError::from)?;
                publish_session(&self.state, self.account, self.h.session_id).await;
                hub.command(
                    self.h.from,
                    DaemonCommand::Quiesce {
                        handoff_id: self.h.id,
                        session_id: self.h.session_id,
                        epoch: self.h.from_epoch,
                    },
                    t.quiesce,
                )
                .await
                .map(|_| ())
            }
            HandoffPhase::Transfer => {
                let reply = hub
                    .command(
                        self.h.from,
                        DaemonCommand::Export {
                            handoff_id: self.h.id,
                            session_id: self.h.session_id,
                        },
                        t.transfer,
                    )
                    .await
                    .map_err(|e| relabel(e, ErrorCode::TransferFailed))?;
                if let DaemonReply::Exported { bytes } = reply {
                    self.h.bytes += bytes;
                }
                if self.h.options.workspace {
                    self.workspace_pass(WorkspacePass::Final).await?;
                }
                Ok(())
            }
            HandoffPhase::Verify => {
                let session = self.session().await?;
                let reply = hub
                    .command(
                        self.h.to,
                        DaemonCommand::Import {
                            handoff_id: self.h.id,
                            session,
                            sealed_options: self.h.sealed_options.clone(),
                        },
                        t.transfer,
                    )
                    .await
                    .map_err(|e| relabel(e, ErrorCode::VerifyFailed))?;
                match reply {
                    DaemonReply::Imported { sealed_meta } => {
                        self.sealed_meta = Some(sealed_meta);
                        Ok(())
                    }
                    other => Err(ApiError::new(
                        ErrorCode::VerifyFailed,
                        format!("The target answered the import with {other:?}."),
                    )),
                }
            }
            HandoffPhase::Commit => self.commit().await,
            HandoffPhase::Activate => self.activate().await,
            HandoffPhase::Done => {
                if hub.is_online(self.h.from) {
                    hub.command(
                        self.h.from,
                        DaemonCommand::Cleanup {
                            handoff_id: self.h.id,
                            session_id: self.h.session_id,
                        },
                        t.preflight,
                    )
                    .await
                    .map(|_| ())
                } else {
                    // The source cleans up when it reconnects (it no longer owns the session).
                    Ok(())
                }
            }
        }
    }

    /// One pass of the workspace: the source serves its tree on the transfer socket, the target
    /// pulls what it lacks into staging. The first pass runs while the session still works on
    /// the source; the final one, after quiesce, moves only what changed since and ends with
    /// every file verified.
    async fn workspace_pass(&mut self, pass: WorkspacePass) -> Result<(), ApiError> {
        let final_pass = pass == WorkspacePass::Final;
        let t = self.state.timeouts.clone();
        let code = ErrorCode::TransferFailed;
        // Each pass has its own transfer (socket pair, key, byte count), so the final pass never
        // meets frames of the first.
        let transfer = HandoffId::new();
        self.state
            .transfers
            .allow(transfer, self.account, self.h.from, self.h.to);
        let session = self.session().await?;
        let result = async {
            self.state
                .hub
                .command(
                    self.h.from,
                    DaemonCommand::WorkspaceSend {
                        handoff_id: self.h.id,
                        transfer_id: transfer,
                        session: session.clone(),
                        sealed_options: self.h.sealed_options.clone(),
                        final_pass,
                        base_transfer: self.last_pass,
                        pass: Some(pass),
                    },
                    t.transfer,
                )
                .await?;
            let mut source_conn = self.state.hub.daemon_conn(self.h.from);
            let receive = target_receives(
                &self.state.hub,
                self.h.to,
                DaemonCommand::WorkspaceReceive {
                    handoff_id: self.h.id,
                    transfer_id: transfer,
                    session,
                    sealed_options: self.h.sealed_options.clone(),
                    conflict: self.h.options.conflict,
                    pass,
                },
                // A pass may move the whole tree: allow it at least 1 MiB/s on top of the
                // fixed part, so a big workspace on a slow link is not cut off.
                t.transfer + Duration::from_secs(self.workspace_bytes >> 20),
            );
            tokio::pin!(receive);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    reply = &mut receive => break reply,
                    _ = tick.tick() => {
                        if let Err(e) = self.source_serves(transfer, &mut source_conn).await {
                            // Ending the transfer makes the target's receive fail at once,
                            // instead of waiting out its reconnect timeout.
                            self.state.transfers.finish(transfer);
                            break Err(e);
                        }
                    }
                }
            }
        }
        .await;
        self.state.transfers.finish(transfer);
        // Whatever happens next, the target holds no complete manifest of an earlier pass
        // until this one is received whole.
        self.last_pass = None;
        let reply = result.map_err(|e| relabel(e, code))?;
        match reply {
            DaemonReply::WorkspacePlanned {
                sealed_plan,
                holds_manifest,
                ..
            } => {
                if holds_manifest {
                    self.last_pass = Some(transfer);
                }
                self.h.plan = Some(sealed_plan);
                self.h.updated_at = now_millis();
                if let Err(e) = self.state.store.update_handoff(&self.h).await {
                    tracing::error!(error = %e, "could not persist the workspace plan");
                }
                publish_handoff(&self.state, self.account, &self.h);
                Ok(())
            }
            DaemonReply::WorkspaceReceived {
                bytes_sent,
                sealed_outcome,
                holds_manifest,
                ..
            } => {
                self.h.bytes += bytes_sent;
                if final_pass {
                    self.h.workspace = sealed_outcome;
                } else if holds_manifest {
                    self.last_pass = Some(transfer);
                }
                Ok(())
            }
            other => Err(ApiError::new(
                code,
                format!("The target answered the workspace transfer with {other:?}."),
            )),
        }
    }

    /// While the target pulls a pass: a source that reconnected is asked whether it still
    /// serves the transfer. A restarted daemon does not, and the pass fails now rather than
    /// after the target's reconnect timeout; a connection that only blipped goes on.
    async fn source_serves(
        &self,
        transfer: HandoffId,
        conn: &mut Option<crate::hub::ConnId>,
    ) -> Result<(), ApiError> {
        let now = self.state.hub.daemon_conn(self.h.from);
        if now.is_none() || now == *conn {
            return Ok(());
        }
        self.state
            .hub
            .command(
                self.h.from,
                DaemonCommand::WorkspaceStatus {
                    handoff_id: self.h.id,
                    transfer_id: transfer,
                },
                Duration::from_secs(10),
            )
            .await?;
        *conn = now;
        Ok(())
    }

    /// Waits for the client's answer to the plan; nothing has moved yet, so a refusal (or
    /// silence) aborts with nothing to undo.
    async fn await_confirm(&mut self) -> Result<(), ApiError> {
        let rx = self.state.confirmations.expect(self.h.id);
        let answer = tokio::time::timeout(self.state.timeouts.confirm, rx).await;
        self.state.confirmations.forget(self.h.id);
        match answer {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(ApiError::new(
                ErrorCode::Cancelled,
                "The handoff was cancelled after its plan, before anything moved.",
            )),
            Ok(Err(_)) | Err(_) => Err(ApiError::new(
                ErrorCode::Cancelled,
                "Nobody confirmed the plan in time.",
            )),
        }
    }

    async fn session(&self) -> Result<SessionRecord, ApiError> {
        self.state
            .store
            .session(self.account, self.h.session_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "The session no longer exists."))
    }

    /// Read-only and complete: nothing is touched before all of it passed.
    async fn preflight(&mut self) -> Result<(), ApiError> {
        let session = self.session().await?;
        if session.epoch != self.h.from_epoch || session.owner != self.h.from {
            return Err(ApiError::new(
                ErrorCode::StaleEpoch,
                "The session changed owner since the handoff was requested.",
            ));
        }
        let target = self
            .state
            .store
            .machine(self.h.to)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "The target machine is gone."))?;
        let source_name = match self.state.store.machine(self.h.from).await {
            Ok(Some(m)) => m.name,
            _ => "the source".to_string(),
        };
        if !self.state.hub.is_online(self.h.to) {
            return Err(ApiError::new(
                ErrorCode::TargetOffline,
                format!("Machine {} is offline.", target.name),
            ));
        }
        if !self.state.hub.is_online(self.h.from) {
            return Err(ApiError::new(
                ErrorCode::SourceOffline,
                format!("Machine {source_name}, which owns the session, is offline."),
            ));
        }
        let provider = target.providers.iter().find(|p| p.name == session.provider);
        match provider {
            None => {
                return Err(ApiError::new(
                    ErrorCode::ProviderNotInstalled,
                    format!("{} is not installed on {}.", session.provider, target.name),
                ));
            }
            Some(p) if !p.installed => {
                return Err(ApiError::new(
                    ErrorCode::ProviderNotInstalled,
                    format!("{} is not installed on {}.", session.provider, target.name),
                ));
            }
            Some(p) if p.auth == AuthState::Missing => {
                return Err(ApiError::new(
                    ErrorCode::ProviderAuthMissing,
                    format!("{} is not logged in on {}.", session.provider, target.name),
                ));
            }
            Some(p) if p.handoff == HandoffSupport::Unsupported => {
                return Err(ApiError::new(
                    ErrorCode::ProviderUnsupported,
                    format!("{} sessions cannot be handed off.", session.provider),
                ));
            }
            Some(p) if p.version_check == VersionCheck::Incompatible => {
                return Err(ApiError::new(
                    ErrorCode::AgentVersionUnsupported,
                    format!(
                        "{} {} on {} stores sessions in a format Baton cannot move.",
                        session.provider,
                        p.version.as_deref().unwrap_or("(unknown version)"),
                        target.name
                    ),
                ));
            }
            Some(_) => {}
        }
        // The source refuses an unsafe workspace and measures the selection before anything
        // is stopped; the target then knows how much space to check.
        let workspace_bytes = if self.h.options.workspace {
            match self
                .state
                .hub
                .command(
                    self.h.from,
                    DaemonCommand::WorkspaceCheck {
                        handoff_id: self.h.id,
                        session: session.clone(),
                        sealed_options: self.h.sealed_options.clone(),
                    },
                    self.state.timeouts.transfer,
                )
                .await?
            {
                DaemonReply::WorkspaceChecked { bytes, .. } => {
                    // The server's caps refuse before anything stops, not half-way.
                    self.state
                        .transfers
                        .check_transfer(self.account, self.h.id, bytes)?;
                    self.workspace_bytes = bytes;
                    Some(bytes)
                }
                other => {
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        format!("The source answered the workspace check with {other:?}."),
                    ));
                }
            }
        } else {
            None
        };
        // The daemon re-checks live (the report may be stale) and checks the path.
        self.state
            .hub
            .command(
                self.h.to,
                DaemonCommand::Preflight {
                    handoff_id: self.h.id,
                    session,
                    sealed_options: self.h.sealed_options.clone(),
                    workspace_bytes,
                },
                self.state.timeouts.preflight,
            )
            .await
            .map(|_| ())
    }

    async fn commit(&mut self) -> Result<(), ApiError> {
        let Some(sealed_meta) = self.sealed_meta.clone() else {
            return Err(ApiError::new(
                ErrorCode::VerifyFailed,
                "The target did not hand back the session's metadata.",
            ));
        };
        let mode = match (self.session().await?.mode, self.h.options.direct) {
            (SessionMode::Direct, DirectTarget::Sync) => SessionMode::Synced,
            (mode, _) => mode,
        };
        self.end_phase(true);
        let commit = CommitHandoff {
            handoff_id: self.h.id,
            sealed_meta,
            phases: self.h.phases.clone(),
            bytes: self.h.bytes,
            mode,
            now: now_millis(),
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match self.state.store.commit_handoff(&commit).await {
                Ok(session) => {
                    self.h.result = HandoffResult::Committed;
                    publish_handoff(&self.state, self.account, &self.h);
                    self.state.hub.publish(
                        self.account,
                        Event::SessionChanged {
                            session: session.clone(),
                        },
                    );
                    return Ok(());
                }
                Err(StoreError::StaleEpoch { .. }) => {
                    // A retried commit whose first attempt did land sees the epoch already moved.
                    if let Ok(Some(h)) = self.state.store.handoff(self.account, self.h.id).await
                        && h.result == HandoffResult::Committed
                    {
                        self.h.result = HandoffResult::Committed;
                        return Ok(());
                    }
                    if let Some(last) = self.h.phases.last_mut() {
                        last.ok = false;
                    }
                    return Err(ApiError::new(
                        ErrorCode::StaleEpoch,
                        "The session changed owner during the handoff.",
                    ));
                }
                Err(e @ (StoreError::Conflict(_) | StoreError::NotFound)) => {
                    // Permanent: the handoff was already decided the other way, or is gone.
                    return Err(ApiError::from(e));
                }
                Err(e) => {
                    // Undecided: keep trying, the invariant forbids giving up half-way.
                    tracing::error!(error = %e, "commit failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn activate(&mut self) -> Result<(), ApiError> {
        // After a restart the target may still be reconnecting; give it the phase's time.
        let deadline = tokio::time::Instant::now() + self.state.timeouts.activate;
        while !self.state.hub.is_online(self.h.to) {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    ErrorCode::ActivateFailed,
                    "The target went offline before it resumed the session; it will resume it when it reconnects.",
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let session = self.session().await?;
        self.state
            .hub
            .command(
                self.h.to,
                DaemonCommand::Activate {
                    handoff_id: self.h.id,
                    session,
                },
                self.state.timeouts.activate,
            )
            .await
            .map(|_| ())
            .map_err(|e| relabel(e, ErrorCode::ActivateFailed))
    }

    async fn abort(&mut self, code: ErrorCode) {
        let error = match self.last_error.take() {
            Some(e) if e.code == code => e,
            _ if code == ErrorCode::Interrupted => ApiError::new(
                code,
                "The server restarted during the handoff, before it committed.",
            ),
            _ => ApiError::new(code, ""),
        };
        self.h.result = HandoffResult::Aborted;
        self.h.error = Some(error.clone());
        let abort = AbortHandoff {
            handoff_id: self.h.id,
            error,
            phases: self.h.phases.clone(),
            now: now_millis(),
        };
        let mut delay = Duration::from_millis(100);
        let session = loop {
            match self.state.store.abort_handoff(&abort, self.restore).await {
                Ok(s) => break s,
                Err(e @ (StoreError::Conflict(_) | StoreError::NotFound)) => {
                    tracing::error!(error = %e, "the handoff cannot be aborted (already decided)");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "abort failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        tracing::info!(code = %code, "handoff aborted; the source keeps the session");
        publish_handoff(&self.state, self.account, &self.h);
        self.state
            .hub
            .publish(self.account, Event::SessionChanged { session });
        let _ = self.state.store.delete_bundle(self.h.id).await;
        // Tell both sides; either may be offline, and each also reconciles when it reconnects.
        for machine in [self.h.to, self.h.from] {
            let state = self.state.clone();
            let cmd = DaemonCommand::Abort {
                handoff_id: self.h.id,
                session_id: self.h.session_id,
            };
            tokio::spawn(async move {
                let _ = state
                    .hub
                    .command(machine, cmd, Duration::from_secs(10))
                    .await;
            });
        }
    }

    async fn finish(&mut self, code: Option<ErrorCode>) {
        let error = code.map(|c| match self.last_error.take() {
            Some(e) if e.code == c => e,
            _ => ApiError::new(c, ""),
        });
        self.h.error = error.clone();
        let mut delay = Duration::from_millis(100);
        let session = loop {
            match self
                .state
                .store
                .finish_handoff(
                    self.h.id,
                    self.h.phase,
                    &self.h.phases,
                    error.as_ref(),
                    now_millis(),
                )
                .await
            {
                Ok(s) => break s,
                Err(e @ (StoreError::Conflict(_) | StoreError::NotFound)) => {
                    tracing::error!(error = %e, "the handoff cannot be finished (not committed)");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "finishing the handoff failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        tracing::info!("handoff finished");
        publish_handoff(&self.state, self.account, &self.h);
        self.state
            .hub
            .publish(self.account, Event::SessionChanged { session });
        let _ = self.state.store.delete_bundle(self.h.id).await;
    }
}

/// A participant's timeout or internal error during a phase is reported under the phase's code;
/// specific codes (e.g. `target_identity_conflict`) are kept.
fn relabel(e: ApiError, code: ErrorCode) -> ApiError {
    match e.code {
        ErrorCode::Internal | ErrorCode::Timeout => ApiError::raw(code, e.message),
        _ => e,
    }
}

fn publish_handoff(state: &AppState, account: AccountId, h: &HandoffRecord) {
    state
        .hub
        .publish(account, Event::HandoffChanged { handoff: h.clone() });
}

async fn publish_session(state: &AppState, account: AccountId, id: SessionId) {
    if let Ok(Some(session)) = state.store.session(account, id).await {
        state
            .hub
            .publish(account, Event::SessionChanged { session });
    }
}

/// How long a workspace pass waits for a target whose control connection dropped to come back
/// (the daemons' transfer sockets wait as long for each other by default).
const TARGET_RECONNECT_WAIT: Duration = Duration::from_secs(60);

/// Asks the target for a workspace pass and waits for its reply. The target runs the pass in a
/// task of its own, and its transfer socket resumes by itself, so a dropped control connection
/// loses only the reply: once the daemon is back (within [`TARGET_RECONNECT_WAIT`]) the same
/// command goes again, and the daemon answers it with the pass it is already running or ran.
async fn target_receives(
    hub: &crate::hub::Hub,
    to: baton_proto::MachineId,
    command: DaemonCommand,
    timeout: Duration,
) -> Result<DaemonReply, ApiError> {
    let started = tokio::time::Instant::now();
    loop {
        let conn = hub.daemon_conn(to);
        let left = timeout.saturating_sub(started.elapsed());
        match hub.command(to, command.clone(), left).await {
            Err(e) if crate::hub::disconnected(&e) => {
                tracing::info!(machine = %to, "the target's connection dropped during a workspace pass; waiting for it");
                let back = tokio::time::timeout(TARGET_RECONNECT_WAIT, async {
                    loop {
                        let now = hub.daemon_conn(to);
                        if now.is_some() && now != conn {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await;
                if back.is_err() {
                    return Err(ApiError::new(
                        ErrorCode::TargetOffline,
                        format!(
                            "The target went offline during the workspace transfer and was not back within {} s.",
                            TARGET_RECONNECT_WAIT.as_secs()
                        ),
                    ));
                }
            }
            other => return other,
        }
    }
}
