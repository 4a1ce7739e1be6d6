//! The Baton daemon: keeps this machine online with the server, runs the sessions this machine
//! owns through provider adapters, and plays the source and target roles of handoffs.
//!
//! It never sends plaintext to the server: transcript entries, metadata and provider state are
//! sealed here with the session's data key before they leave. It runs a provider only for a
//! session it owns at the current epoch, and stops it as soon as it learns otherwise.

pub mod client;
pub mod identity;
mod library;
mod participant;
pub mod runner;
pub mod transfer;
mod workspace;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::ws::{ClientFrame, ConnRole, DaemonCommand, DaemonReply, Event, ServerFrame};
use baton_proto::{
    ApiError, AuthState, ErrorCode, HandoffId, MachineId, PROTOCOL_VERSION, ProviderInfo, Sealed,
    ServiceRecord, ServiceSecret, SessionId, SessionMode, SessionRecord, SessionStatus,
};
use baton_providers::{Provider, ProviderEnv};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use client::{Client, ClientError};
use identity::Identity;
use runner::{RunnerCmd, RunnerHandle};

/// How long the daemon waits between reconnect attempts, at most.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(5);
/// The server pings every 10 s; silence this long means the connection is dead.
const SERVER_SILENCE: Duration = Duration::from_secs(35);
/// How long an answer to a permission request may wait for the session's runner.
const ANSWER_WAIT: Duration = Duration::from_secs(20);
/// How often provider detection is refreshed (logins and installs change).
const REDETECT_EVERY: Duration = Duration::from_secs(60);

/// How to run a daemon.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Baton's config/key directory.
    pub baton_home: PathBuf,
    /// The user's home (provider state lives under it).
    pub home: PathBuf,
    /// Longest wait between reconnects.
    pub backoff_cap: Duration,
    /// How long a handoff lets the running turn finish before interrupting it.
    pub quiesce_grace: Duration,
    /// Configured provider programs (`--provider-bin claude=/opt/claude/bin/claude`); others
    /// are looked up on `PATH`.
    pub programs: Vec<(String, PathBuf)>,
}

/// Errors that stop the daemon before it runs.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The identity is missing or broken.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
}

struct Slot {
    handle: RunnerHandle,
    stopping: bool,
}

/// Where a session's provider state was on this machine when it left as a handoff's source.
#[derive(Clone, Debug)]
struct SourceState {
    provider: String,
    provider_ref: String,
    workspace: PathBuf,
}

