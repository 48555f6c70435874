//! `jc server --runtime kubernetes`: carries out the control plane's requests on a Kubernetes
//! cluster. Each Flow gets a namespace of its own holding its `Flow` resource
//! (`flows.zeroflow.dev`), the Secrets its Executors read (from `jc secret`) and the token its
//! shims fetch the project archive with; the Flow controller (`crate::kube::controller`) makes
//! the rest. The store stays the record of what each user asked for; the phase, endpoints and
//! replicas shown come from the Flow's status, which a watch copies into the store as it changes
//! (so listing stays a read of the store). A restarted server adopts what the cluster holds.
//! This module must not make Deployments or Services (the controller does), nor decide scaling
//! (each Flow's autoscaler does).

use super::control::Controller;
use super::flows::{endpoint_names, protocol_name};
use super::store::{Desired, FlowRecord, Kind, Phase, SecretRecord, StoreError};
use crate::knative::dns_label;
use crate::kube::crd::{FlowResource, FlowSpec, FlowStatus, ProjectSource};
use crate::kube::names;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use zeroflow_spec::Flow;

/// The label every object the control plane writes carries (`app.kubernetes.io/managed-by`),
/// set to [`names::API_MANAGER`]: what a restarted server adopts, and nothing else (a Flow a
/// user applied with `kubectl` is left alone).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The Flow's exact ID on its namespace (the `zeroflow.dev/flow` label is its DNS form).
pub const FLOW_ID_ANNOTATION: &str = "zeroflow.dev/flow-id";
/// Pod template annotation whose change rolls one Executor's pods (`executors/NAME:restart`).
pub const EXECUTOR_RESTART_ANNOTATION: &str = "zeroflow.dev/executor-restarted-at";
/// Lines of each pod's log returned by the logs routes (the client polls them to follow).
const LOG_LINES: i64 = 1000;
/// How long a request waits for an object it deleted to be gone: a namespace goes once every
/// pod in it has stopped, and a recreated Flow once its Deployments are gone.
const DELETE_PATIENCE: Duration = Duration::from_secs(30 * 60);
/// How long a request whose API calls fail transiently keeps retrying.
const RETRY_PATIENCE: Duration = Duration::from_secs(120);

/// Options of `jc server --runtime kubernetes`.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The control plane's URL as pods reach it: Executors fetch project archives from it.
    pub advertise_url: String,
    /// Runs the Flow controller in this process (false when it runs elsewhere).
    pub run_controller: bool,
    /// `jc server --autoscaler KEY=VALUE` pairs, for every Flow's gateway (where its autoscaler
    /// runs).
    pub autoscaler: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot find a Kubernetes cluster (KUBECONFIG, ~/.kube/config, or in-cluster): {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The Flow cannot be written as it is (the message says why); retrying will not help.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl KubeError {
    fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
        let what = what.into();
        move |source| KubeError::Api { what, source }
    }

    /// Worth another try: the API server was unreachable, overloaded, or raced us.
    fn transient(&self) -> bool {
        match self {
            KubeError::Api {
                source: kube::Error::Api(s),
                ..
            } => s.code >= 500 || s.code == 429 || s.code == 409,
            KubeError::Api { .. } => true,
            _ => false,
        }
    }
}

/// What a request asks of the cluster, beyond writing the Flow's record as it now stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Write the Flow resource from the record (deploy, update, pause, resume, scale).
    Apply,
    /// As Apply, with a new `restartedAt`: every pod is replaced.
    Restart,
    /// Delete the Flow resource (and, with it, everything the controller made), then write it
    /// again.
    Recreate,
    /// Delete the Flow's namespace; the record turns Deleted once it is gone.
    Remove,
}

/// Makes a client from `KUBECONFIG`, `~/.kube/config` or the pod's service account.
pub async fn client() -> Result<kube::Client, KubeError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = kube::Config::infer()
        .await
        .map_err(|e| KubeError::Config(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))
}

/// Per Flow: a lock that serialises its cluster writes, and the number of the latest request
/// (a task retrying an older one gives up when it changes).
#[derive(Default)]
struct FlowLock {
    lock: tokio::sync::Mutex<()>,
    latest: AtomicU64,
}

