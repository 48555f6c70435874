//! The Flow controller: a kube-runtime `Controller` that reconciles each `Flow` resource into
//! the objects [`super::render`] makes (server-side apply under [`names::CONTROLLER_MANAGER`]),
//! prunes what the Flow no longer renders, holds fixed and paused replica counts, and writes the
//! status [`super::status`] computes. Executor Deployments never carry `spec.replicas` in its
//! applies: that field belongs to [`names::AUTOSCALER_MANAGER`] (the gateway's autoscaler). It
//! must not decide autoscaled counts (the autoscaler does) nor parse YAML (the spec crate does).
//!
//! No finalizer: everything a Flow makes lives in the cluster and carries an owner reference to
//! the Flow, so deleting the Flow garbage-collects it. What lives outside (the project archive in
//! the artifact store) belongs to the control plane, which removes it when it removes the Flow.

use super::crd::{FlowPhase, FlowResource, FlowStatus};
use super::names;
use super::render::{self, RenderOptions, Rendered, Scale};
use super::status::{self, Plan, ShardPlan};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Watch Flows in this namespace only; None: in every namespace.
    pub namespace: Option<String>,
    pub render: RenderOptions,
    /// The host at which NodePort Services are reached from outside, for the Flow's endpoints.
    /// None: a Node's address, if the controller may list Nodes; else the cluster-internal DNS.
    pub node_address: Option<String>,
    /// Lines of a failing container's log that the status keeps.
    pub log_lines: i64,
    /// Quiet time before a burst of changes (pod updates during a scale-up) is reconciled once.
    pub debounce: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            namespace: None,
            render: RenderOptions::default(),
            node_address: None,
            log_lines: 20,
            debounce: Duration::from_millis(200),
        }
    }
}

/// How often every object of a Flow is applied again even if nothing seems changed (someone
/// edited or deleted one by hand).
const RESYNC: Duration = Duration::from_secs(300);

/// A failed reconcile; the Flow is retried with per-Flow exponential backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Flow resource {0} has no namespace")]
    NoNamespace(String),
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Api {
        action: &'static str,
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The controller's Prometheus metrics.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Counter,
    pub duration: Histogram,
}

impl Metrics {
    /// Registers the metrics in `registry` (`zeroflow_controller_*`).
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            reconciles: Counter::default(),
            failures: Counter::default(),
            duration: Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        };
        let sub = registry.sub_registry_with_prefix("zeroflow_controller");
        sub.register(
            "reconciles",
            "Flow reconciles started",
            m.reconciles.clone(),
        );
        sub.register(
            "reconcile_failures",
            "Flow reconciles that failed (retried with backoff)",
            m.failures.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Time one Flow reconcile took",
            m.duration.clone(),
        );
        m
    }
}

enum NodeAddress {
    Unknown,
    Known(String),
    /// The controller may not list Nodes: endpoints use the cluster-internal DNS.
    Unavailable,
}

struct Ctx {
    client: Client,
    opts: ControllerOptions,
    metrics: Metrics,
    /// Consecutive failures per Flow, for the backoff; reset by a reconcile that succeeds.
    failures: Mutex<HashMap<ObjectRef<FlowResource>, u32>>,
    /// Per Flow, the generation last applied in full, and when. Status writes and pod changes
    /// also start reconciles; those only refresh the status and the counts the controller holds,
    /// unless the generation changed, a Deployment is missing, or [`RESYNC`] has passed.
    applied: Mutex<HashMap<ObjectRef<FlowResource>, (i64, tokio::time::Instant)>>,
    node_address: Mutex<NodeAddress>,
}

/// The delay before retrying a Flow whose reconcile failed `n` times in a row: 0.5 s doubling
/// to at most 5 minutes.
pub fn backoff(n: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << n.saturating_sub(1).min(20));
    Duration::from_millis(ms.min(300_000))
}

/// The count the controller sets an existing Executor Deployment to, if any: 0 while paused,
/// `replicas` for a fixed one, and an autoscaled one back within `[min, max]` (after a resume or
/// a changed range). Within range, the autoscaler's count stands.
pub fn scale_target(scale: Scale, paused: bool, current: i32) -> Option<i32> {
    let want = match scale {
        _ if paused => 0,
        Scale::Fixed(n) => n,
        Scale::Autoscaled { min, max } => current.clamp(min, max.max(min)),
    };
    (want != current).then_some(want)
}

