//! `baton-bench final-pass`: the target's side of a final pass after a pre-copy, in process,
//! two ways on the same change: the whole new manifest built from the change, checked and moved
//! to (what the daemon did before), against the change applied to the staged manifest (only the
//! changed entries checked and placed; the packed entries kept are copied record by record).
//! Figures: wall time, and the heap the step allocates above what the staging already held.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use baton_workspace::{
    ChunkIndex, IgnoredFiles, Limits, ScanOptions, Scanned, Stager, diff, digest, patch, scan,
};
use clap::Args;

/// Counts the heap in use and its peak, so a step's own allocations can be told apart.
pub struct CountingAlloc;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grown = new_size - layout.size();
                let now = IN_USE.fetch_add(grown, Ordering::Relaxed) + grown;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                IN_USE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Arguments of `final-pass`.
#[derive(Debug, Args)]
pub struct FinalPassArgs {
    /// Files in the synthetic tree (in directories of 100).
    #[arg(long, default_value_t = 100_000)]
    files: usize,
    /// Files edited after the pre-copy (as many again are removed, and as many added).
    #[arg(long, default_value_t = 10)]
    changed: usize,
    /// Measured runs of each way.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the trees go (default: target/bench/final-pass).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// What one run of one way took.
struct Run {
    ms: f64,
    heap: usize,
}

/// Runs the benchmark and prints its table.
pub fn run(args: FinalPassArgs) -> Result<()> {
    if args.runs == 0 || args.files == 0 || args.changed * 2 > args.files {
        bail!("--runs and --files must be at least 1, and --changed at most half of --files");
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/bench/final-pass"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let src = dir.join("src");
    println!("Writing {} files under {}", args.files, src.display());
    for i in 0..args.files {
        write(&src, i, 0)?;
    }
    let opts = ScanOptions {
        ignored: IgnoredFiles::Skip,
        ..ScanOptions::default()
    };
    let first = scan(&src, &opts, None)?;
    // The pre-copied version stays whole, for every staging to read from; the source goes on
    // in a copy that keeps its mtimes.
    let edited = dir.join("edited");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&edited)
        .status()
        .context("running cp -a")?;
    if !status.success() {
        bail!("cp -a {} {} failed", src.display(), edited.display());
    }
    let src = edited;
    // Edited, removed and added after the pre-copy, spread over the tree.
    let step = args.files / args.changed.max(1);
    for k in 0..args.changed {
        write(&src, k * step, 1)?;
        let gone = k * step + step / 2;
        std::fs::remove_file(src.join(rel(gone)))?;
        write(&src, args.files + k, 0)?;
    }
    let mut last = scan(&src, &opts, None)?;
    // The same tree at another root: only the root's own times differ.
    (last.manifest.root_mode, last.manifest.root_mtime_ns) =
        (first.manifest.root_mode, first.manifest.root_mtime_ns);
    let change = diff(&first.manifest, &last.manifest);
    let want = digest(&last.manifest);
    let root = (last.manifest.root_mode, last.manifest.root_mtime_ns);
    println!(
        "Tree: {} entries; change: {} changed, {} removed",
        first.manifest.entries.len(),
        change.changed.len(),
        change.removed.len()
    );
    let limits = Limits::default();
    let mut whole_runs = Vec::new();
    let mut change_runs = Vec::new();
    for r in 0..args.runs {
        // Alternated, so that neither way always runs on a warmer cache.
        for way in [r % 2, 1 - r % 2] {
            let id = format!("r{r}w{way}");
            let mut st = staged(&first, &dir.join(&id), &id)?;
            let measured = match way {
                0 => measure(|| {
                    let whole = patch(
                        &first.manifest,
                        change.clone(),
                        root,
                        last.manifest.skipped.clone(),
                    )?;
                    if digest(&whole) != want {
                        bail!("the patched manifest's digest differs");
                    }
                    st.update(whole, &limits)?;
                    Ok(())
                })?,
                _ => measure(|| {
                    st.apply_change(
                        change.clone(),
                        root,
                        last.manifest.skipped.clone(),
                        &want,
                        &limits,
                    )?;
                    Ok(())
                })?,
            };
            if st.manifest() != last.manifest {
                bail!("way {way} staged another manifest than the source's");
            }
            st.abort()?;
            match way {
                0 => whole_runs.push(measured),
                _ => change_runs.push(measured),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\nTarget's final pass after a pre-copy, {} files, {} runs each (heap: allocated above the staging's own, at the peak)",
        args.files, args.runs
    );
    println!(
        "{:<44} {:>9} {:>9} {:>11}",
        "", "median ms", "min ms", "heap MiB"
    );
    let row = |name: &str, runs: &[Run]| {
        let (med, min) = med_min(runs);
        let heap = runs.iter().map(|r| r.heap).max().unwrap_or(0) as f64 / (1 << 20) as f64;
        println!("{name:<44} {med:>9.1} {min:>9.1} {heap:>11.1}");
        (med, min, heap)
    };
    let (wm, wn, wh) = row("whole manifest: patch, digest, update", &whole_runs);
    let (cm, cn, ch) = row("change applied: apply_change", &change_runs);
    println!(
        "change / whole: time {:.2}x (medians), {:.2}x (minimums); heap {:.2}x",
        cm / wm,
        cn / wn,
        if wh > 0.0 { ch / wh } else { 0.0 }
    );
    Ok(())
}

fn med_min(runs: &[Run]) -> (f64, f64) {
    let mut v: Vec<f64> = runs.iter().map(|r| r.ms).collect();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

/// Times `f` and the heap it allocates above what was in use when it began.
fn measure(f: impl FnOnce() -> Result<()>) -> Result<Run> {
    let base = IN_USE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t = Instant::now();
    f()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let heap = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    Ok(Run { ms, heap })
}

fn rel(i: usize) -> String {
    format!("d{:05}/f{i:07}.txt", i / 100)
}

/// File `i` of the tree, in version `v`: 200 to 2 000 bytes that differ between files.
fn write(root: &Path, i: usize, v: u64) -> Result<()> {
    let p = root.join(rel(i));
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let n = 200 + (i * 7919) % 1800;
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ v;
    let bytes: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
}

/// A staging of the whole of `first`, every chunk written: the state after a pre-copy.
fn staged(first: &Scanned, dest: &Path, id: &str) -> Result<Stager> {
    let mut st = Stager::create(dest, id, first.manifest.clone(), &Limits::default())?;
    let source = ChunkIndex::from_scan(first);
    for h in st.missing() {
        let bytes = source.read(&h).context("reading a chunk of the source")?;
        st.put_verified_chunk(&h, &bytes)?;
    }
    Ok(st)
}
