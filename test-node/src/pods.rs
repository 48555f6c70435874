//! The pods bound to this node: one worker per pod runs its init containers in order, then its
//! containers as local processes (restarting them by `restartPolicy` with the kubelet's
//! crash-loop backoff), writes the pod's status, and on deletion stops the processes within the
//! grace period and removes the pod (grace 0), as the kubelet does. It must not decide where pods
//! run (the scheduler does) nor touch another node's pods.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
    ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};

use crate::env::{self, PodFacts};
use crate::probes::{self, Report};
use crate::{Ctx, process};

/// Watches the pods bound to this node and keeps one worker per pod.
pub async fn run(ctx: Arc<Ctx>) -> Result<()> {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut events = watcher::watcher(api, cfg).boxed();
    let mut workers: HashMap<String, watch::Sender<Arc<Pod>>> = HashMap::new();
    // Pods whose worker has finished (deleted them) but whose deletion the watch has not shown
    // yet: a late update must not start them again.
    let mut finished: HashSet<String> = HashSet::new();
    let mut relist: Option<HashSet<String>> = None;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    loop {
        tokio::select! {
            ev = events.try_next() => match ev {
                Ok(Some(watcher::Event::Apply(pod))) => upsert(&ctx, &mut workers, &finished, &done_tx, pod),
                Ok(Some(watcher::Event::InitApply(pod))) => {
                    if let Some(seen) = relist.as_mut() {
                        seen.insert(pod.uid().unwrap_or_default());
                    }
                    upsert(&ctx, &mut workers, &finished, &done_tx, pod);
                }
                Ok(Some(watcher::Event::Delete(pod))) => {
                    let uid = pod.uid().unwrap_or_default();
                    // Dropping the sender tells the worker the pod is gone.
                    workers.remove(&uid);
                    finished.remove(&uid);
                }
                Ok(Some(watcher::Event::Init)) => relist = Some(HashSet::new()),
                Ok(Some(watcher::Event::InitDone)) => {
                    if let Some(seen) = relist.take() {
                        workers.retain(|uid, _| seen.contains(uid));
                        finished.retain(|uid| seen.contains(uid));
                    }
                }
                Ok(None) => bail!("the pod watch ended"),
                Err(e) => {
                    tracing::warn!(error = %e, "pod watch failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
                finished.insert(uid);
            }
        }
    }
}

fn upsert(
    ctx: &Arc<Ctx>,
    workers: &mut HashMap<String, watch::Sender<Arc<Pod>>>,
    finished: &HashSet<String>,
    done: &mpsc::UnboundedSender<String>,
    pod: Pod,
) {
    let uid = pod.uid().unwrap_or_default();
    if let Some(tx) = workers.get(&uid) {
        tx.send_replace(Arc::new(pod));
        return;
    }
    if finished.contains(&uid) {
        return;
    }
    let (tx, rx) = watch::channel(Arc::new(pod));
    workers.insert(uid.clone(), tx);
    let ctx = ctx.clone();
    let done = done.clone();
    tokio::spawn(async move {
        let pod = rx.borrow().clone();
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        if let Err(e) = PodWorker::run(ctx, rx).await {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %format!("{e:#}"), "pod worker failed");
        }
        let _ = done.send(uid);
    });
}

/// A container's state as the pod's status reports it.
#[derive(Clone, Debug)]
enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Term),
}

#[derive(Clone, Debug)]
struct Term {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: Option<String>,
    started_at: Timestamp,
    finished_at: Timestamp,
    container_id: Option<String>,
}

#[derive(Clone, Debug)]
struct CStatus {
    name: String,
    image: String,
    state: State,
    last: Option<Term>,
    restart_count: i32,
    ready: bool,
    started: bool,
    container_id: Option<String>,
}

struct PodState {
    init: Vec<CStatus>,
    main: Vec<CStatus>,
    start_time: Timestamp,
    /// The pod is being torn down: its phase is final (Succeeded or Failed).
    terminal: bool,
}

/// How a container's loop ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Exited and is not restarted (by `restartPolicy`), or an init container succeeded.
    Exited { success: bool },
    /// The pod is being deleted.
    Stopped,
}

