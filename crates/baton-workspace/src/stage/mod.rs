//! The staging writer: a workspace is rebuilt chunk by chunk in `<dest>.baton-staging-<id>`
//! beside its destination, verified, and only then handed to `apply`.
//!
//! Layout of the staging directory: `tree/` (the workspace being built), `journal` (which chunks
//! are written, so a reopened stager resumes), `aside/` briefly during [`Stager::update`], and
//! `apply.json` once apply has begun. Nothing of ours ever sits inside `tree/`.
//!
//! Each file is verified (BLAKE3 and size) and given its mode and mtime as soon as its last chunk
//! lands, so that after a pre-copy, `finish` only checks what changed since. The BLAKE3 is that
//! of the bytes written: a one-chunk file's is its chunk's hash, already checked for the bytes
//! written (or computed from them), and a file of several chunks is hashed in file order as its
//! chunks land (see `claim`). Its size on disk is still checked. Only a file whose beginning was
//! written before (an earlier pass) is read back whole, and a stager reopened on a staging
//! directory (after a crash) reads every file back at `finish`.

mod change;
mod chunks;
mod claim;
mod extend;
mod journal;
mod link;
mod tree;
mod update;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, DirBuilder, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use baton_proto::workspace::{
    ChunkRef, ContentHash, EntryKind, SkippedEntry, WorkspaceEntry, WorkspaceManifest,
};

use crate::apply::{APPLY_RECORD, StagedTree};
use crate::chunk::hash_bytes;
use crate::error::{Error, Result, io_err};
use crate::fsutil::{remove_tree, set_mtime, sync_filesystem};
use crate::index::Proof;
use crate::packed::{Kind, PackedManifest};
use crate::pool;
use crate::progress::Progress;
use crate::scan::{ScanStats, Scanned};
use crate::spool::{ManifestHead, PART_ENTRIES, SpoolWriter, SpooledScan};
use crate::spool_index::LocalChunks;
use crate::validate::{Limits, validate};
use chunks::{ChunkTable, Placement};
pub use claim::{Claim, Seal};
use journal::Journal;
pub use link::{LINK_VAR, link_enabled};
use tree::{create_entry, created_lazily, verify_file};

pub(crate) const TREE: &str = "tree";

/// Most write handles kept open, for files written chunk by chunk (a one-chunk file is opened,
/// written and sealed at once).
pub(super) const OPEN_FILES: usize = 64;

/// Per entry: placements still to write, and whether the file was verified (and given its mode
/// and mtime) since its last write.
#[derive(Clone, Copy, Default)]
struct FileState {
    left: u32,
    verified: bool,
    /// The file exists in the tree (files with content are created at their first write).
    created: bool,
    /// The file is a link to the destination's (see `link`): checked again at `finish`.
    linked: bool,
    /// The entry is a regular file (known without reading the entry back).
    file: bool,
}

/// The manifest a staged tree was verified against, as the stager held it (packed).
#[derive(Debug)]
pub struct ReceivedManifest(PackedManifest);

impl ReceivedManifest {
    /// A spool in `dir` of the tree at `root` (canonical) as this machine received it, every
    /// file of which was verified against this manifest by `known_ns`: see
    /// [`Scanned::of_received`]. Unpacked a part at a time, so that it never costs the whole
    /// manifest in memory.
    pub fn spool(self, root: PathBuf, known_ns: i64, dir: &Path) -> Result<SpooledScan> {
        let m = self.0;
        let mut w = SpoolWriter::create(dir, &root, m.params)?;
        let n = m.entries.len();
        let mut start = 0;
        while start < n {
            let end = (start + PART_ENTRIES).min(n);
            let mut part = m.empty();
            part.entries = m.entries.iter_range(start..end).collect();
            w.append(&Scanned::of_received(part, root.clone(), known_ns))?;
            start = end;
        }
        let head = ManifestHead {
            version: m.version,
            params: m.params,
            root_mode: m.root_mode,
            root_mtime_ns: m.root_mtime_ns,
            skipped: m.skipped,
        };
        Ok(w.finish(head, ScanStats::default()))
    }
}

