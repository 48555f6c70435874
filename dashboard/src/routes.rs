//! The dashboard's HTTP side: the embedded page and its assets, and the small read API the page
//! uses (`/ui/api/...`: the Flows, one Flow with its graph, and its live feed as Server-Sent
//! Events). On `jc server` every read needs the user's token in the Authorization header (as the
//! REST API does) and shows only that user's Flows; the page's actions call the REST API itself.
//! On `jc flow serve` there is one Flow and no sign-in, and the only action is scale, answered
//! here on the REST API's path. It must not change a Flow by any other way.

use crate::hub::{History, Hub, Live};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use zeroflow_platform::runtime::Runtime;
use zeroflow_platform::server::control::Controller;
use zeroflow_platform::server::store::{Desired, FlowRecord, Kind, Phase};
use zeroflow_spec::Flow;

/// One Executor in the Flow's graph.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutorInfo {
    pub name: String,
    /// Executors (or `gateway`) it follows; several make a merge, a shared one a branch.
    pub needs: Vec<String>,
    pub shards: u32,
    /// Fixed replicas (without autoscale).
    pub replicas: u32,
    /// `{min, max, metric, target}` when it is autoscaled.
    pub autoscale: Option<Value>,
    pub external: bool,
}

/// A Flow as the list and its page show it.
#[derive(Debug, Clone, Serialize)]
pub struct FlowSummary {
    pub id: String,
    pub name: Option<String>,
    /// `flow` or `deployment`: which REST paths act on it.
    pub kind: &'static str,
    pub phase: String,
    pub error: Option<String>,
    pub endpoints: BTreeMap<String, String>,
    /// ISO 8601, UTC.
    pub created: String,
    pub executors: usize,
    /// Executors with no replica asked for and none ready; None when not running here.
    pub at_zero: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowDetail {
    #[serde(flatten)]
    pub summary: FlowSummary,
    pub graph: Vec<ExecutorInfo>,
    /// What the page may offer: on `jc flow serve` only `scale`.
    pub actions: Vec<&'static str>,
    /// Said beside the actions.
    pub note: Option<String>,
}

pub fn graph(flow: &Flow) -> Vec<ExecutorInfo> {
    flow.executors
        .iter()
        .map(|e| ExecutorInfo {
            name: e.name.clone(),
            needs: e.needs.clone(),
            shards: e.shards,
            replicas: e.replicas,
            autoscale: (e.jcloud.autoscale_set && e.external.is_none()).then(|| {
                let a = &e.jcloud.autoscale;
                json!({"min": a.min, "max": a.max, "metric": a.metric, "target": a.target})
            }),
            external: e.external.is_some(),
        })
        .collect()
}

/// `jc flow serve`'s one Flow.
pub struct LocalFlow {
    pub id: String,
    pub name: String,
    pub flow: Flow,
    /// Protocol -> URL, as printed.
    pub endpoints: BTreeMap<String, String>,
    pub runtime: Arc<dyn Runtime>,
    pub created: String,
}

enum Mode {
    Server(Arc<Controller>),
    Local(Box<LocalFlow>),
}

/// Why a read is refused, answered as the REST API answers.
enum Refused {
    Api(zeroflow_platform::server::api::ApiError),
    Status(StatusCode, String),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Api(e) => e.into_response(),
            Refused::Status(s, m) => error(s, m),
        }
    }
}

#[derive(Clone)]
struct Pages {
    hub: Arc<Hub>,
    mode: Arc<Mode>,
}

/// An answer with a JSON body `{"error": ...}`, as the REST API answers.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

fn not_found(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("Flow {id} not found"))
}

fn routes(pages: Pages) -> Router {
    let mut r = Router::new()
        .route("/", get(root))
        .route("/ui/assets/{*path}", get(asset))
        .route("/ui/api/config", get(config))
        .route("/ui/api/flows", get(list))
        .route("/ui/api/flows/{id}", get(detail))
        .route("/ui/api/flows/{id}/events", get(events));
    if matches!(*pages.mode, Mode::Local(_)) {
        r = r.route("/flows/{id}/executors/{action}", put(local_scale));
    }
    r.with_state(pages)
}

/// The dashboard of `jc server`: watches every Flow the controller runs here (from before
/// the first is restored) and serves the pages beside the REST API.
pub fn for_server(ctrl: &Arc<Controller>) -> Router {
    let hub = Hub::new(Default::default());
    spawn_server_sync(hub.clone(), Arc::downgrade(ctrl));
    routes(Pages {
        hub,
        mode: Arc::new(Mode::Server(ctrl.clone())),
    })
}

