//! Prometheus metrics of the activator, per Executor: ready replicas, requests waiting, requests
//! refused, and cold starts with their duration (Knative hides these; users asked for them).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecutorLabel {
    pub executor: String,
}

type HistFamily = Family<ExecutorLabel, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct ActivatorMetrics {
    pub ready: Family<ExecutorLabel, Gauge>,
    pub waiting: Family<ExecutorLabel, Gauge>,
    pub rejected: Family<ExecutorLabel, Counter>,
    pub cold_starts: Family<ExecutorLabel, Counter>,
    pub cold_start: HistFamily,
}

fn cold_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl ActivatorMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = ActivatorMetrics {
            ready: Family::default(),
            waiting: Family::default(),
            rejected: Family::default(),
            cold_starts: Family::default(),
            cold_start: Family::new_with_constructor(cold_buckets as fn() -> Histogram),
        };
        let r = registry.sub_registry_with_prefix("zeroflow_activator");
        r.register(
            "ready_replicas",
            "Replicas taking requests",
            m.ready.clone(),
        );
        r.register(
            "requests_waiting",
            "Requests queued for a replica",
            m.waiting.clone(),
        );
        r.register(
            "requests_rejected",
            "Requests refused because the queue was full",
            m.rejected.clone(),
        );
        r.register(
            "cold_starts",
            "Starts from zero replicas that requests waited for",
            m.cold_starts.clone(),
        );
        r.register(
            "cold_start_duration_seconds",
            "From the first request at zero replicas to the first ready replica",
            m.cold_start.clone(),
        );
        m
    }

    pub fn label(&self, executor: &str) -> ExecutorLabel {
        ExecutorLabel {
            executor: executor.to_string(),
        }
    }
}
