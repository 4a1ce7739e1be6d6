//! Pre-copy, then delta (DESIGN §5): the bulk is staged while the source runs; after it stops,
//! the staging moves to the final manifest and only what changed travels and is verified.

mod common;

use std::fs;
use std::os::unix::fs::symlink;

use baton_workspace::{ChunkIndex, ConflictPolicy, IgnoredFiles, Limits, Stager, scan};
use common::*;

#[test]
fn only_changes_travel_after_a_pre_copy() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    for i in 0..200 {
        write(
            &src,
            &format!("d{}/f{i}.txt", i % 8),
            &noise(i, 200 + i as usize * 13),
        );
    }
    write(&src, "big.bin", &noise(77, 1_000_000));
    write(
        &src,
        "gone/inside.txt",
        b"will be deleted with its directory",
    );
    write(&src, "becomes-dir", b"a file that turns into a directory");
    write(&src, "tool.sh", b"#!/bin/sh\n");
    symlink("d0", src.join("link")).unwrap();

    let o = opts(IgnoredFiles::Skip);
    let first = scan(&src, &o, None).unwrap();
    let mut st = Stager::create(&dest, "pc", first.manifest.clone(), &Limits::default()).unwrap();
    let source = ChunkIndex::from_scan(&first);
    for h in st.missing() {
        st.put_chunk(&h, &source.read(&h).unwrap()).unwrap();
    }

    // The session kept working during the pre-copy.
    write(&src, "d1/f1.txt", b"edited during the pre-copy");
    fs::remove_file(src.join("d2/f2.txt")).unwrap();
    fs::remove_dir_all(src.join("gone")).unwrap();
    fs::rename(src.join("d3/f3.txt"), src.join("d3/renamed.txt")).unwrap();
    chmod(&src, "tool.sh", 0o755);
    let mut big = fs::read(src.join("big.bin")).unwrap();
    big.extend_from_slice(b"appended");
    fs::write(src.join("big.bin"), &big).unwrap();
    fs::remove_file(src.join("becomes-dir")).unwrap();
    write(&src, "becomes-dir/now.txt", b"new");
    write(&src, "brand/new.txt", b"brand new file");
    fs::remove_file(src.join("link")).unwrap();
    symlink("d1", src.join("link")).unwrap();

    let last = scan(&src, &o, Some(&first)).unwrap();
    let filled = st
        .update(last.manifest.clone(), &Limits::default())
        .unwrap();
    assert!(
        filled.chunks >= 1,
        "the renamed file comes from the staged copy"
    );
    let missing = st.missing();
    // The edit, the big file's last chunk, and two new small files.
    assert!(missing.len() <= 4, "{} chunks missing", missing.len());
    let progress = st.progress();
    let source = ChunkIndex::from_scan(&last);
    for h in missing {
        st.put_chunk(&h, &source.read(&h).unwrap()).unwrap();
    }
    let staged = st.finish(2).unwrap();
    assert_eq!(
        progress.snapshot().total_files,
        0,
        "every file was verified as it completed"
    );
    let landed = staged
        .apply(ConflictPolicy::Sibling)
        .unwrap()
        .commit()
        .unwrap();
    assert_same(&listing(&src), &listing(&landed));
}

#[test]
fn update_refuses_other_chunk_parameters() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src, "a", b"a");
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let mut st = Stager::create(&dest, "p", s.manifest.clone(), &Limits::default()).unwrap();
    let mut other = s.manifest.clone();
    other.params.avg_size = 32 * 1024;
    let e = st.update(other, &Limits::default()).unwrap_err();
    assert_eq!(e.code().as_str(), "bad_request");
}

#[test]
fn a_final_manifest_with_the_same_entries_keeps_the_staging_and_its_journal() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    for i in 0..40 {
        write(&src, &format!("d{}/f{i}.bin", i % 4), &noise(i, 3000));
    }
    let o = opts(IgnoredFiles::Skip);
    let first = scan(&src, &o, None).unwrap();
    let limits = Limits::default();
    let mut st = Stager::create(&dest, "same", first.manifest.clone(), &limits).unwrap();
    let source = ChunkIndex::from_scan(&first);
    let all = st.missing();
    for h in &all[..20] {
        st.put_chunk(h, &source.read(h).unwrap()).unwrap();
    }
    st.sync().unwrap();

    // The source stopped; only its root changed (a new mtime) and a link is now left out.
    let mut last = first.manifest.clone();
    last.root_mtime_ns += 1_000_000_000;
    last.skipped.push(baton_proto::workspace::SkippedEntry {
        path: "out-link".into(),
        reason: baton_proto::workspace::SkipReason::SymlinkOutside,
    });
    // The same entries under another manifest version are still refused.
    let mut other_version = last.clone();
    other_version.version += 1;
    let e = st.update(other_version, &limits).unwrap_err();
    assert!(e.to_string().contains("version"), "{e}");
    let filled = st.update(last.clone(), &limits).unwrap();
    assert_eq!(filled.chunks, 0, "nothing to copy: the staged files stand");
    assert_eq!(st.missing(), all[20..], "what was written stays written");
    assert_eq!(&st.manifest(), &last);

    // A daemon restarted here reopens the staging for the final manifest and its journal.
    drop(st);
    let mut st = Stager::create(&dest, "same", last.clone(), &limits).unwrap();
    assert_eq!(
        st.missing(),
        all[20..],
        "the journal names the final manifest"
    );
    for h in st.missing() {
        st.put_chunk(&h, &source.read(&h).unwrap()).unwrap();
    }
    let landed = land(st);
    assert_same(&listing(&src), &listing(&landed));
    let mtime = fs::metadata(&landed).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        mtime.mtime() * 1_000_000_000 + mtime.mtime_nsec(),
        last.root_mtime_ns,
        "the root takes the final manifest's mtime"
    );
}
