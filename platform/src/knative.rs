//! `jc flow export --target knative`: a Flow as Knative Services (`serving.knative.dev/v1`), one
//! per Executor plus one for the gateway, with `jcloud.autoscale` mapped to Knative's
//! `autoscaling.knative.dev/*` annotations (the table in autoscaling.md). Knative then scales;
//! the executor-shim stays as each Executor's entrypoint wrapper, and the gateway is `jc flow
//! serve` calling the Executors' Services as external Executors. Pure: Flow in, objects out.

use crate::kube::pod;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use zeroflow_spec::{Executor, Flow, Metric, Protocol, StorageKind, Uses};

/// The port every container serves on: Knative routes to one declared port per container.
pub const SERVING_PORT: u16 = 8080;
/// Where the ConfigMap with the Flow (and inline Executor configs) is mounted, and where
/// `jcloud.resources.storage` is, as on JCloud.
pub use crate::kube::pod::{CONFIG_DIR, DATA_DIR};
/// Where the init container puts the shim for the Executor container.
const SHIM_DIR: &str = "/zeroflow";

/// Knative features the rendered Services rely on, beyond a default install
/// (`config-features` in `knative-serving`).
pub const REQUIRED_FEATURES: &[&str] = &[
    "kubernetes.podspec-init-containers: enabled (the shim is copied in by an init container)",
    "kubernetes.podspec-volumes-emptydir: enabled (the shim's folder)",
];

#[derive(Debug, Clone)]
pub struct KnativeOptions {
    /// Namespace of every object; default: the Flow's name.
    pub namespace: Option<String>,
    /// Name used when the Flow has no `jcloud.name` (the file's stem).
    pub default_name: String,
    /// Image with `jc` and `zeroflow-shim` in /usr/local/bin.
    pub zeroflow_image: String,
    /// Image for Python Executors that name no image of their own (pass-through ones).
    pub jina_image: String,
    /// Per Executor name: the image that holds its code (overrides `docker://`).
    pub images: BTreeMap<String, String>,
}

/// The rendered objects (Namespace, ConfigMap, PersistentVolumeClaims, Knative Services) and
/// what the user should know about them.
#[derive(Debug, Clone)]
pub struct Export {
    pub objects: Vec<Value>,
    pub warnings: Vec<String>,
}

/// Every Executor that cannot be rendered, each with why and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ExportError(pub Vec<String>);

/// `s` as a DNS-1035 label (what Kubernetes accepts as a Service name): lower case letters,
/// digits and `-`, starting with a letter, at most `max` characters.
pub fn dns_label(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out = out.trim_matches('-').to_string();
    if out.is_empty() {
        out.push('x');
    }
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert_str(0, "x-");
    }
    if out.len() > max {
        // Long names keep a hash of the whole, so two long names that share a prefix differ.
        let hash = fnv(s);
        out.truncate(max - 7);
        let out = out.trim_end_matches('-');
        return format!("{out}-{hash:06x}");
    }
    out
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x01000193)
    }) & 0xff_ffff
}

/// Knative appends `-00001` (and more) to a Service's name for its Revisions, which must stay
/// within 63 characters.
const SERVICE_NAME_MAX: usize = 50;

fn secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs())
}

/// Kubernetes labels: the Flow's and the Executor's `jcloud.labels` and Zeroflow's own.
fn labels(flow_name: &str, component: &str, own: &BTreeMap<String, String>) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in own {
        m.insert(k.clone(), json!(v));
    }
    m.insert("app.kubernetes.io/name".into(), json!(component));
    m.insert("app.kubernetes.io/part-of".into(), json!(flow_name));
    m.insert("app.kubernetes.io/managed-by".into(), json!("zeroflow"));
    Value::Object(m)
}

/// As on JCloud, only what says `expose` (the gateway by default, an Executor with
/// `jcloud.expose: true`) gets a public route; the rest is reachable inside the cluster only.
fn visibility(mut labels: Value, expose: bool) -> Value {
    if !expose {
        labels["networking.knative.dev/visibility"] = json!("cluster-local");
    }
    labels
}