/// Builds one workspace in a staging directory beside its destination.
pub struct Stager {
    dest: PathBuf,
    id: String,
    dir: PathBuf,
    tree: Arc<Path>,
    manifest: PackedManifest,
    chunks: ChunkTable,
    /// Chunks claimed for writing and not yet settled (see [`Stager::claim`]).
    claimed: HashSet<ContentHash>,
    files: Vec<FileState>,
    /// Write handles of files being written, by entry (at most [`OPEN_FILES`]).
    open: HashMap<u32, Arc<File>>,
    /// The BLAKE3 of each file being written chunk by chunk, fed as its chunks land.
    hashers: HashMap<u32, Arc<Mutex<claim::FileHasher>>>,
    /// Locked only to flush from `&self` ([`Stager::sync`]).
    journal: Mutex<Journal>,
    progress: Arc<Progress>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Stager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stager")
            .field("dir", &self.dir)
            .field("chunks", &self.chunks.len())
            .field("written", &self.chunks.written_count())
            .finish_non_exhaustive()
    }
}

/// What [`Stager::fill_from_index`] copied locally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filled {
    /// Distinct chunks copied.
    pub chunks: u64,
    /// Their bytes (each counted once).
    pub bytes: u64,
}

/// Checks a transfer id is usable in a file name: 1–64 of `[A-Za-z0-9_-]` (a UUID is).
pub fn check_transfer_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadOption(format!(
            "transfer id {id:?} must be 1 to 64 letters, digits, '-' or '_'"
        )))
    }
}

/// `<parent>/<name><suffix>`: the paths Baton keeps beside a destination.
pub(crate) fn beside(dest: &Path, suffix: &str) -> Result<PathBuf> {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Err(Error::unsafe_path(dest, "has no parent or no final name"));
    };
    let mut n = OsString::from(name);
    n.push(suffix);
    Ok(parent.join(n))
}

/// The staging directory of transfer `id` for `dest`.
pub fn staging_dir(dest: &Path, id: &str) -> Result<PathBuf> {
    check_transfer_id(id)?;
    beside(dest, &format!(".baton-staging-{id}"))
}

/// Where each chunk of `m` goes, in first-use order; `done(entry, chunk)` says which places
/// already hold their bytes. Also returns per-entry counts of places still to write. A chunk
/// all of whose places are done is marked written.
fn placements<E: std::borrow::Borrow<WorkspaceEntry>>(
    entries: impl ExactSizeIterator<Item = E>,
    done: impl Fn(usize, &ContentHash) -> bool,
) -> Result<(ChunkTable, Vec<FileState>)> {
    let mut table = ChunkTable::default();
    let mut files = vec![FileState::default(); entries.len()];
    for (i, e) in entries.enumerate() {
        let e = e.borrow();
        let EntryKind::File(f) = &e.kind else {
            continue;
        };
        files[i].file = true;
        let mut offset = 0u64;
        for c in &f.chunks {
            let is_done = done(i, &c.hash);
            let place = Placement {
                entry: i as u32,
                offset,
                done: is_done,
            };
            if table.place(c.hash, c.len, place).len != c.len {
                return Err(Error::manifest(
                    &e.path,
                    format!("chunk {} appears with two different lengths", c.hash),
                ));
            }
            if !is_done {
                files[i].left += 1;
            }
            offset += u64::from(c.len);
        }
    }
    table.mark_complete_written();
    table.shrink();
    Ok((table, files))
}

impl Stager {
    /// Opens the staging directory of transfer `transfer_id` for `dest`, validating `manifest`
    /// first (it is hostile until then).
    ///
    /// A staging directory left by the same transfer with the same manifest is resumed: what its
    /// journal records as written is not asked for again (files are verified again at
    /// `finish`). One left with another manifest is discarded. Refused when `dest`'s parent is
    /// missing, or when this transfer was already applied (see [`crate::leftovers`]).
    pub fn create(
        dest: &Path,
        transfer_id: &str,
        manifest: WorkspaceManifest,
        limits: &Limits,
    ) -> Result<Self> {
        validate(&manifest, limits)?;
        Self::create_packed(dest, transfer_id, PackedManifest::of(manifest))
    }

