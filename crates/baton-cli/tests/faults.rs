//! Crashes and outages: the server killed mid-handoff, daemons vanishing and coming back.

mod common;

use std::time::{Duration, Instant};

use baton_cli::harness::Cluster;
use common::{World, agent_pids, assert_dense, exe, wait_for};
use serde_json::Value;

const LAPTOP: usize = 0;
const DESKTOP: usize = 1;

fn handoff_phase(w: &World, s: &str) -> Option<(String, String)> {
    let h = w.c.json(LAPTOP, &["handoffs", s]).ok()?;
    let last = h.as_array()?.last()?.clone();
    Some((
        last["phase"].as_str()?.to_string(),
        last["result"].as_str()?.to_string(),
    ))
}

#[test]
fn server_killed_during_transfer_and_restarted_keeps_the_invariants() {
    let tmp = tempfile::Builder::new()
        .prefix("baton-faults-")
        .tempdir()
        .unwrap();
    let mut c = Cluster::start(&exe(), tmp.path()).unwrap();
    let laptop = c.add_machine("laptop", true).unwrap();
    let desktop = c.add_machine("desktop", true).unwrap();
    // Holds the source in `transfer` long enough to kill the server there.
    c.machines[laptop]
        .daemon_env
        .push(("BATON_TEST_DELAY_EXPORT_MS".into(), "3000".into()));
    c.start_daemon(laptop).unwrap();
    c.start_daemon(desktop).unwrap();
    c.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))
        .unwrap();
    let mut w = World { c, tmp };
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    assert!(
        w.send(LAPTOP, &s, "before the crash")
            .starts_with("Turn 1.")
    );

    let handoff = w.spawn(
        LAPTOP,
        &[
            "--json",
            "handoff",
            &s,
            "--to",
            "desktop",
            "--timeout",
            "120",
        ],
    );
    wait_for(Duration::from_secs(20), || {
        handoff_phase(&w, &s).filter(|(p, _)| p == "transfer")
    })
    .expect("the handoff reached transfer");
    w.c.kill_server();
    std::thread::sleep(Duration::from_millis(500));
    w.c.restart_server().unwrap();

    let out = handoff.wait_with_output().unwrap();
    let h: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "handoff output: {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // The `baton handoff` process rode out the restart, and a restart before commit aborts.
    assert_eq!(h["result"], "aborted", "{h}");
    assert_eq!(h["error"]["code"], "interrupted", "{h}");
    w.c.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))
        .unwrap();

    // Exactly one owner, at the right epoch, and the session is usable there.
    let row = wait_for(Duration::from_secs(20), || {
        let r = w.session(LAPTOP, &s);
        (r["status"] == "idle").then_some(r)
    })
    .expect("the session is idle again");
    assert_eq!(row["owner"]["name"], "laptop", "{row}");
    assert_eq!(row["epoch"], 1, "{row}");
    let reply = w.send(LAPTOP, &s, "after the crash");
    assert!(reply.starts_with("Turn 2."), "context intact: {reply}");
    assert!(reply.contains("before the crash"), "{reply}");
    let log = w.log(LAPTOP, &s);
    assert_dense(&log);
    assert_eq!(log.iter().filter(|e| e["role"] == "user").count(), 2);
    // Only the owner runs a provider; the target kept no staging.
    assert_eq!(agent_pids(w.home(LAPTOP)).len(), 1);
    assert!(agent_pids(w.home(DESKTOP)).is_empty());
    let staging = w.c.machines[DESKTOP].baton_home.join("handoffs");
    wait_for(Duration::from_secs(15), || {
        let n = std::fs::read_dir(&staging).map(|r| r.count()).unwrap_or(0);
        (n == 0).then_some(())
    })
    .expect("the target dropped its staging");

    // And a handoff after the crash goes through.
    let (code, again) = w.handoff(LAPTOP, &s, "desktop", &[]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["result"], "committed");
    assert_eq!(again["epoch_after"], 2);
    w.c.shutdown();
}

