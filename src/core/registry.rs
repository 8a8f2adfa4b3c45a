//! The agent registry: a concurrent map from agent id to an immutable entry, with
//! secondary indexes (capability, node, health, and any declared on metadata paths),
//! leases and metadata queries.
//!
//! # Structure
//! - `entries`: id -> `Arc<Entry>` in sharded `RwLock<HashTable>`s (`Entries`, no
//!   global lock; its traversal can skip a locked shard instead of waiting, for the
//!   host's garbage collector). An entry is never changed in place: a write builds a
//!   new `Arc<Entry>` and swaps it in.
//! - Three indexes, each a `DashMap<value, HashMap<id, count>>` (capability is
//!   multi-valued). An empty set is removed, so index keys track live values only.
//! - Declared indexes (fixed at construction, none by default), one per metadata path,
//!   built the same way on encoded keys ([`push_key`]); see below.
//! - Lease deadlines: a few `Mutex<BinaryHeap>` shards (chosen by registration token),
//!   one item per leased registration, for amortised reclamation on writes.
//!
//! # Consistency without a global lock
//! The entry is the truth; the index is a hint. A query copies candidate ids out of the
//! smallest matching index set, releases it, then reads each candidate's entry and checks
//! every criterion against that entry. A result therefore never holds an agent that did
//! not match when it was read, whatever writers do meanwhile.
//!
//! Each write follows one order: add the new version's index rows, publish the entry
//! (insert, or compare-and-swap on `version`), then remove the rows of the version it
//! replaced. So a published entry always has its rows: a reader may see a row without a
//! matching entry (filtered out), never a matching entry without its row.
//!
//! Rows are counted, not flagged: every writer adds +1 for the rows of the version it
//! tries to publish and, if it fails (id taken, version moved), takes exactly those back;
//! the writer that replaced or removed a version (one winner per version, decided under
//! the entry's shard lock) takes that version's rows back. Concurrent writers of one id
//! therefore never delete each other's rows, and at rest each index holds exactly what
//! the entries say. Updates only touch rows that differ between the two versions.
//!
//! # Row versions
//! Each row of the built-in indexes (one value's ids in one part) carries a version, a
//! process-unique number replaced by every change to the row, and also by every writer
//! that makes an entry stop matching it, under the entry's write guard as it changes
//! the entry ([`Registry::touch_rows`]: unregister, owner cleanup, an update that drops
//! the value, a heartbeat that brings the deadline forward). So whoever sees the entry
//! changed (under a later guard) then sees the version moved: a touch made before the
//! change, outside the guard, would leave a window in which a query copied the touched
//! version, read the entry before it changed, and kept an answer that no later version
//! move would invalidate until the rows were removed. Expiry needs no touch: a reader
//! keeps the earliest deadline with the versions. So a query of one value that
//! found every candidate matching, with the versions the same after its reads as
//! before, read the row's exact content ([`Clean`]), and that answer holds while the
//! versions ([`Stamp`]) stay equal and the clock is before the deadline: every id in
//! it still matched when the versions were read. The host keeps such answers to skip
//! the per-candidate check ([`Registry::stamp`]). Declared rows have versions but no
//! touches, and no stamp is taken of them.
//!
//! # Declared indexes
//! An index declared on a metadata path files each entry under the keys of the value
//! there ([`entry_keys`]): a scalar's key, or each item's of a list or tuple, since `eq`
//! and `in` also match an item. Keys follow Python's `==` exactly for None, bool, int,
//! float and str ([`push_key`]: `1`, `1.0` and `True` are one key, NaN has none). An
//! entry whose value there is opaque (only the host can compare it) is filed under one
//! more key, the host's, which every indexed query also reads. An `eq` or `in`
//! condition whose values all have keys ([`cond_keys`]) can then only match entries
//! filed under those keys or the host's: the plan may start from them, and checks
//! every candidate against its entry as for any index. A value with no key and no
//! opaque part (a dict, a NaN) is filed nowhere, as it can equal no keyed value.
//!
//! The rows of a version are a function of its metadata tree, so the writes' protocol
//! above holds unchanged: they are added and removed at the same steps as the other
//! rows, and an update whose metadata is the same `Arc` touches none. Without declared
//! indexes every write and query skips this part after one length test.
//!
//! # Locks
//! No shard guard is held across another access to the same map (shard locks are not
//! reentrant). An entry's write guard is held across an index access only to touch
//! rows (a read guard of an index shard, version stores); index guards are never held
//! while an entry is read or written, so no thread waits for an entry guard while
//! holding an index guard, and the order is acyclic. Removed entries are handed back to the
//! caller and dropped after every guard is released, because dropping one may drop the
//! last reference to a Python object.
//!
//! # Comparisons
//! `where` conditions are decided here when Python's answer is certain from the
//! values alone (see [`Value`]), and left to the host (`Tri::Unknown`) otherwise:
//! an opaque value, a NaN where identity counts, or an undecided item that Python
//! would compare before a decisive one (it might raise first). Trees are at most as
//! deep as the host makes them (it leaves deeper values opaque), which bounds every
//! recursion over them.
//!
//! # What the host judges
//! Some answers only the host can give: a condition left `Unknown`, a filter written in
//! the host language, whether a thread that owns an entry is still running.
//! [`Registry::select`] passes on the matches it can decide (under the shard guard, so a
//! count copies nothing out) and returns the others, for the host to judge with no guard
//! held. Registrations whose liveness only the host can tell are queued and judged a few
//! per write ([`Registry::sweep_host`]).
//!
//! # Time
//! An entry registered at t with ttl d is live while `now < t + d`. Reads check it; the
//! lease heaps reclaim due entries a few per write ([`RECLAIM_BUDGET`]); a heartbeat
//! moves the deadline in the entry only, and a popped heap item whose entry was renewed
//! is pushed back at the new deadline (so each leased registration has one heap item).
//! Heap items of registrations removed by other means are counted as stale and purged
//! once they make up half a shard's heap.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use hashbrown::hash_table::{Entry as HashEntry, HashTable};
use hashbrown::{DefaultHashBuilder, HashMap};
use parking_lot::{Mutex, RwLock};

use crate::core::clock::Clock;

/// Deadline of an entry without a lease.
pub const NEVER: i64 = i64::MAX;
/// Due lease items reclaimed per write, at most.
pub const RECLAIM_BUDGET: usize = 4;
const LEASE_SHARDS: usize = 8;
/// A lease shard is purged of stale items once it has this many and they are half of it.
const STALE_MIN: usize = 64;

type Map<K, V> = DashMap<K, V, DefaultHashBuilder>;

// ---- metadata values and `where` conditions ----------------------------------------

/// A metadata value in a form that can be compared without calling back into the host
/// language. `Opaque` stands for anything else; a comparison that reaches it is
/// [`Tri::Unknown`] and is left to the caller.
///
/// Comparisons follow Python's rules exactly: bool, int and float compare by value
/// across types (`True == 1 == 1.0`), an int against a float is compared without
/// rounding, a NaN is unequal to everything and unordered. The one thing a tree cannot
/// know is object identity, which Python consults for container items and `in` (`x is y
/// or x == y`); it matters only for NaN, so a NaN met there is `Unknown`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// An int that fits in 64 bits (a larger one is `Opaque`).
    Int(i64),
    Float(f64),
    Str(Box<str>),
    /// A list (`tuple == false`) or a tuple.
    Seq(Box<[Value]>, bool),
    /// A mapping with string keys, sorted by key.
    Map(Box<[(Box<str>, Value)]>),
    Opaque,
}

impl Value {
    /// A mapping from its items in any order (a `Map` is kept sorted by key, which
    /// path lookups rely on).
    pub fn map(mut items: Vec<(Box<str>, Value)>) -> Self {
        items.sort_by(|a, b| a.0.cmp(&b.0));
        Self::Map(items.into())
    }
}

/// A three-valued answer: `Unknown` when only the host language can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    Yes,
    No,
    Unknown,
}

impl Tri {
    fn from_bool(b: bool) -> Self {
        if b {
            Self::Yes
        } else {
            Self::No
        }
    }

    fn not(self) -> Self {
        match self {
            Self::Yes => Self::No,
            Self::No => Self::Yes,
            Self::Unknown => Self::Unknown,
        }
    }

    /// Logical or over a sequence of answers.
    fn any(it: impl IntoIterator<Item = Tri>) -> Self {
        let mut unknown = false;
        for t in it {
            match t {
                Self::Yes => return Self::Yes,
                Self::Unknown => unknown = true,
                Self::No => {}
            }
        }
        if unknown {
            Self::Unknown
        } else {
            Self::No
        }
    }

    /// Logical and over a sequence of answers.
    fn all(it: impl IntoIterator<Item = Tri>) -> Self {
        Self::any(it.into_iter().map(Self::not)).not()
    }

    // `any` and `all` treat each answer on its own. Inside one Python comparison (two
    // lists, two dicts, `x in c`) the item comparisons are one computation that stops
    // at the first decisive item, and an item only Python can compare may raise there
    // and end it with an error (no match) first. So a decided item counts only when no
    // undecided one could come before it.

    /// `any` over item comparisons Python makes left to right (`x in list`).
    fn any_in_order(it: impl IntoIterator<Item = Tri>) -> Self {
        let mut unknown = false;
        for t in it {
            match t {
                Self::Yes if unknown => return Self::Unknown,
                Self::Yes => return Self::Yes,
                Self::Unknown => unknown = true,
                Self::No => {}
            }
        }
        if unknown {
            Self::Unknown
        } else {
            Self::No
        }
    }

    /// `all` over item comparisons Python makes left to right (two lists or tuples).
    fn all_in_order(it: impl IntoIterator<Item = Tri>) -> Self {
        Self::any_in_order(it.into_iter().map(Self::not)).not()
    }

    /// `all` over item comparisons Python makes in an order the tree does not keep (two
    /// dicts): decided only when every item is.
    fn all_unordered(it: impl IntoIterator<Item = Tri>) -> Self {
        let mut no = false;
        for t in it {
            match t {
                Self::Unknown => return Self::Unknown,
                Self::No => no = true,
                Self::Yes => {}
            }
        }
        Self::from_bool(!no)
    }

    /// `any` likewise (`x in set`: which members Python compares depends on hashes).
    fn any_unordered(it: impl IntoIterator<Item = Tri>) -> Self {
        Self::all_unordered(it.into_iter().map(Self::not)).not()
    }
}

/// A `where` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    NotIn,
}

impl Op {
    pub const NAMES: &'static str = "eq, ne, gt, gte, lt, lte, in, not_in";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "gt" => Self::Gt,
            "gte" => Self::Gte,
            "lt" => Self::Lt,
            "lte" => Self::Lte,
            "in" => Self::In,
            "not_in" => Self::NotIn,
            _ => return None,
        })
    }
}

/// One `(path, op, value)` condition over metadata. For `in`/`not_in`, `value` is a
/// `Seq` of the allowed values and `hashed` says it came from a set (membership of an
/// unhashable value in a set is an error in Python, hence no match).
#[derive(Debug, Clone)]
pub struct Cond {
    pub path: Box<[Box<str>]>,
    pub op: Op,
    pub value: Value,
    pub hashed: bool,
}

impl Cond {
    /// A condition on the dotted `path` (`"a.b"` looks up `b` in the mapping at `a`).
    pub fn new(path: &str, op: Op, value: Value, hashed: bool) -> Self {
        Self {
            path: path.split('.').map(Box::from).collect(),
            op,
            value,
            hashed,
        }
    }
}

fn is_num(v: &Value) -> bool {
    matches!(v, Value::Bool(_) | Value::Int(_) | Value::Float(_))
}

fn is_nan(v: &Value) -> bool {
    matches!(v, Value::Float(f) if f.is_nan())
}

/// 2^63 as a float: the first float above every `i64` (and `-2^63` is `i64::MIN`).
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

/// `i` against `f` exactly, as Python's `float_richcompare` does it: the int is never
/// rounded to a float, so `2**53 + 1 > 2.0**53`. `None` when `f` is NaN (unordered).
fn cmp_int_float(i: i64, f: f64) -> Option<CmpOrdering> {
    if f.is_nan() {
        return None;
    }
    if f >= TWO_POW_63 {
        return Some(CmpOrdering::Less); // also +inf
    }
    if f < -TWO_POW_63 {
        return Some(CmpOrdering::Greater); // also -inf
    }
    // Now -2^63 <= f < 2^63: its integer part is an exact i64.
    let whole = f.trunc();
    match i.cmp(&(whole as i64)) {
        // Same integer part: the fraction decides (`f - whole` is exact).
        CmpOrdering::Equal => 0.0f64.partial_cmp(&(f - whole)),
        o => Some(o),
    }
}

/// Numeric comparison with Python's semantics for bool/int/float: exact for every pair
/// (an int is never rounded to a float); `None` when a NaN makes it unordered.
fn num_cmp(a: &Value, b: &Value) -> Option<CmpOrdering> {
    enum N {
        I(i64),
        F(f64),
    }
    let n = |v: &Value| match v {
        Value::Bool(b) => Some(N::I(i64::from(*b))),
        Value::Int(i) => Some(N::I(*i)),
        Value::Float(f) => Some(N::F(*f)),
        _ => None,
    };
    match (n(a)?, n(b)?) {
        (N::I(x), N::I(y)) => Some(x.cmp(&y)),
        (N::I(x), N::F(y)) => cmp_int_float(x, y),
        (N::F(x), N::I(y)) => cmp_int_float(y, x).map(CmpOrdering::reverse),
        (N::F(x), N::F(y)) => x.partial_cmp(&y),
    }
}

/// `a == b` as Python's `==` answers it for these values.
pub fn value_eq(a: &Value, b: &Value) -> Tri {
    eq(a, b, false)
}

/// `a == b`; `item` when the two are items of containers (or a candidate and a member of
/// an `in` collection). Python compares those as `a is b or a == b`; the identity only
/// changes the answer for a NaN, which is equal to itself when it is the same object and
/// the tree cannot tell whether two NaNs are.
fn eq(a: &Value, b: &Value, item: bool) -> Tri {
    match (a, b) {
        (Value::Opaque, _) | (_, Value::Opaque) => Tri::Unknown,
        _ if item && is_nan(a) && is_nan(b) => Tri::Unknown,
        _ if is_num(a) && is_num(b) => Tri::from_bool(num_cmp(a, b) == Some(CmpOrdering::Equal)),
        (Value::Null, Value::Null) => Tri::Yes,
        (Value::Str(x), Value::Str(y)) => Tri::from_bool(x == y),
        (Value::Seq(x, tx), Value::Seq(y, ty)) => {
            if tx != ty || x.len() != y.len() {
                return Tri::No;
            }
            Tri::all_in_order(x.iter().zip(y.iter()).map(|(p, q)| eq(p, q, true)))
        }
        (Value::Map(x), Value::Map(y)) => {
            if x.len() != y.len() {
                return Tri::No;
            }
            // Each key of `x` looked up in `y` (a missing one: unequal).
            Tri::all_unordered(x.iter().map(|(k, vx)| {
                match y.binary_search_by(|(ky, _)| (**ky).cmp(&**k)) {
                    Ok(j) => y.get(j).map_or(Tri::No, |(_, vy)| eq(vx, vy, true)),
                    Err(_) => Tri::No,
                }
            }))
        }
        _ => Tri::No,
    }
}

