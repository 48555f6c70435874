//! Shared helpers for the end-to-end tests in `tests/tests/`: finding the workspace's binaries
//! and the Python venv with the real jina, running `jc flow serve`, and waiting for conditions
//! with generous deadlines (never fixed sleeps).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod apiserver;
pub mod cluster;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// A binary of the workspace, from the same target directory as the running test.
/// `cargo build --workspace --bins` must have run (the README's test command does).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (the README's test command does)",
        p.display()
    );
    p
}

/// The Python interpreter of the venv with jina 3.34 (`scripts/setup-python.sh` makes it).
pub fn python() -> PathBuf {
    let p = std::env::var_os("ZEROFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup-python.sh (CI's .ci/run does)",
        p.display()
    );
    p
}

/// The venv's bin folder, to put `jina` on PATH.
pub fn venv_bin() -> PathBuf {
    python().parent().expect("bin dir").to_path_buf()
}

pub fn path_with_venv() -> String {
    format!(
        "{}:{}",
        venv_bin().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A loopback port free now (the OS picks it; a test binds it again right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Polls `f` until it returns Some, or panics with `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    let mut backoff = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

/// Polls the future `f` makes until it gives Some; an error naming `what` after `deadline`.
/// The async twin of [`wait_for`], for tests that poll an API with an async client.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn pid_alive(pid: u32) -> bool {
    // Signal 0 checks existence; a zombie (exited, not reaped) counts as gone.
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat
        .rsplit(')')
        .next()
        .is_some_and(|s| s.trim_start().starts_with('Z'))
}

/// All descendants of `pid`, from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            break;
        };
        for e in entries.flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if ppid == Some(p) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// A running `jc flow serve`.
pub struct Served {
    pub child: Child,
    pub grpc: Option<String>,
    pub http: Option<String>,
    pub ws: Option<String>,
    /// Lines printed so far (stdout), for diagnostics.
    pub lines: Vec<String>,
    pub dir: PathBuf,
    /// Every stdout line so far, including the scaling events jc prints while it runs.
    pub events: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Writes `yaml` as `dir/flow.yml` and serves it; returns once the endpoints are printed.
pub fn serve_flow(dir: &Path, yaml: &str) -> Served {
    serve_flow_with(dir, yaml, &[])
}

impl Served {
    /// Replica shims running now.
    pub fn replicas(&self) -> usize {
        shim_pids(self.child.id()).len()
    }

    /// Waits until `n` replica processes run.
    pub fn wait_replicas(
        &self,
        what: &str,
        deadline: Duration,
        ok: impl Fn(usize) -> bool,
    ) -> usize {
        wait_for(what, deadline, || {
            let n = self.replicas();
            ok(n).then_some(n)
        })
    }

    pub fn printed(&self, needle: &str) -> bool {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains(needle))
    }
    /// PIDs of every process jc started (shims and Executors).
    pub fn tree(&self) -> Vec<u32> {
        descendants(self.child.id())
    }

    /// Ctrl-C, then checks that jc exits 0 and leaves no process behind.
    pub fn stop(mut self) {
        let tree = self.tree();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT");
        let status = wait_for("jc to exit", Duration::from_secs(90), || {
            self.child.try_wait().expect("try_wait")
        });
        assert!(status.success(), "jc exited with {status}");
        let left: Vec<u32> = tree.into_iter().filter(|p| pid_alive(*p)).collect();
        assert!(
            left.is_empty(),
            "processes left behind after jc stopped: {left:?}"
        );
    }
}

/// Processes a test started itself; every one is killed with its children when this is
/// dropped, however the test ends (a panic included), so none outlives it.
#[derive(Default)]
pub struct Reaper(pub Vec<Child>);

impl Reaper {
    /// Keeps `child` to kill at the end; returns its pid.
    pub fn keep(&mut self, child: Child) -> u32 {
        let pid = child.id();
        self.0.push(child);
        pid
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            kill_tree(c);
        }
    }
}

/// Kills a still-running child and every process below it (for Drop guards: a failing test
/// must not leave processes behind).
pub fn kill_tree(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        for p in descendants(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}

/// Runs a Python script from `tests/python/` with the venv; panics with its output on failure.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(workspace_root().join("tests/python").join(script))
        .args(args)
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .env("PATH", path_with_venv())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

/// A fresh temporary folder under the target dir (kept on failure for inspection).
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "zeroflow-test-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// PIDs of the replica shims under `pid` (each wraps one Executor process).
pub fn shim_pids(pid: u32) -> Vec<u32> {
    descendants(pid)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("zeroflow-shim"))
                .unwrap_or(false)
                && pid_alive(*p)
        })
        .collect()
}

/// Serves a Flow with extra `jc flow serve` arguments.
pub fn serve_flow_with(dir: &Path, yaml: &str, extra: &[&str]) -> Served {
    std::fs::create_dir_all(dir).expect("flow dir");
    std::fs::write(dir.join("flow.yml"), yaml).expect("write flow");
    let mut cmd = Command::new(bin("jc"));
    cmd.args(["flow", "serve"])
        .arg(dir.join("flow.yml"))
        .args(extra);
    spawn_served(cmd, dir)
}

/// Serves a project folder (`jc flow serve DIR`, its flow.yml), as `jc new` makes one.
pub fn serve_folder(dir: &Path) -> Served {
    let mut cmd = Command::new(bin("jc"));
    cmd.args(["flow", "serve"]).arg(dir);
    spawn_served(cmd, dir)
}

/// Runs `cmd` (a `jc flow serve ...`) with the venv on PATH; returns once it printed its endpoints.
pub fn spawn_served(mut cmd: Command, dir: &Path) -> Served {
    let mut child = cmd
        .env("PATH", path_with_venv())
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn jc");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let ev = events.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("[jc] {line}");
            ev.lock().expect("lock").push(line.clone());
            let _ = tx.send(line);
        }
    });
    let mut lines = vec![];
    let end = Instant::now() + Duration::from_secs(240);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = l.starts_with("Press Ctrl-C");
                lines.push(l);
                if done {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("jc flow serve did not print its endpoints; output: {lines:#?}");
            }
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let find = |scheme: &str| {
        lines.iter().find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with(scheme))
                .map(str::to_string)
        })
    };
    Served {
        grpc: find("grpc://"),
        http: find("http://"),
        ws: find("ws://"),
        lines: lines.clone(),
        child,
        dir: dir.to_path_buf(),
        events,
    }
}

/// A load generator for end-to-end tests: gRPC `process_single_data` to a gateway.
pub mod load {
    use std::time::Duration;
    use tokio::time::Instant;
    use zeroflow_proto::jina::jina_single_data_request_rpc_client::JinaSingleDataRequestRpcClient;
    use zeroflow_proto::jina::{DataRequestProto, HeaderProto};

    pub fn request(id: &str, delay_ms: f64) -> DataRequestProto {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            "delay_ms".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(delay_ms)),
            },
        );
        DataRequestProto {
            header: Some(HeaderProto {
                request_id: id.into(),
                exec_endpoint: Some("/".into()),
                ..Default::default()
            }),
            parameters: Some(prost_types::Struct { fields }),
            ..Default::default()
        }
    }

    /// A request of documents with these texts (ids `doc-0`, `doc-1`, ...: docarray gives every
    /// document one, and branches and shards are merged by it).
    pub fn text_request(id: &str, texts: &[&str]) -> DataRequestProto {
        use prost::Message;
        use zeroflow_proto::docarray::{DocListProto, DocProto, NodeProto, node_proto::Content};
        let text = |t: &str| NodeProto {
            content: Some(Content::Text(t.to_string())),
            docarray_type: None,
        };
        let docs = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut doc = DocProto::default();
                doc.data.insert("id".into(), text(&format!("doc-{i}")));
                doc.data.insert("text".into(), text(t));
                doc
            })
            .collect();
        let data = zeroflow_proto::jina::DataContentProto {
            documents: Some(zeroflow_proto::jina::data_content_proto::Documents::Docs(
                DocListProto { docs },
            )),
        };
        let mut r = request(id, 0.0);
        r.data = data.encode_to_vec().into();
        r
    }

    /// The `text` of each document of an answer, in order.
    pub fn doc_texts(resp: &DataRequestProto) -> Vec<String> {
        use prost::Message;
        use zeroflow_proto::docarray::node_proto::Content;
        use zeroflow_proto::jina::data_content_proto::Documents;
        let Ok(data) = zeroflow_proto::jina::DataContentProto::decode(&resp.data[..]) else {
            return vec![];
        };
        let Some(Documents::Docs(list)) = data.documents else {
            return vec![];
        };
        list.docs
            .iter()
            .filter_map(|d| match d.data.get("text")?.content.as_ref()? {
                Content::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    pub async fn client(url: &str) -> JinaSingleDataRequestRpcClient<tonic::transport::Channel> {
        let url = url.replace("grpc://", "http://");
        let ch = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect to the gateway");
        JinaSingleDataRequestRpcClient::new(ch)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    /// One finished request: when it started, how long it took, and its outcome.
    #[derive(Debug)]
    pub struct Sample {
        pub started: Instant,
        pub took: Duration,
        pub result: Result<(), (tonic::Code, String)>,
    }

    /// `n` requests at once; returns their outcomes in order.
    pub async fn burst(url: &str, n: usize, delay_ms: f64) -> Vec<Sample> {
        let c = client(url).await;
        let calls = (0..n).map(|i| {
            let mut c = c.clone();
            async move {
                let started = Instant::now();
                let r = c
                    .process_single_data(request(&format!("b{i}"), delay_ms))
                    .await;
                let result = match r {
                    Ok(resp) => {
                        let id = resp.into_inner().header.unwrap_or_default().request_id;
                        if id == format!("b{i}") {
                            Ok(())
                        } else {
                            Err((tonic::Code::Internal, format!("wrong request_id {id}")))
                        }
                    }
                    Err(s) => Err((s.code(), s.message().to_string())),
                };
                Sample {
                    started,
                    took: started.elapsed(),
                    result,
                }
            }
        });
        futures::future::join_all(calls).await
    }

    /// `concurrency` workers sending back-to-back requests for `duration`.
    pub async fn sustained(
        url: &str,
        concurrency: usize,
        duration: Duration,
        delay_ms: f64,
    ) -> Vec<Sample> {
        let c = client(url).await;
        let end = Instant::now() + duration;
        let workers = (0..concurrency).map(|w| {
            let mut c = c.clone();
            async move {
                let mut out = vec![];
                let mut i = 0;
                while Instant::now() < end {
                    let started = Instant::now();
                    let r = c
                        .process_single_data(request(&format!("w{w}-{i}"), delay_ms))
                        .await;
                    out.push(Sample {
                        started,
                        took: started.elapsed(),
                        result: r
                            .map(|_| ())
                            .map_err(|s| (s.code(), s.message().to_string())),
                    });
                    i += 1;
                }
                out
            }
        });
        futures::future::join_all(workers)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}
