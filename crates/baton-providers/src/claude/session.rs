//! A running `claude -p --input-format stream-json --output-format stream-json` process: user
//! turns and control messages go to its stdin, its stdout lines become [`AgentEvent`]s.
//!
//! Control protocol (measured on 2.1.331): we send `control_request`s (`initialize`,
//! `interrupt`) and get `control_response`s; with `--permission-prompt-tool stdio` the CLI sends
//! `control_request{subtype:"can_use_tool"}` and waits for our `control_response`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::process::{LineReader, StderrTail};
use crate::{AgentEvent, AgentSession, ProviderError, Result, Usage};

/// Longest stdout line accepted (the `init` line alone is tens of KB; tool results can be big).
const MAX_LINE: usize = 64 * 1024 * 1024;
/// How long to wait for the process to exit once its stdout ended.
const EXIT_WAIT: Duration = Duration::from_secs(5);
/// How long `shutdown` lets the process end on its own after closing its stdin.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the stderr collector after the process exited.
const STDERR_DRAIN: Duration = Duration::from_secs(1);
/// Request id of the `initialize` handshake.
const INIT_REQUEST: &str = "baton-init";
/// Message the model sees when a tool use is denied.
const DENY_MESSAGE: &str = "The user denied this tool use.";

/// A running Claude Code process.
pub(super) struct ClaudeSession {
    child: Child,
    /// Process id (= process group id: spawned with `process_group(0)`).
    pid: Option<u32>,
    stdin: Option<ChildStdin>,
    stdout: LineReader<ChildStdout>,
    tail: StderrTail,
    stderr_task: Option<JoinHandle<()>>,
    /// True once the child was waited for; its pid may then belong to someone else.
    reaped: bool,
    exited: Option<AgentEvent>,
    /// Events parsed from one line but not yet returned (an assistant message can hold several
    /// blocks; a failed turn is `Error` then `TurnEnd`).
    queued: VecDeque<AgentEvent>,
    /// Inputs of open permission requests by request id (`allow` must echo the input back).
    pending: HashMap<String, Value>,
    /// True between a sent user turn and its `result`.
    in_turn: bool,
    /// True when we asked to interrupt the current turn.
    interrupting: bool,
    /// Counter for our own control request ids.
    next_request: u64,
}

impl ClaudeSession {
    /// Takes over a child spawned with piped stdin, stdout and stderr.
    pub(super) fn new(mut child: Child) -> Result<Self> {
        let missing = || ProviderError::Process("claude process has no pipes".into());
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take().ok_or_else(missing)?;
        let tail = StderrTail::default();
        let stderr_task = Some(tail.collect(stderr, "claude", |_| true));
        Ok(Self {
            pid: child.id(),
            child,
            stdin: Some(stdin),
            stdout: LineReader::truncating(stdout, MAX_LINE),
            tail,
            stderr_task,
            reaped: false,
            exited: None,
            queued: VecDeque::new(),
            pending: HashMap::new(),
            in_turn: false,
            interrupting: false,
            next_request: 0,
        })
    }

