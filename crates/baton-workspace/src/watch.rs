//! Change hints for a tree being handed off: an inotify watch on every directory a walk selects
//! records which paths changed since, so the final pass, made while the session is stopped,
//! walks only those parts of the tree (see [`crate::prepare_rescan`]).
//!
//! The walk adds a directory's watch as it meets the directory, before listing it (pass the
//! watch in [`crate::ScanOptions::watch`]), so watching costs one `inotify_add_watch` per
//! selected directory and no walk of its own; ignored directories are never watched. A directory
//! created later is named by its parent's event, and the final pass walks it whole.
//!
//! Events are hints, never content: a path they name is walked and stat'd again as in a full
//! scan, and anything the watch cannot vouch for (a queue overflow, a watch it could not add, an
//! ignore file that changed, too many paths) makes the next final pass walk the whole tree.
//! What inotify cannot see at all (writes through a shared `mmap` or through a hard link from
//! outside the tree, changes made on another machine of a network filesystem) is not caught;
//! `BATON_WORKSPACE_WATCH=0` turns the watch off.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchMask, Watches};

use crate::error::{Error, Result};

/// Set to `0` to make every final pass walk the whole tree.
pub const WATCH_VAR: &str = "BATON_WORKSPACE_WATCH";

/// Changed paths kept before the watch gives up on naming them (the next pass walks all).
const MAX_CHANGED: usize = 100_000;

/// What changed in a tree since a moment, as far as its watch knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Paths relative to the root that were created, written, removed, renamed or had their
    /// attributes changed (a directory stands for everything under it).
    pub paths: BTreeSet<String>,
    /// Why the watch cannot vouch for the tree, if it cannot: walk it all.
    pub unsure: Option<String>,
}

impl Changes {
    /// Changes that vouch for nothing.
    pub fn unsure(why: impl Into<String>) -> Self {
        Self {
            paths: BTreeSet::new(),
            unsure: Some(why.into()),
        }
    }

    /// Why a rescan must walk the whole tree, if it must: the watch is unsure, or a changed
    /// path is an ignore file, whose rules reach paths that did not change.
    pub fn needs_full_walk(&self) -> Option<String> {
        if let Some(why) = &self.unsure {
            return Some(why.clone());
        }
        self.paths.iter().find_map(|p| {
            let name = p.rsplit('/').next().unwrap_or(p);
            let rules = matches!(name, ".gitignore" | ".ignore")
                || p == ".git"
                || p == ".git/info"
                || p == ".git/info/exclude";
            rules.then(|| format!("{p} changed, and its rules reach paths that did not"))
        })
    }

    fn give_up(&mut self, why: String) {
        if self.unsure.is_none() {
            self.unsure = Some(why);
        }
        self.paths.clear();
    }
}

/// What the reading thread records.
#[derive(Default)]
struct State {
    changes: Changes,
    /// Events seen on the barrier file (see [`TreeWatch::take`]).
    barriers: u64,
}

struct Shared {
    state: Mutex<State>,
    barrier_seen: Condvar,
    /// Watched directories by watch descriptor, relative to the root ("" for the root).
    dirs: Mutex<HashMap<i32, String>>,
    stop: AtomicBool,
}

/// A watch of one tree's selected directories, recording changes until it is dropped.
pub struct TreeWatch {
    root: PathBuf,
    shared: Arc<Shared>,
    watches: Mutex<Watches>,
    /// A file of ours, outside the tree, on the same inotify queue: writing it and seeing its
    /// event proves every event queued before it has been recorded.
    barrier: tempfile::NamedTempFile,
    epoch: Mutex<u64>,
}

impl std::fmt::Debug for TreeWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWatch")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the watch is on (see [`WATCH_VAR`]).
pub fn watch_enabled() -> bool {
    std::env::var(WATCH_VAR).map_or(true, |v| v != "0")
}

/// What a directory's watch reports: changes to its entries and to itself, not reads.
fn dir_mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DONT_FOLLOW
        | WatchMask::ONLYDIR
        | WatchMask::EXCL_UNLINK
}

/// `dir/name`, or the nearest ancestor with a UTF-8 name (a directory stands for everything
/// under it); `None` for the root.
fn child(dir: &str, name: Option<&OsStr>) -> Option<String> {
    let name = name.and_then(|n| std::str::from_utf8(n.as_bytes()).ok());
    match (dir.is_empty(), name) {
        (true, None) => None,
        (false, None) => Some(dir.to_string()),
        (true, Some(n)) => Some(n.to_string()),
        (false, Some(n)) => Some(format!("{dir}/{n}")),
    }
}

