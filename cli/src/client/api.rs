//! Talking to the control plane: where it is, the token, and turning every failure into a message
//! that says what to do next, with the exit code scripts can branch on.

use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// `jc server`'s default listen address (cli/src/server_cmd.rs); `JCLOUD_API` overrides it, as it
/// does for the public client.
pub const DEFAULT_API: &str = "http://127.0.0.1:8400/";

/// Exit codes (sysexits where one fits): usage errors are 2 like clap's own.
pub const EX_FAILURE: i32 = 1;
pub const EX_USAGE: i32 = 2;
pub const EX_UNAVAILABLE: i32 = 69;

/// A failure the user must act on; its `Display` is the whole message.
#[derive(Debug)]
pub enum Fail {
    /// The server said no, or the thing failed (exit 1).
    Server(String),
    /// Bad local input: a missing file, a bad literal (exit 2).
    Usage(String),
    /// No server at the address, or it stopped answering (exit 69).
    Unreachable(String),
}

impl Fail {
    pub fn code(&self) -> i32 {
        match self {
            Fail::Server(_) => EX_FAILURE,
            Fail::Usage(_) => EX_USAGE,
            Fail::Unreachable(_) => EX_UNAVAILABLE,
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Server(m) | Fail::Usage(m) | Fail::Unreachable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Fail {}

pub type Result<T> = std::result::Result<T, Fail>;

pub const NOT_LOGGED_IN: &str = "not logged in: run `jc server token create NAME` on the server \
     and export JINA_AUTH_TOKEN=<the token it prints> (or save it with `jc login --token TOKEN`)";

/// `$JINA_HUB_ROOT/config.json`, default `~/.jina/config.json`: where the public client keeps its
/// token, so one login serves both clients.
pub fn config_path() -> PathBuf {
    match std::env::var_os("JINA_HUB_ROOT") {
        Some(root) if !root.is_empty() => PathBuf::from(root).join("config.json"),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
            .join(".jina")
            .join("config.json"),
    }
}

/// The token: `JINA_AUTH_TOKEN`, else `auth_token` in the config file.
pub fn token() -> Result<String> {
    if let Ok(t) = std::env::var("JINA_AUTH_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    let path = config_path();
    let from_file = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v.get("auth_token")?.as_str().map(str::to_string))
        .filter(|t| !t.trim().is_empty());
    from_file.ok_or_else(|| Fail::Server(NOT_LOGGED_IN.into()))
}

/// The control plane's base URL, always with a trailing slash so that paths append (a path prefix
/// like `http://host/api/` is kept).
pub fn base_url() -> String {
    let raw = std::env::var("JCLOUD_API")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_API.to_string());
    let mut s = raw.trim().to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    s
}

/// Percent-encodes one path segment. IDs are opaque to the client, so a name with `/` or `?` must
/// not change the route; `:` is left alone only where we add the `:verb` suffix ourselves.
pub fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub enum Body {
    Empty,
    Json(Value),
    Multipart(reqwest::multipart::Form),
}

/// A response: its status, the raw text (printed as is by `--json`) and the parsed JSON (Null when
/// the body is not JSON).
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub text: String,
    pub json: Value,
}

pub struct Api {
    pub base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// Needs a token: every control-plane route is authenticated.
    pub fn from_env() -> Result<Api> {
        let token = token()?;
        Api::new(base_url(), token)
    }

