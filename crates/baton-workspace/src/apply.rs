//! Putting a verified staging tree in place under a conflict policy (DESIGN §3.5), and undoing
//! it.
//!
//! Before any rename, apply writes `apply.json` into the staging directory: where the tree goes,
//! where an existing destination is moved, and the tree's inode. Every later step (finish the
//! apply, commit, roll back) reads only that record and the disk, so each can be repeated after a
//! crash at any point and [`leftovers`] can find and settle what a crash left behind. A path is
//! removed only when its inode is the staged tree's, so a rollback never deletes a tree it did
//! not put there.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use baton_proto::workspace::{ConflictPolicy, DestinationState};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io_err};
use crate::fsutil::{fsync_dir, identity, remove_tree, rename_noreplace, set_mtime};
use crate::safety::destination_state;
use crate::stage::{ReceivedManifest, TREE, beside, check_transfer_id};

pub(crate) const APPLY_RECORD: &str = "apply.json";

/// Most `-handoff-N` names tried before giving up.
const MAX_SIBLINGS: u32 = 1000;

/// A verified staging tree, ready to be put in place.
#[derive(Debug)]
pub struct StagedTree {
    pub(crate) dest: PathBuf,
    pub(crate) id: String,
    pub(crate) dir: PathBuf,
    pub(crate) root_mode: u32,
    pub(crate) root_mtime_ns: i64,
    /// The manifest the tree was verified against (see [`StagedTree::take_manifest`]).
    pub(crate) manifest: Option<ReceivedManifest>,
}

/// What apply did, as recorded before doing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ApplyRecord {
    policy: ConflictPolicy,
    dest: PathBuf,
    final_path: PathBuf,
    backup: Option<PathBuf>,
    tree_dev: u64,
    tree_ino: u64,
    root_mode: u32,
    root_mtime_ns: i64,
}

/// A workspace put in place, not yet committed: its backup (if any) and staging directory remain
/// until [`Applied::commit`] or [`Applied::rollback`].
#[derive(Debug)]
pub struct Applied {
    id: String,
    dir: PathBuf,
    rec: ApplyRecord,
}

/// Something a crash left beside a destination, found by [`leftovers`].
#[derive(Debug)]
pub enum Leftover {
    /// A staging directory that was never applied (possibly partial).
    Staging {
        /// Its transfer id.
        id: String,
        /// The staging directory.
        path: PathBuf,
    },
    /// An apply that began: finish it with [`Applied::commit`] or undo it with
    /// [`Applied::rollback`].
    Applied(Applied),
    /// A backup whose staging directory is gone (only manual meddling makes one).
    Backup {
        /// Its transfer id.
        id: String,
        /// The backup.
        path: PathBuf,
    },
}

impl StagedTree {
    /// Moves out the manifest the tree was verified against (apply does not need it), leaving
    /// an empty one: the caller can remember the tree as scanned without copying the manifest
    /// while the session is stopped.
    /// `None` once taken.
    pub fn take_manifest(&mut self) -> Option<ReceivedManifest> {
        self.manifest.take()
    }

    /// The verified tree, still inside the staging directory.
    pub fn path(&self) -> PathBuf {
        self.dir.join(TREE)
    }

    /// The transfer id.
    pub fn transfer_id(&self) -> &str {
        &self.id
    }

    /// Puts the tree in place and returns where it is now.
    ///
    /// Destination absent: the tree is renamed to it. An empty directory there is moved aside
    /// like a backup (restored on rollback) under either policy. Something there: under
    /// [`ConflictPolicy::Sibling`] the tree goes to `<dest>-handoff`, `<dest>-handoff-2`, … and
    /// the existing tree is not touched; under [`ConflictPolicy::Replace`] the existing tree is
    /// renamed to `<dest>.baton-backup-<id>` first. Renames never replace anything. On failure
    /// the renames done are undone and the staging directory stays.
    pub fn apply(self, policy: ConflictPolicy) -> Result<Applied> {
        let tree = self.path();
        let (tree_dev, tree_ino) = identity(&tree).map_err(io_err("stat", &tree))?;
        let state = destination_state(&self.dest)?;
        let mut rec = ApplyRecord {
            policy,
            dest: self.dest.clone(),
            final_path: self.dest.clone(),
            backup: None,
            tree_dev,
            tree_ino,
            root_mode: self.root_mode,
            root_mtime_ns: self.root_mtime_ns,
        };
        let mut sibling = 0;
        match (state, policy) {
            (DestinationState::Absent, _) => {}
            (DestinationState::Empty, _) | (DestinationState::Exists, ConflictPolicy::Replace) => {
                rec.backup = Some(beside(&self.dest, &format!(".baton-backup-{}", self.id))?);
            }
            (DestinationState::Exists, ConflictPolicy::Sibling) => {
                (sibling, rec.final_path) = free_sibling(&self.dest, 1)?;
            }
        }
        let applied = Applied {
            id: self.id,
            dir: self.dir,
            rec,
        };
        applied.run(sibling)
    }

    /// Removes the staging directory: the transfer is abandoned.
    pub fn abort(self) -> Result<()> {
        remove_tree(&self.dir).map_err(io_err("remove", &self.dir))
    }
}

