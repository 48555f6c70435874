//! `jc server --runtime kubernetes` on the real test cluster (Kubernetes' own API server,
//! controller manager and scheduler; `scripts/test-cluster.sh`). The server runs as the
//! ServiceAccount of `manifests/platform/` (impersonated), so every call it makes passes the
//! least-privilege RBAC an admin installs. These tests run it with `--no-controller` and play the
//! Flow controller's part themselves where they need one (writing a Flow's status), so that what
//! they check is the control plane: the objects it writes, the phases it reads back, who sees
//! what, removal, and adoption after a SIGKILL.

#[path = "server_common.rs"]
mod server_common;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use server_common::{Body, Server, free_port, jcloud};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use zeroflow_tests::cluster::{TestCluster, kubectl};
use zeroflow_tests::{temp_dir, wait_for, workspace_root};

/// The ServiceAccount `manifests/platform/20-rbac.yaml` makes for the control plane.
const SA_USER: &str = "system:serviceaccount:zeroflow-system:zeroflow";
const MANAGED: &str = "app.kubernetes.io/managed-by=zeroflow-api";
const DEADLINE: Duration = Duration::from_secs(120);

/// The admin kubeconfig, impersonating the control plane's ServiceAccount: what the server
/// does with it, RBAC allows the ServiceAccount.
fn service_account_kubeconfig(cluster: &TestCluster) -> PathBuf {
    let text = std::fs::read_to_string(cluster.kubeconfig_path()).expect("read the kubeconfig");
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("kubeconfig YAML");
    for u in doc["users"].as_sequence_mut().expect("users") {
        let user = u["user"].as_mapping_mut().expect("a user");
        user.insert("as".into(), SA_USER.into());
        user.insert(
            "as-groups".into(),
            serde_yaml_ng::to_value([
                "system:serviceaccounts",
                "system:serviceaccounts:zeroflow-system",
                "system:authenticated",
            ])
            .expect("groups"),
        );
    }
    let path = cluster.dir().join("zeroflow-sa.kubeconfig");
    std::fs::write(&path, serde_yaml_ng::to_string(&doc).expect("YAML")).expect("write");
    path
}

async fn client(kubeconfig: &Path) -> kube::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("kube client")
}

/// What an admin applies (`manifests/platform/`): the CRD, the namespace and the RBAC for real,
/// the control plane's Deployment, Service and volume as a server-side dry run (no image runs
/// here; the test runs `jc server` itself, as that ServiceAccount).
fn install_platform(cluster: &TestCluster) {
    let m = workspace_root().join("manifests/platform");
    let kc = cluster.kubeconfig_path();
    for f in ["crd.yaml", "10-namespace.yaml", "20-rbac.yaml"] {
        kubectl(
            &kc,
            &["apply", "--server-side", "-f", m.join(f).to_str().unwrap()],
        );
    }
    kubectl(
        &kc,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=120s",
            "crd/flows.zeroflow.dev",
        ],
    );
    let dry = kubectl(
        &kc,
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            m.join("30-control-plane.yaml").to_str().unwrap(),
        ],
    );
    assert!(dry.contains("deployment.apps/zeroflow"), "{dry}");
    let text = std::fs::read_to_string(m.join("30-control-plane.yaml")).unwrap();
    assert!(
        text.contains(&format!("image: zeroflow/jc:{}", env!("CARGO_PKG_VERSION"))),
        "the control plane's image is this version's"
    );
}

fn flow_api(client: &kube::Client, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("zeroflow.dev", "v1alpha1", "Flow"),
        "flows",
    );
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

fn start_server(data: &Path, kubeconfig: &Path) -> Server {
    Server::start_args(
        data,
        free_port(),
        &[("KUBECONFIG".to_string(), kubeconfig.display().to_string())],
        false,
        &["--runtime", "kubernetes", "--no-controller"],
    )
}

fn deploy(s: &Server, token: &str, yaml: &str) -> String {
    let (status, _, v) = s.call("POST", "/flows", Some(token), Some(Body::Spec(yaml.into())));
    assert_eq!(status, 201, "deploy: {v}");
    v["id"].as_str().expect("an id").to_string()
}

