//! The signal bus core: a router from signal types to subscriptions, each with its own
//! bounded mailbox.
//!
//! # Structure
//! A [`Router`] keeps its subscriptions in a segment [`Trie`] (see `topic`) behind one
//! [`ReadMostly`] lock (a publisher read-locks only its own thread's stripe, so
//! publishers on different threads write no shared lock word; a subscribe or cancel
//! write-locks every stripe). Each trie entry is the subscription (`Arc<Sub>`) and a *handle*
//! `H`, whatever the caller wants the router to own for it (the Python binding: the one
//! `Subscription` object that stands for it). Publishing takes the read lock only for the
//! walk that collects the matching subscriptions (cloned `Arc`s), releases it, and only
//! then offers the item to each subscription's mailbox, a [`WorkQueue`] with the
//! subscription's own bound and overflow policy. So a publisher never holds the router's
//! lock while it pushes, waits (a `block` mailbox) or drops anything, and a subscriber
//! that is slow or blocked never stalls routing for the others. Subscribing and cancelling
//! take the write lock for one trie insert or removal.
//!
//! # Invariants
//! - Exactly once: `cancel` flips `cancelled` with a swap, so one caller performs the
//!   cancellation (trie removal, mailbox close); every later call is a no-op.
//! - A cancelled subscription is never in the trie. Insertion ([`Router::attach`])
//!   checks `cancelled` under the write lock, and `cancel` sets it before taking the
//!   write lock to remove, so whichever runs second sees the other.
//! - A cancelled mailbox is closed: no put succeeds after the close. A pull subscription
//!   (no handler) keeps what was queued, readable until drained, like a closed
//!   `WorkQueue`. A handler subscription's mailbox is drained at cancellation and the
//!   items are handed back, counted as dropped; a worker that took an item in the window
//!   between close and drain discards it ([`Sub::discard`]) instead of delivering it.
//!   Either way nothing is lost silently.
//! - Counters: `accepted == delivered + dropped + queued` for a quiescent subscription
//!   (the mailbox's `put == got + dropped + size`, with items discarded at
//!   cancellation moved from `got` to `dropped`). `accepted` counts what entered the
//!   mailbox: a full `drop_newest` mailbox refuses (counted in `rejected`).
//! - Nothing owned by a subscriber is dropped under the router's lock: the trie hands a
//!   removed entry back and [`Router::take_all`] moves the whole trie out before anything
//!   is dropped. Items and waiters that a cancellation drains are returned to the caller,
//!   to be dropped or woken with no lock held. (With Python items a last reference may
//!   run `__del__`, which may publish or subscribe.)
//!
//! # Orderings
//! `cancelled` uses `SeqCst` (the swap and the check in `attach` must not be reordered
//! around the lock acquisitions that follow them; the lock orders them too). The other
//! counters are statistics and use `Relaxed`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Weak};

use crate::core::queue::{Overflow, QueueError, WorkQueue};
use crate::core::readmap::ReadMostly;
use crate::core::topic::{parse_pattern, Seg, TopicError, Trie, TypeSegments};

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
    /// Items that entered its mailbox.
    pub accepted: u64,
    /// Items taken out: given to the handler, or returned by a get.
    pub delivered: u64,
    /// Items accepted and then lost: evicted by `drop_oldest`, or still queued in a
    /// handler subscription when it was cancelled.
    pub dropped: u64,
    /// Items refused for lack of room (`reject`, `drop_newest`, or `block` when waiting
    /// was impossible).
    pub rejected: u64,
    /// Handler calls that raised.
    pub errors: u64,
    /// Items waiting in the mailbox now.
    pub queued: usize,
}

/// One subscription: a pattern, a bounded mailbox and its counters.
pub struct Sub<T, W, H> {
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
    router: Weak<Router<T, W, H>>,
}

/// A routed subscription and the handle the router owns for it.
pub struct Entry<T, W, H> {
    pub sub: Arc<Sub<T, W, H>>,
    pub handle: H,
}

/// What a cancellation leaves to drop or wake once every lock is released.
#[must_use]
pub struct Cancelled<T, W, H> {
    /// The router's entry for the subscription.
    pub removed: Option<Entry<T, W, H>>,
    /// Asynchronous waiters of the mailbox, to be woken (they will find it closed, or
    /// the signals still queued).
    pub wake: Vec<W>,
    /// Items drained from a handler subscription's mailbox (counted as dropped).
    pub items: Vec<T>,
}

