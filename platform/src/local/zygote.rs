//! The zygote pool: Python processes that have imported jina once and fork a `jina executor`
//! replica on request (see `zygote.py`), one per interpreter, started on first use. A woken
//! Python Executor then serves in ~0.2 s instead of ~1.9 s. The pool is a value: its owner
//! (`jc flow serve`, or `jc server` for all its Flows) hands it to the runtimes through
//! [`LocalOptions::zygotes`](super::LocalOptions::zygotes) and stops it when it stops. It must
//! not start replicas itself: a replica's shim asks the zygote for its fork.

use super::LocalOptions;
use super::command::locate;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

/// The zygote's program: see its docstring.
const ZYGOTE_PY: &str = include_str!("zygote.py");

/// How long a zygote has to exit on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The zygotes of one owner, by interpreter.
#[derive(Default)]
pub struct ZygotePool {
    /// Their socket and process, or None if one could not be started (replicas then start
    /// `jina executor` themselves, as without a zygote).
    zygotes: Mutex<HashMap<Vec<String>, Option<Zygote>>>,
}

struct Zygote {
    socket: PathBuf,
    process: std::process::Child,
}

impl std::fmt::Debug for ZygotePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let zygotes = self.zygotes.lock();
        f.debug_list()
            .entries(zygotes.values().flatten().map(|z| &z.socket))
            .finish()
    }
}

