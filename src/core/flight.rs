//! Single-flight: at most one computation per key in progress; callers that arrive while
//! it runs wait for its outcome instead of starting their own.
//!
//! # Structure
//! A [`SingleFlight`] is a table from key to the [`Flight`] in progress for it, plus a
//! generation counter. The table is a bounded [`ShardedCache`], so keys are found through
//! a [`KeyQuery`] and a comparison that may run user code is made outside the shard lock,
//! as in the cache. [`SingleFlight::join`] either finds the key's flight (the caller
//! *follows* it) or registers a new one and hands the caller its [`Leader`], a guard. The
//! leader computes with no lock held and ends the flight with [`Leader::finish`]; a
//! leader dropped without finishing (an error it keeps to itself, an unwind) *abandons*
//! it, and followers then start over: they look for the result again and join again, and
//! one of them leads a new flight.
//!
//! What a flight shares is the caller's type `T`: a binding that shares errors too uses a
//! `Result` (ferrule's Python cache shares a value or the exception its factory raised).
//!
//! # Invariants
//! - One flight per key in the table: `join` registers a flight only where the key has
//!   none, in one critical section of the key's shard.
//! - A flight ends exactly once: [`Leader::finish`] consumes the guard and the guard's
//!   `Drop` abandons a flight that was not finished. Its [`Outcome`] never changes after.
//! - A flight leaves the table *before* its outcome is set. A follower that sees the
//!   outcome and joins again therefore never finds the flight it just followed (it finds a
//!   newer one, or leads); and a caller of the cache that stores the leader's result
//!   before finishing finds that result, not the flight, once the flight is gone.
//! - The table's bound (one entry per leader, each a blocked or computing caller) is a
//!   backstop: a flight pushed out by it still ends normally for its followers; the
//!   leader's removal is by identity ([`Arc::ptr_eq`]), so it never removes a newer
//!   flight for the same key.
//! - Nothing is dropped under a lock: the removed table entry (a key may run user code
//!   when dropped) after the shard lock, the wakers after the flight's lock; wakers are
//!   woken with no lock held. The outcome is dropped with the last `Arc` of its flight.
//!
//! # Generations (`clear`)
//! [`SingleFlight::clear`] starts a new generation: every flight in progress leaves the
//! table (it still ends for its followers, but nobody joins it any more) and its leader's
//! [`Leader::is_current`] turns false. A cache uses that to refuse a result computed by a
//! flight that began before its `clear()`: it clears the flights first, then its entries,
//! and a leader checks `is_current` *under the lock of the shard it stores into*. Then
//! either the store's critical section comes first, and the entries' clear, which comes
//! later on that shard, removes the value; or the clear's critical section on that shard
//! comes first, and since the generation was bumped before it, the lock hand-over makes
//! the bump visible to the check, which refuses. The generation a flight belongs to is
//! read under the flights' shard lock when the flight is registered, so a flight
//! registered after `clear` swept that shard belongs to the new generation.
//!
//! # Waiting: blocking, or woken by a callback
//! A flight's outcome sits in a slot under one mutex, with a condvar and a list of
//! [`Waker`]s beside it. A blocking follower calls [`Flight::wait_for`] in slices (so it
//! can check for signals in between), then reads the slot with [`Flight::read`]. A
//! follower that must not block registers a waker instead ([`Flight::register`]); the
//! thread that ends the flight wakes it once, after the outcome is set and with no lock
//! held. An async single-flight is built from these parts without blocking anything: its
//! future's `poll` reads the slot, and when the flight is still running registers
//! `cx.waker()` and returns `Pending` (`register` answers false if the flight ended
//! between the read and the registration; the future reads again then). A binding for an
//! event loop supplies a waker whose `wake` schedules the waiting task on its own loop
//! (asyncio's `call_soon_threadsafe`). A follower that gives up before the flight ends
//! takes its waker back ([`Flight::unregister`]), so the wakers of a long flight are only
//! those of callers still waiting. [`Flight::led_by_current_thread`], the blocking
//! form's guard against a leader waiting for its own flight, does not apply there: an
//! async leader is a task, and its followers may share its thread. Such a leader also
//! outlives any borrow of the table, so that binding keeps the table in an `Arc` and
//! joins through [`SingleFlight::join_shared`], whose [`Leader`] holds that `Arc` in place
//! of a reference; ending and abandoning stay the same. The flight remembers how it was
//! joined ([`Flight::led_asynchronously`]): a *blocking* wait on the thread of an async
//! leader would stop the very thread (its event loop) the leader needs to finish, so the
//! binding refuses it too, with its own message.
//!
//! # Orderings
//! Nothing here is lock-free: the slot, the condvar and the wakers sit under one mutex,
//! and the table under its shard locks, so there is no loom model. The generation counter
//! is an atomic whose argument above rests on those locks' happens-before edges; its
//! Release increment and Acquire loads add nothing the locks do not already give.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::thread::ThreadId;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::cache::{AllocError, CacheError, Grave, KeyQuery, ShardedCache, NEVER};

