//! The `jcloud:` blocks: defaults from JCloud's documentation, and errors for the values JCloud
//! would refuse, each naming the field, the value and the allowed range.

use crate::diag::{Diags, Reader, join_key, scalar_text};
use crate::model::*;
use crate::yaml::{Node, Value};
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

const AUTOSCALE_KEYS: &[&str] = &[
    "min",
    "max",
    "metric",
    "target",
    "scale_down_delay",
    "stable_window",
    "revision_timeout",
    "activation_scale",
];
const RESOURCE_KEYS: &[&str] = &["instance", "storage"];
const LEGACY_RESOURCE_KEYS: &[&str] = &["cpu", "memory"];
const STORAGE_KEYS: &[&str] = &["kind", "size", "retain"];
const EXECUTOR_JCLOUD_KEYS: &[&str] = &[
    "autoscale",
    "resources",
    "expose",
    "labels",
    "minAvailable",
    "maxUnavailable",
    "monitor",
];
const GATEWAY_JCLOUD_KEYS: &[&str] = &[
    "expose",
    "timeout",
    "resources",
    "labels",
    "monitor",
    "autoscale",
];
const FLOW_JCLOUD_KEYS: &[&str] = &["name", "version", "labels", "monitor"];
const MONITOR_KEYS: &[&str] = &["traces"];
const TRACES_KEYS: &[&str] = &["enable"];
/// JCloud drops these label keys (they are its own).
const SKIPPED_LABELS: &[&str] = &["user", "jina-version"];

pub(crate) const SCALE_DOWN_DELAY_MAX: Duration = Duration::from_secs(3600);
pub(crate) const STABLE_WINDOW_MIN: Duration = Duration::from_secs(6);
pub(crate) const STABLE_WINDOW_MAX: Duration = Duration::from_secs(3600);
/// Knative caps `timeoutSeconds` by its `max-revision-timeout-seconds` (600 by default, often
/// raised); Zeroflow allows up to an hour.
pub(crate) const REVISION_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// Not documented by JCloud; a day is more than any client keeps an idle connection.
pub(crate) const GATEWAY_TIMEOUT_MAX: Duration = Duration::from_secs(86_400);
/// JCloud's default size for `efs` and `ebs` volumes: 5 GB.
const DEFAULT_VOLUME_BYTES: u64 = 5_000_000_000;

/// JCloud's instance tiers: (name, cores, memory GB, GPUs, shared GPU, credits per hour).
/// The GPU table gives no core count, hence 0 cores for G tiers.
const TIERS: &[(&str, f64, f64, u32, bool, f64)] = &[
    ("C1", 0.1, 0.2, 0, false, 1.0),
    ("C2", 0.5, 1.0, 0, false, 5.0),
    ("C3", 1.0, 2.0, 0, false, 10.0),
    ("C4", 2.0, 4.0, 0, false, 20.0),
    ("C5", 4.0, 8.0, 0, false, 40.0),
    ("C6", 8.0, 16.0, 0, false, 80.0),
    ("C7", 16.0, 32.0, 0, false, 160.0),
    ("C8", 32.0, 64.0, 0, false, 320.0),
    ("G1", 0.0, 14.0, 1, true, 100.0),
    ("G2", 0.0, 14.0, 1, false, 125.0),
    ("G3", 0.0, 24.0, 2, false, 250.0),
    ("G4", 0.0, 56.0, 4, false, 500.0),
];

impl Instance {
    /// A JCloud tier by name (`C1`..`C8`, `G1`..`G4`, any case).
    pub fn tier(name: &str) -> Option<Instance> {
        TIERS
            .iter()
            .find(|t| t.0.eq_ignore_ascii_case(name))
            .map(|t| Instance {
                name: t.0.to_string(),
                cpu: t.1,
                memory_gib: t.2,
                gpus: t.3,
                gpu_shared: t.4,
                credits_per_hour: t.5,
            })
    }

    /// The names of all tiers, smallest first.
    pub fn tier_names() -> impl Iterator<Item = &'static str> {
        TIERS.iter().map(|t| t.0)
    }
}

