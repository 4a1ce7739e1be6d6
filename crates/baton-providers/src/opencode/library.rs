//! Reading OpenCode conversations back (listing, transcripts) and forking one, from the JSON of
//! `opencode export` and rows of `opencode db`.

use std::time::{SystemTime, UNIX_EPOCH};

use baton_proto::ProviderSessionInfo;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::NAME;
use super::session::tool_events;
use crate::{AgentEvent, ReadEntry, Usage};

/// The SQL listing top-level sessions (subagent sessions have a `parent_id`), newest first.
/// `session list` would do, but it only shows the project of its working directory.
pub(super) const LIST_SQL: &str = "select id, title, directory, time_updated from session \
     where parent_id is null order by time_updated desc";

/// Rows of [`LIST_SQL`] as listing entries; malformed rows are skipped.
pub(super) fn sessions_from_rows(rows: &[Value]) -> Vec<ProviderSessionInfo> {
    let mut out: Vec<ProviderSessionInfo> = rows
        .iter()
        .filter_map(|r| {
            let id = r.get("id")?.as_str()?;
            if !super::is_valid_id("ses", id) {
                return None;
            }
            Some(ProviderSessionInfo {
                provider: NAME.into(),
                provider_ref: id.into(),
                title: r
                    .get("title")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
                cwd: r.get("directory")?.as_str()?.to_string(),
                updated_at: r.get("time_updated").and_then(Value::as_i64).unwrap_or(0),
            })
        })
        .collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.updated_at));
    out
}

/// The conversation of an export as transcript entries: each user message's text, then the
/// assistant's texts and tool calls/results, and a `TurnEnd` (with the turn's summed tokens)
/// before the next user message and at the end. Reasoning, step and patch parts are skipped,
/// as are synthetic user parts OpenCode injects (file contents, reminders).
pub(super) fn entries_from_export(export: &Value) -> Vec<ReadEntry> {
    let mut out = Vec::new();
    let mut turn = 0u64;
    let mut open: Option<(Usage, Option<i64>)> = None;
    let close = |out: &mut Vec<ReadEntry>, open: &mut Option<(Usage, Option<i64>)>, turn| {
        if let Some((usage, at)) = open.take() {
            out.push(ReadEntry {
                event: AgentEvent::TurnEnd {
                    turn: Some(turn),
                    interrupted: false,
                    usage: Some(usage),
                },
                at,
            });
        }
    };
    let messages = export
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for m in messages {
        let info = m.get("info").unwrap_or(&Value::Null);
        let created = info.pointer("/time/created").and_then(Value::as_i64);
        let parts = m
            .get("parts")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        match info.get("role").and_then(Value::as_str) {
            Some("user") => {
                close(&mut out, &mut open, turn);
                turn += 1;
                let text: Vec<&str> = parts
                    .iter()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                    .filter(|p| !p.get("synthetic").and_then(Value::as_bool).unwrap_or(false))
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                out.push(ReadEntry {
                    event: AgentEvent::User {
                        text: text.join("\n"),
                    },
                    at: created,
                });
            }
            Some("assistant") => {
                let (usage, at) = open.get_or_insert((Usage::default(), created));
                let tokens = info.get("tokens").unwrap_or(&Value::Null);
                let n = |k: &str| tokens.get(k).and_then(Value::as_u64).unwrap_or(0);
                usage.input_tokens += n("input");
                usage.output_tokens += n("output") + n("reasoning");
                *at = info
                    .pointer("/time/completed")
                    .and_then(Value::as_i64)
                    .or(created);
                for p in parts {
                    let events = match p.get("type").and_then(Value::as_str) {
                        Some("text") => p
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                            .map(|t| {
                                vec![AgentEvent::Assistant {
                                    text: t.to_string(),
                                }]
                            })
                            .unwrap_or_default(),
                        Some("tool") => tool_events(p),
                        _ => Vec::new(),
                    };
                    out.extend(
                        events
                            .into_iter()
                            .map(|event| ReadEntry { event, at: created }),
                    );
                }
            }
            _ => {}
        }
    }
    close(&mut out, &mut open, turn);
    out
}

