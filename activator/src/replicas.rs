//! The activator's throttler for one Executor (or one shard of it): requests wait here while no
//! replica is ready (bounded queue, deadline = `revision_timeout` including the wait), the first
//! cold request pokes the autoscaler at once, a replica is used the moment the runtime announces
//! it (pushed, not probed), load is balanced by containerConcurrency as Knative's activator does,
//! and a request to an unreachable replica is retried on another.

use crate::h2call::{CallError, H2Channel};
use crate::metrics::ActivatorMetrics;
use crate::stats::{ConcurrencyMeter, Stat};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::{Code, Status};
use zeroflow_proto::jina::{DataRequestListProto, DataRequestProto, EndpointsProto, RouteProto};
use zeroflow_proto::paths;

/// Metadata the shim reads to count requests that came through the activator separately.
pub const PROXIED_HEADER: &str = "x-zeroflow-proxied";

/// One replica's address and its (lazily connected, multiplexed) connection.
pub struct Replica {
    pub id: String,
    pub addr: String,
    channel: H2Channel,
    in_flight: AtomicUsize,
}

impl Replica {
    pub fn new(id: impl Into<String>, addr: impl Into<String>) -> Result<Self, Status> {
        let addr = addr.into();
        match format!("http://{addr}").parse::<http::Uri>() {
            Ok(u) if u.port().is_some() && u.path() == "/" => {}
            _ => {
                return Err(Status::invalid_argument(format!(
                    "bad replica address {addr:?}: expected HOST:PORT"
                )));
            }
        }
        Ok(Replica {
            id: id.into(),
            channel: H2Channel::new(addr.clone()),
            addr,
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A slot on one replica; frees it (and wakes waiters when capacity is bounded) when dropped.
struct Slot<'a> {
    set: &'a ReplicaSet,
    replica: Arc<Replica>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.set.settings.read().container_concurrency > 0 {
            self.set.bump();
        }
    }
}

/// How a call to an Executor behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// `timeout_send`: per attempt.
    pub timeout: Option<Duration>,
}

/// Knobs of the throttler, from the Executor's spec and the server's settings.
#[derive(Debug, Clone)]
pub struct ThrottleSettings {
    /// Requests one replica takes at once; 0 = unlimited.
    pub container_concurrency: usize,
    /// Requests that may wait here beyond those in flight.
    pub queue_depth: usize,
    /// The whole deadline of a request, time queued included (`revision_timeout`).
    pub request_timeout: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            container_concurrency: 0,
            queue_depth: 10_000,
            request_timeout: Duration::from_secs(300),
        }
    }
}

pub struct ReplicaSet {
    executor: String,
    replicas: RwLock<Vec<Arc<Replica>>>,
    next: AtomicUsize,
    /// Jina's `retries`: -1 means max(3, replicas).
    retries: i32,
    endpoints: RwLock<Option<Vec<String>>>,
    settings: RwLock<ThrottleSettings>,
    /// Bumped whenever a replica comes or goes, or a bounded slot frees: waiters re-check.
    changed: watch::Sender<u64>,
    /// Requests admitted (waiting or in flight).
    pending: AtomicUsize,
    /// Woken each time `pending` drops to zero.
    quiet: tokio::sync::Notify,
    waiting: AtomicUsize,
    poke: Mutex<Option<mpsc::UnboundedSender<String>>>,
    last_poke: Mutex<Option<Instant>>,
    /// Set while the Executor cannot start: requests fail at once with this message.
    failure: RwLock<Option<String>>,
    /// Since when requests have been waiting for a first replica (for the cold-start metric).
    cold_since: Mutex<Option<Instant>>,
    meter: Mutex<ConcurrencyMeter>,
    /// Every admitted call's time from arrival to answer (for the dashboard's rate and
    /// percentiles).
    latency: crate::latency::LatencyHistogram,
    metrics: Option<ActivatorMetrics>,
}

impl ReplicaSet {
    pub fn new(executor: impl Into<String>, retries: i32) -> Self {
        let (changed, _) = watch::channel(0);
        ReplicaSet {
            executor: executor.into(),
            replicas: RwLock::new(vec![]),
            next: AtomicUsize::new(0),
            retries,
            endpoints: RwLock::new(None),
            settings: RwLock::new(ThrottleSettings::default()),
            changed,
            pending: AtomicUsize::new(0),
            quiet: tokio::sync::Notify::new(),
            waiting: AtomicUsize::new(0),
            poke: Mutex::new(None),
            last_poke: Mutex::new(None),
            failure: RwLock::new(None),
            cold_since: Mutex::new(None),
            meter: Mutex::new(ConcurrencyMeter::new(Instant::now())),
            latency: Default::default(),
            metrics: None,
        }
    }

