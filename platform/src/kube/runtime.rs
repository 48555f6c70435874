//! The gateway's runtime on Kubernetes: one Flow's Executors as the controller made them (one
//! Deployment and headless Service per shard, in the Flow's namespace), seen through
//! [`Runtime`]. It learns each shard's ready replicas from a watch of its EndpointSlices (so a
//! request waiting at zero is released the moment the slice shows a ready pod) and scales an
//! Executor by patching its Deployments' `scale` subresource. It must not create, change or
//! delete the cluster's objects otherwise (the controller does), nor decide scaling (the
//! autoscaler does).

use crate::kube::names;
use crate::runtime::{InitialReplicas, Runtime, RuntimeEvent};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, LogParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use zeroflow_activator::{ActivatorMetrics, ReplicaSet, ThrottleSettings};
use zeroflow_spec::{Executor, Flow};

/// The client [`KubeRuntime::new`] and [`read_flow`] take, for crates that do not depend on kube.
pub use kube::Client;

/// The label the EndpointSlice controller puts on every slice of a Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How often a starting pod's shim is asked whether it is ready.
const PROBE_EVERY: Duration = Duration::from_millis(15);
/// The longest wait for one answer of a probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a starting pod is probed before it is left to the kubelet's probe (the shim's own
/// startup timeout).
const PROBE_FOR: Duration = Duration::from_secs(600);

/// Lines of each pod's output that [`Runtime::logs`] returns.
const LOG_TAIL_LINES: i64 = 1000;

/// Waiting reasons of a container that mean it cannot run until something changes.

#[derive(Debug, thiserror::Error)]
pub enum KubeRuntimeError {
    #[error("cannot read Deployment {name} in namespace {namespace}: {source}")]
    ReadDeployment {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot read the Flow resource {name} (flows.zeroflow.dev) in namespace {namespace}: {source}"
    )]
    ReadFlow {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("there is no Flow resource {name} (flows.zeroflow.dev) in namespace {namespace}")]
    NoFlow { namespace: String, name: String },
    #[error(transparent)]
    External(#[from] crate::local::RuntimeError),
}

/// The spec of the Flow resource `name` in `namespace`: what the Flow's gateway serves (its YAML
/// and `.env` context, loaded with the spec crate as `jc flow serve` loads a file).
pub async fn read_flow(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<crate::kube::crd::FlowSpec, KubeRuntimeError> {
    let api: Api<crate::kube::crd::FlowResource> = Api::namespaced(client, namespace);
    match api.get_opt(name).await {
        Ok(Some(f)) => Ok(f.spec),
        Ok(None) => Err(KubeRuntimeError::NoFlow {
            namespace: namespace.into(),
            name: name.into(),
        }),
        Err(source) => Err(KubeRuntimeError::ReadFlow {
            namespace: namespace.into(),
            name: name.into(),
            source,
        }),
    }
}

/// One endpoint of an EndpointSlice: the replica's id (its pod's name) and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    pub id: String,
    pub ip: String,
}

/// The endpoints of one EndpointSlice, as the activator sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceEndpoints {
    /// `conditions.ready` true: replicas now.
    pub ready: Vec<PodEndpoint>,
    /// Not ready (or not said) and not terminating: pods still starting, whose shim the runtime
    /// probes itself, since the kubelet's probe (at most once a second) would add its period to
    /// every wake-up from zero.
    pub starting: Vec<PodEndpoint>,
}

/// Sorts the endpoints of `slice`. Terminating ones are dropped (they drain, and take no new
/// request). An endpoint is named by its pod (`targetRef`), else by its address (a slice someone
/// wrote by hand). FQDN slices are skipped: the activator calls addresses.
pub fn slice_endpoints(slice: &EndpointSlice) -> SliceEndpoints {
    let mut out = SliceEndpoints::default();
    if slice.address_type == "FQDN" {
        return out;
    }
    for e in slice.endpoints.iter().flatten() {
        // Every address of one endpoint is the same pod: the first is enough.
        let Some(ip) = e.addresses.first() else {
            continue;
        };
        let (ready, terminating) = e
            .conditions
            .as_ref()
            .map_or((None, None), |c| (c.ready, c.terminating));
        if terminating == Some(true) {
            continue;
        }
        let id = e
            .target_ref
            .as_ref()
            .and_then(|r| r.name.clone())
            .unwrap_or_else(|| ip.clone());
        let ep = PodEndpoint { id, ip: ip.clone() };
        if ready == Some(true) {
            out.ready.push(ep);
        } else {
            out.starting.push(ep);
        }
    }
    out
}