fn online_of(w: &World, name: &str) -> Option<bool> {
    let list = w.c.json(LAPTOP, &["machines"]).ok()?;
    list.as_array()?.iter().find(|m| m["name"] == name)?["online"].as_bool()
}

#[test]
fn machines_go_offline_and_come_back_online_promptly() {
    let mut w = World::new(&["laptop", "desktop"]);
    // A daemon that vanishes (SIGKILL: no goodbye) shows offline within 60 s.
    w.c.kill_daemon(DESKTOP);
    let t = Instant::now();
    wait_for(Duration::from_secs(60), || {
        (online_of(&w, "desktop") == Some(false)).then_some(())
    })
    .expect("desktop offline within 60 s");
    assert!(t.elapsed() < Duration::from_secs(60));
    // One that comes back shows online within 10 s.
    w.c.start_daemon(DESKTOP).unwrap();
    let t = Instant::now();
    wait_for(Duration::from_secs(10), || {
        (online_of(&w, "desktop") == Some(true)).then_some(())
    })
    .expect("desktop online within 10 s");
    assert!(t.elapsed() < Duration::from_secs(10));
    let row = w.c.json(LAPTOP, &["machines"]).unwrap();
    let desktop = row
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "desktop")
        .unwrap()
        .clone();
    assert!(desktop["last_seen"].as_i64().unwrap_or(0) > 0, "{desktop}");

    // The server going away and coming back: daemons never give up and are back within 10 s.
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    assert!(w.send(LAPTOP, &s, "one").starts_with("Turn 1."));
    w.c.kill_server();
    std::thread::sleep(Duration::from_secs(4));
    w.c.restart_server().unwrap();
    let t = Instant::now();
    w.c.wait_online(&["laptop", "desktop"], true, Duration::from_secs(10))
        .expect("both daemons reconnect within 10 s");
    assert!(t.elapsed() < Duration::from_secs(10));
    let reply = w.send(LAPTOP, &s, "two");
    assert!(reply.starts_with("Turn 2."), "{reply}");
    assert_eq!(agent_pids(w.home(LAPTOP)).len(), 1, "one provider, not two");
}

/// Who is killed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    Source,
    Target,
    Server,
}

