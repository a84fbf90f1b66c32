//! The runner's clock: wall time in production, a clock driven by events in
//! replays, tests and simulations, so every timing decision is deterministic.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::time::Timestamp;

/// A source of "now" for the runner.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to (never backwards).
///
/// ```
/// use overseer_core::clock::{Clock, ManualClock};
/// use overseer_core::Timestamp;
/// let clock = ManualClock::new(Timestamp::from_secs(10));
/// clock.advance_to(Timestamp::from_secs(20));
/// clock.advance_to(Timestamp::from_secs(15)); // ignored: never backwards
/// assert_eq!(clock.now(), Timestamp::from_secs(20));
/// ```
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock starting at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicI64::new(start.as_micros()))
    }

    /// Moves the clock forward to `t` (no-op if `t` is in its past).
    pub fn advance_to(&self, t: Timestamp) {
        self.0.fetch_max(t.as_micros(), Ordering::SeqCst);
    }

    /// Moves the clock forward by `d`.
    pub fn advance_by(&self, d: std::time::Duration) {
        self.advance_to(self.now().saturating_add(d));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.0.load(Ordering::SeqCst))
    }
}
