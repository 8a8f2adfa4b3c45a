//! A bounded pool of reusable items ([`PoolCore`]): slot accounting, FIFO hand-off to
//! waiters, and lazy reaping of idle items. The items themselves (connections, clients)
//! are the caller's: the core only moves them.
//!
//! # Structure
//! One mutex per pool guards the idle items, the count of live items (idle, checked out
//! or being created) and a FIFO queue of waiters. The core never creates, validates,
//! closes or drops an item under that lock: it hands the caller either an item, a
//! reserved slot to fill by calling the factory (`Create`), or a waiter to block on.
//! Items and waiters removed under the lock are moved out to the caller. `size`, `idle`
//! and `waiting` are copied into atomics under the lock after every change, and the
//! other counters are atomics, so [`PoolCore::stats`] takes no lock (its fields may come
//! from neighbouring instants).
//!
//! # Invariants
//! `live <= max_size`; a freed item or slot goes to the oldest waiter first
//! (so there is never a waiter while an item is idle or a slot is free, and a newcomer
//! cannot overtake a waiter); a slot whose factory failed or whose item was discarded is
//! released, so capacity is never lost. Idle items are a stack (the most recently used
//! is reused first) stamped with the time they were returned; those idle for `max_idle`
//! or more are reaped lazily, never below `min_size` live items. Every live item is idle
//! or checked out, so `idle.len() <= live <= max_size`; a return or a freed slot when no
//! item is checked out (`live <= idle.len()`: only possible through the private Python
//! hooks) is refused (`Returned::Unexpected`, no slot freed), so neither bound can be
//! broken and `live` cannot wrap.
//!
//! # Waiting
//! A [`Waiter`] is a one-shot slot (a mutex and a condvar of its own): the pool hands it
//! a [`Grant`] under the pool lock and the waiter takes it under its own lock, so a grant
//! is taken exactly once, by the waiter or, if it gives up first, by [`PoolCore::cancel`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// Why a pool's configuration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    MinSize,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MinSize => write!(f, "min_size must be <= max_size"),
        }
    }
}

impl std::error::Error for PoolError {}

/// What a waiter is handed.
#[derive(Debug)]
pub enum Grant<T> {
    /// An idle item, now checked out to the waiter.
    Item(T),
    /// A reserved slot: the waiter must call the factory (or release the slot).
    Create,
    /// The pool was closed.
    Closed,
}

/// A blocked checkout. `hook` is the caller's wake-up payload (e.g. an event loop
/// callback), called by the caller after the core hands it a grant.
pub struct Waiter<T, W> {
    slot: Mutex<Option<Grant<T>>>,
    cv: Condvar,
    pub hook: Option<W>,
}

impl<T, W> Waiter<T, W> {
    pub fn new(hook: Option<W>) -> Self {
        Self {
            slot: Mutex::new(None),
            cv: Condvar::new(),
            hook,
        }
    }

    fn give(&self, g: Grant<T>) {
        *self.slot.lock() = Some(g);
        self.cv.notify_one();
    }

    /// Takes the grant if one arrived; otherwise sleeps up to `slice` and tries again.
    pub fn wait(&self, slice: Duration) -> Option<Grant<T>> {
        let mut s = self.slot.lock();
        if s.is_none() {
            self.cv.wait_for(&mut s, slice);
        }
        s.take()
    }

    /// Takes the grant if one arrived.
    pub fn try_take(&self) -> Option<Grant<T>> {
        self.slot.lock().take()
    }

    /// `f` on the item granted and not yet taken, if any and if the slot's lock is free
    /// now (for a garbage collector's traversal, which must not block).
    pub fn try_for_granted<E>(&self, f: impl FnOnce(&T) -> Result<(), E>) -> Result<(), E> {
        match self.slot.try_lock().as_deref() {
            Some(Some(Grant::Item(x))) => f(x),
            _ => Ok(()),
        }
    }
}

/// The first answer of a checkout.
pub enum Checkout<T, W> {
    Item(T),
    Create,
    Wait(Arc<Waiter<T, W>>),
    Closed,
}

/// Where a returned item went.
pub enum Returned<T, W> {
    Idle,
    /// Handed to this waiter; the caller wakes it.
    Handed(Arc<Waiter<T, W>>),
    /// The pool is closed: the caller closes the item.
    Closed(T),
    /// No item is checked out, so this one cannot be a return: refused, nothing changed.
    Unexpected(T),
}

struct PoolState<T, W> {
    idle: VecDeque<(T, i64)>,
    live: usize,
    waiters: VecDeque<Arc<Waiter<T, W>>>,
    closed: bool,
}

