//! Delta transfer: only chunks the target lacks travel; content-defined cuts survive insertions;
//! a rescan of an unchanged tree reads nothing.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use baton_workspace::{
    ChunkIndex, ConflictPolicy, DestinationState, IgnoredFiles, Limits, SpooledIndex, SpooledScan,
    Stager, plan, scan,
};
use common::*;

fn small_tree(root: &Path, n: usize) {
    for i in 0..n {
        let len = 100 + (i * 97) % 12_000;
        write(
            root,
            &format!("d{}/f{i}.txt", i % 10),
            &noise(i as u64 + 10, len),
        );
    }
}

/// The destination's scan and index, as the target builds them before a transfer.
fn target_view(dest: &Path) -> (baton_workspace::Scanned, ChunkIndex) {
    let s = scan(dest, &opts(IgnoredFiles::Include), None).unwrap();
    let idx = ChunkIndex::from_scan(&s);
    (s, idx)
}

#[test]
fn one_small_edit_needs_one_chunk() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    small_tree(&src, 200);
    transfer(&src, &dest, "d1", ConflictPolicy::Sibling);

    write(&src, "d3/f13.txt", b"edited\n");
    let s2 = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let (existing, idx) = target_view(&dest);
    let p = plan(
        &s2.manifest,
        DestinationState::Exists,
        existing.manifest.entries.iter().cloned().map(Ok),
        &idx,
        ConflictPolicy::Replace,
    )
    .unwrap();
    assert!(p.needed.len() <= 2, "{} chunks needed", p.needed.len());
    assert_eq!(p.summary.change_files, 1);
    assert_eq!(p.summary.unchanged_files, 199);
    assert_eq!(p.summary.overwritten, vec!["d3/f13.txt".to_string()]);
    assert_eq!(p.summary.transfer_bytes, 7);

    // The same plan from the destination's scan kept on disk, and its index read from there.
    let spool_dir = tempfile::tempdir().unwrap();
    let spooled = SpooledScan::of_scanned(&existing, spool_dir.path()).unwrap();
    let spooled_idx = SpooledIndex::of_scan(&spooled).unwrap();
    let from_disk = plan(
        &s2.manifest,
        DestinationState::Exists,
        spooled.iter(),
        &spooled_idx,
        ConflictPolicy::Replace,
    )
    .unwrap();
    assert_eq!(from_disk, p);

    // The stager agrees once it has copied what the destination holds, from either index.
    let mut st = Stager::create(&dest, "d2", s2.manifest.clone(), &Limits::default()).unwrap();
    let filled = st.fill_from_index(&idx).unwrap();
    assert_eq!(filled.chunks, 199);
    assert_eq!(st.missing(), p.needed);
    st.abort().unwrap();
    let mut st = Stager::create(&dest, "d2", s2.manifest.clone(), &Limits::default()).unwrap();
    let filled = st.fill_from_index(&spooled_idx).unwrap();
    assert_eq!(filled.chunks, 199);
    assert_eq!(st.missing(), p.needed);
    st.put_chunk(&p.needed[0], b"edited\n").unwrap();
    let landed = st
        .finish(2)
        .unwrap()
        .apply(ConflictPolicy::Replace)
        .unwrap()
        .commit()
        .unwrap();
    assert_same(&listing(&src), &listing(&landed));
}

#[test]
fn insertion_at_the_start_reuses_most_chunks() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let data = noise(42, 2 * 1024 * 1024);
    write(&src, "big.bin", &data);
    transfer(&src, &dest, "i1", ConflictPolicy::Sibling);

    let mut shifted = b"a few new bytes at the very start".to_vec();
    shifted.extend_from_slice(&data);
    write(&src, "big.bin", &shifted);
    let s2 = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let chunks = s2
        .manifest
        .get("big.bin")
        .unwrap()
        .file()
        .unwrap()
        .chunks
        .len();
    let (existing, idx) = target_view(&dest);
    let p = plan(
        &s2.manifest,
        DestinationState::Exists,
        existing.manifest.entries.iter().cloned().map(Ok),
        &idx,
        ConflictPolicy::Replace,
    )
    .unwrap();
    assert!(chunks >= 16, "{chunks} chunks");
    assert!(
        p.needed.len() <= 2,
        "{} of {chunks} chunks needed",
        p.needed.len()
    );
    assert!(
        p.summary.reused_bytes * 10 >= p.summary.bytes * 9,
        "{:?}",
        p.summary
    );
}

#[test]
fn rescan_of_an_unchanged_tree_reads_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    small_tree(&src, 50);
    write(&src, "big.bin", &noise(5, 700_000));
    // Files changed within two seconds of being read are hashed again ("racily clean").
    std::thread::sleep(Duration::from_millis(2200));
    let o = opts(IgnoredFiles::Skip);
    let first = scan(&src, &o, None).unwrap();
    assert_eq!(first.stats().hashed_files, 51);
    let second = scan(&src, &o, Some(&first)).unwrap();
    assert_eq!(second.stats().hashed_files, 0);
    assert_eq!(second.stats().reused_files, 51);
    assert_eq!(second.manifest, first.manifest);

    // Same size, mtime put back: the change time still tells.
    let p = src.join("d0/f0.txt");
    let before = fs::read(&p).unwrap();
    let md = fs::symlink_metadata(&p).unwrap();
    let mut after = before.clone();
    after[0] ^= 0xff;
    fs::write(&p, &after).unwrap();
    use std::os::unix::fs::MetadataExt;
    set_mtime(&src, "d0/f0.txt", md.mtime(), md.mtime_nsec());
    let third = scan(&src, &o, Some(&second)).unwrap();
    assert_eq!(third.stats().hashed_files, 1);
    assert_eq!(
        third
            .manifest
            .get("d0/f0.txt")
            .unwrap()
            .file()
            .unwrap()
            .hash
            .0,
        *blake3::hash(&after).as_bytes()
    );

    // Another root or other chunk parameters: nothing is reused.
    let copy = t.path().join("copy");
    fs::rename(&src, &copy).unwrap();
    let moved = scan(&copy, &o, Some(&third)).unwrap();
    assert_eq!(moved.stats().reused_files, 0);
}

#[test]
fn files_read_right_after_a_change_are_hashed_again() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src, "fresh.txt", b"just written");
    let o = opts(IgnoredFiles::Skip);
    let first = scan(&src, &o, None).unwrap();
    let second = scan(&src, &o, Some(&first)).unwrap();
    assert_eq!(second.stats().hashed_files, 1);
    assert_eq!(second.stats().reused_files, 0);
}
