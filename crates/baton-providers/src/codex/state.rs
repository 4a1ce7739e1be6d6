//! Moving a Codex thread: finding its rollout, exporting it, importing a bundle (validate,
//! rewrite paths, check identity, stage) and putting staged rollouts in place atomically.
//!
//! Only the rollout moves. `state_*.sqlite` (the `threads` index, whose `rollout_path` is
//! absolute) and `thread_history_*.sqlite` (a projection of the rollout by byte offset) are
//! rebuilt by Codex from rollouts; `auth.json`, `history.jsonl` and `shell_snapshots/` are
//! machine-local.

use std::fs::{self};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use baton_proto::ws::ProviderBundle;
use serde_json::Value;

use super::{BUNDLE_FORMAT, NAME, check_ref, check_rel_path, rollout_id};
use crate::files::{check_bundle_header, write_atomic};
use crate::rewrite::PathMap;
use crate::{ProviderError, Result};

/// Every rollout file of thread `id` under `codex_home/sessions/YYYY/MM/DD/` (compressed ones
/// included), sorted by path.
pub(super) fn find_rollouts(codex_home: &Path, id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk_rollouts(codex_home, |path, name| {
        if rollout_id(name) == Some(id) {
            out.push(path.to_path_buf());
        }
    });
    out.sort();
    out
}

/// Calls `f(path, file name)` for every file in `sessions/<Y>/<M>/<D>/` whose name starts with
/// `rollout-`. Unreadable directories are skipped.
pub(super) fn walk_rollouts(codex_home: &Path, mut f: impl FnMut(&Path, &str)) {
    let subdirs = |dir: &Path| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for year in subdirs(&codex_home.join("sessions")) {
        for month in subdirs(&year) {
            for day in subdirs(&month) {
                let Ok(files) = fs::read_dir(&day) else {
                    continue;
                };
                for file in files.flatten() {
                    if !file.file_type().is_ok_and(|t| t.is_file()) {
                        continue;
                    }
                    let path = file.path();
                    if let Some(name) = path.file_name().and_then(|n| n.to_str())
                        && name.starts_with("rollout-")
                    {
                        f(&path, name);
                    }
                }
            }
        }
    }
}

/// The one plain-JSONL rollout of thread `id`: `StateMissing` when there is none, `Unsupported`
/// when only a compressed one exists.
pub(super) fn rollout_path(codex_home: &Path, id: &str) -> Result<PathBuf> {
    let found = find_rollouts(codex_home, id);
    if let Some(p) = found
        .iter()
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("jsonl"))
        // Two copies should not exist; the most recently written one is the live one.
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
    {
        return Ok(p.clone());
    }
    if !found.is_empty() {
        return Err(ProviderError::Unsupported(format!(
            "thread {id} is stored compressed (rollout .jsonl.zst); Baton cannot read those \
             yet — turn off Codex's `local_thread_store_compression` feature"
        )));
    }
    Err(ProviderError::StateMissing {
        provider: NAME.into(),
        provider_ref: id.into(),
    })
}

/// Reads the rollout of `id` for export: its path relative to `codex_home`, bytes and mode.
pub(super) fn read_rollout(codex_home: &Path, id: &str) -> Result<(String, Vec<u8>, u32)> {
    check_ref(id)?;
    let path = rollout_path(codex_home, id)?;
    let rel = path
        .strip_prefix(codex_home)
        .ok()
        .and_then(|r| r.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            ProviderError::Process(format!("rollout path {} is not UTF-8", path.display()))
        })?;
    check_rel_path(&rel, id)?;
    let mut file =
        fs::File::open(&path).map_err(|e| ProviderError::io(format!("open {}", rel), e))?;
    let mode = file
        .metadata()
        .map_err(|e| ProviderError::io(format!("stat {}", path.display()), e))?
        .permissions()
        .mode()
        & 0o7777;
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| ProviderError::io(format!("read {}", path.display()), e))?;
    let text = std::str::from_utf8(&data)
        .map_err(|_| ProviderError::Process(format!("{} is not UTF-8", path.display())))?;
    session_meta(text, id)
        .map_err(|e| ProviderError::Process(format!("{}: {e}", path.display())))?;
    Ok((rel, data, mode))
}

