//! `zeroflow-activator`: the activator as a standalone proxy, for setups where the gateway is not
//! Zeroflow's (a real `jina gateway`, or a client calling an Executor directly). It serves the
//! Executor side of the Jina protocol for one Executor and queues requests while no replica is
//! ready. Whoever runs the replicas tells it which are ready over its admin port:
//! `PUT /replicas` with `[{"id": "...", "addr": "host:port"}]`; `GET /stats` is the activator's
//! stat for the autoscaler; `GET /metrics` is Prometheus. Thin main: flags, tracing, serve.

use clap::Parser;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};
use zeroflow_activator::{ActivatorMetrics, CallOptions, ReplicaSet, ThrottleSettings};
use zeroflow_proto::jina::{
    DataRequestListProto, DataRequestProto, EndpointsProto,
    jina_data_request_rpc_server::{JinaDataRequestRpc, JinaDataRequestRpcServer},
    jina_discover_endpoints_rpc_server::{
        JinaDiscoverEndpointsRpc, JinaDiscoverEndpointsRpcServer,
    },
    jina_rpc_server::{JinaRpc, JinaRpcServer},
    jina_single_data_request_rpc_server::{
        JinaSingleDataRequestRpc, JinaSingleDataRequestRpcServer,
    },
};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Buffers requests for one Executor while it has no ready replica"
)]
struct Args {
    /// The Executor's name (in errors and metrics).
    #[arg(long)]
    executor: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// gRPC port clients call as if it were the Executor.
    #[arg(long)]
    port: u16,
    /// Admin port: PUT /replicas, GET /stats, GET /metrics.
    #[arg(long)]
    admin_port: u16,
    /// Initial replicas, `ID=HOST:PORT` (repeatable).
    #[arg(long = "replica", value_name = "ID=HOST:PORT")]
    replicas: Vec<String>,
    /// containerConcurrency of each replica; 0 = unlimited.
    #[arg(long, default_value_t = 0)]
    container_concurrency: usize,
    /// Requests that may wait beyond those in flight.
    #[arg(long, default_value_t = 10_000)]
    queue_depth: usize,
    /// Request deadline in seconds, time queued included (revision_timeout).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Clone)]
struct Proxy(Arc<ReplicaSet>);

#[tonic::async_trait]
impl JinaSingleDataRequestRpc for Proxy {
    async fn process_single_data(
        &self,
        req: Request<DataRequestProto>,
    ) -> Result<Response<DataRequestProto>, Status> {
        self.0
            .process(req.into_inner(), CallOptions::default())
            .await
            .map(Response::new)
    }
}

#[tonic::async_trait]
impl JinaDataRequestRpc for Proxy {
    async fn process_data(
        &self,
        req: Request<DataRequestListProto>,
    ) -> Result<Response<DataRequestProto>, Status> {
        self.0
            .process_list(req.into_inner().requests, CallOptions::default())
            .await
            .map(Response::new)
    }
}

type CallStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<DataRequestProto, Status>> + Send>>;

#[tonic::async_trait]
impl JinaRpc for Proxy {
    type CallStream = CallStream;
    async fn call(
        &self,
        req: Request<Streaming<DataRequestProto>>,
    ) -> Result<Response<CallStream>, Status> {
        use futures::StreamExt;
        let set = self.0.clone();
        let out = req.into_inner().then(move |m| {
            let set = set.clone();
            async move { set.process(m?, CallOptions::default()).await }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[tonic::async_trait]
impl JinaDiscoverEndpointsRpc for Proxy {
    async fn endpoint_discovery(&self, _: Request<()>) -> Result<Response<EndpointsProto>, Status> {
        // Answered without waking the Executor: what it reported last, else the default set.
        let mut endpoints = match self.0.endpoints() {
            Some(e) => e,
            None => match self.0.discover().await {
                Ok(e) => e,
                Err(_) => vec![zeroflow_proto::DEFAULT_ENDPOINT.to_string()],
            },
        };
        if !endpoints
            .iter()
            .any(|e| e == zeroflow_proto::DRY_RUN_ENDPOINT)
        {
            endpoints.push(zeroflow_proto::DRY_RUN_ENDPOINT.to_string());
        }
        Ok(Response::new(EndpointsProto {
            endpoints,
            ..Default::default()
        }))
    }
}

#[derive(serde::Deserialize)]
struct ReplicaAddr {
    id: String,
    addr: String,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("zeroflow-activator: {e}");
        std::process::exit(64);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ActivatorMetrics::new(&mut registry);
    let set = Arc::new(
        ReplicaSet::new(&args.executor, -1)
            .with_settings(ThrottleSettings {
                container_concurrency: args.container_concurrency,
                queue_depth: args.queue_depth,
                request_timeout: Duration::from_secs(args.timeout),
            })
            .with_metrics(metrics),
    );
    let initial: Result<Vec<(String, String)>, String> = args
        .replicas
        .iter()
        .map(|r| {
            r.split_once('=')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("--replica {r:?} is not ID=HOST:PORT"))
        })
        .collect();
    set.set_replicas(initial?)?;
    let (poke_tx, mut pokes) = tokio::sync::mpsc::unbounded_channel();
    set.set_poker(poke_tx);
    let pokes_total = prometheus_client::metrics::counter::Counter::<u64>::default();
    registry.register(
        "zeroflow_activator_pokes",
        "Cold requests that asked for a replica",
        pokes_total.clone(),
    );
    tokio::spawn(async move {
        while let Some(e) = pokes.recv().await {
            pokes_total.inc();
            tracing::info!(executor = %e, "cold request: waiting for a replica (PUT /replicas)");
        }
    });
    let registry = Arc::new(registry);

    let admin = {
        let set = set.clone();
        let put_set = set.clone();
        axum::Router::new()
            .route(
                "/replicas",
                axum::routing::put(move |axum::Json(list): axum::Json<Vec<ReplicaAddr>>| {
                    let set = put_set.clone();
                    async move {
                        match set.set_replicas(list.into_iter().map(|r| (r.id, r.addr)).collect()) {
                            Ok(()) => (
                                axum::http::StatusCode::OK,
                                axum::Json(serde_json::json!({"replicas": set.replica_ids()})),
                            ),
                            Err(e) => (
                                axum::http::StatusCode::BAD_REQUEST,
                                axum::Json(serde_json::json!({"error": e.message()})),
                            ),
                        }
                    }
                }),
            )
            .route(
                "/stats",
                axum::routing::get(move || {
                    let set = set.clone();
                    async move { axum::Json(set.report(tokio::time::Instant::now())) }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let registry = registry.clone();
                    async move {
                        let mut out = String::new();
                        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
                        out
                    }
                }),
            )
    };
    let admin_l = tokio::net::TcpListener::bind((args.host.as_str(), args.admin_port)).await?;
    tokio::spawn(async move { axum::serve(admin_l, admin).await });

    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let max = zeroflow_proto::MAX_MESSAGE_SIZE;
    let proxy = Proxy(set);
    let addr = format!("{}:{}", args.host, args.port).parse()?;
    tracing::info!(%addr, executor = %args.executor, "activator serving");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_svc)
        .add_service(
            JinaSingleDataRequestRpcServer::new(proxy.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            JinaDataRequestRpcServer::new(proxy.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            JinaRpcServer::new(proxy.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(JinaDiscoverEndpointsRpcServer::new(proxy))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
