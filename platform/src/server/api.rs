//! The jcloud-compatible REST API (see shared/design/jcloud-rest-api.md): one axum fallback
//! handler that routes by hand (for the `:verb` suffixes), checks the token, and answers JSON
//! with the exact status codes the public client checks. Every answer, errors included, is
//! `application/json` with an `error` key naming the problem: the client parses the body
//! before it looks at the status.

use super::control::{Controller, DeployError, SpecRejected};
use super::jobs::{JobSpec, initial_status};
use super::router::{self, Route, RouteError, Verb};
use super::store::{Desired, FlowRecord, JobRecord, Kind, Phase, SecretRecord};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body taken when archives are small: a Flow YAML, a pushed Executor's or a
/// project's archive. The limit grows with the archive limit (see [`body_limit`]).
const BODY_LIMIT: usize = 64 << 20;
/// Room for the other multipart fields (the spec) beside an archive at its size limit.
const BODY_SLACK: usize = 8 << 20;

/// The request body limit: an archive at its limit plus the spec must fit, so that an archive
/// over the limit is refused by the archive checks, naming the limit.
fn body_limit(c: &Controller) -> usize {
    let archive = usize::try_from(c.cfg.archive_limits.max_compressed_bytes).unwrap_or(usize::MAX);
    archive.saturating_add(BODY_SLACK).max(BODY_LIMIT)
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({ "error": message.into() }),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        )
    }
    fn with(mut self, key: &str, v: Value) -> Self {
        self.body[key] = v;
        self
    }
}

impl From<super::store::StoreError> for ApiError {
    fn from(e: super::store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Spec(SpecRejected::Invalid(errors)) => {
                ApiError::bad(format!("the spec is invalid: {}", errors.join("; ")))
                    .with("errors", json!(errors))
            }
            DeployError::Spec(SpecRejected::Unrunnable(why)) => {
                ApiError::bad(format!("the spec cannot run here: {why}"))
                    .with("errors", json!([why]))
            }
            DeployError::Spec(SpecRejected::NoSuchExecutor(why)) => {
                ApiError::not_found(why.clone()).with("errors", json!([why]))
            }
            DeployError::NoExecutor(_) => ApiError::not_found(e.to_string()),
            DeployError::Refused {
                too_large: true,
                message,
            } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message),
            DeployError::Refused { message, .. } => ApiError::bad(message),
            DeployError::NoArtifactStore => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, e.to_string())
            }
            DeployError::Store(e) => ApiError::internal(e),
            DeployError::Flow(e) => ApiError::internal(e),
            DeployError::Internal(e) => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

fn reply(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

type Result<T> = std::result::Result<T, ApiError>;

/// The API as an axum router over the controller.
pub fn router(ctrl: Arc<Controller>) -> axum::Router {
    let limit = body_limit(&ctrl);
    axum::Router::new()
        .fallback(dispatch)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(ctrl)
}

async fn dispatch(State(c): State<Arc<Controller>>, req: Request) -> Response {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let route = match router::route(&method, &path) {
        Ok(r) => r,
        Err(e) => {
            let status = match e {
                RouteError::NotFound(_) => StatusCode::NOT_FOUND,
                RouteError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
                RouteError::BadVerb { .. } => StatusCode::BAD_REQUEST,
            };
            return ApiError::new(status, e.to_string()).into_response();
        }
    };
    match route {
        Route::Health => return reply(StatusCode::OK, json!({"status": "ok"})),
        Route::OpenApi => return reply(StatusCode::OK, super::openapi::document()),
        // Its own token (one archive's), not a user's.
        Route::Artifact(d) => return super::artifact_route::serve(&c, &d, req.headers()).await,
        _ => {}
    }
    let user = match authenticate(&c, req.headers()) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let query = parse_query(req.uri().query());
    match handle(&c, &user, route, &query, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `Authorization: <token>` (what the public client sends), `token <token>` or
/// `Bearer <token>`: the user it names.
pub fn authenticate(c: &Controller, headers: &HeaderMap) -> Result<String> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let Some(h) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(unauthorized(
            "missing Authorization header: send `Authorization: <token>` with a token from `jc server token create NAME`",
        ));
    };
    let h = h
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not valid text"))?
        .trim();
    let token = ["bearer ", "token "]
        .iter()
        .find_map(|p| {
            (h.len() > p.len() && h[..p.len()].eq_ignore_ascii_case(p)).then(|| h[p.len()..].trim())
        })
        .unwrap_or(h);
    if token.is_empty() {
        return Err(unauthorized("the Authorization header holds no token"));
    }
    c.store
        .user_for_token(token)?
        .ok_or_else(|| unauthorized("the token is not valid (unknown or revoked); create one with `jc server token create NAME`"))
}

/// A query value: `+` is a space there, then the same %XX decoding as path segments.
fn percent_decode_query(s: &str) -> String {
    super::router::percent_decode(&s.replace('+', " "))
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode_query(k), percent_decode_query(v))
        })
        .collect()
}

