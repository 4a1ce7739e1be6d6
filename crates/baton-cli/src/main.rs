//! The `baton` binary: parses arguments and hands over to the library.

use clap::Parser;

/// Most malloc arenas. glibc gives every thread that allocates its own arena (up to eight per
/// core), and the workspace transfer allocates big manifests and indexes on many short-lived
/// blocking threads: memory freed in one arena is not reused by another, so a daemon's
/// footprint grew by tens of MiB with every handoff. Two arenas keep it flat (measured with the
/// workspace benchmark: peak 215 → 111 MiB over three rounds, at the same speed).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
const MALLOC_ARENAS: i32 = 2;

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing, before any other thread exists; mallopt only sets a tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
    let cli = baton_cli::Cli::parse();
    std::process::exit(baton_cli::run(cli));
}
