//! Wires the autoscaler to a Flow's runtime, whichever backend it is (it sees only [`Runtime`]):
//! scrapes every ready replica's `/stats` each second, adds the activator's own stat per
//! Executor, forwards cold pokes (a poke decides at once), and applies decisions by scaling the
//! runtime. Only Executors with `jcloud.autoscale` take part; the others keep their fixed
//! `replicas`. It must not start or stop replicas itself: the runtime does.

use crate::runtime::Runtime;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use zeroflow_autoscaler::{
    Autoscaler, AutoscalerConfig, Decision, ReadyCountError, ResourceSample, Scaler, ScalingSpec,
};
use zeroflow_spec::Flow;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExecutorLabel {
    executor: String,
}

/// Stops the scaling tasks when dropped.
pub struct ScalingHandle {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ScalingHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One change of an Executor's scale that the autoscaler made, with its reason: what the
/// dashboard shows beside the replica counts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScaleDecision {
    pub executor: String,
    pub from: u32,
    pub to: u32,
    pub panic: bool,
    pub reason: String,
}

/// Where a Flow's autoscaler tells its decisions (no receiver: they are dropped).
pub type DecisionFeed = tokio::sync::broadcast::Sender<Arc<ScaleDecision>>;

/// A feed for one Flow's decisions. Its buffer is allocated now, for every Flow: small slots
/// (an `Arc`) and a few of them, as a reader waits on it all the time.
pub fn decision_feed() -> DecisionFeed {
    tokio::sync::broadcast::channel(16).0
}

struct RuntimeScaler {
    runtime: Arc<dyn Runtime>,
    desired: Family<ExecutorLabel, Gauge>,
    panic: Family<ExecutorLabel, Gauge>,
    decisions: DecisionFeed,
}

#[async_trait::async_trait]
impl Scaler for RuntimeScaler {
    async fn scale(&self, executor: &str, desired: u32, decision: &Decision) {
        let label = ExecutorLabel {
            executor: executor.to_string(),
        };
        self.desired.get_or_create(&label).set(i64::from(desired));
        self.panic
            .get_or_create(&label)
            .set(i64::from(decision.panic));
        let _ = self.decisions.send(Arc::new(ScaleDecision {
            executor: executor.to_string(),
            from: decision.previous,
            to: desired,
            panic: decision.panic,
            reason: decision.reason.clone(),
        }));
        self.runtime.scale(executor, desired);
    }

    fn ready_replicas(&self, executor: &str) -> Result<u32, ReadyCountError> {
        Ok(self.runtime.ready_replicas(executor))
    }
}

