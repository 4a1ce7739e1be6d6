//! Moving a conversation's files between machines: collecting them for export (refused while a
//! Claude process holds the session), and importing a bundle (validate, rewrite paths, stage,
//! activate atomically).
//!
//! A bundle holds, relative to the config dir: `projects/<P>/<id>.jsonl` (the transcript),
//! `projects/<P>/<id>/**` (subagents, spilled tool results), `file-history/<id>/**` and
//! `tasks/<id>/**` when present, plus [`SOURCE_FILE`] describing the source. Never `sessions/`
//! (live-process registry), `shell-snapshots/`, `.credentials.json` or `~/.claude.json`.

use std::collections::HashSet;
use std::fs::{self};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use baton_proto::Bytes;
use baton_proto::ws::{BundleFile, ProviderBundle};
use serde_json::Value;

use super::{BUNDLE_FORMAT, NAME, check_ref};
use crate::enc::enc;
use crate::files::{check_bundle_header, check_identity, staged_files, write_atomic};
use crate::rewrite::PathMap;
use crate::{ProviderError, Result};

/// Bundle file describing the source machine (not installed on the target).
pub(super) const SOURCE_FILE: &str = "baton-source.json";

/// Largest bundle accepted for export, so a runaway session cannot exhaust memory.
const MAX_BUNDLE_BYTES: u64 = 1 << 30;

/// Where a session's transcript is: `projects/<enc(ws)>/<id>.jsonl`, or, since Claude finds and
/// appends to a transcript by id wherever it lies, the same name in any other project dir.
pub(super) fn find_transcript(cfg: &Path, ws: &str, id: &str) -> Option<PathBuf> {
    let projects = cfg.join("projects");
    let name = format!("{id}.jsonl");
    let direct = projects.join(enc(ws)).join(&name);
    if direct.is_file() {
        return Some(direct);
    }
    fs::read_dir(&projects)
        .ok()?
        .flatten()
        .map(|d| d.path().join(&name))
        .find(|p| p.is_file())
}

fn missing(id: &str) -> ProviderError {
    ProviderError::StateMissing {
        provider: NAME.into(),
        provider_ref: id.into(),
    }
}

/// Refuses while a live Claude process holds `id`: Claude registers each process in
/// `sessions/<pid>.json` (`{pid, sessionId, procStart, …}`) and would append turns the bundle
/// misses.
pub(super) fn check_not_running(cfg: &Path, id: &str) -> Result<()> {
    let Ok(entries) = fs::read_dir(cfg.join("sessions")) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Ok(v) =
            fs::read(&path).map(|b| serde_json::from_slice::<Value>(&b).unwrap_or_default())
        else {
            continue;
        };
        if v["sessionId"] != id {
            continue;
        }
        let Some(pid) = v["pid"]
            .as_u64()
            .and_then(|p| libc::pid_t::try_from(p).ok())
        else {
            continue;
        };
        if process_alive(pid, v["procStart"].as_str()) {
            return Err(ProviderError::Process(format!(
                "Claude session {id} is still running (pid {pid}); stop it before exporting"
            )));
        }
    }
    Ok(())
}

/// Whether `pid` is alive and, when `/proc` tells its start time, is the process that wrote the
/// registry entry (a stale entry's pid may have been reused).
fn process_alive(pid: libc::pid_t, proc_start: Option<&str>) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    let (Some(want), Ok(stat)) = (proc_start, fs::read_to_string(format!("/proc/{pid}/stat")))
    else {
        return true;
    };
    // Field 22 (starttime) comes after the parenthesised command name, which may hold spaces.
    let start = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19));
    start.is_none_or(|s| s == want)
}

