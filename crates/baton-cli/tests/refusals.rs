//! Preflight refusals: each is found before the source is touched, the CLI exits 3, and the
//! session stays with its owner, usable, with nothing lost.

mod common;

use std::time::Duration;

use baton_cli::harness::Cluster;
use common::{World, agent_pids, assert_dense, exe, wait_for};
use serde_json::Value;

const LAPTOP: usize = 0;

/// Laptop owns a session; desktop is fine; `nobin` lacks the provider; `nologin` is not logged
/// in; `sleepy` is enrolled but its daemon is not running.
fn world() -> World {
    let tmp = tempfile::Builder::new()
        .prefix("baton-refusals-")
        .tempdir()
        .unwrap();
    let mut c = Cluster::start(&exe(), tmp.path()).unwrap();
    c.add_machine("laptop", true).unwrap();
    c.add_machine("desktop", true).unwrap();
    let nobin = c.add_machine("nobin", true).unwrap();
    c.machines[nobin].daemon_env.push((
        "BATON_SCRIPTED_AGENT".into(),
        "/nonexistent/scripted-agent".into(),
    ));
    c.add_machine("nologin", false).unwrap();
    c.add_machine("sleepy", true).unwrap();
    for i in 0..4 {
        c.start_daemon(i).unwrap();
    }
    c.wait_online(
        &["laptop", "desktop", "nobin", "nologin"],
        true,
        Duration::from_secs(30),
    )
    .unwrap();
    World { c, tmp }
}

fn refused(w: &World, s: &str, to: &str, extra: &[&str], want: &str) -> Value {
    let (code, out) = w.handoff(LAPTOP, s, to, extra);
    assert_eq!(
        code, 3,
        "handoff to {to} {extra:?} should be refused: {out}"
    );
    let got = out["error"]["code"].as_str().unwrap_or_default();
    assert_eq!(got, want, "{out}");
    let msg = out["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.len() > 20, "the message says what to do: {msg}");
    if out["result"].is_string() {
        assert_eq!(out["result"], "aborted", "{out}");
        // Nothing past preflight ran: the source was never touched.
        let phases: Vec<&str> = out["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["phase"].as_str().unwrap())
            .collect();
        assert!(
            !phases.contains(&"quiesce_source"),
            "refusal after touching the source: {phases:?}"
        );
    }
    out
}

fn assert_still_with_laptop(w: &World, s: &str, turns: &mut u64) {
    let row = w.session(LAPTOP, s);
    assert_eq!(row["owner"]["name"], "laptop", "{row}");
    assert_eq!(row["epoch"], 1, "{row}");
    assert!(
        row["status"] == "idle" || row["status"] == "running",
        "{row}"
    );
    *turns += 1;
    let reply = w.send(LAPTOP, s, &format!("still here {turns}"));
    assert!(reply.starts_with(&format!("Turn {turns}.")), "{reply}");
    assert_eq!(agent_pids(w.home(LAPTOP)).len(), 1);
}

#[test]
fn preflight_refusals_leave_the_session_with_its_owner() {
    let w = world();
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    let mut turns = 0;
    assert_still_with_laptop(&w, &s, &mut turns);

    let m = w.c.json(LAPTOP, &["machines"]).unwrap();
    let provider = |name: &str| -> Value {
        m.as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .map(|x| x["providers"][0].clone())
            .unwrap()
    };
    assert_eq!(provider("nobin")["installed"], false);
    assert_eq!(provider("nologin")["auth"], "missing");
    assert_eq!(provider("desktop")["auth"], "machine_local");
    assert_eq!(provider("desktop")["handoff"], "supported");

    refused(&w, &s, "sleepy", &[], "target_offline");
    assert_still_with_laptop(&w, &s, &mut turns);
    refused(&w, &s, "nobin", &[], "provider_not_installed");
    assert_still_with_laptop(&w, &s, &mut turns);
    refused(&w, &s, "nologin", &[], "provider_auth_missing");
    assert_still_with_laptop(&w, &s, &mut turns);
    refused(
        &w,
        &s,
        "desktop",
        &["--path", "/nonexistent/baton/test/path"],
        "target_path_missing",
    );
    assert_still_with_laptop(&w, &s, &mut turns);
    refused(&w, &s, "laptop", &[], "same_machine");
    assert_still_with_laptop(&w, &s, &mut turns);

    // The target's live check catches a login that vanished after the daemon reported it.
    std::fs::remove_file(w.home(1).join(".scripted-agent/auth")).unwrap();
    refused(&w, &s, "desktop", &[], "provider_auth_missing");
    assert_still_with_laptop(&w, &s, &mut turns);

    let hist = w.c.json(LAPTOP, &["handoffs", &s]).unwrap();
    let hist = hist.as_array().unwrap();
    assert_eq!(hist.len(), 5, "every refused handoff is recorded: {hist:?}");
    assert!(hist.iter().all(|h| h["result"] == "aborted"));
    let log = w.log(LAPTOP, &s);
    assert_dense(&log);
    assert_eq!(
        log.iter().filter(|e| e["role"] == "user").count() as u64,
        turns
    );
    // No staging left behind on any target.
    for i in 1..4 {
        let dir = w.c.machines[i].baton_home.join("handoffs");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "staging left on {}: {left:?}",
            w.c.machines[i].name
        );
    }
}

#[test]
fn a_second_handoff_while_one_runs_is_refused() {
    let w = World::new(&["laptop", "desktop", "spare"]);
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    w.send(LAPTOP, &s, "first");
    // A slow turn keeps the first handoff in quiesce_source.
    w.c.json(LAPTOP, &["send", &s, "/sleep 3000", "--no-wait"])
        .unwrap();
    wait_for(Duration::from_secs(10), || {
        (w.session(LAPTOP, &s)["status"] == "running").then_some(())
    })
    .expect("slow turn running");
    let first = w.spawn(LAPTOP, &["--json", "handoff", &s, "--to", "desktop"]);
    wait_for(Duration::from_secs(10), || {
        let h = w.c.json(LAPTOP, &["handoffs", &s]).ok()?;
        (h.as_array()?.len() == 1).then_some(())
    })
    .expect("first handoff recorded");
    let (code, out) = w.handoff(LAPTOP, &s, "spare", &[]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(out["error"]["code"], "handoff_in_progress", "{out}");
    let first = first.wait_with_output().unwrap();
    let h: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(
        h["result"], "committed",
        "the first handoff is unaffected: {h}"
    );
    let row = w.session(LAPTOP, &s);
    assert_eq!(row["owner"]["name"], "desktop");
    assert_eq!(row["epoch"], 2);
    let hist = w.c.json(LAPTOP, &["handoffs", &s]).unwrap();
    assert_eq!(
        hist.as_array().unwrap().len(),
        1,
        "the refused one left no record"
    );
    assert_dense(&w.log(LAPTOP, &s));
}
