//! A scan streamed in parts gives, part by part, valid prefixes of the same manifest a
//! one-part scan gives, and stops reading when asked.

mod common;

use std::sync::Arc;

use baton_workspace::{
    ConflictPolicy, IgnoredFiles, Limits, Scanned, prepare_scan, scan, validate,
};
use common::{noise, opts, rich_tree, stage_from, write};

fn tree(root: &std::path::Path) {
    for d in 0..6 {
        for f in 0..40 {
            let n = (d * 40 + f) as u64;
            // Some files of 200 KiB make several chunks and push parts past their cost.
            let len = if f % 10 == 0 {
                200 * 1024
            } else {
                3000 + f * 17
            };
            write(root, &format!("d{d}/sub/f{f:02}.txt"), &noise(n, len));
        }
    }
    write(root, "top.txt", b"top\n");
}

#[test]
fn parts_are_sorted_valid_prefixes_of_the_whole_scan() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let o = opts(IgnoredFiles::Skip);
    let whole = scan(dir.path(), &o, None).unwrap();

    let prepared = prepare_scan(dir.path(), &o, None).unwrap();
    assert_eq!(prepared.files(), whole.manifest.file_count());
    assert_eq!(prepared.bytes(), whole.manifest.total_bytes());
    let mut starts = Vec::new();
    let mut lasts = 0;
    let streamed = prepared
        .run(&o, 256 * 1024, |part| {
            let m = &part.scanned.manifest;
            assert_eq!(part.start, starts.last().map_or(0, |(_, end)| *end));
            assert!(part.start < m.entries.len() || part.last);
            validate(m, &Limits::default()).expect("every prefix is a valid manifest");
            assert_eq!(
                m.entries[..],
                whole.manifest.entries[..m.entries.len()],
                "a part extends the same sorted list"
            );
            let tail = part.scanned.tail(part.start);
            assert_eq!(tail.manifest.entries[..], m.entries[part.start..]);
            starts.push((part.start, m.entries.len()));
            lasts += usize::from(part.last);
            true
        })
        .unwrap()
        .expect("ran to the end");
    assert_eq!(lasts, 1);
    assert!(starts.len() >= 4, "several parts were made: {starts:?}");
    assert_eq!(streamed.manifest, whole.manifest);
}

#[test]
fn a_scan_stopped_after_its_first_part_reads_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let o = opts(IgnoredFiles::Skip);
    let prepared = prepare_scan(dir.path(), &o, None).unwrap();
    let total = prepared.files();
    let mut seen = 0;
    let out = prepared
        .run(&o, 64 * 1024, |part| {
            seen = part.scanned.manifest.file_count();
            false
        })
        .unwrap();
    assert!(out.is_none());
    assert!(
        seen > 0 && seen < total,
        "stopped after {seen} of {total} files"
    );
}

#[test]
fn a_shared_walk_scans_as_an_owned_one_and_stays_whole_for_its_holder() {
    use baton_workspace::{PreparedScan, walk};
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let o = opts(IgnoredFiles::Skip);
    let shared = Arc::new(walk(dir.path(), &o).unwrap());
    let entries = PreparedScan::from_shared_walk(Arc::clone(&shared), &o, None).entries();
    let mut parts = 0;
    // Parts of at most 8 KiB of reading: the shared walk is resumed part after part.
    let from_shared = PreparedScan::from_shared_walk(Arc::clone(&shared), &o, None)
        .run(&o, 8 * 1024, |_| {
            parts += 1;
            true
        })
        .unwrap()
        .unwrap();
    assert!(parts > 2, "{parts} parts");
    assert_eq!(Arc::strong_count(&shared), 1, "the scan let go of the walk");
    assert_eq!(shared.files(), 241);
    let owned = PreparedScan::from_walk(walk(dir.path(), &o).unwrap(), &o, None)
        .run(&o, u64::MAX, |_| true)
        .unwrap()
        .unwrap();
    assert_eq!(from_shared.manifest.entries.len(), entries);
    assert_eq!(from_shared.manifest, owned.manifest);
}

#[test]
fn a_scan_from_an_earlier_walk_reads_files_as_they_are_now_and_reuses_unchanged_hashes() {
    use baton_workspace::{PreparedScan, walk};
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let o = opts(IgnoredFiles::Skip);
    let walked = walk(dir.path(), &o).unwrap();
    assert_eq!(walked.files(), 241);
    // Past the racy window (a file changed within 2 s of being read is always read again).
    std::thread::sleep(std::time::Duration::from_millis(2100));

    // Changes after the walk: an edit, a removal, and a file the walk never saw.
    write(dir.path(), "d0/sub/f01.txt", b"edited after the walk\n");
    std::fs::remove_file(dir.path().join("d0/sub/f02.txt")).unwrap();
    write(dir.path(), "d9/new.txt", b"new\n");

    let scanned = PreparedScan::from_walk(walked.clone(), &o, None)
        .run(&o, u64::MAX, |_| true)
        .unwrap()
        .unwrap();
    let m = &scanned.manifest;
    let edited = m.get("d0/sub/f01.txt").unwrap().file().unwrap();
    assert_eq!(edited.size, 22, "read as it is now, not as the walk saw it");
    assert!(m.get("d0/sub/f02.txt").is_none());
    assert!(m.skipped.iter().any(|s| s.path == "d0/sub/f02.txt"));
    assert!(
        m.get("d9/new.txt").is_none(),
        "only a new walk sees new files"
    );
    validate(m, &Limits::default()).unwrap();

    // With the previous scan, only the file still inside the racy window is read again.
    let again = PreparedScan::from_walk(walked, &o, Some(Arc::new(scanned.clone()).into()))
        .run(&o, u64::MAX, |_| true)
        .unwrap()
        .unwrap();
    assert_eq!(again.stats().hashed_files, 1);
    assert_eq!(again.manifest.entries, scanned.manifest.entries);
}

