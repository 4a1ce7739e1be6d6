//! File helpers every adapter's state export/import shares: the workspace's canonical string,
//! bundle header checks, atomic writes, and walking and checking a staging directory.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use baton_proto::ws::ProviderBundle;

use crate::{ProviderError, Result};

/// The workspace as an absolute UTF-8 path without `.` parts, doubled or trailing `/`: providers
/// record the directory as such a string, so every operation must agree on it.
pub(crate) fn workspace_str(workspace: &Path) -> Result<String> {
    if !workspace.is_absolute() {
        return Err(ProviderError::Process(format!(
            "workspace {} is not absolute",
            workspace.display()
        )));
    }
    let normal: PathBuf = workspace.components().collect();
    normal.into_os_string().into_string().map_err(|_| {
        ProviderError::Process(format!("workspace {} is not UTF-8", workspace.display()))
    })
}

/// Refuses a bundle for another provider or format, or whose source paths are not absolute.
pub(crate) fn check_bundle_header(bundle: &ProviderBundle, name: &str, format: u32) -> Result<()> {
    let invalid = ProviderError::InvalidBundle;
    if bundle.provider != name {
        return Err(invalid(format!(
            "bundle is for provider {:?}, not {name}",
            bundle.provider
        )));
    }
    if bundle.format != format {
        return Err(invalid(format!("unknown bundle format {}", bundle.format)));
    }
    for (what, p) in [
        ("source workspace", &bundle.source_workspace),
        ("source home", &bundle.source_home),
    ] {
        if !p.starts_with('/') {
            return Err(invalid(format!("{what} {p:?} is not absolute")));
        }
    }
    Ok(())
}

/// Distinguishes temp files of concurrent writers within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to `dest` with `mode` so that readers see either the old file or the whole new
/// one: temp file in the same directory, fsync, rename, fsync the directory. Missing parent
/// directories are made 0700.
pub(crate) fn write_atomic(dest: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| ProviderError::InvalidBundle(format!("no parent for {}", dest.display())))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ProviderError::io(format!("create {}", dir.display()), e))?;
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(
        ".{name}.baton-tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| ProviderError::io(format!("write {}", dest.display()), e))
}

/// The regular files under `root`, as paths relative to it; anything else (a symlink, a
/// device) is refused, since staging holds only files Baton wrote.
pub(crate) fn staged_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        fs::read_dir(dir).map_err(|e| ProviderError::io(format!("list {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ProviderError::io(format!("list {}", dir.display()), e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| ProviderError::io(format!("stat {}", path.display()), e))?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let rel = path
                .strip_prefix(root)
                .expect("read_dir yields paths under the directory listed");
            out.push(rel.to_path_buf());
        } else {
            return Err(ProviderError::InvalidBundle(format!(
                "staged entry {} is not a regular file",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Refuses when a different file already exists at `dir/rel` (another conversation under the
/// same id); an identical one is fine, so a repeated import is harmless.
pub(crate) fn check_identity(dir: &Path, rel: &str, data: &[u8], provider_ref: &str) -> Result<()> {
    let dest = dir.join(rel);
    match fs::read(&dest) {
        Ok(existing) if existing == data => Ok(()),
        Ok(_) => Err(ProviderError::TargetIdentityConflict {
            provider_ref: provider_ref.into(),
            path: dest.display().to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ProviderError::io(format!("read {}", dest.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_staging_walk_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_atomic(&root.join("a/b/c.jsonl"), b"one", 0o600).unwrap();
        write_atomic(&root.join("d.json"), b"two", 0o644).unwrap();
        let mut files = staged_files(root).unwrap();
        files.sort();
        assert_eq!(
            files,
            vec![PathBuf::from("a/b/c.jsonl"), PathBuf::from("d.json")]
        );
        assert!(check_identity(root, "d.json", b"two", "x").is_ok());
        assert!(check_identity(root, "none.json", b"two", "x").is_ok());
        assert!(matches!(
            check_identity(root, "d.json", b"other", "x"),
            Err(ProviderError::TargetIdentityConflict { .. })
        ));
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        assert!(
            staged_files(root).is_err(),
            "a symlink in staging is refused"
        );
        assert_eq!(workspace_str(Path::new("/a/./b/")).unwrap(), "/a/b");
        assert!(workspace_str(Path::new("a/b")).is_err());
    }
}
