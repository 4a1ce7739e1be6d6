//! A conversation driven through `opencode run --format json`: one process per turn, the prompt
//! piped on stdin, its JSON lines normalised into [`AgentEvent`]s.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use super::cli::{Cli, clean_stderr, kill_group};
use crate::process::LineReader;
use crate::{AgentEvent, AgentSession, ProviderError, Result, Usage};

/// Longest stdout line accepted; longer lines are dropped.
const MAX_LINE: usize = 16 * 1024 * 1024;
/// Stderr bytes kept for error messages (the tail).
const STDERR_KEEP: usize = 16 * 1024;
/// How long an interrupted run may take to end after SIGINT before its group is killed
/// (1.18.33 exits within 0.2 s of SIGINT).
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the process to exit once its stdout ended or its turn was reported.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Session ids with a live `opencode run` started by this adapter, shared with the provider so
/// that export and removal refuse while a turn runs.
#[derive(Clone, Debug, Default)]
pub(super) struct Running(Arc<Mutex<HashSet<String>>>);

impl Running {
    fn set(&self, id: &str, alive: bool) {
        let mut ids = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if alive {
            ids.insert(id.to_string());
        } else {
            ids.remove(id);
        }
    }

    /// True while a run of `id` started here is alive.
    pub(super) fn contains(&self, id: &str) -> bool {
        let ids = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ids.contains(id)
    }
}

/// The tail of a process's stderr, filled by a background task.
#[derive(Clone, Default)]
struct StderrTail(Arc<Mutex<String>>);

impl StderrTail {
    fn collect<R: AsyncRead + Unpin + Send + 'static>(&self, stderr: R) -> JoinHandle<()> {
        let tail = self.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line);
                tracing::debug!(target: "baton_providers::opencode::stderr", "{}", text.trim_end());
                let mut t = tail.0.lock().unwrap_or_else(|p| p.into_inner());
                t.push_str(&text);
                if t.len() > 2 * STDERR_KEEP {
                    let cut = t.len() - STDERR_KEEP;
                    let cut = (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(0);
                    t.drain(..cut);
                }
                line.clear();
            }
        })
    }

    fn text(&self) -> String {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        clean_stderr(&t)
    }
}

/// One `opencode run` process (one turn).
struct Turn {
    child: Child,
    /// Process id (= group id: spawned with `process_group(0)`).
    pid: Option<u32>,
    stdout: LineReader<ChildStdout>,
    tail: StderrTail,
    stderr_task: Option<JoinHandle<()>>,
    reaped: bool,
    /// Stdout reached EOF.
    eof: bool,
    /// `TurnEnd` was emitted for this run.
    ended: bool,
    /// An `error` line was seen.
    errored: bool,
    /// SIGINT was sent; when to escalate to SIGKILL.
    interrupt_deadline: Option<Instant>,
    /// Token counts summed over the turn's steps.
    usage: Usage,
    /// When the process started, in ms since the epoch (to find a session it created).
    started_ms: i64,
}

impl Turn {
    /// Waits (bounded) for the process to exit, killing its group if it does not.
    async fn reap(&mut self) -> Option<std::process::ExitStatus> {
        if self.reaped {
            return None;
        }
        let status = match timeout(EXIT_WAIT, self.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot wait for opencode");
                None
            }
            Err(_) => {
                tracing::warn!("opencode run did not exit, killing it");
                kill_group(self.pid, libc::SIGKILL);
                self.child.wait().await.ok()
            }
        };
        self.reaped = true;
        // Anything it left behind in its group (tool processes) goes with it.
        kill_group(self.pid, libc::SIGKILL);
        if let Some(mut task) = self.stderr_task.take()
            && timeout(Duration::from_secs(1), &mut task).await.is_err()
        {
            task.abort();
        }
        status
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // `kill_on_drop` only kills the child; take its group too.
        if !self.reaped {
            kill_group(self.pid, libc::SIGKILL);
        }
        if let Some(task) = self.stderr_task.take() {
            task.abort();
        }
    }
}

/// An OpenCode conversation in one workspace.
pub(super) struct OpenCodeSession {
    cli: Cli,
    workspace: PathBuf,
    /// Per-session environment (connected-service credentials).
    env: Vec<(String, String)>,
    /// The `ses_…` id once known (from the start when resuming).
    session_id: Option<String>,
    /// True once `SessionRef` was emitted.
    announced: bool,
    running: Running,
    turn: Option<Turn>,
    pending: VecDeque<AgentEvent>,
    /// Set when a run could not even start: the session is over.
    exited: Option<AgentEvent>,
}

