//! Getting a deployed project onto the node before its Executor starts: on a cluster the
//! Executor's pod runs a generic runtime image, so the shim fetches the project archive from the
//! control plane's artifact route (`GET URL` with `Authorization: Bearer $ZEROFLOW_ARTIFACT_TOKEN`),
//! checks its SHA-256 against the digest it was given, unpacks it with the artifacts crate's safe
//! unpacker into `CACHE/projects/<hex>/`, and installs its `requirements.txt` files into
//! `CACHE/deps/<key>/` (see [`zeroflow_artifacts::requirements::deps_key`]). Both are done once
//! per node: a marker written last says a folder is complete, and a lock file keeps two shims
//! starting at once on one node from doing the work twice.
//!
//! This module prepares a folder and an environment; it does not start the Executor, and it never
//! logs the token.

use bytes::{Bytes, BytesMut};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use zeroflow_artifacts::archive::{self, ArchiveError, Limits};
use zeroflow_artifacts::digest::Sha256Digest;
use zeroflow_artifacts::requirements::{self, Installed, RequirementsError};

/// The bearer token sent with the archive request (a Kubernetes Secret puts it there). Read from
/// the environment only, so that it never shows in a process list, and removed from the
/// Executor's environment.
pub const ARTIFACT_TOKEN_ENV: &str = "ZEROFLOW_ARTIFACT_TOKEN";
/// The cache folder when `--project-cache` is not given.
pub const PROJECT_CACHE_ENV: &str = "ZEROFLOW_PROJECT_CACHE";
/// The cache folder when neither the flag nor the variable name one (a hostPath or emptyDir
/// volume on a cluster).
pub const DEFAULT_CACHE: &str = "/var/cache/zeroflow";

/// Written beside `CACHE/projects/<hex>/` once it is complete.
const COMPLETE: &str = ".complete";
/// Redirects followed (same host only).
const MAX_REDIRECTS: usize = 5;
/// One attempt's wait for the response headers; the body then has the rest of the budget.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Bytes of an error answer kept for the message.
const ERROR_BODY: usize = 4096;

/// Where a project comes from and how to prepare it.
#[derive(Clone)]
pub struct ProjectSource {
    pub url: String,
    pub digest: Sha256Digest,
    pub token: Option<String>,
    /// The node's cache (holds `projects/` and `deps/`).
    pub cache: PathBuf,
    /// Everything the download may take, retries included: long enough for a control plane
    /// that restarts.
    pub fetch_timeout: Duration,
    /// The longest a `pip install` may take.
    pub install_timeout: Duration,
    pub limits: Limits,
}

impl std::fmt::Debug for ProjectSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // By hand: the token must not reach a log through `{:?}`.
        f.debug_struct("ProjectSource")
            .field("url", &self.url)
            .field("digest", &self.digest)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// A project ready to run an Executor in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The unpacked project: the Executor's working folder.
    pub dir: PathBuf,
    /// The installed requirements, when there were any (put first on `PYTHONPATH`).
    pub deps: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("--project-url {url:?} is not usable: {why}")]
    BadUrl { url: String, why: String },
    #[error(
        "cannot fetch the project archive from {url} within {timeout:?}: {why}. Is the control \
         plane running and reachable from this pod?"
    )]
    Unreachable {
        url: String,
        timeout: Duration,
        why: String,
    },
    #[error(
        "the artifact store refused the project archive at {url} (HTTP {status}): {message}{hint}"
    )]
    Refused {
        url: String,
        status: u16,
        message: String,
        hint: &'static str,
    },
    #[error(
        "the artifact store at {url} redirected to {location}, another host: refused, so that \
         the token stays with the control plane"
    )]
    OtherHost { url: String, location: String },
    #[error(
        "the project archive at {url} is over the limit of {limit} bytes (ZEROFLOW_MAX_ARCHIVE_BYTES)"
    )]
    TooLarge { url: String, limit: u64 },
    #[error(
        "the project archive from {url} has digest {got}, but --project-digest is {want}: refusing \
         to run it (the stored project changed or was corrupted; redeploy the Flow)"
    )]
    DigestMismatch {
        url: String,
        got: Sha256Digest,
        want: Sha256Digest,
    },
    #[error("the project archive {digest} cannot be unpacked: {source}")]
    Unpack {
        digest: Sha256Digest,
        #[source]
        source: ArchiveError,
    },
    #[error(
        "the project cache {}: {message} (set --project-cache or ZEROFLOW_PROJECT_CACHE to a \
         writable folder)",
        path.display()
    )]
    Cache { path: PathBuf, message: String },
    #[error(transparent)]
    Requirements(#[from] RequirementsError),
}

