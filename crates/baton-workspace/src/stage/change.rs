//! Moving a staging tree to a later scan of the same source that arrived as a change to the
//! staged manifest (the final pass, after a pre-copy). Only the changed entries are checked,
//! removed and placed: nothing holds a second copy of the manifest, and the work done while the
//! session is stopped follows the change, apart from a digest and a renumbering of the chunk
//! table, both linear passes that allocate nothing per entry.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use baton_proto::workspace::{
    ContentHash, EntryKind, SkippedEntry, WorkspaceEntry, WorkspaceManifest,
};

use super::journal::Journal;
use super::update::{ASIDE, same_content, take_out};
use super::{FileState, Filled, Stager};
use crate::delta::{ManifestChange, ManifestDigest, check_change, merged};
use crate::error::{Error, Result, io_err};
use crate::fsutil::{remove_tree, set_mtime};
use crate::index::ChunkIndex;
use crate::validate::{
    Limits, check_count, check_entry, check_head, check_parent, check_path, check_total,
};

/// Where a changed entry stands against the staged manifest.
struct Checked {
    /// Per changed entry, the index of the staged entry at its path, if any.
    at: Vec<Option<usize>>,
    /// Entries of the result.
    entries: usize,
}

impl Stager {
    /// Switches this staging to the manifest the staged one becomes with `change`, the root mode
    /// and mtime `root` and the skipped list `skipped`, once that manifest is checked to have the
    /// digest `digest` (the source's, see [`crate::digest`]).
    ///
    /// Everything is checked before the tree is touched: the change must fit the staged
    /// manifest (see [`crate::patch`]) and the result must be a valid manifest, which is checked
    /// from the changed entries and their neighbours only (the staged manifest passed already).
    /// A failure then leaves the stager as it was. Past the checks, the entries whose content
    /// changed leave the tree, the new ones are placed, chunks held by unchanged files or by
    /// the files being replaced are copied, and [`Stager::missing`] lists what the source still
    /// has to send. If this fails past the checks, abort the stager.
    pub fn apply_change(
        &mut self,
        change: ManifestChange,
        root: (u32, i64),
        skipped: Vec<SkippedEntry>,
        digest: &ContentHash,
        limits: &Limits,
    ) -> Result<Filled> {
        let checked = self.check_change(&change, root, &skipped, digest, limits)?;
        let aside = self.dir.join(ASIDE);
        remove_tree(&aside).map_err(io_err("remove", &aside))?;
        DirBuilder::new()
            .mode(0o700)
            .create(&aside)
            .map_err(io_err("create", &aside))?;
        // Keyed by entries whose numbers are about to change.
        self.open.clear();
        self.hashers.clear();

        // Children before parents, so that a directory is empty by the time it goes.
        let base = &self.manifest.entries;
        let mut leaving: Vec<usize> = change
            .removed
            .iter()
            .filter_map(|r| base.binary_search_by(|e| e.path.as_str().cmp(r)).ok())
            .collect();
        for (c, at) in change.changed.iter().zip(&checked.at) {
            if let Some(i) = *at
                && !same_content(&base[i], c)
            {
                leaving.push(i);
            }
        }
        leaving.sort_unstable_by(|a, b| b.cmp(a));
        let mut moved: Vec<WorkspaceEntry> = Vec::new();
        for &i in &leaving {
            take_out(
                &self.tree,
                &base[i],
                self.files[i].created,
                &aside,
                &mut moved,
            )?;
        }
        drop(leaving);

        let fresh = self.merge_change(change, root, skipped, checked.entries)?;
        let shared = self.place_new(fresh)?;
        let journal = Journal::write(&self.dir, &digest.0, self.chunks.written_hashes())?;
        self.journal = journal.into();
        let mut filled = self.copy_shared(shared)?;

        let mut aside_manifest = WorkspaceManifest::new(self.manifest.params);
        aside_manifest.entries = moved;
        let mut local = ChunkIndex::new(self.manifest.params);
        local.add(&aside, &aside_manifest);
        let from_aside = self.fill_from_index(&local)?;
        filled.chunks += from_aside.chunks;
        filled.bytes += from_aside.bytes;
        self.journal().flush()?;
        remove_tree(&aside).map_err(io_err("remove", &aside))?;
        self.restart_progress();
        Ok(filled)
    }