    /// [`Stager::create`] from a manifest packed as it was checked (see [`PackedManifest`]),
    /// so that a big tree's manifest is never held unpacked whole.
    pub fn create_packed(
        dest: &Path,
        transfer_id: &str,
        mut manifest: PackedManifest,
    ) -> Result<Self> {
        let dir = staging_dir(dest, transfer_id)?;
        let parent = dir.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            return Err(Error::MissingParent {
                path: dest.to_path_buf(),
            });
        }
        if dir.join(APPLY_RECORD).exists() {
            return Err(Error::Conflict {
                path: dir,
                reason: "this transfer was already applied; commit or roll it back first".into(),
            });
        }
        let tree = dir.join(TREE);
        let digest = manifest.digest().0;
        let resumed = match tree.is_dir() {
            true => Journal::open(&dir, &digest)?,
            false => None,
        };
        let resume = resumed.is_some();
        let (journal, written) = match resumed {
            Some(r) => r,
            None => {
                remove_tree(&dir).map_err(io_err("remove", &dir))?;
                let mut b = DirBuilder::new();
                b.mode(0o700);
                b.create(&dir).map_err(io_err("create", &dir))?;
                b.create(&tree).map_err(io_err("create", &tree))?;
                (
                    Journal::write(&dir, &digest, std::iter::empty())?,
                    HashSet::new(),
                )
            }
        };
        // Its records go to disk: with them in memory, a tree of 10⁶ files costs the daemon
        // about 80 MB more for as long as it is staged.
        manifest.spill_to(&dir)?;
        let unlinked = match resume {
            true => link::drop_links(&tree, manifest.entries())?,
            false => HashSet::new(),
        };
        let (chunks, files) = placements(manifest.entries.iter(), |i, h| {
            written.contains(h) && !unlinked.contains(&i)
        })?;
        drop(written);
        let mut stager = Self {
            dest: dest.to_path_buf(),
            id: transfer_id.to_string(),
            dir,
            tree: Arc::from(tree),
            manifest,
            chunks,
            claimed: HashSet::new(),
            files,
            open: HashMap::new(),
            hashers: HashMap::new(),
            journal: Mutex::new(journal),
            progress: Arc::default(),
            buf: Vec::new(),
        };
        for (e, state) in stager.manifest.entries.iter().zip(&mut stager.files) {
            if !resume && created_lazily(&e) {
                continue;
            }
            state.verified = create_entry(&stager.tree, &e, resume)?;
            state.created = true;
        }
        stager.restart_progress();
        Ok(stager)
    }

    fn restart_progress(&self) {
        let mut files = 0;
        let mut bytes = 0;
        for s in &self.files {
            if s.left == 0 && s.file {
                files += 1;
            }
        }
        for u in self.chunks.iter() {
            bytes += u.at.iter().filter(|p| p.done).count() as u64 * u64::from(u.len);
        }
        self.progress.start(self.file_count(), self.total_bytes());
        self.progress.add(files, bytes);
    }

    /// Counters for a progress bar: files completed and bytes written, out of the whole tree.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// The staging directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest being staged, unpacked (a copy: the stager holds it packed).
    pub fn manifest(&self) -> WorkspaceManifest {
        self.manifest.unpack()
    }

    /// Number of regular files in the manifest being staged.
    pub fn file_count(&self) -> u64 {
        self.manifest.entries.file_count()
    }

    /// Sum of the sizes of the regular files in the manifest being staged.
    pub fn total_bytes(&self) -> u64 {
        self.manifest.entries.total_bytes()
    }

    /// The skipped list of the manifest being staged.
    pub fn skipped(&self) -> &[SkippedEntry] {
        &self.manifest.skipped
    }

    /// The digest ([`crate::digest`]) of the staged manifest with another root mode and mtime
    /// and another skipped list, without building that manifest.
    pub fn digest_with(&self, root: (u32, i64), skipped: &[SkippedEntry]) -> ContentHash {
        self.manifest.digest_with(root, skipped)
    }

    /// Chunks still to write, distinct, in the order the manifest first uses them.
    pub fn missing(&self) -> Vec<ContentHash> {
        self.unwritten().map(|s| s.hash).collect()
    }

    fn unwritten(&self) -> impl Iterator<Item = &chunks::Slot> {
        self.chunks.iter().filter(|s| !s.written)
    }

    /// Chunks still to write with their lengths, distinct, in the order the manifest first uses
    /// them.
    pub fn missing_chunks(&self) -> Vec<ChunkRef> {
        self.unwritten()
            .map(|s| ChunkRef {
                hash: s.hash,
                len: s.len,
            })
            .collect()
    }

    /// [`Stager::missing_chunks`] in the order to ask for them, each with its lane (0 or 1):
    /// every file's chunks go to one lane, and the two lanes take turns, `unit` bytes at a
    /// time. The kernel writes into one file for one writer at a time, and copying bytes into
    /// new pages is most of a target's work, so chunks that arrive one file after another keep
    /// one writing thread busy and the other waiting on it; in two lanes, with one writer per
    /// lane, each writer has a file of its own. Each file's chunks stay in order (its BLAKE3 is
    /// computed as they land), and every chunk comes once.
    pub fn missing_chunks_interleaved(&self, unit: u64) -> Vec<(ChunkRef, u8)> {
        // Runs of consecutive chunks that go into one file, dealt to the lane with fewer bytes.
        let mut lanes: [(VecDeque<ChunkRef>, u64); 2] = Default::default();
        let mut last_entry = None;
        let mut lane = 0;
        for s in self.unwritten() {
            let entry = s.at.iter().find(|p| !p.done).map(|p| p.entry);
            if entry.is_none() || entry != last_entry {
                lane = usize::from(lanes[1].1 < lanes[0].1);
                last_entry = entry;
            }
            lanes[lane].0.push_back(ChunkRef {
                hash: s.hash,
                len: s.len,
            });
            lanes[lane].1 += u64::from(s.len);
        }
        let mut out = Vec::with_capacity(lanes[0].0.len() + lanes[1].0.len());
        let mut lane = 0;
        while !lanes[0].0.is_empty() || !lanes[1].0.is_empty() {
            let mut taken = 0u64;
            while taken < unit.max(1) {
                let Some(c) = lanes[lane].0.pop_front() else {
                    break;
                };
                taken += u64::from(c.len);
                out.push((c, lane as u8));
            }
            lane = 1 - lane;
        }
        out
    }

    /// Bytes of the chunks still to write (each distinct chunk once).
    pub fn missing_bytes(&self) -> u64 {
        self.unwritten().map(|s| u64::from(s.len)).sum()
    }

    /// Writes a received chunk wherever the manifest uses it. The bytes are checked against the
    /// hash first; a mismatch writes nothing. Returns false when the chunk was already written.
    pub fn put_chunk(&mut self, hash: &ContentHash, bytes: &[u8]) -> Result<bool> {
        self.check_chunk(hash, bytes)?;
        if hash_bytes(bytes) != *hash {
            return Err(Error::BadChunk {
                hash: *hash,
                reason: "content does not match its hash".into(),
            });
        }
        if self.chunks.is_written(hash) {
            return Ok(false);
        }
        self.write(hash, bytes, true)?;
        Ok(true)
    }

    /// [`Stager::put_chunk`] without hashing the bytes again: the caller has checked that
    /// `bytes` hash to `hash` (as the transfer's `open_chunk` does). The length and the hash's
    /// place in the manifest are still checked. Returns false when the chunk was already written.
    ///
    /// Bytes that do not hash to `hash` are not all caught: a file of one chunk is sealed on the
    /// strength of the caller's check (one of several chunks is still hashed whole, and fails).
    /// Use [`Stager::put_chunk`] for unchecked input.
    pub fn put_verified_chunk(&mut self, hash: &ContentHash, bytes: &[u8]) -> Result<bool> {
        self.check_chunk(hash, bytes)?;
        debug_assert!(
            hash_bytes(bytes) == *hash,
            "put_verified_chunk was given bytes that do not hash to {hash}"
        );
        if self.chunks.is_written(hash) {
            return Ok(false);
        }
        self.write(hash, bytes, true)?;
        Ok(true)
    }

    /// Refuses a chunk the manifest does not list, or with another length.
    fn check_chunk(&self, hash: &ContentHash, bytes: &[u8]) -> Result<()> {
        let Some(u) = self.chunks.get(hash) else {
            return Err(Error::BadChunk {
                hash: *hash,
                reason: "is not part of this manifest".into(),
            });
        };
        if bytes.len() != u.len as usize {
            return Err(Error::BadChunk {
                hash: *hash,
                reason: format!("is {} bytes, the manifest says {}", bytes.len(), u.len),
            });
        }
        Ok(())
    }

    /// Copies every missing chunk that `index` holds (proved as it is read, see
    /// [`ChunkIndex::read_into`]); chunks whose source changed since it was indexed stay
    /// missing.
    pub fn fill_from_index(&mut self, index: &(impl LocalChunks + ?Sized)) -> Result<Filled> {
        let mut filled = Filled::default();
        if index.params() != self.manifest.params {
            return Ok(filled);
        }
        let mut buf = Vec::new();
        // By number, not by a list of hashes: writing does not add or reorder chunks.
        for i in 0..self.chunks.len() {
            let Some(hash) = self.chunks.slot(i).filter(|s| !s.written).map(|s| s.hash) else {
                continue;
            };
            if !index.contains(&hash) {
                continue;
            }
            if let Some(proof) = index.read_proved(&hash, &mut buf) {
                self.write(&hash, &buf, proof == Proof::Hashed)?;
                filled.chunks += 1;
                filled.bytes += buf.len() as u64;
            }
        }
        Ok(filled)
    }

    fn journal(&mut self) -> &mut Journal {
        self.journal
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Verifies every file not verified since its last write (after a resume: all of them),
    /// sets the modes and mtimes of directories (deepest first) and symlinks, flushes the
    /// filesystem, and returns the verified tree. Refused while chunks are missing.
    pub fn finish(mut self, threads: usize) -> Result<StagedTree> {
        let missing = self.chunks.len() - self.chunks.written_count();
        if missing > 0 {
            return Err(Error::Incomplete { missing });
        }
        self.journal().flush()?;
        self.open.clear();
        self.hashers.clear();
        let entries = &self.manifest.entries;
        let todo = |i: usize| {
            let state = self.files[i];
            if !state.file || state.verified {
                return None;
            }
            match entries.kind(i) {
                Kind::File(size) => Some(size),
                Kind::Dir | Kind::Symlink => None,
            }
        };
        let (count, bytes) = (0..entries.len())
            .filter_map(todo)
            .fold((0u64, 0u64), |(n, b), s| (n + 1, b + s));
        self.progress.start(count, bytes);
        let threads = if threads == 0 {
            pool::default_threads()
        } else {
            threads
        };
        pool::try_each(
            entries.len(),
            threads,
            || vec![0u8; 1 << 20],
            |buf, i| {
                let Some(size) = todo(i) else { return Ok(()) };
                verify_file(&self.tree, &entries.get(i), buf)?;
                self.progress.add(1, size);
                Ok(())
            },
        )?;
        self.check_links(threads)?;

        for i in (0..self.manifest.entries.len()).rev() {
            if self.files[i].file {
                continue;
            }
            let e = self.manifest.entries.get(i);
            let p = self.tree.join(&e.path);
            match e.kind {
                EntryKind::Dir => {
                    fs::set_permissions(&p, fs::Permissions::from_mode(e.mode & 0o1777))
                        .map_err(io_err("chmod", &p))?;
                    set_mtime(&p, e.mtime_ns).map_err(io_err("set mtime of", &p))?;
                }
                EntryKind::Symlink { .. } => {
                    set_mtime(&p, e.mtime_ns).map_err(io_err("set mtime of", &p))?;
                }
                EntryKind::File(_) => {}
            }
        }
        // The root keeps owner rwx until apply has moved it: moving a directory to another
        // parent needs write permission on it. Apply sets its exact mode afterwards.
        let root_mode = (self.manifest.root_mode & 0o1777) | 0o700;
        fs::set_permissions(&self.tree, fs::Permissions::from_mode(root_mode))
            .map_err(io_err("chmod", &*self.tree))?;
        set_mtime(&self.tree, self.manifest.root_mtime_ns)
            .map_err(io_err("set mtime of", &*self.tree))?;
        sync_filesystem(&self.tree).map_err(io_err("sync", &*self.tree))?;
        Ok(StagedTree {
            dest: self.dest,
            id: self.id,
            dir: self.dir,
            root_mode: self.manifest.root_mode & 0o1777,
            root_mtime_ns: self.manifest.root_mtime_ns,
            manifest: Some(ReceivedManifest(self.manifest)),
        })
    }

    /// Flushes what is staged so far to disk. Called at the end of a pre-copy, it keeps that
    /// flush out of `finish`, which runs while the session is stopped.
    pub fn sync(&self) -> Result<()> {
        self.journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush()?;
        sync_filesystem(&self.tree).map_err(io_err("sync", &*self.tree))
    }

    /// Removes the staging directory: the transfer is abandoned.
    pub fn abort(self) -> Result<()> {
        remove_tree(&self.dir).map_err(io_err("remove", &self.dir))
    }
}

