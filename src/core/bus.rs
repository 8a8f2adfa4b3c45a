//! The signal bus core: a router from signal types to subscriptions, each with its own
//! bounded mailbox.
//!
//! # Structure
//! A [`Router`] keeps its subscriptions in a segment [`Trie`] (see `topic`) behind one
//! `parking_lot::RwLock`. Publishing takes the read lock only for the walk that collects
//! the matching subscriptions (cloned `Arc`s), releases it, and only then offers the item
//! to each subscription's mailbox, a [`WorkQueue`] with the subscription's own bound and
//! overflow policy. So a publisher never holds the router's lock while it pushes, waits
//! (a `block` mailbox) or drops anything, and a subscriber that is slow or blocked
//! never stalls routing for the others. Subscribing and cancelling take the write lock
//! for one trie insert or removal.
//!
//! # Invariants
//! - Exactly once: `cancel` flips `cancelled` with a swap, so one caller performs the
//!   cancellation (trie removal, mailbox close, drain); every later call is a no-op.
//! - A cancelled subscription is never in the trie. Insertion ([`Router::attach`])
//!   checks `cancelled` under the write lock, and `cancel` sets it before taking the
//!   write lock to remove, so whichever runs second sees the other.
//! - A cancelled mailbox is closed, then drained: no put succeeds after the close, and
//!   every item put before it is handed back (counted as dropped), so a cancelled
//!   subscription holds no items. A consumer that took an item in the window between
//!   close and drain discards it ([`Sub::discard`]) instead of delivering it.
//! - Counters: `accepted == delivered + dropped + queued` for a quiescent subscription
//!   (the mailbox's `put == got + dropped + size`, with items discarded at
//!   cancellation moved from `got` to `dropped`).
//! - Nothing owned by a subscriber is dropped under the router's lock: the trie hands a
//!   removed entry back ([`Trie::remove`]) and [`Router::take_all`] moves the whole trie
//!   out before anything is dropped. Items and waiters that a cancellation drains are
//!   returned to the caller, to be dropped or woken with no lock held. (With Python
//!   items a last reference may run `__del__`, which may publish or subscribe.)
//!
//! # Orderings
//! `cancelled` uses `SeqCst` (the swap and the check in `attach` must not be reordered
//! around the lock acquisitions that follow them; the lock orders them too). The other
//! counters are statistics and use `Relaxed`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Weak};

use parking_lot::RwLock;

use crate::core::queue::{Overflow, QueueError, WorkQueue};
use crate::core::topic::{check_type, parse_pattern, Seg, TopicError, Trie};

/// Why a subscription or a publication was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusError {
    Topic(TopicError),
    Queue(QueueError),
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Topic(e) => e.fmt(f),
            Self::Queue(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BusError {}

impl From<TopicError> for BusError {
    fn from(e: TopicError) -> Self {
        Self::Topic(e)
    }
}

impl From<QueueError> for BusError {
    fn from(e: QueueError) -> Self {
        Self::Queue(e)
    }
}

/// A small number that identifies the current thread (0 is never used), so that a
/// publisher can tell whether it is running on a subscription's own worker.
pub fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: u64 = NEXT.fetch_add(1, Relaxed);
    }
    TOKEN.with(|t| *t)
}

/// Counters of one subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubStats {
    /// Items its mailbox accepted.
    pub accepted: u64,
    /// Items taken out: given to the handler, or returned by a get.
    pub delivered: u64,
    /// Items accepted and then lost: evicted or discarded by the overflow policy, or
    /// still queued when the subscription was cancelled.
    pub dropped: u64,
    /// Items refused for lack of room (`reject`, or `block` when waiting was impossible).
    pub rejected: u64,
    /// Handler calls that raised.
    pub errors: u64,
    /// Items waiting in the mailbox now.
    pub queued: usize,
}

