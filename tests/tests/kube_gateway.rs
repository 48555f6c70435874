//! The Flow's gateway on Kubernetes, end to end on the test cluster: `jc flow serve --runtime
//! kubernetes` serves a Flow resource whose Executor is a Deployment at zero (made here by hand,
//! as the controller makes it: a server-side apply without `replicas`, the first count applied
//! through the `scale` subresource). A request from zero waits in the gateway's activator, the
//! gateway applies the Deployment's scale of 1, the pod's shim answers its `/ready` probe, the request is
//! answered, and the idle Executor goes back to zero. Every part above the node is Kubernetes'
//! own; the pods run the real `zeroflow-shim` and `zeroflow-test-executor`.
//!
//! Needs `bash scripts/setup-kube.sh` and `cargo build --workspace --bins` first.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, CustomResourceExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use zeroflow_platform::kube::crd::{FlowResource, FlowSpec};
use zeroflow_platform::kube::names;
use zeroflow_tests::cluster::{TestCluster, replicas_owners};
use zeroflow_tests::{load, wait_until};

const FLOW_ID: &str = "gwtest";
const EXECUTOR: &str = "e";

const FLOW_YAML: &str = r#"
jtype: Flow
executors:
  - name: e
    command: zeroflow-test-executor --append=-k
    jcloud:
      autoscale:
        min: 0
        max: 2
        metric: concurrency
        target: 2
        stable_window: 6s
        scale_down_delay: 0s
"#;

/// An Executor's Deployment as the controller writes it: the shim around `command`, no
/// `replicas` (the autoscaler's).
fn executor_deployment(flow_id: &str, executor: &str, command: &[&str]) -> serde_json::Value {
    let labels = names::labels(flow_id, "executor", Some(executor), None);
    let mut shim = vec![
        "zeroflow-shim",
        "--executor",
        executor,
        "--replica",
        "$(POD_NAME)",
        "--host",
        "$(POD_IP)",
        "--port",
        "8080",
        "--admin-port",
        "8090",
        "--",
    ];
    shim.extend(command);
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": names::executor_object(executor, None), "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": names::EXECUTOR_CONTAINER,
                        "image": "zeroflow-runtime (ignored by the test node)",
                        "command": shim,
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        ],
                        "ports": [
                            {"name": "grpc", "containerPort": names::EXECUTOR_PORT},
                            {"name": "admin", "containerPort": names::EXECUTOR_ADMIN_PORT},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/ready", "port": names::EXECUTOR_ADMIN_PORT},
                            "periodSeconds": 1,
                        },
                    }],
                },
            },
        },
    })
}

/// What one Flow's objects are made with here, by hand, as the controller makes them.
struct Made {
    ns: String,
    deployments: Api<Deployment>,
    pods: Api<Pod>,
    /// The Executor's Deployment (and Service) name, its manifest, and its pods' selector.
    object: String,
    manifest: serde_json::Value,
    selector: String,
}

/// The Flow's namespace, the Flow CRD, the Flow resource (its YAML), and one Executor: its
/// Deployment (applied without replicas, then set to `replicas` through `scale`) and headless
/// Service.
async fn make_flow(
    client: &kube::Client,
    flow_id: &str,
    yaml: &str,
    executor: &str,
    command: &[&str],
    replicas: u32,
) -> Result<Made> {
    let ns = names::namespace(flow_id);
    let ssa = PatchParams::apply("zeroflow-tests").force();
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns,
            &ssa,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            ),
        )
        .await?;

    // The Flow resource's CRD, generated from the Rust types.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = FlowResource::crd();
    let crd_name = crd.metadata.name.clone().context("the CRD has a name")?;
    crds.patch(&crd_name, &ssa, &Patch::Apply(&crd)).await?;
    wait_until(
        "the Flow CRD to be established",
        Duration::from_secs(60),
        || async {
            let c = crds.get(&crd_name).await.ok()?;
            c.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await?;
    let flows: Api<FlowResource> = Api::namespaced(client.clone(), &ns);
    let flow = FlowResource::new(
        &names::flow_resource(flow_id),
        FlowSpec {
            flow_id: flow_id.into(),
            owner: "tester".into(),
            yaml: yaml.into(),
            ..Default::default()
        },
    );
    wait_until(
        "the Flow resource to be created",
        Duration::from_secs(60),
        || async {
            match flows.create(&PostParams::default(), &flow).await {
                Ok(_) => Some(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Some(()),
                Err(_) => None,
            }
        },
    )
    .await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let object = names::executor_object(executor, None);
    let manifest = executor_deployment(flow_id, executor, command);
    deployments
        .patch(&object, &controller_apply(), &Patch::Apply(&manifest))
        .await?;
    zeroflow_platform::kube::runtime::apply_scale(&deployments, &object, replicas).await?;
    let labels = names::labels(flow_id, "executor", Some(executor), None);
    Api::<Service>::namespaced(client.clone(), &ns)
        .patch(
            &object,
            &ssa,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": object, "labels": labels},
                "spec": {
                    "clusterIP": "None",
                    "selector": labels,
                    "ports": [
                        {"name": "grpc", "port": names::EXECUTOR_PORT, "targetPort": "grpc"},
                        {"name": "admin", "port": names::EXECUTOR_ADMIN_PORT, "targetPort": "admin"},
                    ],
                },
            })),
        )
        .await?;
    let selector = format!(
        "{}={}",
        names::LABEL_EXECUTOR,
        labels[names::LABEL_EXECUTOR]
    );
    Ok(Made {
        pods: Api::namespaced(client.clone(), &ns),
        ns,
        deployments,
        object,
        manifest,
        selector,
    })
}

