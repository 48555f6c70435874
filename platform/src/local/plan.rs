//! What the reconcile loop of one Executor decides, as pure functions of what it knows: its
//! replicas (slots), the replica count asked for, its failures in a row, and the time. From
//! these come actions (start N, stop these, hold until T, give up), which the loop in `mod.rs`
//! carries out. Nothing here starts, stops or waits: that keeps every decision testable as a
//! table, and the loop's timing testable with paused time.

use std::time::Duration;
use tokio::time::Instant;

/// Consecutive failures after which an Executor is marked failed instead of retried.
pub const MAX_FAILURES: u32 = 5;

/// A crash after running this long starts a new count of failures: the Executor served, so
/// the earlier failures are not "in a row" with this one.
const LONG_RUN: Duration = Duration::from_secs(30);

/// A replica that dies this soon after it was told to stop still failed: it did not drain, it
/// crashed (a stop that raced a crash loop must not hide the loop).
const STOP_GRACE: Duration = Duration::from_secs(1);

/// What the plan knows of one replica, in the order the replicas were started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView<'a> {
    pub id: &'a str,
    pub shard: u32,
    pub ready: bool,
    /// Told to stop, and draining: it no longer counts towards the desired replicas.
    pub stopping: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start `count` new replicas of shard `shard`.
    Start { shard: u32, count: u32 },
    /// Stop this replica: out of rotation first, then drained.
    Stop { id: String, shard: u32 },
    /// Start nothing before this (a crash's backoff); look again then.
    HoldUntil(Instant),
    /// Stop retrying: the Executor cannot run (it failed `failures` times in a row).
    MarkFailed { failures: u32 },
}

/// The failures in a row of one Executor's replicas and what they impose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failures {
    pub in_a_row: u32,
    /// Backing off after the last failure: no replica starts before this.
    pub hold_until: Option<Instant>,
    /// [`MAX_FAILURES`] reached: no replica starts again.
    pub gave_up: bool,
}

/// How a replica ended, as far as the plan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It drained and exited when told to.
    Stopped,
    /// It never became ready.
    StartFailed,
    /// It exited on its own (or while draining) after serving for `ran`.
    Crashed { ran: Duration },
}

/// What a replica's end is reported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Stopped,
    Crashed,
}

/// The replicas to start and stop so that every shard has `desired` (not stopping) replicas,
/// unless the Executor is backing off (start nothing; stops still happen) or gave up. To scale
/// down, replicas still starting go first, then the newest ready ones: the oldest have warm
/// caches.
pub fn plan(
    slots: &[SlotView<'_>],
    shards: u32,
    desired: u32,
    failures: &Failures,
    now: Instant,
) -> Vec<Action> {
    let hold = failures.hold_until.filter(|t| now < *t);
    let mut actions = vec![];
    for shard in 0..shards {
        let active: Vec<(usize, &SlotView)> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.shard == shard && !s.stopping)
            .collect();
        let have = active.len() as u32;
        if have < desired {
            if !failures.gave_up && hold.is_none() {
                actions.push(Action::Start {
                    shard,
                    count: desired - have,
                });
            }
        } else if have > desired {
            let mut order = active;
            order.sort_by_key(|(i, s)| (s.ready, std::cmp::Reverse(*i)));
            actions.extend(order.iter().take((have - desired) as usize).map(|(_, s)| {
                Action::Stop {
                    id: s.id.to_string(),
                    shard,
                }
            }));
        }
    }
    if let Some(t) = hold {
        actions.push(Action::HoldUntil(t));
    }
    actions
}

impl Failures {
    /// Counts a replica's end: a failed start, or a crash (not one while draining, unless it
    /// came within [`STOP_GRACE`]), is one more failure in a row, which backs off (200 ms,
    /// 400 ms, 800 ms, ...) or, at [`MAX_FAILURES`], gives up.
    pub fn on_end(
        &mut self,
        end: End,
        was_stopping: bool,
        now: Instant,
    ) -> (Report, Option<Action>) {
        match end {
            End::Stopped => (Report::Stopped, None),
            End::Crashed { ran } if was_stopping && ran >= STOP_GRACE => (Report::Stopped, None),
            End::Crashed { ran } => {
                if ran > LONG_RUN {
                    self.in_a_row = 0;
                }
                (Report::Crashed, Some(self.failed(now)))
            }
            End::StartFailed => (Report::Crashed, Some(self.failed(now))),
        }
    }

    fn failed(&mut self, now: Instant) -> Action {
        self.in_a_row += 1;
        if self.in_a_row >= MAX_FAILURES {
            self.gave_up = true;
            Action::MarkFailed {
                failures: self.in_a_row,
            }
        } else {
            let until = now + backoff(self.in_a_row);
            self.hold_until = Some(until);
            Action::HoldUntil(until)
        }
    }
}

