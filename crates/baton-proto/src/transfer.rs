//! The workspace-transfer stream (DESIGN §5): binary frames exchanged by a transfer's source and
//! target daemons over `GET /v1/transfers/{id}/ws?role=source|target`, relayed by the server.
//!
//! The target drives the transfer: it asks for chunks by hash (`want`), keeping a window of
//! requested bytes; the source answers with `chunks` frames, each carrying one or more sealed
//! chunks, or `gone` for chunks it can no longer produce. The sealed manifest travels the same way
//! as a `blob` split into parts. After a reconnect of either side the target asks again, in a new
//! *round*, for what it has not received; answers carry the round of their request, so an answer
//! to an older round still in flight is recognised and dropped instead of being stored while its
//! re-ask is served too. Nothing stored is ever asked for again, and the source keeps no state
//! per request.
//!
//! Frame layout (integers big-endian):
//!
//! ```text
//! frame      = version:u8 (= 2) ‖ kind:u8 ‖ body
//! 1 want     = round:u32 ‖ count:u32 ‖ count × hash[32]          target → source
//! 2 chunks   = round:u32 ‖ count:u32 ‖ count × (hash[32] ‖ len:u32 ‖ sealed[len])
//!                                                                source → target
//! 3 gone     = round:u32 ‖ count:u32 ‖ count × hash[32]          source → target
//! 4 want_blob= seq:u32 ‖ offset:u64                              target → source
//! 5 blob     = seq:u32 ‖ total:u64 ‖ offset:u64 ‖ part (rest)   source → target
//! 6 done     = (empty)                                           target → source
//! 7 done_ack = (empty)                                           source → target
//! 8 abort    = reason (UTF-8, rest of the frame)                 either way
//! ```
//!
//! The server reads only the first two bytes (to refuse frames going the wrong way, count data
//! bytes and notice the end); everything after them is opaque to it, and every `sealed` and blob
//! part is ciphertext. Every decoder here bounds what it accepts and returns an error, never
//! panics, on hostile input. The server speaks to each side in small JSON text frames
//! ([`TransferNotice`]).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::ApiError;
use crate::workspace::{ChunkParams, ContentHash};

/// Version byte of every frame; bumped on any incompatible change.
pub const FRAME_VERSION: u8 = 2;

/// Largest frame (WebSocket message) either side or the server accepts on a transfer socket.
pub const MAX_TRANSFER_FRAME: usize = 8 * 1024 * 1024;

/// Bytes a sealed chunk adds to its plaintext (envelope version, nonce, tag).
pub const SEALED_OVERHEAD: usize = 1 + 12 + 16;

/// Largest sealed chunk: the largest chunk any manifest may cut, sealed.
pub const MAX_SEALED_CHUNK: usize = ChunkParams::MAX_CHUNK as usize + SEALED_OVERHEAD;

/// Most hashes one `want` or `gone` frame lists.
pub const MAX_HASHES_PER_FRAME: usize = 65_536;

/// Most chunks a target may have asked for and not yet received; a source refuses more.
pub const MAX_OUTSTANDING_CHUNKS: usize = 65_536;

/// Largest blob (sealed manifest) a transfer carries.
pub const MAX_BLOB_BYTES: u64 = 256 * 1024 * 1024;

/// Longest `abort` reason, in bytes.
pub const MAX_ABORT_REASON: usize = 1024;

/// Bytes of the frame header (version, kind).
const HEADER: usize = 2;
/// Where the count of a `want`, `chunks` or `gone` frame starts (after the round).
const COUNT_AT: usize = HEADER + 4;
/// Bytes of one chunk entry's header (hash, length).
const ENTRY_HEADER: usize = 32 + 4;

/// Which end of a transfer a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferRole {
    /// The machine that has the workspace and answers requests.
    Source,
    /// The machine that receives it and drives the requests.
    Target,
}

impl TransferRole {
    /// The stable string, as in the URL query.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Target => "target",
        }
    }

    /// The other end.
    pub fn peer(self) -> Self {
        match self {
            Self::Source => Self::Target,
            Self::Target => Self::Source,
        }
    }
}

/// Query of `GET /v1/transfers/{id}/ws`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferQuery {
    /// Which end the connecting machine is.
    pub role: TransferRole,
}

