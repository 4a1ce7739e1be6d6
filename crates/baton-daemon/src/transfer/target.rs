//! The target's end: fetches the blob, asks for chunks within a window, verifies and stores them
//! on a blocking thread, and asks again after any reconnect for what it has not received.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_crypto::TransferCipher;
use baton_proto::transfer::{
    Frame, MAX_HASHES_PER_FRAME, MAX_OUTSTANDING_CHUNKS, SEALED_OVERHEAD, TransferRole, decode,
    encode_abort, encode_done, encode_want, encode_want_blob,
};
use baton_proto::workspace::{ChunkRef, ContentHash};
use bytes::BytesMut;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Bytes;
use tokio_util::sync::CancellationToken;

use super::link::{Event, Link};
use super::{ChunkSink, Result, TransferConn, TransferError};

/// Frames waiting for each verifying thread; reading the socket pauses when the one a frame goes
/// to is full, which is how a slow disk slows the source down.
const JOB_QUEUE: usize = 3;
/// Threads opening, checking and storing received frames, one per lane (see
/// [`Receiver::chunks_in_lanes`]).
pub const VERIFY_WORKERS: usize = 2;
/// Silence after which the target asks again for every chunk it is still waiting for.
const STALL_REASK: Duration = Duration::from_secs(10);
/// How long [`Receiver::finish`] waits for the source to acknowledge the end.
const DONE_WAIT: Duration = Duration::from_secs(10);

/// How far a [`Receiver::chunks`] call got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Chunks stored.
    pub chunks: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Chunks to receive (distinct).
    pub chunks_total: u64,
    /// Bytes to receive (distinct chunks).
    pub bytes_total: u64,
}

/// What the target received, over the whole transfer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    /// Chunks verified and stored.
    pub chunks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes of the sealed blob.
    pub blob_bytes: u64,
    /// Bytes of binary frames sent and received.
    pub wire_bytes: u64,
    /// Reconnections of this side.
    pub reconnects: u32,
    /// Chunks the source could not produce (their files changed); ask for them again later.
    pub gone: Vec<ContentHash>,
    /// Chunks received that were not (or no longer) asked for, and dropped.
    pub duplicates: u64,
    /// Most bytes asked for and not yet received at any moment (never above the window, except
    /// for a single chunk larger than it).
    pub peak_outstanding_bytes: u64,
}

/// The target's end of one transfer.
pub struct Receiver {
    link: Link,
    cipher: TransferCipher,
    stats: ReceiveStats,
}

/// One frame's accepted chunks of one lane, for that lane's verifying thread.
struct Job {
    /// The frame, or the part of it that holds `entries`: the thread decrypts over it.
    frame: BytesMut,
    entries: Vec<(ContentHash, Range<usize>)>,
    lane: Option<u8>,
}

/// What the verifying thread reports.
#[derive(Default)]
struct Done {
    chunks: u64,
    bytes: u64,
    jobs: u64,
    error: Option<TransferError>,
}

