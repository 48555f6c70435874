//! The gateway's gRPC face, as `jina.Client` and `jina ping` use it: `Call` (a stream of
//! requests, one response each), `process_single_data`, `dry_run`, `endpoint_discovery`,
//! `_status`, health and reflection.

use crate::Gateway;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};
use zeroflow_proto::jina::{
    DataRequestProto, EndpointsProto, JinaInfoProto, StatusProto,
    jina_discover_endpoints_rpc_server::{
        JinaDiscoverEndpointsRpc, JinaDiscoverEndpointsRpcServer,
    },
    jina_gateway_dry_run_rpc_server::{JinaGatewayDryRunRpc, JinaGatewayDryRunRpcServer},
    jina_info_rpc_server::{JinaInfoRpc, JinaInfoRpcServer},
    jina_rpc_server::{JinaRpc, JinaRpcServer},
    jina_single_data_request_rpc_server::{
        JinaSingleDataRequestRpc, JinaSingleDataRequestRpcServer,
    },
};

#[derive(Clone)]
pub struct GrpcGateway(pub Arc<Gateway>);

type CallStream = Pin<Box<dyn Stream<Item = Result<DataRequestProto, Status>> + Send>>;

#[tonic::async_trait]
impl JinaRpc for GrpcGateway {
    type CallStream = CallStream;

    async fn call(
        &self,
        req: Request<Streaming<DataRequestProto>>,
    ) -> Result<Response<CallStream>, Status> {
        // Responses go out as they complete, unless the client asks for request order.
        let in_order = req
            .metadata()
            .get("__results_in_order__")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let gw = self.0.clone();
        let mut inbound = req.into_inner();
        let prefetch = match gw.prefetch {
            0 => Semaphore::MAX_PERMITS,
            n => n,
        };
        // `prefetch` bounds how many of this client's requests are in flight: the next one is
        // read only when a slot is free, so a fast client is slowed, not buffered without end.
        let slots = Arc::new(Semaphore::new(prefetch));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<DataRequestProto, Status>>(64);
        tokio::spawn(async move {
            let mut ordered = FuturesOrdered::new();
            let mut unordered = FuturesUnordered::new();
            let mut inbound_done = false;
            loop {
                let pending = if in_order {
                    ordered.len()
                } else {
                    unordered.len()
                };
                if inbound_done && pending == 0 {
                    break;
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned(), if !inbound_done => {
                        let permit = permit.expect("never closed");
                        match inbound.next().await {
                            Some(Ok(msg)) => {
                                let gw = gw.clone();
                                let fut = async move {
                                    let r = gw.process(msg).await;
                                    drop(permit);
                                    r
                                };
                                if in_order { ordered.push_back(Box::pin(fut)) } else { unordered.push(Box::pin(fut)) }
                            }
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "client stream ended with an error");
                                inbound_done = true;
                            }
                            None => inbound_done = true,
                        }
                    }
                    Some(r) = ordered.next(), if in_order && !ordered.is_empty() => {
                        let fatal = r.is_err();
                        if tx.send(r).await.is_err() || fatal { break; }
                    }
                    Some(r) = unordered.next(), if !in_order && !unordered.is_empty() => {
                        let fatal = r.is_err();
                        if tx.send(r).await.is_err() || fatal { break; }
                    }
                }
            }
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(out)))
    }
}

#[tonic::async_trait]
impl JinaSingleDataRequestRpc for GrpcGateway {
    async fn process_single_data(
        &self,
        req: Request<DataRequestProto>,
    ) -> Result<Response<DataRequestProto>, Status> {
        self.0.process(req.into_inner()).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl JinaGatewayDryRunRpc for GrpcGateway {
    async fn dry_run(&self, _: Request<()>) -> Result<Response<StatusProto>, Status> {
        Ok(Response::new(self.0.dry_run().await))
    }
}

#[tonic::async_trait]
impl JinaDiscoverEndpointsRpc for GrpcGateway {
    async fn endpoint_discovery(&self, _: Request<()>) -> Result<Response<EndpointsProto>, Status> {
        let mut endpoints = self.0.endpoints();
        endpoints.push(zeroflow_proto::DRY_RUN_ENDPOINT.to_string());
        Ok(Response::new(EndpointsProto {
            endpoints,
            write_endpoints: vec![],
            schemas: None,
        }))
    }
}

#[tonic::async_trait]
impl JinaInfoRpc for GrpcGateway {
    async fn status(&self, _: Request<()>) -> Result<Response<JinaInfoProto>, Status> {
        Ok(Response::new(JinaInfoProto {
            jina: info_map(),
            envs: HashMap::new(),
        }))
    }
}

pub fn info_map() -> HashMap<String, String> {
    let mut m = HashMap::new();
    // jina.Client compares the major version it talks to; Zeroflow speaks jina 3.34's protocol.
    m.insert("jina".into(), "3.34.0".into());
    m.insert("zeroflow".into(), env!("CARGO_PKG_VERSION").into());
    m.insert("proto-backend".into(), "zeroflow".into());
    m
}

/// All gRPC services of the gateway, ready to serve.
pub async fn routes(gw: Arc<Gateway>) -> tonic::service::Routes {
    let max = zeroflow_proto::MAX_MESSAGE_SIZE;
    let svc = GrpcGateway(gw);
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    // Built once per process and shared: the descriptor set is parsed into an index that is the
    // same for every Flow, and a server with a thousand Flows should not hold a thousand copies.
    // (The service's type is opaque, so the cache holds it as `Any`.)
    static REFLECTION: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>> =
        std::sync::OnceLock::new();
    fn cached<T: Clone + Send + Sync + 'static>(init: impl FnOnce() -> T) -> T {
        REFLECTION
            .get_or_init(|| Box::new(init()))
            .downcast_ref::<T>()
            .expect("one type is ever stored")
            .clone()
    }
    let reflection = cached(|| {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(zeroflow_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("the built-in descriptor set is valid")
    });
    let mut b = tonic::service::Routes::builder();
    b.add_service(health_svc)
        .add_service(reflection)
        .add_service(
            JinaRpcServer::new(svc.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            JinaSingleDataRequestRpcServer::new(svc.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(JinaGatewayDryRunRpcServer::new(svc.clone()))
        .add_service(JinaDiscoverEndpointsRpcServer::new(svc.clone()))
        .add_service(JinaInfoRpcServer::new(svc));
    b.routes()
}
