use super::*;
use crate::kube::crd::FlowSpec;
use serde_json::{Value, json};

fn now() -> Timestamp {
    "2025-06-01T12:00:00Z".parse().unwrap()
}

fn earlier() -> Timestamp {
    "2025-06-01T11:00:00Z".parse().unwrap()
}

fn flow(paused: bool, previous: Option<FlowStatus>) -> FlowResource {
    let mut r = FlowResource::new(
        "f",
        FlowSpec {
            flow_id: "f".into(),
            owner: "u".into(),
            yaml: String::new(),
            paused,
            ..Default::default()
        },
    );
    r.metadata.namespace = Some("zf-f".into());
    r.metadata.generation = Some(2);
    r.status = previous;
    r
}

fn plan() -> Vec<ShardPlan> {
    vec![
        ShardPlan {
            executor: "echo".into(),
            shard: None,
            deployment: "exec-echo".into(),
            min: 1,
        },
        ShardPlan {
            executor: "enc".into(),
            shard: None,
            deployment: "exec-enc".into(),
            min: 0,
        },
    ]
}

/// A Deployment with `desired` replicas, `ready` of them ready, fully rolled out unless
/// `extra` says otherwise (merged into the object).
fn deploy(name: &str, desired: i32, ready: i32, extra: Value) -> Deployment {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "zf-f", "generation": 1},
        "spec": {"replicas": desired, "selector": {}, "template": {}},
        "status": {"observedGeneration": 1, "replicas": desired, "updatedReplicas": desired,
                   "readyReplicas": ready},
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A pod of `executor` (None: the gateway), on a node when `node`, with `status` merged in.
fn pod(name: &str, executor: Option<&str>, node: bool, status: Value) -> Pod {
    let labels = match executor {
        Some(e) => json!({names::LABEL_FLOW: "f", names::LABEL_EXECUTOR: e,
                          "app.kubernetes.io/component": "executor"}),
        None => json!({names::LABEL_FLOW: "f", "app.kubernetes.io/component": "gateway"}),
    };
    let mut v = json!({
        "metadata": {"name": name, "namespace": "zf-f", "labels": labels},
        "spec": {"containers": []},
        "status": status,
    });
    if node {
        v["spec"]["nodeName"] = json!("node-1");
    }
    serde_json::from_value(v).unwrap()
}

fn running(ready: bool) -> Value {
    json!({"phase": "Running", "containerStatuses": [{"name": "executor", "image": "i",
        "imageID": "", "ready": ready, "restartCount": 0, "state": {"running": {}}}]})
}

fn waiting(reason: &str, last: Value) -> Value {
    json!({"phase": "Running", "containerStatuses": [{"name": "executor", "image": "i",
        "imageID": "", "ready": false, "restartCount": 4,
        "state": {"waiting": {"reason": reason, "message": format!("{reason} message")}},
        "lastState": last}]})
}

fn serving_objects() -> (Vec<Deployment>, Vec<Pod>) {
    (
        vec![
            deploy("gateway", 1, 1, json!({})),
            deploy("exec-echo", 1, 1, json!({})),
            deploy("exec-enc", 0, 0, json!({})),
        ],
        vec![
            pod("gateway-1", None, true, running(true)),
            pod("exec-echo-1", Some("echo"), true, running(true)),
        ],
    )
}

