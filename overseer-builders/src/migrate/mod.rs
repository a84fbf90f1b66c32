//! Safe migrations of a ledger to a new Postgres store: the backfill's
//! *repair* (cumulative balances and links between sequential entries) and
//! *verification* (integrity inside the new store; completeness and
//! correctness against the legacy store by checksums of key ranges), plus
//! the same verification as Overseer checks for the shadow phase.
//!
//! The backfill itself (generate, copy tables, triggers, import, resolve,
//! concurrent indexes, flip) is the `backfill` module (feature
//! `postgres`); see `docs/migrations-backfill.md`.
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

/// A Postgres connection URL with its database name replaced by `db`
/// (`postgres://u@h:5432/postgres?sslmode=disable` with `ledger` gives
/// `postgres://u@h:5432/ledger?sslmode=disable`); the query string is kept.
///
/// ```
/// use overseer_builders::migrate::url_with_database;
/// assert_eq!(url_with_database("postgres://u@h:5/postgres?sslmode=disable", "ledger"),
///            "postgres://u@h:5/ledger?sslmode=disable");
/// assert_eq!(url_with_database("postgres://h", "x"), "postgres://h/x");
/// ```
pub fn url_with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let start = base.find("://").map_or(0, |i| i + 3);
    let path = base[start..].find('/').map_or(base.len(), |i| start + i);
    match query {
        Some(q) => format!("{}/{db}?{q}", &base[..path]),
        None => format!("{}/{db}", &base[..path]),
    }
}
