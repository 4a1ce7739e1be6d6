//! Validation of a manifest received from elsewhere. The target runs it before creating anything:
//! afterwards every path joins under the staging root without escaping it, and every file's
//! chunks account for exactly its bytes.

use baton_proto::workspace::{
    ChunkParams, EntryKind, MANIFEST_VERSION, SkippedEntry, WorkspaceEntry, WorkspaceManifest,
};

use crate::error::{Error, Result};

/// Longest relative path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// Longest single name accepted, in bytes (`NAME_MAX` on common filesystems).
pub const MAX_NAME_BYTES: usize = 255;

/// Caps on what one workspace transfer may hold; above them the transfer is refused with
/// `transfer_too_large`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most entries (files, directories, symlinks) in one manifest.
    pub max_entries: usize,
    /// Most bytes of file content in one manifest.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_total_bytes: 256 * 1024 * 1024 * 1024,
        }
    }
}

const WHOLE: &str = "(manifest)";

/// Checks a received manifest; the error names the offending path and the broken rule.
///
/// Refused: another version; chunk parameters this build cannot reproduce; more entries or bytes
/// than `limits`; paths that are empty, absolute, contain empty, `.` or `..` components or NUL,
/// or are too long; paths out of order or duplicated; entries whose parent is not a directory
/// listed before them (so nothing is reached through a symlink or a file); mode bits outside
/// `0o7777`; files whose chunks are empty, longer than `max_size`, shorter than `min_size` before
/// the last, or do not sum to the file's size; symlinks whose target is absolute or leaves the
/// tree.
pub fn validate(m: &WorkspaceManifest, limits: &Limits) -> Result<()> {
    validate_from(m, 0, limits)
}

/// [`validate`] of a manifest whose entries before `start` already passed it (a manifest
/// streamed in parts, checked as each part is appended): the new entries are checked against
/// everything before them, at a cost in proportion to the part. A parent is found by a binary
/// search of the sorted entries, so no map of the tree's paths is built.
pub fn validate_from(m: &WorkspaceManifest, start: usize, limits: &Limits) -> Result<()> {
    check_head(m, m.root_mode, &m.skipped, limits)?;
    check_count(m.entries.len(), limits)?;
    let start = start.min(m.entries.len());
    let (before, new) = m.entries.split_at(start);
    let total: u64 = before
        .iter()
        .filter_map(|e| e.file())
        .fold(0u64, |t, f| t.saturating_add(f.size));
    let prev = before.last().map(|e| e.path.as_str());
    let kind_before = |p: &str| {
        before
            .binary_search_by(|x| x.path.as_str().cmp(p))
            .ok()
            .map(|j| before[j].kind.clone())
    };
    check_appended(new, &m.params, (total, prev), kind_before, limits)
}

/// The checks of [`validate_from`] for `new`, the entries that follow others whose files hold
/// `total` bytes and whose last path is `prev`; `kind_before` finds the kind of the entry at a
/// path among those others (which passed already). The count and the head are the caller's.
pub(crate) fn check_appended(
    new: &[WorkspaceEntry],
    params: &ChunkParams,
    (mut total, mut prev): (u64, Option<&str>),
    kind_before: impl Fn(&str) -> Option<EntryKind>,
    limits: &Limits,
) -> Result<()> {
    // The last parent looked up among the entries before: siblings share it, and the lookup
    // reads entries that may be on disk.
    let mut before: Option<(&str, Option<EntryKind>)> = None;
    for (i, e) in new.iter().enumerate() {
        let path = e.path.as_str();
        check_path(path)?;
        if let Some(p) = prev {
            if p == path {
                return Err(Error::manifest(path, "duplicate path"));
            }
            if p > path {
                return Err(Error::manifest(
                    path,
                    format!("out of order (after {p}); entries must be sorted by path"),
                ));
            }
        }
        prev = Some(path);
        if let Some((parent, _)) = path.rsplit_once('/') {
            // Sorted order puts each parent before its children, among the entries so far.
            let here = &new[..i];
            let kind = match here.binary_search_by(|x| x.path.as_str().cmp(parent)) {
                Ok(j) => Some(here[j].kind.clone()),
                Err(_) => match &before {
                    Some((p, kind)) if *p == parent => kind.clone(),
                    _ => {
                        let kind = kind_before(parent);
                        before = Some((parent, kind.clone()));
                        kind
                    }
                },
            };
            check_parent(path, parent, kind.as_ref())?;
        }
        let size = check_entry(e, params)?;
        total = total.saturating_add(size);
        check_total(total, limits)?;
    }
    Ok(())
}

