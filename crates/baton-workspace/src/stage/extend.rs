//! Growing a staging tree with the next part of a manifest streamed in path order: the
//! pre-copy of a big tree starts before the source has hashed all of it, and each part costs
//! work in proportion to the part, not to the tree.

use std::os::unix::fs::FileExt;

use baton_proto::workspace::{ContentHash, SkippedEntry, WorkspaceEntry};

use super::tree::{create_entry, created_lazily, open_nofollow};
use super::{FileState, Filled, Placement, Stager};
use crate::error::{Error, Result, io_err};
use crate::validate::Limits;

impl Stager {
    /// Appends `entries` (the next part of a manifest streamed in path order) and `skipped` to
    /// the staged manifest. The manifest they make with what is staged is validated (the new
    /// entries against all before them), and left as it was when it does not pass. Chunks the part shares with files already staged
    /// are copied from them; [`Stager::missing`] then lists what the source still has to send.
    ///
    /// The journal keeps the digest of the manifest the stager was created with, so a stager
    /// reopened after a crash in the middle of a stream starts that stream over. If this fails
    /// past validation, abort the stager.
    pub fn extend(
        &mut self,
        entries: Vec<WorkspaceEntry>,
        skipped: Vec<SkippedEntry>,
        limits: &Limits,
    ) -> Result<Filled> {
        let start = self.manifest.entries.len();
        self.manifest.append(entries, skipped, limits)?;
        self.files
            .resize(self.manifest.entries.len(), FileState::default());
        let shared = self.place_new(start..self.manifest.entries.len())?;
        let filled = self.copy_shared(shared)?;
        self.restart_progress();
        Ok(filled)
    }

    /// Creates the entries `new` of the staged manifest that are created at once (directories,
    /// symlinks, empty files) and places their chunks. Returns the chunks they share with places
    /// that hold their bytes already, for [`Stager::copy_shared`].
    pub(super) fn place_new(
        &mut self,
        new: impl IntoIterator<Item = usize>,
    ) -> Result<Vec<ContentHash>> {
        let mut shared = Vec::new();
        for i in new {
            let e = self.manifest.entries.get(i);
            self.files[i].file = e.file().is_some();
            if !created_lazily(&e) {
                self.files[i].verified = create_entry(&self.tree, &e, false)?;
                self.files[i].created = true;
            }
            let Some(f) = e.file() else { continue };
            let mut offset = 0u64;
            for c in &f.chunks {
                let place = Placement {
                    entry: i as u32,
                    offset,
                    done: false,
                };
                let u = self.chunks.place(c.hash, c.len, place);
                if u.len != c.len {
                    return Err(Error::manifest(
                        &e.path,
                        format!("chunk {} appears with two different lengths", c.hash),
                    ));
                }
                self.files[i].left += 1;
                // A place is done once claimed; one claimed but not settled may not hold the
                // bytes yet.
                if u.at.iter().any(|p| p.done) && !self.claimed.contains(&c.hash) {
                    shared.push(c.hash);
                }
                // Written means written at every place, this new one included.
                if u.written {
                    self.chunks.set_written(&c.hash, false);
                }
                offset += u64::from(c.len);
            }
        }
        shared.sort_unstable();
        shared.dedup();
        Ok(shared)
    }

    /// Copies each chunk of `shared` from a place that holds its bytes into its places that do
    /// not.
    pub(super) fn copy_shared(&mut self, shared: Vec<ContentHash>) -> Result<Filled> {
        let mut filled = Filled::default();
        let mut buf = Vec::new();
        for hash in shared {
            let Some(u) = self.chunks.get(&hash) else {
                continue;
            };
            let Some(p) = u.at.iter().find(|p| p.done) else {
                continue;
            };
            let path = self
                .tree
                .join(&*self.manifest.entries.path(p.entry as usize));
            buf.resize(u.len as usize, 0);
            open_nofollow(&path, false)?
                .read_exact_at(&mut buf, p.offset)
                .map_err(io_err("read", &path))?;
            // Not trusted as checked: a file it completes is hashed from the bytes written.
            self.write(&hash, &buf, false)?;
            filled.chunks += 1;
            filled.bytes += buf.len() as u64;
        }
        Ok(filled)
    }
}
