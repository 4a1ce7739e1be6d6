//! `baton-bench workspace`: a workspace handoff of a synthetic repository between two daemons on
//! this machine through a local server, against `rsync -a` to an rsync daemon on 127.0.0.1, a
//! `tar | zstd -1 | zstd -d | tar` pipeline and `cp -a`, all moving the same selection (the tree
//! less its git-ignored `node_modules`), with cold page caches and a `sync` inside every timing.
//! Every first transfer hashes the whole tree: the sending daemon is restarted before each
//! round after the first, so that it cannot reuse the scan it kept from the round before.
//! Then one file is edited on the target and the session handed back into a copy of the
//! original tree, to see how many bytes a re-handoff sends (and rsync's delta beside it).

mod report;
mod tools;
mod tree;
mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_cli::harness::Cluster;
use baton_workspace::WorkspaceManifest;
use clap::Args;
use serde_json::{Value, json};

use crate::setup;
use report::{BatonInfo, Extra, Memory, Report, Sample, Subject};
use tools::{RsyncDaemon, Tool};
use tree::Shape;

const DEFAULT_RUNS: usize = 3;
const DEFAULT_SEED: u64 = 1;
const DEFAULT_COMPARE: &str = "rsync,tar,cp";
/// Default `--settle-secs`.
const DEFAULT_SETTLE_SECS: u64 = 10;
const LAPTOP: usize = 0;
const DESKTOP: usize = 1;

/// Arguments of `workspace`.
#[derive(Debug, Args)]
pub struct WorkspaceArgs {
    /// Measured rounds; each round times every tool once (in a rotating order, so that the
    /// machine's load falls on all alike), then the re-handoff.
    #[arg(long, default_value_t = DEFAULT_RUNS)]
    runs: usize,
    /// A tenth of the tree (2 000 text files, 20 large files, 20 MiB ignored), for a quick check.
    #[arg(long)]
    small: bool,
    /// Source-like text files instead of the shape's count (to see how memory grows with the
    /// number of files).
    #[arg(long)]
    source_files: Option<u64>,
    /// Largest size of a source file in KiB (default 20): smaller files let a tree of a million
    /// files (the daemon's cap on entries) fit on the disk, to measure memory at that size.
    #[arg(long, default_value_t = tree::DEFAULT_SOURCE_MAX_KIB, value_parser = clap::value_parser!(u64).range(1..))]
    source_max_kib: u64,
    /// Large files instead of the shape's count.
    #[arg(long)]
    big_files: Option<u64>,
    /// Seed of the generated tree.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Tools to compare with (rsync, tar, cp).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_COMPARE)]
    compare: Vec<String>,
    /// Where the generated tree is kept and reused (default: target/bench/workspace-tree-SHAPE;
    /// a `.stamp` file beside it names its shape).
    #[arg(long)]
    tree: Option<PathBuf>,
    /// How the re-handoff lands over the copy of the original tree: `replace` (the tree takes
    /// its place) or `sibling` (beside it; the copy is still used to spare chunks).
    #[arg(long, default_value = "replace", value_parser = ["replace", "sibling"])]
    back_conflict: String,
    /// Do not wait, at the start, for the inodes freed by an earlier run's removals to age (see
    /// `wait_after_removal`).
    #[arg(long)]
    no_removal_wait: bool,
    /// Do not drop the page cache before each timed run (figures are then warm-cache ones).
    #[arg(long)]
    warm: bool,
    /// Seconds to wait before each timed run, after the page cache is dropped. On a virtual
    /// machine whose host takes back free guest memory (free page reporting, about 2 s after
    /// it is freed), writing into memory freed moments ago is several times cheaper than into
    /// memory freed long ago, so a run started right after the previous one's cache was dropped
    /// would be favoured over one that was not. The wait puts every run in the same state: that
    /// of a machine idle for a while.
    #[arg(long, default_value_t = DEFAULT_SETTLE_SECS)]
    settle_secs: u64,
    /// The `baton` binary to run (default: the one next to this executable, brought up to date
    /// with `cargo build` of the same profile first).
    #[arg(long)]
    baton: Option<PathBuf>,
    /// Do not run `cargo build` for the default `baton` binary.
    #[arg(long)]
    no_build: bool,
    /// Where to write the figures as JSON (default: target/bench/workspace.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the work directory (cluster data, logs, destinations of the last round).
    #[arg(long)]
    keep_dir: bool,
}

