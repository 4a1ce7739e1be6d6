//! `baton-bench providers`: per provider, the time of a handoff from the client's confirm to the
//! first entry the resumed provider writes on the target, split into quiesce / transfer /
//! import / resume, and the size of the provider state moved (issue 3's closing note).
//!
//! The rig is the one of the provider tests (`crates/baton-cli/tests/providers.rs`): a server
//! and two daemons, `laptop` and `desktop`, each with its own HOME, running the real Claude
//! Code, Codex and OpenCode CLIs ([`baton_testkit::clis`]) against the loopback model server
//! ([`baton_testkit::model::ModelServer`]). `scripted` is the baseline: Baton's own agent, which
//! needs no CLI, so its figures are Baton's share and the others' excess is the providers'.

mod sample;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_cli::harness::Cluster;
use baton_daemon::client::Client;
use baton_daemon::identity::Identity;
use baton_proto::{AuthState, HandoffSupport, MachineInfo, SessionId, VersionCheck};
use baton_testkit::model::ModelServer;
use baton_testkit::rig::{ISOLATE, Login, machine_env};
use clap::Args;
use serde_json::json;

use crate::follow::Follower;
use crate::measure::{self, Node};
use crate::report::{ProviderReport, ProviderRow};
use crate::setup;
pub use sample::ProviderSample;
use sample::{FIRST_MESSAGE, Subject};

/// Every provider the benchmark knows, in the default order (the baseline first).
pub const PROVIDERS: [&str; 4] = ["scripted", "claude", "codex", "opencode"];
/// The provider the others are compared to.
pub const BASELINE: &str = "scripted";
const DEFAULT_PROVIDERS: &str = "scripted,claude,codex,opencode";
const DEFAULT_RUNS: usize = 10;
const DEFAULT_WARMUP_PAIRS: usize = 1;
/// Longest the daemons may take to report their providers after connecting.
const DETECT_TIMEOUT: Duration = Duration::from_secs(90);

/// Arguments of `providers`.
#[derive(Debug, Args)]
pub struct ProvidersArgs {
    /// Providers to measure (scripted is the baseline the others are compared to).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_PROVIDERS)]
    providers: Vec<String>,
    /// Measured handoffs per provider, alternating laptop -> desktop -> laptop.
    #[arg(long, default_value_t = DEFAULT_RUNS)]
    runs: usize,
    /// Unmeasured round trips per provider before its measured handoffs.
    #[arg(long, default_value_t = DEFAULT_WARMUP_PAIRS)]
    warmup_pairs: usize,
    /// Measure one provider after the other instead of the default: one handoff per provider
    /// per round, so slow drifts of the machine's load fall on all providers alike.
    #[arg(long)]
    sequential: bool,
    /// The `baton` binary to run (default: the one next to this executable, brought up to date
    /// with `cargo build` of the same profile first).
    #[arg(long)]
    baton: Option<PathBuf>,
    /// Do not run `cargo build` for the default `baton` binary.
    #[arg(long)]
    no_build: bool,
    /// Where to write the figures as JSON (default: target/bench/providers.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the cluster's directory (databases, logs, provider homes) after a successful run.
    #[arg(long)]
    keep_dir: bool,
}

/// The command that reproduces this run.
fn reproduce_command(args: &ProvidersArgs, bench_profile: Option<&str>) -> String {
    let mut cmd = format!(
        "cargo run{} -p baton-bench -- providers --runs {}",
        setup::profile_flag(bench_profile),
        args.runs
    );
    let providers = args.providers.join(",");
    if providers != DEFAULT_PROVIDERS {
        cmd.push_str(&format!(" --providers {providers}"));
    }
    if args.warmup_pairs != DEFAULT_WARMUP_PAIRS {
        cmd.push_str(&format!(" --warmup-pairs {}", args.warmup_pairs));
    }
    if args.sequential {
        cmd.push_str(" --sequential");
    }
    if let Some(b) = &args.baton {
        cmd.push_str(&format!(" --baton {}", b.display()));
    }
    if let Some(o) = &args.out {
        cmd.push_str(&format!(" --out {}", o.display()));
    }
    cmd
}

