//! Hard-linking the unchanged files of a destination that the staged tree replaces.
//!
//! Handing a session back to a tree that still holds most of it would otherwise copy every
//! unchanged byte into the staging, and write it to disk again, where rsync leaves such files
//! alone. A file of the destination that the scan hashed, is provably unchanged since (same
//! size, mtime, inode and ctime), has the entry's mode and mtime, and holds the entry's chunks
//! at the entry's offsets, is the entry's file: the staging links it instead of copying it.
//!
//! Only for `replace`: once the staged tree is in place the destination is removed, so the
//! inode has one tree again; with `sibling` both trees would stay and share it. The staging
//! never writes, truncates, chmods or touches a linked inode: a later pass that changes only
//! its mode or mtime first gives the staged path a copy of its own ([`unshare`]), and a
//! resumed stager drops linked files ([`drop_links`]), so an abort leaves the destination as
//! it was, metadata included. A destination file edited in place after it was linked is the
//! staged file too: `finish` stats every linked file again and refuses one whose size, mtime
//! or mode moved (an edit that puts the mtime back is not seen, as by rsync's quick check).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use baton_proto::workspace::WorkspaceEntry;

use super::{Filled, Stager};
use crate::error::{Error, Result, io_err};
use crate::fsutil::mtime_ns;
use crate::pool;
use crate::spool_index::LocalChunks;

/// Set to `0` to copy a destination's unchanged files into the staging instead of linking them.
pub const LINK_VAR: &str = "BATON_WORKSPACE_LINK";

/// Whether `replace` links unchanged files (see [`LINK_VAR`]).
pub fn link_enabled() -> bool {
    std::env::var(LINK_VAR).map_or(true, |v| v != "0")
}

/// Name of the copy [`unshare`] makes, in the staging directory (never inside the tree).
const UNSHARED: &str = "unshared.tmp";

/// Whether `md` is the file `e` describes, as far as the inode's metadata goes: size, mtime and
/// the mode a sealed file gets (setuid, setgid and sticky dropped).
fn fits(md: &fs::Metadata, e: &WorkspaceEntry, size: u64) -> bool {
    md.is_file()
        && md.len() == size
        && mtime_ns(md) == e.mtime_ns
        && md.mode() & 0o7777 == e.mode & 0o777
}

/// Gives the staged file at `p` an inode of its own when it shares one (a linked file), by
/// copying it beside the tree in `dir` and moving the copy over it. Returns whether it did.
pub(super) fn unshare(dir: &Path, p: &Path) -> Result<bool> {
    let md = fs::symlink_metadata(p).map_err(io_err("stat", p))?;
    if !md.is_file() || md.nlink() <= 1 {
        return Ok(false);
    }
    let tmp = dir.join(UNSHARED);
    let _ = fs::remove_file(&tmp);
    fs::copy(p, &tmp).map_err(io_err("copy", p))?;
    fs::rename(&tmp, p).map_err(io_err("replace", p))?;
    Ok(true)
}

/// Removes the files of a staging `tree` left by an earlier stager that are linked from the
/// destination, and returns their entries: the journal may record their chunks as written, but
/// a resumed stager must not write into the destination's inodes, so it stages them afresh.
pub(super) fn drop_links(
    tree: &Path,
    entries: impl Iterator<Item = WorkspaceEntry>,
) -> Result<HashSet<usize>> {
    let mut dropped = HashSet::new();
    for (i, e) in entries.enumerate() {
        if e.file().is_none_or(|f| f.size == 0) {
            continue;
        }
        let p = tree.join(&e.path);
        if fs::symlink_metadata(&p).is_ok_and(|md| md.is_file() && md.nlink() > 1) {
            fs::remove_file(&p).map_err(io_err("remove", &p))?;
            dropped.insert(i);
        }
    }
    Ok(dropped)
}

