//! TEST CODE: the node agent of Zeroflow's test cluster (`scripts/test-cluster.sh`). It stands in
//! for the kubelet and kube-proxy on machines where no kubelet or container runtime can run;
//! everything above the node (API server, scheduler, controllers, RBAC, admission) is
//! Kubernetes' own code. It must not be used outside tests.
//!
//! What it does, as the kubelet would: registers a Node and keeps it Ready (Lease and status);
//! runs each Pod bound to it as local processes (init containers in order, then the containers,
//! restarted by `restartPolicy` with the crash-loop backoff); reports phase, conditions, container
//! states and readiness from the probes; stops the processes on deletion within the grace period
//! and removes the Pod; serves container logs to the API server over HTTPS; and forwards
//! NodePorts like kube-proxy's userspace mode.
//!
//! What it simplifies, and why:
//! - **No images.** A container's image is ignored: its `command` + `args` run as a process whose
//!   program is looked up on this agent's own PATH (the tests put `target/debug` and the Python
//!   venv's `bin` on it). A container without `command` cannot start. Environment variables an
//!   image would set (`PATH`, `HOME`, the locale) come from this agent's environment.
//! - **Addresses.** Each Pod gets its own address in the node's pod subnet (`--pod-subnet`, .2
//!   to .254, reused once the Pod is gone) and its processes are expected to bind it (via
//!   `$(POD_IP)`); there is no network namespace per Pod, so ports are not isolated otherwise.
//!   The subnet must be local where the agent runs: the whole test cluster runs inside a
//!   network namespace made for the test run (`scripts/in-test-netns.sh`, where 198.18.0.0/15 is
//!   local on `lo`); loopback addresses (127.0.0.0/8) cannot be used because the API server
//!   rejects them in EndpointSlices.
//! - **ServiceAccount tokens.** Instead of the projected token volume (no mount namespaces), a
//!   Pod that mounts a token gets a bound token from the TokenRequest API, refreshed in its
//!   folder, and `KUBECONFIG` pointing at a kubeconfig with the API server, its CA and that
//!   token file; `KUBERNETES_SERVICE_HOST`/`_PORT` name the real API server. kube-rs's
//!   `Config::infer()` reads the kubeconfig, so RBAC applies to the Pod's ServiceAccount.
//! - **Not done:** volumes (other than the token), resource limits, `resourceFieldRef`, exec,
//!   attach, port-forward, HTTPS and gRPC probes, sidecar init containers, service-link
//!   environment variables other than the `kubernetes` Service's.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use parking_lot::Mutex;

mod env;
mod logs;
mod logs_server;
mod node;
mod nodeport;
mod pods;
mod probes;
mod process;

/// Test code: the node agent of Zeroflow's test cluster, standing in for the kubelet. Runs the
/// Pods bound to its Node as local processes (images are ignored: each container's command is
/// looked up on this agent's PATH), serves their logs to the API server and forwards NodePorts.
#[derive(Parser, Debug)]
#[command(name = "zeroflow-test-node", version)]
struct Args {
    /// Kubeconfig with the node's identity (user `system:node:<node name>`, group `system:nodes`).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// The Node's name; it must match the identity in the kubeconfig.
    #[arg(long, default_value = "zeroflow-test-node-0")]
    node_name: String,
    /// The Node's InternalIP: the API server reaches the logs server there, and NodePorts
    /// listen there.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: Ipv4Addr,
    /// The /24 that Pod addresses come from (.2 to .254). It must be local to this machine and
    /// not loopback: `scripts/in-test-netns.sh` runs the cluster where 198.18.0.0/15 is local.
    #[arg(long, default_value = "198.18.0.0/24")]
    pod_subnet: String,
    /// Folder for the Pods' folders (ServiceAccount kubeconfig and token, default working dir)
    /// and the record of running process groups (`procs/`).
    #[arg(long)]
    root_dir: PathBuf,
    /// Folder for container logs (`<ns>_<pod>_<uid>/<container>/<restartCount>.log`, CRI format).
    /// Defaults to `<root-dir>/logs`.
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// The API server as Pods reach it.
pub struct ApiInfo {
    pub server: String,
    pub host: String,
    pub port: u16,
    /// Base64 PEM of the API server's CA, for the Pods' kubeconfigs.
    pub ca_data: String,
}

/// Pod addresses: .2 to .254 of a /24, lowest free first.
pub struct IpPool {
    base: [u8; 3],
    used: Mutex<[bool; 256]>,
}

impl IpPool {
    fn new(subnet: &str) -> Result<IpPool> {
        let Some((addr, "24")) = subnet.split_once('/') else {
            bail!("--pod-subnet {subnet:?} must be a /24, such as 198.18.0.0/24");
        };
        let ip: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("--pod-subnet {subnet:?} is not an IPv4 subnet"))?;
        if ip.is_loopback() {
            bail!(
                "--pod-subnet {subnet:?} is loopback: the API server rejects loopback addresses \
                 in EndpointSlices"
            );
        }
        let o = ip.octets();
        Ok(IpPool {
            base: [o[0], o[1], o[2]],
            used: Mutex::new([false; 256]),
        })
    }

