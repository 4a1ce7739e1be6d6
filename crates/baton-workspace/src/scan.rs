//! Scanning a tree into a manifest: selection (see `select`), then every file read once, in
//! parallel, for its BLAKE3 and its chunks. A previous scan makes a rescan cost only stats.

use std::fs::{Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use baton_proto::workspace::{
    ChunkParams, EntryKind, FileData, IgnoredFiles, MANIFEST_VERSION, SkipReason, SkippedEntry,
    WorkspaceEntry, WorkspaceManifest,
};

use crate::chunk::Chunker;
use crate::error::{Error, Result, io_err};
use crate::found::{Collected, FoundSet};
use crate::fsutil::mtime_ns;
use crate::pool;
use crate::progress::Progress;
use crate::select::{Found, Prune, Stat, What, select};
use crate::spool::{ManifestHead, SpoolWriter, SpooledScan};
use crate::validate::Limits;
use crate::watch::{Changes, TreeWatch};

/// A file whose change time was less than this before it was read is hashed again next time: a
/// later write might leave its timestamps unchanged (coarse kernel clocks, 1–2 s granularity on
/// some filesystems), which git calls "racily clean".
pub(crate) const RACY_NS: i64 = 2_000_000_000;

/// How to scan.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// What happens to files the ignore rules leave out.
    pub ignored: IgnoredFiles,
    /// How files are cut into chunks.
    pub params: ChunkParams,
    /// Hashing threads; 0 picks twice the machine's parallelism (from 2 to 16: cold reads wait).
    pub threads: usize,
    /// Refuse (`transfer_too_large`) above these, before reading any file.
    pub limits: Limits,
    /// Counters to follow the hashing (files and bytes).
    pub progress: Option<Arc<Progress>>,
    /// Where a walk of a big tree spills its sorted paths (default: the system's temporary
    /// directory); the files are unlinked from the start.
    pub spill_dir: Option<PathBuf>,
    /// Paths a walk holds in memory before it spills them, sorted, to `spill_dir` (default
    /// 128 Ki; see [`crate::SPILL_ENTRIES_VAR`]).
    pub spill_after: Option<usize>,
    /// A watch of the tree: the walk adds each directory it selects to it, before listing it.
    pub watch: Option<Arc<TreeWatch>>,
}

impl ScanOptions {
    fn spill_dir(&self) -> PathBuf {
        self.spill_dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}

/// A scan's result: the manifest, plus what only this machine needs to reuse it next time.
#[derive(Clone, Debug)]
pub struct Scanned {
    /// The manifest to send.
    pub manifest: WorkspaceManifest,
    root: PathBuf,
    /// Per entry (files only): identity and change time, which cannot travel but tell a rescan
    /// whether the file is the one that was hashed.
    local: Vec<Option<LocalStat>>,
    stats: ScanStats,
}

/// What a scan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Files read and hashed.
    pub hashed_files: u64,
    /// Bytes read and hashed.
    pub hashed_bytes: u64,
    /// Files whose hashes came from the previous scan.
    pub reused_files: u64,
}

/// What a scan saw of one file that cannot travel: its identity and change time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LocalStat {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) ctime_ns: i64,
    /// When the content was read (before opening it).
    pub(crate) read_ns: i64,
}

impl LocalStat {
    fn of(md: &Stat, read_ns: i64) -> Self {
        Self {
            dev: md.dev,
            ino: md.ino,
            ctime_ns: md.ctime_ns,
            read_ns,
        }
    }

    fn same_file(&self, md: &Stat) -> bool {
        self.dev == md.dev && self.ino == md.ino && self.ctime_ns == md.ctime_ns
    }
}

impl Scanned {
    /// The canonical root that was scanned.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the scan read and what it reused.
    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    /// The entries from `start` on, as a scan of their own (same root, stats and local
    /// knowledge), e.g. to index one part of a streamed scan.
    pub fn tail(&self, start: usize) -> Scanned {
        let n = self.manifest.entries.len();
        self.slice(start.min(n), n)
    }

