//! `zeroflow-shim`: wraps one Executor replica. Thin main: flags, tracing, bind, run, exit code.

use clap::Parser;
use std::time::Duration;
use zeroflow_artifacts::digest::Sha256Digest;
use zeroflow_shim::{Exit, ProxyMode, Shim, ShimConfig, project};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Wraps one Executor replica: supervises it, proxies its RPCs, reports stats, drains on SIGTERM"
)]
struct Args {
    /// Executor name (used in messages and metrics).
    #[arg(long, default_value = "executor")]
    executor: String,
    /// Replica id.
    #[arg(long)]
    replica: Option<String>,
    /// Address to serve the Executor's gRPC on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// gRPC port (0 picks a free one; the ready line on stdout says which).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Port of /stats, /metrics and /ready (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    admin_port: u16,
    /// Port the Executor listens on; `{port}` in the command is replaced by it. Default: a free one.
    #[arg(long)]
    child_port: Option<u16>,
    /// Most requests the Executor gets at once; 0 = no limit. Beyond it, 10x waits, then UNAVAILABLE.
    #[arg(long, default_value_t = 0)]
    container_concurrency: usize,
    /// How RPCs reach the Executor: `passthrough` forwards HTTP/2 frames as they are (the
    /// cheapest, no breaker); `grpc` runs a gRPC proxy (needed for a breaker); `auto` picks
    /// `passthrough` unless --container-concurrency is set.
    #[arg(long, value_enum, default_value = "auto")]
    proxy: ProxyMode,
    /// On SIGTERM, the longest wait for in-flight requests.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// The longest wait for the Executor to serve.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    startup_timeout: Duration,
    /// After SIGTERM to the Executor, how long before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stop_grace: Duration,
    /// Fork the command from the zygote listening on this Unix socket (a `jina executor` with
    /// jina already imported); if it cannot, the command is started as usual.
    #[arg(long)]
    zygote: Option<std::path::PathBuf>,
    /// Fetch the Executor's project archive from this URL (`Authorization: Bearer
    /// $ZEROFLOW_ARTIFACT_TOKEN` when set), check it against --project-digest, unpack it, install
    /// its requirements.txt files, and run the command in its folder. Done before the Executor
    /// starts; the shim is not ready until the Executor serves.
    #[arg(long, value_name = "URL", requires = "project_digest")]
    project_url: Option<String>,
    /// The SHA-256 the project archive must have.
    #[arg(long, value_name = "sha256:HEX", requires = "project_url")]
    project_digest: Option<Sha256Digest>,
    /// Where fetched projects and installed requirements are kept, shared by the shims of a node
    /// (default: /var/cache/zeroflow, or a folder under the temporary directory when that is not
    /// writable).
    #[arg(long, value_name = "DIR", env = project::PROJECT_CACHE_ENV)]
    project_cache: Option<std::path::PathBuf>,
    /// The longest the project download may take, retries included (the control plane may be
    /// restarting).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    project_fetch_timeout: Duration,
    /// The Executor command, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

// glibc's malloc was at the top of the gRPC proxy's profile. (Not in jc: there mimalloc doubled
// the resident memory of a burst of 1000 requests, 37 -> 65 MiB, for no measurable latency gain.)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// One thread: the shim fronts a single replica, and a hop that stays on one thread avoids the
// cross-thread wake-ups that cost most of its latency (measured: 0.24 ms -> 0.07 ms per hop).

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let replica = args
        .replica
        .clone()
        .unwrap_or_else(|| format!("{}-0", args.executor));
    let project = match project_source(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("zeroflow-shim: {e}");
            std::process::exit(PROJECT_FAILED);
        }
    };
    let config = ShimConfig {
        executor: args.executor.clone(),
        replica,
        command: args.command.clone(),
        child_port: args.child_port,
        container_concurrency: args.container_concurrency,
        proxy: args.proxy,
        drain_timeout: args.drain_timeout,
        startup_timeout: args.startup_timeout,
        stop_grace: args.stop_grace,
        zygote: args.zygote.clone(),
        project,
        ..ShimConfig::default()
    };
    let code = match run(config, &args).await {
        Ok(Exit::Drained) => 0,
        Ok(Exit::ChildExited {
            status,
            stderr_tail,
        }) => {
            eprintln!(
                "Executor {} exited ({status}). Last lines of its stderr:\n{stderr_tail}",
                args.executor
            );
            3
        }
        Ok(Exit::NotReady { stderr_tail }) => {
            eprintln!(
                "Executor {} did not serve within {:?}. Last lines of its stderr:\n{stderr_tail}",
                args.executor, args.startup_timeout
            );
            4
        }
        Ok(Exit::ProjectFailed { message }) => {
            eprintln!(
                "zeroflow-shim: the project of Executor {} is not ready, so it was not started: {message}",
                args.executor
            );
            PROJECT_FAILED
        }
        Err(e) => {
            eprintln!("zeroflow-shim: {e:#}");
            64
        }
    };
    std::process::exit(code);
}

/// Exit code when the project could not be fetched or prepared (the Executor never started).
const PROJECT_FAILED: i32 = 5;

fn project_source(args: &Args) -> Result<Option<project::ProjectSource>, project::ProjectError> {
    let (Some(url), Some(digest)) = (&args.project_url, args.project_digest) else {
        return Ok(None);
    };
    Ok(Some(project::ProjectSource {
        url: url.clone(),
        digest,
        token: std::env::var(project::ARTIFACT_TOKEN_ENV)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()),
        cache: project::cache_dir(args.project_cache.clone())?,
        fetch_timeout: args.project_fetch_timeout,
        install_timeout: args.startup_timeout,
        limits: zeroflow_artifacts::archive::Limits::from_env(),
    }))
}

async fn run(config: ShimConfig, args: &Args) -> anyhow::Result<Exit> {
    let grpc = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    let admin = tokio::net::TcpListener::bind((args.host.as_str(), args.admin_port)).await?;
    let shim = Shim::new(config, grpc, admin)?;
    shim.run(shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
}
