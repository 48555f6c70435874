//! The executor-shim wraps one Executor replica, like Knative's queue-proxy plus a supervisor:
//! it starts the Executor in its own process group, waits for gRPC health SERVING, proxies the
//! Executor's RPCs, bounds concurrency with a breaker, measures time-weighted concurrency and
//! request rate (`/stats`, `/metrics`), and drains on SIGTERM. It makes no scaling decisions.
//! On a cluster it first fetches and prepares the Executor's project ([`project`]).

pub mod child;
mod metrics;
pub mod passthrough;
pub mod project;
pub mod proxy;

use anyhow::Context as _;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tonic::Status;
use tonic_health::ServingStatus;
use zeroflow_activator::{Breaker, ConcurrencyMeter, Stat};

pub use metrics::Metrics;

/// How the shim forwards the Executor's RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProxyMode {
    /// `passthrough` when containerConcurrency is 0, else `grpc`.
    #[default]
    Auto,
    /// A gRPC server and client per request: can hold requests back (the breaker) and answers
    /// health and readiness itself.
    Grpc,
    /// HTTP/2 frames forwarded as they are and read only to count (see `passthrough`): the
    /// cheapest hop, with no breaker.
    Passthrough,
}

/// How the shim runs; `Default` holds the queue-proxy defaults, tests shorten the waits.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// Executor (deployment) name, for messages.
    pub executor: String,
    /// Replica id, for messages and stats.
    pub replica: String,
    /// The Executor command; `{port}` in an argument becomes the child's port.
    pub command: Vec<String>,
    /// The child's port; None picks a free one.
    pub child_port: Option<u16>,
    /// containerConcurrency: 0 = no limit.
    pub container_concurrency: usize,
    /// How RPCs are forwarded.
    pub proxy: ProxyMode,
    /// How often readiness is polled while the child starts.
    pub ready_poll: Duration,
    /// Give up if the child is not SERVING by then.
    pub startup_timeout: Duration,
    /// On SIGTERM: the longest to wait for in-flight requests.
    pub drain_timeout: Duration,
    /// After SIGTERM to the child's group: how long before SIGKILL.
    pub stop_grace: Duration,
    /// The local runtime's zygote (a Unix socket) to fork the command from; None, or any
    /// failure there, starts the command itself.
    pub zygote: Option<std::path::PathBuf>,
    /// A project archive to fetch and run the command in (its folder as working folder, its
    /// requirements on `PYTHONPATH`), before the Executor starts.
    pub project: Option<project::ProjectSource>,
}

impl Default for ShimConfig {
    fn default() -> Self {
        ShimConfig {
            executor: "executor".into(),
            replica: "executor-0".into(),
            command: vec![],
            child_port: None,
            container_concurrency: 0,
            proxy: ProxyMode::Auto,
            ready_poll: Duration::from_millis(50),
            startup_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
            zygote: None,
            project: None,
        }
    }
}

/// Shared state of one running shim.
pub struct State {
    pub executor: String,
    pub replica: String,
    pub breaker: Option<Breaker>,
    pub channel: tonic::transport::Channel,
    meter: Mutex<ConcurrencyMeter>,
    last_stat: Mutex<Stat>,
    draining: AtomicBool,
    ready: watch::Sender<bool>,
    idle: Notify,
    pub metrics: Metrics,
    startup_timeout: Duration,
    /// Process group of the Executor (0 until started), for CPU and memory samples.
    child_group: std::sync::atomic::AtomicI32,
    /// CPU ticks of the group at the last report.
    last_cpu_ticks: Mutex<Option<(u64, Instant)>>,
}

