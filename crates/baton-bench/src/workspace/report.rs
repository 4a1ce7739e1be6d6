//! The workspace benchmark's samples, the table for a person and the JSON for tools.

use anyhow::{Context, Result};
use baton_bench::stats::Summary;
use baton_cli::harness::Cluster;
use baton_workspace::WorkspaceManifest;
use serde_json::{Value, json};

use super::tools::{RsyncStats, Tool, cpu_secs, status_bytes};

/// Baton's first transfer may take at most this multiple of rsync's time (medians).
pub const GOAL_VS_RSYNC: f64 = 1.0;
/// ... and at most this multiple of the tar pipeline's.
pub const GOAL_VS_TAR: f64 = 1.5;
/// A re-handoff after a one-file edit sends at most this fraction of the tree in file data.
pub const GOAL_DELTA_FRACTION: f64 = 0.001;
/// Longest the session may stay stopped for the full tree (ms).
pub const GOAL_STOPPED_MS: f64 = 2000.0;
/// Most a daemon or the server may hold resident (bytes).
pub const GOAL_MEMORY: u64 = 256 * 1024 * 1024;
/// The phases during which the session is stopped: from the start of the first to the end of
/// the last.
const STOPPED: (&str, &str) = ("quiesce_source", "activate");

/// Who moved the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// `baton handoff --workspace`.
    Baton,
    /// A comparison tool.
    Tool(Tool),
}

impl Subject {
    /// Short name (directory, JSON key).
    pub fn name(self) -> &'static str {
        match self {
            Self::Baton => "baton",
            Self::Tool(t) => t.name(),
        }
    }

    /// What runs, for the table.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Baton => "baton handoff --workspace",
            Self::Tool(t) => t.describe(),
        }
    }
}

/// What a Baton handoff reported (`baton --json handoff`).
#[derive(Clone, Debug)]
pub struct BatonInfo {
    /// Each phase and its duration (ms), in order.
    pub phases: Vec<(String, f64)>,
    /// Start of quiesce_source to end of activate (ms).
    pub stopped_ms: Option<f64>,
    /// Files of the manifest.
    pub files: u64,
    /// Bytes of the files of the manifest.
    pub bytes_total: u64,
    /// Bytes of chunk data sent, all passes.
    pub bytes_sent: u64,
    /// Each pass the source served, from its log: (chunks, chunk bytes, manifest bytes). A pass
    /// sends its manifest whole, or as the change since the pass before.
    pub passes: Vec<(u64, u64, u64)>,
    /// Bytes of the whole manifest as JSON.
    pub manifest_json: u64,
    /// CPU seconds each of the cluster's processes used during the handoff.
    pub cpu: Vec<(String, f64)>,
}

impl BatonInfo {
    /// Reads the handoff's JSON output; `passes` and `manifest_json` as for the fields. When
    /// the handoff did not commit its output has no workspace report: the files and bytes are
    /// then those of `expected`, and the bytes sent the sum of the passes'.
    pub fn of(
        out: &Value,
        passes: Vec<(u64, u64, u64)>,
        manifest_json: u64,
        expected: &WorkspaceManifest,
    ) -> Result<Self> {
        let phases_json = out["phases"]
            .as_array()
            .with_context(|| format!("no phases in {out}"))?;
        let mut phases = Vec::new();
        for p in phases_json {
            let name = p["phase"].as_str().unwrap_or("?").to_string();
            if let Some(d) = p["duration_ms"].as_f64() {
                phases.push((name, d));
            }
        }
        let time = |name: &str, key: &str| {
            phases_json
                .iter()
                .find(|p| p["phase"] == name)
                .and_then(|p| p[key].as_f64())
        };
        let stopped_ms = match (time(STOPPED.0, "started_at"), time(STOPPED.1, "ended_at")) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let ws = &out["workspace"];
        let field = |k: &str| ws[k].as_u64();
        Ok(Self {
            phases,
            stopped_ms,
            files: field("files").unwrap_or_else(|| expected.file_count()),
            bytes_total: field("bytes_total").unwrap_or_else(|| expected.total_bytes()),
            bytes_sent: field("bytes_sent").unwrap_or_else(|| passes.iter().map(|p| p.1).sum()),
            passes,
            manifest_json,
            cpu: Vec::new(),
        })
    }
}