pub struct KubeBackend {
    client: kube::Client,
    opts: KubeOptions,
    /// The latest status of each Flow resource (by Flow ID), as the watch saw it.
    statuses: Mutex<HashMap<String, FlowStatus>>,
    locks: Mutex<HashMap<String, Arc<FlowLock>>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl KubeBackend {
    pub fn new(client: kube::Client, opts: KubeOptions) -> Self {
        KubeBackend {
            client,
            opts,
            statuses: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    pub fn options(&self) -> &KubeOptions {
        &self.opts
    }

    fn flow_lock(&self, id: &str) -> Arc<FlowLock> {
        self.locks.lock().entry(id.to_string()).or_default().clone()
    }

    fn keep(&self, task: tokio::task::JoinHandle<()>) {
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }

    /// At server start: runs the Flow controller (unless it runs elsewhere), watches Flow
    /// resources (their status becomes the phase in the store) and adopts what the cluster
    /// holds, retrying until the cluster answers.
    pub fn start(self: &Arc<Self>, ctrl: &Arc<Controller>) {
        if self.opts.run_controller {
            // Its metrics are not served by `jc server`; the registry only has to exist.
            let mut registry = prometheus_client::registry::Registry::default();
            let mut opts = crate::kube::controller::ControllerOptions::default();
            opts.render.autoscaler = self.opts.autoscaler.clone();
            let controller = crate::kube::controller::run(self.client.clone(), opts, &mut registry);
            self.keep(tokio::spawn(controller));
        }
        let (this, c) = (self.clone(), ctrl.clone());
        self.keep(tokio::spawn(async move { this.watch(&c).await }));
        let (this, c) = (self.clone(), ctrl.clone());
        self.keep(tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                match this.adopt(&c).await {
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!("adopting the cluster: {n} Flow(s) to bring in line");
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot adopt the cluster's Flows yet; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }));
    }

    /// Stops the watch and every task in flight (the cluster's objects stay).
    pub fn shutdown(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }

    /// Brings Flow `id` in the cluster to its record, in the background. Requests of one Flow
    /// run in order; a retrying one gives way to a newer one.
    pub fn carry_out(self: &Arc<Self>, ctrl: &Arc<Controller>, id: &str, intent: Intent) {
        let fl = self.flow_lock(id);
        let ticket = fl.latest.fetch_add(1, Ordering::SeqCst) + 1;
        let (this, ctrl, id) = (self.clone(), ctrl.clone(), id.to_string());
        self.keep(tokio::spawn(async move {
            let _serial = fl.lock.lock().await;
            let deadline = tokio::time::Instant::now() + RETRY_PATIENCE;
            let mut backoff = Duration::from_millis(500);
            loop {
                let done = this.carry_out_once(&ctrl, &id, intent).await;
                let Err(e) = done else { return };
                let superseded = fl.latest.load(Ordering::SeqCst) != ticket;
                if e.transient() && !superseded && tokio::time::Instant::now() < deadline {
                    tracing::info!(flow = %id, error = %e, "retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
                if superseded {
                    return;
                }
                let why = e.to_string();
                tracing::warn!(flow = %id, error = %why, "cannot carry out {intent:?}");
                ctrl.event(&id, format!("{intent:?} failed: {why}"));
                if let Ok(Some(rec)) = ctrl.store.flow_by_id(&id)
                    && rec.desired != Desired::Deleted
                {
                    let _ = ctrl.store.set_phase(&id, Phase::Failed, Some(&why));
                }
                return;
            }
        }));
    }

    async fn carry_out_once(
        &self,
        ctrl: &Arc<Controller>,
        id: &str,
        intent: Intent,
    ) -> Result<(), KubeError> {
        let Some(rec) = ctrl.store.flow_by_id(id)? else {
            return Ok(());
        };
        if rec.desired == Desired::Deleted || intent == Intent::Remove {
            return self.remove(ctrl, &rec).await;
        }
        self.apply(ctrl, &rec, intent).await
    }

    /// Writes the Flow's namespace, Secrets and Flow resource from its record.
    async fn apply(
        &self,
        ctrl: &Arc<Controller>,
        rec: &FlowRecord,
        intent: Intent,
    ) -> Result<(), KubeError> {
        let ns = names::namespace(&rec.id);
        let project = ctrl
            .stored_project(&rec.user, &rec.id)
            .await
            .map_err(KubeError::Refused)?;
        let context = project.map(|p| p.context).unwrap_or_default();
        let flow = super::control::load_spec_with(&rec.spec, Some(&context))
            .map_err(|e| KubeError::Refused(format!("the spec is invalid: {}", e.join("; "))))?
            .flow;
        let secrets = secrets_for(rec, &flow, |name| ctrl.store.get_secret(&rec.id, name))?;
        let project = self.project_source(ctrl, rec).await?;

        let pp = PatchParams::apply(names::API_MANAGER).force();
        let nss: Api<Namespace> = Api::all(self.client.clone());
        nss.patch(&ns, &pp, &Patch::Apply(&namespace_object(rec)))
            .await
            .map_err(KubeError::api(format!("cannot write namespace {ns}")))?;
        let secret_api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        for s in &secrets {
            let name = s.metadata.name.clone().unwrap_or_default();
            secret_api
                .patch(&name, &pp, &Patch::Apply(s))
                .await
                .map_err(KubeError::api(format!(
                    "cannot write Secret {name} in {ns}"
                )))?;
        }
        if let Some((_, token)) = &project {
            let s = artifact_secret(rec, token);
            secret_api
                .patch(names::ARTIFACT_SECRET, &pp, &Patch::Apply(&s))
                .await
                .map_err(KubeError::api(format!(
                    "cannot write Secret {} in {ns}",
                    names::ARTIFACT_SECRET
                )))?;
        }

        let flows: Api<FlowResource> = Api::namespaced(self.client.clone(), &ns);
        let name = names::flow_resource(&rec.id);
        let existing = flows
            .get_opt(&name)
            .await
            .map_err(KubeError::api(format!("cannot read Flow {name} in {ns}")))?;
        let restarted_at = match intent {
            Intent::Restart => Some(super::names::now_iso()),
            _ => existing.as_ref().and_then(|f| f.spec.restarted_at.clone()),
        };
        if intent == Intent::Recreate
            && let Some(old) = &existing
        {
            ctrl.event(
                &rec.id,
                "recreate: deleting the Flow resource and what it made",
            );
            // Foreground: the Flow stays until its Deployments (and their pods) are gone, so
            // the new one starts from nothing.
            delete_and_wait(&flows, &name, old.uid(), &DeleteParams::foreground()).await?;
        }
        let spec = FlowSpec {
            flow_id: rec.id.clone(),
            owner: rec.user.clone(),
            yaml: rec.spec.clone(),
            env: context,
            project: project.map(|(p, _)| p),
            images: BTreeMap::new(),
            paused: rec.desired == Desired::Paused,
            restarted_at,
            gateway: Default::default(),
        };
        let mut obj = FlowResource::new(&name, spec);
        obj.metadata.namespace = Some(ns.clone());
        obj.metadata.labels = Some(api_labels(rec));
        let applied = flows
            .patch(&name, &pp, &Patch::Apply(&obj))
            .await
            .map_err(KubeError::api(format!("cannot write Flow {name} in {ns}")))?;
        ctrl.event(
            &rec.id,
            format!(
                "wrote Flow {ns}/{name} (generation {})",
                generation(&applied)
            ),
        );
        // A write that changed nothing does not bump the generation: no watch event follows,
        // so the status it already has is the answer now.
        self.observe(ctrl, &applied);
        Ok(())
    }

    /// `spec.project` of a Flow deployed with a project folder (where its shims fetch the
    /// archive, and its digest), and the token they fetch it with; None without one.
    async fn project_source(
        &self,
        ctrl: &Controller,
        rec: &FlowRecord,
    ) -> Result<Option<(ProjectSource, String)>, KubeError> {
        let Some(registry) = &ctrl.registry else {
            return Ok(None);
        };
        let digest = registry
            .project_digest(&rec.user, &rec.id)
            .await
            .map_err(|e| KubeError::Refused(format!("cannot read the Flow's project: {e}")))?;
        Ok(digest.map(|d| {
            let source = ProjectSource {
                url: ctrl.artifact_url(&d),
                digest: d.to_string(),
            };
            (source, ctrl.artifact_token(&d))
        }))
    }

    /// Deletes the Flow's namespace (and with it everything of the Flow), waits until it is
    /// gone, then records the Flow as Deleted and drops its project.
    async fn remove(&self, ctrl: &Arc<Controller>, rec: &FlowRecord) -> Result<(), KubeError> {
        let ns = names::namespace(&rec.id);
        let nss: Api<Namespace> = Api::all(self.client.clone());
        if let Some(n) = nss
            .get_opt(&ns)
            .await
            .map_err(KubeError::api(format!("cannot read namespace {ns}")))?
        {
            ctrl.event(&rec.id, format!("deleting namespace {ns}"));
            delete_and_wait(&nss, &ns, n.uid(), &DeleteParams::background()).await?;
        }
        self.statuses.lock().remove(&rec.id);
        ctrl.store.set_phase(&rec.id, Phase::Deleted, None)?;
        ctrl.event(&rec.id, format!("namespace {ns} is gone"));
        ctrl.forget_project(&rec.user, &rec.id).await;
        Ok(())
    }

    /// Watches the Flow resources the control plane wrote; each status goes to the store.
    async fn watch(&self, ctrl: &Arc<Controller>) {
        let api: Api<FlowResource> = Api::all(self.client.clone());
        let cfg = watcher::Config::default().labels(&managed_selector());
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(f) | watcher::Event::InitApply(f)) => {
                    self.observe(ctrl, &f)
                }
                Ok(watcher::Event::Delete(f)) => {
                    self.statuses.lock().remove(&f.spec.flow_id);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "watching Flow resources"),
            }
        }
    }

    /// Takes in what the cluster says of one Flow resource: its status, and (when the status
    /// is for the spec as it stands) its phase.
    fn observe(&self, ctrl: &Controller, f: &FlowResource) {
        let id = &f.spec.flow_id;
        if let Some(s) = &f.status {
            self.statuses.lock().insert(id.clone(), s.clone());
        }
        let Ok(Some(rec)) = ctrl.store.flow_by_id(id) else {
            return;
        };
        if rec.desired == Desired::Deleted
            || rec.user != f.spec.owner
            || f.meta().deletion_timestamp.is_some()
        {
            return;
        }
        let Some((phase, error)) = observed_phase(f.meta().generation, f.status.as_ref()) else {
            return;
        };
        if phase != rec.phase || error != rec.error {
            if let Err(e) = ctrl.store.set_phase(id, phase, error.as_deref()) {
                tracing::error!(flow = %id, error = %e, "cannot record the phase");
                return;
            }
            ctrl.event(
                id,
                format!(
                    "phase {}{}",
                    phase.as_str(),
                    error.map(|e| format!(": {e}")).unwrap_or_default()
                ),
            );
        }
    }

    /// Lists what the cluster holds and brings it in line with the store: no namespace without
    /// a live record, a Flow resource for every record that wants one. Returns the number of
    /// actions taken.
    pub async fn adopt(self: &Arc<Self>, ctrl: &Arc<Controller>) -> Result<usize, KubeError> {
        let selector = managed_selector();
        let lp = ListParams::default().labels(&selector);
        let nss: Api<Namespace> = Api::all(self.client.clone());
        let namespaces: Vec<(String, String)> = nss
            .list(&lp)
            .await
            .map_err(KubeError::api("cannot list namespaces"))?
            .into_iter()
            .filter_map(|n| {
                let id = n
                    .annotations()
                    .get(FLOW_ID_ANNOTATION)
                    .or_else(|| n.labels().get(names::LABEL_FLOW))?
                    .clone();
                Some((n.name_any(), id))
            })
            .collect();
        let flows: Vec<Seen> = Api::<FlowResource>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(KubeError::api("cannot list Flow resources"))?
            .into_iter()
            .map(|f| Seen {
                flow_id: f.spec.flow_id.clone(),
                namespace: f.namespace().unwrap_or_default(),
                yaml: f.spec.yaml.clone(),
                paused: f.spec.paused,
            })
            .collect();
        let records = ctrl.store.list_flows(None, None)?;
        let plan = adoption_plan(&namespaces, &flows, &records);
        for action in &plan {
            match action {
                Adopt::DeleteNamespace(ns) => {
                    tracing::info!(namespace = %ns, "removing a Flow namespace without a record");
                    match nss.delete(ns, &DeleteParams::background()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.is_not_found() => {}
                        Err(e) => {
                            return Err(KubeError::Api {
                                what: format!("cannot delete namespace {ns}"),
                                source: e,
                            });
                        }
                    }
                }
                Adopt::Apply(id) => {
                    ctrl.event(id, "server restarted: writing the Flow resource again");
                    self.carry_out(ctrl, id, Intent::Apply);
                }
                Adopt::Remove(id) => self.carry_out(ctrl, id, Intent::Remove),
            }
        }
        Ok(plan.len())
    }

    /// `status.endpoints` in the REST API's form (see [`api_endpoints`]).
    pub fn endpoints(
        &self,
        rec: &FlowRecord,
        flow: Option<&Flow>,
    ) -> serde_json::Map<String, Value> {
        let Some(flow) = flow else {
            return Default::default();
        };
        if rec.phase == Phase::Deleted {
            return Default::default();
        }
        let statuses = self.statuses.lock();
        let Some(s) = statuses.get(&rec.id) else {
            return Default::default();
        };
        api_endpoints(rec.kind, flow, &s.endpoints)
    }

    /// Per Executor shard: desired and ready replicas, whether it is at zero, and why it
    /// cannot run.
    pub fn executors(&self, rec: &FlowRecord) -> Option<Value> {
        let statuses = self.statuses.lock();
        let s = statuses.get(&rec.id)?;
        serde_json::to_value(&s.executors).ok()
    }

    /// Pod logs by pod name: of one Executor's pods, or with None the gateway's (and the
    /// control plane's event log of the Flow, as `gateway-<id>`).
    pub async fn logs(
        &self,
        rec: &FlowRecord,
        executor: Option<&str>,
        events: String,
    ) -> BTreeMap<String, String> {
        let ns = names::namespace(&rec.id);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let flow = format!("{}={}", names::LABEL_FLOW, names::flow_resource(&rec.id));
        let (selector, container) = match executor {
            Some(e) => (
                format!("{flow},{}={}", names::LABEL_EXECUTOR, dns_label(e, 63)),
                names::EXECUTOR_CONTAINER,
            ),
            None => (
                format!("{flow},app.kubernetes.io/component={}", names::GATEWAY),
                names::GATEWAY_CONTAINER,
            ),
        };
        let mut out = BTreeMap::new();
        if executor.is_none() {
            out.insert(format!("gateway-{}", rec.id), events);
        }
        let list = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(flow = %rec.id, error = %e, "cannot list the Flow's pods");
                return out;
            }
        };
        for p in list {
            let name = p.name_any();
            let lp = LogParams {
                container: Some(container.to_string()),
                tail_lines: Some(LOG_LINES),
                ..Default::default()
            };
            let text = match pods.logs(&name, &lp).await {
                Ok(t) => t,
                // A pod that has not started has no log yet; say so rather than leave it out.
                Err(e) => format!("(no log yet: {})", short_error(&e)),
            };
            out.insert(name, text);
        }
        out
    }

    /// `:scale` of one Executor on a running Flow: its Deployments' `scale` at once (the
    /// autoscaler goes on from there for an autoscaled Executor, as locally), and for a fixed
    /// count the Flow resource too, whose YAML the caller has rewritten.
    pub async fn scale(
        self: &Arc<Self>,
        ctrl: &Arc<Controller>,
        rec: &FlowRecord,
        executor: &zeroflow_spec::Executor,
        replicas: u32,
    ) -> Result<(), KubeError> {
        if rec.desired != Desired::Running {
            return Ok(());
        }
        if !executor.jcloud.autoscale_set {
            self.carry_out(ctrl, &rec.id, Intent::Apply);
        }
        let ns = names::namespace(&rec.id);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        for name in executor_deployments(executor) {
            // The one way an Executor's count is written (the autoscaler's field manager).
            match crate::kube::runtime::apply_scale(&deployments, &name, replicas).await {
                Ok(_) => {}
                // Not made yet: the controller starts it from the spec.
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => {
                    return Err(KubeError::Api {
                        what: format!("cannot scale Deployment {name} in {ns}"),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }

    /// `executors/NAME:restart`: a rolling restart of the Executor's Deployments.
    pub async fn restart_executor(
        &self,
        rec: &FlowRecord,
        executor: &zeroflow_spec::Executor,
    ) -> Result<(), KubeError> {
        let ns = names::namespace(&rec.id);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        let pp = PatchParams {
            field_manager: Some(names::API_MANAGER.to_string()),
            ..Default::default()
        };
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {
            EXECUTOR_RESTART_ANNOTATION: super::names::now_iso()
        }}}}});
        for name in executor_deployments(executor) {
            match deployments.patch(&name, &pp, &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => {
                    return Err(KubeError::Api {
                        what: format!("cannot restart Deployment {name} in {ns}"),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Deletes `name` and waits until the object with `uid` is gone.
async fn delete_and_wait<K>(
    api: &Api<K>,
    name: &str,
    uid: Option<String>,
    dp: &DeleteParams,
) -> Result<(), KubeError>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let kind = K::kind(&()).to_string();
    match api.delete(name, dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(()),
        Err(e) => {
            return Err(KubeError::Api {
                what: format!("cannot delete {kind} {name}"),
                source: e,
            });
        }
    }
    let Some(uid) = uid else { return Ok(()) };
    let gone = kube::runtime::wait::await_condition(
        api.clone(),
        name,
        kube::runtime::wait::conditions::is_deleted(&uid),
    );
    match tokio::time::timeout(DELETE_PATIENCE, gone).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(KubeError::Refused(format!(
            "waiting for {kind} {name} to be deleted: {e}"
        ))),
        Err(_) => Err(KubeError::Refused(format!(
            "{kind} {name} is still being deleted after {} s",
            DELETE_PATIENCE.as_secs()
        ))),
    }
}

fn generation(f: &FlowResource) -> i64 {
    f.meta().generation.unwrap_or(0)
}

/// An API error in one line (the logs route shows it in place of a pod's log).
fn short_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

/// `app.kubernetes.io/managed-by=zeroflow-api`.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={}", names::API_MANAGER)
}

/// A label value for any text: itself when Kubernetes takes it, else its DNS label form.
pub fn label_value(s: &str) -> String {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { s.to_string() } else { dns_label(s, 63) }
}

/// Labels of what the control plane writes for a Flow: the namespace, its Secrets and the
/// Flow resource.
pub fn api_labels(rec: &FlowRecord) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), names::API_MANAGER.to_string()),
        (names::LABEL_FLOW.to_string(), names::flow_resource(&rec.id)),
        (names::LABEL_OWNER.to_string(), label_value(&rec.user)),
        (
            "app.kubernetes.io/part-of".to_string(),
            "zeroflow".to_string(),
        ),
    ])
}

pub fn namespace_object(rec: &FlowRecord) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(names::namespace(&rec.id)),
            labels: Some(api_labels(rec)),
            annotations: Some(BTreeMap::from([(
                FLOW_ID_ANNOTATION.to_string(),
                rec.id.clone(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn secret_object(rec: &FlowRecord, name: String, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(names::namespace(&rec.id)),
            labels: Some(api_labels(rec)),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

fn artifact_secret(rec: &FlowRecord, token: &str) -> Secret {
    secret_object(
        rec,
        names::ARTIFACT_SECRET.to_string(),
        BTreeMap::from([(
            names::ARTIFACT_TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )]),
    )
}

/// A key Kubernetes takes in a Secret's `data`.
fn valid_secret_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// One Kubernetes Secret per `jc secret` that the Flow's Executors read through
/// `env_from_secret`, holding that secret's keys. A secret or key that does not exist is
/// refused as the local runtime refuses it.
pub fn secrets_for(
    rec: &FlowRecord,
    flow: &Flow,
    lookup: impl Fn(&str) -> Result<Option<SecretRecord>, StoreError>,
) -> Result<Vec<Secret>, KubeError> {
    let mut out: BTreeMap<String, Secret> = BTreeMap::new();
    for e in &flow.executors {
        for (env, r) in &e.env_from_secret {
            let secret = lookup(&r.name)?.ok_or_else(|| {
                KubeError::Refused(format!(
                    "Executor {}: env {env} comes from secret {:?}, which does not exist; create it with POST /secrets",
                    e.name, r.name
                ))
            })?;
            if !secret.data.contains_key(&r.key) {
                return Err(KubeError::Refused(format!(
                    "Executor {}: env {env} comes from key {:?} of secret {:?}, which has no such key (it has: {})",
                    e.name,
                    r.key,
                    r.name,
                    secret.data.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            if !valid_secret_key(&r.key) {
                return Err(KubeError::Refused(format!(
                    "Executor {}: env {env} comes from key {:?} of secret {:?}; on Kubernetes a secret's keys may hold only letters, digits, '-', '_' and '.'",
                    e.name, r.key, r.name
                )));
            }
            let name = names::secret(&r.name);
            let data = secret
                .data
                .iter()
                .filter(|(k, _)| valid_secret_key(k))
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect();
            out.entry(name.clone())
                .or_insert_with(|| secret_object(rec, name, data));
        }
    }
    Ok(out.into_values().collect())
}

/// The Deployments of an Executor: one per shard.
fn executor_deployments(e: &zeroflow_spec::Executor) -> Vec<String> {
    if e.shards > 1 {
        (0..e.shards)
            .map(|i| names::executor_object(&e.name, Some(i)))
            .collect()
    } else {
        vec![names::executor_object(&e.name, None)]
    }
}

/// The phase (and the error of a Failed one) a Flow's status shows, when that status is for
/// the Flow's current spec (`observedGeneration` = `generation`); None while the controller has
/// not caught up, so the phase the request set (Starting, Updating) stays until it has.
pub fn observed_phase(
    generation: Option<i64>,
    status: Option<&FlowStatus>,
) -> Option<(Phase, Option<String>)> {
    let s = status?;
    if s.observed_generation.is_none() || s.observed_generation != generation {
        return None;
    }
    let phase = s.phase?.store_phase();
    let error = if phase == Phase::Failed {
        Some(failure_text(s))
    } else {
        None
    };
    Some((phase, error))
}

/// Why a Flow failed, for `status.error`: the reason, the message, and the container's last
/// lines.
pub fn failure_text(s: &FlowStatus) -> String {
    let mut parts = vec![];
    if let Some(e) = &s.error {
        let who = e
            .executor
            .as_deref()
            .map(|x| format!("{x}: "))
            .unwrap_or_default();
        parts.push((
            format!("{who}{}: {}", e.reason, e.message),
            e.log_tail.clone(),
        ));
    } else {
        for x in &s.executors {
            if let Some(reason) = &x.reason {
                let shard = x.shard.map(|i| format!(" (shard {i})")).unwrap_or_default();
                parts.push((
                    format!(
                        "{}{shard}: {reason}: {}",
                        x.name,
                        x.message.as_deref().unwrap_or("")
                    ),
                    x.log_tail.clone(),
                ));
            }
        }
    }
    if parts.is_empty() {
        return "the Flow failed (the cluster gave no reason)".into();
    }
    parts
        .into_iter()
        .map(|(head, tail)| match tail.filter(|t| !t.trim().is_empty()) {
            Some(t) => format!("{}\n--- last lines ---\n{}", head.trim_end(), t.trim_end()),
            None => head.trim_end().trim_end_matches(':').to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `status.endpoints` of the REST API from the Flow status' protocol -> URL map: the first
/// listener as `gateway` (a Deployment: its Executor's name), the others `gateway-<protocol>`,
/// as the local runtime names them.
pub fn api_endpoints(
    kind: Kind,
    flow: &Flow,
    urls: &BTreeMap<String, String>,
) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for (name, l) in endpoint_names(kind, flow)
        .into_iter()
        .zip(&flow.gateway.listeners)
    {
        let Some(url) = urls.get(protocol_name(l.protocol)) else {
            continue;
        };
        out.insert(name, url.clone().into());
    }
    out
}

/// A Flow resource as adoption sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub flow_id: String,
    pub namespace: String,
    pub yaml: String,
    pub paused: bool,
}

/// What a restarted server does to bring the cluster in line with the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adopt {
    /// A namespace of a Flow whose record is gone (or long deleted): everything in it goes.
    DeleteNamespace(String),
    /// A Flow that should run (or be paused) whose resource is missing or not what the record
    /// says (the server stopped between the two writes).
    Apply(String),
    /// A Flow removed through the API whose namespace may remain: remove it and record it.
    Remove(String),
}

/// The adoption plan from the managed namespaces (`(name, flow id)`), the managed Flow
/// resources and the store's records. Pure, so that every case is tested without a cluster.
pub fn adoption_plan(
    namespaces: &[(String, String)],
    flows: &[Seen],
    records: &[FlowRecord],
) -> Vec<Adopt> {
    let recs: HashMap<&str, &FlowRecord> = records.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut out = vec![];
    let mut removing: HashSet<&str> = HashSet::new();
    let mut dropped: HashSet<&str> = HashSet::new();
    // A Flow resource in a namespace that lost its labels is still the Flow's.
    let mut all_ns: Vec<(&str, &str)> = namespaces
        .iter()
        .map(|(n, i)| (n.as_str(), i.as_str()))
        .collect();
    for f in flows {
        if !all_ns.iter().any(|(n, _)| *n == f.namespace) {
            all_ns.push((f.namespace.as_str(), f.flow_id.as_str()));
        }
    }
    for (ns, id) in all_ns {
        match recs.get(id) {
            None => {
                if dropped.insert(ns) {
                    out.push(Adopt::DeleteNamespace(ns.to_string()));
                }
            }
            Some(r) if r.desired == Desired::Deleted => {
                if r.phase == Phase::Deleted {
                    if dropped.insert(ns) {
                        out.push(Adopt::DeleteNamespace(ns.to_string()));
                    }
                } else if removing.insert(id) {
                    out.push(Adopt::Remove(id.to_string()));
                }
            }
            Some(_) => {}
        }
    }
    for r in records {
        match r.desired {
            Desired::Deleted => {
                if r.phase != Phase::Deleted && removing.insert(r.id.as_str()) {
                    out.push(Adopt::Remove(r.id.clone()));
                }
            }
            Desired::Running | Desired::Paused => {
                let want_paused = r.desired == Desired::Paused;
                let current = flows
                    .iter()
                    .find(|f| f.flow_id == r.id && f.namespace == names::namespace(&r.id));
                let in_line = current.is_some_and(|f| f.yaml == r.spec && f.paused == want_paused);
                if !in_line {
                    out.push(Adopt::Apply(r.id.clone()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{ExecutorStatus, FlowError, FlowPhase};
    use crate::server::store::SecretRecord;

    fn rec(id: &str, desired: Desired, phase: Phase) -> FlowRecord {
        FlowRecord {
            id: id.into(),
            user: "alice".into(),
            kind: Kind::Flow,
            name: None,
            spec: format!("jtype: Flow # {id}\n"),
            phase,
            desired,
            error: None,
            ports: vec![],
            labels: Default::default(),
            ctime: String::new(),
            utime: String::new(),
        }
    }

    fn seen(r: &FlowRecord, paused: bool) -> Seen {
        Seen {
            flow_id: r.id.clone(),
            namespace: names::namespace(&r.id),
            yaml: r.spec.clone(),
            paused,
        }
    }

    fn ns(id: &str) -> (String, String) {
        (names::namespace(id), id.to_string())
    }

    #[test]
    fn adoption_removes_orphans_and_recreates_missing_flows() {
        let running = rec("run-1", Desired::Running, Phase::Serving);
        let missing = rec("new-2", Desired::Running, Phase::Starting);
        let paused = rec("pau-3", Desired::Paused, Phase::Paused);
        let removing = rec("del-4", Desired::Deleted, Phase::Serving);
        let removed = rec("gone-5", Desired::Deleted, Phase::Deleted);
        let records = [
            running.clone(),
            missing.clone(),
            paused.clone(),
            removing.clone(),
            removed.clone(),
        ];
        let namespaces = [
            ns("run-1"),
            ns("pau-3"),
            ns("del-4"),
            ns("gone-5"),
            ns("orphan-6"),
        ];
        // The paused Flow's resource still runs: the server stopped before it wrote `paused`.
        let flows = [
            seen(&running, false),
            seen(&paused, false),
            seen(&removing, false),
            Seen {
                flow_id: "orphan-7".into(),
                namespace: names::namespace("orphan-7"),
                yaml: String::new(),
                paused: false,
            },
        ];
        let plan = adoption_plan(&namespaces, &flows, &records);
        assert_eq!(
            plan,
            vec![
                Adopt::Remove("del-4".into()),
                Adopt::DeleteNamespace(names::namespace("gone-5")),
                Adopt::DeleteNamespace(names::namespace("orphan-6")),
                Adopt::DeleteNamespace(names::namespace("orphan-7")),
                Adopt::Apply("new-2".into()),
                Adopt::Apply("pau-3".into()),
            ]
        );
    }

    #[test]
    fn adoption_of_a_cluster_in_line_does_nothing() {
        let a = rec("a-1", Desired::Running, Phase::Serving);
        let b = rec("b-2", Desired::Paused, Phase::Paused);
        let c = rec("c-3", Desired::Deleted, Phase::Deleted);
        let plan = adoption_plan(
            &[ns("a-1"), ns("b-2")],
            &[seen(&a, false), seen(&b, true)],
            &[a, b, c],
        );
        assert_eq!(plan, vec![]);
        // An updated spec the server did not get to write is written now.
        let mut a2 = rec("a-1", Desired::Running, Phase::Updating);
        a2.spec = "jtype: Flow\nexecutors: []\n".into();
        let old = rec("a-1", Desired::Running, Phase::Serving);
        let plan = adoption_plan(&[ns("a-1")], &[seen(&old, false)], &[a2]);
        assert_eq!(plan, vec![Adopt::Apply("a-1".into())]);
        // A removal the server did not finish (no namespace left) is only recorded.
        let d = rec("d-4", Desired::Deleted, Phase::Serving);
        assert_eq!(
            adoption_plan(&[], &[], &[d]),
            vec![Adopt::Remove("d-4".into())]
        );
    }

    fn status(generation: i64, phase: FlowPhase) -> FlowStatus {
        FlowStatus {
            observed_generation: Some(generation),
            phase: Some(phase),
            ..Default::default()
        }
    }

    #[test]
    fn the_phase_comes_from_a_current_status_only() {
        assert_eq!(observed_phase(Some(2), None), None);
        let s = status(1, FlowPhase::Serving);
        // The controller has not seen generation 2 yet: the request's phase stays.
        assert_eq!(observed_phase(Some(2), Some(&s)), None);
        assert_eq!(
            observed_phase(Some(1), Some(&s)),
            Some((Phase::Serving, None))
        );
        let p = status(3, FlowPhase::Paused);
        assert_eq!(
            observed_phase(Some(3), Some(&p)),
            Some((Phase::Paused, None))
        );
        let no_phase = FlowStatus {
            observed_generation: Some(1),
            ..Default::default()
        };
        assert_eq!(observed_phase(Some(1), Some(&no_phase)), None);
    }

    #[test]
    fn a_failed_status_names_the_reason_and_the_last_lines() {
        let mut s = status(4, FlowPhase::Failed);
        s.error = Some(FlowError {
            reason: "CrashLoopBackOff".into(),
            message: "back-off restarting failed container".into(),
            executor: Some("enc".into()),
            log_tail: Some("Traceback ...\nValueError: boom\n".into()),
        });
        let (phase, err) = observed_phase(Some(4), Some(&s)).unwrap();
        assert_eq!(phase, Phase::Failed);
        assert_eq!(
            err.unwrap(),
            "enc: CrashLoopBackOff: back-off restarting failed container\n--- last lines ---\nTraceback ...\nValueError: boom"
        );
        // Without a Flow-level error, the Executors that have a reason speak.
        s.error = None;
        s.executors = vec![
            ExecutorStatus {
                name: "ok".into(),
                ..Default::default()
            },
            ExecutorStatus {
                name: "big".into(),
                shard: Some(1),
                reason: Some("OOMKilled".into()),
                ..Default::default()
            },
        ];
        assert_eq!(failure_text(&s), "big (shard 1): OOMKilled");
        s.executors.clear();
        assert!(failure_text(&s).contains("no reason"));
    }

    fn flow(yaml: &str) -> Flow {
        super::super::control::load_spec(yaml).unwrap().flow
    }

    #[test]
    fn endpoints_are_named_as_locally() {
        let f = flow("jtype: Flow\nwith:\n  protocol: [grpc, http]\nexecutors:\n  - name: e\n");
        let urls = BTreeMap::from([
            ("grpc".to_string(), "grpc://10.0.0.1:30001".to_string()),
            ("http".to_string(), "http://10.0.0.1:30002".to_string()),
        ]);
        let m = api_endpoints(Kind::Flow, &f, &urls);
        assert_eq!(
            Value::Object(m),
            json!({"gateway": "grpc://10.0.0.1:30001", "gateway-http": "http://10.0.0.1:30002"})
        );
        let d = flow("jtype: Deployment\nwith:\n  name: enc\n");
        let urls = BTreeMap::from([("grpc".to_string(), "grpc://h:1".to_string())]);
        assert_eq!(
            Value::Object(api_endpoints(Kind::Deployment, &d, &urls)),
            json!({"enc": "grpc://h:1"})
        );
        assert!(api_endpoints(Kind::Flow, &f, &BTreeMap::new()).is_empty());
    }

    fn secret(name: &str, data: &[(&str, &str)]) -> SecretRecord {
        SecretRecord {
            flow_id: "f".into(),
            name: name.into(),
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ctime: String::new(),
            utime: String::new(),
        }
    }

    #[test]
    fn secrets_mirror_the_jc_secrets_a_flow_reads() {
        let f = flow(
            "jtype: Flow\nexecutors:\n  - name: a\n    env_from_secret:\n      TOKEN: {name: My_Creds, key: token}\n      USER: {name: My_Creds, key: user}\n  - name: b\n",
        );
        let r = rec("f", Desired::Running, Phase::Pending);
        let store = |n: &str| {
            Ok((n == "My_Creds").then(|| secret(n, &[("token", "s3cret"), ("user", "bob")])))
        };
        let out = secrets_for(&r, &f, store).unwrap();
        assert_eq!(out.len(), 1, "one Secret per jc secret");
        let s = &out[0];
        assert_eq!(s.metadata.name.as_deref(), Some("my-creds"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("zf-f"));
        let data = s.data.as_ref().unwrap();
        assert_eq!(data["token"].0, b"s3cret");
        assert_eq!(data["user"].0, b"bob");
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[MANAGED_BY],
            names::API_MANAGER
        );

        let missing = secrets_for(&r, &f, |_| Ok(None)).unwrap_err().to_string();
        assert!(
            missing.contains("secret \"My_Creds\", which does not exist"),
            "{missing}"
        );
        let no_key = secrets_for(&r, &f, |n| Ok(Some(secret(n, &[("token", "x")]))))
            .unwrap_err()
            .to_string();
        assert!(
            no_key.contains("key \"user\"") && no_key.contains("it has: token"),
            "{no_key}"
        );
        let g = flow(
            "jtype: Flow\nexecutors:\n  - name: a\n    env_from_secret:\n      T: {name: s, key: 'a key'}\n",
        );
        let bad = secrets_for(&r, &g, |n| Ok(Some(secret(n, &[("a key", "x")]))))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("letters, digits"), "{bad}");
    }

    #[test]
    fn labels_and_the_namespace_name_the_flow_and_its_owner() {
        let mut r = rec("fast-cat-1a2b3c", Desired::Running, Phase::Pending);
        r.user = "Alice Smith@corp".into();
        let n = namespace_object(&r);
        assert_eq!(n.metadata.name.as_deref(), Some("zf-fast-cat-1a2b3c"));
        let l = n.metadata.labels.unwrap();
        assert_eq!(l[names::LABEL_FLOW], "fast-cat-1a2b3c");
        assert_eq!(l[names::LABEL_OWNER], "alice-smith-corp");
        assert_eq!(
            n.metadata.annotations.unwrap()[FLOW_ID_ANNOTATION],
            "fast-cat-1a2b3c"
        );
        assert_eq!(label_value("bob_1.x"), "bob_1.x");
        assert_eq!(label_value("-x"), "x");
    }

    #[test]
    fn an_executor_has_one_deployment_per_shard() {
        let f = flow("jtype: Flow\nexecutors:\n  - name: one\n  - name: many\n    shards: 3\n");
        assert_eq!(executor_deployments(&f.executors[0]), ["exec-one"]);
        assert_eq!(
            executor_deployments(&f.executors[1]),
            ["exec-many-0", "exec-many-1", "exec-many-2"]
        );
    }
}
