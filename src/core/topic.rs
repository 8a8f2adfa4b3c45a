//! Topic patterns and a segment trie that routes a signal type to the subscriptions whose
//! pattern matches it.
//!
//! Signal types are dot-separated names (`agent.42.error`). A pattern segment is a literal,
//! `*` (exactly one segment) or `#` (zero or more segments, anywhere in the pattern), as in
//! AMQP topic exchanges. Empty segments and empty patterns are invalid; a pattern has at
//! most [`MAX_PATTERN_SEGMENTS`] segments. Consecutive `#` segments match exactly what one
//! does, so the parser keeps one.
//!
//! # Cost
//! `matches` walks the trie with a set of (node, position) states: each state advances by
//! the literal child for the next segment, the `*` child, and the `#` child (which may
//! consume zero segments, or one and stay). States are de-duplicated per position (a
//! linear scan while there are few, a hash set beyond), so a walk costs O(type segments x
//! live states) with O(1) per state, however many `#` a pattern has: never exponential,
//! never quadratic in the states. The live states at one position are trie nodes, at most
//! one per segment of the matching patterns, so with patterns of at most
//! [`MAX_PATTERN_SEGMENTS`] segments a publish is linear in the length of its type, and
//! it does not grow with the number of subscriptions that cannot match. Nothing recurses,
//! so no input is deep enough to exhaust the stack.
//!
//! # Memory
//! Removing the last subscription of a node prunes that node and every ancestor left
//! without children or subscriptions, so the live nodes are exactly those the live
//! patterns need. A pruned node's slot is emptied (its map freed) and reused by the next
//! insertion, so the slab's length is bounded by the peak number of live nodes.

use hashbrown::{HashMap, HashSet};
use std::fmt;

/// The most segments a pattern may have (the walk's states per position are bounded by
/// the segments of the patterns it follows).
pub const MAX_PATTERN_SEGMENTS: usize = 256;

/// How much of a refused pattern or type an error message quotes.
const QUOTED: usize = 80;

/// Why a pattern or a signal type was refused. The strings are the argument as quoted in
/// the message (shortened when long, so that a huge argument does not make a huge
/// message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    Empty(&'static str),
    EmptySegment(&'static str, String),
    /// Wildcards are for patterns only.
    WildcardInType(String),
    TooManySegments,
}

/// `s` quoted like `{:?}`, cut after [`QUOTED`] bytes (at a character boundary) with
/// `...` after the closing quote.
fn quoted(s: &str) -> String {
    if s.len() <= QUOTED {
        return format!("{s:?}");
    }
    let mut end = QUOTED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &s[..end])
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty(arg) => write!(f, "{arg} must not be empty"),
            Self::EmptySegment(arg, s) => write!(f, "{arg} {s} has an empty segment"),
            Self::WildcardInType(s) => write!(f, "signal_type {s} must not contain '*' or '#'"),
            Self::TooManySegments => write!(
                f,
                "pattern must not have more than {MAX_PATTERN_SEGMENTS} segments"
            ),
        }
    }
}

impl std::error::Error for TopicError {}

/// One segment of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Lit(Box<str>),
    Star,
    Hash,
}

/// Splits and checks a pattern; a run of `#` segments becomes one (same matches).
pub fn parse_pattern(pattern: &str) -> Result<Vec<Seg>, TopicError> {
    if pattern.is_empty() {
        return Err(TopicError::Empty("pattern"));
    }
    let mut segs = Vec::new();
    for (i, s) in pattern.split('.').enumerate() {
        if i == MAX_PATTERN_SEGMENTS {
            return Err(TopicError::TooManySegments);
        }
        let seg = match s {
            "" => return Err(TopicError::EmptySegment("pattern", quoted(pattern))),
            "*" => Seg::Star,
            "#" if segs.last() == Some(&Seg::Hash) => continue,
            "#" => Seg::Hash,
            lit => Seg::Lit(lit.into()),
        };
        segs.push(seg);
    }
    Ok(segs)
}

/// The segments of a signal type, checked as they are read, so that routing splits the
/// type once: walk them, then [`TypeSegments::finish`] reads the rest (a walk may stop
/// early) and tells whether the type was valid (no empty segment, no wildcard).
pub struct TypeSegments<'a> {
    signal_type: &'a str,
    split: std::str::Split<'a, char>,
    empty: bool,
    wildcard: bool,
}

impl<'a> TypeSegments<'a> {
    pub fn new(signal_type: &'a str) -> Self {
        Self {
            signal_type,
            split: signal_type.split('.'),
            empty: false,
            wildcard: false,
        }
    }

