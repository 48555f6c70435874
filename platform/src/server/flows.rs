//! One running Flow: its Executors' runtime (any [`Runtime`]), its gateway on its listeners, and
//! its autoscaler. The same wiring serves `jc flow serve` (one Flow, in the foreground), `jc
//! server` (many Flows, started, stopped and restarted by the control plane) and the gateway of
//! a Flow on Kubernetes (built with [`RunningFlow::with_runtime`]).

use super::store::Kind;
use crate::local::{LocalOptions, LocalRuntime, RuntimeError};
use crate::runtime::Runtime;
use crate::scaling::ScalingHandle;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use zeroflow_autoscaler::AutoscalerConfig;
use zeroflow_gateway::Gateway;
use zeroflow_spec::{Executor, Flow, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the Flow's graph is invalid: {0}")]
    Graph(String),
    #[error("the gateway cannot listen on {addr} for {protocol}: {message}")]
    Bind {
        addr: String,
        protocol: String,
        message: String,
    },
    #[error("{0}")]
    NotReady(String),
    #[error("the gateway failed: {0}")]
    Gateway(String),
}

/// What the activator does for an Executor while it has no ready replica.
pub fn throttle_settings(e: &Executor) -> zeroflow_activator::ThrottleSettings {
    zeroflow_activator::ThrottleSettings {
        request_timeout: e.jcloud.autoscale.revision_timeout,
        ..Default::default()
    }
}

/// Replicas an Executor starts with: `autoscale.min` when autoscaled (0 = serverless: it
/// counts as settled at zero), else its fixed `replicas`.
pub fn initial_replicas(e: &Executor) -> u32 {
    if e.jcloud.autoscale_set {
        e.jcloud.autoscale.min
    } else {
        e.replicas
    }
}

pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Grpc => "grpc",
        Protocol::Http => "http",
        Protocol::Websocket => "websocket",
    }
}

/// The names of `flow`'s listeners in `status.endpoints`, in order: the first `gateway` (a
/// Deployment's: its Executor's name), the others `<that>-<protocol>`. Every backend names
/// them so, as clients look them up by these names.
pub fn endpoint_names(kind: Kind, flow: &Flow) -> Vec<String> {
    let base = match kind {
        Kind::Flow => "gateway".to_string(),
        Kind::Deployment => flow
            .executors
            .first()
            .map(|e| e.name.clone())
            .unwrap_or_else(|| "gateway".into()),
    };
    flow.gateway
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                base.clone()
            } else {
                format!("{base}-{}", protocol_name(l.protocol))
            }
        })
        .collect()
}

/// URL scheme a client uses for a listener.
pub fn scheme(p: Protocol) -> &'static str {
    match p {
        Protocol::Grpc => "grpc",
        Protocol::Http => "http",
        Protocol::Websocket => "ws",
    }
}

/// Binds one listener per gateway protocol of `flow`. `ports[i]` (when given and non-zero) is
/// used for listener `i`, else the Flow's `with.port`, else any free port. A given port that is
/// in use is tried again until `patience` has passed: a Flow coming back on its recorded port
/// after a restart may find it held for a moment (the old process still exiting, or an outgoing
/// connection that the kernel gave that number as its local port).
pub async fn bind_listeners(
    flow: &Flow,
    host: &str,
    ports: &[u16],
    use_flow_ports: bool,
    patience: Duration,
) -> Result<Vec<(Protocol, TcpListener)>, FlowError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut out = vec![];
    for (i, l) in flow.gateway.listeners.iter().enumerate() {
        let port = ports
            .get(i)
            .copied()
            .filter(|p| *p != 0)
            .or(if use_flow_ports { l.port } else { None })
            .unwrap_or(0);
        let mut backoff = Duration::from_millis(50);
        let sock = loop {
            match TcpListener::bind((host, port)).await {
                Ok(s) => break s,
                Err(e)
                    if port != 0
                        && e.kind() == std::io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() + backoff < deadline =>
                {
                    tracing::info!(port, "the gateway's port is in use; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    return Err(FlowError::Bind {
                        addr: format!("{host}:{port}"),
                        protocol: protocol_name(l.protocol).into(),
                        message: e.to_string(),
                    });
                }
            }
        };
        out.push((l.protocol, sock));
    }
    Ok(out)
}

struct Serving {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), FlowError>>,
}

/// How long a [`RunningFlow`] waits for its runtime.
#[derive(Debug, Clone, Copy)]
pub struct FlowTimeouts {
    /// For every Executor's initial replicas to be ready ([`RunningFlow::start`]).
    pub startup: Duration,
    /// For the runtime to stop what it started ([`RunningFlow::stop`]).
    pub shutdown: Duration,
}

impl FlowTimeouts {
    /// The local runtime's: a replica has `drain_timeout` to drain, and its shim a little more
    /// to stop the Executor after it.
    pub fn local(opts: &LocalOptions) -> Self {
        FlowTimeouts {
            startup: opts.startup_timeout,
            shutdown: opts.drain_timeout + Duration::from_secs(15),
        }
    }
}

