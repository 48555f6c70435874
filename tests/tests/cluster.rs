//! The test cluster works as a cluster: Kubernetes' own API server, controller manager and
//! scheduler above the test node agent. A Deployment becomes ready pods behind a NodePort and an
//! EndpointSlice, logs come back through the API server, scaling to zero stops the processes,
//! a failing container crash-loops as Kubernetes reports it, and RBAC is real (for a token from
//! the TokenRequest API, and for a pod's own ServiceAccount).
//!
//! Needs `bash scripts/setup-kube.sh` and `cargo build --workspace --bins` first.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{ListParams, LogParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use zeroflow_tests::cluster::TestCluster;
use zeroflow_tests::{pid_alive, wait_until};

const NS: &str = "smoke";

fn apply(v: &serde_json::Value) -> Patch<&serde_json::Value> {
    Patch::Apply(v)
}

fn ssa() -> PatchParams {
    PatchParams::apply("zeroflow-tests").force()
}

/// One HTTP/1.0 GET; the status code and the body.
async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {out:?}"))?;
    Ok((code, out))
}

fn forbidden<T>(r: kube::Result<T>) -> bool {
    matches!(r, Err(kube::Error::Api(e)) if e.code == 403)
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The process group of each container (the agent reports it in `containerID`).
fn container_pids(p: &Pod) -> Vec<u32> {
    p.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.container_id.as_deref())
        .filter_map(|id| id.strip_prefix("zeroflow-test-node://"))
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_cluster_runs_deployments_services_logs_crashloops_and_rbac() -> Result<()> {
    let cluster = TestCluster::up().await?;
    let client = cluster.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            NS,
            &ssa(),
            &apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})),
        )
        .await?;

    // --- a Deployment of two ready pods behind a NodePort ----------------------------------
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let web = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "web",
                    "image": "python:3 (ignored by the test node)",
                    "command": ["python3", "-m", "http.server", "$(PORT)", "--bind", "$(POD_IP)"],
                    "env": [
                        {"name": "PORT", "value": "8000"},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    ],
                    "ports": [{"name": "http", "containerPort": 8000}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                }]},
            },
        },
    });
    deployments.patch("web", &ssa(), &apply(&web)).await?;
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    });
    services.patch("web", &ssa(), &apply(&svc)).await?;

    let web_pods = wait_until("2 ready web pods", Duration::from_secs(120), || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        let ready: Vec<Pod> = list.items.into_iter().filter(is_ready).collect();
        (ready.len() == 2).then_some(ready)
    })
    .await?;
    let mut ips: Vec<String> = web_pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 2, "each pod has its own address: {ips:?}");
    let pids: Vec<u32> = web_pods.iter().flat_map(container_pids).collect();
    assert_eq!(pids.len(), 2, "one process per pod: {pids:?}");
    assert!(pids.iter().all(|p| pid_alive(*p)), "processes {pids:?} run");

    wait_until(
        "an EndpointSlice with 2 ready endpoints",
        Duration::from_secs(60),
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .ok()?;
            let mut ready: Vec<String> = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .flat_map(|e| e.addresses.clone())
                .collect();
            ready.sort();
            (ready == ips).then_some(())
        },
    )
    .await?;

    let node_port = services
        .get("web")
        .await?
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.first().and_then(|p| p.node_port))
        .context("the Service has a nodePort")?;
    let addr = format!("{}:{node_port}", cluster.node_ip());
    let (code, _) = wait_until(
        "an answer through the NodePort",
        Duration::from_secs(60),
        || async { http_get(&addr, "/").await.ok() },
    )
    .await?;
    assert_eq!(code, 200, "GET / through NodePort {addr}");
    // Round robin: four requests reach both pods.
    for i in 0..4 {
        http_get(&addr, &format!("/round-robin-{i}")).await?;
    }

    // --- logs through the API server (the agent's logs server behind it) -------------------
    let mut hits = 0;
    for p in &web_pods {
        let name = p.metadata.name.as_deref().unwrap_or_default();
        let logs = wait_until(
            "the request in the pod's log",
            Duration::from_secs(30),
            || async {
                let l = pods.logs(name, &LogParams::default()).await.ok()?;
                l.contains("GET /round-robin-").then_some(l)
            },
        )
        .await?;
        hits += logs.matches("GET /round-robin-").count();
        let tail = pods
            .logs(
                name,
                &LogParams {
                    tail_lines: Some(1),
                    ..Default::default()
                },
            )
            .await?;
        assert_eq!(
            tail.lines().count(),
            1,
            "tailLines=1 gives one line: {tail:?}"
        );
    }
    assert_eq!(
        hits, 4,
        "every request through the NodePort was answered by one of the pods"
    );

    // --- scale to zero through the scale subresource ---------------------------------------
    deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    wait_until(
        "the web pods to be gone",
        Duration::from_secs(90),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            list.items.is_empty().then_some(())
        },
    )
    .await?;
    assert!(
        pids.iter().all(|p| !pid_alive(*p)),
        "the pods' processes are gone: {:?}",
        pids.iter().filter(|p| pid_alive(**p)).collect::<Vec<_>>()
    );
    wait_until(
        "the EndpointSlice to be empty",
        Duration::from_secs(60),
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .ok()?;
            list.items
                .iter()
                .all(|s| s.endpoints.as_ref().is_none_or(Vec::is_empty))
                .then_some(())
        },
    )
    .await?;

    // --- a failing container crash-loops ----------------------------------------------------
    let crash = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crash"},
        "spec": {"containers": [{
            "name": "crash", "image": "ignored",
            "command": ["sh", "-c", "echo failing on purpose; exit 1"],
        }]},
    });
    pods.patch("crash", &ssa(), &apply(&crash)).await?;
    let status = wait_until("CrashLoopBackOff", Duration::from_secs(90), || async {
        let p = pods.get("crash").await.ok()?;
        let s = p.status?.container_statuses?.into_iter().next()?;
        let waiting = s.state.as_ref()?.waiting.as_ref()?.reason.as_deref()? == "CrashLoopBackOff";
        (waiting && s.restart_count > 0).then_some(s)
    })
    .await?;
    let last = status
        .last_state
        .and_then(|s| s.terminated)
        .context("lastState.terminated")?;
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    let previous = pods
        .logs(
            "crash",
            &LogParams {
                previous: true,
                ..Default::default()
            },
        )
        .await?;
    assert!(
        previous.contains("failing on purpose"),
        "previous log: {previous:?}"
    );

    // --- RBAC is real ------------------------------------------------------------------------
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let roles: Api<Role> = Api::namespaced(client.clone(), NS);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), NS);
    sas.patch(
        "reader",
        &ssa(),
        &apply(
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}),
        ),
    )
    .await?;
    roles
        .patch(
            "get-pods",
            &ssa(),
            &apply(&json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "get-pods"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
            })),
        )
        .await?;
    bindings
        .patch("reader-get-pods", &ssa(), &apply(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "reader-get-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "get-pods"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}],
        })))
        .await?;
    let token = sas
        .create_token_request(
            "reader",
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec::default()),
                ..Default::default()
            },
        )
        .await?
        .status
        .and_then(|s| s.token)
        .context("a token")?;
    let reader = cluster.client_with_token(&token).await?;
    let reader_pods: Api<Pod> = Api::namespaced(reader.clone(), NS);
    reader_pods
        .get("crash")
        .await
        .context("the reader may get a pod")?;
    assert!(
        forbidden(
            Api::<Deployment>::namespaced(reader.clone(), NS)
                .list(&ListParams::default())
                .await
        ),
        "the reader may not list deployments"
    );
    assert!(
        forbidden(reader_pods.list(&ListParams::default()).await),
        "the reader may not list pods"
    );

    // A pod's processes act as its ServiceAccount (KUBECONFIG with its bound token).
    let script = r#"
