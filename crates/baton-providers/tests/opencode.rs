//! The OpenCode adapter against the real `opencode` CLI (pinned 1.18.33, installed by
//! `baton_testkit::clis`) talking to the loopback model server, plus fixture tests of the
//! path rewriting of exports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_proto::{AuthState, HandoffSupport, VersionCheck};
use baton_providers::opencode::{OpenCodeProvider, compare_exports, rewrite_export};
use baton_providers::rewrite::PathMap;
use baton_providers::{AgentEvent, AgentSession, Provider, ProviderEnv, ProviderError, StartSpec};
use baton_testkit::clis::{self, Clis};
use baton_testkit::model::ModelServer;
use baton_testkit::rig::{self, Login};
use serde_json::Value;

/// Longest wait for one turn (a run takes ~4 s; the first start of a home migrates its DB).
const TURN_TIMEOUT: Duration = Duration::from_secs(120);

/// One simulated machine: its own HOME and adapter.
struct Machine {
    home: PathBuf,
    provider: OpenCodeProvider,
}

fn machine(root: &Path, name: &str, clis: &Clis, model: &ModelServer, login: Login) -> Machine {
    let home = root.join(name).join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut env = ProviderEnv::new(&home);
    // Shadow the isolation variables the test process has, so nothing of the real user leaks.
    for name in rig::ISOLATE {
        if std::env::var_os(name).is_some() {
            env.extra_env.push((name.to_string(), String::new()));
        }
    }
    env.extra_env
        .extend(rig::machine_env(clis, &model.base_url(), &home, login));
    Machine {
        provider: OpenCodeProvider::new(env),
        home,
    }
}

/// A git workspace (OpenCode records `patch` parts with absolute file paths only in git trees).
fn workspace(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(path)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", path)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let _ = git(&["init", "-q"])
        && git(&[
            "-c",
            "user.email=t@t",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "init",
        ]);
    path.to_path_buf()
}

fn spec(provider_ref: &str, ws: &Path, resume: bool) -> StartSpec {
    StartSpec {
        provider_ref: provider_ref.into(),
        workspace: ws.to_path_buf(),
        resume,
        env: Vec::new(),
    }
}

/// Events of one turn, up to and including its `TurnEnd` (or `Exited`).
async fn turn(session: &mut Box<dyn AgentSession>, text: &str) -> Vec<AgentEvent> {
    session.send_turn(text).await.unwrap();
    collect(session).await
}

async fn collect(session: &mut Box<dyn AgentSession>) -> Vec<AgentEvent> {
    let mut out = Vec::new();
    loop {
        let ev = tokio::time::timeout(TURN_TIMEOUT, session.next_event())
            .await
            .unwrap_or_else(|_| panic!("turn did not end; so far {out:?}"));
        let end = matches!(ev, AgentEvent::TurnEnd { .. } | AgentEvent::Exited { .. });
        out.push(ev);
        if end {
            return out;
        }
    }
}

fn session_ref(events: &[AgentEvent]) -> Option<String> {
    events.iter().find_map(|e| match e {
        AgentEvent::SessionRef { provider_ref } => Some(provider_ref.clone()),
        _ => None,
    })
}

