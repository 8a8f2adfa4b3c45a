//! Named resource budgets ([`Budget`]) and a bounded pool of reusable items ([`PoolCore`]).
//!
//! # Budgets
//! A budget is `limit` units of one named resource. Its lock-free heart is [`Units`]:
//! `used` is one `AtomicU64` changed only by CAS (take) and `fetch_sub` (give back), so
//! acquiring and releasing never take a lock and `0 <= used <= limit` holds at every
//! instant, also under concurrent callers: a take that would pass the limit fails
//! without writing.
//!
//! A [`LeaseCore`] records one successful take. Its `done` flag is flipped with `swap`, and
//! only the caller that flips it gives the units back, so a lease is returned exactly once
//! whether it is released by its owner, by its destructor or by expiry, in any race.
//! `Units` and `LeaseCore` use `crate::core::sync` atomics: the loom model at the end of
//! this file checks both under every interleaving of takes and racing releases.
//!
//! A lease taken with a ttl at clock time `t` is live while `now < t + ttl`. Such leases
//! also sit in a per-budget min-heap of deadlines (its own small mutex, used only by
//! ttl leases); `reclaim(now)` pops the expired ones and gives their units back. It runs
//! lazily: on every take attempt, in every wait slice, and on snapshots. `ttl_next`
//! caches the earliest deadline so the common case is one atomic load. Leases released
//! before their deadline stay in the heap until popped; the heap is compacted when it
//! holds more than twice as many entries as live ttl leases, so it is bounded.
//!
//! Waiting: a blocked taker registers in `waiters`, then re-tries and sleeps on the
//! budget's condvar under `wait_lock`. A giver that sees `waiters > 0` takes `wait_lock`
//! and notifies. Both sides use `SeqCst` for the (`used`, `waiters`) pair (store one, load
//! the other), so either the taker sees the freed units or the giver sees the taker; and
//! the taker re-tries under `wait_lock` before sleeping, so no wake-up is lost.
//!
//! Pressure: `level(used)` is normal, moderate (`used >= alert * limit`) or severe
//! (`used >= severe * limit`); the thresholds are precomputed as the smallest integers
//! that satisfy those float comparisons. `published` holds the last level reported.
//! After every change of `used` a caller runs [`Budget::sync_pressure`]: if the level
//! differs from `published` it takes `events` (a small mutex), re-reads `used`, records
//! one change and stores the new `published`, then re-checks after unlocking. The
//! re-check is the other half of a store/load pair (`SeqCst`): a concurrent change whose
//! own check read the old `published` is seen by this re-check, so the final level is
//! always reported. Each recorded change moves `published` from `previous` to
//! `pressure`, so the reported changes form one chain and none is reported twice. The
//! changes are returned to the caller, which publishes them after every lock is released.
//!
//! # Pool
//! One mutex per pool guards the idle items, the count of live items (idle, checked out
//! or being created) and a FIFO queue of waiters. The core never creates, validates,
//! closes or drops an item under that lock: it hands the caller either an item, a
//! reserved slot to fill by calling the factory (`Create`), or a waiter to block on.
//! Items and waiters removed under the lock are moved out to the caller.
//! Invariants: `live <= max_size`; a freed item or slot goes to the oldest waiter first
//! (so there is never a waiter while an item is idle or a slot is free, and a newcomer
//! cannot overtake a waiter); a slot whose factory failed or whose item was discarded is
//! released, so capacity is never lost. Idle items are a stack (the most recently used
//! is reused first) stamped with the time they were returned; those idle for `max_idle`
//! or more are reaped lazily, never below `min_size` live items. Every live item is idle
//! or checked out, so `idle.len() <= live <= max_size`; a return or a freed slot when no
//! item is checked out (`live <= idle.len()`: only possible through the private Python
//! hooks) is refused (`Returned::Unexpected`, no slot freed), so neither bound can be
//! broken and `live` cannot wrap.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::core::sync;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// Deadline of a lease without ttl.
pub const NEVER: i64 = i64::MAX;

/// Why a budget or an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceError {
    UnknownName(String),
    AmountTooSmall,
    AmountOverLimit { name: String, limit: u64 },
    LimitTooSmall(String),
    AlertThreshold,
    SevereThreshold,
    PoolMinSize,
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownName(n) => write!(f, "name '{n}' is not a configured resource"),
            Self::AmountTooSmall => write!(f, "amount must be >= 1"),
            Self::AmountOverLimit { name, limit } => {
                write!(f, "amount must be <= the limit of '{name}' ({limit})")
            }
            Self::LimitTooSmall(n) => write!(f, "limits['{n}'] must be >= 1"),
            Self::AlertThreshold => write!(f, "alert_threshold must be > 0 and <= 1"),
            Self::SevereThreshold => {
                write!(f, "severe_threshold must be >= alert_threshold and <= 1")
            }
            Self::PoolMinSize => write!(f, "min_size must be <= max_size"),
        }
    }
}

