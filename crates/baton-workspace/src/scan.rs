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
use crate::fsutil::{ctime_ns, mtime_ns};
use crate::pool;
use crate::progress::Progress;
use crate::select::{Found, What, select};
use crate::validate::Limits;

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
    /// Hashing threads; 0 picks the machine's parallelism (at most 8).
    pub threads: usize,
    /// Refuse (`transfer_too_large`) above these, before reading any file.
    pub limits: Limits,
    /// Counters to follow the hashing (files and bytes).
    pub progress: Option<Arc<Progress>>,
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
    fn of(md: &Metadata, read_ns: i64) -> Self {
        Self {
            dev: md.dev(),
            ino: md.ino(),
            ctime_ns: ctime_ns(md),
            read_ns,
        }
    }

    fn same_file(&self, md: &Metadata) -> bool {
        self.dev == md.dev() && self.ino == md.ino() && self.ctime_ns == ctime_ns(md)
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

    /// Per manifest entry (files only): what the scan saw of the file on this machine.
    pub(crate) fn local(&self) -> &[Option<LocalStat>] {
        &self.local
    }

    /// The previous hashes of `rel` when the file at `md` is provably the one they describe.
    fn reusable(&self, rel: &str, md: &Metadata) -> Option<(&FileData, LocalStat)> {
        let i = self
            .manifest
            .entries
            .binary_search_by(|e| e.path.as_str().cmp(rel))
            .ok()?;
        let entry = &self.manifest.entries[i];
        let file = entry.file()?;
        let local = self.local.get(i).copied().flatten()?;
        let same = file.size == md.len()
            && entry.mtime_ns == mtime_ns(md)
            && local.same_file(md)
            && local.ctime_ns < local.read_ns.saturating_sub(RACY_NS);
        same.then_some((file, local))
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
    let root = std::fs::canonicalize(root).map_err(io_err("resolve", root))?;
    if !std::fs::metadata(&root)
        .map_err(io_err("stat", &root))?
        .is_dir()
    {
        return Err(Error::unsafe_path(&root, "is not a directory"));
    }
    let sel = select(&root, ignored)?;
    let mut m = Measured {
        entries: sel.found.len() as u64,
        skipped: sel.skipped.len() as u64,
        ..Measured::default()
    };
    for f in sel.found.values().filter(|f| matches!(f.what, What::File)) {
        m.files += 1;
        m.bytes += f.md.len();
    }
    Ok(m)
}

/// Scans `root` into a manifest.
///
/// `root` should have passed [`crate::check_source`] (or be a destination the caller trusts);
/// it is canonicalised here. With `previous` (an earlier scan of the same root and parameters),
/// files whose size, mtime, inode and ctime are unchanged keep their hashes without being read.
pub fn scan(root: &Path, opts: &ScanOptions, previous: Option<&Scanned>) -> Result<Scanned> {
    opts.params
        .check()
        .map_err(|e| Error::BadOption(format!("chunk parameters: {e}")))?;
    let root = std::fs::canonicalize(root).map_err(io_err("resolve", root))?;
    let root_md = std::fs::metadata(&root).map_err(io_err("stat", &root))?;
    if !root_md.is_dir() {
        return Err(Error::unsafe_path(&root, "is not a directory"));
    }
    let mut sel = select(&root, &opts.ignored)?;

    if sel.found.len() > opts.limits.max_entries {
        return Err(Error::TooLarge(format!(
            "{} entries, the limit is {}",
            sel.found.len(),
            opts.limits.max_entries
        )));
    }
    let (mut files, mut bytes) = (0u64, 0u64);
    for f in sel.found.values().filter(|f| matches!(f.what, What::File)) {
        files += 1;
        bytes += f.md.len();
    }
    if bytes > opts.limits.max_total_bytes {
        return Err(Error::TooLarge(format!(
            "{bytes} bytes of files, the limit is {}",
            opts.limits.max_total_bytes
        )));
    }
    let progress = opts.progress.clone().unwrap_or_default();
    progress.start(files, bytes);

    let previous = previous.filter(|p| p.root == root && p.manifest.params == opts.params);
    let mut stats = ScanStats::default();
    let mut jobs: Vec<(&str, PathBuf)> = Vec::new();
    let mut reused: Vec<Option<(FileData, LocalStat)>> = Vec::with_capacity(sel.found.len());
    for (rel, f) in &sel.found {
        let prior = match f.what {
            What::File => previous
                .and_then(|p| p.reusable(rel, &f.md))
                .map(|(d, l)| (d.clone(), l)),
            _ => None,
        };
        match (&f.what, &prior) {
            (What::File, Some((d, _))) => {
                stats.reused_files += 1;
                progress.add(1, d.size);
            }
            (What::File, None) => jobs.push((rel.as_str(), root.join(rel))),
            _ => {}
        }
        reused.push(prior);
    }

    let threads = if opts.threads == 0 {
        pool::default_threads()
    } else {
        opts.threads
    };
    let hashed = pool::map(
        &jobs,
        threads,
        || Chunker::new(&opts.params),
        |chunker, (_, path)| {
            let r = hash_file(chunker, path);
            if let Ok(Some((d, _, _))) = &r {
                progress.add(1, d.size);
            }
            r
        },
    );

    let mut hashed = jobs.iter().map(|(rel, _)| *rel).zip(hashed).peekable();
    let mut manifest = WorkspaceManifest {
        version: MANIFEST_VERSION,
        params: opts.params,
        root_mode: root_md.mode() & 0o7777,
        root_mtime_ns: mtime_ns(&root_md),
        entries: Vec::with_capacity(sel.found.len()),
        skipped: Vec::new(),
    };
    let mut local = Vec::with_capacity(sel.found.len());
    let mut late_skips = Vec::new();
    for ((rel, Found { md, what }), prior) in sel.found.iter().zip(reused) {
        let (kind, md, stat) = match what {
            What::Dir => (EntryKind::Dir, md.clone(), None),
            What::Symlink(t) => (EntryKind::Symlink { target: t.clone() }, md.clone(), None),
            What::File => match prior {
                Some((d, l)) => (EntryKind::File(d), md.clone(), Some(l)),
                None => {
                    let (_, result) = hashed
                        .next_if(|(r, _)| *r == rel.as_str())
                        .expect("every file without a prior hash was queued, in order");
                    match result? {
                        Some((d, fresh, read_ns)) => {
                            stats.hashed_files += 1;
                            stats.hashed_bytes += d.size;
                            let stat = Some(LocalStat::of(&fresh, read_ns));
                            (EntryKind::File(d), fresh, stat)
                        }
                        None => {
                            late_skips.push(rel.clone());
                            continue;
                        }
                    }
                }
            },
        };
        manifest.entries.push(WorkspaceEntry {
            path: rel.clone(),
            mode: md.mode() & 0o7777,
            mtime_ns: mtime_ns(&md),
            kind,
        });
        local.push(stat);
    }
    for rel in late_skips {
        sel.skipped.insert(rel, SkipReason::Unreadable);
    }
    manifest.skipped = sel
        .skipped
        .into_iter()
        .map(|(path, reason)| SkippedEntry { path, reason })
        .collect();
    Ok(Scanned {
        manifest,
        root,
        local,
        stats,
    })
}

/// Reads one file; `None` when it vanished or became unreadable since the walk (it is then
/// listed as skipped rather than failing the scan).
fn hash_file(chunker: &mut Chunker, path: &Path) -> Result<Option<(FileData, Metadata, i64)>> {
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
        Ok(d) => Ok(Some((d, md, read_ns))),
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

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
