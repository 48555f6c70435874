//! The hub against a runtime that does what a test says (the trait's other side, not a copy of a
//! backend): its rings stay within their bounds, an idle Executor costs one sample, a cold start
//! names its decision and where the time went, and the live feed has the page's shape.

use super::*;
use std::collections::HashMap;
use zeroflow_activator::LatencyHistogram;
use zeroflow_platform::runtime::InitialReplicas;

/// Replica counts, failures and output set by the test; events sent by it.
struct Scripted {
    counts: Mutex<HashMap<String, (u32, u32)>>,
    logs: Mutex<BTreeMap<String, (String, String)>>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl Scripted {
    fn new(names: &[&str]) -> Arc<Self> {
        Arc::new(Scripted {
            counts: Mutex::new(names.iter().map(|n| (n.to_string(), (0, 0))).collect()),
            logs: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(64).0,
        })
    }

    fn set(&self, name: &str, desired: u32, ready: u32) {
        self.counts.lock().insert(name.into(), (desired, ready));
    }

    fn log(&self, executor: &str, replica: &str, line: &str) {
        let mut l = self.logs.lock();
        let e = l
            .entry(replica.to_string())
            .or_insert_with(|| (executor.to_string(), String::new()));
        if !e.1.is_empty() {
            e.1.push('\n');
        }
        e.1.push_str(line);
    }
}

#[async_trait::async_trait]
impl Runtime for Scripted {
    fn shards(&self) -> HashMap<String, Vec<Arc<ReplicaSet>>> {
        HashMap::new()
    }
    fn start(&self, _: &InitialReplicas) {}
    fn scale(&self, executor: &str, desired: u32) {
        let ready = self.ready_replicas(executor);
        self.set(executor, desired, ready);
    }
    fn desired(&self, executor: &str) -> u32 {
        self.counts.lock().get(executor).map_or(0, |c| c.0)
    }
    fn ready_replicas(&self, executor: &str) -> u32 {
        self.counts.lock().get(executor).map_or(0, |c| c.1)
    }
    fn replica_count(&self, executor: &str) -> u32 {
        self.ready_replicas(executor)
    }
    fn failure(&self, _: &str) -> Option<String> {
        None
    }
    fn stats_targets(&self) -> Vec<(String, String)> {
        vec![]
    }
    async fn logs(&self, executor: Option<&str>) -> BTreeMap<String, String> {
        self.logs
            .lock()
            .iter()
            .filter(|(_, (e, _))| executor.is_none_or(|x| x == e))
            .map(|(r, (_, text))| (r.clone(), text.clone()))
            .collect()
    }
    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
    async fn wait_settled(&self, _: Duration) -> Result<(), String> {
        Ok(())
    }
    async fn shutdown(&self, _: Duration) {}
}

fn flow(yaml: &str) -> Flow {
    zeroflow_spec::load(yaml, &Default::default())
        .expect("a valid Flow")
        .flow
}

const ONE_AT_ZERO: &str = "jtype: Flow\nexecutors:\n  - name: e\n    command: x\n    jcloud:\n      autoscale:\n        min: 0\n        max: 2\n";

fn samples(hub: &Hub, id: &str) -> Vec<Sample> {
    let w = hub.flows.lock().get(id).cloned().expect("watched");
    let st = w.state.lock();
    st[0].samples.iter().copied().collect()
}

async fn second() {
    tokio::time::advance(Duration::from_secs(1)).await;
}

/// Lets the hub's follower take what was sent: it stamps events when it reads them.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_executor_keeps_one_sample_however_long_it_stays_at_zero() {
    let hub = Hub::new(Limits::default());
    let rt = Scripted::new(&["e"]);
    hub.watch("f", &flow(ONE_AT_ZERO), rt.clone(), None);
    for _ in 0..600 {
        hub.tick();
        second().await;
    }
    let s = samples(&hub, "f");
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!((s[0].desired, s[0].ready), (0, 0));
    // One Executor's rings: its state and one small allocation for the sample ring.
    assert!(hub.ring_bytes() < 1024, "{} bytes", hub.ring_bytes());
}