/// The command that reproduces this run.
fn reproduce_command(args: &WorkspaceArgs, bench_profile: Option<&str>) -> String {
    let mut cmd = format!(
        "cargo run{} -p baton-bench -- workspace --runs {}",
        setup::profile_flag(bench_profile),
        args.runs
    );
    if args.small {
        cmd.push_str(" --small");
    }
    if let Some(n) = args.source_files {
        cmd.push_str(&format!(" --source-files {n}"));
    }
    if args.source_max_kib != tree::DEFAULT_SOURCE_MAX_KIB {
        cmd.push_str(&format!(" --source-max-kib {}", args.source_max_kib));
    }
    if let Some(n) = args.big_files {
        cmd.push_str(&format!(" --big-files {n}"));
    }
    if args.seed != DEFAULT_SEED {
        cmd.push_str(&format!(" --seed {}", args.seed));
    }
    let compare = args.compare.join(",");
    if compare != DEFAULT_COMPARE {
        cmd.push_str(&format!(" --compare {compare}"));
    }
    if args.back_conflict != "replace" {
        cmd.push_str(&format!(" --back-conflict {}", args.back_conflict));
    }
    if args.warm {
        cmd.push_str(" --warm");
    }
    if args.no_removal_wait {
        cmd.push_str(" --no-removal-wait");
    }
    if args.settle_secs != DEFAULT_SETTLE_SECS {
        cmd.push_str(&format!(" --settle-secs {}", args.settle_secs));
    }
    if let Some(t) = &args.tree {
        cmd.push_str(&format!(" --tree {}", t.display()));
    }
    if let Some(b) = &args.baton {
        cmd.push_str(&format!(" --baton {}", b.display()));
    }
    if let Some(o) = &args.out {
        cmd.push_str(&format!(" --out {}", o.display()));
    }
    cmd
}

/// What the source's selection is, as the handoff sees it.
struct Selection {
    manifest: WorkspaceManifest,
    /// Top-level paths left out (the other tools exclude them).
    excluded: Vec<String>,
    /// Top-level entries that travel (what `cp -a` is given).
    top: Vec<String>,
    /// Bytes of the manifest as JSON, as the daemon sends it (sealed) in each pass.
    manifest_json: u64,
    /// Bytes of the ignored tree.
    ignored_bytes: u64,
    ignored_files: u64,
}

/// Scans the source as a handoff would and derives what the other tools must copy.
fn selection(root: &Path) -> Result<Selection> {
    let manifest = verify::scan_selection(root)?;
    let manifest_json = serde_json::to_vec(&manifest)?.len() as u64;
    // What the handoff leaves out must be whole top-level entries (here the ignored
    // node_modules): those are what the other tools are told to exclude. That the rest matches
    // below the top level is checked on every destination.
    if let Some(s) = manifest.skipped.first() {
        bail!(
            "the selection skips {} ({}); the generated tree should have nothing skipped but ignored files",
            s.path,
            s.reason.as_str()
        );
    }
    let (mut excluded, mut top) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if manifest.get(&name).is_some() {
            top.push(name);
        } else {
            excluded.push(name);
        }
    }
    top.sort();
    excluded.sort();
    let (mut ignored_bytes, mut ignored_files) = (0, 0);
    for x in &excluded {
        let (b, f) = du(&root.join(x))?;
        ignored_bytes += b;
        ignored_files += f;
    }
    Ok(Selection {
        manifest,
        excluded,
        top,
        manifest_json,
        ignored_bytes,
        ignored_files,
    })
}

/// Bytes and regular files under `path`.
fn du(path: &Path) -> Result<(u64, u64)> {
    let md = std::fs::symlink_metadata(path)?;
    if md.is_file() {
        return Ok((md.len(), 1));
    }
    let (mut bytes, mut files) = (0, 0);
    if md.is_dir() {
        for e in std::fs::read_dir(path)? {
            let (b, f) = du(&e?.path())?;
            bytes += b;
            files += f;
        }
    }
    Ok((bytes, files))
}

