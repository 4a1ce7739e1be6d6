//! Small filesystem operations std lacks: no-replace rename, timestamps on symlinks, filesystem
//! sync, free space, and removal of trees with read-only directories.

use std::ffi::CString;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Modification time in nanoseconds since the epoch, saturating far outside ±292 years.
pub(crate) fn mtime_ns(md: &Metadata) -> i64 {
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}

/// Change time in nanoseconds since the epoch.
pub(crate) fn ctime_ns(md: &Metadata) -> i64 {
    md.ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.ctime_nsec())
}

/// Sets the modification time of `path` without following a final symlink; the access time is
/// left alone.
pub(crate) fn set_mtime(path: &Path, mtime_ns: i64) -> io::Result<()> {
    let c = cstring(path)?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
            tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
        },
    ];
    // SAFETY: `c` is a valid NUL-terminated string and `times` points to two timespecs, as
    // utimensat(2) requires; both outlive the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing anything at `to`
/// (plain rename(2) silently replaces an empty directory).
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let (f, t) = (cstring(from)?, cstring(to)?);
        // SAFETY: both strings are valid and NUL-terminated for the duration of the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // Filesystems without RENAME_NOREPLACE (some network ones) answer EINVAL; fall back to
        // check-then-rename, which is only racy against someone creating `to` meanwhile.
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
    }
    match fs::symlink_metadata(to) {
        Ok(_) => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(from, to),
        Err(e) => Err(e),
    }
}

/// Fsyncs a directory so that renames and creations in it are durable.
pub(crate) fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// The variable that says which staged files a target starts writing to disk as soon as they
/// are sealed: `1` every file, `0` none, unset (or anything else) files of at least
/// [`EARLY_WRITEBACK_MIN`] bytes.
pub const WRITEBACK_VAR: &str = "BATON_WORKSPACE_WRITEBACK";

/// Size from which a staged file is written to disk as soon as it is sealed, by default. A large
/// file goes out in a few large writes, and its bytes then no longer wait for the flush at the
/// end of the pre-copy; for small files one write each costs more than it saves (early writes
/// of every file did not make the first transfer faster).
pub const EARLY_WRITEBACK_MIN: u64 = 1024 * 1024;

/// The smallest file [`start_writeback`] writes early, `None` for none; from [`WRITEBACK_VAR`],
/// read once.
fn writeback_from() -> Option<u64> {
    static FROM: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *FROM.get_or_init(|| match std::env::var(WRITEBACK_VAR).as_deref() {
        Ok("1") => Some(0),
        Ok("0") => None,
        _ => Some(EARLY_WRITEBACK_MIN),
    })
}

/// Starts writing a file of `size` bytes to disk and returns without waiting, when
/// [`WRITEBACK_VAR`] asks for files of that size. A staged file is complete once sealed, so its
/// bytes can go to disk while later files are still arriving: the flush before apply
/// ([`sync_filesystem`]) then finds less left to write. Failure only loses that head start, so
/// it is ignored.
pub(crate) fn start_writeback(f: &File, size: u64) {
    if writeback_from().is_none_or(|min| size < min) {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the duration of the call; offset 0 with length 0
        // means the whole file.
        unsafe {
            libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
}

/// Flushes the whole filesystem holding `path`: one call instead of an fsync per staged file.
pub(crate) fn sync_filesystem(path: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let f = File::open(path)?;
        // SAFETY: the descriptor is open for the duration of the call.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        Ok(())
    }
}

/// Bytes an unprivileged user may still write on the filesystem holding `path` (or its nearest
/// existing ancestor, so a destination that does not exist yet can be checked).
#[allow(clippy::unnecessary_cast)] // statvfs field types differ between platforms
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let mut at = path;
    while fs::symlink_metadata(at).is_err() {
        at = at
            .parent()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    }
    let c = cstring(at)?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is valid and NUL-terminated; `st` is a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Removes a file, symlink or whole tree; absent is fine. Directories without owner write
/// permission (as Go's module cache makes them) are made writable first.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !md.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path)?;
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn make_dirs_writable(dir: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(dir)?;
    if !md.is_dir() {
        return Ok(());
    }
    let mode = md.permissions().mode();
    if mode & 0o700 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700))?;
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_dirs_writable(&entry.path())?;
        }
    }
    Ok(())
}

/// The (device, inode) pair of `path` itself (symlinks not followed).
pub(crate) fn identity(path: &Path) -> io::Result<(u64, u64)> {
    let md = fs::symlink_metadata(path)?;
    Ok((md.dev(), md.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noreplace_refuses_an_empty_directory() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        rename_noreplace(&a, &t.path().join("c")).unwrap();
        assert!(!a.exists());
    }

    #[test]
    fn removes_read_only_trees() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("ro");
        fs::create_dir_all(d.join("inner")).unwrap();
        fs::write(d.join("inner/f"), b"x").unwrap();
        fs::set_permissions(d.join("inner"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&d).unwrap();
        assert!(!d.exists());
        remove_tree(&d).unwrap();
    }

    #[test]
    fn mtime_on_symlink_itself() {
        let t = tempfile::tempdir().unwrap();
        let l = t.path().join("l");
        std::os::unix::fs::symlink("nowhere", &l).unwrap();
        set_mtime(&l, 1_500_000_000_123_456_789).unwrap();
        assert_eq!(
            mtime_ns(&fs::symlink_metadata(&l).unwrap()),
            1_500_000_000_123_456_789
        );
    }

    #[test]
    fn free_space_of_a_missing_path_uses_its_ancestor() {
        let t = tempfile::tempdir().unwrap();
        let n = available_bytes(&t.path().join("not/yet")).unwrap();
        assert!(n > 0);
    }
}
