//! The normalized Flow: what the rest of Zeroflow consumes after parsing, defaulting and
//! validation. Every field here has its default applied; nothing downstream re-derives them.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A normalized Flow (a Deployment YAML is normalized into a Flow with one Executor and no
/// gateway graph beyond it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flow {
    /// `jcloud.name`, else None.
    pub name: Option<String>,
    /// The gateway's arguments (`with:` merged with the `gateway:` section).
    pub gateway: Gateway,
    /// Executors in declaration order.
    pub executors: Vec<Executor>,
    /// `jcloud:` at the top level.
    pub jcloud: FlowJcloud,
    /// Environment shared by all Executors (`with.env`), after substitution.
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Grpc,
    Http,
    Websocket,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gateway {
    /// One entry per protocol; `port` is None when the YAML gave none (the runtime picks one).
    pub listeners: Vec<Listener>,
    /// `prefetch`: the most requests one client stream may have in flight; 0 = unlimited.
    /// Jina's default is 1000.
    pub prefetch: u32,
    /// `timeout_send` in milliseconds for each Executor call; None = no timeout.
    pub timeout_send: Option<Duration>,
    /// `jcloud.timeout` of the gateway section (idle timeout), default 600 s.
    pub idle_timeout: Duration,
    pub expose: bool,
    pub host: Option<String>,
    pub cors: bool,
    pub title: Option<String>,
    pub description: Option<String>,
    /// `gateway.jcloud.resources` (storage does not apply to the gateway).
    pub resources: Resources,
    /// `gateway.jcloud.labels`.
    pub labels: BTreeMap<String, String>,
    /// `gateway.jcloud.monitor.traces.enable`.
    pub traces: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    pub protocol: Protocol,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Polling {
    Any,
    All,
}

/// What runs for one Executor.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Uses {
    /// `uses:` omitted or null: a pass-through Executor.
    PassThrough,
    /// A Python class name known to jina (`uses: MyExecutor`), run with `py_modules`.
    Class { name: String },
    /// A Jina Executor config YAML path, as written (relative to the Flow file).
    Config { path: String },
    /// An inline mapping (`uses: {jtype: X, with: ..., py_modules: ...}`), kept as JSON.
    Inline { config: serde_json::Value },
    /// `docker://image`
    Docker { image: String },
    /// `jinaai://`, `jinaai+docker://`, `jinaai+serverless://`, `jinahub://`, `jinahub+docker://`...
    Hub { scheme: String, reference: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Executor {
    pub name: String,
    pub uses: Uses,
    pub uses_with: serde_json::Map<String, serde_json::Value>,
    pub uses_metas: serde_json::Map<String, serde_json::Value>,
    pub uses_requests: serde_json::Map<String, serde_json::Value>,
    pub py_modules: Vec<String>,
    /// `workspace` (the Executor's own, else the Flow's `with.workspace`), as written: Jina
    /// passes it to the Executor, whose state goes under `WORKSPACE/NAME[/SHARD]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Secrets to expose as env vars: env var name -> (secret name, key).
    pub env_from_secret: BTreeMap<String, SecretRef>,
    pub replicas: u32,
    pub shards: u32,
    pub polling: Polling,
    /// Predecessors; `["gateway"]` for the first Executor and for `needs: gateway`.
    pub needs: Vec<String>,
    /// `when:` condition, kept as JSON for the gateway to evaluate.
    pub when: Option<serde_json::Value>,
    pub no_reduce: bool,
    pub floating: bool,
    pub timeout_send: Option<Duration>,
    /// `retries`: -1 (Jina's default) means "decide from the replica count".
    pub retries: i32,
    /// `external: true` with `host`/`port`: an Executor Zeroflow does not run.
    pub external: Option<ExternalAddress>,
    /// `port` when given (for local runs).
    pub port: Option<u16>,
    /// Zeroflow extension, executor key `command:` (a list of strings, or one string split on
    /// whitespace): run this program, which speaks the Jina executor protocol, instead of
    /// `jina executor`. `{port}` in an argument is the port it must listen on. Jina drops the
    /// key with a warning, so the YAML still loads there.
    pub command: Option<Vec<String>>,
    pub jcloud: ExecutorJcloud,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalAddress {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// One `(host, port)` per shard, when each shard runs at its own address (Zeroflow's
    /// `jc flow serve --executor-address NAME=A,B`); empty: every shard is at `host:port`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<(String, u16)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowJcloud {
    pub name: Option<String>,
    pub version: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub traces: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ExecutorJcloud {
    pub autoscale: Autoscale,
    /// False when the YAML had no `jcloud.autoscale` (replicas are then fixed).
    pub autoscale_set: bool,
    pub resources: Resources,
    pub expose: bool,
    pub labels: BTreeMap<String, String>,
    pub min_available: Option<u32>,
    pub max_unavailable: Option<u32>,
    /// `jcloud.monitor.traces.enable` of this Executor.
    pub traces: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Concurrency,
    Rps,
    Cpu,
    Memory,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Autoscale {
    pub min: u32,
    pub max: u32,
    pub metric: Metric,
    pub target: u32,
    pub scale_down_delay: Duration,
    pub stable_window: Duration,
    pub revision_timeout: Duration,
    /// Replicas a wake-up from zero starts with (Knative's `activation-scale`; a Zeroflow
    /// extension of `jcloud.autoscale`). Left out of the output at its default, 1.
    #[serde(skip_serializing_if = "is_one")]
    pub activation_scale: u32,
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl Default for Autoscale {
    fn default() -> Self {
        Autoscale {
            min: 1,
            max: 2,
            metric: Metric::Concurrency,
            target: 100,
            scale_down_delay: Duration::from_secs(30),
            stable_window: Duration::from_secs(60),
            revision_timeout: Duration::from_secs(300),
            activation_scale: 1,
        }
    }
}

/// Defaults to JCloud's C1 tier without storage.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Resources {
    pub instance: Instance,
    pub storage: Option<Storage>,
}

/// A JCloud instance tier with its cores, memory and credits per hour, from JCloud's tables.
/// The GPU tiers' table gives no core count: `cpu` is 0 for them. `memory_gib` holds the table's
/// "GB" figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instance {
    pub name: String,
    pub cpu: f64,
    pub memory_gib: f64,
    pub gpus: u32,
    /// G1: one GPU time-sliced with up to four other Executors.
    pub gpu_shared: bool,
    pub credits_per_hour: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Ephemeral,
    Efs,
    Ebs,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Storage {
    pub kind: StorageKind,
    /// Size in bytes (`10G` = 10^9, `10Gi` = 2^30, as Kubernetes quantities); efs and ebs default
    /// to JCloud's 5 GB, ephemeral has no size unless given.
    pub size: Option<u64>,
    pub retain: bool,
}