    /// A scan of a tree this machine received: `manifest` describes the tree at `root`
    /// (canonical), every file of which was verified against it by `known_ns` (nanoseconds since
    /// the epoch; the end of the stager's `finish`). Takes each file's `lstat` now, so that a
    /// later scan of `root` reuses the hashes of the files unchanged since: a file changed after
    /// `known_ns`, or less than the racy margin before it, has a later change time and is hashed
    /// again; one whose size or mtime differs from the manifest already is not remembered.
    pub fn of_received(manifest: WorkspaceManifest, root: PathBuf, known_ns: i64) -> Scanned {
        let local = manifest
            .entries
            .iter()
            .map(|e| {
                let f = e.file()?;
                let md = std::fs::symlink_metadata(root.join(&e.path)).ok()?;
                let matches = md.is_file() && md.len() == f.size && mtime_ns(&md) == e.mtime_ns;
                matches.then(|| LocalStat::of(&Stat::of(&md), known_ns))
            })
            .collect();
        Scanned {
            manifest,
            root,
            local,
            stats: ScanStats::default(),
        }
    }

    /// A scan made of entries and what was seen of them (one local stat per entry).
    pub(crate) fn of_parts(
        manifest: WorkspaceManifest,
        root: PathBuf,
        local: Vec<Option<LocalStat>>,
    ) -> Scanned {
        Scanned {
            manifest,
            root,
            local,
            stats: ScanStats::default(),
        }
    }

    pub(crate) fn set_stats(&mut self, stats: ScanStats) {
        self.stats = stats;
    }

    /// Entries `start..end` as a scan of their own, without the skipped list.
    pub(crate) fn slice(&self, start: usize, end: usize) -> Scanned {
        let mut manifest = empty_like(&self.manifest);
        manifest.entries = self.manifest.entries[start..end].to_vec();
        Scanned {
            manifest,
            root: self.root.clone(),
            local: self.local[start..end].to_vec(),
            stats: self.stats,
        }
    }

    /// Per manifest entry (files only): what the scan saw of the file on this machine.
    pub(crate) fn local(&self) -> &[Option<LocalStat>] {
        &self.local
    }

    /// The hashes of `rel` and what was seen of it, when they still describe the file at `md`:
    /// same size, mtime, inode and ctime, and not racily read.
    fn reusable(&self, rel: &str, md: &Stat) -> Option<(FileData, LocalStat)> {
        let i = self
            .manifest
            .entries
            .binary_search_by(|e| e.path.as_str().cmp(rel))
            .ok()?;
        let entry = &self.manifest.entries[i];
        let file = entry.file()?;
        let local = self.local.get(i).copied().flatten()?;
        let same = file.size == md.len
            && entry.mtime_ns == md.mtime_ns
            && local.same_file(md)
            && local.ctime_ns < local.read_ns.saturating_sub(RACY_NS);
        same.then(|| (file.clone(), local))
    }
}

/// An earlier scan whose hashes a new scan of the same root reuses, held in memory or on disk.
#[derive(Clone, Debug)]
pub enum Previous {
    /// A scan in memory.
    Memory(Arc<Scanned>),
    /// A scan on disk, read a part at a time as the new scan reaches its paths.
    Spooled(Arc<SpooledScan>),
}

impl From<Arc<Scanned>> for Previous {
    fn from(s: Arc<Scanned>) -> Self {
        Previous::Memory(s)
    }
}

impl From<Arc<SpooledScan>> for Previous {
    fn from(s: Arc<SpooledScan>) -> Self {
        Previous::Spooled(s)
    }
}

impl Previous {
    /// The canonical root it scanned.
    pub fn root(&self) -> &Path {
        match self {
            Previous::Memory(s) => s.root(),
            Previous::Spooled(s) => s.root(),
        }
    }

    /// How it cut files.
    pub fn params(&self) -> ChunkParams {
        match self {
            Previous::Memory(s) => s.manifest.params,
            Previous::Spooled(s) => s.head().params,
        }
    }

    /// Entries it holds.
    pub fn entries(&self) -> usize {
        match self {
            Previous::Memory(s) => s.manifest.entries.len(),
            Previous::Spooled(s) => s.entries(),
        }
    }
}

