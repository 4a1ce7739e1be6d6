//! Snapshots of every `--json` output shape, so a change to a shape is a visible decision.
//!
//! Ids, timestamps, durations, sizes, pairing codes and versions are redacted; the temp root is
//! replaced by `[root]` in every string, so the snapshots are the same on every run.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{World, code, exe, wait_for};
use insta::dynamic_redaction;
use insta::internals::{Content, ContentPath, Redaction};

use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Replaces `placeholder` for a present value, keeps `null` (whether a field can be absent is
/// part of the shape).
fn unless_null(placeholder: &'static str) -> Redaction {
    dynamic_redaction(move |value: Content, _: ContentPath<'_>| {
        if value.is_nil() {
            value
        } else {
            Content::from(placeholder)
        }
    })
}

/// Replaces the world's temp root (as given and canonical) by `[root]` in every string.
fn scrub(v: Value, root: &Path) -> Value {
    let raw = root.to_string_lossy().into_owned();
    let canonical = std::fs::canonicalize(root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| raw.clone());
    fn walk(v: Value, roots: &[&str]) -> Value {
        match v {
            Value::String(s) => {
                let mut s = s;
                for r in roots {
                    s = s.replace(r, "[root]");
                }
                Value::String(s)
            }
            Value::Array(a) => Value::Array(a.into_iter().map(|x| walk(x, roots)).collect()),
            Value::Object(o) => {
                Value::Object(o.into_iter().map(|(k, x)| (k, walk(x, roots))).collect())
            }
            other => other,
        }
    }
    // The longer first, so one is not left half-replaced by the other.
    let mut roots = vec![canonical.as_str(), raw.as_str()];
    roots.sort_by_key(|r| std::cmp::Reverse(r.len()));
    walk(v, &roots)
}

/// Stdout of a `--json` command as one JSON document (fails if it is not exactly one).
fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// What a failing command really printed: exit code, stdout (JSON), stderr (text).
fn failure(out: &Output, root: &Path) -> Value {
    let v = json!({
        "exit_code": code(out),
        "stdout": stdout_json(out),
        "stderr": String::from_utf8_lossy(&out.stderr).trim_end(),
    });
    scrub(v, root)
}

/// Runs `baton --json ARGS` as machine `idx` and returns its output.
fn run(w: &World, idx: usize, args: &[&str]) -> Output {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    w.c.baton(idx, &full).expect("baton runs")
}

