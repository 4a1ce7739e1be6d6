//! A rescan guided by a watch: it walks only where something changed since the previous scan,
//! takes the previous scan's paths elsewhere, and ends with the manifest a full scan makes.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use baton_workspace::{
    Changes, IgnoredFiles, ScanOptions, SpoolWriter, SpooledScan, TreeWatch, WorkspaceManifest,
    prepare_rescan, prepare_scan, scan,
};
use common::{chmod, noise, opts, rich_tree, set_mtime, write};

fn tree(root: &Path) {
    rich_tree(root);
    for d in 0..6 {
        for f in 0..8 {
            write(
                root,
                &format!("many/d{d}/f{f}.bin"),
                &noise((d * 8 + f) as u64, 700 + f * 13),
            );
        }
        write(root, &format!("many/d{d}/sub/leaf.txt"), b"leaf\n");
    }
}

fn spooled(root: &Path, o: &ScanOptions, spool_dir: &Path) -> SpooledScan {
    let prepared = prepare_scan(root, o, None).unwrap();
    let writer =
        SpoolWriter::create(spool_dir, &std::fs::canonicalize(root).unwrap(), o.params).unwrap();
    prepared
        .run_spooled(o, 4 * 1024, writer, |_| true)
        .unwrap()
        .expect("ran to the end")
}

/// The rescan's manifest, and how it went.
fn rescanned(
    root: &Path,
    o: &ScanOptions,
    previous: SpooledScan,
    changes: Changes,
) -> (WorkspaceManifest, baton_workspace::Rescan) {
    let (prepared, rescan) = prepare_rescan(root, o, Arc::new(previous), changes).unwrap();
    let scanned = prepared.run(o, 4 * 1024, |_| true).unwrap().expect("ran");
    (scanned.manifest, rescan)
}

/// A watch of `root`, and scan options whose walks add its directories to it.
fn started(
    root: &Path,
    barrier_dir: &Path,
    ignored: IgnoredFiles,
) -> (Arc<TreeWatch>, ScanOptions) {
    let watch =
        Arc::new(TreeWatch::start(&std::fs::canonicalize(root).unwrap(), barrier_dir).unwrap());
    let o = ScanOptions {
        watch: Some(watch.clone()),
        ..opts(ignored)
    };
    (watch, o)
}

/// A generated tree, and a directory for scans kept on disk.
fn fixture() -> (tempfile::TempDir, tempfile::TempDir) {
    let src = tempfile::tempdir().unwrap();
    tree(src.path());
    (src, tempfile::tempdir().unwrap())
}

#[test]
fn a_rescan_walking_only_what_changed_makes_the_full_scans_manifest() {
    let (src, spool_dir) = fixture();
    let root = src.path();
    // The barrier's directory is made when missing (a daemon's scans directory may not exist
    // yet when it first watches a tree).
    let (watch, o) = started(root, &spool_dir.path().join("not/yet"), IgnoredFiles::Skip);
    let previous = spooled(root, &o, spool_dir.path());

    // Every kind of change, each in a directory of its own; no sleep before the watch is asked:
    // its barrier is what makes the last of them count.
    write(root, "many/d0/f1.bin", &noise(900, 701));
    write(root, "fresh/deep/new.txt", b"born after the scan\n");
    std::fs::remove_file(root.join("many/d1/f2.bin")).unwrap();
    std::fs::rename(root.join("many/d2"), root.join("many/d2-moved")).unwrap();
    chmod(root, "many/d3/f0.bin", 0o700);
    set_mtime(root, "many/d4/sub/leaf.txt", 1_300_000_000, 1);
    symlink("../d0/f0.bin", root.join("many/d5/link")).unwrap();
    write(root, "node_modules/pkg/later.js", b"still ignored\n");
    write(root, ".git/objects/ab/cdef", b"a loose object\n");
    std::fs::remove_file(root.join("bin/escape")).unwrap();

    let changes = watch.take(Duration::from_secs(10));
    assert_eq!(changes.unsure, None, "{changes:?}");
    // Ignored directories are never watched.
    assert!(
        !changes.paths.iter().any(|p| p.starts_with("node_modules/")),
        "{changes:?}"
    );
    for p in [
        "many/d0/f1.bin",
        "fresh",
        "many/d1/f2.bin",
        "many/d2",
        "many/d2-moved",
        "many/d3/f0.bin",
        "many/d4/sub/leaf.txt",
        "many/d5/link",
        "bin/escape",
    ] {
        assert!(changes.paths.contains(p), "{p} missing from {changes:?}");
    }
    let (manifest, rescan) = rescanned(root, &o, previous, changes);
    let full = scan(root, &o, None).unwrap().manifest;
    assert_eq!(rescan.full_walk, None);
    // Untouched: data, empty, app, src, .git's own directories but objects, node_modules.
    assert!(rescan.pruned >= 5, "{rescan:?}");
    assert_eq!(manifest.entries, full.entries);
    assert_eq!(manifest.skipped, full.skipped);
    assert_eq!(manifest, full);
    assert!(manifest.get("fresh/deep/new.txt").is_some());
    assert!(manifest.get("many/d2-moved/sub/leaf.txt").is_some());
    assert!(manifest.get("many/d2/f0.bin").is_none());
    assert!(manifest.get("many/d1/f2.bin").is_none());
    assert!(manifest.get("node_modules/pkg/later.js").is_none());
    assert!(manifest.get(".git/objects/ab/cdef").is_some());

    // A second rescan counts from the first take: nothing changed, everything is pruned but
    // the root's listing, and the manifest stays the full scan's.
    let previous = spooled(root, &o, spool_dir.path());
    let changes = watch.take(Duration::from_secs(10));
    assert!(changes.paths.is_empty(), "{changes:?}");
    let (again, rescan) = rescanned(root, &o, previous, changes);
    assert_eq!(again, full);
    assert!(rescan.pruned >= 8, "{rescan:?}");
}

#[test]
fn a_changed_ignore_file_makes_the_rescan_walk_the_whole_tree() {
    let (src, spool_dir) = fixture();
    let root = src.path();
    let (watch, o) = started(root, spool_dir.path(), IgnoredFiles::Skip);
    let previous = spooled(root, &o, spool_dir.path());
    // Un-ignores `*.log` everywhere, and so `debug.log`, which did not change.
    write(root, ".gitignore", b"node_modules/\n.env\n");
    let changes = watch.take(Duration::from_secs(10));
    assert!(changes.needs_full_walk().is_some(), "{changes:?}");
    let (manifest, rescan) = rescanned(root, &o, previous, changes);
    assert!(
        rescan
            .full_walk
            .as_deref()
            .is_some_and(|w| w.contains(".gitignore")),
        "{rescan:?}"
    );
    assert_eq!(rescan.pruned, 0);
    assert!(manifest.get("debug.log").is_some());
    assert_eq!(manifest, scan(root, &o, None).unwrap().manifest);
}

#[test]
fn a_watch_that_cannot_vouch_walks_the_whole_tree() {
    let (src, spool_dir) = fixture();
    let root = src.path();
    let o = opts(IgnoredFiles::Include);
    let previous = spooled(root, &o, spool_dir.path());
    write(root, "data/later.bin", b"written with no watch\n");
    let (manifest, rescan) = rescanned(root, &o, previous, Changes::unsure("no watch was running"));
    assert_eq!(rescan.full_walk.as_deref(), Some("no watch was running"));
    assert!(manifest.get("data/later.bin").is_some());
    assert_eq!(manifest, scan(root, &o, None).unwrap().manifest);
}
