//! One session's runner: owns the provider process while this machine owns the session, pulls
//! queued input in order, and writes the transcript at its epoch.
//!
//! Input is consumed by appending the user entry that names it, in one store transaction on the
//! server, so a message is delivered exactly once whatever crashes. Assistant output is appended
//! as it streams, one entry behind, so that the last entry of a turn can carry `turn_end`.
//!
//! Tool approvals: a request becomes a `permission` entry that every watcher sees; the first
//! answer relayed from any client goes to the agent. A request still open when the agent process
//! goes away (a handoff quiesced it, the daemon restarted) stays open in the transcript, and the
//! next runner of the session, here or on a handoff's target, asks it again. Approving such a
//! re-raised request asks the new process to repeat the call, and that call is let through
//! without asking twice.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_crypto::SessionCipher;
use baton_proto::api::{AppendRequest, AppendResponse, NewEntry, UpdateMetaRequest};
use baton_proto::{
    ApiError, EntryBody, EntryRole, ErrorCode, InputId, InputRecord, PermissionNote, Sealed,
    SealedEntry, SessionId, SessionMeta, SessionMode, SessionRecord, SessionStatus,
};
use baton_providers::{AgentEvent, AgentSession, Provider, StartSpec, approval};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::Daemon;
use crate::client::ClientError;

/// How long a quiesce waits for the running turn before interrupting it, by default.
pub const DEFAULT_QUIESCE_GRACE: Duration = Duration::from_secs(30);
/// How often a runner re-reads its queue without being woken (a missed wake-up is harmless).
const POLL_EVERY: Duration = Duration::from_secs(15);

/// Orders to a runner.
pub enum RunnerCmd {
    /// New input may be queued.
    Wake,
    /// Finish the turn, stop the provider, report the last seq, exit.
    Quiesce(oneshot::Sender<u64>),
    /// Stop the provider and exit.
    Stop,
    /// A person answered the permission request at seq `request` (sealed
    /// [`baton_proto::PermissionAnswer`]); `done` learns whether it reached an open request.
    Answer {
        /// Seq of the request entry.
        request: u64,
        /// The sealed answer.
        sealed: Sealed,
        /// Told once the answer is recorded, or why it was refused.
        done: oneshot::Sender<Result<(), ApiError>>,
    },
}

/// Handle to a running runner.
pub struct RunnerHandle {
    /// Orders.
    pub tx: mpsc::Sender<RunnerCmd>,
    /// Epoch it runs at.
    pub epoch: u64,
}

/// Why a runner ended.
#[derive(Debug)]
enum Exit {
    Quiesced,
    Stopped,
    LostOwnership,
    ProviderGone,
}

/// Writes transcript entries at one epoch.
pub struct Writer {
    daemon: Arc<Daemon>,
    /// Session.
    pub session_id: SessionId,
    /// Epoch written at.
    pub epoch: u64,
    /// Last seq known to be stored.
    pub last_seq: u64,
    cipher: SessionCipher,
}

impl Writer {
    /// A writer starting after `last_seq`.
    pub fn new(daemon: Arc<Daemon>, session: &SessionRecord, cipher: SessionCipher) -> Self {
        Self {
            daemon,
            session_id: session.id,
            epoch: session.epoch,
            last_seq: session.last_seq,
            cipher,
        }
    }