/// A tree received and verified is remembered as a scan: scanning it later reuses the hashes of
/// the files unchanged since, and hashes the ones changed since (or too near the time it was
/// verified to tell).
#[test]
fn a_received_tree_is_scanned_again_without_hashing_what_did_not_change() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    rich_tree(&src);
    write(&src, "big.bin", &noise(21, 400_000));
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let landed = stage_from(&s, &dest, "rx", None)
        .apply(ConflictPolicy::Sibling)
        .unwrap()
        .commit()
        .unwrap();
    let at = std::fs::canonicalize(landed).unwrap();
    let files = s.manifest.file_count();

    // Verified long enough ago: every file is reused.
    let known = baton_workspace::now_ns() + 10_000_000_000;
    let received = Scanned::of_received(s.manifest.clone(), at.clone(), known);
    let again = scan(&at, &opts(IgnoredFiles::Skip), Some(&received)).unwrap();
    assert_eq!(again.manifest.entries, received.manifest.entries);
    assert_eq!(again.stats().hashed_files, 0, "{:?}", again.stats());
    assert_eq!(again.stats().reused_files, files);

    // Just verified: every file changed too recently to tell, so all are hashed.
    let racy = Scanned::of_received(s.manifest.clone(), at.clone(), baton_workspace::now_ns());
    let hashed = scan(&at, &opts(IgnoredFiles::Skip), Some(&racy)).unwrap();
    assert_eq!(hashed.stats().reused_files, 0, "{:?}", hashed.stats());

    // A file edited after it was received is hashed; the rest are not.
    write(&at, "big.bin", &noise(22, 400_000));
    let edited = scan(&at, &opts(IgnoredFiles::Skip), Some(&received)).unwrap();
    assert_eq!(edited.stats().hashed_files, 1, "{:?}", edited.stats());
    assert_ne!(
        edited.manifest.get("big.bin").unwrap().file().unwrap().hash,
        s.manifest.get("big.bin").unwrap().file().unwrap().hash
    );
}

/// Parts stay bounded by their entry count even when nothing is read (every hash reused, or a
/// tree of empty files): a rescan of a huge tree must not build one part of all of it.
#[test]
fn parts_hold_at_most_16_ki_entries_whatever_their_cost() {
    let dir = tempfile::tempdir().unwrap();
    for d in 0..17 {
        let sub = dir.path().join(format!("d{d:02}"));
        std::fs::create_dir(&sub).unwrap();
        for f in 0..1000 {
            std::fs::File::create(sub.join(format!("f{f:04}"))).unwrap();
        }
    }
    let o = opts(IgnoredFiles::Skip);
    let mut sizes = Vec::new();
    let scanned = prepare_scan(dir.path(), &o, None)
        .unwrap()
        .run(&o, u64::MAX, |part| {
            sizes.push(part.scanned.manifest.entries.len() - part.start);
            true
        })
        .unwrap()
        .unwrap();
    assert_eq!(scanned.manifest.entries.len(), 17 * 1001);
    assert_eq!(sizes.iter().sum::<usize>(), 17 * 1001);
    assert_eq!(
        sizes,
        [16 * 1024, 17 * 1001 - 16 * 1024],
        "two parts, the first full"
    );
}

#[test]
fn a_streamed_part_holds_at_most_32_mib_of_files_to_read_whatever_the_tree() {
    use baton_workspace::STREAM_FIRST_PART;
    const MIB: u64 = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    // 40 sparse files of 4 MiB: 160 MiB to read, no disk written. Parts that grew with what
    // was read would pass 48 MiB here.
    for i in 0..40 {
        let p = dir.path().join(format!("big{i:02}.bin"));
        std::fs::File::create(&p).unwrap().set_len(4 * MIB).unwrap();
    }
    let o = opts(IgnoredFiles::Skip);
    let mut sizes = Vec::new();
    prepare_scan(dir.path(), &o, None)
        .unwrap()
        .run(&o, STREAM_FIRST_PART, |part| {
            let tail = part.scanned.tail(part.start);
            sizes.push(tail.manifest.total_bytes());
            true
        })
        .unwrap()
        .expect("ran to the end");
    assert_eq!(sizes.iter().sum::<u64>(), 160 * MIB);
    assert!(
        sizes.iter().all(|&s| s <= 32 * MIB + 4 * MIB),
        "every part stops once it holds 32 MiB (plus the file that crossed it): {sizes:?}"
    );
    assert!(sizes.len() >= 5, "{sizes:?}");
}