/// A Flow whose runtime and gateway exist; [`RunningFlow::start`] brings up its replicas and
/// [`RunningFlow::serve`] opens its gateway.
pub struct RunningFlow {
    pub flow: Flow,
    pub runtime: Arc<dyn Runtime>,
    pub gateway: Arc<Gateway>,
    /// Activator and autoscaler metrics (the gateway keeps its own).
    pub registry: Arc<Mutex<Registry>>,
    pub timeouts: FlowTimeouts,
    /// The autoscaler's changes of scale, with their reasons (for the dashboard).
    pub decisions: crate::scaling::DecisionFeed,
    scaling: Option<ScalingHandle>,
    serving: Option<Serving>,
}

impl RunningFlow {
    /// On the local runtime: checks that every Executor can run here and builds the runtime and
    /// the gateway. Nothing starts yet.
    pub fn new(flow: &Flow, opts: LocalOptions) -> Result<Self, FlowError> {
        let mut registry = Registry::default();
        let metrics = zeroflow_activator::ActivatorMetrics::new(&mut registry);
        let timeouts = FlowTimeouts::local(&opts);
        let runtime = Arc::new(LocalRuntime::new(
            flow,
            opts,
            throttle_settings,
            Some(metrics),
        )?);
        Self::with_runtime(flow, runtime, registry, timeouts)
    }

    /// On any runtime: builds the gateway over `runtime`'s replica sets. `registry` holds the
    /// activator metrics the runtime's replica sets report to (the autoscaler's join them), so
    /// the runtime is built with them first:
    ///
    /// ```ignore
    /// let mut registry = Registry::default();
    /// let metrics = zeroflow_activator::ActivatorMetrics::new(&mut registry);
    /// let runtime = Arc::new(MyRuntime::new(&flow, throttle_settings, Some(metrics))?);
    /// let rf = RunningFlow::with_runtime(&flow, runtime, registry, timeouts)?;
    /// ```
    pub fn with_runtime(
        flow: &Flow,
        runtime: Arc<dyn Runtime>,
        registry: Registry,
        timeouts: FlowTimeouts,
    ) -> Result<Self, FlowError> {
        let gateway = Arc::new(
            Gateway::new(flow, runtime.shards()).map_err(|e| FlowError::Graph(e.to_string()))?,
        );
        Ok(RunningFlow {
            flow: flow.clone(),
            runtime,
            gateway,
            registry: Arc::new(Mutex::new(registry)),
            timeouts,
            decisions: crate::scaling::decision_feed(),
            scaling: None,
            serving: None,
        })
    }

    /// Starts every Executor at its initial replica count and waits until they are ready (or
    /// one fails: the error carries its output). Then learns the Executors' endpoints.
    pub async fn start(&self) -> Result<(), FlowError> {
        self.runtime.start(&initial_replicas);
        self.runtime
            .wait_settled(self.timeouts.startup)
            .await
            .map_err(FlowError::NotReady)?;
        let external: Vec<&str> = self
            .flow
            .executors
            .iter()
            .filter(|e| e.external.is_some())
            .map(|e| e.name.as_str())
            .collect();
        self.gateway.discover_endpoints(&external).await;
        Ok(())
    }

    /// Hands the autoscaled Executors to the autoscaler.
    pub fn start_autoscaling(&mut self, cfg: AutoscalerConfig) {
        let handle = crate::scaling::start(
            &self.flow,
            self.runtime.clone(),
            cfg,
            &mut self.registry.lock(),
            self.decisions.clone(),
        );
        self.scaling = Some(handle);
    }

    /// Serves the gateway on `listeners` in the background until [`RunningFlow::stop`].
    pub fn serve(&mut self, listeners: Vec<(Protocol, TcpListener)>) {
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let gw = self.gateway.clone();
        let task = tokio::spawn(async move {
            zeroflow_gateway::serve(gw, listeners, async {
                let _ = rx.await;
            })
            .await
            .map_err(|e| FlowError::Gateway(format!("{e:#}")))
        });
        self.serving = Some(Serving { stop, task });
    }

    /// Serves the gateway in the foreground until `shutdown` resolves.
    pub async fn serve_until(
        &self,
        listeners: Vec<(Protocol, TcpListener)>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), FlowError> {
        zeroflow_gateway::serve(self.gateway.clone(), listeners, shutdown)
            .await
            .map_err(|e| FlowError::Gateway(format!("{e:#}")))
    }

    /// Serves every gateway protocol on one listener in the foreground until `shutdown`.
    pub async fn serve_one_port_until(
        &self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), FlowError> {
        zeroflow_gateway::serve_one_port(self.gateway.clone(), listener, shutdown)
            .await
            .map_err(|e| FlowError::Gateway(format!("{e:#}")))
    }

    /// Metrics text: the gateway's, then the activator's and the autoscaler's.
    pub fn metrics_text(&self) -> String {
        let mut out = self.gateway.metrics_text();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock());
        out
    }

    /// Closes the gateway (its listeners are released), stops scaling, drains every replica.
    pub async fn stop(mut self) {
        if let Some(s) = self.serving.take() {
            let _ = s.stop.send(());
            let _ = s.task.await;
        }
        drop(self.scaling.take());
        self.runtime.shutdown(self.timeouts.shutdown).await;
    }
}
