//! A bounded multi-producer, multi-consumer queue with an overflow policy, blocking and
//! non-blocking operations, close, and asynchronous waiters.
//!
//! # Structure
//! One `parking_lot::Mutex` guards a `VecDeque<T>` of items, the closed flag and two FIFO
//! lists of asynchronous waiters (`W`, e.g. a callable that schedules a wake-up on an
//! event loop). Two condvars wake blocked threads: `not_empty` for getters, `not_full`
//! for putters. Every critical section is O(1) (batches: O(batch)), so one lock is cheap;
//! the queue is a single FIFO, so sharding it would break ordering.
//!
//! # Invariants
//! - `len <= maxsize` at every instant; no operation ever grows the deque beyond it.
//! - Exactly once: every accepted item is taken by exactly one getter or counted in
//!   `dropped`. Counters change only under the lock, so a [`Stats`] snapshot taken under
//!   it satisfies `put == got + dropped + size` exactly.
//! - `rejected` counts refused puts: the reject policy on a full queue, a full
//!   `put_nowait`, and a blocking put that timed out. A put into a closed queue is not
//!   counted (it raises `QueueClosed`, it is not a refusal for lack of room).
//! - Nothing owned by the queue is dropped under the lock: evicted items (`drop_oldest`),
//!   refused items (`drop_newest`), and waiters to wake are handed back to the caller,
//!   who drops or fires them after the lock is released. With Python items that matters:
//!   the last reference's `__del__` may run arbitrary code.
//! - Waiting is event driven: putters wait on `not_full`, getters on `not_empty`, and
//!   every operation that makes room or adds items notifies the matching condvar after
//!   unlocking. Waits are cut into slices of at most [`SLICE`] so the caller's
//!   `check` hook (signal handling) runs at least that often; `check` runs with the lock
//!   released.
//! - Asynchronous waiters never receive items directly: a woken waiter only retries, so
//!   a waiter that is cancelled after its wake-up cannot lose an item. It must then call
//!   [`WorkQueue::forget_getter`] / [`WorkQueue::forget_putter`], which pass the wake-up
//!   on to the next waiter when there is still something to do.
//!
//! # Orderings
//! The counters and `len` are written only under the lock (`Relaxed` is enough: the
//! mutex orders them for snapshot readers). Lock-free readers (`len`, `is_closed`) get a
//! value that was true at some instant, which is all `qsize()` ever promises.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};

#[cfg(doc)]
use crate::core::wait::SLICE;
use crate::core::wait::{Pacer, Tick};

/// What a put does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Wait for room (or refuse at once in the non-blocking calls).
    Block,
    /// Refuse the new item.
    Reject,
    /// Accept the new item and evict the oldest one (counted as dropped).
    DropOldest,
    /// Accept the new item and discard it at once (counted as dropped): the queue keeps
    /// what it has.
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

/// A bad constructor argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    MaxSize,
    Overflow(String),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MaxSize => write!(f, "maxsize must be >= 1"),
            Self::Overflow(s) => write!(f, "overflow must be {}, not '{s}'", Overflow::NAMES),
        }
    }
}

impl std::error::Error for QueueError {}

/// Why a put did not accept its item; the item is handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum PutError<T, E = ()> {
    /// Refused for lack of room (counted in `rejected`).
    Full(T),
    /// A blocking put ran out of time (counted in `rejected`).
    Timeout(T),
    /// The queue is closed (not counted).
    Closed(T),
    /// Block policy and no room: the caller may wait (not counted). For the `*_or_wait`
    /// calls with a waiter, the waiter is now registered.
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

/// An accepted put: what to drop and whom to wake once the lock is released.
#[derive(Debug)]
#[must_use]
pub struct Accepted<T, W> {
    /// The evicted oldest item (`drop_oldest`) or the new item itself (`drop_newest`).
    pub dropped: Option<T>,
    pub wake: Option<W>,
}

