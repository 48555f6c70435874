//! `zeroflow-bench-platform`: how one `jc server` copes with many Flows. It deploys N Flows
//! (default 1000) whose Executor sits at zero replicas, then prints a table: the server's memory,
//! the time of `jc flow list` over all of them, and the time of one scaling decision pass over N
//! autoscaled Executors (the pure decider, in process). A report, not a test.
//!
//! `--no-dashboard` runs `jc server --no-dashboard`, to compare the memory the dashboard adds:
//! with it, the server's CPU over 30 idle seconds and its memory after the dashboard's Flows list
//! and one Flow's live feed are read are reported too.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.1 request to the control plane; returns (status, body).
fn http(port: u16, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to jc server");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// User + system CPU seconds of process `pid` (/proc/PID/stat, at 100 ticks a second).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--flows")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dashboard = !args.iter().any(|a| a == "--no-dashboard");
    let bin_dir: PathBuf = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("bin dir");
    let jc = bin_dir.join("jc");
    assert!(
        jc.exists(),
        "{} is missing: build the workspace's binaries in this profile",
        jc.display()
    );
    let data = std::env::temp_dir().join(format!("zeroflow-bench-platform-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = free_port();
    let token_out = Command::new(&jc)
        .args(["server", "token", "create", "bench", "--data-dir"])
        .arg(&data)
        .output()
        .expect("jc server token create");
    let token = String::from_utf8_lossy(&token_out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    let server = Guard(
        Command::new(&jc)
            .args(["server", "--port", &port.to_string(), "--data-dir"])
            .arg(&data)
            .args(if dashboard {
                &[][..]
            } else {
                &["--no-dashboard"][..]
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn jc server"),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "jc server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, idle_hwm) = rss_mib(server.0.id());
    let flow = "jtype: Flow\nexecutors:\n  - name: echo\n    command: zeroflow-test-executor\n    jcloud:\n      autoscale:\n        min: 0\n        max: 2\n";
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let (status, body) = http(port, "POST", "/flows", &token, flow);
        assert!(status == 201, "deploy {i} answered {status}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        ids.push(v["id"].as_str().unwrap_or_default().to_string());
    }
    let deploy_s = t0.elapsed().as_secs_f64();
    // Every Flow is Serving (at zero replicas) before anything is measured.
    let t1 = Instant::now();
    loop {
        let (_, body) = http(port, "GET", "/flows?phase=Serving", &token, "");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let serving = v["flows"].as_array().map_or(0, |a| a.len());
        if serving == n {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(600),
            "only {serving} of {n} Flows are Serving"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let settle_s = t1.elapsed().as_secs_f64();
    // The dashboard watches a Flow within a second of its start, and samples each second.
    std::thread::sleep(Duration::from_secs(5));
    let (rss, hwm) = rss_mib(server.0.id());
    // 30 idle seconds: what sampling 1000 Flows each second costs.
    let cpu0 = cpu_seconds(server.0.id());
    std::thread::sleep(Duration::from_secs(30));
    let idle_cpu_pct = (cpu_seconds(server.0.id()) - cpu0) / 30.0 * 100.0;
    let (rss_idle, _) = rss_mib(server.0.id());
    // The dashboard's reads: the Flows list and five seconds of one Flow's live feed.
    let read = dashboard.then(|| {
        let (status, body) = http(port, "GET", "/ui/api/flows", &token, "");
        assert!(status == 200, "GET /ui/api/flows answered {status}");
        let listed = serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["flows"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(listed, n, "the dashboard lists every Flow");
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            s,
            "GET /ui/api/flows/{}/events HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n",
            ids[0]
        )
        .expect("write");
        s.set_read_timeout(Some(Duration::from_millis(500))).ok();
        let end = Instant::now() + Duration::from_secs(5);
        let mut got = 0;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            got += s.read(&mut buf).unwrap_or(0);
        }
        assert!(got > 0, "the live feed answered nothing");
        rss_mib(server.0.id())
    });

    // `jc flow list` as a user runs it: a process, one REST call, a table.
    let mut list_ms = vec![];
    for _ in 0..10 {
        let t = Instant::now();
        let out = Command::new(&jc)
            .args(["flow", "list", "--json"])
            .env("JCLOUD_API", format!("http://127.0.0.1:{port}/"))
            .env("JINA_AUTH_TOKEN", &token)
            .output()
            .expect("jc flow list");
        list_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(
            out.status.success(),
            "jc flow list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    list_ms.sort_by(f64::total_cmp);

    // One decision pass over n autoscaled Executors, each with a minute of recorded stats.
    let now = tokio::time::Instant::now();
    let cfg = zeroflow_autoscaler::AutoscalerConfig::default();
    let mut a = zeroflow_autoscaler::Autoscaler::new(cfg.clone());
    let spec = zeroflow_autoscaler::ScalingSpec::new(&zeroflow_spec::Autoscale::default(), &cfg);
    for i in 0..n {
        a.add_executor(&format!("e{i}"), spec.clone(), now, 1);
    }
    for s in 0..60u64 {
        let t = now + Duration::from_secs(s);
        for i in 0..n {
            let stat = zeroflow_activator::Stat {
                pod: "r0".into(),
                average_concurrency: (i % 50) as f64,
                requests_per_second: (i % 50) as f64,
                period_seconds: 1.0,
                ..Default::default()
            };
            a.record_stat(&format!("e{i}"), &stat, t);
        }
    }
    let mut pass_ms = vec![];
    for k in 0..20u64 {
        let t = Instant::now();
        let d = a.tick(now + Duration::from_secs(60 + k), &|_| 1);
        pass_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(d.len(), n);
    }
    pass_ms.sort_by(f64::total_cmp);

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "\nPlatform scenario: {n} Flows, each one Executor at zero replicas, on one `jc server`."
    );
    println!("Deployed in {deploy_s:.1} s; all Serving {settle_s:.1} s later.\n");
    println!("| measure | value | target | |");
    println!("|---|---:|---:|---|");
    println!("| jc server memory at idle (high-water) | {idle_hwm:.1} MiB | | |");
    println!(
        "| jc server memory with {n} Flows (RSS / high-water){} | {rss:.1} / {hwm:.1} MiB | ≤ 200 MiB | {} |",
        if dashboard { "" } else { ", no dashboard" },
        verdict(rss <= 200.0)
    );
    println!(
        "| jc server RSS after 30 idle s / CPU over them | {rss_idle:.1} MiB / {idle_cpu_pct:.1} % of a core | | |"
    );
    if let Some((rss_read, hwm_read)) = read {
        println!(
            "| jc server memory after the dashboard's list and 5 s of a live feed (RSS / high-water) | {rss_read:.1} / {hwm_read:.1} MiB | | |"
        );
    }
    println!(
        "| `jc flow list --json` p50 / max (10 runs) | {:.1} / {:.1} ms | < 100 ms | {} |",
        percentile(&list_ms, 0.5),
        percentile(&list_ms, 1.0),
        verdict(percentile(&list_ms, 0.5) < 100.0)
    );
    println!(
        "| one scaling decision pass over {n} Executors p50 / max | {:.2} / {:.2} ms | | |",
        percentile(&pass_ms, 0.5),
        percentile(&pass_ms, 1.0)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    let _ = ids;
}