    pub fn with_settings(self, settings: ThrottleSettings) -> Self {
        *self.settings.write() = settings;
        self
    }

    pub fn with_metrics(mut self, metrics: ActivatorMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Where cold requests send the Executor's name, so the autoscaler decides at once.
    pub fn set_poker(&self, tx: mpsc::UnboundedSender<String>) {
        *self.poke.lock() = Some(tx);
    }

    pub fn executor(&self) -> &str {
        &self.executor
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn on_replicas_changed(&self, count: usize) {
        if let Some(m) = &self.metrics {
            m.ready
                .get_or_create(&m.label(&self.executor))
                .set(count as i64);
        }
        if count > 0
            && let Some(since) = self.cold_since.lock().take()
        {
            let secs = since.elapsed().as_secs_f64();
            tracing::info!(executor = %self.executor, cold_start_ms = (secs * 1000.0) as u64, "cold start done: a replica is ready");
            if let Some(m) = &self.metrics {
                m.cold_start
                    .get_or_create(&m.label(&self.executor))
                    .observe(secs);
                m.cold_starts.get_or_create(&m.label(&self.executor)).inc();
            }
        }
        self.bump();
    }

    /// Replaces the replica list, keeping the connections of replicas that stay.
    pub fn set_replicas(&self, replicas: Vec<(String, String)>) -> Result<(), Status> {
        let count = {
            let mut cur = self.replicas.write();
            let mut next = Vec::with_capacity(replicas.len());
            for (id, addr) in replicas {
                match cur.iter().find(|r| r.addr == addr) {
                    Some(r) => next.push(r.clone()),
                    None => next.push(Arc::new(Replica::new(id, addr)?)),
                }
            }
            *cur = next;
            cur.len()
        };
        self.on_replicas_changed(count);
        Ok(())
    }

    /// A replica became ready: it takes requests from now on (queued ones first).
    pub fn add_replica(&self, id: &str, addr: &str) -> Result<(), Status> {
        let replica = Arc::new(Replica::new(id, addr)?);
        let count = {
            let mut cur = self.replicas.write();
            cur.retain(|r| r.id != id);
            cur.push(replica);
            cur.len()
        };
        self.on_replicas_changed(count);
        Ok(())
    }

    /// A replica stops taking new requests (it is draining or gone).
    pub fn remove_replica(&self, id: &str) {
        let count = {
            let mut cur = self.replicas.write();
            cur.retain(|r| r.id != id);
            cur.len()
        };
        self.on_replicas_changed(count);
    }

    pub fn replica_count(&self) -> usize {
        self.replicas.read().len()
    }

    pub fn replica_ids(&self) -> Vec<String> {
        self.replicas.read().iter().map(|r| r.id.clone()).collect()
    }

    /// Marks the Executor failed (requests fail at once, naming why) or clears it.
    pub fn set_failure(&self, why: Option<String>) {
        *self.failure.write() = why;
        self.bump();
    }

    pub fn failure(&self) -> Option<String> {
        self.failure.read().clone()
    }

    /// The endpoints the replicas last reported, if any did.
    pub fn endpoints(&self) -> Option<Vec<String>> {
        self.endpoints.read().clone()
    }

    /// Whether the replicas reported an endpoint `pred` holds for; None if they reported none.
    /// (Per request: no copy of the list.)
    pub fn any_endpoint(&self, pred: impl Fn(&str) -> bool) -> Option<bool> {
        self.endpoints
            .read()
            .as_ref()
            .map(|eps| eps.iter().any(|e| pred(e)))
    }

    pub fn set_endpoints(&self, endpoints: Vec<String>) {
        *self.endpoints.write() = Some(endpoints);
    }

    /// Requests waiting for a replica now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests admitted here (waiting or in flight).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Resolves once no request is waiting or in flight, or after `at_most`: for work that
    /// should not compete with requests (an Executor may serve one call at a time).
    pub async fn quiet(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, async {
            loop {
                let quiet = self.quiet.notified();
                if self.pending() == 0 {
                    return;
                }
                quiet.await;
            }
        })
        .await;
    }

    /// The activator's stat for this Executor over the period since the last call.
    pub fn report(&self, now: Instant) -> Stat {
        self.meter.lock().report(now, "activator")
    }

    /// How long this Executor's calls took since the set was made (cumulative; diff two).
    pub fn latency(&self) -> crate::latency::LatencySnapshot {
        self.latency.snapshot()
    }

    fn attempts(&self, replicas: usize) -> usize {
        if self.retries < 0 {
            replicas.max(3)
        } else {
            self.retries as usize + 1
        }
    }

    /// Chooses a replica with a free slot, as Knative's activator does: unlimited capacity →
    /// the less loaded of two in round-robin order; containerConcurrency 1..=3 → the first with
    /// a free slot; more → round robin skipping full replicas. `skip` holds replicas that just
    /// failed for this request.
    fn pick(&self, skip: &[String]) -> Option<Arc<Replica>> {
        let cc = self.settings.read().container_concurrency;
        let reps = self.replicas.read();
        let n = reps.len();
        if n == 0 {
            return None;
        }
        let usable = |r: &Arc<Replica>| !skip.contains(&r.id) || skip.len() >= n;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let chosen = if cc == 0 {
            let cands: Vec<&Arc<Replica>> = (0..n)
                .map(|i| &reps[(start + i) % n])
                .filter(|r| usable(r))
                .take(2)
                .collect();
            match cands.as_slice() {
                [a, b, ..] => Some(if b.in_flight() < a.in_flight() {
                    *b
                } else {
                    *a
                }),
                [a] => Some(*a),
                [] => None,
            }
        } else {
            let order: Box<dyn Iterator<Item = usize>> = if cc <= 3 {
                Box::new(0..n)
            } else {
                Box::new((0..n).map(|i| (start + i) % n))
            };
            let mut found = None;
            for i in order {
                let r = &reps[i];
                if !usable(r) {
                    continue;
                }
                // Reserve the slot atomically so two requests cannot both take the last one.
                let mut cur = r.in_flight.load(Ordering::Acquire);
                let mut got = false;
                while cur < cc {
                    match r.in_flight.compare_exchange_weak(
                        cur,
                        cur + 1,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            got = true;
                            break;
                        }
                        Err(a) => cur = a,
                    }
                }
                if got {
                    found = Some(r);
                    break;
                }
            }
            return found.cloned();
        };
        chosen.map(|r| {
            r.in_flight.fetch_add(1, Ordering::AcqRel);
            r.clone()
        })
    }

