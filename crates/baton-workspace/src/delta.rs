//! A later pass's manifest as a change to an earlier one's: the entries added or changed, and
//! the paths removed. The final pass runs while the session is stopped, and a tree of many files
//! would otherwise travel whole (tens of MB of manifest for 10⁵ files) although little changed.
//!
//! Both sides hold the base (the source its last scan, the target the manifest it staged), so
//! only the difference travels, with a digest of the whole result that the target checks after
//! applying it: a base that is not the one the source meant is refused, never guessed at.

use std::borrow::Cow;
use std::cmp::Ordering;

use baton_proto::workspace::{
    ChunkParams, ContentHash, EntryKind, SkippedEntry, WorkspaceEntry, WorkspaceManifest,
};

use crate::error::{Error, Result};

/// What changed from one manifest to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestChange {
    /// Entries of the new manifest that the base lacks or holds differently, sorted by path.
    pub changed: Vec<WorkspaceEntry>,
    /// Paths of the base that the new manifest lacks, sorted.
    pub removed: Vec<String>,
}

/// The entries of `new` that differ from `base`, and the paths `base` has and `new` lacks.
/// Both manifests are sorted by path, as every manifest is.
pub fn diff(base: &WorkspaceManifest, new: &WorkspaceManifest) -> ManifestChange {
    let mut change = ManifestChange::default();
    let ok = |e: &WorkspaceEntry| Ok::<_, Error>(e.clone());
    let merged = diff_entries(
        base.entries.iter().map(ok),
        new.entries.iter().map(ok),
        |c| {
            change.push(c);
            Ok(())
        },
    );
    // The inputs cannot fail, and neither can the callback.
    debug_assert!(merged.is_ok());
    change
}

impl ManifestChange {
    /// Adds one difference found by [`diff_entries`] (they come in path order).
    pub fn push(&mut self, c: Changed) {
        match c {
            Changed::Entry(e) => self.changed.push(e),
            Changed::Removed(p) => self.removed.push(p),
        }
    }
}

/// One difference found by [`diff_entries`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// An entry of the new tree that the base lacks or holds differently.
    Entry(WorkspaceEntry),
    /// A path of the base that the new tree lacks.
    Removed(String),
}

/// [`diff`] of two sorted streams of entries (read from disk, say), handing each difference to
/// `on` in path order as it is found: memory holds two entries, whatever the trees.
pub fn diff_entries(
    base: impl Iterator<Item = Result<WorkspaceEntry>>,
    new: impl Iterator<Item = Result<WorkspaceEntry>>,
    mut on: impl FnMut(Changed) -> Result<()>,
) -> Result<()> {
    let (mut b, mut n) = (base.peekable(), new.peekable());
    loop {
        let ord = match (b.peek(), n.peek()) {
            (None, None) => return Ok(()),
            (Some(Err(_)), _) => return b.next().map_or(Ok(()), |e| e.map(drop)),
            (_, Some(Err(_))) => return n.next().map_or(Ok(()), |e| e.map(drop)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(Ok(old)), Some(Ok(cur))) => old.path.cmp(&cur.path),
        };
        match ord {
            Ordering::Less => {
                if let Some(Ok(old)) = b.next() {
                    on(Changed::Removed(old.path))?;
                }
            }
            Ordering::Greater => {
                if let Some(Ok(cur)) = n.next() {
                    on(Changed::Entry(cur))?;
                }
            }
            Ordering::Equal => {
                if let (Some(Ok(old)), Some(Ok(cur))) = (b.next(), n.next())
                    && old != cur
                {
                    on(Changed::Entry(cur))?;
                }
            }
        }
    }
}

/// The manifest `base` becomes with `change` applied, and the root and skipped list of the new
/// scan. Refuses a change that does not fit the base (see [`check_change`]); the result still
/// has to pass [`validate`](crate::validate()) and its digest to be trusted.
pub fn patch(
    base: &WorkspaceManifest,
    change: ManifestChange,
    (root_mode, root_mtime_ns): (u32, i64),
    skipped: Vec<SkippedEntry>,
) -> Result<WorkspaceManifest> {
    let holds = |r: &str| base.get(r).is_some();
    check_change(holds, &change)?;
    let mut out = WorkspaceManifest::new(base.params);
    out.version = base.version;
    out.root_mode = root_mode;
    out.root_mtime_ns = root_mtime_ns;
    out.skipped = skipped;
    out.entries
        .reserve(base.entries.len() + change.changed.len());
    let base = base.entries.iter().map(Cow::Borrowed);
    out.entries
        .extend(merged(base, &change).map(Cow::into_owned));
    Ok(out)
}