#[tokio::test(start_paused = true)]
async fn rings_hold_the_window_and_each_executor_its_share_of_the_total() {
    let limits = Limits {
        window: Duration::from_secs(100),
        samples_per_executor: 50,
        samples_total: 60,
        min_samples_per_executor: 5,
        ..Limits::default()
    };
    let hub = Hub::new(limits);
    let rt = Scripted::new(&["e"]);
    let f = flow(ONE_AT_ZERO);
    hub.watch("a", &f, rt.clone(), None);
    // Alone, the per-Executor cap holds; every second differs, so every second is kept.
    for i in 0..80u32 {
        rt.set("e", i % 2, i % 2);
        hub.tick();
        second().await;
    }
    assert_eq!(samples(&hub, "a").len(), 50);
    // Three Executors share 60: 20 each, the oldest dropped first.
    let others = [Scripted::new(&["e"]), Scripted::new(&["e"])];
    hub.watch("b", &f, others[0].clone(), None);
    hub.watch("c", &f, others[1].clone(), None);
    for i in 0..30u32 {
        for r in [&rt, &others[0], &others[1]] {
            r.set("e", i % 2, 0);
        }
        hub.tick();
        second().await;
    }
    for id in ["a", "b", "c"] {
        let s = samples(&hub, id);
        assert_eq!(s.len(), 20, "{id}: {}", s.len());
        assert!(s.windows(2).all(|w| w[0].t < w[1].t), "newest last");
    }
    // Past the window only the last sample before it stays (the value at its start).
    rt.set("e", 1, 1);
    hub.tick();
    for _ in 0..200 {
        second().await;
        hub.tick();
    }
    let s = samples(&hub, "a");
    let now = (hub.now_ms() / 1000) as u32;
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].t < now - 100);
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_names_its_decision_and_where_the_time_went() {
    let hub = Hub::new(Limits::default());
    let rt = Scripted::new(&["e"]);
    let decisions = zeroflow_platform::scaling::decision_feed();
    hub.watch("f", &flow(ONE_AT_ZERO), rt.clone(), Some(&decisions));
    let (_, mut live) = hub.subscribe("f").await.expect("watched");
    let ms = |n| Duration::from_millis(n);
    let _ = decisions.send(Arc::new(ScaleDecision {
        executor: "e".into(),
        from: 0,
        to: 1,
        panic: false,
        reason: "activation to 1".into(),
    }));
    settle().await;
    tokio::time::advance(ms(3)).await;
    let ev = async |e: RuntimeEvent| {
        let _ = rt.events.send(e);
        settle().await;
    };
    ev(RuntimeEvent::Scaling {
        executor: "e".into(),
        from: 0,
        to: 1,
    })
    .await;
    tokio::time::advance(ms(10)).await;
    ev(RuntimeEvent::ReplicaStarting {
        executor: "e".into(),
        replica: "e-0".into(),
    })
    .await;
    tokio::time::advance(ms(900)).await;
    ev(RuntimeEvent::ReplicaReady {
        executor: "e".into(),
        replica: "e-0".into(),
        startup_ms: 850,
    })
    .await;
    let cold = loop {
        match &*live.recv().await.expect("live") {
            Live::ColdStart {
                executor,
                cold_start,
            } => {
                assert_eq!(executor, "e");
                break cold_start.clone();
            }
            _ => continue,
        }
    };
    assert_eq!(cold.reason.as_deref(), Some("activation to 1"));
    assert_eq!(cold.replica.as_deref(), Some("e-0"));
    assert_eq!(cold.failed, None);
    let parts: Vec<(&str, u64)> = cold.parts.iter().map(|p| (p.what, p.ms)).collect();
    assert_eq!(
        parts,
        [
            ("autoscaler decision to runtime scaling", 3),
            ("runtime: scaling to replica process starting", 10),
            ("replica: shim start to Executor serving", 850),
            ("runtime: process spawn and readiness seen", 50),
        ]
    );
    assert_eq!(cold.total_ms, 913);
    let h = hub.history("f").await.expect("watched");
    let e = &h.executors["e"];
    assert_eq!(e.cold_starts, [cold]);
    assert_eq!(e.decisions.len(), 1);
    assert_eq!(
        e.events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        ["scaling", "starting", "ready"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_fixed_executor_starting_is_not_a_cold_start() {
    let hub = Hub::new(Limits::default());
    let rt = Scripted::new(&["e"]);
    hub.watch(
        "f",
        &flow("jtype: Flow\nexecutors:\n  - name: e\n    command: x\n"),
        rt.clone(),
        None,
    );
    let (_, mut live) = hub.subscribe("f").await.expect("watched");
    for e in [
        RuntimeEvent::Scaling {
            executor: "e".into(),
            from: 0,
            to: 1,
        },
        RuntimeEvent::ReplicaReady {
            executor: "e".into(),
            replica: "e-0".into(),
            startup_ms: 5,
        },
    ] {
        let _ = rt.events.send(e);
    }
    for _ in 0..2 {
        assert!(matches!(&*live.recv().await.unwrap(), Live::Event { .. }));
    }
    assert!(
        hub.history("f").await.unwrap().executors["e"]
            .cold_starts
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn the_live_feed_sends_samples_each_second_and_new_log_lines() {
    let hub = Hub::new(Limits::default());
    let rt = Scripted::new(&["e"]);
    rt.log("e", "e-0", "old line");
    hub.watch("f", &flow(ONE_AT_ZERO), rt.clone(), None);
    let (history, mut live) = hub.subscribe("f").await.expect("watched");
    assert_eq!(history.executors["e"].logs["e-0"], ["old line"]);
    rt.set("e", 1, 1);
    hub.tick();
    match &*live.recv().await.unwrap() {
        Live::Samples { executors, .. } => {
            assert_eq!((executors["e"].desired, executors["e"].ready), (1, 1))
        }
        other => panic!("{other:?}"),
    }
    rt.log("e", "e-0", "new line");
    rt.log("e", "e-1", "from another replica");
    let mut got = vec![];
    while got.len() < 2 {
        second().await;
        if let Ok(ev) = live.try_recv()
            && let Live::Log { replica, lines, .. } = &*ev
        {
            got.push((replica.clone(), lines.clone()));
        }
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("e-0".to_string(), vec!["new line".to_string()]),
            ("e-1".to_string(), vec!["from another replica".to_string()]),
        ]
    );
    // The last page gone, the log follower stops and the Flow has no live feed.
    drop(live);
    for _ in 0..3 {
        second().await;
    }
    assert!(hub.flows.lock()["f"].live.lock().is_none());
}

#[test]
fn new_lines_are_those_after_the_last_seen() {
    let seen = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(new_lines(&seen(&["b", "c"]), &["a", "b", "c", "d"]), ["d"]);
    assert!(new_lines(&seen(&["b", "c"]), &["a", "b", "c"]).is_empty());
    // Scrolled out of the runtime's tail: all of it is new.
    assert_eq!(new_lines(&seen(&["x"]), &["a", "b"]), ["a", "b"]);
    assert_eq!(new_lines(&[], &["a"]), ["a"]);
    // The last occurrence counts.
    assert_eq!(new_lines(&seen(&["a"]), &["a", "b", "a", "c"]), ["c"]);
}

#[test]
fn rate_and_percentiles_come_from_the_calls_between_two_samples() {
    let h = LatencyHistogram::default();
    let mut prev = None;
    let (rps, p50, _) = rate(&mut prev, h.snapshot(), None, 10);
    assert_eq!(rps, 0.0);
    assert!(p50.is_nan());
    assert!(prev.is_none(), "nothing allocated while idle");
    for _ in 0..4 {
        h.observe(Duration::from_millis(100));
    }
    // The first calls count (a wake-up's request is the one that matters).
    let (rps, p50, p99) = rate(&mut prev, h.snapshot(), Some(10), 12);
    assert_eq!(rps, 2.0);
    assert!((70.0..=140.0).contains(&p50), "{p50}");
    assert!((70.0..=140.0).contains(&p99), "{p99}");
    let (rps, _, _) = rate(&mut prev, h.snapshot(), Some(12), 13);
    assert_eq!(rps, 0.0);
}

#[test]
fn events_serialize_as_the_page_reads_them() {
    let s = Sample {
        t: 1_700_000_000,
        desired: 2,
        ready: 1,
        rps: 3.456,
        p50_ms: 12.345,
        p99_ms: f32::NAN,
    };
    assert_eq!(
        serde_json::to_value(s).unwrap(),
        serde_json::json!([1_700_000_000_000u64, 2, 1, 3.46, 12.35, null])
    );
    let ev = Live::Event {
        executor: "e".into(),
        event: EventRec {
            t: 5,
            kind: "ready",
            replica: Some("e-0".into()),
            text: "e: replica e-0 ready in 3 ms".into(),
        },
    };
    assert_eq!(ev.name(), "event");
    assert_eq!(
        serde_json::to_value(&ev).unwrap(),
        serde_json::json!({"type": "event", "executor": "e", "t": 5, "kind": "ready", "replica": "e-0", "text": "e: replica e-0 ready in 3 ms"})
    );
    let samples = Live::Samples {
        t: 7,
        executors: BTreeMap::from([("e".to_string(), s)]),
        failures: BTreeMap::new(),
    };
    assert_eq!(
        serde_json::to_value(&samples).unwrap(),
        serde_json::json!({"type": "samples", "t": 7, "executors": {"e": [1_700_000_000_000u64, 2, 1, 3.46, 12.35, null]}})
    );
}
