//! Checks that a destination holds exactly the selection: every path, kind, permission bits,
//! file size and BLAKE3, symlink target and file mtime (to the second: GNU tar's default format
//! keeps whole seconds), and nothing else.

use std::path::Path;

use anyhow::{Context, Result, bail};
use baton_proto::workspace::{EntryKind, WorkspaceEntry};
use baton_workspace::{IgnoredFiles, ScanOptions, WorkspaceManifest, scan};

/// Scans `root` with the selection rules of a handoff (`--ignored skip`).
pub fn scan_selection(root: &Path) -> Result<WorkspaceManifest> {
    let opts = ScanOptions {
        ignored: IgnoredFiles::Skip,
        ..ScanOptions::default()
    };
    Ok(scan(root, &opts, None)
        .with_context(|| format!("scanning {}", root.display()))?
        .manifest)
}

/// Scans everything under `root`, ignored files included.
fn scan_all(root: &Path, like: &WorkspaceManifest) -> Result<WorkspaceManifest> {
    let opts = ScanOptions {
        ignored: IgnoredFiles::Include,
        params: like.params,
        ..ScanOptions::default()
    };
    Ok(scan(root, &opts, None)
        .with_context(|| format!("scanning {}", root.display()))?
        .manifest)
}

/// How an entry compares: kind and content, mode, and for files the mtime in whole seconds.
fn key(e: &WorkspaceEntry) -> (String, String, u32, Option<i64>) {
    let (kind, mtime) = match &e.kind {
        EntryKind::Dir => ("dir".to_string(), None),
        EntryKind::File(f) => (
            format!("file {} {}", f.size, f.hash.to_hex()),
            Some(e.mtime_ns.div_euclid(1_000_000_000)),
        ),
        EntryKind::Symlink { target } => (format!("symlink {target}"), None),
    };
    (e.path.clone(), kind, e.mode, mtime)
}

/// Fails unless `dest` holds exactly what `expected` lists (see the module's doc).
pub fn same_tree(expected: &WorkspaceManifest, dest: &Path, what: &str) -> Result<()> {
    let got = scan_all(dest, expected)?;
    let want: Vec<_> = expected.entries.iter().map(key).collect();
    let have: Vec<_> = got.entries.iter().map(key).collect();
    if want == have {
        return Ok(());
    }
    let mut diffs = Vec::new();
    let (mut i, mut j) = (0, 0);
    while (i < want.len() || j < have.len()) && diffs.len() < 5 {
        match (want.get(i), have.get(j)) {
            (Some(w), Some(h)) if w.0 == h.0 => {
                if w != h {
                    diffs.push(format!("{}: expected {w:?}, found {h:?}", w.0));
                }
                i += 1;
                j += 1;
            }
            (Some(w), Some(h)) if w.0 < h.0 => {
                diffs.push(format!("{}: missing", w.0));
                i += 1;
            }
            (Some(w), None) => {
                diffs.push(format!("{}: missing", w.0));
                i += 1;
            }
            (_, Some(h)) => {
                diffs.push(format!("{}: not in the selection", h.0));
                j += 1;
            }
            (None, None) => break,
        }
    }
    bail!(
        "{what}: {} differs from the selection ({} entries expected, {} found); first differences: {}",
        dest.display(),
        want.len(),
        have.len(),
        diffs.join("; ")
    )
}
