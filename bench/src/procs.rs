//! The processes a benchmark run starts: each in its own process group, its output in a log file,
//! and stopped by a Drop guard on every exit path (success, error, panic, Ctrl-C of the bench).

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a process is asked to stop before it is killed.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// SIGINT to the process only: `jc` handles Ctrl-C by draining and stopping what it started.
    InterruptLeader,
    /// SIGTERM to the whole group: `jina gateway` forks, and its child outlives a SIGTERM to the
    /// parent alone.
    TerminateGroup,
}

/// A child process in its own process group. Dropping it stops it: the polite signal first, then
/// SIGKILL to the group after a grace period.
pub struct Proc {
    pub name: String,
    child: Child,
    stop: Stop,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` in a new process group, stderr (and stdout unless `pipe_stdout`) to `log`.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: PathBuf,
        stop: Stop,
        pipe_stdout: bool,
    ) -> Result<Self> {
        let file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone()?)
        };
        // Own group: the terminal's Ctrl-C reaches only the bench, which then stops these in order,
        // and one killpg reaches every descendant that stayed in the group.
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            stop,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Fails if the process has exited (e.g. it could not bind its port).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early with {status}; its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Total CPU time (user + system) of process `pid` and all its descendants, from /proc.
    pub fn tree_cpu_of(pid: u32) -> Duration {
        let mut total = Duration::ZERO;
        for pid in std::iter::once(pid).chain(descendants(pid)) {
            total += proc_cpu(pid);
        }
        total
    }

    fn wait_until(&mut self, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        if !matches!(self.child.try_wait(), Ok(None)) {
            // Exited already; a leftover of its group (if any) still gets the SIGKILL below.
            let _ = killpg(pid, Signal::SIGKILL);
            return;
        }
        let _ = match self.stop {
            Stop::InterruptLeader => kill(pid, Signal::SIGINT),
            Stop::TerminateGroup => killpg(pid, Signal::SIGTERM),
        };
        if !self.wait_until(Duration::from_secs(20)) {
            eprintln!("{} did not stop within 20 s: killing its group", self.name);
        }
        // Whatever is left in the group (a child that ignored the signal) goes too.
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("zeroflow-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago (the usual bind-to-0 race is acceptable for a benchmark).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Reads `stdout` lines on a thread and hands them over a channel, each with the instant it was
/// read (the cold-start breakdown times jc's events by it), so the reader can apply a deadline
/// and the child never blocks on a full pipe.
pub fn line_channel(
    stdout: std::process::ChildStdout,
) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, String)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // After the endpoints are read nobody listens: keep draining anyway.
            let _ = tx.send((Instant::now(), line));
        }
    });
    rx
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`, ...) in bytes; None once the process is
/// gone.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// Resident memory of `pid` and all its descendants, in bytes.
pub fn tree_rss(pid: u32) -> u64 {
    std::iter::once(pid)
        .chain(descendants(pid))
        .filter_map(|p| status_bytes(p, "VmRSS"))
        .sum()
}

/// user + system CPU time of one process, from /proc/PID/stat (fields 14 and 15, in USER_HZ
/// ticks, which Linux fixes at 100 for user space).
pub fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may contain spaces, start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // rest[0] is field 3 (state), so utime (14) is rest[11] and stime (15) is rest[12].
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|s| s.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// All descendants of `pid`, from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let parents: Vec<(u32, u32)> = entries
        .flatten()
        .filter_map(|e| {
            let child = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse::<u32>()
                .ok()?;
            Some((child, ppid))
        })
        .collect();
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(child, ppid) in &parents {
            if ppid == p {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// On-CPU time of every live thread of `pid`, in nanoseconds, from
/// `/proc/PID/task/*/schedstat` (the scheduler's own account, not 10 ms ticks as
/// /proc/PID/stat): what a wake-up of a few milliseconds of work needs. A thread that exited
/// in between is no longer counted, so use it over windows in which a process keeps its
/// threads (every measured process here does); zero once the process is gone.
pub fn sched_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// [`sched_cpu`] of `pid` and all its descendants.
pub fn tree_sched_cpu(pid: u32) -> Duration {
    std::iter::once(pid)
        .chain(descendants(pid))
        .map(sched_cpu)
        .sum()
}

/// The command line of `pid`, its arguments joined by spaces; empty once it is gone.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
