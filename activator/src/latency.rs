//! How long an Executor's calls take, as seen by its replica set (queueing for a cold start
//! included): cumulative counts in fixed buckets that a reader diffs between two snapshots to get
//! the rate and the percentiles of a period. Lock-free on the request path (one atomic add). It
//! must not read the clock: the caller passes each duration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets grow by √2 from 250 µs: the last finite bound is about 185 s. A percentile is read as
/// the geometric middle of its bucket, so it is within ±19 % of the true value.
pub const BUCKETS: usize = 40;
const FIRST_BOUND_MS: f64 = 0.25;

fn upper_bound_ms(i: usize) -> f64 {
    FIRST_BOUND_MS * std::f64::consts::SQRT_2.powi(i as i32)
}

/// Call durations since the replica set was made.
#[derive(Debug)]
pub struct LatencyHistogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = (0..BUCKETS - 1)
            .find(|&i| ms <= upper_bound_ms(i))
            .unwrap_or(BUCKETS - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
        }
    }
}

/// Cumulative bucket counts at one moment; the difference of two is one period's calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySnapshot {
    pub counts: [u64; BUCKETS],
}

impl Default for LatencySnapshot {
    fn default() -> Self {
        LatencySnapshot {
            counts: [0; BUCKETS],
        }
    }
}

impl LatencySnapshot {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The calls between `earlier` and `self`.
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        LatencySnapshot {
            counts: std::array::from_fn(|i| self.counts[i].saturating_sub(earlier.counts[i])),
        }
    }

    /// The `q` quantile (0..=1) in milliseconds, None without calls.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        // Nearest rank: the smallest bucket holding at least q of the calls.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let hi = upper_bound_ms(i);
                let lo = if i == 0 { 0.0 } else { upper_bound_ms(i - 1) };
                return Some(if i == 0 { hi } else { (lo * hi).sqrt() });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_land_in_the_bucket_of_the_ranked_call() {
        let h = LatencyHistogram::default();
        let before = h.snapshot();
        for _ in 0..98 {
            h.observe(Duration::from_millis(2));
        }
        h.observe(Duration::from_millis(900));
        h.observe(Duration::from_secs(3));
        let d = h.snapshot().since(&before);
        assert_eq!(d.total(), 100);
        let p50 = d.quantile_ms(0.5).unwrap();
        assert!((1.6..=2.4).contains(&p50), "{p50}");
        let p99 = d.quantile_ms(0.99).unwrap();
        assert!((700.0..=1100.0).contains(&p99), "{p99}");
        let max = d.quantile_ms(1.0).unwrap();
        assert!((2400.0..=3600.0).contains(&max), "{max}");
        assert_eq!(LatencySnapshot::default().quantile_ms(0.5), None);
    }

    #[test]
    fn a_call_longer_than_the_last_bound_is_counted_in_the_last_bucket() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_secs(3600));
        assert_eq!(h.snapshot().counts[BUCKETS - 1], 1);
    }
}
