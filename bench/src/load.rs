//! The load generator: `concurrency` tasks, each sending unary `process_single_data` calls back to
//! back over a few shared HTTP/2 channels, checking every answer (gRPC OK, no ERROR status, the
//! request_id it sent) and recording its latency.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

use crate::procs::proc_cpu;
use zeroflow_proto::docarray::{DocListProto, DocProto, NodeProto, node_proto};
use zeroflow_proto::jina::jina_single_data_request_rpc_client::JinaSingleDataRequestRpcClient;
use zeroflow_proto::jina::{DataContentProto, data_content_proto};
use zeroflow_proto::{DataRequestProto, HeaderProto, MAX_MESSAGE_SIZE};

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub concurrency: usize,
    pub channels: usize,
    pub warmup: u64,
    pub requests: u64,
}

/// What one measured phase gave.
pub struct LoadResult {
    pub hist: Histogram<u64>,
    pub elapsed: Duration,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// CPU time the servers under test used during the measured phase.
    pub server_cpu: Duration,
    /// CPU time this process (the load generator) used during the measured phase.
    pub client_cpu: Duration,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// CPU microseconds per answered request.
    pub fn cpu_per_req_us(cpu: Duration, ok: u64) -> f64 {
        cpu.as_secs_f64() * 1e6 / ok.max(1) as f64
    }
}

/// One small document, the way `jina.Client` sends a `TextDoc(text='hello')`: `id` and `text`.
pub fn small_data() -> Bytes {
    let node = |text: &str, ty: Option<&str>| NodeProto {
        content: Some(node_proto::Content::Text(text.to_string())),
        docarray_type: ty.map(|t| node_proto::DocarrayType::Type(t.to_string())),
    };
    let doc = DocProto {
        data: HashMap::from([
            (
                "id".to_string(),
                node("4f0d1c9e7a2b4c3d8e9f0a1b2c3d4e5f", Some("id")),
            ),
            ("text".to_string(), node("hello", None)),
        ]),
    };
    let content = DataContentProto {
        documents: Some(data_content_proto::Documents::Docs(DocListProto {
            docs: vec![doc],
        })),
    };
    content.encode_to_vec().into()
}

/// Opens `n` HTTP/2 connections to `url` (each a separate TCP connection).
pub async fn connect(url: &str, n: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ch = Endpoint::from_shared(url.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connect to {url}"))?;
        out.push(ch);
    }
    Ok(out)
}

/// Runs `warmup` unrecorded requests, then `requests` recorded ones, at fixed concurrency.
/// `server_cpu` reads the CPU time of the servers under test; it is sampled around the measured
/// phase only.
pub async fn run(
    url: &str,
    cfg: &LoadConfig,
    server_cpu: &dyn Fn() -> Duration,
) -> Result<LoadResult> {
    let channels = connect(url, cfg.channels.max(1)).await?;
    let data = small_data();
    if cfg.warmup > 0 {
        let warm = phase(&channels, &data, cfg.concurrency, cfg.warmup, "w").await?;
        if warm.errors > 0 {
            bail!(
                "{} of {} warm-up requests to {url} failed; first: {}",
                warm.errors,
                cfg.warmup,
                warm.first_error.unwrap_or_default()
            );
        }
    }
    let (server0, client0) = (server_cpu(), proc_cpu(std::process::id()));
    let mut result = phase(&channels, &data, cfg.concurrency, cfg.requests, "m").await?;
    result.server_cpu = server_cpu().saturating_sub(server0);
    result.client_cpu = proc_cpu(std::process::id()).saturating_sub(client0);
    Ok(result)
}

async fn phase(
    channels: &[Channel],
    data: &Bytes,
    concurrency: usize,
    total: u64,
    tag: &'static str,
) -> Result<LoadResult> {
    // Workers take request numbers from one counter until `total` are issued, so the count is exact
    // whatever the speed of each worker.
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency.max(1) {
        let mut client = JinaSingleDataRequestRpcClient::new(channels[w % channels.len()].clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let next = next.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                // 32 characters, like the uuid hex jina.Client sends.
                let request_id = format!("{tag}{n:031x}");
                let req = DataRequestProto {
                    header: Some(HeaderProto {
                        request_id: request_id.clone(),
                        exec_endpoint: Some("/".to_string()),
                        ..Default::default()
                    }),
                    data: data.clone(),
                    ..Default::default()
                };
                let t0 = Instant::now();
                let res = client.process_single_data(req).await;
                let took = t0.elapsed();
                match check(res, &request_id) {
                    Ok(()) => {
                        ok += 1;
                        let _ = hist.record(took.as_nanos() as u64);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (hist, ok, errors, first_error)
        }));
    }
    let mut result = LoadResult {
        hist: new_hist(),
        elapsed: Duration::ZERO,
        ok: 0,
        errors: 0,
        first_error: None,
        server_cpu: Duration::ZERO,
        client_cpu: Duration::ZERO,
    };
    for t in tasks {
        let (hist, ok, errors, first_error) = t.await.context("load worker panicked")?;
        result.hist.add(&hist).context("merge histograms")?;
        result.ok += ok;
        result.errors += errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    result.elapsed = start.elapsed();
    Ok(result)
}

pub fn check(
    res: Result<tonic::Response<DataRequestProto>, tonic::Status>,
    sent: &str,
) -> Result<(), String> {
    let resp = res.map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()))?;
    let resp = resp.into_inner();
    if resp.is_error() {
        return Err(format!(
            "ERROR status: {}",
            resp.header
                .and_then(|h| h.status)
                .map(|s| s.description)
                .unwrap_or_default()
        ));
    }
    let got = resp.header.map(|h| h.request_id).unwrap_or_default();
    if got != sent {
        return Err(format!("request_id {got:?} in the answer to {sent:?}"));
    }
    if resp.data.is_empty() {
        return Err(format!("no documents in the answer to {sent:?}"));
    }
    Ok(())
}

/// Nanoseconds from 1 µs to 60 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}
