//! The local runtime: every replica of every shard is an `zeroflow-shim` process wrapping the
//! Executor's command. Readiness is pushed: the shim prints one ready line on stdout the moment
//! the Executor serves, so nothing here polls.

pub use crate::runtime::RuntimeEvent;
use crate::runtime::{InitialReplicas, Runtime};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
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
    #[error("Executor {executor} cannot run: `{program}` {why}. {hint}")]
    NotFound {
        executor: String,
        program: String,
        why: String,
        hint: String,
    },
    #[error("cannot start replica {replica} of Executor {executor}: {source}")]
    Spawn {
        executor: String,
        replica: String,
        source: std::io::Error,
    },
    #[error(
        "replica {replica} of Executor {executor} failed to start: it exited before it served ({status}). Last lines of its output:\n{tail}"
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
    /// Where Executors keep their state when the Flow names no `workspace` (a relative one goes
    /// under it). None: a relative `workspace` is resolved from the Flow's folder, and without
    /// one Jina's default applies.
    pub workspace: Option<PathBuf>,
    /// Fork `jina executor` replicas from a zygote that has imported jina once (see
    /// [`zygote_socket`]): a Python Executor's cold start without Jina's 1.4 s import. On unless
    /// `ZEROFLOW_ZYGOTE=0`.
    pub zygote: bool,
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
            workspace: None,
            zygote: std::env::var("ZEROFLOW_ZYGOTE").map_or(true, |v| v != "0"),
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

