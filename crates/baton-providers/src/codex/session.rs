//! A Codex conversation seen through [`AgentSession`]: one `codex exec --json` process per
//! turn, its JSONL events normalised into [`AgentEvent`]s.
//!
//! Why one process per turn: `codex exec` takes a single prompt and exits when the turn ends;
//! the next turn is `codex exec resume <thread id>`, which reloads the thread from its rollout.
//! The prompt goes in on stdin (argument `-`) and stdin is then closed: with a prompt argument
//! and an open stdin, `exec` waits for stdin's EOF and appends it as a `<stdin>` block.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdout};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use super::NAME;
use crate::process::{LineReader, StderrTail};
use crate::{AgentEvent, AgentSession, ProviderEnv, ProviderError, Result, Usage};

/// Longest stdout line accepted; longer lines are dropped.
const MAX_LINE: usize = 16 * 1024 * 1024;
/// How long a turn's process may take to exit after its stdout ended or its turn ended.
const EXIT_WAIT: Duration = Duration::from_secs(5);
/// How long an interrupted turn gets to stop on SIGINT before its group is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the stderr collector after the process exited.
const STDERR_DRAIN: Duration = Duration::from_secs(1);

/// What every turn's process needs.
pub(super) struct TurnConfig {
    /// The `codex` program.
    pub program: PathBuf,
    /// The machine's environment.
    pub env: ProviderEnv,
    /// Per-session additions (connected-service credentials).
    pub spec_env: Vec<(String, String)>,
    /// Workspace (absolute, UTF-8).
    pub workspace: String,
}

/// A Codex thread driven turn by turn.
pub(super) struct CodexSession {
    config: TurnConfig,
    /// The thread to resume; `None` until a new thread reported its id.
    thread_id: Option<String>,
    turn: Option<Turn>,
    pending: VecDeque<AgentEvent>,
    exited: Option<AgentEvent>,
}

/// One turn's `codex exec` process.
struct Turn {
    child: Child,
    /// Process id (= process group id: spawned with `process_group(0)`).
    pid: Option<u32>,
    stdout: LineReader<ChildStdout>,
    tail: StderrTail,
    stderr_task: Option<JoinHandle<()>>,
    /// True once the child was waited for; its pid may then belong to someone else.
    reaped: bool,
    /// True once `TurnEnd` (or `Exited`) was produced for this turn.
    ended: bool,
    /// Set by `interrupt`.
    interrupted: bool,
    /// When to kill the group if the interrupted turn has not stopped.
    kill_at: Option<Instant>,
    /// Codex reported an error of its own during this turn.
    reported_error: bool,
    /// Ids of items whose start was already turned into a tool call.
    started: HashSet<String>,
}

impl CodexSession {
    /// A session that starts a new thread (`thread_id == None`) or resumes one on its first turn.
    pub(super) fn new(config: TurnConfig, thread_id: Option<String>) -> Self {
        Self {
            config,
            thread_id,
            turn: None,
            pending: VecDeque::new(),
            exited: None,
        }
    }