fn cache_err(path: &Path, e: impl std::fmt::Display) -> ProjectError {
    ProjectError::Cache {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The cache folder: `explicit` (the flag or `ZEROFLOW_PROJECT_CACHE`), which must be writable;
/// else [`DEFAULT_CACHE`], else a folder under the temporary directory when that is not writable
/// (a shim run by hand, not as root).
pub fn cache_dir(explicit: Option<PathBuf>) -> Result<PathBuf, ProjectError> {
    if let Some(dir) = explicit {
        writable(&dir).map_err(|e| cache_err(&dir, format!("is not writable: {e}")))?;
        return Ok(dir);
    }
    let default = PathBuf::from(DEFAULT_CACHE);
    if writable(&default).is_ok() {
        return Ok(default);
    }
    let tmp = std::env::temp_dir().join("zeroflow-cache");
    writable(&tmp).map_err(|e| cache_err(&tmp, format!("is not writable: {e}")))?;
    Ok(tmp)
}

fn writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    tempfile_in(dir).map(|_| ())
}

/// Creates and removes a file in `dir`: the one reliable test that a folder is writable (mode
/// bits say nothing about read-only mounts).
fn tempfile_in(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Fetches (unless cached), checks and unpacks the project, then installs its requirements
/// with the Python that runs `program` (the Executor's command).
pub async fn prepare(src: &ProjectSource, program: &str) -> Result<Prepared, ProjectError> {
    let dir = unpacked(src).await?;
    let files = requirements::project_requirement_files(&dir);
    if files.is_empty() {
        return Ok(Prepared { dir, deps: None });
    }
    let key = requirements::deps_key(&files, &dir, &src.digest);
    let deps_root = src.cache.join("deps");
    std::fs::create_dir_all(&deps_root).map_err(|e| cache_err(&deps_root, e))?;
    let deps = deps_root.join(&key);
    let _lock = lock(&deps_root.join(format!("{key}.lock")), "its requirements").await?;
    let python = requirements::python_for(Path::new(program));
    let names: Vec<String> = files
        .iter()
        .map(|(f, _)| f.strip_prefix(&dir).unwrap_or(f).display().to_string())
        .collect();
    let started = Instant::now();
    if !requirements::is_installed(&files, &dir, &deps) {
        eprintln!(
            "zeroflow-shim: installing requirements ({}) with {}",
            names.join(", "),
            python.display()
        );
    }
    match requirements::install(&files, &dir, &deps, &python, src.install_timeout).await? {
        Installed::Reused => eprintln!("zeroflow-shim: requirements cached ({})", names.join(", ")),
        Installed::Installed => eprintln!(
            "zeroflow-shim: requirements installed in {} ms",
            started.elapsed().as_millis()
        ),
    }
    Ok(Prepared {
        dir,
        deps: Some(deps),
    })
}

/// `CACHE/projects/<hex>/`, fetched and unpacked unless a complete copy is there.
async fn unpacked(src: &ProjectSource) -> Result<PathBuf, ProjectError> {
    let root = src.cache.join("projects");
    std::fs::create_dir_all(&root).map_err(|e| cache_err(&root, e))?;
    let hex = src.digest.hex();
    let dir = root.join(&hex);
    let complete = root.join(format!("{hex}{COMPLETE}"));
    let _lock = lock(&root.join(format!("{hex}.lock")), "the project").await?;
    if complete.is_file() && dir.is_dir() {
        eprintln!("zeroflow-shim: project {} cached", src.digest.short());
        return Ok(dir);
    }
    let bytes = fetch(src).await?;
    let got = Sha256Digest::of(&bytes);
    if got != src.digest {
        return Err(ProjectError::DigestMismatch {
            url: src.url.clone(),
            got,
            want: src.digest,
        });
    }
    let started = Instant::now();
    let staging = root.join(format!(".{hex}.partial-{}", std::process::id()));
    let (digest, limits) = (src.digest, src.limits);
    let (staged, target) = (staging.clone(), dir.clone());
    tokio::task::spawn_blocking(move || -> Result<(), ProjectError> {
        let _ = std::fs::remove_dir_all(&staged);
        archive::unpack(&bytes, &staged, &limits)
            .map_err(|source| ProjectError::Unpack { digest, source })?;
        // A folder without its marker is what a crash left: replaced whole.
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|e| cache_err(&target, e))?;
        }
        std::fs::rename(&staged, &target).map_err(|e| cache_err(&target, e))
    })
    .await
    .map_err(|e| cache_err(&dir, e))?
    .inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&staging);
    })?;
    std::fs::write(&complete, digest.to_string()).map_err(|e| cache_err(&complete, e))?;
    eprintln!(
        "zeroflow-shim: unpacked in {} ms",
        started.elapsed().as_millis()
    );
    Ok(dir)
}

