//! One decider per Executor, fed by the stats of its replicas and the activator, and the async
//! loop that ticks them and tells a [`Scaler`] about changes. Only [`run`] looks at tokio's clock;
//! everything else takes `now` as an argument.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use zeroflow_activator::Stat;
use zeroflow_spec::Metric;

use crate::config::AutoscalerConfig;
use crate::hpa::{self, HpaInputs, HpaState};
use crate::kpa::{self, DeciderState, Inputs};
use crate::scaling::{Decision, NoDecision, ScalingSpec};
use crate::window::Window;

/// One replica's resource usage, measured by its shim from the Executor's process tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSample {
    /// Which replica; samples of one replica within one second are averaged, not added.
    pub pod: String,
    /// 100 = one core fully used.
    pub cpu_percent: f64,
    pub memory_mib: f64,
}

#[derive(Debug, Clone)]
enum State {
    Kpa(DeciderState),
    Hpa(HpaState),
}

impl State {
    fn new(spec: &ScalingSpec, now: Instant, current: u32) -> Self {
        if spec.is_hpa() {
            State::Hpa(HpaState::new(now, current))
        } else {
            State::Kpa(DeciderState::new(now, current))
        }
    }

    fn last_desired(&self) -> u32 {
        match self {
            State::Kpa(s) => s.last_desired(),
            State::Hpa(s) => s.last_desired(),
        }
    }
}

/// Per-second, per-reporter bookkeeping so that a reporter whose 1 s reports drift across a
/// bucket boundary (two reports in one second, none in the next) is averaged rather than counted
/// twice in that second.
#[derive(Debug, Clone, Default)]
struct PerSource {
    bucket: u64,
    sums: HashMap<String, (f64, u32)>,
}

#[derive(Debug, Clone)]
struct Executor {
    spec: ScalingSpec,
    /// The spec's metric per second: concurrency, rps, % CPU or MiB, summed over reporters.
    window: Window,
    per_source: PerSource,
    last_traffic: Option<Instant>,
    activator_in_path: bool,
    state: State,
    /// The last replica whose stats could not be read, and why.
    scrape_failure: Option<(String, String)>,
    /// Why the last tick could not decide, so that a lasting reason is logged once.
    no_decision: Option<NoDecision>,
}

impl Executor {
    fn new(spec: ScalingSpec, now: Instant, current: u32) -> Self {
        Executor {
            window: Window::new(now, spec.stable_window),
            per_source: PerSource::default(),
            last_traffic: None,
            activator_in_path: true,
            state: State::new(&spec, now, current),
            spec,
            scrape_failure: None,
            no_decision: None,
        }
    }

    fn record(&mut self, source: &str, now: Instant, value: f64) {
        let b = self.window.bucket_of(now);
        let ps = &mut self.per_source;
        if b < ps.bucket {
            // A late report for a past second: too rare to track per source.
            self.window.record(now, value);
            return;
        }
        if b > ps.bucket {
            ps.bucket = b;
            ps.sums.clear();
        }
        let (sum, count) = ps.sums.entry(source.to_string()).or_insert((0.0, 0));
        let before = if *count == 0 {
            0.0
        } else {
            *sum / f64::from(*count)
        };
        *sum += value;
        *count += 1;
        let after = *sum / f64::from(*count);
        self.window.record(now, after - before);
    }
}

/// The deciders of all autoscaled Executors.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    cfg: AutoscalerConfig,
    executors: BTreeMap<String, Executor>,
}

