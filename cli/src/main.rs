//! `jc`: the Zeroflow command line. It parses arguments and renders results; the work is done by
//! the `spec`, `platform` and `gateway` crates.

mod serve;
mod server_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "jc",
    version,
    about = "Zeroflow: serverless Jina Flows",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Work with Flows.
    Flow {
        #[command(subcommand)]
        command: FlowCmd,
    },
    /// Run the whole platform on this machine: the JCloud-compatible REST API, and the gateways,
    /// activator and autoscaler of every Flow.
    Server(server_cmd::ServerArgs),
}

#[derive(Subcommand)]
enum FlowCmd {
    /// Run one Flow on this machine: a gateway plus one executor-shim per replica.
    Serve(serve::ServeArgs),
    /// Check a Flow YAML and print its normalized form (or its errors).
    Validate {
        /// The Flow (or Deployment) YAML file.
        path: std::path::PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async {
        match cli.command {
            Top::Flow { command } => match command {
                FlowCmd::Serve(args) => serve::serve(args).await,
                FlowCmd::Validate { path } => serve::validate(&path),
            },
            Top::Server(args) => server_cmd::run(args).await,
        }
    });
    std::process::exit(code);
}