impl Applied {
    /// Records, then renames; a sibling name taken meanwhile moves on to the next one.
    fn run(mut self, mut sibling: u32) -> Result<Self> {
        loop {
            write_record(&self.dir, &self.rec)?;
            match self.roll_forward() {
                Ok(()) => return Ok(self),
                Err(e)
                    if sibling > 0
                        && matches!(&e, Error::Io { source, .. }
                            if source.kind() == io::ErrorKind::AlreadyExists) =>
                {
                    (sibling, self.rec.final_path) = free_sibling(&self.rec.dest, sibling + 1)?;
                }
                Err(e) => {
                    // Back to a plain staged tree, so the caller may retry or abort.
                    let _ = self.undo_keep_staging();
                    return Err(e);
                }
            }
        }
    }

    /// Where the workspace is now.
    pub fn path(&self) -> &Path {
        &self.rec.final_path
    }

    /// Where the previous destination is kept until commit, if it was moved.
    pub fn backup(&self) -> Option<&Path> {
        self.rec.backup.as_deref()
    }

    /// The transfer id.
    pub fn transfer_id(&self) -> &str {
        &self.id
    }

    /// The policy it was applied under.
    pub fn policy(&self) -> ConflictPolicy {
        self.rec.policy
    }

    fn tree(&self) -> PathBuf {
        self.dir.join(TREE)
    }

    fn is_ours(&self, path: &Path) -> bool {
        identity(path).is_ok_and(|id| id == (self.rec.tree_dev, self.rec.tree_ino))
    }

    fn parent(&self) -> &Path {
        self.rec.dest.parent().unwrap_or(Path::new("/"))
    }

    /// Does whatever renames of the record are not done yet.
    fn roll_forward(&self) -> Result<()> {
        let tree = self.tree();
        let tree_here = fs::symlink_metadata(&tree).is_ok();
        let dest = &self.rec.dest;
        if let Some(b) = &self.rec.backup
            && tree_here
            && fs::symlink_metadata(b).is_err()
            && fs::symlink_metadata(dest).is_ok()
        {
            rename_noreplace(dest, b).map_err(io_err("move aside", dest))?;
        }
        if tree_here {
            rename_noreplace(&tree, &self.rec.final_path)
                .map_err(io_err("rename into", &self.rec.final_path))?;
        }
        let fin = &self.rec.final_path;
        if self.is_ours(fin) {
            fs::set_permissions(fin, fs::Permissions::from_mode(self.rec.root_mode))
                .map_err(io_err("chmod", fin))?;
            set_mtime(fin, self.rec.root_mtime_ns).map_err(io_err("set mtime of", fin))?;
        }
        fsync_dir(self.parent()).map_err(io_err("sync", self.parent()))?;
        Ok(())
    }

    /// Undoes the renames but keeps the staged tree, for a failed apply.
    fn undo_keep_staging(&self) -> Result<()> {
        let tree = self.tree();
        let fin = &self.rec.final_path;
        if fs::symlink_metadata(&tree).is_err() && self.is_ours(fin) {
            rename_noreplace(fin, &tree).map_err(io_err("move back", fin))?;
        }
        self.restore_backup()?;
        let rec = self.dir.join(APPLY_RECORD);
        fs::remove_file(&rec).map_err(io_err("remove", &rec))
    }

    fn restore_backup(&self) -> Result<()> {
        let Some(b) = &self.rec.backup else {
            return Ok(());
        };
        if fs::symlink_metadata(b).is_err() {
            return Ok(());
        }
        let dest = &self.rec.dest;
        match rename_noreplace(b, dest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::Conflict {
                path: dest.clone(),
                reason: format!(
                    "something else is there now; the previous tree is kept at {}",
                    b.display()
                ),
            }),
            Err(e) => Err(io_err("restore", b)(e)),
        }
    }

    /// Keeps the new tree: finishes the renames if a crash interrupted them, removes the backup
    /// and the staging directory. Returns where the workspace is.
    pub fn commit(self) -> Result<PathBuf> {
        self.roll_forward()?;
        if let Some(b) = &self.rec.backup {
            remove_tree(b).map_err(io_err("remove", b))?;
        }
        remove_tree(&self.dir).map_err(io_err("remove", &self.dir))?;
        fsync_dir(self.parent()).map_err(io_err("sync", self.parent()))?;
        Ok(self.rec.final_path)
    }

    /// Undoes the apply: removes the tree it put in place, moves the previous destination back
    /// exactly as it was, and removes the staging directory.
    pub fn rollback(self) -> Result<()> {
        let fin = &self.rec.final_path;
        if fs::symlink_metadata(self.tree()).is_err() && self.is_ours(fin) {
            remove_tree(fin).map_err(io_err("remove", fin))?;
        }
        self.restore_backup()?;
        remove_tree(&self.dir).map_err(io_err("remove", &self.dir))?;
        fsync_dir(self.parent()).map_err(io_err("sync", self.parent()))
    }
}

