//! The control plane's heart: Flows and Deployments as records in the [`Store`] plus, for those
//! that should run, a [`RunningFlow`]. Every change is written to the store first (what the user
//! asked for, and the phase that shows it), then carried out by a background task, so the API
//! answers at once and a restarted server can pick up where it stopped. Tasks of one Flow are
//! serialised, and a newer request cancels an older one still starting.

use super::ServerConfig;
use super::flows::{FlowError, RunningFlow, bind_listeners, endpoint_names, scheme};
use super::kube_backend::{Intent, KubeBackend};
use super::names;
use super::project::{self, Project};
use super::resolver::{ExecutorResolver, resolve_flow};
use super::store::{Desired, FlowRecord, Kind, Phase, Store, StoreError};
use crate::local::LocalOptions;
use crate::runtime::Runtime;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use zeroflow_spec::{Flow, Source};

/// Lines of lifecycle events kept per Flow (served as the gateway's log).
const EVENT_LINES: usize = 500;
/// How long a Flow coming back on its recorded ports waits for one that is held.
const PORT_PATIENCE: Duration = Duration::from_secs(30);

/// A Flow spec that cannot be accepted.
#[derive(Debug, thiserror::Error)]
pub enum SpecRejected {
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("{0}")]
    Unrunnable(String),
    /// A pushed Executor the user may not use or nobody pushed (404).
    #[error("{0}")]
    NoSuchExecutor(String),
}

/// The per-Flow runtime side: the running Flow (if any), the generation of the latest request,
/// and the Flow's event log.
struct FlowCell {
    /// Bumped by every lifecycle request; a task whose generation is stale gives up.
    generation: tokio::sync::watch::Sender<u64>,
    running: tokio::sync::Mutex<Option<RunningFlow>>,
    /// The runtime that ran last (running or stopped), for its replicas' logs.
    last_runtime: Mutex<Option<Arc<dyn Runtime>>>,
    /// That runtime's autoscaler decisions, for the dashboard.
    last_decisions: Mutex<Option<crate::scaling::DecisionFeed>>,
    events: Mutex<VecDeque<String>>,
}

impl FlowCell {
    fn new() -> Self {
        FlowCell {
            generation: tokio::sync::watch::channel(0).0,
            running: tokio::sync::Mutex::new(None),
            last_runtime: Mutex::new(None),
            last_decisions: Mutex::new(None),
            events: Mutex::new(VecDeque::new()),
        }
    }

    fn log(&self, line: impl AsRef<str>) {
        let mut ev = self.events.lock();
        if ev.len() == EVENT_LINES {
            ev.pop_front();
        }
        ev.push_back(format!("{} {}", names::now_iso(), line.as_ref()));
    }
}

/// A Flow's latest runtime and its autoscaler's decisions ([`Controller::runtimes`]).
pub struct FlowRuntime {
    pub id: String,
    pub runtime: Arc<dyn Runtime>,
    pub decisions: Option<crate::scaling::DecisionFeed>,
}

/// Where Flows run: this machine's processes, or a Kubernetes cluster (which the store's
/// records are written to as `Flow` resources).
pub enum Backend {
    Local,
    Kubernetes(Arc<KubeBackend>),
}

pub struct Controller {
    pub store: Arc<Store>,
    pub backend: Backend,
    pub cfg: ServerConfig,
    pub resolver: Arc<dyn ExecutorResolver>,
    /// Where `POST /executors` pushes to (None: pushing is not available).
    pub registry: Option<Arc<zeroflow_artifacts::registry::Registry>>,
    pub jobs: Arc<super::jobs::Jobs>,
    /// Tokens and URLs for `GET /v1/artifacts/{digest}` (see [`super::artifact_route`]).
    pub artifact_access: super::artifact_route::ArtifactAccess,
    cells: Mutex<HashMap<String, Arc<FlowCell>>>,
    /// The zygotes every local Flow's Python replicas fork from (None: `ZEROFLOW_ZYGOTE=0`);
    /// stopped with the server.
    zygotes: Option<Arc<crate::local::ZygotePool>>,
    /// Set when the server stops: no new Flow starts after that.
    stopping: std::sync::atomic::AtomicBool,
    /// Loaded specs by Flow id, with the spec text and `.env` they came from: listing a
    /// thousand Flows must not parse a thousand YAML documents each time.
    loaded: Mutex<HashMap<String, LoadedSpec>>,
}

/// A cached load: the spec text and `.env` it came from, and the result.
type LoadedSpec = (String, BTreeMap<String, String>, zeroflow_spec::Loaded);