fn query<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

async fn body_bytes(req: Request) -> Result<bytes::Bytes> {
    axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|e| ApiError::bad(format!("cannot read the request body: {e}")))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is over the limit of {limit} bytes"),
    )
}

fn is_multipart(req: &Request) -> bool {
    req.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// Multipart fields by name (text and bytes). A body over `limit` is a 413.
async fn multipart_fields(req: Request, limit: usize) -> Result<BTreeMap<String, bytes::Bytes>> {
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad(format!("cannot read the multipart body: {e}")))?;
    let failed = |e: axum::extract::multipart::MultipartError, what: &str| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            ApiError::bad(format!("cannot read {what}: {e}"))
        }
    };
    let mut out = BTreeMap::new();
    while let Some(f) = mp
        .next_field()
        .await
        .map_err(|e| failed(e, "the multipart body"))?
    {
        let name = f.name().unwrap_or("").to_string();
        let data = f
            .bytes()
            .await
            .map_err(|e| failed(e, &format!("multipart field {name:?}")))?;
        out.insert(name, data);
    }
    Ok(out)
}

/// The Flow YAML of a request: multipart field `spec` (the public client), a JSON
/// `{"spec": "..."}`, or the YAML as the whole body; and the project folder as a .tar.gz when
/// the multipart body has an `archive` field (our `jc flow deploy DIR`).
async fn read_upload(c: &Controller, req: Request) -> Result<(String, Option<bytes::Bytes>)> {
    let mut archive = None;
    let bytes = if is_multipart(&req) {
        let mut fields = multipart_fields(req, body_limit(c)).await?;
        archive = fields.remove("archive");
        fields.remove("spec").ok_or_else(|| {
            ApiError::bad(
                "the multipart body has no `spec` field: send the Flow YAML as field `spec`",
            )
        })?
    } else {
        let b = body_bytes(req).await?;
        match serde_json::from_slice::<Value>(&b) {
            Ok(Value::Object(m)) => match m.get("spec") {
                Some(Value::String(s)) => bytes::Bytes::from(s.clone()),
                _ => {
                    return Err(ApiError::bad(
                        "the JSON body has no string `spec` (the Flow YAML)",
                    ));
                }
            },
            _ => b,
        }
    };
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad("the spec is not UTF-8 text"))?;
    if text.trim().is_empty() {
        return Err(ApiError::bad("the spec is empty: send the Flow YAML"));
    }
    Ok((text, archive))
}

async fn read_json(req: Request) -> Result<serde_json::Map<String, Value>> {
    let b = body_bytes(req).await?;
    match serde_json::from_slice::<Value>(&b) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!("the body is not valid JSON: {e}"))),
    }
}

fn kind_word(k: Kind) -> &'static str {
    match k {
        Kind::Flow => "Flow",
        Kind::Deployment => "Deployment",
    }
}