    /// The `codex exec` arguments for the next turn.
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-s",
            "workspace-write",
            "-C",
            &self.config.workspace,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(id) = &self.thread_id {
            args.push("resume".into());
            args.push(id.clone());
        }
        args.push("-".into());
        args
    }

    /// Normalises one output line of the current turn into `pending`.
    fn handle_line(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            tracing::debug!(%line, "codex output that is not JSON ignored");
            return;
        };
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        match v.get("type").and_then(Value::as_str).unwrap_or_default() {
            "thread.started" => {
                let Some(id) = s(&v, "thread_id") else { return };
                match &self.thread_id {
                    None => {
                        self.thread_id = Some(id.clone());
                        self.pending
                            .push_back(AgentEvent::SessionRef { provider_ref: id });
                    }
                    Some(known) if *known != id => {
                        tracing::warn!(%known, reported = %id, "codex resumed another thread id");
                    }
                    Some(_) => {}
                }
            }
            "item.started" => {
                let Some(item) = v.get("item") else { return };
                if let Some(call) = tool_call(item) {
                    if let Some(id) = s(item, "id") {
                        turn.started.insert(id);
                    }
                    self.pending.push_back(call);
                }
            }
            "item.completed" => {
                let Some(item) = v.get("item") else { return };
                let seen = s(item, "id").is_some_and(|id| turn.started.remove(&id));
                if !seen && let Some(call) = tool_call(item) {
                    self.pending.push_back(call);
                }
                match item.get("type").and_then(Value::as_str).unwrap_or_default() {
                    "agent_message" => {
                        if let Some(text) = s(item, "text") {
                            self.pending.push_back(AgentEvent::Assistant { text });
                        }
                    }
                    "error" => {
                        turn.reported_error = true;
                        self.pending.push_back(AgentEvent::Error {
                            message: s(item, "message").unwrap_or_else(|| "codex error".into()),
                        });
                    }
                    _ => {
                        if let Some(result) = tool_result(item) {
                            self.pending.push_back(result);
                        }
                    }
                }
            }
            "error" => {
                let message = s(&v, "message").unwrap_or_else(|| "codex error".into());
                // Retry notices are progress, not a failure of the turn.
                if message.starts_with("Reconnecting") {
                    tracing::debug!(%message, "codex retry notice");
                    return;
                }
                turn.reported_error = true;
                self.pending.push_back(AgentEvent::Error { message });
            }
            "turn.failed" => {
                let message = v
                    .get("error")
                    .and_then(|e| s(e, "message"))
                    .unwrap_or_else(|| "the turn failed".into());
                // `error` usually said the same thing just before; say it once.
                let repeated = matches!(
                    self.pending.back(),
                    Some(AgentEvent::Error { message: m }) if *m == message
                ) || turn.reported_error;
                if !repeated {
                    self.pending.push_back(AgentEvent::Error { message });
                }
                turn.reported_error = true;
                turn.ended = true;
                self.pending.push_back(AgentEvent::TurnEnd {
                    turn: None,
                    interrupted: turn.interrupted,
                    usage: None,
                });
            }
            "turn.completed" => {
                turn.ended = true;
                let usage = v.get("usage").map(|u| Usage {
                    input_tokens: u.get("input_tokens").and_then(Value::as_u64).unwrap_or(0),
                    output_tokens: u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
                });
                self.pending.push_back(AgentEvent::TurnEnd {
                    turn: None,
                    interrupted: turn.interrupted,
                    usage,
                });
            }
            _ => {}
        }
    }

    /// The current turn's stdout ended: reaps the process and decides what that means.
    async fn finish_turn(&mut self) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        let status = turn.reap(EXIT_WAIT).await;
        let stderr_tail = turn.drain_stderr().await;
        if turn.ended {
            return;
        }
        turn.ended = true;
        let code = status.and_then(|s| s.code());
        if turn.interrupted {
            self.pending.push_back(AgentEvent::TurnEnd {
                turn: None,
                interrupted: true,
                usage: None,
            });
        } else if turn.reported_error || code == Some(0) {
            // Codex said what went wrong (or exited cleanly without a turn end): the turn is
            // over, the thread can take the next one.
            if !turn.reported_error {
                self.pending.push_back(AgentEvent::Error {
                    message: "codex ended without finishing the turn".into(),
                });
            }
            self.pending.push_back(AgentEvent::TurnEnd {
                turn: None,
                interrupted: false,
                usage: None,
            });
        } else {
            // A crash (signal, or a failure Codex did not report as an event, e.g. a thread
            // that cannot be resumed): the daemon records it as an error and stops the
            // session, instead of waiting for a turn end that never comes.
            let ev = crate::process::exited(status, stderr_tail);
            self.exited = Some(ev.clone());
            self.pending.push_back(ev);
        }
    }

    /// Ends the previous turn's process, if any, before the next one starts.
    async fn retire_turn(&mut self) {
        if let Some(mut turn) = self.turn.take() {
            turn.reap(EXIT_WAIT).await;
            turn.kill_group(libc::SIGKILL);
            if let Some(task) = turn.stderr_task.take() {
                task.abort();
            }
        }
    }
}