/// Runs the benchmark.
pub fn run(mut args: WorkspaceArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut tools = Vec::new();
    for c in &mut args.compare {
        *c = c.trim().to_ascii_lowercase();
        if c.is_empty() {
            continue;
        }
        let tool = Tool::parse(c)
            .with_context(|| format!("--compare: unknown tool {c} (known: rsync, tar, cp)"))?;
        if !tools.contains(&tool) {
            tools.push(tool);
        }
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
        .unwrap_or_else(|| setup::default_out("workspace.json"));
    let mut shape = if args.small {
        Shape::small(args.seed)
    } else {
        Shape::full(args.seed)
    };
    if let Some(n) = args.source_files {
        shape.source_files = n;
    }
    if let Some(n) = args.big_files {
        shape.big_files = n;
    }
    shape.source_max_kib = args.source_max_kib;
    let tree_root = args
        .tree
        .clone()
        .unwrap_or_else(|| setup::default_out(&format!("workspace-tree-{}", shape.name())));
    let tree = tree::ensure(&tree_root, &shape)?;
    let src = std::fs::canonicalize(&tree.root)?;

    let mut skipped = Vec::new();
    let mut versions = Vec::new();
    tools.retain(|t| match t.check() {
        Ok(v) => {
            versions.push((t.name(), v));
            true
        }
        Err(why) => {
            eprintln!("{} skipped: {why}", t.describe());
            skipped.push((t.name().to_string(), why));
            false
        }
    });
    let cold = if args.warm {
        Err("--warm was given".to_string())
    } else {
        tools::drop_caches()
    };
    if let Err(why) = &cold {
        eprintln!("warning: the page cache is not dropped ({why}); all figures are warm-cache");
    }

    eprintln!("Scanning the source's selection");
    let sel = selection(&src)?;
    eprintln!(
        "Selection: {} files, {:.1} MiB; left out: {:?} ({} files, {:.1} MiB)",
        sel.manifest.file_count(),
        mib(sel.manifest.total_bytes()),
        sel.excluded,
        sel.ignored_files,
        mib(sel.ignored_bytes)
    );

    let edit = tree::source_path(shape.source_files / 2);
    if sel.manifest.get(&edit).and_then(|e| e.file()).is_none() {
        bail!("{edit} is not a file of the selection");
    }

    // Everything the runs write lives beside the tree, on the same filesystem.
    let parent = src.parent().context("the tree has no parent directory")?;
    let work = tempfile::Builder::new()
        .prefix("baton-bench-workspace-")
        .tempdir_in(parent)
        .context("creating the work directory")?;
    eprintln!("Work directory: {}", work.path().display());
    let started_at = baton_proto::now_millis();
    let load_before = setup::load_average();
    let ctx = Ctx {
        baton: &baton.path,
        src: &src,
        sel: &sel,
        tools: &tools,
        cold: cold.is_ok(),
        settle: Duration::from_secs(args.settle_secs),
        runs: args.runs,
        edit,
        back_conflict: args.back_conflict.clone(),
    };
    if !args.no_removal_wait {
        wait_after_removal(parent);
    }
    let measured = measure(&ctx, work.path());
    // `measure` removes the rounds' trees when it gets to its end; after a failure this records
    // a removal that may not have happened, which at worst makes the next run wait for nothing.
    note_removal(parent);
    let measured = match measured {
        Ok(m) => m,
        Err(e) => {
            let kept = work.keep();
            eprintln!(
                "The work directory is kept in {} (cluster/logs/ holds server.log, laptop.log, desktop.log).",
                kept.display()
            );
            return Err(e);
        }
    };
    let load_after = setup::load_average();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let report = Report {
        files: sel.manifest.file_count(),
        bytes: sel.manifest.total_bytes(),
        entries: sel.manifest.entries.len() as u64,
        manifest_json: sel.manifest_json,
        ignored: (sel.ignored_files, sel.ignored_bytes),
        excluded: sel.excluded.clone(),
        cold: cold.clone().err(),
        settle_secs: args.settle_secs,
        first: measured.first,
        back: measured.back,
        onward: measured.onward,
        edited: measured.edited,
        back_conflict: args.back_conflict.clone(),
        memory: measured.memory,
        after_first: measured.after_first,
        skipped,
    };
    println!();
    println!(
        "Workspace handoff: a server and two daemons on loopback (scripted session), against rsync, tar|zstd and cp on the same selection."
    );
    println!(
        "{}",
        setup::machine_line(&baton, load_before, load_after, "the runs")
    );
    println!(
        "Tree: {} ({}; {} text files of 1-{} KiB, {} files of 1-8 MiB, .git {}, {:.0} MiB ignored in node_modules).",
        src.display(),
        if tree.generated {
            format!("generated in {:.0} s", tree.generate_secs)
        } else {
            "reused".to_string()
        },
        shape.source_files,
        shape.source_max_kib,
        shape.big_files,
        tree.git.describe(),
        mib(sel.ignored_bytes),
    );
    for (name, v) in &versions {
        println!("{name}: {v}");
    }
    println!();
    print!("{}", report.render());
    println!();
    println!("Reproduce: {command}");
    let json = json!({
        "benchmark": "workspace",
        "command": command,
        "baton": baton.path,
        "baton_profile": baton.profile,
        "started_at_ms": started_at,
        "finished_at_ms": baton_proto::now_millis(),
        "cpus": cpus,
        "load_average_1min": { "before": load_before, "after": load_after },
        "runs": args.runs,
        "tree": {
            "path": src,
            "seed": shape.seed,
            "source_files": shape.source_files,
            "source_max_kib": shape.source_max_kib,
            "big_files": shape.big_files,
            "ignored_bytes_target": shape.ignored_bytes,
            "git": tree.git.describe(),
            "generated_now": tree.generated,
        },
        "tool_versions": versions.iter().map(|(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "report": report.to_json(),
    });
    setup::write_json(&out, &json)?;
    println!("Figures as JSON: {}", out.display());
    if args.keep_dir {
        let kept = work.keep();
        eprintln!("Work directory kept: {}", kept.display());
    }
    Ok(())
}

/// What every run needs.
struct Ctx<'a> {
    baton: &'a Path,
    src: &'a Path,
    sel: &'a Selection,
    tools: &'a [Tool],
    cold: bool,
    /// Wait after dropping the cache (see `--settle-secs`).
    settle: Duration,
    runs: usize,
    /// The text file edited on the target before the re-handoff.
    edit: String,
    /// `--conflict` of the re-handoff.
    back_conflict: String,
}

impl Ctx<'_> {
    /// Drops the page cache when cold runs were asked for and are possible, then lets the
    /// memory settle (see `--settle-secs`).
    fn prepare_cache(&self) -> Result<()> {
        if self.cold {
            tools::drop_caches().map_err(anyhow::Error::msg)?;
        }
        std::thread::sleep(self.settle);
        Ok(())
    }
}

/// Everything measured.
struct Measured {
    first: Vec<(Subject, Vec<Sample>)>,
    back: Vec<(Subject, Vec<Sample>)>,
    onward: Vec<(Subject, Vec<Sample>)>,
    edited: String,
    memory: Vec<Memory>,
    after_first: Option<Memory>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Starts the cluster and the rsync daemon, then measures every round.
fn measure(ctx: &Ctx, work: &Path) -> Result<Measured> {
    check_space(ctx, work)?;
    let mut cluster = Cluster::start(ctx.baton, &work.join("cluster"))?;
    let laptop = cluster.add_machine("laptop", true)?;
    let desktop = cluster.add_machine("desktop", true)?;
    cluster.start_daemon(laptop)?;
    cluster.start_daemon(desktop)?;
    cluster.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))?;
    eprintln!("Server at {}; laptop and desktop online.", cluster.url);
    let rsyncd = if ctx.tools.contains(&Tool::Rsync) {
        Some(RsyncDaemon::start(work, &work.join("rsync-module"))?)
    } else {
        None
    };

    let mut subjects = vec![Subject::Baton];
    subjects.extend(ctx.tools.iter().map(|t| Subject::Tool(*t)));
    let mut first: Vec<(Subject, Vec<Sample>)> =
        subjects.iter().map(|s| (*s, Vec::new())).collect();
    let mut back_subjects = vec![Subject::Baton];
    if rsyncd.is_some() {
        back_subjects.push(Subject::Tool(Tool::Rsync));
    }
    let mut back: Vec<(Subject, Vec<Sample>)> =
        back_subjects.iter().map(|s| (*s, Vec::new())).collect();
    let mut onward = back.clone();
    let edited = ctx.edit.clone();
    let mut memory = Vec::new();

    let mut sessions = Vec::new();
    // Peaks of the laptop daemons stopped so far (see the restart below).
    let mut carried: Option<Memory> = None;
    for run in 0..ctx.runs {
        let dir = work.join(format!("run{run}"));
        std::fs::create_dir_all(&dir)?;
        if run > 0 {
            // A daemon remembers its last scan of a tree and hashes only what changed since:
            // without a restart every round after the first would send a tree already hashed,
            // which is not a first transfer. The restart forgets it; its peak is kept.
            let mut before = Memory::read(&cluster, run);
            if let Some(c) = &carried {
                before.carry(c);
            }
            carried = Some(before);
            cluster.stop_daemon(laptop);
            cluster.wait_online(&["laptop"], false, Duration::from_secs(30))?;
            cluster.start_daemon(laptop)?;
            cluster.wait_online(&["laptop"], true, Duration::from_secs(30))?;
        }
        // A new session per round, on laptop, working in the source tree.
        let session = crate::new_session(&cluster, laptop, ctx.src)?.to_string();
        let mut order = subjects.clone();
        order.rotate_left(run % subjects.len());
        for who in order {
            let dest = dir.join(who.name());
            eprintln!("[round {}/{}] {}", run + 1, ctx.runs, who.describe());
            ctx.prepare_cache()?;
            let load = setup::load_average();
            let (secs, extra) = match who {
                Subject::Baton => {
                    let mut out = Value::Null;
                    let cpu_before = report::cpu_now(&cluster);
                    let secs = tools::timed(|| {
                        out = handoff(&cluster, LAPTOP, &session, "desktop", &dest, None)?;
                        Ok(())
                    })?;
                    let cpu = report::cpu_used(&cpu_before, &report::cpu_now(&cluster));
                    if let Some(why) = failure_of(&out) {
                        bail!("the first handoff failed: {why}: {out}");
                    }
                    let passes = served_passes(&cluster, LAPTOP, &out, ctx.sel.manifest_json)?;
                    let mut info =
                        BatonInfo::of(&out, passes, ctx.sel.manifest_json, &ctx.sel.manifest)?;
                    info.cpu = cpu;
                    (secs, Extra::Baton(info))
                }
                Subject::Tool(Tool::Rsync) => {
                    let d = rsyncd.as_ref().context("no rsync daemon")?;
                    let sub = format!("run{run}");
                    let mut stats = Default::default();
                    let secs = tools::timed(|| {
                        stats = d.push(ctx.src, &sub, &ctx.sel.excluded)?;
                        Ok(())
                    })?;
                    (secs, Extra::Rsync(stats))
                }
                Subject::Tool(Tool::Tar) => (
                    tools::timed(|| tools::tar_pipeline(ctx.src, &dest, &ctx.sel.excluded))?,
                    Extra::None,
                ),
                Subject::Tool(Tool::Cp) => (
                    tools::timed(|| tools::cp_a(ctx.src, &dest, &ctx.sel.top))?,
                    Extra::None,
                ),
            };
            eprintln!("  {secs:.2} s");
            let landed = match who {
                Subject::Tool(Tool::Rsync) => rsyncd
                    .as_ref()
                    .context("no rsync daemon")?
                    .path(&format!("run{run}")),
                _ => dest,
            };
            verify::same_tree(&ctx.sel.manifest, &landed, who.name())?;
            push(
                &mut first,
                who,
                Sample {
                    run,
                    secs,
                    load,
                    failure: None,
                    extra,
                },
            );
        }

        sessions.push(session);
    }

    // Peaks of the first transfers alone: laptop only sent, desktop only received.
    let mut after_first = Memory::read(&cluster, 0);
    if let Some(c) = &carried {
        after_first.carry(c);
    }
    let after_first = Some(after_first);
    // The re-handoffs come after every first transfer, so that no first transfer creates its
    // files over inodes a re-handoff (`replace` removes the old tree) just freed.
    for (run, session) in sessions.iter().enumerate() {
        let dir = work.join(format!("run{run}"));
        // The re-handoff: one file edited on desktop, then back to laptop into a copy of the
        // original tree (node_modules included, as the laptop's tree would have it).
        let on_desktop = dir.join(Subject::Baton.name());
        tree::edit_one_file(&on_desktop, &edited, run)?;
        let edited_manifest = verify::scan_selection(&on_desktop)?;
        let original = dir.join("back");
        match ctx.tools.contains(&Tool::Cp) {
            // cp's copy was just checked to be the selection.
            true => std::fs::rename(dir.join(Tool::Cp.name()), &original)?,
            false => tools::cp_a(ctx.src, &original, &ctx.sel.top)?,
        }
        tools::cp_a(ctx.src, &original, &ctx.sel.excluded)?;
        let leg = Leg {
            from: DESKTOP,
            to: "laptop",
            baton_dest: &original,
            rsync_src: &on_desktop,
            conflict: ctx.back_conflict.as_str(),
            expected: &edited_manifest,
            what: "re-handoff",
        };
        let back_ok = time_leg(
            ctx,
            &cluster,
            rsyncd.as_ref(),
            session,
            run,
            &back_subjects,
            &leg,
            &mut back,
        )?;
        // Onward: the session, now on laptop, edited there and handed to desktop again into
        // the tree desktop sent it from (which desktop remembers), as a user going back and
        // forth does. Only after a re-handoff that landed.
        if back_ok && ctx.back_conflict == "replace" {
            tree::edit_one_file(&original, &edited, run + 1000)?;
            let onward_manifest = verify::scan_selection(&original)?;
            let leg = Leg {
                from: LAPTOP,
                to: "desktop",
                baton_dest: &on_desktop,
                rsync_src: &original,
                conflict: "replace",
                expected: &onward_manifest,
                what: "onward",
            };
            time_leg(
                ctx,
                &cluster,
                rsyncd.as_ref(),
                session,
                run,
                &back_subjects,
                &leg,
                &mut onward,
            )?;
        }
        let mut m = Memory::read(&cluster, run);
        if let Some(c) = &carried {
            m.carry(c);
        }
        memory.push(m);
    }
    // Only now is anything removed: see `check_space`.
    for run in 0..ctx.runs {
        remove_dir(&work.join(format!("run{run}")));
        if let Some(d) = &rsyncd {
            remove_dir(&d.path(&format!("run{run}")));
        }
    }
    cluster.shutdown();
    Ok(Measured {
        first,
        back,
        onward,
        edited,
        memory,
        after_first,
    })
}

