//! The ledger migration example against a real Postgres (the server
//! `bash scripts/test.sh` starts; see `scripts/pg.sh`), with a small ledger:
//! a clean run loses and duplicates nothing and verification finds nothing;
//! a run with the buggy transformation has verification name exactly the
//! injected faults.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use overseer_examples::ledger_migration::faults::FaultKind;
use overseer_examples::ledger_migration::{Config, ServerChoice, run};

/// A small, quick configuration on the test server, with database names of
/// its own (tests run in parallel on one server).
fn config(name: &str, inject_bugs: bool) -> Option<Config> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = overseer_tests::pg_server_url(name)?;
    Some(Config {
        server: ServerChoice::Url(url),
        db_prefix: format!(
            "ot_lm_{name}_{}_{}_",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
        rows: 3_000,
        accounts: 50,
        inject_bugs,
        legacy_only: Duration::from_millis(300),
        baseline: Duration::from_millis(500),
        prefer_new: Duration::from_millis(300),
        write_interval: Duration::from_millis(2),
        chunk_rows: 1_000,
        seed: 7,
        progress: true,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_migration_loses_and_duplicates_nothing() {
    let Some(config) = config("clean", false) else {
        return;
    };
    let report = run(&config).await.unwrap();
    let s = &report.summary;
    assert_eq!(s.lost_writes, 0, "{s:?}");
    assert_eq!(s.duplicate_rows, 0, "{s:?}");
    assert_eq!(s.verify_missing, 0, "{s:?}");
    assert_eq!(s.verify_mismatched, 0, "{s:?}");
    assert_eq!(s.shadow_mismatches, 0, "{s:?}");
    assert!(
        s.live_writes_during > 0,
        "the workload wrote during the migration: {s:?}"
    );
    assert!(s.legacy_rows > 3_000, "{s:?}");
    assert_eq!(
        s.new_rows,
        2 * s.legacy_rows,
        "two entries per transaction: {s:?}"
    );
    assert!(s.repaired_rows > 0, "the backfill left balances to repair: {s:?}");
    let integrity = report.verify.integrity.as_ref().unwrap();
    assert!(integrity.is_clean(), "{integrity:?}");
    assert!(
        report.found.faults.is_empty() && report.found.other.is_empty(),
        "{:?}",
        report.found
    );
    assert!(report.injected.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_names_exactly_the_injected_faults() {
    let Some(config) = config("bugs", true) else {
        return;
    };
    let report = run(&config).await.unwrap();
    let s = &report.summary;
    // With 3,000 seeded transactions every kind of fault is injected.
    for kind in [FaultKind::Dropped, FaultKind::WrongSign, FaultKind::Rounding] {
        assert!(
            report.injected.iter().filter(|f| f.kind == kind).count() >= 2,
            "{kind}: {:?}",
            report.injected
        );
    }
    assert_eq!(
        report.found.faults, report.injected,
        "missed {:?}, unexpected {:?}",
        report.missed, report.unexpected
    );
    assert!(report.found.other.is_empty(), "{:?}", report.found.other);
    let dropped = report
        .injected
        .iter()
        .filter(|f| f.kind == FaultKind::Dropped)
        .count() as u64;
    let wrong = report.injected.len() as u64 - dropped;
    assert_eq!(s.verify_missing, 2 * dropped, "{s:?}");
    assert_eq!(s.verify_mismatched, wrong, "{s:?}");
    assert_eq!(s.lost_writes, 0, "{s:?}");
    assert_eq!(s.duplicate_rows, 0, "{s:?}");
    // Each wrong amount leaves its transaction unbalanced.
    let integrity = report.verify.integrity.as_ref().unwrap();
    let unbalanced: std::collections::BTreeSet<i64> = integrity
        .unbalanced_transactions
        .items
        .iter()
        .map(|u| u.tx_id.as_deref().unwrap().parse().unwrap())
        .collect();
    let amounts: std::collections::BTreeSet<i64> = report
        .injected
        .iter()
        .filter(|f| f.kind != FaultKind::Dropped)
        .map(|f| f.tx)
        .collect();
    assert_eq!(unbalanced, amounts);
}
