//! A staged manifest's entries packed into one buffer: what a target holds for the whole time a
//! tree is staged.
//!
//! A `Vec<WorkspaceEntry>` costs a tree of 10⁶ files about 230 bytes per file (the entry, and
//! its path and chunk list each in an allocation of their own, with the allocator's overhead),
//! and the chunk hash of a one-chunk file repeats the file's. Packed, a file of one chunk takes
//! its path, about a dozen bytes of numbers and one hash, plus 8 bytes of offset. Entries are
//! decoded when read; the stager reads each a handful of times, so decoding costs far less than
//! the bytes it saves.

use std::borrow::Cow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use baton_proto::workspace::{
    ChunkParams, ChunkRef, ContentHash, EntryKind, FileData, SkippedEntry, WorkspaceEntry,
    WorkspaceManifest,
};

use crate::delta::{ManifestChange, ManifestDigest, check_change, merged};
use crate::error::{Result, io_err};
use crate::spool::{Reader, get_chunks, put_chunks, put_i64, put_str, put_u64};
use crate::validate::{Limits, check_appended, check_count, check_head};

/// Entries checked and packed at a time when a manifest is rebuilt from a change.
const BATCH: usize = 4096;

const DIR: u8 = 0;
const SYMLINK: u8 = 1;
const FILE: u8 = 2;
/// A file of one chunk, which is the whole file: its hash and length are the file's.
const WHOLE_CHUNK: u8 = 3;

/// What an entry is, read without decoding it whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A regular file of this size.
    File(u64),
}

/// Bytes of records a spilled store keeps in memory before writing them out, and reads ahead
/// when entries are read in order.
const BLOCK: usize = 256 << 10;

/// Records written to an unnamed file: `at` and a block of records are all a staged tree of
/// any size keeps in memory.
#[derive(Debug)]
struct Spill {
    file: File,
    /// Where the file is (for errors, and for the next manifest built from this one).
    dir: PathBuf,
    /// Bytes written to the file; the records after them are in `tail`.
    flushed: u64,
    tail: Vec<u8>,
}

/// Where the packed records are.
#[derive(Debug)]
enum Store {
    Mem(Vec<u8>),
    Spill(Spill),
}

impl Default for Store {
    fn default() -> Self {
        Store::Mem(Vec::new())
    }
}

/// Entries in path order, packed (see the module docs). Appended to, read by number.
#[derive(Debug, Default)]
pub(crate) struct PackedEntries {
    store: Store,
    /// Where each entry starts among the records.
    at: Vec<u64>,
    files: u64,
    bytes: u64,
}

/// A point [`PackedEntries::rollback`] goes back to.
#[derive(Clone, Copy)]
pub(crate) struct Mark {
    len: usize,
    files: u64,
    bytes: u64,
}

impl Spill {
    /// Fills `buf` from the file at `offset`. Panics when the file cannot be read back: it is
    /// unnamed and written by this process only, so this is a failing disk; the caller's
    /// blocking task ends and the transfer fails rather than staging from bytes it cannot
    /// trust.
    fn read_at(&self, buf: &mut [u8], offset: u64) {
        if let Err(e) = self.file.read_exact_at(buf, offset) {
            panic!(
                "reading back the staged manifest's spill file in {} failed: {e}",
                self.dir.display()
            )
        }
    }
}

/// Encodes `e` at the end of `buf`.
fn encode(buf: &mut Vec<u8>, e: &WorkspaceEntry) {
    put_str(buf, &e.path);
    put_u64(buf, u64::from(e.mode));
    put_i64(buf, e.mtime_ns);
    match &e.kind {
        EntryKind::Dir => buf.push(DIR),
        EntryKind::Symlink { target } => {
            buf.push(SYMLINK);
            put_str(buf, target);
        }
        EntryKind::File(f) => {
            let whole = matches!(f.chunks.as_slice(),
                [c] if c.hash == f.hash && u64::from(c.len) == f.size);
            buf.push(if whole { WHOLE_CHUNK } else { FILE });
            put_u64(buf, f.size);
            buf.extend_from_slice(&f.hash.0);
            if !whole {
                put_chunks(buf, &f.chunks);
            }
        }
    }
}

