//! What one `Flow` resource becomes in its namespace: per Executor shard a Deployment running
//! `zeroflow-shim` around the Executor and a headless Service, a PodDisruptionBudget and a claim
//! where the YAML asks, and the gateway (`jc flow serve --runtime kubernetes`) with its
//! ServiceAccount, least-privilege Role, Deployment and Service. Pure: (Flow resource, loaded
//! Flow, options) in, typed objects out. It must not talk to the API server (the controller
//! applies what it renders) nor decide replica counts beyond the first (the autoscaler does).

use super::crd::{FlowResource, ServiceExposure};
use super::names;
use super::pod;
use crate::knative::dns_label;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PodSpec, PodTemplateSpec, Probe,
    SecretKeySelector, Service, ServiceAccount, ServicePort, ServiceSpec, TCPSocketAction, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use zeroflow_spec::{Executor, Flow, Protocol, StorageKind, Uses};

/// Pod-template annotation carrying `spec.restartedAt`: changing it rolls the Deployment.
pub const RESTARTED_AT: &str = "zeroflow.dev/restarted-at";
/// Gateway pod-template annotation: a hash of what the gateway loads from the Flow resource at
/// start, so that a changed Flow restarts it (its Role lets it read the Flow, not watch it).
pub const SPEC_HASH: &str = "zeroflow.dev/spec-hash";
/// Annotation on a claim that outlives its Flow (`storage.retain`).
pub const RETAIN: &str = "zeroflow.dev/retain";
/// The ConfigMap with the Executors' inline `uses:` configs, mounted at [`pod::CONFIG_DIR`].
pub const CONFIG_MAP: &str = "zeroflow-config";
/// Where the shim is copied to in pods whose image is not the runtime image.
const SHIM_DIR: &str = "/zeroflow";
/// The Executor's drain (the shim's default 30 s) plus the Executor's own stop grace (10 s).
const EXECUTOR_GRACE_SECONDS: i64 = 45;

/// What the renderer needs besides the Flow.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The generic runtime image (Python, jina, `zeroflow-shim`, `jc`; `manifests/
    /// runtime.Containerfile`): every Executor without an image of its own runs on it.
    pub runtime_image: String,
    /// The image of the gateway (`jc`).
    pub gateway_image: String,
    /// The gateway Service's type when the Flow is exposed (`jcloud.expose`, the default) and
    /// its resource says nothing.
    pub default_expose: ServiceExposure,
    /// Server-level autoscaler settings, Knative's `KEY=VALUE` (what `jc server --autoscaler`
    /// was given): every gateway's autoscaler runs with them.
    pub autoscaler: Vec<String>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        let image = format!("zeroflow/runtime:{}", env!("CARGO_PKG_VERSION"));
        RenderOptions {
            runtime_image: image.clone(),
            gateway_image: image,
            default_expose: ServiceExposure::NodePort,
            autoscaler: vec![],
        }
    }
}

/// Why a Flow resource cannot be rendered. Each names what and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    #[error("the Flow resource has no namespace")]
    NoNamespace,
    #[error("the Flow resource has no uid yet (it was not read from the API server)")]
    NoUid,
    #[error(
        "the Flow resource's name {0:?} is not a DNS label (at most 63 lower-case letters, \
         digits and '-', starting with a letter): its objects are labelled with it"
    )]
    Name(String),
    #[error("{}", .0.join("\n"))]
    Executors(Vec<String>),
}

impl RenderError {
    /// A short CamelCase reason for the status.
    pub fn reason(&self) -> &'static str {
        match self {
            RenderError::Executors(_) => "InvalidSpec",
            _ => "InvalidResource",
        }
    }
}

/// How the replicas of one Executor shard are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// No `jcloud.autoscale`: `replicas`, held by the controller.
    Fixed(i32),
    /// The gateway's autoscaler decides, between `min` and `max`.
    Autoscaled { min: i32, max: i32 },
}

