//! One `jc flow serve` under test: started in its own process group with its stdout read line by
//! line (each line timestamped when read, for the cold-start breakdown) and its stderr (jc's and
//! the shims' logs) in a file; stopped with SIGINT when dropped.

use crate::procs::{Proc, Stop, free_port, line_channel};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

pub struct Jc {
    /// The gateway's gRPC endpoint, `http://HOST:PORT`.
    pub grpc: String,
    /// What jc printed up to and including `Press Ctrl-C to stop.`
    pub printed: Vec<String>,
    lines: UnboundedReceiver<(Instant, String)>,
    // Last: dropped (stopped) after the reader is gone, which is harmless either way.
    pub proc: Proc,
}

/// Starts `jc flow serve` of `flow_yaml` (written to `dir/NAME.yml`, jc's stderr to
/// `dir/NAME.log`) and waits until it has printed its endpoints.
pub async fn start(
    jc: &Path,
    dir: &Path,
    name: &str,
    flow_yaml: &str,
    extra_args: &[&str],
    env: &[(&str, std::ffi::OsString)],
) -> Result<Jc> {
    let flow = dir.join(format!("{name}.yml"));
    std::fs::write(&flow, flow_yaml).with_context(|| format!("write {}", flow.display()))?;
    let port = free_port()?;
    let mut cmd = Command::new(jc);
    cmd.args(["flow", "serve"])
        .arg(&flow)
        .args(["--port", &port.to_string()])
        .args(extra_args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = Proc::spawn(
        "jc flow serve",
        cmd,
        dir.join(format!("{name}.log")),
        Stop::InterruptLeader,
        true,
    )?;
    let mut lines = line_channel(proc.take_stdout().context("jc stdout")?);
    let mut printed = vec![];
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, lines.recv()).await {
            Ok(Some((_, l))) => {
                let done = l.starts_with("Press Ctrl-C");
                printed.push(l);
                if done {
                    break;
                }
            }
            Ok(None) | Err(_) => {
                proc.check_running()?;
                bail!(
                    "jc flow serve did not print its endpoints within 120 s; stdout:\n{}\nlog:\n{}",
                    printed.join("\n"),
                    proc.log_tail()
                );
            }
        }
    }
    let grpc = printed
        .iter()
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix("grpc://"))
        .map(|a| format!("http://{a}"))
        .with_context(|| {
            format!(
                "no grpc:// endpoint in jc's output:\n{}",
                printed.join("\n")
            )
        })?;
    Ok(Jc {
        grpc,
        printed,
        lines,
        proc,
    })
}

impl Jc {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log_path(&self) -> PathBuf {
        self.proc.log.clone()
    }

    /// jc's stderr so far: its own log and its shims' (ANSI colours removed).
    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.proc.log).unwrap_or_default())
    }

    /// The lines jc printed since the last call, without waiting.
    pub fn drain(&mut self) -> Vec<(Instant, String)> {
        let mut out = vec![];
        while let Ok(l) = self.lines.try_recv() {
            out.push(l);
        }
        out
    }

    /// Waits up to `timeout` for a printed line that `want` accepts; the lines read on the way
    /// are appended to `seen`.
    pub async fn wait_line(
        &mut self,
        want: impl Fn(&str) -> bool,
        timeout: Duration,
        seen: &mut Vec<(Instant, String)>,
    ) -> Option<(Instant, String)> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(end, self.lines.recv()).await {
                Ok(Some((at, l))) => {
                    let hit = want(&l);
                    seen.push((at, l.clone()));
                    if hit {
                        return Some((at, l));
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case a log was written in colour.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every value of `key=NUMBER` in `text`, in order (e.g. `startup_ms=` in the shims' logs).
pub fn numbers_after(text: &str, key: &str) -> Vec<u64> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix(key))
        .filter_map(|v| {
            v.trim_matches(|c: char| !c.is_ascii_digit())
                .parse::<u64>()
                .ok()
        })
        .collect()
}
