//! The local runtime: every replica of every shard is an `zeroflow-shim` process wrapping the
//! Executor's command. Readiness is pushed: the shim prints one ready line on stdout the moment
//! the Executor serves, so nothing here polls.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zeroflow_activator::ReplicaSet;
use zeroflow_shim::READY_LINE_PREFIX;
use zeroflow_spec::{Executor, Flow, Uses};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("Executor {executor} uses {uses}, which the local runtime cannot run: {why}")]
    Unsupported {
        executor: String,
        uses: String,
        why: String,
    },
    #[error("cannot start replica {replica} of Executor {executor}: {source}")]
    Spawn {
        executor: String,
        replica: String,
        source: std::io::Error,
    },
    #[error(
        "replica {replica} of Executor {executor} failed to start ({status}). Last lines of its output:\n{tail}"
    )]
    Failed {
        executor: String,
        replica: String,
        status: String,
        tail: String,
    },
    #[error(
        "replica {replica} of Executor {executor} was not ready within {timeout:?}. Last lines of its output:\n{tail}"
    )]
    Timeout {
        executor: String,
        replica: String,
        timeout: Duration,
        tail: String,
    },
}

/// Where the local runtime finds its programs, and how long it waits.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The `zeroflow-shim` binary.
    pub shim: PathBuf,
    /// Directory searched first for a bare program name in an Executor's `command`.
    pub bin_dir: Option<PathBuf>,
    /// The `jina` command for Python Executors.
    pub jina: PathBuf,
    /// The Flow file's folder: relative `uses:` and `py_modules` are resolved from here.
    pub flow_dir: PathBuf,
    /// Scratch folder for generated Executor configs.
    pub work_dir: PathBuf,
    pub startup_timeout: Duration,
    pub drain_timeout: Duration,
    /// Extra environment for every Executor (secrets, `.env`).
    pub env: HashMap<String, String>,
}

impl LocalOptions {
    /// Finds `zeroflow-shim` next to the running binary and `jina` on PATH (or `ZEROFLOW_JINA`).
    pub fn discover(flow_dir: PathBuf, work_dir: PathBuf) -> Self {
        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let shim = std::env::var_os("ZEROFLOW_SHIM")
            .map(PathBuf::from)
            .or_else(|| {
                bin_dir
                    .as_ref()
                    .map(|d| d.join("zeroflow-shim"))
                    .filter(|p| p.exists())
            })
            .unwrap_or_else(|| PathBuf::from("zeroflow-shim"));
        let jina = std::env::var_os("ZEROFLOW_JINA")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("jina"));
        LocalOptions {
            shim,
            bin_dir,
            jina,
            flow_dir,
            work_dir,
            startup_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(30),
            env: HashMap::new(),
        }
    }
}

fn describe(uses: &Uses) -> String {
    match uses {
        Uses::PassThrough => "no `uses` (pass-through)".into(),
        Uses::Class { name } => name.clone(),
        Uses::Config { path } => path.clone(),
        Uses::Inline { .. } => "an inline config".into(),
        Uses::Docker { image } => format!("docker://{image}"),
        Uses::Hub { scheme, reference } => format!("{scheme}://{reference}"),
    }
}

