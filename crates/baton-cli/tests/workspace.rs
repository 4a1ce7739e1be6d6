//! Workspace transfer through real daemons: what the source refuses to send. Every unsafe
//! workspace is refused by the source daemon in preflight, before the session is stopped, with
//! `unsafe_workspace_path`, and the session stays with its owner.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;

use common::{World, assert_dense};
use serde_json::Value;

const LAPTOP: usize = 0;

/// Asserts a `--workspace` handoff of `s` was refused with `code` before the source was touched.
fn refused(w: &World, s: &str, code: &str) -> Value {
    let (rc, out) = w.handoff(LAPTOP, s, "desktop", &["--workspace"]);
    assert_eq!(rc, 3, "refused by preflight: {out}");
    assert_eq!(out["error"]["code"], code, "{out}");
    assert_eq!(out["result"], "aborted", "{out}");
    let phases: Vec<&str> = out["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    assert!(
        !phases.contains(&"quiesce_source"),
        "refused after the source was stopped: {phases:?}"
    );
    let row = w.session(LAPTOP, s);
    assert_eq!(row["owner"]["name"], "laptop", "{row}");
    assert_eq!(row["epoch"], 1, "{row}");
    out
}

#[test]
fn unsafe_workspaces_are_refused_by_the_source_before_it_stops() {
    let w = World::new(&["laptop", "desktop"]);
    let home = w.home(LAPTOP).to_path_buf();

    // The filesystem root and the home directory itself.
    let root = w.new_session(LAPTOP, "/");
    let out = refused(&w, &root, "unsafe_workspace_path");
    let msg = out["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("root") || msg.contains("home") || msg.contains('/'),
        "{msg}"
    );
    let at_home = w.new_session(LAPTOP, &home.to_string_lossy());
    refused(&w, &at_home, "unsafe_workspace_path");

    // A workspace that became a symlink to $HOME after the session started.
    let linked = w.dir("linked");
    let via_link = w.new_session(LAPTOP, &linked);
    assert!(w.send(LAPTOP, &via_link, "hello").starts_with("Turn 1."));
    std::fs::remove_dir_all(&linked).expect("rm");
    symlink(&home, &linked).expect("symlink to home");
    refused(&w, &via_link, "unsafe_workspace_path");

    // A workspace that is no longer a directory.
    let gone = w.dir("gone");
    let not_dir = w.new_session(LAPTOP, &gone);
    std::fs::remove_dir_all(&gone).expect("rm");
    std::fs::write(&gone, b"a file now").expect("file");
    refused(&w, &not_dir, "unsafe_workspace_path");

    // Nothing was staged on desktop, and a refused session still answers on laptop.
    let staging = w.c.machines[1].baton_home.join("handoffs");
    assert!(
        !staging.exists() || std::fs::read_dir(&staging).expect("ls").next().is_none(),
        "staging left on desktop"
    );
    std::fs::remove_file(&linked).expect("rm link");
    std::fs::create_dir(&linked).expect("mkdir");
    assert!(
        w.send(LAPTOP, &via_link, "still here")
            .starts_with("Turn 2.")
    );
    assert_dense(&w.log(LAPTOP, &via_link));
    assert!(Path::new(&home).is_dir(), "home untouched");
}

/// Writes `rel` under `root` (parents made).
fn put(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, data).expect("write");
}