fn get(s: &Server, token: &str, id: &str) -> Value {
    let (status, _, v) = s.call("GET", &format!("/flows/{id}"), Some(token), None);
    assert_eq!(status, 200, "GET /flows/{id}: {v}");
    v
}

fn wait_api<T>(
    s: &Server,
    token: &str,
    id: &str,
    what: &str,
    f: impl Fn(&Value) -> Option<T>,
) -> T {
    wait_for(what, DEADLINE, || f(&get(s, token, id)))
}

const YAML: &str = "jtype: Flow\nwith:\n  protocol: [grpc, http]\nexecutors:\n  - name: enc\n    uses: docker://example/enc:1\n";

/// The SelfSubjectAccessReviews the control plane's ServiceAccount must pass, and some it must
/// fail (it is no cluster admin).
async fn check_rbac(sa: &kube::Client) {
    let allowed = |group: &str, resource: &str, sub: &str, verb: &str, ns: &str| {
        let sa = sa.clone();
        let (group, resource, sub, verb, ns) = (
            group.to_string(),
            resource.to_string(),
            sub.to_string(),
            verb.to_string(),
            ns.to_string(),
        );
        async move {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(group),
                        resource: Some(resource),
                        subresource: (!sub.is_empty()).then_some(sub),
                        verb: Some(verb),
                        namespace: (!ns.is_empty()).then_some(ns),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let r = Api::<SelfSubjectAccessReview>::all(sa)
                .create(&PostParams::default(), &review)
                .await
                .expect("SelfSubjectAccessReview");
            r.status.is_some_and(|s| s.allowed)
        }
    };
    let ns = "zf-any-flow";
    for (g, r, sub, verbs, ns) in [
        (
            "",
            "namespaces",
            "",
            "get list watch create patch delete",
            "",
        ),
        (
            "zeroflow.dev",
            "flows",
            "",
            "get list watch create update patch delete",
            ns,
        ),
        ("zeroflow.dev", "flows", "status", "get update patch", ns),
        ("", "secrets", "", "get list watch create patch delete", ns),
        ("", "configmaps", "", "create patch delete", ns),
        ("", "nodes", "", "get list", ""),
        (
            "apps",
            "deployments",
            "",
            "get list watch create patch delete",
            ns,
        ),
        ("apps", "deployments", "scale", "get update patch", ns),
        ("", "services", "", "create patch delete", ns),
        ("", "serviceaccounts", "", "create patch delete", ns),
        ("", "persistentvolumeclaims", "", "create patch delete", ns),
        (
            "policy",
            "poddisruptionbudgets",
            "",
            "create patch delete",
            ns,
        ),
        (
            "rbac.authorization.k8s.io",
            "roles",
            "",
            "create patch delete",
            ns,
        ),
        (
            "rbac.authorization.k8s.io",
            "rolebindings",
            "",
            "create patch",
            ns,
        ),
        ("", "pods", "", "get list watch", ns),
        ("", "pods", "log", "get", ns),
        ("discovery.k8s.io", "endpointslices", "", "list watch", ns),
    ] {
        for v in verbs.split(' ') {
            assert!(
                allowed(g, r, sub, v, ns).await,
                "the control plane's ServiceAccount may not {v} {g}/{r}/{sub}"
            );
        }
    }
    for (g, r, v) in [
        ("rbac.authorization.k8s.io", "roles", "escalate"),
        ("rbac.authorization.k8s.io", "roles", "bind"),
        ("rbac.authorization.k8s.io", "clusterrolebindings", "create"),
        ("rbac.authorization.k8s.io", "clusterroles", "create"),
        ("", "nodes", "delete"),
        ("", "pods", "create"),
        ("", "pods", "delete"),
        (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "delete",
        ),
    ] {
        assert!(
            !allowed(g, r, "", v, ns).await,
            "the control plane's ServiceAccount must not {v} {g}/{r}"
        );
    }
}

