//! The OpenAPI 3 description of the REST API, served at `/openapi.json`. Hand-written: the
//! routes are matched by hand too (see `router`), so this is their single written contract.

use serde_json::{Value, json};

fn op(summary: &str, ok: &str, body: Option<&str>, extra: &[(&str, Value)]) -> Value {
    let mut responses = serde_json::Map::new();
    responses.insert(
        ok.into(),
        json!({"description": "success", "content": {"application/json": {}}}),
    );
    for code in ["400", "401", "404"] {
        responses.insert(
            code.into(),
            json!({"$ref": format!("#/components/responses/E{code}")}),
        );
    }
    let mut o = json!({"summary": summary, "responses": responses, "security": [{"token": []}]});
    match body {
        Some("spec") => {
            o["requestBody"] = json!({"required": true, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["spec"],
                "properties": {"spec": {"type": "string", "format": "binary", "description": "the Flow / Deployment YAML"}}}}}});
        }
        Some("executor") => {
            o["requestBody"] = json!({"required": true, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["name", "archive"],
                "properties": {"name": {"type": "string"}, "tag": {"type": "string", "default": "latest"},
                               "public": {"type": "boolean", "default": false, "description": "every user may use it; else only the pusher (another user gets 404)"},
                               "private": {"type": "boolean", "default": true, "description": "the default, as the Hub's push --private"},
                               "archive": {"type": "string", "format": "binary", "description": ".tar.gz of the Executor folder"}}}}}});
        }
        Some(schema) => {
            o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        }
        None => {}
    }
    for (k, v) in extra {
        o[*k] = v.clone();
    }
    o
}

fn p(name: &str, loc: &str, desc: &str) -> Value {
    json!({"name": name, "in": loc, "required": loc == "path", "schema": {"type": "string"}, "description": desc})
}

