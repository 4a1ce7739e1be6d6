//! Workspace transfer for handoffs (DESIGN §5): path safety, selection with gitignore semantics,
//! manifests of content-defined chunks, delta planning, a resumable staging writer, and apply
//! with a conflict policy.
//!
//! The flow: the source checks its directory ([`check_source`]) and [`scan`]s it into a
//! manifest; the target validates what it receives ([`validate()`]), indexes what it already holds
//! ([`ChunkIndex`]), [`plan`]s the transfer, writes into a [`Stager`] beside the destination,
//! verifies ([`Stager::finish`]) and puts the result in place ([`StagedTree::apply`]).
//!
//! This crate never networks and never touches the destination path except through a rename of
//! a fully verified staging tree (invariant 5): an existing destination is moved only under
//! [`ConflictPolicy::Replace`], and then kept as a backup until commit. All I/O here blocks; the
//! daemon runs it on a blocking thread.

#![warn(missing_docs)]

mod apply;
mod chunk;
mod delta;
mod error;
mod found;
mod fsutil;
mod index;
mod packed;
mod plan;
mod pool;
mod progress;
pub mod safety;
mod scan;
mod select;
mod spool;
mod spool_index;
mod stage;
#[cfg(test)]
mod testutil;
pub mod validate;
mod watch;

pub use apply::{Applied, Leftover, StagedTree, leftovers, planned_path};
pub use baton_proto::workspace::{
    ChunkParams, ConflictPolicy, ContentHash, DestinationState, IgnoredFiles, PlanSummary,
    WorkspaceManifest,
};
pub use delta::{
    Changed, ManifestChange, ManifestDigest, diff, diff_entries, digest, digest_of, patch,
};
pub use error::{Error, Result};
pub use found::SPILL_ENTRIES_VAR;
pub use fsutil::{EARLY_WRITEBACK_MIN, WRITEBACK_VAR, available_bytes};
pub use index::{ChunkIndex, Located, Proof};
pub use packed::PackedManifest;
pub use plan::{Plan, check_space, plan, plan_absent, plan_entries};
pub use progress::{Progress, ProgressSnapshot};
pub use safety::{check_destination, check_source, destination_state};
pub use scan::{
    Measured, PreparedScan, Previous, Rescan, STREAM_FIRST_PART, ScanOptions, ScanPart, ScanStats,
    Scanned, SpooledPart, Walked, measure, now_ns, prepare_rescan, prepare_scan, scan,
    scan_reusing, walk,
};
pub use spool::{ManifestHead, SpoolEntries, SpoolReader, SpoolWriter, SpooledScan};
pub use spool_index::{CACHED_PARTS, LocalChunks, SpooledIndex};
pub use stage::{
    Claim, Filled, LINK_VAR, ReceivedManifest, Seal, Stager, check_transfer_id, link_enabled,
    staging_dir,
};
pub use validate::{Limits, validate};
pub use watch::{Changes, TreeWatch, WATCH_VAR, watch_enabled};
