//! Throughput of the workspace transport alone: a source and a target in this process move a
//! tree of chunks from memory to memory through a real server on loopback (sealing, relaying,
//! opening and BLAKE3-checking every chunk; no disk).
//!
//! The tree mirrors the handoff benchmark's shape, scaled to `--mib` (default 512): a fifth of
//! the bytes in small files of 1–20 KiB (one chunk each), the rest in 64 KiB chunks.
//!
//! ```text
//! cargo run --release -p baton-daemon --example transfer_bench -- [--mib N] [--window-mib N] [--frame-kib N]
//! ```

#[path = "../tests/transfer_world/mod.rs"]
mod transfer_world;

use std::sync::Arc;
use std::time::Instant;

use baton_daemon::transfer::{BlobFeed, Receiver, TransferTuning, serve_source};
use baton_server::TransferLimits;
use tokio_util::sync::CancellationToken;
use transfer_world::{MemSink, MemSource, Meter, World, bytes, cipher, refs};

/// CPU time of this process so far (user + system), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass and touches nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The tree: small chunks of 1–20 KiB for a fifth of `total`, 64 KiB chunks for the rest.
fn tree(total: usize) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut small = 0;
    let mut i = 0u64;
    while small < total / 5 {
        let len = 1024 + (i as usize * 7919) % (19 * 1024);
        chunks.push(bytes(i, len));
        small += len;
        i += 1;
    }
    let mut large = 0;
    while small + large < total {
        chunks.push(bytes(1 << 40 | i, 64 * 1024));
        large += 64 * 1024;
        i += 1;
    }
    chunks
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mib = arg("--mib", 512);
    let tuning = TransferTuning {
        window_bytes: (arg("--window-mib", 32) * 1024 * 1024) as u64,
        frame_bytes: arg("--frame-kib", 1024) * 1024,
        drop_after_bytes: None,
        ..TransferTuning::default()
    };
    eprintln!("generating {mib} MiB of chunks…");
    let chunks = tree(mib * 1024 * 1024);
    let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let wanted = refs(&chunks);
    let world = World::start(TransferLimits::default()).await;
    let transfer = world.allow_a_to_b();
    let c = cipher(transfer);
    let meter = Arc::new(Meter::default());
    let source = Arc::new(MemSource::new(&chunks, meter.clone()));
    drop(chunks);
    let mut sink = MemSink::new(meter);
    sink.keep = false;
    let sink = Arc::new(sink);

    let source_conn = world.conn(world.m(0), transfer, tuning.clone());
    let source_cipher = c.clone();
    let feed = BlobFeed::single(c.clone(), b"manifest").expect("feed");
    let serving = tokio::spawn(async move {
        serve_source(
            &source_conn,
            source_cipher,
            source,
            feed,
            CancellationToken::new(),
        )
        .await
    });
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut receiver = Receiver::connect(
        world.conn(world.m(1), transfer, tuning.clone()),
        c,
        CancellationToken::new(),
    )
    .await
    .expect("target connects");
    receiver.blob(0).await.expect("blob");
    let count = wanted.len();
    receiver
        .chunks(sink, wanted, &mut |_| {})
        .await
        .expect("chunks arrive");
    let stats = receiver.finish().await.expect("finish");
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let sent = serving.await.expect("no panic").expect("source ok");
    let mb = total as f64 / 1e6;
    println!(
        "{count} chunks, {mb:.0} MB in {secs:.2} s: {:.0} MB/s, {cpu:.2} s of CPU ({:.2} s/GB) (window {} MiB, frames {} KiB; wire {:.0} MB, source sent {:.0} MB)",
        mb / secs,
        cpu / (mb / 1000.0),
        tuning.window_bytes / (1024 * 1024),
        tuning.frame_bytes / 1024,
        stats.wire_bytes as f64 / 1e6,
        sent.wire_bytes as f64 / 1e6,
    );
}
