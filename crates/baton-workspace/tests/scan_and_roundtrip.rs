//! Selection rules on a real tree, and the full scan → stage → finish → apply round trip.

mod common;

use std::collections::BTreeMap;
use std::fs;

use baton_proto::workspace::{EntryKind, SkipReason};
use baton_workspace::{ConflictPolicy, IgnoredFiles, scan};
use common::*;

fn paths(s: &baton_workspace::Scanned) -> Vec<&str> {
    s.manifest.entries.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn skip_policy_selects_what_git_would_track_plus_git_dir() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("proj");
    fs::create_dir(&root).unwrap();
    rich_tree(&root);
    let s = scan(&root, &opts(IgnoredFiles::Skip), None).unwrap();
    let p = paths(&s);
    for want in [
        ".gitignore",
        "README.md",
        "src/main.rs",
        "src/.hidden",
        "src/deep/er/mod.rs",
        "bin/run.sh",
        "bin/main-link",
        "src-link",
        "data/big.bin",
        "data/empty.txt",
        "empty",
        "empty/nested",
        ".git",
        ".git/HEAD",
        ".git/logs/x.log",
    ] {
        assert!(p.contains(&want), "{want} should travel: {p:?}");
    }
    for gone in [
        ".env",
        "app/.env",
        "node_modules",
        "debug.log",
        "bin/escape",
        "absolute",
    ] {
        assert!(!p.contains(&gone), "{gone} should stay behind");
    }
    let skipped: BTreeMap<_, _> = s
        .manifest
        .skipped
        .iter()
        .map(|e| (e.path.as_str(), e.reason))
        .collect();
    assert_eq!(skipped.get("bin/escape"), Some(&SkipReason::SymlinkOutside));
    assert_eq!(skipped.get("absolute"), Some(&SkipReason::SymlinkAbsolute));

    let m = &s.manifest;
    assert_eq!(m.get("bin/run.sh").unwrap().mode & 0o777, 0o755);
    assert_eq!(
        m.get("README.md").unwrap().mtime_ns,
        1_600_000_000_123_456_789
    );
    match &m.get("bin/main-link").unwrap().kind {
        EntryKind::Symlink { target } => assert_eq!(target, "../src/main.rs"),
        k => panic!("not a link: {k:?}"),
    }
    let big = m.get("data/big.bin").unwrap().file().unwrap();
    assert!(big.chunks.len() > 5, "{} chunks", big.chunks.len());
    assert_eq!(
        big.hash.0,
        *blake3::hash(&fs::read(root.join("data/big.bin")).unwrap()).as_bytes()
    );
    baton_workspace::validate(m, &Default::default()).unwrap();

    let counted = baton_workspace::measure(&root, &IgnoredFiles::Skip).unwrap();
    assert_eq!(counted.entries, m.entries.len() as u64);
    assert_eq!(
        (counted.files, counted.bytes),
        (m.file_count(), m.total_bytes())
    );
    assert_eq!(counted.skipped, m.skipped.len() as u64);
}

#[test]
fn include_and_glob_policies() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("proj");
    fs::create_dir(&root).unwrap();
    rich_tree(&root);

    let all = scan(&root, &opts(IgnoredFiles::Include), None).unwrap();
    let p = paths(&all);
    for want in [
        ".env",
        "app/.env",
        "node_modules/pkg/index.js",
        "debug.log",
        ".git/HEAD",
    ] {
        assert!(p.contains(&want), "include: {want} missing");
    }

    let env = scan(&root, &opts(IgnoredFiles::Globs(vec![".env".into()])), None).unwrap();
    let p = paths(&env);
    assert!(p.contains(&".env") && p.contains(&"app/.env"), "{p:?}");
    assert!(!p.iter().any(|p| p.starts_with("node_modules")));
    assert!(!p.contains(&"debug.log"));
    assert!(p.contains(&"src/main.rs") && p.contains(&".git/HEAD"));

    let nm = scan(
        &root,
        &opts(IgnoredFiles::Globs(vec![
            "node_modules".into(),
            "*.log".into(),
        ])),
        None,
    )
    .unwrap();
    let p = paths(&nm);
    for want in [
        "node_modules",
        "node_modules/pkg",
        "node_modules/pkg/index.js",
        "node_modules/pkg/package.json",
        "debug.log",
        "README.md",
    ] {
        assert!(p.contains(&want), "globs: {want} missing: {p:?}");
    }
    assert!(!p.contains(&".env"));

    let bad = scan(&root, &opts(IgnoredFiles::Globs(vec!["a{".into()])), None).unwrap_err();
    assert_eq!(bad.code().as_str(), "bad_request");
}

#[test]
fn round_trip_reproduces_the_tree() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("proj");
    fs::create_dir(&root).unwrap();
    rich_tree(&root);
    chmod(&root, "src", 0o750);
    set_mtime(&root, "", 1_300_000_000, 99);

    let dest = t.path().join("elsewhere/proj");
    fs::create_dir(t.path().join("elsewhere")).unwrap();
    let s = scan(&root, &opts(IgnoredFiles::Include), None).unwrap();
    let staged = stage_from(&s, &dest, "t1", None);
    let applied = staged.apply(ConflictPolicy::Sibling).unwrap();
    assert_eq!(applied.path(), dest);
    assert!(applied.backup().is_none());
    assert_eq!(applied.commit().unwrap(), dest);

    let mut want = listing(&root);
    want.remove("bin/escape");
    want.remove("absolute");
    assert_same(&want, &listing(&dest));
    let (a, b) = (
        fs::symlink_metadata(&root).unwrap(),
        fs::symlink_metadata(&dest).unwrap(),
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777);
    assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()));
    // Nothing of ours is left beside it.
    let names: Vec<_> = fs::read_dir(t.path().join("elsewhere"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["proj"]);
}

#[test]
fn skip_policy_round_trip_matches_the_selection() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("proj");
    fs::create_dir(&root).unwrap();
    rich_tree(&root);
    let dest = t.path().join("copy");
    let landed = transfer(&root, &dest, "t2", ConflictPolicy::Sibling);
    assert_eq!(landed, dest);
    let mut want = listing(&root);
    want.retain(|k, _| {
        !(k == ".env"
            || k == "app/.env"
            || k == "debug.log"
            || k == "bin/escape"
            || k == "absolute"
            || k.starts_with("node_modules"))
    });
    assert_same(&want, &listing(&dest));
}
