//! `jc server`'s REST API beyond the happy path: users cannot reach each other's Flows,
//! secrets or jobs; a SIGKILL mid-deploy and during traffic loses nothing and the Flows serve
//! again at the same endpoints; bad input gets the right status and a JSON `error` naming the
//! problem, and changes nothing.

#[path = "server_common.rs"]
mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use zeroflow_tests::{descendants, run_python, temp_dir};

const RUST_FLOW: &str = "jtype: Flow\njcloud:\n  name: rusty\nexecutors:\n  - name: one\n    command: zeroflow-test-executor --append=-one\n";

fn deploy(server: &Server, token: &str, yaml: &str) -> String {
    let (s, ct, v) = server.call("POST", "/flows", Some(token), Some(Body::Spec(yaml.into())));
    assert_eq!(s, 201, "deploy: {v}");
    assert_eq!(ct, "application/json");
    v["id"].as_str().expect("id").to_string()
}

fn gateway(v: &serde_json::Value) -> String {
    v["status"]["endpoints"]["gateway"]
        .as_str()
        .expect("gateway endpoint")
        .to_string()
}

#[test]
fn users_cannot_reach_each_others_flows_secrets_or_jobs() {
    let data = temp_dir("server-users");
    let server = Server::start(&data, free_port());
    let alice = server.token("alice");
    let bob = server.token("bob");
    let id = deploy(&server, &alice, RUST_FLOW);
    server.wait_phase(&alice, &id, "Serving", Duration::from_secs(60));
    let (s, _, v) = server.call(
        "POST",
        "/secrets",
        Some(&alice),
        Some(Body::Json(
            json!({"name": "s", "id": id, "data": {"K": "V"}}),
        )),
    );
    assert_eq!(s, 201, "{v}");
    let (s, _, v) = server.call(
        "POST",
        "/jobs",
        Some(&alice),
        Some(Body::Json(json!({"name": "j", "flowid": id, "image": "x", "entrypoint": ["true"], "timeout": 60, "backoffLimit": 0, "secrets": null}))),
    );
    assert_eq!(s, 201, "{v}");

    let tries: Vec<(&str, String, Option<Body>)> = vec![
        ("GET", format!("/flows/{id}"), None),
        (
            "PUT",
            format!("/flows/{id}"),
            Some(Body::Spec(RUST_FLOW.into())),
        ),
        ("PUT", format!("/flows/{id}:pause"), None),
        ("PUT", format!("/flows/{id}:restart"), None),
        (
            "PUT",
            format!("/flows/{id}/executors/one:scale?replicas=2"),
            None,
        ),
        ("GET", format!("/flows/{id}/executors/one/logs"), None),
        ("GET", format!("/flows/{id}/gateway/logs"), None),
        ("DELETE", format!("/flows/{id}"), None),
        ("GET", format!("/secrets/{id}"), None),
        ("GET", format!("/secrets/{id}/s"), None),
        (
            "POST",
            format!("/secrets/{id}/s"),
            Some(Body::Json(
                json!({"name": "s", "id": id, "data": {"K": "stolen"}}),
            )),
        ),
        ("DELETE", format!("/secrets/{id}/s"), None),
        (
            "POST",
            "/secrets".into(),
            Some(Body::Json(
                json!({"name": "t", "id": id, "data": {"K": "V"}}),
            )),
        ),
        ("GET", format!("/jobs/{id}"), None),
        ("GET", format!("/jobs/{id}/j"), None),
        ("GET", format!("/jobs/{id}/j/logs"), None),
        ("DELETE", format!("/jobs/{id}/j"), None),
        (
            "POST",
            "/jobs".into(),
            Some(Body::Json(
                json!({"name": "k", "flowid": id, "entrypoint": ["true"]}),
            )),
        ),
    ];
    for (m, p, b) in tries {
        let (s, ct, v) = server.call(m, &p, Some(&bob), b);
        assert_eq!(s, 404, "bob {m} {p}: {v}");
        assert_eq!(ct, "application/json");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("not found")),
            "{m} {p}: {v}"
        );
    }
    let (s, _, v) = server.call(
        "GET",
        "/flows?phase=Serving,Paused,Failed,Deleted",
        Some(&bob),
        None,
    );
    assert_eq!(
        (s, v["flows"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );

    // Alice's things are untouched.
    assert_eq!(server.phase(&alice, &id), "Serving");
    let (s, _, v) = server.call("GET", &format!("/secrets/{id}/s"), Some(&alice), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["K"], "********");
    let (s, _, v) = server.call("GET", &format!("/jobs/{id}"), Some(&alice), None);
    assert_eq!(
        (s, v["jobs"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{v}"
    );
    assert_eq!(v["Resources.Jobs"], v["jobs"]);
    server.stop();
}

#[test]
fn a_killed_server_comes_back_with_every_flow_at_the_same_endpoints() {
    let data = temp_dir("server-kill");
    let port = free_port();
    let mut server = Server::start(&data, port);
    let token = server.token("alice");
    let a = deploy(&server, &token, RUST_FLOW);
    let serving = server.wait_phase(&token, &a, "Serving", Duration::from_secs(60));
    let a_url = gateway(&serving);
    run_python(
        "check_client.py",
        &["single", "--grpc", &a_url, "--suffix=-one"],
    );
    let paused = deploy(&server, &token, RUST_FLOW);
    server.wait_phase(&token, &paused, "Serving", Duration::from_secs(60));
    let (s, _, _) = server.call("PUT", &format!("/flows/{paused}:pause"), Some(&token), None);
    assert_eq!(s, 202);
    server.wait_phase(&token, &paused, "Paused", Duration::from_secs(60));
    let (s, _, _) = server.call(
        "PUT",
        &format!("/flows/{a}/executors/one:scale?replicas=2"),
        Some(&token),
        None,
    );
    assert_eq!(s, 202);

    // Traffic on A while a second Flow is mid-deploy (a slow-starting Executor), then SIGKILL.
    let slow = deploy(
        &server,
        &token,
        "jtype: Flow\nexecutors:\n  - name: slow\n    command: zeroflow-test-executor --startup-delay 4000ms --append=-slow\n",
    );
    let b_url = gateway(
        &server
            .call("GET", &format!("/flows/{slow}"), Some(&token), None)
            .2,
    );
    let url = a_url.clone();
    let traffic = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(zeroflow_tests::load::sustained(
            &url,
            2,
            Duration::from_secs(3),
            0.0,
        ))
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_ne!(
        server.phase(&token, &slow),
        "Serving",
        "the kill must land mid-deploy"
    );
    assert!(!descendants(server.child.id()).is_empty());
    let tree = server.kill();
    let samples = traffic.join().expect("traffic thread");
    assert!(
        samples.iter().any(|s| s.result.is_ok()),
        "traffic reached the Flow before the kill"
    );
    // No orphan: every replica followed the server (parent-death signal).
    assert_gone(tree);

    let server = Server::start(&data, port);
    let back = server.wait_phase(&token, &a, "Serving", Duration::from_secs(60));
    assert_eq!(gateway(&back), a_url, "same endpoint after the restart");
    assert_eq!(
        back["spec"]["executors"][0]["replicas"], 2,
        "the scale survived"
    );
    let back_slow = server.wait_phase(&token, &slow, "Serving", Duration::from_secs(60));
    assert_eq!(
        gateway(&back_slow),
        b_url,
        "the interrupted deploy resumed on its ports"
    );
    assert_eq!(
        server.phase(&token, &paused),
        "Paused",
        "a paused Flow stays paused"
    );
    run_python(
        "check_client.py",
        &["single", "--grpc", &a_url, "--suffix=-one"],
    );
    run_python(
        "check_client.py",
        &["single", "--grpc", &b_url, "--suffix=-slow"],
    );
    // The paused one resumes on its old endpoint too.
    let p_url = gateway(
        &server
            .call("GET", &format!("/flows/{paused}"), Some(&token), None)
            .2,
    );
    assert_eq!(
        server
            .call(
                "PUT",
                &format!("/flows/{paused}:resume"),
                Some(&token),
                None
            )
            .0,
        202
    );
    server.wait_phase(&token, &paused, "Serving", Duration::from_secs(60));
    run_python(
        "check_client.py",
        &["single", "--grpc", &p_url, "--suffix=-one"],
    );
    server.stop();
}

#[test]
fn bad_input_gets_a_json_error_naming_the_problem_and_changes_nothing() {
    let data = temp_dir("server-bad");
    let server = Server::start(&data, free_port());
    let token = server.token("alice");
    let id = deploy(&server, &token, RUST_FLOW);
    server.wait_phase(&token, &id, "Serving", Duration::from_secs(60));
    let before = server.call("GET", "/flows?phase=All", Some(&token), None).2;
    let flow_before = server
        .call("GET", &format!("/flows/{id}"), Some(&token), None)
        .2;

    let expect =
        |m: &str, p: &str, tok: Option<&str>, body: Option<Body>, status: u16, needle: &str| {
            let (s, ct, v) = server.call(m, p, tok, body);
            assert_eq!(s, status, "{m} {p}: {v}");
            assert_eq!(ct, "application/json", "{m} {p}");
            let e = v["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{m} {p}: no error in {v}"));
            assert!(e.contains(needle), "{m} {p}: {e:?} should name {needle:?}");
            v
        };
    // Auth.
    expect("GET", "/flows", None, None, 401, "Authorization");
    expect("GET", "/flows", Some("wrong"), None, 401, "token");
    expect("GET", "/flows", Some("Bearer zf_nope"), None, 401, "token");
    // Malformed YAML: validate lists it with line and column, deploy refuses it.
    let broken = "jtype: Flow\nexecutors:\n  - name: a\n   uses: [\n";
    let (s, ct, v) = server.call(
        "POST",
        "/flows/validate",
        Some(&token),
        Some(Body::Spec(broken.into())),
    );
    assert_eq!((s, ct.as_str()), (200, "application/json"), "{v}");
    let errs = v["errors"].as_array().expect("errors");
    assert!(
        errs.iter().any(|e| e
            .as_str()
            .is_some_and(|e| e.contains("line") && e.contains("YAML"))),
        "{v}"
    );
    expect(
        "POST",
        "/flows",
        Some(&token),
        Some(Body::Spec(broken.into())),
        400,
        "YAML",
    );
    // Invalid jcloud values.
    let bad_jcloud = "jtype: Flow\nexecutors:\n  - name: a\n    command: zeroflow-test-executor\n    jcloud:\n      autoscale:\n        max: 8\n";
    let (_, _, v) = server.call(
        "POST",
        "/flows/validate",
        Some(&token),
        Some(Body::Spec(bad_jcloud.into())),
    );
    assert!(
        v["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("autoscale.max") && e.contains("line 7")),
        "{v}"
    );
    expect(
        "POST",
        "/flows",
        Some(&token),
        Some(Body::Spec(bad_jcloud.into())),
        400,
        "autoscale.max",
    );
    expect(
        "PUT",
        &format!("/flows/{id}"),
        Some(&token),
        Some(Body::Spec(bad_jcloud.into())),
        400,
        "autoscale.max",
    );
    // An Executor nobody pushed: not found.
    expect(
        "POST",
        "/flows",
        Some(&token),
        Some(Body::Spec(
            "jtype: Flow\nexecutors:\n  - name: a\n    uses: jinaai+docker://alice/ghost\n".into(),
        )),
        404,
        "ghost",
    );
    // A program that is not on the server.
    expect(
        "POST",
        "/flows",
        Some(&token),
        Some(Body::Spec(
            "jtype: Flow\nexecutors:\n  - name: a\n    command: zeroflow-no-such-program\n".into(),
        )),
        400,
        "Executor a cannot run: `zeroflow-no-such-program` is not on PATH",
    );
    expect("POST", "/flows", Some(&token), None, 400, "spec");
    // Unknown things.
    expect(
        "GET",
        "/flows/no-such-flow",
        Some(&token),
        None,
        404,
        "no-such-flow",
    );
    expect(
        "PUT",
        "/flows/no-such-flow:pause",
        Some(&token),
        None,
        404,
        "no-such-flow",
    );
    expect(
        "DELETE",
        "/flows/no-such-flow",
        Some(&token),
        None,
        404,
        "no-such-flow",
    );
    expect(
        "PUT",
        &format!("/flows/{id}/executors/ghost:scale?replicas=2"),
        Some(&token),
        None,
        404,
        "ghost",
    );
    expect(
        "PUT",
        &format!("/flows/{id}/executors/one:scale?replicas=lots"),
        Some(&token),
        None,
        400,
        "replicas",
    );
    expect(
        "PUT",
        &format!("/flows/{id}:explode"),
        Some(&token),
        None,
        400,
        ":explode",
    );
    expect(
        "GET",
        "/nothing/here",
        Some(&token),
        None,
        404,
        "/nothing/here",
    );
    expect(
        "GET",
        &format!("/secrets/{id}/ghost"),
        Some(&token),
        None,
        404,
        "ghost",
    );
    expect(
        "POST",
        "/secrets",
        Some(&token),
        Some(Body::Json(
            json!({"name": "s", "id": id, "data": {"K": [1]}}),
        )),
        400,
        "data.K",
    );
    expect(
        "POST",
        "/jobs",
        Some(&token),
        Some(Body::Json(
            json!({"name": "j", "flowid": id, "entrypoint": []}),
        )),
        400,
        "entrypoint",
    );
    expect(
        "GET",
        "/flows?phase=Sleeping",
        Some(&token),
        None,
        400,
        "Sleeping",
    );

    // Nothing stored changed.
    assert_eq!(
        server.call("GET", "/flows?phase=All", Some(&token), None).2["flows"]
            .as_array()
            .map(Vec::len),
        before["flows"].as_array().map(Vec::len)
    );
    let flow_after = server
        .call("GET", &format!("/flows/{id}"), Some(&token), None)
        .2;
    assert_eq!(flow_after["spec"], flow_before["spec"]);
    assert_eq!(flow_after["status"]["phase"], "Serving");
    assert_eq!(
        server
            .call("GET", &format!("/secrets/{id}"), Some(&token), None)
            .2["secrets"],
        json!([])
    );
    // The API documents itself.
    let (s, ct, doc) = server.call("GET", "/openapi.json", None, None);
    assert_eq!((s, ct.as_str()), (200, "application/json"));
    assert!(doc["paths"]["/flows/{id}:pause"].is_object(), "{doc}");
    server.stop();
}

/// Packs `src` (config.yml and appender.py) as the client does (.tar.gz) and pushes it with
/// `POST /executors` and the form `fields`.
fn push_folder(
    server: &Server,
    token: &str,
    src: &std::path::Path,
    fields: &[&str],
) -> (u16, String, serde_json::Value) {
    let archive = src.with_extension("tar.gz");
    let st = std::process::Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(src)
        .args(["config.yml", "appender.py"])
        .status()
        .expect("tar");
    assert!(st.success());
    let mut form: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    form.push(format!("archive=@{}", archive.display()));
    server.call("POST", "/executors", Some(token), Some(Body::Form(form)))
}

#[test]
fn an_executor_pushed_through_the_api_runs_in_a_flow() {
    let data = temp_dir("server-push");
    let server = Server::start(&data, free_port());
    let token = server.token("carol");
    // The Executor folder as the client sends it: config.yml + module, packed as .tar.gz.
    let src = data.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let py = zeroflow_tests::workspace_root().join("tests/python/executors");
    std::fs::copy(py.join("appender.py"), src.join("appender.py")).unwrap();
    std::fs::copy(py.join("appender.yml"), src.join("config.yml")).unwrap();
    let (s, ct, v) = push_folder(&server, &token, &src, &["name=pushed", "tag=v1"]);
    assert_eq!((s, ct.as_str()), (201, "application/json"), "{v}");
    assert_eq!(v["uses"], "jinaai+docker://carol/pushed:v1");
    // A folder without config.yml is refused, naming the missing file.
    let bad = data.join("bad.tar.gz");
    std::process::Command::new("tar")
        .arg("czf")
        .arg(&bad)
        .arg("-C")
        .arg(&src)
        .arg("appender.py")
        .status()
        .expect("tar");
    let (s, _, v) = server.call(
        "POST",
        "/executors",
        Some(&token),
        Some(Body::Form(vec![
            "name=broken".into(),
            format!("archive=@{}", bad.display()),
        ])),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("config.yml")),
        "{v}"
    );

    let id = deploy(
        &server,
        &token,
        "jtype: Flow\nexecutors:\n  - name: e\n    uses: jinaai+docker://carol/pushed:v1\n",
    );
    let v = server.wait_phase(&token, &id, "Serving", Duration::from_secs(120));
    run_python(
        "check_client.py",
        &["single", "--grpc", &gateway(&v), "--suffix=-py"],
    );

    // An Executor's workspace is the Flow's own folder in the data directory (a relative
    // `workspace` goes under it), and what it keeps there outlives a restart.
    std::fs::write(
        src.join("config.yml"),
        "jtype: ShardReporter\npy_modules:\n  - appender.py\n",
    )
    .unwrap();
    let (s, _, v) = push_folder(&server, &token, &src, &["name=reporter"]);
    assert_eq!(s, 201, "{v}");
    let id = deploy(
        &server,
        &token,
        "jtype: Flow\nexecutors:\n  - name: r\n    uses: jinaai+docker://carol/reporter\n    workspace: state\n",
    );
    let v = server.wait_phase(&token, &id, "Serving", Duration::from_secs(120));
    let url = gateway(&v);
    let ask = || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let mut c = zeroflow_tests::load::client(&url).await;
            let r = c
                .process_single_data(zeroflow_tests::load::text_request("w", &["x"]))
                .await
                .expect("answered")
                .into_inner();
            let docs = zeroflow_gateway::docs::decode_docs(&r.data).expect("docs");
            zeroflow_gateway::docs::docs_to_json(&docs)[1]["text"]
                .as_str()
                .expect("the workspace")
                .to_string()
        })
    };
    let ws = std::path::PathBuf::from(ask());
    let root = std::fs::canonicalize(&data)
        .unwrap()
        .join("flows")
        .join(&id)
        .join("workspace/state");
    assert!(
        ws.starts_with(&root),
        "{} under {}",
        ws.display(),
        root.display()
    );
    let (s, _, v) = server.call("PUT", &format!("/flows/{id}:restart"), Some(&token), None);
    assert_eq!(s, 202, "{v}");
    server.wait_phase(&token, &id, "Serving", Duration::from_secs(120));
    assert_eq!(std::path::PathBuf::from(ask()), ws);
    let seen = std::fs::read_to_string(ws.join("seen.txt")).expect("kept");
    assert_eq!(
        seen.lines().count(),
        2,
        "both requests, across the restart: {seen}"
    );
    server.stop();
}

