//! Several threads storing chunks into one staging tree: a chunk's places are claimed under the
//! stager's lock, written and sealed without it, and settled under it again. What must hold:
//! the tree is exact whatever the interleaving, a claimed chunk is not claimed twice, and a
//! claim given back after a failed write is written by the next one.

mod common;

use std::sync::{Arc, Mutex};

use baton_workspace::{ChunkIndex, IgnoredFiles, Limits, Stager, scan};
use common::*;

/// Stores `hash` the way a transfer's workers do.
fn store(stager: &Mutex<Stager>, index: &ChunkIndex, hash: &baton_proto::workspace::ContentHash) {
    let data = index.read(hash).unwrap();
    let Some(mut claim) = stager.lock().unwrap().claim(hash, &data).unwrap() else {
        return;
    };
    claim.write(&data).unwrap();
    let seals = stager.lock().unwrap().settle(claim, &data).unwrap();
    let mut buf = Vec::new();
    for seal in &seals {
        seal.run(&mut buf).unwrap();
    }
    let mut st = stager.lock().unwrap();
    for seal in &seals {
        st.sealed(seal);
    }
}

#[test]
fn four_threads_storing_chunks_in_any_order_rebuild_the_tree_exactly() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    rich_tree(&src);
    // Files of many chunks, whose chunks land from different threads.
    for i in 0..4u64 {
        write(&src, &format!("big/{i}.bin"), &noise(40 + i, 900_000));
    }
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let index = Arc::new(ChunkIndex::from_scan(&s));
    let st = Stager::create(&dest, "mt", s.manifest.clone(), &Limits::default()).unwrap();
    let missing = st.missing();
    assert!(missing.len() > 20, "{} chunks", missing.len());
    let stager = Arc::new(Mutex::new(st));
    let threads: Vec<_> = (0..4)
        .map(|k| {
            let (stager, index, missing) = (stager.clone(), index.clone(), missing.clone());
            std::thread::spawn(move || {
                // Each thread takes every chunk, starting at its own offset, so most chunks
                // are raced for and files complete on whichever thread writes last.
                let n = missing.len();
                for j in 0..n {
                    store(&stager, &index, &missing[(j + k * n / 4) % n]);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let st = Arc::try_unwrap(stager).unwrap().into_inner().unwrap();
    assert!(st.missing().is_empty());
    let at = land(st);
    let mut want = listing(&src);
    want.retain(|k, _| s.manifest.get(k).is_some());
    assert_same(&listing(&at), &want);
}

#[test]
fn a_claimed_chunk_is_not_claimed_again_until_settled_or_given_back() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    write(&src, "a.txt", b"alpha");
    write(&src, "big.bin", &noise(3, 700_000));
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let index = ChunkIndex::from_scan(&s);
    let mut st = Stager::create(&dest, "cl", s.manifest.clone(), &Limits::default()).unwrap();
    let a = s.manifest.get("a.txt").unwrap().file().unwrap().hash;

    let claim = st.claim(&a, b"alpha").unwrap().expect("a first claim");
    assert!(st.claim(&a, b"alpha").unwrap().is_none(), "claimed twice");
    // Given back unwritten (as after a failed write): nothing is on disk, the chunk is still
    // missing and the next claim creates the file.
    st.unclaim(claim);
    assert!(st.missing().contains(&a));
    let mut again = st.claim(&a, b"alpha").unwrap().expect("claimable again");
    again.write(b"alpha").unwrap();
    let seals = st.settle(again, b"alpha").unwrap();
    assert_eq!(seals.len(), 1, "the one-chunk file is complete");
    let mut buf = Vec::new();
    seals[0].run(&mut buf).unwrap();
    st.sealed(&seals[0]);
    assert!(!st.missing().contains(&a));
    assert!(st.claim(&a, b"alpha").unwrap().is_none(), "written already");

    // A file of several chunks completes on its last settle only, hashed as it was written.
    let big: Vec<_> = s
        .manifest
        .get("big.bin")
        .unwrap()
        .file()
        .unwrap()
        .chunks
        .clone();
    assert!(big.len() > 2);
    for (k, c) in big.iter().enumerate() {
        let data = index.read(&c.hash).unwrap();
        let mut claim = st.claim(&c.hash, &data).unwrap().unwrap();
        claim.write(&data).unwrap();
        let seals = st.settle(claim, &data).unwrap();
        assert_eq!(seals.len(), usize::from(k + 1 == big.len()), "chunk {k}");
        for seal in &seals {
            seal.run(&mut buf).unwrap();
            st.sealed(seal);
        }
    }
    let at = land(st);
    assert_eq!(std::fs::read(at.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(
        std::fs::read(at.join("big.bin")).unwrap(),
        std::fs::read(src.join("big.bin")).unwrap()
    );
}
