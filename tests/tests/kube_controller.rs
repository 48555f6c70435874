//! The Flow controller on the test cluster (Kubernetes' own API server, controller manager and
//! scheduler; the test node agent runs the pods' real `zeroflow-shim`, `zeroflow-test-executor`
//! and `jc flow serve --runtime kubernetes`): a Flow resource applied as `kubectl apply` would
//! becomes its Deployments, Services and gateway RBAC, owned by the Flow and labelled; the
//! controller's applies never hold an Executor's `replicas`; a min-0 Executor never runs a pod
//! until asked; the status goes to Serving with its endpoint, which answers; pausing takes
//! everything to zero and resuming brings it back; an update prunes a removed Executor; a broken
//! YAML fails with its line; a crashing Executor fails with its reason and log lines; deleting
//! the Flow garbage-collects all of it.
//!
//! Needs `bash scripts/setup-kube.sh` and `cargo build --workspace --bins` first.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use zeroflow_platform::kube::controller::{self, ControllerOptions};
use zeroflow_platform::kube::crd::{FlowPhase, FlowResource, FlowSpec, FlowStatus};
use zeroflow_platform::kube::names;
use zeroflow_tests::cluster::{TestCluster, replicas_owners};
use zeroflow_tests::{load, wait_until, workspace_root};

const NS: &str = "zf-ctl";
const CRASH_NS: &str = "zf-crash";
const LONG: Duration = Duration::from_secs(240);

const FLOW: &str = r#"
jtype: Flow
executors:
  - name: echo
    command: zeroflow-test-executor --append=-k
  - name: lazy
    command: zeroflow-test-executor --append=-z
    jcloud:
      autoscale:
        min: 0
        max: 2
"#;

const CRASHING: &str = r#"
jtype: Flow
executors:
  - name: bad
    command: [sh, -c, "echo boom-from-the-executor; exit 3"]
"#;

fn flow_resource(name: &str, yaml: &str) -> FlowResource {
    FlowResource::new(
        name,
        FlowSpec {
            flow_id: name.into(),
            owner: "tester".into(),
            yaml: yaml.into(),
            ..Default::default()
        },
    )
}

/// Waits until the Flow's status satisfies `ok`; the last status seen is in the error.
async fn wait_status(
    flows: &Api<FlowResource>,
    name: &str,
    what: &str,
    ok: impl Fn(&FlowStatus) -> bool,
) -> Result<FlowStatus> {
    let last = Arc::new(Mutex::new(None));
    let got = wait_until(what, LONG, || {
        let last = last.clone();
        let ok = &ok;
        async move {
            let s = flows.get(name).await.ok()?.status?;
            *last.lock().unwrap() = Some(s.clone());
            ok(&s).then_some(s)
        }
    })
    .await;
    got.with_context(|| format!("last status: {:#?}", last.lock().unwrap()))
}

fn phase_is(p: FlowPhase) -> impl Fn(&FlowStatus) -> bool {
    move |s| s.phase == Some(p)
}

fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref()?.replicas
}

fn by_flow(flow: &str) -> ListParams {
    ListParams::default().labels(&format!("{}={flow}", names::LABEL_FLOW))
}

