//! The local runtime: every replica of every shard is a `zeroflow-shim` process wrapping the
//! Executor's command, on this machine. Readiness is pushed: the shim prints its ready line the
//! moment the Executor serves, so nothing here polls. Split by job: [`command`] builds what a
//! replica runs, [`process`] runs one replica, [`zygote`] keeps the Python zygotes replicas fork
//! from, `plan` decides what each Executor's reconcile loop does; this module wires them behind
//! [`Runtime`]. It must not decide how many replicas an Executor wants (the autoscaler and the
//! control plane do) nor serve requests (the gateway and the activator do).

pub mod command;
mod plan;
pub mod process;
pub mod zygote;

pub use crate::runtime::RuntimeEvent;
pub use command::{
    ReplicaCommand, check_program, executor_command, jina_executor_args, locate, workspace,
};
pub use process::{LogBook, ReplicaProcess, start_replica, start_replica_logged};
pub use zygote::ZygotePool;

use crate::runtime::{InitialReplicas, Runtime};
use parking_lot::Mutex;
use plan::{Action, End, Failures, Report, SlotView, plan};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use zeroflow_activator::ReplicaSet;
use zeroflow_spec::{Executor, Flow};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("Executor {executor} uses {uses}, which the local runtime cannot run: {why}")]
    Unsupported {
        executor: String,
        uses: String,
        why: String,
    },
    #[error("Executor {executor} cannot run: `{program}` {why}. {hint}")]
    NotFound {
        executor: String,
        program: String,
        why: String,
        hint: String,
    },
    #[error("cannot start replica {replica} of Executor {executor}: {source}")]
    Spawn {
        executor: String,
        replica: String,
        source: std::io::Error,
    },
    #[error(
        "replica {replica} of Executor {executor} failed to start: it exited before it served ({status}). Last lines of its output:\n{tail}"
    )]
    Failed {
        executor: String,
        replica: String,
        status: String,
        tail: String,
    },
    #[error(
        "replica {replica} of Executor {executor} printed a malformed ready line ({why}): {line:?}. Are jc and zeroflow-shim from the same build?"
    )]
    BadReadyLine {
        executor: String,
        replica: String,
        line: String,
        why: zeroflow_contract::ReadyLineError,
    },
    #[error(
        "replica {replica} of Executor {executor} was not ready within {timeout:?}. Last lines of its output:\n{tail}"
    )]
    Timeout {
        executor: String,
        replica: String,
        timeout: Duration,
        tail: String,
    },
}

/// Where the local runtime finds its programs, and how long it waits.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The `zeroflow-shim` binary.
    pub shim: PathBuf,
    /// Directory searched first for a bare program name in an Executor's `command`.
    pub bin_dir: Option<PathBuf>,
    /// The `jina` command for Python Executors.
    pub jina: PathBuf,
    /// The Flow file's folder: relative `uses:` and `py_modules` are resolved from here.
    pub flow_dir: PathBuf,
    /// Scratch folder for generated Executor configs.
    pub work_dir: PathBuf,
    pub startup_timeout: Duration,
    pub drain_timeout: Duration,
    /// Extra environment for every Executor (secrets, `.env`).
    pub env: HashMap<String, String>,
    /// Where Executors keep their state when the Flow names no `workspace` (a relative one goes
    /// under it). None: a relative `workspace` is resolved from the Flow's folder, and without
    /// one Jina's default applies.
    pub workspace: Option<PathBuf>,
    /// The zygotes `jina executor` replicas fork from, having imported jina once: a Python
    /// Executor's cold start without Jina's 1.4 s import. The pool belongs to whoever runs the
    /// Flows (`jc flow serve`, `jc server`), which stops it; None: every replica starts its
    /// own interpreter. [`LocalOptions::discover`] leaves it None.
    pub zygotes: Option<Arc<ZygotePool>>,
}

impl LocalOptions {
    /// Finds `zeroflow-shim` next to the running binary and `jina` on PATH (or `ZEROFLOW_JINA`).
    pub fn discover(flow_dir: PathBuf, work_dir: PathBuf) -> Self {
        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let shim = std::env::var_os("ZEROFLOW_SHIM")
            .map(PathBuf::from)
            .or_else(|| {
                bin_dir
                    .as_ref()
                    .map(|d| d.join("zeroflow-shim"))
                    .filter(|p| p.exists())
            })
            .unwrap_or_else(|| PathBuf::from("zeroflow-shim"));
        let jina = std::env::var_os("ZEROFLOW_JINA")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("jina"));
        LocalOptions {
            shim,
            bin_dir,
            jina,
            flow_dir,
            work_dir,
            startup_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(30),
            env: HashMap::new(),
            workspace: None,
            zygotes: None,
        }
    }
}

