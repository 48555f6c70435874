//! Our `jc` client commands end to end against a real `jc server` started here: deploy a Flow of
//! Rust test Executors, list (table and --json), status, scale, restart, pause, resume, logs,
//! secrets, remove; and a real `jina.Client` call at the endpoint `jc flow status --json` gives.
//! Plus the failures that need no server: no token, no server, and the `jc new` template.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use zeroflow_tests::*;

/// A running `jc server` with its own data folder, and a token for it.
struct Server {
    child: Child,
    url: String,
    token: String,
    /// An empty JINA_HUB_ROOT, so a developer's ~/.jina/config.json never leaks in.
    hub_root: PathBuf,
}

impl Server {
    fn start() -> Server {
        let data = temp_dir("jc-server-data");
        let hub_root = temp_dir("jc-hub-root");
        let port = free_port();
        let child = Command::new(bin("jc"))
            .args(["server", "--port", &port.to_string(), "--data-dir"])
            .arg(&data)
            .env("PATH", path_with_venv())
            .env("JINA_OPTOUT_TELEMETRY", "1")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn jc server");
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{port}/"),
            token: String::new(),
            hub_root,
        };
        wait_for("jc server to listen", Duration::from_secs(60), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("jc server exited early: {status}");
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let out = Command::new(bin("jc"))
            .args(["server", "token", "create", "e2e", "--data-dir"])
            .arg(&data)
            .output()
            .expect("jc server token create");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "token create failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.token = stdout
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .expect("the token is printed on the last line")
            .trim()
            .to_string();
        server
    }