/// Every tree the runs write is kept until the end: removing one frees tens of thousands of
/// inodes, and ext4 without a journal (as on this machine's disk) skips an inode freed in the
/// last minute (six once its table block is dirty again) at each allocation, checking each one
/// it skips, so whichever run came next would pay for the removal in its file creation. Fails
/// up front, naming what to change, when the disk cannot hold them all.
fn check_space(ctx: &Ctx, work: &Path) -> Result<()> {
    let tree = ctx.sel.manifest.total_bytes();
    let per_round = (1 + ctx.tools.len() as u64) * tree + tree + ctx.sel.ignored_bytes;
    // Blocks, directories and staging overhead beyond the files' bytes.
    let need = ctx.runs as u64 * per_round / 10 * 12 + (1 << 30);
    let free = baton_workspace::available_bytes(work)?;
    if free < need {
        bail!(
            "the runs need about {:.1} GiB free beside the tree ({} rounds of {:.1} GiB, every tree \
             kept until the end), and {} has {:.1} GiB: lower --runs, use --small, or free space",
            need as f64 / GIB,
            ctx.runs,
            per_round as f64 / GIB,
            work.display(),
            free as f64 / GIB
        );
    }
    Ok(())
}

const GIB: f64 = (1u64 << 30) as f64;

/// File beside the trees holding when this benchmark last removed trees (seconds since the
/// epoch).
const REMOVED_STAMP: &str = ".baton-bench-removed-at";
/// How long ext4 without a journal avoids reusing a freed inode once its table block is dirty.
const FREED_INODE_AGE: Duration = Duration::from_secs(6 * 60);

