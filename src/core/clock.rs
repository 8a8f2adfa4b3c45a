//! Time for every time-based part: integer nanoseconds on a monotonic clock or on a
//! manually driven one.
//!
//! All internal arithmetic is on `i64` nanoseconds so that deadlines are exact and
//! comparisons never suffer float rounding: something stamped at `t` with duration `d`
//! is live while `now < t + d`. A `ManualClock` stores its reading in one `AtomicI64`;
//! `set` and `advance` are CAS loops that never move it backwards and never past
//! [`MAX_READING`] (`ClockError::Overflow` instead of wrapping), so every reader sees a
//! monotonic sequence. The bound leaves room for any accepted duration (at most
//! [`MAX_SECONDS`]) to be added to any reading without overflow: `now + ttl` is always
//! exact. The loom model at the end checks both under every interleaving.
//! Orderings: the reading is a single word and carries no other data, so `Relaxed` would
//! suffice for the value itself; `Acquire`/`Release` are used so that a test thread that
//! advances the clock and then signals another thread gives that thread a reading at
//! least as new as the advance.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::core::sync::{AtomicI64, Ordering};

/// Nanoseconds in a second.
pub const NANOS_PER_SEC: f64 = 1_000_000_000.0;

/// Why a duration or instant given in float seconds was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// NaN or infinite.
    NotFinite(&'static str),
    /// Below zero where only non-negative values make sense.
    Negative(&'static str),
    /// Zero or below where only positive values make sense.
    NotPositive(&'static str),
    /// Too large to represent in nanoseconds.
    TooLarge(&'static str),
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFinite(arg) => write!(f, "{arg} must be a finite number of seconds"),
            Self::Negative(arg) => write!(f, "{arg} must be >= 0"),
            Self::NotPositive(arg) => write!(f, "{arg} must be > 0"),
            Self::TooLarge(arg) => write!(f, "{arg} is too large"),
        }
    }
}

impl std::error::Error for DurationError {}

/// Largest duration accepted: about 292 years fits in i64 nanoseconds; leave headroom so
/// that `now + duration` never overflows.
pub const MAX_SECONDS: f64 = 1.0e9 * 4.0; // ~126 years

/// Largest reading a clock may reach (2^62 ns, ~146 years): with durations of at most
/// `MAX_SECONDS` (4e18 ns), `reading + duration` stays below `i64::MAX`.
pub const MAX_READING: i64 = 1 << 62;

/// Converts float seconds to nanoseconds, rounding to the nearest nanosecond.
pub fn secs_to_nanos(secs: f64, arg: &'static str) -> Result<i64, DurationError> {
    if !secs.is_finite() {
        return Err(DurationError::NotFinite(arg));
    }
    if secs.abs() > MAX_SECONDS {
        return Err(DurationError::TooLarge(arg));
    }
    Ok((secs * NANOS_PER_SEC).round() as i64)
}

/// A non-negative duration in nanoseconds.
pub fn duration_nanos(secs: f64, arg: &'static str) -> Result<i64, DurationError> {
    let ns = secs_to_nanos(secs, arg)?;
    if secs < 0.0 {
        return Err(DurationError::Negative(arg));
    }
    Ok(ns)
}

/// A strictly positive duration in nanoseconds (at least 1 ns).
pub fn positive_nanos(secs: f64, arg: &'static str) -> Result<i64, DurationError> {
    let ns = secs_to_nanos(secs, arg)?;
    if secs <= 0.0 {
        return Err(DurationError::NotPositive(arg));
    }
    Ok(ns.max(1))
}

/// Nanoseconds to float seconds.
pub fn nanos_to_secs(ns: i64) -> f64 {
    ns as f64 / NANOS_PER_SEC
}

/// The process-wide monotonic clock and its origin, so that readings from different
/// components are comparable.
///
/// The source is the CPU's time-stamp counter where the kernel itself keeps time with it
/// (Linux's current clocksource is `tsc`: the kernel found it invariant and in step
/// across cores), scaled by a rate measured once against the OS monotonic clock
/// ([`calibrate`]): a reading costs about 9 ns here against about 22 ns for
/// `clock_gettime`, and the rate limiter reads the clock on every decision. Anywhere
/// else, or when no rate could be measured with confidence, it is the OS monotonic
/// clock (`std::time::Instant`).
enum Monotonic {
    Counter(Counter),
    Os(Instant),
}

/// The time-stamp counter as nanoseconds since `origin`: `(ticks - origin) * mult >>
/// 32` (`mult` is nanoseconds per tick with 32 fractional bits).
#[derive(Debug, Clone, Copy)]
struct Counter {
    origin: u64,
    mult: u64,
}

impl Counter {
    #[inline]
    fn nanos(&self) -> u64 {
        let d = ticks().saturating_sub(self.origin);
        // < 2^64 * 2^37 >> 32: fits in u128 before the shift; the result is capped by
        // the caller.
        ((u128::from(d) * u128::from(self.mult)) >> 32).min(u128::from(u64::MAX)) as u64
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn ticks() -> u64 {
    // SAFETY: RDTSC exists on every x86_64 CPU and only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn ticks() -> u64 {
    0
}

/// Whether the kernel keeps time with the time-stamp counter (Linux).
fn kernel_uses_tsc() -> bool {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .is_ok_and(|s| s.trim() == "tsc")
}

/// The counter and the OS clock read together: the tightest of a few brackets (counter,
/// OS clock, counter), as `(counter at the bracket's middle, OS clock, bracket width)`.
/// A bracket that a preemption or an interrupt fell into is wide, and loses.
fn paired() -> (u64, Instant, u64) {
    let mut best = (0, Instant::now(), u64::MAX);
    for _ in 0..64 {
        let a = ticks();
        let t = Instant::now();
        let b = ticks();
        if b >= a && b - a < best.2 {
            best = (a + (b - a) / 2, t, b - a);
        }
    }
    best
}

/// Most the measured rate may be off, as a fraction (1e-4: 0.1 ms in a second).
const RATE_ERROR: f64 = 1e-4;

/// Measures the counter's rate against the OS monotonic clock: two paired readings
/// `wait` apart. Each pair is exact to half its bracket, so the rate is exact to the two
/// half-widths over the interval; a measurement that cannot vouch for `RATE_ERROR` (the
/// machine too busy for a tight bracket), or that gives a rate no CPU has, is `None`.
/// Nothing here depends on the thread running without interruption between the pairs:
/// a longer interval only makes the rate more exact.
fn calibrate(wait: std::time::Duration) -> Option<Counter> {
    let (t0, i0, w0) = paired();
    std::thread::sleep(wait);
    let (t1, i1, w1) = paired();
    let ns = u64::try_from(i1.checked_duration_since(i0)?.as_nanos()).ok()?;
    let dt = t1.checked_sub(t0)?;
    if dt == 0 || (w0 + w1) as f64 / 2.0 > RATE_ERROR * dt as f64 {
        return None;
    }
    // Nanoseconds per tick: 0.05 (a 20 GHz counter) to 20 (50 MHz) are plausible.
    let mult = u64::try_from((u128::from(ns) << 32) / u128::from(dt)).ok()?;
    let per_tick = mult as f64 / (1u64 << 32) as f64;
    (0.05..=20.0).contains(&per_tick).then(|| Counter {
        origin: ticks(),
        mult,
    })
}

fn monotonic() -> &'static Monotonic {
    static CLOCK: OnceLock<Monotonic> = OnceLock::new();
    CLOCK.get_or_init(|| {
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) && kernel_uses_tsc() {
            // 1 ms, then longer intervals if the machine is too busy for a tight bracket.
            for ms in [1, 4, 16] {
                if let Some(c) = calibrate(std::time::Duration::from_millis(ms)) {
                    return Monotonic::Counter(c);
                }
            }
        }
        Monotonic::Os(Instant::now())
    })
}

/// Chooses and calibrates the clock now (about a millisecond, once per process), so
/// that the first timed operation does not pay for it. The module's init calls it.
pub fn init_monotonic() {
    monotonic();
}

/// Monotonic nanoseconds since the process-wide origin. A counter read on another core
/// a few cycles behind the origin reads as 0, never as a negative time.
#[inline]
pub fn monotonic_nanos() -> i64 {
    let ns = match monotonic() {
        Monotonic::Counter(c) => c.nanos(),
        Monotonic::Os(origin) => origin.elapsed().as_nanos() as u64,
    };
    // At most 2^63 - 1: 292 years of uptime.
    ns.min(i64::MAX as u64) as i64
}

/// Why a manual clock refused to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockError {
    /// `set` to an earlier time than the current reading.
    Backwards,
    /// `advance` by a negative amount.
    NegativeAdvance,
    /// The reading would pass the largest representable time.
    Overflow,
    /// A bad number of seconds.
    Duration(DurationError),
}

