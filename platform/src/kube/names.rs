//! The names, labels, ports and field managers that the controller (which makes the objects),
//! the gateway's Kubernetes runtime (which finds and scales them) and the control plane (which
//! reads them) must agree on. One place, so that none of them spells a name by hand.

use crate::knative::dns_label;
use std::collections::BTreeMap;

/// API group and version of the `Flow` custom resource (`flows.zeroflow.dev`).
pub const GROUP: &str = "zeroflow.dev";
pub const VERSION: &str = "v1alpha1";

/// Field manager of the controller's server-side applies. Its objects never carry
/// `spec.replicas` of an Executor Deployment: that field belongs to [`AUTOSCALER_MANAGER`].
pub const CONTROLLER_MANAGER: &str = "zeroflow-controller";
/// Field manager of every write to an Executor Deployment's `scale` subresource (the gateway's
/// autoscaler; also the controller when it sets the first count of a new Deployment, or 0 while
/// the Flow is paused).
pub const AUTOSCALER_MANAGER: &str = "zeroflow-autoscaler";
/// Field manager of the control plane's writes of Flow resources (`jc server`).
pub const API_MANAGER: &str = "zeroflow-api";

/// The finalizer the controller puts on a Flow while something outside the cluster belongs to
/// it (the project archive it pinned in the artifact store).
pub const FINALIZER: &str = "flows.zeroflow.dev/cleanup";

/// Port of the shim's gRPC proxy to the Executor in every Executor pod.
pub const EXECUTOR_PORT: u16 = 8080;
/// Port of the shim's `/ready`, `/stats` and `/metrics` in every Executor pod.
pub const EXECUTOR_ADMIN_PORT: u16 = 8090;
/// Port of the gateway's Prometheus `/metrics` (and the dashboard later) in the gateway pod.
pub const GATEWAY_METRICS_PORT: u16 = 9090;
/// Name of the container that runs the shim (Executor pods) or `jc` (gateway pods).
pub const EXECUTOR_CONTAINER: &str = "executor";
pub const GATEWAY_CONTAINER: &str = "gateway";

/// The namespace of one Flow: each Flow has its own, so that RBAC (which cannot select by label)
/// can let the Flow's gateway watch its own EndpointSlices and nothing else, and removing a Flow
/// is removing its namespace.
pub fn namespace(flow_id: &str) -> String {
    dns_label(&format!("zf-{flow_id}"), 63)
}

/// Name of the Flow resource of a Flow in its namespace.
pub fn flow_resource(flow_id: &str) -> String {
    dns_label(flow_id, 63)
}

/// Deployment and headless Service of one Executor shard (`shard` only when the Executor has
/// several shards: one Deployment per shard).
pub fn executor_object(executor: &str, shard: Option<u32>) -> String {
    match shard {
        Some(i) => format!("{}-{i}", dns_label(&format!("exec-{executor}"), 55)),
        None => dns_label(&format!("exec-{executor}"), 63),
    }
}

/// The Kubernetes Secret in a Flow's namespace that holds the `jc secret` named `name` (what
/// `env_from_secret: {VAR: {name, key}}` reads). The same name `jc flow export` gives it.
pub fn secret(name: &str) -> String {
    dns_label(name, 253)
}

/// The Secret in a Flow's namespace holding (key [`ARTIFACT_TOKEN_KEY`]) the token its shims
/// present to fetch the project archive from the control plane (env `ZEROFLOW_ARTIFACT_TOKEN`).
pub const ARTIFACT_SECRET: &str = "zeroflow-artifact";
pub const ARTIFACT_TOKEN_KEY: &str = "token";

/// Deployment, Service, ServiceAccount, Role and RoleBinding of the Flow's gateway.
pub const GATEWAY: &str = "gateway";

/// Labels every object of a Flow carries.
pub const LABEL_FLOW: &str = "zeroflow.dev/flow";
pub const LABEL_EXECUTOR: &str = "zeroflow.dev/executor";
pub const LABEL_SHARD: &str = "zeroflow.dev/shard";
pub const LABEL_OWNER: &str = "zeroflow.dev/owner";

/// The labels of one object: `app.kubernetes.io/*` and Zeroflow's own. `component` is
/// `executor` or `gateway`; `executor` and `shard` name the Executor shard it belongs to.
pub fn labels(
    flow_id: &str,
    component: &str,
    executor: Option<&str>,
    shard: Option<u32>,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("app.kubernetes.io/name".into(), component.to_string());
    m.insert("app.kubernetes.io/instance".into(), flow_resource(flow_id));
    m.insert("app.kubernetes.io/component".into(), component.to_string());
    m.insert("app.kubernetes.io/part-of".into(), "zeroflow".into());
    m.insert(
        "app.kubernetes.io/managed-by".into(),
        CONTROLLER_MANAGER.into(),
    );
    m.insert(LABEL_FLOW.into(), flow_resource(flow_id));
    if let Some(e) = executor {
        m.insert(LABEL_EXECUTOR.into(), dns_label(e, 63));
    }
    if let Some(s) = shard {
        m.insert(LABEL_SHARD.into(), s.to_string());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(namespace("fast-cat-1a2b3c"), "zf-fast-cat-1a2b3c");
        assert_eq!(executor_object("Encoder_1", None), "exec-encoder-1");
        assert_eq!(executor_object("enc", Some(2)), "exec-enc-2");
        let long = "x".repeat(100);
        assert!(executor_object(&long, Some(12)).len() <= 63);
    }
}
