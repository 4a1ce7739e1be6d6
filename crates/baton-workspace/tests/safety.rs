//! Source and destination guards against a fake home directory: `/`, home, anything containing
//! it or resolving to it, through `..` or symlinks, is refused with `unsafe_workspace_path`.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use baton_workspace::{DestinationState, check_destination, check_source, destination_state};

struct Fixture {
    _t: tempfile::TempDir,
    base: PathBuf,
    home: PathBuf,
}

/// `<base>/home/me` with a project, a file, and symlinks to home, to `/` and to the project.
fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(t.path()).unwrap();
    let home = base.join("home/me");
    fs::create_dir_all(home.join("proj/sub")).unwrap();
    fs::write(home.join("notes.txt"), b"x").unwrap();
    symlink(&home, base.join("to-home")).unwrap();
    symlink("/", base.join("to-root")).unwrap();
    symlink(home.join("proj"), base.join("to-proj")).unwrap();
    Fixture { _t: t, base, home }
}

fn refused_source(path: &Path, home: &Path, word: &str) {
    let e = check_source(path, Some(home)).expect_err(&format!("{} accepted", path.display()));
    assert_eq!(e.code().as_str(), "unsafe_workspace_path");
    let msg = e.to_string();
    assert!(msg.contains(word), "{}: {msg}", path.display());
    assert!(
        e.to_api().message.contains("not / or your home directory"),
        "the next step is part of the message"
    );
}

#[test]
fn unsafe_sources_are_refused() {
    let f = fixture();
    let h = f.home.as_path();
    refused_source(Path::new("/"), h, "root");
    refused_source(Path::new("/.."), h, "root");
    refused_source(Path::new(""), h, "empty");
    refused_source(Path::new("~"), h, "`~`");
    refused_source(Path::new("~/proj"), h, "`~`");
    refused_source(Path::new("proj"), h, "relative");
    refused_source(h, h, "home directory");
    refused_source(&f.home.join("proj/.."), h, "home directory");
    refused_source(&f.home.join("proj/sub/../.."), h, "home directory");
    refused_source(&f.base.join("to-home"), h, "home directory");
    refused_source(&f.base.join("to-root"), h, "root");
    refused_source(&f.base.join("home"), h, "contains your home");
    refused_source(&f.base, h, "contains your home");
    refused_source(&f.home.join("notes.txt"), h, "not a directory");
    refused_source(&f.home.join("missing"), h, "does not exist");
}

#[test]
fn a_project_is_accepted_and_canonicalised() {
    let f = fixture();
    let proj = f.home.join("proj");
    assert_eq!(check_source(&proj, Some(&f.home)).unwrap(), proj);
    assert_eq!(
        check_source(&f.base.join("to-proj"), Some(&f.home)).unwrap(),
        proj
    );
    assert_eq!(
        check_source(&proj.join("sub/.."), Some(&f.home)).unwrap(),
        proj
    );
    // Home given through a symlink is still recognised.
    refused_source(&f.home, &f.base.join("to-home"), "home directory");
}

#[test]
fn unsafe_destinations_are_refused() {
    let f = fixture();
    let h = Some(f.home.as_path());
    for (p, word) in [
        (PathBuf::from("/"), "root"),
        (PathBuf::from("rel/dir"), "relative"),
        (PathBuf::from("~/x"), "`~`"),
        (f.home.clone(), "home directory"),
        (f.base.join("home"), "contains your home"),
        (f.home.join("proj/../x"), "`..`"),
        (f.base.join("to-home"), "symlink"),
        (f.home.join("notes.txt/inner"), "not a directory"),
    ] {
        let e = check_destination(&p, h).expect_err(&format!("{} accepted", p.display()));
        assert_eq!(e.code().as_str(), "unsafe_workspace_path");
        assert!(e.to_string().contains(word), "{}: {e}", p.display());
    }
}

#[test]
fn destinations_that_may_be_made() {
    let f = fixture();
    let h = Some(f.home.as_path());
    let deep = f.home.join("a/b/c/proj");
    assert_eq!(check_destination(&deep, h).unwrap(), deep);
    let existing = f.home.join("proj");
    assert_eq!(check_destination(&existing, h).unwrap(), existing);
    // The existing part is resolved: through a symlinked parent it lands in the real place.
    assert_eq!(
        check_destination(&f.base.join("to-proj/new"), h).unwrap(),
        existing.join("new")
    );
    assert_eq!(
        destination_state(&f.home.join("nope")).unwrap(),
        DestinationState::Absent
    );
    assert_eq!(
        destination_state(&f.home.join("proj/sub")).unwrap(),
        DestinationState::Empty
    );
    assert_eq!(
        destination_state(&existing).unwrap(),
        DestinationState::Exists
    );
}