/// Ordering comparison; `No` where Python would raise TypeError, `Unknown` where only
/// Python can tell (sequences, opaque values).
fn value_order(a: &Value, b: &Value, want: impl Fn(CmpOrdering) -> bool) -> Tri {
    match (a, b) {
        (Value::Opaque, _) | (_, Value::Opaque) | (Value::Seq(..), Value::Seq(..)) => Tri::Unknown,
        _ if is_num(a) && is_num(b) => Tri::from_bool(num_cmp(a, b).is_some_and(want)),
        (Value::Str(x), Value::Str(y)) => Tri::from_bool(want((**x).cmp(&**y))),
        _ => Tri::No,
    }
}

fn hashable(v: &Value) -> Tri {
    match v {
        Value::Opaque => Tri::Unknown,
        Value::Seq(_, false) | Value::Map(_) => Tri::No,
        Value::Seq(items, true) => Tri::all(items.iter().map(hashable)),
        _ => Tri::Yes,
    }
}

/// `v in allowed`, with Python's rule that an unhashable value is never "in" a set.
fn member(v: &Value, allowed: &Value, hashed: bool) -> Tri {
    let Value::Seq(items, _) = allowed else {
        return Tri::Unknown;
    };
    if hashed {
        match hashable(v) {
            Tri::No => return Tri::No,
            Tri::Unknown => return Tri::Unknown,
            Tri::Yes => {}
        }
    }
    let answers = items.iter().map(|x| eq(v, x, true));
    if hashed {
        Tri::any_unordered(answers)
    } else {
        Tri::any_in_order(answers)
    }
}

fn elements(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Seq(items, _) => Some(items),
        _ => None,
    }
}

/// The value at a dotted path, `Ok(None)` when missing, `Err(())` when an opaque value
/// is in the way.
fn at_path<'a>(root: &'a Value, path: &[Box<str>]) -> Result<Option<&'a Value>, ()> {
    let mut cur = root;
    for seg in path {
        match cur {
            Value::Map(items) => match items.binary_search_by(|(k, _)| (**k).cmp(&**seg)) {
                Ok(i) => match items.get(i) {
                    Some((_, v)) => cur = v,
                    None => return Ok(None), // unreachable: `i` came from the search
                },
                Err(_) => return Ok(None),
            },
            Value::Opaque => return Err(()),
            _ => return Ok(None),
        }
    }
    Ok(Some(cur))
}

impl Cond {
    /// Evaluates the condition on a metadata tree. A missing path never matches.
    pub fn eval(&self, root: &Value) -> Tri {
        let v = match at_path(root, &self.path) {
            Err(()) => return Tri::Unknown,
            Ok(None) => return Tri::No,
            Ok(Some(v)) => v,
        };
        let q = &self.value;
        match self.op {
            Op::Eq => match value_eq(v, q) {
                Tri::Yes => Tri::Yes,
                first => match elements(v) {
                    Some(items) => {
                        Tri::any(std::iter::once(first).chain(items.iter().map(|x| value_eq(x, q))))
                    }
                    None => first,
                },
            },
            Op::Ne => value_eq(v, q).not(),
            Op::Gt => value_order(v, q, |o| o == CmpOrdering::Greater),
            Op::Gte => value_order(v, q, |o| o != CmpOrdering::Less),
            Op::Lt => value_order(v, q, |o| o == CmpOrdering::Less),
            Op::Lte => value_order(v, q, |o| o != CmpOrdering::Greater),
            Op::In => match member(v, q, self.hashed) {
                Tri::Yes => Tri::Yes,
                first => match elements(v) {
                    Some(items) => Tri::any(
                        std::iter::once(first)
                            .chain(items.iter().map(|x| member(x, q, self.hashed))),
                    ),
                    None => first,
                },
            },
            Op::NotIn => {
                if self.hashed && hashable(v) == Tri::No {
                    // Python raises TypeError: no match either way.
                    return Tri::No;
                }
                member(v, q, self.hashed).not()
            }
        }
    }
}

// ---- entries --------------------------------------------------------------------------

/// Metadata of one entry version: the comparable tree and the host's own copy.
#[derive(Debug)]
pub struct Metadata<P> {
    pub tree: Value,
    pub extra: P,
}

/// One version of a registration. Immutable: writers publish a new `Arc<Entry>`.
#[derive(Debug)]
pub struct Entry<R, P> {
    pub id: Arc<str>,
    /// Identifies the registration (constant across updates and heartbeats).
    pub token: u64,
    /// Identifies this version (changes on every update and heartbeat).
    pub version: u64,
    /// The index part holding the registration's rows (see [`Index`]): the
    /// registering thread's, kept by updates.
    pub part: u8,
    /// Sorted and free of duplicates.
    pub caps: Arc<[Arc<str>]>,
    pub node: Option<Arc<str>>,
    pub health: Arc<str>,
    pub meta: Arc<Metadata<P>>,
    pub registered_at: i64,
    pub expires_at: i64,
    /// The lease duration heartbeats renew by default.
    pub lease: Option<i64>,
    /// Host data fixed for the registration (value, owner watch, ...).
    pub reg: Arc<R>,
}

impl<R, P> Entry<R, P> {
    pub fn is_live(&self, now: i64) -> bool {
        now < self.expires_at
    }

    pub fn has_cap(&self, cap: &str) -> bool {
        if self.caps.len() <= 8 {
            // Lengths live in the fat pointers: most mismatches never touch the bytes.
            self.caps
                .iter()
                .any(|c| c.len() == cap.len() && **c == *cap)
        } else {
            self.caps.binary_search_by(|c| (**c).cmp(cap)).is_ok()
        }
    }

    fn next_version(&self, version: u64) -> Self {
        Self {
            id: self.id.clone(),
            token: self.token,
            version,
            part: self.part,
            caps: self.caps.clone(),
            node: self.node.clone(),
            health: self.health.clone(),
            meta: self.meta.clone(),
            registered_at: self.registered_at,
            expires_at: self.expires_at,
            lease: self.lease,
            reg: self.reg.clone(),
        }
    }
}

/// Sorts and deduplicates capabilities.
pub fn normalize_caps(mut caps: Vec<Arc<str>>) -> Arc<[Arc<str>]> {
    caps.sort_unstable();
    caps.dedup();
    caps.into()
}

/// What a registration asks for.
pub struct Spec<R, P> {
    pub id: Arc<str>,
    pub token: u64,
    pub caps: Vec<Arc<str>>,
    pub node: Option<Arc<str>>,
    pub health: Arc<str>,
    pub meta: Arc<Metadata<P>>,
    pub ttl: Option<i64>,
    pub reg: Arc<R>,
}

/// What an update changes; `None` leaves a field as it is.
pub struct Changes<P> {
    pub caps: Option<Arc<[Arc<str>]>>,
    pub node: Option<Option<Arc<str>>>,
    pub health: Option<Arc<str>>,
    pub meta: Option<Arc<Metadata<P>>>,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// The id is registered (and live).
    Taken(Arc<str>),
    /// The id is not registered (or has expired).
    Missing(Arc<str>),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Taken(id) => write!(f, "agent id {id:?} is already registered"),
            Self::Missing(id) => write!(f, "agent id {id:?} is not registered"),
        }
    }
}

impl std::error::Error for RegistryError {}

// ---- indexes --------------------------------------------------------------------------

/// value -> {id: number of in-flight or published versions with this row}, split into
/// [`INDEX_PARTS`] parts so that writers on different threads do not share a row's
/// lock and lines even when they share a value (every agent is "healthy"). A
/// registration's rows all live in the part of the thread that registered it
/// ([`home_part`]), recorded in its entry ([`Entry::part`]) and kept by its updates, so
/// at rest a value's parts never list an id twice. Two threads registering one id at
/// once each add rows in their own part until the loser takes its rows back: a reader
/// may meanwhile find the id in two parts, and keeps only the part its entry names.
/// `K` is `str` for the built-in indexes and `[u8]` (an encoded key: see [`push_key`])
/// for declared ones.
struct Index<K: ?Sized> {
    parts: Box<[Map<Arc<K>, Row>]>,
}

const INDEX_PARTS: usize = 8;

/// The index part of registrations made on this thread: threads take parts in turn,
/// so up to [`INDEX_PARTS`] writing threads each have their own.
fn home_part() -> u8 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static PART: u8 = (NEXT.fetch_add(1, Ordering::Relaxed) % INDEX_PARTS) as u8;
    }
    // During thread teardown the slot is gone: any part will do, the entry records it.
    PART.try_with(|p| *p).unwrap_or(0)
}

/// One value's ids in one part of an index, and the version of that set.
///
/// `version` is a process-unique number ([`next_token`]), replaced by every change to
/// `ids` (under the part's write guard) and by every [`Index::touch`] (under its read
/// guard, hence atomic). Unique rather than counted: a row that empties is removed, and
/// one created again later never repeats a version an earlier reader saw. Absent rows
/// read as version 0, which no present row has (a row is created and given its first
/// version under one write guard). `SeqCst` on both sides: a reader that does not see a
/// touch is ordered before it, hence before the entry change the touch announces.
#[derive(Default)]
struct Row {
    ids: HashMap<Arc<str>, u32>,
    version: AtomicU64,
}

impl Row {
    fn bump(&self) {
        self.version.store(next_token(), Ordering::SeqCst);
    }
}

/// The versions of one value's rows, one per part (0 for an absent row): equal stamps
/// taken at two instants mean no id joined or left that value's rows in between, and
/// no entry there left it (see [`Registry::stamp`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp([u64; INDEX_PARTS]);

impl<K: ?Sized + Hash + Eq> Index<K> {
    fn new(shards: usize) -> Self {
        let per_part = (shards / INDEX_PARTS).next_power_of_two().max(4);
        Self {
            parts: (0..INDEX_PARTS)
                .map(|_| {
                    DashMap::with_hasher_and_shard_amount(DefaultHashBuilder::default(), per_part)
                })
                .collect(),
        }
    }

    fn part(&self, part: u8) -> &Map<Arc<K>, Row> {
        &self.parts[usize::from(part) % INDEX_PARTS]
    }

    /// Adds a row; returns the index's own copy of `value`, so that entries with this
    /// value share its string (interned: queries compare hot, shared strings).
    fn add(&self, value: &Arc<K>, id: &Arc<str>, part: u8) -> Arc<K> {
        let mut row = self.part(part).entry(value.clone()).or_default();
        // At most one per writer of this id in flight, plus one: far below u32::MAX.
        *row.ids.entry(id.clone()).or_insert(0) += 1;
        row.bump();
        row.key().clone()
    }

    /// Adds a row for a borrowed value (copied only when the index lacks it).
    fn add_borrowed(&self, value: &K, id: &Arc<str>, part: u8)
    where
        Arc<K>: for<'k> From<&'k K>,
    {
        let part = self.part(part);
        if let Some(mut row) = part.get_mut(value) {
            *row.ids.entry(id.clone()).or_insert(0) += 1;
            row.bump();
            return;
        }
        // Absent a moment ago: `entry` settles a race with another writer of the value.
        let mut row = part.entry(Arc::from(value)).or_default();
        *row.ids.entry(id.clone()).or_insert(0) += 1;
        row.bump();
    }

    fn remove(&self, value: &K, id: &str, part: u8) {
        let part = self.part(part);
        let now_empty = match part.get_mut(value) {
            Some(mut row) => {
                if let Some(c) = row.ids.get_mut(id) {
                    // Every removal matches an earlier add, so `c >= 1`; saturating all
                    // the same, so that a broken invariant can only leave a row behind.
                    *c = c.saturating_sub(1);
                    if *c == 0 {
                        row.ids.remove(id);
                    }
                }
                row.bump();
                row.ids.is_empty()
            }
            None => false,
        };
        // The guard is gone; re-check under a fresh one (a writer may have added since).
        if now_empty {
            part.remove_if(value, |_, row| row.ids.is_empty());
        }
    }

    /// Moves the version of the row under `value` in `part` without changing it: announces
    /// that the entry there is about to leave it (see [`Registry::touch_rows`]).
    fn touch(&self, value: &K, part: u8) {
        if let Some(row) = self.part(part).get(value) {
            row.bump();
        }
    }

    /// The stamp of one value's rows and how many ids they hold.
    fn stamp(&self, value: &K) -> (Stamp, usize) {
        let mut stamp = Stamp::default();
        let mut n = 0;
        for (v, p) in stamp.0.iter_mut().zip(&*self.parts) {
            if let Some(row) = p.get(value) {
                *v = row.version.load(Ordering::SeqCst);
                n += row.ids.len();
            }
        }
        (stamp, n)
    }

    fn size(&self, value: &K) -> usize {
        self.stamp(value).1
    }

    /// Copies the ids of one value into `buf` (bytes, not reference counts: touching
    /// every id's count would write to as many shared cache lines) with the part each
    /// was in, each part's version with its ids into `stamp`; returns how many.
    fn ids_into(&self, value: &K, buf: &mut IdBuf, stamp: &mut Stamp) -> usize {
        let mut n = 0;
        for ((v, p), part) in stamp.0.iter_mut().zip(&*self.parts).zip(0u8..) {
            *v = 0;
            if let Some(row) = p.get(value) {
                *v = row.version.load(Ordering::SeqCst);
                buf.reserve(row.ids.len(), row.ids.keys().map(|k| k.len()).sum());
                for k in row.ids.keys() {
                    buf.push(k, part);
                }
                n += row.ids.len();
            }
        }
        n
    }

    /// Distinct values held.
    fn keys(&self) -> usize {
        let mut seen: hashbrown::HashSet<Arc<K>> = hashbrown::HashSet::new();
        for p in &*self.parts {
            seen.extend(p.iter().map(|r| r.key().clone()));
        }
        seen.len()
    }

    /// Rows held (ids summed over values).
    fn rows(&self) -> usize {
        self.parts
            .iter()
            .map(|p| p.iter().map(|r| r.value().ids.len()).sum::<usize>())
            .sum()
    }

    #[cfg(test)]
    fn snapshot(
        &self,
    ) -> std::collections::BTreeMap<Arc<K>, std::collections::BTreeMap<String, u32>>
    where
        K: Ord,
    {
        let mut out: std::collections::BTreeMap<Arc<K>, std::collections::BTreeMap<String, u32>> =
            std::collections::BTreeMap::new();
        for p in &*self.parts {
            for r in p {
                let e = out.entry(r.key().clone()).or_default();
                for (k, v) in &r.value().ids {
                    assert!(e.insert(k.to_string(), *v).is_none(), "id in two parts");
                }
            }
        }
        out
    }
}

/// Candidate ids copied out of an index set, each with the part it was found in.
#[derive(Default)]
struct IdBuf {
    bytes: String,
    ends: Vec<usize>,
    parts: Vec<u8>,
}

impl IdBuf {
    fn reserve(&mut self, n: usize, bytes: usize) {
        self.ends.reserve(n);
        self.parts.reserve(n);
        self.bytes.reserve(bytes);
    }

    fn push(&mut self, id: &str, part: u8) {
        self.bytes.push_str(id);
        self.ends.push(self.bytes.len());
        self.parts.push(part);
    }

    fn iter(&self) -> impl Iterator<Item = (&str, u8)> {
        let mut start = 0;
        self.ends.iter().zip(&self.parts).map(move |(&end, &part)| {
            // `ends` only grows, and each end follows a whole `&str` pushed onto
            // `bytes`: every range is in bounds and on character boundaries.
            let s = self.bytes.get(start..end).unwrap_or_default();
            start = end;
            (s, part)
        })
    }
}

