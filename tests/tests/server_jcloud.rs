//! The public `jcloud` 0.3 client, unmodified, against `jc server`: deploy a Flow whose
//! Executor is a pushed one, list, status, scale, pause, resume, logs, secrets, jobs, remove;
//! a real `jina.Client` calls the Flow at the endpoint the status gave.

#[path = "server_common.rs"]
mod common;

use common::*;
use std::time::Duration;
use zeroflow_tests::{run_python, temp_dir, wait_for};

const FLOW: &str = "jtype: Flow\njcloud:\n  name: echo-flow\n  labels:\n    team: a\nexecutors:\n  - name: echo\n    uses: jinaai+docker://alice/echo\n";

fn ok(r: (bool, String), what: &str) -> String {
    assert!(r.0, "`jc {what}` failed:\n{}", r.1);
    r.1
}

#[test]
fn the_public_jcloud_client_drives_a_flow_through_its_life() {
    let data = temp_dir("server-jcloud");
    push_echo(&data, "alice");
    let server = Server::start(&data, free_port());
    let token = server.token("alice");
    let proj = data.join("project");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("flow.yml"), FLOW).unwrap();

    let out = ok(
        jcloud(&server, &token, &proj, &["flow", "deploy", "flow.yml"]),
        "flow deploy",
    );
    assert!(out.contains("Flow is available"), "{out}");
    let flows = server.call("GET", "/flows", Some(&token), None).2;
    let id = flows["flows"][0]["id"]
        .as_str()
        .expect("one Flow")
        .to_string();
    let grpc = flows["flows"][0]["status"]["endpoints"]["gateway"]
        .as_str()
        .expect("a gateway endpoint")
        .to_string();
    assert!(grpc.starts_with("grpc://127.0.0.1:"), "{grpc}");

    let out = ok(
        jcloud(&server, &token, &proj, &["flow", "list"]),
        "flow list",
    );
    assert!(out.contains(&id) && out.contains("Serving"), "{out}");
    let out = ok(
        jcloud(&server, &token, &proj, &["flow", "status", &id]),
        "flow status",
    );
    assert!(out.contains(&grpc), "{out}");
    run_python(
        "check_client.py",
        &["single", "--grpc", &grpc, "--suffix=-py"],
    );

    ok(
        jcloud(
            &server,
            &token,
            &proj,
            &[
                "flow",
                "scale",
                &id,
                "--executor",
                "echo",
                "--replicas",
                "2",
            ],
        ),
        "flow scale",
    );
    let spec = server
        .call("GET", &format!("/flows/{id}"), Some(&token), None)
        .2;
    assert_eq!(spec["spec"]["executors"][0]["replicas"], 2, "{spec}");

    ok(
        jcloud(&server, &token, &proj, &["flow", "pause", &id]),
        "flow pause",
    );
    assert_eq!(server.phase(&token, &id), "Paused");
    assert!(
        std::net::TcpStream::connect(grpc.trim_start_matches("grpc://")).is_err(),
        "a paused Flow takes no requests"
    );
    ok(
        jcloud(&server, &token, &proj, &["flow", "resume", &id]),
        "flow resume",
    );
    assert_eq!(server.phase(&token, &id), "Serving");
    // Same endpoint after the resume.
    run_python(
        "check_client.py",
        &["single", "--grpc", &grpc, "--suffix=-py"],
    );

    let out = ok(
        jcloud(
            &server,
            &token,
            &proj,
            &["flow", "logs", &id, "--executor", "echo"],
        ),
        "flow logs --executor",
    );
    assert!(
        out.contains("echo-"),
        "replica logs are listed by pod: {out}"
    );
    ok(
        jcloud(&server, &token, &proj, &["flow", "logs", &id, "--gateway"]),
        "flow logs --gateway",
    );

    ok(
        jcloud(
            &server,
            &token,
            &proj,
            &[
                "secret",
                "create",
                "creds",
                &id,
                "--from-literal",
                "{'K': 'sesame'}",
            ],
        ),
        "secret create",
    );
    let out = ok(
        jcloud(&server, &token, &proj, &["secret", "list", &id]),
        "secret list",
    );
    assert!(
        out.contains("creds") && !out.contains("sesame"),
        "values are masked: {out}"
    );

    ok(
        jcloud(
            &server,
            &token,
            &proj,
            &[
                "job",
                "create",
                "hello",
                &id,
                "busybox",
                "['sh', '-c', 'echo hello $K']",
                "--secrets",
                "{'K': {'name': 'creds', 'key': 'K'}}",
            ],
        ),
        "job create",
    );
    wait_for("the job to complete", Duration::from_secs(30), || {
        let v = server
            .call("GET", &format!("/jobs/{id}/hello"), Some(&token), None)
            .2;
        let last = v["status"]["conditions"].as_array()?.last()?.clone();
        (last["type"] == "Complete").then_some(())
    });
    let out = ok(
        jcloud(&server, &token, &proj, &["job", "logs", "hello", &id]),
        "job logs",
    );
    assert!(
        out.contains("hello sesame"),
        "the job saw its secret: {out}"
    );
    ok(
        jcloud(&server, &token, &proj, &["job", "list", &id]),
        "job list",
    );

    ok(
        jcloud(&server, &token, &proj, &["flow", "remove", &id]),
        "flow remove",
    );
    assert_eq!(server.phase(&token, &id), "Deleted");
    let listed = server.call("GET", "/flows", Some(&token), None).2;
    assert_eq!(
        listed["flows"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    server.stop();
}
