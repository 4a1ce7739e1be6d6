//! End-to-end security checks (DESIGN §6, invariant 6): the server's disk holds no plaintext,
//! another account reaches nothing, pairing codes work once, and key files are private.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use baton_daemon::client::{Client, ClientError, WsStream};
use baton_daemon::identity::Identity;
use baton_proto::api::{AppendRequest, HandoffRequest, NewEntry, SendInputRequest};
use baton_proto::ws::{Event, ServerFrame};
use baton_proto::{
    ErrorCode, HandoffId, HandoffOptions, HandoffRecord, InputId, InputRecord, MachineId, Sealed,
    SealedEntry, SessionId, SessionRecord,
};
use common::{World, code, exe, parse, wait_for};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(30);

/// Every regular file under `dir` (recursively), with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    let bytes = std::fs::read(&p).expect("read server file");
                    out.push((p, bytes));
                }
                _ => {}
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The raw UTF-8 form of `s` and its JSON-escaped form (without the quotes).
fn needles(s: &str) -> Vec<Vec<u8>> {
    let json = serde_json::to_string(s).expect("string to JSON");
    let escaped = json[1..json.len() - 1].to_string();
    let mut v = vec![s.as_bytes().to_vec()];
    if escaped != s {
        v.push(escaped.into_bytes());
    }
    v
}

