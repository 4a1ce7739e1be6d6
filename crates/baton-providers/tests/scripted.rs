//! The scripted provider end to end: every test spawns the agent as a real process (this crate's
//! `baton-scripted-agent` helper binary) through `ScriptedProvider`, with its own temp HOME and
//! workspace directories.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_proto::{AuthState, HandoffSupport};
use baton_providers::enc::enc;
use baton_providers::scripted::ScriptedProvider;
use baton_providers::{AgentEvent, AgentSession, Provider, ProviderEnv, ProviderError, StartSpec};
use tempfile::TempDir;

const AGENT: &str = env!("CARGO_BIN_EXE_baton-scripted-agent");

/// A machine: its own HOME and a workspace directory, both in one temp dir.
struct Machine {
    _dir: TempDir,
    home: PathBuf,
    ws: PathBuf,
    provider: ScriptedProvider,
}

impl Machine {
    /// A machine whose workspace is `<tmp>/<ws_name>`; logged in unless `login` is false.
    fn new(ws_name: &str, login: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let ws = dir.path().join(ws_name);
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&ws).unwrap();
        let env = ProviderEnv {
            home: home.clone(),
            extra_env: vec![],
            programs: Vec::new(),
        };
        let m = Self {
            _dir: dir,
            home,
            ws,
            provider: ScriptedProvider::with_program(env, AGENT),
        };
        if login {
            m.login();
        }
        m
    }

    fn login(&self) {
        let status = std::process::Command::new(AGENT)
            .args(["scripted-agent", "auth", "login"])
            .env("HOME", &self.home)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn spec(&self, id: &str, resume: bool) -> StartSpec {
        StartSpec {
            provider_ref: id.into(),
            workspace: self.ws.clone(),
            resume,
            env: Vec::new(),
        }
    }

    async fn start(&self, id: &str, resume: bool) -> Box<dyn AgentSession> {
        self.provider.start(&self.spec(id, resume)).await.unwrap()
    }

    async fn start_err(&self, id: &str, resume: bool) -> ProviderError {
        match self.provider.start(&self.spec(id, resume)).await {
            Ok(_) => panic!("start of {id} (resume {resume}) should fail"),
            Err(e) => e,
        }
    }

    fn state_file(&self, id: &str) -> PathBuf {
        session_file(&self.home, &self.ws, id)
    }

    fn ws_str(&self) -> &str {
        self.ws.to_str().unwrap()
    }
}

fn session_file(home: &Path, ws: &Path, id: &str) -> PathBuf {
    home.join(".scripted-agent/projects")
        .join(enc(ws.to_str().unwrap()))
        .join(format!("{id}.jsonl"))
}

/// Every event up to and including the turn's end (or the process's exit).
async fn turn(s: &mut Box<dyn AgentSession>, text: &str) -> Vec<AgentEvent> {
    s.send_turn(text).await.unwrap();
    collect_turn(s).await
}

async fn collect_turn(s: &mut Box<dyn AgentSession>) -> Vec<AgentEvent> {
    let mut events = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), s.next_event())
            .await
            .expect("agent answers in time");
        let end = matches!(ev, AgentEvent::TurnEnd { .. } | AgentEvent::Exited { .. });
        events.push(ev);
        if end {
            return events;
        }
    }
}

fn reply(n: u64, first: &str, said: &str, cwd: &str) -> AgentEvent {
    AgentEvent::Assistant {
        text: format!(
            "Turn {n}. Your first message was: \"{first}\". You said: \"{said}\". Working in {cwd}."
        ),
    }
}

fn end(n: u64) -> AgentEvent {
    AgentEvent::TurnEnd {
        turn: Some(n),
        interrupted: false,
        usage: None,
    }
}