/// Records that trees under `dir` were just removed.
pub(crate) fn note_removal(dir: &Path) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if let Err(e) = std::fs::write(dir.join(REMOVED_STAMP), now.to_string()) {
        eprintln!(
            "warning: cannot record the removal in {}: {e}",
            dir.display()
        );
    }
}

/// Waits until the inodes this benchmark freed last time have aged. On ext4 without a journal
/// (this project's machines) each file creation skips, one by one, the inodes freed in the last
/// minute (six once their table block is dirty), so a run started right after another's
/// clean-up creates files several times more slowly in its first round: the receiving daemon
/// used 9 CPU-s there instead of 4.5 in the later rounds, and an untimed copy beforehand does
/// not take the cost away (a creation skips those inodes as long as its group has others).
fn wait_after_removal(dir: &Path) {
    if let Some((since, left)) = removal_wait(dir, std::time::SystemTime::now()) {
        eprintln!(
            "Waiting {} s: an earlier run removed its trees {} s ago, and files created over \
             recently freed inodes are slower to make (--no-removal-wait skips this)",
            left.as_secs(),
            since.as_secs()
        );
        std::thread::sleep(left);
    }
}

/// How long ago the last removal recorded in `dir` was, and how much of [`FREED_INODE_AGE`] is
/// left at `now`; `None` when nothing is recorded or it is old enough.
fn removal_wait(dir: &Path, now: std::time::SystemTime) -> Option<(Duration, Duration)> {
    let at: u64 = std::fs::read_to_string(dir.join(REMOVED_STAMP))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let since = now
        .duration_since(std::time::UNIX_EPOCH + Duration::from_secs(at))
        .ok()?;
    Some((since, FREED_INODE_AGE.checked_sub(since)?))
}