import base64, json, os, ssl, tempfile, urllib.error, urllib.request
k = json.load(open(os.environ["KUBECONFIG"]))
c = k["clusters"][0]["cluster"]
token = open(k["users"][0]["user"]["tokenFile"]).read()
ca = tempfile.NamedTemporaryFile(delete=False, suffix=".crt")
ca.write(base64.b64decode(c["certificate-authority-data"]))
ca.close()
tls = ssl.create_default_context(cafile=ca.name)
ns, me = os.environ["NS"], os.environ["ME"]
for name, path in [("get-pod", "/api/v1/namespaces/%s/pods/%s" % (ns, me)),
                   ("list-deployments", "/apis/apps/v1/namespaces/%s/deployments" % ns)]:
    req = urllib.request.Request(c["server"] + path, headers={"Authorization": "Bearer " + token})
    try:
        code = urllib.request.urlopen(req, context=tls).status
    except urllib.error.HTTPError as e:
        code = e.code
    print(name, code, flush=True)
"#;
    let whoami = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "whoami"},
        "spec": {
            "serviceAccountName": "reader",
            "restartPolicy": "Never",
            "containers": [{
                "name": "whoami", "image": "ignored",
                "command": ["python3", "-c", script],
                "env": [
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
            }],
        },
    });
    pods.patch("whoami", &ssa(), &apply(&whoami)).await?;
    let phase = wait_until(
        "the whoami pod to finish",
        Duration::from_secs(90),
        || async {
            let phase = pods.get("whoami").await.ok()?.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await?;
    let out = pods.logs("whoami", &LogParams::default()).await?;
    assert_eq!(phase, "Succeeded", "whoami output: {out}");
    assert!(
        out.contains("get-pod 200"),
        "the pod's ServiceAccount may get its pod: {out}"
    );
    assert!(
        out.contains("list-deployments 403"),
        "the pod's ServiceAccount may not list deployments: {out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_their_environment_init_containers_and_grace_period() -> Result<()> {
    let cluster = TestCluster::up().await?;
    let client = cluster.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let objects = [
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"},
               "data": {"A": "from-cm"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"},
               "stringData": {"PASS": "s3cret"}}),
    ];
    for o in &objects {
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let kind = o["kind"].as_str().unwrap_or_default();
        let ar = kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        let ar = if kind == "Secret" {
            kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&())
        } else {
            ar
        };
        Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), "default", &ar)
            .patch(name, &ssa(), &apply(o))
            .await?;
    }

    // An init container runs to completion first (in the pod's folder, the default working
    // dir); the container's environment comes from envFrom, secretKeyRef, fieldRef and
    // earlier variables, and `$(VAR)` in its command line is expanded as Kubernetes does.
    let env_pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "env"},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{"name": "init", "image": "ignored",
                                "command": ["sh", "-c", "echo init ran > init-marker"]}],
            "containers": [{
                "name": "main", "image": "ignored",
                "command": ["sh", "-c",
                    "cat init-marker; echo \"A=$A CM_A=$CM_A PASS=$PASS IP=$POD_IP X=$(X) ESC=\\$$(X) KUBECONFIG=${KUBECONFIG:+set}\""],
                "envFrom": [{"configMapRef": {"name": "cm"}},
                            {"prefix": "CM_", "configMapRef": {"name": "cm"}}],
                "env": [
                    {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "X", "value": "x-$(NAME)"},
                    {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "PASS"}}},
                ],
            }],
        },
    });
    pods.patch("env", &ssa(), &apply(&env_pod)).await?;
    let pod = wait_until("the env pod to finish", Duration::from_secs(90), || async {
        let p = pods.get("env").await.ok()?;
        let phase = p.status.as_ref()?.phase.clone()?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(p)
    })
    .await?;
    let out = pods.logs("env", &LogParams::default()).await?;
    let status = pod.status.context("status")?;
    assert_eq!(status.phase.as_deref(), Some("Succeeded"), "output: {out}");
    let ip = status.pod_ip.context("podIP")?;
    assert_eq!(
        out,
        format!(
            "init ran\nA=from-cm CM_A=from-cm PASS=s3cret IP={ip} X=x-env ESC=$(X) KUBECONFIG=set\n"
        )
    );
    let init = status
        .init_container_statuses
        .and_then(|s| s.into_iter().next())
        .and_then(|s| s.state?.terminated)
        .context("the init container terminated")?;
    assert_eq!(
        (init.exit_code, init.reason.as_deref()),
        (0, Some("Completed"))
    );

    // A process that ignores SIGTERM is killed when the grace period ends, then the pod is
    // removed.
    let stubborn = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "stubborn"},
        "spec": {
            "terminationGracePeriodSeconds": 3,
            "containers": [{"name": "main", "image": "ignored",
                "command": ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]}],
        },
    });
    pods.patch("stubborn", &ssa(), &apply(&stubborn)).await?;
    let pod = wait_until(
        "the stubborn pod to run",
        Duration::from_secs(90),
        || async {
            let p = pods.get("stubborn").await.ok()?;
            let running = p.status.as_ref()?.phase.as_deref() == Some("Running");
            running.then_some(p)
        },
    )
    .await?;
    let pid = *container_pids(&pod).first().context("a process")?;
    let asked = Instant::now();
    pods.delete("stubborn", &Default::default()).await?;
    wait_until(
        "the stubborn pod to be removed",
        Duration::from_secs(60),
        || async { pods.get_opt("stubborn").await.ok()?.is_none().then_some(()) },
    )
    .await?;
    let took = asked.elapsed();
    assert!(!pid_alive(pid), "the process {pid} is gone");
    assert!(
        took >= Duration::from_millis(2500),
        "the process had its 3 s grace period, not {took:?}"
    );
    Ok(())
}