    pub fn new(base: String, token: String) -> Result<Api> {
        // The settings are fixed, but building loads the system's CA certificates, which a
        // minimal container image may not have.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("zeroflow-jc/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                let why = std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s}"));
                Fail::Unreachable(format!(
                    "cannot make an HTTP client ({e}{why}); on a machine without CA certificates, \
                     install them (Debian: ca-certificates)"
                ))
            })?;
        Ok(Api { base, token, http })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path.trim_start_matches('/'))
    }

    /// Sends one request and returns the answer whatever its status; only transport failures are
    /// errors here. Uploads get a longer deadline than the rest.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Body,
    ) -> Result<Resp> {
        let mut url = reqwest::Url::parse(&self.url(path)).map_err(|e| {
            Fail::Usage(format!("JCLOUD_API={} is not a valid URL: {e}", self.base))
        })?;
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        let mut req = self
            .http
            .request(method.clone(), url)
            .header(reqwest::header::AUTHORIZATION, &self.token)
            .header(reqwest::header::ACCEPT, "application/json");
        let timeout = match body {
            Body::Empty => Duration::from_secs(60),
            Body::Json(v) => {
                req = req.json(&v);
                Duration::from_secs(60)
            }
            Body::Multipart(form) => {
                req = req.multipart(form);
                Duration::from_secs(600)
            }
        };
        let resp = req.timeout(timeout).send().await.map_err(|e| {
            if e.is_connect() {
                Fail::Unreachable(format!(
                    "no Zeroflow server at {}: start one with `jc server` or set JCLOUD_API",
                    self.base
                ))
            } else if e.is_timeout() {
                Fail::Unreachable(format!(
                    "the server at {} did not answer {method} /{path} within {}s",
                    self.base,
                    timeout.as_secs()
                ))
            } else {
                Fail::Unreachable(format!(
                    "talking to {} failed ({method} /{path}): {}",
                    self.base,
                    error_chain(&e)
                ))
            }
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| {
            Fail::Unreachable(format!(
                "the server at {} broke off its answer to {method} /{path}: {}",
                self.base,
                error_chain(&e)
            ))
        })?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Resp { status, text, json })
    }

    /// `send`, then any non-2xx status becomes a [`Fail`]; `not_found_hint` says how to find the
    /// right name (e.g. "check the ID with `jc flow list`").
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Body,
        not_found_hint: &str,
    ) -> Result<Resp> {
        let r = self.send(method.clone(), path, query, body).await?;
        check(&r, &format!("{method} /{path}"), not_found_hint)?;
        Ok(r)
    }

    pub async fn get(&self, path: &str, hint: &str) -> Result<Resp> {
        self.call(reqwest::Method::GET, path, &[], Body::Empty, hint)
            .await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The server's own words: `error`, else `errors`, else the raw body.
pub fn server_message(r: &Resp) -> String {
    if let Some(e) = r.json.get("error").and_then(Value::as_str) {
        return e.to_string();
    }
    if let Some(errs) = r.json.get("errors").and_then(Value::as_array)
        && !errs.is_empty()
    {
        return errs
            .iter()
            .map(|e| {
                e.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string())
            })
            .collect::<Vec<_>>()
            .join("\n  ");
    }
    let t = r.text.trim();
    if t.is_empty() {
        "(empty answer)".into()
    } else {
        t.chars().take(2000).collect()
    }
}

/// Maps a non-2xx answer to what the user should do. Unlike the public client, any 2xx counts as
/// success (it insists on exact codes) and 401 is fatal (it carries on and crashes).
pub fn check(r: &Resp, what: &str, not_found_hint: &str) -> Result<()> {
    if (200..300).contains(&r.status) {
        return Ok(());
    }
    let msg = server_message(r);
    Err(match r.status {
        401 => Fail::Server(format!(
            "the server refused the token ({msg}): run `jc server token create NAME` on the server \
             and export JINA_AUTH_TOKEN=<the token it prints>"
        )),
        403 => Fail::Server(format!("forbidden: {msg}")),
        404 if not_found_hint.is_empty() => Fail::Server(format!("{what}: {msg}")),
        404 => Fail::Server(format!("{msg}: {not_found_hint}")),
        400 | 409 | 422 => Fail::Server(format!("the server refused {what}: {msg}")),
        503 => Fail::Server(format!(
            "the server is not ready ({what}: {msg}); try again in a moment"
        )),
        s => Fail::Server(format!("{what} failed with HTTP {s}: {msg}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resp(status: u16, json: Value) -> Resp {
        Resp {
            status,
            text: json.to_string(),
            json,
        }
    }

    #[test]
    fn failures_say_what_to_do() {
        let hint = "check the ID with `jc flow list`";
        assert!(check(&resp(202, json!({})), "x", hint).is_ok());
        let e = check(
            &resp(404, json!({"error": "flow abc not found"})),
            "x",
            hint,
        )
        .unwrap_err();
        assert_eq!(e.code(), 1);
        assert_eq!(
            e.to_string(),
            "flow abc not found: check the ID with `jc flow list`"
        );
        let e = check(&resp(401, json!({"error": "bad token"})), "x", hint).unwrap_err();
        assert!(e.to_string().contains("jc server token create"), "{e}");
        let e = check(
            &resp(400, json!({"errors": ["line 3: bad", "line 4: worse"]})),
            "POST /flows",
            hint,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("line 3: bad\n  line 4: worse"),
            "{e}"
        );
        let e = check(
            &Resp {
                status: 500,
                text: "boom".into(),
                json: Value::Null,
            },
            "GET /flows",
            hint,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "GET /flows failed with HTTP 500: boom");
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(seg("merry-magpie-82b9c0897f"), "merry-magpie-82b9c0897f");
        assert_eq!(seg("a/b c:d"), "a%2Fb%20c%3Ad");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_with_a_hint() {
        // Bind then drop: the port is very likely closed when we connect.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = Api::new(format!("http://127.0.0.1:{port}/"), "t".into()).unwrap();
        let e = api.get("flows", "").await.unwrap_err();
        assert_eq!(e.code(), 69);
        assert!(e.to_string().contains("start one with `jc server`"), "{e}");
    }
}
