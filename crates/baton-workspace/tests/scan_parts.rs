//! A scan streamed in parts gives, part by part, valid prefixes of the same manifest a
//! one-part scan gives, and stops reading when asked.

mod common;

use baton_workspace::{IgnoredFiles, Limits, prepare_scan, scan, validate};
use common::{noise, opts, write};

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
