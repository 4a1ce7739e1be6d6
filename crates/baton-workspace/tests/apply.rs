//! Conflict policies, commit, rollback and crash leftovers (DESIGN §3.5): an existing destination
//! is touched only under `replace`, and then restored exactly on rollback.

mod common;

use std::fs;
use std::path::Path;

use baton_workspace::{
    ConflictPolicy, IgnoredFiles, Leftover, Limits, Stager, leftovers, scan, staging_dir,
};
use common::*;

fn source(root: &Path) {
    write(root, "new.txt", b"from the source\n");
    write(root, "shared.txt", b"source version\n");
    write(root, "dir/inner.txt", b"inner\n");
}

fn existing(dest: &Path) {
    write(dest, "old.txt", b"only at the destination\n");
    write(dest, "shared.txt", b"destination version\n");
    write(dest, "ro/locked.txt", b"locked\n");
    chmod(dest, "ro/locked.txt", 0o400);
    chmod(dest, "ro", 0o555);
    set_mtime(dest, "old.txt", 1_234_567_890, 42);
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn sibling_never_touches_the_existing_tree() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("w/proj"));
    source(&src);
    existing(&dest);
    let before = listing(&dest);

    let first = transfer(&src, &dest, "s1", ConflictPolicy::Sibling);
    assert_eq!(first, t.path().join("w/proj-handoff"));
    let second = transfer(&src, &dest, "s2", ConflictPolicy::Sibling);
    assert_eq!(second, t.path().join("w/proj-handoff-2"));
    assert_same(&before, &listing(&dest));
    assert_eq!(
        fs::read(first.join("new.txt")).unwrap(),
        b"from the source\n"
    );
    assert_eq!(
        names(&t.path().join("w")),
        ["proj", "proj-handoff", "proj-handoff-2"]
    );
}

#[test]
fn replace_keeps_a_backup_until_commit() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("w/proj"));
    source(&src);
    existing(&dest);
    let before = listing(&dest);

    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let applied = stage_from(&s, &dest, "r1", None)
        .apply(ConflictPolicy::Replace)
        .unwrap();
    assert_eq!(applied.path(), dest);
    let backup = applied.backup().unwrap().to_path_buf();
    assert_eq!(backup, t.path().join("w/proj.baton-backup-r1"));
    assert_same(&before, &listing(&backup));
    assert_eq!(
        fs::read(dest.join("shared.txt")).unwrap(),
        b"source version\n"
    );
    assert!(!dest.join("old.txt").exists());

    assert_eq!(applied.commit().unwrap(), dest);
    assert!(!backup.exists());
    assert_eq!(names(&t.path().join("w")), ["proj"]);
}

#[test]
fn rollback_restores_the_destination_exactly() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("w/proj"));
    source(&src);
    existing(&dest);
    let before = listing(&dest);

    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let applied = stage_from(&s, &dest, "r2", None)
        .apply(ConflictPolicy::Replace)
        .unwrap();
    assert!(dest.join("new.txt").exists());
    applied.rollback().unwrap();
    assert_same(&before, &listing(&dest));
    assert_eq!(names(&t.path().join("w")), ["proj"]);

    // Sibling rollback removes only the sibling.
    let applied = stage_from(&s, &dest, "r3", None)
        .apply(ConflictPolicy::Sibling)
        .unwrap();
    assert!(applied.path().ends_with("proj-handoff"));
    applied.rollback().unwrap();
    assert_same(&before, &listing(&dest));
    assert_eq!(names(&t.path().join("w")), ["proj"]);
}

#[test]
fn absent_and_empty_destinations() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    source(&src);
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();

    let absent = t.path().join("absent");
    let applied = stage_from(&s, &absent, "a1", None)
        .apply(ConflictPolicy::Replace)
        .unwrap();
    assert!(applied.backup().is_none());
    applied.rollback().unwrap();
    assert!(!absent.exists());

    let empty = t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    set_mtime(t.path(), "empty", 1_000_000_000, 1);
    let before = fs::symlink_metadata(&empty).unwrap();
    let applied = stage_from(&s, &empty, "e1", None)
        .apply(ConflictPolicy::Sibling)
        .unwrap();
    assert_eq!(
        applied.path(),
        empty,
        "an empty directory is not a conflict"
    );
    applied.rollback().unwrap();
    use std::os::unix::fs::MetadataExt;
    let after = fs::symlink_metadata(&empty).unwrap();
    assert_eq!(before.ino(), after.ino());
    assert_eq!(after.mtime(), 1_000_000_000);
    assert!(names(&empty).is_empty());
}

