//! Named resource budgets ([`Budget`]): `limit` units of one resource, taken and given
//! back without a lock, leases that expire, blocked takers, and pressure levels.
//!
//! # Taking and giving back
//! A budget's lock-free heart is [`Units`]:
//! `used` is one `AtomicU64` changed only by CAS (take) and `fetch_sub` (give back), so
//! acquiring and releasing never take a lock and `0 <= used <= limit` holds at every
//! instant, also under concurrent callers: a take that would pass the limit fails
//! without writing.
//!
//! A [`LeaseCore`] records one successful take. Its `done` flag is flipped with `swap`, and
//! only the caller that flips it gives the units back, so a lease is returned exactly once
//! whether it is released by its owner, by its destructor or by expiry, in any race.
//! `Units` and `LeaseCore` use `crate::core::sync` atomics: the loom models at the end of
//! this file check both under every interleaving of takes and racing releases.
//!
//! # Expiry
//! A lease taken with a ttl at clock time `t` is live while `now < t + ttl`. Such leases
//! also sit in a per-budget min-heap of deadlines (its own small mutex, used only by
//! ttl leases); `reclaim(now)` pops the expired ones and gives their units back. It runs
//! lazily: on every take attempt, in every wait slice, and on snapshots. `ttl_next`
//! caches the earliest deadline so the common case is one atomic load. Leases released
//! before their deadline stay in the heap until popped; the heap is compacted when it
//! holds more than twice as many entries as live ttl leases, so it is bounded.
//!
//! # Waiting
//! A blocked taker registers in `waiters`, then re-tries and sleeps on the
//! budget's condvar under `wait_lock`. A giver that sees `waiters > 0` takes `wait_lock`
//! and notifies. Both sides use `SeqCst` for the (`used`, `waiters`) pair (store one, load
//! the other), so either the taker sees the freed units or the giver sees the taker; and
//! the taker re-tries under `wait_lock` before sleeping, so no wake-up is lost.
//!
//! # Pressure
//! `level(used)` is normal, moderate (`used >= alert * limit`) or severe
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

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::core::sync;

/// Deadline of a lease without ttl.
pub const NEVER: i64 = i64::MAX;

/// Why a budget or an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetError {
    UnknownName(String),
    AmountTooSmall,
    AmountOverLimit { name: String, limit: u64 },
    LimitTooSmall(String),
    AlertThreshold,
    SevereThreshold,
}

impl fmt::Display for BudgetError {
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
        }
    }
}

impl std::error::Error for BudgetError {}

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
pub fn check_thresholds(alert: f64, severe: f64) -> Result<(), BudgetError> {
    if !(alert > 0.0 && alert <= 1.0) {
        return Err(BudgetError::AlertThreshold);
    }
    if !(severe >= alert && severe <= 1.0) {
        return Err(BudgetError::SevereThreshold);
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
    pub fn new(name: &str, limit: u64, alert: f64, severe: f64) -> Result<Self, BudgetError> {
        if limit < 1 {
            return Err(BudgetError::LimitTooSmall(name.to_owned()));
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
    pub fn check_amount(&self, amount: i64) -> Result<u64, BudgetError> {
        if amount < 1 {
            return Err(BudgetError::AmountTooSmall);
        }
        let amount = amount as u64;
        if amount > self.units.limit {
            return Err(BudgetError::AmountOverLimit {
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
        assert_eq!(check_thresholds(0.0, 0.5), Err(BudgetError::AlertThreshold));
        assert_eq!(
            check_thresholds(0.9, 0.8),
            Err(BudgetError::SevereThreshold)
        );
        assert_eq!(
            check_thresholds(0.9, 1.1),
            Err(BudgetError::SevereThreshold)
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
        assert_eq!(b.check_amount(0), Err(BudgetError::AmountTooSmall));
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
}

/// The budget's lock-free step under every interleaving (`make loom`): concurrent takes
/// never pass the limit, and a lease released by its owner while it also expires gives
/// its units back exactly once.
#[cfg(test)] // separate from cfg(loom): clippy sees a plain cfg(test) as test code
#[cfg(loom)]
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