/// Reads every file of the session for a bundle.
pub(super) fn collect(cfg: &Path, ws: &str, id: &str) -> Result<Vec<BundleFile>> {
    check_ref(id)?;
    let transcript = find_transcript(cfg, ws, id).ok_or_else(|| missing(id))?;
    check_not_running(cfg, id)?;
    let project = transcript
        .parent()
        .expect("a transcript found under projects/<dir>/ has a parent");
    let project_name = project
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ProviderError::Process(format!("{} is not UTF-8", project.display())))?;
    let mut files = Vec::new();
    let mut total = 0u64;
    let main_rel = format!("projects/{project_name}/{id}.jsonl");
    files.push(read_file(&transcript, main_rel, &mut total)?);
    for (dir, rel) in [
        (project.join(id), format!("projects/{project_name}/{id}")),
        (
            cfg.join("file-history").join(id),
            format!("file-history/{id}"),
        ),
        (cfg.join("tasks").join(id), format!("tasks/{id}")),
    ] {
        collect_dir(&dir, &rel, &mut files, &mut total)?;
    }
    let source = serde_json::json!({ "config_dir": super::utf8(cfg, "config dir")? });
    files.push(BundleFile {
        path: SOURCE_FILE.into(),
        mode: 0o600,
        data: Bytes(source.to_string().into_bytes()),
    });
    Ok(files)
}

fn read_file(path: &Path, rel: String, total: &mut u64) -> Result<BundleFile> {
    let meta =
        fs::metadata(path).map_err(|e| ProviderError::io(format!("stat {}", path.display()), e))?;
    *total += meta.len();
    if *total > MAX_BUNDLE_BYTES {
        return Err(ProviderError::Process(format!(
            "Claude session state is larger than {MAX_BUNDLE_BYTES} bytes"
        )));
    }
    let data =
        fs::read(path).map_err(|e| ProviderError::io(format!("read {}", path.display()), e))?;
    Ok(BundleFile {
        path: rel,
        mode: meta.permissions().mode() & 0o777,
        data: Bytes(data),
    })
}

/// Adds the regular files under `dir` (if it exists), skipping symlinks and special files.
fn collect_dir(dir: &Path, rel: &str, out: &mut Vec<BundleFile>, total: &mut u64) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ProviderError::io(format!("list {}", dir.display()), e)),
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!(path = %entry.path().display(), "non-UTF-8 name skipped");
            continue;
        };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let child_rel = format!("{rel}/{name}");
        if kind.is_dir() {
            collect_dir(&entry.path(), &child_rel, out, total)?;
        } else if kind.is_file() {
            out.push(read_file(&entry.path(), child_rel, total)?);
        }
    }
    Ok(())
}

/// One file to stage: where it goes (relative to the config dir) and its rewritten bytes.
#[derive(Debug)]
pub(super) struct StagedFile {
    pub(super) rel: String,
    pub(super) mode: u32,
    pub(super) data: Vec<u8>,
}

/// Where the bundle's paths point on the target.
pub(super) struct Target<'a> {
    /// Physical target workspace.
    pub(super) workspace: &'a str,
    /// Target `$HOME`.
    pub(super) home: &'a str,
    /// Target config dir.
    pub(super) config_dir: &'a str,
}

/// The rewrite for a bundle: old workspace, home and config dir to the target's, and the
/// project-dir token `enc(old ws)` (and the source's actual project dir name) to `enc(new ws)`.
pub(super) fn path_map(
    source_ws: &str,
    source_home: &str,
    source_cfg: &str,
    source_project: &str,
    target: &Target<'_>,
) -> PathMap {
    let new_enc = enc(target.workspace);
    PathMap::new(vec![
        (source_ws, target.workspace),
        (source_home, target.home),
        (source_cfg, target.config_dir),
    ])
    .with_tokens(vec![
        (enc(source_ws), new_enc.clone()),
        (source_project.to_string(), new_enc),
    ])
}

