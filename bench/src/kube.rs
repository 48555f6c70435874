//! `--scenario kube-cold`: a cold start from zero on Kubernetes. On the test cluster
//! (`scripts/test-cluster.sh`: etcd, Kubernetes' own API server, controller manager and
//! scheduler, and the test node agent in the kubelet's place, which runs each Pod's containers as
//! processes), `jc server --runtime kubernetes` (its Flow controller) runs a Flow resource whose
//! Rust test Executor is at `min: 0`; the Flow's gateway is `jc flow serve --runtime kubernetes`
//! in its own Pod. Each run waits until the Executor is at zero (its Pods gone), sends one request
//! to the gateway Pod and times it to the answer, with where the time goes: watch events of the
//! Executor's Deployment, Pods and EndpointSlices, each timestamped by this process's clock as it
//! arrives, and the timestamped log lines of the gateway, the node agent and the shim. The local
//! runtime's figure for the same Executor (the `cold` scenario's code path) is measured in the
//! same run, before the cluster starts, and CPU time per wake-up of every process involved is
//! read from /proc.
//!
//! It must run inside the test network namespace (Pod addresses are 198.18.x.x, local only
//! there): `bash scripts/in-test-netns.sh target-bench/release/zeroflow-bench --scenario
//! kube-cold`. It starts and stops the cluster with the script's `up` and `down` only (`down` on
//! every exit path) and never touches the cluster's components otherwise.

use crate::cold::{self, Bins, ColdMode, ColdSample, ms, pct};
use crate::jc::{numbers_after, strip_ansi};
use crate::load::{self, check};
use crate::procs::{self, Proc, Stop, free_port};
use crate::{md_table, verdict, wait_serving};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, CustomResourceExt, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use zeroflow_platform::kube::crd::{FlowResource, FlowSpec};
use zeroflow_platform::kube::names;
use zeroflow_proto::MAX_MESSAGE_SIZE;
use zeroflow_proto::jina::jina_single_data_request_rpc_client::JinaSingleDataRequestRpcClient;

/// Zeroflow's own share of a cold start on Kubernetes (everything but the Executor process's own
/// start), at most, p50.
const TARGET_OWN_SHARE_P50_MS: f64 = 100.0;
const FLOW_ID: &str = "kbench";
const EXECUTOR: &str = "exec";
/// As the local `cold` scenario's Flow: the shortest stable window JCloud accepts, no delay.
const FLOW_YAML: &str = "jtype: Flow\nexecutors:\n  - name: exec\n    command: \
                         zeroflow-test-executor\n    jcloud:\n      autoscale:\n        min: 0\n        \
                         max: 1\n        stable_window: 6s\n        scale_down_delay: 0s\n";
/// The server's autoscaler setting every gateway gets (as the local scenario's `jc`).
const GRACE: &str = "scale-to-zero-grace-period=1s";
/// `up` takes about 15 s on an idle machine; much more on a busy 2-core one.
const UP_DEADLINE: Duration = Duration::from_secs(300);
/// The controller renders the Flow and the gateway Pod starts `jc`.
const DEPLOY_DEADLINE: Duration = Duration::from_secs(240);
/// Stable window 6 s + grace 1 s + the Pod's termination; more if the gateway's grace period is
/// the default (30 s).
const ZERO_DEADLINE: Duration = Duration::from_secs(240);
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);
/// After the answer: the kubelet-style probe (every 1 s) turns the Pod and its endpoint ready.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// Quiet time at zero before each request; every process's CPU over it is its idle rate,
/// subtracted from its CPU during the wake-up.
const IDLE: Duration = Duration::from_millis(1500);

pub struct KubeOptions {
    pub runs: usize,
    /// How the local runtime's row gets an Executor at zero.
    pub local_mode: ColdMode,
    /// Where the cluster lives (kept afterwards); default a temporary folder, removed after a
    /// successful run and kept (its path printed) after a failed one.
    pub cluster_dir: Option<PathBuf>,
}

/// What the watches saw, in arrival order, each with this process's clock.
#[derive(Clone, Debug, PartialEq)]
enum Mark {
    /// The Executor Deployment's `spec.replicas` changed to this.
    Replicas(i32),
    /// A Pod of the Executor appeared (ADDED).
    PodAdded(String),
    /// It got its `spec.nodeName` (bound by the scheduler).
    PodScheduled(String),
    /// Its `status.podIP` was set (the node agent's status update).
    PodIp(String),
    /// Its container's state turned `running` (the node agent's status update).
    ContainerRunning(String),
    /// Its `Ready` condition turned True (the agent's readiness probe, every 1 s).
    PodReady(String),
    /// The Executor's EndpointSlice lists the Pod (not ready yet).
    EndpointListed(String),
    /// ... as ready.
    EndpointReady(String),
}

type Timeline = Arc<Mutex<Vec<(Instant, Mark)>>>;

fn push(tl: &Timeline, at: Instant, m: Mark) {
    tl.lock().expect("timeline lock").push((at, m));
}

