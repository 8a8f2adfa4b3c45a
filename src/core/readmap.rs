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

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::{PoisonError, TryLockError};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use crossbeam_utils::CachePadded;
use hashbrown::HashMap;

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

pub struct ReadMap<K, V, S> {
    shards: Box<[CachePadded<ReadMostly<HashMap<K, V, S>>>]>,
    hasher: S,
    /// Right shift that turns a hash into a shard index (`64 - log2(shards)`).
    shift: u32,
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
                .map(|_| CachePadded::new(ReadMostly::new(HashMap::with_hasher(hasher.clone()))))
                .collect(),
            hasher,
            shift: 64 - n.trailing_zeros(),
        }
    }

    #[inline]
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &ReadMostly<HashMap<K, V, S>> {
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
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let table = self.shard(key).read();
        table.get(key).map(f)
    }

    /// `f` of the table of `key`'s shard and `key` itself (to insert it, say), under the
    /// shard's write lock.
    pub fn write_owned<R>(&self, key: K, f: impl FnOnce(&mut HashMap<K, V, S>, K) -> R) -> R {
        let mut table = self.shard(&key).write();
        f(&mut table, key)
    }

    /// `f` of the table of `key`'s shard under its write lock.
    pub fn write<Q, R>(&self, key: &Q, f: impl FnOnce(&mut HashMap<K, V, S>) -> R) -> R
    where
        Q: Hash + ?Sized,
    {
        let mut table = self.shard(key).write();
        f(&mut table)
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
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.read().is_empty())
    }

    /// Entries the shards have room for without growing.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.read().capacity()).sum()
    }

    /// Gives each shard's spare capacity back, one shard at a time.
    pub fn shrink_to_fit(&self) {
        for s in &*self.shards {
            s.write().shrink_to_fit();
        }
    }

    /// Removes every entry, one shard at a time; the entries are dropped after each
    /// shard's lock is released.
    pub fn clear(&self) {
        for s in &*self.shards {
            let old = {
                let mut table = s.write();
                let empty = HashMap::with_hasher(self.hasher.clone());
                std::mem::replace(&mut *table, empty)
            };
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
}