/// An exclusive lock on `path` (held until the file is dropped), waited for without blocking
/// the runtime. A file system without locks (some network mounts) goes on unlocked: unpacking is
/// atomic by rename anyway.
async fn lock(path: &Path, what: &str) -> Result<Option<std::fs::File>, ProjectError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| cache_err(path, e))?;
    let mut pause = Duration::from_millis(10);
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !said {
                    eprintln!(
                        "zeroflow-shim: waiting for another shim on this node preparing {what}"
                    );
                    said = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot lock; going on without");
                return Ok(None);
            }
        }
    }
}

fn human_size(n: u64) -> String {
    const KIB: u64 = 1024;
    match n {
        n if n < KIB => format!("{n} B"),
        n if n < KIB * KIB => format!("{} KiB", n.div_ceil(KIB)),
        n => format!("{:.1} MiB", n as f64 / (KIB * KIB) as f64),
    }
}

/// Why one attempt failed: worth another try (the control plane restarting, a reset
/// connection, a 5xx) or not (the answer will not change).
enum Attempt {
    Retry(String),
    Fatal(ProjectError),
}

/// The archive's bytes, with retries and backoff for what a restart of the control plane looks
/// like, within `src.fetch_timeout`.
async fn fetch(src: &ProjectSource) -> Result<Bytes, ProjectError> {
    let uri: http::Uri = src.url.parse().map_err(|e| ProjectError::BadUrl {
        url: src.url.clone(),
        why: format!("{e}"),
    })?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(ProjectError::BadUrl {
                url: src.url.clone(),
                why: "it must start with http:// or https://".into(),
            });
        }
    };
    if uri.host().is_none() {
        return Err(ProjectError::BadUrl {
            url: src.url.clone(),
            why: "it names no host".into(),
        });
    }
    let client = client(https).map_err(|why| ProjectError::BadUrl {
        url: src.url.clone(),
        why,
    })?;
    let deadline = Instant::now() + src.fetch_timeout;
    let mut pause = Duration::from_millis(250);
    loop {
        let last = match attempt(&client, src, &uri, deadline).await {
            Ok(bytes) => return Ok(bytes),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(why)) => why,
        };
        let now = Instant::now();
        if now + pause >= deadline {
            return Err(ProjectError::Unreachable {
                url: src.url.clone(),
                timeout: src.fetch_timeout,
                why: last,
            });
        }
        eprintln!(
            "zeroflow-shim: fetching project {}: {last}; retrying in {} ms",
            src.digest.short(),
            pause.as_millis()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<Bytes>,
>;

/// An HTTP/1.1 client for http and https (rustls with aws-lc-rs, the system's CA certificates,
/// which `SSL_CERT_FILE` can replace). Redirects are not followed by the client: see [`attempt`].
fn client(https: bool) -> Result<Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if https && added == 0 {
        return Err(format!(
            "no CA certificates found to check the https server ({}): install ca-certificates \
             or point SSL_CERT_FILE at a PEM bundle",
            native
                .errors
                .first()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "the system store is empty".into())
        ));
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// An error and its causes on one line (hyper's own message is only "client error (Connect)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

/// One GET, following same-host redirects.
async fn attempt(
    client: &Client,
    src: &ProjectSource,
    start: &http::Uri,
    deadline: Instant,
) -> Result<Bytes, Attempt> {
    let mut uri = start.clone();
    for _ in 0..=MAX_REDIRECTS {
        let mut req = http::Request::get(uri.clone()).header(
            http::header::USER_AGENT,
            concat!("zeroflow-shim/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(t) = &src.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| {
                Attempt::Fatal(ProjectError::BadUrl {
                    url: src.url.clone(),
                    why: e.to_string(),
                })
            })?;
        let wait = ATTEMPT_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        let resp = match tokio::time::timeout(wait, client.request(req)).await {
            Err(_) => return Err(Attempt::Retry(format!("no answer within {wait:?}"))),
            Ok(Err(e)) => return Err(Attempt::Retry(chain(&e))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            uri = same_host(&uri, &location).map_err(|location| {
                Attempt::Fatal(ProjectError::OtherHost {
                    url: src.url.clone(),
                    location,
                })
            })?;
            continue;
        }
        if status.is_success() {
            return read_body(resp, src, deadline).await;
        }
        let text = read_error(resp.into_body()).await;
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        let message = if message.trim().is_empty() {
            status
                .canonical_reason()
                .unwrap_or("no reason given")
                .to_string()
        } else {
            message
        };
        if status.is_server_error()
            || status == http::StatusCode::TOO_MANY_REQUESTS
            || status == http::StatusCode::REQUEST_TIMEOUT
        {
            return Err(Attempt::Retry(format!(
                "HTTP {}: {message}",
                status.as_u16()
            )));
        }
        let hint = match status.as_u16() {
            401 | 403 => {
                "; ZEROFLOW_ARTIFACT_TOKEN must hold the token the control plane issued for this \
                 digest"
            }
            404 => "; the Flow was probably updated or removed since this pod was made",
            _ => "",
        };
        return Err(Attempt::Fatal(ProjectError::Refused {
            url: src.url.clone(),
            status: status.as_u16(),
            message,
            hint,
        }));
    }
    Err(Attempt::Fatal(ProjectError::Refused {
        url: src.url.clone(),
        status: 310,
        message: format!("more than {MAX_REDIRECTS} redirects"),
        hint: "",
    }))
}

/// `location` resolved against `base`, if it stays on the same scheme, host and port.
fn same_host(base: &http::Uri, location: &str) -> Result<http::Uri, String> {
    let loc: http::Uri = location.parse().map_err(|_| location.to_string())?;
    if loc.scheme().is_none() && loc.authority().is_none() {
        let path = loc.path_and_query().map_or("/", |p| p.as_str());
        let mut parts = base.clone().into_parts();
        parts.path_and_query = path.parse().ok();
        return http::Uri::from_parts(parts).map_err(|_| location.to_string());
    }
    let port = |u: &http::Uri| {
        u.port_u16().unwrap_or(if u.scheme_str() == Some("https") {
            443
        } else {
            80
        })
    };
    let same = loc.scheme() == base.scheme()
        && loc.host().map(str::to_ascii_lowercase) == base.host().map(str::to_ascii_lowercase)
        && port(&loc) == port(base);
    if same {
        Ok(loc)
    } else {
        Err(location.to_string())
    }
}

async fn read_body(
    resp: http::Response<hyper::body::Incoming>,
    src: &ProjectSource,
    deadline: Instant,
) -> Result<Bytes, Attempt> {
    use http_body_util::BodyExt as _;
    let limit = src.limits.max_compressed_bytes;
    let too_large = || {
        Attempt::Fatal(ProjectError::TooLarge {
            url: src.url.clone(),
            limit,
        })
    };
    let declared = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    eprintln!(
        "zeroflow-shim: fetching project {} ({})",
        src.digest.short(),
        declared.map_or_else(|| "size not given".to_string(), human_size)
    );
    let mut body = resp.into_body();
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = match tokio::time::timeout(left, body.frame()).await {
            Err(_) => return Err(Attempt::Retry("the download did not finish in time".into())),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Attempt::Retry(format!("the download broke: {}", chain(&e))));
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    if declared.is_some_and(|n| n != buf.len() as u64) {
        return Err(Attempt::Retry(format!(
            "the download ended after {} of {} bytes",
            buf.len(),
            declared.unwrap_or_default()
        )));
    }
    Ok(buf.freeze())
}

/// The start of an error answer, as text.
async fn read_error(mut body: hyper::body::Incoming) -> String {
    use http_body_util::BodyExt as _;
    let mut buf = Vec::new();
    while buf.len() < ERROR_BODY {
        match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
            _ => break,
        }
    }
    buf.truncate(ERROR_BODY);
    String::from_utf8_lossy(&buf).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_on_the_host() {
        let base: http::Uri = "http://cp.zeroflow:8400/v1/artifacts/x".parse().unwrap();
        assert_eq!(
            same_host(&base, "/v2/artifacts/x?a=1").unwrap().to_string(),
            "http://cp.zeroflow:8400/v2/artifacts/x?a=1"
        );
        assert!(same_host(&base, "http://CP.zeroflow:8400/y").is_ok());
        for other in [
            "http://evil.example/x",
            "https://cp.zeroflow:8400/x",
            "http://cp.zeroflow:8401/x",
            "http://cp.zeroflow/x",
        ] {
            assert_eq!(same_host(&base, other).unwrap_err(), other);
        }
        let tls: http::Uri = "https://cp/x".parse().unwrap();
        assert!(same_host(&tls, "https://cp:443/y").is_ok());
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(123 * 1024), "123 KiB");
        assert_eq!(human_size(3 * 1024 * 1024 + 1), "3.0 MiB");
    }

    /// A real HTTP server on loopback that serves `archive` in the ways the tests need, and
    /// counts the requests for it.
    struct Store {
        base: String,
        hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        _cache: tempfile::TempDir,
        cache: PathBuf,
        archive: Bytes,
    }

    async fn store() -> Store {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        use std::sync::atomic::Ordering;
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("executor1")).unwrap();
        std::fs::write(src.path().join("flow.yml"), "jtype: Flow\n").unwrap();
        std::fs::write(src.path().join("executor1/config.yml"), "jtype: E\n").unwrap();
        let archive = archive::pack_dir(src.path()).unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (a, h) = (archive.clone(), hits.clone());
        let ok = move || {
            h.fetch_add(1, Ordering::SeqCst);
            a.clone().into_response()
        };
        let (ok1, ok2, ok3) = (ok.clone(), ok.clone(), ok.clone());
        let flaky_hits = hits.clone();
        let app = axum::Router::new()
            .route("/ok", axum::routing::get(move || async move { ok1() }))
            .route(
                "/flaky",
                axum::routing::get(move || async move {
                    if flaky_hits.load(Ordering::SeqCst) < 2 {
                        flaky_hits.fetch_add(1, Ordering::SeqCst);
                        return (StatusCode::SERVICE_UNAVAILABLE, "restarting").into_response();
                    }
                    ok2()
                }),
            )
            .route(
                "/auth",
                axum::routing::get(move |headers: HeaderMap| async move {
                    let good = headers
                        .get("authorization")
                        .is_some_and(|v| v == "Bearer good-token");
                    if good {
                        ok3()
                    } else {
                        (
                            StatusCode::UNAUTHORIZED,
                            axum::Json(
                                serde_json::json!({"error": "the artifact token is not valid"}),
                            ),
                        )
                            .into_response()
                    }
                }),
            )
            .route(
                "/away",
                axum::routing::get(|| async {
                    axum::response::Redirect::temporary("http://example.invalid/ok")
                }),
            )
            .route(
                "/here",
                axum::routing::get(|| async { axum::response::Redirect::temporary("/ok") }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let cache = tempfile::tempdir().unwrap();
        Store {
            base,
            hits,
            cache: cache.path().to_path_buf(),
            _cache: cache,
            archive,
        }
    }

    impl Store {
        fn source(&self, path: &str) -> ProjectSource {
            ProjectSource {
                url: format!("{}{path}", self.base),
                digest: Sha256Digest::of(&self.archive),
                token: None,
                cache: self.cache.clone(),
                fetch_timeout: Duration::from_secs(60),
                install_timeout: Duration::from_secs(60),
                limits: Limits::default(),
            }
        }

        fn hits(&self) -> usize {
            self.hits.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_project_is_fetched_checked_unpacked_and_then_reused() {
        let s = store().await;
        let src = s.source("/ok");
        let p = prepare(&src, "jina").await.unwrap();
        let dir = s.cache.join("projects").join(src.digest.hex());
        assert_eq!(
            p,
            Prepared {
                dir: dir.clone(),
                deps: None
            }
        );
        assert!(dir.join("executor1/config.yml").is_file());
        assert_eq!(s.hits(), 1);
        // Reused by digest: no second download.
        assert_eq!(prepare(&src, "jina").await.unwrap().dir, dir);
        assert_eq!(s.hits(), 1);
        // A folder without its marker (a crash mid-way) is fetched and unpacked again.
        std::fs::remove_file(dir.with_file_name(format!("{}{COMPLETE}", src.digest.hex())))
            .unwrap();
        std::fs::remove_file(dir.join("flow.yml")).unwrap();
        prepare(&src, "jina").await.unwrap();
        assert!(dir.join("flow.yml").is_file());
        assert_eq!(s.hits(), 2);
    }

    #[tokio::test]
    async fn shims_starting_together_fetch_and_unpack_once() {
        let s = store().await;
        let src = s.source("/ok");
        let runs = (0..4).map(|_| {
            let src = src.clone();
            tokio::spawn(async move { prepare(&src, "jina").await.map(|p| p.dir) })
        });
        let dirs: Vec<PathBuf> = futures::future::join_all(runs)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();
        assert!(dirs.windows(2).all(|w| w[0] == w[1]), "{dirs:?}");
        assert_eq!(s.hits(), 1, "one download for four shims");
    }

    #[tokio::test]
    async fn a_wrong_digest_is_refused_naming_both_and_nothing_is_kept() {
        let s = store().await;
        let mut src = s.source("/ok");
        let want = Sha256Digest::of(b"another archive");
        src.digest = want;
        let e = prepare(&src, "jina").await.unwrap_err();
        let got = Sha256Digest::of(&s.archive);
        assert!(
            matches!(e, ProjectError::DigestMismatch { got: g, want: w, .. } if g == got && w == want),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains(&got.to_string()) && text.contains(&want.to_string()),
            "{text}"
        );
        let projects: Vec<_> = std::fs::read_dir(s.cache.join("projects"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(projects.is_empty(), "{projects:?}");
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_refusals_are_not() {
        let s = store().await;
        prepare(&s.source("/flaky"), "jina").await.unwrap();
        assert_eq!(s.hits(), 3, "two 503s, then the archive");

        let s = store().await;
        let e = prepare(&s.source("/auth"), "jina").await.unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, ProjectError::Refused { status: 401, .. })
                && text.contains("the artifact token is not valid")
                && text.contains(ARTIFACT_TOKEN_ENV),
            "{text}"
        );
        let mut src = s.source("/auth");
        src.token = Some("good-token".into());
        prepare(&src, "jina").await.unwrap();
    }

    #[tokio::test]
    async fn redirects_limits_and_an_absent_server() {
        let s = store().await;
        let e = prepare(&s.source("/away"), "jina").await.unwrap_err();
        assert!(matches!(e, ProjectError::OtherHost { .. }), "{e}");
        assert!(e.to_string().contains("example.invalid"), "{e}");
        prepare(&s.source("/here"), "jina").await.unwrap();

        let s = store().await;
        let mut src = s.source("/ok");
        src.limits.max_compressed_bytes = 10;
        let e = prepare(&src, "jina").await.unwrap_err();
        assert!(matches!(e, ProjectError::TooLarge { limit: 10, .. }), "{e}");

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut src = s.source("/ok");
        src.url = format!("http://127.0.0.1:{closed}/v1/artifacts/x");
        src.fetch_timeout = Duration::from_secs(1);
        let e = prepare(&src, "jina").await.unwrap_err();
        assert!(
            matches!(e, ProjectError::Unreachable { .. }) && e.to_string().contains("refused"),
            "{e}"
        );
        src.url = "ftp://host/x".into();
        let e = prepare(&src, "jina").await.unwrap_err();
        assert!(matches!(e, ProjectError::BadUrl { .. }), "{e}");
    }

    #[test]
    fn the_token_is_not_debug_printed() {
        let src = ProjectSource {
            url: "http://cp/v1/artifacts/x".into(),
            digest: Sha256Digest::of(b""),
            token: Some("s3cret-token".into()),
            cache: PathBuf::from("/c"),
            fetch_timeout: Duration::from_secs(1),
            install_timeout: Duration::from_secs(1),
            limits: Limits::default(),
        };
        let text = format!("{src:?}");
        assert!(!text.contains("s3cret") && text.contains("<set>"), "{text}");
    }
}