#[test]
fn kube_server_writes_flows_isolates_users_and_removes_namespaces() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(TestCluster::up()).expect("the test cluster");
    install_platform(&cluster);
    let sa_kc = service_account_kubeconfig(&cluster);
    let admin = cluster.client();
    rt.block_on(async { check_rbac(&client(&sa_kc).await).await });

    let data = temp_dir("kube-server-lifecycle-data");
    let s = start_server(&data, &sa_kc);
    let alice = s.token("alice");
    let bob = s.token("bob");

    // Deploy: a namespace of its own, labelled with the Flow and its owner, holding the Flow
    // resource with the YAML as sent.
    let id = deploy(&s, &alice, YAML);
    let ns_name = format!("zf-{id}");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let flows = flow_api(&admin, Some(&ns_name));
    let flow = wait_for("the Flow resource", DEADLINE, || {
        rt.block_on(flows.get_opt(&id)).expect("get Flow")
    });
    assert_eq!(flow.data["spec"]["flowId"], json!(id));
    assert_eq!(flow.data["spec"]["owner"], json!("alice"));
    assert_eq!(flow.data["spec"]["yaml"], json!(YAML));
    assert!(flow.data["spec"].get("paused").is_none(), "{flow:?}");
    let managers: Vec<String> = flow
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["zeroflow-api"]);
    let ns = rt
        .block_on(namespaces.get(&ns_name))
        .expect("the Flow's namespace");
    let labels = ns.metadata.labels.unwrap_or_default();
    assert_eq!(labels["zeroflow.dev/owner"], "alice");
    assert_eq!(labels["zeroflow.dev/flow"], id);
    assert_eq!(labels["app.kubernetes.io/managed-by"], "zeroflow-api");

    // Another user sees nothing of it.
    for (m, p) in [
        ("GET", format!("/flows/{id}")),
        ("DELETE", format!("/flows/{id}")),
        ("PUT", format!("/flows/{id}:pause")),
        ("GET", format!("/flows/{id}/executors/enc/logs")),
        ("GET", format!("/secrets/{id}")),
    ] {
        let (status, _, v) = s.call(m, &p, Some(&bob), None);
        assert_eq!(status, 404, "{m} {p} as bob: {v}");
    }
    let (_, _, v) = s.call("GET", "/flows", Some(&bob), None);
    assert_eq!(v["flows"], json!([]), "bob's list: {v}");

    // The phase, endpoints and replicas shown are the cluster's: what the controller writes in
    // the Flow's status, once it is for the spec as it stands.
    let status_of = |generation: i64, phase: &str, extra: Value| {
        let mut st = json!({"observedGeneration": generation, "phase": phase});
        for (k, v) in extra.as_object().unwrap() {
            st[k] = v.clone();
        }
        rt.block_on(flows.patch_status(
            &id,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": st })),
        ))
        .expect("write the Flow's status");
    };
    let generation = |rt: &tokio::runtime::Runtime| -> i64 {
        rt.block_on(flows.get(&id))
            .expect("get Flow")
            .metadata
            .generation
            .unwrap()
    };
    let g = generation(&rt);
    status_of(
        g,
        "Serving",
        json!({
            "endpoints": {"grpc": "grpc://198.18.0.1:30001", "http": "http://198.18.0.1:30002"},
            "executors": [{"name": "enc", "deployment": "exec-enc", "desiredReplicas": 1,
                           "readyReplicas": 1, "atZero": false}],
        }),
    );
    let v = wait_api(&s, &alice, &id, "Serving from the Flow's status", |v| {
        (v["status"]["phase"] == "Serving").then(|| v.clone())
    });
    assert_eq!(
        v["status"]["endpoints"],
        json!({"gateway": "grpc://198.18.0.1:30001", "gateway-http": "http://198.18.0.1:30002"})
    );
    assert_eq!(v["status"]["executors"][0]["readyReplicas"], json!(1));

    // Pause: spec.paused. The phase stays Serving until the controller reports the new
    // generation Paused.
    let (st, _, v) = s.call("PUT", &format!("/flows/{id}:pause"), Some(&alice), None);
    assert_eq!(st, 202, "{v}");
    wait_for("spec.paused", DEADLINE, || {
        let f = rt.block_on(flows.get(&id)).unwrap();
        (f.data["spec"]["paused"] == json!(true)).then_some(())
    });
    assert_eq!(get(&s, &alice, &id)["status"]["phase"], "Serving");
    status_of(generation(&rt), "Paused", json!({}));
    wait_api(&s, &alice, &id, "Paused", |v| {
        (v["status"]["phase"] == "Paused").then_some(())
    });

    // Resume and restart: paused off, and a new restartedAt each time (every pod replaced).
    let (st, _, v) = s.call("PUT", &format!("/flows/{id}:resume"), Some(&alice), None);
    assert_eq!(st, 202, "{v}");
    let first = wait_for("resumed", DEADLINE, || {
        let f = rt.block_on(flows.get(&id)).unwrap();
        (f.data["spec"].get("paused").is_none())
            .then(|| f.data["spec"]["restartedAt"].clone())
            .filter(|r| r.is_string())
    });
    let (st, _, v) = s.call("PUT", &format!("/flows/{id}:restart"), Some(&alice), None);
    assert_eq!(st, 202, "{v}");
    wait_for("a new restartedAt", DEADLINE, || {
        let f = rt.block_on(flows.get(&id)).unwrap();
        (f.data["spec"]["restartedAt"] != first).then_some(())
    });

    // A failure names the reason and the container's last lines.
    status_of(
        generation(&rt),
        "Failed",
        json!({"error": {"reason": "CrashLoopBackOff", "executor": "enc",
                         "message": "back-off restarting failed container",
                         "logTail": "ValueError: no model here"}}),
    );
    let v = wait_api(&s, &alice, &id, "Failed", |v| {
        (v["status"]["phase"] == "Failed").then(|| v.clone())
    });
    let err = v["error"].as_str().unwrap_or("");
    assert!(
        err.contains("CrashLoopBackOff") && err.contains("ValueError: no model here"),
        "{v}"
    );

    // Scale (a fixed count): the YAML in the Flow resource says so.
    let (st, _, v) = s.call(
        "PUT",
        &format!("/flows/{id}/executors/enc:scale?replicas=3"),
        Some(&alice),
        None,
    );
    assert_eq!(st, 202, "{v}");
    wait_for("replicas: 3 in spec.yaml", DEADLINE, || {
        let f = rt.block_on(flows.get(&id)).unwrap();
        f.data["spec"]["yaml"]
            .as_str()
            .is_some_and(|y| y.contains("replicas: 3"))
            .then_some(())
    });

    // `jc secret` + env_from_secret: a Kubernetes Secret in the Flow's namespace.
    let (st, _, v) = s.call(
        "POST",
        "/secrets",
        Some(&alice),
        Some(Body::Json(
            json!({"name": "Api_Creds", "id": id, "data": {"token": "s3cret"}}),
        )),
    );
    assert_eq!(st, 201, "{v}");
    let with_secret =
        format!("{YAML}    env_from_secret:\n      TOKEN: {{name: Api_Creds, key: token}}\n");
    let (st, _, v) = s.call(
        "PUT",
        &format!("/flows/{id}"),
        Some(&alice),
        Some(Body::Json(json!({ "spec": with_secret }))),
    );
    assert_eq!(st, 202, "{v}");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns_name);
    let secret = wait_for("the Secret", DEADLINE, || {
        rt.block_on(secrets.get_opt("api-creds")).unwrap()
    });
    assert_eq!(secret.data.unwrap()["token"].0, b"s3cret");

    // Recreate: a new Flow resource (a new uid), nothing else left of the old one.
    let old_uid = rt.block_on(flows.get(&id)).unwrap().metadata.uid;
    let (st, _, v) = s.call("PUT", &format!("/flows/{id}:recreate"), Some(&alice), None);
    assert_eq!(st, 202, "{v}");
    wait_for("a new Flow resource", DEADLINE, || {
        let f = rt.block_on(flows.get_opt(&id)).unwrap()?;
        (f.metadata.uid != old_uid).then_some(())
    });

    // Logs: by pod (none run here), and the control plane's events as the gateway's.
    let (st, _, v) = s.call(
        "GET",
        &format!("/flows/{id}/gateway/logs"),
        Some(&alice),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let events = v["logs"][format!("gateway-{id}")].as_str().unwrap_or("");
    assert!(events.contains("wrote Flow"), "{v}");

    // Remove: Deleted once the namespace is gone.
    let (st, _, v) = s.call("DELETE", &format!("/flows/{id}"), Some(&alice), None);
    assert_eq!(st, 200, "{v}");
    wait_api(&s, &alice, &id, "Deleted", |v| {
        (v["status"]["phase"] == "Deleted").then_some(())
    });
    assert!(
        rt.block_on(namespaces.get_opt(&ns_name)).unwrap().is_none(),
        "namespace {ns_name} is left after the Flow was reported Deleted"
    );
    s.stop();
}

