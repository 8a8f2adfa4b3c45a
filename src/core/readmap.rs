//! Data read on every operation by many threads at once: a sharded hash map
//! ([`ReadMap`]) and a lock ([`ReadMostly`]) whose reads write no cache line that another
//! thread's reads write.
//!
//! `DashMap` guards each shard with one reader-writer lock: a read increments the lock's
//! reader count, so two threads reading different keys of one shard (or of any shard, in
//! turn) pass that count's cache line between their cores on nearly every read. Here each
//! shard is a [`ShardedLock`] (crossbeam): a reader locks only the stripe of its own
//! thread (threads get distinct stripes while there are at most eight), a writer locks
//! every stripe. Reads by different threads then share only read-only lines; a write
//! costs eight lock acquisitions instead of one, which suits maps that are read far more
//! than they are written (the rate limiter's keys: inserted once, read on every decision).
//!
//! The API is what the rate limiter needs: a read under the shard's read lock
//! ([`ReadMap::read`]), a closure over the shard's table under its write lock
//! ([`ReadMap::write`]), and whole-map `len`, `clear` and `shrink_to_fit`. A lock is held
//! only for the closure's duration; closures must not call back into the map (the write
//! lock is not reentrant) and run no user code here. Locks are never poisoned in
//! practice (nothing here panics while holding one); a poisoned lock is used anyway.
//!
//! # Serialized maps
//! Under a global lock that every user of the map holds (the GIL of a Python build that
//! has one), a read needs no lock of its own: no write can run beside it. A map made
//! serialized ([`ReadMap::serialize`]) reads without its read lock (two atomic
//! read-modify-writes and a thread-local lookup fewer per read) while no writer has
//! announced that it works without the global lock ([`ReadMap::announce_detached`]).
//! Writes always take the write lock, so an announced writer excludes the readers, which
//! see its announcement and take their read locks, and every other writer. An
//! announcement is made while holding the global lock, so a reader that holds it either
//! sees the announcement or runs before the announcing writer can take any lock.

use std::borrow::Borrow;
use std::cell::UnsafeCell;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, TryLockError};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use crossbeam_utils::CachePadded;
use hashbrown::{Equivalent, HashMap};

/// A reader-writer lock whose readers lock only their own thread's stripe (crossbeam's
/// [`ShardedLock`]), for data read on every operation and written rarely (the signal
/// bus's routing trie). Poisoning is ignored: nothing here panics while holding it.
pub struct ReadMostly<T>(ShardedLock<T>);

impl<T> ReadMostly<T> {
    pub fn new(value: T) -> Self {
        Self(ShardedLock::new(value))
    }

    #[inline]
    pub fn read(&self) -> ShardedLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> ShardedLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The read lock if it can be had without waiting.
    pub fn try_read(&self) -> Option<ShardedLockReadGuard<'_, T>> {
        match self.0.try_read() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

/// Most shards a map has: writes to different shards proceed in parallel, and each shard
/// costs about a kilobyte (eight padded lock stripes).
const MAX_SHARDS: usize = 64;

/// One shard of a [`ReadMap`]: its table, and the lock that guards it (held apart from
/// the table so that a serialized map can read the table without it).
struct Shard<T> {
    lock: ShardedLock<()>,
    table: UnsafeCell<T>,
}

// SAFETY: the table is reached only through `read` and `write`, under the lock (or, for a
// serialized map's reads, under the global lock of `ReadMap::serialize`'s contract).
unsafe impl<T: Send + Sync> Sync for Shard<T> {}

impl<T> Shard<T> {
    fn new(table: T) -> Self {
        Self {
            lock: ShardedLock::new(()),
            table: UnsafeCell::new(table),
        }
    }

    /// `f` of the table under the read lock, or without it if `unlocked` (which the
    /// caller may say only as `ReadMap::read` does).
    #[inline]
    fn read<R>(&self, unlocked: bool, f: impl FnOnce(&T) -> R) -> R {
        if unlocked {
            // SAFETY: no writer can run (see `ReadMap::unlocked_reads`).
            return f(unsafe { &*self.table.get() });
        }
        let _guard = self.lock.read().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the read lock excludes every writer.
        f(unsafe { &*self.table.get() })
    }

    /// `f` of the table under the write lock.
    #[inline]
    fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let _guard = self.lock.write().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the write lock excludes every other reader and writer that takes a
        // lock, and a serialized map's unlocked readers too (see `ReadMap::serialize`).
        f(unsafe { &mut *self.table.get() })
    }
}

pub struct ReadMap<K, V, S> {
    shards: Box<[CachePadded<Shard<HashMap<K, V, S>>>]>,
    hasher: S,
    /// Right shift that turns a hash into a shard index (`64 - log2(shards)`).
    shift: u32,
    /// Reads take no lock while no writer is announced (see "Serialized maps").
    serialized: bool,
    /// Writers working without the global lock now ([`ReadMap::announce_detached`]).
    detached: AtomicUsize,
}

