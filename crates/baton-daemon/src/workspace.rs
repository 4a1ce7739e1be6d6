//! The daemon's side of workspace transfer in a handoff (DESIGN §5).
//!
//! Source: a read-only check in preflight, then one scan per pass served on that pass's
//! transfer socket (the final pass rescans reusing the hashes of unchanged files, so only what
//! changed since the pre-copy is read again). Target: a staging directory beside the
//! destination, filled first from what the destination already holds, then with the chunks the
//! source sends; the final pass ends with every file verified, and activation puts the tree in
//! place under the conflict policy. Scanning, hashing and staging are blocking work and run on
//! the blocking pool, never on the executor.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use baton_crypto::SessionCipher;
use baton_proto::handoff::{WorkspaceOutcome, WorkspacePass};
use baton_proto::workspace::{
    ChunkParams, ConflictPolicy, ContentHash, DestinationState, IgnoredFiles, ManifestPart,
    PartDelta, SkippedEntry, WorkspaceManifest,
};
use baton_proto::ws::DaemonReply;
use baton_proto::{ApiError, ErrorCode, HandoffId, Sealed, SessionMeta, SessionRecord};
use baton_workspace::{
    CACHED_PARTS, ChunkIndex, Filled, Limits, LocalChunks, ManifestChange, ManifestDigest,
    PackedManifest, PreparedScan, Previous, STREAM_FIRST_PART, ScanOptions, SpoolWriter,
    SpooledIndex, SpooledPart, SpooledScan, StagedTree, Stager, TreeWatch, Walked, check_source,
    plan_absent, prepare_rescan, prepare_scan, watch_enabled,
};
use tokio_util::sync::CancellationToken;

use crate::participant::{api, open_options};
use crate::transfer::{BlobFeed, ChunkSink, ChunkSource, Receiver, TransferConn, TransferTuning};
use crate::{Daemon, lock};

/// Test hook: `BATON_TEST_MANIFEST_PART_BYTES=N` makes the source cut its manifest into parts
/// from N bytes on (instead of 16 MiB), so a small test tree travels in many parts. Unset in
/// normal use.
pub const PART_BYTES_VAR: &str = "BATON_TEST_MANIFEST_PART_BYTES";

/// How long the preflight's walk stands for the tree in the passes before the final one. Those
/// passes are best effort (the final pass walks again and moves whatever changed), so a walk a
/// little older than the pass costs nothing but what the final pass then moves.
const WALK_REUSE: std::time::Duration = std::time::Duration::from_secs(60);

/// Free space kept beyond the tree's bytes, so a transfer never fills a disk to the last block.
const SPACE_RESERVE: u64 = 16 * 1024 * 1024;
/// Name of the record, in the handoff's directory, of where the target stages the workspace:
/// after a restart it says which staging directory to remove or put in place.
const TARGET_RECORD: &str = "workspace.json";

/// What this daemon holds for the workspace transfers of handoffs in progress.
#[derive(Default)]
pub struct Workspaces {
    sources: Mutex<HashMap<HandoffId, SourceSide>>,
    targets: Mutex<HashMap<HandoffId, Arc<tokio::sync::Mutex<TargetSide>>>>,
    /// The passes this machine receives, by transfer, with their handoff: a command repeated
    /// after the control connection dropped joins its pass instead of starting another.
    receiving: Mutex<HashMap<HandoffId, (HandoffId, ReceiveOutcome)>>,
    /// The last scans of workspace trees this machine sent or received.
    known: Arc<KnownTrees>,
}

/// Test hook: the name of a pass (`plan`, `precopy`, `final`) during whose first receive this
/// daemon, as target, closes its control connection once (the pass must go on regardless).
pub const DROP_CONTROL_VAR: &str = "BATON_TEST_DROP_CONTROL_IN_RECEIVE";

/// Whether the [`DROP_CONTROL_VAR`] hook fired in this process.
static CONTROL_DROPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The reply of one pass, running in a task of its own, for every command that asks for it.
type ReceiveOutcome = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<DaemonReply, ApiError>>,
>;

/// The last scans of workspace trees this machine sent or received, newest first (at most
/// [`KNOWN_TREES`]), kept on disk: a later handoff of the same tree, from here or into it,
/// hashes only the files changed since.
struct KnownTrees {
    scans: Mutex<Vec<Arc<SpooledScan>>>,
    /// Entries the kept scans may hold together.
    budget: usize,
}

impl Default for KnownTrees {
    fn default() -> Self {
        Self {
            scans: Mutex::default(),
            budget: KNOWN_ENTRIES,
        }
    }
}

/// Trees whose last scan a daemon keeps.
const KNOWN_TREES: usize = 2;
/// Entries the kept scans may hold together, on disk (about 140 bytes for a one-chunk file;
/// memory holds a few hundred bytes per 16 Ki entries): what stays between handoffs is bounded
/// whatever the trees, and a bigger tree is simply hashed again.
const KNOWN_ENTRIES: usize = 2_000_000;

impl KnownTrees {
    /// Keeps `scanned` as the last scan of its root, forgetting the oldest scans beyond
    /// [`KNOWN_TREES`] or the entry budget.
    fn remember(&self, scanned: Arc<SpooledScan>) {
        let mut known = lock(&self.scans);
        known.retain(|k| k.root() != scanned.root());
        known.insert(0, scanned);
        known.truncate(KNOWN_TREES);
        let mut entries = 0;
        known.retain(|k| {
            entries += k.entries();
            entries <= self.budget
        });
    }

    /// The last scan of `root` (canonical), if kept.
    fn recall(&self, root: &std::path::Path) -> Option<Arc<SpooledScan>> {
        lock(&self.scans).iter().find(|k| k.root() == root).cloned()
    }
}

/// The source of one handoff: its last scan (reused by the next) and the serving tasks.
#[derive(Default)]
struct SourceSide {
    scanned: Option<Arc<SpooledScan>>,
    /// The pass (transfer) that sent `scanned` whole: a later pass that builds on it sends
    /// only what changed.
    scanned_in: Option<HandoffId>,
    /// The preflight's walk, and when it was made: the first pass that scans starts from it
    /// rather than walking the tree again, and takes it (a walk of a big tree is tens of MB,
    /// and once a scan is made from it, a later pass learns more from walking afresh).
    walked: Option<(std::time::Instant, Arc<Walked>)>,
    /// Passes being served, by transfer; a pass leaves when its serving task ends.
    serving: Vec<(HandoffId, CancellationToken)>,
    /// The watch of the tree, started before its first walk: the final pass, made while the
    /// session is stopped, walks only where it saw changes.
    watch: Option<Arc<TreeWatch>>,
    /// The watch's epoch when the walk `walked` (and the one `scanned` came from) began; `None`
    /// when no watch ran before it.
    walked_epoch: Option<u64>,
    scanned_epoch: Option<u64>,
}

/// How long the final pass waits for the watch to record what happened before the stop.
const WATCH_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts a watch of `root` for a source, or says why not (the final pass then walks it all).
fn start_watch(root: &std::path::Path, barrier_dir: &std::path::Path) -> Option<Arc<TreeWatch>> {
    if !watch_enabled() {
        return None;
    }
    match TreeWatch::start(root, barrier_dir) {
        Ok(w) => Some(Arc::new(w)),
        Err(e) => {
            tracing::warn!(root = %root.display(), error = %e, "cannot watch the workspace; the final pass will walk all of it");
            None
        }
    }
}

/// The target of one handoff.
struct TargetSide {
    dest: PathBuf,
    final_path: PathBuf,
    policy: ConflictPolicy,
    /// Chunks the destination already holds (empty when it is absent).
    index: Arc<dyn LocalChunks>,
    stager: Option<Stager>,
    staged: Option<StagedTree>,
    bytes_sent: u64,
    /// What the destination held when the handoff began (for the plan), kept on disk.
    existing: Option<Arc<SpooledScan>>,
    state: DestinationState,
    /// When the staged tree's verification ended, for a scan of the tree once it is in place.
    verified_ns: Option<i64>,
    /// The pass (transfer) whose complete manifest the stager (or, before there is one,
    /// `planned`) holds, set when that pass succeeded: the next pass may send its manifest as a
    /// change to it.
    held: Option<HandoffId>,
    /// The whole manifest a plan pass planned from, kept (packed) for the pre-copy to build on.
    planned: Option<PackedManifest>,
}

/// Where the target stages the workspace of a handoff (persisted beside its provider staging).
#[derive(serde::Serialize, serde::Deserialize)]
struct TargetRecord {
    dest: PathBuf,
}

/// A source serves the chunks of its scan by hash, part by part as the scan makes them, from an
/// index that keeps only the last parts in memory (see [`SpooledIndex`]).
impl ChunkSource for SpooledIndex {
    fn read(&self, hash: &ContentHash) -> io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        Ok(SpooledIndex::read_into(self, hash, &mut buf).then_some(buf))
    }

    fn read_into(&self, hash: &ContentHash, buf: &mut Vec<u8>) -> io::Result<bool> {
        Ok(SpooledIndex::read_into(self, hash, buf))
    }
}