/// The `session_meta` payload of a rollout (its first line), checked to belong to `id`.
pub(super) fn session_meta(text: &str, id: &str) -> std::result::Result<Value, String> {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let line: Value =
        serde_json::from_str(first).map_err(|e| format!("first line is not JSON: {e}"))?;
    if line.get("type").and_then(Value::as_str) != Some("session_meta") {
        return Err("the rollout does not start with session_meta".into());
    }
    let payload = line.get("payload").cloned().unwrap_or(Value::Null);
    if payload.get("id").and_then(Value::as_str) != Some(id) {
        return Err(format!("session_meta is not for thread {id}"));
    }
    Ok(payload)
}

/// The `$CODEX_HOME` a rollout was written under, from the skills root Codex names in its
/// developer message (`` `r0` = `<CODEX_HOME>/skills/.system` ``). The bundle carries the
/// source's home but not its `CODEX_HOME`, which may be set elsewhere.
pub(super) fn recorded_codex_home(text: &str) -> Option<String> {
    const MARK: &str = "/skills/.system";
    for line in text.lines().take(64) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let payload = v.get("payload");
        let developer = v.get("type").and_then(Value::as_str) == Some("response_item")
            && payload.and_then(|p| p.get("role")).and_then(Value::as_str) == Some("developer");
        if !developer {
            continue;
        }
        let Some(content) = payload
            .and_then(|p| p.get("content"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for part in content {
            let Some(text) = part.get("text").and_then(Value::as_str) else {
                continue;
            };
            let Some(end) = text.find(MARK) else { continue };
            let start = text[..end]
                .rfind(|c: char| c == '`' || c == '"' || c.is_whitespace())
                .map_or(0, |i| i + 1);
            let home = &text[start..end];
            if home.starts_with('/') {
                return Some(home.to_string());
            }
        }
    }
    None
}

/// One rollout to stage.
#[derive(Debug)]
pub(super) struct StagedFile {
    /// Path relative to `CODEX_HOME` (and to the staging directory).
    pub rel: String,
    /// The rewritten rollout.
    pub data: Vec<u8>,
}

/// What is on the target for a thread.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Existing {
    /// No rollout for it.
    None,
    /// The same rollout, byte for byte (at `0`).
    Identical(PathBuf),
    /// An older copy of the same thread (the incoming rollout extends it), e.g. the state this
    /// machine had before handing the session away and back.
    Older(Vec<PathBuf>),
}

/// Where the paths of the target machine point.
pub(super) struct Target<'a> {
    /// Target workspace.
    pub workspace: &'a str,
    /// Target `$HOME`.
    pub home: &'a str,
    /// Target `$CODEX_HOME`.
    pub codex_home: &'a str,
}

/// The path map for a rollout recorded under `bundle`'s source, moving to `target`.
pub(super) fn path_map(bundle: &ProviderBundle, text: &str, target: &Target) -> PathMap {
    let old_codex_home = recorded_codex_home(text)
        .unwrap_or_else(|| format!("{}/.codex", bundle.source_home.trim_end_matches('/')));
    let mut pairs = vec![
        (
            bundle.source_workspace.clone(),
            target.workspace.to_string(),
        ),
        (old_codex_home, target.codex_home.to_string()),
        (bundle.source_home.clone(), target.home.to_string()),
    ];
    // The recorded cwd can differ from Baton's spelling of the workspace (a symlink resolved).
    if let Some(cwd) = session_meta(text, &bundle.provider_ref)
        .ok()
        .and_then(|m| m.get("cwd").and_then(Value::as_str).map(str::to_string))
        && cwd.starts_with('/')
        && cwd != bundle.source_workspace
    {
        pairs.push((cwd, target.workspace.to_string()));
    }
    PathMap::new(pairs)
}