/// A writer's announcement that it works without the global lock of a serialized map;
/// withdrawn when dropped.
pub struct Announced<'a>(&'a AtomicUsize);

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        // Release: a reader that then sees no writer sees this one's writes.
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl<K: Eq + Hash, V, S: BuildHasher + Clone> ReadMap<K, V, S> {
    /// A map of four shards per CPU (a power of two, at most [`MAX_SHARDS`]), as
    /// `DashMap` sizes itself.
    pub fn with_hasher(hasher: S) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self::with_shards(hasher, (cpus * 4).next_power_of_two().min(MAX_SHARDS))
    }

    /// A map of `n` shards (rounded up to a power of two, at least 1).
    pub fn with_shards(hasher: S, n: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        Self {
            shards: (0..n)
                .map(|_| CachePadded::new(Shard::new(HashMap::with_hasher(hasher.clone()))))
                .collect(),
            hasher,
            shift: 64 - n.trailing_zeros(),
            serialized: false,
            detached: AtomicUsize::new(0),
        }
    }

    /// Makes the map serialized (see "Serialized maps" in the module docs): from now on
    /// a read takes no lock while no writer is announced.
    ///
    /// # Safety
    /// From now on every call on the map must be made by a thread that holds one and
    /// the same global lock for the call's whole life (closures included), except the
    /// calls of a writer that announced itself ([`announce_detached`](Self::announce_detached))
    /// while holding that lock, and made them while its announcement stands.
    pub unsafe fn serialize(&mut self) {
        self.serialized = true;
    }

    /// Announces a writer that will call the map without the global lock of
    /// [`serialize`](Self::serialize) (call it while holding that lock): until the
    /// returned announcement is dropped, every read takes its read lock. Harmless on a
    /// map that is not serialized.
    pub fn announce_detached(&self) -> Announced<'_> {
        self.detached.fetch_add(1, Ordering::SeqCst);
        Announced(&self.detached)
    }

    /// True if a read may skip its lock now: the map is serialized and no writer is
    /// announced. (A writer announces itself holding the global lock the caller holds,
    /// so none can appear before the caller's read ends.)
    #[inline]
    fn unlocked_reads(&self) -> bool {
        self.serialized && self.detached.load(Ordering::Acquire) == 0
    }

    #[inline]
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Shard<HashMap<K, V, S>> {
        // The bits below the top seven: hashbrown files entries by the top seven (its
        // control bytes) and the lowest ones (the bucket), so the shard index stays
        // independent of both (as in DashMap).
        let hash = self.hasher.hash_one(key);
        let i = if self.shift == 64 {
            0
        } else {
            ((hash << 7) >> self.shift) as usize
        };
        &self.shards[i]
    }

    /// `f` of `key`'s value under its shard's read lock; `None` if absent.
    #[inline]
    pub fn read<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.shard(key)
            .read(self.unlocked_reads(), |table| table.get(key).map(f))
    }

    /// `f` of the table of `key`'s shard and `key` itself (to insert it, say), under the
    /// shard's write lock.
    pub fn write_owned<R>(&self, key: K, f: impl FnOnce(&mut HashMap<K, V, S>, K) -> R) -> R {
        self.shard(&key).write(|table| f(table, key))
    }

    /// `f` of the table of `key`'s shard under its write lock.
    pub fn write<Q, R>(&self, key: &Q, f: impl FnOnce(&mut HashMap<K, V, S>) -> R) -> R
    where
        Q: Hash + ?Sized,
    {
        self.shard(key).write(f)
    }

    /// Removes `key` if `pred` of its entry says so, under the write lock; the entry.
    pub fn remove_if<Q>(&self, key: &Q, pred: impl FnOnce(&K, &V) -> bool) -> Option<(K, V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.write(key, |table| {
            let (k, v) = table.get_key_value(key)?;
            if pred(k, v) {
                table.remove_entry(key)
            } else {
                None
            }
        })
    }

    /// Entries now, summed shard by shard (each under its read lock).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read(false, HashMap::len))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.read(false, HashMap::is_empty))
    }

    /// Entries the shards have room for without growing.
    pub fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read(false, HashMap::capacity))
            .sum()
    }

    /// Gives each shard's spare capacity back, one shard at a time.
    pub fn shrink_to_fit(&self) {
        for s in &*self.shards {
            s.write(HashMap::shrink_to_fit);
        }
    }

    /// Removes every entry, one shard at a time; the entries are dropped after each
    /// shard's lock is released.
    pub fn clear(&self) {
        for s in &*self.shards {
            let empty = HashMap::with_hasher(self.hasher.clone());
            let old = s.write(|table| std::mem::replace(table, empty));
            drop(old);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use hashbrown::hash_map::Entry;
    use std::hash::BuildHasherDefault;
    use std::sync::atomic::{AtomicU64, Ordering};

    type Map = ReadMap<u64, AtomicU64, hashbrown::DefaultHashBuilder>;

    fn map(shards: usize) -> Map {
        ReadMap::with_shards(hashbrown::DefaultHashBuilder::default(), shards)
    }

    #[test]
    fn reads_writes_and_removals() {
        for shards in [1, 2, 8, 64] {
            let m = map(shards);
            assert!(m.is_empty());
            for k in 0..1000u64 {
                m.write(&k, |t| t.insert(k, AtomicU64::new(k * 2)));
            }
            assert_eq!(m.len(), 1000);
            for k in 0..1000u64 {
                assert_eq!(m.read(&k, |v| v.load(Ordering::Relaxed)), Some(k * 2));
            }
            assert_eq!(m.read(&5000, |_| ()), None);
            assert!(m
                .remove_if(&3, |_, v| v.load(Ordering::Relaxed) == 7)
                .is_none());
            assert_eq!(m.remove_if(&3, |_, _| true).map(|(k, _)| k), Some(3));
            assert_eq!(m.read(&3, |_| ()), None);
            let was = m.write(&4, |t| match t.entry(4) {
                Entry::Occupied(e) => e.get().load(Ordering::Relaxed),
                Entry::Vacant(_) => unreachable!(),
            });
            assert_eq!(was, 8);
            m.shrink_to_fit();
            assert_eq!(m.len(), 999);
            m.clear();
            assert!(m.is_empty());
            assert_eq!(m.len(), 0);
        }
    }

    #[test]
    fn shard_index_is_always_in_range() {
        #[derive(Default, Clone)]
        struct Raw(u64);
        impl std::hash::Hasher for Raw {
            fn finish(&self) -> u64 {
                self.0
            }
            fn write(&mut self, _: &[u8]) {}
            fn write_u64(&mut self, n: u64) {
                self.0 = n;
            }
        }
        let m: ReadMap<u64, u64, BuildHasherDefault<Raw>> =
            ReadMap::with_shards(BuildHasherDefault::default(), 16);
        for k in [
            0,
            1,
            u64::MAX,
            1 << 63,
            1 << 57,
            (1 << 57) - 1,
            0x00ff_ffff_ffff_ffff,
        ] {
            m.write(&k, |t| t.insert(k, k));
            assert_eq!(m.read(&k, |v| *v), Some(k));
        }
        assert_eq!(m.len(), 7);
    }

    #[test]
    fn concurrent_readers_and_writers_lose_nothing() {
        let m = map(4);
        for k in 0..64u64 {
            m.write(&k, |t| t.insert(k, AtomicU64::new(0)));
        }
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let m = &m;
                s.spawn(move || {
                    for n in 0..20_000u64 {
                        let k = (n * 7 + t) % 64;
                        m.read(&k, |v| v.fetch_add(1, Ordering::Relaxed)).unwrap();
                        if n % 100 == 0 {
                            let extra = 1000 + t * 100_000 + n;
                            m.write(&extra, |tb| tb.insert(extra, AtomicU64::new(0)));
                            assert!(m.remove_if(&extra, |_, _| true).is_some());
                        }
                    }
                });
            }
        });
        let total: u64 = (0..64u64)
            .map(|k| m.read(&k, |v| v.load(Ordering::Relaxed)).unwrap())
            .sum();
        assert_eq!(total, 80_000);
        assert_eq!(m.len(), 64);
    }

    #[test]
    fn serialized_reads_skip_the_lock_until_a_detached_writer_is_announced() {
        // A mutex plays the global lock: readers and ordinary writers hold it for every
        // call; one writer announces itself holding it, then works without it.
        let mut m = map(4);
        // SAFETY: every call below holds `global`, except the announced writer's.
        unsafe { m.serialize() };
        let global = std::sync::Mutex::new(());
        for k in 0..64u64 {
            let _g = global.lock().unwrap();
            m.write(&k, |t| t.insert(k, AtomicU64::new(0)));
        }
        assert!(m.unlocked_reads());
        std::thread::scope(|s| {
            let (m, global) = (&m, &global);
            let announced = {
                let _g = global.lock().unwrap();
                m.announce_detached()
            };
            assert!(!m.unlocked_reads());
            s.spawn(move || {
                let _announced = announced;
                for n in 0..20_000u64 {
                    let extra = 1000 + n;
                    m.write(&extra, |tb| tb.insert(extra, AtomicU64::new(0)));
                    assert!(m.remove_if(&extra, |_, _| true).is_some());
                }
            });
            for _ in 0..2 {
                s.spawn(move || {
                    for n in 0..20_000u64 {
                        let _g = global.lock().unwrap();
                        m.read(&(n % 64), |v| v.fetch_add(1, Ordering::Relaxed))
                            .unwrap();
                    }
                });
            }
        });
        assert!(m.unlocked_reads());
        let total: u64 = (0..64u64)
            .map(|k| m.read(&k, |v| v.load(Ordering::Relaxed)).unwrap())
            .sum();
        assert_eq!((total, m.len()), (40_000, 64));
    }
}
