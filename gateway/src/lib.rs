//! The Flow's front door: serves the Jina gRPC services and the HTTP API the real `jina.Client`
//! uses, walks the Flow graph (`needs`, parallel branches and their merge, shards with polling,
//! replicas, `target_executor`, `exec_endpoint`), and calls Executors through the activator's
//! replica sets. It does not know how replicas are started.

pub mod docs;
pub mod graph;
pub mod grpc;
pub mod http;
pub mod ws;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::Status;
use zeroflow_activator::ReplicaSet;
use zeroflow_proto::jina::{DataRequestProto, HeaderProto, StatusProto};
use zeroflow_spec::{Flow, Protocol};

pub use graph::{Graph, GraphError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

pub struct Gateway {
    pub graph: Arc<Graph>,
    pub prefetch: usize,
    pub title: String,
    pub description: String,
    requests: Family<Outcome, Counter>,
    latency: Histogram,
    registry: parking_lot::Mutex<Registry>,
}

impl Gateway {
    /// `shards[executor]`: one replica set per shard of each Executor.
    pub fn new(
        flow: &Flow,
        shards: HashMap<String, Vec<Arc<ReplicaSet>>>,
    ) -> Result<Self, GraphError> {
        let graph = Arc::new(Graph::new(flow, shards, flow.gateway.timeout_send)?);
        let requests = Family::<Outcome, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.0001, 2.0, 20));
        let mut registry = Registry::with_prefix("zeroflow_gateway");
        registry.register(
            "requests",
            "Requests answered by the gateway, by outcome",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response",
            latency.clone(),
        );
        Ok(Gateway {
            graph,
            prefetch: flow.gateway.prefetch as usize,
            title: flow
                .gateway
                .title
                .clone()
                .unwrap_or_else(|| "Zeroflow gateway".into()),
            description: flow.gateway.description.clone().unwrap_or_default(),
            requests,
            latency,
            registry: parking_lot::Mutex::new(registry),
        })
    }

    /// One request through the Flow.
    pub async fn process(&self, req: DataRequestProto) -> Result<DataRequestProto, Status> {
        let t0 = Instant::now();
        let r = self.graph.run(req).await;
        self.latency.observe(t0.elapsed().as_secs_f64());
        let outcome = match &r {
            Ok(resp) if resp.is_error() => "executor_error".to_string(),
            Ok(_) => "ok".to_string(),
            Err(s) => format!("{:?}", s.code()).to_lowercase(),
        };
        self.requests.get_or_create(&Outcome { outcome }).inc();
        r
    }

    /// jina's dry run: one empty document through every Executor on `_jina_dry_run_`.
    pub async fn dry_run(&self) -> StatusProto {
        let one_empty_doc = docs::encode_docs(zeroflow_proto::docarray::DocListProto {
            docs: vec![Default::default()],
        });
        let req = DataRequestProto {
            header: Some(HeaderProto {
                exec_endpoint: Some(zeroflow_proto::DRY_RUN_ENDPOINT.into()),
                ..Default::default()
            }),
            data: one_empty_doc.into(),
            ..Default::default()
        };
        match self.graph.run(req).await {
            Ok(resp) => resp.header.and_then(|h| h.status).unwrap_or_default(),
            Err(s) => StatusProto::error("gateway", "FlowNotReady", s.message().to_string()),
        }
    }

    /// The union of the Executors' reported endpoints, `/default` always included.
    pub fn endpoints(&self) -> Vec<String> {
        let mut eps = vec![zeroflow_proto::DEFAULT_ENDPOINT.to_string()];
        for n in &self.graph.nodes {
            if let Some(reported) = n.shards[0].endpoints() {
                for e in reported {
                    if e != zeroflow_proto::DRY_RUN_ENDPOINT && !eps.contains(&e) {
                        eps.push(e);
                    }
                }
            }
        }
        eps
    }

    /// Asks each Executor but those in `later` for its endpoints, all at once (best effort: a
    /// cold or failing one keeps what it reported before, or the default set). `later` ones
    /// (Executors that run elsewhere, which asking would wake) are asked after their first
    /// answer instead.
    pub async fn discover_endpoints(&self, later: &[&str]) {
        let asks = self
            .graph
            .nodes
            .iter()
            .filter(|n| !later.contains(&n.name.as_str()))
            .map(|n| async move {
                if let Err(e) = n.shards[0].discover().await {
                    tracing::warn!(executor = %n.name, error = %e.message(), "endpoint discovery failed");
                }
            });
        futures::future::join_all(asks).await;
    }

    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock());
        out
    }

    /// Lets a caller (the platform) register more metrics beside the gateway's.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry.lock())
    }
}

/// Small answers must not wait on Nagle's algorithm: TCP_NODELAY on every accepted socket.
fn no_delay(listener: TcpListener) -> impl axum::serve::Listener<Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    })
}

/// Every protocol on one port: gRPC (told by its `application/grpc` content type), websocket
/// upgrades, and the HTTP API, over HTTP/1.1 or HTTP/2. For platforms that route one port per
/// service (a Knative Service has one), where Jina's one-port-per-protocol cannot work.
pub async fn serve_one_port(
    gw: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use tower::ServiceExt;
    let grpc = grpc::routes(gw.clone()).await.prepare().into_axum_router();
    let web = ws::router(gw);
    let app = axum::Router::new().fallback_service(tower::service_fn(
        move |req: axum::extract::Request| {
            let is_grpc = req
                .headers()
                .get(::http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            let router = if is_grpc { grpc.clone() } else { web.clone() };
            router.oneshot(req)
        },
    ));
    axum::serve(no_delay(listener), app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(anyhow::Error::from)
}

/// Serves the gateway on each listener with its protocol until `shutdown` resolves.
pub async fn serve(
    gw: Arc<Gateway>,
    listeners: Vec<(Protocol, TcpListener)>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut tasks = vec![];
    for (protocol, listener) in listeners {
        let mut rx = rx.clone();
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        match protocol {
            Protocol::Grpc => {
                let routes = grpc::routes(gw.clone()).await;
                tasks.push(tokio::spawn(async move {
                    tonic::transport::Server::builder()
                        .tcp_nodelay(true)
                        .http2_keepalive_interval(Some(Duration::from_secs(30)))
                        .add_routes(routes)
                        .serve_with_incoming_shutdown(
                            // Set per accepted socket: the builder's tcp_nodelay does not reach
                            // sockets from an existing listener, and Nagle adds ~40 ms stalls.
                            tonic::transport::server::TcpIncoming::from(listener)
                                .with_nodelay(Some(true)),
                            stop,
                        )
                        .await
                        .map_err(anyhow::Error::from)
                }));
            }
            Protocol::Http | Protocol::Websocket => {
                let app = if protocol == Protocol::Websocket {
                    ws::router(gw.clone())
                } else {
                    http::router(gw.clone())
                };
                tasks.push(tokio::spawn(async move {
                    axum::serve(no_delay(listener), app)
                        .with_graceful_shutdown(stop)
                        .await
                        .map_err(anyhow::Error::from)
                }));
            }
        }
    }
    shutdown.await;
    let _ = tx.send(true);
    for t in tasks {
        t.await??;
    }
    Ok(())
}