    fn maybe_poke(&self) {
        let now = Instant::now();
        let mut last = self.last_poke.lock();
        // One poke per second is plenty: the autoscaler decides at once on the first.
        if last.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        *last = Some(now);
        if let Some(tx) = self.poke.lock().as_ref() {
            let _ = tx.send(self.executor.clone());
        }
    }

    /// Waits for a replica with a free slot until `deadline`.
    async fn acquire(
        &self,
        deadline: Instant,
        arrived: Instant,
        skip: &[String],
    ) -> Result<Slot<'_>, Status> {
        let mut rx = self.changed.subscribe();
        let mut counted_waiting = false;
        let result = loop {
            rx.borrow_and_update();
            if let Some(why) = self.failure.read().clone() {
                break Err(Status::unavailable(format!(
                    "Executor {} cannot serve: {why}",
                    self.executor
                )));
            }
            if let Some(replica) = self.pick(skip) {
                break Ok(Slot { set: self, replica });
            }
            if self.replica_count() == 0 {
                self.cold_since.lock().get_or_insert(arrived);
                self.maybe_poke();
            }
            if !counted_waiting {
                counted_waiting = true;
                self.waiting.fetch_add(1, Ordering::Relaxed);
                self.update_queue_metric();
            }
            tokio::select! {
                r = rx.changed() => { if r.is_err() { break Err(Status::unavailable("activator stopped")); } }
                _ = tokio::time::sleep_until(deadline) => {
                    let waited = arrived.elapsed().as_secs_f64();
                    let cold = self.replica_count() == 0;
                    break Err(Status::unavailable(format!(
                        "Executor {} {} for {waited:.1} s, past the request deadline of {:.0} s (revision_timeout)",
                        self.executor,
                        if cold { "had no ready replica (it was starting from zero)" } else { "had no free replica" },
                        self.settings.read().request_timeout.as_secs_f64(),
                    )));
                }
            }
        };
        if counted_waiting {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            self.update_queue_metric();
        }
        result
    }

    fn update_queue_metric(&self) {
        if let Some(m) = &self.metrics {
            m.waiting
                .get_or_create(&m.label(&self.executor))
                .set(self.waiting.load(Ordering::Relaxed) as i64);
        }
    }

    fn admit(&self) -> Result<Admitted<'_>, Status> {
        let s = self.settings.read();
        let capacity = s
            .queue_depth
            .saturating_add(if s.container_concurrency == 0 {
                usize::MAX / 2
            } else {
                s.container_concurrency * self.replica_count().max(1)
            });
        drop(s);
        let prev = self.pending.fetch_add(1, Ordering::AcqRel);
        if prev >= capacity {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            if let Some(m) = &self.metrics {
                m.rejected.get_or_create(&m.label(&self.executor)).inc();
            }
            return Err(Status::unavailable(format!(
                "Executor {}: queue full ({prev} requests waiting or in flight; the limit is {capacity})",
                self.executor
            )));
        }
        let now = Instant::now();
        self.meter.lock().start(now, false);
        Ok(Admitted(self, now))
    }

    /// One unary call to a replica, queued while none is ready and retried on another while the
    /// request did not reach the Executor.
    async fn call(
        &self,
        opts: CallOptions,
        path: &'static str,
        message: Bytes,
    ) -> Result<Bytes, Status> {
        let _admitted = self.admit()?;
        let arrived = Instant::now();
        let deadline = arrived + self.settings.read().request_timeout;
        let mut tried: Vec<String> = vec![];
        let mut attempt = 0;
        let last = loop {
            attempt += 1;
            let slot = self.acquire(deadline, arrived, &tried).await?;
            let call = slot
                .replica
                .channel
                .unary(path, message.clone(), &[(PROXIED_HEADER, "1")]);
            let budget = deadline.saturating_duration_since(Instant::now());
            let limit = opts.timeout.map_or(budget, |t| t.min(budget));
            let result = match tokio::time::timeout(limit, call).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "Executor {} (replica {}) did not answer within {} ms{}",
                        self.executor,
                        slot.replica.id,
                        limit.as_millis(),
                        if opts.timeout == Some(limit) {
                            " (timeout_send)"
                        } else {
                            " (revision_timeout)"
                        }
                    )));
                }
            };
            let unavailable = match result {
                Ok(answer) => return Ok(answer),
                Err(CallError::NotSent(s)) => s,
                // A draining or overloaded replica says UNAVAILABLE before it takes the request.
                Err(CallError::Answered(s)) if s.code() == Code::Unavailable => s,
                Err(CallError::Answered(s)) => return Err(s),
                // The connection broke after the request was sent (the replica died mid-call):
                // not retried, since the Executor may have processed it, but reported as the
                // Executor being unavailable rather than an opaque transport error.
                Err(CallError::Broken(s)) => {
                    return Err(Status::unavailable(format!(
                        "Executor {} (replica {}) failed while processing the request: {}",
                        self.executor,
                        slot.replica.id,
                        s.message()
                    )));
                }
            };
            tracing::debug!(executor = %self.executor, replica = %slot.replica.id, error = %unavailable.message(), "replica unavailable, trying another");
            if !tried.contains(&slot.replica.id) {
                tried.push(slot.replica.id.clone());
            }
            if attempt >= self.attempts(self.replica_count()) {
                break unavailable;
            }
        };
        let last = last.message();
        Err(Status::unavailable(format!(
            "Communication error with deployment {} after {attempt} attempts: {last}",
            self.executor
        )))
    }

    fn dry_run_while_cold(&self, req: &DataRequestProto) -> Option<DataRequestProto> {
        // A dry run must not wake an Executor at zero: it is ready in the sense that a request
        // would be served (after a cold start), so it answers for it.
        if req.exec_endpoint() != zeroflow_proto::DRY_RUN_ENDPOINT
            || self.replica_count() > 0
            || self.failure.read().is_some()
        {
            return None;
        }
        let mut resp = req.clone();
        resp.routes.push(RouteProto {
            executor: self.executor.clone(),
            ..Default::default()
        });
        Some(resp)
    }

    /// `process_single_data` on one replica, retried on another while unreachable.
    pub async fn process(
        &self,
        req: DataRequestProto,
        opts: CallOptions,
    ) -> Result<DataRequestProto, Status> {
        if let Some(r) = self.dry_run_while_cold(&req) {
            return Ok(r);
        }
        let answer = self
            .call(opts, paths::PROCESS_SINGLE_DATA, req.encode_to_vec().into())
            .await?;
        decode(&self.executor, &answer)
    }

    /// `process_data` with several requests (for `no_reduce` merges, where the Executor gets
    /// every branch's request).
    pub async fn process_list(
        &self,
        reqs: Vec<DataRequestProto>,
        opts: CallOptions,
    ) -> Result<DataRequestProto, Status> {
        let list = DataRequestListProto { requests: reqs };
        let answer = self
            .call(opts, paths::PROCESS_DATA, list.encode_to_vec().into())
            .await?;
        decode(&self.executor, &answer)
    }

    /// Asks a ready replica for its endpoints and remembers them. Never wakes a cold Executor.
    pub async fn discover(&self) -> Result<Vec<String>, Status> {
        let Some(replica) = self.pick(&[]) else {
            return Err(Status::unavailable(format!(
                "Executor {} has no ready replica to ask for its endpoints",
                self.executor
            )));
        };
        let slot = Slot { set: self, replica };
        let call = slot
            .replica
            .channel
            .unary(paths::ENDPOINT_DISCOVERY, Bytes::new(), &[]);
        let answer = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .map_err(|_| Status::deadline_exceeded("endpoint discovery took over 10 s"))?
            .map_err(|e| match e {
                CallError::NotSent(s) | CallError::Broken(s) | CallError::Answered(s) => s,
            })?;
        let eps: Vec<String> = decode::<EndpointsProto>(&self.executor, &answer)?.endpoints;
        self.set_endpoints(eps.clone());
        Ok(eps)
    }
}