/// Removes `path`, retrying once (a daemon may still be removing a backup inside it); a
/// failure is only reported, the next round writes elsewhere.
fn remove_dir(path: &Path) {
    for attempt in 0..3 {
        match std::fs::remove_dir_all(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if attempt == 2 => {
                eprintln!("warning: could not remove {}: {e}", path.display());
            }
            Err(_) => std::thread::sleep(Duration::from_secs(5)),
        }
    }
}

/// One handoff of the session between the daemons, and rsync's equivalent push.
struct Leg<'a> {
    from: usize,
    to: &'a str,
    baton_dest: &'a Path,
    rsync_src: &'a Path,
    conflict: &'a str,
    expected: &'a WorkspaceManifest,
    what: &'a str,
}

/// Times `leg` for every subject, in an order rotated by round; returns whether Baton's landed.
#[allow(clippy::too_many_arguments)]
fn time_leg(
    ctx: &Ctx,
    cluster: &Cluster,
    rsyncd: Option<&RsyncDaemon>,
    session: &str,
    run: usize,
    subjects: &[Subject],
    leg: &Leg<'_>,
    samples: &mut [(Subject, Vec<Sample>)],
) -> Result<bool> {
    let mut order = subjects.to_vec();
    order.rotate_left(run % subjects.len());
    let mut baton_ok = false;
    for who in order {
        eprintln!(
            "[round {}/{}] {}: {}",
            run + 1,
            ctx.runs,
            leg.what,
            who.describe()
        );
        ctx.prepare_cache()?;
        let load = setup::load_average();
        let sample = match who {
            Subject::Baton => {
                let mut out = Value::Null;
                let cpu_before = report::cpu_now(cluster);
                let secs = tools::timed(|| {
                    out = handoff(
                        cluster,
                        leg.from,
                        session,
                        leg.to,
                        leg.baton_dest,
                        Some(leg.conflict),
                    )?;
                    Ok(())
                })?;
                let json = serde_json::to_vec(leg.expected)?.len() as u64;
                let passes = served_passes(cluster, leg.from, &out, json)?;
                let mut info = BatonInfo::of(&out, passes, json, leg.expected)?;
                info.cpu = report::cpu_used(&cpu_before, &report::cpu_now(cluster));
                let failure = failure_of(&out);
                match &failure {
                    // A failed handoff still says what it sent; the session is left as it
                    // is (the next round starts a new one).
                    Some(why) => eprintln!("  the {} failed: {why}", leg.what),
                    None => {
                        let landed = out["workspace"]["path"]
                            .as_str()
                            .context("no workspace.path in the handoff's output")?;
                        verify::same_tree(leg.expected, Path::new(landed), leg.what)?;
                        baton_ok = true;
                    }
                }
                Sample {
                    run,
                    secs,
                    load,
                    failure,
                    extra: Extra::Baton(info),
                }
            }
            Subject::Tool(Tool::Rsync) => {
                let d = rsyncd.context("no rsync daemon")?;
                let sub = format!("run{run}");
                let mut stats = Default::default();
                let secs = tools::timed(|| {
                    stats = d.push(leg.rsync_src, &sub, &ctx.sel.excluded)?;
                    Ok(())
                })?;
                verify::same_tree(leg.expected, &d.path(&sub), "rsync push")?;
                Sample {
                    run,
                    secs,
                    load,
                    failure: None,
                    extra: Extra::Rsync(stats),
                }
            }
            Subject::Tool(_) => continue,
        };
        eprintln!("  {:.2} s", sample.secs);
        push(samples, who, sample);
    }
    Ok(baton_ok)
}

