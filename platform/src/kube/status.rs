//! A Flow's status as a pure function of what the cluster shows: the Flow resource (its spec
//! and last status), what it should run (one [`ShardPlan`] per Executor shard, or why it cannot
//! be rendered), its Deployments and Pods, the last log lines of failing containers, and now.
//! Phases as JCloud names them: Pending (objects made, nothing scheduled), Starting, Serving
//! (the gateway and every Executor with `min > 0` ready; Executors at zero are fine), Failed
//! (with the reason and the container's last lines), Paused, Updating (a changed Flow rolling
//! out). It must not talk to the API server (the controller fetches, then calls this).

use super::crd::{ExecutorStatus, FlowError, FlowPhase, FlowResource, FlowStatus};
use super::names;
use super::render::Rendered;
use crate::knative::dns_label;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// What one Executor shard should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub executor: String,
    pub shard: Option<u32>,
    pub deployment: String,
    /// Replicas it needs to serve without a wake-up (0: it may sit at zero).
    pub min: i32,
}

impl ShardPlan {
    /// The plan of everything `rendered` holds.
    pub fn of(rendered: &Rendered) -> Vec<ShardPlan> {
        rendered
            .executors
            .iter()
            .map(|s| ShardPlan {
                executor: s.executor.clone(),
                shard: s.shard,
                deployment: s.name(),
                min: s.scale.min(),
            })
            .collect()
    }
}

/// What the Flow should run, or why it cannot run at all.
#[derive(Debug, Clone, Copy)]
pub enum Plan<'a> {
    Shards(&'a [ShardPlan]),
    /// The Flow's YAML or resource is wrong: `reason` (CamelCase) and what is wrong.
    Invalid {
        reason: &'a str,
        message: &'a str,
    },
}

/// Why one pod cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFailure {
    pub pod: String,
    /// The container its logs are read from (None: it never ran, e.g. Unschedulable).
    pub container: Option<String>,
    /// The logs worth reading are those of the container's previous run (it crashed).
    pub previous: bool,
    pub reason: String,
    pub message: String,
}

impl std::fmt::Display for PodFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pod {}: {}", self.pod, self.reason)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Container waiting reasons that mean it will not run without a change.
const FAILING_WAITS: &[&str] = &["CrashLoopBackOff", "ImagePullBackOff", "InvalidImageName"];

