//! Moving OpenCode sessions: bundles of `opencode export` JSON, rewritten for the target and
//! staged as files, then put in place with `opencode session delete` / `opencode import`.

use std::collections::{HashMap, HashSet};
use std::fs::{self};
use std::path::{Path, PathBuf};

use baton_proto::ws::ProviderBundle;
use serde_json::{Value, json};

use super::{BUNDLE_DIR, BUNDLE_FORMAT, NAME, check_ref, is_valid_id};
use crate::files::{check_bundle_header, write_atomic};
use crate::rewrite::PathMap;
use crate::{ProviderError, Result};

/// Name of the staged plan file (beside the staged exports).
pub(super) const PLAN_FILE: &str = "import.json";

/// How an export already on the target relates to an incoming one of the same session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportCompare {
    /// The same messages and parts: importing again changes nothing.
    Same,
    /// Every message and part here is also in the incoming export (which may have more or newer
    /// versions of them): a stale copy of the same conversation, e.g. the state this machine
    /// held before the session moved away and came back. Replacing it loses nothing.
    Extends,
    /// This machine has messages or parts the incoming export lacks: a different or diverged
    /// conversation under the same id. Replacing it would lose them.
    Diverged,
}

/// Compares the export of a session found on the target with the incoming (rewritten) one.
pub fn compare_exports(existing: &Value, incoming: &Value) -> ExportCompare {
    let messages = |v: &Value| v.get("messages").and_then(Value::as_array).cloned();
    let (Some(old), Some(new)) = (messages(existing), messages(incoming)) else {
        return ExportCompare::Diverged;
    };
    if old == new {
        return ExportCompare::Same;
    }
    let ids = |msgs: &[Value]| -> HashSet<String> {
        let mut out = HashSet::new();
        for m in msgs {
            if let Some(id) = m.pointer("/info/id").and_then(Value::as_str) {
                out.insert(id.to_string());
            }
            for p in m
                .get("parts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(id) = p.get("id").and_then(Value::as_str) {
                    out.insert(id.to_string());
                }
            }
        }
        out
    };
    if ids(&old).is_subset(&ids(&new)) {
        ExportCompare::Extends
    } else {
        ExportCompare::Diverged
    }
}

/// Parses one export (`{info, messages:[{info, parts}]}`), checks that it is the session
/// `expected_id` and that every message and part belongs to it, and rewrites every string in it
/// (keys included) with `map`. Returns the rewritten document.
pub fn rewrite_export(text: &str, expected_id: &str, map: &PathMap) -> Result<Value> {
    let invalid = |m: String| ProviderError::InvalidBundle(m);
    let mut v: Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("export of {expected_id} is not JSON: {e}")))?;
    check_export(&v, expected_id)?;
    map.rewrite_json(&mut v);
    Ok(v)
}

/// Checks the shape and identity of an export.
fn check_export(v: &Value, expected_id: &str) -> Result<()> {
    let invalid = |m: String| ProviderError::InvalidBundle(m);
    let id = v.pointer("/info/id").and_then(Value::as_str);
    if id != Some(expected_id) {
        return Err(invalid(format!(
            "export holds session {id:?}, expected {expected_id}"
        )));
    }
    let messages = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("export of {expected_id} has no messages list")))?;
    for m in messages {
        let mid = m.pointer("/info/id").and_then(Value::as_str).unwrap_or("");
        let sid = m.pointer("/info/sessionID").and_then(Value::as_str);
        if !is_valid_id("msg", mid) || sid != Some(expected_id) {
            return Err(invalid(format!(
                "export of {expected_id} holds message {mid:?} of session {sid:?}"
            )));
        }
        let parts = m
            .get("parts")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid(format!("message {mid} has no parts list")))?;
        for p in parts {
            let pid = p.get("id").and_then(Value::as_str).unwrap_or("");
            if !is_valid_id("prt", pid)
                || p.get("messageID").and_then(Value::as_str) != Some(mid)
                || p.get("sessionID").and_then(Value::as_str) != Some(expected_id)
            {
                return Err(invalid(format!(
                    "part {pid:?} in message {mid} does not belong to it"
                )));
            }
        }
    }
    Ok(())
}