    /// Sends `initialize` and waits for its answer: Claude prints nothing before its first
    /// input, so this is how a start that fails (unknown id, id in use, bad flags) is seen
    /// before `start` returns. On failure the process is gone and the error carries its stderr.
    pub(super) async fn initialize(&mut self, limit: Duration) -> Result<()> {
        self.write_line(&json!({
            "type": "control_request",
            "request_id": INIT_REQUEST,
            "request": {"subtype": "initialize"},
        }))
        .await?;
        let answered = timeout(limit, async {
            while let Some(line) = self.stdout.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap_or_default();
                let resp = &v["response"];
                if v["type"] == "control_response" && resp["request_id"] == INIT_REQUEST {
                    return Some(if resp["subtype"] == "success" {
                        Ok(())
                    } else {
                        Err(resp["error"]
                            .as_str()
                            .unwrap_or("unknown error")
                            .to_string())
                    });
                }
                tracing::debug!(line = %cut(&line, 200), "claude output before initialize ignored");
            }
            None
        })
        .await;
        match answered {
            Ok(Some(Ok(()))) => Ok(()),
            Ok(Some(Err(e))) => {
                self.kill_and_reap().await;
                Err(ProviderError::Process(format!(
                    "claude refused initialize: {e}"
                )))
            }
            Ok(None) => match self.finish().await {
                AgentEvent::Exited { code, stderr_tail } => Err(ProviderError::Process(format!(
                    "claude exited (code {}) at start: {stderr_tail}",
                    code.map_or_else(|| "none".to_string(), |c| c.to_string())
                ))),
                _ => Err(ProviderError::Process("claude exited at start".into())),
            },
            Err(_) => {
                self.kill_and_reap().await;
                Err(ProviderError::Process(format!(
                    "claude did not answer initialize within {} s: {}",
                    limit.as_secs(),
                    self.tail.text()
                )))
            }
        }
    }

    /// Writes one JSON line to the process's stdin.
    async fn write_line(&mut self, v: &Value) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| ProviderError::Process("claude input is closed".into()))?;
        let mut line = v.to_string();
        line.push('\n');
        let res = async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await
        }
        .await;
        res.map_err(|e| ProviderError::Process(format!("cannot write to claude: {e}")))
    }

    /// Answers a control request the CLI sent that we do not handle, so it does not wait.
    async fn refuse_control(&mut self, request_id: &str, subtype: &str) {
        let msg = json!({
            "type": "control_response",
            "response": {
                "subtype": "error",
                "request_id": request_id,
                "error": format!("baton does not handle {subtype}"),
            },
        });
        if let Err(e) = self.write_line(&msg).await {
            tracing::debug!(error = %e, "cannot refuse a claude control request");
        }
    }

    /// Handles one stdout line: events go to `queued`, control requests are answered.
    async fn handle_line(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            tracing::debug!(line = %cut(line, 200), "non-JSON claude line ignored");
            return;
        };
        if v["type"] == "control_request" {
            let id = v["request_id"].as_str().unwrap_or_default().to_string();
            let req = &v["request"];
            match req["subtype"].as_str().unwrap_or_default() {
                "can_use_tool" if !id.is_empty() => {
                    let input = req.get("input").cloned().unwrap_or(Value::Null);
                    self.pending.insert(id.clone(), input.clone());
                    self.queued.push_back(AgentEvent::PermissionRequest {
                        request_id: id,
                        tool: req["tool_name"].as_str().unwrap_or_default().to_string(),
                        input,
                    });
                }
                other => {
                    let other = other.to_string();
                    self.refuse_control(&id, &other).await;
                }
            }
            return;
        }
        if v["type"] == "control_cancel_request" {
            // The CLI gave up on a permission request (e.g. the turn was interrupted).
            if let Some(id) = v["request_id"].as_str() {
                self.pending.remove(id);
            }
            return;
        }
        let interrupting = self.interrupting;
        let events = parse_line(&v, interrupting);
        if v["type"] == "result" {
            self.in_turn = false;
            self.interrupting = false;
            self.pending.clear();
        }
        self.queued.extend(events);
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
                    tracing::warn!(error = %e, "cannot wait for claude");
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
        self.signal_group(libc::SIGKILL);
        let status = self.child.wait().await.ok();
        self.reaped = true;
        status
    }

    /// Sends `sig` to the process group (tools Claude started included), while it is ours.
    fn signal_group(&self, sig: libc::c_int) {
        if self.reaped {
            return;
        }
        if let Some(pgid) = self.pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: plain syscall; the group id is our unreaped child's pid, spawned as a
            // group leader. ESRCH (group already gone) is fine.
            unsafe {
                libc::killpg(pgid, sig);
            }
        }
    }
}

