//! A project folder runs from a generic runtime without an image built for it: a real `jc server`
//! stores the project (`jc flow deploy DIR`), and a `zeroflow-shim` given only the archive's URL,
//! digest and token fetches it from `GET /v1/artifacts/{digest}`, checks it, unpacks it into its
//! cache, installs its requirements.txt (a wheel shipped in the project, as no test reaches PyPI) and runs a real `jina executor` in the
//! project folder; a gRPC request is answered by that Executor, which imported that package from the
//! installed requirements. A second shim on the same cache fetches and installs nothing. A wrong
//! digest or a wrong token is refused with a message that says so, and no Executor starts.

#[path = "server_common.rs"]
mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeroflow_artifacts::digest::Sha256Digest;
use zeroflow_tests::{bin, kill_tree, load, path_with_venv, temp_dir, wait_for};

/// A project as `jc new` lays it out, whose Executor says where it runs and where its required
/// package came from.
fn write_project(dir: &Path) {
    let files = [
        (
            "flow.yml",
            "jtype: Flow\nexecutors:\n  - name: upper\n    uses: executor1/config.yml\n",
        ),
        (
            "executor1/config.yml",
            "jtype: Upper\npy_modules:\n  - executor.py\n",
        ),
        (
            "executor1/executor.py",
            r#"import os

import zfsix
from docarray import DocList
from docarray.documents import TextDoc
from jina import Executor, requests


class Upper(Executor):
    """Upper-cases texts and says where it runs and where `zfsix` was imported from."""

    @requests
    def upper(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        where = 'deps' if '/deps/' in zfsix.__file__ else zfsix.__file__
        for d in docs:
            d.text = f'{d.text.upper()}|cwd={os.path.basename(os.getcwd())}|pkg={where}'
        return docs
"#,
        ),
        (
            "executor1/requirements.txt",
            "# a wheel in the project (tests reach no package index), into the shim's cache\n./executor1/wheels/zfsix-1.0-py3-none-any.whl\n",
        ),
    ];
    for (rel, text) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("project folder");
        std::fs::write(p, text).expect("project file");
    }
    write_wheel(&dir.join("executor1/wheels/zfsix-1.0-py3-none-any.whl"));
}

/// A minimal pure-Python wheel (`zfsix` 1.0): what pip installs from a path without an index.
fn write_wheel(path: &Path) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("wheel folder");
    let script = r#"import sys, zipfile
files = {
    'zfsix/__init__.py': 'VERSION = "1.0"\n',
    'zfsix-1.0.dist-info/METADATA': 'Metadata-Version: 2.1\nName: zfsix\nVersion: 1.0\n',
    'zfsix-1.0.dist-info/WHEEL': 'Wheel-Version: 1.0\nGenerator: zeroflow-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
}
files['zfsix-1.0.dist-info/RECORD'] = ''.join(f'{n},,\n' for n in files) + 'zfsix-1.0.dist-info/RECORD,,\n'
with zipfile.ZipFile(sys.argv[1], 'w') as z:
    for name, text in files.items():
        z.writestr(name, text)
"#;
    let status = Command::new(zeroflow_tests::python())
        .args(["-c", script])
        .arg(path)
        .status()
        .expect("run python");
    assert!(status.success(), "writing the test wheel");
}

/// `jc flow deploy DIR --json` with our `jc`; returns the Flow id.
fn deploy(server: &Server, token: &str, cwd: &Path, dir: &str) -> String {
    let v = our_jc_json(
        server,
        token,
        cwd,
        &["flow", "deploy", dir, "--json", "--timeout", "300"],
    );
    v["id"].as_str().expect("an id").to_string()
}

/// A shim run: its output so far, and the ready line's gRPC address once it serves.
struct ShimRun {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    ready: std::sync::mpsc::Receiver<String>,
}

