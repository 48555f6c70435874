//! The kubelet's HTTPS endpoint, as far as the API server needs it for `kubectl logs`:
//! `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`, `tailLines`, `timestamps`,
//! `previous`, `sinceSeconds`, `sinceTime` and `limitBytes`. Other kubelet endpoints (exec,
//! attach, port-forward, stats) are not served. The certificate is self-signed and clients are
//! not authenticated: the API server does not check kubelet certificates unless told to, and
//! this is test code on a loopback address. It must not read anything but log files.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::Ctx;
use crate::logs;

type Body = BoxBody<Bytes, std::io::Error>;

/// Binds the server on the node's address at a free port.
pub async fn bind(ctx: &Ctx) -> Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(ctx.node_ip.into(), 0))
        .await
        .with_context(|| format!("binding the logs server on {}", ctx.node_ip))
}

pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>) -> Result<()> {
    let key = rcgen::KeyPair::generate().context("generating the logs server's key")?;
    let mut params = rcgen::CertificateParams::new(vec![ctx.node_ip.to_string()])
        .context("logs server certificate")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ctx.node_name.clone());
    let cert = params.self_signed(&key).context("self-signing")?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        )
        .context("TLS config")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "logs server accept");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&ctx, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

fn text(code: StatusCode, msg: String) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(msg)).map_err(|e| match e {}).boxed())
        .expect("static response parts")
}

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let segments: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let ["containerLogs", ns, pod, container] = segments[..] else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "the zeroflow test node agent serves only /containerLogs, not {}",
                req.uri().path()
            ),
        );
    };
    let params = query(req.uri().query().unwrap_or_default());
    let flag = |name: &str| {
        params
            .iter()
            .any(|(k, v)| k == name && v != "false" && v != "0")
    };
    let number = |name: &str| -> Result<Option<i64>, String> {
        match params.iter().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, v)) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}={v:?} is not an integer")),
        }
    };
    let (tail, since_seconds, limit) = match (
        number("tailLines"),
        number("sinceSeconds"),
        number("limitBytes"),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return text(StatusCode::BAD_REQUEST, e);
        }
    };
    let since_time = match params.iter().find(|(k, _)| k == "sinceTime") {
        None => None,
        Some((_, v)) => match v.parse::<Timestamp>() {
            Ok(t) => Some(t),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("sinceTime={v:?} is not an RFC 3339 time: {e}"),
                );
            }
        },
    };
    let since = since_time.or_else(|| {
        since_seconds.and_then(|s| {
            Timestamp::now()
                .checked_sub(SignedDuration::from_secs(s))
                .ok()
        })
    });
    let q = logs::Query {
        follow: flag("follow"),
        tail_lines: tail.map(|n| n.max(0) as u64),
        timestamps: flag("timestamps"),
        since,
        limit_bytes: limit.map(|n| n.max(0) as u64),
    };
    let previous = flag("previous");

    let uid = ctx
        .pods
        .lock()
        .get(&(ns.to_string(), pod.to_string()))
        .cloned();
    let Some(uid) = uid else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not running on node {}", ctx.node_name),
        );
    };
    let runs = logs::runs(&logs::container_dir(
        &ctx.logs_dir,
        ns,
        pod,
        &uid,
        container,
    ));
    let path = if previous {
        runs.len().checked_sub(2).map(|i| runs[i].clone())
    } else {
        runs.last().cloned()
    };
    let Some(path) = path else {
        let msg = if previous {
            format!("previous terminated container {container:?} in pod {pod:?} not found")
        } else {
            format!("container {container:?} in pod {pod:?} is waiting to start")
        };
        return text(StatusCode::BAD_REQUEST, msg);
    };
    let active = if previous {
        None
    } else {
        ctx.active_logs.get(&path)
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        if let Err(e) = logs::stream(path, q, active, tx).await {
            tracing::warn!(error = %format!("{e:#}"), "reading a log");
        }
    });
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(BodyExt::boxed(body))
        .expect("static response parts")
}

/// `a=1&b=x%3Ay` into pairs, percent-decoded (`+` is a space, as in forms).
fn query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, "true"));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_queries() {
        assert_eq!(
            super::query("follow=true&sinceTime=2024-01-01T00%3A00%3A00Z&x=a+b&bad=%zz&end=%4"),
            vec![
                ("follow".to_string(), "true".to_string()),
                ("sinceTime".into(), "2024-01-01T00:00:00Z".into()),
                ("x".into(), "a b".into()),
                ("bad".into(), "%zz".into()),
                ("end".into(), "%4".into()),
            ]
        );
    }
}
