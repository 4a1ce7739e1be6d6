//! What the mock model answers: a request body is reduced to a dialect-neutral conversation, and the
//! scripted rules (ECHOFIRST, WRITEFILE, RUNCMD, SLEEP, tool results, titles) pick a reply from it.

use serde_json::{Value, json};
use std::time::Duration;

/// Which wire format a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// Anthropic Messages (`/v1/messages`), spoken by Claude Code.
    Anthropic,
    /// OpenAI Responses (`/v1/responses`), spoken by Codex.
    Responses,
    /// OpenAI Chat Completions (`/v1/chat/completions`), spoken by OpenCode.
    Chat,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
    /// System or developer instructions.
    System,
    /// A tool result that is its own message (Chat `role: tool`, Responses `function_call_output`).
    Tool,
}

/// One piece of a message.
#[derive(Debug, Clone)]
enum Part {
    Text(String),
    ToolUse,
    ToolResult,
}

#[derive(Debug, Clone)]
struct Msg {
    role: Role,
    parts: Vec<Part>,
}

/// A tool the request offers, with how it must be called.
#[derive(Debug, Clone)]
struct Tool {
    name: String,
    /// Responses API `custom` (freeform) tool, called with a raw `input` string.
    custom: bool,
}

/// A request body reduced to what the rules need.
#[derive(Debug, Clone)]
pub(crate) struct Conversation {
    messages: Vec<Msg>,
    system: String,
    tools: Vec<Tool>,
    cwd: Option<String>,
}

/// A tool call the mock model makes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolCall {
    /// The tool's name as the CLI offered it.
    pub name: String,
    /// For function tools: the JSON arguments. For a Responses `custom` tool: a JSON string holding the raw input.
    pub input: Value,
    /// True for a Responses `custom` (freeform) tool call.
    pub custom: bool,
}

/// What the mock model answers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    Text(String),
    Tool(ToolCall),
}

/// A scripted reply and how long to wait before giving it.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub delay: Option<Duration>,
    pub reply: Reply,
}

impl Conversation {
    /// Reduces a request body of the given dialect.
    pub(crate) fn parse(dialect: Dialect, body: &Value) -> Conversation {
        let mut conv = Conversation {
            messages: Vec::new(),
            system: String::new(),
            tools: Vec::new(),
            cwd: find_cwd(body),
        };
        match dialect {
            Dialect::Anthropic => conv.parse_anthropic(body),
            Dialect::Responses => conv.parse_responses(body),
            Dialect::Chat => conv.parse_chat(body),
        }
        conv
    }

