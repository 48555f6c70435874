//! Per-second buckets that average a metric over a trailing window (Knative's
//! `TimedFloat64Buckets`). Every time is an argument: the window never reads a clock.

use tokio::time::{Duration, Instant};

/// Bucket width. Reporters send one stat per second, so one bucket holds one report per source.
pub const BUCKET: Duration = Duration::from_secs(1);

/// Sums of recorded values per one-second bucket, over at most `capacity` of trailing time.
///
/// A window's value is the mean over the buckets since the first sample (gaps count 0); after a
/// whole window with no data it is 0.
#[derive(Debug, Clone)]
pub struct Window {
    /// Bucket 0 starts here; buckets are counted from it rather than from wall-clock seconds.
    origin: Instant,
    buckets: Vec<f64>,
    /// Bucket index of the first sample since the window last went a whole capacity without data.
    first: u64,
    /// Bucket index of the newest sample; `None` before any.
    last: Option<u64>,
}

impl Window {
    /// A window that can average over up to `capacity` (rounded up to whole seconds, at least 1).
    pub fn new(origin: Instant, capacity: Duration) -> Self {
        Window {
            origin,
            buckets: vec![0.0; seconds_ceil(capacity).max(1) as usize],
            first: 0,
            last: None,
        }
    }

    /// The longest span `average` can cover.
    pub fn capacity(&self) -> Duration {
        BUCKET * self.buckets.len() as u32
    }

    /// The bucket `t` falls in (times before the origin fall in bucket 0).
    pub fn bucket_of(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.origin);
        (since.as_nanos() / BUCKET.as_nanos()) as u64
    }

    /// Adds `value` to the bucket of `now`. Several sources reporting in the same second add up.
    /// A value older than the capacity is dropped: it can no longer count.
    pub fn record(&mut self, now: Instant, value: f64) {
        let i = self.bucket_of(now);
        let n = self.buckets.len() as u64;
        match self.last {
            None => {
                self.first = i;
                self.last = Some(i);
            }
            Some(last) if i > last => {
                if i - last >= n {
                    // A whole window went by without data: what follows is a new series, so
                    // "since the first sample" restarts here.
                    self.buckets.fill(0.0);
                    self.first = i;
                } else {
                    for j in last + 1..=i {
                        self.buckets[(j % n) as usize] = 0.0;
                    }
                }
                self.last = Some(i);
            }
            Some(last) if last - i >= n => return,
            Some(_) => self.first = self.first.min(i),
        }
        self.buckets[(i % n) as usize] += value;
    }

    /// The mean over the buckets of the last `span` (at most the capacity) ending at `now`,
    /// counting only buckets since the first sample; 0 when nothing was recorded in that span.
    pub fn average(&self, now: Instant, span: Duration) -> f64 {
        let Some(last) = self.last else {
            return 0.0;
        };
        let n = self.buckets.len() as u64;
        let m = seconds_ceil(span).clamp(1, n);
        let now_i = self.bucket_of(now);
        // The current second is still being reported: until a report lands in it, the span ends
        // at the second before, so a tick that runs just ahead of the reporters does not read a
        // missing report as a 0.
        let end = if now_i <= last { now_i } else { now_i - 1 };
        if end < self.first {
            return 0.0;
        }
        let start = self.first.max((end + 1).saturating_sub(m));
        let sum: f64 = (start..=end.min(last))
            .filter(|j| last - j < n)
            .map(|j| self.buckets[(j % n) as usize])
            .sum();
        sum / (end - start + 1) as f64
    }
}

fn seconds_ceil(d: Duration) -> u64 {
    d.as_nanos().div_ceil(BUCKET.as_nanos()) as u64
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build their Instants from one `now`
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[tokio::test(start_paused = true)]
    async fn empty_is_zero() {
        let t0 = Instant::now();
        let w = Window::new(t0, 60 * S);
        assert_eq!(w.average(t0 + 10 * S, 60 * S), 0.0);
        assert_eq!(w.capacity(), 60 * S);
    }

    #[test]
    fn mean_is_over_buckets_since_the_first_sample() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, 60 * S);
        w.record(t0 + 10 * S, 4.0);
        w.record(t0 + 11 * S, 8.0);
        // Only two seconds since the first sample: not diluted by the 58 empty ones before.
        assert!(close(w.average(t0 + 11 * S, 60 * S), 6.0));
        // A gap counts 0.
        w.record(t0 + 13 * S, 0.0);
        assert!(close(w.average(t0 + 13 * S, 60 * S), 3.0));
        // The panic-sized span only sees its last buckets.
        assert!(close(w.average(t0 + 13 * S, 2 * S), 0.0));
        assert!(close(w.average(t0 + 13 * S, 3 * S), 8.0 / 3.0));
    }

    #[test]
    fn sources_in_the_same_second_add_up() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, 6 * S);
        w.record(t0 + S, 2.0);
        w.record(t0 + S + Duration::from_millis(300), 3.0);
        assert!(close(
            w.average(t0 + S + Duration::from_millis(900), 6 * S),
            5.0
        ));
    }

    #[test]
    fn the_unreported_current_second_is_not_a_zero() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, 6 * S);
        for s in 0..6 {
            w.record(t0 + s * S, 10.0);
        }
        // At 6.5 s nobody has reported for second 6 yet: the span is seconds 1..=5.
        assert!(close(
            w.average(t0 + 6 * S + Duration::from_millis(500), 6 * S),
            10.0
        ));
        // At 8 s, second 6 and 7 are true gaps.
        assert!(close(w.average(t0 + 8 * S, 6 * S), 40.0 / 6.0));
    }

    #[test]
    fn zero_after_a_whole_window_without_data_then_restarts() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, 6 * S);
        for s in 0..6 {
            w.record(t0 + s * S, 10.0);
        }
        assert!(w.average(t0 + 11 * S, 6 * S) > 0.0);
        assert_eq!(w.average(t0 + 12 * S, 6 * S), 0.0);
        assert_eq!(w.average(t0 + 100 * S, 6 * S), 0.0);
        // New data after the silence is a new series: averaged since its own first sample.
        w.record(t0 + 100 * S, 3.0);
        assert!(close(w.average(t0 + 100 * S, 6 * S), 3.0));
    }

    #[test]
    fn stale_buckets_are_cleared_when_the_ring_wraps() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, 3 * S);
        w.record(t0, 9.0);
        w.record(t0 + S, 9.0);
        w.record(t0 + 2 * S, 9.0);
        w.record(t0 + 4 * S, 1.0);
        // Buckets 2, 3 (gap), 4.
        assert!(close(w.average(t0 + 4 * S, 3 * S), 10.0 / 3.0));
    }

    #[test]
    fn too_old_samples_are_dropped() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, 3 * S);
        w.record(t0 + 10 * S, 1.0);
        w.record(t0 + 5 * S, 100.0);
        assert!(close(w.average(t0 + 10 * S, 3 * S), 1.0));
        // A late sample still inside the ring counts.
        w.record(t0 + 9 * S, 2.0);
        assert!(close(w.average(t0 + 10 * S, 3 * S), 1.5));
    }
}
