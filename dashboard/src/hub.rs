//! The dashboard's memory of every watched Flow: per Executor, a bounded ring of samples (desired
//! and ready replicas, calls per second, p50/p99), its recent cold starts with where the time
//! went, and the autoscaler's recent decisions with their reasons; and the live feed for the
//! pages that watch a Flow (samples each second, runtime events, new log lines). It reads only
//! the [`Runtime`] trait and the autoscaler's decision feed, and must not change anything: the
//! pages' actions go through the REST API.
//!
//! Memory is bounded: see [`Limits`]. An Executor that does nothing (at zero, no calls) records
//! one sample when its counts change and nothing else, so a thousand idle Flows cost little.

use crate::ring::Ring;
use parking_lot::Mutex;
use serde::Serialize;
use serde::ser::SerializeSeq;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use zeroflow_activator::{LatencySnapshot, ReplicaSet};
use zeroflow_platform::runtime::{Runtime, RuntimeEvent};
use zeroflow_platform::scaling::{DecisionFeed, ScaleDecision};
use zeroflow_spec::Flow;

/// What the hub keeps, at most.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How far back samples go (the charts' hour).
    pub window: Duration,
    /// Samples per Executor: one a second for the window.
    pub samples_per_executor: usize,
    /// Samples of all Executors together; with many Executors each gets its share (at least
    /// [`Limits::min_samples_per_executor`]).
    pub samples_total: usize,
    pub min_samples_per_executor: usize,
    /// Cold starts, decisions and runtime events kept per Executor, each.
    pub events_per_executor: usize,
    /// A decision's reason is cut to this many characters.
    pub reason_chars: usize,
    /// Log lines per replica sent with a Flow's history.
    pub log_lines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            window: Duration::from_secs(3600),
            samples_per_executor: 3600,
            samples_total: 1_000_000,
            min_samples_per_executor: 120,
            events_per_executor: 30,
            reason_chars: 600,
            log_lines: 200,
        }
    }
}

/// One second of one Executor: replicas asked for and ready, calls per second, and the
/// percentiles of those calls' durations (NaN: no calls). 20 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Unix seconds.
    pub t: u32,
    pub desired: u16,
    pub ready: u16,
    pub rps: f32,
    pub p50_ms: f32,
    pub p99_ms: f32,
}

/// As `[unix ms, desired, ready, rps, p50 ms | null, p99 ms | null]`: compact for an hour of
/// them.
impl Serialize for Sample {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let opt = |v: f32| (!v.is_nan()).then_some((f64::from(v) * 100.0).round() / 100.0);
        let mut seq = s.serialize_seq(Some(6))?;
        seq.serialize_element(&(u64::from(self.t) * 1000))?;
        seq.serialize_element(&self.desired)?;
        seq.serialize_element(&self.ready)?;
        seq.serialize_element(&((f64::from(self.rps) * 100.0).round() / 100.0))?;
        seq.serialize_element(&opt(self.p50_ms))?;
        seq.serialize_element(&opt(self.p99_ms))?;
        seq.end()
    }
}

/// One stretch of a cold start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Part {
    pub what: &'static str,
    pub ms: u64,
}

/// A start from zero replicas: how long until the first replica was ready, and where the time
/// went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColdStart {
    /// Unix ms when it ended (ready, or failed).
    pub t: u64,
    pub replica: Option<String>,
    pub total_ms: u64,
    pub parts: Vec<Part>,
    /// The autoscaler's reason, when it decided the wake-up.
    pub reason: Option<String>,
    /// Why it did not end with a ready replica.
    pub failed: Option<String>,
}

/// A change of scale the autoscaler made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRec {
    pub t: u64,
    pub from: u32,
    pub to: u32,
    pub panic: bool,
    pub reason: String,
}

/// Something the runtime did to an Executor (scaling, a replica starting, ready, stopped,
/// crashed, the Executor failed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRec {
    pub t: u64,
    pub kind: &'static str,
    pub replica: Option<String>,
    pub text: String,
}