fn get_owned(c: &Controller, user: &str, kind: Kind, id: &str) -> Result<FlowRecord> {
    c.store
        .get_flow(user, kind, id)?
        .ok_or_else(|| ApiError::not_found(format!("{} {id} not found", kind_word(kind))))
}

/// A Flow (of either kind) that a secret or job may belong to: it must exist and not be deleted.
fn owned_live(c: &Controller, user: &str, id: &str) -> Result<FlowRecord> {
    match c.store.flow_by_id(id)? {
        Some(r) if r.user == user && r.desired != Desired::Deleted => Ok(r),
        _ => Err(ApiError::not_found(format!("Flow {id} not found"))),
    }
}

fn not_deleted(rec: &FlowRecord) -> Result<()> {
    if rec.desired == Desired::Deleted {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{} {} was deleted", kind_word(rec.kind), rec.id),
        ))
    } else {
        Ok(())
    }
}

fn cph(flow: Option<&zeroflow_spec::Flow>) -> Value {
    let mut m = serde_json::Map::new();
    let mut total = 0.0;
    if let Some(f) = flow {
        let gw = f.gateway.resources.instance.credits_per_hour;
        m.insert("gateway".into(), json!(gw));
        total += gw;
        for e in &f.executors {
            let n =
                super::flows::initial_replicas(e).max(if e.jcloud.autoscale_set { 0 } else { 1 });
            let c = e.jcloud.resources.instance.credits_per_hour * f64::from(n * e.shards);
            m.insert(e.name.clone(), json!(c));
            total += c;
        }
    }
    m.insert("total".into(), json!(total));
    Value::Object(m)
}

fn flow_json(c: &Controller, rec: &FlowRecord) -> Value {
    let flow = c.load_record(rec).ok().map(|l| l.flow);
    let spec = serde_yaml_ng::from_str::<Value>(&rec.spec)
        .unwrap_or_else(|_| Value::String(rec.spec.clone()));
    let alive = rec.phase == Phase::Serving;
    let mut v = json!({
        "id": rec.id,
        "name": rec.name,
        "kind": kind_word(rec.kind),
        "status": {
            "phase": rec.phase.as_str(),
            "endpoints": c.endpoints(rec, flow.as_ref()),
            "dashboards": {},
            "conditions": [{
                "type": if rec.kind == Kind::Flow { "FlowAlive" } else { "DeploymentAlive" },
                "status": if alive { "True" } else { "False" },
                "reason": rec.phase.as_str(),
                "message": rec.error.clone().unwrap_or_default(),
                "lastTransitionTime": rec.utime,
            }],
            "version": flow.as_ref().and_then(|f| f.jcloud.version.clone()),
        },
        "spec": spec,
        "CPH": cph(flow.as_ref()),
        "error": rec.error,
        "labels": rec.labels,
        "ctime": rec.ctime,
        "utime": rec.utime,
    });
    if let Some(x) = c.executor_status(rec) {
        v["status"]["executors"] = x;
    }
    v
}

fn accepted(rec: &FlowRecord, c: &Controller) -> Response {
    let phase = c
        .store
        .flow_by_id(&rec.id)
        .ok()
        .flatten()
        .map_or(rec.phase, |r| r.phase);
    reply(
        StatusCode::ACCEPTED,
        json!({"id": rec.id, "status": {"phase": phase.as_str()}}),
    )
}

/// `labels` filter: `a=b&c=d` or `a=b,c=d`; every pair must match.
fn labels_match(filter: &str, labels: &BTreeMap<String, String>) -> bool {
    filter
        .split(['&', ','])
        .filter(|p| !p.trim().is_empty())
        .all(|p| match p.split_once('=') {
            Some((k, v)) => labels.get(k.trim()).is_some_and(|x| x == v.trim()),
            None => labels.contains_key(p.trim()),
        })
}

