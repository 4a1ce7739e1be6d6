//! The source's end: answers the target's requests. A blocking thread reads, checks and seals the
//! requested chunks into frames ahead of the socket (a queue of two frames), so disk and network
//! overlap; the socket is read and written concurrently so requests are always taken in, even
//! while a large frame is being sent.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use baton_crypto::TransferCipher;
use baton_proto::transfer::{
    ChunksFrame, Frame, MAX_BLOB_BYTES, MAX_HASHES_PER_FRAME, MAX_OUTSTANDING_CHUNKS,
    SEALED_OVERHEAD, TransferNotice, TransferRole, decode, encode_abort, encode_blob,
    encode_done_ack, encode_gone,
};
use baton_proto::workspace::ContentHash;
use baton_proto::{ApiError, ErrorCode};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;

use super::link::{self, SILENCE, parse_notice};
use super::{ChunkSource, Result, TransferConn, TransferError};
use crate::client::WsStream;

/// Sealed frames ready ahead of the socket.
const READ_AHEAD: usize = 2;
/// Size of one blob part.
const BLOB_PART: usize = 1024 * 1024;

/// What the source sent, over the whole transfer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Chunks sent (a chunk asked for again after a reconnect counts again).
    pub chunks: u64,
    /// Their plaintext bytes.
    pub bytes: u64,
    /// Blob bytes sent.
    pub blob_bytes: u64,
    /// Chunks answered `gone`.
    pub gone: u64,
    /// Bytes of binary frames sent.
    pub wire_bytes: u64,
    /// Reconnections of this side.
    pub reconnects: u32,
}

/// Which requests a frame answers: those of one connection (`generation`, bumped whenever a
/// side reconnects and earlier requests become void) and one request round of the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Epoch {
    generation: u64,
    round: u32,
}

/// Requests waiting for the reading thread.
struct Pending {
    queue: VecDeque<(u32, ContentHash)>,
    /// The current generation and the latest round asked for in it; answers to anything older
    /// are dropped instead of sent.
    current: Epoch,
    closed: bool,
}

struct Pipeline {
    pending: Mutex<Pending>,
    ready: Condvar,
}

impl Pipeline {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, round: u32, hashes: impl ExactSizeIterator<Item = ContentHash>) -> Result<()> {
        let mut p = self.lock();
        if round < p.current.round {
            // A request of an earlier round, overtaken by a re-ask: the target drops answers to
            // it anyway.
            return Ok(());
        }
        if round > p.current.round {
            p.current.round = round;
            p.queue.retain(|(r, _)| *r >= round);
        }
        if p.queue.len() + hashes.len() > MAX_OUTSTANDING_CHUNKS {
            return Err(TransferError::Protocol(format!(
                "the target asked for more than {MAX_OUTSTANDING_CHUNKS} chunks at once"
            )));
        }
        p.queue.extend(hashes.map(|h| (round, h)));
        drop(p);
        self.ready.notify_one();
        Ok(())
    }

    /// Voids every request so far: a side reconnected, and the target asks again.
    fn reset(&self) {
        let mut p = self.lock();
        p.queue.clear();
        p.current = Epoch {
            generation: p.current.generation + 1,
            round: 0,
        };
        drop(p);
        self.ready.notify_one();
    }

    fn is_current(&self, epoch: Epoch) -> bool {
        self.lock().current == epoch
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// A frame from the reading thread.
enum Produced {
    Frame {
        epoch: Epoch,
        bytes: Vec<u8>,
        chunks: u64,
        plain: u64,
        gone: u64,
    },
    Failed(io::Error),
}

/// Builds frames from the requests: reads, checks the content still has its name, seals.
struct Builder {
    frame: ChunksFrame,
    gone: Vec<ContentHash>,
    epoch: Epoch,
    chunks: u64,
    plain: u64,
    frame_bytes: usize,
}

impl Builder {
    fn is_empty(&self) -> bool {
        self.frame.is_empty() && self.gone.is_empty()
    }

    /// Starts answering `epoch` (only while nothing is built).
    fn answer(&mut self, epoch: Epoch) {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.frame = ChunksFrame::new(epoch.round, self.frame_bytes);
        }
    }

    /// Sends what was built; false when the socket side is gone.
    fn flush(&mut self, out: &mpsc::Sender<Produced>) -> bool {
        if !self.gone.is_empty() {
            let gone = std::mem::take(&mut self.gone);
            let bytes = match encode_gone(self.epoch.round, &gone) {
                Ok(b) => b,
                Err(e) => {
                    let _ = out.blocking_send(Produced::Failed(io::Error::other(e)));
                    return false;
                }
            };
            let produced = Produced::Frame {
                epoch: self.epoch,
                bytes,
                chunks: 0,
                plain: 0,
                gone: gone.len() as u64,
            };
            if out.blocking_send(produced).is_err() {
                return false;
            }
        }
        if !self.frame.is_empty() {
            let frame = std::mem::replace(
                &mut self.frame,
                ChunksFrame::new(self.epoch.round, self.frame_bytes),
            );
            let produced = Produced::Frame {
                epoch: self.epoch,
                bytes: frame.finish(),
                chunks: std::mem::take(&mut self.chunks),
                plain: std::mem::take(&mut self.plain),
                gone: 0,
            };
            if out.blocking_send(produced).is_err() {
                return false;
            }
        }
        true
    }
}

