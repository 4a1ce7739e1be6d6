//! The `baton` binary: parses arguments and hands over to the library.

use clap::Parser;

/// Most malloc arenas. glibc gives every thread that allocates its own arena (up to eight per
/// core), and the workspace transfer allocates big manifests and indexes on many short-lived
/// blocking threads: memory freed in one arena is not reused by another, so a daemon's
/// footprint grew by tens of MiB with every handoff. Two arenas keep it flat (measured with the
/// workspace benchmark: peak 215 → 111 MiB over three rounds, at the same speed).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
const MALLOC_ARENAS: i32 = 2;
/// Allocations below this come from the arenas rather than from their own mapping: a transfer
/// frame (1 MiB) mapped and unmapped for each frame costs a page fault and a zeroed page per
/// 4 KiB, several hundred milliseconds of CPU over a large workspace.
const MALLOC_MMAP_THRESHOLD: i32 = 8 << 20;
/// Free memory at the top of an arena kept for the next allocations instead of returned at
/// once, for the same reason; the daemon trims explicitly after each handoff.
const MALLOC_TRIM_THRESHOLD: i32 = 64 << 20;

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing, before any other thread exists; mallopt only sets a tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD);
    }
    let cli = baton_cli::Cli::parse();
    std::process::exit(baton_cli::run(cli));
}
