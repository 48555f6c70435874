//! The KPA decision for `concurrency` and `rps`: a pure function of the observed averages, the
//! Executor's spec, the server config, the previous state and `now` (Knative's
//! `pkg/autoscaler/scaling/autoscaler.go`, plus the scale-to-zero gate of its KPA reconciler).

use std::collections::VecDeque;
use std::fmt::Write as _;

use tokio::time::{Duration, Instant};

use crate::config::AutoscalerConfig;
use crate::scaling::{Decision, ScalingSpec};

/// What the decider observed for one Executor at one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// Total concurrency (or rps) across replicas and the activator, averaged over the stable window.
    pub stable_avg: f64,
    /// The same over the panic window.
    pub panic_avg: f64,
    /// Replicas ready now.
    pub ready: u32,
    /// Whether requests for this Executor currently go through the activator; zero is applied
    /// only then, so that the next request has somewhere to wait.
    pub activator_in_path: bool,
    /// The last time any request was seen (a stat with traffic, or a poke); `None` = never.
    pub last_traffic: Option<Instant>,
    /// A request is waiting at the activator for this cold Executor right now.
    pub poked: bool,
}

/// What a decider carries from one tick to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct DeciderState {
    /// When the decider started: the quiet period of an Executor that never had traffic counts
    /// from here.
    started: Instant,
    /// The last tick that was over the panic threshold, while in panic mode.
    panic_since: Option<Instant>,
    /// The highest desired count of the current panic.
    max_panic: u32,
    /// Held counts of the last `scale_down_delay`, newest last, each with the index of its tick
    /// interval since `started` (Knative's `max.TimeWindow`, which buckets by tick).
    delay_history: VecDeque<(u64, u32)>,
    last_desired: u32,
    /// The first tick of the current run of ticks that wanted zero.
    zero_wanted_since: Option<Instant>,
}

impl DeciderState {
    /// A decider for an Executor that has `current` replicas (running or being started). With more
    /// than one it starts in panic mode holding them, as Knative does: a restarted autoscaler has
    /// no history yet and must not scale down by accident.
    pub fn new(now: Instant, current: u32) -> Self {
        let restarting = current > 1;
        DeciderState {
            started: now,
            panic_since: restarting.then_some(now),
            // Knative seeds the hold with the current count whether or not it panics.
            max_panic: current,
            delay_history: VecDeque::new(),
            last_desired: current,
            zero_wanted_since: None,
        }
    }

    pub fn last_desired(&self) -> u32 {
        self.last_desired
    }

    /// A tick without a decision kept `n` (the last count, within the spec's bounds).
    pub(crate) fn keep(&mut self, n: u32) {
        self.last_desired = n;
    }

    pub fn in_panic(&self) -> bool {
        self.panic_since.is_some()
    }

    /// While in panic mode: the count the panic holds (the highest panic candidate so far);
    /// decisions do not go below it, within the spec's max.
    pub fn panic_hold(&self) -> Option<u32> {
        self.in_panic().then_some(self.max_panic)
    }

    /// At zero: the next request needs a poke to get a replica.
    pub fn is_cold(&self) -> bool {
        self.last_desired == 0
    }
}

/// What Knative's `Scale()` gives for one tick, before Zeroflow applies the spec's bounds and the
/// scale-to-zero gate (which Knative applies in its KPA reconciler).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scaled {
    desired: u32,
    panicking: bool,
    dspc: f64,
    dppc: f64,
    max_up: f64,
    max_down: f64,
}

/// Knative's `Scale()`, step for step: rate-limited stable and panic counts, the activation
/// scale, panic mode and its hold, then the scale-down-delay window over the held count.
fn scale(
    input: &Inputs,
    spec: &ScalingSpec,
    cfg: &AutoscalerConfig,
    st: &mut DeciderState,
    now: Instant,
    notes: &mut String,
) -> Scaled {
    let target = spec.target_value(cfg);
    let ready = f64::from(input.ready.max(1));

    // Rate limits: at least N→N+1 up and N→N−1 down per tick even with conservative rates.
    let max_up = (cfg.max_scale_up_rate * ready).ceil();
    let max_down = (ready / cfg.max_scale_down_rate).floor();
    let dspc = (input.stable_avg.max(0.0) / target).ceil();
    let dppc = (input.panic_avg.max(0.0) / target).ceil();
    // `as u32` saturates, so an absurd load cannot wrap around.
    let mut stable_pods = dspc.max(max_down).min(max_up) as u32;
    let mut panic_pods = dppc.max(max_down).min(max_up) as u32;

    // Any demand at all gets at least the activation scale; none lets it go (to zero too).
    let activation = spec.activation_scale;
    if activation > 1 {
        if dspc > 0.0 && stable_pods < activation {
            stable_pods = activation;
            let _ = write!(notes, "; activation scale {activation}");
        }
        if dppc > 0.0 && panic_pods < activation {
            panic_pods = activation;
        }
    }

    let over = dppc / ready >= cfg.panic_threshold_percentage / 100.0;
    if over {
        st.panic_since = Some(now);
    } else if let Some(since) = st.panic_since
        && now > since + spec.stable_window
    {
        // By now the surge has made its way into the stable average.
        st.panic_since = None;
        st.max_panic = 0;
    }
    let panicking = st.panic_since.is_some();

    let mut desired = stable_pods;
    if panicking {
        // The stable window can be the larger in some edge cases; provision for both. The hold
        // rises only from this candidate, and the delay window below records the held count.
        desired = stable_pods.max(panic_pods);
        if desired < st.max_panic {
            let _ = write!(notes, "; panic keeps {}", st.max_panic);
        }
        st.max_panic = st.max_panic.max(desired);
        desired = st.max_panic;
    }

    if !spec.scale_down_delay.is_zero() {
        let delay = spec.scale_down_delay;
        // A count stays for the delay rounded up to whole ticks; a poke between ticks shares
        // its tick's bucket, as in Knative.
        let tick = cfg.tick_interval.as_nanos().max(1);
        let buckets = delay.as_nanos().div_ceil(tick);
        let index = (now.saturating_duration_since(st.started).as_nanos() / tick) as u64;
        st.delay_history
            .retain(|(i, _)| u128::from(index.saturating_sub(*i)) < buckets);
        st.delay_history.push_back((index, desired));
        let held = st
            .delay_history
            .iter()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or(desired);
        if held > desired {
            let _ = write!(
                notes,
                "; held at {held} by scale_down_delay {}",
                secs(delay)
            );
        }
        desired = held;
    }

    Scaled {
        desired,
        panicking,
        dspc,
        dppc,
        max_up,
        max_down,
    }
}