/// The reading thread: runs until the pipeline closes or the socket side goes away.
fn read_ahead(
    pipeline: Arc<Pipeline>,
    source: Arc<dyn ChunkSource>,
    cipher: TransferCipher,
    out: mpsc::Sender<Produced>,
    frame_bytes: usize,
) {
    let mut b = Builder {
        frame: ChunksFrame::new(0, frame_bytes),
        gone: Vec::new(),
        epoch: Epoch::default(),
        chunks: 0,
        plain: 0,
        frame_bytes,
    };
    // Every chunk is read into this one buffer, then sealed into the frame.
    let mut scratch = Vec::new();
    loop {
        let next = {
            let mut p = pipeline.lock();
            loop {
                if p.closed {
                    return;
                }
                let stale = p.current != b.epoch;
                // Send what is built as soon as no request waits (no waiting to fill a frame),
                // or when it answers requests that became void.
                if !b.is_empty() && (p.queue.is_empty() || stale) {
                    break None;
                }
                b.answer(p.current);
                match p.queue.pop_front() {
                    Some((round, hash)) if round == p.current.round => break Some(hash),
                    Some(_) => {}
                    None => p = pipeline.ready.wait(p).unwrap_or_else(|e| e.into_inner()),
                }
            }
        };
        let Some(hash) = next else {
            if !b.flush(&out) {
                return;
            }
            continue;
        };
        match source.read_into(&hash, &mut scratch) {
            Ok(true) => {
                let data = &scratch;
                let entry = 32 + 4 + data.len() + SEALED_OVERHEAD;
                if !b.frame.is_empty()
                    && (b.frame.len() + entry > b.frame_bytes || !b.frame.fits(entry - 36))
                    && !b.flush(&out)
                {
                    return;
                }
                if let Err(e) = cipher.seal_chunk_to(&hash, data, &mut b.frame) {
                    let _ = out.blocking_send(Produced::Failed(io::Error::other(format!(
                        "chunk {hash:?} of {} bytes cannot be sent: {e}",
                        data.len()
                    ))));
                    return;
                }
                b.chunks += 1;
                b.plain += data.len() as u64;
                if b.frame.len() >= b.frame_bytes && !b.flush(&out) {
                    return;
                }
            }
            // Changed since the manifest was made, or gone.
            Ok(false) => {
                b.gone.push(hash);
                if b.gone.len() == MAX_HASHES_PER_FRAME && !b.flush(&out) {
                    return;
                }
            }
            Err(e) => {
                let _ = out.blocking_send(Produced::Failed(e));
                return;
            }
        }
    }
}

/// Requests for the writer that are not chunks.
#[derive(Default)]
struct Control {
    blob_from: Option<(u32, u64)>,
    done: bool,
}

struct Signals {
    control: Mutex<Control>,
    wake: Notify,
}

impl Signals {
    fn update(&self, f: impl FnOnce(&mut Control)) {
        f(&mut self.control.lock().unwrap_or_else(|p| p.into_inner()));
        self.wake.notify_one();
    }

