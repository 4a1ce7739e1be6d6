//! `baton-bench`: figures for Baton's claims, measured on real processes (a `baton server` and
//! `baton daemon`s on loopback, started by [`baton_cli::harness::Cluster`]).
//!
//! `baton-bench handoff` measures the latency of a synced-session handoff without workspace for
//! transcripts of several lengths. The design says a handoff never copies the transcript (it
//! stays on the server), so latency should not grow with it. Run it with
//!
//! ```text
//! cargo run --release -p baton-bench -- handoff [--runs 20] [--sizes 10,1000,10000] [--sequential]
//! ```
//!
//! It prints tables and writes the figures, raw samples included, to `target/bench/handoff.json`.
//! Sizes are interleaved by default, which gives fair ratios on a machine shared with other work.

mod measure;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_cli::harness::Cluster;
use baton_daemon::client::Client;
use baton_daemon::identity::Identity;
use baton_proto::SessionId;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::measure::Node;
use crate::report::{Row, Table};

/// Figures for Baton's claims, measured on real processes on this computer.
#[derive(Debug, Parser)]
#[command(name = "baton-bench")]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Latency of a synced-session handoff without workspace, on loopback, by transcript length.
    Handoff(HandoffArgs),
}

const DEFAULT_SIZES: &str = "10,1000,10000";
const DEFAULT_REAL_BUDGET_SECS: u64 = 120;
const DEFAULT_ENTRY_BYTES: usize = 256;
/// Unmeasured handoff pairs before each size's runs (connections, caches, provider start-up).
const WARMUP_PAIRS: usize = 1;