/// One subscription: a pattern, a bounded mailbox and its counters.
pub struct Sub<T, W> {
    id: u64,
    pattern: Box<str>,
    segs: Box<[Seg]>,
    mailbox: WorkQueue<T, W>,
    has_handler: bool,
    cancelled: AtomicBool,
    /// Items taken from the mailbox but not delivered (cancellation).
    discarded: AtomicU64,
    errors: AtomicU64,
    /// `thread_token()` of the worker thread running the handler (0: none).
    worker: AtomicU64,
    router: Weak<Router<T, W>>,
}

/// What a cancellation leaves to drop or wake once every lock is released.
#[must_use]
pub struct Cancelled<T, W> {
    /// The trie's reference to the subscription.
    pub removed: Option<Arc<Sub<T, W>>>,
    /// Asynchronous waiters of the mailbox, to be woken (they will find it closed).
    pub wake: Vec<W>,
    /// Items that were still queued.
    pub items: Vec<T>,
}

impl<T, W> Sub<T, W> {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn has_handler(&self) -> bool {
        self.has_handler
    }

    pub fn mailbox(&self) -> &WorkQueue<T, W> {
        &self.mailbox
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(SeqCst)
    }

    pub fn set_worker(&self, token: u64) {
        self.worker.store(token, Relaxed);
    }

    /// True when `token` is this subscription's worker thread.
    pub fn is_worker(&self, token: u64) -> bool {
        token != 0 && self.worker.load(Relaxed) == token
    }

    pub fn count_error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    /// An item taken from the mailbox after cancellation is not delivered: count it as
    /// dropped.
    pub fn discard(&self, n: u64) {
        self.discarded.fetch_add(n, Relaxed);
    }

    pub fn stats(&self) -> SubStats {
        let q = self.mailbox.stats();
        let discarded = self.discarded.load(Relaxed);
        SubStats {
            accepted: q.put,
            delivered: q.got.saturating_sub(discarded),
            dropped: q.dropped + discarded,
            rejected: q.rejected,
            errors: self.errors.load(Relaxed),
            queued: q.size,
        }
    }

    /// Cancels the subscription: removes it from its router, closes its mailbox and
    /// drains it. Idempotent: only the first call returns `Some`.
    pub fn cancel(self: &Arc<Self>) -> Option<Cancelled<T, W>> {
        if self.cancelled.swap(true, SeqCst) {
            return None;
        }
        let removed = self.router.upgrade().and_then(|r| r.remove(self));
        let wake = self.mailbox.close();
        let mut items = Vec::new();
        // Closed: the first drain takes everything there is (no put can follow).
        if let Ok((got, putters)) = self.mailbox.try_get_many(usize::MAX) {
            items = got;
            debug_assert!(putters.is_empty(), "close() already took every putter");
            drop(putters);
        }
        self.discard(items.len() as u64);
        Some(Cancelled {
            removed,
            wake,
            items,
        })
    }
}

impl<T, W> fmt::Debug for Sub<T, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sub")
            .field("id", &self.id)
            .field("pattern", &self.pattern)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// A trie entry: a subscription compared by identity.
struct Entry<T, W>(Arc<Sub<T, W>>);

impl<T, W> Clone for Entry<T, W> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T, W> PartialEq for Entry<T, W> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Routes signal types to subscriptions; see the module documentation.
pub struct Router<T, W> {
    trie: RwLock<Trie<Entry<T, W>>>,
    next_id: AtomicU64,
}

