//! `GET /v1/transfers/{id}/ws?role=source|target`: the relay of workspace transfers (DESIGN §5).
//!
//! Each transfer has its own pair of WebSockets, apart from the daemons' control sockets, so
//! commands and pings never queue behind data. The server pairs the source's and the target's
//! socket of one transfer and pipes binary frames between them with backpressure: a reader awaits
//! room in the peer's queue ([`TRANSFER_QUEUE`] frames), so a slow target slows the source down
//! through TCP instead of growing a buffer here. A frame whose peer is not connected is dropped;
//! the target asks again after a reconnect. The server reads only each frame's two header bytes
//! (direction, byte count, end of transfer): the rest is ciphertext.
//!
//! Limits: a transfer larger than [`TransferLimits::max_bytes`] is refused in preflight
//! ([`TransferRegistry::check_transfer`]) and, should a source send more anyway, closed by the
//! relay; an account runs at most [`TransferLimits::max_concurrent`] transfers at once.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use baton_proto::transfer::{
    FrameKind, MAX_TRANSFER_FRAME, TransferNotice, TransferQuery, TransferRole, frame_kind,
};
use baton_proto::{AccountId, ApiError, ErrorCode, HandoffId, HandoffResult, MachineId};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiResult, ServerError};

/// Frames queued towards one side of a transfer; a reader waits for room rather than buffer more,
/// so the relay holds at most this many frames (each at most [`MAX_TRANSFER_FRAME`]) per side.
pub const TRANSFER_QUEUE: usize = 4;

/// Limits of workspace transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferLimits {
    /// Largest transfer, in bytes of workspace data.
    pub max_bytes: u64,
    /// Transfers one account may run at once.
    pub max_concurrent: usize,
    /// How long a transfer whose two sides both disconnected is remembered (its byte count and
    /// its place under `max_concurrent`), so a reconnect resumes it.
    pub linger: Duration,
    /// A transfer socket that sends nothing (not even a pong) this long is closed; the server
    /// pings each socket six times per period. Time spent waiting for the peer to take a frame
    /// does not count.
    pub idle_timeout: Duration,
}

impl TransferLimits {
    /// Default of `--transfer-max-bytes`: 16 GiB.
    pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024 * 1024;
    /// Default of `--transfer-max-concurrent`.
    pub const DEFAULT_MAX_CONCURRENT: usize = 2;
    /// Default linger: longer than a daemon's default reconnect timeout.
    pub const DEFAULT_LINGER: Duration = Duration::from_secs(120);
    /// Default idle timeout (pings every 10 s).
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

    /// Bytes the relay passes from a source before it closes the transfer: the cap plus an
    /// eighth, for frame and envelope overhead and chunks sent again after a reconnect.
    pub fn relay_limit(&self) -> u64 {
        self.max_bytes.saturating_add(self.max_bytes / 8)
    }
}

