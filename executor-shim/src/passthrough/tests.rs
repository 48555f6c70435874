use super::*;
use httlib_hpack::Encoder;
use proptest::prelude::*;

const SINGLE: &str = "/jina.JinaSingleDataRequestRPC/process_single_data";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block as h2 writes one: each field added to the dynamic table and Huffman-coded,
/// so later blocks refer to earlier ones.
fn block(enc: &mut Encoder, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in headers {
        let flags = Encoder::BEST_FORMAT
            | Encoder::WITH_INDEXING
            | Encoder::HUFFMAN_NAME
            | Encoder::HUFFMAN_VALUE;
        let field = (n.as_bytes().to_vec(), v.as_bytes().to_vec(), flags);
        enc.encode(field, &mut out).expect("encodable");
    }
    out
}

fn request_headers(path: &str, proxied: bool) -> Vec<(&str, &str)> {
    let mut h = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];
    if proxied {
        h.push((PROXIED_HEADER, "1"));
    }
    h
}

/// What a caller sends for two unary calls on streams 1 and 3 (one through the activator).
fn caller_bytes() -> Vec<u8> {
    let mut enc = Encoder::default();
    let mut b = PREFACE.to_vec();
    b.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    let h1 = block(&mut enc, &request_headers(SINGLE, true));
    b.extend(frame(HEADERS, END_HEADERS, 1, &h1));
    b.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 2, 8, 1]));
    // Stream 3: the same headers again (now from the dynamic table), split over a padded,
    // prioritized HEADERS and a CONTINUATION.
    let h3 = block(
        &mut enc,
        &request_headers("/jina.JinaDiscoverEndpointsRPC/endpoint_discovery", false),
    );
    let (a, c) = h3.split_at(h3.len() / 2);
    let mut p = vec![3u8]; // pad length
    p.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
    p.extend_from_slice(a);
    p.extend_from_slice(&[0, 0, 0]);
    b.extend(frame(HEADERS, PADDED | PRIORITY, 3, &p));
    b.extend(frame(CONTINUATION, END_HEADERS, 3, c));
    b.extend(frame(DATA, END_STREAM, 3, &[0, 0, 0, 0, 0]));
    b
}

/// The Executor's answers: stream 1 OK (headers, data, trailers), stream 3 a trailers-only
/// UNAVAILABLE, then a reset of stream 5.
fn executor_bytes() -> Vec<u8> {
    let mut enc = Encoder::default();
    let mut b = frame(0x4, 0, 0, &[]);
    let h = block(
        &mut enc,
        &[(":status", "200"), ("content-type", "application/grpc")],
    );
    b.extend(frame(HEADERS, END_HEADERS, 1, &h));
    b.extend(frame(DATA, 0, 1, &[0, 0, 0, 0, 2, 8, 1]));
    let t = block(&mut enc, &[("grpc-status", "0")]);
    b.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &t));
    let t = block(
        &mut enc,
        &[
            (":status", "200"),
            ("grpc-status", "14"),
            ("grpc-message", "no"),
        ],
    );
    b.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &t));
    b.extend(frame(RST_STREAM, 0, 5, &[0, 0, 0, 8]));
    b
}

/// Feeds `bytes` to a scanner in `chunks` (sizes, cycled), as a socket would deliver them,
/// keeping what was not consumed; returns the events and the bytes forwarded.
fn feed(side: Side, bytes: &[u8], chunks: &[usize]) -> (Vec<Event>, Vec<u8>) {
    let mut s = Scanner::new(side);
    let mut buf = Vec::new();
    let mut events = vec![];
    let mut out = vec![];
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let n = chunks[i % chunks.len()].max(1).min(bytes.len() - pos);
        i += 1;
        buf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        let mut fwd = vec![];
        let done = s.scan(&buf, &mut events, &mut fwd).expect("http/2");
        for r in fwd {
            assert!(r.end <= done, "only whole frames are forwarded");
            out.extend_from_slice(&buf[r]);
        }
        buf.drain(..done);
    }
    assert!(buf.is_empty(), "{} bytes left unscanned", buf.len());
    (events, out)
}

#[test]
fn requests_are_seen_with_their_method_and_the_activator_mark() {
    let bytes = caller_bytes();
    let (events, out) = feed(Side::Caller, &bytes, &[bytes.len()]);
    assert_eq!(out, bytes, "every byte is forwarded as it came");
    assert_eq!(
        events,
        vec![
            Event::Request {
                stream: 1,
                path: Some(SINGLE.into()),
                proxied: true
            },
            Event::Request {
                stream: 3,
                path: Some("/jina.JinaDiscoverEndpointsRPC/endpoint_discovery".into()),
                proxied: false
            },
        ]
    );
}