impl BatonInfo {
    /// Bytes of manifest sent over all passes, as JSON (sealing adds a few bytes each).
    pub fn manifest_sent(&self) -> u64 {
        self.passes.iter().map(|p| p.2).sum()
    }
}

/// What else a sample carries.
#[derive(Clone, Debug)]
pub enum Extra {
    /// Nothing (tar, cp).
    None,
    /// Baton's own report.
    Baton(BatonInfo),
    /// rsync's `--stats`.
    Rsync(RsyncStats),
}

/// One timed run.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Round (from 0).
    pub run: usize,
    /// Wall time including the final `sync` (s).
    pub secs: f64,
    /// 1-minute load average when it started.
    pub load: Option<f64>,
    /// Why it failed, if it did (its time then counts in no summary).
    pub failure: Option<String>,
    /// Tool-specific figures.
    pub extra: Extra,
}

impl Sample {
    /// Its time, when it succeeded.
    fn ok_secs(&self) -> Option<f64> {
        self.failure.is_none().then_some(self.secs)
    }

    fn baton(&self) -> Option<&BatonInfo> {
        match &self.extra {
            Extra::Baton(b) => Some(b),
            _ => None,
        }
    }

    fn rsync(&self) -> Option<&RsyncStats> {
        match &self.extra {
            Extra::Rsync(r) => Some(r),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        let extra = match &self.extra {
            Extra::None => Value::Null,
            Extra::Baton(b) => json!({
                "phases_ms": b.phases.iter().map(|(n, d)| json!({ "phase": n, "ms": d })).collect::<Vec<_>>(),
                "stopped_ms": b.stopped_ms,
                "files": b.files,
                "bytes_total": b.bytes_total,
                "bytes_sent": b.bytes_sent,
                "passes": b.passes.iter().map(|(c, n, m)| json!({ "chunks": c, "bytes": n, "manifest_bytes": m })).collect::<Vec<_>>(),
                "manifest_json_bytes": b.manifest_json,
                "manifest_bytes_sent": b.manifest_sent(),
                "cpu_seconds": b.cpu.iter().map(|(n, c)| (n.clone(), json!(c))).collect::<serde_json::Map<_, _>>(),
            }),
            Extra::Rsync(r) => json!({
                "total_bytes_sent": r.total_sent,
                "literal_data": r.literal,
                "matched_data": r.matched,
                "file_list_size": r.file_list,
            }),
        };
        json!({
            "run": self.run,
            "seconds": self.secs,
            "load_1min": self.load,
            "failure": self.failure,
            "details": extra,
        })
    }
}

/// Peak resident memory (VmHWM) of the cluster's processes after a round.
#[derive(Clone, Debug)]
pub struct Memory {
    /// Round (from 0).
    pub run: usize,
    /// (process, peak bytes, resident bytes now): the server, then each daemon.
    pub peaks: Vec<(String, Option<u64>, Option<u64>)>,
}

impl Memory {
    /// Reads the peaks of `cluster`'s processes now.
    pub fn read(cluster: &Cluster, run: usize) -> Self {
        let of = |pid: Option<u32>| {
            (
                pid.and_then(|p| status_bytes(p, "VmHWM")),
                pid.and_then(|p| status_bytes(p, "VmRSS")),
            )
        };
        let (hwm, rss) = of(cluster.server_pid());
        let mut peaks = vec![("server".to_string(), hwm, rss)];
        for m in &cluster.machines {
            let (hwm, rss) = of(m.daemon_pid());
            peaks.push((format!("{} daemon", m.name), hwm, rss));
        }
        Self { run, peaks }
    }

