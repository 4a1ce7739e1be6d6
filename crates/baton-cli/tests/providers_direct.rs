//! Direct sessions with the real provider CLIs (Claude Code, Codex, OpenCode at pinned
//! versions) against Baton's model server on loopback. A conversation made with the CLI itself,
//! outside Baton, on laptop is listed, linked as a Direct session and read from laptop's files;
//! `handoff --direct keep` moves it to desktop (another HOME, another workspace path), where it
//! stays direct, the CLI resumes it with its context and no laptop path, and laptop's copy is
//! gone; `handoff --direct sync` brings it back as a synced session whose transcript holds the
//! conversation and which Baton then drives. Skips (printing why) only when the CLIs cannot be
//! installed, unless BATON_REQUIRE_PROVIDERS=1.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_cli::harness::Cluster;
use baton_testkit::clis::Clis;
use baton_testkit::model::ModelServer;
use baton_testkit::rig::{Login, machine_env};
use common::{assert_dense, code, exe, parse};
use serde_json::Value;

const LAPTOP: usize = 0;
const DESKTOP: usize = 1;
/// How long one headless CLI turn may take before the test gives up on it.
const CLI_TIMEOUT: Duration = Duration::from_secs(180);

/// A server, a model server and two logged-in machines, laptop and desktop.
struct Rig {
    c: Cluster,
    model: ModelServer,
    clis: Clis,
    /// Per machine, the provider environment `machine_env` gave it.
    env: Vec<Vec<(String, String)>>,
    tmp: tempfile::TempDir,
}

impl Rig {
    fn new() -> Option<Self> {
        let clis = baton_testkit::clis::require()?;
        let model = ModelServer::start().expect("model server");
        let tmp = tempfile::Builder::new()
            .prefix("baton-direct-")
            .tempdir()
            .expect("tmp");
        let mut c = Cluster::start(&exe(), tmp.path()).expect("server");
        let mut envs = Vec::new();
        for name in ["laptop", "desktop"] {
            let i = c.add_machine(name, true).expect("enrol");
            let env = machine_env(
                &clis,
                &model.base_url(),
                &c.machines[i].home,
                Login::LoggedIn,
            );
            // The daemon inherits this process's environment: variables that would point the
            // CLIs elsewhere are blanked.
            let mut daemon_env = env.clone();
            for k in baton_testkit::rig::ISOLATE {
                if std::env::var_os(k).is_some() && !env.iter().any(|(n, _)| n == k) {
                    daemon_env.push((k.to_string(), String::new()));
                }
            }
            c.machines[i].daemon_env = daemon_env;
            c.start_daemon(i).expect("daemon");
            envs.push(env);
        }
        c.wait_online(&["laptop", "desktop"], true, Duration::from_secs(60))
            .expect("online");
        Some(Self {
            c,
            model,
            clis,
            env: envs,
            tmp,
        })
    }