/// Whether the autoscaler's field manager holds `spec.replicas` of `d` (so that the
/// controller's applies, which leave it out, do not reset it).
pub fn autoscaler_owns_replicas(d: &Deployment) -> bool {
    d.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some(names::AUTOSCALER_MANAGER)
            && m.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:spec")
                    .and_then(|s| s.get("f:replicas"))
                    .is_some()
            })
    })
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: keys gone from `new` are set
/// to null, so a cleared `error` or a removed endpoint disappears from the status.
pub fn merge_patch(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut p = serde_json::Map::new();
            for (k, v) in n {
                match o.get(k) {
                    Some(ov) if ov == v => {}
                    Some(ov) => {
                        p.insert(k.clone(), merge_patch(ov, v));
                    }
                    None => {
                        p.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    p.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(p)
        }
        _ => new.clone(),
    }
}

fn api_error<K: Resource<DynamicType = ()>>(
    action: &'static str,
    ns: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> Error {
    let (ns, name) = (ns.to_string(), name.to_string());
    move |source| Error::Api {
        action,
        kind: K::kind(&()).into_owned(),
        namespace: ns,
        name,
        source,
    }
}

/// Server-side apply of `obj` (or of a partial object of kind `K`) under `manager`, forcing
/// ownership of what it sets.
async fn apply<K, P>(
    client: &Client,
    ns: &str,
    name: &str,
    obj: &P,
    manager: &str,
) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
    P: Serialize + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(api_error::<K>("apply", ns, name))
}

async fn apply_obj<K>(client: &Client, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    apply::<K, K>(client, &ns, &name, obj, names::CONTROLLER_MANAGER).await
}

fn flow_selector(flow: &str) -> ListParams {
    ListParams::default().labels(&format!("{}={flow}", names::LABEL_FLOW))
}

async fn list<K>(client: &Client, ns: &str, flow: &str) -> Result<Vec<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&flow_selector(flow))
        .await
        .map_err(api_error::<K>("list", ns, flow))?
        .items)
}

/// Deletes the objects of kind `K` that carry this Flow's label and owner but that it no
/// longer renders (an Executor removed by an update). Retained claims have no owner: kept.
async fn prune<K>(
    client: &Client,
    ns: &str,
    flow: &FlowResource,
    keep: &BTreeSet<String>,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let uid = flow.uid().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    for o in list::<K>(client, ns, &flow.name_any()).await? {
        let name = o.name_any();
        let ours = o.owner_references().iter().any(|r| r.uid == uid);
        if ours && !keep.contains(&name) {
            tracing::info!(flow = %flow.name_any(), namespace = ns, kind = %K::kind(&()), name, "pruning what the Flow no longer renders");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(api_error::<K>("delete", ns, &name)(e)),
            }
        }
    }
    Ok(())
}

/// The Executor Deployment of `shard`, made or updated so that its `spec.replicas` is the
/// autoscaler's: a new one starts at its initial count (never briefly at Kubernetes' default of
/// 1), then the autoscaler's manager takes the field and the controller's apply lets it go.
async fn apply_executor(
    client: &Client,
    shard: &render::ExecutorShard,
    existing: Option<&Deployment>,
    paused: bool,
) -> Result<(), Error> {
    let d = &shard.deployment;
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let initial = shard.scale.initial(paused);
    let current = existing.and_then(|e| e.spec.as_ref()?.replicas);
    if existing.is_none() {
        let mut first = d.clone();
        if let Some(spec) = first.spec.as_mut() {
            spec.replicas = Some(initial);
        }
        apply_obj(client, &first).await?;
    }
    if !existing.is_some_and(autoscaler_owns_replicas) {
        let handoff = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": name, "namespace": ns },
            "spec": { "replicas": current.unwrap_or(initial) },
        });
        apply::<Deployment, _>(client, &ns, &name, &handoff, names::AUTOSCALER_MANAGER).await?;
    }
    apply_obj(client, d).await?;
    if let Some(current) = current {
        hold_scale(client, shard, current, paused).await?;
    }
    Ok(())
}

/// Sets the Executor shard's count through its `scale` subresource (as the autoscaler does,
/// under its field manager) when [`scale_target`] says the controller must.
async fn hold_scale(
    client: &Client,
    shard: &render::ExecutorShard,
    current: i32,
    paused: bool,
) -> Result<(), Error> {
    let Some(want) = scale_target(shard.scale, paused, current) else {
        return Ok(());
    };
    let d = &shard.deployment;
    let (ns, name) = (d.namespace().unwrap_or_default(), d.name_any());
    tracing::info!(deployment = %name, namespace = %ns, from = current, to = want, "setting replicas");
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    // The one way an Executor's count is written (the autoscaler's field manager owns it).
    crate::kube::runtime::apply_scale(&api, &name, want.max(0) as u32)
        .await
        .map_err(api_error::<Deployment>("scale", &ns, &name))?;
    Ok(())
}