/// Runs the benchmark.
pub fn run(mut args: ProvidersArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    for p in &mut args.providers {
        *p = p.trim().to_ascii_lowercase();
    }
    args.providers.retain(|p| !p.is_empty());
    let mut seen = Vec::new();
    args.providers.retain(|p| {
        let new = !seen.contains(p);
        seen.push(p.clone());
        new
    });
    if let Some(p) = args
        .providers
        .iter()
        .find(|p| !PROVIDERS.contains(&p.as_str()))
    {
        bail!(
            "--providers: unknown provider {p} (known: {})",
            PROVIDERS.join(", ")
        );
    }
    if args.providers.is_empty() {
        bail!("--providers must name at least one provider");
    }
    let baton = setup::locate_baton(args.baton.as_deref(), args.no_build)?;
    if baton.profile.as_deref() == Some("dev") {
        eprintln!(
            "warning: {} is a debug build; its figures are not representative",
            baton.path.display()
        );
    }
    let command = reproduce_command(&args, setup::bench_profile().as_deref());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| setup::default_out("providers.json"));
    let tmp = tempfile::Builder::new()
        .prefix("baton-bench-providers-")
        .tempdir()
        .context("creating the cluster directory")?;
    eprintln!("Cluster directory: {}", tmp.path().display());
    let started_at = baton_proto::now_millis();
    let load_before = setup::load_average();
    let report = match measure_all(&args, &baton.path, tmp.path()) {
        Ok(r) => r,
        Err(e) => {
            let kept = tmp.keep();
            eprintln!(
                "The cluster's data and logs are kept in {} (logs/ holds server.log, laptop.log, desktop.log).",
                kept.display()
            );
            return Err(e);
        }
    };
    let load_after = setup::load_average();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Handoff per provider: confirm -> first streamed provider entry on the target, server and two daemons on loopback, real CLIs against the loopback model server."
    );
    println!(
        "{}",
        setup::machine_line(&baton, load_before, load_after, "the cluster")
    );
    println!(
        "{} measured handoffs per provider after {} warm-up pair(s), alternating laptop -> desktop -> laptop into a different workspace path per machine; {}.",
        args.runs,
        args.warmup_pairs,
        if args.sequential {
            "one provider after the other"
        } else {
            "providers taken in turn, one handoff each per round (default; --sequential for one after the other)"
        }
    );
    println!();
    print!("{}", report.render());
    println!();
    println!("Reproduce: {command}");
    let json = json!({
        "benchmark": "providers",
        "command": command,
        "baton": baton.path,
        "baton_profile": baton.profile,
        "started_at_ms": started_at,
        "finished_at_ms": baton_proto::now_millis(),
        "cpus": cpus,
        "load_average_1min": { "before": load_before, "after": load_after },
        "interleaved": !args.sequential,
        "runs": args.runs,
        "warmup_pairs": args.warmup_pairs,
        "first_message": FIRST_MESSAGE,
        "probe_message": sample::probe_message(1),
        "report": report.to_json(),
    });
    setup::write_json(&out, &json)?;
    println!("Figures as JSON: {}", out.display());
    if args.keep_dir {
        let kept = tmp.keep();
        eprintln!("Cluster directory kept: {}", kept.display());
    }
    Ok(())
}

/// Why the real providers cannot run when the CLIs did not install.
fn clis_missing_reason() -> String {
    let npm = std::process::Command::new("npm")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match npm {
        Ok(s) if s.success() => {
            "the pinned provider CLIs could not be installed (npm ci failed; its output is on stderr above)".into()
        }
        _ => "the pinned provider CLIs could not be installed: npm is not on PATH".into(),
    }
}

