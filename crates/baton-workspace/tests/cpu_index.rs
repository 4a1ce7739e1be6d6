//! Serving chunks from a scan: a file the scan saw, unchanged since, is served without hashing
//! its chunk again; any change that could have touched its bytes is caught.

mod common;

use std::fs;
use std::time::Duration;

use baton_workspace::{ChunkIndex, IgnoredFiles, scan};
use common::*;

#[test]
fn chunks_of_files_older_than_the_racy_window_are_served_until_they_change() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut big = noise(3, 900_000);
    write(&src, "big.bin", &big);
    write(&src, "a.txt", b"alpha");
    write(&src, "b.txt", b"bravo");
    write(&src, "c.txt", b"charlie");
    // Past the 2 s within which a later write could leave the timestamps unchanged, so the scan's
    // stats are trusted.
    std::thread::sleep(Duration::from_millis(2100));
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let idx = ChunkIndex::from_scan(&s);
    let file = |rel: &str| s.manifest.get(rel).unwrap().clone();
    for (_, f) in s.manifest.files() {
        for c in &f.chunks {
            let bytes = idx.read(&c.hash).expect("unchanged");
            assert_eq!(blake3::hash(&bytes).as_bytes(), c.hash.as_bytes());
        }
    }

    // Rewritten in place with the same size, then given back its mtime: ctime still moved.
    let e = file("big.bin");
    let chunks = &e.file().unwrap().chunks;
    big[1] ^= 0xff;
    fs::write(src.join("big.bin"), &big).unwrap();
    set_mtime(
        &src,
        "big.bin",
        e.mtime_ns.div_euclid(1_000_000_000),
        e.mtime_ns.rem_euclid(1_000_000_000),
    );
    assert_eq!(idx.read(&chunks[0].hash), None, "the changed chunk");
    assert!(idx.read(&chunks[1].hash).is_some(), "an intact one, hashed");

    // Same bytes in a new file put in its place: hashed, and served.
    let a = file("a.txt").file().unwrap().hash;
    write(&src, "a.new", b"alpha");
    fs::rename(src.join("a.new"), src.join("a.txt")).unwrap();
    assert_eq!(idx.read(&a).as_deref(), Some(&b"alpha"[..]));

    // Other bytes of the same length in a new file: refused.
    let b = file("b.txt").file().unwrap().hash;
    write(&src, "b.new", b"BRAVO");
    fs::rename(src.join("b.new"), src.join("b.txt")).unwrap();
    assert_eq!(idx.read(&b), None);

    // Truncated, or gone.
    let c = file("c.txt").file().unwrap().hash;
    fs::write(src.join("c.txt"), b"").unwrap();
    assert_eq!(idx.read(&c), None);
    fs::remove_file(src.join("c.txt")).unwrap();
    assert_eq!(idx.read(&c), None);
}

#[test]
fn an_index_without_scan_stats_always_hashes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src, "a.txt", b"alpha");
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let mut idx = ChunkIndex::new(s.manifest.params);
    assert!(idx.add(s.root(), &s.manifest));
    let a = s.manifest.get("a.txt").unwrap().clone();
    assert!(idx.read(&a.file().unwrap().hash).is_some());
    // Same size, same mtime, same inode: only the bytes tell, and they are hashed.
    fs::write(src.join("a.txt"), b"ALPHA").unwrap();
    set_mtime(
        &src,
        "a.txt",
        a.mtime_ns.div_euclid(1_000_000_000),
        a.mtime_ns.rem_euclid(1_000_000_000),
    );
    assert_eq!(idx.read(&a.file().unwrap().hash), None);
}