    /// The type's error, if any, once every segment has been read.
    pub fn finish(mut self) -> Result<(), TopicError> {
        if self.signal_type.is_empty() {
            return Err(TopicError::Empty("signal_type"));
        }
        self.by_ref().for_each(drop);
        if self.empty {
            return Err(TopicError::EmptySegment(
                "signal_type",
                quoted(self.signal_type),
            ));
        }
        if self.wildcard {
            return Err(TopicError::WildcardInType(quoted(self.signal_type)));
        }
        Ok(())
    }
}

impl<'a> Iterator for TypeSegments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let seg = self.split.next()?;
        self.empty |= seg.is_empty();
        self.wildcard |= seg == "*" || seg == "#";
        Some(seg)
    }
}

/// Checks a signal type (no empty segment, no wildcard) without allocating.
pub fn check_type(signal_type: &str) -> Result<(), TopicError> {
    TypeSegments::new(signal_type).finish()
}

/// Splits and checks a signal type (no wildcards).
pub fn parse_type(signal_type: &str) -> Result<Vec<&str>, TopicError> {
    check_type(signal_type)?;
    Ok(signal_type.split('.').collect())
}

struct Node<S> {
    lits: HashMap<Box<str>, u32>,
    star: Option<u32>,
    hash: Option<u32>,
    parent: u32,
    /// How this node hangs off its parent, for pruning; `None` for the root and for
    /// free slots.
    edge: Option<Seg>,
    subs: Vec<S>,
}

impl<S> Node<S> {
    fn new(parent: u32, edge: Option<Seg>) -> Self {
        Self {
            lits: HashMap::new(),
            star: None,
            hash: None,
            parent,
            edge,
            subs: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.lits.is_empty() && self.star.is_none() && self.hash.is_none() && self.subs.is_empty()
    }
}

const ROOT: u32 = 0;

/// A walk's states at one position, each once. A walk usually holds a handful, which a
/// linear scan checks fastest; past [`States::LINEAR`] a hash set (made only then, so an
/// ordinary publish never pays for it) takes over, so adding a state is O(1) however
/// many there are.
struct States {
    list: Vec<u32>,
    seen: Option<HashSet<u32>>,
}

impl States {
    const LINEAR: usize = 16;

    fn new() -> Self {
        Self {
            list: Vec::with_capacity(8),
            seen: None,
        }
    }

    fn clear(&mut self) {
        self.list.clear();
        if let Some(seen) = &mut self.seen {
            seen.clear();
        }
    }

    fn insert(&mut self, n: u32) {
        if self.list.len() < Self::LINEAR {
            if self.list.contains(&n) {
                return;
            }
        } else {
            let seen = self.seen.get_or_insert_with(HashSet::new);
            if seen.is_empty() {
                seen.extend(self.list.iter().copied());
            }
            if !seen.insert(n) {
                return;
            }
        }
        self.list.push(n);
    }
}

/// A trie of patterns; each pattern's node holds its subscribers `S`.
///
/// Nodes live in a slab (`nodes`) addressed by `u32`; a pruned node's slot is reset to an
/// empty node and its index goes on `free` for reuse. Every index stored in a live node
/// (children, parent) and in `free` names a slot of the slab, so indexing the slab with it
/// cannot fail. `u32` suffices: a node takes well over 64 bytes, so 2^32 of them would
/// need more than 256 GiB, and the allocation fails (aborting) long before an index could
/// wrap.
pub struct Trie<S> {
    nodes: Vec<Node<S>>,
    free: Vec<u32>,
    len: usize,
}

impl<S> Default for Trie<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Trie<S> {
    pub fn new() -> Self {
        Self {
            nodes: vec![Node::new(ROOT, None)],
            free: Vec::new(),
            len: 0,
        }
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Nodes in use (root included); for tests of pruning.
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    fn node(&self, i: u32) -> &Node<S> {
        &self.nodes[i as usize]
    }

    fn node_mut(&mut self, i: u32) -> &mut Node<S> {
        &mut self.nodes[i as usize]
    }

    fn child(&self, i: u32, seg: &Seg) -> Option<u32> {
        let n = self.node(i);
        match seg {
            Seg::Lit(s) => n.lits.get(s).copied(),
            Seg::Star => n.star,
            Seg::Hash => n.hash,
        }
    }

    fn add_child(&mut self, parent: u32, seg: &Seg) -> u32 {
        let node = Node::new(parent, Some(seg.clone()));
        let idx = if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = node;
            i
        } else {
            self.nodes.push(node);
            // Below 2^32: see the type's documentation.
            (self.nodes.len() - 1) as u32
        };
        let p = self.node_mut(parent);
        match seg {
            Seg::Lit(s) => {
                p.lits.insert(s.clone(), idx);
            }
            Seg::Star => p.star = Some(idx),
            Seg::Hash => p.hash = Some(idx),
        }
        idx
    }

