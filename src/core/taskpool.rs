//! The counters of a `TaskPool`: what happened to every task, in atomics, so that
//! submitting and running a task never takes a lock for bookkeeping.
//!
//! # Life of a task and its counters
//! `submit` (about to be queued) -> either `withdraw` (it was not queued; `rejected` if the
//! queue was full) or, once a worker takes it, `start` then `finish(ok)` — or `cancel`
//! (cancelled while queued, never started). Each step is one atomic increment
//! (`withdraw` a decrement of `submitted`). The pool calls `start` and `finish` of one
//! task on the same worker thread, in that order.
//!
//! # Invariants of a [`Snapshot`]
//! - `started == completed + failed + active`, exactly, with `active >= 0`: a snapshot
//!   never counts a finish whose start it missed.
//! - `submitted >= completed + failed + cancelled` (hence `outstanding() >= 0`): a task's
//!   submit happens before its finish or cancel (through the queue that carries it).
//!
//! # Orderings
//! Increments are `Release` RMWs; the readers load with `Acquire`, the finish counters
//! (`completed`, `failed`, `cancelled`) *before* `started` and `submitted`. A load that
//! returns `n` reads from an RMW whose release sequence contains every earlier RMW of
//! that counter (RMWs continue release sequences), so it synchronises with all `n`
//! finishes counted; each was preceded, in its worker's program order, by the matching
//! `start` (and, through the queue's lock, by its `submit`). Those increments therefore
//! happen before the later loads of `started` and `submitted`, which see them. No
//! `SeqCst` is needed: no store/load pair across two counters has to be ordered.
//!
//! Nothing here can panic or wrap observably: counters only grow (a `u64` incremented
//! once per task), and the derived values use saturating arithmetic, so even a caller
//! that breaks the protocol (more `withdraw`s than `submit`s, a `finish` without a
//! `start`) gets clamped numbers, never an overflow. The loom model at the end checks the
//! invariants under every interleaving of workers against a reader (`make loom`).

use crate::core::sync::{AtomicI64, AtomicU64, Ordering};

/// How many times `snapshot` re-reads to find the finish counters still.
const SNAPSHOT_TRIES: usize = 64;

/// The counters of one pool.
#[derive(Debug)]
pub struct TaskCounters {
    /// Signed: a `withdraw` may briefly pass the `submit` it undoes in another thread's
    /// view; only non-negative values are reported.
    submitted: AtomicI64,
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    cancelled: AtomicU64,
}

/// The counters read together (see the module docs for what is exact).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub submitted: u64,
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    pub rejected: u64,
    pub cancelled: u64,
    /// Running now: `started - completed - failed`.
    pub active: u64,
}

