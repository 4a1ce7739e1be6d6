//! The paths a walk selected, in path order. Up to a count they are sorted in memory; beyond it
//! they are spilled to sorted runs on disk as the walk goes, and merged into one sorted file
//! when it ends, so a walk of any tree holds at most that count in memory. Read back, the file
//! costs a small buffer.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result, io_err};
use crate::select::{Found, Stat, What};
use crate::spool::{Reader, put_i64, put_str, put_u64};

/// Paths a walk holds in memory before it spills them to disk, sorted.
pub(crate) const SPILL_ENTRIES: usize = 128 * 1024;

/// Environment variable setting [`SPILL_ENTRIES`] lower, so that tests cover the spilled walk
/// with small trees.
pub const SPILL_ENTRIES_VAR: &str = "BATON_TEST_WALK_SPILL_ENTRIES";

/// Selected paths, sorted and without duplicates; clones share.
#[derive(Clone)]
pub(crate) enum FoundSet {
    Memory(Arc<Vec<(String, Found)>>),
    Spilled { file: Arc<File>, len: u64 },
}

/// What a finished collection counted.
pub(crate) struct Collected {
    pub(crate) found: FoundSet,
    pub(crate) entries: usize,
    pub(crate) files: u64,
    pub(crate) bytes: u64,
}

/// Takes paths from the walking threads, in any order.
pub(crate) struct Collector {
    dir: PathBuf,
    limit: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    mem: Vec<(String, Found)>,
    runs: Vec<(File, u64)>,
}

