//! Manifests from the network are hostile: every broken rule is refused, naming the path, before
//! anything is created.

use baton_proto::workspace::{
    ChunkParams, ChunkRef, ContentHash, EntryKind, FileData, WorkspaceEntry, WorkspaceManifest,
};
use baton_workspace::validate::{check_relative_path, symlink_stays_inside};
use baton_workspace::{Limits, Stager, validate};
use proptest::prelude::*;

fn dir(path: &str) -> WorkspaceEntry {
    WorkspaceEntry {
        path: path.into(),
        mode: 0o755,
        mtime_ns: 0,
        kind: EntryKind::Dir,
    }
}

fn file(path: &str, lens: &[u32]) -> WorkspaceEntry {
    let size = lens.iter().map(|l| u64::from(*l)).sum();
    WorkspaceEntry {
        path: path.into(),
        mode: 0o644,
        mtime_ns: 0,
        kind: EntryKind::File(FileData {
            size,
            hash: ContentHash([1; 32]),
            chunks: lens
                .iter()
                .enumerate()
                .map(|(i, l)| ChunkRef {
                    hash: ContentHash([i as u8 + 2; 32]),
                    len: *l,
                })
                .collect(),
        }),
    }
}

fn link(path: &str, target: &str) -> WorkspaceEntry {
    WorkspaceEntry {
        path: path.into(),
        mode: 0o777,
        mtime_ns: 0,
        kind: EntryKind::Symlink {
            target: target.into(),
        },
    }
}

fn manifest(entries: Vec<WorkspaceEntry>) -> WorkspaceManifest {
    let mut m = WorkspaceManifest::new(ChunkParams::DEFAULT);
    m.entries = entries;
    m
}

/// Asserts `m` is refused with `code` and a message naming `path` and containing `word`.
fn refused(m: &WorkspaceManifest, code: &str, path: &str, word: &str) {
    refused_with(m, &Limits::default(), code, path, word);
}

fn refused_with(m: &WorkspaceManifest, limits: &Limits, code: &str, path: &str, word: &str) {
    let e = validate(m, limits).expect_err("should be refused");
    let msg = e.to_string();
    assert_eq!(e.code().as_str(), code, "{msg}");
    assert!(msg.contains(path), "message should name {path:?}: {msg}");
    assert!(msg.contains(word), "message should say {word:?}: {msg}");
}

#[test]
fn a_valid_manifest_passes() {
    let m = manifest(vec![
        dir("a"),
        file("a/f", &[16384, 16384, 100]),
        link("a/l", "../b"),
        file("b", &[]),
    ]);
    validate(&m, &Limits::default()).unwrap();
}

#[test]
fn bad_paths() {
    let inv = "invalid_workspace_manifest";
    refused(&manifest(vec![file("a/../b", &[1])]), inv, "a/../b", "`..`");
    refused(&manifest(vec![file("..", &[1])]), inv, "..", "`..`");
    refused(
        &manifest(vec![file("/etc/passwd", &[1])]),
        inv,
        "/etc/passwd",
        "absolute",
    );
    refused(
        &manifest(vec![file("", &[1])]),
        inv,
        "manifest",
        "empty path",
    );
    refused(&manifest(vec![file("./a", &[1])]), inv, "./a", "`.`");
    refused(
        &manifest(vec![dir("a"), file("a//b", &[1])]),
        inv,
        "a//b",
        "empty",
    );
    refused(&manifest(vec![dir("a/")]), inv, "a/", "empty");
    refused(&manifest(vec![file("a\0b", &[1])]), inv, "a", "NUL");
    refused(
        &manifest(vec![file(&"n".repeat(300), &[1])]),
        inv,
        "nnnn",
        "longer",
    );
}

#[test]
fn bad_structure() {
    let inv = "invalid_workspace_manifest";
    refused(
        &manifest(vec![file("a", &[1]), file("a", &[1])]),
        inv,
        "a",
        "duplicate",
    );
    refused(
        &manifest(vec![file("b", &[1]), file("a", &[1])]),
        inv,
        "a",
        "out of order",
    );
    refused(
        &manifest(vec![dir("d"), link("l", "d"), file("l/x", &[1])]),
        inv,
        "l/x",
        "symlink l",
    );
    refused(
        &manifest(vec![file("f", &[1]), file("f/x", &[1])]),
        inv,
        "f/x",
        "which is a file",
    );
    refused(
        &manifest(vec![file("missing/x", &[1])]),
        inv,
        "missing/x",
        "not listed",
    );
    let mut m = manifest(vec![file("m", &[1])]);
    m.entries[0].mode = 0o104_755;
    refused(&m, inv, "m", "mode");
}

#[test]
fn bad_symlinks() {
    let inv = "invalid_workspace_manifest";
    refused(&manifest(vec![link("l", "/etc")]), inv, "l", "absolute");
    refused(
        &manifest(vec![dir("d"), link("d/l", "../..")]),
        inv,
        "d/l",
        "leaves",
    );
    refused(&manifest(vec![link("l", "a/../../x")]), inv, "l", "leaves");
    refused(&manifest(vec![link("l", "")]), inv, "l", "empty target");
}

#[test]
fn bad_chunks() {
    let inv = "invalid_workspace_manifest";
    let mut m = manifest(vec![file("f", &[16384, 5])]);
    if let EntryKind::File(f) = &mut m.entries[0].kind {
        f.size = 11;
    }
    refused(&m, inv, "f", "sum to 16389");
    refused(
        &manifest(vec![file("f", &[300 * 1024])]),
        inv,
        "f",
        "above max_size",
    );
    refused(
        &manifest(vec![file("f", &[100, 16384])]),
        inv,
        "f",
        "below min_size",
    );
    refused(&manifest(vec![file("f", &[0])]), inv, "f", "empty");
    let mut m = manifest(vec![file("f", &[])]);
    if let EntryKind::File(f) = &mut m.entries[0].kind {
        f.size = 3;
    }
    refused(&m, inv, "f", "no chunks");
}