impl Default for TransferLimits {
    fn default() -> Self {
        Self {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_concurrent: Self::DEFAULT_MAX_CONCURRENT,
            linger: Self::DEFAULT_LINGER,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Whether one side is connected, as its peer sees it; `generation` changes at every (re)connect
/// so the peer learns of a new connection even when it missed the disconnect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Presence {
    connected: bool,
    generation: u64,
}

struct Side {
    conn: u64,
    /// This connection's presence generation (see [`Relayed::from`]).
    generation: u64,
    tx: mpsc::Sender<Relayed>,
    cancel: CancellationToken,
}

/// A frame on its way to the peer, with the presence generation of the connection that sent it:
/// the peer is told of that connection before the frame, and never gets a frame of a connection
/// older than the one it was last told of, so a side that voids its requests on a `Peer` notice
/// neither voids the new connection's first requests nor takes up the replaced one's.
struct Relayed {
    from: u64,
    frame: Bytes,
}

struct Slot {
    account: AccountId,
    /// Source, target.
    sides: [Option<Side>; 2],
    /// Presence of source, target.
    presence: [watch::Sender<Presence>; 2],
    failure: watch::Sender<Option<ApiError>>,
    /// Bytes relayed from the source.
    relayed: u64,
    /// The source acknowledged `done`.
    finished: bool,
    /// Bumped each time both sides are gone, so a stale linger timer does nothing.
    vacancy: u64,
}

impl Slot {
    fn new(account: AccountId) -> Self {
        Self {
            account,
            sides: [None, None],
            presence: [watch::Sender::default(), watch::Sender::default()],
            failure: watch::Sender::new(None),
            relayed: 0,
            finished: false,
            vacancy: 0,
        }
    }

    fn is_vacant(&self) -> bool {
        self.sides.iter().all(Option::is_none)
    }

    fn is_current(&self, role: TransferRole, conn: u64) -> bool {
        self.sides[idx(role)].as_ref().map(|s| s.conn) == Some(conn)
    }
}

fn idx(role: TransferRole) -> usize {
    match role {
        TransferRole::Source => 0,
        TransferRole::Target => 1,
    }
}

/// Machines allowed into a transfer that has no handoff row (yet).
#[derive(Clone, Copy, Debug)]
struct Allowed {
    account: AccountId,
    source: MachineId,
    target: MachineId,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<HandoffId, Slot>,
    allowed: HashMap<HandoffId, Allowed>,
}

/// The transfers in progress, their limits and who may join them.
pub struct TransferRegistry {
    limits: TransferLimits,
    inner: Arc<Mutex<Inner>>,
    next: AtomicU64,
}

/// What a connection holds once it joined.
struct Joined {
    conn: u64,
    rx: mpsc::Receiver<Relayed>,
    cancel: CancellationToken,
    peer: watch::Receiver<Presence>,
    failure: watch::Receiver<Option<ApiError>>,
    peer_connected: bool,
    /// The peer's presence generation that `peer_connected` describes.
    peer_generation: u64,
}

/// Where a received frame goes.
enum Route {
    /// To the peer's queue, or nowhere when the peer is away.
    Forward(Option<(mpsc::Sender<Relayed>, u64)>),
    /// This connection must stop (replaced, or the transfer failed).
    Stop(Option<ApiError>),
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves plain maps behind; keep serving.
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found(transfer: HandoffId) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("This machine takes no part in transfer {transfer}."),
    )
}

fn human(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{bytes} bytes")
    }
}

