//! Shared pieces of Baton's benchmarks. The benchmarks themselves live in the `baton-bench`
//! binary; this library holds what deserves unit tests of its own (the statistics, and how a
//! handoff's time is split into parts).

pub mod split;
pub mod stats;
