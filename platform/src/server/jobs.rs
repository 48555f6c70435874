//! Jobs: one-off commands beside a Flow (`POST /jobs`). The container image cannot run on this
//! machine, so the job's `entrypoint` runs as a local command in the Flow's folder, with its
//! secrets as env vars, retried up to `backoffLimit` times within `timeout` seconds overall, as
//! a Kubernetes Job would. Output is kept (bounded) and the status follows Kubernetes' shape.

use super::names;
use super::store::{JobRecord, Store};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Output kept per job.
const MAX_LOG: usize = 1 << 20;

/// A validated job request.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    pub flow_id: String,
    pub image: String,
    pub entrypoint: Vec<String>,
    pub timeout: Duration,
    pub backoff_limit: u32,
    /// env var -> (secret, key), resolved by the caller into `env`.
    pub env: BTreeMap<String, String>,
}

struct Live {
    logs: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

/// The jobs running now (finished ones live only in the store).
#[derive(Default)]
pub struct Jobs {
    live: Mutex<HashMap<(String, String), Live>>,
}

fn condition(kind: &str, reason: &str, message: &str) -> serde_json::Value {
    let now = names::now_iso();
    json!({
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    })
}

/// The status of a job that has just started.
pub fn initial_status() -> serde_json::Value {
    json!({
        "startTime": names::now_iso(),
        "completionTime": null,
        "active": 1,
        "succeeded": 0,
        "failed": 0,
        "conditions": [condition("Running", "Started", "the job is running")],
    })
}

fn append(logs: &Mutex<String>, line: &str) {
    let mut l = logs.lock();
    if l.len() + line.len() + 1 > MAX_LOG {
        // Drop the oldest half: the end of the output says why a job failed.
        let cut = l.len() / 2;
        let cut = (cut..l.len())
            .find(|&i| l.is_char_boundary(i))
            .unwrap_or(l.len());
        l.replace_range(..cut, "[...]\n");
    }
    l.push_str(line);
    l.push('\n');
}

impl Jobs {
    /// Live output of a running job.
    pub fn live_logs(&self, flow_id: &str, name: &str) -> Option<String> {
        self.live
            .lock()
            .get(&(flow_id.to_string(), name.to_string()))
            .map(|l| l.logs.lock().clone())
    }

    pub fn cancel(&self, flow_id: &str, name: &str) {
        if let Some(l) = self
            .live
            .lock()
            .remove(&(flow_id.to_string(), name.to_string()))
        {
            l.task.abort();
        }
    }

    pub fn cancel_flow(&self, flow_id: &str) {
        self.live.lock().retain(|(f, _), l| {
            if f == flow_id {
                l.task.abort();
                false
            } else {
                true
            }
        });
    }

    pub fn cancel_all(&self) {
        for (_, l) in self.live.lock().drain() {
            l.task.abort();
        }
    }