/// One KPA decision: Knative's `Scale()` ([`scale`]), then what Knative's KPA reconciler adds:
/// the spec's bounds and the staged scale to zero. See autoscaling.md for the reference
/// pseudo-code.
pub fn decide(
    input: &Inputs,
    spec: &ScalingSpec,
    cfg: &AutoscalerConfig,
    state: &DeciderState,
    now: Instant,
) -> (Decision, DeciderState) {
    let mut st = state.clone();
    let mut notes = String::new();
    let Scaled {
        mut desired,
        panicking,
        dspc,
        dppc,
        max_up,
        max_down,
    } = scale(input, spec, cfg, &mut st, now, &mut notes);

    // A poke arrives before any stat has filled a window, and a waiting request needs replicas:
    // a wake-up from zero starts with the activation scale. (With stats, `scale` already gives
    // at least that to any demand.)
    let demand = input.poked || input.stable_avg > 0.0 || input.panic_avg > 0.0;
    let wake = spec.activation_scale.max(1);
    if demand && desired < wake && (desired == 0 || state.last_desired == 0) {
        desired = wake;
        let _ = write!(notes, "; activation to {desired}");
    }

    // `max` last, so that a spec with min > max cannot panic here: the upper bound wins.
    let bounded = desired.max(spec.min).min(spec.max);
    if bounded != desired {
        let _ = write!(notes, "; bounds [{}, {}]", spec.min, spec.max);
    }
    desired = bounded;

    // Scale to zero happens in stages: a whole stable window without traffic (which also empties
    // the stable average), the scale-down delay, then a grace period during which the activator
    // is put in the path, and only then zero.
    let mut want_activator = false;
    if desired == 0 && st.last_desired > 0 {
        let wanted_since = *st.zero_wanted_since.get_or_insert(now);
        let quiet = now.saturating_duration_since(input.last_traffic.unwrap_or(st.started));
        let grace = cfg.zero_grace();
        let needed = spec.stable_window + grace;
        desired = 1;
        if !cfg.enable_scale_to_zero {
            notes.push_str("; held at 1: scale to zero is disabled");
        } else if quiet < needed {
            want_activator = true;
            let _ = write!(
                notes,
                "; held at 1: quiet {} of {} before zero",
                secs(quiet),
                secs(needed)
            );
        } else if now.saturating_duration_since(wanted_since) < grace {
            want_activator = true;
            let _ = write!(
                notes,
                "; held at 1: grace {} of {}",
                secs(now.saturating_duration_since(wanted_since)),
                secs(grace)
            );
        } else if !input.activator_in_path {
            want_activator = true;
            notes.push_str("; held at 1 until the activator is in the path");
        } else {
            desired = 0;
            let _ = write!(notes, "; scale to zero after {} quiet", secs(quiet));
        }
    } else if desired > 0 {
        st.zero_wanted_since = None;
    }

    // Knative's excess burst capacity: spare capacity after absorbing a burst of TBC on top of
    // the current (panic-window) load, measured on the replicas that are actually ready.
    let tbc = cfg.target_burst_capacity;
    let excess_burst_capacity = if tbc == 0.0 {
        0
    } else if tbc < 0.0 {
        -1
    } else {
        (f64::from(input.ready) * spec.target - tbc - input.panic_avg).floor() as i64
    };
    let activator_in_path = tbc < 0.0
        || desired == 0
        || input.ready == 0
        || excess_burst_capacity < 0
        || want_activator;

    let reason = format!(
        "stable avg {:.1} / target {:.1} → {dspc}; panic avg {:.1} → {dppc}{}; ready {}; \
         rate limits [{max_down}, {max_up}]{notes}; desired {desired}",
        input.stable_avg,
        spec.target_value(cfg),
        input.panic_avg,
        if panicking { " (panic)" } else { "" },
        input.ready,
    );
    let decision = Decision {
        desired,
        previous: state.last_desired,
        panic: panicking,
        excess_burst_capacity,
        activator_in_path,
        reason,
        no_decision: None,
    };
    st.last_desired = desired;
    (decision, st)
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64().round())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build their Instants from one `now`
mod tests {
    use super::*;
    use zeroflow_spec::{Autoscale, Metric};

