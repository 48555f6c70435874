//! The shim's admin port: `/stats` (the autoscaler's input), `/metrics` (Prometheus) and
//! `/ready` (200 once the Executor serves, 503 while starting or draining).

use crate::State;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use zeroflow_activator::Stat;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<CodeLabel, Counter>,
    pub in_flight: Gauge,
    pub ready: Gauge,
    pub draining: Gauge,
    avg_concurrency: Gauge<f64, AtomicU64>,
    rps: Gauge<f64, AtomicU64>,
}

impl Metrics {
    pub fn new(executor: &str, replica: &str) -> Self {
        let mut root = Registry::with_prefix_and_labels(
            "zeroflow_shim",
            [
                ("executor".into(), executor.to_string().into()),
                ("replica".into(), replica.to_string().into()),
            ]
            .into_iter(),
        );
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            in_flight: Gauge::default(),
            ready: Gauge::default(),
            draining: Gauge::default(),
            avg_concurrency: Gauge::default(),
            rps: Gauge::default(),
        };
        root.register(
            "requests",
            "Data requests proxied to the Executor, by gRPC code",
            m.requests.clone(),
        );
        root.register(
            "in_flight",
            "Data requests in flight now",
            m.in_flight.clone(),
        );
        root.register("ready", "1 while the Executor serves", m.ready.clone());
        root.register("draining", "1 once draining started", m.draining.clone());
        root.register(
            "average_concurrency",
            "Time-weighted average concurrency over the last 1 s period",
            m.avg_concurrency.clone(),
        );
        root.register(
            "requests_per_second",
            "Request rate over the last 1 s period",
            m.rps.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }

    pub fn count_request(&self, code: &str) {
        self.requests
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    pub fn observe_stat(&self, s: &Stat) {
        self.avg_concurrency.set(s.average_concurrency);
        self.rps.set(s.requests_per_second);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub fn admin_router(state: Arc<State>) -> axum::Router {
    axum::Router::new()
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .with_state(state)
}

async fn stats(AxState(s): AxState<Arc<State>>) -> impl IntoResponse {
    axum::Json(s.last_stat())
}

async fn metrics(AxState(s): AxState<Arc<State>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn ready(AxState(s): AxState<Arc<State>>) -> impl IntoResponse {
    if s.is_ready() && !s.is_draining() {
        (StatusCode::OK, "ready")
    } else if s.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}
