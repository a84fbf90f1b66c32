//! Runnable examples of Overseer, and the code they share.
//!
//! The flagship is [`payments`]: three systems of a payments platform, each
//! writing its own database and reaching Overseer through its own change
//! data capture format, reconciled by five checks on simulated time. Run it
//! with `cargo run --release --example payments`.

pub mod payments;