fn cond<'a>(s: &'a FlowStatus, t: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn phases() {
    struct Case {
        what: &'static str,
        paused: bool,
        previous: Option<FlowPhase>,
        deployments: Vec<Deployment>,
        pods: Vec<Pod>,
        want: FlowPhase,
        reason: Option<&'static str>,
    }
    let (serving_d, serving_p) = serving_objects();
    let mut rolling_d = serving_d.clone();
    rolling_d[1] = deploy("exec-echo", 1, 1, json!({"metadata": {"generation": 2}}));
    let mut slow_d = serving_d.clone();
    slow_d[1] = deploy("exec-echo", 1, 0, json!({"metadata": {"generation": 2}}));
    let crash = |what, status| Case {
        what,
        paused: false,
        previous: Some(FlowPhase::Starting),
        deployments: serving_d.clone(),
        pods: vec![
            pod("gateway-1", None, true, running(true)),
            pod("exec-echo-1", Some("echo"), true, status),
        ],
        want: FlowPhase::Failed,
        reason: None,
    };
    let cases = vec![
        Case {
            what: "nothing made yet",
            paused: false,
            previous: None,
            deployments: vec![],
            pods: vec![],
            want: FlowPhase::Pending,
            reason: None,
        },
        Case {
            what: "made, nothing scheduled",
            paused: false,
            previous: None,
            deployments: vec![
                deploy("gateway", 1, 0, json!({})),
                deploy("exec-echo", 1, 0, json!({})),
                deploy("exec-enc", 0, 0, json!({})),
            ],
            pods: vec![pod("gateway-1", None, false, json!({"phase": "Pending"}))],
            want: FlowPhase::Pending,
            reason: None,
        },
        Case {
            what: "scheduled, not ready",
            paused: false,
            previous: Some(FlowPhase::Pending),
            deployments: vec![
                deploy("gateway", 1, 1, json!({})),
                deploy("exec-echo", 1, 0, json!({})),
                deploy("exec-enc", 0, 0, json!({})),
            ],
            pods: vec![pod("exec-echo-1", Some("echo"), true, running(false))],
            want: FlowPhase::Starting,
            reason: None,
        },
        Case {
            what: "gateway and min>0 Executor ready, min-0 Executor at zero",
            paused: false,
            previous: Some(FlowPhase::Starting),
            deployments: serving_d.clone(),
            pods: serving_p.clone(),
            want: FlowPhase::Serving,
            reason: None,
        },
        Case {
            what: "a change rolls out while serving",
            paused: false,
            previous: Some(FlowPhase::Serving),
            deployments: rolling_d.clone(),
            pods: serving_p.clone(),
            want: FlowPhase::Updating,
            reason: None,
        },
        Case {
            what: "a change rolls out, new pod not ready yet",
            paused: false,
            previous: Some(FlowPhase::Updating),
            deployments: slow_d,
            pods: serving_p.clone(),
            want: FlowPhase::Updating,
            reason: None,
        },
        Case {
            what: "a first deploy is not an update",
            paused: false,
            previous: Some(FlowPhase::Starting),
            deployments: rolling_d,
            pods: serving_p.clone(),
            want: FlowPhase::Serving,
            reason: None,
        },
        Case {
            what: "paused",
            paused: true,
            previous: Some(FlowPhase::Serving),
            deployments: vec![
                deploy("gateway", 0, 0, json!({})),
                deploy("exec-echo", 0, 0, json!({})),
                deploy("exec-enc", 0, 0, json!({})),
            ],
            pods: vec![],
            want: FlowPhase::Paused,
            reason: None,
        },
        Case {
            reason: Some("CrashLoopBackOff"),
            ..crash(
                "crash loop",
                waiting("CrashLoopBackOff", json!({"terminated": {"exitCode": 1}})),
            )
        },
        Case {
            reason: Some("OOMKilled"),
            ..crash(
                "out of memory",
                waiting(
                    "CrashLoopBackOff",
                    json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
                ),
            )
        },
        Case {
            reason: Some("ImagePullBackOff"),
            ..crash("no image", waiting("ImagePullBackOff", json!({})))
        },
        Case {
            reason: Some("CreateContainerConfigError"),
            ..crash(
                "a missing secret",
                waiting("CreateContainerConfigError", json!({})),
            )
        },
        Case {
            reason: Some("CrashLoopBackOff"),
            ..crash(
                "restarting without a waiting reason",
                json!({"phase": "Running", "containerStatuses": [{"name": "executor",
                    "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                    "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 2}}}]}),
            )
        },
        Case {
            reason: Some("Unschedulable"),
            ..crash(
                "unschedulable",
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
                    "status": "False", "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient cpu."}]}),
            )
        },
        Case {
            what: "the gateway crashes",
            paused: false,
            previous: Some(FlowPhase::Serving),
            deployments: serving_d.clone(),
            pods: vec![pod(
                "gateway-1",
                None,
                true,
                waiting("CrashLoopBackOff", json!({"terminated": {"exitCode": 1}})),
            )],
            want: FlowPhase::Failed,
            reason: Some("CrashLoopBackOff"),
        },
        Case {
            what: "a Deployment gave up",
            paused: false,
            previous: Some(FlowPhase::Starting),
            deployments: vec![
                deploy("gateway", 1, 1, json!({})),
                deploy(
                    "exec-echo",
                    1,
                    0,
                    json!({"status": {"conditions": [{"type": "Progressing", "status": "False",
                        "reason": "ProgressDeadlineExceeded", "message": "too slow"}]}}),
                ),
                deploy("exec-enc", 0, 0, json!({})),
            ],
            pods: vec![],
            want: FlowPhase::Failed,
            reason: Some("ProgressDeadlineExceeded"),
        },
    ];
    let plan = plan();
    let logs = BTreeMap::from([
        ("exec-echo-1".to_string(), "Traceback: boom\n".to_string()),
        ("gateway-1".to_string(), "gateway: boom\n".to_string()),
    ]);
    for c in cases {
        let previous = c.previous.map(|p| FlowStatus {
            phase: Some(p),
            ..Default::default()
        });
        let f = flow(c.paused, previous);
        let s = compute(
            &f,
            Plan::Shards(&plan),
            &c.deployments,
            &c.pods,
            &logs,
            BTreeMap::new(),
            now(),
        );
        assert_eq!(s.phase, Some(c.want), "{}: {s:#?}", c.what);
        assert_eq!(s.observed_generation, Some(2));
        let ready = cond(&s, "Ready");
        assert_eq!(
            ready.status == "True",
            c.want == FlowPhase::Serving,
            "{}",
            c.what
        );
        assert_eq!(ready.observed_generation, Some(2));
        match c.reason {
            Some(reason) => {
                let e = s
                    .error
                    .as_ref()
                    .unwrap_or_else(|| panic!("{}: no error", c.what));
                assert_eq!(e.reason, reason, "{}", c.what);
                assert_eq!(ready.reason, reason, "{}", c.what);
                if matches!(reason, "CrashLoopBackOff" | "OOMKilled") {
                    assert!(
                        e.log_tail.as_deref().unwrap().contains("boom"),
                        "{}",
                        c.what
                    );
                }
                if c.what != "the gateway crashes" {
                    assert_eq!(e.executor.as_deref(), Some("echo"), "{}", c.what);
                    let echo = &s.executors[0];
                    assert_eq!(echo.reason.as_deref(), Some(reason), "{}", c.what);
                }
            }
            None => assert_eq!(s.error, None, "{}", c.what),
        }
    }
}

