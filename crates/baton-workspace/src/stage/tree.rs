//! Entries on disk: creating them in the staging tree, and checking a finished file against the
//! manifest, by reading it back or from what was written into it.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use baton_proto::workspace::{EntryKind, FileData, WorkspaceEntry};

use crate::error::{Error, Result, io_err};
use crate::fsutil::{remove_tree, set_mtime, start_writeback};

/// Files at least this large get their blocks reserved when created.
const PREALLOCATE_FROM: u64 = 1 << 20;

#[cfg(test)]
thread_local! {
    /// Files read back by [`verify_file`] on this thread.
    pub(super) static READ_BACKS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Reads a staged file back, checks its size and BLAKE3, then sets its mode and mtime.
pub(super) fn verify_file(tree: &Path, e: &WorkspaceEntry, buf: &mut [u8]) -> Result<()> {
    let Some(want) = e.file() else { return Ok(()) };
    #[cfg(test)]
    READ_BACKS.with(|n| n.set(n.get() + 1));
    let p = tree.join(&e.path);
    let mut f = open_nofollow(&p, false)?;
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
    check_file(
        e,
        want,
        size,
        h.finalize().as_bytes() == want.hash.as_bytes(),
    )?;
    set_file_meta(&f, &p, e)?;
    start_writeback(&f, size);
    Ok(())
}

/// Seals a staged file whose content is known without reading it back: the caller has just
/// written all of it through `f`, and `hash_matches` says whether those bytes hash to the
/// manifest's BLAKE3. Checks the size on disk as [`verify_file`] does, and sets the mode and
/// mtime.
pub(super) fn seal_written(
    tree: &Path,
    e: &WorkspaceEntry,
    f: &File,
    hash_matches: bool,
) -> Result<()> {
    let Some(want) = e.file() else { return Ok(()) };
    let p = tree.join(&e.path);
    let size = f.metadata().map_err(io_err("stat", &p))?.len();
    check_file(e, want, size, hash_matches)?;
    set_file_meta(f, &p, e)?;
    start_writeback(f, size);
    Ok(())
}

/// The error [`verify_file`] gives for a wrong size or BLAKE3.
fn check_file(e: &WorkspaceEntry, want: &FileData, size: u64, hash_matches: bool) -> Result<()> {
    let fail = |reason: String| Error::VerifyFailed {
        path: e.path.clone(),
        reason,
    };
    if size != want.size {
        return Err(fail(format!("{size} bytes, expected {}", want.size)));
    }
    if !hash_matches {
        return Err(fail("BLAKE3 differs from the manifest".into()));
    }
    Ok(())
}

/// Opens a staged file for reading, or for reading and writing with `write` (a file written
/// chunk by chunk reads back chunks that landed early, to hash them in order), never through a
/// symlink.
pub(super) fn open_nofollow(p: &Path, write: bool) -> Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
    };
    match write {
        true => writable_again(p, open),
        false => open(),
    }
    .map_err(io_err("open", p))
}

/// Runs `open` (for writing a staged file), and when the file's own mode refuses it (a file
/// sealed read-only, written again by a resume or a later pass; only root ignores the mode),
/// makes it owner-writable and runs `open` again. Its mode is set back when it is sealed.
fn writable_again(p: &Path, open: impl Fn() -> io::Result<File>) -> io::Result<File> {
    match open() {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // Never through a symlink: the staging directory is ours (0700), so what is a
            // regular file here stays one.
            let md = fs::symlink_metadata(p)?;
            if !md.file_type().is_file() {
                return Err(e);
            }
            fs::set_permissions(p, fs::Permissions::from_mode(md.mode() | 0o600))?;
            open()
        }
        other => other,
    }
}

/// Mode (setuid, setgid and sticky dropped) and mtime of a staged file, through its open handle.
fn set_file_meta(f: &File, p: &Path, e: &WorkspaceEntry) -> Result<()> {
    f.set_permissions(fs::Permissions::from_mode(e.mode & 0o777))
        .map_err(io_err("chmod", p))?;
    set_mtime(p, e.mtime_ns).map_err(io_err("set mtime of", p))
}

