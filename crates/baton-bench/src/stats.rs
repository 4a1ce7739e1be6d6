//! Order statistics of a benchmark's samples.
//!
//! Percentiles use the nearest-rank method: no interpolation, so every figure reported is a
//! latency that was actually observed. With few runs the high percentiles are therefore the
//! largest samples (p99 of 20 runs is the 20th, i.e. the maximum).

/// The nearest-rank percentile `p` (1..=100) of `sorted` (ascending): the ⌈p·n/100⌉-th smallest
/// value. `None` when there are no values.
pub fn percentile(sorted: &[f64], p: u32) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    // Integer arithmetic keeps the rank exact (19.8 → 20, not 19.800000000000001 → 20 by luck).
    let rank = (p as usize * n).div_ceil(100).clamp(1, n);
    Some(sorted[rank - 1])
}

/// Summary of one metric over the runs of one benchmark case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Nearest-rank median.
    pub p50: f64,
    /// Nearest-rank 90th percentile.
    pub p90: f64,
    /// Nearest-rank 99th percentile.
    pub p99: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (any order). `None` when there are none or one is not a number.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            n: sorted.len(),
            p50: percentile(&sorted, 50)?,
            p90: percentile(&sorted, 90)?,
            p99: percentile(&sorted, 99)?,
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            min: *sorted.first()?,
            max: *sorted.last()?,
        })
    }

    /// As a JSON object (`n`, `p50`, `p90`, `p99`, `mean`, `min`, `max`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.n,
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_of_twenty_runs() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50), Some(10.0));
        // p99 of 20 runs is the 20th value: the maximum.
        assert_eq!(percentile(&v, 99), Some(20.0));
        assert_eq!(percentile(&v, 95), Some(19.0));
        assert_eq!(percentile(&v, 90), Some(18.0));
        assert_eq!(percentile(&v, 100), Some(20.0));
        assert_eq!(percentile(&v, 1), Some(1.0));
    }

    #[test]
    fn small_and_empty_inputs() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7.0], 50), Some(7.0));
        assert_eq!(percentile(&[7.0], 99), Some(7.0));
        // 3 values: p50 is the 2nd (⌈1.5⌉), p99 the 3rd.
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 99), Some(3.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50), Some(2.0));
    }

    #[test]
    fn p90_of_ten_runs_is_the_ninth() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 90), Some(9.0));
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.p50, s.p90, s.p99), (5.0, 9.0, 10.0));
    }

    #[test]
    fn summary_sorts_its_input() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.n, s.p50, s.p99, s.min, s.max), (4, 2.0, 4.0, 1.0, 4.0));
        assert_eq!(s.mean, 2.5);
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
    }
}
