//! A staging tree grown part by part (a manifest streamed in path order) ends up as the tree a
//! one-part staging gives, with chunks shared across parts copied locally, and a part that
//! breaks the manifest's rules leaves the staging as it was.

mod common;

use baton_proto::workspace::{EntryKind, FileData, WorkspaceEntry};
use baton_workspace::{ChunkIndex, IgnoredFiles, Limits, Stager, prepare_scan};
use common::*;

fn source(root: &std::path::Path) {
    for d in 0..4 {
        for f in 0..30 {
            let n = (d * 30 + f) as u64;
            let len = if f % 10 == 0 {
                300 * 1024
            } else {
                900 + f * 31
            };
            write(root, &format!("d{d}/f{f:02}.bin"), &noise(n, len));
        }
    }
    // The same content early and late in path order: parts share chunks.
    write(root, "a-first/copy.bin", &noise(77, 250 * 1024));
    write(root, "z-last/copy.bin", &noise(77, 250 * 1024));
    write(root, "z-last/empty", b"");
    chmod(root, "d0/f01.bin", 0o755);
}

#[test]
fn a_staging_grown_part_by_part_rebuilds_the_tree_and_copies_shared_chunks_locally() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    source(&src);
    let o = opts(IgnoredFiles::Skip);
    let mut parts = Vec::new();
    let whole = prepare_scan(&src, &o, None)
        .unwrap()
        .run(&o, 200 * 1024, |part| {
            let tail = part.scanned.tail(part.start);
            let mut skipped = Vec::new();
            if part.last {
                skipped = part.scanned.manifest.skipped.clone();
            }
            parts.push((tail.manifest, skipped));
            true
        })
        .unwrap()
        .unwrap();
    assert!(parts.len() >= 4, "{} parts", parts.len());
    let index = ChunkIndex::from_scan(&whole);

    let mut parts = parts.into_iter();
    let (first, _) = parts.next().unwrap();
    let mut st = Stager::create(&dest, "grow", first, &Limits::default()).unwrap();
    let mut sent = std::collections::HashSet::new();
    let mut copied = 0;
    let mut send_missing = |st: &mut Stager| {
        for c in st.missing_chunks() {
            assert!(sent.insert(c.hash), "a chunk is asked for once");
            let bytes = index.read(&c.hash).unwrap();
            assert_eq!(bytes.len(), c.len as usize);
            st.put_chunk(&c.hash, &bytes).unwrap();
        }
    };
    send_missing(&mut st);
    for (m, skipped) in parts {
        let filled = st.extend(m.entries, skipped, &Limits::default()).unwrap();
        copied += filled.chunks;
        send_missing(&mut st);
    }
    assert!(
        copied >= 1,
        "the late copy's chunks came from the early one"
    );
    assert_eq!(&st.manifest(), &whole.manifest);
    assert_same(&listing(&src), &listing(&land(st)));
}

#[test]
fn a_part_that_breaks_the_rules_leaves_the_staging_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    source(&src);
    let o = opts(IgnoredFiles::Skip);
    let whole = prepare_scan(&src, &o, None)
        .unwrap()
        .run(&o, u64::MAX, |_| true)
        .unwrap()
        .unwrap();
    let mut st = Stager::create(&dest, "bad", whole.manifest.clone(), &Limits::default()).unwrap();
    let missing = st.missing();
    let entry = |path: &str| WorkspaceEntry {
        path: path.into(),
        mode: 0o644,
        mtime_ns: 0,
        kind: EntryKind::File(FileData {
            size: 0,
            hash: whole.manifest.entries[0]
                .file()
                .map_or(baton_proto::workspace::ContentHash([0; 32]), |f| f.hash),
            chunks: Vec::new(),
        }),
    };
    for (bad, says) in [
        (vec![entry("a-first")], "out of order"),
        (vec![entry("zz/../../escape")], ".."),
        (vec![entry("zzz"), entry("zzz")], "duplicate"),
        (vec![entry("zzzz/inside")], "not listed before it"),
    ] {
        let err = st.extend(bad, Vec::new(), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
        assert_eq!(&st.manifest(), &whole.manifest, "unchanged after {says}");
        assert_eq!(st.missing(), missing);
    }
}
