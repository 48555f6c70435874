use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use proptest::prelude::*;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use zeroflow_activator::Stat;
use zeroflow_spec::{Autoscale, Metric};

use super::*;

const S: Duration = Duration::from_secs(1);

fn autoscale(min: u32, max: u32, delay_secs: u64) -> Autoscale {
    Autoscale {
        min,
        max,
        metric: Metric::Concurrency,
        target: 100,
        scale_down_delay: Duration::from_secs(delay_secs),
        stable_window: Duration::from_secs(60),
        ..Autoscale::default()
    }
}

fn stat(pod: &str, concurrency: f64, proxied: f64) -> Stat {
    Stat {
        pod: pod.to_string(),
        average_concurrency: concurrency,
        requests_per_second: concurrency,
        proxied_concurrency: proxied,
        proxied_requests_per_second: proxied,
        in_flight: concurrency.ceil() as u64,
        uptime_seconds: 10.0,
        period_seconds: 1.0,
        ..Stat::default()
    }
}

fn autoscaler_with(name: &str, a: &Autoscale, now: Instant, current: u32) -> Autoscaler {
    let cfg = AutoscalerConfig::default();
    let spec = ScalingSpec::new(a, &cfg);
    let mut x = Autoscaler::new(cfg);
    x.add_executor(name, spec, now, current);
    x
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn activator_requests_are_not_counted_twice() {
    let t0 = Instant::now();
    let mut a = autoscaler_with("enc", &autoscale(1, 5, 0), t0, 1);
    for s in 1..=10 {
        let now = t0 + s * S;
        // 10 requests in flight on the replica, all sent by the activator, which also has 2 queued.
        a.record_stat("enc", &stat("r0", 10.0, 10.0), now);
        a.record_stat("enc", &stat("activator", 12.0, 0.0), now);
        // Another replica serves 5 requests that came straight from the gateway.
        a.record_stat("enc", &stat("r1", 5.0, 0.0), now);
    }
    let (stable, panic) = a.averages("enc", t0 + 10 * S).unwrap();
    assert!(close(stable, 17.0), "{stable}");
    assert!(close(panic, 17.0), "{panic}");
}

#[test]
fn a_reporter_drifting_across_a_second_is_averaged_not_added() {
    let t0 = Instant::now();
    let mut a = autoscaler_with("enc", &autoscale(1, 5, 0), t0, 1);
    a.record_stat("enc", &stat("r0", 10.0, 0.0), t0 + S);
    a.record_stat(
        "enc",
        &stat("r0", 20.0, 0.0),
        t0 + S + Duration::from_millis(990),
    );
    a.record_stat(
        "enc",
        &stat("r1", 4.0, 0.0),
        t0 + S + Duration::from_millis(500),
    );
    let (stable, _) = a
        .averages("enc", t0 + S + Duration::from_millis(999))
        .unwrap();
    assert!(
        close(stable, 19.0),
        "mean of r0's two reports plus r1: {stable}"
    );
}

#[test]
fn a_stat_with_demand_on_a_cold_executor_asks_for_a_poke() {
    let t0 = Instant::now();
    let mut a = autoscaler_with("enc", &autoscale(0, 5, 0), t0, 0);
    assert!(!a.record_stat("enc", &stat("activator", 0.0, 0.0), t0 + S));
    assert!(a.record_stat("enc", &stat("activator", 1.0, 0.0), t0 + 2 * S));
    assert!(!a.record_stat("nobody", &stat("activator", 1.0, 0.0), t0 + 2 * S));
    let d = a.poke("enc", t0 + 2 * S).expect("cold: decided at once");
    assert_eq!((d.desired, d.previous), (1, 0), "{}", d.reason);
    assert_eq!(a.desired("enc"), Some(1));
    assert!(a.poke("enc", t0 + 3 * S).is_none(), "no longer cold");
    assert!(!a.record_stat("enc", &stat("activator", 1.0, 0.0), t0 + 3 * S));
}

#[test]
fn activation_with_a_poke_before_any_stat() {
    let t0 = Instant::now();
    let mut a = autoscaler_with("enc", &autoscale(0, 2, 30), t0, 0);
    let quiet = a.tick(t0 + 600 * S, &|_| 0);
    assert_eq!(quiet[0].1.desired, 0);
    let d = a.poke("enc", t0 + 601 * S).unwrap();
    assert_eq!(d.desired, 1, "{}", d.reason);
    assert!(d.activator_in_path);
}

/// Traffic stops at 10 s; the shim keeps reporting zeros. JCloud's defaults: stable window 60 s,
/// scale_down_delay 30 s, and the 30 s grace period.
#[test]
fn scale_to_zero_after_window_delay_and_grace_not_before() {
    let t0 = Instant::now();
    let mut a = autoscaler_with("enc", &autoscale(0, 2, 30), t0, 1);
    let mut first_zero = None;
    let mut ready = 1;
    for s in 1..=200u32 {
        let now = t0 + s * S;
        let load = if s <= 10 { 20.0 } else { 0.0 };
        if ready > 0 {
            a.record_stat("enc", &stat("r0", load, 0.0), now);
        }
        if s.is_multiple_of(2) {
            let d = a.tick(now, &|_| ready).remove(0).1;
            ready = d.desired;
            if d.desired == 0 && first_zero.is_none() {
                first_zero = Some(s);
            }
        }
    }
    // The stable average is empty from 70 s, the delay holds the last non-zero count (decided at
    // 68 s) until 98 s, then the grace period runs to 128 s: window + delay + grace, less a tick.
    let first_zero = first_zero.expect("reaches zero");
    assert!((126..=132).contains(&first_zero), "{first_zero}");
}

#[test]
fn sustained_load_scales_up_and_a_restart_holds() {
    let t0 = Instant::now();
    let mut a = autoscaler_with("enc", &autoscale(1, 5, 0), t0, 1);
    let mut ready = 1;
    let mut seen = Vec::new();
    for s in 1..=20u32 {
        let now = t0 + s * S;
        a.record_stat("enc", &stat("r0", 200.0, 0.0), now);
        if s.is_multiple_of(2) {
            let d = a.tick(now, &|_| ready).remove(0).1;
            ready = d.desired;
            seen.push(d.desired);
        }
    }
    assert_eq!(seen.last(), Some(&3), "200 / 70 → 3: {seen:?}");

    // A new autoscaler finding 3 ready replicas and no history keeps them.
    let mut b = autoscaler_with("enc", &autoscale(1, 5, 0), t0, 3);
    let d = b.tick(t0 + 2 * S, &|_| 3).remove(0).1;
    assert_eq!(
        (d.desired, d.panic, d.changed()),
        (3, true, false),
        "{}",
        d.reason
    );
}

#[test]
fn hpa_cpu_from_resource_samples() {
    let t0 = Instant::now();
    let a = Autoscale {
        metric: Metric::Cpu,
        target: 50,
        min: 0,
        max: 4,
        ..Autoscale::default()
    };
    let mut x = autoscaler_with("enc", &a, t0, 1);
    for s in 1..=6u32 {
        for pod in ["r0", "r1"] {
            let sample = ResourceSample {
                pod: pod.into(),
                cpu_percent: 80.0,
                memory_mib: 900.0,
            };
            x.record_resources("enc", &sample, t0 + s * S);
        }
        // Stats do not feed an HPA Executor's window.
        assert!(!x.record_stat("enc", &stat("r0", 50.0, 0.0), t0 + s * S));
    }
    let d = x.tick(t0 + 6 * S, &|_| 2).remove(0).1;
    assert_eq!(d.desired, 4, "160 % over 50 % per replica: {}", d.reason);
    assert!(
        x.poke("enc", t0 + 7 * S).is_none(),
        "an HPA Executor is never cold"
    );
}

#[test]
fn updating_the_spec_keeps_or_restarts_history() {
    let t0 = Instant::now();
    let mut a = autoscaler_with("enc", &autoscale(1, 5, 0), t0, 1);
    a.record_stat("enc", &stat("r0", 100.0, 0.0), t0 + S);
    let cfg = AutoscalerConfig::default();
    assert!(a.update_executor("enc", ScalingSpec::new(&autoscale(1, 3, 0), &cfg), t0 + S));
    assert_eq!(a.spec("enc").unwrap().max, 3);
    assert!(a.averages("enc", t0 + S).unwrap().0 > 0.0, "history kept");
    let rps = Autoscale {
        metric: Metric::Rps,
        ..autoscale(1, 3, 0)
    };
    assert!(a.update_executor("enc", ScalingSpec::new(&rps, &cfg), t0 + S));
    assert_eq!(
        a.averages("enc", t0 + S).unwrap().0,
        0.0,
        "a new metric starts empty"
    );
    assert!(!a.update_executor("other", ScalingSpec::new(&rps, &cfg), t0));
    assert_eq!(a.executors(), vec!["enc".to_string()]);
    assert!(a.remove_executor("enc"));
    assert!(a.tick(t0 + 2 * S, &|_| 1).is_empty());
}

// ---- invariants over random load ----

#[derive(Debug, Clone)]
struct Segment {
    secs: u32,
    load: f64,
}

fn segments() -> impl Strategy<Value = Vec<Segment>> {
    let load = prop_oneof![
        2 => Just(0.0),
        1 => 0.0..20.0f64,
        1 => 20.0..600.0f64,
    ];
    prop::collection::vec(
        (1u32..150, load).prop_map(|(secs, load)| Segment { secs, load }),
        1..20,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn invariants_hold_under_random_load(
        segs in segments(),
        min in 0u32..3,
        extra in 0u32..4,
        delay in prop_oneof![Just(0u64), Just(10u64), Just(30u64)],
        start in 0u32..4,
        ready_lag in any::<bool>(),
    ) {
        let max = (min + extra).max(1);
        let t0 = Instant::now();
        let cfg = AutoscalerConfig::default();
        let a = autoscale(min, max, delay);
        let spec = ScalingSpec::new(&a, &cfg);
        let mut x = Autoscaler::new(cfg.clone());
        x.add_executor("e", spec.clone(), t0, start);
        let quiet_needed = spec.stable_window + cfg.zero_grace();

        let mut desired = start;
        let mut ready = start;
        let mut last_traffic: Option<Instant> = None;
        let mut prev: Option<Decision> = None;
        let mut prev_hold: Option<u32> = None;
        let mut s = 0u32;
        let check = |d: &Decision,
                     prev: &Option<Decision>,
                     hold: Option<u32>,
                     prev_hold: Option<u32>,
                     now: Instant,
                     last_traffic: Option<Instant>|
         -> Result<(), TestCaseError> {
            prop_assert!(d.desired <= spec.max, "above max: {}", d.reason);
            prop_assert!(d.desired >= spec.min, "below min: {}", d.reason);
            // Knative's guarantee during a panic: the hold never falls, and no decision goes
            // below it (within max). A decision may fall below the previous one: a count from
            // before the panic can leave the scale-down-delay window.
            if d.panic {
                let hold = hold.expect("a panicking decider has a hold");
                prop_assert!(d.desired >= hold.min(spec.max), "below the panic hold {}: {}", hold, d.reason);
                if let (Some(p), Some(before)) = (prev, prev_hold)
                    && p.panic
                {
                    prop_assert!(hold >= before, "the hold fell from {} to {}: {}", before, hold, d.reason);
                }
            }
            if d.desired == 0 && d.previous > 0 {
                let quiet_since = last_traffic.unwrap_or(t0);
                prop_assert!(
                    now.saturating_duration_since(quiet_since) >= quiet_needed,
                    "zero after only {:?} quiet: {}",
                    now.saturating_duration_since(quiet_since),
                    d.reason
                );
            }
            Ok(())
        };
        for seg in &segs {
            for _ in 0..seg.secs {
                s += 1;
                let now = t0 + s * S;
                if seg.load > 0.0 {
                    last_traffic = Some(now);
                }
                if ready > 0 {
                    x.record_stat("e", &stat("r0", seg.load, 0.0), now);
                } else if seg.load > 0.0 {
                    // No replica: the activator queues, reports, and pokes.
                    let cold = x.record_stat("e", &stat("activator", seg.load, 0.0), now);
                    prop_assert_eq!(cold, desired == 0);
                    if let Some(d) = x.poke("e", now) {
                        let hold = x.panic_hold("e");
                        check(&d, &prev, hold, prev_hold, now, last_traffic)?;
                        prev_hold = hold;
                        prop_assert!(d.desired >= 1, "a poke wakes: {}", d.reason);
                        desired = d.desired;
                        prev = Some(d);
                    }
                }
                if s.is_multiple_of(2) {
                    let seen_ready = ready;
                    let d = x.tick(now, &|_| seen_ready).remove(0).1;
                    let hold = x.panic_hold("e");
                    check(&d, &prev, hold, prev_hold, now, last_traffic)?;
                    prev_hold = hold;
                    desired = d.desired;
                    prev = Some(d);
                }
                // Replicas become ready a second later, or at once.
                if !ready_lag || !s.is_multiple_of(2) {
                    ready = desired;
                }
            }
        }
    }
}

// ---- no data is not zero load ----

#[test]
fn test_autoscaler_no_data_no_autoscale() {
    // Knative: TestAutoscalerNoDataNoAutoscale (the metric client answers ErrNoData).
    let t0 = Instant::now();
    let mut a = autoscaler_with("enc", &autoscale(0, 5, 0), t0, 2);
    let d = a.tick(t0 + 2 * S, &|_| 2).remove(0).1;
    assert_eq!(d.no_decision, Some(NoDecision::NoData { window: 60 * S }));
    assert_eq!((d.desired, d.changed()), (2, false), "{}", d.reason);
    // A whole stable window after the last stat, there is no data again, not a load of 0.
    a.record_stat("enc", &stat("r0", 70.0, 0.0), t0 + 3 * S);
    let d = a.tick(t0 + 4 * S, &|_| 2).remove(0).1;
    assert_eq!(d.no_decision, None, "{}", d.reason);
    let d = a.tick(t0 + 200 * S, &|_| 2).remove(0).1;
    assert!(
        matches!(d.no_decision, Some(NoDecision::NoData { .. })),
        "{}",
        d.reason
    );
    assert_eq!(d.desired, a.desired("enc").unwrap());
}

#[test]
fn test_cant_count_pods() {
    // Knative: TestCantCountPods (the ready count cannot be read: an invalid result).
    let t0 = Instant::now();
    let mut a = autoscaler_with("enc", &autoscale(1, 5, 0), t0, 3);
    for s in 1..=4 {
        a.record_stat("enc", &stat("r0", 1000.0, 0.0), t0 + s * S);
    }
    let down = ReadyCountError("the API server did not answer".into());
    let d = a
        .tick_checked(t0 + 4 * S, &|_| Err(down.clone()))
        .remove(0)
        .1;
    assert_eq!(
        d.no_decision,
        Some(NoDecision::ReadyUnknown {
            reason: down.0.clone()
        })
    );
    assert_eq!((d.desired, d.changed()), (3, false), "{}", d.reason);
    let d = a.tick_checked(t0 + 4 * S, &|_| Ok(3)).remove(0).1;
    assert_eq!(d.desired, 5, "counted again: {}", d.reason);
}

/// Three replicas carry 70 each (three replicas' worth) when every scrape fails for 20 s: the
/// activator still reports its 0. Read as a load of 0, those seconds would halve the stable
/// average and scale a busy Executor down; they give no decision instead, and are left out of
/// the averages afterwards.
#[test]
fn a_failed_scrape_gives_no_decision_and_is_not_read_as_zero_load() {
    let t0 = Instant::now();
    let mut a = autoscaler_with("enc", &autoscale(1, 5, 0), t0, 3);
    let failing = 21..=40u32;
    for s in 1..=70u32 {
        let now = t0 + s * S;
        a.record_stat("enc", &stat("activator", 0.0, 0.0), now);
        for pod in ["r0", "r1", "r2"] {
            if failing.contains(&s) {
                a.record_scrape_failure("enc", pod, "connection refused", now);
            } else {
                a.record_stat("enc", &stat(pod, 70.0, 0.0), now);
            }
        }
        if s.is_multiple_of(2) {
            let d = a.tick(now, &|_| 3).remove(0).1;
            assert_eq!(d.desired, 3, "at {s}s: {}", d.reason);
            if failing.contains(&s) {
                assert_eq!(
                    d.no_decision,
                    Some(NoDecision::ScrapeFailed {
                        replica: "r2".into(),
                        reason: "connection refused".into()
                    }),
                    "at {s}s"
                );
            } else {
                assert_eq!(d.no_decision, None, "at {s}s: {}", d.reason);
            }
        }
    }
    let (stable, _) = a.averages("enc", t0 + 70 * S).unwrap();
    assert!(
        close(stable, 210.0),
        "unread seconds are left out: {stable}"
    );
}

// ---- a reference model of Knative's Scale(), compared tick by tick ----

/// Knative's decision, written from its published code as the reference the decider is compared
/// with: the metric collector's averages (`pkg/autoscaler/aggregation`: one-second buckets,
/// averaged since the first write; its 6-digit rounding is left out, the loads here are whole
/// numbers), `Scale()` (`pkg/autoscaler/scaling/autoscaler.go`) with its `max.TimeWindow` delay
/// window bucketed by the 2 s tick, and the KPA reconciler's `applyBounds`. Times are whole
/// seconds since the decider started.
struct KnativeModel {
    target_value: f64,
    total_value: f64,
    target_burst_capacity: f64,
    panic_threshold: f64,
    max_scale_up_rate: f64,
    max_scale_down_rate: f64,
    stable_window: u64,
    panic_window: u64,
    /// `ceil(delay / tick)`; 0 = no delay window.
    delay_buckets: u64,
    activation_scale: u32,
    min: u32,
    /// 0 = unbounded.
    max: u32,
    loads: BTreeMap<u64, f64>,
    panic_time: Option<u64>,
    max_panic_pods: u32,
    /// (tick index, count) recorded in the delay window.
    delay: Vec<(u64, u32)>,
}

/// What the model answers for one `Scale()`: None is Knative's invalid result.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ModelResult {
    desired: u32,
    panic: bool,
    excess_burst_capacity: i64,
}

impl KnativeModel {
    fn record(&mut self, second: u64, load: f64) {
        *self.loads.entry(second).or_insert(0.0) += load;
    }

    fn average(&self, now: u64, window: u64) -> f64 {
        let first = *self.loads.keys().next().expect("recorded");
        let start = first.max((now + 1).saturating_sub(window));
        let mut sum = 0.0;
        for j in start..=now {
            sum += self.loads.get(&j).copied().unwrap_or(0.0);
        }
        sum / (now - start + 1) as f64
    }

    fn scale(&mut self, now: u64, ready_count: u32) -> Option<ModelResult> {
        let last_write = *self.loads.keys().next_back()?;
        if now - last_write > self.stable_window {
            return None;
        }
        let stable = self.average(now, self.stable_window);
        let panic = self.average(now, self.panic_window);
        let ready = f64::from(ready_count.max(1));
        let max_up = (self.max_scale_up_rate * ready).ceil();
        let max_down = (ready / self.max_scale_down_rate).floor();
        let dspc = (stable / self.target_value).ceil();
        let dppc = (panic / self.target_value).ceil();
        let mut stable_pods = dspc.max(max_down).min(max_up) as u32;
        let mut panic_pods = dppc.max(max_down).min(max_up) as u32;
        if self.activation_scale > 1 {
            if dspc > 0.0 && self.activation_scale > stable_pods {
                stable_pods = self.activation_scale;
            }
            if dppc > 0.0 && self.activation_scale > panic_pods {
                panic_pods = self.activation_scale;
            }
        }
        let over = dppc / ready >= self.panic_threshold;
        if over {
            self.panic_time = Some(now);
        } else if let Some(t) = self.panic_time
            && t + self.stable_window < now
        {
            self.panic_time = None;
            self.max_panic_pods = 0;
        }
        let mut desired = stable_pods;
        if self.panic_time.is_some() {
            desired = desired.max(panic_pods);
            self.max_panic_pods = self.max_panic_pods.max(desired);
            desired = self.max_panic_pods;
        }
        if self.delay_buckets > 0 {
            let index = now / 2;
            self.delay.retain(|(i, _)| index - i < self.delay_buckets);
            self.delay.push((index, desired));
            desired = self.delay.iter().map(|(_, d)| *d).max().unwrap_or(desired);
        }
        let excess_burst_capacity = if self.target_burst_capacity == 0.0 {
            0
        } else if self.target_burst_capacity > 0.0 {
            (f64::from(ready_count) * self.total_value - self.target_burst_capacity - panic).floor()
                as i64
        } else {
            -1
        };
        Some(ModelResult {
            desired,
            panic: self.panic_time.is_some(),
            excess_burst_capacity,
        })
    }

    /// The KPA reconciler's `applyBounds`.
    fn bounded(&self, x: u32) -> u32 {
        if x < self.min {
            self.min
        } else if self.max != 0 && x > self.max {
            self.max
        } else {
            x
        }
    }
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random load series, 2 s ticks, a scale-down delay (and none), random targets, windows,
    /// bounds and activation scales; replicas become ready after a random lag. Every decision of
    /// the real decider (ticks and pokes) equals the model's, except where Zeroflow's
    /// scale-to-zero gate (Knative's KPA reconciler: a stable window of quiet, then the grace
    /// period) keeps one replica that the model already releases.
    #[test]
    fn the_decider_agrees_with_a_reference_model_of_knative(
        segs in segments(),
        target in 1u32..200,
        stable_window in 6u64..=120,
        delay in prop_oneof![Just(0u64), Just(30u64), 1u64..=90],
        min in 0u32..3,
        extra in 0u32..40,
        activation in 1u32..6,
        start in 0u32..4,
        seed in 1u64..,
    ) {
        let max = min + extra.max(1);
        let cfg = AutoscalerConfig { max_replicas_cap: 0, ..AutoscalerConfig::default() };
        let a = Autoscale {
            min,
            max,
            target,
            scale_down_delay: Duration::from_secs(delay),
            stable_window: Duration::from_secs(stable_window),
            activation_scale: activation.min(max),
            ..Autoscale::default()
        };
        let spec = ScalingSpec::new(&a, &cfg);
        let t0 = Instant::now();
        let mut x = Autoscaler::new(cfg.clone());
        x.add_executor("e", spec.clone(), t0, start);
        // Knative's panic window: a share of the stable window in nanoseconds, in whole buckets.
        let panic_nanos = (Duration::from_secs(stable_window).as_nanos() as f64
            * cfg.panic_window_percentage / 100.0) as u64;
        let mut model = KnativeModel {
            target_value: f64::from(target) * cfg.utilization(),
            total_value: f64::from(target),
            target_burst_capacity: cfg.target_burst_capacity,
            panic_threshold: cfg.panic_threshold_percentage / 100.0,
            max_scale_up_rate: cfg.max_scale_up_rate,
            max_scale_down_rate: cfg.max_scale_down_rate,
            stable_window,
            panic_window: panic_nanos.div_ceil(1_000_000_000).max(1),
            delay_buckets: delay.div_ceil(2),
            activation_scale: a.activation_scale,
            min,
            max,
            loads: BTreeMap::new(),
            panic_time: (start > 1).then_some(0),
            max_panic_pods: start,
            delay: Vec::new(),
        };

        let mut seed = seed;
        let mut desired = start;
        let mut ready = start;
        let mut s = 0u64;
        let mut compared = 0u32;
        let mut compare = |d: &Decision, m: Option<ModelResult>, at: u64| -> Result<(), TestCaseError> {
            let m = m.expect("a stat every second: the model always has data");
            prop_assert_eq!(d.no_decision.clone(), None, "at {}s: {}", at, d.reason);
            prop_assert_eq!(d.panic, m.panic, "panic at {}s: {} vs {:?}", at, d.reason, m);
            prop_assert_eq!(d.excess_burst_capacity, m.excess_burst_capacity, "EBC at {}s: {}", at, d.reason);
            let want = m.desired;
            let gate = want == 0 && d.desired == 1 && d.previous > 0;
            prop_assert!(d.desired == want || gate, "at {}s: decider {} vs Knative {} ({:?}): {}", at, d.desired, want, m, d.reason);
            compared += 1;
            Ok(())
        };
        for seg in &segs {
            for _ in 0..seg.secs {
                s += 1;
                let now = t0 + Duration::from_secs(s);
                let load = seg.load.round();
                let cold = x.record_stat("e", &stat("activator", load, 0.0), now);
                model.record(s, load);
                if cold && let Some(d) = x.poke("e", now) {
                    // A poke decides at once, between ticks, on a cold Executor (no ready replica).
                    let m = model.scale(s, 0).map(|r| ModelResult { desired: model.bounded(r.desired), ..r });
                    compare(&d, m, s)?;
                    desired = d.desired;
                }
                if s.is_multiple_of(2) {
                    let seen = ready;
                    let d = x.tick(now, &|_| seen).remove(0).1;
                    let m = model.scale(s, seen).map(|r| ModelResult { desired: model.bounded(r.desired), ..r });
                    compare(&d, m, s)?;
                    desired = d.desired;
                }
                // Replicas follow the decisions after a random lag, sometimes halfway.
                match xorshift(&mut seed) % 4 {
                    0 | 1 => ready = desired,
                    2 => ready = ready.midpoint(desired),
                    _ => {}
                }
            }
        }
        prop_assert!(compared > 0);
    }
}

// ---- the driver, with paused time ----

#[derive(Default)]
struct FakeScaler {
    calls: Mutex<Vec<(String, u32, Instant)>>,
    ready: Mutex<HashMap<String, u32>>,
}

impl FakeScaler {
    fn calls(&self) -> Vec<(String, u32, Instant)> {
        self.calls.lock().clone()
    }
}

#[async_trait]
impl Scaler for FakeScaler {
    async fn scale(&self, executor: &str, desired: u32, _decision: &Decision) {
        self.calls
            .lock()
            .push((executor.to_string(), desired, Instant::now()));
        // Replicas are ready at once in this fake.
        self.ready.lock().insert(executor.to_string(), desired);
    }

    fn ready_replicas(&self, executor: &str) -> Result<u32, ReadyCountError> {
        Ok(self.ready.lock().get(executor).copied().unwrap_or(0))
    }
}

#[tokio::test(start_paused = true)]
async fn driver_pokes_scales_up_and_scales_to_zero_only_after_window_and_grace() {
    let t0 = Instant::now();
    let autoscaler = Arc::new(Mutex::new(autoscaler_with(
        "enc",
        &autoscale(0, 5, 0),
        t0,
        0,
    )));
    let scaler = Arc::new(FakeScaler::default());
    let (poke_tx, poke_rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(run(autoscaler.clone(), scaler.clone(), poke_rx));

    tokio::time::sleep(5 * S).await;
    assert!(
        scaler.calls().is_empty(),
        "a cold, idle Executor stays at zero"
    );

    // The activator finds `enc` cold at 5 s: one replica at once, not at the 6 s tick.
    poke_tx.send("enc".to_string()).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(scaler.calls(), vec![("enc".to_string(), 1, t0 + 5 * S)]);

    // Sustained load: 300 concurrent at 70 per replica wants 5.
    let mut last_traffic = Instant::now();
    for _ in 0..20 {
        tokio::time::sleep(S).await;
        last_traffic = Instant::now();
        autoscaler
            .lock()
            .record_stat("enc", &stat("r0", 300.0, 0.0), last_traffic);
    }
    let calls = scaler.calls();
    assert_eq!(calls.last().map(|c| c.1), Some(5), "{calls:?}");

    // Silence: the shims keep reporting zeros while they run.
    for _ in 0..200 {
        tokio::time::sleep(S).await;
        let now = Instant::now();
        if scaler.ready_replicas("enc") != Ok(0) {
            autoscaler
                .lock()
                .record_stat("enc", &stat("r0", 0.0, 0.0), now);
        }
    }
    let calls = scaler.calls();
    let zero = calls
        .iter()
        .find(|c| c.1 == 0)
        .unwrap_or_else(|| panic!("never scaled to zero: {calls:?}"));
    let quiet = zero.2 - last_traffic;
    // Stable window 60 s + grace 30 s, decided on the next 2 s tick.
    assert!(
        quiet >= 90 * S && quiet <= 93 * S,
        "zero after {quiet:?}: {calls:?}"
    );
    let downs: Vec<u32> = calls.iter().map(|c| c.1).collect();
    assert!(
        downs.windows(2).all(|w| w[0] != w[1]),
        "scale is called only on changes: {downs:?}"
    );

    // A closed poke channel does not stop the ticks.
    drop(poke_tx);
    autoscaler
        .lock()
        .record_stat("enc", &stat("activator", 3.0, 0.0), Instant::now());
    tokio::time::sleep(3 * S).await;
    assert_eq!(scaler.calls().last().map(|c| c.1), Some(1));
    driver.abort();
}