    /// Adds a subscriber under a parsed pattern.
    pub fn insert(&mut self, pattern: &[Seg], sub: S) {
        let mut cur = ROOT;
        for seg in pattern {
            cur = match self.child(cur, seg) {
                Some(c) => c,
                None => self.add_child(cur, seg),
            };
        }
        self.node_mut(cur).subs.push(sub);
        self.len += 1;
    }

    /// Removes the first subscriber of a pattern for which `is` holds, and prunes the
    /// nodes left empty. Returns the removed subscriber rather than dropping it, so that a
    /// caller holding a lock can drop it after releasing the lock (its destructor may run
    /// arbitrary code).
    #[must_use = "the removed subscriber should be dropped outside any lock"]
    pub fn remove(&mut self, pattern: &[Seg], is: impl Fn(&S) -> bool) -> Option<S> {
        let mut cur = ROOT;
        for seg in pattern {
            cur = self.child(cur, seg)?;
        }
        let subs = &mut self.node_mut(cur).subs;
        let pos = subs.iter().position(is)?;
        let removed = subs.swap_remove(pos);
        // At least the one just removed was counted.
        self.len -= 1;
        while cur != ROOT && self.node(cur).is_empty() {
            let node = std::mem::replace(self.node_mut(cur), Node::new(ROOT, None));
            self.free.push(cur);
            let parent = self.node_mut(node.parent);
            match node.edge {
                Some(Seg::Lit(s)) => {
                    parent.lits.remove(&s);
                }
                Some(Seg::Star) => parent.star = None,
                Some(Seg::Hash) => parent.hash = None,
                None => {}
            }
            cur = node.parent;
        }
        Some(removed)
    }

    /// Calls `f` on every subscriber, in no particular order, until it fails.
    pub fn try_for_each<X>(&self, mut f: impl FnMut(&S) -> Result<(), X>) -> Result<(), X> {
        self.nodes.iter().flat_map(|n| &n.subs).try_for_each(&mut f)
    }

    /// Takes every subscriber out, leaving the trie empty.
    pub fn drain(&mut self) -> Vec<S> {
        let all = std::mem::take(self);
        let mut out = Vec::with_capacity(all.len);
        for n in all.nodes {
            out.extend(n.subs);
        }
        out
    }