/// The stager, taking chunks as they arrive. The transport only sees an `io::Error`; the
/// stager's own error is kept so the handoff reports its code (`insufficient_space` for a full
/// disk, `verify_failed` for a file whose hash lies) rather than a generic transfer failure.
struct StagerSink {
    stager: Arc<Mutex<Stager>>,
    failure: Mutex<Option<baton_workspace::Error>>,
}

impl StagerSink {
    /// Stores a chunk whose bytes the transport checked against `hash` when it opened them.
    /// The stager is locked only to claim and settle: files are created, written and hashed
    /// without it, so the transport's workers store chunks side by side.
    fn store(&self, hash: &ContentHash, data: &[u8]) -> baton_workspace::Result<()> {
        let Some(mut claim) = lock(&self.stager).claim(hash, data)? else {
            return Ok(());
        };
        if let Err(e) = claim.write(data) {
            lock(&self.stager).unclaim(claim);
            return Err(e);
        }
        let seals = lock(&self.stager).settle(claim, data)?;
        if seals.is_empty() {
            return Ok(());
        }
        READ_BACK.with_borrow_mut(|buf| {
            for seal in &seals {
                seal.run(buf)?;
            }
            Ok::<_, baton_workspace::Error>(())
        })?;
        let mut stager = lock(&self.stager);
        for seal in &seals {
            stager.sealed(seal);
        }
        Ok(())
    }
}

thread_local! {
    /// A worker's buffer for reading back the files it completes (those whose start was
    /// written in an earlier pass).
    static READ_BACK: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl ChunkSink for StagerSink {
    fn put(&self, hash: &ContentHash, data: &[u8]) -> io::Result<()> {
        self.store(hash, data).map_err(|e| {
            let io = io::Error::other(e.to_string());
            *lock(&self.failure) = Some(e);
            io
        })
    }
}

fn internal(what: &str) -> impl Fn(tokio::task::JoinError) -> ApiError + '_ {
    move |e| ApiError::new(ErrorCode::Internal, format!("{what} stopped: {e}."))
}

fn ws_err(e: baton_workspace::Error) -> ApiError {
    e.to_api()
}

/// Opens the session's metadata and the handoff's participant options.
fn session_parts(
    d: &Daemon,
    handoff: HandoffId,
    session: &SessionRecord,
    sealed_options: Option<&Sealed>,
) -> Result<
    (
        SessionCipher,
        SessionMeta,
        baton_proto::handoff::SealedHandoffOptions,
    ),
    ApiError,
> {
    let cipher = d.client.cipher(session).map_err(api)?;
    let meta = cipher
        .open_meta(&session.sealed_meta)
        .map_err(|e| api(e.into()))?;
    let options = open_options(&cipher, handoff, sealed_options)?;
    Ok((cipher, meta, options))
}

/// Source, in preflight: refuses an unsafe workspace (`unsafe_workspace_path`: `/`, the home
/// directory, anything resolving to them, non-directories) before anything is stopped, then
/// counts the selection the ignored-files option gives, for the server's caps and the target's
/// space check. Reads no file.
pub async fn check(
    d: &Daemon,
    handoff: HandoffId,
    session: &SessionRecord,
    sealed_options: Option<&Sealed>,
) -> Result<DaemonReply, ApiError> {
    let (_, meta, options) = session_parts(d, handoff, session, sealed_options)?;
    let path = PathBuf::from(&meta.workspace);
    let home = d.home.clone();
    let opts = ScanOptions {
        ignored: options.ignored.clone(),
        spill_dir: Some(d.scan_dir()),
        ..ScanOptions::default()
    };
    let barrier_dir = d.scan_dir();
    let (walked, watch) = tokio::task::spawn_blocking(move || {
        let root = check_source(&path, Some(&home))?;
        // The walk watches each directory before it lists it: every change from then on is
        // seen.
        let watch = start_watch(&root, &barrier_dir);
        let opts = ScanOptions {
            watch: watch.clone(),
            ..opts
        };
        baton_workspace::walk(&root, &opts).map(|w| (w, watch))
    })
    .await
    .map_err(internal("The workspace check"))?
    .map_err(ws_err)?;
    let (files, bytes) = (walked.files(), walked.bytes());
    let mut sources = lock(&d.workspaces.sources);
    let side = sources.entry(handoff).or_default();
    side.walked_epoch = watch.as_ref().map(|w| w.epoch());
    side.watch = watch;
    side.walked = Some((std::time::Instant::now(), Arc::new(walked)));
    Ok(DaemonReply::WorkspaceChecked { files, bytes })
}

/// Most entries of an existing destination the target scans. Its scan stays on disk (8 bytes
/// per chunk of its index in memory), and it holds a tree of up to the transfer's cap plus
/// its ignored files (`node_modules`, build output), which the transfer's cap does not count:
/// with that cap, a tree sent at the cap could not be handed back into itself.
const DESTINATION_MAX_ENTRIES: usize = 4_000_000;

/// Target, in preflight: the destination (`--path`, else the source's path) must be a safe
/// place to create or fill (never `/` or the home directory), and its filesystem must hold the
/// selected bytes (`insufficient_space`), so neither problem is found half-way.
pub async fn check_destination(
    d: &Daemon,
    cipher: &SessionCipher,
    handoff: HandoffId,
    meta: &SessionMeta,
    sealed_options: Option<&Sealed>,
    bytes: u64,
) -> Result<(), ApiError> {
    let options = open_options(cipher, handoff, sealed_options)?;
    let wanted = PathBuf::from(
        options
            .target_path
            .unwrap_or_else(|| meta.workspace.clone()),
    );
    let home = d.home.clone();
    tokio::task::spawn_blocking(move || {
        let dest = baton_workspace::check_destination(&wanted, Some(&home))?;
        // Staging is made beside the destination, so the space that counts is its parent's.
        let probe = dest.parent().unwrap_or(&dest).to_path_buf();
        let available =
            baton_workspace::available_bytes(&probe).map_err(|e| baton_workspace::Error::Io {
                action: "measure free space on",
                path: probe.clone(),
                source: e,
            })?;
        let needed = bytes.saturating_add(SPACE_RESERVE);
        if available < needed {
            return Err(baton_workspace::Error::InsufficientSpace {
                path: probe,
                needed,
                available,
            });
        }
        Ok(())
    })
    .await
    .map_err(internal("The destination check"))?
    .map_err(ws_err)
}

/// What the server said of a pass the source is to serve.
#[derive(Clone, Copy, Debug)]
pub struct SendPass {
    /// After quiesce: the tree the target must end up with.
    pub final_pass: bool,
    /// The earlier pass the target holds whole, if any (see [`send`]).
    pub base_transfer: Option<HandoffId>,
    /// A plan: the preflight walk stays for the pre-copy (a later pass takes it, freeing it).
    pub keeps_walk: bool,
}

