//! Measures scan, rescan and a local scan → stage → finish → apply copy on a generated tree.
//!
//! ```sh
//! cargo run --release -p baton-workspace --example workspace_bench -- gen /tmp/wsb/src
//! cargo run --release -p baton-workspace --example workspace_bench -- scan /tmp/wsb/src
//! cargo run --release -p baton-workspace --example workspace_bench -- copy /tmp/wsb/src /tmp/wsb/dst
//! cargo run --release -p baton-workspace --example workspace_bench -- precopy /tmp/wsb/src /tmp/wsb/dst2
//! ```
//! `gen` writes 20 000 small files (100 B–16 KiB) in 400 directories and 200 files of 1–8 MiB.
//! `precopy` stages everything, edits 10 small files and one big one in the source, then times
//! what a handoff does while the session is stopped: rescan, update, delta, finish, apply.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use baton_workspace::{
    ChunkIndex, ConflictPolicy, IgnoredFiles, Limits, ScanOptions, Stager, scan,
};

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn generate(root: &Path) -> anyhow::Result<()> {
    for i in 0..20_000u64 {
        let dir = root.join(format!("src/m{}/d{}", i % 20, i % 400));
        std::fs::create_dir_all(&dir)?;
        let len = 100 + (i as usize * 7919) % (16 * 1024);
        std::fs::write(dir.join(format!("f{i}.txt")), noise(i + 1, len))?;
    }
    for i in 0..200u64 {
        let dir = root.join(format!("assets/a{}", i % 10));
        std::fs::create_dir_all(&dir)?;
        let len = (1 << 20) + (i as usize * 2_654_435) % (7 << 20);
        std::fs::write(dir.join(format!("big{i}.bin")), noise(i + 1_000_000, len))?;
    }
    Ok(())
}

fn precopy(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    let first = scan(src, &opts(), None)?;
    let source = ChunkIndex::from_scan(&first);
    let mut st = Stager::create(dst, "bench", first.manifest.clone(), &Limits::default())?;
    for h in st.missing() {
        let bytes = source.read(&h).context("chunk vanished from the source")?;
        st.put_chunk(&h, &bytes)?;
    }
    st.sync()?;
    println!(
        "pre-copy (scan + stage everything + sync): {:.2?}",
        t.elapsed()
    );

    // Edits made while the session kept running; then it stops.
    for i in (0..10_000u64).step_by(1000) {
        let p = src.join(format!("src/m{}/d{}/f{i}.txt", i % 20, i % 400));
        std::fs::write(&p, format!("edited {i}"))?;
    }
    let big = src.join("assets/a3/big3.bin");
    let mut bytes = std::fs::read(&big)?;
    bytes.extend_from_slice(b"appended");
    std::fs::write(&big, bytes)?;
    std::thread::sleep(std::time::Duration::from_millis(100));

    let t = Instant::now();
    let last = scan(src, &opts(), Some(&first))?;
    let rescanned = t.elapsed();
    let filled = st.update(last.manifest.clone(), &Limits::default())?;
    let updated = t.elapsed();
    let missing = st.missing();
    let source = ChunkIndex::from_scan(&last);
    let mut sent = 0;
    for h in &missing {
        let bytes = source.read(h).context("chunk vanished from the source")?;
        sent += bytes.len();
        st.put_chunk(h, &bytes)?;
    }
    let delta = t.elapsed();
    let staged = st.finish(0)?;
    let finished = t.elapsed();
    let path = staged.apply(ConflictPolicy::Sibling)?.commit()?;
    println!(
        "stopped phase: rescan {:.2?} (hashed {} files), update {:.2?} ({} chunks copied locally), \
         delta {} chunks / {} bytes {:.2?}, finish {:.2?}, apply {:.2?}; total {:.2?} -> {}",
        rescanned,
        last.stats().hashed_files,
        updated - rescanned,
        filled.chunks,
        missing.len(),
        sent,
        delta - updated,
        finished - delta,
        t.elapsed() - finished,
        t.elapsed(),
        path.display()
    );
    Ok(())
}

fn opts() -> ScanOptions {
    ScanOptions {
        ignored: IgnoredFiles::Skip,
        ..ScanOptions::default()
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["gen", dir] => generate(Path::new(dir)),
        ["scan", dir] => {
            let t = Instant::now();
            let first = scan(Path::new(dir), &opts(), None)?;
            let full = t.elapsed();
            let m = &first.manifest;
            println!(
                "scan: {} entries, {} files, {:.1} MiB in {:.2?} ({:.0} MiB/s, {:.0} files/s)",
                m.entries.len(),
                m.file_count(),
                m.total_bytes() as f64 / 1048576.0,
                full,
                m.total_bytes() as f64 / 1048576.0 / full.as_secs_f64(),
                m.file_count() as f64 / full.as_secs_f64()
            );
            let t = Instant::now();
            let again = scan(Path::new(dir), &opts(), Some(&first))?;
            println!(
                "rescan with previous: {:.2?}, hashed {} files, reused {}",
                t.elapsed(),
                again.stats().hashed_files,
                again.stats().reused_files
            );
            let json = serde_json::to_vec(&first.manifest)?;
            println!("manifest JSON: {:.1} MiB", json.len() as f64 / 1048576.0);
            Ok(())
        }
        ["copy", src, dst] => {
            let t = Instant::now();
            let s = scan(Path::new(src), &opts(), None)?;
            let scanned = t.elapsed();
            let source = ChunkIndex::from_scan(&s);
            let mut st = Stager::create(
                Path::new(dst),
                "bench",
                s.manifest.clone(),
                &Limits::default(),
            )?;
            let created = t.elapsed();
            for h in st.missing() {
                let bytes = source.read(&h).context("chunk vanished from the source")?;
                st.put_chunk(&h, &bytes)?;
            }
            let written = t.elapsed();
            let staged = st.finish(0)?;
            let finished = t.elapsed();
            let path = staged.apply(ConflictPolicy::Sibling)?.commit()?;
            println!(
                "copy to {}: scan {:.2?}, create {:.2?}, chunks {:.2?}, verify+sync {:.2?}, apply {:.2?}, total {:.2?}",
                path.display(),
                scanned,
                created - scanned,
                written - created,
                finished - written,
                t.elapsed() - finished,
                t.elapsed()
            );
            Ok(())
        }
        ["precopy", src, dst] => precopy(Path::new(src), Path::new(dst)),
        _ => bail!("usage: workspace_bench gen DIR | scan DIR | copy SRC DST | precopy SRC DST"),
    }
}
