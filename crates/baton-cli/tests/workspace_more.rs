//! Workspace transfer through real daemons, the cases `workspace.rs` does not cover: each
//! ignored-files option, both conflict policies over an existing destination, the source killed
//! mid-transfer, a dropped transfer socket that resumes, files edited during the pre-copy,
//! hostile manifests and chunk streams from a fake source (the target daemon must refuse them and
//! leave the destination as it was), and too little space found in preflight.
//!
//! Daemons are held at a step with `BATON_TEST_DELAY_<OP>_MS` (every command has one, e.g.
//! `WORKSPACE_SEND`, `WORKSPACE_RECEIVE`, `QUIESCE`); tests find where they are from the phases
//! of `baton handoffs` and from the hold lines in the daemons' logs.

mod common;

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_cli::harness::Cluster;
use baton_proto::workspace::{
    ChunkParams, ChunkRef, ContentHash, EntryKind, FileData, MANIFEST_VERSION, ManifestPart,
    PartDelta, WorkspaceEntry, WorkspaceManifest,
};
use common::{World, agent_pids, assert_dense, code, exe, parse, wait_for};
use serde_json::Value;

const LAPTOP: usize = 0;
const DESKTOP: usize = 1;

// ---------------------------------------------------------------------------------------------
// Trees on disk.

/// Writes `rel` under `root` (parents made).
fn put(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, data).expect("write");
}

/// `len` bytes no other seed produces (xorshift64*), so files never share chunks by accident.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn digest(data: &[u8]) -> u64 {
    // SipHash with fixed keys: stable within a run, enough to compare contents.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    h.write(data);
    h.finish()
}

/// BLAKE3 of at most 64 bytes (one block of one chunk, which is also the root): what a
/// hand-made manifest needs to name small files correctly, without the `blake3` crate.
fn blake3_small(input: &[u8]) -> ContentHash {
    const IV: [u32; 8] = [
        0x6A09_E667,
        0xBB67_AE85,
        0x3C6E_F372,
        0xA54F_F53A,
        0x510E_527F,
        0x9B05_688C,
        0x1F83_D9AB,
        0x5BE0_CD19,
    ];
    const PERMUTATION: [usize; 16] = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];
    // CHUNK_START | CHUNK_END | ROOT
    const FLAGS: u32 = 1 | 2 | 8;
    assert!(input.len() <= 64, "one block only");
    let mut block = [0u8; 64];
    block[..input.len()].copy_from_slice(input);
    let mut m = [0u32; 16];
    for (i, w) in m.iter_mut().enumerate() {
        *w = u32::from_le_bytes(block[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    }
    let mut v = [0u32; 16];
    v[..8].copy_from_slice(&IV);
    v[8..12].copy_from_slice(&IV[..4]);
    // Counter 0 (words 12, 13), block length, flags.
    v[14] = input.len() as u32;
    v[15] = FLAGS;
    fn g(v: &mut [u32; 16], (a, b, c, d): (usize, usize, usize, usize), x: u32, y: u32) {
        v[a] = v[a].wrapping_add(v[b]).wrapping_add(x);
        v[d] = (v[d] ^ v[a]).rotate_right(16);
        v[c] = v[c].wrapping_add(v[d]);
        v[b] = (v[b] ^ v[c]).rotate_right(12);
        v[a] = v[a].wrapping_add(v[b]).wrapping_add(y);
        v[d] = (v[d] ^ v[a]).rotate_right(8);
        v[c] = v[c].wrapping_add(v[d]);
        v[b] = (v[b] ^ v[c]).rotate_right(7);
    }
    for round in 0..7 {
        g(&mut v, (0, 4, 8, 12), m[0], m[1]);
        g(&mut v, (1, 5, 9, 13), m[2], m[3]);
        g(&mut v, (2, 6, 10, 14), m[4], m[5]);
        g(&mut v, (3, 7, 11, 15), m[6], m[7]);
        g(&mut v, (0, 5, 10, 15), m[8], m[9]);
        g(&mut v, (1, 6, 11, 12), m[10], m[11]);
        g(&mut v, (2, 7, 8, 13), m[12], m[13]);
        g(&mut v, (3, 4, 9, 14), m[14], m[15]);
        if round < 6 {
            let prev = m;
            for (i, w) in m.iter_mut().enumerate() {
                *w = prev[PERMUTATION[i]];
            }
        }
    }
    let mut out = [0u8; 32];
    for i in 0..8 {
        out[4 * i..4 * i + 4].copy_from_slice(&(v[i] ^ v[i + 8]).to_le_bytes());
    }
    ContentHash(out)
}

#[test]
fn blake3_small_matches_the_reference() {
    // Vectors from the `blake3` crate.
    assert_eq!(
        blake3_small(b"").to_hex(),
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    );
    assert_eq!(
        blake3_small(b"abc").to_hex(),
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    );
    let block: Vec<u8> = (0..64u8).collect();
    assert_eq!(
        blake3_small(&block).to_hex(),
        "4eed7141ea4a5cd4b788606bd23f46e212af9cacebacdc7d1f4c6dc7f2511b98"
    );
}

/// One path of a tree as a test compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
        /// Nanoseconds; only recorded by [`exact`].
        mtime: i64,
    },
    File {
        mode: u32,
        mtime: i64,
        len: u64,
        digest: u64,
    },
    Link(PathBuf),
}

fn walk(root: &Path, dir: &Path, exact: bool, out: &mut BTreeMap<String, Node>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("ls").flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let md = std::fs::symlink_metadata(&p).expect("stat");
        let (mode, mtime) = if exact {
            (
                md.permissions().mode() & 0o7777,
                md.mtime_nsec() + md.mtime() * 1_000_000_000,
            )
        } else {
            // What a transfer keeps for sure: the executable bit and the content.
            (md.permissions().mode() & 0o111, 0)
        };
        if md.file_type().is_symlink() {
            out.insert(rel, Node::Link(std::fs::read_link(&p).expect("readlink")));
        } else if md.is_dir() {
            out.insert(
                rel,
                Node::Dir {
                    mode: if exact { mode } else { 0 },
                    mtime,
                },
            );
            walk(root, &p, exact, out);
        } else {
            let data = std::fs::read(&p).expect("read");
            out.insert(
                rel,
                Node::File {
                    mode,
                    mtime,
                    len: data.len() as u64,
                    digest: digest(&data),
                },
            );
        }
    }
}

/// Everything under `root` (not `root` itself): content, link targets and executable bits, less
/// the `skip` prefixes. What a transfer must reproduce.
fn content(root: &Path, skip: &[&str]) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, false, &mut out);
    out.retain(|k, _| {
        !skip
            .iter()
            .any(|s| k == s || k.starts_with(&format!("{s}/")))
    });
    out
}

/// Everything under `root` with full modes and mtimes: "byte for byte as it was".
fn exact(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, true, &mut out);
    out
}

/// `path` itself (its mode and mtime too) and everything under it, exactly.
fn exact_tree(path: &Path) -> BTreeMap<String, Node> {
    let name = path
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    let mut all = exact(path.parent().expect("parent"));
    all.retain(|k, _| *k == name || k.starts_with(&format!("{name}/")));
    all
}