/// One replica set per shard of `exec`, the gateway's view of its replicas, with its throttle
/// settings and the activator's metrics: every runtime builds them alike.
pub fn replica_sets(
    exec: &Executor,
    settings: impl Fn(&Executor) -> zeroflow_activator::ThrottleSettings,
    metrics: Option<&zeroflow_activator::ActivatorMetrics>,
) -> Vec<Arc<ReplicaSet>> {
    (0..exec.shards)
        .map(|_| {
            let mut rs = ReplicaSet::new(&exec.name, exec.retries).with_settings(settings(exec));
            if let Some(m) = metrics {
                rs = rs.with_metrics(m.clone());
            }
            Arc::new(rs)
        })
        .collect()
}

/// An `external: true` Executor is one replica at its address in every shard's set: the gateway
/// calls it as it calls a local replica, and nothing here starts, scales or stops it. Every
/// runtime does the same for them.
pub fn add_external(
    exec: &Executor,
    addr: &zeroflow_spec::ExternalAddress,
    sets: &[Arc<ReplicaSet>],
) -> Result<(), RuntimeError> {
    let unsupported = |why: String| RuntimeError::Unsupported {
        executor: exec.name.clone(),
        uses: format!("an external address ({}:{})", addr.host, addr.port),
        why,
    };
    if addr.tls {
        return Err(unsupported(
            "`tls: true` is not supported for external Executors yet; Zeroflow calls them over \
             plain HTTP/2 (h2c)"
                .into(),
        ));
    }
    let hostport = |host: &str, port: u16| {
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    };
    if !addr.shards.is_empty() && addr.shards.len() != sets.len() {
        return Err(unsupported(format!(
            "{} shard addresses were given for {} shards; give one per shard",
            addr.shards.len(),
            sets.len()
        )));
    }
    for (i, set) in sets.iter().enumerate() {
        let at = match addr.shards.get(i) {
            Some((host, port)) => hostport(host, *port),
            None => hostport(&addr.host, addr.port),
        };
        set.add_replica(&format!("{}-external-{i}", exec.name), &at)
            .map_err(|e| unsupported(e.message().to_string()))?;
    }
    Ok(())
}

/// A replica the runtime tracks: starting, ready, or stopping.
struct Slot {
    id: String,
    shard: u32,
    admin: Option<String>,
    ready: bool,
    /// Taken when the replica is told to stop.
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Debug)]
enum ReplicaEnd {
    Stopped,
    StartFailed(String),
    Crashed { output: String, ran: Duration },
}

impl ReplicaEnd {
    /// What the plan sees, and the replica's last output.
    fn split(self) -> (End, String) {
        match self {
            ReplicaEnd::Stopped => (End::Stopped, String::new()),
            ReplicaEnd::StartFailed(output) => (End::StartFailed, output),
            ReplicaEnd::Crashed { output, ran } => (End::Crashed { ran }, output),
        }
    }
}

/// One Executor of the runtime: its replica sets (one per shard, shared with the gateway), the
/// count asked for, and its replicas.
struct ExecRuntime {
    exec: Executor,
    sets: Vec<Arc<ReplicaSet>>,
    desired: tokio::sync::watch::Sender<u32>,
    slots: Mutex<Vec<Slot>>,
    next_id: std::sync::atomic::AtomicU64,
    failed: Mutex<Option<String>>,
    logs: LogBook,
}

impl ExecRuntime {
    fn new(exec: &Executor, sets: Vec<Arc<ReplicaSet>>, logs: LogBook) -> Self {
        ExecRuntime {
            exec: exec.clone(),
            sets,
            desired: tokio::sync::watch::channel(0).0,
            slots: Mutex::new(vec![]),
            next_id: std::sync::atomic::AtomicU64::new(0),
            failed: Mutex::new(None),
            logs,
        }
    }