/// How a flight ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The leader finished with this result; every follower shares it.
    Finished(T),
    /// The leader left without a result to share: followers start over.
    Abandoned,
}

/// The outcome slot and, while it is empty, the wakers to wake when it is filled.
struct Slot<T> {
    outcome: Option<Outcome<T>>,
    wakers: Vec<Waker>,
}

/// One computation in progress for a key, which followers wait on.
pub struct Flight<T> {
    leader: ThreadId,
    /// Joined through [`SingleFlight::join_shared`] (an async leader).
    asynchronous: bool,
    slot: Mutex<Slot<T>>,
    ended: Condvar,
}

impl<T> Flight<T> {
    fn new(asynchronous: bool) -> Self {
        Self {
            leader: std::thread::current().id(),
            asynchronous,
            slot: Mutex::new(Slot {
                outcome: None,
                wakers: Vec::new(),
            }),
            ended: Condvar::new(),
        }
    }

    /// True when the calling thread registered this flight: a blocking wait for it here
    /// would never end (the leader's computation asked for its own key).
    pub fn led_by_current_thread(&self) -> bool {
        self.leader == std::thread::current().id()
    }

    /// True when the leader joined through [`SingleFlight::join_shared`]: an async
    /// leader, whose computation needs the thread it joined on to keep running.
    pub fn led_asynchronously(&self) -> bool {
        self.asynchronous
    }

    pub fn is_ended(&self) -> bool {
        self.slot.lock().outcome.is_some()
    }

    /// `f` of the outcome once the flight has ended, `None` while it runs. `f` runs under
    /// the flight's lock: it should only copy out (take new references), never block or
    /// run user code.
    pub fn read<R>(&self, f: impl FnOnce(&Outcome<T>) -> R) -> Option<R> {
        self.slot.lock().outcome.as_ref().map(f)
    }

    /// Blocks until the flight ends or `timeout` passes (a spurious wake-up may end it
    /// earlier); true once the flight has ended. A caller that must stay responsive waits
    /// in slices and does its checks in between.
    pub fn wait_for(&self, timeout: Duration) -> bool {
        let mut g = self.slot.lock();
        if g.outcome.is_none() {
            self.ended.wait_for(&mut g, timeout);
        }
        g.outcome.is_some()
    }

    /// Blocks until the flight ends.
    pub fn wait(&self) {
        let mut g = self.slot.lock();
        while g.outcome.is_none() {
            self.ended.wait(&mut g);
        }
    }

    /// Has `waker` woken once when the flight ends, by the thread that ends it, with no
    /// lock held. False if the flight has already ended (nothing is registered: read the
    /// outcome now). A waker that would wake the same task as one already registered
    /// replaces it, so a future polled again does not pile up wakers. Without memory for
    /// one more waker, nothing changes and the error says so.
    pub fn register(&self, waker: &Waker) -> Result<bool, AllocError> {
        let mut g = self.slot.lock();
        if g.outcome.is_some() {
            return Ok(false);
        }
        let old = match g.wakers.iter_mut().find(|w| w.will_wake(waker)) {
            Some(w) => Some(std::mem::replace(w, waker.clone())),
            None => {
                g.wakers.try_reserve(1)?;
                g.wakers.push(waker.clone());
                None
            }
        };
        drop(g);
        drop(old);
        Ok(true)
    }