impl State {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Requests that arrive before the child is SERVING wait for it rather than fail.
    pub async fn wait_ready(&self) -> Result<(), Status> {
        let mut rx = self.ready.subscribe();
        let waited = tokio::time::timeout(self.startup_timeout, rx.wait_for(|r| *r)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Status::unavailable(format!(
                "Executor {} (replica {}) did not become ready",
                self.executor, self.replica
            ))),
        }
    }

    fn start(&self, proxied: bool) {
        let mut m = self.meter.lock();
        m.start(Instant::now(), proxied);
        self.metrics.in_flight.set(m.in_flight() as i64);
    }

    fn finish(&self, proxied: bool) {
        let mut m = self.meter.lock();
        m.finish(Instant::now(), proxied);
        self.metrics.in_flight.set(m.in_flight() as i64);
        if m.in_flight() == 0 {
            self.idle.notify_waiters();
        }
    }

    fn record_result<T>(&self, data: bool, r: &Result<T, Status>) {
        if data {
            let code = match r {
                Ok(_) => "OK".to_string(),
                Err(s) => format!("{:?}", s.code()),
            };
            self.metrics.count_request(&code);
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.meter.lock().in_flight()
    }

    /// The stat of the last closed period (reports run every second).
    pub fn last_stat(&self) -> Stat {
        let mut s = self.last_stat.lock().clone();
        s.in_flight = self.in_flight();
        s
    }

    /// Samples the Executor's CPU and memory off the request thread: reading /proc takes
    /// milliseconds, which a single-threaded shim must not spend between requests.
    async fn sample(&self) -> Option<(u64, u64)> {
        let group = self.child_group.load(Ordering::Relaxed);
        if group <= 0 {
            return None;
        }
        tokio::task::spawn_blocking(move || sample_group(group))
            .await
            .ok()
            .flatten()
    }

    fn close_period(&self, sample: Option<(u64, u64)>) {
        let now = Instant::now();
        let mut stat = self.meter.lock().report(now, &self.replica);
        if let Some((ticks, rss)) = sample {
            let mut last = self.last_cpu_ticks.lock();
            if let Some((t0, at)) = *last {
                let secs = now.saturating_duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    let used = ticks.saturating_sub(t0) as f64 / CLOCK_TICKS_PER_SECOND;
                    stat.cpu_percent = Some(100.0 * used / secs);
                }
            }
            *last = Some((ticks, now));
            stat.memory_mib = Some(rss as f64 / (1024.0 * 1024.0));
        }
        self.metrics.observe_stat(&stat);
        *self.last_stat.lock() = stat;
    }
}

/// The server in front of the Executor, by proxy mode.
enum Server {
    Grpc {
        stop_tx: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    },
    Passthrough(passthrough::Passthrough),
}

impl Server {
    /// Stops at once: nothing was forwarded yet.
    fn abort(self) {
        match self {
            Server::Grpc { stop_tx, task } => {
                let _ = stop_tx.send(());
                task.abort();
            }
            Server::Passthrough(p) => p.abort(),
        }
    }
}

/// Why the shim stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Drained after a shutdown request.
    Drained,
    /// The Executor exited on its own (code, stderr tail).
    ChildExited { status: String, stderr_tail: String },
    /// The Executor never became ready.
    NotReady { stderr_tail: String },
    /// Its project could not be fetched or prepared; the Executor was not started.
    ProjectFailed { message: String },
}

pub struct Shim {
    pub state: Arc<State>,
    config: ShimConfig,
    grpc: TcpListener,
    admin: TcpListener,
}

impl Shim {
    pub fn new(config: ShimConfig, grpc: TcpListener, admin: TcpListener) -> anyhow::Result<Self> {
        if config.command.is_empty() {
            anyhow::bail!("no Executor command given: pass it after `--`");
        }
        let breaker = Breaker::for_container_concurrency(config.container_concurrency)
            .context("containerConcurrency")?;
        let mut config = config;
        config.proxy = match (config.proxy, config.container_concurrency) {
            (ProxyMode::Auto, 0) => ProxyMode::Passthrough,
            (ProxyMode::Auto, _) => ProxyMode::Grpc,
            (ProxyMode::Passthrough, cc) if cc > 0 => anyhow::bail!(
                "--proxy passthrough cannot enforce --container-concurrency {cc}: it has no breaker \
                 (use --proxy grpc, or auto, which picks grpc when a limit is set)"
            ),
            (mode, _) => mode,
        };
        let child_port = match config.child_port {
            Some(p) => p,
            None => free_port()?,
        };
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{child_port}"))?
                .tcp_nodelay(true)
                .connect_lazy();
        let (ready, _) = watch::channel(false);
        let now = Instant::now();
        let state = Arc::new(State {
            executor: config.executor.clone(),
            replica: config.replica.clone(),
            breaker,
            channel,
            meter: Mutex::new(ConcurrencyMeter::new(now)),
            last_stat: Mutex::new(Stat {
                pod: config.replica.clone(),
                ..Stat::default()
            }),
            draining: AtomicBool::new(false),
            ready,
            idle: Notify::new(),
            metrics: Metrics::new(&config.executor, &config.replica),
            startup_timeout: config.startup_timeout,
            child_group: std::sync::atomic::AtomicI32::new(0),
            last_cpu_ticks: Mutex::new(None),
        });
        config.child_port = Some(child_port);
        Ok(Shim {
            state,
            config,
            grpc,
            admin,
        })
    }