/// Waiting reasons that often pass by themselves: the kubelet retries them (a Secret that is
/// created a moment later; the Node authorizer's graph catching up with a pod's binding; one
/// failed pull before the back-off). They count as failures only once a pod has been waiting
/// that long ([`TRANSIENT_GRACE`] after its creation).
const TRANSIENT_WAITS: &[&str] = &[
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// How long a transient waiting reason may last before the pod counts as failed.
pub const TRANSIENT_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Restarts after which a container that keeps exiting non-zero is crash-looping, whatever its
/// waiting reason says (some node agents do not report CrashLoopBackOff).
const CRASH_RESTARTS: i32 = 3;

/// `settled`: the pod is older than [`TRANSIENT_GRACE`], so transient reasons count too.
fn container_failure(pod: &str, c: &ContainerStatus, settled: bool) -> Option<PodFailure> {
    let state = c.state.as_ref();
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let oom = |t: Option<&k8s_openapi::api::core::v1::ContainerStateTerminated>| {
        t.is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"))
    };
    let failure = |reason: &str, message: Option<&String>, previous: bool| PodFailure {
        pod: pod.to_string(),
        container: Some(c.name.clone()),
        previous,
        reason: reason.to_string(),
        message: message.cloned().unwrap_or_default(),
    };
    if let Some(w) = state.and_then(|s| s.waiting.as_ref())
        && let Some(reason) = w.reason.as_deref()
        && (FAILING_WAITS.contains(&reason) || (settled && TRANSIENT_WAITS.contains(&reason)))
    {
        let crashed = reason == "CrashLoopBackOff";
        if crashed && oom(last) {
            return Some(failure(
                "OOMKilled",
                Some(&"the container ran out of memory; give it a larger instance".to_string()),
                true,
            ));
        }
        let message = w.message.as_ref().or(last.and_then(|t| t.message.as_ref()));
        return Some(failure(reason, message, crashed));
    }
    let now = state.and_then(|s| s.terminated.as_ref());
    if oom(now) {
        return Some(failure(
            "OOMKilled",
            Some(&"the container ran out of memory; give it a larger instance".to_string()),
            false,
        ));
    }
    let exited_badly = now.or(last).is_some_and(|t| t.exit_code != 0);
    if c.restart_count >= CRASH_RESTARTS && !c.ready && exited_badly {
        let exit = now.or(last).map(|t| t.exit_code).unwrap_or_default();
        return Some(failure(
            "CrashLoopBackOff",
            Some(&format!(
                "the container exited with status {exit} and was restarted {} times",
                c.restart_count
            )),
            now.is_none(),
        ));
    }
    None
}

/// Why `pod` cannot run, if it cannot, as of `now` (pods on their way out are not judged).
pub fn pod_failure(pod: &Pod, now: Timestamp) -> Option<PodFailure> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let name = pod.name_any();
    let grace = k8s_openapi::jiff::SignedDuration::try_from(TRANSIENT_GRACE).unwrap_or_default();
    let settled = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .is_none_or(|t| now.duration_since(t.0) >= grace);
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in containers {
        if let Some(f) = container_failure(&name, c, settled) {
            return Some(f);
        }
    }
    if status.phase.as_deref() == Some("Failed") {
        return Some(PodFailure {
            pod: name,
            container: None,
            previous: false,
            reason: status.reason.clone().unwrap_or_else(|| "Failed".into()),
            message: status.message.clone().unwrap_or_default(),
        });
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    unschedulable.map(|c| PodFailure {
        pod: name,
        container: None,
        previous: false,
        reason: "Unschedulable".into(),
        message: c.message.clone().unwrap_or_default(),
    })
}

/// Whether `pod` is one of `plan`'s (by its labels).
fn pod_of(pod: &Pod, plan: &ShardPlan) -> bool {
    let labels = pod.labels();
    labels.get(names::LABEL_EXECUTOR) == Some(&dns_label(&plan.executor, 63))
        && labels.get(names::LABEL_SHARD) == plan.shard.map(|s| s.to_string()).as_ref()
}

fn is_gateway(pod: &Pod) -> bool {
    pod.labels()
        .get("app.kubernetes.io/component")
        .map(String::as_str)
        == Some("gateway")
}

fn replicas(d: Option<&Deployment>) -> (i32, i32) {
    let desired = d.and_then(|d| d.spec.as_ref()?.replicas).unwrap_or(0);
    let ready = d
        .and_then(|d| d.status.as_ref()?.ready_replicas)
        .unwrap_or(0);
    (desired, ready)
}

/// A changed template or count that the Deployment has not finished rolling out.
fn rolling(d: &Deployment) -> bool {
    let (Some(spec), Some(status)) = (&d.spec, &d.status) else {
        return true;
    };
    let generation = d.metadata.generation.unwrap_or(0);
    let desired = spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    status.observed_generation.unwrap_or(0) < generation
        || updated < desired
        || status.replicas.unwrap_or(0) > updated
}

/// A Deployment that gave up progressing (its pods did not become ready in time).
fn stalled(d: &Deployment) -> Option<(String, String)> {
    let c = d.status.as_ref()?.conditions.as_ref()?.iter().find(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    })?;
    Some((
        "ProgressDeadlineExceeded".into(),
        c.message.clone().unwrap_or_default(),
    ))
}

/// The first failure among `pods` (and their Deployment), with its log tail.
fn failure_of<'a>(
    pods: impl Iterator<Item = &'a Pod>,
    deployment: Option<&Deployment>,
    logs: &BTreeMap<String, String>,
    now: Timestamp,
) -> Option<(String, String, Option<String>)> {
    let mut pods: Vec<&Pod> = pods.collect();
    pods.sort_by_key(|p| p.name_any());
    for p in pods {
        if let Some(f) = pod_failure(p, now) {
            let tail = logs.get(&f.pod).filter(|t| !t.is_empty()).cloned();
            let message = if f.message.is_empty() {
                format!("pod {}", f.pod)
            } else {
                format!("pod {}: {}", f.pod, f.message)
            };
            return Some((f.reason, message, tail));
        }
    }
    deployment
        .and_then(stalled)
        .map(|(reason, message)| (reason, message, None))
}