/// Why a batch put stopped before taking every item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop<E = ()> {
    /// Refused for lack of room; the rest were counted in `rejected`.
    Full,
    /// Ran out of time; the rest were counted in `rejected`.
    Timeout,
    Closed,
    /// Block policy and no room (not counted): the caller may wait.
    WouldBlock,
    Interrupted(E),
}

/// A batch put: how many items were accepted, and what to drop and wake. The items not
/// accepted stay at the front of the caller's deque.
#[derive(Debug)]
#[must_use]
pub struct Batch<T, W, E = ()> {
    pub accepted: usize,
    pub dropped: Vec<T>,
    pub wake: Vec<W>,
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

struct Inner<T, W> {
    items: VecDeque<T>,
    closed: bool,
    getters: VecDeque<W>,
    putters: VecDeque<W>,
}

/// See the module documentation.
pub struct WorkQueue<T, W = ()> {
    inner: Mutex<Inner<T, W>>,
    not_empty: Condvar,
    not_full: Condvar,
    maxsize: usize,
    overflow: Overflow,
    len: AtomicUsize,
    closed: AtomicBool,
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
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            maxsize,
            overflow,
            len: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
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
            return Push::Added(None);
        }
        match self.overflow {
            Overflow::Block => Push::Block(item),
            Overflow::Reject => {
                self.rejected.fetch_add(1, Relaxed);
                Push::Full(item)
            }
            Overflow::DropOldest => {
                let old = g.items.pop_front();
                g.items.push_back(item);
                self.put.fetch_add(1, Relaxed);
                self.dropped.fetch_add(1, Relaxed);
                Push::Added(old)
            }
            Overflow::DropNewest => {
                self.put.fetch_add(1, Relaxed);
                self.dropped.fetch_add(1, Relaxed);
                Push::Added(Some(item))
            }
        }
    }

    /// Takes one item under the lock, and picks an asynchronous putter to wake.
    fn pop(&self, g: &mut Inner<T, W>) -> Option<(T, Option<W>)> {
        let item = g.items.pop_front()?;
        self.got.fetch_add(1, Relaxed);
        self.len.store(g.items.len(), Relaxed);
        Some((item, g.putters.pop_front()))
    }

    // ---- puts ------------------------------------------------------------------------

    /// One attempt that never waits. With the block policy and no room: `WouldBlock`
    /// (not counted) and, given a `waiter`, registers it to be woken when room appears
    /// or at close.
    pub fn put_or_wait(&self, item: T, waiter: Option<W>) -> Result<Accepted<T, W>, PutError<T>> {
        let mut g = self.inner.lock();
        match self.push(&mut g, item) {
            Push::Added(dropped) => {
                self.sync_len(&g);
                let wake = g.getters.pop_front();
                drop(g);
                self.not_empty.notify_one();
                Ok(Accepted { dropped, wake })
            }
            Push::Block(item) => {
                if let Some(w) = waiter {
                    g.putters.push_back(w);
                }
                Err(PutError::WouldBlock(item))
            }
            Push::Full(item) => Err(PutError::Full(item)),
            Push::Closed(item) => Err(PutError::Closed(item)),
        }
    }

    /// `put_nowait`: one attempt; with no room the item is refused (counted in
    /// `rejected`) unless a drop policy makes room.
    pub fn try_put(&self, item: T) -> Result<Accepted<T, W>, PutError<T>> {
        match self.put_or_wait(item, None) {
            Err(PutError::WouldBlock(item)) => {
                self.rejected.fetch_add(1, Relaxed);
                Err(PutError::Full(item))
            }
            r => r,
        }
    }

    /// A blocking put: waits for room until `deadline` (None: forever), running `check`
    /// with the lock released at least every [`SLICE`]. A timeout counts as a
    /// rejection.
    pub fn put_until<E>(
        &self,
        item: T,
        deadline: Option<Instant>,
        mut check: impl FnMut() -> Result<(), E>,
    ) -> Result<Accepted<T, W>, PutError<T, E>> {
        let mut pacer = Pacer::new(deadline);
        let mut g = self.inner.lock();
        let mut item = item;
        loop {
            match self.push(&mut g, item) {
                Push::Added(dropped) => {
                    self.sync_len(&g);
                    let wake = g.getters.pop_front();
                    drop(g);
                    self.not_empty.notify_one();
                    return Ok(Accepted { dropped, wake });
                }
                Push::Block(back) => item = back,
                Push::Full(back) => return Err(PutError::Full(back)),
                Push::Closed(back) => return Err(PutError::Closed(back)),
            }
            match pacer.tick() {
                Tick::WaitUntil(t) => {
                    self.not_full.wait_until(&mut g, t);
                }
                Tick::Expired => {
                    self.rejected.fetch_add(1, Relaxed);
                    return Err(PutError::Timeout(item));
                }
                Tick::Check => {
                    if let Err(e) = MutexGuard::unlocked(&mut g, &mut check) {
                        return Err(PutError::Interrupted(item, e));
                    }
                    pacer.checked();
                }
            }
        }
    }

    /// Pushes from the front of `items` while there is room (or a drop policy makes it),
    /// under one lock hold. Returns how many were pushed and why it stopped.
    fn push_batch<E>(
        &self,
        g: &mut Inner<T, W>,
        items: &mut VecDeque<T>,
        batch: &mut Batch<T, W, E>,
    ) -> Option<Stop<E>> {
        let mut pushed = 0;
        let stop = loop {
            let Some(item) = items.pop_front() else {
                break None;
            };
            match self.push(g, item) {
                Push::Added(dropped) => {
                    pushed += 1;
                    batch.dropped.extend(dropped);
                }
                Push::Block(back) => {
                    items.push_front(back);
                    break Some(Stop::WouldBlock);
                }
                Push::Full(back) => {
                    // The reject policy refuses the rest too: the queue stays full.
                    items.push_front(back);
                    self.rejected.fetch_add(items.len() as u64 - 1, Relaxed);
                    break Some(Stop::Full);
                }
                Push::Closed(back) => {
                    items.push_front(back);
                    break Some(Stop::Closed);
                }
            }
        };
        if pushed > 0 {
            self.sync_len(g);
            batch.accepted += pushed;
            let n = pushed.min(g.getters.len());
            batch.wake.extend(g.getters.drain(..n));
        }
        stop
    }

    fn batch<E>() -> Batch<T, W, E> {
        Batch {
            accepted: 0,
            dropped: Vec::new(),
            wake: Vec::new(),
            stopped: None,
        }
    }

    fn notify_getters(&self, n: usize) {
        match n {
            0 => {}
            1 => {
                self.not_empty.notify_one();
            }
            _ => {
                self.not_empty.notify_all();
            }
        }
    }

    /// One attempt at a batch; never waits. `waiting` decides what a full queue under the
    /// block policy means: `false` refuses the rest (counted, like `put_nowait`), `true`
    /// stops with `WouldBlock` so that the caller may wait.
    pub fn put_many_once(&self, items: &mut VecDeque<T>, waiting: bool) -> Batch<T, W> {
        let mut batch = Self::batch();
        let mut g = self.inner.lock();
        let mut stop = self.push_batch(&mut g, items, &mut batch);
        if stop == Some(Stop::WouldBlock) && !waiting {
            self.rejected.fetch_add(items.len() as u64, Relaxed);
            stop = Some(Stop::Full);
        }
        drop(g);
        self.notify_getters(batch.accepted);
        batch.stopped = stop;
        batch
    }

    /// A blocking batch put: takes items from the front of `items` as room appears, until
    /// all are in or `deadline` passes (the rest then count as rejected). `check` runs
    /// with the lock released at least every [`SLICE`]; `wake` receives, with the
    /// lock released, the asynchronous getters to wake before each wait, so that they can
    /// make the room this call waits for.
    pub fn put_many_until<E>(
        &self,
        items: &mut VecDeque<T>,
        deadline: Option<Instant>,
        mut check: impl FnMut() -> Result<(), E>,
        mut wake: impl FnMut(Vec<W>),
    ) -> Batch<T, W, E> {
        let mut pacer = Pacer::new(deadline);
        let mut batch = Self::batch();
        let mut g = self.inner.lock();
        loop {
            let before = batch.accepted;
            let stop = self.push_batch(&mut g, items, &mut batch);
            self.notify_getters(batch.accepted - before);
            match stop {
                Some(Stop::WouldBlock) => {}
                other => {
                    batch.stopped = other;
                    return batch;
                }
            }
            if !batch.wake.is_empty() {
                let pending = std::mem::take(&mut batch.wake);
                MutexGuard::unlocked(&mut g, || wake(pending));
                continue;
            }
            match pacer.tick() {
                Tick::WaitUntil(t) => {
                    self.not_full.wait_until(&mut g, t);
                }
                Tick::Expired => {
                    self.rejected.fetch_add(items.len() as u64, Relaxed);
                    batch.stopped = Some(Stop::Timeout);
                    return batch;
                }
                Tick::Check => {
                    if let Err(e) = MutexGuard::unlocked(&mut g, &mut check) {
                        batch.stopped = Some(Stop::Interrupted(e));
                        return batch;
                    }
                    pacer.checked();
                }
            }
        }
    }

    // ---- gets ------------------------------------------------------------------------

    /// One attempt that never waits: an item, or `Closed` once closed and drained, or
    /// `Empty` (then `waiter`, if given, is registered to be woken by the next put or at
    /// close).
    pub fn get_or_wait(&self, waiter: Option<W>) -> Result<(T, Option<W>), GetError> {
        let mut g = self.inner.lock();
        if let Some(r) = self.pop(&mut g) {
            drop(g);
            self.not_full.notify_one();
            return Ok(r);
        }
        if g.closed {
            return Err(GetError::Closed);
        }
        if let Some(w) = waiter {
            g.getters.push_back(w);
        }
        Err(GetError::Empty)
    }

    /// `get_nowait`.
    pub fn try_get(&self) -> Result<(T, Option<W>), GetError> {
        self.get_or_wait(None)
    }

    /// A blocking get: waits for an item until `deadline` (None: forever), running `check`
    /// with the lock released at least every [`SLICE`]. Items still queued at
    /// close are handed out; `Closed` comes once the queue is drained.
    pub fn get_until<E>(
        &self,
        deadline: Option<Instant>,
        check: impl FnMut() -> Result<(), E>,
    ) -> Result<(T, Option<W>), GetError<E>> {
        let mut g = self.wait_for_items(deadline, check)?;
        match self.pop(&mut g) {
            Some(r) => {
                drop(g);
                self.not_full.notify_one();
                Ok(r)
            }
            // wait_for_items returns with at least one item.
            None => Err(GetError::Closed),
        }
    }

    /// Waits until the queue holds an item (returned with the lock held) or is closed
    /// and drained.
    fn wait_for_items<E>(
        &self,
        deadline: Option<Instant>,
        mut check: impl FnMut() -> Result<(), E>,
    ) -> Result<MutexGuard<'_, Inner<T, W>>, GetError<E>> {
        let mut pacer = Pacer::new(deadline);
        let mut g = self.inner.lock();
        loop {
            if !g.items.is_empty() {
                return Ok(g);
            }
            if g.closed {
                return Err(GetError::Closed);
            }
            match pacer.tick() {
                Tick::WaitUntil(t) => {
                    self.not_empty.wait_until(&mut g, t);
                }
                Tick::Expired => return Err(GetError::Timeout),
                Tick::Check => {
                    if let Err(e) = MutexGuard::unlocked(&mut g, &mut check) {
                        return Err(GetError::Interrupted(e));
                    }
                    pacer.checked();
                }
            }
        }
    }

    fn take_many(&self, mut g: MutexGuard<'_, Inner<T, W>>, max: usize) -> (Vec<T>, Vec<W>) {
        let n = max.min(g.items.len());
        let items: Vec<T> = g.items.drain(..n).collect();
        self.got.fetch_add(n as u64, Relaxed);
        self.len.store(g.items.len(), Relaxed);
        let w = n.min(g.putters.len());
        let wake: Vec<W> = g.putters.drain(..w).collect();
        drop(g);
        match n {
            0 => {}
            1 => {
                self.not_full.notify_one();
            }
            _ => {
                self.not_full.notify_all();
            }
        }
        (items, wake)
    }

    /// Up to `max` items at once without waiting: `Ok` with an empty vector when there are
    /// none, `Closed` once closed and drained.
    pub fn try_get_many(&self, max: usize) -> Result<(Vec<T>, Vec<W>), GetError> {
        let g = self.inner.lock();
        if g.items.is_empty() && g.closed {
            return Err(GetError::Closed);
        }
        Ok(self.take_many(g, max))
    }

    /// Waits (like [`Self::get_until`]) for at least one item, then takes up to `max`.
    pub fn get_many_until<E>(
        &self,
        max: usize,
        deadline: Option<Instant>,
        check: impl FnMut() -> Result<(), E>,
    ) -> Result<(Vec<T>, Vec<W>), GetError<E>> {
        let g = self.wait_for_items(deadline, check)?;
        Ok(self.take_many(g, max))
    }

    // ---- asynchronous waiters and close ------------------------------------------------

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
    /// waiter, to be woken by the caller once the lock is released.
    pub fn close(&self) -> Vec<W> {
        let mut g = self.inner.lock();
        g.closed = true;
        self.closed.store(true, Relaxed);
        let mut wake: Vec<W> = g.getters.drain(..).collect();
        wake.extend(g.putters.drain(..));
        drop(g);
        self.not_empty.notify_all();
        self.not_full.notify_all();
        wake
    }
}