/// Loads a spec as the server does: no server environment leaks into `${{ ENV.X }}` (the client
/// substituted what it meant to), so unresolved variables stay as written.
pub fn load_spec(yaml: &str) -> Result<zeroflow_spec::Loaded, Vec<String>> {
    load_spec_with(yaml, None)
}

/// [`load_spec`] with a deployed project's `.env` as the context of `${{ context.X }}` and
/// `${{ X }}`.
pub fn load_spec_with(
    yaml: &str,
    context: Option<&BTreeMap<String, String>>,
) -> Result<zeroflow_spec::Loaded, Vec<String>> {
    load_spec_in(yaml, context, None)
}

/// [`load_spec_with`] that reads the Deployment YAMLs the spec names from its project folder
/// `dir` (and nothing outside it); without a folder, a spec that names one is refused.
pub fn load_spec_in(
    yaml: &str,
    context: Option<&BTreeMap<String, String>>,
    dir: Option<&std::path::Path>,
) -> Result<zeroflow_spec::Loaded, Vec<String>> {
    let source = Source {
        name: "spec".into(),
        context: context.cloned().unwrap_or_default(),
        ..Default::default()
    };
    let loaded = match dir {
        Some(dir) => {
            let files = project::SpecFiles {
                dir: dir.to_path_buf(),
                confined: true,
            };
            zeroflow_spec::load_with_files(yaml, &source, &files)
        }
        None => zeroflow_spec::load(yaml, &source),
    };
    loaded.map_err(|e| e.errors.iter().map(|d| d.to_string()).collect())
}