/// One cold start on the cluster. Times are ms since the request was sent; `None` when the
/// event or line was not seen.
#[derive(Default, Clone, Debug)]
struct KubeSample {
    first: f64,
    replicas_seen: Option<f64>,
    pod_added: Option<f64>,
    scheduled: Option<f64>,
    pod_ip_seen: Option<f64>,
    running_seen: Option<f64>,
    pod_ready: Option<f64>,
    endpoint_listed: Option<f64>,
    endpoint_ready: Option<f64>,
    /// The gateway's `scale patched` line (after the apply returned), and its `ms=`.
    scale_patched: Option<f64>,
    scale_patch_ms: Option<f64>,
    /// The node agent's `starting pod` line (it saw the Pod bound to its node) and its
    /// `container started` line (right after its spawn of the shim).
    agent_starting: Option<f64>,
    container_started: Option<f64>,
    /// The shim's `started executor` and `executor is serving` lines, and its `startup_ms`.
    executor_spawned: Option<f64>,
    shim_ready: Option<f64>,
    shim_startup_ms: Option<f64>,
    /// The gateway's `replica ready (...)` line: its own probe of the shim's `/ready` (or the
    /// EndpointSlice, whichever came first; `via_probe` says which).
    gateway_ready: Option<f64>,
    via_probe: Option<bool>,
    /// The activator's `cold_start_ms`.
    activator_ms: Option<f64>,
    /// Request sent → answer in and the Pod and its endpoint ready (the CPU window), ms.
    window: f64,
    /// Net CPU ms per watched process over the window (same order as `Watched`), then the
    /// Executor Pod's processes (shim + Executor) since their start.
    cpu: Vec<f64>,
    /// The same, from the request sent to its answer.
    cpu_answer: Vec<f64>,
}

impl KubeSample {
    /// When the Pod was bound: the first sign of it, the bench's watch or the node agent's
    /// (whose own watch of its Pods often sees the binding first).
    fn bound(&self) -> Option<f64> {
        match (self.scheduled, self.agent_starting) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The Executor process's own start, as the issue counts it: the container's process started
    /// (the node agent's spawn of the shim) → the shim's ready line.
    fn process_start(&self) -> Option<f64> {
        Some(self.shim_ready? - self.container_started?)
    }

    /// Zeroflow's own share: everything but [`Self::process_start`].
    fn own_share(&self) -> Option<f64> {
        Some(self.first - self.process_start()?)
    }

    /// Stricter: the shim's own start counts as Zeroflow's too, only the Executor's spawn →
    /// SERVING (the shim's `startup_ms`) is the Executor's.
    fn own_share_strict(&self) -> Option<f64> {
        Some(self.first - self.shim_startup_ms?)
    }
}

/// The cluster, brought up by `scripts/test-cluster.sh up` and down by `down` when dropped.
struct Cluster {
    dir: PathBuf,
    env: HashMap<String, String>,
    /// Remove the folder after `down` (a successful run in a folder of our own).
    remove: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-cluster.sh")
}

/// The script's own progress lines go to our stderr: stdout is the report.
fn to_stderr() -> Result<Stdio> {
    Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
}

impl Cluster {
    async fn up(dir: &Path, path: &std::ffi::OsStr) -> Result<Cluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        // The guard exists before `up` runs: whatever `up` started is stopped on any exit.
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            env: HashMap::new(),
            remove: false,
        };
        eprintln!(
            "kube-cold: bash scripts/test-cluster.sh up {}",
            dir.display()
        );
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(script())
            .arg("up")
            .arg(dir)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(to_stderr()?)
            .stderr(to_stderr()?)
            .kill_on_drop(true);
        let status = match tokio::time::timeout(UP_DEADLINE, cmd.status()).await {
            Ok(s) => s.context("run scripts/test-cluster.sh up")?,
            Err(_) => bail!(
                "scripts/test-cluster.sh up did not finish within {UP_DEADLINE:?}; logs in {}",
                dir.display()
            ),
        };
        if !status.success() {
            bail!(
                "scripts/test-cluster.sh up failed ({status}); logs in {}",
                dir.display()
            );
        }
        c.env = std::fs::read_to_string(dir.join("cluster.env"))
            .context("read cluster.env")?
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(c)
    }

    /// The pid of a component `up` started (`node`, `kube-apiserver`, `etcd`, ...).
    fn pid(&self, component: &str) -> Result<u32> {
        let f = self.dir.join("pids").join(format!("{component}.pid"));
        std::fs::read_to_string(&f)
            .with_context(|| format!("read {}", f.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{} holds no pid", f.display()))
    }

    async fn client(&self) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(self.dir.join("kubeconfig"))
            .context("read the cluster's kubeconfig")?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .context("the cluster's kubeconfig")?;
        kube::Client::try_from(config).context("API client")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        eprintln!(
            "kube-cold: bash scripts/test-cluster.sh down {}",
            self.dir.display()
        );
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null());
        if let (Ok(o), Ok(e)) = (to_stderr(), to_stderr()) {
            cmd.stdout(o).stderr(e);
        }
        match cmd.status() {
            Ok(s) if s.success() => {
                if self.remove {
                    let _ = std::fs::remove_dir_all(&self.dir);
                } else {
                    eprintln!(
                        "kube-cold: the cluster's logs are in {}",
                        self.dir.display()
                    );
                }
            }
            Ok(s) => eprintln!("error: scripts/test-cluster.sh down failed ({s})"),
            Err(e) => eprintln!("error: running scripts/test-cluster.sh down: {e}"),
        }
    }
}

/// The Pod addresses (198.18.0.0/15) are local only in the test network namespace.
fn check_netns() -> Result<()> {
    match std::net::TcpListener::bind(("198.18.0.1", 0)) {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "198.18.0.0/15 is not local here ({e}): run the bench inside the test network \
             namespace: bash scripts/in-test-netns.sh target-bench/release/zeroflow-bench \
             --scenario kube-cold"
        ),
    }
}

