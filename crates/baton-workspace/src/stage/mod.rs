//! The staging writer: a workspace is rebuilt chunk by chunk in `<dest>.baton-staging-<id>`
//! beside its destination, verified, and only then handed to `apply`.
//!
//! Layout of the staging directory: `tree/` (the workspace being built), `journal` (which chunks
//! are written, so a reopened stager resumes), `aside/` briefly during [`Stager::update`], and
//! `apply.json` once apply has begun. Nothing of ours ever sits inside `tree/`.
//!
//! Each file is verified (read back, BLAKE3 and size) and given its mode and mtime as soon as its
//! last chunk lands, so that after a pre-copy, `finish` only checks what changed since.

mod journal;
mod tree;
mod update;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_proto::workspace::{ContentHash, EntryKind, WorkspaceManifest};

use crate::apply::{APPLY_RECORD, StagedTree};
use crate::chunk::hash_bytes;
use crate::error::{Error, Result, io_err};
use crate::fsutil::{remove_tree, set_mtime, sync_filesystem};
use crate::index::ChunkIndex;
use crate::pool;
use crate::progress::Progress;
use crate::validate::{Limits, validate};
use journal::{Journal, manifest_digest};
use tree::{create_entry, verify_file};

pub(crate) const TREE: &str = "tree";

/// One place a chunk goes: an entry, an offset, and whether it holds the bytes yet.
struct Placement {
    entry: u32,
    offset: u64,
    done: bool,
}

/// Every place a chunk goes.
struct ChunkUse {
    len: u32,
    at: Vec<Placement>,
}

/// Per entry: placements still to write, and whether the file was verified (and given its mode
/// and mtime) since its last write.
#[derive(Clone, Copy, Default)]
struct FileState {
    left: u32,
    verified: bool,
}

