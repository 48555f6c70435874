use super::*;
use crate::kube::crd::{FlowSpec, GatewayOptions, ProjectSource};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn resource(yaml: &str, edit: impl FnOnce(&mut FlowSpec)) -> FlowResource {
    let mut spec = FlowSpec {
        flow_id: "fast-cat".into(),
        owner: "alice@example.com".into(),
        yaml: yaml.into(),
        project: Some(ProjectSource {
            url: "http://cp/artifacts/p.tar.gz".into(),
            digest: DIGEST.into(),
        }),
        ..Default::default()
    };
    edit(&mut spec);
    let mut r = FlowResource::new("fast-cat", spec);
    r.metadata.namespace = Some("zf-fast-cat".into());
    r.metadata.uid = Some("uid-1".into());
    r
}

fn render_yaml(r: &FlowResource) -> Result<Rendered, RenderError> {
    let flow = crate::server::control::load_spec_with(&r.spec.yaml, Some(&r.spec.env))
        .expect("the test's YAML loads")
        .flow;
    render(r, &flow, &RenderOptions::default())
}

fn ok(yaml: &str, edit: impl FnOnce(&mut FlowSpec)) -> Rendered {
    render_yaml(&resource(yaml, edit)).expect("renders")
}

fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn command(d: &Deployment) -> Vec<String> {
    pod_spec(d).containers[0].command.clone().unwrap()
}

fn flag(cmd: &[String], f: &str) -> Option<String> {
    let i = cmd.iter().position(|a| a == f)?;
    cmd.get(i + 1).cloned()
}

const TWO: &str = "jtype: Flow
executors:
- name: echo
  command: [zeroflow-test-executor, --port, '{port}']
- name: enc
  uses: Encoder
  py_modules: [enc/encoder.py]
  jcloud:
    autoscale:
      min: 0
      max: 3
";

#[test]
fn executors_are_deployments_without_replicas_and_headless_services() {
    let r = ok(TWO, |_| {});
    assert_eq!(r.namespace, "zf-fast-cat");
    let names: Vec<_> = r.executors.iter().map(|s| s.name()).collect();
    assert_eq!(names, ["exec-echo", "exec-enc"]);
    assert_eq!(r.executors[0].scale, Scale::Fixed(1));
    assert_eq!(r.executors[1].scale, Scale::Autoscaled { min: 0, max: 3 });
    assert_eq!(r.executors[1].scale.initial(false), 0);
    assert_eq!(Scale::Fixed(2).initial(true), 0);
    for s in &r.executors {
        let d = &s.deployment;
        assert_eq!(d.spec.as_ref().unwrap().replicas, None, "{}", s.name());
        let labels = d.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[names::LABEL_FLOW], "fast-cat");
        assert_eq!(labels["app.kubernetes.io/part-of"], "zeroflow");
        assert_eq!(labels[names::LABEL_OWNER], "alice-example-com");
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Flow", "uid-1", Some(true))
        );
        let pod = pod_spec(d);
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        assert_eq!(c.name, names::EXECUTOR_CONTAINER);
        assert_eq!(
            c.image.as_deref(),
            Some(RenderOptions::default().runtime_image.as_str())
        );
        let probe = c.readiness_probe.as_ref().unwrap();
        let get = probe.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/ready"));
        assert_eq!(
            get.port,
            IntOrString::Int(names::EXECUTOR_ADMIN_PORT.into())
        );
        assert_eq!(probe.period_seconds, Some(1));
        let env = c.env.as_ref().unwrap();
        assert_eq!(env[0].name, "POD_IP");
        let svc = s.service.spec.as_ref().unwrap();
        assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
        assert_eq!(svc.ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(
            svc.selector,
            d.spec.as_ref().unwrap().selector.match_labels,
            "the Service selects the Deployment's pods"
        );
        let cmd = command(d);
        assert_eq!(cmd[0], "zeroflow-shim");
        assert_eq!(flag(&cmd, "--host").as_deref(), Some("$(POD_IP)"));
        assert_eq!(flag(&cmd, "--port").as_deref(), Some("8080"));
        assert_eq!(flag(&cmd, "--admin-port").as_deref(), Some("8090"));
        assert_eq!(flag(&cmd, "--replica").as_deref(), Some("$(POD_NAME)"));
        assert_eq!(env[1].name, "POD_NAME");
        assert_eq!(
            flag(&cmd, "--project-url").as_deref(),
            Some("http://cp/artifacts/p.tar.gz")
        );
        assert_eq!(flag(&cmd, "--project-digest").as_deref(), Some(DIGEST));
    }
    let echo = command(&r.executors[0].deployment);
    let own = &echo[echo.iter().position(|a| a == "--").unwrap() + 1..];
    assert_eq!(own, ["zeroflow-test-executor", "--port", "{port}"]);
    let enc = command(&r.executors[1].deployment);
    let own: Vec<_> = enc[enc.iter().position(|a| a == "--").unwrap() + 1..].to_vec();
    assert_eq!(own[..2], ["jina", "executor"]);
    assert_eq!(
        flag(&own, "--py-modules").as_deref(),
        Some("enc/encoder.py"),
        "project paths stay relative: the shim runs the Executor in the unpacked project"
    );
    assert!(r.config_map.is_none());
}

