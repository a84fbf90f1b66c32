//! Safe migrations, part 1: phased dual write and dual read.
//!
//! A service moving a dataset from a legacy store to a new one wraps each of
//! its store calls in a [`DualRouter`]: it passes the legacy call and the new
//! call as closures, and the router decides from the current [`Phase`] which
//! store is called and whose result is returned:
//!
//! | phase                   | reads                                           | writes                                                     |
//! |-------------------------|-------------------------------------------------|------------------------------------------------------------|
//! | [`Phase::LegacyOnly`]   | legacy                                          | legacy                                                     |
//! | [`Phase::Shadow`]       | both; legacy returned; compared off-path        | legacy, then new; legacy returned; new failure recorded    |
//! | [`Phase::PreferNew`]    | new returned, legacy read and compared off-path; new failure falls back to legacy | legacy, then new; new returned, legacy if new failed |
//! | [`Phase::NewOnly`]      | new                                             | new                                                        |
//!
//! The phase is a [`PhaseSwitch`], shared and switchable at run time (an
//! admin endpoint, a config watcher) without rebuilding anything.
//!
//! Comparisons run off the caller's path, on a bounded queue: when it is
//! full, comparisons are *sampled away* (counted, never waited for). The
//! comparison is a [`Compare`] implementation, usually a [`Comparator`]
//! built from options. Failures of the new side (errors, panics, timeouts)
//! never reach the caller in the shadow and prefer-new phases; they are
//! counted.
//!
//! Every discrepancy, and every new-side write that failed, becomes a
//! [`Discrepancy`] record in the Overseer store (model
//! [`DEFAULT_MODEL`], one record per operation and key, one update per
//! occurrence), written by a [`DiscrepancyRecorder`]: the CLI
//! (`overseer view`, `overseer history`), the DAL, checks and incidents see
//! them like any other source's records. See `docs/migrations-dual.md`.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> overseer_core::Result<()> {
//! use overseer_core::migration::{Comparator, DiscrepancyRecorder, DualRouter, Phase, PhaseSwitch};
//! use overseer_core::{SourceId, Store};
//! use serde_json::{Value, json};
//!
//! let store = Store::in_memory();
//! let phase = PhaseSwitch::new(Phase::Shadow);
//! let router = DualRouter::builder(DiscrepancyRecorder::new(store, SourceId::new("ledger-migration")?))
//!     .phase(phase.clone())
//!     .comparator(Comparator::new().ignore("updated_at"))
//!     .build()?;
//!
//! // The legacy and the new store calls, as closures returning futures.
//! let balance = router
//!     .read(
//!         "get_balance",
//!         "acct-1",
//!         || async { Ok::<Value, String>(json!({"cents": 100})) },
//!         || async { Ok::<Value, String>(json!({"cents": 101})) },
//!     )
//!     .await;
//! assert_eq!(balance, Ok(json!({"cents": 100}))); // shadow: the legacy result
//!
//! // A write: legacy first, then new; a new-side failure never fails the
//! // caller, it is recorded for repair.
//! let written = router
//!     .write(
//!         "post_transfer",
//!         "t-9",
//!         || async { Ok::<Value, String>(json!({"id": "t-9"})) },
//!         || async { Err::<Value, String>("new store unavailable".into()) },
//!     )
//!     .await;
//! assert_eq!(written, Ok(json!({"id": "t-9"})));
//!
//! phase.set(Phase::PreferNew); // no rebuild
//! router.flush().await;
//! let stats = router.stats();
//! assert_eq!((stats.reads, stats.writes, stats.mismatches), (1, 1, 2));
//! assert_eq!((stats.write_failures_recorded, stats.discrepancies_recorded), (1, 2));
//! # Ok(()) }
//! ```

mod compare;
mod dual;
mod record;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

pub use compare::{Comparator, Compare, Comparison, DEFAULT_MAX_DIFFERENCES, Difference};
pub use dual::{
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_QUEUE_CAPACITY, DEFAULT_REPAIR_CAPACITY, DualRouter, DualRouterBuilder,
};
pub use record::{Access, DEFAULT_MODEL, Discrepancy, DiscrepancyKind, DiscrepancyRecorder};

use crate::error::{Error, Result};

/// A phase of a migration, in the order a migration goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Phase {
    /// Before the migration: only the legacy store is called.
    LegacyOnly = 0,
    /// Writes go to both stores (legacy first), reads go to both; the legacy
    /// result is returned and the two are compared off the caller's path.
    Shadow = 1,
    /// The new result is returned; the legacy store is still written and
    /// read, and compared; a failure of the new side falls back to legacy.
    PreferNew = 2,
    /// After the migration: only the new store is called.
    NewOnly = 3,
}

impl Phase {
    /// Every phase, in migration order.
    pub const ALL: [Phase; 4] = [Phase::LegacyOnly, Phase::Shadow, Phase::PreferNew, Phase::NewOnly];

