//! `jc flow serve` end to end with the real, unmodified `jina.Client`: once with Rust test
//! Executors, once with real `jina executor` Python Executors (a two-branch Flow with `needs`,
//! an Executor from `py_modules`), and the clear errors a bad Flow gets.

use std::process::Command;
use std::time::Duration;
use zeroflow_tests::*;

/// `command:` is Zeroflow's extension for Executors that are not Python: here the Rust test
/// Executor. exec2 has two replicas, so requests are balanced across them.
const RUST_FLOW: &str = r#"
jtype: Flow
with:
  protocol: [grpc, http, websocket]
executors:
  - name: exec1
    command: zeroflow-test-executor --append=-one
  - name: exec2
    command: zeroflow-test-executor --append=-two --endpoints /custom
    replicas: 2
"#;

#[test]
fn jina_client_against_rust_executors_grpc_http_and_websocket() {
    let dir = temp_dir("rust-flow");
    let served = serve_flow(&dir, RUST_FLOW);
    let grpc = served.grpc.clone().expect("grpc endpoint printed");
    let http = served.http.clone().expect("http endpoint printed");
    assert_eq!(served.tree().len(), 6, "3 shims with one Executor each");
    run_python("check_client.py", &["rust_flow_grpc", "--grpc", &grpc]);
    run_python("check_client.py", &["rust_flow_http", "--http", &http]);
    let ws = served.ws.clone().expect("websocket endpoint printed");
    run_python("check_client.py", &["rust_flow_ws", "--ws", &ws]);
    served.stop();
}

/// `--one-port`: the same Flow's three protocols on one port, each told apart per request
/// (what a Knative Service, which routes one port, needs).
#[test]
fn grpc_http_and_websocket_on_one_port() {
    let dir = temp_dir("one-port");
    let served = serve_flow_with(&dir, RUST_FLOW, &["--one-port"]);
    let grpc = served.grpc.clone().expect("grpc endpoint printed");
    let http = served.http.clone().expect("http endpoint printed");
    let ws = served.ws.clone().expect("websocket endpoint printed");
    let port = |url: &str| url.rsplit(':').next().unwrap().to_string();
    assert_eq!(port(&grpc), port(&http));
    assert_eq!(port(&grpc), port(&ws));
    run_python("check_client.py", &["rust_flow_grpc", "--grpc", &grpc]);
    run_python("check_client.py", &["rust_flow_http", "--http", &http]);
    run_python("check_client.py", &["rust_flow_ws", "--ws", &ws]);
    served.stop();
}

#[test]
fn jina_client_against_python_executors_with_needs_and_py_modules() {
    let dir = temp_dir("python-flow");
    let execs = workspace_root().join("tests/python/executors");
    let yaml = format!(
        r#"
jtype: Flow
with:
  protocol: [grpc, http]
executors:
  - name: start
    uses: {execs}/appender.yml
  - name: b
    uses: Appender
    py_modules: [{execs}/appender.py]
    uses_with:
      suffix: B
      field: b
    needs: start
  - name: c
    uses: Appender
    py_modules: [{execs}/appender.py]
    uses_with:
      suffix: C
      field: c
    needs: start
  - name: j
    uses: Appender
    py_modules: [{execs}/appender.py]
    uses_with:
      suffix: -j
    needs: [b, c]
"#,
        execs = execs.display()
    );
    let served = serve_flow(&dir, &yaml);
    let grpc = served.grpc.clone().expect("grpc");
    let http = served.http.clone().expect("http");
    run_python(
        "check_client.py",
        &["python_flow", "--grpc", &grpc, "--http", &http],
    );
    served.stop();
}

/// Writes `yaml` as `dir/flow.yml` and runs `jc flow serve` on it (with `env`) to its end, for
/// Flows that cannot serve: its output.
fn serve_to_end(dir: &std::path::Path, yaml: &str, env: &[(&str, &str)]) -> std::process::Output {
    std::fs::write(dir.join("flow.yml"), yaml).expect("write the Flow");
    Command::new(bin("jc"))
        .args(["flow", "serve"])
        .arg(dir.join("flow.yml"))
        .env("PATH", path_with_venv())
        .envs(env.iter().copied())
        .output()
        .expect("run jc")
}

#[test]
fn a_bad_flow_is_refused_with_line_and_column() {
    let out = serve_to_end(
        &temp_dir("bad-flow"),
        "jtype: Flow\nexecutors:\n  - name: e\n    jcloud:\n      autoscale:\n        min: 3\n        max: 1\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(65), "bad input exits 65");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 7"), "names the line: {stderr}");
    assert!(
        stderr.contains("executors[0].jcloud.autoscale.max"),
        "names the field: {stderr}"
    );
}

