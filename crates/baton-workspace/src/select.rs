//! Which paths of a source tree travel: the walk with gitignore semantics, the ignored-files
//! policy, `.git/`, and symlinks. No file content is read here.
//!
//! Rules:
//! - `.gitignore`, `.ignore`, `.git/info/exclude` and the global git excludes are honoured, also
//!   in trees that are not git repositories (`require_git(false)`): the files say what their
//!   author considers generated, whatever holds the tree's history; ignore files of parent
//!   directories apply too, as git applies them to a subdirectory of a repository.
//! - Hidden files are ordinary files (`hidden(false)`): dotfiles travel unless ignored.
//! - Every `.git` directory the walk reaches (always the root's) travels whole, unfiltered: git
//!   never applies ignore rules to its own directory, and a repository without its history is
//!   not the same workspace.
//! - Symlinks are never followed; one travels as a link when its target is relative and stays
//!   inside the tree, both by its text and, when it resolves, by where it resolves.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use baton_proto::workspace::{EntryKind, IgnoredFiles, SkipReason};
use ignore::WalkBuilder;
use ignore::overrides::{Override, OverrideBuilder};

use crate::error::{Error, Result};
use crate::found::{Collected, Collector};
use crate::fsutil::{ctime_ns, mtime_ns};
use crate::spool::SpooledScan;
use crate::validate::symlink_stays_inside;
use crate::watch::TreeWatch;

/// One selected path and what the walk saw of it (`lstat`).
#[derive(Clone)]
pub(crate) struct Found {
    pub(crate) md: Stat,
    pub(crate) what: What,
}

/// The fields of an `lstat` a scan uses. A walk keeps one per path of the tree, and these
/// take 48 bytes where a whole `Metadata` takes 176.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) len: u64,
    /// `st_mode`: type and permission bits.
    pub(crate) mode: u32,
    pub(crate) mtime_ns: i64,
    pub(crate) ctime_ns: i64,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

impl Stat {
    pub(crate) fn of(md: &Metadata) -> Self {
        Self {
            len: md.len(),
            mode: md.mode(),
            mtime_ns: mtime_ns(md),
            ctime_ns: ctime_ns(md),
            dev: md.dev(),
            ino: md.ino(),
        }
    }
}

/// The kind of a selected path.
#[derive(Clone)]
pub(crate) enum What {
    Dir,
    File,
    Symlink(String),
}

/// The outcome of selection: travelling paths in path order (spilled to `spill_dir` beyond
/// a count), and those left behind.
pub(crate) struct Selection {
    pub(crate) found: Collected,
    pub(crate) skipped: BTreeMap<String, SkipReason>,
}

/// What the walking threads add to.
struct Selecting {
    found: Collector,
    skipped: Mutex<BTreeMap<String, SkipReason>>,
}

/// A rescan's shortcut: directories with no changed path at, under or above them are not
/// walked; what the previous scan selected in them is taken as it was (see [`select`]).
pub(crate) struct Prune {
    /// Changed paths, relative to the root.
    changed: BTreeSet<String>,
    /// Directories left unwalked, relative.
    pruned: Mutex<HashSet<String>>,
}

impl Prune {
    /// Prunes directories that none of `changed` (relative to the root) touches.
    pub(crate) fn new(changed: BTreeSet<String>) -> Self {
        Self {
            changed,
            pruned: Mutex::default(),
        }
    }

    /// Directories left unwalked so far.
    pub(crate) fn pruned(&self) -> usize {
        lock(&self.pruned).len()
    }

    /// Whether directory `rel` must be walked: it changed, is under a path that changed (a new
    /// or moved directory), or holds one.
    fn walks(&self, rel: &str) -> bool {
        if self.changed.contains(rel) {
            return true;
        }
        let below = format!("{rel}/");
        if self
            .changed
            .range(below.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(&below))
        {
            return true;
        }
        rel.match_indices('/')
            .any(|(i, _)| self.changed.contains(&rel[..i]))
    }

    /// True when `rel` is a pruned directory or lies under one.
    fn covers(pruned: &HashSet<String>, rel: &str) -> bool {
        pruned.contains(rel)
            || rel
                .match_indices('/')
                .any(|(i, _)| pruned.contains(&rel[..i]))
    }

