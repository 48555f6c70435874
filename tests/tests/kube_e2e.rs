//! Zeroflow on a real Kubernetes cluster, end to end: `jc server --runtime kubernetes` with its
//! in-process Flow controller, on Kubernetes' own API server, controller manager and scheduler
//! (`scripts/test-cluster.sh`; only the kubelet is replaced, by the test node agent, which runs
//! each Pod's containers as processes). Inside the Pods: the Flow's gateway is `jc flow serve
//! --runtime kubernetes` (activator and autoscaler included), and each Executor is the shim
//! around its program: a real `jina executor` for the project's Python Executor, whose files the
//! shim fetched from the control plane as the project archive. The real `jina.Client` and the
//! public `jcloud` client drive it from outside, through the gateway's NodePort.
//!
//! Run inside the test network namespace (`bash scripts/in-test-netns.sh cargo test -p
//! zeroflow-tests --test kube_e2e`; scripts/test.sh does).

#[path = "server_common.rs"]
mod common;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;
use zeroflow_tests::cluster::{TestCluster, kubectl, replicas_owners};
use zeroflow_tests::{load, run_python, temp_dir, wait_for, workspace_root};

/// Pods start Python (about 2 s each here, more on a busy machine) and are scheduled, probed and
/// listed by Kubernetes' own controllers: generous, as CI has 2 cores.
const DEADLINE: Duration = Duration::from_secs(240);

/// The project's Flow: the `jc new` Python Executor, serverless (min 0), then the Rust test
/// Executor with two fixed replicas. Short windows so that the return to zero happens within
/// the test (stable window 6 s, no scale-down delay, and the server's grace period of 2 s).
const FLOW: &str = "jtype: Flow
executors:
  - name: executor1
    uses: executor1/config.yml
    jcloud:
      autoscale:
        min: 0
        max: 2
        metric: concurrency
        target: 4
        stable_window: 6s
        scale_down_delay: 0s
  - name: rs
    command: zeroflow-test-executor --port {port} --append -rs
    replicas: 2
";

/// The CRD (what an admin installs first), established.
fn install_crd(cluster: &TestCluster) {
    let kc = cluster.kubeconfig_path();
    let crd = workspace_root().join("manifests/platform/crd.yaml");
    kubectl(
        &kc,
        &["apply", "--server-side", "-f", crd.to_str().unwrap()],
    );
    kubectl(
        &kc,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=120s",
            "crd/flows.zeroflow.dev",
        ],
    );
}

fn start_server(data: &Path, cluster: &TestCluster, port: u16) -> Server {
    let advertise = format!("http://127.0.0.1:{port}");
    Server::start_args(
        data,
        port,
        &[(
            "KUBECONFIG".to_string(),
            cluster.kubeconfig_path().display().to_string(),
        )],
        false,
        &[
            "--runtime",
            "kubernetes",
            "--advertise-url",
            &advertise,
            "--autoscaler",
            "scale-to-zero-grace-period=2s",
        ],
    )
}

/// `spec.replicas` of a Deployment, or None while it does not exist.
async fn replicas(api: &Api<Deployment>, name: &str) -> Option<i32> {
    api.get_opt(name)
        .await
        .expect("get Deployment")
        .and_then(|d| d.spec.and_then(|s| s.replicas))
}

/// Pods of one Executor that exist (in any state).
async fn executor_pods(api: &Api<Pod>, executor: &str) -> Vec<Pod> {
    api.list(&ListParams::default().labels(&format!("zeroflow.dev/executor={executor}")))
        .await
        .expect("list pods")
        .items
}

