//! Benchmarks: each measures Pylon against a baseline taken in the same run (the raw relay), so
//! figures from a noisy machine still compare. Every benchmark prints JSON.

pub mod market;
pub mod relay;
pub mod relay_child;
pub mod relay_load;
pub mod repomap;
pub mod soak;
pub mod stats;
pub mod swarm;
pub mod textgen;
pub mod wallet;
pub mod wan;
pub mod wan_proxy;

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// Worst.
    pub max: f64,
    /// Samples.
    pub samples: usize,
}

impl Latency {
    /// Summarises `samples` (any order).
    pub fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        Self {
            p50: round3(percentile(&ms, 50.0)),
            p95: round3(percentile(&ms, 95.0)),
            max: round3(ms.last().copied().unwrap_or(0.0)),
            samples: ms.len(),
        }
    }
}

/// Nearest-rank percentile of sorted values; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to three decimals, so JSON stays readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let l = Latency::of(&[
            Duration::from_millis(3),
            Duration::from_millis(1),
            Duration::from_millis(2),
        ]);
        assert_eq!((l.p50, l.max, l.samples), (2.0, 3.0, 3));
    }
}