/// The session ids of a bundle's files, main session first, parents before children. Refuses
/// unexpected paths, duplicates and children that do not descend from the main session.
pub(super) fn bundle_order(bundle: &ProviderBundle) -> Result<Vec<(String, Value)>> {
    let invalid = |m: String| ProviderError::InvalidBundle(m);
    check_bundle_header(bundle, NAME, BUNDLE_FORMAT)?;
    check_ref(&bundle.provider_ref)?;
    let mut docs: HashMap<String, Value> = HashMap::new();
    for file in &bundle.files {
        let id = file
            .path
            .strip_prefix(BUNDLE_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|r| r.strip_suffix(".json"))
            .filter(|id| is_valid_id("ses", id))
            .ok_or_else(|| {
                invalid(format!(
                    "unexpected file {:?} (want {BUNDLE_DIR}/ses_….json)",
                    file.path
                ))
            })?;
        let text = std::str::from_utf8(&file.data.0)
            .map_err(|_| invalid(format!("{} is not UTF-8", file.path)))?;
        let v: Value = serde_json::from_str(text)
            .map_err(|e| invalid(format!("{} is not JSON: {e}", file.path)))?;
        check_export(&v, id)?;
        if docs.insert(id.to_string(), v).is_some() {
            return Err(invalid(format!("file {:?} appears twice", file.path)));
        }
    }
    let main = docs.remove(&bundle.provider_ref).ok_or_else(|| {
        invalid(format!(
            "bundle lacks {BUNDLE_DIR}/{}.json",
            bundle.provider_ref
        ))
    })?;
    let mut order = vec![(bundle.provider_ref.clone(), main)];
    // Children in breadth-first order from the main session.
    let mut i = 0;
    while i < order.len() {
        let parent = order[i].0.clone();
        let mut children: Vec<String> = docs
            .iter()
            .filter(|(_, v)| v.pointer("/info/parentID").and_then(Value::as_str) == Some(&parent))
            .map(|(id, _)| id.clone())
            .collect();
        children.sort();
        for id in children {
            if let Some(v) = docs.remove(&id) {
                order.push((id, v));
            }
        }
        i += 1;
    }
    if let Some(stray) = docs.keys().next() {
        return Err(invalid(format!(
            "session {stray} in the bundle does not descend from {}",
            bundle.provider_ref
        )));
    }
    Ok(order)
}

/// What activation does, written beside the staged exports.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Plan {
    pub(super) format: u32,
    pub(super) provider_ref: String,
    /// Where to run `opencode import` (the session's new directory).
    pub(super) workspace: String,
    /// Session ids to import, parents first; each staged as `<id>.json`.
    pub(super) order: Vec<String>,
}

/// Writes the rewritten exports and the plan under `staging/opencode/`.
pub(super) fn write_staging(staging: &Path, plan: &Plan, docs: &[(String, Value)]) -> Result<()> {
    let dir = staging.join(BUNDLE_DIR);
    for (id, v) in docs {
        let data = serde_json::to_vec_pretty(v)
            .map_err(|e| ProviderError::Process(format!("cannot encode {id}: {e}")))?;
        write_atomic(&dir.join(format!("{id}.json")), &data, 0o600)?;
    }
    let data = serde_json::to_vec_pretty(&json!(plan))
        .map_err(|e| ProviderError::Process(format!("cannot encode the plan: {e}")))?;
    write_atomic(&dir.join(PLAN_FILE), &data, 0o600)
}

/// One staged export: session id, file, parsed content.
pub(super) type StagedExport = (String, PathBuf, Value);

/// Reads the plan and staged exports back; `None` when nothing is staged (already activated).
pub(super) fn read_staging(staging: &Path) -> Result<Option<(Plan, Vec<StagedExport>)>> {
    let dir = staging.join(BUNDLE_DIR);
    let plan_path = dir.join(PLAN_FILE);
    let text = match fs::read_to_string(&plan_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ProviderError::io(
                format!("read {}", plan_path.display()),
                e,
            ));
        }
    };
    let plan: Plan = serde_json::from_str(&text)
        .map_err(|e| ProviderError::InvalidBundle(format!("staged plan is corrupt: {e}")))?;
    if plan.format != BUNDLE_FORMAT || plan.order.first() != Some(&plan.provider_ref) {
        return Err(ProviderError::InvalidBundle(
            "staged plan is corrupt".into(),
        ));
    }
    let mut docs = Vec::with_capacity(plan.order.len());
    for id in &plan.order {
        check_ref(id)?;
        let path = dir.join(format!("{id}.json"));
        let text = fs::read_to_string(&path)
            .map_err(|e| ProviderError::io(format!("read {}", path.display()), e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| ProviderError::InvalidBundle(format!("staged {id} is corrupt: {e}")))?;
        check_export(&v, id)?;
        docs.push((id.clone(), path, v));
    }
    Ok(Some((plan, docs)))
}