/// The dashboard of `jc flow serve`, watching its one Flow; serve it on a port of its own.
pub fn for_local(
    flow: LocalFlow,
    decisions: Option<&zeroflow_platform::scaling::DecisionFeed>,
) -> Router {
    let hub = Hub::new(Default::default());
    hub.watch(&flow.id, &flow.flow, flow.runtime.clone(), decisions);
    // It holds the hub weakly: it ends when the router (and so the hub) is dropped.
    hub.spawn_sampler();
    routes(Pages {
        hub,
        mode: Arc::new(Mode::Local(Box::new(flow))),
    })
}

/// Each second, watches the runtimes the controller has (a new Flow, or one restarted); every
/// ten, forgets removed Flows. Ends with the controller.
fn spawn_server_sync(hub: Arc<Hub>, ctrl: std::sync::Weak<Controller>) {
    let sampler = hub.spawn_sampler();
    tokio::spawn(async move {
        let _sampler = AbortOnDrop(sampler);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut n: u64 = 0;
        loop {
            every.tick().await;
            let Some(c) = ctrl.upgrade() else { return };
            for fr in c.runtimes() {
                if hub.is_watched(&fr.id, &fr.runtime) {
                    continue;
                }
                let Ok(Some(rec)) = c.store.flow_by_id(&fr.id) else {
                    continue;
                };
                let Ok(loaded) = c.load_record(&rec) else {
                    continue;
                };
                hub.watch(&fr.id, &loaded.flow, fr.runtime, fr.decisions.as_ref());
            }
            n += 1;
            if n.is_multiple_of(10) {
                let live: std::collections::HashSet<String> = c
                    .store
                    .list_flows(None, None)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| r.desired != Desired::Deleted)
                    .map(|r| r.id)
                    .collect();
                for id in hub.ids() {
                    if !live.contains(&id) {
                        hub.forget(&id);
                    }
                }
            }
        }
    });
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// A browser gets the page; a program asking `/` for JSON gets the health answer the API gave
/// there before.
async fn root(headers: HeaderMap) -> Response {
    if !wants_html(&headers) {
        return (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response();
    }
    let mut r = crate::assets::index();
    // Only this origin: the page loads nothing from elsewhere and talks only to this server.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    r
}

async fn asset(Path(path): Path<String>) -> Response {
    crate::assets::file(&format!("assets/{path}"))
        .unwrap_or_else(|| error(StatusCode::NOT_FOUND, format!("no asset {path}")))
}

async fn config(State(p): State<Pages>) -> Response {
    let (mode, name) = match &*p.mode {
        Mode::Server(_) => ("server", None),
        Mode::Local(f) => ("local", Some(f.name.clone())),
    };
    axum::Json(json!({
        "mode": mode,
        "name": name,
        "built": crate::assets::built(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

impl Pages {
    /// The signed-in user (server), or nobody needed (local).
    fn user(&self, headers: &HeaderMap) -> Result<Option<String>, Refused> {
        match &*self.mode {
            Mode::Local(_) => Ok(None),
            Mode::Server(c) => zeroflow_platform::server::api::authenticate(c, headers)
                .map(Some)
                .map_err(Refused::Api),
        }
    }

    /// Executors run here with no replica asked for and none ready, read from the runtime now
    /// (not from the last sample: a Flow started a moment ago counts too).
    fn at_zero(runtime: Option<&Arc<dyn Runtime>>, flow: Option<&Flow>) -> Option<usize> {
        let (rt, flow) = (runtime?, flow?);
        Some(
            flow.executors
                .iter()
                .filter(|e| e.external.is_none())
                .filter(|e| rt.desired(&e.name) == 0 && rt.ready_replicas(&e.name) == 0)
                .count(),
        )
    }

    fn summary(
        &self,
        c: &Controller,
        rec: &FlowRecord,
        flow: Option<&Flow>,
        runtime: Option<&Arc<dyn Runtime>>,
    ) -> FlowSummary {
        let endpoints = c
            .endpoints(rec, flow)
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
            .collect();
        let running = matches!(rec.phase, Phase::Serving | Phase::Updating);
        FlowSummary {
            id: rec.id.clone(),
            name: rec
                .name
                .clone()
                .or_else(|| flow.and_then(|f| f.jcloud.name.clone())),
            kind: rec.kind.as_str(),
            phase: rec.phase.as_str().to_string(),
            error: rec.error.clone(),
            endpoints,
            created: rec.ctime.clone(),
            executors: flow.map_or(0, |f| f.executors.len()),
            at_zero: running.then(|| Self::at_zero(runtime, flow)).flatten(),
        }
    }

    fn local_summary(&self, f: &LocalFlow) -> FlowSummary {
        FlowSummary {
            id: f.id.clone(),
            name: Some(f.name.clone()),
            kind: "flow",
            phase: "Serving".into(),
            error: None,
            endpoints: f.endpoints.clone(),
            created: f.created.clone(),
            executors: f.flow.executors.len(),
            at_zero: Self::at_zero(Some(&f.runtime), Some(&f.flow)),
        }
    }

    /// The user's Flow `id` (another user's, or a removed one, is not found).
    fn owned(&self, c: &Controller, user: &str, id: &str) -> Result<FlowRecord, Refused> {
        match c.store.flow_by_id(id) {
            Ok(Some(r)) if r.user == user && r.desired != Desired::Deleted => Ok(r),
            Ok(_) => Err(Refused::Status(
                StatusCode::NOT_FOUND,
                format!("Flow {id} not found"),
            )),
            Err(e) => Err(Refused::Status(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            )),
        }
    }

    /// The phase (and error) of Flow `id` now, for the live feed.
    fn phase(&self, id: &str) -> Option<(String, Option<String>)> {
        match &*self.mode {
            Mode::Local(_) => None,
            Mode::Server(c) => c
                .store
                .flow_by_id(id)
                .ok()
                .flatten()
                .map(|r| (r.phase.as_str().to_string(), r.error)),
        }
    }
}

async fn list(State(p): State<Pages>, headers: HeaderMap) -> Response {
    let user = match p.user(&headers) {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let flows: Vec<FlowSummary> = match (&*p.mode, user) {
        (Mode::Local(f), _) => vec![p.local_summary(f)],
        (Mode::Server(c), Some(user)) => {
            let recs = match c.store.list_flows(Some(&user), None) {
                Ok(r) => r,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            let runtimes: std::collections::HashMap<String, Arc<dyn Runtime>> = c
                .runtimes()
                .into_iter()
                .map(|r| (r.id, r.runtime))
                .collect();
            recs.iter()
                .filter(|r| r.desired != Desired::Deleted)
                .map(|r| {
                    let flow = c.load_record(r).ok().map(|l| l.flow);
                    p.summary(c, r, flow.as_ref(), runtimes.get(&r.id))
                })
                .collect()
        }
        (Mode::Server(_), None) => vec![],
    };
    axum::Json(json!({"flows": flows})).into_response()
}

async fn detail(State(p): State<Pages>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let user = match p.user(&headers) {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let d = match (&*p.mode, user) {
        (Mode::Local(f), _) => {
            if f.id != id {
                return not_found(&id);
            }
            FlowDetail {
                summary: p.local_summary(f),
                graph: graph(&f.flow),
                actions: vec!["scale"],
                note: Some(
                    "This is jc flow serve: the Flow runs in that process, so only scaling applies here. Stop it with Ctrl-C; pause, restart and remove are for Flows on jc server."
                        .into(),
                ),
            }
        }
        (Mode::Server(c), Some(user)) => {
            let rec = match p.owned(c, &user, &id) {
                Ok(r) => r,
                Err(r) => return r.into_response(),
            };
            let flow = c.load_record(&rec).ok().map(|l| l.flow);
            let actions = vec!["scale", "pause", "resume", "restart", "remove"];
            FlowDetail {
                summary: {
                    let rt = c.runtimes().into_iter().find(|r| r.id == rec.id);
                    p.summary(c, &rec, flow.as_ref(), rt.as_ref().map(|r| &r.runtime))
                },
                graph: flow.as_ref().map(graph).unwrap_or_default(),
                actions,
                note: (rec.kind == Kind::Deployment)
                    .then(|| "A Deployment: one Executor behind its own endpoint.".to_string()),
            }
        }
        (Mode::Server(_), None) => return not_found(&id),
    };
    axum::Json(d).into_response()
}

fn sse_event(ev: &Live) -> Event {
    Event::default()
        .event(ev.name())
        .data(serde_json::to_string(ev).unwrap_or_else(|_| "{}".into()))
}

fn history_event(h: &History, live: bool) -> Event {
    let mut v = serde_json::to_value(h).unwrap_or_else(|_| json!({}));
    v["live"] = json!(live);
    Event::default().event("history").data(v.to_string())
}

/// The Flow's live feed: first a `history` event (the rings, and the replicas' recent output),
/// then `samples` each second, `event`, `cold_start`, `decision`, `log`, and `flow` when its
/// phase changes. A Flow that does not run here gets an empty history, and the stream ends
/// after a few seconds so the page asks again (and sees it once it runs).
async fn events(State(p): State<Pages>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let user = match p.user(&headers) {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    match (&*p.mode, &user) {
        (Mode::Local(f), _) if f.id != id => return not_found(&id),
        (Mode::Server(c), Some(user)) => {
            if let Err(r) = p.owned(c, user, &id) {
                return r.into_response();
            }
        }
        (Mode::Server(_), None) => return not_found(&id),
        _ => {}
    }
    let (tx, rx) = mpsc::channel::<Event>(64);
    let subscribed = p.hub.subscribe(&id).await;
    tokio::spawn(async move {
        let mut phase = p.phase(&id);
        if let Some((ph, err)) = &phase {
            let _ = tx
                .send(
                    Event::default()
                        .event("flow")
                        .data(json!({"phase": ph, "error": err}).to_string()),
                )
                .await;
        }
        let Some((history, mut live)) = subscribed else {
            let empty = History {
                t: p.hub.now_ms(),
                window_ms: p.hub.limits().window.as_millis() as u64,
                executors: BTreeMap::new(),
            };
            let _ = tx.send(history_event(&empty, false)).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            return;
        };
        if tx.send(history_event(&history, true)).await.is_err() {
            return;
        }
        drop(history);
        let mut every = tokio::time::interval(Duration::from_secs(2));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                r = live.recv() => match r {
                    Ok(ev) => {
                        if tx.send(sse_event(&ev)).await.is_err() {
                            return;
                        }
                    }
                    // Missed events, or the Flow's runtime was replaced: the page reconnects
                    // and loads the history again.
                    Err(_) => return,
                },
                _ = every.tick() => {
                    let now = p.phase(&id);
                    if now != phase {
                        if let Some((ph, err)) = &now {
                            let ev = Event::default()
                                .event("flow")
                                .data(json!({"phase": ph, "error": err}).to_string());
                            if tx.send(ev).await.is_err() {
                                return;
                            }
                        }
                        phase = now;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok::<_, Infallible>,
    );
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies must pass each event on at once.
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

#[derive(serde::Deserialize)]
struct ScaleQuery {
    replicas: Option<String>,
}

/// `PUT /flows/{id}/executors/{name}:scale?replicas=N` on `jc flow serve`: the REST API's
/// path and answers, for the one thing that applies to a Flow served here.
async fn local_scale(
    State(p): State<Pages>,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<ScaleQuery>,
) -> Response {
    let Mode::Local(f) = &*p.mode else {
        return not_found(&id);
    };
    if f.id != id {
        return not_found(&id);
    }
    let Some((name, verb)) = action.rsplit_once(':') else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("expected executors/NAME:scale, got executors/{action}"),
        );
    };
    if verb != "scale" {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "jc flow serve can only :scale an Executor here, not :{verb} (that is jc server's)"
            ),
        );
    }
    let Some(e) = f.flow.executors.iter().find(|e| e.name == name) else {
        let names: Vec<&str> = f.flow.executors.iter().map(|e| e.name.as_str()).collect();
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no Executor named {name:?} in this Flow (it has: {})",
                names.join(", ")
            ),
        );
    };
    if e.external.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("Executor {name} runs elsewhere (external): it is not scaled here"),
        );
    }
    let raw = q.replicas.unwrap_or_default();
    let Some(n) = raw.trim().parse::<u32>().ok().filter(|n| *n <= 100) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("replicas: got {raw:?}, allowed: an integer from 0 to 100"),
        );
    };
    f.runtime.scale(name, n);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"id": id, "status": {"phase": "Serving"}})),
    )
        .into_response()
}

/// Serves `jc flow serve`'s dashboard on loopback `port` (0: any free one) in the background;
/// returns the address it listens on. Loopback only: it has no sign-in.
pub async fn serve_local(
    flow: LocalFlow,
    decisions: Option<&zeroflow_platform::scaling::DecisionFeed>,
    port: u16,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let app = for_local(flow, decisions);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the dashboard stopped");
        }
    });
    Ok(addr)
}
