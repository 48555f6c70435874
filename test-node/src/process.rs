//! A container's process: started in its own process group (the group stands in for the
//! container, so stopping it reaches every process the container started), its output captured
//! to the run's log file, and the groups this agent runs recorded (in memory and as files under
//! `procs/`, so `scripts/test-cluster.sh down` can clean up even after the agent was killed).
//! It must not decide when to start or stop: the pod worker does.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use parking_lot::Mutex;

use crate::Ctx;
use crate::env::Env;

/// The process groups this agent runs.
pub struct Procs {
    dir: PathBuf,
    /// The live groups; None once the agent is stopping, when nothing new may start (a
    /// container stopped by `kill_all` must not be restarted by its pod worker).
    live: Mutex<Option<HashSet<i32>>>,
}

impl Procs {
    pub fn new(dir: PathBuf) -> Result<Procs> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Procs {
            dir,
            live: Mutex::new(Some(HashSet::new())),
        })
    }

    /// Records a new group; false when the agent is stopping.
    fn add(&self, pgid: i32) -> bool {
        let mut live = self.live.lock();
        let Some(live) = live.as_mut() else {
            return false;
        };
        live.insert(pgid);
        let _ = std::fs::write(self.dir.join(pgid.to_string()), b"");
        true
    }

    fn remove(&self, pgid: i32) {
        if let Some(live) = self.live.lock().as_mut() {
            live.remove(&pgid);
        }
        let _ = std::fs::remove_file(self.dir.join(pgid.to_string()));
    }

    /// Stops every process group: SIGTERM, then SIGKILL to what is left after `grace`.
    pub async fn kill_all(&self, grace: Duration) {
        let groups: Vec<i32> = self.live.lock().take().into_iter().flatten().collect();
        if groups.is_empty() {
            return;
        }
        tracing::info!(groups = groups.len(), "stopping all containers");
        for &g in &groups {
            let _ = killpg(Pid::from_raw(g), Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline
            && groups
                .iter()
                .any(|&g| killpg(Pid::from_raw(g), None).is_ok())
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for &g in &groups {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
            let _ = std::fs::remove_file(self.dir.join(g.to_string()));
        }
    }
}

/// A running container process.
pub struct Proc {
    pub child: tokio::process::Child,
    pub pgid: i32,
    logs: tokio::task::JoinHandle<()>,
}

/// Starts `argv` (its program looked up on the agent's own PATH) with exactly `env`, in `cwd`,
/// in a new process group, its output going to `log_dir/<run>.log`.
pub async fn spawn(
    ctx: &Ctx,
    argv: &[String],
    env: &Env,
    cwd: &Path,
    log_dir: &Path,
    run: i32,
) -> Result<Proc> {
    let program = crate::env::find_program(&argv[0], &std::env::var("PATH").unwrap_or_default())?;
    let mut child = tokio::process::Command::new(&program)
        .arg0(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(env.vars().iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let pgid = child.id().context("the process has no pid")? as i32;
    if !ctx.procs.add(pgid) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let _ = child.wait().await;
        anyhow::bail!("the node agent is stopping");
    }
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let logs = match (out, err) {
        (Some(out), Some(err)) => {
            crate::logs::capture(&ctx.active_logs, log_dir, run, out, err).await
        }
        _ => Err(anyhow::anyhow!("no output pipes")),
    };
    let logs = match logs {
        Ok(l) => l,
        Err(e) => {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            let _ = child.wait().await;
            ctx.procs.remove(pgid);
            return Err(e);
        }
    };
    Ok(Proc { child, pgid, logs })
}

impl Proc {
    /// SIGTERM to the group; SIGKILL if the process has not exited after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
                self.child.wait().await
            }
        }
    }

    /// After the main process exited: kills what is left of its group (a container ends with
    /// its first process) and waits for the last output to reach the log.
    pub async fn reap(self, ctx: &Ctx) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        let mut logs = self.logs;
        if tokio::time::timeout(Duration::from_secs(2), &mut logs)
            .await
            .is_err()
        {
            // Something outside the group still holds the pipes.
            logs.abort();
        }
        ctx.procs.remove(self.pgid);
    }
}
