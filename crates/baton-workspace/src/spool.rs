//! A scan kept on disk, part by part, in path order: what a daemon holds of a tree between
//! passes and between handoffs costs a few hundred bytes per part in memory, whatever the number
//! of files. Parts are read back one at a time (a rescan's reuse, a change to send, a chunk asked
//! for again), each as a [`Scanned`] of its own.
//!
//! The file is unlinked as soon as it is created (`tempfile_in`): nothing is left on disk when
//! the last holder lets go, or when the daemon dies.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use baton_proto::workspace::{
    ChunkParams, ChunkRef, ContentHash, EntryKind, FileData, SkippedEntry, WorkspaceEntry,
    WorkspaceManifest,
};

use crate::error::{Error, Result, io_err};
use crate::scan::{LocalStat, ScanStats, Scanned};

/// What a manifest says besides its entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestHead {
    /// The writer's manifest version.
    pub version: u32,
    /// How files were cut.
    pub params: ChunkParams,
    /// Permission bits of the root.
    pub root_mode: u32,
    /// Modification time of the root.
    pub root_mtime_ns: i64,
    /// Paths that do not travel.
    pub skipped: Vec<SkippedEntry>,
}

impl ManifestHead {
    /// The head of `m`.
    pub fn of(m: &WorkspaceManifest) -> Self {
        Self {
            version: m.version,
            params: m.params,
            root_mode: m.root_mode,
            root_mtime_ns: m.root_mtime_ns,
            skipped: m.skipped.clone(),
        }
    }

    /// An empty manifest with this head (`skipped` included when `with_skipped`).
    pub fn manifest(&self, with_skipped: bool) -> WorkspaceManifest {
        let mut m = WorkspaceManifest::new(self.params);
        m.version = self.version;
        m.root_mode = self.root_mode;
        m.root_mtime_ns = self.root_mtime_ns;
        if with_skipped {
            m.skipped = self.skipped.clone();
        }
        m
    }
}

/// Where one part sits in the file.
#[derive(Clone, Debug)]
struct PartAt {
    offset: u64,
    len: usize,
    entries: usize,
    first: Box<str>,
    last: Box<str>,
}

/// The file and the table of its parts, shared by the writer and every reader.
#[derive(Debug)]
struct Shared {
    file: File,
    parts: RwLock<Vec<PartAt>>,
}

impl Shared {
    fn parts(&self) -> std::sync::RwLockReadGuard<'_, Vec<PartAt>> {
        self.parts.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Appends the parts of a scan as it is made; parts written can be read back at once.
#[derive(Debug)]
pub struct SpoolWriter {
    shared: Arc<Shared>,
    root: PathBuf,
    params: ChunkParams,
    end: u64,
    buf: Vec<u8>,
    entries: usize,
}

/// A reader of the parts written so far (while the writer goes on) or of a finished spool.
#[derive(Clone, Debug)]
pub struct SpoolReader {
    shared: Arc<Shared>,
    root: PathBuf,
    params: ChunkParams,
}

/// A whole scan on disk: see the module's documentation.
#[derive(Clone, Debug)]
pub struct SpooledScan {
    reader: SpoolReader,
    head: ManifestHead,
    entries: usize,
    stats: ScanStats,
}

impl SpoolWriter {
    /// A new spool in `dir` (created if missing) for a scan of `root` cut with `params`.
    pub fn create(dir: &Path, root: &Path, params: ChunkParams) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let file = tempfile::tempfile_in(dir).map_err(io_err("create a spool in", dir))?;
        Ok(Self {
            shared: Arc::new(Shared {
                file,
                parts: RwLock::new(Vec::new()),
            }),
            root: root.to_path_buf(),
            params,
            end: 0,
            buf: Vec::new(),
            entries: 0,
        })
    }

    /// Appends the entries of `part` (a scan of some paths, all after those written so far);
    /// returns the part's number for [`SpoolReader::part`], `None` when it had no entries.
    pub fn append(&mut self, part: &Scanned) -> Result<Option<usize>> {
        let entries = &part.manifest.entries;
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(None);
        };
        self.buf.clear();
        for (e, l) in entries.iter().zip(part.local()) {
            encode_entry(&mut self.buf, e, l.as_ref());
        }
        self.shared
            .file
            .write_all_at(&self.buf, self.end)
            .map_err(io_err("write the spool of", &self.root))?;
        let at = PartAt {
            offset: self.end,
            len: self.buf.len(),
            entries: entries.len(),
            first: first.path.as_str().into(),
            last: last.path.as_str().into(),
        };
        self.end += self.buf.len() as u64;
        self.entries += entries.len();
        let mut parts = self.shared.parts.write().unwrap_or_else(|p| p.into_inner());
        parts.push(at);
        let number = parts.len() - 1;
        drop(parts);
        if self.buf.capacity() > 4 * 1024 * 1024 {
            self.buf = Vec::new();
        }
        Ok(Some(number))
    }

    /// A reader of what is written, now and later.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader {
            shared: Arc::clone(&self.shared),
            root: self.root.clone(),
            params: self.params,
        }
    }

    /// The finished scan.
    pub fn finish(self, head: ManifestHead, stats: ScanStats) -> SpooledScan {
        let reader = self.reader();
        SpooledScan {
            reader,
            head,
            entries: self.entries,
            stats,
        }
    }
}

