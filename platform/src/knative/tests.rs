//! The export against Knative's own Service CRD schema, on every good spec of the spec crate's
//! golden folder, and the mapping of `jcloud.autoscale` to Knative's annotations.

use super::*;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(yaml: &str) -> Flow {
    zeroflow_spec::load(yaml, &zeroflow_spec::Source::default())
        .expect("loads")
        .flow
}

fn opts() -> KnativeOptions {
    KnativeOptions {
        namespace: None,
        default_name: "flow".into(),
        zeroflow_image: "zeroflow/zeroflow:test".into(),
        jina_image: "jinaai/jina:3.34.0-py311-standard".into(),
        images: BTreeMap::new(),
    }
}

/// Knative's structural schema as a JSON Schema that refuses what the API server refuses with
/// `fieldValidation=Strict`: unknown fields (where the schema does not preserve them), and
/// int-or-string fields of any other type.
fn strict(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                out.insert(k.clone(), strict(v));
            }
            if m.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
                out.remove("type");
                out.insert(
                    "anyOf".into(),
                    json!([{ "type": "integer" }, { "type": "string" }]),
                );
            }
            if m.contains_key("properties")
                && !m.contains_key("additionalProperties")
                && m.get("x-kubernetes-preserve-unknown-fields") != Some(&json!(true))
            {
                out.insert("additionalProperties".into(), json!(false));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(strict).collect()),
        other => other.clone(),
    }
}

fn service_schema() -> jsonschema::Validator {
    let path = workspace().join("../shared/data/knative/service-crd.yaml");
    let text = std::fs::read_to_string(&path).expect("Knative's Service CRD in ../shared");
    let crd: Value = serde_yaml_ng::from_str(&text).expect("CRD YAML");
    let version = crd["spec"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|v| v["name"] == "v1")
        .expect("v1");
    let schema = strict(&version["schema"]["openAPIV3Schema"]);
    jsonschema::draft4::new(&schema).expect("the CRD's schema compiles")
}

fn check_services(objects: &[Value], schema: &jsonschema::Validator) -> usize {
    let mut n = 0;
    for o in objects.iter().filter(|o| o["kind"] == "Service") {
        let errors: Vec<String> = schema
            .iter_errors(o)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            o["metadata"]["name"],
            errors.join("\n")
        );
        let name = o["metadata"]["name"].as_str().expect("name");
        assert!(name.len() <= SERVICE_NAME_MAX, "{name}");
        n += 1;
    }
    n
}

#[test]
fn every_golden_flow_renders_services_that_knatives_schema_accepts() {
    let schema = service_schema();
    let dir = workspace().join("spec/tests/specs/good");
    let mut rendered = 0;
    let mut refused = vec![];
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    for path in files {
        let yaml = std::fs::read_to_string(&path).expect("read");
        let source = zeroflow_spec::Source {
            name: path.display().to_string(),
            env: [("USER".to_string(), "me".to_string())].into(),
            ..Default::default()
        };
        let Ok(loaded) = zeroflow_spec::load(&yaml, &source) else {
            continue; // some need their folder's .env; the golden test covers them
        };
        let mut o = opts();
        for e in &loaded.flow.executors {
            o.images
                .insert(e.name.clone(), format!("registry.local/{}", e.name));
        }
        match render(&loaded.flow, &yaml, &o) {
            Ok(export) => {
                assert!(check_services(&export.objects, &schema) >= 1, "{path:?}");
                rendered += 1;
            }
            Err(e) => refused.push((path.file_name().unwrap().to_owned(), e.to_string())),
        }
    }
    assert!(
        refused.is_empty() && rendered >= 25,
        "rendered {rendered}, refused {refused:#?}"
    );
}

