//! Per-second buckets that average a metric over a trailing window (Knative's
//! `TimedFloat64Buckets`). Every time is an argument: the window never reads a clock.

use tokio::time::{Duration, Instant};

/// Bucket width. Reporters send one stat per second, so one bucket holds one report per source.
pub const BUCKET: Duration = Duration::from_secs(1);

/// Sums of recorded values per one-second bucket, over at most `capacity` of trailing time.
///
/// A window's value is the mean over the buckets since the first sample (gaps count 0). A second
/// in which a reporter could not be read is not a 0: it is left out of the mean, and a decision
/// whose latest second is such a second, or whose span holds nothing at all, has no data
/// ([`Window::is_empty`], [`Window::latest_incomplete`]; Knative's `ErrNoData`).
#[derive(Debug, Clone)]
pub struct Window {
    /// Bucket 0 starts here; buckets are counted from it rather than from wall-clock seconds.
    origin: Instant,
    buckets: Vec<f64>,
    /// Per bucket: some reporter failed to report in that second, so its sum is incomplete.
    incomplete: Vec<bool>,
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
            incomplete: vec![false; seconds_ceil(capacity).max(1) as usize],
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
        if let Some(i) = self.slot(now) {
            self.buckets[i] += value;
        }
    }

    /// Notes that a reporter could not be read in the second of `now` (a failed stats scrape):
    /// that second's sum is incomplete, so it is left out of averages instead of read as a low
    /// value.
    pub fn record_missing(&mut self, now: Instant) {
        if let Some(i) = self.slot(now) {
            self.incomplete[i] = true;
        }
    }

    /// The ring index of `now`'s bucket, after clearing the seconds since the newest sample; `None`
    /// for a time older than the capacity.
    fn slot(&mut self, now: Instant) -> Option<usize> {
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
                    self.incomplete.fill(false);
                    self.first = i;
                } else {
                    for j in last + 1..=i {
                        self.buckets[(j % n) as usize] = 0.0;
                        self.incomplete[(j % n) as usize] = false;
                    }
                }
                self.last = Some(i);
            }
            Some(last) if last - i >= n => return None,
            Some(_) => self.first = self.first.min(i),
        }
        Some((i % n) as usize)
    }

    /// The buckets the last `span` ending at `now` covers, `(start, end)`, counting only buckets
    /// since the first sample; `None` when that is nothing.
    fn span(&self, now: Instant, span: Duration) -> Option<(u64, u64)> {
        let last = self.last?;
        let n = self.buckets.len() as u64;
        let m = seconds_ceil(span).clamp(1, n);
        let now_i = self.bucket_of(now);
        // The current second is still being reported: until a report lands in it, the span ends
        // at the second before, so a tick that runs just ahead of the reporters does not read a
        // missing report as a 0.
        let end = if now_i <= last { now_i } else { now_i - 1 };
        if end < self.first {
            return None;
        }
        Some((self.first.max((end + 1).saturating_sub(m)), end))
    }

    /// Nothing at all was recorded in the last `span` ending at `now`: there is no data to decide
    /// on, which is not the same as no load (Knative's `IsEmpty`).
    pub fn is_empty(&self, now: Instant, span: Duration) -> bool {
        match (self.span(now, span), self.last) {
            (Some((start, _)), Some(last)) => last < start,
            _ => true,
        }
    }

    /// The newest second a decision at `now` would read is incomplete (a reporter could not be
    /// read in it): the current load is not known.
    pub fn latest_incomplete(&self, now: Instant) -> bool {
        let (Some((_, end)), Some(last)) = (self.span(now, BUCKET), self.last) else {
            return false;
        };
        let n = self.buckets.len() as u64;
        end <= last && last - end < n && self.incomplete[(end % n) as usize]
    }

    /// The mean over the buckets of the last `span` (at most the capacity) ending at `now`,
    /// counting only buckets since the first sample and leaving incomplete seconds out; 0 when
    /// nothing was recorded in that span.
    pub fn average(&self, now: Instant, span: Duration) -> f64 {
        let (Some((start, end)), Some(last)) = (self.span(now, span), self.last) else {
            return 0.0;
        };
        let n = self.buckets.len() as u64;
        let (mut sum, mut count) = (0.0, 0u64);
        for j in start..=end {
            if j <= last && last - j < n {
                let k = (j % n) as usize;
                if self.incomplete[k] {
                    continue;
                }
                sum += self.buckets[k];
            }
            count += 1;
        }
        if count == 0 { 0.0 } else { sum / count as f64 }
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
        assert!(w.is_empty(t0 + 10 * S, 60 * S));
        assert_eq!(w.capacity(), 60 * S);
    }

    #[test]
    fn recorded_zeros_are_data_and_silence_is_not() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, 6 * S);
        w.record(t0 + S, 0.0);
        assert!(
            !w.is_empty(t0 + 2 * S, 6 * S),
            "a reported 0 is a load of 0"
        );
        assert!(!w.is_empty(t0 + 7 * S, 6 * S));
        assert!(
            w.is_empty(t0 + 8 * S, 6 * S),
            "a whole window without reports"
        );
    }

    #[test]
    fn an_unread_second_is_left_out_not_counted_as_zero() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, 6 * S);
        for s in 0..6 {
            // Two replicas carry 10 each; the second one cannot be read at 3 s.
            w.record(t0 + s * S, 10.0);
            if s == 3 {
                w.record_missing(t0 + s * S);
            } else {
                w.record(t0 + s * S, 10.0);
            }
        }
        assert!(close(w.average(t0 + 5 * S, 6 * S), 20.0));
        assert!(!w.latest_incomplete(t0 + 5 * S));
        assert!(w.latest_incomplete(t0 + 3 * S));
        assert!(!w.latest_incomplete(t0 + 4 * S));
        // The flag goes with its second when the ring wraps.
        w.record(t0 + 9 * S, 20.0);
        assert!(!w.latest_incomplete(t0 + 9 * S));
        assert!(close(
            w.average(t0 + 9 * S, 6 * S),
            (20.0 + 20.0 + 20.0) / 6.0
        ));
        // A span holding only unread seconds averages to 0 but is not empty: the caller asks
        // `latest_incomplete` first.
        let mut u = Window::new(t0, 6 * S);
        u.record_missing(t0);
        assert!(!u.is_empty(t0, 6 * S));
        assert!(u.latest_incomplete(t0));
        // At 1.5 s nobody has reported for second 1 yet: the latest second read is still 0.
        assert!(u.latest_incomplete(t0 + S + Duration::from_millis(500)));
        assert_eq!(u.average(t0, 6 * S), 0.0);
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