/// A running daemon.
pub struct Daemon {
    /// Server client.
    pub client: Client,
    machine: MachineId,
    baton_home: PathBuf,
    /// The user's home: a workspace may never be it (nor `/`).
    home: PathBuf,
    providers: Vec<Box<dyn Provider>>,
    runners: Mutex<HashMap<SessionId, Slot>>,
    sources: Mutex<HashMap<HandoffId, SourceState>>,
    /// Workspace transfers of handoffs in progress, as source or target.
    workspaces: workspace::Workspaces,
    quiesce_grace: Duration,
    /// Connected services of the account: provider name → environment for its CLI.
    services: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Closes the control connection when notified (test hook, see
    /// [`workspace::DROP_CONTROL_VAR`]); the daemon then reconnects as after any loss.
    control_drop: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Daemon {
    /// Builds a daemon from the identity in `opts.baton_home`.
    pub fn new(opts: &DaemonOptions) -> Result<Arc<Self>, DaemonError> {
        let identity = Arc::new(Identity::load(&opts.baton_home)?);
        let client = Client::new(identity.clone(), Some(opts.baton_home.clone()))?;
        let env = ProviderEnv {
            home: opts.home.clone(),
            extra_env: Vec::new(),
            programs: opts.programs.clone(),
        };
        let d = Arc::new(Self {
            client,
            machine: identity.config.machine_id,
            baton_home: opts.baton_home.clone(),
            home: opts.home.clone(),
            providers: baton_providers::all(&env),
            runners: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            workspaces: workspace::Workspaces::default(),
            quiesce_grace: opts.quiesce_grace,
            services: Mutex::new(HashMap::new()),
            control_drop: tokio::sync::Notify::new(),
        });
        Ok(d)
    }

    /// This machine's id.
    pub fn machine_id(&self) -> MachineId {
        self.machine
    }

    /// Every provider adapter.
    pub fn providers(&self) -> impl Iterator<Item = &dyn Provider> {
        self.providers.iter().map(|p| p.as_ref())
    }

    /// The adapter for a provider name.
    pub fn provider(&self, name: &str) -> Option<&dyn Provider> {
        self.providers
            .iter()
            .find(|p| p.name() == name)
            .map(|p| p.as_ref())
    }

    /// Detects every provider.
    pub async fn detect_all(&self) -> Vec<ProviderInfo> {
        // Concurrently: each probe runs a CLI (OpenCode's `--version` alone takes seconds), and
        // the daemon says hello only once all have answered.
        futures_util::future::join_all(self.providers.iter().map(|p| self.detect(p.as_ref()))).await
    }

    /// Detects one provider; a connected service of the account counts as its login, since the
    /// daemon passes that credential to every process it starts.
    pub async fn detect(&self, provider: &dyn Provider) -> ProviderInfo {
        let mut info = provider.detect().await;
        if info.installed && lock(&self.services).contains_key(provider.name()) {
            info.auth = AuthState::ConnectedService;
        }
        info
    }

    /// The environment a connected service adds to `provider`'s processes (empty without one).
    pub fn service_env(&self, provider: &str) -> Vec<(String, String)> {
        lock(&self.services)
            .get(provider)
            .cloned()
            .unwrap_or_default()
    }

    /// Fetches and opens the account's connected services. A service that does not open (sealed
    /// by another account secret, corrupt) is skipped with a warning rather than failing all.
    async fn refresh_services(&self) -> Result<(), ClientError> {
        let records: Vec<ServiceRecord> = self.client.get("/v1/services").await?;
        let secret = &self.client.identity().secret;
        let mut map = HashMap::new();
        for r in records {
            match secret.open_record::<ServiceSecret>("service", &r.provider, &r.sealed) {
                Ok(s) => {
                    map.insert(r.provider, s.env);
                }
                Err(e) => {
                    tracing::warn!(provider = %r.provider, error = %e, "a connected service does not open; ignored")
                }
            }
        }
        *lock(&self.services) = map;
        Ok(())
    }

    /// Where workspace scans are kept on disk (unlinked files: nothing stays once let go).
    fn scan_dir(&self) -> PathBuf {
        self.baton_home.join("scans")
    }

    /// Staging directory of a handoff on this machine.
    fn handoff_dir(&self, id: HandoffId) -> PathBuf {
        self.baton_home.join("handoffs").join(id.to_string())
    }

    /// Called by a runner when it ends: frees its slot and reconciles against the server's
    /// current record (not the cache, which may lag), so a session resumed while its runner was
    /// stopping gets a fresh runner and a session whose provider died stays stopped.
    fn runner_ended(self: &Arc<Self>, id: SessionId, epoch: u64) {
        {
            let mut runners = lock(&self.runners);
            if runners.get(&id).map(|s| s.handle.epoch) == Some(epoch) {
                runners.remove(&id);
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            match me
                .client
                .get::<SessionRecord>(&format!("/v1/sessions/{id}"))
                .await
            {
                Ok(s) => me.reconcile(s),
                Err(e) => {
                    tracing::debug!(error = %e, "re-reading the session after its runner ended failed")
                }
            }
        });
    }

    fn spawn_runner(
        self: &Arc<Self>,
        session: SessionRecord,
        ready: Option<oneshot::Sender<Result<(), ClientError>>>,
    ) {
        let id = session.id;
        let handle = runner::spawn(self.clone(), session, ready);
        lock(&self.runners).insert(
            id,
            Slot {
                handle,
                stopping: false,
            },
        );
    }

    /// Brings local runners in line with a session record: run it iff this machine owns it at
    /// its epoch, it is idle or running, and no handoff is moving it here (activation starts it).
    fn reconcile(self: &Arc<Self>, session: SessionRecord) {
        let mine = session.owner == self.machine;
        let mut runners = lock(&self.runners);
        if let Some(slot) = runners.get_mut(&session.id) {
            if slot.stopping {
                return;
            }
            let keep = mine
                && slot.handle.epoch == session.epoch
                && matches!(
                    session.status,
                    SessionStatus::Idle | SessionStatus::Running | SessionStatus::HandingOff
                );
            if keep {
                let _ = slot.handle.tx.try_send(RunnerCmd::Wake);
            } else if session.status != SessionStatus::HandingOff || !mine {
                tracing::info!(session_id = %session.id, owner_is_me = mine, status = session.status.as_str(), "stopping the session's provider here");
                slot.stopping = true;
                let _ = slot.handle.tx.try_send(RunnerCmd::Stop);
            }
            return;
        }
        drop(runners);
        // A Direct session's conversation is driven from the provider's own tools; Baton only
        // reads it (and moves it in a handoff), so no runner serves it.
        if mine
            && session.mode == SessionMode::Synced
            && matches!(session.status, SessionStatus::Idle | SessionStatus::Running)
            && session.active_handoff.is_none()
        {
            self.spawn_runner(session, None);
        }
    }

    /// Passes a person's answer to the runner of `session`, which owns the open requests.
    async fn answer_permission(
        &self,
        session: SessionId,
        request: u64,
        sealed: Sealed,
    ) -> Result<DaemonReply, ApiError> {
        let not_running = || {
            ApiError::new(
                ErrorCode::PermissionNotOpen,
                "No agent runs this session here; an open request is asked again when it resumes (send a message).",
            )
        };
        let tx = lock(&self.runners)
            .get(&session)
            .filter(|s| !s.stopping)
            .map(|s| s.handle.tx.clone())
            .ok_or_else(not_running)?;
        let (done, answered) = oneshot::channel();
        tx.send(RunnerCmd::Answer {
            request,
            sealed,
            done,
        })
        .await
        .map_err(|_| not_running())?;
        match tokio::time::timeout(ANSWER_WAIT, answered).await {
            Ok(Ok(r)) => r.map(|()| DaemonReply::Ok),
            Ok(Err(_)) => Err(not_running()),
            Err(_) => Err(ApiError::new(
                ErrorCode::Timeout,
                "The session's runner did not take the answer in time.",
            )),
        }
    }

    fn wake(&self, id: SessionId) {
        if let Some(slot) = lock(&self.runners).get(&id) {
            let _ = slot.handle.tx.try_send(RunnerCmd::Wake);
        }
    }

    async fn reconcile_all(self: &Arc<Self>) -> Result<(), ClientError> {
        let sessions: Vec<SessionRecord> = self.client.get("/v1/sessions").await?;
        let ids: Vec<SessionId> = sessions.iter().map(|s| s.id).collect();
        for s in sessions {
            self.reconcile(s);
        }
        // Runners of sessions the server no longer lists are stale.
        let stale: Vec<SessionId> = lock(&self.runners)
            .keys()
            .filter(|id| !ids.contains(id))
            .copied()
            .collect();
        for id in stale {
            if let Some(slot) = lock(&self.runners).get_mut(&id) {
                slot.stopping = true;
                let _ = slot.handle.tx.try_send(RunnerCmd::Stop);
            }
        }
        Ok(())
    }

    /// One connection's life: hello, subscribe, reconcile, then serve events and commands until
    /// the socket ends or `shutdown` fires. `Ok(true)` when the connection had been established.
    async fn connect_and_serve(
        self: &Arc<Self>,
        shutdown: &CancellationToken,
    ) -> Result<bool, ClientError> {
        if let Err(e) = self.refresh_services().await {
            tracing::warn!(error = %e, "reading connected services failed");
        }
        let mut providers = self.detect_all().await;
        let ws = self.client.connect_ws().await?;
        let (mut sink, mut stream) = ws.split();
        let send = |f: &ClientFrame| -> Message {
            Message::Text(serde_json::to_string(f).unwrap_or_default().into())
        };
        let net = |e: tokio_tungstenite::tungstenite::Error| ClientError::Unreachable {
            url: self.client.server().to_string(),
            detail: e.to_string(),
        };
        sink.send(send(&ClientFrame::Hello {
            role: ConnRole::Daemon,
            protocol: PROTOCOL_VERSION,
            providers: providers.clone(),
        }))
        .await
        .map_err(net)?;
        sink.send(send(&ClientFrame::Subscribe {
            session_id: None,
            entries: false,
        }))
        .await
        .map_err(net)?;
        tracing::info!(server = self.client.server(), "connected");
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = participant::recover_staging(&me).await {
                tracing::warn!(error = %e, "recovering handoff staging failed");
            }
            if let Err(e) = me.reconcile_all().await {
                tracing::warn!(error = %e, "reconciling sessions failed");
            }
        });
        let (out_tx, mut out_rx) = mpsc::channel::<ClientFrame>(256);
        let mut redetect = tokio::time::interval(REDETECT_EVERY);
        redetect.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(true);
                }
                _ = self.control_drop.notified() => {
                    tracing::warn!("{} set: dropping the control connection", workspace::DROP_CONTROL_VAR);
                    return Ok(true);
                }
                msg = tokio::time::timeout(SERVER_SILENCE, stream.next()) => {
                    let msg = match msg {
                        Err(_) => {
                            tracing::warn!("the server went silent; reconnecting");
                            return Ok(true);
                        }
                        Ok(None) => return Ok(true),
                        Ok(Some(Err(e))) => {
                            tracing::warn!(error = %e, "connection lost");
                            return Ok(true);
                        }
                        Ok(Some(Ok(m))) => m,
                    };
                    let Message::Text(text) = msg else { continue };
                    let frame: ServerFrame = match serde_json::from_str(&text) {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable frame ignored");
                            continue;
                        }
                    };
                    match frame {
                        ServerFrame::Welcome { .. } => {}
                        ServerFrame::Event { event: Event::ServicesChanged } => {
                            if let Err(e) = self.refresh_services().await {
                                tracing::warn!(error = %e, "reading connected services failed");
                            }
                            providers = self.detect_all().await;
                            sink.send(send(&ClientFrame::Capabilities { providers: providers.clone() }))
                                .await
                                .map_err(net)?;
                        }
                        ServerFrame::Event { event } => self.on_event(event),
                        ServerFrame::Command { id, command } => {
                            let me = self.clone();
                            let out = out_tx.clone();
                            tokio::spawn(async move {
                                let result = match command {
                                    DaemonCommand::ListProviderSessions { .. }
                                    | DaemonCommand::ReadTranscript { .. } => library::handle(&me, command).await,
                                    DaemonCommand::AnswerPermission { session_id, request, sealed } => {
                                        me.answer_permission(session_id, request, sealed).await
                                    }
                                    _ => participant::handle(&me, command).await,
                                };
                                let _ = out.send(ClientFrame::Reply { id, result }).await;
                            });
                        }
                    }
                }
                frame = out_rx.recv() => {
                    if let Some(frame) = frame {
                        sink.send(send(&frame)).await.map_err(net)?;
                    }
                }
                _ = redetect.tick() => {
                    let now = self.detect_all().await;
                    if now != providers {
                        providers = now;
                        sink.send(send(&ClientFrame::Capabilities { providers: providers.clone() }))
                            .await
                            .map_err(net)?;
                    }
                }
            }
        }
    }

    fn on_event(self: &Arc<Self>, event: Event) {
        match event {
            Event::SessionChanged { session } => self.reconcile(session),
            Event::InputQueued { input } => self.wake(input.session_id),
            _ => {}
        }
    }

    /// Stops every runner (and so every provider process) and waits for them.
    async fn stop_all(&self) {
        let txs: Vec<_> = lock(&self.runners)
            .values_mut()
            .map(|s| {
                s.stopping = true;
                s.handle.tx.clone()
            })
            .collect();
        for tx in txs {
            let _ = tx.send(RunnerCmd::Stop).await;
        }
        for _ in 0..100 {
            if lock(&self.runners).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs the daemon until `shutdown` fires: connects, and after any failure (server down, DNS,
/// sleep) reconnects with capped exponential backoff, forever.
pub async fn run(opts: DaemonOptions, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let daemon = Daemon::new(&opts)?;
    tracing::info!(machine = %daemon.machine, name = %daemon.client.identity().config.name, "daemon starting");
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match daemon.connect_and_serve(&shutdown).await {
            Ok(_) => backoff = Duration::from_millis(200),
            Err(e) => tracing::warn!(error = %e, "cannot connect to the server"),
        }
        if shutdown.is_cancelled() {
            break;
        }
        // Jitter spreads the reconnects of many daemons after a server restart.
        let jitter = Duration::from_millis(u64::from(std::process::id() % 97));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(opts.backoff_cap);
    }
    daemon.stop_all().await;
    tracing::info!("daemon stopped");
    Ok(())
}