impl<T, W> Router<T, W> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            trie: RwLock::new(Trie::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// A new subscription, not yet routed to: call [`Self::attach`] once it is ready
    /// (e.g. its worker started), so that a failure in between leaves nothing behind.
    pub fn subscribe(
        self: &Arc<Self>,
        pattern: &str,
        maxsize: usize,
        overflow: Overflow,
        has_handler: bool,
    ) -> Result<Arc<Sub<T, W>>, BusError> {
        let segs = parse_pattern(pattern)?.into_boxed_slice();
        let mailbox = WorkQueue::new(maxsize, overflow)?;
        Ok(Arc::new(Sub {
            id: self.next_id.fetch_add(1, Relaxed),
            pattern: pattern.into(),
            segs,
            mailbox,
            has_handler,
            cancelled: AtomicBool::new(false),
            discarded: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            worker: AtomicU64::new(0),
            router: Arc::downgrade(self),
        }))
    }

    /// Starts routing to `sub`, unless it was cancelled meanwhile. True if added.
    pub fn attach(&self, sub: &Arc<Sub<T, W>>) -> bool {
        let entry = Entry(sub.clone());
        let mut trie = self.trie.write();
        if sub.is_cancelled() {
            drop(trie);
            return false;
        }
        trie.insert(&sub.segs, entry);
        true
    }

    fn remove(&self, sub: &Arc<Sub<T, W>>) -> Option<Arc<Sub<T, W>>> {
        let key = Entry(sub.clone());
        let removed = self.trie.write().remove(&sub.segs, &key);
        removed.map(|e| e.0)
    }

    /// Appends to `out` every live subscription whose pattern matches `signal_type`,
    /// each once. Holds the read lock for the walk only.
    pub fn route(&self, signal_type: &str, out: &mut Vec<Arc<Sub<T, W>>>) -> Result<(), BusError> {
        check_type(signal_type)?;
        self.trie
            .read()
            .for_each_match(signal_type.split('.'), |e| out.push(e.0.clone()));
        Ok(())
    }

    /// A snapshot of the live subscriptions.
    pub fn subscriptions(&self) -> Vec<Arc<Sub<T, W>>> {
        let mut all: Vec<Entry<T, W>> = Vec::new();
        self.trie.read().all(&mut all);
        all.into_iter().map(|e| e.0).collect()
    }

    /// Number of live subscriptions.
    pub fn len(&self) -> usize {
        self.trie.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties the router (its owner is going away) and returns what it held, for the
    /// caller to cancel with no lock held.
    pub fn take_all(&self) -> Vec<Arc<Sub<T, W>>> {
        let trie = std::mem::take(&mut *self.trie.write());
        let mut all: Vec<Entry<T, W>> = Vec::new();
        trie.all(&mut all);
        drop(trie);
        all.into_iter().map(|e| e.0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::queue::{GetError, PutError};
    use std::thread;

    type R = Router<u32, u32>;

    fn sub(r: &Arc<R>, pattern: &str, maxsize: usize, overflow: Overflow) -> Arc<Sub<u32, u32>> {
        let s = r.subscribe(pattern, maxsize, overflow, false).unwrap();
        assert!(r.attach(&s));
        s
    }

    fn ids(r: &R, ty: &str) -> Vec<u64> {
        let mut out = Vec::new();
        r.route(ty, &mut out).unwrap();
        let mut ids: Vec<u64> = out.iter().map(|s| s.id()).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn routes_by_pattern_and_refuses_bad_input() {
        let r = R::new();
        let a = sub(&r, "agent.*.error", 4, Overflow::DropOldest);
        let b = sub(&r, "agent.#", 4, Overflow::DropOldest);
        assert_eq!(ids(&r, "agent.42.error"), vec![a.id(), b.id()]);
        assert_eq!(ids(&r, "agent"), vec![b.id()]);
        assert_eq!(ids(&r, "other"), Vec::<u64>::new());
        let mut out = Vec::new();
        assert_eq!(
            r.route("a.*", &mut out).unwrap_err().to_string(),
            "signal_type \"a.*\" must not contain '*' or '#'"
        );
        assert_eq!(
            r.subscribe("", 1, Overflow::Block, false)
                .unwrap_err()
                .to_string(),
            "pattern must not be empty"
        );
        assert_eq!(
            r.subscribe("a", 0, Overflow::Block, false)
                .unwrap_err()
                .to_string(),
            "maxsize must be >= 1"
        );
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn cancel_is_idempotent_removes_and_drains() {
        let r = R::new();
        let s = sub(&r, "a.b", 4, Overflow::DropOldest);
        for i in 0..3 {
            assert!(s.mailbox().try_put(i).is_ok());
        }
        assert_eq!(s.mailbox().try_get().unwrap().0, 0);
        let c = s.cancel().unwrap();
        assert!(c.removed.is_some());
        assert_eq!(c.items, vec![1, 2]);
        assert!(s.cancel().is_none());
        assert!(s.is_cancelled());
        assert_eq!(ids(&r, "a.b"), Vec::<u64>::new());
        assert!(r.is_empty());
        assert!(matches!(s.mailbox().try_put(9), Err(PutError::Closed(9))));
        let st = s.stats();
        assert_eq!(
            (st.accepted, st.delivered, st.dropped, st.queued),
            (3, 1, 2, 0)
        );
        assert_eq!(s.mailbox().try_get().unwrap_err(), GetError::Closed);
    }

    #[test]
    fn attach_after_cancel_adds_nothing() {
        let r = R::new();
        let s = r.subscribe("a", 1, Overflow::Block, true).unwrap();
        let c = s.cancel().unwrap();
        assert!(c.removed.is_none());
        assert!(!r.attach(&s));
        assert!(r.is_empty());
    }

    #[test]
    fn overflow_counts_per_subscription() {
        let r = R::new();
        let s = sub(&r, "x", 2, Overflow::Reject);
        let t = sub(&r, "x", 2, Overflow::DropOldest);
        for i in 0..5 {
            let _ = s.mailbox().try_put(i);
            let _ = t.mailbox().try_put(i);
        }
        let (a, b) = (s.stats(), t.stats());
        assert_eq!((a.accepted, a.rejected, a.dropped), (2, 3, 0));
        assert_eq!((b.accepted, b.rejected, b.dropped), (5, 0, 3));
        t.count_error();
        assert_eq!(t.stats().errors, 1);
    }

    #[test]
    fn take_all_empties_the_router() {
        let r = R::new();
        let s = sub(&r, "a.#", 1, Overflow::Block);
        let _t = sub(&r, "b", 1, Overflow::Block);
        assert_eq!(r.subscriptions().len(), 2);
        let all = r.take_all();
        assert_eq!(all.len(), 2);
        assert!(r.is_empty());
        // Cancelling after the router let go finds nothing to remove.
        assert!(s.cancel().unwrap().removed.is_none());
    }

    #[test]
    fn worker_token_is_per_thread() {
        let r = R::new();
        let s = sub(&r, "a", 1, Overflow::Block);
        let me = thread_token();
        assert_ne!(me, 0);
        assert!(!s.is_worker(me));
        s.set_worker(me);
        assert!(s.is_worker(me));
        let other = thread::spawn(thread_token).join().unwrap();
        assert_ne!(other, me);
        assert!(!s.is_worker(other));
    }

    #[test]
    fn churn_with_concurrent_routing() {
        let r = R::new();
        let keep = sub(&r, "t.#", 1_000_000, Overflow::DropOldest);
        let publishers: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                thread::spawn(move || {
                    let mut n = 0u32;
                    let mut out = Vec::new();
                    for i in 0..2_000 {
                        out.clear();
                        r.route(&format!("t.{}", i % 7), &mut out).unwrap();
                        for s in &out {
                            if s.mailbox().try_put(i).is_ok() {
                                n += 1;
                            }
                        }
                    }
                    n
                })
            })
            .collect();
        let churners: Vec<_> = (0..2)
            .map(|_| {
                let r = r.clone();
                thread::spawn(move || {
                    for i in 0..500 {
                        let s = sub(&r, &format!("t.{}", i % 7), 2, Overflow::DropOldest);
                        assert!(s.cancel().is_some());
                    }
                })
            })
            .collect();
        let mut accepted = 0u64;
        for p in publishers {
            accepted += u64::from(p.join().unwrap());
        }
        for c in churners {
            c.join().unwrap();
        }
        assert_eq!(r.len(), 1);
        // `keep` matched every publication.
        assert_eq!(keep.stats().accepted, 8_000);
        assert!(accepted >= 8_000);
    }
}