impl<T, W, H> Sub<T, W, H> {
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
            dropped: q.dropped.saturating_add(discarded),
            rejected: q.rejected,
            errors: self.errors.load(Relaxed),
            queued: q.size,
        }
    }

    /// Cancels the subscription: removes it from its router and closes its mailbox; a
    /// handler subscription's mailbox is drained too. Idempotent: only the first call
    /// returns `Some`.
    pub fn cancel(self: &Arc<Self>) -> Option<Cancelled<T, W, H>> {
        if self.cancelled.swap(true, SeqCst) {
            return None;
        }
        let removed = self.router.upgrade().and_then(|r| r.remove(self));
        let wake = self.mailbox.close();
        let mut items = Vec::new();
        // Closed: the first drain takes everything there is (no put can follow), and
        // close() took every waiter.
        if self.has_handler {
            if let Ok((got, putters)) = self.mailbox.try_get_many(usize::MAX) {
                items = got;
                drop(putters);
            }
        }
        self.discard(items.len() as u64);
        Some(Cancelled {
            removed,
            wake,
            items,
        })
    }
}

impl<T, W, H> fmt::Debug for Sub<T, W, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sub")
            .field("id", &self.id)
            .field("pattern", &self.pattern)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Routes signal types to subscriptions; see the module documentation.
pub struct Router<T, W, H> {
    trie: ReadMostly<Trie<Entry<T, W, H>>>,
    next_id: AtomicU64,
}