struct Shared {
    done: Mutex<Done>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Done> {
        self.done.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Opens and stores chunks, in arrival order, until the queue closes or something fails.
fn verify_and_store(
    mut jobs: mpsc::Receiver<Job>,
    cipher: TransferCipher,
    sink: Arc<dyn ChunkSink>,
    shared: Arc<Shared>,
) {
    while let Some(job) = jobs.blocking_recv() {
        // Opened where it lies: the frame is this worker's alone, so the chunks are decrypted
        // over it instead of into copies.
        let mut frame = job.frame;
        for (hash, range) in job.entries {
            let stored = cipher
                .open_chunk_in_place(&hash, &mut frame[range])
                .map_err(|source| TransferError::Verify {
                    what: format!("chunk {hash:?}"),
                    source,
                })
                .and_then(|data| {
                    sink.put(&hash, data)
                        .map(|()| data.len() as u64)
                        .map_err(TransferError::Sink)
                });
            let mut done = shared.lock();
            match stored {
                Ok(len) => {
                    done.chunks += 1;
                    done.bytes += len;
                }
                Err(e) => {
                    done.error = Some(e);
                    drop(done);
                    shared.wake.notify_one();
                    return;
                }
            }
        }
        shared.lock().jobs += 1;
        shared.wake.notify_one();
    }
}

/// A chunk accepted from a frame: its name, where its sealed bytes lie and its lane.
type Accepted = (ContentHash, Range<usize>, Option<u8>);

/// Cuts a frame's accepted chunks into one job per run of one lane, each job holding the part of
/// the frame its chunks lie in (parts that no job holds are dropped with the frame).
fn split_by_lane(bytes: Bytes, accepted: Vec<Accepted>) -> Vec<Job> {
    if accepted.is_empty() {
        return Vec::new();
    }
    // The frame is normally this receiver's alone; when it is not, one copy makes it so.
    let mut rest = bytes
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    // Where `rest` starts in the frame.
    let mut base = 0usize;
    let mut jobs: Vec<Job> = Vec::new();
    let mut entries = Vec::new();
    let mut lane = accepted[0].2;
    let mut start = accepted[0].1.start;
    for (hash, range, l) in accepted {
        if l != lane {
            // Entries lie in frame order: the run so far ends before this entry.
            let mut part = rest.split_to(range.start - base);
            let _ = part.split_to(start - base);
            jobs.push(Job {
                frame: part,
                entries: std::mem::take(&mut entries),
                lane,
            });
            base = range.start;
            start = range.start;
            lane = l;
        }
        entries.push((hash, range.start - start..range.end - start));
    }
    let _ = rest.split_to(start - base);
    jobs.push(Job {
        frame: rest,
        entries,
        lane,
    });
    jobs
}

/// Requests in flight and still to make.
struct Window {
    /// Request round: bumped at each re-ask. A re-ask voids the earlier rounds on both sides:
    /// the source answers it whole, so an earlier answer arriving late is dropped here rather
    /// than stored, and nothing stored is then sent again for the re-ask.
    round: u32,
    /// Bytes of the chunks accepted so far (reported when asking again).
    received_bytes: u64,
    /// Chunks to ask for, each with its lane.
    queue: VecDeque<(ChunkRef, Option<u8>)>,
    /// Chunks asked for: length and lane.
    outstanding: HashMap<ContentHash, (u32, Option<u8>)>,
    outstanding_bytes: u64,
    max_bytes: u64,
    max_chunks: usize,
}

impl Window {
    /// Takes the next requests that fit the window (at least one when nothing is in flight).
    fn next_batch(&mut self) -> Vec<ContentHash> {
        let mut batch = Vec::new();
        while let Some((c, lane)) = self.queue.front().copied() {
            let fits = self.outstanding_bytes + u64::from(c.len) <= self.max_bytes
                && self.outstanding.len() < self.max_chunks;
            if !fits && !self.outstanding.is_empty() {
                break;
            }
            self.queue.pop_front();
            self.outstanding.insert(c.hash, (c.len, lane));
            self.outstanding_bytes += u64::from(c.len);
            batch.push(c.hash);
        }
        batch
    }

    /// Marks `hash` received or gone; its length and lane when it was asked for.
    fn settle(&mut self, hash: &ContentHash) -> Option<(u32, Option<u8>)> {
        let (len, lane) = self.outstanding.remove(hash)?;
        self.outstanding_bytes -= u64::from(len);
        self.received_bytes += u64::from(len);
        Some((len, lane))
    }
}

impl Receiver {
    /// Connects the target's socket of `conn.transfer` (retrying within the reconnect timeout).
    pub async fn connect(
        conn: TransferConn,
        cipher: TransferCipher,
        cancel: CancellationToken,
    ) -> Result<Self> {
        let link = Link::open(conn, TransferRole::Target, cancel).await?;
        Ok(Self {
            link,
            cipher,
            stats: ReceiveStats::default(),
        })
    }

    /// How full the source fills its frames: the unit of the request order (see
    /// `Stager::missing_chunks_interleaved`).
    pub fn frame_bytes(&self) -> usize {
        self.link.conn().tuning.frame_bytes
    }

    /// Statistics so far.
    pub fn stats(&self) -> ReceiveStats {
        let mut s = self.stats.clone();
        s.wire_bytes = self.link.wire_bytes;
        s.reconnects = self.link.reconnects;
        s
    }

    async fn send_wants(&mut self, round: u32, hashes: &[ContentHash]) -> Result<()> {
        for part in hashes.chunks(MAX_HASHES_PER_FRAME) {
            let frame =
                encode_want(round, part).map_err(|e| TransferError::Protocol(e.to_string()))?;
            self.link.send(frame).await?;
        }
        Ok(())
    }

    /// On a fatal local error, tells the source before returning it.
    async fn fail<T>(&mut self, e: TransferError) -> Result<T> {
        if !matches!(
            e,
            TransferError::Refused(_) | TransferError::PeerAborted(_) | TransferError::Cancelled
        ) {
            let _ = self.link.send(encode_abort(&e.to_string())).await;
        }
        Err(e)
    }

    /// Fetches the source's blob `seq` (a sealed part of the manifest; the source may still be
    /// making it), reassembling its frames, and opens it.
    pub async fn blob(&mut self, seq: u32) -> Result<Vec<u8>> {
        match self.fetch_blob(seq).await {
            Ok(sealed) => match self.cipher.open_blob(seq, &sealed) {
                Ok(plain) => Ok(plain),
                Err(source) => {
                    self.fail(TransferError::Verify {
                        what: "the manifest".into(),
                        source,
                    })
                    .await
                }
            },
            Err(e) => self.fail(e).await,
        }
    }

    async fn fetch_blob(&mut self, seq: u32) -> Result<Vec<u8>> {
        let mut buf: Vec<u8> = Vec::new();
        let mut total: Option<u64> = None;
        if self.link.peer() {
            self.link.send(encode_want_blob(seq, 0)).await?;
        }
        loop {
            if total == Some(buf.len() as u64) {
                self.stats.blob_bytes += buf.len() as u64;
                return Ok(buf);
            }
            match self.link.next().await? {
                Event::Frame(bytes) => match decode(&bytes) {
                    Ok(Frame::Blob {
                        seq: s,
                        total: t,
                        offset,
                        part,
                    }) if s == seq => {
                        if total.is_some_and(|known| known != t) {
                            return Err(TransferError::Protocol(
                                "the blob changed size during the transfer".into(),
                            ));
                        }
                        total = Some(t);
                        // Parts of an earlier request may still arrive after a re-ask; only the
                        // one that continues the blob is taken.
                        if offset == buf.len() as u64 {
                            if buf.is_empty() {
                                // `t` is at most MAX_BLOB_BYTES (checked by decode).
                                buf.reserve_exact(t as usize);
                            }
                            buf.extend_from_slice(part);
                            self.link.count_data(part.len());
                        }
                    }
                    Ok(Frame::Abort(reason)) => {
                        return Err(TransferError::PeerAborted(reason.to_string()));
                    }
                    // Frames of an earlier blob or of requests already settled.
                    Ok(
                        Frame::Blob { .. }
                        | Frame::Chunks { .. }
                        | Frame::Gone { .. }
                        | Frame::DoneAck,
                    ) => {}
                    Ok(other) => {
                        return Err(TransferError::Protocol(format!(
                            "unexpected frame from the source: {other:?}"
                        )));
                    }
                    Err(e) => return Err(TransferError::Protocol(e.to_string())),
                },
                Event::PeerJoined | Event::Reconnected { peer: true } => {
                    self.link
                        .send(encode_want_blob(seq, buf.len() as u64))
                        .await?;
                }
                Event::PeerLeft | Event::Reconnected { peer: false } => {}
            }
        }
    }

    /// Receives every chunk of `wanted` (duplicates are asked for once) into `sink`, calling
    /// `progress` as frames are stored. Chunks the source reports gone are listed in the
    /// returned statistics instead of failing the transfer. Frames are shared out among the
    /// verifying threads in turn.
    pub async fn chunks(
        &mut self,
        sink: Arc<dyn ChunkSink>,
        wanted: Vec<ChunkRef>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<ReceiveStats> {
        let wanted = wanted.into_iter().map(|c| (c, None)).collect();
        self.receive_chunks(sink, wanted, progress).await
    }

    /// [`Receiver::chunks`] where each chunk names its lane: the chunks of lane `l` are stored
    /// by verifying thread `l % VERIFY_WORKERS`, in the order they arrive (a frame that holds
    /// chunks of two lanes is cut in two). A writer that keeps each file in one lane writes
    /// every file from one thread, in order, while the other thread writes another file: the
    /// kernel lets one write into a file at a time, so two threads on one file take turns.
    pub async fn chunks_in_lanes(
        &mut self,
        sink: Arc<dyn ChunkSink>,
        wanted: Vec<(ChunkRef, u8)>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<ReceiveStats> {
        let wanted = wanted.into_iter().map(|(c, l)| (c, Some(l))).collect();
        self.receive_chunks(sink, wanted, progress).await
    }

    async fn receive_chunks(
        &mut self,
        sink: Arc<dyn ChunkSink>,
        wanted: Vec<(ChunkRef, Option<u8>)>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<ReceiveStats> {
        let mut seen = HashSet::with_capacity(wanted.len());
        let queue: VecDeque<(ChunkRef, Option<u8>)> = wanted
            .into_iter()
            .filter(|(c, _)| seen.insert(c.hash))
            .collect();
        drop(seen);
        let mut shown = Progress {
            chunks_total: queue.len() as u64,
            bytes_total: queue.iter().map(|(c, _)| u64::from(c.len)).sum(),
            ..Progress::default()
        };
        let tuning = &self.link.conn().tuning;
        let mut window = Window {
            round: 0,
            queue,
            outstanding: HashMap::new(),
            outstanding_bytes: 0,
            received_bytes: 0,
            max_bytes: tuning.window_bytes.max(1),
            // Re-asks after a reconnect may briefly double what the source holds.
            max_chunks: tuning.window_chunks.clamp(1, MAX_OUTSTANDING_CHUNKS / 2),
        };
        let shared = Arc::new(Shared {
            done: Mutex::new(Done::default()),
            wake: Notify::new(),
        });
        // Opening and checking a frame (AES-GCM, BLAKE3) costs about what storing it does: with
        // two workers one opens while the other writes, so the target's CPU is not one thread.
        let (job_txs, workers): (Vec<_>, Vec<_>) = (0..VERIFY_WORKERS)
            .map(|_| {
                let (job_tx, jobs) = mpsc::channel::<Job>(JOB_QUEUE);
                let (cipher, sink, shared) = (self.cipher.clone(), sink.clone(), shared.clone());
                let worker = tokio::task::spawn_blocking(move || {
                    verify_and_store(jobs, cipher, sink, shared)
                });
                (job_tx, worker)
            })
            .unzip();
        let before = (self.stats.chunks, self.stats.bytes);
        let result = self
            .drive(&mut window, &shared, job_txs, progress, &mut shown)
            .await;
        // The senders are gone (moved into `drive`), so the workers end after their last job.
        for worker in workers {
            let _ = worker.await;
        }
        let (chunks, bytes) = {
            let done = shared.lock();
            (done.chunks, done.bytes)
        };
        self.stats.chunks = before.0 + chunks;
        self.stats.bytes = before.1 + bytes;
        match result {
            Ok(()) => Ok(self.stats()),
            Err(e) => self.fail(e).await,
        }
    }

    async fn drive(
        &mut self,
        window: &mut Window,
        shared: &Shared,
        job_txs: Vec<mpsc::Sender<Job>>,
        progress: &mut (dyn FnMut(Progress) + Send),
        shown: &mut Progress,
    ) -> Result<()> {
        let mut jobs_sent = 0u64;
        // Frames without a lane go to the workers in turn.
        let mut turn = 0usize;
        if self.link.peer() {
            self.top_up(window).await?;
        }
        loop {
            let (chunks, bytes, jobs_done, error) = {
                let mut done = shared.lock();
                (done.chunks, done.bytes, done.jobs, done.error.take())
            };
            if chunks != shown.chunks {
                shown.chunks = chunks;
                shown.bytes = bytes;
                progress(*shown);
            }
            if let Some(e) = error {
                return Err(e);
            }
            if window.queue.is_empty() && window.outstanding.is_empty() && jobs_done == jobs_sent {
                return Ok(());
            }
            let event = tokio::select! {
                biased;
                _ = shared.wake.notified() => continue,
                event = self.link.next() => event?,
                // A request can be lost around a reconnect (the relay drops frames while a side
                // is away); with nothing heard for a while, ask again for all that is missing
                // rather than wait out the handoff's timeout.
                _ = tokio::time::sleep(STALL_REASK) => {
                    if !window.outstanding.is_empty() && self.link.peer() {
                        window.round = window.round.wrapping_add(1);
                        let again: Vec<ContentHash> = window.outstanding.keys().copied().collect();
                        tracing::info!(
                            chunks = again.len(),
                            round = window.round,
                            "nothing received for a while; asking again"
                        );
                        self.send_wants(window.round, &again).await?;
                    }
                    continue;
                }
            };
            match event {
                Event::Frame(bytes) => {
                    for job in self.accept(window, bytes)? {
                        let worker = match job.lane {
                            Some(lane) => usize::from(lane),
                            None => {
                                turn = turn.wrapping_add(1);
                                turn
                            }
                        } % job_txs.len();
                        jobs_sent += 1;
                        // An error means the thread stopped on an error, reported at the top.
                        let _ = job_txs[worker].send(job).await;
                    }
                    self.top_up(window).await?;
                }
                Event::PeerJoined | Event::Reconnected { peer: true } => {
                    window.round = window.round.wrapping_add(1);
                    let again: Vec<ContentHash> = window.outstanding.keys().copied().collect();
                    if !again.is_empty() {
                        tracing::info!(
                            chunks = again.len(),
                            bytes = window.outstanding_bytes,
                            received = window.received_bytes,
                            round = window.round,
                            "asking again after a reconnect"
                        );
                    }
                    self.send_wants(window.round, &again).await?;
                    self.top_up(window).await?;
                }
                Event::PeerLeft | Event::Reconnected { peer: false } => {}
            }
        }
    }

    /// Asks for more chunks while the window allows.
    async fn top_up(&mut self, window: &mut Window) -> Result<()> {
        if !self.link.peer() {
            return Ok(());
        }
        let batch = window.next_batch();
        self.stats.peak_outstanding_bytes = self
            .stats
            .peak_outstanding_bytes
            .max(window.outstanding_bytes);
        self.send_wants(window.round, &batch).await
    }

    /// Takes the chunks of a frame that are still wanted, as one job per run of chunks of one
    /// lane; settles `gone` hashes.
    fn accept(&mut self, window: &mut Window, bytes: Bytes) -> Result<Vec<Job>> {
        let accepted = self.accept_entries(window, &bytes)?;
        Ok(split_by_lane(bytes, accepted))
    }

    /// The chunks of a frame that are still wanted, with their places in the frame and lanes.
    fn accept_entries(&mut self, window: &mut Window, bytes: &Bytes) -> Result<Vec<Accepted>> {
        let frame = decode(bytes).map_err(|e| TransferError::Protocol(e.to_string()))?;
        match frame {
            Frame::Chunks { round, chunks } => {
                self.link.count_data(bytes.len());
                if round != window.round {
                    tracing::debug!(
                        round,
                        current = window.round,
                        chunks = chunks.len(),
                        "dropping an answer to an earlier round: the re-ask brings it again"
                    );
                    self.stats.duplicates += chunks.len() as u64;
                    return Ok(Vec::new());
                }
                let mut entries = Vec::with_capacity(chunks.len());
                for entry in chunks.iter() {
                    match window.settle(&entry.hash) {
                        Some((len, lane))
                            if entry.sealed.len() == len as usize + SEALED_OVERHEAD =>
                        {
                            entries.push((entry.hash, entry.range, lane));
                        }
                        Some((len, _)) => {
                            return Err(TransferError::Protocol(format!(
                                "chunk {:?} is {} sealed bytes, the manifest says {len} plain",
                                entry.hash,
                                entry.sealed.len()
                            )));
                        }
                        None => self.stats.duplicates += 1,
                    }
                }
                Ok(entries)
            }
            Frame::Gone { round, hashes } => {
                if round != window.round {
                    return Ok(Vec::new());
                }
                for hash in hashes.iter() {
                    if window.settle(&hash).is_some() {
                        self.stats.gone.push(hash);
                    }
                }
                Ok(Vec::new())
            }
            Frame::Abort(reason) => Err(TransferError::PeerAborted(reason.to_string())),
            Frame::Blob { .. } | Frame::DoneAck => Ok(Vec::new()),
            other => Err(TransferError::Protocol(format!(
                "unexpected frame from the source: {other:?}"
            ))),
        }
    }

    /// Ends the transfer: tells the source it is done, waits briefly for its acknowledgement
    /// (the source may already be gone; the data is here either way) and closes the socket.
    pub async fn finish(mut self) -> Result<ReceiveStats> {
        let stats = self.stats();
        if self.link.peer() {
            self.link.send(encode_done()).await?;
        }
        let acked: std::result::Result<Result<()>, _> = tokio::time::timeout(DONE_WAIT, async {
            loop {
                match self.link.next().await? {
                    Event::Frame(bytes) => {
                        if matches!(decode(&bytes), Ok(Frame::DoneAck | Frame::Abort(_))) {
                            return Ok(());
                        }
                    }
                    Event::PeerJoined | Event::Reconnected { peer: true } => {
                        self.link.send(encode_done()).await?;
                    }
                    Event::PeerLeft | Event::Reconnected { peer: false } => {}
                }
            }
        })
        .await;
        match acked {
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "transfer ended without the source's acknowledgement")
            }
            Err(_) => tracing::warn!("the source did not acknowledge the end of the transfer"),
            Ok(Ok(())) => {}
        }
        self.link.close().await;
        Ok(stats)
    }

    /// Gives up: tells the source why and closes the socket.
    pub async fn abort(mut self, reason: &str) {
        let _ = self.link.send(encode_abort(reason)).await;
        self.link.close().await;
    }
}

/// Connects, receives `wanted` into `sink` and finishes: the whole target side of a transfer
/// without a blob.
pub async fn receive(
    conn: TransferConn,
    cipher: TransferCipher,
    sink: Arc<dyn ChunkSink>,
    wanted: Vec<ChunkRef>,
    progress: &mut (dyn FnMut(Progress) + Send),
    cancel: CancellationToken,
) -> Result<ReceiveStats> {
    let mut receiver = Receiver::connect(conn, cipher, cancel).await?;
    receiver.chunks(sink, wanted, progress).await?;
    receiver.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8, len: u32) -> ChunkRef {
        ChunkRef {
            hash: ContentHash([n; 32]),
            len,
        }
    }

    fn window(max_bytes: u64, max_chunks: usize, chunks: Vec<ChunkRef>) -> Window {
        Window {
            round: 0,
            queue: chunks.into_iter().map(|c| (c, None)).collect(),
            outstanding: HashMap::new(),
            outstanding_bytes: 0,
            received_bytes: 0,
            max_bytes,
            max_chunks,
        }
    }

    #[test]
    fn window_honours_bytes_and_count() {
        let mut w = window(100, 3, vec![c(1, 40), c(2, 40), c(3, 40), c(4, 10)]);
        assert_eq!(w.next_batch().len(), 2);
        assert_eq!(w.outstanding_bytes, 80);
        assert!(w.next_batch().is_empty());
        assert_eq!(w.settle(&ContentHash([1; 32])), Some((40, None)));
        assert_eq!(w.settle(&ContentHash([1; 32])), None, "settled once");
        // 40 + 40 + 10 fits 100 but the count limit is 3.
        assert_eq!(w.next_batch().len(), 2);
        assert_eq!(w.outstanding.len(), 3);
    }

    #[test]
    fn a_frame_is_cut_where_its_lane_changes() {
        let frame = Bytes::from((0..100u8).collect::<Vec<_>>());
        let h = |n: u8| ContentHash([n; 32]);
        let accepted = vec![
            (h(1), 10..20, Some(0)),
            (h(2), 25..30, Some(0)),
            (h(3), 30..50, Some(1)),
            (h(4), 60..70, Some(0)),
        ];
        let jobs = split_by_lane(frame, accepted);
        let seen: Vec<_> = jobs
            .iter()
            .map(|j| {
                let bytes: Vec<Vec<u8>> = j
                    .entries
                    .iter()
                    .map(|(_, r)| j.frame[r.clone()].to_vec())
                    .collect();
                (
                    j.lane,
                    j.entries.iter().map(|(h, _)| h.0[0]).collect::<Vec<_>>(),
                    bytes,
                )
            })
            .collect();
        let range = |r: std::ops::Range<u8>| r.collect::<Vec<u8>>();
        assert_eq!(
            seen,
            vec![
                (Some(0), vec![1, 2], vec![range(10..20), range(25..30)]),
                (Some(1), vec![3], vec![range(30..50)]),
                (Some(0), vec![4], vec![range(60..70)]),
            ]
        );
        // Each job holds only its own part of the frame.
        assert_eq!(jobs[0].frame.len(), 20);
        assert_eq!(jobs[1].frame.len(), 30);
        assert_eq!(jobs[2].frame.len(), 40);
        let one = split_by_lane(Bytes::from(vec![7u8; 10]), vec![(h(5), 2..6, None)]);
        assert_eq!(one.len(), 1);
        assert_eq!(&one[0].frame[one[0].entries[0].1.clone()], &[7, 7, 7, 7]);
        assert!(split_by_lane(Bytes::from(vec![0u8; 4]), Vec::new()).is_empty());
    }

    #[test]
    fn a_chunk_larger_than_the_window_still_goes_alone() {
        let mut w = window(10, 8, vec![c(1, 50), c(2, 5)]);
        assert_eq!(w.next_batch(), vec![ContentHash([1; 32])]);
        assert!(w.next_batch().is_empty());
        w.settle(&ContentHash([1; 32]));
        assert_eq!(w.next_batch(), vec![ContentHash([2; 32])]);
    }
}