/// The command that runs one replica of shard `shard` of `exec` (before the shim wraps it).
/// `{port}` is the Executor's port, filled in by the shim.
pub fn executor_command(
    exec: &Executor,
    shard: u32,
    opts: &LocalOptions,
) -> Result<Vec<String>, RuntimeError> {
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
    let jina = opts.jina.to_string_lossy();
    let exec = &Executor {
        workspace: workspace(exec, opts),
        ..exec.clone()
    };
    let jina_args =
        |uses: String| jina_executor_args(exec, &jina, uses, shard, |p| resolve(&opts.flow_dir, p));
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

/// An `external: true` Executor is one replica at its address in every shard's set: the gateway
/// calls it as it calls a local replica, and nothing here starts, scales or stops it. Every
/// runtime does the same for them.
pub fn add_external(
    exec: &Executor,
    addr: &zeroflow_spec::ExternalAddress,
    sets: &[Arc<ReplicaSet>],
) -> Result<(), RuntimeError> {
    let unsupported = |why: String| RuntimeError::Unsupported {
        executor: exec.name.clone(),
        uses: format!("an external address ({}:{})", addr.host, addr.port),
        why,
    };
    if addr.tls {
        return Err(unsupported(
            "`tls: true` is not supported for external Executors yet; Zeroflow calls them over \
             plain HTTP/2 (h2c)"
                .into(),
        ));
    }
    let hostport = |host: &str, port: u16| {
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    };
    if !addr.shards.is_empty() && addr.shards.len() != sets.len() {
        return Err(unsupported(format!(
            "{} shard addresses were given for {} shards; give one per shard",
            addr.shards.len(),
            sets.len()
        )));
    }
    for (i, set) in sets.iter().enumerate() {
        let at = match addr.shards.get(i) {
            Some((host, port)) => hostport(host, *port),
            None => hostport(&addr.host, addr.port),
        };
        set.add_replica(&format!("{}-external-{i}", exec.name), &at)
            .map_err(|e| unsupported(e.message().to_string()))?;
    }
    Ok(())
}

/// `jina executor` with the Executor's `uses_*` and `py_modules` (each path through `path`),
/// on `{port}` of loopback: the shim in front of it is what others call.
pub fn jina_executor_args(
    exec: &Executor,
    jina: &str,
    uses: String,
    shard: u32,
    path: impl Fn(&str) -> String,
) -> Vec<String> {
    let mut v = vec![
        jina.to_string(),
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
    for (flag, map) in [
        ("--uses-with", &exec.uses_with),
        ("--uses-metas", &exec.uses_metas),
        ("--uses-requests", &exec.uses_requests),
    ] {
        if !map.is_empty() {
            v.push(flag.into());
            v.push(serde_json::Value::Object(map.clone()).to_string());
        }
    }
    if !exec.py_modules.is_empty() {
        v.push("--py-modules".into());
        for m in &exec.py_modules {
            v.push(path(m));
        }
    }
    if let Some(w) = &exec.workspace {
        v.push("--workspace".into());
        v.push(path(w));
    }
    if exec.shards > 1 {
        // What a Jina Flow tells each shard: its `runtime_args.shard_id` names its workspace
        // (`workspace/NAME/ID`), so the shards of a stateful Executor keep apart what they hold.
        v.extend([
            "--shards".into(),
            exec.shards.to_string(),
            "--shard-id".into(),
            shard.to_string(),
        ]);
    }
    v
}

/// Fails at once, naming what to install or fix, when the program a replica would run is not
/// there: otherwise every replica start fails the same way and the Flow only gives up after
/// several attempts, with the reason buried in the last one's output.
fn check_program(exec: &Executor, cmd: &[String], opts: &LocalOptions) -> Result<(), RuntimeError> {
    let Some(program) = cmd.first() else {
        return Ok(());
    };
    let hint = if exec.command.is_none() {
        "Python Executors run with Jina's own `jina executor`: install jina (see the README's \
         setup), or set ZEROFLOW_JINA to its path"
    } else {
        "`command:` must name a program on PATH, or a path (relative to the Flow's folder)"
    };
    let fail = |why: &str| {
        Err(RuntimeError::NotFound {
            executor: exec.name.clone(),
            program: program.clone(),
            why: why.into(),
            hint: hint.into(),
        })
    };
    if program.contains('/') {
        let path = opts.flow_dir.join(program);
        return if executable(&path) {
            Ok(())
        } else if path.exists() {
            fail("is not an executable file")
        } else {
            fail("does not exist")
        };
    }
    match locate(program, Some(exec), opts) {
        Some(_) => Ok(()),
        None => fail("is not on PATH"),
    }
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `program` as a replica of `exec` would find it: a path (from the Flow's folder), else the
/// first executable of that name on the replica's PATH (the Executor's `env`, else the Flow's,
/// else this process's).
fn locate(program: &str, exec: Option<&Executor>, opts: &LocalOptions) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(opts.flow_dir.join(program)).filter(|p| executable(p));
    }
    let path_var = exec
        .and_then(|e| e.env.get("PATH").cloned())
        .or_else(|| opts.env.get("PATH").cloned())
        .or_else(|| std::env::var("PATH").ok())?;
    std::env::split_paths(&path_var)
        .map(|dir| opts.flow_dir.join(dir).join(program))
        .find(|p| executable(p))
}

/// The zygote's program: see its docstring.
const ZYGOTE_PY: &str = include_str!("zygote.py");

/// The zygotes this process started, by interpreter: their socket, or None if one could not be
/// started (replicas then start `jina executor` themselves, as without a zygote).
static ZYGOTES: std::sync::LazyLock<Mutex<HashMap<Vec<String>, Option<Zygote>>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

struct Zygote {
    socket: PathBuf,
    process: std::process::Child,
}

/// Stops the zygotes this process started and waits for them (a few seconds at most), so that
/// nothing of ours outlives `jc` once it says it stopped. Their forks are gone by then: they
/// drained with their replicas, or die with the zygote.
pub async fn stop_zygotes() {
    let zygotes: Vec<Zygote> = ZYGOTES.lock().drain().filter_map(|(_, z)| z).collect();
    for mut z in zygotes {
        let pid = nix::unistd::Pid::from_raw(z.process.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while matches!(z.process.try_wait(), Ok(None)) {
            if tokio::time::Instant::now() >= deadline {
                let _ = z.process.kill();
                let _ = z.process.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::debug!(socket = %z.socket.display(), "zygote stopped");
    }
}

/// The socket of the zygote for `opts.jina`'s interpreter, started on first use and shared by
/// every Flow of this process. None when disabled, or when `jina` is not the console script of
/// a Python that has jina (a wrapper, say): its replicas are started as they are.
pub fn zygote_socket(opts: &LocalOptions) -> Option<PathBuf> {
    if !opts.zygote {
        return None;
    }
    let interpreter = jina_interpreter(opts)?;
    let mut zygotes = ZYGOTES.lock();
    let entry = zygotes.entry(interpreter.clone()).or_insert(None);
    // None the first time, or after the zygote died (killed by hand, out of memory): start one.
    let alive = entry
        .as_mut()
        .is_some_and(|z| matches!(z.process.try_wait(), Ok(None)));
    if !alive {
        if let Some(z) = entry.as_ref() {
            tracing::warn!(socket = %z.socket.display(), "the zygote is gone; starting another");
            // A zygote killed outright could not remove its folder.
            if let Some(dir) = z.socket.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        *entry = match start_zygote(&interpreter) {
            Ok(z) => Some(z),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the zygote; Python Executors start without it");
                None
            }
        };
    }
    entry.as_ref().map(|z| z.socket.clone())
}

/// The interpreter (with its arguments) in the `#!` line of the `jina` console script.
fn jina_interpreter(opts: &LocalOptions) -> Option<Vec<String>> {
    let jina = locate(&opts.jina.to_string_lossy(), None, opts)?;
    let text = std::fs::read_to_string(jina).ok()?;
    // Only pip's console script: anything else named `jina` may do more than Jina's CLI.
    if !text.contains("from jina_cli import main") {
        return None;
    }
    let interpreter: Vec<String> = text
        .lines()
        .next()?
        .strip_prefix("#!")?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (!interpreter.is_empty()).then_some(interpreter)
}

fn start_zygote(interpreter: &[String]) -> std::io::Result<Zygote> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Private to this user: whoever can connect can have it run commands.
    let dir = std::env::temp_dir().join(format!(
        "zeroflow-zygote-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let script = dir.join("zygote.py");
    std::fs::write(&script, ZYGOTE_PY)?;
    let socket = dir.join("zygote.sock");
    let mut cmd = std::process::Command::new(&interpreter[0]);
    cmd.args(&interpreter[1..])
        .arg(&script)
        .arg(&socket)
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .env("JINA_LOG_NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // Its own process group: a Ctrl-C at the terminal (or `timeout`'s group signal) is for jc,
    // which drains the replicas; the zygote and its forks must not die under them first.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // SAFETY: prctl(2) only, between fork and exec: async-signal-safe, no allocation.
    #[allow(unsafe_code)]
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    let process = cmd.spawn()?;
    tracing::info!(pid = process.id(), socket = %socket.display(), "zygote started");
    Ok(Zygote { socket, process })
}

/// The absolute workspace of `exec`'s replicas, if it has one (see [`LocalOptions::workspace`]).
pub fn workspace(exec: &Executor, opts: &LocalOptions) -> Option<String> {
    match (&exec.workspace, &opts.workspace) {
        (Some(w), Some(root)) if Path::new(w).is_relative() => {
            Some(root.join(w).to_string_lossy().into_owned())
        }
        (Some(w), _) => Some(resolve(&opts.flow_dir, w)),
        (None, Some(root)) => Some(root.to_string_lossy().into_owned()),
        (None, None) => None,
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

/// Lines kept per replica in a [`LogBook`], and replicas remembered after they stop (so the logs
/// of a crashed replica can still be read).
const LOG_LINES: usize = 1000;
const LOG_REPLICAS: usize = 64;

/// Every replica's output (the shim's stdout and stderr), by replica id, for `logs` requests.
/// Bounded: the last [`LOG_LINES`] lines of the last [`LOG_REPLICAS`] replicas.
#[derive(Clone, Default)]
pub struct LogBook {
    inner: Arc<Mutex<LogBookInner>>,
}

#[derive(Default)]
struct LogBookInner {
    /// replica id -> (executor, lines)
    replicas: BTreeMap<String, (String, VecDeque<String>)>,
    /// Replica ids in the order they first logged, to forget the oldest.
    order: VecDeque<String>,
}

impl LogBook {
    pub fn push(&self, executor: &str, replica: &str, line: &str) {
        let mut b = self.inner.lock();
        if !b.replicas.contains_key(replica) {
            if b.order.len() == LOG_REPLICAS
                && let Some(old) = b.order.pop_front()
            {
                b.replicas.remove(&old);
            }
            b.order.push_back(replica.to_string());
            b.replicas
                .insert(replica.to_string(), (executor.to_string(), VecDeque::new()));
        }
        if let Some((_, lines)) = b.replicas.get_mut(replica) {
            if lines.len() == LOG_LINES {
                lines.pop_front();
            }
            lines.push_back(line.to_string());
        }
    }

    /// replica id -> its output, for one Executor (or all with None).
    pub fn snapshot(&self, executor: Option<&str>) -> BTreeMap<String, String> {
        self.inner
            .lock()
            .replicas
            .iter()
            .filter(|(_, (e, _))| executor.is_none_or(|x| x == e))
            .map(|(id, (_, lines))| {
                (
                    id.clone(),
                    lines.iter().cloned().collect::<Vec<_>>().join("\n"),
                )
            })
            .collect()
    }
}

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

/// Starts one replica of shard `shard` and waits for its ready line.
pub async fn start_replica(
    exec: &Executor,
    replica_id: &str,
    shard: u32,
    opts: &LocalOptions,
) -> Result<ReplicaProcess, RuntimeError> {
    start_replica_logged(exec, replica_id, shard, opts, None).await
}

/// [`start_replica`], also copying every output line into `logs`.
pub async fn start_replica_logged(
    exec: &Executor,
    replica_id: &str,
    shard: u32,
    opts: &LocalOptions,
    logs: Option<LogBook>,
) -> Result<ReplicaProcess, RuntimeError> {
    let cmd = executor_command(exec, shard, opts)?;
    let mut shim = Command::new(&opts.shim);
    if exec.command.is_none()
        && let Some(socket) = zygote_socket(opts)
    {
        shim.arg("--zygote").arg(socket);
    }
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
        // Which part of the Executor this process is, for programs that are not `jina executor`
        // (which gets Jina's own --shard-id).
        .env("ZEROFLOW_REPLICA_ID", replica_id)
        .env("ZEROFLOW_SHARD_ID", shard.to_string())
        .env("ZEROFLOW_SHARDS", exec.shards.to_string())
        .envs(workspace(exec, opts).map(|w| ("ZEROFLOW_WORKSPACE", w)))
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
    let stderr_done = {
        let tail = tail.clone();
        let logs = logs.clone();
        let (executor, replica) = (exec.name.clone(), replica_id.to_string());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{line}");
                if let Some(l) = &logs {
                    l.push(&executor, &replica, &line);
                }
                push_tail(&tail, line);
            }
        })
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
    {
        let tail = tail.clone();
        let (executor, replica) = (exec.name.clone(), replica_id.to_string());
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
                if let Some(l) = &logs {
                    l.push(&executor, &replica, &line);
                }
                push_tail(&tail, line);
            }
        });
    }
    let text =
        |t: &Arc<Mutex<VecDeque<String>>>| t.lock().iter().cloned().collect::<Vec<_>>().join("\n");
    let ready = tokio::select! {
        r = ready_rx => match r {
            Ok(line) => Some(line),
            // The shim's stdout closed without the ready line: it is exiting, which is a failed
            // start, not a timeout. Its exit status and last output say why.
            Err(_) => {
                let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                    Ok(Ok(s)) => s.to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => {
                        let _ = child.kill().await;
                        "its output closed; killed".to_string()
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), stderr_done).await;
                return Err(RuntimeError::Failed { executor: exec.name.clone(), replica: replica_id.into(), status, tail: text(&tail) });
            }
        },
        status = child.wait() => {
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            // Let the output readers take the last lines.
            let _ = tokio::time::timeout(Duration::from_secs(1), stderr_done).await;
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

/// A replica the runtime tracks: starting, ready, or stopping.
struct Slot {
    id: String,
    shard: u32,
    admin: Option<String>,
    ready: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Debug)]
enum ReplicaEnd {
    Stopped,
    StartFailed(String),
    Crashed { output: String, ran: Duration },
}

/// Consecutive failures after which an Executor is marked failed instead of retried.
const MAX_FAILURES: u32 = 5;

struct ExecRuntime {
    exec: Executor,
    sets: Vec<Arc<ReplicaSet>>,
    desired: tokio::sync::watch::Sender<u32>,
    slots: Mutex<Vec<Slot>>,
    next_id: std::sync::atomic::AtomicU64,
    failed: Mutex<Option<String>>,
    logs: LogBook,
}

/// Runs a Flow's Executors as shim processes and scales each to the replica count it is told.
pub struct LocalRuntime {
    opts: Arc<LocalOptions>,
    execs: Vec<Arc<ExecRuntime>>,
    /// `external: true` Executors: served from their address, never started or scaled here.
    external: Vec<(String, Vec<Arc<ReplicaSet>>)>,
    events: tokio::sync::broadcast::Sender<RuntimeEvent>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    logs: LogBook,
}

impl LocalRuntime {
    /// Checks that every Executor can run here, and builds the replica sets the gateway uses.
    /// Nothing starts until [`LocalRuntime::start`].
    pub fn new(
        flow: &Flow,
        opts: LocalOptions,
        settings: impl Fn(&Executor) -> zeroflow_activator::ThrottleSettings,
        metrics: Option<zeroflow_activator::ActivatorMetrics>,
    ) -> Result<Self, RuntimeError> {
        let mut execs = vec![];
        let mut external = vec![];
        let logs = LogBook::default();
        for exec in &flow.executors {
            let sets: Vec<Arc<ReplicaSet>> = (0..exec.shards)
                .map(|_| {
                    let mut rs =
                        ReplicaSet::new(&exec.name, exec.retries).with_settings(settings(exec));
                    if let Some(m) = &metrics {
                        rs = rs.with_metrics(m.clone());
                    }
                    Arc::new(rs)
                })
                .collect();
            if let Some(addr) = &exec.external {
                add_external(exec, addr, &sets)?;
                external.push((exec.name.clone(), sets));
                continue;
            }
            let cmd = executor_command(exec, 0, &opts)?;
            check_program(exec, &cmd, &opts)?;
            let (desired, _) = tokio::sync::watch::channel(0);
            execs.push(Arc::new(ExecRuntime {
                exec: exec.clone(),
                sets,
                desired,
                slots: Mutex::new(vec![]),
                next_id: std::sync::atomic::AtomicU64::new(0),
                failed: Mutex::new(None),
                logs: logs.clone(),
            }));
        }
        let (events, _) = tokio::sync::broadcast::channel(1024);
        Ok(LocalRuntime {
            opts: Arc::new(opts),
            execs,
            external,
            events,
            tasks: Mutex::new(vec![]),
            logs,
        })
    }

    fn find(&self, executor: &str) -> Option<&Arc<ExecRuntime>> {
        self.execs.iter().find(|e| e.exec.name == executor)
    }
}

#[async_trait::async_trait]
impl Runtime for LocalRuntime {
    /// Output of every replica (running or recently stopped) by replica id, for one Executor
    /// or, with None, for all.
    async fn logs(&self, executor: Option<&str>) -> BTreeMap<String, String> {
        self.logs.snapshot(executor)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    /// Per Executor, one replica set per shard, for the gateway.
    fn shards(&self) -> HashMap<String, Vec<Arc<ReplicaSet>>> {
        self.execs
            .iter()
            .map(|e| (e.exec.name.clone(), e.sets.clone()))
            .chain(self.external.iter().cloned())
            .collect()
    }

    /// Starts the reconcile loop of every Executor with its initial replica count.
    fn start(&self, initial: &InitialReplicas) {
        // The zygote imports jina now, so that a Python Executor's first wake-up (often from
        // zero, seconds after the Flow starts) finds it ready.
        if self.execs.iter().any(|e| e.exec.command.is_none()) {
            zygote_socket(&self.opts);
        }
        for e in &self.execs {
            e.desired.send_replace(initial(&e.exec));
            let task = tokio::spawn(reconcile_loop(
                e.clone(),
                self.opts.clone(),
                self.events.clone(),
            ));
            self.tasks.lock().push(task);
        }
    }

    /// Sets the replica count (per shard) of one Executor.
    fn scale(&self, executor: &str, desired: u32) {
        if let Some(e) = self.find(executor) {
            let from = *e.desired.borrow();
            if from != desired {
                e.desired.send_replace(desired);
                let _ = self.events.send(RuntimeEvent::Scaling {
                    executor: executor.into(),
                    from,
                    to: desired,
                });
            }
        }
    }

    fn desired(&self, executor: &str) -> u32 {
        self.find(executor).map_or(0, |e| *e.desired.borrow())
    }

    /// Replicas serving now (of the first shard; shards scale together).
    fn ready_replicas(&self, executor: &str) -> u32 {
        self.find(executor).map_or(0, |e| {
            e.slots
                .lock()
                .iter()
                .filter(|s| s.ready && s.shard == 0)
                .count() as u32
        })
    }

    fn replica_count(&self, executor: &str) -> u32 {
        self.find(executor)
            .map_or(0, |e| e.slots.lock().len() as u32)
    }

    fn failure(&self, executor: &str) -> Option<String> {
        self.find(executor).and_then(|e| e.failed.lock().clone())
    }

    /// Admin addresses (`/stats`) of the ready replicas, by Executor.
    fn stats_targets(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        for e in &self.execs {
            for s in e.slots.lock().iter() {
                if let (true, Some(a)) = (s.ready, &s.admin) {
                    out.push((e.exec.name.clone(), a.clone()));
                }
            }
        }
        out
    }

    /// Waits until each Executor has its desired replicas ready, or one failed.
    async fn wait_settled(&self, timeout: Duration) -> Result<(), String> {
        let mut events = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.execs.iter().find_map(|e| {
                e.failed
                    .lock()
                    .clone()
                    .map(|w| format!("Executor {}: {w}", e.exec.name))
            }) {
                return Err(e);
            }
            let settled = self.execs.iter().all(|e| {
                let want = *e.desired.borrow() as usize * e.sets.len();
                let slots = e.slots.lock();
                slots.iter().filter(|s| s.ready).count() == want && slots.len() == want
            });
            if settled {
                return Ok(());
            }
            tokio::select! {
                _ = events.recv() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(format!("replicas were not ready within {timeout:?}")),
            }
        }
    }

    /// Scales everything to zero and waits for every replica to drain and exit.
    async fn shutdown(&self, timeout: Duration) {
        for e in &self.execs {
            e.desired.send_replace(0);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.subscribe();
        while self.execs.iter().any(|e| !e.slots.lock().is_empty()) {
            tokio::select! {
                _ = events.recv() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("replicas still running after {timeout:?}; they are killed with jc");
                    break;
                }
            }
        }
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

async fn reconcile_loop(
    rt: Arc<ExecRuntime>,
    opts: Arc<LocalOptions>,
    events: tokio::sync::broadcast::Sender<RuntimeEvent>,
) {
    let mut desired_rx = rt.desired.subscribe();
    let (end_tx, mut end_rx) = tokio::sync::mpsc::unbounded_channel::<(String, ReplicaEnd)>();
    let mut failures: u32 = 0;
    let mut hold_until: Option<tokio::time::Instant> = None;
    loop {
        let desired = *desired_rx.borrow_and_update();
        let failed = rt.failed.lock().is_some();
        let holding = hold_until.is_some_and(|t| tokio::time::Instant::now() < t);
        {
            let mut slots = rt.slots.lock();
            for shard in 0..rt.exec.shards {
                let active: Vec<usize> = slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.shard == shard && s.stop.is_some())
                    .map(|(i, _)| i)
                    .collect();
                let have = active.len() as u32;
                if have < desired && !failed && !holding {
                    for _ in have..desired {
                        let n = rt
                            .next_id
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let id = if rt.exec.shards > 1 {
                            format!("{}-{shard}-{n}", rt.exec.name)
                        } else {
                            format!("{}-{n}", rt.exec.name)
                        };
                        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
                        slots.push(Slot {
                            id: id.clone(),
                            shard,
                            admin: None,
                            ready: false,
                            stop: Some(stop_tx),
                        });
                        let _ = events.send(RuntimeEvent::ReplicaStarting {
                            executor: rt.exec.name.clone(),
                            replica: id.clone(),
                        });
                        tokio::spawn(run_replica(
                            rt.clone(),
                            opts.clone(),
                            id,
                            shard,
                            stop_rx,
                            end_tx.clone(),
                            events.clone(),
                        ));
                    }
                } else if have > desired {
                    // Stop the ones still starting first, then the newest ready ones: the
                    // oldest replicas have warm caches.
                    let mut order = active.clone();
                    order.sort_by_key(|&i| (slots[i].ready, std::cmp::Reverse(i)));
                    for &i in order.iter().take((have - desired) as usize) {
                        if let Some(tx) = slots[i].stop.take() {
                            // Out of rotation first, so no new request goes to a draining replica.
                            rt.sets[shard as usize].remove_replica(&slots[i].id);
                            let _ = tx.send(());
                        }
                    }
                }
            }
        }
        let wake_at = hold_until.filter(|t| tokio::time::Instant::now() < *t);
        tokio::select! {
            r = desired_rx.changed() => { if r.is_err() { return; } }
            Some((id, end)) = end_rx.recv() => {
                let was_stopping = {
                    let mut slots = rt.slots.lock();
                    let pos = slots.iter().position(|s| s.id == id);
                    pos.map(|p| slots.remove(p).stop.is_none()).unwrap_or(true)
                };
                match end {
                    ReplicaEnd::Stopped => {
                        let _ = events.send(RuntimeEvent::ReplicaStopped { executor: rt.exec.name.clone(), replica: id });
                    }
                    ReplicaEnd::Crashed { output, ran } if !was_stopping || ran < Duration::from_secs(1) => {
                        if ran > Duration::from_secs(30) { failures = 0; }
                        failures += 1;
                        let _ = events.send(RuntimeEvent::ReplicaCrashed { executor: rt.exec.name.clone(), replica: id, output: output.clone() });
                        note_failure(&rt, &events, failures, output, &mut hold_until);
                    }
                    ReplicaEnd::Crashed { .. } => {
                        let _ = events.send(RuntimeEvent::ReplicaStopped { executor: rt.exec.name.clone(), replica: id });
                    }
                    ReplicaEnd::StartFailed(output) => {
                        failures += 1;
                        let _ = events.send(RuntimeEvent::ReplicaCrashed { executor: rt.exec.name.clone(), replica: id, output: output.clone() });
                        note_failure(&rt, &events, failures, output, &mut hold_until);
                    }
                }
            }
            _ = async { match wake_at { Some(t) => tokio::time::sleep_until(t).await, None => futures::future::pending().await } } => {}
        }
    }
}

fn note_failure(
    rt: &ExecRuntime,
    events: &tokio::sync::broadcast::Sender<RuntimeEvent>,
    failures: u32,
    output: String,
    hold_until: &mut Option<tokio::time::Instant>,
) {
    if failures >= MAX_FAILURES {
        let why = format!("its replicas failed {failures} times in a row. Last output:\n{output}");
        *rt.failed.lock() = Some(why.clone());
        for s in &rt.sets {
            s.set_failure(Some(why.clone()));
        }
        let _ = events.send(RuntimeEvent::ExecutorFailed {
            executor: rt.exec.name.clone(),
            why,
        });
    } else {
        // Back off before the replacement: 200 ms, 400 ms, 800 ms, ...
        let wait = Duration::from_millis(100u64 << failures.min(8));
        *hold_until = Some(tokio::time::Instant::now() + wait);
    }
}

async fn run_replica(
    rt: Arc<ExecRuntime>,
    opts: Arc<LocalOptions>,
    id: String,
    shard: u32,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    ended: tokio::sync::mpsc::UnboundedSender<(String, ReplicaEnd)>,
    events: tokio::sync::broadcast::Sender<RuntimeEvent>,
) {
    let started = tokio::time::Instant::now();
    let proc = tokio::select! {
        p = start_replica_logged(&rt.exec, &id, shard, &opts, Some(rt.logs.clone())) => p,
        // Dropping the half-started process kills its shim (kill_on_drop); the Executor
        // follows through its parent-death signal.
        _ = &mut stop => { let _ = ended.send((id, ReplicaEnd::Stopped)); return; }
    };
    let mut proc = match proc {
        Ok(p) => p,
        Err(e) => {
            let _ = ended.send((id, ReplicaEnd::StartFailed(e.to_string())));
            return;
        }
    };
    let set = &rt.sets[shard as usize];
    if let Err(e) = set.add_replica(&id, &proc.grpc_addr) {
        let _ = ended.send((id, ReplicaEnd::StartFailed(e.to_string())));
        return;
    }
    if set.endpoints().is_none() {
        // Learn the endpoints (for `/openapi.json` and routing) from the first replica that runs,
        // once the requests that woke it are answered: a Python Executor serves one call at a
        // time, and discovery first would add its time to the cold start (measured: ~10 ms).
        let set = set.clone();
        tokio::spawn(async move {
            set.quiet(Duration::from_secs(1)).await;
            if let Err(e) = set.discover().await {
                tracing::debug!(executor = %set.executor(), error = %e.message(), "endpoint discovery failed");
            }
        });
    }
    {
        let mut slots = rt.slots.lock();
        if let Some(s) = slots.iter_mut().find(|s| s.id == id) {
            s.ready = true;
            s.admin = Some(proc.admin_addr.clone());
        }
    }
    let ready_at = tokio::time::Instant::now();
    let _ = events.send(RuntimeEvent::ReplicaReady {
        executor: rt.exec.name.clone(),
        replica: id.clone(),
        startup_ms: ready_at.duration_since(started).as_millis() as u64,
    });
    let crashed = tokio::select! {
        _ = proc.wait() => true,
        _ = &mut stop => false,
    };
    set.remove_replica(&id);
    if crashed {
        let output = proc.output_tail();
        let _ = ended.send((
            id,
            ReplicaEnd::Crashed {
                output,
                ran: ready_at.elapsed(),
            },
        ));
    } else {
        proc.stop(opts.drain_timeout + Duration::from_secs(15))
            .await;
        let _ = ended.send((id, ReplicaEnd::Stopped));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(yaml: &str) -> zeroflow_spec::Flow {
        zeroflow_spec::load(yaml, &zeroflow_spec::Source::default())
            .expect("loads")
            .flow
    }

    fn opts(workspace: Option<&str>) -> LocalOptions {
        let mut o = LocalOptions::discover("/flows/f".into(), "/flows/f/work".into());
        o.jina = "jina".into();
        o.workspace = workspace.map(PathBuf::from);
        o
    }

    fn after<'a>(cmd: &'a [String], flag: &str) -> Option<&'a str> {
        let at = cmd.iter().position(|a| a == flag)?;
        cmd.get(at + 1).map(String::as_str)
    }

    #[test]
    fn each_shard_is_told_its_id_as_jina_tells_it() {
        let f = flow("jtype: Flow\nexecutors:\n  - name: a\n    shards: 3\n  - name: b\n");
        let cmd = executor_command(&f.executors[0], 2, &opts(None)).unwrap();
        assert_eq!(after(&cmd, "--shards"), Some("3"));
        assert_eq!(after(&cmd, "--shard-id"), Some("2"));
        // One shard: Jina's defaults (shard 0 of 1), so nothing is added.
        let cmd = executor_command(&f.executors[1], 0, &opts(None)).unwrap();
        assert_eq!(after(&cmd, "--shard-id"), None);
    }

    #[test]
    fn the_workspace_is_the_flows_else_the_servers() {
        let f = flow(
            "jtype: Flow\nwith:\n  workspace: ws\nexecutors:\n  - name: a\n  - name: b\n    workspace: /abs\n",
        );
        let no = f.executors.iter().map(|e| {
            let o = opts(None);
            after(&executor_command(e, 0, &o).unwrap(), "--workspace").map(str::to_string)
        });
        assert_eq!(
            no.collect::<Vec<_>>(),
            [Some("/flows/f/ws".to_string()), Some("/abs".to_string())],
            "`jc flow serve`: a relative workspace is the Flow folder's"
        );
        let server = f.executors.iter().map(|e| {
            let o = opts(Some("/data/flows/x/workspace"));
            after(&executor_command(e, 0, &o).unwrap(), "--workspace").map(str::to_string)
        });
        assert_eq!(
            server.collect::<Vec<_>>(),
            [
                Some("/data/flows/x/workspace/ws".to_string()),
                Some("/abs".to_string())
            ],
            "`jc server`: under the Flow's own data folder"
        );
        let none = flow("jtype: Flow\nexecutors:\n  - name: a\n");
        let cmd = executor_command(
            &none.executors[0],
            0,
            &opts(Some("/data/flows/x/workspace")),
        )
        .unwrap();
        assert_eq!(after(&cmd, "--workspace"), Some("/data/flows/x/workspace"));
        let cmd = executor_command(&none.executors[0], 0, &opts(None)).unwrap();
        assert_eq!(after(&cmd, "--workspace"), None, "Jina's default");
    }
}
