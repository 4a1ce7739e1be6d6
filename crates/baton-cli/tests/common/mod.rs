//! Shared set-up of the end-to-end tests: real `baton` processes (server, daemons, CLI) in a
//! temp dir, through the same harness the demo uses.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use baton_cli::harness::Cluster;
use serde_json::Value;
use tempfile::TempDir;

/// The `baton` binary under test.
pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton"))
}

/// A cluster and the temp dir it lives in (kept alive together).
pub struct World {
    pub c: Cluster,
    pub tmp: TempDir,
}

impl World {
    /// A server and machines `names` (first creates the account), daemons running, agents
    /// logged in, all online.
    pub fn new(names: &[&str]) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("baton-e2e-")
            .tempdir()
            .expect("temp dir");
        let mut c = Cluster::start(&exe(), tmp.path()).expect("server starts");
        for n in names {
            let i = c.add_machine(n, true).expect("machine enrols");
            c.start_daemon(i).expect("daemon starts");
        }
        c.wait_online(names, true, Duration::from_secs(30))
            .expect("machines online");
        Self { c, tmp }
    }

    /// A directory under the world's root (created), canonical.
    pub fn dir(&self, rel: &str) -> String {
        let p = self.tmp.path().join(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::canonicalize(&p)
            .expect("canonical")
            .to_string_lossy()
            .into_owned()
    }

    /// Starts a scripted session on machine `idx` in `ws`; returns its id.
    pub fn new_session(&self, idx: usize, ws: &str) -> String {
        let v = self
            .c
            .json(idx, &["new", "--provider", "scripted", "--path", ws])
            .expect("new session");
        v["session_id"].as_str().expect("session_id").to_string()
    }

    /// Sends a message as machine `idx` and returns the reply text.
    pub fn send(&self, idx: usize, session: &str, text: &str) -> String {
        let v = self
            .c
            .json(idx, &["send", session, text])
            .expect("send answered");
        v["reply"].as_str().expect("reply").to_string()
    }

    /// The transcript as machine `idx` sees it.
    pub fn log(&self, idx: usize, session: &str) -> Vec<Value> {
        self.c
            .json(idx, &["log", session])
            .expect("log")
            .as_array()
            .cloned()
            .expect("array")
    }

    /// The session's row in `sessions --json`.
    pub fn session(&self, idx: usize, session: &str) -> Value {
        let list = self.c.json(idx, &["sessions"]).expect("sessions");
        list.as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == session))
            .cloned()
            .expect("session listed")
    }

    /// Runs `baton --json handoff SESSION --to TO [extra]` as machine `idx`.
    pub fn handoff(&self, idx: usize, session: &str, to: &str, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["--json", "handoff", session, "--to", to];
        args.extend_from_slice(extra);
        let out = self.c.baton(idx, &args).expect("handoff runs");
        (code(&out), parse(&out))
    }

    /// Starts `baton ARGS` as machine `idx` in the background, output captured.
    pub fn spawn(&self, idx: usize, args: &[&str]) -> std::process::Child {
        let m = &self.c.machines[idx];
        std::process::Command::new(exe())
            .args(args)
            .env("HOME", &m.home)
            .env("BATON_HOME", &m.baton_home)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("baton starts")
    }

    /// Machine `idx`'s HOME.
    pub fn home(&self, idx: usize) -> &Path {
        &self.c.machines[idx].home
    }
}

/// Exit code of a finished process.
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Stdout as JSON (or a JSON string holding stdout+stderr when it is not JSON).
pub fn parse(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        Value::String(format!(
            "stdout: {} stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

/// Asserts seq is 1..=n with no gap and epochs never go down.
pub fn assert_dense(log: &[Value]) {
    let mut last_epoch = 0;
    for (i, e) in log.iter().enumerate() {
        assert_eq!(
            e["seq"].as_u64(),
            Some(i as u64 + 1),
            "seq gap at {i}: {log:?}"
        );
        let ep = e["epoch"].as_u64().expect("epoch");
        assert!(ep >= last_epoch, "epoch went down at {i}: {log:?}");
        last_epoch = ep;
    }
}

/// Pids of scripted-agent processes whose HOME is `home` (read from /proc).
pub fn agent_pids(home: &Path) -> Vec<u32> {
    let want = format!("HOME={}", home.display());
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains("scripted-agent run") {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the scripted agent directly on machine `idx` (outside Baton), one turn per message.
pub fn agent_conversation(w: &World, idx: usize, ws: &str, id: &str, messages: &[&str]) {
    let mut child = std::process::Command::new(exe())
        .args(["scripted-agent", "run", "--cwd", ws, "--session-id", id])
        .env("HOME", w.home(idx))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("agent starts");
    {
        let stdin = child.stdin.as_mut().expect("stdin");
        for m in messages {
            let line = serde_json::json!({"type": "user", "text": m});
            std::io::Write::write_all(stdin, format!("{line}\n").as_bytes()).expect("write");
        }
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("agent ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