    pub fn subnet(&self) -> String {
        let [a, b, c] = self.base;
        format!("{a}.{b}.{c}.0/24")
    }

    /// An address, `prefer` when it is in the subnet and free (a Pod adopted after a restart).
    pub fn alloc(&self, prefer: Option<&str>) -> Option<Ipv4Addr> {
        let mut used = self.used.lock();
        let [a, b, c] = self.base;
        let host = prefer
            .and_then(|p| p.parse::<Ipv4Addr>().ok())
            .filter(|ip| ip.octets()[..3] == self.base)
            .map(|ip| ip.octets()[3])
            .filter(|&h| (2..=254).contains(&h) && !used[h as usize])
            .or_else(|| (2..=254u8).find(|&h| !used[h as usize]))?;
        used[host as usize] = true;
        Some(Ipv4Addr::new(a, b, c, host))
    }

    pub fn free(&self, ip: &str) {
        if let Ok(ip) = ip.parse::<Ipv4Addr>()
            && ip.octets()[..3] == self.base
        {
            self.used.lock()[ip.octets()[3] as usize] = false;
        }
    }
}

/// What every part of the agent shares.
pub struct Ctx {
    pub client: Client,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub api: ApiInfo,
    pub pods_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub active_logs: logs::Active,
    pub ips: IpPool,
    pub procs: process::Procs,
    /// The running pods: (namespace, name) to UID, for the logs server.
    pub pods: Mutex<HashMap<(String, String), String>>,
    recorder: Recorder,
}

impl Ctx {
    /// Posts an event about `pod`, as the kubelet does (Started, Killing, BackOff, ...), without
    /// waiting for it.
    pub fn event(&self, pod: &Pod, warning: bool, reason: &str, note: String) {
        let recorder = self.recorder.clone();
        let reference = pod.object_ref(&());
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: reason.to_string(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::debug!(error = %e, "event not posted");
            }
        });
    }
}

/// The API server's address and CA, from the agent's kubeconfig.
fn api_info(kubeconfig: &kube::config::Kubeconfig) -> Result<ApiInfo> {
    let context_name = kubeconfig
        .current_context
        .clone()
        .context("the kubeconfig has no current-context")?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .context("the kubeconfig's current context is missing")?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .context("the kubeconfig's cluster is missing")?;
    let server = cluster.server.context("the kubeconfig names no server")?;
    let uri: http::Uri = server.parse().context("the kubeconfig's server URL")?;
    let ca_data = match (
        cluster.certificate_authority_data,
        cluster.certificate_authority,
    ) {
        (Some(data), _) => data,
        (None, Some(file)) => base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(&file).with_context(|| format!("reading {file}"))?),
        (None, None) => bail!("the kubeconfig names no certificate authority"),
    };
    Ok(ApiInfo {
        host: uri
            .host()
            .context("the server URL has no host")?
            .to_string(),
        port: uri.port_u16().unwrap_or(443),
        server,
        ca_data,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();

    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let api = api_info(&kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .context("kubeconfig")?;
    let client = Client::try_from(config).context("API client")?;
    let ips = IpPool::new(&args.pod_subnet)?;
    let logs_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| args.root_dir.join("logs"));
    let pods_dir = args.root_dir.join("pods");
    for d in [&logs_dir, &pods_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kubelet".into(),
            instance: Some(args.node_name.clone()),
        },
    );
    let ctx = Arc::new(Ctx {
        client,
        node_name: args.node_name.clone(),
        node_ip: args.node_ip,
        api,
        pods_dir,
        logs_dir,
        active_logs: logs::Active::default(),
        ips,
        procs: process::Procs::new(args.root_dir.join("procs"))?,
        pods: Mutex::new(HashMap::new()),
        recorder,
    });

    let listener = logs_server::bind(&ctx).await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(logs_server::serve(listener, ctx.clone()));
    node::register(&ctx, port).await?;
    tokio::spawn(node::heartbeat(ctx.clone(), port));
    tokio::spawn(nodeport::run(ctx.clone()));
    let pods = tokio::spawn(pods::run(ctx.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        r = pods => r.context("pod watch task").and_then(|r| r),
        r = server => r.context("logs server task").and_then(|r| r),
    };
    tracing::info!("node agent stopping: killing every container");
    ctx.procs.kill_all(Duration::from_secs(5)).await;
    result
}