/// Source: walks the workspace, answers its counts, and serves this pass on its transfer socket
/// in the background until the target is done. Files are hashed behind the answer, in parts
/// (reusing the previous pass's hashes for unchanged files): each part is served as soon as it
/// is hashed, so the target fetches the start of a big tree while the rest is read.
pub async fn send(
    d: &Arc<Daemon>,
    handoff: HandoffId,
    transfer: HandoffId,
    session: &SessionRecord,
    sealed_options: Option<&Sealed>,
    pass: SendPass,
) -> Result<DaemonReply, ApiError> {
    let SendPass {
        final_pass,
        base_transfer,
        keeps_walk,
    } = pass;
    let (cipher, meta, options) = session_parts(d, handoff, session, sealed_options)?;
    let (previous, walked, delta_base, watch, epochs) = {
        let mut sources = lock(&d.workspaces.sources);
        let side = sources.entry(handoff).or_default();
        let watch = side.watch.clone();
        let epochs = (side.walked_epoch, side.scanned_epoch);
        if final_pass {
            // The session is stopped: only a fresh walk sees what it did since.
            side.walked = None;
        }
        let walked = match keeps_walk {
            true => side.walked.clone(),
            false => side.walked.take(),
        };
        let walked = walked
            .filter(|(at, _)| at.elapsed() < WALK_REUSE)
            .map(|(_, w)| w);
        // The target took the scan of that pass whole: only the change needs to travel.
        let delta_base = match (&side.scanned, base_transfer) {
            (Some(s), Some(b)) if side.scanned_in == Some(b) => Some((b, s.clone())),
            _ => None,
        };
        (side.scanned.clone(), walked, delta_base, watch, epochs)
    };
    let path = PathBuf::from(&meta.workspace);
    let home = d.home.clone();
    let opts = ScanOptions {
        ignored: options.ignored.clone(),
        spill_dir: Some(d.scan_dir()),
        ..ScanOptions::default()
    };
    let scan_opts = opts.clone();
    // Refusals (unsafe path, caps) come back as the answer, before anything is served.
    let known = Arc::clone(&d.workspaces.known);
    let spool_dir = d.scan_dir();
    let (prepared, spool, watch, epoch) = tokio::task::spawn_blocking(move || {
        let root = check_source(&path, Some(&home))?;
        let (walked_epoch, scanned_epoch) = epochs;
        let mut watch = watch.filter(|w| w.root() == root);
        let mut walked = walked;
        // Not in the final pass: watching a big tree takes a while, and the session is stopped.
        if watch.is_none() && !final_pass {
            watch = start_watch(&root, &spool_dir);
            if watch.is_some() {
                // That walk was made before this watch: walk again, under it.
                walked = None;
            }
        }
        let epoch_now = watch.as_ref().map(|w| w.epoch());
        // Walks watch the directories they meet (those a final pass walks, new ones included).
        let scan_opts = ScanOptions {
            watch: watch.clone(),
            ..scan_opts
        };
        if final_pass
            && let (Some(w), Some(prev)) = (&watch, &previous)
            && scanned_epoch.is_some()
            && scanned_epoch == epoch_now
        {
            // The session is stopped: walk only where the watch saw changes since the scan
            // this pass builds on began.
            let changes = w.take(WATCH_CATCH_UP);
            let epoch = Some(w.epoch());
            let (prepared, rescan) = prepare_rescan(&root, &scan_opts, prev.clone(), changes)?;
            match &rescan.full_walk {
                None => tracing::info!(handoff_id = %handoff, %transfer, changed = rescan.changed, unwalked_dirs = rescan.pruned, "final pass walks only what the watch saw change"),
                Some(why) => tracing::info!(handoff_id = %handoff, %transfer, why = %why, "final pass walks the whole tree"),
            }
            let spool = SpoolWriter::create(&spool_dir, &root, scan_opts.params)?;
            return Ok::<_, baton_workspace::Error>((prepared, spool, watch, epoch));
        }
        if final_pass {
            tracing::info!(handoff_id = %handoff, %transfer, "final pass walks the whole tree: no watch covers the scan it builds on");
        }
        // A first pass starts from this machine's last scan of the tree, if any.
        let previous = previous
            .or_else(|| known.recall(&root))
            .map(Previous::Spooled);
        let (prepared, epoch) = match walked {
            // The same directory as at preflight (not replaced meanwhile by a link elsewhere).
            Some(w) if w.root() == root => (
                PreparedScan::from_shared_walk(w, &scan_opts, previous),
                walked_epoch.filter(|_| epoch_now.is_some()),
            ),
            _ => (prepare_scan(&root, &scan_opts, previous)?, epoch_now),
        };
        let spool = SpoolWriter::create(&spool_dir, &root, scan_opts.params)?;
        Ok::<_, baton_workspace::Error>((prepared, spool, watch, epoch))
    })
    .await
    .map_err(internal("The workspace scan"))?
    .map_err(ws_err)?;
    if let Some(side) = lock(&d.workspaces.sources).get_mut(&handoff)
        && watch.is_some()
        && side.watch.is_none()
    {
        side.watch = watch;
    }
    let files = prepared.files();
    let bytes = prepared.bytes();
    let tcipher = cipher.transfer(transfer);
    // A big tree's manifest is tens of MB: it waits on disk, not in memory, until the pass ends.
    let feed = BlobFeed::spooled(tcipher.clone(), &d.handoff_dir(handoff)).map_err(|e| {
        ApiError::new(
            ErrorCode::TransferFailed,
            format!("Cannot keep the workspace manifest on disk: {e}."),
        )
    })?;
    let index = Arc::new(SpooledIndex::new(spool.reader(), opts.params, CACHED_PARTS));
    let cancel = CancellationToken::new();
    {
        let mut sources = lock(&d.workspaces.sources);
        let side = sources.entry(handoff).or_default();
        side.serving.push((transfer, cancel.clone()));
    }
    {
        let (feed, index, cancel, d) = (feed.clone(), index.clone(), cancel.clone(), d.clone());
        tokio::task::spawn_blocking(move || {
            let mut failure = None;
            let first_part = std::env::var(PART_BYTES_VAR)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(STREAM_FIRST_PART);
            // The last part goes out only once the whole scan is kept: the next pass may start
            // as soon as the target has it, and must find this scan to reuse.
            let mut last = None;
            let scanned = prepared.run_spooled(&opts, first_part, spool, |part| {
                if cancel.is_cancelled() {
                    return false;
                }
                let SpooledPart {
                    scanned: part,
                    number,
                    last: is_last,
                } = part;
                if let Some(number) = number {
                    index.push(number, ChunkIndex::from_scan(&part));
                }
                if delta_base.is_some() {
                    // The change is known only once the scan is whole.
                    return true;
                }
                let blob = encode_part(&ManifestPart {
                    last: is_last,
                    files,
                    bytes,
                    manifest: part.manifest,
                    delta: None,
                });
                let published = match (blob, is_last) {
                    (Ok(json), true) => {
                        last = Some(json);
                        Ok(())
                    }
                    (Ok(json), false) => feed.publish(&json).map_err(|e| e.to_string()),
                    (Err(e), _) => Err(e),
                };
                match published {
                    Ok(()) => true,
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                }
            });
            match (scanned, failure) {
                (_, Some(why)) => feed.fail(why),
                (Ok(Some(scanned)), None) => {
                    let stats = scanned.stats();
                    tracing::info!(
                        handoff_id = %handoff,
                        %transfer,
                        hashed_files = stats.hashed_files,
                        hashed_bytes = stats.hashed_bytes,
                        reused_files = stats.reused_files,
                        "workspace scanned"
                    );
                    let scanned = Arc::new(scanned);
                    if let Some(side) = lock(&d.workspaces.sources).get_mut(&handoff) {
                        side.scanned = Some(scanned.clone());
                        side.scanned_in = Some(transfer);
                        side.scanned_epoch = epoch;
                    }
                    d.workspaces.known.remember(scanned.clone());
                    let published = match &delta_base {
                        Some((base, prev)) => {
                            publish_delta(*base, prev, &scanned, (files, bytes), |json| {
                                feed.publish(json).map_err(|e| e.to_string())
                            })
                        }
                        None => last
                            .ok_or_else(|| {
                                "the scan ended without its last manifest part".to_string()
                            })
                            .and_then(|json| feed.publish(&json).map_err(|e| e.to_string())),
                    };
                    if let Err(e) = published {
                        feed.fail(e);
                    }
                }
                (Ok(None), None) => feed.fail("the pass was cancelled".into()),
                (Err(e), None) => {
                    tracing::warn!(handoff_id = %handoff, %transfer, error = %e, "scanning the workspace failed");
                    feed.fail(format!("scanning the workspace failed: {e}"));
                }
            }
        });
    }
    let conn = TransferConn {
        client: d.client.clone(),
        transfer,
        tuning: TransferTuning::default(),
    };
    let d2 = d.clone();
    tokio::spawn(async move {
        let manifest = feed.clone();
        let served =
            crate::transfer::serve_source(&conn, tcipher, index, feed, cancel.clone()).await;
        // A target that finished early (a plan made from counts) stops the scan too.
        cancel.cancel();
        if let Some(side) = lock(&d2.workspaces.sources).get_mut(&handoff) {
            side.serving.retain(|(t, _)| *t != transfer);
        }
        match served {
            Ok(stats) => {
                tracing::info!(handoff_id = %handoff, %transfer, chunks = stats.chunks, bytes = stats.bytes, manifest_bytes = manifest.published_bytes(), "workspace pass served")
            }
            Err(e) => {
                tracing::warn!(handoff_id = %handoff, %transfer, error = %e, "serving the workspace failed")
            }
        }
    });
    Ok(DaemonReply::WorkspaceServing { files, bytes })
}

/// Entries (changed ones, and removed paths) in one part of a manifest sent as a change.
const DELTA_PART_ENTRIES: usize = 20_000;

