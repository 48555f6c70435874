//! What a decider needs to know about one Executor, and what it answers.

use tokio::time::Duration;
use zeroflow_spec::{Autoscale, Metric};

use crate::config::{AutoscalerConfig, TARGET_MIN, WINDOW_MAX, WINDOW_MIN};

/// `jcloud.autoscale` of one Executor, bounded by the server's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingSpec {
    pub min: u32,
    /// Never 0: an unbounded max becomes `u32::MAX`.
    pub max: u32,
    pub metric: Metric,
    /// Per replica, as the user wrote it: concurrent requests, requests per second, % CPU or MiB.
    pub target: f64,
    pub scale_down_delay: Duration,
    pub stable_window: Duration,
    /// Replicas a wake-up from zero starts with, and the least there are while there is any
    /// demand (Knative's `activation-scale`); 1 = no effect. Within [1, max].
    pub activation_scale: u32,
}

impl ScalingSpec {
    /// Applies the server's bounds: `max` 0 means the server's `max_scale` (0 = unbounded), then
    /// `max_replicas_cap`; cpu and memory never go below one replica (HPA cannot measure an
    /// Executor that is not running); a 0 target takes the server default, as Knative does; the
    /// windows are kept in the range Knative validates so that no window is empty.
    pub fn new(autoscale: &Autoscale, cfg: &AutoscalerConfig) -> Self {
        let mut max = match (autoscale.max, cfg.max_scale) {
            (0, 0) => u32::MAX,
            (0, server) => server,
            (m, _) => m,
        };
        if cfg.max_replicas_cap > 0 {
            max = max.min(cfg.max_replicas_cap);
        }
        let hpa = matches!(autoscale.metric, Metric::Cpu | Metric::Memory);
        let mut min = autoscale.min.min(max);
        if hpa {
            min = min.max(1);
        }
        let target = match (autoscale.target, autoscale.metric) {
            (0, Metric::Concurrency) => cfg.container_concurrency_target_default,
            (0, Metric::Rps) => cfg.requests_per_second_target_default,
            (t, _) => f64::from(t),
        };
        let stable_window = if autoscale.stable_window.is_zero() {
            cfg.stable_window
        } else {
            autoscale.stable_window
        };
        ScalingSpec {
            min,
            max,
            metric: autoscale.metric,
            target: target.max(TARGET_MIN),
            scale_down_delay: autoscale.scale_down_delay.min(WINDOW_MAX),
            stable_window: Duration::from_secs(stable_window.as_secs())
                .clamp(WINDOW_MIN, WINDOW_MAX),
            // The server's cap can lower max below what the spec validated against.
            activation_scale: autoscale.activation_scale.clamp(1, max),
        }
    }

    /// True for cpu and memory, which scale HPA-style.
    pub fn is_hpa(&self) -> bool {
        matches!(self.metric, Metric::Cpu | Metric::Memory)
    }

    /// What one replica should carry in the stable state: `max(0.01, target × utilization)`.
    pub fn target_value(&self, cfg: &AutoscalerConfig) -> f64 {
        (self.target * cfg.utilization()).max(TARGET_MIN)
    }

    /// The panic window: a percentage of the stable window, at least one bucket. Knative computes
    /// it in nanoseconds and then covers it with whole one-second buckets (6.1 s reads 7 s); the
    /// window does the same.
    pub fn panic_window(&self, cfg: &AutoscalerConfig) -> Duration {
        let nanos = self.stable_window.as_nanos() as f64 * cfg.panic_window_percentage / 100.0;
        Duration::from_nanos(nanos as u64).max(crate::window::BUCKET)
    }

    /// Replicas to start a new Executor with: the server's initial scale within [min, max].
    pub fn initial_scale(&self, cfg: &AutoscalerConfig) -> u32 {
        cfg.initial_scale.max(self.min).min(self.max)
    }
}

/// One decision for one Executor.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Replicas wanted now.
    pub desired: u32,
    /// The previous decision's `desired` (for the first decision: what the Executor had when it
    /// was added), so callers act only on changes.
    pub previous: u32,
    pub panic: bool,
    /// Spare capacity beyond the target burst capacity, in concurrent requests; negative means the
    /// replicas could not absorb a burst of that size without queueing. −1 when TBC is −1.
    pub excess_burst_capacity: i64,
    /// Whether requests must go through the activator (to buffer a burst or a cold start).
    pub activator_in_path: bool,
    /// The inputs and the steps that gave `desired`, for logs.
    pub reason: String,
    /// Set when there was nothing to decide on (Knative's invalid `ScaleResult`): `desired` is
    /// then the previous count, kept.
    pub no_decision: Option<NoDecision>,
}

impl Decision {
    pub fn changed(&self) -> bool {
        self.desired != self.previous
    }

    /// No decision: the scale stays at `previous`, moved into the spec's bounds only (they are
    /// settings, not load). The activator stays in the path, since nothing says the replicas
    /// could absorb a burst.
    pub fn none(previous: u32, spec: &ScalingSpec, panic: bool, why: NoDecision) -> Self {
        let desired = previous.max(spec.min).min(spec.max);
        Decision {
            desired,
            previous,
            panic,
            excess_burst_capacity: -1,
            activator_in_path: true,
            reason: format!("no decision, {desired} kept: {why}"),
            no_decision: Some(why),
        }
    }
}

/// Why a tick could not decide. No data is not zero load: deciding on it could scale a busy
/// Executor down.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoDecision {
    /// Nothing was recorded for the whole stable window (Knative's `ErrNoData`).
    #[error("no stats in the last {}s", .window.as_secs())]
    NoData { window: Duration },
    /// The latest second's stats are incomplete: a replica could not be read.
    #[error("stats incomplete: {replica} could not be read: {reason}")]
    ScrapeFailed { replica: String, reason: String },
    /// The runtime could not say how many replicas are ready.
    #[error("ready replicas unknown: {reason}")]
    ReadyUnknown { reason: String },
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build their Instants from one `now`
mod tests {
    use super::*;

    #[test]
    fn spec_is_bounded_by_the_server() {
        let cfg = AutoscalerConfig::default();
        let a = Autoscale {
            min: 7,
            max: 9,
            ..Autoscale::default()
        };
        let s = ScalingSpec::new(&a, &cfg);
        assert_eq!(
            (s.min, s.max),
            (5, 5),
            "JCloud's cap of 5 wins, and min follows"
        );
        let cpu = Autoscale {
            min: 0,
            metric: Metric::Cpu,
            ..Autoscale::default()
        };
        assert_eq!(
            ScalingSpec::new(&cpu, &cfg).min,
            1,
            "HPA min is forced to 1"
        );
        let unbounded = AutoscalerConfig {
            max_replicas_cap: 0,
            ..cfg.clone()
        };
        let a0 = Autoscale {
            max: 0,
            ..Autoscale::default()
        };
        assert_eq!(ScalingSpec::new(&a0, &unbounded).max, u32::MAX);
        let s = ScalingSpec::new(&Autoscale::default(), &cfg);
        assert_eq!(s.target_value(&cfg), 70.0);
        assert_eq!(s.panic_window(&cfg), Duration::from_secs(6));
        assert_eq!(s.initial_scale(&cfg), 1);
        let rps = Autoscale {
            metric: Metric::Rps,
            target: 0,
            ..Autoscale::default()
        };
        assert_eq!(ScalingSpec::new(&rps, &cfg).target_value(&cfg), 140.0);
    }
}