impl Default for TaskCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskCounters {
    pub fn new() -> Self {
        Self {
            submitted: AtomicI64::new(0),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
    }

    /// A task is about to be queued.
    pub fn submit(&self) {
        self.submitted.fetch_add(1, Ordering::Release);
    }

    /// The task announced by [`Self::submit`] was not queued; `rejected`: the queue was full.
    pub fn withdraw(&self, rejected: bool) {
        self.submitted.fetch_sub(1, Ordering::Release);
        if rejected {
            self.rejected.fetch_add(1, Ordering::Release);
        }
    }

    /// A worker starts a task.
    pub fn start(&self) {
        self.started.fetch_add(1, Ordering::Release);
    }

    /// The task this worker started returned (`ok`) or raised.
    pub fn finish(&self, ok: bool) {
        if ok {
            self.completed.fetch_add(1, Ordering::Release);
        } else {
            self.failed.fetch_add(1, Ordering::Release);
        }
    }

    /// A queued task was cancelled before it started.
    pub fn cancel(&self) {
        self.cancelled.fetch_add(1, Ordering::Release);
    }

    /// Finished or cancelled tasks, read before anything they imply (module docs).
    fn done(&self) -> (u64, u64, u64) {
        (
            self.completed.load(Ordering::Acquire),
            self.failed.load(Ordering::Acquire),
            self.cancelled.load(Ordering::Acquire),
        )
    }

    /// Tasks submitted and not yet finished or cancelled (queued, in transit, running).
    pub fn outstanding(&self) -> i64 {
        let (completed, failed, cancelled) = self.done();
        let done = completed.saturating_add(failed).saturating_add(cancelled);
        let submitted = self.submitted.load(Ordering::Acquire);
        submitted.saturating_sub(i64::try_from(done).unwrap_or(i64::MAX))
    }

    /// The counters read together.
    pub fn snapshot(&self) -> Snapshot {
        // The finish counters are read again after `started`: when they did not move,
        // they held those values at the moment `started` was read (they only grow), so
        // `active` is what was running at one instant (at most the number of workers).
        // Under heavy churn a few retries may all see a finish in between; the last try
        // keeps the invariants above, only `active` may then count a task finished since.
        let mut done = self.done();
        let mut started = self.started.load(Ordering::Acquire);
        for _ in 0..SNAPSHOT_TRIES {
            let again = self.done();
            if again == done {
                break;
            }
            done = again;
            started = self.started.load(Ordering::Acquire);
        }
        let (completed, failed, cancelled) = done;
        let rejected = self.rejected.load(Ordering::Acquire);
        let submitted = self.submitted.load(Ordering::Acquire).max(0) as u64;
        Snapshot {
            submitted,
            started,
            completed,
            failed,
            rejected,
            cancelled,
            active: started.saturating_sub(completed.saturating_add(failed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn each_step_is_counted() {
        let c = TaskCounters::new();
        for _ in 0..4 {
            c.submit();
        }
        c.withdraw(true);
        c.start();
        c.finish(true);
        c.start();
        c.finish(false);
        c.start();
        c.cancel();
        let s = c.snapshot();
        assert_eq!(
            s,
            Snapshot {
                submitted: 3,
                started: 3,
                completed: 1,
                failed: 1,
                rejected: 1,
                cancelled: 1,
                active: 1,
            }
        );
        assert_eq!(c.outstanding(), 0);
        c.withdraw(false);
        assert_eq!(c.snapshot().rejected, 1);
        assert_eq!(c.outstanding(), -1);
    }

    #[test]
    fn protocol_breaches_clamp_instead_of_wrapping() {
        let c = TaskCounters::new();
        c.withdraw(false);
        c.finish(true);
        c.finish(false);
        let s = c.snapshot();
        assert_eq!((s.submitted, s.started, s.active), (0, 0, 0));
        assert_eq!(c.outstanding(), -3);
        // submitted far below zero, done near the top: still no overflow.
        c.submitted.store(i64::MIN, Ordering::Relaxed);
        c.completed.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(c.outstanding(), i64::MIN);
        assert_eq!(c.snapshot().submitted, 0);
        c.submitted.store(i64::MAX, Ordering::Relaxed);
        c.completed.store(0, Ordering::Relaxed);
        assert_eq!(c.outstanding(), i64::MAX - 1);
    }

    #[test]
    fn snapshots_stay_exact_while_workers_run() {
        let c = Arc::new(TaskCounters::new());
        let workers = 4;
        let per = 20_000u64;
        let go = Arc::new(Barrier::new(workers + 1));
        let hs: Vec<_> = (0..workers)
            .map(|w| {
                let (c, go) = (c.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    for i in 0..per {
                        c.submit();
                        c.start();
                        c.finish((i + w as u64) % 3 != 0);
                    }
                })
            })
            .collect();
        go.wait();
        for _ in 0..20_000 {
            let s = c.snapshot();
            assert!(s.started >= s.completed + s.failed, "{s:?}");
            assert_eq!(s.started, s.completed + s.failed + s.active);
            assert!(s.active <= workers as u64, "{s:?}");
            assert!(s.submitted >= s.completed + s.failed);
            assert!(c.outstanding() >= 0);
        }
        for h in hs {
            h.join().unwrap();
        }
        let s = c.snapshot();
        assert_eq!(s.started, workers as u64 * per);
        assert_eq!((s.active, c.outstanding()), (0, 0));
    }
}

/// Two workers start and finish a task each while a reader takes a snapshot: it has
/// `started == completed + failed + active` with no finish counted before its start; and
/// `outstanding` never goes negative across the handoff from submitter to worker.
#[cfg(test)] // separate from cfg(loom): clippy sees a plain cfg(test) as test code
#[cfg(loom)]
mod loom_models {
    use super::*;
    use loom::thread;
    use std::sync::Arc;

    #[test]
    fn loom_task_counters_snapshot_never_sees_a_finish_before_its_start() {
        loom::model(|| {
            let c = Arc::new(TaskCounters::new());
            // Both tasks were submitted (and queued) before the workers took them.
            c.submit();
            c.submit();
            let workers: Vec<_> = [true, false]
                .into_iter()
                .map(|ok| {
                    let c = c.clone();
                    thread::spawn(move || {
                        c.start();
                        c.finish(ok);
                    })
                })
                .collect();
            // Let the workers go first (see `core::breaker`'s models on loom's search).
            thread::yield_now();
            let s = c.snapshot();
            assert!(s.started >= s.completed + s.failed, "{s:?}");
            assert_eq!(s.started, s.completed + s.failed + s.active);
            assert!(s.active <= 2);
            for w in workers {
                w.join().unwrap();
            }
            let s = c.snapshot();
            assert_eq!((s.started, s.completed, s.failed, s.active), (2, 1, 1, 0));
            assert_eq!(c.outstanding(), 0);
        });
    }

    /// A submit travels to a worker through a handoff (here an atomic flag, standing in
    /// for the queue's lock): a reader never sees the task finished but not submitted.
    #[test]
    fn loom_task_counters_outstanding_never_negative_across_a_handoff() {
        use crate::core::sync::AtomicBool;
        loom::model(|| {
            let c = Arc::new(TaskCounters::new());
            let queued = Arc::new(AtomicBool::new(false));
            let submitter = {
                let (c, queued) = (c.clone(), queued.clone());
                thread::spawn(move || {
                    c.submit();
                    queued.store(true, Ordering::Release);
                })
            };
            let worker = {
                let (c, queued) = (c.clone(), queued.clone());
                thread::spawn(move || {
                    if queued.load(Ordering::Acquire) {
                        c.start();
                        c.finish(true);
                    }
                })
            };
            thread::yield_now();
            let s = c.snapshot();
            assert!(s.submitted >= s.completed + s.failed + s.cancelled, "{s:?}");
            assert!(c.outstanding() >= 0);
            submitter.join().unwrap();
            worker.join().unwrap();
        });
    }
}