/// `jcloud.autoscale` as Knative's annotations on the Revision template.
fn autoscale_annotations(e: &Executor) -> Value {
    let a = &e.jcloud.autoscale;
    if !e.jcloud.autoscale_set {
        // No `jcloud.autoscale`: replicas are fixed, as they are when Zeroflow runs the Flow.
        return json!({
            "autoscaling.knative.dev/min-scale": e.replicas.to_string(),
            "autoscaling.knative.dev/max-scale": e.replicas.to_string(),
        });
    }
    let (class, metric) = match a.metric {
        Metric::Concurrency => ("kpa.autoscaling.knative.dev", "concurrency"),
        Metric::Rps => ("kpa.autoscaling.knative.dev", "rps"),
        Metric::Cpu => ("hpa.autoscaling.knative.dev", "cpu"),
        Metric::Memory => ("hpa.autoscaling.knative.dev", "memory"),
    };
    let mut m = json!({
        "autoscaling.knative.dev/class": class,
        "autoscaling.knative.dev/metric": metric,
        "autoscaling.knative.dev/target": a.target.to_string(),
        "autoscaling.knative.dev/min-scale": a.min.to_string(),
        "autoscaling.knative.dev/max-scale": a.max.to_string(),
        "autoscaling.knative.dev/scale-down-delay": secs(a.scale_down_delay),
    });
    // The HPA class has no window of its own: Knative refuses the annotation there.
    if matches!(a.metric, Metric::Concurrency | Metric::Rps) {
        m["autoscaling.knative.dev/window"] = json!(secs(a.stable_window));
        // Knative refuses an activation-scale below 2 or below min-scale; either way it would
        // change nothing, so it is written only where it acts.
        if a.activation_scale > a.min.max(1) {
            m["autoscaling.knative.dev/activation-scale"] = json!(a.activation_scale.to_string());
        }
    }
    m
}

/// CPU, memory and GPUs of a JCloud instance tier, as requests and limits.
fn resources(r: &zeroflow_spec::Resources) -> Value {
    serde_json::to_value(pod::resources(r)).unwrap_or_default()
}

fn env_list(flow: &Flow, e: &Executor, shard: u32) -> Vec<Value> {
    pod::executor_env(flow, e, shard)
        .iter()
        .map(|v| serde_json::to_value(v).unwrap_or_default())
        .collect()
}

/// The Executor's own command inside its image (for shard `shard`), before the shim wraps it,
/// and the image.
fn executor_process(
    e: &Executor,
    shard: u32,
    opts: &KnativeOptions,
    config_files: &mut BTreeMap<String, String>,
) -> Result<(String, Vec<String>), String> {
    let image = opts.images.get(&e.name).cloned();
    let need_image = |what: &str| {
        format!(
            "Executor {}: {what}, which must be in an image: pass --image {}=IMAGE",
            e.name, e.name
        )
    };
    let image = match &e.uses {
        _ if e.command.is_some() => {
            image.ok_or_else(|| need_image("`command:` runs a program of yours"))?
        }
        Uses::PassThrough | Uses::Inline { .. } => image.unwrap_or_else(|| opts.jina_image.clone()),
        Uses::Class { name } => image.ok_or_else(|| {
            need_image(&format!("`uses: {name}` is a class from your py_modules"))
        })?,
        Uses::Config { path } => {
            image.ok_or_else(|| need_image(&format!("`uses: {path}` is a config file of yours")))?
        }
        Uses::Docker { image: own } => image.unwrap_or_else(|| own.clone()),
        Uses::Hub { scheme, reference } => image.ok_or_else(|| {
            format!(
                "Executor {}: `uses: {scheme}://{reference}` names an Executor Hub image, \
                 which Zeroflow cannot resolve offline: pass --image {}=IMAGE",
                e.name, e.name
            )
        })?,
    };
    Ok((image, pod::executor_command(e, shard, config_files)))
}

/// What every object of one export shares.
struct Ctx<'a> {
    flow: &'a Flow,
    flow_name: String,
    namespace: String,
    opts: &'a KnativeOptions,
}