/// What a page watching a Flow receives, as one Server-Sent Event each (the event's name is
/// `type`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Live {
    /// Each second: every Executor's sample, and why those that failed cannot run.
    Samples {
        t: u64,
        executors: BTreeMap<String, Sample>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        failures: BTreeMap<String, String>,
    },
    /// What the runtime did.
    Event {
        executor: String,
        #[serde(flatten)]
        event: EventRec,
    },
    ColdStart {
        executor: String,
        cold_start: ColdStart,
    },
    Decision {
        executor: String,
        decision: DecisionRec,
    },
    /// New output lines of one replica.
    Log {
        t: u64,
        executor: String,
        replica: String,
        lines: Vec<String>,
    },
}

impl Live {
    pub fn name(&self) -> &'static str {
        match self {
            Live::Samples { .. } => "samples",
            Live::Event { .. } => "event",
            Live::ColdStart { .. } => "cold_start",
            Live::Decision { .. } => "decision",
            Live::Log { .. } => "log",
        }
    }
}

/// A Flow's history as a page loads it: per Executor, its rings and its replicas' recent
/// output.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub t: u64,
    pub window_ms: u64,
    pub executors: BTreeMap<String, ExecutorHistory>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecutorHistory {
    pub autoscaled: bool,
    pub desired: u32,
    pub ready: u32,
    pub failure: Option<String>,
    pub samples: Vec<Sample>,
    pub cold_starts: Vec<ColdStart>,
    pub decisions: Vec<DecisionRec>,
    pub events: Vec<EventRec>,
    /// replica name -> its last lines.
    pub logs: BTreeMap<String, Vec<String>>,
}

/// Unix ms on tokio's clock: the wall clock read once, then tokio's monotonic time added, so
/// tests with paused time drive it and a wall clock step does not reorder samples.
#[derive(Debug, Clone, Copy)]
struct Clock {
    unix0_ms: u64,
    at: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        let unix0_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        Clock {
            unix0_ms,
            at: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.unix0_ms + self.at.elapsed().as_millis() as u64
    }
}

/// A start from zero in progress.
#[derive(Debug, Clone)]
struct ColdRun {
    decided_at: Option<u64>,
    reason: Option<String>,
    scaling_at: u64,
    starting_at: Option<u64>,
    replica: Option<String>,
}

struct ExecState {
    name: String,
    autoscaled: bool,
    samples: Ring<Sample>,
    cold_starts: Ring<ColdStart>,
    decisions: Ring<DecisionRec>,
    events: Ring<EventRec>,
    /// The latest sample, recorded or not.
    latest: Option<Sample>,
    /// The call durations at the previous sample; boxed, and only once there were calls.
    latency: Option<Box<LatencySnapshot>>,
    cold: Option<ColdRun>,
}

impl ExecState {
    fn new(name: &str, autoscaled: bool, limits: &Limits) -> Self {
        ExecState {
            name: name.to_string(),
            autoscaled,
            samples: Ring::new(limits.samples_per_executor),
            cold_starts: Ring::new(limits.events_per_executor),
            decisions: Ring::new(limits.events_per_executor),
            events: Ring::new(limits.events_per_executor),
            latest: None,
            latency: None,
            cold: None,
        }
    }

    /// Keeps `s` when it says something the ring cannot: a change of replicas, calls, or the
    /// first second without calls after some (where the rate chart comes back to zero).
    fn record(&mut self, s: Sample) -> bool {
        let keep = match self.samples.last() {
            None => true,
            Some(last) => {
                last.desired != s.desired || last.ready != s.ready || s.rps > 0.0 || last.rps > 0.0
            }
        };
        if keep {
            self.samples.push(s);
        }
        self.latest = Some(s);
        keep
    }

    fn expire(&mut self, cutoff_s: u32) {
        // The last sample before the window stays: it is the replicas' value at the window's
        // start.
        while self.samples.iter().nth(1).is_some_and(|s| s.t < cutoff_s) {
            self.samples.pop_front();
        }
    }
}