/// Background watch tasks, aborted when dropped.
struct Watches(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn watch_all(client: &kube::Client, ns: &str, tl: &Timeline) -> Watches {
    let deployment = names::executor_object(EXECUTOR, None);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let mut tasks = vec![];

    let t = tl.clone();
    let cfg = watcher::Config::default().fields(&format!("metadata.name={deployment}"));
    tasks.push(tokio::spawn(async move {
        let mut last = None;
        let mut s = std::pin::pin!(watcher(deployments, cfg).default_backoff());
        while let Some(ev) = s.next().await {
            let at = Instant::now();
            if let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = ev {
                let r = d.spec.and_then(|s| s.replicas);
                if r.is_some() && r != last {
                    last = r;
                    push(&t, at, Mark::Replicas(r.unwrap_or_default()));
                }
            }
        }
    }));

    let t = tl.clone();
    let cfg =
        watcher::Config::default().labels(&format!("{}={}", names::LABEL_EXECUTOR, dns_executor()));
    tasks.push(tokio::spawn(async move {
        // Per Pod: scheduled, IP, running, ready already marked.
        let mut seen: HashMap<String, [bool; 4]> = HashMap::new();
        let mut s = std::pin::pin!(watcher(pods, cfg).default_backoff());
        while let Some(ev) = s.next().await {
            let at = Instant::now();
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let name = p.name_any();
                    let marks = seen.entry(name.clone()).or_insert_with(|| {
                        push(&t, at, Mark::PodAdded(name.clone()));
                        [false; 4]
                    });
                    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                    let status = p.status.as_ref();
                    let has_ip = status.and_then(|s| s.pod_ip.as_ref()).is_some();
                    let running = status
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                        });
                    let ready = status
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    for (i, (now, mark)) in [
                        (scheduled, Mark::PodScheduled(name.clone())),
                        (has_ip, Mark::PodIp(name.clone())),
                        (running, Mark::ContainerRunning(name.clone())),
                        (ready, Mark::PodReady(name.clone())),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        if now && !marks[i] {
                            marks[i] = true;
                            push(&t, at, mark);
                        }
                    }
                }
                Ok(watcher::Event::Delete(p)) => {
                    seen.remove(&p.name_any());
                }
                _ => {}
            }
        }
    }));

    let t = tl.clone();
    let cfg =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={deployment}"));
    tasks.push(tokio::spawn(async move {
        // Per Pod: listed, ready already marked.
        let mut seen: HashMap<String, [bool; 2]> = HashMap::new();
        let mut s = std::pin::pin!(watcher(slices, cfg).default_backoff());
        while let Some(ev) = s.next().await {
            let at = Instant::now();
            if let Ok(watcher::Event::Apply(sl) | watcher::Event::InitApply(sl)) = ev {
                let mut now_listed = HashSet::new();
                for e in sl.endpoints.iter().flatten() {
                    let Some(pod) = e.target_ref.as_ref().and_then(|r| r.name.clone()) else {
                        continue;
                    };
                    now_listed.insert(pod.clone());
                    let marks = seen.entry(pod.clone()).or_insert_with(|| {
                        push(&t, at, Mark::EndpointListed(pod.clone()));
                        [true, false]
                    });
                    let ready = e.conditions.as_ref().and_then(|c| c.ready) == Some(true);
                    if ready && !marks[1] {
                        marks[1] = true;
                        push(&t, at, Mark::EndpointReady(pod.clone()));
                    }
                }
                // Only one slice per Service here: who left it is gone.
                seen.retain(|p, _| now_listed.contains(p));
            }
        }
    }));
    Watches(tasks)
}

/// The Executor's label value (its name as a DNS label).
fn dns_executor() -> String {
    zeroflow_platform::knative::dns_label(EXECUTOR, 63)
}

/// A process whose CPU time each wake-up is charged for.
struct Watched {
    label: &'static str,
    pid: u32,
}

fn cpu_now(w: &[Watched]) -> Vec<Duration> {
    w.iter().map(|p| procs::sched_cpu(p.pid)).collect()
}

/// CPU ms of every watched process since `before`, net of its idle rate over `window` ms, then
/// the Executor Pod's (the shims under the node agent, with their Executors: this cluster runs
/// no other shim) since its start.
fn cpu_since(
    w: &[Watched],
    before: &[Duration],
    idle_rates: &[f64],
    window: f64,
    agent: u32,
) -> Vec<f64> {
    let mut v: Vec<f64> = cpu_now(w)
        .iter()
        .zip(before)
        .zip(idle_rates)
        .map(|((b, a), r)| ms(b.saturating_sub(*a)) - r * window)
        .collect();
    v.push(
        procs::descendants(agent)
            .into_iter()
            .filter(|&p| procs::cmdline(p).contains("zeroflow-shim"))
            .map(|p| ms(procs::tree_sched_cpu(p)))
            .sum(),
    );
    v
}

/// The lines of a log written by `tracing` (its own timestamp first), or of a CRI container
/// log (`<time> <stream> <F|P> <text>`, the text a tracing line or not): each with the tracing
/// timestamp when there is one, else the node agent's.
fn timed_lines(path: &Path) -> Vec<(Timestamp, String)> {
    let text = strip_ansi(&std::fs::read_to_string(path).unwrap_or_default());
    text.lines()
        .filter_map(|l| {
            let mut words = l.splitn(2, ' ');
            let first: Timestamp = words.next()?.parse().ok()?;
            let rest = words.next().unwrap_or_default();
            // CRI: `stdout F text`.
            let text = match rest.split_once(' ') {
                Some(("stdout" | "stderr", r)) => r.split_once(' ').map_or("", |(_, t)| t),
                _ => rest,
            };
            let inner = text
                .split_whitespace()
                .next()
                .and_then(|w| w.parse::<Timestamp>().ok());
            Some((inner.unwrap_or(first), text.to_string()))
        })
        .collect()
}

/// The newest log file of `container` in Pod `pod` (`DIR/node/logs/NS_POD_UID/CONTAINER/N.log`).
fn container_log(logs: &Path, ns: &str, pod: &str, container: &str) -> Option<PathBuf> {
    let prefix = format!("{ns}_{pod}_");
    let dir = std::fs::read_dir(logs)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))?
        .path()
        .join(container);
    let mut runs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let n = p.file_stem()?.to_str()?.parse().ok()?;
            Some((n, p))
        })
        .collect();
    runs.sort();
    runs.pop().map(|(_, p)| p)
}