/// Starts the rig, measures every provider that can run, and stops the rig.
fn measure_all(args: &ProvidersArgs, baton: &Path, root: &Path) -> Result<ProviderReport> {
    let mut report = ProviderReport {
        baseline: BASELINE,
        rows: Vec::new(),
        skipped: Vec::new(),
    };
    let real: Vec<&String> = args.providers.iter().filter(|p| *p != BASELINE).collect();
    let clis = if real.is_empty() {
        None
    } else {
        eprintln!("Checking the pinned provider CLIs (installed once with npm ci, about 1.2 GB)");
        let clis = baton_testkit::clis::require();
        if clis.is_none() {
            let why = clis_missing_reason();
            eprintln!("Real providers skipped: {why}");
            for p in &real {
                report.skipped.push((p.to_string(), why.clone()));
            }
        }
        clis
    };
    let model = match &clis {
        Some(_) => Some(ModelServer::start().context("starting the loopback model server")?),
        None => None,
    };
    // One thread: the client only waits on the network, and the server, the daemons and the
    // provider CLIs need the CPUs more.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut cluster = Cluster::start(baton, root)?;
    for name in ["laptop", "desktop"] {
        let i = cluster.add_machine(name, true)?;
        if let (Some(clis), Some(model)) = (&clis, &model) {
            let home = cluster.machines[i].home.clone();
            let mut env = machine_env(clis, &model.base_url(), &home, Login::LoggedIn);
            // Nothing of this process's own provider setup may leak into the machines.
            for k in ISOLATE {
                if std::env::var_os(k).is_some() && !env.iter().any(|(n, _)| n == k) {
                    env.push((k.to_string(), String::new()));
                }
            }
            cluster.machines[i].daemon_env = env;
        }
        cluster.start_daemon(i)?;
    }
    cluster.wait_online(&["laptop", "desktop"], true, Duration::from_secs(60))?;
    eprintln!("Server at {}; laptop and desktop online.", cluster.url);
    let identity =
        Identity::load(&cluster.machines[0].baton_home).context("loading laptop's identity")?;
    // No token cache file: the daemon's own cache in that BATON_HOME stays untouched.
    let client = Client::new(Arc::new(identity), None)?;
    let nodes: [Node; 2] = rt.block_on(measure::nodes(&client, ["laptop", "desktop"]))?;

    let wanted: Vec<&String> = args
        .providers
        .iter()
        .filter(|p| !report.skipped.iter().any(|(s, _)| s == *p))
        .collect();
    let machines = rt.block_on(wait_detected(&client, &wanted))?;
    let mut subjects = Vec::new();
    for p in wanted {
        let version = match usable(&machines, p) {
            Ok(v) => v,
            Err(why) => {
                eprintln!("[{p}] skipped: {why}");
                report.skipped.push((p.clone(), why));
                continue;
            }
        };
        eprintln!("[{p}] new session on laptop, first turn");
        match prepare(&cluster, &rt, &client, root, p) {
            Ok(s) => {
                subjects.push(s);
                report.rows.push(ProviderRow {
                    provider: p.clone(),
                    version,
                    samples: Vec::new(),
                    failure: None,
                });
            }
            Err(e) => {
                let why = format!("its first turn failed: {e:#}");
                eprintln!("[{p}] skipped: {why}");
                report.skipped.push((p.clone(), why));
            }
        }
    }

    // Warm-up, then the measured rounds; a provider that fails drops out with the reason and
    // the others go on.
    let mut live: Vec<bool> = vec![true; subjects.len()];
    for (i, s) in subjects.iter_mut().enumerate() {
        for k in 0..2 * args.warmup_pairs {
            eprintln!(
                "[{}] warm-up handoff {} of {}",
                s.provider,
                k + 1,
                2 * args.warmup_pairs
            );
            if let Err(e) = rt.block_on(s.hop(&client, &nodes, k + 1)) {
                fail(
                    &mut report.rows[i],
                    &mut live[i],
                    format!("warm-up failed: {e:#}"),
                );
                break;
            }
        }
    }
    let mut one = |i: usize, s: &mut Subject, round: usize, report: &mut ProviderReport| {
        if !live[i] {
            return;
        }
        let k = 2 * args.warmup_pairs + round + 1;
        match rt.block_on(s.hop(&client, &nodes, k)) {
            Ok(sample) => {
                eprintln!(
                    "[{}] handoff {} of {} ({} -> {}): {:.0} ms to the first provider entry, {} B",
                    s.provider,
                    round + 1,
                    args.runs,
                    sample.from,
                    sample.to,
                    sample.split.total,
                    sample.bytes
                );
                report.rows[i].samples.push(sample);
            }
            Err(e) => fail(
                &mut report.rows[i],
                &mut live[i],
                format!("measured handoff {} failed: {e:#}", round + 1),
            ),
        }
    };
    if args.sequential {
        for (i, s) in subjects.iter_mut().enumerate() {
            for round in 0..args.runs {
                one(i, s, round, &mut report);
            }
        }
    } else {
        for round in 0..args.runs {
            for (i, s) in subjects.iter_mut().enumerate() {
                one(i, s, round, &mut report);
            }
        }
    }
    for s in &subjects {
        rt.block_on(measure::stop(&client, s.id));
    }
    drop(subjects);
    cluster.shutdown();
    drop(model);
    Ok(report)
}