/// The Knative Service of one Executor, and the claim of its storage if it has one.
fn executor_service(
    ctx: &Ctx,
    name: &str,
    e: &Executor,
    shard: u32,
    (image, command): (String, Vec<String>),
    warnings: &mut Vec<String>,
) -> (Value, Option<Value>) {
    let (flow, flow_name, namespace) = (ctx.flow, ctx.flow_name.as_str(), ctx.namespace.as_str());
    let shim = pod::shim_command(
        &format!("{SHIM_DIR}/zeroflow-shim"),
        e,
        ("0.0.0.0", SERVING_PORT),
        vec![],
        command,
    );
    let mut mounts = vec![json!({ "name": "zeroflow-shim", "mountPath": SHIM_DIR })];
    let mut volumes = vec![json!({ "name": "zeroflow-shim", "emptyDir": {} })];
    let mut pvc = None;
    if let Some(s) = &e.jcloud.resources.storage {
        let claim = format!("{name}-data");
        let (volume, claim_spec) = pod::storage_volume(s, &claim);
        volumes.push(serde_json::to_value(volume).unwrap_or_default());
        if let Some(spec) = claim_spec {
            pvc = Some(json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": claim,
                    "namespace": namespace,
                    "labels": labels(flow_name, name, &BTreeMap::new()),
                },
                "spec": spec,
            }));
            warnings.push(format!(
                "Executor {}: its {} storage is a PersistentVolumeClaim ({claim}); Knative \
                 needs kubernetes.podspec-persistent-volume-claim and \
                 kubernetes.podspec-persistent-volume-write enabled",
                e.name,
                if s.kind == StorageKind::Efs {
                    "efs"
                } else {
                    "ebs"
                }
            ));
        }
        mounts.push(json!({ "name": "data", "mountPath": DATA_DIR }));
    }
    if matches!(e.uses, Uses::Inline { .. }) {
        mounts
            .push(json!({ "name": "zeroflow-config", "mountPath": CONFIG_DIR, "readOnly": true }));
        volumes
            .push(json!({ "name": "zeroflow-config", "configMap": { "name": "zeroflow-flow" } }));
    }
    let mut labels_own = flow.jcloud.labels.clone();
    labels_own.extend(e.jcloud.labels.clone());
    let lbl = labels(flow_name, name, &labels_own);
    let svc_labels = visibility(lbl.clone(), e.jcloud.expose);
    let revision_timeout = e.jcloud.autoscale.revision_timeout.as_secs();
    if revision_timeout > 600 {
        warnings.push(format!(
            "Executor {}: revision_timeout {revision_timeout}s is above Knative's default \
             max-revision-timeout-seconds (600); raise it in config-defaults",
            e.name
        ));
    }
    let svc = json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": namespace, "labels": svc_labels },
        "spec": {
            "template": {
                "metadata": { "labels": lbl, "annotations": autoscale_annotations(e) },
                "spec": {
                    "timeoutSeconds": revision_timeout,
                    "initContainers": [{
                        "name": "zeroflow-shim",
                        "image": ctx.opts.zeroflow_image,
                        "command": ["cp", "/usr/local/bin/zeroflow-shim", format!("{SHIM_DIR}/zeroflow-shim")],
                        "volumeMounts": [{ "name": "zeroflow-shim", "mountPath": SHIM_DIR }],
                    }],
                    "containers": [{
                        "name": "executor",
                        "image": image,
                        "command": shim,
                        "ports": [{ "name": "h2c", "containerPort": SERVING_PORT }],
                        "env": env_list(flow, e, shard),
                        "resources": resources(&e.jcloud.resources),
                        // The shim answers gRPC health NOT_SERVING until the Executor serves.
                        "readinessProbe": { "grpc": { "port": SERVING_PORT } },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    });
    (svc, pvc)
}

/// The gateway: `jc flow serve` of the same Flow, with every Executor at its Service's address.
fn gateway_service(ctx: &Ctx, addresses: &[(String, String)], warnings: &mut Vec<String>) -> Value {
    let (flow, flow_name, namespace) = (ctx.flow, ctx.flow_name.as_str(), ctx.namespace.as_str());
    let protocols: Vec<Protocol> = flow.gateway.listeners.iter().map(|l| l.protocol).collect();
    let grpc = protocols.is_empty() || protocols.contains(&Protocol::Grpc);
    if grpc && protocols.contains(&Protocol::Websocket) {
        warnings.push(
            "the gateway serves gRPC and websocket on one port: Knative reaches it over h2c \
             (HTTP/2), which carries gRPC and HTTP but no websocket upgrade; websocket clients \
             need a Flow without grpc"
                .into(),
        );
    }
    let mut command = vec![
        "jc".to_string(),
        "flow".into(),
        "serve".into(),
        format!("{CONFIG_DIR}/flow.yml"),
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        SERVING_PORT.to_string(),
    ];
    if protocols.len() > 1 {
        // A Knative Service routes one port: every protocol shares it.
        command.push("--one-port".into());
    }
    for (exec, addr) in addresses {
        command.push("--executor-address".into());
        command.push(format!("{exec}={addr}"));
    }
    let port_name = if grpc { "h2c" } else { "http1" };
    let lbl = labels(flow_name, "gateway", &flow.gateway.labels);
    let svc_labels = visibility(lbl.clone(), flow.gateway.expose);
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": "gateway", "namespace": namespace, "labels": svc_labels },
        "spec": {
            "template": {
                "metadata": {
                    "labels": lbl,
                    "annotations": {
                        "autoscaling.knative.dev/min-scale": "0",
                        // JCloud's gateway `timeout`: how long an idle gateway stays up.
                        "autoscaling.knative.dev/scale-to-zero-pod-retention-period":
                            secs(flow.gateway.idle_timeout),
                    },
                },
                "spec": {
                    "containers": [{
                        "name": "gateway",
                        "image": ctx.opts.zeroflow_image,
                        "command": command,
                        "ports": [{ "name": port_name, "containerPort": SERVING_PORT }],
                        "resources": resources(&flow.gateway.resources),
                        "volumeMounts": [{ "name": "zeroflow-config", "mountPath": CONFIG_DIR, "readOnly": true }],
                    }],
                    "volumes": [{ "name": "zeroflow-config", "configMap": { "name": "zeroflow-flow" } }],
                },
            },
        },
    })
}

