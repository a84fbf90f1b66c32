//! Verification of a migrated ledger against its legacy store, on real
//! Postgres: `N` legacy transactions (one row each, amounts as text) mapped
//! to `2N` ledger entries, with a few injected differences. Loads with
//! `generate_series`, repairs, then times the comparison (range checksums),
//! the integrity checks, and both together. Prints one JSON line.
//!
//! ```text
//! cargo bench -p overseer-benches --bench migrate_verify -- 1000000
//! ```
//!
//! Uses the server at `OVERSEER_TEST_PG_URL`, or starts one with
//! `scripts/pg.sh` (stopped at the end). The row count is the first numeric
//! argument (or `OVERSEER_BENCH_ROWS`; default 1 000 000). With
//! `OVERSEER_BENCH_COMPARE_ONLY=1` only the comparison is timed (no repair,
//! no integrity checks: for the largest sizes).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::time::Instant;

use overseer_builders::migrate::ledger::LedgerSchema;
use overseer_builders::migrate::repair::{RepairOptions, repair};
use overseer_builders::migrate::url_with_database;
use overseer_builders::migrate::verify::{
    DiffOptions, IntegrityReport, LegacySource, VerifyOptions, check_integrity, compare, verify,
};
use serde_json::json;

const MAPPING: &str = "SELECT id * 2 AS id, id::text AS tx_id, from_account AS account, \
       -(amount::numeric * 100)::bigint AS amount_minor, currency FROM transactions \
     UNION ALL \
     SELECT id * 2 + 1, id::text, to_account, (amount::numeric * 100)::bigint, currency FROM transactions";

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

