//! Moving a staging tree to a later scan of the same source that arrived as a change to the
//! staged manifest (the final pass, after a pre-copy). Only the changed entries are checked,
//! removed and placed, and the work done while the session is stopped follows the change, apart
//! from a digest, a copy of the packed entries kept (record by record, not decoded) and a
//! renumbering of the chunk table: linear passes.

use std::borrow::Cow;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use baton_proto::workspace::{ContentHash, SkippedEntry, WorkspaceEntry, WorkspaceManifest};

use super::journal::Journal;
use super::update::{same_content, take_out};
use super::{FileState, Filled, Stager};
use crate::delta::{ManifestChange, ManifestDigest, check_change, merged};
use crate::error::{Error, Result, io_err};
use crate::fsutil::{remove_tree, set_mtime};
use crate::index::ChunkIndex;
use crate::packed::{Kind, PackedEntries, decoded, path_of};
use crate::validate::{
    Limits, check_count, check_entry, check_head, check_parent, check_path, check_total,
};

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
        let at = self.check_change(&change, root, &skipped, digest, limits)?;
        let aside = self.fresh_aside()?;
        // Keyed by entries whose numbers are about to change.
        self.open.clear();
        self.hashers.clear();

        // Children before parents, so that a directory is empty by the time it goes.
        let base = &self.manifest.entries;
        let mut leaving: Vec<usize> = change.removed.iter().filter_map(|r| base.find(r)).collect();
        for (c, at) in change.changed.iter().zip(&at) {
            if let Some(i) = *at
                && !same_content(&base.get(i), c)
            {
                leaving.push(i);
            }
        }
        leaving.sort_unstable_by(|a, b| b.cmp(a));
        let mut moved: Vec<WorkspaceEntry> = Vec::new();
        for &i in &leaving {
            take_out(
                &self.tree,
                &base.get(i),
                self.files[i].created,
                &aside,
                &mut moved,
            )?;
        }
        drop(leaving);

        let fresh = self.merge_change(change, &at, root, skipped)?;
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

    /// The checks of [`Stager::apply_change`], which touch nothing. Returns, per changed entry,
    /// the index of the staged entry at its path, if any.
    fn check_change(
        &self,
        change: &ManifestChange,
        root: (u32, i64),
        skipped: &[SkippedEntry],
        digest: &ContentHash,
        limits: &Limits,
    ) -> Result<Vec<Option<usize>>> {
        let m = &self.manifest;
        let base = &m.entries;
        check_change(|r| base.find(r).is_some(), change)?;
        check_head(&m.empty(), root.0, skipped, limits)?;
        let find = |p: &str| base.find(p);
        let size = |i: usize| match base.kind(i) {
            Kind::File(size) => size,
            Kind::Dir | Kind::Symlink => 0,
        };
        let mut total = base.total_bytes();
        for r in &change.removed {
            total -= find(r).map_or(0, size);
        }
        let mut at = Vec::with_capacity(change.changed.len());
        let mut added = 0usize;
        for c in &change.changed {
            check_path(&c.path)?;
            let new_size = check_entry(c, &m.params)?;
            let old = find(&c.path);
            match old {
                Some(i) => total -= size(i),
                None => added += 1,
            }
            total = total.saturating_add(new_size);
            if let Some((parent, _)) = c.path.rsplit_once('/') {
                let kind = match change
                    .changed
                    .binary_search_by(|e| e.path.as_str().cmp(parent))
                {
                    Ok(j) => Some(change.changed[j].kind.clone()),
                    Err(_) if removes(change, parent) => None,
                    Err(_) => find(parent).map(|i| base.get(i).kind),
                };
                check_parent(&c.path, parent, kind.as_ref())?;
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
                    .filter(|(c, _)| !matches!(c.kind, baton_proto::workspace::EntryKind::Dir))
                    .filter_map(|(_, i)| *i),
            )
            .filter(|&i| base.kind(i) == Kind::Dir);
        for i in gone_dirs {
            let dir = base.path(i);
            let dir = &*dir;
            let below = |p: &str| {
                p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/'
            };
            // Entries below `dir` sort right after it, but not all that follow it are below it
            // (`dir-x` sorts between `dir` and `dir/x`): the range is bounded by `dir/` and
            // `dir0`, `0` being the byte after `/`.
            let (lo, hi) = (format!("{dir}/"), format!("{dir}0"));
            let first = base.partition_point(|p| p < lo.as_str());
            let last = base.partition_point(|p| p < hi.as_str());
            let r_first = change.removed.partition_point(|r| r.as_str() < lo.as_str());
            let r_last = change.removed.partition_point(|r| r.as_str() < hi.as_str());
            if last - first != r_last - r_first {
                // Every removed path is a staged one, so some staged entry below stays.
                let stays = (first..last)
                    .map(|j| base.path(j))
                    .find(|p| below(p) && !removes(change, p))
                    .unwrap_or(std::borrow::Cow::Borrowed(dir));
                return Err(Error::manifest(
                    stays,
                    format!(
                        "stays, but the change removes its directory {dir} or makes it something else"
                    ),
                ));
            }
        }
        let mut d = ManifestDigest::new(m.version, &m.params, root, entries);
        for e in merged(base.iter().map(Cow::Owned), change) {
            d.entry(&e);
        }
        if d.finish(skipped) != *digest {
            return Err(Error::manifest(
                "(manifest)",
                "the change does not rebuild the source's manifest (its digest differs)",
            ));
        }
        Ok(at)
    }

    /// Makes the staged manifest the one `change` gives (entries kept are copied as they are
    /// packed, not decoded), carries the per-entry state of the entries kept, renumbers the chunk
    /// table, and sets the modes and mtimes that changed on files already verified. `at` is what
    /// [`Stager::check_change`] returned. Returns the numbers of the new entries, whose chunks
    /// are not placed yet.
    fn merge_change(
        &mut self,
        change: ManifestChange,
        at: &[Option<usize>],
        (root_mode, root_mtime_ns): (u32, i64),
        skipped: Vec<SkippedEntry>,
    ) -> Result<Vec<usize>> {
        let old = &self.manifest.entries;
        let old_files = &self.files;
        let n = old.len();
        let added = at.iter().filter(|a| a.is_none()).count();
        let count = n + added - change.removed.len();
        let mut entries = old.empty_like()?;
        entries.reserve(count, old.packed_bytes());
        let mut files = Vec::with_capacity(count);
        // Old number → new number (MAX: its content left).
        let mut kept_at = vec![u32::MAX; n];
        let mut fresh = Vec::new();
        let mut touched = Vec::new();
        let mut changed = change.changed.into_iter().zip(at).peekable();
        let mut removed = change.removed.iter().peekable();
        let mut add = |entries: &mut PackedEntries,
                       files: &mut Vec<FileState>,
                       c: &WorkspaceEntry|
         -> Result<()> {
            fresh.push(entries.len());
            entries.push(c)?;
            files.push(FileState {
                file: c.file().is_some(),
                ..FileState::default()
            });
            Ok(())
        };
        // The staged records are read in order, a block at a time, and those kept are copied
        // as they are.
        let mut cursor = old.cursor();
        for i in 0..n {
            let record = cursor.record(i);
            let path = path_of(record);
            while let Some((c, _)) =
                changed.next_if(|(c, at)| at.is_none() && c.path.as_str() < path)
            {
                add(&mut entries, &mut files, &c)?;
            }
            if removed.next_if(|r| r.as_str() == path).is_some() {
                continue;
            }
            let w = entries.len();
            match changed.next_if(|(_, at)| **at == Some(i)) {
                Some((c, _)) => {
                    let e = decoded(record);
                    if same_content(&e, &c) {
                        if old_files[i].verified && (e.mode != c.mode || e.mtime_ns != c.mtime_ns) {
                            touched.push(w);
                        }
                        kept_at[i] = w as u32;
                        files.push(old_files[i]);
                        entries.push(&c)?;
                    } else {
                        add(&mut entries, &mut files, &c)?;
                    }
                }
                None => {
                    kept_at[i] = w as u32;
                    files.push(old_files[i]);
                    entries.push_record(record)?;
                }
            }
        }
        for (c, _) in changed {
            add(&mut entries, &mut files, &c)?;
        }
        drop(cursor);
        entries.shrink();
        // Only now: a failure above (a full disk) leaves the staged manifest readable for the
        // abort that must follow it.
        self.manifest.entries = entries;
        self.files = files;
        self.manifest.root_mode = root_mode;
        self.manifest.root_mtime_ns = root_mtime_ns;
        self.manifest.skipped = skipped;
        self.chunks
            .remap(|e| kept_at.get(e as usize).copied().filter(|&q| q != u32::MAX));
        for q in touched {
            let e = self.manifest.entries.get(q);
            // Directories and symlinks get theirs at finish.
            if e.file().is_none() {
                continue;
            }
            let p = self.tree.join(&e.path);
            super::link::unshare(&self.dir, &p)?;
            self.files[q].linked = false;
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
