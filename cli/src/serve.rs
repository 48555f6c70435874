//! `jc flow serve` and `jc flow validate`.

use crate::server_cmd::RuntimeArg;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zeroflow_platform::local::{LocalOptions, ZygotePool};
use zeroflow_platform::runtime::RuntimeEvent;
use zeroflow_platform::server::flows::{self, FlowTimeouts, RunningFlow};
use zeroflow_spec::Source;

/// Exit codes, as sysexits: bad input 65, cannot start 69, internal 70.
const EX_DATAERR: i32 = 65;
const EX_UNAVAILABLE: i32 = 69;
const EX_NOINPUT: i32 = 66;
const EX_USAGE: i32 = 64;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The Flow YAML file, or a project folder with a flow.yml (as made by `jc new`). With
    /// `--runtime kubernetes`, `--flow-resource` names the Flow instead.
    #[arg(required_unless_present = "flow_resource")]
    pub path: Option<PathBuf>,
    /// Where the Executors run: `local` starts each replica here as a child process;
    /// `kubernetes` serves the gateway of a Flow whose Executors are Deployments in a cluster
    /// ($KUBECONFIG, else ~/.kube/config, else the pod's own): it learns their ready pods from
    /// EndpointSlices, calls the pods directly, and scales the Deployments.
    #[arg(long, value_enum, default_value_t = RuntimeArg::Local)]
    pub runtime: RuntimeArg,
    /// With `--runtime kubernetes`: the namespace of the Flow's Deployments and Services.
    #[arg(long, required_if_eq("runtime", "kubernetes"))]
    pub namespace: Option<String>,
    /// With `--runtime kubernetes`: the Flow resource (flows.zeroflow.dev) in --namespace whose
    /// Flow is served.
    #[arg(long, value_name = "NAME", conflicts_with = "path")]
    pub flow_resource: Option<String>,
    /// Address the gateway listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Gateway port(s), overriding the Flow's `with.port` (one per protocol, in order).
    #[arg(long, value_delimiter = ',')]
    pub port: Vec<u16>,
    /// Serve Prometheus /metrics of the gateway on this port.
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// How long a replica may take to start serving.
    #[arg(long, default_value = "600", value_name = "SECONDS")]
    pub startup_timeout: u64,
    /// Server-level autoscaler setting, Knative's key and value (repeatable), e.g.
    /// `--autoscaler scale-to-zero-grace-period=30s --autoscaler panic-threshold-percentage=200`.
    #[arg(long = "autoscaler", value_name = "KEY=VALUE")]
    pub autoscaler: Vec<String>,
    /// How long a replica may take to finish its in-flight requests when stopping.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    pub drain_timeout: u64,
    /// Threads serving the gateway, activator and autoscaler. One (the default) keeps every
    /// request's hops on one core, which is the fastest on small machines: no hand-offs between
    /// threads. More spreads the gateway over cores for Flows that need more than one core of
    /// gateway work (many clients, large JSON bodies over HTTP).
    #[arg(long, default_value = "1", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    /// Call this Executor at HOST:PORT instead of running it here, as if the Flow said
    /// `external: true` (repeatable); a sharded one takes one address per shard, comma
    /// separated. `jc flow export --target knative` runs the gateway so.
    #[arg(
        long = "executor-address",
        value_name = "NAME=HOST:PORT[,HOST:PORT...]"
    )]
    pub executor_address: Vec<String>,
    /// Serve every protocol of the gateway on one port (the first of --port, else the Flow's
    /// first): gRPC by its content type, websocket upgrades, and HTTP. For platforms that route
    /// one port per service, as Knative does.
    #[arg(long)]
    pub one_port: bool,
    /// Port of the web dashboard, on 127.0.0.1 only (0: any free port; printed at start).
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    pub dashboard_port: u16,
    /// Do not serve the web dashboard.
    #[arg(long)]
    pub no_dashboard: bool,
}

/// The gateway's sockets: one per protocol (as Jina serves), or one for all.
enum Bound {
    Each(Vec<(zeroflow_spec::Protocol, tokio::net::TcpListener)>),
    One(tokio::net::TcpListener),
}