pub fn document() -> Value {
    let id = p(
        "id",
        "path",
        "Flow or Deployment ID, e.g. merry-magpie-82b9c0897f",
    );
    let flow = p("flow_id", "path", "Flow ID");
    let name = p("name", "path", "name");
    let list_params = json!([
        p(
            "phase",
            "query",
            "comma list of phases (Pending, Starting, Serving, Failed, Updating, Deleted, Paused); default: all but Deleted"
        ),
        p("name", "query", "substring of the name or ID"),
        p("labels", "query", "k=v pairs joined by & or ,"),
    ]);
    let replicas = json!([id, p("replicas", "query", "replica count, 0 to 100")]);
    let mut paths = serde_json::Map::new();
    for (kind, word) in [("flows", "Flow"), ("deployments", "Deployment")] {
        paths.insert(format!("/{kind}/validate"), json!({"post": op(&format!("Validate a {word} YAML; 200 with `errors` (empty when valid)"), "200", Some("spec"), &[])}));
        paths.insert(format!("/{kind}"), json!({
            "post": op(&format!("Deploy a {word}; answers the {word} (with `id`)"), "201", Some("spec"), &[]),
            "get": op(&format!("List {word}s: `{{\"{kind}\": [...]}}`"), "200", None, &[("parameters", list_params.clone())]),
        }));
        paths.insert(format!("/{kind}/{{id}}"), json!({
            "parameters": [id],
            "get": op(&format!("A {word}: id, status {{phase, endpoints, conditions, version}}, spec, CPH, error, ctime, utime"), "200", None, &[]),
            "put": op(&format!("Replace the {word}'s spec (phase Updating, then Serving)"), "202", Some("spec"), &[]),
            "delete": op(&format!("Delete the {word} (phase Deleted at once)"), "200", None, &[]),
        }));
        for verb in ["restart", "pause", "resume", "recreate"] {
            paths.insert(format!("/{kind}/{{id}}:{verb}"), json!({"parameters": [id], "put": op(&format!("{verb} the {word}"), "202", None, &[])}));
        }
    }
    paths.insert("/deployments/{id}:scale".into(), json!({"parameters": replicas, "put": op("Scale the Deployment's Executor", "202", None, &[])}));
    paths.insert("/deployments/{id}/logs".into(), json!({"parameters": [id], "get": op("Replica logs: {\"logs\": {pod: text}}", "200", None, &[])}));
    paths.insert("/flows/{id}/gateway:restart".into(), json!({"parameters": [id], "put": op("Restart the gateway (the Flow restarts on the same ports)", "202", None, &[])}));
    paths.insert("/flows/{id}/executors/{name}:restart".into(), json!({"parameters": [id, name], "put": op("Replace the Executor's replicas", "202", None, &[])}));
    paths.insert("/flows/{id}/executors/{name}:scale".into(), json!({"parameters": [id, name, p("replicas", "query", "replica count, 0 to 100")], "put": op("Scale an Executor; the stored spec's replicas are rewritten", "202", None, &[])}));
    paths.insert("/flows/{id}/gateway/logs".into(), json!({"parameters": [id], "get": op("The gateway's log (lifecycle events): {\"logs\": {pod: text}}", "200", None, &[])}));
    paths.insert("/flows/{id}/executors/{name}/logs".into(), json!({"parameters": [id, name], "get": op("Replica logs: {\"logs\": {pod: text}}", "200", None, &[])}));
    paths.insert(
        "/secrets".into(),
        json!({"post": op("Create a secret of a Flow", "201", Some("Secret"), &[])}),
    );
    paths.insert("/secrets/{flow_id}".into(), json!({"parameters": [flow], "get": op("List secrets: `secrets` and `Resources.Secrets` (values masked)", "200", None, &[])}));
    paths.insert(
        "/secrets/{flow_id}/{name}".into(),
        json!({"parameters": [flow, name],
        "get": op("A secret (values masked)", "200", None, &[]),
        "post": op("Update a secret (restart the Flow to apply it)", "201", Some("Secret"), &[]),
        "delete": op("Delete a secret", "200", None, &[])}),
    );
    paths.insert("/jobs".into(), json!({"post": op("Run a job beside a Flow (entrypoint runs as a local command)", "201", Some("Job"), &[])}));
    paths.insert("/jobs/{flow_id}".into(), json!({"parameters": [flow], "get": op("List jobs: `jobs` and `Resources.Jobs`", "200", None, &[])}));
    paths.insert("/jobs/{flow_id}/{name}".into(), json!({"parameters": [flow, name],
        "get": op("A job: name, status {startTime, completionTime, conditions[{type: Running|Complete|Failed, lastProbeTime}]}", "200", None, &[]),
        "delete": op("Delete (and stop) a job", "200", None, &[])}));
    paths.insert("/jobs/{flow_id}/{name}/logs".into(), json!({"parameters": [flow, name], "get": op("The job's output: {\"logs\": text}", "200", None, &[])}));
    paths.insert("/executors".into(), json!({"post": op("Push an Executor folder (.tar.gz) as NAME:TAG for `jinaai+docker://NAME[:TAG]`", "201", Some("executor"), &[])}));
    paths.insert("/openapi.json".into(), json!({"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3"}}}}));
    paths.insert("/healthz".into(), json!({"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "{\"status\": \"ok\"}"}}}}));
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Zeroflow control plane (jcloud-compatible)", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`<token>`, `token <token>` or `Bearer <token>`; tokens from `jc server token create NAME`"}},
            "responses": {
                "E400": {"description": "bad input", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "E401": {"description": "missing or wrong token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "E404": {"description": "not found (or another user's)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "errors": {"type": "array", "items": {"type": "string"}}}},
                "Secret": {"type": "object", "required": ["name", "id", "data"], "properties": {
                    "name": {"type": "string"}, "id": {"type": "string", "description": "Flow ID"},
                    "data": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "Job": {"type": "object", "required": ["name", "flowid", "entrypoint"], "properties": {
                    "name": {"type": "string"}, "flowid": {"type": "string"}, "image": {"type": "string", "description": "kept, not run"},
                    "entrypoint": {"type": "array", "items": {"type": "string"}},
                    "timeout": {"type": "integer", "default": 600}, "backoffLimit": {"type": "integer", "nullable": true, "default": 6},
                    "secrets": {"type": "object", "nullable": true, "additionalProperties": {"type": "object", "properties": {"name": {"type": "string"}, "key": {"type": "string"}}}}}},
            },
        },
    })
}