/// Entries of `dir` whose names Baton uses for staging and backups.
fn stray(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".baton-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until nothing Baton stages is left beside `dest` and in `machine`'s handoff dir.
fn assert_cleaned_up(w: &World, machine: usize, dest: &Path) {
    let parent = dest.parent().expect("parent").to_path_buf();
    let handoffs = w.c.machines[machine].baton_home.join("handoffs");
    let left = wait_for(Duration::from_secs(20), || {
        let s = stray(&parent);
        let h = std::fs::read_dir(&handoffs).map(|r| r.count()).unwrap_or(0);
        (s.is_empty() && h == 0).then_some(())
    });
    assert!(
        left.is_some(),
        "staging or backup left: beside the destination {:?}, in {}: {:?}",
        stray(&parent),
        handoffs.display(),
        std::fs::read_dir(&handoffs).map(|r| r.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
}

// ---------------------------------------------------------------------------------------------
// Handoffs.

fn phases(out: &Value) -> Vec<String> {
    out["phases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["phase"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `--workspace --path DEST` plus `extra`, asserted committed; returns the JSON.
fn moved(w: &World, from: usize, s: &str, to: &str, dest: &Path, extra: &[&str]) -> Value {
    let dest = dest.to_string_lossy();
    let mut args = vec!["--workspace", "--path", dest.as_ref()];
    args.extend_from_slice(extra);
    let (rc, out) = w.handoff(from, s, to, &args);
    assert_eq!(rc, 0, "handoff to {to} {args:?}: {out}");
    assert_eq!(out["result"], "committed", "{out}");
    out
}

/// The last handoff of `s`: (phase, result).
fn last_handoff(w: &World, s: &str) -> Option<(String, String)> {
    let h = w.c.json(LAPTOP, &["handoffs", s]).ok()?;
    let last = h.as_array()?.last()?.clone();
    Some((
        last["phase"].as_str()?.to_string(),
        last["result"].as_str()?.to_string(),
    ))
}

fn wait_phase(w: &World, s: &str, phase: &str, timeout: Duration) {
    wait_for(timeout, || {
        last_handoff(w, s).filter(|(p, r)| p == phase && r == "active")
    })
    .unwrap_or_else(|| {
        panic!(
            "the handoff never reached {phase}: {:?}",
            w.c.json(LAPTOP, &["handoffs", s])
        )
    });
}

/// Waits for a backgrounded `baton --json handoff` and parses its document.
fn finished(child: std::process::Child) -> (i32, Value) {
    let out = child.wait_with_output().expect("handoff ends");
    (code(&out), parse(&out))
}

/// A cluster of laptop and desktop whose daemons get `env` (machine, name, value).
fn world_with(env: &[(usize, &str, &str)]) -> World {
    let tmp = tempfile::Builder::new()
        .prefix("baton-ws-more-")
        .tempdir()
        .expect("temp dir");
    let mut c = Cluster::start(&exe(), tmp.path()).expect("server starts");
    c.add_machine("laptop", true).expect("laptop");
    c.add_machine("desktop", true).expect("desktop");
    for (m, k, v) in env {
        c.machines[*m]
            .daemon_env
            .push(((*k).to_string(), (*v).to_string()));
    }
    c.start_daemon(LAPTOP).expect("laptop daemon");
    c.start_daemon(DESKTOP).expect("desktop daemon");
    c.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))
        .expect("online");
    World { c, tmp }
}

/// A daemon's log so far, without colour codes.
fn daemon_log(w: &World, idx: usize) -> String {
    let raw = std::fs::read_to_string(w.c.log_path(&w.c.machines[idx].name)).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `name=<number>` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// A session on laptop whose workspace `laptop-ws/proj` holds `files` random blobs of `size`
/// bytes (from `seed` on), and where it is to go on desktop.
fn blob_session(w: &World, seed: u64, files: u64, size: usize) -> (String, PathBuf, PathBuf) {
    let blobs: Vec<(String, Vec<u8>)> = (0..files)
        .map(|i| (format!("blobs/b{i}.bin"), noise(seed + i, size)))
        .collect();
    let blobs: Vec<(&str, Vec<u8>)> = blobs.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let (s, ws_a) = session_with(w, "proj", &blobs);
    let dest = PathBuf::from(w.dir("desktop-ws")).join("proj");
    (s, ws_a, dest)
}

/// A session on laptop working in a fresh `laptop-ws/<name>` holding `files`.
fn session_with(w: &World, name: &str, files: &[(&str, Vec<u8>)]) -> (String, PathBuf) {
    let ws = PathBuf::from(w.dir(&format!("laptop-ws/{name}")));
    for (rel, data) in files {
        put(&ws, rel, data);
    }
    let s = w.new_session(LAPTOP, &ws.to_string_lossy());
    assert!(w.send(LAPTOP, &s, "remember this").starts_with("Turn 1."));
    (s, ws)
}

// ---------------------------------------------------------------------------------------------
// 1. Ignored files.

#[test]
fn ignored_include_brings_everything_and_globs_bring_only_what_they_match() {
    let w = World::new(&["laptop", "desktop"]);
    let (s, ws_a) = session_with(
        &w,
        "proj",
        &[
            ("src/lib.rs", b"pub fn f() {}\n".to_vec()),
            (".gitignore", b"node_modules/\n.env\n".to_vec()),
            (
                "node_modules/dep/index.js",
                b"module.exports = 1;\n".to_vec(),
            ),
            (
                "node_modules/dep/package.json",
                b"{\"name\":\"dep\"}\n".to_vec(),
            ),
            (".env", b"SECRET=1\n".to_vec()),
        ],
    );

    // `include`: what git ignores travels too.
    let ws_b = PathBuf::from(w.dir("desktop-ws")).join("inc");
    let out = moved(&w, LAPTOP, &s, "desktop", &ws_b, &["--ignored", "include"]);
    assert_eq!(content(&ws_b, &[]), content(&ws_a, &[]), "{out}");
    assert_eq!(
        std::fs::read(ws_b.join(".env")).expect(".env came"),
        b"SECRET=1\n"
    );
    assert_eq!(
        std::fs::read(ws_b.join("node_modules/dep/index.js")).expect("node_modules came"),
        b"module.exports = 1;\n"
    );
    assert_eq!(out["workspace"]["files"], 5, "{out}");

    // A glob: `.env` travels, `node_modules/` (ignored too, not matched) stays behind.
    let ws_c = PathBuf::from(w.dir("laptop-ws")).join("globs");
    let out = moved(&w, DESKTOP, &s, "laptop", &ws_c, &["--ignored", ".env"]);
    assert_eq!(
        std::fs::read(ws_c.join(".env")).expect(".env came"),
        b"SECRET=1\n",
        "{out}"
    );
    assert!(
        !ws_c.join("node_modules").exists(),
        "node_modules/ is ignored and not matched by the glob: {out}"
    );
    assert_eq!(content(&ws_c, &[]), content(&ws_b, &["node_modules"]));
    assert_eq!(out["workspace"]["files"], 3, "{out}");
    let row = w.session(LAPTOP, &s);
    assert_eq!(row["workspace"], ws_c.to_string_lossy().as_ref(), "{row}");
}

// ---------------------------------------------------------------------------------------------
// 2. Conflict policies.

#[test]
fn sibling_leaves_an_existing_destination_untouched_and_replace_takes_its_place() {
    let w = World::new(&["laptop", "desktop"]);
    let (s, ws_a) = session_with(
        &w,
        "proj",
        &[
            ("src/main.rs", b"fn main() {}\n".to_vec()),
            ("docs/a.md", b"# A\n".to_vec()),
            ("data.bin", noise(1, 200_000)),
        ],
    );
    // The desktop already has a tree at the destination, partly overlapping.
    let desk = PathBuf::from(w.dir("desktop-ws"));
    let dest = desk.join("proj");
    put(&dest, "src/main.rs", b"fn main() { old(); }\n");
    put(&dest, "notes.txt", b"mine, not the session's\n");
    put(&dest, "sub/deep/keep.bin", &noise(2, 50_000));
    symlink("notes.txt", dest.join("notes-link")).expect("link");
    let before = exact_tree(&dest);

    // Sibling (the default): the tree lands at `<dest>-handoff`, the destination is untouched.
    let out = moved(&w, LAPTOP, &s, "desktop", &dest, &[]);
    // The target planned from the whole manifest and kept it: the pre-copy and the final pass
    // both came as changes (nothing changed, so empty ones).
    let id = out["handoff_id"].as_str().expect("handoff_id").to_string();
    let log = daemon_log(&w, DESKTOP);
    let changes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("workspace manifest received as a change") && l.contains(&id))
        .collect();
    assert_eq!(changes.len(), 2, "{log}");
    for line in changes {
        assert_eq!(
            (field(line, "changed"), field(line, "removed")),
            (Some(0), Some(0)),
            "{line}"
        );
    }
    let first = desk.join("proj-handoff");
    assert_eq!(
        out["workspace"]["path"],
        first.to_string_lossy().as_ref(),
        "{out}"
    );
    assert_eq!(
        exact_tree(&dest),
        before,
        "the existing destination was touched"
    );
    assert_eq!(content(&first, &[]), content(&ws_a, &[]));
    let row = w.session(DESKTOP, &s);
    assert_eq!(row["owner"]["name"], "desktop", "{row}");
    assert_eq!(row["workspace"], first.to_string_lossy().as_ref(), "{row}");
    let reply = w.send(DESKTOP, &s, "where now");
    assert!(
        reply.contains(&format!("Working in {}", first.display())),
        "the provider runs in the sibling: {reply}"
    );
    assert!(stray(&desk).is_empty(), "{:?}", stray(&desk));

    // Back to a fresh path on laptop, then over again: `<dest>-handoff-2`.
    let back = PathBuf::from(w.dir("laptop-ws")).join("back");
    moved(&w, DESKTOP, &s, "laptop", &back, &[]);
    assert_eq!(content(&back, &[]), content(&ws_a, &[]));
    let first_before = exact_tree(&first);
    let out = moved(&w, LAPTOP, &s, "desktop", &dest, &["--conflict", "sibling"]);
    let second = desk.join("proj-handoff-2");
    assert_eq!(
        out["workspace"]["path"],
        second.to_string_lossy().as_ref(),
        "{out}"
    );
    assert_eq!(
        w.session(DESKTOP, &s)["workspace"],
        second.to_string_lossy().as_ref()
    );
    assert_eq!(
        exact_tree(&dest),
        before,
        "the existing destination was touched"
    );
    assert_eq!(
        exact_tree(&first),
        first_before,
        "the first sibling was touched"
    );
    assert_eq!(content(&second, &[]), content(&ws_a, &[]));

    // Replace, over laptop's original tree, which meanwhile holds a file of its own.
    put(&ws_a, "stale.txt", b"only on laptop\n");
    put(&ws_a, "src/main.rs", b"fn main() { laptop_edit(); }\n");
    let out = moved(&w, DESKTOP, &s, "laptop", &ws_a, &["--conflict", "replace"]);
    assert_eq!(
        out["workspace"]["path"],
        ws_a.to_string_lossy().as_ref(),
        "{out}"
    );
    assert_eq!(
        content(&ws_a, &[]),
        content(&second, &[]),
        "replace puts exactly the session's tree in place"
    );
    assert!(!ws_a.join("stale.txt").exists());
    // The replaced tree is removed after commit, in the background past a short wait.
    let laptop_side = ws_a.parent().expect("parent");
    assert!(
        wait_for(Duration::from_secs(20), || stray(laptop_side)
            .is_empty()
            .then_some(()))
        .is_some(),
        "backup or staging left after commit: {:?}",
        stray(laptop_side)
    );
    assert_eq!(
        w.session(LAPTOP, &s)["workspace"],
        ws_a.to_string_lossy().as_ref()
    );
    let reply = w.send(LAPTOP, &s, "home again");
    assert!(
        reply.contains(&format!("Working in {}", ws_a.display())),
        "{reply}"
    );
    assert_dense(&w.log(LAPTOP, &s));
}

// ---------------------------------------------------------------------------------------------
// 3. The source dies during the transfer.

#[test]
fn source_killed_during_the_final_pass_aborts_and_the_destination_is_as_it_was() {
    const HOLD: &str = "BATON_TEST_DELAY_WORKSPACE_SEND_MS";
    let mut w = world_with(&[
        (LAPTOP, HOLD, "2500"),
        // Long enough to be seen, so the passes before the final one can be counted.
        (LAPTOP, "BATON_TEST_DELAY_QUIESCE_MS", "1500"),
    ]);
    let mut files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("assets/f{i}.bin"), noise(100 + i, 400_000)))
        .collect();
    files.push(("src/main.rs".into(), b"fn main() {}\n".to_vec()));
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let (s, ws_a) = session_with(&w, "proj", &files);
    let desk = PathBuf::from(w.dir("desktop-ws"));
    let dest = desk.join("proj");
    put(&dest, "src/main.rs", b"fn main() { desktop(); }\n");
    put(&dest, "assets/f0.bin", &noise(100, 400_000));
    put(&dest, "precious.txt", b"only here\n");
    let before = exact(&desk);

    let held = || {
        daemon_log(&w, LAPTOP)
            .matches(&format!("{HOLD} set"))
            .count()
    };
    let child = spawn_handoff_to_desktop(&w, &s, &dest, &["--conflict", "replace"]);
    // Every pass before the final one has been served once quiesce runs; the next hold is the
    // final pass, with the pre-copy staged beside the destination.
    wait_phase(&w, &s, "quiesce_source", Duration::from_secs(30));
    let before_final = held();
    assert!(before_final >= 2, "plan and pre-copy passes were held");
    wait_for(Duration::from_secs(20), || {
        (held() > before_final).then_some(())
    })
    .expect("the final pass reached the source");
    assert_eq!(last_handoff(&w, &s).expect("handoff").0, "transfer");
    let staged: Vec<String> = stray(&desk)
        .into_iter()
        .filter(|n| n.contains(".baton-staging-"))
        .collect();
    assert_eq!(
        staged.len(),
        1,
        "the pre-copy is staged beside the destination"
    );
    let staged_tree = desk.join(&staged[0]).join("tree");
    assert!(
        staged_tree.join("assets/f5.bin").is_file(),
        "the pre-copy brought the bulk before the kill"
    );
    w.c.kill_daemon(LAPTOP);

    let (rc, out) = finished(child);
    assert_ne!(rc, 0, "{out}");
    assert_eq!(out["result"], "aborted", "{out}");
    let code = out["error"]["code"].as_str().unwrap_or_default();
    assert!(
        ["transfer_failed", "timeout", "source_offline"].contains(&code),
        "{out}"
    );
    assert!(
        !phases(&out).iter().any(|p| p == "commit"),
        "aborted before commit: {out}"
    );

    // The target dropped its staging; the destination is exactly as before.
    assert_cleaned_up(&w, DESKTOP, &dest);
    assert_eq!(
        exact(&desk),
        before,
        "the destination or its parent changed"
    );
    assert!(agent_pids(w.home(DESKTOP)).is_empty());

    // The source comes back and keeps the session, with its context.
    w.c.machines[LAPTOP].daemon_env.clear();
    w.c.start_daemon(LAPTOP).expect("laptop restarts");
    w.c.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))
        .expect("online");
    let row = wait_for(Duration::from_secs(20), || {
        let r = w.session(LAPTOP, &s);
        (r["status"] == "idle").then_some(r)
    })
    .expect("the session is idle again on laptop");
    assert_eq!(row["owner"]["name"], "laptop", "{row}");
    assert_eq!(row["epoch"], 1, "{row}");
    assert_eq!(row["workspace"], ws_a.to_string_lossy().as_ref(), "{row}");
    let reply = w.send(LAPTOP, &s, "after the kill");
    assert!(reply.starts_with("Turn 2."), "{reply}");
    assert!(reply.contains("remember this"), "{reply}");

    // Nothing left behind blocks the next attempt.
    let out = moved(&w, LAPTOP, &s, "desktop", &dest, &["--conflict", "replace"]);
    assert_eq!(
        out["workspace"]["path"],
        dest.to_string_lossy().as_ref(),
        "{out}"
    );
    assert_eq!(content(&dest, &[]), content(&ws_a, &[]));
    assert!(stray(&desk).is_empty(), "{:?}", stray(&desk));
}

