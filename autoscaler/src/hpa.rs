//! The HPA-style decision for `cpu` and `memory`: `ceil(total usage / target)`, scaled up at
//! once and down only to the highest recommendation of the stable window (Kubernetes' scale-down
//! stabilization). Never below one replica: usage cannot be measured on zero.

use std::collections::VecDeque;

use tokio::time::Instant;
use zeroflow_spec::Metric;

use crate::config::{AutoscalerConfig, TARGET_MIN};
use crate::scaling::{Decision, ScalingSpec};

/// What the decider observed for one Executor at one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct HpaInputs {
    /// Total usage across replicas: % CPU (100 = one core) or MiB, per the spec's metric.
    pub usage: f64,
    pub ready: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HpaState {
    /// Recommendations of the last stable window, newest last.
    history: VecDeque<(Instant, u32)>,
    last_desired: u32,
}

impl HpaState {
    /// Seeds the history with the current replicas, so that a restarted autoscaler holds them
    /// for a stable window instead of scaling down on no data (as the KPA starts in panic).
    pub fn new(now: Instant, current: u32) -> Self {
        HpaState {
            history: VecDeque::from([(now, current)]),
            last_desired: current,
        }
    }

    pub fn last_desired(&self) -> u32 {
        self.last_desired
    }

    /// A tick without a decision kept `n` (the last count, within the spec's bounds).
    pub(crate) fn keep(&mut self, n: u32) {
        self.last_desired = n;
    }
}

pub fn decide(
    input: &HpaInputs,
    spec: &ScalingSpec,
    cfg: &AutoscalerConfig,
    state: &HpaState,
    now: Instant,
) -> (Decision, HpaState) {
    let mut st = state.clone();
    let floor = spec.min.max(1);
    let raw = (input.usage.max(0.0) / spec.target.max(TARGET_MIN)).ceil() as u32;
    let recommendation = raw.max(floor).min(spec.max);
    st.history
        .retain(|(t, _)| now.saturating_duration_since(*t) < spec.stable_window);
    st.history.push_back((now, recommendation));
    let held = st
        .history
        .iter()
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(recommendation);
    let desired = held.max(floor).min(spec.max);
    let unit = match spec.metric {
        Metric::Memory => "MiB",
        _ => "% cpu",
    };
    let reason = format!(
        "usage {:.1}{unit} / target {:.1} → {raw}; highest of the last {}s: {held}; bounds [{floor}, {}]; ready {}; desired {desired}",
        input.usage,
        spec.target,
        spec.stable_window.as_secs(),
        spec.max,
        input.ready,
    );
    let decision = Decision {
        desired,
        previous: state.last_desired,
        panic: false,
        // Burst capacity is a KPA notion; an HPA Executor never goes to zero, so the activator
        // is needed only while nothing is ready or when the operator keeps it always in the path.
        excess_burst_capacity: if cfg.target_burst_capacity < 0.0 {
            -1
        } else {
            0
        },
        activator_in_path: cfg.target_burst_capacity < 0.0 || input.ready == 0,
        reason,
        no_decision: None,
    };
    st.last_desired = desired;
    (decision, st)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build their Instants from one `now`
mod tests {
    use super::*;
    use tokio::time::Duration;
    use zeroflow_spec::Autoscale;

    const S: Duration = Duration::from_secs(1);

    fn spec(metric: Metric, min: u32, max: u32, target: u32) -> ScalingSpec {
        let a = Autoscale {
            min,
            max,
            metric,
            target,
            ..Autoscale::default()
        };
        ScalingSpec::new(&a, &AutoscalerConfig::default())
    }

    /// Runs (seconds, usage, expected) steps through one decider.
    fn run(spec: &ScalingSpec, start: u32, steps: &[(u32, f64, u32)]) {
        let cfg = AutoscalerConfig::default();
        let t0 = Instant::now();
        let mut st = HpaState::new(t0, start);
        for &(at, usage, want) in steps {
            let input = HpaInputs {
                usage,
                ready: st.last_desired(),
            };
            let (d, next) = decide(&input, spec, &cfg, &st, t0 + at * S);
            assert_eq!(d.desired, want, "at {at}s: {}", d.reason);
            assert!(!d.panic);
            st = next;
        }
    }

    #[test]
    fn cpu_scales_up_at_once_and_down_after_the_window() {
        // Target 60 % per replica; 150 % in total is 3 replicas.
        let s = spec(Metric::Cpu, 0, 5, 60);
        assert_eq!(s.min, 1, "cpu forces min to 1");
        run(
            &s,
            1,
            &[
                (0, 10.0, 1),
                (2, 150.0, 3),
                (4, 400.0, 5), // capped at max
                (6, 30.0, 5),
                (63, 30.0, 5),
                (64, 30.0, 1), // the 5 recommended at 4 s leaves the 60 s window at 64 s
            ],
        );
    }

    #[test]
    fn memory_in_mib_and_min_forced_to_one() {
        let s = spec(Metric::Memory, 0, 4, 512);
        assert_eq!(s.min, 1);
        run(
            &s,
            0,
            &[
                (0, 0.0, 1), // never zero
                (2, 1100.0, 3),
                (4, 100.0, 3),
                (70, 100.0, 1),
            ],
        );
        let s = spec(Metric::Memory, 2, 4, 512);
        run(&s, 0, &[(0, 0.0, 2)]);
    }

    #[test]
    fn a_restart_holds_the_current_replicas_for_a_window() {
        let s = spec(Metric::Cpu, 1, 5, 80);
        run(&s, 4, &[(0, 0.0, 4), (30, 0.0, 4), (60, 0.0, 1)]);
    }
}
