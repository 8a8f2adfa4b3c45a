//! A bounded multi-producer, multi-consumer queue with an overflow policy, blocking and
//! non-blocking operations, close (shutdown, optionally immediate), `queue.Queue`'s
//! task accounting (`task_done`/`join`), and asynchronous waiters.
//!
//! # Structure
//! One `parking_lot::Mutex` guards a `VecDeque<T>` of items, the closed flag and three
//! FIFO lists of asynchronous waiters (`W`, e.g. a callable that schedules a wake-up on an
//! event loop): getters, putters and joiners. Every critical section is O(1) (batches:
//! O(batch); an immediate shutdown: O(items)), so one lock is cheap; the queue is a
//! single FIFO, so sharding it would break ordering.
//!
//! Blocked threads do not wait on that lock. They sleep on one of three *bells* (a mutex
//! of their own and a condvar): `items` for getters, rung when items arrive or at close,
//! `room` for putters, rung when room appears or at close, and `done` for joiners, rung
//! when the unfinished count reaches zero. A sleeper's condition is read from the
//! atomics `len`, `closed` and `unfinished`, never from the guarded state.
//!
//! # Task accounting
//! `unfinished` counts the items that entered and are not finished yet, as
//! `queue.Queue.unfinished_tasks` does: a put adds one per item that entered; a
//! [`WorkQueue::task_done`] takes one off (refused at zero); an item that leaves without
//! being got counts as finished at once (evicted by `drop_oldest`: the incoming item
//! takes its place, so the count does not change; drained by an immediate shutdown or
//! the collector's [`WorkQueue::clear`]: taken off, never below zero). It is written
//! only under the lock, so a plain load and store keep it (no read-modify-write on the
//! put path). The decrement that reaches zero rings `done` and hands every asynchronous
//! joiner back to be woken; a joiner only retries, like the other waiters.
//!
//! # Where items move, and why waits move nothing
//! Every blocking call is a loop of *attempts* and *waits*: an attempt takes the lock,
//! moves items and waiters in or out, and never waits; a wait moves nothing and holds
//! only a bell's lock. The caller decides how each wait runs (`outside`): the Python
//! binding runs it detached from the interpreter and every attempt attached. So items and
//! waiters enter and leave the queue only while attached, and the queue's lock is taken
//! only by attached threads, which never hold it across a point where the interpreter
//! can stop them. The garbage collector relies on both: it runs while every other thread
//! is either stopped outside this lock or detached and moving nothing, so the lock is
//! free for its visit and what it visits stays put between its passes.
//!
//! # Invariants
//! - `len <= maxsize` at every instant; no operation ever grows the deque beyond it.
//! - Exactly once: every item that entered the queue is taken by exactly one getter or
//!   counted in `dropped`. `put` counts the items that entered. Counters change only
//!   under the lock, so a [`Stats`] snapshot taken under it satisfies
//!   `put == got + dropped + size` exactly.
//! - `rejected` counts items that did not enter for lack of room: the reject policy, the
//!   `drop_newest` policy (which refuses without an error), a full non-waiting put on a
//!   block-policy queue, and a blocking put that timed out. A put into a closed queue is
//!   not counted (it fails with `Closed`, not for lack of room).
//! - Nothing owned by the queue is dropped under the lock: evicted items (`drop_oldest`),
//!   refused items, and waiters to wake are handed back to the caller, who drops or fires
//!   them after the lock is released. With Python items that matters: the last
//!   reference's `__del__` may run arbitrary code.
//! - No lost wake-up: the attempt that finds a blocking call's condition false counts
//!   the caller in `getting`/`putting` in the same critical section, and every later
//!   attempt that makes the condition true reads the count in its own critical section
//!   (the queue's lock orders the two, so `Relaxed` suffices) and, if anyone is counted,
//!   rings the bell after unlocking. The ring takes the bell's lock, which the sleeper
//!   holds from its check of `len`/`closed` until the condvar releases it, so the ring
//!   either comes before the check (which then sees the change: the bell's lock orders
//!   them) or finds the sleeper parked. The ringer counts off the sleepers it wakes (a
//!   thread that was woken and waits to run, or for the interpreter, is not rung
//!   again), and a woken sleeper goes straight back to an attempt, which counts it in
//!   again if it must wait again; a sleeper whose wait ends otherwise (its condition
//!   seen, a timeout, an interruption) counts itself off. Without sleepers an attempt
//!   touches no bell: the uncontended path costs what a plain mutex-guarded deque
//!   costs. Waits are cut into slices of at most [`SLICE`] so the caller's `check` hook
//!   (signal handling) runs at least that often, with the bell's lock released.
//! - Asynchronous waiters never receive items directly: a woken waiter only retries, so
//!   a waiter that is cancelled after its wake-up cannot lose an item. It must then call
//!   [`WorkQueue::forget_getter`] / [`WorkQueue::forget_putter`], which pass the wake-up
//!   on to the next waiter when there is still something to do. Joiners are all woken
//!   together, so a cancelled one ([`WorkQueue::forget_joiner`]) has nothing to pass on.
//! - `unfinished >= 0` always; with `task_done` called once per item got, `unfinished ==
//!   put - dropped - task_done calls` (the join protocol's promise).
//!
//! # Orderings
//! Everything but the sleepers' counting off is written under the queue's lock; the
//! counters, `len`, `closed`, `unfinished` and the sleeper counts use `Relaxed` (the mutex orders them
//! for snapshot readers and for the attempts that read the sleeper counts, and a sleeper
//! reads `len` and `closed` under its bell's lock, which a ringer takes after the change,
//! so the bell's mutex orders them for sleepers). A count-off racing with an attempt
//! only makes that attempt ring once for nothing. Lock-free readers (`len`,
//! `is_closed`) get a value that was true at some instant, which is all `qsize()` ever
//! promises.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

#[cfg(doc)]
use crate::core::wait::SLICE;
use crate::core::wait::{deadline, Pacer, Tick};

/// What a put does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Wait for room (or refuse at once in the non-blocking calls).
    Block,
    /// Refuse the new item with an error.
    Reject,
    /// Accept the new item and evict the oldest one (counted as dropped).
    DropOldest,
    /// Refuse the new item without an error (counted as rejected): the queue keeps what
    /// it has.
    DropNewest,
}

impl Overflow {
    pub const NAMES: &'static str = "'block', 'reject', 'drop_oldest' or 'drop_newest'";

    pub fn parse(s: &str) -> Result<Self, QueueError> {
        match s {
            "block" => Ok(Self::Block),
            "reject" => Ok(Self::Reject),
            "drop_oldest" => Ok(Self::DropOldest),
            "drop_newest" => Ok(Self::DropNewest),
            other => Err(QueueError::Overflow(other.to_owned())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Reject => "reject",
            Self::DropOldest => "drop_oldest",
            Self::DropNewest => "drop_newest",
        }
    }
}

/// The bound of a queue asked for without one (`queue.Queue`'s `maxsize <= 0`): a guard
/// against a runaway producer, far beyond what a working queue holds. Memory grows with
/// the items, never with the bound.
pub const IMPLICIT_BOUND: usize = 1 << 31;

/// The bound and policy of a queue asked for with `queue.Queue`'s `maxsize`: as given
/// when it is positive; at zero or less, no bound of the caller's, so
/// [`IMPLICIT_BOUND`], where a blocking put is refused rather than left waiting
/// (`Block` runs as `Reject`; the other policies act as usual).
pub fn queue_bound(maxsize: i64, overflow: Overflow) -> (usize, Overflow) {
    match usize::try_from(maxsize) {
        Ok(n) if n > 0 => (n, overflow),
        // Beyond `usize` (a 32-bit target): as large as it gets.
        Err(_) if maxsize > 0 => (usize::MAX, overflow),
        _ => match overflow {
            Overflow::Block => (IMPLICIT_BOUND, Overflow::Reject),
            other => (IMPLICIT_BOUND, other),
        },
    }
}

/// A bad argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    MaxSize,
    Overflow(String),
    /// [`WorkQueue::task_done`] with no unfinished item (`queue.Queue`'s words).
    TaskDone,
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MaxSize => write!(f, "maxsize must be >= 1"),
            Self::Overflow(s) => write!(f, "overflow must be {}, not '{s}'", Overflow::NAMES),
            Self::TaskDone => write!(f, "task_done() called too many times"),
        }
    }
}

