//! The staging writer: a workspace is rebuilt chunk by chunk in `<dest>.baton-staging-<id>`
//! beside its destination, verified, and only then handed to `apply`.
//!
//! Layout of the staging directory: `tree/` (the workspace being built), `journal` (which chunks
//! are written, so a reopened stager resumes), and `apply.json` once apply has begun. Nothing of
//! ours ever sits inside `tree/`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_proto::workspace::{ContentHash, EntryKind, WorkspaceManifest};

use crate::apply::{APPLY_RECORD, StagedTree};
use crate::chunk::hash_bytes;
use crate::error::{Error, Result, io_err};
use crate::fsutil::{fsync_dir, remove_tree, set_mtime, sync_filesystem};
use crate::index::ChunkIndex;
use crate::pool;
use crate::progress::Progress;
use crate::validate::{Limits, validate};

pub(crate) const TREE: &str = "tree";
const JOURNAL: &str = "journal";
const MAGIC: &[u8] = b"baton-staging-journal v1\n";
const HEADER: usize = MAGIC.len() + 32;

/// Where the chunk goes: which entry, at which offset.
struct ChunkUse {
    len: u32,
    at: Vec<(u32, u64)>,
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
    /// Per entry: chunk placements not yet written (0 for non-files and finished files).
    left: Vec<u32>,
    journal: File,
    progress: Arc<Progress>,
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

/// BLAKE3 of the manifest's JSON: ties a journal to the manifest it was written for.
fn manifest_digest(m: &WorkspaceManifest) -> [u8; 32] {
    let json = serde_json::to_vec(m).expect("manifest types always serialise to JSON");
    *blake3::hash(&json).as_bytes()
}

impl Stager {
    /// Opens the staging directory of transfer `transfer_id` for `dest`, validating `manifest`
    /// first (it is hostile until then).
    ///
    /// A staging directory left by the same transfer with the same manifest is resumed: what its
    /// journal records as written is not asked for again. One left with another manifest is
    /// discarded. Refused when `dest`'s parent is missing, or when this transfer was already
    /// applied (see [`crate::leftovers`]).
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
        let resumed = open_journal(&dir, &digest)?;
        let is_resume = resumed.is_some();
        let (journal, mut written) = match resumed {
            Some(r) => r,
            None => {
                remove_tree(&dir).map_err(io_err("remove", &dir))?;
                fresh_staging(&dir, &digest)?
            }
        };

        let mut uses: HashMap<ContentHash, ChunkUse> = HashMap::new();
        let mut order = Vec::new();
        let mut left = vec![0u32; manifest.entries.len()];
        for (i, e) in manifest.entries.iter().enumerate() {
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
                u.at.push((i as u32, offset));
                offset += u64::from(c.len);
            }
            left[i] = f.chunks.len() as u32;
        }
        written.retain(|h| uses.contains_key(h));

