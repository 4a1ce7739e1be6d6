//! Connected services, provider-session listings, Direct sessions (open, read, handoff with
//! `--direct keep|sync`), fork and attach — end to end with the scripted provider.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{World, agent_conversation, assert_dense, code, exe, parse, wait_for};
use serde_json::Value;

const LAPTOP: usize = 0;
const DESKTOP: usize = 1;

/// Runs `baton --json ARGS` as machine `idx` with extra environment.
fn baton_env(w: &World, idx: usize, env: &[(&str, &str)], args: &[&str]) -> (i32, Value) {
    let m = &w.c.machines[idx];
    let out = Command::new(exe())
        .arg("--json")
        .args(args)
        .env("HOME", &m.home)
        .env("BATON_HOME", &m.baton_home)
        .envs(env.iter().copied())
        .output()
        .expect("baton runs");
    (code(&out), parse(&out))
}

fn scripted_auth(w: &World, idx: usize, machine: &str) -> String {
    let machines = w.c.json(idx, &["machines"]).expect("machines");
    machines
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == machine))
        .and_then(|m| m["providers"].as_array())
        .and_then(|p| p.iter().find(|p| p["name"] == "scripted"))
        .and_then(|p| p["auth"].as_str())
        .unwrap_or("?")
        .to_string()
}

#[test]
fn a_connected_service_lets_a_logged_out_machine_take_a_handoff() {
    let mut w = World::new(&["laptop"]);
    let d = w.c.add_machine("desktop", false).expect("desktop enrols");
    w.c.start_daemon(d).expect("daemon");
    w.c.wait_online(&["desktop"], true, Duration::from_secs(30))
        .expect("online");
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    w.send(LAPTOP, &s, "first words");

    assert_eq!(scripted_auth(&w, LAPTOP, "desktop"), "missing");
    let (rc, out) = w.handoff(LAPTOP, &s, "desktop", &[]);
    assert_eq!(rc, 3, "{out}");
    assert_eq!(out["error"]["code"], "provider_auth_missing", "{out}");

    // A key that is not in the environment is refused before anything is stored.
    let (rc, out) = baton_env(
        &w,
        LAPTOP,
        &[],
        &[
            "services",
            "add",
            "scripted",
            "--api-key-from-env",
            "NOPE_NOT_SET",
        ],
    );
    assert_eq!(rc, 2, "{out}");
    let (rc, out) = baton_env(
        &w,
        LAPTOP,
        &[("SCRIPTED_AGENT_API_KEY", "sk-test")],
        &[
            "services",
            "add",
            "scripted",
            "--api-key-from-env",
            "SCRIPTED_AGENT_API_KEY",
        ],
    );
    assert_eq!(rc, 0, "{out}");
    let (_, list) = baton_env(&w, DESKTOP, &[], &["services", "list"]);
    assert_eq!(list[0]["provider"], "scripted");
    assert_eq!(list[0]["variables"][0], "SCRIPTED_AGENT_API_KEY");
    assert!(
        !list.to_string().contains("sk-test"),
        "values are never printed"
    );

    let auth = wait_for(Duration::from_secs(20), || {
        let a = scripted_auth(&w, LAPTOP, "desktop");
        (a == "connected_service").then_some(a)
    });
    assert!(auth.is_some(), "desktop reports the connected service");
    let (rc, out) = w.handoff(LAPTOP, &s, "desktop", &[]);
    assert_eq!(rc, 0, "{out}");
    let reply = w.send(DESKTOP, &s, "and now?");
    assert!(
        reply.contains("Turn 2") && reply.contains("first words"),
        "{reply}"
    );

    let (rc, _) = baton_env(&w, LAPTOP, &[], &["services", "remove", "scripted"]);
    assert_eq!(rc, 0);
    let (rc, out) = baton_env(&w, LAPTOP, &[], &["services", "remove", "scripted"]);
    assert_eq!(rc, 1, "{out}");
    assert_eq!(out["error"]["code"], "not_found");
}

