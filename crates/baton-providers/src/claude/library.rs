//! Reading Claude transcripts back: listing them (`provider-sessions`), turning one into
//! transcript entries (Direct sessions, imports) and forking one.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;

use baton_proto::ProviderSessionInfo;
use serde_json::Value;

use super::session::result_text;
use super::state::find_transcript;
use super::{NAME, check_ref, is_valid_session_id};
use crate::files::write_atomic;
use crate::rewrite::PathMap;
use crate::{AgentEvent, ProviderError, ReadEntry, Result};

/// Text Claude records as a user message when a turn is interrupted.
const INTERRUPTED_MARK: &str = "[Request interrupted";

/// What one transcript line means for the conversation.
enum Line {
    /// A prompt typed by the user (starts a turn).
    Prompt(String),
    /// The user's turn was interrupted.
    Interrupted,
    /// Other conversation events (assistant text, tool calls and results).
    Events(Vec<AgentEvent>),
    /// Anything else (metadata, attachments, subagent lines, unknown types).
    Other,
}

/// Classifies one parsed transcript line.
fn classify(v: &Value) -> Line {
    if v["isSidechain"] == true || v["isMeta"] == true {
        return Line::Other;
    }
    let content = &v["message"]["content"];
    match v["type"].as_str().unwrap_or_default() {
        "user" => {
            if let Some(text) = content.as_str() {
                return prompt(text);
            }
            let Some(blocks) = content.as_array() else {
                return Line::Other;
            };
            let results: Vec<AgentEvent> = blocks
                .iter()
                .filter(|b| b["type"] == "tool_result")
                .map(|b| AgentEvent::ToolResult {
                    output: result_text(&b["content"]),
                })
                .collect();
            if !results.is_empty() {
                return Line::Events(results);
            }
            let text: Vec<&str> = blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str())
                .collect();
            if text.is_empty() {
                Line::Other
            } else {
                prompt(&text.join("\n"))
            }
        }
        "assistant" => Line::Events(
            content
                .as_array()
                .into_iter()
                .flatten()
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
        ),
        _ => Line::Other,
    }
}

fn prompt(text: &str) -> Line {
    if text.starts_with(INTERRUPTED_MARK) {
        Line::Interrupted
    } else {
        Line::Prompt(text.to_string())
    }
}

/// The lines of a transcript, parsed; lines that are not JSON are skipped (a crash can leave a
/// torn last line).
fn lines(path: &Path) -> Result<impl Iterator<Item = (String, Value)>> {
    let file = fs::File::open(path)
        .map_err(|e| ProviderError::io(format!("open {}", path.display()), e))?;
    Ok(BufReader::new(file)
        .lines()
        .map_while(std::result::Result::ok)
        .filter_map(|l| {
            let v = serde_json::from_str::<Value>(&l).ok()?;
            Some((l, v))
        }))
}

/// Milliseconds since the epoch of an ISO-8601 UTC timestamp (`2026-11-24T21:58:36.178Z`).
fn parse_millis(ts: &str) -> Option<i64> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{:0<3}", frac).get(..3)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + min * 60 + s) * 1000) + ms)
}

/// The first line of a prompt, shortened for a listing.
fn title(prompt: &str) -> String {
    let line = prompt.lines().next().unwrap_or_default();
    if line.chars().count() > 80 {
        let cut: String = line.chars().take(79).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

/// Every transcript under `cfg/projects/*/`, newest first; unreadable files are skipped.
pub(super) fn list(cfg: &Path) -> Result<Vec<ProviderSessionInfo>> {
    let projects = cfg.join("projects");
    let dirs = match fs::read_dir(&projects) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ProviderError::io(format!("read {}", projects.display()), e)),
    };
    let mut out = Vec::new();
    for dir in dirs.flatten() {
        let Ok(files) = fs::read_dir(dir.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jsonl"))
                .filter(|id| is_valid_session_id(id))
            else {
                continue;
            };
            match summarize(&path, id) {
                Ok(Some(info)) => out.push(info),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "skipping a Claude transcript"),
            }
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.updated_at));
    Ok(out)
}

/// One transcript's listing entry; `None` when it holds no conversation (no cwd).
fn summarize(path: &Path, id: &str) -> Result<Option<ProviderSessionInfo>> {
    let (mut cwd, mut first, mut updated) = (None, None, None);
    for (_, v) in lines(path)? {
        if cwd.is_none() {
            cwd = v["cwd"].as_str().map(str::to_string);
        }
        if first.is_none()
            && let Line::Prompt(text) = classify(&v)
        {
            first = Some(title(&text));
        }
        if let Some(at) = v["timestamp"].as_str().and_then(parse_millis) {
            updated = Some(updated.map_or(at, |u: i64| u.max(at)));
        }
    }
    let Some(cwd) = cwd else { return Ok(None) };
    let updated_at = match updated {
        Some(u) => u,
        None => fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .unwrap_or(0),
    };
    Ok(Some(ProviderSessionInfo {
        provider: NAME.into(),
        provider_ref: id.into(),
        title: first,
        cwd,
        updated_at,
    }))
}