/// The wait before the replacement of the `n`th failure in a row: 200 ms, 400 ms, 800 ms, ...
fn backoff(n: u32) -> Duration {
    Duration::from_millis(100u64 << n.min(8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: &str, shard: u32, ready: bool, stopping: bool) -> SlotView<'_> {
        SlotView {
            id,
            shard,
            ready,
            stopping,
        }
    }

    fn start(shard: u32, count: u32) -> Action {
        Action::Start { shard, count }
    }

    fn stop(id: &str, shard: u32) -> Action {
        Action::Stop {
            id: id.into(),
            shard,
        }
    }

    /// What, slots, shards, desired, failures, and the actions wanted.
    type Case<'a> = (
        &'a str,
        Vec<SlotView<'a>>,
        u32,
        u32,
        &'a Failures,
        Vec<Action>,
    );

    #[tokio::test(start_paused = true)]
    async fn each_shard_is_brought_to_the_desired_count() {
        let now = Instant::now();
        let calm = Failures::default();
        let later = now + Duration::from_millis(300);
        let holding = Failures {
            in_a_row: 1,
            hold_until: Some(later),
            gave_up: false,
        };
        let held_before = Failures {
            in_a_row: 1,
            hold_until: Some(now - Duration::from_millis(1)),
            gave_up: false,
        };
        let gave_up = Failures {
            in_a_row: MAX_FAILURES,
            hold_until: None,
            gave_up: true,
        };
        let r = |id, shard| slot(id, shard, true, false);
        let starting = |id, shard| slot(id, shard, false, false);
        let draining = |id, shard| slot(id, shard, true, true);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("nothing, none wanted", vec![], 1, 0, &calm, vec![]),
            ("from zero", vec![], 1, 3, &calm, vec![start(0, 3)]),
            ("every shard", vec![r("a-0-0", 0)], 2, 2, &calm, vec![start(0, 1), start(1, 2)]),
            ("starting ones count", vec![starting("a-0", 0)], 1, 1, &calm, vec![]),
            ("draining ones do not", vec![draining("a-0", 0)], 1, 1, &calm, vec![start(0, 1)]),
            ("backing off: nothing starts, wake then", vec![], 1, 1, &holding, vec![Action::HoldUntil(later)]),
            ("a backoff that passed holds nothing", vec![], 1, 1, &held_before, vec![start(0, 1)]),
            ("given up: nothing starts", vec![], 1, 2, &gave_up, vec![]),
            ("given up: still scales down", vec![r("a-0", 0), r("a-1", 0)], 1, 1, &gave_up, vec![stop("a-1", 0)]),
            ("backing off: still scales down", vec![r("a-0", 0), r("a-1", 0)], 1, 1, &holding, vec![stop("a-1", 0), Action::HoldUntil(later)]),
            ("to zero", vec![r("a-0", 0), starting("a-1", 0)], 1, 0, &calm, vec![stop("a-1", 0), stop("a-0", 0)]),
        ];
        for (what, slots, shards, desired, failures, want) in cases {
            assert_eq!(plan(&slots, shards, desired, failures, now), want, "{what}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scaling_down_stops_starting_ones_then_the_newest_ready_ones() {
        let now = Instant::now();
        let slots = [
            slot("a-0", 0, true, false),
            slot("a-1", 0, false, false),
            slot("a-2", 0, true, false),
            slot("a-3", 0, true, true),
            slot("a-4", 0, true, false),
            slot("a-5", 0, false, false),
        ];
        #[rustfmt::skip]
        let cases: [(u32, &[&str]); 6] = [
            (5, &[]),
            (4, &["a-5"]),
            (3, &["a-5", "a-1"]),
            (2, &["a-5", "a-1", "a-4"]),
            (1, &["a-5", "a-1", "a-4", "a-2"]),
            (0, &["a-5", "a-1", "a-4", "a-2", "a-0"]),
        ];
        for (desired, stopped) in cases {
            let want: Vec<Action> = stopped.iter().map(|id| stop(id, 0)).collect();
            assert_eq!(
                plan(&slots, 1, desired, &Failures::default(), now),
                want,
                "down to {desired}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_then_give_up_and_a_long_run_starts_a_new_count() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let crash = |ran| End::Crashed { ran };
        // (end, was stopping, report, failures in a row after it, action)
        #[rustfmt::skip]
        let steps: Vec<(End, bool, Report, u32, Option<Action>)> = vec![
            (End::Stopped, false, Report::Stopped, 0, None),
            (End::StartFailed, false, Report::Crashed, 1, Some(Action::HoldUntil(now + ms(200)))),
            (crash(secs(5)), false, Report::Crashed, 2, Some(Action::HoldUntil(now + ms(400)))),
            // Told to stop and gone after serving: a stop, whatever its exit status.
            (crash(secs(5)), true, Report::Stopped, 2, None),
            // Gone at once although told to stop: it crashed.
            (crash(ms(500)), true, Report::Crashed, 3, Some(Action::HoldUntil(now + ms(800)))),
            // It served for a while: the count starts again.
            (crash(secs(31)), false, Report::Crashed, 1, Some(Action::HoldUntil(now + ms(200)))),
            (End::StartFailed, false, Report::Crashed, 2, Some(Action::HoldUntil(now + ms(400)))),
            (End::StartFailed, false, Report::Crashed, 3, Some(Action::HoldUntil(now + ms(800)))),
            (End::StartFailed, false, Report::Crashed, 4, Some(Action::HoldUntil(now + ms(1600)))),
            (End::StartFailed, false, Report::Crashed, 5, Some(Action::MarkFailed { failures: 5 })),
        ];
        let mut f = Failures::default();
        for (i, (end, stopping, report, in_a_row, action)) in steps.into_iter().enumerate() {
            assert_eq!(
                f.on_end(end, stopping, now),
                (report, action),
                "step {i}: {end:?}"
            );
            assert_eq!(f.in_a_row, in_a_row, "step {i}");
        }
        assert!(f.gave_up);
    }

    #[test]
    fn the_backoff_doubles_and_stops_growing() {
        let ms = |n: u32| backoff(n).as_millis();
        assert_eq!((1..=4).map(ms).collect::<Vec<_>>(), [200, 400, 800, 1600]);
        assert_eq!(ms(8), ms(40), "capped, and no overflow");
    }
}
