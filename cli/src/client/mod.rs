//! The `jc` commands that talk to a control plane over its JCloud-compatible REST API
//! (/work/shared/design/jcloud-rest-api.md): flows, deployments, secrets, jobs, executor push.
//! The public `jcloud` 0.3 command tree, without its bugs (section 8 of that doc): `restart` takes
//! the Flow ID, 401 and a missing token are fatal, waits sleep between polls, `flows`/`jds`
//! aliases work, and `--json` gives scripts the server's answer as is.

pub mod api;
pub mod archive;
pub mod literal;
pub mod render;
pub mod template;
pub mod wait;

use api::{Api, Body, Fail, Result, seg};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wait::Op;

/// Flows and Deployments share every route shape; this names the differences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Flow,
    Deployment,
}

impl Kind {
    pub fn path(self) -> &'static str {
        match self {
            Kind::Flow => "flows",
            Kind::Deployment => "deployments",
        }
    }
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Flow => "flow",
            Kind::Deployment => "deployment",
        }
    }
    pub fn noun_title(self) -> &'static str {
        match self {
            Kind::Flow => "Flow",
            Kind::Deployment => "Deployment",
        }
    }
    pub fn cli(self) -> &'static str {
        self.noun()
    }
    pub fn hint(self) -> String {
        format!("check the ID with `jc {} list`", self.cli())
    }
    fn spec_files(self) -> [&'static str; 2] {
        match self {
            Kind::Flow => ["flow.yml", "flow.yaml"],
            Kind::Deployment => ["deployment.yml", "deployment.yaml"],
        }
    }
}

fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 90, 90s, 15m or 1h"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "ms" => n / 1000.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    };
    if !(0.0..=7.0 * 86400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Args, Debug, Clone)]
pub struct WaitArgs {
    /// How long to wait for the change to take effect (90, 90s, 15m, 1h).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// A folder with the YAML (flow.yml / deployment.yml) and its local Executor folders, or a
    /// YAML file.
    pub path: PathBuf,
    /// Print the final status as the server's JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this phase (Pending, Starting, Serving, Failed, Updating, Deleted, Paused, a comma
    /// list of them, or All). Default: all but Deleted.
    #[arg(long)]
    pub phase: Option<String>,
    /// Only with this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only with these labels: k=v,k2=v2.
    #[arg(long)]
    pub labels: Option<String>,
    /// The server's JSON as is.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    pub id: String,
    /// Also the conditions and the Jina version.
    #[arg(long)]
    pub verbose: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// IDs to remove, or `all` (every one that is not already Deleted).
    pub ids: Vec<String>,
    /// Also remove every one in this phase.
    #[arg(long)]
    pub phase: Option<String>,
    /// Do not ask before removing several (also: JCLOUD_NO_INTERACTIVE).
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    pub id: String,
    /// As for deploy: a folder or a YAML file.
    pub path: PathBuf,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    pub id: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    /// The Flow ID (the public client forgot this argument).
    pub id: String,
    /// Restart only the gateway.
    #[arg(long, conflicts_with = "executor")]
    pub gateway: bool,
    /// Restart only this Executor.
    #[arg(long)]
    pub executor: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    pub id: String,
    #[arg(long)]
    pub executor: String,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    pub id: String,
    /// The gateway's logs (the default).
    #[arg(long, conflicts_with = "executor")]
    pub gateway: bool,
    /// This Executor's logs.
    #[arg(long)]
    pub executor: Option<String>,
    /// Keep polling and print new lines as they come.
    #[arg(long, short = 'f', conflicts_with = "json")]
    pub follow: bool,
    #[arg(long)]
    pub json: bool,
}

