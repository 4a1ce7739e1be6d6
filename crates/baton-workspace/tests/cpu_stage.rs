//! Staging with fewer passes over the data: chunks the transport already checked
//! (`put_verified_chunk`), one-chunk files sealed without a read-back, a buffered journal and
//! cached write handles. What must still hold: wrong chunks are refused, damage to what is
//! staged is caught by a resumed stager, a crash only means chunks are asked for again, and the
//! tree is exact.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use baton_proto::workspace::ContentHash;
use baton_workspace::{
    ChunkIndex, ChunkParams, IgnoredFiles, Limits, Scanned, Stager, scan, staging_dir,
};
use common::*;

fn source(root: &Path) -> Scanned {
    write(root, "big.bin", &noise(9, 1_200_000));
    for i in 0..12 {
        write(
            root,
            &format!("small/{i}.txt"),
            &noise(100 + i, 500 + i as usize),
        );
    }
    write(root, "empty.txt", b"");
    scan(root, &opts(IgnoredFiles::Skip), None).unwrap()
}

fn staged(dest: &Path, id: &str, rel: &str) -> std::path::PathBuf {
    staging_dir(dest, id).unwrap().join("tree").join(rel)
}

#[test]
fn put_verified_chunk_refuses_unknown_hashes_and_wrong_lengths() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src, "a.txt", b"alpha");
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let mut st = Stager::create(&dest, "pv", s.manifest.clone(), &Limits::default()).unwrap();
    let a = st.missing()[0];

    let short = st.put_verified_chunk(&a, b"alp").unwrap_err();
    assert_eq!(short.code().as_str(), "verify_failed");
    assert!(short.to_string().contains("3 bytes"), "{short}");
    let unknown = st
        .put_verified_chunk(&ContentHash(*blake3::hash(b"x").as_bytes()), b"x")
        .unwrap_err();
    assert!(unknown.to_string().contains("not part of"), "{unknown}");
    // Nothing was written: a file with content is created at its first write.
    assert!(!staged(&dest, "pv", "a.txt").exists());
    assert_eq!(st.missing(), vec![a]);

    assert!(st.put_verified_chunk(&a, b"alpha").unwrap());
    assert!(!st.put_verified_chunk(&a, b"alpha").unwrap(), "a duplicate");
    assert!(st.missing().is_empty());
}

/// The contract is the caller's; debug builds (the test suites) hold it to it.
#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "do not hash to")]
fn put_verified_chunk_of_bytes_with_another_hash_panics_in_debug_builds() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src, "a.txt", b"alpha");
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let mut st = Stager::create(&dest, "pp", s.manifest.clone(), &Limits::default()).unwrap();
    let a = st.missing()[0];
    let _ = st.put_verified_chunk(&a, b"bravo");
}

#[test]
fn verified_chunks_rebuild_the_tree_exactly() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    rich_tree(&src);
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let source = ChunkIndex::from_scan(&s);
    let mut st = Stager::create(&dest, "ex", s.manifest.clone(), &Limits::default()).unwrap();
    for h in st.missing() {
        assert!(
            st.put_verified_chunk(&h, &source.read(&h).unwrap())
                .unwrap()
        );
    }
    let at = land(st);
    let mut want = listing(&src);
    want.retain(|k, _| s.manifest.get(k).is_some());
    assert_same(&listing(&at), &want);
}

/// A file is hashed from the bytes written into it, not read back; what changes it behind the
/// stager's back is caught when a stager reopened on the staging (as after a crash) finishes,
/// since that verifies every file from disk.
#[test]
fn damage_between_the_chunks_of_a_file_is_caught_by_a_reopened_stager() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let s = source(&src);
    let chunks = ChunkIndex::from_scan(&s);
    let big = s.manifest.get("big.bin").unwrap().file().unwrap().clone();
    let last = big.chunks.last().unwrap().hash;
    let mut st = Stager::create(&dest, "dv", s.manifest.clone(), &Limits::default()).unwrap();
    for h in st.missing().into_iter().filter(|h| *h != last) {
        st.put_verified_chunk(&h, &chunks.read(&h).unwrap())
            .unwrap();
    }
    // Damage through another handle while the stager holds one open for writing.
    let mut f = OpenOptions::new()
        .write(true)
        .open(staged(&dest, "dv", "big.bin"))
        .unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    st.put_verified_chunk(&last, &chunks.read(&last).unwrap())
        .unwrap();
    drop(st);
    let st = Stager::create(&dest, "dv", s.manifest.clone(), &Limits::default()).unwrap();
    assert!(st.missing().is_empty(), "resumed from the journal");
    let e = st.finish(1).unwrap_err();
    assert_eq!(e.code().as_str(), "verify_failed");
    assert!(e.to_string().contains("big.bin"), "{e}");
}

