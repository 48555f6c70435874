//! The `Flow` custom resource (`flows.zeroflow.dev/v1alpha1`): the Rust types its CRD is
//! generated from (`manifests/platform/crd.yaml` is that CRD; a test fails when it drifts). The
//! spec carries the Flow YAML as the user wrote it, not a second model of it: the controller loads
//! it with the spec crate, which owns the YAML. This module must not render objects (render.rs)
//! nor compute status (status.rs).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One Flow: what `jc flow deploy` stores and what `kubectl apply -f` of a Flow resource gives.
/// The resource lives in the namespace its objects are made in.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "zeroflow.dev",
    version = "v1alpha1",
    kind = "Flow",
    root = "FlowResource",
    plural = "flows",
    singular = "flow",
    shortname = "zflow",
    namespaced,
    status = "FlowStatus",
    derive = "PartialEq",
    doc = "A Jina Flow that Zeroflow runs: its gateway and one Deployment per Executor shard, \
           scaled to zero by the Flow's own autoscaler.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoints.grpc","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FlowSpec {
    /// The Flow's ID (as the REST API and `jc` name it).
    pub flow_id: String,
    /// The user who owns the Flow.
    pub owner: String,
    /// The Flow YAML as the user wrote it (with its `jcloud:` blocks).
    pub yaml: String,
    /// The `.env` context for `${{ context.X }}` in the YAML.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The project folder the Executors run from, fetched and checked by each Executor's shim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<ProjectSource>,
    /// Executor name -> container image, for Executors that do not run on the generic runtime
    /// image (as `jc flow export --image` does).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
    /// Scales every Executor and the gateway to 0 while true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Changing it restarts every pod of the Flow (as `kubectl rollout restart` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<String>,
    /// How the gateway is reached.
    #[serde(default, skip_serializing_if = "GatewayOptions::is_default")]
    pub gateway: GatewayOptions,
}

/// Where the Flow's project archive is, and what it must hash to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectSource {
    /// URL of the archive (`.tar.gz`) the shim downloads.
    pub url: String,
    /// `sha256:<64 hex digits>` of the archive.
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub digest: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayOptions {
    /// The gateway Service's type. Unset: the Flow's `jcloud.expose` decides (exposed Flows get
    /// the controller's default, NodePort unless configured; others ClusterIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<ServiceExposure>,
}

impl GatewayOptions {
    fn is_default(&self) -> bool {
        *self == GatewayOptions::default()
    }
}

/// The type of the gateway's Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ServiceExposure {
    LoadBalancer,
    NodePort,
    ClusterIP,
}

impl ServiceExposure {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceExposure::LoadBalancer => "LoadBalancer",
            ServiceExposure::NodePort => "NodePort",
            ServiceExposure::ClusterIP => "ClusterIP",
        }
    }

    /// Case-insensitive, for command-line options.
    pub fn parse(s: &str) -> Option<ServiceExposure> {
        [Self::LoadBalancer, Self::NodePort, Self::ClusterIP]
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// What the controller last saw of the Flow in the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowStatus {
    /// `Ready`, and `ScaledToZero.<executor>` per Executor.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<FlowPhase>,
    /// Protocol (`grpc`, `http`, `websocket`) -> URL of the gateway.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, String>,
    /// One entry per Executor shard.
    #[serde(default)]
    pub executors: Vec<ExecutorStatus>,
    /// Why the Flow is Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<FlowError>,
}

/// The JCloud phases a Flow on Kubernetes can be in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum FlowPhase {
    /// Objects made, nothing scheduled yet.
    Pending,
    /// Pods are starting and not ready yet.
    Starting,
    /// The gateway and every Executor that must run are ready.
    Serving,
    /// Something cannot run: see `error`.
    Failed,
    /// `spec.paused`: everything at 0.
    Paused,
    /// A changed spec is rolling out.
    Updating,
}

impl FlowPhase {
    pub fn as_str(self) -> &'static str {
        self.store_phase().as_str()
    }

    /// The control plane's phase of the same name (the one the REST API reports).
    pub fn store_phase(self) -> crate::server::store::Phase {
        use crate::server::store::Phase;
        match self {
            FlowPhase::Pending => Phase::Pending,
            FlowPhase::Starting => Phase::Starting,
            FlowPhase::Serving => Phase::Serving,
            FlowPhase::Failed => Phase::Failed,
            FlowPhase::Paused => Phase::Paused,
            FlowPhase::Updating => Phase::Updating,
        }
    }
}

/// The replicas of one Executor shard.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutorStatus {
    /// The Executor's name in the Flow YAML.
    pub name: String,
    /// The shard, when the Executor has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// The Deployment that runs it.
    pub deployment: String,
    pub desired_replicas: i32,
    pub ready_replicas: i32,
    /// Scaled to zero (idle, not failed).
    pub at_zero: bool,
    /// When it went to zero, as far as the controller saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_zero_since: Option<Time>,
    /// Why it cannot run (CrashLoopBackOff, ImagePullBackOff, OOMKilled, Unschedulable, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last lines its container wrote, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// Why a Flow is Failed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowError {
    /// CrashLoopBackOff, ImagePullBackOff, OOMKilled, Unschedulable, InvalidSpec, ...
    pub reason: String,
    pub message: String,
    /// The Executor (or `gateway`) it is about, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// The last lines the failing container wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// The CRD as YAML, as `manifests/platform/crd.yaml` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = FlowResource::crd();
    let body = serde_yaml_ng::to_string(&crd).expect("a CRD serializes to YAML");
    format!(
        "# Generated from platform/src/kube/crd.rs; do not edit. Regenerate with\n\
         # ZEROFLOW_BLESS=1 cargo test -p zeroflow-platform crd_yaml\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/platform/crd.yaml")
    }

    #[test]
    fn crd_yaml_matches_the_manifest() {
        let want = crd_yaml();
        if std::env::var_os("ZEROFLOW_BLESS").is_some() {
            std::fs::create_dir_all(path().parent().unwrap()).unwrap();
            std::fs::write(path(), &want).unwrap();
            return;
        }
        let have = std::fs::read_to_string(path()).unwrap_or_default();
        assert!(
            have == want,
            "manifests/platform/crd.yaml is not the CRD the Rust types generate; regenerate it with\n  \
             ZEROFLOW_BLESS=1 cargo test -p zeroflow-platform crd_yaml"
        );
    }

    #[test]
    fn crd_names_and_subresources() {
        let crd = FlowResource::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("flows.zeroflow.dev"));
        assert_eq!(crd.spec.group, super::super::names::GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, super::super::names::VERSION);
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Phase", "Endpoint", "Age"]);
    }

    #[test]
    fn spec_is_camel_case_and_omits_defaults() {
        let spec = FlowSpec {
            flow_id: "f1".into(),
            owner: "alice".into(),
            yaml: "jtype: Flow\n".into(),
            restarted_at: Some("2025-01-01T00:00:00Z".into()),
            gateway: GatewayOptions {
                expose: Some(ServiceExposure::NodePort),
            },
            ..Default::default()
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"flowId": "f1", "owner": "alice", "yaml": "jtype: Flow\n",
                "restartedAt": "2025-01-01T00:00:00Z", "gateway": {"expose": "NodePort"}})
        );
        let back: FlowSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn exposure_parses_case_insensitively() {
        assert_eq!(
            ServiceExposure::parse("nodeport"),
            Some(ServiceExposure::NodePort)
        );
        assert_eq!(ServiceExposure::parse("Ingress"), None);
    }
}