impl Autoscaler {
    pub fn new(cfg: AutoscalerConfig) -> Self {
        Autoscaler {
            cfg,
            executors: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &AutoscalerConfig {
        &self.cfg
    }

    /// Starts deciding for `executor`, which has `current` replicas running or being started
    /// (use [`ScalingSpec::initial_scale`] for a new one). More than one starts the decider in
    /// panic mode, holding them. Replaces any previous decider of that name.
    pub fn add_executor(&mut self, executor: &str, spec: ScalingSpec, now: Instant, current: u32) {
        self.executors
            .insert(executor.to_string(), Executor::new(spec, now, current));
    }

    /// Applies a changed spec (a redeploy). The history is kept when the metric and the stable
    /// window are unchanged; otherwise it restarts, holding the current desired count.
    pub fn update_executor(&mut self, executor: &str, spec: ScalingSpec, now: Instant) -> bool {
        let Some(ex) = self.executors.get_mut(executor) else {
            return false;
        };
        if ex.spec.metric != spec.metric || ex.spec.stable_window != spec.stable_window {
            let current = ex.state.last_desired();
            let activator_in_path = ex.activator_in_path;
            let last_traffic = ex.last_traffic;
            *ex = Executor::new(spec, now, current);
            ex.activator_in_path = activator_in_path;
            ex.last_traffic = last_traffic;
        } else {
            ex.spec = spec;
        }
        true
    }

    pub fn remove_executor(&mut self, executor: &str) -> bool {
        self.executors.remove(executor).is_some()
    }

    /// The Executors being decided for, in name order.
    pub fn executors(&self) -> Vec<String> {
        self.executors.keys().cloned().collect()
    }

    pub fn spec(&self, executor: &str) -> Option<&ScalingSpec> {
        self.executors.get(executor).map(|e| &e.spec)
    }

    /// The last desired count decided for `executor`.
    pub fn desired(&self, executor: &str) -> Option<u32> {
        self.executors.get(executor).map(|e| e.state.last_desired())
    }

    /// The (stable, panic) averages of `executor`'s metric at `now`, for status pages.
    pub fn averages(&self, executor: &str, now: Instant) -> Option<(f64, f64)> {
        let ex = self.executors.get(executor)?;
        Some((
            ex.window.average(now, ex.spec.stable_window),
            ex.window.average(now, ex.spec.panic_window(&self.cfg)),
        ))
    }

    /// Tells the decider whether requests for `executor` go through the activator (the default:
    /// Zeroflow's gateway always calls through it). Zero is applied only while they do.
    pub fn set_activator_in_path(&mut self, executor: &str, in_path: bool) {
        if let Some(ex) = self.executors.get_mut(executor) {
            ex.activator_in_path = in_path;
        }
    }

    /// Records one stat of a replica's shim or of the activator (pod `activator`). Each stat
    /// counts its total minus its proxied share: requests that came through the activator are
    /// already counted in the activator's own stat. Returns true when the Executor is at zero and
    /// this stat shows demand: the caller should then poke it so it is decided at once.
    pub fn record_stat(&mut self, executor: &str, stat: &Stat, now: Instant) -> bool {
        let Some(ex) = self.executors.get_mut(executor) else {
            return false;
        };
        let traffic =
            stat.average_concurrency > 0.0 || stat.requests_per_second > 0.0 || stat.in_flight > 0;
        if traffic {
            ex.last_traffic = Some(now);
        }
        let value = match ex.spec.metric {
            Metric::Concurrency => stat.average_concurrency - stat.proxied_concurrency,
            Metric::Rps => stat.requests_per_second - stat.proxied_requests_per_second,
            Metric::Cpu | Metric::Memory => return false,
        };
        ex.record(&stat.pod, now, value.max(0.0));
        traffic && ex.state.last_desired() == 0
    }

    /// The stats of one of `executor`'s replicas could not be read this second (a failed scrape;
    /// `replica` names it, e.g. by its admin address). That second is left out of the averages,
    /// and a tick whose latest second is incomplete gives no decision: the load is unknown, not
    /// zero.
    pub fn record_scrape_failure(
        &mut self,
        executor: &str,
        replica: &str,
        reason: &str,
        now: Instant,
    ) {
        let Some(ex) = self.executors.get_mut(executor) else {
            return;
        };
        ex.window.record_missing(now);
        ex.scrape_failure = Some((replica.to_string(), reason.to_string()));
    }

    /// Records one replica's resource usage; ignored unless the Executor scales on cpu or memory.
    pub fn record_resources(&mut self, executor: &str, sample: &ResourceSample, now: Instant) {
        let Some(ex) = self.executors.get_mut(executor) else {
            return;
        };
        let value = match ex.spec.metric {
            Metric::Cpu => sample.cpu_percent,
            Metric::Memory => sample.memory_mib,
            Metric::Concurrency | Metric::Rps => return,
        };
        ex.record(&sample.pod, now, value.max(0.0));
    }

    /// A request is waiting at the activator for `executor`. When the Executor is at zero, decides
    /// at once (desired becomes at least 1) instead of waiting for the next tick; otherwise only
    /// notes the traffic and returns `None`.
    pub fn poke(&mut self, executor: &str, now: Instant) -> Option<Decision> {
        let ex = self.executors.get_mut(executor)?;
        ex.last_traffic = Some(now);
        if ex.state.last_desired() != 0 {
            return None;
        }
        // A cold Executor has no ready replica to count, and the waiting request is the data.
        Some(self.decide(executor, now, Ok(0), true))
    }

    /// Runs every decider once, with ready counts that are always known. Returns every
    /// decision, changed or not (`Decision::changed`).
    pub fn tick(&mut self, now: Instant, ready: &dyn Fn(&str) -> u32) -> Vec<(String, Decision)> {
        self.tick_checked(now, &|e| Ok(ready(e)))
    }

    /// Runs every decider once. An Executor whose ready count cannot be read, or whose stats are
    /// missing, gets no decision (`Decision::no_decision`): its scale is kept.
    pub fn tick_checked(
        &mut self,
        now: Instant,
        ready: &dyn Fn(&str) -> Result<u32, ReadyCountError>,
    ) -> Vec<(String, Decision)> {
        self.executors()
            .into_iter()
            .map(|name| {
                let d = self.decide(&name, now, ready(&name), false);
                (name, d)
            })
            .collect()
    }

    /// The count a panicking decider holds `executor` at, `None` outside panic mode.
    pub fn panic_hold(&self, executor: &str) -> Option<u32> {
        match &self.executors.get(executor)?.state {
            State::Kpa(s) => s.panic_hold(),
            State::Hpa(_) => None,
        }
    }

    /// Why `executor` cannot be decided for at `now`, checked in Knative's order: the ready
    /// count, then the metric. A poke needs neither: the waiting request is the demand.
    fn no_decision(
        ex: &Executor,
        ready: &Result<u32, ReadyCountError>,
        now: Instant,
    ) -> Option<NoDecision> {
        if let Err(e) = ready {
            return Some(NoDecision::ReadyUnknown {
                reason: e.to_string(),
            });
        }
        if ex.window.is_empty(now, ex.spec.stable_window) {
            return Some(NoDecision::NoData {
                window: ex.spec.stable_window,
            });
        }
        if ex.window.latest_incomplete(now) {
            let (replica, reason) = ex
                .scrape_failure
                .clone()
                .unwrap_or_else(|| ("a replica".into(), "no stats".into()));
            return Some(NoDecision::ScrapeFailed { replica, reason });
        }
        None
    }

    fn decide(
        &mut self,
        executor: &str,
        now: Instant,
        ready: Result<u32, ReadyCountError>,
        poked: bool,
    ) -> Decision {
        let cfg = &self.cfg;
        let ex = self
            .executors
            .get_mut(executor)
            .expect("callers look the executor up first");
        let why = if poked {
            None
        } else {
            Self::no_decision(ex, &ready, now)
        };
        if let Some(why) = why {
            let last = ex.state.last_desired();
            let panic = matches!(&ex.state, State::Kpa(s) if s.in_panic());
            let d = Decision::none(last, &ex.spec, panic, why.clone());
            match &mut ex.state {
                State::Kpa(s) => s.keep(d.desired),
                State::Hpa(s) => s.keep(d.desired),
            }
            let same_kind = ex
                .no_decision
                .as_ref()
                .is_some_and(|w| std::mem::discriminant(w) == std::mem::discriminant(&why));
            // Knative logs "no data yet" at debug: every new Executor starts that way.
            if same_kind || matches!(why, NoDecision::NoData { .. }) {
                tracing::debug!(executor, reason = %d.reason, "no scaling decision");
            } else {
                tracing::warn!(executor, reason = %d.reason, "no scaling decision");
            }
            ex.no_decision = Some(why);
            return d;
        }
        match ex.no_decision.take() {
            Some(was @ NoDecision::NoData { .. }) => {
                tracing::debug!(executor, after = %was, "scaling decisions resume")
            }
            Some(was) => tracing::info!(executor, after = %was, "scaling decisions resume"),
            None => {}
        }
        let ready = ready.unwrap_or(0);
        let panic_window = ex.spec.panic_window(cfg);
        let (decision, stable_avg, panic_avg) = match &ex.state {
            State::Kpa(state) => {
                let input = Inputs {
                    stable_avg: ex.window.average(now, ex.spec.stable_window),
                    panic_avg: ex.window.average(now, panic_window),
                    ready,
                    activator_in_path: ex.activator_in_path,
                    last_traffic: ex.last_traffic,
                    poked,
                };
                let (d, next) = kpa::decide(&input, &ex.spec, cfg, state, now);
                ex.state = State::Kpa(next);
                (d, input.stable_avg, input.panic_avg)
            }
            State::Hpa(state) => {
                // Per-second samples are noisy; the panic-sized window is the "current" usage.
                let usage = ex.window.average(now, panic_window);
                let input = HpaInputs { usage, ready };
                let (d, next) = hpa::decide(&input, &ex.spec, cfg, state, now);
                ex.state = State::Hpa(next);
                (d, usage, usage)
            }
        };
        if decision.changed() {
            tracing::info!(
                executor,
                stable_avg,
                panic_avg,
                ready,
                desired = decision.desired,
                previous = decision.previous,
                panic = decision.panic,
                activator_in_path = decision.activator_in_path,
                excess_burst_capacity = decision.excess_burst_capacity,
                reason = %decision.reason,
                "scaling decision"
            );
        }
        decision
    }
}

/// What the autoscaler drives: the runtime that starts and stops replicas.
#[async_trait]
pub trait Scaler: Send + Sync {
    /// Sets the replica count of `executor`. Called only when the desired count changes; should
    /// return quickly (record the target and converge in the background), as the loop waits.
    async fn scale(&self, executor: &str, desired: u32, decision: &Decision);
    /// Replicas of `executor` that are ready to serve now, or why that cannot be read (then the
    /// tick gives no decision for it, as Knative's does).
    fn ready_replicas(&self, executor: &str) -> Result<u32, ReadyCountError>;
}

/// The runtime could not read how many replicas of an Executor are ready.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ReadyCountError(pub String);

/// Ticks every decider each `tick_interval` of the autoscaler's config, and decides at once for
/// each poked Executor (the names the activator sends when a request finds an Executor cold).
/// Calls `scaler` only for decisions that change the desired count. Runs until the task is
/// dropped; a closed poke channel only ends the pokes, the ticks go on.
#[allow(clippy::disallowed_methods)] // the one place that reads (tokio's) clock
pub async fn run(
    autoscaler: Arc<Mutex<Autoscaler>>,
    scaler: Arc<dyn Scaler>,
    mut pokes: mpsc::UnboundedReceiver<String>,
) {
    let period = autoscaler.lock().config().tick_interval;
    let mut ticks = tokio::time::interval(period);
    // After a slow `scale`, catch up with one tick, not a burst of them.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pokes_open = true;
    loop {
        let decisions = tokio::select! {
            _ = ticks.tick() => {
                let names = autoscaler.lock().executors();
                // Asked outside the lock, so that a Scaler may consult the autoscaler.
                let ready: HashMap<String, Result<u32, ReadyCountError>> = names
                    .into_iter()
                    .map(|n| {
                        let r = scaler.ready_replicas(&n);
                        (n, r)
                    })
                    .collect();
                let now = Instant::now();
                autoscaler
                    .lock()
                    .tick_checked(now, &|e| ready.get(e).cloned().unwrap_or(Ok(0)))
            }
            poke = pokes.recv(), if pokes_open => match poke {
                Some(executor) => {
                    let now = Instant::now();
                    let decision = autoscaler.lock().poke(&executor, now);
                    decision.map(|d| vec![(executor, d)]).unwrap_or_default()
                }
                None => {
                    pokes_open = false;
                    Vec::new()
                }
            },
        };
        for (executor, d) in decisions {
            if d.changed() {
                scaler.scale(&executor, d.desired, &d).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build their Instants from one `now`
mod tests;