/// Publishes the parts of a pass's manifest sent as the change from `base` (the complete scan
/// of pass `base_id`, which the target staged) to `new`, the last one with `new`'s digest. Both
/// scans are read from disk a part at a time, and each part goes out as soon as it is full.
fn publish_delta(
    base_id: HandoffId,
    base: &SpooledScan,
    new: &SpooledScan,
    (files, bytes): (u64, u64),
    mut publish: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let head = new.head();
    // The digest of the whole new manifest is taken in the same read as the change.
    let mut digest = ManifestDigest::new(
        head.version,
        &head.params,
        (head.root_mode, head.root_mtime_ns),
        new.entries(),
    );
    let part = |change: ManifestChange, digest: Option<ContentHash>| {
        let last = digest.is_some();
        let mut manifest = head.manifest(last);
        manifest.entries = change.changed;
        encode_part(&ManifestPart {
            last,
            files,
            bytes,
            manifest,
            delta: Some(PartDelta {
                base: base_id,
                removed: change.removed,
                digest,
            }),
        })
    };
    let entries = new.iter().inspect(|e| {
        if let Ok(e) = e {
            digest.entry(e);
        }
    });
    let mut change = ManifestChange::default();
    baton_workspace::diff_entries(base.iter(), entries, |c| {
        change.push(c);
        if change.changed.len() >= DELTA_PART_ENTRIES || change.removed.len() >= DELTA_PART_ENTRIES
        {
            let json = part(std::mem::take(&mut change), None).and_then(|json| publish(&json));
            json.map_err(baton_workspace::Error::BadOption)?;
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    let digest = digest.finish(&head.skipped);
    publish(&part(change, Some(digest))?)
}

/// One manifest part as the JSON the feed seals.
fn encode_part(part: &ManifestPart) -> Result<Vec<u8>, String> {
    serde_json::to_vec(part).map_err(|e| format!("encoding the manifest: {e}"))
}

/// Source: whether this daemon still serves pass `transfer` of `handoff` (a restarted daemon
/// has forgotten every pass).
pub fn status(
    d: &Daemon,
    handoff: HandoffId,
    transfer: HandoffId,
) -> Result<DaemonReply, ApiError> {
    let serving = lock(&d.workspaces.sources)
        .get(&handoff)
        .is_some_and(|s| s.serving.iter().any(|(t, _)| *t == transfer));
    if serving {
        Ok(DaemonReply::Ok)
    } else {
        Err(ApiError::new(
            ErrorCode::TransferFailed,
            "The source stopped serving the workspace (its daemon restarted during the transfer).",
        ))
    }
}

/// The target's first pass: where the tree goes, and what the destination already holds.
async fn open_target(
    d: &Daemon,
    handoff: HandoffId,
    meta: &SessionMeta,
    options: &baton_proto::handoff::SealedHandoffOptions,
    policy: ConflictPolicy,
    manifest: &WorkspaceManifest,
) -> Result<TargetSide, ApiError> {
    let wanted = PathBuf::from(
        options
            .target_path
            .clone()
            .unwrap_or_else(|| meta.workspace.clone()),
    );
    let home = d.home.clone();
    let params = manifest.params;
    let known = Arc::clone(&d.workspaces.known);
    let spill_dir = d.scan_dir();
    let (dest, index, existing, state) = tokio::task::spawn_blocking(move || {
        let dest = baton_workspace::check_destination(&wanted, Some(&home))?;
        let mut index: Arc<dyn LocalChunks> = Arc::new(ChunkIndex::new(params));
        let mut existing = None;
        let state = baton_workspace::destination_state(&dest)?;
        if state == DestinationState::Exists && dest.is_dir() {
            // Everything in the existing tree can spare a chunk from travelling, ignored or not.
            let opts = ScanOptions {
                ignored: IgnoredFiles::Include,
                params,
                spill_dir: Some(spill_dir.clone()),
                limits: Limits {
                    max_entries: DESTINATION_MAX_ENTRIES,
                    ..Limits::default()
                },
                ..ScanOptions::default()
            };
            let root = std::fs::canonicalize(&dest).map_err(|e| baton_workspace::Error::Io {
                action: "resolve",
                path: dest.clone(),
                source: e,
            })?;
            let known = known.recall(&root).map(Previous::Spooled);
            // Kept on disk, as its index is: the plan reads it once, the stager asks the
            // index for what it lacks.
            let spool = SpoolWriter::create(&spill_dir, &root, params)?;
            let local = SpooledIndex::new(spool.reader(), params, CACHED_PARTS);
            let scanned = prepare_scan(&root, &opts, known)?
                .run_spooled(&opts, u64::MAX, spool, |part| {
                    if let Some(n) = part.number {
                        local.push(n, ChunkIndex::from_scan(&part.scanned));
                    }
                    true
                })?
                .ok_or_else(|| {
                    baton_workspace::Error::BadOption("the destination scan stopped".into())
                })?;
            index = Arc::new(local);
            existing = Some(Arc::new(scanned));
        }
        Ok::<_, baton_workspace::Error>((dest, index, existing, state))
    })
    .await
    .map_err(internal("Indexing the destination"))?
    .map_err(ws_err)?;
    let final_path = baton_workspace::planned_path(&dest, policy).map_err(ws_err)?;
    let record = TargetRecord { dest: dest.clone() };
    let dir = d.handoff_dir(handoff);
    std::fs::create_dir_all(&dir)
        .and_then(|()| {
            std::fs::write(
                dir.join(TARGET_RECORD),
                serde_json::to_vec(&record).unwrap_or_default(),
            )
        })
        .map_err(|e| {
            ApiError::new(
                ErrorCode::TransferFailed,
                format!("Cannot record the workspace staging: {e}."),
            )
        })?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            ApiError::new(
                ErrorCode::TargetPathMissing,
                format!("Cannot create the destination's parent: {e}."),
            )
        })?;
    }
    Ok(TargetSide {
        dest,
        final_path,
        policy,
        index,
        stager: None,
        staged: None,
        bytes_sent: 0,
        existing,
        state,
        verified_ns: None,
        held: None,
        planned: None,
    })
}

/// Most manifest parts one pass may send (a source makes a few dozen).
const MAX_PARTS: u32 = 100_000;

/// The manifest of a pass as its parts arrive: each part extends the one before.
struct Parts {
    whole: WorkspaceManifest,
    /// What every part must repeat: version, chunk parameters, root mode and mtime.
    tree: (u32, ChunkParams, u32, i64),
    /// Files and bytes of the whole selection, from the first part.
    files: u64,
    bytes: u64,
    next: u32,
    done: bool,
    /// Set when the manifest travels as a change: the base pass, the removed paths gathered
    /// from every part, and the digest of the result (from the last part).
    delta: Option<PartDelta>,
}

/// Fetches and opens part `seq` of a pass's manifest.
async fn fetch_part(receiver: &mut Receiver, seq: u32) -> Result<ManifestPart, ApiError> {
    if seq >= MAX_PARTS {
        return Err(ApiError::new(
            ErrorCode::InvalidWorkspaceManifest,
            format!("The workspace manifest came in more than {MAX_PARTS} parts."),
        ));
    }
    let blob = receiver.blob(seq).await.map_err(|e| e.to_api())?;
    let mut part: ManifestPart = serde_json::from_slice(&blob).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidWorkspaceManifest,
            format!("Part {seq} of the workspace manifest does not parse: {e}."),
        )
    })?;
    part.manifest.compact();
    Ok(part)
}

/// Fetches the first part of a pass's manifest.
async fn first_part(receiver: &mut Receiver) -> Result<Parts, ApiError> {
    let part = fetch_part(receiver, 0).await?;
    let m = &part.manifest;
    let mut parts = Parts {
        tree: (m.version, m.params, m.root_mode, m.root_mtime_ns),
        files: part.files,
        bytes: part.bytes,
        next: 1,
        done: part.last,
        delta: part.delta.as_ref().map(|d| PartDelta {
            base: d.base,
            removed: Vec::new(),
            digest: None,
        }),
        whole: WorkspaceManifest::new(m.params),
    };
    parts.whole = take_delta(&mut parts, 0, part)?;
    Ok(parts)
}

/// Fetches the next part of a pass's manifest and appends it to `parts`.
async fn next_part(receiver: &mut Receiver, parts: &mut Parts) -> Result<(), ApiError> {
    let m = fetch_next(receiver, parts).await?;
    parts.whole.entries.extend(m.entries);
    parts.whole.skipped.extend(m.skipped);
    Ok(())
}

/// Fetches the next part of a pass's manifest, checked to describe the same tree, and returns
/// it without appending it.
async fn fetch_next(
    receiver: &mut Receiver,
    parts: &mut Parts,
) -> Result<WorkspaceManifest, ApiError> {
    let seq = parts.next;
    let part = fetch_part(receiver, seq).await?;
    let m = &part.manifest;
    if parts.tree != (m.version, m.params, m.root_mode, m.root_mtime_ns)
        || (part.files, part.bytes) != (parts.files, parts.bytes)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidWorkspaceManifest,
            format!("Part {seq} of the workspace manifest describes another tree."),
        ));
    }
    parts.next += 1;
    take_delta(parts, seq, part)
}

/// Checks that part `seq` is sent the way the first part was (whole, or as a change to the
/// same base), gathers its removed paths and digest into `parts`, and returns its manifest.
fn take_delta(
    parts: &mut Parts,
    seq: u32,
    part: ManifestPart,
) -> Result<WorkspaceManifest, ApiError> {
    let bad = |why: &str| {
        Err(ApiError::new(
            ErrorCode::InvalidWorkspaceManifest,
            format!("Part {seq} of the workspace manifest {why}."),
        ))
    };
    parts.done = part.last;
    match (&mut parts.delta, part.delta) {
        (None, None) => {}
        (Some(held), Some(d)) if held.base == d.base => {
            if d.digest.is_some() != part.last {
                return bad("must carry the digest of the result in its last part, and only there");
            }
            held.removed.extend(d.removed);
            held.digest = d.digest;
        }
        _ => {
            return bad(
                "is not sent the way the first part was (whole, or as a change to the same pass)",
            );
        }
    }
    Ok(part.manifest)
}