/// `ip:port`, with an IPv6 address in brackets.
pub fn host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') && !ip.starts_with('[') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Why `pod` cannot run its Executor, if it is stuck (the status's judgement, one owner: a
/// waiting reason that will not pass by itself, a pod the scheduler cannot place, a failed pod),
/// with the container's last exit (e.g. OOMKilled).
pub fn pod_failure(pod: &Pod) -> Option<String> {
    let f = crate::kube::status::pod_failure(pod, k8s_openapi::jiff::Timestamp::now())?;
    let mut why = f.to_string();
    let last = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| Some(&c.name) == f.container.as_ref()))
        .and_then(|c| {
            let t = c.last_state.as_ref()?.terminated.as_ref()?;
            Some((t.clone(), c.restart_count))
        });
    if let Some((t, restarts)) = last {
        why.push_str(&format!(
            " (last exit: {}, code {}, after {restarts} restart(s))",
            t.reason.as_deref().unwrap_or("Error"),
            t.exit_code,
        ));
    }
    Some(why)
}

/// One shard's Deployment and headless Service (same name), and its replicas.
struct Shard {
    object: String,
    set: Arc<ReplicaSet>,
    state: Mutex<ShardState>,
    discovering: Arc<AtomicBool>,
}

#[derive(Default)]
struct ShardState {
    /// What the slices say is ready.
    slice_ready: Vec<PodEndpoint>,
    /// Starting endpoints whose `/ready` is being probed, by id: their address and the probe.
    probing: HashMap<String, (String, tokio::task::JoinHandle<()>)>,
    /// Endpoints whose `/ready` answered before their slice said they are ready: id -> address
    /// and when.
    probed: HashMap<String, (String, Instant)>,
    /// The replicas handed to the replica set: `slice_ready` and `probed`, by id.
    replicas: Vec<PodEndpoint>,
}

impl ShardState {
    fn stop_probes(&mut self) {
        for (_, (_, probe)) in self.probing.drain() {
            probe.abort();
        }
    }
}

struct Exec {
    name: String,
    /// The value of its pods' `zeroflow.dev/executor` label.
    label: String,
    shards: Vec<Shard>,
    desired: tokio::sync::watch::Sender<u32>,
    failure: Mutex<Option<String>>,
}

/// What the runtime keeps of a pod.
struct PodInfo {
    exec: usize,
    created: Option<Timestamp>,
    /// When the watch first saw it, if it appeared while the watch ran (the creation time has
    /// only whole seconds).
    seen: Option<Instant>,
    restarts: i32,
    failure: Option<String>,
    last_exit: Option<String>,
    containers: Vec<String>,
}

struct Shared {
    client: kube::Client,
    namespace: String,
    execs: Vec<Exec>,
    external: Vec<(String, Vec<Arc<ReplicaSet>>)>,
    /// Service (= Deployment) name -> (Executor, shard).
    by_object: HashMap<String, (usize, usize)>,
    events: tokio::sync::broadcast::Sender<RuntimeEvent>,
    /// Bumped whenever ready replicas or failures change, for [`Runtime::wait_settled`].
    changed: tokio::sync::watch::Sender<u64>,
    /// EndpointSlice name -> (its Service, its ready endpoints).
    slices: Mutex<HashMap<String, (String, SliceEndpoints)>>,
    pods: Mutex<HashMap<String, PodInfo>>,
}

/// One Flow's Executors on Kubernetes, for the Flow's gateway. Built with [`KubeRuntime::new`];
/// [`Runtime::start`] starts its watches.
pub struct KubeRuntime {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    started: AtomicBool,
}

impl KubeRuntime {
    /// Builds the replica sets of `flow`'s Executors, whose objects live in `namespace`, and
    /// adopts each Executor's current replica count (its first shard's Deployment's
    /// `spec.replicas`): a restarted gateway takes over what is running. Nothing is watched
    /// until [`Runtime::start`].
    pub async fn new(
        client: kube::Client,
        namespace: &str,
        flow: &Flow,
        settings: impl Fn(&Executor) -> ThrottleSettings,
        metrics: Option<ActivatorMetrics>,
    ) -> Result<Self, KubeRuntimeError> {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let mut execs = vec![];
        let mut external = vec![];
        let mut by_object = HashMap::new();
        for exec in &flow.executors {
            let sets = crate::local::replica_sets(exec, &settings, metrics.as_ref());
            if let Some(addr) = &exec.external {
                crate::local::add_external(exec, addr, &sets)?;
                external.push((exec.name.clone(), sets));
                continue;
            }
            let shards: Vec<Shard> = sets
                .into_iter()
                .enumerate()
                .map(|(i, set)| {
                    let object =
                        names::executor_object(&exec.name, (exec.shards > 1).then_some(i as u32));
                    by_object.insert(object.clone(), (execs.len(), i));
                    Shard {
                        object,
                        set,
                        state: Mutex::new(ShardState::default()),
                        discovering: Arc::new(AtomicBool::new(false)),
                    }
                })
                .collect();
            let current = match deployments.get_opt(&shards[0].object).await {
                // The API server defaults a missing `replicas` to 1.
                Ok(Some(d)) => d.spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as u32,
                Ok(None) => {
                    tracing::warn!(
                        executor = %exec.name,
                        deployment = %shards[0].object,
                        "the Executor's Deployment does not exist (yet); counting it at 0 replicas"
                    );
                    0
                }
                Err(source) => {
                    return Err(KubeRuntimeError::ReadDeployment {
                        namespace: namespace.to_string(),
                        name: shards[0].object.clone(),
                        source,
                    });
                }
            };
            let (desired, _) = tokio::sync::watch::channel(current);
            execs.push(Exec {
                name: exec.name.clone(),
                label: crate::knative::dns_label(&exec.name, 63),
                shards,
                desired,
                failure: Mutex::new(None),
            });
        }
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let (changed, _) = tokio::sync::watch::channel(0);
        Ok(KubeRuntime {
            shared: Arc::new(Shared {
                client,
                namespace: namespace.to_string(),
                execs,
                external,
                by_object,
                events,
                changed,
                slices: Mutex::new(HashMap::new()),
                pods: Mutex::new(HashMap::new()),
            }),
            tasks: Mutex::new(vec![]),
            started: AtomicBool::new(false),
        })
    }

