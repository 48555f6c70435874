//! Knative Services against a real Kubernetes API server: registers Knative's own Service CRD
//! (`serving.knative.dev/v1`, from the knative/serving repository) on Kubernetes' own
//! `kube-apiserver` and checks that it stores a valid Service and refuses invalid ones by field
//! name. Needs `bash scripts/setup-kube.sh` (scripts/test.sh runs it).

use serde_json::json;
use zeroflow_tests::apiserver::ApiServer;

/// A small Knative Service of the shape the platform renders.
fn service(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "zeroflow"}},
        "spec": {"template": {
            "metadata": {"annotations": {
                "autoscaling.knative.dev/min-scale": "0",
                "autoscaling.knative.dev/max-scale": "5",
                "autoscaling.knative.dev/target": "10",
                "autoscaling.knative.dev/metric": "concurrency",
            }},
            "spec": {
                "containerConcurrency": 10,
                "containers": [{
                    "name": "executor",
                    "image": "registry.example/zeroflow/executor:0.1.0",
                    "ports": [{"name": "h2c", "containerPort": 8080}],
                }],
            },
        }},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knative_service_crd_validates_services() {
    let (server, ksvc) = ApiServer::with_knative_services()
        .await
        .expect("an API server with Knative's Service CRD");
    assert_eq!(ksvc.api_version, "serving.knative.dev/v1");
    assert_eq!(ksvc.kind, "Service");

    // apply_strict creates the namespace first, as the server requires.
    let ns = "zeroflow-users";
    let stored = server
        .apply_strict(&ksvc, Some(ns), service("hello"))
        .await
        .expect("a valid Knative Service is accepted");
    assert_eq!(stored["metadata"]["namespace"], ns);
    assert_eq!(stored["metadata"]["name"], "hello");
    assert!(
        stored["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty()),
        "stored objects get a uid: {stored:#}"
    );
    let template = &stored["spec"]["template"];
    assert_eq!(template["spec"]["containerConcurrency"], 10);
    assert_eq!(
        template["spec"]["containers"][0]["image"],
        "registry.example/zeroflow/executor:0.1.0"
    );
    // The schema's defaults are applied: the returned object is what the server stored.
    assert_eq!(
        template["spec"]["containers"][0]["ports"][0],
        json!({"name": "h2c", "containerPort": 8080, "protocol": "TCP"})
    );
    assert_eq!(
        template["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"],
        "5"
    );
    assert_eq!(
        template["metadata"]["annotations"]["autoscaling.knative.dev/metric"],
        "concurrency"
    );
    let managers: Vec<&str> = stored["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().filter_map(|f| f["manager"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        managers.contains(&"zeroflow"),
        "server-side apply as the field manager zeroflow: {managers:?}"
    );

    // It is really stored: a plain GET with another client returns it.
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(server.client(), ns, &ksvc);
    let got = api.get("hello").await.expect("get the stored Service");
    assert_eq!(
        got.metadata.uid.as_deref(),
        stored["metadata"]["uid"].as_str()
    );

    // A wrongly typed value: refused, naming the field.
    let mut wrong_type = service("wrong-type");
    wrong_type["spec"]["template"]["spec"]["containerConcurrency"] = json!("lots");
    let err = server
        .apply_strict(&ksvc, Some(ns), wrong_type)
        .await
        .expect_err("containerConcurrency: \"lots\" must be refused");
    let msg = format!("{err:#}");
    println!("wrong type refused: {msg}");
    assert!(
        msg.contains("containerConcurrency"),
        "the error names the field: {msg}"
    );

    // An unknown field: refused under Strict validation (not silently pruned), naming it.
    let mut unknown = service("unknown-field");
    unknown["spec"]["template"]["spec"]["replicasPlease"] = json!(3);
    let err = server
        .apply_strict(&ksvc, Some(ns), unknown)
        .await
        .expect_err("an unknown field under spec.template.spec must be refused");
    let msg = format!("{err:#}");
    println!("unknown field refused: {msg}");
    assert!(
        msg.contains("replicasPlease"),
        "the error names the field: {msg}"
    );

    // A schema rule (containers is required): refused by the OpenAPI validation, naming it.
    let mut no_containers = service("no-containers");
    no_containers["spec"]["template"]["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("containers");
    let err = server
        .apply_strict(&ksvc, Some(ns), no_containers)
        .await
        .expect_err("a template without containers must be refused");
    let msg = format!("{err:#}");
    println!("missing required field refused: {msg}");
    assert!(
        msg.contains("spec.template.spec.containers"),
        "the error names the field: {msg}"
    );

    // No refused object was stored.
    for name in ["wrong-type", "unknown-field", "no-containers"] {
        assert!(
            api.get_opt(name).await.expect("get").is_none(),
            "{name} must not be stored"
        );
    }
}
