//! `zeroflow-test-executor`: a Jina-protocol Executor in Rust for tests and benchmarks where a
//! Python start-up would dominate. It echoes documents, can append text to each document, sleep,
//! or raise (answer with an ERROR status) on request, and serves health, discovery, `_status` and
//! reflection like `jina executor` does, so a real `jina gateway` accepts it.
//!
//! Per-request `parameters`: `raise` (string: fail with that message), `delay_ms` (number).

use clap::Parser;
use futures::StreamExt;
use prost::Message;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};
use zeroflow_proto::docarray::{DocListProto, NodeProto, node_proto};
use zeroflow_proto::jina::{
    DataContentProto, DataRequestListProto, DataRequestProto, EndpointsProto, JinaInfoProto,
    RouteProto, StatusProto, data_content_proto, jina_data_request_rpc_server as dr,
    jina_discover_endpoints_rpc_server as de, jina_info_rpc_server as info,
    jina_rpc_server as call, jina_single_data_request_rpc_server as sdr,
};

#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; `ZEROFLOW_EXECUTOR_PORT` (set by the shim) is used when this is absent.
    #[arg(long, env = "ZEROFLOW_EXECUTOR_PORT")]
    port: u16,
    /// The name appended to each request's routes (jina's `--name`).
    #[arg(long, default_value = "executor")]
    name: String,
    /// Text appended to every document's `text` field (may start with `-`).
    #[arg(long, allow_hyphen_values = true)]
    append: Option<String>,
    /// Time spent on every request before answering.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Time spent before the port opens, like a slow `__init__`.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    startup_delay: Duration,
    /// Endpoints reported by discovery (besides `/default`).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Exit with this code right after starting (to test crash handling).
    #[arg(long)]
    crash_after: Option<humantime::Duration>,
}

struct Exec {
    args: Args,
}