/// Applies `--executor-address NAME=HOST:PORT[,HOST:PORT...]` (one address per shard, or one
/// for all) to the Flow's Executors.
fn apply_addresses(flow: &mut zeroflow_spec::Flow, pairs: &[String]) -> Result<(), String> {
    for pair in pairs {
        let bad = |why: String| format!("--executor-address {pair:?}: {why}");
        let (name, addrs) = pair
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=HOST:PORT".into()))?;
        let mut parsed = vec![];
        for addr in addrs.split(',') {
            let (host, port) = addr.rsplit_once(':').ok_or_else(|| {
                bad(format!(
                    "expected HOST:PORT, the port is missing in {addr:?}"
                ))
            })?;
            let port: u16 = port
                .parse()
                .map_err(|_| bad(format!("the port {port:?} is not a number from 1 to 65535")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(bad(format!("the host is missing in {addr:?}")));
            }
            parsed.push((host.to_string(), port));
        }
        let known: Vec<String> = flow.executors.iter().map(|e| e.name.clone()).collect();
        let exec = flow
            .executors
            .iter_mut()
            .find(|e| e.name == name)
            .ok_or_else(|| {
                bad(format!(
                    "the Flow has no Executor {name:?} (it has: {})",
                    known.join(", ")
                ))
            })?;
        if parsed.len() > 1 && parsed.len() != exec.shards as usize {
            return Err(bad(format!(
                "{} addresses for {} shard(s): give one address, or one per shard",
                parsed.len(),
                exec.shards
            )));
        }
        let (host, port) = parsed[0].clone();
        exec.external = Some(zeroflow_spec::ExternalAddress {
            host,
            port,
            tls: false,
            shards: if parsed.len() > 1 { parsed } else { vec![] },
        });
    }
    Ok(())
}

fn load(path: &Path) -> Result<zeroflow_spec::Flow, i32> {
    load_with_text(path).map(|(flow, _)| flow)
}

/// The Flow file `path` names: itself, or a project folder's `flow.yml` (as `jc flow deploy`
/// takes a folder). Else the exit code after printing why.
pub(crate) fn flow_file(path: &Path) -> Result<PathBuf, i32> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    ["flow.yml", "flow.yaml"]
        .iter()
        .map(|f| path.join(f))
        .find(|f| f.is_file())
        .ok_or_else(|| {
            eprintln!(
                "error: {} is a folder without flow.yml (or flow.yaml); give the Flow file",
                path.display()
            );
            EX_NOINPUT
        })
}

/// The Flow at `path` and its text, or the exit code after printing why it cannot be loaded.
pub(crate) fn load_with_text(path: &Path) -> Result<(zeroflow_spec::Flow, String), i32> {
    let path = &flow_file(path)?;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return Err(EX_NOINPUT);
        }
    };
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let source = Source {
        name: path.display().to_string(),
        env: std::env::vars().collect(),
        context: zeroflow_platform::server::project::read_dotenv(&dir),
        ..Default::default()
    };
    let files = zeroflow_platform::server::project::SpecFiles {
        dir,
        confined: false,
    };
    load_text(&text, &source, &files).map(|flow| (flow, text))
}

/// Loads a Flow's YAML `text` with the spec crate (the Deployment YAMLs it names through
/// `files`), printing its warnings; else the exit code after printing why it cannot be loaded.
fn load_text(
    text: &str,
    source: &Source,
    files: &dyn zeroflow_spec::FileReader,
) -> Result<zeroflow_spec::Flow, i32> {
    match zeroflow_spec::load_with_files(text, source, files) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {}: {w}", source.name);
            }
            Ok(loaded.flow)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(EX_DATAERR)
        }
    }
}

pub fn validate(path: &Path) -> i32 {
    match load(path) {
        Ok(flow) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&flow).unwrap_or_default()
            );
            0
        }
        Err(code) => code,
    }
}

