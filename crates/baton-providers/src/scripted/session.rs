//! A running scripted agent process, seen through [`AgentSession`].

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::process::{LineReader, StderrTail};
use crate::{AgentEvent, AgentSession, ProviderError, Result};

/// Longest stdout line accepted from the agent; longer lines are dropped.
const MAX_LINE: usize = 16 * 1024 * 1024;
/// How long to wait for the process to exit once its stdout ended.
const EXIT_WAIT: Duration = Duration::from_secs(5);
/// How long `shutdown` lets the process end on its own after closing its stdin.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for the stderr collector to drain after the process exited.
const STDERR_DRAIN: Duration = Duration::from_secs(1);

/// A running `scripted-agent run` process.
pub(super) struct ScriptedSession {
    child: Child,
    /// Process id (= process group id, since it was spawned with `process_group(0)`).
    pid: Option<u32>,
    stdin: Option<ChildStdin>,
    stdout: LineReader<ChildStdout>,
    tail: StderrTail,
    stderr_task: Option<JoinHandle<()>>,
    /// True once the child was waited for; its pid may then belong to someone else.
    reaped: bool,
    exited: Option<AgentEvent>,
    /// Permission requests the agent waits for.
    asked: std::collections::HashSet<String>,
}

impl ScriptedSession {
    /// Takes over a child spawned with piped stdin, stdout and stderr.
    pub(super) fn new(mut child: Child) -> Result<Self> {
        let missing = || ProviderError::Process("agent process has no pipes".into());
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take().ok_or_else(missing)?;
        let tail = StderrTail::default();
        let stderr_task = Some(tail.collect(stderr, "scripted", |_| true));
        Ok(Self {
            pid: child.id(),
            child,
            stdin: Some(stdin),
            stdout: LineReader::new(stdout, MAX_LINE),
            tail,
            stderr_task,
            reaped: false,
            exited: None,
            asked: std::collections::HashSet::new(),
        })
    }