#[test]
fn provider_sessions_open_direct_then_hand_off_keep_and_sync() {
    let w = World::new(&["laptop", "desktop"]);
    let ws = w.dir("ws");
    agent_conversation(&w, LAPTOP, &ws, "conv-a", &["hello direct", "second turn"]);
    agent_conversation(&w, LAPTOP, &ws, "conv-b", &["import me"]);

    let list =
        w.c.json(
            DESKTOP,
            &[
                "provider-sessions",
                "--machine",
                "laptop",
                "--provider",
                "scripted",
            ],
        )
        .expect("listing");
    let a = list
        .as_array()
        .and_then(|l| l.iter().find(|s| s["provider_ref"] == "conv-a"))
        .expect("conv-a listed");
    assert_eq!(a["title"], "hello direct");
    assert_eq!(a["cwd"], ws.as_str());
    assert_eq!(list.as_array().map(Vec::len), Some(2));

    // Linked as Direct: the transcript comes from laptop's files.
    let opened =
        w.c.json(DESKTOP, &["open", "conv-a", "--machine", "laptop"])
            .expect("open");
    let s = opened["session_id"].as_str().expect("id").to_string();
    assert_eq!(opened["mode"], "direct");
    let log = w.log(DESKTOP, &s);
    let texts: Vec<&str> = log.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(texts.len(), 4, "{log:?}");
    assert_eq!(texts[0], "hello direct");
    assert!(texts[1].contains("Turn 1"));
    assert!(texts[3].contains("Turn 2"));
    // Opening it twice is refused.
    let out =
        w.c.baton(
            DESKTOP,
            &["--json", "open", "conv-a", "--machine", "laptop"],
        )
        .unwrap();
    assert_eq!(code(&out), 1);
    // A Direct session is not steered from Baton.
    let out = w.c.baton(DESKTOP, &["--json", "send", &s, "hi"]).unwrap();
    assert_eq!(parse(&out)["error"]["code"], "session_not_active");

    // keep: the provider's files move and it stays direct, read on desktop now.
    let (rc, out) = w.handoff(LAPTOP, &s, "desktop", &[]);
    assert_eq!(rc, 0, "{out}");
    let row = w.session(LAPTOP, &s);
    assert_eq!(row["mode"], "direct");
    assert_eq!(row["owner"]["name"], "desktop");
    assert_eq!(w.log(LAPTOP, &s).len(), 4, "read from desktop's files");
    let desktop_list =
        w.c.json(LAPTOP, &["provider-sessions", "--machine", "desktop"])
            .expect("listing");
    assert!(desktop_list.to_string().contains("conv-a"));

    // sync: back on laptop it becomes synced with the provider's transcript imported.
    let (rc, out) = w.handoff(LAPTOP, &s, "laptop", &["--direct", "sync"]);
    assert_eq!(rc, 0, "{out}");
    let row = w.session(LAPTOP, &s);
    assert_eq!(row["mode"], "synced");
    let log = wait_for(Duration::from_secs(20), || {
        let l = w.log(LAPTOP, &s);
        (l.len() >= 4).then_some(l)
    })
    .expect("imported");
    assert_eq!(log[0]["text"], "hello direct");
    assert_dense(&log);
    let reply = w.send(LAPTOP, &s, "after sync");
    assert!(
        reply.contains("Turn 3") && reply.contains("hello direct"),
        "{reply}"
    );

    // --sync imports at once.
    let opened =
        w.c.json(LAPTOP, &["open", "conv-b", "--sync"])
            .expect("open --sync");
    let b = opened["session_id"].as_str().expect("id").to_string();
    let reply = w.send(LAPTOP, &b, "continue");
    assert!(
        reply.contains("Turn 2") && reply.contains("import me"),
        "{reply}"
    );
    let log = w.log(LAPTOP, &b);
    assert_eq!(log[0]["text"], "import me");
    assert_dense(&log);
}

#[test]
fn fork_copies_the_transcript_and_provider_state_up_to_a_turn() {
    let w = World::new(&["laptop"]);
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    w.send(LAPTOP, &s, "one");
    w.send(LAPTOP, &s, "two");
    let log = w.log(LAPTOP, &s);
    let first_end = log
        .iter()
        .find(|e| e["role"] == "assistant")
        .and_then(|e| e["seq"].as_u64())
        .expect("first turn end");
    let out =
        w.c.json(LAPTOP, &["fork", &s, "--at", &first_end.to_string()])
            .expect("fork");
    let f = out["session_id"].as_str().expect("id").to_string();
    assert_eq!(out["at_seq"], first_end);
    let reply = w.send(LAPTOP, &f, "fork talk");
    assert!(
        reply.contains("Turn 2") && reply.contains("\"one\"") && !reply.contains("two"),
        "the fork knows turn 1 only: {reply}"
    );
    let flog = w.log(LAPTOP, &f);
    assert_eq!(flog[0]["text"], "one");
    assert_eq!(flog.len() as u64, first_end + 2);
    assert_dense(&flog);
    // The parent goes on from its own state.
    let reply = w.send(LAPTOP, &s, "three");
    assert!(reply.contains("Turn 3"), "{reply}");
    // No turn ended by seq 1: nothing to fork.
    let out =
        w.c.baton(LAPTOP, &["--json", "fork", &s, "--at", "1"])
            .unwrap();
    assert_eq!(code(&out), 2);
}

#[test]
fn attach_prints_live_entries_and_sends_what_is_typed() {
    let w = World::new(&["laptop"]);
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    w.send(LAPTOP, &s, "before attach");
    let m = &w.c.machines[LAPTOP];
    let mut child = Command::new(exe())
        .args(["attach", &s])
        .env("HOME", &m.home)
        .env("BATON_HOME", &m.baton_home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("attach starts");
    {
        let stdin = child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "typed in attach").expect("write");
    }
    drop(child.stdin.take());
    let out = child
        .wait_with_output()
        .expect("attach ends at end of input");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("before attach"), "history shown: {text}");
    assert!(text.contains("typed in attach"), "{text}");
    assert!(
        text.contains("Turn 2"),
        "the reply is followed live: {text}"
    );
}
