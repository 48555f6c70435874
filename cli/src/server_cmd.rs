//! `jc server`: runs the whole platform (control plane, gateways, activator, autoscaler) in one
//! process, and `jc server token create` issues API tokens. The platform crate does the work.

use std::path::PathBuf;
use std::time::Duration;
use zeroflow_platform::server::{self, ServerConfig};

const EX_USAGE: i32 = 64;
const EX_UNAVAILABLE: i32 = 69;
const EX_SOFTWARE: i32 = 70;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub command: Option<ServerCmd>,
    /// Port of the REST API (0: any free port, printed at start).
    #[arg(long, default_value_t = 8400)]
    pub port: u16,
    /// Address the API and every Flow's gateway listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Where state lives (the SQLite file, Flow folders, pushed Executors).
    /// Default: $ZEROFLOW_DATA_DIR, else ~/.zeroflow.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Server-level autoscaler setting, Knative's key and value (repeatable), e.g.
    /// `--autoscaler scale-to-zero-grace-period=30s`.
    #[arg(long = "autoscaler", value_name = "KEY=VALUE")]
    pub autoscaler: Vec<String>,
    /// How long a replica may take to start serving.
    #[arg(long, default_value = "600", value_name = "SECONDS")]
    pub startup_timeout: u64,
    /// How long a replica may take to finish its in-flight requests when stopping.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    pub drain_timeout: u64,
    /// Where Flows run: `local` (processes on this machine) or `kubernetes` (the cluster of
    /// $KUBECONFIG, else ~/.kube/config, else the one this pod runs in).
    #[arg(long, value_enum, default_value_t = RuntimeArg::Local)]
    pub runtime: RuntimeArg,
    /// With `--runtime kubernetes`: the URL pods reach this server at (Executors fetch their
    /// project folders from it). Default: http://HOST:PORT.
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// With `--runtime kubernetes`: do not run the Flow controller in this process (it runs
    /// elsewhere in the cluster).
    #[arg(long)]
    pub no_controller: bool,
    /// Do not serve the web dashboard at / (the API answers there as before).
    #[arg(long)]
    pub no_dashboard: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeArg {
    Local,
    Kubernetes,
}

#[derive(clap::Subcommand, Debug)]
pub enum ServerCmd {
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCmd {
    /// Creates user NAME if missing and prints a new token for it (on the last line).
    Create {
        name: String,
        /// The server's data directory (default: $ZEROFLOW_DATA_DIR, else ~/.zeroflow).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

pub async fn run(args: ServerArgs) -> i32 {
    match args.command {
        Some(ServerCmd::Token {
            command: TokenCmd::Create { name, data_dir },
        }) => {
            let dir = data_dir.unwrap_or_else(server::default_data_dir);
            if name.trim().is_empty() {
                eprintln!("error: the user name is empty");
                return EX_USAGE;
            }
            let key = match secret_key_from_env() {
                Ok(k) => k,
                Err(code) => return code,
            };
            match server::create_token(&dir, name.trim(), key) {
                Ok(token) => {
                    eprintln!(
                        "Token for user {name} (keep it: only its hash is stored in {}):",
                        dir.display()
                    );
                    println!("{token}");
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    EX_UNAVAILABLE
                }
            }
        }
        None => serve(args).await,
    }
}

async fn serve(args: ServerArgs) -> i32 {
    let data_dir = args.data_dir.unwrap_or_else(server::default_data_dir);
    let mut cfg = ServerConfig::new(data_dir.clone(), &args.host);
    cfg.autoscaler = match zeroflow_platform::scaling::config_from_pairs(&args.autoscaler) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: --autoscaler: {e}");
            return EX_USAGE;
        }
    };
    cfg.secret_key = match secret_key_from_env() {
        Ok(k) => k,
        Err(code) => return code,
    };
    cfg.startup_timeout = Duration::from_secs(args.startup_timeout);
    cfg.drain_timeout = Duration::from_secs(args.drain_timeout);
    let listener = match tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: the API cannot listen on {}:{}: {e}",
                args.host, args.port
            );
            return EX_UNAVAILABLE;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if args.runtime == RuntimeArg::Kubernetes {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(args.port);
        let advertise_url = match args.advertise_url {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                u.trim_end_matches('/').to_string()
            }
            Some(u) => {
                eprintln!("error: --advertise-url: got {u:?}, allowed: an http:// or https:// URL");
                return EX_USAGE;
            }
            None => format!("http://{}:{port}", cfg.public_host),
        };
        cfg.kubernetes = Some(server::kube_backend::KubeOptions {
            advertise_url,
            run_controller: !args.no_controller,
            autoscaler: args.autoscaler.clone(),
        });
    } else if args.advertise_url.is_some() || args.no_controller {
        eprintln!("error: --advertise-url and --no-controller need --runtime kubernetes");
        return EX_USAGE;
    }
    println!(
        "Zeroflow server: API at http://{addr}/ (data in {}); OpenAPI at /openapi.json",
        data_dir.display()
    );
    if let Some(k) = &cfg.kubernetes {
        println!(
            "Flows run on Kubernetes; pods reach this server at {}{}",
            k.advertise_url,
            if k.run_controller {
                ""
            } else {
                " (the Flow controller runs elsewhere)"
            }
        );
    }
    println!(
        "Create a token with: jc server token create NAME --data-dir {}",
        data_dir.display()
    );
    if !args.no_dashboard {
        println!("Dashboard at http://{addr}/ (sign in with a token)");
    }
    let dashboard = !args.no_dashboard;
    let pages = move |c: &std::sync::Arc<server::control::Controller>| match dashboard {
        true => zeroflow_dashboard::for_server(c),
        false => axum::Router::new(),
    };
    // The control plane stops its Flows and their zygotes before it returns.
    let result = server::run_with(cfg, listener, shutdown_signal(), pages).await;
    match result {
        Ok(()) => {
            eprintln!("Stopped.");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            EX_SOFTWARE
        }
    }
}

/// The key from `ZEROFLOW_SECRET_KEY` (None when unset: the data folder's key file is used);
/// a malformed one is a usage error, printed here.
fn secret_key_from_env() -> Result<Option<server::sealing::SecretKey>, i32> {
    let text = match std::env::var(server::sealing::KEY_ENV) {
        Ok(t) => t,
        Err(std::env::VarError::NotPresent) => return Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            eprintln!(
                "error: {} is not text: set it to base64",
                server::sealing::KEY_ENV
            );
            return Err(EX_USAGE);
        }
    };
    server::sealing::SecretKey::from_base64(&text)
        .map(Some)
        .map_err(|e| {
            eprintln!("error: {e}");
            EX_USAGE
        })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server still runs; it stops with the process.
        return futures_pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

async fn futures_pending() {
    std::future::pending::<()>().await
}
