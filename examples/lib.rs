//! Runnable examples of Overseer, and the code they share.
//!
//! The flagship is [`payments`]: three systems of a payments platform, each
//! writing its own database and reaching Overseer through its own change
//! data capture format, reconciled by five checks on simulated time. Run it
//! with `cargo run --release --example payments`.
//!
//! [`ledger_migration`] moves a ledger from a legacy Postgres database to a
//! new double-entry ledger while a workload keeps writing through the dual
//! write layer: shadow phase, backfill, repair, verification, prefer-new.
//! Run it with `cargo run --release --example ledger_migration`.

pub mod ledger_migration;
pub mod payments;
