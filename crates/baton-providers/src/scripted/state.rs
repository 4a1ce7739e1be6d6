//! Moving conversation files: reading them for export, and importing a bundle (validate,
//! rewrite paths, stage, activate atomically).

use std::collections::HashSet;
use std::fs::{self};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path};

use baton_proto::ws::ProviderBundle;

use super::{BUNDLE_FORMAT, NAME, check_ref, session_rel_path};
use crate::enc::enc;
use crate::files::{check_bundle_header, check_identity, staged_files, write_atomic};
use crate::rewrite::PathMap;
use crate::{ProviderError, Result};

/// Reads a conversation file and its mode, refusing while an agent still holds it: a running
/// agent would append turns that the bundle misses.
pub(super) fn read_stopped(path: &Path, provider_ref: &str) -> Result<(Vec<u8>, u32)> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProviderError::StateMissing {
                provider: NAME.into(),
                provider_ref: provider_ref.into(),
            });
        }
        Err(e) => return Err(ProviderError::io(format!("open {}", path.display()), e)),
    };
    // SAFETY: flock on a descriptor we own; the lock is released when `file` closes.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc != 0 {
        return Err(ProviderError::Process(format!(
            "session {provider_ref} is still running; stop it before exporting"
        )));
    }
    let mode = file
        .metadata()
        .map_err(|e| ProviderError::io(format!("stat {}", path.display()), e))?
        .permissions()
        .mode()
        & 0o7777;
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| ProviderError::io(format!("read {}", path.display()), e))?;
    Ok((data, mode))
}

/// One file to stage: where it goes (relative to the state directory) and its rewritten bytes.
#[derive(Debug)]
pub(super) struct StagedFile {
    rel: String,
    mode: u32,
    data: Vec<u8>,
}

/// Validates a bundle and rewrites its files for `target_ws` and `home`, touching nothing on
/// disk but reading existing state to detect identity conflicts.
pub(super) fn plan_import(
    bundle: &ProviderBundle,
    target_ws: &str,
    home: &str,
    state: &Path,
) -> Result<Vec<StagedFile>> {
    let invalid = |msg: String| ProviderError::InvalidBundle(msg);
    check_bundle_header(bundle, NAME, BUNDLE_FORMAT)?;
    check_ref(&bundle.provider_ref)?;
    let (old_enc, new_enc) = (enc(&bundle.source_workspace), enc(target_ws));
    let map = PathMap::new(vec![
        (bundle.source_workspace.as_str(), target_ws),
        (bundle.source_home.as_str(), home),
    ])
    .with_tokens(vec![(old_enc.clone(), new_enc.clone())]);

    let main_rel = session_rel_path(&bundle.source_workspace, &bundle.provider_ref);
    if !bundle.files.iter().any(|f| f.path == main_rel) {
        return Err(invalid(format!("bundle lacks {main_rel}")));
    }
    let mut seen = HashSet::new();
    let mut plan = Vec::with_capacity(bundle.files.len());
    for file in &bundle.files {
        let parts = check_rel_path(&file.path)?;
        if parts.len() < 3 || parts[1] != old_enc || !file.path.ends_with(".jsonl") {
            return Err(invalid(format!(
                "unexpected file {:?} (want projects/{old_enc}/….jsonl)",
                file.path
            )));
        }
        if !seen.insert(file.path.as_str()) {
            return Err(invalid(format!("file {:?} appears twice", file.path)));
        }
        let text = std::str::from_utf8(&file.data.0)
            .map_err(|_| invalid(format!("{} is not UTF-8", file.path)))?;
        let rewritten = map
            .rewrite_jsonl(text)
            .map_err(|e| invalid(format!("{}: {e}", file.path)))?;
        let rel = std::iter::once("projects")
            .chain(std::iter::once(new_enc.as_str()))
            .chain(parts[2..].iter().copied())
            .collect::<Vec<_>>()
            .join("/");
        if file.path == main_rel {
            check_meta(&rewritten, &bundle.provider_ref, target_ws)?;
        }
        check_identity(state, &rel, rewritten.as_bytes(), &bundle.provider_ref)?;
        plan.push(StagedFile {
            rel,
            // Conversation files are private to their owner, whatever the source said.
            mode: (file.mode & 0o700) | 0o600,
            data: rewritten.into_bytes(),
        });
    }
    Ok(plan)
}