/// Applies everything `r` holds and removes what it no longer does.
async fn apply_all(
    client: &Client,
    flow: &FlowResource,
    r: &Rendered,
    existing: &[Deployment],
) -> Result<(), Error> {
    apply_obj(client, &r.service_account).await?;
    apply_obj(client, &r.role).await?;
    apply_obj(client, &r.role_binding).await?;
    if let Some(cm) = &r.config_map {
        apply_obj(client, cm).await?;
    }
    for s in &r.executors {
        if let Some(c) = &s.claim {
            apply_obj(client, c).await?;
        }
        apply_obj(client, &s.service).await?;
        if let Some(pdb) = &s.disruption_budget {
            apply_obj(client, pdb).await?;
        }
        let found = existing.iter().find(|d| d.name_any() == s.name());
        apply_executor(client, s, found, r.paused).await?;
    }
    apply_obj(client, &r.gateway_service).await?;
    apply_obj(client, &r.gateway).await?;

    let ns = r.namespace.as_str();
    let names_of = |v: Vec<Option<String>>| v.into_iter().flatten().collect::<BTreeSet<_>>();
    let mut deployments = names_of(r.executors.iter().map(|s| Some(s.name())).collect());
    deployments.insert(names::GATEWAY.into());
    let services = deployments.clone();
    let budgets = names_of(
        r.executors
            .iter()
            .map(|s| {
                s.disruption_budget
                    .as_ref()
                    .and_then(|p| p.metadata.name.clone())
            })
            .collect(),
    );
    let claims = names_of(
        r.executors
            .iter()
            .map(|s| s.claim.as_ref().and_then(|c| c.metadata.name.clone()))
            .collect(),
    );
    let maps = names_of(vec![
        r.config_map.as_ref().and_then(|c| c.metadata.name.clone()),
    ]);
    prune::<Deployment>(client, ns, flow, &deployments).await?;
    prune::<Service>(client, ns, flow, &services).await?;
    prune::<PodDisruptionBudget>(client, ns, flow, &budgets).await?;
    prune::<PersistentVolumeClaim>(client, ns, flow, &claims).await?;
    prune::<ConfigMap>(client, ns, flow, &maps).await?;
    Ok(())
}

impl Ctx {
    /// Where NodePorts are reached (see [`ControllerOptions::node_address`]).
    async fn node_address(&self) -> Option<String> {
        if let Some(a) = &self.opts.node_address {
            return Some(a.clone());
        }
        match &*self.node_address.lock() {
            NodeAddress::Known(a) => return Some(a.clone()),
            NodeAddress::Unavailable => return None,
            NodeAddress::Unknown => {}
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.list(&ListParams::default().limit(5)).await {
            Ok(list) => {
                let address = list.items.iter().find_map(|n| {
                    let addrs = n.status.as_ref()?.addresses.as_ref()?;
                    ["ExternalIP", "InternalIP"].iter().find_map(|t| {
                        addrs
                            .iter()
                            .find(|a| a.type_ == *t)
                            .map(|a| a.address.clone())
                    })
                });
                if let Some(a) = &address {
                    *self.node_address.lock() = NodeAddress::Known(a.clone());
                }
                address
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                tracing::info!(
                    "the controller may not list Nodes: Flow endpoints use the cluster-internal DNS name"
                );
                *self.node_address.lock() = NodeAddress::Unavailable;
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "listing Nodes");
                None
            }
        }
    }

    /// The last lines of each failing pod's container (at most a few pods per reconcile).
    async fn log_tails(&self, ns: &str, pods: &[Pod]) -> BTreeMap<String, String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut out = BTreeMap::new();
        let now = k8s_openapi::jiff::Timestamp::now();
        for f in pods
            .iter()
            .filter_map(|p| status::pod_failure(p, now))
            .take(3)
        {
            let Some(container) = f.container.clone() else {
                continue;
            };
            let mut lp = LogParams {
                container: Some(container),
                tail_lines: Some(self.opts.log_lines),
                previous: f.previous,
                ..Default::default()
            };
            let mut text = api.logs(&f.pod, &lp).await;
            if f.previous && text.as_ref().map_or(true, |t| t.is_empty()) {
                // The node may keep only the current run's output.
                lp.previous = false;
                text = api.logs(&f.pod, &lp).await;
            }
            match text {
                Ok(t) => {
                    out.insert(f.pod.clone(), t);
                }
                Err(e) => tracing::debug!(pod = %f.pod, error = %e, "reading logs"),
            }
        }
        out
    }
}

