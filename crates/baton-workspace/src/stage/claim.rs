//! Writing a chunk in three steps, so that several threads can store chunks into one staging
//! tree: the places a chunk goes are claimed under the stager's lock ([`Stager::claim`]), the
//! files are created and written without it ([`Claim::write`]), and the claim is settled under
//! the lock again ([`Stager::settle`]), which names the files it completed; those are verified
//! and sealed without the lock ([`Seal::run`]). Creating files and copying bytes into them is
//! most of a target's work, and it no longer runs one chunk at a time.
//!
//! A file of several chunks is hashed as its chunks are written ([`FileHasher`]): in file
//! order, with a chunk that lands before the ones ahead of it read back from the page cache once
//! the gap closes. Its BLAKE3 is then known when its last chunk lands, without reading the whole
//! file back; a file whose beginning was written before this stager's hasher saw it (an earlier
//! pass, a resume) is read back whole.

use std::collections::BTreeMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use baton_proto::workspace::{ContentHash, WorkspaceEntry};

use super::tree::{open_for_write, open_for_write_at, seal_written, verify_file};
use super::{OPEN_FILES, Stager};
use crate::chunk::hash_bytes;
use crate::error::{Result, io_err};

/// The places of one chunk, claimed for writing (see the module docs). Give it back with
/// [`Stager::settle`] once written, or [`Stager::unclaim`] when writing failed.
#[derive(Debug)]
pub struct Claim {
    hash: ContentHash,
    /// The bytes were hashed against `hash` (by us or the caller).
    checked: bool,
    writes: Vec<ClaimedWrite>,
}

#[derive(Debug)]
struct ClaimedWrite {
    entry: u32,
    offset: u64,
    path: PathBuf,
    to: WriteTo,
    /// The entry, as the claim read it: `settle` needs it again, and the staged records may be
    /// on disk.
    e: WorkspaceEntry,
}

#[derive(Debug)]
enum WriteTo {
    /// A file written chunk by chunk, through the stager's handle, and its hasher.
    Shared(Arc<File>, Arc<Mutex<FileHasher>>),
    /// A file of this one chunk: opened (and created, unless `created`) by the write, then kept
    /// to seal it without reading it back.
    Whole {
        size: u64,
        created: bool,
        file: Option<File>,
    },
}

/// A file whose last chunk was written, to verify and seal (see [`Stager::settle`]).
#[derive(Debug)]
pub struct Seal {
    entry: usize,
    e: WorkspaceEntry,
    tree: Arc<Path>,
    /// The handle the file was written through, and whether the bytes written hash to the
    /// manifest's BLAKE3, when that is known. `None`: read the file back.
    written: Option<(Arc<File>, bool)>,
}

/// The BLAKE3 of a file written chunk by chunk, fed in file order as its chunks are written.
#[derive(Debug, Default)]
pub(super) struct FileHasher {
    hasher: blake3::Hasher,
    /// Bytes hashed so far: the file's first `next` bytes.
    next: u64,
    /// Ranges written beyond `next` (offset → length), hashed once the gap before them closes.
    ahead: BTreeMap<u64, u64>,
    /// A read of a range ahead failed: the file is read back whole when complete.
    broken: bool,
}

impl FileHasher {
    /// Records that `bytes` were written at `offset` of `f`.
    fn wrote(&mut self, f: &File, offset: u64, bytes: &[u8]) {
        if self.broken {
            return;
        }
        if offset != self.next {
            // A chunk placed twice at one offset cannot happen (placements are distinct);
            // a range behind `next` would be a rewrite, which only a later pass makes.
            if offset > self.next {
                self.ahead.insert(offset, bytes.len() as u64);
            } else {
                self.broken = true;
            }
            return;
        }
        self.hasher.update(bytes);
        self.next += bytes.len() as u64;
        let mut buf = Vec::new();
        while let Some(len) = self.ahead.remove(&self.next) {
            buf.resize(len as usize, 0);
            if f.read_exact_at(&mut buf, self.next).is_err() {
                self.broken = true;
                return;
            }
            self.hasher.update(&buf);
            self.next += len;
        }
    }