/// Validates a bundle and rewrites its files for `target`, touching nothing on disk but
/// reading existing state under `cfg` to detect identity conflicts.
pub(super) fn plan_import(
    bundle: &ProviderBundle,
    target: &Target<'_>,
    cfg: &Path,
) -> Result<Vec<StagedFile>> {
    let invalid = |msg: String| ProviderError::InvalidBundle(msg);
    check_bundle_header(bundle, NAME, BUNDLE_FORMAT)?;
    let id = bundle.provider_ref.as_str();
    check_ref(id)?;
    let mut seen = HashSet::new();
    let mut source_cfg = format!("{}/.claude", bundle.source_home.trim_end_matches('/'));
    let mut project: Option<&str> = None;
    let mut main = None;
    let mut files = Vec::new();
    for file in &bundle.files {
        if !seen.insert(file.path.as_str()) {
            return Err(invalid(format!("file {:?} appears twice", file.path)));
        }
        if file.path == SOURCE_FILE {
            let v: Value = serde_json::from_slice(&file.data.0)
                .map_err(|e| invalid(format!("{SOURCE_FILE}: {e}")))?;
            match v["config_dir"].as_str() {
                Some(c) if c.starts_with('/') => source_cfg = c.to_string(),
                _ => {
                    return Err(invalid(format!(
                        "{SOURCE_FILE} lacks an absolute config_dir"
                    )));
                }
            }
            continue;
        }
        let parts = check_rel_path(&file.path)?;
        let kind = classify(&parts, id).ok_or_else(|| {
            invalid(format!(
                "unexpected file {:?} in a bundle of {id}",
                file.path
            ))
        })?;
        if let Kind::Project { dir, main: is_main } = kind {
            if project.is_some_and(|p| p != dir) {
                return Err(invalid(
                    "bundle files lie in more than one project dir".into(),
                ));
            }
            project = Some(dir);
            if is_main {
                main = Some(file);
            }
        }
        files.push((file, parts, kind));
    }
    let (Some(project), Some(_)) = (project, main) else {
        return Err(invalid(format!("bundle lacks projects/<dir>/{id}.jsonl")));
    };
    let map = path_map(
        &bundle.source_workspace,
        &bundle.source_home,
        &source_cfg,
        project,
        target,
    );
    let new_enc = enc(target.workspace);

    let mut plan = Vec::with_capacity(files.len());
    for (file, parts, kind) in files {
        let rel = match kind {
            Kind::Project { .. } => std::iter::once("projects")
                .chain(std::iter::once(new_enc.as_str()))
                .chain(parts[2..].iter().copied())
                .collect::<Vec<_>>()
                .join("/"),
            Kind::FileHistory | Kind::Tasks => file.path.clone(),
        };
        let data = rewrite_file(&map, &file.path, &file.data.0, kind)?;
        if let Kind::Project { main: true, .. } = kind {
            check_transcript(&data, id)?;
        }
        check_identity(cfg, &rel, &data, id)?;
        plan.push(StagedFile {
            rel,
            // Conversation files are private to their owner, whatever the source said.
            mode: 0o600,
            data,
        });
    }
    Ok(plan)
}

/// What part of a session's state a bundle path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind<'a> {
    /// Under `projects/<dir>/`: the transcript (`main`) or the `<id>/` directory.
    Project { dir: &'a str, main: bool },
    /// `file-history/<id>/…`: backups of workspace files (their bytes are file contents).
    FileHistory,
    /// `tasks/<id>/…`: task lists.
    Tasks,
}

fn classify<'a>(parts: &[&'a str], id: &str) -> Option<Kind<'a>> {
    match parts {
        ["projects", dir, name] if *name == format!("{id}.jsonl") => {
            Some(Kind::Project { dir, main: true })
        }
        ["projects", dir, sub, _, ..] if *sub == id => Some(Kind::Project { dir, main: false }),
        ["file-history", sub, _, ..] if *sub == id => Some(Kind::FileHistory),
        ["tasks", sub, _, ..] if *sub == id => Some(Kind::Tasks),
        _ => None,
    }
}

/// Splits a bundle path into components, refusing anything that could leave the config dir.
fn check_rel_path(path: &str) -> Result<Vec<&str>> {
    let bad = || ProviderError::InvalidBundle(format!("unsafe file path {path:?}"));
    if path.is_empty() || path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return Err(bad());
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(bad());
    }
    // Belt and braces: the OS's own reading of the path must agree.
    if !Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(bad());
    }
    Ok(parts)
}

