//! `jc flow export --target knative` end to end: the command's output is the reviewed example in
//! `manifests/knative`, bad input is refused with the Executor and what to do, and the commands
//! the rendered Services run (the shim wrapping each Executor, the gateway calling them at their
//! Services' addresses) serve the real `jina.Client` when started as Knative would start them,
//! with each Service's address played by a loopback port.

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;
use zeroflow_tests::*;

fn export(args: &[&str]) -> std::process::Output {
    Command::new(bin("jc"))
        .args(["flow", "export"])
        .args(args)
        .output()
        .expect("run jc flow export")
}

#[test]
fn the_cli_renders_the_reviewed_example() {
    let root = workspace_root();
    let out = export(&[
        root.join("manifests/knative/flow.yml").to_str().unwrap(),
        "--image",
        "encoder=registry.example.com/encoder:1",
        "--zeroflow-image",
        "zeroflow/zeroflow:0.1.0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = std::fs::read_to_string(root.join("manifests/knative/rendered.yaml")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("kubernetes.podspec-init-containers"),
        "{stderr}"
    );
}

#[test]
fn what_cannot_be_exported_is_refused_naming_the_executor() {
    let dir = temp_dir("export-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let flow = dir.join("flow.yml");
    std::fs::write(
        &flow,
        "jtype: Flow\nexecutors:\n  - name: mine\n    uses: MyExecutor\n    py_modules: [x.py]\n",
    )
    .unwrap();
    let out = export(&[flow.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains("Executor mine: `uses: MyExecutor` is a class from your py_modules, which must be in an image: pass --image mine=IMAGE"),
        "{stderr}"
    );
    let out = export(&[flow.to_str().unwrap(), "--image", "other=img"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("the Flow has no Executor \"other\" (it has: mine)"),
        "{stderr}"
    );
    let out = export(&[flow.to_str().unwrap(), "--image", "mine"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected EXECUTOR=IMAGE"));
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

#[test]
fn the_rendered_commands_serve_the_jina_client() {
    let dir = temp_dir("export-run");
    std::fs::create_dir_all(&dir).unwrap();
    let flow = dir.join("flow.yml");
    std::fs::write(
        &flow,
        r#"
jtype: Flow
with:
  protocol: [grpc, http]
executors:
  - name: exec1
    command: zeroflow-test-executor --append=-one
    jcloud:
      autoscale: {min: 0, max: 3}
  - name: exec2
    command: zeroflow-test-executor --append=-two --endpoints /custom
    shards: 2
"#,
    )
    .unwrap();
    let out = export(&[
        flow.to_str().unwrap(),
        "--json",
        "--image",
        "exec1=registry.local/test-executor",
        "--image",
        "exec2=registry.local/test-executor",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON objects");
    let config = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("ConfigMap");
    let etc = dir.join("etc-zeroflow");
    std::fs::create_dir_all(&etc).unwrap();
    for (file, text) in config["data"].as_object().unwrap() {
        std::fs::write(etc.join(file), text.as_str().unwrap()).unwrap();
    }

    // Each Executor's container command, with the shim the init container would have copied
    // in, on a port of its own (each Service has its own 8080 in the cluster).
    let mut procs = Reaper::default();
    let mut addresses = std::collections::BTreeMap::new();
    for svc in objects
        .iter()
        .filter(|o| o["kind"] == "Service" && o["metadata"]["name"] != "gateway")
    {
        let spec = &svc["spec"]["template"]["spec"];
        assert_eq!(
            strings(&spec["initContainers"][0]["command"])[1],
            "/usr/local/bin/zeroflow-shim"
        );
        let port = free_port();
        let mut cmd = strings(&spec["containers"][0]["command"]);
        assert_eq!(cmd[0], "/zeroflow/zeroflow-shim");
        cmd[0] = bin("zeroflow-shim").to_string_lossy().into_owned();
        let p = cmd.iter().position(|a| a == "8080").expect("serving port");
        cmd[p] = port.to_string();
        // In the image, the Executor's program is on PATH.
        let bin_dir = bin("zeroflow-test-executor")
            .parent()
            .unwrap()
            .to_path_buf();
        let mut child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .env(
                "PATH",
                format!("{}:{}", bin_dir.display(), path_with_venv()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the Executor's container command");
        // Knative sends traffic once the readiness probe passes; here, once the shim says the
        // Executor serves.
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        procs.0.push(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Reads to the end, so the shim never writes into a closed pipe.
            for l in std::io::BufRead::lines(stdout).map_while(Result::ok) {
                if l.starts_with("ZEROFLOW_READY ") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the shim of {} never served", svc["metadata"]["name"]));
        let host = format!(
            "{}.{}.svc.cluster.local:80",
            svc["metadata"]["name"].as_str().unwrap(),
            svc["metadata"]["namespace"].as_str().unwrap()
        );
        addresses.insert(host, format!("127.0.0.1:{port}"));
    }
    assert_eq!(addresses.len(), 3, "exec1, and exec2's two shards");

    // The gateway's command, reading the Flow from the ConfigMap's folder.
    let gw = objects
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "gateway")
        .expect("gateway Service");
    let mut cmd = strings(&gw["spec"]["template"]["spec"]["containers"][0]["command"]);
    assert_eq!(&cmd[..3], ["jc", "flow", "serve"]);
    cmd[0] = bin("jc").to_string_lossy().into_owned();
    cmd[3] = etc.join("flow.yml").to_string_lossy().into_owned();
    let gw_port = free_port();
    for a in cmd.iter_mut() {
        if a == "0.0.0.0" {
            *a = "127.0.0.1".into();
        } else if a == "8080" {
            *a = gw_port.to_string();
        } else if let Some((name, hosts)) = a.split_once('=')
            && hosts.split(',').all(|h| addresses.contains_key(h))
        {
            let local: Vec<&str> = hosts.split(',').map(|h| addresses[h].as_str()).collect();
            *a = format!("{name}={}", local.join(","));
        }
    }
    let gateway = Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("PATH", path_with_venv())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the gateway's command");
    procs.0.push(gateway);
    wait_for("the gateway to listen", Duration::from_secs(120), || {
        std::net::TcpStream::connect(("127.0.0.1", gw_port)).ok()
    });
    // The gateway started no Executor of its own: it calls them at their addresses.
    let gateway_pid = procs.0.last().unwrap().id();
    assert!(descendants(gateway_pid).is_empty());
    // Both protocols on the one port a Knative Service routes.
    assert!(cmd.iter().any(|a| a == "--one-port"), "{cmd:?}");
    run_python(
        "check_client.py",
        &[
            "rust_flow_grpc",
            "--grpc",
            &format!("grpc://127.0.0.1:{gw_port}"),
        ],
    );
    run_python(
        "check_client.py",
        &[
            "rust_flow_http",
            "--http",
            &format!("http://127.0.0.1:{gw_port}"),
        ],
    );
}

/// Every Knative Service the export renders, for the reviewed example and a Flow with every
/// autoscale metric, is stored by a real Kubernetes API server that has Knative's Service CRD,
/// with strict field validation: no field the schema does not know, none of the wrong type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_api_server_accepts_the_rendered_services() {
    let (server, ksvc) = zeroflow_tests::apiserver::ApiServer::with_knative_services()
        .await
        .expect("an API server with Knative's Service CRD");

    let dir = temp_dir("export-apiserver");
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = dir.join("metrics.yml");
    std::fs::write(
        &metrics,
        r#"
jtype: Flow
with:
  protocol: [http, grpc]
executors:
  - name: by_concurrency
    jcloud: {autoscale: {min: 0, max: 5, metric: concurrency, target: 2}}
  - name: by_rps
    jcloud: {autoscale: {min: 0, max: 3, metric: rps, target: 50, stable_window: 10s}}
  - name: by_cpu
    jcloud: {autoscale: {min: 1, max: 4, metric: cpu, target: 60}, resources: {instance: G1}}
  - name: by_memory
    uses: docker://registry.local/indexer:2
    jcloud:
      autoscale: {min: 1, max: 2, metric: memory, target: 512}
      resources: {storage: {kind: ephemeral, size: 2Gi}}
"#,
    )
    .unwrap();
    let root = workspace_root();
    let example = root.join("manifests/knative/flow.yml");
    let cases: [(&std::path::Path, &[&str]); 2] = [
        (
            &example,
            &["--image", "encoder=registry.example.com/encoder:1"],
        ),
        (&metrics, &[]),
    ];
    let mut stored_names = vec![];
    for (flow, extra) in cases {
        let mut args = vec![flow.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let out = export(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let objects: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        for svc in objects.into_iter().filter(|o| o["kind"] == "Service") {
            let ns = svc["metadata"]["namespace"].as_str().unwrap().to_string();
            let stored = server
                .apply_strict(&ksvc, Some(&ns), svc.clone())
                .await
                .unwrap_or_else(|e| panic!("the API server refused {svc:#}: {e:#}"));
            // What the server stored is what was rendered (plus its defaults).
            assert_eq!(
                stored["spec"]["template"]["metadata"]["annotations"],
                svc["spec"]["template"]["metadata"]["annotations"]
            );
            assert_eq!(
                stored["spec"]["template"]["spec"]["containers"][0]["command"],
                svc["spec"]["template"]["spec"]["containers"][0]["command"]
            );
            stored_names.push(format!(
                "{ns}/{}",
                stored["metadata"]["name"].as_str().unwrap()
            ));
        }
    }
    assert_eq!(
        stored_names,
        [
            "example/encoder",
            "example/indexer",
            "example/gateway",
            "metrics/by-concurrency",
            "metrics/by-rps",
            "metrics/by-cpu",
            "metrics/by-memory",
            "metrics/gateway"
        ]
    );
}
