//! The Claude Code adapter: against the real `claude` 2.1.331 (installed by `baton_testkit::clis`)
//! talking to the loopback model server, each simulated machine with its own HOME and
//! workspace; plus fixture tests of the import rewrite that need no CLI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_proto::Bytes;
use baton_proto::ws::{BundleFile, ProviderBundle};
use baton_proto::{AuthState, HandoffSupport, VersionCheck};
use baton_providers::claude::ClaudeProvider;
use baton_providers::enc::enc;
use baton_providers::rewrite::PathMap;
use baton_providers::{AgentEvent, AgentSession, Provider, ProviderEnv, ProviderError, StartSpec};
use baton_testkit::clis::{self, Clis};
use baton_testkit::model::ModelServer;
use baton_testkit::rig::{self, Login};
use proptest::prelude::*;
use tempfile::TempDir;

/// Longest wait for one turn of the real CLI (the machine is shared and slow at times).
const TURN_TIMEOUT: Duration = Duration::from_secs(90);

/// A machine: its own HOME and workspace in one temp dir, and the provider for it.
struct Machine {
    dir: TempDir,
    home: PathBuf,
    ws: PathBuf,
    provider: ClaudeProvider,
}

impl Machine {
    /// A machine whose workspace is `<tmp>/<ws_name>` (created), talking to `model`.
    fn new(clis: &Clis, model: &ModelServer, ws_name: &str, login: Login) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let ws = dir.path().join(ws_name);
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&ws).unwrap();
        // Physical paths: Claude records getcwd().
        let (home, ws) = (home.canonicalize().unwrap(), ws.canonicalize().unwrap());
        let mut extra_env = isolation(&home);
        extra_env.extend(rig::machine_env(clis, &model.base_url(), &home, login));
        let env = ProviderEnv {
            home: home.clone(),
            extra_env,
            programs: Vec::new(),
        };
        Self {
            dir,
            home,
            ws,
            provider: ClaudeProvider::new(env),
        }
    }

    fn spec(&self, id: &str, resume: bool, env: Vec<(String, String)>) -> StartSpec {
        StartSpec {
            provider_ref: id.into(),
            workspace: self.ws.clone(),
            resume,
            env,
        }
    }

    async fn start(&self, id: &str, resume: bool) -> Box<dyn AgentSession> {
        self.provider
            .start(&self.spec(id, resume, Vec::new()))
            .await
            .unwrap()
    }

    fn cfg(&self) -> PathBuf {
        self.home.join(".claude")
    }

    fn transcript(&self, id: &str) -> PathBuf {
        self.cfg()
            .join("projects")
            .join(enc(self.ws.to_str().unwrap()))
            .join(format!("{id}.jsonl"))
    }

    /// Stages `bundle` into a fresh staging dir of this machine and activates it.
    async fn import(&self, bundle: &ProviderBundle) -> Result<(), ProviderError> {
        let staging = self.dir.path().join(format!("staging-{}", rand_suffix()));
        self.provider
            .stage_import(bundle, &self.ws, &staging)
            .await?;
        self.provider.activate_import(&staging).await
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Overrides for isolation variables the test runner itself has set (the CLI must not see the
/// real user's config or keys): paths go under `home`, the rest become empty.
fn isolation(home: &Path) -> Vec<(String, String)> {
    rig::ISOLATE
        .iter()
        .filter(|name| std::env::var_os(name).is_some())
        .map(|name| {
            let value = match *name {
                "CLAUDE_CONFIG_DIR" => home.join(".claude"),
                "XDG_CONFIG_HOME" => home.join(".config"),
                "XDG_DATA_HOME" => home.join(".local/share"),
                "XDG_CACHE_HOME" => home.join(".cache"),
                "XDG_STATE_HOME" => home.join(".local/state"),
                _ => PathBuf::new(),
            };
            (name.to_string(), value.display().to_string())
        })
        .collect()
}

/// The CLIs and a model server, or `None` (reason printed) when the CLIs cannot be installed.
fn rig() -> Option<(Clis, ModelServer)> {
    let clis = clis::require()?;
    Some((clis, ModelServer::start().unwrap()))
}

/// Events up to and including the turn's end (or the process's exit).
async fn turn(session: &mut Box<dyn AgentSession>) -> Vec<AgentEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(TURN_TIMEOUT, async {
        loop {
            let ev = session.next_event().await;
            let done = matches!(ev, AgentEvent::TurnEnd { .. } | AgentEvent::Exited { .. });
            events.push(ev);
            if done {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("turn did not end in time; so far: {events:?}"));
    events
}

async fn send_and_wait(session: &mut Box<dyn AgentSession>, text: &str) -> Vec<AgentEvent> {
    session.send_turn(text).await.unwrap();
    turn(session).await
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

fn ended_cleanly(events: &[AgentEvent]) -> bool {
    matches!(
        events.last(),
        Some(AgentEvent::TurnEnd {
            interrupted: false,
            ..
        })
    ) && !events.iter().any(|e| matches!(e, AgentEvent::Error { .. }))
}

const ID_A: &str = "0b6f3a52-8e61-4872-8ab1-d52283126fca";
const ID_FORK: &str = "5d2e8f10-2b1c-4f6a-9e3d-7a8b9c0d1e2f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_session_writes_file_and_streams_events() {
    let Some((clis, model)) = rig() else { return };
    let m = Machine::new(&clis, &model, "ws", Login::LoggedIn);
    let mut s = m.start(ID_A, false).await;
    let events = send_and_wait(&mut s, "WRITEFILE a.txt hello").await;
    assert!(ended_cleanly(&events), "{events:?}");
    let call = events
        .iter()
        .find_map(|e| match e {
            AgentEvent::ToolCall { name, input } => Some((name.clone(), input.clone())),
            _ => None,
        })
        .expect("a tool call");
    assert_eq!(call.0, "Write");
    assert_eq!(call.1["file_path"], m.ws.join("a.txt").to_str().unwrap());
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AgentEvent::ToolResult { .. }))
    );
    assert_eq!(assistant_text(&events), "Wrote it.");
    match events.last() {
        Some(AgentEvent::TurnEnd { usage: Some(u), .. }) => assert!(u.output_tokens > 0),
        other => panic!("no usage: {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(m.ws.join("a.txt")).unwrap(),
        "hello"
    );
    assert!(s.pid().is_some());
    assert!(m.transcript(ID_A).is_file());
    // A running session cannot be exported.
    assert!(matches!(
        m.provider.export_state(ID_A, &m.ws).await,
        Err(ProviderError::Process(msg)) if msg.contains("still running")
    ));
    s.shutdown().await.unwrap();
    // The id is now taken: a second new session with it fails at start, with Claude's reason.
    let err = match m.provider.start(&m.spec(ID_A, false, Vec::new())).await {
        Ok(_) => panic!("reusing a session id must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("already in use"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_to_other_home_and_path_resumes_with_context() {
    let Some((clis, model)) = rig() else { return };
    let a = Machine::new(&clis, &model, "ws-a/proj", Login::LoggedIn);
    let mut s = a.start(ID_A, false).await;
    let first = send_and_wait(&mut s, "WRITEFILE a.txt hello").await;
    assert!(ended_cleanly(&first), "{first:?}");
    s.shutdown().await.unwrap();

    let bundle = a.provider.export_state(ID_A, &a.ws).await.unwrap();
    assert_eq!(bundle.provider, "claude");
    assert_eq!(bundle.provider_version.as_deref(), Some("2.1.331"));
    assert_eq!(bundle.source_workspace, a.ws.to_str().unwrap());
    for f in &bundle.files {
        assert!(
            f.path.starts_with("projects/") || f.path == "baton-source.json",
            "unexpected bundle file {}",
            f.path
        );
    }
    assert!(
        bundle
            .files
            .iter()
            .any(|f| f.path == format!("projects/{}/{ID_A}.jsonl", enc(&bundle.source_workspace)))
    );

    // B is logged out: the connected-service credential in the spec is what makes it work.
    let b = Machine::new(&clis, &model, "elsewhere/proj-b", Login::LoggedOut);
    assert!(!b.provider.has_state(ID_A, &b.ws).await.unwrap());
    b.import(&bundle).await.unwrap();
    assert!(b.provider.has_state(ID_A, &b.ws).await.unwrap());
    let staged = std::fs::read_to_string(b.transcript(ID_A)).unwrap();
    for old in [a.ws.to_str().unwrap(), a.home.to_str().unwrap()] {
        assert!(!staged.contains(old), "{old} survived the import");
    }
    // Importing the same bundle again is a no-op.
    b.import(&bundle).await.unwrap();
    // Handing back the unchanged state is identical to what A holds: accepted.
    let unchanged = b.provider.export_state(ID_A, &b.ws).await.unwrap();
    a.import(&unchanged).await.unwrap();

    let spec = b.spec(ID_A, true, rig::service_env("claude"));
    let mut s = b.provider.start(&spec).await.unwrap();
    let before = model.requests().len();
    let events = send_and_wait(&mut s, "ECHOFIRST what was it").await;
    assert!(ended_cleanly(&events), "{events:?}");
    assert_eq!(
        assistant_text(&events),
        "First message was: WRITEFILE a.txt hello"
    );
    s.shutdown().await.unwrap();
    let resumed: Vec<_> = model.requests()[before..]
        .iter()
        .filter(|r| r.is_generation() && r.body_text().contains("ECHOFIRST"))
        .cloned()
        .collect();
    assert!(!resumed.is_empty());
    for r in &resumed {
        let body = r.body_text();
        assert!(body.contains("WRITEFILE a.txt hello"));
        assert!(body.contains(b.ws.to_str().unwrap()));
        assert!(
            !body.contains(a.ws.to_str().unwrap()),
            "old workspace reached the model"
        );
        assert!(
            !body.contains(a.home.to_str().unwrap()),
            "old home reached the model"
        );
    }

    // Hand back the continued conversation: A's older copy differs, so it is refused...
    let back = b.provider.export_state(ID_A, &b.ws).await.unwrap();
    let err = a.import(&back).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::TargetIdentityConflict { .. }),
        "{err}"
    );
    // ...until A's copy is removed.
    a.provider.remove_state(ID_A, &a.ws).await.unwrap();
    assert!(!a.provider.has_state(ID_A, &a.ws).await.unwrap());
    a.import(&back).await.unwrap();
    let entries = a.provider.read_transcript(ID_A, &a.ws).await.unwrap();
    let prompts: Vec<_> = entries
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::User { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(prompts, ["WRITEFILE a.txt hello", "ECHOFIRST what was it"]);
    let text = std::fs::read_to_string(a.transcript(ID_A)).unwrap();
    assert!(!text.contains(b.ws.to_str().unwrap()) && !text.contains(b.home.to_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_install_and_login() {
    let Some((clis, model)) = rig() else { return };
    let m = Machine::new(&clis, &model, "ws", Login::LoggedIn);
    let info = m.provider.detect().await;
    assert!(info.installed);
    assert_eq!(info.version.as_deref(), Some("2.1.331"));
    assert_eq!(info.version_check, VersionCheck::Tested);
    assert_eq!(info.auth, AuthState::MachineLocal);
    assert_eq!(info.handoff, HandoffSupport::Supported);

    let out = Machine::new(&clis, &model, "ws", Login::LoggedOut);
    let info = out.provider.detect().await;
    assert!(info.installed);
    assert_eq!(info.auth, AuthState::Missing);

    let mut env = ProviderEnv::new(&m.home);
    env.extra_env.push((
        "PATH".into(),
        m.dir.path().join("no-bin").display().to_string(),
    ));
    let info = ClaudeProvider::new(env).detect().await;
    assert!(!info.installed);
    assert_eq!(info.version, None);
    let missing = ClaudeProvider::new(ProviderEnv {
        home: m.home.clone(),
        extra_env: vec![("PATH".into(), "/nonexistent".into())],
        programs: Vec::new(),
    });
    let err = match missing.start(&m.spec(ID_A, false, Vec::new())).await {
        Ok(_) => panic!("start without claude must fail"),
        Err(e) => e,
    };
    assert!(matches!(err, ProviderError::NotInstalled { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_requests_round_trip() {
    let Some((clis, model)) = rig() else { return };
    let m = Machine::new(&clis, &model, "ws", Login::LoggedIn);
    let mut s = m.start(ID_A, false).await;
    // `echo hi` alone is read-only and auto-approved; a shell writing a file asks.
    for (file, allow) in [("yes.txt", true), ("no.txt", false)] {
        s.send_turn(&format!("RUNCMD sh -c 'echo hi > {file}'"))
            .await
            .unwrap();
        let ev = tokio::time::timeout(TURN_TIMEOUT, async {
            loop {
                match s.next_event().await {
                    ev @ AgentEvent::PermissionRequest { .. } => break ev,
                    ev @ (AgentEvent::TurnEnd { .. } | AgentEvent::Exited { .. }) => {
                        panic!("turn ended without asking: {ev:?}")
                    }
                    _ => {}
                }
            }
        })
        .await
        .expect("a permission request");
        let AgentEvent::PermissionRequest {
            request_id,
            tool,
            input,
        } = ev
        else {
            unreachable!()
        };
        assert_eq!(tool, "Bash");
        assert!(input["command"].as_str().unwrap().contains(file));
        s.answer_permission(&request_id, allow).await.unwrap();
        assert!(
            s.answer_permission(&request_id, allow).await.is_err(),
            "answered twice"
        );
        let rest = turn(&mut s).await;
        assert!(ended_cleanly(&rest), "{rest:?}");
        assert!(
            rest.iter()
                .any(|e| matches!(e, AgentEvent::ToolResult { .. }))
        );
        assert_eq!(m.ws.join(file).exists(), allow, "{file}");
    }
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_ends_the_turn() {
    let Some((clis, model)) = rig() else { return };
    let m = Machine::new(&clis, &model, "ws", Login::LoggedIn);
    let mut s = m.start(ID_A, false).await;
    s.send_turn("SLEEP 10000").await.unwrap();
    // Let the request reach the model server before interrupting.
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !model
            .requests()
            .iter()
            .any(|r| r.body_text().contains("SLEEP 10000"))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the turn never reached the model");
    let started = std::time::Instant::now();
    s.interrupt().await.unwrap();
    let events = turn(&mut s).await;
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
    assert!(
        !events.iter().any(|e| matches!(e, AgentEvent::Error { .. })),
        "{events:?}"
    );
    // Well before the model would have answered.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // The process lives on and takes the next turn. Claude sends the interrupted prompt, its
    // "[Request interrupted by user]" mark and the new prompt as one user message, so the
    // model server sees (and sleeps for) SLEEP again.
    let next = send_and_wait(&mut s, "hello again").await;
    assert!(ended_cleanly(&next), "{next:?}");
    let reply = assistant_text(&next);
    assert!(
        reply.starts_with("Mock reply: ") && reply.ends_with("hello again"),
        "{reply}"
    );
    s.shutdown().await.unwrap();
    let entries = m.provider.read_transcript(ID_A, &m.ws).await.unwrap();
    assert!(entries.iter().any(|e| matches!(
        e.event,
        AgentEvent::TurnEnd {
            turn: Some(1),
            interrupted: true,
            ..
        }
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_read_and_fork() {
    let Some((clis, model)) = rig() else { return };
    let m = Machine::new(&clis, &model, "ws", Login::LoggedIn);
    let mut s = m.start(ID_A, false).await;
    assert!(ended_cleanly(
        &send_and_wait(&mut s, "WRITEFILE a.txt hello").await
    ));
    assert!(ended_cleanly(&send_and_wait(&mut s, "second prompt").await));
    s.shutdown().await.unwrap();

    let listed = m.provider.list_sessions().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].provider_ref, ID_A);
    assert_eq!(listed[0].title.as_deref(), Some("WRITEFILE a.txt hello"));
    assert_eq!(listed[0].cwd, m.ws.to_str().unwrap());
    assert!(listed[0].updated_at > 1_700_000_000_000);

    let entries: Vec<AgentEvent> = m
        .provider
        .read_transcript(ID_A, &m.ws)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| match e {
            AgentEvent::User { .. } => "user",
            AgentEvent::Assistant { .. } => "assistant",
            AgentEvent::ToolCall { .. } => "call",
            AgentEvent::ToolResult { .. } => "result",
            AgentEvent::TurnEnd { .. } => "end",
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
        entries[7],
        AgentEvent::TurnEnd {
            turn: Some(2),
            interrupted: false,
            usage: None
        }
    );

    let forked = m
        .provider
        .fork_state(ID_A, &m.ws, ID_FORK, Some(1))
        .await
        .unwrap();
    assert_eq!(forked, ID_FORK);
    let fork_entries = m.provider.read_transcript(ID_FORK, &m.ws).await.unwrap();
    assert_eq!(fork_entries.len(), 5);
    let text = std::fs::read_to_string(m.transcript(ID_FORK)).unwrap();
    assert!(!text.contains(ID_A), "old id survived the fork");
    assert!(matches!(
        m.provider.fork_state(ID_A, &m.ws, ID_FORK, None).await,
        Err(ProviderError::TargetIdentityConflict { .. })
    ));
    assert_eq!(m.provider.list_sessions().await.unwrap().len(), 2);

    // The fork resumes as a conversation of its own that holds only the first turn.
    let mut s = m.start(ID_FORK, true).await;
    let before = model.requests().len();
    let events = send_and_wait(&mut s, "ECHOFIRST").await;
    assert_eq!(
        assistant_text(&events),
        "First message was: WRITEFILE a.txt hello"
    );
    s.shutdown().await.unwrap();
    let reqs = model.requests();
    let req = reqs[before..]
        .iter()
        .rfind(|r| r.body_text().contains("ECHOFIRST"))
        .expect("the resumed request");
    assert!(!req.body_text().contains("second prompt"));
    // The original is untouched.
    assert_eq!(
        m.provider.read_transcript(ID_A, &m.ws).await.unwrap().len(),
        8
    );
}

// ---- Fixture tests (no CLI) ----------------------------------------------------------------

/// Paths the fixtures were recorded with (claude 2.1.331, HOME=/tmp/fx/home/dev).
const FX_HOME: &str = "/tmp/fx/home/dev";
const FX_WS: &str = "/tmp/fx/ws/my_proj.v2";
const FIXTURES: [(&str, &str); 2] = [
    (
        "0b6f3a52-8e61-4872-8ab1-d52283126fca",
        include_str!("fixtures/claude/write-and-bash.jsonl"),
    ),
    (
        "7c1d9e20-1111-4872-8ab1-d52283126fca",
        include_str!("fixtures/claude/interrupted.jsonl"),
    ),
];

/// A provider for a machine whose home is `home` (config dir `<home>/.claude`).
fn provider_at(home: &str) -> ClaudeProvider {
    let mut env = ProviderEnv::new(home);
    env.extra_env
        .push(("CLAUDE_CONFIG_DIR".into(), format!("{home}/.claude")));
    ClaudeProvider::new(env)
}

/// The fixture as if recorded on a machine with `home` and workspace `ws`.
fn fixture_at(text: &str, home: &str, ws: &str) -> String {
    text.replace(FX_HOME, home)
        .replace(FX_WS, ws)
        .replace(&enc(FX_WS), &enc(ws))
}

fn bundle_of(id: &str, text: &str, home: &str, ws: &str) -> ProviderBundle {
    ProviderBundle {
        format: 1,
        provider: "claude".into(),
        provider_ref: id.into(),
        provider_version: Some("2.1.331".into()),
        source_workspace: ws.into(),
        source_home: home.into(),
        files: vec![BundleFile {
            path: format!("projects/{}/{id}.jsonl", enc(ws)),
            mode: 0o644,
            data: Bytes(text.as_bytes().to_vec()),
        }],
    }
}

/// Moves a fixture from machine A to machine B and back through stage/activate/export.
fn round_trip(dir: &Path, b_home: &str, b_ws: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let a_home = dir.join("a/home").display().to_string();
    let a_ws = dir.join("a/ws/my_proj.v2").display().to_string();
    for (id, fixture) in FIXTURES {
        let original = fixture_at(fixture, &a_home, &a_ws);
        let b = provider_at(b_home);
        let staging = dir.join(format!("staging-b-{id}"));
        rt.block_on(b.stage_import(
            &bundle_of(id, &original, &a_home, &a_ws),
            Path::new(b_ws),
            &staging,
        ))
        .unwrap();
        let staged_path = staging.join(format!("projects/{}/{id}.jsonl", enc(b_ws)));
        let staged = std::fs::read_to_string(&staged_path).unwrap();
        let old = PathMap::new([(a_ws.as_str(), ""), (a_home.as_str(), "")])
            .with_tokens([(enc(&a_ws), "x".to_string())]);
        for line in staged.lines() {
            assert!(!old.matches(line), "an old prefix survived: {line}");
        }
        assert!(staged.contains(b_ws));
        assert_eq!(staged.lines().count(), original.lines().count());
        rt.block_on(b.activate_import(&staging)).unwrap();
        assert!(!staging.exists());

        let back = rt.block_on(b.export_state(id, Path::new(b_ws))).unwrap();
        let a = provider_at(&a_home);
        let staging = dir.join(format!("staging-a-{id}"));
        rt.block_on(a.stage_import(&back, Path::new(&a_ws), &staging))
            .unwrap();
        let returned =
            std::fs::read_to_string(staging.join(format!("projects/{}/{id}.jsonl", enc(&a_ws))))
                .unwrap();
        assert!(
            returned == original,
            "rewrite then inverse rewrite is not the identity"
        );
    }
}

#[test]
fn fixture_round_trip_is_identity() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    // Workspace inside the home, and a path with spaces and dots.
    round_trip(
        dir.path(),
        &format!("{root}/b/Users/me"),
        &format!("{root}/b/Users/me/code/my proj.v3"),
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn round_trip_over_random_paths(
        home_seg in "[a-zA-Z0-9_][a-zA-Z0-9_. -]{0,12}",
        ws_segs in proptest::collection::vec("[a-zA-Z0-9_][a-zA-Z0-9_. -]{0,10}", 1..4),
        ws_in_home in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let home = format!("{root}/b/{}", home_seg.trim_end());
        let base = if ws_in_home { home.clone() } else { format!("{root}/b/work") };
        let ws = format!("{base}/{}", ws_segs.iter().map(|s| s.trim_end()).collect::<Vec<_>>().join("/"));
        prop_assume!(!ws.contains("/ ") && !ws.ends_with('.') && ws != home);
        round_trip(dir.path(), &home, &ws);
    }
}

#[test]
fn hostile_bundles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home").display().to_string();
    let b = provider_at(&home);
    let (id, fixture) = FIXTURES[0];
    let ok = bundle_of(id, fixture, FX_HOME, FX_WS);
    let stage = |bundle: &ProviderBundle| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(b.stage_import(bundle, &dir.path().join("ws"), &dir.path().join("staging")))
    };
    for path in [
        "../x".to_string(),
        "/etc/passwd".into(),
        format!("projects/{}/../../../x", enc(FX_WS)),
        format!("projects/{}/./{id}/x", enc(FX_WS)),
        "sessions/123.json".into(),
        ".credentials.json".into(),
        "shell-snapshots/snapshot-bash-1.sh".into(),
        format!("projects/{}/other.jsonl", enc(FX_WS)),
        format!("projects/-other/{id}.jsonl"),
        format!("file-history/{id}"),
        "tasks/5d2e8f10-2b1c-4f6a-9e3d-7a8b9c0d1e2f/1.json".into(),
    ] {
        let mut bad = ok.clone();
        bad.files.push(BundleFile {
            path: path.clone(),
            mode: 0o600,
            data: Bytes(b"{}".to_vec()),
        });
        assert!(
            matches!(stage(&bad), Err(ProviderError::InvalidBundle(_))),
            "{path}"
        );
    }
    let mut bad = ok.clone();
    bad.provider = "codex".into();
    assert!(matches!(stage(&bad), Err(ProviderError::InvalidBundle(_))));
    let mut bad = ok.clone();
    bad.provider_ref = "../x".into();
    assert!(matches!(stage(&bad), Err(ProviderError::InvalidBundle(_))));
    let mut bad = ok.clone();
    bad.files.clear();
    assert!(matches!(stage(&bad), Err(ProviderError::InvalidBundle(_))));
    let other_id = "7c1d9e20-1111-4872-8ab1-d52283126fca";
    let bad = bundle_of(other_id, fixture, FX_HOME, FX_WS);
    assert!(
        matches!(stage(&bad), Err(ProviderError::InvalidBundle(m)) if m.contains("no line of session"))
    );
    // Extra state of the session is accepted where Claude keeps it, and files land 0600.
    let mut good = ok.clone();
    for path in [
        format!("projects/{}/{id}/subagents/agent-a1.jsonl", enc(FX_WS)),
        format!("file-history/{id}/abac51ca8a759262@v1"),
        format!("tasks/{id}/1.json"),
    ] {
        good.files.push(BundleFile {
            path,
            mode: 0o644,
            data: Bytes(format!("{{\"cwd\":\"{FX_WS}\"}}\n").into_bytes()),
        });
    }
    stage(&good).unwrap();
    let staged = dir.path().join("staging");
    let ws = dir.path().join("ws").display().to_string();
    let sub = staged.join(format!(
        "projects/{}/{id}/subagents/agent-a1.jsonl",
        enc(&ws)
    ));
    assert_eq!(
        std::fs::read_to_string(&sub).unwrap(),
        format!("{{\"cwd\":\"{ws}\"}}\n")
    );
    // File-history backups are file contents: kept byte for byte.
    let backup = staged.join(format!("file-history/{id}/abac51ca8a759262@v1"));
    assert!(std::fs::read_to_string(backup).unwrap().contains(FX_WS));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
