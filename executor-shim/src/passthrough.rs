//! The pass-through proxy, used when containerConcurrency is 0: with no breaker to enforce,
//! nothing has to hold a request back, so HTTP/2 frames go between the caller and the Executor
//! as they are, over one Executor connection per caller connection. The shim only reads them to
//! count: it decodes every header block in order (HPACK, so its tables stay in step with both
//! ends) to learn each request's method and whether the activator sent it, and each answer's
//! grpc-status. The full gRPC proxy (`proxy.rs`) runs an HTTP/2 server and an HTTP/2 client per
//! request; this costs a read and a write each way, which is most of the shim's hop on the
//! warm path.
//!
//! Draining: the shim sends the caller a GOAWAY (no new streams) and then a PING; the PING's
//! ACK proves the caller has read the GOAWAY, so once it is back and the open streams are
//! answered, closing loses nothing.

use crate::State;
use bytes::{Buf, BytesMut};
use httlib_hpack::Decoder;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use zeroflow_activator::PROXIED_HEADER;

/// What an HTTP/2 client sends before its first frame.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// A header block larger than this is not decoded (the Executor will refuse it anyway); the
/// connection is still forwarded.
const MAX_BLOCK: usize = 1 << 20;

/// The payload of the shim's drain PING.
pub const DRAIN_PING: [u8; 8] = *b"zf-drain";

/// How long a draining shim waits for the caller to acknowledge its GOAWAY before it assumes
/// the caller has read it.
const DRAIN_ACK_WAIT: Duration = Duration::from_secs(2);

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The caller opened a stream; `path` is None when the headers could not be decoded.
    Request {
        stream: u32,
        path: Option<String>,
        proxied: bool,
    },
    /// The Executor ended a stream; `status` is its grpc-status when one was readable.
    Answered { stream: u32, status: Option<u32> },
    /// Either side reset a stream.
    Reset { stream: u32 },
    /// The caller acknowledged the drain PING (that frame is not forwarded).
    DrainAck,
}

/// Which end a scanner reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Bytes from the caller (the gateway's activator, Jina's gateway, any gRPC client).
    Caller,
    /// Bytes from the Executor.
    Executor,
}

/// The caller did not open with the HTTP/2 preface: not gRPC, so the bytes are forwarded
/// without being read.
#[derive(Debug, PartialEq, Eq)]
pub struct NotHttp2;

/// Reads one direction of an HTTP/2 connection frame by frame. Pure: bytes in, events and the
/// byte ranges to forward out, so it can be tested (and fuzzed) without sockets.
pub struct Scanner {
    side: Side,
    preface_left: usize,
    /// None once a header block failed to decode: from then on the tables may be out of step,
    /// so nothing more is decoded on this connection (frames still pass).
    decoder: Option<Decoder<'static>>,
    block: Vec<u8>,
    /// The decoded fields of the last block (kept to reuse its allocation).
    headers: Vec<(Vec<u8>, Vec<u8>, u8)>,
    block_stream: u32,
    block_end_stream: bool,
    block_is_push: bool,
    in_block: bool,
    last_stream: u32,
}

impl Scanner {
    pub fn new(side: Side) -> Self {
        // The dynamic table starts at HTTP/2's default size, as both ends' do, and follows the
        // encoder's size updates whatever they are: the ends agreed on the limit, not the shim.
        let mut decoder = Decoder::with_dynamic_size(4096);
        decoder.set_max_dynamic_size(u32::MAX);
        Scanner {
            side,
            preface_left: if side == Side::Caller {
                PREFACE.len()
            } else {
                0
            },
            decoder: Some(decoder),
            block: Vec::new(),
            headers: Vec::new(),
            block_stream: 0,
            block_end_stream: false,
            block_is_push: false,
            in_block: false,
            last_stream: 0,
        }
    }