/// True when a process other than us runs `opencode` with `id` among its arguments (a `run -s
/// id` or a TUI opened on it). Linux `/proc` only; elsewhere, or for a TUI that picked the
/// session interactively, nothing is found.
pub(super) fn foreign_run_alive(id: &str) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let is_pid = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            return false;
        }
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let mentions_id = args.contains(&id.as_bytes());
        let is_opencode = args.iter().take(3).any(|a| {
            String::from_utf8_lossy(a)
                .rsplit('/')
                .next()
                .is_some_and(|b| b.starts_with("opencode"))
        });
        // `export` and `db` of our own are short and harmless; only runs hold the session.
        mentions_id && is_opencode && !args.contains(&b"export".as_slice())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::Bytes;
    use baton_proto::ws::BundleFile;

    fn export(id: &str, parent: Option<&str>, msgs: &[(&str, &[&str])]) -> Value {
        let messages: Vec<Value> = msgs
            .iter()
            .map(|(m, parts)| {
                json!({
                    "info": {"id": m, "sessionID": id, "role": "user"},
                    "parts": parts.iter().map(|p| json!({
                        "id": p, "messageID": m, "sessionID": id, "type": "text", "text": "x"
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut info = json!({"id": id, "directory": "/home/a/ws"});
        if let Some(p) = parent {
            info["parentID"] = json!(p);
        }
        json!({"info": info, "messages": messages})
    }

    const S1: &str = "ses_def1b3a23ffecFm2f0UV4BVMo2";
    const S2: &str = "ses_def1aab5dffeVZ5AKh5diNEln6";
    const S3: &str = "ses_def182b07ffetJ9w3VgvPmThaM";
    const M1: &str = "msg_210e4c634001etz6clB0pde75h";
    const M2: &str = "msg_210e4cbc3001gnBAAZlkYNtwst";
    const P1: &str = "prt_210e4c63f001ubKS2ShGpB7g8K";
    const P2: &str = "prt_210e4d0a9001gsaz0PM4j06TVe";
    const P3: &str = "prt_210e4d0b0001b80KjKvuTnfOa2";

    #[test]
    fn compare() {
        let a = export(S1, None, &[(M1, &[P1])]);
        let b = export(S1, None, &[(M1, &[P1]), (M2, &[P2])]);
        let c = export(S1, None, &[(M1, &[P1, P3])]);
        assert_eq!(compare_exports(&a, &a), ExportCompare::Same);
        assert_eq!(compare_exports(&a, &b), ExportCompare::Extends);
        assert_eq!(compare_exports(&b, &a), ExportCompare::Diverged);
        assert_eq!(compare_exports(&c, &b), ExportCompare::Diverged);
        let mut changed = a.clone();
        changed["messages"][0]["parts"][0]["text"] = json!("newer");
        assert_eq!(compare_exports(&a, &changed), ExportCompare::Extends);
        assert_eq!(compare_exports(&json!({}), &a), ExportCompare::Diverged);
    }

    fn bundle(files: Vec<(String, Value)>) -> ProviderBundle {
        ProviderBundle {
            format: BUNDLE_FORMAT,
            provider: NAME.into(),
            provider_ref: S1.into(),
            provider_version: Some("1.18.33".into()),
            source_workspace: "/home/a/ws".into(),
            source_home: "/home/a".into(),
            files: files
                .into_iter()
                .map(|(path, v)| BundleFile {
                    path,
                    mode: 0o600,
                    data: Bytes(v.to_string().into_bytes()),
                })
                .collect(),
        }
    }

    #[test]
    fn order_and_refusals() {
        let main = (
            format!("opencode/{S1}.json"),
            export(S1, None, &[(M1, &[P1])]),
        );
        let child = (format!("opencode/{S2}.json"), export(S2, Some(S1), &[]));
        let grandchild = (format!("opencode/{S3}.json"), export(S3, Some(S2), &[]));
        let order = bundle_order(&bundle(vec![
            grandchild.clone(),
            child.clone(),
            main.clone(),
        ]))
        .unwrap();
        let ids: Vec<&str> = order.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, [S1, S2, S3]);

        let refused = |files: Vec<(String, Value)>| {
            matches!(
                bundle_order(&bundle(files)),
                Err(ProviderError::InvalidBundle(_))
            )
        };
        // A stray session that does not descend from the main one.
        assert!(refused(vec![main.clone(), grandchild.clone()]));
        // The main session missing, duplicated, or under a wrong name.
        assert!(refused(vec![child.clone()]));
        assert!(refused(vec![main.clone(), main.clone()]));
        for path in [
            "opencode/../x.json",
            "opencode.db",
            "auth.json",
            "opencode/ses_x.json",
            "other/ses_def1b3a23ffecFm2f0UV4BVMo2.json",
        ] {
            assert!(
                refused(vec![main.clone(), (path.into(), main.1.clone())]),
                "{path}"
            );
        }
        // A file whose content is another session.
        assert!(refused(vec![(main.0.clone(), child.1.clone())]));
        // A message of another session smuggled in.
        let mut mixed = main.1.clone();
        mixed["messages"][0]["info"]["sessionID"] = json!(S2);
        assert!(refused(vec![(main.0.clone(), mixed)]));
        let mut b = bundle(vec![main.clone()]);
        b.provider = "claude".into();
        assert!(bundle_order(&b).is_err());
    }

    #[test]
    fn staging_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        let docs = vec![
            (S1.to_string(), export(S1, None, &[(M1, &[P1])])),
            (S2.to_string(), export(S2, Some(S1), &[])),
        ];
        let plan = Plan {
            format: BUNDLE_FORMAT,
            provider_ref: S1.into(),
            workspace: "/srv/b/proj".into(),
            order: vec![S1.into(), S2.into()],
        };
        assert!(read_staging(&staging).unwrap().is_none());
        write_staging(&staging, &plan, &docs).unwrap();
        let (read_plan, read_docs) = read_staging(&staging).unwrap().unwrap();
        assert_eq!(read_plan.workspace, "/srv/b/proj");
        assert_eq!(read_docs.len(), 2);
        assert_eq!(read_docs[1].2, docs[1].1);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&read_docs[0].1).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
