//! Starting, watching and stopping the Executor process. The child runs in its own process group
//! because `jina executor` without `--native` is a parent plus a server child, and a signal to the
//! parent alone orphans a child that keeps serving. A `jina executor` may instead be forked by the
//! local runtime's zygote (a Python process that has imported jina once): the shim still sees its
//! output, signals its group and learns its exit, through the zygote's connection.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TAIL_LINES: usize = 40;

/// The last lines the child wrote to stderr, for error reports.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: String) {
        let mut q = self.0.lock();
        if q.len() == TAIL_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }

    pub fn text(&self) -> String {
        self.0.lock().iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

pub struct Child {
    inner: Proc,
    pgid: nix::unistd::Pid,
    pub tail: StderrTail,
    /// The task copying the child's stderr into `tail`.
    reader: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("no Executor command given")]
    NoCommand,
    // `why` rather than a `source`: the shim prints the error with its chain, which would
    // repeat the cause.
    #[error("cannot start `{program}`: {why}")]
    Spawn {
        program: String,
        why: std::io::Error,
    },
}

/// The Executor process: our own child, or one the zygote forked (it reports the exit).
enum Proc {
    Spawned(tokio::process::Child),
    Forked(tokio::sync::watch::Receiver<Option<ExitStatus>>),
}

impl Proc {
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Proc::Spawned(c) => c.wait().await,
            Proc::Forked(rx) => {
                // A watch, so that a wait dropped by a select loses nothing.
                let status = rx
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| std::io::Error::other("the zygote's report was lost"))?;
                Ok(status.expect("waited for Some"))
            }
        }
    }
}

/// Where the Executor starts and what it gets on top of the shim's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    /// Its working folder (a fetched project); None: the shim's own.
    pub cwd: Option<std::path::PathBuf>,
    /// More environment (`PYTHONPATH` with a project's requirements).
    pub env: Vec<(String, String)>,
}

/// The environment of the Executor process besides the shim's own.
fn child_env(port: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("ZEROFLOW_EXECUTOR_PORT".to_string(), port.to_string()),
        ("JINA_OPTOUT_TELEMETRY".into(), "1".into()),
    ];
    // The replica's output is a log read through pipes (and kept per replica): no ANSI colours,
    // and no 40-line Jina logo at every cold start.
    if std::env::var_os("JINA_LOG_NO_COLOR").is_none() {
        env.push(("JINA_LOG_NO_COLOR".into(), "1".into()));
    }
    env
}

/// Copies the child's stderr into `tail` (and the shim's stderr, tagged with the replica).
fn read_stderr(
    stderr: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    tail: StderrTail,
    name: &str,
) -> tokio::task::JoinHandle<()> {
    let name = name.to_string();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // Keep the Executor's own log visible, tagged with the replica.
            eprintln!("[{name}] {line}");
            tail.push(line);
        }
    })
}