/// The remote `jc flow` commands (`serve` and `validate` are local, in main.rs).
#[derive(Subcommand, Debug)]
pub enum FlowRemote {
    /// Deploy a Flow to the control plane at JCLOUD_API and wait until it serves.
    Deploy(DeployArgs),
    /// List Flows.
    List(ListArgs),
    /// Show one Flow.
    Status(StatusArgs),
    /// Remove Flows: one or more IDs, or `all`.
    Remove(RemoveArgs),
    /// Replace a Flow's spec.
    Update(UpdateArgs),
    /// Stop a Flow's replicas, keeping the Flow.
    Pause(IdArgs),
    /// Start a paused Flow again.
    Resume(IdArgs),
    /// Recreate a Flow from its spec.
    Recreate(IdArgs),
    /// Restart a Flow, or only its gateway or one Executor.
    Restart(RestartArgs),
    /// Set an Executor's replica count.
    Scale(ScaleArgs),
    /// Print the gateway's or an Executor's logs.
    Logs(LogsArgs),
    /// Print the Flow as the server will read it (local; like `jc flow validate`).
    Normalize {
        /// A folder with flow.yml, or a YAML file.
        path: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct DepScaleArgs {
    pub id: String,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct DepLogsArgs {
    pub id: String,
    #[arg(long, short = 'f', conflicts_with = "json")]
    pub follow: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum DeploymentCmd {
    /// Deploy a Deployment (a folder with deployment.yml, or a YAML file) and wait until it serves.
    Deploy(DeployArgs),
    List(ListArgs),
    Status(StatusArgs),
    Remove(RemoveArgs),
    Update(UpdateArgs),
    Restart(IdArgs),
    Pause(IdArgs),
    Resume(IdArgs),
    Recreate(IdArgs),
    Scale(DepScaleArgs),
    Logs(DepLogsArgs),
}

#[derive(Args, Debug)]
pub struct SecretArgs {
    pub name: String,
    /// The Flow ID the secret belongs to.
    pub flow: String,
    /// The data: "{'KEY': 'value'}" (a Python dict or JSON).
    #[arg(long = "from-literal")]
    pub from_literal: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct NameFlow {
    pub name: String,
    pub flow: String,
}

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Create a secret for a Flow.
    Create(SecretArgs),
    /// List a Flow's secrets (their keys; values with --json or `get`).
    List {
        flow: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one secret with its values.
    Get {
        #[command(flatten)]
        nf: NameFlow,
        #[arg(long)]
        json: bool,
    },
    Remove(NameFlow),
    /// Replace a secret's data, then restart the Flow so its Executors read it.
    Update(SecretArgs),
}

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Run a one-off job next to a Flow.
    Create {
        name: String,
        flow: String,
        image: String,
        /// A list like "['python', 'main.py']", or a plain command line.
        entrypoint: String,
        /// Seconds before the job is stopped.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[arg(long)]
        backofflimit: Option<u32>,
        /// "{'ENV': {'name': 'secret', 'key': 'KEY'}}": environment variables from secrets.
        #[arg(long)]
        secrets: Option<String>,
    },
    List {
        flow: String,
        #[arg(long)]
        json: bool,
    },
    Get {
        #[command(flatten)]
        nf: NameFlow,
        #[arg(long)]
        json: bool,
    },
    Logs {
        #[command(flatten)]
        nf: NameFlow,
        #[arg(long)]
        json: bool,
    },
    Remove(NameFlow),
}

#[derive(Subcommand, Debug)]
pub enum ExecutorCmd {
    /// Upload an Executor folder to the control plane, to use it by name in Flows.
    Push {
        dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "latest")]
        tag: String,
        /// Let every user of the server use it in their Flows (default: only you).
        #[arg(long, conflicts_with = "private")]
        public: bool,
        /// Only you may use it: the default, as on Jina Hub's `push --private`.
        #[arg(long)]
        private: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct NewArgs {
    #[arg(default_value = "helloworld")]
    pub path: PathBuf,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// A token from `jc server token create NAME`; saved to $JINA_HUB_ROOT/config.json.
    #[arg(long)]
    pub token: Option<String>,
}

/// Runs a client command and turns its outcome into an exit code, printing failures.
pub async fn finish(r: Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.code()
        }
    }
}

pub async fn flow(cmd: FlowRemote) -> i32 {
    finish(flow_inner(cmd).await).await
}

async fn flow_inner(cmd: FlowRemote) -> Result<()> {
    let k = Kind::Flow;
    match cmd {
        FlowRemote::Normalize { .. } => unreachable!("main.rs runs normalize locally"),
        FlowRemote::Deploy(a) => deploy(&Api::from_env()?, k, a).await,
        FlowRemote::List(a) => list(&Api::from_env()?, k, a).await,
        FlowRemote::Status(a) => status(&Api::from_env()?, k, a).await,
        FlowRemote::Remove(a) => remove(&Api::from_env()?, k, a).await,
        FlowRemote::Update(a) => update(&Api::from_env()?, k, a).await,
        FlowRemote::Pause(a) => {
            action(&Api::from_env()?, k, &a.id, "pause", Op::Pause, &a.wait).await
        }
        FlowRemote::Resume(a) => {
            action(&Api::from_env()?, k, &a.id, "resume", Op::Resume, &a.wait).await
        }
        FlowRemote::Recreate(a) => {
            action(
                &Api::from_env()?,
                k,
                &a.id,
                "recreate",
                Op::Recreate,
                &a.wait,
            )
            .await
        }
        FlowRemote::Restart(a) => {
            let api = Api::from_env()?;
            let path = match (&a.executor, a.gateway) {
                (Some(e), _) => format!("flows/{}/executors/{}:restart", seg(&a.id), seg(e)),
                (None, true) => format!("flows/{}/gateway:restart", seg(&a.id)),
                (None, false) => format!("flows/{}:restart", seg(&a.id)),
            };
            put_and_wait(&api, k, &a.id, &path, &[], Op::Restart, &a.wait).await?;
            let what = match (&a.executor, a.gateway) {
                (Some(e), _) => format!("Executor {e} of flow {}", a.id),
                (None, true) => format!("the gateway of flow {}", a.id),
                (None, false) => format!("flow {}", a.id),
            };
            println!("Restarted {what}.");
            Ok(())
        }
        FlowRemote::Scale(a) => {
            let api = Api::from_env()?;
            let path = format!("flows/{}/executors/{}:scale", seg(&a.id), seg(&a.executor));
            put_and_wait(
                &api,
                k,
                &a.id,
                &path,
                &[("replicas", a.replicas.to_string())],
                Op::Scale,
                &a.wait,
            )
            .await?;
            println!(
                "Scaled Executor {} of flow {} to {} replica{}.",
                a.executor,
                a.id,
                a.replicas,
                if a.replicas == 1 { "" } else { "s" }
            );
            Ok(())
        }
        FlowRemote::Logs(a) => {
            let api = Api::from_env()?;
            let path = match &a.executor {
                Some(e) => format!("flows/{}/executors/{}/logs", seg(&a.id), seg(e)),
                None => format!("flows/{}/gateway/logs", seg(&a.id)),
            };
            logs(&api, k, &path, a.follow, a.json).await
        }
    }
}

pub async fn deployment(cmd: DeploymentCmd) -> i32 {
    finish(deployment_inner(cmd).await).await
}

async fn deployment_inner(cmd: DeploymentCmd) -> Result<()> {
    let k = Kind::Deployment;
    let api = Api::from_env()?;
    match cmd {
        DeploymentCmd::Deploy(a) => deploy(&api, k, a).await,
        DeploymentCmd::List(a) => list(&api, k, a).await,
        DeploymentCmd::Status(a) => status(&api, k, a).await,
        DeploymentCmd::Remove(a) => remove(&api, k, a).await,
        DeploymentCmd::Update(a) => update(&api, k, a).await,
        DeploymentCmd::Restart(a) => action(&api, k, &a.id, "restart", Op::Restart, &a.wait).await,
        DeploymentCmd::Pause(a) => action(&api, k, &a.id, "pause", Op::Pause, &a.wait).await,
        DeploymentCmd::Resume(a) => action(&api, k, &a.id, "resume", Op::Resume, &a.wait).await,
        DeploymentCmd::Recreate(a) => {
            action(&api, k, &a.id, "recreate", Op::Recreate, &a.wait).await
        }
        DeploymentCmd::Scale(a) => {
            let path = format!("deployments/{}:scale", seg(&a.id));
            put_and_wait(
                &api,
                k,
                &a.id,
                &path,
                &[("replicas", a.replicas.to_string())],
                Op::Scale,
                &a.wait,
            )
            .await?;
            println!("Scaled deployment {} to {} replicas.", a.id, a.replicas);
            Ok(())
        }
        DeploymentCmd::Logs(a) => {
            let path = format!("deployments/{}/logs", seg(&a.id));
            logs(&api, k, &path, a.follow, a.json).await
        }
    }
}

/// The YAML file for PATH: PATH itself, or the kind's file inside the folder PATH.
pub fn resolve_spec(kind: Kind, path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        for f in kind.spec_files() {
            let p = path.join(f);
            if p.is_file() {
                return Ok(p);
            }
        }
        return Err(Fail::Usage(format!(
            "{} has no {}: give the YAML file, or a folder with one (`jc new` makes one)",
            path.display(),
            kind.spec_files()[0]
        )));
    }
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    Err(Fail::Usage(format!("{} does not exist", path.display())))
}

/// Whether a Flow YAML names local files (Executor configs, `py_modules`, relative scripts), so
/// its folder must be uploaded too. Hub, docker and bare class names need nothing local.
pub fn references_local_files(yaml: &str) -> bool {
    let Ok(v) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(yaml) else {
        return false;
    };
    let local_path = |s: &str| {
        !s.contains("://")
            && (s.ends_with(".yml")
                || s.ends_with(".yaml")
                || s.ends_with(".py")
                || s.contains('/'))
    };
    let execs = v
        .get("executors")
        .and_then(|e| e.as_sequence())
        .cloned()
        .unwrap_or_default();
    // A Deployment's executor settings sit under `with`.
    let mut nodes = execs;
    if let Some(w) = v.get("with") {
        nodes.push(w.clone());
    }
    nodes.iter().any(|e| {
        e.get("uses")
            .and_then(|u| u.as_str())
            .is_some_and(local_path)
            || e.get("py_modules").is_some()
            || e.get("command")
                .and_then(|c| c.as_str())
                .is_some_and(|c| c.trim_start().starts_with("./"))
    })
}

/// The multipart body of a deploy or update: `spec`, and `archive` when the project's files must
/// travel with it.
fn spec_form(kind: Kind, path: &Path) -> Result<(reqwest::multipart::Form, bool)> {
    let file = resolve_spec(kind, path)?;
    let spec = std::fs::read_to_string(&file)
        .map_err(|e| Fail::Usage(format!("cannot read {}: {e}", file.display())))?;
    let folder = if path.is_dir() {
        archive::has_project_files(path, &file).then(|| path.to_path_buf())
    } else if references_local_files(&spec) {
        file.parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .map(Path::to_path_buf)
    } else {
        None
    };
    let spec_part = reqwest::multipart::Part::text(spec)
        .file_name("spec")
        .mime_str("application/octet-stream")
        .expect("static mime");
    let mut form = reqwest::multipart::Form::new().part("spec", spec_part);
    let with_archive = folder.is_some();
    if let Some(dir) = folder {
        let bytes = archive::pack_dir(&dir)
            .map_err(|e| Fail::Usage(format!("cannot pack {}: {e}", dir.display())))?;
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name("archive.tar.gz")
            .mime_str("application/gzip")
            .expect("static mime");
        form = form.part("archive", part);
    }
    Ok((form, with_archive))
}

async fn deploy(api: &Api, kind: Kind, a: DeployArgs) -> Result<()> {
    let (_, with_archive) = spec_form(kind, &a.path)?;
    // Validation first, as the public client does, so a bad spec is reported before anything is
    // created. With local files the server can only judge the spec next to them, at POST time.
    if !with_archive {
        let (form, _) = spec_form(kind, &a.path)?;
        let r = api
            .send(
                Method::POST,
                &format!("{}/validate", kind.path()),
                &[],
                Body::Multipart(form),
            )
            .await?;
        let errors: Vec<String> = r
            .json
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|e| {
                e.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string())
            })
            .collect();
        if !errors.is_empty() {
            return Err(Fail::Server(format!(
                "the {} is not valid:\n  {}",
                kind.noun(),
                errors.join("\n  ")
            )));
        }
        api::check(&r, &format!("POST /{}/validate", kind.path()), &kind.hint())?;
    }
    // One retry on 503, like the public client: a server that just started may not be ready.
    let mut r = None;
    for attempt in 0..2 {
        let (form, _) = spec_form(kind, &a.path)?;
        let resp = api
            .send(Method::POST, kind.path(), &[], Body::Multipart(form))
            .await?;
        if resp.status == 503 && attempt == 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        r = Some(resp);
        break;
    }
    let r = r.expect("the loop sets r or continues once");
    api::check(&r, &format!("POST /{}", kind.path()), &kind.hint())?;
    let id = r
        .json
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Fail::Server(format!(
                "the server accepted the {} but sent no id: {}",
                kind.noun(),
                r.text
            ))
        })?
        .to_string();
    eprintln!("{} {id} submitted.", kind.noun_title());
    let status = wait::until(api, kind, &id, Op::Deploy, a.wait.timeout).await?;
    print_result(kind, &id, &status, a.json, false);
    Ok(())
}

