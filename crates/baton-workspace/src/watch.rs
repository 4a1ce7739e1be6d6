//! Change hints for a tree being handed off: an inotify watch (through `notify`) started before
//! the pre-copy's scan records which paths changed since, so the final pass, made while the
//! session is stopped, walks only those parts of the tree (see [`crate::prepare_rescan`]).
//!
//! Events are hints, never content: a path they name is walked and stat'd again as in a full
//! scan, and anything the watch cannot vouch for (a queue overflow, a watch it could not add, an
//! ignore file that changed, too many paths) makes the next final pass walk the whole tree.
//! What inotify cannot see at all (writes through a shared `mmap` or through a hard link from
//! outside the tree, changes made on another machine of a network filesystem) is not caught;
//! `BATON_WORKSPACE_WATCH=0` turns the watch off.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

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
}

struct State {
    changes: Changes,
    /// Events seen on the barrier file (see [`TreeWatch::take`]).
    barriers: u64,
}

struct Shared {
    state: Mutex<State>,
    barrier_seen: Condvar,
}

/// A recursive watch of one tree, recording changes until it is dropped.
pub struct TreeWatch {
    root: PathBuf,
    shared: Arc<Shared>,
    /// A file of ours, outside the tree, on the same watch: writing it and seeing its event
    /// proves every event queued before has been recorded.
    barrier: tempfile::NamedTempFile,
    epoch: Mutex<u64>,
    _watcher: RecommendedWatcher,
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

/// The relative path an event names, or the nearest ancestor of it with a UTF-8 name (a
/// directory stands for everything under it). `None` for the root itself or a path outside.
fn relative(root: &Path, path: &Path) -> Option<String> {
    let mut rel = path.strip_prefix(root).ok()?;
    loop {
        if rel.as_os_str().is_empty() {
            return None;
        }
        if let Some(s) = rel.to_str() {
            return Some(s.to_string());
        }
        rel = rel.parent()?;
    }
}

impl State {
    fn record(&mut self, root: &Path, barrier: &Path, event: notify::Result<notify::Event>) {
        if let Ok(e) = &event
            && e.paths.iter().any(|p| p == barrier)
        {
            self.barriers += 1;
            return;
        }
        if self.changes.unsure.is_some() {
            return;
        }
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                self.changes.unsure = Some(format!("the watch failed: {e}"));
                self.changes.paths.clear();
                return;
            }
        };
        if event.need_rescan() {
            self.changes.unsure = Some("the watch lost events (its queue overflowed)".into());
            self.changes.paths.clear();
            return;
        }
        match event.kind {
            // Reading a file (our own scan opens every one) changes nothing.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return,
            _ => {}
        }
        // The root's own mode and mtime are taken again by every pass.
        for p in &event.paths {
            if let Some(rel) = relative(root, p) {
                self.changes.paths.insert(rel);
            }
        }
        if self.changes.paths.len() > MAX_CHANGED {
            self.changes.unsure = Some(format!("more than {MAX_CHANGED} paths changed"));
            self.changes.paths.clear();
        }
    }
}

impl TreeWatch {
    /// Starts watching `root` (canonical) and everything under it, with a barrier file in
    /// `barrier_dir` (outside the tree). Fails when the watch cannot cover the tree, for example
    /// past `fs.inotify.max_user_watches` directories.
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
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                changes: Changes::default(),
                barriers: 0,
            }),
            barrier_seen: Condvar::new(),
        });
        let (s, r, b) = (
            Arc::clone(&shared),
            root.to_path_buf(),
            barrier.path().to_path_buf(),
        );
        let mut watcher = notify::recommended_watcher(move |event| {
            lock(&s.state).record(&r, &b, event);
            s.barrier_seen.notify_all();
        })
        .map_err(|e| watch_error(root, e))?;
        watcher
            .watch(barrier.path(), RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(barrier.path(), e))?;
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|e| watch_error(root, e))?;
        Ok(Self {
            root: root.to_path_buf(),
            shared,
            barrier,
            epoch: Mutex::new(0),
            _watcher: watcher,
        })
    }

    /// The tree watched.
    pub fn root(&self) -> &Path {
        &self.root
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

fn watch_error(root: &Path, e: notify::Error) -> Error {
    Error::Io {
        action: "watch",
        path: root.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}