#[cfg(test)]
mod tests {
    use baton_proto::workspace::IgnoredFiles;

    use super::*;
    use crate::index::ChunkIndex;
    use crate::scan::{ScanOptions, Scanned, scan};
    use crate::testutil::{aged, index_of, noise, scanned};
    use tree::READ_BACKS;

    fn read_backs() -> usize {
        READ_BACKS.with(|n| n.get())
    }

    /// One file of several chunks, five of one, one empty.
    fn source(root: &Path) -> Scanned {
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("big.bin"), noise(1, 700_000)).unwrap();
        for i in 0..5u64 {
            fs::write(
                root.join(format!("d/{i}.txt")),
                noise(10 + i, 100 + 999 * i as usize),
            )
            .unwrap();
        }
        fs::write(root.join("empty"), b"").unwrap();
        let s = scanned(root);
        let big = s.manifest.get("big.bin").unwrap().file().unwrap();
        assert!(big.chunks.len() > 2, "{} chunks", big.chunks.len());
        s
    }

    /// An index of `s` that trusts its unchanged files as a scan made long after their last
    /// change would (a test's files are always racily new).
    fn aged_index(s: &Scanned) -> ChunkIndex {
        index_of(s, &aged(s))
    }

    fn assert_staged_like(src: &Path, dest: &Path, id: &str, m: &WorkspaceManifest) {
        let tree = staging_dir(dest, id).unwrap().join(TREE);
        for (e, _) in m.files() {
            let staged = tree.join(&e.path);
            assert_eq!(
                fs::read(&staged).unwrap(),
                fs::read(src.join(&e.path)).unwrap()
            );
            let md = fs::metadata(&staged).unwrap();
            assert_eq!(crate::fsutil::mtime_ns(&md), e.mtime_ns, "{}", e.path);
            assert_eq!(
                md.permissions().mode() & 0o777,
                e.mode & 0o777,
                "{}",
                e.path
            );
        }
    }

    /// Puts every chunk of `s` in `order` and checks that no file was read back whole.
    fn stage_without_read_backs(s: &Scanned, dest: &Path, id: &str, order: &[ContentHash]) {
        let idx = ChunkIndex::from_scan(s);
        let mut st = Stager::create(dest, id, s.manifest.clone(), &Limits::default()).unwrap();
        let before = read_backs();
        for h in order {
            assert!(st.put_verified_chunk(h, &idx.read(h).unwrap()).unwrap());
        }
        assert_eq!(read_backs() - before, 0, "hashed as written");
        for (e, f) in st.manifest.entries.iter().zip(&st.files) {
            assert!(e.file().is_none() || f.verified, "{} not sealed", e.path);
        }
        assert!(st.open.is_empty(), "handles of complete files are closed");
        assert!(st.hashers.is_empty(), "hashers of complete files are gone");
        st.finish(1).unwrap();
        assert_eq!(
            read_backs() - before,
            0,
            "finish had nothing left to verify"
        );
    }

    #[test]
    fn interleaved_order_alternates_two_files_and_keeps_each_in_order() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        for (i, len) in [(1u64, 700_000usize), (2, 900_000), (3, 600_000)] {
            fs::write(src.join(format!("big{i}.bin")), noise(i, len)).unwrap();
        }
        for i in 0..6u64 {
            fs::write(src.join(format!("d/{i}.txt")), noise(10 + i, 3000)).unwrap();
        }
        let s = scanned(&src);
        let st = Stager::create(
            &t.path().join("dest"),
            "i",
            s.manifest.clone(),
            &Limits::default(),
        )
        .unwrap();
        let unit = 64 * 1024;
        let order = st.missing_chunks_interleaved(unit);
        let plain = st.missing_chunks();
        // Every chunk once, nothing else.
        let mut a: Vec<_> = order.iter().map(|(c, _)| c.hash).collect();
        let mut b: Vec<_> = plain.iter().map(|c| c.hash).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        // Which file each chunk goes to, and where.
        let mut place = HashMap::new();
        for (e, f) in s.manifest.files() {
            let mut at = 0u64;
            for c in &f.chunks {
                place.entry(c.hash).or_insert((e.path.clone(), at));
                at += u64::from(c.len);
            }
        }
        let mut last_at: HashMap<String, u64> = HashMap::new();
        let mut lane_of: HashMap<String, u8> = HashMap::new();
        for (c, lane) in &order {
            let (file, at) = place[&c.hash].clone();
            if let Some(prev) = last_at.insert(file.clone(), at) {
                assert!(
                    prev < at,
                    "{file}: a chunk at {at} came after one at {prev}"
                );
            }
            let first = *lane_of.entry(file.clone()).or_insert(*lane);
            assert_eq!(first, *lane, "{file} stays in one lane");
        }
        assert_eq!(lane_of["big1.bin"], 0);
        assert_eq!(lane_of["big2.bin"], 1);
        // The first unit is of big1.bin, the second of big2.bin: two files are written at once.
        let file_at = |i: usize| place[&order[i].0.hash].0.clone();
        assert_eq!(file_at(0), "big1.bin");
        let mut taken = 0u64;
        let mut i = 0;
        while taken < unit {
            assert_eq!(file_at(i), "big1.bin", "chunk {i} within the first unit");
            taken += u64::from(order[i].0.len);
            i += 1;
        }
        assert_eq!(
            file_at(i),
            "big2.bin",
            "the second unit is the other lane's file"
        );
    }

    #[test]
    fn no_file_is_read_back_whole_whatever_order_its_chunks_land_in() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let s = source(&src);
        let mut order = {
            let st = Stager::create(
                &t.path().join("probe"),
                "o",
                s.manifest.clone(),
                &Limits::default(),
            )
            .unwrap();
            st.missing()
        };
        stage_without_read_backs(&s, &t.path().join("in-order"), "io", &order);
        assert_staged_like(&src, &t.path().join("in-order"), "io", &s.manifest);
        // Backwards: every chunk of big.bin lands before the ones ahead of it, and is read
        // back from the page cache only when its gap closes.
        order.reverse();
        stage_without_read_backs(&s, &t.path().join("reversed"), "rv", &order);
        assert_staged_like(&src, &t.path().join("reversed"), "rv", &s.manifest);
    }

    #[test]
    fn a_file_of_several_chunks_whose_bytes_do_not_hash_to_its_blake3_is_refused_at_its_last_chunk()
    {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        let s = source(&src);
        let idx = ChunkIndex::from_scan(&s);
        let mut m = s.manifest.clone();
        let i = m.entries.iter().position(|e| e.path == "big.bin").unwrap();
        if let EntryKind::File(f) = &mut m.entries[i].kind {
            f.hash = ContentHash(*blake3::hash(b"another file").as_bytes());
        }
        let mut st = Stager::create(&dest, "lie", m.clone(), &Limits::default()).unwrap();
        let big: Vec<ContentHash> = m.entries[i]
            .file()
            .unwrap()
            .chunks
            .iter()
            .map(|c| c.hash)
            .collect();
        for (k, h) in big.iter().enumerate().rev() {
            let r = st.put_verified_chunk(h, &idx.read(h).unwrap());
            if k > 0 {
                r.unwrap();
            } else {
                let e = r.unwrap_err();
                assert_eq!(e.code().as_str(), "verify_failed");
                assert!(e.to_string().contains("big.bin"), "{e}");
            }
        }
    }

    #[test]
    fn a_resumed_stager_reads_every_file_back_at_finish() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        let s = source(&src);
        let idx = ChunkIndex::from_scan(&s);
        let mut st = Stager::create(&dest, "rs", s.manifest.clone(), &Limits::default()).unwrap();
        for h in st.missing() {
            st.put_verified_chunk(&h, &idx.read(&h).unwrap()).unwrap();
        }
        drop(st);
        let st = Stager::create(&dest, "rs", s.manifest.clone(), &Limits::default()).unwrap();
        assert!(st.missing().is_empty());
        let before = read_backs();
        st.finish(1).unwrap();
        assert_eq!(read_backs() - before, s.manifest.file_count() as usize);
    }

    #[test]
    fn fill_from_unchanged_files_needs_no_hash_and_no_read_back_for_one_chunk_files() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("src"), t.path().join("dest"));
        let s = source(&src);
        let mut st = Stager::create(&dest, "fi", s.manifest.clone(), &Limits::default()).unwrap();
        let before = read_backs();
        let filled = st.fill_from_index(&aged_index(&s)).unwrap();
        assert_eq!(filled.bytes, s.manifest.total_bytes());
        assert!(st.missing().is_empty());
        assert_eq!(
            read_backs() - before,
            0,
            "big.bin is hashed as it is copied"
        );
        st.finish(1).unwrap();
        assert_staged_like(&src, &dest, "fi", &s.manifest);
    }

    #[test]
    fn a_one_chunk_file_from_an_unhashed_read_is_still_checked() {
        let t = tempfile::tempdir().unwrap();
        let (src, other, dest) = (t.path().join("s"), t.path().join("o"), t.path().join("d"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&other).unwrap();
        fs::write(src.join("x.txt"), b"hello").unwrap();
        fs::write(other.join("y.txt"), b"HELLO").unwrap();
        let s = scanned(&src);
        // An index that wrongly believes y.txt holds x.txt's bytes, and that y.txt has not
        // changed since: its read is not hashed.
        let mut o = scanned(&other);
        let want = s.manifest.entries[0].file().unwrap().clone();
        o.manifest.entries[0].kind = EntryKind::File(want);
        let mut st = Stager::create(&dest, "li", s.manifest.clone(), &Limits::default()).unwrap();
        let e = st.fill_from_index(&aged_index(&o)).unwrap_err();
        assert!(
            matches!(&e, Error::VerifyFailed { path, .. } if path == "x.txt"),
            "{e}"
        );
    }

    #[test]
    fn a_one_chunk_file_whose_manifest_hash_is_not_its_chunks_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("s"), t.path().join("d"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("x.txt"), b"hello").unwrap();
        let s = scanned(&src);
        let mut m = s.manifest.clone();
        let EntryKind::File(f) = &mut m.entries[0].kind else {
            panic!("x.txt is a file")
        };
        f.hash = ContentHash([3; 32]);
        let h = f.chunks[0].hash;
        let mut st = Stager::create(&dest, "mh", m, &Limits::default()).unwrap();
        let e = st.put_verified_chunk(&h, b"hello").unwrap_err();
        assert!(
            matches!(&e, Error::VerifyFailed { path, .. } if path == "x.txt"),
            "{e}"
        );
    }

    #[test]
    fn more_files_in_progress_than_open_handles() {
        let t = tempfile::tempdir().unwrap();
        let (src, dest) = (t.path().join("s"), t.path().join("d"));
        fs::create_dir_all(&src).unwrap();
        let n = OPEN_FILES + 16;
        for i in 0..n {
            fs::write(src.join(format!("{i:03}")), noise(i as u64 + 1, 8 * 1024)).unwrap();
        }
        let opts = ScanOptions {
            ignored: IgnoredFiles::Skip,
            params: baton_proto::workspace::ChunkParams {
                min_size: 256,
                avg_size: 1024,
                max_size: 4096,
                ..Default::default()
            },
            ..ScanOptions::default()
        };
        let s = scan(&src, &opts, None).unwrap();
        let idx = ChunkIndex::from_scan(&s);
        // Round robin: the first chunk of every file, then the second, ...
        let mut order = Vec::new();
        for k in 0.. {
            let before = order.len();
            for (_, f) in s.manifest.files() {
                if let Some(c) = f.chunks.get(k) {
                    order.push(c.hash);
                }
            }
            if order.len() == before {
                break;
            }
        }
        let mut st = Stager::create(&dest, "rr", s.manifest.clone(), &Limits::default()).unwrap();
        let mut most = 0;
        for h in &order {
            if let Some(bytes) = idx.read(h) {
                st.put_verified_chunk(h, &bytes).unwrap();
            }
            most = most.max(st.open.len());
        }
        assert_eq!(most, OPEN_FILES);
        assert!(st.open.is_empty());
        st.finish(1).unwrap();
        assert_staged_like(&src, &dest, "rr", &s.manifest);
    }
}