    /// Raises each process's peak to at least its peak in `earlier`, a reading of an earlier
    /// process in the same role (a daemon restarted between rounds starts a new VmHWM).
    pub fn carry(&mut self, earlier: &Memory) {
        for (name, hwm, _) in &mut self.peaks {
            let before = earlier
                .peaks
                .iter()
                .find(|(n, _, _)| n == name)
                .and_then(|(_, h, _)| *h);
            *hwm = match (*hwm, before) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }
}

/// CPU seconds used so far by each of `cluster`'s processes (the server, then each daemon).
pub fn cpu_now(cluster: &Cluster) -> Vec<(String, Option<f64>)> {
    let mut out = vec![(
        "server".to_string(),
        cluster.server_pid().and_then(cpu_secs),
    )];
    for m in &cluster.machines {
        out.push((
            format!("{} daemon", m.name),
            m.daemon_pid().and_then(cpu_secs),
        ));
    }
    out
}

/// What each process used between two [`cpu_now`] snapshots.
pub fn cpu_used(
    before: &[(String, Option<f64>)],
    after: &[(String, Option<f64>)],
) -> Vec<(String, f64)> {
    before
        .iter()
        .zip(after)
        .filter_map(|((n, b), (_, a))| Some((n.clone(), (*a)? - (*b)?)))
        .collect()
}

/// The figures of `baton-bench workspace`.
pub struct Report {
    /// Files of the selection.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Entries (directories, files, symlinks) of the selection.
    pub entries: u64,
    /// The manifest as JSON (bytes): what the daemon seals and sends in each pass.
    pub manifest_json: u64,
    /// Files and bytes left out (ignored).
    pub ignored: (u64, u64),
    /// Top-level paths left out.
    pub excluded: Vec<String>,
    /// Why the page cache was not dropped, if it was not.
    pub cold: Option<String>,
    /// Seconds of rest before each timed run (`--settle-secs`).
    pub settle_secs: u64,
    /// First transfers, per subject.
    pub first: Vec<(Subject, Vec<Sample>)>,
    /// Re-handoffs after the edit, per subject.
    pub back: Vec<(Subject, Vec<Sample>)>,
    /// Handoffs onward again after a second edit, per subject.
    pub onward: Vec<(Subject, Vec<Sample>)>,
    /// The file edited on the target.
    pub edited: String,
    /// `--conflict` of the re-handoff.
    pub back_conflict: String,
    /// Peak memory after each round.
    pub memory: Vec<Memory>,
    /// Peak memory after the first transfers, before any re-handoff (each daemon in one role).
    pub after_first: Option<Memory>,
    /// Tools not run, with the reason.
    pub skipped: Vec<(String, String)>,
}

fn summary(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<Summary> {
    let v: Vec<f64> = samples.iter().filter_map(f).collect();
    Summary::of(&v)
}

fn mib(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

/// `1234567` as `1 234 567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// "manifest N B of JSON; sent a + b + c = M B over P passes".
fn manifest_note(b: &BatonInfo) -> String {
    let each: Vec<String> = b.passes.iter().map(|p| thousands(p.2)).collect();
    format!(
        "manifest {} B of JSON whole; sent {} = {} B over {} passes",
        thousands(b.manifest_json),
        each.join(" + "),
        thousands(b.manifest_sent()),
        b.passes.len()
    )
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

impl Report {
    fn samples(list: &[(Subject, Vec<Sample>)], who: Subject) -> &[Sample] {
        list.iter()
            .find(|(w, _)| *w == who)
            .map_or(&[], |(_, v)| v.as_slice())
    }

    fn secs(list: &[(Subject, Vec<Sample>)], who: Subject) -> Option<Summary> {
        summary(Self::samples(list, who), Sample::ok_secs)
    }

    /// Baton's time over `tool`'s, first transfer: (medians, minimums).
    fn ratio(&self, tool: Tool) -> Option<(f64, f64)> {
        let b = Self::secs(&self.first, Subject::Baton)?;
        let t = Self::secs(&self.first, Subject::Tool(tool))?;
        Some((b.p50 / t.p50, b.min / t.min))
    }

    /// Baton's re-handoff: largest fraction of the tree sent in file data.
    fn delta_fraction(&self) -> Option<f64> {
        summary(Self::samples(&self.back, Subject::Baton), |s| {
            s.baton()
                .map(|b| b.bytes_sent as f64 / b.bytes_total.max(1) as f64)
        })
        .map(|s| s.max)
    }

    /// Baton's re-handoff: largest fraction of the tree sent as manifest.
    fn manifest_fraction(&self) -> Option<f64> {
        summary(Self::samples(&self.back, Subject::Baton), |s| {
            s.baton()
                .map(|b| b.manifest_sent() as f64 / b.bytes_total.max(1) as f64)
        })
        .map(|s| s.max)
    }

    /// Baton's stopped time on the first transfer (ms).
    fn stopped(&self) -> Option<Summary> {
        summary(Self::samples(&self.first, Subject::Baton), |s| {
            s.baton().and_then(|b| b.stopped_ms)
        })
    }

    /// Highest peak of each process over all rounds.
    fn peaks(&self) -> Vec<(String, Option<u64>)> {
        let mut out: Vec<(String, Option<u64>)> = Vec::new();
        for m in &self.memory {
            for (name, v, _) in &m.peaks {
                match out.iter_mut().find(|(n, _)| n == name) {
                    Some((_, best)) => *best = (*best).max(*v),
                    None => out.push((name.clone(), *v)),
                }
            }
        }
        out
    }

    /// "a / b / c MiB" of one process's figure after each round.
    fn by_round(
        &self,
        name: &str,
        pick: impl Fn(&(String, Option<u64>, Option<u64>)) -> Option<u64>,
    ) -> String {
        self.memory
            .iter()
            .map(|m| {
                m.peaks
                    .iter()
                    .find(|p| p.0 == name)
                    .and_then(&pick)
                    .map_or("?".to_string(), |b| format!("{:.1}", mib(b as f64)))
            })
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// Median duration of each Baton phase (ms), in the order they ran.
    /// The table, phases, CPU and stopped time of one leg (re-handoff or onward).
    fn leg_lines(&self, leg: &[(Subject, Vec<Sample>)], line: &mut impl FnMut(String)) {
        line(format!(
            "  {:<30} {:>4} {:>9} {:>8} {:>8}  {}",
            "",
            "runs",
            "median s",
            "min s",
            "max s",
            "bytes sent (max over runs), as a fraction of the tree's bytes"
        ));
        for (who, samples) in leg {
            if samples.is_empty() {
                continue;
            }
            let times = match summary(samples, Sample::ok_secs) {
                Some(s) => format!("{:>4} {:>9.2} {:>8.2} {:>8.2}", s.n, s.p50, s.min, s.max),
                None => format!("{:>4} {:>9} {:>8} {:>8}", 0, "-", "-", "-"),
            };
            let bytes = match who {
                Subject::Baton => {
                    let worst = samples
                        .iter()
                        .filter_map(Sample::baton)
                        .max_by_key(|b| b.bytes_sent);
                    match worst {
                        Some(b) => format!(
                            "file data {} B = {:.4} %; beside it {} = {:.3} %",
                            thousands(b.bytes_sent),
                            100.0 * b.bytes_sent as f64 / b.bytes_total.max(1) as f64,
                            manifest_note(b),
                            100.0 * b.manifest_sent() as f64 / b.bytes_total.max(1) as f64,
                        ),
                        None => String::new(),
                    }
                }
                Subject::Tool(_) => {
                    let r = samples
                        .iter()
                        .filter_map(Sample::rsync)
                        .max_by_key(|r| r.total_sent);
                    match r {
                        Some(r) => format!(
                            "total {} B = {:.4} % (file list {} B, literal data {} B, matched {} B)",
                            thousands(r.total_sent),
                            100.0 * r.total_sent as f64 / self.bytes.max(1) as f64,
                            thousands(r.file_list),
                            thousands(r.literal),
                            thousands(r.matched),
                        ),
                        None => String::new(),
                    }
                }
            };
            line(format!("  {:<30} {times}  {bytes}", who.describe()));
            for f in samples.iter().filter(|s| s.failure.is_some()) {
                line(format!(
                    "    round {} FAILED after {:.1} s (not in the times above): {}",
                    f.run + 1,
                    f.secs,
                    f.failure.as_deref().unwrap_or_default()
                ));
            }
        }
        let baton_back = Self::samples(leg, Subject::Baton);
        line(format!(
            "  baton phases (median ms): {}",
            Self::phase_medians(baton_back)
                .iter()
                .map(|(n, d)| format!("{n} {d:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        line(Self::cpu_line(baton_back));
        if let Some(s) = summary(baton_back, |s| s.baton().and_then(|b| b.stopped_ms)) {
            line(format!(
                "  baton stopped time (failed rounds included): median {:.0} ms, min {:.0}, max {:.0}",
                s.p50, s.min, s.max
            ));
        }
    }

    fn phase_medians(samples: &[Sample]) -> Vec<(String, f64)> {
        let mut names: Vec<String> = Vec::new();
        for s in samples {
            for (n, _) in s.baton().map(|b| b.phases.as_slice()).unwrap_or(&[]) {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        names
            .into_iter()
            .filter_map(|n| {
                let m = summary(samples, |s| {
                    s.baton()?
                        .phases
                        .iter()
                        .find(|(p, _)| *p == n)
                        .map(|(_, d)| *d)
                })?;
                Some((n, m.p50))
            })
            .collect()
    }

    /// "baton CPU seconds (median): server 1.2, laptop daemon 3.4, ...".
    fn cpu_line(samples: &[Sample]) -> String {
        let names: Vec<String> = samples
            .iter()
            .find_map(Sample::baton)
            .map(|b| b.cpu.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        let parts: Vec<String> = names
            .iter()
            .filter_map(|n| {
                let s = summary(samples, |s| {
                    s.baton()?.cpu.iter().find(|(m, _)| m == n).map(|(_, c)| *c)
                })?;
                Some(format!("{n} {:.1}", s.p50))
            })
            .collect();
        format!(
            "  baton CPU seconds during the handoff (median): {}",
            parts.join(", ")
        )
    }

    /// The tables as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(s.trim_end());
            out.push('\n');
        };
        let cache = match &self.cold {
            None => "page cache dropped before each run (cold)".to_string(),
            Some(why) => format!("WARM page cache ({why})"),
        };
        let cache = format!("{cache}, then {} s of rest", self.settle_secs);
        line(format!(
            "First transfer: {} entries, {} files, {:.1} MiB selected (left out, git-ignored: {} with {} files, {:.1} MiB); {cache}; every timing ends with sync.",
            thousands(self.entries),
            thousands(self.files),
            mib(self.bytes as f64),
            self.excluded.join(", "),
            thousands(self.ignored.0),
            mib(self.ignored.1 as f64),
        ));
        line(format!(
            "  {:<30} {:>4} {:>9} {:>8} {:>8} {:>8} {:>13} {:>10}",
            "", "runs", "median s", "min s", "max s", "MiB/s", "baton/x med", "baton/x min"
        ));
        for (who, samples) in &self.first {
            let Some(s) = summary(samples, Sample::ok_secs) else {
                continue;
            };
            let (r50, rmin) = match who {
                Subject::Tool(t) => self.ratio(*t).map_or((String::new(), String::new()), |r| {
                    (format!("{:.2}x", r.0), format!("{:.2}x", r.1))
                }),
                Subject::Baton => (String::new(), String::new()),
            };
            line(format!(
                "  {:<30} {:>4} {:>9.2} {:>8.2} {:>8.2} {:>8.1} {:>13} {:>10}",
                who.describe(),
                s.n,
                s.p50,
                s.min,
                s.max,
                mib(self.bytes as f64) / s.p50,
                r50,
                rmin
            ));
        }
        for (tool, why) in &self.skipped {
            line(format!("  {tool:<30} skipped: {why}"));
        }
        let baton_first = Self::samples(&self.first, Subject::Baton);
        line(format!(
            "  baton phases (median ms): {}",
            Self::phase_medians(baton_first)
                .iter()
                .map(|(n, d)| format!("{n} {d:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        line(Self::cpu_line(baton_first));
        if let Some(s) = self.stopped() {
            line(format!(
                "  baton stopped time ({} start -> {} end): median {:.0} ms, min {:.0}, max {:.0}",
                STOPPED.0, STOPPED.1, s.p50, s.min, s.max
            ));
        }
        if let Some(b) = baton_first.first().and_then(Sample::baton) {
            line(format!(
                "  baton chunk data sent: {} B of {} B in {} files ({:.1} %; identical chunks travel once); {}",
                thousands(b.bytes_sent),
                thousands(b.bytes_total),
                thousands(b.files),
                100.0 * b.bytes_sent as f64 / b.bytes_total.max(1) as f64,
                manifest_note(b),
            ));
        }
        line(String::new());

        line(format!(
            "Re-handoff: {} edited on desktop (one line inserted mid-file), then back to laptop into a copy of the original tree (node_modules included) with --conflict {}; rsync: the edited tree pushed onto its first copy.",
            self.edited, self.back_conflict
        ));
        self.leg_lines(&self.back, &mut line);
        line(String::new());
        if self.onward.iter().any(|(_, v)| !v.is_empty()) {
            line(format!(
                "Onward: after the re-handoff, {} edited again on laptop, then the session handed to desktop again into its own earlier tree (which its daemon remembers) with --conflict replace; rsync: laptop's tree pushed onto its copy.",
                self.edited
            ));
            self.leg_lines(&self.onward, &mut line);
        }
        line(String::new());

        line("Memory of the cluster's processes, MiB, after each round (VmHWM is the peak so far, over every laptop daemon: it restarts before each first transfer after the first, so that none reuses an earlier scan; VmRSS what is resident when the round is over):".into());
        for (name, v) in self.peaks() {
            line(format!(
                "  {name:<16} peak {:>8}   VmHWM {}   VmRSS {}",
                v.map_or("unknown".into(), |b| format!("{:.1}", mib(b as f64))),
                self.by_round(&name, |p| p.1),
                self.by_round(&name, |p| p.2),
            ));
        }
        if let Some(m) = &self.after_first {
            let figures: Vec<String> = m
                .peaks
                .iter()
                .map(|(n, v, _)| {
                    let v = v.map_or("unknown".into(), |b| format!("{:.1}", mib(b as f64)));
                    format!("{n} {v}")
                })
                .collect();
            line(format!(
                "  after the first transfers, before any re-handoff (laptop only sent, desktop only received): VmHWM {}",
                figures.join(", ")
            ));
        }
        line(String::new());

        line("Goals:".into());
        for (tool, goal) in [(Tool::Rsync, GOAL_VS_RSYNC), (Tool::Tar, GOAL_VS_TAR)] {
            match self.ratio(tool) {
                Some((r50, rmin)) => line(format!(
                    "  first transfer, baton <= {goal:.1}x {}: {r50:.2}x (medians; {rmin:.2}x of minimums): {}",
                    tool.describe(),
                    met(r50 <= goal)
                )),
                None => line(format!(
                    "  first transfer, baton <= {goal:.1}x {}: not measured",
                    tool.describe()
                )),
            }
        }
        match self.delta_fraction() {
            Some(f) => line(format!(
                "  re-handoff file data <= {:.1} % of the tree: {:.4} % (the manifest, {:.3} %, beside it): {}",
                100.0 * GOAL_DELTA_FRACTION,
                100.0 * f,
                100.0 * self.manifest_fraction().unwrap_or(f64::NAN),
                met(f <= GOAL_DELTA_FRACTION)
            )),
            None => line("  re-handoff: not measured".into()),
        }
        match self.stopped() {
            Some(s) => line(format!(
                "  stopped time <= {:.0} s, full tree, nothing changed during the pre-copy: median {:.0} ms, max {:.0} ms: {}",
                GOAL_STOPPED_MS / 1000.0,
                s.p50,
                s.max,
                met(s.max <= GOAL_STOPPED_MS)
            )),
            None => line("  stopped time: not measured".into()),
        }
        let peaks = self.peaks();
        let top = peaks.iter().filter_map(|(_, v)| *v).max();
        match top {
            Some(top) => line(format!(
                "  peak memory of each daemon and the server < {:.0} MiB: highest {:.1} MiB: {}",
                mib(GOAL_MEMORY as f64),
                mib(top as f64),
                met(top < GOAL_MEMORY && peaks.iter().all(|(_, v)| v.is_some()))
            )),
            None => line("  peak memory: not measured".into()),
        }
        out
    }

    /// The figures as JSON, raw samples included.
    pub fn to_json(&self) -> Value {
        let per = |list: &[(Subject, Vec<Sample>)]| -> serde_json::Map<String, Value> {
            list.iter()
                .map(|(who, samples)| {
                    let secs = summary(samples, Sample::ok_secs);
                    (
                        who.name().to_string(),
                        json!({
                            "what": who.describe(),
                            "seconds": secs.map(|s| s.to_json()),
                            "mib_per_s_median": secs.map(|s| mib(self.bytes as f64) / s.p50),
                            "phase_medians_ms": Self::phase_medians(samples)
                                .into_iter()
                                .map(|(n, d)| (n, json!(d)))
                                .collect::<serde_json::Map<_, _>>(),
                            "samples": samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
                        }),
                    )
                })
                .collect()
        };
        let ratios: serde_json::Map<String, Value> = Tool::ALL
            .iter()
            .filter_map(|t| {
                self.ratio(*t)
                    .map(|(m, n)| (t.name().to_string(), json!({ "median": m, "min": n })))
            })
            .collect();
        let peaks = self.peaks();
        let top = peaks.iter().filter_map(|(_, v)| *v).max();
        json!({
            "selection": {
                "entries": self.entries,
                "files": self.files,
                "bytes": self.bytes,
                "left_out": self.excluded,
                "ignored_files": self.ignored.0,
                "ignored_bytes": self.ignored.1,
                "manifest_json_bytes": self.manifest_json,
            },
            "cold_cache": self.cold.is_none(),
            "warm_reason": self.cold,
            "settle_secs": self.settle_secs,
            "first_transfer": per(&self.first),
            "baton_over_tool": ratios,
            "stopped_ms": self.stopped().map(|s| s.to_json()),
            "rehandoff": {
                "edited": self.edited,
                "conflict": self.back_conflict,
                "subjects": per(&self.back),
                "baton_file_data_fraction_max": self.delta_fraction(),
                "baton_manifest_fraction_max": self.manifest_fraction(),
            },
            "onward": {
                "edited": self.edited,
                "conflict": "replace",
                "subjects": per(&self.onward),
            },
            "peak_memory_bytes": peaks.iter().map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "peak_memory_after_first_bytes": self.after_first.as_ref().map(|m| m.peaks.iter().map(|(n, v, _)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>()),
            "memory_by_round": self.memory.iter().map(|m| json!({
                "run": m.run,
                "peaks": m.peaks.iter().map(|(n, v, _)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "resident": m.peaks.iter().map(|(n, _, r)| (n.clone(), json!(r))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "goals": {
                "baton_over_rsync_median": { "limit": GOAL_VS_RSYNC, "value": self.ratio(Tool::Rsync).map(|r| r.0), "met": self.ratio(Tool::Rsync).map(|r| r.0 <= GOAL_VS_RSYNC) },
                "baton_over_tar_median": { "limit": GOAL_VS_TAR, "value": self.ratio(Tool::Tar).map(|r| r.0), "met": self.ratio(Tool::Tar).map(|r| r.0 <= GOAL_VS_TAR) },
                "rehandoff_file_data_fraction": { "limit": GOAL_DELTA_FRACTION, "value": self.delta_fraction(), "met": self.delta_fraction().map(|f| f <= GOAL_DELTA_FRACTION) },
                "stopped_ms_max": { "limit": GOAL_STOPPED_MS, "value": self.stopped().map(|s| s.max), "met": self.stopped().map(|s| s.max <= GOAL_STOPPED_MS) },
                "peak_memory_bytes": { "limit": GOAL_MEMORY, "value": top, "met": top.map(|t| t < GOAL_MEMORY) },
            },
            "skipped": self.skipped.iter().map(|(t, why)| json!({ "tool": t, "reason": why })).collect::<Vec<_>>(),
        })
    }
}