impl std::error::Error for ResourceError {}

/// Pressure level of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Pressure {
    Normal = 0,
    Moderate = 1,
    Severe = 2,
}

impl Pressure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Moderate => "moderate",
            Self::Severe => "severe",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Normal,
            1 => Self::Moderate,
            _ => Self::Severe,
        }
    }
}

/// One reported change of a budget's pressure level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PressureChange {
    pub pressure: Pressure,
    pub previous: Pressure,
    pub used: u64,
    pub limit: u64,
}

/// Checks the two thresholds of a manager.
pub fn check_thresholds(alert: f64, severe: f64) -> Result<(), ResourceError> {
    if !(alert > 0.0 && alert <= 1.0) {
        return Err(ResourceError::AlertThreshold);
    }
    if !(severe >= alert && severe <= 1.0) {
        return Err(ResourceError::SevereThreshold);
    }
    Ok(())
}

/// The smallest `u` with `u as f64 >= frac * limit as f64` (the float rule, exactly).
fn threshold(frac: f64, limit: u64) -> u64 {
    let target = frac * limit as f64;
    let mut u = target.ceil().max(0.0) as u64;
    while u > 0 && (u - 1) as f64 >= target {
        u -= 1;
    }
    while (u as f64) < target {
        u += 1;
    }
    u
}

/// One successful take from a budget; given back exactly once (see [`Units::give_back`]).
#[derive(Debug)]
pub struct LeaseCore {
    amount: u64,
    deadline: i64,
    done: sync::AtomicBool,
}

impl LeaseCore {
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// Clock time (ns) at which the lease expires, or [`NEVER`].
    pub fn deadline(&self) -> i64 {
        self.deadline
    }

    /// True once released or reclaimed.
    pub fn is_done(&self) -> bool {
        self.done.load(sync::Ordering::Acquire)
    }
}

struct TtlEntry {
    deadline: i64,
    seq: u64,
    lease: Arc<LeaseCore>,
}

impl PartialEq for TtlEntry {
    fn eq(&self, o: &Self) -> bool {
        (self.deadline, self.seq) == (o.deadline, o.seq)
    }
}
impl Eq for TtlEntry {}
impl PartialOrd for TtlEntry {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for TtlEntry {
    // Reversed: `BinaryHeap` is a max-heap and we want the earliest deadline on top.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        (o.deadline, o.seq).cmp(&(self.deadline, self.seq))
    }
}

/// `used` units out of `limit`: the lock-free step of a budget (module docs).
///
/// `used` is read and written with `SeqCst`: besides the CAS, it is one half of the
/// (`used`, `waiters`) store/load pair that keeps a blocked taker from missing a release.
#[derive(Debug)]
pub struct Units {
    used: sync::AtomicU64,
    limit: u64,
}

