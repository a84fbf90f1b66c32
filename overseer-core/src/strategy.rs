//! Execution strategies: when a triggered check runs, and as of which time.
//!
//! A strategy turns a [`Trigger`] into a [`Plan`]. The runner holds the plan
//! until it is ready (the clock has reached `not_before`, and, if
//! `await_sources`, every source the view reads has a watermark at or past
//! `as_of` — or `max_wait` has passed, in which case the run is marked
//! *degraded* with the lagging sources named), then loads the view as of a
//! consistent time and runs the check.

use std::fmt::Debug;
use std::time::Duration;

use crate::model::{RecordKey, SourceId};
use crate::time::Timestamp;

/// The default cap on how long [`Freshness`] waits for lagging sources.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(300);

/// The update that triggered a check for a root record.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    /// The root record the check runs for.
    pub root: RecordKey,
    /// The updated record (the root itself, or a joined record).
    pub updated: RecordKey,
    /// The source that delivered the update.
    pub source: SourceId,
    /// The update's commit time in its source.
    pub commit_time: Timestamp,
    /// The runner's clock when the trigger arrived.
    pub received_at: Timestamp,
}

/// When and how a triggered check runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Source time the view must be loaded as of (at least).
    pub as_of: Timestamp,
    /// The check does not run before the clock reaches this.
    pub not_before: Timestamp,
    /// Wait until every source the view reads has a watermark ≥ `as_of`.
    pub await_sources: bool,
    /// Give up waiting for sources this long after `as_of` on the clock and
    /// run anyway, degraded. When triggers coalesce into one pending run,
    /// the earliest of their caps (`as_of + max_wait`) is kept.
    pub max_wait: Duration,
}

/// Decides when a triggered check runs. Implement it to write your own.
pub trait ExecutionStrategy: Send + Sync + Debug + 'static {
    /// The plan for one trigger.
    fn plan(&self, trigger: &Trigger) -> Plan;

    /// This strategy, then `next` measured from this one's `as_of`
    /// (e.g. a grace period, then waiting for freshness).
    fn then<S: ExecutionStrategy>(self, next: S) -> Then<Self, S>
    where
        Self: Sized,
    {
        Then(self, next)
    }
}

/// Run as soon as triggered, on the latest data (may raise false alarms on
/// data still in flight).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Immediate;

impl ExecutionStrategy for Immediate {
    fn plan(&self, trigger: &Trigger) -> Plan {
        Plan {
            as_of: trigger.received_at.max(trigger.commit_time),
            not_before: trigger.received_at,
            await_sources: false,
            max_wait: Duration::ZERO,
        }
    }
}

/// Run a fixed time after the update's commit time (an SLA: "completed
/// transfers have a bank payment within 10 minutes"), on the data as of then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedDelay(pub Duration);

impl ExecutionStrategy for FixedDelay {
    fn plan(&self, trigger: &Trigger) -> Plan {
        let due = trigger.commit_time.saturating_add(self.0);
        Plan {
            as_of: due,
            not_before: due,
            await_sources: false,
            max_wait: Duration::ZERO,
        }
    }
}

/// The default: run once every source the view reads has caught up to the
/// update's commit time, so a lagging source delays the check instead of
/// failing it; after `max_wait` run anyway, degraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    /// The cap on waiting for lagging sources.
    pub max_wait: Duration,
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

impl ExecutionStrategy for Freshness {
    fn plan(&self, trigger: &Trigger) -> Plan {
        Plan {
            as_of: trigger.commit_time,
            not_before: trigger.received_at,
            await_sources: true,
            max_wait: self.max_wait,
        }
    }
}

/// Two strategies in sequence: the second is planned from the first's
/// `as_of` (see [`ExecutionStrategy::then`]).
///
/// ```
/// use std::time::Duration;
/// use overseer_core::strategy::{ExecutionStrategy, FixedDelay, Freshness, Trigger};
/// use overseer_core::{RecordKey, SourceId, Timestamp};
///
/// let grace_then_fresh = FixedDelay(Duration::from_secs(60)).then(Freshness::default());
/// let trigger = Trigger {
///     root: RecordKey::new("transfers", "t1")?,
///     updated: RecordKey::new("transfers", "t1")?,
///     source: SourceId::new("mongo")?,
///     commit_time: Timestamp::from_secs(1_000),
///     received_at: Timestamp::from_secs(1_001),
/// };
/// let plan = grace_then_fresh.plan(&trigger);
/// assert_eq!(plan.as_of, Timestamp::from_secs(1_060));
/// assert_eq!(plan.not_before, Timestamp::from_secs(1_060));
/// assert!(plan.await_sources);
/// # Ok::<(), overseer_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Then<A, B>(pub A, pub B);

impl<A: ExecutionStrategy, B: ExecutionStrategy> ExecutionStrategy for Then<A, B> {
    fn plan(&self, trigger: &Trigger) -> Plan {
        let first = self.0.plan(trigger);
        let shifted = Trigger {
            commit_time: first.as_of,
            received_at: first.not_before.max(trigger.received_at),
            ..trigger.clone()
        };
        let second = self.1.plan(&shifted);
        Plan {
            as_of: first.as_of.max(second.as_of),
            not_before: first.not_before.max(second.not_before),
            await_sources: first.await_sources || second.await_sources,
            max_wait: first.max_wait.max(second.max_wait),
        }
    }
}

impl<S: ExecutionStrategy + ?Sized> ExecutionStrategy for std::sync::Arc<S> {
    fn plan(&self, trigger: &Trigger) -> Plan {
        (**self).plan(trigger)
    }
}

impl<S: ExecutionStrategy + ?Sized> ExecutionStrategy for Box<S> {
    fn plan(&self, trigger: &Trigger) -> Plan {
        (**self).plan(trigger)
    }
}

/// Parses a duration literal as the `#[check]` options take it: `500ms`,
/// `5s`, `10m`, `1h`, `1h30m` (humantime syntax).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(overseer_core::strategy::parse_duration("10m"), Ok(Duration::from_secs(600)));
/// assert!(overseer_core::strategy::parse_duration("ten minutes").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 500ms, 5s, 10m, 1h: {e}"))
}
