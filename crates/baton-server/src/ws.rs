//! `GET /v1/ws`: one WebSocket per daemon and per watching client.
//!
//! The first frame must be `hello`. A daemon connection marks its machine online until the socket
//! closes or stays silent past [`IDLE_TIMEOUT`] (the server pings every [`PING_EVERY`], so a
//! vanished laptop shows offline within a minute).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use baton_proto::ws::{ClientFrame, ConnRole, Event, ServerFrame};
use baton_proto::{MAX_WS_MESSAGE, MachineKind, PROTOCOL_VERSION, now_millis};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::AppState;
use crate::api::machine_info;
use crate::auth::Caller;
use crate::hub::CONN_QUEUE;

/// How often the server pings each connection.
pub const PING_EVERY: Duration = Duration::from_secs(10);
/// A connection silent this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(35);
/// Time allowed for the hello frame.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Upgrades an authenticated request to a WebSocket.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| connection(state, caller, socket))
}

async fn publish_machine(state: &AppState, caller: &Caller) {
    if let Ok(Some(m)) = state.store.machine(caller.machine).await {
        state.hub.publish(
            caller.account,
            Event::MachineChanged {
                machine: machine_info(state, m),
            },
        );
    }
}

async fn connection(state: Arc<AppState>, caller: Caller, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<ClientFrame>(&text).ok(),
        _ => None,
    };
    let Some(ClientFrame::Hello {
        role,
        protocol,
        providers,
    }) = hello
    else {
        tracing::debug!("websocket closed: no hello");
        return;
    };
    if protocol != PROTOCOL_VERSION {
        tracing::warn!(protocol, "client speaks another protocol version");
        let _ = sink.send(Message::Close(None)).await;
        return;
    }
    if role == ConnRole::Daemon {
        // A browser runs no sessions: it must never be taken for a daemon (marked online, sent
        // commands, picked as a handoff's target).
        let kind = state
            .store
            .machine(caller.machine)
            .await
            .ok()
            .flatten()
            .map(|m| m.kind);
        if kind != Some(MachineKind::Daemon) {
            tracing::warn!(machine = %caller.machine, "refused a daemon connection from a browser");
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    }
    let (tx, mut rx) = mpsc::channel::<ServerFrame>(CONN_QUEUE);
    let conn = state
        .hub
        .register(caller.account, caller.machine, role, tx.clone());
    let _ = tx.try_send(ServerFrame::Welcome {
        machine_id: caller.machine,
        account_id: caller.account,
    });
    if role == ConnRole::Daemon {
        if let Err(e) = state
            .store
            .set_providers(caller.machine, &providers, now_millis())
            .await
        {
            tracing::error!(error = %e, "storing providers failed");
        }
        tracing::info!(machine = %caller.machine, "daemon online");
        publish_machine(&state, &caller).await;
    }

    let writer = async {
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                frame = rx.recv() => {
                    let Some(frame) = frame else { break };
                    let Ok(text) = serde_json::to_string(&frame) else { continue };
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };

    let reader = async {
        loop {
            let msg = match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
                Err(_) => {
                    tracing::info!(machine = %caller.machine, "connection silent too long; closing");
                    break;
                }
                Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(msg))) => msg,
            };
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(_) => break,
                _ => continue,
            };
            let frame = match serde_json::from_str::<ClientFrame>(&text) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable frame ignored");
                    continue;
                }
            };
            match frame {
                ClientFrame::Hello { .. } => {}
                ClientFrame::Subscribe {
                    session_id,
                    entries,
                } => {
                    // A session id of another account subscribes to nothing: events are scoped
                    // to the caller's account before the filter applies.
                    state.hub.subscribe(conn, session_id, entries);
                }
                ClientFrame::Capabilities { providers } => {
                    if role == ConnRole::Daemon {
                        let _ = state
                            .store
                            .set_providers(caller.machine, &providers, now_millis())
                            .await;
                        publish_machine(&state, &caller).await;
                    }
                }
                ClientFrame::Reply { id, result } => state.hub.reply(id, result),
            }
        }
    };

    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
    let went_offline = state.hub.unregister(conn);
    if went_offline {
        let _ = state
            .store
            .touch_machine(caller.machine, now_millis())
            .await;
        tracing::info!(machine = %caller.machine, "daemon offline");
        publish_machine(&state, &caller).await;
    }
}