impl std::error::Error for QueueError {}

/// Why a put did not accept its item; the item is handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum PutError<T, E = ()> {
    /// Refused for lack of room (counted in `rejected`): the reject policy, or a
    /// non-waiting put under the block policy.
    Full(T),
    /// The `drop_newest` policy refused it for lack of room (counted in `rejected`); not
    /// an error for the caller.
    Discarded(T),
    /// A blocking put ran out of time (counted in `rejected`).
    Timeout(T),
    /// The queue is closed (not counted).
    Closed(T),
    /// Block policy and no room: the caller may wait (not counted). For
    /// [`WorkQueue::put_or_wait`] with a waiter, the waiter is now registered.
    WouldBlock(T),
    /// The `check` hook failed while waiting (not counted).
    Interrupted(T, E),
}

/// Why a get returned no item.
#[derive(Debug, PartialEq, Eq)]
pub enum GetError<E = ()> {
    /// Nothing there right now (for `get_or_wait` with a waiter: the waiter is registered).
    Empty,
    /// A blocking get ran out of time.
    Timeout,
    /// Closed and drained.
    Closed,
    /// The `check` hook failed while waiting.
    Interrupted(E),
}

/// Why a wait ended before the state it waited for.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitError<E> {
    /// The deadline passed.
    Expired,
    /// The `check` hook failed.
    Interrupted(E),
}

/// The outcome of one wait: `Ok` once the state it waits for may be there (an attempt
/// decides).
pub type WaitResult<E> = Result<(), WaitError<E>>;

/// One wait of a blocking call, handed to the caller's `outside` function to run. It
/// touches no item and no waiter, so it may run detached from an interpreter.
pub type Wait<'a, E> = dyn FnMut() -> WaitResult<E> + Send + 'a;

/// An accepted put: what to drop and whom to wake once the lock is released.
#[derive(Debug)]
#[must_use]
pub struct Accepted<T, W> {
    /// The oldest item, evicted to make room (`drop_oldest`).
    pub evicted: Option<T>,
    pub wake: Option<W>,
}

/// Why a batch put stopped before taking every item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop<E = ()> {
    /// Refused for lack of room (the reject and drop_newest policies); the rest were
    /// counted in `rejected`.
    Full,
    /// Ran out of time; the rest were counted in `rejected`.
    Timeout,
    Closed,
    Interrupted(E),
}

/// A batch put: how many items entered, and what was evicted. The items that did not
/// enter stay at the front of the caller's deque.
#[derive(Debug)]
#[must_use]
pub struct Batch<T, E = ()> {
    pub accepted: usize,
    pub evicted: Vec<T>,
    pub stopped: Option<Stop<E>>,
}

/// A consistent snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub put: u64,
    pub got: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub high_water: usize,
    pub size: usize,
}

/// Where blocked threads sleep until a condition (read from atomics) may hold; see the
/// module documentation for why no wake-up is lost. `count` is the queue's count of
/// the threads that sleep here.
struct Bell {
    lock: Mutex<()>,
    cv: Condvar,
}