/// Builds one workspace in a staging directory beside its destination.
pub struct Stager {
    dest: PathBuf,
    id: String,
    dir: PathBuf,
    tree: PathBuf,
    manifest: WorkspaceManifest,
    uses: HashMap<ContentHash, ChunkUse>,
    order: Vec<ContentHash>,
    written: HashSet<ContentHash>,
    files: Vec<FileState>,
    journal: Journal,
    progress: Arc<Progress>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Stager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stager")
            .field("dir", &self.dir)
            .field("chunks", &self.order.len())
            .field("written", &self.written.len())
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
/// already hold their bytes. Also returns per-entry counts of places still to write.
#[allow(clippy::type_complexity)]
fn placements(
    m: &WorkspaceManifest,
    done: impl Fn(usize, &ContentHash) -> bool,
) -> Result<(
    HashMap<ContentHash, ChunkUse>,
    Vec<ContentHash>,
    Vec<FileState>,
)> {
    let mut uses: HashMap<ContentHash, ChunkUse> = HashMap::new();
    let mut order = Vec::new();
    let mut files = vec![FileState::default(); m.entries.len()];
    for (i, e) in m.entries.iter().enumerate() {
        let EntryKind::File(f) = &e.kind else {
            continue;
        };
        let mut offset = 0u64;
        for c in &f.chunks {
            let u = uses.entry(c.hash).or_insert_with(|| {
                order.push(c.hash);
                ChunkUse {
                    len: c.len,
                    at: Vec::new(),
                }
            });
            if u.len != c.len {
                return Err(Error::manifest(
                    &e.path,
                    format!("chunk {} appears with two different lengths", c.hash),
                ));
            }
            let is_done = done(i, &c.hash);
            u.at.push(Placement {
                entry: i as u32,
                offset,
                done: is_done,
            });
            if !is_done {
                files[i].left += 1;
            }
            offset += u64::from(c.len);
        }
    }
    Ok((uses, order, files))
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
        let digest = manifest_digest(&manifest);
        let resumed = match tree.is_dir() {
            true => Journal::open(&dir, &digest)?,
            false => None,
        };
        let resume = resumed.is_some();
        let (journal, mut written) = match resumed {
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
        let (uses, order, files) = placements(&manifest, |_, h| written.contains(h))?;
        written.retain(|h| uses.contains_key(h));
        let stager = Self {
            dest: dest.to_path_buf(),
            id: transfer_id.to_string(),
            dir,
            tree,
            manifest,
            uses,
            order,
            written,
            files,
            journal,
            progress: Arc::default(),
            buf: Vec::new(),
        };
        for e in &stager.manifest.entries {
            create_entry(&stager.tree, e, resume)?;
        }
        stager.restart_progress();
        Ok(stager)
    }

    fn restart_progress(&self) {
        let mut files = 0;
        let mut bytes = 0;
        for (e, s) in self.manifest.entries.iter().zip(&self.files) {
            if e.file().is_some() && s.left == 0 {
                files += 1;
            }
        }
        for u in self.uses.values() {
            bytes += u.at.iter().filter(|p| p.done).count() as u64 * u64::from(u.len);
        }
        self.progress
            .start(self.manifest.file_count(), self.manifest.total_bytes());
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

    /// The manifest being staged.
    pub fn manifest(&self) -> &WorkspaceManifest {
        &self.manifest
    }

    /// Chunks still to write, distinct, in the order the manifest first uses them.
    pub fn missing(&self) -> Vec<ContentHash> {
        self.order
            .iter()
            .filter(|h| !self.written.contains(h))
            .copied()
            .collect()
    }

    /// Bytes of the chunks still to write (each distinct chunk once).
    pub fn missing_bytes(&self) -> u64 {
        self.order
            .iter()
            .filter(|h| !self.written.contains(h))
            .map(|h| u64::from(self.uses[h].len))
            .sum()
    }

    /// Writes a received chunk wherever the manifest uses it. The bytes are checked against the
    /// hash first; a mismatch writes nothing. Returns false when the chunk was already written.
    pub fn put_chunk(&mut self, hash: &ContentHash, bytes: &[u8]) -> Result<bool> {
        let Some(u) = self.uses.get(hash) else {
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
        if hash_bytes(bytes) != *hash {
            return Err(Error::BadChunk {
                hash: *hash,
                reason: "content does not match its hash".into(),
            });
        }
        if self.written.contains(hash) {
            return Ok(false);
        }
        self.write(hash, bytes)?;
        Ok(true)
    }

    /// Copies every missing chunk that `index` holds (verified as it is read); chunks whose
    /// source changed since it was indexed stay missing.
    pub fn fill_from_index(&mut self, index: &ChunkIndex) -> Result<Filled> {
        let mut filled = Filled::default();
        if index.params() != self.manifest.params {
            return Ok(filled);
        }
        let mut buf = Vec::new();
        for hash in self.missing() {
            if index.contains(&hash) && index.read_into(&hash, &mut buf) {
                self.write(&hash, &buf)?;
                filled.chunks += 1;
                filled.bytes += buf.len() as u64;
            }
        }
        Ok(filled)
    }

    /// Writes verified bytes at every place still without them, records the chunk in the
    /// journal, and verifies the files this completed.
    fn write(&mut self, hash: &ContentHash, bytes: &[u8]) -> Result<()> {
        let Some(u) = self.uses.get_mut(hash) else {
            return Ok(());
        };
        let mut completed = Vec::new();
        for p in u.at.iter_mut().filter(|p| !p.done) {
            let e = &self.manifest.entries[p.entry as usize];
            let path = self.tree.join(&e.path);
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io_err("open", &path))?;
            f.write_all_at(bytes, p.offset)
                .map_err(io_err("write", &path))?;
            p.done = true;
            let state = &mut self.files[p.entry as usize];
            state.left = state.left.saturating_sub(1);
            state.verified = false;
            if state.left == 0 {
                completed.push(p.entry as usize);
            }
            self.progress
                .add(u64::from(state.left == 0), bytes.len() as u64);
        }
        // Recorded after the data: a crash in between only means the chunk is asked for again.
        self.journal.append(hash)?;
        self.written.insert(*hash);
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(1 << 20, 0);
        let result = completed
            .into_iter()
            .try_for_each(|i| self.seal_file(i, &mut buf));
        self.buf = buf;
        result
    }

    /// Verifies a complete file and gives it its mode and mtime.
    fn seal_file(&mut self, i: usize, buf: &mut [u8]) -> Result<()> {
        verify_file(&self.tree, &self.manifest.entries[i], buf)?;
        self.files[i].verified = true;
        Ok(())
    }

    /// Verifies every file not verified since its last write (after a resume: all of them),
    /// sets the modes and mtimes of directories (deepest first) and symlinks, flushes the
    /// filesystem, and returns the verified tree. Refused while chunks are missing.
    pub fn finish(self, threads: usize) -> Result<StagedTree> {
        let missing = self.order.len() - self.written.len();
        if missing > 0 {
            return Err(Error::Incomplete { missing });
        }
        let todo: Vec<usize> = (0..self.manifest.entries.len())
            .filter(|i| self.manifest.entries[*i].file().is_some() && !self.files[*i].verified)
            .collect();
        let bytes = todo
            .iter()
            .filter_map(|i| self.manifest.entries[*i].file())
            .map(|f| f.size)
            .sum();
        self.progress.start(todo.len() as u64, bytes);
        let threads = if threads == 0 {
            pool::default_threads()
        } else {
            threads
        };
        let results = pool::map(
            &todo,
            threads,
            || vec![0u8; 1 << 20],
            |buf, &i| {
                let e = &self.manifest.entries[i];
                verify_file(&self.tree, e, buf)?;
                self.progress.add(1, e.file().map_or(0, |f| f.size));
                Ok(())
            },
        );
        results.into_iter().collect::<Result<Vec<()>>>()?;

        for e in self.manifest.entries.iter().rev() {
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
            .map_err(io_err("chmod", &self.tree))?;
        set_mtime(&self.tree, self.manifest.root_mtime_ns)
            .map_err(io_err("set mtime of", &self.tree))?;
        sync_filesystem(&self.tree).map_err(io_err("sync", &self.tree))?;
        Ok(StagedTree {
            dest: self.dest,
            id: self.id,
            dir: self.dir,
            root_mode: self.manifest.root_mode & 0o1777,
            root_mtime_ns: self.manifest.root_mtime_ns,
        })
    }

    /// Flushes what is staged so far to disk. Called at the end of a pre-copy, it keeps that
    /// flush out of `finish`, which runs while the session is stopped.
    pub fn sync(&self) -> Result<()> {
        sync_filesystem(&self.tree).map_err(io_err("sync", &self.tree))
    }

    /// Removes the staging directory: the transfer is abandoned.
    pub fn abort(self) -> Result<()> {
        remove_tree(&self.dir).map_err(io_err("remove", &self.dir))
    }
}