/// One Flow's watch: its runtime, rings, and live feed.
struct FlowWatch {
    runtime: Arc<dyn Runtime>,
    /// Each Executor's first shard (where its calls are timed), in the order of `state`.
    first_shards: Vec<Option<Arc<ReplicaSet>>>,
    state: Mutex<Vec<ExecState>>,
    /// Exists while a page watches the Flow.
    live: Mutex<Option<broadcast::Sender<Arc<Live>>>>,
    /// The task that follows runtime events and decisions.
    follower: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for FlowWatch {
    fn drop(&mut self) {
        if let Some(t) = self.follower.lock().take() {
            t.abort();
        }
    }
}

impl FlowWatch {
    fn send(&self, ev: Live) {
        if let Some(tx) = self.live.lock().as_ref() {
            let _ = tx.send(Arc::new(ev));
        }
    }

    fn exec_mut<'a>(state: &'a mut [ExecState], name: &str) -> Option<&'a mut ExecState> {
        state.iter_mut().find(|e| e.name == name)
    }
}

/// Every watched Flow, by id.
pub struct Hub {
    flows: Mutex<HashMap<String, Arc<FlowWatch>>>,
    limits: Limits,
    clock: Clock,
}

impl Hub {
    pub fn new(limits: Limits) -> Arc<Hub> {
        Arc::new(Hub {
            flows: Mutex::new(HashMap::new()),
            limits,
            clock: Clock::new(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Unix ms now, on the hub's clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Watches Flow `id` run by `runtime`. Watching the same runtime again does nothing; a new
    /// runtime for the Flow (it was restarted) keeps the Executors' history.
    pub fn watch(
        self: &Arc<Self>,
        id: &str,
        flow: &Flow,
        runtime: Arc<dyn Runtime>,
        decisions: Option<&DecisionFeed>,
    ) {
        let old = self.flows.lock().get(id).cloned();
        if let Some(old) = &old
            && Arc::ptr_eq(&old.runtime, &runtime)
        {
            return;
        }
        let mut kept: HashMap<String, ExecState> = old
            .map(|w| {
                std::mem::take(&mut *w.state.lock())
                    .into_iter()
                    .map(|e| (e.name.clone(), e))
                    .collect()
            })
            .unwrap_or_default();
        let shards = runtime.shards();
        let mut state = vec![];
        let mut first_shards = vec![];
        for e in &flow.executors {
            let autoscaled = e.jcloud.autoscale_set && e.external.is_none();
            let mut st = kept
                .remove(&e.name)
                .unwrap_or_else(|| ExecState::new(&e.name, autoscaled, &self.limits));
            st.autoscaled = autoscaled;
            st.cold = None;
            let first = shards.get(&e.name).and_then(|s| s.first().cloned());
            // Calls made before the watch are not the first second's; a new runtime's set has
            // none, and then nothing is allocated.
            st.latency = first
                .as_ref()
                .map(|s| s.latency())
                .filter(|l| l.total() > 0)
                .map(Box::new);
            // The counts now, so a page that comes before the next tick has them.
            let t = (self.clock.now_ms() / 1000) as u32;
            st.record(Sample {
                t,
                desired: runtime.desired(&e.name).min(u32::from(u16::MAX)) as u16,
                ready: runtime.ready_replicas(&e.name).min(u32::from(u16::MAX)) as u16,
                rps: 0.0,
                p50_ms: f32::NAN,
                p99_ms: f32::NAN,
            });
            state.push(st);
            first_shards.push(first);
        }
        let watch = Arc::new(FlowWatch {
            runtime: runtime.clone(),
            first_shards,
            state: Mutex::new(state),
            live: Mutex::new(None),
            follower: Mutex::new(None),
        });
        let task = tokio::spawn(follow(
            Arc::downgrade(&watch),
            runtime.subscribe(),
            decisions.map(|d| d.subscribe()),
            self.clock,
            self.limits,
        ));
        *watch.follower.lock() = Some(task);
        self.flows.lock().insert(id.to_string(), watch);
    }

    /// Stops watching Flow `id` and forgets its history (it was removed).
    pub fn forget(&self, id: &str) {
        self.flows.lock().remove(id);
    }

    /// The ids of the watched Flows.
    pub fn ids(&self) -> Vec<String> {
        self.flows.lock().keys().cloned().collect()
    }

    pub fn is_watched(&self, id: &str, runtime: &Arc<dyn Runtime>) -> bool {
        self.flows
            .lock()
            .get(id)
            .is_some_and(|w| Arc::ptr_eq(&w.runtime, runtime))
    }

    /// Samples every watched Flow once (the sampler calls it each second). Returns how many
    /// samples were recorded.
    pub fn tick(&self) -> usize {
        let now = self.clock.now_ms();
        let t = (now / 1000) as u32;
        let cutoff = t.saturating_sub(self.limits.window.as_secs() as u32);
        let watches: Vec<Arc<FlowWatch>> = self.flows.lock().values().cloned().collect();
        let executors: usize = watches.iter().map(|w| w.first_shards.len()).sum();
        let cap = (self.limits.samples_total / executors.max(1)).clamp(
            self.limits.min_samples_per_executor,
            self.limits.samples_per_executor,
        );
        let mut recorded = 0;
        for w in watches {
            let watched = w.live.lock().is_some();
            let mut out = BTreeMap::new();
            let mut failures = BTreeMap::new();
            {
                let mut st = w.state.lock();
                for (i, e) in st.iter_mut().enumerate() {
                    let desired = w.runtime.desired(&e.name);
                    let ready = w.runtime.ready_replicas(&e.name);
                    let (rps, p50, p99) = match w.first_shards.get(i).and_then(Option::as_ref) {
                        Some(set) => rate(&mut e.latency, set.latency(), e.latest.map(|s| s.t), t),
                        None => (0.0, f32::NAN, f32::NAN),
                    };
                    let s = Sample {
                        t,
                        desired: desired.min(u32::from(u16::MAX)) as u16,
                        ready: ready.min(u32::from(u16::MAX)) as u16,
                        rps,
                        p50_ms: p50,
                        p99_ms: p99,
                    };
                    if e.samples.cap() != cap {
                        e.samples.set_cap(cap);
                    }
                    recorded += usize::from(e.record(s));
                    e.expire(cutoff);
                    if watched {
                        out.insert(e.name.clone(), s);
                        if let Some(f) = w.runtime.failure(&e.name) {
                            failures.insert(e.name.clone(), f);
                        }
                    }
                }
            }
            if watched {
                w.send(Live::Samples {
                    t: now,
                    executors: out,
                    failures,
                });
            }
        }
        recorded
    }

    /// Samples every second until the task is dropped.
    pub fn spawn_sampler(self: &Arc<Self>) -> JoinHandle<()> {
        let hub = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                let Some(hub) = hub.upgrade() else { return };
                hub.tick();
            }
        })
    }

    /// Flow `id`'s history and a receiver of what happens from now on; None when the Flow is
    /// not watched. The first receiver starts following the replicas' output.
    pub async fn subscribe(
        self: &Arc<Self>,
        id: &str,
    ) -> Option<(History, broadcast::Receiver<Arc<Live>>)> {
        let w = self.flows.lock().get(id).cloned()?;
        let (rx, first) = {
            let mut live = w.live.lock();
            match live.as_ref() {
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = broadcast::channel(256);
                    *live = Some(tx);
                    (rx, true)
                }
            }
        };
        let history = self.history_of(&w).await;
        if first {
            let baseline: HashMap<String, Vec<String>> = history
                .executors
                .values()
                .flat_map(|e| e.logs.iter().map(|(r, l)| (r.clone(), l.clone())))
                .collect();
            tokio::spawn(follow_logs(Arc::downgrade(&w), baseline, self.clock));
        }
        Some((history, rx))
    }