impl TransferRegistry {
    /// An empty registry enforcing `limits`.
    pub fn new(limits: TransferLimits) -> Self {
        Self {
            limits,
            inner: Arc::default(),
            next: AtomicU64::new(0),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> TransferLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Lets `source` and `target` of `account` join transfer `transfer` even without an active
    /// handoff row of that id (the coordinator may open a transfer before it records one).
    pub fn allow(
        &self,
        transfer: HandoffId,
        account: AccountId,
        source: MachineId,
        target: MachineId,
    ) {
        self.lock().allowed.insert(
            transfer,
            Allowed {
                account,
                source,
                target,
            },
        );
    }

    /// Ends a transfer: forgets its authorisation and closes both sides with a notice.
    pub fn finish(&self, transfer: HandoffId) {
        let mut inner = self.lock();
        inner.allowed.remove(&transfer);
        if let Some(slot) = inner.slots.remove(&transfer) {
            slot.failure.send_replace(Some(ApiError::new(
                ErrorCode::TransferFailed,
                "The server ended this transfer (its handoff is over).",
            )));
            for side in slot.sides.iter().flatten() {
                side.cancel.cancel();
            }
        }
    }

    /// Transfers of `account` that hold a place under the concurrency limit, except `except`.
    fn active_except(inner: &Inner, account: AccountId, except: HandoffId) -> usize {
        inner
            .slots
            .iter()
            .filter(|(id, s)| s.account == account && **id != except)
            .count()
    }

    /// Transfers `account` runs now (connected, or waiting for a side to reconnect).
    pub fn active(&self, account: AccountId) -> usize {
        self.lock()
            .slots
            .values()
            .filter(|s| s.account == account)
            .count()
    }

    fn busy(active: usize) -> ApiError {
        ApiError::new(
            ErrorCode::HandoffInProgress,
            format!(
                "This account already runs {active} workspace transfer(s), the server's limit (--transfer-max-concurrent)."
            ),
        )
    }

    /// Preflight: refuses a transfer of `bytes_total` bytes over the byte cap
    /// (`transfer_too_large`) or beyond the account's concurrent transfers (`handoff_in_progress`).
    /// `transfer` itself does not count against the concurrency limit, so a handoff may check
    /// again before its delta pass.
    pub fn check_transfer(
        &self,
        account: AccountId,
        transfer: HandoffId,
        bytes_total: u64,
    ) -> Result<(), ApiError> {
        if bytes_total > self.limits.max_bytes {
            return Err(ApiError::new(
                ErrorCode::TransferTooLarge,
                format!(
                    "The workspace needs {} to transfer; this server allows {} per transfer (--transfer-max-bytes).",
                    human(bytes_total),
                    human(self.limits.max_bytes)
                ),
            ));
        }
        let active = Self::active_except(&self.lock(), account, transfer);
        if active >= self.limits.max_concurrent {
            return Err(Self::busy(active));
        }
        Ok(())
    }

    /// Whether a connection could join now (checked before the upgrade, for a plain HTTP error).
    fn admit(&self, transfer: HandoffId, account: AccountId) -> Result<(), ApiError> {
        let inner = self.lock();
        match inner.slots.get(&transfer) {
            Some(slot) if slot.account != account => Err(not_found(transfer)),
            Some(slot) => match slot.failure.borrow().clone() {
                Some(e) => Err(e),
                None => Ok(()),
            },
            None => {
                let active = Self::active_except(&inner, account, transfer);
                if active >= self.limits.max_concurrent {
                    Err(Self::busy(active))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The machines allowed by [`TransferRegistry::allow`], if any.
    fn allowed(&self, transfer: HandoffId) -> Option<Allowed> {
        self.lock().allowed.get(&transfer).copied()
    }

    /// Registers a connection as `role` of `transfer`, replacing an older connection of that
    /// role (a reconnect whose old socket is not yet known dead).
    fn join(
        &self,
        transfer: HandoffId,
        account: AccountId,
        role: TransferRole,
    ) -> Result<Joined, ApiError> {
        let conn = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut inner = self.lock();
        let active = Self::active_except(&inner, account, transfer);
        let slot = match inner.slots.entry(transfer) {
            Entry::Occupied(e) => {
                let slot = e.into_mut();
                if slot.account != account {
                    return Err(not_found(transfer));
                }
                if let Some(e) = slot.failure.borrow().clone() {
                    return Err(e);
                }
                slot
            }
            Entry::Vacant(e) => {
                if active >= self.limits.max_concurrent {
                    return Err(Self::busy(active));
                }
                e.insert(Slot::new(account))
            }
        };
        let (tx, rx) = mpsc::channel(TRANSFER_QUEUE);
        let cancel = CancellationToken::new();
        slot.presence[idx(role)].send_modify(|p| {
            p.connected = true;
            p.generation += 1;
        });
        let generation = slot.presence[idx(role)].borrow().generation;
        if let Some(old) = slot.sides[idx(role)].replace(Side {
            conn,
            generation,
            tx,
            cancel: cancel.clone(),
        }) {
            old.cancel.cancel();
        }
        let peer = idx(role.peer());
        let subscribed = slot.presence[peer].subscribe();
        let peer_generation = subscribed.borrow().generation;
        Ok(Joined {
            peer_generation,
            conn,
            rx,
            cancel,
            peer: subscribed,
            failure: slot.failure.subscribe(),
            peer_connected: slot.sides[peer].is_some(),
        })
    }

    /// Accounts for a frame of `len` bytes and `kind` from `role`, and says where it goes.
    fn route(
        &self,
        transfer: HandoffId,
        conn: u64,
        role: TransferRole,
        len: usize,
        kind: FrameKind,
    ) -> Route {
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get_mut(&transfer) else {
            return Route::Stop(None);
        };
        if !slot.is_current(role, conn) {
            return Route::Stop(None);
        }
        if let Some(e) = slot.failure.borrow().clone() {
            return Route::Stop(Some(e));
        }
        if role == TransferRole::Source {
            slot.relayed = slot.relayed.saturating_add(len as u64);
            if slot.relayed > self.limits.relay_limit() {
                let e = ApiError::new(
                    ErrorCode::TransferTooLarge,
                    format!(
                        "The source sent more than this server allows per transfer ({}, --transfer-max-bytes).",
                        human(self.limits.max_bytes)
                    ),
                );
                tracing::warn!(%transfer, relayed = slot.relayed, "transfer over its byte cap; closing");
                slot.failure.send_replace(Some(e.clone()));
                return Route::Stop(Some(e));
            }
            if kind == FrameKind::DoneAck {
                slot.finished = true;
            }
        }
        let from = slot.sides[idx(role)].as_ref().map_or(0, |me| me.generation);
        Route::Forward(
            slot.sides[idx(role.peer())]
                .as_ref()
                .map(|side| (side.tx.clone(), from)),
        )
    }

    /// Unregisters a connection (unless a newer one replaced it) and tells the peer. A finished
    /// transfer is forgotten once both sides left; another one lingers so a reconnect resumes it.
    fn leave(&self, transfer: HandoffId, conn: u64, role: TransferRole) {
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get_mut(&transfer) else {
            return;
        };
        if !slot.is_current(role, conn) {
            return;
        }
        slot.sides[idx(role)] = None;
        slot.presence[idx(role)].send_modify(|p| {
            p.connected = false;
            p.generation += 1;
        });
        if !slot.is_vacant() {
            return;
        }
        if slot.finished {
            inner.slots.remove(&transfer);
            return;
        }
        slot.vacancy += 1;
        let vacancy = slot.vacancy;
        let registry = Arc::downgrade(&self.inner);
        let linger = self.limits.linger;
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            let Some(registry) = registry.upgrade() else {
                return;
            };
            let mut inner = lock(&registry);
            if inner
                .slots
                .get(&transfer)
                .is_some_and(|s| s.is_vacant() && s.vacancy == vacancy)
            {
                tracing::debug!(%transfer, "forgetting an abandoned transfer");
                inner.slots.remove(&transfer);
            }
        });
    }

    /// Capacity of the queue towards `role` of `transfer` while it is connected (for tests that
    /// check the relay cannot buffer without bound).
    pub fn queue_capacity(&self, transfer: HandoffId, role: TransferRole) -> Option<usize> {
        self.lock()
            .slots
            .get(&transfer)
            .and_then(|s| s.sides[idx(role)].as_ref())
            .map(|side| side.tx.max_capacity())
    }

    /// Frames waiting in the queue towards `role` of `transfer` while it is connected (for tests
    /// that need the relay in a known state).
    pub fn queued(&self, transfer: HandoffId, role: TransferRole) -> Option<usize> {
        self.lock()
            .slots
            .get(&transfer)
            .and_then(|s| s.sides[idx(role)].as_ref())
            .map(|side| side.tx.max_capacity() - side.tx.capacity())
    }
}

/// Checks that the caller is `role` of `transfer`: the source (`from`) or target (`to`) of an
/// active handoff of its account with workspace transfer on, or a machine the coordinator
/// allowed.
async fn authorize(
    state: &AppState,
    caller: &Caller,
    transfer: HandoffId,
    role: TransferRole,
) -> ApiResult<()> {
    let (source, target) = match state.transfers.allowed(transfer) {
        Some(a) if a.account == caller.account => (a.source, a.target),
        Some(_) => return Err(not_found(transfer).into()),
        None => {
            let handoff = state
                .store
                .handoff(caller.account, transfer)
                .await?
                .ok_or_else(|| not_found(transfer))?;
            if handoff.result != HandoffResult::Active || !handoff.options.workspace {
                return Err(ServerError::new(
                    ErrorCode::NotFound,
                    format!("Handoff {transfer} is over or moves no workspace."),
                ));
            }
            (handoff.from, handoff.to)
        }
    };
    let expected = match role {
        TransferRole::Source => source,
        TransferRole::Target => target,
    };
    if caller.machine != expected {
        return Err(not_found(transfer).into());
    }
    Ok(())
}

/// Upgrades an authenticated request of one side of a transfer to its WebSocket.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(transfer): Path<HandoffId>,
    Query(query): Query<TransferQuery>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    authorize(&state, &caller, transfer, query.role).await?;
    state.transfers.admit(transfer, caller.account)?;
    let role = query.role;
    Ok(ws
        .max_message_size(MAX_TRANSFER_FRAME)
        .max_frame_size(MAX_TRANSFER_FRAME)
        .on_upgrade(move |socket| connection(state, caller, transfer, role, socket)))
}

async fn notice(
    sink: &mut SplitSink<WebSocket, Message>,
    notice: &TransferNotice,
) -> Result<(), axum::Error> {
    let text = serde_json::to_string(notice).expect("notices serialise: plain fields only");
    sink.send(Message::Text(text.into())).await
}

fn bad_frame(what: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::BadRequest,
        format!("The transfer socket received an invalid frame: {what}."),
    )
}

async fn connection(
    state: Arc<AppState>,
    caller: Caller,
    transfer: HandoffId,
    role: TransferRole,
    socket: WebSocket,
) {
    let (mut sink, mut stream) = socket.split();
    let idle = state
        .transfers
        .limits()
        .idle_timeout
        .max(Duration::from_millis(60));
    let joined = match state.transfers.join(transfer, caller.account, role) {
        Ok(j) => j,
        Err(error) => {
            let _ = notice(&mut sink, &TransferNotice::Closed { error }).await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let Joined {
        conn,
        mut rx,
        cancel,
        mut peer,
        mut failure,
        peer_connected,
        peer_generation,
    } = joined;
    tracing::debug!(%transfer, machine = %caller.machine, role = role.as_str(), "transfer side joined");
    if notice(
        &mut sink,
        &TransferNotice::Joined {
            peer: peer_connected,
        },
    )
    .await
    .is_err()
    {
        state.transfers.leave(transfer, conn, role);
        return;
    }

    let writer = async {
        let mut ping = tokio::time::interval(idle / 6);
        ping.tick().await;
        // The peer's presence generation this side was last told of.
        let mut told = peer_generation;
        loop {
            // Biased: a frame relayed before the peer's presence changed reaches this side
            // before the notice, so a target that re-asks on `Peer` has already seen it. A frame
            // from a newer peer connection is preceded by that connection's notice instead.
            tokio::select! {
                biased;
                changed = failure.changed() => {
                    // Closed channel: the transfer was forgotten; stop quietly.
                    return changed.ok().and_then(|_| failure.borrow().clone());
                }
                relayed = rx.recv() => {
                    let Relayed { from, frame } = relayed?;
                    if from < told {
                        // Queued by a connection the peer has since replaced, after this side
                        // was told of the new one: void, like everything that connection asked.
                        continue;
                    }
                    if from > told {
                        told = from;
                        let connected = &TransferNotice::Peer { connected: true };
                        if notice(&mut sink, connected).await.is_err() {
                            return None;
                        }
                    }
                    if sink.send(Message::Binary(frame)).await.is_err() {
                        return None;
                    }
                }
                changed = peer.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let now = *peer.borrow_and_update();
                    if now.generation > told {
                        told = now.generation;
                        let presence = &TransferNotice::Peer { connected: now.connected };
                        if notice(&mut sink, presence).await.is_err() {
                            return None;
                        }
                    }
                }
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                        return None;
                    }
                }
            }
        }
    };

    let reader = async {
        loop {
            let msg = match tokio::time::timeout(idle, stream.next()).await {
                Err(_) => {
                    tracing::info!(%transfer, role = role.as_str(), "transfer socket silent too long; closing");
                    return None;
                }
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(msg))) => msg,
            };
            let frame = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => return None,
                _ => continue,
            };
            let kind = match frame_kind(&frame) {
                Ok(kind) if kind.allowed_from(role) => kind,
                Ok(kind) => {
                    return Some(bad_frame(format_args!(
                        "{kind:?} may not come from the {}",
                        role.as_str()
                    )));
                }
                Err(e) => return Some(bad_frame(e)),
            };
            match state
                .transfers
                .route(transfer, conn, role, frame.len(), kind)
            {
                Route::Forward(Some((tx, from))) => {
                    // Waiting here is the backpressure; an error means the peer left meanwhile
                    // and the frame is dropped (the target asks again).
                    let _ = tx.send(Relayed { from, frame }).await;
                }
                Route::Forward(None) => {}
                Route::Stop(error) => return error,
            }
        }
    };

    let outcome = tokio::select! {
        e = writer => e,
        e = reader => e,
        _ = cancel.cancelled() => None,
    };
    let outcome = outcome.or_else(|| failure.borrow().clone());
    if let Some(error) = outcome {
        tracing::info!(%transfer, role = role.as_str(), code = %error.code, "closing a transfer socket");
        let _ = notice(&mut sink, &TransferNotice::Closed { error }).await;
    }
    let _ = sink.send(Message::Close(None)).await;
    state.transfers.leave(transfer, conn, role);
    tracing::debug!(%transfer, role = role.as_str(), "transfer side left");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max_concurrent: usize) -> TransferRegistry {
        TransferRegistry::new(TransferLimits {
            max_bytes: 1000,
            max_concurrent,
            linger: Duration::from_millis(50),
            ..TransferLimits::default()
        })
    }

    #[test]
    fn check_refuses_over_the_byte_cap() {
        let r = registry(2);
        let account = AccountId::new();
        assert!(r.check_transfer(account, HandoffId::new(), 1000).is_ok());
        let e = r
            .check_transfer(account, HandoffId::new(), 1001)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::TransferTooLarge);
        assert!(e.message.contains("--transfer-max-bytes"), "{}", e.message);
    }

    #[tokio::test]
    async fn concurrency_is_per_account_and_excludes_the_same_transfer() {
        let r = registry(1);
        let (a, b) = (AccountId::new(), AccountId::new());
        let t1 = HandoffId::new();
        let j = r.join(t1, a, TransferRole::Source).unwrap();
        assert_eq!(r.active(a), 1);
        // The same transfer may check again and its other side may join.
        assert!(r.check_transfer(a, t1, 10).is_ok());
        let _t = r.join(t1, a, TransferRole::Target).unwrap();
        // Another transfer of the same account is refused; another account is not.
        let t2 = HandoffId::new();
        let e = r.check_transfer(a, t2, 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::HandoffInProgress);
        assert!(r.join(t2, a, TransferRole::Source).is_err());
        assert!(r.admit(t2, a).is_err());
        assert!(r.join(HandoffId::new(), b, TransferRole::Source).is_ok());
        // Another account cannot join t1.
        assert_eq!(
            r.join(t1, b, TransferRole::Target).err().map(|e| e.code),
            Some(ErrorCode::NotFound)
        );
        drop(j);
    }

    #[tokio::test]
    async fn queues_are_bounded() {
        let r = registry(2);
        let t = HandoffId::new();
        let _j = r.join(t, AccountId::new(), TransferRole::Target).unwrap();
        assert_eq!(
            r.queue_capacity(t, TransferRole::Target),
            Some(TRANSFER_QUEUE)
        );
        const { assert!(TRANSFER_QUEUE <= 8) };
    }

    #[tokio::test]
    async fn relay_counts_source_bytes_and_fails_over_the_limit() {
        let r = registry(2);
        let account = AccountId::new();
        let t = HandoffId::new();
        let s = r.join(t, account, TransferRole::Source).unwrap();
        let tg = r.join(t, account, TransferRole::Target).unwrap();
        let limit = r.limits().relay_limit() as usize;
        assert!(matches!(
            r.route(t, s.conn, TransferRole::Source, limit, FrameKind::Chunks),
            Route::Forward(Some(_))
        ));
        // Target frames do not count.
        assert!(matches!(
            r.route(t, tg.conn, TransferRole::Target, 10_000, FrameKind::Want),
            Route::Forward(Some(_))
        ));
        match r.route(t, s.conn, TransferRole::Source, 1, FrameKind::Chunks) {
            Route::Stop(Some(e)) => assert_eq!(e.code, ErrorCode::TransferTooLarge),
            _ => panic!("expected a stop"),
        }
        assert!(tg.failure.borrow().is_some());
        // A failed transfer refuses reconnects.
        assert!(r.join(t, account, TransferRole::Source).is_err());
    }

    #[tokio::test]
    async fn replaced_side_stops_and_peer_sees_a_new_generation() {
        let r = registry(2);
        let account = AccountId::new();
        let t = HandoffId::new();
        let mut target = r.join(t, account, TransferRole::Target).unwrap();
        assert!(!target.peer_connected);
        let old = r.join(t, account, TransferRole::Source).unwrap();
        assert!(target.peer.has_changed().unwrap());
        let first = target.peer.borrow_and_update().generation;
        let new = r.join(t, account, TransferRole::Source).unwrap();
        assert!(old.cancel.is_cancelled());
        assert!(new.peer_connected);
        assert!(target.peer.borrow_and_update().generation > first);
        assert!(matches!(
            r.route(t, old.conn, TransferRole::Source, 1, FrameKind::Chunks),
            Route::Stop(None)
        ));
        // The old connection leaving does not unregister the new one.
        r.leave(t, old.conn, TransferRole::Source);
        assert!(r.queue_capacity(t, TransferRole::Source).is_some());
    }

    #[tokio::test]
    async fn finished_transfer_is_forgotten_and_abandoned_one_lingers() {
        let r = registry(1);
        let account = AccountId::new();
        let done = HandoffId::new();
        let s = r.join(done, account, TransferRole::Source).unwrap();
        let tg = r.join(done, account, TransferRole::Target).unwrap();
        let _ = r.route(done, s.conn, TransferRole::Source, 2, FrameKind::DoneAck);
        r.leave(done, s.conn, TransferRole::Source);
        r.leave(done, tg.conn, TransferRole::Target);
        assert_eq!(r.active(account), 0);

        let abandoned = HandoffId::new();
        let s = r.join(abandoned, account, TransferRole::Source).unwrap();
        r.leave(abandoned, s.conn, TransferRole::Source);
        assert_eq!(r.active(account), 1, "kept for a reconnect");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(r.active(account), 0, "forgotten after the linger");
    }

    #[tokio::test]
    async fn finish_closes_both_sides_with_a_notice() {
        let r = registry(2);
        let account = AccountId::new();
        let t = HandoffId::new();
        r.allow(t, account, MachineId::new(), MachineId::new());
        assert!(r.allowed(t).is_some());
        let s = r.join(t, account, TransferRole::Source).unwrap();
        r.finish(t);
        assert!(r.allowed(t).is_none());
        assert!(s.cancel.is_cancelled());
        assert_eq!(
            s.failure.borrow().as_ref().map(|e| e.code),
            Some(ErrorCode::TransferFailed)
        );
        assert_eq!(r.active(account), 0);
    }
}
