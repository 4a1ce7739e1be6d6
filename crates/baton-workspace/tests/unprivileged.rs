//! Staging as an ordinary user: files are sealed with their own mode (read-only ones too), and a
//! stager reopened on that staging (a resume), or given a later manifest that changes such a file,
//! must still write it. Root ignores file modes, so when the tests run as root this one runs its
//! body again in a child process as `nobody`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use baton_workspace::{IgnoredFiles, Limits, Stager, scan};
use common::*;

/// Set in the child process: the directory it works in.
const CHILD_DIR: &str = "BATON_TEST_UNPRIVILEGED_DIR";
/// Set to 1 (CI does) to fail instead of skipping when the child cannot be started as `nobody`.
const REQUIRE: &str = "BATON_REQUIRE_UNPRIVILEGED";
const NOBODY: u32 = 65534;

fn stage_all(st: &mut Stager, src: &baton_workspace::Scanned) {
    let index = baton_workspace::ChunkIndex::from_scan(src);
    for h in st.missing() {
        st.put_chunk(&h, &index.read(&h).unwrap()).unwrap();
    }
}

/// The body: a read-only file is staged and sealed 0444, then the stager is reopened (a resume)
/// and moved to a manifest where that file changed; both must write it.
fn body(dir: &Path) {
    let (src, dest) = (dir.join("src"), dir.join("dest"));
    write(&src, "ro.txt", b"read-only once sealed");
    write(&src, "big.bin", &noise(4, 600_000));
    chmod(&src, "ro.txt", 0o444);
    chmod(&src, "big.bin", 0o444);
    let s = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    let mut st = Stager::create(&dest, "np", s.manifest.clone(), &Limits::default()).unwrap();
    stage_all(&mut st, &s);
    drop(st);
    let staged = baton_workspace::staging_dir(&dest, "np")
        .unwrap()
        .join("tree/ro.txt");
    let mode = std::fs::metadata(&staged).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o444, "sealed with its own mode");

    // Resumed: every file is there and read-only.
    let mut st = Stager::create(&dest, "np", s.manifest.clone(), &Limits::default())
        .unwrap_or_else(|e| panic!("a resume over read-only staged files: {e}"));
    // The next pass: both files changed on the source.
    chmod(&src, "ro.txt", 0o644);
    chmod(&src, "big.bin", 0o644);
    write(&src, "ro.txt", b"changed after the pre-copy");
    let mut big = noise(4, 600_000);
    big[300_000] ^= 1;
    write(&src, "big.bin", &big);
    chmod(&src, "ro.txt", 0o444);
    chmod(&src, "big.bin", 0o444);
    let later = scan(&src, &opts(IgnoredFiles::Skip), None).unwrap();
    st.update(later.manifest.clone(), &Limits::default())
        .unwrap_or_else(|e| panic!("moving to a manifest that changes read-only files: {e}"));
    stage_all(&mut st, &later);
    let at = land(st);
    assert_eq!(
        std::fs::read(at.join("ro.txt")).unwrap(),
        b"changed after the pre-copy"
    );
    assert_eq!(std::fs::read(at.join("big.bin")).unwrap(), big);
}

#[test]
fn read_only_staged_files_are_rewritten_on_resume_and_in_later_passes() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        body(Path::new(&dir));
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let t = tempfile::tempdir().unwrap();
        body(t.path());
        return;
    }
    let t = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(t.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    // A copy of this test binary inside the directory nobody owns: the build directory may sit
    // where nobody cannot reach it (under a 0700 home, say).
    let exe = t.path().join("unprivileged-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&exe)
        .current_dir(t.path())
        .args([
            "read_only_staged_files_are_rewritten_on_resume_and_in_later_passes",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_DIR, t.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            let why = format!("cannot run {} as nobody: {e}", exe.display());
            if std::env::var(REQUIRE).as_deref() == Ok("1") {
                panic!("{why} ({REQUIRE}=1)");
            }
            eprintln!("skipped: {why}; set {REQUIRE}=1 to fail instead");
            return;
        }
    };
    assert!(
        out.status.success(),
        "the unprivileged run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The child ran the body: its test harness reports one passed test.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
