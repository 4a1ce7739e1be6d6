//! Entries on disk: creating them in the staging tree, and reading a finished file back to
//! check it against the manifest.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use baton_proto::workspace::{EntryKind, WorkspaceEntry};

use crate::error::{Error, Result, io_err};
use crate::fsutil::{remove_tree, set_mtime};

/// Files at least this large get their blocks reserved when created.
const PREALLOCATE_FROM: u64 = 1 << 20;

/// Reads a staged file back, checks its size and BLAKE3, then sets its mode and mtime.
pub(super) fn verify_file(tree: &Path, e: &WorkspaceEntry, buf: &mut [u8]) -> Result<()> {
    let Some(want) = e.file() else { return Ok(()) };
    let p = tree.join(&e.path);
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
        .map_err(io_err("open", &p))?;
    let mut h = blake3::Hasher::new();
    let mut size = 0u64;
    loop {
        let n = match f.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(io_err("read", &p)(err)),
        };
        h.update(&buf[..n]);
        size += n as u64;
    }
    let fail = |reason: String| Error::VerifyFailed {
        path: e.path.clone(),
        reason,
    };
    if size != want.size {
        return Err(fail(format!("{size} bytes, expected {}", want.size)));
    }
    if h.finalize().as_bytes() != want.hash.as_bytes() {
        return Err(fail("BLAKE3 differs from the manifest".into()));
    }
    set_file_meta(&f, &p, e)
}

/// Mode (setuid, setgid and sticky dropped) and mtime of a staged file, through its open handle.
fn set_file_meta(f: &File, p: &Path, e: &WorkspaceEntry) -> Result<()> {
    f.set_permissions(fs::Permissions::from_mode(e.mode & 0o777))
        .map_err(io_err("chmod", p))?;
    set_mtime(p, e.mtime_ns).map_err(io_err("set mtime of", p))
}

/// Creates one entry in the tree: directory, symlink, or preallocated file. With `resume`, what
/// is already there and right is kept; otherwise anything there is a collision (two manifest
/// paths naming one file, as on a case-insensitive filesystem).
pub(super) fn create_entry(tree: &Path, e: &WorkspaceEntry, resume: bool) -> Result<()> {
    let p = tree.join(&e.path);
    let collides = || Error::Conflict {
        path: p.clone(),
        reason: "collides with another manifest entry (case-insensitive or name-normalising \
                 filesystem?)"
            .into(),
    };
    match &e.kind {
        EntryKind::Dir => match DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                if resume && fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    Ok(())
                } else {
                    Err(collides())
                }
            }
            Err(err) => Err(io_err("create", &p)(err)),
        },
        EntryKind::Symlink { target } => match std::os::unix::fs::symlink(target, &p) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && resume => {
                if fs::read_link(&p).is_ok_and(|t| t.as_os_str() == target.as_str()) {
                    return Ok(());
                }
                remove_tree(&p).map_err(io_err("remove", &p))?;
                std::os::unix::fs::symlink(target, &p).map_err(io_err("create", &p))
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Err(collides()),
            Err(err) => Err(io_err("create", &p)(err)),
        },
        EntryKind::File(f) => {
            let mut o = OpenOptions::new();
            o.write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
            if resume {
                o.create(true);
            } else {
                o.create_new(true);
            }
            let file = match o.open(&p) {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Err(collides()),
                Err(err) => return Err(io_err("create", &p)(err)),
            };
            if f.size == 0 {
                // Nothing will ever be written to it: it is complete now.
                return set_file_meta(&file, &p, e);
            }
            // Small files get their size from their one write; preallocating them costs more
            // than the early "disk full" it would buy.
            if f.size >= PREALLOCATE_FROM {
                let len = match resume {
                    true => file.metadata().map_err(io_err("stat", &p))?.len(),
                    false => 0,
                };
                if len != f.size {
                    preallocate(&file, f.size).map_err(io_err("allocate", &p))?;
                }
            }
            Ok(())
        }
    }
}

/// Reserves the file's blocks so a full disk fails here rather than midway; falls back to a
/// sparse file where the filesystem cannot preallocate.
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(size)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the descriptor is open for writing for the duration of the call.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(e);
        }
    }
    file.set_len(size)
}