impl Collector {
    /// A collector spilling to unlinked files in `dir` beyond `limit` paths (default
    /// [`SPILL_ENTRIES`], or [`SPILL_ENTRIES_VAR`] when set).
    pub(crate) fn new(dir: &Path, limit: Option<usize>) -> Self {
        let limit = limit
            .or_else(|| {
                std::env::var(SPILL_ENTRIES_VAR)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
            })
            .filter(|n| *n > 0)
            .unwrap_or(SPILL_ENTRIES);
        Self {
            dir: dir.to_path_buf(),
            limit,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a path (a path added twice is kept once).
    pub(crate) fn push(&self, rel: String, found: Found) -> Result<()> {
        let mut inner = self.lock();
        inner.mem.push((rel, found));
        if inner.mem.len() >= self.limit {
            let mut batch = std::mem::take(&mut inner.mem);
            sort_dedup(&mut batch);
            let run = self.write_run(batch.into_iter().map(Ok))?;
            inner.runs.push(run);
        }
        Ok(())
    }

    fn write_run(
        &self,
        entries: impl Iterator<Item = Result<(String, Found)>>,
    ) -> Result<(File, u64)> {
        std::fs::create_dir_all(&self.dir).map_err(io_err("create", &self.dir))?;
        let file =
            tempfile::tempfile_in(&self.dir).map_err(io_err("spill a walk to", &self.dir))?;
        let mut at = 0u64;
        let mut buf = Vec::with_capacity(256 * 1024);
        for e in entries {
            let (rel, found) = e?;
            encode(&mut buf, &rel, &found);
            if buf.len() >= 240 * 1024 {
                file.write_all_at(&buf, at)
                    .map_err(io_err("spill a walk to", &self.dir))?;
                at += buf.len() as u64;
                buf.clear();
            }
        }
        file.write_all_at(&buf, at)
            .map_err(io_err("spill a walk to", &self.dir))?;
        at += buf.len() as u64;
        Ok((file, at))
    }

    /// Everything collected, sorted, deduplicated and counted.
    pub(crate) fn finish(self) -> Result<Collected> {
        let inner = std::mem::take(&mut *self.lock());
        let Inner { mut mem, mut runs } = inner;
        let mut count = Count::default();
        if runs.is_empty() {
            sort_dedup(&mut mem);
            mem.iter().for_each(|(_, f)| count.add(f));
            mem.shrink_to_fit();
            return Ok(count.of(FoundSet::Memory(Arc::new(mem))));
        }
        if !mem.is_empty() {
            sort_dedup(&mut mem);
            runs.push(self.write_run(mem.into_iter().map(Ok))?);
        }
        let mut heads: Vec<RunReader> = runs
            .into_iter()
            .map(|(f, len)| RunReader::new(Arc::new(f), len))
            .collect();
        let mut peeked: Vec<Option<(String, Found)>> = Vec::with_capacity(heads.len());
        for r in &mut heads {
            peeked.push(r.next().transpose()?);
        }
        // Merges the runs; on a path in several runs, the earliest run's entry is kept.
        let merged = std::iter::from_fn(|| {
            let i = (0..peeked.len())
                .filter(|&i| peeked[i].is_some())
                .min_by(|&a, &b| {
                    let key = |i: usize| peeked[i].as_ref().map(|(r, _)| r.as_str());
                    key(a).cmp(&key(b)).then(a.cmp(&b))
                })?;
            let item = peeked[i].take()?;
            let refill = heads[i].next().transpose();
            let mut out = Ok(item);
            match refill {
                Ok(next) => peeked[i] = next,
                Err(e) => out = Err(e),
            }
            // The same path in later runs goes.
            if let Ok((rel, _)) = &out {
                for j in 0..peeked.len() {
                    while peeked[j].as_ref().is_some_and(|(r, _)| r == rel) {
                        match heads[j].next().transpose() {
                            Ok(next) => peeked[j] = next,
                            Err(e) => return Some(Err(e)),
                        }
                    }
                }
            }
            Some(out)
        });
        let counted = merged.inspect(|e| {
            if let Ok((_, f)) = e {
                count.add(f);
            }
        });
        let (file, len) = self.write_run(counted)?;
        Ok(count.of(FoundSet::Spilled {
            file: Arc::new(file),
            len,
        }))
    }
}

#[derive(Default)]
struct Count {
    entries: usize,
    files: u64,
    bytes: u64,
}

impl Count {
    fn add(&mut self, f: &Found) {
        self.entries += 1;
        if matches!(f.what, What::File) {
            self.files += 1;
            self.bytes += f.md.len;
        }
    }

    fn of(self, found: FoundSet) -> Collected {
        Collected {
            found,
            entries: self.entries,
            files: self.files,
            bytes: self.bytes,
        }
    }
}

fn sort_dedup(v: &mut Vec<(String, Found)>) {
    // Stable: of a path added twice, the first added stays.
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.dedup_by(|later, earlier| later.0 == earlier.0);
}

impl FoundSet {
    /// The paths in order, read without consuming the set.
    pub(crate) fn iter(&self) -> Box<dyn Iterator<Item = Result<(String, Found)>> + Send> {
        match self {
            FoundSet::Memory(v) => {
                let v = Arc::clone(v);
                Box::new((0..v.len()).map(move |i| Ok(v[i].clone())))
            }
            FoundSet::Spilled { file, len } => Box::new(RunReader::new(Arc::clone(file), *len)),
        }
    }

    /// The paths in order; when nothing else holds the set, it is consumed (its memory freed
    /// as it is read).
    pub(crate) fn into_iter(self) -> Box<dyn Iterator<Item = Result<(String, Found)>> + Send> {
        match self {
            FoundSet::Memory(v) => match Arc::try_unwrap(v) {
                Ok(v) => Box::new(v.into_iter().map(Ok)),
                Err(shared) => FoundSet::Memory(shared).iter(),
            },
            FoundSet::Spilled { file, len } => Box::new(RunReader::new(file, len)),
        }
    }
}

/// Reads a run back in order, through a buffer.
struct RunReader {
    file: Arc<File>,
    len: u64,
    at: u64,
    buf: Vec<u8>,
    start: usize,
}

impl RunReader {
    fn new(file: Arc<File>, len: u64) -> Self {
        Self {
            file,
            len,
            at: 0,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Makes at least `n` unread bytes available, unless the run ends first.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        if self.buf.len() - self.start >= n {
            return Ok(());
        }
        self.buf.drain(..self.start);
        self.start = 0;
        let want = n.max(256 * 1024);
        while self.buf.len() < want && self.at < self.len {
            let old = self.buf.len();
            let take = ((want - old) as u64).min(self.len - self.at) as usize;
            self.buf.resize(old + take, 0);
            self.file.read_exact_at(&mut self.buf[old..], self.at)?;
            self.at += take as u64;
        }
        Ok(())
    }

    fn read_one(&mut self) -> Result<Option<(String, Found)>> {
        let io = |e| Error::Io {
            action: "read back a spilled walk",
            path: PathBuf::new(),
            source: e,
        };
        self.fill(4).map_err(io)?;
        if self.buf.len() == self.start {
            return Ok(None);
        }
        let head = self
            .buf
            .get(self.start..self.start + 4)
            .ok_or_else(|| io(io::Error::new(io::ErrorKind::InvalidData, "truncated")))?;
        let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        self.fill(4 + n).map_err(io)?;
        let body = self
            .buf
            .get(self.start + 4..self.start + 4 + n)
            .ok_or_else(|| io(io::Error::new(io::ErrorKind::InvalidData, "truncated")))?;
        let decoded = decode(&mut Reader { buf: body, at: 0 })
            .map_err(|why| io(io::Error::new(io::ErrorKind::InvalidData, why)))?;
        self.start += 4 + n;
        Ok(Some(decoded))
    }
}

impl Iterator for RunReader {
    type Item = Result<(String, Found)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.read_one() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                // Nothing more is read after an error.
                self.at = self.len;
                self.buf.clear();
                self.start = 0;
                Some(Err(e))
            }
        }
    }
}