/// Opens a staged file for writing, creating it (`resume`: unless it exists already).
fn open_created(p: &Path, resume: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW);
    if resume {
        o.create(true);
    } else {
        o.create_new(true);
    }
    writable_again(p, || o.open(p))
}

/// True for the entries [`open_for_write`] creates at their first write rather than at
/// staging: files with content. Creating them as their data arrives overlaps the work of
/// creating thousands of files with the transfer, instead of holding the transfer up while a
/// part of the manifest is staged.
pub(super) fn created_lazily(e: &WorkspaceEntry) -> bool {
    matches!(&e.kind, EntryKind::File(f) if f.size > 0)
}

/// Opens the staged file of `e` for writing; at its first write (`created` false) creates it,
/// preallocated like [`create_entry`] does, and refuses a path that exists already (two
/// manifest paths naming one file, as on a case-insensitive filesystem).
pub(super) fn open_for_write(tree: &Path, e: &WorkspaceEntry, created: &mut bool) -> Result<File> {
    let size = e.file().map_or(0, |f| f.size);
    let file = open_for_write_at(&tree.join(&e.path), size, *created)?;
    *created = true;
    Ok(file)
}

/// [`open_for_write`] of the file at `p`, `size` bytes long, created already or not.
pub(super) fn open_for_write_at(p: &Path, size: u64, created: bool) -> Result<File> {
    if created {
        return open_nofollow(p, true);
    }
    let file = open_created(p, false).map_err(|err| match err.kind() {
        io::ErrorKind::AlreadyExists => Error::Conflict {
            path: p.to_path_buf(),
            reason: "collides with another manifest entry (case-insensitive or name-normalising \
                     filesystem?)"
                .into(),
        },
        _ => io_err("create", p)(err),
    })?;
    if size >= PREALLOCATE_FROM {
        preallocate(&file, size).map_err(io_err("allocate", p))?;
    }
    Ok(file)
}

/// Creates one entry in the tree: directory, symlink, or preallocated file. With `resume`, what
/// is already there and right is kept; otherwise anything there is a collision (two manifest
/// paths naming one file, as on a case-insensitive filesystem).
///
/// True when the entry is an empty file created here, hence complete and verified already.
pub(super) fn create_entry(tree: &Path, e: &WorkspaceEntry, resume: bool) -> Result<bool> {
    let p = tree.join(&e.path);
    let collides = || Error::Conflict {
        path: p.clone(),
        reason: "collides with another manifest entry (case-insensitive or name-normalising \
                 filesystem?)"
            .into(),
    };
    match &e.kind {
        EntryKind::Dir => match DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => Ok(false),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                if resume && fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    Ok(false)
                } else {
                    Err(collides())
                }
            }
            Err(err) => Err(io_err("create", &p)(err)),
        },
        EntryKind::Symlink { target } => match std::os::unix::fs::symlink(target, &p) {
            Ok(()) => Ok(false),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && resume => {
                if fs::read_link(&p).is_ok_and(|t| t.as_os_str() == target.as_str()) {
                    return Ok(false);
                }
                remove_tree(&p).map_err(io_err("remove", &p))?;
                std::os::unix::fs::symlink(target, &p).map_err(io_err("create", &p))?;
                Ok(false)
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Err(collides()),
            Err(err) => Err(io_err("create", &p)(err)),
        },
        EntryKind::File(f) => {
            let file = open_created(&p, resume).map_err(|err| match err.kind() {
                io::ErrorKind::AlreadyExists => collides(),
                _ => io_err("create", &p)(err),
            })?;
            if f.size == 0 {
                // Nothing will ever be written to it: it is complete now, and known empty unless
                // it was there before.
                set_file_meta(&file, &p, e)?;
                return Ok(!resume);
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
            Ok(false)
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
