//! The hub: every open WebSocket, which machines are online, event fan-out to subscribers, and
//! request/response commands to daemons.
//!
//! Fan-out never blocks: each connection has a bounded queue, and a connection whose queue is full
//! is dropped (its client reconnects and re-reads), so one slow watcher cannot stall the server.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_proto::ws::{ConnRole, DaemonCommand, DaemonReply, Event, ServerFrame};
use baton_proto::{AccountId, ApiError, ErrorCode, MachineId, SessionId};
use tokio::sync::{mpsc, oneshot};

/// Capacity of one connection's outgoing queue.
pub const CONN_QUEUE: usize = 4096;

/// Identifies one WebSocket connection.
pub type ConnId = u64;

/// What one connection subscribed to.
#[derive(Clone, Debug, Default)]
struct Subscription {
    /// Sessions (None = every session of the account) and whether entries are pushed.
    items: Vec<(Option<SessionId>, bool)>,
}

/// Why a command failed when its machine's connection dropped before the reply.
const DISCONNECTED: &str = "The machine disconnected while answering.";

/// True when a command failed only because its machine's connection dropped while it ran: the
/// daemon may still be working on it, and answers it again once reconnected if it is
/// idempotent.
pub fn disconnected(e: &ApiError) -> bool {
    e.code == ErrorCode::Timeout && e.message.starts_with(DISCONNECTED)
}

impl Subscription {
    fn wants(&self, event: &Event) -> bool {
        let (session, is_entries) = match event {
            Event::SessionChanged { session } => (Some(session.id), false),
            Event::Entries { session_id, .. } => (Some(*session_id), true),
            Event::InputQueued { input } => (Some(input.session_id), false),
            Event::HandoffChanged { handoff } => (Some(handoff.session_id), false),
            Event::HandoffProgress { session_id, .. } => (Some(*session_id), false),
            Event::MachineChanged { .. } | Event::ServicesChanged => (None, false),
        };
        self.items.iter().any(|(s, entries)| {
            let session_ok = match (s, session) {
                (None, _) => true,
                (Some(want), Some(got)) => *want == got,
                (Some(_), None) => true,
            };
            session_ok && (!is_entries || *entries)
        })
    }
}

struct Conn {
    account: AccountId,
    machine: MachineId,
    role: ConnRole,
    tx: mpsc::Sender<ServerFrame>,
    subs: Subscription,
    pending: Vec<u64>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<ConnId, Conn>,
    daemons: HashMap<MachineId, ConnId>,
    pending: HashMap<u64, oneshot::Sender<Result<DaemonReply, ApiError>>>,
}