impl Default for Instance {
    /// JCloud gives every Executor and gateway a C1 unless told otherwise.
    fn default() -> Self {
        Instance::tier("C1").unwrap_or(Instance {
            name: "C1".into(),
            cpu: 0.1,
            memory_gib: 0.2,
            gpus: 0,
            gpu_shared: false,
            credits_per_hour: 1.0,
        })
    }
}

fn tier_list() -> String {
    Instance::tier_names().collect::<Vec<_>>().join(", ")
}

static DURATION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$").expect("static regex"));
static DURATION_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\d+(?:\.\d+)?)(ms|s|m|h)").expect("static regex"));

/// `30s`, `5m`, `1h`, `1m30s`, `500ms` (Go durations, as Knative takes them), or a number of
/// seconds.
pub(crate) fn parse_duration(n: &Node) -> Option<Duration> {
    match &n.v {
        Value::Int(i) if *i >= 0 => Some(Duration::from_secs(u64::try_from(*i).ok()?)),
        Value::Str(s) => {
            let s = s.trim();
            if !DURATION.is_match(s) {
                return None;
            }
            let mut total = 0f64;
            for c in DURATION_PART.captures_iter(s) {
                let v: f64 = c[1].parse().ok()?;
                total += v * match &c[2] {
                    "ms" => 0.001,
                    "s" => 1.0,
                    "m" => 60.0,
                    _ => 3600.0,
                };
            }
            (total.is_finite() && total < 1e12).then(|| Duration::from_secs_f64(total))
        }
        _ => None,
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() == 0 && s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if d.subsec_nanos() == 0 && s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if d.subsec_nanos() == 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn duration_in(
    n: &Node,
    field: &str,
    min: Duration,
    max: Duration,
    d: &mut Diags,
) -> Option<Duration> {
    let allowed = format!(
        "a duration from {} to {} (e.g. 30s, 5m, 1h) or a number of seconds",
        fmt_duration(min),
        fmt_duration(max)
    );
    match parse_duration(n) {
        Some(v) if v >= min && v <= max => Some(v),
        _ => {
            d.bad(n, field, &allowed);
            None
        }
    }
}

static SIZE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(\d+(?:\.\d+)?)\s*(k|K|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$").expect("static regex")
});

/// A Kubernetes quantity: `10G` (10^9 bytes), `10Gi` (2^30), `500M`, or plain bytes.
pub(crate) fn parse_size(n: &Node) -> Option<u64> {
    let (num, unit) = match &n.v {
        Value::Int(i) if *i > 0 => return u64::try_from(*i).ok(),
        Value::Str(s) => {
            let c = SIZE.captures(s.trim())?;
            (
                c[1].parse::<f64>().ok()?,
                c.get(2).map_or("", |m| m.as_str()).to_string(),
            )
        }
        _ => return None,
    };
    let mult: f64 = match unit.as_str() {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        _ => 1024f64.powi(5),
    };
    let bytes = (num * mult).round();
    (1.0..1.8e19).contains(&bytes).then_some(bytes as u64)
}

const SIZE_ALLOWED: &str = "a size such as 10G, 500M or 20Gi";

/// `jcloud.autoscale` of an Executor. `serverless` is true for `jinaai+serverless://` uses,
/// which means autoscaling with min 0 even without the block.
pub(crate) fn autoscale(
    node: Option<&Node>,
    path: &str,
    serverless: bool,
    cap: u32,
    d: &mut Diags,
) -> (Autoscale, bool) {
    let mut a = Autoscale::default();
    if serverless {
        a.min = 0;
    }
    let Some(node) = node else {
        return (a, serverless);
    };
    let path = join_key(path, "autoscale");
    if node.is_null() {
        return (a, true);
    }
    if (Reader { d }).map(node, &path, "a mapping of min, max, metric, target, scale_down_delay, stable_window, revision_timeout, activation_scale").is_none() {
        return (a, true);
    }
    d.unknown_keys(node, &path, &[AUTOSCALE_KEYS], "`jcloud.autoscale`");
    let mut r = Reader { d };
    let min_node = node.get("min");
    let max_node = node.get("max");
    if let Some(n) = min_node
        && let Some(v) = r.u32(
            n,
            &join_key(&path, "min"),
            0,
            cap,
            &format!("an integer from 0 to {cap} (0 = scale to zero)"),
        )
    {
        a.min = v;
    }
    let mut max_ok = true;
    if let Some(n) = max_node {
        match r.u32(
            n,
            &join_key(&path, "max"),
            1,
            cap,
            &format!("an integer from 1 to {cap} (the replica cap)"),
        ) {
            Some(v) => a.max = v,
            None => max_ok = false,
        }
    }
    if let Some(n) = node.get("metric") {
        let allowed = "one of concurrency, rps, cpu, memory";
        match n.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("concurrency") => a.metric = Metric::Concurrency,
            Some("rps") => a.metric = Metric::Rps,
            Some("cpu") => a.metric = Metric::Cpu,
            Some("memory") => a.metric = Metric::Memory,
            _ => r.d.bad(n, &join_key(&path, "metric"), allowed),
        }
    }
    if let Some(n) = node.get("target") {
        let field = join_key(&path, "target");
        let v = match a.metric {
            Metric::Cpu => r.u32(
                n,
                &field,
                1,
                100,
                "a CPU percentage from 1 to 100 (metric: cpu)",
            ),
            Metric::Memory => r.u32(
                n,
                &field,
                1,
                u32::MAX,
                "a positive integer of MiB per replica (metric: memory)",
            ),
            Metric::Concurrency => r.u32(
                n,
                &field,
                1,
                u32::MAX,
                "a positive integer of concurrent requests per replica",
            ),
            Metric::Rps => r.u32(
                n,
                &field,
                1,
                u32::MAX,
                "a positive integer of requests per second per replica",
            ),
        };
        if let Some(v) = v {
            a.target = v;
        }
    }
    if let Some(n) = node.get("scale_down_delay")
        && let Some(v) = duration_in(
            n,
            &join_key(&path, "scale_down_delay"),
            Duration::ZERO,
            SCALE_DOWN_DELAY_MAX,
            r.d,
        )
    {
        a.scale_down_delay = v;
    }
    if let Some(n) = node.get("stable_window")
        && let Some(v) = duration_in(
            n,
            &join_key(&path, "stable_window"),
            STABLE_WINDOW_MIN,
            STABLE_WINDOW_MAX,
            r.d,
        )
    {
        a.stable_window = v;
    }
    if let Some(n) = node.get("revision_timeout")
        && let Some(v) = duration_in(
            n,
            &join_key(&path, "revision_timeout"),
            Duration::from_secs(1),
            REVISION_TIMEOUT_MAX,
            r.d,
        )
    {
        a.revision_timeout = v;
    }
    if matches!(a.metric, Metric::Cpu | Metric::Memory) && a.min == 0 {
        let at = min_node.unwrap_or(node);
        let metric = if a.metric == Metric::Cpu {
            "cpu"
        } else {
            "memory"
        };
        d.warn(at, &join_key(&path, "min"), format!("min 0 is not possible with metric {metric} (it needs a running replica to measure); JCloud resets it to 1, and so does Zeroflow"));
        a.min = 1;
    }
    if max_ok && a.max < a.min {
        let at = max_node.or(min_node).unwrap_or(node);
        let field = if max_node.is_some() { "max" } else { "min" };
        let msg = if max_node.is_some() {
            format!(
                "max {} is below min {}; allowed: min <= max <= {cap}",
                a.max, a.min
            )
        } else {
            format!(
                "min {} is above the default max {}; allowed: min <= max <= {cap} (set `max` as well)",
                a.min, a.max
            )
        };
        d.error(at, &join_key(&path, field), msg);
    }
    if let Some(n) = node.get("activation_scale") {
        activation_scale(
            n,
            &path,
            &mut a,
            max_ok.then_some(max_node.is_some()),
            cap,
            d,
        );
    }
    (a, true)
}