/// Arguments of `handoff`.
#[derive(Debug, Args)]
struct HandoffArgs {
    /// Measured handoffs per transcript size (the issue asks for at least 20).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Transcript sizes (entries) for the main table, grown by direct appends.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_SIZES)]
    sizes: Vec<u64>,
    /// Transcript sizes for the real-turns table. A size is skipped when the turn rate of the
    /// size before says that growing it would take longer than --real-budget-secs.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_SIZES)]
    real_sizes: Vec<u64>,
    /// Time allowed for growing one transcript with real turns (seconds).
    #[arg(long, default_value_t = DEFAULT_REAL_BUDGET_SECS)]
    real_budget_secs: u64,
    /// Skip the real-turns table.
    #[arg(long)]
    no_real: bool,
    /// Bytes of text in each appended filler entry.
    #[arg(long, default_value_t = DEFAULT_ENTRY_BYTES)]
    entry_bytes: usize,
    /// The `baton` binary to run (default: the one next to this executable, brought up to date
    /// with `cargo build` of the same profile first).
    #[arg(long)]
    baton: Option<PathBuf>,
    /// Do not run `cargo build` for the default `baton` binary.
    #[arg(long)]
    no_build: bool,
    /// Where to write the figures as JSON (default: target/bench/handoff.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure one size after the other instead of the default: every size's session prepared
    /// first, then handed off in turn (one handoff per size per round), so slow drifts of the
    /// machine's load fall on all sizes alike.
    #[arg(long)]
    sequential: bool,
    /// Keep the cluster's directory (databases and logs) after a successful run.
    #[arg(long)]
    keep_dir: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        BenchCommand::Handoff(args) => handoff(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The cargo profile a binary in `dir` was built with, when `dir` is a cargo profile directory
/// (`target/release`, `target/debug`, …).
fn cargo_profile_of(dir: &Path) -> Option<String> {
    if !dir.join(".fingerprint").is_dir() {
        return None;
    }
    let name = dir.file_name()?.to_str()?;
    // The dev profile's directory is called `debug`.
    Some(if name == "debug" { "dev" } else { name }.to_string())
}

/// The `baton` binary to benchmark, and how it was found (for the report).
struct BatonBinary {
    path: PathBuf,
    /// Cargo profile it was built with, when known.
    profile: Option<String>,
}

/// Finds the `baton` binary. By default it is the one beside this executable, and it is first
/// built with the same profile: a benchmark of a stale binary would report figures for code that
/// no longer exists, and an up-to-date build costs cargo about a second. (`cargo run` has
/// released the build lock before it starts this program, so the nested build does not wait on
/// it; another build in progress only makes it wait.)
fn locate_baton(args: &HandoffArgs) -> Result<BatonBinary> {
    if let Some(p) = &args.baton {
        let path = std::fs::canonicalize(p)
            .with_context(|| format!("--baton {}: no such file", p.display()))?;
        let profile = path.parent().and_then(cargo_profile_of);
        return Ok(BatonBinary { path, profile });
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let dir = exe
        .parent()
        .context("this executable has no directory")?
        .to_path_buf();
    let path = dir.join("baton");
    let profile = cargo_profile_of(&dir);
    match (&profile, args.no_build) {
        (Some(profile), false) => {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
            eprintln!(
                "Bringing {} up to date: cargo build --profile {profile} -p baton-cli",
                path.display()
            );
            let mut build = Command::new(&cargo);
            build
                .args([
                    "build",
                    "--profile",
                    profile,
                    "-p",
                    "baton-cli",
                    "--bin",
                    "baton",
                ])
                .arg("--manifest-path")
                .arg(&manifest);
            // `cargo run` gives this program the variables cargo sets for a crate (CARGO_PKG_NAME
            // = baton-bench, ...). Build scripts watch some of them (ring's and cc's ask to rerun
            // when they change), so passing them on would rebuild ring, rustls and everything
            // above them here, and again at the user's next plain build.
            for (key, _) in std::env::vars_os() {
                let Some(k) = key.to_str() else { continue };
                if k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_CFG_")
                    || k.starts_with("CARGO_MANIFEST_")
                    || matches!(
                        k,
                        "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
                    )
                {
                    build.env_remove(&key);
                }
            }
            let status = build.status().context("running cargo build")?;
            if !status.success() {
                bail!("cargo build --profile {profile} -p baton-cli failed ({status})");
            }
        }
        _ if !path.is_file() => bail!(
            "{} does not exist; build it with `cargo build --release -p baton-cli` or pass --baton PATH",
            path.display()
        ),
        _ => {}
    }
    if !path.is_file() {
        bail!("{} does not exist after the build", path.display());
    }
    Ok(BatonBinary { path, profile })
}

/// Where the JSON goes by default: `bench/handoff.json` in the workspace's target directory.
fn default_out() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let target = std::fs::canonicalize(&target).unwrap_or(target);
    target.join("bench").join("handoff.json")
}

/// The command that reproduces this run.
fn reproduce_command(args: &HandoffArgs, bench_profile: Option<&str>) -> String {
    let profile = match bench_profile {
        Some("release") | None => " --release".to_string(),
        Some("dev") => String::new(),
        Some(p) => format!(" --profile {p}"),
    };
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let mut cmd = format!(
        "cargo run{profile} -p baton-bench -- handoff --runs {} --sizes {}",
        args.runs,
        list(&args.sizes)
    );
    if args.no_real {
        cmd.push_str(" --no-real");
    } else {
        if list(&args.real_sizes) != DEFAULT_SIZES {
            cmd.push_str(&format!(" --real-sizes {}", list(&args.real_sizes)));
        }
        if args.real_budget_secs != DEFAULT_REAL_BUDGET_SECS {
            cmd.push_str(&format!(" --real-budget-secs {}", args.real_budget_secs));
        }
    }
    if args.sequential {
        cmd.push_str(" --sequential");
    }
    if args.entry_bytes != DEFAULT_ENTRY_BYTES {
        cmd.push_str(&format!(" --entry-bytes {}", args.entry_bytes));
    }
    if let Some(b) = &args.baton {
        cmd.push_str(&format!(" --baton {}", b.display()));
    }
    if let Some(o) = &args.out {
        cmd.push_str(&format!(" --out {}", o.display()));
    }
    cmd
}

fn handoff(mut args: HandoffArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.runs < 20 {
        eprintln!(
            "warning: {} runs per size; the issue asks for at least 20 (p99 needs them)",
            args.runs
        );
    }
    // Ratios are taken against the smallest size, so keep sizes ascending and unique.
    for sizes in [&mut args.sizes, &mut args.real_sizes] {
        sizes.sort_unstable();
        sizes.dedup();
    }
    if args.sizes.is_empty() || args.sizes[0] == 0 {
        bail!("--sizes must list transcript sizes of at least 1 entry");
    }
    if args.real_sizes.first() == Some(&0) {
        bail!("--real-sizes must be at least 1 entry");
    }
    let baton = locate_baton(&args)?;
    let bench_profile = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(cargo_profile_of));
    if baton.profile.as_deref() == Some("dev") {
        eprintln!(
            "warning: {} is a debug build; its figures are not representative",
            baton.path.display()
        );
    }
    let command = reproduce_command(&args, bench_profile.as_deref());
    let out = args.out.clone().unwrap_or_else(default_out);
    let tmp = tempfile::Builder::new()
        .prefix("baton-bench-")
        .tempdir()
        .context("creating the cluster directory")?;
    let root = tmp.path().to_path_buf();
    eprintln!("Cluster directory: {}", root.display());
    let started_at = baton_proto::now_millis();
    let load_before = load_average();
    let tables = match run(&args, &baton.path, &root) {
        Ok(t) => t,
        Err(e) => {
            let kept = tmp.keep();
            eprintln!(
                "The cluster's data and logs are kept in {} (logs/ holds server.log, laptop.log, desktop.log).",
                kept.display()
            );
            return Err(e);
        }
    };
    let load_after = load_average();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let order = if !args.sequential {
        "sizes taken in turn, one handoff each per round (default; --sequential for one size after the other)"
    } else {
        "one size after the other"
    };
    let load = |l: Option<f64>| l.map_or("?".to_string(), |l| format!("{l:.2}"));
    println!();
    println!(
        "Handoff latency: synced session, no workspace, server and two daemons on loopback, scripted provider."
    );
    println!(
        "baton: {} ({} build); {cpus} CPUs, 1-min load average {} before and {} after (other processes compete with the cluster).",
        baton.path.display(),
        baton.profile.as_deref().unwrap_or("unknown"),
        load(load_before),
        load(load_after)
    );
    println!(
        "{} measured handoffs per size after {WARMUP_PAIRS} warm-up pair, alternating laptop -> desktop -> laptop; {order}.",
        args.runs
    );
    println!();
    for t in &tables {
        print!("{}", t.render());
        println!();
    }
    println!(
        "client latency : POST /v1/sessions/{{id}}/handoffs until GET /v1/handoffs/{{id}} shows it committed and done (polled every 2 ms, in-process client)."
    );
    println!(
        "server duration: the final handoff record's updated_at - created_at (the server's clock, 1 ms resolution)."
    );
    println!(
        "session stopped: quiesce_source start to activate end (no input is taken in between)."
    );
    println!(
        "Percentiles are nearest-rank (no interpolation): pK = the ceil(K*n/100)-th smallest of n runs; p99 of 20 runs = the 20th value, the maximum."
    );
    println!(
        "entries = transcript length when the measured handoffs start (each handoff adds one system entry)."
    );
    println!();
    println!("Reproduce: {command}");
    let report = json!({
        "benchmark": "handoff",
        "command": command,
        "baton": baton.path,
        "baton_profile": baton.profile,
        "started_at_ms": started_at,
        "finished_at_ms": baton_proto::now_millis(),
        "cpus": cpus,
        "load_average_1min": { "before": load_before, "after": load_after },
        "interleaved": !args.sequential,
        "runs": args.runs,
        "warmup_pairs": WARMUP_PAIRS,
        "entry_bytes": args.entry_bytes,
        "poll_ms": 2,
        "percentiles": "nearest-rank: pK is the ceil(K*n/100)-th smallest of n values; p99 of 20 runs is the 20th",
        "tables": tables.iter().map(|t| (t.key.to_string(), t.to_json())).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("Figures as JSON: {}", out.display());
    if args.keep_dir {
        let kept = tmp.keep();
        eprintln!("Cluster directory kept: {}", kept.display());
    }
    Ok(())
}

/// The 1-minute load average (Linux), to tell a quiet machine's figures from a busy one's.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Creates a scripted session on machine `idx` in `ws` and has one real turn with it, so the
/// provider has conversation state to move.
fn new_session(cluster: &Cluster, idx: usize, ws: &Path) -> Result<SessionId> {
    let ws = ws.to_string_lossy();
    let created = cluster.json(idx, &["new", "--provider", "scripted", "--path", &ws])?;
    let id: SessionId = created["session_id"]
        .as_str()
        .with_context(|| format!("`baton new` gave no session id: {created}"))?
        .parse()
        .context("parsing the session id")?;
    cluster.json(
        idx,
        &[
            "send",
            &id.to_string(),
            "Hello. This session is about to be benchmarked.",
        ],
    )?;
    Ok(id)
}

/// Starts the cluster, measures both tables, and stops the cluster.
fn run(args: &HandoffArgs, baton: &Path, root: &Path) -> Result<Vec<Table>> {
    // One thread: the client only waits on the network, and the server and daemons need the
    // CPUs more.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut cluster = Cluster::start(baton, root)?;
    let laptop = cluster.add_machine("laptop", true)?;
    let desktop = cluster.add_machine("desktop", true)?;
    cluster.start_daemon(laptop)?;
    cluster.start_daemon(desktop)?;
    cluster.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))?;
    eprintln!("Server at {}; laptop and desktop online.", cluster.url);
    // One directory both "machines" see at the same path, so every handoff can keep the path.
    let ws = root.join("ws");
    std::fs::create_dir_all(&ws)?;
    let ws = std::fs::canonicalize(&ws)?;
    let identity = Identity::load(&cluster.machines[laptop].baton_home)
        .context("loading laptop's identity")?;
    // No token cache file: the daemon's own cache in that BATON_HOME stays untouched.
    let client = Client::new(Arc::new(identity), None)?;
    let nodes: [Node; 2] = rt.block_on(measure::nodes(&client, ["laptop", "desktop"]))?;

    let mut appended = Table {
        key: "appended",
        title: "Table 1: transcript grown by direct appends (provider state: one turn)".into(),
        method: format!(
            "Each size: a new session on laptop, one real turn, then sealed {}-byte assistant entries appended as laptop up to the size.",
            args.entry_bytes
        ),
        rows: Vec::new(),
        skipped: Vec::new(),
    };
    appended.rows = measure_sizes(&rt, &client, &nodes, args, &args.sizes, |n| {
        eprintln!("[appended {n}] new session, one turn, filling the transcript");
        let id = new_session(&cluster, laptop, &ws)?;
        let t = Instant::now();
        let entries = rt.block_on(measure::fill_by_appends(&client, id, n, args.entry_bytes))?;
        let fill_secs = t.elapsed().as_secs_f64();
        eprintln!("[appended {n}] {entries} entries in {fill_secs:.1} s");
        Ok(Some(Prepared {
            requested: n,
            id,
            entries,
            fill_secs,
        }))
    })?;
    let mut tables = vec![appended];

    if !args.no_real {
        let mut skipped = Vec::new();
        // Entries per second of the last real fill, to judge whether the next size fits the budget.
        let mut rate: Option<f64> = None;
        let rows = measure_sizes(&rt, &client, &nodes, args, &args.real_sizes, |n| {
            if let Some(r) = rate {
                let estimate = n as f64 / r;
                if estimate > args.real_budget_secs as f64 {
                    let why = format!(
                        "growing it would take about {estimate:.0} s at the {r:.0} entries/s measured at the size before (budget {} s, --real-budget-secs)",
                        args.real_budget_secs
                    );
                    eprintln!("[real {n}] skipped: {why}");
                    skipped.push((n, why));
                    return Ok(None);
                }
            }
            eprintln!("[real {n}] new session, queueing messages");
            let id = new_session(&cluster, laptop, &ws)?;
            let before = rt.block_on(measure::session(&client, id))?.last_seq;
            let t = Instant::now();
            let mut next_note = Instant::now() + Duration::from_secs(10);
            let entries = rt.block_on(measure::fill_by_turns(&client, id, n, |seq| {
                if Instant::now() >= next_note {
                    eprintln!(
                        "[real {n}] {seq} entries after {:.0} s",
                        t.elapsed().as_secs_f64()
                    );
                    next_note = Instant::now() + Duration::from_secs(10);
                }
            }))?;
            let fill_secs = t.elapsed().as_secs_f64();
            if entries > before && fill_secs > 0.0 {
                rate = Some((entries - before) as f64 / fill_secs);
            }
            eprintln!("[real {n}] {entries} entries in {fill_secs:.1} s");
            Ok(Some(Prepared {
                requested: n,
                id,
                entries,
                fill_secs,
            }))
        })?;
        tables.push(Table {
            key: "real_turns",
            title: "Table 2: transcript grown by real turns (provider state grows with it and moves with every handoff)".into(),
            method: "Each size: a new session on laptop, then plain messages queued until the agent has answered up to the size (2 entries per turn).".into(),
            rows,
            skipped,
        });
    }
    cluster.shutdown();
    Ok(tables)
}

/// A session grown to its size, ready to be handed off.
struct Prepared {
    requested: u64,
    id: SessionId,
    entries: u64,
    fill_secs: f64,
}

/// Prepares a session per size with `prepare` (which may skip a size) and measures its
/// handoffs: all sessions first and then in turn, or with `--sequential` size after size.
fn measure_sizes(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    nodes: &[Node; 2],
    args: &HandoffArgs,
    sizes: &[u64],
    mut prepare: impl FnMut(u64) -> Result<Option<Prepared>>,
) -> Result<Vec<Row>> {
    let row = |p: Prepared, samples| Row {
        requested: p.requested,
        entries: p.entries,
        fill_secs: p.fill_secs,
        samples,
    };
    let mut rows = Vec::new();
    if !args.sequential {
        let mut ready = Vec::new();
        for &n in sizes {
            ready.extend(prepare(n)?);
        }
        eprintln!("Handing off {} sessions in turn", ready.len());
        let ids: Vec<SessionId> = ready.iter().map(|p| p.id).collect();
        let samples = rt.block_on(measure::ping_pong_interleaved(
            client,
            &ids,
            nodes,
            WARMUP_PAIRS,
            args.runs,
        ))?;
        for (p, s) in ready.into_iter().zip(samples) {
            rt.block_on(measure::stop(client, p.id));
            rows.push(row(p, s));
        }
    } else {
        for &n in sizes {
            let Some(p) = prepare(n)? else { continue };
            eprintln!("[{n}] handing off");
            let samples = rt.block_on(measure::ping_pong(
                client,
                p.id,
                nodes,
                WARMUP_PAIRS,
                args.runs,
            ))?;
            rt.block_on(measure::stop(client, p.id));
            rows.push(row(p, samples));
        }
    }
    Ok(rows)
}