impl OpenCodeSession {
    /// A session in `workspace`; `session_id` is the `ses_…` to resume, `None` for a new one.
    pub(super) fn new(
        cli: Cli,
        workspace: PathBuf,
        env: Vec<(String, String)>,
        session_id: Option<String>,
        running: Running,
    ) -> Self {
        Self {
            cli,
            workspace,
            env,
            announced: session_id.is_some(),
            session_id,
            running,
            turn: None,
            pending: VecDeque::new(),
            exited: None,
        }
    }

    /// Ends the previous run (it exits right after its last line) before starting another.
    async fn finish_previous(&mut self) {
        if let Some(mut turn) = self.turn.take() {
            turn.reap().await;
        }
        if let Some(id) = &self.session_id {
            self.running.set(id, false);
        }
    }

    /// Starts `opencode run` for one prompt.
    async fn spawn(&mut self, text: &str) -> std::io::Result<Turn> {
        let ws = self.workspace.to_string_lossy().into_owned();
        let mut args = vec!["run", "--format", "json", "--dir", ws.as_str()];
        if let Some(id) = &self.session_id {
            args.extend(["-s", id.as_str()]);
        }
        let mut cmd = self.cli.command(&args, &self.workspace, &self.env);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started_ms = now_ms();
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let missing = || std::io::Error::other("opencode run has no pipes");
        let mut stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take().ok_or_else(missing)?;
        let tail = StderrTail::default();
        let stderr_task = Some(tail.collect(stderr));
        // The prompt goes verbatim on stdin (an argument would reach the model quoted); closing
        // it is what makes `run` start.
        let write = async {
            stdin.write_all(text.as_bytes()).await?;
            stdin.shutdown().await
        };
        if let Err(e) = timeout(EXIT_WAIT, write)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("writing the prompt timed out")))
        {
            kill_group(pid, libc::SIGKILL);
            return Err(e);
        }
        drop(stdin);
        Ok(Turn {
            child,
            pid,
            stdout: LineReader::new(stdout, MAX_LINE),
            tail,
            stderr_task,
            reaped: false,
            eof: false,
            ended: false,
            errored: false,
            interrupt_deadline: None,
            usage: Usage::default(),
            started_ms,
        })
    }

    /// Handles one output line of the current run.
    fn on_line(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            tracing::debug!(%line, "opencode output that is not JSON ignored");
            return;
        };
        if !self.announced
            && let Some(id) = v.get("sessionID").and_then(Value::as_str)
            && super::is_valid_id("ses", id)
        {
            self.announced = true;
            self.session_id = Some(id.to_string());
            self.running.set(id, true);
            self.pending.push_back(AgentEvent::SessionRef {
                provider_ref: id.to_string(),
            });
        }
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if turn.ended {
            tracing::debug!(%line, "opencode output after the end of the turn ignored");
            return;
        }
        for ev in parse_line(&v, &mut turn.usage) {
            match ev {
                Parsed::Event(ev) => {
                    if matches!(ev, AgentEvent::Error { .. }) {
                        turn.errored = true;
                    }
                    self.pending.push_back(ev);
                }
                Parsed::FinalStep => {
                    turn.ended = true;
                    self.pending.push_back(AgentEvent::TurnEnd {
                        turn: None,
                        interrupted: false,
                        usage: Some(turn.usage.clone()),
                    });
                }
            }
        }
    }

    /// Looks up a session this run created in the workspace (newest created since `since_ms`)
    /// and announces it.
    async fn find_created_session(&mut self, since_ms: i64) {
        let ws = self.workspace.to_string_lossy().replace('\'', "''");
        let sql = format!(
            "select id from session where directory = '{ws}' and parent_id is null \
             and time_created >= {since_ms} order by time_created desc limit 1"
        );
        let id = match timeout(EXIT_WAIT * 3, self.cli.query(&sql)).await {
            Ok(Ok(rows)) => rows
                .first()
                .and_then(|r| r.get("id"))
                .and_then(Value::as_str)
                .filter(|id| super::is_valid_id("ses", id))
                .map(str::to_string),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot look up the session opencode created");
                None
            }
            Err(_) => None,
        };
        if let Some(id) = id {
            self.announced = true;
            self.session_id = Some(id.clone());
            self.pending
                .push_back(AgentEvent::SessionRef { provider_ref: id });
        }
    }

    /// After stdout ended: reaps the run and ends its turn if it did not end itself.
    async fn on_eof(&mut self) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        let status = turn.reap().await;
        let interrupted = turn.interrupt_deadline.is_some();
        let started_ms = turn.started_ms;
        if !self.announced {
            // A run that ended before its first output line (interrupted while the model had
            // not answered yet, or failed) may still have created the session: find it, so the
            // next turn continues it instead of starting another.
            self.find_created_session(started_ms).await;
        }
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if !turn.ended {
            turn.ended = true;
            if !interrupted && !turn.errored {
                let code = status
                    .and_then(|s| s.code())
                    .map_or_else(|| "none".to_string(), |c| c.to_string());
                let tail = turn.tail.text();
                let message = if tail.is_empty() {
                    format!("opencode exited (code {code}) before the turn ended")
                } else {
                    format!("opencode exited (code {code}) before the turn ended: {tail}")
                };
                self.pending.push_back(AgentEvent::Error { message });
            }
            self.pending.push_back(AgentEvent::TurnEnd {
                turn: None,
                interrupted,
                usage: Some(turn.usage.clone()),
            });
        }
        self.turn = None;
        if let Some(id) = &self.session_id {
            self.running.set(id, false);
        }
    }
}

