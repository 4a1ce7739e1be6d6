//! Workspace transfer between two daemons through the server (DESIGN §5): the source serves
//! sealed chunks on request ([`serve_source`]), the target asks for what it lacks, keeping a window
//! of requested bytes, and stores what arrives ([`Receiver`], [`receive`]).
//!
//! Each transfer has its own WebSocket per side (`/v1/transfers/{id}/ws`), separate from the
//! control socket. Frames are `baton_proto::transfer`'s binary format; chunks are sealed with the
//! transfer's key ([`TransferCipher`]) and checked against their BLAKE3 name when opened. Disk
//! reads and writes run on blocking threads, fed through bounded queues, so disk and network
//! overlap and memory does not grow with the tree.
//!
//! Resume: either side reconnects with backoff for up to [`TransferTuning::reconnect_timeout`];
//! the target then asks again for every chunk it requested and did not receive, and the source,
//! which keeps no state per request, answers. A chunk received is never asked for twice.

mod link;
mod source;
mod target;

use std::io;
use std::time::Duration;

use baton_crypto::CryptoError;
use baton_proto::workspace::ContentHash;
use baton_proto::{ApiError, ErrorCode, HandoffId};

use crate::client::Client;

pub use source::{BlobFeed, SourceStats, serve_source};
pub use target::{Progress, ReceiveStats, Receiver, receive};

/// Fault injection for tests: `BATON_TEST_DROP_TRANSFER_AFTER_BYTES=N` makes this daemon close
/// each transfer socket it holds once, after N data bytes sent (source) or received (target), so
/// a test can check that the transfer resumes. Unset in normal use.
pub const DROP_AFTER_BYTES_VAR: &str = "BATON_TEST_DROP_TRANSFER_AFTER_BYTES";

/// Where chunks come from on the source. Called on a blocking thread.
pub trait ChunkSource: Send + Sync + 'static {
    /// The bytes of chunk `hash`, or `None` when they can no longer be produced: the file went
    /// away, or changed since it was scanned (as happens during a pre-copy while the session
    /// runs), so the bytes read no longer hash to `hash`. The implementation checks that hash
    /// (reading the bytes is when it is cheapest); [`serve_source`] does not hash again, and a
    /// chunk that does not match its name fails the transfer at the target.
    fn read(&self, hash: &ContentHash) -> io::Result<Option<Vec<u8>>>;

    /// [`ChunkSource::read`] into `buf` (replacing what it held), so that one buffer serves
    /// every chunk; false when the chunk can no longer be produced.
    fn read_into(&self, hash: &ContentHash, buf: &mut Vec<u8>) -> io::Result<bool> {
        Ok(match self.read(hash)? {
            Some(data) => {
                *buf = data;
                true
            }
            None => false,
        })
    }
}

/// Where chunks go on the target. Called on a blocking thread, one chunk at a time, only with
/// chunks whose content was checked against their name.
pub trait ChunkSink: Send + Sync + 'static {
    /// Stores chunk `hash`.
    fn put(&self, hash: &ContentHash, data: &[u8]) -> io::Result<()>;
}

/// Knobs of a transfer; the defaults suit a LAN or loopback.
#[derive(Clone, Debug)]
pub struct TransferTuning {
    /// Most bytes of chunks the target has asked for and not received.
    pub window_bytes: u64,
    /// Most chunks the target has asked for and not received (small files make many).
    pub window_chunks: usize,
    /// Size the source fills a `chunks` frame to before sending it (small chunks are batched).
    pub frame_bytes: usize,
    /// How long a side keeps trying to reconnect, or waits for its peer, before it gives up.
    pub reconnect_timeout: Duration,
    /// Test hook: close the socket once after this many data bytes (see [`DROP_AFTER_BYTES_VAR`]).
    pub drop_after_bytes: Option<u64>,
}

impl TransferTuning {
    /// Default window: 32 MiB.
    pub const DEFAULT_WINDOW_BYTES: u64 = 32 * 1024 * 1024;
    /// Default most chunks in flight.
    pub const DEFAULT_WINDOW_CHUNKS: usize = 16_384;
    /// Default frame fill: 1 MiB, enough to amortise per-frame costs, small enough to keep the
    /// relay's queues (a few frames each) small.
    pub const DEFAULT_FRAME_BYTES: usize = 1024 * 1024;
    /// Default reconnect timeout.
    pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);
}

impl Default for TransferTuning {
    /// The defaults, plus the test hook from the environment when set.
    fn default() -> Self {
        Self {
            window_bytes: Self::DEFAULT_WINDOW_BYTES,
            window_chunks: Self::DEFAULT_WINDOW_CHUNKS,
            frame_bytes: Self::DEFAULT_FRAME_BYTES,
            reconnect_timeout: Self::DEFAULT_RECONNECT_TIMEOUT,
            drop_after_bytes: std::env::var(DROP_AFTER_BYTES_VAR)
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }
}

/// How to reach one transfer: the machine's client, the transfer id and the knobs.
#[derive(Clone)]
pub struct TransferConn {
    /// Authenticated client of this machine.
    pub client: Client,
    /// The transfer (the handoff's id).
    pub transfer: HandoffId,
    /// Knobs.
    pub tuning: TransferTuning,
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The server refused the connection or ended the transfer.
    #[error("the server refused the transfer: {0}")]
    Refused(ApiError),
    /// The server could not be reached again in time.
    #[error("lost the server for {}s: {last}", after.as_secs())]
    Unreachable {
        /// How long it tried.
        after: Duration,
        /// The last error.
        last: String,
    },
    /// The other machine did not (re)connect in time.
    #[error("the other machine did not connect within {}s", after.as_secs())]
    PeerGone {
        /// How long it waited.
        after: Duration,
    },
    /// The other machine gave up.
    #[error("the other machine aborted the transfer: {0}")]
    PeerAborted(String),
    /// A frame broke the protocol.
    #[error("transfer protocol violated: {0}")]
    Protocol(String),
    /// A chunk or the blob did not open or did not match its name.
    #[error("{what} failed verification: {source}")]
    Verify {
        /// Which chunk, or the manifest.
        what: String,
        /// Why.
        #[source]
        source: CryptoError,
    },
    /// Reading the workspace failed on the source.
    #[error("reading the workspace failed: {0}")]
    Source(#[source] io::Error),
    /// Storing a chunk failed on the target.
    #[error("storing a chunk failed: {0}")]
    Sink(#[source] io::Error),
    /// The caller cancelled.
    #[error("the transfer was cancelled")]
    Cancelled,
}

impl TransferError {
    /// The stable code for the handoff record.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Refused(e) => e.code,
            Self::Unreachable { .. } | Self::PeerGone { .. } => ErrorCode::Timeout,
            Self::Verify { .. } => ErrorCode::VerifyFailed,
            Self::Sink(e) if e.raw_os_error() == Some(libc::ENOSPC) => ErrorCode::InsufficientSpace,
            Self::PeerAborted(_)
            | Self::Protocol(_)
            | Self::Source(_)
            | Self::Sink(_)
            | Self::Cancelled => ErrorCode::TransferFailed,
        }
    }

    /// As a wire error.
    pub fn to_api(&self) -> ApiError {
        match self {
            Self::Refused(e) => e.clone(),
            other => ApiError::new(other.code(), format!("Workspace transfer: {other}.")),
        }
    }
}

/// Result of transfer operations.
pub type Result<T> = std::result::Result<T, TransferError>;