/// A copy of `export` as a new session `new_id` holding the messages before the `turns + 1`-th
/// user message (all when `None`), with every message and part id replaced by a new one of the
/// same time prefix (so their order is kept) and every reference to the old ids updated.
pub(super) fn fork_export(export: &Value, new_id: &str, turns: Option<usize>) -> Value {
    let mut v = export.clone();
    let old_id = v
        .pointer("/info/id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let (Some(limit), Some(msgs)) = (turns, v.get_mut("messages").and_then(Value::as_array_mut))
    {
        let mut users = 0;
        let cut = msgs
            .iter()
            .position(|m| {
                if m.pointer("/info/role").and_then(Value::as_str) == Some("user") {
                    users += 1;
                }
                users > limit
            })
            .unwrap_or(msgs.len());
        msgs.truncate(cut);
    }
    let mut ids = std::collections::HashMap::new();
    ids.insert(old_id.clone(), new_id.to_string());
    for m in v
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut add = |id: Option<&str>| {
            if let Some(id) = id {
                ids.insert(id.to_string(), renew_id(id, new_id));
            }
        };
        add(m.pointer("/info/id").and_then(Value::as_str));
        for p in m
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            add(p.get("id").and_then(Value::as_str));
        }
    }
    replace_ids(&mut v, &ids);
    if let Some(info) = v.get_mut("info").and_then(Value::as_object_mut) {
        let title = info
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or("Session")
            .to_string();
        info.insert("title".into(), Value::String(format!("{title} (fork)")));
        // Undo state and share links belong to the original.
        info.remove("revert");
        info.remove("share");
        if let Some(time) = info.get_mut("time").and_then(Value::as_object_mut) {
            time.insert("updated".into(), Value::from(now_ms()));
        }
    }
    v
}

