//! `jc server`: runs the whole platform (control plane, gateways, activator, autoscaler) in one
//! process, and `jc server token create` issues API tokens. The platform crate does the work.

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub command: Option<ServerCmd>,
}

#[derive(clap::Subcommand, Debug)]
pub enum ServerCmd {}

pub async fn run(_args: ServerArgs) -> i32 {
    eprintln!("error: jc server is not built yet");
    70
}
