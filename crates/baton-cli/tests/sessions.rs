//! Sessions without handoff: idempotent input, stop and resume, a crashing provider.

mod common;

use std::sync::Arc;
use std::time::Duration;

use baton_daemon::client::Client;
use baton_daemon::identity::Identity;
use baton_proto::api::SendInputRequest;
use baton_proto::{InputId, InputRecord, SessionId, SessionRecord};
use common::{World, agent_pids, assert_dense, code, parse, wait_for};

const LAPTOP: usize = 0;

#[test]
fn the_same_input_sent_twice_is_stored_and_delivered_once() {
    let w = World::new(&["laptop"]);
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    let identity = Identity::load(&w.c.machines[LAPTOP].baton_home).unwrap();
    let client = Client::new(Arc::new(identity), None).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id: SessionId = s.parse().unwrap();
    let (a, b) = rt.block_on(async {
        let session: SessionRecord = client.get(&format!("/v1/sessions/{id}")).await.unwrap();
        let cipher = client.cipher(&session).unwrap();
        let input = InputId::new();
        let req = SendInputRequest {
            id: input,
            sealed: cipher.seal_input(input, "only once please"),
        };
        let path = format!("/v1/sessions/{id}/inputs");
        let a: InputRecord = client.post(&path, &req).await.unwrap();
        let b: InputRecord = client.post(&path, &req).await.unwrap();
        (a, b)
    });
    assert_eq!(a.id, b.id);
    assert_eq!(a.order, b.order, "a retry is the same record");
    let log = wait_for(Duration::from_secs(20), || {
        let log = w.log(LAPTOP, &s);
        log.iter().any(|e| e["role"] == "assistant").then_some(log)
    })
    .expect("answered");
    std::thread::sleep(Duration::from_secs(1));
    let log2 = w.log(LAPTOP, &s);
    assert_eq!(log.len(), log2.len(), "no second delivery");
    assert_eq!(
        log2.iter()
            .filter(|e| e["role"] == "user" && e["text"] == "only once please")
            .count(),
        1
    );
    assert_dense(&log2);
}

#[test]
fn stop_ends_the_provider_and_a_message_resumes_it() {
    let w = World::new(&["laptop"]);
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    assert!(w.send(LAPTOP, &s, "one").starts_with("Turn 1."));
    assert_eq!(agent_pids(w.home(LAPTOP)).len(), 1);
    let stopped = w.c.json(LAPTOP, &["stop", &s]).unwrap();
    assert_eq!(stopped["status"], "stopped");
    wait_for(Duration::from_secs(10), || {
        agent_pids(w.home(LAPTOP)).is_empty().then_some(())
    })
    .expect("provider stopped");
    assert_eq!(w.session(LAPTOP, &s)["status"], "stopped");
    let reply = w.send(LAPTOP, &s, "two");
    assert!(
        reply.starts_with("Turn 2.") && reply.contains("\"one\""),
        "{reply}"
    );
    assert_eq!(agent_pids(w.home(LAPTOP)).len(), 1);
}

#[test]
fn a_provider_crash_becomes_an_error_entry_and_a_stopped_session() {
    let w = World::new(&["laptop"]);
    let ws = w.dir("ws");
    let s = w.new_session(LAPTOP, &ws);
    assert!(w.send(LAPTOP, &s, "one").starts_with("Turn 1."));
    let out =
        w.c.baton(LAPTOP, &["--json", "send", &s, "/crash"])
            .unwrap();
    assert_ne!(code(&out), 0, "{}", parse(&out));
    let v = parse(&out);
    assert!(
        v.to_string().contains("provider"),
        "the error names the provider: {v}"
    );
    let row = w.session(LAPTOP, &s);
    assert_eq!(row["status"], "stopped");
    let log = w.log(LAPTOP, &s);
    assert_dense(&log);
    let last = log.last().unwrap();
    assert_eq!(last["role"], "error", "{log:?}");
    assert!(last["text"].as_str().unwrap().contains("exited"), "{last}");
    assert!(agent_pids(w.home(LAPTOP)).is_empty());
    // The next message starts it again from its saved state.
    let reply = w.send(LAPTOP, &s, "after the crash");
    assert!(
        reply.starts_with("Turn 2.") && reply.contains("\"one\""),
        "{reply}"
    );
}

#[test]
fn input_sent_while_the_owner_is_offline_is_delivered_once_when_it_returns() {
    let mut w = World::new(&["laptop", "desktop"]);
    let ws = w.dir("ws");
    let s = w.new_session(1, &ws);
    assert!(w.send(LAPTOP, &s, "one").starts_with("Turn 1."));
    w.c.stop_daemon(1);
    w.c.wait_online(&["desktop"], false, Duration::from_secs(30))
        .unwrap();
    for text in ["queued a", "queued b"] {
        let v = w.c.json(LAPTOP, &["send", &s, text, "--no-wait"]).unwrap();
        assert!(v["input_id"].is_string());
    }
    assert_eq!(
        w.log(LAPTOP, &s).len(),
        2,
        "nothing delivered while offline"
    );
    w.c.start_daemon(1).unwrap();
    let log = wait_for(Duration::from_secs(30), || {
        let log = w.log(LAPTOP, &s);
        (log.iter().filter(|e| e["role"] == "assistant").count() == 3).then_some(log)
    })
    .expect("both queued messages answered");
    assert_dense(&log);
    let users: Vec<&str> = log
        .iter()
        .filter(|e| e["role"] == "user")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        users,
        ["one", "queued a", "queued b"],
        "in order, once each"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(w.log(LAPTOP, &s).len(), log.len());
}