    /// A new replica of `shard`, starting: its id and the receiver of its stop signal.
    fn add_slot(&self, slots: &mut Vec<Slot>, shard: u32) -> (String, oneshot::Receiver<()>) {
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = if self.exec.shards > 1 {
            format!("{}-{shard}-{n}", self.exec.name)
        } else {
            format!("{}-{n}", self.exec.name)
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        slots.push(Slot {
            id: id.clone(),
            shard,
            admin: None,
            ready: false,
            stop: Some(stop_tx),
        });
        (id, stop_rx)
    }

    fn mark_ready(&self, id: &str, admin: &str) {
        if let Some(s) = self.slots.lock().iter_mut().find(|s| s.id == id) {
            s.ready = true;
            s.admin = Some(admin.to_string());
        }
    }

    /// The Executor cannot run: every shard's callers are told why, and nothing is retried.
    fn give_up(&self, failures: u32, output: &str, events: &broadcast::Sender<RuntimeEvent>) {
        let why = format!("its replicas failed {failures} times in a row. Last output:\n{output}");
        *self.failed.lock() = Some(why.clone());
        for s in &self.sets {
            s.set_failure(Some(why.clone()));
        }
        let _ = events.send(RuntimeEvent::ExecutorFailed {
            executor: self.exec.name.clone(),
            why,
        });
    }
}

/// One replica to run, as the reconcile loop hands it to a [`Launcher`]. Its task must end by
/// sending how the replica ended on `ended`.
struct Launch {
    rt: Arc<ExecRuntime>,
    id: String,
    shard: u32,
    stop: oneshot::Receiver<()>,
    ended: mpsc::UnboundedSender<(String, ReplicaEnd)>,
    events: broadcast::Sender<RuntimeEvent>,
}

/// Runs the replicas the reconcile loop starts: shim processes here ([`Processes`]); scripted
/// replicas in the loop's tests, which run on paused time.
trait Launcher: Send + Sync {
    fn launch(&self, replica: Launch);
}

/// Replicas as `zeroflow-shim` processes.
struct Processes {
    opts: Arc<LocalOptions>,
}

impl Launcher for Processes {
    fn launch(&self, replica: Launch) {
        tokio::spawn(run_replica(replica, self.opts.clone()));
    }
}

/// Runs a Flow's Executors as shim processes and scales each to the replica count it is told.
pub struct LocalRuntime {
    opts: Arc<LocalOptions>,
    execs: Vec<Arc<ExecRuntime>>,
    /// `external: true` Executors: served from their address, never started or scaled here.
    external: Vec<(String, Vec<Arc<ReplicaSet>>)>,
    events: tokio::sync::broadcast::Sender<RuntimeEvent>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    logs: LogBook,
}

impl LocalRuntime {
    /// Checks that every Executor can run here, and builds the replica sets the gateway uses.
    /// Nothing starts until [`LocalRuntime::start`].
    pub fn new(
        flow: &Flow,
        opts: LocalOptions,
        settings: impl Fn(&Executor) -> zeroflow_activator::ThrottleSettings,
        metrics: Option<zeroflow_activator::ActivatorMetrics>,
    ) -> Result<Self, RuntimeError> {
        let mut execs = vec![];
        let mut external = vec![];
        let logs = LogBook::default();
        for exec in &flow.executors {
            let sets = replica_sets(exec, &settings, metrics.as_ref());
            if let Some(addr) = &exec.external {
                add_external(exec, addr, &sets)?;
                external.push((exec.name.clone(), sets));
                continue;
            }
            let cmd = executor_command(exec, 0, &opts)?;
            cmd.write_files().map_err(|e| RuntimeError::Spawn {
                executor: exec.name.clone(),
                replica: "-".into(),
                source: e,
            })?;
            check_program(exec, &cmd.argv, &opts)?;
            execs.push(Arc::new(ExecRuntime::new(exec, sets, logs.clone())));
        }
        let (events, _) = tokio::sync::broadcast::channel(1024);
        Ok(LocalRuntime {
            opts: Arc::new(opts),
            execs,
            external,
            events,
            tasks: Mutex::new(vec![]),
            logs,
        })
    }

