//! The runtime boundary: what runs one Flow's Executors, seen through one trait. The local backend
//! (replicas as executor-shim child processes on this machine, `crate::local`) and the Kubernetes
//! backend (the gateway pod's view of Executor Deployments, `crate::kube::runtime`) implement it;
//! the control plane, `jc flow serve`, the gateway wiring and the autoscaler's `Scaler` see only
//! this trait. It must not decide scaling (the autoscaler does) nor serve requests (the gateway
//! and the activator do).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use zeroflow_activator::ReplicaSet;
use zeroflow_spec::Executor;

/// How many replicas an Executor starts with, given its spec.
pub type InitialReplicas = dyn Fn(&Executor) -> u32 + Send + Sync;

/// One Flow's Executors, wherever they run.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Per Executor, one replica set per shard: what the gateway's activator sends calls to. The
    /// runtime keeps each set's ready replicas up to date.
    fn shards(&self) -> HashMap<String, Vec<Arc<ReplicaSet>>>;

    /// Starts every Executor at `initial(executor)` replicas (per shard). Returns at once; see
    /// [`Runtime::wait_settled`].
    fn start(&self, initial: &InitialReplicas);

    /// Sets the replica count (per shard) of one Executor. Returns at once; the runtime converges
    /// in the background and reports what it does as [`RuntimeEvent`]s.
    fn scale(&self, executor: &str, desired: u32);

    /// The replica count last asked for.
    fn desired(&self, executor: &str) -> u32;

    /// Replicas serving now (of the first shard; shards scale together).
    fn ready_replicas(&self, executor: &str) -> u32;

    /// Replicas that exist now in any state (starting, ready or draining), over all shards: zero
    /// once a scale to zero has finished, which a restart waits for.
    fn replica_count(&self, executor: &str) -> u32;

    /// Why the Executor cannot run, once the runtime has given up on it.
    fn failure(&self, executor: &str) -> Option<String>;

    /// `(executor, admin address)` of every ready replica: where its shim serves `/stats`.
    fn stats_targets(&self) -> Vec<(String, String)>;

    /// Recent output of every replica by replica name, for one Executor or, with None, all.
    async fn logs(&self, executor: Option<&str>) -> BTreeMap<String, String>;

    /// What the runtime does, as it does it.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent>;

    /// Waits until each Executor has its desired replicas ready, or one failed (the error says
    /// which and why).
    async fn wait_settled(&self, timeout: Duration) -> Result<(), String>;

    /// Stops what this runtime started (locally: drains and stops every replica; on Kubernetes:
    /// only the runtime's own watches, the cluster's objects stay), waiting at most `timeout`.
    async fn shutdown(&self, timeout: Duration);
}

/// What a runtime reports as it works, for `jc` to print, the control plane's event log, and
/// tests to wait on.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeEvent {
    Scaling {
        executor: String,
        from: u32,
        to: u32,
    },
    ReplicaStarting {
        executor: String,
        replica: String,
    },
    ReplicaReady {
        executor: String,
        replica: String,
        startup_ms: u64,
    },
    ReplicaStopped {
        executor: String,
        replica: String,
    },
    ReplicaCrashed {
        executor: String,
        replica: String,
        output: String,
    },
    ExecutorFailed {
        executor: String,
        why: String,
    },
}

impl std::fmt::Display for RuntimeEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeEvent::Scaling { executor, from, to } => {
                write!(f, "{executor}: scaling {from} -> {to} replica(s)")
            }
            RuntimeEvent::ReplicaStarting { executor, replica } => {
                write!(f, "{executor}: starting replica {replica}")
            }
            RuntimeEvent::ReplicaReady {
                executor,
                replica,
                startup_ms,
            } => {
                write!(f, "{executor}: replica {replica} ready in {startup_ms} ms")
            }
            RuntimeEvent::ReplicaStopped { executor, replica } => {
                write!(f, "{executor}: replica {replica} stopped")
            }
            RuntimeEvent::ReplicaCrashed {
                executor,
                replica,
                output,
            } => {
                let last = output.lines().last().unwrap_or("");
                write!(f, "{executor}: replica {replica} crashed: {last}")
            }
            RuntimeEvent::ExecutorFailed { executor, why } => {
                write!(f, "{executor}: FAILED: {why}")
            }
        }
    }
}