/// Replaces every string equal to an old id.
fn replace_ids(v: &mut Value, ids: &std::collections::HashMap<String, String>) {
    match v {
        Value::String(s) => {
            if let Some(new) = ids.get(s.as_str()) {
                *s = new.clone();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| replace_ids(x, ids)),
        Value::Object(o) => o.values_mut().for_each(|x| replace_ids(x, ids)),
        _ => {}
    }
}

/// `id` with its random tail replaced (derived from `salt`), keeping the prefix and the 12 hex
/// digits of time that OpenCode sorts by.
fn renew_id(id: &str, salt: &str) -> String {
    let Some((prefix, rest)) = id.split_once('_') else {
        return id.to_string();
    };
    if rest.len() <= 12 || !rest.is_ascii() {
        return id.to_string();
    }
    let tail = base62(&format!("{salt}\0{id}"), rest.len() - 12);
    format!("{prefix}_{}{tail}", &rest[..12])
}

/// A new session id as OpenCode makes them: `ses_`, 12 hex digits of the inverted
/// `ms * 4096 + counter` (newest sorts first), then 14 base62 characters.
pub(super) fn new_session_id(seed: &str) -> String {
    let now = u64::try_from(now_ms()).unwrap_or(0);
    let inverted = !(now.wrapping_mul(4096).wrapping_add(1)) & 0xffff_ffff_ffff;
    let tail = base62(&format!("{seed}\0{now}\0{}", std::process::id()), 14);
    format!("ses_{inverted:012x}{tail}")
}

/// `len` base62 characters derived from `seed`.
fn base62(seed: &str, len: usize) -> String {
    const CHARS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(len);
    let mut round = 0u32;
    while out.len() < len {
        let digest = Sha256::digest(format!("{round}\0{seed}").as_bytes());
        for b in digest.iter() {
            if out.len() == len {
                break;
            }
            out.push(char::from(CHARS[usize::from(*b) % CHARS.len()]));
        }
        round += 1;
    }
    out
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S: &str = "ses_def1b3a23ffecFm2f0UV4BVMo2";

    fn conv() -> Value {
        json!({
            "info": {"id": S, "title": "T", "time": {"created": 1, "updated": 2}},
            "messages": [
                {"info": {"id": "msg_210e4c634001etz6clB0pde75h", "sessionID": S, "role": "user", "time": {"created": 10}},
                 "parts": [{"id": "prt_210e4c63f001ubKS2ShGpB7g8K", "sessionID": S, "messageID": "msg_210e4c634001etz6clB0pde75h", "type": "text", "text": "first"},
                           {"id": "prt_210e4c63f002ubKS2ShGpB7g8K", "sessionID": S, "messageID": "msg_210e4c634001etz6clB0pde75h", "type": "text", "text": "injected", "synthetic": true}]},
                {"info": {"id": "msg_210e4cbc3001gnBAAZlkYNtwst", "sessionID": S, "parentID": "msg_210e4c634001etz6clB0pde75h", "role": "assistant", "time": {"created": 11, "completed": 12}, "tokens": {"input": 30, "output": 15}, "finish": "tool-calls"},
                 "parts": [{"id": "prt_210e4d0a9001gsaz0PM4j06TVe", "type": "step-start"},
                           {"id": "prt_210e4d0b0001b80KjKvuTnfOa2", "type": "tool", "tool": "write", "state": {"status": "completed", "input": {"filePath": "/w/b.txt"}, "output": "ok"}}]},
                {"info": {"id": "msg_210e4d113001H4FmHRw5KCDJaa", "sessionID": S, "role": "assistant", "time": {"created": 13, "completed": 14}, "tokens": {"input": 40, "output": 5}, "finish": "stop"},
                 "parts": [{"id": "prt_210e4d1730018lrIIs3rfww5SX", "type": "text", "text": "Wrote it."}]},
                {"info": {"id": "msg_210e5bf4f001zZOGOe6mPw59DN", "sessionID": S, "role": "user", "time": {"created": 20}},
                 "parts": [{"id": "prt_210e5c85f001i8TedWYmmWVLGg", "type": "text", "text": "second"}]}
            ]
        })
    }

    #[test]
    fn transcript() {
        let entries: Vec<AgentEvent> = entries_from_export(&conv())
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(
            entries,
            vec![
                AgentEvent::User {
                    text: "first".into()
                },
                AgentEvent::ToolCall {
                    name: "write".into(),
                    input: json!({"filePath": "/w/b.txt"})
                },
                AgentEvent::ToolResult {
                    output: "ok".into()
                },
                AgentEvent::Assistant {
                    text: "Wrote it.".into()
                },
                AgentEvent::TurnEnd {
                    turn: Some(1),
                    interrupted: false,
                    usage: Some(Usage {
                        input_tokens: 70,
                        output_tokens: 20
                    })
                },
                AgentEvent::User {
                    text: "second".into()
                },
            ]
        );
    }

    #[test]
    fn fork_cuts_and_renames() {
        let new_id = new_session_id("x");
        assert!(super::super::is_valid_id("ses", &new_id), "{new_id}");
        let f = fork_export(&conv(), &new_id, Some(1));
        let msgs = f["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(f["info"]["id"], json!(new_id));
        assert_eq!(f["info"]["title"], json!("T (fork)"));
        let text = f.to_string();
        assert!(!text.contains(S));
        for old in [
            "msg_210e4c634001etz6clB0pde75h",
            "prt_210e4d0b0001b80KjKvuTnfOa2",
        ] {
            assert!(!text.contains(old), "{old} survived");
        }
        // References follow the renamed ids; time prefixes (the sort order) are kept.
        let user_id = msgs[0]["info"]["id"].as_str().unwrap();
        assert_eq!(msgs[1]["info"]["parentID"], json!(user_id));
        assert!(user_id.starts_with("msg_210e4c634001"));
        assert_eq!(msgs[0]["parts"][0]["messageID"], json!(user_id));
        assert_eq!(msgs[0]["parts"][0]["sessionID"], json!(new_id));
        assert_eq!(
            fork_export(&conv(), &new_id, None)["messages"]
                .as_array()
                .unwrap()
                .len(),
            4
        );
        assert_eq!(
            fork_export(&conv(), &new_id, Some(0))["messages"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn listing_rows() {
        let rows = vec![
            json!({"id": S, "title": "old", "directory": "/w", "time_updated": 5}),
            json!({"id": "ses_def1aab5dffeVZ5AKh5diNEln6", "title": "", "directory": "/v", "time_updated": 9}),
            json!({"id": "bogus", "directory": "/x", "time_updated": 1}),
            json!({"id": "ses_def182b07ffetJ9w3VgvPmThaM"}),
        ];
        let list = sessions_from_rows(&rows);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].provider_ref, "ses_def1aab5dffeVZ5AKh5diNEln6");
        assert_eq!(list[0].title, None);
        assert_eq!(list[1].cwd, "/w");
    }
}