fn print_result(kind: Kind, id: &str, status: &Value, json: bool, paused: bool) {
    if json {
        println!("{status}");
    } else if std::env::var_os("JCLOUD_HIDE_SUCCESS_MSG").is_some() {
        println!("{id}");
    } else {
        println!("{}", render::success_panel(kind, id, status, paused));
    }
}

/// `--phase` → the server's comma list. Title-cased like the public client, and a comma list is
/// allowed too. None means no filter (All).
pub fn phase_filter(phase: Option<&str>) -> std::result::Result<Option<String>, String> {
    const PHASES: [&str; 7] = [
        "Pending", "Starting", "Serving", "Failed", "Updating", "Deleted", "Paused",
    ];
    let Some(p) = phase else {
        // Everything but Deleted: a Flow still starting belongs in the list.
        return Ok(Some(
            "Pending,Starting,Serving,Failed,Updating,Paused".into(),
        ));
    };
    let mut out = vec![];
    for part in p.split(',').map(str::trim) {
        if part.eq_ignore_ascii_case("all") {
            return Ok(None);
        }
        match PHASES.iter().find(|x| x.eq_ignore_ascii_case(part)) {
            Some(x) => out.push(*x),
            None => {
                return Err(format!(
                    "unknown phase {part:?}: use one of {}, or All",
                    PHASES.join(", ")
                ));
            }
        }
    }
    Ok(Some(out.join(",")))
}