impl ZygotePool {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pool, unless `ZEROFLOW_ZYGOTE=0` turns zygotes off (every replica then starts its own
    /// interpreter).
    pub fn from_env() -> Option<Arc<Self>> {
        let on = std::env::var("ZEROFLOW_ZYGOTE").map_or(true, |v| v != "0");
        on.then(|| Arc::new(Self::new()))
    }

    /// The socket of the zygote for `opts.jina`'s interpreter, started on first use and shared
    /// by every Flow of this pool. None when `jina` is not the console script of a Python that
    /// has jina (a wrapper, say): its replicas are started as they are.
    pub fn socket(&self, opts: &LocalOptions) -> Option<PathBuf> {
        let interpreter = jina_interpreter(opts)?;
        let mut zygotes = self.zygotes.lock();
        let entry = zygotes.entry(interpreter.clone()).or_insert(None);
        // None the first time, or after the zygote died (killed by hand, out of memory): start
        // one.
        let alive = entry
            .as_mut()
            .is_some_and(|z| matches!(z.process.try_wait(), Ok(None)));
        if !alive {
            if let Some(z) = entry.as_ref() {
                tracing::warn!(socket = %z.socket.display(), "the zygote is gone; starting another");
                // A zygote killed outright could not remove its folder.
                if let Some(dir) = z.socket.parent() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            *entry = match start_zygote(&interpreter) {
                Ok(z) => Some(z),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the zygote; Python Executors start without it");
                    None
                }
            };
        }
        entry.as_ref().map(|z| z.socket.clone())
    }

    /// Stops the pool's zygotes and waits for them (a few seconds at most), so that nothing of
    /// ours outlives `jc` once it says it stopped. Their forks are gone by then: they drained
    /// with their replicas, or die with the zygote. The pool can start zygotes again after.
    pub async fn stop(&self) {
        let zygotes: Vec<Zygote> = self.zygotes.lock().drain().filter_map(|(_, z)| z).collect();
        for mut z in zygotes {
            terminate(&z);
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while matches!(z.process.try_wait(), Ok(None)) {
                if tokio::time::Instant::now() >= deadline {
                    let _ = z.process.kill();
                    let _ = z.process.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tracing::debug!(socket = %z.socket.display(), "zygote stopped");
        }
    }

    #[cfg(test)]
    fn pids(&self) -> Vec<u32> {
        let zygotes = self.zygotes.lock();
        zygotes.values().flatten().map(|z| z.process.id()).collect()
    }
}

impl Drop for ZygotePool {
    /// An owner that returns early without [`ZygotePool::stop`] still leaves no zygote behind
    /// (they would die with this process anyway, by their parent-death signal).
    fn drop(&mut self) {
        for z in self.zygotes.get_mut().values().flatten() {
            terminate(z);
        }
    }
}

fn terminate(z: &Zygote) {
    let pid = nix::unistd::Pid::from_raw(z.process.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

/// The interpreter (with its arguments) in the `#!` line of the `jina` console script.
fn jina_interpreter(opts: &LocalOptions) -> Option<Vec<String>> {
    let jina = locate(&opts.jina.to_string_lossy(), None, opts)?;
    let text = std::fs::read_to_string(jina).ok()?;
    // Only pip's console script: anything else named `jina` may do more than Jina's CLI.
    if !text.contains("from jina_cli import main") {
        return None;
    }
    let interpreter: Vec<String> = text
        .lines()
        .next()?
        .strip_prefix("#!")?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (!interpreter.is_empty()).then_some(interpreter)
}

fn start_zygote(interpreter: &[String]) -> std::io::Result<Zygote> {
    use std::os::unix::fs::DirBuilderExt;
    // Process-wide, so that two pools (tests) never share a folder.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Private to this user: whoever can connect can have it run commands.
    let dir = std::env::temp_dir().join(format!(
        "zeroflow-zygote-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let script = dir.join("zygote.py");
    std::fs::write(&script, ZYGOTE_PY)?;
    let socket = dir.join("zygote.sock");
    let mut cmd = std::process::Command::new(&interpreter[0]);
    cmd.args(&interpreter[1..])
        .arg(&script)
        .arg(&socket)
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .env("JINA_LOG_NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // Its own process group: a Ctrl-C at the terminal (or `timeout`'s group signal) is for jc,
    // which drains the replicas; the zygote and its forks must not die under them first.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // SAFETY: prctl(2) only, between fork and exec: async-signal-safe, no allocation.
    #[allow(unsafe_code)]
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    let process = cmd.spawn()?;
    tracing::info!(pid = process.id(), socket = %socket.display(), "zygote started");
    Ok(Zygote { socket, process })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `jina` console script whose interpreter only sleeps: the pool's bookkeeping (start,
    /// share, replace, stop) is what is tested here; forking real Executors is tested end to
    /// end in tests/tests/flow_serve.rs.
    fn fake_jina(name: &str) -> (PathBuf, LocalOptions) {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("zf-zygote-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let python = dir.join("python");
        std::fs::write(&python, "#!/bin/sh\nexec sleep 600\n").unwrap();
        let jina = dir.join("jina");
        std::fs::write(
            &jina,
            format!(
                "#!{}\nimport sys\nfrom jina_cli import main\n",
                python.display()
            ),
        )
        .unwrap();
        for p in [&python, &jina] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut opts = LocalOptions::discover(dir.clone(), dir.join("work"));
        opts.jina = jina;
        (dir, opts)
    }

    fn alive(pid: u32) -> bool {
        // A zombie (exited, not yet reaped by its owner) counts as gone.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn one_zygote_per_interpreter_shared_replaced_when_gone_and_stopped_by_its_owner() {
        let (dir, opts) = fake_jina("pool");
        let pool = ZygotePool::new();
        let socket = pool
            .socket(&opts)
            .expect("a zygote for a pip console script");
        assert_eq!(pool.socket(&opts), Some(socket.clone()), "shared");
        let [first] = pool.pids()[..] else {
            panic!("one zygote: {:?}", pool.pids())
        };
        assert!(alive(first));

        // Killed from outside: the next replica gets a new one, and the old folder is gone.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(first as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        until("the killed zygote to exit", || {
            pool.zygotes
                .lock()
                .values_mut()
                .flatten()
                .all(|z| !matches!(z.process.try_wait(), Ok(None)))
        })
        .await;
        let again = pool.socket(&opts).expect("a new zygote");
        assert_ne!(again, socket);
        assert!(!socket.parent().unwrap().exists());
        let [second] = pool.pids()[..] else {
            panic!("one zygote: {:?}", pool.pids())
        };
        assert_ne!(second, first);

        pool.stop().await;
        assert!(!alive(second), "stop waits for the zygote");
        assert!(pool.pids().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_pool_dropped_without_stop_leaves_no_zygote() {
        let (dir, opts) = fake_jina("drop");
        let pool = ZygotePool::new();
        pool.socket(&opts).expect("a zygote");
        let pids = pool.pids();
        drop(pool);
        until("the dropped pool's zygote to exit", || {
            pids.iter().all(|p| !alive(*p))
        })
        .await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_pips_console_script_gets_a_zygote() {
        let (dir, mut opts) = fake_jina("wrapper");
        std::fs::write(&opts.jina, "#!/bin/sh\nexec jina \"$@\"\n").unwrap();
        assert_eq!(ZygotePool::new().socket(&opts), None);
        opts.jina = dir.join("missing");
        assert_eq!(ZygotePool::new().socket(&opts), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