/// Server-level autoscaler settings from Knative-style `key=value` pairs (e.g.
/// `scale-to-zero-grace-period=1s`), validated.
pub fn config_from_pairs(pairs: &[String]) -> Result<AutoscalerConfig, String> {
    let mut map = BTreeMap::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| {
            format!("autoscaler setting {p:?} is not KEY=VALUE (e.g. stable-window=60s)")
        })?;
        map.insert(k.trim().to_string(), v.trim().to_string());
    }
    let cfg = AutoscalerConfig::from_knative_map(&map).map_err(|e| e.to_string())?;
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Starts scaling every autoscaled Executor of `flow`, telling each change to `decisions`.
pub fn start(
    flow: &Flow,
    runtime: Arc<dyn Runtime>,
    cfg: AutoscalerConfig,
    registry: &mut Registry,
    decisions: DecisionFeed,
) -> ScalingHandle {
    let now = tokio::time::Instant::now();
    let mut autoscaler = Autoscaler::new(cfg);
    let (poke_tx, poke_rx) = tokio::sync::mpsc::unbounded_channel();
    let shards = runtime.shards();
    let mut scaled = vec![];
    // External Executors are scaled by whoever runs them.
    for e in flow
        .executors
        .iter()
        .filter(|e| e.jcloud.autoscale_set && e.external.is_none())
    {
        let spec = ScalingSpec::new(&e.jcloud.autoscale, autoscaler.config());
        autoscaler.add_executor(&e.name, spec, now, runtime.desired(&e.name));
        for set in shards.get(&e.name).into_iter().flatten() {
            set.set_poker(poke_tx.clone());
        }
        scaled.push(e.name.clone());
    }
    let desired = Family::<ExecutorLabel, Gauge>::default();
    let panic = Family::<ExecutorLabel, Gauge>::default();
    let r = registry.sub_registry_with_prefix("zeroflow_autoscaler");
    r.register(
        "desired_replicas",
        "Replicas the autoscaler wants",
        desired.clone(),
    );
    r.register(
        "panic_mode",
        "1 while the Executor's decider is in panic mode",
        panic.clone(),
    );
    for name in &scaled {
        let label = ExecutorLabel {
            executor: name.clone(),
        };
        desired
            .get_or_create(&label)
            .set(i64::from(runtime.desired(name)));
        panic.get_or_create(&label).set(0);
    }
    let autoscaler = Arc::new(parking_lot::Mutex::new(autoscaler));
    let scaler: Arc<dyn Scaler> = Arc::new(RuntimeScaler {
        runtime: runtime.clone(),
        desired,
        panic,
        decisions,
    });
    let driver = tokio::spawn(zeroflow_autoscaler::run(
        autoscaler.clone(),
        scaler,
        poke_rx,
    ));
    let scraper = tokio::spawn(scrape_loop(autoscaler, runtime, shards, scaled, poke_tx));
    ScalingHandle {
        tasks: vec![driver, scraper],
    }
}

async fn scrape_loop(
    autoscaler: Arc<parking_lot::Mutex<Autoscaler>>,
    runtime: Arc<dyn Runtime>,
    shards: std::collections::HashMap<String, Vec<Arc<zeroflow_activator::ReplicaSet>>>,
    scaled: Vec<String>,
    pokes: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let targets: Vec<_> = runtime
            .stats_targets()
            .into_iter()
            .filter(|(e, _)| scaled.contains(e))
            .collect();
        let stats = futures::future::join_all(targets.into_iter().map(|(e, admin)| async move {
            let stat = fetch_stats(&admin).await;
            (e, admin, stat)
        }))
        .await;
        let now = tokio::time::Instant::now();
        let mut to_poke = vec![];
        {
            let mut a = autoscaler.lock();
            for (e, admin, stat) in stats {
                // No answer is no data, not zero load: the autoscaler then keeps the scale.
                if stat.is_none() {
                    a.record_scrape_failure(
                        &e,
                        &admin,
                        "GET /stats failed or took over 800 ms",
                        now,
                    );
                }
                if let Some(stat) = stat {
                    if a.record_stat(&e, &stat, now) {
                        to_poke.push(e.clone());
                    }
                    if stat.cpu_percent.is_some() || stat.memory_mib.is_some() {
                        a.record_resources(
                            &e,
                            &ResourceSample {
                                pod: stat.pod.clone(),
                                cpu_percent: stat.cpu_percent.unwrap_or(0.0),
                                memory_mib: stat.memory_mib.unwrap_or(0.0),
                            },
                            now,
                        );
                    }
                }
            }
            for name in &scaled {
                for set in shards.get(name).into_iter().flatten() {
                    let stat = set.report(now);
                    if a.record_stat(name, &stat, now) {
                        to_poke.push(name.clone());
                    }
                }
            }
        }
        for e in to_poke {
            let _ = pokes.send(e);
        }
    }
}

/// Reads one replica's `/stats` from its shim's admin address (a tiny HTTP/1.0 GET: the shim
/// answers it and closes; a slow or gone replica is skipped this round, not waited for).
pub async fn fetch_stats(admin: &str) -> Option<zeroflow_activator::Stat> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /stats HTTP/1.0\r\nHost: shim\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::with_capacity(1024);
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let body = text.split("\r\n\r\n").nth(1)?;
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(Duration::from_millis(800), fut)
        .await
        .ok()
        .flatten()
}