fn parse_replicas(q: &[(String, String)]) -> Result<u32> {
    let raw = query(q, "replicas").ok_or_else(|| {
        ApiError::bad("missing query parameter `replicas` (an integer from 0 to 100)")
    })?;
    raw.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= 100)
        .ok_or_else(|| {
            ApiError::bad(format!(
                "replicas: got {raw:?}, allowed: an integer from 0 to 100"
            ))
        })
}

fn safe_name(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "{what}: got {s:?}, allowed: 1 to 253 letters, digits, '-', '_' or '.'"
        )))
    }
}

const MASK: &str = "********";

fn secret_json(s: &SecretRecord) -> Value {
    // Values never leave the server: the keys show what a secret holds.
    let data: serde_json::Map<String, Value> =
        s.data.keys().map(|k| (k.clone(), json!(MASK))).collect();
    json!({"name": s.name, "id": s.flow_id, "flowid": s.flow_id, "data": data, "ctime": s.ctime, "utime": s.utime})
}

fn job_json(j: &JobRecord) -> Value {
    json!({
        "name": j.name,
        "flowid": j.flow_id,
        "image": j.spec.get("image").cloned().unwrap_or(Value::Null),
        "entrypoint": j.spec.get("entrypoint").cloned().unwrap_or(Value::Null),
        "timeout": j.spec.get("timeout").cloned().unwrap_or(Value::Null),
        "backoffLimit": j.spec.get("backoffLimit").cloned().unwrap_or(Value::Null),
        "status": j.status,
    })
}

fn secret_data(m: &serde_json::Map<String, Value>) -> Result<BTreeMap<String, String>> {
    let Some(Value::Object(data)) = m.get("data") else {
        return Err(ApiError::bad(
            "data: missing; allowed: an object of KEY: value",
        ));
    };
    let mut out = BTreeMap::new();
    for (k, v) in data {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(ApiError::bad(format!(
                    "data.{k}: got {other}, allowed: a string"
                )));
            }
        };
        if k.is_empty() {
            return Err(ApiError::bad("data: a key is empty"));
        }
        out.insert(k.clone(), v);
    }
    Ok(out)
}