fn push(list: &mut [(Subject, Vec<Sample>)], who: Subject, s: Sample) {
    if let Some((_, v)) = list.iter_mut().find(|(w, _)| *w == who) {
        v.push(s);
    }
}

/// `baton --json handoff SESSION --to TO --workspace --path DEST [--conflict C]` as machine
/// `from`: its JSON output, committed or not (see [`failure_of`]).
fn handoff(
    cluster: &Cluster,
    from: usize,
    session: &str,
    to: &str,
    dest: &Path,
    conflict: Option<&str>,
) -> Result<Value> {
    let dest = dest.to_string_lossy();
    let mut args = vec![
        "--json",
        "handoff",
        session,
        "--to",
        to,
        "--workspace",
        "--path",
        &dest,
    ];
    if let Some(c) = conflict {
        args.extend(["--conflict", c]);
    }
    let out = cluster.baton(from, &args)?;
    let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "baton {args:?} on {} ({}) printed no JSON: {}{}",
            cluster.machines[from].name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if json["phases"].is_null() {
        bail!(
            "baton {args:?} failed before the handoff started ({}): {json}",
            out.status
        );
    }
    Ok(json)
}

/// Why a handoff did not commit, from its JSON output; `None` when it committed and finished.
fn failure_of(out: &Value) -> Option<String> {
    if out["result"] == "committed" && out["error"].is_null() {
        return None;
    }
    let phase = out["phases"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["ok"] == false))
        .and_then(|p| p["phase"].as_str())
        .unwrap_or("?");
    Some(format!(
        "result {}, phase {phase}: [{}] {}",
        out["result"].as_str().unwrap_or("?"),
        out["error"]["code"].as_str().unwrap_or("?"),
        out["error"]["message"].as_str().unwrap_or("")
    ))
}