impl fmt::Display for ClockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Backwards => write!(
                f,
                "seconds must not be earlier than the clock's current time"
            ),
            Self::NegativeAdvance => {
                write!(f, "seconds must be >= 0 (a clock never goes backwards)")
            }
            Self::Overflow => write!(
                f,
                "seconds would move the clock past its largest time (2**62 ns, about 146 years)"
            ),
            Self::Duration(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ClockError {}

impl From<DurationError> for ClockError {
    fn from(e: DurationError) -> Self {
        Self::Duration(e)
    }
}

/// A clock moved only by hand; thread-safe.
#[derive(Debug)]
pub struct ManualClock {
    nanos: AtomicI64,
}

impl ManualClock {
    /// A clock reading `start_nanos` (clamped to `0..=MAX_READING`; the binding refuses
    /// anything outside).
    pub fn new(start_nanos: i64) -> Self {
        Self {
            nanos: AtomicI64::new(start_nanos.clamp(0, MAX_READING)),
        }
    }

    pub fn now_nanos(&self) -> i64 {
        self.nanos.load(Ordering::Acquire)
    }

    /// Moves the clock forward by `delta` nanoseconds; refuses (and stays put) if the
    /// reading would pass `i64::MAX`.
    pub fn advance(&self, delta: i64) -> Result<i64, ClockError> {
        if delta < 0 {
            return Err(ClockError::NegativeAdvance);
        }
        let mut cur = self.nanos.load(Ordering::Acquire);
        loop {
            let to = cur
                .checked_add(delta)
                .filter(|t| *t <= MAX_READING)
                .ok_or(ClockError::Overflow)?;
            match self
                .nanos
                .compare_exchange_weak(cur, to, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(to),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Sets the clock to `to` nanoseconds; never backwards.
    pub fn set(&self, to: i64) -> Result<(), ClockError> {
        if to > MAX_READING {
            return Err(ClockError::Overflow);
        }
        let mut cur = self.nanos.load(Ordering::Acquire);
        loop {
            if to < cur {
                return Err(ClockError::Backwards);
            }
            match self
                .nanos
                .compare_exchange_weak(cur, to, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => cur = seen,
            }
        }
    }
}

/// The clock a component reads: the monotonic one, or a shared manual clock.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    Monotonic,
    Manual(Arc<ManualClock>),
}

impl Clock {
    /// Current reading in nanoseconds.
    #[inline]
    pub fn now_nanos(&self) -> i64 {
        match self {
            Self::Monotonic => monotonic_nanos(),
            Self::Manual(c) => c.now_nanos(),
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(self, Self::Manual(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_is_exact_for_decimal_steps() {
        assert_eq!(secs_to_nanos(0.1, "x").unwrap(), 100_000_000);
        assert_eq!(secs_to_nanos(1.5, "x").unwrap(), 1_500_000_000);
        let mut total = 0;
        for _ in 0..10 {
            total += duration_nanos(0.1, "x").unwrap();
        }
        assert_eq!(total, 1_000_000_000);
    }

    #[test]
    fn bad_durations_name_the_argument() {
        assert_eq!(
            duration_nanos(f64::NAN, "ttl").unwrap_err().to_string(),
            "ttl must be a finite number of seconds"
        );
        assert_eq!(
            duration_nanos(-1.0, "ttl").unwrap_err().to_string(),
            "ttl must be >= 0"
        );
        assert_eq!(
            positive_nanos(0.0, "per").unwrap_err().to_string(),
            "per must be > 0"
        );
        assert!(positive_nanos(1e300, "per").is_err());
        assert_eq!(positive_nanos(1e-12, "per").unwrap(), 1);
    }

    #[test]
    fn manual_clock_never_goes_backwards() {
        let c = ManualClock::new(0);
        assert_eq!(c.advance(5).unwrap(), 5);
        assert_eq!(c.set(3), Err(ClockError::Backwards));
        c.set(5).unwrap();
        c.set(9).unwrap();
        assert_eq!(c.now_nanos(), 9);
        assert_eq!(c.advance(-1), Err(ClockError::NegativeAdvance));
    }

    #[test]
    fn manual_clock_refuses_to_wrap() {
        let c = ManualClock::new(MAX_READING - 10);
        assert_eq!(c.advance(10).unwrap(), MAX_READING);
        assert_eq!(c.advance(1), Err(ClockError::Overflow));
        assert_eq!(c.advance(i64::MAX), Err(ClockError::Overflow));
        assert_eq!(c.now_nanos(), MAX_READING);
        assert_eq!(c.set(MAX_READING + 1), Err(ClockError::Overflow));
        let c = ManualClock::new(4_000_000_000_000_000_000);
        assert_eq!(
            c.advance(4_000_000_000_000_000_000),
            Err(ClockError::Overflow)
        );
        assert_eq!(c.now_nanos(), 4_000_000_000_000_000_000);
        // Every accepted duration fits on top of every reading.
        let most = secs_to_nanos(MAX_SECONDS, "x").unwrap();
        assert!(MAX_READING.checked_add(most).is_some());
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = Clock::Monotonic.now_nanos();
        let b = Clock::Monotonic.now_nanos();
        assert!(b >= a);
    }

    #[test]
    fn monotonic_clock_keeps_the_os_clocks_pace() {
        // Calibrated against the OS clock: 50 ms of it read as 50 ms, within 2%.
        init_monotonic();
        let t0 = std::time::Instant::now();
        let a = monotonic_nanos();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let b = monotonic_nanos();
        let os = t0.elapsed().as_nanos() as f64;
        let ours = (b - a) as f64;
        assert!((ours / os - 1.0).abs() < 0.02, "ours {ours} ns, OS {os} ns");
        assert!(a >= 0);
    }

    /// The counter's rate is measured the same whatever else the machine runs: busy
    /// threads on every core (preempting the calibration) leave it within 0.1%.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn calibration_holds_under_load() {
        if !kernel_uses_tsc() {
            return;
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let rates = std::thread::scope(|s| {
            for _ in 0..cpus * 2 {
                s.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                });
            }
            let mut rates = Vec::new();
            for _ in 0..200 {
                if let Some(c) = calibrate(std::time::Duration::from_millis(1)) {
                    // Each calibrated counter keeps the OS clock's pace.
                    let (a, t) = (c.nanos(), Instant::now());
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    let (ours, os) = ((c.nanos() - a) as f64, t.elapsed().as_nanos() as f64);
                    assert!((ours / os - 1.0).abs() < 0.01, "ours {ours} ns, OS {os} ns");
                    rates.push(c.mult);
                    if rates.len() == 8 {
                        break;
                    }
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            rates
        });
        assert!(rates.len() >= 2, "no calibration under load: {rates:?}");
        for r in &rates {
            let off = (*r as f64 / rates[0] as f64 - 1.0).abs();
            assert!(off < 1e-3, "rates {rates:?}");
        }
    }

    #[test]
    fn monotonic_clock_never_goes_backwards_across_threads() {
        // Each thread's readings never decrease, and a reading taken after another
        // thread's (ordered by the join) is not earlier than it.
        let last = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut prev = monotonic_nanos();
                        for _ in 0..100_000 {
                            let now = monotonic_nanos();
                            assert!(now >= prev, "{now} < {prev}");
                            prev = now;
                        }
                        prev
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
        });
        assert!(monotonic_nanos() >= last);
    }

    #[test]
    fn manual_clock_is_shared() {
        let m = Arc::new(ManualClock::new(10));
        let c = Clock::Manual(m.clone());
        m.advance(5).unwrap();
        assert_eq!(c.now_nanos(), 15);
        assert!(c.is_manual());
    }
}

/// Two threads move one clock at once (`set` and `advance`): no update is lost, no reader
/// ever sees it go backwards, and the end reading is one that some order of the two
/// operations produces.
#[cfg(test)] // separate from cfg(loom): clippy sees a plain cfg(test) as test code
#[cfg(loom)]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn loom_manual_clock_set_and_advance() {
        loom::model(|| {
            let c = Arc::new(ManualClock::new(0));
            let a = {
                let c = c.clone();
                thread::spawn(move || c.advance(5).unwrap())
            };
            let b = {
                let c = c.clone();
                thread::spawn(move || c.set(3).is_ok())
            };
            let first = c.now_nanos();
            let second = c.now_nanos();
            assert!(second >= first);
            let advanced_to = a.join().unwrap();
            let set_ok = b.join().unwrap();
            let end = c.now_nanos();
            if set_ok {
                // set(3) took effect before the advance (end 8) or after it (refused,
                // since 5 > 3): it cannot have succeeded after the advance.
                assert_eq!(end, 8);
                assert_eq!(advanced_to, 8);
            } else {
                assert_eq!(end, 5);
                assert_eq!(advanced_to, 5);
            }
        });
    }
}
