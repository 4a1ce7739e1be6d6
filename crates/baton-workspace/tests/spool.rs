//! A scan kept on disk: the same manifest as one kept in memory, read back part by part; a
//! rescan reuses its hashes; a change and a digest computed from disk match those computed in
//! memory.

mod common;

use std::sync::Arc;

use baton_workspace::{
    IgnoredFiles, ManifestChange, ManifestDigest, Previous, SpoolWriter, SpooledScan, diff,
    diff_entries, digest, prepare_scan, scan,
};
use common::{noise, opts, rich_tree, write};

/// Many small files and a few that make several chunks, so that a small part cost cuts the
/// scan into many parts.
fn tree(root: &std::path::Path) {
    rich_tree(root);
    for d in 0..5 {
        for f in 0..30 {
            let n = (d * 30 + f) as u64;
            let len = if f % 10 == 0 {
                150 * 1024
            } else {
                500 + f * 31
            };
            write(root, &format!("many/d{d}/f{f:02}.bin"), &noise(n, len));
        }
    }
}

fn spooled(root: &std::path::Path, spool_dir: &std::path::Path) -> (SpooledScan, usize) {
    let o = opts(IgnoredFiles::Skip);
    let prepared = prepare_scan(root, &o, None).unwrap();
    let writer =
        SpoolWriter::create(spool_dir, &std::fs::canonicalize(root).unwrap(), o.params).unwrap();
    let mut parts = 0;
    let mut numbers = Vec::new();
    let s = prepared
        .run_spooled(&o, 64 * 1024, writer, |part| {
            parts += 1;
            numbers.extend(part.number);
            if !part.last {
                assert!(part.scanned.manifest.skipped.is_empty());
            }
            true
        })
        .unwrap()
        .expect("ran to the end");
    assert_eq!(numbers, (0..numbers.len()).collect::<Vec<_>>());
    assert_eq!(s.reader().parts(), numbers.len());
    (s, parts)
}

#[test]
fn a_spooled_scan_is_the_scan_in_memory_read_back_part_by_part() {
    let src = tempfile::tempdir().unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    tree(src.path());
    let whole = scan(src.path(), &opts(IgnoredFiles::Skip), None).unwrap();
    let (s, parts) = spooled(src.path(), spool_dir.path());
    assert!(
        parts > 3,
        "a small part cost cuts the tree into parts: {parts}"
    );
    assert_eq!(s.entries(), whole.manifest.entries.len());
    assert_eq!(s.head().skipped, whole.manifest.skipped);
    assert!(!s.head().skipped.is_empty(), "the rich tree skips a link");
    let back = s.load().unwrap();
    assert_eq!(back.manifest, whole.manifest);
    let streamed: Vec<_> = s.iter().map(Result::unwrap).collect();
    assert_eq!(streamed, whole.manifest.entries);
    assert_eq!(s.stats().hashed_files, whole.manifest.file_count());
    // Every path is found in the part whose range holds it, and only there.
    for (i, e) in whole.manifest.entries.iter().enumerate().step_by(7) {
        let p = s.reader().part_holding(&e.path).expect("held");
        let part = s.reader().part(p).unwrap();
        assert!(
            part.manifest.entries.iter().any(|x| x.path == e.path),
            "entry {i} ({}) is in part {p}",
            e.path
        );
    }
    assert_eq!(s.reader().part_holding("zzzz-after-everything"), None);
    // The file is unlinked: nothing is left in the spool directory.
    assert_eq!(std::fs::read_dir(spool_dir.path()).unwrap().count(), 0);
    // A scan held in memory spools to the same entries.
    let again = SpooledScan::of_scanned(&whole, spool_dir.path()).unwrap();
    assert_eq!(again.load().unwrap().manifest, whole.manifest);
}