fn controller_apply() -> PatchParams {
    // No force: a conflict with the autoscaler's `replicas` must fail the test, not be taken.
    PatchParams::apply(names::CONTROLLER_MANAGER)
}

fn spec_replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

/// One HTTP/1.0 GET; the whole answer.
async fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_wakes_an_executor_from_zero_on_kubernetes_and_lets_it_go_back() -> Result<()> {
    let cluster = TestCluster::up().await?;
    // The Executor at zero, as the controller sets a min-0 Executor.
    let made = make_flow(
        &cluster.client(),
        FLOW_ID,
        FLOW_YAML,
        EXECUTOR,
        &["zeroflow-test-executor", "--append=-k"],
        0,
    )
    .await?;
    let Made {
        ns,
        deployments,
        pods,
        object,
        manifest,
        selector,
    } = made;
    let no_pods = || async {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        list.items.is_empty().then_some(())
    };
    wait_until(
        "the Executor at zero, no pod",
        Duration::from_secs(120),
        no_pods,
    )
    .await?;

    let metrics_port = zeroflow_tests::free_port();
    let served = start_gateway(&cluster, &ns, FLOW_ID, metrics_port).await?;
    let url = served
        .grpc
        .clone()
        .context("the gateway prints its gRPC endpoint")?;
    assert!(
        served
            .lines
            .iter()
            .any(|l| l.contains(EXECUTOR) && l.contains("0 replica(s) ready")),
        "the gateway adopts the Executor at zero: {:#?}",
        served.lines
    );

    // A request from zero is answered.
    let started = Instant::now();
    let mut c = load::client(&url).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(180),
        c.process_single_data(load::text_request("from-zero", &["hi"])),
    )
    .await
    .context("the request from zero was not answered within 180 s")??
    .into_inner();
    println!(
        "first request from zero answered in {:?}",
        started.elapsed()
    );
    assert_eq!(load::doc_texts(&answer), ["hi-k"]);

    // The gateway scaled the Deployment to 1, through the scale subresource, as the autoscaler.
    let d = deployments.get(&object).await?;
    assert_eq!(spec_replicas(&d), Some(1), "the Deployment went 0 -> 1");
    let scale_writer = d
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| m.manager.as_deref() == Some(names::AUTOSCALER_MANAGER))
        .with_context(|| {
            format!(
                "the autoscaler's field manager is recorded: {:#?}",
                d.metadata.managed_fields
            )
        })?;
    assert_eq!(scale_writer.subresource.as_deref(), Some("scale"));
    assert_eq!(scale_writer.operation.as_deref(), Some("Apply"));
    assert_eq!(replicas_owners(&d), [names::AUTOSCALER_MANAGER]);
    let printed = |needle: &str| served.printed(needle);
    wait_until(
        "the scaling event line",
        Duration::from_secs(10),
        || async { printed("e: scaling 0 -> 1").then_some(()) },
    )
    .await?;
    assert!(
        served.printed("e: replica ") && served.printed(" ready in "),
        "the ready replica is printed"
    );
    let metrics = http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics").await?;
    assert!(
        metrics.contains("zeroflow_autoscaler_desired_replicas"),
        "/metrics has the autoscaler's gauges: {metrics}"
    );

    // Idle: back to zero (stable window 6 s, grace 1 s, no scale-down delay).
    wait_until(
        "the Deployment back at 0",
        Duration::from_secs(180),
        || async {
            let d = deployments.get(&object).await.ok()?;
            (spec_replicas(&d) == Some(0)).then_some(())
        },
    )
    .await?;
    wait_until("the Executor's pod gone", Duration::from_secs(180), no_pods).await?;
    wait_until(
        "the scale-down event line",
        Duration::from_secs(10),
        || async { printed("e: scaling 1 -> 0").then_some(()) },
    )
    .await?;

    // The controller's next apply (no force) neither conflicts with the autoscaler's replicas
    // nor resets them: the Deployment stays at 0.
    let d = deployments
        .patch(&object, &controller_apply(), &Patch::Apply(&manifest))
        .await
        .context("the controller's apply after the autoscaler scaled")?;
    assert_eq!(spec_replicas(&d), Some(0));
    assert_eq!(replicas_owners(&d), [names::AUTOSCALER_MANAGER]);

    tokio::task::spawn_blocking(move || served.stop()).await?;

    // A restarted gateway adopts what runs: here the Executor at 1 with a ready pod (as a gateway
    // that died after a wake-up leaves it). It does not scale at start, counts the pod ready
    // from the slices it lists, and sends the first request straight to it.
    zeroflow_platform::kube::runtime::apply_scale(&deployments, &object, 1).await?;
    wait_until("one ready pod", Duration::from_secs(120), || async {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        (list.items.iter().filter(|p| is_ready(p)).count() == 1).then_some(())
    })
    .await?;
    let served = start_gateway(&cluster, &ns, FLOW_ID, zeroflow_tests::free_port()).await?;
    assert!(
        served
            .lines
            .iter()
            .any(|l| l.contains(EXECUTOR) && l.contains("1 replica(s) ready")),
        "the restarted gateway adopts the ready pod: {:#?}",
        served.lines
    );
    assert!(!served.printed("scaling"), "nothing is scaled at start");
    let url = served
        .grpc
        .clone()
        .context("the gateway prints its gRPC endpoint")?;
    let mut c = load::client(&url).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        c.process_single_data(load::text_request("adopted", &["again"])),
    )
    .await
    .context("the request to the adopted pod was not answered within 60 s")??
    .into_inner();
    assert_eq!(load::doc_texts(&answer), ["again-k"]);
    assert_eq!(spec_replicas(&deployments.get(&object).await?), Some(1));
    tokio::task::spawn_blocking(move || served.stop()).await?;
    Ok(())
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The gateway, as its pod runs it (here a local process with the admin kubeconfig), with
/// short autoscaler windows; returns once it serves.
async fn start_gateway(
    cluster: &TestCluster,
    ns: &str,
    flow_id: &str,
    metrics_port: u16,
) -> Result<zeroflow_tests::Served> {
    let mut cmd = Command::new(zeroflow_tests::bin("jc"));
    cmd.args([
        "flow",
        "serve",
        "--runtime",
        "kubernetes",
        "--namespace",
        ns,
    ])
    .args(["--flow-resource", &names::flow_resource(flow_id)])
    .args(["--port", &zeroflow_tests::free_port().to_string()])
    .args(["--metrics-port", &metrics_port.to_string()])
    .args(["--autoscaler", "scale-to-zero-grace-period=1s"])
    .args(["--autoscaler", "stable-window=6s"])
    .env("KUBECONFIG", cluster.kubeconfig_path())
    .env("RUST_LOG", "info,zeroflow_platform::kube=debug");
    let dir = zeroflow_tests::temp_dir("kube-gateway");
    Ok(tokio::task::spawn_blocking(move || zeroflow_tests::spawn_served(cmd, &dir)).await?)
}