/// The source dies after it answered the final pass (it is serving), while the target is about
/// to pull: the target can only learn it from the transfer socket, whose peer never returns (a
/// restarted daemon has no memory of the pass). The handoff must still abort promptly.
#[test]
fn source_killed_while_the_target_pulls_the_final_pass_aborts_promptly() {
    const HOLD: &str = "BATON_TEST_DELAY_WORKSPACE_RECEIVE_MS";
    let mut w = world_with(&[
        (DESKTOP, HOLD, "2000"),
        (LAPTOP, "BATON_TEST_DELAY_QUIESCE_MS", "1500"),
    ]);
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("assets/f{i}.bin"), noise(300 + i, 400_000)))
        .collect();
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let (s, _ws_a) = session_with(&w, "proj", &files);
    let desk = PathBuf::from(w.dir("desktop-ws"));
    let dest = desk.join("proj");
    put(&dest, "precious.txt", b"only here\n");
    let before = exact(&desk);

    let held = || {
        daemon_log(&w, DESKTOP)
            .matches(&format!("{HOLD} set"))
            .count()
    };
    let child = spawn_handoff_to_desktop(&w, &s, &dest, &["--conflict", "replace"]);
    wait_phase(&w, &s, "quiesce_source", Duration::from_secs(30));
    let before_final = held();
    wait_for(Duration::from_secs(20), || {
        (held() > before_final).then_some(())
    })
    .expect("the final pass reached the target");
    // The source answered the final pass (the target is asked only then) and now serves it.
    w.c.kill_daemon(LAPTOP);
    let killed = std::time::Instant::now();
    w.c.machines[LAPTOP].daemon_env.clear();
    w.c.start_daemon(LAPTOP).expect("laptop restarts");

    let (rc, out) = finished(child);
    let took = killed.elapsed();
    assert_ne!(rc, 0, "{out}");
    assert_eq!(out["result"], "aborted", "{out}");
    assert!(
        took < Duration::from_secs(20),
        "the handoff took {took:?} to abort after its source died (and came back without the \
         pass): {out}"
    );
    assert_cleaned_up(&w, DESKTOP, &dest);
    assert_eq!(
        exact(&desk),
        before,
        "the destination or its parent changed"
    );
    let row = wait_for(Duration::from_secs(20), || {
        let r = w.session(LAPTOP, &s);
        (r["status"] == "idle").then_some(r)
    })
    .expect("the session is idle again on laptop");
    assert_eq!(row["owner"]["name"], "laptop", "{row}");
    assert!(w.send(LAPTOP, &s, "after the kill").starts_with("Turn 2."));
}

// ---------------------------------------------------------------------------------------------
// 4. A dropped transfer socket resumes.