    const S: Duration = Duration::from_secs(1);

    /// One tick of a scenario: the time since the scenario began, what was observed, and what
    /// must come out.
    #[derive(Debug, Clone, Copy)]
    struct Step {
        at: u32,
        stable: f64,
        panic: f64,
        ready: u32,
        want: u32,
        want_panic: bool,
    }

    const fn step(
        at: u32,
        stable: f64,
        panic: f64,
        ready: u32,
        want: u32,
        want_panic: bool,
    ) -> Step {
        Step {
            at,
            stable,
            panic,
            ready,
            want,
            want_panic,
        }
    }

    struct Scenario {
        name: &'static str,
        autoscale: Autoscale,
        /// Replicas when the decider starts.
        start: u32,
        /// Seconds since the start of the last request before the scenario, if any.
        last_traffic: Option<u32>,
        steps: Vec<Step>,
    }

    fn autoscale(min: u32, max: u32, delay: u64) -> Autoscale {
        Autoscale {
            min,
            max,
            metric: Metric::Concurrency,
            target: 100,
            scale_down_delay: Duration::from_secs(delay),
            stable_window: Duration::from_secs(60),
            ..Autoscale::default()
        }
    }

    fn uncapped() -> AutoscalerConfig {
        AutoscalerConfig {
            max_replicas_cap: 0,
            ..AutoscalerConfig::default()
        }
    }

    fn run(s: &Scenario) {
        let cfg = uncapped();
        let spec = ScalingSpec::new(&s.autoscale, &cfg);
        let t0 = Instant::now();
        let mut state = DeciderState::new(t0, s.start);
        let mut last_traffic = s.last_traffic.map(|l| t0 + l * S);
        for st in &s.steps {
            let now = t0 + st.at * S;
            if st.stable > 0.0 || st.panic > 0.0 {
                last_traffic = Some(now);
            }
            let input = Inputs {
                stable_avg: st.stable,
                panic_avg: st.panic,
                ready: st.ready,
                activator_in_path: true,
                last_traffic,
                poked: false,
            };
            let (d, next) = decide(&input, &spec, &cfg, &state, now);
            assert_eq!(
                (d.desired, d.panic),
                (st.want, st.want_panic),
                "{}: at {}s: {}",
                s.name,
                st.at,
                d.reason
            );
            assert!(!d.reason.is_empty());
            state = next;
        }
    }

    #[test]
    fn knative_scenarios() {
        let scenarios = [
            Scenario {
                name: "steady load: 140 concurrent at 70 per replica is 2 replicas",
                autoscale: autoscale(1, 10, 0),
                start: 1,
                last_traffic: None,
                steps: vec![
                    step(0, 140.0, 140.0, 2, 2, false),
                    step(2, 140.0, 140.0, 2, 2, false),
                    step(4, 139.0, 141.0, 2, 2, false),
                    step(60, 140.0, 140.0, 2, 2, false),
                ],
            },
            Scenario {
                name: "step up below the panic threshold follows the stable average",
                autoscale: autoscale(1, 10, 0),
                start: 1,
                last_traffic: None,
                steps: vec![
                    step(0, 50.0, 50.0, 1, 1, false),
                    // The panic window sees 200 (3 replicas' worth) but 3 / 2 ready is under 200 %.
                    step(2, 80.0, 200.0, 2, 2, false),
                    step(4, 150.0, 200.0, 2, 3, false),
                    step(6, 200.0, 200.0, 3, 3, false),
                ],
            },
            Scenario {
                name: "panic entry and exit: starts over 200 %, holds the max, ends a stable window after the last over tick",
                autoscale: autoscale(1, 100, 0),
                start: 1,
                last_traffic: None,
                steps: vec![
                    // dppc 8 over 1 ready: panic, desired max(stable 1, panic 8).
                    step(0, 10.0, 500.0, 1, 8, true),
                    // Still over (20 / 8 ready >= 2): the panic is extended from here.
                    step(2, 60.0, 1400.0, 8, 20, true),
                    // Load falls: panic holds 20 (never lower during a panic).
                    step(4, 100.0, 100.0, 20, 20, true),
                    step(60, 100.0, 100.0, 20, 20, true),
                    // 60 s after the last over tick (2 s) is 62 s: not yet over at 62 exactly.
                    step(62, 100.0, 100.0, 20, 20, true),
                    // Panic ends; stable 2 but the rate limit allows only 20 → 10.
                    step(64, 100.0, 100.0, 20, 10, false),
                    step(66, 100.0, 100.0, 10, 5, false),
                    step(68, 100.0, 100.0, 5, 2, false),
                    step(70, 100.0, 100.0, 2, 2, false),
                ],
            },
            Scenario {
                name: "scale-down rate limit halves per tick",
                autoscale: autoscale(1, 100, 0),
                start: 1,
                last_traffic: Some(0),
                steps: vec![
                    step(0, 1.0, 1.0, 16, 8, false),
                    step(2, 1.0, 1.0, 8, 4, false),
                    step(4, 1.0, 1.0, 4, 2, false),
                    step(6, 1.0, 1.0, 2, 1, false),
                    step(8, 1.0, 1.0, 1, 1, false),
                ],
            },
            Scenario {
                name: "scale_down_delay holds the max of the last 30 s",
                autoscale: autoscale(1, 100, 30),
                start: 1,
                last_traffic: None,
                steps: vec![
                    step(0, 350.0, 350.0, 5, 5, false),
                    // The load drops to one replica's worth; the rate limit alone would allow 2.
                    step(10, 70.0, 70.0, 5, 5, false),
                    step(28, 70.0, 70.0, 5, 5, false),
                    // The 5 recorded at 0 s leaves the 30 s window at 30 s.
                    step(30, 70.0, 70.0, 5, 2, false),
                    // The 2s recorded at 10..30 s hold until they leave in turn.
                    step(32, 70.0, 70.0, 2, 2, false),
                    step(58, 70.0, 70.0, 2, 2, false),
                    step(60, 70.0, 70.0, 2, 1, false),
                ],
            },
            Scenario {
                name: "scale to zero after the stable window and the grace period, not before",
                autoscale: autoscale(0, 10, 0),
                start: 1,
                last_traffic: Some(0),
                steps: vec![
                    step(2, 0.0, 0.0, 1, 1, false),
                    step(60, 0.0, 0.0, 1, 1, false),
                    step(88, 0.0, 0.0, 1, 1, false),
                    step(90, 0.0, 0.0, 1, 0, false),
                    step(92, 0.0, 0.0, 0, 0, false),
                ],
            },
            Scenario {
                name: "min and max clamps",
                autoscale: autoscale(2, 3, 0),
                start: 1,
                last_traffic: None,
                steps: vec![
                    step(0, 0.0, 0.0, 1, 2, false),
                    step(2, 700.0, 700.0, 2, 3, true),
                    step(4, 7000.0, 7000.0, 3, 3, true),
                ],
            },
            Scenario {
                name: "a decider starting with 3 ready replicas is in panic and holds them",
                autoscale: autoscale(0, 10, 0),
                start: 3,
                last_traffic: None,
                steps: vec![
                    step(0, 0.0, 0.0, 3, 3, true),
                    step(60, 10.0, 10.0, 3, 3, true),
                    step(62, 10.0, 10.0, 3, 1, false),
                ],
            },
            Scenario {
                name: "scale up is limited to 1000 × ready",
                autoscale: autoscale(0, 0, 0),
                start: 1,
                last_traffic: None,
                steps: vec![
                    step(0, 1e9, 1e9, 1, 1000, true),
                    step(2, 1e9, 1e9, 1000, 1_000_000, true),
                ],
            },
        ];
        for s in &scenarios {
            run(s);
        }
    }

