//! The counters of a `TaskPool`: what happened to every task, in atomics, so that
//! submitting and running a task never takes a lock for bookkeeping; and its admission
//! rule, one atomic word, so that a pool never holds more than `limit` tasks.
//!
//! # Admission
//! `outstanding` counts the tasks admitted and not yet finished, cancelled or withdrawn:
//! queued, in transit to a worker, or running. A submit is admitted by one CAS that
//! raises it while it is below `limit` (the pool passes `max_workers + max_queue`); a
//! refused CAS writes nothing. So `outstanding <= limit` at every instant, exactly, for
//! any number of concurrent submitters, without a lock. The pool's queue is sized
//! `limit` too and an admitted task is queued after its admission and taken out before
//! its release, so the queue always has room for an admitted task: a burst into idle
//! workers is accepted up to `limit`, and at most `limit - max_workers = max_queue` tasks
//! wait beyond the workers' capacity.
//!
//! A submitter that waits for room (the block policy, `TaskPool.map`) registers in
//! `waiters`, then re-tries and sleeps on `cv` under `wait_lock`; a release that sees
//! `waiters > 0` takes `wait_lock` and notifies. `outstanding` and `waiters` are the two
//! halves of a store/load pair (`SeqCst` on both sides, with a `SeqCst` fence between
//! each side's write and read): either the waiter's re-try sees the release, or the
//! release sees the waiter — and since the waiter re-tries under
//! `wait_lock` before sleeping, the notify cannot fall between its re-try and its sleep.
//! (The same protocol as `core::budget`'s blocked takers.) `close` sets `closed`
//! and wakes every waiter, which then gives up.
//!
//! # Life of a task and its counters
//! `admit` (outstanding + 1, submitted + 1) -> either `withdraw` (it could not be
//! queued: submitted - 1, released) or, once a worker takes it, `start` then `finish(ok)`
//! — or `cancel` (cancelled while queued, never started). `finish`, `cancel` and
//! `withdraw` count first and release (outstanding - 1) last, so whoever is admitted
//! thanks to a release sees that task counted. A refused submit counts in `rejected`
//! (`reject`) and nowhere else. The pool calls `start` and `finish` of one task on the
//! same worker thread, in that order.
//!
//! # Invariants of a [`Snapshot`]
//! - `started == completed + failed + active`, exactly, with `active >= 0`: a snapshot
//!   never counts a finish whose start it missed.
//! - `submitted >= completed + failed + cancelled`: a task's admission happens before
//!   its finish or cancel (through the queue that carries it).
//!
//! # Orderings
//! Counter increments are `Release` RMWs; the readers load with `Acquire`, the finish
//! counters (`completed`, `failed`, `cancelled`) *before* `started` and `submitted`. A
//! load that returns `n` reads from an RMW whose release sequence contains every earlier
//! RMW of that counter (RMWs continue release sequences), so it synchronises with all
//! `n` finishes counted; each was preceded, in its worker's program order, by the
//! matching `start` (and, through the queue's lock, by its admission). Those increments
//! therefore happen before the later loads of `started` and `submitted`, which see them.
//! `outstanding` is `SeqCst` throughout (the admission CAS, the release, the loads), for
//! the waiter protocol above.
//!
//! Nothing here can panic or wrap observably: counters only grow (a `u64` incremented
//! once per task), a release never takes `outstanding` below zero (a checked CAS), and
//! the derived values use saturating arithmetic, so even a caller that breaks the
//! protocol (more `withdraw`s than admissions, a `finish` without a `start`) gets
//! clamped numbers, never an overflow. The loom models at the end check the invariants
//! under every interleaving of workers against a reader, the admission bound under
//! racing submitters, and the waiter/release pair (`make loom`).

use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::core::sync::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
use loom::sync::atomic::fence;
#[cfg(not(loom))]
use std::sync::atomic::fence;

/// How many times `snapshot` re-reads to find the finish counters still.
const SNAPSHOT_TRIES: usize = 64;

/// The counters and the admission word of one pool.
#[derive(Debug)]
pub struct TaskCounters {
    /// Signed: read while a `withdraw` may run; only non-negative values are reported.
    submitted: AtomicI64,
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    cancelled: AtomicU64,
    /// Admitted and not yet released; `<= limit` at every instant.
    outstanding: AtomicU64,
    limit: u64,
    /// Submitters waiting for room (module docs: the waiter protocol).
    waiters: AtomicUsize,
    closed: AtomicBool,
    wait_lock: Mutex<()>,
    cv: Condvar,
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

/// What one wait slice of a blocked submitter ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Still no room: wait another slice (after the caller's signal check) or give up.
    NoRoom,
    /// `close` was called: the pool takes no more tasks.
    Closed,
}

impl Default for TaskCounters {
    fn default() -> Self {
        Self::new(u64::MAX)
    }
}