/// Kubernetes' crash-loop backoff: the first restart is immediate, then 10 s doubling to 5 min;
/// a container that ran 10 minutes since the last backoff starts over.
#[derive(Default)]
struct Backoff {
    current: Option<Duration>,
    last: Option<tokio::time::Instant>,
}

impl Backoff {
    const INITIAL: Duration = Duration::from_secs(10);
    const MAX: Duration = Duration::from_secs(300);

    /// The wait before restarting a container that exited `now`.
    fn next(&mut self, now: tokio::time::Instant) -> Option<Duration> {
        let fresh = self
            .last
            .is_some_and(|l| now.duration_since(l) <= 2 * Self::MAX);
        self.last = Some(now);
        match self.current {
            Some(d) if fresh => {
                self.current = Some((d * 2).min(Self::MAX));
                Some(d)
            }
            _ => {
                self.current = Some(Self::INITIAL);
                None
            }
        }
    }
}

/// A Go duration string (`10s`, `1m20s`, `5m0s`), as the kubelet's messages print them.
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

struct PodWorker {
    ctx: Arc<Ctx>,
    rx: watch::Receiver<Arc<Pod>>,
    /// Set when the pod is deleted: the grace period its processes get.
    stop: watch::Receiver<Option<Duration>>,
    state: Mutex<PodState>,
    changed: Notify,
    ip: String,
    dir: PathBuf,
    /// The pod's ServiceAccount kubeconfig, once its token is written.
    kubeconfig: watch::Sender<Option<PathBuf>>,
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl PodWorker {
    async fn run(ctx: Arc<Ctx>, mut rx: watch::Receiver<Arc<Pod>>) -> Result<()> {
        let pod = rx.borrow_and_update().clone();
        let (ns, name, uid) = (
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            pod.uid().unwrap_or_default(),
        );
        let spec = pod.spec.clone().unwrap_or_default();

        // A pod that finished before this agent started, or is already being deleted, gets no
        // processes: it waits for its deletion and is then removed.
        if is_terminal(&pod) || pod.metadata.deletion_timestamp.is_some() {
            if wait_deleting(&mut rx).await.is_some() {
                delete_now(&ctx, &ns, &name, &uid).await;
            }
            return Ok(());
        }

        let ip = if spec.host_network == Some(true) {
            ctx.node_ip.to_string()
        } else {
            let prefer = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            match ctx.ips.alloc(prefer.as_deref()) {
                Some(ip) => ip.to_string(),
                None => bail!("no free pod address left in {}", ctx.ips.subnet()),
            }
        };
        let _release = ReleaseIp(ctx.clone(), ip.clone());
        let dir = ctx.pods_dir.join(&uid);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        ctx.pods
            .lock()
            .insert((ns.clone(), name.clone()), uid.clone());
        tracing::info!(pod = %format!("{ns}/{name}"), %ip, "starting pod");

        let (stop_tx, stop_rx) = watch::channel(None);
        let old = pod.status.clone().unwrap_or_default();
        let has_init = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty());
        let status_of = |c: &Container, old: &Option<Vec<ContainerStatus>>, init: bool| {
            let prev = old.iter().flatten().find(|s| s.name == c.name);
            // Adopted after an agent restart: the process is gone, so this run is a restart.
            let ran = prev.is_some_and(|p| {
                p.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            });
            CStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                state: State::Waiting {
                    reason: if init || !has_init {
                        "ContainerCreating".into()
                    } else {
                        "PodInitializing".into()
                    },
                    message: None,
                },
                last: None,
                restart_count: prev.map_or(0, |p| p.restart_count + i32::from(ran)),
                ready: false,
                started: false,
                container_id: None,
            }
        };
        let state = PodState {
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| status_of(c, &old.init_container_statuses, true))
                .collect(),
            main: spec
                .containers
                .iter()
                .map(|c| status_of(c, &old.container_statuses, false))
                .collect(),
            start_time: old.start_time.as_ref().map_or_else(Timestamp::now, |t| t.0),
            terminal: false,
        };
        let w = Arc::new(PodWorker {
            ctx: ctx.clone(),
            rx: rx.clone(),
            stop: stop_rx,
            state: Mutex::new(state),
            changed: Notify::new(),
            ip,
            dir: dir.clone(),
            kubeconfig: watch::channel(None).0,
        });

        let writer = tokio::spawn(w.clone().write_status_loop());
        w.changed.notify_one();
        let watch_deletion = tokio::spawn(async move {
            let grace = wait_deleting(&mut rx).await;
            // Gone from the API at once (a forced deletion): stop quickly.
            let _ = stop_tx.send(Some(grace.unwrap_or(Duration::from_secs(2))));
            grace.is_none()
        });

        let token = tokio::spawn(w.clone().keep_token());
        let completed = w.run_containers(&spec).await;
        token.abort();

        if completed {
            // Every container has exited for good: the phase is final; the pod stays until it
            // is deleted.
            w.changed.notify_one();
            let _ = w.stop.clone().wait_for(Option::is_some).await;
        }
        let gone = watch_deletion.await.unwrap_or(true);
        w.state.lock().terminal = true;
        writer.abort();
        if !gone {
            if let Err(e) = w.write_status().await {
                tracing::debug!(error = %e, "final pod status not written");
            }
            delete_now(&ctx, &ns, &name, &uid).await;
        }
        tracing::info!(pod = %format!("{ns}/{name}"), "pod stopped");
        ctx.pods.lock().remove(&(ns, name));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Runs the init containers in order, then the containers together. True when every
    /// container has exited for good (the pod completed or failed), false when it was stopped.
    async fn run_containers(self: &Arc<Self>, spec: &k8s_openapi::api::core::v1::PodSpec) -> bool {
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            match self.run_container(c, i, true).await {
                Outcome::Exited { success: true } => {}
                Outcome::Exited { success: false } => return true,
                Outcome::Stopped => return false,
            }
        }
        let outcomes = futures::future::join_all(
            spec.containers
                .iter()
                .enumerate()
                .map(|(i, c)| self.run_container(c, i, false)),
        )
        .await;
        !outcomes.contains(&Outcome::Stopped)
    }

    fn update(&self, init: bool, idx: usize, f: impl FnOnce(&mut CStatus)) {
        {
            let mut st = self.state.lock();
            let list = if init { &mut st.init } else { &mut st.main };
            f(&mut list[idx]);
        }
        self.changed.notify_one();
    }

    fn pod(&self) -> Arc<Pod> {
        self.rx.borrow().clone()
    }

    fn event(&self, warning: bool, reason: &str, note: String) {
        self.ctx.event(&self.pod(), warning, reason, note);
    }

    fn stopped(&self) -> Option<Duration> {
        *self.stop.borrow()
    }

    /// One container, from start to its last exit: restarts by `restartPolicy` with backoff.
    async fn run_container(self: &Arc<Self>, c: &Container, idx: usize, init: bool) -> Outcome {
        let policy = self
            .pod()
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let pod_label = {
            let p = self.pod();
            format!(
                "{}_{}({})",
                p.name_any(),
                p.namespace().unwrap_or_default(),
                p.uid().unwrap_or_default()
            )
        };
        let mut backoff = Backoff::default();
        let mut config_retry = Duration::from_secs(1);
        loop {
            if self.stopped().is_some() {
                return Outcome::Stopped;
            }
            let prepared = match self.prepare(c).await {
                Ok(p) => p,
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::warn!(container = %c.name, error = %msg, "container not started");
                    self.event(true, "Failed", format!("Error: {msg}"));
                    self.update(init, idx, |s| {
                        s.state = State::Waiting {
                            reason: "CreateContainerConfigError".into(),
                            message: Some(msg),
                        }
                    });
                    if self.sleep_or_stop(config_retry).await {
                        return Outcome::Stopped;
                    }
                    config_retry = (config_retry * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let (term, stopped) = self.run_once(c, idx, init, prepared).await;
            let success = term.exit_code == 0;
            self.update(init, idx, |s| {
                s.state = State::Terminated(term);
                s.ready = false;
                s.started = false;
            });
            if stopped {
                return Outcome::Stopped;
            }
            let restart = if init {
                if success {
                    return Outcome::Exited { success: true };
                }
                policy != "Never"
            } else {
                match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => !success,
                    _ => true,
                }
            };
            if !restart {
                return Outcome::Exited { success };
            }
            if let Some(delay) = backoff.next(tokio::time::Instant::now()) {
                let message = format!(
                    "back-off {} restarting failed container={} pod={pod_label}",
                    go_duration(delay),
                    c.name
                );
                self.event(
                    true,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {} in pod {pod_label}",
                        c.name
                    ),
                );
                self.update(init, idx, |s| {
                    if let State::Terminated(t) = &s.state {
                        s.last = Some(t.clone());
                    }
                    s.state = State::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: Some(message),
                    };
                });
                if self.sleep_or_stop(delay).await {
                    return Outcome::Stopped;
                }
            }
            self.update(init, idx, |s| {
                if let State::Terminated(t) = &s.state {
                    s.last = Some(t.clone());
                }
                s.restart_count += 1;
            });
        }
    }

    /// Sleeps `d`; true if the pod was deleted meanwhile.
    async fn sleep_or_stop(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = stop.wait_for(Option::is_some) => true,
        }
    }

    /// The container's command line, environment and folder.
    async fn prepare(&self, c: &Container) -> Result<Prepared> {
        let pod = self.pod();
        if needs_token(&pod) {
            let mut ready = self.kubeconfig.subscribe();
            let mut stop = self.stop.clone();
            tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(30), ready.wait_for(Option::is_some)) => {
                    if r.is_err() {
                        bail!("no ServiceAccount token after 30 s (TokenRequest failing; see the node agent's log)");
                    }
                }
                _ = stop.wait_for(Option::is_some) => bail!("the pod is being deleted"),
            }
        }
        let kubeconfig = self.kubeconfig.borrow().clone();
        let facts = PodFacts {
            pod: &pod,
            pod_ip: self.ip.clone(),
            host_ip: self.ctx.node_ip.to_string(),
            node_name: &self.ctx.node_name,
            kubeconfig: kubeconfig.as_deref(),
        };
        let env = env::container_env(&self.ctx, &facts, c).await?;
        let argv = env::command_line(c, &env.defined)?;
        let cwd = match &c.working_dir {
            Some(d) => {
                let d = PathBuf::from(d);
                std::fs::create_dir_all(&d)
                    .with_context(|| format!("creating workingDir {}", d.display()))?;
                d
            }
            None => self.dir.clone(),
        };
        Ok(Prepared { argv, env, cwd })
    }

    /// Starts the container's process and waits for it to exit; kills it when its startup or
    /// liveness probe fails or the pod is deleted. Returns how it ended and whether the pod was
    /// deleted.
    async fn run_once(
        self: &Arc<Self>,
        c: &Container,
        idx: usize,
        init: bool,
        p: Prepared,
    ) -> (Term, bool) {
        let pod = self.pod();
        let run = {
            let st = self.state.lock();
            (if init { &st.init } else { &st.main })[idx].restart_count
        };
        let log_dir = crate::logs::container_dir(
            &self.ctx.logs_dir,
            &pod.namespace().unwrap_or_default(),
            &pod.name_any(),
            &pod.uid().unwrap_or_default(),
            &c.name,
        );
        let started_at = Timestamp::now();
        let mut proc =
            match process::spawn(&self.ctx, &p.argv, &p.env.full, &p.cwd, &log_dir, run).await {
                Ok(proc) => proc,
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::warn!(container = %c.name, error = %msg, "container failed to start");
                    self.event(true, "Failed", format!("Error: {msg}"));
                    let term = Term {
                        exit_code: 128,
                        signal: None,
                        reason: "StartError".into(),
                        message: Some(msg),
                        started_at,
                        finished_at: Timestamp::now(),
                        container_id: None,
                    };
                    return (term, false);
                }
            };
        let container_id = format!("zeroflow-test-node://{}", proc.pgid);
        tracing::info!(pod = %pod.name_any(), container = %c.name, pid = proc.pgid, argv = ?p.argv, "container started");
        self.event(false, "Started", format!("Started container {}", c.name));
        let has_readiness = c.readiness_probe.is_some();
        self.update(init, idx, |s| {
            s.state = State::Running { started_at };
            s.container_id = Some(container_id.clone());
            // Without probes a container is started and ready once it runs.
            s.started = c.startup_probe.is_none();
            s.ready = false;
        });

        let (ptx, mut prx) = mpsc::channel(8);
        let probes = (!init).then(|| {
            let target = probes::Target {
                ip: self
                    .ip
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                ports: c.ports.clone().unwrap_or_default(),
                env: p.env.full.vars().to_vec(),
                path_env: std::env::var("PATH").unwrap_or_default(),
                cwd: p.cwd.clone(),
            };
            tokio::spawn(probes::run(c.clone(), target, ptx))
        });
        let grace = Duration::from_secs(
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        );
        enum Next {
            Exited(std::io::Result<std::process::ExitStatus>),
            Probe(Report),
            Stop(Duration),
        }
        let mut stop = self.stop.clone();
        let mut stopped = false;
        let status = loop {
            let next = tokio::select! {
                s = proc.child.wait() => Next::Exited(s),
                Some(r) = prx.recv() => Next::Probe(r),
                g = stop.wait_for(Option::is_some) => {
                    Next::Stop(g.ok().and_then(|g| *g).unwrap_or_default())
                }
            };
            match next {
                Next::Exited(s) => break s,
                Next::Probe(Report::Started) => self.update(init, idx, |s| {
                    s.started = true;
                    if !has_readiness {
                        s.ready = true;
                    }
                }),
                Next::Probe(Report::Ready(ready)) => self.update(init, idx, |s| s.ready = ready),
                Next::Probe(Report::Unhealthy(msg)) => {
                    tracing::info!(container = %c.name, %msg, "restarting unhealthy container");
                    self.event(true, "Unhealthy", msg.clone());
                    self.event(
                        false,
                        "Killing",
                        format!("Container {} failed a probe, will be restarted", c.name),
                    );
                    break proc.stop(grace).await;
                }
                Next::Stop(g) => {
                    self.event(false, "Killing", format!("Stopping container {}", c.name));
                    stopped = true;
                    break proc.stop(g).await;
                }
            }
        };
        if let Some(p) = probes {
            p.abort();
        }
        proc.reap(&self.ctx).await;
        let (exit_code, signal) = match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                match (s.code(), s.signal()) {
                    (Some(code), _) => (code, None),
                    (None, Some(sig)) => (128 + sig, Some(sig)),
                    (None, None) => (1, None),
                }
            }
            Err(_) => (1, None),
        };
        tracing::info!(pod = %pod.name_any(), container = %c.name, exit_code, "container exited");
        let term = Term {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at,
            finished_at: Timestamp::now(),
            container_id: Some(container_id),
        };
        (term, stopped)
    }

    /// Gets the pod's ServiceAccount token (TokenRequest, bound to the pod) and keeps it fresh
    /// in the pod's folder, with a kubeconfig naming it: what the projected token volume is to a
    /// real pod (this agent has no mount namespaces).
    async fn keep_token(self: Arc<Self>) {
        let pod = self.pod();
        if !needs_token(&pod) {
            return;
        }
        let ns = pod.namespace().unwrap_or_default();
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let api: Api<ServiceAccount> = Api::namespaced(self.ctx.client.clone(), &ns);
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: None,
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
                // The kubelet's default; the API server may extend it.
                expiration_seconds: Some(3607),
            }),
            ..Default::default()
        };
        let mut retry = Duration::from_millis(200);
        loop {
            let wait = match api
                .create_token_request(&sa, &PostParams::default(), &req)
                .await
            {
                Ok(t) => {
                    let token = t
                        .status
                        .and_then(|s| Some((s.token?, s.expiration_timestamp?.0)));
                    match token {
                        Some((token, expires)) => {
                            if let Err(e) = self.write_token(&token, &ns) {
                                tracing::warn!(error = %format!("{e:#}"), "writing the token");
                            }
                            retry = Duration::from_millis(200);
                            // Refreshed at 80% of its life, as the kubelet does.
                            let left = expires.duration_since(Timestamp::now());
                            Duration::try_from(left).unwrap_or_default().mul_f64(0.8)
                        }
                        None => retry,
                    }
                }
                Err(e) => {
                    // The Node authorizer learns of a new pod a moment after it is bound.
                    tracing::debug!(error = %e, %sa, "token request failed; retrying");
                    retry = (retry * 2).min(Duration::from_secs(5));
                    retry
                }
            };
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
        }
    }

    fn write_token(&self, token: &str, ns: &str) -> Result<()> {
        let tmp = self.dir.join("token.tmp");
        std::fs::write(&tmp, token)?;
        std::fs::rename(&tmp, self.dir.join("token"))?;
        if self.kubeconfig.borrow().is_none() {
            let path = env::write_pod_kubeconfig(&self.ctx, &self.dir, ns)?;
            self.kubeconfig.send_replace(Some(path));
        }
        Ok(())
    }

    async fn write_status_loop(self: Arc<Self>) {
        let mut last = serde_json::Value::Null;
        loop {
            self.changed.notified().await;
            let status = self.status();
            let value = serde_json::to_value(&status).unwrap_or_default();
            if value == last {
                continue;
            }
            match self.patch_status(&status).await {
                Ok(()) => last = value,
                Err(e) => {
                    tracing::debug!(error = %e, "pod status not written; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    self.changed.notify_one();
                }
            }
        }
    }

    async fn write_status(&self) -> kube::Result<()> {
        self.patch_status(&self.status()).await
    }

    async fn patch_status(&self, status: &PodStatus) -> kube::Result<()> {
        let pod = self.pod();
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            &pod.namespace().unwrap_or_default(),
        );
        let patch = serde_json::json!({ "status": status });
        api.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map(drop)
    }

    /// The pod's status as the kubelet computes it.
    fn status(&self) -> PodStatus {
        let pod = self.pod();
        let spec = pod.spec.clone().unwrap_or_default();
        let old = pod.status.clone().unwrap_or_default();
        let st = self.state.lock();
        let policy = spec.restart_policy.as_deref().unwrap_or("Always");
        let phase = phase(policy, &st.init, &st.main, st.terminal);
        let now = Time(Timestamp::now());
        let cond = |type_: &str, ok: bool, reason: Option<String>, message: Option<String>| {
            let status = if ok { "True" } else { "False" };
            let prev = old
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == type_ && c.status == status);
            PodCondition {
                type_: type_.into(),
                status: status.into(),
                reason,
                message,
                last_transition_time: Some(
                    prev.and_then(|p| p.last_transition_time.clone())
                        .unwrap_or_else(|| now.clone()),
                ),
                last_probe_time: None,
                observed_generation: None,
            }
        };
        let unready: Vec<&str> = st
            .main
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.name.as_str())
            .collect();
        let uninit: Vec<&str> = st
            .init
            .iter()
            .filter(|c| !matches!(&c.state, State::Terminated(t) if t.exit_code == 0))
            .map(|c| c.name.as_str())
            .collect();
        let done = matches!(phase, "Succeeded" | "Failed");
        let gates_ok = spec.readiness_gates.iter().flatten().all(|g| {
            old.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        });
        let containers_ready = unready.is_empty() && !done;
        let (ready_reason, ready_msg) = if done {
            (Some("PodCompleted".to_string()), None)
        } else if !unready.is_empty() {
            (
                Some("ContainersNotReady".to_string()),
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        } else if !gates_ok {
            (Some("ReadinessGatesNotReady".to_string()), None)
        } else {
            (None, None)
        };
        let mut conditions = vec![
            cond("PodReadyToStartContainers", !st.terminal, None, None),
            if uninit.is_empty() {
                cond(
                    "Initialized",
                    true,
                    done.then(|| "PodCompleted".into()),
                    None,
                )
            } else {
                cond(
                    "Initialized",
                    false,
                    Some("ContainersNotInitialized".into()),
                    Some(format!(
                        "containers with incomplete status: [{}]",
                        uninit.join(" ")
                    )),
                )
            },
            cond(
                "ContainersReady",
                containers_ready,
                ready_reason.clone().filter(|_| !containers_ready),
                ready_msg.clone().filter(|_| !containers_ready),
            ),
            cond(
                "Ready",
                containers_ready && gates_ok,
                ready_reason.filter(|_| !(containers_ready && gates_ok)),
                ready_msg.filter(|_| !(containers_ready && gates_ok)),
            ),
        ];
        // Conditions others own (PodScheduled from the scheduler, DisruptionTarget, readiness
        // gates) are kept.
        let ours: Vec<String> = conditions.iter().map(|c| c.type_.clone()).collect();
        conditions.extend(
            old.conditions
                .iter()
                .flatten()
                .filter(|c| !ours.contains(&c.type_))
                .cloned(),
        );
        let statuses = |list: &[CStatus]| list.iter().map(container_status).collect::<Vec<_>>();
        PodStatus {
            phase: Some(phase.into()),
            conditions: Some(conditions),
            host_ip: Some(self.ctx.node_ip.to_string()),
            host_ips: Some(vec![HostIP {
                ip: self.ctx.node_ip.to_string(),
            }]),
            pod_ip: Some(self.ip.clone()),
            pod_ips: Some(vec![PodIP {
                ip: self.ip.clone(),
            }]),
            start_time: Some(Time(st.start_time)),
            init_container_statuses: (!st.init.is_empty()).then(|| statuses(&st.init)),
            container_statuses: Some(statuses(&st.main)),
            observed_generation: pod.metadata.generation,
            qos_class: old.qos_class.clone(),
            ..Default::default()
        }
    }
}