/// Another Flow's controller reference on the namespace's gateway: one Flow per namespace.
fn owned_by_another(d: &Deployment, flow: &FlowResource) -> Option<String> {
    let r = d
        .owner_references()
        .iter()
        .find(|r| r.controller == Some(true))?;
    (Some(r.uid.as_str()) != flow.uid().as_deref()).then(|| format!("{} {}", r.kind, r.name))
}

async fn reconcile(flow: Arc<FlowResource>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = tokio::time::Instant::now();
    ctx.metrics.reconciles.inc();
    let name = flow.name_any();
    let ns = flow
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let client = &ctx.client;

    let rendered =
        match crate::server::control::load_spec_with(&flow.spec.yaml, Some(&flow.spec.env)) {
            Ok(loaded) => render::render(&flow, &loaded.flow, &ctx.opts.render)
                .map_err(|e| (e.reason().to_string(), e.to_string())),
            Err(errors) => Err(("InvalidSpec".to_string(), errors.join("\n"))),
        };
    let deployments_api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let gateway = deployments_api
        .get_opt(names::GATEWAY)
        .await
        .map_err(api_error::<Deployment>("get", &ns, names::GATEWAY))?;
    let taken = gateway.as_ref().and_then(|g| owned_by_another(g, &flow));
    let mut requeue = RESYNC;
    let invalid = match (&rendered, &taken) {
        (_, Some(other)) => {
            // Also what a Flow recreated under the same name sees until the old one's objects
            // are collected: retried soon.
            requeue = Duration::from_secs(5);
            Some((
                "NamespaceTaken".to_string(),
                format!(
                    "namespace {ns} already runs {other}; a namespace holds one Flow (its \
                     objects have fixed names)"
                ),
            ))
        }
        (Err((reason, message)), None) => {
            // A broken update leaves what runs as it is.
            Some((reason.clone(), message.clone()))
        }
        (Ok(r), None) => {
            let existing = list::<Deployment>(client, &ns, &name).await?;
            let key = ObjectRef::from_obj(&*flow);
            let generation = flow.metadata.generation.unwrap_or(0);
            let fresh = ctx.applied.lock().get(&key).is_some_and(|(g, at)| {
                *g == generation && at.elapsed() < RESYNC && gateway.is_some()
            });
            let complete = r
                .executors
                .iter()
                .all(|s| existing.iter().any(|d| d.name_any() == s.name()));
            if fresh && complete {
                // Only what changes without a new generation: the counts it holds.
                for s in &r.executors {
                    let current = existing
                        .iter()
                        .find(|d| d.name_any() == s.name())
                        .and_then(|d| d.spec.as_ref()?.replicas);
                    if let Some(current) = current {
                        hold_scale(client, s, current, r.paused).await?;
                    }
                }
            } else {
                apply_all(client, &flow, r, &existing).await?;
                ctx.applied
                    .lock()
                    .insert(key, (generation, tokio::time::Instant::now()));
            }
            None
        }
    };

    let deployments = list::<Deployment>(client, &ns, &name).await?;
    let pods = list::<Pod>(client, &ns, &name).await?;
    let logs = ctx.log_tails(&ns, &pods).await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service = services
        .get_opt(names::GATEWAY)
        .await
        .map_err(api_error::<Service>("get", &ns, names::GATEWAY))?;
    let node = ctx.node_address().await;
    let endpoints = match (&service, &invalid) {
        (Some(s), None) => status::endpoints(s, node.as_deref()),
        _ => BTreeMap::new(),
    };
    let plan: Vec<ShardPlan> = match &rendered {
        Ok(r) => ShardPlan::of(r),
        Err(_) => vec![],
    };
    let plan = match &invalid {
        Some((reason, message)) => Plan::Invalid { reason, message },
        None => Plan::Shards(&plan),
    };
    let new = status::compute(
        &flow,
        plan,
        &deployments,
        &pods,
        &logs,
        endpoints,
        Timestamp::now(),
    );
    let old = flow.status.clone().unwrap_or_default();
    if new != old {
        write_status(client, &ns, &name, &old, &new).await?;
    }
    ctx.failures.lock().remove(&ObjectRef::from_obj(&*flow));
    let took = started.elapsed();
    ctx.metrics.duration.observe(took.as_secs_f64());
    tracing::info!(
        flow = %name,
        namespace = %ns,
        phase = new.phase.map(FlowPhase::as_str).unwrap_or("-"),
        error = new.error.as_ref().map(|e| e.reason.as_str()).unwrap_or(""),
        took_ms = took.as_millis() as u64,
        "reconciled"
    );
    Ok(Action::requeue(requeue))
}