#[test]
fn a_jc_new_project_folder_serves_as_it_is() {
    let parent = temp_dir("new-project");
    let out = Command::new(bin("jc"))
        .args(["new", "hello"])
        .current_dir(&parent)
        .output()
        .expect("jc new");
    assert!(out.status.success(), "{out:?}");
    let served = serve_folder(&parent.join("hello"));
    let grpc = served.grpc.clone().expect("grpc");
    run_python("check_client.py", &["hello_world", "--grpc", &grpc]);
    served.stop();
    // A folder without a Flow file is named as such.
    let out = Command::new(bin("jc"))
        .args(["flow", "serve"])
        .arg(&parent)
        .output()
        .expect("run jc");
    assert_eq!(out.status.code(), Some(66), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a folder without flow.yml"),
        "{out:?}"
    );
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn python_executors_are_forked_from_the_zygote_and_die_with_their_shim() {
    let dir = temp_dir("zygote");
    let execs = workspace_root().join("tests/python/executors");
    let served = serve_flow(
        &dir,
        &format!(
            "jtype: Flow\nexecutors:\n  - name: py\n    uses: {}/appender.yml\n",
            execs.display()
        ),
    );
    let grpc = served.grpc.clone().expect("grpc");
    run_python(
        "check_client.py",
        &["single", "--grpc", &grpc, "--suffix=-py"],
    );
    // The Executor is a fork of the zygote (its parent), not a child of its shim.
    let tree = served.tree();
    let zygote = *tree
        .iter()
        .find(|p| cmdline(**p).contains("zygote.py") && parent(**p) == Some(served.child.id()))
        .expect("jc started a zygote");
    let forked: Vec<u32> = tree
        .iter()
        .copied()
        .filter(|p| parent(*p) == Some(zygote))
        .collect();
    assert_eq!(
        forked.len(),
        1,
        "one replica, forked by the zygote: {tree:?}"
    );
    let shim = shim_pids(served.child.id())[0];
    // Its shim dies: so does the Executor (the zygote holds the shim's connection as its
    // lifeline), and the replica is replaced, forked again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    wait_for(
        "the Executor to die with its shim",
        Duration::from_secs(30),
        || (!pid_alive(forked[0])).then_some(()),
    );
    served.wait_replicas("a replacement", Duration::from_secs(120), |n| n == 1);
    run_python(
        "check_client.py",
        &["single", "--grpc", &grpc, "--suffix=-py"],
    );
    assert!(
        served
            .tree()
            .iter()
            .any(|p| parent(*p) == Some(zygote) && *p != forked[0]),
        "the replacement is forked too"
    );
    // The zygote itself is killed: its forks die with it, and the replacement replica comes
    // from a new zygote.
    let replica = *served
        .tree()
        .iter()
        .find(|p| parent(**p) == Some(zygote))
        .expect("a fork");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygote as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    wait_for(
        "the fork to die with the zygote",
        Duration::from_secs(30),
        || (!pid_alive(replica)).then_some(()),
    );
    let again = wait_for("a new zygote's fork", Duration::from_secs(120), || {
        served
            .tree()
            .into_iter()
            .find(|p| parent(*p).is_some_and(|z| z != zygote && cmdline(z).contains("zygote.py")))
    });
    served.wait_replicas("the replica back", Duration::from_secs(120), |n| n == 1);
    run_python(
        "check_client.py",
        &["single", "--grpc", &grpc, "--suffix=-py"],
    );
    assert!(pid_alive(again));
    served.stop();

    // An Executor that fails as it loads: its own traceback (written through the descriptors
    // the shim handed over) and its exit reach the user as without the zygote.
    std::fs::write(
        dir.join("broken.py"),
        "raise RuntimeError('zf-broken-on-purpose')\n",
    )
    .expect("write");
    let out = serve_to_end(
        &dir,
        "jtype: Flow\nexecutors:\n  - name: broken\n    uses: Nothing\n    py_modules: [broken.py]\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
    assert!(all.contains("zf-broken-on-purpose"), "{all}");
    assert!(stderr.contains("via_zygote=true"), "{stderr}");
    assert!(
        stderr.contains("error: Executor broken: its replicas failed 5 times in a row"),
        "{stderr}"
    );
}

#[test]
fn a_replica_whose_pythonpath_shadows_the_zygotes_modules_starts_fresh() {
    // A project's own copy of a package the zygote has imported (here: the venv's filelock,
    // linked into a folder on the Executor's PYTHONPATH) would lose to the zygote's: such a
    // replica is started by its shim, as without a zygote, and serves.
    let dir = temp_dir("zygote-shadow");
    let deps = dir.join("deps");
    std::fs::create_dir_all(&deps).expect("deps");
    let site = std::fs::read_dir(workspace_root().join(".venv/lib"))
        .expect("the venv")
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.join("filelock").is_dir())
        .expect("filelock in the venv");
    std::os::unix::fs::symlink(site.join("filelock"), deps.join("filelock")).expect("link");
    let execs = workspace_root().join("tests/python/executors");
    let served = serve_flow(
        &dir,
        &format!(
            "jtype: Flow\nexecutors:\n  - name: py\n    uses: {}/appender.yml\n    env:\n      PYTHONPATH: {}\n",
            execs.display(),
            deps.display()
        ),
    );
    let grpc = served.grpc.clone().expect("grpc");
    run_python(
        "check_client.py",
        &["single", "--grpc", &grpc, "--suffix=-py"],
    );
    let shim = shim_pids(served.child.id())[0];
    let tree = served.tree();
    assert!(
        tree.iter()
            .any(|p| parent(*p) == Some(shim) && cmdline(*p).contains("jina executor")),
        "the Executor is the shim's own child: {:?}",
        tree.iter().map(|p| cmdline(*p)).collect::<Vec<_>>()
    );
    served.stop();
}