    /// Runs until `shutdown` resolves (then drains) or the child exits.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<Exit> {
        let Shim {
            state,
            config,
            grpc,
            admin,
        } = self;
        let child_port = config.child_port.expect("set in new");
        let grpc_addr = grpc.local_addr()?;
        let admin_addr = admin.local_addr()?;

        let (health, health_svc) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::NotServing).await;

        let router = axum::Router::new()
            .route_service("/grpc.health.v1.Health/{*rest}", health_svc)
            .fallback_service(proxy::ProxyService {
                state: state.clone(),
            });
        let server = match config.proxy {
            ProxyMode::Passthrough => Server::Passthrough(passthrough::Passthrough::start(
                grpc,
                state.clone(),
                std::net::SocketAddr::from(([127, 0, 0, 1], child_port)),
            )),
            ProxyMode::Grpc | ProxyMode::Auto => {
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                let task = tokio::spawn(
                    tonic::transport::Server::builder()
                        .tcp_nodelay(true)
                        .add_routes(tonic::service::Routes::from(router))
                        .serve_with_incoming_shutdown(
                            // Per accepted socket (the builder's tcp_nodelay misses a passed-in
                            // listener); without it Nagle adds ~40 ms stalls to small answers.
                            tonic::transport::server::TcpIncoming::from(grpc)
                                .with_nodelay(Some(true)),
                            async {
                                let _ = stop_rx.await;
                            },
                        ),
                );
                Server::Grpc { stop_tx, task }
            }
        };
        tracing::info!(replica = %config.replica, proxy = ?config.proxy, "forwarding RPCs");
        let admin_server = tokio::spawn({
            let app = metrics::admin_router(state.clone());
            async move { axum::serve(admin, app).await }
        });
        let reporter = tokio::spawn({
            let state = state.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let sample = state.sample().await;
                    state.close_period(sample);
                }
            }
        });

        tokio::pin!(shutdown);
        // The project comes before the Executor; readiness stays false meanwhile, and the admin
        // port already answers (a probe sees "not ready", not "refused").
        let launch = match &config.project {
            None => child::Launch::default(),
            Some(src) => {
                let prepared = tokio::select! {
                    p = project::prepare(src, &config.command[0]) => p.map_err(Some),
                    _ = &mut shutdown => Err(None),
                };
                match prepared {
                    Ok(p) => child::Launch {
                        env: p
                            .deps
                            .iter()
                            .map(|d| {
                                (
                                    "PYTHONPATH".to_string(),
                                    zeroflow_artifacts::requirements::python_path(d),
                                )
                            })
                            .collect(),
                        cwd: Some(p.dir),
                    },
                    Err(e) => {
                        server.abort();
                        reporter.abort();
                        admin_server.abort();
                        return Ok(match e {
                            None => Exit::Drained,
                            Some(e) => Exit::ProjectFailed {
                                message: e.to_string(),
                            },
                        });
                    }
                }
            }
        };
        let forked = match &config.zygote {
            Some(z) => {
                match child::Child::fork_from_zygote(
                    z,
                    &config.command,
                    child_port,
                    &config.replica,
                    &launch,
                )
                .await
                {
                    Ok(c) => Some(c),
                    Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                        tracing::info!(replica = %config.replica, reason = %e, "starting the Executor directly");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(replica = %config.replica, zygote = %z.display(), error = %e, "the zygote cannot fork the Executor; starting it directly");
                        None
                    }
                }
            }
            None => None,
        };
        let via_zygote = forked.is_some();
        let mut child = match forked {
            Some(c) => c,
            None => child::Child::spawn(&config.command, child_port, &config.replica, &launch)?,
        };
        state.child_group.store(child.pid(), Ordering::Relaxed);
        tracing::info!(
            executor = %config.executor, replica = %config.replica, pid = child.pid(),
            child_port, %grpc_addr, %admin_addr, via_zygote, "started executor"
        );

        let started = Instant::now();
        let readiness = wait_child_serving(
            &state.channel,
            Some(child_port),
            config.ready_poll,
            config.startup_timeout,
        );
        let exit = tokio::select! {
            ready = readiness => {
                if ready {
                    state.ready.send_replace(true);
                    state.metrics.ready.set(1);
                    set_health(&health, ServingStatus::Serving).await;
                    tracing::info!(replica = %config.replica, startup_ms = started.elapsed().as_millis() as u64, "executor is serving");
                    // Whoever started the shim learns readiness from this line the moment it
                    // happens, instead of polling.
                    let line = zeroflow_contract::ReadyLine {
                        grpc: grpc_addr.to_string(),
                        admin: admin_addr.to_string(),
                        startup_ms: started.elapsed().as_millis() as u64,
                    };
                    println!("{line}");
                    None
                } else {
                    Some(Exit::NotReady { stderr_tail: child.tail.text() })
                }
            }
            status = child.wait() => Some(Exit::ChildExited {
                status: status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                stderr_tail: child.tail.text(),
            }),
            _ = &mut shutdown => Some(Exit::Drained),
        };

        let exit = match exit {
            Some(e) => e,
            None => tokio::select! {
                status = child.wait() => Exit::ChildExited {
                    status: status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    stderr_tail: child.tail.text(),
                },
                _ = &mut shutdown => Exit::Drained,
            },
        };

        // Whatever the reason, stop taking work first, then let in-flight requests finish.
        state.draining.store(true, Ordering::Release);
        state.metrics.draining.set(1);
        state.metrics.ready.set(0);
        set_health(&health, ServingStatus::NotServing).await;
        let drained = match server {
            Server::Passthrough(p) if exit == Exit::Drained => p.drain(config.drain_timeout).await,
            Server::Passthrough(p) => {
                p.abort();
                true
            }
            Server::Grpc { stop_tx, task } => {
                let drained = exit != Exit::Drained
                    || tokio::time::timeout(config.drain_timeout, async {
                        loop {
                            let idle = state.idle.notified();
                            if state.in_flight() == 0 {
                                break;
                            }
                            idle.await;
                        }
                    })
                    .await
                    .is_ok();
                let _ = stop_tx.send(());
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                drained
            }
        };
        if !drained {
            tracing::warn!(
                in_flight = state.in_flight(),
                "drain timeout: stopping with requests in flight"
            );
        }
        let status = child.stop(config.stop_grace).await;
        tracing::info!(replica = %config.replica, ?status, "executor stopped");
        reporter.abort();
        admin_server.abort();
        Ok(exit)
    }
}

