//! Helpers shared by the crate's unit tests.

use std::path::Path;

use baton_proto::workspace::{
    ChunkParams, ChunkRef, ContentHash, EntryKind, FileData, IgnoredFiles, WorkspaceEntry,
    WorkspaceManifest,
};

use crate::index::ChunkIndex;
use crate::scan::{LocalStat, RACY_NS, ScanOptions, Scanned, scan};

/// `n` pseudo-random bytes from `seed` (xorshift): incompressible and chunkable.
pub(crate) fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A scan of `root` with ignored files skipped.
pub(crate) fn scanned(root: &Path) -> Scanned {
    let opts = ScanOptions {
        ignored: IgnoredFiles::Skip,
        ..ScanOptions::default()
    };
    scan(root, &opts, None).unwrap()
}

/// What the scan saw, as if it had read every file long after its last change (a test's
/// files are always racily new).
pub(crate) fn aged(s: &Scanned) -> Vec<Option<LocalStat>> {
    s.local()
        .iter()
        .map(|l| {
            l.map(|mut l| {
                l.read_ns += 2 * RACY_NS;
                l
            })
        })
        .collect()
}

/// An index of `s` built with the local knowledge `local`.
pub(crate) fn index_of(s: &Scanned, local: &[Option<LocalStat>]) -> ChunkIndex {
    let mut idx = ChunkIndex::new(s.manifest.params);
    assert!(idx.insert(s.root(), &s.manifest, local));
    idx
}

/// A one-chunk file entry of `size` bytes whose content hash is `byte` repeated.
pub(crate) fn file_entry(path: &str, byte: u8, size: u32) -> WorkspaceEntry {
    let hash = ContentHash([byte; 32]);
    WorkspaceEntry {
        path: path.into(),
        mode: 0o644,
        mtime_ns: 0,
        kind: EntryKind::File(FileData {
            size: u64::from(size),
            hash,
            chunks: vec![ChunkRef { hash, len: size }],
        }),
    }
}

/// A directory entry.
pub(crate) fn dir_entry(path: &str) -> WorkspaceEntry {
    WorkspaceEntry {
        path: path.into(),
        mode: 0o755,
        mtime_ns: 0,
        kind: EntryKind::Dir,
    }
}

/// A manifest of the default parameters holding `entries`.
pub(crate) fn manifest_of(entries: Vec<WorkspaceEntry>) -> WorkspaceManifest {
    let mut m = WorkspaceManifest::new(ChunkParams::DEFAULT);
    m.entries = entries;
    m
}