    /// Takes back a waker registered with [`register`](Self::register) (one that would
    /// wake the same task), for a follower that stops waiting; true if one was there.
    /// Nothing to take back once the flight has ended: its wakers were woken then.
    pub fn unregister(&self, waker: &Waker) -> bool {
        let removed = {
            let mut g = self.slot.lock();
            let at = g.wakers.iter().position(|w| w.will_wake(waker));
            at.map(|i| g.wakers.swap_remove(i))
        };
        // After the lock: dropping a waker may run anything.
        removed.is_some()
    }

    fn end(&self, outcome: Outcome<T>) {
        // Filled once (a leader ends its flight once), so nothing is replaced.
        let wakers = {
            let mut g = self.slot.lock();
            g.outcome = Some(outcome);
            std::mem::take(&mut g.wakers)
        };
        self.ended.notify_all();
        // After the lock: a waker's `wake` may run anything, this flight's methods too.
        if !wakers.is_empty() {
            wakers.into_iter().for_each(Waker::wake);
        }
    }
}

/// The table of flights in progress (see the module documentation).
pub struct SingleFlight<K, T> {
    table: ShardedCache<K, Arc<Flight<T>>>,
    generation: AtomicU64,
}

/// What [`SingleFlight::join`] found.
pub enum Join<'a, K, T> {
    /// No flight for the key: the caller leads this new one.
    Lead(Leader<'a, K, T>),
    /// A flight is in progress: the caller follows it.
    Follow(Arc<Flight<T>>),
}

impl<K, T> SingleFlight<K, T> {
    /// A table of `shards` shards of at most `per_shard` flights each.
    pub fn new(shards: usize, per_shard: usize) -> Result<Self, CacheError> {
        let max_size = shards
            .checked_mul(per_shard)
            .ok_or(CacheError::MaxSizeTooLarge)?;
        Ok(Self {
            table: ShardedCache::new(max_size, Some(shards), 1)?,
            generation: AtomicU64::new(0),
        })
    }

    /// Follows the key's flight, or registers a new one (its key made by `key`) and leads
    /// it. The only error is `q`'s: a comparison that failed, or no memory to register.
    pub fn join<Q>(
        &self,
        hash: u64,
        q: &Q,
        key: impl FnOnce() -> K,
    ) -> Result<Join<'_, K, T>, Q::Error>
    where
        Q: KeyQuery<K, Arc<Flight<T>>>,
    {
        self.join_with(hash, q, key, false, || Table::Borrowed(self))
    }

    /// [`join`](Self::join) for an async leader: its [`Leader`] holds the table by `Arc`,
    /// so it may outlive this call (a task that computes across awaits), and its flight is
    /// [`led_asynchronously`](Flight::led_asynchronously).
    pub fn join_shared<Q>(
        self: &Arc<Self>,
        hash: u64,
        q: &Q,
        key: impl FnOnce() -> K,
    ) -> Result<Join<'static, K, T>, Q::Error>
    where
        Q: KeyQuery<K, Arc<Flight<T>>>,
    {
        self.join_with(hash, q, key, true, || Table::Shared(Arc::clone(self)))
    }

