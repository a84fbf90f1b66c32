//! Procedural macros for Overseer.