/// Counters of a pool (kept in atomics so `stats` takes no lock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u64,
    pub idle: u64,
    pub in_use: u64,
    pub waiting: u64,
    pub created: u64,
    pub discarded: u64,
    pub timeouts: u64,
    pub factory_errors: u64,
}

/// The slot accounting and FIFO hand-off of a pool; see the module docs.
pub struct PoolCore<T, W> {
    max_size: usize,
    min_size: usize,
    max_idle: Option<i64>,
    state: Mutex<PoolState<T, W>>,
    size: AtomicUsize,
    idle: AtomicUsize,
    waiting: AtomicUsize,
    closed: AtomicBool,
    created: AtomicU64,
    discarded: AtomicU64,
    timeouts: AtomicU64,
    factory_errors: AtomicU64,
}

impl<T, W> PoolCore<T, W> {
    pub fn new(max_size: usize, min_size: usize, max_idle: Option<i64>) -> Result<Self, PoolError> {
        if min_size > max_size {
            return Err(PoolError::MinSize);
        }
        Ok(Self {
            max_size,
            min_size,
            max_idle,
            state: Mutex::new(PoolState {
                idle: VecDeque::new(),
                live: 0,
                waiters: VecDeque::new(),
                closed: false,
            }),
            size: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            created: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            factory_errors: AtomicU64::new(0),
        })
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    pub fn min_size(&self) -> usize {
        self.min_size
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn publish(&self, s: &PoolState<T, W>) {
        self.size.store(s.live, Ordering::Relaxed);
        self.idle.store(s.idle.len(), Ordering::Relaxed);
        self.waiting.store(s.waiters.len(), Ordering::Relaxed);
    }

    /// Moves idle items unused for `max_idle` or more into `reaped`, keeping `min_size`.
    fn reap_locked(&self, s: &mut PoolState<T, W>, now: i64, reaped: &mut Vec<T>) {
        let Some(max_idle) = self.max_idle else {
            return;
        };
        let before = reaped.len();
        while s.live > self.min_size {
            match s.idle.front() {
                Some((_, stamp)) if now >= stamp.saturating_add(max_idle) => {
                    if let Some((item, _)) = s.idle.pop_front() {
                        s.live -= 1;
                        reaped.push(item);
                    }
                }
                _ => break,
            }
        }
        if reaped.len() > before {
            self.discarded
                .fetch_add((reaped.len() - before) as u64, Ordering::Relaxed);
        }
    }

    /// Reaps idle items now (see [`Self::checkout`]).
    pub fn reap(&self, now: i64, reaped: &mut Vec<T>) {
        let mut s = self.state.lock();
        self.reap_locked(&mut s, now, reaped);
        self.publish(&s);
    }

    /// Starts a checkout: an idle item, a slot to fill, or a waiter queued at the back.
    /// Idle items past `max_idle` are moved to `reaped` for the caller to close.
    pub fn checkout(&self, now: i64, hook: Option<W>, reaped: &mut Vec<T>) -> Checkout<T, W> {
        let mut s = self.state.lock();
        if s.closed {
            return Checkout::Closed;
        }
        self.reap_locked(&mut s, now, reaped);
        let r = if let Some((item, _)) = s.idle.pop_back() {
            Checkout::Item(item)
        } else if s.live < self.max_size {
            s.live += 1;
            Checkout::Create
        } else {
            let w = Arc::new(Waiter::new(hook));
            s.waiters.push_back(w.clone());
            Checkout::Wait(w)
        };
        self.publish(&s);
        r
    }

    /// Returns a checked-out item: to the oldest waiter, else to the idle stack.
    pub fn put_back(&self, item: T, now: i64, reaped: &mut Vec<T>) -> Returned<T, W> {
        let mut s = self.state.lock();
        let r = if s.live <= s.idle.len() {
            return Returned::Unexpected(item);
        } else if s.closed {
            s.live = s.live.saturating_sub(1);
            self.discarded.fetch_add(1, Ordering::Relaxed);
            Returned::Closed(item)
        } else if let Some(w) = s.waiters.pop_front() {
            w.give(Grant::Item(item));
            Returned::Handed(w)
        } else {
            s.idle.push_back((item, now));
            self.reap_locked(&mut s, now, reaped);
            Returned::Idle
        };
        self.publish(&s);
        r
    }

    /// Frees the slot of an item that was discarded (`discarded` counts it) or never
    /// created (`discarded` false). The slot goes to the oldest waiter as `Create`.
    /// Does nothing if no item is checked out (module docs).
    pub fn release_slot(&self, discarded: bool) -> Option<Arc<Waiter<T, W>>> {
        let mut s = self.state.lock();
        if s.live <= s.idle.len() {
            return None;
        }
        if discarded {
            self.discarded.fetch_add(1, Ordering::Relaxed);
        }
        let r = if let Some(w) = (!s.closed).then(|| s.waiters.pop_front()).flatten() {
            w.give(Grant::Create);
            Some(w)
        } else {
            s.live = s.live.saturating_sub(1);
            None
        };
        self.publish(&s);
        r
    }

    /// The holder of a checked-out item discarded it (it failed validation) and still
    /// wants one: it gets an idle item (the discarded item's slot is freed), or keeps
    /// the slot to fill with a new item. It never waits, so it keeps its turn.
    pub fn replace(&self, now: i64, reaped: &mut Vec<T>) -> Checkout<T, W> {
        self.discarded.fetch_add(1, Ordering::Relaxed);
        let mut s = self.state.lock();
        let r = if s.closed {
            s.live = s.live.saturating_sub(1);
            Checkout::Closed
        } else {
            self.reap_locked(&mut s, now, reaped);
            match s.idle.pop_back() {
                Some((item, _)) => {
                    s.live = s.live.saturating_sub(1);
                    Checkout::Item(item)
                }
                None => Checkout::Create,
            }
        };
        self.publish(&s);
        r
    }

    /// Reserves a slot to warm up the pool if fewer than `min_size` items are live.
    pub fn reserve_warm(&self) -> bool {
        let mut s = self.state.lock();
        if s.closed || s.live >= self.min_size || !s.waiters.is_empty() {
            return false;
        }
        s.live += 1;
        self.publish(&s);
        true
    }

    /// Withdraws a waiter that gave up. If it was already handed a grant, that grant is
    /// returned and the caller must use it or give it back.
    pub fn cancel(&self, w: &Arc<Waiter<T, W>>) -> Option<Grant<T>> {
        let mut s = self.state.lock();
        if let Some(pos) = s.waiters.iter().position(|x| Arc::ptr_eq(x, w)) {
            let removed = s.waiters.remove(pos);
            self.publish(&s);
            drop(s);
            drop(removed);
            return None;
        }
        drop(s);
        w.try_take()
    }

    /// Closes the pool: returns the idle items to close and the waiters (each already
    /// handed `Closed`; the caller wakes them). Checked-out items come back as `Closed`.
    pub fn close(&self) -> (Vec<T>, Vec<Arc<Waiter<T, W>>>) {
        let mut s = self.state.lock();
        s.closed = true;
        self.closed.store(true, Ordering::Release);
        let items: Vec<T> = s.idle.drain(..).map(|(t, _)| t).collect();
        s.live = s.live.saturating_sub(items.len());
        self.discarded
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        let waiters: Vec<_> = s.waiters.drain(..).collect();
        for w in &waiters {
            w.give(Grant::Closed);
        }
        self.publish(&s);
        (items, waiters)
    }

    /// True if some item (or slot being filled) is checked out, i.e. a return is due.
    pub fn has_checkout(&self) -> bool {
        let s = self.state.lock();
        s.live > s.idle.len()
    }

    /// If the pool lock is free now (a garbage collector's traversal must not block):
    /// `item` on each idle item and `waiter` on each queued waiter; stops at the first
    /// error.
    pub fn try_for_each<E>(
        &self,
        mut item: impl FnMut(&T) -> Result<(), E>,
        mut waiter: impl FnMut(&Arc<Waiter<T, W>>) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(s) = self.state.try_lock() {
            for (x, _) in &s.idle {
                item(x)?;
            }
            for w in &s.waiters {
                waiter(w)?;
            }
        }
        Ok(())
    }

    pub fn count_created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_factory_error(&self) {
        self.factory_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> PoolStats {
        let size = self.size.load(Ordering::Relaxed) as u64;
        let idle = self.idle.load(Ordering::Relaxed) as u64;
        PoolStats {
            size,
            idle,
            in_use: size.saturating_sub(idle),
            waiting: self.waiting.load(Ordering::Relaxed) as u64,
            created: self.created.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            factory_errors: self.factory_errors.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    type P = PoolCore<u32, ()>;

    #[test]
    fn pool_hands_items_to_waiters_in_order() {
        let p = P::new(1, 0, None).unwrap();
        let mut reaped = Vec::new();
        assert!(matches!(p.checkout(0, None, &mut reaped), Checkout::Create));
        let Checkout::Wait(w1) = p.checkout(0, None, &mut reaped) else {
            panic!("expected a wait")
        };
        let Checkout::Wait(w2) = p.checkout(0, None, &mut reaped) else {
            panic!("expected a wait")
        };
        assert_eq!(p.stats().waiting, 2);
        assert!(matches!(p.put_back(7, 0, &mut reaped), Returned::Handed(_)));
        assert!(matches!(w1.try_take(), Some(Grant::Item(7))));
        assert!(w2.try_take().is_none());
        // The slot is freed (item discarded): the next waiter must create.
        assert!(p.release_slot(true).is_some());
        assert!(matches!(w2.try_take(), Some(Grant::Create)));
        assert_eq!(p.stats().size, 1);
        assert!(p.release_slot(false).is_none());
        assert_eq!(p.stats().size, 0);
    }

    #[test]
    fn pool_replace_keeps_the_turn() {
        let p = P::new(1, 0, None).unwrap();
        let mut reaped = Vec::new();
        assert!(matches!(p.checkout(0, None, &mut reaped), Checkout::Create));
        let Checkout::Wait(w) = p.checkout(0, None, &mut reaped) else {
            panic!("expected a wait")
        };
        // The holder's item failed validation: it keeps the slot, the waiter keeps waiting.
        assert!(matches!(p.replace(0, &mut reaped), Checkout::Create));
        assert!(w.try_take().is_none());
        let s = p.stats();
        assert_eq!((s.size, s.waiting, s.discarded), (1, 1, 1));
        assert!(p.cancel(&w).is_none());
    }

    #[test]
    fn pool_cancel_and_close() {
        let p = P::new(1, 0, None).unwrap();
        let mut reaped = Vec::new();
        assert!(matches!(p.checkout(0, None, &mut reaped), Checkout::Create));
        let Checkout::Wait(w) = p.checkout(0, None, &mut reaped) else {
            panic!("expected a wait")
        };
        assert!(p.cancel(&w).is_none());
        assert_eq!(p.stats().waiting, 0);
        let Checkout::Wait(w) = p.checkout(0, None, &mut reaped) else {
            panic!("expected a wait")
        };
        let (items, waiters) = p.close();
        assert!(items.is_empty());
        assert_eq!(waiters.len(), 1);
        assert!(matches!(w.try_take(), Some(Grant::Closed)));
        assert!(matches!(p.put_back(1, 0, &mut reaped), Returned::Closed(1)));
        assert!(matches!(p.checkout(0, None, &mut reaped), Checkout::Closed));
        assert_eq!(p.stats().size, 0);
    }

    #[test]
    fn pool_reaps_idle_items_but_keeps_min_size() {
        let p = P::new(3, 1, Some(10)).unwrap();
        let mut reaped = Vec::new();
        for _ in 0..3 {
            assert!(matches!(p.checkout(0, None, &mut reaped), Checkout::Create));
        }
        for i in 0..3 {
            assert!(matches!(
                p.put_back(i, i64::from(i), &mut reaped),
                Returned::Idle
            ));
        }
        p.reap(10, &mut reaped);
        assert_eq!(reaped, vec![0]);
        p.reap(100, &mut reaped);
        assert_eq!(reaped, vec![0, 1]);
        assert_eq!(p.stats().size, 1);
        assert_eq!(p.stats().discarded, 2);
        assert!(!p.reserve_warm());
    }

    #[test]
    fn pool_bound_holds_under_threads() {
        let p = Arc::new(P::new(3, 0, None).unwrap());
        let out = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let p = p.clone();
                let out = out.clone();
                thread::spawn(move || {
                    let mut reaped = Vec::new();
                    for i in 0..500u32 {
                        let item = match p.checkout(0, None, &mut reaped) {
                            Checkout::Item(x) => x,
                            Checkout::Create => i,
                            Checkout::Wait(w) => loop {
                                match w.wait(Duration::from_millis(10)) {
                                    Some(Grant::Item(x)) => break x,
                                    Some(Grant::Create) => break i,
                                    Some(Grant::Closed) => panic!("closed"),
                                    None => {}
                                }
                            },
                            Checkout::Closed => panic!("closed"),
                        };
                        assert!(out.fetch_add(1, Ordering::SeqCst) < 3);
                        out.fetch_sub(1, Ordering::SeqCst);
                        if i % 7 == 0 {
                            p.release_slot(true);
                        } else {
                            p.put_back(item, 0, &mut reaped);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let s = p.stats();
        assert!(s.size <= 3);
        assert_eq!(s.in_use, 0);
        assert_eq!(s.waiting, 0);
    }
}