impl SpoolReader {
    /// Parts written so far.
    pub fn parts(&self) -> usize {
        self.shared.parts().len()
    }

    /// Part `i` as a scan of its own (same root and parameters, no skipped list).
    pub fn part(&self, i: usize) -> Result<Scanned> {
        let at = self
            .shared
            .parts()
            .get(i)
            .cloned()
            .ok_or_else(|| Error::BadOption(format!("spool part {i} does not exist")))?;
        let mut buf = vec![0u8; at.len];
        self.shared
            .file
            .read_exact_at(&mut buf, at.offset)
            .map_err(io_err("read the spool of", &self.root))?;
        let mut manifest = WorkspaceManifest::new(self.params);
        manifest.entries.reserve_exact(at.entries);
        let mut local = Vec::with_capacity(at.entries);
        let mut r = Reader { buf: &buf, at: 0 };
        for _ in 0..at.entries {
            let (e, l) = decode_entry(&mut r).map_err(|e| corrupt(&self.root, e))?;
            manifest.entries.push(e);
            local.push(l);
        }
        Ok(Scanned::of_parts(manifest, self.root.clone(), local))
    }

    /// The part whose path range holds `path`, if any.
    pub fn part_holding(&self, path: &str) -> Option<usize> {
        let parts = self.shared.parts();
        let i = parts.partition_point(|p| &*p.last < path);
        parts.get(i).filter(|p| &*p.first <= path).map(|_| i)
    }
}

impl SpooledScan {
    /// The canonical root scanned.
    pub fn root(&self) -> &Path {
        &self.reader.root
    }

    /// What the scan read and reused.
    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    /// Entries (directories, files, symlinks).
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The manifest's head: version, parameters, root, skipped paths.
    pub fn head(&self) -> &ManifestHead {
        &self.head
    }

    /// The reader of its parts.
    pub fn reader(&self) -> &SpoolReader {
        &self.reader
    }

    /// The entries in path order, read a part at a time.
    pub fn iter(&self) -> SpoolEntries {
        SpoolEntries {
            reader: self.reader.clone(),
            next_part: 0,
            current: Vec::new().into_iter(),
        }
    }

    /// The whole scan in memory (for a tree known to be small, and for tests).
    pub fn load(&self) -> Result<Scanned> {
        let mut manifest = self.head.manifest(true);
        manifest.entries.reserve_exact(self.entries);
        let mut local = Vec::with_capacity(self.entries);
        for i in 0..self.reader.parts() {
            let part = self.reader.part(i)?;
            local.extend_from_slice(part.local());
            manifest.entries.extend(part.manifest.entries);
        }
        let mut s = Scanned::of_parts(manifest, self.reader.root.clone(), local);
        s.set_stats(self.stats);
        Ok(s)
    }

    /// A spool in `dir` of a scan held in memory.
    pub fn of_scanned(scanned: &Scanned, dir: &Path) -> Result<Self> {
        let mut w = SpoolWriter::create(dir, scanned.root(), scanned.manifest.params)?;
        let n = scanned.manifest.entries.len();
        let mut start = 0;
        while start < n {
            let end = (start + PART_ENTRIES).min(n);
            w.append(&scanned.slice(start, end))?;
            start = end;
        }
        Ok(w.finish(ManifestHead::of(&scanned.manifest), scanned.stats()))
    }
}

/// Entries per part when a scan held in memory is spooled.
pub(crate) const PART_ENTRIES: usize = 16 * 1024;

/// The entries of a spool in order; an unreadable part ends the walk with its error.
pub struct SpoolEntries {
    reader: SpoolReader,
    next_part: usize,
    current: std::vec::IntoIter<WorkspaceEntry>,
}

impl Iterator for SpoolEntries {
    type Item = Result<WorkspaceEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.current.next() {
                return Some(Ok(e));
            }
            if self.next_part >= self.reader.parts() {
                return None;
            }
            let part = self.reader.part(self.next_part);
            self.next_part += 1;
            match part {
                Ok(p) => self.current = p.manifest.entries.into_iter(),
                Err(e) => {
                    self.next_part = usize::MAX;
                    return Some(Err(e));
                }
            }
        }
    }
}