    /// False (and remembered) for directory `rel` when it is to be left unwalked.
    fn admits(&self, rel: &str) -> bool {
        if self.walks(rel) {
            return true;
        }
        lock(&self.pruned).insert(rel.to_string());
        false
    }
}

/// Walks `root` (canonical) and applies the rules of this module. With `prune`, directories
/// no change touches are not walked, and the previous scan's paths in them are taken instead
/// (symlinks among them are judged again, as where a link leads depends on other paths).
pub(crate) fn select(
    root: &Path,
    ignored: &IgnoredFiles,
    (spill_dir, spill_after): (&Path, Option<usize>),
    prune: Option<(&Arc<Prune>, &SpooledScan)>,
    watch: Option<&Arc<TreeWatch>>,
) -> Result<Selection> {
    let sel = Selecting {
        found: Collector::new(spill_dir, spill_after),
        skipped: Mutex::default(),
    };
    let filter = Filter {
        root: root.to_path_buf(),
        prune: prune.map(|(p, _)| Arc::clone(p)),
        watch: watch.cloned(),
    };
    let git_dirs = Arc::new(Mutex::new(Vec::new()));
    let mut main = builder(root, ignored, &git_dirs, filter.clone());
    sel.walk(root, &mut main, false)?;
    if let IgnoredFiles::Globs(globs) = ignored {
        // A second pass where the globs override the ignore rules. Overrides that whitelist
        // anything exclude every file they do not match, so this pass adds the ignored matches
        // and the first pass supplies the rest.
        let mut extra = builder(root, ignored, &git_dirs, filter.clone());
        extra.overrides(overrides(root, globs)?);
        sel.walk(root, &mut extra, false)?;
    }
    let mut dirs = git_dirs.lock().map(|v| v.clone()).unwrap_or_default();
    let root_git = root.join(".git");
    if fs::symlink_metadata(&root_git).is_ok_and(|m| m.is_dir()) {
        dirs.push(root_git);
    }
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        // The walker lists only directories it yielded, so a `.git` it met is in a selected
        // directory unless that one was left out when yielded: a name that is not UTF-8, or an
        // `lstat` that failed.
        let parent_selected = dir.parent().is_some_and(|p| {
            p == root
                || (p.strip_prefix(root).ok().and_then(Path::to_str).is_some()
                    && fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
        });
        if parent_selected {
            if let (Some(w), Some(rel)) = (
                &filter.watch,
                dir.strip_prefix(root).ok().and_then(Path::to_str),
            ) {
                w.add_dir(&dir, rel);
            }
            let mut all = WalkBuilder::new(&dir);
            all.standard_filters(false).follow_links(false);
            let f = filter.clone();
            all.filter_entry(move |e| f.admits(e));
            sel.walk(root, &mut all, true)?;
        }
    }
    if let Some((prune, previous)) = prune {
        sel.take_unwalked(root, prune, previous)?;
    }
    Ok(Selection {
        found: sel.found.finish()?,
        skipped: sel.skipped.into_inner().unwrap_or_else(|p| p.into_inner()),
    })
}

/// What every walk's entry filter does besides its own rules: leaves out pruned directories,
/// and watches the directories it lets through. The filter runs as a directory is found in
/// its parent's listing, before the walker lists the directory itself.
#[derive(Clone)]
struct Filter {
    root: PathBuf,
    prune: Option<Arc<Prune>>,
    watch: Option<Arc<TreeWatch>>,
}

impl Filter {
    fn admits(&self, e: &ignore::DirEntry) -> bool {
        if e.depth() == 0 || !e.file_type().is_some_and(|t| t.is_dir()) {
            return true;
        }
        // A name that is not UTF-8 is walked, to be listed as skipped as a full walk would, and
        // not watched: nothing under it travels.
        let Some(rel) = e
            .path()
            .strip_prefix(&self.root)
            .ok()
            .and_then(Path::to_str)
        else {
            return true;
        };
        if self.prune.as_ref().is_some_and(|p| !p.admits(rel)) {
            return false;
        }
        if let Some(w) = &self.watch {
            w.add_dir(e.path(), rel);
        }
        true
    }
}