#[test]
fn kube_server_killed_mid_deploy_adopts_the_cluster() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(TestCluster::up()).expect("the test cluster");
    install_platform(&cluster);
    let sa_kc = service_account_kubeconfig(&cluster);
    let admin = cluster.client();
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let all_flows = flow_api(&admin, None);

    let data = temp_dir("kube-server-adopt-data");
    let mut s = start_server(&data, &sa_kc);
    let alice = s.token("alice");
    let a = deploy(&s, &alice, YAML);
    wait_for("Flow A's resource", DEADLINE, || {
        rt.block_on(flow_api(&admin, Some(&format!("zf-{a}"))).get_opt(&a))
            .unwrap()
    });
    // B: killed the moment its deploy is acknowledged, before (or while) it writes the cluster.
    let b = deploy(&s, &alice, YAML);
    s.kill();

    // While it is down: A's Flow resource goes (as if the server had died before writing it),
    // and a namespace of a Flow the store never had appears.
    let fa = flow_api(&admin, Some(&format!("zf-{a}")));
    rt.block_on(fa.delete(&a, &DeleteParams::default()))
        .expect("delete A's Flow");
    let orphan = "zf-orphan-0000";
    let orphan_ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": orphan, "labels": {
            "app.kubernetes.io/managed-by": "zeroflow-api", "zeroflow.dev/flow": "orphan-0000"}}
    }))
    .unwrap();
    rt.block_on(namespaces.create(&PostParams::default(), &orphan_ns))
        .expect("make the orphan namespace");
    rt.block_on(
        flow_api(&admin, Some(orphan)).create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "zeroflow.dev/v1alpha1", "kind": "Flow",
                "metadata": {"name": "orphan-0000", "labels": {"app.kubernetes.io/managed-by": "zeroflow-api"}},
                "spec": {"flowId": "orphan-0000", "owner": "mallory", "yaml": YAML}
            }))
            .unwrap(),
        ),
    )
    .expect("make the orphan Flow");

    // Restarted: one Flow resource per record, in its namespace; the orphan gone.
    let s = Server::start_args(
        &data,
        s.port,
        &[("KUBECONFIG".to_string(), sa_kc.display().to_string())],
        false,
        &["--runtime", "kubernetes", "--no-controller"],
    );
    let lp = ListParams::default().labels(MANAGED);
    wait_for("the cluster to hold exactly A and B", DEADLINE, || {
        let flows = rt.block_on(all_flows.list(&lp)).unwrap();
        let mut ids: Vec<(String, String)> = flows
            .iter()
            .map(|f| {
                (
                    f.metadata.namespace.clone().unwrap_or_default(),
                    f.data["spec"]["flowId"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        ids.sort();
        let mut want = vec![
            (format!("zf-{a}"), a.clone()),
            (format!("zf-{b}"), b.clone()),
        ];
        want.sort();
        let nss = rt.block_on(namespaces.list(&lp)).unwrap();
        let mut names: Vec<String> = nss.iter().filter_map(|n| n.metadata.name.clone()).collect();
        names.sort();
        let mut want_ns = vec![format!("zf-{a}"), format!("zf-{b}")];
        want_ns.sort();
        (ids == want && names == want_ns).then_some(())
    });
    for id in [&a, &b] {
        let v = get(&s, &alice, id);
        assert_ne!(v["status"]["phase"], "Failed", "{v}");
    }
    // And it still serves requests on them: removing B leaves only A.
    let (st, _, v) = s.call("DELETE", &format!("/flows/{b}"), Some(&alice), None);
    assert_eq!(st, 200, "{v}");
    wait_api(&s, &alice, &b, "B Deleted", |v| {
        (v["status"]["phase"] == "Deleted").then_some(())
    });
    assert!(
        rt.block_on(namespaces.get_opt(&format!("zf-{b}")))
            .unwrap()
            .is_none()
    );
    s.stop();
}

const RUNNING: &str = "jtype: Flow\nexecutors:\n  - name: echo\n    command: zeroflow-test-executor --append=-k\n  - name: lazy\n    command: zeroflow-test-executor --append=-z\n    jcloud:\n      autoscale:\n        min: 0\n        max: 2\n";

const CRASHING: &str = "jtype: Flow\nexecutors:\n  - name: bad\n    command: [sh, -c, \"echo boom-from-the-executor; exit 3\"]\n";

/// With the Flow controller in the server (as the manifests run it): a deployed Flow serves on
/// the cluster, its phase, endpoint and replicas come from there, its pods' logs come through
/// the API, a crash-looping Executor shows its reason and last lines, and remove leaves nothing.
#[test]
fn kube_server_runs_flows_with_its_controller() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(TestCluster::up()).expect("the test cluster");
    install_platform(&cluster);
    let sa_kc = service_account_kubeconfig(&cluster);
    let admin = cluster.client();
    let namespaces: Api<Namespace> = Api::all(admin.clone());

    let data = temp_dir("kube-server-controller-data");
    let s = Server::start_args(
        &data,
        free_port(),
        &[("KUBECONFIG".to_string(), sa_kc.display().to_string())],
        false,
        &["--runtime", "kubernetes"],
    );
    let alice = s.token("alice");
    let crash = deploy(&s, &alice, CRASHING);
    // The public jcloud client, unchanged: it deploys and waits until the Flow is Serving.
    let proj = data.join("project");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("flow.yml"), RUNNING).unwrap();
    let (ok, out) = jcloud(&s, &alice, &proj, &["flow", "deploy", "flow.yml"]);
    assert!(ok && out.contains("Flow is available"), "{out}");
    let (_, _, listed) = s.call("GET", "/flows", Some(&alice), None);
    let id = listed["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["id"].as_str())
        .find(|i| *i != crash)
        .unwrap_or_else(|| panic!("the deployed Flow in {listed}"))
        .to_string();
    let (ok, out) = jcloud(&s, &alice, &proj, &["flow", "status", &id]);
    assert!(ok && out.contains("Serving"), "{out}");

    let v = wait_for("the Flow Serving", Duration::from_secs(300), || {
        let v = get(&s, &alice, &id);
        assert_ne!(v["status"]["phase"], "Failed", "{v}");
        (v["status"]["phase"] == "Serving").then_some(v)
    });
    let execs = v["status"]["executors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let of = |name: &str| {
        execs
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {v}"))
    };
    assert_eq!(of("echo")["readyReplicas"], json!(1), "{v}");
    assert_eq!(of("lazy")["atZero"], json!(true), "{v}");
    let grpc = v["status"]["endpoints"]["gateway"]
        .as_str()
        .unwrap_or_else(|| panic!("no gateway endpoint: {v}"))
        .to_string();

    // The endpoint answers, through the gateway pod to the Executor pod.
    let texts = rt.block_on(async {
        let mut c = zeroflow_tests::load::client(&grpc).await;
        let answer = tokio::time::timeout(
            DEADLINE,
            c.process_single_data(zeroflow_tests::load::text_request("via-server", &["hi"])),
        )
        .await
        .expect("an answer within the deadline")
        .expect("a gRPC answer")
        .into_inner();
        zeroflow_tests::load::doc_texts(&answer)
    });
    assert!(texts[0].starts_with("hi-k"), "{texts:?}");

    // Logs by pod: the Executor's pod, and the gateway's beside the server's events.
    let (st, _, v) = s.call(
        "GET",
        &format!("/flows/{id}/executors/echo/logs"),
        Some(&alice),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let logs = v["logs"].as_object().cloned().unwrap_or_default();
    assert!(
        logs.keys().any(|k| k.starts_with("exec-echo-")),
        "the Executor's pod in its logs: {v}"
    );
    let (st, _, v) = s.call(
        "GET",
        &format!("/flows/{id}/gateway/logs"),
        Some(&alice),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let logs = v["logs"].as_object().cloned().unwrap_or_default();
    assert!(logs.contains_key(&format!("gateway-{id}")), "{v}");
    assert!(
        logs.keys()
            .any(|k| k.starts_with("gateway-") && k != &format!("gateway-{id}")),
        "the gateway's pod in its logs: {v}"
    );

    // A project folder, deployed with our `jc`: no image is built; the Executor's shim fetches
    // the archive from this server (the URL, digest and token the server gave the Flow) before
    // it starts, so Serving means it got and checked it.
    let pdir = data.join("project-folder");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(
        pdir.join("flow.yml"),
        "jtype: Flow\nexecutors:\n  - name: proj\n    command: zeroflow-test-executor --append=-p\n",
    )
    .unwrap();
    std::fs::write(pdir.join("notes.txt"), "part of the project\n").unwrap();
    let out = Command::new(zeroflow_tests::bin("jc"))
        .args(["flow", "deploy"])
        .arg(&pdir)
        .env("JCLOUD_API", s.url())
        .env("JINA_AUTH_TOKEN", &alice)
        .output()
        .expect("run jc flow deploy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "jc flow deploy DIR: {text}");
    let (_, _, listed) = s.call("GET", "/flows", Some(&alice), None);
    let project_flow = listed["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["id"].as_str())
        .find(|i| *i != crash && *i != id)
        .unwrap_or_else(|| panic!("the project Flow in {listed}"))
        .to_string();
    assert_eq!(get(&s, &alice, &project_flow)["status"]["phase"], "Serving");
    let flow = rt
        .block_on(flow_api(&admin, Some(&format!("zf-{project_flow}"))).get(&project_flow))
        .unwrap();
    let digest = flow.data["spec"]["project"]["digest"]
        .as_str()
        .unwrap_or("");
    assert!(digest.starts_with("sha256:"), "{:?}", flow.data["spec"]);
    let url = flow.data["spec"]["project"]["url"].as_str().unwrap_or("");
    assert_eq!(url, format!("{}v1/artifacts/{digest}", s.url()));
    let (_, _, v) = s.call(
        "GET",
        &format!("/flows/{project_flow}/executors/proj/logs"),
        Some(&alice),
        None,
    );
    // The node's project cache outlives a cluster (as a node's disk does): a project with the
    // same digest, from an earlier run, is reused instead of fetched again.
    let logs = v.to_string();
    assert!(
        logs.contains("unpacked in") || logs.contains(&format!("project {}", &digest[..19])),
        "{v}"
    );
    let (st, _, v) = s.call(
        "DELETE",
        &format!("/flows/{project_flow}"),
        Some(&alice),
        None,
    );
    assert_eq!(st, 200, "{v}");

    // A crash-looping Executor: Failed, naming the reason and its last lines.
    let v = wait_for("the crashing Flow Failed", Duration::from_secs(300), || {
        let v = get(&s, &alice, &crash);
        (v["status"]["phase"] == "Failed").then_some(v)
    });
    let err = v["error"].as_str().unwrap_or("");
    assert!(
        err.contains("CrashLoopBackOff") && err.contains("boom-from-the-executor"),
        "{v}"
    );

    // Remove: nothing of either Flow is left.
    let (ok, out) = jcloud(&s, &alice, &proj, &["flow", "remove", &id]);
    assert!(ok, "{out}");
    let (st, _, v) = s.call("DELETE", &format!("/flows/{crash}"), Some(&alice), None);
    assert_eq!(st, 200, "{v}");
    for f in [&id, &crash] {
        wait_for("Deleted", Duration::from_secs(300), || {
            (get(&s, &alice, f)["status"]["phase"] == "Deleted").then_some(())
        });
        assert!(
            rt.block_on(namespaces.get_opt(&format!("zf-{f}")))
                .unwrap()
                .is_none()
        );
    }
    s.stop();
}
