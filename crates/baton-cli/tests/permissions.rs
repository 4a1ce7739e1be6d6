//! Tool approvals end to end with the scripted provider: a request reaches every watching client
//! and is answered from any of them (first answer wins); one still open at a handoff is asked
//! again on the target, and approving it there runs the call; one open when the daemon dies is
//! asked again when it is back.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use baton_cli::harness::Cluster;
use common::{World, assert_dense, code, parse, wait_for};
use serde_json::Value;

const LAPTOP: usize = 0;
const DESKTOP: usize = 1;

/// Two machines; laptop's daemon lets a running turn finish for up to two minutes before a
/// handoff interrupts it, so a handoff that waits for an unanswered request would time out.
fn world() -> World {
    let tmp = tempfile::Builder::new()
        .prefix("baton-perm-")
        .tempdir()
        .expect("tmp");
    let mut c = Cluster::start(&common::exe(), tmp.path()).expect("server");
    c.add_machine("laptop", true).expect("laptop");
    c.add_machine("desktop", true).expect("desktop");
    for m in &mut c.machines {
        m.daemon_args = vec!["--quiesce-grace-ms".into(), "120000".into()];
    }
    c.start_daemon(LAPTOP).expect("daemon");
    c.start_daemon(DESKTOP).expect("daemon");
    c.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))
        .expect("online");
    World { c, tmp }
}

/// `baton --json ARGS` as machine `idx`: (exit code, output).
fn run(w: &World, idx: usize, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = w.c.baton(idx, &all).expect("baton runs");
    (code(&out), parse(&out))
}

/// The open requests, as `permissions --json` lists them.
fn open_requests(w: &World, idx: usize, s: &str) -> Vec<Value> {
    let (rc, v) = run(w, idx, &["permissions", s]);
    assert_eq!(rc, 0, "{v}");
    v.as_array().cloned().expect("array")
}

/// Waits until exactly one request is open and returns its seq.
fn wait_request(w: &World, idx: usize, s: &str) -> u64 {
    wait_for(Duration::from_secs(20), || {
        let open = open_requests(w, idx, s);
        (open.len() == 1).then(|| open[0]["request"].as_u64().expect("seq"))
    })
    .expect("a permission request opens")
}

fn entry(log: &[Value], seq: u64) -> &Value {
    &log[usize::try_from(seq - 1).expect("small")]
}