    /// The namespace the Flow's objects live in.
    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    fn find(&self, executor: &str) -> Option<&Exec> {
        self.shared.execs.iter().find(|e| e.name == executor)
    }

    fn stop(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        for e in &self.shared.execs {
            for s in &e.shards {
                s.state.lock().stop_probes();
            }
        }
    }
}

impl Drop for KubeRuntime {
    /// Its tasks hold the shared state: without this, a runtime dropped without
    /// [`Runtime::shutdown`] would keep watching.
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn emit(&self, ev: RuntimeEvent) {
        let _ = self.events.send(ev);
    }

    /// Applies one EndpointSlice watch event. `init` buffers a relist until it is complete.
    fn on_slice_event(
        self: &Arc<Self>,
        event: watcher::Event<EndpointSlice>,
        init: &mut Option<HashMap<String, (String, SliceEndpoints)>>,
    ) {
        let entry = |s: &EndpointSlice| {
            let service = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
            Some((s.metadata.name.clone()?, (service, slice_endpoints(s))))
        };
        let touched: Vec<String> = match event {
            watcher::Event::Init => {
                *init = Some(HashMap::new());
                return;
            }
            watcher::Event::InitApply(s) => {
                if let (Some(buf), Some((name, v))) = (init.as_mut(), entry(&s)) {
                    buf.insert(name, v);
                }
                return;
            }
            watcher::Event::InitDone => {
                let fresh = init.take().unwrap_or_default();
                *self.slices.lock() = fresh;
                self.by_object.keys().cloned().collect()
            }
            watcher::Event::Apply(s) => match entry(&s) {
                Some((name, v)) => {
                    let service = v.0.clone();
                    let old = self.slices.lock().insert(name, v);
                    old.map(|(s, _)| s).into_iter().chain([service]).collect()
                }
                None => return,
            },
            watcher::Event::Delete(s) => match s.metadata.name.as_ref() {
                Some(name) => match self.slices.lock().remove(name) {
                    Some((service, _)) => vec![service],
                    None => return,
                },
                None => return,
            },
        };
        for service in touched {
            self.refresh_shard(&service);
        }
    }

    /// Recomputes one shard from its slices: the ready endpoints are replicas, the starting ones
    /// are probed (a probe that answers makes its pod a replica before the slice says so), and
    /// what left the slices or terminates is neither.
    fn refresh_shard(self: &Arc<Self>, service: &str) {
        let Some(&(ei, si)) = self.by_object.get(service) else {
            return;
        };
        let (mut ready, mut starting) = (vec![], vec![]);
        for (s, eps) in self.slices.lock().values() {
            if s == service {
                ready.extend(eps.ready.iter().cloned());
                starting.extend(eps.starting.iter().cloned());
            }
        }
        // A pod may be in two slices while the controller moves it: once is enough.
        ready.sort_by(|a, b| a.id.cmp(&b.id));
        ready.dedup_by(|a, b| a.id == b.id);
        starting.retain(|e| !ready.iter().any(|r| r.id == e.id));
        starting.sort_by(|a, b| a.id.cmp(&b.id));
        starting.dedup_by(|a, b| a.id == b.id);
        let exec = &self.execs[ei];
        {
            let mut st = exec.shards[si].state.lock();
            let is_starting = |id: &str| starting.iter().any(|e| e.id == id);
            let gone: Vec<String> = st
                .probing
                .keys()
                .filter(|id| !is_starting(id))
                .cloned()
                .collect();
            for id in gone {
                if let Some((_, probe)) = st.probing.remove(&id) {
                    probe.abort();
                }
            }
            let probed: Vec<(String, Instant)> = st
                .probed
                .iter()
                .map(|(id, (_, at))| (id.clone(), *at))
                .collect();
            for (id, at) in probed {
                if ready.iter().any(|r| r.id == id) {
                    tracing::info!(executor = %exec.name, replica = %id, slice_after_probe_ms = at.elapsed().as_millis() as u64, "replica ready (EndpointSlice), after its probe");
                    st.probed.remove(&id);
                } else if !is_starting(&id) {
                    st.probed.remove(&id);
                }
            }
            for e in &starting {
                if st.probing.contains_key(&e.id) || st.probed.contains_key(&e.id) {
                    continue;
                }
                let probe = tokio::spawn(probe_until_ready(self.clone(), ei, si, e.clone()));
                st.probing.insert(e.id.clone(), (e.ip.clone(), probe));
            }
            st.slice_ready = ready;
            if !self.publish(ei, si, &mut st) {
                return;
            }
        }
        self.refresh_failure(ei);
        self.bump();
    }