    /// Runs `spec` in `dir` in the background, recording its status and output in `store`.
    pub fn start(self: &Arc<Self>, store: Arc<Store>, spec: JobSpec, dir: PathBuf) {
        let logs = Arc::new(Mutex::new(String::new()));
        let key = (spec.flow_id.clone(), spec.name.clone());
        let this = self.clone();
        let task_logs = logs.clone();
        let task = tokio::spawn(async move {
            let logs = task_logs;
            let (ok, reason, message, attempts) = run(&spec, &dir, &logs).await;
            let record = store.get_job(&spec.flow_id, &spec.name).ok().flatten();
            if let Some(JobRecord { mut status, .. }) = record {
                let kind = if ok { "Complete" } else { "Failed" };
                if let Some(c) = status.get_mut("conditions").and_then(|c| c.as_array_mut()) {
                    c.push(condition(kind, reason, &message));
                }
                status["active"] = json!(0);
                status["succeeded"] = json!(u32::from(ok));
                status["failed"] = json!(if ok { attempts - 1 } else { attempts });
                status["completionTime"] = if ok {
                    json!(names::now_iso())
                } else {
                    json!(null)
                };
                let text = logs.lock().clone();
                if let Err(e) = store.update_job(&spec.flow_id, &spec.name, &status, &text) {
                    tracing::error!(job = %spec.name, error = %e, "cannot record the job's end");
                }
            }
            this.live
                .lock()
                .remove(&(spec.flow_id.clone(), spec.name.clone()));
        });
        self.live.lock().insert(key, Live { logs, task });
    }
}

/// Runs the attempts; returns (succeeded, reason, message, attempts made).
async fn run(
    spec: &JobSpec,
    dir: &std::path::Path,
    logs: &Mutex<String>,
) -> (bool, &'static str, String, u32) {
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut attempts = 0;
    loop {
        attempts += 1;
        append(
            logs,
            &format!("--- attempt {attempts}: {}", spec.entrypoint.join(" ")),
        );
        let mut cmd = tokio::process::Command::new(&spec.entrypoint[0]);
        cmd.args(&spec.entrypoint[1..])
            .current_dir(dir)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let outcome = match cmd.spawn() {
            Err(e) => Err(format!("cannot run {:?}: {e}", spec.entrypoint[0])),
            Ok(mut child) => {
                let out = child.stdout.take();
                let err = child.stderr.take();
                let read = async {
                    let a = async {
                        if let Some(o) = out {
                            let mut lines = BufReader::new(o).lines();
                            while let Ok(Some(l)) = lines.next_line().await {
                                append(logs, &l);
                            }
                        }
                    };
                    let b = async {
                        if let Some(o) = err {
                            let mut lines = BufReader::new(o).lines();
                            while let Ok(Some(l)) = lines.next_line().await {
                                append(logs, &l);
                            }
                        }
                    };
                    futures::join!(a, b);
                    child.wait().await
                };
                match tokio::time::timeout_at(deadline, read).await {
                    Err(_) => {
                        append(logs, &format!("--- timed out after {:?}", spec.timeout));
                        return (
                            false,
                            "DeadlineExceeded",
                            format!("the job did not finish within {:?}", spec.timeout),
                            attempts,
                        );
                    }
                    Ok(Ok(s)) if s.success() => Ok(()),
                    Ok(Ok(s)) => Err(format!("the command exited with {s}")),
                    Ok(Err(e)) => Err(format!("waiting for the command failed: {e}")),
                }
            }
        };
        match outcome {
            Ok(()) => {
                return (
                    true,
                    "Completed",
                    "the job finished successfully".into(),
                    attempts,
                );
            }
            Err(why) => {
                append(logs, &format!("--- {why}"));
                if attempts > spec.backoff_limit {
                    return (
                        false,
                        "BackoffLimitExceeded",
                        format!("{attempts} attempt(s) failed; the last: {why}"),
                        attempts,
                    );
                }
                // Kubernetes backs off exponentially between attempts; shorter here.
                let wait = Duration::from_millis(500u64 << attempts.min(5));
                if tokio::time::timeout_at(deadline, tokio::time::sleep(wait))
                    .await
                    .is_err()
                {
                    return (
                        false,
                        "DeadlineExceeded",
                        format!("the job did not finish within {:?}", spec.timeout),
                        attempts,
                    );
                }
            }
        }
    }
}

/// Jobs still marked running in the store when the server starts have lost their process:
/// they are marked failed, saying so.
pub fn fail_orphans(store: &Store) {
    let Ok(jobs) = store.list_jobs(None) else {
        return;
    };
    for j in jobs {
        let running = j
            .status
            .get("conditions")
            .and_then(|c| c.as_array())
            .and_then(|c| c.last())
            .and_then(|c| c.get("type"))
            .and_then(|t| t.as_str())
            == Some("Running");
        if running {
            let mut status = j.status.clone();
            if let Some(c) = status.get_mut("conditions").and_then(|c| c.as_array_mut()) {
                c.push(condition(
                    "Failed",
                    "ServerRestarted",
                    "the server stopped while the job ran",
                ));
            }
            status["active"] = json!(0);
            let _ = store.update_job(&j.flow_id, &j.name, &status, &j.logs);
        }
    }
}
