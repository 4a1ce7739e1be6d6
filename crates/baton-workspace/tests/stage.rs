//! The staging writer: resume after a crash, refusal of bad chunks, verification at finish.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;

use baton_proto::workspace::{ContentHash, EntryKind};
use baton_workspace::{ChunkIndex, IgnoredFiles, Limits, Stager, scan, staging_dir};
use common::*;

fn source(root: &std::path::Path) {
    write(root, "big.bin", &noise(9, 1_200_000));
    for i in 0..12 {
        write(
            root,
            &format!("small/{i}.txt"),
            &noise(100 + i, 500 + i as usize),
        );
    }
}

#[test]
fn reopened_stager_asks_only_for_what_is_missing() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    source(&src);
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let chunks = ChunkIndex::from_scan(&s);

    let mut st = Stager::create(&dest, "res", s.manifest.clone(), &Limits::default()).unwrap();
    let all = st.missing();
    assert!(all.len() > 12, "{} chunks", all.len());
    let (even, odd): (Vec<_>, Vec<_>) = all.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    for (_, h) in &even {
        st.put_chunk(h, &chunks.read(h).unwrap()).unwrap();
    }
    let half = st.progress().snapshot();
    assert!(half.bytes > 0 && half.bytes < half.total_bytes);
    drop(st); // the process dies here

    // A torn journal record, as a crash mid-append leaves one.
    let journal = staging_dir(&dest, "res").unwrap().join("journal");
    OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap()
        .write_all(&[1, 2, 3])
        .unwrap();

    let mut st = Stager::create(&dest, "res", s.manifest.clone(), &Limits::default()).unwrap();
    let want: Vec<ContentHash> = odd.iter().map(|(_, h)| **h).collect();
    assert_eq!(st.missing(), want);
    assert_eq!(st.progress().snapshot(), half);
    // Re-sending a chunk already written is harmless.
    let (_, first) = even[0];
    assert!(!st.put_chunk(first, &chunks.read(first).unwrap()).unwrap());
    for h in &want {
        st.put_chunk(h, &chunks.read(h).unwrap()).unwrap();
    }
    let p = st.progress().snapshot();
    assert_eq!((p.files, p.bytes), (p.total_files, p.total_bytes));
    let landed = st
        .finish(2)
        .unwrap()
        .apply(Default::default())
        .unwrap()
        .commit()
        .unwrap();
    assert_same(&listing(&src), &listing(&landed));
}

#[test]
fn another_manifest_starts_over() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    source(&src);
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let chunks = ChunkIndex::from_scan(&s);
    let mut st = Stager::create(&dest, "x", s.manifest.clone(), &Limits::default()).unwrap();
    let h = st.missing()[0];
    st.put_chunk(&h, &chunks.read(&h).unwrap()).unwrap();
    drop(st);

    write(&src, "small/0.txt", b"changed");
    let s2 = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let st = Stager::create(&dest, "x", s2.manifest.clone(), &Limits::default()).unwrap();
    assert_eq!(st.missing().len(), ChunkIndex::from_scan(&s2).len());
    st.abort().unwrap();
    assert!(!staging_dir(&dest, "x").unwrap().exists());
}

#[test]
fn bad_chunks_are_refused_and_write_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src, "a.txt", b"alpha");
    write(&src, "b.txt", b"bravo");
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let mut st = Stager::create(&dest, "bad", s.manifest.clone(), &Limits::default()).unwrap();
    let missing = st.missing();
    let a = s.manifest.get("a.txt").unwrap().file().unwrap().hash;

    let wrong = st.put_chunk(&a, b"bravo").unwrap_err();
    assert_eq!(wrong.code().as_str(), "verify_failed");
    assert!(wrong.to_string().contains("does not match"), "{wrong}");
    let short = st.put_chunk(&a, b"alp").unwrap_err();
    assert!(short.to_string().contains("3 bytes"), "{short}");
    let unknown = st.put_chunk(&ContentHash([7; 32]), b"x").unwrap_err();
    assert!(unknown.to_string().contains("not part of"), "{unknown}");

    let staged_a = staging_dir(&dest, "bad").unwrap().join("tree/a.txt");
    assert!(
        !staged_a.exists(),
        "nothing written: created at its first write"
    );
    assert_eq!(st.missing(), missing);
    let early = st.finish(1).unwrap_err();
    assert_eq!(early.code().as_str(), "transfer_failed");
}