fn builder(
    root: &Path,
    ignored: &IgnoredFiles,
    git_dirs: &Arc<Mutex<Vec<PathBuf>>>,
    filter: Filter,
) -> WalkBuilder {
    let mut b = WalkBuilder::new(root);
    match ignored {
        IgnoredFiles::Include => {
            b.standard_filters(false);
        }
        IgnoredFiles::Skip | IgnoredFiles::Globs(_) => {
            b.standard_filters(true).hidden(false).require_git(false);
        }
    }
    b.follow_links(false);
    let seen = Arc::clone(git_dirs);
    b.filter_entry(move |e| {
        let is_git_dir =
            e.depth() > 0 && e.file_name() == ".git" && e.file_type().is_some_and(|t| t.is_dir());
        if is_git_dir && let Ok(mut v) = seen.lock() {
            v.push(e.path().to_path_buf());
        }
        !is_git_dir && filter.admits(e)
    });
    b
}

/// Whitelist overrides for the globs, each also covering everything under a directory it names.
fn overrides(root: &Path, globs: &[String]) -> Result<Override> {
    let mut b = OverrideBuilder::new(root);
    for g in globs {
        if g.starts_with('!') {
            return Err(Error::BadOption(format!(
                "ignored-files glob {g:?} is a negation; list only what should travel"
            )));
        }
        let core = g.trim_end_matches('/');
        // Gitignore syntax: a glob without an inner `/` matches at any depth.
        let under = if core.contains('/') {
            format!("{core}/**")
        } else {
            format!("**/{core}/**")
        };
        for pat in [g.as_str(), under.as_str()] {
            b.add(pat).map_err(|e| {
                Error::BadOption(format!("ignored-files glob {g:?} is not valid: {e}"))
            })?;
        }
    }
    b.build()
        .map_err(|e| Error::BadOption(format!("ignored-files globs are not valid: {e}")))
}