/// `jcloud.autoscale.activation_scale`: how many replicas a wake-up from zero starts with
/// (Knative's `autoscaling.knative.dev/activation-scale`). `max_given` is `None` when `max`
/// itself was refused (no second error about it then), else whether `max` was written.
fn activation_scale(
    n: &Node,
    path: &str,
    a: &mut Autoscale,
    max_given: Option<bool>,
    cap: u32,
    d: &mut Diags,
) {
    let field = join_key(path, "activation_scale");
    let allowed = format!(
        "an integer from 1 to max ({}), replicas a wake-up from zero starts with",
        a.max.min(cap)
    );
    let Some(v) = (Reader { d }).u32(n, &field, 1, cap, &allowed) else {
        return;
    };
    match max_given {
        Some(given) if v > a.max => {
            let hint = if given { "" } else { " (set `max` as well)" };
            let which = if given { "max" } else { "the default max" };
            d.error(
                n,
                &field,
                format!(
                    "got {v}, above {which} {}; allowed: 1 <= activation_scale <= max{hint}",
                    a.max
                ),
            );
            return;
        }
        None => return,
        Some(_) => {}
    }
    a.activation_scale = v;
    if matches!(a.metric, Metric::Cpu | Metric::Memory) && v > 1 {
        d.warn(n, &field, "applies to metric concurrency and rps only (cpu and memory never scale to zero); ignored");
        a.activation_scale = 1;
    } else if v > 1 && v <= a.min {
        d.warn(
            n,
            &field,
            format!("{v} has no effect: min {} replicas always run", a.min),
        );
    }
}

