//! The executor-shim as a process: draining on SIGTERM under load, reporting a crashed Executor,
//! and transparency to a real `jina gateway` in front of a real `jina executor`.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use zeroflow_proto::jina::jina_single_data_request_rpc_client::JinaSingleDataRequestRpcClient;
use zeroflow_proto::jina::{DataRequestProto, HeaderProto};
use zeroflow_tests::*;

struct Shim {
    child: Child,
    grpc: String,
    admin: String,
}

/// Kills a process still running when a test fails, so no test leaves processes behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Shim {
    /// SIGTERM, then the shim must drain and exit 0.
    fn stop_cleanly(&mut self) {
        let child = &mut self.child;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let status = wait_for("shim exit", Duration::from_secs(60), || {
            child.try_wait().expect("wait")
        });
        assert!(status.success(), "shim exit status {status}");
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_shim(extra: &[&str], command: &[&str]) -> Shim {
    let mut child = Command::new(bin("zeroflow-shim"))
        .args([
            "--executor",
            "echo",
            "--replica",
            "echo-0",
            "--drain-timeout",
            "60s",
        ])
        .args(extra)
        .arg("--")
        .args(command)
        .env("PATH", path_with_venv())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn shim");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("ZEROFLOW_READY "))
        .expect("the shim prints its ready line");
    std::thread::spawn(move || for _ in lines {});
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .expect("field")
            .to_string()
    };
    Shim {
        grpc: field("grpc="),
        admin: field("admin="),
        child,
    }
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect admin");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn request(i: usize) -> DataRequestProto {
    DataRequestProto {
        header: Some(HeaderProto {
            request_id: format!("req-{i}"),
            exec_endpoint: Some("/".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn sigterm_under_load_answers_every_accepted_request_and_leaves_no_process() {
    sigterm_under_load("passthrough");
}

#[test]
fn sigterm_under_load_through_the_grpc_proxy() {
    sigterm_under_load("grpc");
}

fn sigterm_under_load(proxy: &str) {
    let exec = bin("zeroflow-test-executor");
    let exec = exec.to_str().expect("utf8");
    let mut shim = start_shim(&["--proxy", proxy], &[exec, "--delay", "1500ms"]);
    let child_pids = descendants(shim.child.id());
    assert!(
        !child_pids.is_empty(),
        "the shim runs its Executor as a child"
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let n = 24;
    let url = format!("http://{}", shim.grpc);
    let results = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect to shim");
        let mut calls = vec![];
        for i in 0..n {
            let mut c = JinaSingleDataRequestRpcClient::new(channel.clone());
            calls.push(tokio::spawn(async move {
                c.process_single_data(request(i)).await
            }));
        }
        // Every request is accepted (in flight at the shim) before the signal goes out.
        let admin = shim.admin.clone();
        tokio::task::spawn_blocking(move || {
            wait_for("all requests in flight", Duration::from_secs(60), || {
                let stats = http_get(&admin, "/stats");
                let body = stats.split("\r\n\r\n").nth(1).unwrap_or("{}").to_string();
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                (v["in_flight"].as_u64()? == n as u64).then_some(())
            })
        })
        .await
        .expect("wait");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        futures::future::join_all(calls).await
    });
    for (i, r) in results.into_iter().enumerate() {
        let resp = r
            .expect("task")
            .unwrap_or_else(|s| panic!("request {i} failed: {s}"));
        assert_eq!(
            resp.get_ref().header.as_ref().unwrap().request_id,
            format!("req-{i}")
        );
    }
    let child = &mut shim.child;
    let status = wait_for("shim exit", Duration::from_secs(60), || {
        child.try_wait().expect("wait")
    });
    assert!(status.success(), "shim exit status {status}");
    for p in child_pids {
        assert!(!pid_alive(p), "Executor process {p} outlived its shim");
    }
}

#[test]
fn a_crashing_executor_is_reported_with_its_stderr() {
    let exec = bin("zeroflow-test-executor");
    let out = Command::new(bin("zeroflow-shim"))
        .args(["--executor", "crashy", "--"])
        .arg(&exec)
        .args(["--crash-after", "200ms"])
        .output()
        .expect("run shim");
    assert_eq!(out.status.code(), Some(3), "exit code for a dead Executor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Executor crashy exited"), "{stderr}");
    assert!(
        stderr.contains("crashing on purpose"),
        "stderr tail missing: {stderr}"
    );
}

#[test]
fn a_missing_command_is_a_clear_error() {
    let out = Command::new(bin("zeroflow-shim"))
        .args([
            "--executor",
            "x",
            "--",
            "/nonexistent/zeroflow-no-such-binary",
        ])
        .output()
        .expect("run shim");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot start `/nonexistent/zeroflow-no-such-binary`"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("os error 2").count(),
        1,
        "the cause is said once: {stderr}"
    );
}

#[test]
fn metrics_and_stats_are_served() {
    let exec = bin("zeroflow-test-executor");
    let mut shim = start_shim(
        &["--container-concurrency", "2"],
        &[exec.to_str().expect("utf8")],
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut c = JinaSingleDataRequestRpcClient::connect(format!("http://{}", shim.grpc))
            .await
            .expect("connect");
        for i in 0..3 {
            c.process_single_data(request(i)).await.expect("ok");
        }
    });
    let metrics = http_get(&shim.admin, "/metrics");
    assert!(
        metrics.contains(
            "zeroflow_shim_requests_total{executor=\"echo\",replica=\"echo-0\",code=\"OK\"} 3"
        ),
        "{metrics}"
    );
    assert!(http_get(&shim.admin, "/ready").starts_with("HTTP/1.0 200"));
    shim.stop_cleanly();
}

fn stats(admin: &str) -> Option<serde_json::Value> {
    let text = http_get(admin, "/stats");
    serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()
}

fn slow_request(i: usize, delay_ms: f64, proxied: bool) -> tonic::Request<DataRequestProto> {
    let mut r = request(i);
    r.parameters = Some(prost_types::Struct {
        fields: [(
            "delay_ms".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(delay_ms)),
            },
        )]
        .into(),
    });
    let mut r = tonic::Request::new(r);
    if proxied {
        r.metadata_mut().insert(
            zeroflow_activator::PROXIED_HEADER,
            "1".parse().expect("ascii"),
        );
    }
    r
}

