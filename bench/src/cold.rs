//! The scale-to-zero scenarios.
//!
//! - **cold**: the first request to an Executor at zero replicas, from the moment it is sent to its
//!   answer, next to the same Executor command started alone and polled every millisecond until
//!   gRPC health says SERVING. The difference is what Zeroflow adds to a cold start (activator
//!   queue and poke, autoscaler decision, runtime spawning the shim, the shim spawning and probing
//!   the Executor, the release of the queued request and its first trip through the shim).
//!   For a Python `jina executor` the replica is a fork of jc's zygote, which has imported jina
//!   already: the "overhead" is then negative (Zeroflow wakes it faster than it starts alone),
//!   and the same Executor started by its shim (`ZEROFLOW_ZYGOTE=0`) is measured next to it.
//! - **burst**: many concurrent requests to a cold Flow at once: every one must be answered; the
//!   peak memory of `jc` (gateway + activator + autoscaler in one process) and the time until the
//!   last answer are reported.

use crate::jc::{self, Jc, numbers_after};
use crate::load::{self, check, new_hist, small_data};
use crate::procs::{self, Proc, Stop, free_port};
use crate::{md_table, verdict, wait_serving};
use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use zeroflow_proto::jina::jina_single_data_request_rpc_client::JinaSingleDataRequestRpcClient;
use zeroflow_proto::{DataRequestProto, HeaderProto, MAX_MESSAGE_SIZE};

/// Zeroflow's cold-start overhead over the Executor's own start, at most (p50, p99).
const TARGET_OVERHEAD_P50_MS: f64 = 20.0;
const TARGET_OVERHEAD_P99_MS: f64 = 50.0;
/// Peak resident memory of the process holding the activator during the burst, at most.
const TARGET_BURST_RSS_MIB: f64 = 64.0;
/// After `jc` has printed its endpoints and answers health, before the measured request: lets
/// jc's own start-up work (first autoscaler tick, endpoint discovery) finish so that it does not
/// compete for the 2 cores with the cold start being measured.
const SETTLE: Duration = Duration::from_millis(300);
/// The shortest stable window JCloud accepts; with `scale-to-zero-grace-period=1s` an idle
/// Executor is back at zero about 7-8 s after its last request (the `rezero` mode).
const FLOW_WINDOWS: &str = "stable_window: 6s\n        scale_down_delay: 0s";
const GRACE: [&str; 2] = ["--autoscaler", "scale-to-zero-grace-period=1s"];

/// How each cold start gets an Executor at zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColdMode {
    /// A fresh `jc flow serve` per cold start (the Executor starts at zero; about 1-2 s a run).
    Fresh,
    /// One `jc flow serve`; wait until it has scaled the Executor back to zero between runs
    /// (stable window 6 s + grace 1 s: about 8 s a run).
    Rezero,
}

pub struct Bins {
    pub jc: PathBuf,
    pub executor: PathBuf,
    pub jina: Option<PathBuf>,
    pub dir: PathBuf,
}