#[test]
fn images_by_uses() {
    // (uses and keys, project?, images, Ok(image and shim path) or Err(text in the error))
    let runtime = RenderOptions::default().runtime_image;
    type Case<'a> = (
        &'a str,
        bool,
        &'a [(&'a str, &'a str)],
        Result<(&'a str, &'a str), &'a str>,
    );
    let cases: Vec<Case> = vec![
        ("", false, &[], Ok((&runtime, "zeroflow-shim"))),
        (
            "uses: docker://me/enc:1",
            false,
            &[],
            Ok(("me/enc:1", "/zeroflow/zeroflow-shim")),
        ),
        (
            "uses: config.yml",
            true,
            &[],
            Ok((&runtime, "zeroflow-shim")),
        ),
        (
            "uses: config.yml",
            false,
            &[],
            Err("is a file of its project"),
        ),
        (
            "uses: E\n  py_modules: [e.py]",
            false,
            &[],
            Err("py_modules (e.py)"),
        ),
        (
            "uses: config.yml",
            false,
            &[("a", "mine:2")],
            Ok(("mine:2", "/zeroflow/zeroflow-shim")),
        ),
        (
            "uses: jinaai+docker://bob/enc",
            false,
            &[],
            Err("spec.images.a"),
        ),
        (
            "uses: jinaai+docker://bob/enc",
            false,
            &[("a", "bob/enc:1")],
            Ok(("bob/enc:1", "/zeroflow/zeroflow-shim")),
        ),
        (
            "command: [prog]",
            false,
            &[],
            Ok((&runtime, "zeroflow-shim")),
        ),
    ];
    for (keys, project, images, want) in cases {
        let yaml = format!("jtype: Flow\nexecutors:\n- name: a\n  {keys}\n");
        let r = resource(&yaml, |s| {
            if !project {
                s.project = None;
            }
            s.images = images
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        });
        match (render_yaml(&r), want) {
            (Ok(got), Ok((image, shim))) => {
                let d = &got.executors[0].deployment;
                let pod = pod_spec(d);
                assert_eq!(pod.containers[0].image.as_deref(), Some(image), "{keys}");
                assert_eq!(command(d)[0], shim, "{keys}");
                assert_eq!(
                    pod.init_containers.is_some(),
                    shim.starts_with('/'),
                    "{keys}"
                );
            }
            (Err(e), Err(text)) => {
                assert_eq!(e.reason(), "InvalidSpec");
                assert!(e.to_string().contains(text), "{keys}: {e}");
            }
            (got, want) => panic!("{keys}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn shards_storage_and_disruption_budgets() {
    let r = ok(
        "jtype: Flow
executors:
- name: idx
  shards: 2
  replicas: 2
  jcloud:
    minAvailable: 1
    resources:
      instance: C4
      storage:
        kind: efs
        size: 10G
- name: db
  replicas: 2
  jcloud:
    maxUnavailable: 1
    resources:
      storage:
        kind: ebs
        retain: true
",
        |_| {},
    );
    let names: Vec<_> = r.executors.iter().map(|s| s.name()).collect();
    assert_eq!(names, ["exec-idx-0", "exec-idx-1", "exec-db"]);
    for (i, s) in r.executors[..2].iter().enumerate() {
        let sel = s
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .clone()
            .unwrap();
        assert_eq!(sel[names::LABEL_SHARD], i.to_string());
        let pdb = s.disruption_budget.as_ref().unwrap().spec.as_ref().unwrap();
        assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
        assert_eq!(
            pdb.selector.as_ref().unwrap().match_labels.as_ref(),
            Some(&sel)
        );
        let claim = s.claim.as_ref().unwrap();
        assert_eq!(
            claim.metadata.name.as_deref(),
            Some(format!("exec-idx-{i}-data").as_str())
        );
        assert_eq!(
            claim.spec.as_ref().unwrap().access_modes.as_deref(),
            Some(&["ReadWriteMany".to_string()][..])
        );
        assert!(claim.metadata.owner_references.is_some());
        let c = &pod_spec(&s.deployment).containers[0];
        assert_eq!(c.volume_mounts.as_ref().unwrap()[0].mount_path, "/data");
        assert_eq!(
            flag(&command(&s.deployment), "--shard-id"),
            Some(i.to_string())
        );
        let req = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(req["cpu"].0, "2000m", "C4 has 2 cores");
    }
    let db = &r.executors[2];
    assert!(
        !db.deployment
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()
            .contains_key(names::LABEL_SHARD)
    );
    let pdb = db
        .disruption_budget
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    let strategy = db
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .strategy
        .as_ref()
        .unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("Recreate"));
    let claim = db.claim.as_ref().unwrap();
    assert_eq!(
        claim.metadata.owner_references, None,
        "a retained claim outlives its Flow"
    );
    assert_eq!(claim.metadata.annotations.as_ref().unwrap()[RETAIN], "true");
}

#[test]
fn secrets_inline_configs_and_dollars() {
    let r = ok(
        "jtype: Flow
executors:
- name: a
  uses:
    jtype: MyExec
  env_from_secret:
    TOKEN:
      name: hf
      key: token
- name: b
  command: [prog, 'cost=$5', '$(HOME)']
",
        |_| {},
    );
    let cm = r.config_map.as_ref().unwrap();
    assert!(cm.data.as_ref().unwrap().contains_key("a.uses.yml"));
    let pod = pod_spec(&r.executors[0].deployment);
    let vols: Vec<_> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(vols, [CONFIG_MAP]);
    let env = pod.containers[0].env.as_ref().unwrap();
    let artifact = env
        .iter()
        .find(|v| v.name == "ZEROFLOW_ARTIFACT_TOKEN")
        .unwrap();
    let sel = artifact
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (sel.name.as_str(), sel.key.as_str()),
        (names::ARTIFACT_SECRET, names::ARTIFACT_TOKEN_KEY)
    );
    let token = env.iter().find(|v| v.name == "TOKEN").unwrap();
    let sel = token
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!((sel.name.as_str(), sel.key.as_str()), ("hf", "token"));
    let b = command(&r.executors[1].deployment);
    assert_eq!(
        b[b.len() - 2..],
        ["cost=$$5", "$$(HOME)"],
        "passed through as written"
    );
}