    /// Calls `f` on every subscriber whose pattern matches the segments, each once per
    /// subscription.
    pub fn for_each_match<'a>(
        &self,
        segs: impl IntoIterator<Item = &'a str>,
        mut f: impl FnMut(&S),
    ) {
        let mut states = States::new();
        let mut next = States::new();
        // A `#` node may match zero segments: close the state set over `#` children.
        let close = |trie: &Self, v: &mut States| {
            let mut i = 0;
            while let Some(&s) = v.list.get(i) {
                if let Some(h) = trie.node(s).hash {
                    v.insert(h);
                }
                i += 1;
            }
        };
        states.insert(ROOT);
        close(self, &mut states);
        for seg in segs {
            next.clear();
            for &s in &states.list {
                let n = self.node(s);
                if let Some(&c) = n.lits.get(seg) {
                    next.insert(c);
                }
                if let Some(c) = n.star {
                    next.insert(c);
                }
                // Being at a `#` node, it may swallow this segment and stay.
                if matches!(n.edge, Some(Seg::Hash)) {
                    next.insert(s);
                }
            }
            close(self, &mut next);
            std::mem::swap(&mut states, &mut next);
            if states.list.is_empty() {
                return;
            }
        }
        for &s in &states.list {
            self.node(s).subs.iter().for_each(&mut f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trie(patterns: &[&str]) -> Trie<usize> {
        let mut t = Trie::new();
        for (i, p) in patterns.iter().enumerate() {
            t.insert(&parse_pattern(p).unwrap(), i);
        }
        t
    }

    fn hits(t: &Trie<usize>, ty: &str) -> Vec<usize> {
        let mut out = Vec::new();
        t.for_each_match(parse_type(ty).unwrap(), |s| out.push(*s));
        out.sort_unstable();
        out
    }

    fn all(t: &Trie<usize>) -> Vec<usize> {
        let mut out = Vec::new();
        t.try_for_each::<()>(|s| {
            out.push(*s);
            Ok(())
        })
        .unwrap();
        out.sort_unstable();
        out
    }

    #[test]
    fn literal_star_and_hash() {
        let pats = [
            "a.b.c",
            "a.*.c",
            "a.#",
            "#",
            "#.c",
            "a.#.c",
            "*.*",
            "a.b.#.c.#",
            "x",
        ];
        let t = trie(&pats);
        assert_eq!(hits(&t, "a.b.c"), vec![0, 1, 2, 3, 4, 5, 7]);
        assert_eq!(hits(&t, "a"), vec![2, 3]);
        assert_eq!(hits(&t, "a.c"), vec![2, 3, 4, 5, 6]);
        assert_eq!(hits(&t, "a.x.y.c"), vec![2, 3, 4, 5]);
        assert_eq!(hits(&t, "x"), vec![3, 8]);
        assert_eq!(hits(&t, "b.c"), vec![3, 4, 6]);
        assert_eq!(hits(&t, "a.b.z.c.q"), vec![2, 3, 7]);
    }

    #[test]
    fn double_hash_does_not_duplicate() {
        let t = trie(&["#.#", "a.#.#.b"]);
        assert_eq!(hits(&t, "a.b"), vec![0, 1]);
        assert_eq!(hits(&t, "a.x.y.b"), vec![0, 1]);
        assert_eq!(hits(&t, "q"), vec![0]);
    }

    #[test]
    fn bad_patterns_and_types() {
        assert_eq!(
            parse_pattern("").unwrap_err().to_string(),
            "pattern must not be empty"
        );
        assert_eq!(
            parse_pattern("a..b").unwrap_err().to_string(),
            "pattern \"a..b\" has an empty segment"
        );
        assert!(parse_pattern(".a").is_err());
        assert!(parse_type("a.").is_err());
        assert_eq!(
            parse_type("a.*").unwrap_err().to_string(),
            "signal_type \"a.*\" must not contain '*' or '#'"
        );
    }

    #[test]
    fn remove_prunes_nodes() {
        let mut t = Trie::new();
        let p = parse_pattern("a.b.#.c").unwrap();
        let q = parse_pattern("a.b").unwrap();
        t.insert(&p, 1);
        t.insert(&q, 2);
        t.insert(&p, 3);
        assert_eq!(t.node_count(), 5);
        assert_eq!(t.remove(&p, |s| *s == 1), Some(1));
        assert_eq!(t.remove(&p, |s| *s == 1), None);
        assert_eq!(t.node_count(), 5);
        assert_eq!(t.remove(&p, |s| *s == 3), Some(3));
        assert_eq!(t.node_count(), 3);
        assert_eq!(t.remove(&q, |s| *s == 2), Some(2));
        assert_eq!(t.node_count(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn many_subscriptions_route_by_segments() {
        let mut t = Trie::new();
        for i in 0..10_000 {
            t.insert(&parse_pattern(&format!("agent.{i}.error")).unwrap(), i);
        }
        t.insert(&parse_pattern("agent.*.error").unwrap(), 99_999);
        assert_eq!(hits(&t, "agent.42.error"), vec![42, 99_999]);
        assert_eq!(hits(&t, "agent.42.ok"), Vec::<usize>::new());
    }

    /// A subscriber's destructor must be able to run after the caller's lock is released:
    /// `remove` hands the removed value back instead of dropping it.
    #[test]
    fn remove_hands_back_the_subscriber() {
        use std::sync::Arc;
        let mut t: Trie<Arc<u8>> = Trie::new();
        let p = parse_pattern("a.*").unwrap();
        let sub = Arc::new(7);
        t.insert(&p, sub.clone());
        let removed = t.remove(&p, |s| Arc::ptr_eq(s, &sub)).unwrap();
        // Still alive: the trie did not drop its reference.
        assert_eq!(Arc::strong_count(&sub), 2);
        drop(removed);
        assert_eq!(Arc::strong_count(&sub), 1);
    }

    #[test]
    fn freed_slots_are_reused_and_all_lists_everyone() {
        let mut t = Trie::new();
        let p = parse_pattern("a.b.c").unwrap();
        let q = parse_pattern("x.#").unwrap();
        t.insert(&p, 1);
        assert_eq!(t.remove(&p, |s| *s == 1), Some(1));
        t.insert(&q, 2);
        t.insert(&p, 3);
        // Three slots were freed and are reused: no growth beyond the live nodes.
        assert_eq!(t.nodes.len(), 6);
        assert_eq!(hits(&t, "x"), vec![2]);
        assert_eq!(hits(&t, "a.b.c"), vec![3]);
        assert_eq!(all(&t), vec![2, 3]);
        let mut drained = t.drain();
        drained.sort_unstable();
        assert_eq!(drained, vec![2, 3]);
        assert!(t.is_empty() && t.node_count() == 1 && all(&t).is_empty());
    }

    /// Many live states at once (patterns full of `#`): still exact, checked against a
    /// brute-force matcher.
    #[test]
    fn many_simultaneous_states() {
        fn brute(p: &[&str], t: &[&str]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some((&"#", rest)) => (0..=t.len()).any(|i| brute(rest, &t[i..])),
                Some((h, rest)) => {
                    !t.is_empty() && (*h == "*" || *h == t[0]) && brute(rest, &t[1..])
                }
            }
        }
        let mut pats = Vec::new();
        for a in ["a", "*", "#"] {
            for b in ["a", "b", "*", "#"] {
                for c in ["a", "*", "#"] {
                    pats.push(format!("{a}.{b}.{c}"));
                    pats.push(format!("#.{a}.#.{b}.{c}"));
                }
            }
        }
        let refs: Vec<&str> = pats.iter().map(String::as_str).collect();
        let t = trie(&refs);
        for ty in ["a", "a.a", "a.b.a", "a.a.a.a.a", "b.a.b.a.a", "a.b.a.b.a.b"] {
            let segs = parse_type(ty).unwrap();
            let want: Vec<usize> = (0..pats.len())
                .filter(|&i| brute(&pats[i].split('.').collect::<Vec<_>>(), &segs))
                .collect();
            assert_eq!(hits(&t, ty), want, "{ty}");
        }
    }

    #[test]
    fn runs_of_hash_collapse_and_patterns_are_bounded() {
        assert_eq!(parse_pattern("#.#.#").unwrap(), vec![Seg::Hash]);
        assert_eq!(
            parse_pattern("a.#.#.*.#").unwrap(),
            vec![Seg::Lit("a".into()), Seg::Hash, Seg::Star, Seg::Hash]
        );
        let longest = vec!["#"; MAX_PATTERN_SEGMENTS].join(".");
        assert_eq!(parse_pattern(&longest).unwrap(), vec![Seg::Hash]);
        let too_long = format!("{longest}.x");
        assert_eq!(
            parse_pattern(&too_long).unwrap_err().to_string(),
            "pattern must not have more than 256 segments"
        );
        // Collapsing keeps the matches.
        let t = trie(&["#.#.#", "a.#.#.b"]);
        assert_eq!(hits(&t, "a.b"), vec![0, 1]);
        assert_eq!(hits(&t, "a.x.y.b"), vec![0, 1]);
    }

    #[test]
    fn long_arguments_are_shortened_in_messages() {
        let ty = format!("{}..x", "é".repeat(100_000));
        let msg = parse_type(&ty).unwrap_err().to_string();
        assert!(msg.starts_with("signal_type \"éé") && msg.ends_with("\"... has an empty segment"));
        assert!(msg.len() < 200);
        let msg = parse_type(&format!("{}.#", "a".repeat(1000)))
            .unwrap_err()
            .to_string();
        assert!(msg.ends_with("\"... must not contain '*' or '#'") && msg.len() < 200);
        let msg = parse_pattern(&format!("{}..", "b".repeat(1000)))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("pattern \"bbb") && msg.len() < 200);
    }

    /// Hostile patterns (many `#` between literals) against a long type: the states per
    /// position stay bounded by the pattern's segments and each is added in O(1), so the
    /// walk is linear in the type's length (it was quadratic in the states, and
    /// `#.#.#...` alone used to keep one state per `#`).
    #[test]
    fn hostile_patterns_walk_in_linear_time() {
        let alternating = vec!["#.a"; MAX_PATTERN_SEGMENTS / 2].join(".");
        let hashes = vec!["#"; MAX_PATTERN_SEGMENTS].join(".");
        let t = trie(&[&alternating, &hashes, "#.b"]);
        let ty = vec!["a"; 20_000].join(".");
        assert_eq!(hits(&t, &ty), vec![0, 1]);
        let ty = format!("{ty}.b");
        assert_eq!(hits(&t, &ty), vec![1, 2]);
    }
}