/// One Executor kind under test.
struct Kind {
    tag: &'static str,
    /// Column heading.
    short: &'static str,
    label: &'static str,
    flow: String,
    /// The command the shim would run, `{port}` for the port (the shim also sets
    /// ZEROFLOW_EXECUTOR_PORT and JINA_OPTOUT_TELEMETRY=1).
    alone: Vec<String>,
    cwd: PathBuf,
    jc_env: Vec<(&'static str, OsString)>,
    runs: usize,
    startup_deadline: Duration,
}

fn kinds(bins: &Bins, runs_rust: usize, runs_python: usize) -> Result<Vec<Kind>> {
    let mut out = vec![Kind {
        tag: "rust",
        short: "Rust",
        label: "Rust `zeroflow-test-executor`",
        flow: format!(
            "jtype: Flow\nexecutors:\n  - name: exec\n    command: zeroflow-test-executor\n    \
             jcloud:\n      autoscale:\n        min: 0\n        max: 1\n        {FLOW_WINDOWS}\n"
        ),
        alone: vec![bins.executor.to_string_lossy().into_owned()],
        cwd: bins.dir.clone(),
        jc_env: vec![],
        runs: runs_rust,
        startup_deadline: Duration::from_secs(30),
    }];
    if let Some(jina) = &bins.jina
        && runs_python > 0
    {
        let config = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/python/executors/appender.yml")
            .canonicalize()
            .context("tests/python/executors/appender.yml")?;
        let jina = jina.canonicalize()?;
        // jc finds `jina` through ZEROFLOW_JINA; PATH too, for anything the Executor runs.
        let path = std::env::join_paths(
            std::iter::once(jina.parent().unwrap_or(Path::new("/")).to_path_buf()).chain(
                std::env::var_os("PATH")
                    .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                    .unwrap_or_default(),
            ),
        )?;
        out.push(Kind {
            tag: "python",
            short: "Python",
            label: "Python `jina executor` (appender.yml)",
            flow: format!(
                "jtype: Flow\nexecutors:\n  - name: exec\n    uses: {}\n    jcloud:\n      \
                 autoscale:\n        min: 0\n        max: 1\n        {FLOW_WINDOWS}\n",
                config.display()
            ),
            // What the runtime's executor_command gives for `uses: CONFIG.yml`.
            alone: [
                jina.to_string_lossy().as_ref(),
                "executor",
                "--uses",
                config.to_string_lossy().as_ref(),
                "--name",
                "exec",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--native",
            ]
            .map(String::from)
            .to_vec(),
            cwd: bins.dir.clone(),
            jc_env: vec![
                ("ZEROFLOW_JINA", jina.clone().into_os_string()),
                ("PATH", path.clone()),
            ],
            runs: runs_python,
            startup_deadline: Duration::from_secs(120),
        });
        // The same, each replica a `jina executor` of its own (no zygote): the peer of the row
        // above, in the same run.
        let zygote = &out[1];
        let own = Kind {
            tag: "python-exec",
            short: "Python, no zygote",
            label: "Python `jina executor` started by its shim (ZEROFLOW_ZYGOTE=0)",
            flow: zygote.flow.clone(),
            alone: zygote.alone.clone(),
            cwd: zygote.cwd.clone(),
            jc_env: vec![
                ("ZEROFLOW_JINA", jina.into_os_string()),
                ("PATH", path),
                ("ZEROFLOW_ZYGOTE", "0".into()),
            ],
            runs: runs_python,
            startup_deadline: Duration::from_secs(120),
        };
        out.push(own);
    }
    Ok(out)
}

/// What one cold start gave.
#[derive(Default, Clone, Debug)]
pub(crate) struct ColdSample {
    /// First request sent → its answer, through `jc` with the Executor at zero.
    pub(crate) first: Duration,
    /// The same Executor command started alone → gRPC health SERVING (polled every 1 ms).
    pub(crate) alone: Duration,
    /// The same, spawn → the answer to a first request sent right after SERVING.
    alone_first: Duration,
    /// Request sent → jc printed `scaling 0 -> 1` (activator queue + poke + decision).
    to_decision: Option<Duration>,
    /// Request sent → jc printed `replica .. ready in N ms` (the runtime saw the ready line).
    to_ready: Option<Duration>,
    /// The N of `ready in N ms`: the runtime's spawn of the shim → the shim's ready line.
    pub(crate) runtime_ready_ms: Option<u64>,
    /// The shim's `startup_ms`: its spawn of the Executor → health SERVING.
    pub(crate) shim_startup_ms: Option<u64>,
    /// The activator's `cold_start_ms`: first request queued → a replica added.
    activator_ms: Option<u64>,
    /// CPU time of `jc` itself (gateway, activator, autoscaler, runtime) from the request sent
    /// until both its answer and the ready line are in, net of jc's idle rate over the settle
    /// pause before it (ms, from /proc schedstat).
    pub(crate) jc_cpu_ms: Option<f64>,
    /// CPU time of the replica's processes (the shim and the Executor) from their start until
    /// the same moment (ms).
    pub(crate) replica_cpu_ms: Option<f64>,
}

impl ColdSample {
    /// Over the Executor's own start → SERVING (the definition).
    fn overhead(&self) -> f64 {
        ms(self.first) - ms(self.alone)
    }

