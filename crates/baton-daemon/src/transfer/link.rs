//! One side's transfer socket: connecting with the server's first notice, reconnecting with
//! backoff within the reconnect timeout, and (for the target) a [`Link`] whose socket is read
//! by a task of its own, so the server's pings are answered while the caller is busy elsewhere.

use std::time::{Duration, Instant};

use baton_proto::ErrorCode;
use baton_proto::transfer::{MAX_TRANSFER_FRAME, TransferNotice, TransferRole, transfer_ws_path};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;

use super::{Result, TransferConn, TransferError};
use crate::client::{ClientError, WsStream};

/// The server pings every 10 s; this long without any message means the connection is dead.
pub(crate) const SILENCE: Duration = Duration::from_secs(45);
/// Time allowed for the server's first notice after the upgrade.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A fresh connection and whether the peer is connected.
pub(crate) struct Connected {
    pub(crate) ws: WsStream,
    pub(crate) peer: bool,
}

/// A failed attempt: worth retrying, or final.
enum Attempt {
    Retry(String),
    Fatal(TransferError),
}

/// Parses a server notice; anything else is a protocol error.
pub(crate) fn parse_notice(text: &str) -> Result<TransferNotice> {
    serde_json::from_str(text)
        .map_err(|e| TransferError::Protocol(format!("unreadable notice from the server: {e}")))
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_TRANSFER_FRAME))
        .max_frame_size(Some(MAX_TRANSFER_FRAME))
}

async fn connect_once(
    conn: &TransferConn,
    role: TransferRole,
) -> std::result::Result<Connected, Attempt> {
    let path = transfer_ws_path(conn.transfer, role);
    let mut ws = match conn.client.connect_ws_at(&path, ws_config()).await {
        Ok(ws) => ws,
        // A renewed token may work; any other refusal is final (not part of the handoff, over
        // the limits, transfer ended).
        Err(ClientError::Api(e)) if e.code != ErrorCode::Unauthorized => {
            return Err(Attempt::Fatal(TransferError::Refused(e)));
        }
        Err(e) => return Err(Attempt::Retry(e.to_string())),
    };
    let first = tokio::time::timeout(JOIN_TIMEOUT, ws.next()).await;
    match first {
        Ok(Some(Ok(Message::Text(text)))) => match parse_notice(&text) {
            Ok(TransferNotice::Joined { peer }) => Ok(Connected { ws, peer }),
            Ok(TransferNotice::Closed { error }) => {
                Err(Attempt::Fatal(TransferError::Refused(error)))
            }
            Ok(other) => Err(Attempt::Retry(format!("unexpected first notice {other:?}"))),
            Err(e) => Err(Attempt::Fatal(e)),
        },
        Ok(other) => Err(Attempt::Retry(format!(
            "no join notice from the server ({})",
            match other {
                Some(Ok(m)) => format!("got a {} message", kind_of(&m)),
                Some(Err(e)) => e.to_string(),
                None => "connection closed".into(),
            }
        ))),
        Err(_) => Err(Attempt::Retry(
            "the server sent no join notice in time".into(),
        )),
    }
}

fn kind_of(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) | Message::Pong(_) => "ping",
        Message::Close(_) => "close",
        Message::Frame(_) => "raw",
    }
}