    fn join_with<'a, Q>(
        &self,
        hash: u64,
        q: &Q,
        key: impl FnOnce() -> K,
        asynchronous: bool,
        table: impl FnOnce() -> Table<'a, K, T>,
    ) -> Result<Join<'a, K, T>, Q::Error>
    where
        Q: KeyQuery<K, Arc<Flight<T>>>,
    {
        // Filled under the lock, dropped after it: a flight pushed out by the bound, or
        // the entry that could not be stored.
        let mut grave = Grave::new();
        let mut unstored = None;
        let joined = self.table.with_key(hash, q, |s, h| {
            if let Some(f) = h.and_then(|h| s.value(h)) {
                return Some(Join::Follow(Arc::clone(f)));
            }
            let flight = Arc::new(Flight::new(asynchronous));
            // Under the shard lock: see "Generations" in the module documentation.
            let generation = self.generation.load(Ordering::Acquire);
            match s.insert(hash, key(), Arc::clone(&flight), NEVER, 0, &mut grave) {
                Ok(_) => Some(Join::Lead(Leader {
                    flights: table(),
                    hash,
                    flight,
                    generation,
                    ended: false,
                })),
                Err(entry) => {
                    unstored = Some(entry);
                    None
                }
            }
        })?;
        drop(grave);
        drop(unstored);
        joined.ok_or_else(|| AllocError.into())
    }

    /// Starts a new generation: every flight in progress leaves the table (its followers
    /// still get its outcome) and its leader is no longer current. Allocates nothing.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::Release);
        self.table.clear();
    }

    /// Calls `f` on the key of every flight in a shard whose lock is free right now (for a
    /// garbage collector's traversal, which must not block).
    pub fn try_for_each_key<E>(&self, mut f: impl FnMut(&K) -> Result<(), E>) -> Result<(), E> {
        self.table.try_for_each(|k, _| f(k))
    }

    /// Flights in the table (for tests and diagnostics; waits for each shard's lock).
    pub fn len(&self) -> usize {
        let mut grave = Grave::new();
        // Flights never expire, so nothing is reclaimed and nothing can fail to allocate.
        self.table.len(0, &mut grave).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a [`Leader`] holds the table it removes its flight from.
enum Table<'a, K, T> {
    /// A blocking leader, done before the call that joined returns.
    Borrowed(&'a SingleFlight<K, T>),
    /// An async leader ([`SingleFlight::join_shared`]), which may outlive that call.
    Shared(Arc<SingleFlight<K, T>>),
}

impl<K, T> std::ops::Deref for Table<'_, K, T> {
    type Target = SingleFlight<K, T>;

    fn deref(&self) -> &SingleFlight<K, T> {
        match self {
            Table::Borrowed(t) => t,
            Table::Shared(t) => t,
        }
    }
}

/// The leader's hold on its flight: ends it exactly once, with [`finish`](Self::finish)
/// or, when dropped unfinished, as abandoned.
pub struct Leader<'a, K, T> {
    flights: Table<'a, K, T>,
    hash: u64,
    flight: Arc<Flight<T>>,
    generation: u64,
    ended: bool,
}

impl<K, T> Leader<'_, K, T> {
    /// The flight this leader ends.
    pub fn flight(&self) -> &Arc<Flight<T>> {
        &self.flight
    }

    /// False once `clear` has run since the flight was registered. Exact only when read
    /// under the lock of the store the result goes to (see the module documentation).
    pub fn is_current(&self) -> bool {
        self.flights.generation.load(Ordering::Acquire) == self.generation
    }

    /// Ends the flight with `result` for every follower.
    pub fn finish(mut self, result: T) {
        self.end(Outcome::Finished(result));
    }

    fn end(&mut self, outcome: Outcome<T>) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let flight = &self.flight;
        let removed = self.flights.table.with_shard(self.hash, |s| {
            s.handle_where(self.hash, |f| Arc::ptr_eq(f, flight))
                .and_then(|h| s.remove(h))
        });
        drop(removed);
        flight.end(outcome);
    }
}