/// Rewrites one file's bytes: JSONL line by line, JSON as a value, other text by prefix; file
/// backups and non-text files are kept byte for byte.
fn rewrite_file(map: &PathMap, path: &str, data: &[u8], kind: Kind<'_>) -> Result<Vec<u8>> {
    if kind == Kind::FileHistory {
        return Ok(data.to_vec());
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(data.to_vec());
    };
    if !map.matches(text) {
        return Ok(data.to_vec());
    }
    let invalid = |e: String| ProviderError::InvalidBundle(format!("{path}: {e}"));
    if path.ends_with(".jsonl") {
        return Ok(map
            .rewrite_jsonl(text)
            .map_err(|e| invalid(e.to_string()))?
            .into_bytes());
    }
    if path.ends_with(".json") {
        let mut v: Value = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        map.rewrite_json(&mut v);
        return Ok(v.to_string().into_bytes());
    }
    Ok(map.rewrite_str(text).into_bytes())
}

/// Checks that the transcript parses and belongs to `id`, so a bundle that would not resume
/// is refused before the handoff commits.
fn check_transcript(data: &[u8], id: &str) -> Result<()> {
    let text = std::str::from_utf8(data)
        .map_err(|_| ProviderError::InvalidBundle("transcript is not UTF-8".into()))?;
    let mut ours = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| {
            ProviderError::InvalidBundle(format!("transcript line is not JSON: {e}"))
        })?;
        ours |= v["sessionId"] == id;
    }
    if ours {
        Ok(())
    } else {
        Err(ProviderError::InvalidBundle(format!(
            "transcript has no line of session {id}"
        )))
    }
}

/// Writes planned files under `staging`.
pub(super) fn write_staging(plan: &[StagedFile], staging: &Path) -> Result<()> {
    for file in plan {
        write_atomic(&staging.join(&file.rel), &file.data, file.mode)?;
    }
    Ok(())
}

/// Moves every staged file into the config dir, then removes `staging`. A missing staging dir
/// means an earlier activation already finished, so it is not an error.
pub(super) fn activate(staging: &Path, cfg: &Path) -> Result<()> {
    if !staging.exists() {
        tracing::debug!(staging = %staging.display(), "nothing staged, already activated");
        return Ok(());
    }
    let files = staged_files(staging)?;
    // Check everything before moving anything: state that appeared since staging must not be
    // overwritten.
    let mut staged = Vec::with_capacity(files.len());
    for rel in files {
        let rel_str = rel.to_str().ok_or_else(|| {
            ProviderError::InvalidBundle(format!("staged path {} is not UTF-8", rel.display()))
        })?;
        let parts = check_rel_path(rel_str)?;
        if !matches!(
            parts.first(),
            Some(&("projects" | "file-history" | "tasks"))
        ) {
            return Err(ProviderError::InvalidBundle(format!(
                "unexpected staged file {rel_str}"
            )));
        }
        let src = staging.join(&rel);
        let data =
            fs::read(&src).map_err(|e| ProviderError::io(format!("read {}", src.display()), e))?;
        let id = session_of(&parts);
        check_identity(cfg, rel_str, &data, &id)?;
        staged.push((rel, data));
    }
    for (rel, data) in &staged {
        write_atomic(&cfg.join(rel), data, 0o600)?;
    }
    fs::remove_dir_all(staging)
        .map_err(|e| ProviderError::io(format!("remove {}", staging.display()), e))
}

/// The session id a staged path belongs to (for error messages).
fn session_of(parts: &[&str]) -> String {
    match parts {
        ["projects", _, name] => name.trim_end_matches(".jsonl").to_string(),
        ["projects", _, id, ..] | [_, id, ..] => (*id).to_string(),
        _ => String::new(),
    }
}

/// Removes the session's files (transcript, `<id>/`, file history, tasks); absent ones are fine.
pub(super) fn remove(cfg: &Path, ws: &str, id: &str) -> Result<()> {
    check_ref(id)?;
    check_not_running(cfg, id)?;
    while let Some(transcript) = find_transcript(cfg, ws, id) {
        let project = transcript.parent().map(Path::to_path_buf);
        remove_path(&transcript)?;
        if let Some(project) = project {
            remove_path(&project.join(id))?;
            // Leaves the project dir alone while other conversations (or memory) live in it.
            let _ = fs::remove_dir(&project);
        }
    }
    remove_path(&cfg.join("file-history").join(id))?;
    remove_path(&cfg.join("tasks").join(id))
}

fn remove_path(path: &Path) -> Result<()> {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ProviderError::io(format!("remove {}", path.display()), e)),
    }
}
