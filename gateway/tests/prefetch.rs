//! `prefetch` bounds how many requests of one client stream are in flight: a real gRPC Executor
//! records the most calls it ever had at once while one `Call` stream sends many requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::{Request, Response, Status};
use zeroflow_activator::ReplicaSet;
use zeroflow_gateway::Gateway;
use zeroflow_proto::jina::jina_rpc_client::JinaRpcClient;
use zeroflow_proto::jina::jina_single_data_request_rpc_server::{
    JinaSingleDataRequestRpc, JinaSingleDataRequestRpcServer,
};
use zeroflow_proto::jina::{DataRequestProto, HeaderProto};

#[derive(Default)]
struct Counting {
    now: AtomicUsize,
    most: AtomicUsize,
}

struct Exec(Arc<Counting>);

#[tonic::async_trait]
impl JinaSingleDataRequestRpc for Exec {
    async fn process_single_data(
        &self,
        req: Request<DataRequestProto>,
    ) -> Result<Response<DataRequestProto>, Status> {
        let n = self.0.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.most.fetch_max(n, Ordering::SeqCst);
        // Long enough that, without the bound, the stream's requests would overlap here.
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.0.now.fetch_sub(1, Ordering::SeqCst);
        Ok(Response::new(req.into_inner()))
    }
}

async fn serve<S>(svc: S) -> String
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    addr
}

async fn most_in_flight(prefetch: u32, requests: usize) -> usize {
    let yaml = format!("jtype: Flow\nwith:\n  prefetch: {prefetch}\nexecutors:\n  - name: e\n");
    let flow = zeroflow_spec::load(&yaml, &zeroflow_spec::Source::default())
        .expect("valid flow")
        .flow;
    let counting = Arc::new(Counting::default());
    let exec = serve(JinaSingleDataRequestRpcServer::new(Exec(counting.clone()))).await;
    let set = Arc::new(ReplicaSet::new("e", -1));
    set.add_replica("e-0", &exec).unwrap();
    let mut shards = HashMap::new();
    shards.insert("e".to_string(), vec![set]);
    let gw = Arc::new(Gateway::new(&flow, shards).expect("gateway"));
    let routes = zeroflow_gateway::grpc::routes(gw).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let mut client = JinaRpcClient::connect(format!("http://{gw_addr}"))
        .await
        .unwrap();
    let reqs: Vec<DataRequestProto> = (0..requests)
        .map(|i| DataRequestProto {
            header: Some(HeaderProto {
                request_id: format!("r{i}"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let mut out = client
        .call(tokio_stream::iter(reqs))
        .await
        .expect("call")
        .into_inner();
    let mut answered = 0;
    while let Some(r) = out.message().await.expect("stream") {
        assert!(r.header.unwrap().request_id.starts_with('r'));
        answered += 1;
    }
    assert_eq!(answered, requests, "one response per request");
    counting.most.load(Ordering::SeqCst)
}

#[tokio::test]
async fn prefetch_bounds_the_requests_in_flight_per_client_stream() {
    assert_eq!(
        most_in_flight(1, 8).await,
        1,
        "prefetch 1 sends one at a time"
    );
    assert!(
        most_in_flight(2, 12).await <= 2,
        "prefetch 2 never has more than 2 in flight"
    );
}
