//! The final pass applied as a change to the staged manifest (`Stager::apply_change`): the same
//! staging as moving to the whole final manifest, and a change that does not fit, or does not
//! give the source's manifest, refused before anything is touched.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use baton_proto::workspace::{ContentHash, EntryKind, WorkspaceManifest};
use baton_workspace::{
    ChunkIndex, IgnoredFiles, Limits, ManifestChange, Scanned, Stager, diff, digest, scan,
    staging_dir,
};
use common::*;

/// A tree and its scan.
fn tree(src: &Path) -> Scanned {
    for i in 0..60 {
        write(
            src,
            &format!("d{}/f{i}.txt", i % 6),
            &noise(i, 200 + i as usize * 13),
        );
    }
    write(src, "big.bin", &noise(77, 1_000_000));
    write(src, "gone/inside.txt", b"goes with its directory");
    write(src, "gone/deeper/x.txt", b"so does this");
    write(src, "becomes-dir", b"a file that turns into a directory");
    write(
        src,
        "dir-becomes-file/a.txt",
        b"its directory becomes a file",
    );
    write(src, "tool.sh", b"#!/bin/sh\n");
    write(src, "late.txt", &noise(5, 4000));
    symlink("d0", src.join("link")).unwrap();
    scan(src, &opts(IgnoredFiles::Skip), None).unwrap()
}

/// A stager that holds all of `first` but the chunks of `late.txt` (as when a file changed on
/// the source during the pre-copy).
fn pre_copied(first: &Scanned, dest: &Path, id: &str) -> Stager {
    let mut st = Stager::create(dest, id, first.manifest.clone(), &Limits::default()).unwrap();
    let source = ChunkIndex::from_scan(first);
    let late = first.manifest.get("late.txt").unwrap().file().unwrap();
    let unwritten: BTreeSet<ContentHash> = late.chunks.iter().map(|c| c.hash).collect();
    for h in st.missing() {
        if !unwritten.contains(&h) {
            st.put_chunk(&h, &source.read(&h).unwrap()).unwrap();
        }
    }
    st
}

/// The session's edits during the pre-copy, of every kind a change carries.
fn edit(src: &Path) {
    write(src, "d1/f1.txt", b"edited during the pre-copy");
    fs::remove_file(src.join("d2/f2.txt")).unwrap();
    fs::remove_dir_all(src.join("gone")).unwrap();
    fs::rename(src.join("d3/f3.txt"), src.join("d3/renamed.txt")).unwrap();
    chmod(src, "tool.sh", 0o755);
    let mut big = fs::read(src.join("big.bin")).unwrap();
    big.splice(500_000..500_000, b"inserted mid-file".iter().copied());
    fs::write(src.join("big.bin"), &big).unwrap();
    fs::remove_file(src.join("becomes-dir")).unwrap();
    write(src, "becomes-dir/now.txt", b"new");
    fs::remove_dir_all(src.join("dir-becomes-file")).unwrap();
    write(src, "dir-becomes-file", b"now a file");
    write(src, "brand/new/deep.txt", b"brand new file");
    fs::remove_file(src.join("link")).unwrap();
    symlink("d1", src.join("link")).unwrap();
}

fn sorted(v: Vec<ContentHash>) -> Vec<ContentHash> {
    let mut v = v;
    v.sort();
    v
}