    /// Flow `id`'s history (as [`Hub::subscribe`] gives it), None when not watched.
    pub async fn history(&self, id: &str) -> Option<History> {
        let w = self.flows.lock().get(id).cloned()?;
        Some(self.history_of(&w).await)
    }

    async fn history_of(&self, w: &FlowWatch) -> History {
        let mut executors = BTreeMap::new();
        let names: Vec<String> = w.state.lock().iter().map(|e| e.name.clone()).collect();
        let mut by_exec: HashMap<String, BTreeMap<String, Vec<String>>> = HashMap::new();
        for name in &names {
            for (replica, text) in w.runtime.logs(Some(name)).await {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(self.limits.log_lines);
                by_exec.entry(name.clone()).or_default().insert(
                    replica,
                    lines[from..].iter().map(|l| l.to_string()).collect(),
                );
            }
        }
        let st = w.state.lock();
        for e in st.iter() {
            executors.insert(
                e.name.clone(),
                ExecutorHistory {
                    autoscaled: e.autoscaled,
                    desired: w.runtime.desired(&e.name),
                    ready: w.runtime.ready_replicas(&e.name),
                    failure: w.runtime.failure(&e.name),
                    samples: e.samples.iter().copied().collect(),
                    cold_starts: e.cold_starts.iter().cloned().collect(),
                    decisions: e.decisions.iter().cloned().collect(),
                    events: e.events.iter().cloned().collect(),
                    logs: by_exec.remove(&e.name).unwrap_or_default(),
                },
            );
        }
        History {
            t: self.clock.now_ms(),
            window_ms: self.limits.window.as_millis() as u64,
            executors,
        }
    }