/// What one output line means.
#[derive(Debug, PartialEq)]
enum Parsed {
    Event(AgentEvent),
    /// The last step of the turn finished.
    FinalStep,
}

/// Maps one `run --format json` line to events, adding step token counts to `usage`.
fn parse_line(v: &Value, usage: &mut Usage) -> Vec<Parsed> {
    let part = v.get("part").unwrap_or(&Value::Null);
    let s = |p: &Value, k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
    match v.get("type").and_then(Value::as_str) {
        Some("text") => match s(part, "text") {
            Some(text) if !text.is_empty() => vec![Parsed::Event(AgentEvent::Assistant { text })],
            _ => Vec::new(),
        },
        Some("tool_use") => tool_events(part).into_iter().map(Parsed::Event).collect(),
        Some("error") => vec![Parsed::Event(AgentEvent::Error {
            message: error_message(v),
        })],
        Some("step_finish") => {
            let tokens = part.get("tokens").unwrap_or(&Value::Null);
            let n = |k: &str| tokens.get(k).and_then(Value::as_u64).unwrap_or(0);
            usage.input_tokens += n("input");
            usage.output_tokens += n("output") + n("reasoning");
            // A step that asked for tools is followed by another step; any other reason
            // (`stop`, `length`, …) ends the turn.
            if s(part, "reason").as_deref() == Some("tool-calls") {
                Vec::new()
            } else {
                vec![Parsed::FinalStep]
            }
        }
        _ => Vec::new(),
    }
}

/// A tool part as a call and, once it finished, its result.
pub(super) fn tool_events(part: &Value) -> Vec<AgentEvent> {
    let state = part.get("state").unwrap_or(&Value::Null);
    let name = part
        .get("tool")
        .and_then(Value::as_str)
        .unwrap_or("tool")
        .to_string();
    let input = state.get("input").cloned().unwrap_or(Value::Null);
    let mut out = vec![AgentEvent::ToolCall { name, input }];
    let text = |k: &str| state.get(k).and_then(Value::as_str).map(str::to_string);
    match state.get("status").and_then(Value::as_str) {
        Some("completed") => out.push(AgentEvent::ToolResult {
            output: text("output").unwrap_or_default(),
        }),
        Some("error") => out.push(AgentEvent::ToolResult {
            output: text("error").unwrap_or_else(|| "tool failed".into()),
        }),
        _ => {}
    }
    out
}

