//! Reading Codex rollouts back: listing threads (`provider-sessions`), turning one into
//! transcript entries (Direct sessions, imports) and forking one into a new thread.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;

use baton_proto::ProviderSessionInfo;
use serde_json::Value;

use super::state::{find_rollouts, rollout_path, session_meta, walk_rollouts};
use super::{NAME, check_ref, is_injected_user_text, is_thread_id, rollout_id};
use crate::files::write_atomic;
use crate::{AgentEvent, ProviderError, ReadEntry, Result};

/// Every thread with a plain rollout under `codex_home`, newest first; unreadable rollouts are
/// skipped.
pub(super) fn list(codex_home: &Path) -> Vec<ProviderSessionInfo> {
    let mut out = Vec::new();
    walk_rollouts(codex_home, |path, name| {
        if !name.ends_with(".jsonl") || rollout_id(name).is_none() {
            return;
        }
        match summarise(path) {
            Ok(Some(info)) => out.push(info),
            Ok(None) => {}
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "rollout skipped"),
        }
    });
    out.sort_by_key(|b| std::cmp::Reverse(b.updated_at));
    out
}

/// Id, cwd, title (first real user message) and mtime of one rollout; reads only up to the
/// first user message.
fn summarise(path: &Path) -> std::io::Result<Option<ProviderSessionInfo>> {
    let file = fs::File::open(path)?;
    let updated_at = file
        .metadata()?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut lines = BufReader::new(file).lines();
    let Some(first) = lines.next().transpose()? else {
        return Ok(None);
    };
    let Ok(meta) = serde_json::from_str::<Value>(&first) else {
        return Ok(None);
    };
    if meta.get("type").and_then(Value::as_str) != Some("session_meta") {
        return Ok(None);
    }
    let payload = &meta["payload"];
    let (Some(id), Some(cwd)) = (
        payload.get("id").and_then(Value::as_str),
        payload.get("cwd").and_then(Value::as_str),
    ) else {
        return Ok(None);
    };
    let mut title = None;
    for line in lines {
        let Ok(v) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        if let Some(AgentEvent::User { text }) = to_event(&v, &mut 0) {
            title = Some(shorten(&text));
            break;
        }
    }
    Ok(Some(ProviderSessionInfo {
        provider: NAME.into(),
        provider_ref: id.into(),
        title,
        cwd: cwd.into(),
        updated_at,
    }))
}

/// The first line of a prompt, shortened for a listing.
fn shorten(prompt: &str) -> String {
    let line = prompt.lines().next().unwrap_or_default();
    if line.chars().count() > 80 {
        let cut: String = line.chars().take(79).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

/// The texts of a message's content parts of type `kind`, joined.
fn content_text(payload: &Value, kind: &str) -> String {
    payload
        .get("content")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some(kind))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The transcript event of one rollout line, if it is one; `turns` counts ended turns.
fn to_event(line: &Value, turns: &mut u64) -> Option<AgentEvent> {
    let payload = line.get("payload")?;
    let s = |k: &str| payload.get(k).and_then(Value::as_str);
    match (line.get("type")?.as_str()?, s("type")?) {
        ("response_item", "message") => match s("role")? {
            "user" => {
                let text = content_text(payload, "input_text");
                (!text.is_empty() && !is_injected_user_text(&text))
                    .then_some(AgentEvent::User { text })
            }
            "assistant" => {
                let text = content_text(payload, "output_text");
                (!text.is_empty()).then_some(AgentEvent::Assistant { text })
            }
            _ => None,
        },
        ("response_item", "function_call") => {
            let args = s("arguments").unwrap_or_default();
            Some(AgentEvent::ToolCall {
                name: s("name").unwrap_or("tool").into(),
                input: serde_json::from_str(args).unwrap_or_else(|_| Value::from(args)),
            })
        }
        ("response_item", "custom_tool_call") => Some(AgentEvent::ToolCall {
            name: s("name").unwrap_or("tool").into(),
            input: serde_json::json!({ "input": payload.get("input").cloned().unwrap_or(Value::Null) }),
        }),
        ("response_item", "function_call_output" | "custom_tool_call_output") => {
            let output = match payload.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => o
                    .get("content")
                    .and_then(Value::as_str)
                    .map_or_else(|| Value::Object(o.clone()).to_string(), str::to_string),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            Some(AgentEvent::ToolResult { output })
        }
        ("event_msg", "task_complete") => {
            *turns += 1;
            Some(AgentEvent::TurnEnd {
                turn: Some(*turns),
                interrupted: false,
                usage: None,
            })
        }
        ("event_msg", "turn_aborted") => {
            *turns += 1;
            Some(AgentEvent::TurnEnd {
                turn: Some(*turns),
                interrupted: true,
                usage: None,
            })
        }
        ("event_msg", "error") => Some(AgentEvent::Error {
            message: s("message").unwrap_or("codex error").into(),
        }),
        _ => None,
    }
}

/// Milliseconds since the epoch of an RFC 3339 UTC timestamp as Codex writes them
/// (`2026-11-25T04:09:33.297Z`).
fn parse_timestamp(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !ts.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = ts.get(19..ts.len() - 1).unwrap_or("");
    let ms = match frac.strip_prefix('.') {
        Some(f) if !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()) => {
            let f3: String = f.chars().chain("000".chars()).take(3).collect();
            f3.parse::<i64>().ok()?
        }
        None if frac.is_empty() => 0,
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

/// The thread as transcript entries, in rollout order.
pub(super) fn read(codex_home: &Path, id: &str) -> Result<Vec<ReadEntry>> {
    check_ref(id)?;
    let path = rollout_path(codex_home, id)?;
    let file = fs::File::open(&path)
        .map_err(|e| ProviderError::io(format!("open {}", path.display()), e))?;
    let mut out = Vec::new();
    let mut turns = 0;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| ProviderError::io(format!("read {}", path.display()), e))?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            tracing::debug!(path = %path.display(), "rollout line that is not JSON skipped");
            continue;
        };
        if let Some(event) = to_event(&v, &mut turns) {
            let at = v
                .get("timestamp")
                .and_then(Value::as_str)
                .and_then(parse_timestamp);
            out.push(ReadEntry { event, at });
        }
    }
    Ok(out)
}

