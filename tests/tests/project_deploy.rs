//! `jc flow deploy DIR` with a project folder (the `jc new` layout) end to end: our `jc` uploads
//! the folder, `jc server` keeps it in a real S3-compatible store (s3rver), runs its Python
//! Executor with a real `jina executor`, and a real `jina.Client` gets `hello, world!` back. After
//! a SIGKILL and with the local cache gone, the restarted server fetches the project from S3 and
//! serves again. Then the refusals: archives that climb out of the folder, hold links, or are over
//! the size limit get 400/413 with a JSON `error` naming the problem, and nothing is created; a
//! failing `pip install` fails the Flow with pip's output; a relative `--data-dir` works.

#[path = "server_common.rs"]
mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use zeroflow_tests::{bin, python, run_python, temp_dir, wait_for};

const BUCKET: &str = "zeroflow-projects";

/// The artifacts crate's s3rver, with what these tests read from it.
struct S3rver(zeroflow_artifacts::testing::S3rver);

impl S3rver {
    fn start() -> S3rver {
        S3rver(zeroflow_artifacts::testing::S3rver::start(BUCKET))
    }

    /// What `jc server` needs to use this S3 store (artifacts/src/s3.rs, `S3Config::from_env`).
    fn env(&self) -> Vec<(String, String)> {
        self.0.env()
    }

    /// Keys in the bucket under `prefix`, read with the S3 client (not through `jc server`).
    fn list(&self, prefix: &str) -> Vec<String> {
        let store = zeroflow_artifacts::S3Store::new(self.0.config("")).expect("S3 store");
        use zeroflow_artifacts::ArtifactStore;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(store.list(prefix))
            .expect("list the bucket")
    }
}