/// Renders `flow` (loaded from `flow_yaml`) for Knative.
pub fn render(flow: &Flow, flow_yaml: &str, opts: &KnativeOptions) -> Result<Export, ExportError> {
    let flow_name = dns_label(
        flow.jcloud.name.as_deref().unwrap_or(&opts.default_name),
        63,
    );
    let namespace = match &opts.namespace {
        Some(n) => n.clone(),
        None => flow_name.clone(),
    };
    let ctx = Ctx {
        flow,
        flow_name: flow_name.clone(),
        namespace: namespace.clone(),
        opts,
    };
    let mut errors = vec![];
    let mut warnings = vec![];
    for (i, w) in REQUIRED_FEATURES.iter().enumerate() {
        if i == 0 {
            warnings.push(format!("the Services need these Knative features: {w}"));
        } else {
            warnings.push(format!("  and {w}"));
        }
    }
    let mut config_files = BTreeMap::new();
    config_files.insert("flow.yml".to_string(), flow_yaml.to_string());
    let mut services = vec![];
    let mut pvcs = vec![];
    let mut addresses = vec![];
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    taken.insert("gateway".into(), "the gateway".into());
    for e in &flow.executors {
        if let Some(a) = &e.external {
            addresses.push((e.name.clone(), format!("{}:{}", a.host, a.port)));
            continue;
        }
        // One Service per shard (`name-0`, `name-1`, ... each with its own storage); the
        // gateway gets one address per shard and polls them as the Flow says.
        let names: Vec<String> = if e.shards > 1 {
            let base = dns_label(&e.name, SERVICE_NAME_MAX - 4);
            (0..e.shards).map(|i| format!("{base}-{i}")).collect()
        } else {
            vec![dns_label(&e.name, SERVICE_NAME_MAX)]
        };
        let clash = names.iter().find_map(|name| {
            taken
                .insert(name.clone(), format!("Executor {}", e.name))
                .map(|other| (name.clone(), other))
        });
        if let Some((name, other)) = clash {
            errors.push(format!(
                "Executor {}: its Service name {name:?} is also the name of {other}; rename one",
                e.name
            ));
            continue;
        }
        let processes: Result<Vec<_>, String> = (0..names.len() as u32)
            .map(|shard| executor_process(e, shard, opts, &mut config_files))
            .collect();
        match processes {
            Ok(processes) => {
                let mut at = vec![];
                for (shard, (name, process)) in names.iter().zip(processes).enumerate() {
                    let (svc, pvc) =
                        executor_service(&ctx, name, e, shard as u32, process, &mut warnings);
                    services.push(svc);
                    pvcs.extend(pvc);
                    // Knative's cluster-local address: port 80 routes to the h2c port.
                    at.push(format!("{name}.{namespace}.svc.cluster.local:80"));
                }
                addresses.push((e.name.clone(), at.join(",")));
            }
            Err(why) => errors.push(why),
        }
    }
    if !errors.is_empty() {
        return Err(ExportError(errors));
    }
    let gateway = gateway_service(&ctx, &addresses, &mut warnings);
    let mut objects = vec![
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": namespace, "labels": labels(&flow_name, &flow_name, &BTreeMap::new()) },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "zeroflow-flow",
                "namespace": namespace,
                "labels": labels(&flow_name, "gateway", &BTreeMap::new()),
            },
            "data": config_files,
        }),
    ];
    objects.extend(pvcs);
    objects.extend(services);
    objects.push(gateway);
    Ok(Export { objects, warnings })
}

/// The objects as one multi-document YAML stream, with a header saying how to apply it.
pub fn to_yaml(export: &Export) -> String {
    let mut out = String::from(
        "# Rendered by `jc flow export --target knative`. Apply with: kubectl apply -f FILE\n",
    );
    for f in REQUIRED_FEATURES {
        out.push_str(&format!("# Needs Knative feature {f}\n"));
    }
    for o in &export.objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(o).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests;
