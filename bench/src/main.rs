//! `zeroflow-bench`: measures, in one run on this machine, what Zeroflow's request path costs. The
//! same Rust test Executor is called three ways with one Rust load generator: directly, through
//! `jc flow serve` (gateway + shim), and through Jina's own Python `jina gateway`; the bench prints
//! requests/s and latency percentiles of each, and the ratios the project targets, as a markdown
//! table (`--scenario warm`). `--scenario cold` times the first request to an Executor at zero
//! against the Executor's own start, `--scenario burst` sends 1000 requests at once to a Flow at
//! zero (see cold.rs). `--scenario kube-cold` times the first request from zero on the test
//! Kubernetes cluster, step by step, next to the local runtime (see kube.rs; it must run inside
//! the test network namespace). It is a report, not a test: it never fails on a missed target,
//! only on wrong answers.
//!
//! It starts every process it measures and stops them all on every exit path.

mod cold;
mod jc;
mod kube;
mod load;
mod procs;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use load::{LoadConfig, LoadResult};
use procs::{Proc, Stop, TempDir, free_port};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Zeroflow's added p50 latency over calling the Executor directly, at most.
const TARGET_ADDED_P50_MS: f64 = 0.3;
/// Zeroflow's throughput over Jina's Python gateway's, at least.
const TARGET_SPEEDUP: f64 = 5.0;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// What to measure: `warm` (everything started and warmed up), `cold` (the first request to
    /// an Executor at zero replicas), `burst` (many concurrent requests to a Flow at zero), `all`
    /// (the three, in that order), or `kube-cold` (a cold start on the test Kubernetes cluster,
    /// step by step, next to the local runtime's; run it inside the test network namespace:
    /// `bash scripts/in-test-netns.sh zeroflow-bench --scenario kube-cold`).
    #[arg(long, value_enum, default_value_t = Scenario::Warm)]
    scenario: Scenario,
    /// cold: cold starts of the Rust test Executor.
    #[arg(long, default_value_t = 20)]
    cold_runs: usize,
    /// cold: cold starts of the Python `jina executor` (0 = skip; also skipped by --skip-jina).
    #[arg(long, default_value_t = 10)]
    cold_runs_python: usize,
    /// cold: how each cold start gets an Executor at zero: a fresh `jc flow serve` per run
    /// (`fresh`), or one jc that scales back to zero between runs (`rezero`, ~8 s a run).
    #[arg(long, value_enum, default_value_t = cold::ColdMode::Fresh)]
    cold_mode: cold::ColdMode,
    /// burst: requests sent at once to the cold Flow.
    #[arg(long, default_value_t = 1000)]
    burst: usize,
    /// burst: the Executor's `jcloud.autoscale.max`.
    #[arg(long, default_value_t = 5)]
    burst_max: u32,
    /// burst: HTTP/2 connections the burst is spread over.
    #[arg(long, default_value_t = 16)]
    burst_channels: usize,
    /// burst: how many bursts (each to a fresh `jc flow serve`).
    #[arg(long, default_value_t = 3)]
    burst_runs: usize,
    /// kube-cold: cold starts on the test cluster (the same number of local ones beside them).
    #[arg(long, default_value_t = 20)]
    kube_runs: usize,
    /// kube-cold: how the local runtime's row gets an Executor at zero; `rezero` (one `jc`
    /// that scales back to zero, as the cluster's gateway does) or `fresh`.
    #[arg(long, value_enum, default_value_t = cold::ColdMode::Rezero)]
    kube_local_mode: cold::ColdMode,
    /// kube-cold: the test cluster's folder (kept afterwards, with every component's log);
    /// default a temporary one, removed after a successful run.
    #[arg(long)]
    cluster_dir: Option<PathBuf>,
    /// Requests in flight at any time (one load task each).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Measured requests per setup.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Requests sent before measuring (connections, caches, allocators warm up).
    #[arg(long, default_value_t = 1_000)]
    warmup: u64,
    /// HTTP/2 connections shared by the load tasks; default one per 4 tasks.
    #[arg(long)]
    channels: Option<usize>,
    /// Where `jc` and `zeroflow-test-executor` are; default: next to this binary.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The `jina` command; default: the workspace's `.venv/bin/jina`, else `jina` on PATH.
    #[arg(long)]
    jina: Option<PathBuf>,
    /// Do not run anything that needs `jina`: Jina's Python gateway (warm) and the Python
    /// Executor (cold).
    #[arg(long)]
    skip_jina: bool,
    /// Run plain `jina gateway`, without the start-up patch that lets it accept an Executor
    /// whose endpoint discovery carries no document schemas (see src/jina_gateway.py).
    #[arg(long)]
    jina_unpatched: bool,
    /// Only load this already running gRPC endpoint (e.g. `http://127.0.0.1:PORT`) and start
    /// nothing: for profiling a server by hand.
    #[arg(long)]
    url: Option<String>,
    /// Also write the markdown tables and ratios to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Everything started and warmed up; steady load.
    Warm,
    /// First request to a scaled-to-zero Executor, against the Executor's own start time.
    Cold,
    /// Many concurrent requests arriving at zero replicas.
    Burst,
    /// warm, cold and burst, one after the other.
    All,
    /// A cold start from zero on the test Kubernetes cluster (`scripts/test-cluster.sh`), with
    /// where the time goes, next to the local runtime's in the same run. Must run inside the
    /// test network namespace: `bash scripts/in-test-netns.sh zeroflow-bench --scenario
    /// kube-cold`.
    KubeCold,
}