    fn parse_anthropic(&mut self, body: &Value) {
        collect_text(body.get("system"), &mut self.system);
        for m in array(body.get("messages")) {
            // Claude 2.1.331 also sends `role: system` turns inside `messages` (its environment section).
            let role = match m.get("role").and_then(Value::as_str) {
                Some("assistant") => Role::Assistant,
                Some("system") => Role::System,
                _ => Role::User,
            };
            let mut parts = Vec::new();
            match m.get("content") {
                Some(Value::String(s)) => parts.push(Part::Text(s.clone())),
                Some(Value::Array(blocks)) => {
                    for b in blocks {
                        match b.get("type").and_then(Value::as_str) {
                            Some("text") => parts.push(Part::Text(str_of(b.get("text")))),
                            Some("tool_use") => parts.push(Part::ToolUse),
                            Some("tool_result") => parts.push(Part::ToolResult),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
            if role == Role::System {
                self.add_system(&parts);
            }
            self.messages.push(Msg { role, parts });
        }
        for t in array(body.get("tools")) {
            if let Some(name) = t.get("name").and_then(Value::as_str) {
                self.tools.push(Tool {
                    name: name.to_owned(),
                    custom: false,
                });
            }
        }
    }

    fn parse_responses(&mut self, body: &Value) {
        collect_text(body.get("instructions"), &mut self.system);
        let input = match body.get("input") {
            Some(Value::String(s)) => {
                vec![json!({"type": "message", "role": "user", "content": s})]
            }
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        for item in &input {
            let kind = item
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("message");
            let msg = match kind {
                "message" => {
                    let role = match item.get("role").and_then(Value::as_str) {
                        Some("assistant") => Role::Assistant,
                        Some("system" | "developer") => Role::System,
                        _ => Role::User,
                    };
                    let mut parts = Vec::new();
                    match item.get("content") {
                        Some(Value::String(s)) => parts.push(Part::Text(s.clone())),
                        Some(Value::Array(blocks)) => {
                            for b in blocks {
                                if let Some(t) = b.get("text").and_then(Value::as_str) {
                                    parts.push(Part::Text(t.to_owned()));
                                }
                            }
                        }
                        _ => {}
                    }
                    if role == Role::System {
                        self.add_system(&parts);
                    }
                    Msg { role, parts }
                }
                k if k.ends_with("_call_output") => Msg {
                    role: Role::Tool,
                    parts: vec![Part::ToolResult],
                },
                k if k.ends_with("_call") => Msg {
                    role: Role::Assistant,
                    parts: vec![Part::ToolUse],
                },
                // reasoning and other items carry nothing the rules look at.
                _ => continue,
            };
            self.messages.push(msg);
        }
        for t in array(body.get("tools")) {
            let custom = t.get("type").and_then(Value::as_str) == Some("custom");
            let name = t
                .get("name")
                .or_else(|| t.pointer("/function/name"))
                .and_then(Value::as_str);
            if let Some(name) = name {
                self.tools.push(Tool {
                    name: name.to_owned(),
                    custom,
                });
            }
        }
    }

    fn parse_chat(&mut self, body: &Value) {
        for m in array(body.get("messages")) {
            let role = match m.get("role").and_then(Value::as_str) {
                Some("assistant") => Role::Assistant,
                Some("system" | "developer") => Role::System,
                Some("tool") => Role::Tool,
                _ => Role::User,
            };
            let mut parts = Vec::new();
            if role == Role::Tool {
                parts.push(Part::ToolResult);
            } else {
                match m.get("content") {
                    Some(Value::String(s)) => parts.push(Part::Text(s.clone())),
                    Some(Value::Array(blocks)) => {
                        for b in blocks {
                            if let Some(t) = b.get("text").and_then(Value::as_str) {
                                parts.push(Part::Text(t.to_owned()));
                            }
                        }
                    }
                    _ => {}
                }
                if m.get("tool_calls")
                    .and_then(Value::as_array)
                    .is_some_and(|c| !c.is_empty())
                {
                    parts.push(Part::ToolUse);
                }
            }
            if role == Role::System {
                self.add_system(&parts);
            }
            self.messages.push(Msg { role, parts });
        }
        for t in array(body.get("tools")) {
            let name = t
                .pointer("/function/name")
                .or_else(|| t.get("name"))
                .and_then(Value::as_str);
            if let Some(name) = name {
                self.tools.push(Tool {
                    name: name.to_owned(),
                    custom: false,
                });
            }
        }
    }

    fn add_system(&mut self, parts: &[Part]) {
        for p in parts {
            if let Part::Text(t) = p {
                self.system.push_str(t);
                self.system.push('\n');
            }
        }
    }

    /// The working directory the request states, if any.
    pub(crate) fn cwd(&self) -> Option<&str> {
        self.cwd.as_deref()
    }

    /// The first user text of the conversation that the user typed, skipping blocks the CLIs inject.
    pub(crate) fn first_user_text(&self) -> Option<String> {
        self.messages
            .iter()
            .filter(|m| m.role == Role::User)
            .flat_map(|m| m.parts.iter())
            .find_map(|p| match p {
                Part::Text(t) if !is_injected(t) => Some(t.trim().to_owned()),
                _ => None,
            })
    }

    /// The texts of the last user message, the real ones first (injected ones only if there is nothing else).
    pub(crate) fn last_user_text(&self) -> String {
        let Some(last) = self.messages.iter().rev().find(|m| m.role == Role::User) else {
            return String::new();
        };
        let texts: Vec<&str> = last
            .parts
            .iter()
            .filter_map(|p| {
                if let Part::Text(t) = p {
                    Some(t.as_str())
                } else {
                    None
                }
            })
            .collect();
        let real: Vec<&str> = texts.iter().copied().filter(|t| !is_injected(t)).collect();
        let chosen = if real.is_empty() { texts } else { real };
        chosen
            .iter()
            .map(|t| t.trim())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether the request's last item is a tool result (the CLI ran our tool call and reports back).
    fn ends_with_tool_result(&self) -> bool {
        // System turns the CLI appends after the conversation do not count as its last item.
        self.messages
            .iter()
            .rev()
            .find(|m| m.role != Role::System)
            .is_some_and(|m| m.parts.iter().any(|p| matches!(p, Part::ToolResult)))
    }

    /// Baton's request to repeat a tool call a person approved after the process that asked
    /// was gone ("Make exactly this tool call again:" then `<tool name="N">JSON</tool>`), when
    /// it is in the conversation's last message: the model makes that call.
    fn repeat_call(&self) -> Option<ToolCall> {
        const ASK: &str = "Make exactly this tool call again:";
        let last = self
            .messages
            .iter()
            .rev()
            .find(|m| m.role != Role::System)?;
        last.parts.iter().find_map(|p| {
            let Part::Text(t) = p else { return None };
            let rest = &t[t.find(ASK)? + ASK.len()..];
            let rest = &rest[rest.find("<tool name=\"")? + "<tool name=\"".len()..];
            let (name, rest) = rest.split_once("\">")?;
            let input: Value = serde_json::from_str(&rest[..rest.rfind("</tool>")?]).ok()?;
            Some(ToolCall {
                name: name.to_owned(),
                input,
                custom: false,
            })
        })
    }

    fn is_title_request(&self) -> bool {
        self.system.contains("You are a title generator")
    }

    fn tool(&self, candidates: &[&str]) -> Option<&Tool> {
        candidates
            .iter()
            .find_map(|c| self.tools.iter().find(|t| t.name == *c))
    }

    /// Applies the scripted rules.
    pub(crate) fn plan(&self, dialect: Dialect) -> Plan {
        if self.is_title_request() {
            return Plan {
                delay: None,
                reply: Reply::Text("Test title".to_owned()),
            };
        }
        if let Some(call) = self.repeat_call() {
            return Plan {
                delay: None,
                reply: Reply::Tool(call),
            };
        }
        if self.ends_with_tool_result() {
            return Plan {
                delay: None,
                reply: Reply::Text("Wrote it.".to_owned()),
            };
        }
        let last = self.last_user_text();
        let delay = word_after(&last, "SLEEP")
            .and_then(|w| w.parse::<u64>().ok())
            .map(Duration::from_millis);
        let reply = if last.contains("ECHOFIRST") {
            Reply::Text(format!(
                "First message was: {}",
                self.first_user_text().unwrap_or_default()
            ))
        } else if let Some(rest) = rest_after(&last, "WRITEFILE") {
            let (name, content) = split_first_word(rest);
            match self.write_call(dialect, name, content) {
                Some(call) => Reply::Tool(call),
                None => Reply::Text("Mock reply: no file-writing tool was offered".to_owned()),
            }
        } else if let Some(command) = rest_after(&last, "RUNCMD") {
            match self.shell_call(dialect, command) {
                Some(call) => Reply::Tool(call),
                None => Reply::Text("Mock reply: no shell tool was offered".to_owned()),
            }
        } else {
            Reply::Text(format!("Mock reply: {last}"))
        };
        Plan { delay, reply }
    }

    fn absolute(&self, name: &str) -> String {
        if name.starts_with('/') {
            return name.to_owned();
        }
        match self.cwd() {
            Some(cwd) => format!("{}/{name}", cwd.trim_end_matches('/')),
            None => name.to_owned(),
        }
    }

    fn write_call(&self, dialect: Dialect, name: &str, content: &str) -> Option<ToolCall> {
        let path = self.absolute(name);
        match dialect {
            Dialect::Anthropic => Some(ToolCall {
                name: "Write".to_owned(),
                input: json!({"file_path": path, "content": content}),
                custom: false,
            }),
            Dialect::Chat => Some(ToolCall {
                name: "write".to_owned(),
                input: json!({"filePath": path, "content": content}),
                custom: false,
            }),
            Dialect::Responses => {
                if let Some(tool) = self.tool(&["apply_patch"]) {
                    let mut patch = format!("*** Begin Patch\n*** Add File: {path}\n");
                    for line in content.lines() {
                        patch.push('+');
                        patch.push_str(line);
                        patch.push('\n');
                    }
                    patch.push_str("*** End Patch");
                    let input = if tool.custom {
                        Value::String(patch)
                    } else {
                        json!({ "input": patch })
                    };
                    return Some(ToolCall {
                        name: tool.name.clone(),
                        input,
                        custom: tool.custom,
                    });
                }
                let command = format!(
                    "printf '%s\\n' {} > {}",
                    shell_quote(content),
                    shell_quote(&path)
                );
                self.shell_call(dialect, &command)
            }
        }
    }

    fn shell_call(&self, dialect: Dialect, command: &str) -> Option<ToolCall> {
        match dialect {
            Dialect::Anthropic => Some(ToolCall {
                name: "Bash".to_owned(),
                input: json!({"command": command, "description": "Run the requested command"}),
                custom: false,
            }),
            Dialect::Chat => Some(ToolCall {
                name: "bash".to_owned(),
                input: json!({"command": command, "description": "Run the requested command"}),
                custom: false,
            }),
            Dialect::Responses => {
                let tool = self.tool(&["exec_command", "shell_command", "shell", "local_shell"])?;
                let mut input = match tool.name.as_str() {
                    "exec_command" => json!({"cmd": command}),
                    "shell_command" => json!({"command": command}),
                    _ => json!({"command": ["bash", "-lc", command]}),
                };
                if let Some(cwd) = self.cwd() {
                    input["workdir"] = Value::String(cwd.to_owned());
                }
                Some(ToolCall {
                    name: tool.name.clone(),
                    input,
                    custom: false,
                })
            }
        }
    }
}

/// Blocks the CLIs add to user content themselves.
fn is_injected(text: &str) -> bool {
    let t = text.trim_start();
    t.is_empty() || t.starts_with('<') || t.starts_with("# AGENTS.md instructions")
}

fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn str_of(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// Appends a string or the `text` of each block of an array.
fn collect_text(v: Option<&Value>, out: &mut String) {
    match v {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                    out.push('\n');
                }
            }
        }
        _ => {}
    }
}

/// The text after `keyword` up to the end of its line, trimmed; None without the keyword.
fn rest_after<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let start = text.find(keyword)? + keyword.len();
    let rest = &text[start..];
    let line = rest.split('\n').next().unwrap_or_default();
    Some(line.trim())
}

fn word_after<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    rest_after(text, keyword).map(|r| split_first_word(r).0)
}

fn split_first_word(s: &str) -> (&str, &str) {
    let s = s.trim();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The working directory stated anywhere in the body; the last statement wins because the CLIs put the current
/// one after (or instead of) any older one resent with the history.
fn find_cwd(body: &Value) -> Option<String> {
    let mut found = None;
    walk_strings(body, &mut |s| {
        for (start, end) in [
            ("Primary working directory: ", "\n"),
            ("<cwd>", "</cwd>"),
            ("Working directory: ", "\n"),
        ] {
            let mut rest = s;
            while let Some(i) = rest.find(start) {
                let after = &rest[i + start.len()..];
                let value = after.split(end).next().unwrap_or_default().trim();
                if !value.is_empty() {
                    found = Some(value.to_owned());
                }
                rest = after;
            }
        }
    });
    found
}

fn walk_strings(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| walk_strings(x, f)),
        Value::Object(o) => o.values().for_each(|x| walk_strings(x, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_user_text_skips_injected_blocks() {
        let body = json!({"messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\nPrimary working directory: /w\n</system-reminder>"},
                {"type": "text", "text": "remember PELICAN"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": "ECHOFIRST now"}]});
        let conv = Conversation::parse(Dialect::Anthropic, &body);
        assert_eq!(conv.first_user_text().as_deref(), Some("remember PELICAN"));
        assert_eq!(conv.cwd(), Some("/w"));
        assert_eq!(
            conv.plan(Dialect::Anthropic).reply,
            Reply::Text("First message was: remember PELICAN".into())
        );
    }

    #[test]
    fn repeats_an_approved_call_from_the_last_message_only() {
        let ask = "The user has now approved it. Make exactly this tool call again:\n<tool name=\"Bash\">{\"command\":\"echo hi > x\"}</tool>";
        let body = json!({"messages": [
            {"role": "user", "content": "RUNCMD echo hi > x"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "interrupted"},
                {"type": "text", "text": ask}
            ]}
        ]});
        let conv = Conversation::parse(Dialect::Anthropic, &body);
        assert_eq!(
            conv.plan(Dialect::Anthropic).reply,
            Reply::Tool(ToolCall {
                name: "Bash".into(),
                input: json!({"command": "echo hi > x"}),
                custom: false
            })
        );
        // Once the call ran, its result is the last message: the model answers in text.
        let mut body = body;
        body["messages"].as_array_mut().unwrap().extend([
            json!({"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "Bash", "input": {}}]}),
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": ""}]}),
        ]);
        let conv = Conversation::parse(Dialect::Anthropic, &body);
        assert_eq!(
            conv.plan(Dialect::Anthropic).reply,
            Reply::Text("Wrote it.".into())
        );
    }

    #[test]
    fn rest_after_stops_at_line_end() {
        assert_eq!(
            rest_after("x WRITEFILE a.txt hi there\nmore", "WRITEFILE"),
            Some("a.txt hi there")
        );
        assert_eq!(word_after("SLEEP 300 then", "SLEEP"), Some("300"));
    }
}