impl TaskCounters {
    /// Counters admitting at most `limit` outstanding tasks.
    pub fn new(limit: u64) -> Self {
        Self {
            submitted: AtomicI64::new(0),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            outstanding: AtomicU64::new(0),
            limit,
            waiters: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            wait_lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Admits a task if fewer than `limit` are outstanding (one CAS loop, no lock);
    /// counts it as submitted. False: no room, nothing written.
    pub fn try_admit(&self) -> bool {
        let mut cur = self.outstanding.load(Ordering::SeqCst);
        loop {
            if cur >= self.limit {
                return false;
            }
            match self.outstanding.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
        self.submitted.fetch_add(1, Ordering::Release);
        true
    }

    /// Registers a submitter that waits for room until the guard is dropped.
    pub fn enter_wait(&self) -> WaitGuard<'_> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        // The waiter's half of the store/load pair (module docs); explicit, so that loom,
        // which models `SeqCst` accesses as acquire/release, checks it too.
        fence(Ordering::SeqCst);
        WaitGuard(self)
    }

    /// One wait slice of a registered submitter: re-tries under the wait lock, sleeps up
    /// to `slice` unless woken, and re-tries once more.
    pub fn admit_or_sleep(&self, _guard: &WaitGuard<'_>, slice: Duration) -> Admission {
        let mut g = self.wait_lock.lock();
        if self.try_admit() {
            return Admission::Admitted;
        }
        if self.is_closed() {
            return Admission::Closed;
        }
        self.cv.wait_for(&mut g, slice);
        drop(g);
        if self.try_admit() {
            Admission::Admitted
        } else if self.is_closed() {
            Admission::Closed
        } else {
            Admission::NoRoom
        }
    }

    /// A submit was refused for lack of room.
    pub fn reject(&self) {
        self.rejected.fetch_add(1, Ordering::Release);
    }

    /// The task admitted by [`Self::try_admit`] was not queued after all.
    pub fn withdraw(&self) {
        self.submitted.fetch_sub(1, Ordering::Release);
        let _ = self.release();
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
        let _ = self.release();
    }

    /// A queued task was cancelled before it started.
    pub fn cancel(&self) {
        self.cancelled.fetch_add(1, Ordering::Release);
        let _ = self.release();
    }

    /// Gives a task's room back (never below zero) and wakes a waiting submitter; true
    /// if it saw one.
    fn release(&self) -> bool {
        let _ = self
            .outstanding
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        // The releaser's half of the pair (see `enter_wait`).
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let _g = self.wait_lock.lock();
        self.cv.notify_one();
        true
    }

    /// Refuses every later wait and wakes the submitters waiting now. Admission itself
    /// goes on (the pool's closed queue refuses the task); idempotent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _g = self.wait_lock.lock();
        self.cv.notify_all();
    }

    /// Submitters waiting for room now.
    pub fn waiting(&self) -> usize {
        self.waiters.load(Ordering::SeqCst)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Tasks admitted and not yet finished, cancelled or withdrawn (queued, in transit,
    /// running): exact, `<= limit`.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::SeqCst)
    }

    /// Finished or cancelled tasks, read before anything they imply (module docs).
    fn done(&self) -> (u64, u64, u64) {
        (
            self.completed.load(Ordering::Acquire),
            self.failed.load(Ordering::Acquire),
            self.cancelled.load(Ordering::Acquire),
        )
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

/// Deregisters a waiting submitter on drop.
pub struct WaitGuard<'a>(&'a TaskCounters);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn each_step_is_counted() {
        let c = TaskCounters::new(10);
        for _ in 0..4 {
            assert!(c.try_admit());
        }
        c.withdraw();
        c.reject();
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
    }

    #[test]
    fn admission_stops_at_the_limit_and_resumes_on_release() {
        let c = TaskCounters::new(3);
        assert!((0..3).all(|_| c.try_admit()));
        assert!(!c.try_admit());
        assert_eq!((c.outstanding(), c.snapshot().submitted), (3, 3));
        c.start();
        c.finish(true);
        assert!(c.try_admit());
        assert!(!c.try_admit());
        c.cancel();
        c.withdraw();
        assert_eq!(c.outstanding(), 1);
        assert_eq!(c.snapshot().submitted, 3);
    }

    #[test]
    fn protocol_breaches_clamp_instead_of_wrapping() {
        let c = TaskCounters::new(2);
        c.withdraw();
        c.finish(true);
        c.finish(false);
        c.cancel();
        let s = c.snapshot();
        assert_eq!((s.submitted, s.started, s.active), (0, 0, 0));
        assert_eq!(c.outstanding(), 0);
        assert!(c.try_admit() && c.try_admit() && !c.try_admit());
        let big = TaskCounters::new(u64::MAX);
        big.outstanding.store(u64::MAX - 1, Ordering::Relaxed);
        assert!(big.try_admit());
        assert!(!big.try_admit());
    }

    #[test]
    fn concurrent_submitters_never_pass_the_limit() {
        let limit = 8u64;
        let c = Arc::new(TaskCounters::new(limit));
        let threads = 4;
        let go = Arc::new(Barrier::new(threads));
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (c, go) = (c.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    let mut admitted = 0u64;
                    for i in 0..20_000u64 {
                        if c.try_admit() {
                            admitted += 1;
                            assert!(c.outstanding() <= limit);
                            c.start();
                            c.finish(i % 2 == 0);
                        } else {
                            c.reject();
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        let s = c.snapshot();
        assert_eq!(s.submitted, admitted);
        assert_eq!(s.submitted + s.rejected, threads as u64 * 20_000);
        assert_eq!(s.completed + s.failed, admitted);
        assert_eq!(c.outstanding(), 0);
    }

    #[test]
    fn a_waiting_submitter_is_woken_by_a_release_and_by_close() {
        let c = Arc::new(TaskCounters::new(1));
        assert!(c.try_admit());
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || {
                let g = c.enter_wait();
                loop {
                    match c.admit_or_sleep(&g, Duration::from_secs(10)) {
                        Admission::NoRoom => {}
                        other => return other,
                    }
                }
            })
        };
        while c.waiters.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let t = std::time::Instant::now();
        c.start();
        c.finish(true);
        assert_eq!(waiter.join().unwrap(), Admission::Admitted);
        assert!(t.elapsed() < Duration::from_secs(5), "woken, not timed out");

        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || {
                let g = c.enter_wait();
                c.admit_or_sleep(&g, Duration::from_secs(10))
            })
        };
        while c.waiters.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        c.close();
        assert_eq!(waiter.join().unwrap(), Admission::Closed);
        assert!(c.is_closed());
        assert_eq!(c.waiters.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn snapshots_stay_exact_while_workers_run() {
        let c = Arc::new(TaskCounters::default());
        let workers = 4;
        let per = 20_000u64;
        let go = Arc::new(Barrier::new(workers + 1));
        let hs: Vec<_> = (0..workers)
            .map(|w| {
                let (c, go) = (c.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    for i in 0..per {
                        assert!(c.try_admit());
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
            assert!(c.outstanding() <= workers as u64);
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
/// `started == completed + failed + active` with no finish counted before its start;
/// racing submitters never pass the limit; and a waiting submitter never misses the
/// release that makes room.
#[cfg(test)] // separate from cfg(loom): clippy sees a plain cfg(test) as test code
#[cfg(loom)]
mod loom_models {
    use super::*;
    use loom::thread;
    use std::sync::Arc;

    #[test]
    fn loom_task_counters_snapshot_never_sees_a_finish_before_its_start() {
        loom::model(|| {
            let c = Arc::new(TaskCounters::new(2));
            // Both tasks were admitted (and queued) before the workers took them.
            assert!(c.try_admit() && c.try_admit());
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

    /// Two submitters race for the last unit of room while a worker finishes a task:
    /// `outstanding` never passes the limit, and every admission is counted.
    #[test]
    fn loom_task_counters_admission_never_passes_the_limit() {
        loom::model(|| {
            let c = Arc::new(TaskCounters::new(2));
            assert!(c.try_admit());
            let submitters: Vec<_> = (0..2)
                .map(|_| {
                    let c = c.clone();
                    thread::spawn(move || {
                        let ok = c.try_admit();
                        assert!(c.outstanding() <= 2);
                        ok
                    })
                })
                .collect();
            let worker = {
                let c = c.clone();
                thread::spawn(move || {
                    c.start();
                    c.finish(true);
                })
            };
            let admitted = submitters
                .into_iter()
                .map(|h| u64::from(h.join().unwrap()))
                .sum::<u64>();
            worker.join().unwrap();
            assert!(admitted >= 1);
            assert_eq!(c.outstanding(), admitted);
            assert_eq!(c.snapshot().submitted, 1 + admitted);
        });
    }

    /// The waiter protocol without the sleep: a submitter registers, then re-tries; a
    /// worker releases, then looks for waiters (`release`, as `finish` runs it). Either
    /// the re-try is admitted or the release sees the waiter (and notifies it under the
    /// lock the waiter re-tries under): no wake-up is lost.
    #[test]
    fn loom_task_counters_a_waiter_never_misses_a_release() {
        loom::model(|| {
            let c = Arc::new(TaskCounters::new(1));
            assert!(c.try_admit());
            let worker = {
                let c = c.clone();
                thread::spawn(move || c.release())
            };
            let g = c.enter_wait();
            let admitted = c.try_admit();
            let saw_waiter = worker.join().unwrap();
            assert!(admitted || saw_waiter);
            drop(g);
        });
    }
}