/// The outcome of one push under the lock.
enum Push<T> {
    /// Accepted; with what the drop policy discarded.
    Added(Option<T>),
    /// Block policy, no room (not counted).
    Block(T),
    /// Reject policy, no room (counted).
    Full(T),
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

    #[allow(clippy::unnecessary_wraps)] // a deadline argument
    fn soon(ms: u64) -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(ms))
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
        assert_eq!(o.try_put(3).unwrap().dropped, Some(1));
        assert_eq!(o.try_get().unwrap().0, 2);
        assert!(balanced(&o));

        let n = q(2, Overflow::DropNewest);
        assert!(n.try_put(1).is_ok());
        assert!(n.try_put(2).is_ok());
        assert_eq!(n.try_put(3).unwrap().dropped, Some(3));
        assert_eq!(n.try_get().unwrap().0, 1);
        assert_eq!(n.stats().dropped, 1);
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
        let h = thread::spawn(move || q2.put_until(1, None, never).is_ok());
        thread::sleep(Duration::from_millis(20));
        assert_eq!(q.get_until(None, never).unwrap().0, 0);
        assert!(h.join().unwrap());
        let q3 = q.clone();
        assert_eq!(q.get_until(None, never).unwrap().0, 1);
        let h = thread::spawn(move || q3.get_until(soon(5000), never).map(|r| r.0));
        thread::sleep(Duration::from_millis(20));
        assert!(q.try_put(7).is_ok());
        assert_eq!(h.join().unwrap(), Ok(7));
    }

    #[test]
    fn timeouts_and_rejections() {
        let q = q(1, Overflow::Block);
        assert_eq!(q.get_until(soon(10), never).unwrap_err(), GetError::Timeout);
        assert!(q.try_put(1).is_ok());
        assert_eq!(
            q.put_until(2, soon(10), never).unwrap_err(),
            PutError::Timeout(2)
        );
        assert_eq!(q.stats().rejected, 1);
    }

    #[test]
    fn check_runs_while_waiting_and_can_interrupt() {
        let q = q(1, Overflow::Block);
        let mut calls = 0;
        let r = q.get_until(None, || {
            calls += 1;
            if calls == 2 {
                Err("stop")
            } else {
                Ok(())
            }
        });
        assert_eq!(r.unwrap_err(), GetError::Interrupted("stop"));
        assert!(q.try_put(1).is_ok());
        let r = q.put_until(2, None, || Err("stop"));
        assert_eq!(r.unwrap_err(), PutError::Interrupted(2, "stop"));
        assert_eq!(q.stats().rejected, 0);
    }

    #[test]
    fn close_wakes_putters_and_drains_getters() {
        let q = Arc::new(q(1, Overflow::Block));
        assert!(q.try_put(1).is_ok());
        let q2 = q.clone();
        let h = thread::spawn(move || q2.put_until(2, None, never));
        thread::sleep(Duration::from_millis(20));
        assert!(q.close().is_empty());
        assert_eq!(h.join().unwrap().unwrap_err(), PutError::Closed(2));
        assert_eq!(q.try_put(3).unwrap_err(), PutError::Closed(3));
        assert_eq!(q.get_until(None, never).unwrap().0, 1);
        assert_eq!(q.get_until(None, never).unwrap_err(), GetError::Closed);
        assert_eq!(q.try_get_many(4).unwrap_err(), GetError::Closed);
        assert!(q.is_closed());
    }

    #[test]
    fn batches() {
        let q = q(3, Overflow::Block);
        let mut items: VecDeque<u32> = (0..5).collect();
        let b = q.put_many_once(&mut items, true);
        assert_eq!((b.accepted, b.stopped), (3, Some(Stop::WouldBlock)));
        assert_eq!(items.len(), 2);
        let b = q.put_many_once(&mut items, false);
        assert_eq!((b.accepted, b.stopped), (0, Some(Stop::Full)));
        assert_eq!(q.stats().rejected, 2);
        let (got, _) = q.try_get_many(2).unwrap();
        assert_eq!(got, vec![0, 1]);
        let b = q.put_many_until(&mut items, soon(10), never, |_| {});
        assert_eq!((b.accepted, b.stopped), (2, None));
        let mut more: VecDeque<u32> = (5..7).collect();
        let b = q.put_many_until(&mut more, soon(10), never, |_| {});
        assert_eq!((b.accepted, b.stopped), (0, Some(Stop::Timeout)));
        assert_eq!(q.stats().rejected, 4);
        let (got, _) = q.get_many_until(10, None, never).unwrap();
        assert_eq!(got, vec![2, 3, 4]);
        assert!(q.try_get_many(3).unwrap().0.is_empty());
        assert_eq!(
            q.get_many_until(3, soon(5), never).unwrap_err(),
            GetError::Timeout
        );

        let r = self::q(2, Overflow::Reject);
        let mut items: VecDeque<u32> = (0..5).collect();
        let b = r.put_many_once(&mut items, true);
        assert_eq!((b.accepted, b.stopped), (2, Some(Stop::Full)));
        assert_eq!(r.stats().rejected, 3);

        let o = self::q(2, Overflow::DropOldest);
        let mut items: VecDeque<u32> = (0..5).collect();
        let b = o.put_many_once(&mut items, true);
        assert_eq!((b.accepted, b.dropped, b.stopped), (5, vec![0, 1, 2], None));
        assert!(balanced(&o));
    }

    #[test]
    fn blocking_batch_put_waits_for_room() {
        let q = Arc::new(q(2, Overflow::Block));
        let q2 = q.clone();
        let h = thread::spawn(move || {
            let mut items: VecDeque<u32> = (0..6).collect();
            q2.put_many_until(&mut items, None, never, |_| {}).accepted
        });
        let mut got = Vec::new();
        while got.len() < 6 {
            got.extend(q.get_many_until(6, None, never).unwrap().0);
        }
        assert_eq!(h.join().unwrap(), 6);
        assert_eq!(got, (0..6).collect::<Vec<_>>());
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
    fn many_threads_lose_and_duplicate_nothing() {
        let q = Arc::new(q(8, Overflow::Block));
        let producers: Vec<_> = (0..4u32)
            .map(|p| {
                let q = q.clone();
                thread::spawn(move || {
                    for i in 0..2000 {
                        assert!(q.put_until(p * 10_000 + i, None, never).is_ok());
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Ok((v, _)) = q.get_until(None, never) {
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
}
