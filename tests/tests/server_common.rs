//! Helpers shared by the `server_*` tests (included with `#[path]`): start `jc server` on a data
//! dir, create tokens, call the REST API with curl (status, content type and JSON body), and
//! drive the public `jcloud` client.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
pub use zeroflow_tests::free_port;
use zeroflow_tests::{
    bin, descendants, kill_tree, path_with_venv, pid_alive, venv_bin, wait_for, workspace_root,
};

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub data: PathBuf,
}

impl Server {
    /// Starts `jc server` on `port` with `data` and waits until the API answers.
    pub fn start(data: &Path, port: u16) -> Server {
        Self::start_with(data, port, &[], false)
    }

    /// [`Server::start`] with extra environment, and with `--data-dir` given as a path relative
    /// to the server's working folder when `relative` (the folder is `data`'s parent).
    pub fn start_with(data: &Path, port: u16, envs: &[(String, String)], relative: bool) -> Server {
        Self::start_args(data, port, envs, relative, &[])
    }

    /// [`Server::start_with`] with more options for `jc server` (e.g. `--runtime kubernetes`).
    pub fn start_args(
        data: &Path,
        port: u16,
        envs: &[(String, String)],
        relative: bool,
        args: &[&str],
    ) -> Server {
        let mut cmd = Command::new(bin("jc"));
        cmd.args(["server", "--port", &port.to_string(), "--data-dir"]);
        if relative {
            let name = data.file_name().expect("a data folder name");
            let parent = data.parent().expect("a data folder parent");
            std::fs::create_dir_all(parent).expect("data parent");
            cmd.arg(name).current_dir(parent);
        } else {
            cmd.arg(data);
        }
        let child = cmd
            // Quick drains keep pause and remove prompt; the public client polls every 5 s.
            .args(["--drain-timeout", "5"])
            .args(args)
            .env("PATH", path_with_venv())
            .env("JINA_OPTOUT_TELEMETRY", "1")
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn jc server");
        let s = Server {
            child,
            port,
            data: data.to_path_buf(),
        };
        wait_for("jc server to answer", Duration::from_secs(30), || {
            (s.call("GET", "/healthz", None, None).0 == 200).then_some(())
        });
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn token(&self, user: &str) -> String {
        token(&self.data, user)
    }

    /// One API call: (status, content type, JSON body or Null).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Body>,
    ) -> (u16, String, serde_json::Value) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-S",
            "-m",
            "60",
            "-X",
            method,
            "-w",
            "\n%{http_code} %{content_type}",
        ]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: {t}")]);
        }
        match body {
            Some(Body::Spec(yaml)) => {
                let f = self.data.join(format!("upload-{}.yml", rand_suffix()));
                std::fs::write(&f, yaml).expect("write spec");
                cmd.args(["-F", &format!("spec=@{}", f.display())]);
            }
            Some(Body::Form(fields)) => {
                for f in fields {
                    cmd.args(["-F", &f]);
                }
            }
            Some(Body::Json(v)) => {
                cmd.args([
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    &v.to_string(),
                ]);
            }
            None => {}
        }
        cmd.arg(format!("http://127.0.0.1:{}{path}", self.port));
        let out = cmd.output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
        let mut parts = tail.split_whitespace();
        let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let ctype = parts.next().unwrap_or("").to_string();
        let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
        (status, ctype, json)
    }

    pub fn phase(&self, token: &str, id: &str) -> String {
        let (s, _, v) = self.call("GET", &format!("/flows/{id}"), Some(token), None);
        assert_eq!(s, 200, "GET /flows/{id}: {v}");
        v["status"]["phase"].as_str().unwrap_or("").to_string()
    }

    pub fn wait_phase(
        &self,
        token: &str,
        id: &str,
        want: &str,
        deadline: Duration,
    ) -> serde_json::Value {
        wait_for(&format!("Flow {id} to be {want}"), deadline, || {
            let (_, _, v) = self.call("GET", &format!("/flows/{id}"), Some(token), None);
            let p = v["status"]["phase"].as_str().unwrap_or("");
            assert!(
                p != "Failed" || want == "Failed",
                "Flow {id} failed: {}",
                v["error"]
            );
            (p == want).then_some(v)
        })
    }

    /// SIGKILL: no drain, no goodbye. The replicas follow through their parent-death signal.
    pub fn kill(&mut self) -> Vec<u32> {
        let tree = descendants(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        tree
    }

    /// SIGTERM, then checks that it exits 0 and leaves no process behind.
    pub fn stop(mut self) {
        let tree = descendants(self.child.id());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let status = wait_for("jc server to exit", Duration::from_secs(90), || {
            self.child.try_wait().expect("try_wait")
        });
        assert!(status.success(), "jc server exited with {status}");
        assert_gone(tree);
    }
}

