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