impl ShimRun {
    fn start(url: &str, digest: &str, token: &str, cache: &Path) -> ShimRun {
        let mut child = Command::new(bin("zeroflow-shim"))
            .args(["--executor", "upper", "--replica", "upper-0"])
            .args(["--project-url", url, "--project-digest", digest])
            .arg("--project-cache")
            .arg(cache)
            .args(["--", "jina", "executor", "--uses", "executor1/config.yml"])
            .args(["--port", "{port}"])
            .env("PATH", path_with_venv())
            .env("JINA_OPTOUT_TELEMETRY", "1")
            .env("ZEROFLOW_ARTIFACT_TOKEN", token)
            // The shim's own folder is not the project's: the project folder must come from it.
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn zeroflow-shim");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("stderr");
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[shim] {l}");
                lines.lock().expect("lock").push(l);
            }
        });
        let out = child.stdout.take().expect("stdout");
        let (tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                println!("[shim stdout] {l}");
                if l.starts_with("ZEROFLOW_READY")
                    && let Some(g) = l.split_whitespace().find_map(|w| w.strip_prefix("grpc="))
                {
                    let _ = tx.send(g.to_string());
                }
            }
        });
        ShimRun {
            child,
            stderr,
            ready,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    /// The gRPC address once the Executor serves (pip and jina's start take a while on a busy
    /// machine).
    fn wait_ready(&mut self) -> String {
        match self.ready.recv_timeout(Duration::from_secs(600)) {
            Ok(g) => g,
            Err(_) => {
                let status = self.child.try_wait().ok().flatten();
                panic!(
                    "the shim did not print its ready line (exit {status:?}); stderr:\n{}",
                    self.stderr()
                )
            }
        }
    }

    /// Waits for the shim to exit on its own; returns its code and stderr.
    fn wait_exit(&mut self) -> (i32, String) {
        let status = wait_for("the shim to exit", Duration::from_secs(120), || {
            self.child.try_wait().expect("try_wait")
        });
        // The stderr reader may still hold the last lines.
        wait_for(
            "the shim's stderr to close",
            Duration::from_secs(10),
            || (std::sync::Arc::strong_count(&self.stderr) == 1).then_some(()),
        );
        (status.code().unwrap_or(-1), self.stderr())
    }

    /// SIGTERM: drains and exits 0.
    fn stop(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let status = wait_for("the shim to stop", Duration::from_secs(90), || {
            self.child.try_wait().expect("try_wait")
        });
        assert!(status.success(), "the shim exited with {status}");
    }
}

impl Drop for ShimRun {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}

/// One request through the shim to the Executor; the answer's texts.
fn ask(grpc: &str, text: &str) -> Vec<String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let mut c = load::client(&format!("http://{grpc}")).await;
            let resp = c
                .process_single_data(load::text_request("r1", &[text]))
                .await
                .expect("the Executor answers");
            load::doc_texts(&resp.into_inner())
        })
}

/// The digest of Flow `id`'s stored project, from its record in the server's directory store.
fn stored_digest(data: &Path, user: &str, id: &str) -> Sha256Digest {
    let record = data.join(format!("artifacts/projects/{user}/{id}.json"));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).expect("the project record"))
            .expect("record JSON");
    Sha256Digest::from_hex(v["sha256"].as_str().expect("sha256")).expect("a digest")
}