    fn dir(&self, rel: &str) -> String {
        let p = self.tmp.path().join(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::canonicalize(&p)
            .expect("canonical")
            .to_string_lossy()
            .into_owned()
    }

    fn home(&self, idx: usize) -> String {
        self.c.machines[idx].home.to_string_lossy().into_owned()
    }

    fn json(&self, idx: usize, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.c.baton(idx, &all).expect("baton runs");
        (code(&out), parse(&out))
    }

    fn ok(&self, idx: usize, args: &[&str]) -> Value {
        let (rc, v) = self.json(idx, args);
        assert_eq!(rc, 0, "baton {args:?}: {v}");
        v
    }

    fn log(&self, idx: usize, session: &str) -> Vec<Value> {
        self.ok(idx, &["log", session])
            .as_array()
            .cloned()
            .expect("log is an array")
    }

    fn session(&self, idx: usize, session: &str) -> Value {
        let list = self.ok(idx, &["sessions"]);
        list.as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == session))
            .cloned()
            .expect("session listed")
    }

    fn provider_sessions(&self, idx: usize, machine: &str, provider: &str) -> Vec<Value> {
        self.ok(
            idx,
            &[
                "provider-sessions",
                "--machine",
                machine,
                "--provider",
                provider,
            ],
        )
        .as_array()
        .cloned()
        .expect("listing is an array")
    }

    /// Runs `provider`'s CLI headless for one turn on machine `idx`, outside Baton: exactly the
    /// machine's provider environment plus its HOME, cwd `ws`. Resumes `resume` when given.
    /// Returns stdout (the CLI's JSON event lines).
    fn cli_turn(
        &self,
        idx: usize,
        provider: &str,
        ws: &str,
        prompt: &str,
        resume: Option<&str>,
    ) -> String {
        let (args, stdin) = headless_args(provider, ws, prompt, resume);
        let mut cmd = Command::new(self.clis.path(provider));
        cmd.args(&args)
            .env_clear()
            .env("HOME", &self.c.machines[idx].home)
            .envs(self.env[idx].iter().map(|(k, v)| (k, v)))
            // OpenCode takes its working directory from $PWD.
            .env("PWD", ws)
            .current_dir(ws)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let out = run(cmd, stdin.as_deref(), CLI_TIMEOUT);
        assert!(
            out.ok,
            "{provider} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status, out.stdout, out.stderr
        );
        out.stdout
    }
}

/// The headless command line of one turn (as the adapters run it) and what goes on stdin.
fn headless_args(
    provider: &str,
    ws: &str,
    prompt: &str,
    resume: Option<&str>,
) -> (Vec<String>, Option<String>) {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    match provider {
        "claude" => {
            let mut args = s(&[
                "-p",
                prompt,
                "--output-format",
                "stream-json",
                "--verbose",
                "--permission-mode",
                "acceptEdits",
            ]);
            if let Some(id) = resume {
                args.extend(s(&["--resume", id]));
            }
            (args, None)
        }
        "codex" => {
            let mut args = s(&[
                "exec",
                "--json",
                "--skip-git-repo-check",
                "-s",
                "workspace-write",
                "-C",
                ws,
            ]);
            if let Some(id) = resume {
                args.extend(s(&["resume", id]));
            }
            args.push("-".into());
            (args, Some(prompt.to_string()))
        }
        "opencode" => {
            let mut args = s(&["run", "--format", "json", "--dir", ws]);
            if let Some(id) = resume {
                args.extend(s(&["-s", id]));
            }
            // On stdin: an argument would reach the model quoted.
            (args, Some(prompt.to_string()))
        }
        other => panic!("no headless command for {other}"),
    }
}

/// The conversation id the CLI reports in its JSON events (Claude `session_id`, Codex
/// `thread_id`, OpenCode `sessionID`).
fn conversation_id(stdout: &str) -> String {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| {
            ["session_id", "thread_id", "sessionID"]
                .iter()
                .find_map(|k| v[*k].as_str().map(str::to_string))
        })
        .unwrap_or_else(|| panic!("no conversation id in the CLI's output:\n{stdout}"))
}