/// Registry of live connections.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    next: AtomicU64,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection; for a daemon, replaces an older connection of the same machine
    /// (whose pending commands fail). Returns its id.
    pub fn register(
        &self,
        account: AccountId,
        machine: MachineId,
        role: ConnRole,
        tx: mpsc::Sender<ServerFrame>,
    ) -> ConnId {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut inner = self.lock();
        if role == ConnRole::Daemon
            && let Some(old) = inner.daemons.insert(machine, id)
        {
            Self::drop_conn(&mut inner, old);
        }
        inner.conns.insert(
            id,
            Conn {
                account,
                machine,
                role,
                tx,
                subs: Subscription::default(),
                pending: Vec::new(),
            },
        );
        id
    }

    fn drop_conn(inner: &mut Inner, id: ConnId) {
        if let Some(conn) = inner.conns.remove(&id) {
            for p in conn.pending {
                if let Some(waiter) = inner.pending.remove(&p) {
                    let _ = waiter.send(Err(ApiError::new(ErrorCode::Timeout, DISCONNECTED)));
                }
            }
            if conn.role == ConnRole::Daemon && inner.daemons.get(&conn.machine) == Some(&id) {
                inner.daemons.remove(&conn.machine);
            }
        }
    }

    /// Removes a connection. Returns true when it was the machine's current daemon connection
    /// (the machine just went offline).
    pub fn unregister(&self, id: ConnId) -> bool {
        let mut inner = self.lock();
        let was_daemon = inner
            .conns
            .get(&id)
            .map(|c| c.role == ConnRole::Daemon && inner.daemons.get(&c.machine) == Some(&id))
            .unwrap_or(false);
        Self::drop_conn(&mut inner, id);
        was_daemon
    }

    /// Adds a subscription to a connection.
    pub fn subscribe(&self, id: ConnId, session: Option<SessionId>, entries: bool) {
        if let Some(c) = self.lock().conns.get_mut(&id) {
            c.subs.items.push((session, entries));
        }
    }

    /// True while the machine's daemon is connected.
    pub fn is_online(&self, machine: MachineId) -> bool {
        self.lock().daemons.contains_key(&machine)
    }

    /// The connection a machine's daemon holds now (a new one after every reconnect).
    pub fn daemon_conn(&self, machine: MachineId) -> Option<ConnId> {
        self.lock().daemons.get(&machine).copied()
    }

    /// Pushes an event to every subscribed connection of the account.
    pub fn publish(&self, account: AccountId, event: Event) {
        let mut inner = self.lock();
        let mut overflowed = Vec::new();
        for (id, conn) in inner.conns.iter() {
            if conn.account != account || !conn.subs.wants(&event) {
                continue;
            }
            let frame = ServerFrame::Event {
                event: event.clone(),
            };
            if conn.tx.try_send(frame).is_err() {
                overflowed.push(*id);
            }
        }
        for id in overflowed {
            tracing::warn!(conn = id, "dropping a connection whose queue is full");
            Self::drop_conn(&mut inner, id);
        }
    }

    /// Sends a command to a machine's daemon and waits for its reply.
    pub async fn command(
        &self,
        machine: MachineId,
        command: DaemonCommand,
        timeout: Duration,
    ) -> Result<DaemonReply, ApiError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        let conn_id = {
            let mut inner = self.lock();
            let Some(conn_id) = inner.daemons.get(&machine).copied() else {
                return Err(ApiError::new(
                    ErrorCode::TargetOffline,
                    "The machine is offline.",
                ));
            };
            let Some(conn) = inner.conns.get_mut(&conn_id) else {
                return Err(ApiError::new(
                    ErrorCode::TargetOffline,
                    "The machine is offline.",
                ));
            };
            if conn
                .tx
                .try_send(ServerFrame::Command { id, command })
                .is_err()
            {
                return Err(ApiError::new(
                    ErrorCode::Timeout,
                    "The machine's connection is congested.",
                ));
            }
            conn.pending.push(id);
            inner.pending.insert(id, tx);
            conn_id
        };
        let result = tokio::time::timeout(timeout, rx).await;
        let mut inner = self.lock();
        inner.pending.remove(&id);
        if let Some(conn) = inner.conns.get_mut(&conn_id) {
            conn.pending.retain(|p| *p != id);
        }
        match result {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(ApiError::new(ErrorCode::Timeout, DISCONNECTED)),
            Err(_) => Err(ApiError::new(
                ErrorCode::Timeout,
                format!("The machine did not answer within {} s.", timeout.as_secs()),
            )),
        }
    }

    /// Delivers a daemon's reply to the waiting command.
    pub fn reply(&self, id: u64, result: Result<DaemonReply, ApiError>) {
        if let Some(waiter) = self.lock().pending.remove(&id) {
            let _ = waiter.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn command_to_offline_machine_fails_fast() {
        let hub = Hub::default();
        let err = hub
            .command(
                MachineId::new(),
                DaemonCommand::Cleanup {
                    handoff_id: baton_proto::HandoffId::new(),
                    session_id: SessionId::new(),
                },
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TargetOffline);
    }

    #[tokio::test]
    async fn replaced_daemon_connection_fails_its_pending_commands() {
        let hub = std::sync::Arc::new(Hub::default());
        let account = AccountId::new();
        let machine = MachineId::new();
        let (tx1, mut rx1) = mpsc::channel(8);
        hub.register(account, machine, ConnRole::Daemon, tx1);
        let h = hub.clone();
        let waiter = tokio::spawn(async move {
            h.command(
                machine,
                DaemonCommand::Cleanup {
                    handoff_id: baton_proto::HandoffId::new(),
                    session_id: SessionId::new(),
                },
                Duration::from_secs(10),
            )
            .await
        });
        assert!(matches!(
            rx1.recv().await,
            Some(ServerFrame::Command { .. })
        ));
        let (tx2, _rx2) = mpsc::channel(8);
        hub.register(account, machine, ConnRole::Daemon, tx2);
        let err = waiter.await.unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::Timeout);
        assert!(disconnected(&err), "{err:?}");
        assert!(hub.is_online(machine));
        // A command that only timed out is not a dropped connection.
        let err = hub
            .command(
                machine,
                DaemonCommand::Cleanup {
                    handoff_id: baton_proto::HandoffId::new(),
                    session_id: SessionId::new(),
                },
                Duration::from_millis(20),
            )
            .await
            .unwrap_err();
        assert!(!disconnected(&err), "{err:?}");
    }

    #[test]
    fn other_accounts_get_no_events() {
        let hub = Hub::default();
        let (a, b) = (AccountId::new(), AccountId::new());
        let (tx_a, mut rx_a) = mpsc::channel(8);
        let (tx_b, mut rx_b) = mpsc::channel(8);
        let ca = hub.register(a, MachineId::new(), ConnRole::Client, tx_a);
        let cb = hub.register(b, MachineId::new(), ConnRole::Client, tx_b);
        hub.subscribe(ca, None, true);
        hub.subscribe(cb, None, true);
        hub.publish(
            a,
            Event::Entries {
                session_id: SessionId::new(),
                entries: vec![],
            },
        );
        assert!(rx_a.try_recv().is_ok());
        assert!(rx_b.try_recv().is_err());
    }
}