    fn find(&self, executor: &str) -> Option<&Arc<ExecRuntime>> {
        self.execs.iter().find(|e| e.exec.name == executor)
    }
}

#[async_trait::async_trait]
impl Runtime for LocalRuntime {
    /// Output of every replica (running or recently stopped) by replica id, for one Executor
    /// or, with None, for all.
    async fn logs(&self, executor: Option<&str>) -> BTreeMap<String, String> {
        self.logs.snapshot(executor)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    /// Per Executor, one replica set per shard, for the gateway.
    fn shards(&self) -> HashMap<String, Vec<Arc<ReplicaSet>>> {
        self.execs
            .iter()
            .map(|e| (e.exec.name.clone(), e.sets.clone()))
            .chain(self.external.iter().cloned())
            .collect()
    }

    /// Starts the reconcile loop of every Executor with its initial replica count.
    fn start(&self, initial: &InitialReplicas) {
        // The zygote imports jina now, so that a Python Executor's first wake-up (often from
        // zero, seconds after the Flow starts) finds it ready.
        if let Some(zygotes) = &self.opts.zygotes
            && self.execs.iter().any(|e| e.exec.command.is_none())
        {
            zygotes.socket(&self.opts);
        }
        let launcher: Arc<dyn Launcher> = Arc::new(Processes {
            opts: self.opts.clone(),
        });
        for e in &self.execs {
            e.desired.send_replace(initial(&e.exec));
            let task = tokio::spawn(reconcile_loop(
                e.clone(),
                launcher.clone(),
                self.events.clone(),
            ));
            self.tasks.lock().push(task);
        }
    }

    /// Sets the replica count (per shard) of one Executor.
    fn scale(&self, executor: &str, desired: u32) {
        if let Some(e) = self.find(executor) {
            let from = *e.desired.borrow();
            if from != desired {
                e.desired.send_replace(desired);
                let _ = self.events.send(RuntimeEvent::Scaling {
                    executor: executor.into(),
                    from,
                    to: desired,
                });
            }
        }
    }

    fn desired(&self, executor: &str) -> u32 {
        self.find(executor).map_or(0, |e| *e.desired.borrow())
    }

    /// Replicas serving now (of the first shard; shards scale together).
    fn ready_replicas(&self, executor: &str) -> u32 {
        self.find(executor).map_or(0, |e| {
            e.slots
                .lock()
                .iter()
                .filter(|s| s.ready && s.shard == 0)
                .count() as u32
        })
    }

    fn replica_count(&self, executor: &str) -> u32 {
        self.find(executor)
            .map_or(0, |e| e.slots.lock().len() as u32)
    }

    fn failure(&self, executor: &str) -> Option<String> {
        self.find(executor).and_then(|e| e.failed.lock().clone())
    }

    /// Admin addresses (`/stats`) of the ready replicas, by Executor.
    fn stats_targets(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        for e in &self.execs {
            for s in e.slots.lock().iter() {
                if let (true, Some(a)) = (s.ready, &s.admin) {
                    out.push((e.exec.name.clone(), a.clone()));
                }
            }
        }
        out
    }

    /// Waits until each Executor has its desired replicas ready, or one failed.
    async fn wait_settled(&self, timeout: Duration) -> Result<(), String> {
        let mut events = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.execs.iter().find_map(|e| {
                e.failed
                    .lock()
                    .clone()
                    .map(|w| format!("Executor {}: {w}", e.exec.name))
            }) {
                return Err(e);
            }
            let settled = self.execs.iter().all(|e| {
                let want = *e.desired.borrow() as usize * e.sets.len();
                let slots = e.slots.lock();
                slots.iter().filter(|s| s.ready).count() == want && slots.len() == want
            });
            if settled {
                return Ok(());
            }
            tokio::select! {
                _ = events.recv() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(format!("replicas were not ready within {timeout:?}")),
            }
        }
    }