    /// Hands the shard's replicas (ready in a slice, or answered a probe) to its replica set,
    /// and reports who came and who went. False if nothing changed.
    fn publish(&self, ei: usize, si: usize, st: &mut ShardState) -> bool {
        let exec = &self.execs[ei];
        let shard = &exec.shards[si];
        let mut now: Vec<PodEndpoint> = st.slice_ready.clone();
        for (id, (ip, _)) in &st.probed {
            if !now.iter().any(|e| &e.id == id) {
                now.push(PodEndpoint {
                    id: id.clone(),
                    ip: ip.clone(),
                });
            }
        }
        now.sort_by(|a, b| a.id.cmp(&b.id));
        if now == st.replicas {
            return false;
        }
        let old = std::mem::replace(&mut st.replicas, now.clone());
        let replicas = now
            .iter()
            .map(|e| (e.id.clone(), host_port(&e.ip, names::EXECUTOR_PORT)))
            .collect();
        if let Err(e) = shard.set.set_replicas(replicas) {
            tracing::warn!(executor = %exec.name, error = %e.message(), "a ready endpoint has an address the activator cannot call");
        }
        for o in old.iter().filter(|o| !now.iter().any(|e| e.id == o.id)) {
            self.emit(RuntimeEvent::ReplicaStopped {
                executor: exec.name.clone(),
                replica: o.id.clone(),
            });
        }
        for e in now.iter().filter(|e| !old.iter().any(|o| o.id == e.id)) {
            let startup_ms = self.startup_ms(&e.id);
            let how = if st.probed.contains_key(&e.id) {
                "its /ready probe"
            } else {
                "its EndpointSlice"
            };
            tracing::info!(executor = %exec.name, replica = %e.id, ip = %e.ip, startup_ms, "replica ready ({how})");
            self.emit(RuntimeEvent::ReplicaReady {
                executor: exec.name.clone(),
                replica: e.id.clone(),
                startup_ms,
            });
        }
        if !now.is_empty() {
            self.discover_later(shard);
        }
        true
    }

    /// A probe of a starting endpoint answered: it is a replica from now on, if it is still
    /// starting (not gone, not terminating, not yet ready in its slice).
    fn probe_answered(&self, ei: usize, si: usize, ep: &PodEndpoint) {
        {
            let mut st = self.execs[ei].shards[si].state.lock();
            if st.probing.remove(&ep.id).is_none() {
                return;
            }
            st.probed
                .insert(ep.id.clone(), (ep.ip.clone(), Instant::now()));
            if !self.publish(ei, si, &mut st) {
                return;
            }
        }
        self.refresh_failure(ei);
        self.bump();
    }

    /// How long the pod took from creation to ready, as well as the runtime can tell.
    fn startup_ms(&self, pod: &str) -> u64 {
        let pods = self.pods.lock();
        let Some(p) = pods.get(pod) else {
            return 0;
        };
        match (p.seen, &p.created) {
            (Some(seen), _) => seen.elapsed().as_millis() as u64,
            (None, Some(created)) => {
                let ms = Timestamp::now().as_millisecond() - created.as_millisecond();
                ms.max(0) as u64
            }
            (None, None) => 0,
        }
    }

    /// Learns the shard's endpoints (for `/openapi.json` and routing) from its first ready
    /// replica, once the requests that woke it are answered: a Python Executor serves one call
    /// at a time, and discovery first would add its time to the cold start.
    fn discover_later(&self, shard: &Shard) {
        if shard.set.endpoints().is_some() || shard.discovering.swap(true, Ordering::AcqRel) {
            return;
        }
        let set = shard.set.clone();
        let discovering = shard.discovering.clone();
        tokio::spawn(async move {
            set.quiet(Duration::from_secs(1)).await;
            if let Err(e) = set.discover().await {
                tracing::debug!(executor = %set.executor(), error = %e.message(), "endpoint discovery failed");
            }
            // A failed discovery is tried again with the next ready replica.
            discovering.store(false, Ordering::Release);
        });
    }