/// The condition `type_` with `status`, keeping its last transition time when the status did
/// not change.
fn condition(
    previous: &[Condition],
    type_: String,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_,
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The condition type saying whether one Executor (all its shards) is at zero.
pub fn scaled_to_zero_condition(executor: &str) -> String {
    format!("ScaledToZero.{}", dns_label(executor, 63))
}

/// The status of `flow`, given what it should run (`plan`), its Deployments and Pods, the log
/// tails of failing pods by pod name (see [`pod_failure`]), the gateway's endpoints, and now.
pub fn compute(
    flow: &FlowResource,
    plan: Plan,
    deployments: &[Deployment],
    pods: &[Pod],
    logs: &BTreeMap<String, String>,
    endpoints: BTreeMap<String, String>,
    now: Timestamp,
) -> FlowStatus {
    let previous = flow.status.clone().unwrap_or_default();
    let generation = flow.metadata.generation;
    let paused = flow.spec.paused;
    let deployment = |name: &str| deployments.iter().find(|d| d.name_any() == name);
    let shards: &[ShardPlan] = match plan {
        Plan::Shards(s) => s,
        Plan::Invalid { .. } => &[],
    };

    let mut executors = vec![];
    let mut first_failure: Option<FlowError> = None;
    for s in shards {
        let d = deployment(&s.deployment);
        let (desired, ready) = replicas(d);
        let at_zero = d.is_some() && desired == 0 && ready == 0;
        let was = previous
            .executors
            .iter()
            .find(|e| e.name == s.executor && e.shard == s.shard);
        let at_zero_since = at_zero.then(|| {
            was.filter(|w| w.at_zero)
                .and_then(|w| w.at_zero_since.clone())
                .unwrap_or(Time(now))
        });
        let failure = failure_of(pods.iter().filter(|p| pod_of(p, s)), d, logs, now);
        if first_failure.is_none()
            && let Some((reason, message, tail)) = &failure
        {
            first_failure = Some(FlowError {
                reason: reason.clone(),
                message: format!("Executor {}: {message}", s.executor),
                executor: Some(s.executor.clone()),
                log_tail: tail.clone(),
            });
        }
        let (reason, message, log_tail) = match failure {
            Some((r, m, t)) => (Some(r), Some(m), t),
            None => (None, None, None),
        };
        executors.push(ExecutorStatus {
            name: s.executor.clone(),
            shard: s.shard,
            deployment: s.deployment.clone(),
            desired_replicas: desired,
            ready_replicas: ready,
            at_zero,
            at_zero_since,
            reason,
            message,
            log_tail,
        });
    }
    let gateway = deployment(names::GATEWAY);
    if first_failure.is_none()
        && let Some((reason, message, tail)) =
            failure_of(pods.iter().filter(|p| is_gateway(p)), gateway, logs, now)
    {
        first_failure = Some(FlowError {
            reason,
            message: format!("the gateway: {message}"),
            executor: Some(names::GATEWAY.into()),
            log_tail: tail,
        });
    }

    let (_, gateway_ready) = replicas(gateway);
    let made = gateway.is_some() && shards.iter().all(|s| deployment(&s.deployment).is_some());
    let waiting: Vec<String> = executors
        .iter()
        .zip(shards)
        .filter(|(e, s)| s.min > 0 && e.ready_replicas < s.min)
        .map(|(e, s)| format!("{} ({}/{} ready)", e.deployment, e.ready_replicas, s.min))
        .collect();
    let serving = made && gateway_ready > 0 && waiting.is_empty();
    let any_rolling = deployments.iter().any(rolling);
    let was_serving = matches!(
        previous.phase,
        Some(FlowPhase::Serving | FlowPhase::Updating)
    );
    let scheduled = pods
        .iter()
        .any(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some());

    let (phase, error, ready_reason, ready_message) = match plan {
        Plan::Invalid { reason, message } => (
            FlowPhase::Failed,
            Some(FlowError {
                reason: reason.into(),
                message: message.into(),
                executor: None,
                log_tail: None,
            }),
            reason.to_string(),
            message.to_string(),
        ),
        Plan::Shards(_) if paused => (
            FlowPhase::Paused,
            None,
            "Paused".into(),
            "the Flow is paused: every Executor and the gateway are at 0".into(),
        ),
        Plan::Shards(_) => match first_failure {
            Some(e) => {
                let (r, m) = (e.reason.clone(), e.message.clone());
                (FlowPhase::Failed, Some(e), r, m)
            }
            None if serving && any_rolling && was_serving => (
                FlowPhase::Updating,
                None,
                "Updating".into(),
                "serving while a change rolls out".into(),
            ),
            None if serving => (FlowPhase::Serving, None, "Serving".into(), String::new()),
            None => {
                let why = if !made {
                    "the Flow's Deployments are being made".to_string()
                } else if gateway_ready == 0 {
                    let mut w = vec!["the gateway".to_string()];
                    w.extend(waiting);
                    format!("waiting for {}", w.join(", "))
                } else {
                    format!("waiting for {}", waiting.join(", "))
                };
                let phase = if was_serving && any_rolling {
                    FlowPhase::Updating
                } else if !made || !scheduled {
                    FlowPhase::Pending
                } else {
                    FlowPhase::Starting
                };
                (phase, None, phase.as_str().to_string(), why)
            }
        },
    };

    let mut conditions = vec![condition(
        &previous.conditions,
        "Ready".into(),
        phase == FlowPhase::Serving,
        &ready_reason,
        ready_message,
        generation,
        now,
    )];
    let mut seen: Vec<&str> = vec![];
    for e in &executors {
        if seen.contains(&e.name.as_str()) {
            continue;
        }
        seen.push(&e.name);
        let all: Vec<&ExecutorStatus> = executors.iter().filter(|x| x.name == e.name).collect();
        let at_zero = all.iter().all(|x| x.at_zero);
        let ready: i32 = all.iter().map(|x| x.ready_replicas).sum();
        let desired: i32 = all.iter().map(|x| x.desired_replicas).sum();
        let reason = match (at_zero, paused) {
            (true, true) => "Paused",
            (true, false) => "Idle",
            (false, _) => "Running",
        };
        conditions.push(condition(
            &previous.conditions,
            scaled_to_zero_condition(&e.name),
            at_zero,
            reason,
            format!("{ready} of {desired} replicas ready"),
            generation,
            now,
        ));
    }

    FlowStatus {
        conditions,
        observed_generation: generation,
        phase: Some(phase),
        endpoints,
        executors,
        error,
    }
}

/// Where the gateway is reached, by protocol (the Service's port names): the NodePort on
/// `node_address` or the load balancer's address when the Service is exposed and they are
/// known, else the Service's cluster-internal DNS name.
pub fn endpoints(service: &Service, node_address: Option<&str>) -> BTreeMap<String, String> {
    let ns = service.namespace().unwrap_or_default();
    let Some(spec) = &service.spec else {
        return BTreeMap::new();
    };
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref()?.ingress.as_ref()?.first().cloned())
        .and_then(|i| i.ip.or(i.hostname));
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    let mut out = BTreeMap::new();
    for p in spec.ports.iter().flatten() {
        let Some(name) = &p.name else { continue };
        let scheme = match name.as_str() {
            "grpc" => "grpc",
            "http" => "http",
            "websocket" => "ws",
            _ => continue,
        };
        let at = match (kind, &ingress, node_address, p.node_port) {
            ("LoadBalancer", Some(host), _, _) => format!("{host}:{}", p.port),
            ("LoadBalancer" | "NodePort", _, Some(node), Some(port)) => format!("{node}:{port}"),
            _ => format!("{}.{ns}.svc.cluster.local:{}", service.name_any(), p.port),
        };
        out.insert(name.clone(), format!("{scheme}://{at}"));
    }
    out
}

#[cfg(test)]
mod tests;
