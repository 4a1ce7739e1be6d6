//! Handing a tree back into a destination that holds most of it, with `replace`: the staging
//! links the destination's unchanged files instead of copying them, never changes a linked
//! inode, and an abort leaves the destination exactly as it was, metadata included.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use baton_workspace::{
    ChunkIndex, ConflictPolicy, IgnoredFiles, Limits, Scanned, Stager, diff, digest, scan,
};
use common::*;

/// A source tree and its scan, and a destination holding the same tree (modes and mtimes
/// kept) but for `edited.txt`, scanned as the target scans a destination.
fn setup(src: &Path, dest: &Path) -> (Scanned, ChunkIndex) {
    for i in 0..40 {
        write(
            src,
            &format!("d{}/f{i}.txt", i % 4),
            &noise(i, 300 + i as usize * 17),
        );
    }
    write(src, "big.bin", &noise(7, 1_500_000));
    write(src, "tool.sh", b"#!/bin/sh\necho hi\n");
    chmod(src, "tool.sh", 0o755);
    write(src, "edited.txt", b"the version on the destination");
    write(src, "empty", b"");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dest)
        .status()
        .unwrap();
    assert!(status.success());
    write(src, "edited.txt", b"edited on the source since");
    set_mtime(src, "edited.txt", 1_700_000_000, 5);
    // Scans prove a file unchanged only when its ctime is older than the read by 2 s.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let s = scan(src, &opts(IgnoredFiles::Skip), None).unwrap();
    let d = scan(dest, &opts(IgnoredFiles::Include), None).unwrap();
    (s, ChunkIndex::from_scan(&d))
}

fn inodes(root: &Path) -> BTreeMap<String, (u64, u64)> {
    listing(root)
        .into_iter()
        .filter(|(_, n)| n.kind == 'f')
        .map(|(k, _)| {
            let md = fs::symlink_metadata(root.join(&k)).unwrap();
            (k, (md.ino(), md.nlink()))
        })
        .collect()
}

/// Finishes `st`, puts it in place of `dest` and checks `dest` is now exactly `src`.
fn land_replacing(st: Stager, src: &Path, dest: &Path) {
    st.finish(2)
        .unwrap()
        .apply(ConflictPolicy::Replace)
        .unwrap()
        .commit()
        .unwrap();
    assert_same(&listing(src), &listing(dest));
}

fn fetch_missing(st: &mut Stager, src: &Scanned) -> usize {
    let source = ChunkIndex::from_scan(src);
    let missing = st.missing();
    for h in &missing {
        st.put_chunk(h, &source.read(h).unwrap()).unwrap();
    }
    missing.len()
}

#[test]
fn unchanged_files_are_linked_and_the_replaced_tree_keeps_their_inodes() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let (s, index) = setup(&src, &dest);
    let before = inodes(&dest);
    let mut st = Stager::create(&dest, "back", s.manifest.clone(), &Limits::default()).unwrap();
    let linked = st.link_from_index(&index, &dest).unwrap();
    let files_with_data = s
        .manifest
        .entries
        .iter()
        .filter(|e| e.file().is_some_and(|f| f.size > 0))
        .count();
    // All but the edited file (and the empty one, which has no chunks).
    let big = s.manifest.get("big.bin").unwrap().file().unwrap();
    assert!(big.chunks.len() > 1, "the big file is several chunks");
    let expected_bytes: u64 = s
        .manifest
        .entries
        .iter()
        .filter(|e| e.path != "edited.txt")
        .filter_map(|e| e.file())
        .map(|f| f.size)
        .sum();
    assert_eq!(linked.bytes, expected_bytes);
    let after_link = inodes(&dest);
    let shared = after_link.values().filter(|(_, n)| *n == 2).count();
    assert_eq!(
        shared,
        files_with_data - 1,
        "every unchanged file with data is linked once"
    );
    // Nothing left to copy from the destination, and only the edit travels.
    assert_eq!(st.fill_from_index(&index).unwrap().chunks, 0);
    let edited = s.manifest.get("edited.txt").unwrap().file().unwrap();
    assert_eq!(st.missing().len(), edited.chunks.len());
    assert_eq!(fetch_missing(&mut st, &s), 1);
    let landed = st
        .finish(2)
        .unwrap()
        .apply(ConflictPolicy::Replace)
        .unwrap()
        .commit()
        .unwrap();
    assert_eq!(landed, dest);
    assert_same(&listing(&src), &listing(&dest));
    let now = inodes(&dest);
    for (path, (ino, nlink)) in &now {
        assert_eq!(*nlink, 1, "{path} has one tree again");
        if path != "edited.txt" && path != "empty" {
            assert_eq!(*ino, before[path].0, "{path} kept its inode");
        }
    }
    assert_ne!(now["edited.txt"].0, before["edited.txt"].0);
}