/// Looks paths up in a previous scan; a spooled one keeps the part last read, so a scan that
/// asks in path order reads each part once.
struct Reuse {
    previous: Option<Previous>,
    part: Option<(usize, Scanned)>,
}

impl Reuse {
    fn reusable(&mut self, rel: &str, md: &Stat) -> Option<(FileData, LocalStat)> {
        match self.previous.as_ref()? {
            Previous::Memory(s) => s.reusable(rel, md),
            Previous::Spooled(s) => {
                let i = s.reader().part_holding(rel)?;
                if self.part.as_ref().map(|(j, _)| *j) != Some(i) {
                    // A part that cannot be read only costs hashing its files again.
                    self.part = s.reader().part(i).ok().map(|p| (i, p));
                }
                self.part.as_ref()?.1.reusable(rel, md)
            }
        }
    }
}

/// What a scan would select, counted without reading any file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Measured {
    /// Entries (directories, files, symlinks) that would travel.
    pub entries: u64,
    /// Regular files among them.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Paths that would be listed as skipped.
    pub skipped: u64,
}

/// Counts what [`scan`] would select under `ignored`, from directory listings and `lstat` only:
/// cheap enough for a preflight check or a size cap before anything is hashed.
pub fn measure(root: &Path, ignored: &IgnoredFiles) -> Result<Measured> {
    // Counting refuses nothing: the caps apply when a scan is made.
    let opts = ScanOptions {
        ignored: ignored.clone(),
        limits: Limits {
            max_entries: usize::MAX,
            max_total_bytes: u64::MAX,
        },
        ..ScanOptions::default()
    };
    let w = walk(root, &opts)?;
    Ok(Measured {
        entries: w.entries as u64,
        files: w.files,
        bytes: w.bytes,
        skipped: w.skipped.len() as u64,
    })
}

/// Scans `root` into a manifest.
///
/// `root` should have passed [`crate::check_source`] (or be a destination the caller trusts);
/// it is canonicalised here. With `previous` (an earlier scan of the same root and parameters),
/// files whose size, mtime, inode and ctime are unchanged keep their hashes without being read.
pub fn scan(root: &Path, opts: &ScanOptions, previous: Option<&Scanned>) -> Result<Scanned> {
    scan_reusing(
        root,
        opts,
        previous.map(|p| Previous::Memory(Arc::new(p.clone()))),
    )
}

/// [`scan`] with a previous scan that is shared, not copied (a big tree's is tens of MB).
pub fn scan_reusing(
    root: &Path,
    opts: &ScanOptions,
    previous: Option<Previous>,
) -> Result<Scanned> {
    prepare_scan(root, opts, previous)?
        .run(opts, u64::MAX, |_| true)?
        .ok_or_else(|| Error::BadOption("the scan stopped before its last part".into()))
}

/// One part of a scan in progress: the tree scanned so far, in path order.
pub struct ScanPart<'a> {
    /// The entries scanned so far (sorted by path); `skipped` is filled only in the last part.
    pub scanned: &'a Scanned,
    /// Index of this part's first entry in `scanned.manifest.entries`.
    pub start: usize,
    /// True for the last part: the manifest is then complete.
    pub last: bool,
}

/// One part of a scan kept on disk (see [`PreparedScan::run_spooled`]).
pub struct SpooledPart {
    /// This part's entries (the skipped list too in the last part).
    pub scanned: Scanned,
    /// Its number in the spool, for [`crate::SpoolReader::part`]; `None` when it has no entries.
    pub number: Option<usize>,
    /// True for the last part.
    pub last: bool,
}

/// A walked tree whose files are still to be hashed (see [`prepare_scan`]). The walk is read
/// as the scan goes, one part at a time: a walk not shared with anyone is consumed (its memory
/// freed as it is read), a shared one is copied a part at a time.
pub struct PreparedScan {
    walked: Arc<Walked>,
    /// The scan whose hashes files provably unchanged since keep.
    previous: Option<Previous>,
}