#[test]
fn a_program_that_is_not_there_is_named_at_once() {
    let dir = temp_dir("missing-program");
    let execs = workspace_root().join("tests/python/executors");
    std::fs::write(
        dir.join("flow.yml"),
        format!(
            "jtype: Flow\nexecutors:\n  - name: py\n    uses: {}/appender.yml\n",
            execs.display()
        ),
    )
    .expect("write");
    let serve = |jina: &str| {
        Command::new(bin("jc"))
            .args(["flow", "serve"])
            .arg(dir.join("flow.yml"))
            .env("ZEROFLOW_JINA", jina)
            .output()
            .expect("run jc")
    };
    let out = serve("/nonexistent/jina");
    assert_eq!(out.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Executor py cannot run: `/nonexistent/jina` does not exist")
            && stderr.contains("install jina"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("starting replica"),
        "nothing is started: {stderr}"
    );
    let out = serve("jina-is-not-installed-here");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`jina-is-not-installed-here` is not on PATH"),
        "{stderr}"
    );
    std::fs::write(
        dir.join("flow.yml"),
        "jtype: Flow\nexecutors:\n  - name: mine\n    command: ./run-me --port {port}\n",
    )
    .expect("write");
    std::fs::write(dir.join("run-me"), "#!/bin/sh\n").expect("write");
    let out = serve("jina");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Executor mine cannot run: `./run-me` is not an executable file"),
        "{stderr}"
    );
}

#[test]
fn an_executor_that_cannot_start_is_reported_with_its_output() {
    let out = serve_to_end(
        &temp_dir("crash-flow"),
        "jtype: Flow\nexecutors:\n  - name: crashy\n    command: zeroflow-test-executor --crash-after 1ms --startup-delay 50ms\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(69), "cannot start exits 69");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It is retried with backoff, then the Executor is marked failed with its own output.
    assert!(
        stderr.contains("error: Executor crashy: its replicas failed 5 times in a row"),
        "{stderr}"
    );
    // The fifth replica's own report (it usually fails before it serves; if the Executor was
    // caught serving for its one millisecond, it is reported as crashed instead).
    assert!(stderr.contains("crashy-4"), "{stderr}");
    assert!(
        stderr.contains("crashing on purpose"),
        "shows the Executor's own output: {stderr}"
    );
}

#[test]
fn an_executor_that_keeps_crashing_while_serving_stops_the_flow() {
    let out = serve_to_end(
        &temp_dir("crash-later-flow"),
        "jtype: Flow\nexecutors:\n  - name: shaky\n    command: zeroflow-test-executor --crash-after 1500ms\n",
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("Flow is serving"),
        "it served first: {stdout}"
    );
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("error: Executor shaky: its replicas failed 5 times in a row"),
        "{stderr}"
    );
    assert!(stderr.contains("crashing on purpose"), "{stderr}");
}