/// `jcloud.resources` of an Executor or the gateway.
pub(crate) fn resources(
    node: Option<&Node>,
    path: &str,
    allow_storage: bool,
    d: &mut Diags,
) -> Resources {
    let mut res = Resources::default();
    let Some(node) = node else { return res };
    let path = join_key(path, "resources");
    if node.is_null()
        || (Reader { d })
            .map(node, &path, "a mapping with instance and storage")
            .is_none()
    {
        return res;
    }
    d.unknown_keys(
        node,
        &path,
        &[RESOURCE_KEYS, LEGACY_RESOURCE_KEYS],
        "`jcloud.resources`",
    );
    let mut instance_given = false;
    if let Some(n) = node.get("instance") {
        instance_given = true;
        match n.as_str().and_then(Instance::tier) {
            Some(i) => res.instance = i,
            None => d.bad(
                n,
                &join_key(&path, "instance"),
                &format!("one of {}", tier_list()),
            ),
        }
    }
    let cpu = node.get("cpu");
    let mem = node.get("memory");
    if cpu.is_some() || mem.is_some() {
        let at = cpu.or(mem).unwrap_or(node);
        if instance_given {
            d.warn(
                at,
                &path,
                "legacy `cpu`/`memory` are ignored because `instance` is given",
            );
        } else if let Some(tier) = legacy_tier(cpu, mem, &path, d) {
            d.warn(at, &path, format!("legacy `cpu`/`memory` are mapped to the smallest instance that fits, {}; write `instance: {}` instead", tier.name, tier.name));
            res.instance = tier;
        }
    }
    if let Some(n) = node.get("storage") {
        let spath = join_key(&path, "storage");
        if !allow_storage {
            d.warn(n, &spath, "the gateway has no storage; ignored");
        } else {
            res.storage = storage(n, &spath, d);
        }
    }
    res
}

fn legacy_tier(
    cpu: Option<&Node>,
    mem: Option<&Node>,
    path: &str,
    d: &mut Diags,
) -> Option<Instance> {
    let mut cores = 0.0;
    let mut gb = 0.0;
    if let Some(n) = cpu {
        let v = match &n.v {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Str(s) => s
                .strip_suffix('m')
                .and_then(|m| m.parse::<f64>().ok())
                .map(|m| m / 1000.0),
            _ => None,
        };
        match v {
            Some(v) if v > 0.0 && v <= 32.0 => cores = v,
            _ => {
                d.bad(
                    n,
                    &join_key(path, "cpu"),
                    "a number of cores above 0 and at most 32 (C8), or millicores such as 500m",
                );
                return None;
            }
        }
    }
    if let Some(n) = mem {
        match parse_size(n) {
            Some(b) if b as f64 / 1e9 <= 64.0 => gb = b as f64 / 1e9,
            _ => {
                d.bad(
                    n,
                    &join_key(path, "memory"),
                    "a size up to 64G (C8), such as 500M or 8G",
                );
                return None;
            }
        }
    }
    Instance::tier_names()
        .filter_map(Instance::tier)
        .find(|t| t.gpus == 0 && t.cpu >= cores && t.memory_gib >= gb)
}