/// Target: one pass. The source sends its manifest in parts, as it hashes.
/// - The plan pass answers what the transfer will do at the destination, before anything
///   moves. When the destination is absent there is nothing to compare with, and the plan
///   comes from the source's counts at once (the pre-copy then streams the tree as it is
///   hashed).
/// - The pre-copy (while the session still runs on the source) stages each part as it comes,
///   and may miss chunks whose files changed meanwhile.
/// - The final pass switches the staging to the final manifest, fetches what it still lacks
///   and verifies every file.
///
/// The pass runs in a task of its own and outlives the command: when the control connection
/// drops meanwhile, the server asks again once the daemon is back, and that command (same
/// transfer) gets the same pass's reply, however far it got.
#[allow(clippy::too_many_arguments)]
pub async fn receive(
    d: &Arc<Daemon>,
    handoff: HandoffId,
    transfer: HandoffId,
    session: &SessionRecord,
    sealed_options: Option<&Sealed>,
    policy: ConflictPolicy,
    pass: WorkspacePass,
) -> Result<DaemonReply, ApiError> {
    use futures_util::FutureExt;
    let outcome = {
        let mut receiving = lock(&d.workspaces.receiving);
        match receiving.get(&transfer) {
            Some((of, outcome)) if *of == handoff => {
                tracing::info!(handoff_id = %handoff, transfer = %transfer, "asked again for a pass under way; joining it");
                outcome.clone()
            }
            Some(_) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "This transfer belongs to another handoff.",
                ));
            }
            None => {
                let request = PassRequest {
                    handoff,
                    transfer,
                    session: session.clone(),
                    sealed_options: sealed_options.cloned(),
                    policy,
                    pass,
                };
                let task = tokio::spawn(receive_once(Arc::clone(d), request));
                let outcome = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(ApiError::new(
                            ErrorCode::TransferFailed,
                            format!("The workspace transfer stopped: {e}."),
                        ))
                    })
                }
                .boxed()
                .shared();
                receiving.insert(transfer, (handoff, outcome.clone()));
                let name = match pass {
                    WorkspacePass::Plan => "plan",
                    WorkspacePass::Precopy => "precopy",
                    WorkspacePass::Final => "final",
                };
                if std::env::var(DROP_CONTROL_VAR).is_ok_and(|p| p == name)
                    && !CONTROL_DROPPED.swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    d.control_drop.notify_one();
                }
                outcome
            }
        }
    };
    outcome.await
}

/// A pass the target was asked for, owned by the task that runs it.
struct PassRequest {
    handoff: HandoffId,
    transfer: HandoffId,
    session: SessionRecord,
    sealed_options: Option<Sealed>,
    policy: ConflictPolicy,
    pass: WorkspacePass,
}

async fn receive_once(d: Arc<Daemon>, request: PassRequest) -> Result<DaemonReply, ApiError> {
    let PassRequest {
        handoff,
        transfer,
        session,
        sealed_options,
        policy,
        pass,
    } = request;
    let d = &d;
    let (cipher, meta, options) = session_parts(d, handoff, &session, sealed_options.as_ref())?;
    let conn = TransferConn {
        client: d.client.clone(),
        transfer,
        tuning: TransferTuning::default(),
    };
    let cancel = CancellationToken::new();
    let mut receiver = Receiver::connect(conn, cipher.transfer(transfer), cancel)
        .await
        .map_err(|e| e.to_api())?;
    let result = receive_pass(
        d,
        (handoff, transfer),
        &cipher,
        &meta,
        &options,
        policy,
        pass,
        &mut receiver,
    )
    .await;
    match &result {
        Ok(_) => {
            let _ = receiver.finish().await;
        }
        Err(e) => receiver.abort(&e.message).await,
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn receive_pass(
    d: &Arc<Daemon>,
    (handoff, transfer): (HandoffId, HandoffId),
    cipher: &SessionCipher,
    meta: &SessionMeta,
    options: &baton_proto::handoff::SealedHandoffOptions,
    policy: ConflictPolicy,
    pass: WorkspacePass,
    receiver: &mut Receiver,
) -> Result<DaemonReply, ApiError> {
    let limits = Limits::default();
    let mut parts = first_part(receiver).await?;
    // Whatever arrives is checked before anything is planned or staged from it (a change is
    // checked once applied to its base).
    if parts.delta.is_none() {
        baton_workspace::validate(&parts.whole, &limits).map_err(ws_err)?;
    }
    let existing = lock(&d.workspaces.targets).get(&handoff).cloned();
    let side = match existing {
        Some(side) => side,
        None if parts.delta.is_some() => return Err(base_not_held(&parts)),
        None => {
            let side = open_target(d, handoff, meta, options, policy, &parts.whole).await?;
            let side = Arc::new(tokio::sync::Mutex::new(side));
            lock(&d.workspaces.targets).insert(handoff, side.clone());
            side
        }
    };
    let mut side = side.lock().await;
    // Until this pass succeeds, the stager holds no complete manifest to build on.
    let held = side.held.take();
    let mut planned = side.planned.take();
    // What a manifest sent as a change makes of the staged one.
    let mut rebuilt_staging = None;
    if parts.delta.is_some() {
        while !parts.done {
            next_part(receiver, &mut parts).await?;
        }
        let base_held = side.stager.is_some() || planned.is_some();
        if !base_held || held != parts.delta.as_ref().map(|p| p.base) {
            return Err(base_not_held(&parts));
        }
        let stager = side.stager.take();
        let changed = std::mem::replace(&mut parts.whole, WorkspaceManifest::new(parts.tree.1));
        let delta = parts.delta.take();
        tracing::info!(
            handoff_id = %handoff,
            %transfer,
            changed = changed.entries.len(),
            removed = delta.as_ref().map_or(0, |d| d.removed.len()),
            "workspace manifest received as a change"
        );
        let planned = planned.take();
        let (stager, rebuilt) = tokio::task::spawn_blocking(move || {
            let rebuilt = match (&stager, planned, delta) {
                (Some(s), _, Some(delta)) => staged_change(s, delta, changed),
                (None, Some(base), Some(delta)) => {
                    rebuild_planned(base, delta, changed).map(Staging::Packed)
                }
                _ => Err(ApiError::new(ErrorCode::Internal, "The staging is gone.")),
            };
            (stager, rebuilt)
        })
        .await
        .map_err(internal("Applying the manifest's change"))?;
        side.stager = stager;
        rebuilt_staging = Some(rebuilt?);
    }
    // A pass sent whole does not need the plan's manifest.
    drop(planned);
    if pass == WorkspacePass::Plan {
        let summary = if side.state == DestinationState::Absent && side.stager.is_none() {
            plan_absent(parts.files, parts.bytes, side.policy)
        } else {
            // Packed as each part comes (and checked against the parts before it): a big
            // tree's manifest is never held whole unpacked.
            let first = std::mem::replace(&mut parts.whole, WorkspaceManifest::new(parts.tree.1));
            let mut whole = PackedManifest::with_head_of(&first, &limits).map_err(ws_err)?;
            // Its records wait on disk for the pre-copy: in memory, a tree of 10⁶ files would
            // hold about 80 MB more between the two passes.
            let spill_dir = d.scan_dir();
            std::fs::create_dir_all(&spill_dir).map_err(|e| {
                ApiError::new(
                    ErrorCode::TransferFailed,
                    format!("Cannot create {}: {e}.", spill_dir.display()),
                )
            })?;
            whole.spill_to(&spill_dir).map_err(ws_err)?;
            whole
                .append(first.entries, first.skipped, &limits)
                .map_err(ws_err)?;
            while !parts.done {
                let more = fetch_next(receiver, &mut parts).await?;
                whole
                    .append(more.entries, more.skipped, &limits)
                    .map_err(ws_err)?;
            }
            let summary = baton_workspace::plan_entries(
                whole.entries(),
                side.state,
                side.existing
                    .as_ref()
                    .map(|s| s.iter())
                    .into_iter()
                    .flatten(),
                side.index.as_ref(),
                side.policy,
            )
            .map_err(ws_err)?
            .summary;
            if side.stager.is_none() {
                // The pre-copy may then send only what changed since this scan.
                side.planned = Some(whole);
                side.held = Some(transfer);
            }
            summary
        };
        let transfer_bytes = summary.transfer_bytes;
        return Ok(DaemonReply::WorkspacePlanned {
            sealed_plan: cipher.seal_plan(handoff, &summary),
            transfer_bytes,
            holds_manifest: side.planned.is_some(),
        });
    }
    // The plan's view of the old tree is not needed any more.
    side.existing = None;
    let final_pass = pass == WorkspacePass::Final;
    let mut reporter = ProgressReporter::new(d, handoff, pass);
    let mut sent = 0u64;
    let mut reused = 0u64;
    let mut gone = 0usize;
    if final_pass {
        // The final manifest replaces the staged one whole (entries it lacks are removed), so
        // it is staged only once complete.
        while !parts.done {
            next_part(receiver, &mut parts).await?;
        }
    }
    // The entries go to the stager; later parts are checked against `parts.tree`.
    let empty = WorkspaceManifest::new(parts.whole.params);
    let whole = std::mem::replace(&mut parts.whole, empty);
    let mut staging = rebuilt_staging.unwrap_or(Staging::Whole(whole));
    loop {
        let staged = stage_and_fetch(
            &mut side,
            handoff,
            staging,
            receiver,
            &mut reporter,
            (sent, parts.bytes, parts.done),
        )
        .await?;
        sent += staged.sent;
        reused += staged.reused;
        gone += staged.gone;
        if parts.done {
            break;
        }
        let waited = std::time::Instant::now();
        let more = fetch_next(receiver, &mut parts).await?;
        tracing::debug!(
            handoff_id = %handoff,
            part = parts.next - 1,
            wait_ms = waited.elapsed().as_millis(),
            "received a manifest part"
        );
        staging = Staging::More(more);
    }
    side.bytes_sent += sent;
    let Some(stager) = side.stager.take() else {
        return Err(ApiError::new(ErrorCode::Internal, "The staging is gone."));
    };
    let files = stager.file_count();
    let bytes_total = stager.total_bytes();
    let skipped = stager.skipped().to_vec();
    if !final_pass {
        let stager = tokio::task::spawn_blocking(move || stager.sync().map(|()| stager))
            .await
            .map_err(internal("Syncing the pre-copy"))?
            .map_err(ws_err)?;
        side.stager = Some(stager);
        side.held = Some(transfer);
        return Ok(DaemonReply::WorkspaceReceived {
            files,
            bytes_total,
            bytes_sent: sent,
            bytes_reused: reused,
            sealed_outcome: None,
            holds_manifest: true,
        });
    }
    if gone > 0 {
        side.stager = Some(stager);
        return Err(ApiError::new(
            ErrorCode::TransferFailed,
            format!(
                "{gone} chunk(s) changed on the source after it stopped (is something else still writing to the workspace?); try again."
            ),
        ));
    }
    let staged = tokio::task::spawn_blocking(move || {
        stager
            .finish(0)
            .map(|staged| (staged, baton_workspace::now_ns()))
    })
    .await
    .map_err(internal("Verifying the workspace"))?
    .map_err(ws_err)?;
    let (staged, verified_ns) = staged;
    side.staged = Some(staged);
    side.verified_ns = Some(verified_ns);
    let outcome = WorkspaceOutcome {
        path: side.final_path.to_string_lossy().into_owned(),
        files,
        bytes_total,
        bytes_sent: side.bytes_sent,
        skipped,
    };
    Ok(DaemonReply::WorkspaceReceived {
        files,
        bytes_total,
        bytes_sent: sent,
        bytes_reused: reused,
        sealed_outcome: Some(cipher.seal_workspace(handoff, &outcome)),
        holds_manifest: false,
    })
}

/// The refusal of a manifest sent as a change to a pass this machine does not hold whole.
fn base_not_held(parts: &Parts) -> ApiError {
    let base = parts
        .delta
        .as_ref()
        .map(|d| d.base.to_string())
        .unwrap_or_default();
    ApiError::new(
        ErrorCode::InvalidWorkspaceManifest,
        format!(
            "The workspace manifest was sent as a change to pass {base}, which this machine does not hold whole; hand the session off again."
        ),
    )
}

/// The change the source sent, to apply to the staged manifest `base` in place (the stager
/// checks it, and its digest, before touching anything): a whole new manifest is never built.
/// An empty change (nothing in the tree changed since the pre-copy) only touches the root and
/// the skipped list, and its digest is checked here.
fn staged_change(
    base: &Stager,
    delta: PartDelta,
    changed: WorkspaceManifest,
) -> Result<Staging, ApiError> {
    if changed.entries.is_empty() && delta.removed.is_empty() {
        let root = (changed.root_mode, changed.root_mtime_ns);
        if delta.digest != Some(base.digest_with(root, &changed.skipped)) {
            return Err(digest_differs());
        }
        return Ok(Staging::Root(root, changed.skipped));
    }
    let Some(digest) = delta.digest else {
        return Err(digest_differs());
    };
    Ok(Staging::Change {
        change: baton_workspace::ManifestChange {
            changed: changed.entries,
            removed: delta.removed,
        },
        root: (changed.root_mode, changed.root_mtime_ns),
        skipped: changed.skipped,
        digest,
    })
}

/// The refusal of a change whose result is not the source's manifest.
fn digest_differs() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidWorkspaceManifest,
        "The workspace manifest sent as a change does not rebuild the source's manifest (its digest differs); hand the session off again.",
    )
}