fn assistant_text(events: &[AgentEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Assistant { text } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ends_ok(events: &[AgentEvent]) -> bool {
    matches!(
        events.last(),
        Some(AgentEvent::TurnEnd {
            interrupted: false,
            ..
        })
    ) && !events.iter().any(|e| matches!(e, AgentEvent::Error { .. }))
}

/// The session's export JSON on a machine (through the adapter's own bundle).
async fn exported(m: &Machine, id: &str, ws: &Path) -> Value {
    let bundle = m.provider.export_state(id, ws).await.unwrap();
    serde_json::from_slice(&bundle.files[0].data.0).unwrap()
}

/// Stages and activates a bundle on a machine.
async fn import(m: &Machine, bundle: &baton_proto::ws::ProviderBundle, ws: &Path, staging: &Path) {
    m.provider.stage_import(bundle, ws, staging).await.unwrap();
    m.provider.activate_import(staging).await.unwrap();
    assert!(!staging.exists(), "staging is removed once activated");
}

fn setup() -> Option<(Clis, ModelServer, tempfile::TempDir)> {
    let clis = clis::require()?;
    let model = ModelServer::start().unwrap();
    Some((clis, model, tempfile::tempdir().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_session_hand_off_resume_and_hand_back() {
    let Some((clis, model, root)) = setup() else {
        return;
    };
    let root = root.path();
    let m1 = machine(root, "laptop", &clis, &model, Login::LoggedIn);
    let m2 = machine(root, "desktop", &clis, &model, Login::LoggedIn);
    let ws1 = workspace(&root.join("laptop/src/proj"));
    let (home1, ws1_s) = (m1.home.to_str().unwrap(), ws1.to_str().unwrap());

    // A new session: OpenCode picks the id, the tool writes into the workspace.
    let mut s = m1
        .provider
        .start(&spec("baton-session-1", &ws1, false))
        .await
        .unwrap();
    let events = turn(&mut s, "WRITEFILE b.txt hello").await;
    s.shutdown().await.unwrap();
    let id = session_ref(&events).expect("SessionRef");
    assert!(id.starts_with("ses_"), "{id}");
    assert!(
        matches!(events[0], AgentEvent::SessionRef { .. }),
        "{events:?}"
    );
    assert!(ends_ok(&events), "{events:?}");
    assert!(
        events.iter().any(|e| matches!(e,
        AgentEvent::ToolCall { name, input } if name == "write"
            && input["filePath"] == format!("{ws1_s}/b.txt"))),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AgentEvent::ToolResult { .. }))
    );
    assert!(
        matches!(events.last(), Some(AgentEvent::TurnEnd { usage: Some(u), .. }) if u.input_tokens > 0)
    );
    assert_eq!(std::fs::read_to_string(ws1.join("b.txt")).unwrap(), "hello");
    assert!(m1.provider.has_state(&id, &ws1).await.unwrap());

    // Listing and reading back.
    let list = m1.provider.list_sessions().await.unwrap();
    assert!(
        list.iter().any(|i| i.provider_ref == id && i.cwd == ws1_s),
        "{list:?}"
    );
    let read = m1.provider.read_transcript(&id, &ws1).await.unwrap();
    assert_eq!(
        read[0].event,
        AgentEvent::User {
            text: "WRITEFILE b.txt hello".into()
        }
    );
    assert!(
        read.iter()
            .any(|e| matches!(e.event, AgentEvent::ToolCall { .. }))
    );
    assert!(matches!(
        read.last().unwrap().event,
        AgentEvent::TurnEnd { turn: Some(1), .. }
    ));

    // Hand off to another HOME and another workspace path.
    let bundle = m1.provider.export_state(&id, &ws1).await.unwrap();
    assert_eq!(bundle.files.len(), 1);
    assert_eq!(bundle.files[0].path, format!("opencode/{id}.json"));
    assert!(String::from_utf8_lossy(&bundle.files[0].data.0).contains(ws1_s));
    let ws2 = workspace(&root.join("desktop/elsewhere/project-two"));
    std::fs::write(ws2.join("b.txt"), "hello").unwrap();
    let ws2_s = ws2.to_str().unwrap();
    import(&m2, &bundle, &ws2, &root.join("stage1")).await;
    m1.provider.remove_state(&id, &ws1).await.unwrap();
    assert!(!m1.provider.has_state(&id, &ws1).await.unwrap());
    assert!(m2.provider.has_state(&id, &ws2).await.unwrap());

    // The stored paths name the new workspace, nothing of the old one or the old home is left.
    let on2 = exported(&m2, &id, &ws2).await;
    let text = on2.to_string();
    assert!(!text.contains(ws1_s) && !text.contains(home1), "{text}");
    let tool = on2["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["parts"].as_array().unwrap())
        .find(|p| p["type"] == "tool")
        .unwrap();
    assert_eq!(tool["state"]["input"]["filePath"], format!("{ws2_s}/b.txt"));
    let patch = on2["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["parts"].as_array().unwrap())
        .find(|p| p["type"] == "patch");
    if let Some(patch) = patch {
        assert_eq!(patch["files"][0], format!("{ws2_s}/b.txt"));
    }

    // Resume there: the model sees the first message and no old path.
    model.clear_requests();
    let mut s = m2.provider.start(&spec(&id, &ws2, true)).await.unwrap();
    let events = turn(&mut s, "ECHOFIRST what was it").await;
    s.shutdown().await.unwrap();
    assert!(ends_ok(&events), "{events:?}");
    assert!(
        assistant_text(&events).contains("First message was: WRITEFILE b.txt hello"),
        "{events:?}"
    );
    let reqs = model.requests_to("/chat/completions");
    assert!(!reqs.is_empty());
    for r in &reqs {
        let body = r.body_text();
        assert!(
            !body.contains(ws1_s),
            "old workspace reached the model: {body}"
        );
        assert!(!body.contains(home1), "old home reached the model: {body}");
    }
    assert!(
        reqs.iter()
            .any(|r| r.body_text().contains(&format!("{ws2_s}/b.txt")))
    );

    // Hand it back to the laptop's original path.
    let back = m2.provider.export_state(&id, &ws2).await.unwrap();
    import(&m1, &back, &ws1, &root.join("stage2")).await;
    let mut s = m1.provider.start(&spec(&id, &ws1, true)).await.unwrap();
    let events = turn(&mut s, "ECHOFIRST once more").await;
    s.shutdown().await.unwrap();
    assert!(
        assistant_text(&events).contains("First message was: WRITEFILE b.txt hello"),
        "{events:?}"
    );
    let read = m1.provider.read_transcript(&id, &ws1).await.unwrap();
    let users = read
        .iter()
        .filter(|e| matches!(e.event, AgentEvent::User { .. }))
        .count();
    assert_eq!(users, 3);

    // The desktop still holds the older copy (its removal "failed"): a stale copy of the same
    // conversation is replaced; staging the same state twice is idempotent.
    let latest = m1.provider.export_state(&id, &ws1).await.unwrap();
    import(&m2, &latest, &ws2, &root.join("stage3")).await;
    import(&m2, &latest, &ws2, &root.join("stage4")).await;
    let on2 = exported(&m2, &id, &ws2).await;
    let on1 = exported(&m1, &id, &ws1).await;
    assert_eq!(
        on2["messages"].as_array().unwrap().len(),
        on1["messages"].as_array().unwrap().len()
    );

    // A diverged copy (a turn the incoming state lacks) is refused.
    let mut s = m2.provider.start(&spec(&id, &ws2, true)).await.unwrap();
    assert!(ends_ok(&turn(&mut s, "only on the desktop").await));
    s.shutdown().await.unwrap();
    let err = m2
        .provider
        .stage_import(&latest, &ws2, &root.join("stage5"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::TargetIdentityConflict { .. }),
        "{err}"
    );
    assert!(!root.join("stage5").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_login_states_and_connected_service() {
    let Some((clis, model, root)) = setup() else {
        return;
    };
    let root = root.path();
    let inm = machine(root, "in", &clis, &model, Login::LoggedIn);
    let info = inm.provider.detect().await;
    assert!(info.installed);
    assert_eq!(info.version.as_deref(), Some("1.18.33"));
    assert_eq!(info.version_check, VersionCheck::Tested);
    assert_eq!(info.auth, AuthState::MachineLocal);
    assert_eq!(info.handoff, HandoffSupport::Supported);

    let out = machine(root, "out", &clis, &model, Login::LoggedOut);
    assert_eq!(out.provider.detect().await.auth, AuthState::Missing);

    let mut env = ProviderEnv::new(root.join("none"));
    env.programs
        .push(("opencode".into(), root.join("no/such/opencode")));
    let none = OpenCodeProvider::new(env);
    let info = none.detect().await;
    assert!(!info.installed && info.version.is_none());
    let err = none
        .start(&spec("x", root, false))
        .await
        .err()
        .expect("start without the CLI fails");
    assert!(matches!(err, ProviderError::NotInstalled { .. }), "{err}");

    // Logged out: the model server refuses the keyless request and the turn ends in an error.
    let ws = workspace(&root.join("out-ws"));
    let mut s = out.provider.start(&spec("x", &ws, false)).await.unwrap();
    let events = turn(&mut s, "hello without a key").await;
    s.shutdown().await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, AgentEvent::Error { .. })),
        "{events:?}"
    );
    assert!(matches!(events.last(), Some(AgentEvent::TurnEnd { .. })));

    // The same machine with a connected service's key in the session env works.
    let mut spec = spec("x", &ws, false);
    spec.env = rig::service_env("opencode");
    let mut s = out.provider.start(&spec).await.unwrap();
    let events = turn(&mut s, "hello with a service key").await;
    s.shutdown().await.unwrap();
    assert!(ends_ok(&events), "{events:?}");
    assert!(assistant_text(&events).contains("Mock reply: hello with a service key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_then_continue() {
    let Some((clis, model, root)) = setup() else {
        return;
    };
    let root = root.path();
    let m = machine(root, "m", &clis, &model, Login::LoggedIn);
    let ws = workspace(&root.join("ws"));
    let mut s = m.provider.start(&spec("x", &ws, false)).await.unwrap();
    let first = turn(&mut s, "remember PELICAN").await;
    let id = session_ref(&first).unwrap();

    s.send_turn("SLEEP 20000 then answer").await.unwrap();
    // Let the request reach the model server.
    let started = std::time::Instant::now();
    while !model
        .requests_to("/chat/completions")
        .iter()
        .any(|r| r.body_text().contains("SLEEP 20000"))
    {
        assert!(started.elapsed() < TURN_TIMEOUT, "the request never came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = s.pid().expect("a run is alive");
    // Export refuses while a run of the session is alive.
    let err = m.provider.export_state(&id, &ws).await.unwrap_err();
    assert!(matches!(err, ProviderError::Process(_)), "{err}");
    let interrupted_at = std::time::Instant::now();
    s.interrupt().await.unwrap();
    let events = collect(&mut s).await;
    assert!(
        matches!(
            events.last(),
            Some(AgentEvent::TurnEnd {
                interrupted: true,
                ..
            })
        ),
        "{events:?}"
    );
    let took = interrupted_at.elapsed();
    assert!(took < Duration::from_secs(10), "interrupt took {took:?}");
    // SAFETY: probing with signal 0 only.
    assert_ne!(unsafe { libc::kill(pid as i32, 0) }, 0, "the run is gone");

    // The conversation goes on in the same session.
    let events = turn(&mut s, "ECHOFIRST after the interrupt").await;
    assert!(session_ref(&events).is_none());
    assert!(
        assistant_text(&events).contains("First message was: remember PELICAN"),
        "{events:?}"
    );
    s.shutdown().await.unwrap();
    assert!(m.provider.export_state(&id, &ws).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_copies_the_conversation() {
    let Some((clis, model, root)) = setup() else {
        return;
    };
    let root = root.path();
    let m = machine(root, "m", &clis, &model, Login::LoggedIn);
    let ws = workspace(&root.join("ws"));
    let mut s = m.provider.start(&spec("x", &ws, false)).await.unwrap();
    let id = session_ref(&turn(&mut s, "first words").await).unwrap();
    assert!(ends_ok(&turn(&mut s, "second words").await));
    s.shutdown().await.unwrap();

    let fork = m
        .provider
        .fork_state(&id, &ws, "baton-fork", Some(1))
        .await
        .unwrap();
    assert!(fork.starts_with("ses_") && fork != id);
    let list = m.provider.list_sessions().await.unwrap();
    assert!(list.iter().any(|i| i.provider_ref == fork));
    assert!(list.iter().any(|i| i.provider_ref == id));
    let read = m.provider.read_transcript(&fork, &ws).await.unwrap();
    let users: Vec<&AgentEvent> = read
        .iter()
        .map(|e| &e.event)
        .filter(|e| matches!(e, AgentEvent::User { .. }))
        .collect();
    assert_eq!(
        users,
        [&AgentEvent::User {
            text: "first words".into()
        }]
    );

    let mut s = m.provider.start(&spec(&fork, &ws, true)).await.unwrap();
    let events = turn(&mut s, "ECHOFIRST in the fork").await;
    s.shutdown().await.unwrap();
    assert!(
        assistant_text(&events).contains("First message was: first words"),
        "{events:?}"
    );
    // The original is untouched.
    let orig = m.provider.read_transcript(&id, &ws).await.unwrap();
    assert_eq!(
        orig.iter()
            .filter(|e| matches!(e.event, AgentEvent::User { .. }))
            .count(),
        2
    );
}

// ---- fixture tests (no CLI) ----

const FIXTURE: &str = include_str!("fixtures/opencode/export.json");
const FIXTURE_ID: &str = "ses_def1aab5dffeVZ5AKh5diNEln6";

fn fixture_map() -> PathMap {
    PathMap::new(vec![
        ("/home/dev/ws/my_proj.v2", "/srv/b/proj"),
        ("/home/dev", "/srv/home/b"),
    ])
}

#[test]
fn fixture_rewrite_round_trips_and_leaves_no_old_prefix() {
    let map = fixture_map();
    let original: Value = serde_json::from_str(FIXTURE).unwrap();
    let rewritten = rewrite_export(FIXTURE, FIXTURE_ID, &map).unwrap();
    let text = rewritten.to_string();
    assert!(!map.matches(&text), "an old prefix survived: {text}");
    let back = rewrite_export(&text, FIXTURE_ID, &map.inverse()).unwrap();
    assert_eq!(back, original);

    let assistant = &rewritten["messages"][1];
    assert_eq!(assistant["info"]["path"]["cwd"], "/srv/b/proj");
    assert_eq!(assistant["info"]["path"]["root"], "/srv/b/proj");
    let parts = assistant["parts"].as_array().unwrap();
    let tool = parts.iter().find(|p| p["type"] == "tool").unwrap();
    assert_eq!(tool["state"]["input"]["filePath"], "/srv/b/proj/b.txt");
    assert_eq!(tool["state"]["metadata"]["filepath"], "/srv/b/proj/b.txt");
    let patch = parts.iter().find(|p| p["type"] == "patch").unwrap();
    assert_eq!(patch["files"][0], "/srv/b/proj/b.txt");
    // A sibling of the workspace is not the workspace, but it is under the home.
    assert!(
        tool["state"]["metadata"]["note"]
            .as_str()
            .unwrap()
            .contains("/srv/home/b/ws/my_proj.v2.bak")
    );
}

#[test]
fn fixture_refuses_another_session_and_compares() {
    assert!(matches!(
        rewrite_export(FIXTURE, "ses_def1b3a23ffecFm2f0UV4BVMo2", &fixture_map()),
        Err(ProviderError::InvalidBundle(_))
    ));
    assert!(rewrite_export("not json", FIXTURE_ID, &fixture_map()).is_err());
    let full: Value = serde_json::from_str(FIXTURE).unwrap();
    let mut first_turn = full.clone();
    first_turn["messages"].as_array_mut().unwrap().truncate(2);
    use baton_providers::opencode::ExportCompare;
    assert_eq!(compare_exports(&full, &full), ExportCompare::Same);
    assert_eq!(compare_exports(&first_turn, &full), ExportCompare::Extends);
    assert_eq!(compare_exports(&full, &first_turn), ExportCompare::Diverged);
}
