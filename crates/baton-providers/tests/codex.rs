//! The Codex adapter against the real `codex` CLI (codex-cli 0.169.0 from `baton_testkit::clis`)
//! talking to the loopback model server, plus fixture tests of the rollout rewrite.
//!
//! Each simulated machine is its own HOME (tempdir) with its own `~/.codex`.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use baton_proto::ws::{BundleFile, ProviderBundle};
use baton_proto::{AuthState, Bytes, HandoffSupport, VersionCheck};
use baton_providers::codex::CodexProvider;
use baton_providers::{AgentEvent, AgentSession, Provider, ProviderEnv, ProviderError, StartSpec};
use baton_testkit::clis::{self, Clis};
use baton_testkit::model::ModelServer;
use baton_testkit::rig::{self, Login};
use tempfile::TempDir;

/// How long one turn may take before the test fails.
const TURN_LIMIT: Duration = Duration::from_secs(90);

/// Removes variables that point provider processes at the real user's state. Every test calls
/// this first, and `Once` makes the others wait, so nothing reads the environment meanwhile.
fn isolate() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for var in rig::ISOLATE {
            // SAFETY: runs once, before any test of this binary reads the environment (every
            // test calls it first; Once blocks the others until it is done).
            unsafe { std::env::remove_var(var) };
        }
    });
}

/// The CLIs, or `None` (after the testkit printed why) when they cannot be installed.
fn setup() -> Option<Clis> {
    isolate();
    clis::require()
}

/// A simulated machine: its HOME, one workspace, and the adapter.
struct Machine {
    _dir: TempDir,
    home: PathBuf,
    ws: PathBuf,
    provider: CodexProvider,
}

impl Machine {
    fn new(clis: &Clis, model: &ModelServer, login: Login, ws_name: &str) -> Machine {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let ws = dir.path().join("work").join(ws_name);
        std::fs::create_dir_all(&home).expect("home");
        std::fs::create_dir_all(&ws).expect("workspace");
        let mut env = ProviderEnv::new(&home);
        env.extra_env = rig::machine_env(clis, &model.base_url(), &home, login);
        Machine {
            _dir: dir,
            home,
            ws,
            provider: CodexProvider::new(env),
        }
    }

    fn codex_home(&self) -> PathBuf {
        self.home.join(".codex")
    }

    async fn start(
        &self,
        provider_ref: &str,
        resume: bool,
        env: Vec<(String, String)>,
    ) -> Box<dyn AgentSession> {
        self.provider
            .start(&StartSpec {
                provider_ref: provider_ref.into(),
                workspace: self.ws.clone(),
                resume,
                env,
            })
            .await
            .expect("codex session starts")
    }

    /// Moves the bundle in: stage, then activate.
    async fn import(&self, bundle: &ProviderBundle) {
        let staging = self._dir.path().join("staging");
        self.provider
            .stage_import(bundle, &self.ws, &staging)
            .await
            .expect("stage_import");
        self.provider
            .activate_import(&staging)
            .await
            .expect("activate_import");
        assert!(!staging.exists(), "staging is cleaned up");
    }
}

/// Sends one turn and collects its events up to and including the turn's end.
async fn turn(session: &mut Box<dyn AgentSession>, text: &str) -> Vec<AgentEvent> {
    session.send_turn(text).await.expect("send_turn");
    collect(session).await
}