/// Asserts that no file in `files` holds any of `secrets` (raw or JSON-escaped).
fn assert_no_secret(files: &[(PathBuf, Vec<u8>)], secrets: &[String]) {
    let mut hits = Vec::new();
    for (path, bytes) in files {
        for s in secrets {
            for n in needles(s) {
                if contains(bytes, &n) {
                    hits.push(format!(
                        "{} holds {:?}",
                        path.display(),
                        String::from_utf8_lossy(&n)
                    ));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "plaintext on the server's disk:\n{}",
        hits.join("\n")
    );
}

/// Runs `baton ARGS` with the given HOME and BATON_HOME (for machines the harness does not know).
fn baton_as(home: &Path, baton_home: &Path, args: &[&str]) -> Output {
    std::fs::create_dir_all(home).expect("mkdir home");
    Command::new(exe())
        .args(args)
        .env("HOME", home)
        .env("BATON_HOME", baton_home)
        .stdin(Stdio::null())
        .output()
        .expect("baton runs")
}

/// The `error.code` of a `--json` failure.
fn error_code(out: &Output) -> String {
    let v = parse(out);
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {v}"))
        .to_string()
}

/// Asserts that `baton --json ARGS` as machine `idx` fails with `want`.
fn assert_cli_refused(w: &World, idx: usize, args: &[&str], want: &str) {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = w.c.baton(idx, &full).expect("baton runs");
    assert_ne!(code(&out), 0, "baton {args:?} should fail: {}", parse(&out));
    assert_eq!(error_code(&out), want, "baton {args:?}: {}", parse(&out));
}

fn api_code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Api(e)) => e.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn server_database_holds_no_plaintext() {
    let mut w = World::new(&["laptop", "desktop"]);
    let ws = w.dir("CANARYDIR-5521/ws");
    let target = w.dir("CANARYDIR-9034/ws");
    let sid = w.new_session(0, &ws);

    let messages = [
        "ZEBRA-CANARY-7781 please",
        "OKAPI-CANARY-3319 with QUOTE\"CANARY-6120\\ and ümlaut-CANARY-2207",
    ];
    for m in messages {
        let reply = w.send(0, &sid, m);
        // The scripted agent quotes the message and names the workspace: both travel back.
        assert!(reply.contains(m), "reply does not quote {m:?}: {reply}");
        assert!(reply.contains(&ws), "reply does not name {ws}: {reply}");
    }
    let (rc, h) = w.handoff(0, &sid, "desktop", &["--path", &target]);
    assert_eq!(rc, 0, "handoff failed: {h}");
    assert_eq!(h["result"], "committed", "{h}");
    let last = "NARWHAL-CANARY-4402 after the move";
    let reply = w.send(1, &sid, last);
    assert!(reply.contains(last) && reply.contains(&target), "{reply}");
    let log = w.log(1, &sid);
    let all_text: String = log
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for m in [
        "ZEBRA-CANARY-7781",
        "CANARYDIR-5521",
        "CANARYDIR-9034",
        "QUOTE\"CANARY-6120",
    ] {
        assert!(
            all_text.contains(m),
            "the transcript lacks {m:?}: {all_text}"
        );
    }

    // Stop everything cleanly, then read the server's files as they rest on disk.
    w.c.shutdown();
    let server_dir = w.c.root().join("server");
    let files = files_under(&server_dir);
    let db: Vec<&(PathBuf, Vec<u8>)> = files
        .iter()
        .filter(|(p, _)| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("baton.db"))
        })
        .collect();
    assert!(
        db.iter().any(|(p, _)| p.ends_with("baton.db")),
        "no baton.db in {}: {:?}",
        server_dir.display(),
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    let db_bytes: Vec<u8> = db.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    // Allowed metadata is there in clear, so this is the right file and it is not empty.
    assert!(
        contains(&db_bytes, sid.as_bytes()),
        "the DB lacks the session id"
    );
    assert!(
        contains(&db_bytes, b"scripted"),
        "the DB lacks the provider name"
    );
    assert!(
        contains(&db_bytes, b"desktop"),
        "the DB lacks the machine name"
    );

    let secrets: Vec<String> = [
        "ZEBRA-CANARY-7781",
        "OKAPI-CANARY-3319",
        "QUOTE\"CANARY-6120\\",
        "ümlaut-CANARY-2207",
        "NARWHAL-CANARY-4402",
        "CANARYDIR-5521",
        "CANARYDIR-9034",
        // Fragments the markers share, in case an encoder split them.
        "CANARY-",
        "CANARYDIR",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([ws.clone(), target.clone()])
    .collect();
    assert_no_secret(&files, &secrets);
    // The server's own log is on the server's disk too.
    let log_file = w.c.log_path("server");
    let server_log = std::fs::read(&log_file).expect("server log");
    assert!(!server_log.is_empty(), "empty server log");
    assert_no_secret(&[(log_file, server_log)], &secrets);
}

#[test]
fn failed_handoff_leaves_no_plaintext_path_on_server() {
    let mut w = World::new(&["laptop", "desktop"]);
    let ws = w.dir("ws");
    let sid = w.new_session(0, &ws);
    w.send(0, &sid, "hello");
    let missing = format!("{}/MISSINGDIR-CANARY-8812/ws", w.tmp.path().display());
    let (rc, h) = w.handoff(0, &sid, "desktop", &["--path", &missing]);
    assert_ne!(rc, 0, "a handoff to a missing directory should fail: {h}");
    w.c.shutdown();
    let mut files = files_under(&w.c.root().join("server"));
    assert!(!files.is_empty(), "no server files");
    let log_file = w.c.log_path("server");
    let server_log = std::fs::read(&log_file).expect("server log");
    files.push((log_file, server_log));
    assert_no_secret(&files, &["MISSINGDIR-CANARY-8812".to_string()]);
}

/// Connects `client`'s WebSocket and subscribes to `session` (entries included); returns once
/// the server welcomed it.
async fn subscribe(client: &Client, session: SessionId) -> WsStream {
    let mut ws = client.connect_ws().await.expect("websocket connects");
    for f in &baton_cli::commands::watch::subscribe_frames(session) {
        let text = serde_json::to_string(f).expect("frame to JSON");
        ws.send(Message::Text(text.into()))
            .await
            .expect("frame sent");
    }
    let welcome = tokio::time::timeout(WAIT, async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg
                && let Ok(ServerFrame::Welcome { .. }) = serde_json::from_str::<ServerFrame>(&t)
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(welcome, Ok(true), "no welcome on the websocket");
    ws
}

/// Collects every event frame arriving on `ws` until `stop` fires.
async fn collect_events(
    mut ws: WsStream,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stop => return events,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(ServerFrame::Event { event }) = serde_json::from_str::<ServerFrame>(&t) {
                        events.push(event);
                    }
                }
                Some(Ok(_)) => {}
                // A closed socket hears nothing more; wait for the stop signal.
                _ => {
                    let _ = stop.await;
                    return events;
                }
            },
        }
    }
}

