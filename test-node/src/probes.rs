//! A container's startup, readiness and liveness probes, run as the kubelet's probe workers run
//! them: a probe at the container's start and then every `periodSeconds` (skipped before
//! `initialDelaySeconds`), `successThreshold`/`failureThreshold` consecutive results to flip,
//! readiness and liveness only once the startup probe has passed. It reports results to the
//! container's run and must not touch processes or the API.
//!
//! Supported handlers: `httpGet` (plain HTTP; HTTPS and gRPC probes are not supported and fail
//! with a message saying so), `tcpSocket` and `exec`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// What the probes tell the container's run.
#[derive(Debug)]
pub enum Report {
    /// The startup probe passed (at once when there is none).
    Started,
    Ready(bool),
    /// The startup or liveness probe failed `failureThreshold` times: restart the container.
    Unhealthy(String),
}

/// Where and how to probe: the pod's address and the container's ports, environment and folder
/// (for `exec`).
#[derive(Clone)]
pub struct Target {
    pub ip: IpAddr,
    pub ports: Vec<ContainerPort>,
    pub env: Vec<(String, String)>,
    pub path_env: String,
    pub cwd: PathBuf,
}

/// Runs the container's probes until the returned future is dropped.
pub async fn run(c: Container, target: Target, out: mpsc::Sender<Report>) {
    // Initial delays count from the container's start.
    let start = tokio::time::Instant::now();
    if let Some(p) = &c.startup_probe {
        let mut w = Worker::new(p, "Startup", false, start);
        loop {
            w.tick().await;
            match w.step(&target).await {
                Some(true) => break,
                Some(false) => {
                    let _ = out.send(Report::Unhealthy(w.message())).await;
                    return std::future::pending().await;
                }
                None => {}
            }
        }
    }
    let _ = out.send(Report::Started).await;
    let readiness = async {
        let Some(p) = &c.readiness_probe else {
            let _ = out.send(Report::Ready(true)).await;
            return std::future::pending().await;
        };
        let mut w = Worker::new(p, "Readiness", false, start);
        loop {
            w.tick().await;
            if let Some(ok) = w.step(&target).await {
                let _ = out.send(Report::Ready(ok)).await;
            }
        }
    };
    let liveness = async {
        let Some(p) = &c.liveness_probe else {
            return std::future::pending().await;
        };
        let mut w = Worker::new(p, "Liveness", true, start);
        loop {
            w.tick().await;
            if w.step(&target).await == Some(false) {
                let _ = out.send(Report::Unhealthy(w.message())).await;
                return std::future::pending().await;
            }
        }
    };
    tokio::join!(readiness, liveness);
}

struct Worker<'a> {
    probe: &'a Probe,
    kind: &'static str,
    start: tokio::time::Instant,
    interval: tokio::time::Interval,
    result: bool,
    run: (bool, i32),
    last_error: String,
}

impl<'a> Worker<'a> {
    fn new(
        probe: &'a Probe,
        kind: &'static str,
        initial: bool,
        start: tokio::time::Instant,
    ) -> Self {
        let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Worker {
            probe,
            kind,
            start,
            interval,
            result: initial,
            run: (initial, 0),
            last_error: String::new(),
        }
    }

    async fn tick(&mut self) {
        self.interval.tick().await;
    }

    fn message(&self) -> String {
        format!("{} probe failed: {}", self.kind, self.last_error)
    }

    /// Probes once (unless still in the initial delay); returns the result when it flips.
    async fn step(&mut self, t: &Target) -> Option<bool> {
        let delay =
            Duration::from_secs(self.probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        if self.start.elapsed() < delay {
            return None;
        }
        let timeout = Duration::from_secs(self.probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        let ok = match tokio::time::timeout(timeout, probe_once(self.probe, t)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.last_error = e;
                false
            }
            Err(_) => {
                self.last_error = format!("timed out after {timeout:?}");
                false
            }
        };
        if !ok {
            tracing::debug!(kind = self.kind, error = %self.last_error, "probe failed");
        }
        self.run = if self.run.0 == ok {
            (ok, self.run.1 + 1)
        } else {
            (ok, 1)
        };
        let threshold = if ok {
            self.probe.success_threshold.unwrap_or(1)
        } else {
            self.probe.failure_threshold.unwrap_or(3)
        };
        if ok != self.result && self.run.1 >= threshold.max(1) {
            self.result = ok;
            return Some(ok);
        }
        // A failing liveness or startup probe reports every failure past the threshold.
        (!ok && !self.result && self.run.1 >= threshold.max(1)).then_some(false)
    }
}

fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

async fn probe_once(p: &Probe, t: &Target) -> Result<(), String> {
    if let Some(h) = &p.http_get {
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err("HTTPS probes are not supported by the test node agent".into());
        }
        let host = h.host.clone().unwrap_or_else(|| t.ip.to_string());
        let port = resolve_port(&h.port, &t.ports)?;
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.36\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for hd in h.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before the status line".into());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line {:?}", line.lines().next()))?;
        return if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        };
    }
    if let Some(tcp) = &p.tcp_socket {
        let host = tcp.host.clone().unwrap_or_else(|| t.ip.to_string());
        let port = resolve_port(&tcp.port, &t.ports)?;
        return tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"));
    }
    if let Some(exec) = &p.exec {
        let argv = exec.command.clone().unwrap_or_default();
        let Some(first) = argv.first() else {
            return Err("exec probe has no command".into());
        };
        let program = crate::env::find_program(first, &t.path_env).map_err(|e| e.to_string())?;
        let status = tokio::process::Command::new(program)
            .args(&argv[1..])
            .env_clear()
            .envs(t.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&t.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|e| e.to_string())?;
        return if status.success() {
            Ok(())
        } else {
            Err(format!("command {argv:?} exited with {status}"))
        };
    }
    if p.grpc.is_some() {
        return Err("gRPC probes are not supported by the test node agent".into());
    }
    Err("the probe has no handler".into())
}
