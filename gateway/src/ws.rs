//! The gateway's websocket face, as `jina.Client(protocol='websocket')` uses it (subprotocol
//! `bytes`): on `/`, each binary message is a serialized `DataRequestProto` and gets one binary
//! answer, in the order they complete; a single zero byte ends the client's side, and the
//! gateway closes once every answer is out. On `/dry_run` it answers one serialized
//! `StatusProto`. A request the Flow cannot serve closes the socket with 1011 and the reason, as
//! jina's gateway does (the client raises it as a ConnectionError). The plain HTTP routes (`GET
//! /`, `/status`, `/dry_run`) answer as on the HTTP face.

use crate::Gateway;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use std::sync::Arc;
use zeroflow_proto::jina::DataRequestProto;

/// What jina's websocket client sends to say it has no more requests: Python's `bytes(True)`.
const END_OF_REQUESTS: &[u8] = &[0];

/// After an error answer, how long to leave the socket open for the client to close it.
const ERROR_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The HTTP router with `/` and `/dry_run` also taking websocket upgrades.
pub fn router(gw: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::get(root))
        .route("/dry_run", axum::routing::get(dry_run))
        .with_state(gw.clone())
        .merge(crate::http::router_without(gw, &["/", "/dry_run"]))
}

async fn upgrade(req: Request) -> Option<WebSocketUpgrade> {
    let (mut parts, _) = req.into_parts();
    WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .ok()
}

async fn root(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    match upgrade(req).await {
        Some(ws) => ws
            .protocols(["bytes"])
            .on_upgrade(move |socket| requests(gw, socket)),
        None => axum::Json(serde_json::json!({})).into_response(),
    }
}

async fn dry_run(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    match upgrade(req).await {
        Some(ws) => ws
            .protocols(["bytes"])
            .on_upgrade(move |mut socket| async move {
                let status = gw.dry_run().await;
                let _ = socket
                    .send(Message::Binary(status.encode_to_vec().into()))
                    .await;
                let _ = socket.send(close(close_code::NORMAL, "")).await;
            }),
        None => crate::http::dry_run(State(gw)).await.into_response(),
    }
}

/// A close frame; the reason is cut to the 123 bytes a close frame can carry.
fn close(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

async fn requests(gw: Arc<Gateway>, socket: WebSocket) {
    let (mut out, mut inbound) = socket.split();
    let mut in_flight = FuturesUnordered::new();
    let mut client_done = false;
    let mut answered_an_error = false;
    // `prefetch` bounds this client's requests in flight, as on a gRPC stream.
    let limit = if gw.prefetch == 0 {
        usize::MAX
    } else {
        gw.prefetch
    };
    loop {
        if client_done && in_flight.is_empty() {
            if answered_an_error {
                // jina's client raises BadServer for an error answer only if the socket is still
                // open when it handles that answer (a close that comes first swallows it), and
                // it closes the socket itself once it has raised: give it the time to.
                let _ = tokio::time::timeout(ERROR_GRACE, async {
                    while let Some(Ok(m)) = inbound.next().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
            let _ = out.send(close(close_code::NORMAL, "")).await;
            return;
        }
        tokio::select! {
            msg = inbound.next(), if !client_done && in_flight.len() < limit => match msg {
                Some(Ok(Message::Binary(b))) if b.as_ref() == END_OF_REQUESTS => client_done = true,
                Some(Ok(Message::Binary(b))) => match DataRequestProto::decode(b) {
                    Ok(req) => {
                        let gw = gw.clone();
                        in_flight.push(async move { gw.process(req).await });
                    }
                    Err(e) => {
                        let why = format!("a message is not a serialized jina DataRequestProto: {e}");
                        let _ = out.send(close(close_code::UNSUPPORTED, &why)).await;
                        return;
                    }
                },
                Some(Ok(Message::Text(_))) => {
                    // jina's own gateway refuses the JSON subprotocol with docarray v2 too.
                    let why = "send binary DataRequestProto messages (subprotocol `bytes`); JSON is not supported";
                    let _ = out.send(close(close_code::UNSUPPORTED, why)).await;
                    return;
                }
                Some(Ok(_)) => {}
                // The client went away: whatever is still in flight has nobody to answer.
                Some(Err(_)) | None => return,
            },
            Some(r) = in_flight.next(), if !in_flight.is_empty() => match r {
                Ok(resp) => {
                    answered_an_error |= resp.is_error();
                    if out.send(Message::Binary(resp.encode_to_vec().into())).await.is_err() {
                        return;
                    }
                }
                Err(status) => {
                    let _ = out.send(close(close_code::ERROR, status.message())).await;
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_reason_fits_a_close_frame_and_stays_utf8() {
        let long = "é".repeat(100); // 200 bytes
        let Message::Close(Some(f)) = close(close_code::ERROR, &long) else {
            panic!("a close frame");
        };
        assert!(f.reason.len() <= 123);
        assert_eq!(f.reason.as_str(), "é".repeat(61));
        assert_eq!(f.code, close_code::ERROR);
    }
}