    /// Over the Executor's own start → SERVING → first answer: what Zeroflow alone adds.
    fn overhead_first(&self) -> f64 {
        ms(self.first) - ms(self.alone_first)
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of `v` (q in 0..=1); NaN when empty.
pub(crate) fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The Rust test Executor's cold starts through `jc flow serve` (min 0), measured exactly as
/// `--scenario cold` measures them: what `--scenario kube-cold` puts next to the cluster's
/// figures, in the same run. The second value lists the wrong answers.
pub(crate) async fn local_rust(
    bins: &Bins,
    runs: usize,
    mode: ColdMode,
) -> Result<(Vec<ColdSample>, Vec<String>)> {
    let kind = kinds(bins, runs, 0)?.remove(0);
    eprintln!("local: {} ({runs} runs, mode {mode:?})", kind.label);
    match mode {
        ColdMode::Fresh => cold_fresh(bins, &kind).await,
        ColdMode::Rezero => cold_rezero(bins, &kind).await,
    }
}

pub struct ColdOptions {
    pub runs_rust: usize,
    pub runs_python: usize,
    pub mode: ColdMode,
}

/// The cold scenario for every Executor kind: the report (markdown) and whether every answer was
/// right.
pub async fn cold(bins: &Bins, opts: &ColdOptions) -> Result<(String, bool)> {
    let mut out = String::new();
    let load = loadavg();
    let _ = writeln!(
        out,
        "\nCold scenario: the first request to an Executor at zero replicas (`jcloud.autoscale` \
         min 0, max 1), one unary `process_single_data` with one small document, timed from \
         sending it (jc running, its endpoints printed, the client connected) to its answer; \
         \"alone\": the same Executor command started by the bench and polled every 1 ms (TCP \
         connect, then gRPC health) until SERVING, timed from spawn. Mode `{}` ({}). Percentiles \
         are nearest-rank (with 20 runs p99 is the maximum). {} cores, load average before {load}.",
        format!("{:?}", opts.mode).to_lowercase(),
        match opts.mode {
            ColdMode::Fresh => "a fresh `jc flow serve` per cold start",
            ColdMode::Rezero =>
                "one `jc flow serve`, waiting for scale to zero between cold starts",
        },
        cores()
    );
    let mut all_ok = true;
    let mut header = vec!["per cold start".to_string()];
    let mut columns: Vec<Vec<String>> = vec![];
    let mut breakdowns = String::new();
    let mut verdicts = String::new();
    for kind in kinds(bins, opts.runs_rust, opts.runs_python)? {
        if kind.runs == 0 {
            continue;
        }
        eprintln!(
            "cold: {} ({} runs, mode {:?})",
            kind.label, kind.runs, opts.mode
        );
        let (samples, errors) = match opts.mode {
            ColdMode::Fresh => cold_fresh(bins, &kind).await?,
            ColdMode::Rezero => cold_rezero(bins, &kind).await?,
        };
        if !errors.is_empty() {
            all_ok = false;
            eprintln!(
                "error: cold {}: {} wrong answers; first: {}",
                kind.tag,
                errors.len(),
                errors[0]
            );
        }
        let over: Vec<f64> = samples.iter().map(ColdSample::overhead).collect();
        let metrics: [Vec<f64>; 6] = [
            samples.iter().map(|s| ms(s.first)).collect(),
            samples.iter().map(|s| ms(s.alone)).collect(),
            samples.iter().map(|s| ms(s.alone_first)).collect(),
            over.clone(),
            samples.iter().map(ColdSample::overhead_first).collect(),
            samples
                .iter()
                .filter_map(|s| Some(ms(s.first) - s.shim_startup_ms? as f64))
                .collect(),
        ];
        for q in [0.5, 0.99] {
            header.push(format!(
                "{} {} ms",
                kind.short,
                if q == 0.5 { "p50" } else { "p99" }
            ));
            let mut col: Vec<String> = metrics
                .iter()
                .map(|v| format!("{:.1}", pct(v, q)))
                .collect();
            col.push(format!("{}", samples.len()));
            col.push(format!("{}", errors.len()));
            columns.push(col);
        }
        let (p50, p99) = (pct(&over, 0.5), pct(&over, 0.99));
        let (s50, s99) = (pct(&metrics[5], 0.5), pct(&metrics[5], 0.99));
        let _ = writeln!(
            verdicts,
            "- {}: Zeroflow's cold-start overhead, paired, p50 **{p50:.1} ms** (target ≤ \
             {TARGET_OVERHEAD_P50_MS} ms: {}), p99 **{p99:.1} ms** (target ≤ \
             {TARGET_OVERHEAD_P99_MS} ms: {}); p50(first answer) − p50(alone SERVING) = {:.1} \
             ms; same run (first answer − shim `startup_ms`, includes the Executor's own first \
             request): p50 {s50:.1} ms ({}), p99 {s99:.1} ms ({}); alone spawn → SERVING spread: \
             {:.1}–{:.1} ms",
            kind.label,
            verdict(p50 <= TARGET_OVERHEAD_P50_MS),
            verdict(p99 <= TARGET_OVERHEAD_P99_MS),
            pct(&metrics[0], 0.5) - pct(&metrics[1], 0.5),
            verdict(s50 <= TARGET_OVERHEAD_P50_MS),
            verdict(s99 <= TARGET_OVERHEAD_P99_MS),
            pct(&metrics[1], 0.0),
            pct(&metrics[1], 1.0),
        );
        breakdowns.push_str(&breakdown(&kind, &samples));
    }
    let labels = [
        "first request → answer, Executor at zero (through `jc`)",
        "Executor alone: spawn → SERVING",
        "Executor alone: spawn → SERVING → first answer",
        "**overhead** = first answer − alone SERVING (paired per run)",
        "overhead over alone first answer (paired per run)",
        "first answer − the shim's `startup_ms` (same run)",
        "runs",
        "wrong answers",
    ];
    let mut table = vec![header];
    for (r, label) in labels.iter().enumerate() {
        let mut row = vec![label.to_string()];
        row.extend(columns.iter().map(|c| c[r].clone()));
        table.push(row);
    }
    out.push('\n');
    out.push_str(&md_table(table));
    out.push('\n');
    out.push_str(&verdicts);
    out.push_str(&breakdowns);
    Ok((out, all_ok))
}

/// Where the time of a cold start goes, from jc's printed events (timestamped when the bench read
/// them) and the shim's and activator's log lines.
fn breakdown(kind: &Kind, samples: &[ColdSample]) -> String {
    let opt = |f: &dyn Fn(&ColdSample) -> Option<f64>| -> Vec<f64> {
        samples.iter().filter_map(f).collect::<Vec<_>>()
    };
    let rows: Vec<(&str, Vec<f64>)> = vec![
        (
            "request sent → `scaling 0 -> 1` printed (activator queue, poke, autoscaler decision)",
            opt(&|s| s.to_decision.map(ms)),
        ),
        (
            "`scaling` printed → runtime spawns the shim (reconcile)",
            opt(&|s| Some(ms(s.to_ready?) - s.runtime_ready_ms? as f64 - ms(s.to_decision?))),
        ),
        (
            "shim spawned → Executor spawned, and ready line → runtime (`ready in` − shim `startup_ms`)",
            opt(&|s| Some(s.runtime_ready_ms? as f64 - s.shim_startup_ms? as f64)),
        ),
        (
            "shim: Executor spawned → SERVING seen (shim `startup_ms`)",
            opt(&|s| s.shim_startup_ms.map(|v| v as f64)),
        ),
        (
            "same Executor alone: spawn → SERVING (1 ms polls)",
            samples.iter().map(|s| ms(s.alone)).collect(),
        ),
        (
            "runtime: shim spawn → ready line read (`ready in N ms`)",
            opt(&|s| s.runtime_ready_ms.map(|v| v as f64)),
        ),
        (
            "`ready in` printed → answer received (release, first call via the shim)",
            opt(&|s| Some(ms(s.first) - ms(s.to_ready?))),
        ),
        (
            "activator `cold_start_ms` (first request queued → replica added)",
            opt(&|s| s.activator_ms.map(|v| v as f64)),
        ),
        (
            "total: request sent → answer",
            samples.iter().map(|s| ms(s.first)).collect(),
        ),
    ];
    let mut table = vec![vec![
        "step".to_string(),
        "n".into(),
        "p50 ms".into(),
        "min ms".into(),
        "max ms".into(),
    ]];
    for (label, v) in rows {
        let f1 = |x: f64| {
            if x.is_nan() {
                "–".to_string()
            } else {
                format!("{x:.1}")
            }
        };
        table.push(vec![
            label.to_string(),
            v.len().to_string(),
            f1(pct(&v, 0.5)),
            f1(pct(&v, 0.0)),
            f1(pct(&v, 1.0)),
        ]);
    }
    let mut out = format!(
        "\nWhere the time goes, {} (jc's events are printed with ms resolution; the shim's and \
         the activator's log values are whole ms):\n\n",
        kind.label
    );
    out.push_str(&md_table(table));
    out
}

/// One `jc flow serve` per cold start.
async fn cold_fresh(bins: &Bins, kind: &Kind) -> Result<(Vec<ColdSample>, Vec<String>)> {
    let mut samples = vec![];
    let mut errors = vec![];
    // Run 0 is a warm-up, not recorded: the first start of a program after a while pays for the
    // page cache (for Python, seconds). The order alternates so that neither side always runs
    // right after the other's shutdown.
    for i in 0..=kind.runs {
        let alone_first_in_run = i % 2 == 0;
        let mut alone_times = None;
        if alone_first_in_run {
            alone_times = Some(alone(bins, kind, i).await?);
        }
        let name = format!("cold-{}-{i}", kind.tag);
        let mut jc =
            jc::start(&bins.jc, &bins.dir, &name, &kind.flow, &GRACE, &kind.jc_env).await?;
        wait_serving(&jc.grpc, &mut jc.proc, Duration::from_secs(30)).await?;
        let (mut sample, err) = first_request(&mut jc, kind).await?;
        let log = jc.log_path();
        drop(jc);
        // jc has stopped: its log (and its shims') is complete.
        let text = jc::strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
        sample.shim_startup_ms = numbers_after(&text, "startup_ms=").first().copied();
        sample.activator_ms = numbers_after(&text, "cold_start_ms=").first().copied();
        let (alone, alone_first) = match alone_times {
            Some(t) => t,
            None => alone(bins, kind, i).await?,
        };
        sample.alone = alone;
        sample.alone_first = alone_first;
        report_run(kind, i, &sample, err.as_deref());
        errors.extend(err);
        if i > 0 {
            samples.push(sample);
        }
    }
    Ok((samples, errors))
}

/// One `jc flow serve`; between cold starts, wait for the replica to be stopped again.
async fn cold_rezero(bins: &Bins, kind: &Kind) -> Result<(Vec<ColdSample>, Vec<String>)> {
    let name = format!("cold-{}-rezero", kind.tag);
    let mut jc = jc::start(&bins.jc, &bins.dir, &name, &kind.flow, &GRACE, &kind.jc_env).await?;
    wait_serving(&jc.grpc, &mut jc.proc, Duration::from_secs(30)).await?;
    let mut samples = vec![];
    let mut errors = vec![];
    // Run 0 is a warm-up, not recorded (see cold_fresh).
    for i in 0..=kind.runs {
        let (alone, alone_first) = alone(bins, kind, i).await?;
        let (mut sample, err) = first_request(&mut jc, kind).await?;
        sample.alone = alone;
        sample.alone_first = alone_first;
        let mut seen = vec![];
        if jc
            .wait_line(
                |l| l.contains(" stopped"),
                Duration::from_secs(90),
                &mut seen,
            )
            .await
            .is_none()
        {
            bail!(
                "the Executor was not scaled back to zero within 90 s; jc printed:\n{}",
                seen.iter()
                    .map(|(_, l)| l.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let text = jc.log_text();
        sample.shim_startup_ms = numbers_after(&text, "startup_ms=").get(i).copied();
        sample.activator_ms = numbers_after(&text, "cold_start_ms=").get(i).copied();
        report_run(kind, i, &sample, err.as_deref());
        errors.extend(err);
        if i > 0 {
            samples.push(sample);
        }
    }
    Ok((samples, errors))
}

fn report_run(kind: &Kind, i: usize, s: &ColdSample, err: Option<&str>) {
    eprintln!(
        "    {} #{i}{}: first answer {:.1} ms, alone {:.1} ms (first answer {:.1} ms), overhead \
         {:.1} ms (decision {:?}, ready in {:?} ms, shim startup {:?} ms, activator {:?} ms){}",
        kind.tag,
        if i == 0 { " (warm-up)" } else { "" },
        ms(s.first),
        ms(s.alone),
        ms(s.alone_first),
        s.overhead(),
        s.to_decision.map(|d| (ms(d) * 10.0).round() / 10.0),
        s.runtime_ready_ms,
        s.shim_startup_ms,
        s.activator_ms,
        err.map(|e| format!(": WRONG ANSWER {e}"))
            .unwrap_or_default()
    );
}

fn is_ready_line(l: &str) -> bool {
    l.contains(" ready in ") && l.contains(" ms")
}

/// Sends the first request to a jc whose Executor is at zero and times it; the second value is a
/// wrong answer, if it was one.
async fn first_request(jc: &mut Jc, kind: &Kind) -> Result<(ColdSample, Option<String>)> {
    let ch = load::connect(&jc.grpc, 1).await?.remove(0);
    let mut client = JinaSingleDataRequestRpcClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let pid = jc.pid();
    let (idle_from, idle_cpu) = (Instant::now(), procs::sched_cpu(pid));
    tokio::time::sleep(SETTLE).await;
    let early = jc.drain();
    if let Some((_, l)) = early.iter().find(|(_, l)| is_ready_line(l)) {
        bail!(
            "{}: a replica was running before the first request: {l}",
            kind.label
        );
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let request_id = format!("c{:031x}", NEXT.fetch_add(1, Ordering::Relaxed));
    let req = request(&request_id);
    let cpu0 = procs::sched_cpu(pid);
    let idle_rate = ms(cpu0.saturating_sub(idle_cpu)) / ms(idle_from.elapsed());
    let t0 = Instant::now();
    let res = tokio::time::timeout(kind.startup_deadline, client.process_single_data(req)).await;
    let first = t0.elapsed();
    let err = match res {
        Ok(r) => check(r, &request_id).err(),
        Err(_) => Some(format!("no answer within {:?}", kind.startup_deadline)),
    };
    let mut seen = jc.drain();
    if !seen.iter().any(|(_, l)| is_ready_line(l)) {
        jc.wait_line(is_ready_line, Duration::from_secs(5), &mut seen)
            .await;
    }
    let window = t0.elapsed();
    let jc_cpu_ms = ms(procs::sched_cpu(pid).saturating_sub(cpu0)) - idle_rate * ms(window);
    let replica_cpu_ms = procs::descendants(pid)
        .into_iter()
        .map(|p| ms(procs::sched_cpu(p)))
        .sum::<f64>();
    let after = |at: Instant| at.saturating_duration_since(t0);
    let to_decision = seen
        .iter()
        .find(|(_, l)| l.contains(": scaling 0 -> "))
        .map(|(at, _)| after(*at));
    let ready = seen.iter().find(|(_, l)| is_ready_line(l));
    let runtime_ready_ms = ready.and_then(|(_, l)| {
        l.split(" ready in ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    });
    Ok((
        ColdSample {
            first,
            to_decision,
            to_ready: ready.map(|(at, _)| after(*at)),
            runtime_ready_ms,
            jc_cpu_ms: Some(jc_cpu_ms),
            replica_cpu_ms: Some(replica_cpu_ms),
            ..Default::default()
        },
        err,
    ))
}

/// Starts the Executor command alone and times spawn → gRPC health SERVING, polling every 1 ms:
/// a TCP connect until the port is open, then health checks.
async fn alone(bins: &Bins, kind: &Kind, i: usize) -> Result<(Duration, Duration)> {
    let port = free_port()?;
    let argv: Vec<String> = kind
        .alone
        .iter()
        .map(|a| a.replace("{port}", &port.to_string()))
        .collect();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&kind.cwd)
        .env("ZEROFLOW_EXECUTOR_PORT", port.to_string())
        .env("JINA_OPTOUT_TELEMETRY", "1");
    // The environment the shim's child gets from jc.
    for (k, v) in &kind.jc_env {
        cmd.env(k, v);
    }
    let log = bins.dir.join(format!("alone-{}-{i}.log", kind.tag));
    let t0 = Instant::now();
    let mut p = Proc::spawn(
        &format!("{} alone", kind.tag),
        cmd,
        log,
        Stop::TerminateGroup,
        false,
    )?;
    let end = t0 + kind.startup_deadline;
    // Blocking 1 ms sleeps (tokio's timer would round up to 1-2 ms); this worker thread is
    // handed over to the blocking section so the runtime's other tasks go on.
    let open = tokio::task::block_in_place(|| -> Result<bool> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(true);
            }
            p.check_running()?;
            if Instant::now() >= end {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })?;
    let opened = t0.elapsed();
    if !open {
        bail!(
            "{} alone: port {port} not open after {:?}; its log:\n{}",
            kind.tag,
            kind.startup_deadline,
            p.log_tail()
        );
    }
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .tcp_nodelay(true)
        .connect_lazy();
    let mut health = HealthClient::new(ch.clone());
    loop {
        let r = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        if matches!(&r, Ok(resp) if resp.get_ref().status == ServingStatus::Serving as i32) {
            break;
        }
        p.check_running()?;
        if Instant::now() >= end {
            bail!(
                "{} alone: not SERVING after {:?} (last: {r:?}); its log:\n{}",
                kind.tag,
                kind.startup_deadline,
                p.log_tail()
            );
        }
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(1)));
    }
    let serving = t0.elapsed();
    // The first request to the fresh Executor (its own first-call cost: a Python Executor builds
    // its models on the first request), on the connection the health checks opened.
    let mut client = JinaSingleDataRequestRpcClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let request_id = format!("a{i:031x}");
    let res = client.process_single_data(request(&request_id)).await;
    let first = t0.elapsed();
    if let Err(e) = check(res, &request_id) {
        bail!("{} alone: wrong answer to the first request: {e}", kind.tag);
    }
    drop(p);
    eprintln!(
        "    {} alone #{i}: port open {:.1} ms, SERVING {:.1} ms, first answer {:.1} ms",
        kind.tag,
        ms(opened),
        ms(serving),
        ms(first)
    );
    Ok((serving, first))
}

pub(crate) fn request(request_id: &str) -> DataRequestProto {
    DataRequestProto {
        header: Some(HeaderProto {
            request_id: request_id.to_string(),
            exec_endpoint: Some("/".to_string()),
            ..Default::default()
        }),
        data: small_data(),
        ..Default::default()
    }
}

pub struct BurstOptions {
    pub requests: usize,
    pub max: u32,
    pub channels: usize,
    pub runs: usize,
}

struct BurstRun {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    first_answer: Duration,
    all_answered: Duration,
    hist: hdrhistogram::Histogram<u64>,
    replicas: usize,
    rss_before: u64,
    hwm: u64,
    rss_peak: u64,
    tree_peak: u64,
    /// The activator's `cold_start_ms` (first request queued → a replica added).
    cold_start_ms: Option<u64>,
}

/// The burst scenario: `requests` concurrent requests sent at once to a Flow whose Rust Executor is
/// at zero (min 0, max `max`), `runs` times, each with a fresh `jc flow serve`.
pub async fn burst(bins: &Bins, opts: &BurstOptions) -> Result<(String, bool)> {
    let flow = format!(
        "jtype: Flow\nexecutors:\n  - name: exec\n    command: zeroflow-test-executor\n    \
         jcloud:\n      autoscale:\n        min: 0\n        max: {}\n        metric: concurrency\n        \
         target: 100\n        {FLOW_WINDOWS}\n",
        opts.max
    );
    let load = loadavg();
    let mut runs = vec![];
    for r in 0..opts.runs {
        eprintln!(
            "burst #{r}: {} concurrent requests over {} connections to a cold Flow (max {})",
            opts.requests, opts.channels, opts.max
        );
        let run = burst_once(bins, &flow, opts, r).await?;
        eprintln!(
            "    {} ok, {} errors, all answered in {:.1} ms, {} replica(s), jc VmHWM {:.1} MiB",
            run.ok,
            run.errors,
            ms(run.all_answered),
            run.replicas,
            mib(run.hwm)
        );
        runs.push(run);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nBurst scenario: {} unary `process_single_data` requests sent at once over {} HTTP/2 \
         connections to a Flow whose Rust Executor is at zero (`jcloud.autoscale` min 0, max {}, \
         metric concurrency, target 100), a fresh `jc flow serve` per run; times from the first \
         send. Memory: `jc` (gateway, activator and autoscaler are one process) from \
         /proc/PID/status: VmRSS just before the burst, VmHWM (peak since jc started) after it, \
         and VmRSS polled every 2 ms during it; \"jc tree\" adds the shims and Executors (polled \
         every 50 ms). {} cores, load average before {load}.\n",
        opts.requests,
        opts.channels,
        opts.max,
        cores()
    );
    let mut table = vec![vec![
        "run".to_string(),
        "answered".into(),
        "errors".into(),
        "cold start ms (activator)".into(),
        "first answer ms".into(),
        "p50 ms".into(),
        "p99 ms".into(),
        "all answered ms".into(),
        "replicas started".into(),
        "jc RSS before MiB".into(),
        "jc peak RSS (VmHWM) MiB".into(),
        "jc VmRSS max polled MiB".into(),
        "jc tree RSS max MiB".into(),
    ]];
    let mut all_ok = true;
    for (i, r) in runs.iter().enumerate() {
        if r.errors > 0 {
            all_ok = false;
            eprintln!(
                "error: burst #{i}: {} wrong answers; first: {}",
                r.errors,
                r.first_error.as_deref().unwrap_or("")
            );
        }
        let q = |x: f64| format!("{:.1}", r.hist.value_at_quantile(x) as f64 / 1e6);
        table.push(vec![
            format!("#{}", i + 1),
            r.ok.to_string(),
            r.errors.to_string(),
            r.cold_start_ms.map_or("–".to_string(), |v| v.to_string()),
            format!("{:.1}", ms(r.first_answer)),
            q(0.5),
            q(0.99),
            format!("{:.1}", ms(r.all_answered)),
            r.replicas.to_string(),
            format!("{:.1}", mib(r.rss_before)),
            format!("{:.1}", mib(r.hwm)),
            format!("{:.1}", mib(r.rss_peak)),
            format!("{:.1}", mib(r.tree_peak)),
        ]);
    }
    out.push_str(&md_table(table));
    let worst_hwm = runs.iter().map(|r| mib(r.hwm)).fold(0.0, f64::max);
    let errors: u64 = runs.iter().map(|r| r.errors).sum();
    let _ = writeln!(
        out,
        "\n- errors: **{errors}** of {} (target 0: {})\n- jc peak RSS, worst run: **{worst_hwm:.1} \
         MiB** (target ≤ {TARGET_BURST_RSS_MIB} MiB: {})",
        opts.requests * runs.len(),
        verdict(errors == 0),
        verdict(worst_hwm <= TARGET_BURST_RSS_MIB)
    );
    Ok((out, all_ok))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

async fn burst_once(bins: &Bins, flow: &str, opts: &BurstOptions, r: usize) -> Result<BurstRun> {
    let mut jc = jc::start(
        &bins.jc,
        &bins.dir,
        &format!("burst-{r}"),
        flow,
        &GRACE,
        &[],
    )
    .await?;
    wait_serving(&jc.grpc, &mut jc.proc, Duration::from_secs(30)).await?;
    let channels = load::connect(&jc.grpc, opts.channels.max(1)).await?;
    tokio::time::sleep(SETTLE).await;
    if let Some((_, l)) = jc.drain().iter().find(|(_, l)| is_ready_line(l)) {
        bail!("burst: a replica was running before the burst: {l}");
    }
    let pid = jc.pid();
    let rss_before = procs::status_bytes(pid, "VmRSS").unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let rss_peak = Arc::new(AtomicU64::new(0));
    let tree_peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, rss_peak, tree_peak) = (stop.clone(), rss_peak.clone(), tree_peak.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = procs::status_bytes(pid, "VmRSS") {
                    rss_peak.fetch_max(rss, Ordering::Relaxed);
                }
                if n.is_multiple_of(25) {
                    tree_peak.fetch_max(procs::tree_rss(pid), Ordering::Relaxed);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let data = small_data();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(opts.requests);
    for n in 0..opts.requests {
        let mut client = JinaSingleDataRequestRpcClient::new(channels[n % channels.len()].clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let request_id = format!("b{n:031x}");
            let req = DataRequestProto {
                header: Some(HeaderProto {
                    request_id: request_id.clone(),
                    exec_endpoint: Some("/".to_string()),
                    ..Default::default()
                }),
                data,
                ..Default::default()
            };
            let res = client.process_single_data(req).await;
            (t0.elapsed(), check(res, &request_id))
        }));
    }
    let mut run = BurstRun {
        ok: 0,
        errors: 0,
        first_error: None,
        first_answer: Duration::MAX,
        all_answered: Duration::ZERO,
        hist: new_hist(),
        replicas: 0,
        rss_before,
        hwm: 0,
        rss_peak: 0,
        tree_peak: 0,
        cold_start_ms: None,
    };
    for t in tasks {
        let (took, res) = t.await.context("burst request task panicked")?;
        run.first_answer = run.first_answer.min(took);
        run.all_answered = run.all_answered.max(took);
        match res {
            Ok(()) => {
                run.ok += 1;
                let _ = run.hist.record(took.as_nanos() as u64);
            }
            Err(e) => {
                run.errors += 1;
                run.first_error.get_or_insert(e);
            }
        }
    }
    // Scale-ups decided during the burst may still be starting: let them finish before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    run.hwm = procs::status_bytes(pid, "VmHWM").unwrap_or(0);
    run.rss_peak = rss_peak.load(Ordering::Relaxed);
    run.tree_peak = tree_peak.load(Ordering::Relaxed);
    run.replicas = jc.drain().iter().filter(|(_, l)| is_ready_line(l)).count();
    run.cold_start_ms = numbers_after(&jc.log_text(), "cold_start_ms=")
        .first()
        .copied();
    jc.proc.check_running()?;
    Ok(run)
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}
