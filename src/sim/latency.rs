//! A fixed-size latency histogram for the checker and the probe: a run of hours records every
//! sample into 2,240 counters (17.5 KiB) instead of keeping the samples, and still reports
//! p50/p99 within 1.6% and the exact maximum.
//!
//! Buckets are log-linear over microseconds: exact below 128 µs, then 64 buckets per power of
//! two (the layout of an HDR histogram with two significant digits), up to 2^40 µs (12 days);
//! a larger sample counts as 2^40 µs.

use std::time::Duration;

/// Sub-buckets per power of two.
const SUB: u64 = 64;
/// Largest recorded value, in microseconds.
const MAX_MICROS: u64 = (1 << 40) - 1;
/// 128 exact buckets, then 64 for each of the 33 powers of two from 2^7 to 2^39.
const BUCKETS: usize = 128 + 33 * SUB as usize;

/// Counts of durations by bucket, plus the exact maximum.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Box<[u64]>,
    total: u64,
    max_micros: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> LatencyHistogram {
        LatencyHistogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max_micros: 0,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_MICROS)
            .min(MAX_MICROS);
        let index = bucket_of(micros);
        self.counts[index] += 1;
        self.total += 1;
        self.max_micros = self.max_micros.max(micros);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q`-quantile (`0.0..=1.0`) in milliseconds: the upper edge of the bucket holding
    /// the sample of that rank, never above the maximum; 0 with no samples.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        // The rank of the sample, 1-based: p50 of 2 samples is the first.
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return micros_to_ms(upper_edge(index).min(self.max_micros));
            }
        }
        micros_to_ms(self.max_micros)
    }

    pub fn max_ms(&self) -> f64 {
        micros_to_ms(self.max_micros)
    }
}

/// A histogram as text can carry it between processes (the fan-out bench's consumer
/// processes): its non-empty buckets and the maximum.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SparseHistogram {
    /// `(bucket, count)` of every non-empty bucket.
    pub buckets: Vec<(u32, u64)>,
    pub max_micros: u64,
}

impl LatencyHistogram {
    pub fn to_sparse(&self) -> SparseHistogram {
        SparseHistogram {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
            max_micros: self.max_micros,
        }
    }

    /// Adds another process's samples; buckets out of range (a foreign or damaged input) are
    /// ignored.
    pub fn merge(&mut self, other: &SparseHistogram) {
        for &(index, count) in &other.buckets {
            if let Some(slot) = self.counts.get_mut(index as usize) {
                *slot += count;
                self.total += count;
            }
        }
        self.max_micros = self.max_micros.max(other.max_micros.min(MAX_MICROS));
    }
}

fn micros_to_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn bucket_of(micros: u64) -> usize {
    if micros < 2 * SUB {
        return micros as usize;
    }
    let msb = 63 - u64::from(micros.leading_zeros());
    let shift = msb - 6;
    (2 * SUB + (shift - 1) * SUB + ((micros >> shift) - SUB)) as usize
}

/// The largest value that falls in bucket `index`.
fn upper_edge(index: usize) -> u64 {
    let index = index as u64;
    if index < 2 * SUB {
        return index;
    }
    let shift = (index - 2 * SUB) / SUB + 1;
    let sub = (index - 2 * SUB) % SUB + SUB;
    ((sub + 1) << shift) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_a_bucket_whose_edge_is_within_two_percent() {
        let mut v = 0u64;
        while v <= MAX_MICROS {
            let index = bucket_of(v);
            assert!(index < BUCKETS, "{v}");
            let edge = upper_edge(index);
            assert!(edge >= v, "{v} {edge}");
            assert!(edge - v <= v / 60 + 1, "{v} {edge}");
            if index > 0 {
                assert!(upper_edge(index - 1) < v, "{v}");
            }
            v = v * 17 / 16 + 1;
        }
        assert_eq!(bucket_of(MAX_MICROS), BUCKETS - 1);
    }

    #[test]
    fn a_merged_sparse_copy_has_the_same_figures() {
        let (mut a, mut b) = (LatencyHistogram::new(), LatencyHistogram::new());
        for ms in 1..=50u64 {
            a.record(Duration::from_millis(ms));
            b.record(Duration::from_millis(ms + 50));
        }
        let mut merged = LatencyHistogram::new();
        merged.merge(&a.to_sparse());
        merged.merge(&b.to_sparse());
        merged.merge(&SparseHistogram {
            buckets: vec![(u32::MAX, 7)],
            max_micros: 0,
        });
        assert_eq!(merged.count(), 100);
        assert!((99.0..=101.0).contains(&merged.quantile_ms(0.99)));
        assert_eq!(merged.max_ms(), 100.0);
    }

    #[test]
    fn quantiles_and_max() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.quantile_ms(0.5), 0.0);
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        h.record(Duration::from_secs(86_400 * 365 * 1000));
        assert_eq!(h.count(), 101);
        let p50 = h.quantile_ms(0.5);
        assert!((50.0..=52.0).contains(&p50), "{p50}");
        let p99 = h.quantile_ms(0.99);
        assert!((99.0..=101.0).contains(&p99), "{p99}");
        assert_eq!(h.max_ms(), MAX_MICROS as f64 / 1000.0);
        assert_eq!(h.quantile_ms(1.0), h.max_ms());
    }
}