fn encode(buf: &mut Vec<u8>, rel: &str, f: &Found) {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    put_str(buf, rel);
    let md = &f.md;
    put_u64(buf, md.len);
    put_u64(buf, u64::from(md.mode));
    put_i64(buf, md.mtime_ns);
    put_i64(buf, md.ctime_ns);
    put_u64(buf, md.dev);
    put_u64(buf, md.ino);
    match &f.what {
        What::Dir => buf.push(0),
        What::File => buf.push(1),
        What::Symlink(t) => {
            buf.push(2);
            put_str(buf, t);
        }
    }
    let n = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&n.to_le_bytes());
}

fn decode(r: &mut Reader<'_>) -> crate::spool::Decoded<(String, Found)> {
    let rel = r.string()?;
    let md = Stat {
        len: r.u64()?,
        mode: r.u32()?,
        mtime_ns: r.i64()?,
        ctime_ns: r.i64()?,
        dev: r.u64()?,
        ino: r.u64()?,
    };
    let what = match r.byte()? {
        0 => What::Dir,
        1 => What::File,
        2 => What::Symlink(r.string()?),
        _ => return Err("unknown kind"),
    };
    Ok((rel, Found { md, what }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(len: u64, what: What) -> Found {
        Found {
            md: Stat {
                len,
                mode: 0o100644,
                mtime_ns: -5,
                ctime_ns: 7,
                dev: 1,
                ino: len,
            },
            what,
        }
    }

    fn paths(set: &FoundSet) -> Vec<String> {
        set.iter().map(|e| e.expect("read").0).collect()
    }

    #[test]
    fn beyond_its_limit_a_walk_spills_sorted_runs_and_merges_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Collector::new(dir.path(), Some(5));
        // 40 paths in a scrambled order, a few of them twice (a later pass meets them again).
        let mut order: Vec<u64> = (0..40).map(|i| (i * 17) % 40).collect();
        order.extend([3, 30, 11]);
        for (k, i) in order.iter().enumerate() {
            let what = match i % 3 {
                0 => What::Dir,
                1 => What::File,
                _ => What::Symlink(format!("t{i}")),
            };
            // The first time a path is met its size is its number; later, something else.
            let first = order[..k].iter().all(|j| j != i);
            let len = if first { *i } else { 1000 + i };
            c.push(format!("p{i:03}"), found(len, what)).expect("push");
        }
        let got = c.finish().expect("finish");
        assert!(matches!(got.found, FoundSet::Spilled { .. }));
        assert_eq!(got.entries, 40);
        let files: Vec<u64> = (0..40).filter(|i| i % 3 == 1).collect();
        assert_eq!(got.files, files.len() as u64);
        assert_eq!(got.bytes, files.iter().sum::<u64>());
        let want: Vec<String> = (0..40).map(|i| format!("p{i:03}")).collect();
        assert_eq!(paths(&got.found), want);
        // Read twice while shared, then consumed: the same entries, as written.
        let again: Vec<_> = got
            .found
            .clone()
            .into_iter()
            .map(|e| e.expect("read"))
            .collect();
        assert_eq!(again.len(), 40);
        for (i, (rel, f)) in again.iter().enumerate() {
            assert_eq!(rel, &want[i]);
            assert_eq!(f.md.len, i as u64, "the first meeting of {rel} is kept");
            assert_eq!((f.md.mtime_ns, f.md.ctime_ns), (-5, 7));
            if let What::Symlink(t) = &f.what {
                assert_eq!(t, &format!("t{i}"));
            }
        }
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    #[test]
    fn under_its_limit_a_walk_stays_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Collector::new(dir.path(), Some(100));
        for i in [5u64, 1, 3, 1] {
            c.push(format!("p{i}"), found(i, What::File)).expect("push");
        }
        let got = c.finish().expect("finish");
        assert!(matches!(got.found, FoundSet::Memory(_)));
        assert_eq!(paths(&got.found), ["p1", "p3", "p5"]);
        assert_eq!((got.entries, got.files, got.bytes), (3, 3, 9));
    }
}