impl<K, T> Drop for Leader<'_, K, T> {
    fn drop(&mut self) {
        self.end(Outcome::Abandoned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::cache::{mix, Match};
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Barrier, Condvar as StdCondvar, Mutex as StdMutex};
    use std::task::Wake;

    type Shared = Result<u64, String>;
    type Table = SingleFlight<String, Shared>;

    fn h(s: &str) -> u64 {
        let mut d = DefaultHasher::new();
        s.hash(&mut d);
        mix(d.finish())
    }

    #[derive(Debug, PartialEq)]
    struct Oom;
    impl From<AllocError> for Oom {
        fn from(_: AllocError) -> Self {
            Oom
        }
    }

    /// String keys; `slow` sends every comparison down the path that runs outside the
    /// shard lock.
    struct Q<'a> {
        key: &'a str,
        slow: bool,
    }
    impl KeyQuery<String, Arc<Flight<Shared>>> for Q<'_> {
        type Error = Oom;
        fn quick_eq(&self, stored: &String) -> Match {
            if self.slow {
                Match::Unknown
            } else if stored == self.key {
                Match::Equal
            } else {
                Match::NotEqual
            }
        }
        fn slow_eq(&self, stored: &String) -> Result<bool, Oom> {
            Ok(stored == self.key)
        }
        fn same_key(&self, a: &String, b: &String) -> bool {
            a == b // plain values: equal ones are interchangeable
        }
        fn clone_key(&self, k: &String) -> String {
            k.clone()
        }
        fn clone_value(&self, v: &Arc<Flight<Shared>>) -> Arc<Flight<Shared>> {
            Arc::clone(v)
        }
    }

    fn join<'a>(t: &'a Table, key: &str) -> Join<'a, String, Shared> {
        let q = Q { key, slow: false };
        t.join(h(key), &q, || key.to_owned()).unwrap()
    }

    fn lead<'a>(t: &'a Table, key: &str) -> Leader<'a, String, Shared> {
        match join(t, key) {
            Join::Lead(l) => l,
            Join::Follow(_) => panic!("{key}: expected to lead"),
        }
    }

    fn follow(t: &Table, key: &str) -> Arc<Flight<Shared>> {
        match join(t, key) {
            Join::Follow(f) => f,
            Join::Lead(_) => panic!("{key}: expected to follow"),
        }
    }

    fn table() -> Table {
        SingleFlight::new(4, 16).unwrap()
    }

    #[test]
    fn one_leader_per_key_and_every_follower_shares_its_result() {
        let t = table();
        let threads = 8;
        let barrier = Barrier::new(threads);
        let leaders = AtomicUsize::new(0);
        let followers = AtomicUsize::new(0);
        let results: Vec<Outcome<Shared>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        match join(&t, "k") {
                            Join::Lead(l) => {
                                leaders.fetch_add(1, Ordering::Relaxed);
                                // While the flight is in the table nobody else can lead:
                                // every other caller ends up following it.
                                while followers.load(Ordering::Relaxed) < threads - 1 {
                                    std::thread::yield_now();
                                }
                                l.finish(Ok(7));
                                Outcome::Finished(Ok(7))
                            }
                            Join::Follow(f) => {
                                followers.fetch_add(1, Ordering::Relaxed);
                                f.wait();
                                f.read(Clone::clone).unwrap()
                            }
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(leaders.load(Ordering::Relaxed), 1);
        assert!(results.iter().all(|r| *r == Outcome::Finished(Ok(7))));
        assert!(t.is_empty());
    }

    #[test]
    fn keys_fly_independently_and_slow_comparisons_find_the_flight() {
        let t = table();
        let a = lead(&t, "a");
        let b = lead(&t, "b");
        assert_eq!(t.len(), 2);
        let q = Q {
            key: "a",
            slow: true,
        };
        let Ok(Join::Follow(f)) = t.join(h("a"), &q, || "a".to_owned()) else {
            panic!("the slow path must find a's flight");
        };
        assert!(Arc::ptr_eq(&f, a.flight()));
        b.finish(Err("down".into()));
        assert!(!f.is_ended());
        a.finish(Ok(1));
        assert_eq!(f.read(Clone::clone), Some(Outcome::Finished(Ok(1))));
        assert!(t.is_empty());
    }

    #[test]
    fn an_error_result_reaches_followers_like_a_value() {
        let t = table();
        let l = lead(&t, "k");
        let f = follow(&t, "k");
        l.finish(Err("down".into()));
        assert_eq!(
            f.read(Clone::clone),
            Some(Outcome::Finished(Err("down".into())))
        );
    }

    #[test]
    fn the_flight_leaves_the_table_before_it_ends() {
        let t = table();
        let l = lead(&t, "k");
        let f = follow(&t, "k");
        let rejoined = std::thread::scope(|s| {
            let r = s.spawn(|| {
                f.wait();
                // Woken: the flight must be gone, so this caller leads a new one.
                matches!(join(&t, "k"), Join::Lead(_))
            });
            std::thread::sleep(Duration::from_millis(10));
            drop(l);
            r.join().unwrap()
        });
        assert!(rejoined);
        assert_eq!(f.read(Clone::clone), Some(Outcome::Abandoned));
    }

    #[test]
    fn a_dropped_or_unwinding_leader_abandons_and_a_follower_leads_next() {
        let t = table();
        let l = lead(&t, "k");
        let f = follow(&t, "k");
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = l;
            panic!("the computation failed");
        }));
        assert!(unwound.is_err());
        assert_eq!(f.read(Clone::clone), Some(Outcome::Abandoned));
        let next = lead(&t, "k");
        let f2 = follow(&t, "k");
        assert!(!Arc::ptr_eq(&f, &f2));
        next.finish(Ok(2));
        assert_eq!(f2.read(Clone::clone), Some(Outcome::Finished(Ok(2))));
    }

    #[test]
    fn clear_forgets_flights_in_progress_and_their_leaders_are_not_current() {
        let t = table();
        let old = lead(&t, "k");
        let old_follower = follow(&t, "k");
        assert!(old.is_current());
        t.clear();
        assert!(!old.is_current());
        // A caller after the clear does not join the old flight.
        let new = lead(&t, "k");
        assert!(new.is_current());
        // The old leader's end removes its own flight only, not the new one.
        old.finish(Ok(1));
        assert_eq!(
            old_follower.read(Clone::clone),
            Some(Outcome::Finished(Ok(1)))
        );
        let new_follower = follow(&t, "k");
        assert!(Arc::ptr_eq(&new_follower, new.flight()));
        new.finish(Ok(2));
        assert!(t.is_empty());
    }

    #[test]
    fn wait_for_times_out_while_the_flight_runs() {
        let t = table();
        let l = lead(&t, "k");
        let f = follow(&t, "k");
        assert!(!f.wait_for(Duration::from_millis(5)));
        assert!(f.read(|_| ()).is_none());
        l.finish(Ok(3));
        assert!(f.wait_for(Duration::from_millis(5)));
    }

    #[test]
    fn a_leader_knows_its_own_flight_from_another_thread() {
        let t = table();
        let l = lead(&t, "k");
        let f = follow(&t, "k");
        assert!(f.led_by_current_thread());
        let elsewhere = std::thread::scope(|s| s.spawn(|| f.led_by_current_thread()).join());
        assert!(!elsewhere.unwrap());
        l.finish(Ok(0));
    }

    /// A waker that counts its wake-ups and lets a thread block until the first.
    #[derive(Default)]
    struct Flag {
        woken: StdMutex<usize>,
        cv: StdCondvar,
    }
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            *self.woken.lock().unwrap() += 1;
            self.cv.notify_all();
        }
    }

    #[test]
    fn a_registered_waker_is_woken_once_when_the_flight_ends() {
        let t = table();
        let l = lead(&t, "k");
        let f = follow(&t, "k");
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(Arc::clone(&flag));
        assert_eq!(f.register(&waker), Ok(true));
        assert_eq!(f.register(&waker), Ok(true)); // the same task again: replaces it
        let other = Arc::new(Flag::default());
        assert_eq!(f.register(&Waker::from(Arc::clone(&other))), Ok(true));
        std::thread::scope(|s| {
            s.spawn(|| l.finish(Ok(5)));
            let mut woken = flag.woken.lock().unwrap();
            while *woken == 0 {
                woken = flag.cv.wait(woken).unwrap();
            }
        });
        assert_eq!(*flag.woken.lock().unwrap(), 1);
        assert_eq!(*other.woken.lock().unwrap(), 1);
        assert_eq!(f.read(Clone::clone), Some(Outcome::Finished(Ok(5))));
        // Ended: nothing is registered, the caller reads the outcome instead.
        assert_eq!(f.register(&waker), Ok(false));
        assert_eq!(*flag.woken.lock().unwrap(), 1);
    }

    #[test]
    fn a_waker_may_use_the_flight_it_is_woken_by() {
        struct Reader(Arc<Flight<Shared>>, AtomicUsize);
        impl Wake for Reader {
            fn wake(self: Arc<Self>) {
                // Deadlocks if wakers run under the flight's lock.
                if self.0.read(|_| ()).is_some() {
                    self.1.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let t = table();
        let l = lead(&t, "k");
        let reader = Arc::new(Reader(Arc::clone(l.flight()), AtomicUsize::new(0)));
        assert_eq!(
            l.flight().register(&Waker::from(Arc::clone(&reader))),
            Ok(true)
        );
        l.finish(Ok(1));
        assert_eq!(reader.1.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_shared_leader_outlives_the_borrow_and_ends_its_flight_elsewhere() {
        let t = Arc::new(table());
        let q = Q {
            key: "k",
            slow: false,
        };
        let Ok(Join::Lead(l)) = t.join_shared(h("k"), &q, || "k".to_owned()) else {
            panic!("expected to lead");
        };
        assert!(l.flight().led_asynchronously());
        let f = follow(&t, "k");
        assert!(Arc::ptr_eq(&f, l.flight()));
        // 'static: the leader moves to another thread, away from any borrow of `t`.
        std::thread::spawn(move || l.finish(Ok(9))).join().unwrap();
        assert_eq!(f.read(Clone::clone), Some(Outcome::Finished(Ok(9))));
        assert!(t.is_empty());
        // A blocking leader's flight is not asynchronous.
        let b = lead(&t, "b");
        assert!(!b.flight().led_asynchronously());
    }

    #[test]
    fn a_dropped_shared_leader_abandons_and_clear_makes_it_stale() {
        let t = Arc::new(table());
        let q = Q {
            key: "k",
            slow: false,
        };
        let Ok(Join::Lead(l)) = t.join_shared(h("k"), &q, || "k".to_owned()) else {
            panic!("expected to lead");
        };
        let f = follow(&t, "k");
        t.clear();
        assert!(!l.is_current());
        drop(l);
        assert_eq!(f.read(Clone::clone), Some(Outcome::Abandoned));
        assert!(t.is_empty());
        // The leader held the table: only `t` is left now.
        assert_eq!(Arc::strong_count(&t), 1);
    }

    #[test]
    fn an_unregistered_waker_is_not_woken() {
        let t = table();
        let l = lead(&t, "k");
        let f = follow(&t, "k");
        let gone = Arc::new(Flag::default());
        let gone_waker = Waker::from(Arc::clone(&gone));
        let stays = Arc::new(Flag::default());
        assert_eq!(f.register(&gone_waker), Ok(true));
        assert_eq!(f.register(&Waker::from(Arc::clone(&stays))), Ok(true));
        assert!(f.unregister(&gone_waker));
        assert!(!f.unregister(&gone_waker));
        // Only the waker still registered holds its flag, besides the test.
        assert_eq!(Arc::strong_count(&gone), 2); // `gone` and `gone_waker`
        l.finish(Ok(1));
        assert_eq!(*gone.woken.lock().unwrap(), 0);
        assert_eq!(*stays.woken.lock().unwrap(), 1);
        assert!(!f.unregister(&gone_waker));
    }

    #[test]
    fn the_table_bound_is_a_backstop_not_an_error() {
        let t: Table = SingleFlight::new(1, 2).unwrap();
        let a = lead(&t, "a");
        let b = lead(&t, "b");
        // A third flight pushes out the least recent; that flight still ends normally.
        let c = lead(&t, "c");
        assert_eq!(t.len(), 2);
        let fa = Arc::clone(a.flight());
        a.finish(Ok(1));
        assert_eq!(fa.read(Clone::clone), Some(Outcome::Finished(Ok(1))));
        b.finish(Ok(2));
        c.finish(Ok(3));
        assert!(t.is_empty());
        assert!(SingleFlight::<String, Shared>::new(usize::MAX, 2).is_err());
    }
}