impl<T, W, H> Router<T, W, H> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            trie: ReadMostly::new(Trie::new()),
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
    ) -> Result<Arc<Sub<T, W, H>>, BusError> {
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

    /// Starts routing to `sub`, the router owning `handle` for it, unless it was
    /// cancelled meanwhile: then the handle comes back, to be dropped with no lock held.
    pub fn attach(&self, sub: &Arc<Sub<T, W, H>>, handle: H) -> Result<(), H> {
        let entry = Entry {
            sub: sub.clone(),
            handle,
        };
        let mut trie = self.trie.write();
        if sub.is_cancelled() {
            drop(trie);
            return Err(entry.handle);
        }
        trie.insert(&sub.segs, entry);
        Ok(())
    }

    fn remove(&self, sub: &Arc<Sub<T, W, H>>) -> Option<Entry<T, W, H>> {
        self.trie
            .write()
            .remove(&sub.segs, |e| Arc::ptr_eq(&e.sub, sub))
    }

    /// Appends to `out` every live subscription whose pattern matches `signal_type`,
    /// each once (nothing if the type is invalid). Holds the read lock for the walk only;
    /// the type is split once, checked as the walk reads it.
    pub fn route(
        &self,
        signal_type: &str,
        out: &mut Vec<Arc<Sub<T, W, H>>>,
    ) -> Result<(), BusError> {
        let before = out.len();
        let mut segs = TypeSegments::new(signal_type);
        self.trie
            .read()
            .for_each_match(&mut segs, |e| out.push(e.sub.clone()));
        if let Err(e) = segs.finish() {
            out.truncate(before);
            return Err(e.into());
        }
        Ok(())
    }

    /// Calls `f` on every live entry, under the read lock (`f` must not call back into
    /// the router, nor run code that might).
    pub fn for_each(&self, mut f: impl FnMut(&Entry<T, W, H>)) {
        let _ = self.trie.read().try_for_each::<()>(|e| {
            f(e);
            Ok(())
        });
    }

    /// Garbage collection: calls `f` on every live entry if the lock can be had right
    /// now, without waiting for it.
    pub fn try_visit<X>(&self, f: impl FnMut(&Entry<T, W, H>) -> Result<(), X>) -> Result<(), X> {
        match self.trie.try_read() {
            Some(trie) => trie.try_for_each(f),
            None => Ok(()),
        }
    }

    /// Number of live subscriptions.
    pub fn len(&self) -> usize {
        self.trie.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties the router (its owner is going away) and returns what it held, for the
    /// caller to cancel and drop with no lock held.
    pub fn take_all(&self) -> Vec<Entry<T, W, H>> {
        let mut trie = std::mem::take(&mut *self.trie.write());
        trie.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::queue::{GetError, PutError};
    use std::thread;

    type R = Router<u32, u32, u64>;
    type S = Arc<Sub<u32, u32, u64>>;

    fn sub(r: &Arc<R>, pattern: &str, maxsize: usize, overflow: Overflow) -> S {
        let s = r.subscribe(pattern, maxsize, overflow, false).unwrap();
        assert!(r.attach(&s, s.id()).is_ok());
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
        // Checked as it is walked: a type whose bad segment comes after a match, or
        // after the walk ran out of states, routes nothing.
        for bad in ["agent.42.error.", "other..x", "agent.#.error", ""] {
            assert!(r.route(bad, &mut out).is_err());
            assert!(out.is_empty(), "{bad}");
        }
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
    fn cancel_is_idempotent_removes_and_drains_a_handler_mailbox() {
        let r = R::new();
        let s = r.subscribe("a.b", 4, Overflow::DropOldest, true).unwrap();
        assert!(r.attach(&s, 7).is_ok());
        for i in 0..3 {
            assert!(s.mailbox().try_put(i).is_ok());
        }
        assert_eq!(s.mailbox().try_get().unwrap().0, 0);
        let c = s.cancel().unwrap();
        assert_eq!(c.removed.map(|e| e.handle), Some(7));
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

    /// A cancelled pull subscription is a closed queue: what was queued stays readable.
    #[test]
    fn cancel_keeps_a_pull_mailbox_readable() {
        let r = R::new();
        let s = sub(&r, "a", 4, Overflow::DropOldest);
        for i in 0..3 {
            assert!(s.mailbox().try_put(i).is_ok());
        }
        let c = s.cancel().unwrap();
        assert!(c.items.is_empty() && c.removed.is_some());
        assert!(matches!(s.mailbox().try_put(9), Err(PutError::Closed(9))));
        assert_eq!(s.stats().queued, 3);
        assert_eq!(s.mailbox().try_get().unwrap().0, 0);
        assert_eq!(s.mailbox().try_get_many(9).unwrap().0, vec![1, 2]);
        assert_eq!(s.mailbox().try_get().unwrap_err(), GetError::Closed);
        let st = s.stats();
        assert_eq!(
            (st.accepted, st.delivered, st.dropped, st.queued),
            (3, 3, 0, 0)
        );
    }

    #[test]
    fn attach_after_cancel_adds_nothing_and_returns_the_handle() {
        let r = R::new();
        let s = r.subscribe("a", 1, Overflow::Block, true).unwrap();
        let c = s.cancel().unwrap();
        assert!(c.removed.is_none());
        assert_eq!(r.attach(&s, 5), Err(5));
        assert!(r.is_empty());
    }

    #[test]
    fn entries_are_listed_and_visited() {
        let r = R::new();
        let a = sub(&r, "a", 1, Overflow::Block);
        let b = sub(&r, "b.#", 1, Overflow::Block);
        let mut seen = Vec::new();
        r.for_each(|e| seen.push(e.handle));
        seen.sort_unstable();
        assert_eq!(seen, vec![a.id(), b.id()]);
        let mut visited = 0;
        assert_eq!(
            r.try_visit::<()>(|e| {
                visited += 1;
                assert_eq!(e.handle, e.sub.id());
                Ok(())
            }),
            Ok(())
        );
        assert_eq!(visited, 2);
        // A visit never waits for the lock.
        let w = r.trie.write();
        assert_eq!(r.try_visit(|_| Err(())), Ok(()));
        drop(w);
    }

    #[test]
    fn overflow_counts_per_subscription() {
        let r = R::new();
        let s = sub(&r, "x", 2, Overflow::Reject);
        let t = sub(&r, "x", 2, Overflow::DropOldest);
        let u = sub(&r, "x", 2, Overflow::DropNewest);
        for i in 0..5 {
            let _ = s.mailbox().try_put(i);
            let _ = t.mailbox().try_put(i);
            let _ = u.mailbox().try_put(i);
        }
        let (a, b, c) = (s.stats(), t.stats(), u.stats());
        assert_eq!((a.accepted, a.rejected, a.dropped), (2, 3, 0));
        assert_eq!((b.accepted, b.rejected, b.dropped), (5, 0, 3));
        assert_eq!((c.accepted, c.rejected, c.dropped), (2, 3, 0));
        t.count_error();
        assert_eq!(t.stats().errors, 1);
    }

    #[test]
    fn take_all_empties_the_router() {
        let r = R::new();
        let s = sub(&r, "a.#", 1, Overflow::Block);
        let t = sub(&r, "b", 1, Overflow::Block);
        let mut n = 0;
        r.for_each(|_| n += 1);
        assert_eq!(n, 2);
        let all = r.take_all();
        assert_eq!(all.len(), 2);
        let mut handles: Vec<u64> = all.iter().map(|e| e.handle).collect();
        handles.sort_unstable();
        assert_eq!(handles, vec![s.id(), t.id()]);
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