/// Runs `baton --json ARGS` as machine `idx`, requires success, returns the scrubbed JSON.
fn ok_json(w: &World, idx: usize, args: &[&str]) -> Value {
    let out = run(w, idx, args);
    assert_eq!(
        code(&out),
        0,
        "baton {args:?} failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    scrub(stdout_json(&out), w.tmp.path())
}

#[test]
fn account_shapes() {
    let w = World::new(&["laptop", "desktop"]);

    let pair = ok_json(&w, 0, &["pair"]);
    let code_str = pair["code"].as_str().expect("code").to_string();
    insta::assert_json_snapshot!("pair", pair, {
        ".code" => "[code]",
        ".expires_at" => "[time]",
    });

    // A third machine joins with the code (and stays offline: no daemon).
    let home = w.tmp.path().join("tablet/home");
    std::fs::create_dir_all(&home).expect("mkdir");
    let out = Command::new(exe())
        .args([
            "--json", "login", "--server", &w.c.url, "--name", "tablet", "--code", &code_str,
        ])
        .env("HOME", &home)
        .env("BATON_HOME", w.tmp.path().join("tablet/baton"))
        .stdin(Stdio::null())
        .output()
        .expect("login runs");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let login = scrub(stdout_json(&out), w.tmp.path());
    assert_eq!(login["server"], w.c.url.as_str());
    insta::assert_json_snapshot!("login_join", login, {
        ".account_id" => "[account_id]",
        ".machine_id" => "[machine_id]",
        ".server" => "[url]",
    });

    // Both daemons have reported their providers (and last_seen) before the snapshot.
    let machines = wait_for(WAIT, || {
        let v = ok_json(&w, 0, &["machines"]);
        let ready = v.as_array()?.iter().all(|m| {
            m["name"] == "tablet"
                || (m["online"] == true && m["providers"].as_array().is_some_and(|p| !p.is_empty()))
        });
        ready.then_some(v)
    })
    .expect("machines report their providers");
    let mut list = machines.as_array().cloned().expect("array");
    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    for m in &mut list {
        // Only the scripted provider is the same on every computer; real CLIs may or may not
        // be installed where the tests run.
        if let Some(p) = m["providers"].as_array_mut() {
            p.retain(|p| p["name"] == "scripted");
        }
    }
    insta::assert_json_snapshot!("machines", list, {
        "[].id" => "[machine_id]",
        "[].last_seen" => unless_null("[time]"),
        "[].providers[].version" => unless_null("[version]"),
    });
}

#[test]
fn session_shapes() {
    let w = World::new(&["laptop"]);
    let root = w.tmp.path();
    let ws = w.dir("laptop/home/projects/shapes");

    let new = ok_json(&w, 0, &["new", "--provider", "scripted", "--path", &ws]);
    let sid = new["session_id"].as_str().expect("session_id").to_string();
    insta::assert_json_snapshot!("new", new, { ".session_id" => "[session_id]" });

    let send = ok_json(
        &w,
        0,
        &["send", &sid, "Please remember the word \"PERSIMMON\"."],
    );
    insta::assert_json_snapshot!("send", send);

    let queued = ok_json(&w, 0, &["send", "--no-wait", &sid, "And now?"]);
    insta::assert_json_snapshot!("send_no_wait", queued, { ".input_id" => "[input_id]" });
    // The queued message is answered before the transcript is snapshotted.
    let log = wait_for(WAIT, || {
        let v = ok_json(&w, 0, &["log", &sid]);
        (v.as_array()?.len() >= 4).then_some(v)
    })
    .expect("the queued message is answered");
    insta::assert_json_snapshot!("log", log);

    let sessions = ok_json(&w, 0, &["sessions"]);
    insta::assert_json_snapshot!("sessions", sessions, {
        "[].id" => "[session_id]",
        "[].owner.id" => "[machine_id]",
    });

    let stop = ok_json(&w, 0, &["stop", &sid]);
    insta::assert_json_snapshot!("stop", stop, { ".session_id" => "[session_id]" });

    // Failures print one `{"error": …}` document on stdout and the error on stderr.
    let unknown = "01a00000-0000-7000-8000-000000000000";
    let out = run(&w, 0, &["log", unknown]);
    assert_ne!(code(&out), 0);
    insta::assert_json_snapshot!("error_not_found", failure(&out, root));

    let out = run(
        &w,
        0,
        &["handoff", &sid, "--to", "laptop", "--path", "relative/dir"],
    );
    assert_ne!(code(&out), 0);
    insta::assert_json_snapshot!("error_usage", failure(&out, root));
}

#[test]
fn handoff_shapes() {
    let w = World::new(&["laptop", "desktop"]);
    let root = w.tmp.path();
    let ws = w.dir("laptop/home/projects/shapes");
    let target = w.dir("desktop/home/code/shapes");
    let sid = w.new_session(0, &ws);
    w.send(0, &sid, "Please remember the word PERSIMMON.");

    let phase_times = |p: &str| -> Vec<(String, Redaction)> {
        [
            ("started_at", "[time]"),
            ("ended_at", "[time]"),
            ("duration_ms", "[ms]"),
        ]
        .into_iter()
        .map(|(f, r)| (format!("{p}.phases[].{f}"), unless_null(r)))
        .collect()
    };

    let handoff = ok_json(
        &w,
        0,
        &["handoff", &sid, "--to", "desktop", "--path", &target],
    );
    assert_eq!(handoff["result"], "committed", "{handoff}");
    let mut settings = insta::Settings::clone_current();
    settings.add_redaction(".handoff_id", "[handoff_id]");
    settings.add_redaction(".session_id", "[session_id]");
    settings.add_redaction(".from.id", "[machine_id]");
    settings.add_redaction(".to.id", "[machine_id]");
    for (sel, r) in phase_times("") {
        settings.add_redaction(&sel, r);
    }
    settings.bind(|| insta::assert_json_snapshot!("handoff", handoff));

    // A handoff back to a directory that does not exist is refused by preflight: the handoff
    // document (with its error) on stdout, the error line on stderr, exit 3.
    let missing = format!("{}/laptop/home/nowhere", root.display());
    let out = run(
        &w,
        1,
        &["handoff", &sid, "--to", "laptop", "--path", &missing],
    );
    assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    let failed = failure(&out, root);
    assert_eq!(failed["stdout"]["result"], "aborted", "{failed}");
    let mut settings = insta::Settings::clone_current();
    settings.add_redaction(".stdout.handoff_id", "[handoff_id]");
    settings.add_redaction(".stdout.session_id", "[session_id]");
    settings.add_redaction(".stdout.from.id", "[machine_id]");
    settings.add_redaction(".stdout.to.id", "[machine_id]");
    for (sel, r) in phase_times(".stdout") {
        settings.add_redaction(&sel, r);
    }
    settings.bind(|| insta::assert_json_snapshot!("handoff_failed", failed));

    let history = ok_json(&w, 0, &["handoffs", &sid]);
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");
    let mut settings = insta::Settings::clone_current();
    settings.add_redaction("[].id", "[handoff_id]");
    settings.add_redaction("[].from.id", "[machine_id]");
    settings.add_redaction("[].to.id", "[machine_id]");
    settings.add_redaction("[].created_at", "[time]");
    settings.add_redaction("[].duration_ms", unless_null("[ms]"));
    settings.add_redaction("[].bytes", "[bytes]");
    for (sel, r) in phase_times("[]") {
        settings.add_redaction(&sel, r);
    }
    settings.bind(|| insta::assert_json_snapshot!("handoffs", history));

    // The transcript across the move (entries of both epochs, the system note between).
    let reply = w.send(0, &sid, "Which word was it?");
    assert!(reply.contains("PERSIMMON"), "{reply}");
    let log = scrub(Value::Array(w.log(0, &sid)), root);
    insta::assert_json_snapshot!("log_after_handoff", log);
}