/// The path of a transfer's WebSocket for one end.
pub fn transfer_ws_path(transfer: crate::HandoffId, role: TransferRole) -> String {
    format!("/v1/transfers/{transfer}/ws?role={}", role.as_str())
}

/// What the server tells one side of a transfer (JSON text frames).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TransferNotice {
    /// First frame after the upgrade: whether the peer is connected right now.
    Joined {
        /// The peer is connected.
        peer: bool,
    },
    /// The peer connected (a new connection: whatever was asked before is void) or left.
    Peer {
        /// The peer is connected now.
        connected: bool,
    },
    /// The server ends the transfer (e.g. `transfer_too_large`); do not reconnect.
    Closed {
        /// Why.
        error: ApiError,
    },
}

/// The kind of a frame (its second byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Target asks for chunks.
    Want,
    /// Source sends sealed chunks.
    Chunks,
    /// Source cannot produce these chunks (their file changed).
    Gone,
    /// Target asks for the blob from an offset.
    WantBlob,
    /// Source sends a part of the blob.
    Blob,
    /// Target has everything it asked for; the transfer ends.
    Done,
    /// Source acknowledges `done`.
    DoneAck,
    /// Either side gives up, with a reason.
    Abort,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Want,
            2 => Self::Chunks,
            3 => Self::Gone,
            4 => Self::WantBlob,
            5 => Self::Blob,
            6 => Self::Done,
            7 => Self::DoneAck,
            8 => Self::Abort,
            _ => return None,
        })
    }

    fn byte(self) -> u8 {
        match self {
            Self::Want => 1,
            Self::Chunks => 2,
            Self::Gone => 3,
            Self::WantBlob => 4,
            Self::Blob => 5,
            Self::Done => 6,
            Self::DoneAck => 7,
            Self::Abort => 8,
        }
    }

    /// True when a connection of `role` may send this kind: the server refuses the rest, so a
    /// target can never inject chunks and a source never requests.
    pub fn allowed_from(self, role: TransferRole) -> bool {
        match self {
            Self::Abort => true,
            Self::Want | Self::WantBlob | Self::Done => role == TransferRole::Target,
            Self::Chunks | Self::Gone | Self::Blob | Self::DoneAck => role == TransferRole::Source,
        }
    }
}

/// Why a frame could not be decoded or built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than a header.
    #[error("transfer frame is empty or shorter than its header")]
    Empty,
    /// Another protocol version.
    #[error("transfer frame has version {0}, this side speaks version {FRAME_VERSION}")]
    Version(u8),
    /// An unknown kind byte.
    #[error("transfer frame has unknown kind {0}")]
    Kind(u8),
    /// Larger than [`MAX_TRANSFER_FRAME`].
    #[error("transfer frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The body ends early or has bytes left over.
    #[error("malformed {kind} frame: {what}")]
    Malformed {
        /// Which kind.
        kind: &'static str,
        /// What is wrong.
        what: &'static str,
    },
}

fn malformed(kind: &'static str, what: &'static str) -> FrameError {
    FrameError::Malformed { kind, what }
}

/// A list of hashes inside a frame, already checked to be whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashList<'a>(&'a [u8]);

impl<'a> HashList<'a> {
    /// Number of hashes.
    pub fn len(&self) -> usize {
        self.0.len() / 32
    }
    /// True when the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The hashes in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = ContentHash> + 'a {
        self.0.chunks_exact(32).map(|h| {
            let mut out = [0u8; 32];
            out.copy_from_slice(h);
            ContentHash(out)
        })
    }
}

/// One sealed chunk inside a `chunks` frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkEntry<'a> {
    /// The chunk's name (BLAKE3 of its plaintext), bound into the seal.
    pub hash: ContentHash,
    /// The sealed bytes.
    pub sealed: &'a [u8],
    /// Where `sealed` lies in the frame, so a receiver can hand the frame to another thread
    /// without copying it.
    pub range: Range<usize>,
}

/// The entries of a `chunks` frame, already checked to be whole and within limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkList<'a> {
    frame: &'a [u8],
    count: usize,
}