fn client_of(w: &World, idx: usize) -> Client {
    let identity = Identity::load(&w.c.machines[idx].baton_home).expect("identity loads");
    Client::new(Arc::new(identity), None).expect("client")
}

#[test]
fn other_account_cannot_reach_sessions() {
    let mut w = World::new(&["laptop", "desktop"]);
    let ws = w.dir("ws");
    let sid = w.new_session(0, &ws);
    assert!(w.send(0, &sid, "first").contains("first"));
    // One handoff, so there is a handoff record to try to read.
    let (rc, h) = w.handoff(0, &sid, "desktop", &[]);
    assert_eq!(rc, 0, "{h}");
    let handoff_id: HandoffId = h["handoff_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("handoff id");
    let before = w.session(0, &sid);
    let log_before = w.log(0, &sid).len();
    assert!(log_before >= 3, "{log_before}");

    let m = w.c.add_account("mallory").expect("mallory enrols");
    w.c.start_daemon(m).expect("mallory's daemon starts");
    let online = wait_for(WAIT, || {
        let list = w.c.json(m, &["machines"]).ok()?;
        let a = list.as_array()?.clone();
        a.iter()
            .any(|x| x["name"] == "mallory" && x["online"] == true)
            .then_some(a)
    })
    .expect("mallory online");
    let names: Vec<&str> = online.iter().filter_map(|x| x["name"].as_str()).collect();
    assert_eq!(
        names,
        ["mallory"],
        "mallory sees another account's machines"
    );

    // Through the CLI.
    let list = w.c.json(m, &["sessions"]).expect("mallory's sessions");
    assert!(
        list.as_array()
            .is_some_and(|a| a.iter().all(|s| s["id"] != sid.as_str())),
        "mallory lists the session: {list}"
    );
    for args in [
        vec!["log", sid.as_str()],
        vec!["send", sid.as_str(), "let me in"],
        vec!["stop", sid.as_str()],
        vec!["handoff", sid.as_str(), "--to", "mallory"],
        vec!["handoff", sid.as_str(), "--to", "desktop"],
        vec!["handoffs", sid.as_str()],
    ] {
        assert_cli_refused(&w, m, &args, "not_found");
    }
    // A prefix of the id finds nothing either.
    assert_cli_refused(&w, m, &["log", &sid[..8]], "not_found");

    // Through HTTP, with mallory's own identity.
    let session: SessionId = sid.parse().expect("session id");
    let mallory = client_of(&w, m);
    let laptop = client_of(&w, 0);
    let mallory_machine: MachineId = mallory.identity().config.machine_id;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let s = format!("/v1/sessions/{session}");
        let c = &mallory;
        assert_eq!(
            api_code(c.get::<SessionRecord>(&s).await),
            ErrorCode::NotFound
        );
        assert_eq!(
            api_code(
                c.get::<Vec<SealedEntry>>(&format!("{s}/entries?after=0"))
                    .await
            ),
            ErrorCode::NotFound
        );
        let req = SendInputRequest {
            id: InputId::new(),
            sealed: Sealed(vec![7; 64]),
        };
        assert_eq!(
            api_code(c.post::<_, InputRecord>(&format!("{s}/inputs"), &req).await),
            ErrorCode::NotFound
        );
        assert_eq!(
            api_code(c.get::<Vec<HandoffRecord>>(&format!("{s}/handoffs")).await),
            ErrorCode::NotFound
        );
        assert_eq!(
            api_code(
                c.get::<HandoffRecord>(&format!("/v1/handoffs/{handoff_id}"))
                    .await
            ),
            ErrorCode::NotFound
        );
        assert_eq!(
            api_code(
                c.get::<Vec<InputRecord>>(&format!("{s}/inputs/pending?epoch={}", before["epoch"]))
                    .await
            ),
            ErrorCode::NotFound
        );
        let hreq = HandoffRequest {
            id: HandoffId::new(),
            to: mallory_machine,
            options: HandoffOptions::default(),
            sealed_options: None,
        };
        assert_eq!(
            api_code(
                c.post::<_, HandoffRecord>(&format!("{s}/handoffs"), &hreq)
                    .await
            ),
            ErrorCode::NotFound
        );
        let last_seq = laptop
            .get::<SessionRecord>(&s)
            .await
            .expect("laptop reads its session")
            .last_seq;
        for epoch in [1, 2, 3] {
            let append = AppendRequest {
                epoch,
                entries: vec![NewEntry {
                    seq: last_seq + 1,
                    input_id: None,
                    sealed: Sealed(vec![0xAB; 80]),
                }],
                status: None,
            };
            let code = api_code(c.post::<_, Value>(&format!("{s}/entries"), &append).await);
            assert!(
                matches!(code, ErrorCode::NotFound | ErrorCode::StaleEpoch),
                "append at epoch {epoch}: {code:?}"
            );
        }
    });
    assert_eq!(
        w.log(0, &sid).len(),
        log_before,
        "mallory changed the transcript"
    );

    // Mallory's subscription to the session hears nothing while laptop talks to it; laptop's
    // own subscription (the control) hears the entries.
    let (mallory_ws, laptop_ws) = rt.block_on(async {
        (
            subscribe(&mallory, session).await,
            subscribe(&laptop, session).await,
        )
    });
    let (stop_m, rx_m) = tokio::sync::oneshot::channel();
    let (stop_l, rx_l) = tokio::sync::oneshot::channel();
    let m_task = rt.spawn(collect_events(mallory_ws, rx_m));
    let l_task = rt.spawn(collect_events(laptop_ws, rx_l));
    let reply = w.send(0, &sid, "still mine");
    assert!(reply.contains("still mine"), "{reply}");
    let reply = w.send(0, &sid, "still mine, twice");
    assert!(reply.contains("still mine, twice"), "{reply}");
    std::thread::sleep(Duration::from_secs(3));
    let _ = stop_m.send(());
    let _ = stop_l.send(());
    let (m_ev, l_ev) = rt.block_on(async {
        (
            m_task.await.expect("mallory collector"),
            l_task.await.expect("laptop collector"),
        )
    });
    assert!(
        l_ev.iter()
            .any(|e| matches!(e, Event::Entries { session_id, .. } if *session_id == session)),
        "the control subscription heard no entries: {l_ev:?}"
    );
    for e in &m_ev {
        match e {
            Event::MachineChanged { machine } if machine.id == mallory_machine => {}
            other => panic!("mallory heard an event of another account: {other:?}"),
        }
    }

    let after = w.session(0, &sid);
    for k in ["owner", "epoch", "status", "provider"] {
        assert_eq!(after[k], before[k], "{k} changed: {before} → {after}");
    }
    let log = w.log(0, &sid);
    assert_eq!(log.len(), log_before + 4, "laptop's transcript: {log:?}");
    common::assert_dense(&log);
    assert!(
        log.iter().all(|e| e["text"] != "let me in"),
        "mallory's message reached the transcript"
    );
}