    /// Whether the file's `size` bytes hash to `want`; `None` when not all were seen.
    fn matches(&self, size: u64, want: &ContentHash) -> Option<bool> {
        (!self.broken && self.next == size)
            .then(|| self.hasher.finalize().as_bytes() == want.as_bytes())
    }
}

impl Claim {
    /// Creates and writes the claimed files (without the stager's lock).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        for w in &mut self.writes {
            let path = &w.path;
            match &mut w.to {
                WriteTo::Shared(f, hasher) => {
                    // Held across the write: the kernel lets one write into a file at a time,
                    // and a second writer would spin on the inode's lock for as long as the
                    // first copies (measured: 7 % of a target's CPU); here it sleeps instead.
                    let mut hasher = hasher.lock().unwrap_or_else(PoisonError::into_inner);
                    f.write_all_at(bytes, w.offset)
                        .map_err(io_err("write", path))?;
                    hasher.wrote(f, w.offset, bytes);
                }
                WriteTo::Whole {
                    size,
                    created,
                    file,
                } => {
                    let f = open_for_write_at(path, *size, *created)?;
                    *created = true;
                    f.write_all_at(bytes, w.offset)
                        .map_err(io_err("write", path))?;
                    *file = Some(f);
                }
            }
        }
        Ok(())
    }
}

impl Seal {
    /// Verifies the file (from what was written when that is known, else by reading it back)
    /// and gives it its mode and mtime; then tell the stager with [`Stager::sealed`].
    pub fn run(&self, buf: &mut Vec<u8>) -> Result<()> {
        match &self.written {
            Some((f, hash_matches)) => seal_written(&self.tree, &self.e, f, *hash_matches),
            None => {
                buf.resize(1 << 20, 0);
                verify_file(&self.tree, &self.e, buf)
            }
        }
    }
}

impl Stager {
    /// Claims the places of a received chunk still without their bytes, after the checks of
    /// [`Stager::put_verified_chunk`] (the caller has checked that `bytes` hash to `hash`).
    /// `None` when the chunk is written or claimed already.
    pub fn claim(&mut self, hash: &ContentHash, bytes: &[u8]) -> Result<Option<Claim>> {
        self.check_chunk(hash, bytes)?;
        debug_assert!(
            hash_bytes(bytes) == *hash,
            "Stager::claim was given bytes that do not hash to {hash}"
        );
        if self.chunks.is_written(hash) || self.claimed.contains(hash) {
            return Ok(None);
        }
        self.claim_places(hash, bytes.len() as u64, true)
    }