#[test]
fn a_change_applied_in_place_stages_what_the_whole_manifest_stages() {
    let t = tempfile::tempdir().unwrap();
    let (src, a, b) = (t.path().join("src"), t.path().join("a"), t.path().join("b"));
    let first = tree(&src);
    let mut whole = pre_copied(&first, &a, "whole");
    let mut changed = pre_copied(&first, &b, "change");
    edit(&src);
    let last = scan(&src, &opts(IgnoredFiles::Skip), Some(&first)).unwrap();
    let (base, target) = (&first.manifest, &last.manifest);
    let change = diff(base, target);
    assert!(
        change.changed.len() >= 8 && change.removed.len() >= 4,
        "{} changed, {} removed",
        change.changed.len(),
        change.removed.len()
    );
    let limits = Limits::default();
    let root = (target.root_mode, target.root_mtime_ns);
    let filled = changed
        .apply_change(
            change,
            root,
            target.skipped.clone(),
            &digest(target),
            &limits,
        )
        .unwrap();
    assert_eq!(&changed.manifest(), target);
    assert!(
        filled.chunks >= 2,
        "the renamed file and the big file's unchanged chunks come from the staging ({filled:?})"
    );

    whole.update(last.manifest.clone(), &limits).unwrap();
    assert_eq!(sorted(changed.missing()), sorted(whole.missing()));
    // The edit, the big file's changed chunk(s), the late file and the new small files.
    assert!(
        changed.missing().len() <= 8,
        "{} chunks missing",
        changed.missing().len()
    );

    // A daemon restarted here reopens the staging for the final manifest and its journal.
    let missing = sorted(changed.missing());
    drop(changed);
    let mut changed = Stager::create(&b, "change", target.clone(), &limits).unwrap();
    assert_eq!(sorted(changed.missing()), missing, "the journal names it");

    let source = ChunkIndex::from_scan(&last);
    for h in changed.missing() {
        changed.put_chunk(&h, &source.read(&h).unwrap()).unwrap();
    }
    let landed = land(changed);
    assert_same(&listing(&src), &listing(&landed));
}

/// Staged tree of `dest`'s staging `id`, to compare before and after a refusal.
fn staged_listing(dest: &Path, id: &str) -> std::collections::BTreeMap<String, Node> {
    listing(&staging_dir(dest, id).unwrap().join("tree"))
}

#[test]
fn a_change_that_does_not_fit_or_lies_is_refused_and_touches_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    let first = tree(&src);
    let mut st = pre_copied(&first, &dest, "bad");
    let base = first.manifest.clone();
    let before = staged_listing(&dest, "bad");
    let missing = st.missing();
    let entry = |p: &str| base.get(p).unwrap().clone();
    let with_path = |p: &str, mut e: baton_proto::workspace::WorkspaceEntry| {
        e.path = p.into();
        e
    };
    let cases: Vec<(ManifestChange, &str)> = vec![
        (
            ManifestChange {
                changed: vec![],
                removed: vec!["gone".into()],
            },
            "stays, but the change removes its directory gone",
        ),
        (
            ManifestChange {
                changed: vec![with_path("dir-becomes-file", entry("tool.sh"))],
                removed: vec![],
            },
            "stays, but the change removes its directory dir-becomes-file",
        ),
        (
            ManifestChange {
                changed: vec![with_path("tool.sh/x", entry("late.txt"))],
                removed: vec![],
            },
            "which is a file",
        ),
        (
            ManifestChange {
                changed: vec![with_path("link/x", entry("late.txt"))],
                removed: vec![],
            },
            "goes through the symlink link",
        ),
        (
            ManifestChange {
                changed: vec![with_path("gone/deeper/y", entry("late.txt"))],
                removed: vec!["gone/deeper".into(), "gone/deeper/x.txt".into()],
            },
            "its parent directory gone/deeper is not listed",
        ),
        (
            ManifestChange {
                changed: vec![],
                removed: vec!["not/there".into()],
            },
            "did not hold",
        ),
        (
            ManifestChange {
                changed: vec![entry("late.txt")],
                removed: vec!["late.txt".into()],
            },
            "both removes and changes",
        ),
        (
            ManifestChange {
                changed: vec![with_path("d0/../../escape", entry("late.txt"))],
                removed: vec![],
            },
            "`..` component",
        ),
    ];
    let root = (base.root_mode, base.root_mtime_ns);
    for (change, why) in cases {
        let result = st.apply_change(
            change.clone(),
            root,
            vec![],
            &digest(&patched(&base, &change)),
            &Limits::default(),
        );
        let e = result.expect_err(why).to_string();
        assert!(e.contains(why), "{why}: {e}");
        assert_eq!(&st.manifest(), &base, "{why}: the staged manifest stands");
        assert_eq!(st.missing(), missing, "{why}");
        assert_same(&before, &staged_listing(&dest, "bad"));
    }

    // A change that fits, with a digest that is not its result's.
    let mut edited = entry("late.txt");
    edited.mtime_ns += 1;
    let change = ManifestChange {
        changed: vec![edited],
        removed: vec!["gone/deeper/x.txt".into()],
    };
    let e = st
        .apply_change(
            change.clone(),
            root,
            vec![],
            &digest(&base),
            &Limits::default(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("digest differs"), "{e}");
    assert_same(&before, &staged_listing(&dest, "bad"));
    // Above the entry cap.
    let small = Limits {
        max_entries: base.entries.len() - 2,
        ..Limits::default()
    };
    let e = st
        .apply_change(
            change.clone(),
            root,
            vec![],
            &digest(&patched(&base, &change)),
            &small,
        )
        .unwrap_err();
    assert_eq!(e.code().as_str(), "transfer_too_large", "{e}");
    assert_eq!(&st.manifest(), &base);

    // The same change with its true digest goes through.
    st.apply_change(
        change.clone(),
        root,
        vec![],
        &digest(&patched(&base, &change)),
        &Limits::default(),
    )
    .unwrap();
    assert!(st.manifest().get("gone/deeper/x.txt").is_none());
    assert!(matches!(
        st.manifest().get("late.txt").unwrap().kind,
        EntryKind::File(_)
    ));
}