#[test]
fn pairing_code_works_once() {
    let w = World::new(&["laptop"]);
    let ws = w.dir("ws");
    let sid = w.new_session(0, &ws);
    w.send(0, &sid, "remember PAIRMARK-1177");

    let pair = w.c.json(0, &["pair"]).expect("pair");
    let code_str = pair["code"].as_str().expect("code").to_string();
    let expires = pair["expires_at"].as_i64().expect("expires_at");
    let now = baton_proto::now_millis();
    let ten_min = 10 * 60 * 1000;
    assert!(
        (expires - (now + ten_min)).abs() <= 60_000,
        "expires_at {expires} is not about now ({now}) + 10 min"
    );

    let root = w.tmp.path();
    let url = w.c.url.clone();
    let (joiner_home, joiner_bh) = (root.join("joiner/home"), root.join("joiner/baton"));
    let out = baton_as(
        &joiner_home,
        &joiner_bh,
        &[
            "--json", "login", "--server", &url, "--name", "joiner", "--code", &code_str,
        ],
    );
    assert_eq!(code(&out), 0, "joining failed: {}", parse(&out));
    assert_eq!(parse(&out)["created_account"], false);

    let (second_home, second_bh) = (root.join("second/home"), root.join("second/baton"));
    let out = baton_as(
        &second_home,
        &second_bh,
        &[
            "--json", "login", "--server", &url, "--name", "second", "--code", &code_str,
        ],
    );
    assert_ne!(code(&out), 0, "the code worked twice: {}", parse(&out));
    assert_eq!(error_code(&out), "pairing_invalid", "{}", parse(&out));
    assert!(
        !second_bh.join("keys.json").exists(),
        "a refused login left keys behind"
    );

    let (garbage_home, garbage_bh) = (root.join("garbage/home"), root.join("garbage/baton"));
    let out = baton_as(
        &garbage_home,
        &garbage_bh,
        &[
            "--json",
            "login",
            "--server",
            &url,
            "--name",
            "garbage",
            "--code",
            "NOT-A-CODE-0000",
        ],
    );
    assert_ne!(code(&out), 0, "a garbage code worked: {}", parse(&out));
    let c = error_code(&out);
    assert!(c == "usage" || c == "pairing_invalid", "garbage code: {c}");

    let list = w.c.json(0, &["machines"]).expect("machines");
    let mut names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["joiner", "laptop"], "{list}");

    // The joined machine holds the account secret: it decrypts the existing transcript.
    let out = baton_as(&joiner_home, &joiner_bh, &["--json", "log", &sid]);
    assert_eq!(code(&out), 0, "log as joiner: {}", parse(&out));
    let log = parse(&out);
    let texts: Vec<&str> = log
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert!(texts.len() >= 2, "{log}");
    assert_eq!(texts[0], "remember PAIRMARK-1177");
    assert!(texts[1].contains("PAIRMARK-1177"), "{log}");
}