/// A good first part for [`PreparedScan::run`] when streaming: small enough to start sending
/// at once.
pub const STREAM_FIRST_PART: u64 = FIRST_PART_COST;

/// Smallest part [`PreparedScan::run`] emits when asked for parts; later parts grow with what
/// was hashed, so a big tree makes a few dozen parts at most.
const FIRST_PART_COST: u64 = 16 * 1024 * 1024;
/// Largest part cost (bytes, plus [`FILE_COST`] per file).
const MAX_PART_COST: u64 = 256 * 1024 * 1024;
/// Most entries in one part, and in one batch of hashing: what a part's results, JSON and
/// index take stays bounded whatever the tree (files whose hashes are reused cost nothing to
/// read, so cost alone would put all of them in one part).
const MAX_PART_ENTRIES: usize = 16 * 1024;
/// What opening and hashing one file costs, counted as bytes when cutting parts.
const FILE_COST: u64 = 16 * 1024;
/// Most bytes of files to hash in one part. The target fetches a part's chunks only once the
/// part is whole, so what is left to fetch when the scan ends is about one part: keeping that
/// fixed keeps the pre-copy's tail from growing with the tree.
const MAX_PART_DATA: u64 = 32 * 1024 * 1024;

/// A walked tree: what a scan would select, from directory listings and `lstat` only. A scan
/// that starts soon after (see [`PreparedScan::from_walk`]) can use it instead of walking again.
#[derive(Clone)]
pub struct Walked {
    root: PathBuf,
    root_md: Metadata,
    /// Selected paths in order (in memory, or on disk for a big tree); clones share them.
    found: FoundSet,
    skipped: std::collections::BTreeMap<String, SkipReason>,
    entries: usize,
    files: u64,
    bytes: u64,
}

impl Walked {
    /// The canonical root walked.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Regular files selected.
    pub fn files(&self) -> u64 {
        self.files
    }

    /// Their total size.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Walks `root` under `opts.ignored`, refusing (`transfer_too_large`) above `opts.limits`,
/// without reading any file.
pub fn walk(root: &Path, opts: &ScanOptions) -> Result<Walked> {
    walk_pruned(root, opts, None)
}

/// [`walk`], leaving unwalked the directories `prune` says nothing changed in (their paths are
/// then the previous scan's).
fn walk_pruned(
    root: &Path,
    opts: &ScanOptions,
    prune: Option<(&Arc<Prune>, &SpooledScan)>,
) -> Result<Walked> {
    opts.params
        .check()
        .map_err(|e| Error::BadOption(format!("chunk parameters: {e}")))?;
    let root = std::fs::canonicalize(root).map_err(io_err("resolve", root))?;
    let root_md = std::fs::metadata(&root).map_err(io_err("stat", &root))?;
    if !root_md.is_dir() {
        return Err(Error::unsafe_path(&root, "is not a directory"));
    }
    let sel = select(
        &root,
        &opts.ignored,
        (&opts.spill_dir(), opts.spill_after),
        prune,
        opts.watch.as_ref(),
    )?;
    let Collected {
        found,
        entries,
        files,
        bytes,
    } = sel.found;
    if entries > opts.limits.max_entries {
        return Err(Error::TooLarge(format!(
            "{entries} entries, the limit is {}",
            opts.limits.max_entries
        )));
    }
    if bytes > opts.limits.max_total_bytes {
        return Err(Error::TooLarge(format!(
            "{bytes} bytes of files, the limit is {}",
            opts.limits.max_total_bytes
        )));
    }
    Ok(Walked {
        root,
        root_md,
        found,
        skipped: sel.skipped,
        entries,
        files,
        bytes,
    })
}

/// How a rescan from change hints went (see [`prepare_rescan`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rescan {
    /// Why the whole tree was walked, when it was.
    pub full_walk: Option<String>,
    /// Changed paths the hints named.
    pub changed: usize,
    /// Directories left unwalked.
    pub pruned: usize,
}