    /// Applies one Pod watch event.
    fn on_pod_event(
        &self,
        event: watcher::Event<Pod>,
        init: &mut Option<HashMap<String, PodInfo>>,
    ) {
        match event {
            watcher::Event::Init => *init = Some(HashMap::new()),
            watcher::Event::InitApply(p) => {
                if let (Some(buf), Some((name, info))) = (init.as_mut(), self.pod_info(&p, None)) {
                    buf.insert(name, info);
                }
            }
            watcher::Event::InitDone => {
                let fresh = init.take().unwrap_or_default();
                {
                    let mut pods = self.pods.lock();
                    // Pods the runtime already saw keep when it first saw them.
                    let fresh = fresh
                        .into_iter()
                        .map(|(n, mut i)| {
                            i.seen = pods.get(&n).and_then(|o| o.seen);
                            (n, i)
                        })
                        .collect();
                    *pods = fresh;
                }
                for i in 0..self.execs.len() {
                    self.refresh_failure(i);
                }
                self.bump();
            }
            watcher::Event::Apply(p) => {
                let Some((name, mut info)) = self.pod_info(&p, Some(Instant::now())) else {
                    return;
                };
                let exec = &self.execs[info.exec];
                let ei = info.exec;
                let (new, crashed) = {
                    let mut pods = self.pods.lock();
                    let old = pods.get(&name);
                    let new = old.is_none();
                    if let Some(o) = old {
                        info.seen = o.seen;
                    }
                    let crashed = old.is_some_and(|o| info.restarts > o.restarts);
                    pods.insert(name.clone(), info);
                    (new, crashed)
                };
                if new {
                    self.emit(RuntimeEvent::ReplicaStarting {
                        executor: exec.name.clone(),
                        replica: name.clone(),
                    });
                }
                if crashed {
                    let output = self
                        .pods
                        .lock()
                        .get(&name)
                        .and_then(|i| i.last_exit.clone())
                        .unwrap_or_else(|| "its container restarted".into());
                    self.emit(RuntimeEvent::ReplicaCrashed {
                        executor: exec.name.clone(),
                        replica: name,
                        output,
                    });
                }
                self.refresh_failure(ei);
            }
            watcher::Event::Delete(p) => {
                let removed = p
                    .metadata
                    .name
                    .as_ref()
                    .and_then(|n| self.pods.lock().remove(n));
                if let Some(info) = removed {
                    self.refresh_failure(info.exec);
                    self.bump();
                }
            }
        }
    }

    fn pod_info(&self, pod: &Pod, seen: Option<Instant>) -> Option<(String, PodInfo)> {
        let label = pod.metadata.labels.as_ref()?.get(names::LABEL_EXECUTOR)?;
        let exec = self.execs.iter().position(|e| &e.label == label)?;
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        let last_exit = statuses.iter().find_map(|c| {
            let t = c.last_state.as_ref()?.terminated.as_ref()?;
            Some(format!(
                "container {} exited with code {} ({}){}",
                c.name,
                t.exit_code,
                t.reason.as_deref().unwrap_or("Error"),
                t.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ))
        });
        Some((
            pod.metadata.name.clone()?,
            PodInfo {
                exec,
                created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
                seen,
                restarts: statuses.iter().map(|c| c.restart_count).sum(),
                failure: pod_failure(pod),
                last_exit,
                containers: pod
                    .spec
                    .as_ref()
                    .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
                    .unwrap_or_default(),
            },
        ))
    }

    /// An Executor has failed while one of its shards has no ready replica and one of its pods
    /// is stuck: requests then fail at once with the reason instead of waiting for a replica
    /// that will not come. It clears as soon as that changes (a pod turns ready, or the stuck
    /// pods go).
    fn refresh_failure(&self, ei: usize) {
        let exec = &self.execs[ei];
        let some_shard_empty = exec
            .shards
            .iter()
            .any(|s| s.state.lock().replicas.is_empty());
        let why = if some_shard_empty {
            let pods = self.pods.lock();
            let mut stuck: Vec<(&String, &String)> = pods
                .iter()
                .filter(|(_, p)| p.exec == ei)
                .filter_map(|(n, p)| p.failure.as_ref().map(|f| (n, f)))
                .collect();
            stuck.sort();
            stuck.first().map(|(_, f)| (*f).clone())
        } else {
            None
        };
        let changed = {
            let mut cur = exec.failure.lock();
            let changed = *cur != why;
            *cur = why.clone();
            changed
        };
        if !changed {
            return;
        }
        for s in &exec.shards {
            s.set.set_failure(why.clone());
        }
        if let Some(why) = why {
            tracing::warn!(executor = %exec.name, %why, "the Executor cannot run");
            self.emit(RuntimeEvent::ExecutorFailed {
                executor: exec.name.clone(),
                why,
            });
        }
        self.bump();
    }
}

/// Asks a starting pod's shim whether its Executor serves, until it does (then the pod is a
/// replica at once) or [`PROBE_FOR`] has passed. Aborted when the pod leaves the slice, turns
/// ready in it, or terminates.
async fn probe_until_ready(shared: Arc<Shared>, ei: usize, si: usize, ep: PodEndpoint) {
    let admin = host_port(&ep.ip, names::EXECUTOR_ADMIN_PORT);
    let deadline = Instant::now() + PROBE_FOR;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < deadline {
        tick.tick().await;
        if probe_ready(&admin).await {
            shared.probe_answered(ei, si, &ep);
            return;
        }
    }
    tracing::debug!(executor = %shared.execs[ei].name, replica = %ep.id, "not ready after {PROBE_FOR:?} of probing; left to the kubelet's probe");
}