    fn take(&self) -> Control {
        std::mem::take(&mut *self.control.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// How one connection ended.
enum Outcome {
    /// The target is done and was acknowledged.
    Finished,
    /// The socket broke; reconnect.
    Lost(String),
    /// The transfer cannot go on.
    Failed(TransferError),
}

/// What a blob request finds in the feed.
enum Part {
    Ready(Arc<Vec<u8>>),
    NotYet,
    Failed(String),
}

#[derive(Default)]
struct FeedState {
    parts: Vec<Stored>,
    /// Where sealed parts are written instead of being kept in memory, and its length.
    spool: Option<(std::fs::File, u64)>,
    /// Plaintext bytes of the parts published so far.
    published: u64,
    failed: Option<String>,
}

/// A published part: in memory, or at an offset of the spool file.
enum Stored {
    Memory(Arc<Vec<u8>>),
    Spooled { at: u64, len: usize },
}

/// The blobs a source serves, in order (blob 0, 1, …): the parts of its manifest, published as
/// the scan makes them, so the target starts on the first part while the rest is read. Each
/// part is sealed with its number bound in.
pub struct BlobFeed {
    cipher: TransferCipher,
    state: Mutex<FeedState>,
    changed: Notify,
}

impl BlobFeed {
    /// An empty feed whose parts are sealed with `cipher`.
    pub fn new(cipher: TransferCipher) -> Arc<Self> {
        Arc::new(Self {
            cipher,
            state: Mutex::new(FeedState::default()),
            changed: Notify::new(),
        })
    }

    /// An empty feed that keeps its sealed parts in an unnamed file in `dir` rather than in
    /// memory: a manifest is some hundred bytes per file of the tree, and is kept until the pass
    /// ends in case the target reconnects and asks again.
    pub fn spooled(cipher: TransferCipher, dir: &std::path::Path) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let file = tempfile::tempfile_in(dir)?;
        let feed = Self::new(cipher);
        feed.lock().spool = Some((file, 0));
        Ok(feed)
    }

    /// A feed of one blob, complete.
    pub fn single(cipher: TransferCipher, plain: &[u8]) -> Result<Arc<Self>> {
        let feed = Self::new(cipher);
        feed.publish(plain)?;
        Ok(feed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seals `plain` as the next blob. Refused (`transfer_too_large`) above the blob limit.
    pub fn publish(&self, plain: &[u8]) -> Result<()> {
        let mut state = self.lock();
        let seq = u32::try_from(state.parts.len())
            .map_err(|_| TransferError::Protocol("too many manifest parts".into()))?;
        let sealed = self.cipher.seal_blob(seq, plain).into_vec();
        if sealed.len() as u64 > MAX_BLOB_BYTES {
            return Err(TransferError::Refused(ApiError::new(
                ErrorCode::TransferTooLarge,
                format!(
                    "A part of the workspace manifest is {} bytes, above the {MAX_BLOB_BYTES}-byte limit.",
                    sealed.len()
                ),
            )));
        }
        let stored = match &mut state.spool {
            Some((file, end)) => {
                use std::os::unix::fs::FileExt;
                file.write_all_at(&sealed, *end)
                    .map_err(TransferError::Source)?;
                let at = *end;
                *end += sealed.len() as u64;
                Stored::Spooled {
                    at,
                    len: sealed.len(),
                }
            }
            None => Stored::Memory(Arc::new(sealed)),
        };
        state.parts.push(stored);
        state.published += plain.len() as u64;
        drop(state);
        self.changed.notify_one();
        Ok(())
    }

    /// Plaintext bytes of the parts published so far (what the manifest cost, before sealing).
    pub fn published_bytes(&self) -> u64 {
        self.lock().published
    }

    /// No more parts will come: the target asking for one is told why.
    pub fn fail(&self, reason: String) {
        self.lock().failed.get_or_insert(reason);
        self.changed.notify_one();
    }

    fn part(&self, seq: u32) -> Part {
        let state = self.lock();
        match state.parts.get(seq as usize) {
            Some(Stored::Memory(p)) => Part::Ready(p.clone()),
            Some(Stored::Spooled { at, len }) => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; *len];
                match &state.spool {
                    Some((file, _)) => match file.read_exact_at(&mut buf, *at) {
                        Ok(()) => Part::Ready(Arc::new(buf)),
                        Err(e) => Part::Failed(format!("reading back manifest part {seq}: {e}")),
                    },
                    None => Part::Failed(format!("manifest part {seq} is lost")),
                }
            }
            None => match &state.failed {
                Some(why) => Part::Failed(why.clone()),
                None => Part::NotYet,
            },
        }
    }
}

/// Serves the source side of `conn.transfer` until the target says it is done: answers requests
/// for chunks with sealed `chunks` frames (or `gone`), and requests for a blob (a part of the
/// manifest) with its frames once `feed` has it. Reconnects within the reconnect timeout;
/// fails when the target stays away longer, aborts, or `cancel` fires.
pub async fn serve_source(
    conn: &TransferConn,
    cipher: TransferCipher,
    source: Arc<dyn ChunkSource>,
    feed: Arc<BlobFeed>,
    cancel: CancellationToken,
) -> Result<SourceStats> {
    let pipeline = Arc::new(Pipeline {
        pending: Mutex::new(Pending {
            queue: VecDeque::new(),
            current: Epoch::default(),
            closed: false,
        }),
        ready: Condvar::new(),
    });
    let (frame_tx, mut frames) = mpsc::channel(READ_AHEAD);
    let reader = {
        let (pipeline, cipher) = (pipeline.clone(), cipher);
        let frame_bytes = conn.tuning.frame_bytes.max(1);
        tokio::task::spawn_blocking(move || {
            read_ahead(pipeline, source, cipher, frame_tx, frame_bytes)
        })
    };
    let result = serve(conn, &pipeline, &mut frames, &feed, &cancel).await;
    pipeline.close();
    // Unblocks a thread waiting to hand over a frame.
    drop(frames);
    let _ = reader.await;
    result
}

async fn serve(
    conn: &TransferConn,
    pipeline: &Pipeline,
    frames: &mut mpsc::Receiver<Produced>,
    feed: &BlobFeed,
    cancel: &CancellationToken,
) -> Result<SourceStats> {
    let mut stats = SourceStats::default();
    let mut lost_at = Instant::now();
    let mut first = true;
    let mut peer_absent_since: Option<Instant> = None;
    let mut data_bytes = 0u64;
    let mut hook_fired = false;
    loop {
        let connected = link::connect(conn, TransferRole::Source, lost_at, cancel).await?;
        if !first {
            stats.reconnects += 1;
        }
        first = false;
        // Whatever was asked on another connection is void; the target asks again.
        pipeline.reset();
        note_peer(&mut peer_absent_since, connected.peer);
        let (mut sink, mut stream) = connected.ws.split();
        let signals = Signals {
            control: Mutex::new(Control::default()),
            wake: Notify::new(),
        };
        let outcome = {
            let read = read_loop(
                conn,
                &mut stream,
                pipeline,
                &signals,
                &mut peer_absent_since,
            );
            let write = write_loop(
                conn,
                &mut sink,
                frames,
                pipeline,
                &signals,
                feed,
                &mut stats,
                (&mut data_bytes, &mut hook_fired),
            );
            tokio::select! {
                _ = cancel.cancelled() => Outcome::Failed(TransferError::Cancelled),
                o = read => o,
                o = write => o,
            }
        };
        match outcome {
            Outcome::Finished => {
                let _ = tokio::time::timeout(link::SILENCE / 10, sink.close()).await;
                return Ok(stats);
            }
            Outcome::Lost(why) => {
                tracing::info!(transfer = %conn.transfer, why, "source transfer socket lost; reconnecting");
                lost_at = Instant::now();
            }
            Outcome::Failed(e) => {
                if !matches!(e, TransferError::Refused(_) | TransferError::PeerAborted(_)) {
                    let reason = e.to_string();
                    let _ = tokio::time::timeout(
                        link::SILENCE / 10,
                        sink.send(Message::Binary(encode_abort(&reason).into())),
                    )
                    .await;
                }
                return Err(e);
            }
        }
    }
}

fn note_peer(absent_since: &mut Option<Instant>, connected: bool) {
    if connected {
        *absent_since = None;
    } else if absent_since.is_none() {
        *absent_since = Some(Instant::now());
    }
}

/// Takes in requests and notices; never blocks on sending, so requests are always read.
async fn read_loop(
    conn: &TransferConn,
    stream: &mut SplitStream<WsStream>,
    pipeline: &Pipeline,
    signals: &Signals,
    peer_absent_since: &mut Option<Instant>,
) -> Outcome {
    let timeout = conn.tuning.reconnect_timeout;
    loop {
        let mut wait = SILENCE;
        if let Some(absent) = *peer_absent_since {
            let left = timeout.saturating_sub(absent.elapsed());
            if left.is_zero() {
                return Outcome::Failed(TransferError::PeerGone { after: timeout });
            }
            wait = wait.min(left);
        }
        let msg = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) if wait < SILENCE => continue,
            Err(_) => return Outcome::Lost("the server went silent".into()),
            Ok(None) => return Outcome::Lost("closed by the server".into()),
            Ok(Some(Err(e))) => return Outcome::Lost(e.to_string()),
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Message::Binary(bytes) => match decode(&bytes) {
                Ok(Frame::Want { round, hashes }) => {
                    if let Err(e) = pipeline.push(round, hashes.iter()) {
                        return Outcome::Failed(e);
                    }
                }
                Ok(Frame::WantBlob { seq, offset }) => {
                    signals.update(|c| c.blob_from = Some((seq, offset)));
                }
                Ok(Frame::Done) => signals.update(|c| c.done = true),
                Ok(Frame::Abort(reason)) => {
                    return Outcome::Failed(TransferError::PeerAborted(reason.to_string()));
                }
                Ok(other) => {
                    return Outcome::Failed(TransferError::Protocol(format!(
                        "unexpected frame from the target: {other:?}"
                    )));
                }
                Err(e) => return Outcome::Failed(TransferError::Protocol(e.to_string())),
            },
            Message::Text(text) => match parse_notice(&text) {
                Ok(TransferNotice::Peer { connected }) => {
                    // A new target connection re-asks; an absent one asks nothing.
                    pipeline.reset();
                    note_peer(peer_absent_since, connected);
                }
                Ok(TransferNotice::Closed { error }) => {
                    return Outcome::Failed(TransferError::Refused(error));
                }
                Ok(TransferNotice::Joined { .. }) => {}
                Err(e) => return Outcome::Failed(e),
            },
            Message::Close(_) => return Outcome::Lost("closed by the server".into()),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// Sends sealed frames as the reading thread makes them, blob parts and the final
/// acknowledgement.
#[allow(clippy::too_many_arguments)]
async fn write_loop(
    conn: &TransferConn,
    sink: &mut SplitSink<WsStream, Message>,
    frames: &mut mpsc::Receiver<Produced>,
    pipeline: &Pipeline,
    signals: &Signals,
    feed: &BlobFeed,
    stats: &mut SourceStats,
    (data_bytes, hook_fired): (&mut u64, &mut bool),
) -> Outcome {
    // The blob being sent (or waited for): its number, the part itself once the feed has it,
    // and where the next frame starts.
    let mut want: Option<(u32, u64)> = None;
    let mut blob: Option<(u32, Arc<Vec<u8>>, usize)> = None;
    loop {
        if let Some((seq, offset)) = want {
            match feed.part(seq) {
                Part::Ready(part) => {
                    let at = offset.min(part.len() as u64) as usize;
                    blob = Some((seq, part, at));
                    want = None;
                }
                Part::Failed(why) => {
                    return Outcome::Failed(TransferError::Source(io::Error::other(why)));
                }
                Part::NotYet => {}
            }
        }
        let (frame, data) = tokio::select! {
            biased;
            _ = signals.wake.notified() => {
                let control = signals.take();
                if control.done {
                    return match sink.send(Message::Binary(encode_done_ack().into())).await {
                        Ok(()) => Outcome::Finished,
                        Err(e) => Outcome::Lost(e.to_string()),
                    };
                }
                if let Some(asked) = control.blob_from {
                    blob = None;
                    want = Some(asked);
                }
                continue;
            }
            // The part asked for is not made yet: wait for the feed.
            _ = feed.changed.notified(), if want.is_some() => continue,
            produced = frames.recv() => match produced {
                Some(Produced::Frame { epoch, bytes, chunks, plain, gone }) => {
                    if !pipeline.is_current(epoch) {
                        continue;
                    }
                    stats.chunks += chunks;
                    stats.bytes += plain;
                    stats.gone += gone;
                    let data = bytes.len();
                    (bytes, data)
                }
                Some(Produced::Failed(e)) => return Outcome::Failed(TransferError::Source(e)),
                None => {
                    return Outcome::Failed(TransferError::Protocol("the reading thread stopped".into()));
                }
            },
            _ = std::future::ready(()), if blob.is_some() => {
                let Some((seq, part, at)) = blob.take() else { continue };
                let end = (at + BLOB_PART).min(part.len());
                let frame = match encode_blob(seq, part.len() as u64, at as u64, &part[at..end]) {
                    Ok(f) => f,
                    Err(e) => return Outcome::Failed(TransferError::Protocol(e.to_string())),
                };
                stats.blob_bytes += (end - at) as u64;
                if end < part.len() {
                    blob = Some((seq, part, end));
                }
                (frame, end - at)
            }
        };
        stats.wire_bytes += frame.len() as u64;
        if let Err(e) = sink.send(Message::Binary(Bytes::from(frame))).await {
            return Outcome::Lost(e.to_string());
        }
        *data_bytes += data as u64;
        if let Some(limit) = conn.tuning.drop_after_bytes
            && !*hook_fired
            && *data_bytes >= limit
        {
            *hook_fired = true;
            tracing::warn!(
                limit,
                "{} set: dropping the transfer socket",
                super::DROP_AFTER_BYTES_VAR
            );
            return Outcome::Lost("test hook".into());
        }
    }
}