#[test]
fn the_gateway() {
    struct Case {
        yaml: &'static str,
        edit: fn(&mut FlowSpec),
        service_type: &'static str,
        ports: &'static [(&'static str, i32)],
        replicas: i32,
    }
    let cases = [
        Case {
            yaml: TWO,
            edit: |_| {},
            service_type: "NodePort",
            ports: &[("grpc", 8080)],
            replicas: 1,
        },
        Case {
            yaml: "jtype: Flow\nwith:\n  protocol: [http, grpc]\nexecutors:\n- name: a\n",
            edit: |s| {
                s.gateway = GatewayOptions {
                    expose: Some(ServiceExposure::LoadBalancer),
                }
            },
            service_type: "LoadBalancer",
            ports: &[("http", 8080), ("grpc", 8081)],
            replicas: 1,
        },
        Case {
            yaml: "jtype: Flow\ngateway:\n  jcloud:\n    expose: false\nexecutors:\n- name: a\n",
            edit: |s| s.paused = true,
            service_type: "ClusterIP",
            ports: &[("grpc", 8080)],
            replicas: 0,
        },
    ];
    for c in cases {
        let r = ok(c.yaml, c.edit);
        let d = &r.gateway;
        assert_eq!(
            d.spec.as_ref().unwrap().replicas,
            Some(c.replicas),
            "{}",
            c.yaml
        );
        let pod = pod_spec(d);
        assert_eq!(pod.service_account_name.as_deref(), Some(names::GATEWAY));
        let cmd = command(d);
        let want_ports = c
            .ports
            .iter()
            .map(|(_, p)| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            cmd[..11],
            [
                "jc",
                "flow",
                "serve",
                "--runtime",
                "kubernetes",
                "--namespace",
                "zf-fast-cat",
                "--flow-resource",
                "fast-cat",
                "--host",
                "$(POD_IP)"
            ]
        );
        assert_eq!(flag(&cmd, "--port"), Some(want_ports), "{}", c.yaml);
        assert_eq!(flag(&cmd, "--metrics-port").as_deref(), Some("9090"));
        let probe = pod.containers[0].readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.tcp_socket.as_ref().unwrap().port,
            IntOrString::Int(c.ports[0].1)
        );
        let svc = r.gateway_service.spec.as_ref().unwrap();
        assert_eq!(svc.type_.as_deref(), Some(c.service_type), "{}", c.yaml);
        let ports: Vec<_> = svc
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.port))
            .collect();
        let want: Vec<_> = c.ports.iter().map(|(n, p)| (n.to_string(), *p)).collect();
        assert_eq!(ports, want);
        assert_eq!(svc.selector, d.spec.as_ref().unwrap().selector.match_labels);
    }
}