#[test]
fn a_dropped_target_socket_resumes_without_resending_what_arrived() {
    dropped_socket_resumes(DESKTOP);
}

#[test]
fn a_dropped_source_socket_resumes_without_resending_what_arrived() {
    dropped_socket_resumes(LAPTOP);
}

#[test]
fn a_target_killed_while_removing_the_replaced_tree_finishes_the_commit_when_it_starts_again() {
    let mut w = world_with(&[(DESKTOP, "BATON_TEST_DELAY_WORKSPACE_COMMIT_MS", "60000")]);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("src/a.rs", b"fn a() {}\n".to_vec()),
        ("data/blob.bin", noise(31, 300_000)),
    ];
    let (s, ws_a) = session_with(&w, "proj", &files);
    let dest = PathBuf::from(w.dir("desktop-ws")).join("proj");
    put(&dest, "old/tree.txt", b"the tree being replaced\n");
    let out = moved(&w, LAPTOP, &s, "desktop", &dest, &["--conflict", "replace"]);
    assert_eq!(content(&dest, &[]), content(&ws_a, &[]), "{out}");
    let side = dest.parent().expect("parent").to_path_buf();
    assert!(
        stray(&side).iter().any(|n| n.contains(".baton-backup-")),
        "the replaced tree waits for the delayed commit: {:?}",
        stray(&side)
    );
    // Killed before the commit ends; started again without the delay.
    w.c.kill_daemon(DESKTOP);
    w.c.machines[DESKTOP].daemon_env.clear();
    w.c.start_daemon(DESKTOP).expect("desktop daemon restarts");
    assert!(
        wait_for(Duration::from_secs(30), || stray(&side)
            .is_empty()
            .then_some(()))
        .is_some(),
        "backup or staging left after the restart: {:?}",
        stray(&side)
    );
    assert_eq!(content(&dest, &[]), content(&ws_a, &[]));
    assert!(
        daemon_log(&w, DESKTOP)
            .contains("finished the commit of a workspace put in place before a restart")
    );
    let commits = w.c.machines[DESKTOP].baton_home.join("commits");
    let left = std::fs::read_dir(&commits).map_or(0, |d| d.count());
    assert_eq!(left, 0, "records left in {}", commits.display());
    assert!(
        w.send(DESKTOP, &s, "after the restart")
            .starts_with("Turn 2.")
    );
}

#[test]
fn a_target_control_connection_dropped_in_the_precopy_does_not_stop_the_handoff() {
    control_drop_goes_on("precopy");
}

#[test]
fn a_target_control_connection_dropped_in_the_final_pass_does_not_stop_the_handoff() {
    control_drop_goes_on("final");
}

/// Desktop's daemon closes its control connection (not the transfer socket) once, as its
/// `pass` starts: the pass goes on, the server asks again once the daemon is back, and the
/// daemon answers with the same pass's reply; the handoff commits with every byte sent once.
fn control_drop_goes_on(pass: &str) {
    const FILES: u64 = 6;
    const SIZE: usize = 1024 * 1024;
    let w = world_with(&[(DESKTOP, "BATON_TEST_DROP_CONTROL_IN_RECEIVE", pass)]);
    let (s, ws_a, dest) = blob_session(&w, 900, FILES, SIZE);

    let out = moved(&w, LAPTOP, &s, "desktop", &dest, &[]);
    assert_eq!(content(&dest, &[]), content(&ws_a, &[]), "{out}");
    let ws = &out["workspace"];
    assert_eq!(
        ws["bytes_sent"], ws["bytes_total"],
        "every byte sent once: {ws}"
    );
    let log = daemon_log(&w, DESKTOP);
    assert_eq!(
        log.matches("BATON_TEST_DROP_CONTROL_IN_RECEIVE set: dropping the control connection")
            .count(),
        1,
        "the control connection was dropped once"
    );
    assert!(
        log.contains("asked again for a pass under way; joining it"),
        "the server asked again and the daemon joined its pass"
    );
    assert_eq!(w.session(DESKTOP, &s)["owner"]["name"], "desktop");
    assert!(w.send(DESKTOP, &s, "after the drop").starts_with("Turn 2."));
}