    /// Appends entries (the first may consume `input`), setting the session's status.
    pub async fn append(
        &mut self,
        bodies: &[EntryBody],
        input: Option<InputId>,
        status: Option<SessionStatus>,
    ) -> Result<(), ClientError> {
        loop {
            let entries: Vec<NewEntry> = bodies
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let seq = self.last_seq + 1 + i as u64;
                    NewEntry {
                        seq,
                        input_id: if i == 0 { input } else { None },
                        sealed: self.cipher.seal_entry(seq, self.epoch, b),
                    }
                })
                .collect();
            let req = AppendRequest {
                epoch: self.epoch,
                entries,
                status,
            };
            match self
                .daemon
                .client
                .post::<_, AppendResponse>(
                    &format!("/v1/sessions/{}/entries", self.session_id),
                    &req,
                )
                .await
            {
                Ok(r) => {
                    self.last_seq = r.last_seq;
                    return Ok(());
                }
                Err(ClientError::Api(e)) if e.code == ErrorCode::SeqConflict => {
                    // Someone (our previous life, before a restart) wrote more: catch up.
                    let s: SessionRecord = self
                        .daemon
                        .client
                        .get(&format!("/v1/sessions/{}", self.session_id))
                        .await?;
                    if s.epoch != self.epoch || s.last_seq == self.last_seq {
                        return Err(ClientError::Api(e));
                    }
                    self.last_seq = s.last_seq;
                }
                Err(ClientError::Unreachable { .. }) => {
                    // Keep the output: retry until the server is back (an entry is never dropped).
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Starts a runner task for `session` (owned by this machine at its epoch). `ready` is answered
/// once the provider process is up (or failed to start).
pub fn spawn(
    daemon: Arc<Daemon>,
    session: SessionRecord,
    ready: Option<oneshot::Sender<Result<(), ClientError>>>,
) -> RunnerHandle {
    let (tx, rx) = mpsc::channel(64);
    let epoch = session.epoch;
    let span = tracing::info_span!("runner", session_id = %session.id, epoch);
    let id = session.id;
    let d = daemon.clone();
    tokio::spawn(
        async move {
            let exit = run(d.clone(), session, rx, ready).await;
            tracing::info!(?exit, "runner ended");
            d.runner_ended(id, epoch);
        }
        .instrument(span),
    );
    RunnerHandle { tx, epoch }
}

async fn run(
    daemon: Arc<Daemon>,
    session: SessionRecord,
    mut rx: mpsc::Receiver<RunnerCmd>,
    ready: Option<oneshot::Sender<Result<(), ClientError>>>,
) -> Exit {
    let fail_ready = |ready: Option<oneshot::Sender<Result<(), ClientError>>>, e: ClientError| {
        if let Some(r) = ready {
            let _ = r.send(Err(e));
        }
    };
    let cipher = match daemon.client.cipher(&session) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the session key");
            fail_ready(ready, e);
            return Exit::Stopped;
        }
    };
    let meta = match cipher.open_meta(&session.sealed_meta) {
        Ok(m) => m,
        Err(e) => {
            fail_ready(ready, e.into());
            return Exit::Stopped;
        }
    };
    let mut writer = Writer::new(daemon.clone(), &session, cipher.clone());
    let Some(provider) = daemon.provider(&session.provider) else {
        let msg = format!(
            "Provider {} is not known on this machine.",
            session.provider
        );
        let _ = writer
            .append(&[error_entry(&msg)], None, Some(SessionStatus::Stopped))
            .await;
        fail_ready(
            ready,
            ClientError::Api(baton_proto::ApiError::new(
                ErrorCode::ProviderNotInstalled,
                msg,
            )),
        );
        return Exit::Stopped;
    };
    let provider_ref = meta
        .provider_ref
        .clone()
        .unwrap_or_else(|| session.id.to_string());
    let workspace = PathBuf::from(&meta.workspace);
    if session.status == SessionStatus::Running {
        // A turn was cut short by a restart of this daemon: say so, so no one waits forever.
        let _ = writer
            .append(
                &[EntryBody {
                    turn_end: true,
                    ..error_entry("The turn was interrupted: the daemon restarted.")
                }],
                None,
                Some(SessionStatus::Idle),
            )
            .await;
    }
    let mut meta = meta;
    let provider_ref =
        match prepare(&daemon, provider, &session, &mut meta, &cipher, &mut writer).await {
            Ok(r) => r.unwrap_or(provider_ref),
            Err(msg) => {
                tracing::warn!(%msg);
                let _ = writer
                    .append(
                        &[EntryBody {
                            turn_end: true,
                            ..error_entry(&msg)
                        }],
                        None,
                        Some(SessionStatus::Stopped),
                    )
                    .await;
                fail_ready(
                    ready,
                    ClientError::Api(baton_proto::ApiError::new(ErrorCode::ProviderFailed, msg)),
                );
                return Exit::ProviderGone;
            }
        };
    let service_env = daemon.service_env(&session.provider);
    let agent = match start_agent(provider, &provider_ref, &workspace, service_env).await {
        Ok(a) => a,
        Err(e) => {
            let msg = format!("Could not start {}: {e}", session.provider);
            tracing::warn!(%msg);
            let _ = writer
                .append(
                    &[EntryBody {
                        turn_end: true,
                        ..error_entry(&msg)
                    }],
                    None,
                    Some(SessionStatus::Stopped),
                )
                .await;
            fail_ready(
                ready,
                ClientError::Api(baton_proto::ApiError::new(e.code(), msg)),
            );
            return Exit::ProviderGone;
        }
    };
    if let Some(r) = ready {
        let _ = r.send(Ok(()));
    }
    let mut state = Running {
        daemon: daemon.clone(),
        agent: Some(agent),
        writer,
        cipher,
        session_id: session.id,
        provider: session.provider.clone(),
        quiesced: None,
        meta,
        open: Vec::new(),
        approved: Vec::new(),
        retries: VecDeque::new(),
    };
    let exit = match state.reraise_open().await {
        Ok(()) => state.serve(&mut rx).await,
        Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => Exit::LostOwnership,
        Err(e) => {
            // The requests stay open in the transcript; the next start asks them again.
            tracing::warn!(error = %e, "asking open permission requests again failed");
            state.serve(&mut rx).await
        }
    };
    if let Some(agent) = state.agent.take()
        && let Err(e) = agent.shutdown().await
    {
        tracing::warn!(error = %e, "provider shutdown failed");
    }
    // Answered only now, so the source's provider is stopped before the handoff moves on.
    if let Some(done) = state.quiesced.take() {
        let _ = done.send(state.writer.last_seq);
    }
    exit
}

async fn start_agent(
    provider: &dyn Provider,
    provider_ref: &str,
    workspace: &std::path::Path,
    env: Vec<(String, String)>,
) -> baton_providers::Result<Box<dyn AgentSession>> {
    let resume = provider.has_state(provider_ref, workspace).await?;
    provider
        .start(&StartSpec {
            provider_ref: provider_ref.to_string(),
            workspace: workspace.to_path_buf(),
            resume,
            env,
        })
        .await
}

/// Entries appended per request when copying a transcript.
const COPY_BATCH: usize = 100;

/// Work a session needs before its provider first starts here. A fork copies its parent's
/// transcript (up to the fork point) and provider state; a synced session that has provider
/// state but no transcript yet (opened with `--sync`, or a Direct session converted by a
/// handoff) imports the provider's transcript. Returns the provider id to run, when it changed.
async fn prepare(
    daemon: &Arc<Daemon>,
    provider: &dyn Provider,
    session: &SessionRecord,
    meta: &mut SessionMeta,
    cipher: &SessionCipher,
    writer: &mut Writer,
) -> Result<Option<String>, String> {
    let workspace = PathBuf::from(&meta.workspace);
    if let Some(fork) = meta.fork_of {
        let parent: SessionRecord = daemon
            .client
            .get(&format!("/v1/sessions/{}", fork.session))
            .await
            .map_err(|e| format!("Cannot read the parent session of this fork: {e}"))?;
        let parent_cipher = daemon
            .client
            .cipher(&parent)
            .map_err(|e| format!("Cannot open the parent session: {e}"))?;
        let parent_meta = parent_cipher
            .open_meta(&parent.sealed_meta)
            .map_err(|e| format!("Cannot open the parent session: {e}"))?;
        // The fork's seq n is the parent's seq n, so after a restart copying resumes where it
        // stopped.
        let mut turns = 0usize;
        let mut after = 0u64;
        while after < fork.at_seq {
            let page: Vec<baton_proto::SealedEntry> = daemon
                .client
                .get(&format!(
                    "/v1/sessions/{}/entries?after={after}&limit={COPY_BATCH}",
                    fork.session
                ))
                .await
                .map_err(|e| format!("Cannot read the parent's transcript: {e}"))?;
            if page.is_empty() {
                break;
            }
            let mut bodies = Vec::new();
            for e in page.iter().filter(|e| e.seq <= fork.at_seq) {
                let body = parent_cipher
                    .open_entry(e)
                    .map_err(|err| format!("Entry {} of the parent does not open: {err}", e.seq))?;
                turns += usize::from(body.turn_end);
                if e.seq > writer.last_seq {
                    bodies.push(body);
                }
            }
            after = page.last().map_or(fork.at_seq, |e| e.seq);
            if !bodies.is_empty() {
                writer
                    .append(&bodies, None, None)
                    .await
                    .map_err(|e| format!("Copying the parent's transcript failed: {e}"))?;
            }
        }
        let parent_ref = parent_meta
            .provider_ref
            .clone()
            .unwrap_or_else(|| parent.id.to_string());
        let new_ref = provider
            .fork_state(
                &parent_ref,
                &PathBuf::from(&parent_meta.workspace),
                &session.id.to_string(),
                // A Direct parent has no transcript in Baton: the fork takes it whole.
                (parent.mode == SessionMode::Synced).then_some(turns),
            )
            .await
            .map_err(|e| format!("Could not fork the {} conversation: {e}", session.provider))?;
        let mut next = meta.clone();
        next.provider_ref = Some(new_ref.clone());
        next.fork_of = None;
        let req = UpdateMetaRequest {
            epoch: writer.epoch,
            sealed_meta: cipher.seal_meta(&next),
        };
        let _: SessionRecord = daemon
            .client
            .put(&format!("/v1/sessions/{}/meta", session.id), &req)
            .await
            .map_err(|e| format!("Recording the fork failed: {e}"))?;
        *meta = next;
        return Ok(Some(new_ref));
    }
    let provider_ref = meta
        .provider_ref
        .clone()
        .unwrap_or_else(|| session.id.to_string());
    if writer.last_seq == 0 {
        import_transcript(provider, &provider_ref, &workspace, writer).await?;
    }
    Ok(None)
}

/// Appends the conversation from the provider's own files to an empty Baton transcript (a
/// session opened with `--sync`, or a Direct session converted by a handoff). Nothing happens
/// when the provider has no state for it.
pub(crate) async fn import_transcript(
    provider: &dyn Provider,
    provider_ref: &str,
    workspace: &std::path::Path,
    writer: &mut Writer,
) -> Result<(), String> {
    if !provider
        .has_state(provider_ref, workspace)
        .await
        .unwrap_or(false)
    {
        return Ok(());
    }
    let read = provider
        .read_transcript(provider_ref, workspace)
        .await
        .map_err(|e| format!("Could not read the {} conversation: {e}", provider.name()))?;
    let bodies = crate::library::to_entries(read);
    tracing::info!(
        entries = bodies.len(),
        "importing the provider's transcript"
    );
    for chunk in bodies.chunks(COPY_BATCH) {
        writer
            .append(chunk, None, None)
            .await
            .map_err(|e| format!("Importing the transcript failed: {e}"))?;
    }
    Ok(())
}

fn error_entry(text: &str) -> EntryBody {
    EntryBody::new(EntryRole::Error, text)
}

/// A permission request this runner knows to be open.
struct OpenRequest {
    /// Seq of its entry.
    seq: u64,
    /// The provider's id for it, when the process that asked is this runner's; `None` for a
    /// request asked again after that process went away.
    provider_id: Option<String>,
    tool: String,
    input: serde_json::Value,
}

/// How many entries back a new runner looks for open permission requests. A request blocks its
/// turn, so an open one is among the last entries of the transcript.
const RERAISE_WINDOW: u64 = 200;

struct Running {
    daemon: Arc<Daemon>,
    agent: Option<Box<dyn AgentSession>>,
    writer: Writer,
    cipher: SessionCipher,
    session_id: SessionId,
    /// Provider name, for the transcript's wording.
    provider: String,
    /// Who waits for this runner to quiesce (answered with the last seq once stopped).
    quiesced: Option<oneshot::Sender<u64>>,
    /// The session's metadata as last written.
    meta: SessionMeta,
    /// Open permission requests, oldest first.
    open: Vec<OpenRequest>,
    /// Tool calls a person approved after their process went away: the repeated call is let
    /// through once without asking again.
    approved: Vec<(String, serde_json::Value)>,
    /// Messages to send as turns of their own before queued input (asking the agent to repeat
    /// an approved call).
    retries: VecDeque<String>,
}

enum TurnEnd {
    Done,
    Exit(Exit),
}

/// What woke a running turn.
enum Step {
    Event(AgentEvent),
    Answer {
        request: u64,
        sealed: Sealed,
        done: oneshot::Sender<Result<(), ApiError>>,
    },
    Nothing,
}

fn permission_entry(text: String, note: PermissionNote) -> EntryBody {
    EntryBody {
        permission: Some(note),
        ..EntryBody::new(EntryRole::Permission, text)
    }
}

impl Running {
    /// Stores the provider's own id for the conversation in the session's metadata, so that a
    /// restarted runner or a handoff target resumes it instead of starting a new one.
    async fn record_provider_ref(&mut self, provider_ref: String) -> Result<(), ClientError> {
        if self.meta.provider_ref.as_deref() == Some(provider_ref.as_str()) {
            return Ok(());
        }
        let mut meta = self.meta.clone();
        meta.provider_ref = Some(provider_ref);
        let req = UpdateMetaRequest {
            epoch: self.writer.epoch,
            sealed_meta: self.cipher.seal_meta(&meta),
        };
        let _: SessionRecord = self
            .daemon
            .client
            .put(&format!("/v1/sessions/{}/meta", self.session_id), &req)
            .await?;
        self.meta = meta;
        Ok(())
    }

