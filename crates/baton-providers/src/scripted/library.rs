//! Reading the scripted agent's conversation files back: listing them (`provider-sessions`),
//! turning one into transcript entries (Direct sessions, imports) and forking one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use baton_proto::ProviderSessionInfo;
use serde_json::Value;

use super::{NAME, check_ref, session_rel_path};
use crate::{AgentEvent, ProviderError, ReadEntry, Result};

/// A parsed conversation file.
struct Conversation {
    /// The meta line.
    meta: Value,
    /// The `turn` lines, in order.
    turns: Vec<Value>,
}

fn parse(path: &Path) -> Result<Conversation> {
    let text = fs::read_to_string(path)
        .map_err(|e| ProviderError::io(format!("read {}", path.display()), e))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let bad = |why: &str| ProviderError::Process(format!("{} is corrupt: {why}", path.display()));
    let meta: Value = serde_json::from_str(lines.next().ok_or_else(|| bad("empty file"))?)
        .map_err(|e| bad(&e.to_string()))?;
    if meta.get("type").and_then(Value::as_str) != Some("meta") {
        return Err(bad("first line is not meta"));
    }
    let mut turns = Vec::new();
    for line in lines {
        let v: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        if v.get("type").and_then(Value::as_str) == Some("turn") {
            turns.push(v);
        }
    }
    Ok(Conversation { meta, turns })
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Every conversation under `state/projects/*/`, newest first; unreadable files are skipped.
pub(super) fn list(state: &Path) -> Result<Vec<ProviderSessionInfo>> {
    let projects = state.join("projects");
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
            if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
                continue;
            }
            let conv = match parse(&path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "skipping a scripted conversation");
                    continue;
                }
            };
            let (Some(id), Some(cwd)) =
                (str_of(&conv.meta, "session_id"), str_of(&conv.meta, "cwd"))
            else {
                continue;
            };
            let created = conv
                .meta
                .get("created_at")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let updated = conv
                .turns
                .last()
                .and_then(|t| t.get("at").and_then(Value::as_i64))
                .unwrap_or(created);
            out.push(ProviderSessionInfo {
                provider: NAME.into(),
                provider_ref: id.into(),
                title: conv
                    .turns
                    .first()
                    .and_then(|t| str_of(t, "user"))
                    .map(title),
                cwd: cwd.into(),
                updated_at: updated,
            });
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.updated_at));
    Ok(out)
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

/// The conversation as transcript entries: per turn, the user's message, the reply and its end.
pub(super) fn read(state: &Path, workspace: &str, provider_ref: &str) -> Result<Vec<ReadEntry>> {
    check_ref(provider_ref)?;
    let path = state.join(session_rel_path(workspace, provider_ref));
    if !path.is_file() {
        return Err(ProviderError::StateMissing {
            provider: NAME.into(),
            provider_ref: provider_ref.into(),
        });
    }
    let conv = parse(&path)?;
    let mut out = Vec::with_capacity(conv.turns.len() * 3);
    for turn in &conv.turns {
        let at = turn.get("at").and_then(Value::as_i64);
        let entry = |event| ReadEntry { event, at };
        out.push(entry(AgentEvent::User {
            text: str_of(turn, "user").unwrap_or_default().into(),
        }));
        out.push(entry(AgentEvent::Assistant {
            text: str_of(turn, "reply").unwrap_or_default().into(),
        }));
        out.push(entry(AgentEvent::TurnEnd {
            turn: turn.get("n").and_then(Value::as_u64),
            interrupted: false,
            usage: None,
        }));
    }
    Ok(out)
}

/// Copies the conversation's meta (with the new id) and first `turns` turns into a new file.
pub(super) fn fork(
    state: &Path,
    workspace: &str,
    provider_ref: &str,
    new_ref: &str,
    turns: Option<usize>,
) -> Result<String> {
    check_ref(provider_ref)?;
    check_ref(new_ref)?;
    let src = state.join(session_rel_path(workspace, provider_ref));
    if !src.is_file() {
        return Err(ProviderError::StateMissing {
            provider: NAME.into(),
            provider_ref: provider_ref.into(),
        });
    }
    let conv = parse(&src)?;
    let mut meta = conv.meta;
    meta["session_id"] = Value::from(new_ref);
    meta["forked_from"] = Value::from(provider_ref);
    let keep = turns.unwrap_or(conv.turns.len()).min(conv.turns.len());
    let mut text = format!("{meta}\n");
    for t in &conv.turns[..keep] {
        text.push_str(&format!("{t}\n"));
    }
    let dest: PathBuf = state.join(session_rel_path(workspace, new_ref));
    if let Some(dir) = dest.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ProviderError::io(format!("create {}", dir.display()), e))?;
    }
    // create_new: a fork never overwrites a conversation.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&dest)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => ProviderError::TargetIdentityConflict {
                provider_ref: new_ref.into(),
                path: dest.display().to_string(),
            },
            _ => ProviderError::io(format!("create {}", dest.display()), e),
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| ProviderError::io(format!("write {}", dest.display()), e))?;
    Ok(new_ref.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_conv(state: &Path, ws: &str, id: &str, turns: &[&str]) {
        let path = state.join(session_rel_path(ws, id));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut text = format!(
            "{}\n",
            serde_json::json!({"type":"meta","session_id":id,"cwd":ws,"created_at":5})
        );
        for (i, u) in turns.iter().enumerate() {
            text.push_str(&format!(
                "{}\n",
                serde_json::json!({"type":"turn","n":i+1,"cwd":ws,"user":u,"reply":format!("r{i}"),"at":10+i})
            ));
        }
        fs::write(path, text).unwrap();
    }

    #[test]
    fn list_read_and_fork() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        write_conv(state, "/w/a", "s1", &["hello", "again"]);
        write_conv(state, "/w/b", "s2", &[]);
        let listed = list(state).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].provider_ref, "s1", "newest first");
        assert_eq!(listed[0].title.as_deref(), Some("hello"));
        assert_eq!(listed[0].cwd, "/w/a");
        assert_eq!(listed[1].title, None);

        let entries = read(state, "/w/a", "s1").unwrap();
        assert_eq!(entries.len(), 6);
        assert_eq!(
            entries[0].event,
            AgentEvent::User {
                text: "hello".into()
            }
        );

        assert_eq!(fork(state, "/w/a", "s1", "s3", Some(1)).unwrap(), "s3");
        let forked = read(state, "/w/a", "s3").unwrap();
        assert_eq!(forked.len(), 3);
        assert!(matches!(
            fork(state, "/w/a", "s1", "s3", None),
            Err(ProviderError::TargetIdentityConflict { .. })
        ));
        assert!(matches!(
            read(state, "/w/a", "nope"),
            Err(ProviderError::StateMissing { .. })
        ));
    }
}