/// `dropper`'s daemon closes its transfer socket once, past 60 % of the tree.
fn dropped_socket_resumes(dropper: usize) {
    const FILES: u64 = 6;
    const SIZE: usize = 1024 * 1024;
    let total_guess = FILES * SIZE as u64;
    // Past half the tree: a transfer that started over would send more than it may.
    let drop_after = total_guess * 6 / 10;
    let drop_s = drop_after.to_string();
    let w = world_with(&[(
        dropper,
        "BATON_TEST_DROP_TRANSFER_AFTER_BYTES",
        drop_s.as_str(),
    )]);
    let (s, ws_a, dest) = blob_session(&w, 500, FILES, SIZE);

    let out = moved(&w, LAPTOP, &s, "desktop", &dest, &[]);
    assert_eq!(content(&dest, &[]), content(&ws_a, &[]), "{out}");

    // The hook really cut the socket, once, and that side reconnected.
    let dropper_log = daemon_log(&w, dropper);
    assert_eq!(
        dropper_log
            .matches("BATON_TEST_DROP_TRANSFER_AFTER_BYTES set: dropping the transfer socket")
            .count(),
        1,
        "the socket was dropped once"
    );
    assert!(
        dropper_log.contains("transfer socket lost; reconnecting"),
        "the socket was reconnected"
    );

    // Every byte of the tree was stored once: nothing asked for twice.
    let ws = &out["workspace"];
    let total = ws["bytes_total"].as_u64().expect("bytes_total");
    assert_eq!(total, total_guess, "{ws}");
    assert_eq!(ws["bytes_sent"].as_u64(), Some(total), "{ws}");

    // `bytes_sent` counts what the target stored, so it cannot show a resend; what the source
    // served can. What reached the target before it asked again after the reconnect is never
    // served again: only what was lost in flight (in the dropped socket's buffers) may be.
    let served = wait_for(Duration::from_secs(10), || {
        let log = daemon_log(&w, LAPTOP);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("workspace pass served"))
            .collect();
        // Plan, pre-copy and final pass.
        (lines.len() >= 3).then(|| {
            lines
                .iter()
                .map(|l| field(l, "bytes").expect("bytes= in the log line"))
                .sum::<u64>()
        })
    })
    .expect("the source logged every pass it served");
    let target_log = daemon_log(&w, DESKTOP);
    let reask = target_log
        .lines()
        .find(|l| l.contains("asking again after a reconnect"));
    // Without a re-ask line, nothing was missing when the sides met again: all had arrived.
    let (received, asked_again) = match reask {
        Some(l) => (
            field(l, "received").expect("received= in the log line"),
            field(l, "bytes").expect("bytes= in the log line"),
        ),
        None => (total, 0),
    };
    eprintln!(
        "tree {total} bytes, socket dropped after {drop_after}, received before the re-ask \
         {received}, asked again {asked_again}, source served {served}"
    );
    assert!(served >= total, "served {served} < tree {total}");
    assert!(
        received + asked_again <= total,
        "the target asked again for {asked_again} bytes after receiving {received} of a \
         {total}-byte tree: it asked again for chunks it had"
    );
    assert!(
        served <= 2 * total - received,
        "the source served {served} bytes for a {total}-byte tree: chunks received before the \
         reconnect ({received} bytes) were sent again"
    );
    if dropper == DESKTOP {
        // The target drops its own socket once it has read `drop_after` bytes of frames.
        let arrived_before_drop = drop_after - drop_after / 20;
        assert!(
            received >= arrived_before_drop,
            "the target dropped its socket after {drop_after} bytes but counts {received} \
             received before asking again"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Edits while the pre-copy runs.

#[test]
fn files_edited_during_and_after_the_precopy_arrive_in_their_edited_form() {
    let w = world_with(&[
        // The target waits before it pulls each pass: the pre-copy's scan is made, its chunks
        // not yet read, while it waits.
        (DESKTOP, "BATON_TEST_DELAY_WORKSPACE_RECEIVE_MS", "2500"),
        // The source holds in quiesce, after the pre-copy ended.
        (LAPTOP, "BATON_TEST_DELAY_QUIESCE_MS", "2000"),
    ]);
    let a_old = noise(900, 10_000);
    let b_old = noise(901, 12_000);
    let (s, ws_a) = session_with(
        &w,
        "proj",
        &[
            ("during.bin", a_old.clone()),
            ("after.txt", b_old.clone()),
            ("same-size.txt", b"version one\n".to_vec()),
            ("doomed.txt", b"deleted after the pre-copy\n".to_vec()),
            ("big.bin", noise(902, 300_000)),
        ],
    );
    let dest = PathBuf::from(w.dir("desktop-ws")).join("proj");
    let child = spawn_handoff_to_desktop(&w, &s, &dest, &[]);

    // During the pre-copy: the source has scanned (the target is asked only once the source
    // answered), the target has not pulled yet. Its holds: the plan pass (in prepare_target),
    // then the pre-copy's.
    let held = || {
        daemon_log(&w, DESKTOP)
            .matches("BATON_TEST_DELAY_WORKSPACE_RECEIVE_MS set")
            .count()
    };
    wait_phase(&w, &s, "precopy", Duration::from_secs(30));
    wait_for(Duration::from_secs(10), || (held() >= 2).then_some(()))
        .expect("the target holds the pre-copy");
    let a_new = noise(903, 11_000);
    put(&ws_a, "during.bin", &a_new);
    assert_eq!(
        last_handoff(&w, &s).expect("handoff").0,
        "precopy",
        "the edit landed during the pre-copy"
    );

    // After the pre-copy, while the source stops.
    wait_phase(&w, &s, "quiesce_source", Duration::from_secs(30));
    put(&ws_a, "after.txt", b"edited after the pre-copy\n");
    // Same size, new content: a rescan that trusted sizes would miss it.
    put(&ws_a, "same-size.txt", b"version two\n");
    std::fs::remove_file(ws_a.join("doomed.txt")).expect("rm");
    put(&ws_a, "new/born.txt", b"created after the pre-copy\n");
    assert_eq!(last_handoff(&w, &s).expect("handoff").0, "quiesce_source");

    let (rc, out) = finished(child);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(out["result"], "committed", "{out}");
    assert_eq!(std::fs::read(dest.join("during.bin")).expect("read"), a_new);
    assert_eq!(
        std::fs::read(dest.join("after.txt")).expect("read"),
        b"edited after the pre-copy\n"
    );
    assert_eq!(
        std::fs::read(dest.join("same-size.txt")).expect("read"),
        b"version two\n"
    );
    assert!(
        !dest.join("doomed.txt").exists(),
        "a deleted file stays deleted"
    );
    assert_eq!(
        std::fs::read(dest.join("new/born.txt")).expect("read"),
        b"created after the pre-copy\n"
    );
    assert_eq!(content(&dest, &[]), content(&ws_a, &[]));
    // The final pass found those edits by walking only where the source's watch saw changes.
    let source_log = daemon_log(&w, LAPTOP);
    assert!(
        !source_log.contains("cannot watch the workspace"),
        "the watch started with the preflight's walk:\n{source_log}"
    );
    let line = source_log
        .lines()
        .find(|l| l.contains("final pass walks only what the watch saw change"))
        .unwrap_or_else(|| panic!("the final pass walked the whole tree:\n{source_log}"));
    assert!(
        field(line, "changed").is_some_and(|n| n >= 4) && field(line, "unwalked_dirs").is_some(),
        "{line}"
    );
    // The stale content of `during.bin` never travelled: the source answered `gone` for it in
    // the pre-copy (its file had changed) and sent the new one in the final pass.
    let ws = &out["workspace"];
    let sent = ws["bytes_sent"].as_u64().expect("bytes_sent");
    let total = ws["bytes_total"].as_u64().expect("bytes_total");
    let precopied_then_replaced = b_old.len() as u64
        + "version one\n".len() as u64
        + "deleted after the pre-copy\n".len() as u64;
    assert_eq!(
        sent,
        total + precopied_then_replaced,
        "pre-copy: everything but during.bin's old bytes; final pass: the edits ({ws})"
    );
    let row = w.session(DESKTOP, &s);
    assert_eq!(row["workspace"], dest.to_string_lossy().as_ref(), "{row}");
    // The final pass's manifest travelled as the change since the pre-copy: during.bin,
    // after.txt, same-size.txt, new/ and new/born.txt changed or came; doomed.txt went.
    let log = daemon_log(&w, DESKTOP);
    let line = log
        .lines()
        .find(|l| l.contains("workspace manifest received as a change"))
        .unwrap_or_else(|| panic!("the final pass sent its whole manifest:\n{log}"));
    assert_eq!(field(line, "changed"), Some(5), "{line}");
    assert_eq!(field(line, "removed"), Some(1), "{line}");
}

// ---------------------------------------------------------------------------------------------
// 6. Hostile input from the source.
//
// The real laptop daemon is stopped and a fake one takes its place on the control socket: it
// answers the coordinator like a source would, but serves a hand-made manifest (through the
// daemon's own `serve_source`) or a hand-made chunk stream (raw frames, since `serve_source`
// never sends a chunk that does not match its name). The target is the real desktop daemon.

mod fake {
    use std::collections::HashMap;
    use std::io;
    use std::sync::{Arc, Mutex};

    use baton_crypto::TransferCipher;
    use baton_daemon::client::Client;
    use baton_daemon::transfer::{
        BlobFeed, ChunkSource, TransferConn, TransferTuning, serve_source,
    };
    use baton_proto::transfer::{
        ChunksFrame, Frame, MAX_TRANSFER_FRAME, TransferRole, decode, encode_blob, encode_done_ack,
        transfer_ws_path,
    };
    use baton_proto::workspace::ContentHash;
    use baton_proto::ws::{ClientFrame, ConnRole, DaemonCommand, DaemonReply, ServerFrame};
    use baton_proto::{ApiError, ErrorCode, HandoffId, PROTOCOL_VERSION};
    use futures_util::{SinkExt, StreamExt};
    use tokio::sync::mpsc;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_util::sync::CancellationToken;

    /// What the fake source serves on every workspace pass.
    #[derive(Clone, Default)]
    pub struct Serving {
        /// The manifest as sent (normally JSON of a `WorkspaceManifest`).
        pub blob: Vec<u8>,
        /// `Some`: raw frames, each wanted hash answered with these bytes (whatever they are).
        /// `None`: the daemon's `serve_source`, with no chunk to give.
        pub raw_chunks: Option<HashMap<ContentHash, Vec<u8>>>,
        /// Called when the coordinator asks the source to stop (the pre-copy was accepted),
        /// before refusing to.
        pub on_quiesce: Option<Arc<dyn Fn() + Send + Sync>>,
    }

    struct Nothing;

    impl ChunkSource for Nothing {
        fn read(&self, _: &ContentHash) -> io::Result<Option<Vec<u8>>> {
            Ok(None)
        }
    }

    /// Runs until `stop`: the machine of `client` online, answering commands.
    pub async fn source(client: Client, serving: Arc<Mutex<Serving>>, stop: CancellationToken) {
        let ws = client.connect_ws().await.expect("fake source connects");
        let (mut sink, mut stream) = ws.split();
        let text = |f: &ClientFrame| Message::Text(serde_json::to_string(f).expect("json").into());
        sink.send(text(&ClientFrame::Hello {
            role: ConnRole::Daemon,
            protocol: PROTOCOL_VERSION,
            providers: Vec::new(),
        }))
        .await
        .expect("hello");
        let (tx, mut rx) = mpsc::channel::<ClientFrame>(16);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = sink.send(Message::Close(None)).await;
                    return;
                }
                Some(frame) = rx.recv() => {
                    if sink.send(text(&frame)).await.is_err() {
                        return;
                    }
                }
                msg = stream.next() => {
                    let Some(Ok(msg)) = msg else { return };
                    let Message::Text(t) = msg else { continue };
                    let Ok(ServerFrame::Command { id, command }) = serde_json::from_str(&t) else {
                        continue;
                    };
                    let (client, serving, tx) = (client.clone(), serving.clone(), tx.clone());
                    tokio::spawn(async move {
                        let result = answer(&client, &serving, command).await;
                        let _ = tx.send(ClientFrame::Reply { id, result }).await;
                    });
                }
            }
        }
    }

    async fn answer(
        client: &Client,
        serving: &Mutex<Serving>,
        command: DaemonCommand,
    ) -> Result<DaemonReply, ApiError> {
        match command {
            DaemonCommand::WorkspaceCheck { .. } => Ok(DaemonReply::WorkspaceChecked {
                files: 1,
                bytes: 4096,
            }),
            DaemonCommand::WorkspaceSend {
                transfer_id,
                session,
                ..
            } => {
                let cipher = client
                    .cipher(&session)
                    .map_err(|e| e.to_api())?
                    .transfer(transfer_id);
                let serving = serving.lock().expect("lock").clone();
                let conn = TransferConn {
                    client: client.clone(),
                    transfer: transfer_id,
                    tuning: TransferTuning::default(),
                };
                tokio::spawn(async move {
                    match serving.raw_chunks {
                        Some(chunks) => {
                            if let Err(e) =
                                raw(&conn, transfer_id, cipher, &serving.blob, chunks).await
                            {
                                eprintln!("fake source: raw serving ended: {e}");
                            }
                        }
                        None => {
                            let feed = match BlobFeed::single(cipher.clone(), &serving.blob) {
                                Ok(feed) => feed,
                                Err(e) => {
                                    eprintln!("fake source: {e}");
                                    return;
                                }
                            };
                            let r = serve_source(
                                &conn,
                                cipher,
                                Arc::new(Nothing),
                                feed,
                                CancellationToken::new(),
                            )
                            .await;
                            if let Err(e) = r {
                                eprintln!("fake source: serving ended: {e}");
                            }
                        }
                    }
                });
                Ok(DaemonReply::WorkspaceServing {
                    files: 1,
                    bytes: 4096,
                })
            }
            // A hostile tree must be refused before the source is asked to stop; a valid one
            // (the control case) gets this far, and no further.
            DaemonCommand::Quiesce { .. } | DaemonCommand::Export { .. } => {
                let hook = serving.lock().expect("lock").on_quiesce.clone();
                if let Some(f) = hook {
                    f();
                }
                Err(ApiError::new(
                    ErrorCode::Internal,
                    "The fake source was asked to stop: the target accepted its pre-copy.",
                ))
            }
            _ => Ok(DaemonReply::Ok),
        }
    }

    /// The source's end of a transfer, frame by frame, sending whatever bytes it was given for
    /// each wanted hash.
    async fn raw(
        conn: &TransferConn,
        transfer: HandoffId,
        cipher: TransferCipher,
        blob: &[u8],
        chunks: HashMap<ContentHash, Vec<u8>>,
    ) -> Result<(), String> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_TRANSFER_FRAME))
            .max_frame_size(Some(MAX_TRANSFER_FRAME));
        let mut ws = conn
            .client
            .connect_ws_at(&transfer_ws_path(transfer, TransferRole::Source), config)
            .await
            .map_err(|e| e.to_string())?;
        let sealed = cipher.seal_blob(0, blob).into_vec();
        while let Some(msg) = ws.next().await {
            let Message::Binary(bytes) = msg.map_err(|e| e.to_string())? else {
                continue;
            };
            let reply: Vec<Vec<u8>> = match decode(&bytes).map_err(|e| e.to_string())? {
                // One part only: the whole manifest.
                Frame::WantBlob { seq: 0, offset } => {
                    let at = (offset as usize).min(sealed.len());
                    vec![
                        encode_blob(0, sealed.len() as u64, at as u64, &sealed[at..])
                            .map_err(|e| e.to_string())?,
                    ]
                }
                Frame::Want { round, hashes } => hashes
                    .iter()
                    .map(|hash| {
                        let data = chunks.get(&hash).cloned().unwrap_or_default();
                        let mut frame = ChunksFrame::new(round, data.len() + 128);
                        cipher
                            .seal_chunk_to(&hash, &data, &mut frame)
                            .map(|()| frame.finish())
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Result<_, _>>()?,
                Frame::Done => {
                    let _ = ws.send(Message::Binary(encode_done_ack().into())).await;
                    return Ok(());
                }
                Frame::Abort(reason) => return Err(format!("the target aborted: {reason}")),
                _ => Vec::new(),
            };
            for f in reply {
                ws.send(Message::Binary(f.into()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

fn dir_entry(path: &str) -> WorkspaceEntry {
    WorkspaceEntry {
        path: path.into(),
        mode: 0o755,
        mtime_ns: 1_700_000_000_000_000_000,
        kind: EntryKind::Dir,
    }
}

fn file_entry(path: &str, size: u64, chunks: &[(ContentHash, u32)]) -> WorkspaceEntry {
    WorkspaceEntry {
        path: path.into(),
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000,
        kind: EntryKind::File(FileData {
            size,
            hash: ContentHash([0xAB; 32]),
            chunks: chunks
                .iter()
                .map(|(hash, len)| ChunkRef {
                    hash: *hash,
                    len: *len,
                })
                .collect(),
        }),
    }
}

/// A small file named correctly: chunk and file hash are the content's BLAKE3.
fn valid_file_entry(path: &str, data: &[u8]) -> WorkspaceEntry {
    let hash = blake3_small(data);
    let mut e = file_entry(path, data.len() as u64, &[(hash, data.len() as u32)]);
    if let EntryKind::File(f) = &mut e.kind {
        f.hash = hash;
    }
    e
}

/// The bytes `valid_file_entry` names, to serve.
fn chunks_of(files: &[&[u8]]) -> Option<std::collections::HashMap<ContentHash, Vec<u8>>> {
    Some(
        files
            .iter()
            .map(|d| (blake3_small(d), d.to_vec()))
            .collect(),
    )
}

fn link_entry(path: &str, target: &str) -> WorkspaceEntry {
    WorkspaceEntry {
        path: path.into(),
        mode: 0o777,
        mtime_ns: 1_700_000_000_000_000_000,
        kind: EntryKind::Symlink {
            target: target.into(),
        },
    }
}

fn manifest(entries: Vec<WorkspaceEntry>) -> Vec<u8> {
    let manifest = WorkspaceManifest {
        version: MANIFEST_VERSION,
        params: ChunkParams::DEFAULT,
        root_mode: 0o755,
        root_mtime_ns: 1_700_000_000_000_000_000,
        entries,
        skipped: Vec::new(),
    };
    // The whole manifest as the one and last part of the pass.
    serde_json::to_vec(&ManifestPart {
        last: true,
        files: manifest.file_count(),
        bytes: manifest.total_bytes(),
        manifest,
        delta: None,
    })
    .expect("manifest encodes")
}

/// One hostile case: what is served, and what the refusal must say.
struct Hostile {
    name: &'static str,
    serving: fake::Serving,
    codes: &'static [&'static str],
    says: &'static str,
}

fn hostile_cases(outside: &Path) -> Vec<Hostile> {
    let h = |n: u8| ContentHash([n; 32]);
    let abs = outside.join("abs-victim").to_string_lossy().into_owned();
    // Leaked on purpose: the cases outlive this function and the path is small.
    let abs: &'static str = Box::leak(abs.into_boxed_str());
    let manifest_case = |name, entries, says| Hostile {
        name,
        serving: fake::Serving {
            blob: manifest(entries),
            raw_chunks: None,
            ..Default::default()
        },
        codes: &["invalid_workspace_manifest"],
        says,
    };
    // A manifest sent as a change to a pass the target never received whole.
    let as_change = {
        let mut m: ManifestPart =
            serde_json::from_slice(&manifest(vec![file_entry("x", 5, &[(h(9), 5)])]))
                .expect("parse");
        m.delta = Some(PartDelta {
            base: baton_proto::HandoffId::new(),
            removed: vec!["README".into()],
            digest: Some(h(10)),
        });
        serde_json::to_vec(&m).expect("encode")
    };
    vec![
        Hostile {
            name: "a change to a pass the target does not hold",
            serving: fake::Serving {
                blob: as_change,
                raw_chunks: None,
                ..Default::default()
            },
            codes: &["invalid_workspace_manifest"],
            says: "which this machine does not hold whole",
        },
        manifest_case(
            "a path climbing out with ..",
            vec![file_entry("../escape", 5, &[(h(1), 5)])],
            "`..` component",
        ),
        manifest_case(
            "an absolute path",
            vec![file_entry(abs, 5, &[(h(2), 5)])],
            "absolute path",
        ),
        manifest_case(
            "a duplicate path",
            vec![
                dir_entry("a"),
                file_entry("a/x", 5, &[(h(3), 5)]),
                file_entry("a/x", 6, &[(h(4), 6)]),
            ],
            "duplicate path",
        ),
        manifest_case(
            "a path through a symlink",
            vec![
                link_entry("link", "sub"),
                file_entry("link/evil", 5, &[(h(5), 5)]),
                dir_entry("sub"),
            ],
            "goes through the symlink link",
        ),
        manifest_case(
            "a symlink leaving the tree",
            vec![link_entry("out", "../../outside")],
            "leaves the workspace",
        ),
        manifest_case(
            "chunk lengths that do not add up to the size",
            vec![file_entry("f", 100, &[(h(6), 50)])],
            "chunk lengths sum to 50 bytes but the file is 100 bytes",
        ),
        Hostile {
            name: "a manifest that is not one",
            serving: fake::Serving {
                blob: b"{\"version\": 1, \"entries\": \"all of /etc\"".to_vec(),
                raw_chunks: None,
                ..Default::default()
            },
            codes: &["invalid_workspace_manifest"],
            says: "does not parse",
        },
        Hostile {
            name: "a chunk longer than the manifest says",
            serving: fake::Serving {
                blob: manifest(vec![file_entry("f", 1000, &[(h(7), 1000)])]),
                raw_chunks: Some([(h(7), noise(7, 1500))].into_iter().collect()),
                ..Default::default()
            },
            codes: &["transfer_failed", "verify_failed"],
            says: "the manifest says 1000",
        },
        Hostile {
            name: "a chunk whose bytes do not match its hash",
            serving: fake::Serving {
                blob: manifest(vec![file_entry("f", 1000, &[(h(8), 1000)])]),
                raw_chunks: Some([(h(8), noise(8, 1000))].into_iter().collect()),
                ..Default::default()
            },
            codes: &["verify_failed"],
            says: "does not hash to its name",
        },
        Hostile {
            name: "a file whose hash is not its content's",
            serving: fake::Serving {
                blob: manifest(vec![
                    dir_entry("src"),
                    // Its one chunk is named right; the whole file's hash lies.
                    file_entry(
                        "src/main.rs",
                        LIAR.len() as u64,
                        &[(blake3_small(LIAR), LIAR.len() as u32)],
                    ),
                ]),
                raw_chunks: chunks_of(&[LIAR]),
                ..Default::default()
            },
            codes: &["verify_failed", "transfer_failed"],
            says: "does not verify",
        },
    ]
}

const LIAR: &[u8] = b"fn main() { hostile(); }\n";

/// Laptop owns a session; its daemon is replaced by the fake source; desktop has an existing
/// destination `desktop-ws/proj` with files of its own.
struct HostileWorld {
    w: World,
    rt: tokio::runtime::Runtime,
    stop: tokio_util::sync::CancellationToken,
    serving: Arc<Mutex<fake::Serving>>,
    session: String,
    dest: PathBuf,
}

impl HostileWorld {
    fn new() -> Self {
        let mut w = World::new(&["laptop", "desktop"]);
        let (session, _) = session_with(&w, "proj", &[("src/main.rs", b"fn main() {}\n".to_vec())]);
        let dest = PathBuf::from(w.dir("desktop-ws")).join("proj");
        put(&dest, "src/main.rs", b"fn main() { desktop(); }\n");
        put(&dest, "keep/me.bin", &noise(42, 70_000));
        symlink("keep", dest.join("keep-link")).expect("link");

        w.c.stop_daemon(LAPTOP);
        w.c.wait_online(&["laptop"], false, Duration::from_secs(60))
            .expect("laptop offline");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let identity = baton_daemon::identity::Identity::load(&w.c.machines[LAPTOP].baton_home)
            .expect("laptop identity");
        let client = baton_daemon::client::Client::new(Arc::new(identity), None).expect("client");
        let serving = Arc::new(Mutex::new(fake::Serving::default()));
        let stop = tokio_util::sync::CancellationToken::new();
        rt.spawn(fake::source(client, serving.clone(), stop.clone()));
        w.c.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))
            .expect("the fake source is online");
        Self {
            w,
            rt,
            stop,
            serving,
            session,
            dest,
        }
    }

    /// Hands off to the fake-served tree with `extra`; returns exit code and document.
    fn attempt(&self, serving: fake::Serving, extra: &[&str]) -> (i32, Value) {
        *self.serving.lock().expect("lock") = serving;
        let dest = self.dest.to_string_lossy();
        let mut args = vec!["--workspace", "--path", dest.as_ref(), "--timeout", "120"];
        args.extend_from_slice(extra);
        self.w.handoff(LAPTOP, &self.session, "desktop", &args)
    }

    /// The real laptop daemon back, the session still its own and usable.
    fn finish(mut self) {
        self.stop.cancel();
        self.rt.shutdown_timeout(Duration::from_secs(5));
        self.w.c.start_daemon(LAPTOP).expect("laptop daemon");
        self.w
            .c
            .wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))
            .expect("online");
        let row = self.w.session(LAPTOP, &self.session);
        assert_eq!(row["owner"]["name"], "laptop", "{row}");
        assert_eq!(row["epoch"], 1, "{row}");
        let reply = self.w.send(LAPTOP, &self.session, "still mine");
        assert!(reply.starts_with("Turn 2."), "{reply}");
    }
}

#[test]
fn the_target_refuses_hostile_manifests_and_chunks_and_keeps_the_destination() {
    let hw = HostileWorld::new();
    let w = &hw.w;
    let desk = hw.dest.parent().expect("parent").to_path_buf();
    let outside = PathBuf::from(w.dir("outside"));
    let before = exact(&desk);
    let outside_before = exact(&outside);
    for case in hostile_cases(&outside) {
        let (rc, out) = hw.attempt(case.serving, &["--conflict", "replace"]);
        let name = case.name;
        assert_ne!(rc, 0, "{name}: accepted: {out}");
        assert_eq!(out["result"], "aborted", "{name}: {out}");
        let code = out["error"]["code"].as_str().unwrap_or_default();
        assert!(case.codes.contains(&code), "{name}: code {code}: {out}");
        let msg = out["error"]["message"].as_str().unwrap_or_default();
        eprintln!("{name}: {code}: {msg} (phases {:?})", phases(&out));
        assert!(
            msg.contains(case.says),
            "{name}: the error does not say {:?}: {msg}",
            case.says
        );
        assert!(
            !phases(&out).iter().any(|p| p == "quiesce_source"),
            "{name}: refused only after the source was stopped: {out}"
        );
        assert_cleaned_up(w, DESKTOP, &hw.dest);
        assert_eq!(exact(&desk), before, "{name}: the destination changed");
        assert_eq!(exact(&outside), outside_before, "{name}: wrote outside");
        assert!(!desk.join("escape").exists() && !outside.join("abs-victim").exists());
    }

    // Control: a valid hand-made tree from the same fake passes the target's checks and is
    // pre-copied into staging (so the refusals above are the hostile parts' doing). The fake
    // then refuses to stop, which aborts the handoff.
    let main_rs: &[u8] = b"fn main() { println!(\"fake\"); }\n";
    let readme: &[u8] = b"# served by a fake source\n";
    // What the staging held when the source was asked to stop: src/main.rs and main-link.
    type Staged = Option<(Vec<u8>, PathBuf)>;
    let staged: Arc<Mutex<Staged>> = Arc::default();
    let probe = {
        let (staged, desk) = (staged.clone(), desk.clone());
        move || {
            let dir = stray(&desk)
                .into_iter()
                .find(|n| n.contains(".baton-staging-"))
                .map(|n| desk.join(n).join("tree"));
            *staged.lock().expect("lock") = dir.and_then(|d| {
                let data = std::fs::read(d.join("src/main.rs")).ok()?;
                let link = std::fs::read_link(d.join("main-link")).ok()?;
                Some((data, link))
            });
        }
    };
    let control = fake::Serving {
        blob: manifest(vec![
            valid_file_entry("README", readme),
            link_entry("main-link", "src/main.rs"),
            dir_entry("src"),
            valid_file_entry("src/main.rs", main_rs),
        ]),
        raw_chunks: chunks_of(&[main_rs, readme]),
        on_quiesce: Some(Arc::new(probe)),
    };
    let (rc, out) = hw.attempt(control, &["--conflict", "replace"]);
    assert_ne!(rc, 0, "{out}");
    assert!(
        phases(&out).iter().any(|p| p == "quiesce_source"),
        "the valid tree was refused: {out}"
    );
    let msg = out["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("accepted its pre-copy"), "{out}");
    assert_eq!(
        staged.lock().expect("lock").clone(),
        Some((main_rs.to_vec(), PathBuf::from("src/main.rs"))),
        "the pre-copy staged the fake's files"
    );
    assert_cleaned_up(w, DESKTOP, &hw.dest);
    assert_eq!(exact(&desk), before, "control: the destination changed");
    hw.finish();
}

#[test]
fn a_dry_run_refuses_a_hostile_manifest_instead_of_planning_it() {
    let hw = HostileWorld::new();
    let desk = hw.dest.parent().expect("parent").to_path_buf();
    let before = exact(&desk);
    let serving = fake::Serving {
        blob: manifest(vec![
            dir_entry("a"),
            file_entry("a/x", 5, &[(ContentHash([3; 32]), 5)]),
            file_entry("a/x", 5, &[(ContentHash([3; 32]), 5)]),
            file_entry("../escape", 5, &[(ContentHash([1; 32]), 5)]),
        ]),
        raw_chunks: None,
        ..Default::default()
    };
    let (rc, out) = hw.attempt(serving, &["--dry-run", "--conflict", "replace"]);
    assert_eq!(
        out["error"]["code"], "invalid_workspace_manifest",
        "the plan pass took a hostile manifest as a plan (exit {rc}): {out}"
    );
    assert_ne!(rc, 0, "{out}");
    assert_cleaned_up(&hw.w, DESKTOP, &hw.dest);
    assert_eq!(exact(&desk), before);
    hw.finish();
}

// ---------------------------------------------------------------------------------------------
// 7. Too little space at the destination.

/// A tmpfs mounted for the test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Result<Self, String> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn too_little_space_at_the_destination_is_refused_in_preflight() {
    let w = World::new(&["laptop", "desktop"]);
    let small = PathBuf::from(w.dir("small-fs"));
    // The daemon keeps 16 MiB free beyond the tree: 20 MiB holds a small tree, not 6 MiB more.
    let _mount = match Mount::tmpfs(&small, "20m") {
        Ok(m) => m,
        Err(why) => {
            if std::env::var("BATON_REQUIRE_MOUNT").as_deref() == Ok("1") {
                panic!("a tmpfs is required (BATON_REQUIRE_MOUNT=1): {why}");
            }
            eprintln!("skipping: needs to mount a small tmpfs ({why})");
            return;
        }
    };

    let big: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("big/b{i}.bin"), noise(700 + i, 1024 * 1024)))
        .collect();
    let big: Vec<(&str, Vec<u8>)> = big.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let (s, ws_a) = session_with(&w, "big", &big);
    let dest = small.join("big");
    let (rc, out) = w.handoff(
        LAPTOP,
        &s,
        "desktop",
        &["--workspace", "--path", &dest.to_string_lossy()],
    );
    assert_eq!(rc, 3, "refused by preflight: {out}");
    assert_eq!(out["error"]["code"], "insufficient_space", "{out}");
    assert_eq!(out["result"], "aborted", "{out}");
    let msg = out["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("needs") && msg.contains("available"), "{msg}");
    let seen = phases(&out);
    assert!(
        !seen
            .iter()
            .any(|p| p == "prepare_target" || p == "precopy" || p == "quiesce_source"),
        "found after preflight: {seen:?}"
    );
    // Nothing was stopped, nothing was written.
    let row = w.session(LAPTOP, &s);
    assert_eq!(row["owner"]["name"], "laptop", "{row}");
    assert_eq!(row["epoch"], 1, "{row}");
    assert_eq!(
        agent_pids(w.home(LAPTOP)).len(),
        1,
        "the provider kept running"
    );
    assert!(w.send(LAPTOP, &s, "still here").starts_with("Turn 2."));
    let on_small: Vec<_> = std::fs::read_dir(&small)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(on_small.is_empty(), "{on_small:?}");
    assert!(ws_a.join("big/b5.bin").is_file());

    // The same filesystem takes a tree that fits: the refusal was about size.
    let (s2, ws_small) = session_with(&w, "tiny", &[("a.txt", b"fits\n".to_vec())]);
    let dest2 = small.join("tiny");
    moved(&w, LAPTOP, &s2, "desktop", &dest2, &[]);
    assert_eq!(content(&dest2, &[]), content(&ws_small, &[]));
}