#[test]
fn a_one_chunk_file_sealed_without_a_read_back_still_has_its_size_checked() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let s = source(&src);
    let chunks = ChunkIndex::from_scan(&s);
    drop(Stager::create(&dest, "sz", s.manifest.clone(), &Limits::default()).unwrap());
    // Stale bytes beyond the end of a file nothing was written to yet.
    let p = staged(&dest, "sz", "small/4.txt");
    fs::write(&p, vec![b'x'; 5000]).unwrap();

    let mut st = Stager::create(&dest, "sz", s.manifest.clone(), &Limits::default()).unwrap();
    let want = s.manifest.get("small/4.txt").unwrap().file().unwrap();
    let h = want.chunks[0].hash;
    let e = st
        .put_verified_chunk(&h, &chunks.read(&h).unwrap())
        .unwrap_err();
    assert_eq!(e.code().as_str(), "verify_failed");
    assert!(
        e.to_string()
            .contains(&format!("5000 bytes, expected {}", want.size)),
        "{e}"
    );
}

#[test]
fn a_crash_loses_only_the_journal_records_not_yet_synced() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let s = source(&src);
    let chunks = ChunkIndex::from_scan(&s);
    let mut st = Stager::create(&dest, "cr", s.manifest.clone(), &Limits::default()).unwrap();
    let all = st.missing();
    assert!(all.len() > 20, "{} chunks", all.len());
    let (synced, rest) = all.split_at(all.len() / 2);
    for h in synced {
        st.put_verified_chunk(h, &chunks.read(h).unwrap()).unwrap();
    }
    st.sync().unwrap();
    for h in &rest[..5] {
        st.put_verified_chunk(h, &chunks.read(h).unwrap()).unwrap();
    }
    // The process dies: no destructor runs, so buffered records are lost.
    std::mem::forget(st);

    let mut st = Stager::create(&dest, "cr", s.manifest.clone(), &Limits::default()).unwrap();
    assert_eq!(st.missing(), rest, "the unsynced tail is asked for again");
    for h in rest {
        st.put_verified_chunk(h, &chunks.read(h).unwrap()).unwrap();
    }
    let at = land(st);
    assert_same(&listing(&at), &listing(&src));
}

#[test]
fn a_dropped_stager_keeps_every_record() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let s = source(&src);
    let chunks = ChunkIndex::from_scan(&s);
    let mut st = Stager::create(&dest, "dr", s.manifest.clone(), &Limits::default()).unwrap();
    let all = st.missing();
    for h in &all[..7] {
        st.put_verified_chunk(h, &chunks.read(h).unwrap()).unwrap();
    }
    drop(st);
    let st = Stager::create(&dest, "dr", s.manifest.clone(), &Limits::default()).unwrap();
    assert_eq!(st.missing(), all[7..]);
}

#[test]
fn update_forgets_the_handles_of_files_it_moves() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let first = source(&src);
    let chunks = ChunkIndex::from_scan(&first);
    let big = first
        .manifest
        .get("big.bin")
        .unwrap()
        .file()
        .unwrap()
        .clone();
    let mut st = Stager::create(&dest, "up", first.manifest.clone(), &Limits::default()).unwrap();
    // Half of big.bin: the stager holds it open.
    for c in &big.chunks[..big.chunks.len() / 2] {
        st.put_verified_chunk(&c.hash, &chunks.read(&c.hash).unwrap())
            .unwrap();
    }

    // big.bin changes at its start, so it is moved aside and rebuilt in a new file.
    let mut bytes = fs::read(src.join("big.bin")).unwrap();
    bytes[..4].copy_from_slice(b"NEW!");
    fs::write(src.join("big.bin"), &bytes).unwrap();
    let last = scan(&src, &opts(IgnoredFiles::Skip), Some(&first)).unwrap();
    st.update(last.manifest.clone(), &Limits::default())
        .unwrap();
    let source = ChunkIndex::from_scan(&last);
    for h in st.missing() {
        st.put_verified_chunk(&h, &source.read(&h).unwrap())
            .unwrap();
    }
    let at = land(st);
    assert_same(&listing(&at), &listing(&src));
}

#[test]
fn files_written_a_chunk_at_a_time_in_turn_come_out_exact() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    // More multi-chunk files than the stager keeps open, written round robin.
    for i in 0..150u64 {
        write(&src, &format!("f{i:03}.bin"), &noise(i + 1, 8_000));
    }
    let mut o = opts(IgnoredFiles::Skip);
    o.params = ChunkParams {
        min_size: 256,
        avg_size: 1024,
        max_size: 4096,
        ..ChunkParams::DEFAULT
    };
    let s = scan(&src, &o, None).unwrap();
    let source = ChunkIndex::from_scan(&s);
    let mut order: Vec<ContentHash> = Vec::new();
    for k in 0.. {
        let n = order.len();
        order.extend(
            s.manifest
                .files()
                .filter_map(|(_, f)| f.chunks.get(k).map(|c| c.hash)),
        );
        if order.len() == n {
            break;
        }
    }
    assert!(order.len() > 4 * 150, "{} chunk uses", order.len());
    let mut st = Stager::create(&dest, "rr", s.manifest.clone(), &Limits::default()).unwrap();
    for h in order {
        st.put_verified_chunk(&h, &source.read(&h).unwrap())
            .unwrap();
    }
    let at = land(st);
    assert_same(&listing(&at), &listing(&src));
}