    #[test]
    fn activation_with_a_poke_gives_one_replica_at_once() {
        let cfg = AutoscalerConfig::default();
        let spec = ScalingSpec::new(&autoscale(0, 2, 30), &cfg);
        let t0 = Instant::now();
        let state = DeciderState::new(t0, 0);
        assert!(state.is_cold());
        let now = t0 + 600 * S;
        let mut input = Inputs {
            stable_avg: 0.0,
            panic_avg: 0.0,
            ready: 0,
            activator_in_path: true,
            last_traffic: None,
            poked: false,
        };
        let (d, _) = decide(&input, &spec, &cfg, &state, now);
        assert_eq!(d.desired, 0, "no demand, stays at zero: {}", d.reason);
        assert!(d.activator_in_path);
        input.poked = true;
        input.last_traffic = Some(now);
        let (d, next) = decide(&input, &spec, &cfg, &state, now);
        assert_eq!((d.desired, d.previous), (1, 0), "{}", d.reason);
        assert!(d.reason.contains("activation"), "{}", d.reason);
        assert!(
            d.activator_in_path,
            "no replica is ready: requests must wait in the activator"
        );
        // The next tick without any stat yet holds the replica (quiet since the poke).
        input.poked = false;
        let (d, _) = decide(&input, &spec, &cfg, &next, now + 2 * S);
        assert_eq!(d.desired, 1, "{}", d.reason);
    }

    #[test]
    fn zero_waits_for_the_activator_and_respects_the_feature_flag() {
        let cfg = AutoscalerConfig::default();
        let spec = ScalingSpec::new(&autoscale(0, 2, 0), &cfg);
        let t0 = Instant::now();
        let state = DeciderState::new(t0, 1);
        let input = Inputs {
            stable_avg: 0.0,
            panic_avg: 0.0,
            ready: 1,
            activator_in_path: false,
            last_traffic: Some(t0),
            poked: false,
        };
        // The zero run starts at 60 s; the grace period runs from there.
        let (d, state) = decide(&input, &spec, &cfg, &state, t0 + 60 * S);
        assert_eq!(d.desired, 1);
        assert!(
            d.activator_in_path,
            "wanting zero asks for the activator first"
        );
        let (d, state2) = decide(&input, &spec, &cfg, &state, t0 + 90 * S);
        assert_eq!(d.desired, 1, "{}", d.reason);
        assert!(
            d.reason.contains("until the activator is in the path"),
            "{}",
            d.reason
        );
        let in_path = Inputs {
            activator_in_path: true,
            ..input.clone()
        };
        let (d, _) = decide(&in_path, &spec, &cfg, &state2, t0 + 92 * S);
        assert_eq!(d.desired, 0, "{}", d.reason);

        let off = AutoscalerConfig {
            enable_scale_to_zero: false,
            ..cfg.clone()
        };
        let (d, _) = decide(&in_path, &spec, &off, &state2, t0 + 600 * S);
        assert_eq!(d.desired, 1, "{}", d.reason);
    }

