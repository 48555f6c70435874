//! The gateway's HTTP face, as the real `jina.Client(host='http://...')` uses it: `GET /`,
//! `/dry_run`, `/status`, `/openapi.json` (one `POST /{endpoint}` per Executor endpoint, which the
//! client reads before its first post) and `POST /{endpoint}` with JSON documents.

use crate::{Gateway, docs};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::Arc;
use tonic::Code;
use zeroflow_proto::jina::{DataRequestProto, HeaderProto};

pub fn router(gw: Arc<Gateway>) -> axum::Router {
    router_without(gw, &[])
}

/// The routes but those in `skip` (the websocket face serves `/` and `/dry_run` itself).
pub(crate) fn router_without(gw: Arc<Gateway>, skip: &[&str]) -> axum::Router {
    let routes: [(&str, axum::routing::MethodRouter<Arc<Gateway>>); 5] = [
        ("/", get(|| async { Json(json!({})) })),
        ("/dry_run", get(dry_run)),
        ("/status", get(status)),
        ("/openapi.json", get(openapi)),
        ("/{*endpoint}", post(post_endpoint)),
    ];
    routes
        .into_iter()
        .filter(|(path, _)| !skip.contains(path))
        .fold(axum::Router::new(), |r, (path, route)| r.route(path, route))
        .with_state(gw)
}

pub(crate) async fn dry_run(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    let s = gw.dry_run().await;
    let exception = s.exception.as_ref().map(
        |e| json!({"name": e.name, "args": e.args, "stacks": e.stacks, "executor": e.executor}),
    );
    Json(json!({"code": s.code, "description": s.description, "exception": exception}))
}

async fn status() -> Json<Value> {
    Json(json!({"jina": crate::grpc::info_map(), "envs": {}}))
}

async fn openapi(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    let mut paths = serde_json::Map::new();
    for ep in gw.endpoints() {
        let ep = if ep.starts_with('/') {
            ep
        } else {
            format!("/{ep}")
        };
        paths.insert(
            ep.clone(),
            json!({"post": {
                "summary": format!("Endpoint {ep}"),
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {"oneOf": [{"type": "array", "items": {"type": "object"}}, {"type": "object"}]},
                        "parameters": {"type": "object"},
                        "header": {"type": "object"}
                    }
                }}}},
                "responses": {
                    "200": {"description": "The documents after the Flow"},
                    "422": {"description": "The body is not a valid request"},
                    "500": {"description": "An Executor raised"},
                    "503": {"description": "An Executor could not be reached"}
                }
            }}),
        );
    }
    Json(json!({
        "openapi": "3.0.2",
        "info": {"title": gw.title.clone(), "description": gw.description.clone(), "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    }))
}

fn unprocessable(msg: impl Into<String>) -> Response {
    let msg = msg.into();
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"detail": [{"loc": ["body"], "msg": msg.clone(), "type": "value_error"}], "error": msg})),
    )
        .into_response()
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

async fn post_endpoint(
    State(gw): State<Arc<Gateway>>,
    Path(endpoint): Path<String>,
    body: Bytes,
) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return unprocessable(format!("the body is not valid JSON: {e}")),
    };
    if !body.is_object() {
        return unprocessable("the body must be a JSON object with a `data` field");
    }
    let Some(data) = body.get("data") else {
        return unprocessable("field `data` is required: a list of documents or one document");
    };
    let docs = match docs::json_to_docs(data) {
        Ok(d) => d,
        Err(e) => return unprocessable(format!("field `data`: {e}")),
    };
    let parameters = match body.get("parameters") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(json_to_struct(m)),
        Some(other) => {
            return unprocessable(format!("field `parameters` must be an object, got {other}"));
        }
    };
    let header = body.get("header").cloned().unwrap_or(Value::Null);
    let request_id = str_field(&header, "request_id")
        .or_else(|| str_field(&header, "requestId"))
        .map(str::to_string)
        .unwrap_or_default();
    let target = str_field(&header, "target_executor")
        .or_else(|| str_field(&body, "target_executor"))
        .map(str::to_string);
    let exec_endpoint = if endpoint == "post" {
        str_field(&body, "exec_endpoint")
            .or_else(|| str_field(&header, "exec_endpoint"))
            .unwrap_or("/")
            .to_string()
    } else {
        format!("/{endpoint}")
    };
    let req = DataRequestProto {
        header: Some(HeaderProto {
            request_id,
            exec_endpoint: Some(exec_endpoint),
            target_executor: target,
            ..Default::default()
        }),
        parameters,
        routes: vec![],
        data: docs::encode_docs(docs).into(),
    };
    match gw.process(req).await {
        Ok(resp) => {
            let header = resp.header.clone().unwrap_or_default();
            if let Some(st) = header.status.as_ref().filter(|s| s.is_error()) {
                let name = st.exception.as_ref().map(|e| e.name.as_str()).unwrap_or("");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"detail": st.description, "exception": name})),
                )
                    .into_response();
            }
            let data = match docs::decode_docs(&resp.data) {
                Ok(d) => docs::docs_to_json(&d),
                Err(e) => {
                    return (
                        StatusCode::BAD_GATEWAY,
                        Json(json!({"detail": format!("an Executor answered with {e}")})),
                    )
                        .into_response();
                }
            };
            let params = resp
                .parameters
                .as_ref()
                .map(struct_to_json)
                .unwrap_or(json!({}));
            Json(json!({
                "data": data,
                "parameters": params,
                "header": {
                    "requestId": header.request_id,
                    "execEndpoint": header.exec_endpoint,
                    "targetExecutor": header.target_executor.unwrap_or_default(),
                },
            }))
            .into_response()
        }
        Err(status) => {
            let code = match status.code() {
                Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                Code::InvalidArgument => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (
                code,
                Json(json!({"detail": status.message(), "error": status.message()})),
            )
                .into_response()
        }
    }
}

pub fn json_to_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Value::Object(m) => Kind::StructValue(json_to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn json_to_struct(m: &serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

pub fn value_to_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

pub fn struct_to_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}
