//! Container log files in the CRI format the kubelet reads (`<RFC3339Nano> <stream> <F|P>
//! <text>` per line), one file per run of a container (`<restartCount>.log`, so the previous run's
//! file answers `previous=true`), and reading them back as `kubectl logs` asks. It must not
//! know about HTTP or the API server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use k8s_openapi::jiff::Timestamp;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

/// Lines longer than this are split into partial (`P`) lines, as container runtimes do.
const MAX_LINE: usize = 16 * 1024;

/// Log files being written now; a follower waits on the file's counter of bytes written and
/// stops when the writer is gone (the container's run ended).
#[derive(Default, Clone)]
pub struct Active(Arc<Mutex<HashMap<PathBuf, watch::Receiver<u64>>>>);

impl Active {
    pub fn get(&self, path: &Path) -> Option<watch::Receiver<u64>> {
        self.0.lock().get(path).cloned()
    }
}

/// The folder of one container's log files.
pub fn container_dir(root: &Path, ns: &str, pod: &str, uid: &str, container: &str) -> PathBuf {
    root.join(format!("{ns}_{pod}_{uid}")).join(container)
}

/// The runs' log files of one container, oldest first.
pub fn runs(dir: &Path) -> Vec<PathBuf> {
    let mut runs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let n = p
                .file_name()?
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((n, p))
        })
        .collect();
    runs.sort();
    runs.into_iter().map(|(_, p)| p).collect()
}

/// Captures a run's stdout and stderr into `dir/<run>.log`, removing runs older than the
/// previous one. The returned task ends when both streams are closed.
pub async fn capture(
    active: &Active,
    dir: &Path,
    run: i32,
    stdout: impl AsyncRead + Unpin + Send + 'static,
    stderr: impl AsyncRead + Unpin + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>> {
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    for old in runs(dir) {
        let n: i32 = old
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if n < run - 1 {
            let _ = tokio::fs::remove_file(&old).await;
        }
    }
    let path = dir.join(format!("{run}.log"));
    let file = tokio::fs::File::create(&path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    let (tx, rx) = watch::channel(0u64);
    active.0.lock().insert(path.clone(), rx);
    let sink = Arc::new(tokio::sync::Mutex::new((file, 0u64, tx)));
    let a = tokio::spawn(copy_lines(stdout, "stdout", sink.clone()));
    let b = tokio::spawn(copy_lines(stderr, "stderr", sink));
    let active = active.clone();
    Ok(tokio::spawn(async move {
        let _ = a.await;
        let _ = b.await;
        active.0.lock().remove(&path);
    }))
}

type Sink = Arc<tokio::sync::Mutex<(tokio::fs::File, u64, watch::Sender<u64>)>>;

async fn copy_lines(stream: impl AsyncRead + Unpin, name: &'static str, sink: Sink) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let full = buf.last() == Some(&b'\n');
        if full {
            buf.pop();
        }
        let mut line = format!(
            "{} {name} {} ",
            Timestamp::now(),
            if full { 'F' } else { 'P' }
        )
        .into_bytes();
        line.extend_from_slice(&buf);
        line.push(b'\n');
        let mut s = sink.lock().await;
        let (file, written, tx) = &mut *s;
        if file.write_all(&line).await.is_err() || file.flush().await.is_err() {
            return;
        }
        *written += line.len() as u64;
        tx.send_replace(*written);
    }
}

/// What `kubectl logs` asks for (the kubelet's `/containerLogs` query).
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub follow: bool,
    pub tail_lines: Option<u64>,
    pub timestamps: bool,
    pub since: Option<Timestamp>,
    pub limit_bytes: Option<u64>,
}

/// One line of a log file.
struct Entry<'a> {
    time: &'a str,
    partial: bool,
    text: &'a [u8],
}

fn parse(line: &[u8]) -> Option<Entry<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    Some(Entry {
        time,
        partial: tag == b"P",
        text,
    })
}

/// Sends the log file's lines as `q` asks to `out`; with `follow`, keeps sending what the
/// running container writes until its run ends or the receiver goes.
pub async fn stream(
    path: PathBuf,
    q: Query,
    mut active: Option<watch::Receiver<u64>>,
    out: mpsc::Sender<Bytes>,
) -> Result<()> {
    let mut file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).await?;
    let mut offset = data.len() as u64;
    // A line the writer has not finished yet waits for the next read.
    let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut pending = data.split_off(complete);

    let mut lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    if let Some(since) = q.since {
        lines.retain(|l| {
            parse(l)
                .and_then(|e| e.time.parse::<Timestamp>().ok())
                .is_none_or(|t| t >= since)
        });
    }
    if let Some(n) = q.tail_lines {
        let n = n as usize;
        if lines.len() > n {
            lines.drain(..lines.len() - n);
        }
    }
    let mut left = q.limit_bytes.unwrap_or(u64::MAX);
    for l in lines {
        if !send(&out, l, q.timestamps, &mut left).await {
            return Ok(());
        }
    }
    if !q.follow {
        return Ok(());
    }
    let Some(rx) = active.as_mut() else {
        return Ok(());
    };
    loop {
        let ended = rx.changed().await.is_err();
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut more = Vec::new();
        file.read_to_end(&mut more).await?;
        offset += more.len() as u64;
        pending.extend_from_slice(&more);
        let complete = pending
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let rest = pending.split_off(complete);
        for l in pending.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if !send(&out, l, q.timestamps, &mut left).await {
                return Ok(());
            }
        }
        pending = rest;
        if ended {
            return Ok(());
        }
    }
}

/// Sends one line; false when the receiver is gone or the byte limit is reached.
async fn send(out: &mpsc::Sender<Bytes>, line: &[u8], timestamps: bool, left: &mut u64) -> bool {
    let Some(e) = parse(line) else {
        return true;
    };
    let mut chunk = Vec::with_capacity(e.text.len() + 40);
    if timestamps {
        chunk.extend_from_slice(e.time.as_bytes());
        chunk.push(b' ');
    }
    chunk.extend_from_slice(e.text);
    if !e.partial {
        chunk.push(b'\n');
    }
    let limited = chunk.len() as u64 >= *left;
    chunk.truncate((*left).min(chunk.len() as u64) as usize);
    *left -= chunk.len() as u64;
    out.send(Bytes::from(chunk)).await.is_ok() && !limited
}