    #[test]
    fn excess_burst_capacity_and_the_activator() {
        let spec = ScalingSpec::new(&autoscale(1, 10, 0), &AutoscalerConfig::default());
        let t0 = Instant::now();
        let state = DeciderState::new(t0, 3);
        let input = Inputs {
            stable_avg: 50.0,
            panic_avg: 50.0,
            ready: 3,
            activator_in_path: true,
            last_traffic: Some(t0),
            poked: false,
        };
        let with_tbc = |tbc: f64| {
            let cfg = AutoscalerConfig {
                target_burst_capacity: tbc,
                ..AutoscalerConfig::default()
            };
            decide(&input, &spec, &cfg, &state, t0).0
        };
        // floor(3 × 100 − 211 − 50) = 39: enough spare capacity, the activator may step out.
        let d = with_tbc(211.0);
        assert_eq!((d.excess_burst_capacity, d.activator_in_path), (39, false));
        let d = with_tbc(260.0);
        assert_eq!((d.excess_burst_capacity, d.activator_in_path), (-10, true));
        let d = with_tbc(0.0);
        assert_eq!((d.excess_burst_capacity, d.activator_in_path), (0, false));
        let d = with_tbc(-1.0);
        assert_eq!((d.excess_burst_capacity, d.activator_in_path), (-1, true));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Arbitrary inputs, not only ones a real window produces.
        #[test]
        fn decide_keeps_its_invariants(
            ticks in proptest::collection::vec(
                (0.0..1500.0f64, 0.0..3000.0f64, 0u32..30, 1u32..20, proptest::bool::weighted(0.05), proptest::bool::weighted(0.4)),
                1..200,
            ),
            min in 0u32..3,
            extra in 0u32..6,
            delay in 0u64..40,
            start in 0u32..6,
            activator in proptest::bool::ANY,
            activation in 1u32..5,
        ) {
            let cfg = AutoscalerConfig::default();
            let max = min + extra.max(1);
            let a = Autoscale { activation_scale: activation.min(max), ..autoscale(min, max, delay) };
            let spec = ScalingSpec::new(&a, &cfg);
            let t0 = Instant::now();
            let mut state = DeciderState::new(t0, start);
            let mut now = t0;
            let mut last_traffic = None;
            let mut prev: Option<Decision> = None;
            for (stable, panic, ready, dt, poked, idle) in ticks {
                now += dt * S;
                // Idle ticks see no load at all, so that quiet periods occur.
                let (stable, panic) = if idle { (0.0, 0.0) } else { (stable, panic) };
                if stable > 0.0 || panic > 0.0 || poked {
                    last_traffic = Some(now);
                }
                let input = Inputs { stable_avg: stable, panic_avg: panic, ready, activator_in_path: activator, last_traffic, poked };
                let (d, next) = decide(&input, &spec, &cfg, &state, now);
                proptest::prop_assert!(d.desired >= spec.min && d.desired <= spec.max, "{}", d.reason);
                if poked || stable > 0.0 {
                    proptest::prop_assert!(d.desired >= 1, "demand gets a replica: {}", d.reason);
                }
                // What Knative guarantees during a panic: the hold never falls, and the decision
                // never falls below it (within max). The decision itself may fall: a higher count
                // from before the panic can leave the scale-down-delay window.
                if d.panic {
                    let hold = next.panic_hold().expect("panicking has a hold");
                    proptest::prop_assert!(d.desired >= hold.min(spec.max), "below the panic hold {hold}: {}", d.reason);
                    if let Some(before) = state.panic_hold()
                        && prev.as_ref().is_some_and(|p| p.panic)
                    {
                        proptest::prop_assert!(hold >= before, "the hold fell from {before} to {hold}: {}", d.reason);
                    }
                }
                if poked && d.previous == 0 {
                    proptest::prop_assert!(d.desired >= spec.activation_scale.min(spec.max), "a wake-up starts with the activation scale: {}", d.reason);
                }
                if d.desired == 0 && d.previous > 0 {
                    let quiet = now - last_traffic.unwrap_or(t0);
                    proptest::prop_assert!(quiet >= spec.stable_window + cfg.zero_grace(), "{}", d.reason);
                    proptest::prop_assert!(activator, "zero only with the activator in the path");
                }
                if d.desired == 0 {
                    proptest::prop_assert!(d.activator_in_path);
                }
                state = next;
                prev = Some(d);
            }
        }
    }

    #[test]
    fn rps_uses_utilization_too() {
        let cfg = AutoscalerConfig::default();
        let a = Autoscale {
            metric: Metric::Rps,
            target: 200,
            min: 1,
            max: 5,
            scale_down_delay: Duration::ZERO,
            ..Autoscale::default()
        };
        let spec = ScalingSpec::new(&a, &cfg);
        let t0 = Instant::now();
        let input = Inputs {
            stable_avg: 281.0,
            panic_avg: 281.0,
            ready: 2,
            activator_in_path: true,
            last_traffic: Some(t0),
            poked: false,
        };
        let (d, _) = decide(&input, &spec, &cfg, &DeciderState::new(t0, 2), t0 + 120 * S);
        // 281 / 140 → 3.
        assert_eq!(d.desired, 3, "{}", d.reason);
    }