/// One `GET /ready` of a shim's admin port: true on 200 (a tiny HTTP/1.0 request, as the
/// autoscaler's `/stats` scrape does).
async fn probe_ready(admin: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /ready HTTP/1.0\r\nHost: shim\r\n\r\n")
            .await
            .ok()?;
        // "HTTP/1.x 200"
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(&head[9..12] == b"200")
    };
    tokio::time::timeout(PROBE_TIMEOUT, ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Follows the EndpointSlices of every shard's Service.
async fn watch_slices(shared: Arc<Shared>) {
    let mut services: Vec<&String> = shared.by_object.keys().collect();
    services.sort();
    let selector = format!(
        "{SERVICE_NAME_LABEL} in ({})",
        services
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let api: Api<EndpointSlice> = Api::namespaced(shared.client.clone(), &shared.namespace);
    let mut stream = std::pin::pin!(
        watcher(api, watcher::Config::default().labels(&selector)).default_backoff()
    );
    let mut init = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => shared.on_slice_event(ev, &mut init),
            Err(e) => {
                tracing::warn!(namespace = %shared.namespace, error = %e, "watching the Executors' EndpointSlices failed; retrying")
            }
        }
    }
}

/// Follows the Executors' pods: for start times, crashes, failures, logs and counts.
async fn watch_pods(shared: Arc<Shared>) {
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &shared.namespace);
    let mut stream = std::pin::pin!(
        watcher(
            api,
            watcher::Config::default().labels(names::LABEL_EXECUTOR)
        )
        .default_backoff()
    );
    let mut init = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => shared.on_pod_event(ev, &mut init),
            Err(e) => {
                tracing::warn!(namespace = %shared.namespace, error = %e, "watching the Executors' pods failed; retrying")
            }
        }
    }
}

/// Sets the replicas of an Executor Deployment as [`names::AUTOSCALER_MANAGER`]: the one way
/// every writer of an Executor's count (the gateway's autoscaler, the controller's first count
/// and pause, the control plane's `scale`) writes it.
///
/// A server-side apply of a `Scale` through the `scale` subresource, forced. Not a merge patch:
/// an update through `scale` records no field manager when nobody owned `spec.replicas` before,
/// and drops the owner at 0 (autoscaling/v1 omits `replicas: 0`), so ownership would come and
/// go (seen on Kubernetes 1.36). Applied, the autoscaler owns `spec.replicas` at every count,
/// and the controller's applies, which leave `replicas` out, neither conflict with it nor reset
/// it. Forced: the autoscaler's count wins over a manual `kubectl scale`, as an HPA's does.
pub async fn apply_scale(
    api: &Api<Deployment>,
    name: &str,
    replicas: u32,
) -> kube::Result<k8s_openapi::api::autoscaling::v1::Scale> {
    let scale = serde_json::json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": { "name": name },
        "spec": { "replicas": replicas },
    });
    let params = PatchParams::apply(names::AUTOSCALER_MANAGER).force();
    api.patch_scale(name, &params, &Patch::Apply(&scale)).await
}