/// The disk fills up after preflight (another program writes to it): the transfer fails with
/// `insufficient_space`, before the source is stopped, and leaves nothing behind.
#[test]
fn a_disk_that_fills_after_preflight_fails_the_transfer_as_insufficient_space() {
    let w = world_with(&[(DESKTOP, "BATON_TEST_DELAY_WORKSPACE_RECEIVE_MS", "2000")]);
    let small = PathBuf::from(w.dir("small-fs"));
    let _mount = match Mount::tmpfs(&small, "24m") {
        Ok(m) => m,
        Err(why) => {
            if std::env::var("BATON_REQUIRE_MOUNT").as_deref() == Ok("1") {
                panic!("a tmpfs is required (BATON_REQUIRE_MOUNT=1): {why}");
            }
            eprintln!("skipping: needs to mount a small tmpfs ({why})");
            return;
        }
    };
    // Small files (no preallocation), 4 MB: preflight's 4 MB + 16 MiB fits in 24 MiB.
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("f/{i:02}.bin"), noise(800 + i, 100_000)))
        .collect();
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let (s, _ws_a) = session_with(&w, "proj", &files);
    let dest = small.join("proj");
    let child = spawn_handoff_to_desktop(&w, &s, &dest, &[]);
    // Preflight passed; while the target holds the plan pass, something else fills the disk to
    // all but 512 KiB.
    wait_phase(&w, &s, "prepare_target", Duration::from_secs(30));
    let filler = small.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0x5Au8; 1 << 20];
        let mut written = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        f.set_len(written.saturating_sub(512 * 1024))
            .expect("truncate");
        f.sync_all().expect("sync");
    }
    assert_eq!(
        last_handoff(&w, &s).expect("handoff").0,
        "prepare_target",
        "the disk filled before the transfer"
    );

    let (rc, out) = finished(child);
    assert_eq!(out["result"], "aborted", "{out}");
    assert!(
        !phases(&out).iter().any(|p| p == "quiesce_source"),
        "found only after the source was stopped: {out}"
    );
    assert_cleaned_up(&w, DESKTOP, &dest);
    assert!(!dest.exists(), "nothing at the destination");
    assert_eq!(
        out["error"]["code"], "insufficient_space",
        "a full disk during the transfer (exit {rc}): {out}"
    );
    let row = w.session(LAPTOP, &s);
    assert_eq!(row["owner"]["name"], "laptop", "{row}");
    std::fs::remove_file(&filler).expect("rm filler");
}

