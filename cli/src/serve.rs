//! `jc flow serve` and `jc flow validate`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zeroflow_gateway::Gateway;
use zeroflow_platform::local::{LocalOptions, LocalRuntime};
use zeroflow_spec::{Protocol, Source};

/// Exit codes, as sysexits: bad input 65, cannot start 69, internal 70.
const EX_DATAERR: i32 = 65;
const EX_UNAVAILABLE: i32 = 69;
const EX_NOINPUT: i32 = 66;
const EX_USAGE: i32 = 64;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The Flow YAML file.
    pub path: PathBuf,
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
}

/// Reads `.env` next to the Flow: `KEY=VALUE` lines, `#` comments, optional quotes.
fn read_dotenv(dir: &Path) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(dir.join(".env")) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

fn load(path: &Path) -> Result<zeroflow_spec::Flow, i32> {
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
        context: read_dotenv(&dir),
        ..Default::default()
    };
    match zeroflow_spec::load(&text, &source) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {}: {w}", path.display());
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

pub async fn serve(args: ServeArgs) -> i32 {
    let flow = match load(&args.path) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let autoscaler_config = match zeroflow_platform::scaling::config_from_pairs(&args.autoscaler) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: --autoscaler: {e}");
            return EX_USAGE;
        }
    };
    let flow_dir = std::fs::canonicalize(&args.path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let work_dir = std::env::temp_dir().join(format!("zeroflow-{}", std::process::id()));
    let mut opts = LocalOptions::discover(flow_dir.clone(), work_dir.clone());
    opts.startup_timeout = Duration::from_secs(args.startup_timeout);
    opts.drain_timeout = Duration::from_secs(args.drain_timeout);
    opts.env = read_dotenv(&flow_dir).into_iter().collect();
    opts.env.extend(flow.env.clone());

    // Bind first, so a taken port fails before any Executor starts.
    let mut listeners = vec![];
    for (i, l) in flow.gateway.listeners.iter().enumerate() {
        let port = args.port.get(i).copied().or(l.port).unwrap_or(0);
        match tokio::net::TcpListener::bind((args.host.as_str(), port)).await {
            Ok(sock) => listeners.push((l.protocol, sock)),
            Err(e) => {
                eprintln!(
                    "error: the gateway cannot listen on {}:{port} for {:?}: {e}",
                    args.host, l.protocol
                );
                return EX_UNAVAILABLE;
            }
        }
    }

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = zeroflow_activator::ActivatorMetrics::new(&mut registry);
    let runtime = match LocalRuntime::new(&flow, opts.clone(), throttle_settings, Some(metrics)) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("error: {e}");
            return EX_UNAVAILABLE;
        }
    };
    let gateway = match Gateway::new(&flow, runtime.shards()) {
        Ok(g) => Arc::new(g),
        Err(e) => {
            eprintln!("error: {e}");
            return EX_DATAERR;
        }
    };
    let registry = Arc::new(parking_lot::Mutex::new(registry));
    // Every scaling event is printed as it happens.
    let mut events = runtime.subscribe();
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            println!("[{}] {ev}", clock());
        }
    });
    let initial = |e: &zeroflow_spec::Executor| {
        if e.jcloud.autoscale_set {
            e.jcloud.autoscale.min
        } else {
            e.replicas
        }
    };
    let at_zero: Vec<&str> = flow
        .executors
        .iter()
        .filter(|e| initial(e) == 0)
        .map(|e| e.name.as_str())
        .collect();
    eprintln!(
        "Starting {} Executor(s) of {}{}...",
        flow.executors.len(),
        args.path.display(),
        if at_zero.is_empty() {
            String::new()
        } else {
            format!(" ({} at zero until the first request)", at_zero.join(", "))
        }
    );
    runtime.start(initial);
    if let Err(e) = runtime.wait_settled(opts.startup_timeout).await {
        eprintln!("error: {e}");
        runtime
            .shutdown(opts.drain_timeout + Duration::from_secs(15))
            .await;
        return EX_UNAVAILABLE;
    }
    gateway.discover_endpoints().await;
    let autoscaling = zeroflow_platform::scaling::start(
        &flow,
        runtime.clone(),
        autoscaler_config,
        &mut registry.lock(),
    );

    if let Some(port) = args.metrics_port {
        let gw = gateway.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let gw = gw.clone();
                let registry = registry.clone();
                async move {
                    let mut out = gw.metrics_text();
                    let _ = prometheus_client::encoding::text::encode(&mut out, &registry.lock());
                    out
                }
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
    for (protocol, l) in &listeners {
        let scheme = match protocol {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
            Protocol::Websocket => "http",
        };
        if let Ok(addr) = l.local_addr() {
            println!(
                "  {:<10} {scheme}://{addr}",
                format!("{protocol:?}").to_lowercase()
            );
        }
    }
    for e in &flow.executors {
        println!(
            "  executor   {:<20} {} replica(s) ready",
            e.name,
            runtime.ready_replicas(&e.name)
        );
    }
    println!("Press Ctrl-C to stop.");

    let served = zeroflow_gateway::serve(gateway, listeners, shutdown_signal()).await;
    eprintln!("Stopping: draining replicas...");
    drop(autoscaling);
    runtime
        .shutdown(opts.drain_timeout + Duration::from_secs(15))
        .await;
    let _ = std::fs::remove_dir_all(&work_dir);
    match served {
        Ok(()) => {
            eprintln!("Stopped.");
            0
        }
        Err(e) => {
            eprintln!("error: the gateway failed: {e:#}");
            70
        }
    }
}

fn throttle_settings(e: &zeroflow_spec::Executor) -> zeroflow_activator::ThrottleSettings {
    zeroflow_activator::ThrottleSettings {
        request_timeout: e.jcloud.autoscale.revision_timeout,
        ..Default::default()
    }
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