#[test]
fn bad_header_and_limits() {
    let inv = "invalid_workspace_manifest";
    let mut m = manifest(vec![file("f", &[1])]);
    m.version = 2;
    refused(&m, inv, "manifest", "version 2");
    for (params, word) in [
        (
            ChunkParams {
                max_size: 64 * 1024 * 1024,
                ..ChunkParams::DEFAULT
            },
            "max_size",
        ),
        (
            ChunkParams {
                min_size: 16385,
                ..ChunkParams::DEFAULT
            },
            "even",
        ),
        (
            ChunkParams {
                normalization: 9,
                ..ChunkParams::DEFAULT
            },
            "normalization",
        ),
    ] {
        let mut m = manifest(vec![]);
        m.params = params;
        refused(&m, inv, "manifest", word);
    }
    let unknown = r#"{"version":1,"params":{"algorithm":"rabin","min_size":1,"avg_size":2,
        "max_size":3,"normalization":1},"root_mode":493,"root_mtime_ns":0,"entries":[]}"#;
    assert!(serde_json::from_str::<WorkspaceManifest>(unknown).is_err());

    let few = Limits {
        max_entries: 2,
        ..Limits::default()
    };
    let m = manifest(vec![file("a", &[1]), file("b", &[1]), file("c", &[1])]);
    refused_with(&m, &few, "transfer_too_large", "3 entries", "limit");
    let small = Limits {
        max_total_bytes: 1000,
        ..Limits::default()
    };
    let m = manifest(vec![file("a", &[600]), file("b", &[600])]);
    refused_with(&m, &small, "transfer_too_large", "1000", "limit");
}

#[test]
fn the_stager_validates_before_creating_anything() {
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("proj");
    let m = manifest(vec![file("../escape", &[1])]);
    let e = Stager::create(&dest, "h", m, &Limits::default()).unwrap_err();
    assert_eq!(e.code().as_str(), "invalid_workspace_manifest");
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z.]{1,4}",
        1 => Just("..".to_string()),
        1 => Just(".".to_string()),
        1 => Just(String::new()),
        1 => Just("x\0y".to_string()),
    ]
}

fn raw_path() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.1),
        prop::collection::vec(component(), 1..6),
    )
        .prop_map(|(abs, parts)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/")))
}

proptest! {
    /// An accepted path joins under any root as plain names only, so it cannot escape it.
    #[test]
    fn accepted_paths_stay_under_the_root(p in raw_path()) {
        use std::path::{Component, Path};
        let root = Path::new("/staging/tree");
        let ok = check_relative_path(&p).is_ok();
        let parts: Vec<&str> = p.split('/').collect();
        let plain = !p.starts_with('/')
            && !p.contains('\0')
            && parts.iter().all(|c| !c.is_empty() && *c != "." && *c != "..");
        prop_assert_eq!(ok, plain);
        if ok {
            let joined = root.join(&p);
            prop_assert!(joined.starts_with(root));
            let rest: Vec<_> = joined.strip_prefix(root).unwrap().components().collect();
            prop_assert_eq!(rest.len(), parts.len());
            prop_assert!(rest.iter().all(|c| matches!(c, Component::Normal(_))));
        }
    }

    /// The lexical symlink rule agrees with resolving `..` by popping a stack of names.
    #[test]
    fn symlink_rule_matches_a_stack_walk(
        depth in 0usize..4,
        target in prop::collection::vec(prop_oneof![Just(".."), Just("."), Just("n")], 1..7),
    ) {
        let link = (0..depth).map(|_| "d").chain(["l"]).collect::<Vec<_>>().join("/");
        let target = target.join("/");
        let mut stack = depth as i64;
        let mut escaped = false;
        for c in target.split('/') {
            match c {
                ".." => { stack -= 1; escaped |= stack < 0; }
                "." => {}
                _ => stack += 1,
            }
        }
        prop_assert_eq!(symlink_stays_inside(&link, &target), !escaped);
    }

    /// Well-formed manifests of random trees pass and survive a JSON round trip; breaking one
    /// path with `..` makes them fail, naming it.
    #[test]
    fn random_trees_validate(paths in prop::collection::btree_set("[a-c]{1,2}(/[a-c]{1,2}){0,3}", 1..20)) {
        use std::collections::BTreeMap;
        let mut kinds: BTreeMap<String, bool> = BTreeMap::new();
        for p in &paths {
            let parts: Vec<&str> = p.split('/').collect();
            for i in 1..parts.len() {
                kinds.insert(parts[..i].join("/"), true);
            }
        }
        for p in &paths {
            kinds.entry(p.clone()).or_insert(false);
        }
        let entries: Vec<_> = kinds
            .iter()
            .map(|(p, is_dir)| if *is_dir { dir(p) } else { file(p, &[10]) })
            .collect();
        let m = manifest(entries);
        prop_assert!(validate(&m, &Limits::default()).is_ok());
        let back: WorkspaceManifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        prop_assert_eq!(&back, &m);
        let mut bad = m.clone();
        let last = bad.entries.len() - 1;
        bad.entries[last].path = format!("{}/../x", bad.entries[last].path);
        let e = validate(&bad, &Limits::default()).unwrap_err();
        prop_assert!(e.to_string().contains(&bad.entries[last].path));
    }
}