fn corrupt(root: &Path, why: &'static str) -> Error {
    Error::Io {
        action: "decode the spool of",
        path: root.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, why),
    }
}

pub(crate) fn put_u64(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

pub(crate) fn put_i64(buf: &mut Vec<u8>, v: i64) {
    put_u64(buf, ((v << 1) ^ (v >> 63)) as u64);
}

pub(crate) fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_u64(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// A file's chunk list: its count, then each chunk's hash and length.
pub(crate) fn put_chunks(buf: &mut Vec<u8>, chunks: &[ChunkRef]) {
    put_u64(buf, chunks.len() as u64);
    for c in chunks {
        buf.extend_from_slice(&c.hash.0);
        put_u64(buf, u64::from(c.len));
    }
}

/// A chunk list [`put_chunks`] wrote.
pub(crate) fn get_chunks(r: &mut Reader<'_>) -> Decoded<Vec<ChunkRef>> {
    let n = usize::try_from(r.u64()?).map_err(|_| "count too large")?;
    let mut chunks = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let hash = r.hash()?;
        chunks.push(ChunkRef {
            hash,
            len: r.u32()?,
        });
    }
    Ok(chunks)
}

fn encode_entry(buf: &mut Vec<u8>, e: &WorkspaceEntry, local: Option<&LocalStat>) {
    put_str(buf, &e.path);
    put_u64(buf, u64::from(e.mode));
    put_i64(buf, e.mtime_ns);
    match &e.kind {
        EntryKind::Dir => buf.push(0),
        EntryKind::Symlink { target } => {
            buf.push(1);
            put_str(buf, target);
        }
        EntryKind::File(f) => {
            buf.push(2);
            put_u64(buf, f.size);
            buf.extend_from_slice(&f.hash.0);
            put_chunks(buf, &f.chunks);
        }
    }
    match local {
        None => buf.push(0),
        Some(l) => {
            buf.push(1);
            put_u64(buf, l.dev);
            put_u64(buf, l.ino);
            put_i64(buf, l.ctime_ns);
            put_i64(buf, l.read_ns);
        }
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) at: usize,
}

pub(crate) type Decoded<T> = std::result::Result<T, &'static str>;

impl Reader<'_> {
    pub(crate) fn byte(&mut self) -> Decoded<u8> {
        let b = *self.buf.get(self.at).ok_or("truncated")?;
        self.at += 1;
        Ok(b)
    }

    pub(crate) fn u64(&mut self) -> Decoded<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint too long")
    }

    pub(crate) fn i64(&mut self) -> Decoded<i64> {
        let v = self.u64()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    pub(crate) fn u32(&mut self) -> Decoded<u32> {
        u32::try_from(self.u64()?).map_err(|_| "number too large")
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Decoded<&[u8]> {
        let end = self.at.checked_add(n).ok_or("truncated")?;
        let s = self.buf.get(self.at..end).ok_or("truncated")?;
        self.at = end;
        Ok(s)
    }

    pub(crate) fn hash(&mut self) -> Decoded<ContentHash> {
        let mut h = [0u8; 32];
        h.copy_from_slice(self.bytes(32)?);
        Ok(ContentHash(h))
    }

    pub(crate) fn string(&mut self) -> Decoded<String> {
        let n = usize::try_from(self.u64()?).map_err(|_| "length too large")?;
        String::from_utf8(self.bytes(n)?.to_vec()).map_err(|_| "not UTF-8")
    }
}

fn decode_entry(r: &mut Reader<'_>) -> Decoded<(WorkspaceEntry, Option<LocalStat>)> {
    let path = r.string()?;
    let mode = r.u32()?;
    let mtime_ns = r.i64()?;
    let kind = match r.byte()? {
        0 => EntryKind::Dir,
        1 => EntryKind::Symlink {
            target: r.string()?,
        },
        2 => {
            let size = r.u64()?;
            let hash = r.hash()?;
            let chunks = get_chunks(r)?;
            EntryKind::File(FileData { size, hash, chunks })
        }
        _ => return Err("unknown entry kind"),
    };
    let local = match r.byte()? {
        0 => None,
        1 => Some(LocalStat {
            dev: r.u64()?,
            ino: r.u64()?,
            ctime_ns: r.i64()?,
            read_ns: r.i64()?,
        }),
        _ => return Err("unknown local stat"),
    };
    Ok((
        WorkspaceEntry {
            path,
            mode,
            mtime_ns,
            kind,
        },
        local,
    ))
}