    /// Bytes held by the rings of every watched Flow (their buffers, and the strings of their
    /// events), for the memory figures.
    pub fn ring_bytes(&self) -> usize {
        let watches: Vec<Arc<FlowWatch>> = self.flows.lock().values().cloned().collect();
        watches
            .iter()
            .map(|w| {
                w.state
                    .lock()
                    .iter()
                    .map(|e| {
                        std::mem::size_of::<ExecState>()
                            + e.samples.buffer_bytes()
                            + e.cold_starts.buffer_bytes()
                            + e.decisions.buffer_bytes()
                            + e.events.buffer_bytes()
                            + e.decisions.iter().map(|d| d.reason.len()).sum::<usize>()
                            + e.events.iter().map(|d| d.text.len()).sum::<usize>()
                    })
                    .sum::<usize>()
            })
            .sum()
    }
}

/// Calls per second and p50/p99 since the previous sample, from the replica set's cumulative
/// durations (`prev` None: none before). An idle Executor allocates nothing.
fn rate(
    prev: &mut Option<Box<LatencySnapshot>>,
    now: LatencySnapshot,
    prev_t: Option<u32>,
    t: u32,
) -> (f32, f32, f32) {
    let d = match prev.as_deref() {
        Some(p) => now.since(p),
        None => now.clone(),
    };
    let n = d.total();
    if n == 0 {
        return (0.0, f32::NAN, f32::NAN);
    }
    let secs = prev_t.map_or(1, |pt| t.saturating_sub(pt).max(1));
    let out = (
        n as f32 / secs as f32,
        d.quantile_ms(0.5).unwrap_or(f64::NAN) as f32,
        d.quantile_ms(0.99).unwrap_or(f64::NAN) as f32,
    );
    match prev {
        Some(p) => **p = now,
        None => *prev = Some(Box::new(now)),
    }
    out
}

fn event_kind(ev: &RuntimeEvent) -> (&str, &'static str, Option<&str>) {
    match ev {
        RuntimeEvent::Scaling { executor, .. } => (executor, "scaling", None),
        RuntimeEvent::ReplicaStarting { executor, replica } => {
            (executor, "starting", Some(replica))
        }
        RuntimeEvent::ReplicaReady {
            executor, replica, ..
        } => (executor, "ready", Some(replica)),
        RuntimeEvent::ReplicaStopped { executor, replica } => (executor, "stopped", Some(replica)),
        RuntimeEvent::ReplicaCrashed {
            executor, replica, ..
        } => (executor, "crashed", Some(replica)),
        RuntimeEvent::ExecutorFailed { executor, .. } => (executor, "failed", None),
    }
}

/// How long ago a decision may have been made to count as the cause of a start from zero.
const DECISION_CAUSE_MS: u64 = 5_000;