#[test]
fn each_shard_is_told_its_id_and_keeps_its_own_workspace() {
    let dir = temp_dir("shard-workspaces");
    let execs = workspace_root().join("tests/python/executors");
    let yaml = format!(
        r#"
jtype: Flow
with:
  workspace: ws
executors:
  - name: sharded
    uses: ShardReporter
    py_modules: [{execs}/appender.py]
    shards: 2
    polling: ALL
"#,
        execs = execs.display()
    );
    let served = serve_flow(&dir, &yaml);
    let url = served.grpc.clone().expect("grpc");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let docs = rt.block_on(async {
        let mut c = load::client(&url).await;
        let r = c
            .process_single_data(load::text_request("one", &["hello"]))
            .await
            .expect("answered")
            .into_inner();
        let docs = zeroflow_gateway::docs::decode_docs(&r.data).expect("docs");
        zeroflow_gateway::docs::docs_to_json(&docs)
    });
    // Polling ALL: both shards answered, each with its own id and workspace (Jina's
    // `WORKSPACE/NAME/SHARD`, the Flow's relative `workspace` taken from the Flow's folder).
    let ws = std::fs::canonicalize(&dir).unwrap().join("ws");
    for shard in 0..2 {
        let doc = docs
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == format!("shard-{shard}"))
            .unwrap_or_else(|| panic!("shard {shard} answered: {docs}"));
        let at = std::path::PathBuf::from(doc["text"].as_str().unwrap());
        assert!(
            at.starts_with(&ws),
            "{} is under {}",
            at.display(),
            ws.display()
        );
        assert!(
            at.ends_with(shard.to_string()),
            "shard {shard}'s workspace: {}",
            at.display()
        );
        let seen = std::fs::read_to_string(at.join("seen.txt")).expect("the shard wrote there");
        assert_eq!(seen.lines().count(), 1, "{seen}");
    }
    served.stop();
}

fn big_request(bytes: usize) -> zeroflow_proto::jina::DataRequestProto {
    load::text_request("big", &["x".repeat(bytes).as_str()])
}