/// Validates a bundle and rewrites its rollout for `target`, touching nothing on disk but
/// reading the target's rollouts to detect identity conflicts.
pub(super) fn plan_import(
    bundle: &ProviderBundle,
    target: &Target,
    codex_home: &Path,
) -> Result<StagedFile> {
    let invalid = ProviderError::InvalidBundle;
    check_bundle_header(bundle, NAME, BUNDLE_FORMAT)?;
    check_ref(&bundle.provider_ref)?;
    let [file] = bundle.files.as_slice() else {
        return Err(invalid(format!(
            "a codex bundle holds exactly one rollout, this one has {} files",
            bundle.files.len()
        )));
    };
    check_rel_path(&file.path, &bundle.provider_ref)?;
    let text = std::str::from_utf8(&file.data.0)
        .map_err(|_| invalid(format!("{} is not UTF-8", file.path)))?;
    let map = path_map(bundle, text, target);
    let rewritten = map
        .rewrite_jsonl(text)
        .map_err(|e| invalid(format!("{}: {e}", file.path)))?;
    let meta = session_meta(&rewritten, &bundle.provider_ref)
        .map_err(|e| invalid(format!("{}: {e}", file.path)))?;
    if meta.get("cwd").and_then(Value::as_str) != Some(target.workspace) {
        return Err(invalid(format!(
            "the rollout's cwd {:?} is not the bundle's source workspace",
            meta.get("cwd")
        )));
    }
    let data = rewritten.into_bytes();
    // Identical or older copies are fine here; activation sorts them out.
    existing(codex_home, &bundle.provider_ref, &data)?;
    Ok(StagedFile {
        rel: file.path.clone(),
        data,
    })
}

/// Compares the target's rollouts of `id` with `incoming`; a rollout that is neither the same
/// nor an older copy is a `TargetIdentityConflict`.
pub(super) fn existing(codex_home: &Path, id: &str, incoming: &[u8]) -> Result<Existing> {
    let mut older = Vec::new();
    for path in find_rollouts(codex_home, id) {
        let data = fs::read(&path)
            .map_err(|e| ProviderError::io(format!("read {}", path.display()), e))?;
        if data == incoming {
            return Ok(Existing::Identical(path));
        }
        // A prefix ending at a line boundary: the same thread with fewer turns.
        if !data.is_empty() && incoming.starts_with(&data) && data.ends_with(b"\n") {
            older.push(path);
            continue;
        }
        return Err(ProviderError::TargetIdentityConflict {
            provider_ref: id.into(),
            path: path.display().to_string(),
        });
    }
    Ok(if older.is_empty() {
        Existing::None
    } else {
        Existing::Older(older)
    })
}

/// Writes the planned rollout under `staging`.
pub(super) fn write_staging(file: &StagedFile, staging: &Path) -> Result<()> {
    write_atomic(&staging.join(&file.rel), &file.data, 0o600)
}

/// A staged rollout found by [`read_staging`].
pub(super) struct Staged {
    /// Thread id.
    pub id: String,
    /// Path relative to `CODEX_HOME`.
    pub rel: String,
    /// Contents.
    pub data: Vec<u8>,
}

/// The rollouts under `staging` (each path re-validated: staging is on disk and could have
/// been tampered with since it was written).
pub(super) fn read_staging(staging: &Path) -> Result<Vec<Staged>> {
    let mut out = Vec::new();
    let mut bad = None;
    walk_rollouts(staging, |path, name| {
        if bad.is_some() {
            return;
        }
        let Some(id) = rollout_id(name) else {
            bad = Some(format!("staged file {} is not a rollout", path.display()));
            return;
        };
        let rel = path
            .strip_prefix(staging)
            .ok()
            .and_then(|r| r.to_str())
            .unwrap_or_default()
            .to_string();
        if let Err(e) = check_rel_path(&rel, id) {
            bad = Some(e.to_string());
            return;
        }
        match fs::read(path) {
            Ok(data) => out.push(Staged {
                id: id.to_string(),
                rel,
                data,
            }),
            Err(e) => bad = Some(format!("read {}: {e}", path.display())),
        }
    });
    match bad {
        Some(msg) => Err(ProviderError::InvalidBundle(msg)),
        None => Ok(out),
    }
}