/// Decodes the entry `r` is at.
fn decode(r: &mut Reader<'_>) -> Result<WorkspaceEntry, &'static str> {
    let path = r.string()?;
    let mode = r.u32()?;
    let mtime_ns = r.i64()?;
    let kind = match r.byte()? {
        DIR => EntryKind::Dir,
        SYMLINK => EntryKind::Symlink {
            target: r.string()?,
        },
        WHOLE_CHUNK => {
            let size = r.u64()?;
            let hash = r.hash()?;
            let len = u32::try_from(size).map_err(|_| "chunk too long")?;
            EntryKind::File(FileData {
                size,
                hash,
                chunks: vec![ChunkRef { hash, len }],
            })
        }
        FILE => {
            let size = r.u64()?;
            let hash = r.hash()?;
            let chunks = get_chunks(r)?;
            EntryKind::File(FileData { size, hash, chunks })
        }
        _ => return Err("unknown entry kind"),
    };
    Ok(WorkspaceEntry {
        path,
        mode,
        mtime_ns,
        kind,
    })
}

impl PackedEntries {
    /// Packs `entries`, in their order, in memory.
    pub(crate) fn of(entries: &[WorkspaceEntry]) -> Self {
        let mut p = Self::default();
        p.at.reserve_exact(entries.len());
        for e in entries {
            encode(p.mem_buf(), e);
            p.counted(e);
        }
        p.shrink();
        p
    }

    /// No entries, their records to be kept in an unnamed file in `dir`.
    pub(crate) fn spilled(dir: &Path) -> Result<Self> {
        let file = tempfile::tempfile_in(dir).map_err(io_err("create a file in", dir))?;
        Ok(Self {
            store: Store::Spill(Spill {
                file,
                dir: dir.to_path_buf(),
                flushed: 0,
                // Flushed once it holds a block: room for the last record that fills it.
                tail: Vec::with_capacity(BLOCK + BLOCK / 4),
            }),
            ..Self::default()
        })
    }

    /// No entries, kept where this one keeps them (in memory, or in a new file beside its file).
    pub(crate) fn empty_like(&self) -> Result<Self> {
        match &self.store {
            Store::Mem(_) => Ok(Self::default()),
            Store::Spill(s) => Self::spilled(&s.dir),
        }
    }

    /// Moves records kept in memory to an unnamed file in `dir`; records spilled already stay
    /// where they are.
    pub(crate) fn spill(&mut self, dir: &Path) -> Result<()> {
        let Store::Mem(buf) = &mut self.store else {
            return Ok(());
        };
        let records = std::mem::take(buf);
        let mut spilled = Self::spilled(dir)?;
        if let Store::Spill(s) = &mut spilled.store {
            if let Err(e) = s.file.write_all_at(&records, 0) {
                self.store = Store::Mem(records);
                return Err(io_err("write a file in", dir)(e));
            }
            s.flushed = records.len() as u64;
        }
        self.store = spilled.store;
        Ok(())
    }

    /// True when the records are in a file.
    #[cfg(test)]
    pub(crate) fn is_spilled(&self) -> bool {
        matches!(self.store, Store::Spill(_))
    }

    /// The in-memory buffer new records go to (the tail of a spilled store).
    fn mem_buf(&mut self) -> &mut Vec<u8> {
        let end = self.end();
        self.at.push(end);
        match &mut self.store {
            Store::Mem(buf) => buf,
            Store::Spill(s) => &mut s.tail,
        }
    }

    /// Counts `e` among the files and bytes.
    fn counted(&mut self, e: &WorkspaceEntry) {
        if let Some(f) = e.file() {
            self.files += 1;
            self.bytes += f.size;
        }
    }

    /// Writes the tail of a spilled store out once it is a block long. On failure the tail
    /// stays in memory, so every record is still readable.
    fn flush_full(&mut self) -> Result<()> {
        let Store::Spill(s) = &mut self.store else {
            return Ok(());
        };
        if s.tail.len() < BLOCK {
            return Ok(());
        }
        s.file
            .write_all_at(&s.tail, s.flushed)
            .map_err(io_err("write a file in", &s.dir))?;
        s.flushed += s.tail.len() as u64;
        s.tail.clear();
        Ok(())
    }

    /// Bytes of records held.
    fn end(&self) -> u64 {
        match &self.store {
            Store::Mem(buf) => buf.len() as u64,
            Store::Spill(s) => s.flushed + s.tail.len() as u64,
        }
    }

    /// Appends `e`, which sorts after every entry held (the caller checked it).
    pub(crate) fn push(&mut self, e: &WorkspaceEntry) -> Result<()> {
        encode(self.mem_buf(), e);
        self.counted(e);
        self.flush_full()
    }

    /// Appends a record read from another entries' [`Cursor`] as it is (no decoding), which
    /// sorts after every entry held.
    pub(crate) fn push_record(&mut self, record: &[u8]) -> Result<()> {
        self.mem_buf().extend_from_slice(record);
        if let Kind::File(size) = kind_of(record) {
            self.files += 1;
            self.bytes += size;
        }
        self.flush_full()
    }

    /// Where [`Self::rollback`] comes back to.
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            len: self.len(),
            files: self.files,
            bytes: self.bytes,
        }
    }

    /// Drops every entry appended since `mark`.
    pub(crate) fn rollback(&mut self, mark: Mark) {
        if mark.len >= self.len() {
            return;
        }
        let end = self.at[mark.len];
        self.at.truncate(mark.len);
        (self.files, self.bytes) = (mark.files, mark.bytes);
        match &mut self.store {
            Store::Mem(buf) => buf.truncate(end as usize),
            // Written records past `end` are overwritten by the next flush, which writes at
            // `flushed`; reads never go past the last record's end.
            Store::Spill(s) if end >= s.flushed => s.tail.truncate((end - s.flushed) as usize),
            Store::Spill(s) => {
                s.tail.clear();
                s.flushed = end;
            }
        }
    }

    /// Room for `entries` more entries of about `bytes` bytes packed.
    pub(crate) fn reserve(&mut self, entries: usize, bytes: usize) {
        self.at.reserve_exact(entries);
        if let Store::Mem(buf) = &mut self.store {
            buf.reserve_exact(bytes);
        }
    }

    /// Bytes of the packed records.
    pub(crate) fn packed_bytes(&self) -> usize {
        self.end() as usize
    }

    /// Gives back spare capacity (appending grows the buffer by doubling).
    pub(crate) fn shrink(&mut self) {
        if let Store::Mem(buf) = &mut self.store {
            buf.shrink_to_fit();
        }
        self.at.shrink_to_fit();
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.at.len()
    }

    /// Number of regular files.
    pub(crate) fn file_count(&self) -> u64 {
        self.files
    }

    /// Sum of the sizes of the regular files.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes held in memory.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        let records = match &self.store {
            Store::Mem(buf) => buf.capacity(),
            Store::Spill(s) => s.tail.capacity(),
        };
        records + self.at.capacity() * 8
    }

    /// Where record `i` starts and ends.
    fn range(&self, i: usize) -> (u64, u64) {
        let end = self.at.get(i + 1).copied().unwrap_or_else(|| self.end());
        (self.at[i], end)
    }

    /// The bytes `start..end` of the records when they are in memory; otherwise the spill file
    /// they are in. A flush writes the whole tail, so a record is either all in the file or
    /// all in the tail.
    fn in_memory(&self, start: u64, end: u64) -> Result<&[u8], &Spill> {
        match &self.store {
            Store::Mem(buf) => Ok(&buf[start as usize..end as usize]),
            Store::Spill(s) if start >= s.flushed => {
                Ok(&s.tail[(start - s.flushed) as usize..(end - s.flushed) as usize])
            }
            Store::Spill(s) => Err(s),
        }
    }

    /// Record `i`, read from memory or from the file.
    fn record(&self, i: usize) -> Cow<'_, [u8]> {
        let (start, end) = self.range(i);
        match self.in_memory(start, end) {
            Ok(r) => Cow::Borrowed(r),
            Err(s) => {
                let mut out = vec![0; (end - start) as usize];
                s.read_at(&mut out, start);
                Cow::Owned(out)
            }
        }
    }

    /// A reader of records in order, reading a spilled store a block at a time.
    pub(crate) fn cursor(&self) -> Cursor<'_> {
        Cursor {
            from: self,
            block: Vec::new(),
            block_start: 0,
        }
    }

    /// Entry `i`, decoded. Panics when `i` is out of range, as indexing a slice does.
    pub(crate) fn get(&self, i: usize) -> WorkspaceEntry {
        decoded(&self.record(i))
    }

    /// The path of entry `i`, without decoding the rest.
    pub(crate) fn path(&self, i: usize) -> Cow<'_, str> {
        match self.record(i) {
            Cow::Borrowed(r) => Cow::Borrowed(path_of(r)),
            Cow::Owned(r) => Cow::Owned(path_of(&r).to_owned()),
        }
    }

    /// What entry `i` is, without decoding the rest.
    pub(crate) fn kind(&self, i: usize) -> Kind {
        kind_of(&self.record(i))
    }

    /// The number of the entry at `path`, if any (entries are in path order).
    pub(crate) fn find(&self, path: &str) -> Option<usize> {
        let i = self.partition_point(|p| p < path);
        (i < self.len() && self.path(i) == path).then_some(i)
    }

    /// The number of the first entry whose path is not `before` (entries are in path order).
    pub(crate) fn partition_point(&self, before: impl Fn(&str) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(&self.path(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Every entry, decoded, in order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        self.iter_range(0..self.len())
    }

    /// Entries `range`, decoded, in order.
    pub(crate) fn iter_range(&self, range: std::ops::Range<usize>) -> Iter<'_> {
        Iter {
            cursor: self.cursor(),
            front: range.start,
            back: range.end.min(self.len()),
        }
    }

    /// Unpacks every entry.
    pub(crate) fn to_vec(&self) -> Vec<WorkspaceEntry> {
        self.iter().collect()
    }
}

