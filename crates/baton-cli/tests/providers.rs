//! The real provider CLIs (Claude Code, Codex, OpenCode at pinned versions) run by real daemons
//! against Baton's model server on loopback: a session that wrote a file moves to another
//! machine with another HOME and workspace path, resumes there with its context and no old
//! path, and comes back. Skips (printing why) only when the CLIs cannot be installed, unless
//! BATON_REQUIRE_PROVIDERS=1.

mod common;

use std::path::Path;
use std::time::Duration;

use baton_cli::harness::Cluster;
use baton_testkit::model::ModelServer;
use baton_testkit::rig::{Login, machine_env};
use common::{assert_dense, code, exe, parse};
use serde_json::Value;

struct Rig {
    c: Cluster,
    model: ModelServer,
    tmp: tempfile::TempDir,
}

impl Rig {
    /// A server and machines `(name, login)`; CLIs on PATH unless `login` is `None`.
    fn new(machines: &[(&str, Option<Login>)]) -> Option<Self> {
        let clis = baton_testkit::clis::require()?;
        let model = ModelServer::start().expect("model server");
        let tmp = tempfile::Builder::new()
            .prefix("baton-providers-")
            .tempdir()
            .expect("tmp");
        let mut c = Cluster::start(&exe(), tmp.path()).expect("server");
        let mut names = Vec::new();
        for (name, login) in machines {
            let i = c.add_machine(name, true).expect("enrol");
            let home = c.machines[i].home.clone();
            let mut env = match login {
                Some(Login::LoggedIn) => {
                    machine_env(&clis, &model.base_url(), &home, Login::LoggedIn)
                }
                Some(Login::LoggedOut) => {
                    machine_env(&clis, &model.base_url(), &home, Login::LoggedOut)
                }
                // A machine without the CLIs: the same config, but PATH without them.
                None => machine_env(&clis, &model.base_url(), &home, Login::LoggedOut)
                    .into_iter()
                    .filter(|(k, _)| k != "PATH")
                    .collect(),
            };
            for k in baton_testkit::rig::ISOLATE {
                if std::env::var_os(k).is_some() && !env.iter().any(|(n, _)| n == k) {
                    env.push((k.to_string(), String::new()));
                }
            }
            c.machines[i].daemon_env = env;
            c.start_daemon(i).expect("daemon");
            names.push(*name);
        }
        c.wait_online(&names, true, Duration::from_secs(60))
            .expect("online");
        Some(Self { c, model, tmp })
    }