/// Refuses a change that does not fit `base`: paths unsorted or repeated, a removal of a path
/// the base lacks, a path both removed and changed.
pub(crate) fn check_change(holds: impl Fn(&str) -> bool, change: &ManifestChange) -> Result<()> {
    sorted(change.removed.iter().map(String::as_str), "removed")?;
    sorted(change.changed.iter().map(|e| e.path.as_str()), "changed")?;
    let mut changed = change.changed.iter().map(|e| e.path.as_str()).peekable();
    for r in &change.removed {
        if !holds(r) {
            return Err(Error::manifest(
                r.as_str(),
                "the change removes a path the earlier pass did not hold",
            ));
        }
        while changed.next_if(|c| *c < r.as_str()).is_some() {}
        if changed.peek() == Some(&r.as_str()) {
            return Err(Error::manifest(
                r.as_str(),
                "the change both removes and changes this path",
            ));
        }
    }
    Ok(())
}

/// The entries of `base` with `change` applied, in path order (the change's borrowed): what
/// [`patch`] builds, without building it. `change` must have passed [`check_change`].
pub(crate) fn merged<'a>(
    base: impl Iterator<Item = Cow<'a, WorkspaceEntry>> + 'a,
    change: &'a ManifestChange,
) -> impl Iterator<Item = Cow<'a, WorkspaceEntry>> + 'a {
    let mut base = base.peekable();
    let mut changed = change.changed.iter().peekable();
    let mut removed = change.removed.iter().peekable();
    std::iter::from_fn(move || {
        loop {
            let next = match (base.peek(), changed.peek()) {
                (None, None) => return None,
                (Some(_), None) => base.next(),
                (None, Some(_)) => return changed.next().map(Cow::Borrowed),
                (Some(b), Some(c)) => match c.path.cmp(&b.path) {
                    Ordering::Less => return changed.next().map(Cow::Borrowed),
                    Ordering::Equal => {
                        base.next();
                        return changed.next().map(Cow::Borrowed);
                    }
                    Ordering::Greater => base.next(),
                },
            }?;
            if removed.next_if(|r| **r == next.path).is_none() {
                return Some(next);
            }
        }
    })
}

fn sorted<'a>(paths: impl Iterator<Item = &'a str>, what: &str) -> Result<()> {
    let mut prev: Option<&str> = None;
    for p in paths {
        if prev.is_some_and(|q| q >= p) {
            return Err(Error::manifest(
                p,
                format!("the {what} paths of a manifest change are not sorted or repeat"),
            ));
        }
        prev = Some(p);
    }
    Ok(())
}

/// BLAKE3 of a manifest's content in a fixed binary form: what the target compares after
/// rebuilding a manifest from a change (JSON would cost a serialisation of the whole tree).
pub fn digest(m: &WorkspaceManifest) -> ContentHash {
    digest_of(m, (m.root_mode, m.root_mtime_ns), &m.skipped)
}

/// [`digest`] of `m` with another root mode and mtime and another skipped list, without
/// building that manifest.
pub fn digest_of(m: &WorkspaceManifest, root: (u32, i64), skipped: &[SkippedEntry]) -> ContentHash {
    let mut d = ManifestDigest::new(m.version, &m.params, root, m.entries.len());
    for e in &m.entries {
        d.entry(e);
    }
    d.finish(skipped)
}

/// [`digest`] computed as the entries go by (from disk, say), in path order.
pub struct ManifestDigest {
    h: blake3::Hasher,
    // Small pieces are gathered so that BLAKE3 sees large inputs.
    buf: Vec<u8>,
}

impl ManifestDigest {
    /// A digest of a manifest with this version, parameters, root and number of entries.
    pub fn new(
        version: u32,
        params: &ChunkParams,
        (root_mode, root_mtime_ns): (u32, i64),
        entries: usize,
    ) -> Self {
        let mut d = ManifestDigest {
            h: blake3::Hasher::new(),
            buf: Vec::with_capacity(64 * 1024),
        };
        d.num(u64::from(version));
        // The parameters are a handful of fields, and JSON names them all.
        let params = serde_json::to_string(params).unwrap_or_default();
        d.text(&params);
        d.num(u64::from(root_mode));
        d.num(root_mtime_ns as u64);
        d.num(entries as u64);
        d
    }