impl Stager {
    /// Links into the staging every file not started yet that `index` holds whole in a file
    /// under `under` (the destination this staging replaces; see the module docs), instead of
    /// copying its chunks. Call it before [`Stager::fill_from_index`], which copies what is left.
    /// Returns the files' chunks and bytes.
    pub fn link_from_index(
        &mut self,
        index: &(impl LocalChunks + ?Sized),
        under: &Path,
    ) -> Result<Filled> {
        let mut linked = Filled::default();
        if index.params() != self.manifest.params {
            return Ok(linked);
        }
        for i in 0..self.manifest.entries.len() {
            let Some(from) = self.linkable(i, index, under) else {
                continue;
            };
            let e = self.manifest.entries.get(i);
            let size = e.file().map_or(0, |f| f.size);
            let p = self.tree.join(&e.path);
            match fs::hard_link(&from, &p) {
                Ok(()) => {}
                // Something is there: a collision `create` would have reported for a copy too.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(io_err("link", &p)(err));
                }
                // Another filesystem below the destination, a link count at its limit, a
                // filesystem without links: the file is copied instead.
                Err(_) => continue,
            }
            // The link is the inode checked before: a write in between would show here.
            let still = fs::symlink_metadata(&p).is_ok_and(|md| fits(&md, &e, size));
            if !still {
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
                continue;
            }
            linked.chunks += self.settle_linked(i)?;
            linked.bytes += size;
        }
        Ok(linked)
    }

    /// Refuses a linked file that no longer has its entry's size, mtime and mode: the
    /// destination's file was changed in place since it was linked (someone worked in the tree
    /// being replaced), and its bytes were never read. A stat per linked file, at `finish`,
    /// spread over `threads`.
    pub(super) fn check_links(&self, threads: usize) -> Result<()> {
        pool::try_each(
            self.files.len(),
            threads,
            || (),
            |_, i| {
                if !self.files[i].linked {
                    return Ok(());
                }
                let e = self.manifest.entries.get(i);
                let size = e.file().map_or(0, |f| f.size);
                let p = self.tree.join(&e.path);
                if fs::symlink_metadata(&p).is_ok_and(|md| fits(&md, &e, size)) {
                    return Ok(());
                }
                Err(Error::VerifyFailed {
                    path: e.path.clone(),
                    reason: "changed in the destination during the handoff (it was linked from \
                             there, unchanged); retry the handoff"
                        .into(),
                })
            },
        )
    }

    /// The file of `index` that entry `i` can be linked to, if any.
    fn linkable(
        &self,
        i: usize,
        index: &(impl LocalChunks + ?Sized),
        under: &Path,
    ) -> Option<std::path::PathBuf> {
        let state = self.files[i];
        if state.created || state.left == 0 {
            return None;
        }
        let e = self.manifest.entries.get(i);
        let f = e.file()?;
        if f.chunks.is_empty() || state.created || state.left as usize != f.chunks.len() {
            return None;
        }
        let first = index.locate(&f.chunks.first()?.hash)?;
        if first.offset != 0 || !first.path.starts_with(under) {
            return None;
        }
        let md = fs::symlink_metadata(&first.path).ok()?;
        if !first.unchanged(&md) || !fits(&md, &e, f.size) {
            return None;
        }
        let mut offset = 0u64;
        for c in &f.chunks {
            if self.claimed.contains(&c.hash) {
                return None;
            }
            if offset > 0 {
                let at = index.locate(&c.hash)?;
                if at.offset != offset || at.path != first.path {
                    return None;
                }
            }
            offset += u64::from(c.len);
        }
        Some(first.path)
    }

    /// Records entry `i` as linked: its places are written, the chunks all of whose places are
    /// written go to the journal, and the file is complete and verified. Returns its chunks.
    fn settle_linked(&mut self, i: usize) -> Result<u64> {
        let e = self.manifest.entries.get(i);
        let Some(f) = e.file() else { return Ok(0) };
        let mut offset = 0u64;
        let mut complete = Vec::new();
        for c in &f.chunks {
            if let Some(slot) = self.chunks.get_mut(&c.hash) {
                for p in slot.at.iter_mut() {
                    if p.entry as usize == i && p.offset == offset {
                        p.done = true;
                    }
                }
                if slot.at.iter().all(|p| p.done) {
                    complete.push(c.hash);
                }
            }
            offset += u64::from(c.len);
        }
        let chunks = f.chunks.len() as u64;
        self.progress.add(1, f.size);
        let state = &mut self.files[i];
        state.left = 0;
        state.created = true;
        state.verified = true;
        state.linked = true;
        for hash in complete {
            if !self.chunks.is_written(&hash) {
                self.journal().append(&hash)?;
                self.chunks.set_written(&hash, true);
            }
        }
        Ok(chunks)
    }
}