fn missing(id: &str) -> ProviderError {
    ProviderError::StateMissing {
        provider: NAME.into(),
        provider_ref: id.into(),
    }
}

/// The conversation as transcript entries: per turn the prompt, the agent's text, tool calls
/// and results, and a `TurnEnd`.
pub(super) fn read(cfg: &Path, ws: &str, id: &str) -> Result<Vec<ReadEntry>> {
    check_ref(id)?;
    let path = find_transcript(cfg, ws, id).ok_or_else(|| missing(id))?;
    let mut out = Vec::new();
    let mut turn = 0u64;
    let mut open: Option<(bool, Option<i64>)> = None;
    let end = |turn, interrupted, at| ReadEntry {
        event: AgentEvent::TurnEnd {
            turn: Some(turn),
            interrupted,
            usage: None,
        },
        at,
    };
    for (_, v) in lines(&path)? {
        let at = v["timestamp"].as_str().and_then(parse_millis);
        match classify(&v) {
            Line::Prompt(text) => {
                if let Some((interrupted, last)) = open.take() {
                    out.push(end(turn, interrupted, last));
                }
                turn += 1;
                open = Some((false, at));
                out.push(ReadEntry {
                    event: AgentEvent::User { text },
                    at,
                });
            }
            Line::Interrupted => {
                if let Some(o) = open.as_mut() {
                    *o = (true, at.or(o.1));
                }
            }
            Line::Events(events) => {
                if let Some(o) = open.as_mut() {
                    o.1 = at.or(o.1);
                }
                out.extend(events.into_iter().map(|event| ReadEntry { event, at }));
            }
            Line::Other => {}
        }
    }
    if let Some((interrupted, last)) = open {
        out.push(end(turn, interrupted, last));
    }
    Ok(out)
}

/// Copies the transcript (and its `<id>/` dir) into a new session `new_id` in the same project
/// dir, keeping the lines before the prompt of turn `turns + 1`; every occurrence of the old id
/// (its `sessionId` fields, paths into its `<id>/` dir) becomes the new one.
pub(super) fn fork(
    cfg: &Path,
    ws: &str,
    id: &str,
    new_id: &str,
    turns: Option<usize>,
) -> Result<String> {
    check_ref(id)?;
    check_ref(new_id)?;
    let src = find_transcript(cfg, ws, id).ok_or_else(|| missing(id))?;
    let project = src.parent().expect("a transcript lies in a project dir");
    let dest = project.join(format!("{new_id}.jsonl"));
    if dest.exists() || find_transcript(cfg, ws, new_id).is_some() {
        return Err(ProviderError::TargetIdentityConflict {
            provider_ref: new_id.into(),
            path: dest.display().to_string(),
        });
    }
    let map = PathMap::new(Vec::<(String, String)>::new()).with_tokens(vec![(id, new_id)]);
    let all: Vec<(String, Value)> = lines(&src)?.collect();
    let mut cut = all.len();
    if let Some(keep) = turns {
        let mut prompts = 0;
        if let Some(i) = all.iter().position(|(_, v)| {
            prompts += usize::from(matches!(classify(v), Line::Prompt(_)));
            prompts > keep
        }) {
            // The prompt's own `queue-operation` lines belong to the dropped turn.
            cut = i;
            while cut > 0 && all[cut - 1].1["type"] == "queue-operation" {
                cut -= 1;
            }
        }
    }
    let mut text = String::new();
    for (line, _) in &all[..cut] {
        text.push_str(line);
        text.push('\n');
    }
    let text = map.rewrite_jsonl(&text)?;
    copy_dir_rewritten(&project.join(id), &project.join(new_id), &map)?;
    write_atomic(&dest, text.as_bytes(), 0o600)?;
    Ok(new_id.to_string())
}

/// Copies `src` (if it exists) to `dest`, rewriting JSONL files with `map`.
fn copy_dir_rewritten(src: &Path, dest: &Path, map: &PathMap) -> Result<()> {
    let entries = match fs::read_dir(src) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ProviderError::io(format!("list {}", src.display()), e)),
    };
    for entry in entries.flatten() {
        let (from, to) = (entry.path(), dest.join(entry.file_name()));
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            copy_dir_rewritten(&from, &to, map)?;
        } else if kind.is_file() {
            let data = fs::read(&from)
                .map_err(|e| ProviderError::io(format!("read {}", from.display()), e))?;
            let data = match std::str::from_utf8(&data) {
                Ok(t) if from.extension().is_some_and(|e| e == "jsonl") => {
                    map.rewrite_jsonl(t)?.into_bytes()
                }
                _ => data,
            };
            write_atomic(&to, &data, 0o600)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_millis("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_millis("2026-11-24T21:58:36.178Z"),
            Some(1_795_557_516_178)
        );
        assert_eq!(parse_millis("2000-03-01T00:00:01Z"), Some(951_868_801_000));
        assert_eq!(parse_millis("2026-11-24 21:58:36Z"), None);
        assert_eq!(parse_millis("nope"), None);
    }
}