async fn handle(
    c: &Arc<Controller>,
    user: &str,
    route: Route,
    q: &[(String, String)],
    req: Request,
) -> Result<Response> {
    Ok(match route {
        Route::Health | Route::OpenApi | Route::Artifact(_) => unreachable_route(),
        Route::Validate(_) => {
            let (yaml, archive) = read_upload(c, req).await?;
            let staged = match archive {
                Some(a) => Some(c.stage_project(a, &yaml).await?),
                None => None,
            };
            let project = staged.as_ref().map(|s| &s.project);
            let errors = match c.check_spec(user, &yaml, project).await {
                Ok(_) => vec![],
                Err(SpecRejected::Invalid(e)) => e,
                Err(SpecRejected::Unrunnable(e)) | Err(SpecRejected::NoSuchExecutor(e)) => vec![e],
            };
            // 200 even with errors: the client shows `errors` after `raise_for_status`.
            let mut body = json!({ "errors": errors });
            if !errors.is_empty() {
                body["error"] = json!(format!("the spec has {} error(s)", errors.len()));
            }
            reply(StatusCode::OK, body)
        }
        Route::Create(kind) => {
            let (yaml, archive) = read_upload(c, req).await?;
            let rec = c.deploy(user, kind, &yaml, archive).await?;
            reply(StatusCode::CREATED, flow_json(c, &rec))
        }
        Route::List(kind) => {
            let phases: Option<Vec<Phase>> = match query(q, "phase")
                .filter(|p| !p.trim().is_empty())
            {
                None => None,
                Some(p) => Some(
                    p.split(',')
                        .filter(|s| !s.trim().is_empty() && !s.trim().eq_ignore_ascii_case("all"))
                        .map(|s| {
                            Phase::parse(s).ok_or_else(|| {
                                ApiError::bad(format!(
                                    "phase: got {s:?}, allowed: a comma list of {}",
                                    Phase::ALL.map(|p| p.as_str()).join(", ")
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>>>()?,
                )
                .filter(|v: &Vec<Phase>| !v.is_empty()),
            };
            let name = query(q, "name").filter(|n| !n.is_empty());
            let labels = query(q, "labels").filter(|l| !l.is_empty());
            let items: Vec<Value> = c
                .store
                .list_flows(Some(user), Some(kind))?
                .into_iter()
                .filter(|r| match &phases {
                    Some(ps) => ps.contains(&r.phase),
                    None => r.phase != Phase::Deleted,
                })
                .filter(|r| {
                    name.is_none_or(|n| {
                        r.name.as_deref().is_some_and(|x| x.contains(n)) || r.id.contains(n)
                    })
                })
                .filter(|r| labels.is_none_or(|l| labels_match(l, &r.labels)))
                .map(|r| flow_json(c, &r))
                .collect();
            let key = match kind {
                Kind::Flow => "flows",
                Kind::Deployment => "deployments",
            };
            reply(StatusCode::OK, json!({ key: items }))
        }
        Route::Get(kind, id) => reply(
            StatusCode::OK,
            flow_json(c, &get_owned(c, user, kind, &id)?),
        ),
        Route::Update(kind, id) => {
            let rec = get_owned(c, user, kind, &id)?;
            not_deleted(&rec)?;
            let (yaml, archive) = read_upload(c, req).await?;
            c.update(&rec, &yaml, archive).await?;
            accepted(&rec, c)
        }
        Route::Delete(kind, id) => {
            let rec = get_owned(c, user, kind, &id)?;
            if rec.desired != Desired::Deleted {
                c.delete(&rec)?;
            }
            reply(
                StatusCode::OK,
                json!({"id": id, "status": {"phase": "Deleted"}}),
            )
        }
        Route::Action(kind, id, verb) => {
            let rec = get_owned(c, user, kind, &id)?;
            not_deleted(&rec)?;
            match verb {
                Verb::Restart => c.restart(&rec, Phase::Starting)?,
                Verb::Recreate => c.restart(&rec, Phase::Pending)?,
                Verb::Pause => c.pause(&rec)?,
                Verb::Resume => c.resume(&rec)?,
                Verb::Scale => {
                    let n = parse_replicas(q)?;
                    let flow = c
                        .load_record(&rec)
                        .map_err(|e| ApiError::internal(e.join("; ")))?
                        .flow;
                    let Some(e) = flow.executors.first() else {
                        return Err(ApiError::bad("this Deployment has no Executor to scale"));
                    };
                    c.scale(&rec, &e.name, n).await?;
                }
            }
            accepted(&rec, c)
        }
        Route::GatewayRestart(id) => {
            let rec = get_owned(c, user, Kind::Flow, &id)?;
            not_deleted(&rec)?;
            c.restart(&rec, Phase::Starting)?;
            accepted(&rec, c)
        }
        Route::ExecutorAction(id, name, verb) => {
            let rec = get_owned(c, user, Kind::Flow, &id)?;
            not_deleted(&rec)?;
            match verb {
                Verb::Scale => {
                    let n = parse_replicas(q)?;
                    c.scale(&rec, &name, n).await?;
                }
                _ => c.restart_executor(&rec, &name)?,
            }
            accepted(&rec, c)
        }
        Route::GatewayLogs(id) => {
            let rec = get_owned(c, user, Kind::Flow, &id)?;
            reply(StatusCode::OK, json!({"logs": c.logs(&rec, None).await}))
        }
        Route::ExecutorLogs(id, name) => {
            let rec = get_owned(c, user, Kind::Flow, &id)?;
            let flow = c.load_record(&rec).ok().map(|l| l.flow);
            if !flow.is_some_and(|f| f.executors.iter().any(|e| e.name == name)) {
                return Err(ApiError::not_found(format!(
                    "no Executor named {name:?} in Flow {id}"
                )));
            }
            reply(
                StatusCode::OK,
                json!({"logs": c.logs(&rec, Some(&name)).await}),
            )
        }
        Route::DeploymentLogs(id) => {
            let rec = get_owned(c, user, Kind::Deployment, &id)?;
            let name = c
                .load_record(&rec)
                .ok()
                .and_then(|l| l.flow.executors.first().map(|e| e.name.clone()))
                .unwrap_or_default();
            reply(
                StatusCode::OK,
                json!({"logs": c.logs(&rec, Some(&name)).await}),
            )
        }
        Route::CreateSecret => {
            let m = read_json(req).await?;
            let name = m.get("name").and_then(Value::as_str).unwrap_or("");
            safe_name("name", name)?;
            let flow_id = m
                .get("id")
                .or_else(|| m.get("flowid"))
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad("id: missing; allowed: the Flow's ID"))?;
            let rec = owned_live(c, user, flow_id)?;
            let data = secret_data(&m)?;
            if c.store.get_secret(&rec.id, name)?.is_some() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "secret {name} of Flow {flow_id} exists; update it with POST /secrets/{flow_id}/{name}"
                    ),
                ));
            }
            c.store.put_secret(user, &rec.id, name, &data)?;
            let s = c
                .store
                .get_secret(&rec.id, name)?
                .ok_or_else(|| ApiError::internal("the secret vanished"))?;
            reply(StatusCode::CREATED, secret_json(&s))
        }
        Route::ListSecrets(flow_id) => {
            let rec = owned_live(c, user, &flow_id)?;
            let items: Vec<Value> = c
                .store
                .list_secrets(&rec.id)?
                .iter()
                .map(secret_json)
                .collect();
            // Both keys: the public client looks up `Resources.Secrets` on Python >= 3.11.
            reply(
                StatusCode::OK,
                json!({"secrets": items, "Resources.Secrets": items}),
            )
        }
        Route::GetSecret(flow_id, name) => {
            let rec = owned_live(c, user, &flow_id)?;
            let s = c.store.get_secret(&rec.id, &name)?.ok_or_else(|| {
                ApiError::not_found(format!("secret {name} of Flow {flow_id} not found"))
            })?;
            reply(StatusCode::OK, secret_json(&s))
        }
        Route::UpdateSecret(flow_id, name) => {
            let rec = owned_live(c, user, &flow_id)?;
            let m = read_json(req).await?;
            let data = secret_data(&m)?;
            if c.store.get_secret(&rec.id, &name)?.is_none() {
                return Err(ApiError::not_found(format!(
                    "secret {name} of Flow {flow_id} not found"
                )));
            }
            c.store.put_secret(user, &rec.id, &name, &data)?;
            let s = c
                .store
                .get_secret(&rec.id, &name)?
                .ok_or_else(|| ApiError::internal("the secret vanished"))?;
            reply(StatusCode::CREATED, secret_json(&s))
        }
        Route::DeleteSecret(flow_id, name) => {
            let rec = owned_live(c, user, &flow_id)?;
            if !c.store.delete_secret(&rec.id, &name)? {
                return Err(ApiError::not_found(format!(
                    "secret {name} of Flow {flow_id} not found"
                )));
            }
            reply(
                StatusCode::OK,
                json!({"name": name, "id": flow_id, "deleted": true}),
            )
        }
        Route::CreateJob => {
            let m = read_json(req).await?;
            create_job(c, user, m)?
        }
        Route::ListJobs(flow_id) => {
            let rec = owned_live(c, user, &flow_id)?;
            let items: Vec<Value> = c
                .store
                .list_jobs(Some(&rec.id))?
                .iter()
                .map(job_json)
                .collect();
            reply(
                StatusCode::OK,
                json!({"jobs": items, "Resources.Jobs": items}),
            )
        }
        Route::GetJob(flow_id, name) => {
            let rec = owned_live(c, user, &flow_id)?;
            let j = c.store.get_job(&rec.id, &name)?.ok_or_else(|| {
                ApiError::not_found(format!("job {name} of Flow {flow_id} not found"))
            })?;
            reply(StatusCode::OK, job_json(&j))
        }
        Route::JobLogs(flow_id, name) => {
            let rec = owned_live(c, user, &flow_id)?;
            let j = c.store.get_job(&rec.id, &name)?.ok_or_else(|| {
                ApiError::not_found(format!("job {name} of Flow {flow_id} not found"))
            })?;
            let logs = c.jobs.live_logs(&rec.id, &name).unwrap_or(j.logs);
            reply(StatusCode::OK, json!({"logs": logs}))
        }
        Route::DeleteJob(flow_id, name) => {
            let rec = owned_live(c, user, &flow_id)?;
            c.jobs.cancel(&rec.id, &name);
            if !c.store.delete_job(&rec.id, &name)? {
                return Err(ApiError::not_found(format!(
                    "job {name} of Flow {flow_id} not found"
                )));
            }
            reply(
                StatusCode::OK,
                json!({"name": name, "flowid": flow_id, "deleted": true}),
            )
        }
        Route::PushExecutor => push_executor(c, user, req).await?,
    })
}

fn unreachable_route() -> Response {
    ApiError::internal("route handled before authentication").into_response()
}

fn create_job(
    c: &Arc<Controller>,
    user: &str,
    m: serde_json::Map<String, Value>,
) -> Result<Response> {
    let name = m.get("name").and_then(Value::as_str).unwrap_or("");
    safe_name("name", name)?;
    let flow_id = m
        .get("flowid")
        .or_else(|| m.get("id"))
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("flowid: missing; allowed: the Flow's ID"))?;
    let rec = owned_live(c, user, flow_id)?;
    let entrypoint: Vec<String> = match m.get("entrypoint") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(ApiError::bad(format!(
                    "entrypoint: got {other} in the list, allowed: strings"
                ))),
            })
            .collect::<Result<_>>()?,
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => vec![],
    };
    if entrypoint.is_empty() {
        return Err(ApiError::bad(
            "entrypoint: missing or empty; allowed: a non-empty list of strings (the command)",
        ));
    }
    let timeout = match m.get("timeout") {
        None | Some(Value::Null) => 600,
        Some(v) => v
            .as_u64()
            .filter(|t| (1..=86_400).contains(t))
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "timeout: got {v}, allowed: seconds from 1 to 86400"
                ))
            })?,
    };
    let backoff_limit = match m.get("backoffLimit") {
        // Kubernetes' default.
        None | Some(Value::Null) => 6,
        Some(v) => v.as_u64().filter(|t| *t <= 100).ok_or_else(|| {
            ApiError::bad(format!(
                "backoffLimit: got {v}, allowed: an integer from 0 to 100"
            ))
        })? as u32,
    };
    let mut env = BTreeMap::new();
    match m.get("secrets") {
        None | Some(Value::Null) => {}
        Some(Value::Object(s)) => {
            for (var, r) in s {
                let (Some(sname), Some(key)) = (
                    r.get("name").and_then(Value::as_str),
                    r.get("key").and_then(Value::as_str),
                ) else {
                    return Err(ApiError::bad(format!(
                        "secrets.{var}: allowed: {{\"name\": SECRET, \"key\": KEY}}"
                    )));
                };
                let secret = c.store.get_secret(&rec.id, sname)?.ok_or_else(|| {
                    ApiError::bad(format!(
                        "secrets.{var}: secret {sname} of Flow {flow_id} does not exist"
                    ))
                })?;
                let v = secret.data.get(key).ok_or_else(|| {
                    ApiError::bad(format!("secrets.{var}: secret {sname} has no key {key}"))
                })?;
                env.insert(var.clone(), v.clone());
            }
        }
        Some(other) => {
            return Err(ApiError::bad(format!(
                "secrets: got {other}, allowed: an object ENV: {{name, key}}"
            )));
        }
    }
    let spec_json = json!({
        "name": name,
        "flowid": flow_id,
        "image": m.get("image").cloned().unwrap_or(Value::Null),
        "entrypoint": entrypoint,
        "timeout": timeout,
        "backoffLimit": backoff_limit,
        "secrets": m.get("secrets").cloned().unwrap_or(Value::Null),
    });
    let record = JobRecord {
        flow_id: rec.id.clone(),
        name: name.to_string(),
        spec: spec_json,
        status: initial_status(),
        logs: String::new(),
    };
    if !c.store.insert_job(user, &record)? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {name} of Flow {flow_id} exists; remove it first"),
        ));
    }
    let dir = c.cfg.data_dir.join("flows").join(&rec.id);
    let _ = std::fs::create_dir_all(&dir);
    c.jobs.start(
        c.store.clone(),
        JobSpec {
            name: name.to_string(),
            flow_id: rec.id.clone(),
            image: m
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            entrypoint,
            timeout: Duration::from_secs(timeout),
            backoff_limit,
            env,
        },
        dir,
    );
    Ok(reply(StatusCode::CREATED, job_json(&record)))
}