/// The pass-through shim (the default with no containerConcurrency) reads the frames it
/// forwards: requests by gRPC code, resets as Cancelled, control RPCs left out, and the
/// activator's share of the load told apart, as the gRPC proxy does.
#[test]
fn passthrough_counts_what_it_forwards() {
    use zeroflow_proto::jina::jina_discover_endpoints_rpc_client::JinaDiscoverEndpointsRpcClient;
    let exec = bin("zeroflow-test-executor");
    let mut shim = start_shim(&[], &[exec.to_str().expect("utf8")]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let url = format!("http://{}", shim.grpc);
    let admin = shim.admin.clone();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect to shim");
        let mut c = JinaSingleDataRequestRpcClient::new(channel.clone());
        for i in 0..4 {
            let resp = c
                .process_single_data(slow_request(i, 0.0, i % 2 == 0))
                .await
                .expect("answered through the shim");
            assert_eq!(
                resp.get_ref().header.as_ref().unwrap().request_id,
                format!("req-{i}")
            );
        }
        JinaDiscoverEndpointsRpcClient::new(channel.clone())
            .endpoint_discovery(())
            .await
            .expect("discovery through the shim");
        // A request the caller gives up on: its stream is reset.
        let mut r = slow_request(9, 3000.0, false);
        r.set_timeout(Duration::from_millis(200));
        let e = c.process_single_data(r).await.expect_err("timed out");
        assert_eq!(e.code(), tonic::Code::Cancelled, "{e}");
        // Two long requests from the activator and one from elsewhere, in flight together for
        // several of the shim's one-second periods.
        let calls: Vec<_> = [true, true, false]
            .into_iter()
            .enumerate()
            .map(|(i, proxied)| {
                let mut c = c.clone();
                tokio::spawn(async move {
                    c.process_single_data(slow_request(20 + i, 6000.0, proxied))
                        .await
                })
            })
            .collect();
        let admin2 = admin.clone();
        tokio::task::spawn_blocking(move || {
            wait_for(
                "a period with 3 requests in flight, 2 from the activator",
                Duration::from_secs(5),
                || {
                    let v = stats(&admin2)?;
                    let total = v["average_concurrency"].as_f64()?;
                    let proxied = v["proxied_concurrency"].as_f64()?;
                    ((total - 3.0).abs() < 0.01 && (proxied - 2.0).abs() < 0.01).then_some(())
                },
            )
        })
        .await
        .expect("wait");
        for c in calls {
            c.await.expect("task").expect("answered");
        }
    });
    let metrics = http_get(&admin, "/metrics");
    let count = |code: &str| {
        let key = format!(
            "zeroflow_shim_requests_total{{executor=\"echo\",replica=\"echo-0\",code=\"{code}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .map(|v| v.trim().to_string())
    };
    // 4 quick + 3 long answered; discovery is control traffic, not counted.
    assert_eq!(count("OK").as_deref(), Some("7"), "{metrics}");
    // The timed-out request: reset by the caller (or, if the client's reset raced the shim's
    // read, still open when it ends, which the shim never reports as OK).
    wait_for("the reset is counted", Duration::from_secs(30), || {
        let m = http_get(&admin, "/metrics");
        m.contains("code=\"Cancelled\"} 1").then_some(())
    });
    assert_eq!(stats(&admin).expect("stats")["in_flight"].as_u64(), Some(0));
    shim.stop_cleanly();
}