    /// Asks again every permission request the transcript holds open: the process that asked
    /// is gone, so it can only be answered through this runner now.
    async fn reraise_open(&mut self) -> Result<(), ClientError> {
        let after = self.writer.last_seq.saturating_sub(RERAISE_WINDOW);
        let page: Vec<SealedEntry> = self
            .daemon
            .client
            .get(&format!(
                "/v1/sessions/{}/entries?after={after}&limit={RERAISE_WINDOW}",
                self.session_id
            ))
            .await?;
        let mut bodies = Vec::new();
        for e in &page {
            match self.cipher.open_entry(e) {
                Ok(b) => bodies.push((e.seq, b)),
                Err(err) => tracing::warn!(seq = e.seq, error = %err, "an entry does not open"),
            }
        }
        let open = baton_proto::open_permissions(bodies.iter().map(|(s, b)| (*s, b)));
        for old in open {
            let text = format!(
                "{} asks again to use {} (the process that first asked stopped before an answer).",
                self.provider,
                approval::describe(&old.tool, &old.input)
            );
            let body = permission_entry(
                text,
                PermissionNote::Request {
                    tool: old.tool.clone(),
                    input: old.input.clone(),
                    reraises: Some(old.seq),
                },
            );
            self.writer.append(&[body], None, None).await?;
            tracing::info!(
                request = old.seq,
                seq = self.writer.last_seq,
                "permission request asked again"
            );
            self.open.push(OpenRequest {
                seq: self.writer.last_seq,
                provider_id: None,
                tool: old.tool,
                input: old.input,
            });
        }
        Ok(())
    }