fn storage(n: &Node, path: &str, d: &mut Diags) -> Option<Storage> {
    (Reader { d }).map(n, path, "a mapping with kind, size and retain")?;
    d.unknown_keys(n, path, &[STORAGE_KEYS], "`jcloud.resources.storage`");
    let mut kind = StorageKind::Ephemeral;
    if let Some(k) = n.get("kind") {
        match k.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("ephemeral") => kind = StorageKind::Ephemeral,
            Some("efs") => kind = StorageKind::Efs,
            Some("ebs") => kind = StorageKind::Ebs,
            _ => d.bad(k, &join_key(path, "kind"), "one of ephemeral, efs, ebs"),
        }
    }
    let mut size = match kind {
        StorageKind::Ephemeral => None,
        StorageKind::Efs | StorageKind::Ebs => Some(DEFAULT_VOLUME_BYTES),
    };
    if let Some(s) = n.get("size") {
        match parse_size(s) {
            Some(b) => size = Some(b),
            None => d.bad(s, &join_key(path, "size"), SIZE_ALLOWED),
        }
    }
    let mut retain = false;
    if let Some(r) = n.get("retain") {
        retain = Reader { d }
            .bool(r, &join_key(path, "retain"))
            .unwrap_or(false);
        if retain && kind == StorageKind::Ephemeral {
            d.warn(
                r,
                &join_key(path, "retain"),
                "ephemeral storage is deleted with its replica; `retain` needs kind efs or ebs",
            );
        }
    }
    Some(Storage { kind, size, retain })
}

static LABEL_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?$").expect("static regex")
});
static DNS_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$")
        .expect("static regex")
});

/// Why `key` is not a Kubernetes label key, if it is not.
fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !DNS_SUBDOMAIN.is_match(p))
    {
        return Some("the prefix before `/` must be a DNS subdomain: lowercase letters, digits, `-` and `.`, at most 253 characters".into());
    }
    if name.is_empty() || name.len() > 63 || !LABEL_NAME.is_match(name) {
        return Some("a name of at most 63 characters, starting and ending with a letter or digit, with `-`, `_`, `.` allowed inside (optionally after a DNS prefix and `/`)".into());
    }
    None
}

/// `labels`: keys and values follow Kubernetes label rules; numbers are taken as text.
pub(crate) fn labels(node: Option<&Node>, path: &str, d: &mut Diags) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(node) = node else { return out };
    let path = join_key(path, "labels");
    if node.is_null() {
        return out;
    }
    let Some(entries) = (Reader { d }).map(node, &path, "a mapping of label keys to values") else {
        return out;
    };
    for e in entries {
        let field = join_key(&path, &e.key);
        if SKIPPED_LABELS.contains(&e.key.as_str()) {
            d.warn_at(
                e.kline,
                e.kcol,
                &field,
                format!("label key `{}` is reserved by JCloud and skipped", e.key),
            );
            continue;
        }
        if let Some(why) = label_key_problem(&e.key) {
            d.error_at(
                e.kline,
                e.kcol,
                &field,
                format!(
                    "label key {} is not valid; allowed: {why}",
                    serde_json::Value::String(e.key.clone())
                ),
            );
            continue;
        }
        let value = match &e.value.v {
            Value::Seq(_) | Value::Map(_) => None,
            _ => scalar_text(&e.value),
        };
        match value {
            Some(v) if v.is_empty() || (v.len() <= 63 && LABEL_NAME.is_match(&v)) => {
                out.insert(e.key.clone(), v);
            }
            _ => d.bad(&e.value, &field, "a label value: empty, or at most 63 characters starting and ending with a letter or digit, with `-`, `_`, `.` allowed inside"),
        }
    }
    out
}