/// What the manifest a plan pass kept becomes with the change the source sent, checked as it is
/// rebuilt and against the source's digest of it (there is no stager yet: the result is a
/// manifest to create the staging from). An empty change (nothing in the tree changed since the
/// plan's scan) only touches the root and the skipped list.
fn rebuild_planned(
    mut base: PackedManifest,
    delta: PartDelta,
    changed: WorkspaceManifest,
) -> Result<PackedManifest, ApiError> {
    let root = (changed.root_mode, changed.root_mtime_ns);
    if changed.entries.is_empty() && delta.removed.is_empty() {
        if delta.digest != Some(base.digest_with(root, &changed.skipped)) {
            return Err(digest_differs());
        }
        base.set_root(root, changed.skipped, &Limits::default())
            .map_err(ws_err)?;
        return Ok(base);
    }
    let change = baton_workspace::ManifestChange {
        changed: changed.entries,
        removed: delta.removed,
    };
    let whole = base
        .patched(&change, root, changed.skipped, &Limits::default())
        .map_err(ws_err)?;
    drop(base);
    if delta.digest != Some(whole.digest()) {
        return Err(digest_differs());
    }
    Ok(whole)
}

/// What a pass stages next.
enum Staging {
    /// A whole manifest (or the first part of one): creates the staging, or moves it to this
    /// later scan.
    Whole(WorkspaceManifest),
    /// A whole manifest, packed and checked: creates the staging.
    Packed(PackedManifest),
    /// The next part of a manifest streamed in path order: appended to what is staged.
    More(WorkspaceManifest),
    /// The staged manifest with this root mode and mtime and this skipped list (a final pass
    /// in which no entry changed).
    Root((u32, i64), Vec<SkippedEntry>),
    /// The staged manifest with a change applied, whose result must have this digest.
    Change {
        change: baton_workspace::ManifestChange,
        root: (u32, i64),
        skipped: Vec<SkippedEntry>,
        digest: ContentHash,
    },
}

/// What staging one manifest (or manifest prefix) moved.
struct Staged {
    sent: u64,
    reused: u64,
    gone: usize,
}

