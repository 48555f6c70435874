//! Maps a request's method and path to a [`Route`]. Done by hand, not by axum's router, because
//! the jcloud API puts Google-style custom verbs inside the last path segment
//! (`/flows/ID:pause`): a `{id}` pattern would capture `ID:pause` as the id.

use super::store::Kind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    Restart,
    Pause,
    Resume,
    Recreate,
    Scale,
}

impl Verb {
    fn parse(s: &str) -> Option<Verb> {
        Some(match s {
            "restart" => Verb::Restart,
            "pause" => Verb::Pause,
            "resume" => Verb::Resume,
            "recreate" => Verb::Recreate,
            "scale" => Verb::Scale,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    OpenApi,
    Validate(Kind),
    Create(Kind),
    List(Kind),
    Get(Kind, String),
    Update(Kind, String),
    Delete(Kind, String),
    /// `:restart`, `:pause`, `:resume`, `:recreate`, and (deployments) `:scale`.
    Action(Kind, String, Verb),
    GatewayRestart(String),
    /// `/flows/{id}/executors/{name}:restart|:scale`.
    ExecutorAction(String, String, Verb),
    GatewayLogs(String),
    ExecutorLogs(String, String),
    DeploymentLogs(String),
    CreateSecret,
    ListSecrets(String),
    GetSecret(String, String),
    UpdateSecret(String, String),
    DeleteSecret(String, String),
    CreateJob,
    ListJobs(String),
    GetJob(String, String),
    JobLogs(String, String),
    DeleteJob(String, String),
    PushExecutor,
    /// `GET /v1/artifacts/{digest}`: a project archive for a shim (see `artifact_route`).
    Artifact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    NotFound(String),
    MethodNotAllowed { path: String, method: String },
    BadVerb { path: String, verb: String },
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::NotFound(p) => write!(f, "no such API route: {p} (see /openapi.json)"),
            RouteError::MethodNotAllowed { path, method } => {
                write!(f, "{method} is not allowed on {path} (see /openapi.json)")
            }
            RouteError::BadVerb { path, verb } => write!(
                f,
                "unknown action :{verb} in {path}; allowed here: {}",
                if path.contains("/executors/") {
                    ":restart, :scale"
                } else if path.contains("/gateway") {
                    ":restart"
                } else if path.starts_with("/deployments") {
                    ":restart, :pause, :resume, :recreate, :scale"
                } else {
                    ":restart, :pause, :resume, :recreate"
                }
            ),
        }
    }
}

/// `%XX` decoding of one path segment (invalid sequences are kept as written).
pub(crate) fn percent_decode(s: &str) -> String {
    zeroflow_proto::percent_decode(s.as_bytes())
}

/// Routes `method` + `path` (no query string).
pub fn route(method: &str, path: &str) -> Result<Route, RouteError> {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    // Before the custom verbs: a digest's `sha256:` is not one.
    if let [v1, artifacts, digest] = segs.as_slice()
        && v1 == "v1"
        && artifacts == "artifacts"
    {
        return match method {
            "GET" => Ok(Route::Artifact(digest.clone())),
            _ => Err(RouteError::MethodNotAllowed {
                path: path.to_string(),
                method: method.to_string(),
            }),
        };
    }
    // The custom verb rides on the last segment.
    let (segs, verb): (Vec<&str>, Option<&str>) = {
        let mut v: Vec<&str> = segs.iter().map(String::as_str).collect();
        let mut verb = None;
        if let Some(last) = v.last_mut()
            && let Some((head, tail)) = last.split_once(':')
        {
            *last = head;
            verb = Some(tail);
        }
        (v, verb)
    };
    let nf = || RouteError::NotFound(path.to_string());
    let bad_method = || RouteError::MethodNotAllowed {
        path: path.to_string(),
        method: method.to_string(),
    };
    let verb = match verb {
        None => None,
        Some(v) => Some(Verb::parse(v).ok_or_else(|| RouteError::BadVerb {
            path: path.to_string(),
            verb: v.to_string(),
        })?),
    };
    let m = method;
    let kind = |s: &str| match s {
        "flows" => Some(Kind::Flow),
        "deployments" => Some(Kind::Deployment),
        _ => None,
    };
    let s = |i: usize| segs[i].to_string();
    let r = match (segs.as_slice(), verb) {
        ([], None) | (["healthz"], None) => match m {
            "GET" => Route::Health,
            _ => return Err(bad_method()),
        },
        (["openapi.json"], None) => match m {
            "GET" => Route::OpenApi,
            _ => return Err(bad_method()),
        },
        ([k, "validate"], None) if kind(k).is_some() => match m {
            "POST" => Route::Validate(kind(k).unwrap_or(Kind::Flow)),
            _ => return Err(bad_method()),
        },
        ([k], None) if kind(k).is_some() => {
            let k = kind(k).unwrap_or(Kind::Flow);
            match m {
                "POST" => Route::Create(k),
                "GET" => Route::List(k),
                _ => return Err(bad_method()),
            }
        }
        ([k, _], None) if kind(k).is_some() => {
            let k = kind(k).unwrap_or(Kind::Flow);
            match m {
                "GET" => Route::Get(k, s(1)),
                "PUT" => Route::Update(k, s(1)),
                "DELETE" => Route::Delete(k, s(1)),
                _ => return Err(bad_method()),
            }
        }
        ([k, _], Some(v)) if kind(k).is_some() => {
            let k = kind(k).unwrap_or(Kind::Flow);
            if v == Verb::Scale && k == Kind::Flow {
                return Err(RouteError::BadVerb {
                    path: path.to_string(),
                    verb: "scale".into(),
                });
            }
            match m {
                "PUT" => Route::Action(k, s(1), v),
                _ => return Err(bad_method()),
            }
        }
        (["flows", _, "gateway"], Some(v)) => match (m, v) {
            ("PUT", Verb::Restart) => Route::GatewayRestart(s(1)),
            ("PUT", v) => {
                return Err(RouteError::BadVerb {
                    path: path.to_string(),
                    verb: format!("{v:?}").to_lowercase(),
                });
            }
            _ => return Err(bad_method()),
        },
        (["flows", _, "executors", _], Some(v)) => match (m, v) {
            ("PUT", v @ (Verb::Restart | Verb::Scale)) => Route::ExecutorAction(s(1), s(3), v),
            ("PUT", v) => {
                return Err(RouteError::BadVerb {
                    path: path.to_string(),
                    verb: format!("{v:?}").to_lowercase(),
                });
            }
            _ => return Err(bad_method()),
        },
        (["flows", _, "gateway", "logs"], None) => match m {
            "GET" => Route::GatewayLogs(s(1)),
            _ => return Err(bad_method()),
        },
        (["flows", _, "executors", _, "logs"], None) => match m {
            "GET" => Route::ExecutorLogs(s(1), s(3)),
            _ => return Err(bad_method()),
        },
        (["deployments", _, "logs"], None) => match m {
            "GET" => Route::DeploymentLogs(s(1)),
            _ => return Err(bad_method()),
        },
        (["secrets"], None) => match m {
            "POST" => Route::CreateSecret,
            _ => return Err(bad_method()),
        },
        (["secrets", _], None) => match m {
            "GET" => Route::ListSecrets(s(1)),
            _ => return Err(bad_method()),
        },
        (["secrets", _, _], None) => match m {
            "GET" => Route::GetSecret(s(1), s(2)),
            "POST" | "PUT" => Route::UpdateSecret(s(1), s(2)),
            "DELETE" => Route::DeleteSecret(s(1), s(2)),
            _ => return Err(bad_method()),
        },
        (["jobs"], None) => match m {
            "POST" => Route::CreateJob,
            _ => return Err(bad_method()),
        },
        (["jobs", _], None) => match m {
            "GET" => Route::ListJobs(s(1)),
            _ => return Err(bad_method()),
        },
        (["jobs", _, _], None) => match m {
            "GET" => Route::GetJob(s(1), s(2)),
            "DELETE" => Route::DeleteJob(s(1), s(2)),
            _ => return Err(bad_method()),
        },
        (["jobs", _, _, "logs"], None) => match m {
            "GET" => Route::JobLogs(s(1), s(2)),
            _ => return Err(bad_method()),
        },
        (["executors"], None) => match m {
            "POST" => Route::PushExecutor,
            _ => return Err(bad_method()),
        },
        _ => return Err(nf()),
    };
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(m: &str, p: &str) -> Route {
        route(m, p).unwrap_or_else(|e| panic!("{m} {p}: {e}"))
    }

    #[test]
    fn verbs_are_split_off_the_last_segment() {
        let id = "merry-magpie-82b9c0897f".to_string();
        assert_eq!(
            ok("PUT", &format!("/flows/{id}:pause")),
            Route::Action(Kind::Flow, id.clone(), Verb::Pause)
        );
        assert_eq!(
            ok("PUT", &format!("/flows/{id}:resume")),
            Route::Action(Kind::Flow, id.clone(), Verb::Resume)
        );
        assert_eq!(
            ok("PUT", &format!("/flows/{id}:restart")),
            Route::Action(Kind::Flow, id.clone(), Verb::Restart)
        );
        assert_eq!(
            ok("PUT", &format!("/flows/{id}:recreate")),
            Route::Action(Kind::Flow, id.clone(), Verb::Recreate)
        );
        assert_eq!(
            ok("PUT", &format!("/flows/{id}/gateway:restart")),
            Route::GatewayRestart(id.clone())
        );
        assert_eq!(
            ok("PUT", &format!("/flows/{id}/executors/exec1:scale")),
            Route::ExecutorAction(id.clone(), "exec1".into(), Verb::Scale)
        );
        assert_eq!(
            ok("PUT", &format!("/flows/{id}/executors/exec1%3Arestart")),
            Route::ExecutorAction(id.clone(), "exec1".into(), Verb::Restart)
        );
        assert_eq!(
            ok("PUT", &format!("/deployments/{id}:scale")),
            Route::Action(Kind::Deployment, id.clone(), Verb::Scale)
        );
        // Without a verb the same path is the resource itself.
        assert_eq!(
            ok("PUT", &format!("/flows/{id}")),
            Route::Update(Kind::Flow, id.clone())
        );
        assert_eq!(
            ok("DELETE", &format!("/flows/{id}/")),
            Route::Delete(Kind::Flow, id)
        );
    }

    #[test]
    fn collections_and_children() {
        assert_eq!(ok("POST", "/flows/validate"), Route::Validate(Kind::Flow));
        assert_eq!(
            ok("POST", "/deployments/validate"),
            Route::Validate(Kind::Deployment)
        );
        assert_eq!(ok("GET", "/flows"), Route::List(Kind::Flow));
        assert_eq!(ok("POST", "//flows"), Route::Create(Kind::Flow));
        assert_eq!(
            ok("GET", "/flows/f/gateway/logs"),
            Route::GatewayLogs("f".into())
        );
        assert_eq!(
            ok("GET", "/flows/f/executors/e/logs"),
            Route::ExecutorLogs("f".into(), "e".into())
        );
        assert_eq!(
            ok("GET", "/deployments/d/logs"),
            Route::DeploymentLogs("d".into())
        );
        assert_eq!(ok("POST", "/secrets"), Route::CreateSecret);
        assert_eq!(ok("GET", "/secrets/f"), Route::ListSecrets("f".into()));
        assert_eq!(
            ok("POST", "/secrets/f/s"),
            Route::UpdateSecret("f".into(), "s".into())
        );
        assert_eq!(
            ok("DELETE", "/secrets/f/s"),
            Route::DeleteSecret("f".into(), "s".into())
        );
        assert_eq!(
            ok("GET", "/jobs/f/j/logs"),
            Route::JobLogs("f".into(), "j".into())
        );
        assert_eq!(ok("POST", "/executors"), Route::PushExecutor);
        assert_eq!(ok("GET", "/openapi.json"), Route::OpenApi);
        assert_eq!(
            ok("GET", "/v1/artifacts/sha256:ab12"),
            Route::Artifact("sha256:ab12".into())
        );
        assert!(matches!(
            route("PUT", "/v1/artifacts/sha256:ab12"),
            Err(RouteError::MethodNotAllowed { .. })
        ));
    }

    #[test]
    fn bad_routes_say_what_is_wrong() {
        assert!(matches!(
            route("GET", "/nope"),
            Err(RouteError::NotFound(_))
        ));
        assert!(matches!(
            route("PATCH", "/flows/x"),
            Err(RouteError::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            route("GET", "/flows/x:pause"),
            Err(RouteError::MethodNotAllowed { .. })
        ));
        let e = route("PUT", "/flows/x:explode").unwrap_err();
        assert!(
            e.to_string().contains(":explode") && e.to_string().contains(":pause"),
            "{e}"
        );
        assert!(matches!(
            route("PUT", "/flows/x:scale"),
            Err(RouteError::BadVerb { .. })
        ));
        assert!(matches!(
            route("PUT", "/flows/x/gateway:pause"),
            Err(RouteError::BadVerb { .. })
        ));
    }
}