#[test]
fn a_request_reaches_every_watcher_and_the_first_answer_wins() {
    let w = world();
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    // Two watchers, one per machine, before the request exists.
    let mut watchers: Vec<_> = [LAPTOP, DESKTOP]
        .iter()
        .map(|&i| w.spawn(i, &["--json", "log", &s, "--follow"]))
        .collect();
    let sender = w.spawn(
        LAPTOP,
        &["--json", "send", &s, "please /ask hi", "--timeout", "60"],
    );
    let req = wait_request(&w, DESKTOP, &s);
    let log = w.log(DESKTOP, &s);
    let asked = entry(&log, req);
    assert_eq!(asked["role"], "permission", "{asked}");
    assert_eq!(asked["permission"]["kind"], "request");
    assert_eq!(asked["permission"]["tool"], "echo");
    assert_eq!(asked["permission"]["input"]["text"], "hi");
    assert_eq!(w.session(LAPTOP, &s)["status"], "running", "the turn waits");

    // Both watchers saw it live.
    for child in &mut watchers {
        let out = child.stdout.take().expect("stdout");
        let seen = wait_for_line(out, |v| v["seq"] == req && v["role"] == "permission");
        assert!(seen, "a watcher did not see the request");
    }
    for mut child in watchers {
        let _ = child.kill();
        let _ = child.wait();
    }

    // Answered from desktop (not the machine that sent the message or runs the agent).
    let (rc, v) = run(&w, DESKTOP, &["allow", &s]);
    assert_eq!(rc, 0, "{v}");
    assert_eq!(v["request"], req);
    let (rc, v) = run(&w, LAPTOP, &["deny", &s, "--request", &req.to_string()]);
    assert_ne!(rc, 0, "a second answer is refused: {v}");
    assert_eq!(v["error"]["code"], "permission_not_open", "{v}");

    let out = sender.wait_with_output().expect("send ends");
    let reply = parse(&out);
    assert_eq!(code(&out), 0, "{reply}");
    assert!(
        reply["reply"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Turn 1.")
    );
    let log = w.log(LAPTOP, &s);
    assert_dense(&log);
    let after: Vec<&Value> = log.iter().skip(usize::try_from(req).unwrap()).collect();
    assert_eq!(after[0]["permission"]["kind"], "answer", "{log:?}");
    assert_eq!(after[0]["permission"]["allow"], true);
    assert_eq!(after[0]["permission"]["request"], req);
    assert_eq!(
        after[1]["role"], "tool_call",
        "the tool ran after the answer: {log:?}"
    );
    assert_eq!(after[2]["text"], "hi");
    assert!(open_requests(&w, LAPTOP, &s).is_empty());

    // A denial: the tool does not run and the agent says so.
    let sender = w.spawn(
        LAPTOP,
        &["--json", "send", &s, "/ask no", "--timeout", "60"],
    );
    let req = wait_request(&w, LAPTOP, &s);
    let (rc, v) = run(&w, LAPTOP, &["deny", &s]);
    assert_eq!(rc, 0, "{v}");
    let out = sender.wait_with_output().expect("send ends");
    assert_eq!(code(&out), 0);
    let reply = parse(&out)["reply"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reply.contains("The echo tool was not allowed."), "{reply}");
    let log = w.log(LAPTOP, &s);
    assert!(
        !log.iter()
            .skip(usize::try_from(req).unwrap())
            .any(|e| e["role"] == "tool_call"),
        "{log:?}"
    );

    // Nothing open: a bare answer says so.
    let (rc, v) = run(&w, LAPTOP, &["allow", &s]);
    assert_ne!(rc, 0);
    assert_eq!(v["error"]["code"], "permission_not_open", "{v}");
}

/// Reads JSON lines until one matches (true) or the stream ends / 20 s pass (false).
fn wait_for_line(out: std::process::ChildStdout, want: impl Fn(&Value) -> bool) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(v) if want(&v) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn a_request_open_at_handoff_is_asked_again_on_the_target_and_runs_there() {
    let w = world();
    let ws_a = w.dir("laptop/ws");
    let ws_b = w.dir("desktop/elsewhere/ws");
    let s = w.new_session(LAPTOP, &ws_a);
    assert!(w.send(LAPTOP, &s, "first").starts_with("Turn 1."));
    let (rc, v) = run(&w, LAPTOP, &["send", &s, "/ask moved", "--no-wait"]);
    assert_eq!(rc, 0, "{v}");
    let old = wait_request(&w, LAPTOP, &s);

    // The turn waits for a person, so the handoff interrupts it at once instead of waiting
    // out the two-minute grace.
    let (rc, h) = w.handoff(LAPTOP, &s, "desktop", &["--path", &ws_b, "--timeout", "60"]);
    assert_eq!(rc, 0, "{h}");
    assert_eq!(h["result"], "committed");

    let open = wait_for(Duration::from_secs(20), || {
        let open = open_requests(&w, DESKTOP, &s);
        (open.len() == 1 && open[0]["request"].as_u64() != Some(old)).then_some(open)
    })
    .expect("the request is asked again on desktop");
    let new = open[0]["request"].as_u64().expect("seq");
    assert_eq!(open[0]["tool"], "echo");
    assert_eq!(open[0]["input"]["text"], "moved");
    let log = w.log(DESKTOP, &s);
    let again = entry(&log, new);
    assert_eq!(again["permission"]["reraises"], old, "{again}");
    assert_eq!(again["epoch"], 2, "asked by the new owner");
    // Nothing answered or closed the old request: it was carried over, not dropped.
    assert!(
        !log.iter()
            .any(|e| e["permission"]["request"].as_u64() == Some(old)),
        "{log:?}"
    );

    // Approving it on the target makes the agent there repeat the call, which runs without a
    // second question.
    let (rc, v) = run(&w, LAPTOP, &["allow", &s]);
    assert_eq!(rc, 0, "{v}");
    let log = wait_for(Duration::from_secs(30), || {
        let log = w.log(DESKTOP, &s);
        log.last()
            .is_some_and(|e| {
                // The turn ends with the agent's reply, after the tool's result: reading the
                // log as soon as the status shows idle could catch it before that reply.
                e["seq"].as_u64() > Some(new + 1)
                    && e["role"] == "assistant"
                    && w.session(DESKTOP, &s)["status"] == "idle"
            })
            .then_some(log)
    })
    .expect("the repeated call's turn ends");
    assert_dense(&log);
    let tail: Vec<&Value> = log.iter().skip(usize::try_from(new).unwrap()).collect();
    assert_eq!(tail[0]["permission"]["kind"], "answer", "{log:?}");
    let calls: Vec<&&Value> = tail.iter().filter(|e| e["role"] == "tool_call").collect();
    assert_eq!(calls.len(), 1, "{log:?}");
    assert!(
        tail.iter()
            .any(|e| e["role"] == "tool_result" && e["text"] == "moved"),
        "{log:?}"
    );
    assert!(
        !tail.iter().skip(1).any(|e| e["role"] == "permission"),
        "the repeated call was not asked again: {log:?}"
    );
    assert!(open_requests(&w, DESKTOP, &s).is_empty());
    let last = log.last().expect("entries");
    assert!(
        last["text"].as_str().unwrap_or_default().contains(&ws_b),
        "ran on desktop: {last}"
    );
}

#[test]
fn a_request_open_when_the_daemon_dies_is_asked_again_when_it_is_back() {
    let mut w = world();
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    let (rc, v) = run(&w, LAPTOP, &["send", &s, "/ask later", "--no-wait"]);
    assert_eq!(rc, 0, "{v}");
    let old = wait_request(&w, LAPTOP, &s);
    w.c.kill_daemon(LAPTOP);
    w.c.start_daemon(LAPTOP).expect("daemon restarts");
    let new = wait_for(Duration::from_secs(30), || {
        let open = open_requests(&w, DESKTOP, &s);
        (open.len() == 1 && open[0]["request"].as_u64() != Some(old))
            .then(|| open[0]["request"].as_u64().expect("seq"))
    })
    .expect("asked again after the restart");
    let (rc, v) = run(&w, DESKTOP, &["deny", &s, "--request", &new.to_string()]);
    assert_eq!(rc, 0, "{v}");
    let log = w.log(LAPTOP, &s);
    assert_dense(&log);
    assert_eq!(entry(&log, new)["permission"]["reraises"], old);
    assert!(open_requests(&w, LAPTOP, &s).is_empty());
}