impl Exec {
    async fn process(&self, mut req: DataRequestProto) -> DataRequestProto {
        let params = req
            .parameters
            .as_ref()
            .map(|p| p.fields.clone())
            .unwrap_or_default();
        let mut delay = self.args.delay;
        if let Some(prost_types::value::Kind::NumberValue(ms)) =
            params.get("delay_ms").and_then(|v| v.kind.clone())
        {
            delay = Duration::from_micros((ms.max(0.0) * 1000.0) as u64);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(prost_types::value::Kind::StringValue(msg)) =
            params.get("raise").and_then(|v| v.kind.clone())
        {
            let header = req.header.get_or_insert_with(Default::default);
            header.status = Some(StatusProto::error(&self.args.name, "ValueError", msg));
        } else if let Some(suffix) = &self.args.append {
            req.data = append_text(&req.data, suffix).into();
        }
        req.routes.push(RouteProto {
            executor: self.args.name.clone(),
            ..Default::default()
        });
        req
    }
}

/// Appends `suffix` to each document's `text`; documents without text get it as their text.
fn append_text(data: &[u8], suffix: &str) -> Vec<u8> {
    let Ok(mut content) = DataContentProto::decode(data) else {
        return data.to_vec();
    };
    let mut docs = match content.documents.take() {
        Some(data_content_proto::Documents::Docs(d)) => d,
        Some(data_content_proto::Documents::DocsBytes(b)) => {
            DocListProto::decode(b.as_slice()).unwrap_or_default()
        }
        None => DocListProto::default(),
    };
    for doc in &mut docs.docs {
        let node = doc.data.entry("text".into()).or_insert_with(|| NodeProto {
            content: None,
            docarray_type: None,
        });
        let text = match &node.content {
            Some(node_proto::Content::Text(t)) => format!("{t}{suffix}"),
            _ => suffix.to_string(),
        };
        node.content = Some(node_proto::Content::Text(text));
    }
    content.documents = Some(data_content_proto::Documents::Docs(docs));
    content.encode_to_vec()
}

#[derive(Clone)]
struct Svc(Arc<Exec>);

#[tonic::async_trait]
impl sdr::JinaSingleDataRequestRpc for Svc {
    async fn process_single_data(
        &self,
        req: Request<DataRequestProto>,
    ) -> Result<Response<DataRequestProto>, Status> {
        Ok(Response::new(self.0.process(req.into_inner()).await))
    }
}

#[tonic::async_trait]
impl dr::JinaDataRequestRpc for Svc {
    async fn process_data(
        &self,
        req: Request<DataRequestListProto>,
    ) -> Result<Response<DataRequestProto>, Status> {
        let first = req
            .into_inner()
            .requests
            .into_iter()
            .next()
            .unwrap_or_default();
        Ok(Response::new(self.0.process(first).await))
    }
}

type CallStream = Pin<Box<dyn futures::Stream<Item = Result<DataRequestProto, Status>> + Send>>;

#[tonic::async_trait]
impl call::JinaRpc for Svc {
    type CallStream = CallStream;
    async fn call(
        &self,
        req: Request<Streaming<DataRequestProto>>,
    ) -> Result<Response<CallStream>, Status> {
        let exec = self.0.clone();
        let out = req.into_inner().then(move |m| {
            let exec = exec.clone();
            async move { Ok(exec.process(m?).await) }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[tonic::async_trait]
impl de::JinaDiscoverEndpointsRpc for Svc {
    async fn endpoint_discovery(&self, _: Request<()>) -> Result<Response<EndpointsProto>, Status> {
        let mut endpoints = vec!["/default".to_string()];
        endpoints.extend(self.0.args.endpoints.iter().cloned());
        endpoints.push(zeroflow_proto::DRY_RUN_ENDPOINT.to_string());
        // jina's gateway builds its models from these schemas at start-up and refuses an
        // Executor without them; this is what jina reports for an endpoint without type hints
        // (LegacyDocument in and out), captured from jina 3.34.
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("endpoint_schema.json")).unwrap_or_default();
        let mut schemas = prost_types::Struct::default();
        for e in &endpoints {
            schemas.fields.insert(e.clone(), json_to_value(&schema));
        }
        Ok(Response::new(EndpointsProto {
            endpoints,
            write_endpoints: vec![],
            schemas: Some(schemas),
        }))
    }
}

fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(prost_types::Struct {
            fields: m
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[tonic::async_trait]
impl info::JinaInfoRpc for Svc {
    async fn status(&self, _: Request<()>) -> Result<Response<JinaInfoProto>, Status> {
        let mut jina = HashMap::new();
        jina.insert("jina".into(), "3.34.0".into());
        jina.insert(
            "zeroflow-test-executor".into(),
            env!("CARGO_PKG_VERSION").into(),
        );
        Ok(Response::new(JinaInfoProto {
            jina,
            envs: HashMap::new(),
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !args.startup_delay.is_zero() {
        tokio::time::sleep(args.startup_delay).await;
    }
    if let Some(after) = args.crash_after {
        tokio::spawn(async move {
            tokio::time::sleep(after.into()).await;
            eprintln!("test executor: crashing on purpose");
            std::process::exit(17);
        });
    }
    let addr: std::net::SocketAddr = format!("{}:{}", args.host, args.port).parse()?;
    let svc = Svc(Arc::new(Exec { args }));
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health
        .set_service_status("jina.JinaRPC", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(zeroflow_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let max = zeroflow_proto::MAX_MESSAGE_SIZE;
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => futures::future::pending::<()>().await } } => {},
        }
    };
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(
            sdr::JinaSingleDataRequestRpcServer::new(svc.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            dr::JinaDataRequestRpcServer::new(svc.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            call::JinaRpcServer::new(svc.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(de::JinaDiscoverEndpointsRpcServer::new(svc.clone()))
        .add_service(info::JinaInfoRpcServer::new(svc))
        .serve_with_shutdown(addr, shutdown)
        .await?;
    Ok(())
}
