//! The handoff benchmark's figures: tables for a person, JSON for tools.

use baton_bench::stats::Summary;
use serde_json::{Value, json};

use crate::measure::Sample;

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
