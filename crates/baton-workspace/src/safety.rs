//! Path guards (DESIGN §5): which directories may be sent as a workspace, and where one may land.
//!
//! Both checks refuse `/`, the home directory and anything that contains it, whether reached
//! directly, through `..` or through symlinks, so that a mistyped path never ships or overwrites a
//! whole home.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use baton_proto::workspace::DestinationState;

use crate::error::{Error, Result, io_err};

/// Checks a workspace source directory and returns its canonical path.
///
/// Refused with `unsafe_workspace_path`: empty, relative or `~` paths; `/`; `home` and any
/// directory containing it; paths that resolve to those through symlinks or `..`; anything that
/// is not an existing directory.
pub fn check_source(path: &Path, home: Option<&Path>) -> Result<PathBuf> {
    check_shape(path)?;
    let canonical = fs::canonicalize(path).map_err(|e| {
        let reason = if e.kind() == io::ErrorKind::NotFound {
            "does not exist".to_string()
        } else {
            format!("cannot be resolved: {e}")
        };
        Error::unsafe_path(path, reason)
    })?;
    check_not_root_or_home(path, &canonical, home)?;
    let md = fs::metadata(&canonical).map_err(io_err("stat", &canonical))?;
    if !md.is_dir() {
        return Err(Error::unsafe_path(path, "is not a directory"));
    }
    Ok(canonical)
}

/// Checks where a workspace may land and returns it with its existing part canonicalised.
///
/// The path must be absolute, free of `..`, neither `/` nor the home directory nor an ancestor of
/// it (also after resolving symlinks), and not itself a symlink; its nearest existing ancestor
/// must be a writable directory, so the parent exists or can be made. Nothing is created.
pub fn check_destination(path: &Path, home: Option<&Path>) -> Result<PathBuf> {
    check_shape(path)?;
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(Error::unsafe_path(
            path,
            "contains `..`; give the destination without it",
        ));
    }
    let mut lexical = PathBuf::new();
    for c in path.components() {
        if c != Component::CurDir {
            lexical.push(c);
        }
    }
    if lexical.file_name().is_none() {
        return Err(Error::unsafe_path(path, "is the filesystem root"));
    }
    if let Ok(md) = fs::symlink_metadata(&lexical)
        && md.file_type().is_symlink()
    {
        return Err(Error::unsafe_path(
            path,
            "is a symlink; give the directory it points to",
        ));
    }
    // The part that exists is resolved, the rest appended: that is where the tree will land.
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    loop {
        match fs::symlink_metadata(existing) {
            Ok(_) => break,
            // ENOTDIR: a file sits where a directory should; the check below names it.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                rest.push(existing.file_name().map(ToOwned::to_owned));
                existing = existing.parent().unwrap_or(Path::new("/"));
            }
            Err(e) => return Err(Error::unsafe_path(path, format!("cannot be checked: {e}"))),
        }
    }
    let canonical_existing = fs::canonicalize(existing)
        .map_err(|e| Error::unsafe_path(path, format!("cannot be resolved: {e}")))?;
    let mut resolved = canonical_existing.clone();
    for name in rest.into_iter().rev().flatten() {
        resolved.push(name);
    }
    check_not_root_or_home(path, &resolved, home)?;
    let anchor = if resolved == canonical_existing {
        // The destination exists: what matters is that its parent takes new entries.
        canonical_existing
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    } else {
        canonical_existing
    };
    let md = fs::metadata(&anchor).map_err(io_err("stat", &anchor))?;
    if !md.is_dir() {
        return Err(Error::unsafe_path(
            path,
            format!("{} is not a directory", anchor.display()),
        ));
    }
    if !writable(&anchor) {
        return Err(Error::unsafe_path(
            path,
            format!("{} is not writable", anchor.display()),
        ));
    }
    Ok(resolved)
}

/// What `dest` holds now: nothing, an empty directory, or something else.
pub fn destination_state(dest: &Path) -> Result<DestinationState> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DestinationState::Absent),
        Err(e) => Err(io_err("stat", dest)(e)),
        Ok(md) if md.is_dir() => {
            let mut entries = fs::read_dir(dest).map_err(io_err("list", dest))?;
            Ok(if entries.next().is_none() {
                DestinationState::Empty
            } else {
                DestinationState::Exists
            })
        }
        Ok(_) => Ok(DestinationState::Exists),
    }
}

fn check_shape(path: &Path) -> Result<()> {
    let raw = path.as_os_str().as_bytes();
    if raw.is_empty() {
        return Err(Error::unsafe_path(path, "is empty; give an absolute path"));
    }
    if raw.starts_with(b"~") {
        return Err(Error::unsafe_path(
            path,
            "starts with `~`, which is not expanded here; give the absolute path",
        ));
    }
    if !path.is_absolute() {
        return Err(Error::unsafe_path(
            path,
            "is relative; give an absolute path",
        ));
    }
    Ok(())
}

fn check_not_root_or_home(given: &Path, resolved: &Path, home: Option<&Path>) -> Result<()> {
    if resolved.parent().is_none() {
        return Err(Error::unsafe_path(given, "is the filesystem root"));
    }
    let Some(home) = home else { return Ok(()) };
    // Compare with both spellings of home, since it may itself sit behind a symlink.
    let canonical_home = fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    for h in [home, canonical_home.as_path()] {
        if resolved == h {
            return Err(Error::unsafe_path(given, "is your home directory"));
        }
        if h.starts_with(resolved) {
            return Err(Error::unsafe_path(given, "contains your home directory"));
        }
    }
    Ok(())
}

fn writable(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_refused_before_touching_the_disk() {
        for (p, word) in [
            ("", "empty"),
            ("~", "`~`"),
            ("~/proj", "`~`"),
            ("proj", "relative"),
            ("./proj", "relative"),
        ] {
            let e = check_source(Path::new(p), None).unwrap_err();
            assert!(e.to_string().contains(word), "{p:?}: {e}");
            let e = check_destination(Path::new(p), None).unwrap_err();
            assert!(e.to_string().contains(word), "{p:?}: {e}");
        }
    }

    #[test]
    fn root_refused_in_every_spelling() {
        for p in ["/", "//", "/.", "/tmp/..", "/tmp/../.."] {
            let e = check_source(Path::new(p), None).unwrap_err();
            assert!(e.to_string().contains("root"), "{p}: {e}");
        }
        for p in ["/", "//", "/."] {
            let e = check_destination(Path::new(p), None).unwrap_err();
            assert!(e.to_string().contains("root"), "{p}: {e}");
        }
    }
}