    /// Claims every place of `hash` still without its bytes (`None`: the chunk has none).
    pub(super) fn claim_places(
        &mut self,
        hash: &ContentHash,
        len: u64,
        checked: bool,
    ) -> Result<Option<Claim>> {
        let Some(u) = self.chunks.get_mut(hash) else {
            return Ok(None);
        };
        let mut writes = Vec::new();
        for p in u.at.iter_mut().filter(|p| !p.done) {
            let i = p.entry as usize;
            let e = self.manifest.entries.get(i);
            let data = e.file().expect("chunks are placed in files only");
            let state = &mut self.files[i];
            let to = if p.offset == 0 && len == data.size {
                let created = state.created;
                // Set now so that no other claim creates it too; undone by `unclaim` when the
                // write fails before creating it.
                state.created = true;
                WriteTo::Whole {
                    size: data.size,
                    created,
                    file: None,
                }
            } else {
                if self.open.len() >= OPEN_FILES && !self.open.contains_key(&p.entry) {
                    // Any will do: one reopened later costs an open, nothing else; a write in
                    // flight keeps its own reference.
                    let evict = *self.open.keys().next().expect("the map is full");
                    self.open.remove(&evict);
                }
                let f = match self.open.entry(p.entry) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(v) => v.insert(Arc::new(open_for_write(
                        &self.tree,
                        &e,
                        &mut state.created,
                    )?)),
                };
                let hasher = self.hashers.entry(p.entry).or_default();
                WriteTo::Shared(Arc::clone(f), Arc::clone(hasher))
            };
            p.done = true;
            state.verified = false;
            writes.push(ClaimedWrite {
                entry: p.entry,
                offset: p.offset,
                path: self.tree.join(&e.path),
                to,
                e,
            });
        }
        self.claimed.insert(*hash);
        Ok(Some(Claim {
            hash: *hash,
            checked,
            writes,
        }))
    }

    /// Gives back a claim whose [`Claim::write`] failed: its places are without their bytes
    /// again, and will be written by the next claim of the chunk.
    pub fn unclaim(&mut self, claim: Claim) {
        self.claimed.remove(&claim.hash);
        let Some(u) = self.chunks.get_mut(&claim.hash) else {
            return;
        };
        for w in claim.writes {
            if let Some(p) =
                u.at.iter_mut()
                    .find(|p| p.entry == w.entry && p.offset == w.offset)
            {
                p.done = false;
            }
            if let WriteTo::Whole { created: false, .. } = w.to {
                self.files[w.entry as usize].created = false;
            }
        }
    }

    /// Records a written claim: the chunk goes to the journal, and the files it completed are
    /// returned, to [`Seal::run`] and then report with [`Stager::sealed`].
    pub fn settle(&mut self, claim: Claim, bytes: &[u8]) -> Result<Vec<Seal>> {
        let mut seals = Vec::new();
        for w in claim.writes {
            let i = w.entry as usize;
            let state = &mut self.files[i];
            state.left = state.left.saturating_sub(1);
            let complete = state.left == 0;
            self.progress.add(u64::from(complete), bytes.len() as u64);
            if !complete {
                continue;
            }
            self.open.remove(&w.entry);
            let hasher = self.hashers.remove(&w.entry);
            let e = w.e;
            let want = e.file().expect("chunks are placed in files only");
            let written = match w.to {
                WriteTo::Whole { file: Some(f), .. } => {
                    // A one-chunk file's BLAKE3 is its chunk's: known for the bytes written.
                    let matches = match claim.checked {
                        true => claim.hash == want.hash,
                        false => hash_bytes(bytes) == want.hash,
                    };
                    Some((Arc::new(f), matches))
                }
                WriteTo::Shared(f, _) => hasher.and_then(|h| {
                    h.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .matches(want.size, &want.hash)
                        .map(|matches| (f, matches))
                }),
                WriteTo::Whole { file: None, .. } => None,
            };
            seals.push(Seal {
                entry: i,
                e,
                tree: Arc::clone(&self.tree),
                written,
            });
        }
        self.claimed.remove(&claim.hash);
        // Recorded after the data: a crash in between only means the chunk is asked for again.
        self.journal().append(&claim.hash)?;
        self.chunks.set_written(&claim.hash, true);
        Ok(seals)
    }

    /// Records that `seal`'s file was verified and sealed.
    pub fn sealed(&mut self, seal: &Seal) {
        self.files[seal.entry].verified = true;
    }

    /// Writes a chunk's bytes at every place still without them, records the chunk in the
    /// journal, and verifies the files this completed, all on this thread. The bytes are known
    /// to be the chunk's (`checked`: they were hashed, by us or by the caller), or else proved
    /// unchanged since a scan hashed them; only checked bytes seal a one-chunk file without
    /// hashing them.
    pub(super) fn write(&mut self, hash: &ContentHash, bytes: &[u8], checked: bool) -> Result<()> {
        let Some(mut claim) = self.claim_places(hash, bytes.len() as u64, checked)? else {
            return Ok(());
        };
        if let Err(e) = claim.write(bytes) {
            self.unclaim(claim);
            return Err(e);
        }
        let seals = self.settle(claim, bytes)?;
        let mut buf = std::mem::take(&mut self.buf);
        let result = seals.iter().try_for_each(|s| {
            s.run(&mut buf)?;
            self.sealed(s);
            Ok(())
        });
        self.buf = buf;
        result
    }
}