    /// Scans the complete frames at the start of `buf`: returns how many bytes they take (a
    /// partial frame at the end waits for more bytes), adds what they mean to `events` and the
    /// byte ranges to forward, in order, to `forward`.
    pub fn scan(
        &mut self,
        buf: &[u8],
        events: &mut Vec<Event>,
        forward: &mut Vec<Range<usize>>,
    ) -> Result<usize, NotHttp2> {
        let mut pos = 0;
        if self.preface_left > 0 {
            let seen = PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(buf.len());
            if buf[..n] != PREFACE[seen..seen + n] {
                return Err(NotHttp2);
            }
            self.preface_left -= n;
            push_range(forward, 0..n);
            pos = n;
            if self.preface_left > 0 {
                return Ok(pos);
            }
        }
        while buf.len() - pos >= FRAME_HEADER {
            let h = &buf[pos..pos + FRAME_HEADER];
            let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
            let end = pos + FRAME_HEADER + len;
            if end > buf.len() {
                break;
            }
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let keep = self.frame(h[3], h[4], stream, &buf[pos + FRAME_HEADER..end], events);
            if keep {
                push_range(forward, pos..end);
            }
            pos = end;
        }
        Ok(pos)
    }

    /// Reads one frame; false when the frame is the shim's own and must not be forwarded.
    fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> bool {
        match kind {
            HEADERS | PUSH_PROMISE => {
                self.in_block = true;
                self.block.clear();
                self.block_stream = stream;
                self.block_end_stream = kind == HEADERS && flags & END_STREAM != 0;
                self.block_is_push = kind == PUSH_PROMISE;
                match fragment(kind, flags, payload) {
                    Some(f) => self.block.extend_from_slice(f),
                    None => self.give_up("malformed HEADERS frame"),
                }
                if flags & END_HEADERS != 0 {
                    self.end_block(events);
                }
            }
            CONTINUATION if self.in_block && stream == self.block_stream => {
                if self.block.len() + payload.len() <= MAX_BLOCK {
                    self.block.extend_from_slice(payload);
                } else {
                    self.give_up("header block over 1 MiB");
                }
                if flags & END_HEADERS != 0 {
                    self.end_block(events);
                }
            }
            DATA if self.side == Side::Executor && flags & END_STREAM != 0 => {
                events.push(Event::Answered {
                    stream,
                    status: None,
                });
            }
            RST_STREAM if stream != 0 => events.push(Event::Reset { stream }),
            PING if self.side == Side::Caller && flags & ACK != 0 && payload == DRAIN_PING => {
                events.push(Event::DrainAck);
                return false;
            }
            _ => {}
        }
        true
    }

    fn end_block(&mut self, events: &mut Vec<Event>) {
        self.in_block = false;
        let mut path = None;
        let mut proxied = false;
        let mut status = None;
        let decoded = match self.decoder.as_mut() {
            Some(d) => {
                self.headers.clear();
                d.decode(&mut self.block, &mut self.headers)
                    .map_err(|e| format!("{e:?}"))
            }
            None => Ok(0),
        };
        for (name, value, _) in &self.headers {
            match name.as_slice() {
                b":path" => path = Some(String::from_utf8_lossy(value).into_owned()),
                b"grpc-status" => {
                    status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
                }
                n if n == PROXIED_HEADER.as_bytes() => proxied = true,
                _ => {}
            }
        }
        if let Err(e) = decoded {
            self.give_up(&e);
            path = None;
            status = None;
        }
        if self.block_is_push {
            return;
        }
        let stream = self.block_stream;
        match self.side {
            // A HEADERS on a stream the caller opened before is its trailers, not a request.
            Side::Caller if stream > self.last_stream => {
                self.last_stream = stream;
                events.push(Event::Request {
                    stream,
                    path,
                    proxied,
                });
            }
            Side::Executor if self.block_end_stream => {
                events.push(Event::Answered { stream, status });
            }
            _ => {}
        }
    }

