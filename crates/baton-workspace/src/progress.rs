//! Counters a caller polls to drive a progress bar while a blocking operation runs elsewhere.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters: files and bytes done out of a total. Scanning counts files hashed, staging
/// counts files completed and bytes written, `finish` counts files verified.
#[derive(Debug, Default)]
pub struct Progress {
    files: AtomicU64,
    bytes: AtomicU64,
    total_files: AtomicU64,
    total_bytes: AtomicU64,
}

/// One reading of a [`Progress`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Files done.
    pub files: u64,
    /// Bytes done.
    pub bytes: u64,
    /// Files to do in this step.
    pub total_files: u64,
    /// Bytes to do in this step.
    pub total_bytes: u64,
}

impl Progress {
    /// The counters now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            files: self.files.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            total_files: self.total_files.load(Ordering::Relaxed),
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
        }
    }

    /// Starts a new step: totals set, done counters zeroed.
    pub(crate) fn start(&self, total_files: u64, total_bytes: u64) {
        self.files.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.total_files.store(total_files, Ordering::Relaxed);
        self.total_bytes.store(total_bytes, Ordering::Relaxed);
    }

    /// Counts work done.
    pub(crate) fn add(&self, files: u64, bytes: u64) {
        if files > 0 {
            self.files.fetch_add(files, Ordering::Relaxed);
        }
        if bytes > 0 {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}