/// [`prepare_scan`] of `root` reusing `previous`, walking only where `changes` (recorded by a
/// [`crate::TreeWatch`] started before `previous` was made) says something changed; elsewhere
/// the paths of `previous` stand. The whole tree is walked when the changes cannot vouch for
/// it (see [`Changes::needs_full_walk`]) or `previous` is of another root.
pub fn prepare_rescan(
    root: &Path,
    opts: &ScanOptions,
    previous: Arc<SpooledScan>,
    changes: Changes,
) -> Result<(PreparedScan, Rescan)> {
    let canonical = std::fs::canonicalize(root).map_err(io_err("resolve", root))?;
    let full_walk = changes.needs_full_walk().or_else(|| {
        (previous.root() != canonical)
            .then(|| "the previous scan is of another directory".to_string())
    });
    if let Some(why) = full_walk {
        let prepared = prepare_scan(root, opts, Some(Previous::Spooled(previous)))?;
        let rescan = Rescan {
            full_walk: Some(why),
            changed: changes.paths.len(),
            pruned: 0,
        };
        return Ok((prepared, rescan));
    }
    let changed = changes.paths.len();
    let prune = Arc::new(Prune::new(changes.paths));
    let walked = walk_pruned(&canonical, opts, Some((&prune, &previous)))?;
    let rescan = Rescan {
        full_walk: None,
        changed,
        pruned: prune.pruned(),
    };
    let prepared = PreparedScan::from_walk(walked, opts, Some(Previous::Spooled(previous)));
    Ok((prepared, rescan))
}

/// Walks `root` and decides which files a scan must read (see [`scan`]), refusing
/// (`transfer_too_large`) before any file is read. [`PreparedScan::run`] then hashes.
pub fn prepare_scan(
    root: &Path,
    opts: &ScanOptions,
    previous: Option<Previous>,
) -> Result<PreparedScan> {
    Ok(PreparedScan::from_walk(walk(root, opts)?, opts, previous))
}

impl PreparedScan {
    /// A scan of what `walked` selected (walked with the same `ignored` option), reusing the
    /// hashes of `previous` for files provably unchanged since it was made. Files that changed
    /// or vanished since the walk are read as they are now, or listed as skipped.
    pub fn from_walk(walked: Walked, opts: &ScanOptions, previous: Option<Previous>) -> Self {
        Self::from_shared_walk(Arc::new(walked), opts, previous)
    }

    /// [`PreparedScan::from_walk`] of a walk that may be kept elsewhere too. When this is its
    /// only holder by the time [`PreparedScan::run`] starts, the walk is consumed as it is read.
    pub fn from_shared_walk(
        walked: Arc<Walked>,
        opts: &ScanOptions,
        previous: Option<Previous>,
    ) -> Self {
        let previous = previous.filter(|p| p.root() == walked.root && p.params() == opts.params);
        PreparedScan { walked, previous }
    }
}

impl PreparedScan {
    /// Regular files the scan selected.
    pub fn files(&self) -> u64 {
        self.walked.files
    }

    /// Their total size.
    pub fn bytes(&self) -> u64 {
        self.walked.bytes
    }

    /// Entries (directories, files, symlinks) selected.
    pub fn entries(&self) -> usize {
        self.walked.entries
    }