    /// The checks of [`Stager::apply_change`], which touch nothing.
    fn check_change(
        &self,
        change: &ManifestChange,
        root: (u32, i64),
        skipped: &[SkippedEntry],
        digest: &ContentHash,
        limits: &Limits,
    ) -> Result<Checked> {
        let m = &self.manifest;
        let base = &m.entries;
        check_change(base, change)?;
        check_head(m, root.0, skipped, limits)?;
        let find = |p: &str| base.binary_search_by(|e| e.path.as_str().cmp(p)).ok();
        let size = |e: &WorkspaceEntry| e.file().map_or(0, |f| f.size);
        let mut total = m.total_bytes();
        for r in &change.removed {
            total -= find(r).map_or(0, |i| size(&base[i]));
        }
        let mut at = Vec::with_capacity(change.changed.len());
        let mut added = 0usize;
        for c in &change.changed {
            check_path(&c.path)?;
            let new_size = check_entry(c, &m.params)?;
            let old = find(&c.path);
            match old {
                Some(i) => total -= size(&base[i]),
                None => added += 1,
            }
            total = total.saturating_add(new_size);
            if let Some((parent, _)) = c.path.rsplit_once('/') {
                let kind = match change
                    .changed
                    .binary_search_by(|e| e.path.as_str().cmp(parent))
                {
                    Ok(j) => Some(&change.changed[j].kind),
                    Err(_) if removes(change, parent) => None,
                    Err(_) => find(parent).map(|i| &base[i].kind),
                };
                check_parent(&c.path, parent, kind)?;
            }
            at.push(old);
        }
        check_total(total, limits)?;
        let entries = base.len() + added - change.removed.len();
        check_count(entries, limits)?;
        // A directory that goes, or becomes something else, takes every entry below it along.
        let gone_dirs = change
            .removed
            .iter()
            .filter_map(|r| find(r))
            .chain(
                change
                    .changed
                    .iter()
                    .zip(&at)
                    .filter(|(c, _)| !matches!(c.kind, EntryKind::Dir))
                    .filter_map(|(_, i)| *i),
            )
            .filter(|&i| matches!(base[i].kind, EntryKind::Dir));
        for i in gone_dirs {
            let dir = base[i].path.as_str();
            let below = |p: &str| {
                p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/'
            };
            // Entries below `dir` sort right after it, but not all that follow it are below it
            // (`dir-x` sorts between `dir` and `dir/x`): the range is bounded by `dir/` and
            // `dir0`, `0` being the byte after `/`.
            let (lo, hi) = (format!("{dir}/"), format!("{dir}0"));
            let first = base.partition_point(|e| e.path.as_str() < lo.as_str());
            let last = base.partition_point(|e| e.path.as_str() < hi.as_str());
            let r_first = change.removed.partition_point(|r| r.as_str() < lo.as_str());
            let r_last = change.removed.partition_point(|r| r.as_str() < hi.as_str());
            if last - first != r_last - r_first {
                // Every removed path is a staged one, so some staged entry below stays.
                let stays = base[first..last]
                    .iter()
                    .map(|e| e.path.as_str())
                    .find(|p| below(p) && !removes(change, p))
                    .unwrap_or(dir);
                return Err(Error::manifest(
                    stays,
                    format!(
                        "stays, but the change removes its directory {dir} or makes it something else"
                    ),
                ));
            }
        }
        let mut d = ManifestDigest::new(m.version, &m.params, root, entries);
        for e in merged(base, change) {
            d.entry(e);
        }
        if d.finish(skipped) != *digest {
            return Err(Error::manifest(
                "(manifest)",
                "the change does not rebuild the source's manifest (its digest differs)",
            ));
        }
        Ok(Checked { at, entries })
    }

    /// Makes the staged manifest the one `change` gives (entries moved, not copied), carries
    /// the per-entry state of the entries kept, renumbers the chunk table, and sets the modes
    /// and mtimes that changed on files already verified. Returns the numbers of the new
    /// entries, whose chunks are not placed yet.
    fn merge_change(
        &mut self,
        change: ManifestChange,
        (root_mode, root_mtime_ns): (u32, i64),
        skipped: Vec<SkippedEntry>,
        entries: usize,
    ) -> Result<Vec<usize>> {
        let old = std::mem::take(&mut self.manifest.entries);
        let old_files = std::mem::take(&mut self.files);
        let mut new_at = vec![u32::MAX; old.len()];
        let mut out: Vec<WorkspaceEntry> = Vec::with_capacity(entries);
        let mut files: Vec<FileState> = Vec::with_capacity(entries);
        let mut fresh = Vec::new();
        let mut changed = change.changed.into_iter().peekable();
        let mut removed = change.removed.into_iter().peekable();
        let mut touched = Vec::new();
        for (oi, e) in old.into_iter().enumerate() {
            while let Some(c) = changed.next_if(|c| c.path < e.path) {
                fresh.push(out.len());
                out.push(c);
                files.push(FileState::default());
            }
            if removed.next_if(|r| *r == e.path).is_some() {
                continue;
            }
            match changed.next_if(|c| c.path == e.path) {
                Some(c) if same_content(&e, &c) => {
                    let state = old_files[oi];
                    if state.verified && (e.mode != c.mode || e.mtime_ns != c.mtime_ns) {
                        touched.push(out.len());
                    }
                    new_at[oi] = out.len() as u32;
                    out.push(c);
                    files.push(state);
                }
                Some(c) => {
                    fresh.push(out.len());
                    out.push(c);
                    files.push(FileState::default());
                }
                None => {
                    new_at[oi] = out.len() as u32;
                    out.push(e);
                    files.push(old_files[oi]);
                }
            }
        }
        for c in changed {
            fresh.push(out.len());
            out.push(c);
            files.push(FileState::default());
        }
        drop(old_files);
        self.manifest.entries = out;
        self.manifest.root_mode = root_mode;
        self.manifest.root_mtime_ns = root_mtime_ns;
        self.manifest.skipped = skipped;
        self.files = files;
        self.chunks
            .remap(|e| new_at.get(e as usize).copied().filter(|&n| n != u32::MAX));
        for i in touched {
            let e = &self.manifest.entries[i];
            // Directories and symlinks get theirs at finish.
            if e.file().is_none() {
                continue;
            }
            let p = self.tree.join(&e.path);
            fs::set_permissions(&p, fs::Permissions::from_mode(e.mode & 0o777))
                .map_err(io_err("chmod", &p))?;
            set_mtime(&p, e.mtime_ns).map_err(io_err("set mtime of", &p))?;
        }
        Ok(fresh)
    }
}

/// True when `change` removes `path`.
fn removes(change: &ManifestChange, path: &str) -> bool {
    change
        .removed
        .binary_search_by(|r| r.as_str().cmp(path))
        .is_ok()
}
