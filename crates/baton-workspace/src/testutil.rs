//! Helpers shared by the crate's unit tests.

use std::path::Path;

use baton_proto::workspace::IgnoredFiles;

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