#[test]
fn autoscale_maps_to_knative_annotations() {
    let flow = load(
        r#"
jtype: Flow
executors:
  - name: Encoder_1
    jcloud:
      autoscale: {min: 0, max: 4, metric: rps, target: 12, scale_down_delay: 2m, stable_window: 20s, revision_timeout: 90}
  - name: ranker
    jcloud:
      autoscale: {min: 1, max: 3, metric: cpu, target: 70}
      resources: {instance: C3}
      expose: true
  - name: fixed
    replicas: 3
"#,
    );
    let export = render(&flow, "", &opts()).expect("renders");
    check_services(&export.objects, &service_schema());
    let svc = |name: &str| {
        export
            .objects
            .iter()
            .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Service {name}"))
            .clone()
    };
    let enc = svc("encoder-1");
    let a = &enc["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        a["autoscaling.knative.dev/class"],
        "kpa.autoscaling.knative.dev"
    );
    assert_eq!(a["autoscaling.knative.dev/metric"], "rps");
    assert_eq!(a["autoscaling.knative.dev/target"], "12");
    assert_eq!(a["autoscaling.knative.dev/min-scale"], "0");
    assert_eq!(a["autoscaling.knative.dev/max-scale"], "4");
    assert_eq!(a["autoscaling.knative.dev/scale-down-delay"], "120s");
    assert_eq!(a["autoscaling.knative.dev/window"], "20s");
    assert_eq!(enc["spec"]["template"]["spec"]["timeoutSeconds"], 90);
    let c = &enc["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "jinaai/jina:3.34.0-py311-standard");
    assert_eq!(c["ports"][0], json!({"name": "h2c", "containerPort": 8080}));
    let cmd: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        &cmd[..3],
        ["/zeroflow/zeroflow-shim", "--executor", "Encoder_1"]
    );
    let jina = cmd.iter().position(|a| *a == "--").unwrap();
    assert_eq!(
        &cmd[jina + 1..jina + 5],
        ["jina", "executor", "--uses", "BaseExecutor"]
    );

    let ranker = svc("ranker");
    let a = &ranker["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        a["autoscaling.knative.dev/class"],
        "hpa.autoscaling.knative.dev"
    );
    assert_eq!(a["autoscaling.knative.dev/metric"], "cpu");
    assert!(a.get("autoscaling.knative.dev/window").is_none(), "{a}");
    let r = &ranker["spec"]["template"]["spec"]["containers"][0]["resources"];
    let c3 = &flow.executors[1].jcloud.resources.instance;
    assert_eq!(c3.name, "C3");
    let cpu = format!("{}m", (c3.cpu * 1000.0).round());
    assert_eq!(r["requests"]["cpu"], json!(cpu), "{r}");
    assert_eq!(r["limits"]["cpu"], json!(cpu), "{r}");
    let mem = format!("{}Mi", (c3.memory_gib * 1024.0).round());
    assert_eq!(r["limits"]["memory"], json!(mem), "{r}");

    // Executors are reachable inside the cluster only, unless they say `expose`; the gateway is
    // public.
    let vis = |o: &Value| o["metadata"]["labels"]["networking.knative.dev/visibility"].clone();
    assert_eq!(vis(&enc), json!("cluster-local"));
    assert_eq!(vis(&svc("gateway")), Value::Null);
    assert_eq!(vis(&svc("ranker")), Value::Null, "ranker says expose");

    let fixed = svc("fixed");
    let a = &fixed["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(a["autoscaling.knative.dev/min-scale"], "3");
    assert_eq!(a["autoscaling.knative.dev/max-scale"], "3");

    // The gateway reaches each Executor at its Service's cluster-local address.
    let gw = svc("gateway");
    let cmd = gw["spec"]["template"]["spec"]["containers"][0]["command"].to_string();
    assert!(
        cmd.contains("\"Encoder_1=encoder-1.flow.svc.cluster.local:80\""),
        "{cmd}"
    );
    assert!(
        cmd.contains("\"ranker=ranker.flow.svc.cluster.local:80\""),
        "{cmd}"
    );
    assert!(!cmd.contains("--one-port"), "one protocol, one port: {cmd}");
}

#[test]
fn a_gateway_with_several_protocols_serves_them_on_its_one_port() {
    let port = |yaml: &str| {
        let export = render(&load(yaml), "", &opts()).expect("renders");
        let gw = export
            .objects
            .iter()
            .find(|o| o["metadata"]["name"] == "gateway" && o["kind"] == "Service")
            .unwrap()
            .clone();
        let c = &gw["spec"]["template"]["spec"]["containers"][0];
        (
            c["ports"][0]["name"].as_str().unwrap().to_string(),
            c["command"].to_string().contains("\"--one-port\""),
            export.warnings.iter().any(|w| w.contains("websocket")),
        )
    };
    let exec = "executors:\n  - name: e\n";
    assert_eq!(
        port(&format!(
            "jtype: Flow\nwith:\n  protocol: [http, grpc]\n{exec}"
        )),
        ("h2c".into(), true, false)
    );
    assert_eq!(
        port(&format!(
            "jtype: Flow\nwith:\n  protocol: [http, websocket]\n{exec}"
        )),
        ("http1".into(), true, false)
    );
    assert_eq!(
        port(&format!("jtype: Flow\nwith:\n  protocol: http\n{exec}")),
        ("http1".into(), false, false)
    );
    assert_eq!(
        port(&format!(
            "jtype: Flow\nwith:\n  protocol: [grpc, websocket]\n{exec}"
        )),
        ("h2c".into(), true, true)
    );
}

#[test]
fn what_cannot_be_rendered_is_refused_all_at_once_with_what_to_do() {
    let flow = load(
        r#"
jtype: Flow
executors:
  - name: mine
    uses: MyExecutor
    py_modules: [executor.py]
  - name: hub
    uses: jinaai+docker://team/Encoder
  - name: my_exec
  - name: My_Exec
"#,
    );
    let err = render(&flow, "", &opts()).unwrap_err().0;
    assert_eq!(err.len(), 3, "{err:#?}");
    assert!(err[0].contains("Executor mine: `uses: MyExecutor` is a class from your py_modules, which must be in an image: pass --image mine=IMAGE"), "{}", err[0]);
    assert!(
        err[1].contains("Executor hub: `uses: jinaai+docker://team/Encoder`"),
        "{}",
        err[1]
    );
    assert!(
        err[2].contains(
            "Executor My_Exec: its Service name \"my-exec\" is also the name of Executor my_exec"
        ),
        "{}",
        err[2]
    );
}

#[test]
fn a_sharded_executor_is_one_service_per_shard_and_the_gateway_polls_them() {
    let flow = load(
        r#"
jtype: Flow
executors:
  - name: indexer
    shards: 3
    polling: ALL
    jcloud:
      resources: {storage: {kind: efs}}
"#,
    );
    let export = render(&flow, "", &opts()).expect("renders");
    check_services(&export.objects, &service_schema());
    let names = |kind: &str| -> Vec<String> {
        export
            .objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("Service"),
        ["indexer-0", "indexer-1", "indexer-2", "gateway"]
    );
    assert_eq!(
        names("PersistentVolumeClaim"),
        ["indexer-0-data", "indexer-1-data", "indexer-2-data"],
        "each shard keeps its own data"
    );
    // Each shard's Executor is told which shard it is, as a Jina Flow tells it.
    for (i, svc) in export
        .objects
        .iter()
        .filter(|o| o["kind"] == "Service")
        .take(3)
        .enumerate()
    {
        let container = &svc["spec"]["template"]["spec"]["containers"][0];
        let cmd: Vec<&str> = container["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let tail = &cmd[cmd.len() - 4..];
        assert_eq!(
            tail,
            ["--shards", "3", "--shard-id", &i.to_string()],
            "{cmd:?}"
        );
        let env = container["env"].to_string();
        assert!(
            env.contains(&format!(r#"{{"name":"ZEROFLOW_SHARD_ID","value":"{i}"}}"#)),
            "{env}"
        );
    }
    let gw = export.objects.last().unwrap();
    let cmd = gw["spec"]["template"]["spec"]["containers"][0]["command"].to_string();
    assert!(
        cmd.contains("\"indexer=indexer-0.flow.svc.cluster.local:80,indexer-1.flow.svc.cluster.local:80,indexer-2.flow.svc.cluster.local:80\""),
        "{cmd}"
    );
}

#[test]
fn the_rendered_example_in_manifests_is_what_the_code_renders() {
    // `ZEROFLOW_BLESS=1 cargo test -p zeroflow-platform the_rendered_example` rewrites it.
    let dir = workspace().join("manifests/knative");
    let yaml = std::fs::read_to_string(dir.join("flow.yml")).expect("manifests/knative/flow.yml");
    let flow = load(&yaml);
    let mut o = opts();
    o.default_name = "example".into();
    o.zeroflow_image = "zeroflow/zeroflow:0.1.0".into();
    o.images
        .insert("encoder".into(), "registry.example.com/encoder:1".into());
    let export = render(&flow, &yaml, &o).expect("renders");
    check_services(&export.objects, &service_schema());
    let text = to_yaml(&export);
    let golden = dir.join("rendered.yaml");
    if std::env::var_os("ZEROFLOW_BLESS").is_some() {
        std::fs::write(&golden, &text).expect("write");
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    assert!(
        want == text,
        "manifests/knative/rendered.yaml differs from what the code renders; rerun with \
         ZEROFLOW_BLESS=1 and review the diff. Rendered:\n{text}"
    );
}

proptest::proptest! {
    #[test]
    fn service_names_are_dns_labels(s in "\\PC{0,80}", max in 8usize..64) {
        let l = dns_label(&s, max);
        proptest::prop_assert!(!l.is_empty() && l.len() <= max, "{l:?}");
        proptest::prop_assert!(l.starts_with(|c: char| c.is_ascii_lowercase()), "{l:?}");
        proptest::prop_assert!(!l.ends_with('-'), "{l:?}");
        proptest::prop_assert!(l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{l:?}");
    }
}

#[test]
fn activation_scale_is_rendered_where_knative_accepts_it() {
    let flow = load(
        r#"
jtype: Flow
executors:
  - name: wakes_three
    jcloud:
      autoscale: {min: 0, max: 5, activation_scale: 3}
  - name: default_one
    jcloud:
      autoscale: {min: 0, max: 5}
  - name: min_dominates
    jcloud:
      autoscale: {min: 3, max: 5, activation_scale: 3}
"#,
    );
    let export = render(&flow, "", &opts()).expect("renders");
    check_services(&export.objects, &service_schema());
    let annotation = |name: &str| {
        export
            .objects
            .iter()
            .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Service {name}"))["spec"]["template"]["metadata"]
            ["annotations"]["autoscaling.knative.dev/activation-scale"]
            .clone()
    };
    assert_eq!(annotation("wakes-three"), "3");
    // Knative refuses 1 and values not above min-scale; they would change nothing anyway.
    assert!(annotation("default-one").is_null());
    assert!(annotation("min-dominates").is_null());
}