        let mut stager = Self {
            dest: dest.to_path_buf(),
            id: transfer_id.to_string(),
            dir,
            tree,
            manifest,
            uses,
            order,
            written,
            left,
            journal,
            progress: Arc::default(),
        };
        stager.build_tree(is_resume)?;
        stager.count_resumed();
        Ok(stager)
    }

    /// Creates directories, symlinks and (preallocated) files; on resume, keeps what is there.
    fn build_tree(&self, resume: bool) -> Result<()> {
        let collides = |path: &Path| Error::Conflict {
            path: path.to_path_buf(),
            reason: "collides with another manifest entry (case-insensitive or \
                     name-normalising filesystem?)"
                .into(),
        };
        let mut dirs = DirBuilder::new();
        dirs.mode(0o700);
        for e in &self.manifest.entries {
            let p = self.tree.join(&e.path);
            match &e.kind {
                EntryKind::Dir => match dirs.create(&p) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                        if !resume || !fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                            return Err(collides(&p));
                        }
                    }
                    Err(err) => return Err(io_err("create", &p)(err)),
                },
                EntryKind::Symlink { target } => match std::os::unix::fs::symlink(target, &p) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists && resume => {
                        let same =
                            fs::read_link(&p).is_ok_and(|t| t.as_os_str() == target.as_str());
                        if !same {
                            remove_tree(&p).map_err(io_err("remove", &p))?;
                            std::os::unix::fs::symlink(target, &p).map_err(io_err("create", &p))?;
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(collides(&p));
                    }
                    Err(err) => return Err(io_err("create", &p)(err)),
                },
                EntryKind::File(f) => {
                    let mut o = OpenOptions::new();
                    o.write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
                    if resume {
                        o.create(true);
                    } else {
                        o.create_new(true);
                    }
                    let file = match o.open(&p) {
                        Ok(file) => file,
                        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                            return Err(collides(&p));
                        }
                        Err(err) => return Err(io_err("create", &p)(err)),
                    };
                    let len = file.metadata().map_err(io_err("stat", &p))?.len();
                    if len != f.size {
                        preallocate(&file, f.size).map_err(io_err("allocate", &p))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn count_resumed(&mut self) {
        let mut bytes = 0u64;
        for h in &self.written {
            let u = &self.uses[h];
            for (entry, _) in &u.at {
                let left = &mut self.left[*entry as usize];
                *left = left.saturating_sub(1);
                bytes += u64::from(u.len);
            }
        }
        let done_files = self
            .manifest
            .entries
            .iter()
            .zip(&self.left)
            .filter(|(e, left)| e.file().is_some() && **left == 0)
            .count() as u64;
        self.progress
            .start(self.manifest.file_count(), self.manifest.total_bytes());
        self.progress.add(done_files, bytes);
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

    /// Writes verified bytes at every place the chunk is used, then records it in the journal.
    fn write(&mut self, hash: &ContentHash, bytes: &[u8]) -> Result<()> {
        let u = &self.uses[hash];
        for &(entry, offset) in &u.at {
            let e = &self.manifest.entries[entry as usize];
            let p = self.tree.join(&e.path);
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .map_err(io_err("open", &p))?;
            f.write_all_at(bytes, offset).map_err(io_err("write", &p))?;
            let left = &mut self.left[entry as usize];
            *left = left.saturating_sub(1);
            self.progress.add(u64::from(*left == 0), bytes.len() as u64);
        }
        // Recorded after the data: a crash in between only means the chunk is asked for again.
        // The journal is not fsynced per chunk; `finish` verifies every file whatever it says.
        self.journal
            .write_all(hash.as_bytes())
            .map_err(io_err("write", self.dir.join(JOURNAL)))?;
        self.written.insert(*hash);
        Ok(())
    }

    /// Verifies every file (size and BLAKE3), sets modes and mtimes (directories last, deepest
    /// first), flushes the filesystem, and returns the verified tree. Refused while chunks are
    /// missing.
    pub fn finish(self, threads: usize) -> Result<StagedTree> {
        let missing = self.order.len() - self.written.len();
        if missing > 0 {
            return Err(Error::Incomplete { missing });
        }
        let files: Vec<usize> = (0..self.manifest.entries.len())
            .filter(|i| self.manifest.entries[*i].file().is_some())
            .collect();
        self.progress
            .start(files.len() as u64, self.manifest.total_bytes());
        let threads = if threads == 0 {
            pool::default_threads()
        } else {
            threads
        };
        let results = pool::map(
            &files,
            threads,
            || vec![0u8; 1 << 20],
            |buf, &i| self.verify_file(i, buf),
        );
        results.into_iter().collect::<Result<Vec<()>>>()?;

        for e in self.manifest.entries.iter().rev() {
            let p = self.tree.join(&e.path);
            let mode = match e.kind {
                EntryKind::File(_) => Some(e.mode & 0o777),
                EntryKind::Dir => Some(e.mode & 0o1777),
                EntryKind::Symlink { .. } => None,
            };
            if let Some(mode) = mode {
                fs::set_permissions(&p, fs::Permissions::from_mode(mode))
                    .map_err(io_err("chmod", &p))?;
            }
            set_mtime(&p, e.mtime_ns).map_err(io_err("set mtime of", &p))?;
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

    fn verify_file(&self, i: usize, buf: &mut [u8]) -> Result<()> {
        let e = &self.manifest.entries[i];
        let Some(want) = e.file() else { return Ok(()) };
        let p = self.tree.join(&e.path);
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .map_err(io_err("open", &p))?;
        let mut h = blake3::Hasher::new();
        let mut size = 0u64;
        loop {
            let n = match f.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(io_err("read", &p)(err)),
            };
            h.update(&buf[..n]);
            size += n as u64;
        }
        let fail = |reason: String| Error::VerifyFailed {
            path: e.path.clone(),
            reason,
        };
        if size != want.size {
            return Err(fail(format!("{size} bytes, expected {}", want.size)));
        }
        if h.finalize().as_bytes() != want.hash.as_bytes() {
            return Err(fail("BLAKE3 differs from the manifest".into()));
        }
        self.progress.add(1, size);
        Ok(())
    }

    /// Removes the staging directory: the transfer is abandoned.
    pub fn abort(self) -> Result<()> {
        remove_tree(&self.dir).map_err(io_err("remove", &self.dir))
    }
}

/// A new staging directory with an empty tree and a journal header for `digest`.
fn fresh_staging(dir: &Path, digest: &[u8; 32]) -> Result<(File, HashSet<ContentHash>)> {
    let mut b = DirBuilder::new();
    b.mode(0o700);
    b.create(dir).map_err(io_err("create", dir))?;
    let tree = dir.join(TREE);
    b.create(&tree).map_err(io_err("create", &tree))?;
    let path = dir.join(JOURNAL);
    let mut j = OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("create", &path))?;
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(digest);
    j.write_all(&header).map_err(io_err("write", &path))?;
    j.sync_all().map_err(io_err("sync", &path))?;
    fsync_dir(dir).map_err(io_err("sync", dir))?;
    Ok((j, HashSet::new()))
}

/// The journal of a staging directory written for this manifest, with the chunks it records;
/// `None` when there is none, it belongs to another manifest, or the tree is gone.
fn open_journal(dir: &Path, digest: &[u8; 32]) -> Result<Option<(File, HashSet<ContentHash>)>> {
    let path = dir.join(JOURNAL);
    let mut f = match OpenOptions::new().read(true).append(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", &path)(e)),
    };
    if !dir.join(TREE).is_dir() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(io_err("read", &path))?;
    if bytes.len() < HEADER
        || &bytes[..MAGIC.len()] != MAGIC
        || &bytes[MAGIC.len()..HEADER] != digest
    {
        return Ok(None);
    }
    let body = &bytes[HEADER..];
    let whole = body.len() / 32 * 32;
    if whole != body.len() {
        // A record cut short by a crash; drop it so later appends stay aligned.
        f.set_len((HEADER + whole) as u64)
            .map_err(io_err("truncate", &path))?;
    }
    let written = body[..whole]
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            ContentHash(h)
        })
        .collect();
    Ok(Some((f, written)))
}

/// Reserves the file's blocks so a full disk fails here rather than midway; falls back to a
/// sparse file where the filesystem cannot preallocate.
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if size > 0 {
            let len = libc::off_t::try_from(size)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: the descriptor is open for writing for the duration of the call.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(e);
            }
        }
    }
    file.set_len(size)
}