    /// Records a person's answer and passes it to the agent. `held` is the turn's entry not yet
    /// written (written first, to keep the transcript in order); `in_turn` says whether a turn
    /// is running (else an approved re-raised call starts one, so the session is running).
    async fn answer(
        &mut self,
        request: u64,
        sealed: &Sealed,
        held: &mut Option<EntryBody>,
        in_turn: bool,
    ) -> Result<(), ApiError> {
        let allow = self
            .cipher
            .open_answer(request, sealed)
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("The answer does not open with this session's key: {e}."),
                )
            })?
            .allow;
        let Some(i) = self.open.iter().position(|p| p.seq == request) else {
            return Err(ApiError::new(
                ErrorCode::PermissionNotOpen,
                format!("Entry {request} is not an open permission request."),
            ));
        };
        if let Some(id) = &self.open[i].provider_id {
            let agent = self.agent.as_mut().ok_or_else(|| {
                ApiError::new(ErrorCode::PermissionNotOpen, "The agent process is gone.")
            })?;
            agent.answer_permission(id, allow).await.map_err(|e| {
                ApiError::new(
                    ErrorCode::PermissionNotOpen,
                    format!("The agent no longer waits for it: {e}."),
                )
            })?;
        }
        let p = self.open.remove(i);
        let retry = p.provider_id.is_none() && allow;
        let verb = if allow { "Allowed" } else { "Denied" };
        let mut bodies: Vec<EntryBody> = held.take().into_iter().collect();
        bodies.push(permission_entry(
            format!("{verb} {}.", approval::describe(&p.tool, &p.input)),
            PermissionNote::Answer { request, allow },
        ));
        let status = (retry && !in_turn).then_some(SessionStatus::Running);
        self.writer
            .append(&bodies, None, status)
            .await
            .map_err(|e| match e {
                ClientError::Api(api) => api,
                other => ApiError::new(ErrorCode::Internal, other.to_string()),
            })?;
        if retry {
            self.retries
                .push_back(approval::retry_prompt(&p.tool, &p.input));
            self.approved.push((p.tool, p.input));
        }
        Ok(())
    }

    async fn serve(&mut self, rx: &mut mpsc::Receiver<RunnerCmd>) -> Exit {
        loop {
            while let Some(prompt) = self.retries.pop_front() {
                match self.run_turn(&prompt, rx).await {
                    TurnEnd::Done => {}
                    TurnEnd::Exit(exit) => return exit,
                }
            }
            let pending: Vec<InputRecord> = match self
                .daemon
                .client
                .get(&format!(
                    "/v1/sessions/{}/inputs/pending?epoch={}",
                    self.session_id, self.writer.epoch
                ))
                .await
            {
                Ok(p) => p,
                Err(ClientError::Api(e)) if e.code == ErrorCode::StaleEpoch => {
                    return Exit::LostOwnership;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading the input queue failed");
                    Vec::new()
                }
            };
            for input in pending {
                match self.turn(input, rx).await {
                    TurnEnd::Done => {}
                    TurnEnd::Exit(exit) => return exit,
                }
            }
            let cmd = tokio::time::timeout(POLL_EVERY, rx.recv()).await;
            match cmd {
                Err(_) | Ok(Some(RunnerCmd::Wake)) => {}
                Ok(None) | Ok(Some(RunnerCmd::Stop)) => return Exit::Stopped,
                Ok(Some(RunnerCmd::Quiesce(done))) => {
                    self.quiesced = Some(done);
                    return Exit::Quiesced;
                }
                Ok(Some(RunnerCmd::Answer {
                    request,
                    sealed,
                    done,
                })) => {
                    let r = self.answer(request, &sealed, &mut None, false).await;
                    let _ = done.send(r);
                }
            }
        }
    }

    async fn turn(&mut self, input: InputRecord, rx: &mut mpsc::Receiver<RunnerCmd>) -> TurnEnd {
        let text = match self.cipher.open_input(&input) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "an input did not decrypt; recording the error");
                format!("(undecryptable message: {e})")
            }
        };
        let user = EntryBody {
            input_id: Some(input.id),
            ..EntryBody::new(EntryRole::User, text.clone())
        };
        match self
            .writer
            .append(&[user], Some(input.id), Some(SessionStatus::Running))
            .await
        {
            Ok(()) => {}
            Err(ClientError::Api(e)) => match e.code {
                ErrorCode::StaleEpoch => return TurnEnd::Exit(Exit::LostOwnership),
                // Already consumed (by our earlier life) or queued behind a handoff: skip it.
                ErrorCode::DuplicateInput | ErrorCode::HandingOff => return TurnEnd::Done,
                _ => {
                    tracing::error!(code = %e.code, "append refused");
                    return TurnEnd::Done;
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "append failed");
                return TurnEnd::Done;
            }
        }
        self.run_turn(&text, rx).await
    }

    /// Sends `text` to the agent and writes what it streams until the turn ends.
    async fn run_turn(&mut self, text: &str, rx: &mut mpsc::Receiver<RunnerCmd>) -> TurnEnd {
        let Some(agent) = self.agent.as_mut() else {
            return TurnEnd::Exit(Exit::ProviderGone);
        };
        if let Err(e) = agent.send_turn(text).await {
            let body = EntryBody {
                turn_end: true,
                ..error_entry(&format!("The provider did not take the message: {e}"))
            };
            let _ = self
                .writer
                .append(&[body], None, Some(SessionStatus::Stopped))
                .await;
            return TurnEnd::Exit(Exit::ProviderGone);
        }
        let mut held: Option<EntryBody> = None;
        let mut stop = false;
        let mut interrupt_at: Option<tokio::time::Instant> = None;
        loop {
            let step = {
                let Some(agent) = self.agent.as_mut() else {
                    return TurnEnd::Exit(Exit::ProviderGone);
                };
                let deadline = interrupt_at;
                // A turn that waits for a person cannot finish by itself: a handoff interrupts
                // it at once (its requests are asked again on the target).
                let waiting = self.open.iter().any(|p| p.provider_id.is_some());
                tokio::select! {
                    ev = agent.next_event() => Step::Event(ev),
                    cmd = rx.recv(), if self.quiesced.is_none() && !stop => {
                        match cmd {
                            Some(RunnerCmd::Quiesce(done)) => {
                                self.quiesced = Some(done);
                                let grace = if waiting { Duration::ZERO } else { self.daemon.quiesce_grace };
                                interrupt_at = Some(tokio::time::Instant::now() + grace);
                                Step::Nothing
                            }
                            Some(RunnerCmd::Stop) | None => {
                                stop = true;
                                interrupt_at = Some(tokio::time::Instant::now());
                                Step::Nothing
                            }
                            Some(RunnerCmd::Wake) => Step::Nothing,
                            Some(RunnerCmd::Answer { request, sealed, done }) => {
                                Step::Answer { request, sealed, done }
                            }
                        }
                    }
                    _ = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        interrupt_at = None;
                        if let Err(e) = agent.interrupt().await {
                            tracing::warn!(error = %e, "interrupt failed");
                        }
                        Step::Nothing
                    }
                }
            };
            let event = match step {
                Step::Event(ev) => ev,
                Step::Nothing => continue,
                Step::Answer {
                    request,
                    sealed,
                    done,
                } => {
                    let r = self.answer(request, &sealed, &mut held, true).await;
                    let lost = matches!(&r, Err(e) if e.code == ErrorCode::StaleEpoch);
                    let _ = done.send(r);
                    if lost {
                        return TurnEnd::Exit(Exit::LostOwnership);
                    }
                    continue;
                }
            };
            let next = match event {
                AgentEvent::SessionRef { provider_ref } => {
                    if let Err(e) = self.record_provider_ref(provider_ref).await {
                        if e.code() == Some(ErrorCode::StaleEpoch) {
                            return TurnEnd::Exit(Exit::LostOwnership);
                        }
                        tracing::error!(error = %e, "recording the provider's session id failed");
                    }
                    continue;
                }
                AgentEvent::User { .. } => continue,
                AgentEvent::PermissionRequest {
                    request_id,
                    tool,
                    input,
                } => {
                    if let Some(i) = self
                        .approved
                        .iter()
                        .position(|(t, v)| *t == tool && *v == input)
                    {
                        // The repeat of a call a person already approved.
                        self.approved.remove(i);
                        let answered = match self.agent.as_mut() {
                            Some(agent) => agent.answer_permission(&request_id, true).await,
                            None => return TurnEnd::Exit(Exit::ProviderGone),
                        };
                        if let Err(e) = answered {
                            tracing::warn!(error = %e, "approving the repeated call failed");
                        }
                        continue;
                    }
                    let mut bodies: Vec<EntryBody> = held.take().into_iter().collect();
                    bodies.push(permission_entry(
                        format!(
                            "{} asks to use {}",
                            self.provider,
                            approval::describe(&tool, &input)
                        ),
                        PermissionNote::Request {
                            tool: tool.clone(),
                            input: input.clone(),
                            reraises: None,
                        },
                    ));
                    if let Err(e) = self.writer.append(&bodies, None, None).await {
                        if e.code() == Some(ErrorCode::StaleEpoch) {
                            return TurnEnd::Exit(Exit::LostOwnership);
                        }
                        tracing::error!(error = %e, "append failed");
                        continue;
                    }
                    self.open.push(OpenRequest {
                        seq: self.writer.last_seq,
                        provider_id: Some(request_id),
                        tool,
                        input,
                    });
                    if self.quiesced.is_some() || stop {
                        interrupt_at = Some(tokio::time::Instant::now());
                    }
                    continue;
                }
                AgentEvent::Assistant { text } => EntryBody::new(EntryRole::Assistant, text),
                AgentEvent::ToolCall { name, input } => EntryBody {
                    data: Some(serde_json::json!({ "name": name, "input": input })),
                    ..EntryBody::new(EntryRole::ToolCall, name.clone())
                },
                AgentEvent::ToolResult { output } => EntryBody::new(EntryRole::ToolResult, output),
                AgentEvent::Error { message } => error_entry(&message),
                AgentEvent::TurnEnd { interrupted, .. } => {
                    let mut bodies: Vec<EntryBody> = held.take().into_iter().collect();
                    let leaving = self.quiesced.is_some() || stop;
                    let (live, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.open)
                        .into_iter()
                        .partition(|p| p.provider_id.is_some());
                    self.open = kept;
                    // Requests of a process that is going away stay open in the transcript, to
                    // be asked again by the next runner; the agent gave up on the others.
                    if !leaving {
                        for p in live {
                            bodies.push(permission_entry(
                                format!(
                                    "The request to use {} ended unanswered.",
                                    approval::describe(&p.tool, &p.input)
                                ),
                                PermissionNote::Closed { request: p.seq },
                            ));
                        }
                    }
                    if bodies.is_empty() {
                        let text = if interrupted {
                            "(the turn was interrupted)"
                        } else {
                            "(the turn ended without output)"
                        };
                        bodies.push(EntryBody::new(EntryRole::System, text));
                    }
                    if let Some(last) = bodies.last_mut() {
                        last.turn_end = true;
                    }
                    // An approved call to repeat starts the next turn right away.
                    let status = if self.retries.is_empty() || leaving {
                        SessionStatus::Idle
                    } else {
                        SessionStatus::Running
                    };
                    if let Err(e) = self.writer.append(&bodies, None, Some(status)).await {
                        if e.code() == Some(ErrorCode::StaleEpoch) {
                            return TurnEnd::Exit(Exit::LostOwnership);
                        }
                        tracing::error!(error = %e, "append failed");
                    }
                    if self.quiesced.is_some() {
                        return TurnEnd::Exit(Exit::Quiesced);
                    }
                    if stop {
                        return TurnEnd::Exit(Exit::Stopped);
                    }
                    return TurnEnd::Done;
                }
                AgentEvent::Exited { code, stderr_tail } => {
                    let mut bodies: Vec<EntryBody> = held.take().into_iter().collect();
                    let tail = stderr_tail.trim();
                    let msg = if tail.is_empty() {
                        format!("The provider exited (code {code:?}) in the middle of the turn.")
                    } else {
                        format!(
                            "The provider exited (code {code:?}) in the middle of the turn: {tail}"
                        )
                    };
                    bodies.push(EntryBody {
                        turn_end: true,
                        ..error_entry(&msg)
                    });
                    let _ = self
                        .writer
                        .append(&bodies, None, Some(SessionStatus::Stopped))
                        .await;
                    self.agent = None;
                    if self.quiesced.is_some() {
                        return TurnEnd::Exit(Exit::Quiesced);
                    }
                    return TurnEnd::Exit(Exit::ProviderGone);
                }
            };
            if let Some(prev) = held.replace(next)
                && let Err(e) = self.writer.append(&[prev], None, None).await
            {
                if e.code() == Some(ErrorCode::StaleEpoch) {
                    return TurnEnd::Exit(Exit::LostOwnership);
                }
                tracing::error!(error = %e, "append failed");
            }
        }
    }
}
