//! The delta: which chunks must travel, and what the transfer will do to the destination.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::path::Path;

use baton_proto::workspace::{
    ConflictPolicy, ContentHash, DestinationState, EntryKind, PLAN_LIST_CAP, PlanSummary,
    WorkspaceEntry, WorkspaceManifest,
};

use crate::error::{Error, Result, io_err};
use crate::fsutil::available_bytes;
use crate::spool_index::LocalChunks;

/// Space kept free beyond the estimate, for metadata the estimate cannot see.
const SPACE_RESERVE: u64 = 16 * 1024 * 1024;

/// Block size the space estimate rounds files up to.
const BLOCK: u64 = 4096;

/// A transfer plan: the summary to show, and the chunks to ask the source for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Counts and bytes, for the user and for the space check.
    pub summary: PlanSummary,
    /// Distinct chunks the target lacks, in the order the manifest first uses them.
    pub needed: Vec<ContentHash>,
}

/// The plan for a destination that does not exist yet, from the source's counts alone (before
/// any file is hashed): everything is added, nothing is overwritten, and the transfer figures
/// are upper bounds (`estimated`), since identical chunks travel once.
pub fn plan_absent(files: u64, bytes: u64, policy: ConflictPolicy) -> PlanSummary {
    PlanSummary {
        destination: DestinationState::Absent,
        policy,
        files,
        bytes,
        add_files: files,
        add_bytes: bytes,
        transfer_bytes: bytes,
        // Every file rounded up to a block, at worst.
        disk_bytes: bytes.saturating_add(files.saturating_mul(BLOCK)),
        estimated: true,
        ..PlanSummary::default()
    }
}

/// Plans the transfer of `source` to a destination in `state`, whose current contents are
/// `existing` (a scan of it, `None` when absent or not a directory), given the chunks `index`
/// holds, under `policy`.
///
/// Scan the destination with [`IgnoredFiles::Include`](crate::IgnoredFiles::Include): under
/// `replace` its ignored files (say `node_modules/`) are set aside too, and the plan should say so.
pub fn plan(
    source: &WorkspaceManifest,
    state: DestinationState,
    existing: impl IntoIterator<Item = Result<WorkspaceEntry>>,
    index: &(impl LocalChunks + ?Sized),
    policy: ConflictPolicy,
) -> Result<Plan> {
    plan_entries(source.entries.iter(), state, existing, index, policy)
}

/// [`plan`] of the source manifest's entries as they come, in path order (say, decoded one at a
/// time from a [`crate::PackedManifest`]).
pub fn plan_entries<E: Borrow<WorkspaceEntry>>(
    source: impl IntoIterator<Item = E>,
    state: DestinationState,
    existing: impl IntoIterator<Item = Result<WorkspaceEntry>>,
    index: &(impl LocalChunks + ?Sized),
    policy: ConflictPolicy,
) -> Result<Plan> {
    let mut s = PlanSummary {
        destination: state,
        policy,
        ..PlanSummary::default()
    };
    let list = policy == ConflictPolicy::Replace;
    let mut old = existing.into_iter().peekable();
    let mut new = source.into_iter().peekable();
    let mut seen = HashSet::new();
    let mut needed = Vec::new();
    let mut other_entries = 1u64; // the root
    // Counts a source entry once the walk is past it.
    let mut tally = |s: &mut PlanSummary, e: &WorkspaceEntry| {
        let Some(f) = e.file() else {
            other_entries += 1;
            return;
        };
        s.files += 1;
        s.bytes += f.size;
        s.disk_bytes += f.size.div_ceil(BLOCK) * BLOCK;
        for c in &f.chunks {
            if !index.contains(&c.hash) && seen.insert(c.hash) {
                needed.push(c.hash);
                s.transfer_bytes += u64::from(c.len);
            }
        }
    };
    // Directories removed so far: their descendants are not listed again.
    let mut removed_dirs: HashSet<String> = HashSet::new();
    loop {
        if let Some(Err(_)) = old.peek()
            && let Some(Err(e)) = old.next()
        {
            return Err(e);
        }
        let ord = match (new.peek(), old.peek()) {
            (None, None) => break,
            (Some(a), Some(Ok(b))) => a.borrow().path.cmp(&b.path),
            (Some(_), _) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
        };
        match ord {
            Ordering::Less => {
                let Some(a) = new.next() else { break };
                let a = a.borrow();
                if let Some(f) = a.file() {
                    s.add_files += 1;
                    s.add_bytes += f.size;
                }
                tally(&mut s, a);
            }
            Ordering::Greater => {
                let Some(Ok(e)) = old.next() else {
                    break;
                };
                if let Some(f) = e.file() {
                    s.remove_files += 1;
                    s.remove_bytes += f.size;
                }
                // Entries sort by path, so a sibling such as `keep-link` can fall between `keep`
                // and `keep/me.bin`: look at every ancestor, not only the last path removed.
                let under_removed = e
                    .path
                    .match_indices('/')
                    .any(|(at, _)| removed_dirs.contains(&e.path[..at]));
                if list && !under_removed {
                    push_capped(&mut s.removed, &e.path, &mut s.lists_truncated);
                }
                if matches!(e.kind, EntryKind::Dir) {
                    removed_dirs.insert(e.path);
                }
            }
            Ordering::Equal => {
                let (Some(a), Some(Ok(b))) = (new.next(), old.next()) else {
                    break;
                };
                let (a, b) = (a.borrow(), &b);
                let same = match (&a.kind, &b.kind) {
                    (EntryKind::Dir, EntryKind::Dir) => true,
                    (EntryKind::File(x), EntryKind::File(y)) => {
                        x.hash == y.hash && x.size == y.size && a.mode == b.mode
                    }
                    (EntryKind::Symlink { target: x }, EntryKind::Symlink { target: y }) => x == y,
                    _ => false,
                };
                match (a.file(), b.file()) {
                    (Some(_), Some(_)) if same => s.unchanged_files += 1,
                    (Some(f), _) => {
                        s.change_files += 1;
                        s.change_bytes += f.size;
                    }
                    (None, Some(f)) => {
                        s.remove_files += 1;
                        s.remove_bytes += f.size;
                    }
                    (None, None) => {}
                }
                if list && !same {
                    push_capped(&mut s.overwritten, &a.path, &mut s.lists_truncated);
                }
                tally(&mut s, a);
            }
        }
    }
    s.disk_bytes += other_entries * BLOCK;
    s.transfer_chunks = needed.len() as u64;
    s.reused_bytes = s.bytes.saturating_sub(s.transfer_bytes);
    Ok(Plan { summary: s, needed })
}

