//! The gRPC side of the shim: every RPC the Executor serves is forwarded as raw bytes (so
//! reflection, discovery and streaming work without types), data RPCs pass the breaker and the
//! meter, and the health service is the shim's own, so it can say NOT_SERVING while the child
//! starts or while the replica drains.

use crate::State;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use http::uri::PathAndQuery;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::{Request, Response, Status, Streaming};
use zeroflow_proto::paths;
use zeroflow_proto::raw::RawCodec;

use zeroflow_activator::PROXIED_HEADER;

/// Paths whose calls are work the autoscaler should see; the rest (discovery, reflection,
/// status) are control traffic.
pub(crate) fn is_data_rpc(path: &str) -> bool {
    matches!(
        path,
        paths::PROCESS_SINGLE_DATA
            | paths::PROCESS_DATA
            | paths::CALL
            | "/jina.JinaSingleDocumentRequestRPC/stream_doc"
    )
}

/// Unary on the wire: forwarded with a unary call, which is cheaper than a stream.
fn is_unary(path: &str) -> bool {
    matches!(
        path,
        paths::PROCESS_SINGLE_DATA
            | paths::PROCESS_DATA
            | paths::ENDPOINT_DISCOVERY
            | paths::STATUS
            | paths::DRY_RUN
            | "/jina.JinaExecutorSnapshot/snapshot"
            | "/jina.JinaExecutorSnapshotProgress/snapshot_status"
            | "/jina.JinaExecutorRestore/restore"
            | "/jina.JinaExecutorRestoreProgress/restore_status"
    )
}

#[derive(Clone)]
pub struct ProxyService {
    pub state: Arc<State>,
}

impl tower::Service<http::Request<axum::body::Body>> for ProxyService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let pq =
                PathAndQuery::try_from(path.as_str()).unwrap_or(PathAndQuery::from_static("/"));
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .max_decoding_message_size(zeroflow_proto::MAX_MESSAGE_SIZE)
                .max_encoding_message_size(zeroflow_proto::MAX_MESSAGE_SIZE);
            let data = is_data_rpc(&path);
            let resp = if is_unary(&path) {
                grpc.unary(
                    Unary {
                        state,
                        path: pq,
                        data,
                    },
                    req,
                )
                .await
            } else {
                grpc.streaming(
                    Streamed {
                        state,
                        path: pq,
                        data,
                    },
                    req,
                )
                .await
            };
            Ok(resp)
        })
    }
}

/// What a data request holds while it runs: a breaker slot and its place in the meter.
struct Admission {
    state: Arc<State>,
    proxied: bool,
    _permit: Option<zeroflow_activator::Permit>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.state.finish(self.proxied);
    }
}

async fn admit(
    state: &Arc<State>,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<Admission, Status> {
    if state.is_draining() {
        return Err(Status::unavailable(format!(
            "replica {} of Executor {} is draining and takes no new requests",
            state.replica, state.executor
        )));
    }
    state.wait_ready().await?;
    let permit = match &state.breaker {
        Some(b) => Some(b.acquire().await.map_err(|e| {
            Status::unavailable(format!(
                "replica {} of Executor {}: {e}",
                state.replica, state.executor
            ))
        })?),
        None => None,
    };
    let proxied = metadata.contains_key(PROXIED_HEADER);
    state.start(proxied);
    Ok(Admission {
        state: state.clone(),
        proxied,
        _permit: permit,
    })
}

fn client(state: &State) -> tonic::client::Grpc<tonic::transport::Channel> {
    tonic::client::Grpc::new(state.channel.clone())
        .max_decoding_message_size(zeroflow_proto::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(zeroflow_proto::MAX_MESSAGE_SIZE)
}

fn unreachable(state: &State, e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!(
        "Executor {} (replica {}) is not reachable: {e}",
        state.executor, state.replica
    ))
}

struct Unary {
    state: Arc<State>,
    path: PathAndQuery,
    data: bool,
}

impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<Response<Bytes>, Status>>;

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let state = self.state.clone();
        let path = self.path.clone();
        let data = self.data;
        Box::pin(async move {
            let _admission = if data {
                Some(admit(&state, req.metadata()).await?)
            } else {
                state.wait_ready().await?;
                None
            };
            let mut grpc = client(&state);
            grpc.ready().await.map_err(|e| unreachable(&state, e))?;
            let result = grpc.unary(req, path, RawCodec).await;
            state.record_result(data, &result);
            result
        })
    }
}

struct Streamed {
    state: Arc<State>,
    path: PathAndQuery,
    data: bool,
}

impl tonic::server::StreamingService<Bytes> for Streamed {
    type Response = Bytes;
    type ResponseStream = BoxStream<'static, Result<Bytes, Status>>;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        let state = self.state.clone();
        let path = self.path.clone();
        let data = self.data;
        Box::pin(async move {
            let admission = if data {
                Some(admit(&state, req.metadata()).await?)
            } else {
                state.wait_ready().await?;
                None
            };
            let (metadata, extensions, inbound) = req.into_parts();
            // An error from the caller's side ends the outbound stream; the Executor sees a
            // half-close and answers what it already has.
            let outbound = inbound.take_while(|m| futures::future::ready(m.is_ok()));
            let outbound = outbound.filter_map(|m| futures::future::ready(m.ok()));
            let mut grpc = client(&state);
            grpc.ready().await.map_err(|e| unreachable(&state, e))?;
            let resp = grpc
                .streaming(
                    Request::from_parts(metadata, extensions, outbound),
                    path,
                    RawCodec,
                )
                .await?;
            let (md, body, ext) = resp.into_parts();
            // The admission lives as long as the response stream, so a long Call counts as in
            // flight until it ends.
            let body = body.map(move |m| {
                let _keep = &admission;
                m
            });
            Ok(Response::from_parts(md, body.boxed(), ext))
        })
    }
}
