//! End-to-end handoff of a synced session between two real daemons.

mod common;

use std::sync::Arc;
use std::time::Duration;

use baton_daemon::client::{Client, ClientError};
use baton_daemon::identity::Identity;
use baton_proto::api::{AppendRequest, NewEntry};
use baton_proto::{EntryBody, EntryRole, ErrorCode, SessionId, SessionRecord};
use common::{World, agent_pids, assert_dense, wait_for};

const LAPTOP: usize = 0;
const DESKTOP: usize = 1;

#[test]
fn handoff_keeps_id_moves_owner_bumps_epoch_and_carries_context() {
    let w = World::new(&["laptop", "desktop"]);
    let ws_laptop = w.dir("laptop-ws/project");
    let ws_desktop = w.dir("desktop-ws/elsewhere/project");
    let s = w.new_session(LAPTOP, &ws_laptop);
    let r1 = w.send(LAPTOP, &s, "The secret word is KUMQUAT.");
    assert!(r1.starts_with("Turn 1."), "{r1}");
    let r2 = w.send(DESKTOP, &s, "Second message, sent from desktop.");
    assert!(r2.contains("Turn 2.") && r2.contains(&ws_laptop), "{r2}");
    let laptop_agents = agent_pids(w.home(LAPTOP));
    assert_eq!(laptop_agents.len(), 1, "one provider runs on the owner");

    let (code, h) = w.handoff(LAPTOP, &s, "desktop", &["--path", &ws_desktop]);
    assert_eq!(code, 0, "{h}");
    assert_eq!(h["result"], "committed");
    assert_eq!(h["session_id"], s.as_str());
    assert_eq!(h["epoch_before"], 1);
    assert_eq!(h["epoch_after"], 2);
    assert!(h["error"].is_null());
    let phases: Vec<&str> = h["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "requested",
            "preflight",
            "prepare_target",
            "quiesce_source",
            "transfer",
            "verify",
            "commit",
            "activate",
            "done"
        ]
    );
    assert!(
        h["phases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["ok"] == true),
        "{h}"
    );
    assert_eq!(
        h["carried"],
        serde_json::json!(["transcript", "provider_state"])
    );

    let row = w.session(LAPTOP, &s);
    assert_eq!(row["id"], s.as_str());
    assert_eq!(row["owner"]["name"], "desktop");
    assert_eq!(row["epoch"], 2);
    assert_eq!(row["workspace"], ws_desktop.as_str());

    // The provider context came along: turn numbering continues and the first message is quoted.
    let r3 = w.send(LAPTOP, &s, "What was the secret word?");
    assert!(r3.starts_with("Turn 3."), "{r3}");
    assert!(r3.contains("The secret word is KUMQUAT."), "{r3}");
    assert!(r3.contains(&format!("Working in {ws_desktop}")), "{r3}");

    let log = w.log(DESKTOP, &s);
    assert_dense(&log);
    let epochs: Vec<u64> = log.iter().map(|e| e["epoch"].as_u64().unwrap()).collect();
    assert!(epochs.contains(&1) && epochs.contains(&2), "{epochs:?}");
    assert_eq!(
        log.iter().filter(|e| e["role"] == "user").count(),
        3,
        "each message once: {log:?}"
    );

    // The old owner stopped its provider; the new owner runs one; the old state left laptop.
    assert!(
        wait_for(Duration::from_secs(10), || agent_pids(w.home(LAPTOP))
            .is_empty()
            .then_some(()))
        .is_some(),
        "laptop still runs {:?}",
        agent_pids(w.home(LAPTOP))
    );
    assert_eq!(agent_pids(w.home(DESKTOP)).len(), 1);
    let laptop_state = w.home(LAPTOP).join(".scripted-agent/projects");
    let leftover: Vec<_> = walk(&laptop_state)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&s))
        .collect();
    assert!(
        leftover.is_empty(),
        "source state not cleaned: {leftover:?}"
    );
    let desktop_state = walk(&w.home(DESKTOP).join(".scripted-agent/projects"));
    assert!(
        desktop_state.iter().any(|p| p.ends_with(format!(
            "{}/{s}.jsonl",
            baton_providers::enc::enc(&ws_desktop)
        ))),
        "{desktop_state:?}"
    );

    let hist = w.c.json(LAPTOP, &["handoffs", &s]).unwrap();
    let hist = hist.as_array().unwrap();
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0]["from"]["name"], "laptop");
    assert_eq!(hist[0]["to"]["name"], "desktop");
    assert_eq!(hist[0]["result"], "committed");
    assert!(hist[0]["bytes"].as_u64().unwrap() > 0);

    // And back again: the hand-back goes through the same path, context intact.
    let (code, back) = w.handoff(DESKTOP, &s, "laptop", &["--path", &ws_laptop]);
    assert_eq!(code, 0, "{back}");
    assert_eq!(back["epoch_after"], 3);
    let r4 = w.send(DESKTOP, &s, "Still there?");
    assert!(r4.starts_with("Turn 4.") && r4.contains("KUMQUAT"), "{r4}");
    assert!(r4.contains(&format!("Working in {ws_laptop}")), "{r4}");
    assert_dense(&w.log(LAPTOP, &s));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn old_owner_late_write_is_refused_with_stale_epoch() {
    let w = World::new(&["laptop", "desktop"]);
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    w.send(LAPTOP, &s, "hello");
    let (code, h) = w.handoff(LAPTOP, &s, "desktop", &[]);
    assert_eq!(code, 0, "{h}");
    let before = w.log(LAPTOP, &s).len();

    // The laptop, with its own keys, tries to write at the epoch it used to own.
    let identity = Identity::load(&w.c.machines[LAPTOP].baton_home).unwrap();
    let client = Client::new(Arc::new(identity), None).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id: SessionId = s.parse().unwrap();
    let err = rt.block_on(async {
        let session: SessionRecord = client.get(&format!("/v1/sessions/{id}")).await.unwrap();
        assert_eq!(session.epoch, 2);
        let cipher = client.cipher(&session).unwrap();
        let seq = session.last_seq + 1;
        let body = EntryBody::new(EntryRole::Assistant, "a late write from the old owner");
        let req = AppendRequest {
            epoch: 1,
            entries: vec![NewEntry {
                seq,
                input_id: None,
                sealed: cipher.seal_entry(seq, 1, &body),
            }],
            status: None,
        };
        let err = client
            .post::<_, serde_json::Value>(&format!("/v1/sessions/{id}/entries"), &req)
            .await
            .unwrap_err();
        let pending = client
            .get::<serde_json::Value>(&format!("/v1/sessions/{id}/inputs/pending?epoch=1"))
            .await
            .unwrap_err();
        assert_eq!(pending.code(), Some(ErrorCode::StaleEpoch));
        err
    });
    match err {
        ClientError::Api(e) => assert_eq!(e.code, ErrorCode::StaleEpoch, "{e}"),
        other => panic!("expected stale_epoch, got {other}"),
    }
    assert_eq!(w.log(LAPTOP, &s).len(), before, "nothing was written");
    assert!(agent_pids(w.home(LAPTOP)).is_empty());
}