/// `jc new NAME` in `parent` (our template), with a `.env` value the spec uses and a
/// requirements.txt that holds only comments (the install path runs; nothing is downloaded).
fn new_project(parent: &Path, name: &str) -> PathBuf {
    let out = Command::new(bin("jc"))
        .args(["new", name])
        .current_dir(parent)
        .output()
        .expect("jc new");
    assert!(
        out.status.success(),
        "jc new: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = parent.join(name);
    std::fs::write(dir.join(".env"), "TEAM=zeroflow-team\n").unwrap();
    let flow = std::fs::read_to_string(dir.join("flow.yml")).unwrap();
    std::fs::write(
        dir.join("flow.yml"),
        flow.replace(
            "jtype: Flow\n",
            "jtype: Flow\njcloud:\n  labels:\n    team: ${{ context.TEAM }}\n",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("executor1/requirements.txt"),
        "# nothing to install for this Executor\n\n",
    )
    .unwrap();
    dir
}

fn gateway(v: &Value) -> String {
    v.pointer("/status/endpoints/gateway")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no gateway endpoint in {v}"))
        .to_string()
}

#[test]
fn a_jc_new_project_deploys_to_s3_serves_and_comes_back_after_a_kill() {
    let s3 = S3rver::start();
    let data = temp_dir("project-s3-data");
    let port = free_port();
    let mut server = Server::start_with(&data, port, &s3.env(), false);
    let token = server.token("alice");
    let work = temp_dir("project-s3-src");
    let proj = new_project(&work, "proj");

    let v = our_jc_json(
        &server,
        &token,
        &work,
        &["flow", "deploy", "proj", "--json", "--timeout", "300"],
    );
    let id = v["id"].as_str().expect("an id").to_string();
    // `.env` fed `${{ context.TEAM }}` when the server loaded the spec.
    assert_eq!(v["labels"]["team"], "zeroflow-team", "{v}");

    let status = our_jc_json(&server, &token, &work, &["flow", "status", &id, "--json"]);
    let gw = gateway(&status);
    run_python("check_client.py", &["hello_world", "--grpc", &gw]);

    // The archive and its record are in the bucket.
    let keys = s3.list("projects/alice/");
    for k in [
        format!("projects/alice/{id}.tar.gz"),
        format!("projects/alice/{id}.json"),
    ] {
        assert!(keys.contains(&k), "{k} is not in the bucket: {keys:?}");
    }
    // The Executor ran from the materialized project, where the requirements were considered.
    let cached = data.join("cache/projects/alice").join(&id);
    assert!(
        cached.join("executor1/config.yml").is_file(),
        "{}",
        cached.display()
    );

    // SIGKILL, the local copy of the project is lost, and the server starts again: the project
    // comes back from S3 and the Flow serves at the same endpoint.
    server.kill();
    std::fs::remove_dir_all(data.join("cache/projects")).expect("remove the project cache");
    std::fs::remove_dir_all(proj).expect("remove the source folder too");
    let server = Server::start_with(&data, port, &s3.env(), false);
    let v = server.wait_phase(&token, &id, "Serving", Duration::from_secs(300));
    assert_eq!(gateway(&v), gw);
    assert!(cached.join("executor1/executor.py").is_file());
    run_python("check_client.py", &["hello_world", "--grpc", &gw]);

    // Removing the Flow removes its project from the bucket.
    let (s, _, v) = server.call("DELETE", &format!("/flows/{id}"), Some(&token), None);
    assert_eq!(s, 200, "{v}");
    wait_for(
        "the project to leave the bucket",
        Duration::from_secs(60),
        || s3.list("projects/alice/").is_empty().then_some(()),
    );
    server.stop();
}

/// Writes a .tar.gz with Python's tarfile: `entries` are (name, kind, data) with kind `file`,
/// `dir` or `symlink` (data = the target).
fn make_tar(path: &Path, entries: &[(&str, &str, &[u8])]) {
    let spec: Vec<Value> = entries
        .iter()
        .map(|(n, k, d)| {
            serde_json::json!({"name": n, "kind": k, "hex": d.iter().map(|b| format!("{b:02x}")).collect::<String>()})
        })
        .collect();
    let script = r#"
import io, json, sys, tarfile
out, entries = sys.argv[1], json.load(sys.stdin)
with tarfile.open(out, 'w:gz') as t:
    for e in entries:
        data = bytes.fromhex(e['hex'])
        info = tarfile.TarInfo(e['name'])
        if e['kind'] == 'symlink':
            info.type, info.linkname = tarfile.SYMTYPE, data.decode()
            t.addfile(info)
        elif e['kind'] == 'dir':
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
        else:
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
"#;
    let mut child = Command::new(python())
        .args(["-c", script])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(Value::Array(spec).to_string().as_bytes())
            .expect("write the entries");
    }
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "make_tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Incompressible bytes (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn error_of(v: &Value) -> String {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON `error` in {v}"))
        .to_string()
}