    // ---- Knative's own expectations for `Scale()` (pkg/autoscaler/scaling/autoscaler_test.go) ----
    //
    // Each test names the Go test it mirrors. Knative's tests use a per-replica target value
    // directly, rate limits of 10 and a 60 s stable window: the config below does the same
    // (utilization 100 %, so that the spec's target is the target value).

    fn knative_cfg() -> AutoscalerConfig {
        AutoscalerConfig {
            container_concurrency_target_percentage: 100.0,
            max_scale_up_rate: 10.0,
            max_scale_down_rate: 10.0,
            max_replicas_cap: 0,
            ..AutoscalerConfig::default()
        }
    }

    /// Knative's delay tests set a threshold that never panics; 1000 % is the highest allowed.
    fn never_panics() -> AutoscalerConfig {
        AutoscalerConfig {
            panic_threshold_percentage: 1000.0,
            ..knative_cfg()
        }
    }

    fn knative_spec(target_value: f64, delay_secs: u64, activation_scale: u32) -> ScalingSpec {
        ScalingSpec {
            min: 0,
            max: u32::MAX,
            metric: Metric::Concurrency,
            target: target_value,
            scale_down_delay: Duration::from_secs(delay_secs),
            stable_window: Duration::from_secs(60),
            activation_scale,
        }
    }

    /// Knative's part of a decision alone (`scale`), called as Knative's tests call `Scale()`.
    struct Knative {
        spec: ScalingSpec,
        cfg: AutoscalerConfig,
        t0: Instant,
        st: DeciderState,
    }

    impl Knative {
        /// `ready` replicas when the decider is made (Knative's `newAutoscaler` reads them).
        fn new(spec: ScalingSpec, cfg: AutoscalerConfig, ready: u32) -> Self {
            let t0 = Instant::now();
            Knative {
                spec,
                cfg,
                t0,
                st: DeciderState::new(t0, ready),
            }
        }

        /// `Scale()` at `secs` after the start: (desired, in panic).
        fn at(&mut self, secs: f64, stable: f64, panic: f64, ready: u32) -> (u32, bool) {
            let input = Inputs {
                stable_avg: stable,
                panic_avg: panic,
                ready,
                activator_in_path: true,
                last_traffic: None,
                poked: false,
            };
            let now = self.t0 + Duration::from_secs_f64(secs);
            let mut notes = String::new();
            let r = scale(&input, &self.spec, &self.cfg, &mut self.st, now, &mut notes);
            (r.desired, r.panicking)
        }
    }

    #[test]
    fn test_autoscaler_scale_down_delay() {
        // Knative: TestAutoscalerScaleDownDelay ("simple", then "gradual" on the same decider).
        let mut k = Knative::new(knative_spec(10.0, 300, 1), never_panics(), 0);
        assert_eq!(k.at(2.0, 40.0, 40.0, 0).0, 4, "scale up");
        assert_eq!(k.at(300.0, 0.0, 0.0, 0).0, 4, "less than the delay at 0");
        assert_eq!(k.at(302.0, 0.0, 0.0, 0).0, 0, "the delay has passed");
        assert_eq!(k.at(540.0, 40.0, 40.0, 0).0, 4);
        assert_eq!(k.at(600.0, 30.0, 30.0, 0).0, 4, "4 still dominates");
        assert_eq!(k.at(660.0, 0.0, 0.0, 0).0, 4, "still at 4");
        assert_eq!(k.at(840.0, 0.0, 0.0, 0).0, 3, "4 scrolls out, 3 remains");
        assert_eq!(k.at(900.0, 0.0, 0.0, 0).0, 0, "everything scrolled out");
    }

    #[test]
    fn test_autoscaler_scale_down_delay_zero() {
        // Knative: TestAutoscalerScaleDownDelayZero. No delay: down at once, even within a tick.
        let mut k = Knative::new(knative_spec(10.0, 0, 1), never_panics(), 0);
        assert_eq!(k.at(0.0, 40.0, 40.0, 0).0, 4);
        assert_eq!(k.at(0.5, 20.0, 20.0, 0).0, 2);
    }

    #[test]
    fn test_autoscaler_panic_then_unpanic_scale_down() {
        // Knative: TestAutoscalerPanicThenUnPanicScaleDown.
        let mut k = Knative::new(knative_spec(10.0, 0, 1), knative_cfg(), 1);
        assert_eq!(k.at(0.0, 100.0, 100.0, 1), (10, true));
        assert_eq!(k.at(0.0, 100.0, 1000.0, 10), (100, true));
        assert_eq!(
            k.at(30.0, 1.0, 1.0, 10),
            (100, true),
            "traffic fell, still in panic"
        );
        assert_eq!(
            k.at(61.0, 1.0, 1.0, 10),
            (1, false),
            "a stable window later"
        );
    }