/// Passes each id of a query's answer on once. Needed only when the candidates came
/// from more than one part (or set): an id is in one part at rest, but a reader may
/// find it in two (a writer's rows in flight beside a published entry's) and, if the
/// id is registered again between its two reads, match both registrations.
struct Once<'a> {
    seen: Option<hashbrown::HashSet<Seen<'a>, std::hash::BuildHasherDefault<Passed>>>,
}

/// An id with the hash the entry map computed for it: hashed as that number (not
/// again), compared as both (so two ids with one hash stay two).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Seen<'a>(u64, &'a str);

impl Hash for Seen<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// A hasher that passes on a number already hashed ([`Seen`]).
#[derive(Default)]
struct Passed(u64);

impl std::hash::Hasher for Passed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl<'a> Once<'a> {
    /// For the candidates of one set (copied part by part, in order).
    fn new(buf: &IdBuf) -> Self {
        if buf.parts.first() == buf.parts.last() {
            Self { seen: None }
        } else {
            Self::always(buf)
        }
    }

    fn always(buf: &IdBuf) -> Self {
        Self {
            seen: Some(hashbrown::HashSet::with_capacity_and_hasher(
                buf.ends.len(),
                std::hash::BuildHasherDefault::default(),
            )),
        }
    }

    /// False if `id` (whose hash in the entry map is `h`) was passed on before.
    fn first(&mut self, h: u64, id: &'a str) -> bool {
        self.seen.as_mut().is_none_or(|s| s.insert(Seen(h, id)))
    }
}

// ---- declared indexes -----------------------------------------------------------------

/// Declared indexes one registry holds at most.
pub const MAX_INDEXES: usize = 32;

// Key encodings: a tag byte, then the payload.
const K_NULL: u8 = 0;
/// bool, int, or a float with an integral value in i64's range: the i64, big-endian.
const K_INT: u8 = 1;
/// Any other float but NaN: its bits, big-endian.
const K_FLOAT: u8 = 2;
/// A str: its UTF-8 bytes.
const K_STR: u8 = 3;
/// The entries only the host can compare at the path (see [`entry_keys`]).
const K_HOST: &[u8] = &[4];

/// Encoded keys of a declared index, in one buffer.
#[derive(Default)]
struct KeyBuf {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl KeyBuf {
    fn push(&mut self, tag: u8, payload: &[u8]) {
        self.bytes.push(tag);
        self.bytes.extend_from_slice(payload);
        self.ends.push(self.bytes.len());
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            // `ends` only grows and each end closes one pushed key: always in bounds.
            let k = self.bytes.get(start..end).unwrap_or_default();
            start = end;
            k
        })
    }

    /// The keys, sorted and free of duplicates (a list value `[1, 1.0, True]` has one).
    fn sorted(&self) -> Vec<&[u8]> {
        let mut v: Vec<&[u8]> = self.iter().collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Appends the key of `v` to `buf`, if it has one: None, bool, int, float (not NaN) and
/// str do; containers, NaN and opaque values do not. Two values have the same key exactly
/// when Python's `==` says they are equal: a bool is the int it equals, a float with an
/// integral value in i64's range is that int (`1 == 1.0 == True`, `-0.0 == 0`), and
/// every other float is its own bits (no int in i64's range equals it: see
/// [`cmp_int_float`]; an int beyond 64 bits is opaque, never a key).
fn push_key(v: &Value, buf: &mut KeyBuf) -> bool {
    match v {
        Value::Null => buf.push(K_NULL, &[]),
        Value::Bool(b) => buf.push(K_INT, &i64::from(*b).to_be_bytes()),
        Value::Int(i) => buf.push(K_INT, &i.to_be_bytes()),
        Value::Float(f) if f.is_nan() => return false,
        Value::Float(f) => {
            // The range test of `cmp_int_float`: in it, the integer part is exact.
            if (-TWO_POW_63..TWO_POW_63).contains(f) && f.fract() == 0.0 {
                buf.push(K_INT, &(*f as i64).to_be_bytes());
            } else {
                buf.push(K_FLOAT, &f.to_bits().to_be_bytes());
            }
        }
        Value::Str(s) => buf.push(K_STR, s.as_bytes()),
        Value::Seq(..) | Value::Map(_) | Value::Opaque => return false,
    }
    true
}

/// The keys under which an entry with metadata `tree` is filed in the index on `path`:
/// the value's key, or for a list or tuple each item's (`eq` and `in` also match an item);
/// [`K_HOST`] when the value or an item is opaque or an opaque value is in the way (only
/// the host can compare those). A value with no key and no opaque part (a dict, a NaN,
/// a nested list) is filed nowhere: it can equal no value that has a key.
fn entry_keys(tree: &Value, path: &[Box<str>], buf: &mut KeyBuf) {
    match at_path(tree, path) {
        Err(()) | Ok(Some(Value::Opaque)) => buf.push(K_HOST[0], &[]),
        Ok(None) => {}
        Ok(Some(v)) => {
            if let Value::Seq(items, _) = v {
                for x in items {
                    if matches!(x, Value::Opaque) {
                        buf.push(K_HOST[0], &[]);
                    } else {
                        push_key(x, buf);
                    }
                }
            } else {
                push_key(v, buf);
            }
        }
    }
}

/// The keys a condition can only match under, if it can use a declared index: `eq`
/// with a value that has a key, or `in` with values that all have one (sorted, free of
/// duplicates; [`K_HOST`]'s set is read besides).
fn cond_keys(c: &Cond, buf: &mut KeyBuf) -> bool {
    match (c.op, &c.value) {
        (Op::Eq, v) => push_key(v, buf),
        (Op::In, Value::Seq(items, _)) => items.iter().all(|x| push_key(x, buf)),
        _ => false,
    }
}

/// A secondary index the host declared on a metadata path.
struct Declared {
    path: Box<[Box<str>]>,
    index: Index<[u8]>,
}

// ---- queries --------------------------------------------------------------------------

/// AND of the given criteria.
#[derive(Default)]
pub struct Query<'a> {
    pub capability: Option<&'a str>,
    pub node: Option<&'a str>,
    pub health: Option<&'a str>,
    pub conds: &'a [Cond],
    /// Stop after this many sure matches.
    pub limit: Option<usize>,
}

/// A matching entry; `unsure` when a condition could not be decided here.
pub struct Hit<R, P> {
    pub entry: Arc<Entry<R, P>>,
    pub unsure: bool,
}

/// Matches and whether the scan stopped at `limit`.
pub struct Found<R, P> {
    pub hits: Vec<Hit<R, P>>,
    pub truncated: bool,
}

/// What [`Registry::select`] did: how many sure matches it passed on, and the entries
/// left for the caller to judge, in the order they were read.
pub struct Selected<R, P> {
    pub sure: usize,
    pub deferred: Vec<Hit<R, P>>,
    /// Set when the sure matches were the whole of a stamped row (see
    /// [`Registry::stamp`]).
    pub clean: Option<Clean>,
}

/// A query's answer that was one built-in row's exact content: it stays exact while the
/// row's [`Stamp`] equals `stamp` and the clock reads before `deadline` (the earliest
/// deadline of its entries; [`NEVER`] without leases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clean {
    pub stamp: Stamp,
    pub deadline: i64,
}

/// Where a query starts (see [`Registry::plan`]), with the size of its candidate set.
enum Plan<'s, 'a> {
    Scan,
    /// One value of a built-in index.
    Value(&'s Index<str>, &'a str, usize),
    /// Keys of a declared index (and its host-judged set).
    Keys(&'s Index<[u8]>, KeyBuf, usize),
}

impl Plan<'_, '_> {
    fn size(&self) -> Option<usize> {
        match self {
            Self::Scan => None,
            Self::Value(_, _, n) | Self::Keys(_, _, n) => Some(*n),
        }
    }
}

// ---- leases ---------------------------------------------------------------------------

#[derive(Default)]
struct LeaseShard {
    heap: BinaryHeap<Reverse<(i64, u64, Arc<str>)>>,
    stale: usize,
}

// ---- the entry map --------------------------------------------------------------------

/// One shard of the entry map, alone on its cache lines, and its table's length (set
/// under the write guard, read without it: [`Entries::len`] takes no lock).
#[repr(align(128))]
struct Shard<T>(RwLock<HashTable<T>>, AtomicUsize);

/// id -> the current version of its entry: hash tables behind `RwLock`s, the shard
/// chosen by the id's hash (no global lock). Written here rather than taken from
/// dashmap for one operation dashmap does not offer: [`Entries::try_for_each`] reads
/// every shard it can lock at once and skips the others, which is what the host's
/// garbage collector needs (its traversal must never wait for a lock). A table holds
/// `Arc<Entry>` keyed by `entry.id`, so a slot is one pointer.
///
/// The closures these methods take run under the shard's guard: they are short, pure
/// Rust, and never touch the map. No method drops an entry under a guard: what a write
/// replaces or removes is returned.
struct Entries<R, P> {
    shards: Box<[Shard<Arc<Entry<R, P>>>]>,
    hasher: DefaultHashBuilder,
    /// `64 - log2(shards)`: the shard index comes from the hash bits just below the top
    /// 7 (hashbrown's tag), so it correlates neither with a slot's tag nor its position.
    shift: u32,
}

impl<R, P> Entries<R, P> {
    fn new(shards: usize) -> Self {
        let n = shards.next_power_of_two().max(2);
        Self {
            shards: (0..n)
                .map(|_| Shard(RwLock::new(HashTable::new()), AtomicUsize::new(0)))
                .collect(),
            hasher: DefaultHashBuilder::default(),
            shift: 64 - n.trailing_zeros(),
        }
    }

    fn locate(&self, id: &str) -> (u64, &Shard<Arc<Entry<R, P>>>) {
        let h = self.hasher.hash_one(id);
        // `(h << 7) >> shift` has log2(len) significant bits (len >= 2, so shift <= 63):
        // always in range; the mask only makes that evident.
        let i = ((h << 7) >> self.shift) as usize & (self.shards.len() - 1);
        (h, &self.shards[i])
    }

    fn rehash(&self) -> impl Fn(&Arc<Entry<R, P>>) -> u64 + '_ {
        |e| self.hasher.hash_one(&*e.id)
    }

    /// `f(entry)` under the shard's read guard.
    fn with<T>(&self, id: &str, f: impl FnOnce(&Arc<Entry<R, P>>) -> T) -> Option<T> {
        let (h, shard) = self.locate(id);
        let t = shard.0.read();
        t.find(h, |e| *e.id == *id).map(f)
    }

    /// [`Entries::with`], also passing `id`'s hash in the map.
    fn with_hash<T>(&self, id: &str, f: impl FnOnce(u64, &Arc<Entry<R, P>>) -> T) -> Option<T> {
        let (h, shard) = self.locate(id);
        let t = shard.0.read();
        t.find(h, |e| *e.id == *id).map(|e| f(h, e))
    }

    fn get(&self, id: &str) -> Option<Arc<Entry<R, P>>> {
        self.with(id, Arc::clone)
    }

    /// Inserts `e` unless its id is present and `keep(present)`: `Ok(replaced)`, or
    /// `Err(())` when kept.
    fn insert(
        &self,
        e: &Arc<Entry<R, P>>,
        keep: impl FnOnce(&Entry<R, P>) -> bool,
    ) -> Result<Option<Arc<Entry<R, P>>>, ()> {
        let (h, shard) = self.locate(&e.id);
        let mut t = shard.0.write();
        match t.entry(h, |x| x.id == e.id, self.rehash()) {
            HashEntry::Vacant(v) => {
                v.insert(e.clone());
                shard.1.store(t.len(), Ordering::Relaxed);
                Ok(None)
            }
            HashEntry::Occupied(mut o) => {
                if keep(o.get()) {
                    Err(())
                } else {
                    Ok(Some(std::mem::replace(o.get_mut(), e.clone())))
                }
            }
        }
    }

    /// Replaces the entry with `new(present)` when that is `Some`; returns the replaced.
    fn replace(
        &self,
        id: &str,
        new: impl FnOnce(&Entry<R, P>) -> Option<Arc<Entry<R, P>>>,
    ) -> Option<Arc<Entry<R, P>>> {
        let (h, shard) = self.locate(id);
        let mut t = shard.0.write();
        let slot = t.find_mut(h, |e| *e.id == *id)?;
        let new = new(slot)?;
        Some(std::mem::replace(slot, new))
    }

    /// Removes the entry if `f(present)`; returns it.
    fn remove_if(
        &self,
        id: &str,
        f: impl FnOnce(&Entry<R, P>) -> bool,
    ) -> Option<Arc<Entry<R, P>>> {
        let (h, shard) = self.locate(id);
        let mut t = shard.0.write();
        match t.find_entry(h, |e| *e.id == *id) {
            Ok(o) if f(o.get()) => {
                let e = o.remove().0;
                shard.1.store(t.len(), Ordering::Relaxed);
                Some(e)
            }
            _ => None,
        }
    }

    /// Entries held: each shard's length when last written (no guard taken, so a
    /// registry with many shards counts as fast as one with few).
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.1.load(Ordering::Relaxed))
            .sum()
    }

    /// Calls `f` on entries, shard by shard under its read guard, until it returns true;
    /// true if it did.
    fn any(&self, mut f: impl FnMut(&Arc<Entry<R, P>>) -> bool) -> bool {
        self.shards.iter().any(|s| s.0.read().iter().any(&mut f))
    }

    /// Calls `f` on the entries of every shard that can be read-locked without waiting;
    /// `Ok(false)` if a shard was skipped.
    fn try_for_each<X>(
        &self,
        mut f: impl FnMut(&Arc<Entry<R, P>>) -> Result<(), X>,
    ) -> Result<bool, X> {
        let mut complete = true;
        for s in &*self.shards {
            match s.0.try_read() {
                Some(t) => t.iter().try_for_each(&mut f)?,
                None => complete = false,
            }
        }
        Ok(complete)
    }

    /// Takes every entry out (each shard's table swapped for an empty one under its
    /// write guard; the entries are dropped by the caller).
    fn take_all(&self) -> Vec<Arc<Entry<R, P>>> {
        let mut out = Vec::new();
        for s in &*self.shards {
            let mut guard = s.0.write();
            let t = std::mem::take(&mut *guard);
            s.1.store(0, Ordering::Relaxed);
            drop(guard);
            out.extend(t);
        }
        out
    }
}

// ---- the registry ---------------------------------------------------------------------

/// Counts of what the indexes hold (for tests and reclamation checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSizes {
    pub capabilities: usize,
    pub nodes: usize,
    pub health: usize,
    pub lease_items: usize,
}

pub struct Registry<R, P> {
    entries: Entries<R, P>,
    caps: Index<str>,
    nodes: Index<str>,
    health: Index<str>,
    /// Declared on metadata paths, fixed at construction (usually none).
    declared: Box<[Declared]>,
    leases: Box<[Mutex<LeaseShard>]>,
    /// Set once any entry may carry a deadline; until then reads skip the clock.
    uses_ttl: AtomicBool,
    clock: Clock,
    host: HostChecks,
}