fn traces(node: Option<&Node>, path: &str, d: &mut Diags) -> bool {
    let Some(m) = node else { return false };
    let path = join_key(path, "monitor");
    if m.is_null()
        || (Reader { d })
            .map(m, &path, "a mapping such as {traces: {enable: true}}")
            .is_none()
    {
        return false;
    }
    d.unknown_keys(m, &path, &[MONITOR_KEYS], "`jcloud.monitor`");
    let Some(t) = m.get("traces") else {
        return false;
    };
    let tpath = join_key(&path, "traces");
    if t.is_null()
        || (Reader { d })
            .map(t, &tpath, "a mapping such as {enable: true}")
            .is_none()
    {
        return false;
    }
    d.unknown_keys(t, &tpath, &[TRACES_KEYS], "`jcloud.monitor.traces`");
    t.get("enable")
        .and_then(|e| Reader { d }.bool(e, &join_key(&tpath, "enable")))
        .unwrap_or(false)
}

/// What an Executor's `jcloud:` needs to know about the Executor itself.
pub(crate) struct ExecutorFacts {
    pub serverless: bool,
    pub replicas: u32,
    pub cap: u32,
}

pub(crate) fn executor(
    node: Option<&Node>,
    path: &str,
    facts: &ExecutorFacts,
    d: &mut Diags,
) -> ExecutorJcloud {
    let mut j = ExecutorJcloud::default();
    let path = join_key(path, "jcloud");
    let node = match node {
        Some(n) if n.is_null() => None,
        Some(n)
            if (Reader { d })
                .map(n, &path, "a mapping of JCloud settings")
                .is_none() =>
        {
            None
        }
        other => other,
    };
    if let Some(n) = node {
        d.unknown_keys(n, &path, &[EXECUTOR_JCLOUD_KEYS], "an Executor's `jcloud`");
    }
    let get = |k: &str| node.and_then(|n| n.get(k));
    let (a, set) = autoscale(get("autoscale"), &path, facts.serverless, facts.cap, d);
    j.autoscale = a;
    j.autoscale_set = set;
    j.resources = resources(get("resources"), &path, true, d);
    if let Some(s) = &j.resources.storage
        && s.kind == StorageKind::Ebs
        && j.autoscale_set
    {
        let (line, col) = get("resources")
            .and_then(|r| r.get("storage"))
            .and_then(|s| s.get("kind"))
            .map_or((0, 0), |k| (k.line, k.col));
        let why = if get("autoscale").is_some() {
            "`jcloud.autoscale` is set"
        } else {
            "`jinaai+serverless://` autoscales"
        };
        d.error_at(line, col, &join_key(&join_key(&join_key(&path, "resources"), "storage"), "kind"), format!("got \"ebs\" together with autoscaling ({why}); allowed with autoscale: ephemeral or efs"));
    }
    if let Some(e) = get("expose") {
        j.expose = Reader { d }
            .bool(e, &join_key(&path, "expose"))
            .unwrap_or(false);
    }
    j.labels = labels(get("labels"), &path, d);
    j.traces = traces(get("monitor"), &path, d);
    let upper = if j.autoscale_set {
        j.autoscale.max
    } else {
        facts.replicas
    };
    let what = if j.autoscale_set {
        "jcloud.autoscale.max"
    } else {
        "replicas"
    };
    let mut pdb = |key: &str| -> Option<u32> {
        let n = get(key)?;
        let allowed = format!(
            "an integer lower than {what} ({upper}), so from 0 to {}",
            upper.saturating_sub(1)
        );
        Reader { d }.u32(
            n,
            &join_key(&path, key),
            0,
            upper.saturating_sub(1),
            &allowed,
        )
    };
    j.min_available = pdb("minAvailable");
    j.max_unavailable = pdb("maxUnavailable");
    if let (Some(_), Some(_)) = (get("minAvailable"), get("maxUnavailable"))
        && let Some(e) = node.and_then(|n| n.entry("maxUnavailable"))
    {
        d.error_at(e.kline, e.kcol, &join_key(&path, "maxUnavailable"), "minAvailable and maxUnavailable are both set; allowed: only one of them (as in a Kubernetes PodDisruptionBudget)");
    }
    j
}

pub(crate) struct GatewayJcloud {
    pub expose: bool,
    pub idle_timeout: Duration,
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    pub traces: bool,
}