#[test]
fn the_gateway_may_do_only_what_it_needs() {
    let r = ok(TWO, |_| {});
    /// (apiGroups, resources, verbs, resourceNames)
    type Rule = (Vec<String>, Vec<String>, Vec<String>, Option<Vec<String>>);
    let rules: Vec<Rule> = r
        .role
        .rules
        .clone()
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.api_groups.unwrap(),
                r.resources.unwrap(),
                r.verbs,
                r.resource_names,
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        [
            (
                s(&["discovery.k8s.io"]),
                s(&["endpointslices"]),
                s(&["get", "list", "watch"]),
                None
            ),
            (
                s(&["apps"]),
                s(&["deployments"]),
                s(&["get"]),
                Some(s(&["exec-echo", "exec-enc"]))
            ),
            (
                s(&["apps"]),
                s(&["deployments/scale"]),
                s(&["get", "patch", "update"]),
                Some(s(&["exec-echo", "exec-enc"]))
            ),
            (s(&[""]), s(&["pods"]), s(&["get", "list", "watch"]), None),
            (s(&[""]), s(&["pods/log"]), s(&["get"]), None),
            (
                s(&["zeroflow.dev"]),
                s(&["flows"]),
                s(&["get"]),
                Some(s(&["fast-cat"]))
            ),
        ]
    );
    assert_eq!(r.role_binding.role_ref.name, names::GATEWAY);
    let subject = &r.role_binding.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", names::GATEWAY, Some("zf-fast-cat"))
    );
    // A Flow whose Executors all run elsewhere gets no scale rule at all (an empty
    // resourceNames would allow every Deployment).
    let ext = ok(
        "jtype: Flow\nexecutors:\n- name: a\n  external: true\n  host: 10.0.0.1\n  port: 5000\n",
        |_| {},
    );
    assert!(ext.executors.is_empty());
    assert!(
        !ext.role
            .rules
            .unwrap()
            .iter()
            .any(|r| r.resources.as_ref().unwrap()[0] == "deployments/scale")
    );
}