/// Applies one runtime event to the Executor's state: cold starts begin at a scaling from zero
/// and end at the first ready replica (or a crash or failure before it).
fn on_event(e: &mut ExecState, ev: &RuntimeEvent, now: u64) -> Option<ColdStart> {
    match ev {
        RuntimeEvent::Scaling { from: 0, to, .. } if *to > 0 && e.autoscaled => {
            let cause = e.decisions.last().filter(|d| {
                d.from == 0 && d.to > 0 && now.saturating_sub(d.t) <= DECISION_CAUSE_MS
            });
            e.cold = Some(ColdRun {
                decided_at: cause.map(|d| d.t),
                reason: cause.map(|d| d.reason.clone()),
                scaling_at: now,
                starting_at: None,
                replica: None,
            });
            None
        }
        RuntimeEvent::ReplicaStarting { replica, .. } => {
            if let Some(c) = e.cold.as_mut()
                && c.starting_at.is_none()
            {
                c.starting_at = Some(now);
                c.replica = Some(replica.clone());
            }
            None
        }
        RuntimeEvent::ReplicaReady {
            replica,
            startup_ms,
            ..
        } => {
            let c = e.cold.take()?;
            let begin = c.decided_at.unwrap_or(c.scaling_at);
            let starting = c.starting_at.unwrap_or(c.scaling_at);
            let mut parts = vec![];
            if let Some(d) = c.decided_at {
                parts.push(Part {
                    what: "autoscaler decision to runtime scaling",
                    ms: c.scaling_at.saturating_sub(d),
                });
            }
            parts.push(Part {
                what: "runtime: scaling to replica process starting",
                ms: starting.saturating_sub(c.scaling_at),
            });
            let up = now.saturating_sub(starting);
            let serving = (*startup_ms).min(up);
            parts.push(Part {
                what: "replica: shim start to Executor serving",
                ms: serving,
            });
            parts.push(Part {
                what: "runtime: process spawn and readiness seen",
                ms: up - serving,
            });
            Some(ColdStart {
                t: now,
                replica: Some(replica.clone()),
                total_ms: now.saturating_sub(begin),
                parts,
                reason: c.reason,
                failed: None,
            })
        }
        RuntimeEvent::ReplicaCrashed {
            replica, output, ..
        } => {
            let c = e.cold.as_ref()?;
            let last = output.lines().rev().find(|l| !l.trim().is_empty());
            let failed = Some(format!(
                "replica {replica} crashed: {}",
                last.unwrap_or("(no output)")
            ));
            let begin = c.decided_at.unwrap_or(c.scaling_at);
            // The runtime retries: the cold start goes on, a new replica may still make it.
            Some(ColdStart {
                t: now,
                replica: Some(replica.clone()),
                total_ms: now.saturating_sub(begin),
                parts: vec![],
                reason: c.reason.clone(),
                failed,
            })
        }
        RuntimeEvent::ExecutorFailed { why, .. } => {
            let c = e.cold.take()?;
            let begin = c.decided_at.unwrap_or(c.scaling_at);
            Some(ColdStart {
                t: now,
                replica: c.replica,
                total_ms: now.saturating_sub(begin),
                parts: vec![],
                reason: c.reason,
                failed: Some(why.clone()),
            })
        }
        RuntimeEvent::Scaling { to: 0, .. } => {
            e.cold = None;
            None
        }
        _ => None,
    }
}

