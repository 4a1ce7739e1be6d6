//! Following a session live: a WebSocket subscription used as a wake-up signal. Callers re-read
//! state over HTTP after every wake-up (and on a short timer), so an event missed while the
//! socket reconnects costs latency, never correctness.

use std::time::Duration;

use baton_daemon::client::Client;
use std::sync::{Arc, Mutex};

use baton_proto::handoff::TransferProgress;
use baton_proto::ws::{ClientFrame, ConnRole, Event, ServerFrame};
use baton_proto::{HandoffId, PROTOCOL_VERSION, SessionId};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// The frames a watching client sends first: hello, then a subscription to `session`'s events
/// with its transcript entries.
pub fn subscribe_frames(session: SessionId) -> [ClientFrame; 2] {
    [
        ClientFrame::Hello {
            role: ConnRole::Client,
            protocol: PROTOCOL_VERSION,
            providers: Vec::new(),
        },
        ClientFrame::Subscribe {
            session_id: Some(session),
            entries: true,
        },
    ]
}

/// The last workspace transfer progress a watcher saw, by handoff.
type LastProgress = Arc<Mutex<Option<(HandoffId, TransferProgress)>>>;

/// A live subscription to one session's events.
pub struct Watcher {
    rx: mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
    progress: LastProgress,
}

impl Watcher {
    /// Subscribes to `session` (reconnecting by itself until dropped).
    pub async fn open(client: &Client, session: SessionId) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let client = client.clone();
        let progress: LastProgress = Arc::default();
        let last = progress.clone();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut first = Some(first_tx);
            loop {
                if let Ok(ws) = client.connect_ws().await {
                    let (mut sink, mut stream) = ws.split();
                    let mut ok = true;
                    for f in &subscribe_frames(session) {
                        let text = serde_json::to_string(f).unwrap_or_default();
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            ok = false;
                            break;
                        }
                    }
                    if ok {
                        while let Some(Ok(msg)) = stream.next().await {
                            if let Message::Text(t) = msg
                                && let Ok(frame) = serde_json::from_str::<ServerFrame>(&t)
                            {
                                match frame {
                                    ServerFrame::Welcome { .. } => {
                                        if let Some(f) = first.take() {
                                            let _ = f.send(());
                                        }
                                    }
                                    ServerFrame::Event { event } => {
                                        if let Event::HandoffProgress {
                                            handoff_id,
                                            progress,
                                            ..
                                        } = event
                                        {
                                            *last.lock().unwrap_or_else(|p| p.into_inner()) =
                                                Some((handoff_id, progress));
                                        }
                                        let _ = tx.try_send(());
                                    }
                                    ServerFrame::Command { .. } => {}
                                }
                            }
                        }
                    }
                }
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
                let _ = tx.try_send(());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        // Subscribed before the caller acts, so its own action's events are not missed.
        let _ = tokio::time::timeout(Duration::from_secs(5), first_rx).await;
        Self { rx, task, progress }
    }

    /// The last workspace transfer progress seen, if any.
    pub fn progress(&self) -> Option<(HandoffId, TransferProgress)> {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for an event or `max`, whichever comes first.
    pub async fn wait(&mut self, max: Duration) {
        let _ = tokio::time::timeout(max, self.rx.recv()).await;
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