/// Refuses early (`insufficient_space`) when the filesystem that will hold `dest` has less free
/// space than the plan's staging tree needs, plus a reserve.
pub fn check_space(summary: &PlanSummary, dest: &Path) -> Result<()> {
    let available = available_bytes(dest).map_err(io_err("statvfs", dest))?;
    let needed = summary.disk_bytes.saturating_add(SPACE_RESERVE);
    if available < needed {
        return Err(Error::InsufficientSpace {
            path: dest.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

fn push_capped(list: &mut Vec<String>, path: &str, truncated: &mut bool) {
    if list.len() < PLAN_LIST_CAP {
        list.push(path.to_string());
    } else {
        *truncated = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::workspace::ChunkParams;

    use crate::index::ChunkIndex;

    use crate::testutil::{dir_entry as dir, file_entry as file, manifest_of as manifest};

    #[test]
    fn a_removed_directory_is_listed_once_even_with_a_sibling_sorting_inside_it() {
        // `keep-link` sorts between `keep` and `keep/me.bin` (b'-' < b'/').
        let old = manifest(vec![
            dir("keep"),
            file("keep-link", 4, 3),
            file("keep/me.bin", 5, 3),
            dir("keep/sub"),
            file("keep/sub/deep", 6, 3),
        ]);
        let src = manifest(vec![file("new", 1, 1)]);
        let idx = ChunkIndex::new(ChunkParams::DEFAULT);
        let p = plan(
            &src,
            DestinationState::Exists,
            old.entries.iter().cloned().map(Ok),
            &idx,
            ConflictPolicy::Replace,
        )
        .unwrap();
        assert_eq!(p.summary.removed, vec!["keep", "keep-link"]);
        assert_eq!(p.summary.remove_files, 3);
    }

    #[test]
    fn counts_adds_changes_removals_and_lists_under_replace() {
        let src = manifest(vec![
            file("a", 1, 10),
            file("b", 2, 20),
            file("c", 3, 30),
            file("d", 3, 30),
        ]);
        let old = manifest(vec![
            file("a", 1, 10),
            file("b", 9, 25),
            dir("gone"),
            file("gone/x", 7, 5),
            file("gone/y", 8, 5),
        ]);
        let mut idx = ChunkIndex::new(ChunkParams::DEFAULT);
        idx.add(Path::new("/nowhere"), &old);
        let p = plan(
            &src,
            DestinationState::Exists,
            old.entries.iter().cloned().map(Ok),
            &idx,
            ConflictPolicy::Replace,
        )
        .unwrap();
        let s = &p.summary;
        assert_eq!((s.files, s.bytes), (4, 90));
        assert_eq!((s.add_files, s.add_bytes), (2, 60));
        assert_eq!((s.change_files, s.change_bytes), (1, 20));
        assert_eq!((s.remove_files, s.remove_bytes), (2, 10));
        assert_eq!(s.unchanged_files, 1);
        assert_eq!(s.overwritten, vec!["b".to_string()]);
        assert_eq!(s.removed, vec!["gone".to_string()]);
        // "a" is held; "c" and "d" share one chunk, so it travels once.
        assert_eq!(p.needed, vec![ContentHash([2; 32]), ContentHash([3; 32])]);
        assert_eq!((s.transfer_chunks, s.transfer_bytes), (2, 50));
        assert_eq!(s.reused_bytes, 40);

        let sib = plan(
            &src,
            DestinationState::Exists,
            old.entries.iter().cloned().map(Ok),
            &idx,
            ConflictPolicy::Sibling,
        )
        .unwrap();
        assert!(sib.summary.overwritten.is_empty() && sib.summary.removed.is_empty());
    }
}