pub async fn serve(mut args: ServeArgs) -> i32 {
    let on_kubernetes = args.runtime == RuntimeArg::Kubernetes;
    if !on_kubernetes && (args.namespace.is_some() || args.flow_resource.is_some()) {
        eprintln!("error: --namespace and --flow-resource need --runtime kubernetes");
        return EX_USAGE;
    }
    let client = if on_kubernetes {
        match zeroflow_platform::server::kube_backend::client().await {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("error: {e}");
                return EX_UNAVAILABLE;
            }
        }
    } else {
        None
    };
    let namespace = args.namespace.clone().unwrap_or_default();
    // What the Flow is, for messages: its file, or its resource.
    let (mut flow, what) = match (args.flow_resource.clone(), args.path.clone(), &client) {
        (Some(name), _, Some(client)) => {
            let spec = match zeroflow_platform::kube::runtime::read_flow(
                client.clone(),
                &namespace,
                &name,
            )
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EX_UNAVAILABLE;
                }
            };
            let source = Source {
                name: format!("flows.zeroflow.dev/{name} in namespace {namespace}"),
                env: std::env::vars().collect(),
                context: spec.env.clone(),
                ..Default::default()
            };
            // The resource is the whole Flow: it names no file of the gateway's.
            match load_text(&spec.yaml, &source, &zeroflow_spec::NoFiles) {
                Ok(f) => (f, source.name),
                Err(code) => return code,
            }
        }
        (None, Some(path), _) => {
            let path = match flow_file(&path) {
                Ok(p) => p,
                Err(code) => return code,
            };
            args.path = Some(path.clone());
            match load(&path) {
                Ok(f) => (f, path.display().to_string()),
                Err(code) => return code,
            }
        }
        _ => {
            eprintln!("error: give the Flow file, or --runtime kubernetes with --flow-resource");
            return EX_USAGE;
        }
    };
    if let Err(e) = apply_addresses(&mut flow, &args.executor_address) {
        eprintln!("error: {e}");
        return EX_USAGE;
    }
    let autoscaler_config = match zeroflow_platform::scaling::config_from_pairs(&args.autoscaler) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: --autoscaler: {e}");
            return EX_USAGE;
        }
    };
    let flow_dir = args
        .path
        .as_ref()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let work_dir = std::env::temp_dir().join(format!("zeroflow-{}", std::process::id()));
    let mut opts = LocalOptions::discover(flow_dir.clone(), work_dir.clone());
    opts.startup_timeout = Duration::from_secs(args.startup_timeout);
    opts.drain_timeout = Duration::from_secs(args.drain_timeout);
    opts.env = zeroflow_platform::server::project::read_dotenv(&flow_dir)
        .into_iter()
        .collect();
    opts.env.extend(flow.env.clone());
    // The zygotes this Flow's Python replicas fork from: ours, stopped when we stop.
    let zygotes = ZygotePool::from_env();
    opts.zygotes = zygotes.clone();

    // Bind first, so a taken port fails before any Executor starts.
    let bound = if args.one_port {
        let port = args
            .port
            .first()
            .copied()
            .or_else(|| flow.gateway.listeners.first().and_then(|l| l.port))
            .unwrap_or(0);
        match tokio::net::TcpListener::bind((args.host.as_str(), port)).await {
            Ok(l) => Bound::One(l),
            Err(e) => {
                eprintln!(
                    "error: the gateway cannot listen on {}:{port}: {e}",
                    args.host
                );
                return EX_UNAVAILABLE;
            }
        }
    } else {
        // A port in use is the user's to free: say so at once.
        match flows::bind_listeners(&flow, &args.host, &args.port, true, Duration::ZERO).await {
            Ok(l) => Bound::Each(l),
            Err(e) => {
                eprintln!("error: {e}");
                return EX_UNAVAILABLE;
            }
        }
    };
    let built = match &client {
        None => RunningFlow::new(&flow, opts.clone()).map_err(|e| e.to_string()),
        Some(client) => {
            // The Executors' pods stay when the gateway stops: it only stops watching them.
            let timeouts = FlowTimeouts {
                startup: opts.startup_timeout,
                shutdown: Duration::from_secs(5),
            };
            kube_flow(&flow, client.clone(), &namespace, timeouts).await
        }
    };
    let mut running = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EX_UNAVAILABLE;
        }
    };
    // Every scaling event is printed as it happens.
    let mut events = running.runtime.subscribe();
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            println!("[{}] {ev}", clock());
        }
    });
    let at_zero: Vec<&str> = flow
        .executors
        .iter()
        .filter(|e| {
            e.external.is_none()
                && if on_kubernetes {
                    running.runtime.desired(&e.name) == 0
                } else {
                    flows::initial_replicas(e) == 0
                }
        })
        .map(|e| e.name.as_str())
        .collect();
    let at_zero = if at_zero.is_empty() {
        String::new()
    } else {
        format!(" ({} at zero until the first request)", at_zero.join(", "))
    };
    if on_kubernetes {
        eprintln!(
            "Serving the gateway of {what}: {} Executor(s){at_zero}...",
            flow.executors.len(),
        );
    } else {
        eprintln!(
            "Starting {} Executor(s) of {what}{at_zero}...",
            flow.executors.len(),
        );
    }
    if let Err(e) = running.start().await {
        // On Kubernetes the gateway serves anyway: the cluster keeps trying the Executor's pods
        // (and the Flow's status says why they fail), requests for a stuck Executor fail at once
        // naming why, and the others are served. Exiting would only crash-loop the gateway too.
        if on_kubernetes {
            eprintln!("warning: {e}; serving anyway");
        } else {
            eprintln!("error: {e}");
            running.stop().await;
            return EX_UNAVAILABLE;
        }
    }
    running.start_autoscaling(autoscaler_config);
    let running = Arc::new(running);

    if let Some(port) = args.metrics_port {
        let r = running.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let r = r.clone();
                async move { r.metrics_text() }
            }),
        );
        match tokio::net::TcpListener::bind((args.host.as_str(), port)).await {
            Ok(sock) => {
                tokio::spawn(async move { axum::serve(sock, app).await });
            }
            Err(e) => eprintln!("warning: no /metrics on port {port}: {e}"),
        }
    }

    println!("Flow is serving. Endpoints:");
    let endpoints: Vec<(
        zeroflow_spec::Protocol,
        std::io::Result<std::net::SocketAddr>,
    )> = match &bound {
        Bound::Each(ls) => ls.iter().map(|(p, l)| (*p, l.local_addr())).collect(),
        Bound::One(l) => flow
            .gateway
            .listeners
            .iter()
            .map(|x| (x.protocol, l.local_addr()))
            .collect(),
    };
    let mut flow_endpoints = std::collections::BTreeMap::new();
    for (protocol, addr) in endpoints {
        if let Ok(addr) = addr {
            flow_endpoints.insert(
                flows::protocol_name(protocol).to_string(),
                format!("{}://{addr}", flows::scheme(protocol)),
            );
            println!(
                "  {:<10} {}://{addr}",
                flows::protocol_name(protocol),
                flows::scheme(protocol)
            );
        }
    }
    for e in &flow.executors {
        match &e.external {
            Some(a) => println!(
                "  executor   {:<20} external at {}:{}",
                e.name, a.host, a.port
            ),
            None => println!(
                "  executor   {:<20} {} replica(s) ready",
                e.name,
                running.runtime.ready_replicas(&e.name)
            ),
        }
    }
    if !args.no_dashboard {
        let name = flow
            .name
            .clone()
            .or_else(|| flow.jcloud.name.clone())
            .unwrap_or_else(|| {
                // A project's flow.yml is named after its folder.
                let p = Path::new(&what);
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("flow");
                match (stem, p.parent().and_then(|d| d.file_name())) {
                    ("flow", Some(dir)) => dir.to_string_lossy().into_owned(),
                    _ => stem.to_string(),
                }
            });
        let local = zeroflow_dashboard::LocalFlow {
            id: "local".into(),
            name,
            flow: flow.clone(),
            endpoints: flow_endpoints.clone(),
            runtime: running.runtime.clone(),
            created: zeroflow_platform::server::names::now_iso(),
        };
        match zeroflow_dashboard::serve_local(local, Some(&running.decisions), args.dashboard_port)
            .await
        {
            Ok(addr) => println!("Dashboard: http://{addr}/"),
            Err(e) => eprintln!("warning: no dashboard on port {}: {e}", args.dashboard_port),
        }
    }
    println!("Press Ctrl-C to stop.");

    // The Flow stops on Ctrl-C / SIGTERM, or when an Executor is marked Failed (its replicas kept
    // crashing): a `jc flow serve` whose Executor cannot run exits as it would at start-up. Not
    // on Kubernetes: a stuck pod may come back (a new image, a node with room), and the gateway
    // serves the other Executors meanwhile (requests for the stuck one fail at once, saying why).
    let failed = Arc::new(parking_lot::Mutex::new(None::<String>));
    let stop = {
        let failed = failed.clone();
        let mut events = running.runtime.subscribe();
        async move {
            let executor_failed = async {
                loop {
                    match events.recv().await {
                        Ok(RuntimeEvent::ExecutorFailed { executor, why }) => {
                            return format!("Executor {executor}: {why}");
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await;
                        }
                    }
                }
            };
            tokio::select! {
                _ = shutdown_signal() => {}
                why = executor_failed, if !on_kubernetes => *failed.lock() = Some(why),
            }
        }
    };
    let served = match bound {
        Bound::Each(listeners) => running.serve_until(listeners, stop).await,
        Bound::One(listener) => running.serve_one_port_until(listener, stop).await,
    };
    if on_kubernetes {
        eprintln!("Stopping the gateway (the Executors' pods stay)...");
    } else {
        eprintln!("Stopping: draining replicas...");
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    match Arc::try_unwrap(running) {
        Ok(r) => r.stop().await,
        // The metrics server still holds a handle; stopping the runtime is what matters.
        Err(r) => r.runtime.shutdown(r.timeouts.shutdown).await,
    }
    if let Some(z) = &zygotes {
        z.stop().await;
    }
    if let Some(why) = failed.lock().take() {
        eprintln!("error: {why}");
        return EX_UNAVAILABLE;
    }
    match served {
        Ok(()) => {
            eprintln!("Stopped.");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            70
        }
    }
}