/// Every regular file and symlink under `root`, relative, with its content or link target and
/// its executable bit, skipping `skip` prefixes.
fn listing(root: &Path, skip: &[&str]) -> Vec<(String, String, bool)> {
    fn walk(root: &Path, dir: &Path, skip: &[&str], out: &mut Vec<(String, String, bool)>) {
        for e in std::fs::read_dir(dir).expect("ls").flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            if skip
                .iter()
                .any(|s| rel == *s || rel.starts_with(&format!("{s}/")))
            {
                continue;
            }
            let md = std::fs::symlink_metadata(&p).expect("stat");
            if md.file_type().is_symlink() {
                let t = std::fs::read_link(&p).expect("readlink");
                out.push((rel, format!("-> {}", t.display()), false));
            } else if md.is_dir() {
                walk(root, &p, skip, out);
            } else {
                use std::os::unix::fs::PermissionsExt;
                let data = std::fs::read(&p).expect("read");
                out.push((
                    rel,
                    String::from_utf8_lossy(&data).into_owned(),
                    md.permissions().mode() & 0o111 != 0,
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, skip, &mut out);
    out.sort();
    out
}

#[test]
fn workspace_travels_verified_and_comes_back_as_a_small_delta() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new(&["laptop", "desktop"]);
    let ws_a = std::path::PathBuf::from(w.dir("laptop-ws/proj"));
    let outside = w.dir("outside-target");
    put(&ws_a, "src/main.rs", b"fn main() {}\n");
    put(&ws_a, "src/deep/nested/mod.rs", b"pub mod x;\n");
    put(&ws_a, "run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(ws_a.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    symlink("src/main.rs", ws_a.join("main-link")).expect("inner link");
    symlink(&outside, ws_a.join("out-link")).expect("outer link");
    put(&ws_a, ".gitignore", b"node_modules/\n.env\n");
    put(&ws_a, "node_modules/dep/index.js", b"module.exports = 1;\n");
    put(&ws_a, ".env", b"SECRET=1\n");
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    put(&ws_a, "assets/blob.bin", &big);

    let s = w.new_session(LAPTOP, &ws_a.to_string_lossy());
    assert!(w.send(LAPTOP, &s, "remember this").starts_with("Turn 1."));

    // Laptop -> desktop, into a path that does not exist there yet.
    let ws_b = std::path::PathBuf::from(w.dir("desktop-ws")).join("proj");
    let (rc, out) = w.handoff(
        LAPTOP,
        &s,
        "desktop",
        &["--workspace", "--path", &ws_b.to_string_lossy()],
    );
    assert_eq!(rc, 0, "{out}");
    assert_eq!(out["result"], "committed", "{out}");
    let phases: Vec<&str> = out["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    assert!(phases.contains(&"precopy"), "{phases:?}");
    let wsj = &out["workspace"];
    assert_eq!(wsj["path"], ws_b.to_string_lossy().as_ref(), "{out}");
    let total = wsj["bytes_total"].as_u64().expect("bytes_total");
    assert!(total > 3_000_000, "{wsj}");
    assert!(wsj["bytes_sent"].as_u64().expect("sent") >= total, "{wsj}");
    let skipped: Vec<&str> = wsj["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .filter_map(|s| s["path"].as_str())
        .collect();
    assert_eq!(skipped, vec!["out-link"], "{wsj}");

    // The tree arrived as it was, less what git ignores and the link leaving the tree.
    let ignored = ["node_modules", ".env", "out-link"];
    assert_eq!(listing(&ws_b, &[]), listing(&ws_a, &ignored));
    assert!(!ws_b.join(".env").exists() && !ws_b.join("node_modules").exists());
    let mode = std::fs::metadata(ws_b.join("run.sh"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executable bit kept");
    assert_eq!(
        std::fs::read_link(ws_b.join("main-link")).expect("link"),
        Path::new("src/main.rs")
    );
    assert_eq!(
        std::fs::metadata(ws_b.join("src/main.rs"))
            .expect("stat")
            .modified()
            .expect("mtime"),
        std::fs::metadata(ws_a.join("src/main.rs"))
            .expect("stat")
            .modified()
            .expect("mtime"),
        "mtime kept"
    );
    let row = w.session(1, &s);
    assert_eq!(row["owner"]["name"], "desktop", "{row}");
    assert_eq!(row["workspace"], ws_b.to_string_lossy().as_ref(), "{row}");
    let reply = w.send(1, &s, "where now");
    assert!(
        reply.contains(&format!("Working in {}", ws_b.display())),
        "{reply}"
    );
    // Nothing staged is left beside either tree.
    for dir in [
        ws_b.parent().expect("parent"),
        ws_a.parent().expect("parent"),
    ] {
        let stray: Vec<_> = std::fs::read_dir(dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".baton-"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }

    // One small edit on desktop, then back to laptop over the old tree: only that edit travels.
    put(
        &ws_b,
        "src/main.rs",
        b"fn main() { println!(\"edited\"); }\n",
    );
    let edited = std::fs::metadata(ws_b.join("src/main.rs"))
        .expect("stat")
        .len();
    // Laptop's tree is older than a scan's racy margin (2 s) by now, so its unchanged files are
    // provably the ones scanned: `replace` links them into the staging rather than copying.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let inode = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).expect("stat").ino()
    };
    let blob_inode = inode(&ws_a.join("assets/blob.bin"));
    let (rc, out) = w.handoff(
        1,
        &s,
        "laptop",
        &[
            "--workspace",
            "--path",
            &ws_a.to_string_lossy(),
            "--conflict",
            "replace",
        ],
    );
    assert_eq!(rc, 0, "{out}");
    let wsj = &out["workspace"];
    assert_eq!(wsj["path"], ws_a.to_string_lossy().as_ref(), "{out}");
    let sent = wsj["bytes_sent"].as_u64().expect("sent");
    assert!(
        sent <= edited,
        "only the edit travels: {sent} bytes sent, {edited} edited: {wsj}"
    );
    assert_eq!(listing(&ws_a, &ignored), listing(&ws_b, &[]));
    assert_eq!(
        std::fs::read_to_string(ws_a.join("src/main.rs")).expect("read"),
        "fn main() { println!(\"edited\"); }\n"
    );
    assert_eq!(
        inode(&ws_a.join("assets/blob.bin")),
        blob_inode,
        "the unchanged file was linked, not copied"
    );
    // `replace` replaces the whole tree: what the old one held outside the selection is gone
    // with it (the backup is removed once the handoff committed).
    assert!(!ws_a.join(".env").exists() && !ws_a.join("node_modules").exists());
    let reply = w.send(LAPTOP, &s, "home again");
    assert!(
        reply.contains(&format!("Working in {}", ws_a.display())),
        "{reply}"
    );
    assert_dense(&w.log(LAPTOP, &s));
}

#[test]
fn dry_run_shows_the_plan_and_moves_nothing() {
    let w = World::new(&["laptop", "desktop"]);
    let ws_a = std::path::PathBuf::from(w.dir("a/proj"));
    put(&ws_a, "keep.txt", b"same on both sides\n");
    put(&ws_a, "new.txt", b"only on laptop\n");
    put(&ws_a, "changed.txt", b"laptop's version\n");
    let dest = std::path::PathBuf::from(w.dir("b/proj"));
    put(&dest, "keep.txt", b"same on both sides\n");
    put(&dest, "changed.txt", b"desktop's version\n");
    put(&dest, "stale.txt", b"only on desktop\n");
    let before = listing(&dest, &[]);
    let s = w.new_session(LAPTOP, &ws_a.to_string_lossy());

    let (rc, out) = w.handoff(
        LAPTOP,
        &s,
        "desktop",
        &[
            "--workspace",
            "--path",
            &dest.to_string_lossy(),
            "--conflict",
            "replace",
            "--dry-run",
        ],
    );
    assert_eq!(rc, 0, "{out}");
    assert_eq!(out["dry_run"], true, "{out}");
    let plan = &out["plan"];
    assert_eq!(plan["destination"], "exists", "{plan}");
    assert_eq!(plan["policy"], "replace", "{plan}");
    assert_eq!(plan["add_files"], 1, "{plan}");
    assert_eq!(plan["change_files"], 1, "{plan}");
    assert_eq!(plan["unchanged_files"], 1, "{plan}");
    assert_eq!(plan["remove_files"], 1, "{plan}");
    assert_eq!(
        plan["transfer_bytes"],
        ("only on laptop\n".len() + "laptop's version\n".len()) as u64,
        "only what the destination lacks travels: {plan}"
    );
    let listed = |k: &str| -> Vec<String> {
        plan[k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(listed("overwritten"), vec!["changed.txt"], "{plan}");
    assert_eq!(listed("removed"), vec!["stale.txt"], "{plan}");

    // Nothing moved: the destination, the owner and the epoch are as they were.
    assert_eq!(listing(&dest, &[]), before);
    let row = w.session(LAPTOP, &s);
    assert_eq!(row["owner"]["name"], "laptop", "{row}");
    assert_eq!(row["epoch"], 1, "{row}");
    let hist = w.c.json(LAPTOP, &["handoffs", &s]).expect("history");
    let last = &hist.as_array().expect("list")[0];
    assert_eq!(last["result"], "aborted", "{last}");
    assert_eq!(last["error"]["code"], "cancelled", "{last}");
    let stray: Vec<_> = std::fs::read_dir(dest.parent().expect("parent"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".baton-"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    assert!(w.send(LAPTOP, &s, "still here").starts_with("Turn 1."));
}

#[test]
fn the_cli_shows_the_plan_and_the_transfer_progress() {
    let w = World::new(&["laptop", "desktop"]);
    let ws_a = std::path::PathBuf::from(w.dir("a/proj"));
    for i in 0..40 {
        let data: Vec<u8> = (0..100_000u32)
            .map(|j| ((j ^ (i << 20)).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        put(&ws_a, &format!("data/f{i}.bin"), &data);
    }
    let s = w.new_session(LAPTOP, &ws_a.to_string_lossy());
    let dest = w.dir("b").to_string() + "/proj";
    let out =
        w.c.baton(
            LAPTOP,
            &[
                "handoff",
                &s,
                "--to",
                "desktop",
                "--workspace",
                "--path",
                &dest,
            ],
        )
        .expect("handoff runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(common::code(&out), 0, "{text}");
    assert!(
        text.contains(&format!("Workspace plan for {dest} on desktop (absent")),
        "{text}"
    );
    assert!(text.contains("add           40 files"), "{text}");
    // Without a terminal, progress comes as plain lines.
    assert!(
        text.contains("pre-copy: ") || text.contains("final delta: "),
        "{text}"
    );
    assert!(text.contains("and the workspace: 40 files"), "{text}");
    assert!(
        text.contains(&format!("now at {dest} on desktop")),
        "{text}"
    );
}