    fn dir(&self, rel: &str) -> String {
        let p = self.tmp.path().join(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::canonicalize(&p)
            .expect("canonical")
            .to_string_lossy()
            .into_owned()
    }

    fn json(&self, idx: usize, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.c.baton(idx, &all).expect("baton runs");
        (code(&out), parse(&out))
    }

    fn send(&self, idx: usize, session: &str, text: &str) -> String {
        let (rc, v) = self.json(idx, &["send", session, text, "--timeout", "180"]);
        assert_eq!(rc, 0, "send {text:?}: {v}");
        v["reply"].as_str().unwrap_or_default().to_string()
    }

    /// Waits until machine `idx` reports `provider` as installed (detection runs at connect).
    fn wait_provider(&self, idx: usize, machine: &str, provider: &str) -> Value {
        common::wait_for(Duration::from_secs(60), || {
            let (_, list) = self.json(idx, &["machines"]);
            list.as_array()?.iter().find(|m| m["name"] == machine)?["providers"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == provider)
                .cloned()
        })
        .expect("provider reported")
    }
}

const LAPTOP: usize = 0;

fn handoff_round_trip(provider: &str, endpoint: &str) {
    let Some(rig) = Rig::new(&[
        ("laptop", Some(Login::LoggedIn)),
        ("desktop", Some(Login::LoggedIn)),
    ]) else {
        return;
    };
    let info = rig.wait_provider(LAPTOP, "desktop", provider);
    assert_eq!(info["installed"], true, "{info}");
    let ws_a = rig.dir("laptop-ws/proj");
    let ws_b = rig.dir("desktop-ws/elsewhere/proj");
    let laptop_home = rig.c.machines[0].home.to_string_lossy().into_owned();
    let (rc, v) = rig.json(LAPTOP, &["new", "--provider", provider, "--path", &ws_a]);
    assert_eq!(rc, 0, "{v}");
    let s = v["session_id"].as_str().expect("id").to_string();

    let first = "WRITEFILE a.txt hello from laptop";
    rig.send(LAPTOP, &s, first);
    let written = std::fs::read_to_string(Path::new(&ws_a).join("a.txt")).expect("a.txt written");
    assert!(written.contains("hello from laptop"), "{written}");

    let (rc, v) = rig.json(
        LAPTOP,
        &[
            "handoff",
            &s,
            "--to",
            "desktop",
            "--path",
            &ws_b,
            "--timeout",
            "300",
        ],
    );
    assert_eq!(rc, 0, "handoff: {v}");
    assert_eq!(v["result"], "committed");

    rig.model.clear_requests();
    let reply = rig.send(1, &s, "ECHOFIRST what was the first message?");
    assert!(
        reply.contains(&format!("First message was: {first}")),
        "context came along: {reply}"
    );
    let resumed: Vec<_> = rig
        .model
        .requests_to(endpoint)
        .into_iter()
        .filter(|r| r.body_text().contains("ECHOFIRST"))
        .collect();
    assert!(!resumed.is_empty(), "the resumed request reached the model");
    for r in &resumed {
        let body = r.body_text();
        assert!(body.contains("WRITEFILE a.txt"), "earlier turns sent");
        assert!(
            !body.contains(&ws_a),
            "old workspace path sent to the model: {body}"
        );
        assert!(!body.contains(&laptop_home), "old home sent to the model");
    }

    let (_, log) = rig.json(1, &["log", &s]);
    let log = log.as_array().cloned().expect("log");
    assert_dense(&log);
    for text in [first, "ECHOFIRST what was the first message?"] {
        assert_eq!(
            log.iter()
                .filter(|e| e["role"] == "user" && e["text"] == text)
                .count(),
            1,
            "{text} once in {log:?}"
        );
    }

    // And back, to the original path.
    let (rc, v) = rig.json(
        1,
        &[
            "handoff",
            &s,
            "--to",
            "laptop",
            "--path",
            &ws_a,
            "--timeout",
            "300",
        ],
    );
    assert_eq!(rc, 0, "hand back: {v}");
    let reply = rig.send(LAPTOP, &s, "ECHOFIRST once more");
    assert!(
        reply.contains(&format!("First message was: {first}")),
        "{reply}"
    );
}

#[test]
fn claude_session_hands_off_and_back() {
    handoff_round_trip("claude", "/v1/messages");
}

#[test]
fn codex_session_hands_off_and_back() {
    handoff_round_trip("codex", "/v1/responses");
}

#[test]
fn opencode_session_hands_off_and_back() {
    handoff_round_trip("opencode", "/v1/chat/completions");
}

#[test]
fn preflight_names_a_missing_cli_and_a_missing_login_and_a_connected_service_fixes_the_login() {
    let Some(rig) = Rig::new(&[
        ("laptop", Some(Login::LoggedIn)),
        ("desktop", Some(Login::LoggedOut)),
        ("bare", None),
    ]) else {
        return;
    };
    let ws = rig.dir("ws");
    let (rc, v) = rig.json(LAPTOP, &["new", "--provider", "claude", "--path", &ws]);
    assert_eq!(rc, 0, "{v}");
    let s = v["session_id"].as_str().expect("id").to_string();
    rig.send(LAPTOP, &s, "remember the codeword PELICAN");

    let info = rig.wait_provider(LAPTOP, "bare", "claude");
    assert_eq!(info["installed"], false);
    let (rc, v) = rig.json(LAPTOP, &["handoff", &s, "--to", "bare"]);
    assert_eq!(rc, 3, "{v}");
    assert_eq!(v["error"]["code"], "provider_not_installed");

    let info = rig.wait_provider(LAPTOP, "desktop", "claude");
    assert_eq!(info["auth"], "missing", "{info}");
    let (rc, v) = rig.json(LAPTOP, &["handoff", &s, "--to", "desktop"]);
    assert_eq!(rc, 3, "{v}");
    assert_eq!(v["error"]["code"], "provider_auth_missing");
    // Nothing moved: laptop still owns it and it still answers.
    let reply = rig.send(LAPTOP, &s, "ECHOFIRST still here?");
    assert!(reply.contains("PELICAN"), "{reply}");

    let m = &rig.c.machines[LAPTOP];
    let out = std::process::Command::new(exe())
        .args([
            "--json",
            "services",
            "add",
            "claude",
            "--api-key-from-env",
            "ANTHROPIC_API_KEY",
        ])
        .env("HOME", &m.home)
        .env("BATON_HOME", &m.baton_home)
        .env("ANTHROPIC_API_KEY", baton_testkit::rig::TEST_KEY)
        .output()
        .expect("services add");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let connected = common::wait_for(Duration::from_secs(60), || {
        let info = rig.wait_provider(LAPTOP, "desktop", "claude");
        (info["auth"] == "connected_service").then_some(())
    });
    assert!(connected.is_some(), "desktop reports the connected service");
    let (rc, v) = rig.json(
        LAPTOP,
        &["handoff", &s, "--to", "desktop", "--timeout", "300"],
    );
    assert_eq!(rc, 0, "{v}");
    let before = rig.model.requests().len();
    let reply = rig.send(1, &s, "ECHOFIRST and now?");
    assert!(reply.contains("PELICAN"), "{reply}");
    let generations: Vec<_> = rig.model.requests()[before..]
        .iter()
        .filter(|r| r.is_generation())
        .cloned()
        .collect();
    assert!(!generations.is_empty(), "desktop's claude called the model");
    for r in &generations {
        assert_eq!(
            r.header("x-api-key"),
            Some(baton_testkit::rig::TEST_KEY),
            "the connected service's key reached the CLI on desktop"
        );
    }
}

/// The open requests of `s`, as `permissions --json` lists them from machine `idx`.
fn open_requests(rig: &Rig, idx: usize, s: &str) -> Vec<Value> {
    let (rc, v) = rig.json(idx, &["permissions", s]);
    assert_eq!(rc, 0, "{v}");
    v.as_array().cloned().expect("array")
}

/// Waits until exactly one request other than `not` is open; returns its seq.
fn wait_request(rig: &Rig, idx: usize, s: &str, not: Option<u64>) -> u64 {
    common::wait_for(Duration::from_secs(120), || {
        let open = open_requests(rig, idx, s);
        let seq = open.first()?["request"].as_u64()?;
        (open.len() == 1 && Some(seq) != not).then_some(seq)
    })
    .expect("a permission request opens")
}

/// Waits until the session is idle with more than `after` entries; returns the log.
fn wait_idle_after(rig: &Rig, idx: usize, s: &str, after: u64) -> Vec<Value> {
    common::wait_for(Duration::from_secs(120), || {
        let (_, list) = rig.json(idx, &["sessions"]);
        let row = list.as_array()?.iter().find(|r| r["id"] == s)?.clone();
        if row["status"] != "idle" {
            return None;
        }
        let (_, log) = rig.json(idx, &["log", s]);
        let log = log.as_array()?.clone();
        (log.len() as u64 > after).then_some(log)
    })
    .expect("the turn ends")
}

#[test]
fn claude_asks_before_running_a_command_and_a_request_open_at_handoff_is_asked_again_on_the_target()
{
    let Some(rig) = Rig::new(&[
        ("laptop", Some(Login::LoggedIn)),
        ("desktop", Some(Login::LoggedIn)),
    ]) else {
        return;
    };
    let ws_a = rig.dir("laptop-ws/proj");
    let ws_b = rig.dir("desktop-ws/elsewhere/proj");
    let (rc, v) = rig.json(LAPTOP, &["new", "--provider", "claude", "--path", &ws_a]);
    assert_eq!(rc, 0, "{v}");
    let s = v["session_id"].as_str().expect("id").to_string();

    // A shell command that writes asks first; desktop's client answers.
    let (rc, v) = rig.json(
        LAPTOP,
        &["send", &s, "RUNCMD sh -c 'echo one > one.txt'", "--no-wait"],
    );
    assert_eq!(rc, 0, "{v}");
    let first = wait_request(&rig, 1, &s, None);
    let (_, log) = rig.json(1, &["log", &s]);
    let asked = &log[usize::try_from(first - 1).unwrap()];
    assert_eq!(asked["permission"]["tool"], "Bash", "{asked}");
    assert!(
        !Path::new(&ws_a).join("one.txt").exists(),
        "ran before the answer"
    );
    let (rc, v) = rig.json(1, &["allow", &s]);
    assert_eq!(rc, 0, "{v}");
    wait_idle_after(&rig, LAPTOP, &s, first + 1);
    assert_eq!(
        std::fs::read_to_string(Path::new(&ws_a).join("one.txt")).expect("one.txt"),
        "one\n"
    );

    // Open when the handoff starts: interrupted on laptop, asked again on desktop.
    let (rc, v) = rig.json(
        LAPTOP,
        &["send", &s, "RUNCMD sh -c 'echo two > two.txt'", "--no-wait"],
    );
    assert_eq!(rc, 0, "{v}");
    let old = wait_request(&rig, LAPTOP, &s, Some(first));
    let (rc, v) = rig.json(
        LAPTOP,
        &[
            "handoff",
            &s,
            "--to",
            "desktop",
            "--path",
            &ws_b,
            "--timeout",
            "300",
        ],
    );
    assert_eq!(rc, 0, "handoff: {v}");
    let new = wait_request(&rig, 1, &s, Some(old));
    let (_, log) = rig.json(1, &["log", &s]);
    let log = log.as_array().cloned().expect("log");
    assert_dense(&log);
    let again = &log[usize::try_from(new - 1).unwrap()];
    assert_eq!(again["permission"]["reraises"], old, "{again}");
    assert_eq!(again["permission"]["tool"], "Bash");
    assert!(!Path::new(&ws_a).join("two.txt").exists());

    // Approved on the target: desktop's claude repeats the call, which runs there without a
    // second question.
    rig.model.clear_requests();
    let (rc, v) = rig.json(LAPTOP, &["allow", &s]);
    assert_eq!(rc, 0, "{v}");
    let log = wait_idle_after(&rig, 1, &s, new + 2);
    assert_dense(&log);
    assert_eq!(
        std::fs::read_to_string(Path::new(&ws_b).join("two.txt")).expect("two.txt on desktop"),
        "two\n"
    );
    assert!(!Path::new(&ws_a).join("two.txt").exists());
    let tail = &log[usize::try_from(new).unwrap()..];
    assert!(
        !tail.iter().skip(1).any(|e| e["role"] == "permission"),
        "asked twice: {tail:?}"
    );
    assert!(
        tail.iter()
            .any(|e| e["role"] == "tool_call" && e["text"] == "Bash"),
        "{tail:?}"
    );
    assert!(open_requests(&rig, 1, &s).is_empty());
    for r in rig.model.requests_to("/v1/messages") {
        assert!(
            !r.body_text().contains(&ws_a),
            "old workspace sent to the model"
        );
    }
}