#[test]
fn a_spec_error_fails_the_flow_with_its_lines() {
    let s = compute(
        &flow(false, None),
        Plan::Invalid {
            reason: "InvalidSpec",
            message: "spec: line 3, column 5: executors[0].replicas: ...",
        },
        &[],
        &[],
        &BTreeMap::new(),
        BTreeMap::new(),
        now(),
    );
    assert_eq!(s.phase, Some(FlowPhase::Failed));
    let e = s.error.unwrap();
    assert_eq!(e.reason, "InvalidSpec");
    assert!(e.message.contains("line 3, column 5"));
    assert!(s.executors.is_empty());
}

#[test]
fn scaled_to_zero_is_a_condition_per_executor_and_keeps_its_time() {
    let (d, p) = serving_objects();
    let plan = plan();
    let first = compute(
        &flow(false, None),
        Plan::Shards(&plan),
        &d,
        &p,
        &BTreeMap::new(),
        BTreeMap::new(),
        earlier(),
    );
    let enc = cond(&first, "ScaledToZero.enc");
    assert_eq!((enc.status.as_str(), enc.reason.as_str()), ("True", "Idle"));
    let echo = cond(&first, "ScaledToZero.echo");
    assert_eq!(
        (echo.status.as_str(), echo.reason.as_str()),
        ("False", "Running")
    );
    assert_eq!(first.executors[1].at_zero_since, Some(Time(earlier())));
    assert!(first.executors[1].at_zero);
    assert!(!first.executors[0].at_zero);

    // Later, nothing changed: the times stay, so the status is equal and is not written again.
    let again = compute(
        &flow(false, Some(first.clone())),
        Plan::Shards(&plan),
        &d,
        &p,
        &BTreeMap::new(),
        BTreeMap::new(),
        now(),
    );
    assert_eq!(again, first);

    // enc wakes up: the condition turns False now, and loses its since.
    let mut woke = d.clone();
    woke[2] = deploy("exec-enc", 1, 1, json!({}));
    let s = compute(
        &flow(false, Some(first)),
        Plan::Shards(&plan),
        &woke,
        &p,
        &BTreeMap::new(),
        BTreeMap::new(),
        now(),
    );
    let enc = cond(&s, "ScaledToZero.enc");
    assert_eq!(enc.status, "False");
    assert_eq!(enc.last_transition_time, Time(now()));
    assert_eq!(s.executors[1].at_zero_since, None);
    assert_eq!(
        (
            s.executors[1].desired_replicas,
            s.executors[1].ready_replicas
        ),
        (1, 1)
    );
}