/// Watches `spec.replicas` of a Deployment in the background and keeps the highest value seen,
/// so that a test can say "it went to 1" even if it has gone back by the time it looks.
fn track_max(rt: &tokio::runtime::Runtime, api: Api<Deployment>, name: &str) -> Arc<AtomicI32> {
    let max = Arc::new(AtomicI32::new(0));
    let (m, name) = (max.clone(), name.to_string());
    rt.spawn(async move {
        // Ends when the cluster does (the test is over by then).
        while let Ok(d) = api.get_opt(&name).await {
            if let Some(r) = d.and_then(|d| d.spec.and_then(|s| s.replicas)) {
                m.fetch_max(r, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    max
}

fn gateway_endpoint(v: &Value) -> String {
    v.pointer("/status/endpoints/gateway")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no gateway endpoint in {v}"))
        .to_string()
}

#[test]
fn a_project_flow_on_kubernetes_wakes_from_zero_bursts_within_max_survives_a_pod_loss_and_is_removed()
 {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cluster = rt.block_on(TestCluster::up()).expect("the test cluster");
    let admin = cluster.client();
    install_crd(&cluster);

    let data = temp_dir("kube-e2e-data");
    let server = start_server(&data, &cluster, free_port());
    let token = server.token("alice");
    let work = temp_dir("kube-e2e-src");
    let out = our_jc(&server, &token, &work, &["new", "proj"]);
    assert!(out.status.success(), "jc new: {out:?}");
    let proj = work.join("proj");
    std::fs::write(proj.join("flow.yml"), FLOW).unwrap();

    // Deploy the project folder: no image is built; the Executor's pod fetches the archive.
    println!("== deploy");
    let v = our_jc_json(
        &server,
        &token,
        &work,
        &["flow", "deploy", "proj", "--json", "--timeout", "400"],
    );
    let id = v["id"].as_str().expect("an id").to_string();
    let v = server.wait_phase(&token, &id, "Serving", DEADLINE);
    let grpc = gateway_endpoint(&v);
    assert!(
        grpc.starts_with(&format!("grpc://{}:", cluster.node_ip())),
        "the gateway is reached at its NodePort: {grpc}"
    );

    // The objects, as Kubernetes holds them.
    println!("== objects");
    let ns = format!("zf-{id}");
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    rt.block_on(async {
        for (name, want) in [("exec-executor1", 0), ("exec-rs", 2), ("gateway", 1)] {
            let d = deployments.get(name).await.expect(name);
            assert_eq!(
                d.spec.as_ref().and_then(|s| s.replicas),
                Some(want),
                "{name}"
            );
            let labels = d.metadata.labels.clone().unwrap_or_default();
            assert_eq!(labels.get("zeroflow.dev/flow"), Some(&id), "{name}");
            assert_eq!(
                labels.get("app.kubernetes.io/part-of").map(String::as_str),
                Some("zeroflow")
            );
            let owner = &d.metadata.owner_references.clone().unwrap_or_default()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.controller),
                ("Flow", Some(true))
            );
            // The controller's applies never carry an Executor's replicas: the autoscaler's
            // field (the gateway's count is the controller's own).
            if name != "gateway" {
                assert!(
                    !replicas_owners(&d).contains(&"zeroflow-controller".to_string()),
                    "{name}: the controller owns replicas: {:?}",
                    replicas_owners(&d)
                );
            }
        }
        for name in ["exec-executor1", "exec-rs"] {
            let s = services.get(name).await.expect(name);
            assert_eq!(
                s.spec.and_then(|s| s.cluster_ip).as_deref(),
                Some("None"),
                "{name} is headless"
            );
        }
        assert!(executor_pods(&pods, "executor1").await.is_empty());
    });

    // The first request wakes the Python Executor from zero and is answered.
    println!("== from zero");
    let max = track_max(&rt, deployments.clone(), "exec-executor1");
    run_python(
        "check_client.py",
        &["hello_world", "--grpc", &grpc, "--suffix=-rs"],
    );
    assert!(max.load(Ordering::SeqCst) >= 1, "exec-executor1 went to 1");

    // Idle: back to zero, its pods gone.
    println!("== back to zero");
    wait_for("exec-executor1 back to 0", DEADLINE, || {
        rt.block_on(async {
            (replicas(&deployments, "exec-executor1").await == Some(0)
                && executor_pods(&pods, "executor1").await.is_empty())
            .then_some(())
        })
    });

    // A burst of 200 from zero: nothing lost, never above max.
    println!("== burst of 200 from zero");
    max.store(0, Ordering::SeqCst);
    let samples = rt.block_on(load::burst(&grpc, 200, 0.0));
    let failed: Vec<_> = samples.iter().filter(|s| s.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 200 failed: {failed:?}",
        failed.len()
    );
    let peak = max.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&peak),
        "replicas peaked at {peak}, max is 2"
    );

    // A pod of `rs` deleted under load: only requests in flight on it may fail, as UNAVAILABLE
    // naming the Executor; the other replica and the replacement serve the rest.
    println!("== a pod deleted under load");
    let victim = rt.block_on(async {
        let ready = executor_pods(&pods, "rs").await;
        assert_eq!(ready.len(), 2, "rs has its 2 replicas");
        ready[0].metadata.name.clone().unwrap()
    });
    let (samples, deleted_at) = rt.block_on(async {
        let load = tokio::spawn({
            let grpc = grpc.clone();
            async move { load::sustained(&grpc, 4, Duration::from_secs(6), 20.0).await }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        let deleted_at = tokio::time::Instant::now();
        pods.delete(&victim, &DeleteParams::default())
            .await
            .expect("delete the pod");
        (load.await.expect("load"), deleted_at)
    });
    let failed: Vec<_> = samples.iter().filter(|s| s.result.is_err()).collect();
    println!(
        "{} requests, {} failed (the pod {victim} was deleted under load)",
        samples.len(),
        failed.len()
    );
    // At most the 4 workers' requests can have been in flight on it when it went.
    assert!(failed.len() <= 4, "{failed:?}");
    for s in &failed {
        let (code, msg) = s.result.as_ref().unwrap_err();
        assert_eq!(*code, tonic::Code::Unavailable, "{msg}");
        assert!(msg.contains("rs"), "the failure names the Executor: {msg}");
        assert!(
            s.started <= deleted_at + Duration::from_secs(1),
            "only requests started before the pod went may fail: {msg}"
        );
    }
    assert!(
        samples.len() - failed.len() > 20,
        "the Flow kept serving: {} answered",
        samples.len() - failed.len()
    );

    // The public jcloud client sees it, and removes it: nothing is left in the cluster.
    println!("== remove");
    let (ok, out) = jcloud(&server, &token, &work, &["flow", "status", &id]);
    assert!(ok && out.contains("Serving"), "{out}");
    let (ok, out) = jcloud(&server, &token, &work, &["flow", "remove", &id]);
    assert!(ok, "{out}");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    wait_for("the Flow's namespace to go", DEADLINE, || {
        rt.block_on(namespaces.get_opt(&ns))
            .expect("get namespace")
            .is_none()
            .then_some(())
    });
    rt.block_on(async {
        let selector = ListParams::default().labels(&format!("zeroflow.dev/flow={id}"));
        let left = Api::<Pod>::all(admin.clone())
            .list(&selector)
            .await
            .unwrap();
        assert!(left.items.is_empty(), "pods left: {:?}", left.items.len());
        let left = Api::<Deployment>::all(admin.clone())
            .list(&selector)
            .await
            .unwrap();
        assert!(left.items.is_empty(), "deployments left");
    });

    // A Flow resource applied with kubectl (no REST API involved) serves the same way: the
    // controller makes its objects, and its gateway answers at the NodePort of its status.
    println!("== kubectl apply of a Flow resource");
    let file = work.join("by-hand.yaml");
    std::fs::write(&file, BY_HAND).unwrap();
    let kc = cluster.kubeconfig_path();
    kubectl(&kc, &["apply", "-f", file.to_str().unwrap()]);
    let flows = kube::Api::<zeroflow_platform::kube::crd::FlowResource>::namespaced(
        admin.clone(),
        "by-hand",
    );
    let grpc = wait_for("the applied Flow to serve", DEADLINE, || {
        let f = rt.block_on(flows.get("by-hand")).expect("get the Flow");
        let st = f.status?;
        use zeroflow_platform::kube::crd::FlowPhase;
        assert_ne!(st.phase, Some(FlowPhase::Failed), "{:?}", st.error);
        (st.phase == Some(FlowPhase::Serving))
            .then(|| st.endpoints.get("grpc").cloned())
            .flatten()
    });
    let texts = rt.block_on(async {
        let mut c = load::client(&grpc).await;
        let r = c
            .process_single_data(load::text_request("k1", &["hi"]))
            .await
            .expect("the applied Flow answers");
        load::doc_texts(&r.into_inner())
    });
    assert_eq!(texts, ["hi-k"]);
    kubectl(
        &kc,
        &["delete", "-f", file.to_str().unwrap(), "--wait=true"],
    );
    server.stop();
}

/// A Flow resource as someone with kubectl writes it: its namespace, and the Flow YAML inside.
const BY_HAND: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: by-hand
---
apiVersion: zeroflow.dev/v1alpha1
kind: Flow
metadata:
  name: by-hand
  namespace: by-hand
spec:
  flowId: by-hand
  owner: ops
  yaml: |
    jtype: Flow
    executors:
      - name: echo
        command: zeroflow-test-executor --port {port} --append -k
        jcloud:
          autoscale: {min: 0, max: 1}
";