async fn names_of<K>(api: &Api<K>, flow: &str) -> BTreeSet<String>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&by_flow(flow))
        .await
        .map(|l| l.items.iter().map(|o| o.name_any()).collect())
        .unwrap_or_default()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_runs_a_flow_resource_and_garbage_collects_it() -> Result<()> {
    let cluster = TestCluster::up().await?;
    let client = cluster.client();
    let ssa = PatchParams::apply("zeroflow-tests").force();

    // The CRD as manifests/platform/crd.yaml holds it (what a cluster admin applies).
    let text = std::fs::read_to_string(workspace_root().join("manifests/platform/crd.yaml"))?;
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch("flows.zeroflow.dev", &ssa, &Patch::Apply(&crd))
        .await?;
    wait_until(
        "the Flow CRD established",
        Duration::from_secs(60),
        || async {
            let c = crds.get("flows.zeroflow.dev").await.ok()?;
            c.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await?;
    for ns in [NS, CRASH_NS] {
        Api::<Namespace>::all(client.clone())
            .patch(
                ns,
                &ssa,
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                ),
            )
            .await?;
    }

    // Every pod of the min-0 Executor ever made, from before the Flow exists.
    let lazy_pods = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = lazy_pods.clone();
    let pods_all: Api<Pod> = Api::namespaced(client.clone(), NS);
    let lazy_watch = tokio::spawn(
        watcher(
            pods_all.clone(),
            watcher::Config::default().labels(&format!("{}=lazy", names::LABEL_EXECUTOR)),
        )
        .applied_objects()
        .for_each(move |p| {
            if let Ok(p) = p {
                seen.lock().unwrap().insert(p.name_any());
            }
            async {}
        }),
    );

    let mut registry = prometheus_client::registry::Registry::default();
    let opts = ControllerOptions {
        node_address: Some(cluster.node_ip().to_string()),
        ..Default::default()
    };
    let ctl = tokio::spawn(controller::run(client.clone(), opts, &mut registry));

    let flows: Api<FlowResource> = Api::namespaced(client.clone(), NS);
    let crash_flows: Api<FlowResource> = Api::namespaced(client.clone(), CRASH_NS);
    let created = wait_until(
        "the Flow resource created",
        Duration::from_secs(60),
        || async {
            flows
                .create(&PostParams::default(), &flow_resource("ctl", FLOW))
                .await
                .ok()
        },
    )
    .await?;
    let uid = created.uid().context("a uid")?;
    crash_flows
        .create(&PostParams::default(), &flow_resource("crash", CRASHING))
        .await?;

    // Serving: the gateway and `echo` ready, `lazy` at zero.
    let status = wait_status(
        &flows,
        "ctl",
        "the Flow Serving",
        phase_is(FlowPhase::Serving),
    )
    .await?;
    println!("serving: {status:#?}");
    let lazy = status
        .executors
        .iter()
        .find(|e| e.name == "lazy")
        .context("lazy")?;
    assert!(lazy.at_zero && lazy.at_zero_since.is_some(), "{lazy:?}");
    let echo = status
        .executors
        .iter()
        .find(|e| e.name == "echo")
        .context("echo")?;
    assert_eq!(
        (echo.desired_replicas, echo.ready_replicas, echo.at_zero),
        (1, 1, false)
    );
    let cond = |t: &str| status.conditions.iter().find(|c| c.type_ == t).cloned();
    assert_eq!(cond("Ready").context("Ready")?.status, "True");
    assert_eq!(
        cond("ScaledToZero.lazy")
            .context("lazy's condition")?
            .status,
        "True"
    );
    assert_eq!(
        cond("ScaledToZero.echo")
            .context("echo's condition")?
            .status,
        "False"
    );
    assert_eq!(status.observed_generation, created.metadata.generation);
    let grpc = status.endpoints.get("grpc").context("a gRPC endpoint")?;
    assert!(
        grpc.starts_with(&format!("grpc://{}:", cluster.node_ip())),
        "the NodePort on the node: {grpc}"
    );

    // The objects: labelled, owned by the Flow, and the Executors' replicas the autoscaler's.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    assert_eq!(
        names_of(&deployments, "ctl").await,
        set(&["exec-echo", "exec-lazy", "gateway"])
    );
    assert_eq!(
        names_of(&services, "ctl").await,
        set(&["exec-echo", "exec-lazy", "gateway"])
    );
    for d in deployments.list(&by_flow("ctl")).await?.items {
        let name = d.name_any();
        let owner = &d.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Flow", uid.as_str(), Some(true)),
            "{name}"
        );
        let labels = d.labels();
        assert_eq!(labels["app.kubernetes.io/part-of"], "zeroflow", "{name}");
        assert_eq!(labels[names::LABEL_OWNER], "tester", "{name}");
        if name == "gateway" {
            assert_eq!(replicas_owners(&d), [names::CONTROLLER_MANAGER]);
            continue;
        }
        assert_eq!(
            replicas_owners(&d),
            [names::AUTOSCALER_MANAGER],
            "{name}: only the autoscaler's manager holds replicas: {:#?}",
            d.managed_fields()
        );
        assert!(d.managed_fields().iter().any(|m| {
            m.manager.as_deref() == Some(names::CONTROLLER_MANAGER)
                && m.operation.as_deref() == Some("Apply")
        }));
        assert_eq!(labels[names::LABEL_EXECUTOR], &name["exec-".len()..]);
    }
    assert_eq!(replicas(&deployments.get("exec-lazy").await?), Some(0));
    assert_eq!(replicas(&deployments.get("exec-echo").await?), Some(1));
    let headless = services.get("exec-echo").await?;
    assert_eq!(
        headless.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );
    let gateway_svc = services.get("gateway").await?;
    assert_eq!(
        gateway_svc.spec.as_ref().and_then(|s| s.type_.as_deref()),
        Some("NodePort")
    );
    let role = Api::<Role>::namespaced(client.clone(), NS)
        .get("gateway")
        .await?;
    let scale_rule = role
        .rules
        .iter()
        .flatten()
        .find(|r| r.resources.as_deref() == Some(&["deployments/scale".to_string()][..]))
        .context("the gateway may scale")?;
    assert_eq!(
        scale_rule.resource_names.clone().unwrap_or_default(),
        ["exec-echo", "exec-lazy"],
        "only its own Deployments"
    );
    Api::<RoleBinding>::namespaced(client.clone(), NS)
        .get("gateway")
        .await?;
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .get("gateway")
        .await?;

    let lazy_so_far = lazy_pods.lock().unwrap().clone();
    assert!(
        lazy_so_far.is_empty(),
        "the min-0 Executor ran no pod before it was asked: {lazy_so_far:?}"
    );

    // The endpoint in the status answers (the gateway runs with its own ServiceAccount), waking
    // `lazy` from zero on the way.
    let mut c = load::client(grpc).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(120),
        c.process_single_data(load::text_request("through-the-flow", &["hi"])),
    )
    .await
    .context("no answer within 120 s")??
    .into_inner();
    assert_eq!(load::doc_texts(&answer), ["hi-k-z"]);
    assert!(!lazy_pods.lock().unwrap().is_empty(), "lazy woke up");

    // A crash-looping Executor: Failed, with the reason and its own last lines.
    let crashed = wait_status(&crash_flows, "crash", "the crashing Flow Failed", |s| {
        s.error
            .as_ref()
            .is_some_and(|e| e.reason == "CrashLoopBackOff" && e.log_tail.is_some())
    })
    .await?;
    let e = crashed.error.as_ref().context("an error")?;
    assert_eq!(crashed.phase, Some(FlowPhase::Failed));
    assert_eq!(e.executor.as_deref(), Some("bad"));
    assert!(
        e.log_tail
            .as_deref()
            .unwrap_or_default()
            .contains("boom-from-the-executor"),
        "{e:#?}"
    );

    // Paused: every Deployment at 0, no pod left.
    let merge = PatchParams::default();
    flows
        .patch(
            "ctl",
            &merge,
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await?;
    wait_status(
        &flows,
        "ctl",
        "the Flow Paused",
        phase_is(FlowPhase::Paused),
    )
    .await?;
    wait_until("every Deployment at 0 and no pod", LONG, || async {
        let ds = deployments.list(&by_flow("ctl")).await.ok()?.items;
        let pods = pods_all.list(&by_flow("ctl")).await.ok()?.items;
        (ds.len() == 3 && ds.iter().all(|d| replicas(d) == Some(0)) && pods.is_empty())
            .then_some(())
    })
    .await?;

    // Resumed: back to Serving, echo at 1, lazy still at 0.
    flows
        .patch(
            "ctl",
            &merge,
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await?;
    wait_status(
        &flows,
        "ctl",
        "the Flow Serving again",
        phase_is(FlowPhase::Serving),
    )
    .await?;
    assert_eq!(replicas(&deployments.get("exec-echo").await?), Some(1));
    assert_eq!(replicas(&deployments.get("exec-lazy").await?), Some(0));

    // An update without `lazy` prunes its Deployment and Service and narrows the Role.
    let without_lazy = FLOW
        .split("  - name: lazy")
        .next()
        .context("split")?
        .to_string();
    flows
        .patch(
            "ctl",
            &merge,
            &Patch::Merge(json!({"spec": {"yaml": without_lazy}})),
        )
        .await?;
    wait_until("lazy's objects pruned", LONG, || async {
        let ds = names_of(&deployments, "ctl").await;
        let ss = names_of(&services, "ctl").await;
        (ds == set(&["exec-echo", "gateway"]) && ss == set(&["exec-echo", "gateway"])).then_some(())
    })
    .await?;
    let role = Api::<Role>::namespaced(client.clone(), NS)
        .get("gateway")
        .await?;
    assert!(role.rules.iter().flatten().all(|r| {
        r.resource_names
            .as_ref()
            .is_none_or(|n| !n.contains(&"exec-lazy".to_string()))
    }));
    wait_status(&flows, "ctl", "the status without lazy", |s| {
        s.executors.len() == 1 && s.phase == Some(FlowPhase::Serving)
    })
    .await?;

    // A broken YAML: Failed with the spec crate's line and column; what runs is left running.
    flows
        .patch(
            "ctl",
            &merge,
            &Patch::Merge(json!({"spec": {"yaml": "jtype: Flow\nexecutors:\n  - name: echo\n    replicas: many\n"}})),
        )
        .await?;
    let broken = wait_status(&flows, "ctl", "the broken Flow Failed", |s| {
        s.error.as_ref().is_some_and(|e| e.reason == "InvalidSpec")
    })
    .await?;
    let message = &broken.error.as_ref().context("error")?.message;
    assert!(message.contains("line 4"), "{message}");
    assert_eq!(replicas(&deployments.get("exec-echo").await?), Some(1));

    // Deleting the Flow garbage-collects everything it made.
    flows.delete("ctl", &DeleteParams::default()).await?;
    let roles: Api<Role> = Api::namespaced(client.clone(), NS);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), NS);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    wait_until("everything of the Flow collected", LONG, || async {
        let left = names_of(&deployments, "ctl").await.len()
            + names_of(&services, "ctl").await.len()
            + names_of(&roles, "ctl").await.len()
            + names_of(&bindings, "ctl").await.len()
            + names_of(&accounts, "ctl").await.len()
            + names_of(&pods_all, "ctl").await.len();
        (left == 0).then_some(())
    })
    .await?;

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    assert!(
        text.contains("zeroflow_controller_reconciles_total"),
        "{text}"
    );
    ctl.abort();
    lazy_watch.abort();
    Ok(())
}