impl<'a> ChunkList<'a> {
    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.count
    }
    /// True when the frame carries no chunk.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = ChunkEntry<'a>> + 'a {
        let frame = self.frame;
        let mut at = COUNT_AT + 4;
        (0..self.count).map(move |_| {
            // Bounds were all checked by `decode`, so slicing here cannot fail.
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&frame[at..at + 32]);
            let len = read_u32(&frame[at + 32..at + ENTRY_HEADER]) as usize;
            let start = at + ENTRY_HEADER;
            at = start + len;
            ChunkEntry {
                hash: ContentHash(hash),
                sealed: &frame[start..at],
                range: start..at,
            }
        })
    }
}

/// A decoded frame, borrowing from the received bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Target asks for these chunks.
    Want {
        /// The target's request round (bumped at each re-ask after a reconnect).
        round: u32,
        /// The chunks.
        hashes: HashList<'a>,
    },
    /// Sealed chunks, answering requests of `round`.
    Chunks {
        /// The round of the requests answered.
        round: u32,
        /// The chunks.
        chunks: ChunkList<'a>,
    },
    /// Chunks the source can no longer produce, asked for in `round`.
    Gone {
        /// The round of the requests answered.
        round: u32,
        /// The chunks.
        hashes: HashList<'a>,
    },
    /// Target asks for blob `seq` from `offset` (a source may stream its manifest as several
    /// blobs, 0, 1, …; the last one says it is the last inside its sealed content).
    WantBlob {
        /// Which blob.
        seq: u32,
        /// First byte wanted.
        offset: u64,
    },
    /// A part of the sealed blob `seq`.
    Blob {
        /// Which blob.
        seq: u32,
        /// The blob's whole length.
        total: u64,
        /// Where this part starts.
        offset: u64,
        /// The part.
        part: &'a [u8],
    },
    /// The target is finished.
    Done,
    /// The source saw `done`.
    DoneAck,
    /// The sender gives up.
    Abort(&'a str),
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The kind of a frame after checking its version, without decoding the body (what the server
/// needs to relay it).
pub fn frame_kind(frame: &[u8]) -> Result<FrameKind, FrameError> {
    let [version, kind, ..] = frame else {
        return Err(FrameError::Empty);
    };
    if *version != FRAME_VERSION {
        return Err(FrameError::Version(*version));
    }
    FrameKind::from_byte(*kind).ok_or(FrameError::Kind(*kind))
}

fn round_of(kind: &'static str, frame: &[u8]) -> Result<u32, FrameError> {
    frame
        .get(HEADER..COUNT_AT)
        .map(read_u32)
        .ok_or_else(|| malformed(kind, "no round"))
}

fn hash_list<'a>(kind: &'static str, frame: &'a [u8]) -> Result<(u32, HashList<'a>), FrameError> {
    let round = round_of(kind, frame)?;
    let (count, hashes) = frame[COUNT_AT..]
        .split_first_chunk::<4>()
        .ok_or_else(|| malformed(kind, "no count"))?;
    let count = u32::from_be_bytes(*count) as usize;
    if count > MAX_HASHES_PER_FRAME {
        return Err(malformed(kind, "too many hashes"));
    }
    if hashes.len() != count * 32 {
        return Err(malformed(kind, "length does not match the count"));
    }
    Ok((round, HashList(hashes)))
}

fn chunk_list(frame: &[u8]) -> Result<(u32, ChunkList<'_>), FrameError> {
    const KIND: &str = "chunks";
    let round = round_of(KIND, frame)?;
    let count = frame
        .get(COUNT_AT..COUNT_AT + 4)
        .map(read_u32)
        .ok_or_else(|| malformed(KIND, "no count"))? as usize;
    // Each entry takes at least its header, so a count larger than that is a lie; checked before
    // walking so a hostile count costs nothing.
    if count > (frame.len() - COUNT_AT - 4) / ENTRY_HEADER {
        return Err(malformed(KIND, "count exceeds the frame"));
    }
    let mut at = COUNT_AT + 4;
    for _ in 0..count {
        let len = frame
            .get(at + 32..at + ENTRY_HEADER)
            .map(read_u32)
            .ok_or_else(|| malformed(KIND, "entry header cut short"))? as usize;
        if len > MAX_SEALED_CHUNK {
            return Err(malformed(KIND, "sealed chunk exceeds the limit"));
        }
        at += ENTRY_HEADER;
        if frame.len() - at < len {
            return Err(malformed(KIND, "sealed chunk cut short"));
        }
        at += len;
    }
    if at != frame.len() {
        return Err(malformed(KIND, "bytes after the last entry"));
    }
    Ok((round, ChunkList { frame, count }))
}

/// Decodes a frame received from the network.
pub fn decode(frame: &[u8]) -> Result<Frame<'_>, FrameError> {
    if frame.len() > MAX_TRANSFER_FRAME {
        return Err(FrameError::TooLarge(frame.len()));
    }
    let kind = frame_kind(frame)?;
    let body = &frame[HEADER..];
    Ok(match kind {
        FrameKind::Want => {
            let (round, hashes) = hash_list("want", frame)?;
            Frame::Want { round, hashes }
        }
        FrameKind::Gone => {
            let (round, hashes) = hash_list("gone", frame)?;
            Frame::Gone { round, hashes }
        }
        FrameKind::Chunks => {
            let (round, chunks) = chunk_list(frame)?;
            Frame::Chunks { round, chunks }
        }
        FrameKind::WantBlob => {
            if body.len() != 12 {
                return Err(malformed("want_blob", "body is not 12 bytes"));
            }
            Frame::WantBlob {
                seq: read_u32(body),
                offset: read_u64(&body[4..]),
            }
        }
        FrameKind::Blob => {
            if body.len() < 20 {
                return Err(malformed("blob", "header cut short"));
            }
            let seq = read_u32(body);
            let total = read_u64(&body[4..]);
            let offset = read_u64(&body[12..]);
            let part = &body[20..];
            if total > MAX_BLOB_BYTES {
                return Err(malformed("blob", "blob exceeds the limit"));
            }
            // `total` is at most MAX_BLOB_BYTES, so the sum cannot overflow past a check.
            if offset > total || part.len() as u64 > total - offset {
                return Err(malformed("blob", "part lies outside the blob"));
            }
            Frame::Blob {
                seq,
                total,
                offset,
                part,
            }
        }
        FrameKind::Done | FrameKind::DoneAck => {
            if !body.is_empty() {
                return Err(malformed("done", "unexpected body"));
            }
            if kind == FrameKind::Done {
                Frame::Done
            } else {
                Frame::DoneAck
            }
        }
        FrameKind::Abort => {
            if body.len() > MAX_ABORT_REASON {
                return Err(malformed("abort", "reason too long"));
            }
            Frame::Abort(
                std::str::from_utf8(body).map_err(|_| malformed("abort", "reason is not UTF-8"))?,
            )
        }
    })
}