/// Registrations whose liveness only the host can judge (a thread owner: has it
/// finished?), as `(id, token)`, checked a few per write by [`Registry::sweep_host`].
///
/// `len` is added to before items are queued and taken from after they are drained and
/// judged (by the number not queued again), so it never falls below the queue's length
/// and never underflows; it is only read to skip an empty queue without its lock.
/// `any` is set (Release) before the first such registration is published, so a reader
/// that finds a published entry and then reads `any` (Acquire) sees it set: until then,
/// readers skip the host's per-entry check.
#[derive(Default)]
struct HostChecks {
    queue: Mutex<VecDeque<(Arc<str>, u64)>>,
    len: AtomicUsize,
    any: AtomicBool,
}

type Grave<R, P> = Vec<Arc<Entry<R, P>>>;

/// Tokens taken from the shared counter per refill of a thread's block.
const TOKEN_BLOCK: u64 = 1024;

/// A process-wide unique, non-zero number. Each thread takes blocks of
/// [`TOKEN_BLOCK`] from one atomic counter, so writers on different threads do not
/// contend on its cache line for every write. Relaxed: uniqueness is all we need.
fn next_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static BLOCK: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    BLOCK
        .try_with(|b| {
            let (cur, end) = b.get();
            if cur < end {
                b.set((cur + 1, end));
                cur
            } else {
                let start = NEXT.fetch_add(TOKEN_BLOCK, Ordering::Relaxed);
                b.set((start + 1, start + TOKEN_BLOCK));
                start
            }
        })
        // During thread teardown the block is gone: take one number directly.
        .unwrap_or_else(|_| NEXT.fetch_add(1, Ordering::Relaxed))
}

impl<R, P> Registry<R, P> {
    pub fn new(clock: Clock, cpus: usize) -> Self {
        Self::with_indexes(clock, cpus, &[])
    }

    /// A registry with secondary indexes on the given dotted metadata paths (the host
    /// checks them: distinct, at most [`MAX_INDEXES`]).
    pub fn with_indexes(clock: Clock, cpus: usize, paths: &[&str]) -> Self {
        let shards = (cpus.max(1) * 8).next_power_of_two().max(16);
        Self {
            // Four times more entry shards than index shards: two threads writing their
            // own agents then rarely write the same shard's lock and table lines (more
            // shards measured no better on two threads and cost single-thread lookups).
            entries: Entries::new(shards * 4),
            caps: Index::new(shards),
            nodes: Index::new(shards),
            health: Index::new(shards),
            declared: paths
                .iter()
                .map(|p| Declared {
                    path: p.split('.').map(Box::from).collect(),
                    index: Index::new(shards),
                })
                .collect(),
            leases: (0..LEASE_SHARDS).map(|_| Mutex::default()).collect(),
            uses_ttl: AtomicBool::new(false),
            clock,
            host: HostChecks::default(),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The clock reading for a read; `i64::MIN` (everything live) while nothing can
    /// expire, which saves a clock read per call.
    #[inline]
    pub fn now(&self) -> i64 {
        if self.uses_ttl.load(Ordering::Acquire) {
            self.clock.now_nanos()
        } else {
            i64::MIN
        }
    }

    /// A fresh registration token / version number (unique in the process).
    pub fn next_token(&self) -> u64 {
        next_token()
    }

    fn lease_shard(&self, token: u64) -> &Mutex<LeaseShard> {
        &self.leases[(token as usize) % LEASE_SHARDS]
    }

    // ---- index rows ----

    /// Adds the rows of a new registration; returns its interned capabilities, node
    /// and health.
    fn add_rows(
        &self,
        id: &Arc<str>,
        caps: &[Arc<str>],
        node: Option<&Arc<str>>,
        health: &Arc<str>,
        part: u8,
    ) -> (Arc<[Arc<str>]>, Option<Arc<str>>, Arc<str>) {
        let caps: Vec<Arc<str>> = caps.iter().map(|c| self.caps.add(c, id, part)).collect();
        let node = node.map(|n| self.nodes.add(n, id, part));
        let health = self.health.add(health, id, part);
        (caps.into(), node, health)
    }

    /// Adds (`add`) or removes the declared-index rows of an entry with metadata `a`
    /// that one with metadata `b` lacks (all of them when `b` is None).
    fn meta_rows(&self, add: bool, id: &Arc<str>, part: u8, a: &Value, b: Option<&Value>) {
        let (mut ka, mut kb) = (KeyBuf::default(), KeyBuf::default());
        for d in &*self.declared {
            ka.bytes.clear();
            ka.ends.clear();
            entry_keys(a, &d.path, &mut ka);
            if ka.ends.is_empty() {
                continue;
            }
            kb.bytes.clear();
            kb.ends.clear();
            if let Some(b) = b {
                entry_keys(b, &d.path, &mut kb);
            }
            let theirs = kb.sorted();
            for k in ka.sorted() {
                if theirs.binary_search(&k).is_err() {
                    if add {
                        d.index.add_borrowed(k, id, part);
                    } else {
                        d.index.remove(k, id, part);
                    }
                }
            }
        }
    }

    /// Adds the rows `new` has and `old` lacks, interning the new values in `new`.
    fn add_diff(&self, new: &mut Entry<R, P>, old: &Entry<R, P>) {
        let (id, part) = (&new.id, new.part);
        if !Arc::ptr_eq(&new.caps, &old.caps) {
            let caps: Vec<Arc<str>> = new
                .caps
                .iter()
                .map(|c| match old.caps.iter().find(|o| **o == *c) {
                    Some(o) => o.clone(),
                    None => self.caps.add(c, id, part),
                })
                .collect();
            new.caps = caps.into();
        }
        if new.node != old.node {
            if let Some(n) = &new.node {
                new.node = Some(self.nodes.add(n, id, part));
            }
        }
        if new.health != old.health {
            new.health = self.health.add(&new.health, id, part);
        }
        if !self.declared.is_empty() && !Arc::ptr_eq(&new.meta, &old.meta) {
            self.meta_rows(true, id, part, &new.meta.tree, Some(&old.meta.tree));
        }
    }

    fn remove_rows(&self, e: &Entry<R, P>) {
        for c in e.caps.iter() {
            self.caps.remove(c, &e.id, e.part);
        }
        if let Some(n) = &e.node {
            self.nodes.remove(n, &e.id, e.part);
        }
        self.health.remove(&e.health, &e.id, e.part);
        if !self.declared.is_empty() {
            self.meta_rows(false, &e.id, e.part, &e.meta.tree, None);
        }
    }

    /// Removes the rows `a` has and `b` lacks.
    fn remove_diff(&self, a: &Entry<R, P>, b: &Entry<R, P>) {
        let (id, part) = (&a.id, a.part);
        if !Arc::ptr_eq(&a.caps, &b.caps) {
            for c in a.caps.iter().filter(|c| !b.has_cap(c)) {
                self.caps.remove(c, id, part);
            }
        }
        if a.node != b.node {
            if let Some(n) = &a.node {
                self.nodes.remove(n, id, part);
            }
        }
        if a.health != b.health {
            self.health.remove(&a.health, id, part);
        }
        if !self.declared.is_empty() && !Arc::ptr_eq(&a.meta, &b.meta) {
            self.meta_rows(false, id, part, &a.meta.tree, Some(&b.meta.tree));
        }
    }

    /// Moves the version of every built-in row `a` has and `b` lacks (all of `a`'s
    /// when `b` is None), before `a` is replaced by `b` or removed: a row's version
    /// moves before any entry in it stops matching it (see [`Registry::stamp`]).
    /// Declared rows are left alone: no stamp is taken of them.
    fn touch_rows(&self, a: &Entry<R, P>, b: Option<&Entry<R, P>>) {
        let part = a.part;
        for c in a.caps.iter().filter(|c| b.is_none_or(|b| !b.has_cap(c))) {
            self.caps.touch(c, part);
        }
        if let Some(n) = &a.node {
            if b.is_none_or(|b| b.node.as_ref() != Some(n)) {
                self.nodes.touch(n, part);
            }
        }
        if b.is_none_or(|b| b.health != a.health) {
            self.health.touch(&a.health, part);
        }
    }

    /// Removes the live-or-not entry of `id` if `f(entry)`, its rows touched under the
    /// entry's write guard ([`Registry::touch_rows`]).
    fn remove_touched(
        &self,
        id: &str,
        f: impl Fn(&Entry<R, P>) -> bool,
    ) -> Option<Arc<Entry<R, P>>> {
        self.entries.remove_if(id, |e| {
            let leaves = f(e);
            if leaves {
                self.touch_rows(e, None);
            }
            leaves
        })
    }

    /// Called for every entry leaving the map by any path but the lease heap.
    fn forget(&self, e: &Entry<R, P>) {
        self.remove_rows(e);
        if e.lease.is_some() {
            let purge = {
                let mut s = self.lease_shard(e.token).lock();
                s.stale += 1;
                s.stale >= STALE_MIN && 2 * s.stale >= s.heap.len()
            };
            if purge {
                self.purge_stale(e.token);
            }
        }
    }

    /// Drops heap items whose registration is gone. The heap is taken out so that the
    /// entry lookups run without the shard lock.
    fn purge_stale(&self, token: u64) {
        let shard = self.lease_shard(token);
        let items = {
            let mut s = shard.lock();
            s.stale = 0;
            std::mem::take(&mut s.heap)
        };
        let kept: Vec<_> = items
            .into_vec()
            .into_iter()
            .filter(|Reverse((_, t, id))| self.entries.with(id, |e| e.token == *t) == Some(true))
            .collect();
        shard.lock().heap.extend(kept);
    }

    fn push_lease(&self, deadline: i64, token: u64, id: Arc<str>) {
        self.lease_shard(token)
            .lock()
            .heap
            .push(Reverse((deadline, token, id)));
    }

    // ---- writes ----

    /// Registers `spec`. Replaces an expired entry with the same id (returned in
    /// `grave`). On `Taken` nothing of the attempt stays behind.
    pub fn register(
        &self,
        spec: Spec<R, P>,
        grave: &mut Grave<R, P>,
    ) -> Result<Arc<Entry<R, P>>, RegistryError> {
        let now = self.clock.now_nanos();
        if spec.ttl.is_some() {
            self.uses_ttl.store(true, Ordering::Release);
        }
        let part = home_part();
        let (caps, node, health) = self.add_rows(
            &spec.id,
            &normalize_caps(spec.caps),
            spec.node.as_ref(),
            &spec.health,
            part,
        );
        if !self.declared.is_empty() {
            self.meta_rows(true, &spec.id, part, &spec.meta.tree, None);
        }
        let e = Arc::new(Entry {
            id: spec.id,
            token: spec.token,
            version: spec.token,
            part,
            caps,
            node,
            health,
            meta: spec.meta,
            registered_at: now,
            expires_at: spec.ttl.map_or(NEVER, |d| now.saturating_add(d)),
            lease: spec.ttl,
            reg: spec.reg,
        });
        let read_now = self.now();
        let outcome = self.entries.insert(&e, |old| old.is_live(read_now));
        match outcome {
            Ok(replaced) => {
                if let Some(old) = replaced {
                    self.forget(&old);
                    grave.push(old);
                }
                if e.lease.is_some() {
                    self.push_lease(e.expires_at, e.token, e.id.clone());
                }
                self.reclaim_some(e.token, grave);
                Ok(e)
            }
            Err(()) => {
                self.remove_rows(&e);
                let id = e.id.clone();
                grave.push(e);
                Err(RegistryError::Taken(id))
            }
        }
    }

    /// Removes the entry; returns it (live or not) for the caller to drop.
    pub fn unregister(&self, id: &str, grave: &mut Grave<R, P>) -> Option<Arc<Entry<R, P>>> {
        let old = self.remove_touched(id, |_| true)?;
        self.forget(&old);
        self.reclaim_some(old.token, grave);
        Some(old)
    }

    /// Removes the entry only if it is still the registration `token` (owner cleanup:
    /// a watch never removes a later registration of the same id).
    pub fn remove_token(&self, id: &str, token: u64) -> Option<Arc<Entry<R, P>>> {
        let old = self.remove_touched(id, |e| e.token == token)?;
        self.forget(&old);
        Some(old)
    }

    /// The entry as stored, live or not.
    fn raw(&self, id: &str) -> Option<Arc<Entry<R, P>>> {
        self.entries.get(id)
    }

    /// Publishes `new` if the entry is still at `expected`'s version; returns the
    /// replaced entry. `touch(old)` runs under the entry's write guard before it is
    /// replaced (to touch the rows it leaves: [`Registry::touch_rows`]).
    fn swap(
        &self,
        expected: &Entry<R, P>,
        new: &Arc<Entry<R, P>>,
        touch: impl FnOnce(&Entry<R, P>),
    ) -> Option<Arc<Entry<R, P>>> {
        self.entries.replace(&expected.id, |cur| {
            (cur.version == expected.version).then(|| {
                touch(cur);
                new.clone()
            })
        })
    }

    /// Changes the live entry's fields as one step.
    pub fn update(
        &self,
        id: &str,
        changes: &Changes<P>,
        grave: &mut Grave<R, P>,
    ) -> Result<Arc<Entry<R, P>>, RegistryError> {
        loop {
            let now = self.now();
            let cur = match self.raw(id) {
                Some(e) if e.is_live(now) => e,
                _ => return Err(RegistryError::Missing(id.into())),
            };
            let mut new = cur.next_version(next_token());
            if let Some(c) = &changes.caps {
                new.caps = c.clone();
            }
            if let Some(n) = &changes.node {
                new.node.clone_from(n);
            }
            if let Some(h) = &changes.health {
                new.health = h.clone();
            }
            if let Some(m) = &changes.meta {
                new.meta = m.clone();
            }
            self.add_diff(&mut new, &cur);
            let new = Arc::new(new);
            if let Some(old) = self.swap(&cur, &new, |old| self.touch_rows(old, Some(&new))) {
                self.remove_diff(&old, &new);
                grave.push(old);
                self.reclaim_some(new.token, grave);
                return Ok(new);
            }
            // Another writer got there first: take our rows back and retry.
            self.remove_diff(&new, &cur);
            grave.push(new);
        }
    }

    /// Renews the lease of a live entry (with `ttl`, or its own lease duration).
    /// True if the entry is live.
    pub fn heartbeat(&self, id: &str, ttl: Option<i64>, grave: &mut Grave<R, P>) -> bool {
        if ttl.is_some() {
            self.uses_ttl.store(true, Ordering::Release);
        }
        loop {
            let now = self.clock.now_nanos();
            let cur = match self.raw(id) {
                Some(e) if e.is_live(now) => e,
                _ => return false,
            };
            let Some(d) = ttl.or(cur.lease) else {
                return true;
            };
            let mut new = cur.next_version(next_token());
            new.expires_at = now.saturating_add(d);
            new.lease = Some(d);
            let earlier = new.expires_at < cur.expires_at;
            let new = Arc::new(new);
            let touch = |old: &Entry<R, P>| {
                // An earlier deadline than a stamp's holder may have noted.
                if earlier {
                    self.touch_rows(old, None);
                }
            };
            if let Some(old) = self.swap(&cur, &new, touch) {
                if old.lease.is_none() {
                    self.push_lease(new.expires_at, new.token, new.id.clone());
                }
                grave.push(old);
                self.reclaim_some(new.token, grave);
                return true;
            }
            grave.push(new);
        }
    }

    // ---- reclamation ----

    /// Pops up to `budget` due items of one lease shard and removes their entries if
    /// they really expired; renewed ones go back at their new deadline.
    fn reclaim_shard(
        &self,
        shard: usize,
        now: i64,
        budget: usize,
        grave: &mut Grave<R, P>,
    ) -> usize {
        // Callers pass `0..LEASE_SHARDS` or `token % LEASE_SHARDS`.
        let lock = &self.leases[shard % LEASE_SHARDS];
        let mut due = Vec::new();
        {
            let mut s = lock.lock();
            while due.len() < budget {
                match s.heap.peek() {
                    Some(Reverse((d, _, _))) if *d <= now => {
                        if let Some(Reverse(item)) = s.heap.pop() {
                            due.push(item);
                        }
                    }
                    _ => break,
                }
            }
        }
        let mut removed = 0;
        for (d, token, id) in due {
            match self.raw(&id) {
                Some(e) if e.token == token => {
                    if e.is_live(now) {
                        self.push_lease(e.expires_at, token, id);
                    } else if let Some(old) =
                        self.entries.remove_if(&id, |x| x.version == e.version)
                    {
                        self.remove_rows(&old);
                        grave.push(old);
                        removed += 1;
                    } else {
                        // Changed under us (renewed or removed): look again later.
                        self.push_lease(d, token, id);
                    }
                }
                _ => {
                    let mut s = lock.lock();
                    s.stale = s.stale.saturating_sub(1);
                }
            }
        }
        removed
    }

    /// Amortised reclamation on a write.
    fn reclaim_some(&self, token: u64, grave: &mut Grave<R, P>) {
        if self.uses_ttl.load(Ordering::Acquire) {
            let now = self.clock.now_nanos();
            self.reclaim_shard((token as usize) % LEASE_SHARDS, now, RECLAIM_BUDGET, grave);
        }
    }

    /// Reclaims every due lease item (each item is popped once, so this is amortised).
    pub fn reclaim_due(&self, grave: &mut Grave<R, P>) -> usize {
        if !self.uses_ttl.load(Ordering::Acquire) {
            return 0;
        }
        let now = self.clock.now_nanos();
        (0..LEASE_SHARDS)
            .map(|s| self.reclaim_shard(s, now, usize::MAX, grave))
            .sum()
    }

    /// Removes every expired entry now (a full scan); returns how many.
    pub fn expire(&self, grave: &mut Grave<R, P>) -> usize {
        if !self.uses_ttl.load(Ordering::Acquire) {
            return 0;
        }
        let now = self.clock.now_nanos();
        let mut n = self.reclaim_due(grave);
        // Entries whose lease a heartbeat shortened are due before their heap item.
        let mut expired: Vec<(Arc<str>, u64)> = Vec::new();
        self.entries.any(|e| {
            if !e.is_live(now) {
                expired.push((e.id.clone(), e.version));
            }
            false
        });
        for (id, version) in expired {
            if let Some(old) = self.entries.remove_if(&id, |e| e.version == version) {
                self.forget(&old);
                grave.push(old);
                n += 1;
            }
        }
        // The scan is O(n) anyway: drop every stale heap item too.
        for s in 0..LEASE_SHARDS {
            self.purge_stale(s as u64);
        }
        n
    }

    // ---- reads ----

    /// The live entry for `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Entry<R, P>>> {
        let now = self.now();
        self.raw(id).filter(|e| e.is_live(now))
    }

    /// The registration token of `id`'s entry as stored (live or not).
    pub fn token(&self, id: &str) -> Option<u64> {
        self.entries.with(id, |e| e.token)
    }

    /// Whether `id`'s entry as stored (live or not) is another version than `version`:
    /// `None` without an entry, `Some(None)` for the same version, else the entry.
    pub fn changed(&self, id: &str, version: u64) -> Option<Option<Arc<Entry<R, P>>>> {
        self.entries
            .with(id, |e| (e.version != version).then(|| e.clone()))
    }

    /// Entries in the map (expired ones not yet reclaimed included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    pub fn index_sizes(&self) -> IndexSizes {
        IndexSizes {
            capabilities: self.caps.keys(),
            nodes: self.nodes.keys(),
            health: self.health.keys(),
            lease_items: self.leases.iter().map(|s| s.lock().heap.len()).sum(),
        }
    }