/// Marks a provider as failed (it takes no more turns).
fn fail(row: &mut ProviderRow, live: &mut bool, why: String) {
    eprintln!("[{}] dropped: {why}", row.provider);
    row.failure = Some(why);
    *live = false;
}

/// Waits until both machines have reported every wanted provider; returns the machines.
async fn wait_detected(client: &Client, wanted: &[&String]) -> Result<Vec<MachineInfo>> {
    let deadline = std::time::Instant::now() + DETECT_TIMEOUT;
    loop {
        let machines: Vec<MachineInfo> = client.get("/v1/machines").await?;
        let all = machines.iter().all(|m| {
            wanted
                .iter()
                .all(|w| m.providers.iter().any(|p| &p.name == *w))
        });
        if all || std::time::Instant::now() >= deadline {
            return Ok(machines);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether `provider` can be handed between the machines; its version (as laptop reports it)
/// when it can, the reason when it cannot.
fn usable(machines: &[MachineInfo], provider: &str) -> Result<Option<String>, String> {
    let mut version = None;
    for m in machines {
        let Some(p) = m.providers.iter().find(|p| p.name == provider) else {
            return Err(format!(
                "{} did not report it within {} s",
                m.name,
                DETECT_TIMEOUT.as_secs()
            ));
        };
        if !p.installed {
            return Err(format!("not installed on {}", m.name));
        }
        if p.auth == AuthState::Missing {
            return Err(format!("not logged in on {}", m.name));
        }
        if p.handoff == HandoffSupport::Unsupported {
            return Err("its sessions cannot be handed off".into());
        }
        if p.version_check == VersionCheck::Incompatible {
            return Err(format!(
                "version {} on {} is incompatible",
                p.version.as_deref().unwrap_or("?"),
                m.name
            ));
        }
        version = version.or_else(|| p.version.clone());
    }
    Ok(version)
}

/// A canonical directory `root/rel`, created.
fn workspace(root: &Path, rel: &str) -> Result<String> {
    let p = root.join(rel);
    std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    Ok(std::fs::canonicalize(&p)?.to_string_lossy().into_owned())
}

/// A session of `provider` on laptop, in a workspace of its own on each machine, with one turn
/// done (a file written by the CLI's own tool), followed over the WebSocket.
fn prepare(
    cluster: &Cluster,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    root: &Path,
    provider: &str,
) -> Result<Subject> {
    let workspaces = [
        workspace(root, &format!("laptop-ws/{provider}/proj"))?,
        workspace(root, &format!("desktop-ws/elsewhere/{provider}/proj"))?,
    ];
    let created = cluster.json(
        0,
        &["new", "--provider", provider, "--path", &workspaces[0]],
    )?;
    let id: SessionId = created["session_id"]
        .as_str()
        .with_context(|| format!("`baton new` gave no session id: {created}"))?
        .parse()
        .context("parsing the session id")?;
    rt.block_on(async {
        let session = measure::session(client, id).await?;
        let cipher = client.cipher(&session)?;
        let mut follower = Follower::open(client, id).await?;
        let first = sample::turn(client, &mut follower, &cipher, id, FIRST_MESSAGE).await?;
        if provider != BASELINE && !Path::new(&workspaces[0]).join("a.txt").is_file() {
            eprintln!(
                "[{provider}] warning: the first turn did not write a.txt (reply: {})",
                first.reply.trim()
            );
        }
        Ok(Subject {
            provider: provider.to_string(),
            id,
            cipher,
            follower,
            workspaces,
            done: 0,
        })
    })
}