#[test]
fn keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::Builder::new()
        .prefix("baton-e2e-")
        .tempdir()
        .expect("temp dir");
    let mut c = baton_cli::harness::Cluster::start(&exe(), tmp.path()).expect("server starts");
    let i = c.add_machine("laptop", false).expect("login");
    // A command that authenticates, so the token cache is written too.
    c.json(i, &["pair"]).expect("pair");
    let bh = c.machines[i].baton_home.clone();

    let mode = |name: &str| {
        std::fs::metadata(bh.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        mode("keys.json"),
        0o600,
        "keys.json mode {:o}",
        mode("keys.json")
    );
    assert_eq!(
        mode("token.json"),
        0o600,
        "token.json mode {:o}",
        mode("token.json")
    );

    let config: Value =
        serde_json::from_slice(&std::fs::read(bh.join("config.json")).expect("config.json"))
            .expect("config.json is JSON");
    assert_eq!(config["server"], c.url.as_str(), "{config}");
    assert_eq!(config["name"], "laptop", "{config}");
    // The secrets live in keys.json only.
    let keys: Value =
        serde_json::from_slice(&std::fs::read(bh.join("keys.json")).expect("keys.json"))
            .expect("keys.json is JSON");
    let secret = keys["account_secret"].as_str().expect("account_secret");
    assert!(secret.len() >= 40, "{keys}");
    let config_text = std::fs::read_to_string(bh.join("config.json")).expect("config.json");
    assert!(
        !config_text.contains(secret),
        "config.json holds the account secret"
    );
    c.shutdown();
}