    /// Distinct keys and rows of each declared index, in declaration order.
    pub fn declared_sizes(&self) -> Vec<(usize, usize)> {
        self.declared
            .iter()
            .map(|d| (d.index.keys(), d.index.rows()))
            .collect()
    }

    /// Where a query starts: the smallest index set among its indexed criteria (a
    /// capability, node or health value, or the keys of an `eq`/`in` condition on a
    /// declared path with its host-judged set), or a full scan.
    fn plan<'s, 'a>(&'s self, q: &Query<'a>) -> Plan<'s, 'a> {
        let mut best = [
            (&self.caps, q.capability),
            (&self.nodes, q.node),
            (&self.health, q.health),
        ]
        .into_iter()
        .filter_map(|(idx, v)| v.map(|v| (idx, v, idx.size(v))))
        .min_by_key(|(_, _, n)| *n)
        .map_or(Plan::Scan, |(idx, v, n)| Plan::Value(idx, v, n));
        if self.declared.is_empty() || best.size() == Some(0) {
            return best;
        }
        for c in q.conds {
            let Some(d) = self.declared.iter().find(|d| d.path == c.path) else {
                continue;
            };
            let mut buf = KeyBuf::default();
            if !cond_keys(c, &mut buf) {
                continue;
            }
            let n =
                buf.sorted().iter().map(|k| d.index.size(k)).sum::<usize>() + d.index.size(K_HOST);
            if best.size().is_none_or(|b| n < b) {
                best = Plan::Keys(&d.index, buf, n);
            }
        }
        best
    }

    /// How many entries a query will read (to decide whether to release the GIL).
    pub fn estimate(&self, q: &Query<'_>) -> usize {
        self.plan(q).size().unwrap_or_else(|| self.entries.len())
    }

    /// The built-in row a query reads whole: exactly one of capability, node and health,
    /// and no condition.
    fn row<'s, 'a>(&'s self, q: &Query<'a>) -> Option<(&'s Index<str>, &'a str)> {
        if !q.conds.is_empty() {
            return None;
        }
        match (q.capability, q.node, q.health) {
            (Some(c), None, None) => Some((&self.caps, c)),
            (None, Some(n), None) => Some((&self.nodes, n)),
            (None, None, Some(h)) => Some((&self.health, h)),
            _ => None,
        }
    }

    /// For a query of one capability, node or health and nothing else: the stamp of
    /// that value's rows now, and how many ids they hold (what [`Registry::estimate`]
    /// gives). `None` for any other query.
    ///
    /// A [`Clean`] answer of [`Registry::select`] holds for as long as the stamp equals
    /// its own and the clock is before its deadline: writers add rows before an entry
    /// joins a value (moving the row's version), and move the version of an entry's
    /// rows before it leaves them ([`Registry::touch_rows`]: removal, an update that
    /// drops the value, a heartbeat that brings the deadline forward); an entry that
    /// expires needs no touch, as the deadline was the earliest of the answer's. So
    /// each id of the answer still matched when the version of its row was read.
    pub fn stamp(&self, q: &Query<'_>) -> Option<(Stamp, usize)> {
        self.row(q).map(|(idx, v)| idx.stamp(v))
    }

    fn check(e: &Entry<R, P>, q: &Query<'_>, now: i64) -> Tri {
        if !e.is_live(now)
            || q.capability.is_some_and(|c| !e.has_cap(c))
            || q.node.is_some_and(|n| e.node.as_deref() != Some(n))
            || q.health.is_some_and(|h| &*e.health != h)
        {
            return Tri::No;
        }
        Tri::all(q.conds.iter().map(|c| c.eval(&e.meta.tree)))
    }

    /// Calls `sink(entry, answer)` on each entry that matches (`Yes`) or may match
    /// (`Unknown`: a condition is left to the caller) when read, until `sink` returns
    /// true; true if it did. Candidates come from the smallest index set (copied out,
    /// guard released); each is then checked against its entry. `sink` runs under the
    /// entry's shard read guard: it may clone the `Arc` (never drop a last reference)
    /// and must not touch the registry.
    ///
    /// For a query that reads one built-in row whole ([`Registry::stamp`]), `clean` is
    /// set when every candidate matched, none was left out, and the row's stamp after
    /// the reads equals the one copied with the ids: the entries passed on were then the
    /// row's exact content at that instant.
    pub fn scan(
        &self,
        q: &Query<'_>,
        mut sink: impl FnMut(&Arc<Entry<R, P>>, Tri) -> bool,
        clean: &mut Option<Clean>,
    ) -> bool {
        let now = self.now();
        let mut buf = IdBuf::default();
        match self.plan(q) {
            Plan::Value(idx, v, _) => {
                let mut stamp = Stamp::default();
                idx.ids_into(v, &mut buf, &mut stamp);
                // Whether every candidate matched, and their earliest deadline.
                let mut exact = true;
                let mut deadline = NEVER;
                let mut once = Once::new(&buf);
                let stopped = buf.iter().any(|(id, part)| {
                    let seen = self.entries.with_hash(id, |h, e| {
                        // A row in another part than the entry's is a writer's in flight;
                        // an id passed on before was registered again meanwhile.
                        let t = if e.part == part {
                            Self::check(e, q, now)
                        } else {
                            Tri::No
                        };
                        if t == Tri::No || !once.first(h, id) {
                            exact = false;
                            return false;
                        }
                        deadline = deadline.min(e.expires_at);
                        sink(e, t)
                    });
                    seen.unwrap_or_else(|| {
                        exact = false;
                        false
                    })
                });
                if exact && !stopped && self.row(q).is_some() && idx.stamp(v).0 == stamp {
                    *clean = Some(Clean { stamp, deadline });
                }
                stopped
            }
            Plan::Keys(idx, keys, _) => {
                let mut sets = 0;
                let mut stamp = Stamp::default();
                for k in keys.sorted().into_iter().chain([K_HOST]) {
                    sets += usize::from(idx.ids_into(k, &mut buf, &mut stamp) > 0);
                }
                // Sets of several keys (and the host's) may share an id.
                let mut once = if sets > 1 {
                    Once::always(&buf)
                } else {
                    Once::new(&buf)
                };
                let stopped = buf.iter().any(|(id, part)| {
                    self.entries.with_hash(id, |h, e| {
                        e.part == part
                            && match Self::check(e, q, now) {
                                Tri::No => false,
                                t => once.first(h, id) && sink(e, t),
                            }
                    }) == Some(true)
                });
                stopped
            }
            Plan::Scan => self.entries.any(|e| match Self::check(e, q, now) {
                Tri::No => false,
                t => sink(e, t),
            }),
        }
    }

    /// Entries matching every criterion when read (see [`Registry::scan`]), stopping
    /// after `q.limit` sure matches.
    pub fn find(&self, q: &Query<'_>) -> Found<R, P> {
        let mut hits = Vec::new();
        let sel = self.select(
            q,
            |_| false,
            |e| {
                hits.push(Hit {
                    entry: e.clone(),
                    unsure: false,
                });
            },
        );
        hits.extend(sel.deferred);
        Found {
            hits,
            truncated: q.limit.is_some_and(|l| sel.sure >= l),
        }
    }

    /// A query whose caller judges some entries itself. Each entry that matches when
    /// read goes to `sure` unless `host` claims it; claimed entries, and entries with a
    /// condition left undecided here, are returned for the caller to judge. Stops once
    /// `q.limit` entries went to `sure` (at once for a limit of 0). `host` and `sure` run
    /// under the entry's shard read guard (see [`Registry::scan`]): `sure` may clone the
    /// `Arc`, or just count. The answer is [`Clean`] when `sure` got the whole of a
    /// stamped row ([`Registry::stamp`]) and nothing was deferred.
    pub fn select(
        &self,
        q: &Query<'_>,
        mut host: impl FnMut(&Entry<R, P>) -> bool,
        mut sure: impl FnMut(&Arc<Entry<R, P>>),
    ) -> Selected<R, P> {
        let mut sel = Selected {
            sure: 0,
            deferred: Vec::new(),
            clean: None,
        };
        let cap = q.limit.unwrap_or(usize::MAX);
        if cap == 0 {
            return sel;
        }
        let mut clean = None;
        let stopped = self.scan(
            q,
            |e, t| {
                let unsure = t == Tri::Unknown;
                if unsure || host(e) {
                    sel.deferred.push(Hit {
                        entry: e.clone(),
                        unsure,
                    });
                    return false;
                }
                sure(e);
                sel.sure += 1;
                sel.sure >= cap
            },
            &mut clean,
        );
        if !stopped && sel.deferred.is_empty() {
            sel.clean = clean;
        }
        sel
    }

    // ---- registrations the host checks ----

    /// Announces a registration the host will check (call before publishing it).
    pub fn expect_host_checks(&self) {
        self.host.any.store(true, Ordering::Release);
    }

    /// Whether any registration the host checks was ever announced (read after the
    /// entry in question: see [`HostChecks`]).
    pub fn host_checks(&self) -> bool {
        self.host.any.load(Ordering::Acquire)
    }

    /// Queues published registrations (`(id, token)`) for [`Registry::sweep_host`].
    pub fn queue_host_checks(&self, items: Vec<(Arc<str>, u64)>) {
        if items.is_empty() {
            return;
        }
        self.host.len.fetch_add(items.len(), Ordering::Relaxed);
        self.host.queue.lock().extend(items);
    }

    /// Judges up to `budget` queued registrations with `dead`, called with no guard or
    /// lock held (it may run host code), and removes those it calls dead; returns how
    /// many. A registration that is gone or was replaced leaves the queue; one that
    /// lives on goes to its back. Removed entries go to `grave`.
    pub fn sweep_host(
        &self,
        budget: usize,
        mut dead: impl FnMut(&Arc<Entry<R, P>>) -> bool,
        grave: &mut Grave<R, P>,
    ) -> usize {
        if self.host.len.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let batch: Vec<(Arc<str>, u64)> = {
            let mut q = self.host.queue.lock();
            let n = budget.min(q.len());
            q.drain(..n).collect()
        };
        let drained = batch.len();
        let mut removed = 0;
        let mut keep = Vec::with_capacity(drained);
        for (id, token) in batch {
            match self.get(&id) {
                Some(e) if e.token == token => {
                    if !dead(&e) {
                        keep.push((id, token));
                    } else if let Some(old) = self.remove_token(&id, token) {
                        grave.push(old);
                        removed += 1;
                    }
                }
                // Gone by other means, or a later registration of the id.
                _ => {}
            }
        }
        // kept <= drained: the count never underflows.
        self.host
            .len
            .fetch_sub(drained - keep.len(), Ordering::Relaxed);
        if !keep.is_empty() {
            self.host.queue.lock().extend(keep);
        }
        removed
    }

    /// Takes every entry out, with its index rows and lease items (for the host's
    /// garbage collector, on a registry nobody else uses any more). The entries are
    /// handed back for the caller to drop.
    pub fn clear(&self, grave: &mut Grave<R, P>) {
        let queued = std::mem::take(&mut *self.host.queue.lock());
        self.host.len.store(0, Ordering::Relaxed);
        drop(queued);
        for e in self.entries.take_all() {
            self.remove_rows(&e);
            grave.push(e);
        }
        for s in &*self.leases {
            let heap = {
                let mut s = s.lock();
                s.stale = 0;
                std::mem::take(&mut s.heap)
            };
            drop(heap);
        }
    }