/// Runs two turns in a new session and stops it.
async fn two_turns(m: &Machine, id: &str) {
    let mut s = m.start(id, false).await;
    assert!(s.pid().is_some());
    let ws = m.ws_str();
    assert_eq!(
        turn(&mut s, "hello first").await,
        vec![reply(1, "hello first", "hello first", ws), end(1)]
    );
    assert_eq!(
        turn(&mut s, "second").await,
        vec![reply(2, "hello first", "second", ws), end(2)]
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn new_session_then_resume_in_same_cwd() {
    let m = Machine::new("ws", true);
    two_turns(&m, "s1").await;

    // The state file: a meta line and one line per turn, each with the absolute cwd.
    let text = std::fs::read_to_string(m.state_file("s1")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["type"], "meta");
    assert_eq!(lines[0]["session_id"], "s1");
    assert_eq!(lines[2]["type"], "turn");
    assert_eq!(lines[2]["n"], 2);
    assert_eq!(lines[2]["user"], "second");
    assert!(lines.iter().all(|l| l["cwd"] == m.ws_str()));

    let mut s = m.start("s1", true).await;
    assert_eq!(
        turn(&mut s, "third").await,
        vec![reply(3, "hello first", "third", m.ws_str()), end(3)]
    );
    // A running session is not exported: the agent could still append to it.
    let err = m.provider.export_state("s1", &m.ws).await.unwrap_err();
    assert!(err.to_string().contains("still running"), "{err}");
    s.shutdown().await.unwrap();
    assert!(m.provider.export_state("s1", &m.ws).await.is_ok());

    // A new session may not take an id that is in use.
    let err = m.start_err("s1", false).await;
    assert!(
        err.to_string().contains("Session ID s1 is already in use."),
        "{err}"
    );
}

#[tokio::test]
async fn resume_in_another_cwd_without_import_fails() {
    let m = Machine::new("ws", true);
    two_turns(&m, "s1").await;
    let other = m.home.parent().unwrap().join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    let spec = StartSpec {
        provider_ref: "s1".into(),
        workspace: other,
        resume: true,
        env: Vec::new(),
    };
    let err = match m.provider.start(&spec).await {
        Ok(_) => panic!("resume in another cwd should fail"),
        Err(e) => e,
    };
    assert!(matches!(err, ProviderError::Process(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("No conversation found with session ID: s1"),
        "{err}"
    );
}

#[tokio::test]
async fn handoff_moves_state_to_a_new_workspace_and_home() {
    let a = Machine::new("ws-a", true);
    let b = Machine::new("proj-b", true);
    two_turns(&a, "s1").await;
    assert!(a.provider.has_state("s1", &a.ws).await.unwrap());
    assert!(!b.provider.has_state("s1", &b.ws).await.unwrap());

    let bundle = a.provider.export_state("s1", &a.ws).await.unwrap();
    assert_eq!(bundle.provider, "scripted");
    assert_eq!(bundle.format, 1);
    assert_eq!(bundle.provider_version.as_deref(), Some("1.0.0"));
    assert_eq!(bundle.source_workspace, a.ws_str());
    assert_eq!(bundle.source_home, a.home.to_str().unwrap());
    assert_eq!(bundle.files.len(), 1);
    assert_eq!(
        bundle.files[0].path,
        format!("projects/{}/s1.jsonl", enc(a.ws_str()))
    );
    assert!(bundle.files.iter().all(|f| !f.path.contains("auth")));

    // Before the import, B cannot resume.
    let err = b.start_err("s1", true).await;
    assert!(err.to_string().contains("No conversation found"), "{err}");

    let staging = b.home.parent().unwrap().join("staging");
    // A trailing `/` names the same workspace.
    b.provider
        .stage_import(&bundle, &b.ws.join(""), &staging)
        .await
        .unwrap();
    // Staged only: still not resumable until activation.
    assert!(!b.provider.has_state("s1", &b.ws).await.unwrap());
    b.provider.activate_import(&staging).await.unwrap();
    assert!(!staging.exists());
    assert!(b.provider.has_state("s1", &b.ws).await.unwrap());

    let moved = std::fs::read_to_string(b.state_file("s1")).unwrap();
    assert!(!moved.contains(a.ws_str()), "{moved}");
    assert!(moved.contains(b.ws_str()));

    let mut s = b.start("s1", true).await;
    assert_eq!(
        turn(&mut s, "on b").await,
        vec![reply(3, "hello first", "on b", b.ws_str()), end(3)]
    );
    s.shutdown().await.unwrap();

    // The source removes its copy after the handoff is done.
    a.provider.remove_state("s1", &a.ws).await.unwrap();
    assert!(!a.provider.has_state("s1", &a.ws).await.unwrap());
    a.provider.remove_state("s1", &a.ws).await.unwrap();
    let err = a.provider.export_state("s1", &a.ws).await.unwrap_err();
    assert!(matches!(err, ProviderError::StateMissing { .. }), "{err:?}");
}

#[tokio::test]
async fn identical_reimport_is_idempotent_and_different_state_conflicts() {
    let a = Machine::new("ws-a", true);
    let b = Machine::new("ws-b", true);
    two_turns(&a, "s1").await;
    let bundle = a.provider.export_state("s1", &a.ws).await.unwrap();
    let staging = b.home.parent().unwrap().join("staging");

    for _ in 0..2 {
        b.provider
            .stage_import(&bundle, &b.ws, &staging)
            .await
            .unwrap();
        b.provider.activate_import(&staging).await.unwrap();
    }
    // Activating again with nothing staged is a no-op.
    b.provider.activate_import(&staging).await.unwrap();
    let before = std::fs::read(b.state_file("s1")).unwrap();

    // B moves on (one more turn): the old bundle now differs from B's state.
    let mut s = b.start("s1", true).await;
    turn(&mut s, "more").await;
    s.shutdown().await.unwrap();
    let after = std::fs::read(b.state_file("s1")).unwrap();
    assert_ne!(before, after);

    let err = b
        .provider
        .stage_import(&bundle, &b.ws, &staging)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::TargetIdentityConflict { ref provider_ref, .. } if provider_ref == "s1"),
        "{err:?}"
    );
    assert!(!staging.exists());
    assert_eq!(std::fs::read(b.state_file("s1")).unwrap(), after);
}

#[tokio::test]
async fn hostile_bundles_are_refused_and_nothing_is_written() {
    let a = Machine::new("ws-a", true);
    let b = Machine::new("ws-b", true);
    two_turns(&a, "s1").await;
    let good = a.provider.export_state("s1", &a.ws).await.unwrap();
    let staging = b.home.parent().unwrap().join("staging");
    let state_before = list(&b.home);

    let mut cases = Vec::new();
    for path in ["../x", "/abs", "projects/../../x.jsonl", "auth"] {
        let mut bad = good.clone();
        let mut f = bad.files[0].clone();
        f.path = path.into();
        bad.files.push(f);
        cases.push((path.to_string(), bad));
    }
    let mut bad = good.clone();
    bad.provider = "claude".into();
    cases.push(("wrong provider".into(), bad));
    let mut bad = good.clone();
    bad.files[0].data.0.extend_from_slice(b"not json\n");
    cases.push(("not json".into(), bad));

    for (what, bundle) in cases {
        let err = b
            .provider
            .stage_import(&bundle, &b.ws, &staging)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::InvalidBundle(_)),
            "{what}: {err:?}"
        );
        assert!(!staging.exists(), "{what}: staging written");
        assert_eq!(list(&b.home), state_before, "{what}: state written");
    }
    assert!(!b.home.parent().unwrap().join("x").exists());
    assert!(!Path::new("/abs").exists());
}