    /// The phase's name: `legacy_only`, `shadow`, `prefer_new`, `new_only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::LegacyOnly => "legacy_only",
            Phase::Shadow => "shadow",
            Phase::PreferNew => "prefer_new",
            Phase::NewOnly => "new_only",
        }
    }

    fn from_u8(value: u8) -> Phase {
        match value {
            1 => Phase::Shadow,
            2 => Phase::PreferNew,
            3 => Phase::NewOnly,
            // Only `PhaseSwitch` writes the value, always from a `Phase`.
            _ => Phase::LegacyOnly,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = Error;

    /// Parses a phase name (`shadow`, `prefer-new`, `prefer_new`, ...; case
    /// and `-`/`_` do not matter).
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == norm)
            .ok_or_else(|| Error::InvalidInput {
                what: "migration phase",
                reason: format!("{s:?}; expected legacy_only, shadow, prefer_new or new_only"),
            })
    }
}

/// The current phase, shared: clones see and change the same phase.
///
/// Each call of a [`DualRouter`] reads the phase once when it starts, so a
/// call runs entirely in one phase; calls started after [`set`](Self::set)
/// see the new phase.
///
/// ```
/// use overseer_core::migration::{Phase, PhaseSwitch};
/// let switch = PhaseSwitch::new(Phase::LegacyOnly);
/// let admin = switch.clone();
/// assert_eq!(admin.set("shadow".parse()?), Phase::LegacyOnly);
/// assert_eq!(switch.get(), Phase::Shadow);
/// # Ok::<(), overseer_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct PhaseSwitch(Arc<AtomicU8>);

impl PhaseSwitch {
    /// A switch starting at `phase`.
    pub fn new(phase: Phase) -> Self {
        Self(Arc::new(AtomicU8::new(phase as u8)))
    }

    /// The current phase.
    pub fn get(&self) -> Phase {
        Phase::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Switches to `phase`; returns the previous phase.
    pub fn set(&self, phase: Phase) -> Phase {
        Phase::from_u8(self.0.swap(phase as u8, Ordering::AcqRel))
    }
}

impl Default for PhaseSwitch {
    /// Starts at [`Phase::LegacyOnly`].
    fn default() -> Self {
        Self::new(Phase::LegacyOnly)
    }
}

/// A snapshot of a [`DualRouter`]'s counters (since it was built).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MigrationStats {
    /// Read calls, in every phase.
    pub reads: u64,
    /// Write calls, in every phase.
    pub writes: u64,
    /// Comparisons whose results matched (both sides failing counts as a
    /// match).
    pub matches: u64,
    /// Comparisons that found a discrepancy (differing results, or one side
    /// failing while the other succeeded).
    pub mismatches: u64,
    /// Failures of the new side in the shadow and prefer-new phases:
    /// errors, panics and timeouts (reads and writes).
    pub new_errors: u64,
    /// Of [`new_errors`](Self::new_errors), the panics.
    pub new_panics: u64,
    /// Prefer-new calls answered from legacy because the new side failed.
    pub fallbacks: u64,
    /// Comparisons skipped because the queue or the in-flight limit was
    /// full (the caller never waits for a comparison).
    pub sampled_away: u64,
    /// Comparators that panicked (counted, not recorded).
    pub comparator_panics: u64,
    /// New-side writes that failed after the legacy write succeeded.
    pub write_failures: u64,
    /// Of [`write_failures`](Self::write_failures), those stored as records
    /// for repair.
    pub write_failures_recorded: u64,
    /// Discrepancy records stored (all kinds, write failures included).
    pub discrepancies_recorded: u64,
    /// Discrepancy records that could not be stored (store errors after
    /// retries, a full repair queue); each is also logged at error level.
    pub record_failures: u64,
}

/// The live counters behind [`MigrationStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) reads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) matches: AtomicU64,
    pub(crate) mismatches: AtomicU64,
    pub(crate) new_errors: AtomicU64,
    pub(crate) new_panics: AtomicU64,
    pub(crate) fallbacks: AtomicU64,
    pub(crate) sampled_away: AtomicU64,
    pub(crate) comparator_panics: AtomicU64,
    pub(crate) write_failures: AtomicU64,
    pub(crate) write_failures_recorded: AtomicU64,
    pub(crate) discrepancies_recorded: AtomicU64,
    pub(crate) record_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> MigrationStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MigrationStats {
            reads: get(&self.reads),
            writes: get(&self.writes),
            matches: get(&self.matches),
            mismatches: get(&self.mismatches),
            new_errors: get(&self.new_errors),
            new_panics: get(&self.new_panics),
            fallbacks: get(&self.fallbacks),
            sampled_away: get(&self.sampled_away),
            comparator_panics: get(&self.comparator_panics),
            write_failures: get(&self.write_failures),
            write_failures_recorded: get(&self.write_failures_recorded),
            discrepancies_recorded: get(&self.discrepancies_recorded),
            record_failures: get(&self.record_failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_and_print() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
            assert_eq!(Phase::from_u8(p as u8), p);
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert_eq!("Prefer-New".parse::<Phase>().unwrap(), Phase::PreferNew);
        let err = "dual".parse::<Phase>().unwrap_err();
        assert!(err.to_string().contains("expected legacy_only"), "{err}");
    }

    #[test]
    fn switch_is_shared() {
        let a = PhaseSwitch::default();
        let b = a.clone();
        assert_eq!(b.set(Phase::NewOnly), Phase::LegacyOnly);
        assert_eq!(a.get(), Phase::NewOnly);
    }
}