/// The command that runs one replica of `exec` (before the shim wraps it). `{port}` is the
/// Executor's port, filled in by the shim.
pub fn executor_command(exec: &Executor, opts: &LocalOptions) -> Result<Vec<String>, RuntimeError> {
    if let Some(cmd) = &exec.command {
        let mut cmd = cmd.clone();
        if let Some(first) = cmd.first_mut()
            && !first.contains('/')
            && let Some(dir) = &opts.bin_dir
            && dir.join(&*first).exists()
        {
            *first = dir.join(&*first).to_string_lossy().into_owned();
        }
        return Ok(cmd);
    }
    let jina_args = |uses: String| -> Vec<String> {
        let mut v = vec![
            opts.jina.to_string_lossy().into_owned(),
            "executor".into(),
            "--uses".into(),
            uses,
            "--name".into(),
            exec.name.clone(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "{port}".into(),
            // One process: SIGTERM reaches the server itself (see jina-protocol.md).
            "--native".into(),
        ];
        if !exec.uses_with.is_empty() {
            v.push("--uses-with".into());
            v.push(serde_json::Value::Object(exec.uses_with.clone()).to_string());
        }
        if !exec.uses_metas.is_empty() {
            v.push("--uses-metas".into());
            v.push(serde_json::Value::Object(exec.uses_metas.clone()).to_string());
        }
        if !exec.uses_requests.is_empty() {
            v.push("--uses-requests".into());
            v.push(serde_json::Value::Object(exec.uses_requests.clone()).to_string());
        }
        if !exec.py_modules.is_empty() {
            v.push("--py-modules".into());
            for m in &exec.py_modules {
                v.push(resolve(&opts.flow_dir, m));
            }
        }
        v
    };
    match &exec.uses {
        Uses::PassThrough => Ok(jina_args("BaseExecutor".into())),
        Uses::Class { name } => Ok(jina_args(name.clone())),
        Uses::Config { path } => Ok(jina_args(resolve(&opts.flow_dir, path))),
        Uses::Inline { config } => {
            // jina's --uses takes a path; the inline mapping is written out as YAML-compatible
            // JSON next to the other generated files.
            let file = opts.work_dir.join(format!("{}.uses.yml", exec.name));
            std::fs::create_dir_all(&opts.work_dir)
                .and_then(|_| std::fs::write(&file, config.to_string()))
                .map_err(|e| RuntimeError::Spawn {
                    executor: exec.name.clone(),
                    replica: "-".into(),
                    source: e,
                })?;
            Ok(jina_args(file.to_string_lossy().into_owned()))
        }
        other => Err(RuntimeError::Unsupported {
            executor: exec.name.clone(),
            uses: describe(other),
            why: "it names a container image, and this machine runs Executors as local processes; \
                  give the Executor's config.yml or class with py_modules instead"
                .into(),
        }),
    }
}

fn resolve(dir: &Path, p: &str) -> String {
    let path = Path::new(p);
    if path.is_absolute() {
        p.to_string()
    } else {
        dir.join(path).to_string_lossy().into_owned()
    }
}

const TAIL: usize = 40;

/// A running replica: a shim process and the addresses it reported.
pub struct ReplicaProcess {
    pub executor: String,
    pub id: String,
    pub grpc_addr: String,
    pub admin_addr: String,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl ReplicaProcess {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn output_tail(&self) -> String {
        self.tail
            .lock()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM: the shim drains, stops its Executor, and exits.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(replica = %self.id, "shim did not stop in time; killing it");
            let _ = self.child.kill().await;
        }
    }

    /// Resolves when the shim exits.
    pub async fn wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.wait().await.ok()
    }
}

fn push_tail(tail: &Mutex<VecDeque<String>>, line: String) {
    let mut t = tail.lock();
    if t.len() == TAIL {
        t.pop_front();
    }
    t.push_back(line);
}

