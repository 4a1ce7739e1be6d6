//! Moving a staging tree to a newer manifest of the same source (pre-copy, then delta). Files
//! are rewritten only where they changed; the bookkeeping is still rebuilt over the whole tree,
//! except when no entry changed at all, which leaves the tree as it stands.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use baton_proto::workspace::{EntryKind, SkippedEntry, WorkspaceEntry, WorkspaceManifest};

use super::journal::{Journal, manifest_digest};
use super::{Filled, Stager, create_entry, created_lazily, placements};
use crate::error::{Error, Result, io_err};
use crate::fsutil::{remove_tree, set_mtime};
use crate::index::ChunkIndex;
use crate::packed::PackedManifest;
use crate::validate::{Limits, validate};

/// Where files leaving the tree wait, as sources of chunks for the new ones.
const ASIDE: &str = "aside";

/// True when the staged entry can stand for the new one as it is (modes and mtimes aside).
pub(super) fn same_content(old: &WorkspaceEntry, new: &WorkspaceEntry) -> bool {
    match (&old.kind, &new.kind) {
        (EntryKind::Dir, EntryKind::Dir) => true,
        (EntryKind::Symlink { target: a }, EntryKind::Symlink { target: b }) => a == b,
        (EntryKind::File(a), EntryKind::File(b)) => {
            a.size == b.size && a.hash == b.hash && a.chunks == b.chunks
        }
        _ => false,
    }
}

/// Takes staged entry `e` out of the tree at `tree`: a file with content moves into `aside`
/// (named by its number in `moved`, where it is recorded) as a source of chunks for the new
/// files; anything else is removed (a directory must be empty by then). A file never `created`
/// has nothing to take out.
pub(super) fn take_out(
    tree: &Path,
    e: &WorkspaceEntry,
    created: bool,
    aside: &Path,
    moved: &mut Vec<WorkspaceEntry>,
) -> Result<()> {
    let p = tree.join(&e.path);
    match &e.kind {
        EntryKind::File(_) if !created => {}
        EntryKind::File(f) if !f.chunks.is_empty() => {
            let name = moved.len().to_string();
            fs::rename(&p, aside.join(&name)).map_err(io_err("move aside", &p))?;
            moved.push(WorkspaceEntry {
                path: name,
                ..e.clone()
            });
        }
        EntryKind::Dir => fs::remove_dir(&p).map_err(io_err("remove", &p))?,
        _ => fs::remove_file(&p).map_err(io_err("remove", &p))?,
    }
    Ok(())
}