fn artifact_token(data: &Path, digest: &Sha256Digest) -> String {
    zeroflow_platform::server::artifact_route::ArtifactAccess::open(data)
        .expect("the server's artifact secret")
        .token(digest)
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn a_shim_runs_a_stored_project_without_an_image_and_refuses_wrong_digests_and_tokens() {
    let root = temp_dir("shim-project");
    let data = root.join("data");
    let server = Server::start(&data, free_port());
    let user_token = server.token("alice");
    let work = root.join("work");
    write_project(&work.join("proj"));
    let id = deploy(&server, &user_token, &work, "proj");

    let digest = stored_digest(&data, "alice", &id);
    let token = artifact_token(&data, &digest);
    let url = format!("http://127.0.0.1:{}/v1/artifacts/{digest}", server.port);

    // The route itself: the token opens this digest only, and a user's token opens nothing.
    let other = Sha256Digest::of(b"someone else's project");
    let (s, _, v) = server.call("GET", &format!("/v1/artifacts/{other}"), Some(&token), None);
    assert_eq!(s, 401, "a token is for one digest: {v}");
    let (s, _, _) = server.call(
        "GET",
        &format!("/v1/artifacts/{digest}"),
        Some(&format!("Bearer {token}")),
        None,
    );
    assert_eq!(s, 200);
    let (s, _, v) = server.call(
        "GET",
        &format!("/v1/artifacts/{digest}"),
        Some(&user_token),
        None,
    );
    assert_eq!(s, 401, "{v}");

    // First start on an empty node cache: fetch, unpack, pip, then serve.
    let cache = root.join("cache");
    let mut shim = ShimRun::start(&url, &digest.to_string(), &token, &cache);
    let grpc = shim.wait_ready();
    let hex = digest.hex();
    assert_eq!(
        ask(&grpc, "hello"),
        [format!("HELLO|cwd={hex}|pkg=deps")],
        "the Executor runs in the unpacked project with the package from its installed requirements"
    );
    let log = shim.stderr();
    for line in [
        format!("fetching project {}", digest.short()),
        "unpacked in".to_string(),
        "installing requirements (executor1/requirements.txt)".to_string(),
        "requirements installed in".to_string(),
    ] {
        assert!(log.contains(&line), "stderr has {line:?}:\n{log}");
    }
    assert!(!log.contains(&token), "the token is never printed");
    assert!(cache.join("projects").join(&hex).join("flow.yml").is_file());
    shim.stop();

    // Second start on the same cache: nothing fetched, nothing installed.
    let mut again = ShimRun::start(&url, &digest.to_string(), &token, &cache);
    let grpc = again.wait_ready();
    assert_eq!(ask(&grpc, "again"), [format!("AGAIN|cwd={hex}|pkg=deps")]);
    let log = again.stderr();
    assert!(
        log.contains(&format!("project {} cached", digest.short()))
            && log.contains("requirements cached (executor1/requirements.txt)"),
        "the second start reuses the cache:\n{log}"
    );
    assert!(
        !log.contains("fetching project") && !log.contains("installing requirements"),
        "{log}"
    );
    again.stop();

    // A digest that is not the archive's: refused after the download, naming both digests; the
    // Executor never starts and nothing is unpacked.
    let fresh = root.join("cache-wrong-digest");
    let mut wrong = ShimRun::start(&url, &other.to_string(), &token, &fresh);
    let (code, log) = wrong.wait_exit();
    assert_eq!(code, 5, "{log}");
    assert!(
        log.contains(&format!("has digest {digest}"))
            && log.contains(&format!("--project-digest is {other}")),
        "the error names both digests:\n{log}"
    );
    assert!(!log.contains("started executor"), "{log}");
    let unpacked: Vec<_> = entries(&fresh.join("projects"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(unpacked.is_empty(), "nothing is kept: {unpacked:?}");

    // A wrong token: the control plane refuses it, the shim says what to fix and stops.
    let fresh = root.join("cache-wrong-token");
    let bad_token = "0".repeat(64);
    let mut denied = ShimRun::start(&url, &digest.to_string(), &bad_token, &fresh);
    let (code, log) = denied.wait_exit();
    assert_eq!(code, 5, "{log}");
    assert!(
        log.contains("HTTP 401") && log.contains("ZEROFLOW_ARTIFACT_TOKEN"),
        "the refusal says what to fix:\n{log}"
    );
    assert!(
        !log.contains("started executor") && !log.contains(&bad_token),
        "{log}"
    );

    server.stop();
}