/// Where a rollout prefix holding the first `turns` ended turns (all when `None`) ends, in
/// bytes: after the line that ends the last kept turn, or before the first turn's start when
/// no turn is kept. A turn still in progress at the end is never kept.
fn prefix_len(text: &str, turns: Option<usize>) -> usize {
    let mut ended = 0;
    let mut cut = None;
    let mut first_start = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let start = pos;
        pos += line.len();
        let Ok(v) = serde_json::from_str::<Value>(line.trim_end()) else {
            continue;
        };
        if v.get("type").and_then(Value::as_str) != Some("event_msg") {
            continue;
        }
        match v["payload"].get("type").and_then(Value::as_str) {
            Some("task_started") if first_start.is_none() => first_start = Some(start),
            Some("task_complete" | "turn_aborted") => {
                if turns.is_some_and(|n| ended >= n) {
                    break;
                }
                ended += 1;
                cut = Some(pos);
            }
            _ => {}
        }
    }
    cut.or(first_start).unwrap_or(text.len())
}

/// Copies the first `turns` turns of thread `id` into a new thread `new_id` (same workspace):
/// the rollout prefix with the thread id replaced everywhere, file name included.
pub(super) fn fork(
    codex_home: &Path,
    id: &str,
    new_id: &str,
    turns: Option<usize>,
) -> Result<String> {
    check_ref(id)?;
    if !is_thread_id(new_id) {
        return Err(ProviderError::InvalidBundle(format!(
            "{new_id:?} cannot be a Codex thread id (a UUID is needed)"
        )));
    }
    let new_id = new_id.to_ascii_lowercase();
    let src = rollout_path(codex_home, id)?;
    let text = fs::read_to_string(&src)
        .map_err(|e| ProviderError::io(format!("read {}", src.display()), e))?;
    session_meta(&text, id)
        .map_err(|e| ProviderError::Process(format!("{}: {e}", src.display())))?;
    let kept = &text[..prefix_len(&text, turns)];
    // A UUID holds only hex digits and `-`, which JSON never escapes: replacing it in the raw
    // text is the same as replacing it in every decoded string and key.
    let forked = kept.replace(id, &new_id);
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ProviderError::Process(format!("odd rollout name {}", src.display())))?
        .replace(id, &new_id);
    if let Some(existing) = find_rollouts(codex_home, &new_id).first() {
        return Err(ProviderError::TargetIdentityConflict {
            provider_ref: new_id,
            path: existing.display().to_string(),
        });
    }
    let dest = src.with_file_name(name);
    write_atomic(&dest, forked.as_bytes(), 0o600)?;
    Ok(new_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            parse_timestamp("2026-11-25T04:09:33.297Z"),
            Some(1_795_579_773_297)
        );
        assert_eq!(parse_timestamp("2026-11-25 04:09:33Z"), None);
        assert_eq!(parse_timestamp("garbage"), None);
    }

    #[test]
    fn prefixes() {
        let l = |t: &str| format!("{{\"type\":\"event_msg\",\"payload\":{{\"type\":\"{t}\"}}}}\n");
        let meta = "{\"type\":\"session_meta\",\"payload\":{}}\n";
        let text = format!(
            "{meta}{}{}{}{}{}{}",
            l("task_started"),
            l("task_complete"),
            l("task_started"),
            l("turn_aborted"),
            l("task_started"),
            l("token_count")
        );
        assert_eq!(prefix_len(&text, Some(0)), meta.len());
        assert_eq!(
            prefix_len(&text, Some(1)),
            meta.len() + l("task_started").len() + l("task_complete").len()
        );
        let two = text.find("\"turn_aborted\"").unwrap();
        let two = two + text[two..].find('\n').unwrap() + 1;
        assert_eq!(prefix_len(&text, Some(2)), two);
        assert_eq!(prefix_len(&text, Some(9)), two);
        assert_eq!(
            prefix_len(&text, None),
            two,
            "a turn in progress is dropped"
        );
    }
}