pub(crate) fn gateway(node: Option<&Node>, path: &str, d: &mut Diags) -> GatewayJcloud {
    let mut g = GatewayJcloud {
        expose: true,
        idle_timeout: Duration::from_secs(600),
        resources: Resources::default(),
        labels: BTreeMap::new(),
        traces: false,
    };
    let path = join_key(path, "jcloud");
    let node = match node {
        Some(n) if n.is_null() => None,
        Some(n)
            if (Reader { d })
                .map(n, &path, "a mapping of JCloud settings")
                .is_none() =>
        {
            None
        }
        other => other,
    };
    let Some(node) = node else { return g };
    d.unknown_keys(
        node,
        &path,
        &[GATEWAY_JCLOUD_KEYS],
        "the gateway's `jcloud`",
    );
    if let Some(e) = node.get("expose") {
        g.expose = Reader { d }
            .bool(e, &join_key(&path, "expose"))
            .unwrap_or(true);
    }
    if let Some(t) = node.get("timeout")
        && let Some(v) = duration_in(
            t,
            &join_key(&path, "timeout"),
            Duration::from_secs(1),
            GATEWAY_TIMEOUT_MAX,
            d,
        )
    {
        g.idle_timeout = v;
    }
    if let Some(a) = node.get("autoscale") {
        d.warn(
            a,
            &join_key(&path, "autoscale"),
            "Zeroflow runs one gateway per Flow and does not autoscale it; ignored",
        );
    }
    g.resources = resources(node.get("resources"), &path, false, d);
    g.labels = labels(node.get("labels"), &path, d);
    g.traces = traces(node.get("monitor"), &path, d);
    g
}

pub(crate) fn flow(node: Option<&Node>, path: &str, d: &mut Diags) -> FlowJcloud {
    let mut f = FlowJcloud {
        name: None,
        version: None,
        labels: BTreeMap::new(),
        traces: false,
    };
    let Some(node) = node else { return f };
    if node.is_null()
        || (Reader { d })
            .map(node, path, "a mapping of JCloud settings")
            .is_none()
    {
        return f;
    }
    d.unknown_keys(node, path, &[FLOW_JCLOUD_KEYS], "the top-level `jcloud`");
    flow_keys(node, path, &mut f, d);
    f
}

/// The Flow-level keys, shared by a Flow's top-level `jcloud` and a Deployment's.
pub(crate) fn flow_keys(node: &Node, path: &str, f: &mut FlowJcloud, d: &mut Diags) {
    if let Some(n) = node.get("name") {
        let field = join_key(path, "name");
        f.name = Reader { d }
            .text(n, &field, "a non-empty string")
            .filter(|s| {
                let ok = !s.trim().is_empty();
                if !ok {
                    d.bad(n, &field, "a non-empty string");
                }
                ok
            });
    }
    if let Some(n) = node.get("version") {
        f.version = Reader { d }.text(
            n,
            &join_key(path, "version"),
            "a Jina version such as 3.34.0",
        );
    }
    f.labels = labels(node.get("labels"), path, d);
    f.traces = traces(node.get("monitor"), path, d);
}

/// The keys of an Executor's `jcloud` block (a Deployment's top-level `jcloud` holds both these
/// and the Flow-level ones).
pub(crate) fn executor_keys() -> &'static [&'static str] {
    EXECUTOR_JCLOUD_KEYS
}

pub(crate) fn flow_keys_list() -> &'static [&'static str] {
    FLOW_JCLOUD_KEYS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Node {
        Node {
            v: Value::Str(t.into()),
            line: 1,
            col: 1,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration(&s("30s")), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration(&s("1m30s")), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration(&s("1h")), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_duration(&s("500ms")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_duration(&s("30")), None);
        assert_eq!(parse_duration(&s("-1s")), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(&s("10G")), Some(10_000_000_000));
        assert_eq!(parse_size(&s("1Gi")), Some(1 << 30));
        assert_eq!(parse_size(&s("500M")), Some(500_000_000));
        assert_eq!(parse_size(&s("10GB")), None);
    }

    #[test]
    fn label_keys() {
        assert!(label_key_problem("app").is_none());
        assert!(label_key_problem("app.kubernetes.io/name").is_none());
        assert!(label_key_problem("-app").is_some());
        assert!(label_key_problem(&"a".repeat(64)).is_some());
        assert!(label_key_problem("Bad_Prefix/x").is_some());
    }
}
