//! `jc`: the Zeroflow command line. It parses arguments and renders results; the work is done by
//! the `spec`, `platform` and `gateway` crates, and by a control plane over REST for the
//! `client` commands (the public `jcloud` command tree).

mod client;
mod export;
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
    /// Work with Flows: run one here (serve), or on the control plane at JCLOUD_API.
    #[command(visible_alias = "flows")]
    Flow {
        #[command(subcommand)]
        command: FlowCmd,
    },
    /// Work with Deployments (one Executor behind its own endpoint) on the control plane.
    #[command(visible_aliases = ["deployments", "jds"])]
    Deployment {
        #[command(subcommand)]
        command: client::DeploymentCmd,
    },
    /// Secrets a Flow's Executors read as environment variables.
    #[command(visible_alias = "secrets")]
    Secret {
        #[command(subcommand)]
        command: client::SecretCmd,
    },
    /// One-off jobs that run next to a Flow.
    #[command(visible_alias = "jobs")]
    Job {
        #[command(subcommand)]
        command: client::JobCmd,
    },
    /// Executors stored on the control plane.
    Executor {
        #[command(subcommand)]
        command: client::ExecutorCmd,
    },
    /// Create a starter project: a Flow with one Python Executor.
    New(client::NewArgs),
    /// Save a control-plane token for the client commands.
    Login(client::LoginArgs),
    /// Forget the saved token.
    Logout,
    /// Run the whole platform on this machine: the JCloud-compatible REST API, and the gateways,
    /// activator and autoscaler of every Flow.
    Server(server_cmd::ServerArgs),
}

#[derive(Subcommand)]
enum FlowCmd {
    /// Run one Flow on this machine: a gateway plus one executor-shim per replica.
    Serve(serve::ServeArgs),
    /// Render a Flow as Kubernetes objects for a cluster that runs Knative Serving: one
    /// Knative Service per Executor (autoscaled as its `jcloud.autoscale` says) and one for the
    /// gateway.
    Export(export::ExportArgs),
    /// Check a Flow YAML and print its normalized form (or its errors).
    Validate {
        /// The Flow (or Deployment) YAML file.
        path: std::path::PathBuf,
    },
    #[command(flatten)]
    Remote(client::FlowRemote),
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
    let rt = match &cli.command {
        Top::Flow {
            command: FlowCmd::Serve(args),
        } if args.threads == 1 => tokio::runtime::Builder::new_current_thread(),
        Top::Flow {
            command: FlowCmd::Serve(args),
        } => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(args.threads.into());
            b
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    let code = rt.block_on(async {
        match cli.command {
            Top::Flow { command } => match command {
                FlowCmd::Serve(args) => serve::serve(args).await,
                FlowCmd::Validate { path } => serve::validate(&path),
                FlowCmd::Export(args) => export::run(args),
                FlowCmd::Remote(client::FlowRemote::Normalize { path }) => {
                    match client::resolve_spec(client::Kind::Flow, &path) {
                        Ok(file) => serve::validate(&file),
                        Err(e) => {
                            eprintln!("error: {e}");
                            e.code()
                        }
                    }
                }
                FlowCmd::Remote(cmd) => client::flow(cmd).await,
            },
            Top::Deployment { command } => client::deployment(command).await,
            Top::Secret { command } => client::secret(command).await,
            Top::Job { command } => client::job(command).await,
            Top::Executor { command } => client::executor(command).await,
            Top::New(args) => client::new_project(args),
            Top::Login(args) => client::login(args),
            Top::Logout => client::logout(),
            Top::Server(args) => server_cmd::run(args).await,
        }
    });
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("jc").chain(args.iter().copied()))
    }

    #[test]
    fn the_public_command_tree_parses() {
        for ok in [
            &["flow", "deploy", "dir"][..],
            &[
                "flows", "list", "--phase", "serving", "--labels", "a=b,c=d", "--json",
            ],
            &["flow", "status", "f1", "--verbose"],
            &["flow", "remove", "all", "--yes"],
            &["flow", "remove", "--phase", "Failed"],
            &["flow", "update", "f1", "flow.yml", "--timeout", "5m"],
            &["flow", "pause", "f1"],
            &["flow", "resume", "f1"],
            &["flow", "recreate", "f1"],
            &["flow", "restart", "f1", "--executor", "e"],
            &["flow", "scale", "f1", "--executor", "e", "--replicas", "3"],
            &["flow", "logs", "f1", "--gateway", "--follow"],
            &["flow", "normalize", "dir"],
            &["flow", "serve", "flow.yml"],
            &[
                "flow",
                "serve",
                "--runtime",
                "kubernetes",
                "--namespace",
                "zf-f1",
                "--flow-resource",
                "f1",
            ],
            &[
                "flow",
                "serve",
                "flow.yml",
                "--runtime",
                "kubernetes",
                "--namespace",
                "zf-f1",
            ],
            &["flow", "validate", "flow.yml"],
            &["jds", "list"],
            &["deployments", "scale", "d1", "--replicas", "2"],
            &["deployment", "logs", "d1", "--json"],
            &["secret", "create", "s", "f1", "--from-literal", "{'K':'V'}"],
            &["secrets", "list", "f1", "--json"],
            &["secret", "get", "s", "f1"],
            &["secret", "update", "s", "f1", "--from-literal", "{}"],
            &["secret", "remove", "s", "f1"],
            &[
                "job",
                "create",
                "j",
                "f1",
                "img",
                "['a']",
                "--timeout",
                "60",
                "--backofflimit",
                "2",
            ],
            &["jobs", "list", "f1"],
            &["job", "logs", "j", "f1"],
            &["executor", "push", "dir", "--name", "x", "--tag", "v1"],
            &["executor", "push", "dir", "--name", "x", "--public"],
            &["executor", "push", "dir", "--name", "x", "--private"],
            &["new"],
            &["login", "--token", "t"],
            &["server"],
        ] {
            if let Err(e) = parse(ok) {
                panic!("{ok:?} should parse: {e}");
            }
        }
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["flow", "restart", "f1", "--gateway", "--executor", "e"][..],
            &[
                "executor",
                "push",
                "dir",
                "--name",
                "x",
                "--public",
                "--private",
            ],
            &["flow", "restart"],
            &["flow", "scale", "f1", "--executor", "e", "--replicas", "0"],
            &["flow", "scale", "f1", "--replicas", "2"],
            &["flow", "logs", "f1", "--follow", "--json"],
            &["flow", "update", "f1", "x", "--timeout", "soon"],
            &["secret", "create", "s", "f1"],
            &["flow", "serve"],
            &[
                "flow",
                "serve",
                "--runtime",
                "kubernetes",
                "--flow-resource",
                "f1",
            ],
            &[
                "flow",
                "serve",
                "flow.yml",
                "--runtime",
                "kubernetes",
                "--namespace",
                "n",
                "--flow-resource",
                "f1",
            ],
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} should not parse"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn restart_takes_the_flow_id() {
        let Cli {
            command:
                Top::Flow {
                    command: FlowCmd::Remote(client::FlowRemote::Restart(a)),
                },
        } = parse(&["flow", "restart", "f1", "--executor", "e"]).unwrap()
        else {
            panic!("restart parses as restart");
        };
        assert_eq!(a.id, "f1");
        assert_eq!(a.executor.as_deref(), Some("e"));
    }

    #[test]
    fn new_defaults_to_helloworld() {
        let Cli {
            command: Top::New(a),
        } = parse(&["new"]).unwrap()
        else {
            panic!("new parses");
        };
        assert_eq!(a.path, std::path::PathBuf::from("helloworld"));
    }
}