/// An Executor whose pods crash-loop: the gateway still serves (it would only crash-loop too),
/// and a request for that Executor fails at once naming the pod and why, instead of waiting for
/// a replica that does not come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_a_crash_looping_executor_fail_at_once_saying_why() -> Result<()> {
    const FLOW: &str = "gwcrash";
    let cluster = TestCluster::up().await?;
    let made = make_flow(
        &cluster.client(),
        FLOW,
        "jtype: Flow\nexecutors:\n  - name: bad\n    command: zeroflow-test-executor --crash-after 1ms\n",
        "bad",
        &["zeroflow-test-executor", "--crash-after", "1ms"],
        1,
    )
    .await?;
    let pods = &made.pods;
    let selector = &made.selector;
    wait_until(
        "the Executor's pod in CrashLoopBackOff",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?;
            list.items
                .iter()
                .flat_map(|p| {
                    p.status
                        .iter()
                        .flat_map(|s| s.container_statuses.iter().flatten())
                })
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
                .any(|r| r == "CrashLoopBackOff")
                .then_some(())
        },
    )
    .await?;

    let mut served = start_gateway(&cluster, &made.ns, FLOW, zeroflow_tests::free_port()).await?;
    let url = served
        .grpc
        .clone()
        .context("the gateway prints its gRPC endpoint")?;
    let started = Instant::now();
    let mut c = load::client(&url).await;
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        c.process_single_data(load::text_request("doomed", &["x"])),
    )
    .await
    .context("the request for the crash-looping Executor was not answered within 60 s")?
    .expect_err("no replica of a crash-looping Executor can answer");
    println!("failed in {:?}: {err}", started.elapsed());
    assert!(
        err.message().contains("CrashLoopBackOff") && err.message().contains("exec-bad-"),
        "the error names the pod and why: {err}"
    );
    assert!(
        served.child.try_wait()?.is_none(),
        "the gateway keeps serving"
    );
    tokio::task::spawn_blocking(move || served.stop()).await?;
    Ok(())
}
