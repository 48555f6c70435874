//! Waiting for a Flow or Deployment to reach a phase after a change. Like the public client's
//! `_fetch_until`, with its flaws fixed: it always sleeps between polls (0.5 s, then 1 s), the
//! deadline is wall-clock time, unknown phases do not crash it, and a `Failed` phase ends the wait
//! with the server's own error.

use super::Kind;
use super::api::{Api, Fail, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// What was done, which decides the phases to wait through and the one to wait for
/// (jcloud-rest-api.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Deploy,
    Update,
    /// restart, and a secret update (which restarts).
    Restart,
    Scale,
    Recreate,
    Pause,
    Resume,
    Remove,
}

impl Op {
    pub fn desired(self) -> &'static str {
        match self {
            Op::Pause => "Paused",
            Op::Remove => "Deleted",
            _ => "Serving",
        }
    }

    /// Whether `phase` is a step on the way. Phases this client does not know (a newer server's)
    /// are taken as steps too: the deadline still bounds the wait.
    pub fn passes_through(self, phase: &str) -> bool {
        const KNOWN: [&str; 8] = [
            "", "Pending", "Starting", "Serving", "Failed", "Updating", "Deleted", "Paused",
        ];
        if !KNOWN.contains(&phase) {
            return true;
        }
        match self {
            // The public client refuses Starting after an update; a server that restarts
            // replicas to apply a spec may well report it, so we do not.
            Op::Deploy | Op::Update | Op::Restart | Op::Scale | Op::Recreate => {
                matches!(phase, "" | "Pending" | "Starting" | "Updating")
            }
            Op::Pause => matches!(phase, "" | "Pending" | "Starting" | "Updating" | "Serving"),
            Op::Resume => matches!(phase, "" | "Pending" | "Starting" | "Updating" | "Paused"),
            // Whatever the phase was (Paused, Failed…), removing it is on its way to Deleted;
            // the public client's "Serving only" made `remove all` fail on Failed flows.
            Op::Remove => phase != "Deleted",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Op::Deploy => "Deploying",
            Op::Update => "Updating",
            Op::Restart => "Restarting",
            Op::Scale => "Scaling",
            Op::Recreate => "Recreating",
            Op::Pause => "Pausing",
            Op::Resume => "Resuming",
            Op::Remove => "Removing",
        }
    }
}

pub fn phase_of(status: &Value) -> &str {
    status
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The server's explanation of a failure: `error`, else the messages of the last conditions.
pub fn failure_reason(status: &Value) -> String {
    if let Some(e) = status.get("error").and_then(Value::as_str)
        && !e.is_empty()
    {
        return e.to_string();
    }
    if let Some(e) = status.pointer("/status/error").and_then(Value::as_str)
        && !e.is_empty()
    {
        return e.to_string();
    }
    let msgs: Vec<String> = status
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("message").and_then(Value::as_str))
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();
    if msgs.is_empty() {
        "the server gave no reason".into()
    } else {
        msgs.join("; ")
    }
}

/// A spinner on stderr when it is a terminal (and `JCLOUD_NO_PROGRESSBAR` is unset); otherwise
/// one plain line per phase change, so logs of scripted runs still show progress.
pub struct Progress {
    bar: Option<ProgressBar>,
    last: Option<String>,
}

impl Progress {
    pub fn new(title: &str) -> Progress {
        let show =
            std::io::stderr().is_terminal() && std::env::var_os("JCLOUD_NO_PROGRESSBAR").is_none();
        let bar = show.then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg:.dim} {elapsed}")
                    .expect("static template"),
            );
            b.set_prefix(title.to_string());
            b.enable_steady_tick(Duration::from_millis(100));
            b
        });
        Progress { bar, last: None }
    }

    pub fn phase(&mut self, title: &str, phase: &str) {
        let shown = if phase.is_empty() { "Submitted" } else { phase };
        match &self.bar {
            Some(b) => b.set_message(format!("{shown}…")),
            None => {
                if self.last.as_deref() != Some(shown) {
                    eprintln!("{title}: {shown}");
                }
            }
        }
        self.last = Some(shown.to_string());
    }

    pub fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}

/// Polls `GET /{kind}s/{id}` until the phase `op` wants; returns the last status document.
/// For a removal, a 404 (the server forgot it) counts as removed.
pub async fn until(api: &Api, kind: Kind, id: &str, op: Op, timeout: Duration) -> Result<Value> {
    let title = format!("{} {} {id}", op.verb(), kind.noun());
    let mut progress = Progress::new(&title);
    let start = Instant::now();
    let path = format!("{}/{}", kind.path(), super::api::seg(id));
    loop {
        let r = api
            .send(reqwest::Method::GET, &path, &[], super::api::Body::Empty)
            .await?;
        if op == Op::Remove && r.status == 404 {
            return Ok(Value::Null);
        }
        super::api::check(&r, &format!("GET /{path}"), &kind.hint())?;
        let phase = phase_of(&r.json).to_string();
        progress.phase(&title, &phase);
        if phase == op.desired() {
            return Ok(r.json);
        }
        if phase == "Failed" && op != Op::Remove {
            progress.done();
            return Err(Fail::Server(format!(
                "{} {id} failed: {}\n  see `jc {} status {id} --verbose` and `jc {} logs {id}`",
                kind.noun(),
                failure_reason(&r.json),
                kind.cli(),
                kind.cli()
            )));
        }
        if !op.passes_through(&phase) {
            progress.done();
            return Err(Fail::Server(format!(
                "{} {id} is {phase}, not on its way to {}: see `jc {} status {id}`",
                kind.noun(),
                op.desired(),
                kind.cli()
            )));
        }
        let waited = start.elapsed();
        if waited >= timeout {
            progress.done();
            return Err(Fail::Server(format!(
                "{} {id} is still {} after {}s (--timeout): see `jc {} status {id}`",
                kind.noun(),
                if phase.is_empty() { "pending" } else { &phase },
                waited.as_secs(),
                kind.cli()
            )));
        }
        let pause = if waited < Duration::from_secs(5) {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        };
        tokio::time::sleep(pause.min(timeout - waited)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn phases_per_operation() {
        assert!(Op::Deploy.passes_through("Starting"));
        assert!(!Op::Deploy.passes_through("Paused"));
        assert!(Op::Update.passes_through("Starting"));
        assert!(Op::Pause.passes_through("Serving"));
        assert!(!Op::Resume.passes_through("Deleted"));
        assert!(Op::Remove.passes_through("Failed"));
        assert!(Op::Remove.passes_through("Paused"));
        assert!(
            Op::Deploy.passes_through("Deleting"),
            "unknown phases are steps"
        );
        assert_eq!(Op::Pause.desired(), "Paused");
        assert_eq!(Op::Remove.desired(), "Deleted");
    }

    #[test]
    fn failure_reasons() {
        assert_eq!(failure_reason(&json!({"error": "boom"})), "boom");
        assert_eq!(
            failure_reason(
                &json!({"status": {"conditions": [{"message": "a"}, {"message": "b"}]}})
            ),
            "a; b"
        );
        assert_eq!(failure_reason(&json!({})), "the server gave no reason");
    }
}
