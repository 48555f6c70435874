//! The stat message every reporter (shim, activator) sends to the autoscaler, defined once here,
//! and the meter that produces it. Time is passed in, so the meter never reads a clock.

use serde::{Deserialize, Serialize};
use tokio::time::{Duration, Instant};

/// One report covering the period since the previous one (Knative's `Stat`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Who reports: a replica id, or `activator`.
    pub pod: String,
    /// Time-weighted average of requests in flight over the period.
    pub average_concurrency: f64,
    /// Requests that arrived during the period, divided by its length in seconds.
    pub requests_per_second: f64,
    /// The share of the two above that came through the activator, so the autoscaler does not
    /// count them twice.
    pub proxied_concurrency: f64,
    pub proxied_requests_per_second: f64,
    /// Requests in flight at the moment of the report.
    pub in_flight: u64,
    /// Seconds the reporter has been up.
    pub uptime_seconds: f64,
    /// Length of the period in seconds.
    pub period_seconds: f64,
    /// CPU used by the Executor's processes over the period, in % of one core (shims only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Resident memory of the Executor's processes at the report, in MiB (shims only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<f64>,
}

/// Integrates in-flight requests over time: two 500 ms requests in a 1 s period give 1.0.
#[derive(Debug, Clone)]
pub struct ConcurrencyMeter {
    started: Instant,
    period_start: Instant,
    last_change: Instant,
    in_flight: u64,
    proxied_in_flight: u64,
    /// Request-seconds accumulated since `period_start`.
    area: f64,
    proxied_area: f64,
    arrivals: u64,
    proxied_arrivals: u64,
    /// All arrivals since start, for Prometheus counters.
    total_requests: u64,
}

impl ConcurrencyMeter {
    pub fn new(now: Instant) -> Self {
        ConcurrencyMeter {
            started: now,
            period_start: now,
            last_change: now,
            in_flight: 0,
            proxied_in_flight: 0,
            area: 0.0,
            proxied_area: 0.0,
            arrivals: 0,
            proxied_arrivals: 0,
            total_requests: 0,
        }
    }

    fn advance(&mut self, now: Instant) {
        let dt = now
            .saturating_duration_since(self.last_change)
            .as_secs_f64();
        self.area += self.in_flight as f64 * dt;
        self.proxied_area += self.proxied_in_flight as f64 * dt;
        self.last_change = now.max(self.last_change);
    }

    pub fn start(&mut self, now: Instant, proxied: bool) {
        self.advance(now);
        self.in_flight += 1;
        self.arrivals += 1;
        self.total_requests += 1;
        if proxied {
            self.proxied_in_flight += 1;
            self.proxied_arrivals += 1;
        }
    }

    pub fn finish(&mut self, now: Instant, proxied: bool) {
        self.advance(now);
        self.in_flight = self.in_flight.saturating_sub(1);
        if proxied {
            self.proxied_in_flight = self.proxied_in_flight.saturating_sub(1);
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    pub fn total_requests(&self) -> u64 {
        self.total_requests
    }

    /// Closes the current period and returns its stat; the next period starts at `now`.
    pub fn report(&mut self, now: Instant, pod: &str) -> Stat {
        self.advance(now);
        let period = now.saturating_duration_since(self.period_start);
        let secs = period.as_secs_f64();
        let (avg, pavg, rps, prps) = if secs > 0.0 {
            (
                self.area / secs,
                self.proxied_area / secs,
                self.arrivals as f64 / secs,
                self.proxied_arrivals as f64 / secs,
            )
        } else {
            (
                self.in_flight as f64,
                self.proxied_in_flight as f64,
                0.0,
                0.0,
            )
        };
        let stat = Stat {
            pod: pod.to_string(),
            average_concurrency: avg,
            requests_per_second: rps,
            proxied_concurrency: pavg,
            proxied_requests_per_second: prps,
            in_flight: self.in_flight,
            uptime_seconds: now.saturating_duration_since(self.started).as_secs_f64(),
            period_seconds: secs,
            cpu_percent: None,
            memory_mib: None,
        };
        self.period_start = now;
        self.area = 0.0;
        self.proxied_area = 0.0;
        self.arrivals = 0;
        self.proxied_arrivals = 0;
        stat
    }

    /// The uptime as a Duration, for logs.
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_half_second_requests_in_one_second_average_one() {
        let t0 = Instant::now();
        let mut m = ConcurrencyMeter::new(t0);
        m.start(t0, false);
        m.start(t0, true);
        m.finish(t0 + Duration::from_millis(500), false);
        m.finish(t0 + Duration::from_millis(500), true);
        let s = m.report(t0 + Duration::from_secs(1), "r0");
        assert!((s.average_concurrency - 1.0).abs() < 1e-9, "{s:?}");
        assert!((s.proxied_concurrency - 0.5).abs() < 1e-9, "{s:?}");
        assert!((s.requests_per_second - 2.0).abs() < 1e-9);
        assert!((s.proxied_requests_per_second - 1.0).abs() < 1e-9);
        assert_eq!(s.in_flight, 0);
    }

    #[test]
    fn long_request_spans_periods() {
        let t0 = Instant::now();
        let mut m = ConcurrencyMeter::new(t0);
        m.start(t0, false);
        let s1 = m.report(t0 + Duration::from_secs(1), "r");
        let s2 = m.report(t0 + Duration::from_secs(2), "r");
        assert!((s1.average_concurrency - 1.0).abs() < 1e-9);
        assert!((s2.average_concurrency - 1.0).abs() < 1e-9);
        // Arrivals count in the period they arrived in only.
        assert_eq!(s1.requests_per_second, 1.0);
        assert_eq!(s2.requests_per_second, 0.0);
        assert_eq!(m.total_requests(), 1);
    }
}