    /// `jc ARGS` against this server, not on a terminal (so no spinner and no prompts).
    fn jc(&self, args: &[&str]) -> Output {
        let out = Command::new(bin("jc"))
            .args(args)
            .env("JCLOUD_API", &self.url)
            .env("JINA_AUTH_TOKEN", &self.token)
            .env("JINA_HUB_ROOT", &self.hub_root)
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

    /// `jc ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.jc(args);
        assert!(
            out.status.success(),
            "jc {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let s = self.ok(args);
        serde_json::from_str(&s)
            .unwrap_or_else(|e| panic!("jc {args:?} printed no JSON ({e}): {s}"))
    }

    fn stop(mut self) {
        let tree = descendants(self.child.id());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT");
        let status = wait_for("jc server to exit", Duration::from_secs(90), || {
            self.child.try_wait().expect("try_wait")
        });
        assert!(status.success(), "jc server exited with {status}");
        let left: Vec<u32> = tree.into_iter().filter(|p| pid_alive(*p)).collect();
        assert!(left.is_empty(), "processes left behind: {left:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_flow(dir: &Path, yaml: &str) {
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("flow.yml"), yaml).expect("write flow.yml");
}

fn gateway_of(status: &Value) -> String {
    status
        .pointer("/status/endpoints/gateway")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no gateway endpoint in {status}"))
        .to_string()
}

#[test]
fn deploy_operate_and_call_a_flow_through_jc() {
    let server = Server::start();
    let dir = temp_dir("jc-client-flow");
    write_flow(
        &dir,
        "jtype: Flow\nexecutors:\n  - name: echo\n    command: zeroflow-test-executor --append=-z\n",
    );

    // A bad Flow is refused before anything is created, with the server's reasons.
    let bad = temp_dir("jc-client-bad");
    write_flow(
        &bad,
        "jtype: Flow\nexecutors:\n  - name: e\n    jcloud:\n      autoscale:\n        min: 3\n        max: 1\n",
    );
    let out = server.jc(&["flow", "deploy", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("max"), "{}", stderr(&out));

    // Deploy waits until Serving and prints the summary with the endpoints.
    let panel = server.ok(&["flow", "deploy", dir.to_str().unwrap(), "--timeout", "4m"]);
    assert!(panel.contains("Flow is available!"), "{panel}");
    assert!(panel.contains("Gateway"), "{panel}");

    let listed = server.json(&["flow", "list", "--json"]);
    let flows = listed["flows"].as_array().expect("flows[]");
    assert_eq!(flows.len(), 1, "{listed}");
    let id = flows[0]["id"].as_str().expect("id").to_string();
    assert!(panel.contains(&id), "the summary names the ID: {panel}");
    let table = server.ok(&["flows", "list"]);
    for col in ["ID", "Status", "Endpoint(s)", "Credits Per Hour", "Created"] {
        assert!(table.contains(col), "{table}");
    }
    assert!(table.contains(&id) && table.contains("Serving"), "{table}");
    let table = server.ok(&["flow", "list", "--phase", "paused"]);
    assert!(!table.contains(&id), "filtered by phase: {table}");

    let status = server.json(&["flow", "status", &id, "--json"]);
    assert_eq!(status["status"]["phase"], "Serving", "{status}");
    let shown = server.ok(&["flow", "status", &id, "--verbose"]);
    assert!(
        shown.contains("Serving") && shown.contains("echo"),
        "{shown}"
    );

    // The unmodified jina.Client at the endpoint the status gives.
    let grpc = gateway_of(&status);
    run_python(
        "check_client.py",
        &["echo_text", "--grpc", &grpc, "--suffix=-z"],
    );

    // Scale, then restart one Executor: each waits until Serving again.
    server.ok(&[
        "flow",
        "scale",
        &id,
        "--executor",
        "echo",
        "--replicas",
        "2",
        "--timeout",
        "2m",
    ]);
    let status = server.json(&["flow", "status", &id, "--json"]);
    assert_eq!(status["status"]["phase"], "Serving");
    let spec = &status["spec"];
    let replicas_2 = match spec {
        Value::String(s) => s.contains("replicas: 2"),
        v => v.pointer("/executors/0/replicas").and_then(Value::as_u64) == Some(2),
    };
    assert!(replicas_2, "the spec shows the new replica count: {spec}");
    server.ok(&[
        "flow",
        "restart",
        &id,
        "--executor",
        "echo",
        "--timeout",
        "2m",
    ]);

    // Logs: the gateway's by default, an Executor's by name; --json is the server's shape.
    server.ok(&["flow", "logs", &id]);
    let logs = server.json(&["flow", "logs", &id, "--executor", "echo", "--json"]);
    assert!(logs["logs"].is_object(), "logs is pod → text: {logs}");

    // Pause and resume, then the Flow answers again.
    let paused = server.ok(&["flow", "pause", &id, "--timeout", "2m"]);
    assert!(paused.contains("paused"), "{paused}");
    assert_eq!(
        server.json(&["flow", "status", &id, "--json"])["status"]["phase"],
        "Paused"
    );
    server.ok(&["flow", "resume", &id, "--timeout", "4m"]);
    let status = server.json(&["flow", "status", &id, "--json"]);
    assert_eq!(status["status"]["phase"], "Serving");
    run_python(
        "check_client.py",
        &["echo_text", "--grpc", &gateway_of(&status), "--suffix=-z"],
    );

    // Secrets, in the Python-literal form the JCloud docs use.
    server.ok(&[
        "secret",
        "create",
        "db",
        &id,
        "--from-literal",
        "{'USER': 'me', 'PASS': 'pw'}",
    ]);
    let secrets = server.json(&["secrets", "list", &id, "--json"]);
    assert!(secrets.to_string().contains("\"db\""), "{secrets}");
    let table = server.ok(&["secret", "list", &id]);
    assert!(table.contains("db") && table.contains("USER"), "{table}");
    assert!(
        !table.contains("pw"),
        "the list shows keys, not values: {table}"
    );

    // An unknown ID: the server's error plus where to find the right one.
    let out = server.jc(&["flow", "status", "no-such-flow"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("check the ID with `jc flow list`"),
        "{}",
        stderr(&out)
    );

    // Remove waits until Deleted; the default list no longer shows it.
    server.ok(&["flow", "remove", &id, "--timeout", "2m"]);
    let listed = server.json(&["flow", "list", "--json"]);
    assert!(
        !listed.to_string().contains(&id),
        "removed flows are not listed: {listed}"
    );
    server.stop();
}

#[test]
fn failures_that_need_no_server_say_what_to_do() {
    let hub_root = temp_dir("jc-no-token");
    let port = free_port();
    let jc = |args: &[&str], token: Option<&str>| {
        let mut c = Command::new(bin("jc"));
        c.args(args)
            .env("JCLOUD_API", format!("http://127.0.0.1:{port}"))
            .env("JINA_HUB_ROOT", &hub_root)
            .env_remove("JINA_AUTH_TOKEN")
            .stdin(Stdio::null());
        if let Some(t) = token {
            c.env("JINA_AUTH_TOKEN", t);
        }
        c.output().expect("run jc")
    };
    // No token: exit 1 (the public client exits 0) with where to get one.
    let out = jc(&["flow", "list"], None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("jc server token create"),
        "{}",
        stderr(&out)
    );

    // A token in $JINA_HUB_ROOT/config.json is used; nothing listens: exit 69 and what to do.
    let out = jc(&["login", "--token", "t0ken"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(hub_root.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["auth_token"], "t0ken");
    let out = jc(&["flow", "status", "x"], None);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("start one with `jc server` or set JCLOUD_API"),
        "{}",
        stderr(&out)
    );

    // Usage errors exit 2.
    let out = jc(&["flow", "restart"], Some("t"));
    assert_eq!(out.status.code(), Some(2));
    let out = jc(
        &["secret", "create", "s", "f", "--from-literal", "{'K': V}"],
        Some("t"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--from-literal"), "{}", stderr(&out));
    let out = jc(&["flow", "deploy", "/nonexistent/zeroflow"], Some("t"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn jc_new_makes_a_project_whose_executor_runs_on_jina_3_34() {
    let parent = temp_dir("jc-new");
    let out = Command::new(bin("jc"))
        .arg("new")
        .current_dir(&parent)
        .output()
        .expect("run jc new");
    assert!(out.status.success(), "{}", stderr(&out));
    let project = parent.join("helloworld");
    for f in [
        ".env",
        "flow.yml",
        "executor1/config.yml",
        "executor1/executor.py",
        "executor1/requirements.txt",
    ] {
        assert!(project.join(f).exists(), "{f} is missing");
    }
    // The Executor loads from its config and answers as the template says.
    let script = r#"
import sys
from docarray import DocList
from docarray.documents import TextDoc
from jina import Executor
e = Executor.load_config(sys.argv[1])
out = e.foo(DocList[TextDoc]([TextDoc(text='x')]))
assert out[0].text == 'hello, world!', out[0].text
print('ok')
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(project.join("executor1/config.yml"))
        .current_dir(project.join("executor1"))
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    // The Flow it makes validates locally.
    let out = Command::new(bin("jc"))
        .args(["flow", "normalize"])
        .arg(&project)
        .output()
        .expect("run jc flow normalize");
    assert!(out.status.success(), "{}", stderr(&out));
}