/// The message of an `error` line: `error.data.message`, `error.message` or the error's name.
fn error_message(v: &Value) -> String {
    let err = v.get("error").unwrap_or(&Value::Null);
    [
        err.pointer("/data/message"),
        err.get("message"),
        err.get("name"),
        v.get("message"),
    ]
    .into_iter()
    .flatten()
    .find_map(|m| m.as_str().filter(|s| !s.is_empty()))
    .map(str::to_string)
    .unwrap_or_else(|| format!("opencode reported an error: {err}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[async_trait]
impl AgentSession for OpenCodeSession {
    async fn send_turn(&mut self, text: &str) -> Result<()> {
        if self.exited.is_some() {
            return Err(ProviderError::Process("the session has ended".into()));
        }
        if self.turn.as_ref().is_some_and(|t| !t.ended) {
            return Err(ProviderError::Process("a turn is still running".into()));
        }
        self.finish_previous().await;
        self.pending.clear();
        match self.spawn(text).await {
            Ok(turn) => {
                if let Some(id) = &self.session_id {
                    self.running.set(id, true);
                }
                self.turn = Some(turn);
            }
            Err(e) => {
                // Reported through the event stream, like a process that died at once.
                tracing::warn!(error = %e, "cannot start opencode run");
                self.exited = Some(AgentEvent::Exited {
                    code: None,
                    stderr_tail: format!("cannot start opencode run: {e}"),
                });
            }
        }
        Ok(())
    }

    async fn next_event(&mut self) -> AgentEvent {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return ev;
            }
            if let Some(ev) = &self.exited {
                return ev.clone();
            }
            let Some(turn) = self.turn.as_mut() else {
                // Between turns nothing happens until the next `send_turn`.
                return std::future::pending().await;
            };
            if turn.ended && turn.eof {
                return std::future::pending().await;
            }
            if turn.eof {
                self.on_eof().await;
                continue;
            }
            let deadline = turn.interrupt_deadline;
            let line = tokio::select! {
                line = turn.stdout.next_line() => line,
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::warn!("opencode run ignored SIGINT, killing it");
                    kill_group(turn.pid, libc::SIGKILL);
                    turn.interrupt_deadline = Some(Instant::now() + EXIT_WAIT);
                    continue;
                }
            };
            match line {
                Some(line) => self.on_line(&line),
                None => {
                    turn.eof = true;
                    self.on_eof().await;
                }
            }
        }
    }

    async fn interrupt(&mut self) -> Result<()> {
        if let Some(turn) = self.turn.as_mut()
            && !turn.ended
            && !turn.reaped
            && turn.interrupt_deadline.is_none()
        {
            // `run` exits on SIGINT (without printing a last line); the whole group gets it so
            // that tool processes stop too.
            kill_group(turn.pid, libc::SIGINT);
            turn.interrupt_deadline = Some(Instant::now() + INTERRUPT_GRACE);
        }
        Ok(())
    }

    async fn shutdown(mut self: Box<Self>) -> Result<()> {
        if let Some(turn) = self.turn.as_mut()
            && !turn.reaped
        {
            if !turn.ended {
                kill_group(turn.pid, libc::SIGINT);
            }
            turn.reap().await;
        }
        self.turn = None;
        if let Some(id) = &self.session_id {
            self.running.set(id, false);
        }
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.turn.as_ref().filter(|t| !t.reaped).and_then(|t| t.pid)
    }
}

impl Drop for OpenCodeSession {
    fn drop(&mut self) {
        if let Some(id) = &self.session_id {
            self.running.set(id, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(line: &str, usage: &mut Usage) -> Vec<Parsed> {
        parse_line(&serde_json::from_str(line).unwrap(), usage)
    }

    #[test]
    fn run_lines() {
        let mut u = Usage::default();
        assert_eq!(
            parse(
                r#"{"type":"text","sessionID":"ses_x","part":{"type":"text","text":"Wrote it."}}"#,
                &mut u
            ),
            vec![Parsed::Event(AgentEvent::Assistant {
                text: "Wrote it.".into()
            })]
        );
        let tool = r#"{"type":"tool_use","part":{"type":"tool","tool":"write","state":{"status":"completed","input":{"filePath":"/w/b.txt","content":"hello"},"output":"Wrote file successfully."}}}"#;
        assert_eq!(
            parse(tool, &mut u),
            vec![
                Parsed::Event(AgentEvent::ToolCall {
                    name: "write".into(),
                    input: json!({"filePath": "/w/b.txt", "content": "hello"}),
                }),
                Parsed::Event(AgentEvent::ToolResult {
                    output: "Wrote file successfully.".into()
                }),
            ]
        );
        let step = |reason: &str| {
            format!(
                r#"{{"type":"step_finish","part":{{"reason":"{reason}","tokens":{{"input":30,"output":15,"reasoning":2}}}}}}"#
            )
        };
        assert!(parse(&step("tool-calls"), &mut u).is_empty());
        assert_eq!(parse(&step("stop"), &mut u), vec![Parsed::FinalStep]);
        assert_eq!(
            u,
            Usage {
                input_tokens: 60,
                output_tokens: 34
            }
        );
        assert_eq!(
            parse(
                r#"{"type":"error","error":{"name":"APIError","data":{"message":"Unauthorized"}}}"#,
                &mut u
            ),
            vec![Parsed::Event(AgentEvent::Error {
                message: "Unauthorized".into()
            })]
        );
        assert!(parse(r#"{"type":"step_start","part":{}}"#, &mut u).is_empty());
        assert!(parse(r#"{"type":"reasoning","part":{"text":"hm"}}"#, &mut u).is_empty());
    }
}