/// One measured setup.
struct Row {
    label: &'static str,
    result: LoadResult,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.concurrency == 0 || args.requests == 0 {
        eprintln!("error: --concurrency and --requests must be at least 1");
        return ExitCode::from(64);
    }
    if args.burst == 0 || args.burst_max == 0 {
        eprintln!("error: --burst and --burst-max must be at least 1");
        return ExitCode::from(64);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(70);
        }
    };
    rt.block_on(async {
        // Dropping `run` on Ctrl-C drops the process guards it holds, which stop what it started.
        tokio::select! {
            r = run(&args) => match r {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            },
            _ = shutdown_signal() => {
                eprintln!("interrupted: stopping what the bench started");
                ExitCode::from(130)
            }
        }
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs every setup; true when every answer was right.
async fn run(args: &Args) -> Result<bool> {
    if let Some(url) = &args.url {
        let r = load::run(url, &load_config(args), &|| Duration::ZERO).await?;
        let rows = [Row {
            label: "given --url",
            result: r,
        }];
        println!("{}", report(&rows, &load_config(args)));
        return Ok(rows[0].result.errors == 0);
    }
    let bin_dir = match &args.bin_dir {
        // Absolute: some programs are started in another working directory.
        Some(d) => d
            .canonicalize()
            .with_context(|| format!("--bin-dir {}", d.display()))?,
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no folder")?
            .to_path_buf(),
    };
    let executor = find_bin(&bin_dir, "zeroflow-test-executor")?;
    let jc = find_bin(&bin_dir, "jc")?;
    let jina = if args.skip_jina {
        None
    } else {
        Some(find_jina(args.jina.as_deref())?)
    };
    let tmp = TempDir::new()?;
    let bins = cold::Bins {
        jc,
        executor,
        jina,
        dir: tmp.path().to_path_buf(),
    };
    eprintln!(
        "zeroflow-bench: scenario {:?}; binaries from {}",
        args.scenario,
        bin_dir.display()
    );
    let (warm, cold, burst) = match args.scenario {
        Scenario::Warm => (true, false, false),
        Scenario::Cold => (false, true, false),
        Scenario::Burst => (false, false, true),
        Scenario::All => (true, true, true),
        Scenario::KubeCold => (false, false, false),
    };
    let mut all_ok = true;
    let mut markdown = String::new();
    // Each part is printed as soon as it is done, and the markdown file rewritten.
    let mut emit = |part: String, ok: bool| -> Result<()> {
        println!("{part}");
        markdown.push_str(&part);
        all_ok &= ok;
        if let Some(path) = &args.markdown {
            std::fs::write(path, &markdown).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(())
    };
    if warm {
        let (part, ok) = warm_scenario(args, &bins).await?;
        emit(part, ok)?;
    }
    if cold {
        let (part, ok) = cold::cold(
            &bins,
            &cold::ColdOptions {
                runs_rust: args.cold_runs,
                runs_python: args.cold_runs_python,
                mode: args.cold_mode,
            },
        )
        .await?;
        emit(part, ok)?;
    }
    if burst {
        let (part, ok) = cold::burst(
            &bins,
            &cold::BurstOptions {
                requests: args.burst,
                max: args.burst_max,
                channels: args.burst_channels,
                runs: args.burst_runs.max(1),
            },
        )
        .await?;
        emit(part, ok)?;
    }
    if args.scenario == Scenario::KubeCold {
        let (part, ok) = kube::kube_cold(
            &bins,
            &kube::KubeOptions {
                runs: args.kube_runs.max(1),
                local_mode: args.kube_local_mode,
                cluster_dir: args.cluster_dir.clone(),
            },
        )
        .await?;
        emit(part, ok)?;
    }
    Ok(all_ok)
}

/// The warm scenario: direct, Zeroflow (gateway and shim alone), Jina's gateway.
async fn warm_scenario(args: &Args, bins: &cold::Bins) -> Result<(String, bool)> {
    let cfg = load_config(args);
    let dir = bins.dir.as_path();
    eprintln!(
        "warm: concurrency {}, {} HTTP/2 connections, {} requests (+{} warm-up) per setup",
        cfg.concurrency, cfg.channels, cfg.requests, cfg.warmup,
    );
    let mut rows = vec![];
    // One setup at a time, each stopped before the next starts, so they never share the CPUs.
    rows.push(Row {
        label: "direct: client → executor",
        result: direct(&bins.executor, dir, &cfg).await?,
    });
    let (gateway, shim) = zeroflow(&bins.jc, dir, &cfg).await?;
    rows.push(Row {
        label: "Zeroflow: `jc` gateway → shim → executor",
        result: gateway,
    });
    if let Some(shim) = shim {
        rows.push(Row {
            label: "Zeroflow shim only: shim → executor",
            result: shim,
        });
    }
    if let Some(jina) = &bins.jina {
        rows.push(Row {
            label: "Jina: `jina gateway` (Python) → executor",
            result: jina_gateway(jina, args.jina_unpatched, &bins.executor, dir, &cfg).await?,
        });
    }
    let mut all_ok = true;
    for r in &rows {
        if r.result.errors > 0 {
            all_ok = false;
            eprintln!(
                "error: {}: {} wrong answers; first: {}",
                r.label,
                r.result.errors,
                r.result.first_error.as_deref().unwrap_or("")
            );
        }
    }
    Ok((report(&rows, &cfg), all_ok))
}

fn load_config(args: &Args) -> LoadConfig {
    LoadConfig {
        concurrency: args.concurrency,
        channels: args
            .channels
            .unwrap_or(args.concurrency.div_ceil(4))
            .clamp(1, args.concurrency),
        warmup: args.warmup,
        requests: args.requests,
    }
}

fn find_bin(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{} is missing: build with `cargo build --release --workspace --bins` or pass --bin-dir",
            p.display()
        );
    }
    Ok(p)
}

fn find_jina(given: Option<&Path>) -> Result<PathBuf> {
    let on_path = |name: &Path| {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    if let Some(p) = given {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        return on_path(p).with_context(|| format!("--jina {}: no such file", p.display()));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/jina");
    if venv.is_file() {
        return Ok(venv);
    }
    on_path(Path::new("jina")).context(
        "no `jina` found (neither .venv/bin/jina nor on PATH): run scripts/setup-python.sh, pass \
         --jina, or --skip-jina",
    )
}

fn start_executor(executor: &Path, dir: &Path, name: &str) -> Result<(Proc, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new(executor);
    cmd.args(["--port", &port.to_string(), "--name", "exec"]);
    let p = Proc::spawn(
        name,
        cmd,
        dir.join(format!("{name}.log")),
        Stop::TerminateGroup,
        false,
    )?;
    Ok((p, port))
}

/// (a) The load generator straight to the Executor.
async fn direct(executor: &Path, dir: &Path, cfg: &LoadConfig) -> Result<LoadResult> {
    eprintln!("(a) direct: starting zeroflow-test-executor");
    let (mut exec, port) = start_executor(executor, dir, "executor-direct")?;
    let url = format!("http://127.0.0.1:{port}");
    wait_serving(&url, &mut exec, Duration::from_secs(30)).await?;
    let pid = exec.pid();
    let r = load::run(&url, cfg, &|| procs::proc_cpu(pid)).await?;
    eprintln!("    {:.0} req/s", r.rps());
    Ok(r)
}

/// (b) `jc flow serve` of a one-Executor Flow: the gateway, and (as a breakdown) its shim alone.
async fn zeroflow(
    jc: &Path,
    dir: &Path,
    cfg: &LoadConfig,
) -> Result<(LoadResult, Option<LoadResult>)> {
    eprintln!("(b) Zeroflow: starting `jc flow serve`");
    let mut jc = jc::start(
        jc,
        dir,
        "warm-flow",
        "jtype: Flow\nversion: '1'\nexecutors:\n  - name: exec\n    command: zeroflow-test-executor\n",
        &[],
        &[],
    )
    .await?;
    let gateway = jc.grpc.clone();
    // The shim's own gRPC address: older `jc` printed `  replica  ID  pid PID  ADDR`; the shim
    // logs `grpc_addr=ADDR` (on jc's stderr, in our log file).
    let log = jc.log_text();
    let shim = jc
        .printed
        .iter()
        .filter(|l| l.trim_start().starts_with("replica"))
        .filter_map(|l| l.split_whitespace().last())
        .chain(
            log.split_whitespace()
                .filter_map(|w| w.strip_prefix("grpc_addr=")),
        )
        .map(|a| format!("http://{}", a.trim_start_matches("grpc://")))
        .next();
    wait_serving(&gateway, &mut jc.proc, Duration::from_secs(30)).await?;
    let pid = jc.pid();
    // jc's tree: the gateway (jc itself), the shim and the Executor.
    let cpu = || procs::Proc::tree_cpu_of(pid);
    let r = load::run(&gateway, cfg, &cpu).await?;
    eprintln!("    gateway {:.0} req/s", r.rps());
    let shim_result = match shim {
        Some(url) => {
            let s = load::run(&url, cfg, &cpu).await?;
            eprintln!("    shim only {:.0} req/s", s.rps());
            Some(s)
        }
        None => {
            eprintln!(
                "    (no shim address in jc's output or log: skipping the shim-only breakdown)"
            );
            None
        }
    };
    Ok((r, shim_result))
}

/// (c) Jina's Python gateway in front of a separately started Rust Executor.
async fn jina_gateway(
    jina: &Path,
    unpatched: bool,
    executor: &Path,
    dir: &Path,
    cfg: &LoadConfig,
) -> Result<LoadResult> {
    eprintln!("(c) Jina: starting zeroflow-test-executor and `jina gateway`");
    let (mut exec, exec_port) = start_executor(executor, dir, "executor-jina")?;
    wait_serving(
        &format!("http://127.0.0.1:{exec_port}"),
        &mut exec,
        Duration::from_secs(30),
    )
    .await?;
    let port = free_port()?;
    let mut cmd = if unpatched {
        Command::new(jina)
    } else {
        let mut c = Command::new(python_of(jina)?);
        c.arg("-c").arg(JINA_GATEWAY_LAUNCHER);
        c
    };
    cmd.args(["gateway", "--port", &port.to_string()])
        .args([
            "--graph-description",
            r#"{"exec": ["end-gateway"], "start-gateway": ["exec"]}"#,
        ])
        .args([
            "--deployments-addresses",
            &format!(r#"{{"exec": ["127.0.0.1:{exec_port}"]}}"#),
        ])
        .env("JINA_OPTOUT_TELEMETRY", "1");
    // Declared after `exec`, so it is dropped (stopped) first.
    let mut gw = Proc::spawn(
        "jina gateway",
        cmd,
        dir.join("jina-gateway.log"),
        Stop::TerminateGroup,
        false,
    )?;
    let url = format!("http://127.0.0.1:{port}");
    wait_serving(&url, &mut gw, Duration::from_secs(180)).await?;
    let (gw_pid, exec_pid) = (gw.pid(), exec.pid());
    let cpu = || procs::Proc::tree_cpu_of(gw_pid) + procs::proc_cpu(exec_pid);
    let r = load::run(&url, cfg, &cpu).await?;
    eprintln!("    {:.0} req/s", r.rps());
    Ok(r)
}

/// `jina gateway`, patched at start-up only: jina 3.34's gateway crashes (KeyError
/// '_jina_dry_run_') on an Executor whose discovery has no schemas, as zeroflow-test-executor's.
const JINA_GATEWAY_LAUNCHER: &str = include_str!("jina_gateway.py");

/// The Python interpreter of a `jina` console script: its `#!` line, else `python` beside it.
fn python_of(jina: &Path) -> Result<PathBuf> {
    let text = std::fs::read(jina).with_context(|| format!("read {}", jina.display()))?;
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    if let Some(shebang) = std::str::from_utf8(first)
        .ok()
        .and_then(|l| l.strip_prefix("#!"))
        .and_then(|l| l.split_whitespace().next())
        .filter(|p| !p.ends_with("/env"))
    {
        return Ok(PathBuf::from(shebang));
    }
    let beside = jina.with_file_name("python");
    if beside.is_file() {
        return Ok(beside);
    }
    Ok(PathBuf::from("python3"))
}

/// Polls gRPC health (service "") until SERVING, failing early if the process exits.
async fn wait_serving(url: &str, proc: &mut Proc, deadline: Duration) -> Result<()> {
    let end = Instant::now() + deadline;
    let mut backoff = Duration::from_millis(10);
    loop {
        proc.check_running()?;
        let last = match health(url).await {
            Ok(true) => return Ok(()),
            Ok(false) => "NOT_SERVING".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= end {
            bail!(
                "{} at {url} not SERVING after {deadline:?} (last: {last}); its log:\n{}",
                proc.name,
                proc.log_tail()
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(250));
    }
}

async fn health(url: &str) -> Result<bool> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let resp = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(resp.into_inner().status == ServingStatus::Serving as i32)
}

/// The markdown table and the ratios against the targets.
fn report(rows: &[Row], cfg: &LoadConfig) -> String {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(
        out,
        "\nWarm scenario: {} requests per setup after {} warm-up, concurrency {}, {} HTTP/2 \
         connections, unary `process_single_data` with one small document; {cores} cores, load \
         average before the report {}.\n",
        cfg.requests,
        cfg.warmup,
        cfg.concurrency,
        cfg.channels,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let header = [
        "setup",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "server CPU µs/req",
        "client CPU µs/req",
        "errors",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let x = &r.result;
        table.push(vec![
            r.label.to_string(),
            format!("{:.0}", x.rps()),
            format!("{:.3}", x.quantile_us(0.50) / 1000.0),
            format!("{:.3}", x.quantile_us(0.90) / 1000.0),
            format!("{:.3}", x.quantile_us(0.99) / 1000.0),
            format!("{:.3}", x.quantile_us(0.999) / 1000.0),
            format!("{:.3}", x.hist.max() as f64 / 1e6),
            format!("{:.0}", LoadResult::cpu_per_req_us(x.server_cpu, x.ok)),
            format!("{:.0}", LoadResult::cpu_per_req_us(x.client_cpu, x.ok)),
            x.errors.to_string(),
        ]);
    }
    out.push_str(&md_table(table));

    let find = |prefix: &str| rows.iter().find(|r| r.label.starts_with(prefix));
    let (direct, zf, shim, jina) = (
        find("direct"),
        find("Zeroflow:"),
        find("Zeroflow shim"),
        find("Jina"),
    );
    let _ = writeln!(out);
    if let (Some(d), Some(z)) = (direct, zf) {
        let added = (z.result.quantile_us(0.5) - d.result.quantile_us(0.5)) / 1000.0;
        let _ = writeln!(
            out,
            "- Zeroflow added p50 over direct: **{added:.3} ms** (target ≤ {TARGET_ADDED_P50_MS} \
             ms: {})",
            verdict(added <= TARGET_ADDED_P50_MS)
        );
        if let Some(s) = shim {
            let by_shim = (s.result.quantile_us(0.5) - d.result.quantile_us(0.5)) / 1000.0;
            let _ = writeln!(
                out,
                "  - of which the shim hop: {by_shim:.3} ms, the gateway hop: {:.3} ms",
                added - by_shim
            );
        }
        let _ = writeln!(
            out,
            "- Zeroflow throughput / direct: {:.2}x",
            z.result.rps() / d.result.rps()
        );
    }
    if let (Some(z), Some(j)) = (zf, jina) {
        let speedup = z.result.rps() / j.result.rps();
        let _ = writeln!(
            out,
            "- Zeroflow throughput / Jina gateway throughput: **{speedup:.1}x** (target ≥ \
             {TARGET_SPEEDUP}x: {})",
            verdict(speedup >= TARGET_SPEEDUP)
        );
        let _ = writeln!(
            out,
            "- Jina gateway p50 / Zeroflow p50: {:.1}x",
            j.result.quantile_us(0.5) / z.result.quantile_us(0.5)
        );
    }
    out
}

/// A markdown table, columns padded so it also reads as plain text: the first row is the header,
/// the first column is left-aligned, the others (numbers) right-aligned.
pub fn md_table(table: Vec<Vec<String>>) -> String {
    let mut out = String::new();
    let cols = table.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            table
                .iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, r) in table.iter().enumerate() {
        let cells: Vec<String> = (0..cols)
            .map(|c| {
                let s = r.get(c).map_or("", String::as_str);
                let pad = widths[c] - s.chars().count();
                if c == 0 {
                    format!("{s}{}", " ".repeat(pad))
                } else {
                    format!("{}{s}", " ".repeat(pad))
                }
            })
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if i == 0 {
            // `| cell |` spans width + 2 between the pipes; ':' on the right aligns numbers.
            let rule: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| {
                    if c == 0 {
                        "-".repeat(w + 2)
                    } else {
                        format!("{}:", "-".repeat(w + 1))
                    }
                })
                .collect();
            let _ = writeln!(out, "|{}|", rule.join("|"));
        }
    }
    out
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
