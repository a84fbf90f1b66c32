//! The `payments` simulation: Overseer's main job.
//!
//! Three systems of a payments platform each write their own database and
//! reach Overseer through their own change data capture format and delivery
//! lag ([`sim`], [`delivery`]); five checks ([`checks`]) reconcile them on
//! simulated time through the embedded pipeline ([`driver`]); the run is
//! scored against the discrepancies the simulation injected ([`metrics`]).
//! The example binary (`cargo run --release --example payments`) is a thin
//! command line over [`driver::run`].

pub mod checks;
pub mod delivery;
pub mod driver;
pub mod files;
pub mod metrics;
pub mod sim;

pub use driver::{Config, RunReport, StallSpec, StoreKind, StrategyMode, run};