async fn write_status(
    client: &Client,
    ns: &str,
    name: &str,
    old: &FlowStatus,
    new: &FlowStatus,
) -> Result<(), Error> {
    let (old, new) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    let patch = json!({ "status": merge_patch(&old, &new) });
    let api: Api<FlowResource> = Api::namespaced(client.clone(), ns);
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_error::<FlowResource>("write the status of", ns, name))?;
    Ok(())
}

fn error_policy(flow: Arc<FlowResource>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.failures.inc();
    let n = {
        let mut f = ctx.failures.lock();
        let n = f.entry(ObjectRef::from_obj(&*flow)).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backoff(n);
    tracing::warn!(
        flow = %flow.name_any(),
        namespace = flow.namespace().unwrap_or_default(),
        failures = n,
        retry_in_ms = delay.as_millis() as u64,
        %error,
        "reconcile failed"
    );
    Action::requeue(delay)
}

fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The controller, to be spawned by the control plane: registers its metrics in `registry`,
/// then reconciles Flows until the future is dropped.
pub fn run(
    client: Client,
    opts: ControllerOptions,
    registry: &mut Registry,
) -> impl Future<Output = ()> + Send + 'static {
    let metrics = Metrics::register(registry);
    let flows: Api<FlowResource> = api(&client, &opts.namespace);
    let deployments: Api<Deployment> = api(&client, &opts.namespace);
    let services: Api<Service> = api(&client, &opts.namespace);
    let pods: Api<Pod> = api(&client, &opts.namespace);
    let ours = watcher::Config::default().labels(names::LABEL_FLOW);
    let config = ControllerConfig::default().debounce(opts.debounce);
    let ctx = Arc::new(Ctx {
        client,
        opts,
        metrics,
        failures: Mutex::new(HashMap::new()),
        applied: Mutex::new(HashMap::new()),
        node_address: Mutex::new(NodeAddress::Unknown),
    });
    async move {
        tracing::info!("Flow controller started");
        Controller::new(flows, watcher::Config::default())
            .with_config(config)
            .owns(deployments, ours.clone())
            .owns(services, ours.clone())
            .watches(pods, ours, |pod: Pod| {
                let flow = pod.labels().get(names::LABEL_FLOW)?.clone();
                Some(ObjectRef::new(&flow).within(&pod.namespace()?))
            })
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "controller");
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let ms: Vec<u128> = [1, 2, 3, 4, 10, 11, 40, u32::MAX]
            .iter()
            .map(|n| backoff(*n).as_millis())
            .collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 256_000, 300_000, 300_000, 300_000]
        );
    }

    #[test]
    fn what_the_controller_sets_replicas_to() {
        let auto = Scale::Autoscaled { min: 1, max: 3 };
        let zero = Scale::Autoscaled { min: 0, max: 2 };
        // (scale, paused, current, want)
        let cases = [
            (auto, false, 2, None),
            (auto, false, 0, Some(1)),
            (auto, false, 5, Some(3)),
            (auto, true, 2, Some(0)),
            (auto, true, 0, None),
            (zero, false, 0, None),
            (zero, false, 1, None),
            (Scale::Fixed(2), false, 1, Some(2)),
            (Scale::Fixed(2), false, 2, None),
            (Scale::Fixed(2), true, 2, Some(0)),
        ];
        for (scale, paused, current, want) in cases {
            assert_eq!(
                scale_target(scale, paused, current),
                want,
                "{scale:?} paused={paused} current={current}"
            );
        }
    }

    #[test]
    fn merge_patch_clears_what_is_gone() {
        let old = json!({"phase": "Failed", "error": {"reason": "X", "logTail": "t"},
                         "endpoints": {"grpc": "a", "http": "b"}, "executors": [1, 2]});
        let new = json!({"phase": "Serving", "endpoints": {"grpc": "a"}, "executors": [1]});
        assert_eq!(
            merge_patch(&old, &new),
            json!({"phase": "Serving", "error": null, "endpoints": {"http": null},
                   "executors": [1]})
        );
    }

    #[test]
    fn replicas_owned_by_the_autoscaler_are_seen_in_managed_fields() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "x", "managedFields": [
                {"manager": names::CONTROLLER_MANAGER, "operation": "Apply",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:template": {}}}},
                {"manager": names::AUTOSCALER_MANAGER, "operation": "Update",
                 "subresource": "scale", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            ]},
        }))
        .unwrap();
        assert!(autoscaler_owns_replicas(&d));
        let mut only_controller = d.clone();
        only_controller
            .metadata
            .managed_fields
            .as_mut()
            .unwrap()
            .pop();
        assert!(!autoscaler_owns_replicas(&only_controller));
    }
}