    fn give_up(&mut self, why: &str) {
        if self.decoder.take().is_some() {
            tracing::warn!(side = ?self.side, error = why,
                "cannot read HTTP/2 headers on this connection any more: still forwarding, without method names or status codes");
        }
    }
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload (padding and priority
/// removed); None when the lengths do not add up.
fn fragment(kind: u8, flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    if kind == HEADERS && flags & PRIORITY != 0 {
        p = p.get(5..)?;
    }
    if kind == PUSH_PROMISE {
        p = p.get(4..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

fn push_range(v: &mut Vec<Range<usize>>, r: Range<usize>) {
    match v.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => v.push(r),
    }
}

/// GOAWAY (last stream: the highest possible, so every stream already sent is served) and the
/// drain PING, as one write.
pub fn drain_frames() -> Vec<u8> {
    let mut out = Vec::with_capacity(2 * FRAME_HEADER + 16);
    out.extend_from_slice(&[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&[0, 0, 8, PING, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&DRAIN_PING);
    out
}

/// The name the metrics give a grpc-status, as the gRPC proxy names them.
fn code_name(status: Option<u32>) -> String {
    match status {
        Some(0) => "OK".into(),
        Some(n) => format!("{:?}", tonic::Code::from_i32(n as i32)),
        None => "Unknown".into(),
    }
}

struct Open {
    data: bool,
    proxied: bool,
}

/// One caller connection: its open streams, as the two directions see them.
struct Conn {
    state: Arc<State>,
    open: Mutex<HashMap<u32, Open>>,
    acked: AtomicBool,
    /// The caller does not speak HTTP/2: its bytes pass unread, and no frame may be added.
    opaque: AtomicBool,
    changed: Notify,
}

impl Conn {
    fn handle(&self, events: &mut Vec<Event>) {
        for e in events.drain(..) {
            match e {
                Event::Request {
                    stream,
                    path,
                    proxied,
                } => {
                    // Undecodable headers count as work: better to over-count than to hide load.
                    let data = path.as_deref().is_none_or(crate::proxy::is_data_rpc);
                    if data {
                        self.state.start(proxied);
                    }
                    self.open.lock().insert(stream, Open { data, proxied });
                }
                Event::Answered { stream, status } => self.end(stream, &code_name(status)),
                Event::Reset { stream } => self.end(stream, "Cancelled"),
                Event::DrainAck => self.acked.store(true, Ordering::Release),
            }
        }
        self.changed.notify_waiters();
    }

    fn end(&self, stream: u32, code: &str) {
        let Some(o) = self.open.lock().remove(&stream) else {
            return;
        };
        if o.data {
            self.state.finish(o.proxied);
            self.state.metrics.count_request(code);
        }
    }

    /// Streams still open when the connection ends were not answered.
    fn close(&self) {
        let open: Vec<Open> = self.open.lock().drain().map(|(_, o)| o).collect();
        for o in open.into_iter().filter(|o| o.data) {
            self.state.finish(o.proxied);
            self.state.metrics.count_request("Unavailable");
        }
    }

    async fn drained(&self) {
        loop {
            let changed = self.changed.notified();
            if self.acked.load(Ordering::Acquire) && self.open.lock().is_empty() {
                return;
            }
            changed.await;
        }
    }
}

/// The pass-through server: accepts callers until told to drain.
pub struct Passthrough {
    drain: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Passthrough {
    pub fn start(listener: TcpListener, state: Arc<State>, executor: SocketAddr) -> Self {
        let (drain, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, state, executor, rx));
        Passthrough { drain, task }
    }

    /// Stops accepting, sends every caller GOAWAY and the drain PING, and waits until each
    /// connection has its ACK and no open stream (then closes it), or `timeout`. True if all
    /// closed in time.
    pub async fn drain(mut self, timeout: Duration) -> bool {
        self.drain.send_replace(true);
        let done = tokio::time::timeout(timeout, &mut self.task).await.is_ok();
        self.task.abort();
        done
    }

    /// Closes everything now.
    pub fn abort(self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    executor: SocketAddr,
    drain: watch::Receiver<bool>,
) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut conns = JoinSet::new();
    let mut stop = drain.clone();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    conns.spawn(connection(s, state.clone(), executor, drain.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = wait_true(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn connection(
    caller: TcpStream,
    state: Arc<State>,
    executor: SocketAddr,
    mut drain: watch::Receiver<bool>,
) {
    let _ = caller.set_nodelay(true);
    // A caller that comes before the Executor serves waits for it, as with the gRPC proxy.
    if state.wait_ready().await.is_err() {
        return;
    }
    let exec = match TcpStream::connect(executor).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(executor = %state.executor, replica = %state.replica, error = %e,
                "cannot reach the Executor; closing the caller's connection");
            return;
        }
    };
    let _ = exec.set_nodelay(true);
    let conn = Arc::new(Conn {
        state,
        open: Mutex::new(HashMap::new()),
        acked: AtomicBool::new(false),
        opaque: AtomicBool::new(false),
        changed: Notify::new(),
    });
    let (caller_r, caller_w) = caller.into_split();
    let (exec_r, exec_w) = exec.into_split();
    // Two tasks, one per direction: a write that waits on one peer must never stop the other
    // direction from being read, or two full buffers would wait on each other.
    let mut to_exec = tokio::spawn(pump(
        caller_r,
        exec_w,
        Scanner::new(Side::Caller),
        conn.clone(),
        None,
    ));
    let mut to_caller = tokio::spawn(pump(
        exec_r,
        caller_w,
        Scanner::new(Side::Executor),
        conn.clone(),
        Some(drain.clone()),
    ));
    let mut caller_done = false;
    let mut draining = false;
    loop {
        tokio::select! {
            // The Executor's side ending ends the connection.
            _ = &mut to_caller => break,
            // The caller closing is passed on (the pump shuts the Executor's side down); the
            // Executor then closes too.
            _ = &mut to_exec, if !caller_done => caller_done = true,
            _ = wait_true(&mut drain), if !draining => draining = true,
            _ = async {
                // A caller that never answers the PING is assumed to have read the GOAWAY.
                let _ = tokio::time::timeout(DRAIN_ACK_WAIT, async {
                    while !conn.acked.load(Ordering::Acquire) { conn.changed.notified().await }
                }).await;
                conn.acked.store(true, Ordering::Release);
                conn.drained().await
            }, if draining => break,
        }
    }
    to_exec.abort();
    to_caller.abort();
    conn.close();
}

/// Resolves once the flag is set (or its sender is gone), holding no borrow of it.
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

/// Copies one direction, frame by frame (whole frames only, so the shim's own frames can go in
/// between), reading each frame as it passes.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    scanner: Scanner,
    conn: Arc<Conn>,
    mut drain: Option<watch::Receiver<bool>>,
) -> std::io::Result<()> {
    let mut scanner = Some(scanner);
    let mut buf = BytesMut::with_capacity(32 * 1024);
    let mut events = Vec::new();
    let mut forward = Vec::new();
    loop {
        if buf.capacity() - buf.len() < 8 * 1024 {
            buf.reserve(32 * 1024);
        }
        let n = tokio::select! {
            r = from.read_buf(&mut buf) => r?,
            true = async {
                match drain.as_mut() {
                    Some(rx) => { wait_true(rx).await; true }
                    None => std::future::pending().await,
                }
            } => {
                drain = None;
                // Between reads only whole frames have been written, so this is a frame boundary.
                if !conn.opaque.load(Ordering::Acquire) {
                    to.write_all(&drain_frames()).await?;
                }
                continue;
            }
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let done = match scanner.as_mut() {
            Some(s) => match s.scan(&buf, &mut events, &mut forward) {
                Ok(done) => done,
                Err(NotHttp2) => {
                    tracing::debug!("caller does not speak HTTP/2: forwarding its bytes unread");
                    conn.opaque.store(true, Ordering::Release);
                    scanner = None;
                    forward.clear();
                    forward.push(0..buf.len());
                    buf.len()
                }
            },
            None => {
                forward.push(0..buf.len());
                buf.len()
            }
        };
        if !events.is_empty() {
            conn.handle(&mut events);
        }
        for r in forward.drain(..) {
            to.write_all(&buf[r]).await?;
        }
        buf.advance(done);
    }
}

#[cfg(test)]
mod tests;