impl Scale {
    /// The count a new Deployment starts with (0 while paused).
    pub fn initial(self, paused: bool) -> i32 {
        match self {
            _ if paused => 0,
            Scale::Fixed(n) => n,
            Scale::Autoscaled { min, .. } => min,
        }
    }

    /// The lowest count that lets the shard serve without a wake-up (for the status).
    pub fn min(self) -> i32 {
        match self {
            Scale::Fixed(n) => n,
            Scale::Autoscaled { min, .. } => min,
        }
    }
}

/// One Executor shard's objects.
#[derive(Debug, Clone)]
pub struct ExecutorShard {
    /// The Executor's name in the Flow YAML.
    pub executor: String,
    /// The shard, when the Executor has several.
    pub shard: Option<u32>,
    /// Never carries `spec.replicas`: the autoscaler's field manager owns it.
    pub deployment: Deployment,
    pub service: Service,
    pub disruption_budget: Option<PodDisruptionBudget>,
    pub claim: Option<PersistentVolumeClaim>,
    pub scale: Scale,
}

impl ExecutorShard {
    pub fn name(&self) -> String {
        self.deployment.name_any()
    }
}

/// Everything one Flow resource becomes, in its namespace.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub namespace: String,
    pub paused: bool,
    pub config_map: Option<ConfigMap>,
    pub executors: Vec<ExecutorShard>,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// Carries `spec.replicas` (1, 0 while paused): the controller owns the gateway's count.
    pub gateway: Deployment,
    pub gateway_service: Service,
    /// Protocol -> port of the gateway, in the order of `with.protocol`.
    pub gateway_ports: Vec<(Protocol, u16)>,
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Grpc => "grpc",
        Protocol::Http => "http",
        Protocol::Websocket => "websocket",
    }
}

/// The labels a Flow's objects carry. The Flow resource's name (a DNS label, checked) is what
/// `zeroflow.dev/flow` holds, so that a pod maps back to its Flow resource; the control plane
/// names the resource after the Flow's ID, so the two agree for Flows it made.
struct Ctx<'a> {
    resource: &'a FlowResource,
    flow: &'a Flow,
    name: String,
    namespace: String,
    owner: OwnerReference,
    opts: &'a RenderOptions,
}

impl Ctx<'_> {
    fn labels(
        &self,
        component: &str,
        executor: Option<&str>,
        shard: Option<u32>,
        own: &[&BTreeMap<String, String>],
    ) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for o in own {
            m.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        m.extend(names::labels(&self.name, component, executor, shard));
        m.insert(
            names::LABEL_OWNER.into(),
            dns_label(&self.resource.spec.owner, 63),
        );
        m
    }

    fn meta(&self, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }

    fn template_annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        if let Some(at) = &self.resource.spec.restarted_at {
            a.insert(RESTARTED_AT.to_string(), at.clone());
        }
        a
    }
}

/// The env var `name` holding the pod's `field` (`status.podIP`, `metadata.name`).
fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_ip_env() -> EnvVar {
    field_env("POD_IP", "status.podIP")
}

/// Kubernetes expands `$(VAR)` in a container's command and reduces `$$` to `$`: the
/// Executor's own arguments are passed through as written.
fn escape_dollars(args: Vec<String>) -> Vec<String> {
    args.into_iter().map(|a| a.replace('$', "$$")).collect()
}

fn port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port.into(),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// The image of `e` and why it cannot run, if it cannot.
fn executor_image(ctx: &Ctx, e: &Executor) -> Result<String, String> {
    if let Some(image) = ctx.resource.spec.images.get(&e.name) {
        return Ok(image.clone());
    }
    let project = ctx.resource.spec.project.is_some();
    let need = |what: String| {
        Err(format!(
            "Executor {}: {what}; deploy it with its project folder, or name an image for it \
             (spec.images.{})",
            e.name, e.name
        ))
    };
    match &e.uses {
        Uses::Docker { image } => Ok(image.clone()),
        Uses::Hub { scheme, reference } => Err(format!(
            "Executor {}: `uses: {scheme}://{reference}` names an Executor Hub image, which \
             this cluster cannot resolve: name an image for it (spec.images.{})",
            e.name, e.name
        )),
        Uses::Config { path } if !project && e.command.is_none() => {
            need(format!("`uses: {path}` is a file of its project"))
        }
        _ if !project && !e.py_modules.is_empty() && e.command.is_none() => need(format!(
            "its py_modules ({}) are files of its project",
            e.py_modules.join(", ")
        )),
        _ => Ok(ctx.opts.runtime_image.clone()),
    }
}