struct Prepared {
    argv: Vec<String>,
    env: env::ContainerEnv,
    cwd: PathBuf,
}

/// Whether the pod mounts a ServiceAccount token: the ServiceAccount admission plugin adds the
/// projected `kube-api-access-*` volume unless automounting is off (on the pod or its
/// ServiceAccount), so the volume decides, as it does for the kubelet.
fn needs_token(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| {
            v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.service_account_token.is_some())
            })
        })
}

fn container_status(c: &CStatus) -> ContainerStatus {
    let term = |t: &Term| ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(Time(t.started_at)),
        finished_at: Some(Time(t.finished_at)),
        container_id: t.container_id.clone(),
    };
    let state = match &c.state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(term(t)),
            ..Default::default()
        },
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: String::new(),
        container_id: c.container_id.clone(),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: Some(
            c.last
                .as_ref()
                .map_or_else(Default::default, |t| ContainerState {
                    terminated: Some(term(t)),
                    ..Default::default()
                }),
        ),
        ..Default::default()
    }
}

/// The pod's phase, as the kubelet's `getPhase` computes it (without sidecar init containers).
fn phase(policy: &str, init: &[CStatus], main: &[CStatus], terminal: bool) -> &'static str {
    let mut pending_init = 0;
    let mut failed_init = 0;
    for c in init {
        match &c.state {
            State::Running { .. } => pending_init += 1,
            State::Terminated(t) => failed_init += i32::from(t.exit_code != 0),
            State::Waiting { .. } => match &c.last {
                Some(t) => failed_init += i32::from(t.exit_code != 0),
                None => pending_init += 1,
            },
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in main {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated(t) => {
                stopped += 1;
                succeeded += i32::from(t.exit_code == 0);
            }
            State::Waiting { .. } if c.last.is_some() => stopped += 1,
            State::Waiting { .. } => waiting += 1,
        }
    }
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    if terminal && running == 0 {
        // Stopped for deletion: nothing will restart.
        return if stopped > 0 && stopped == succeeded {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    if pending_init > 0 || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

/// Waits until the pod is being deleted (its grace period) or gone from the API (None).
async fn wait_deleting(rx: &mut watch::Receiver<Arc<Pod>>) -> Option<Duration> {
    loop {
        {
            let pod = rx.borrow_and_update();
            if pod.metadata.deletion_timestamp.is_some() {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or_else(|| {
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                    })
                    .unwrap_or(30);
                return Some(Duration::from_secs(grace.max(0) as u64));
            }
        }
        if rx.changed().await.is_err() {
            return None;
        }
    }
}

/// Removes the pod from the API once its processes are gone (grace 0), as the kubelet does.
async fn delete_now(ctx: &Ctx, ns: &str, name: &str, uid: &str) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), "pod deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "deleting pod"),
    }
}