impl Leftover {
    /// The transfer id.
    pub fn transfer_id(&self) -> &str {
        match self {
            Self::Staging { id, .. } | Self::Backup { id, .. } => id,
            Self::Applied(a) => &a.id,
        }
    }

    /// Finishes it for a transfer that committed: an apply is rolled forward, and a backup or a
    /// staging directory left without its apply record (its removal had begun) is removed.
    pub fn commit(self) -> Result<()> {
        match self {
            Self::Applied(a) => a.commit().map(drop),
            Self::Staging { path, .. } | Self::Backup { path, .. } => {
                remove_tree(&path).map_err(io_err("remove", &path))
            }
        }
    }

    /// Undoes it: a staging directory is removed, an apply rolled back, an orphan backup moved
    /// back to the destination when nothing else is there.
    pub fn rollback(self) -> Result<()> {
        match self {
            Self::Staging { path, .. } => remove_tree(&path).map_err(io_err("remove", &path)),
            Self::Applied(a) => a.rollback(),
            Self::Backup { path, .. } => {
                let Some(dest) = strip_suffix(&path, ".baton-backup-") else {
                    return Ok(());
                };
                match rename_noreplace(&path, &dest) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::Conflict {
                        path: dest,
                        reason: format!(
                            "exists; the backup stays at {} for you to sort out",
                            path.display()
                        ),
                    }),
                    Err(e) => Err(io_err("restore", &path)(e)),
                }
            }
        }
    }
}

/// Staging directories, begun applies and backups that transfers to `dest` left behind.
pub fn leftovers(dest: &Path) -> Result<Vec<Leftover>> {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Ok(Vec::new());
    };
    let entries = match fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", parent)(e)),
    };
    let staging = [name.as_bytes(), b".baton-staging-"].concat();
    let backup = [name.as_bytes(), b".baton-backup-"].concat();
    let mut found = Vec::new();
    let mut backups = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("list", parent))?;
        let file_name = entry.file_name();
        let n = file_name.as_bytes();
        let id_of = |prefix: &[u8]| {
            n.strip_prefix(prefix)
                .and_then(|id| std::str::from_utf8(id).ok())
                .filter(|id| check_transfer_id(id).is_ok())
                .map(str::to_string)
        };
        if let Some(id) = id_of(&staging) {
            let path = entry.path();
            let rec_path = path.join(APPLY_RECORD);
            match fs::read(&rec_path) {
                Ok(bytes) => {
                    let rec: ApplyRecord = serde_json::from_slice(&bytes).map_err(|e| {
                        io_err("parse", &rec_path)(io::Error::new(io::ErrorKind::InvalidData, e))
                    })?;
                    found.push(Leftover::Applied(Applied { id, dir: path, rec }));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    found.push(Leftover::Staging { id, path });
                }
                Err(e) => return Err(io_err("read", &rec_path)(e)),
            }
        } else if let Some(id) = id_of(&backup) {
            backups.push((id, entry.path()));
        }
    }
    for (id, path) in backups {
        if !found.iter().any(|l| l.transfer_id() == id) {
            found.push(Leftover::Backup { id, path });
        }
    }
    Ok(found)
}

/// The first free `<dest>-handoff[-n]` from `n = start`, with the number used.
/// Where [`StagedTree::apply`] would put a tree for `dest` under `policy` if it ran now: the
/// destination itself, or under `sibling` over an existing tree the first free
/// `<dest>-handoff[-N]`. Lets a caller rewrite paths for the final place before applying.
pub fn planned_path(dest: &Path, policy: ConflictPolicy) -> Result<PathBuf> {
    match (destination_state(dest)?, policy) {
        (DestinationState::Exists, ConflictPolicy::Sibling) => Ok(free_sibling(dest, 1)?.1),
        _ => Ok(dest.to_path_buf()),
    }
}

fn free_sibling(dest: &Path, start: u32) -> Result<(u32, PathBuf)> {
    for n in start..=MAX_SIBLINGS {
        let suffix = if n == 1 {
            "-handoff".to_string()
        } else {
            format!("-handoff-{n}")
        };
        let p = beside(dest, &suffix)?;
        if fs::symlink_metadata(&p).is_err() {
            return Ok((n, p));
        }
    }
    Err(Error::Conflict {
        path: dest.to_path_buf(),
        reason: format!("{MAX_SIBLINGS} `-handoff` siblings exist already; pick another path"),
    })
}

/// The destination a `<dest><marker><id>` name belongs to.
fn strip_suffix(path: &Path, marker: &str) -> Option<PathBuf> {
    let name = path.file_name()?.as_bytes();
    let at = name
        .windows(marker.len())
        .rposition(|w| w == marker.as_bytes())?;
    Some(path.with_file_name(OsStr::from_bytes(&name[..at])))
}

/// Writes the record atomically: temp file, fsync, rename, fsync the directory.
fn write_record(dir: &Path, rec: &ApplyRecord) -> Result<()> {
    let json = serde_json::to_vec_pretty(rec).expect("the record always serialises to JSON");
    let tmp = dir.join(format!("{APPLY_RECORD}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(&json).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    let path = dir.join(APPLY_RECORD);
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    fsync_dir(dir).map_err(io_err("sync", dir))
}