/// Stages `manifest` (creating the staging, or moving it to this later or longer manifest),
/// fills what the destination already holds, and fetches the rest from the source. The stager
/// stays in `side` whatever happens, so an abort removes it.
async fn stage_and_fetch(
    side: &mut TargetSide,
    handoff: HandoffId,
    staging: Staging,
    receiver: &mut Receiver,
    reporter: &mut ProgressReporter,
    (sent_before, source_bytes, complete): (u64, u64, bool),
) -> Result<Staged, ApiError> {
    let stager = side.stager.take();
    let dest = side.dest.clone();
    let index = side.index.clone();
    let id = handoff.to_string();
    let started = std::time::Instant::now();
    // Replacing a destination that exists: its unchanged files are linked, not copied (the
    // tree it holds is removed at commit, so nothing is left sharing them).
    let links = side.policy == ConflictPolicy::Replace
        && side.state == DestinationState::Exists
        && baton_workspace::link_enabled();
    let staged = tokio::task::spawn_blocking(move || {
        let limits = Limits::default();
        // A stager that fails is handed back so that an abort removes its directory.
        let mut stager = match (stager, staging) {
            (Some(mut s), Staging::Whole(m)) => match s.update(m, &limits) {
                Ok(_) => s,
                Err(e) => return Err(Box::new((Some(s), e))),
            },
            (Some(mut s), Staging::More(m)) => match s.extend(m.entries, m.skipped, &limits) {
                Ok(_) => s,
                Err(e) => return Err(Box::new((Some(s), e))),
            },
            (Some(mut s), Staging::Root(root, skipped)) => {
                match s.update_root(root, skipped, &limits) {
                    Ok(_) => s,
                    Err(e) => return Err(Box::new((Some(s), e))),
                }
            }
            (None, Staging::Whole(m)) => {
                Stager::create(&dest, &id, m, &limits).map_err(|e| Box::new((None, e)))?
            }
            (None, Staging::Packed(m)) => {
                Stager::create_packed(&dest, &id, m).map_err(|e| Box::new((None, e)))?
            }
            (Some(mut s), Staging::Packed(m)) => match s.update(m.unpack(), &limits) {
                Ok(_) => s,
                Err(e) => return Err(Box::new((Some(s), e))),
            },
            (
                Some(mut s),
                Staging::Change {
                    change,
                    root,
                    skipped,
                    digest,
                },
            ) => match s.apply_change(change, root, skipped, &digest, &limits) {
                Ok(_) => s,
                Err(e) => return Err(Box::new((Some(s), e))),
            },
            (None, Staging::More(_) | Staging::Root(..) | Staging::Change { .. }) => {
                return Err(Box::new((
                    None,
                    baton_workspace::Error::BadOption(
                        "a later part of the manifest came before its first".into(),
                    ),
                )));
            }
        };
        let linked = match links.then(|| std::fs::canonicalize(&dest)) {
            Some(Ok(root)) => match stager.link_from_index(index.as_ref(), &root) {
                Ok(linked) => linked,
                Err(e) => return Err(Box::new((Some(stager), e))),
            },
            _ => Filled::default(),
        };
        match stager.fill_from_index(index.as_ref()) {
            Ok(filled) => {
                if linked.bytes > 0 {
                    tracing::debug!(
                        linked_bytes = linked.bytes,
                        copied_bytes = filled.bytes,
                        "reused the destination's files"
                    );
                }
                Ok((stager, linked.bytes + filled.bytes))
            }
            Err(e) => Err(Box::new((Some(stager), e))),
        }
    })
    .await
    .map_err(internal("Staging"))?;
    let (stager, reused) = match staged {
        Ok(s) => s,
        Err(failed) => {
            let (stager, e) = *failed;
            side.stager = stager;
            return Err(ws_err(e));
        }
    };
    // Two frames of a lane, then two of the other: the frame where the turn passes holds both
    // lanes and is cut in two, so the longer the turn, the fewer such frames.
    let wanted = stager.missing_chunks_interleaved(2 * receiver.frame_bytes() as u64);
    // While parts are still coming, the rest of the tree counts as still to send.
    let bytes_to_come = match complete {
        true => 0,
        false => source_bytes.saturating_sub(stager.total_bytes()),
    };
    let staging_ms = started.elapsed().as_millis();
    reporter.tree = stager.progress();
    let before = receiver.stats();
    let stager = Arc::new(Mutex::new(stager));
    let sink = Arc::new(StagerSink {
        stager: stager.clone(),
        failure: Mutex::new(None),
    });
    let wanted_bytes: u64 = wanted.iter().map(|(c, _)| u64::from(c.len)).sum();
    reporter.send(
        sent_before,
        sent_before + wanted_bytes + bytes_to_come,
        true,
    );
    let received = receiver
        .chunks_in_lanes(sink.clone(), wanted, &mut |p| {
            reporter.send(
                sent_before + p.bytes,
                sent_before + p.bytes_total + bytes_to_come,
                false,
            )
        })
        .await;
    let failure = lock(&sink.failure).take();
    drop(sink);
    side.stager = Arc::try_unwrap(stager)
        .ok()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()));
    let stats = match received {
        Ok(s) => s,
        Err(e) => {
            return Err(match failure {
                Some(f) => f.to_api(),
                None => e.to_api(),
            });
        }
    };
    if side.stager.is_none() {
        return Err(ApiError::new(
            ErrorCode::Internal,
            "The stager is still in use.",
        ));
    }
    tracing::debug!(
        handoff_id = %handoff,
        staging_ms,
        fetch_ms = started.elapsed().as_millis() - staging_ms,
        chunks = stats.chunks - before.chunks,
        "staged a manifest part"
    );
    // The receiver counts over the whole pass.
    Ok(Staged {
        sent: stats.bytes - before.bytes,
        reused,
        gone: stats.gone.len() - before.gone.len(),
    })
}

/// Sends the target's progress to the session's watchers a few times a second (never blocking
/// the transfer: each report is its own task, and a lost one is replaced by the next).
struct ProgressReporter {
    client: crate::client::Client,
    handoff: HandoffId,
    pass: WorkspacePass,
    tree: Arc<baton_workspace::Progress>,
    last: Option<std::time::Instant>,
}

impl ProgressReporter {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(250);

    fn new(d: &Daemon, handoff: HandoffId, pass: WorkspacePass) -> Self {
        Self {
            client: d.client.clone(),
            handoff,
            pass,
            tree: Arc::default(),
            last: None,
        }
    }

    fn send(&mut self, bytes_done: u64, bytes_total: u64, force: bool) {
        let now = std::time::Instant::now();
        let due = self.last.is_none_or(|t| now - t >= Self::EVERY);
        if !(force || due || bytes_done >= bytes_total) {
            return;
        }
        self.last = Some(now);
        let t = self.tree.snapshot();
        let progress = baton_proto::handoff::TransferProgress {
            pass: Some(self.pass),
            files_done: t.files,
            files_total: t.total_files,
            bytes_done,
            bytes_total,
        };
        let client = self.client.clone();
        let path = format!("/v1/handoffs/{}/progress", self.handoff);
        tokio::spawn(async move {
            let _: Result<serde_json::Value, _> = client.post(&path, &progress).await;
        });
    }
}

/// Target: the workspace path the handoff will end at, when it moves the workspace.
pub async fn final_path(d: &Daemon, handoff: HandoffId) -> Option<PathBuf> {
    let side = lock(&d.workspaces.targets).get(&handoff).cloned()?;
    let side = side.lock().await;
    Some(side.final_path.clone())
}

/// Target, at activation: puts the verified tree in place under the conflict policy and, since
/// the handoff has committed, lets go of any backup of what was there.
pub async fn activate(d: &Daemon, handoff: HandoffId) -> Result<(), ApiError> {
    let Some(side) = lock(&d.workspaces.targets).remove(&handoff) else {
        return Ok(());
    };
    let mut side = side.lock().await;
    let Some(mut staged) = side.staged.take() else {
        return Err(ApiError::new(
            ErrorCode::ActivateFailed,
            "The verified workspace is missing (was the target restarted?).",
        ));
    };
    let received = side
        .verified_ns
        .take()
        .and_then(|at| staged.take_manifest().map(|m| (m, at)));
    let policy = side.policy;
    let expected = side.final_path.clone();
    let applied = tokio::task::spawn_blocking(move || {
        let applied = staged.apply(policy)?;
        if applied.path() != expected {
            let got = applied.path().to_path_buf();
            applied.rollback()?;
            return Err(baton_workspace::Error::Conflict {
                path: got,
                reason: format!(
                    "the destination changed during the handoff (the workspace was to land at {})",
                    expected.display()
                ),
            });
        }
        Ok(applied)
    })
    .await
    .map_err(internal("Putting the workspace in place"))?
    .map_err(|e| ApiError::new(ErrorCode::ActivateFailed, format!("{e}.")))?;
    // The tree is in place. Removing what `replace` set aside can take long (tens of thousands
    // of unlinks, slower still on a disk mounted with `discard`), and the session must not stay
    // stopped for it: it goes on in the background past a short wait.
    // Recorded first: a daemon that dies before the removal ends finishes it when it starts
    // again ([`finish_commits`]); the handoff dir, which names the destination too, is removed
    // as soon as activation returns.
    let record = commit_record(d, handoff);
    let written = std::fs::create_dir_all(d.baton_home.join(COMMITS)).and_then(|()| {
        std::fs::write(
            &record,
            serde_json::to_vec(&TargetRecord {
                dest: side.dest.clone(),
            })
            .unwrap_or_default(),
        )
    });
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot record the commit under way; a crash now would leave the replaced tree");
    }
    let delay = test_delay(COMMIT_DELAY_VAR);
    let commit = tokio::task::spawn_blocking(move || {
        std::thread::sleep(delay);
        let done = applied.commit();
        if done.is_ok() {
            let _ = std::fs::remove_file(&record);
        }
        done
    });
    match tokio::time::timeout(COMMIT_WAIT, commit).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => {
            tracing::warn!(handoff_id = %handoff, error = %e, "removing the replaced tree failed")
        }
        Ok(Err(e)) => {
            tracing::warn!(handoff_id = %handoff, error = %e, "removing the replaced tree stopped")
        }
        Err(_) => {
            tracing::info!(handoff_id = %handoff, "removing the replaced tree goes on in the background")
        }
    }
    // The tree is remembered as scanned when it was verified, so handing it on or back later
    // hashes only what changed since; the session is running again meanwhile.
    if let Some((manifest, verified_ns)) = received {
        let root = side.final_path.clone();
        let d2 = Arc::clone(&d.workspaces.known);
        let dir = d.scan_dir();
        tokio::task::spawn_blocking(move || {
            let Ok(root) = std::fs::canonicalize(&root) else {
                return;
            };
            match manifest.spool(root, verified_ns, &dir) {
                Ok(spooled) => d2.remember(Arc::new(spooled)),
                Err(e) => {
                    tracing::warn!(error = %e, "keeping the received tree's scan failed; the next handoff of it hashes it whole")
                }
            }
        });
    }
    drop(side);
    lock(&d.workspaces.receiving).retain(|_, (of, _)| *of != handoff);
    let _ = tokio::task::spawn_blocking(release_memory).await;
    Ok(())
}