impl Bell {
    fn new() -> Self {
        Self {
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// Sleeps until `ready()`, a ring, or `deadline`, running `check` (bell unlocked) at
    /// least every [`SLICE`]; the caller was counted in `count` and is counted off here,
    /// by the ringer that woke it or else on the way out.
    fn wait<E>(
        &self,
        count: &AtomicUsize,
        ready: impl Fn() -> bool,
        deadline: Option<Instant>,
        check: &mut impl FnMut() -> Result<(), E>,
    ) -> WaitResult<E> {
        let mut pacer = Pacer::new(deadline);
        let mut g = self.lock.lock();
        let r = loop {
            if ready() {
                break Ok(());
            }
            match pacer.tick() {
                Tick::WaitUntil(t) => {
                    if !self.cv.wait_until(&mut g, t).timed_out() {
                        // Rung (parking_lot's condvar never wakes spuriously): the
                        // ringer counted us off. Back to an attempt, which decides.
                        return Ok(());
                    }
                }
                Tick::Expired => break Err(WaitError::Expired),
                Tick::Check => {
                    if let Err(e) = MutexGuard::unlocked(&mut g, &mut *check) {
                        break Err(WaitError::Interrupted(e));
                    }
                    pacer.checked();
                }
            }
        };
        count.fetch_sub(1, Relaxed);
        r
    }

    /// Wakes one sleeper (or all) and counts off those it woke, so that attempts made
    /// before they run again need not ring for them; call after the state they wait
    /// for changed, with the queue's lock released.
    fn ring(&self, count: &AtomicUsize, all: bool) {
        drop(self.lock.lock());
        let woken = if all {
            self.cv.notify_all()
        } else {
            usize::from(self.cv.notify_one())
        };
        if woken > 0 {
            // Each was parked, hence counted and not yet counted off.
            count.fetch_sub(woken, Relaxed);
        }
    }
}

struct Inner<T, W> {
    items: VecDeque<T>,
    closed: bool,
    getters: VecDeque<W>,
    putters: VecDeque<W>,
    /// Asynchronous joiners, all woken when `unfinished` reaches zero (so never
    /// registered while it is zero).
    joiners: VecDeque<W>,
}

/// See the module documentation.
pub struct WorkQueue<T, W = ()> {
    inner: Mutex<Inner<T, W>>,
    items_bell: Bell,
    room_bell: Bell,
    done_bell: Bell,
    maxsize: usize,
    overflow: Overflow,
    len: AtomicUsize,
    closed: AtomicBool,
    /// Threads blocked in a get: counted by the attempt that found nothing, counted off
    /// when their wait ends.
    getting: AtomicUsize,
    /// Threads blocked in a put, likewise.
    putting: AtomicUsize,
    /// Threads blocked in a join, likewise.
    joining: AtomicUsize,
    /// Items that entered and are not finished (see "Task accounting").
    unfinished: AtomicUsize,
    put: AtomicU64,
    got: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    high_water: AtomicUsize,
}

impl<T, W> WorkQueue<T, W> {
    pub fn new(maxsize: usize, overflow: Overflow) -> Result<Self, QueueError> {
        if maxsize == 0 {
            return Err(QueueError::MaxSize);
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                // Grow on demand: a large bound must not cost memory up front.
                items: VecDeque::with_capacity(maxsize.min(64)),
                closed: false,
                getters: VecDeque::new(),
                putters: VecDeque::new(),
                joiners: VecDeque::new(),
            }),
            items_bell: Bell::new(),
            room_bell: Bell::new(),
            done_bell: Bell::new(),
            maxsize,
            overflow,
            len: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            getting: AtomicUsize::new(0),
            putting: AtomicUsize::new(0),
            joining: AtomicUsize::new(0),
            unfinished: AtomicUsize::new(0),
            put: AtomicU64::new(0),
            got: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            high_water: AtomicUsize::new(0),
        })
    }

    pub fn maxsize(&self) -> usize {
        self.maxsize
    }

    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// Items now (lock-free; exact at some instant).
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.maxsize
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Items that entered and are not finished yet (lock-free; exact at some instant).
    pub fn unfinished(&self) -> usize {
        self.unfinished.load(Relaxed)
    }

    /// Counters read under the lock, so `put == got + dropped + size` holds exactly.
    pub fn stats(&self) -> Stats {
        let g = self.inner.lock();
        let s = Stats {
            put: self.put.load(Relaxed),
            got: self.got.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            high_water: self.high_water.load(Relaxed),
            size: g.items.len(),
        };
        drop(g);
        s
    }

    // ---- bookkeeping (all under the lock) ------------------------------------------

    /// Publishes the length after items were added.
    fn sync_len(&self, g: &Inner<T, W>) {
        let n = g.items.len();
        self.len.store(n, Relaxed);
        if n > self.high_water.load(Relaxed) {
            self.high_water.store(n, Relaxed);
        }
    }

    /// Adds one item under the lock, applying the overflow policy.
    fn push(&self, g: &mut Inner<T, W>, item: T) -> Push<T> {
        if g.closed {
            return Push::Closed(item);
        }
        if g.items.len() < self.maxsize {
            g.items.push_back(item);
            self.put.fetch_add(1, Relaxed);
            // Written only under the lock: no read-modify-write needed.
            self.unfinished
                .store(self.unfinished.load(Relaxed) + 1, Relaxed);
            return Push::Added(None);
        }
        match self.overflow {
            Overflow::Block => Push::Block(item),
            Overflow::Reject => {
                self.rejected.fetch_add(1, Relaxed);
                Push::Full(item)
            }
            Overflow::DropOldest => {
                // The evicted item is finished and the new one takes its place in
                // `unfinished`, which does not change.
                let old = g.items.pop_front();
                g.items.push_back(item);
                self.put.fetch_add(1, Relaxed);
                self.dropped.fetch_add(1, Relaxed);
                Push::Added(old)
            }
            Overflow::DropNewest => {
                self.rejected.fetch_add(1, Relaxed);
                Push::Discarded(item)
            }
        }
    }

    /// `n` items finished (under the lock), the count never going below zero. If it
    /// reaches zero: every asynchronous joiner, to wake once the lock is released, and
    /// whether blocked joiners are to be rung.
    fn finish(&self, g: &mut Inner<T, W>, n: usize) -> (Vec<W>, bool) {
        let left = self.unfinished.load(Relaxed).saturating_sub(n);
        self.unfinished.store(left, Relaxed);
        if left > 0 {
            return (Vec::new(), false);
        }
        (
            g.joiners.drain(..).collect(),
            self.joining.load(Relaxed) > 0,
        )
    }

    /// Takes up to `max` (>= 1) items under the lock, with the asynchronous putters to
    /// wake; true if blocked putters are to be rung.
    fn take(&self, g: &mut Inner<T, W>, max: usize) -> (Vec<T>, Vec<W>, bool) {
        let n = max.min(g.items.len());
        let items: Vec<T> = g.items.drain(..n).collect();
        self.got.fetch_add(n as u64, Relaxed);
        self.len.store(g.items.len(), Relaxed);
        let w = n.min(g.putters.len());
        let wake: Vec<W> = g.putters.drain(..w).collect();
        let ring = n > 0 && self.putting.load(Relaxed) > 0;
        (items, wake, ring)
    }

    // ---- waits (no item or waiter moves; no queue lock) -------------------------------

    /// A getter's wait (it was counted in `getting` by its attempt).
    fn wait_for_items<E>(
        &self,
        deadline: Option<Instant>,
        check: &mut impl FnMut() -> Result<(), E>,
    ) -> WaitResult<E> {
        self.items_bell.wait(
            &self.getting,
            || self.len.load(Relaxed) > 0 || self.closed.load(Relaxed),
            deadline,
            check,
        )
    }

    /// A putter's wait (counted in `putting` by its attempt).
    fn wait_for_room<E>(
        &self,
        deadline: Option<Instant>,
        check: &mut impl FnMut() -> Result<(), E>,
    ) -> WaitResult<E> {
        self.room_bell.wait(
            &self.putting,
            || self.len.load(Relaxed) < self.maxsize || self.closed.load(Relaxed),
            deadline,
            check,
        )
    }

    // ---- puts ------------------------------------------------------------------------

    /// One attempt under the lock. Under the block policy with no room: with `block`,
    /// `WouldBlock` (not counted) and the `waiter`, if any, is registered to be woken
    /// when room appears or at close; without it, `Full` (counted). With `sleep`, a
    /// `WouldBlock` counts the caller in `putting` (it is about to wait).
    fn offer<E>(
        &self,
        item: T,
        waiter: Option<W>,
        block: bool,
        sleep: bool,
    ) -> Result<Accepted<T, W>, PutError<T, E>> {
        let mut g = self.inner.lock();
        match self.push(&mut g, item) {
            Push::Added(evicted) => {
                self.sync_len(&g);
                let wake = g.getters.pop_front();
                let ring = self.getting.load(Relaxed) > 0;
                drop(g);
                if ring {
                    self.items_bell.ring(&self.getting, false);
                }
                Ok(Accepted { evicted, wake })
            }
            Push::Block(item) if block => {
                if let Some(w) = waiter {
                    g.putters.push_back(w);
                }
                if sleep {
                    self.putting.fetch_add(1, Relaxed);
                }
                Err(PutError::WouldBlock(item))
            }
            Push::Block(item) => {
                self.rejected.fetch_add(1, Relaxed);
                Err(PutError::Full(item))
            }
            Push::Full(item) => Err(PutError::Full(item)),
            Push::Discarded(item) => Err(PutError::Discarded(item)),
            Push::Closed(item) => Err(PutError::Closed(item)),
        }
    }

    /// One attempt that never waits. With the block policy and no room: `WouldBlock`
    /// (not counted) and, given a `waiter`, registers it to be woken when room appears
    /// or at close.
    pub fn put_or_wait(&self, item: T, waiter: Option<W>) -> Result<Accepted<T, W>, PutError<T>> {
        self.offer(item, waiter, true, false)
    }

    /// `put_nowait`: one attempt; with no room the item is refused (counted in
    /// `rejected`) unless `drop_oldest` makes room.
    pub fn try_put(&self, item: T) -> Result<Accepted<T, W>, PutError<T>> {
        self.offer(item, None, false, false)
    }

    /// A blocking put: attempts, and between attempts waits for room for up to `timeout`
    /// in all (None: forever), each wait run by `outside` (see [`Wait`]) and running
    /// `check` at least every [`SLICE`]. A timeout counts as a rejection.
    pub fn put_until<E>(
        &self,
        item: T,
        timeout: Option<Duration>,
        mut check: impl FnMut() -> Result<(), E> + Send,
        mut outside: impl FnMut(&mut Wait<'_, E>) -> WaitResult<E>,
    ) -> Result<Accepted<T, W>, PutError<T, E>>
    where
        T: Send,
        W: Send,
    {
        let until = deadline(timeout);
        let mut item = item;
        loop {
            let expired = until.is_some_and(|d| Instant::now() >= d);
            match self.offer(item, None, true, !expired) {
                Err(PutError::WouldBlock(back)) if expired => {
                    self.count_rejected(1);
                    return Err(PutError::Timeout(back));
                }
                Err(PutError::WouldBlock(back)) => item = back,
                r => return r,
            }
            match outside(&mut || self.wait_for_room(until, &mut check)) {
                Ok(()) => {}
                Err(WaitError::Expired) => {
                    self.count_rejected(1);
                    return Err(PutError::Timeout(item));
                }
                Err(WaitError::Interrupted(e)) => return Err(PutError::Interrupted(item, e)),
            }
        }
    }

    fn count_rejected(&self, n: usize) {
        let g = self.inner.lock();
        self.rejected.fetch_add(n as u64, Relaxed);
        drop(g);
    }

    /// Pushes from the front of `items` while there is room (or `drop_oldest` makes it),
    /// under one lock hold, into `batch`; returns the number pushed and why it stopped.
    fn push_batch<E>(
        &self,
        g: &mut Inner<T, W>,
        items: &mut VecDeque<T>,
        batch: &mut Batch<T, E>,
    ) -> (usize, BatchEnd<E>) {
        let mut pushed = 0;
        let stop = loop {
            let Some(item) = items.pop_front() else {
                break BatchEnd::AllIn;
            };
            match self.push(g, item) {
                Push::Added(evicted) => {
                    pushed += 1;
                    batch.evicted.extend(evicted);
                }
                Push::Block(back) => {
                    items.push_front(back);
                    break BatchEnd::NoRoom;
                }
                Push::Full(back) | Push::Discarded(back) => {
                    // The queue stays full for the rest of this lock hold: the rest are
                    // refused too (`push` counted the first).
                    self.rejected.fetch_add(items.len() as u64, Relaxed);
                    items.push_front(back);
                    break BatchEnd::Stopped(Stop::Full);
                }
                Push::Closed(back) => {
                    items.push_front(back);
                    break BatchEnd::Stopped(Stop::Closed);
                }
            }
        };
        if pushed > 0 {
            self.sync_len(g);
            batch.accepted += pushed;
        }
        (pushed, stop)
    }

    /// A batch put: attempts to push from the front of `items` (one lock hold each) and,
    /// under the block policy, waits for room between attempts (like
    /// [`Self::put_until`]) until all are in or `timeout` passes (the rest then count
    /// as rejected). After each attempt, with no lock held, `wake` receives the
    /// asynchronous getters to wake, so that they can make the room the next wait is
    /// for.
    pub fn put_many_until<E>(
        &self,
        items: &mut VecDeque<T>,
        timeout: Option<Duration>,
        mut check: impl FnMut() -> Result<(), E> + Send,
        mut outside: impl FnMut(&mut Wait<'_, E>) -> WaitResult<E>,
        mut wake: impl FnMut(Vec<W>),
    ) -> Batch<T, E>
    where
        T: Send,
        W: Send,
    {
        let mut batch = Batch {
            accepted: 0,
            evicted: Vec::new(),
            stopped: None,
        };
        let until = deadline(timeout);
        loop {
            let expired = until.is_some_and(|d| Instant::now() >= d);
            let mut g = self.inner.lock();
            let (pushed, stop) = self.push_batch(&mut g, items, &mut batch);
            let woken: Vec<W> = {
                let n = pushed.min(g.getters.len());
                g.getters.drain(..n).collect()
            };
            let ring = pushed > 0 && self.getting.load(Relaxed) > 0;
            let sleeping = matches!(stop, BatchEnd::NoRoom) && !expired;
            if sleeping {
                self.putting.fetch_add(1, Relaxed);
            } else if matches!(stop, BatchEnd::NoRoom) {
                self.rejected.fetch_add(items.len() as u64, Relaxed);
                batch.stopped = Some(Stop::Timeout);
            }
            drop(g);
            if ring {
                self.items_bell.ring(&self.getting, pushed > 1);
            }
            if !woken.is_empty() {
                wake(woken);
            }
            match stop {
                BatchEnd::Stopped(stop) => {
                    batch.stopped = Some(stop);
                    return batch;
                }
                BatchEnd::AllIn => return batch,
                BatchEnd::NoRoom if !sleeping => return batch,
                BatchEnd::NoRoom => {}
            }
            match outside(&mut || self.wait_for_room(until, &mut check)) {
                Ok(()) => {}
                Err(WaitError::Expired) => {
                    self.count_rejected(items.len());
                    batch.stopped = Some(Stop::Timeout);
                    return batch;
                }
                Err(WaitError::Interrupted(e)) => {
                    batch.stopped = Some(Stop::Interrupted(e));
                    return batch;
                }
            }
        }
    }

    // ---- gets ------------------------------------------------------------------------

    /// One attempt under the lock: an item, or `Closed` once closed and drained, or
    /// `Empty` (then `waiter`, if given, is registered to be woken by the next put or at
    /// close, and with `sleep` the caller is counted in `getting`: it is about to wait).
    fn attempt_get(&self, waiter: Option<W>, sleep: bool) -> Result<(T, Option<W>), GetError> {
        let mut g = self.inner.lock();
        if let Some(item) = g.items.pop_front() {
            self.got.fetch_add(1, Relaxed);
            self.len.store(g.items.len(), Relaxed);
            let wake = g.putters.pop_front();
            let ring = self.putting.load(Relaxed) > 0;
            drop(g);
            if ring {
                self.room_bell.ring(&self.putting, false);
            }
            return Ok((item, wake));
        }
        if g.closed {
            return Err(GetError::Closed);
        }
        if let Some(w) = waiter {
            g.getters.push_back(w);
        }
        if sleep {
            self.getting.fetch_add(1, Relaxed);
        }
        Err(GetError::Empty)
    }

    /// One attempt that never waits: an item, or `Closed` once closed and drained, or
    /// `Empty` (then `waiter`, if given, is registered to be woken by the next put or at
    /// close).
    pub fn get_or_wait(&self, waiter: Option<W>) -> Result<(T, Option<W>), GetError> {
        self.attempt_get(waiter, false)
    }

    /// `get_nowait`.
    pub fn try_get(&self) -> Result<(T, Option<W>), GetError> {
        self.get_or_wait(None)
    }

    /// A blocking get: attempts, and between attempts waits for an item for up to
    /// `timeout` in all (None: forever), each wait run by `outside` (see [`Wait`]) and
    /// running `check` at least every [`SLICE`]. Items still queued at close are handed
    /// out; `Closed` comes once the queue is drained.
    pub fn get_until<E>(
        &self,
        timeout: Option<Duration>,
        check: impl FnMut() -> Result<(), E> + Send,
        outside: impl FnMut(&mut Wait<'_, E>) -> WaitResult<E>,
    ) -> Result<(T, Option<W>), GetError<E>>
    where
        T: Send,
        W: Send,
    {
        self.wait_to_get(timeout, check, outside, |sleep| {
            match self.attempt_get(None, sleep) {
                Ok(r) => Ok(Some(r)),
                Err(GetError::Empty) => Ok(None),
                Err(_) => Err(GetError::Closed),
            }
        })
    }

    /// The loop of a blocking get: `attempt(sleep)` takes what it can (`None`: nothing
    /// there; with `sleep`, the caller was counted in `getting`), and between attempts the
    /// caller waits through `outside` until items come, the deadline passes or `check`
    /// fails.
    fn wait_to_get<R, E>(
        &self,
        timeout: Option<Duration>,
        mut check: impl FnMut() -> Result<(), E> + Send,
        mut outside: impl FnMut(&mut Wait<'_, E>) -> WaitResult<E>,
        mut attempt: impl FnMut(bool) -> Result<Option<R>, GetError>,
    ) -> Result<R, GetError<E>>
    where
        T: Send,
        W: Send,
    {
        let until = deadline(timeout);
        loop {
            let expired = until.is_some_and(|d| Instant::now() >= d);
            match attempt(!expired) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) if expired => return Err(GetError::Timeout),
                Ok(None) => {}
                Err(_) => return Err(GetError::Closed),
            }
            if let Err(e) = outside(&mut || self.wait_for_items(until, &mut check)) {
                return Err(match e {
                    WaitError::Expired => GetError::Timeout,
                    WaitError::Interrupted(e) => GetError::Interrupted(e),
                });
            }
        }
    }

    /// Up to `max` items at once without waiting: `Ok` with an empty vector when there are
    /// none, `Closed` once closed and drained. Also returns the asynchronous putters to
    /// wake.
    pub fn try_get_many(&self, max: usize) -> Result<(Vec<T>, Vec<W>), GetError> {
        self.attempt_get_many(max, false)
    }

    /// [`Self::try_get_many`] for a blocking caller: with `sleep`, finding nothing counts
    /// it in `getting`.
    fn attempt_get_many(&self, max: usize, sleep: bool) -> Result<(Vec<T>, Vec<W>), GetError> {
        let mut g = self.inner.lock();
        if g.items.is_empty() {
            if g.closed {
                return Err(GetError::Closed);
            }
            if sleep {
                self.getting.fetch_add(1, Relaxed);
            }
            return Ok((Vec::new(), Vec::new()));
        }
        let (items, wake, ring) = self.take(&mut g, max);
        drop(g);
        if ring {
            self.room_bell.ring(&self.putting, items.len() > 1);
        }
        Ok((items, wake))
    }

    /// Waits (like [`Self::get_until`]) for at least one item, then takes up to `max`.
    pub fn get_many_until<E>(
        &self,
        max: usize,
        timeout: Option<Duration>,
        check: impl FnMut() -> Result<(), E> + Send,
        outside: impl FnMut(&mut Wait<'_, E>) -> WaitResult<E>,
    ) -> Result<(Vec<T>, Vec<W>), GetError<E>>
    where
        T: Send,
        W: Send,
    {
        self.wait_to_get(timeout, check, outside, |sleep| {
            let r = self.attempt_get_many(max, sleep)?;
            Ok((!r.0.is_empty()).then_some(r))
        })
    }

    // ---- task accounting -------------------------------------------------------------

    /// `queue.Queue.task_done`: one unfinished item is finished. Refused
    /// ([`QueueError::TaskDone`]) when none is. Returns the asynchronous joiners to wake
    /// (those waiting for the count to reach zero); blocked joiners are rung here.
    pub fn task_done(&self) -> Result<Vec<W>, QueueError> {
        let mut g = self.inner.lock();
        if self.unfinished.load(Relaxed) == 0 {
            return Err(QueueError::TaskDone);
        }
        let (wake, ring) = self.finish(&mut g, 1);
        drop(g);
        if ring {
            self.done_bell.ring(&self.joining, true);
        }
        Ok(wake)
    }

    /// One attempt of a join: true if nothing is unfinished; otherwise `waiter`, if
    /// given, is registered to be woken when the count reaches zero, and with `sleep`
    /// the caller is counted in `joining` (it is about to wait). An unregistered waiter
    /// is dropped after the lock is released (parameters outlive the guard).
    fn attempt_join(&self, waiter: Option<W>, sleep: bool) -> bool {
        let mut g = self.inner.lock();
        if self.unfinished.load(Relaxed) == 0 {
            drop(g);
            return true;
        }
        if let Some(w) = waiter {
            g.joiners.push_back(w);
        }
        if sleep {
            self.joining.fetch_add(1, Relaxed);
        }
        false
    }

    /// One join attempt that never waits: true if nothing is unfinished, else false and
    /// `waiter`, if given, is registered to be woken when the count reaches zero.
    pub fn join_or_wait(&self, waiter: Option<W>) -> bool {
        self.attempt_join(waiter, false)
    }

    /// `queue.Queue.join`: attempts, and between attempts waits until nothing is
    /// unfinished, for up to `timeout` in all (None: forever), each wait run by
    /// `outside` and running `check` at least every [`SLICE`].
    pub fn join_until<E>(
        &self,
        timeout: Option<Duration>,
        mut check: impl FnMut() -> Result<(), E> + Send,
        mut outside: impl FnMut(&mut Wait<'_, E>) -> WaitResult<E>,
    ) -> WaitResult<E>
    where
        T: Send,
        W: Send,
    {
        let until = deadline(timeout);
        loop {
            let expired = until.is_some_and(|d| Instant::now() >= d);
            if self.attempt_join(None, !expired) {
                return Ok(());
            }
            if expired {
                return Err(WaitError::Expired);
            }
            outside(&mut || {
                self.done_bell.wait(
                    &self.joining,
                    || self.unfinished.load(Relaxed) == 0,
                    until,
                    &mut check,
                )
            })?;
        }
    }

    /// An asynchronous joiner gives up (cancelled): removed if still registered. Joiners
    /// are woken all together, so there is no wake-up to pass on.
    pub fn forget_joiner(&self, is_me: impl Fn(&W) -> bool) {
        let mut g = self.inner.lock();
        let mine = g
            .joiners
            .iter()
            .position(is_me)
            .and_then(|i| g.joiners.remove(i));
        drop(g);
        drop(mine);
    }

    // ---- asynchronous waiters, close, garbage collection --------------------------------

    /// An asynchronous getter gives up (cancelled). If it is still registered it is
    /// removed; if it was already woken, its wake-up passes to the next getter when items
    /// are there to take. Returns the waiter to wake, if any.
    pub fn forget_getter(&self, is_me: impl Fn(&W) -> bool) -> Option<W> {
        let mut g = self.inner.lock();
        if let Some(i) = g.getters.iter().position(is_me) {
            // Not woken (it gave up); dropped once the lock is released.
            let mine = g.getters.remove(i);
            drop(g);
            drop(mine);
            return None;
        }
        if g.items.is_empty() {
            None
        } else {
            g.getters.pop_front()
        }
    }

    /// Like [`Self::forget_getter`] for an asynchronous putter: an unused wake-up passes
    /// to the next putter when there is room.
    pub fn forget_putter(&self, is_me: impl Fn(&W) -> bool) -> Option<W> {
        let mut g = self.inner.lock();
        if let Some(i) = g.putters.iter().position(is_me) {
            let mine = g.putters.remove(i);
            drop(g);
            drop(mine);
            return None;
        }
        if g.items.len() < self.maxsize {
            g.putters.pop_front()
        } else {
            None
        }
    }

    /// Closes the queue (idempotent): later puts fail with `Closed`; getters drain what is
    /// left and then get `Closed`. Wakes every blocked thread; returns every asynchronous
    /// getter and putter, to be woken by the caller once the lock is released.
    pub fn close(&self) -> Vec<W> {
        self.shutdown(false).1
    }

    /// `queue.Queue.shutdown`: [`Self::close`], and with `immediate` also drains the
    /// queue in the same critical section (the items count as dropped and as finished,
    /// so a join returns once the items already got are done). Returns the drained items,
    /// to be dropped by the caller, and the asynchronous waiters to wake (getters,
    /// putters, and the joiners if nothing is left unfinished), once the lock is
    /// released. Idempotent; `immediate` may follow a plain shutdown.
    pub fn shutdown(&self, immediate: bool) -> (Vec<T>, Vec<W>) {
        let mut g = self.inner.lock();
        g.closed = true;
        self.closed.store(true, Relaxed);
        let mut wake: Vec<W> = g.getters.drain(..).collect();
        wake.extend(g.putters.drain(..));
        let mut drained = Vec::new();
        let mut ring_done = false;
        if immediate {
            drained = g.items.drain(..).collect();
            self.dropped.fetch_add(drained.len() as u64, Relaxed);
            self.len.store(0, Relaxed);
            let (joiners, ring) = self.finish(&mut g, drained.len());
            wake.extend(joiners);
            ring_done = ring;
        }
        drop(g);
        self.items_bell.ring(&self.getting, true);
        self.room_bell.ring(&self.putting, true);
        if ring_done {
            self.done_bell.ring(&self.joining, true);
        }
        (drained, wake)
    }

    /// Garbage collection: calls `item` on every queued item and `waiter` on every
    /// asynchronous waiter, if the lock is free right now; never waits for it (a
    /// collector must not block). See the module documentation for why it is free and
    /// why what it sees holds still while a collector runs.
    pub fn try_visit<X>(
        &self,
        mut item: impl FnMut(&T) -> Result<(), X>,
        mut waiter: impl FnMut(&W) -> Result<(), X>,
    ) -> Result<(), X> {
        let Some(g) = self.inner.try_lock() else {
            return Ok(());
        };
        g.items.iter().try_for_each(&mut item)?;
        g.getters
            .iter()
            .chain(&g.putters)
            .chain(&g.joiners)
            .try_for_each(&mut waiter)
    }

    /// Garbage collection: takes every item (counted as dropped and as finished) and
    /// every asynchronous waiter out, for the caller to drop once the lock is released.
    pub fn clear(&self) -> (Vec<T>, Vec<W>) {
        let mut g = self.inner.lock();
        let items: Vec<T> = g.items.drain(..).collect();
        self.dropped.fetch_add(items.len() as u64, Relaxed);
        self.len.store(0, Relaxed);
        let (joiners, ring_done) = self.finish(&mut g, items.len());
        let mut waiters: Vec<W> = g.getters.drain(..).collect();
        waiters.extend(g.putters.drain(..));
        waiters.extend(joiners);
        waiters.extend(g.joiners.drain(..));
        drop(g);
        self.room_bell.ring(&self.putting, true);
        if ring_done {
            self.done_bell.ring(&self.joining, true);
        }
        (items, waiters)
    }
}

/// Why one attempt of a batch put ended.
enum BatchEnd<E> {
    AllIn,
    /// Block policy, no room: the caller may wait.
    NoRoom,
    Stopped(Stop<E>),
}

/// The outcome of one push under the lock.
enum Push<T> {
    /// Accepted; with what `drop_oldest` evicted.
    Added(Option<T>),
    /// Block policy, no room (not counted).
    Block(T),
    /// Reject policy, no room (counted).
    Full(T),
    /// drop_newest policy, no room (counted).
    Discarded(T),
    Closed(T),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    type Q = WorkQueue<u32, u32>;

    fn q(maxsize: usize, overflow: Overflow) -> Q {
        WorkQueue::new(maxsize, overflow).unwrap()
    }

    #[allow(clippy::unnecessary_wraps)] // the shape of a `check` hook
    fn never() -> Result<(), ()> {
        Ok(())
    }

    /// Runs each wait in place (a binding would detach first).
    fn here<E>(w: &mut Wait<'_, E>) -> WaitResult<E> {
        w()
    }

    #[allow(clippy::unnecessary_wraps)] // a timeout argument
    fn soon(ms: u64) -> Option<Duration> {
        Some(Duration::from_millis(ms))
    }

    fn balanced(q: &Q) -> bool {
        let s = q.stats();
        s.put == s.got + s.dropped + s.size as u64
    }

    #[test]
    fn bad_arguments_name_themselves() {
        assert_eq!(
            Q::new(0, Overflow::Block).err().unwrap().to_string(),
            "maxsize must be >= 1"
        );
        assert_eq!(
            Overflow::parse("nope").unwrap_err().to_string(),
            "overflow must be 'block', 'reject', 'drop_oldest' or 'drop_newest', not 'nope'"
        );
        for name in ["block", "reject", "drop_oldest", "drop_newest"] {
            assert_eq!(Overflow::parse(name).unwrap().name(), name);
        }
    }

    #[test]
    fn queue_maxsize_zero_or_less_is_the_implicit_bound() {
        assert_eq!(queue_bound(3, Overflow::Block), (3, Overflow::Block));
        assert_eq!(
            queue_bound(i64::MAX, Overflow::DropOldest),
            (
                usize::try_from(i64::MAX).unwrap_or(usize::MAX),
                Overflow::DropOldest
            )
        );
        for m in [0, -1, i64::MIN] {
            assert_eq!(
                queue_bound(m, Overflow::Block),
                (IMPLICIT_BOUND, Overflow::Reject)
            );
            assert_eq!(
                queue_bound(m, Overflow::DropNewest),
                (IMPLICIT_BOUND, Overflow::DropNewest)
            );
        }
        // What a full block-policy put then does: refuse, not wait.
        let q = q(1, queue_bound(0, Overflow::Block).1);
        assert!(q.try_put(1).is_ok());
        assert_eq!(
            q.put_until(2, None, never, here).unwrap_err(),
            PutError::Full(2)
        );
    }

    #[test]
    fn huge_bounds_cost_nothing_up_front() {
        let q = q(usize::MAX, Overflow::Block);
        assert!(q.try_put(1).is_ok());
        assert!(!q.is_full());
        assert_eq!(q.try_get_many(usize::MAX).unwrap().0, vec![1]);
    }

    #[test]
    fn fifo_and_counters() {
        let q = q(3, Overflow::Block);
        for i in 0..3 {
            assert!(q.try_put(i).is_ok());
        }
        assert!(q.is_full());
        assert_eq!(q.try_put(9).unwrap_err(), PutError::Full(9));
        assert_eq!(q.try_get().unwrap().0, 0);
        assert_eq!(q.try_get().unwrap().0, 1);
        let s = q.stats();
        assert_eq!(
            (s.put, s.got, s.rejected, s.dropped, s.high_water, s.size),
            (3, 2, 1, 0, 3, 1)
        );
        assert!(balanced(&q));
    }

    #[test]
    fn overflow_policies() {
        let r = q(2, Overflow::Reject);
        assert!(r.try_put(1).is_ok());
        assert!(r.try_put(2).is_ok());
        assert_eq!(r.put_or_wait(3, None).unwrap_err(), PutError::Full(3));
        assert_eq!(r.stats().rejected, 1);

        let o = q(2, Overflow::DropOldest);
        assert!(o.try_put(1).is_ok());
        assert!(o.try_put(2).is_ok());
        assert_eq!(o.try_put(3).unwrap().evicted, Some(1));
        assert_eq!(o.try_get().unwrap().0, 2);
        assert!(balanced(&o));

        // drop_newest: the new item does not enter; it is a refusal, not a drop.
        let n = q(2, Overflow::DropNewest);
        assert!(n.try_put(1).is_ok());
        assert!(n.try_put(2).is_ok());
        assert_eq!(n.try_put(3).unwrap_err(), PutError::Discarded(3));
        assert_eq!(
            n.put_until(4, None, never, here).unwrap_err(),
            PutError::Discarded(4)
        );
        assert_eq!(n.try_get().unwrap().0, 1);
        let s = n.stats();
        assert_eq!((s.put, s.dropped, s.rejected), (2, 0, 2));
        assert!(balanced(&n));

        let b = q(1, Overflow::Block);
        assert!(b.try_put(1).is_ok());
        assert_eq!(b.put_or_wait(2, None).unwrap_err(), PutError::WouldBlock(2));
        assert_eq!(b.stats().rejected, 0);
    }

    #[test]
    fn blocking_put_and_get_wake_each_other() {
        let q = Arc::new(q(1, Overflow::Block));
        assert!(q.try_put(0).is_ok());
        let q2 = q.clone();
        let h = thread::spawn(move || q2.put_until(1, None, never, here).is_ok());
        thread::sleep(Duration::from_millis(20));
        assert_eq!(q.get_until(None, never, here).unwrap().0, 0);
        assert!(h.join().unwrap());
        let q3 = q.clone();
        assert_eq!(q.get_until(None, never, here).unwrap().0, 1);
        let h = thread::spawn(move || q3.get_until(soon(5000), never, here).map(|r| r.0));
        thread::sleep(Duration::from_millis(20));
        assert!(q.try_put(7).is_ok());
        assert_eq!(h.join().unwrap(), Ok(7));
    }

    /// Items move only in attempts: a wait run by `outside` sees the queue unchanged.
    #[test]
    fn waits_run_outside_and_move_nothing() {
        let q = q(1, Overflow::Block);
        assert!(q.try_put(1).is_ok());
        let mut waits = 0;
        let r = q.put_until(2, soon(10), never, |w| {
            waits += 1;
            let before = q.len();
            let r = w();
            assert_eq!(q.len(), before);
            r
        });
        assert_eq!(r.unwrap_err(), PutError::Timeout(2));
        assert_eq!(waits, 1);
        assert_eq!(q.try_get().unwrap().0, 1);
        let r = q.get_until(soon(10), never, |w| {
            let r = w();
            assert!(q.is_empty());
            r
        });
        assert_eq!(r.unwrap_err(), GetError::Timeout);
    }

    #[test]
    fn timeouts_and_rejections() {
        let q = q(1, Overflow::Block);
        assert_eq!(
            q.get_until(soon(10), never, here).unwrap_err(),
            GetError::Timeout
        );
        assert!(q.try_put(1).is_ok());
        assert_eq!(
            q.put_until(2, soon(10), never, here).unwrap_err(),
            PutError::Timeout(2)
        );
        // A zero timeout still tries once, then counts the refusal.
        assert_eq!(
            q.put_until(3, Some(Duration::ZERO), never, here)
                .unwrap_err(),
            PutError::Timeout(3)
        );
        assert_eq!(q.stats().rejected, 2);
    }

    #[test]
    fn check_runs_while_waiting_and_can_interrupt() {
        let q = q(1, Overflow::Block);
        let mut calls = 0;
        let r = q.get_until(
            None,
            || {
                calls += 1;
                if calls == 2 {
                    Err("stop")
                } else {
                    Ok(())
                }
            },
            here,
        );
        assert_eq!(r.unwrap_err(), GetError::Interrupted("stop"));
        assert!(q.try_put(1).is_ok());
        let r = q.put_until(2, None, || Err("stop"), here);
        assert_eq!(r.unwrap_err(), PutError::Interrupted(2, "stop"));
        assert_eq!(q.stats().rejected, 0);
    }

    #[test]
    fn close_wakes_putters_and_drains_getters() {
        let q = Arc::new(q(1, Overflow::Block));
        assert!(q.try_put(1).is_ok());
        let q2 = q.clone();
        let h = thread::spawn(move || q2.put_until(2, None, never, here));
        thread::sleep(Duration::from_millis(20));
        assert!(q.close().is_empty());
        assert_eq!(h.join().unwrap().unwrap_err(), PutError::Closed(2));
        assert_eq!(q.try_put(3).unwrap_err(), PutError::Closed(3));
        assert_eq!(q.get_until(None, never, here).unwrap().0, 1);
        assert_eq!(
            q.get_until(None, never, here).unwrap_err(),
            GetError::Closed
        );
        assert_eq!(q.try_get_many(4).unwrap_err(), GetError::Closed);
        assert!(q.is_closed());
    }

    #[test]
    fn batches() {
        let q = q(3, Overflow::Block);
        let mut items: VecDeque<u32> = (0..5).collect();
        let b = q.put_many_until(&mut items, Some(Duration::ZERO), never, here, |_| {});
        assert_eq!((b.accepted, b.stopped), (3, Some(Stop::Timeout)));
        assert_eq!(items.len(), 2);
        assert_eq!(q.stats().rejected, 2);
        let (got, _) = q.try_get_many(2).unwrap();
        assert_eq!(got, vec![0, 1]);
        let b = q.put_many_until(&mut items, soon(10), never, here, |_| {});
        assert_eq!((b.accepted, b.stopped), (2, None));
        let mut more: VecDeque<u32> = (5..7).collect();
        let b = q.put_many_until(&mut more, soon(10), never, here, |_| {});
        assert_eq!((b.accepted, b.stopped), (0, Some(Stop::Timeout)));
        assert_eq!(q.stats().rejected, 4);
        let (got, _) = q.get_many_until(10, None, never, here).unwrap();
        assert_eq!(got, vec![2, 3, 4]);
        assert!(q.try_get_many(3).unwrap().0.is_empty());
        assert_eq!(
            q.get_many_until(3, soon(5), never, here).unwrap_err(),
            GetError::Timeout
        );

        for policy in [Overflow::Reject, Overflow::DropNewest] {
            let r = self::q(2, policy);
            let mut items: VecDeque<u32> = (0..5).collect();
            let b = r.put_many_until(&mut items, None, never, here, |_| {});
            assert_eq!((b.accepted, b.stopped), (2, Some(Stop::Full)));
            assert_eq!(items, [2, 3, 4]);
            let s = r.stats();
            assert_eq!((s.put, s.rejected, s.dropped), (2, 3, 0));
        }

        let o = self::q(2, Overflow::DropOldest);
        let mut items: VecDeque<u32> = (0..5).collect();
        let b = o.put_many_until(&mut items, None, never, here, |_| {});
        assert_eq!((b.accepted, b.evicted, b.stopped), (5, vec![0, 1, 2], None));
        assert!(balanced(&o));
    }

    #[test]
    fn blocking_batch_put_waits_for_room() {
        let q = Arc::new(q(2, Overflow::Block));
        let q2 = q.clone();
        let h = thread::spawn(move || {
            let mut items: VecDeque<u32> = (0..6).collect();
            q2.put_many_until(&mut items, None, never, here, |_| {})
                .accepted
        });
        let mut got = Vec::new();
        while got.len() < 6 {
            got.extend(q.get_many_until(6, None, never, here).unwrap().0);
        }
        assert_eq!(h.join().unwrap(), 6);
        assert_eq!(got, (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn batch_put_hands_async_getters_over_before_it_waits() {
        let q = q(1, Overflow::Block);
        assert_eq!(q.get_or_wait(Some(10)).unwrap_err(), GetError::Empty);
        let mut items: VecDeque<u32> = (0..3).collect();
        let mut woken = Vec::new();
        let b = q.put_many_until(&mut items, Some(Duration::ZERO), never, here, |w| {
            woken.extend(w);
        });
        assert_eq!((b.accepted, woken), (1, vec![10]));
    }

    #[test]
    fn async_waiters_are_woken_and_pass_on_unused_wakeups() {
        let q = q(1, Overflow::Block);
        assert_eq!(q.get_or_wait(Some(10)).unwrap_err(), GetError::Empty);
        assert_eq!(q.get_or_wait(Some(11)).unwrap_err(), GetError::Empty);
        // A put wakes the first getter.
        assert_eq!(q.try_put(1).unwrap().wake, Some(10));
        // Getter 10 was cancelled after its wake-up: the wake passes on to 11.
        assert_eq!(q.forget_getter(|w| *w == 10), Some(11));
        // Nothing left to pass on once the item is gone.
        assert_eq!(q.try_get().unwrap().0, 1);
        assert_eq!(q.forget_getter(|w| *w == 11), None);

        assert!(q.try_put(1).is_ok());
        assert_eq!(
            q.put_or_wait(2, Some(20)).unwrap_err(),
            PutError::WouldBlock(2)
        );
        assert_eq!(
            q.put_or_wait(3, Some(21)).unwrap_err(),
            PutError::WouldBlock(3)
        );
        // A registered putter that gives up is removed without waking anyone.
        assert_eq!(q.forget_putter(|w| *w == 21), None);
        assert_eq!(q.try_get().unwrap().1, Some(20));
        assert_eq!(q.put_or_wait(4, Some(22)).unwrap().wake, None);
        assert_eq!(
            q.put_or_wait(5, Some(23)).unwrap_err(),
            PutError::WouldBlock(5)
        );
        let mut woken = q.close();
        woken.sort_unstable();
        assert_eq!(woken, vec![23]);
    }

    #[test]
    fn visit_and_clear_for_the_collector() {
        let q = q(4, Overflow::Block);
        assert!(q.try_put(1).is_ok());
        assert!(q.try_put(2).is_ok());
        assert_eq!(q.get_or_wait(Some(7)).unwrap().0, 1);
        let q2 = self::q(1, Overflow::Block);
        assert_eq!(q2.get_or_wait(Some(8)).unwrap_err(), GetError::Empty);
        let mut seen = Vec::new();
        assert_eq!(
            q.try_visit::<()>(
                |i| {
                    seen.push(*i);
                    Ok(())
                },
                |_| Ok(())
            ),
            Ok(())
        );
        assert_eq!(seen, vec![2]);
        let mut waiters = Vec::new();
        q2.try_visit::<()>(
            |_| Ok(()),
            |w| {
                waiters.push(*w);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(waiters, vec![8]);
        // A visit never waits for the lock: held elsewhere, nothing is visited.
        let g = q.inner.lock();
        assert_eq!(q.try_visit(|_| Err("visited"), |_| Err("visited")), Ok(()));
        drop(g);
        assert_eq!(q.clear(), (vec![2], vec![]));
        assert_eq!(q2.clear(), (vec![], vec![8]));
        assert!(q.is_empty());
        assert!(balanced(&q));
        assert_eq!(q.stats().dropped, 1);
    }

    #[test]
    fn many_threads_lose_and_duplicate_nothing() {
        let q = Arc::new(q(8, Overflow::Block));
        let producers: Vec<_> = (0..4u32)
            .map(|p| {
                let q = q.clone();
                thread::spawn(move || {
                    for i in 0..2000 {
                        assert!(q.put_until(p * 10_000 + i, None, never, here).is_ok());
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Ok((v, _)) = q.get_until(None, never, here) {
                        got.push(v);
                    }
                    got
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        q.close();
        let mut all: Vec<u32> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.sort_unstable();
        let mut want: Vec<u32> = (0..4u32)
            .flat_map(|p| (0..2000).map(move |i| p * 10_000 + i))
            .collect();
        want.sort_unstable();
        assert_eq!(all, want);
        assert!(balanced(&q));
        assert!(q.stats().high_water <= 8);
    }

    #[test]
    fn task_done_and_join_count_unfinished_items() {
        let q = Arc::new(q(4, Overflow::Block));
        assert_eq!(q.task_done().unwrap_err(), QueueError::TaskDone);
        assert_eq!(
            QueueError::TaskDone.to_string(),
            "task_done() called too many times"
        );
        assert!(q.join_or_wait(None));
        let mut items: VecDeque<u32> = (0..3).collect();
        let b = q.put_many_until(&mut items, None, never, here, |_| {});
        assert_eq!(b.accepted, 3);
        assert_eq!(q.unfinished(), 3);
        // Getting does not finish an item; task_done does.
        assert_eq!(q.try_get().unwrap().0, 0);
        assert_eq!(q.unfinished(), 3);
        assert!(!q.join_or_wait(Some(5)));
        assert!(q.task_done().unwrap().is_empty());
        assert_eq!(q.join_until(soon(10), never, here), Err(WaitError::Expired));
        let q2 = q.clone();
        let joiner = thread::spawn(move || q2.join_until(soon(10_000), never, here));
        for _ in 0..2 {
            assert!(q.try_get().is_ok());
        }
        assert!(q.task_done().unwrap().is_empty());
        // The last one wakes the asynchronous joiner and the blocked thread.
        assert_eq!(q.task_done().unwrap(), vec![5]);
        assert_eq!(joiner.join().unwrap(), Ok(()));
        assert_eq!(q.unfinished(), 0);
        assert!(q.join_or_wait(Some(6)));
        assert_eq!(q.task_done().unwrap_err(), QueueError::TaskDone);
    }

    #[test]
    fn items_that_leave_without_a_get_count_as_finished() {
        let o = q(2, Overflow::DropOldest);
        for i in 0..5 {
            assert!(o.try_put(i).is_ok());
        }
        // Three evicted: only the two queued are unfinished.
        assert_eq!(o.unfinished(), 2);
        let n = q(1, Overflow::DropNewest);
        assert!(n.try_put(1).is_ok());
        assert!(n.try_put(2).is_err());
        assert_eq!(n.unfinished(), 1);
        // The collector's clear finishes what it takes and lets joiners go.
        assert!(!o.join_or_wait(Some(9)));
        let (items, waiters) = o.clear();
        assert_eq!((items, waiters), (vec![3, 4], vec![9]));
        assert_eq!(o.unfinished(), 0);
        assert!(o.join_or_wait(None));
    }

    #[test]
    fn shutdown_plain_and_immediate() {
        let q = Arc::new(q(4, Overflow::Block));
        assert!(q.try_put(1).is_ok());
        assert!(q.try_put(2).is_ok());
        assert!(q.try_put(3).is_ok());
        assert_eq!(q.try_get().unwrap().0, 1); // got, not yet done
        assert!(!q.join_or_wait(Some(7)));
        // Plain: nothing drained, joiners keep waiting.
        let (drained, wake) = q.shutdown(false);
        assert!(drained.is_empty() && wake.is_empty());
        assert_eq!(q.try_put(4).unwrap_err(), PutError::Closed(4));
        assert_eq!(q.unfinished(), 3);
        let q2 = q.clone();
        let joiner = thread::spawn(move || q2.join_until(soon(10_000), never, here));
        // Immediate after plain: drains 2 (dropped and finished); 1 is still unfinished.
        let (drained, wake) = q.shutdown(true);
        assert_eq!((drained, wake), (vec![2, 3], vec![]));
        assert_eq!(q.try_get().unwrap_err(), GetError::Closed);
        assert_eq!(q.unfinished(), 1);
        assert!(balanced(&q));
        assert_eq!(q.stats().dropped, 2);
        assert_eq!(q.task_done().unwrap(), vec![7]);
        assert_eq!(joiner.join().unwrap(), Ok(()));
        // Immediate with nothing unfinished left over lets every joiner go at once.
        let r = self::q(2, Overflow::Block);
        assert!(r.try_put(1).is_ok());
        assert!(!r.join_or_wait(Some(8)));
        assert_eq!(r.shutdown(true), (vec![1], vec![8]));
        assert!(r.join_or_wait(None));
        assert_eq!(r.task_done().unwrap_err(), QueueError::TaskDone);
    }

    #[test]
    fn forgotten_joiners_leave_and_are_visited_until_then() {
        let q = q(2, Overflow::Block);
        assert!(q.try_put(1).is_ok());
        assert!(!q.join_or_wait(Some(1)));
        assert!(!q.join_or_wait(Some(2)));
        let mut seen = Vec::new();
        q.try_visit::<()>(
            |_| Ok(()),
            |w| {
                seen.push(*w);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, vec![1, 2]);
        q.forget_joiner(|w| *w == 1);
        q.forget_joiner(|w| *w == 1); // gone already: nothing happens
        assert!(q.try_get().is_ok());
        assert_eq!(q.task_done().unwrap(), vec![2]);
    }

    #[test]
    fn many_workers_join_once_every_item_is_done() {
        let q = Arc::new(q(4, Overflow::Block));
        let done = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (q, done) = (q.clone(), done.clone());
                thread::spawn(move || {
                    while q.get_until(None, never, here).is_ok() {
                        done.fetch_add(1, Relaxed);
                        assert!(q.task_done().is_ok());
                    }
                })
            })
            .collect();
        let producers: Vec<_> = (0..3u32)
            .map(|p| {
                let q = q.clone();
                thread::spawn(move || {
                    for i in 0..500 {
                        assert!(q.put_until(p * 1000 + i, None, never, here).is_ok());
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(q.join_until(soon(20_000), never, here), Ok(()));
        assert_eq!(done.load(Relaxed), 1500);
        assert_eq!(q.unfinished(), 0);
        q.close();
        for w in workers {
            w.join().unwrap();
        }
    }

    /// The bells under a hand-to-hand transfer through a one-item queue: every item
    /// arrives once and in order, whichever side sleeps.
    #[test]
    fn no_lost_wakeups_between_single_items() {
        for _ in 0..200 {
            let q = Arc::new(q(1, Overflow::Block));
            let q2 = q.clone();
            let consumer = thread::spawn(move || {
                let mut sum = 0;
                for _ in 0..50 {
                    sum += q2.get_until(soon(10_000), never, here).unwrap().0;
                }
                sum
            });
            for i in 0..50 {
                assert!(q.put_until(i, soon(10_000), never, here).is_ok());
            }
            assert_eq!(consumer.join().unwrap(), (0..50).sum::<u32>());
        }
    }
}