/// `jc server` on `data` that must fail to start: its stderr.
fn failed_start(data: &std::path::Path, envs: &[(&str, &str)]) -> String {
    let mut child = std::process::Command::new(zeroflow_tests::bin("jc"))
        .args(["server", "--port", &free_port().to_string(), "--data-dir"])
        .arg(data)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn jc server");
    let status = zeroflow_tests::wait_for("jc server to give up", Duration::from_secs(60), || {
        child.try_wait().expect("try_wait")
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "it started: {err}");
    err
}

#[test]
fn secrets_are_sealed_at_rest_with_the_servers_key() {
    use std::os::unix::fs::PermissionsExt;
    const VALUE: &str = "s3cr3t-Value-91ab";
    let data = temp_dir("server-sealed");
    let server = Server::start(&data, free_port());
    let alice = server.token("alice");
    let id = deploy(&server, &alice, RUST_FLOW);
    let (s, _, v) = server.call(
        "POST",
        "/secrets",
        Some(&alice),
        Some(Body::Json(
            json!({"name": "db", "id": id, "data": {"PASSWORD": VALUE}}),
        )),
    );
    assert_eq!(s, 201, "{v}");
    assert!(!v.to_string().contains(VALUE), "{v}");
    let key = data.join("secret.key");
    let meta = std::fs::metadata(&key).expect("the key file made at first start");
    assert_eq!((meta.permissions().mode() & 0o777, meta.len()), (0o600, 32));
    let on_disk = |data: &std::path::Path| {
        ["state.db", "state.db-wal"]
            .iter()
            .flat_map(|f| std::fs::read(data.join(f)).unwrap_or_default())
            .collect::<Vec<u8>>()
    };
    let sealed = |bytes: &[u8]| !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes());
    assert!(sealed(&on_disk(&data)));
    server.stop();
    assert!(sealed(&on_disk(&data)));

    // A key file others can read stops the start, saying how to fix it.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = failed_start(&data, &[]);
    assert!(
        err.contains("secret.key") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Another key stops it too, naming the secret it cannot decrypt.
    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let err = failed_start(&data, &[("ZEROFLOW_SECRET_KEY", other)]);
    assert!(
        err.contains(&format!("secret db of Flow {id} cannot be decrypted")),
        "{err}"
    );
    let err = failed_start(&data, &[("ZEROFLOW_SECRET_KEY", "short")]);
    assert!(err.contains("ZEROFLOW_SECRET_KEY"), "{err}");
    // The same key given in the environment (as from a Kubernetes Secret) opens them.
    let b64 = std::process::Command::new("base64")
        .arg("-w0")
        .arg(&key)
        .output()
        .expect("base64");
    let b64 = String::from_utf8(b64.stdout).unwrap();
    let server = Server::start_with(
        &data,
        free_port(),
        &[("ZEROFLOW_SECRET_KEY".into(), b64)],
        false,
    );
    let (s, _, v) = server.call("GET", &format!("/secrets/{id}/db"), Some(&alice), None);
    assert_eq!(s, 200, "{v}");
    assert!(
        v.to_string().contains("PASSWORD") && !v.to_string().contains(VALUE),
        "{v}"
    );
    server.stop();
}

/// The test Appender's folder as a push sends it: config.yml + module.
fn appender_folder(data: &std::path::Path) -> std::path::PathBuf {
    let src = data.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let py = zeroflow_tests::workspace_root().join("tests/python/executors");
    std::fs::copy(py.join("appender.py"), src.join("appender.py")).unwrap();
    std::fs::copy(py.join("appender.yml"), src.join("config.yml")).unwrap();
    src
}

fn flow_using(uses: &str) -> String {
    format!("jtype: Flow\nexecutors:\n  - name: e\n    uses: {uses}\n")
}

#[test]
fn a_pushed_executor_is_private_to_its_owner_unless_pushed_public() {
    let data = temp_dir("server-private");
    let server = Server::start(&data, free_port());
    let alice = server.token("alice");
    let bob = server.token("bob");
    let src = appender_folder(&data);
    let (s, _, v) = push_folder(&server, &alice, &src, &["name=mine"]);
    assert_eq!((s, v["visibility"].as_str()), (201, Some("private")), "{v}");
    let (s, _, v) = push_folder(&server, &alice, &src, &["name=shared", "public=true"]);
    assert_eq!((s, v["visibility"].as_str()), (201, Some("public")), "{v}");
    for (fields, needle) in [
        (&["name=x", "public=maybe"][..], "public: got \"maybe\""),
        (&["name=x", "public=true", "private=true"], "both true"),
    ] {
        let (s, _, v) = push_folder(&server, &alice, &src, fields);
        assert_eq!(s, 400, "{fields:?}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{fields:?}: {v}"
        );
    }

    // Bob naming alice's private Executor, with either scheme, and one nobody pushed: the same
    // 404, naming the Executor, whether it exists or not.
    let refused = |uses: &str| {
        let (s, ct, v) = server.call(
            "POST",
            "/flows",
            Some(&bob),
            Some(Body::Spec(flow_using(uses))),
        );
        assert_eq!((s, ct.as_str()), (404, "application/json"), "{uses}: {v}");
        v["error"].as_str().expect("an error").to_string()
    };
    let private = refused("jinaai+docker://alice/mine");
    assert!(
        private.contains("Executor e: jinaai+docker://alice/mine")
            && private.contains("does not exist or is private"),
        "{private}"
    );
    let serverless = refused("jinaai+serverless://alice/mine:latest");
    assert!(serverless.contains("alice/mine"), "{serverless}");
    let missing = refused("jinaai+docker://alice/ghost");
    assert_eq!(missing.replace("ghost", "mine"), private);
    // Bob's own short name is his, not alice's.
    refused("jinaai+docker://mine");
    // Validation says the same, and nothing was created for bob.
    let (s, _, v) = server.call(
        "POST",
        "/flows/validate",
        Some(&bob),
        Some(Body::Spec(flow_using("jinaai+docker://alice/mine"))),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["errors"][0].as_str(), Some(private.as_str()), "{v}");
    let (_, _, v) = server.call("GET", "/flows?phase=All", Some(&bob), None);
    assert_eq!(v["flows"], json!([]), "{v}");

    // Our `jc executor push --public` makes it everyone's.
    let out = std::process::Command::new(zeroflow_tests::bin("jc"))
        .args(["executor", "push"])
        .arg(&src)
        .args(["--name", "viajc", "--public"])
        .env("JCLOUD_API", server.url())
        .env("JINA_AUTH_TOKEN", &alice)
        .output()
        .expect("jc executor push");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("public"), "{out:?}");
    let (s, _, v) = server.call(
        "POST",
        "/flows/validate",
        Some(&bob),
        Some(Body::Spec(flow_using("jinaai+docker://alice/viajc"))),
    );
    assert_eq!((s, &v["errors"]), (200, &json!([])), "{v}");

    // The owner runs the private one, bob the public one.
    let mine = deploy(&server, &alice, &flow_using("jinaai+docker://alice/mine"));
    let shared = deploy(
        &server,
        &bob,
        &flow_using("jinaai+serverless://alice/shared"),
    );
    for (token, id) in [(&alice, &mine), (&bob, &shared)] {
        let v = server.wait_phase(token, id, "Serving", Duration::from_secs(180));
        run_python(
            "check_client.py",
            &["single", "--grpc", &gateway(&v), "--suffix=-py"],
        );
    }
    server.stop();
}

#[test]
fn a_flow_whose_executor_cannot_start_fails_with_its_output() {
    let data = temp_dir("server-failed");
    let server = Server::start(&data, free_port());
    let token = server.token("dave");
    let id = deploy(
        &server,
        &token,
        "jtype: Flow\nexecutors:\n  - name: broken\n    command: zeroflow-test-executor --boom-from-the-executor\n",
    );
    let v = server.wait_phase(&token, &id, "Failed", Duration::from_secs(60));
    let err = v["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("boom-from-the-executor"),
        "the error carries the Executor's output: {v}"
    );
    // A replica that exits at once did not time out: the error says it exited.
    assert!(
        err.contains("exited before it served") && !err.contains("not ready within"),
        "{v}"
    );
    // A failed Flow is removed at once (the public client's remove waits for Deleted).
    let (s, _, _) = server.call("DELETE", &format!("/flows/{id}"), Some(&token), None);
    assert_eq!(s, 200);
    assert_eq!(server.phase(&token, &id), "Deleted");
    server.stop();
}