/// Splits a bundle path into components, refusing anything that could leave `projects/`.
fn check_rel_path(path: &str) -> Result<Vec<&str>> {
    let bad = || ProviderError::InvalidBundle(format!("unsafe file path {path:?}"));
    if path.is_empty() || path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return Err(bad());
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
        || parts[0] != "projects"
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

/// Checks that the rewritten conversation starts with its meta line for this id and cwd, so
/// that a bundle that would not resume is refused before the handoff commits.
fn check_meta(text: &str, provider_ref: &str, target_ws: &str) -> Result<()> {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let meta: serde_json::Value = serde_json::from_str(first).unwrap_or_default();
    let get = |k: &str| meta.get(k).and_then(serde_json::Value::as_str);
    if get("type") != Some("meta") || get("session_id") != Some(provider_ref) {
        return Err(ProviderError::InvalidBundle(format!(
            "conversation file does not start with the meta line of {provider_ref}"
        )));
    }
    if get("cwd") != Some(target_ws) {
        return Err(ProviderError::InvalidBundle(format!(
            "conversation cwd {:?} does not match the bundle's source workspace",
            get("cwd")
        )));
    }
    Ok(())
}

/// Writes planned files under `staging`.
pub(super) fn write_staging(plan: &[StagedFile], staging: &Path) -> Result<()> {
    for file in plan {
        write_atomic(&staging.join(&file.rel), &file.data, file.mode)?;
    }
    Ok(())
}

/// Moves every staged file into the state directory, then removes `staging`. A missing staging
/// directory means an earlier activation already finished, so it is not an error.
pub(super) fn activate(staging: &Path, state: &Path) -> Result<()> {
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
        check_rel_path(rel_str)?;
        let src = staging.join(&rel);
        let data =
            fs::read(&src).map_err(|e| ProviderError::io(format!("read {}", src.display()), e))?;
        let mode = fs::metadata(&src)
            .map_err(|e| ProviderError::io(format!("stat {}", src.display()), e))?
            .permissions()
            .mode()
            & 0o777;
        let id = rel
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        check_identity(state, rel_str, &data, &id)?;
        staged.push((rel, data, mode));
    }
    for (rel, data, mode) in &staged {
        write_atomic(&state.join(rel), data, *mode)?;
    }
    fs::remove_dir_all(staging)
        .map_err(|e| ProviderError::io(format!("remove {}", staging.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::Bytes;
    use baton_proto::ws::BundleFile;

    fn bundle(path: &str, data: &str) -> ProviderBundle {
        ProviderBundle {
            format: BUNDLE_FORMAT,
            provider: NAME.into(),
            provider_ref: "s1".into(),
            provider_version: Some("1.0.0".into()),
            source_workspace: "/home/a/ws".into(),
            source_home: "/home/a".into(),
            files: vec![BundleFile {
                path: path.into(),
                mode: 0o644,
                data: Bytes(data.as_bytes().to_vec()),
            }],
        }
    }

    const CONV: &str = "{\"type\":\"meta\",\"session_id\":\"s1\",\"cwd\":\"/home/a/ws\"}\n\
        {\"type\":\"turn\",\"n\":1,\"cwd\":\"/home/a/ws\",\"user\":\"see /home/a/ws/x and /home/a/wsx\"}\n";

    #[test]
    fn plan_rewrites_paths_and_enc() {
        let state = tempfile::tempdir().unwrap();
        let b = bundle("projects/-home-a-ws/s1.jsonl", CONV);
        let plan = plan_import(&b, "/srv/b/proj", "/srv/b", state.path()).unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].rel, "projects/-srv-b-proj/s1.jsonl");
        assert_eq!(plan[0].mode, 0o600);
        let text = String::from_utf8(plan[0].data.clone()).unwrap();
        assert_eq!(
            text,
            "{\"type\":\"meta\",\"session_id\":\"s1\",\"cwd\":\"/srv/b/proj\"}\n\
             {\"type\":\"turn\",\"n\":1,\"cwd\":\"/srv/b/proj\",\"user\":\"see /srv/b/proj/x and /srv/b/wsx\"}\n"
        );
    }

    #[test]
    fn plan_refuses_hostile_bundles() {
        let state = tempfile::tempdir().unwrap();
        let plan = |b: &ProviderBundle| plan_import(b, "/srv/b/proj", "/srv/b", state.path());
        let main = "projects/-home-a-ws/s1.jsonl";
        for path in [
            "../x",
            "/abs",
            "projects/../../x",
            "projects/-home-a-ws/../../../x.jsonl",
            "projects/./-home-a-ws/s1.jsonl",
            "projects//s1.jsonl",
            "auth",
            "projects/-other/s1.jsonl",
            "projects/-home-a-ws/s1.txt",
            "projects\\-home-a-ws\\s1.jsonl",
        ] {
            let mut b = bundle(main, CONV);
            b.files.push(BundleFile {
                path: path.into(),
                mode: 0o600,
                data: Bytes(CONV.as_bytes().to_vec()),
            });
            assert!(
                matches!(plan(&b), Err(ProviderError::InvalidBundle(_))),
                "{path}"
            );
        }
        let mut b = bundle(main, CONV);
        b.provider = "claude".into();
        assert!(matches!(plan(&b), Err(ProviderError::InvalidBundle(_))));
        let mut b = bundle(main, CONV);
        b.provider_ref = "../s1".into();
        assert!(matches!(plan(&b), Err(ProviderError::InvalidBundle(_))));
        let mut b = bundle(main, CONV);
        b.files.push(b.files[0].clone());
        assert!(matches!(plan(&b), Err(ProviderError::InvalidBundle(_))));
        let b = bundle(main, "{\"type\":\"meta\"}\nnot json\n");
        assert!(matches!(plan(&b), Err(ProviderError::InvalidBundle(m)) if m.contains("line 2")));
        let b = bundle("projects/-home-a-ws/other.jsonl", CONV);
        assert!(matches!(plan(&b), Err(ProviderError::InvalidBundle(_))));
        // A conversation that claims another cwd would not resume here: refused up front.
        let b = bundle(main, &CONV.replace("/home/a/ws\"}", "/elsewhere\"}"));
        assert!(matches!(plan(&b), Err(ProviderError::InvalidBundle(_))));
    }
}