/// Writes each new desired count of one Executor to its shards' Deployments. A failed write is
/// retried with a backoff until it lands or a newer count replaces it.
async fn scale_loop(
    shared: Arc<Shared>,
    ei: usize,
    mut desired: tokio::sync::watch::Receiver<u32>,
) {
    let exec = &shared.execs[ei];
    let api: Api<Deployment> = Api::namespaced(shared.client.clone(), &shared.namespace);
    loop {
        if desired.changed().await.is_err() {
            return;
        }
        let mut backoff = Duration::from_millis(200);
        loop {
            let want = *desired.borrow_and_update();
            let started = Instant::now();
            let results = futures::future::join_all(
                exec.shards
                    .iter()
                    .map(|s| apply_scale(&api, &s.object, want)),
            )
            .await;
            let failed: Vec<String> = results
                .iter()
                .zip(&exec.shards)
                .filter_map(|(r, s)| r.as_ref().err().map(|e| format!("{}: {e}", s.object)))
                .collect();
            if failed.is_empty() {
                tracing::info!(executor = %exec.name, replicas = want, ms = started.elapsed().as_millis() as u64, "scale patched");
                break;
            }
            tracing::warn!(executor = %exec.name, replicas = want, errors = %failed.join("; "), retry_in = ?backoff, "cannot scale the Executor's Deployment; retrying");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                r = desired.changed() => if r.is_err() { return; },
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

#[async_trait::async_trait]
impl Runtime for KubeRuntime {
    fn shards(&self) -> HashMap<String, Vec<Arc<ReplicaSet>>> {
        self.shared
            .execs
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    e.shards.iter().map(|s| s.set.clone()).collect(),
                )
            })
            .chain(self.shared.external.iter().cloned())
            .collect()
    }

    /// Starts the watches only: the controller made the Deployments, and their replica counts
    /// are the truth (adopted in [`KubeRuntime::new`]), so nothing is scaled here.
    fn start(&self, _initial: &InitialReplicas) {
        if self.started.swap(true, Ordering::AcqRel) || self.shared.execs.is_empty() {
            return;
        }
        let mut tasks = self.tasks.lock();
        tasks.push(tokio::spawn(watch_slices(self.shared.clone())));
        tasks.push(tokio::spawn(watch_pods(self.shared.clone())));
        for (i, e) in self.shared.execs.iter().enumerate() {
            let rx = e.desired.subscribe();
            tasks.push(tokio::spawn(scale_loop(self.shared.clone(), i, rx)));
        }
    }

    fn scale(&self, executor: &str, desired: u32) {
        let Some(e) = self.find(executor) else {
            tracing::debug!(executor, "not scaled: not an Executor this runtime runs");
            return;
        };
        let from = *e.desired.borrow();
        if from != desired {
            e.desired.send_replace(desired);
            self.shared.emit(RuntimeEvent::Scaling {
                executor: executor.into(),
                from,
                to: desired,
            });
            self.shared.bump();
        }
    }

    fn desired(&self, executor: &str) -> u32 {
        self.find(executor).map_or(0, |e| *e.desired.borrow())
    }

    fn ready_replicas(&self, executor: &str) -> u32 {
        self.find(executor)
            .map_or(0, |e| e.shards[0].state.lock().replicas.len() as u32)
    }

    fn replica_count(&self, executor: &str) -> u32 {
        let Some(ei) = self.shared.execs.iter().position(|e| e.name == executor) else {
            return 0;
        };
        self.shared
            .pods
            .lock()
            .values()
            .filter(|p| p.exec == ei)
            .count() as u32
    }

    fn failure(&self, executor: &str) -> Option<String> {
        self.find(executor).and_then(|e| e.failure.lock().clone())
    }

    fn stats_targets(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        for e in &self.shared.execs {
            for s in &e.shards {
                for r in s.state.lock().replicas.iter() {
                    out.push((e.name.clone(), host_port(&r.ip, names::EXECUTOR_ADMIN_PORT)));
                }
            }
        }
        out
    }

    async fn logs(&self, executor: Option<&str>) -> BTreeMap<String, String> {
        let wanted: Vec<(String, Option<String>)> = {
            let pods = self.shared.pods.lock();
            pods.iter()
                .filter(|(_, p)| executor.is_none_or(|x| self.shared.execs[p.exec].name == x))
                .map(|(n, p)| {
                    // Only a pod with several containers needs to be told which one.
                    let container =
                        (p.containers.len() > 1).then(|| names::EXECUTOR_CONTAINER.to_string());
                    (n.clone(), container)
                })
                .collect()
        };
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.shared.namespace);
        let reads = wanted.into_iter().map(|(pod, container)| {
            let api = api.clone();
            async move {
                let params = LogParams {
                    container,
                    tail_lines: Some(LOG_TAIL_LINES),
                    ..Default::default()
                };
                let text = match api.logs(&pod, &params).await {
                    Ok(t) => t.trim_end().to_string(),
                    Err(e) => format!("(cannot read this pod's logs: {e})"),
                };
                (pod, text)
            }
        });
        futures::future::join_all(reads).await.into_iter().collect()
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent> {
        self.shared.events.subscribe()
    }

    /// Waits until every shard of every Executor has its desired count of ready endpoints (an
    /// Executor at zero is settled at zero), or one is stuck (the error names the pod and why).
    async fn wait_settled(&self, timeout: Duration) -> Result<(), String> {
        let mut changed = self.shared.changed.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting = vec![];
            for e in &self.shared.execs {
                if let Some(why) = e.failure.lock().clone() {
                    return Err(format!("Executor {}: {why}", e.name));
                }
                let want = *e.desired.borrow() as usize;
                let ready: Vec<usize> = e
                    .shards
                    .iter()
                    .map(|s| s.state.lock().replicas.len())
                    .collect();
                if ready.iter().any(|&n| n != want) {
                    waiting.push(format!(
                        "{} ({} of {want} ready)",
                        e.name,
                        ready.iter().min().copied().unwrap_or(0)
                    ));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return Err("the runtime stopped".into()); },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(format!(
                        "replicas were not ready within {timeout:?}: {}",
                        waiting.join(", ")
                    ));
                }
            }
        }
    }

    /// Stops the watches, probes and pending scale writes; the cluster's objects stay as they
    /// are.
    async fn shutdown(&self, _timeout: Duration) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    fn endpoint(
        ip: &str,
        pod: Option<&str>,
        ready: Option<bool>,
        terminating: Option<bool>,
    ) -> Endpoint {
        Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready,
                serving: ready,
                terminating,
            }),
            target_ref: pod.map(|p| ObjectReference {
                kind: Some("Pod".into()),
                name: Some(p.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(address_type: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: address_type.into(),
            endpoints: Some(endpoints),
            ..Default::default()
        }
    }

    #[test]
    fn slices_become_replicas_and_pods_to_probe() {
        type Eps<'a> = Vec<(&'a str, &'a str)>;
        let cases: Vec<(&str, EndpointSlice, Eps, Eps)> = vec![
            (
                "ready, named by its pod",
                slice(
                    "IPv4",
                    vec![endpoint("10.0.0.5", Some("exec-a-1"), Some(true), None)],
                ),
                vec![("exec-a-1", "10.0.0.5")],
                vec![],
            ),
            (
                "not ready yet: probed",
                slice(
                    "IPv4",
                    vec![endpoint("10.0.0.5", Some("exec-a-1"), Some(false), None)],
                ),
                vec![],
                vec![("exec-a-1", "10.0.0.5")],
            ),
            (
                "ready unknown: probed, not called until it answers",
                slice(
                    "IPv4",
                    vec![endpoint("10.0.0.5", Some("exec-a-1"), None, None)],
                ),
                vec![],
                vec![("exec-a-1", "10.0.0.5")],
            ),
            (
                "terminating: neither",
                slice(
                    "IPv4",
                    vec![endpoint(
                        "10.0.0.5",
                        Some("exec-a-1"),
                        Some(false),
                        Some(true),
                    )],
                ),
                vec![],
                vec![],
            ),
            (
                "no targetRef: named by its address",
                slice(
                    "IPv4",
                    vec![endpoint("10.0.0.7", None, Some(true), Some(false))],
                ),
                vec![("10.0.0.7", "10.0.0.7")],
                vec![],
            ),
            (
                "IPv6",
                slice(
                    "IPv6",
                    vec![endpoint("fd00::7", Some("exec-a-2"), Some(true), None)],
                ),
                vec![("exec-a-2", "fd00::7")],
                vec![],
            ),
            (
                "FQDN slices are not called",
                slice(
                    "FQDN",
                    vec![endpoint("a.example", Some("p"), Some(true), None)],
                ),
                vec![],
                vec![],
            ),
            (
                "a mixed slice keeps its order",
                slice(
                    "IPv4",
                    vec![
                        endpoint("10.0.0.1", Some("p1"), Some(true), None),
                        endpoint("10.0.0.2", Some("p2"), Some(false), None),
                        endpoint("10.0.0.3", Some("p3"), Some(true), Some(false)),
                        endpoint("10.0.0.4", Some("p4"), Some(false), Some(true)),
                    ],
                ),
                vec![("p1", "10.0.0.1"), ("p3", "10.0.0.3")],
                vec![("p2", "10.0.0.2")],
            ),
        ];
        let pairs = |v: Vec<PodEndpoint>| -> Vec<(String, String)> {
            v.into_iter().map(|e| (e.id, e.ip)).collect()
        };
        let owned = |v: Eps| -> Vec<(String, String)> {
            v.into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        for (what, s, ready, starting) in cases {
            let got = slice_endpoints(&s);
            assert_eq!(pairs(got.ready), owned(ready), "{what}: ready");
            assert_eq!(pairs(got.starting), owned(starting), "{what}: starting");
        }
        let no_endpoints = EndpointSlice {
            address_type: "IPv4".into(),
            ..Default::default()
        };
        assert_eq!(slice_endpoints(&no_endpoints), SliceEndpoints::default());
        let no_address = slice(
            "IPv4",
            vec![Endpoint {
                addresses: vec![],
                ..Default::default()
            }],
        );
        assert_eq!(slice_endpoints(&no_address), SliceEndpoints::default());
    }

    #[test]
    fn addresses_for_the_activator() {
        assert_eq!(host_port("10.0.0.5", 8080), "10.0.0.5:8080");
        assert_eq!(host_port("fd00::7", 8090), "[fd00::7]:8090");
        assert_eq!(host_port("[fd00::7]", 8090), "[fd00::7]:8090");
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a Pod")
    }

    #[test]
    fn stuck_pods_say_why() {
        let crash = pod(serde_json::json!({
            "metadata": {"name": "exec-a-1"},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "executor", "image": "i", "imageID": "", "ready": false,
                "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
            }]}
        }));
        assert_eq!(
            pod_failure(&crash).as_deref(),
            Some(
                "pod exec-a-1: OOMKilled: the container ran out of memory; give it a larger instance (last exit: OOMKilled, code 137, after 4 restart(s))"
            )
        );
        let unschedulable = pod(serde_json::json!({
            "metadata": {"name": "exec-a-2"},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu."
            }]}
        }));
        assert_eq!(
            pod_failure(&unschedulable).as_deref(),
            Some("pod exec-a-2: Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.")
        );
        let starting = pod(serde_json::json!({
            "metadata": {"name": "exec-a-3"},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "executor", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}
            }]}
        }));
        assert_eq!(pod_failure(&starting), None, "starting is not stuck");
        let deleting = pod(serde_json::json!({
            "metadata": {"name": "exec-a-4", "deletionTimestamp": "2025-01-01T00:00:00Z"},
            "status": {"phase": "Failed"}
        }));
        assert_eq!(
            pod_failure(&deleting),
            None,
            "a pod on its way out is not the Executor's failure"
        );
    }
}