pub fn assert_gone(tree: Vec<u32>) {
    wait_for(
        "every process of jc server to exit",
        Duration::from_secs(30),
        || tree.iter().all(|p| !pid_alive(*p)).then_some(()),
    );
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}

pub enum Body {
    Spec(String),
    /// curl `-F` fields (`name=value`, or `name=@path` for a file).
    Form(Vec<String>),
    Json(serde_json::Value),
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// `jc server token create USER`: the token is the last line.
pub fn token(data: &Path, user: &str) -> String {
    let out = Command::new(bin("jc"))
        .args(["server", "token", "create", user, "--data-dir"])
        .arg(data)
        .output()
        .expect("jc server token create");
    assert!(out.status.success(), "token create failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("a token line")
        .trim()
        .to_string()
}

/// Pushes the test Appender as `DATA/executors/<user>/echo/latest` (what `POST /executors` will
/// materialise).
pub fn push_echo(data: &Path, user: &str) {
    let dir = data
        .join("executors")
        .join(user)
        .join("echo")
        .join("latest");
    std::fs::create_dir_all(&dir).expect("executor dir");
    let src = workspace_root().join("tests/python/executors");
    std::fs::copy(src.join("appender.py"), dir.join("appender.py")).expect("copy py");
    std::fs::copy(src.join("appender.yml"), dir.join("config.yml")).expect("copy yml");
}

/// The public `jcloud` client's CLI (`.venv/bin/jc`, not ours), pointed at the server.
pub fn jcloud(server: &Server, token: &str, cwd: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(venv_bin().join("jc"))
        .args(args)
        .current_dir(cwd)
        .env("JCLOUD_API", server.url())
        .env("JINA_AUTH_TOKEN", token)
        .env("NO_VERSION_CHECK", "1")
        .env("JCLOUD_NO_INTERACTIVE", "1")
        .env("JCLOUD_NO_PROGRESSBAR", "1")
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .env("JINA_HUB_ROOT", cwd.join(".jina"))
        .env("COLUMNS", "200")
        .env("PATH", path_with_venv())
        .output()
        .expect("run the public jc");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("$ jc {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

/// Our `jc` against `server`, not on a terminal.
pub fn our_jc(server: &Server, token: &str, cwd: &Path, args: &[&str]) -> Output {
    let out = Command::new(bin("jc"))
        .args(args)
        .current_dir(cwd)
        .env("JCLOUD_API", server.url())
        .env("JINA_AUTH_TOKEN", token)
        .env("JINA_HUB_ROOT", cwd.join(".jina"))
        .env("PATH", path_with_venv())
        .stdin(Stdio::null())
        .output()
        .expect("run jc");
    println!(
        "$ jc {}\n{}{}(exit {:?})",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

pub fn our_jc_json(server: &Server, token: &str, cwd: &Path, args: &[&str]) -> serde_json::Value {
    let out = our_jc(server, token, cwd, args);
    assert!(
        out.status.success(),
        "jc {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("jc {args:?} printed no JSON ({e}): {text}"))
}