/// `POST /executors`: multipart `name`, optional `tag` (default `latest`), `archive` (the
/// Executor folder as .tar.gz), optional `public` (`true`: every user may use it; else it is
/// private to the pusher) or, as the Hub's push takes it, `private`.
async fn push_executor(c: &Arc<Controller>, user: &str, req: Request) -> Result<Response> {
    if !is_multipart(&req) {
        return Err(ApiError::bad(
            "send multipart/form-data with fields `name`, `tag` (optional) and `archive` (a .tar.gz of the Executor folder)",
        ));
    }
    let mut fields = multipart_fields(req, body_limit(c)).await?;
    let text = |f: Option<bytes::Bytes>| f.map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let name = text(fields.remove("name")).unwrap_or_default();
    safe_name("name", &name)?;
    let tag = text(fields.remove("tag"))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "latest".into());
    safe_name("tag", &tag)?;
    let visibility = push_visibility(
        text(fields.remove("public")),
        text(fields.remove("private")),
    )?;
    let archive = fields.remove("archive").ok_or_else(|| {
        ApiError::bad(
            "archive: missing; allowed: a .tar.gz of the Executor folder (with config.yml)",
        )
    })?;
    let Some(registry) = &c.registry else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "this server has no artifact store to push Executors to",
        ));
    };
    use zeroflow_artifacts::registry::RegistryError;
    match registry
        .push(user, &name, Some(&tag), visibility, archive)
        .await
    {
        Ok(rec) => {
            c.store.record_executor(user, &rec.name, &rec.tag)?;
            let mut v = serde_json::to_value(&rec).unwrap_or_default();
            v["uses"] = json!(format!("jinaai+docker://{user}/{}:{}", rec.name, rec.tag));
            Ok(reply(StatusCode::CREATED, v))
        }
        Err(e @ RegistryError::Store(_)) | Err(e @ RegistryError::Cache { .. }) => {
            Err(ApiError::internal(e))
        }
        Err(e) => Err(ApiError::bad(e.to_string())),
    }
}

/// The `public` / `private` fields of a push: private unless `public` is true; both true is a
/// contradiction, refused.
fn push_visibility(
    public: Option<String>,
    private: Option<String>,
) -> Result<zeroflow_artifacts::registry::Visibility> {
    use zeroflow_artifacts::registry::Visibility;
    let flag = |field: &str, v: Option<String>| -> Result<bool> {
        match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("false") | Some("0") | Some("no") => Ok(false),
            Some("true") | Some("1") | Some("yes") => Ok(true),
            Some(other) => Err(ApiError::bad(format!(
                "{field}: got {other:?}, allowed: true or false"
            ))),
        }
    };
    match (flag("public", public)?, flag("private", private)?) {
        (true, true) => Err(ApiError::bad(
            "public and private are both true: push with one of them",
        )),
        (true, false) => Ok(Visibility::Public),
        _ => Ok(Visibility::Private),
    }
}