impl Stager {
    /// Switches this staging to `manifest`, a later scan of the same source with the same chunk
    /// parameters (typically the one taken after the source stopped, following a pre-copy).
    ///
    /// Entries whose content is unchanged stay where they are, verified ones stay verified;
    /// removed and changed ones leave the tree, and the chunks they held are copied into the new
    /// files before being dropped. Then [`Stager::missing`] lists only what the source still has
    /// to send. If this fails, abort the stager.
    pub fn update(&mut self, manifest: WorkspaceManifest, limits: &Limits) -> Result<Filled> {
        let m = &self.manifest;
        if (manifest.version, manifest.params) == (m.version, m.params)
            && manifest.entries.len() == m.entries.len()
            && m.entries
                .iter()
                .zip(&manifest.entries)
                .all(|(a, b)| a == *b)
        {
            let root = (manifest.root_mode, manifest.root_mtime_ns);
            return self.update_root(root, manifest.skipped, limits);
        }
        validate(&manifest, limits)?;
        if manifest.params != self.manifest.params {
            return Err(Error::BadOption(
                "chunk parameters differ from the staged manifest's; start a new transfer".into(),
            ));
        }
        let new = manifest;
        let old = std::mem::take(&mut self.manifest.entries);
        let old_files = std::mem::take(&mut self.files);
        // Keyed by entries of the old manifest, whose files are about to move.
        self.open.clear();
        self.hashers.clear();
        let old_chunks = std::mem::take(&mut self.chunks);
        let aside = self.fresh_aside()?;

        // Children before parents, so that a directory is empty by the time it goes.
        let mut kept_from: Vec<Option<usize>> = vec![None; new.entries.len()];
        let mut moved: Vec<WorkspaceEntry> = Vec::new();
        // Read in order (the records may be on disk), taken out in reverse.
        let mut leaving = Vec::new();
        for (oi, e) in old.iter().enumerate() {
            let found = new
                .entries
                .binary_search_by(|n| n.path.as_str().cmp(&e.path))
                .ok();
            match found {
                Some(ni) if same_content(&e, &new.entries[ni]) => kept_from[ni] = Some(oi),
                _ => leaving.push(oi),
            }
        }
        for &oi in leaving.iter().rev() {
            let e = old.get(oi);
            take_out(&self.tree, &e, old_files[oi].created, &aside, &mut moved)?;
        }
        let mut created_empty = vec![false; new.entries.len()];
        let mut created = vec![false; new.entries.len()];
        for (ni, e) in new.entries.iter().enumerate() {
            match kept_from[ni] {
                Some(oi) => created[ni] = old_files[oi].created,
                None if created_lazily(e) => {}
                None => {
                    created_empty[ni] = create_entry(&self.tree, e, false)?;
                    created[ni] = true;
                }
            }
        }

        // A kept file holds a chunk's bytes exactly when the chunk was fully written before.
        let (chunks, mut files) = placements(new.entries.iter(), |ni, h| {
            kept_from[ni].is_some() && old_chunks.is_written(h)
        })?;
        drop(old_chunks);
        for (state, made) in files.iter_mut().zip(created) {
            state.created = made;
        }
        let mut sources = WorkspaceManifest::new(new.params);
        for (ni, e) in new.entries.iter().enumerate() {
            let Some(oi) = kept_from[ni] else {
                files[ni].verified = created_empty[ni];
                continue;
            };
            let Some(f) = e.file() else { continue };
            if files[ni].left > 0 {
                // Its chunks are written into it again: never into a linked inode.
                if files[ni].created {
                    super::link::unshare(&self.dir, &self.tree.join(&e.path))?;
                }
                continue;
            }
            files[ni].verified = old_files[oi].verified;
            files[ni].linked = old_files[oi].linked;
            let before = old.get(oi);
            if files[ni].verified && (before.mode != e.mode || before.mtime_ns != e.mtime_ns) {
                let p = self.tree.join(&e.path);
                super::link::unshare(&self.dir, &p)?;
                files[ni].linked = false;
                fs::set_permissions(&p, fs::Permissions::from_mode(e.mode & 0o777))
                    .map_err(io_err("chmod", &p))?;
                set_mtime(&p, e.mtime_ns).map_err(io_err("set mtime of", &p))?;
            }
            if !f.chunks.is_empty() {
                sources.entries.push(e.clone());
            }
        }
        drop(old);
        let digest = manifest_digest(&new);
        let mut packed = PackedManifest::of(new);
        packed.spill_to(&self.dir)?;
        let journal = Journal::write(&self.dir, &digest, chunks.written_hashes())?;
        self.journal = journal.into();
        self.chunks = chunks;
        self.files = files;
        self.manifest = packed;

        let mut local = ChunkIndex::new(self.manifest.params);
        local.add(&self.tree, &sources);
        let mut aside_manifest = WorkspaceManifest::new(self.manifest.params);
        aside_manifest.entries = moved;
        local.add(&aside, &aside_manifest);
        let filled = self.fill_from_index(&local)?;
        self.journal().flush()?;
        remove_tree(&aside).map_err(io_err("remove", &aside))?;
        self.restart_progress();
        Ok(filled)
    }

    /// An empty `aside/` in the staging directory, for [`take_out`] to move files into.
    pub(super) fn fresh_aside(&self) -> Result<PathBuf> {
        let aside = self.dir.join(ASIDE);
        remove_tree(&aside).map_err(io_err("remove", &aside))?;
        DirBuilder::new()
            .mode(0o700)
            .create(&aside)
            .map_err(io_err("create", &aside))?;
        Ok(aside)
    }

    /// [`Stager::update`] to the staged manifest with another root mode and mtime and another
    /// skipped list: nothing in the tree changed since the pre-copy, so the staged tree stands
    /// as it is, whatever its size.
    pub fn update_root(
        &mut self,
        (root_mode, root_mtime_ns): (u32, i64),
        skipped: Vec<SkippedEntry>,
        limits: &Limits,
    ) -> Result<Filled> {
        let mut rest = WorkspaceManifest::new(self.manifest.params);
        rest.version = self.manifest.version;
        (rest.root_mode, rest.root_mtime_ns) = (root_mode, root_mtime_ns);
        rest.skipped = skipped;
        validate(&rest, limits)?;
        let m = &mut self.manifest;
        if (m.root_mode, m.root_mtime_ns, &m.skipped) != (root_mode, root_mtime_ns, &rest.skipped) {
            (m.root_mode, m.root_mtime_ns) = (root_mode, root_mtime_ns);
            m.skipped = rest.skipped;
            // A resumed stager must find the journal of the manifest it now holds.
            let journal = Journal::write(
                &self.dir,
                &self.manifest.digest().0,
                self.chunks.written_hashes(),
            )?;
            self.journal = journal.into();
        }
        self.restart_progress();
        Ok(Filled::default())
    }
}