fn executor_shard(
    ctx: &Ctx,
    e: &Executor,
    shard: Option<u32>,
    image: &str,
    config_files: &mut BTreeMap<String, String>,
) -> ExecutorShard {
    let name = names::executor_object(&e.name, shard);
    let own = [&ctx.flow.jcloud.labels, &e.jcloud.labels];
    let labels = ctx.labels("executor", Some(&e.name), shard, &own);
    let mut selector = BTreeMap::from([
        (
            names::LABEL_FLOW.to_string(),
            labels[names::LABEL_FLOW].clone(),
        ),
        (
            names::LABEL_EXECUTOR.to_string(),
            labels[names::LABEL_EXECUTOR].clone(),
        ),
    ]);
    if let Some(s) = shard {
        selector.insert(names::LABEL_SHARD.into(), s.to_string());
    }

    let mut volumes = vec![];
    let mut mounts = vec![];
    let mut claim = None;
    if let Some(s) = &e.jcloud.resources.storage {
        let claim_name = format!("{name}-data");
        let (volume, spec) = pod::storage_volume(s, &claim_name);
        volumes.push(volume);
        mounts.push(VolumeMount {
            name: pod::DATA_VOLUME.into(),
            mount_path: pod::DATA_DIR.into(),
            ..Default::default()
        });
        claim = spec.map(|spec| {
            let mut meta = ctx.meta(&claim_name, labels.clone());
            if s.retain {
                // A retained claim outlives its Flow: no owner, so garbage collection keeps it.
                meta.owner_references = None;
                meta.annotations = Some(BTreeMap::from([(RETAIN.into(), "true".into())]));
            }
            PersistentVolumeClaim {
                metadata: meta,
                spec: Some(spec),
                ..Default::default()
            }
        });
    }
    if matches!(e.uses, Uses::Inline { .. }) && e.command.is_none() {
        volumes.push(Volume {
            name: CONFIG_MAP.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: CONFIG_MAP.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: CONFIG_MAP.into(),
            mount_path: pod::CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }

    // Images other than the runtime image get the shim copied in by an init container, as the
    // Knative export does.
    let own_image = image != ctx.opts.runtime_image;
    let mut init_containers = None;
    let shim = if own_image {
        volumes.push(Volume {
            name: "zeroflow-shim".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        });
        let mount = VolumeMount {
            name: "zeroflow-shim".into(),
            mount_path: SHIM_DIR.into(),
            ..Default::default()
        };
        mounts.push(mount.clone());
        init_containers = Some(vec![Container {
            name: "zeroflow-shim".into(),
            image: Some(ctx.opts.runtime_image.clone()),
            command: Some(vec![
                "cp".into(),
                "/usr/local/bin/zeroflow-shim".into(),
                format!("{SHIM_DIR}/zeroflow-shim"),
            ]),
            volume_mounts: Some(vec![mount]),
            ..Default::default()
        }]);
        format!("{SHIM_DIR}/zeroflow-shim")
    } else {
        "zeroflow-shim".to_string()
    };
    // The replica's name in the shim's logs and metrics is its pod's.
    let mut extra = vec![
        "--replica".to_string(),
        "$(POD_NAME)".to_string(),
        "--admin-port".to_string(),
        names::EXECUTOR_ADMIN_PORT.to_string(),
    ];
    if let Some(p) = &ctx.resource.spec.project {
        extra.extend([
            "--project-url".into(),
            p.url.clone(),
            "--project-digest".into(),
            p.digest.clone(),
        ]);
    }
    let own_command = pod::executor_command(e, shard.unwrap_or(0), config_files);
    let command = pod::shim_command(
        &shim,
        e,
        ("$(POD_IP)", names::EXECUTOR_PORT),
        extra,
        escape_dollars(own_command),
    );
    let mut env = vec![pod_ip_env(), field_env("POD_NAME", "metadata.name")];
    if ctx.resource.spec.project.is_some() {
        // What the shim presents to fetch the project archive (the control plane writes it).
        env.push(EnvVar {
            name: "ZEROFLOW_ARTIFACT_TOKEN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: names::ARTIFACT_SECRET.into(),
                    key: names::ARTIFACT_TOKEN_KEY.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    env.extend(pod::executor_env(ctx.flow, e, shard.unwrap_or(0)));

    let container = Container {
        name: names::EXECUTOR_CONTAINER.into(),
        image: Some(image.to_string()),
        command: Some(command),
        env: Some(env),
        ports: Some(vec![
            port("grpc", names::EXECUTOR_PORT),
            port("admin", names::EXECUTOR_ADMIN_PORT),
        ]),
        // The shim says ready once the Executor serves; probed every second so that a wake-up
        // from zero is seen at once.
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::Int(names::EXECUTOR_ADMIN_PORT.into()),
                ..Default::default()
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(1),
            failure_threshold: Some(1),
            success_threshold: Some(1),
            ..Default::default()
        }),
        resources: Some(pod::resources(&e.jcloud.resources)),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    };
    let ebs = matches!(&e.jcloud.resources.storage, Some(s) if s.kind == StorageKind::Ebs);
    let deployment = Deployment {
        metadata: ctx.meta(&name, labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: None,
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            // One disk cannot be attached to an old and a new pod at once.
            strategy: ebs.then(|| DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            revision_history_limit: Some(2),
            progress_deadline_seconds: Some(
                (e.jcloud.autoscale.revision_timeout.as_secs() as i32).max(60),
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(ctx.template_annotations()).filter(|a| !a.is_empty()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    // Executors have no business with the API server.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(EXECUTOR_GRACE_SECONDS),
                    init_containers,
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service = Service {
        metadata: ctx.meta(&name, labels.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("grpc".into()),
                port: names::EXECUTOR_PORT.into(),
                target_port: Some(IntOrString::Int(names::EXECUTOR_PORT.into())),
                app_protocol: Some("kubernetes.io/h2c".into()),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (min_available, max_unavailable) = (e.jcloud.min_available, e.jcloud.max_unavailable);
    let disruption_budget = (min_available.is_some() || max_unavailable.is_some()).then(|| {
        PodDisruptionBudget {
            metadata: ctx.meta(&name, labels.clone()),
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some(selector),
                    ..Default::default()
                }),
                min_available: min_available.map(|n| IntOrString::Int(n as i32)),
                // Kubernetes takes one of the two; minAvailable is the stronger promise.
                max_unavailable: max_unavailable
                    .filter(|_| min_available.is_none())
                    .map(|n| IntOrString::Int(n as i32)),
                ..Default::default()
            }),
            ..Default::default()
        }
    });
    let scale = if e.jcloud.autoscale_set {
        let a = &e.jcloud.autoscale;
        Scale::Autoscaled {
            min: a.min as i32,
            max: a.max as i32,
        }
    } else {
        Scale::Fixed(e.replicas as i32)
    };
    ExecutorShard {
        executor: e.name.clone(),
        shard,
        deployment,
        service,
        disruption_budget,
        claim,
        scale,
    }
}

/// A short hash of what the gateway reads from its Flow resource at start.
fn spec_hash(r: &FlowResource) -> String {
    use sha2::Digest;
    let s = &r.spec;
    let text = serde_json::to_string(&(&s.yaml, &s.env, &s.images, &s.project, &s.flow_id))
        .unwrap_or_default();
    let d = sha2::Sha256::digest(text.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn rule(
    groups: &[&str],
    resources: &[&str],
    verbs: &[&str],
    names: Option<Vec<String>>,
) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: names,
        ..Default::default()
    }
}

/// The gateway may read its Flow, watch its EndpointSlices and pods (and read their logs), and
/// read and scale its own Executor Deployments; nothing else.
fn gateway_role(ctx: &Ctx, deployments: Vec<String>) -> Role {
    let mut rules = vec![
        rule(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &["get", "list", "watch"],
            None,
        ),
        rule(&[""], &["pods"], &["get", "list", "watch"], None),
        rule(&[""], &["pods/log"], &["get"], None),
        rule(
            &[names::GROUP],
            &["flows"],
            &["get"],
            Some(vec![ctx.name.clone()]),
        ),
    ];
    // An empty resourceNames would allow every Deployment: a Flow without Executors gets none.
    if !deployments.is_empty() {
        rules.insert(
            1,
            rule(
                &["apps"],
                &["deployments"],
                &["get"],
                Some(deployments.clone()),
            ),
        );
        rules.insert(
            2,
            rule(
                &["apps"],
                &["deployments/scale"],
                &["get", "patch", "update"],
                Some(deployments),
            ),
        );
    }
    Role {
        metadata: ctx.meta(names::GATEWAY, ctx.labels("gateway", None, None, &[])),
        rules: Some(rules),
    }
}

fn gateway(ctx: &Ctx) -> (Deployment, Service, Vec<(Protocol, u16)>) {
    let flow = ctx.flow;
    let labels = ctx.labels("gateway", None, None, &[&flow.gateway.labels]);
    let selector = BTreeMap::from([
        (
            names::LABEL_FLOW.to_string(),
            labels[names::LABEL_FLOW].clone(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            "gateway".to_string(),
        ),
    ]);
    let mut protocols: Vec<Protocol> = vec![];
    for l in &flow.gateway.listeners {
        if !protocols.contains(&l.protocol) {
            protocols.push(l.protocol);
        }
    }
    if protocols.is_empty() {
        protocols.push(Protocol::Grpc);
    }
    let ports: Vec<(Protocol, u16)> = protocols
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, names::EXECUTOR_PORT + i as u16))
        .collect();
    let port_list = ports
        .iter()
        .map(|(_, p)| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut command = vec![
        "jc".to_string(),
        "flow".into(),
        "serve".into(),
        "--runtime".into(),
        "kubernetes".into(),
        "--namespace".into(),
        ctx.namespace.clone(),
        "--flow-resource".into(),
        ctx.name.clone(),
        "--host".into(),
        "$(POD_IP)".into(),
        "--port".into(),
        port_list,
        "--metrics-port".into(),
        names::GATEWAY_METRICS_PORT.to_string(),
    ];
    // A change of them changes the pod template, so the gateway rolls onto them.
    for pair in &ctx.opts.autoscaler {
        command.extend(["--autoscaler".to_string(), pair.clone()]);
    }
    let mut container_ports: Vec<ContainerPort> = ports
        .iter()
        .map(|(proto, p)| port(protocol_name(*proto), *p))
        .collect();
    container_ports.push(port("metrics", names::GATEWAY_METRICS_PORT));
    let mut annotations = ctx.template_annotations();
    annotations.insert(SPEC_HASH.into(), spec_hash(ctx.resource));
    let paused = ctx.resource.spec.paused;
    let deployment = Deployment {
        metadata: ctx.meta(names::GATEWAY, labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(if paused { 0 } else { 1 }),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            revision_history_limit: Some(2),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(names::GATEWAY.into()),
                    enable_service_links: Some(false),
                    containers: vec![Container {
                        name: names::GATEWAY_CONTAINER.into(),
                        image: Some(ctx.opts.gateway_image.clone()),
                        command: Some(command),
                        env: Some(vec![pod_ip_env()]),
                        ports: Some(container_ports),
                        readiness_probe: Some(Probe {
                            tcp_socket: Some(TCPSocketAction {
                                port: IntOrString::Int(ports[0].1.into()),
                                ..Default::default()
                            }),
                            period_seconds: Some(1),
                            ..Default::default()
                        }),
                        resources: Some(pod::resources(&flow.gateway.resources)),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let expose = ctx
        .resource
        .spec
        .gateway
        .expose
        .unwrap_or(if flow.gateway.expose {
            ctx.opts.default_expose
        } else {
            ServiceExposure::ClusterIP
        });
    let service = Service {
        metadata: ctx.meta(names::GATEWAY, labels),
        spec: Some(ServiceSpec {
            type_: Some(expose.as_str().into()),
            selector: Some(selector),
            ports: Some(
                ports
                    .iter()
                    .map(|(proto, p)| ServicePort {
                        name: Some(protocol_name(*proto).into()),
                        port: (*p).into(),
                        target_port: Some(IntOrString::Int((*p).into())),
                        protocol: Some("TCP".into()),
                        app_protocol: (*proto == Protocol::Grpc)
                            .then(|| "kubernetes.io/h2c".to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    (deployment, service, ports)
}

/// Renders `resource`, whose YAML loaded as `flow`.
pub fn render(
    resource: &FlowResource,
    flow: &Flow,
    opts: &RenderOptions,
) -> Result<Rendered, RenderError> {
    let namespace = resource.namespace().ok_or(RenderError::NoNamespace)?;
    let name = resource.name_any();
    if name.is_empty() || dns_label(&name, 63) != name {
        return Err(RenderError::Name(name));
    }
    let owner = resource
        .controller_owner_ref(&())
        .ok_or(RenderError::NoUid)?;
    let ctx = Ctx {
        resource,
        flow,
        name,
        namespace,
        owner,
        opts,
    };

    let mut errors = vec![];
    let mut executors = vec![];
    let mut config_files = BTreeMap::new();
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    for e in &flow.executors {
        if e.external.is_some() {
            // Runs elsewhere: the gateway calls it at its address, nothing to make here.
            continue;
        }
        let image = match executor_image(&ctx, e) {
            Ok(i) => i,
            Err(why) => {
                errors.push(why);
                continue;
            }
        };
        let shards: Vec<Option<u32>> = if e.shards > 1 {
            (0..e.shards).map(Some).collect()
        } else {
            vec![None]
        };
        for shard in shards {
            let s = executor_shard(&ctx, e, shard, &image, &mut config_files);
            if let Some(other) = taken.insert(s.name(), e.name.clone()) {
                errors.push(format!(
                    "Executor {}: its Deployment name {:?} is also that of Executor {other}; \
                     rename one",
                    e.name,
                    s.name()
                ));
                break;
            }
            executors.push(s);
        }
    }
    if !errors.is_empty() {
        return Err(RenderError::Executors(errors));
    }

    let config_map = (!config_files.is_empty()).then(|| ConfigMap {
        metadata: ctx.meta(CONFIG_MAP, ctx.labels("executor", None, None, &[])),
        data: Some(config_files),
        ..Default::default()
    });
    let gateway_labels = ctx.labels("gateway", None, None, &[]);
    let service_account = ServiceAccount {
        metadata: ctx.meta(names::GATEWAY, gateway_labels.clone()),
        ..Default::default()
    };
    let role = gateway_role(&ctx, executors.iter().map(|s| s.name()).collect());
    let role_binding = RoleBinding {
        metadata: ctx.meta(names::GATEWAY, gateway_labels),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: names::GATEWAY.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: names::GATEWAY.into(),
            namespace: Some(ctx.namespace.clone()),
            ..Default::default()
        }]),
    };
    let (gateway, gateway_service, gateway_ports) = gateway(&ctx);
    Ok(Rendered {
        namespace: ctx.namespace.clone(),
        paused: resource.spec.paused,
        config_map,
        executors,
        service_account,
        role,
        role_binding,
        gateway,
        gateway_service,
        gateway_ports,
    })
}

#[cfg(test)]
mod tests;