#[test]
fn crash_leftovers_are_found_and_settled() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("w/proj"));
    source(&src);
    existing(&dest);
    let before = listing(&dest);
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();

    // A partial staging directory and an apply that never committed, as a crash leaves them.
    let partial = Stager::create(&dest, "p1", s.manifest.clone(), &Limits::default()).unwrap();
    drop(partial);
    let applied = stage_from(&s, &dest, "c1", None)
        .apply(ConflictPolicy::Replace)
        .unwrap();
    drop(applied);

    let mut found = leftovers(&dest).unwrap();
    found.sort_by(|a, b| a.transfer_id().cmp(b.transfer_id()));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(matches!(&found[0], Leftover::Applied(a) if a.transfer_id() == "c1"));
    assert!(matches!(&found[1], Leftover::Staging { id, .. } if id == "p1"));
    // The stager refuses to reuse an applied transfer's directory.
    let again = Stager::create(&dest, "c1", s.manifest.clone(), &Limits::default()).unwrap_err();
    assert_eq!(again.code().as_str(), "workspace_conflict");
    for l in found {
        l.rollback().unwrap();
    }
    assert_same(&before, &listing(&dest));
    assert_eq!(names(&t.path().join("w")), ["proj"]);
    assert!(!staging_dir(&dest, "p1").unwrap().exists());
}

#[test]
fn interrupted_apply_is_rolled_forward_by_commit() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("w/proj"));
    source(&src);
    existing(&dest);
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let applied = stage_from(&s, &dest, "f1", None)
        .apply(ConflictPolicy::Replace)
        .unwrap();
    let backup = applied.backup().unwrap().to_path_buf();
    // Simulate a crash between the two renames: the new tree back in staging, dest absent.
    drop(applied);
    let staging = staging_dir(&dest, "f1").unwrap();
    fs::rename(&dest, staging.join("tree")).unwrap();
    assert!(!dest.exists() && backup.exists());

    let Some(Leftover::Applied(a)) = leftovers(&dest).unwrap().into_iter().next() else {
        panic!("apply record not found");
    };
    assert_eq!(a.commit().unwrap(), dest);
    assert_eq!(
        fs::read(dest.join("shared.txt")).unwrap(),
        b"source version\n"
    );
    assert!(!backup.exists() && !staging.exists());
}

#[test]
fn stager_refuses_a_missing_parent_and_bad_ids() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    source(&src);
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let e = Stager::create(
        &t.path().join("no/such/proj"),
        "x",
        s.manifest.clone(),
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(e.code().as_str(), "target_path_missing");
    for bad in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
        let e = Stager::create(
            &t.path().join("proj"),
            bad,
            s.manifest.clone(),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(e.code().as_str(), "bad_request", "{bad:?}");
    }
}

#[test]
fn committed_leftovers_are_rolled_forward_and_their_backups_removed() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("w/proj"));
    source(&src);
    existing(&dest);
    // The old tree holds a directory its owner cannot write (as Go's module cache makes them);
    // that only stops a plain `remove_dir_all` without root, which this test may well have.
    let locked = dest.join("pkg/mod");
    fs::create_dir_all(&locked).unwrap();
    fs::write(locked.join("go.sum"), b"x").unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let applied = stage_from(&s, &dest, "c1", None)
        .apply(ConflictPolicy::Replace)
        .unwrap();
    let backup = applied.backup().unwrap().to_path_buf();
    // A crash after apply: the apply record, the new tree in place, the backup beside it.
    drop(applied);
    let found = leftovers(&dest).unwrap();
    assert_eq!(found.len(), 1);
    for l in found {
        l.commit().unwrap();
    }
    assert!(!backup.exists(), "the backup is removed");
    assert!(!staging_dir(&dest, "c1").unwrap().exists());
    assert_eq!(
        fs::read(dest.join("shared.txt")).unwrap(),
        b"source version\n"
    );
    // An orphan backup (its staging directory gone) is removed as well.
    let orphan = dest.with_file_name("proj.baton-backup-c2");
    fs::create_dir_all(orphan.join("ro")).unwrap();
    fs::set_permissions(orphan.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    let found = leftovers(&dest).unwrap();
    assert!(matches!(found.as_slice(), [Leftover::Backup { .. }]));
    for l in found {
        l.commit().unwrap();
    }
    assert!(!orphan.exists());
}