#[test]
fn a_tree_streamed_in_many_manifest_parts_arrives_whole() {
    // Parts from 4 KiB on, and walks that spill to disk past 16 paths: this small tree travels
    // in dozens of parts and its walks are merged from sorted runs, as a big one's would be.
    let w = world_with(&[
        (LAPTOP, "BATON_TEST_MANIFEST_PART_BYTES", "4096"),
        (DESKTOP, "BATON_TEST_MANIFEST_PART_BYTES", "4096"),
        (LAPTOP, "BATON_TEST_WALK_SPILL_ENTRIES", "16"),
        (DESKTOP, "BATON_TEST_WALK_SPILL_ENTRIES", "16"),
    ]);
    let mut files: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| {
            (
                format!("src/m{:02}/f{i}.rs", i % 7),
                noise(900 + i, 3000 + i as usize * 13),
            )
        })
        .collect();
    // The same content first and last in path order: the later part reuses what the earlier
    // one staged. Plus a file of several chunks and an empty one.
    files.push(("a-early/same.bin".into(), noise(4242, 70_000)));
    files.push(("z-late/same.bin".into(), noise(4242, 70_000)));
    files.push(("m-big/several-chunks.bin".into(), noise(7, 700_000)));
    files.push(("z-late/empty".into(), Vec::new()));
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let (s, ws_a) = session_with(&w, "proj", &files);
    let dest = PathBuf::from(w.dir("desktop-ws")).join("proj");

    let out = moved(&w, LAPTOP, &s, "desktop", &dest, &[]);
    assert_eq!(content(&dest, &[]), content(&ws_a, &[]), "{out}");
    let ws = &out["workspace"];
    assert_eq!(ws["files"].as_u64(), Some(files.len() as u64), "{ws}");
    // The duplicate travelled once.
    let total = ws["bytes_total"].as_u64().expect("bytes_total");
    assert_eq!(ws["bytes_sent"].as_u64(), Some(total - 70_000), "{ws}");
    let parts = daemon_log(&w, DESKTOP)
        .matches("received a manifest part")
        .count();
    assert!(
        parts >= 3,
        "the manifest came in {parts} parts after the first"
    );

    // Back over laptop's tree after one edit: the kept scans (on disk) spare every other
    // file's chunks, and the tree arrives whole.
    std::fs::write(dest.join("src/m03/f3.rs"), b"edited on desktop\n").expect("edit");
    let out = moved(&w, DESKTOP, &s, "laptop", &ws_a, &["--conflict", "replace"]);
    assert_eq!(content(&ws_a, &[]), content(&dest, &[]), "{out}");
    let sent = out["workspace"]["bytes_sent"].as_u64().expect("bytes_sent");
    assert!(sent <= 64 * 1024, "only the edit travels back: {out}");
    // Nothing is left in either daemon's scan directory once the daemons let go, and no file
    // is ever visible there (spools are unlinked from the start).
    for m in [LAPTOP, DESKTOP] {
        let scans = w.c.machines[m].baton_home.join("scans");
        let left = std::fs::read_dir(&scans).map_or(0, |d| d.count());
        assert_eq!(left, 0, "files in {}", scans.display());
    }
}

/// Starts `baton --json handoff S --to desktop --workspace --path DEST EXTRA…` on laptop,
/// without waiting for it.
fn spawn_handoff_to_desktop(
    w: &World,
    s: &str,
    dest: &Path,
    extra: &[&str],
) -> std::process::Child {
    let dest = dest.to_string_lossy();
    let mut args = vec![
        "--json",
        "handoff",
        s,
        "--to",
        "desktop",
        "--workspace",
        "--path",
        &dest,
    ];
    args.extend_from_slice(extra);
    w.spawn(LAPTOP, &args)
}