fn header(kind: FrameKind, body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body_len);
    out.push(FRAME_VERSION);
    out.push(kind.byte());
    out
}

fn encode_hashes(
    kind: FrameKind,
    round: u32,
    hashes: &[ContentHash],
) -> Result<Vec<u8>, FrameError> {
    if hashes.len() > MAX_HASHES_PER_FRAME {
        return Err(malformed("want", "too many hashes"));
    }
    let mut out = header(kind, 8 + 32 * hashes.len());
    out.extend_from_slice(&round.to_be_bytes());
    out.extend_from_slice(&(hashes.len() as u32).to_be_bytes());
    for h in hashes {
        out.extend_from_slice(h.as_bytes());
    }
    Ok(out)
}

/// A `want` frame of request round `round`; at most [`MAX_HASHES_PER_FRAME`] hashes.
pub fn encode_want(round: u32, hashes: &[ContentHash]) -> Result<Vec<u8>, FrameError> {
    encode_hashes(FrameKind::Want, round, hashes)
}

/// A `gone` frame answering round `round`; at most [`MAX_HASHES_PER_FRAME`] hashes.
pub fn encode_gone(round: u32, hashes: &[ContentHash]) -> Result<Vec<u8>, FrameError> {
    encode_hashes(FrameKind::Gone, round, hashes)
}