/// `base` with `change` applied, as far as it goes (for a digest to send with a bad change).
fn patched(base: &WorkspaceManifest, change: &ManifestChange) -> WorkspaceManifest {
    let mut m = base.clone();
    m.entries
        .retain(|e| !change.removed.contains(&e.path) && base.get(&e.path).is_some());
    for c in &change.changed {
        match m.entries.binary_search_by(|e| e.path.cmp(&c.path)) {
            Ok(i) => m.entries[i] = c.clone(),
            Err(i) => m.entries.insert(i, c.clone()),
        }
    }
    m
}

#[test]
fn random_changes_applied_in_place_match_the_whole_manifest() {
    let limits = Limits::default();
    for seed in 0..12u64 {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        for i in 0..40u64 {
            write(
                &src,
                &format!("d{}/f{i:02}", i % 4),
                &noise(seed * 100 + i, 300),
            );
        }
        let o = opts(IgnoredFiles::Skip);
        let first = scan(&src, &o, None).unwrap();
        let stage = |name: &str| {
            let mut st =
                Stager::create(&t.path().join(name), name, first.manifest.clone(), &limits)
                    .unwrap();
            let source = ChunkIndex::from_scan(&first);
            for h in st.missing() {
                st.put_chunk(&h, &source.read(&h).unwrap()).unwrap();
            }
            st
        };
        let (mut whole, mut changed) = (stage("whole"), stage("changed"));
        // Pseudo-random edits: removals, rewrites, copies (shared chunks) and additions, some
        // in new directories and some sorting between existing entries.
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for i in 0..40u64 {
            let p = src.join(format!("d{}/f{i:02}", i % 4));
            match next(6) {
                0 => fs::remove_file(&p).unwrap(),
                1 => fs::write(&p, noise(seed * 1000 + i, 500)).unwrap(),
                2 => write(
                    &src,
                    &format!("d{}/f{i:02}-copy", i % 4),
                    &fs::read(&p).unwrap(),
                ),
                3 => write(
                    &src,
                    &format!("n{}/m{i:02}", next(3)),
                    &noise(seed * 7 + i, 100),
                ),
                _ => {}
            }
        }
        if next(2) == 0 {
            fs::remove_dir_all(src.join("d3")).unwrap();
        }
        let last = scan(&src, &o, None).unwrap();
        let change = diff(&first.manifest, &last.manifest);
        let root = (last.manifest.root_mode, last.manifest.root_mtime_ns);
        changed
            .apply_change(
                change,
                root,
                last.manifest.skipped.clone(),
                &digest(&last.manifest),
                &limits,
            )
            .unwrap();
        whole.update(last.manifest.clone(), &limits).unwrap();
        assert_eq!(&changed.manifest(), &last.manifest, "seed {seed}");
        assert_eq!(
            sorted(changed.missing()),
            sorted(whole.missing()),
            "seed {seed}"
        );
        let source = ChunkIndex::from_scan(&last);
        for h in changed.missing() {
            changed.put_chunk(&h, &source.read(&h).unwrap()).unwrap();
        }
        let landed = land(changed);
        assert_same(&listing(&src), &listing(&landed));
    }
}
