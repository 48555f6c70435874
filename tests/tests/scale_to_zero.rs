//! Scale to zero and back, end to end: `jc flow serve` with `jcloud.autoscale.min: 0`, the real
//! `jina.Client`, bursts and sustained load from a Rust client, and a replica killed under load.
//! The windows are shortened through server settings so each scenario takes seconds.

use std::time::Duration;
use zeroflow_tests::*;

const QUIET: Duration = Duration::from_secs(120);

fn rust_flow(min: u32, max: u32) -> String {
    format!(
        r#"
jtype: Flow
executors:
  - name: echo
    command: zeroflow-test-executor --endpoints /default
    jcloud:
      autoscale:
        min: {min}
        max: {max}
        metric: concurrency
        target: 2
        stable_window: 6s
        scale_down_delay: 0s
"#
    )
}

const FAST: &[&str] = &["--autoscaler", "scale-to-zero-grace-period=1s"];

#[test]
fn rust_executor_scales_from_zero_bursts_rises_and_returns_to_zero() {
    let dir = temp_dir("stz-rust");
    let served = serve_flow_with(&dir, &rust_flow(0, 3), FAST);
    let url = served.grpc.clone().expect("grpc");
    assert_eq!(
        served.replicas(),
        0,
        "min: 0 starts with no replica process"
    );

    // The first request wakes it and is answered.
    run_python(
        "check_client.py",
        &["echo_text", "--grpc", &url, "--suffix="],
    );
    assert!(served.replicas() >= 1);
    assert!(
        served.printed("echo: scaling 0 -> 1"),
        "the scaling event is printed"
    );

    // Quiet: back to zero after the stable window (6 s) plus the grace period (1 s).
    served.wait_replicas("scale to zero", QUIET, |n| n == 0);

    // A burst of 200 concurrent requests from zero: every one is answered.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let samples = rt.block_on(load::burst(&url, 200, 20.0));
    let failed: Vec<_> = samples.iter().filter(|s| s.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 200 failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );

    // Sustained load of 6 concurrent 100 ms requests against a per-replica target of 2 x 0.7:
    // the replicas rise toward max (3).
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let jc = served.child.id();
    let watcher = {
        let peak = peak.clone();
        std::thread::spawn(move || {
            let end = std::time::Instant::now() + Duration::from_secs(14);
            while std::time::Instant::now() < end {
                peak.fetch_max(shim_pids(jc).len(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let samples = rt.block_on(load::sustained(&url, 6, Duration::from_secs(12), 100.0));
    watcher.join().expect("watcher");
    let failed = samples.iter().filter(|s| s.result.is_err()).count();
    assert_eq!(failed, 0, "sustained load had failures");
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(peak >= 2, "replicas rose under load (peak {peak})");
    assert!(peak <= 3, "never above max (peak {peak})");

    // Quiet again: every replica process is gone; the next request wakes it again.
    served.wait_replicas("scale to zero after load", QUIET, |n| n == 0);
    run_python(
        "check_client.py",
        &["echo_text", "--grpc", &url, "--suffix="],
    );
    served.stop();
}

#[test]
fn python_executor_scales_from_zero_and_back() {
    let dir = temp_dir("stz-python");
    let config = workspace_root().join("tests/python/executors/appender.yml");
    let yaml = format!(
        r#"
jtype: Flow
executors:
  - name: py
    uses: {}
    jcloud:
      autoscale:
        min: 0
        max: 2
        stable_window: 6s
        scale_down_delay: 0s
"#,
        config.display()
    );
    let served = serve_flow_with(&dir, &yaml, FAST);
    let url = served.grpc.clone().expect("grpc");
    assert_eq!(served.replicas(), 0);
    run_python(
        "check_client.py",
        &["single", "--grpc", &url, "--suffix=-py"],
    );
    assert!(served.replicas() >= 1);
    served.wait_replicas("scale to zero", QUIET, |n| n == 0);
    run_python(
        "check_client.py",
        &["single", "--grpc", &url, "--suffix=-py"],
    );
    served.stop();
}

#[test]
fn a_replica_killed_under_load_fails_only_requests_in_flight_on_it() {
    let dir = temp_dir("kill");
    let served = serve_flow_with(&dir, &rust_flow(2, 2), FAST);
    let url = served.grpc.clone().expect("grpc");
    served.wait_replicas("two replicas", QUIET, |n| n == 2);
    let victim = shim_pids(served.child.id())[0];
    let victim_id = replica_id(victim);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (samples, died_at) = rt.block_on(async {
        let load = tokio::spawn({
            let url = url.clone();
            async move { load::sustained(&url, 8, Duration::from_secs(6), 50.0).await }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL");
        // kill(2) returns before the process is torn down: on a busy machine its sockets close
        // some milliseconds later, and requests sent meanwhile were in flight on it when it died.
        // It is dead (its connections closed) once it is a zombie or gone.
        let died_at = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while pid_alive(victim) {
                assert!(std::time::Instant::now() < deadline, "SIGKILL took effect");
                std::thread::sleep(Duration::from_millis(1));
            }
            tokio::time::Instant::now()
        })
        .await
        .expect("watch the victim");
        (load.await.expect("load"), died_at)
    });
    // What may fail: only requests in flight on the killed replica when it died, and only as
    // UNAVAILABLE naming the Executor and that replica. "In flight" includes a request the
    // gateway handed to the replica's connection before it read that the connection had closed
    // (the same race every proxy has); GRACE bounds that reading on a busy machine. Every
    // request sent after is served by the other replica or the replacement.
    const GRACE: Duration = Duration::from_millis(250);
    let failed: Vec<_> = samples.iter().filter(|s| s.result.is_err()).collect();
    eprintln!(
        "{} of {} requests failed with replica {victim_id}: {failed:?}",
        failed.len(),
        samples.len()
    );
    assert!(failed.len() <= 16, "{} failed: {failed:?}", failed.len());
    for f in &failed {
        assert!(
            f.started <= died_at + GRACE,
            "a request sent {:?} after the replica died failed: {f:?}",
            f.started - died_at
        );
        let (code, msg) = f.result.as_ref().unwrap_err();
        assert_eq!(*code, tonic::Code::Unavailable, "{msg}");
        assert!(
            msg.contains("echo") && msg.contains(&victim_id),
            "the error names the Executor and the killed replica {victim_id}: {msg}"
        );
    }
    assert!(
        samples
            .iter()
            .filter(|s| s.started > died_at + GRACE)
            .count()
            > 10,
        "load went on after the kill"
    );
    // The crashed replica is replaced.
    served.wait_replicas("a replacement replica", QUIET, |n| n == 2);
    assert!(served.printed("crashed"), "the crash is reported");
    served.stop();
}

/// The replica id a shim was started for (its `--replica` argument).
fn replica_id(shim: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{shim}/cmdline")).expect("shim cmdline");
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args
        .iter()
        .position(|a| a == "--replica")
        .expect("the shim is started with --replica");
    args[at + 1].clone()
}