/// Puts a staged rollout in place: removes older copies (when Codex's own delete did not),
/// then writes it atomically unless an identical copy is already there.
pub(super) fn place(codex_home: &Path, staged: &Staged) -> Result<()> {
    match existing(codex_home, &staged.id, &staged.data)? {
        Existing::Identical(_) => return Ok(()),
        Existing::Older(paths) => {
            for p in paths {
                remove_file(&p)?;
            }
        }
        Existing::None => {}
    }
    write_atomic(&codex_home.join(&staged.rel), &staged.data, 0o600)
}

/// Removes a file; a missing one is fine.
pub(super) fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ProviderError::io(format!("remove {}", path.display()), e)),
    }
}

/// Whether Codex's SQLite indexes under `dirs` mention thread `id` (`threads` rows and history
/// projections hold it as text). A byte search, because Baton has no SQLite reader for Codex's
/// schema: a false hit only costs one `codex delete`, a miss leaves a stale projection.
pub(super) fn index_mentions(dirs: &[PathBuf], id: &str) -> bool {
    let needle = id.as_bytes();
    dirs.iter().any(|dir| {
        let Ok(entries) = fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let index = (name.starts_with("state_") || name.starts_with("thread_history_"))
                && name.contains(".sqlite");
            index && file_contains(&e.path(), needle)
        })
    })
}