/// `--labels a=b,c=d` → `a=b&c=d`, sent as one `labels` value like the public client does.
pub fn labels_filter(labels: &str) -> std::result::Result<String, String> {
    let mut out = vec![];
    for pair in labels.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => out.push(format!("{}={}", k.trim(), v.trim())),
            _ => return Err(format!("label {pair:?} must look like key=value")),
        }
    }
    Ok(out.join("&"))
}

async fn list_items(
    api: &Api,
    kind: Kind,
    phase: Option<&str>,
    name: Option<&str>,
    labels: Option<&str>,
) -> Result<api::Resp> {
    let mut q: Vec<(&str, String)> = vec![];
    if let Some(p) = phase_filter(phase).map_err(Fail::Usage)? {
        q.push(("phase", p));
    }
    if let Some(n) = name {
        q.push(("name", n.to_string()));
    }
    if let Some(l) = labels {
        q.push(("labels", labels_filter(l).map_err(Fail::Usage)?));
    }
    api.call(Method::GET, kind.path(), &q, Body::Empty, "")
        .await
}

fn items<'a>(v: &'a Value, keys: &[&str]) -> &'a [Value] {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_array))
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

async fn list(api: &Api, kind: Kind, a: ListArgs) -> Result<()> {
    let r = list_items(
        api,
        kind,
        a.phase.as_deref(),
        a.name.as_deref(),
        a.labels.as_deref(),
    )
    .await?;
    if a.json {
        println!("{}", r.text.trim_end());
        return Ok(());
    }
    let its = items(&r.json, &[kind.path()]);
    if its.is_empty() {
        println!("No {}s.", kind.noun());
    } else {
        println!("{}", render::list_table(its));
    }
    Ok(())
}

async fn status(api: &Api, kind: Kind, a: StatusArgs) -> Result<()> {
    let r = api
        .get(&format!("{}/{}", kind.path(), seg(&a.id)), &kind.hint())
        .await?;
    show(&r, a.json, |v| render::status_table(v, a.verbose));
    Ok(())
}

