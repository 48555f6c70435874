//! Starting, watching and stopping the Executor process. The child runs in its own process group
//! because `jina executor` without `--native` is a parent plus a server child, and a signal to the
//! parent alone orphans a child that keeps serving.

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
    inner: tokio::process::Child,
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

impl Child {
    /// Starts `argv` with `{port}` in any argument replaced by `port`; the port is also in the
    /// environment as `ZEROFLOW_EXECUTOR_PORT`.
    pub fn spawn(argv: &[String], port: u16, name: &str) -> Result<Self, ChildError> {
        let (program, args) = argv.split_first().ok_or(ChildError::NoCommand)?;
        let port_s = port.to_string();
        let mut cmd = Command::new(program);
        cmd.args(args.iter().map(|a| a.replace("{port}", &port_s)))
            .env("ZEROFLOW_EXECUTOR_PORT", &port_s)
            .env("JINA_OPTOUT_TELEMETRY", "1");
        // The replica's output is a log read through pipes (and kept per replica): no ANSI
        // colours, and no 40-line Jina logo at every cold start.
        if std::env::var_os("JINA_LOG_NO_COLOR").is_none() {
            cmd.env("JINA_LOG_NO_COLOR", "1");
        }
        cmd.stdin(Stdio::null())
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
        let reader = inner.stderr.take().map(|stderr| {
            let tail = tail.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    // Keep the Executor's own log visible, tagged with the replica.
                    eprintln!("[{name}] {line}");
                    tail.push(line);
                }
            })
        });
        Ok(Child {
            inner,
            pgid: nix::unistd::Pid::from_raw(pid),
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
