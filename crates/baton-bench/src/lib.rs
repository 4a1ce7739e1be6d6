//! Shared pieces of Baton's benchmarks. The benchmarks themselves live in the `baton-bench`
//! binary; this library holds what deserves unit tests of its own (the statistics).

pub mod stats;
