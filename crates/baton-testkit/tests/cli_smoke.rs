//! One run of each real CLI against the mock model server: a WRITEFILE turn, then a resumed ECHOFIRST turn.
//! Skips (after printing why) when the CLIs cannot be installed, unless BATON_REQUIRE_PROVIDERS=1.

mod common;

use baton_testkit::clis::{self, Clis};
use baton_testkit::model::ModelServer;
use baton_testkit::rig::{Login, machine_env};
use common::{json_lines, run_cli};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(90);

struct Machine {
    clis: Clis,
    server: ModelServer,
    home: tempfile::TempDir,
    ws: tempfile::TempDir,
    env: Vec<(String, String)>,
}

fn machine() -> Option<Machine> {
    let clis = clis::require()?;
    let server = ModelServer::start().expect("start model server");
    let home = tempfile::tempdir().expect("home");
    let ws = tempfile::tempdir().expect("workspace");
    let env = machine_env(&clis, &server.base_url(), home.path(), Login::LoggedIn);
    Some(Machine {
        clis,
        server,
        home,
        ws,
        env,
    })
}

impl Machine {
    fn run(&self, cli: &str, args: &[&str], input: &str) -> common::Run {
        let run = run_cli(
            &self.clis.path(cli),
            args,
            self.home.path(),
            self.ws.path(),
            &self.env,
            input,
            TIMEOUT,
        );
        assert_eq!(
            run.code,
            Some(0),
            "{cli} {args:?} failed:\nstdout: {}\nstderr: {}",
            run.stdout,
            run.stderr
        );
        run
    }

    fn ws_path(&self) -> String {
        self.ws.path().to_str().expect("utf-8 temp path").to_owned()
    }

    /// Asserts the resumed request (the one carrying ECHOFIRST) also carried the first message.
    fn assert_resumed_request_has(&self, path_suffix: &str, first: &str) {
        let resumed: Vec<_> = self
            .server
            .requests_to(path_suffix)
            .into_iter()
            .filter(|r| r.body_text().contains("ECHOFIRST"))
            .collect();
        assert!(!resumed.is_empty(), "no resumed request to {path_suffix}");
        assert!(
            resumed.iter().all(|r| r.body_text().contains(first)),
            "resumed request lacks the first message"
        );
    }
}

fn file_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{} not written: {e}", path.display()))
}

#[test]
fn claude_writes_a_file_and_resumes_with_history() {
    let Some(m) = machine() else { return };
    let first = "WRITEFILE hello.txt hello from claude";
    let out = m.run(
        "claude",
        &[
            "-p",
            first,
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "acceptEdits",
        ],
        "",
    );
    assert_eq!(
        file_text(&m.ws.path().join("hello.txt")),
        "hello from claude"
    );
    let lines = json_lines(&out.stdout);
    let session = lines
        .first()
        .and_then(|l| l["session_id"].as_str())
        .expect("init line with session_id")
        .to_owned();
    let out = m.run(
        "claude",
        &[
            "-p",
            "ECHOFIRST what was it",
            "--resume",
            &session,
            "--output-format",
            "stream-json",
            "--verbose",
        ],
        "",
    );
    let result = json_lines(&out.stdout)
        .into_iter()
        .find(|l| l["type"] == "result")
        .expect("result line");
    assert_eq!(result["is_error"], false);
    assert_eq!(result["result"], format!("First message was: {first}"));
    m.assert_resumed_request_has("/v1/messages", first);
}

#[test]
fn codex_writes_a_file_and_resumes_with_history() {
    let Some(m) = machine() else { return };
    let status = m.run("codex", &["login", "status"], "");
    assert!(format!("{}{}", status.stdout, status.stderr).contains("API key configured"));
    let first = "WRITEFILE hello.txt hello from codex";
    let ws = m.ws_path();
    let out = m.run(
        "codex",
        &[
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-s",
            "workspace-write",
            "-C",
            &ws,
            first,
        ],
        "",
    );
    // apply_patch's Add File ends the last line with a newline.
    assert_eq!(
        file_text(&m.ws.path().join("hello.txt")),
        "hello from codex\n"
    );
    let thread = json_lines(&out.stdout)
        .into_iter()
        .find_map(|l| l["thread_id"].as_str().map(str::to_owned))
        .expect("thread.started line");
    let out = m.run(
        "codex",
        &[
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-C",
            &ws,
            "resume",
            &thread,
            "-",
        ],
        "ECHOFIRST what was it",
    );
    let replies: Vec<String> = json_lines(&out.stdout)
        .into_iter()
        .filter(|l| l.pointer("/item/type") == Some(&Value::from("agent_message")))
        .filter_map(|l| {
            l.pointer("/item/text")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(replies, [format!("First message was: {first}")]);
    m.assert_resumed_request_has("/v1/responses", first);
}

#[test]
fn opencode_writes_a_file_and_resumes_with_history() {
    let Some(m) = machine() else { return };
    let first = "WRITEFILE hello.txt hello from opencode";
    let ws = m.ws_path();
    let out = m.run(
        "opencode",
        &["run", "--format", "json", "--dir", &ws],
        first,
    );
    assert_eq!(
        file_text(&m.ws.path().join("hello.txt")),
        "hello from opencode"
    );
    let session = json_lines(&out.stdout)
        .into_iter()
        .find_map(|l| l["sessionID"].as_str().map(str::to_owned))
        .expect("a line with sessionID");
    let out = m.run(
        "opencode",
        &["run", "--format", "json", "--dir", &ws, "-s", &session],
        "ECHOFIRST what was it",
    );
    let text: String = json_lines(&out.stdout)
        .into_iter()
        .filter(|l| l["type"] == "text")
        .filter_map(|l| {
            l.pointer("/part/text")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, format!("First message was: {first}"));
    m.assert_resumed_request_has("/v1/chat/completions", first);
}
