//! Shared helpers for the end-to-end tests in `tests/tests/`: finding the workspace's binaries
//! and the Python venv with the real jina, running `jc flow serve`, and waiting for conditions
//! with generous deadlines (never fixed sleeps).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    /// Lines printed so far (stdout), for diagnostics.
    pub lines: Vec<String>,
    pub dir: PathBuf,
}

/// Writes `yaml` as `dir/flow.yml` and serves it; returns once the endpoints are printed.
pub fn serve_flow(dir: &Path, yaml: &str) -> Served {
    std::fs::create_dir_all(dir).expect("flow dir");
    std::fs::write(dir.join("flow.yml"), yaml).expect("write flow");
    let mut child = Command::new(bin("jc"))
        .args(["flow", "serve"])
        .arg(dir.join("flow.yml"))
        .env("PATH", path_with_venv())
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn jc");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("[jc] {line}");
            if tx.send(line).is_err() {
                break;
            }
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
    // Keep draining stdout so jc never blocks on a full pipe.
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
        lines: lines.clone(),
        child,
        dir: dir.to_path_buf(),
    }
}

impl Served {
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

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            for p in descendants(self.child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