/// Threads walking a tree. Listing directories and taking `lstat` of thousands of entries waits
/// on the disk when the cache is cold (as it is on a first handoff): several requests in flight
/// shorten that wait, whatever the number of cores.
fn walk_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().max(4))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Selecting {
    /// Walks with `b`, each path taken (`lstat`, rules) on the walking thread that met it.
    fn walk(&self, root: &Path, b: &mut WalkBuilder, include_top: bool) -> Result<()> {
        let fatal: Mutex<Option<Error>> = Mutex::new(None);
        b.threads(walk_threads()).build_parallel().run(|| {
            let fatal = &fatal;
            Box::new(move |item| match self.take(root, item, include_top) {
                Ok(()) => ignore::WalkState::Continue,
                Err(e) => {
                    lock(fatal).get_or_insert(e);
                    ignore::WalkState::Quit
                }
            })
        });
        match fatal.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One path the walker met. Errors without a path fail the walk.
    fn take(
        &self,
        root: &Path,
        item: std::result::Result<ignore::DirEntry, ignore::Error>,
        include_top: bool,
    ) -> Result<()> {
        let ent = match item {
            Ok(ent) => ent,
            Err(e) => {
                return match error_path(&e) {
                    Some(p) => {
                        self.skip(root, p, SkipReason::Unreadable);
                        Ok(())
                    }
                    None => Err(Error::Io {
                        action: "walk",
                        path: root.to_path_buf(),
                        source: io::Error::other(e.to_string()),
                    }),
                };
            }
        };
        if ent.depth() == 0 && !include_top {
            return Ok(());
        }
        let path = ent.path();
        let Some(rel) = path
            .strip_prefix(root)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
        else {
            return Ok(());
        };
        let Some(rel) = rel.to_str() else {
            self.skip(root, path, SkipReason::NonUtf8Name);
            return Ok(());
        };
        self.take_path(root, path, rel)
    }

    /// Takes `path` (`rel` under `root`) as it is now: `lstat`, then the rules.
    fn take_path(&self, root: &Path, path: &Path, rel: &str) -> Result<()> {
        // The walker's entries stat lazily; stat here, on the walking threads.
        let Ok(md) = fs::symlink_metadata(path) else {
            self.skip(root, path, SkipReason::Unreadable);
            return Ok(());
        };
        let ft = md.file_type();
        let what = if ft.is_dir() {
            What::Dir
        } else if ft.is_file() {
            What::File
        } else if ft.is_symlink() {
            match symlink_verdict(root, path, rel) {
                Ok(target) => What::Symlink(target),
                Err(reason) => {
                    self.skip(root, path, reason);
                    return Ok(());
                }
            }
        } else {
            self.skip(root, path, SkipReason::SpecialFile);
            return Ok(());
        };
        let md = Stat::of(&md);
        self.found.push(rel.to_string(), Found { md, what })
    }

    /// Takes what `previous` selected (or left out) under the directories `prune` left
    /// unwalked, as it was then: nothing there changed since, by the watch's account. Symlinks
    /// are judged again, as where one leads depends on paths elsewhere.
    fn take_unwalked(&self, root: &Path, prune: &Prune, previous: &SpooledScan) -> Result<()> {
        let pruned = lock(&prune.pruned).clone();
        if pruned.is_empty() {
            return Ok(());
        }
        let reader = previous.reader();
        for i in 0..reader.parts() {
            let part = reader.part(i)?;
            let local = part.local();
            for (j, e) in part.manifest.entries.iter().enumerate() {
                if !Prune::covers(&pruned, &e.path) {
                    continue;
                }
                let seen = local.get(j).copied().flatten();
                let (kind, what, len) = match &e.kind {
                    EntryKind::Dir => (libc::S_IFDIR, What::Dir, 0),
                    EntryKind::File(f) => (libc::S_IFREG, What::File, f.size),
                    EntryKind::Symlink { .. } => {
                        self.take_path(root, &root.join(&e.path), &e.path)?;
                        continue;
                    }
                };
                // Without what the earlier scan saw of the file, no hash is reused: it is read.
                let md = Stat {
                    len,
                    mode: kind | (e.mode & 0o7777),
                    mtime_ns: e.mtime_ns,
                    ctime_ns: seen.map_or(i64::MAX, |l| l.ctime_ns),
                    dev: seen.map_or(0, |l| l.dev),
                    ino: seen.map_or(0, |l| l.ino),
                };
                self.found.push(e.path.clone(), Found { md, what })?;
            }
        }
        for s in &previous.head().skipped {
            if !Prune::covers(&pruned, &s.path) {
                continue;
            }
            let path = root.join(&s.path);
            if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                self.take_path(root, &path, &s.path)?;
            } else {
                lock(&self.skipped).insert(s.path.clone(), s.reason);
            }
        }
        Ok(())
    }

    fn skip(&self, root: &Path, path: &Path, reason: SkipReason) {
        let rel = path.strip_prefix(root).unwrap_or(path);
        lock(&self.skipped).insert(rel.to_string_lossy().into_owned(), reason);
    }
}

/// The link's target when it may travel, or why not.
fn symlink_verdict(root: &Path, link: &Path, rel: &str) -> Result<String, SkipReason> {
    let target = fs::read_link(link).map_err(|_| SkipReason::Unreadable)?;
    let text = target.to_str().ok_or(SkipReason::NonUtf8Name)?;
    if target.is_absolute() {
        return Err(SkipReason::SymlinkAbsolute);
    }
    if !symlink_stays_inside(rel, text) {
        return Err(SkipReason::SymlinkOutside);
    }
    // Lexically inside, but `..` after another symlink can still lead out; where the link
    // resolves decides. A dangling link has nowhere to lead and travels as it is.
    match fs::canonicalize(link) {
        Ok(real) if !real.starts_with(root) => Err(SkipReason::SymlinkOutside),
        _ => Ok(text.to_string()),
    }
}

fn error_path(e: &ignore::Error) -> Option<&Path> {
    match e {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err)
        }
        ignore::Error::Loop { child, .. } => Some(child),
        ignore::Error::Partial(errs) => errs.iter().find_map(error_path),
        _ => None,
    }
}