fn confirm(question: &str, yes: bool) -> Result<bool> {
    if yes || std::env::var_os("JCLOUD_NO_INTERACTIVE").is_some() {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Fail::Usage(format!(
            "{question} Not asking without a terminal: pass --yes or set JCLOUD_NO_INTERACTIVE=1"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Fail::Usage(format!("cannot read the answer: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes" | "YES"))
}

async fn remove(api: &Api, kind: Kind, a: RemoveArgs) -> Result<()> {
    let all = a.ids.iter().any(|i| i == "all");
    let mut ids: Vec<String> = a.ids.iter().filter(|i| *i != "all").cloned().collect();
    let mut add_listed = |r: api::Resp| {
        for it in items(&r.json, &[kind.path()]) {
            if let Some(id) = it.get("id").and_then(Value::as_str)
                && !ids.iter().any(|x| x == id)
            {
                ids.push(id.to_string());
            }
        }
    };
    if all {
        add_listed(list_items(api, kind, None, None, None).await?);
    }
    if let Some(p) = &a.phase {
        add_listed(list_items(api, kind, Some(p), None, None).await?);
    }
    if ids.is_empty() {
        if a.ids.is_empty() && a.phase.is_none() {
            return Err(Fail::Usage(format!(
                "name the {0}s to remove (IDs from `jc {1} list`), or `all`",
                kind.noun(),
                kind.cli()
            )));
        }
        println!("No {}s to remove.", kind.noun());
        return Ok(());
    }
    if (ids.len() > 1 || all)
        && !confirm(
            &format!(
                "Remove {} {}{} ({})?",
                ids.len(),
                kind.noun(),
                if ids.len() == 1 { "" } else { "s" },
                ids.join(", ")
            ),
            a.yes,
        )?
    {
        println!("Nothing removed.");
        return Ok(());
    }
    // Delete all first, then wait: the removals run side by side on the server.
    let mut first_err: Option<Fail> = None;
    let mut sent = vec![];
    for id in &ids {
        let path = format!("{}/{}", kind.path(), seg(id));
        match api
            .call(Method::DELETE, &path, &[], Body::Empty, &kind.hint())
            .await
        {
            Ok(_) => sent.push(id.clone()),
            Err(e @ Fail::Unreachable(_)) => return Err(e),
            Err(e) => {
                eprintln!("error: {e}");
                first_err.get_or_insert(e);
            }
        }
    }
    for id in sent {
        match wait::until(api, kind, &id, Op::Remove, a.wait.timeout).await {
            Ok(_) => println!("Removed {} {id}.", kind.noun()),
            Err(e @ Fail::Unreachable(_)) => return Err(e),
            Err(e) => {
                eprintln!("error: {e}");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        // Each failure was printed as it happened; the exit code still says so.
        Some(e) if ids.len() > 1 => Err(Fail::Server(format!(
            "not every {} was removed (first failure above: {e})",
            kind.noun()
        ))),
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn update(api: &Api, kind: Kind, a: UpdateArgs) -> Result<()> {
    let (form, _) = spec_form(kind, &a.path)?;
    api.call(
        Method::PUT,
        &format!("{}/{}", kind.path(), seg(&a.id)),
        &[],
        Body::Multipart(form),
        &kind.hint(),
    )
    .await?;
    let status = wait::until(api, kind, &a.id, Op::Update, a.wait.timeout).await?;
    eprintln!("{} {} updated.", kind.noun_title(), a.id);
    print_result(kind, &a.id, &status, false, false);
    Ok(())
}

async fn put_and_wait(
    api: &Api,
    kind: Kind,
    id: &str,
    path: &str,
    query: &[(&str, String)],
    op: Op,
    w: &WaitArgs,
) -> Result<Value> {
    api.call(Method::PUT, path, query, Body::Empty, &kind.hint())
        .await?;
    wait::until(api, kind, id, op, w.timeout).await
}

async fn action(api: &Api, kind: Kind, id: &str, verb: &str, op: Op, w: &WaitArgs) -> Result<()> {
    let path = format!("{}/{}:{verb}", kind.path(), seg(id));
    let status = put_and_wait(api, kind, id, &path, &[], op, w).await?;
    match op {
        Op::Pause => print_result(kind, id, &status, false, true),
        Op::Resume => print_result(kind, id, &status, false, false),
        _ => println!(
            "{} {id}: {verb} done, {}.",
            kind.noun_title(),
            wait::phase_of(&status)
        ),
    }
    Ok(())
}

/// Lines of each pod's log not printed yet. The server may send the whole log or only its tail,
/// so the new lines are those after the longest overlap between the end of what was seen and the
/// start of what came; no overlap (rotated, or a new pod) prints it all.
pub fn new_lines(
    seen: &mut std::collections::HashMap<String, Vec<String>>,
    logs: &Value,
) -> Vec<(String, String)> {
    let mut out = vec![];
    if let Some(m) = logs.as_object() {
        for (pod, text) in m {
            let lines: Vec<String> = text
                .as_str()
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            let old = seen.entry(pod.clone()).or_default();
            let skip = overlap(old, &lines);
            for l in &lines[skip..] {
                out.push((pod.clone(), l.clone()));
            }
            *old = lines;
        }
    }
    out
}

/// The largest k with old[len-k..] == new[..k]. The common case (the log grew) is checked first;
/// the search is bounded so that a huge log with no overlap costs little.
fn overlap(old: &[String], new: &[String]) -> usize {
    if new.len() >= old.len() && new[..old.len()] == *old {
        return old.len();
    }
    let max = old.len().min(new.len()).min(2000);
    (1..=max)
        .rev()
        .find(|&k| old[old.len() - k..] == new[..k])
        .unwrap_or(0)
}

async fn logs(api: &Api, kind: Kind, path: &str, follow: bool, json: bool) -> Result<()> {
    let r = api.get(path, &kind.hint()).await?;
    if json {
        println!("{}", r.text.trim_end());
        return Ok(());
    }
    if !follow {
        print!(
            "{}",
            render::logs(r.json.get("logs").unwrap_or(&Value::Null))
        );
        return Ok(());
    }
    // Logs are not streamed by the API: poll, and print only what is new, prefixed by its pod
    // when there are several. Ctrl-C ends it.
    let mut seen = std::collections::HashMap::new();
    let mut next = Some(r);
    loop {
        let r = match next.take() {
            Some(r) => r,
            None => api.get(path, &kind.hint()).await?,
        };
        let logs = r.json.get("logs").cloned().unwrap_or(Value::Null);
        let several = logs.as_object().is_some_and(|m| m.len() > 1);
        let mut out = std::io::stdout().lock();
        for (pod, line) in new_lines(&mut seen, &logs) {
            let _ = if several {
                writeln!(out, "[{pod}] {line}")
            } else {
                writeln!(out, "{line}")
            };
        }
        let _ = out.flush();
        drop(out);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn secret(cmd: SecretCmd) -> i32 {
    finish(secret_inner(cmd).await).await
}

fn secret_hint(flow: &str) -> String {
    format!("check the names with `jc secret list {flow}` and the Flow ID with `jc flow list`")
}

async fn secret_inner(cmd: SecretCmd) -> Result<()> {
    let api = Api::from_env()?;
    match cmd {
        SecretCmd::Create(a) => {
            let data = literal::parse_str_dict(&a.from_literal)
                .map_err(|e| Fail::Usage(format!("--from-literal: {e}")))?;
            api.call(
                Method::POST,
                "secrets",
                &[],
                Body::Json(json!({"name": a.name, "id": a.flow, "data": data})),
                &secret_hint(&a.flow),
            )
            .await?;
            println!(
                "Secret {} created for flow {}. Use it in the Flow's YAML with `env_from_secret: {{ENV_VAR: {{name: {}, key: KEY}}}}`.",
                a.name, a.flow, a.name
            );
            Ok(())
        }
        SecretCmd::List { flow, json } => {
            let r = api
                .get(&format!("secrets/{}", seg(&flow)), &secret_hint(&flow))
                .await?;
            show(&r, json, |v| {
                listing(v, &["secrets", "Resources.Secrets"], render::secrets_table)
                    .unwrap_or_else(|| format!("No secrets for flow {flow}."))
            });
            Ok(())
        }
        SecretCmd::Get { nf, json } => {
            let r = api
                .get(
                    &format!("secrets/{}/{}", seg(&nf.flow), seg(&nf.name)),
                    &secret_hint(&nf.flow),
                )
                .await?;
            show(&r, json, render::secret_table);
            Ok(())
        }
        SecretCmd::Remove(nf) => {
            api.call(
                Method::DELETE,
                &format!("secrets/{}/{}", seg(&nf.flow), seg(&nf.name)),
                &[],
                Body::Empty,
                &secret_hint(&nf.flow),
            )
            .await?;
            println!("Secret {} of flow {} removed.", nf.name, nf.flow);
            Ok(())
        }
        SecretCmd::Update(a) => {
            let data = literal::parse_str_dict(&a.from_literal)
                .map_err(|e| Fail::Usage(format!("--from-literal: {e}")))?;
            api.call(
                Method::POST,
                &format!("secrets/{}/{}", seg(&a.flow), seg(&a.name)),
                &[],
                Body::Json(json!({"name": a.name, "id": a.flow, "data": data})),
                &secret_hint(&a.flow),
            )
            .await?;
            // Executors read secrets at start: restart so the new values take effect.
            let path = format!("flows/{}:restart", seg(&a.flow));
            put_and_wait(&api, Kind::Flow, &a.flow, &path, &[], Op::Restart, &a.wait).await?;
            println!(
                "Secret {} of flow {} updated; the flow restarted.",
                a.name, a.flow
            );
            Ok(())
        }
    }
}

pub async fn job(cmd: JobCmd) -> i32 {
    finish(job_inner(cmd).await).await
}

fn job_hint(flow: &str) -> String {
    format!("check the names with `jc job list {flow}` and the Flow ID with `jc flow list`")
}

/// The job's JSON body, as the public client sends it.
pub fn job_body(
    name: &str,
    flow: &str,
    image: &str,
    entrypoint: &str,
    timeout: u64,
    backofflimit: Option<u32>,
    secrets: Option<&str>,
) -> std::result::Result<Value, String> {
    let entrypoint = literal::parse_str_list(entrypoint).map_err(|e| format!("ENTRYPOINT: {e}"))?;
    let secrets = match secrets {
        None => Value::Null,
        Some(s) => {
            let v = literal::parse(s).map_err(|e| format!("--secrets: {e}"))?;
            let ok = v.as_object().is_some_and(|m| {
                m.values().all(|r| {
                    r.get("name").and_then(Value::as_str).is_some()
                        && r.get("key").and_then(Value::as_str).is_some()
                })
            });
            if !ok {
                return Err(
                    "--secrets must look like \"{'ENV': {'name': 'secret', 'key': 'KEY'}}\"".into(),
                );
            }
            v
        }
    };
    Ok(json!({
        "name": name,
        "image": image,
        "entrypoint": entrypoint,
        "timeout": timeout,
        "backoffLimit": backofflimit,
        "flowid": flow,
        "secrets": secrets,
    }))
}

async fn job_inner(cmd: JobCmd) -> Result<()> {
    let api = Api::from_env()?;
    match cmd {
        JobCmd::Create {
            name,
            flow,
            image,
            entrypoint,
            timeout,
            backofflimit,
            secrets,
        } => {
            let body = job_body(
                &name,
                &flow,
                &image,
                &entrypoint,
                timeout,
                backofflimit,
                secrets.as_deref(),
            )
            .map_err(Fail::Usage)?;
            api.call(
                Method::POST,
                "jobs",
                &[],
                Body::Json(body),
                &job_hint(&flow),
            )
            .await?;
            println!("Job {name} created for flow {flow}: see `jc job get {name} {flow}`.");
            Ok(())
        }
        JobCmd::List { flow, json } => {
            let r = api
                .get(&format!("jobs/{}", seg(&flow)), &job_hint(&flow))
                .await?;
            show(&r, json, |v| {
                listing(v, &["jobs", "Resources.Jobs"], render::jobs_table)
                    .unwrap_or_else(|| format!("No jobs for flow {flow}."))
            });
            Ok(())
        }
        JobCmd::Get { nf, json } => {
            let r = api
                .get(
                    &format!("jobs/{}/{}", seg(&nf.flow), seg(&nf.name)),
                    &job_hint(&nf.flow),
                )
                .await?;
            show(&r, json, |v| render::jobs_table(std::slice::from_ref(v)));
            Ok(())
        }
        JobCmd::Logs { nf, json } => {
            let r = api
                .get(
                    &format!("jobs/{}/{}/logs", seg(&nf.flow), seg(&nf.name)),
                    &job_hint(&nf.flow),
                )
                .await?;
            if json {
                println!("{}", r.text.trim_end());
            } else {
                print!(
                    "{}",
                    render::logs(r.json.get("logs").unwrap_or(&Value::Null))
                );
            }
            Ok(())
        }
        JobCmd::Remove(nf) => {
            api.call(
                Method::DELETE,
                &format!("jobs/{}/{}", seg(&nf.flow), seg(&nf.name)),
                &[],
                Body::Empty,
                &job_hint(&nf.flow),
            )
            .await?;
            println!("Job {} of flow {} removed.", nf.name, nf.flow);
            Ok(())
        }
    }
}

pub async fn executor(cmd: ExecutorCmd) -> i32 {
    finish(executor_inner(cmd).await).await
}

async fn executor_inner(cmd: ExecutorCmd) -> Result<()> {
    let ExecutorCmd::Push {
        dir,
        name,
        tag,
        public,
        private: _,
        json,
    } = cmd;
    if !dir.is_dir() {
        return Err(Fail::Usage(format!(
            "{} is not a folder: push the folder with the Executor's config.yml",
            dir.display()
        )));
    }
    let api = Api::from_env()?;
    let bytes = archive::pack_dir(&dir)
        .map_err(|e| Fail::Usage(format!("cannot pack {}: {e}", dir.display())))?;
    let form = reqwest::multipart::Form::new()
        .text("name", name.clone())
        .text("tag", tag.clone())
        .text("public", public.to_string())
        .part(
            "archive",
            reqwest::multipart::Part::bytes(bytes)
                .file_name("archive.tar.gz")
                .mime_str("application/gzip")
                .expect("static mime"),
        );
    let r = api
        .call(Method::POST, "executors", &[], Body::Multipart(form), "")
        .await?;
    if json {
        println!("{}", r.text.trim_end());
        return Ok(());
    }
    let who = match public {
        true => "public: every user may use it",
        false => "private: only you may use it",
    };
    match r.json.get("uses").and_then(Value::as_str) {
        Some(uses) => {
            println!("Pushed Executor {name}:{tag} ({who}). Use it in a Flow with `uses: {uses}`.")
        }
        None => println!("Pushed Executor {name}:{tag} ({who})."),
    }
    Ok(())
}

pub fn new_project(a: NewArgs) -> i32 {
    match template::create(&a.path) {
        Ok(()) => {
            println!(
                "New project created under {0}. Try `jc flow serve {0}/flow.yml` here, or `jc flow deploy {0}`.",
                a.path.display()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.code()
        }
    }
}

/// `jc login --token T`: saves the token where both clients read it, keeping the file's other
/// keys. Without --token it explains where tokens come from (there is no Hubble login here).
pub fn login(a: LoginArgs) -> i32 {
    let Some(token) = a.token else {
        eprintln!(
            "error: Zeroflow tokens come from the server: run `jc server token create NAME` there, \
             then `jc login --token TOKEN` (or export JINA_AUTH_TOKEN=TOKEN)"
        );
        return api::EX_USAGE;
    };
    match write_token(Some(&token)) {
        Ok(p) => {
            println!("Saved the token to {}.", p.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.code()
        }
    }
}

pub fn logout() -> i32 {
    match write_token(None) {
        Ok(p) => {
            println!("Removed the token from {}.", p.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.code()
        }
    }
}

fn write_token(token: Option<&str>) -> Result<PathBuf> {
    let path = api::config_path();
    let mut cfg = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let obj = cfg.as_object_mut().expect("filtered to objects");
    match token {
        Some(t) => {
            obj.insert("auth_token".into(), Value::String(t.to_string()));
        }
        None => {
            obj.remove("auth_token");
        }
    }
    let io = |e: std::io::Error| Fail::Usage(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let text = serde_json::to_string_pretty(&cfg).expect("a JSON value serializes");
    // The token is a credential: owner-only from the moment the file exists.
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    Ok(path)
}

/// Prints a response for scripts (`--json`: the server's JSON as sent) or for people.
fn show(r: &api::Resp, json: bool, human: impl FnOnce(&Value) -> String) {
    if json {
        println!("{}", r.text.trim_end());
    } else {
        println!("{}", human(&r.json));
    }
}

/// A table of the items under the first of `keys` present, or None when there are none.
fn listing(v: &Value, keys: &[&str], table: impl FnOnce(&[Value]) -> String) -> Option<String> {
    let its = items(v, keys);
    (!its.is_empty()).then(|| table(its))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn phases_and_labels() {
        assert_eq!(phase_filter(Some("serving")).unwrap().unwrap(), "Serving");
        assert_eq!(
            phase_filter(Some("Failed, paused")).unwrap().unwrap(),
            "Failed,Paused"
        );
        assert_eq!(phase_filter(Some("All")).unwrap(), None);
        assert!(phase_filter(None).unwrap().unwrap().contains("Pending"));
        assert!(!phase_filter(None).unwrap().unwrap().contains("Deleted"));
        assert!(
            phase_filter(Some("Deleting"))
                .unwrap_err()
                .contains("unknown phase")
        );
        assert_eq!(labels_filter("a=b, c=d").unwrap(), "a=b&c=d");
        assert!(labels_filter("a").is_err());
    }

    #[test]
    fn local_files_are_detected() {
        assert!(references_local_files(
            "jtype: Flow\nexecutors:\n  - name: e\n    uses: executor1/config.yml\n"
        ));
        assert!(references_local_files(
            "jtype: Flow\nexecutors:\n  - uses: MyExec\n    py_modules: [my.py]\n"
        ));
        assert!(!references_local_files(
            "jtype: Flow\nexecutors:\n  - uses: jinaai+docker://me/X\n  - command: zeroflow-test-executor\n"
        ));
        assert!(references_local_files(
            "jtype: Deployment\nwith:\n  uses: config.yml\n"
        ));
    }

    #[test]
    fn job_bodies() {
        let b = job_body("j", "f", "img", "['python', 'x.py']", 600, None, None).unwrap();
        assert_eq!(
            b,
            json!({"name": "j", "image": "img", "entrypoint": ["python", "x.py"], "timeout": 600,
                   "backoffLimit": null, "flowid": "f", "secrets": null})
        );
        let b = job_body(
            "j",
            "f",
            "img",
            "sh -c true",
            60,
            Some(2),
            Some("{'DB_USER': {'name': 'db', 'key': 'USER'}}"),
        )
        .unwrap();
        assert_eq!(
            b["secrets"],
            json!({"DB_USER": {"name": "db", "key": "USER"}})
        );
        assert_eq!(b["backoffLimit"], 2);
        assert!(job_body("j", "f", "i", "x", 1, None, Some("{'A': 'b'}")).is_err());
    }

    #[test]
    fn new_lines_per_pod() {
        let mut seen = std::collections::HashMap::new();
        let a = new_lines(&mut seen, &json!({"p": "1\n2\n"}));
        assert_eq!(a.len(), 2);
        assert!(new_lines(&mut seen, &json!({"p": "1\n2\n"})).is_empty());
        let b = new_lines(&mut seen, &json!({"p": "1\n2\n3\n"}));
        assert_eq!(b, vec![("p".to_string(), "3".to_string())]);
        let c = new_lines(&mut seen, &json!({"p": "3\n4\n"}));
        assert_eq!(c, vec![("p".to_string(), "4".to_string())], "a tail window");
        let d = new_lines(&mut seen, &json!({"p": "x\n"}));
        assert_eq!(
            d,
            vec![("p".to_string(), "x".to_string())],
            "rotated: all of it"
        );
    }

    #[test]
    fn specs_resolve() {
        let d = std::env::temp_dir().join(format!("jc-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let e = resolve_spec(Kind::Flow, &d).unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("has no flow.yml"), "{e}");
        std::fs::write(d.join("flow.yaml"), "jtype: Flow\n").unwrap();
        assert_eq!(resolve_spec(Kind::Flow, &d).unwrap(), d.join("flow.yaml"));
        assert!(resolve_spec(Kind::Deployment, &d).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