/// Streams `path` looking for `needle`, with constant memory.
fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let Ok(mut f) = fs::File::open(path) else {
        return false;
    };
    let mut buf = vec![0u8; 1 << 20];
    let keep = needle.len().saturating_sub(1);
    let mut filled = 0;
    loop {
        let n = match f.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        filled += n;
        if buf[..filled].windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        if filled > keep {
            buf.copy_within(filled - keep..filled, 0);
            filled = keep;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::Bytes;
    use baton_proto::ws::BundleFile;

    const ID: &str = "01a210e5-013b-7b73-8a81-d6bdea1d66b5";

    fn rollout(cwd: &str, home: &str) -> String {
        format!(
            "{{\"ordinal\":0,\"type\":\"session_meta\",\"payload\":{{\"id\":\"{ID}\",\"cwd\":\"{cwd}\"}}}}\n\
             {{\"ordinal\":1,\"type\":\"response_item\",\"payload\":{{\"type\":\"message\",\"role\":\"developer\",\"content\":[{{\"type\":\"input_text\",\"text\":\"- `r0` = `{home}/skills/.system`\"}}]}}}}\n\
             {{\"ordinal\":2,\"type\":\"response_item\",\"payload\":{{\"type\":\"message\",\"role\":\"user\",\"content\":[{{\"type\":\"input_text\",\"text\":\"<environment_context><cwd>{cwd}</cwd></environment_context>\"}}]}}}}\n"
        )
    }

    fn bundle(text: &str) -> ProviderBundle {
        ProviderBundle {
            format: BUNDLE_FORMAT,
            provider: NAME.into(),
            provider_ref: ID.into(),
            provider_version: Some("0.169.0".into()),
            source_workspace: "/home/a/ws".into(),
            source_home: "/home/a".into(),
            files: vec![BundleFile {
                path: format!("sessions/2026/11/25/rollout-2026-11-25T04-09-33-{ID}.jsonl"),
                mode: 0o600,
                data: Bytes(text.as_bytes().to_vec()),
            }],
        }
    }

    const TARGET: Target<'static> = Target {
        workspace: "/srv/b/proj",
        home: "/srv/b",
        codex_home: "/opt/codex-b",
    };

    #[test]
    fn custom_codex_home_is_found_and_rewritten() {
        let text = rollout("/home/a/ws", "/var/codex-a");
        assert_eq!(recorded_codex_home(&text).as_deref(), Some("/var/codex-a"));
        let home = tempfile::tempdir().unwrap();
        let staged = plan_import(&bundle(&text), &TARGET, home.path()).unwrap();
        let out = String::from_utf8(staged.data).unwrap();
        assert!(out.contains("`/opt/codex-b/skills/.system`"), "{out}");
        assert!(out.contains("<cwd>/srv/b/proj</cwd>"));
        assert!(!out.contains("/home/a") && !out.contains("/var/codex-a"));
    }

    #[test]
    fn identity_conflicts_and_older_copies() {
        let home = tempfile::tempdir().unwrap();
        let text = rollout("/home/a/ws", "/home/a/.codex");
        let b = bundle(&text);
        let staged = plan_import(&b, &TARGET, home.path()).unwrap();
        let dest = home.path().join(&staged.rel);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        // An older copy (a prefix) is fine and gets replaced.
        let first_line = String::from_utf8(staged.data.clone()).unwrap();
        let first_line = format!("{}\n", first_line.lines().next().unwrap());
        fs::write(&dest, &first_line).unwrap();
        assert!(matches!(
            existing(home.path(), ID, &staged.data).unwrap(),
            Existing::Older(_)
        ));
        // The same copy is fine.
        fs::write(&dest, &staged.data).unwrap();
        assert!(plan_import(&b, &TARGET, home.path()).is_ok());
        // A different one is a conflict, wherever it lies.
        fs::remove_file(&dest).unwrap();
        let other = home
            .path()
            .join(format!("sessions/2025/01/01/rollout-x-{ID}.jsonl"));
        fs::create_dir_all(other.parent().unwrap()).unwrap();
        fs::write(&other, "{\"different\":1}\n").unwrap();
        assert!(matches!(
            plan_import(&b, &TARGET, home.path()),
            Err(ProviderError::TargetIdentityConflict { .. })
        ));
    }

    #[test]
    fn hostile_bundles_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let text = rollout("/home/a/ws", "/home/a/.codex");
        let plan = |b: &ProviderBundle| plan_import(b, &TARGET, home.path());
        let mut b = bundle(&text);
        b.files[0].path = "sessions/2026/11/25/../../../../auth.json".into();
        assert!(matches!(plan(&b), Err(ProviderError::InvalidBundle(_))));
        let mut b = bundle(&text);
        b.files.push(b.files[0].clone());
        assert!(matches!(plan(&b), Err(ProviderError::InvalidBundle(_))));
        let mut b = bundle(&text);
        b.provider = "claude".into();
        assert!(matches!(plan(&b), Err(ProviderError::InvalidBundle(_))));
        let mut b = bundle(&text);
        b.provider_ref = "../x".into();
        assert!(matches!(plan(&b), Err(ProviderError::InvalidBundle(_))));
        // A rollout of another thread under this thread's name.
        let b = bundle(&text.replace(ID, "01a210e5-013b-7b73-8a81-000000000000"));
        assert!(matches!(plan(&b), Err(ProviderError::InvalidBundle(_))));
        // A rollout that claims another cwd would not be rewritten to the target.
        let b = bundle(&rollout("/elsewhere", "/home/a/.codex"));
        let mut b2 = b.clone();
        b2.source_workspace = "/home/a/ws".into();
        assert!(plan(&b2).is_ok(), "the recorded cwd is mapped too");
        let b = bundle("not json\n");
        assert!(matches!(plan(&b), Err(ProviderError::InvalidBundle(_))));
    }

    #[test]
    fn index_search_streams() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![b'x'; (1 << 20) - 10];
        data.extend_from_slice(ID.as_bytes());
        fs::write(dir.path().join("state_5.sqlite"), &data).unwrap();
        fs::write(dir.path().join("logs_2.sqlite"), "01a210e5-0000").unwrap();
        assert!(index_mentions(&[dir.path().to_path_buf()], ID));
        assert!(!index_mentions(
            &[dir.path().to_path_buf()],
            "01a210e5-013b-7b73-8a81-000000000000"
        ));
    }
}
