//! Compile-time behaviour of the macros: what compiles, and the errors of
//! what does not (`tests/ui/fail/*.stderr`, regenerated with
//! `TRYBUILD=overwrite cargo test -p overseer-macros --test ui`).
//!
//! Compiler messages change between releases, so this only runs on stable.

#[rustversion::attr(not(stable), ignore)]
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