    /// Calls `f` on every entry in a shard that can be read without waiting (the host's
    /// garbage collector must never block); `Ok(false)` if one was skipped. `f` runs
    /// under the shard's read guard.
    pub fn try_for_each<X>(
        &self,
        f: impl FnMut(&Arc<Entry<R, P>>) -> Result<(), X>,
    ) -> Result<bool, X> {
        self.entries.try_for_each(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;

    type Reg = Registry<u32, ()>;

    fn s(x: &str) -> Arc<str> {
        x.into()
    }

    fn meta(tree: Value) -> Arc<Metadata<()>> {
        Arc::new(Metadata { tree, extra: () })
    }

    fn spec(
        r: &Reg,
        id: &str,
        caps: &[&str],
        node: Option<&str>,
        ttl: Option<i64>,
    ) -> Spec<u32, ()> {
        Spec {
            id: s(id),
            token: r.next_token(),
            caps: caps.iter().map(|c| s(c)).collect(),
            node: node.map(s),
            health: s("healthy"),
            meta: meta(Value::Map(Box::new([]))),
            ttl,
            reg: Arc::new(0),
        }
    }

    fn ids(r: &Reg, q: &Query<'_>) -> Vec<String> {
        let mut v: Vec<String> = r
            .find(q)
            .hits
            .iter()
            .map(|h| h.entry.id.to_string())
            .collect();
        v.sort();
        v
    }

    /// At rest the indexes hold exactly what the entries say.
    fn assert_consistent(r: &Reg) {
        use std::collections::BTreeMap;
        type Rows<K> = BTreeMap<Arc<K>, BTreeMap<String, u32>>;
        let mut caps: Rows<str> = BTreeMap::new();
        let mut nodes: Rows<str> = BTreeMap::new();
        let mut health: Rows<str> = BTreeMap::new();
        let mut declared: Vec<Rows<[u8]>> = vec![BTreeMap::new(); r.declared.len()];
        // Each of an entry's rows is in its entry's part (the snapshots below check
        // that no id is in two parts).
        let in_part = |idx: &Index<str>, v: &str, e: &Entry<u32, ()>| {
            let row = idx.part(e.part).get(v);
            assert!(
                row.is_some_and(|r| r.ids.contains_key(&*e.id)),
                "{} {v}",
                e.id
            );
        };
        r.entries.any(|e| {
            in_part(&r.health, &e.health, e);
            if let Some(n) = &e.node {
                in_part(&r.nodes, n, e);
            }
            for c in e.caps.iter() {
                in_part(&r.caps, c, e);
                caps.entry(c.clone())
                    .or_default()
                    .insert(e.id.to_string(), 1);
            }
            if let Some(n) = &e.node {
                nodes
                    .entry(n.clone())
                    .or_default()
                    .insert(e.id.to_string(), 1);
            }
            health
                .entry(e.health.clone())
                .or_default()
                .insert(e.id.to_string(), 1);
            for (d, rows) in r.declared.iter().zip(declared.iter_mut()) {
                let mut buf = KeyBuf::default();
                entry_keys(&e.meta.tree, &d.path, &mut buf);
                for k in buf.sorted() {
                    rows.entry(Arc::from(k))
                        .or_default()
                        .insert(e.id.to_string(), 1);
                }
            }
            false
        });
        assert_eq!(r.caps.snapshot(), caps);
        assert_eq!(r.nodes.snapshot(), nodes);
        assert_eq!(r.health.snapshot(), health);
        for (d, rows) in r.declared.iter().zip(declared) {
            assert_eq!(d.index.snapshot(), rows);
        }
    }

    #[test]
    fn register_find_update_unregister() {
        let r = Reg::new(Clock::Monotonic, 2);
        let mut g = Vec::new();
        r.register(spec(&r, "a", &["x", "y", "x"], Some("n1"), None), &mut g)
            .unwrap();
        r.register(spec(&r, "b", &["y"], None, None), &mut g)
            .unwrap();
        assert_eq!(
            r.register(spec(&r, "a", &["z"], None, None), &mut g)
                .unwrap_err(),
            RegistryError::Taken(s("a"))
        );
        assert_consistent(&r);
        assert_eq!(&*r.get("a").unwrap().caps, &[s("x"), s("y")]);
        assert_eq!(
            ids(
                &r,
                &Query {
                    capability: Some("y"),
                    ..Query::default()
                }
            ),
            ["a", "b"]
        );
        assert_eq!(
            ids(
                &r,
                &Query {
                    capability: Some("y"),
                    node: Some("n1"),
                    ..Query::default()
                }
            ),
            ["a"]
        );
        let ch = Changes {
            caps: Some(normalize_caps(vec![s("z")])),
            node: Some(None),
            health: Some(s("degraded")),
            meta: None,
        };
        r.update("a", &ch, &mut g).unwrap();
        assert_consistent(&r);
        assert_eq!(
            ids(
                &r,
                &Query {
                    capability: Some("y"),
                    ..Query::default()
                }
            ),
            ["b"]
        );
        assert_eq!(
            ids(
                &r,
                &Query {
                    health: Some("degraded"),
                    ..Query::default()
                }
            ),
            ["a"]
        );
        assert!(r.unregister("a", &mut g).is_some());
        assert!(r.unregister("a", &mut g).is_none());
        assert_eq!(
            r.update("a", &ch, &mut g).unwrap_err(),
            RegistryError::Missing(s("a"))
        );
        r.unregister("b", &mut g);
        assert_consistent(&r);
        assert_eq!(
            r.index_sizes(),
            IndexSizes {
                capabilities: 0,
                nodes: 0,
                health: 0,
                lease_items: 0
            }
        );
    }

    #[test]
    fn remove_token_spares_a_later_registration() {
        let r = Reg::new(Clock::Monotonic, 2);
        let mut g = Vec::new();
        let first = r.register(spec(&r, "a", &[], None, None), &mut g).unwrap();
        r.unregister("a", &mut g);
        r.register(spec(&r, "a", &[], None, None), &mut g).unwrap();
        assert!(r.remove_token("a", first.token).is_none());
        assert!(r.get("a").is_some());
    }

    #[test]
    fn leases_expire_exclusively_and_heartbeats_renew() {
        let m = Arc::new(ManualClock::new(0));
        let r = Reg::new(Clock::Manual(m.clone()), 2);
        let mut g = Vec::new();
        r.register(spec(&r, "a", &["c"], None, Some(10)), &mut g)
            .unwrap();
        r.register(spec(&r, "b", &["c"], None, Some(10)), &mut g)
            .unwrap();
        m.advance(9).unwrap();
        assert!(r.heartbeat("a", None, &mut g));
        m.advance(1).unwrap(); // b: now == t + d -> expired
        assert!(r.get("b").is_none());
        assert!(!r.heartbeat("b", None, &mut g));
        assert_eq!(
            ids(
                &r,
                &Query {
                    capability: Some("c"),
                    ..Query::default()
                }
            ),
            ["a"]
        );
        // An expired id can be registered again.
        r.register(spec(&r, "b", &[], None, None), &mut g).unwrap();
        assert_consistent(&r);
        m.advance(100).unwrap();
        assert_eq!(r.expire(&mut g), 1);
        assert_eq!(r.len(), 1);
        assert_consistent(&r);
        assert_eq!(r.index_sizes().lease_items, 0);
    }

    #[test]
    fn amortised_reclaim_bounds_expired_entries() {
        let m = Arc::new(ManualClock::new(0));
        let r = Reg::new(Clock::Manual(m.clone()), 2);
        let mut g = Vec::new();
        for i in 0..1000 {
            r.register(spec(&r, &i.to_string(), &["c"], None, Some(5)), &mut g)
                .unwrap();
            m.advance(1).unwrap();
        }
        // Only ~5 are live; writes reclaimed most of the rest.
        assert!(r.len() < 100, "len {}", r.len());
        r.reclaim_due(&mut g);
        // Registered at 996..=999 with ttl 5; now is 1000.
        assert_eq!(r.len(), 4);
        assert_consistent(&r);
    }

    #[test]
    fn select_passes_on_sure_matches_and_defers_the_rest() {
        let r = Reg::new(Clock::Monotonic, 2);
        let mut g = Vec::new();
        for i in 0..10 {
            // Every third one is claimed by the host (a thread owner, say); 8 and 9 have
            // opaque metadata, so a condition on it is left undecided.
            let node = (i % 3 == 0).then_some("t");
            let mut sp = spec(&r, &i.to_string(), &["x"], node, None);
            if i >= 8 {
                sp.meta = meta(map(vec![("k", Value::Opaque)]));
            } else {
                sp.meta = meta(map(vec![("k", Value::Int(1))]));
            }
            r.register(sp, &mut g).unwrap();
        }
        // Counting copies nothing out: each entry passed on is held by the map alone.
        let all = Query {
            capability: Some("x"),
            ..Query::default()
        };
        let sel = r.select(&all, |_| false, |e| assert_eq!(Arc::strong_count(e), 1));
        assert_eq!((sel.sure, sel.deferred.len()), (10, 0));

        let claimed = |e: &Entry<u32, ()>| e.node.is_some();
        let conds = [cond("k", "eq", Value::Int(1))];
        let q = Query {
            capability: Some("x"),
            conds: &conds,
            ..Query::default()
        };
        let mut passed = Vec::new();
        let sel = r.select(&q, claimed, |e| passed.push(e.id.to_string()));
        passed.sort();
        assert_eq!(passed, ["1", "2", "4", "5", "7"]);
        assert_eq!(sel.sure, 5);
        let mut deferred: Vec<(String, bool)> = sel
            .deferred
            .iter()
            .map(|h| (h.entry.id.to_string(), h.unsure))
            .collect();
        deferred.sort();
        let want = [
            ("0", false),
            ("3", false),
            ("6", false),
            ("8", true),
            ("9", true),
        ];
        assert_eq!(deferred, want.map(|(i, u)| (i.to_owned(), u)));

        // A limit counts sure matches only, and stops the scan there.
        let mut n = 0;
        let sel = r.select(
            &Query {
                limit: Some(2),
                ..q
            },
            claimed,
            |_| n += 1,
        );
        assert_eq!((n, sel.sure), (2, 2));
        let sel = r.select(
            &Query {
                limit: Some(0),
                ..q
            },
            claimed,
            |_| n += 1,
        );
        assert_eq!((n, sel.sure, sel.deferred.len()), (2, 0, 0));

        // `find` is a select whose host claims nothing.
        let found = r.find(&Query {
            limit: Some(3),
            ..q
        });
        assert!(found.truncated);
        assert_eq!(found.hits.iter().filter(|h| !h.unsure).count(), 3);
    }

    #[test]
    fn sweep_host_judges_a_budget_and_requeues_the_living() {
        let r = Reg::new(Clock::Monotonic, 2);
        let mut g = Vec::new();
        assert!(!r.host_checks());
        r.expect_host_checks();
        assert!(r.host_checks());
        let mut queued = Vec::new();
        for id in ["a", "b", "c"] {
            let e = r.register(spec(&r, id, &[], None, None), &mut g).unwrap();
            queued.push((e.id.clone(), e.token));
        }
        r.queue_host_checks(queued);
        r.unregister("c", &mut g);
        let mut judged = Vec::new();
        let mut grave = Vec::new();
        let dead = |e: &Arc<Entry<u32, ()>>| {
            judged.push(e.id.to_string());
            &*e.id == "a"
        };
        // Budget 2: a (dead: removed) and b (alive: to the back).
        assert_eq!(r.sweep_host(2, dead, &mut grave), 1);
        assert_eq!(judged, ["a", "b"]);
        assert_eq!(grave.len(), 1);
        assert!(r.get("a").is_none() && r.get("b").is_some());
        // c is gone by other means: it leaves the queue unjudged; b stays.
        judged.clear();
        let dead = |e: &Arc<Entry<u32, ()>>| {
            judged.push(e.id.to_string());
            false
        };
        assert_eq!(r.sweep_host(usize::MAX, dead, &mut grave), 0);
        assert_eq!(judged, ["b"]);
        assert_eq!(r.host.len.load(Ordering::Relaxed), 1);
        // A later registration of b is not the one queued: it leaves the queue.
        r.unregister("b", &mut g);
        r.register(spec(&r, "b", &[], None, None), &mut g).unwrap();
        assert_eq!(r.sweep_host(usize::MAX, |_| true, &mut grave), 0);
        assert!(r.get("b").is_some());
        assert_eq!(r.host.len.load(Ordering::Relaxed), 0);
        assert!(r.host.queue.lock().is_empty());
        // `clear` empties the queue too.
        r.queue_host_checks(vec![(s("b"), 1)]);
        r.clear(&mut grave);
        assert_eq!(r.host.len.load(Ordering::Relaxed), 0);
        assert!(r.host.queue.lock().is_empty());
    }

    #[test]
    fn value_map_sorts_and_cond_splits_its_path() {
        let m = Value::map(vec![("b".into(), Value::Int(2)), ("a".into(), Value::Null)]);
        assert_eq!(
            m,
            Value::Map(Box::new([
                ("a".into(), Value::Null),
                ("b".into(), Value::Int(2))
            ]))
        );
        let c = Cond::new("a.b", Op::Eq, Value::Int(1), false);
        assert_eq!(&*c.path, &[Box::<str>::from("a"), "b".into()]);
        let nested = map(vec![("a", map(vec![("b", Value::Int(1))]))]);
        assert_eq!(c.eval(&nested), Tri::Yes);
    }

    #[test]
    fn stale_lease_items_are_purged() {
        let m = Arc::new(ManualClock::new(0));
        let r = Reg::new(Clock::Manual(m), 2);
        let mut g = Vec::new();
        for i in 0..10_000 {
            r.register(spec(&r, &i.to_string(), &[], None, Some(1_000_000)), &mut g)
                .unwrap();
            r.unregister(&i.to_string(), &mut g);
        }
        assert!(r.index_sizes().lease_items < 2 * LEASE_SHARDS * STALE_MIN);
    }

    fn map(items: Vec<(&str, Value)>) -> Value {
        Value::map(items.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    fn cond(path: &str, op: &str, value: Value) -> Cond {
        Cond::new(path, Op::parse(op).unwrap(), value, false)
    }

    #[test]
    fn where_conditions() {
        let tree = map(vec![
            ("gpu", Value::Int(2)),
            ("name", Value::Str("a".into())),
            (
                "tags",
                Value::Seq(
                    Box::new([Value::Str("x".into()), Value::Str("y".into())]),
                    false,
                ),
            ),
            ("inner", map(vec![("load", Value::Float(0.5))])),
            ("odd", Value::Opaque),
        ]);
        let list = |xs: Vec<Value>| Value::Seq(xs.into(), false);
        assert_eq!(cond("gpu", "eq", Value::Float(2.0)).eval(&tree), Tri::Yes);
        assert_eq!(cond("gpu", "gte", Value::Int(2)).eval(&tree), Tri::Yes);
        assert_eq!(cond("gpu", "gt", Value::Int(2)).eval(&tree), Tri::No);
        assert_eq!(
            cond("gpu", "lt", Value::Str("z".into())).eval(&tree),
            Tri::No
        );
        assert_eq!(
            cond("name", "ne", Value::Str("b".into())).eval(&tree),
            Tri::Yes
        );
        assert_eq!(
            cond("tags", "eq", Value::Str("y".into())).eval(&tree),
            Tri::Yes
        );
        assert_eq!(
            cond("tags", "in", list(vec![Value::Str("y".into())])).eval(&tree),
            Tri::Yes
        );
        assert_eq!(
            cond("name", "not_in", list(vec![Value::Str("y".into())])).eval(&tree),
            Tri::Yes
        );
        assert_eq!(
            cond("inner.load", "lte", Value::Float(0.5)).eval(&tree),
            Tri::Yes
        );
        assert_eq!(
            cond("inner.missing", "ne", Value::Null).eval(&tree),
            Tri::No
        );
        assert_eq!(cond("gpu.x", "eq", Value::Null).eval(&tree), Tri::No);
        assert_eq!(cond("odd", "eq", Value::Int(1)).eval(&tree), Tri::Unknown);
        assert_eq!(cond("odd.x", "eq", Value::Int(1)).eval(&tree), Tri::Unknown);
        assert_eq!(cond("gpu", "eq", Value::Bool(true)).eval(&tree), Tri::No);
        assert_eq!(Op::parse("like"), None);
    }

    #[test]
    fn ints_and_floats_compare_exactly() {
        use CmpOrdering::{Equal, Greater, Less};
        let two53 = 9_007_199_254_740_992.0_f64;
        assert_eq!(cmp_int_float(1 << 53, two53), Some(Equal));
        assert_eq!(cmp_int_float((1 << 53) + 1, two53), Some(Greater));
        assert_eq!(cmp_int_float(i64::MAX, TWO_POW_63), Some(Less));
        assert_eq!(cmp_int_float(i64::MIN, -TWO_POW_63), Some(Equal));
        assert_eq!(cmp_int_float(i64::MIN, f64::NEG_INFINITY), Some(Greater));
        assert_eq!(cmp_int_float(i64::MIN, f64::INFINITY), Some(Less));
        assert_eq!(cmp_int_float(0, -0.0), Some(Equal));
        assert_eq!(cmp_int_float(2, 2.5), Some(Less));
        assert_eq!(cmp_int_float(-2, -2.5), Some(Greater));
        assert_eq!(cmp_int_float(-3, -2.5), Some(Less));
        assert_eq!(cmp_int_float(0, f64::NAN), None);
        let eq = |a, b| value_eq(&a, &b);
        assert_eq!(eq(Value::Int((1 << 53) + 1), Value::Float(two53)), Tri::No);
        assert_eq!(eq(Value::Float(two53), Value::Int(1 << 53)), Tri::Yes);
        assert_eq!(eq(Value::Bool(true), Value::Float(1.0)), Tri::Yes);
        // `==` on a NaN is never true; as container items, identity may make it so.
        assert_eq!(eq(Value::Float(f64::NAN), Value::Float(f64::NAN)), Tri::No);
        let one_nan = || Value::Seq(Box::new([Value::Float(f64::NAN)]), false);
        assert_eq!(eq(one_nan(), one_nan()), Tri::Unknown);
        let with_one = Value::Seq(Box::new([Value::Float(1.0)]), false);
        assert_eq!(eq(one_nan(), with_one), Tri::No);
        assert_eq!(
            cond("x", "in", one_nan()).eval(&map(vec![("x", Value::Float(f64::NAN))])),
            Tri::Unknown
        );
        assert_eq!(
            cond("x", "gte", Value::Float(f64::NAN)).eval(&map(vec![("x", Value::Int(1))])),
            Tri::No
        );
    }

    #[test]
    fn an_undecided_item_before_a_decisive_one_leaves_the_answer_undecided() {
        let list = |xs: Vec<Value>| Value::Seq(xs.into(), false);
        let tree = map(vec![
            ("n", Value::Int(1)),
            ("l", list(vec![Value::Opaque, Value::Int(1)])),
            ("d", map(vec![("a", Value::Opaque), ("b", Value::Int(1))])),
        ]);
        // Python compares the opaque item first; it may raise before 1 is reached.
        let q = list(vec![Value::Opaque, Value::Int(1)]);
        assert_eq!(cond("n", "in", q).eval(&tree), Tri::Unknown);
        let q = list(vec![Value::Int(1), Value::Opaque]);
        assert_eq!(cond("n", "in", q).eval(&tree), Tri::Yes);
        let q = list(vec![Value::Int(2), Value::Int(2)]);
        assert_eq!(cond("l", "ne", q).eval(&tree), Tri::Unknown);
        let q = list(vec![Value::Int(2)]);
        assert_eq!(cond("l", "ne", q).eval(&tree), Tri::Yes); // lengths differ first
        let q = map(vec![("a", Value::Int(0)), ("b", Value::Int(2))]);
        assert_eq!(cond("d", "ne", q).eval(&tree), Tri::Unknown);
        let q = list(vec![Value::Opaque, Value::Int(1)]);
        let mut c = cond("n", "in", q);
        c.hashed = true;
        assert_eq!(c.eval(&tree), Tri::Unknown);
    }

    #[test]
    fn clear_takes_everything_and_traversal_skips_locked_shards() {
        const NANOS_HOUR: i64 = 3_600_000_000_000;
        let r = Reg::new(Clock::Monotonic, 2);
        let mut g = Vec::new();
        for i in 0..100 {
            r.register(
                spec(&r, &i.to_string(), &["c"], Some("n"), Some(NANOS_HOUR)),
                &mut g,
            )
            .unwrap();
        }
        let mut seen = 0;
        assert_eq!(
            r.try_for_each(|_| {
                seen += 1;
                Ok::<_, ()>(())
            }),
            Ok(true)
        );
        assert_eq!(seen, 100);
        // A shard held by a writer is skipped, not waited for.
        let shard = r
            .entries
            .shards
            .iter()
            .find(|s| s.1.load(Ordering::Relaxed) > 0)
            .unwrap();
        let held = shard.0.write();
        let n = held.len();
        assert!(n > 0);
        let mut seen = 0;
        assert_eq!(
            r.try_for_each(|_| {
                seen += 1;
                Ok::<_, ()>(())
            }),
            Ok(false)
        );
        assert_eq!(seen, 100 - n);
        drop(held);
        assert_eq!(r.len(), 100);
        let mut grave = Vec::new();
        r.clear(&mut grave);
        assert_eq!(grave.len(), 100);
        assert_eq!(r.len(), 0);
        assert_eq!(r.len(), 0);
        assert_eq!(
            r.index_sizes(),
            IndexSizes {
                capabilities: 0,
                nodes: 0,
                health: 0,
                lease_items: 0
            }
        );
    }

    #[test]
    fn concurrent_churn_keeps_indexes_exact() {
        let r: Arc<Reg> = Arc::new(Reg::new(Clock::Monotonic, 4));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut g = Vec::new();
                    for i in 0..5_000u64 {
                        // Ids shared between threads, so writers of one id race.
                        let id = format!("a{}", (i * 7 + t) % 50);
                        match i % 4 {
                            0 | 1 => {
                                let caps: &[&str] = if i % 3 == 0 { &["x", "y"] } else { &["y"] };
                                let _ = r.register(spec(&r, &id, caps, Some("n"), None), &mut g);
                            }
                            2 => {
                                let ch = Changes {
                                    caps: Some(normalize_caps(vec![s(if t % 2 == 0 {
                                        "x"
                                    } else {
                                        "z"
                                    })])),
                                    node: Some(if i % 2 == 0 { None } else { Some(s("m")) }),
                                    health: Some(s(if t % 2 == 0 {
                                        "healthy"
                                    } else {
                                        "degraded"
                                    })),
                                    meta: None,
                                };
                                let _ = r.update(&id, &ch, &mut g);
                            }
                            _ => {
                                r.unregister(&id, &mut g);
                            }
                        }
                        let mut seen = std::collections::HashSet::new();
                        for h in r
                            .find(&Query {
                                capability: Some("x"),
                                ..Query::default()
                            })
                            .hits
                        {
                            assert!(h.entry.has_cap("x"));
                            assert!(seen.insert(h.entry.id.clone()), "{} twice", h.entry.id);
                        }
                        g.clear();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_consistent(&r);
    }

    fn cap(c: &str) -> Query<'_> {
        Query {
            capability: Some(c),
            ..Query::default()
        }
    }

    /// `select` with every match sure: the clean answer, if any, and the ids.
    fn clean_select(r: &Reg, q: &Query<'_>) -> (Option<Clean>, Vec<String>) {
        let mut out = Vec::new();
        let sel = r.select(q, |_| false, |e| out.push(e.id.to_string()));
        out.sort();
        (sel.clean, out)
    }

    #[test]
    fn a_row_stamp_moves_with_every_change_to_the_row() {
        let r = Reg::new(Clock::Monotonic, 2);
        let mut g = Vec::new();
        let st = |c: &str| r.stamp(&cap(c)).unwrap();
        assert_eq!(st("x"), (Stamp::default(), 0));
        r.register(spec(&r, "a", &["x"], Some("n"), None), &mut g)
            .unwrap();
        let s1 = st("x");
        assert_eq!(s1.1, 1);
        assert_ne!(s1.0, Stamp::default());
        // Another value's rows, or fields the row does not hold, leave it alone.
        r.register(spec(&r, "b", &["y"], None, None), &mut g)
            .unwrap();
        let health = Changes {
            caps: None,
            node: Some(None),
            health: Some(s("degraded")),
            meta: None,
        };
        r.update("a", &health, &mut g).unwrap();
        assert!(r.heartbeat("a", None, &mut g));
        assert_eq!(st("x"), s1);
        // A failed register adds and takes back its rows: the row moved, same ids.
        assert!(r
            .register(spec(&r, "a", &["x"], None, None), &mut g)
            .is_err());
        let s2 = st("x");
        assert_ne!(s2.0, s1.0);
        assert_eq!(s2.1, 1);
        // Joining and leaving by update, by register and by unregister.
        let to_x = Changes {
            caps: Some(normalize_caps(vec![s("x")])),
            node: None,
            health: None,
            meta: None,
        };
        r.update("b", &to_x, &mut g).unwrap();
        let s3 = st("x");
        assert_ne!(s3.0, s2.0);
        assert_eq!(s3.1, 2);
        r.unregister("a", &mut g);
        let s4 = st("x");
        assert_ne!(s4.0, s3.0);
        r.unregister("b", &mut g);
        assert_eq!(st("x"), (Stamp::default(), 0));
        // Created again, the row never repeats a version.
        r.register(spec(&r, "a", &["x"], None, None), &mut g)
            .unwrap();
        assert!(![s1.0, s2.0, s3.0, s4.0].contains(&st("x").0));
        // Only a query of one built-in value and nothing else has a stamp.
        let two = Query {
            capability: Some("x"),
            node: Some("n"),
            ..Query::default()
        };
        assert!(r.stamp(&two).is_none());
        assert!(r.stamp(&Query::default()).is_none());
        let conds = [Cond::new("k", Op::Eq, Value::Int(1), false)];
        let with_where = Query {
            capability: Some("x"),
            conds: &conds,
            ..Query::default()
        };
        assert!(r.stamp(&with_where).is_none());
        assert!(r
            .stamp(&Query {
                health: Some("healthy"),
                ..Query::default()
            })
            .is_some());
    }

    #[test]
    fn touches_move_the_stamp_before_an_entry_leaves_its_row() {
        let r = Reg::new(Clock::Monotonic, 2);
        let mut g = Vec::new();
        r.register(spec(&r, "a", &["x", "y"], Some("n"), None), &mut g)
            .unwrap();
        let a = r.get("a").unwrap();
        let (before, _) = r.stamp(&cap("x")).unwrap();
        let node = Query {
            node: Some("n"),
            ..Query::default()
        };
        let (node_before, _) = r.stamp(&node).unwrap();
        // What unregister, an update dropping "x" or a shortened lease do under the
        // entry's guard as they change it: the entry is in the row, the version moved.
        r.touch_rows(&a, None);
        assert_ne!(r.stamp(&cap("x")).unwrap().0, before);
        assert_ne!(r.stamp(&node).unwrap().0, node_before);
        assert_eq!(ids(&r, &cap("x")), ["a"]);
        // Rows the next version keeps are not touched.
        let mut next = a.next_version(r.next_token());
        next.caps = normalize_caps(vec![s("y")]);
        let (x0, _) = r.stamp(&cap("x")).unwrap();
        let (y0, _) = r.stamp(&cap("y")).unwrap();
        r.touch_rows(&a, Some(&next));
        assert_ne!(r.stamp(&cap("x")).unwrap().0, x0);
        assert_eq!(r.stamp(&cap("y")).unwrap().0, y0);
    }

    #[test]
    fn a_clean_answer_is_the_rows_exact_content() {
        let m = Arc::new(ManualClock::new(0));
        let r = Reg::new(Clock::Manual(m.clone()), 2);
        let mut g = Vec::new();
        for (id, ttl) in [("a", None), ("b", Some(50)), ("c", Some(20))] {
            r.register(spec(&r, id, &["x"], None, ttl), &mut g).unwrap();
        }
        let (clean, got) = clean_select(&r, &cap("x"));
        assert_eq!(got, ["a", "b", "c"]);
        let clean = clean.unwrap();
        assert_eq!(clean.stamp, r.stamp(&cap("x")).unwrap().0);
        assert_eq!(clean.deadline, 20, "the earliest deadline of its entries");
        // Without leases, no deadline.
        let r2 = Reg::new(Clock::Monotonic, 2);
        r2.register(spec(&r2, "a", &["x"], None, None), &mut g)
            .unwrap();
        assert_eq!(clean_select(&r2, &cap("x")).0.unwrap().deadline, NEVER);
        // A heartbeat that brings a deadline forward moves the stamp; one that pushes
        // it back does not.
        let (s0, _) = r.stamp(&cap("x")).unwrap();
        assert!(r.heartbeat("b", Some(60), &mut g));
        assert_eq!(r.stamp(&cap("x")).unwrap().0, s0);
        assert!(r.heartbeat("b", Some(5), &mut g));
        assert_ne!(r.stamp(&cap("x")).unwrap().0, s0);
        assert_eq!(clean_select(&r, &cap("x")).0.unwrap().deadline, 5);
        // A candidate that does not match (expired, or a row of a writer in flight)
        // leaves the answer unclean.
        m.advance(5).unwrap();
        let (clean, got) = clean_select(&r, &cap("x"));
        assert_eq!(got, ["a", "c"]);
        assert!(clean.is_none());
        r.expire(&mut g);
        assert!(clean_select(&r, &cap("x")).0.is_some());
        let ghost = s("ghost");
        r.caps.add(&s("x"), &ghost, home_part());
        assert!(clean_select(&r, &cap("x")).0.is_none());
        r.caps.remove("x", &ghost, home_part());
        assert!(clean_select(&r, &cap("x")).0.is_some());
        // A writer of "a" in flight on another thread lists it in that thread's part
        // too: "a" is passed on once (from its entry's part) and the answer is unclean.
        let other = (home_part() + 1) % INDEX_PARTS as u8;
        r.caps.add(&s("x"), &s("a"), other);
        let (clean, got) = clean_select(&r, &cap("x"));
        assert_eq!(got, ["a", "c"]);
        assert!(clean.is_none());
        r.caps.remove("x", "a", other);
        assert!(clean_select(&r, &cap("x")).0.is_some());
        // So do a limit that stopped the read and an entry the host judges.
        let limited = Query {
            capability: Some("x"),
            limit: Some(1),
            ..Query::default()
        };
        assert!(clean_select(&r, &limited).0.is_none());
        let roomy = Query {
            capability: Some("x"),
            limit: Some(10),
            ..Query::default()
        };
        assert!(clean_select(&r, &roomy).0.is_some());
        let sel = r.select(&cap("x"), |e| &*e.id == "a", |_| {});
        assert_eq!(sel.deferred.len(), 1);
        assert!(sel.clean.is_none());
        // A query on two values is never clean.
        let two = Query {
            capability: Some("x"),
            health: Some("healthy"),
            ..Query::default()
        };
        assert!(clean_select(&r, &two).0.is_none());
    }

    /// The guarantee a stamp holder relies on, under writers: while the stamp read
    /// equals a clean answer's, every id of the answer still matches. Checked the only
    /// way a racing reader can: an id whose entry no longer matches when read must
    /// come with a stamp that has moved by the time it is read again.
    #[test]
    fn an_equal_stamp_never_vouches_for_an_entry_that_left() {
        let r: Arc<Reg> = Arc::new(Reg::new(Clock::Monotonic, 4));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3u64)
            .map(|t| {
                let (r, stop) = (r.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut g = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("a{}", (i * 5 + t) % 40);
                        let to = if i % 2 == 0 { "x" } else { "z" };
                        match i % 3 {
                            0 => {
                                let _ = r.register(spec(&r, &id, &[to], None, None), &mut g);
                            }
                            1 => {
                                let ch = Changes {
                                    caps: Some(normalize_caps(vec![s(to)])),
                                    node: None,
                                    health: None,
                                    meta: None,
                                };
                                let _ = r.update(&id, &ch, &mut g);
                            }
                            _ => {
                                r.unregister(&id, &mut g);
                            }
                        }
                        g.clear();
                        i += 1;
                    }
                })
            })
            .collect();
        let mut memo: Option<(Clean, Vec<String>)> = None;
        for _ in 0..20_000 {
            let (now, _) = r.stamp(&cap("x")).unwrap();
            match &memo {
                Some((c, ids)) if c.stamp == now => {
                    for id in ids {
                        if r.get(id).is_none_or(|e| !e.has_cap("x")) {
                            assert_ne!(r.stamp(&cap("x")).unwrap().0, now, "{id} left unseen");
                        }
                    }
                }
                _ => {
                    let (clean, ids) = clean_select(&r, &cap("x"));
                    memo = clean.map(|c| (c, ids));
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        assert_consistent(&r);
    }

    fn key(v: &Value) -> Option<Vec<u8>> {
        let mut buf = KeyBuf::default();
        push_key(v, &mut buf).then_some(buf.bytes)
    }

    #[test]
    fn declared_keys_are_equal_exactly_when_python_says_so() {
        let two53 = 9_007_199_254_740_992.0_f64;
        let values = [
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Int(0),
            Value::Int(1),
            Value::Int(-1),
            Value::Int(1 << 53),
            Value::Int((1 << 53) + 1),
            Value::Int(i64::MAX),
            Value::Int(i64::MIN),
            Value::Float(0.0),
            Value::Float(-0.0),
            Value::Float(1.0),
            Value::Float(0.5),
            Value::Float(-2.5),
            Value::Float(two53),
            Value::Float(TWO_POW_63),
            Value::Float(-TWO_POW_63),
            Value::Float(1e300),
            Value::Float(f64::INFINITY),
            Value::Float(f64::NEG_INFINITY),
            Value::Str("".into()),
            Value::Str("1".into()),
            Value::Str("eu".into()),
        ];
        for a in &values {
            for b in &values {
                let (ka, kb) = (key(a).unwrap(), key(b).unwrap());
                assert_eq!(ka == kb, value_eq(a, b) == Tri::Yes, "{a:?} vs {b:?}");
            }
        }
        // No key: NaN (equal to nothing), containers, opaque values.
        for v in [
            Value::Float(f64::NAN),
            Value::Seq(Box::new([Value::Int(1)]), true),
            map(vec![]),
            Value::Opaque,
        ] {
            assert_eq!(key(&v), None);
        }
    }

    #[test]
    fn entry_keys_cover_items_and_mark_what_only_the_host_compares() {
        let list = |xs: Vec<Value>| Value::Seq(xs.into(), false);
        let path: Box<[Box<str>]> = Box::new(["a".into(), "b".into()]);
        let keys = |tree: Value| {
            let mut buf = KeyBuf::default();
            entry_keys(&tree, &path, &mut buf);
            buf.sorted()
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        };
        let at = |v: Value| map(vec![("a", map(vec![("b", v)]))]);
        let k = |v: Value| key(&v).unwrap();
        assert_eq!(keys(at(Value::Int(1))), [k(Value::Int(1))]);
        // Items of a list; `1`, `1.0` and `True` are one key.
        let items = list(vec![
            Value::Int(1),
            Value::Float(1.0),
            Value::Bool(true),
            Value::Str("x".into()),
            list(vec![Value::Str("y".into())]),
            Value::Float(f64::NAN),
        ]);
        assert_eq!(
            keys(at(items)),
            [k(Value::Int(1)), k(Value::Str("x".into()))]
        );
        // Only the host can compare an opaque value or item, or what is under one.
        let host = vec![K_HOST.to_vec()];
        assert_eq!(keys(at(Value::Opaque)), host);
        assert_eq!(keys(map(vec![("a", Value::Opaque)])), host);
        assert_eq!(keys(Value::Opaque), host);
        let mixed = keys(at(list(vec![Value::Opaque, Value::Int(2)])));
        assert_eq!(mixed, [k(Value::Int(2)), K_HOST.to_vec()]);
        // Nothing: missing, a dict, a NaN, a non-dict on the way.
        assert!(keys(map(vec![])).is_empty());
        assert!(keys(at(map(vec![]))).is_empty());
        assert!(keys(at(Value::Float(f64::NAN))).is_empty());
        assert!(keys(map(vec![("a", Value::Int(3))])).is_empty());
    }

    fn meta_spec(r: &Reg, id: &str, tree: Value) -> Spec<u32, ()> {
        let mut sp = spec(r, id, &[], None, None);
        sp.meta = meta(tree);
        sp
    }

    fn set_meta(tree: Value) -> Changes<()> {
        Changes {
            caps: None,
            node: None,
            health: None,
            meta: Some(meta(tree)),
        }
    }

    #[test]
    fn declared_indexes_serve_eq_and_in_like_a_scan() {
        let list = |xs: Vec<Value>| Value::Seq(xs.into(), false);
        let r = Reg::with_indexes(Clock::Monotonic, 2, &["region", "hw.gpu"]);
        let plain = Reg::new(Clock::Monotonic, 2);
        let mut g = Vec::new();
        let trees = [
            map(vec![("region", Value::Str("eu".into()))]),
            map(vec![("region", Value::Str("us".into()))]),
            map(vec![(
                "region",
                list(vec![Value::Str("eu".into()), Value::Opaque]),
            )]),
            map(vec![("region", Value::Opaque)]),
            map(vec![("region", Value::Float(f64::NAN))]),
            map(vec![("region", Value::Int(1))]),
            map(vec![("hw", map(vec![("gpu", Value::Float(2.0))]))]),
            map(vec![("hw", map(vec![("gpu", Value::Bool(true))]))]),
            map(vec![("hw", Value::Opaque)]),
            map(vec![]),
        ];
        for (i, t) in trees.iter().enumerate() {
            for reg in [&r, &plain] {
                reg.register(meta_spec(reg, &format!("a{i}"), t.clone()), &mut g)
                    .unwrap();
            }
        }
        assert_consistent(&r);
        let queries = [
            cond("region", "eq", Value::Str("eu".into())),
            cond("region", "eq", Value::Float(1.0)),
            cond("region", "eq", Value::Float(f64::NAN)),
            cond(
                "region",
                "in",
                list(vec![Value::Str("us".into()), Value::Bool(true)]),
            ),
            cond("region", "in", list(vec![])),
            cond("region", "ne", Value::Str("eu".into())),
            cond("hw.gpu", "eq", Value::Int(2)),
            cond("hw.gpu", "in", list(vec![Value::Int(1), Value::Int(2)])),
            cond("hw.gpu", "gte", Value::Int(1)),
        ];
        for c in &queries {
            let conds = [c.clone()];
            let q = Query {
                conds: &conds,
                ..Query::default()
            };
            let verdicts = |reg: &Reg| {
                let mut v: Vec<(String, bool)> = reg
                    .find(&q)
                    .hits
                    .iter()
                    .map(|h| (h.entry.id.to_string(), h.unsure))
                    .collect();
                v.sort();
                v
            };
            assert_eq!(verdicts(&r), verdicts(&plain), "{c:?}");
        }
        // An indexed `eq` reads its key's set and the host's set, not the registry.
        let conds = [cond("region", "eq", Value::Str("eu".into()))];
        let q = Query {
            conds: &conds,
            ..Query::default()
        };
        // a0, a2 (in both sets: counted twice, read once), a3.
        assert_eq!(r.estimate(&q), 4);
        assert_eq!(plain.estimate(&q), trees.len());
        assert_eq!(ids(&r, &q), ["a0", "a2", "a3"]); // a2, a3: left to the host
        let conds = [cond("region", "eq", Value::Str("us".into()))];
        let smaller = Query {
            conds: &conds,
            ..Query::default()
        };
        assert_eq!(r.estimate(&smaller), 3); // a1, and a2 and a3 for the host
                                             // A built-in index with fewer candidates wins.
        let q = Query {
            health: Some("nope"),
            conds: &conds,
            ..Query::default()
        };
        assert_eq!(r.estimate(&q), 0);

        // Updates move rows; only what differs is touched.
        r.update(
            "a1",
            &set_meta(map(vec![("region", Value::Str("eu".into()))])),
            &mut g,
        )
        .unwrap();
        r.update("a6", &set_meta(map(vec![])), &mut g).unwrap();
        assert_consistent(&r);
        assert_eq!(ids(&r, &smaller), ["a2", "a3"]); // left to the host
                                                     // region: "eu" (a0, a1, a2), 1 (a5), the host's (a2, a3); hw.gpu: 1, the host's.
        assert_eq!(r.declared_sizes(), [(3, 6), (2, 2)]);
        for i in 0..trees.len() {
            r.unregister(&format!("a{i}"), &mut g);
        }
        assert_consistent(&r);
        assert_eq!(r.declared_sizes(), [(0, 0), (0, 0)]);
    }

    #[test]
    fn ids_answered_once_are_told_apart_by_name_when_their_hashes_meet() {
        let mut buf = IdBuf::default();
        buf.push("a", 0);
        buf.push("b", 1);
        let mut once = Once::new(&buf);
        assert!(once.first(7, "a"));
        assert!(once.first(7, "b"), "another id with the same hash");
        assert!(!once.first(7, "a"));
        assert!(once.first(8, "c"));
        // Candidates of one part need no set: every id is answered.
        let mut single = IdBuf::default();
        single.push("a", 3);
        single.push("b", 3);
        let mut once = Once::new(&single);
        assert!(once.first(7, "a") && once.first(7, "a"));
    }

    #[test]
    fn a_declared_row_in_flight_in_another_part_is_read_once() {
        let r = Reg::with_indexes(Clock::Monotonic, 2, &["region"]);
        let mut g = Vec::new();
        let eu = || Value::Str("eu".into());
        let trees = [
            map(vec![("region", eu())]),
            // Filed under "eu" and the host's key: the query reads both sets.
            map(vec![(
                "region",
                Value::Seq(vec![eu(), Value::Opaque].into(), false),
            )]),
        ];
        for (i, t) in trees.iter().enumerate() {
            r.register(meta_spec(&r, &format!("a{i}"), t.clone()), &mut g)
                .unwrap();
        }
        let conds = [cond("region", "eq", eu())];
        let q = Query {
            conds: &conds,
            ..Query::default()
        };
        assert_eq!(ids(&r, &q), ["a0", "a1"]);
        // Writers of both ids in flight on another thread file them in its part too.
        let other = (home_part() + 1) % INDEX_PARTS as u8;
        let keys: Vec<KeyBuf> = trees
            .iter()
            .map(|t| {
                let mut kb = KeyBuf::default();
                entry_keys(t, &r.declared[0].path, &mut kb);
                kb
            })
            .collect();
        for (i, kb) in keys.iter().enumerate() {
            for k in kb.sorted() {
                r.declared[0]
                    .index
                    .add_borrowed(k, &s(&format!("a{i}")), other);
            }
        }
        assert_eq!(ids(&r, &q), ["a0", "a1"]);
        for (i, kb) in keys.iter().enumerate() {
            for k in kb.sorted() {
                r.declared[0].index.remove(k, &format!("a{i}"), other);
            }
        }
        assert_consistent(&r);
    }

    #[test]
    fn declared_rows_leave_with_leases_failed_writes_and_clear() {
        let m = Arc::new(ManualClock::new(0));
        let r = Reg::with_indexes(Clock::Manual(m.clone()), 2, &["k"]);
        let mut g = Vec::new();
        let tree = |i: i64| map(vec![("k", Value::Int(i))]);
        for i in 0..100 {
            let mut sp = meta_spec(&r, &i.to_string(), tree(i % 7));
            sp.ttl = Some(5);
            r.register(sp, &mut g).unwrap();
        }
        // A refused registration takes its rows back.
        let taken = r.register(meta_spec(&r, "0", tree(99)), &mut g);
        assert_eq!(taken.unwrap_err(), RegistryError::Taken(s("0")));
        assert_consistent(&r);
        assert_eq!(r.declared_sizes(), [(7, 100)]);
        m.advance(10).unwrap();
        r.register(meta_spec(&r, "x", tree(1)), &mut g).unwrap();
        r.reclaim_due(&mut g);
        assert_eq!(r.declared_sizes(), [(1, 1)]);
        r.clear(&mut g);
        assert_eq!(r.declared_sizes(), [(0, 0)]);
    }

    #[test]
    fn concurrent_metadata_churn_keeps_declared_indexes_exact() {
        let r: Arc<Reg> = Arc::new(Reg::with_indexes(Clock::Monotonic, 4, &["zone"]));
        let zone = |z: i64| map(vec![("zone", Value::Int(z))]);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut g = Vec::new();
                    let conds = [cond(
                        "zone",
                        "in",
                        Value::Seq(Box::new([Value::Int(1)]), false),
                    )];
                    let q = Query {
                        conds: &conds,
                        ..Query::default()
                    };
                    for i in 0..5_000u64 {
                        let id = format!("a{}", (i * 7 + t) % 50);
                        let z = ((i + t) % 3) as i64;
                        match i % 4 {
                            0 => {
                                let _ = r.register(meta_spec(&r, &id, zone(z)), &mut g);
                            }
                            1 | 2 => {
                                let _ = r.update(&id, &set_meta(zone(z)), &mut g);
                            }
                            _ => {
                                r.unregister(&id, &mut g);
                            }
                        }
                        let mut seen = std::collections::HashSet::new();
                        for h in r.find(&q).hits {
                            assert_eq!(
                                at_path(&h.entry.meta.tree, &conds[0].path),
                                Ok(Some(&Value::Int(1)))
                            );
                            assert!(seen.insert(h.entry.id.clone()), "{} twice", h.entry.id);
                        }
                        g.clear();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_consistent(&r);
    }
}