/// Reads records of [`PackedEntries`] by number, keeping the block of a spilled store that the
/// last one was in: reading them in order costs a read per block, not per record.
pub(crate) struct Cursor<'a> {
    from: &'a PackedEntries,
    block: Vec<u8>,
    block_start: u64,
}

impl Cursor<'_> {
    /// Record `i`.
    pub(crate) fn record(&mut self, i: usize) -> &[u8] {
        let (start, end) = self.from.range(i);
        let s = match self.from.in_memory(start, end) {
            Ok(r) => return r,
            Err(s) => s,
        };
        let held = self.block_start..=self.block_start + self.block.len() as u64;
        if !(held.contains(&start) && held.contains(&end)) {
            let upto = (start + BLOCK as u64).max(end).min(s.flushed);
            self.block.resize((upto - start) as usize, 0);
            s.read_at(&mut self.block, start);
            self.block_start = start;
        }
        let at = (start - self.block_start) as usize;
        &self.block[at..at + (end - start) as usize]
    }

    /// Entry `i`, decoded.
    pub(crate) fn get(&mut self, i: usize) -> WorkspaceEntry {
        decoded(self.record(i))
    }
}

/// Entries of [`PackedEntries`] decoded in order (see [`PackedEntries::iter_range`]).
pub(crate) struct Iter<'a> {
    cursor: Cursor<'a>,
    front: usize,
    back: usize,
}