struct ReleaseIp(Arc<Ctx>, String);

impl Drop for ReleaseIp {
    fn drop(&mut self) {
        self.0.ips.free(&self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(state: State, last: Option<i32>) -> CStatus {
        let term = |code| Term {
            exit_code: code,
            signal: None,
            reason: String::new(),
            message: None,
            started_at: Timestamp::UNIX_EPOCH,
            finished_at: Timestamp::UNIX_EPOCH,
            container_id: None,
        };
        CStatus {
            name: "c".into(),
            image: String::new(),
            state,
            last: last.map(term),
            restart_count: 0,
            ready: false,
            started: false,
            container_id: None,
        }
    }

    fn exited(code: i32) -> State {
        State::Terminated(Term {
            exit_code: code,
            signal: None,
            reason: String::new(),
            message: None,
            started_at: Timestamp::UNIX_EPOCH,
            finished_at: Timestamp::UNIX_EPOCH,
            container_id: None,
        })
    }

    fn waiting() -> State {
        State::Waiting {
            reason: "x".into(),
            message: None,
        }
    }

    fn running() -> State {
        State::Running {
            started_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn phases_as_the_kubelet_computes_them() {
        type Case = (&'static str, Vec<CStatus>, Vec<CStatus>, bool, &'static str);
        let cases: Vec<Case> = vec![
            (
                "Always",
                vec![],
                vec![cs(waiting(), None)],
                false,
                "Pending",
            ),
            (
                "Always",
                vec![],
                vec![cs(running(), None)],
                false,
                "Running",
            ),
            (
                "Always",
                vec![],
                vec![cs(exited(0), None)],
                false,
                "Running",
            ),
            (
                "Always",
                vec![],
                vec![cs(waiting(), Some(1))],
                false,
                "Running",
            ),
            (
                "OnFailure",
                vec![],
                vec![cs(exited(0), None)],
                false,
                "Succeeded",
            ),
            (
                "OnFailure",
                vec![],
                vec![cs(exited(1), None)],
                false,
                "Running",
            ),
            ("Never", vec![], vec![cs(exited(1), None)], false, "Failed"),
            (
                "Never",
                vec![],
                vec![cs(exited(0), None), cs(running(), None)],
                false,
                "Running",
            ),
            (
                "Never",
                vec![cs(exited(1), None)],
                vec![cs(waiting(), None)],
                false,
                "Failed",
            ),
            (
                "Always",
                vec![cs(running(), None)],
                vec![cs(waiting(), None)],
                false,
                "Pending",
            ),
            (
                "Always",
                vec![cs(waiting(), Some(1))],
                vec![cs(waiting(), None)],
                false,
                "Pending",
            ),
            (
                "Always",
                vec![cs(exited(0), None)],
                vec![cs(running(), None)],
                false,
                "Running",
            ),
            (
                "Always",
                vec![],
                vec![cs(exited(143), None)],
                true,
                "Failed",
            ),
            (
                "Always",
                vec![],
                vec![cs(exited(0), None)],
                true,
                "Succeeded",
            ),
        ];
        for (policy, init, main, terminal, want) in cases {
            assert_eq!(
                phase(policy, &init, &main, terminal),
                want,
                "{policy} init={init:?} main={main:?} terminal={terminal}"
            );
        }
    }

    #[test]
    fn crash_loop_backoff_doubles_to_five_minutes_and_resets() {
        let mut b = Backoff::default();
        let mut now = tokio::time::Instant::now();
        let mut waits = vec![];
        for _ in 0..8 {
            waits.push(b.next(now).map(|d| d.as_secs()));
            now += Duration::from_secs(1);
        }
        assert_eq!(
            waits,
            [
                None,
                Some(10),
                Some(20),
                Some(40),
                Some(80),
                Some(160),
                Some(300),
                Some(300)
            ]
        );
        now += Duration::from_secs(601);
        assert_eq!(b.next(now), None, "ten quiet minutes start over");
        assert_eq!(b.next(now), Some(Backoff::INITIAL));
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    }
}