/// Starts one replica and waits for its ready line.
pub async fn start_replica(
    exec: &Executor,
    replica_id: &str,
    opts: &LocalOptions,
) -> Result<ReplicaProcess, RuntimeError> {
    let cmd = executor_command(exec, opts)?;
    let mut shim = Command::new(&opts.shim);
    shim.arg("--executor")
        .arg(&exec.name)
        .arg("--replica")
        .arg(replica_id)
        .arg("--drain-timeout")
        .arg(format!("{}ms", opts.drain_timeout.as_millis()))
        .arg("--startup-timeout")
        .arg(format!("{}ms", opts.startup_timeout.as_millis()))
        .arg("--")
        .args(&cmd)
        .current_dir(&opts.flow_dir)
        .envs(&opts.env)
        .envs(&exec.env)
        .env("ZEROFLOW_EXECUTOR_NAME", &exec.name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    zeroflow_shim::child::set_parent_death_signal(&mut shim);
    let mut child = shim.spawn().map_err(|e| RuntimeError::Spawn {
        executor: exec.name.clone(),
        replica: replica_id.into(),
        source: std::io::Error::new(e.kind(), format!("{}: {e}", opts.shim.display())),
    })?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    {
        let tail = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{line}");
                push_tail(&tail, line);
            }
        });
    }
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
    {
        let tail = tail.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix(READY_LINE_PREFIX)
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(rest.to_string());
                    continue;
                }
                println!("{line}");
                push_tail(&tail, line);
            }
        });
    }
    let text =
        |t: &Arc<Mutex<VecDeque<String>>>| t.lock().iter().cloned().collect::<Vec<_>>().join("\n");
    let ready = tokio::select! {
        r = ready_rx => r.ok(),
        status = child.wait() => {
            // Give the output readers a moment to take the last lines.
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            tokio::task::yield_now().await;
            return Err(RuntimeError::Failed { executor: exec.name.clone(), replica: replica_id.into(), status, tail: text(&tail) });
        }
        _ = tokio::time::sleep(opts.startup_timeout + Duration::from_secs(5)) => None,
    };
    let Some(line) = ready else {
        let _ = child.kill().await;
        return Err(RuntimeError::Timeout {
            executor: exec.name.clone(),
            replica: replica_id.into(),
            timeout: opts.startup_timeout,
            tail: text(&tail),
        });
    };
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).map(str::to_string))
            .unwrap_or_default()
    };
    Ok(ReplicaProcess {
        executor: exec.name.clone(),
        id: replica_id.into(),
        grpc_addr: field("grpc="),
        admin_addr: field("admin="),
        child,
        tail,
    })
}

/// A Flow's replicas on this machine with a fixed replica count.
pub struct LocalFlow {
    pub replicas: Vec<ReplicaProcess>,
    /// Per Executor, one replica set per shard, for the gateway.
    pub shards: HashMap<String, Vec<Arc<ReplicaSet>>>,
}

impl LocalFlow {
    /// Starts `replicas x shards` shims per Executor, all at once, and waits until each serves.
    /// If any fails, the ones started are stopped and the first error is returned.
    pub async fn start(flow: &Flow, opts: &LocalOptions) -> Result<LocalFlow, RuntimeError> {
        let mut jobs = vec![];
        for exec in &flow.executors {
            for shard in 0..exec.shards {
                for r in 0..exec.replicas {
                    let id = if exec.shards > 1 {
                        format!("{}-{shard}-{r}", exec.name)
                    } else {
                        format!("{}-{r}", exec.name)
                    };
                    jobs.push(async move {
                        (
                            exec.name.clone(),
                            shard,
                            start_replica(exec, &id, opts).await,
                        )
                    });
                }
            }
        }
        let results = futures::future::join_all(jobs).await;
        let mut replicas = vec![];
        let mut first_err = None;
        let mut placed: Vec<(String, u32, usize)> = vec![];
        for (name, shard, r) in results {
            match r {
                Ok(p) => {
                    placed.push((name, shard, replicas.len()));
                    replicas.push(p);
                }
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        if let Some(e) = first_err {
            for p in replicas {
                p.stop(opts.drain_timeout).await;
            }
            return Err(e);
        }
        let mut shards = HashMap::new();
        for exec in &flow.executors {
            let sets: Vec<Arc<ReplicaSet>> = (0..exec.shards)
                .map(|s| {
                    let rs = ReplicaSet::new(&exec.name, exec.retries);
                    let members = placed
                        .iter()
                        .filter(|(n, sh, _)| *n == exec.name && *sh == s)
                        .map(|(_, _, i)| (replicas[*i].id.clone(), replicas[*i].grpc_addr.clone()))
                        .collect();
                    rs.set_replicas(members).expect("shim addresses are valid");
                    Arc::new(rs)
                })
                .collect();
            shards.insert(exec.name.clone(), sets);
        }
        Ok(LocalFlow { replicas, shards })
    }

    /// Drains and stops every replica.
    pub async fn stop(self, grace: Duration) {
        futures::future::join_all(self.replicas.into_iter().map(|r| r.stop(grace))).await;
    }
}