/// An Executor's answer, decoded.
fn decode<M: Message + Default>(executor: &str, bytes: &[u8]) -> Result<M, Status> {
    M::decode(bytes).map_err(|e| {
        Status::internal(format!(
            "Executor {executor} answered with a message that does not decode: {e}"
        ))
    })
}

/// An admitted call, and when it arrived.
struct Admitted<'a>(&'a ReplicaSet, Instant);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.quiet.notify_waiters();
        }
        let now = Instant::now();
        self.0.meter.lock().finish(now, false);
        self.0
            .latency
            .observe(now.saturating_duration_since(self.1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroflow_proto::jina::HeaderProto;
    use zeroflow_proto::jina::jina_single_data_request_rpc_server::{
        JinaSingleDataRequestRpc, JinaSingleDataRequestRpcServer,
    };

    struct Echo;

    #[tonic::async_trait]
    impl JinaSingleDataRequestRpc for Echo {
        async fn process_single_data(
            &self,
            req: tonic::Request<DataRequestProto>,
        ) -> Result<tonic::Response<DataRequestProto>, Status> {
            assert!(
                req.metadata().contains_key(PROXIED_HEADER),
                "the activator marks its calls"
            );
            Ok(tonic::Response::new(req.into_inner()))
        }
    }

    async fn echo_server() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(JinaSingleDataRequestRpcServer::new(Echo))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        addr
    }

    fn req(id: &str) -> DataRequestProto {
        DataRequestProto {
            header: Some(HeaderProto {
                request_id: id.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn set(settings: ThrottleSettings) -> Arc<ReplicaSet> {
        Arc::new(ReplicaSet::new("enc", -1).with_settings(settings))
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_waits_for_admitted_requests_or_the_limit() {
        let rs = Arc::new(ReplicaSet::new("e", -1));
        let t0 = Instant::now();
        rs.quiet(Duration::from_secs(1)).await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "nothing pending: at once");

        let admitted = rs.admit().expect("admitted");
        let waiter = tokio::spawn({
            let rs = rs.clone();
            async move { rs.quiet(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "a request is pending");
        drop(admitted);
        waiter.await.expect("quiet");
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(300),
            "released when the last one ends"
        );

        let _busy = rs.admit().expect("admitted");
        let t1 = Instant::now();
        rs.quiet(Duration::from_secs(1)).await;
        assert_eq!(
            t1.elapsed(),
            Duration::from_secs(1),
            "gives up after the limit"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_request_pokes_at_once_and_times_out_at_the_deadline_naming_the_executor() {
        let rs = set(ThrottleSettings {
            request_timeout: Duration::from_secs(30),
            ..Default::default()
        });
        let (tx, mut pokes) = mpsc::unbounded_channel();
        rs.set_poker(tx);
        let t0 = Instant::now();
        let rs2 = rs.clone();
        let call = tokio::spawn(async move { rs2.process(req("a"), CallOptions::default()).await });
        assert_eq!(
            pokes.recv().await.as_deref(),
            Some("enc"),
            "the first cold request pokes"
        );
        assert_eq!(Instant::now(), t0, "the poke is immediate");
        assert_eq!(rs.waiting(), 1);
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            err.message().contains("Executor enc had no ready replica"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("30 s"), "{}", err.message());
        assert_eq!(Instant::now().duration_since(t0), Duration::from_secs(30));
        assert_eq!(rs.waiting(), 0);
        assert_eq!(rs.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once() {
        let rs = set(ThrottleSettings {
            queue_depth: 2,
            container_concurrency: 1,
            request_timeout: Duration::from_secs(60),
        });
        // cc 1 x max(1, 0 replicas) + queue 2 = 3 admitted; the 4th is refused.
        let mut waiting = vec![];
        for i in 0..3 {
            let rs = rs.clone();
            waiting.push(tokio::spawn(async move {
                rs.process(req(&i.to_string()), CallOptions::default())
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(rs.waiting(), 3);
        let err = rs
            .process(req("x"), CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("queue full"), "{}", err.message());
        for w in waiting {
            w.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_executor_fails_waiting_requests_with_the_reason() {
        let rs = set(ThrottleSettings::default());
        let rs2 = rs.clone();
        let call = tokio::spawn(async move { rs2.process(req("a"), CallOptions::default()).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        rs.set_failure(Some(
            "it crashed 5 times: ImportError: no module named foo".into(),
        ));
        let err = call.await.unwrap().unwrap_err();
        assert!(
            err.message()
                .contains("Executor enc cannot serve: it crashed 5 times"),
            "{}",
            err.message()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dry_run_does_not_wake_a_cold_executor() {
        let rs = set(ThrottleSettings::default());
        let (tx, mut pokes) = mpsc::unbounded_channel();
        rs.set_poker(tx);
        let mut r = req("d");
        r.header.as_mut().unwrap().exec_endpoint = Some(zeroflow_proto::DRY_RUN_ENDPOINT.into());
        let resp = rs.process(r, CallOptions::default()).await.unwrap();
        assert_eq!(resp.routes.last().unwrap().executor, "enc");
        assert!(pokes.try_recv().is_err(), "no poke for a dry run");
    }

    // Real time: the call goes over loopback to a real gRPC server once the replica appears.
    #[tokio::test]
    async fn queued_requests_are_released_the_moment_a_replica_is_added() {
        let rs = set(ThrottleSettings::default());
        let mut calls = vec![];
        for i in 0..20 {
            let rs = rs.clone();
            calls.push(tokio::spawn(async move {
                rs.process(req(&format!("r{i}")), CallOptions::default())
                    .await
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while rs.waiting() < 20 {
            assert!(Instant::now() < deadline, "requests did not queue");
            tokio::task::yield_now().await;
        }
        let addr = echo_server().await;
        rs.add_replica("enc-0", &addr).unwrap();
        for (i, c) in calls.into_iter().enumerate() {
            let resp = c.await.unwrap().expect("served after the replica came");
            assert_eq!(resp.header.unwrap().request_id, format!("r{i}"));
        }
        assert_eq!(rs.pending(), 0);
    }

    #[tokio::test]
    async fn an_unreachable_replica_is_retried_on_another() {
        let rs = set(ThrottleSettings::default());
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let live = echo_server().await;
        rs.set_replicas(vec![("dead".into(), dead), ("live".into(), live)])
            .unwrap();
        for i in 0..6 {
            let resp = rs
                .process(req(&i.to_string()), CallOptions::default())
                .await;
            assert!(resp.is_ok(), "request {i}: {resp:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn containerconcurrency_bounds_requests_per_replica() {
        let rs = set(ThrottleSettings {
            container_concurrency: 2,
            ..Default::default()
        });
        rs.set_replicas(vec![
            ("a".into(), "127.0.0.1:1".into()),
            ("b".into(), "127.0.0.1:2".into()),
        ])
        .unwrap();
        let picks: Vec<_> = (0..4).map(|_| rs.pick(&[]).expect("slot")).collect();
        assert_eq!(picks.iter().filter(|r| r.id == "a").count(), 2);
        assert_eq!(picks.iter().filter(|r| r.id == "b").count(), 2);
        assert!(rs.pick(&[]).is_none(), "every slot is taken");
    }
}
