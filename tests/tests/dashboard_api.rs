//! The dashboard's back end on a real `jc server`: its reads need a token (401 without), show
//! only the user's own Flows (another user's is 404, as in the REST API), `/` is the page for a
//! browser and the health answer for a program, every asset is served from the binary, and the
//! live feed is Server-Sent Events in the page's shape (`flow`, then `history` with the rings,
//! then `samples` each second).

#[path = "server_common.rs"]
mod server_common;

use server_common::{Body, Server, free_port};
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};
use zeroflow_tests::temp_dir;

const FLOW: &str = "jtype: Flow\nexecutors:\n  - name: echo\n    command: zeroflow-test-executor\n    jcloud:\n      autoscale:\n        min: 0\n        max: 2\n";

/// A GET with headers; returns (status, headers lowercased, body).
fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-S", "-m", "30", "-D", "-"]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
    h.iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// Reads Server-Sent Events from `path` until `enough` says so (or the deadline): each as
/// (event name, JSON data).
fn events(
    port: u16,
    path: &str,
    token: &str,
    deadline: Duration,
    mut enough: impl FnMut(&[(String, serde_json::Value)]) -> bool,
) -> Vec<(String, serde_json::Value)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    let mut ctype = String::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        if l.to_ascii_lowercase().starts_with("content-type:") {
            ctype = l.clone();
        }
        if l == "\r\n" {
            break;
        }
    }
    assert!(ctype.contains("text/event-stream"), "{ctype}");
    let end = Instant::now() + deadline;
    let mut out = vec![];
    let (mut name, mut data) = (String::new(), String::new());
    while Instant::now() < end && !enough(&out) {
        let mut l = String::new();
        match r.read_line(&mut l) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => continue,
        }
        // Chunked transfer: size lines are hex alone; event lines have a field name.
        let l = l.trim_end();
        if let Some(v) = l.strip_prefix("event:") {
            name = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if l.is_empty() && !data.is_empty() {
            let v = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
            out.push((std::mem::take(&mut name), v));
            data.clear();
        }
    }
    out
}

#[test]
fn dashboard_reads_need_a_token_show_only_the_users_flows_and_stream_its_live_feed() {
    let dir = temp_dir("dashboard-api");
    let server = Server::start(&dir.join("data"), free_port());
    let port = server.port;
    let alice = server.token("alice");
    let bob = server.token("bob");
    let (s, _, v) = server.call(
        "POST",
        "/flows",
        Some(&alice),
        Some(Body::Spec(FLOW.into())),
    );
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    server.wait_phase(&alice, &id, "Serving", Duration::from_secs(120));

    // The page for a browser, with a policy that allows only this origin; the health answer
    // for a program.
    let (s, h, body) = get(port, "/", &[("Accept", "text/html")]);
    assert_eq!(s, 200);
    assert!(header(&h, "content-type").starts_with("text/html"), "{h:?}");
    assert!(header(&h, "content-security-policy").contains("default-src 'self'"));
    let (s, _, body_json) = get(port, "/", &[("Accept", "application/json")]);
    assert_eq!((s, body_json.trim()), (200, r#"{"status":"ok"}"#));
    // Every asset the page names is served from the binary.
    let assets: Vec<&str> = body
        .split('"')
        .filter(|p| p.starts_with("/ui/assets/"))
        .collect();
    assert!(
        !assets.is_empty(),
        "the built page names its assets: {body}"
    );
    for a in assets {
        let (s, h, _) = get(port, a, &[]);
        assert_eq!(s, 200, "{a}");
        assert!(
            header(&h, "cache-control").contains("immutable"),
            "{a}: {h:?}"
        );
    }
    for attr in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(
            !body.contains(attr),
            "nothing from elsewhere: {attr} in {body}"
        );
    }

    // No token: 401, with the REST API's JSON error.
    for path in [
        "/ui/api/flows",
        &format!("/ui/api/flows/{id}"),
        &format!("/ui/api/flows/{id}/events"),
    ] {
        let (s, h, b) = get(port, path, &[]);
        assert_eq!(s, 401, "{path}: {b}");
        assert!(header(&h, "content-type").starts_with("application/json"));
        assert!(b.contains("Authorization"), "{b}");
        let (s, _, _) = get(port, path, &[("Authorization", "Bearer wrong")]);
        assert_eq!(s, 401, "{path} with a wrong token");
    }
    // Another user's Flow: not found, and not listed.
    for path in [
        format!("/ui/api/flows/{id}"),
        format!("/ui/api/flows/{id}/events"),
    ] {
        let (s, _, b) = get(port, &path, &[("Authorization", &bob)]);
        assert_eq!(s, 404, "{path}: {b}");
    }
    let (s, _, b) = get(port, "/ui/api/flows", &[("Authorization", &bob)]);
    assert_eq!((s, b.as_str()), (200, r#"{"flows":[]}"#));

    // The owner's list: the Flow, serving, with its endpoint and its Executor at zero.
    let (_, _, b) = get(port, "/ui/api/flows", &[("Authorization", &alice)]);
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["flows"][0]["at_zero"], 1, "{v}");
    let f = &v["flows"][0];
    assert_eq!(
        (f["id"].as_str(), f["phase"].as_str()),
        (Some(id.as_str()), Some("Serving"))
    );
    assert!(
        f["endpoints"]["gateway"]
            .as_str()
            .unwrap()
            .starts_with("grpc://127.0.0.1:")
    );
    assert_eq!(f["executors"], 1);
    let (s, _, b) = get(
        port,
        &format!("/ui/api/flows/{id}"),
        &[("Authorization", &alice)],
    );
    assert_eq!(s, 200);
    let d: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(d["graph"][0]["name"], "echo");
    assert_eq!(d["graph"][0]["autoscale"]["min"], 0);
    assert_eq!(
        d["actions"],
        serde_json::json!(["scale", "pause", "resume", "restart", "remove"])
    );

    // The live feed: the phase, the history, then a sample a second. The dashboard watches a
    // Flow within a second of its start; before, the history says it is not live and the
    // stream ends for the page to ask again.
    let got = zeroflow_tests::wait_for("the Flow's live feed", Duration::from_secs(60), || {
        let got = events(
            port,
            &format!("/ui/api/flows/{id}/events"),
            &alice,
            Duration::from_secs(30),
            |evs| evs.iter().filter(|(n, _)| n == "samples").count() >= 2,
        );
        (got.get(1).is_some_and(|(_, h)| h["live"] == true)).then_some(got)
    });
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(&names[..2], ["flow", "history"], "{names:?}");
    assert_eq!(got[0].1["phase"], "Serving");
    let h = &got[1].1;
    assert_eq!(h["live"], true);
    assert_eq!(h["window_ms"], 3_600_000);
    let echo = &h["executors"]["echo"];
    assert_eq!(
        (echo["desired"].as_u64(), echo["ready"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(echo["autoscaled"], true);
    let sample = &echo["samples"][0];
    assert_eq!(
        sample.as_array().map(Vec::len),
        Some(6),
        "[t, desired, ready, rps, p50, p99]: {sample}"
    );
    let samples: Vec<&serde_json::Value> = got
        .iter()
        .filter(|(n, _)| n == "samples")
        .map(|(_, v)| v)
        .collect();
    assert!(samples.len() >= 2, "{names:?}");
    assert_eq!(samples[0]["type"], "samples");
    assert_eq!(samples[0]["executors"]["echo"][1], 0);
    assert!(samples[1]["t"].as_u64() > samples[0]["t"].as_u64());
    server.stop();
}