/// Events up to the turn's end (`TurnEnd` or `Exited`).
async fn collect(session: &mut Box<dyn AgentSession>) -> Vec<AgentEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(TURN_LIMIT, async {
        loop {
            let ev = session.next_event().await;
            let end = matches!(ev, AgentEvent::TurnEnd { .. } | AgentEvent::Exited { .. });
            events.push(ev);
            if end {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("turn did not end in time; so far: {events:?}"));
    events
}

fn session_ref(events: &[AgentEvent]) -> String {
    events
        .iter()
        .find_map(|e| match e {
            AgentEvent::SessionRef { provider_ref } => Some(provider_ref.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no SessionRef in {events:?}"))
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

fn assert_clean_end(events: &[AgentEvent]) {
    assert!(
        matches!(
            events.last(),
            Some(AgentEvent::TurnEnd {
                interrupted: false,
                ..
            })
        ),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, AgentEvent::Error { .. })),
        "{events:?}"
    );
}

/// The body of the last generation request.
fn last_request(model: &ModelServer) -> String {
    model
        .requests_to("/responses")
        .last()
        .expect("a /responses request")
        .body_text()
}

#[tokio::test(flavor = "multi_thread")]
async fn new_thread_writes_a_file_then_resumes() {
    let Some(clis) = setup() else { return };
    let model = ModelServer::start().expect("model server");
    let m = Machine::new(&clis, &model, Login::LoggedIn, "proj");
    let mut s = m.start("baton-session-id", false, Vec::new()).await;

    let ev = turn(&mut s, "WRITEFILE a.txt hello").await;
    assert!(
        matches!(ev.first(), Some(AgentEvent::SessionRef { .. })),
        "{ev:?}"
    );
    let id = session_ref(&ev);
    assert_eq!(id.len(), 36, "a UUID thread id: {id}");
    let call = ev
        .iter()
        .position(|e| {
            // The model server uses apply_patch when Codex offers it, else a shell command.
            matches!(e, AgentEvent::ToolCall { name, input }
                if (name == "file_change" || name == "shell") && input.to_string().contains("a.txt"))
        })
        .unwrap_or_else(|| panic!("no file-writing tool call in {ev:?}"));
    let result = ev
        .iter()
        .position(|e| matches!(e, AgentEvent::ToolResult { .. }))
        .unwrap_or_else(|| panic!("no tool result in {ev:?}"));
    assert!(call < result);
    assert_eq!(assistant_text(&ev), "Wrote it.");
    assert_clean_end(&ev);
    match ev.last() {
        Some(AgentEvent::TurnEnd { usage: Some(u), .. }) => assert!(u.input_tokens > 0),
        other => panic!("no usage in {other:?}"),
    }
    let written = std::fs::read_to_string(m.ws.join("a.txt")).expect("a.txt written");
    assert_eq!(written.trim_end(), "hello");
    assert!(m.provider.has_state(&id, &m.ws).await.unwrap());

    // The next turn resumes the same thread (a new process) and sees the first message.
    let ev = turn(&mut s, "ECHOFIRST what was it").await;
    assert!(
        !ev.iter()
            .any(|e| matches!(e, AgentEvent::SessionRef { .. }))
    );
    assert_eq!(
        assistant_text(&ev),
        "First message was: WRITEFILE a.txt hello"
    );
    assert_clean_end(&ev);
    s.shutdown().await.unwrap();

    // A fresh session object resuming by id works too.
    let mut s = m.start(&id, true, Vec::new()).await;
    let ev = turn(&mut s, "ECHOFIRST again").await;
    assert_eq!(
        assistant_text(&ev),
        "First message was: WRITEFILE a.txt hello"
    );
    s.shutdown().await.unwrap();

    // Resuming an id this machine does not have fails up front.
    let err = m
        .provider
        .start(&StartSpec {
            provider_ref: "01a2ffff-0000-7000-8000-000000000001".into(),
            workspace: m.ws.clone(),
            resume: true,
            env: Vec::new(),
        })
        .await
        .err()
        .expect("unknown thread refused");
    assert!(matches!(err, ProviderError::StateMissing { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn handoff_to_another_home_and_path_and_back() {
    let Some(clis) = setup() else { return };
    let model = ModelServer::start().expect("model server");
    let a = Machine::new(&clis, &model, Login::LoggedIn, "laptop-proj");
    let b = Machine::new(&clis, &model, Login::LoggedIn, "desktop-project");

    let mut s = a.start("baton-id", false, Vec::new()).await;
    let ev = turn(&mut s, "WRITEFILE a.txt hello").await;
    let id = session_ref(&ev);
    s.shutdown().await.unwrap();

    // A → B: other HOME, other workspace path.
    let bundle = a.provider.export_state(&id, &a.ws).await.unwrap();
    assert_eq!(bundle.files.len(), 1);
    let path = &bundle.files[0].path;
    assert!(
        path.starts_with("sessions/") && path.ends_with(&format!("-{id}.jsonl")),
        "{path}"
    );
    b.import(&bundle).await;
    // Idempotent: the same bundle again is fine.
    b.import(&bundle).await;
    assert!(b.provider.has_state(&id, &b.ws).await.unwrap());
    let moved = std::fs::read_to_string(b.codex_home().join(path)).unwrap();
    for old in [a.ws.to_str().unwrap(), a.home.to_str().unwrap()] {
        assert!(!moved.contains(old), "{old} survived in the rollout");
    }

    model.clear_requests();
    let mut s = b.start(&id, true, Vec::new()).await;
    let ev = turn(&mut s, "ECHOFIRST what was it").await;
    assert_eq!(
        assistant_text(&ev),
        "First message was: WRITEFILE a.txt hello"
    );
    assert_clean_end(&ev);
    let body = last_request(&model);
    assert!(body.contains("WRITEFILE a.txt hello"), "context came along");
    assert!(body.contains(b.ws.to_str().unwrap()));
    for old in [a.ws.to_str().unwrap(), a.home.to_str().unwrap()] {
        assert!(!body.contains(old), "{old} reached the model");
    }
    let ev = turn(&mut s, "second turn on desktop").await;
    assert_clean_end(&ev);
    s.shutdown().await.unwrap();

    // B → A without A's cleanup having run: A still has its older rollout and Codex's index
    // rows, so activation goes through `codex delete --force` before placing the new rollout.
    let bundle = b.provider.export_state(&id, &b.ws).await.unwrap();
    a.import(&bundle).await;
    let rollouts: Vec<_> = walk(&a.codex_home().join("sessions"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&id))
        .collect();
    assert_eq!(rollouts.len(), 1, "{rollouts:?}");
    model.clear_requests();
    let mut s = a.start(&id, true, Vec::new()).await;
    let ev = turn(&mut s, "ECHOFIRST back home").await;
    assert_eq!(
        assistant_text(&ev),
        "First message was: WRITEFILE a.txt hello"
    );
    let body = last_request(&model);
    assert!(
        body.contains("second turn on desktop"),
        "B's turn came back"
    );
    for old in [b.ws.to_str().unwrap(), b.home.to_str().unwrap()] {
        assert!(!body.contains(old), "{old} reached the model");
    }
    s.shutdown().await.unwrap();

    // Cleanup on B: Codex forgets the thread.
    b.provider.remove_state(&id, &b.ws).await.unwrap();
    assert!(!b.provider.has_state(&id, &b.ws).await.unwrap());
    b.provider.remove_state(&id, &b.ws).await.unwrap();

    // A different rollout for the same id is a conflict.
    let mut other = bundle.clone();
    other.files[0].data = Bytes(
        String::from_utf8(other.files[0].data.0.clone())
            .unwrap()
            .replace("second turn on desktop", "something else entirely")
            .into_bytes(),
    );
    let err = a
        .provider
        .stage_import(&other, &a.ws, &a._dir.path().join("staging2"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::TargetIdentityConflict { .. }),
        "{err}"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
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

#[tokio::test(flavor = "multi_thread")]
async fn detect_logged_in_logged_out_and_missing() {
    let Some(clis) = setup() else { return };
    let model = ModelServer::start().expect("model server");
    let a = Machine::new(&clis, &model, Login::LoggedIn, "p");
    let info = a.provider.detect().await;
    assert!(info.installed);
    assert_eq!(info.name, "codex");
    assert_eq!(info.version.as_deref(), Some("0.169.0"));
    assert_eq!(info.version_check, VersionCheck::Tested);
    assert_eq!(info.auth, AuthState::MachineLocal);
    assert_eq!(info.handoff, HandoffSupport::Experimental);
    assert_eq!(a.provider.service_env_vars(), &["CODEX_API_KEY"]);

    let b = Machine::new(&clis, &model, Login::LoggedOut, "p");
    let info = b.provider.detect().await;
    assert!(info.installed);
    assert_eq!(info.auth, AuthState::Missing);

    let dir = tempfile::tempdir().unwrap();
    let mut env = ProviderEnv::new(dir.path());
    env.extra_env = vec![("PATH".into(), dir.path().join("bin").display().to_string())];
    let none = CodexProvider::new(env.clone());
    let info = none.detect().await;
    assert!(!info.installed);
    assert_eq!(info.version, None);
    let err = none
        .start(&StartSpec {
            provider_ref: "x".into(),
            workspace: dir.path().into(),
            resume: false,
            env: Vec::new(),
        })
        .await
        .err()
        .expect("not installed");
    assert!(matches!(err, ProviderError::NotInstalled { .. }), "{err}");
    // A configured path that does not exist is "not installed" too.
    env.programs = vec![("codex".into(), dir.path().join("nope"))];
    assert!(!CodexProvider::new(env).detect().await.installed);
}

#[tokio::test(flavor = "multi_thread")]
async fn logged_out_machine_works_with_a_connected_service() {
    let Some(clis) = setup() else { return };
    let model = ModelServer::start().expect("model server");
    let m = Machine::new(&clis, &model, Login::LoggedOut, "p");

    // Without a key the model server refuses: an error entry and a turn end, no hang.
    let mut s = m.start("baton-id", false, Vec::new()).await;
    let ev = turn(&mut s, "hello without a key").await;
    assert!(
        ev.iter().any(|e| matches!(e, AgentEvent::Error { .. })),
        "{ev:?}"
    );
    assert!(
        matches!(ev.last(), Some(AgentEvent::TurnEnd { .. })),
        "{ev:?}"
    );
    s.shutdown().await.unwrap();

    let mut s = m.start("baton-id", false, rig::service_env("codex")).await;
    let ev = turn(&mut s, "hello with a service key").await;
    assert_eq!(assistant_text(&ev), "Mock reply: hello with a service key");
    assert_clean_end(&ev);
    let req = model.requests_to("/responses");
    let auth = req
        .last()
        .unwrap()
        .header("authorization")
        .unwrap_or_default();
    assert!(auth.starts_with("Bearer "), "{auth}");
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupt_a_sleeping_turn() {
    let Some(clis) = setup() else { return };
    let model = ModelServer::start().expect("model server");
    let m = Machine::new(&clis, &model, Login::LoggedIn, "p");
    let mut s = m.start("baton-id", false, Vec::new()).await;
    s.send_turn("SLEEP 20000").await.unwrap();
    // The thread id arrives before the model answers.
    let first = tokio::time::timeout(TURN_LIMIT, s.next_event())
        .await
        .unwrap();
    assert!(matches!(first, AgentEvent::SessionRef { .. }), "{first:?}");
    // Let the request reach the model server.
    for _ in 0..100 {
        if !model.requests_to("/responses").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.pid().is_some());
    let started = std::time::Instant::now();
    s.interrupt().await.unwrap();
    let ev = collect(&mut s).await;
    assert!(
        matches!(
            ev.last(),
            Some(AgentEvent::TurnEnd {
                interrupted: true,
                ..
            })
        ),
        "{ev:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // The thread goes on after the interruption.
    let ev = turn(&mut s, "ECHOFIRST still there").await;
    assert_eq!(assistant_text(&ev), "First message was: SLEEP 20000");
    assert_clean_end(&ev);
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn list_read_and_fork() {
    let Some(clis) = setup() else { return };
    let model = ModelServer::start().expect("model server");
    let m = Machine::new(&clis, &model, Login::LoggedIn, "p");
    let mut s = m.start("baton-id", false, Vec::new()).await;
    let id = session_ref(&turn(&mut s, "WRITEFILE a.txt hello").await);
    turn(&mut s, "the second turn").await;
    s.shutdown().await.unwrap();

    let listed = m.provider.list_sessions().await.unwrap();
    let me = listed
        .iter()
        .find(|i| i.provider_ref == id)
        .unwrap_or_else(|| panic!("{id} not in {listed:?}"));
    assert_eq!(me.title.as_deref(), Some("WRITEFILE a.txt hello"));
    assert_eq!(me.cwd, m.ws.to_str().unwrap());
    assert!(me.updated_at > 0);

    let entries = m.provider.read_transcript(&id, &m.ws).await.unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| match &e.event {
            AgentEvent::User { .. } => "user",
            AgentEvent::Assistant { .. } => "assistant",
            AgentEvent::ToolCall { .. } => "call",
            AgentEvent::ToolResult { .. } => "result",
            AgentEvent::TurnEnd { .. } => "end",
            AgentEvent::Error { .. } => "error",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "user",
            "call",
            "result",
            "assistant",
            "end",
            "user",
            "assistant",
            "end"
        ]
    );
    assert_eq!(
        entries[0].event,
        AgentEvent::User {
            text: "WRITEFILE a.txt hello".into()
        }
    );
    assert!(entries.iter().all(|e| e.at.is_some()));

    // Fork after the first turn: a new thread that Codex resumes, without the second turn.
    let new_id = "01a2ffff-0000-7000-8000-00000000f0c1";
    let forked = m
        .provider
        .fork_state(&id, &m.ws, new_id, Some(1))
        .await
        .unwrap();
    assert_eq!(forked, new_id);
    let fe = m.provider.read_transcript(&forked, &m.ws).await.unwrap();
    assert_eq!(
        fe.iter()
            .filter(|e| matches!(e.event, AgentEvent::TurnEnd { .. }))
            .count(),
        1
    );
    let text = walk(&m.codex_home().join("sessions"))
        .into_iter()
        .find(|p| p.to_string_lossy().contains(new_id))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .expect("forked rollout");
    assert!(!text.contains(&id), "the old id survived in the fork");
    model.clear_requests();
    let mut s = m.start(&forked, true, Vec::new()).await;
    let ev = turn(&mut s, "ECHOFIRST in the fork").await;
    assert_eq!(
        assistant_text(&ev),
        "First message was: WRITEFILE a.txt hello"
    );
    let body = last_request(&model);
    assert!(!body.contains("the second turn"), "the fork holds one turn");
    s.shutdown().await.unwrap();
    // The original is untouched and a second fork to the same id is refused.
    assert_eq!(
        m.provider.read_transcript(&id, &m.ws).await.unwrap(),
        entries
    );
    assert!(matches!(
        m.provider.fork_state(&id, &m.ws, new_id, None).await,
        Err(ProviderError::TargetIdentityConflict { .. })
    ));
}

// ---- fixture tests (no CLI) ----

const FIXTURE_ID: &str = "01a210e5-013b-7b73-8a81-d6bdea1d66b5";
const FIXTURE_WS: &str = "/home/dev/ws/my_proj.v2";
const FIXTURE_HOME: &str = "/home/dev/m1";

fn fixture() -> (String, String) {
    let name = format!("rollout-2026-11-25T04-09-33-{FIXTURE_ID}.jsonl");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/codex")
        .join(&name);
    let text = std::fs::read_to_string(&path).expect("fixture");
    (format!("sessions/2026/11/25/{name}"), text)
}

fn bundle_of(rel: &str, text: &str, ws: &str, home: &str) -> ProviderBundle {
    ProviderBundle {
        format: 1,
        provider: "codex".into(),
        provider_ref: FIXTURE_ID.into(),
        provider_version: Some("0.169.0".into()),
        source_workspace: ws.into(),
        source_home: home.into(),
        files: vec![BundleFile {
            path: rel.into(),
            mode: 0o600,
            data: Bytes(text.as_bytes().to_vec()),
        }],
    }
}

/// Stages `bundle` for a machine with `home` and workspace `ws`; returns the staged rollout.
async fn stage(bundle: &ProviderBundle, home: &Path, ws: &str) -> String {
    let staging = tempfile::tempdir().unwrap();
    CodexProvider::new(ProviderEnv::new(home))
        .stage_import(bundle, Path::new(ws), staging.path())
        .await
        .expect("stage_import");
    std::fs::read_to_string(staging.path().join(&bundle.files[0].path)).expect("staged rollout")
}

#[tokio::test]
async fn fixture_rewrite_round_trip() {
    isolate();
    let (rel, original) = fixture();
    assert!(original.contains(FIXTURE_WS) && original.contains(FIXTURE_HOME));
    let target = tempfile::tempdir().unwrap();
    let target_home = target.path().join("u");
    let target_ws = "/srv/other/place";

    let there = stage(
        &bundle_of(&rel, &original, FIXTURE_WS, FIXTURE_HOME),
        &target_home,
        target_ws,
    )
    .await;
    for old in [FIXTURE_WS, FIXTURE_HOME, "/home/dev/ws"] {
        assert!(!there.contains(old), "{old} survived");
    }
    assert!(there.contains(&format!("<cwd>{target_ws}</cwd>")));
    assert!(there.contains(&format!("{}/.codex/skills/.system", target_home.display())));
    // Same lines, same order, ordinals kept.
    let ordinals = |t: &str| -> Vec<u64> {
        t.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["ordinal"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(ordinals(&there), ordinals(&original));
    assert_eq!(
        ordinals(&there),
        (0..ordinals(&there).len() as u64).collect::<Vec<_>>()
    );

    // And back: the inverse rewrite gives the original bytes.
    let back = stage(
        &bundle_of(&rel, &there, target_ws, target_home.to_str().unwrap()),
        Path::new(FIXTURE_HOME),
        FIXTURE_WS,
    )
    .await;
    assert!(back == original, "round trip is not the identity");
}

#[tokio::test]
async fn fixture_transcript_list_and_refusals() {
    isolate();
    let (rel, original) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let dest = home.join(".codex").join(&rel);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(&dest, &original).unwrap();
    let p = CodexProvider::new(ProviderEnv::new(home));

    let entries = p
        .read_transcript(FIXTURE_ID, Path::new(FIXTURE_WS))
        .await
        .unwrap();
    let ends: Vec<bool> = entries
        .iter()
        .filter_map(|e| match e.event {
            AgentEvent::TurnEnd { interrupted, .. } => Some(interrupted),
            _ => None,
        })
        .collect();
    assert_eq!(
        ends,
        [false, false, true],
        "two turns, then an interrupted one"
    );
    let users: Vec<&str> = entries
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::User { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        users,
        ["WRITEFILE a.txt hello", "ECHOFIRST x", "SLEEP 20000"]
    );

    let listed = p.list_sessions().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].cwd, FIXTURE_WS);
    assert_eq!(listed[0].title.as_deref(), Some("WRITEFILE a.txt hello"));

    // Export needs the session's own rollout; a compressed one is refused clearly.
    let zst = dest.with_file_name(format!(
        "rollout-2026-01-01T00-00-00-{}.jsonl.zst",
        "01a2ffff-0000-7000-8000-000000000002"
    ));
    std::fs::write(&zst, b"\x28\xb5\x2f\xfd").unwrap();
    let err = p
        .export_state(
            "01a2ffff-0000-7000-8000-000000000002",
            Path::new(FIXTURE_WS),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Unsupported(_)), "{err}");
    let err = p
        .export_state(
            "01a2ffff-0000-7000-8000-000000000003",
            Path::new(FIXTURE_WS),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::StateMissing { .. }), "{err}");
    let bundle = p
        .export_state(FIXTURE_ID, Path::new(FIXTURE_WS))
        .await
        .unwrap();
    assert_eq!(bundle.files.len(), 1, "only the rollout");
    assert_eq!(bundle.files[0].path, rel);
    assert_eq!(bundle.source_home, home.to_str().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_cli_ends_the_session() {
    let Some(clis) = setup() else { return };
    let model = ModelServer::start().expect("model server");
    let m = Machine::new(&clis, &model, Login::LoggedIn, "p");
    let mut s = m.start("baton-id", false, Vec::new()).await;
    let id = session_ref(&turn(&mut s, "hello").await);

    // Killed from outside in the middle of a turn: `Exited`, which the daemon records as an
    // error and a stopped session, never a turn that waits forever.
    s.send_turn("SLEEP 20000").await.unwrap();
    for _ in 0..100 {
        if model.requests_to("/responses").len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = s.pid().expect("a running turn") as i32;
    // SAFETY: plain syscall on the turn's own process group.
    unsafe { libc::killpg(pid, libc::SIGKILL) };
    let ev = collect(&mut s).await;
    match ev.last() {
        Some(AgentEvent::Exited { stderr_tail, .. }) => {
            assert!(stderr_tail.contains("signal 9"), "{stderr_tail}")
        }
        other => panic!("want Exited, got {other:?} in {ev:?}"),
    }
    assert!(matches!(s.next_event().await, AgentEvent::Exited { .. }));
    s.shutdown().await.unwrap();

    // A thread whose rollout vanished cannot be resumed: Codex prints no event and exits 1;
    // the adapter reports that with Codex's own message.
    let mut s = m.start(&id, true, Vec::new()).await;
    for p in walk(&m.codex_home().join("sessions")) {
        std::fs::remove_file(p).unwrap();
    }
    let ev = turn(&mut s, "anyone there").await;
    match ev.last() {
        Some(AgentEvent::Exited { code, stderr_tail }) => {
            assert_eq!(*code, Some(1));
            assert!(stderr_tail.contains("no rollout found"), "{stderr_tail}");
            assert!(!stderr_tail.contains("Stack backtrace"), "{stderr_tail}");
        }
        other => panic!("want Exited, got {other:?} in {ev:?}"),
    }
    s.shutdown().await.unwrap();
}
