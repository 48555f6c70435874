//! One replica as a process: the `zeroflow-shim` that wraps the Executor's command, started
//! with the replica's environment, its output copied to the terminal, a tail (for errors) and
//! the [`LogBook`], and its readiness learnt from the shim's [`ReadyLine`] the moment it serves.
//! It must not decide how many replicas run, nor retry a failed start: the reconcile loop does.

use super::command::{executor_command, workspace};
use super::{LocalOptions, RuntimeError};
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zeroflow_contract::{ReadyLine, ReadyLineError};
use zeroflow_spec::Executor;

/// Output lines kept per replica for its error messages.
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
    cmd.write_files().map_err(|e| RuntimeError::Spawn {
        executor: exec.name.clone(),
        replica: replica_id.into(),
        source: e,
    })?;
    let mut shim = Command::new(&opts.shim);
    if exec.command.is_none()
        && let Some(socket) = opts.zygotes.as_ref().and_then(|z| z.socket(opts))
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
        .args(&cmd.argv)
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
    let (ready_tx, ready_rx) =
        tokio::sync::oneshot::channel::<(String, Result<ReadyLine, ReadyLineError>)>();
    {
        let tail = tail.clone();
        let (executor, replica) = (exec.name.clone(), replica_id.to_string());
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if ReadyLine::claims(&line)
                    && let Some(tx) = ready_tx.take()
                {
                    let parsed = line.parse();
                    let _ = tx.send((line, parsed));
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
            Ok((_, Ok(ready))) => Some(ready),
            Ok((line, Err(why))) => {
                let _ = child.kill().await;
                return Err(RuntimeError::BadReadyLine { executor: exec.name.clone(), replica: replica_id.into(), line, why });
            }
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
    let Some(ready) = ready else {
        let _ = child.kill().await;
        return Err(RuntimeError::Timeout {
            executor: exec.name.clone(),
            replica: replica_id.into(),
            timeout: opts.startup_timeout,
            tail: text(&tail),
        });
    };
    Ok(ReplicaProcess {
        executor: exec.name.clone(),
        id: replica_id.into(),
        grpc_addr: ready.grpc,
        admin_addr: ready.admin,
        child,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A folder with a stand-in `zeroflow-shim` that runs `script` (sh): what is tested is how
    /// the runtime reads a shim's output, whatever the shim wraps.
    fn fake_shim(name: &str, script: &str) -> (PathBuf, LocalOptions, Executor) {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("zf-process-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shim = dir.join("zeroflow-shim");
        std::fs::write(&shim, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut opts = LocalOptions::discover(dir.clone(), dir.join("work"));
        opts.shim = shim;
        let exec = zeroflow_spec::load(
            "jtype: Flow\nexecutors:\n  - name: a\n    command: [true]\n",
            &zeroflow_spec::Source::default(),
        )
        .expect("loads")
        .flow
        .executors
        .remove(0);
        (dir, opts, exec)
    }

    #[tokio::test]
    async fn the_ready_line_gives_the_replicas_addresses_and_is_not_output() {
        let (dir, opts, exec) = fake_shim(
            "ready",
            "echo loading; echo 'ZEROFLOW_READY grpc=127.0.0.1:5 admin=127.0.0.1:6 startup_ms=7'; \
             echo serving; exec sleep 600",
        );
        let logs = LogBook::default();
        let p = start_replica_logged(&exec, "a-0", 0, &opts, Some(logs.clone()))
            .await
            .expect("ready");
        assert_eq!(
            (p.grpc_addr.as_str(), p.admin_addr.as_str()),
            ("127.0.0.1:5", "127.0.0.1:6")
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !logs
            .snapshot(Some("a"))
            .get("a-0")
            .is_some_and(|t| t.contains("serving"))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                logs.snapshot(None)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = &logs.snapshot(Some("a"))["a-0"];
        assert_eq!(text, "loading\nserving");
        p.stop(Duration::from_secs(30)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_malformed_ready_line_fails_the_start_naming_the_line() {
        let (dir, opts, exec) = fake_shim(
            "bad",
            "echo 'ZEROFLOW_READY grpc=127.0.0.1:5 startup_ms=7'; exec sleep 600",
        );
        let e = start_replica(&exec, "a-0", 0, &opts)
            .await
            .err()
            .expect("a failed start");
        let text = e.to_string();
        assert!(matches!(e, RuntimeError::BadReadyLine { .. }), "{text}");
        assert!(
            text.contains("no admin= field") && text.contains("grpc=127.0.0.1:5"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_shim_that_exits_before_ready_fails_with_its_status_and_output() {
        let (dir, opts, exec) = fake_shim("exits", "echo 'no module named x' >&2; exit 3");
        let e = start_replica(&exec, "a-0", 0, &opts)
            .await
            .err()
            .expect("a failed start");
        let text = e.to_string();
        assert!(matches!(e, RuntimeError::Failed { .. }), "{text}");
        assert!(
            text.contains("exit status: 3") && text.contains("no module named x"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shim_that_never_says_ready_times_out() {
        let (dir, mut opts, exec) = fake_shim("silent", "exec sleep 600");
        opts.startup_timeout = Duration::from_secs(1);
        let e = start_replica(&exec, "a-0", 0, &opts)
            .await
            .err()
            .expect("a failed start");
        assert!(matches!(e, RuntimeError::Timeout { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