impl Child {
    /// Starts `argv` with `{port}` in any argument replaced by `port`; the port is also in the
    /// environment as `ZEROFLOW_EXECUTOR_PORT`.
    pub fn spawn(
        argv: &[String],
        port: u16,
        name: &str,
        launch: &Launch,
    ) -> Result<Self, ChildError> {
        let (program, args) = argv.split_first().ok_or(ChildError::NoCommand)?;
        let port_s = port.to_string();
        let mut cmd = Command::new(program);
        if let Some(dir) = &launch.cwd {
            cmd.current_dir(dir);
        }
        cmd.args(args.iter().map(|a| a.replace("{port}", &port_s)))
            .envs(child_env(&port_s))
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            // The token fetched the project; the Executor has no use for it.
            .env_remove(crate::project::ARTIFACT_TOKEN_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        set_parent_death_signal(&mut cmd);
        let mut inner = cmd.spawn().map_err(|why| ChildError::Spawn {
            program: program.clone(),
            why,
        })?;
        let pid = inner.id().map(|p| p as i32).unwrap_or_default();
        let tail = StderrTail::default();
        let reader = inner
            .stderr
            .take()
            .map(|stderr| read_stderr(stderr, tail.clone(), name));
        Ok(Child {
            inner: Proc::Spawned(inner),
            pgid: nix::unistd::Pid::from_raw(pid),
            tail,
            reader,
        })
    }

    /// Has the zygote listening at `socket` fork `argv` (a `jina executor` command) as
    /// [`Child::spawn`] would start it: same arguments, environment, folder and output. Errors
    /// say why, and the caller starts the command itself instead.
    pub async fn fork_from_zygote(
        socket: &std::path::Path,
        argv: &[String],
        port: u16,
        name: &str,
        launch: &Launch,
    ) -> std::io::Result<Self> {
        use std::io::Write;
        use std::os::fd::AsFd;
        if argv.is_empty() {
            return Err(std::io::Error::other("no Executor command given"));
        }
        let port_s = port.to_string();
        let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
        env.extend(child_env(&port_s));
        env.extend(launch.env.iter().cloned());
        env.remove(crate::project::ARTIFACT_TOKEN_ENV);
        let cwd = match &launch.cwd {
            Some(d) => d.clone(),
            None => std::env::current_dir()?,
        };
        let request = serde_json::json!({
            "argv": argv.iter().map(|a| a.replace("{port}", &port_s)).collect::<Vec<_>>(),
            "env": env,
            "cwd": cwd,
        });
        let body = serde_json::to_vec(&request)?;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);

        // The zygote binds its socket as it starts: a replica started with it waits a moment.
        let mut conn = None;
        for _ in 0..40 {
            match std::os::unix::net::UnixStream::connect(socket) {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(e) => return Err(e),
            }
        }
        let mut conn = conn.ok_or_else(|| {
            std::io::Error::other(format!("no zygote listens at {}", socket.display()))
        })?;
        let devnull = std::fs::File::open("/dev/null")?;
        let (err_r, err_w) = std::io::pipe()?;
        let stdout = std::io::stdout();
        let fds = {
            use std::os::fd::AsRawFd;
            [
                devnull.as_raw_fd(),
                stdout.as_fd().as_raw_fd(),
                err_w.as_raw_fd(),
            ]
        };
        // The descriptors travel with the first bytes; the rest of a long request follows.
        let sent = nix::sys::socket::sendmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            &[std::io::IoSlice::new(&frame)],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .map_err(std::io::Error::from)?;
        conn.write_all(&frame[sent..])?;
        // Only the child holds the write end now: its exit is the pipe's end.
        drop(err_w);
        drop(devnull);

        // The answer (the pid) comes at once, or after the zygote's import if it just started.
        conn.set_nonblocking(true)?;
        let mut lines = BufReader::new(tokio::net::UnixStream::from_std(conn)?).lines();
        let answer: serde_json::Value =
            match tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await {
                Ok(Ok(Some(line))) => serde_json::from_str(&line).map_err(std::io::Error::other)?,
                _ => return Err(std::io::Error::other("the zygote did not answer")),
            };
        let Some(pid) = answer["pid"].as_i64() else {
            // A refusal is the zygote working as meant (this replica needs a fresh interpreter),
            // told apart from failures by its kind.
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!(
                    "the zygote refused: {}",
                    answer["error"].as_str().unwrap_or("no reason given")
                ),
            ));
        };
        let (tx, rx) = tokio::sync::watch::channel(None);
        // The connection is the child's lifeline: it stays open until the exit is reported
        // (the zygote kills the child if the shim goes away first).
        tokio::spawn(async move {
            let status = match lines.next_line().await {
                Ok(Some(l)) => serde_json::from_str::<serde_json::Value>(&l)
                    .ok()
                    .and_then(|v| v["status"].as_i64()),
                _ => None,
            };
            // No report: the zygote died, and its children with it (parent-death signal).
            let raw = status.unwrap_or(killed_by_sigkill()) as i32;
            let _ = tx.send(Some(std::os::unix::process::ExitStatusExt::from_raw(raw)));
        });
        let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(err_r.into())?;
        let tail = StderrTail::default();
        let reader = Some(read_stderr(stderr, tail.clone(), name));
        Ok(Child {
            inner: Proc::Forked(rx),
            pgid: nix::unistd::Pid::from_raw(pid as i32),
            tail,
            reader,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Resolves when the child exits and its last stderr lines are in `tail`: the exit can be
    /// seen before the pipe's last bytes are read, and those lines usually say why it died.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.inner.wait().await?;
        if let Some(reader) = self.reader.take() {
            // A grandchild may hold the pipe open after the child is gone: don't wait for it.
            let _ = tokio::time::timeout(Duration::from_millis(500), reader).await;
        }
        Ok(status)
    }

    /// SIGTERM to the whole group, then SIGKILL after `grace`. Returns the child's exit status.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        use nix::sys::signal::{Signal, killpg};
        let _ = killpg(self.pgid, Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.inner.wait()).await {
            Ok(s) => s.ok(),
            Err(_) => {
                tracing::warn!(
                    pid = self.pid(),
                    "executor ignored SIGTERM; killing its group"
                );
                let _ = killpg(self.pgid, Signal::SIGKILL);
                self.inner.wait().await.ok()
            }
        };
        // The group leader is gone; grandchildren it left behind still share the group.
        let _ = killpg(self.pgid, Signal::SIGKILL);
        status
    }
}

/// The raw wait status of a process killed by SIGKILL.
fn killed_by_sigkill() -> i64 {
    nix::sys::signal::Signal::SIGKILL as i64
}

/// Ask the kernel to SIGKILL the child if the shim dies without cleaning up (e.g. SIGKILL), so
/// no Executor outlives its shim.
#[allow(unsafe_code)]
pub fn set_parent_death_signal(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}
