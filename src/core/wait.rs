//! How ferrule waits: in slices of at most [`SLICE`], so that a caller's `check` hook
//! (the binding's signal check) runs at least that often, and against an optional
//! deadline in real monotonic time (`Instant`), also when a component runs on a manual
//! clock.
//!
//! The cores wait on their own condvars and call the hook with their locks released;
//! this module only keeps the time: [`Pacer`] for waits that loop on a condvar, and
//! [`slice_until`] for callers that sleep one slice at a time.

use std::time::{Duration, Instant};

/// Longest stretch a blocked caller waits before its `check` hook runs again.
pub const SLICE: Duration = Duration::from_millis(50);

/// `now + timeout`; a deadline beyond what `Instant` can hold means no deadline.
pub fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// Time left before `deadline`, capped at one slice; `None` once it has passed.
pub fn slice_until(deadline: Option<Instant>) -> Option<Duration> {
    match deadline {
        None => Some(SLICE),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            (!left.is_zero()).then(|| left.min(SLICE))
        }
    }
}

/// Tracks, for one blocking call, its deadline and when its `check` hook last ran.
pub struct Pacer {
    deadline: Option<Instant>,
    last_check: Instant,
}

/// What a waiting loop does next.
pub enum Tick {
    /// Wait until this instant, then look again.
    WaitUntil(Instant),
    /// The overall deadline has passed.
    Expired,
    /// Time to run the `check` hook (with every lock released).
    Check,
}

impl Pacer {
    pub fn new(deadline: Option<Instant>) -> Self {
        Self {
            deadline,
            last_check: Instant::now(),
        }
    }

    pub fn tick(&self) -> Tick {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return Tick::Expired;
        }
        let next_check = self.last_check + SLICE;
        if now >= next_check {
            return Tick::Check;
        }
        Tick::WaitUntil(self.deadline.map_or(next_check, |d| d.min(next_check)))
    }

    pub fn checked(&mut self) {
        self.last_check = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_capped_and_end_at_the_deadline() {
        assert_eq!(slice_until(None), Some(SLICE));
        let soon = Instant::now() + Duration::from_millis(5);
        assert!(slice_until(Some(soon)).is_some_and(|s| s <= Duration::from_millis(5)));
        let past = Instant::now().checked_sub(Duration::from_millis(1));
        assert_eq!(slice_until(past), None);
    }

    #[test]
    fn a_deadline_too_far_away_is_no_deadline() {
        assert_eq!(deadline(Some(Duration::MAX)), None);
        assert!(deadline(Some(Duration::from_secs(1))).is_some());
        assert_eq!(deadline(None), None);
    }

    #[test]
    fn pacer_asks_for_a_check_every_slice() {
        let p = Pacer::new(None);
        match p.tick() {
            Tick::WaitUntil(t) => assert!(t <= Instant::now() + SLICE),
            _ => panic!("a fresh pacer waits"),
        }
        let mut p = Pacer::new(Some(Instant::now()));
        assert!(matches!(p.tick(), Tick::Expired));
        p.checked();
        assert!(matches!(p.tick(), Tick::Expired));
    }
}