/// A file of several chunks is checked against its BLAKE3 when its last chunk lands: chunks
/// that each match their names can still make another file than the manifest says.
#[test]
fn a_file_is_verified_when_its_last_chunk_lands() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    source(&src);
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let chunks = ChunkIndex::from_scan(&s);
    let mut m = s.manifest.clone();
    let i = m.entries.iter().position(|e| e.path == "big.bin").unwrap();
    let big = m.entries[i].file().unwrap().clone();
    assert!(big.chunks.len() > 2);
    if let EntryKind::File(f) = &mut m.entries[i].kind {
        f.hash = ContentHash(*blake3::hash(b"another file").as_bytes());
    }
    let last = big.chunks.last().unwrap().hash;
    let mut st = Stager::create(&dest, "dmg", m, &Limits::default()).unwrap();
    for h in st.missing().into_iter().filter(|h| *h != last) {
        st.put_chunk(&h, &chunks.read(&h).unwrap()).unwrap();
    }
    let e = st
        .put_chunk(&last, &chunks.read(&last).unwrap())
        .unwrap_err();
    assert_eq!(e.code().as_str(), "verify_failed");
    assert!(e.to_string().contains("big.bin"), "{e}");
    assert!(!dest.exists());
}

#[test]
fn a_reopened_stager_verifies_everything_again_at_finish() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    source(&src);
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let chunks = ChunkIndex::from_scan(&s);
    let mut st = Stager::create(&dest, "rv", s.manifest.clone(), &Limits::default()).unwrap();
    for h in st.missing() {
        st.put_chunk(&h, &chunks.read(&h).unwrap()).unwrap();
    }
    drop(st);
    let staged = staging_dir(&dest, "rv").unwrap().join("tree/small/3.txt");
    fs::write(&staged, b"not what was sent").unwrap();
    let st = Stager::create(&dest, "rv", s.manifest.clone(), &Limits::default()).unwrap();
    assert!(st.missing().is_empty());
    let e = st.finish(2).unwrap_err();
    assert_eq!(e.code().as_str(), "verify_failed");
    assert!(e.to_string().contains("small/3.txt"), "{e}");
    assert!(!dest.exists());
}

#[test]
fn files_with_content_are_created_at_their_first_write_and_never_over_something_else() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src, "d/a.txt", b"alpha");
    write(&src, "d/b.txt", b"bravo");
    write(&src, "d/empty", b"");
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let mut st = Stager::create(&dest, "lazy", s.manifest.clone(), &Limits::default()).unwrap();
    let tree = staging_dir(&dest, "lazy").unwrap().join("tree");
    // Directories and empty files are made at once; files with content wait for their data.
    assert!(tree.join("d").is_dir());
    assert!(tree.join("d/empty").is_file());
    assert!(!tree.join("d/a.txt").exists() && !tree.join("d/b.txt").exists());

    let a = s.manifest.get("d/a.txt").unwrap().file().unwrap().hash;
    assert!(st.put_chunk(&a, b"alpha").unwrap());
    assert_eq!(fs::read(tree.join("d/a.txt")).unwrap(), b"alpha");

    // Something that takes a file's path before its data arrives (as a second manifest path
    // naming the same file would, on a case-insensitive filesystem) is never written through.
    fs::write(tree.join("d/b.txt"), b"squatter").unwrap();
    let b = s.manifest.get("d/b.txt").unwrap().file().unwrap().hash;
    let err = st.put_chunk(&b, b"bravo").unwrap_err();
    assert!(err.to_string().contains("collides"), "{err}");
    assert_eq!(fs::read(tree.join("d/b.txt")).unwrap(), b"squatter");
    assert!(st.missing().contains(&b));
}