impl Controller {
    pub fn new(
        store: Store,
        cfg: ServerConfig,
        resolver: Arc<dyn ExecutorResolver>,
        registry: Option<Arc<zeroflow_artifacts::registry::Registry>>,
        backend: Backend,
    ) -> Arc<Self> {
        let artifact_access = super::artifact_route::ArtifactAccess::open(&cfg.data_dir)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "artifact tokens will not survive a restart");
                super::artifact_route::ArtifactAccess::ephemeral()
            });
        Arc::new(Controller {
            artifact_access,
            store: Arc::new(store),
            backend,
            cfg,
            resolver,
            registry,
            jobs: Arc::new(super::jobs::Jobs::default()),
            cells: Mutex::new(HashMap::new()),
            zygotes: crate::local::ZygotePool::from_env(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            loaded: Mutex::new(HashMap::new()),
        })
    }

    fn kube(&self) -> Option<&Arc<KubeBackend>> {
        match &self.backend {
            Backend::Local => None,
            Backend::Kubernetes(k) => Some(k),
        }
    }

    /// A line in Flow `id`'s event log (served as the gateway's log).
    pub(super) fn event(&self, id: &str, line: impl AsRef<str>) {
        self.cell(id).log(line);
    }

    fn cell(&self, id: &str) -> Arc<FlowCell> {
        self.cells
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(FlowCell::new()))
            .clone()
    }

    /// Checks a spec fully: it loads (with the project's `.env`), the files it names are in its
    /// project, and every Executor can run here (pushed Executors exist).
    pub async fn check_spec(
        &self,
        user: &str,
        yaml: &str,
        project: Option<&Project>,
    ) -> Result<Flow, SpecRejected> {
        let loaded = load_spec_in(
            yaml,
            project.map(|p| &p.context),
            project.map(|p| p.dir.as_path()),
        )
        .map_err(SpecRejected::Invalid)?;
        let mut flow = loaded.flow;
        if let Some(p) = project {
            project::check_files(&flow, &p.dir).map_err(SpecRejected::Invalid)?;
        }
        if self.kube().is_some() {
            // The cluster's pods run the Executors, container images too; pushed Executors
            // must exist, as locally.
            let mut pushed = flow.clone();
            pushed
                .executors
                .retain(|e| !matches!(e.uses, zeroflow_spec::Uses::Docker { .. }));
            resolve_flow(&mut pushed, user, self.resolver.as_ref())
                .await
                .map_err(SpecRejected::from)?;
            return Ok(flow);
        }
        resolve_flow(&mut flow, user, self.resolver.as_ref())
            .await
            .map_err(SpecRejected::from)?;
        crate::local::LocalRuntime::new(
            &flow,
            self.local_options("check", project.map(|p| p.dir.as_path())),
            super::flows::throttle_settings,
            None,
        )
        .map_err(|e| SpecRejected::Unrunnable(e.to_string()))?;
        Ok(flow)
    }

    fn flow_dir(&self, id: &str) -> std::path::PathBuf {
        self.cfg.data_dir.join("flows").join(id)
    }

    /// Options to run Flow `id`: from its project folder when it has one, else its own folder.
    fn local_options(&self, id: &str, project_dir: Option<&std::path::Path>) -> LocalOptions {
        let dir = self.flow_dir(id);
        let run_dir = project_dir.map_or_else(|| dir.clone(), std::path::Path::to_path_buf);
        let mut opts = LocalOptions::discover(run_dir, dir.join("work"));
        // Outside the project folder, which an update replaces: state outlives updates, and two
        // Flows' Executors of one name do not share Jina's default (a per-user cache folder).
        opts.workspace = Some(dir.join("workspace"));
        opts.startup_timeout = self.cfg.startup_timeout;
        opts.drain_timeout = self.cfg.drain_timeout;
        opts.zygotes = self.zygotes.clone();
        opts
    }

    // ---- deployed project folders

    /// Unpacks an uploaded project into a scratch folder to check it (and the spec beside it)
    /// before anything is stored.
    pub async fn stage_project(
        &self,
        archive: bytes::Bytes,
        yaml: &str,
    ) -> Result<project::Staged, DeployError> {
        if self.registry.is_none() {
            return Err(DeployError::NoArtifactStore);
        }
        let parent = self.cfg.data_dir.join("tmp");
        let limits = self.cfg.archive_limits;
        let yaml = yaml.to_string();
        tokio::task::spawn_blocking(move || project::stage(archive, &parent, &limits, &yaml))
            .await
            .map_err(|e| DeployError::Internal(e.to_string()))?
            .map_err(|r| DeployError::Refused {
                too_large: r.too_large,
                message: r.message,
            })
    }

    /// Stores a checked project as Flow `id`'s (replacing an older one). Its folder is unpacked
    /// when the Flow starts.
    async fn store_project(
        &self,
        user: &str,
        id: &str,
        staged: &project::Staged,
    ) -> Result<(), DeployError> {
        use zeroflow_artifacts::registry::RegistryError;
        let Some(registry) = &self.registry else {
            return Err(DeployError::NoArtifactStore);
        };
        match registry.push_project(user, id, staged.bytes.clone()).await {
            Ok(_) => Ok(()),
            Err(RegistryError::Archive { source, .. }) => {
                let r = project::Refused::from_archive(&source);
                Err(DeployError::Refused {
                    too_large: r.too_large,
                    message: r.message,
                })
            }
            Err(e @ (RegistryError::MissingFile { .. } | RegistryError::BadName { .. })) => {
                Err(DeployError::Refused {
                    too_large: false,
                    message: e.to_string(),
                })
            }
            Err(e) => Err(DeployError::Internal(format!(
                "cannot store the project folder: {e}"
            ))),
        }
    }

    /// Flow `id`'s project folder, unpacked from the artifact store if the local copy is missing
    /// or stale; None when the Flow was deployed without one.
    pub async fn stored_project(&self, user: &str, id: &str) -> Result<Option<Project>, String> {
        use zeroflow_artifacts::registry::RegistryError;
        let Some(registry) = &self.registry else {
            return Ok(None);
        };
        match registry.materialize_project(user, id).await {
            Ok(dir) => Ok(Some(Project::at(dir))),
            Err(RegistryError::ProjectNotFound { .. }) | Err(RegistryError::BadName { .. }) => {
                Ok(None)
            }
            Err(e) => Err(format!("cannot fetch the Flow's project folder: {e}")),
        }
    }

    /// The `.env` of Flow `rec`'s project, read from its local copy (empty without one).
    pub fn project_context(&self, rec: &FlowRecord) -> BTreeMap<String, String> {
        match &self.registry {
            Some(r) => {
                project::read_dotenv(&r.cache_dir().join("projects").join(&rec.user).join(&rec.id))
            }
            None => BTreeMap::new(),
        }
    }

    /// The stored spec of `rec`, loaded with its project's `.env`.
    pub fn load_record(&self, rec: &FlowRecord) -> Result<zeroflow_spec::Loaded, Vec<String>> {
        let context = self.project_context(rec);
        if let Some((spec, ctx, loaded)) = self.loaded.lock().get(&rec.id)
            && *spec == rec.spec
            && *ctx == context
        {
            return Ok(loaded.clone());
        }
        let dir = self
            .registry
            .as_ref()
            .map(|r| r.cache_dir().join("projects").join(&rec.user).join(&rec.id));
        let loaded = load_spec_in(&rec.spec, Some(&context), dir.as_deref())?;
        // The spec alone does not say whether the files it names changed since.
        if loaded.files.is_empty() {
            self.loaded
                .lock()
                .insert(rec.id.clone(), (rec.spec.clone(), context, loaded.clone()));
        }
        Ok(loaded)
    }

    /// Removes a deleted Flow's project from the store and the local cache (best effort).
    pub(super) async fn forget_project(&self, user: &str, id: &str) {
        let Some(registry) = &self.registry else {
            return;
        };
        let key = zeroflow_artifacts::registry::Registry::project_key(user, id);
        let record = format!("{}.json", key.trim_end_matches(".tar.gz"));
        for k in [record, key] {
            let _ = registry.store().delete(&k).await;
        }
        let dir = registry.cache_dir().join("projects").join(user).join(id);
        let _ = std::fs::remove_dir_all(&dir);
        let mut marker = dir.into_os_string();
        marker.push(".sha256");
        let _ = std::fs::remove_file(marker);
    }

    // ---- requests (each writes the store, then hands the work to a task)

    /// Stores a new Flow (Pending) with its gateway ports chosen now, and starts it. With an
    /// `archive` (the project folder as .tar.gz), the archive and the spec are checked together,
    /// and the archive is stored before the Flow is.
    pub async fn deploy(
        self: &Arc<Self>,
        user: &str,
        kind: Kind,
        yaml: &str,
        archive: Option<bytes::Bytes>,
    ) -> Result<FlowRecord, DeployError> {
        let staged = match archive {
            Some(a) => Some(self.stage_project(a, yaml).await?),
            None => None,
        };
        let flow = self
            .check_spec(user, yaml, staged.as_ref().map(|s| &s.project))
            .await?;
        let id = names::new_id();
        // Bound now so the ports are known (and kept) before the answer; the same sockets are
        // then handed to the gateway.
        // On Kubernetes the gateway's Service has the ports.
        let listeners = match self.kube() {
            None => Some(bind_listeners(&flow, &self.cfg.host, &[], false, Duration::ZERO).await?),
            Some(_) => None,
        };
        if let Some(s) = &staged {
            self.store_project(user, &id, s).await?;
        }
        drop(staged);
        let ports = listeners
            .iter()
            .flatten()
            .filter_map(|(_, l)| l.local_addr().ok().map(|a| a.port()))
            .collect();
        let now = names::now_iso();
        let rec = FlowRecord {
            id: id.clone(),
            user: user.to_string(),
            kind,
            name: flow.name.clone(),
            spec: yaml.to_string(),
            phase: Phase::Pending,
            desired: Desired::Running,
            error: None,
            ports,
            labels: flow.jcloud.labels.clone(),
            ctime: now.clone(),
            utime: now,
        };
        if let Err(e) = self.store.insert_flow(&rec) {
            self.forget_project(user, &id).await;
            return Err(e.into());
        }
        std::fs::create_dir_all(self.flow_dir(&id))
            .map_err(|e| DeployError::Internal(format!("cannot create the Flow's folder: {e}")))?;
        self.cell(&id).log(format!("deployed by {user}"));
        self.carry_out(&id, Phase::Starting, Intent::Apply, listeners);
        Ok(rec)
    }

    /// A new spec for an existing Flow: Updating, then restarted with it on the same ports. With
    /// an `archive`, the project folder is replaced too; without one, the Flow keeps its project.
    pub async fn update(
        self: &Arc<Self>,
        rec: &FlowRecord,
        yaml: &str,
        archive: Option<bytes::Bytes>,
    ) -> Result<(), DeployError> {
        let staged = match archive {
            Some(a) => Some(self.stage_project(a, yaml).await?),
            None => None,
        };
        let existing = match &staged {
            Some(_) => None,
            None => self
                .stored_project(&rec.user, &rec.id)
                .await
                .map_err(DeployError::Internal)?,
        };
        let project = staged.as_ref().map(|s| &s.project).or(existing.as_ref());
        let flow = self.check_spec(&rec.user, yaml, project).await?;
        if let Some(s) = &staged {
            self.store_project(&rec.user, &rec.id, s).await?;
        }
        drop(staged);
        self.store
            .set_spec(&rec.id, yaml, flow.name.as_deref(), &flow.jcloud.labels)?;
        self.store
            .set_desired(&rec.id, Desired::Running, Phase::Updating)?;
        self.cell(&rec.id).log("spec updated");
        self.carry_out(&rec.id, Phase::Updating, Intent::Apply, None);
        Ok(())
    }

    /// `:restart`, `:recreate`, `:resume`, `gateway:restart`: (re)start with the stored spec.
    pub fn restart(self: &Arc<Self>, rec: &FlowRecord, phase: Phase) -> Result<(), StoreError> {
        self.store.set_desired(&rec.id, Desired::Running, phase)?;
        self.cell(&rec.id)
            .log(format!("restart requested ({})", phase.as_str()));
        let intent = if phase == Phase::Pending {
            Intent::Recreate
        } else {
            Intent::Restart
        };
        self.carry_out(&rec.id, Phase::Starting, intent, None);
        Ok(())
    }

    /// `:resume`: starts a paused (or failed) Flow; a serving one stays as it is.
    pub fn resume(self: &Arc<Self>, rec: &FlowRecord) -> Result<(), StoreError> {
        if rec.desired == Desired::Running
            && matches!(
                rec.phase,
                Phase::Serving | Phase::Starting | Phase::Updating | Phase::Pending
            )
        {
            return Ok(());
        }
        self.restart(rec, Phase::Starting)
    }

    /// `:pause`: every Executor goes to zero and the gateway closes; the ports stay reserved in
    /// the store for the resume.
    pub fn pause(self: &Arc<Self>, rec: &FlowRecord) -> Result<(), StoreError> {
        // The phase moves to Paused once everything has stopped (Serving meanwhile is what the
        // client expects); a Flow with nothing running is Paused at once.
        let phase = if rec.phase == Phase::Serving {
            Phase::Serving
        } else {
            Phase::Paused
        };
        self.store.set_desired(&rec.id, Desired::Paused, phase)?;
        self.cell(&rec.id).log("pause requested");
        self.carry_out(&rec.id, Phase::Paused, Intent::Apply, None);
        Ok(())
    }

    /// DELETE: `Deleted` at once (the client's wait loop needs it), then everything stops. On
    /// Kubernetes the phase turns Deleted once the Flow's namespace is gone.
    pub fn delete(self: &Arc<Self>, rec: &FlowRecord) -> Result<(), StoreError> {
        let phase = if self.kube().is_some() {
            rec.phase
        } else {
            Phase::Deleted
        };
        self.store.set_desired(&rec.id, Desired::Deleted, phase)?;
        self.store.purge_flow_children(&rec.id)?;
        self.jobs.cancel_flow(&rec.id);
        self.cell(&rec.id).log("deleted");
        self.carry_out(&rec.id, Phase::Deleted, Intent::Remove, None);
        Ok(())
    }

    /// Sets an Executor's replicas: written into the stored spec (so a restart keeps it), and
    /// applied to the running Flow at once.
    pub async fn scale(
        self: &Arc<Self>,
        rec: &FlowRecord,
        executor: &str,
        replicas: u32,
    ) -> Result<(), DeployError> {
        let loaded = self.load_record(rec).map_err(SpecRejected::Invalid)?;
        let Some(idx) = loaded
            .flow
            .executors
            .iter()
            .position(|e| e.name == executor)
        else {
            return Err(DeployError::NoExecutor(executor.to_string()));
        };
        if let Some(spec) = rewrite_replicas(&rec.spec, rec.kind, idx, replicas) {
            self.store
                .set_spec(&rec.id, &spec, rec.name.as_deref(), &rec.labels)?;
        }
        let cell = self.cell(&rec.id);
        cell.log(format!("{executor}: scale to {replicas} replica(s)"));
        if let Some(k) = self.kube() {
            return k
                .scale(self, rec, &loaded.flow.executors[idx], replicas)
                .await
                .map_err(|e| DeployError::Internal(e.to_string()));
        }
        if let Some(rt) = cell.last_runtime.lock().clone()
            && rec.desired == Desired::Running
        {
            rt.scale(executor, replicas);
        }
        Ok(())
    }

    /// `executors/NAME:restart`: its replicas are replaced (down to zero, then back).
    pub fn restart_executor(
        self: &Arc<Self>,
        rec: &FlowRecord,
        executor: &str,
    ) -> Result<(), DeployError> {
        let loaded = self.load_record(rec).map_err(SpecRejected::Invalid)?;
        let Some(e) = loaded.flow.executors.iter().find(|e| e.name == executor) else {
            return Err(DeployError::NoExecutor(executor.to_string()));
        };
        let cell = self.cell(&rec.id);
        cell.log(format!("{executor}: restart"));
        if let Some(k) = self.kube() {
            let (k, rec, e) = (k.clone(), rec.clone(), e.clone());
            tokio::spawn(async move {
                if let Err(err) = k.restart_executor(&rec, &e).await {
                    tracing::warn!(flow = %rec.id, error = %err, "cannot restart Executor {}", e.name);
                }
            });
            return Ok(());
        }
        let rt = cell.last_runtime.lock().clone();
        if let Some(rt) = rt {
            let executor = executor.to_string();
            tokio::spawn(async move {
                let want = rt.desired(&executor);
                rt.scale(&executor, 0);
                let mut events = rt.subscribe();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while rt.replica_count(&executor) > 0 {
                    tokio::select! {
                        _ = events.recv() => {}
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
                rt.scale(&executor, want);
            });
        }
        Ok(())
    }

    /// Replica logs (`pod -> text`) of one Executor; the gateway's event log for None (on
    /// Kubernetes: the pods' logs, and the gateway pods' beside the event log).
    pub async fn logs(&self, rec: &FlowRecord, executor: Option<&str>) -> BTreeMap<String, String> {
        let cell = self.cell(&rec.id);
        if let Some(k) = self.kube() {
            let events = cell
                .events
                .lock()
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            return k.logs(rec, executor, events).await;
        }
        match executor {
            None => {
                let text = cell
                    .events
                    .lock()
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n");
                BTreeMap::from([(format!("gateway-{}", rec.id), text)])
            }
            Some(e) => {
                let rt = cell.last_runtime.lock().clone();
                match rt {
                    Some(rt) => rt.logs(Some(e)).await,
                    None => BTreeMap::new(),
                }
            }
        }
    }

    /// Each Flow's latest runtime (running or stopped) and its autoscaler's decisions, by Flow
    /// id: what the dashboard watches. Flows on Kubernetes have none here (their gateway pods
    /// hold them).
    pub fn runtimes(&self) -> Vec<FlowRuntime> {
        let cells: Vec<(String, Arc<FlowCell>)> = self
            .cells
            .lock()
            .iter()
            .map(|(id, c)| (id.clone(), c.clone()))
            .collect();
        cells
            .into_iter()
            .filter_map(|(id, c)| {
                let runtime = c.last_runtime.lock().clone()?;
                let decisions = c.last_decisions.lock().clone();
                Some(FlowRuntime {
                    id,
                    runtime,
                    decisions,
                })
            })
            .collect()
    }

    /// At start-up: every Flow that should run starts again on its ports; the rest keep their
    /// phase.
    pub fn restore(self: &Arc<Self>) -> Result<usize, StoreError> {
        if let Some(k) = self.kube() {
            // The cluster still runs them: adopt what it holds (in the background, as it may
            // not answer yet).
            k.start(self);
            return Ok(0);
        }
        let mut n = 0;
        for rec in self.store.list_flows(None, None)? {
            match rec.desired {
                Desired::Running if rec.phase != Phase::Failed => {
                    let phase = if rec.phase == Phase::Updating {
                        Phase::Updating
                    } else {
                        Phase::Starting
                    };
                    self.store.set_phase(&rec.id, phase, None)?;
                    self.cell(&rec.id).log("server restarted: starting again");
                    self.launch(&rec.id, phase, None);
                    n += 1;
                }
                Desired::Paused if rec.phase != Phase::Paused => {
                    self.store.set_phase(&rec.id, Phase::Paused, None)?;
                }
                _ => {}
            }
        }
        Ok(n)
    }

    /// Stops every running Flow (server shutdown). The store is left as it is, so the next
    /// start brings the same Flows back.
    pub async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(k) = self.kube() {
            k.shutdown();
        }
        let cells: Vec<Arc<FlowCell>> = self.cells.lock().values().cloned().collect();
        let stops = cells.into_iter().map(|c| async move {
            c.generation.send_modify(|g| *g += 1);
            if let Some(rf) = c.running.lock().await.take() {
                rf.stop().await;
            }
        });
        futures::future::join_all(stops).await;
        self.jobs.cancel_all();
        // After the Flows: their replicas' forks drained first.
        if let Some(z) = &self.zygotes {
            z.stop().await;
        }
    }

    // ---- the background work

    /// Brings Flow `id` to what its record says: locally by a task that runs it here (see
    /// [`Controller::launch`]), on Kubernetes by writing its Flow resource.
    fn carry_out(
        self: &Arc<Self>,
        id: &str,
        phase: Phase,
        intent: Intent,
        listeners: Option<Vec<(zeroflow_spec::Protocol, tokio::net::TcpListener)>>,
    ) {
        match &self.backend {
            Backend::Local => self.launch(id, phase, listeners),
            Backend::Kubernetes(k) => k.carry_out(self, id, intent),
        }
    }

    /// Starts a task that brings the Flow to what the store says it should be. `phase` is what
    /// it shows while starting (Starting, or Updating for an update).
    fn launch(
        self: &Arc<Self>,
        id: &str,
        phase: Phase,
        listeners: Option<Vec<(zeroflow_spec::Protocol, tokio::net::TcpListener)>>,
    ) {
        let cell = self.cell(id);
        let mut generation = 0;
        cell.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let this = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            this.reconcile(&id, cell, generation, phase, listeners)
                .await;
        });
    }

    async fn reconcile(
        self: Arc<Self>,
        id: &str,
        cell: Arc<FlowCell>,
        generation: u64,
        phase: Phase,
        listeners: Option<Vec<(zeroflow_spec::Protocol, tokio::net::TcpListener)>>,
    ) {
        let mut slot = cell.running.lock().await;
        let mut gen_rx = cell.generation.subscribe();
        if *gen_rx.borrow_and_update() != generation
            || self.stopping.load(std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        if let Some(old) = slot.take() {
            cell.log("stopping the running Flow");
            old.stop().await;
        }
        let set_phase = |p: Phase, err: Option<&str>| {
            // Only the latest request may report; a superseded task stays silent.
            if *cell.generation.borrow() == generation {
                if let Err(e) = self.store.set_phase(id, p, err) {
                    tracing::error!(flow = id, error = %e, "cannot record the phase");
                }
                cell.log(format!(
                    "phase {}{}",
                    p.as_str(),
                    err.map(|e| format!(": {e}")).unwrap_or_default()
                ));
            }
        };
        let rec = match self.store.flow_by_id(id) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(flow = id, error = %e, "cannot read the Flow");
                return;
            }
        };
        match rec.desired {
            Desired::Deleted => {
                let _ = std::fs::remove_dir_all(self.flow_dir(id).join("work"));
                self.forget_project(&rec.user, id).await;
                return;
            }
            Desired::Paused => {
                set_phase(Phase::Paused, None);
                return;
            }
            Desired::Running => {}
        }
        set_phase(phase, None);
        let prepared = self.prepare(&rec, listeners).await;
        let (mut rf, listeners) = match prepared {
            Ok(x) => x,
            Err(e) => {
                set_phase(Phase::Failed, Some(&e));
                return;
            }
        };
        *cell.last_runtime.lock() = Some(rf.runtime.clone());
        *cell.last_decisions.lock() = Some(rf.decisions.clone());
        // Runtime events go to the Flow's event log, for `logs --gateway`.
        {
            let mut events = rf.runtime.subscribe();
            let cell = cell.clone();
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(ev) => cell.log(ev.to_string()),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
            });
        }
        let started = tokio::select! {
            r = rf.start() => Some(r),
            _ = gen_rx.changed() => None,
        };
        match started {
            None => {
                cell.log("superseded while starting; stopping");
                rf.stop().await;
            }
            Some(Err(e)) => {
                let why = e.to_string();
                rf.stop().await;
                set_phase(Phase::Failed, Some(&why));
            }
            Some(Ok(())) => {
                rf.start_autoscaling(self.cfg.autoscaler.clone());
                rf.serve(listeners);
                *slot = Some(rf);
                set_phase(Phase::Serving, None);
            }
        }
    }

    /// Builds the Flow to run: spec, pushed Executors, secrets as env vars, listeners on the
    /// stored ports.
    async fn prepare(
        &self,
        rec: &FlowRecord,
        listeners: Option<Vec<(zeroflow_spec::Protocol, tokio::net::TcpListener)>>,
    ) -> Result<
        (
            RunningFlow,
            Vec<(zeroflow_spec::Protocol, tokio::net::TcpListener)>,
        ),
        String,
    > {
        let project = self.stored_project(&rec.user, &rec.id).await?;
        let mut flow = load_spec_in(
            &rec.spec,
            project.as_ref().map(|p| &p.context),
            project.as_ref().map(|p| p.dir.as_path()),
        )
        .map_err(|e| e.join("; "))?
        .flow;
        resolve_flow(&mut flow, &rec.user, self.resolver.as_ref()).await?;
        for e in &mut flow.executors {
            for (env, r) in &e.env_from_secret {
                let secret = self
                    .store
                    .get_secret(&rec.id, &r.name)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| {
                        format!(
                            "Executor {}: env {env} comes from secret {:?}, which does not exist; create it with POST /secrets",
                            e.name, r.name
                        )
                    })?;
                let v = secret.data.get(&r.key).ok_or_else(|| {
                    format!(
                        "Executor {}: env {env} comes from key {:?} of secret {:?}, which has no such key (it has: {})",
                        e.name,
                        r.key,
                        r.name,
                        secret.data.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })?;
                e.env.insert(env.clone(), v.clone());
            }
        }
        let mut opts = self.local_options(&rec.id, project.as_ref().map(|p| p.dir.as_path()));
        let _ = std::fs::create_dir_all(&opts.work_dir);
        // The project's `.env` reaches the Executors too (as with `jc flow serve`); the spec's
        // own `env` wins.
        opts.env = project
            .as_ref()
            .map(|p| p.context.clone().into_iter().collect())
            .unwrap_or_default();
        opts.env.extend(flow.env.clone());
        if let Some(p) = &project {
            let python = project::python_for(&opts.jina);
            if let Some(deps) =
                project::install_requirements(&flow, &p.dir, &python, self.cfg.startup_timeout)
                    .await?
            {
                opts.env
                    .insert("PYTHONPATH".into(), project::python_path(&deps));
            }
        }
        let listeners = match listeners {
            Some(l) => l,
            None => {
                // The recorded ports are the Flow's endpoints: worth waiting for.
                let l = bind_listeners(&flow, &self.cfg.host, &rec.ports, false, PORT_PATIENCE)
                    .await
                    .map_err(|e| e.to_string())?;
                let ports: Vec<u16> = l
                    .iter()
                    .filter_map(|(_, s)| s.local_addr().ok().map(|a| a.port()))
                    .collect();
                if ports != rec.ports {
                    // An update added a protocol: the new port is kept from now on.
                    let _ = self.store.set_ports(&rec.id, &ports);
                }
                l
            }
        };
        let rf = RunningFlow::new(&flow, opts).map_err(|e: FlowError| e.to_string())?;
        Ok((rf, listeners))
    }

    /// Per Executor shard, desired and ready replicas as the cluster reports them (None on
    /// the local runtime, whose status does not list them).
    pub fn executor_status(&self, rec: &FlowRecord) -> Option<serde_json::Value> {
        self.kube()?.executors(rec)
    }

    /// `status.endpoints`: the gateway's first protocol as `gateway` (deployments: the
    /// Executor's name), further protocols as `gateway-<protocol>`.
    pub fn endpoints(
        &self,
        rec: &FlowRecord,
        flow: Option<&Flow>,
    ) -> serde_json::Map<String, serde_json::Value> {
        if let Some(k) = self.kube() {
            return k.endpoints(rec, flow);
        }
        let mut out = serde_json::Map::new();
        if rec.phase == Phase::Deleted {
            return out;
        }
        let Some(flow) = flow else { return out };
        let names = endpoint_names(rec.kind, flow);
        for ((name, l), port) in names
            .into_iter()
            .zip(&flow.gateway.listeners)
            .zip(&rec.ports)
        {
            out.insert(
                name,
                format!("{}://{}:{port}", scheme(l.protocol), self.cfg.public_host).into(),
            );
        }
        out
    }
}