/// Every path under `dir`, sorted.
fn list(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn interrupt_during_sleep_ends_the_turn_unrecorded() {
    let m = Machine::new("ws", true);
    let mut s = m.start("s1", false).await;
    let started = Instant::now();
    s.send_turn("wait /sleep 30000").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.interrupt().await.unwrap();
    assert_eq!(
        collect_turn(&mut s).await,
        vec![AgentEvent::TurnEnd {
            turn: Some(1),
            interrupted: true,
            usage: None,
        }]
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The interrupted turn was not recorded: the next one is turn 1 and is the first message.
    assert_eq!(
        turn(&mut s, "after").await,
        vec![reply(1, "after", "after", m.ws_str()), end(1)]
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn tool_and_error_turns() {
    let m = Machine::new("ws", true);
    let mut s = m.start("s1", false).await;
    let text = "use /tool please";
    assert_eq!(
        turn(&mut s, text).await,
        vec![
            AgentEvent::ToolCall {
                name: "echo".into(),
                input: serde_json::json!({ "text": text }),
            },
            AgentEvent::ToolResult {
                output: text.into()
            },
            reply(1, text, text, m.ws_str()),
            end(1),
        ]
    );
    assert_eq!(
        turn(&mut s, "/error").await,
        vec![
            AgentEvent::Error {
                message: "scripted error requested".into()
            },
            end(2),
        ]
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn crash_reports_exit_code_and_stderr() {
    let m = Machine::new("ws", true);
    let mut s = m.start("s1", false).await;
    let events = turn(&mut s, "/crash").await;
    let Some(AgentEvent::Exited { code, stderr_tail }) = events.last().cloned() else {
        panic!("expected Exited, got {events:?}");
    };
    assert_eq!(code, Some(3));
    assert!(stderr_tail.contains("crash requested"), "{stderr_tail}");
    // Exited again on every later call.
    assert_eq!(
        s.next_event().await,
        AgentEvent::Exited { code, stderr_tail }
    );
    assert!(s.pid().is_none());
    assert!(s.send_turn("anyone?").await.is_err());
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_kills_a_busy_agent() {
    let m = Machine::new("ws", true);
    let mut s = m.start("s1", false).await;
    let pid = s.pid().unwrap() as i32;
    s.send_turn("/sleep 60000").await.unwrap();
    let started = Instant::now();
    s.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    // SAFETY: signal 0 only checks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "agent {pid} still running");
}

#[tokio::test]
async fn start_refusals() {
    let m = Machine::new("ws", false);
    let err = m.start_err("s1", false).await;
    assert!(err.to_string().contains("not logged in"), "{err}");
    m.login();

    let spec = StartSpec {
        provider_ref: "s1".into(),
        workspace: m.ws.join("missing"),
        resume: false,
        env: Vec::new(),
    };
    assert!(m.provider.start(&spec).await.is_err());
    let err = m.start_err("../evil", false).await;
    assert!(matches!(err, ProviderError::InvalidBundle(_)), "{err:?}");
    let err = m.start_err("nope", true).await;
    assert!(
        err.to_string()
            .contains("No conversation found with session ID: nope"),
        "{err}"
    );
}

#[tokio::test]
async fn detect_reports_install_and_login() {
    let m = Machine::new("ws", false);
    let info = m.provider.detect().await;
    assert_eq!(info.name, "scripted");
    assert!(info.installed);
    assert_eq!(info.version.as_deref(), Some("1.0.0"));
    assert_eq!(info.auth, AuthState::Missing);
    assert_eq!(info.handoff, HandoffSupport::Supported);

    m.login();
    let auth = m.home.join(".scripted-agent/auth");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(m.provider.detect().await.auth, AuthState::MachineLocal);

    let env = ProviderEnv {
        home: m.home.clone(),
        extra_env: vec![],
        programs: Vec::new(),
    };
    let missing = ScriptedProvider::with_program(env, m.home.join("no-such-agent"));
    let info = missing.detect().await;
    assert!(!info.installed);
    assert_eq!(info.version, None);
    assert_eq!(info.auth, AuthState::Missing);
    let err = match missing.start(&m.spec("s1", false)).await {
        Ok(_) => panic!("start without a program should fail"),
        Err(e) => e,
    };
    assert!(matches!(err, ProviderError::NotInstalled { .. }), "{err:?}");
}