#[test]
fn passthrough_with_a_concurrency_limit_is_refused() {
    let exec = bin("zeroflow-test-executor");
    let out = Command::new(bin("zeroflow-shim"))
        .args([
            "--proxy",
            "passthrough",
            "--container-concurrency",
            "2",
            "--",
        ])
        .arg(&exec)
        .output()
        .expect("run shim");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--proxy passthrough cannot enforce --container-concurrency 2"),
        "{stderr}"
    );
}

/// A real `jina gateway` in front of a shim wrapping `command`; `check` runs the client.
fn jina_gateway_in_front_of(command: &[&str], check: &[&str]) {
    let mut shim = start_shim(&[], command);
    let port = free_port();
    let gateway = Command::new(venv_bin().join("jina"))
        .args(["gateway", "--port", &port.to_string()])
        .args([
            "--graph-description",
            r#"{"exec": ["end-gateway"], "start-gateway": ["exec"]}"#,
        ])
        .args([
            "--deployments-addresses",
            &format!(r#"{{"exec": ["{}"]}}"#, shim.grpc),
        ])
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .process_group(0)
        .spawn()
        .expect("spawn jina gateway");
    let mut gateway = KillOnDrop(gateway);
    // jina's gateway opens its port only after reflection and discovery on the shim answered.
    wait_for("jina gateway port", Duration::from_secs(120), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let url = format!("grpc://127.0.0.1:{port}");
    let mut args: Vec<&str> = vec![check[0], "--grpc", &url];
    args.extend_from_slice(&check[1..]);
    run_python("check_client.py", &args);
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(gateway.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = gateway.0.wait();
    shim.stop_cleanly();
}

#[test]
fn a_real_jina_gateway_fronts_the_shim_wrapping_a_real_jina_executor() {
    let config = workspace_root().join("tests/python/executors/appender.yml");
    jina_gateway_in_front_of(
        &[
            "jina",
            "executor",
            "--uses",
            config.to_str().expect("utf8"),
            "--name",
            "exec",
            "--port",
            "{port}",
            "--native",
        ],
        &["single", "--suffix=-py"],
    );
}

#[test]
fn a_real_jina_gateway_fronts_the_shim_wrapping_the_rust_test_executor() {
    let exec = bin("zeroflow-test-executor");
    jina_gateway_in_front_of(
        &[exec.to_str().expect("utf8"), "--append=-rs"],
        &["echo_text", "--suffix=-rs"],
    );
}