#[test]
fn shards_timeouts_and_large_messages() {
    let dir = temp_dir("shards");
    let served = serve_flow(
        &dir,
        r#"
jtype: Flow
with:
  timeout_send: 3000
executors:
  - name: all
    command: zeroflow-test-executor --append=-s
    shards: 2
    polling: ALL
  - name: any
    command: zeroflow-test-executor --append=-a
    shards: 2
    polling: ANY
"#,
    );
    assert_eq!(served.replicas(), 4, "one shim per shard replica");
    let url = served.grpc.clone().expect("grpc");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut c = load::client(&url).await;
        // Polling ALL sends to both shards and merges their documents by id: one document,
        // not two; ANY sends to one shard.
        for _ in 0..4 {
            let r = c
                .process_single_data(big_request(10))
                .await
                .expect("ok")
                .into_inner();
            let docs = zeroflow_gateway::docs::decode_docs(&r.data).expect("docs");
            assert_eq!(docs.docs.len(), 1);
            let text = zeroflow_gateway::docs::docs_to_json(&docs)[0]["text"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(text, format!("{}-s-a", "x".repeat(10)));
            let names: Vec<_> = r.routes.iter().map(|r| r.executor.as_str()).collect();
            assert_eq!(names, ["gateway", "all", "any"]);
        }
        // Over tonic's default 4 MiB cap: Jina has no cap, neither does Zeroflow.
        let r = c
            .process_single_data(big_request(6 << 20))
            .await
            .expect("a 6 MiB document passes");
        assert!(r.into_inner().data.len() > 6 << 20);
        // timeout_send (3 s, generous for a 6 MiB message on a busy debug build) bounds each Executor call; the error names the Executor.
        let err = c
            .process_single_data(load::request("slow", 8000.0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(err.message().contains("Executor all"), "{}", err.message());
        assert!(err.message().contains("timeout_send"), "{}", err.message());
    });
    served.stop();
}

/// Starts a Rust test Executor with `args` on a free port, as one that runs elsewhere, and
/// returns the port once it listens.
fn executor_elsewhere(procs: &mut Reaper, args: &[&str]) -> u16 {
    let port = free_port();
    procs.keep(
        Command::new(bin("zeroflow-test-executor"))
            .args(["--port", &port.to_string()])
            .args(args)
            .spawn()
            .expect("start the test Executor"),
    );
    wait_for(
        "the test Executor to listen",
        std::time::Duration::from_secs(60),
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
    port
}

/// An Executor Zeroflow does not run: `external: true` in the YAML, or `--executor-address` on
/// the command line (how a gateway exported to Knative reaches the Executors' Services). The
/// gateway calls it at its address; only the other Executors get shims.
#[test]
fn external_executors_are_called_at_their_address() {
    let mut procs = Reaper::default();
    let port = executor_elsewhere(&mut procs, &["--append=-one", "--endpoints", "/ext"]);
    let local_exec2 = r#"
  - name: exec2
    command: zeroflow-test-executor --append=-two --endpoints /custom
    replicas: 2
"#;
    let dir = temp_dir("external-flow");
    let served = serve_flow(
        &dir,
        &format!(
            "jtype: Flow\nexecutors:\n  - name: exec1\n    external: true\n    host: 127.0.0.1\n    port: {port}\n{local_exec2}"
        ),
    );
    assert!(
        served.printed(&format!("external at 127.0.0.1:{port}")),
        "{:#?}",
        served.lines
    );
    assert_eq!(served.tree().len(), 4, "2 shims for exec2, none for exec1");
    let grpc = served.grpc.clone().expect("grpc endpoint printed");
    // Its endpoints are learnt after its first answer, not at start (asking would wake an
    // Executor that scaled to zero elsewhere).
    let gateway_endpoints = || {
        use zeroflow_proto::jina::jina_discover_endpoints_rpc_client::JinaDiscoverEndpointsRpcClient;
        let url = grpc.replace("grpc://", "http://");
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut c = JinaDiscoverEndpointsRpcClient::connect(url).await.unwrap();
            c.endpoint_discovery(())
                .await
                .unwrap()
                .into_inner()
                .endpoints
        })
    };
    let before = gateway_endpoints();
    assert!(before.contains(&"/custom".to_string()), "{before:?}");
    assert!(!before.contains(&"/ext".to_string()), "{before:?}");
    run_python("check_client.py", &["rust_flow_grpc", "--grpc", &grpc]);
    wait_for(
        "the external Executor's endpoints",
        std::time::Duration::from_secs(60),
        || {
            gateway_endpoints()
                .contains(&"/ext".to_string())
                .then_some(())
        },
    );
    served.stop();

    // The same Executor given on the command line instead, for a Flow that would run it.
    let dir = temp_dir("executor-address");
    let flow = format!(
        "jtype: Flow\nexecutors:\n  - name: exec1\n    command: zeroflow-test-executor --append=-never\n{local_exec2}"
    );
    let served = serve_flow_with(
        &dir,
        &flow,
        &["--executor-address", &format!("exec1=127.0.0.1:{port}")],
    );
    assert_eq!(served.tree().len(), 4, "exec1 is not started");
    let grpc = served.grpc.clone().expect("grpc endpoint printed");
    run_python("check_client.py", &["rust_flow_grpc", "--grpc", &grpc]);
    served.stop();

    // A sharded Executor elsewhere: one address per shard, each shard called at its own.
    let shard_port = executor_elsewhere(&mut procs, &["--append=-shard1"]);
    let shards_dir = temp_dir("executor-address-shards");
    let served = serve_flow_with(
        &shards_dir,
        "jtype: Flow\nexecutors:\n  - name: sharded\n    shards: 2\n    polling: ANY\n    command: zeroflow-test-executor\n",
        &[
            "--executor-address",
            &format!("sharded=127.0.0.1:{port},127.0.0.1:{shard_port}"),
        ],
    );
    assert!(
        served.tree().is_empty(),
        "nothing started: {:?}",
        served.tree()
    );
    let grpc = served.grpc.clone().expect("grpc endpoint printed");
    let answered: std::collections::BTreeSet<String> =
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut c = load::client(&grpc).await;
            let mut seen = std::collections::BTreeSet::new();
            for i in 0..4 {
                let req = load::text_request(&format!("r{i}"), &["d"]);
                let resp = c
                    .process_single_data(req)
                    .await
                    .expect("answered")
                    .into_inner();
                seen.extend(load::doc_texts(&resp));
            }
            seen
        });
    assert_eq!(
        answered,
        ["d-one".to_string(), "d-shard1".to_string()].into(),
        "ANY polling alternates the two shards' addresses"
    );
    served.stop();
    let out = Command::new(bin("jc"))
        .args(["flow", "serve"])
        .arg(shards_dir.join("flow.yml"))
        .args([
            "--executor-address",
            "sharded=127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
        ])
        .output()
        .expect("run jc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("3 addresses for 2 shard(s)"), "{stderr}");

    // A name the Flow does not have is refused before anything starts, naming what it has.
    let out = Command::new(bin("jc"))
        .args(["flow", "serve"])
        .arg(dir.join("flow.yml"))
        .args(["--executor-address", "nope=127.0.0.1:1"])
        .output()
        .expect("run jc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("the Flow has no Executor \"nope\" (it has: exec1, exec2)"),
        "{stderr}"
    );
}
