//! Fixtures shared by the integration tests: trees on disk, a full listing to compare trees, and
//! the whole scan → stage → finish path without a network.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use baton_workspace::{
    ChunkIndex, ConflictPolicy, IgnoredFiles, Limits, ScanOptions, Scanned, StagedTree, Stager,
    scan,
};

/// Deterministic pseudo-random bytes (xorshift).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

pub fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets a distinctive mtime so that a test can tell it was carried over.
pub fn set_mtime(root: &Path, rel: &str, secs: i64, nanos: i64) {
    let p = root.join(rel);
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let t = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        },
    ];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", p.display());
}

/// True when a `git` binary can make a real repository here.
pub fn have_git() -> bool {
    Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A workspace with one of everything: nested dirs, an executable, an empty dir, symlinks inside
/// and outside, ignored `node_modules/` and `.env`, a multi-chunk file, and `.git/`.
pub fn rich_tree(root: &Path) {
    write(root, "README.md", b"# project\n");
    write(root, "src/main.rs", b"fn main() {}\n");
    write(root, "src/deep/er/mod.rs", b"pub mod x;\n");
    write(root, "bin/run.sh", b"#!/bin/sh\necho hi\n");
    chmod(root, "bin/run.sh", 0o755);
    write(root, "data/big.bin", &noise(1, 1_500_000));
    write(root, "data/empty.txt", b"");
    fs::create_dir_all(root.join("empty/nested")).unwrap();
    symlink("../src/main.rs", root.join("bin/main-link")).unwrap();
    symlink("src", root.join("src-link")).unwrap();
    symlink("../../outside", root.join("bin/escape")).unwrap();
    symlink("/etc/hostname", root.join("absolute")).unwrap();
    write(root, ".gitignore", b"node_modules/\n.env\n*.log\n");
    write(root, ".env", b"SECRET=1\n");
    write(root, "app/.env", b"APP=1\n");
    write(root, "node_modules/pkg/index.js", b"module.exports = 1;\n");
    write(root, "node_modules/pkg/package.json", b"{}\n");
    write(root, "debug.log", b"log\n");
    write(root, "src/.hidden", b"dotfile\n");
    if have_git() {
        let ok = Command::new("git")
            .args(["init", "-q"])
            .current_dir(root)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git init");
    } else {
        println!("git not found: making .git by hand");
        write(root, ".git/HEAD", b"ref: refs/heads/main\n");
        write(root, ".git/config", b"[core]\n");
        fs::create_dir_all(root.join(".git/objects/pack")).unwrap();
    }
    // A pattern that would match inside .git if rules applied there: .git travels whole anyway.
    write(root, ".git/logs/x.log", b"git log file\n");
    set_mtime(root, "README.md", 1_600_000_000, 123_456_789);
    set_mtime(root, "empty/nested", 1_500_000_000, 5);
    set_mtime(root, "src/deep", 1_400_000_000, 7);
}

/// What a tree holds, path by path: kind, mode, mtime, content or target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: char,
    pub mode: u32,
    pub mtime: (i64, i64),
    pub content: Vec<u8>,
}

/// Lists `root` recursively without following symlinks.
pub fn listing(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
        let (kind, content) = if md.is_dir() {
            ('d', Vec::new())
        } else if md.file_type().is_symlink() {
            (
                'l',
                fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else {
            ('f', fs::read(&p).unwrap())
        };
        let mode = if kind == 'l' { 0 } else { md.mode() & 0o7777 };
        out.insert(
            rel,
            Node {
                kind,
                mode,
                mtime: (md.mtime(), md.mtime_nsec()),
                content,
            },
        );
        if kind == 'd' {
            walk(root, &p, out);
        }
    }
}

/// Asserts two listings are equal, naming the first difference.
pub fn assert_same(a: &BTreeMap<String, Node>, b: &BTreeMap<String, Node>) {
    for (k, v) in a {
        match b.get(k) {
            None => panic!("{k} missing on the right"),
            Some(w) => assert_eq!(v, w, "{k} differs"),
        }
    }
    for k in b.keys() {
        assert!(a.contains_key(k), "{k} only on the right");
    }
}

pub fn opts(ignored: IgnoredFiles) -> ScanOptions {
    ScanOptions {
        ignored,
        threads: 2,
        ..ScanOptions::default()
    }
}

/// Stages `src` (a scan of its root) for `dest`, taking missing chunks straight from the source
/// tree as a transport would, and finishes.
pub fn stage_from(src: &Scanned, dest: &Path, id: &str, local: Option<&ChunkIndex>) -> StagedTree {
    let mut st = Stager::create(dest, id, src.manifest.clone(), &Limits::default()).unwrap();
    if let Some(idx) = local {
        st.fill_from_index(idx).unwrap();
    }
    let source = ChunkIndex::from_scan(src);
    for h in st.missing() {
        let bytes = source
            .read(&h)
            .expect("source holds every chunk of its own scan");
        assert!(st.put_chunk(&h, &bytes).unwrap());
    }
    assert!(st.missing().is_empty());
    st.finish(2).unwrap()
}

/// Finishes a complete stager, applies it (`sibling`) and commits; returns where it landed.
pub fn land(st: Stager) -> std::path::PathBuf {
    st.finish(2)
        .unwrap()
        .apply(ConflictPolicy::Sibling)
        .unwrap()
        .commit()
        .unwrap()
}

/// Scan, stage, finish, apply and commit; returns where the workspace landed.
pub fn transfer(
    src_root: &Path,
    dest: &Path,
    id: &str,
    policy: ConflictPolicy,
) -> std::path::PathBuf {
    let s = scan(src_root, &opts(IgnoredFiles::Skip), None).unwrap();
    let staged = stage_from(&s, dest, id, None);
    staged.apply(policy).unwrap().commit().unwrap()
}