    #[test]
    fn test_autoscaler_panic_mode_hold_with_scale_down_delay() {
        // Knative: Scale() records the panic's held count in the scale-down-delay window
        // (TestAutoscalerPanicThenUnPanicScaleDown with TestAutoscalerScaleDownDelay's delay).
        // Delay 30 s, stable window 60 s, target 10, scale-down rate 2: a panic that peaked at
        // 10 holds 10 until the delay has passed after the panic ends, then halves.
        let cfg = AutoscalerConfig {
            container_concurrency_target_percentage: 100.0,
            max_replicas_cap: 0,
            ..AutoscalerConfig::default()
        };
        let a = Autoscale {
            target: 10,
            ..autoscale(1, 10, 30)
        };
        let spec = ScalingSpec::new(&a, &cfg);
        let t0 = Instant::now();
        let mut state = DeciderState::new(t0, 1);
        let mut at = |secs: u32, stable: f64, panic: f64, ready: u32| {
            let input = Inputs {
                stable_avg: stable,
                panic_avg: panic,
                ready,
                activator_in_path: true,
                last_traffic: Some(t0 + secs * S),
                poked: false,
            };
            let (d, next) = decide(&input, &spec, &cfg, &state, t0 + secs * S);
            state = next;
            (d.desired, d.panic)
        };
        // A burst: 100 concurrent on one replica is 10 replicas' worth, over 200 %.
        assert_eq!(at(0, 10.0, 100.0, 1), (10, true));
        // The burst is over; the panic holds 10 for a stable window after its last over tick.
        for secs in (2..=60).step_by(2) {
            assert_eq!(at(secs, 10.0, 10.0, 10), (10, true), "at {secs}s");
        }
        // The panic has ended; the delay window still holds the 10 it recorded during it.
        assert_eq!(at(62, 10.0, 10.0, 10), (10, false));
        assert_eq!(at(88, 10.0, 10.0, 10), (10, false));
        // 30 s after the last held 10 (at 60 s): halved, as the rate limit allows.
        assert_eq!(at(90, 10.0, 10.0, 10), (5, false));
    }

    #[test]
    fn test_autoscaler_panic_hold_rises_only_from_the_panic_candidate() {
        // Knative: Scale() raises maxPanicPods from the panic candidate alone, before the delay
        // window; an older, higher count in the delay window is not the panic's floor
        // (TestAutoscalerExtendPanicWindow with a scale-down delay).
        let cfg = AutoscalerConfig {
            container_concurrency_target_percentage: 100.0,
            ..AutoscalerConfig::default()
        };
        let mut k = Knative::new(knative_spec(70.0, 30, 1), cfg, 1);
        assert_eq!(k.at(0.0, 560.0, 560.0, 8), (8, false));
        // Replicas were lost: 2 ready, a panic candidate of 4; the delay window still has 8.
        assert_eq!(k.at(10.0, 140.0, 280.0, 2), (8, true));
        assert_eq!(k.st.panic_hold(), Some(4));
        // The 8 leaves the delay window; the panic holds its own 4.
        assert_eq!(k.at(30.0, 140.0, 280.0, 2), (4, true));
    }

    #[test]
    fn test_autoscaler_activation_scale() {
        // Knative: TestAutoscalerActivationScale. No demand: 0; any demand: the activation scale.
        let mut k = Knative::new(knative_spec(10.0, 0, 2), knative_cfg(), 1);
        assert_eq!(k.at(0.0, 0.0, 0.0, 1).0, 0);
        assert_eq!(k.at(0.0, 1.0, 0.0, 1).0, 2);
    }

    #[test]
    fn test_autoscaler_activation_scale_wakes_from_zero() {
        // Zeroflow: a poke (a request waiting at the activator, before any stat) wakes a cold
        // Executor with its activation scale, and demand keeps at least that many.
        let cfg = AutoscalerConfig::default();
        let a = Autoscale {
            activation_scale: 3,
            ..autoscale(0, 5, 0)
        };
        let spec = ScalingSpec::new(&a, &cfg);
        let t0 = Instant::now();
        let state = DeciderState::new(t0, 0);
        let mut input = Inputs {
            stable_avg: 0.0,
            panic_avg: 0.0,
            ready: 0,
            activator_in_path: true,
            last_traffic: Some(t0),
            poked: true,
        };
        let (d, state) = decide(&input, &spec, &cfg, &state, t0);
        assert_eq!((d.desired, d.previous), (3, 0), "{}", d.reason);
        input.poked = false;
        input.stable_avg = 1.0;
        input.panic_avg = 1.0;
        input.ready = 3;
        let (d, _) = decide(&input, &spec, &cfg, &state, t0 + 2 * S);
        assert_eq!(d.desired, 3, "one request's worth keeps 3: {}", d.reason);
    }

    #[test]
    fn test_start_in_panic_mode() {
        // Knative: TestStartInPanicMode.
        let t0 = Instant::now();
        for ready in 0..2 {
            let st = DeciderState::new(t0, ready);
            assert!(!st.in_panic(), "created at {ready}");
            assert_eq!(st.max_panic, ready);
        }
        let st = DeciderState::new(t0, 2);
        assert_eq!(st.panic_hold(), Some(2));
    }