/// The checks of [`validate`] that concern the manifest as a whole rather than its entries:
/// version, chunk parameters, the root's mode and the skipped list, for a manifest of `m`'s
/// version and parameters with this root mode and skipped list.
pub(crate) fn check_head(
    m: &WorkspaceManifest,
    root_mode: u32,
    skipped: &[SkippedEntry],
    limits: &Limits,
) -> Result<()> {
    if m.version != MANIFEST_VERSION {
        return Err(Error::manifest(
            WHOLE,
            format!(
                "version {} is not the supported {MANIFEST_VERSION}",
                m.version
            ),
        ));
    }
    m.params
        .check()
        .map_err(|e| Error::manifest(WHOLE, format!("unknown chunk parameters: {e}")))?;
    if skipped.len() > limits.max_entries {
        return Err(Error::manifest(WHOLE, "too many skipped entries"));
    }
    if let Some(s) = skipped.iter().find(|s| s.path.len() > MAX_PATH_BYTES) {
        return Err(Error::manifest(
            format!("{}…", truncate(&s.path)),
            "skipped path is too long",
        ));
    }
    check_mode(WHOLE, root_mode)
}

/// Refuses more entries than `limits` allow.
pub(crate) fn check_count(entries: usize, limits: &Limits) -> Result<()> {
    if entries > limits.max_entries {
        return Err(Error::TooLarge(format!(
            "{entries} entries, the limit is {}",
            limits.max_entries
        )));
    }
    Ok(())
}

/// Refuses more bytes of files than `limits` allow.
pub(crate) fn check_total(total: u64, limits: &Limits) -> Result<()> {
    if total > limits.max_total_bytes {
        return Err(Error::TooLarge(format!(
            "more than {} bytes of files, the limit",
            limits.max_total_bytes
        )));
    }
    Ok(())
}

/// Refuses an entry at `path` whose parent `parent` is not a directory of the manifest
/// (`kind`: the parent's kind, `None` when the manifest lacks it): nothing is reached through a
/// file or a symlink.
pub(crate) fn check_parent(path: &str, parent: &str, kind: Option<&EntryKind>) -> Result<()> {
    match kind {
        Some(EntryKind::Dir) => Ok(()),
        Some(EntryKind::File(_)) => Err(Error::manifest(
            path,
            format!("is inside {parent}, which is a file"),
        )),
        Some(EntryKind::Symlink { .. }) => Err(Error::manifest(
            path,
            format!("goes through the symlink {parent}"),
        )),
        None => Err(Error::manifest(
            path,
            format!("its parent directory {parent} is not listed before it"),
        )),
    }
}

/// Refuses a path [`check_relative_path`] refuses, naming it (cut short when long).
pub(crate) fn check_path(path: &str) -> Result<()> {
    check_relative_path(path).map_err(|r| Error::manifest(truncate(path), r))
}

/// The checks of [`validate`] that concern one entry alone, its path aside: its mode, a
/// symlink's target and a file's chunks (not its place among the others). Returns the file's
/// size (0 for anything else).
pub(crate) fn check_entry(e: &WorkspaceEntry, params: &ChunkParams) -> Result<u64> {
    let path = e.path.as_str();
    let (min, max) = (params.min_size, params.max_size);
    check_mode(path, e.mode)?;
    match &e.kind {
        EntryKind::Dir => {}
        EntryKind::Symlink { target } => check_symlink(path, target)?,
        EntryKind::File(f) => {
            if f.size > 0 && f.chunks.is_empty() {
                return Err(Error::manifest(path, "non-empty file lists no chunks"));
            }
            let mut sum: u64 = 0;
            let last = f.chunks.len().saturating_sub(1);
            for (i, c) in f.chunks.iter().enumerate() {
                if c.len == 0 {
                    return Err(Error::manifest(path, format!("chunk {i} is empty")));
                }
                if c.len > max {
                    return Err(Error::manifest(
                        path,
                        format!("chunk {i} is {} bytes, above max_size {max}", c.len),
                    ));
                }
                if i < last && c.len < min {
                    return Err(Error::manifest(
                        path,
                        format!(
                            "chunk {i} is {} bytes, below min_size {min} and not the last",
                            c.len
                        ),
                    ));
                }
                sum += u64::from(c.len);
            }
            if sum != f.size {
                return Err(Error::manifest(
                    path,
                    format!(
                        "chunk lengths sum to {sum} bytes but the file is {} bytes",
                        f.size
                    ),
                ));
            }
            return Ok(f.size);
        }
    }
    Ok(0)
}