/// The Flow's gateway over its Executors on Kubernetes (their objects in `namespace`).
async fn kube_flow(
    flow: &zeroflow_spec::Flow,
    client: zeroflow_platform::kube::runtime::Client,
    namespace: &str,
    timeouts: FlowTimeouts,
) -> Result<RunningFlow, String> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = zeroflow_activator::ActivatorMetrics::new(&mut registry);
    let runtime = zeroflow_platform::kube::runtime::KubeRuntime::new(
        client,
        namespace,
        flow,
        flows::throttle_settings,
        Some(metrics),
    )
    .await
    .map_err(|e| e.to_string())?;
    RunningFlow::with_runtime(flow, Arc::new(runtime), registry, timeouts)
        .map_err(|e| e.to_string())
}

/// Wall-clock time of day for event lines (UTC, HH:MM:SS.mmm).
fn clock() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = now.as_millis() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_flow_loads_the_deployment_yaml_it_names_from_its_folder() {
        let d = std::env::temp_dir().join(format!("zf-cli-serve-files-{}", std::process::id()));
        std::fs::create_dir_all(d.join("deps")).unwrap();
        std::fs::write(
            d.join("flow.yml"),
            "jtype: Flow\nexecutors:\n  - name: first\n  - deps/enc.yml\n",
        )
        .unwrap();
        std::fs::write(
            d.join("deps/enc.yml"),
            "!Deployment\nwith:\n  uses: Enc\n  shards: 2\n",
        )
        .unwrap();
        let (flow, _) = super::load_with_text(&d).unwrap();
        let _ = std::fs::remove_dir_all(&d);
        let e = &flow.executors[1];
        assert_eq!((e.name.as_str(), e.shards), ("executor1", 2));
        assert_eq!(e.needs, ["first"]);
    }
}