    /// Waits for the `ready` line; on failure the process is gone and the error carries its
    /// stderr.
    pub(super) async fn wait_ready(&mut self, limit: Duration) -> Result<Value> {
        let ready = timeout(limit, async {
            while let Some(line) = self.stdout.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.get("type").and_then(Value::as_str) == Some("ready") => {
                        return Some(v);
                    }
                    _ => tracing::debug!(%line, "agent output before ready ignored"),
                }
            }
            None
        })
        .await;
        match ready {
            Ok(Some(v)) => Ok(v),
            Ok(None) => match self.finish().await {
                AgentEvent::Exited { code, stderr_tail } => Err(ProviderError::Process(format!(
                    "scripted-agent exited (code {}) before it was ready: {stderr_tail}",
                    code.map_or_else(|| "none".to_string(), |c| c.to_string())
                ))),
                _ => Err(ProviderError::Process("scripted-agent exited".into())),
            },
            Err(_) => {
                self.kill_and_reap().await;
                Err(ProviderError::Process(format!(
                    "scripted-agent was not ready within {} s: {}",
                    limit.as_secs(),
                    self.tail.text()
                )))
            }
        }
    }

    /// Writes one JSON line to the agent's stdin.
    async fn write_line(&mut self, v: &Value) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| ProviderError::Process("agent input is closed".into()))?;
        let mut line = v.to_string();
        line.push('\n');
        let res = async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await
        }
        .await;
        res.map_err(|e| ProviderError::Process(format!("cannot write to the agent: {e}")))
    }

    /// After stdout ended: waits for the exit, collects the stderr tail, remembers `Exited`.
    async fn finish(&mut self) -> AgentEvent {
        if let Some(ev) = &self.exited {
            return ev.clone();
        }
        let status = if self.reaped {
            None
        } else {
            match timeout(EXIT_WAIT, self.child.wait()).await {
                Ok(Ok(status)) => {
                    self.reaped = true;
                    Some(status)
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot wait for the agent");
                    None
                }
                // Its stdout is closed but it lives on: it is of no use any more.
                Err(_) => self.kill_and_reap().await,
            }
        };
        if let Some(task) = self.stderr_task.as_mut() {
            if timeout(STDERR_DRAIN, &mut *task).await.is_err() {
                task.abort();
            }
            self.stderr_task = None;
        }
        let ev = crate::process::exited(status, self.tail.text());
        self.exited = Some(ev.clone());
        ev
    }

    /// Kills the whole process group and reaps the child.
    async fn kill_and_reap(&mut self) -> Option<std::process::ExitStatus> {
        if self.reaped {
            return None;
        }
        self.kill_group();
        let status = self.child.wait().await.ok();
        self.reaped = true;
        status
    }

    /// Sends SIGKILL to the agent's process group (tools it started included).
    fn kill_group(&self) {
        if let Some(pgid) = self.pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: plain syscall; the group id is our child's pid, which was spawned as a
            // group leader. ESRCH (group already gone) is fine.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

/// Maps one protocol line to an event; `None` for lines that are not events.
fn parse_event(line: &str) -> Option<AgentEvent> {
    let v: Value = serde_json::from_str(line).ok()?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    match v.get("type")?.as_str()? {
        "assistant" => Some(AgentEvent::Assistant { text: s("text")? }),
        "tool_call" => Some(AgentEvent::ToolCall {
            name: s("name")?,
            input: v.get("input").cloned().unwrap_or(Value::Null),
        }),
        "tool_result" => Some(AgentEvent::ToolResult {
            output: s("output").unwrap_or_default(),
        }),
        "permission" => Some(AgentEvent::PermissionRequest {
            request_id: s("id")?,
            tool: s("tool").unwrap_or_default(),
            input: v.get("input").cloned().unwrap_or(Value::Null),
        }),
        "error" => Some(AgentEvent::Error {
            message: s("message").unwrap_or_else(|| "unknown agent error".into()),
        }),
        "turn_end" => Some(AgentEvent::TurnEnd {
            turn: v.get("turn").and_then(Value::as_u64),
            interrupted: v
                .get("interrupted")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            usage: None,
        }),
        _ => None,
    }
}

#[async_trait]
impl AgentSession for ScriptedSession {
    async fn send_turn(&mut self, text: &str) -> Result<()> {
        self.write_line(&json!({"type": "user", "text": text}))
            .await
    }

    async fn next_event(&mut self) -> AgentEvent {
        if let Some(ev) = &self.exited {
            return ev.clone();
        }
        while let Some(line) = self.stdout.next_line().await {
            match parse_event(&line) {
                Some(ev) => {
                    match &ev {
                        AgentEvent::PermissionRequest { request_id, .. } => {
                            self.asked.insert(request_id.clone());
                        }
                        // A request the turn did not wait for any more cannot be answered.
                        AgentEvent::TurnEnd { .. } => self.asked.clear(),
                        _ => {}
                    }
                    return ev;
                }
                None => tracing::debug!(%line, "agent line ignored"),
            }
        }
        self.finish().await
    }

    async fn interrupt(&mut self) -> Result<()> {
        self.write_line(&json!({"type": "interrupt"})).await
    }

    async fn answer_permission(&mut self, request_id: &str, allow: bool) -> Result<()> {
        if !self.asked.remove(request_id) {
            return Err(ProviderError::Process(format!(
                "no open permission request {request_id}"
            )));
        }
        self.write_line(&json!({"type": "permission_answer", "id": request_id, "allow": allow}))
            .await
    }

    async fn shutdown(mut self: Box<Self>) -> Result<()> {
        // Closing stdin is the agent's signal to end after the current turn.
        self.stdin = None;
        if !self.reaped {
            match timeout(SHUTDOWN_GRACE, self.child.wait()).await {
                Ok(Ok(_)) => self.reaped = true,
                _ => {
                    self.kill_and_reap().await;
                }
            }
        }
        // Sweep anything the agent left behind in its group.
        self.kill_group();
        if let Some(task) = self.stderr_task.take() {
            task.abort();
        }
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        if self.reaped { None } else { self.pid }
    }
}

impl Drop for ScriptedSession {
    fn drop(&mut self) {
        // Dropped without shutdown: `kill_on_drop` only kills the child, so take its group too.
        if !self.reaped {
            self.kill_group();
        }
        if let Some(task) = self.stderr_task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events() {
        assert_eq!(
            parse_event(r#"{"type":"assistant","text":"hi"}"#),
            Some(AgentEvent::Assistant { text: "hi".into() })
        );
        assert_eq!(
            parse_event(r#"{"type":"turn_end","turn":2,"interrupted":true}"#),
            Some(AgentEvent::TurnEnd {
                turn: Some(2),
                interrupted: true,
                usage: None,
            })
        );
        assert_eq!(
            parse_event(r#"{"type":"turn_end"}"#),
            Some(AgentEvent::TurnEnd {
                turn: None,
                interrupted: false,
                usage: None,
            })
        );
        assert_eq!(
            parse_event(r#"{"type":"tool_call","name":"echo","input":{"text":"x"}}"#),
            Some(AgentEvent::ToolCall {
                name: "echo".into(),
                input: json!({"text": "x"})
            })
        );
        assert_eq!(parse_event(r#"{"type":"ready"}"#), None);
        assert_eq!(parse_event(r#"{"type":"future_thing"}"#), None);
        assert_eq!(parse_event("not json"), None);
    }
}
