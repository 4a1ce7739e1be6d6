//! The benchmarks' figures: tables for a person, JSON for tools.

use baton_bench::split::Bucket;
use baton_bench::stats::Summary;
use serde_json::{Value, json};

use crate::measure::Sample;
use crate::providers::ProviderSample;

/// The largest ratio of latencies (largest vs smallest transcript) the issue accepts.
pub const GOAL_RATIO: f64 = 1.2;

/// One transcript size's measurements.
pub struct Row {
    /// Entries asked for.
    pub requested: u64,
    /// Entries in the transcript when the measured handoffs started.
    pub entries: u64,
    /// Seconds it took to grow the transcript.
    pub fill_secs: f64,
    /// The measured handoffs.
    pub samples: Vec<Sample>,
}

/// Summaries of a row's samples.
struct Metrics {
    client: Summary,
    server: Summary,
    stopped: Summary,
    bytes_min: u64,
    bytes_max: u64,
}

impl Row {
    fn metrics(&self) -> Option<Metrics> {
        let of =
            |f: fn(&Sample) -> f64| Summary::of(&self.samples.iter().map(f).collect::<Vec<_>>());
        Some(Metrics {
            client: of(|s| s.client_ms)?,
            server: of(|s| s.server_ms)?,
            stopped: of(|s| s.stopped_ms)?,
            bytes_min: self.samples.iter().map(|s| s.bytes).min()?,
            bytes_max: self.samples.iter().map(|s| s.bytes).max()?,
        })
    }
}

/// One table: a way of growing the transcript, measured at several sizes.
pub struct Table {
    /// Key in the JSON file.
    pub key: &'static str,
    /// Heading.
    pub title: String,
    /// How the transcript was grown, for the reader.
    pub method: String,
    /// Rows, smallest size first.
    pub rows: Vec<Row>,
    /// Sizes not measured, with the reason.
    pub skipped: Vec<(u64, String)>,
}

/// Ratios of the client latency of `row` to that of `base`: (p50, p99).
fn ratios(row: &Metrics, base: &Metrics) -> (f64, f64) {
    (
        row.client.p50 / base.client.p50,
        row.client.p99 / base.client.p99,
    )
}

fn bytes_cell(m: &Metrics) -> String {
    if m.bytes_min == m.bytes_max {
        m.bytes_min.to_string()
    } else {
        format!("{}-{}", m.bytes_min, m.bytes_max)
    }
}

impl Table {
    fn measured(&self) -> Vec<(&Row, Metrics)> {
        self.rows
            .iter()
            .filter_map(|r| r.metrics().map(|m| (r, m)))
            .collect()
    }

    /// The goal check: client latency at the largest size vs the smallest, when both exist.
    fn goal(&self) -> Option<(u64, u64, f64, f64)> {
        let measured = self.measured();
        let (first, base) = measured.first()?;
        let (last, top) = measured.last()?;
        if measured.len() < 2 {
            return None;
        }
        let (p50, p99) = ratios(top, base);
        Some((first.requested, last.requested, p50, p99))
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(self.title.clone());
        line(self.method.clone());
        let measured = self.measured();
        let base = measured.first().map(|(r, m)| (r.requested, m));
        let base_label = base.map(|(n, _)| n.to_string()).unwrap_or_default();
        line(format!(
            "{:>8} {:>15}  {:<16}{:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>13} {:>13}",
            "entries",
            "bundle B",
            "metric (ms)",
            "runs",
            "p50",
            "p99",
            "mean",
            "min",
            "max",
            format!("p50/p50({base_label})"),
            format!("p99/p99({base_label})"),
        ));
        for (row, m) in &measured {
            let (r50, r99) = base
                .map(|(_, b)| ratios(m, b))
                .unwrap_or((f64::NAN, f64::NAN));
            let metric_rows = [
                ("client latency", &m.client, true),
                ("server duration", &m.server, false),
                ("session stopped", &m.stopped, false),
            ];
            for (i, (name, s, with_ratio)) in metric_rows.into_iter().enumerate() {
                let (entries, bytes) = if i == 0 {
                    (row.entries.to_string(), bytes_cell(m))
                } else {
                    (String::new(), String::new())
                };
                let (c50, c99) = if with_ratio {
                    (format!("{r50:.2}"), format!("{r99:.2}"))
                } else {
                    (String::new(), String::new())
                };
                line(format!(
                    "{entries:>8} {bytes:>15}  {name:<16}{:>5} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {c50:>13} {c99:>13}",
                    s.n, s.p50, s.p99, s.mean, s.min, s.max
                ));
            }
        }
        for (n, why) in &self.skipped {
            line(format!("{n:>8}  skipped: {why}"));
        }
        if let Some((small, large, p50, p99)) = self.goal() {
            let met = p50 <= GOAL_RATIO && p99 <= GOAL_RATIO;
            line(format!(
                "Goal, client latency at {large} vs {small} entries within {GOAL_RATIO}x: \
                 p50 {p50:.2}x, p99 {p99:.2}x: {}",
                if met { "met" } else { "NOT met" }
            ));
        }
        out
    }