/// Hands the memory a finished transfer freed (manifests, indexes, staging maps: tens of MiB
/// for a big tree, spread over the arenas of the threads that built them) back to the system,
/// so a daemon's footprint does not ratchet up with every handoff.
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long activation waits for the replaced tree to be removed before letting it finish in
/// the background: enough for a small tree, so it is usually gone when the handoff returns,
/// and short, since the session stays stopped meanwhile (rule: the stopped time must not grow
/// with the tree).
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Either side, when a handoff aborts (or its source is done): stops serving, removes staging.
pub async fn forget(d: &Daemon, handoff: HandoffId) {
    lock(&d.workspaces.receiving).retain(|_, (of, _)| *of != handoff);
    if let Some(src) = lock(&d.workspaces.sources).remove(&handoff) {
        for (_, c) in src.serving {
            c.cancel();
        }
    }
    let side = lock(&d.workspaces.targets).remove(&handoff);
    if let Some(side) = side {
        let mut side = side.lock().await;
        let stager = side.stager.take();
        let staged = side.staged.take();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(s) = stager
                && let Err(e) = s.abort()
            {
                tracing::warn!(error = %e, "removing workspace staging failed");
            }
            if let Some(s) = staged
                && let Err(e) = s.abort()
            {
                tracing::warn!(error = %e, "removing workspace staging failed");
            }
        })
        .await;
    } else {
        remove_recorded_staging(d, handoff);
    }
    let _ = tokio::task::spawn_blocking(release_memory).await;
}

/// Where the commits of workspaces put in place are recorded until they end (see `activate`).
const COMMITS: &str = "commits";

/// Test hook: milliseconds the background commit of a workspace put in place waits first, so
/// a test can kill the daemon before it ends.
pub const COMMIT_DELAY_VAR: &str = "BATON_TEST_DELAY_WORKSPACE_COMMIT_MS";

fn test_delay(var: &str) -> std::time::Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(std::time::Duration::ZERO, std::time::Duration::from_millis)
}

fn commit_record(d: &Daemon, handoff: HandoffId) -> PathBuf {
    d.baton_home.join(COMMITS).join(format!("{handoff}.json"))
}

/// At start: finishes the commits of workspaces that a previous run of the daemon put in place
/// and did not see through (it died while removing the replaced tree): the apply is rolled
/// forward and the backup removed, once the server confirms the handoff committed. An aborted
/// handoff's apply is rolled back instead; one still active is left for later.
pub async fn finish_commits(d: &Arc<Daemon>) -> Result<(), crate::client::ClientError> {
    let Ok(entries) = std::fs::read_dir(d.baton_home.join(COMMITS)) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(handoff) = path
            .file_stem()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<HandoffId>().ok())
        else {
            continue;
        };
        let Some(rec) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<TargetRecord>(&b).ok())
        else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let h: baton_proto::HandoffRecord =
            match d.client.get(&format!("/v1/handoffs/{handoff}")).await {
                Ok(h) => h,
                Err(crate::client::ClientError::Api(e)) if e.code == ErrorCode::NotFound => {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                Err(e) => return Err(e),
            };
        let forward = match h.result {
            baton_proto::HandoffResult::Committed => true,
            baton_proto::HandoffResult::Aborted => false,
            baton_proto::HandoffResult::Active => continue,
        };
        let id = handoff.to_string();
        let done = tokio::task::spawn_blocking(move || {
            for l in baton_workspace::leftovers(&rec.dest)? {
                if l.transfer_id() != id {
                    continue;
                }
                // The record is written after apply, so a staging directory without its apply
                // record is one whose removal the commit had begun.
                match forward {
                    true => l.commit()?,
                    false => l.rollback()?,
                }
            }
            Ok::<_, baton_workspace::Error>(())
        })
        .await;
        match done {
            Ok(Ok(())) => {
                tracing::info!(handoff_id = %handoff, "finished the commit of a workspace put in place before a restart");
                let _ = std::fs::remove_file(&path);
            }
            Ok(Err(e)) => {
                tracing::warn!(handoff_id = %handoff, error = %e, "finishing a workspace commit failed")
            }
            Err(e) => {
                tracing::warn!(handoff_id = %handoff, error = %e, "finishing a workspace commit stopped")
            }
        }
    }
    Ok(())
}

/// After a restart, nothing is in memory: the record in the handoff's directory says which
/// staging directory an aborted handoff left beside its destination.
pub fn remove_recorded_staging(d: &Daemon, handoff: HandoffId) {
    let path = d.handoff_dir(handoff).join(TARGET_RECORD);
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let Ok(rec) = serde_json::from_slice::<TargetRecord>(&bytes) else {
        return;
    };
    let id = handoff.to_string();
    match baton_workspace::leftovers(&rec.dest) {
        Ok(found) => {
            for l in found {
                let result = match l {
                    baton_workspace::Leftover::Staging { id: lid, path } if lid == id => {
                        std::fs::remove_dir_all(&path).map_err(|e| e.to_string())
                    }
                    baton_workspace::Leftover::Applied(a) if a.transfer_id() == id => {
                        a.rollback().map_err(|e| e.to_string())
                    }
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "removing leftover workspace staging failed");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "looking for leftover workspace staging failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::workspace::{EntryKind, WorkspaceEntry};
    use baton_workspace::Scanned;

    fn tree(dir: &std::path::Path, root: &str, dirs: usize) -> Arc<SpooledScan> {
        let mut m = WorkspaceManifest::new(ChunkParams::default());
        m.entries = (0..dirs)
            .map(|i| WorkspaceEntry {
                path: format!("d{i:07}"),
                mode: 0o755,
                mtime_ns: 0,
                kind: EntryKind::Dir,
            })
            .collect();
        let s = Scanned::of_received(m, PathBuf::from(root), 0);
        Arc::new(SpooledScan::of_scanned(&s, dir).expect("spool"))
    }

    fn roots(k: &KnownTrees) -> Vec<PathBuf> {
        lock(&k.scans)
            .iter()
            .map(|s| s.root().to_path_buf())
            .collect()
    }

    #[test]
    fn known_trees_keep_the_newest_within_their_count_and_entry_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let k = KnownTrees {
            budget: 100,
            ..KnownTrees::default()
        };
        k.remember(tree(d, "/a", 10));
        k.remember(tree(d, "/b", 10));
        k.remember(tree(d, "/a", 20));
        assert_eq!(roots(&k), [PathBuf::from("/a"), PathBuf::from("/b")]);
        k.remember(tree(d, "/c", 10));
        assert_eq!(roots(&k), [PathBuf::from("/c"), PathBuf::from("/a")]);
        // Together over the entry budget: the older one goes.
        k.remember(tree(d, "/big", 95));
        assert_eq!(roots(&k), [PathBuf::from("/big")]);
        // Alone over it: nothing is kept.
        k.remember(tree(d, "/huge", 101));
        assert!(roots(&k).is_empty());
        assert!(k.recall(std::path::Path::new("/huge")).is_none());
        // A kept scan reads back as it was written, and leaves no file behind.
        k.remember(tree(d, "/x", 40_000));
        let kept = k.recall(std::path::Path::new("/x"));
        assert!(kept.is_none(), "over the test budget");
        let big = tree(d, "/y", 40_000);
        assert_eq!(big.reader().parts(), 3);
        let back = big.load().expect("load");
        assert_eq!(back.manifest.entries.len(), 40_000);
        assert_eq!(back.manifest.entries[39_999].path, "d0039999");
        assert_eq!(std::fs::read_dir(d).expect("list").count(), 0);
    }

    #[test]
    fn a_source_reads_back_the_chunks_of_parts_it_no_longer_holds() {
        let src = tempfile::tempdir().expect("tempdir");
        let spool_dir = tempfile::tempdir().expect("tempdir");
        let mut contents = Vec::new();
        for i in 0..12u8 {
            let data: Vec<u8> = (0..5000u32)
                .map(|k| (k as u8) ^ i.wrapping_mul(31))
                .collect();
            std::fs::write(src.path().join(format!("f{i:02}")), &data).expect("write");
            contents.push(data);
        }
        let opts = ScanOptions::default();
        let root = std::fs::canonicalize(src.path()).expect("canonical");
        let writer = SpoolWriter::create(spool_dir.path(), &root, opts.params).expect("spool");
        let parts = SpooledIndex::new(writer.reader(), opts.params, CACHED_PARTS);
        // Small parts (a 1-byte first target; later targets grow with what was read).
        let scanned = prepare_scan(&root, &opts, None)
            .expect("walk")
            .run_spooled(&opts, 1, writer, |p| {
                if let Some(n) = p.number {
                    parts.push(n, ChunkIndex::from_scan(&p.scanned));
                }
                true
            })
            .expect("scan")
            .expect("whole");
        assert!(scanned.reader().parts() > CACHED_PARTS);
        assert_eq!(parts.cached_parts().len(), CACHED_PARTS);
        assert!(!parts.cached_parts().contains(&0));
        // The first file's part left memory long ago: its chunk is read back from the spool.
        let first = scanned.iter().next().expect("an entry").expect("readable");
        let hash = first.file().expect("a file").chunks[0].hash;
        let mut buf = Vec::new();
        assert!(ChunkSource::read_into(&parts, &hash, &mut buf).expect("read"));
        assert_eq!(buf, contents[0]);
        assert!(parts.cached_parts().contains(&0));
        assert_eq!(parts.cached_parts().len(), CACHED_PARTS);
        // A hash no part holds is answered as missing.
        let absent = ContentHash([7; 32]);
        assert!(!ChunkSource::read_into(&parts, &absent, &mut buf).expect("read"));
    }
}