/// `spec.executors[i].replicas = n` (or `with.replicas` of a Deployment) in the YAML text.
/// None when the YAML cannot be re-written as plain data (e.g. it uses custom tags).
pub fn rewrite_replicas(yaml: &str, kind: Kind, idx: usize, n: u32) -> Option<String> {
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).ok()?;
    let is_deployment =
        kind == Kind::Deployment || doc.get("jtype").and_then(|j| j.as_str()) == Some("Deployment");
    let target = if is_deployment {
        let m = doc.as_mapping_mut()?;
        m.entry("with".into())
            .or_insert_with(|| serde_yaml_ng::Value::Mapping(Default::default()))
    } else {
        let m = doc.as_mapping_mut()?;
        let key = if m.contains_key("executors") {
            "executors"
        } else {
            "deployments"
        };
        m.get_mut(key)?.as_sequence_mut()?.get_mut(idx)?
    };
    target
        .as_mapping_mut()?
        .insert("replicas".into(), serde_yaml_ng::Value::from(n));
    serde_yaml_ng::to_string(&doc).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Spec(#[from] SpecRejected),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Flow(#[from] FlowError),
    #[error("no Executor named {0:?} in this Flow")]
    NoExecutor(String),
    /// An uploaded archive that cannot be taken: malformed or unsafe (400), or over a limit (413).
    #[error("{message}")]
    Refused { too_large: bool, message: String },
    #[error("this server has no artifact store to keep project folders in")]
    NoArtifactStore,
    #[error("{0}")]
    Internal(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_rewrites_the_executor_replicas() {
        let y = "jtype: Flow\nexecutors:\n  - name: a\n  - name: b\n    replicas: 1\n";
        let out = rewrite_replicas(y, Kind::Flow, 1, 3).unwrap();
        let flow = load_spec(&out).unwrap().flow;
        assert_eq!(flow.executors[0].replicas, 1);
        assert_eq!(flow.executors[1].replicas, 3);
        let d = "jtype: Deployment\nwith:\n  name: e\n";
        let out = rewrite_replicas(d, Kind::Deployment, 0, 2).unwrap();
        assert!(out.contains("replicas: 2"), "{out}");
    }
}