#[test]
fn an_abort_while_staging_leaves_the_linked_destination_exactly_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let (s, index) = setup(&src, &dest);
    let before = listing(&dest);
    let before_inodes = inodes(&dest);
    let mut st = Stager::create(&dest, "a1", s.manifest.clone(), &Limits::default()).unwrap();
    assert!(st.link_from_index(&index, &dest).unwrap().bytes > 0);
    st.abort().unwrap();
    assert_same(&before, &listing(&dest));
    assert_eq!(before_inodes, inodes(&dest));
}

#[test]
fn a_rollback_after_apply_puts_the_linked_destination_back_exactly() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let (s, index) = setup(&src, &dest);
    let before = listing(&dest);
    let before_inodes = inodes(&dest);
    let mut st = Stager::create(&dest, "a2", s.manifest.clone(), &Limits::default()).unwrap();
    assert!(st.link_from_index(&index, &dest).unwrap().bytes > 0);
    fetch_missing(&mut st, &s);
    let applied = st
        .finish(2)
        .unwrap()
        .apply(ConflictPolicy::Replace)
        .unwrap();
    assert_same(&listing(&src), &listing(&dest));
    applied.rollback().unwrap();
    assert_same(&before, &listing(&dest));
    assert_eq!(before_inodes, inodes(&dest));
}

#[test]
fn files_that_differ_in_any_way_are_not_linked() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let (s, _) = setup(&src, &dest);
    chmod(&dest, "d0/f0.txt", 0o600);
    set_mtime(&dest, "d1/f1.txt", 1_600_000_000, 0);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let index = ChunkIndex::from_scan(&scan(&dest, &opts(IgnoredFiles::Include), None).unwrap());
    // Changed after the scan: same bytes written again, mtime put back, so only the ctime tells.
    let f2 = fs::read(dest.join("d2/f2.txt")).unwrap();
    let md = fs::metadata(dest.join("d2/f2.txt")).unwrap();
    fs::write(dest.join("d2/f2.txt"), &f2).unwrap();
    set_mtime(&dest, "d2/f2.txt", md.mtime(), md.mtime_nsec());

    let mut st = Stager::create(&dest, "x", s.manifest.clone(), &Limits::default()).unwrap();
    // Linking only under the given destination: nothing under another root.
    assert_eq!(
        st.link_from_index(&index, &t.path().join("elsewhere"))
            .unwrap()
            .bytes,
        0
    );
    st.link_from_index(&index, &dest).unwrap();
    let now = inodes(&dest);
    for p in ["d0/f0.txt", "d1/f1.txt", "d2/f2.txt", "edited.txt"] {
        assert_eq!(now[p].1, 1, "{p} is not linked");
    }
    assert_eq!(now["d3/f3.txt"].1, 2, "an unchanged file is");
    // The rest comes from copies and the source, and lands right.
    st.fill_from_index(&index).unwrap();
    fetch_missing(&mut st, &s);
    land_replacing(st, &src, &dest);
}

#[test]
fn a_later_pass_changing_a_linked_files_mode_gives_it_its_own_inode() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let (s, index) = setup(&src, &dest);
    let before = listing(&dest);
    let mut st = Stager::create(&dest, "m", s.manifest.clone(), &Limits::default()).unwrap();
    st.link_from_index(&index, &dest).unwrap();
    fetch_missing(&mut st, &s);
    // The session chmods and touches two files during the pre-copy.
    chmod(&src, "tool.sh", 0o700);
    set_mtime(&src, "d0/f4.txt", 1_650_000_000, 9);
    let s2 = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let change = diff(&s.manifest, &s2.manifest);
    st.apply_change(
        change,
        (s2.manifest.root_mode, s2.manifest.root_mtime_ns),
        s2.manifest.skipped.clone(),
        &digest(&s2.manifest),
        &Limits::default(),
    )
    .unwrap();
    // The destination's files are untouched by the staging's chmod and utime.
    let now = listing(&dest);
    assert_eq!(now["tool.sh"], before["tool.sh"]);
    assert_eq!(now["d0/f4.txt"], before["d0/f4.txt"]);
    assert_eq!(fs::metadata(dest.join("tool.sh")).unwrap().nlink(), 1);
    assert!(st.missing().is_empty());
    land_replacing(st, &src, &dest);
}