#[test]
fn bad_archives_are_refused_and_a_failed_install_fails_the_flow() {
    let root = temp_dir("project-bad");
    let data = root.join("data");
    // A relative --data-dir (resolved by the server) and a 64 KiB archive limit.
    let server = Server::start_with(
        &data,
        free_port(),
        &[("ZEROFLOW_MAX_ARCHIVE_BYTES".into(), "65536".into())],
        true,
    );
    let token = server.token("bob");
    let flow_yml = root.join("flow.yml");
    std::fs::write(
        &flow_yml,
        "jtype: Flow\nexecutors:\n  - name: executor1\n    uses: executor1/config.yml\n",
    )
    .unwrap();
    let spec = format!("spec=@{}", flow_yml.display());
    let flow = b"jtype: Flow\nexecutors:\n  - name: executor1\n    uses: executor1/config.yml\n";
    let post = |archive: &Path| {
        server.call(
            "POST",
            "/flows",
            Some(&token),
            Some(Body::Form(vec![
                spec.clone(),
                format!("archive=@{}", archive.display()),
            ])),
        )
    };

    let slip = root.join("slip.tar.gz");
    make_tar(
        &slip,
        &[("flow.yml", "file", flow), ("../evil", "file", b"pwned")],
    );
    let (s, ct, v) = post(&slip);
    assert_eq!((s, ct.as_str()), (400, "application/json"), "{v}");
    let e = error_of(&v);
    assert!(e.contains("../evil"), "the error names the entry: {e}");
    assert!(!root.join("evil").exists() && !data.join("evil").exists());

    let link = root.join("link.tar.gz");
    make_tar(
        &link,
        &[
            ("flow.yml", "file", flow),
            ("executor1", "dir", b""),
            ("executor1/config.yml", "symlink", b"/etc/passwd"),
        ],
    );
    let (s, _, v) = post(&link);
    assert_eq!(s, 400, "{v}");
    let e = error_of(&v);
    assert!(
        e.contains("executor1/config.yml") && e.contains("symlink") && e.contains("/etc/passwd"),
        "the error names the link: {e}"
    );

    let big = root.join("big.tar.gz");
    make_tar(
        &big,
        &[
            ("flow.yml", "file", flow),
            ("weights.bin", "file", &noise(200 * 1024)),
        ],
    );
    let (s, ct, v) = post(&big);
    assert_eq!((s, ct.as_str()), (413, "application/json"), "{v}");
    let e = error_of(&v);
    assert!(e.contains("65536"), "the error names the limit: {e}");

    // None of them created a Flow or stored a project.
    let (s, _, v) = server.call("GET", "/flows", Some(&token), None);
    assert_eq!(s, 200);
    assert_eq!(v["flows"], serde_json::json!([]), "{v}");
    let stored = data.join("artifacts/projects");
    assert!(
        !stored.exists() || std::fs::read_dir(&stored).unwrap().next().is_none(),
        "nothing is stored: {}",
        stored.display()
    );

    // Validation with an archive checks that the files the spec names are in it.
    let missing = root.join("missing.tar.gz");
    make_tar(&missing, &[("flow.yml", "file", flow)]);
    let (s, _, v) = server.call(
        "POST",
        "/flows/validate",
        Some(&token),
        Some(Body::Form(vec![
            spec.clone(),
            format!("archive=@{}", missing.display()),
        ])),
    );
    assert_eq!(s, 200, "{v}");
    let errors = v["errors"].to_string();
    assert!(
        errors.contains("executor1/config.yml"),
        "the missing file is named: {v}"
    );
    // ... and so does a deploy, which creates nothing.
    let (s, _, v) = post(&missing);
    assert_eq!(s, 400, "{v}");
    assert!(error_of(&v).contains("executor1/config.yml"), "{v}");

    // A good project runs under the relative data folder (its paths are made absolute).
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    new_project(&work, "good");
    let v = our_jc_json(
        &server,
        &token,
        &work,
        &["flow", "deploy", "good", "--json", "--timeout", "300"],
    );
    run_python("check_client.py", &["hello_world", "--grpc", &gateway(&v)]);

    // A requirement pip cannot install fails the Flow with pip's own words (a missing local
    // path: pip fails without the network).
    let proj = new_project(&work, "pipfail");
    std::fs::write(
        proj.join("executor1/requirements.txt"),
        "# a path that is not there\n./no-such-package-dir\n",
    )
    .unwrap();
    let out = our_jc(
        &server,
        &token,
        &work,
        &["flow", "deploy", "pipfail", "--timeout", "300"],
    );
    assert!(!out.status.success(), "the deploy fails");
    let (s, _, v) = server.call("GET", "/flows?phase=Failed", Some(&token), None);
    assert_eq!(s, 200);
    let failed = &v["flows"][0];
    let err = failed["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {v}"));
    assert!(
        err.contains("pip install") && err.contains("no-such-package-dir"),
        "the error carries pip's output: {err}"
    );
    assert!(err.contains("requirements.txt"), "{err}");
    server.stop();
}