impl Shared {
    /// Reads events until the watch is dropped.
    fn read(&self, mut inotify: Inotify, barrier_wd: i32) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let events = match inotify.read_events_blocking(&mut buf) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    lock(&self.state)
                        .changes
                        .give_up(format!("reading the watch failed: {e}"));
                    self.barrier_seen.notify_all();
                    return;
                }
            };
            let mut state = lock(&self.state);
            for event in events {
                let wd = event.wd.get_watch_descriptor_id();
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    state
                        .changes
                        .give_up("the watch lost events (its queue overflowed)".into());
                    continue;
                }
                if wd == barrier_wd {
                    state.barriers += 1;
                    continue;
                }
                if event.mask.contains(EventMask::IGNORED) || state.changes.unsure.is_some() {
                    continue;
                }
                let dir = lock(&self.dirs).get(&wd).cloned();
                let Some(dir) = dir else { continue };
                match child(&dir, event.name) {
                    Some(rel) => {
                        state.changes.paths.insert(rel);
                    }
                    // The root itself: its mode and mtime are taken again by every pass, but
                    // a root moved or deleted leaves nothing to vouch for.
                    None if event
                        .mask
                        .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) =>
                    {
                        state
                            .changes
                            .give_up("the workspace directory itself moved or went".into());
                    }
                    None => {}
                }
                if state.changes.paths.len() > MAX_CHANGED {
                    state
                        .changes
                        .give_up(format!("more than {MAX_CHANGED} paths changed"));
                }
            }
            drop(state);
            self.barrier_seen.notify_all();
            if self.stop.load(Ordering::Acquire) {
                return;
            }
        }
    }
}

impl TreeWatch {
    /// Starts a watch of `root` (canonical) itself, with a barrier file in `barrier_dir`
    /// (outside the tree, made when missing). Its directories are added by the walks given this
    /// watch (see [`crate::ScanOptions::watch`]).
    pub fn start(root: &Path, barrier_dir: &Path) -> Result<Self> {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(barrier_dir)
            .map_err(|e| Error::Io {
                action: "create",
                path: barrier_dir.to_path_buf(),
                source: e,
            })?;
        let barrier = tempfile::Builder::new()
            .prefix("watch-barrier-")
            .tempfile_in(barrier_dir)
            .map_err(|e| Error::Io {
                action: "create a watch barrier in",
                path: barrier_dir.to_path_buf(),
                source: e,
            })?;
        let inotify = Inotify::init().map_err(|e| Error::Io {
            action: "watch",
            path: root.to_path_buf(),
            source: e,
        })?;
        let mut watches = inotify.watches();
        let barrier_wd = watches
            .add(barrier.path(), WatchMask::MODIFY)
            .map_err(|e| Error::Io {
                action: "watch",
                path: barrier.path().to_path_buf(),
                source: e,
            })?
            .get_watch_descriptor_id();
        let root_wd = watches.add(root, dir_mask()).map_err(|e| Error::Io {
            action: "watch",
            path: root.to_path_buf(),
            source: e,
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            barrier_seen: Condvar::new(),
            dirs: Mutex::new(HashMap::from([(
                root_wd.get_watch_descriptor_id(),
                String::new(),
            )])),
            stop: AtomicBool::new(false),
        });
        // Not joined (see the drop): it ends once it sees `stop`.
        {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("baton-watch".into())
                .spawn(move || shared.read(inotify, barrier_wd))
                .map_err(|e| Error::Io {
                    action: "start a watch of",
                    path: root.to_path_buf(),
                    source: e,
                })?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            shared,
            watches: Mutex::new(watches),
            barrier,
            epoch: Mutex::new(0),
        })
    }

    /// The tree watched.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Watches directory `path` (`rel` under the root), met by a walk before it lists it. A
    /// watch that cannot be added (past `fs.inotify.max_user_watches`) leaves the watch unsure;
    /// a directory already gone is named by its parent's event.
    pub(crate) fn add_dir(&self, path: &Path, rel: &str) {
        // Held across the add: the reader, looking the descriptor up, waits for it to be known.
        let mut dirs = lock(&self.shared.dirs);
        let added = lock(&self.watches).add(path, dir_mask());
        match added {
            Ok(wd) => {
                dirs.insert(wd.get_watch_descriptor_id(), rel.to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                drop(dirs);
                lock(&self.shared.state).changes.give_up(format!(
                    "cannot watch {rel}: {e} (see fs.inotify.max_user_watches)"
                ));
            }
        }
    }

    /// How many times [`TreeWatch::take`] was called: a scan whose walk began at epoch `n` is
    /// what the changes of the next `take` are counted from.
    pub fn epoch(&self) -> u64 {
        *lock(&self.epoch)
    }

    /// The changes made since the watch started or since the last call (every change made
    /// before this call, as the barrier proves; unsure when it does not within `wait`).
    pub fn take(&self, wait: Duration) -> Changes {
        *lock(&self.epoch) += 1;
        let seen = lock(&self.shared.state).barriers;
        let wrote = self.barrier.as_file().write_all(b".");
        let deadline = Instant::now() + wait;
        let mut state = lock(&self.shared.state);
        while wrote.is_ok() && state.barriers == seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .shared
                .barrier_seen
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let caught_up = state.barriers != seen;
        let changes = std::mem::take(&mut state.changes);
        match (wrote, caught_up) {
            (Err(e), _) => {
                Changes::unsure(format!("the watch's barrier could not be written: {e}"))
            }
            (Ok(()), false) => Changes::unsure(format!(
                "the watch did not catch up within {} ms",
                wait.as_millis()
            )),
            (Ok(()), true) => changes,
        }
    }
}

impl Drop for TreeWatch {
    fn drop(&mut self) {
        // Wakes the reading thread (blocked on the queue) so that it sees the flag and ends,
        // closing the inotify instance and with it every watch. It is not joined: a drop may
        // run on an async worker, which must not wait on a thread.
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.barrier.as_file().write_all(b".");
    }
}
