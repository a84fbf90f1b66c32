//! Safe migrations of a ledger to a new Postgres store: the backfill's
//! *repair* (cumulative balances and links between sequential entries) and
//! *verification* (integrity inside the new store; completeness and
//! correctness against the legacy store by checksums of key ranges), plus
//! the same verification as Overseer checks for the shadow phase.
//!
//! The backfill itself (generate, copy tables, triggers, import, resolve,
//! concurrent indexes, flip) is [`backfill`]; see `docs/migrations-backfill.md`.
//!
//! See `docs/migrations-verify.md`.

#[cfg(feature = "postgres")]
pub mod backfill;
pub mod checks;
#[cfg(feature = "postgres")]
mod diff;
#[cfg(feature = "postgres")]
pub mod ledger;
#[cfg(feature = "postgres")]
pub mod repair;
#[cfg(feature = "postgres")]
pub mod verify;