impl Units {
    pub fn new(limit: u64) -> Self {
        Self {
            used: sync::AtomicU64::new(0),
            limit,
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(sync::Ordering::SeqCst)
    }

    /// Takes `amount` units if they fit (one CAS loop): the lease that gives them back.
    /// `deadline` is the clock time at which the lease expires, or [`NEVER`].
    pub fn take(&self, amount: u64, deadline: i64) -> Option<Arc<LeaseCore>> {
        let mut cur = self.used.load(sync::Ordering::Relaxed);
        loop {
            let next = cur.checked_add(amount).filter(|n| *n <= self.limit)?;
            match self.used.compare_exchange_weak(
                cur,
                next,
                sync::Ordering::SeqCst,
                sync::Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
        Some(Arc::new(LeaseCore {
            amount,
            deadline,
            done: sync::AtomicBool::new(false),
        }))
    }

    /// Gives the lease's units back unless someone already has; true if this call did.
    /// The `swap` picks exactly one caller among the owner, a destructor and expiry, so
    /// `used` never drops by more than was taken.
    pub fn give_back(&self, lease: &LeaseCore) -> bool {
        if lease.done.swap(true, sync::Ordering::AcqRel) {
            return false;
        }
        // Cannot wrap: the units of this lease are in `used` until this subtraction.
        self.used.fetch_sub(lease.amount, sync::Ordering::SeqCst);
        true
    }
}

/// A named budget of `limit` units.
pub struct Budget {
    name: String,
    alert_at: u64,
    severe_at: u64,
    units: Units,
    published: AtomicU8,
    events: Mutex<()>,
    waiters: AtomicUsize,
    wait_lock: Mutex<()>,
    cv: Condvar,
    ttl_heap: Mutex<BinaryHeap<TtlEntry>>,
    ttl_next: AtomicI64,
    ttl_live: AtomicUsize,
    ttl_seq: AtomicU64,
}

/// Heap entries below which compaction is not worth it.
const COMPACT_MIN: usize = 64;

impl Budget {
    /// `alert`/`severe` must have passed [`check_thresholds`].
    pub fn new(name: &str, limit: u64, alert: f64, severe: f64) -> Result<Self, ResourceError> {
        if limit < 1 {
            return Err(ResourceError::LimitTooSmall(name.to_owned()));
        }
        check_thresholds(alert, severe)?;
        Ok(Self {
            name: name.to_owned(),
            alert_at: threshold(alert, limit),
            severe_at: threshold(severe, limit),
            units: Units::new(limit),
            published: AtomicU8::new(Pressure::Normal as u8),
            events: Mutex::new(()),
            waiters: AtomicUsize::new(0),
            wait_lock: Mutex::new(()),
            cv: Condvar::new(),
            ttl_heap: Mutex::new(BinaryHeap::new()),
            ttl_next: AtomicI64::new(NEVER),
            ttl_live: AtomicUsize::new(0),
            ttl_seq: AtomicU64::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limit(&self) -> u64 {
        self.units.limit
    }

    pub fn used(&self) -> u64 {
        self.units.used()
    }

    fn level(&self, used: u64) -> Pressure {
        if used >= self.severe_at {
            Pressure::Severe
        } else if used >= self.alert_at {
            Pressure::Moderate
        } else {
            Pressure::Normal
        }
    }

    pub fn pressure(&self) -> Pressure {
        self.level(self.used())
    }

    /// Checks an amount against this budget.
    pub fn check_amount(&self, amount: i64) -> Result<u64, ResourceError> {
        if amount < 1 {
            return Err(ResourceError::AmountTooSmall);
        }
        let amount = amount as u64;
        if amount > self.units.limit {
            return Err(ResourceError::AmountOverLimit {
                name: self.name.clone(),
                limit: self.units.limit,
            });
        }
        Ok(amount)
    }

    /// Takes `amount` units if they are free (one CAS loop, no lock). `deadline` is the
    /// clock time at which the lease expires, or [`NEVER`].
    pub fn try_take(&self, amount: u64, deadline: i64) -> Option<Arc<LeaseCore>> {
        let lease = self.units.take(amount, deadline)?;
        if deadline != NEVER {
            self.track(&lease);
        }
        Some(lease)
    }

    fn track(&self, lease: &Arc<LeaseCore>) {
        let seq = self.ttl_seq.fetch_add(1, Ordering::Relaxed);
        let live = self.ttl_live.fetch_add(1, Ordering::AcqRel) + 1;
        let mut heap = self.ttl_heap.lock();
        if heap.len() >= COMPACT_MIN && heap.len() > 2 * live {
            heap.retain(|e| !e.lease.is_done());
        }
        heap.push(TtlEntry {
            deadline: lease.deadline,
            seq,
            lease: lease.clone(),
        });
        let next = heap.peek().map_or(NEVER, |e| e.deadline);
        self.ttl_next.store(next, Ordering::Release);
    }

    /// Gives the lease's units back if no one has yet; true if this call did.
    pub fn release(&self, lease: &LeaseCore) -> bool {
        if !self.units.give_back(lease) {
            return false;
        }
        if lease.deadline != NEVER {
            self.ttl_live.fetch_sub(1, Ordering::AcqRel);
        }
        self.wake();
        true
    }

    fn wake(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.wait_lock.lock();
            self.cv.notify_all();
        }
    }

    /// Earliest ttl deadline of a lease that may still be held, or [`NEVER`].
    pub fn next_deadline(&self) -> i64 {
        self.ttl_next.load(Ordering::Acquire)
    }

    /// Gives back the units of every lease whose deadline is `<= now`; returns how many
    /// leases this call reclaimed.
    pub fn reclaim(&self, now: i64) -> usize {
        if now < self.ttl_next.load(Ordering::Acquire) {
            return 0;
        }
        let mut expired = Vec::new();
        {
            let mut heap = self.ttl_heap.lock();
            while heap.peek().is_some_and(|e| e.deadline <= now) {
                if let Some(e) = heap.pop() {
                    expired.push(e.lease);
                }
            }
            let next = heap.peek().map_or(NEVER, |e| e.deadline);
            self.ttl_next.store(next, Ordering::Release);
        }
        expired.iter().filter(|l| self.release(l)).count()
    }

    /// Number of entries in the ttl heap (for tests of its bound).
    pub fn ttl_tracked(&self) -> usize {
        self.ttl_heap.lock().len()
    }

    /// Registers a blocked taker until the guard is dropped.
    pub fn enter_wait(&self) -> WaitGuard<'_> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        WaitGuard(self)
    }

    /// One wait slice of a registered taker: re-tries under the wait lock, sleeps up to
    /// `slice` unless woken, and re-tries once more.
    pub fn take_or_sleep(
        &self,
        _guard: &WaitGuard<'_>,
        amount: u64,
        deadline: i64,
        slice: Duration,
    ) -> Option<Arc<LeaseCore>> {
        let mut g = self.wait_lock.lock();
        if let Some(l) = self.try_take(amount, deadline) {
            return Some(l);
        }
        self.cv.wait_for(&mut g, slice);
        drop(g);
        self.try_take(amount, deadline)
    }

    /// Records a change of pressure level since the last one recorded, if any. Call it
    /// after every change of `used` when someone listens; see the module docs.
    pub fn sync_pressure(&self, out: &mut Vec<PressureChange>) {
        loop {
            let now = self.level(self.units.used());
            if now as u8 == self.published.load(Ordering::SeqCst) {
                return;
            }
            let _g = self.events.lock();
            let used = self.units.used();
            let level = self.level(used);
            let prev = Pressure::from_u8(self.published.load(Ordering::SeqCst));
            if level != prev {
                self.published.store(level as u8, Ordering::SeqCst);
                out.push(PressureChange {
                    pressure: level,
                    previous: prev,
                    used,
                    limit: self.units.limit,
                });
            }
        }
    }
}

/// Deregisters a blocked taker on drop.
pub struct WaitGuard<'a>(&'a Budget);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---- pool ------------------------------------------------------------------------------

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
    pub fn new(
        max_size: usize,
        min_size: usize,
        max_idle: Option<i64>,
    ) -> Result<Self, ResourceError> {
        if min_size > max_size {
            return Err(ResourceError::PoolMinSize);
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

    fn budget(limit: u64) -> Budget {
        Budget::new("cpu", limit, 0.9, 0.95).unwrap()
    }

    #[test]
    fn thresholds_follow_the_float_rule() {
        assert_eq!(threshold(0.9, 10), 9);
        assert_eq!(threshold(0.95, 10), 10);
        assert_eq!(threshold(0.5, 3), 2);
        assert_eq!(threshold(1.0, 7), 7);
        for limit in 1..200u64 {
            for frac in [0.1, 0.3, 0.7, 0.9, 0.95, 0.99] {
                let t = threshold(frac, limit);
                assert!(t as f64 >= frac * limit as f64);
                assert!(t == 0 || ((t - 1) as f64) < frac * limit as f64);
            }
        }
        assert_eq!(
            check_thresholds(0.0, 0.5),
            Err(ResourceError::AlertThreshold)
        );
        assert_eq!(
            check_thresholds(0.9, 0.8),
            Err(ResourceError::SevereThreshold)
        );
        assert_eq!(
            check_thresholds(0.9, 1.1),
            Err(ResourceError::SevereThreshold)
        );
        assert!(check_thresholds(f64::NAN, 1.0).is_err());
    }

    #[test]
    fn take_and_release_exactly_once() {
        let b = budget(10);
        let a = b.try_take(7, NEVER).unwrap();
        assert!(b.try_take(4, NEVER).is_none());
        assert_eq!(b.used(), 7);
        assert!(b.release(&a));
        assert!(!b.release(&a));
        assert_eq!(b.used(), 0);
        assert_eq!(
            b.check_amount(11).unwrap_err().to_string(),
            "amount must be <= the limit of 'cpu' (10)"
        );
        assert_eq!(b.check_amount(0), Err(ResourceError::AmountTooSmall));
    }

    #[test]
    fn expired_leases_are_reclaimed_once() {
        let b = budget(4);
        let l = b.try_take(3, 100).unwrap();
        assert_eq!(b.reclaim(99), 0);
        assert_eq!(b.used(), 3);
        assert_eq!(b.reclaim(100), 1);
        assert_eq!(b.used(), 0);
        assert!(l.is_done());
        assert!(!b.release(&l));
        assert_eq!(b.used(), 0);
        assert_eq!(b.next_deadline(), NEVER);
    }

    #[test]
    fn ttl_heap_is_compacted() {
        let b = budget(1);
        for i in 0..10_000 {
            let l = b.try_take(1, 1_000_000 + i).unwrap();
            b.release(&l);
        }
        assert!(b.ttl_tracked() <= 2 * COMPACT_MIN);
    }

    #[test]
    fn pressure_changes_form_one_chain() {
        let b = budget(20);
        let mut out = Vec::new();
        let l1 = b.try_take(18, NEVER).unwrap();
        b.sync_pressure(&mut out);
        let l2 = b.try_take(1, NEVER).unwrap();
        b.sync_pressure(&mut out);
        b.sync_pressure(&mut out);
        b.release(&l1);
        b.sync_pressure(&mut out);
        b.release(&l2);
        b.sync_pressure(&mut out);
        let got: Vec<_> = out
            .iter()
            .map(|c| (c.previous, c.pressure, c.used))
            .collect();
        assert_eq!(
            got,
            vec![
                (Pressure::Normal, Pressure::Moderate, 18),
                (Pressure::Moderate, Pressure::Severe, 19),
                (Pressure::Severe, Pressure::Normal, 1),
            ]
        );
    }

    #[test]
    fn threads_never_exceed_the_limit_and_leave_nothing_behind() {
        let b = Arc::new(budget(5));
        let changes = Arc::new(Mutex::new(Vec::new()));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                let changes = changes.clone();
                thread::spawn(move || {
                    let mut out = Vec::new();
                    for i in 0..2_000u64 {
                        let amount = 1 + i % 3;
                        let g = b.enter_wait();
                        let l = loop {
                            if let Some(l) =
                                b.take_or_sleep(&g, amount, NEVER, Duration::from_millis(5))
                            {
                                break l;
                            }
                        };
                        assert!(b.used() <= 5);
                        b.sync_pressure(&mut out);
                        b.release(&l);
                        b.sync_pressure(&mut out);
                    }
                    changes.lock().extend(out);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(b.used(), 0);
        let mut out = Vec::new();
        b.sync_pressure(&mut out);
        assert!(out.is_empty(), "final level was reported");
        // Reported changes form one chain from normal back to normal.
        let changes = changes.lock();
        let mut count = [0i64; 3];
        for c in changes.iter() {
            assert_ne!(c.previous, c.pressure);
            count[c.pressure as usize] += 1;
            count[c.previous as usize] -= 1;
        }
        assert_eq!(count, [0, 0, 0]);
    }

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

/// The budget's lock-free step under every interleaving (`make loom`): concurrent takes
/// never pass the limit, and a lease released by its owner while it also expires gives
/// its units back exactly once.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::thread;

    #[test]
    fn loom_budget_units_are_never_over_taken_lost_or_freed_twice() {
        loom::model(|| {
            let units = Arc::new(Units::new(2));
            let held = units.take(1, NEVER).unwrap();
            // The owner and the expiry sweep release `held` at once; a third thread takes
            // what it can meanwhile.
            let owner = {
                let (units, held) = (units.clone(), held.clone());
                thread::spawn(move || units.give_back(&held))
            };
            let sweep = {
                let (units, held) = (units.clone(), held.clone());
                thread::spawn(move || units.give_back(&held))
            };
            let taker = {
                let units = units.clone();
                thread::spawn(move || {
                    let got = units.take(2, NEVER);
                    assert!(units.used() <= 2);
                    got
                })
            };
            // Let the others go first (see `core::breaker`'s models on loom's search).
            thread::yield_now();
            assert!(units.used() <= 2);
            let released = [owner.join().unwrap(), sweep.join().unwrap()];
            let got = taker.join().unwrap();
            assert_eq!(released.iter().filter(|r| **r).count(), 1, "{released:?}");
            assert!(held.is_done());
            // Whatever the order, `used` holds exactly the leases still held.
            let expect = got.as_ref().map_or(0, |l| l.amount());
            assert_eq!(units.used(), expect);
            if let Some(l) = got {
                assert!(units.give_back(&l));
                assert!(!units.give_back(&l));
            }
            assert_eq!(units.used(), 0);
        });
    }

    #[test]
    fn loom_budget_concurrent_takes_share_the_limit() {
        loom::model(|| {
            let units = Arc::new(Units::new(3));
            let takers: Vec<_> = (0..2)
                .map(|_| {
                    let units = units.clone();
                    thread::spawn(move || units.take(2, NEVER))
                })
                .collect();
            let got: Vec<_> = takers.into_iter().map(|t| t.join().unwrap()).collect();
            // 2 + 2 > 3: exactly one of the two takes fits.
            assert_eq!(got.iter().filter(|g| g.is_some()).count(), 1);
            assert_eq!(units.used(), 2);
        });
    }
}