#[test]
fn shards_are_reported_one_by_one() {
    let plan: Vec<ShardPlan> = (0..2)
        .map(|i| ShardPlan {
            executor: "idx".into(),
            shard: Some(i),
            deployment: format!("exec-idx-{i}"),
            min: 1,
        })
        .collect();
    let mut p = pod(
        "exec-idx-1-a",
        Some("idx"),
        true,
        waiting("ErrImagePull", json!({})),
    );
    p.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(names::LABEL_SHARD.into(), "1".into());
    let d = vec![
        deploy("gateway", 1, 1, json!({})),
        deploy("exec-idx-0", 1, 1, json!({})),
        deploy("exec-idx-1", 1, 0, json!({})),
    ];
    let s = compute(
        &flow(false, None),
        Plan::Shards(&plan),
        &d,
        &[p],
        &BTreeMap::new(),
        BTreeMap::new(),
        now(),
    );
    assert_eq!(s.executors[0].reason, None);
    assert_eq!(s.executors[1].reason.as_deref(), Some("ErrImagePull"));
    assert_eq!(s.executors[1].shard, Some(1));
    assert_eq!(s.phase, Some(FlowPhase::Failed));
    let conditions: Vec<_> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(conditions, ["Ready", "ScaledToZero.idx"]);
}

#[test]
fn endpoints_by_service_type() {
    let svc = |type_: &str, lb: Option<&str>| -> Service {
        let mut v = json!({
            "metadata": {"name": "gateway", "namespace": "zf-f"},
            "spec": {"type": type_, "ports": [
                {"name": "grpc", "port": 8080, "nodePort": 30001},
                {"name": "http", "port": 8081, "nodePort": 30002},
            ]},
        });
        if let Some(ip) = lb {
            v["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
        }
        serde_json::from_value(v).unwrap()
    };
    let cases = [
        (
            svc("NodePort", None),
            Some("10.0.0.9"),
            "grpc://10.0.0.9:30001",
            "http://10.0.0.9:30002",
        ),
        (
            svc("NodePort", None),
            None,
            "grpc://gateway.zf-f.svc.cluster.local:8080",
            "http://gateway.zf-f.svc.cluster.local:8081",
        ),
        (
            svc("LoadBalancer", Some("1.2.3.4")),
            Some("10.0.0.9"),
            "grpc://1.2.3.4:8080",
            "http://1.2.3.4:8081",
        ),
        (
            svc("LoadBalancer", None),
            Some("10.0.0.9"),
            "grpc://10.0.0.9:30001",
            "http://10.0.0.9:30002",
        ),
        (
            svc("ClusterIP", None),
            Some("10.0.0.9"),
            "grpc://gateway.zf-f.svc.cluster.local:8080",
            "http://gateway.zf-f.svc.cluster.local:8081",
        ),
    ];
    for (s, node, grpc, http) in cases {
        let e = endpoints(&s, node);
        assert_eq!(e["grpc"], grpc);
        assert_eq!(e["http"], http);
    }
}

#[test]
fn transient_waits_fail_a_pod_only_once_they_last() {
    // The Node authorizer lags a pod's binding by a moment, so the kubelet's first read of a
    // Secret can be refused and is retried: a pod that has waited so for 10 s is starting, one
    // that has waited past TRANSIENT_GRACE is failing. A back-off is never transient.
    let at = |age_s: i64, reason: &str| {
        let mut p = pod("exec-a-1", Some("a"), true, waiting(reason, json!({})));
        let created = now() - k8s_openapi::jiff::SignedDuration::from_secs(age_s);
        p.metadata.creation_timestamp = Some(Time(created));
        pod_failure(&p, now()).map(|f| f.reason)
    };
    for reason in TRANSIENT_WAITS {
        assert_eq!(at(10, reason), None, "{reason} after 10 s");
        assert_eq!(
            at(60, reason).as_deref(),
            Some(*reason),
            "{reason} after 60 s"
        );
    }
    for reason in FAILING_WAITS {
        assert_eq!(at(1, reason).as_deref(), Some(*reason), "{reason} at once");
    }
}