fn has_word(line: &str, word: &str) -> bool {
    line.split_whitespace().any(|w| w == word)
}

fn field_after(line: &str, key: &str) -> Option<f64> {
    numbers_after(line, key).first().map(|&v| v as f64)
}

/// Polls `f` every 200 ms until it gives Some, for at most `deadline`.
async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The scenario: local runtime first (the cluster is not running yet), then the cluster.
pub async fn kube_cold(bins: &Bins, opts: &KubeOptions) -> Result<(String, bool)> {
    check_netns()?;
    let load_before = cold::loadavg();
    let (local, local_errors) = cold::local_rust(bins, opts.runs, opts.local_mode).await?;
    let (kube, kube_errors, labels) = on_cluster(bins, opts).await?;
    let mut all_ok = true;
    for (what, errors) in [("local", &local_errors), ("kubernetes", &kube_errors)] {
        if !errors.is_empty() {
            all_ok = false;
            eprintln!(
                "error: kube-cold {what}: {} wrong answers; first: {}",
                errors.len(),
                errors[0]
            );
        }
    }
    Ok((report(&kube, &local, &labels, opts, &load_before), all_ok))
}

async fn on_cluster(
    bins: &Bins,
    opts: &KubeOptions,
) -> Result<(Vec<KubeSample>, Vec<String>, Vec<&'static str>)> {
    // kube uses rustls, and the workspace enables more than one provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let bin_dir = bins.jc.parent().context("jc has no folder")?.to_path_buf();
    // The node agent runs each container's program from its PATH: this build's binaries
    // first (`jc`, `zeroflow-shim`, `zeroflow-test-executor`, `zeroflow-test-node`).
    let mut path_dirs = vec![bin_dir.clone()];
    if let Some(j) = &bins.jina
        && let Some(d) = j.parent()
    {
        path_dirs.push(d.to_path_buf());
    }
    path_dirs.extend(
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    let path = std::env::join_paths(path_dirs)?;
    for b in ["zeroflow-test-node", "zeroflow-shim"] {
        crate::find_bin(&bin_dir, b)?;
    }
    let own_dir = opts.cluster_dir.is_none();
    let dir = opts.cluster_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("zeroflow-bench-cluster-{}", std::process::id()))
    });
    let mut cluster = Cluster::up(&dir, &path).await?;
    let client = cluster.client().await?;

    // The CRD, as an admin installs it (manifests/platform/crd.yaml is generated from it).
    let ssa = PatchParams::apply("zeroflow-bench").force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = FlowResource::crd();
    let crd_name = crd.name_any();
    crds.patch(&crd_name, &ssa, &Patch::Apply(&crd)).await?;
    wait_for(
        "the Flow CRD to be established",
        DEPLOY_DEADLINE,
        || async {
            let c = crds.get(&crd_name).await?;
            Ok(c.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(()))
        },
    )
    .await?;

    // The control plane with its Flow controller, as a user runs it against a cluster.
    let port = free_port()?;
    let data = dir.join("server-data");
    let mut cmd = Command::new(&bins.jc);
    cmd.args(["server", "--port", &port.to_string(), "--data-dir"])
        .arg(&data)
        .args(["--runtime", "kubernetes", "--advertise-url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["--autoscaler", GRACE])
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("PATH", &path);
    let mut server = Proc::spawn(
        "jc server --runtime kubernetes",
        cmd,
        dir.join("jc-server.log"),
        Stop::InterruptLeader,
        false,
    )?;

    // The Flow, as `kubectl apply -f` of a Flow resource gives it (what `jc flow deploy` makes
    // the server write).
    let ns = names::namespace(FLOW_ID);
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns,
            &ssa,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
            })),
        )
        .await?;
    let flows: Api<FlowResource> = Api::namespaced(client.clone(), &ns);
    let flow = FlowResource::new(
        &names::flow_resource(FLOW_ID),
        FlowSpec {
            flow_id: FLOW_ID.into(),
            owner: "bench".into(),
            yaml: FLOW_YAML.into(),
            ..Default::default()
        },
    );
    flows.create(&PostParams::default(), &flow).await?;
    eprintln!("kube-cold: Flow {ns}/{} applied", flow.name_any());

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let gateway_pod = {
        let lp = ListParams::default().labels(&format!(
            "{}={},app.kubernetes.io/component=gateway",
            names::LABEL_FLOW,
            names::flow_resource(FLOW_ID)
        ));
        let end = Instant::now() + DEPLOY_DEADLINE;
        loop {
            server.check_running()?;
            let ready = pods.list(&lp).await?.items.into_iter().find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            if let Some(p) = ready {
                break p;
            }
            if Instant::now() >= end {
                let status = flows
                    .get(&flow.name_any())
                    .await
                    .ok()
                    .and_then(|f| f.status);
                bail!(
                    "the Flow's gateway Pod is not Ready after {DEPLOY_DEADLINE:?}; the Flow's \
                     status: {status:#?}\njc server's log:\n{}",
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let gw_name = gateway_pod.name_any();
    let gw_ip = gateway_pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("the gateway Pod has no IP")?;
    // The gateway Pod's own address, as a client inside the cluster calls it (not the
    // NodePort, whose forwarding is the test node's stand-in for kube-proxy).
    let gateway = format!("http://{gw_ip}:8080");
    wait_serving(&gateway, &mut server, Duration::from_secs(120)).await?;
    eprintln!("kube-cold: gateway Pod {gw_name} serving at {gateway}");

    let agent = cluster.pid("node")?;
    let gw_pid = procs::descendants(agent)
        .into_iter()
        .find(|&p| {
            let c = procs::cmdline(p);
            c.contains("--flow-resource") && c.contains(&ns)
        })
        .context("no `jc flow serve --runtime kubernetes` process under the node agent")?;
    let mut watched = vec![
        Watched {
            label: "gateway Pod: `jc flow serve --runtime kubernetes` (activator, autoscaler)",
            pid: gw_pid,
        },
        Watched {
            label: "`jc server --runtime kubernetes` (Flow controller)",
            pid: server.pid(),
        },
        Watched {
            label: "test node agent (the kubelet's stand-in)",
            pid: agent,
        },
    ];
    for (label, c) in [
        ("kube-apiserver", "kube-apiserver"),
        ("etcd", "etcd"),
        ("kube-controller-manager", "kube-controller-manager"),
        ("kube-scheduler", "kube-scheduler"),
    ] {
        watched.push(Watched {
            label,
            pid: cluster.pid(c)?,
        });
    }
    let mut labels: Vec<&'static str> = watched.iter().map(|w| w.label).collect();
    labels.push("Executor Pod: shim + Executor (since their start)");

    let tl: Timeline = Arc::default();
    let _watches = watch_all(&client, &ns, &tl);
    let logs_dir = dir.join("node/logs");
    let executor_label = format!("{}={}", names::LABEL_EXECUTOR, dns_executor());
    let deployment = names::executor_object(EXECUTOR, None);
    let mut samples = vec![];
    let mut errors = vec![];
    // Run 0 is a warm-up, not recorded: the first start of each program pays for the page
    // cache, and the gateway's first call to a replica for its lazy set-up.
    for i in 0..=opts.runs {
        wait_for(
            "the Executor back at zero, its Pods gone",
            ZERO_DEADLINE,
            || {
                let (deployments, pods, lp) = (
                    &deployments,
                    &pods,
                    ListParams::default().labels(&executor_label),
                );
                let deployment = &deployment;
                async move {
                    let d = deployments.get_opt(deployment).await?;
                    let at_zero = d.and_then(|d| d.spec?.replicas) == Some(0);
                    Ok((at_zero && pods.list(&lp).await?.items.is_empty()).then_some(()))
                }
            },
        )
        .await
        .with_context(|| {
            format!(
                "run {i}; the gateway Pod's log: {}",
                gw_log_hint(&logs_dir, &ns, &gw_name)
            )
        })?;
        server.check_running()?;
        let ch = load::connect(&gateway, 1).await?.remove(0);
        let mut client = JinaSingleDataRequestRpcClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let idle0 = (Instant::now(), cpu_now(&watched));
        tokio::time::sleep(IDLE).await;
        let cpu0 = cpu_now(&watched);
        let idle_ms = ms(idle0.0.elapsed());
        let idle_rates: Vec<f64> = cpu0
            .iter()
            .zip(&idle0.1)
            .map(|(b, a)| ms(b.saturating_sub(*a)) / idle_ms)
            .collect();
        let from = tl.lock().expect("timeline lock").len();
        let request_id = format!("k{i:031x}");
        let (t0, t0_wall) = (Instant::now(), Timestamp::now());
        let res = tokio::time::timeout(
            ANSWER_DEADLINE,
            client.process_single_data(cold::request(&request_id)),
        )
        .await;
        let first = ms(t0.elapsed());
        let cpu_answer = cpu_since(&watched, &cpu0, &idle_rates, first, agent);
        let err = match res {
            Ok(r) => check(r, &request_id).err(),
            Err(_) => Some(format!("no answer within {ANSWER_DEADLINE:?}")),
        };
        // This run's Pod, and the moment both the Pod and its endpoint are ready.
        let marks = || tl.lock().expect("timeline lock")[from..].to_vec();
        let pod = wait_for("the run's Executor Pod", SETTLE_DEADLINE, || async {
            Ok(marks().into_iter().find_map(|(_, m)| match m {
                Mark::PodAdded(p) => Some(p),
                _ => None,
            }))
        })
        .await?;
        wait_for(
            "the Executor Pod and its endpoint ready",
            SETTLE_DEADLINE,
            || async {
                let m = marks();
                let has = |want: &Mark| m.iter().any(|(_, x)| x == want);
                Ok(
                    (has(&Mark::PodReady(pod.clone())) && has(&Mark::EndpointReady(pod.clone())))
                        .then_some(()),
                )
            },
        )
        .await?;
        let window = ms(t0.elapsed());
        let cpu = cpu_since(&watched, &cpu0, &idle_rates, window, agent);

        let since = |at: Instant| ms(at.saturating_duration_since(t0));
        let first_mark = |want: &dyn Fn(&Mark) -> bool| {
            marks()
                .into_iter()
                .find(|(_, m)| want(m))
                .map(|(at, _)| since(at))
        };
        let is_pod = |m: &Mark, f: fn(String) -> Mark| *m == f(pod.clone());
        let rel = |ts: Timestamp| (ts.as_nanosecond() - t0_wall.as_nanosecond()) as f64 / 1e6;
        let mut s = KubeSample {
            first,
            window,
            cpu,
            cpu_answer,
            replicas_seen: first_mark(&|m| matches!(m, Mark::Replicas(r) if *r >= 1)),
            pod_added: first_mark(&|m| is_pod(m, Mark::PodAdded)),
            scheduled: first_mark(&|m| is_pod(m, Mark::PodScheduled)),
            pod_ip_seen: first_mark(&|m| is_pod(m, Mark::PodIp)),
            running_seen: first_mark(&|m| is_pod(m, Mark::ContainerRunning)),
            pod_ready: first_mark(&|m| is_pod(m, Mark::PodReady)),
            endpoint_listed: first_mark(&|m| is_pod(m, Mark::EndpointListed)),
            endpoint_ready: first_mark(&|m| is_pod(m, Mark::EndpointReady)),
            ..Default::default()
        };
        // Lines from just before the request on (clocks are the same machine's; 5 ms of slack
        // for the order of `Instant::now` and `Timestamp::now` above).
        let recent = |lines: Vec<(Timestamp, String)>| -> Vec<(f64, String)> {
            lines
                .into_iter()
                .map(|(ts, l)| (rel(ts), l))
                .filter(|(t, _)| *t > -5.0)
                .collect()
        };
        if let Some(f) = container_log(&logs_dir, &ns, &gw_name, names::GATEWAY_CONTAINER) {
            let lines = recent(timed_lines(&f));
            if let Some((t, l)) = lines
                .iter()
                .find(|(_, l)| l.contains("scale patched") && has_word(l, "replicas=1"))
            {
                s.scale_patched = Some(*t);
                s.scale_patch_ms = field_after(l, "ms=");
            }
            if let Some((t, l)) = lines.iter().find(|(_, l)| l.contains("replica ready (")) {
                s.gateway_ready = Some(*t);
                s.via_probe = Some(l.contains("/ready probe"));
            }
            s.activator_ms = lines
                .iter()
                .find_map(|(_, l)| field_after(l, "cold_start_ms="));
        }
        let agent_lines = recent(timed_lines(&dir.join("node.log")));
        s.agent_starting = agent_lines
            .iter()
            .find(|(_, l)| l.contains("starting pod") && has_word(l, &format!("pod={ns}/{pod}")))
            .map(|(t, _)| *t);
        s.container_started = agent_lines
            .iter()
            .find(|(_, l)| {
                l.contains("container started")
                    && has_word(l, &format!("pod={pod}"))
                    && has_word(l, &format!("container={}", names::EXECUTOR_CONTAINER))
            })
            .map(|(t, _)| *t);
        if let Some(f) = container_log(&logs_dir, &ns, &pod, names::EXECUTOR_CONTAINER) {
            let lines = recent(timed_lines(&f));
            s.executor_spawned = lines
                .iter()
                .find(|(_, l)| l.contains("started executor"))
                .map(|(t, _)| *t);
            if let Some((t, l)) = lines
                .iter()
                .find(|(_, l)| l.contains("executor is serving"))
            {
                s.shim_ready = Some(*t);
                s.shim_startup_ms = field_after(l, "startup_ms=");
            }
        }
        report_run(i, &s, err.as_deref());
        errors.extend(err);
        if i > 0 {
            samples.push(s);
        }
    }
    server.check_running()?;
    drop(server);
    cluster.remove = own_dir;
    Ok((samples, errors, labels))
}

fn gw_log_hint(logs: &Path, ns: &str, pod: &str) -> String {
    container_log(logs, ns, pod, names::GATEWAY_CONTAINER)
        .map_or_else(|| "(not found)".into(), |p| p.display().to_string())
}

fn report_run(i: usize, s: &KubeSample, err: Option<&str>) {
    let f = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
    eprintln!(
        "    kube #{i}{}: answer {:.1} ms; patched {} · pod {} · scheduled {} · started {} · \
         shim ready {} · gateway ready {} ({}) · Pod Ready {} · endpoint ready {} ms; own share \
         {} ms{}",
        if i == 0 { " (warm-up)" } else { "" },
        s.first,
        f(s.scale_patched),
        f(s.pod_added),
        f(s.scheduled),
        f(s.container_started),
        f(s.shim_ready),
        f(s.gateway_ready),
        match s.via_probe {
            Some(true) => "probe",
            Some(false) => "slice",
            None => "?",
        },
        f(s.pod_ready),
        f(s.endpoint_ready),
        f(s.own_share()),
        err.map(|e| format!(": WRONG ANSWER {e}"))
            .unwrap_or_default()
    );
}

fn fmt1(x: f64) -> String {
    if x.is_nan() {
        "–".to_string()
    } else {
        format!("{x:.1}")
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Values of `f` over the samples where it is known.
fn col<S>(samples: &[S], f: impl Fn(&S) -> Option<f64>) -> Vec<f64> {
    samples.iter().filter_map(f).collect()
}

fn report(
    kube: &[KubeSample],
    local: &[ColdSample],
    labels: &[&str],
    opts: &KubeOptions,
    load_before: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nCold start on Kubernetes: the first request to an Executor at zero (Rust \
         `zeroflow-test-executor`, `jcloud.autoscale` min 0, max 1), one unary \
         `process_single_data` with one small document, sent to the Flow's gateway Pod \
         (`jc flow serve --runtime kubernetes`) at its Pod address and timed to its answer; the \
         Executor's Pods gone before each run. Test cluster: Kubernetes' own API server, \
         controller manager and scheduler on etcd, the test node agent in the kubelet's place; \
         `jc server --runtime kubernetes` runs the Flow controller. Times are ms since the \
         request was sent: watch events by the bench's clock as they arrive, log lines by their \
         own timestamps. {} runs after a warm-up ({} local runs, mode `{}`); percentiles are \
         nearest-rank (with 20 runs p99 is the maximum). {} cores, load average before {}.\n",
        kube.len(),
        local.len(),
        format!("{:?}", opts.local_mode).to_lowercase(),
        cold::cores(),
        load_before
    );

    type Get = dyn Fn(&KubeSample) -> Option<f64>;
    let step = |a: &Get, b: &Get| col(kube, |s| Some(b(s)? - a(s)?));
    let stats_table = |head: &str, rows: Vec<(&str, Vec<f64>)>| {
        let mut table = vec![vec![
            head.to_string(),
            "n".into(),
            "p50 ms".into(),
            "p99 ms".into(),
            "min ms".into(),
            "max ms".into(),
        ]];
        for (label, v) in &rows {
            table.push(vec![
                label.to_string(),
                v.len().to_string(),
                fmt1(pct(v, 0.5)),
                fmt1(pct(v, 0.99)),
                fmt1(pct(v, 0.0)),
                fmt1(pct(v, 1.0)),
            ]);
        }
        md_table(table)
    };

    // What happened when, each from its own source.
    let timeline: Vec<(&str, Vec<f64>)> = vec![
        (
            "1. scale patch: the gateway's `scale patched` (log)",
            col(kube, |s| s.scale_patched),
        ),
        (
            "   Deployment `spec.replicas` 0 → 1 (watch)",
            col(kube, |s| s.replicas_seen),
        ),
        ("2. Pod created: ADDED (watch)", col(kube, |s| s.pod_added)),
        (
            "3. scheduled: `spec.nodeName` set (watch)",
            col(kube, |s| s.scheduled),
        ),
        (
            "   the node agent's `starting pod` (log)",
            col(kube, |s| s.agent_starting),
        ),
        (
            "4. process started: the node agent's `container started` (log)",
            col(kube, |s| s.container_started),
        ),
        (
            "   the shim's `started executor` (log)",
            col(kube, |s| s.executor_spawned),
        ),
        (
            "   `status.podIP` set (watch)",
            col(kube, |s| s.pod_ip_seen),
        ),
        (
            "   container state `running` (watch)",
            col(kube, |s| s.running_seen),
        ),
        (
            "5. ready: the shim's `executor is serving` (log)",
            col(kube, |s| s.shim_ready),
        ),
        (
            "   the gateway's `replica ready` (log)",
            col(kube, |s| s.gateway_ready),
        ),
        (
            "   Pod `Ready` condition (watch; the agent probes every 1 s)",
            col(kube, |s| s.pod_ready),
        ),
        (
            "6. EndpointSlice: the endpoint listed, not ready (watch)",
            col(kube, |s| s.endpoint_listed),
        ),
        (
            "   the endpoint ready (watch)",
            col(kube, |s| s.endpoint_ready),
        ),
        (
            "7. released: the answer received",
            col(kube, |s| Some(s.first)),
        ),
    ];
    out.push_str(&stats_table(
        "Kubernetes: ms since the request was sent",
        timeline,
    ));

    // The same, as the intervals of the path the request waits on.
    let first = |s: &KubeSample| Some(s.first);
    let path: Vec<(&str, Vec<f64>)> = vec![
        (
            "request → `scale patched` (activator queue and poke, autoscaler, SSA of the scale)",
            col(kube, |s| s.scale_patched),
        ),
        (
            "   of which the apply's round trip (`ms=`)",
            col(kube, |s| s.scale_patch_ms),
        ),
        (
            "`scale patched` → Pod ADDED (controller manager: Deployment → ReplicaSet → Pod)",
            step(&|s| s.scale_patched, &|s| s.pod_added),
        ),
        (
            "Pod ADDED → scheduled (kube-scheduler; the binding seen by the bench or the agent, \
             whichever first)",
            step(&|s| s.pod_added, &KubeSample::bound),
        ),
        (
            "scheduled → `starting pod` (the node agent's watch)",
            step(&KubeSample::bound, &|s| s.agent_starting),
        ),
        (
            "`starting pod` → `container started` (agent: address, ServiceAccount token, spawn)",
            step(&|s| s.agent_starting, &|s| s.container_started),
        ),
        (
            "`container started` → `started executor` (the shim's own start)",
            step(&|s| s.container_started, &|s| s.executor_spawned),
        ),
        (
            "`started executor` → `executor is serving` (the Executor's start, polled by the shim)",
            step(&|s| s.executor_spawned, &|s| s.shim_ready),
        ),
        (
            "shim ready → the gateway's `replica ready` (its /ready probe of the Pod address)",
            step(&|s| s.shim_ready, &|s| s.gateway_ready),
        ),
        (
            "   the Pod address known: `status.podIP` → the gateway's `replica ready`",
            step(&|s| s.pod_ip_seen, &|s| s.gateway_ready),
        ),
        (
            "`replica ready` → answer (release, the first call through the shim)",
            step(&|s| s.gateway_ready, &first),
        ),
        (
            "activator `cold_start_ms` (request queued → replica added)",
            col(kube, |s| s.activator_ms),
        ),
        ("**total: request sent → answer**", col(kube, first)),
        (
            "the Executor process's own start: `container started` → shim ready",
            col(kube, KubeSample::process_start),
        ),
        (
            "**Zeroflow's own share** = total − the process's own start",
            col(kube, KubeSample::own_share),
        ),
        (
            "stricter: total − the Executor's spawn → SERVING (shim `startup_ms`)",
            col(kube, KubeSample::own_share_strict),
        ),
        (
            "off the path: `container started` → `status.podIP` (the agent's status write)",
            step(&|s| s.container_started, &|s| s.pod_ip_seen),
        ),
        (
            "off the path: shim ready → Pod `Ready` (the agent's 1 s readiness probe)",
            step(&|s| s.shim_ready, &|s| s.pod_ready),
        ),
    ];
    out.push('\n');
    out.push_str(&stats_table(
        "Kubernetes: where the time goes (intervals)",
        path,
    ));

    // Side by side: the same Executor, the local runtime, same run.
    let l_first: Vec<f64> = local.iter().map(|s| ms(s.first)).collect();
    let l_process = col(local, |s| s.runtime_ready_ms.map(|v| v as f64));
    let l_own = col(local, |s| Some(ms(s.first) - s.runtime_ready_ms? as f64));
    let l_strict = col(local, |s| Some(ms(s.first) - s.shim_startup_ms? as f64));
    let k_first = col(kube, |s| Some(s.first));
    let k_own = col(kube, KubeSample::own_share);
    let k_process = col(kube, KubeSample::process_start);
    let k_strict = col(kube, KubeSample::own_share_strict);
    let side: Vec<(&str, &[f64], &[f64])> = vec![
        ("total: request sent → answer", &k_first, &l_first),
        (
            "the Executor process's own start (Kubernetes: container started → shim ready; local: \
             shim spawned → ready line read)",
            &k_process,
            &l_process,
        ),
        ("Zeroflow's own share (total − the above)", &k_own, &l_own),
        ("stricter: total − shim `startup_ms`", &k_strict, &l_strict),
    ];
    let mut table = vec![vec![
        "same Executor, same run".to_string(),
        "Kubernetes p50 ms".into(),
        "Kubernetes p99 ms".into(),
        "local p50 ms".into(),
        "local p99 ms".into(),
    ]];
    for (label, k, l) in side {
        table.push(vec![
            label.to_string(),
            fmt1(pct(k, 0.5)),
            fmt1(pct(k, 0.99)),
            fmt1(pct(l, 0.5)),
            fmt1(pct(l, 0.99)),
        ]);
    }
    out.push('\n');
    out.push_str(&md_table(table));

    // CPU per wake-up.
    let mut table = vec![vec![
        "CPU per wake-up, mean over runs, net of each process's idle rate".to_string(),
        "to the answer ms".into(),
        "to Pod and endpoint ready ms".into(),
    ]];
    let per = |i: usize, answer: bool| {
        mean(
            &kube
                .iter()
                .filter_map(|s| if answer { &s.cpu_answer } else { &s.cpu }.get(i).copied())
                .collect::<Vec<_>>(),
        )
    };
    // The first three watched processes are Zeroflow's; the Executor Pod comes last.
    let mut zf = [0.0; 2];
    let mut all = [0.0; 2];
    for (i, label) in labels.iter().enumerate() {
        let v = [per(i, true), per(i, false)];
        table.push(vec![format!("Kubernetes: {label}"), fmt1(v[0]), fmt1(v[1])]);
        for k in 0..2 {
            if i < 3 {
                zf[k] += v[k];
            }
            all[k] += v[k];
        }
    }
    table.push(vec![
        "Kubernetes, Zeroflow's (gateway Pod, controller, node agent)".to_string(),
        fmt1(zf[0]),
        fmt1(zf[1]),
    ]);
    table.push(vec![
        "Kubernetes, every process above".to_string(),
        fmt1(all[0]),
        fmt1(all[1]),
    ]);
    let l_jc = mean(&col(local, |s| s.jc_cpu_ms));
    let l_replica = mean(&col(local, |s| s.replica_cpu_ms));
    table.push(vec![
        "local: `jc flow serve` (gateway, activator, autoscaler, runtime)".to_string(),
        fmt1(l_jc),
        "".into(),
    ]);
    table.push(vec![
        "local: shim + Executor (since their start)".to_string(),
        fmt1(l_replica),
        "".into(),
    ]);
    out.push('\n');
    out.push_str(&md_table(table));

    let (own50, own99) = (pct(&k_own, 0.5), pct(&k_own, 0.99));
    let _ = writeln!(
        out,
        "\n- Zeroflow's own share of a cold start on Kubernetes: p50 **{own50:.1} ms**, p99 \
         {own99:.1} ms (target p50 ≤ {TARGET_OWN_SHARE_P50_MS} ms: {}); local runtime, same \
         Executor, same run: p50 {:.1} ms, p99 {:.1} ms.",
        verdict(own50 <= TARGET_OWN_SHARE_P50_MS),
        pct(&l_own, 0.5),
        pct(&l_own, 0.99),
    );
    let _ = writeln!(
        out,
        "- Total request → answer: Kubernetes p50 {:.1} ms vs local {:.1} ms ({:.1}x).",
        pct(&k_first, 0.5),
        pct(&l_first, 0.5),
        pct(&k_first, 0.5) / pct(&l_first, 0.5)
    );
    let k50 = pct(&k_first, 0.5);
    let _ = writeln!(
        out,
        "- CPU per wake-up, to the answer: Zeroflow's processes on Kubernetes (gateway Pod, \
         controller, node agent) {:.1} ms = {:.1}x local `jc` ({l_jc:.1} ms); every process \
         (with Kubernetes' own and the Executor Pod) {:.1} ms against local `jc` + shim + \
         Executor {:.1} ms ({:.1}x). On {} cores, {:.1} ms of CPU needs at least {:.1} ms of the \
         {k50:.1} ms p50 wall time ({:.0} % of both cores busy on this wake-up alone). To Pod and \
         endpoint ready (p50 {:.0} ms): Zeroflow's {:.1} ms, every process {:.1} ms.",
        zf[0],
        zf[0] / l_jc,
        all[0],
        l_jc + l_replica,
        all[0] / (l_jc + l_replica),
        cold::cores(),
        all[0],
        all[0] / cold::cores().max(1) as f64,
        100.0 * all[0] / (cold::cores().max(1) as f64 * k50),
        pct(&col(kube, |s| Some(s.window)), 0.5),
        zf[1],
        all[1],
    );
    let probe = kube.iter().filter(|s| s.via_probe == Some(true)).count();
    let _ = writeln!(
        out,
        "- The gateway added the replica on its own /ready probe in {probe} of {} runs (else \
         on the EndpointSlice).",
        kube.len()
    );
    out
}
