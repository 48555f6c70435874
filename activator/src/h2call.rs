//! Unary gRPC calls to a replica over one bare HTTP/2 connection (the h2 crate). The activator
//! only ever makes unary calls with bytes it already holds, so it needs none of a general gRPC
//! client's layers: no request buffer task, no per-call middleware, no streaming codec. A call is
//! a HEADERS and a DATA frame out, and a response read back. Failures say whether the request
//! could have reached the Executor, which decides whether it may be retried on another replica.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::Duration;
use tonic::{Code, Status};

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The request never reached the Executor (no connection, refused stream): safe to retry.
    NotSent(Status),
    /// The connection broke after the request was sent: the Executor may have processed it.
    Broken(Status),
    /// The Executor (or the shim) answered with a gRPC error.
    Answered(Status),
}

/// One replica's connection, made on first use and again after it breaks.
pub struct H2Channel {
    addr: String,
    sender: tokio::sync::Mutex<Option<h2::client::SendRequest<Bytes>>>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl H2Channel {
    pub fn new(addr: impl Into<String>) -> Self {
        H2Channel {
            addr: addr.into(),
            sender: tokio::sync::Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<h2::client::SendRequest<Bytes>, Status> {
        let unreachable = |e: &dyn std::fmt::Display| {
            Status::unavailable(format!("cannot connect to {}: {e}", self.addr))
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&self.addr))
            .await
            .map_err(|_| unreachable(&"timed out"))?
            .map_err(|e| unreachable(&e))?;
        let _ = tcp.set_nodelay(true);
        // hyper's client defaults, so large messages stream as fast as they did through tonic.
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(2 * 1024 * 1024)
            .initial_connection_window_size(5 * 1024 * 1024)
            .max_frame_size(16 * 1024)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|e| unreachable(&e))?;
        let addr = self.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "replica connection ended");
            }
        });
        Ok(send)
    }

    /// A sender ready for a new stream, connecting (once more) if the connection is gone.
    async fn ready(&self) -> Result<h2::client::SendRequest<Bytes>, Status> {
        let mut slot = self.sender.lock().await;
        for attempt in 0..2 {
            let send = match slot.take() {
                Some(s) => s,
                None => self.connect().await?,
            };
            match send.ready().await {
                Ok(s) => {
                    *slot = Some(s.clone());
                    return Ok(s);
                }
                Err(e) if attempt == 0 => {
                    tracing::debug!(addr = %self.addr, error = %e, "replica connection closed; reconnecting");
                }
                Err(e) => {
                    return Err(Status::unavailable(format!(
                        "connection to {} failed: {e}",
                        self.addr
                    )));
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Calls `path` with one serialized message and returns the serialized answer.
    pub async fn unary(
        &self,
        path: &str,
        message: Bytes,
        headers: &[(&'static str, &'static str)],
    ) -> Result<Bytes, CallError> {
        let mut send = self.ready().await.map_err(CallError::NotSent)?;
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(())
            .map_err(|e| CallError::NotSent(Status::internal(format!("bad request: {e}"))))?;
        let (response, mut body_out) = send
            .send_request(req, false)
            .map_err(|e| CallError::NotSent(h2_status(&self.addr, &e)))?;
        let mut framed = BytesMut::with_capacity(5 + message.len());
        framed.put_u8(0);
        framed.put_u32(message.len() as u32);
        framed.extend_from_slice(&message);
        body_out
            .send_data(framed.freeze(), true)
            .map_err(|e| sent_error(&self.addr, &e))?;
        let response = response.await.map_err(|e| sent_error(&self.addr, &e))?;
        let (parts, mut body) = response.into_parts();
        // A trailers-only answer (an error) carries grpc-status in its headers.
        if let Some(status) = grpc_status(&parts.headers) {
            return Err(CallError::Answered(status));
        }
        if parts.status != http::StatusCode::OK {
            return Err(CallError::Answered(Status::new(
                http_code(parts.status),
                format!("{} answered HTTP {}", self.addr, parts.status),
            )));
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| sent_error(&self.addr, &e))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
        }
        let trailers = body
            .trailers()
            .await
            .map_err(|e| sent_error(&self.addr, &e))?
            .unwrap_or_default();
        match grpc_status(&trailers) {
            Some(status) => return Err(CallError::Answered(status)),
            None if !trailers.contains_key("grpc-status") => {
                return Err(CallError::Broken(Status::internal(format!(
                    "{} ended the answer without a grpc-status",
                    self.addr
                ))));
            }
            None => {}
        }
        let mut buf = buf.freeze();
        if buf.len() < 5 {
            return Err(CallError::Answered(Status::internal(
                "an answer without a message",
            )));
        }
        let compressed = buf.get_u8();
        let len = buf.get_u32() as usize;
        if compressed != 0 || buf.len() < len {
            return Err(CallError::Answered(Status::internal(
                "a compressed or truncated answer",
            )));
        }
        Ok(buf.split_to(len))
    }
}

/// The gRPC status in `headers`, when it says anything but OK.
fn grpc_status(headers: &http::HeaderMap) -> Option<Status> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    if code == 0 {
        return None;
    }
    let message = headers
        .get("grpc-message")
        .map(|m| zeroflow_proto::percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some(Status::new(Code::from_i32(code), message))
}

/// gRPC's mapping of HTTP statuses (for a proxy in the way that answers without gRPC).
fn http_code(s: http::StatusCode) -> Code {
    match s.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

fn h2_status(addr: &str, e: &h2::Error) -> Status {
    Status::unavailable(format!("{addr}: {e}"))
}

/// An error after the request went out: retryable only if the server said it did not take it.
fn sent_error(addr: &str, e: &h2::Error) -> CallError {
    if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        CallError::NotSent(h2_status(addr, e))
    } else {
        CallError::Broken(h2_status(addr, e))
    }
}