/// At most `n` bytes of `s` (on a char boundary), for logs.
fn cut(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The text of a `tool_result` content: a string, or the text blocks of a list.
pub(super) fn result_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Usage of a turn from `result.usage`. Input counts every prompt token the turn processed:
/// fresh, written to and read from the prompt cache.
fn usage_of(u: &Value) -> Option<Usage> {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    u.is_object().then(|| Usage {
        input_tokens: n("input_tokens")
            + n("cache_creation_input_tokens")
            + n("cache_read_input_tokens"),
        output_tokens: n("output_tokens"),
    })
}

/// Maps one stream-json output line (not a control message) to events. `interrupting`: we
/// asked to interrupt, so a failed `result` is the interruption, not an error.
fn parse_line(v: &Value, interrupting: bool) -> Vec<AgentEvent> {
    // Lines of subagents (Task tool) carry the id of the tool call that runs them; the
    // conversation shows that tool call and its result only.
    if !v["parent_tool_use_id"].is_null() {
        return Vec::new();
    }
    match v["type"].as_str().unwrap_or_default() {
        "assistant" => blocks(&v["message"]["content"])
            .filter_map(|b| match b["type"].as_str()? {
                "text" => Some(AgentEvent::Assistant {
                    text: b["text"].as_str()?.to_string(),
                }),
                "tool_use" => Some(AgentEvent::ToolCall {
                    name: b["name"].as_str()?.to_string(),
                    input: b.get("input").cloned().unwrap_or(Value::Null),
                }),
                _ => None,
            })
            .collect(),
        "user" => blocks(&v["message"]["content"])
            .filter(|b| b["type"] == "tool_result")
            .map(|b| AgentEvent::ToolResult {
                output: result_text(&b["content"]),
            })
            .collect(),
        "result" => {
            // An interruption ends the turn with is_error and terminal_reason
            // "aborted_streaming" (or "aborted_tools" during a tool run).
            let aborted = v["terminal_reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("aborted"));
            let interrupted = interrupting || aborted;
            let mut out = Vec::with_capacity(2);
            if v["is_error"].as_bool().unwrap_or(false) && !interrupted {
                let message = v["result"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .or_else(|| {
                        let errs: Vec<&str> = v["errors"]
                            .as_array()?
                            .iter()
                            .filter_map(Value::as_str)
                            .collect();
                        (!errs.is_empty()).then(|| errs.join("; "))
                    })
                    .unwrap_or_else(|| {
                        format!(
                            "claude turn failed ({})",
                            v["subtype"].as_str().unwrap_or("error")
                        )
                    });
                out.push(AgentEvent::Error { message });
            }
            out.push(AgentEvent::TurnEnd {
                turn: None,
                interrupted,
                usage: usage_of(&v["usage"]),
            });
            out
        }
        _ => Vec::new(),
    }
}

/// The content blocks of a message (a plain string content has none we map).
fn blocks(content: &Value) -> impl Iterator<Item = &Value> {
    content.as_array().into_iter().flatten()
}

#[async_trait]
impl AgentSession for ClaudeSession {
    async fn send_turn(&mut self, text: &str) -> Result<()> {
        self.write_line(&json!({
            "type": "user",
            "message": {"role": "user", "content": text},
        }))
        .await?;
        self.in_turn = true;
        Ok(())
    }

    async fn next_event(&mut self) -> AgentEvent {
        loop {
            if let Some(ev) = self.queued.pop_front() {
                return ev;
            }
            if let Some(ev) = &self.exited {
                return ev.clone();
            }
            match self.stdout.next_line().await {
                Some(line) => self.handle_line(&line).await,
                None => {
                    let ev = self.finish().await;
                    // A turn cut short by the process's end still ends, so nobody waits on it.
                    if std::mem::take(&mut self.in_turn) {
                        self.queued.push_back(AgentEvent::TurnEnd {
                            turn: None,
                            interrupted: true,
                            usage: None,
                        });
                        self.queued.push_back(ev);
                        continue;
                    }
                    return ev;
                }
            }
        }
    }

    async fn interrupt(&mut self) -> Result<()> {
        if !self.in_turn || self.interrupting {
            return Ok(());
        }
        self.next_request += 1;
        let msg = json!({
            "type": "control_request",
            "request_id": format!("baton-interrupt-{}", self.next_request),
            "request": {"subtype": "interrupt"},
        });
        self.interrupting = true;
        if let Err(e) = self.write_line(&msg).await {
            // Its input is gone; SIGINT is what a terminal user would send.
            tracing::warn!(error = %e, "interrupt request failed, sending SIGINT");
            self.signal_group(libc::SIGINT);
        }
        Ok(())
    }

    async fn answer_permission(&mut self, request_id: &str, allow: bool) -> Result<()> {
        let input = self.pending.remove(request_id).ok_or_else(|| {
            ProviderError::Process(format!("no open permission request {request_id}"))
        })?;
        let response = if allow {
            json!({"behavior": "allow", "updatedInput": input})
        } else {
            json!({"behavior": "deny", "message": DENY_MESSAGE})
        };
        self.write_line(&json!({
            "type": "control_response",
            "response": {"subtype": "success", "request_id": request_id, "response": response},
        }))
        .await
    }

    async fn shutdown(mut self: Box<Self>) -> Result<()> {
        // Closing stdin ends a `-p` stream-json process after its current turn.
        self.stdin = None;
        if !self.reaped {
            match timeout(SHUTDOWN_GRACE, self.child.wait()).await {
                Ok(Ok(_)) => self.reaped = true,
                _ => {
                    self.kill_and_reap().await;
                }
            }
        }
        if let Some(task) = self.stderr_task.take() {
            task.abort();
        }
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        if self.reaped { None } else { self.pid }
    }
}

impl Drop for ClaudeSession {
    fn drop(&mut self) {
        // `kill_on_drop` only kills the child; take the tools in its group too.
        self.signal_group(libc::SIGKILL);
        if let Some(task) = self.stderr_task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str, interrupting: bool) -> Vec<AgentEvent> {
        parse_line(&serde_json::from_str(line).unwrap(), interrupting)
    }

    #[test]
    fn assistant_blocks_become_events() {
        let evs = parse(
            r#"{"type":"assistant","parent_tool_use_id":null,"message":{"content":[{"type":"text","text":"hi"},{"type":"tool_use","id":"t1","name":"Write","input":{"file_path":"/w/a"}},{"type":"thinking","thinking":"x"}]}}"#,
            false,
        );
        assert_eq!(
            evs,
            vec![
                AgentEvent::Assistant { text: "hi".into() },
                AgentEvent::ToolCall {
                    name: "Write".into(),
                    input: json!({"file_path": "/w/a"})
                }
            ]
        );
        let sub = r#"{"type":"assistant","parent_tool_use_id":"t9","message":{"content":[{"type":"text","text":"sub"}]}}"#;
        assert!(parse(sub, false).is_empty());
    }

    #[test]
    fn tool_results_and_plain_user_lines() {
        let evs = parse(
            r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}}"#,
            false,
        );
        assert_eq!(
            evs,
            vec![AgentEvent::ToolResult {
                output: "a\nb".into()
            }]
        );
        let interrupted = r#"{"type":"user","message":{"content":[{"type":"text","text":"[Request interrupted by user]"}]}}"#;
        assert!(parse(interrupted, false).is_empty());
    }

    #[test]
    fn results_end_turns() {
        let ok = r#"{"type":"result","subtype":"success","is_error":false,"result":"done","usage":{"input_tokens":20,"cache_read_input_tokens":5,"output_tokens":10}}"#;
        assert_eq!(
            parse(ok, false),
            vec![AgentEvent::TurnEnd {
                turn: None,
                interrupted: false,
                usage: Some(Usage {
                    input_tokens: 25,
                    output_tokens: 10
                })
            }]
        );
        let failed = r#"{"type":"result","subtype":"success","is_error":true,"result":"Not logged in · Please run /login","usage":{}}"#;
        let evs = parse(failed, false);
        assert_eq!(
            evs[0],
            AgentEvent::Error {
                message: "Not logged in · Please run /login".into()
            }
        );
        assert!(matches!(
            evs[1],
            AgentEvent::TurnEnd {
                interrupted: false,
                ..
            }
        ));
        let aborted = r#"{"type":"result","subtype":"error_during_execution","is_error":true,"terminal_reason":"aborted_streaming","errors":["x"]}"#;
        assert_eq!(
            parse(aborted, false),
            vec![AgentEvent::TurnEnd {
                turn: None,
                interrupted: true,
                usage: None
            }]
        );
        let during = r#"{"type":"result","subtype":"error_during_execution","is_error":true,"errors":["a","b"]}"#;
        assert_eq!(
            parse(during, false)[0],
            AgentEvent::Error {
                message: "a; b".into()
            }
        );
        assert_eq!(parse(during, true).len(), 1);
        assert!(parse(r#"{"type":"system","subtype":"init"}"#, false).is_empty());
    }
}