    fn num(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn text(&mut self, s: &str) {
        self.num(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// The next entry.
    pub fn entry(&mut self, e: &WorkspaceEntry) {
        self.text(&e.path);
        self.num(u64::from(e.mode));
        self.num(e.mtime_ns as u64);
        match &e.kind {
            EntryKind::Dir => self.buf.push(0),
            EntryKind::File(f) => {
                self.buf.push(1);
                self.num(f.size);
                self.buf.extend_from_slice(&f.hash.0);
                self.num(f.chunks.len() as u64);
                for c in &f.chunks {
                    self.buf.extend_from_slice(&c.hash.0);
                    self.num(u64::from(c.len));
                }
            }
            EntryKind::Symlink { target } => {
                self.buf.push(2);
                self.text(target);
            }
        }
        if self.buf.len() >= 60 * 1024 {
            self.h.update(&self.buf);
            self.buf.clear();
        }
    }

    /// The digest, with the manifest's skipped list.
    pub fn finish(mut self, skipped: &[SkippedEntry]) -> ContentHash {
        self.num(skipped.len() as u64);
        for s in skipped {
            self.text(&s.path);
            self.text(s.reason.as_str());
        }
        self.h.update(&self.buf);
        ContentHash(*self.h.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::workspace::SkipReason;

    use crate::testutil::{dir_entry as dir, manifest_of as manifest};

    fn file(path: &str, byte: u8) -> WorkspaceEntry {
        crate::testutil::file_entry(path, byte, 5)
    }

    #[test]
    fn a_diff_patched_onto_its_base_gives_the_new_manifest() {
        let base = manifest(vec![
            dir("a"),
            file("a/x", 1),
            file("a/y", 2),
            dir("b"),
            file("b/z", 3),
            file("c", 4),
        ]);
        let mut new = manifest(vec![
            file("0", 9),
            dir("a"),
            file("a/x", 1),
            file("a/x2", 7),
            file("a/y", 8),
            file("c", 4),
            file("d", 5),
        ]);
        new.root_mode = 0o700;
        new.root_mtime_ns = 77;
        new.skipped = vec![SkippedEntry {
            path: "l".into(),
            reason: SkipReason::SymlinkOutside,
        }];
        let change = diff(&base, &new);
        let paths: Vec<&str> = change.changed.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["0", "a/x2", "a/y", "d"]);
        assert_eq!(change.removed, ["b", "b/z"]);
        let rebuilt = patch(&base, change, (0o700, 77), new.skipped.clone()).unwrap();
        assert_eq!(rebuilt, new);
        assert_eq!(digest(&rebuilt), digest(&new));
    }

    #[test]
    fn nothing_changed_is_an_empty_change() {
        let base = manifest(vec![dir("a"), file("a/x", 1)]);
        let change = diff(&base, &base.clone());
        assert_eq!(change, ManifestChange::default());
        assert_eq!(patch(&base, change, (0o755, 0), vec![]).unwrap(), base);
    }

    #[test]
    fn a_change_that_does_not_fit_its_base_is_refused() {
        let base = manifest(vec![dir("a"), file("a/x", 1)]);
        let cases = [
            (vec![], vec!["a/nope".to_string()], "did not hold"),
            (vec![], vec!["0".to_string()], "did not hold"),
            (
                vec![file("a/x", 2)],
                vec!["a/x".to_string()],
                "both removes",
            ),
            (vec![file("b", 2), file("b", 3)], vec![], "not sorted"),
            (vec![], vec!["a/x".into(), "a".into()], "not sorted"),
        ];
        for (changed, removed, why) in cases {
            let err = patch(
                &base,
                ManifestChange { changed, removed },
                (0o755, 0),
                vec![],
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn the_digest_sees_every_field() {
        let base = manifest(vec![dir("a"), file("a/x", 1)]);
        let d = digest(&base);
        let mut m = base.clone();
        m.entries[1].mtime_ns += 1;
        assert_ne!(digest(&m), d);
        let mut m = base.clone();
        m.entries[1].mode = 0o755;
        assert_ne!(digest(&m), d);
        let mut m = base.clone();
        m.root_mtime_ns = 9;
        assert_ne!(digest(&m), d);
        let mut m = base.clone();
        m.entries[1].path = "a/y".into();
        assert_ne!(digest(&m), d);
        let mut m = base.clone();
        m.skipped.push(SkippedEntry {
            path: "s".into(),
            reason: SkipReason::SpecialFile,
        });
        assert_ne!(digest(&m), d);
        // The same digest without building the manifest with another root and skipped list.
        m.root_mode = 0o700;
        m.root_mtime_ns = 5;
        assert_eq!(digest_of(&base, (0o700, 5), &m.skipped), digest(&m));
    }
}