impl Iterator for Iter<'_> {
    type Item = WorkspaceEntry;

    fn next(&mut self) -> Option<WorkspaceEntry> {
        if self.front >= self.back {
            return None;
        }
        self.front += 1;
        Some(self.cursor.get(self.front - 1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.back.saturating_sub(self.front);
        (n, Some(n))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<WorkspaceEntry> {
        if self.front >= self.back {
            return None;
        }
        self.back -= 1;
        Some(self.cursor.from.get(self.back))
    }
}

impl ExactSizeIterator for Iter<'_> {}

/// Decodes a record this module encoded.
pub(crate) fn decoded(record: &[u8]) -> WorkspaceEntry {
    decode(&mut Reader { buf: record, at: 0 }).expect("packed entries decode as they were encoded")
}

/// The path of a record this module encoded.
pub(crate) fn path_of(record: &[u8]) -> &str {
    let mut r = Reader { buf: record, at: 0 };
    let n = r.u64().expect("packed entries decode as they were encoded") as usize;
    // Encoded from a `String`.
    std::str::from_utf8(&record[r.at..r.at + n]).unwrap_or_default()
}

/// What the entry of a record this module encoded is.
fn kind_of(record: &[u8]) -> Kind {
    let mut r = Reader { buf: record, at: 0 };
    let step = |r: &mut Reader<'_>| -> Result<Kind, &'static str> {
        let n = r.u64()? as usize;
        r.bytes(n)?;
        r.u64()?;
        r.u64()?;
        Ok(match r.byte()? {
            DIR => Kind::Dir,
            SYMLINK => Kind::Symlink,
            _ => Kind::File(r.u64()?),
        })
    };
    step(&mut r).expect("packed entries decode as they were encoded")
}

/// A manifest with its entries packed: what a target holds of a big tree between passes and
/// while staging it (see the module docs).
#[derive(Debug)]
pub struct PackedManifest {
    pub(crate) version: u32,
    pub(crate) params: ChunkParams,
    pub(crate) root_mode: u32,
    pub(crate) root_mtime_ns: i64,
    pub(crate) skipped: Vec<SkippedEntry>,
    pub(crate) entries: PackedEntries,
}

impl PackedManifest {
    /// Packs `m`'s entries (dropping its vector of them). `m` is trusted: validate it first.
    pub(crate) fn of(m: WorkspaceManifest) -> Self {
        let entries = PackedEntries::of(&m.entries);
        Self {
            version: m.version,
            params: m.params,
            root_mode: m.root_mode,
            root_mtime_ns: m.root_mtime_ns,
            skipped: m.skipped,
            entries,
        }
    }

    /// A manifest with `m`'s version, parameters and root, and no entry or skipped path yet;
    /// refused when that head does not pass [`crate::validate()`].
    pub fn with_head_of(m: &WorkspaceManifest, limits: &Limits) -> Result<Self> {
        check_head(m, m.root_mode, &[], limits)?;
        Ok(Self {
            version: m.version,
            params: m.params,
            root_mode: m.root_mode,
            root_mtime_ns: m.root_mtime_ns,
            skipped: Vec::new(),
            entries: PackedEntries::default(),
        })
    }

    /// Appends the next part of a manifest streamed in path order (`entries`, and more skipped
    /// paths), checked as [`crate::validate::validate_from`] checks it: against everything held.
    /// Left as it was when the part does not pass.
    pub fn append(
        &mut self,
        entries: Vec<WorkspaceEntry>,
        skipped: Vec<SkippedEntry>,
        limits: &Limits,
    ) -> Result<()> {
        let start = self.entries.len();
        let skipped_start = self.skipped.len();
        self.skipped.extend(skipped);
        let checked = check_head(&self.empty(), self.root_mode, &self.skipped, limits)
            .and_then(|()| check_count(start + entries.len(), limits))
            .and_then(|()| {
                let held = &self.entries;
                let prev = start.checked_sub(1).map(|i| held.path(i));
                let kind_before = |p: &str| held.find(p).map(|j| held.get(j).kind);
                let total = held.total_bytes();
                let prev = (total, prev.as_deref());
                check_appended(&entries, &self.params, prev, kind_before, limits)
            });
        let mark = self.entries.mark();
        let pushed = checked.and_then(|()| entries.iter().try_for_each(|e| self.entries.push(e)));
        if let Err(e) = pushed {
            self.skipped.truncate(skipped_start);
            self.entries.rollback(mark);
            return Err(e);
        }
        Ok(())
    }

    /// Keeps the entries' records in an unnamed file in `dir` from now on (see
    /// [`PackedEntries`]): a manifest of a million entries then holds about 8 bytes of each in
    /// memory.
    pub fn spill_to(&mut self, dir: &Path) -> Result<()> {
        self.entries.spill(dir)
    }

    /// The manifest this one becomes with `change`, the root mode and mtime `root` and the
    /// skipped list `skipped` (see [`crate::patch`]), checked as it is built: refused when the
    /// change does not fit or the result is not a valid manifest. Its digest is the caller's
    /// to check.
    pub fn patched(
        &self,
        change: &ManifestChange,
        (root_mode, root_mtime_ns): (u32, i64),
        skipped: Vec<SkippedEntry>,
        limits: &Limits,
    ) -> Result<PackedManifest> {
        check_change(|r| self.entries.find(r).is_some(), change)?;
        let mut out = Self {
            version: self.version,
            params: self.params,
            root_mode,
            root_mtime_ns,
            skipped: Vec::new(),
            entries: self.entries.empty_like()?,
        };
        out.entries.reserve(
            self.entries.len() + change.changed.len(),
            self.entries.packed_bytes(),
        );
        let mut batch = Vec::with_capacity(BATCH);
        let mut skipped = Some(skipped);
        for e in merged(self.entries.iter().map(Cow::Owned), change) {
            batch.push(e.into_owned());
            if batch.len() == BATCH {
                let part = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                out.append(part, skipped.take().unwrap_or_default(), limits)?;
            }
        }
        out.append(batch, skipped.take().unwrap_or_default(), limits)?;
        out.entries.shrink();
        Ok(out)
    }

    /// Sets the root mode and mtime and the skipped list, once they pass the checks of
    /// [`crate::validate()`]; left as it was when they do not.
    pub fn set_root(
        &mut self,
        (root_mode, root_mtime_ns): (u32, i64),
        skipped: Vec<SkippedEntry>,
        limits: &Limits,
    ) -> Result<()> {
        check_head(&self.empty(), root_mode, &skipped, limits)?;
        (self.root_mode, self.root_mtime_ns) = (root_mode, root_mtime_ns);
        self.skipped = skipped;
        Ok(())
    }

    /// A manifest of this head, with no entry and no skipped path.
    pub(crate) fn empty(&self) -> WorkspaceManifest {
        let mut m = WorkspaceManifest::new(self.params);
        m.version = self.version;
        (m.root_mode, m.root_mtime_ns) = (self.root_mode, self.root_mtime_ns);
        m
    }

    /// The manifest unpacked.
    pub fn unpack(&self) -> WorkspaceManifest {
        let mut m = self.empty();
        m.entries = self.entries.to_vec();
        m.skipped = self.skipped.clone();
        m
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the manifest has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// Every entry, decoded, in path order.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = WorkspaceEntry> + '_ {
        self.entries.iter()
    }

    /// Number of regular files.
    pub fn file_count(&self) -> u64 {
        self.entries.file_count()
    }

    /// Sum of the sizes of the regular files.
    pub fn total_bytes(&self) -> u64 {
        self.entries.total_bytes()
    }

    /// The skipped list.
    pub fn skipped(&self) -> &[SkippedEntry] {
        &self.skipped
    }

    /// The manifest's digest ([`crate::digest`]) with this root and skipped list.
    pub fn digest_with(&self, root: (u32, i64), skipped: &[SkippedEntry]) -> ContentHash {
        let mut d = ManifestDigest::new(self.version, &self.params, root, self.entries.len());
        for e in self.entries.iter() {
            d.entry(&e);
        }
        d.finish(skipped)
    }

    /// The manifest's digest ([`crate::digest`]).
    pub fn digest(&self) -> ContentHash {
        self.digest_with((self.root_mode, self.root_mtime_ns), &self.skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, chunks: &[(u8, u32)]) -> WorkspaceEntry {
        let chunks: Vec<ChunkRef> = chunks
            .iter()
            .map(|&(h, len)| ChunkRef {
                hash: ContentHash([h; 32]),
                len,
            })
            .collect();
        let size = chunks.iter().map(|c| u64::from(c.len)).sum();
        let hash = match chunks.as_slice() {
            [c] => c.hash,
            _ => ContentHash([0xee; 32]),
        };
        WorkspaceEntry {
            path: path.into(),
            mode: 0o644,
            mtime_ns: -5,
            kind: EntryKind::File(FileData { size, hash, chunks }),
        }
    }

    fn dir_entry(path: &str) -> WorkspaceEntry {
        WorkspaceEntry {
            path: path.into(),
            mode: 0o755,
            mtime_ns: 1,
            kind: EntryKind::Dir,
        }
    }

    fn entries() -> Vec<WorkspaceEntry> {
        let mut one_other = file("a/c", &[(7, 10)]);
        // One chunk whose hash is not the file's: kept as a list.
        if let EntryKind::File(f) = &mut one_other.kind {
            f.hash = ContentHash([9; 32]);
        }
        vec![
            WorkspaceEntry {
                path: "a".into(),
                mode: 0o755,
                mtime_ns: 1_700_000_000_123_456_789,
                kind: EntryKind::Dir,
            },
            file("a/b", &[(1, 100)]),
            one_other,
            file("a/d", &[(2, 70_000), (3, 5)]),
            file("a/e", &[]),
            WorkspaceEntry {
                path: "a/l".into(),
                mode: 0o777,
                mtime_ns: 3,
                kind: EntryKind::Symlink { target: "b".into() },
            },
            dir_entry("z"),
            file("z/ü", &[(4, 1)]),
        ]
    }

    #[test]
    fn entries_come_back_as_they_went_in() {
        let src = entries();
        let p = PackedEntries::of(&src);
        assert_eq!(p.len(), src.len());
        assert_eq!(p.to_vec(), src);
        for (i, e) in src.iter().enumerate() {
            assert_eq!(p.path(i), e.path);
            let kind = match &e.kind {
                EntryKind::Dir => Kind::Dir,
                EntryKind::Symlink { .. } => Kind::Symlink,
                EntryKind::File(f) => Kind::File(f.size),
            };
            assert_eq!(p.kind(i), kind, "{}", e.path);
            assert_eq!(p.find(&e.path), Some(i));
        }
        assert_eq!(p.find("a/bb"), None);
        assert_eq!(p.find(""), None);
        assert_eq!(p.find("zz"), None);
        assert_eq!(p.file_count(), 5);
        assert_eq!(p.total_bytes(), 100 + 10 + 70_005 + 1);
        assert_eq!(p.iter().next_back().map(|e| e.path), Some("z/ü".into()));
    }

    #[test]
    fn a_file_of_one_chunk_takes_about_its_path_and_one_hash() {
        let src: Vec<WorkspaceEntry> = (0..1000)
            .map(|i| {
                file(
                    &format!("src/mod{:03}/file{i:05}.rs", i / 100),
                    &[(1, 4000)],
                )
            })
            .collect();
        let p = PackedEntries::of(&src);
        let per_entry = p.heap_bytes() / src.len();
        // Path 23, mode 3, mtime 1, kind 1, size 2, hash 32, offset 8.
        assert!(per_entry <= 72, "{per_entry} bytes per entry");
    }

    /// Enough one-chunk files, in directories of 100, for the records to span several blocks.
    fn many(n: usize) -> Vec<WorkspaceEntry> {
        let mut out = Vec::new();
        for i in 0..n {
            if i % 100 == 0 {
                out.push(dir_entry(&format!("d{:04}", i / 100)));
            }
            out.push(file(
                &format!("d{:04}/file{i:06}.rs", i / 100),
                &[((i % 251) as u8, 1 + i as u32)],
            ));
        }
        out
    }

    #[test]
    fn spilled_entries_read_back_from_the_file_and_the_tail_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = many(12_000);
        let mut p = PackedEntries::spilled(dir.path()).expect("spilled");
        for e in &src {
            p.push(e).expect("push");
        }
        assert!(p.is_spilled());
        assert!(
            (p.packed_bytes() as u64) > 2 * BLOCK as u64,
            "the records span blocks"
        );
        assert!(
            p.heap_bytes() < 2 * BLOCK + src.len().next_power_of_two() * 8,
            "{} bytes in memory",
            p.heap_bytes()
        );
        assert_eq!(p.to_vec(), src);
        // Random reads (from the file and from the tail), and backwards.
        for i in [0, 1, 99, 5_000, 11_999, src.len() - 1] {
            assert_eq!(p.get(i), src[i]);
            assert_eq!(p.path(i), src[i].path);
            assert_eq!(p.find(&src[i].path), Some(i));
        }
        assert_eq!(p.iter().rev().take(3).count(), 3);
        assert_eq!(p.iter().next_back(), src.last().cloned());
        let middle: Vec<_> = p.iter_range(4_000..4_010).collect();
        assert_eq!(middle, src[4_000..4_010]);
        assert_eq!(p.file_count(), 12_000);

        // Copied record by record into another spilled store, then cut back.
        let mut copy = p.empty_like().expect("like");
        let mut cursor = p.cursor();
        for i in 0..p.len() {
            copy.push_record(cursor.record(i)).expect("copy");
        }
        assert_eq!(copy.to_vec(), src);
        let mark = {
            let mut short = p.empty_like().expect("like");
            for e in &src[..10] {
                short.push(e).expect("push");
            }
            let mark = short.mark();
            for e in &src[10..] {
                short.push(e).expect("push");
            }
            short.rollback(mark);
            assert_eq!(short.to_vec(), src[..10], "back past flushed blocks");
            short.push(&src[10]).expect("push after a rollback");
            assert_eq!(short.to_vec(), src[..11]);
            mark
        };
        copy.rollback(mark);
        assert_eq!(copy.len(), 10);
        assert_eq!(copy.file_count(), 9);

        // Records kept in memory move to a file whole.
        let mut mem = PackedEntries::of(&src);
        mem.spill(dir.path()).expect("spill");
        assert!(mem.is_spilled());
        assert_eq!(mem.to_vec(), src);
        mem.push(&file("e", &[(1, 1)])).expect("push");
        assert_eq!(mem.len(), src.len() + 1);
        assert!(
            PackedEntries::spilled(&dir.path().join("missing")).is_err(),
            "a missing directory is an error, not a panic"
        );
    }

    fn manifest(entries: Vec<WorkspaceEntry>) -> WorkspaceManifest {
        let mut m = WorkspaceManifest::new(ChunkParams::DEFAULT);
        m.entries = entries;
        m
    }

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn a_manifest_appended_in_parts_is_the_manifest_and_a_bad_part_changes_nothing() {
        let whole = manifest(entries());
        crate::validate(&whole, &limits()).expect("valid");
        let mut p = PackedManifest::with_head_of(&whole, &limits()).expect("head");
        p.append(whole.entries[..4].to_vec(), vec![], &limits())
            .expect("first part");
        let before = p.unpack();
        // Out of order, a parent that is a file, a path seen already: each refused, nothing kept.
        for (bad, why) in [
            (vec![file("a/a", &[(5, 1)])], "out of order"),
            (vec![file("a/d/x", &[(5, 1)])], "which is a file"),
            (vec![file("a/d", &[(5, 1)])], "duplicate path"),
            (vec![file("b/x", &[(5, 1)])], "not listed before it"),
        ] {
            let err = p.append(bad, vec![], &limits()).expect_err(why).to_string();
            assert!(err.contains(why), "{why}: {err}");
            assert_eq!(p.unpack(), before, "{why}");
        }
        let cap = Limits {
            max_entries: 4,
            ..limits()
        };
        let err = p.append(whole.entries[4..].to_vec(), vec![], &cap);
        assert!(err.is_err(), "more entries than the cap");
        assert_eq!(p.unpack(), before);
        p.append(
            whole.entries[4..].to_vec(),
            whole.skipped.clone(),
            &limits(),
        )
        .expect("the rest");
        assert_eq!(p.unpack(), whole);
        assert_eq!(p.digest(), crate::digest(&whole));
        assert_eq!(p.file_count(), whole.file_count());
        assert_eq!(p.total_bytes(), whole.total_bytes());
    }

    #[test]
    fn a_patched_manifest_is_what_patch_builds_and_an_invalid_result_is_refused() {
        let mut base_entries = vec![dir_entry("d")];
        // More entries than one batch, so that the result is checked across batches.
        for i in 0..(BATCH + 10) {
            base_entries.push(file(&format!("d/f{i:05}"), &[((i % 250) as u8, 10)]));
        }
        base_entries.push(dir_entry("e"));
        base_entries.push(file("e/x", &[(1, 3)]));
        let base = manifest(base_entries);
        crate::validate(&base, &limits()).expect("valid");
        let packed = PackedManifest::of(base.clone());
        let change = ManifestChange {
            changed: vec![file("d/f00007", &[(9, 11)]), file("d/new", &[(8, 1)])],
            removed: vec!["d/f00003".into(), "e/x".into()],
        };
        let root = (0o700, 42);
        let want = crate::patch(&base, change.clone(), root, vec![]).expect("patch");
        let got = packed
            .patched(&change, root, vec![], &limits())
            .expect("patched");
        assert_eq!(got.unpack(), want);
        assert_eq!(got.digest(), crate::digest(&want));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spilled = PackedManifest::of(base.clone());
        spilled.spill_to(dir.path()).expect("spill");
        let got = spilled
            .patched(&change, root, vec![], &limits())
            .expect("patched");
        assert!(got.entries.is_spilled(), "built where its base is");
        assert_eq!(got.unpack(), want);

        // Removing a directory whose entries stay leaves them without a parent.
        let orphans = ManifestChange {
            changed: vec![],
            removed: vec!["e".into()],
        };
        let err = packed
            .patched(&orphans, root, vec![], &limits())
            .expect_err("orphans")
            .to_string();
        assert!(err.contains("e/x"), "{err}");
        let mut same = PackedManifest::of(base.clone());
        let err = same.set_root((0o10_0000, 1), vec![], &limits());
        assert!(err.is_err(), "a root mode outside 0o7777");
        assert_eq!(same.unpack(), base, "left as it was");
        same.set_root(root, vec![], &limits()).expect("root");
        assert_eq!((same.root_mode, same.root_mtime_ns), root);
        let unknown = ManifestChange {
            changed: vec![],
            removed: vec!["nowhere".into()],
        };
        assert!(packed.patched(&unknown, root, vec![], &limits()).is_err());
    }
}
