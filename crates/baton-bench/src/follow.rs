//! A client's live view of one session, as `baton attach` gets it: a WebSocket subscription to
//! the session's events with its transcript entries pushed. Each event is stamped with the
//! instant it arrived, on a task of its own, so a figure taken from it is when a watching person
//! would have seen it.
//!
//! Unlike the CLI's watcher, this one does not reconnect: a benchmark sample that lost events
//! would be wrong, so a closed subscription is an error.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use baton_cli::commands::watch::subscribe_frames;
use baton_daemon::client::Client;
use baton_proto::SessionId;
use baton_proto::ws::{Event, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Events buffered between the socket and the benchmark. The benchmark drains them between
/// samples; a full buffer only slows the socket down (nothing is dropped).
const BUFFER: usize = 1024;
/// Longest wait for the server's welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// One event and when it arrived.
#[derive(Debug)]
pub struct Arrival {
    /// When the frame was read from the socket.
    pub at: Instant,
    /// The event.
    pub event: Event,
}

/// A live subscription to one session's events, entries included.
pub struct Follower {
    rx: mpsc::Receiver<Arrival>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    /// Subscribes to `session`'s events; returns once the server has welcomed the connection.
    pub async fn open(client: &Client, session: SessionId) -> Result<Self> {
        let ws = client.connect_ws().await.context("opening the WebSocket")?;
        let (mut sink, mut stream) = ws.split();
        for frame in &subscribe_frames(session) {
            let text = serde_json::to_string(frame).context("encoding a frame")?;
            sink.send(Message::Text(text.into()))
                .await
                .context("subscribing")?;
        }
        let welcomed = tokio::time::timeout(WELCOME_TIMEOUT, async {
            while let Some(msg) = stream.next().await {
                if let Message::Text(t) = msg.context("reading the WebSocket")?
                    && let Ok(ServerFrame::Welcome { .. }) = serde_json::from_str(&t)
                {
                    return Ok(());
                }
            }
            Err(anyhow!(
                "the server closed the WebSocket before its welcome"
            ))
        })
        .await;
        match welcomed {
            Ok(r) => r?,
            Err(_) => bail!(
                "no welcome on the WebSocket within {} s",
                WELCOME_TIMEOUT.as_secs()
            ),
        }
        let (tx, rx) = mpsc::channel(BUFFER);
        let task = tokio::spawn(async move {
            // The sink stays alive with the task: dropping it would close the connection.
            let _sink = sink;
            while let Some(Ok(msg)) = stream.next().await {
                let at = Instant::now();
                let Message::Text(t) = msg else { continue };
                if let Ok(ServerFrame::Event { event }) = serde_json::from_str(&t)
                    && tx.send(Arrival { at, event }).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Self { rx, task })
    }

    /// The next event, waiting at most until `deadline`.
    pub async fn next(&mut self, deadline: Instant) -> Result<Arrival> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.rx.recv()).await {
            Ok(Some(a)) => Ok(a),
            Ok(None) => bail!("the server closed the session's WebSocket subscription"),
            Err(_) => bail!("no event on the session's WebSocket subscription in time"),
        }
    }

    /// Forgets the events received so far.
    pub fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}
