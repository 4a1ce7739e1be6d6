//! The message Baton sends an agent when a person approves a tool call whose request was asked
//! by a process that is gone (the session moved to another machine, or its daemon restarted):
//! the agent is asked to make the same call again, and the runner approves that call without
//! asking twice.

use serde_json::Value;

/// The sentence that introduces the call to repeat.
const ASK: &str = "Make exactly this tool call again:";

/// The message asking the agent to repeat the approved call `tool(input)`.
pub fn retry_prompt(tool: &str, input: &Value) -> String {
    format!(
        "Your request to use a tool was still waiting for approval when this session's agent \
         process stopped (the session moved to another machine, or its daemon restarted), so the \
         call did not run. The user has now approved it. {ASK}\n<tool name=\"{tool}\">{input}</tool>"
    )
}

/// The call a [`retry_prompt`] asks for, if `text` is one.
pub fn parse_retry_prompt(text: &str) -> Option<(String, Value)> {
    let rest = &text[text.find(ASK)? + ASK.len()..];
    let rest = &rest[rest.find("<tool name=\"")? + "<tool name=\"".len()..];
    let (name, rest) = rest.split_once("\">")?;
    let body = rest.strip_suffix("</tool>").or_else(|| {
        let end = rest.rfind("</tool>")?;
        Some(&rest[..end])
    })?;
    let input = serde_json::from_str(body).ok()?;
    Some((name.to_string(), input))
}

/// One line saying what a tool call does, for a person deciding on it: the command, or the
/// path, or the input itself, shortened.
pub fn describe(tool: &str, input: &Value) -> String {
    const MAX: usize = 200;
    let detail = [
        "command",
        "cmd",
        "file_path",
        "filePath",
        "path",
        "url",
        "pattern",
    ]
    .iter()
    .find_map(|k| match input.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(parts)) => Some(
            parts
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    })
    .unwrap_or_else(|| input.to_string());
    let mut detail = detail.replace('\n', " ");
    if detail.chars().count() > MAX {
        detail = detail.chars().take(MAX).collect::<String>() + "…";
    }
    format!("{tool}: {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn retry_prompt_round_trips() {
        for input in [
            json!({"command": "echo '</tool>' > a.txt", "description": "x"}),
            json!({"text": "hi\nthere"}),
            json!(null),
        ] {
            let p = retry_prompt("Bash", &input);
            assert_eq!(parse_retry_prompt(&p), Some(("Bash".to_string(), input)));
        }
        assert_eq!(parse_retry_prompt("Make exactly this tool call"), None);
        assert_eq!(parse_retry_prompt("hello"), None);
    }

    #[test]
    fn describe_prefers_the_command_or_path() {
        assert_eq!(
            describe(
                "Bash",
                &json!({"command": "ls -la\npwd", "description": "d"})
            ),
            "Bash: ls -la pwd"
        );
        assert_eq!(
            describe("Write", &json!({"file_path": "/w/a.txt", "content": "x"})),
            "Write: /w/a.txt"
        );
        assert_eq!(
            describe("shell", &json!({"command": ["bash", "-lc", "ls"]})),
            "shell: bash -lc ls"
        );
        assert_eq!(
            describe("echo", &json!({"text": "hi"})),
            "echo: {\"text\":\"hi\"}"
        );
        assert!(describe("x", &json!({"command": "a".repeat(500)})).ends_with('…'));
    }
}