/// A tool call for an item that is one (`command_execution`, `file_change`, `mcp_tool_call`,
/// `web_search`).
fn tool_call(item: &Value) -> Option<AgentEvent> {
    let get = |k: &str| item.get(k).cloned().unwrap_or(Value::Null);
    let (name, input) = match item.get("type")?.as_str()? {
        "command_execution" => ("shell".to_string(), json!({ "command": get("command") })),
        "file_change" => (
            "file_change".to_string(),
            json!({ "changes": get("changes") }),
        ),
        "mcp_tool_call" => {
            let server = item.get("server").and_then(Value::as_str).unwrap_or("mcp");
            let tool = item.get("tool").and_then(Value::as_str).unwrap_or("tool");
            (format!("{server}.{tool}"), get("arguments"))
        }
        "web_search" => ("web_search".to_string(), json!({ "query": get("query") })),
        _ => return None,
    };
    Some(AgentEvent::ToolCall { name, input })
}

/// The result of a completed tool item.
fn tool_result(item: &Value) -> Option<AgentEvent> {
    let output = match item.get("type")?.as_str()? {
        "command_execution" => item
            .get("aggregated_output")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        "file_change" => {
            let status = item.get("status").and_then(Value::as_str).unwrap_or("done");
            let files: Vec<String> = item
                .get("changes")
                .and_then(Value::as_array)
                .map(|c| {
                    c.iter()
                        .filter_map(|ch| {
                            let path = ch.get("path")?.as_str()?;
                            let kind = ch.get("kind").and_then(Value::as_str).unwrap_or("update");
                            Some(format!("{kind} {path}"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("{status}: {}", files.join(", "))
        }
        "mcp_tool_call" => match (item.get("result"), item.get("error")) {
            (_, Some(e)) if !e.is_null() => e.to_string(),
            (Some(r), _) => r.to_string(),
            _ => String::new(),
        },
        _ => return None,
    };
    Some(AgentEvent::ToolResult { output })
}

impl Turn {
    /// Waits up to `limit` for the process to exit, then kills its group; `None` when the
    /// status is unknown (already reaped, or waiting failed).
    async fn reap(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        if self.reaped {
            return None;
        }
        let status = match timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot wait for codex");
                None
            }
            Err(_) => {
                self.kill_group(libc::SIGKILL);
                self.child.wait().await.ok()
            }
        };
        self.reaped = true;
        status
    }

    /// The stderr tail once the collector finished (or gave up).
    async fn drain_stderr(&mut self) -> String {
        if let Some(task) = self.stderr_task.as_mut() {
            if timeout(STDERR_DRAIN, &mut *task).await.is_err() {
                task.abort();
            }
            self.stderr_task = None;
        }
        self.tail.text()
    }

    /// Sends `sig` to the turn's process group (the node launcher, the native binary and the
    /// commands it runs).
    fn kill_group(&self, sig: libc::c_int) {
        if let Some(pgid) = self.pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: plain syscall; the group id is our child's pid, spawned as a group
            // leader. ESRCH (group already gone) is fine.
            unsafe {
                libc::killpg(pgid, sig);
            }
        }
    }
}

#[async_trait]
impl AgentSession for CodexSession {
    async fn send_turn(&mut self, text: &str) -> Result<()> {
        if self.turn.as_ref().is_some_and(|t| !t.ended) {
            return Err(ProviderError::Process(
                "a codex turn is still running".into(),
            ));
        }
        self.retire_turn().await;
        self.pending.clear();
        self.exited = None;
        let args = self.args();
        let mut cmd = self
            .config
            .env
            .command(&self.config.program, &self.config.spec_env);
        cmd.args(&args)
            .current_dir(&self.config.workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so that interrupt and shutdown reach the commands it runs too.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ProviderError::NotInstalled {
                provider: NAME.into(),
                detail: format!("{} cannot be run: {e}", self.config.program.display()),
            },
            _ => ProviderError::Process(format!("cannot start codex: {e}")),
        })?;
        tracing::debug!(thread_id = ?self.thread_id, pid = ?child.id(), "codex turn started");
        let missing = || ProviderError::Process("codex process has no pipes".into());
        let mut stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take().ok_or_else(missing)?;
        let tail = StderrTail::default();
        let stderr_task = Some(tail.collect(stderr, "codex", codex_stderr_filter()));
        let prompt = text.to_string();
        // Written on a task so that a prompt larger than the pipe buffer cannot block us; EOF
        // (dropping stdin) is what tells `exec -` the prompt is complete.
        tokio::spawn(async move {
            if let Err(e) = stdin.write_all(prompt.as_bytes()).await {
                tracing::warn!(error = %e, "cannot write the prompt to codex");
            }
        });
        self.turn = Some(Turn {
            pid: child.id(),
            child,
            stdout: LineReader::new(stdout, MAX_LINE),
            tail,
            stderr_task,
            reaped: false,
            ended: false,
            interrupted: false,
            kill_at: None,
            reported_error: false,
            started: HashSet::new(),
        });
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
            let Some(turn) = self.turn.as_mut().filter(|t| !t.ended) else {
                // Between turns nothing happens until the next `send_turn`.
                return std::future::pending().await;
            };
            let kill_at = turn.kill_at;
            let line = tokio::select! {
                line = turn.stdout.next_line() => line,
                _ = async {
                    match kill_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::warn!("codex did not stop on SIGINT; killing the turn");
                    turn.kill_at = None;
                    turn.kill_group(libc::SIGKILL);
                    continue;
                }
            };
            match line {
                Some(line) => self.handle_line(&line),
                None => self.finish_turn().await,
            }
        }
    }

    async fn interrupt(&mut self) -> Result<()> {
        let Some(turn) = self.turn.as_mut().filter(|t| !t.ended && !t.reaped) else {
            return Ok(());
        };
        turn.interrupted = true;
        // SIGINT makes codex abort the turn cleanly (it records `turn_aborted` in the rollout
        // and exits); the kill after the grace is for a CLI that hangs.
        turn.kill_group(libc::SIGINT);
        turn.kill_at = Some(Instant::now() + INTERRUPT_GRACE);
        Ok(())
    }

    async fn shutdown(mut self: Box<Self>) -> Result<()> {
        if let Some(turn) = self.turn.as_mut()
            && !turn.reaped
        {
            if !turn.ended {
                turn.kill_group(libc::SIGINT);
            }
            turn.reap(INTERRUPT_GRACE).await;
        }
        self.retire_turn().await;
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.turn.as_ref().filter(|t| !t.reaped).and_then(|t| t.pid)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // `kill_on_drop` only kills the launcher; take the native binary and its commands too.
        if !self.reaped {
            self.kill_group(libc::SIGKILL);
        }
        if let Some(task) = self.stderr_task.take() {
            task.abort();
        }
    }
}

/// Keeps Codex's stderr readable: after a panic Codex prints a `Stack backtrace:` of
/// `<unknown>` frames, and on some systems a warning about PATH aliases; neither says what
/// went wrong.
fn codex_stderr_filter() -> impl FnMut(&str) -> bool + Send + 'static {
    let mut in_backtrace = false;
    move |line: &str| {
        if line.starts_with("Stack backtrace:") {
            in_backtrace = true;
        }
        !(in_backtrace
            || line.trim().is_empty()
            || line
                .starts_with("WARNING: proceeding, even though we could not create PATH aliases"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> CodexSession {
        CodexSession::new(
            TurnConfig {
                program: "/nonexistent/codex".into(),
                env: ProviderEnv::new("/nonexistent"),
                spec_env: Vec::new(),
                workspace: "/w".into(),
            },
            None,
        )
    }

    #[test]
    fn arguments() {
        let mut s = session();
        assert_eq!(
            s.args().join(" "),
            "exec --json --skip-git-repo-check -s workspace-write -C /w -"
        );
        s.thread_id = Some("t".into());
        assert_eq!(
            s.args().join(" "),
            "exec --json --skip-git-repo-check -s workspace-write -C /w resume t -"
        );
    }

    #[test]
    fn tool_items() {
        let cmd = json!({"id":"item_0","type":"command_execution","command":"/bin/bash -lc ls",
            "aggregated_output":"a.txt\n","exit_code":0,"status":"completed"});
        assert_eq!(
            tool_call(&cmd),
            Some(AgentEvent::ToolCall {
                name: "shell".into(),
                input: json!({"command": "/bin/bash -lc ls"})
            })
        );
        assert_eq!(
            tool_result(&cmd),
            Some(AgentEvent::ToolResult {
                output: "a.txt\n".into()
            })
        );
        let fc = json!({"id":"i","type":"file_change","status":"completed",
            "changes":[{"path":"/w/a.txt","kind":"add"}]});
        assert_eq!(
            tool_result(&fc),
            Some(AgentEvent::ToolResult {
                output: "completed: add /w/a.txt".into()
            })
        );
        assert_eq!(tool_call(&json!({"type":"reasoning","text":"x"})), None);
    }
}