/// Checks a manifest path: relative, `/`-separated, no empty/`.`/`..` components, no NUL, within
/// [`MAX_PATH_BYTES`] and [`MAX_NAME_BYTES`]. Such a path joined under a directory stays under it.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("path longer than {MAX_PATH_BYTES} bytes"));
    }
    if path.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    for c in path.split('/') {
        match c {
            "" => return Err("empty path component (`//` or trailing `/`)".into()),
            "." => return Err("`.` component".into()),
            ".." => return Err("`..` component".into()),
            c if c.len() > MAX_NAME_BYTES => {
                return Err(format!("name longer than {MAX_NAME_BYTES} bytes"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// True when a relative symlink target, read from the link at `link_path`, stays inside the tree
/// without looking at the disk (`..` cannot climb above the root).
pub fn symlink_stays_inside(link_path: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return false;
    }
    let mut depth = link_path.split('/').count() - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

fn check_symlink(path: &str, target: &str) -> Result<()> {
    if target.is_empty() {
        return Err(Error::manifest(path, "symlink with an empty target"));
    }
    if target.len() > MAX_PATH_BYTES || target.contains('\0') {
        return Err(Error::manifest(
            path,
            "symlink target too long or has a NUL",
        ));
    }
    if target.starts_with('/') {
        return Err(Error::manifest(
            path,
            format!("symlink to the absolute path {target}"),
        ));
    }
    if !symlink_stays_inside(path, target) {
        return Err(Error::manifest(
            path,
            format!("symlink target {target} leaves the workspace"),
        ));
    }
    Ok(())
}

fn check_mode(path: &str, mode: u32) -> Result<()> {
    if mode & !0o7777 != 0 {
        return Err(Error::manifest(
            path,
            format!("mode {mode:o} has bits outside 0o7777"),
        ));
    }
    Ok(())
}

/// At most 200 bytes of a hostile path, cut on a character boundary, for error messages.
fn truncate(path: &str) -> String {
    let mut end = path.len().min(200);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{dir_entry as dir, file_entry as file, manifest_of};
    use baton_proto::workspace::WorkspaceEntry;

    #[test]
    fn a_tail_is_checked_against_every_entry_before_it() {
        let head = vec![
            dir("a"),
            file("a-b", 1, 3),
            dir("a/d"),
            file("a/f", 2, 3),
            dir("a/f-g"),
        ];
        let with = |tail: Vec<WorkspaceEntry>| {
            let mut all = head.clone();
            all.extend(tail);
            manifest_of(all)
        };
        let limits = Limits::default();
        // Parents listed parts ago, with siblings between (b'-' sorts before b'/').
        assert!(validate_from(&with(vec![file("a/f-g/x", 3, 3)]), 5, &limits).is_ok());
        assert!(validate_from(&with(vec![file("a/z", 3, 3)]), 5, &limits).is_ok());
        let cases = [
            (vec![file("a/f/x", 3, 3)], "which is a file"),
            (vec![file("a/g/x", 3, 3)], "not listed before it"),
            (vec![file("a/f-g", 3, 3)], "duplicate path"),
            (vec![file("a/e", 3, 3)], "out of order"),
        ];
        for (tail, why) in cases {
            let m = with(tail);
            let err = validate_from(&m, 5, &limits).expect_err(why).to_string();
            assert!(err.contains(why), "{err}");
            // The whole manifest is refused for the same reason.
            let whole = validate(&m, &limits).expect_err(why).to_string();
            assert_eq!(whole, err);
        }
        // The byte cap counts the entries before the tail too.
        let small = Limits {
            max_entries: 100,
            max_total_bytes: 8,
        };
        let err = validate_from(&with(vec![file("a/z", 3, 3)]), 5, &small).expect_err("cap");
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
    }

    #[test]
    fn symlink_depth_rules() {
        assert!(symlink_stays_inside("l", "a/b"));
        assert!(symlink_stays_inside("d/l", ".."));
        assert!(symlink_stays_inside("d/l", "../x/../y"));
        assert!(!symlink_stays_inside("l", ".."));
        assert!(!symlink_stays_inside("d/l", "../.."));
        assert!(!symlink_stays_inside("d/l", "a/../../../b"));
        assert!(!symlink_stays_inside("l", "/etc"));
        assert!(!symlink_stays_inside("l", ""));
    }

    #[test]
    fn relative_path_rules() {
        for ok in ["a", "a/b", ".env", "a/.git/x", "with space/ü", "a\\b"] {
            assert_eq!(check_relative_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "/a", "a//b", "a/", "./a", "a/./b", "..", "a/../b", "a\0b",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_relative_path(&"x".repeat(256)).is_err());
        assert!(check_relative_path(&["x"; 2100].join("/")).is_err());
    }
}