    /// Scales everything to zero and waits for every replica to drain and exit.
    async fn shutdown(&self, timeout: Duration) {
        for e in &self.execs {
            e.desired.send_replace(0);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.subscribe();
        while self.execs.iter().any(|e| !e.slots.lock().is_empty()) {
            tokio::select! {
                _ = events.recv() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("replicas still running after {timeout:?}; they are killed with jc");
                    break;
                }
            }
        }
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

/// Keeps one Executor at its desired replicas: carries out what [`plan`] decides each time the
/// count asked for changes, a replica ends, or a backoff is over.
async fn reconcile_loop(
    rt: Arc<ExecRuntime>,
    launcher: Arc<dyn Launcher>,
    events: broadcast::Sender<RuntimeEvent>,
) {
    let mut desired_rx = rt.desired.subscribe();
    let (end_tx, mut end_rx) = mpsc::unbounded_channel::<(String, ReplicaEnd)>();
    let mut failures = Failures::default();
    loop {
        let desired = *desired_rx.borrow_and_update();
        let mut wake_at = None;
        {
            let mut slots = rt.slots.lock();
            let view: Vec<SlotView> = slots
                .iter()
                .map(|s| SlotView {
                    id: &s.id,
                    shard: s.shard,
                    ready: s.ready,
                    stopping: s.stop.is_none(),
                })
                .collect();
            let actions = plan(
                &view,
                rt.exec.shards,
                desired,
                &failures,
                tokio::time::Instant::now(),
            );
            for action in actions {
                match action {
                    Action::Start { shard, count } => {
                        for _ in 0..count {
                            let (id, stop) = rt.add_slot(&mut slots, shard);
                            let _ = events.send(RuntimeEvent::ReplicaStarting {
                                executor: rt.exec.name.clone(),
                                replica: id.clone(),
                            });
                            launcher.launch(Launch {
                                rt: rt.clone(),
                                id,
                                shard,
                                stop,
                                ended: end_tx.clone(),
                                events: events.clone(),
                            });
                        }
                    }
                    Action::Stop { id, shard } => {
                        if let Some(tx) = slots
                            .iter_mut()
                            .find(|s| s.id == id)
                            .and_then(|s| s.stop.take())
                        {
                            // Out of rotation first, so no new request goes to a draining
                            // replica.
                            rt.sets[shard as usize].remove_replica(&id);
                            let _ = tx.send(());
                        }
                    }
                    Action::HoldUntil(t) => wake_at = Some(t),
                    // Only a replica's end gives up (below).
                    Action::MarkFailed { .. } => {}
                }
            }
        }
        tokio::select! {
            r = desired_rx.changed() => { if r.is_err() { return; } }
            Some((id, end)) = end_rx.recv() => {
                let was_stopping = {
                    let mut slots = rt.slots.lock();
                    let pos = slots.iter().position(|s| s.id == id);
                    pos.map(|p| slots.remove(p).stop.is_none()).unwrap_or(true)
                };
                let (end, output) = end.split();
                let (report, action) = failures.on_end(end, was_stopping, tokio::time::Instant::now());
                let executor = rt.exec.name.clone();
                let _ = events.send(match report {
                    Report::Stopped => RuntimeEvent::ReplicaStopped { executor, replica: id },
                    Report::Crashed => RuntimeEvent::ReplicaCrashed { executor, replica: id, output: output.clone() },
                });
                if let Some(Action::MarkFailed { failures }) = action {
                    rt.give_up(failures, &output, &events);
                }
            }
            _ = async { match wake_at { Some(t) => tokio::time::sleep_until(t).await, None => futures::future::pending().await } } => {}
        }
    }
}

/// One replica's life: its process starts, joins its shard's set once ready, and is stopped
/// (drained) or found dead; how it ended goes back to the loop.
async fn run_replica(replica: Launch, opts: Arc<LocalOptions>) {
    let Launch {
        rt,
        id,
        shard,
        mut stop,
        ended,
        events,
    } = replica;
    let started = tokio::time::Instant::now();
    let proc = tokio::select! {
        p = start_replica_logged(&rt.exec, &id, shard, &opts, Some(rt.logs.clone())) => p,
        // Dropping the half-started process kills its shim (kill_on_drop); the Executor
        // follows through its parent-death signal.
        _ = &mut stop => { let _ = ended.send((id, ReplicaEnd::Stopped)); return; }
    };
    let mut proc = match proc {
        Ok(p) => p,
        Err(e) => {
            let _ = ended.send((id, ReplicaEnd::StartFailed(e.to_string())));
            return;
        }
    };
    let set = &rt.sets[shard as usize];
    if let Err(e) = set.add_replica(&id, &proc.grpc_addr) {
        let _ = ended.send((id, ReplicaEnd::StartFailed(e.to_string())));
        return;
    }
    if set.endpoints().is_none() {
        // Learn the endpoints (for `/openapi.json` and routing) from the first replica that runs,
        // once the requests that woke it are answered: a Python Executor serves one call at a
        // time, and discovery first would add its time to the cold start (measured: ~10 ms).
        let set = set.clone();
        tokio::spawn(async move {
            set.quiet(Duration::from_secs(1)).await;
            if let Err(e) = set.discover().await {
                tracing::debug!(executor = %set.executor(), error = %e.message(), "endpoint discovery failed");
            }
        });
    }
    rt.mark_ready(&id, &proc.admin_addr);
    let ready_at = tokio::time::Instant::now();
    let _ = events.send(RuntimeEvent::ReplicaReady {
        executor: rt.exec.name.clone(),
        replica: id.clone(),
        startup_ms: ready_at.duration_since(started).as_millis() as u64,
    });
    let crashed = tokio::select! {
        _ = proc.wait() => true,
        _ = &mut stop => false,
    };
    set.remove_replica(&id);
    if crashed {
        let output = proc.output_tail();
        let _ = ended.send((
            id,
            ReplicaEnd::Crashed {
                output,
                ran: ready_at.elapsed(),
            },
        ));
    } else {
        proc.stop(opts.drain_timeout + Duration::from_secs(15))
            .await;
        let _ = ended.send((id, ReplicaEnd::Stopped));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// What one scripted replica does.
    #[derive(Clone, Copy)]
    enum Script {
        /// Never becomes ready: fails after this long.
        FailStart(Duration),
        /// Ready after the first, then crashes after the second (None: serves until stopped).
        Serve(Duration, Option<Duration>),
    }

    /// Replicas that follow a script, on tokio's (paused) clock: what the loop does with time
    /// (backoff, giving up, which replica a scale-down stops) is tested here without processes;
    /// real shims are in tests/tests/flow_serve.rs and scale_to_zero.rs.
    struct Scripted {
        script: Box<dyn Fn(usize) -> Script + Send + Sync>,
        launched: Mutex<Vec<(String, Instant)>>,
    }

    impl Launcher for Scripted {
        fn launch(&self, r: Launch) {
            let script = {
                let mut launched = self.launched.lock();
                launched.push((r.id.clone(), Instant::now()));
                (self.script)(launched.len() - 1)
            };
            tokio::spawn(async move {
                let Launch {
                    rt,
                    id,
                    mut stop,
                    ended,
                    events,
                    ..
                } = r;
                let end = match script {
                    Script::FailStart(after) => tokio::select! {
                        _ = tokio::time::sleep(after) => ReplicaEnd::StartFailed(format!("{id} cannot start")),
                        _ = &mut stop => ReplicaEnd::Stopped,
                    },
                    Script::Serve(ready, crash) => {
                        tokio::select! {
                            _ = tokio::time::sleep(ready) => {}
                            _ = &mut stop => { let _ = ended.send((id, ReplicaEnd::Stopped)); return; }
                        }
                        rt.mark_ready(&id, "127.0.0.1:1");
                        let _ = events.send(RuntimeEvent::ReplicaReady {
                            executor: rt.exec.name.clone(),
                            replica: id.clone(),
                            startup_ms: ready.as_millis() as u64,
                        });
                        let ready_at = Instant::now();
                        let crashed = async {
                            match crash {
                                Some(after) => tokio::time::sleep(after).await,
                                None => futures::future::pending().await,
                            }
                        };
                        tokio::select! {
                            _ = crashed => ReplicaEnd::Crashed { output: format!("{id} crashed"), ran: ready_at.elapsed() },
                            _ = &mut stop => ReplicaEnd::Stopped,
                        }
                    }
                };
                let _ = ended.send((id, end));
            });
        }
    }

    struct Looping {
        rt: Arc<ExecRuntime>,
        scripted: Arc<Scripted>,
        events: broadcast::Receiver<RuntimeEvent>,
        start: Instant,
    }

    impl Looping {
        /// The launch times so far, from the loop's start.
        fn launched_at(&self) -> Vec<Duration> {
            let launched = self.scripted.launched.lock();
            launched.iter().map(|(_, t)| *t - self.start).collect()
        }

        /// Waits (an hour of paused time at most) for the first event `pick` takes.
        async fn until<T>(&mut self, mut pick: impl FnMut(&RuntimeEvent) -> Option<T>) -> T {
            let wait = async {
                loop {
                    match self.events.recv().await {
                        Ok(ev) => {
                            if let Some(x) = pick(&ev) {
                                return x;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => panic!("the events ended"),
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(3600), wait)
                .await
                .expect("the event within an hour of paused time")
        }
    }

    /// One Executor `a` at `desired` replicas, its replicas following `script(n)`.
    fn looping(desired: u32, script: impl Fn(usize) -> Script + Send + Sync + 'static) -> Looping {
        let flow = zeroflow_spec::load(
            "jtype: Flow\nexecutors:\n  - name: a\n",
            &zeroflow_spec::Source::default(),
        )
        .expect("loads")
        .flow;
        let exec = &flow.executors[0];
        let sets = vec![Arc::new(ReplicaSet::new("a", exec.retries))];
        let rt = Arc::new(ExecRuntime::new(exec, sets, LogBook::default()));
        let scripted = Arc::new(Scripted {
            script: Box::new(script),
            launched: Mutex::new(vec![]),
        });
        let (events, rx) = broadcast::channel(1024);
        rt.desired.send_replace(desired);
        let start = Instant::now();
        tokio::spawn(reconcile_loop(rt.clone(), scripted.clone(), events));
        Looping {
            rt,
            scripted,
            events: rx,
            start,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_never_starts_is_retried_with_backoff_then_the_executor_fails() {
        let mut l = looping(1, |_| Script::FailStart(ms(50)));
        let why = l
            .until(|ev| match ev {
                RuntimeEvent::ExecutorFailed { why, .. } => Some(why.clone()),
                _ => None,
            })
            .await;
        assert!(
            why.contains("failed 5 times in a row") && why.contains("a-4 cannot start"),
            "{why}"
        );
        // Each start fails 50 ms in; the next waits 200, 400, 800, 1600 ms after that.
        assert_eq!(
            l.launched_at(),
            [ms(0), ms(250), ms(700), ms(1550), ms(3200)]
        );
        assert_eq!(l.rt.failed.lock().as_deref(), Some(why.as_str()));
        // Given up: nothing starts again, however long it waits.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(l.launched_at().len(), 5);
        assert!(l.rt.slots.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_served_a_while_before_crashing_is_replaced_without_giving_up() {
        let mut l = looping(1, |_| Script::Serve(ms(10), Some(Duration::from_secs(31))));
        l.until(|ev| {
            matches!(ev, RuntimeEvent::ReplicaStarting { replica, .. } if replica == "a-7")
                .then_some(())
        })
        .await;
        // Ready at 10 ms, crashed 31 s later, replaced 200 ms after: a first failure each time.
        let cycle = ms(10) + Duration::from_secs(31) + ms(200);
        let want: Vec<Duration> = (0..8).map(|n| cycle * n).collect();
        assert_eq!(l.launched_at(), want);
        assert!(l.rt.failed.lock().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn scaling_down_stops_the_starting_replica_then_the_newest_ready_one() {
        // a-0 ready at 10 ms, a-1 at 20 ms, a-2 still starting (an hour); later ones at 10 ms.
        let ready = [ms(10), ms(20), Duration::from_secs(3600)];
        let mut l = looping(3, move |n| {
            Script::Serve(ready.get(n).copied().unwrap_or(ms(10)), None)
        });
        l.until(|ev| {
            matches!(ev, RuntimeEvent::ReplicaReady { replica, .. } if replica == "a-1")
                .then_some(())
        })
        .await;
        l.rt.desired.send_replace(1);
        let mut stopped = vec![];
        l.until(|ev| {
            if let RuntimeEvent::ReplicaStopped { replica, .. } = ev {
                stopped.push(replica.clone());
            }
            (stopped.len() == 2).then_some(())
        })
        .await;
        stopped.sort();
        assert_eq!(stopped, ["a-1", "a-2"]);
        let left: Vec<String> = l.rt.slots.lock().iter().map(|s| s.id.clone()).collect();
        assert_eq!(left, ["a-0"], "the oldest ready replica stays");
        // And back up: a new replica, not a restarted one.
        l.rt.desired.send_replace(2);
        l.until(|ev| {
            matches!(ev, RuntimeEvent::ReplicaReady { replica, .. } if replica == "a-3")
                .then_some(())
        })
        .await;
        assert_eq!(l.launched_at().len(), 4);
    }
}