fn cut(s: &str, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Follows one Flow's runtime events and autoscaler decisions into its rings and live feed.
async fn follow(
    watch: std::sync::Weak<FlowWatch>,
    mut events: broadcast::Receiver<RuntimeEvent>,
    mut decisions: Option<broadcast::Receiver<Arc<ScaleDecision>>>,
    clock: Clock,
    limits: Limits,
) {
    use broadcast::error::RecvError;
    enum Got {
        Event(RuntimeEvent),
        Decision(Arc<ScaleDecision>),
    }
    loop {
        let got = tokio::select! {
            // Decisions first: the autoscaler tells one before the runtime scales for it, and
            // a cold start names the decision that caused it.
            biased;
            r = async {
                match decisions.as_mut() {
                    Some(d) => d.recv().await,
                    None => std::future::pending().await,
                }
            } => match r {
                Ok(d) => Got::Decision(d),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => {
                    decisions = None;
                    continue;
                }
            },
            r = events.recv() => match r {
                Ok(ev) => Got::Event(ev),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
        };
        let Some(w) = watch.upgrade() else { return };
        let now = clock.now_ms();
        match got {
            Got::Decision(d) => {
                let rec = DecisionRec {
                    t: now,
                    from: d.from,
                    to: d.to,
                    panic: d.panic,
                    reason: cut(&d.reason, limits.reason_chars),
                };
                if let Some(e) = FlowWatch::exec_mut(&mut w.state.lock(), &d.executor) {
                    // Told late (after the scaling it caused): still the cold start's cause.
                    if let Some(c) = e.cold.as_mut()
                        && c.reason.is_none()
                        && d.from == 0
                        && now.saturating_sub(c.scaling_at) <= DECISION_CAUSE_MS
                    {
                        c.reason = Some(rec.reason.clone());
                    }
                    e.decisions.push(rec.clone());
                }
                w.send(Live::Decision {
                    executor: d.executor.clone(),
                    decision: rec,
                });
            }
            Got::Event(ev) => {
                let (executor, kind, replica) = event_kind(&ev);
                let executor = executor.to_string();
                let rec = EventRec {
                    t: now,
                    kind,
                    replica: replica.map(str::to_string),
                    text: cut(&ev.to_string(), limits.reason_chars),
                };
                let cold = FlowWatch::exec_mut(&mut w.state.lock(), &executor).and_then(|e| {
                    e.events.push(rec.clone());
                    let c = on_event(e, &ev, now)?;
                    e.cold_starts.push(c.clone());
                    Some(c)
                });
                w.send(Live::Event {
                    executor: executor.clone(),
                    event: rec,
                });
                if let Some(c) = cold {
                    w.send(Live::ColdStart {
                        executor,
                        cold_start: c,
                    });
                }
            }
        }
    }
}

/// Lines of `current` after the last ones seen. `seen` is the end of what was seen before
/// (a few lines); the runtime keeps a bounded tail, so what was seen may have scrolled out:
/// then everything is new. Identical repeated lines can make a few lines count twice or not at
/// all; a log view can live with that.
fn new_lines<'a>(seen: &[String], current: &'a [&'a str]) -> &'a [&'a str] {
    if seen.is_empty() {
        return current;
    }
    let k = seen.len();
    if current.len() >= k {
        for end in (k..=current.len()).rev() {
            if current[end - k..end]
                .iter()
                .zip(seen)
                .all(|(a, b)| *a == b.as_str())
            {
                return &current[end..];
            }
        }
    }
    current
}

/// Lines kept per replica to find where the new output starts.
const ANCHOR_LINES: usize = 4;

/// While a page watches the Flow, reads its replicas' output each second and sends the new
/// lines; stops when the last page goes.
async fn follow_logs(
    watch: std::sync::Weak<FlowWatch>,
    baseline: HashMap<String, Vec<String>>,
    clock: Clock,
) {
    let anchor = |lines: &[&str]| -> Vec<String> {
        let from = lines.len().saturating_sub(ANCHOR_LINES);
        lines[from..].iter().map(|l| l.to_string()).collect()
    };
    let mut seen: HashMap<String, Vec<String>> = baseline
        .into_iter()
        .map(|(r, lines)| {
            let l: Vec<&str> = lines.iter().map(String::as_str).collect();
            (r, anchor(&l))
        })
        .collect();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(w) = watch.upgrade() else { return };
        {
            let mut live = w.live.lock();
            if live.as_ref().is_none_or(|tx| tx.receiver_count() == 0) {
                *live = None;
                return;
            }
        }
        let names: Vec<String> = w.state.lock().iter().map(|e| e.name.clone()).collect();
        for name in names {
            for (replica, text) in w.runtime.logs(Some(&name)).await {
                let lines: Vec<&str> = text.lines().collect();
                let before = seen.get(&replica).map(Vec::as_slice).unwrap_or(&[]);
                let fresh = new_lines(before, &lines);
                if fresh.is_empty() {
                    continue;
                }
                let fresh: Vec<String> = fresh.iter().map(|l| l.to_string()).collect();
                seen.insert(replica.clone(), anchor(&lines));
                w.send(Live::Log {
                    t: clock.now_ms(),
                    executor: name.clone(),
                    replica,
                    lines: fresh,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