    /// The table as JSON, raw samples included.
    pub fn to_json(&self) -> Value {
        let measured = self.measured();
        let base = measured.first().map(|(_, m)| m);
        let rows: Vec<Value> = measured
            .iter()
            .map(|(r, m)| {
                let (r50, r99) = base.map(|b| ratios(m, b)).unwrap_or((f64::NAN, f64::NAN));
                json!({
                    "requested_entries": r.requested,
                    "entries": r.entries,
                    "fill_seconds": r.fill_secs,
                    "runs": r.samples.len(),
                    "bundle_bytes": { "min": m.bytes_min, "max": m.bytes_max },
                    "client_latency_ms": m.client.to_json(),
                    "server_duration_ms": m.server.to_json(),
                    "session_stopped_ms": m.stopped.to_json(),
                    "client_latency_ratio_to_smallest": { "p50": r50, "p99": r99 },
                    "samples": r.samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        let goal = self.goal().map(|(small, large, p50, p99)| {
            json!({
                "smallest": small,
                "largest": large,
                "p50_ratio": p50,
                "p99_ratio": p99,
                "limit": GOAL_RATIO,
                "met": p50 <= GOAL_RATIO && p99 <= GOAL_RATIO,
            })
        });
        json!({
            "title": self.title,
            "method": self.method,
            "rows": rows,
            "skipped": self
                .skipped
                .iter()
                .map(|(n, why)| json!({ "entries": n, "reason": why }))
                .collect::<Vec<_>>(),
            "goal": goal,
        })
    }
}

/// One provider's measured handoffs (`baton-bench providers`).
pub struct ProviderRow {
    /// Provider name.
    pub provider: String,
    /// Its CLI's version, as the daemon reported it.
    pub version: Option<String>,
    /// The measured handoffs.
    pub samples: Vec<ProviderSample>,
    /// Why it stopped early, if it did (its samples so far are kept).
    pub failure: Option<String>,
}

/// Summaries of a provider's samples: one per part, the total, and the resume part cut finer.
struct ProviderMetrics {
    parts: Vec<(Bucket, Summary)>,
    total: Summary,
    resume: [(&'static str, Summary); 4],
    bytes: Summary,
    context_ok: usize,
}

impl ProviderRow {
    fn metrics(&self) -> Option<ProviderMetrics> {
        let of = |f: &dyn Fn(&ProviderSample) -> f64| {
            Summary::of(&self.samples.iter().map(f).collect::<Vec<_>>())
        };
        let parts = Bucket::ALL
            .iter()
            .map(|b| Some((*b, of(&|s| s.split.get(*b))?)))
            .collect::<Option<Vec<_>>>()?;
        Some(ProviderMetrics {
            parts,
            total: of(&|s| s.split.total)?,
            resume: [
                ("activate", of(&|s| s.resume.activate)?),
                ("done", of(&|s| s.resume.done)?),
                ("delivery", of(&|s| s.resume.delivery)?),
                ("first output", of(&|s| s.resume.first_output)?),
            ],
            bytes: of(&|s| s.bytes as f64)?,
            context_ok: self.samples.iter().filter(|s| s.context_ok).count(),
        })
    }
}

/// The figures of `baton-bench providers`.
pub struct ProviderReport {
    /// The provider the others are compared to.
    pub baseline: &'static str,
    /// Measured providers, in the order asked for.
    pub rows: Vec<ProviderRow>,
    /// Providers not measured, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// What the resume part's finer cut holds, for the reader.
const RESUME_PARTS: &str = "activate = end of commit -> end of activate (commit transaction, state put in place, move noted, provider started); \
done = the done phase (source cleanup, handoff closed); delivery = end of done -> user entry of the queued message seen; \
first output = user entry seen -> first provider entry seen";

impl ProviderReport {
    fn measured(&self) -> Vec<(&ProviderRow, ProviderMetrics)> {
        self.rows
            .iter()
            .filter_map(|r| r.metrics().map(|m| (r, m)))
            .collect()
    }

    /// Median total of the baseline, when it was measured.
    fn baseline_total(&self) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.provider == self.baseline)
            .and_then(ProviderRow::metrics)
            .map(|m| m.total.p50)
    }

    fn ratio(&self, m: &ProviderMetrics) -> Option<f64> {
        self.baseline_total().map(|b| m.total.p50 / b)
    }

    /// The tables as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(s.trim_end());
            out.push('\n');
        };
        let measured = self.measured();
        for (row, m) in &measured {
            line(format!(
                "{} {}: {} handoffs; provider state moved (sealed bundle): median {:.0} B, min {:.0}, max {:.0}",
                row.provider,
                row.version.as_deref().unwrap_or("(version unknown)"),
                m.total.n,
                m.bytes.p50,
                m.bytes.min,
                m.bytes.max
            ));
            line(format!(
                "  {:<10} {:>9} {:>9} {:>9}",
                "part (ms)", "median", "p90", "min"
            ));
            for (b, s) in &m.parts {
                line(format!(
                    "  {:<10} {:>9.1} {:>9.1} {:>9.1}",
                    b.name(),
                    s.p50,
                    s.p90,
                    s.min
                ));
            }
            let ratio = match self.ratio(m) {
                Some(r) => format!("   median total = {r:.2}x {}", self.baseline),
                None => String::new(),
            };
            line(format!(
                "  {:<10} {:>9.1} {:>9.1} {:>9.1}{ratio}",
                "total", m.total.p50, m.total.p90, m.total.min
            ));
            line(format!(
                "  resume cut finer (medians, ms): {}",
                m.resume
                    .iter()
                    .map(|(name, s)| format!("{name} {:.1}", s.p50))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            line(format!(
                "  reply quoted the first message (context came along): {} of {}",
                m.context_ok, m.total.n
            ));
            if let Some(why) = &row.failure {
                line(format!("  stopped early: {why}"));
            }
            line(String::new());
        }
        for row in &self.rows {
            if row.samples.is_empty() {
                line(format!(
                    "{}: no measured handoff: {}",
                    row.provider,
                    row.failure.as_deref().unwrap_or("no samples")
                ));
            }
        }
        line(format!(
            "Summary: confirm -> first provider entry on the target (ms), ratio of median totals to {}",
            self.baseline
        ));
        line(format!(
            "  {:<9} {:<10} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
            "provider",
            "version",
            "runs",
            "quiesce",
            "transfer",
            "import",
            "resume",
            "total",
            "p90",
            "min",
            "state B",
            format!("x {}", self.baseline)
        ));
        for (row, m) in &measured {
            let part = |b: Bucket| {
                m.parts
                    .iter()
                    .find(|(x, _)| *x == b)
                    .map_or(f64::NAN, |(_, s)| s.p50)
            };
            line(format!(
                "  {:<9} {:<10} {:>4} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.0} {:>8}",
                row.provider,
                row.version.as_deref().unwrap_or("?"),
                m.total.n,
                part(Bucket::Quiesce),
                part(Bucket::Transfer),
                part(Bucket::Import),
                part(Bucket::Resume),
                m.total.p50,
                m.total.p90,
                m.total.min,
                m.bytes.p50,
                self.ratio(m).map_or("-".into(), |r| format!("{r:.2}"))
            ));
        }
        for (p, why) in &self.skipped {
            line(format!("  {p:<9} skipped: {why}"));
        }
        line("  (parts and total: medians; p90 and min of the total; state B: median sealed provider-state bytes)".into());
        line(String::new());
        line("What each part covers (cut at the server's phase end times, so the parts add up to the total):".into());
        for b in Bucket::ALL {
            line(format!("  {:<9} {}", b.name(), b.covers()));
        }
        line(format!("  resume, cut finer: {RESUME_PARTS}"));
        line("t0 is taken right before the client POSTs the handoff; the probe message is queued right after the POST returns (the server holds it until the handoff is over).".into());
        line("The end is when the client receives the provider's first assistant/tool entry at the new epoch, pushed over its WebSocket subscription with entries (as `baton attach` follows a session), not polled.".into());
        line(
            "Percentiles are nearest-rank (no interpolation): p90 of 10 runs is the 9th smallest."
                .into(),
        );
        out
    }

    /// The figures as JSON, raw samples included.
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let m = r.metrics();
                let summary = m.as_ref().map(|m| {
                    let mut parts: serde_json::Map<String, Value> = m
                        .parts
                        .iter()
                        .map(|(b, s)| (format!("{}_ms", b.name()), s.to_json()))
                        .collect();
                    parts.insert("total_ms".into(), m.total.to_json());
                    parts
                });
                let resume = m.as_ref().map(|m| {
                    m.resume
                        .iter()
                        .map(|(name, s)| (name.replace(' ', "_"), s.to_json()))
                        .collect::<serde_json::Map<_, _>>()
                });
                json!({
                    "provider": r.provider,
                    "version": r.version,
                    "runs": r.samples.len(),
                    "failure": r.failure,
                    "summary": summary,
                    "resume_parts_ms": resume,
                    "bytes": m.as_ref().map(|m| m.bytes.to_json()),
                    "context_ok": m.as_ref().map(|m| m.context_ok),
                    "median_total_ratio_to_baseline": m.as_ref().and_then(|m| self.ratio(m)),
                    "samples": r.samples.iter().map(ProviderSample::to_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "baseline": self.baseline,
            "observed_by": "websocket subscription with entries (pushed, not polled)",
            "parts": Bucket::ALL
                .iter()
                .map(|b| (b.name().to_string(), json!(b.covers())))
                .collect::<serde_json::Map<_, _>>(),
            "resume_parts": RESUME_PARTS,
            "percentiles": "nearest-rank: pK is the ceil(K*n/100)-th smallest of n values",
            "providers": rows,
            "skipped": self
                .skipped
                .iter()
                .map(|(p, why)| json!({ "provider": p, "reason": why }))
                .collect::<Vec<_>>(),
        })
    }
}