    /// Hashes the files, calling `on_part` with the tree scanned so far each time a part of
    /// about `first_part_cost` bytes (growing with what was hashed, but holding at most 32 MiB
    /// of files to read; `u64::MAX` for no limit by bytes) or of at most 16 Ki entries is done, so a caller can send the start of a big tree
    /// while the rest is read. `on_part` returns false to stop the scan (nothing more is read).
    /// Returns the whole scan, or `None` when stopped.
    pub fn run(
        self,
        opts: &ScanOptions,
        first_part_cost: u64,
        mut on_part: impl FnMut(ScanPart<'_>) -> bool,
    ) -> Result<Option<Scanned>> {
        let entries = self.entries();
        let root = self.walked.root.clone();
        let mut whole: Option<Scanned> = None;
        let done = self.run_parts(opts, first_part_cost, |part, last| {
            let whole = whole.get_or_insert_with(|| {
                let mut manifest = empty_like(&part.manifest);
                manifest.entries.reserve_exact(entries);
                Scanned {
                    manifest,
                    root: root.clone(),
                    local: Vec::with_capacity(entries),
                    stats: ScanStats::default(),
                }
            });
            let start = whole.manifest.entries.len();
            whole.manifest.entries.extend(part.manifest.entries);
            whole.local.extend(part.local);
            if last {
                whole.manifest.skipped = part.manifest.skipped;
            }
            whole.stats = part.stats;
            Ok(on_part(ScanPart {
                scanned: whole,
                start,
                last,
            }))
        })?;
        Ok(done.and(whole))
    }

    /// [`PreparedScan::run`] that keeps the scan on disk in `spool` instead of in memory: each
    /// part is written there, then handed to `on_part`. Memory holds one part at a time,
    /// whatever the tree.
    pub fn run_spooled(
        self,
        opts: &ScanOptions,
        first_part_cost: u64,
        mut spool: SpoolWriter,
        mut on_part: impl FnMut(SpooledPart) -> bool,
    ) -> Result<Option<SpooledScan>> {
        let mut head = None;
        let done = self.run_parts(opts, first_part_cost, |part, last| {
            let number = spool.append(&part)?;
            if last {
                head = Some(ManifestHead::of(&part.manifest));
            }
            Ok(on_part(SpooledPart {
                scanned: part,
                number,
                last,
            }))
        })?;
        Ok(match (done, head) {
            (Some(stats), Some(head)) => Some(spool.finish(head, stats)),
            _ => None,
        })
    }

    /// The scan itself: hands each part (its entries only, the skipped list in the last) to
    /// `each`, and returns the stats once the last part was taken, `None` when `each` stopped
    /// it.
    fn run_parts(
        self,
        opts: &ScanOptions,
        first_part_cost: u64,
        mut each: impl FnMut(Scanned, bool) -> Result<bool>,
    ) -> Result<Option<ScanStats>> {
        let progress = opts.progress.clone().unwrap_or_default();
        progress.start(self.files(), self.bytes());
        let threads = if opts.threads == 0 {
            pool::io_threads()
        } else {
            opts.threads
        };
        let (walked, previous) = (self.walked, self.previous);
        let mut reuse = Reuse {
            previous,
            part: None,
        };
        let head = WorkspaceManifest {
            version: MANIFEST_VERSION,
            params: opts.params,
            root_mode: walked.root_md.mode() & 0o7777,
            root_mtime_ns: mtime_ns(&walked.root_md),
            entries: Vec::new(),
            skipped: Vec::new(),
        };
        let root = walked.root.clone();
        let mut stats = ScanStats::default();
        let mut skipped = walked.skipped.clone();
        let found = match Arc::try_unwrap(walked) {
            // Only holder: the paths move into the manifest and the walk is freed as it goes.
            Ok(w) => w.found.into_iter(),
            Err(shared) => shared.found.iter(),
        };
        let mut found = found.peekable();
        let mut done_cost = 0u64;
        // Made as parts need them and kept for the later parts, buffers and all.
        let mut chunkers: Vec<Chunker> = Vec::new();
        loop {
            // This part: entries up to the one that brings the cost of reading to the target.
            let (target, data_cap) = if first_part_cost == u64::MAX {
                (u64::MAX, u64::MAX)
            } else {
                let target = first_part_cost
                    .max(done_cost / 2)
                    .min(MAX_PART_COST.max(first_part_cost));
                (target, MAX_PART_DATA.max(first_part_cost))
            };
            let mut part = Vec::new();
            let (mut cost, mut data) = (0u64, 0u64);
            while cost < target && data < data_cap && part.len() < MAX_PART_ENTRIES {
                let Some(item) = found.next() else {
                    break;
                };
                let (rel, f) = item?;
                let prior = match &f.what {
                    What::File => reuse.reusable(&rel, &f.md),
                    _ => None,
                };
                match &prior {
                    Some((d, _)) => {
                        stats.reused_files += 1;
                        progress.add(1, d.size);
                    }
                    None if matches!(f.what, What::File) => {
                        cost += f.md.len + FILE_COST;
                        data += f.md.len;
                    }
                    None => {}
                }
                part.push((rel, f, prior));
            }
            done_cost += cost;
            let last = found.peek().is_none();
            let jobs: Vec<PathBuf> = part
                .iter()
                .filter(|(_, f, prior)| matches!(f.what, What::File) && prior.is_none())
                .map(|(rel, _, _)| root.join(rel))
                .collect();
            if chunkers.len() < threads.min(jobs.len()) {
                chunkers.resize_with(threads.min(jobs.len()), || Chunker::new(&opts.params));
            }
            let hashed = pool::map(&jobs, &mut chunkers, |chunker, path| {
                let r = hash_file(chunker, path);
                if let Ok(Some((d, _, _))) = &r {
                    progress.add(1, d.size);
                }
                r
            });
            let mut hashed = hashed.into_iter();
            let mut scanned = Scanned {
                manifest: empty_like(&head),
                root: root.clone(),
                local: Vec::with_capacity(part.len()),
                stats: ScanStats::default(),
            };
            scanned.manifest.entries.reserve_exact(part.len());
            for (rel, Found { md, what }, prior) in part {
                let (kind, md, stat) = match what {
                    What::Dir => (EntryKind::Dir, md, None),
                    What::Symlink(t) => (EntryKind::Symlink { target: t }, md, None),
                    What::File => match prior {
                        Some((d, l)) => (EntryKind::File(d), md, Some(l)),
                        None => {
                            let result = hashed.next().ok_or_else(|| {
                                Error::BadOption("a file was hashed out of turn".into())
                            })?;
                            match result? {
                                Some((d, fresh, read_ns)) => {
                                    stats.hashed_files += 1;
                                    stats.hashed_bytes += d.size;
                                    let stat = Some(LocalStat::of(&fresh, read_ns));
                                    (EntryKind::File(d), fresh, stat)
                                }
                                None => {
                                    skipped.insert(rel, SkipReason::Unreadable);
                                    continue;
                                }
                            }
                        }
                    },
                };
                scanned.manifest.entries.push(WorkspaceEntry {
                    path: rel,
                    mode: md.mode & 0o7777,
                    mtime_ns: md.mtime_ns,
                    kind,
                });
                scanned.local.push(stat);
            }
            if last {
                scanned.manifest.skipped = std::mem::take(&mut skipped)
                    .into_iter()
                    .map(|(path, reason)| SkippedEntry { path, reason })
                    .collect();
            }
            scanned.stats = stats;
            let go_on = each(scanned, last)?;
            if last {
                return Ok(Some(stats));
            }
            if !go_on {
                return Ok(None);
            }
        }
    }
}

/// Reads one file; `None` when it vanished or became unreadable since the walk (it is then
/// listed as skipped rather than failing the scan).
fn hash_file(chunker: &mut Chunker, path: &Path) -> Result<Option<(FileData, Stat, i64)>> {
    let read_ns = now_ns();
    // O_NOFOLLOW: the walk saw a regular file; if a symlink took its place, do not read through
    // it. O_NONBLOCK: a FIFO that took its place must not hang the scan.
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if vanished(&e) => return Ok(None),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let md = file.metadata().map_err(io_err("stat", path))?;
    if !md.is_file() {
        return Ok(None);
    }
    match chunker.digest(&file) {
        Ok(d) => Ok(Some((d, Stat::of(&md), read_ns))),
        Err(e) if vanished(&e) => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

fn vanished(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || e.raw_os_error() == Some(libc::ELOOP)
}

/// A manifest with `m`'s version, parameters and root, and no entries or skipped paths.
pub(crate) fn empty_like(m: &WorkspaceManifest) -> WorkspaceManifest {
    let mut out = WorkspaceManifest::new(m.params);
    out.version = m.version;
    out.root_mode = m.root_mode;
    out.root_mtime_ns = m.root_mtime_ns;
    out
}

/// Nanoseconds since the epoch, as scans stamp what they read.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