#[test]
fn restarts_and_spec_changes_roll_the_pods() {
    let base = ok(TWO, |_| {});
    let restarted = ok(TWO, |s| {
        s.restarted_at = Some("2025-06-01T10:00:00Z".into())
    });
    let changed = ok(&TWO.replace("max: 3", "max: 4"), |_| {});
    let annotations = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone()
            .unwrap_or_default()
    };
    for s in restarted
        .executors
        .iter()
        .map(|s| &s.deployment)
        .chain([&restarted.gateway])
    {
        assert_eq!(annotations(s)[RESTARTED_AT], "2025-06-01T10:00:00Z");
    }
    assert!(!annotations(&base.executors[0].deployment).contains_key(RESTARTED_AT));
    assert_eq!(
        annotations(&base.gateway)[SPEC_HASH],
        annotations(&restarted.gateway)[SPEC_HASH]
    );
    assert_ne!(
        annotations(&base.gateway)[SPEC_HASH],
        annotations(&changed.gateway)[SPEC_HASH],
        "the gateway loads the Flow at start: a changed Flow restarts it"
    );
}

#[test]
fn bad_resources_are_refused_naming_why() {
    let mut r = resource(TWO, |_| {});
    r.metadata.name = Some("My.Flow".into());
    assert!(matches!(render_yaml(&r), Err(RenderError::Name(n)) if n == "My.Flow"));
    let mut r = resource(TWO, |_| {});
    r.metadata.namespace = None;
    assert_eq!(render_yaml(&r).unwrap_err(), RenderError::NoNamespace);
    let mut r = resource(TWO, |_| {});
    r.metadata.uid = None;
    assert_eq!(render_yaml(&r).unwrap_err(), RenderError::NoUid);
}

#[test]
fn the_servers_autoscaler_settings_reach_every_gateway() {
    // `jc server --autoscaler KEY=VALUE` is server-level (Knative's config-autoscaler): the
    // gateway pods run the autoscalers, so they get the same pairs.
    let r = resource(
        "jtype: Flow\nexecutors:\n  - name: e\n    uses: docker://e:1\n",
        |_| {},
    );
    let flow = crate::server::control::load_spec_with(&r.spec.yaml, Some(&r.spec.env))
        .expect("loads")
        .flow;
    let opts = RenderOptions {
        autoscaler: vec![
            "scale-to-zero-grace-period=2s".into(),
            "stable-window=20s".into(),
        ],
        ..RenderOptions::default()
    };
    let cmd = command(&render(&r, &flow, &opts).expect("renders").gateway);
    let pairs: Vec<&str> = cmd
        .windows(2)
        .filter(|w| w[0] == "--autoscaler")
        .map(|w| w[1].as_str())
        .collect();
    assert_eq!(
        pairs,
        ["scale-to-zero-grace-period=2s", "stable-window=20s"]
    );
    let none = command(
        &ok(
            "jtype: Flow\nexecutors:\n  - name: e\n    uses: docker://e:1\n",
            |_| {},
        )
        .gateway,
    );
    assert!(!none.contains(&"--autoscaler".to_string()));
}