#[test]
fn a_rescan_reuses_the_hashes_of_a_spooled_scan_and_rehashes_what_changed() {
    let src = tempfile::tempdir().unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    tree(src.path());
    // Out of the racy window: a file read less than 2 s after its change is hashed again.
    let racy = std::time::Duration::from_millis(2100);
    std::thread::sleep(racy);
    let (first, _) = spooled(src.path(), spool_dir.path());
    write(src.path(), "many/d3/f05.bin", b"edited");
    std::thread::sleep(racy);
    let o = opts(IgnoredFiles::Skip);
    let again = prepare_scan(src.path(), &o, Some(Previous::Spooled(Arc::new(first))))
        .unwrap()
        .run(&o, 64 * 1024, |_| true)
        .unwrap()
        .unwrap();
    let fresh = scan(src.path(), &o, None).unwrap();
    assert_eq!(again.manifest, fresh.manifest);
    assert_eq!(again.stats().hashed_files, 1, "{:?}", again.stats());
    assert_eq!(again.stats().reused_files, fresh.manifest.file_count() - 1);
}

#[test]
fn a_change_and_a_digest_from_disk_match_those_in_memory() {
    let src = tempfile::tempdir().unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    tree(src.path());
    let o = opts(IgnoredFiles::Skip);
    let before = scan(src.path(), &o, None).unwrap();
    write(src.path(), "many/d1/f07.bin", b"changed");
    write(src.path(), "many/d4/new.bin", b"added");
    std::fs::remove_file(src.path().join("many/d0/f03.bin")).unwrap();
    let after = scan(src.path(), &o, None).unwrap();
    let (b, a) = (
        SpooledScan::of_scanned(&before, spool_dir.path()).unwrap(),
        SpooledScan::of_scanned(&after, spool_dir.path()).unwrap(),
    );
    let mut from_disk = ManifestChange::default();
    diff_entries(b.iter(), a.iter(), |c| {
        from_disk.push(c);
        Ok(())
    })
    .unwrap();
    let change = diff(&before.manifest, &after.manifest);
    assert_eq!(from_disk.changed, change.changed);
    assert_eq!(from_disk.removed, change.removed);
    assert_eq!(from_disk.removed, ["many/d0/f03.bin"]);
    let paths: Vec<_> = from_disk.changed.iter().map(|e| e.path.as_str()).collect();
    // The directories' mtimes changed with their contents.
    assert!(paths.contains(&"many/d1/f07.bin") && paths.contains(&"many/d4/new.bin"));

    let h = a.head();
    let mut d = ManifestDigest::new(
        h.version,
        &h.params,
        (h.root_mode, h.root_mtime_ns),
        a.entries(),
    );
    for e in a.iter() {
        d.entry(&e.unwrap());
    }
    assert_eq!(d.finish(&h.skipped), digest(&after.manifest));
    assert_ne!(digest(&before.manifest), digest(&after.manifest));
}

#[test]
fn a_walk_spilled_to_disk_selects_what_a_walk_in_memory_selects() {
    let src = tempfile::tempdir().unwrap();
    let spill = tempfile::tempdir().unwrap();
    tree(src.path());
    // A nested repository: its .git travels whole, as the root's does.
    write(src.path(), "many/d2/.git/HEAD", b"ref: refs/heads/main\n");
    write(src.path(), "many/d2/.git/objects/ab/cdef", b"object");
    for ignored in [
        IgnoredFiles::Skip,
        IgnoredFiles::Include,
        IgnoredFiles::Globs(vec![".env".into(), "node_modules".into()]),
    ] {
        let in_memory = scan(src.path(), &opts(ignored.clone()), None).unwrap();
        let o = baton_workspace::ScanOptions {
            spill_dir: Some(spill.path().to_path_buf()),
            spill_after: Some(9),
            ..opts(ignored.clone())
        };
        let spilled = scan(src.path(), &o, None).unwrap();
        assert_eq!(spilled.manifest, in_memory.manifest, "{ignored:?}");
        assert!(
            spilled
                .manifest
                .entries
                .iter()
                .any(|e| e.path == "many/d2/.git/objects/ab/cdef"),
            "{ignored:?}"
        );
        assert!(in_memory.manifest.entries.len() > 9 * 10);
        assert_eq!(std::fs::read_dir(spill.path()).unwrap().count(), 0);
    }
}