#[test]
fn a_resumed_staging_drops_its_links_before_writing_anything() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let (s, index) = setup(&src, &dest);
    let before = listing(&dest);
    let mut st = Stager::create(&dest, "r", s.manifest.clone(), &Limits::default()).unwrap();
    st.link_from_index(&index, &dest).unwrap();
    // The daemon stops here without a word: the stager is dropped, the staging stays.
    drop(st);
    let mut st = Stager::create(&dest, "r", s.manifest.clone(), &Limits::default()).unwrap();
    for (path, (_, nlink)) in inodes(&dest) {
        assert_eq!(
            nlink, 1,
            "{path}: the resumed staging holds no link into the destination"
        );
    }
    st.fill_from_index(&index).unwrap();
    fetch_missing(&mut st, &s);
    assert_same(&before, &listing(&dest));
    land_replacing(st, &src, &dest);
}

#[test]
fn a_linked_file_whose_chunk_is_written_again_by_an_update_gets_its_own_inode_first() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let (_, _) = setup(&src, &dest);
    // Two files with the same bytes: the destination holds the first (as it was), not the
    // second, so their one chunk is only partly written once the first is linked.
    let same = noise(99, 5000);
    write(&src, "dup/one.txt", &same);
    write(&src, "dup/two.txt", &same);
    write(&dest, "dup/one.txt", &same);
    let md = fs::metadata(src.join("dup/one.txt")).unwrap();
    set_mtime(&dest, "dup/one.txt", md.mtime(), md.mtime_nsec());
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let index = ChunkIndex::from_scan(&scan(&dest, &opts(IgnoredFiles::Include), None).unwrap());
    let before = listing(&dest);
    let mut st = Stager::create(&dest, "u", s.manifest.clone(), &Limits::default()).unwrap();
    st.link_from_index(&index, &dest).unwrap();
    assert_eq!(fs::metadata(dest.join("dup/one.txt")).unwrap().nlink(), 2);
    // The whole final manifest, with one more file: `update` writes the shared chunk into
    // every place it counts as not written, the linked file's included.
    write(&src, "late.txt", b"added during the pre-copy");
    let s2 = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    st.update(s2.manifest.clone(), &Limits::default()).unwrap();
    assert_eq!(
        fs::metadata(dest.join("dup/one.txt")).unwrap().nlink(),
        1,
        "the staged copy no longer shares the destination's inode"
    );
    st.fill_from_index(&index).unwrap();
    fetch_missing(&mut st, &s2);
    assert_same(&before, &listing(&dest));
    land_replacing(st, &src, &dest);
}

#[test]
fn a_destination_file_edited_in_place_after_it_was_linked_is_refused_at_finish() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let (s, index) = setup(&src, &dest);
    let mut st = Stager::create(&dest, "e", s.manifest.clone(), &Limits::default()).unwrap();
    st.link_from_index(&index, &dest).unwrap();
    fetch_missing(&mut st, &s);
    // Someone works in the tree being replaced, in place, during the handoff.
    let p = dest.join("d3/f3.txt");
    let mut bytes = fs::read(&p).unwrap();
    bytes[0] ^= 1;
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .unwrap();
    let edited = listing(&dest);
    match st.finish(2) {
        Err(baton_workspace::Error::VerifyFailed { path, reason }) => {
            assert_eq!(path, "d3/f3.txt");
            assert!(reason.contains("changed in the destination"), "{reason}");
            assert!(
                !reason.contains("  "),
                "one line of plain words: {reason:?}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The refused staging is removed by the caller's abort; the edit stays where it was made.
    let staging = baton_workspace::staging_dir(&dest, "e").unwrap();
    fs::remove_dir_all(&staging).unwrap();
    assert_same(&edited, &listing(&dest));
}