/// SIGKILLs `victim` while the daemon named by `delayed` (0 = laptop/source, 1 = desktop/target)
/// is held in command `op` (phase `phase`), restarts it, and checks DESIGN §3's invariants: one
/// owner with a consistent epoch, no split brain, nothing lost or doubled, the session usable
/// where it is owned, no staging left where it is not.
fn crash_case(victim: Victim, delayed: usize, op: &str, phase: &str, expect_commit: bool) {
    let tmp = tempfile::Builder::new()
        .prefix("baton-crash-")
        .tempdir()
        .unwrap();
    let mut c = Cluster::start(&exe(), tmp.path()).unwrap();
    c.add_machine("laptop", true).unwrap();
    c.add_machine("desktop", true).unwrap();
    c.machines[delayed]
        .daemon_env
        .push((format!("BATON_TEST_DELAY_{op}_MS"), "4000".into()));
    c.start_daemon(LAPTOP).unwrap();
    c.start_daemon(DESKTOP).unwrap();
    c.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))
        .unwrap();
    let mut w = World { c, tmp };
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    assert!(
        w.send(LAPTOP, &s, "before the crash")
            .starts_with("Turn 1.")
    );

    let handoff = w.spawn(LAPTOP, &["--json", "handoff", &s, "--to", "desktop"]);
    wait_for(Duration::from_secs(30), || {
        handoff_phase(&w, &s).filter(|(p, _)| p == phase)
    })
    .unwrap_or_else(|| panic!("the handoff reached {phase}"));
    match victim {
        Victim::Source => w.c.kill_daemon(LAPTOP),
        Victim::Target => w.c.kill_daemon(DESKTOP),
        Victim::Server => w.c.kill_server(),
    }
    std::thread::sleep(Duration::from_millis(500));
    match victim {
        Victim::Server => w.c.restart_server().unwrap(),
        Victim::Source | Victim::Target => {
            let idx = if victim == Victim::Source {
                LAPTOP
            } else {
                DESKTOP
            };
            w.c.machines[idx].daemon_env.clear();
            w.c.start_daemon(idx).unwrap();
        }
    }
    let _ = handoff.wait_with_output().unwrap();
    w.c.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))
        .unwrap();
    // The handoff is decided, one way or the other.
    let h = wait_for(Duration::from_secs(60), || {
        let list = w.c.json(LAPTOP, &["handoffs", &s]).ok()?;
        let h = list.as_array()?.last()?.clone();
        let done = h["result"] == "aborted"
            || (h["result"] == "committed" && (!h["error"].is_null() || h["phase"] == "done"));
        done.then_some(h)
    })
    .expect("the handoff ended");
    let committed = h["result"] == "committed";
    // Before commit a crash aborts; after it the handoff completes (DESIGN §3.3).
    assert_eq!(committed, expect_commit, "{h}");
    let (owner, other, epoch) = if committed {
        (DESKTOP, LAPTOP, 2)
    } else {
        (LAPTOP, DESKTOP, 1)
    };
    let row = wait_for(Duration::from_secs(30), || {
        let r = w.session(LAPTOP, &s);
        (r["status"] != "handing_off").then_some(r)
    })
    .expect("the session left handing_off");
    assert_eq!(row["owner"]["name"], w.c.machines[owner].name, "{h} {row}");
    assert_eq!(row["epoch"], epoch, "{h} {row}");
    // Usable where it is owned, with its context.
    let reply = w.send(LAPTOP, &s, "after the crash");
    assert!(reply.starts_with("Turn 2."), "{h} / {reply}");
    assert!(reply.contains("before the crash"), "{reply}");
    let log = w.log(LAPTOP, &s);
    assert_dense(&log);
    assert_eq!(
        log.iter().filter(|e| e["role"] == "user").count(),
        2,
        "{log:?}"
    );
    // One provider, on the owner.
    assert_eq!(agent_pids(w.home(owner)).len(), 1);
    assert!(
        wait_for(Duration::from_secs(10), || agent_pids(w.home(other))
            .is_empty()
            .then_some(()))
        .is_some(),
        "a provider still runs on the non-owner"
    );
    let staging = w.c.machines[other].baton_home.join("handoffs");
    wait_for(Duration::from_secs(15), || {
        let n = std::fs::read_dir(&staging).map(|r| r.count()).unwrap_or(0);
        (n == 0).then_some(())
    })
    .expect("no staging left on the non-owner");
    w.c.shutdown();
}

#[test]
fn source_killed_during_quiesce() {
    crash_case(Victim::Source, LAPTOP, "QUIESCE", "quiesce_source", false);
}

#[test]
fn source_killed_during_transfer() {
    crash_case(Victim::Source, LAPTOP, "EXPORT", "transfer", false);
}

#[test]
fn target_killed_during_preflight() {
    crash_case(Victim::Target, DESKTOP, "PREFLIGHT", "preflight", false);
}

#[test]
fn target_killed_during_verify() {
    crash_case(Victim::Target, DESKTOP, "IMPORT", "verify", false);
}

#[test]
fn target_killed_during_activate() {
    crash_case(Victim::Target, DESKTOP, "ACTIVATE", "activate", true);
}

#[test]
fn server_killed_during_verify() {
    crash_case(Victim::Server, DESKTOP, "IMPORT", "verify", false);
}

#[test]
fn server_killed_during_activate() {
    crash_case(Victim::Server, DESKTOP, "ACTIVATE", "activate", true);
}
