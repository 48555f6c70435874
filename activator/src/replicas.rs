//! The replicas of one Executor (or one shard of it) as the gateway sees them: load balancing
//! across them, retries on another replica when one is unreachable, and the endpoints they last
//! reported. The scale-to-zero work extends this with queueing while no replica is ready.

use parking_lot::RwLock;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use zeroflow_proto::jina::jina_data_request_rpc_client::JinaDataRequestRpcClient;
use zeroflow_proto::jina::jina_discover_endpoints_rpc_client::JinaDiscoverEndpointsRpcClient;
use zeroflow_proto::jina::jina_single_data_request_rpc_client::JinaSingleDataRequestRpcClient;
use zeroflow_proto::jina::{DataRequestListProto, DataRequestProto};

/// One replica's address and its (lazily connected, multiplexed) channel.
pub struct Replica {
    pub id: String,
    pub addr: String,
    channel: Channel,
    in_flight: AtomicUsize,
}

impl Replica {
    pub fn new(id: impl Into<String>, addr: impl Into<String>) -> Result<Self, Status> {
        let addr = addr.into();
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("bad replica address {addr}: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Replica {
            id: id.into(),
            addr,
            channel,
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

struct InFlight<'a>(&'a Replica);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a call to an Executor behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// `timeout_send`: per attempt.
    pub timeout: Option<Duration>,
}

pub struct ReplicaSet {
    executor: String,
    replicas: RwLock<Vec<Arc<Replica>>>,
    next: AtomicUsize,
    /// Jina's `retries`: -1 means max(3, replicas).
    retries: i32,
    endpoints: RwLock<Option<Vec<String>>>,
}

impl ReplicaSet {
    pub fn new(executor: impl Into<String>, retries: i32) -> Self {
        ReplicaSet {
            executor: executor.into(),
            replicas: RwLock::new(vec![]),
            next: AtomicUsize::new(0),
            retries,
            endpoints: RwLock::new(None),
        }
    }

    pub fn executor(&self) -> &str {
        &self.executor
    }

    /// Replaces the replica list, keeping the connections of replicas that stay.
    pub fn set_replicas(&self, replicas: Vec<(String, String)>) -> Result<(), Status> {
        let mut cur = self.replicas.write();
        let mut next = Vec::with_capacity(replicas.len());
        for (id, addr) in replicas {
            match cur.iter().find(|r| r.addr == addr) {
                Some(r) => next.push(r.clone()),
                None => next.push(Arc::new(Replica::new(id, addr)?)),
            }
        }
        *cur = next;
        Ok(())
    }

    pub fn replica_count(&self) -> usize {
        self.replicas.read().len()
    }

    /// The endpoints the replicas last reported, if any did.
    pub fn endpoints(&self) -> Option<Vec<String>> {
        self.endpoints.read().clone()
    }

    pub fn set_endpoints(&self, endpoints: Vec<String>) {
        *self.endpoints.write() = Some(endpoints);
    }

    fn attempts(&self, replicas: usize) -> usize {
        if self.retries < 0 {
            replicas.max(3)
        } else {
            self.retries as usize + 1
        }
    }

    /// Least in-flight of two candidates taken in round-robin order, so load spreads evenly
    /// and a slow replica gets fewer new requests.
    fn pick(&self, skip: &[usize]) -> Option<(usize, Arc<Replica>)> {
        let reps = self.replicas.read();
        let n = reps.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates: Vec<usize> = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| !skip.contains(i))
            .take(2)
            .collect();
        let chosen = match candidates.as_slice() {
            [] => start % n,
            [a] => *a,
            [a, b, ..] => {
                if reps[*b].in_flight() < reps[*a].in_flight() {
                    *b
                } else {
                    *a
                }
            }
        };
        Some((chosen, reps[chosen].clone()))
    }

    fn no_replica(&self) -> Status {
        Status::unavailable(format!(
            "Executor {} has no replica to take the request",
            self.executor
        ))
    }

    async fn with_retries<T, F, Fut>(&self, opts: CallOptions, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let n = self.replica_count();
        let attempts = self.attempts(n);
        let mut tried = vec![];
        let mut last: Option<Status> = None;
        for _ in 0..attempts {
            let Some((idx, replica)) = self.pick(&tried) else {
                return Err(last.unwrap_or_else(|| self.no_replica()));
            };
            if !tried.contains(&idx) {
                tried.push(idx);
            }
            replica.in_flight.fetch_add(1, Ordering::Relaxed);
            let _g = InFlight(&replica);
            let call = f(replica.channel.clone());
            let result = match opts.timeout {
                Some(t) => match tokio::time::timeout(t, call).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(Status::deadline_exceeded(format!(
                            "Executor {} (replica {}) did not answer within {} ms (timeout_send)",
                            self.executor,
                            replica.id,
                            t.as_millis()
                        )));
                    }
                },
                None => call.await,
            };
            match result {
                Err(s) if s.code() == Code::Unavailable => {
                    tracing::debug!(executor = %self.executor, replica = %replica.id, error = %s.message(), "replica unavailable, trying another");
                    last = Some(s);
                    if tried.len() >= n {
                        // Every replica failed once; later attempts go round again, which
                        // helps when a replica is restarting.
                        tried.clear();
                    }
                }
                other => return other,
            }
        }
        let last = last.unwrap_or_else(|| self.no_replica());
        Err(Status::unavailable(format!(
            "Communication error with deployment {} after {attempts} attempts: {}",
            self.executor,
            last.message()
        )))
    }

    /// `process_single_data` on one replica, retried on another while unreachable.
    pub async fn process(
        &self,
        req: DataRequestProto,
        opts: CallOptions,
    ) -> Result<DataRequestProto, Status> {
        self.with_retries(opts, |ch| {
            let req = req.clone();
            async move {
                let mut c = JinaSingleDataRequestRpcClient::new(ch)
                    .max_decoding_message_size(zeroflow_proto::MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(zeroflow_proto::MAX_MESSAGE_SIZE);
                c.process_single_data(req).await.map(|r| r.into_inner())
            }
        })
        .await
    }

    /// `process_data` with several requests (for `no_reduce` merges, where the Executor gets
    /// every branch's request).
    pub async fn process_list(
        &self,
        reqs: Vec<DataRequestProto>,
        opts: CallOptions,
    ) -> Result<DataRequestProto, Status> {
        self.with_retries(opts, |ch| {
            let list = DataRequestListProto {
                requests: reqs.clone(),
            };
            async move {
                let mut c = JinaDataRequestRpcClient::new(ch)
                    .max_decoding_message_size(zeroflow_proto::MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(zeroflow_proto::MAX_MESSAGE_SIZE);
                c.process_data(list).await.map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Asks one replica for its endpoints and remembers them.
    pub async fn discover(&self) -> Result<Vec<String>, Status> {
        let eps = self
            .with_retries(
                CallOptions {
                    timeout: Some(Duration::from_secs(10)),
                },
                |ch| async move {
                    JinaDiscoverEndpointsRpcClient::new(ch)
                        .endpoint_discovery(())
                        .await
                        .map(|r| r.into_inner().endpoints)
                },
            )
            .await?;
        self.set_endpoints(eps.clone());
        Ok(eps)
    }
}