struct Finished {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` (its own process group) to completion, feeding `stdin`; kills the group and
/// fails the test when it takes longer than `limit`.
fn run(mut cmd: Command, stdin: Option<&str>, limit: Duration) -> Finished {
    let mut child = cmd.spawn().expect("CLI starts");
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or_default().as_bytes())
            .expect("write the prompt");
    }
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
            // SAFETY: kill(2) on the process group of the child this function spawned.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "the CLI took longer than {limit:?}; stderr: {}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Finished {
        ok: status.success(),
        status: status.to_string(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Whether `log` holds a user entry `text` and, after it, an assistant entry containing `reply`.
fn has_turn(log: &[Value], text: &str, reply: &str) -> bool {
    log.iter()
        .position(|e| e["role"] == "user" && e["text"] == text)
        .is_some_and(|i| {
            log[i..].iter().any(|e| {
                e["role"] == "assistant" && e["text"].as_str().is_some_and(|t| t.contains(reply))
            })
        })
}

/// Prints how long a step took (wall time is part of what these tests report).
fn lap(provider: &str, step: &str, since: &mut Instant) {
    eprintln!(
        "[{provider}] {step}: {:.1} s",
        since.elapsed().as_secs_f64()
    );
    *since = Instant::now();
}

/// Prints how long each phase of a handoff took.
fn phases(provider: &str, handoff: &Value) {
    let list: Vec<String> = handoff["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} {} ms",
                p["phase"].as_str().unwrap_or("?"),
                p["duration_ms"]
            )
        })
        .collect();
    eprintln!("[{provider}]   phases: {}", list.join(", "));
}

/// Files and directories under `dir` whose name contains `needle`.
fn named_after(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_name().to_string_lossy().contains(needle) {
                found.push(path.display().to_string());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            }
        }
    }
    found
}

fn direct_keep_then_sync(provider: &str, endpoint: &str) {
    let started = Instant::now();
    let mut t = Instant::now();
    let Some(rig) = Rig::new() else {
        return;
    };
    lap(provider, "rig up", &mut t);
    let ws_a = rig.dir("laptop-ws/proj");
    let ws_b = rig.dir("desktop-ws/elsewhere/proj");
    let laptop_home = rig.home(LAPTOP);

    // A conversation made with the CLI itself on laptop, outside Baton.
    let first = "WRITEFILE a.txt hello direct";
    let out = rig.cli_turn(LAPTOP, provider, &ws_a, first, None);
    let id = conversation_id(&out);
    let written = std::fs::read_to_string(Path::new(&ws_a).join("a.txt")).expect("a.txt written");
    assert!(written.contains("hello direct"), "{written}");
    lap(provider, "first turn outside Baton", &mut t);

    // Listed, linked as Direct, read from laptop's files.
    let list = rig.provider_sessions(DESKTOP, "laptop", provider);
    let listed = list
        .iter()
        .find(|s| s["provider_ref"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} listed: {list:?}"));
    assert_eq!(listed["provider"], provider);
    assert_eq!(listed["cwd"], ws_a.as_str(), "{listed}");
    let opened = rig.ok(LAPTOP, &["open", &id, "--machine", "laptop"]);
    assert_eq!(opened["mode"], "direct", "{opened}");
    assert_eq!(opened["provider_ref"], id.as_str());
    assert_eq!(opened["workspace"], ws_a.as_str());
    let s = opened["session_id"].as_str().expect("id").to_string();
    let log = rig.log(DESKTOP, &s);
    assert!(has_turn(&log, first, "Wrote it."), "{log:?}");
    let row = rig.session(LAPTOP, &s);
    assert_eq!(row["mode"], "direct");
    assert_eq!(row["owner"]["name"], "laptop");
    lap(provider, "listed, opened, read", &mut t);

    // keep: the provider's files move to desktop's HOME and workspace path; still direct.
    let (rc, v) = rig.json(
        LAPTOP,
        &[
            "handoff",
            &s,
            "--to",
            "desktop",
            "--path",
            &ws_b,
            "--direct",
            "keep",
            "--timeout",
            "300",
        ],
    );
    assert_eq!(rc, 0, "handoff --direct keep: {v}");
    assert_eq!(v["result"], "committed", "{v}");
    lap(provider, "handoff --direct keep", &mut t);
    phases(provider, &v);
    let row = rig.session(LAPTOP, &s);
    assert_eq!(row["mode"], "direct", "{row}");
    assert_eq!(row["owner"]["name"], "desktop", "{row}");
    assert_eq!(row["workspace"], ws_b.as_str(), "{row}");
    let log = rig.log(LAPTOP, &s);
    assert!(
        has_turn(&log, first, "Wrote it."),
        "read on desktop: {log:?}"
    );
    // Laptop's copy is gone (Claude's transcript and its dirs, Codex's rollout are named after
    // the id; OpenCode's rows are what its listing reads), desktop's is at desktop's path.
    let (laptop_list, desktop_list) = std::thread::scope(|scope| {
        let laptop = scope.spawn(|| rig.provider_sessions(LAPTOP, "laptop", provider));
        let desktop = rig.provider_sessions(LAPTOP, "desktop", provider);
        (laptop.join().expect("listing laptop"), desktop)
    });
    assert!(
        !laptop_list.iter().any(|e| e["provider_ref"] == id.as_str()),
        "laptop still lists {id}: {laptop_list:?}"
    );
    let left = named_after(Path::new(&laptop_home), &id);
    assert!(left.is_empty(), "left on laptop: {left:?}");
    let entry = desktop_list
        .iter()
        .find(|e| e["provider_ref"] == id.as_str())
        .unwrap_or_else(|| panic!("desktop lists {id}: {desktop_list:?}"));
    assert_eq!(entry["cwd"], ws_b.as_str(), "{entry}");
    lap(provider, "checked both machines", &mut t);

    // Desktop's CLI resumes it directly, with the earlier turn and no trace of laptop.
    rig.model.clear_requests();
    let ask = "ECHOFIRST what came first?";
    let out = rig.cli_turn(DESKTOP, provider, &ws_b, ask, Some(&id));
    let echo = format!("First message was: {first}");
    assert!(out.contains(&echo), "context came along: {out}");
    let resumed: Vec<_> = rig
        .model
        .requests_to(endpoint)
        .into_iter()
        .filter(|r| r.body_text().contains("ECHOFIRST"))
        .collect();
    assert!(!resumed.is_empty(), "the resumed request reached the model");
    for r in &resumed {
        let body = r.body_text();
        assert!(
            body.contains("WRITEFILE a.txt"),
            "earlier turn sent: {body}"
        );
        assert!(!body.contains(&ws_a), "laptop workspace sent: {body}");
        assert!(!body.contains(&laptop_home), "laptop HOME sent: {body}");
    }
    // The Direct session shows the new turn: read from desktop's files.
    let log = rig.log(LAPTOP, &s);
    assert!(has_turn(&log, ask, &echo), "{log:?}");
    lap(provider, "resumed on desktop outside Baton", &mut t);

    // sync: back to laptop as a synced session with the conversation imported.
    let (rc, v) = rig.json(
        DESKTOP,
        &[
            "handoff",
            &s,
            "--to",
            "laptop",
            "--path",
            &ws_a,
            "--direct",
            "sync",
            "--timeout",
            "300",
        ],
    );
    assert_eq!(rc, 0, "handoff --direct sync: {v}");
    assert_eq!(v["result"], "committed", "{v}");
    lap(provider, "handoff --direct sync", &mut t);
    phases(provider, &v);
    let row = rig.session(DESKTOP, &s);
    assert_eq!(row["mode"], "synced", "{row}");
    assert_eq!(row["owner"]["name"], "laptop", "{row}");
    let log = rig.log(DESKTOP, &s);
    assert_dense(&log);
    assert!(has_turn(&log, first, "Wrote it."), "imported: {log:?}");
    assert!(has_turn(&log, ask, &echo), "imported: {log:?}");
    assert_eq!(
        log.iter()
            .filter(|e| e["role"] == "user" && e["text"] == first)
            .count(),
        1,
        "{log:?}"
    );
    let (rc, v) = rig.json(
        DESKTOP,
        &["send", &s, "ECHOFIRST and now?", "--timeout", "180"],
    );
    assert_eq!(rc, 0, "send: {v}");
    let reply = v["reply"].as_str().unwrap_or_default();
    assert!(reply.contains(&echo), "context came along: {v}");
    let log = rig.log(LAPTOP, &s);
    assert_dense(&log);
    assert!(has_turn(&log, "ECHOFIRST and now?", &echo), "{log:?}");
    lap(provider, "sent through Baton", &mut t);
    eprintln!(
        "[{provider}] total: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn claude_direct_session_keep_then_sync() {
    direct_keep_then_sync("claude", "/v1/messages");
}

#[test]
fn codex_direct_session_keep_then_sync() {
    direct_keep_then_sync("codex", "/v1/responses");
}

#[test]
fn opencode_direct_session_keep_then_sync() {
    direct_keep_then_sync("opencode", "/v1/chat/completions");
}