/// The passes the source machine `idx` served for the handoff `out` reports, from its log's
/// "workspace pass served" lines: (chunks, chunk bytes, manifest bytes) each. A `baton` that
/// does not log its manifest bytes is taken to send `manifest_json` in every pass.
fn served_passes(
    cluster: &Cluster,
    idx: usize,
    out: &Value,
    manifest_json: u64,
) -> Result<Vec<(u64, u64, u64)>> {
    let id = out["handoff_id"]
        .as_str()
        .with_context(|| format!("no handoff_id in {out}"))?;
    let log = cluster.log_path(&cluster.machines[idx].name);
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let mut passes = Vec::new();
    for line in text.lines() {
        let line = strip_ansi(line);
        if !line.contains("workspace pass served") || !line.contains(id) {
            continue;
        }
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
        };
        passes.push((
            field("chunks=").unwrap_or(0),
            field("bytes=").unwrap_or(0),
            field("manifest_bytes=").unwrap_or(manifest_json),
        ));
    }
    Ok(passes)
}

/// `s` without its terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn a_recent_removal_is_waited_out_and_an_old_or_unrecorded_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        assert_eq!(removal_wait(dir.path(), now), None, "nothing recorded");
        note_removal(dir.path());
        let (since, left) = removal_wait(dir.path(), now + Duration::from_secs(60))
            .expect("a removal a minute ago is waited for");
        assert!(since >= Duration::from_secs(59) && since <= Duration::from_secs(61));
        assert_eq!(since + left, FREED_INODE_AGE);
        assert_eq!(
            removal_wait(dir.path(), now + FREED_INODE_AGE + Duration::from_secs(2)),
            None,
            "six minutes later there is nothing to wait for"
        );
        std::fs::write(dir.path().join(REMOVED_STAMP), "not a time").expect("write");
        assert_eq!(
            removal_wait(dir.path(), now),
            None,
            "an unreadable stamp is ignored"
        );
        let future = now
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 3600;
        std::fs::write(dir.path().join(REMOVED_STAMP), future.to_string()).expect("write");
        assert_eq!(
            removal_wait(dir.path(), now),
            None,
            "a stamp in the future is ignored"
        );
    }

    #[test]
    fn a_restarted_daemons_earlier_peak_is_carried() {
        let mib = 1u64 << 20;
        let mut now = Memory {
            run: 1,
            peaks: vec![
                ("server".into(), Some(30 * mib), Some(30 * mib)),
                ("laptop daemon".into(), Some(40 * mib), Some(20 * mib)),
                ("desktop daemon".into(), None, None),
            ],
        };
        let earlier = Memory {
            run: 0,
            peaks: vec![
                ("server".into(), Some(10 * mib), Some(10 * mib)),
                ("laptop daemon".into(), Some(55 * mib), Some(25 * mib)),
                ("desktop daemon".into(), Some(50 * mib), Some(30 * mib)),
            ],
        };
        now.carry(&earlier);
        let hwm: Vec<Option<u64>> = now.peaks.iter().map(|(_, h, _)| *h).collect();
        assert_eq!(hwm, vec![Some(30 * mib), Some(55 * mib), Some(50 * mib)]);
        let rss: Vec<Option<u64>> = now.peaks.iter().map(|(_, _, r)| *r).collect();
        assert_eq!(
            rss,
            vec![Some(30 * mib), Some(20 * mib), None],
            "resident memory is now's"
        );
    }
}