    #[test]
    fn test_autoscaler_scale() {
        // Knative: TestAutoscalerScale and the single-case tests named in each row. Each row is a
        // fresh decider made with 1 ready replica (Knative's newTestAutoscaler); steps are
        // (seconds, stable, panic, ready, want, want panic if Knative checks it).
        type Step = (f64, f64, f64, u32, u32, Option<bool>);
        let cfg = knative_cfg();
        let rows: Vec<(&str, f64, AutoscalerConfig, Vec<Step>)> = vec![
            (
                "AutoscalerStableModeNoChange",
                10.0,
                cfg.clone(),
                vec![(0.0, 50.0, 50.0, 1, 5, None)],
            ),
            (
                "AutoscalerStableModeNoChangeAlreadyScaled",
                10.0,
                cfg.clone(),
                vec![(0.0, 50.0, 50.0, 5, 5, None)],
            ),
            (
                "AutoscalerPanicModeDoublePodCount",
                10.0,
                cfg.clone(),
                vec![(0.0, 50.0, 100.0, 1, 10, Some(true))],
            ),
            (
                "AutoscalerStableModeIncreaseWithSmallScaleUpRate",
                1.0,
                AutoscalerConfig {
                    max_scale_up_rate: 1.1,
                    ..cfg.clone()
                },
                vec![(0.0, 3.0, 3.1, 2, 3, None)],
            ),
            (
                "AutoscalerStableModeDecreaseWithSmallScaleDownRate",
                10.0,
                AutoscalerConfig {
                    max_scale_down_rate: 1.1,
                    ..cfg.clone()
                },
                vec![(0.0, 1.0, 1.0, 100, 90, None)],
            ),
            (
                "TestAutoscalerStableModeIncreaseWithConcurrencyDefault",
                10.0,
                cfg.clone(),
                vec![
                    (0.0, 50.0, 10.0, 1, 5, None),
                    (0.0, 100.0, 10.0, 1, 10, None),
                ],
            ),
            (
                "TestAutoscalerStableModeDecrease",
                10.0,
                cfg.clone(),
                vec![
                    (0.0, 100.0, 100.0, 8, 10, Some(false)),
                    (0.0, 50.0, 50.0, 8, 5, Some(false)),
                ],
            ),
            (
                "TestAutoscalerStableModeNoTrafficScaleToZero",
                10.0,
                cfg.clone(),
                vec![
                    (0.0, 1.0, 0.0, 1, 1, Some(false)),
                    (0.0, 0.0, 0.0, 1, 0, Some(false)),
                ],
            ),
            (
                "TestAutoscalerUnpanicAfterSlowIncrease",
                1.0,
                cfg.clone(),
                vec![
                    (0.0, 11.0, 25.0, 10, 25, Some(true)),
                    (30.0, 30.0, 41.0, 40, 41, Some(true)),
                    (62.0, 50.0, 56.0, 55, 50, Some(false)),
                ],
            ),
            (
                "TestAutoscalerExtendPanicWindow",
                1.0,
                cfg.clone(),
                vec![
                    (0.0, 11.0, 25.0, 10, 25, Some(true)),
                    (30.0, 30.0, 80.0, 40, 80, Some(true)),
                    // Extended at 30 s: still panicking 60 s after the start.
                    (62.0, 30.0, 30.0, 80, 80, Some(true)),
                ],
            ),
            (
                "TestAutoscalerPanicModeExponentialTrackAndStabilize",
                1.0,
                cfg.clone(),
                vec![
                    (0.0, 6.0, 6.0, 1, 6, Some(true)),
                    (0.0, 36.0, 36.0, 6, 36, Some(true)),
                    (1.0, 216.0, 216.0, 36, 216, Some(true)),
                    (1.0, 1296.0, 1296.0, 216, 1296, Some(true)),
                    (2.0, 1296.0, 1296.0, 1296, 1296, Some(true)),
                ],
            ),
            (
                "TestAutoscalerRateLimitScaleUp",
                10.0,
                cfg.clone(),
                vec![
                    (0.0, 1000.0, 1001.0, 1, 10, None),
                    (0.0, 1000.0, 1001.0, 10, 100, None),
                ],
            ),
            (
                "TestAutoscalerRateLimitScaleDown",
                10.0,
                cfg.clone(),
                vec![(0.0, 1.0, 1.0, 100, 10, None), (0.0, 1.0, 1.0, 10, 1, None)],
            ),
            // No ready replica counts as one for the rate limits.
            (
                "TestAutoscalerUseOnePodAsMinimumIfEndpointsNotFound",
                10.0,
                cfg.clone(),
                vec![(0.0, 1000.0, 888.0, 0, 10, None)],
            ),
        ];
        for (name, target_value, cfg, steps) in rows {
            let mut k = Knative::new(knative_spec(target_value, 0, 1), cfg, 1);
            for (i, (secs, stable, panic, ready, want, want_panic)) in steps.into_iter().enumerate()
            {
                let (got, panicking) = k.at(secs, stable, panic, ready);
                assert_eq!(got, want, "{name} step {i}");
                if let Some(p) = want_panic {
                    assert_eq!(panicking, p, "{name} step {i}: panic");
                }
            }
        }
        // Knative's prepared-panic rows: 5 s into a panic that holds 5.
        for (name, stable, want) in [
            ("AutoscalerPanicStableLargerThanPanic", 50.0, 50),
            ("AutoscalerPanicStableLessThanPanic", 20.0, 30),
        ] {
            let mut k = Knative::new(knative_spec(1.0, 0, 1), knative_cfg(), 1);
            k.st.panic_since = Some(k.t0);
            k.st.max_panic = 5;
            assert_eq!(k.at(5.0, stable, 30.0, 5), (want, true), "{name}");
        }
    }
}