/// A `want_blob` frame: blob `seq` from `offset`.
pub fn encode_want_blob(seq: u32, offset: u64) -> Vec<u8> {
    let mut out = header(FrameKind::WantBlob, 12);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// A `blob` frame carrying `part`, which starts at `offset` of blob `seq` of `total` bytes.
pub fn encode_blob(seq: u32, total: u64, offset: u64, part: &[u8]) -> Result<Vec<u8>, FrameError> {
    if total > MAX_BLOB_BYTES {
        return Err(malformed("blob", "blob exceeds the limit"));
    }
    if offset > total || part.len() as u64 > total - offset {
        return Err(malformed("blob", "part lies outside the blob"));
    }
    if HEADER + 20 + part.len() > MAX_TRANSFER_FRAME {
        return Err(FrameError::TooLarge(HEADER + 20 + part.len()));
    }
    let mut out = header(FrameKind::Blob, 20 + part.len());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(part);
    Ok(out)
}

/// A `done` frame.
pub fn encode_done() -> Vec<u8> {
    header(FrameKind::Done, 0)
}

/// A `done_ack` frame.
pub fn encode_done_ack() -> Vec<u8> {
    header(FrameKind::DoneAck, 0)
}

/// An `abort` frame; the reason is cut (at a character boundary) to [`MAX_ABORT_REASON`] bytes.
pub fn encode_abort(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_ABORT_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = header(FrameKind::Abort, end);
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

/// Builds a `chunks` frame in one buffer, so sealed chunks are written where they will be sent.
#[derive(Debug)]
pub struct ChunksFrame {
    buf: Vec<u8>,
    count: u32,
}

impl ChunksFrame {
    /// An empty frame answering requests of `round`, with room for `capacity` bytes of entries.
    pub fn new(round: u32, capacity: usize) -> Self {
        let mut buf = header(FrameKind::Chunks, 8 + capacity);
        buf.extend_from_slice(&round.to_be_bytes());
        buf.extend_from_slice(&0u32.to_be_bytes());
        Self { buf, count: 0 }
    }

    /// Number of chunks so far.
    pub fn count(&self) -> usize {
        self.count as usize
    }

    /// Size of the frame so far, in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no chunk was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True when an entry of `sealed_len` bytes still fits under [`MAX_TRANSFER_FRAME`].
    pub fn fits(&self, sealed_len: usize) -> bool {
        sealed_len <= MAX_SEALED_CHUNK
            && self.buf.len() + ENTRY_HEADER + sealed_len <= MAX_TRANSFER_FRAME
    }

    /// Adds an entry whose sealed bytes `write` appends to the buffer it is given. Meant for the
    /// transfer cipher, which seals straight into the frame; `write` must append exactly one
    /// sealed chunk. Refused (and nothing added) when the result would break the frame's limits.
    pub fn push_with(
        &mut self,
        hash: &ContentHash,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), FrameError> {
        let start = self.buf.len();
        self.buf.extend_from_slice(hash.as_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        write(&mut self.buf);
        let sealed_len = self.buf.len() - start - ENTRY_HEADER;
        if sealed_len > MAX_SEALED_CHUNK || self.buf.len() > MAX_TRANSFER_FRAME {
            self.buf.truncate(start);
            return Err(FrameError::TooLarge(start + ENTRY_HEADER + sealed_len));
        }
        self.buf[start + 32..start + ENTRY_HEADER]
            .copy_from_slice(&(sealed_len as u32).to_be_bytes());
        self.count += 1;
        Ok(())
    }

    /// Adds an entry by copying already sealed bytes.
    pub fn push(&mut self, hash: &ContentHash, sealed: &[u8]) -> Result<(), FrameError> {
        if !self.fits(sealed.len()) {
            return Err(FrameError::TooLarge(
                self.buf.len() + ENTRY_HEADER + sealed.len(),
            ));
        }
        self.push_with(hash, |buf| buf.extend_from_slice(sealed))
    }

    /// The finished frame.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[COUNT_AT..COUNT_AT + 4].copy_from_slice(&self.count.to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn h(n: u8) -> ContentHash {
        ContentHash([n; 32])
    }

    #[test]
    fn want_round_trip() {
        let frame = encode_want(7, &[h(1), h(2)]).unwrap();
        assert_eq!(frame_kind(&frame), Ok(FrameKind::Want));
        let Frame::Want { round, hashes } = decode(&frame).unwrap() else {
            panic!("not a want")
        };
        assert_eq!(round, 7);
        assert_eq!(hashes.iter().collect::<Vec<_>>(), vec![h(1), h(2)]);
    }

    #[test]
    fn layout_is_as_documented() {
        let frame = encode_want(258, &[h(9)]).unwrap();
        assert_eq!(&frame[..10], &[2, 1, 0, 0, 1, 2, 0, 0, 0, 1]);
        assert_eq!(&frame[10..], &[9; 32]);
        let mut c = ChunksFrame::new(5, 0);
        c.push(&h(3), b"xyz").unwrap();
        let frame = c.finish();
        assert_eq!(&frame[..10], &[2, 2, 0, 0, 0, 5, 0, 0, 0, 1]);
        assert_eq!(&frame[10..42], &[3; 32]);
        assert_eq!(&frame[42..46], &[0, 0, 0, 3]);
        assert_eq!(&frame[46..], b"xyz");
        assert_eq!(
            encode_want_blob(3, 258),
            vec![2, 4, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1, 2]
        );
        assert_eq!(encode_done(), vec![2, 6]);
        assert_eq!(encode_done_ack(), vec![2, 7]);
    }

    #[test]
    fn chunks_round_trip_with_ranges() {
        let mut c = ChunksFrame::new(3, 64);
        c.push(&h(1), b"first").unwrap();
        c.push_with(&h(2), |b| b.extend_from_slice(b"second!"))
            .unwrap();
        c.push(&h(3), b"").unwrap();
        assert_eq!(c.count(), 3);
        let frame = c.finish();
        let Frame::Chunks { round: 3, chunks } = decode(&frame).unwrap() else {
            panic!("not chunks of round 3")
        };
        let entries: Vec<_> = chunks.iter().collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].hash, h(2));
        assert_eq!(entries[1].sealed, b"second!");
        assert_eq!(&frame[entries[1].range.clone()], b"second!");
        assert_eq!(entries[2].sealed, b"");
    }

    #[test]
    fn blob_bounds_are_checked() {
        let frame = encode_blob(7, 10, 4, b"abcdef").unwrap();
        assert_eq!(
            decode(&frame).unwrap(),
            Frame::Blob {
                seq: 7,
                total: 10,
                offset: 4,
                part: b"abcdef"
            }
        );
        assert!(encode_blob(0, 10, 5, b"abcdef").is_err());
        assert!(encode_blob(0, MAX_BLOB_BYTES + 1, 0, b"").is_err());
        // A hand-made part past the end.
        let mut bad = encode_blob(0, 10, 4, b"abcdef").unwrap();
        bad[2 + 19] = 5;
        assert!(matches!(decode(&bad), Err(FrameError::Malformed { .. })));
        // An offset near u64::MAX must not overflow.
        let mut bad = encode_blob(0, 10, 0, b"").unwrap();
        bad[14..22].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn abort_reason_is_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_ABORT_REASON);
        let frame = encode_abort(&long);
        let Frame::Abort(reason) = decode(&frame).unwrap() else {
            panic!("not abort")
        };
        assert!(reason.len() <= MAX_ABORT_REASON && reason.len() >= MAX_ABORT_REASON - 1);
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(decode(&[]), Err(FrameError::Empty));
        assert_eq!(decode(&[1]), Err(FrameError::Empty));
        assert_eq!(decode(&[1, 1]), Err(FrameError::Version(1)));
        assert_eq!(decode(&[2, 99]), Err(FrameError::Kind(99)));
        assert!(decode(&[2, 6, 0]).is_err(), "done with a body");
        assert!(
            decode(&[2, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0]).is_err(),
            "want cut short"
        );
        assert!(decode(&[2, 1, 0, 0]).is_err(), "want without a round");
        let big = vec![0u8; MAX_TRANSFER_FRAME + 1];
        assert_eq!(decode(&big), Err(FrameError::TooLarge(big.len())));
    }

    #[test]
    fn lying_counts_are_refused() {
        // Claims four billion entries in a tiny frame.
        assert!(decode(&[2, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[2, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        // An entry claiming more bytes than the frame holds.
        let mut c = ChunksFrame::new(0, 0);
        c.push(&h(1), b"abc").unwrap();
        let mut frame = c.finish();
        frame[COUNT_AT + 4 + 32 + 3] = 200;
        assert!(decode(&frame).is_err());
        // Trailing bytes.
        let mut c = ChunksFrame::new(0, 0);
        c.push(&h(1), b"abc").unwrap();
        let mut frame = c.finish();
        frame.push(0);
        assert!(decode(&frame).is_err());
    }

    #[test]
    fn builder_refuses_oversized_entries_and_stays_intact() {
        let mut c = ChunksFrame::new(0, 0);
        c.push(&h(1), b"ok").unwrap();
        let before = c.len();
        assert!(
            c.push_with(&h(2), |b| b.resize(b.len() + MAX_SEALED_CHUNK + 1, 0))
                .is_err()
        );
        assert_eq!(c.len(), before);
        assert_eq!(c.count(), 1);
        assert!(!c.fits(MAX_SEALED_CHUNK + 1));
        let frame = c.finish();
        assert!(decode(&frame).is_ok());
    }

    #[test]
    fn directions() {
        use TransferRole::*;
        assert!(FrameKind::Want.allowed_from(Target));
        assert!(!FrameKind::Want.allowed_from(Source));
        assert!(FrameKind::Chunks.allowed_from(Source));
        assert!(!FrameKind::Chunks.allowed_from(Target));
        assert!(!FrameKind::Blob.allowed_from(Target));
        assert!(!FrameKind::Done.allowed_from(Source));
        assert!(FrameKind::Abort.allowed_from(Source) && FrameKind::Abort.allowed_from(Target));
        assert_eq!(Source.peer(), Target);
    }

    #[test]
    fn ws_path_carries_the_role() {
        let id: crate::HandoffId = "0196a3c2-7d4e-7f00-8a1b-2c3d4e5f6071".parse().unwrap();
        assert_eq!(
            transfer_ws_path(id, TransferRole::Target),
            "/v1/transfers/0196a3c2-7d4e-7f00-8a1b-2c3d4e5f6071/ws?role=target"
        );
    }

    #[test]
    fn notices_are_tagged_json() {
        let n = TransferNotice::Peer { connected: true };
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"type":"peer","connected":true}"#
        );
        let n: TransferNotice = serde_json::from_str(r#"{"type":"joined","peer":false}"#).unwrap();
        assert_eq!(n, TransferNotice::Joined { peer: false });
    }

    fn hash() -> impl Strategy<Value = ContentHash> {
        any::<[u8; 32]>().prop_map(ContentHash)
    }

    proptest! {
        #[test]
        fn chunks_round_trip(round in any::<u32>(), entries in prop::collection::vec((hash(), prop::collection::vec(any::<u8>(), 0..300)), 0..20)) {
            let mut c = ChunksFrame::new(round, 0);
            for (hh, sealed) in &entries {
                c.push(hh, sealed).unwrap();
            }
            let frame = c.finish();
            let Ok(Frame::Chunks { round: got_round, chunks }) = decode(&frame) else { panic!("not chunks") };
            prop_assert_eq!(got_round, round);
            let got: Vec<_> = chunks.iter().map(|e| (e.hash, e.sealed.to_vec())).collect();
            prop_assert_eq!(got, entries);
        }

        #[test]
        fn hash_lists_round_trip(round in any::<u32>(), hashes in prop::collection::vec(hash(), 0..100), gone in any::<bool>()) {
            let frame = if gone { encode_gone(round, &hashes) } else { encode_want(round, &hashes) }.unwrap();
            let (r, list) = match decode(&frame).unwrap() {
                Frame::Want { round, hashes } if !gone => (round, hashes),
                Frame::Gone { round, hashes } if gone => (round, hashes),
                other => panic!("unexpected {other:?}"),
            };
            prop_assert_eq!(r, round);
            prop_assert_eq!(list.iter().collect::<Vec<_>>(), hashes);
        }

        #[test]
        fn blob_round_trip(seq in any::<u32>(), total in 0u64..10_000, offset in 0u64..10_000, part in prop::collection::vec(any::<u8>(), 0..200)) {
            match encode_blob(seq, total, offset, &part) {
                Ok(frame) => prop_assert_eq!(decode(&frame).unwrap(), Frame::Blob { seq, total, offset, part: &part }),
                Err(_) => prop_assert!(offset > total || part.len() as u64 > total - offset),
            }
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(Frame::Chunks { chunks, .. }) = decode(&bytes) {
                // Whatever decodes must be walkable within the frame.
                for e in chunks.iter() {
                    prop_assert_eq!(&bytes[e.range.clone()], e.sealed);
                }
            }
            let _ = frame_kind(&bytes);
        }

        #[test]
        fn garbage_with_valid_header_never_panics(kind in 1u8..=8, body in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut frame = vec![FRAME_VERSION, kind];
            frame.extend_from_slice(&body);
            if let Ok(Frame::Chunks { chunks, .. }) = decode(&frame) {
                prop_assert!(chunks.iter().count() == chunks.len());
            }
        }
    }
}