#[tokio::main]
async fn main() {
    let rows: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse().ok())
        .or_else(|| std::env::var("OVERSEER_BENCH_ROWS").ok()?.parse().ok())
        .unwrap_or(1_000_000);
    let mut started_dir = None;
    let server = match std::env::var("OVERSEER_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let dir = std::env::temp_dir().join(format!("overseer-bench-pg-{}", std::process::id()));
            let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
            let out = Command::new("bash")
                .arg(format!("{root}/scripts/pg.sh"))
                .arg("start")
                .arg(&dir)
                .output()
                .expect("scripts/pg.sh start");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            started_dir = Some(dir);
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
    };
    let admin = connect(&server).await;
    let tag = std::process::id();
    let (legacy_db, new_db) = (format!("bench_legacy_{tag}"), format!("bench_new_{tag}"));
    for db in [&legacy_db, &new_db] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
    }
    let legacy_url = url_with_database(&server, &legacy_db);
    let new_url = url_with_database(&server, &new_db);
    let (legacy, new) = (connect(&legacy_url).await, connect(&new_url).await);
    let accounts = (rows / 10).max(10);

    // Load both sides in parallel.
    let load = Instant::now();
    let legacy_sql = format!(
        "CREATE TABLE transactions (id bigint PRIMARY KEY, from_account text, to_account text, amount text, currency text);
         INSERT INTO transactions SELECT g, 'acc-' || (g * 7919 % {accounts}), 'acc-' || ((g * 104729 + 17) % {accounts}),
           ((g * 37 % 1000000) / 100.0)::numeric(12, 2)::text, 'EUR' FROM generate_series(1::bigint, {rows}) g;
         ANALYZE transactions;"
    );
    let new_sql = format!(
        "CREATE TABLE ledger_entries (id bigint, tx_id text, account text, amount_minor bigint, currency text,
           balance_after bigint, prev_id bigint, created_at timestamptz DEFAULT now());
         INSERT INTO ledger_entries (id, tx_id, account, amount_minor, currency)
           SELECT g * 2 + s, g::text, CASE s WHEN 0 THEN 'acc-' || (g * 7919 % {accounts}) ELSE 'acc-' || ((g * 104729 + 17) % {accounts}) END,
                  CASE s WHEN 0 THEN -1 ELSE 1 END * ((g * 37 % 1000000) / 100.0 * 100)::bigint, 'EUR'
           FROM generate_series(1::bigint, {rows}) g, (VALUES (0), (1)) v(s);
         ALTER TABLE ledger_entries ADD PRIMARY KEY (id);
         CREATE INDEX ON ledger_entries (account, id);
         ANALYZE ledger_entries;"
    );
    let (a, b) = tokio::join!(legacy.batch_execute(&legacy_sql), new.batch_execute(&new_sql));
    a.unwrap();
    b.unwrap();
    let load_ms = ms(load);

    let compare_only = std::env::var_os("OVERSEER_BENCH_COMPARE_ONLY").is_some();
    let schema = LedgerSchema::default();
    let started = Instant::now();
    let repaired = if compare_only {
        Default::default()
    } else {
        let report = repair(&new_url, &schema, &RepairOptions::default())
            .await
            .unwrap();
        new.batch_execute("VACUUM ANALYZE ledger_entries").await.unwrap();
        report
    };
    let repair_ms = ms(started);

    // A few differences: a rounding error, a wrong sign, a dropped row, an
    // extra row.
    new.batch_execute(&format!(
        "UPDATE ledger_entries SET amount_minor = amount_minor + 1 WHERE id = {a};
         UPDATE ledger_entries SET amount_minor = -amount_minor
           WHERE id = (SELECT min(id) FROM ledger_entries WHERE id >= {b} AND amount_minor <> 0);
         DELETE FROM ledger_entries WHERE id = {c};
         INSERT INTO ledger_entries VALUES ({d}, 'extra', 'acc-1', 1, 'EUR', NULL, NULL);",
        a = rows / 3,
        b = rows,
        c = rows + rows / 2,
        d = rows * 2 + 100,
    ))
    .await
    .unwrap();

    let source = LegacySource {
        url: legacy_url.clone(),
        query: MAPPING.to_owned(),
    };
    let diff = DiffOptions::default();
    let started = Instant::now();
    let comparison = compare(&new_url, &schema, &source, &diff, 1_000).await.unwrap();
    let compare_ms = ms(started);
    assert_eq!(comparison.differing.total, 2);
    assert_eq!(comparison.missing_in_new.total, 1);
    assert_eq!(comparison.missing_in_legacy.total, 1);
    let (mut integrity, mut integrity_ms, mut verify_ms) = (IntegrityReport::default(), 0, 0);
    if !compare_only {
        let started = Instant::now();
        integrity = check_integrity(&new_url, &schema, 1_000).await.unwrap();
        integrity_ms = ms(started);
        let started = Instant::now();
        let both = verify(&new_url, &schema, Some(&source), &VerifyOptions::default())
            .await
            .unwrap();
        verify_ms = ms(started);
        assert!(!integrity.is_clean());
        assert_eq!(both.comparison.as_ref().unwrap().differing.total, 2);
    }

    let s = &comparison.stats;
    println!(
        "{}",
        json!({
            "bench": "migrate_verify",
            "legacy_rows": rows,
            "compare_only": compare_only,
            "mapped_rows": comparison.legacy_rows,
            "new_rows": comparison.new_rows,
            "accounts": accounts,
            "load_ms": load_ms,
            "repair_ms": repair_ms,
            "repair_rows_changed": repaired.rows_changed,
            "repair_batches": repaired.batches,
            "compare_ms": compare_ms,
            "integrity_ms": integrity_ms,
            "verify_ms": verify_ms,
            "levels": s.levels,
            "ranges_checked": s.ranges_checked,
            "ranges_fetched": s.ranges_fetched,
            "rows_fetched": s.rows_fetched_legacy + s.rows_fetched_new,
            "findings": {
                "differing": comparison.differing.total,
                "missing_in_new": comparison.missing_in_new.total,
                "missing_in_legacy": comparison.missing_in_legacy.total,
                "accounts_with_different_totals": comparison.account_totals.total,
                "balance_mismatches": integrity.balance_mismatches.total,
                "unbalanced_transactions": integrity.unbalanced_transactions.total,
                "broken_links": integrity.broken_links.total,
            },
        })
    );
    drop((legacy, new));
    for db in [&legacy_db, &new_db] {
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await
            .unwrap();
    }
    if let Some(dir) = started_dir {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let _ = Command::new("bash")
            .arg(format!("{root}/scripts/pg.sh"))
            .arg("stop")
            .arg(&dir)
            .status();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