async fn set_health(h: &tonic_health::server::HealthReporter, s: ServingStatus) {
    // jina answers health for "" and for each of its service names; so does the shim.
    for svc in [
        "",
        "jina.JinaRPC",
        "jina.JinaSingleDataRequestRPC",
        "jina.JinaDataRequestRPC",
        "jina.JinaDiscoverEndpointsRPC",
        "jina.JinaInfoRPC",
    ] {
        h.set_service_status(svc, s).await;
    }
}

/// Polls the child's gRPC health every `poll` until SERVING; false after `timeout`.
pub async fn wait_child_serving(
    channel: &tonic::transport::Channel,
    child_port: Option<u16>,
    poll: Duration,
    timeout: Duration,
) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus as S;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let deadline = Instant::now() + timeout;
    let mut client = HealthClient::new(channel.clone());
    // A Jina Executor opens its port only once `__init__` is done, so an open port means "about
    // to serve". Probing the port every 2 ms costs microseconds on loopback and shaves up to a
    // whole poll interval off every cold start; the health check confirms SERVING.
    if let Some(port) = child_port {
        let fast = Duration::from_millis(2);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(fast).await;
        }
    }
    let poll = if child_port.is_some() {
        Duration::from_millis(2).max(poll / 10)
    } else {
        poll
    };
    loop {
        let check = tokio::time::timeout(
            Duration::from_millis(100).max(poll),
            client.check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await;
        if let Ok(Ok(resp)) = check
            && resp.get_ref().status == S::Serving as i32
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll).await;
    }
}

/// Linux reports CPU time in clock ticks of 1/100 s on every platform Zeroflow runs on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks (user + system) and resident bytes of every process in a process group, from
/// /proc: the Executor may be a parent and workers (jina without `--native`).
fn sample_group(pgid: i32) -> Option<(u64, u64)> {
    let mut ticks = 0u64;
    let mut rss_pages = 0u64;
    let mut found = false;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) start at ")".
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // f[0] is state (field 3); pgrp is field 5, utime 14, stime 15, rss 24.
        if f.len() < 22 || f[2].parse::<i32>().ok() != Some(pgid) {
            continue;
        }
        found = true;
        ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        rss_pages += f[21].parse::<u64>().unwrap_or(0);
    }
    found.then_some((ticks, rss_pages * 4096))
}

fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