/// Connects `role`'s socket, retrying with backoff until `since + reconnect_timeout`.
pub(crate) async fn connect(
    conn: &TransferConn,
    role: TransferRole,
    since: Instant,
    cancel: &CancellationToken,
) -> Result<Connected> {
    let timeout = conn.tuning.reconnect_timeout;
    let mut backoff = BACKOFF_MIN;
    loop {
        let last = tokio::select! {
            _ = cancel.cancelled() => return Err(TransferError::Cancelled),
            attempt = connect_once(conn, role) => match attempt {
                Ok(c) => return Ok(c),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(last)) => last,
            },
        };
        let elapsed = since.elapsed();
        if elapsed + backoff > timeout {
            return Err(TransferError::Unreachable {
                after: elapsed,
                last,
            });
        }
        tracing::debug!(transfer = %conn.transfer, role = role.as_str(), error = %last, "transfer socket: retrying");
        tokio::select! {
            _ = cancel.cancelled() => return Err(TransferError::Cancelled),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// What the target's socket reports.
#[derive(Debug)]
pub(crate) enum Event {
    /// A binary frame from the peer.
    Frame(Bytes),
    /// The peer (re)connected: whatever it was asked before is void.
    PeerJoined,
    /// The peer left; it has [`super::TransferTuning::reconnect_timeout`] to come back.
    PeerLeft,
    /// This side's own connection was replaced by a new one.
    Reconnected {
        /// The peer is connected.
        peer: bool,
    },
}

/// What the reading task passes on.
enum Incoming {
    Message(Message),
    Lost(String),
}

/// Messages read ahead of the caller. Reading never waits for the caller while this has room,
/// so the server's pings are answered (tungstenite replies while reading) even while the caller
/// does something else between phases, such as staging a large manifest.
const READ_AHEAD: usize = 4;

/// One live connection: the writing half and a task reading the other.
struct Live {
    sink: SplitSink<WsStream, Message>,
    incoming: mpsc::Receiver<Incoming>,
    reader: tokio::task::JoinHandle<()>,
}

impl Live {
    fn new(ws: WsStream) -> Self {
        let (sink, stream) = ws.split();
        let (tx, incoming) = mpsc::channel(READ_AHEAD);
        let reader = tokio::spawn(read_socket(stream, tx));
        Self {
            sink,
            incoming,
            reader,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // With both halves gone the socket closes.
        self.reader.abort();
    }
}

async fn read_socket(mut stream: SplitStream<WsStream>, tx: mpsc::Sender<Incoming>) {
    loop {
        let item = match tokio::time::timeout(SILENCE, stream.next()).await {
            Err(_) => Incoming::Lost("the server went silent".into()),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => {
                Incoming::Lost("closed by the server".into())
            }
            Ok(Some(Err(e))) => Incoming::Lost(e.to_string()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Ok(msg))) => Incoming::Message(msg),
        };
        let lost = matches!(item, Incoming::Lost(_));
        if tx.send(item).await.is_err() || lost {
            return;
        }
    }
}

/// A reconnection attempt that outlives the [`Link::next`] call that started it.
type Reconnect = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Connected>> + Send>>;

/// A transfer socket used from one task, reconnecting on loss.
pub(crate) struct Link {
    conn: TransferConn,
    role: TransferRole,
    cancel: CancellationToken,
    live: Option<Live>,
    /// The reconnection under way, if any.
    connecting: Option<Reconnect>,
    lost_at: Option<Instant>,
    peer: bool,
    peer_absent_since: Option<Instant>,
    /// Reconnections so far.
    pub(crate) reconnects: u32,
    /// Bytes of binary frames sent and received.
    pub(crate) wire_bytes: u64,
    data_bytes: u64,
    hook_fired: bool,
}

impl Link {
    /// Connects (retrying within the reconnect timeout).
    pub(crate) async fn open(
        conn: TransferConn,
        role: TransferRole,
        cancel: CancellationToken,
    ) -> Result<Self> {
        let c = connect(&conn, role, Instant::now(), &cancel).await?;
        let mut link = Self {
            conn,
            role,
            cancel,
            live: Some(Live::new(c.ws)),
            connecting: None,
            lost_at: None,
            peer: false,
            peer_absent_since: None,
            reconnects: 0,
            wire_bytes: 0,
            data_bytes: 0,
            hook_fired: false,
        };
        link.set_peer(c.peer);
        Ok(link)
    }

    /// The transfer's connection parameters.
    pub(crate) fn conn(&self) -> &TransferConn {
        &self.conn
    }

    /// Whether the peer is connected, as far as this side knows.
    pub(crate) fn peer(&self) -> bool {
        self.peer && self.live.is_some()
    }

    fn set_peer(&mut self, connected: bool) {
        self.peer = connected;
        if connected {
            self.peer_absent_since = None;
        } else if self.peer_absent_since.is_none() {
            self.peer_absent_since = Some(Instant::now());
        }
    }

    fn lose(&mut self, why: &str) {
        if self.live.take().is_some() {
            tracing::info!(transfer = %self.conn.transfer, role = self.role.as_str(), why, "transfer socket lost; reconnecting");
            self.lost_at = Some(Instant::now());
        }
    }

    /// Counts data bytes for the test hook, closing the socket once past its threshold.
    pub(crate) fn count_data(&mut self, n: usize) {
        self.data_bytes += n as u64;
        if let Some(limit) = self.conn.tuning.drop_after_bytes
            && !self.hook_fired
            && self.data_bytes >= limit
        {
            self.hook_fired = true;
            tracing::warn!(
                limit,
                "{} set: dropping the transfer socket",
                super::DROP_AFTER_BYTES_VAR
            );
            self.lose("test hook");
        }
    }

    /// Sends a frame; a failure only marks the socket lost (the next [`Link::next`] reconnects,
    /// and the target asks again for what this frame would have asked).
    pub(crate) async fn send(&mut self, frame: Vec<u8>) -> Result<()> {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        self.wire_bytes += frame.len() as u64;
        let sent = tokio::select! {
            _ = self.cancel.cancelled() => return Err(TransferError::Cancelled),
            r = live.sink.send(Message::Binary(frame.into())) => r,
        };
        if let Err(e) = sent {
            self.lose(&e.to_string());
        }
        Ok(())
    }

    /// The next event, reconnecting as needed. Fails when the reconnect timeout passes, the peer
    /// stays away that long, the server ends the transfer or the caller cancels.
    pub(crate) async fn next(&mut self) -> Result<Event> {
        let timeout = self.conn.tuning.reconnect_timeout;
        loop {
            if self.cancel.is_cancelled() {
                return Err(TransferError::Cancelled);
            }
            let Some(live) = self.live.as_mut() else {
                let since = *self.lost_at.get_or_insert_with(Instant::now);
                // Kept across calls: a caller that drops this future (a `select!` woken by
                // something else) resumes the same attempt instead of starting another, whose
                // late upgrade would replace, and so close, the connection that won.
                let attempt = self.connecting.get_or_insert_with(|| {
                    let (conn, role, cancel) = (self.conn.clone(), self.role, self.cancel.clone());
                    Box::pin(async move { connect(&conn, role, since, &cancel).await })
                });
                let c = attempt.as_mut().await;
                self.connecting = None;
                let c = c?;
                self.live = Some(Live::new(c.ws));
                self.lost_at = None;
                self.reconnects += 1;
                self.set_peer(c.peer);
                return Ok(Event::Reconnected { peer: c.peer });
            };
            let deadline = self.peer_absent_since.map(|absent| absent + timeout);
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return Err(TransferError::PeerGone { after: timeout });
            }
            let peer_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let incoming = tokio::select! {
                _ = self.cancel.cancelled() => return Err(TransferError::Cancelled),
                // Checked at the top of the loop.
                _ = peer_deadline => continue,
                incoming = live.incoming.recv() => incoming,
            };
            let msg = match incoming {
                Some(Incoming::Message(msg)) => msg,
                Some(Incoming::Lost(why)) => {
                    self.lose(&why);
                    continue;
                }
                None => {
                    self.lose("the reading task ended");
                    continue;
                }
            };
            match msg {
                Message::Binary(b) => {
                    self.wire_bytes += b.len() as u64;
                    return Ok(Event::Frame(b));
                }
                Message::Text(text) => match parse_notice(&text)? {
                    TransferNotice::Peer { connected: true } => {
                        self.set_peer(true);
                        return Ok(Event::PeerJoined);
                    }
                    TransferNotice::Peer { connected: false } => {
                        self.set_peer(false);
                        return Ok(Event::PeerLeft);
                    }
                    TransferNotice::Closed { error } => return Err(TransferError::Refused(error)),
                    TransferNotice::Joined { .. } => {}
                },
                // The reading task passes on nothing else.
                _ => {}
            }
        }
    }

    /// Closes the socket politely.
    pub(crate) async fn close(mut self) {
        if let Some(mut live) = self.live.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), live.sink.close()).await;
        }
    }
}