#[test]
fn answers_carry_their_grpc_status() {
    let bytes = executor_bytes();
    let (events, out) = feed(Side::Executor, &bytes, &[bytes.len()]);
    assert_eq!(out, bytes);
    assert_eq!(
        events,
        vec![
            Event::Answered {
                stream: 1,
                status: Some(0)
            },
            Event::Answered {
                stream: 3,
                status: Some(14)
            },
            Event::Reset { stream: 5 },
        ]
    );
}

#[test]
fn bytes_split_anywhere_give_the_same_events_and_bytes() {
    for side in [Side::Caller, Side::Executor] {
        let bytes = if side == Side::Caller {
            caller_bytes()
        } else {
            executor_bytes()
        };
        let (whole, _) = feed(side, &bytes, &[bytes.len()]);
        for size in 1..20 {
            let (events, out) = feed(side, &bytes, &[size]);
            assert_eq!(events, whole, "{side:?} in chunks of {size}");
            assert_eq!(out, bytes, "{side:?} in chunks of {size}");
        }
    }
}

#[test]
fn the_drain_ping_ack_is_taken_out_and_other_pings_pass() {
    let mut b = PREFACE.to_vec();
    let theirs = frame(PING, ACK, 0, b"12345678");
    let ours = frame(PING, ACK, 0, &DRAIN_PING);
    b.extend(&theirs);
    b.extend(&ours);
    b.extend(frame(PING, 0, 0, &DRAIN_PING)); // not an ACK: the caller's own ping, passes
    let (events, out) = feed(Side::Caller, &b, &[b.len()]);
    assert_eq!(events, vec![Event::DrainAck]);
    let mut want = PREFACE.to_vec();
    want.extend(&theirs);
    want.extend(frame(PING, 0, 0, &DRAIN_PING));
    assert_eq!(out, want);
}

#[test]
fn a_caller_that_is_not_http2_is_told_apart() {
    let mut s = Scanner::new(Side::Caller);
    let (mut e, mut f) = (vec![], vec![]);
    assert_eq!(s.scan(b"GET / HTTP/1.1\r\n", &mut e, &mut f), Err(NotHttp2));
    // A preface that arrives a byte at a time is still a preface.
    let mut s = Scanner::new(Side::Caller);
    for i in 0..PREFACE.len() {
        assert_eq!(s.scan(&PREFACE[i..i + 1], &mut e, &mut f), Ok(1));
    }
}

#[test]
fn undecodable_headers_still_count_and_pass() {
    let mut b = PREFACE.to_vec();
    // Index 200 is in neither table.
    b.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0x49]));
    b.extend(frame(HEADERS, END_HEADERS, 3, &[0x82]));
    let (events, out) = feed(Side::Caller, &b, &[b.len()]);
    assert_eq!(out, b);
    assert_eq!(
        events,
        vec![
            Event::Request {
                stream: 1,
                path: None,
                proxied: false
            },
            // Once a block fails, later ones are not decoded (the tables may be out of step).
            Event::Request {
                stream: 3,
                path: None,
                proxied: false
            },
        ]
    );
}

#[test]
fn the_drain_frames_are_a_goaway_and_a_ping() {
    let f = drain_frames();
    let (events, out) = feed(Side::Executor, &f, &[f.len()]);
    assert!(events.is_empty());
    assert_eq!(out, f);
    assert_eq!(f[3], GOAWAY);
    assert_eq!(&f[9..13], &0x7fff_ffffu32.to_be_bytes());
    assert_eq!(f[17 + 3], PING);
}

proptest! {
    /// Whatever follows the preface, split however: no panic, and what is forwarded is exactly
    /// what was consumed, in order.
    #[test]
    fn any_bytes_are_forwarded_unchanged(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        chunks in proptest::collection::vec(1usize..64, 1..8),
        side in prop_oneof![Just(Side::Caller), Just(Side::Executor)],
    ) {
        let mut bytes = if side == Side::Caller { PREFACE.to_vec() } else { vec![] };
        bytes.extend(&body);
        let mut s = Scanner::new(side);
        let mut buf = Vec::new();
        let mut consumed = Vec::new();
        let mut out = Vec::new();
        let (mut events, mut fwd) = (vec![], vec![]);
        let mut pos = 0;
        let mut i = 0;
        while pos < bytes.len() {
            let n = chunks[i % chunks.len()].min(bytes.len() - pos);
            i += 1;
            buf.extend_from_slice(&bytes[pos..pos + n]);
            pos += n;
            let done = s.scan(&buf, &mut events, &mut fwd).expect("the preface is right");
            prop_assert!(done <= buf.len());
            for r in fwd.drain(..) {
                out.extend_from_slice(&buf[r]);
            }
            consumed.extend_from_slice(&buf[..done]);
            buf.drain(..done);
        }
        // Only the shim's own PING ACK may be taken out, and random bytes are unlikely to
        // hold one; when they do, the rest must still match.
        if !events.contains(&Event::DrainAck) {
            prop_assert_eq!(out, consumed);
        }
    }
}