#[test]
fn message_sent_during_handoff_is_answered_once_by_the_target() {
    let w = World::new(&["laptop", "desktop"]);
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    w.send(LAPTOP, &s, "first");
    // A slow turn holds the source in quiesce_source while the handoff runs.
    let slow =
        w.c.json(LAPTOP, &["send", &s, "slow turn /sleep 2500", "--no-wait"])
            .unwrap();
    assert!(slow["input_id"].is_string());
    wait_for(Duration::from_secs(10), || {
        (w.session(LAPTOP, &s)["status"] == "running").then_some(())
    })
    .expect("the slow turn started");

    let handoff = w.spawn(LAPTOP, &["--json", "handoff", &s, "--to", "desktop"]);
    wait_for(Duration::from_secs(10), || {
        (w.session(LAPTOP, &s)["status"] == "handing_off").then_some(())
    })
    .expect("the handoff is quiescing the source");
    let queued =
        w.c.json(
            LAPTOP,
            &["send", &s, "sent during the handoff", "--no-wait"],
        )
        .unwrap();
    let out = handoff.wait_with_output().unwrap();
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(h["result"], "committed", "{h}");

    let log = wait_for(Duration::from_secs(30), || {
        let log = w.log(DESKTOP, &s);
        log.iter()
            .any(|e| {
                e["role"] == "assistant"
                    && e["text"]
                        .as_str()
                        .unwrap_or("")
                        .contains("You said: \"sent during the handoff\"")
            })
            .then_some(log)
    })
    .expect("the queued message was answered");
    assert_dense(&log);
    let users: Vec<&serde_json::Value> = log
        .iter()
        .filter(|e| e["role"] == "user" && e["text"] == "sent during the handoff")
        .collect();
    assert_eq!(users.len(), 1, "delivered exactly once: {log:?}");
    assert_eq!(users[0]["epoch"], 2, "delivered to the new owner");
    // The slow turn finished on the source, at epoch 1, before it let go.
    let slow_reply = log
        .iter()
        .find(|e| {
            e["role"] == "assistant" && e["text"].as_str().unwrap_or("").contains("slow turn")
        })
        .expect("slow turn answered");
    assert_eq!(slow_reply["epoch"], 1);
    assert!(queued["input_id"].is_string());
    // Nothing more arrives later (no double delivery).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.log(DESKTOP, &s).len(), log.len());
}

#[test]
fn a_turn_longer_than_the_grace_is_interrupted_and_the_handoff_goes_on() {
    let tmp = tempfile::Builder::new()
        .prefix("baton-grace-")
        .tempdir()
        .unwrap();
    let mut c = baton_cli::harness::Cluster::start(&common::exe(), tmp.path()).unwrap();
    c.add_machine("laptop", true).unwrap();
    c.add_machine("desktop", true).unwrap();
    c.machines[LAPTOP].daemon_args = vec!["--quiesce-grace-ms".into(), "1000".into()];
    c.start_daemon(LAPTOP).unwrap();
    c.start_daemon(DESKTOP).unwrap();
    c.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))
        .unwrap();
    let w = World { c, tmp };
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    assert!(w.send(LAPTOP, &s, "first").starts_with("Turn 1."));
    w.c.json(LAPTOP, &["send", &s, "endless /sleep 600000", "--no-wait"])
        .unwrap();
    wait_for(Duration::from_secs(10), || {
        (w.session(LAPTOP, &s)["status"] == "running").then_some(())
    })
    .expect("the long turn runs");
    let started = std::time::Instant::now();
    let (code, h) = w.handoff(LAPTOP, &s, "desktop", &[]);
    assert_eq!(code, 0, "{h}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the handoff waited for the turn: {:?}",
        started.elapsed()
    );
    let log = w.log(LAPTOP, &s);
    assert_dense(&log);
    let cut = log
        .iter()
        .position(|e| e["text"] == "(the turn was interrupted)")
        .expect("the interrupted turn is recorded");
    assert_eq!(
        log[cut]["epoch"], 1,
        "recorded by the source before it let go"
    );
    let reply = w.send(LAPTOP, &s, "after");
    assert!(
        reply.starts_with("Turn 2.") && reply.contains("\"first\""),
        "{reply}"
    );
}
