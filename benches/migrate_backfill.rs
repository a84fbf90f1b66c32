//! The live-table backfill on real Postgres: `N` ledger-sized rows
//! (`ledger_entries`, 8 columns, a primary key and three secondary indexes)
//! generated from a legacy table, imported into the unindexed copy, indexed
//! concurrently and flipped, while a writer commits one insert or update on
//! the live table every 2 ms. Prints one JSON line: import rows/s (time in
//! `COPY` only, and wall time with reads, checksums and throttle pauses),
//! each step's seconds, and the writer's latency percentiles per phase
//! against its baseline.
//!
//! ```text
//! cargo bench -p overseer-benches --bench migrate_backfill -- 1000000 [THROTTLE_MS] [CHUNK_ROWS]
//! ```
//!
//! Uses the server at `OVERSEER_TEST_PG_URL`, or starts one with
//! `scripts/pg.sh` (stopped at the end). Defaults: 1 000 000 rows (or
//! `OVERSEER_BENCH_ROWS`), 25 ms throttle, 50 000-row chunks.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overseer_builders::migrate::backfill::{Backfill, BackfillSettings, Step, TableSpec};
use overseer_core::object_store::local::LocalFileSystem;
use serde_json::json;
use tokio_postgres::{Client, NoTls};

const TRANSFORM: &str = "SELECT id, account, transfer_id, (amount * 100)::bigint AS amount_minor, currency, \
     (balance * 100)::bigint AS balance_after, prev AS prev_id, created AS created_at FROM legacy_entries";

/// Phases of the writer's latencies: before the backfill, then each step.
const PHASES: [&str; 9] = [
    "baseline", "generate", "copy", "triggers", "import", "resolve", "index", "flip", "after",
];

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{db}")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let nums: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let rows = nums
        .first()
        .copied()
        .or_else(|| {
            std::env::var("OVERSEER_BENCH_ROWS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1_000_000);
    let throttle_ms = nums.get(1).copied().unwrap_or(25);
    let chunk_rows = nums.get(2).copied().unwrap_or(50_000);

    let mut started_server = None;
    let server = match std::env::var("OVERSEER_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let dir = tempfile::Builder::new()
                .prefix("overseer-bench-pg")
                .tempdir()
                .unwrap();
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg.sh");
            let out = Command::new("bash")
                .args([script, "start", dir.path().to_str().unwrap()])
                .output()
                .expect("scripts/pg.sh runs");
            assert!(
                out.status.success(),
                "pg.sh: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            started_server = Some((dir, script));
            url
        }
    };
    let suffix = std::process::id();
    let (legacy_db, target_db) = (
        format!("bench_bf_legacy_{suffix}"),
        format!("bench_bf_target_{suffix}"),
    );
    let admin = connect(&server).await;
    for db in [&legacy_db, &target_db] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
    }
    let (legacy_url, target_url) = (with_db(&server, &legacy_db), with_db(&server, &target_db));
    let legacy = connect(&legacy_url).await;
    let target = connect(&target_url).await;

    legacy
        .batch_execute(&format!(
            "CREATE TABLE legacy_entries (id bigint, account text, transfer_id text, amount numeric(14, 2),
                 currency text, balance numeric(16, 2), prev bigint, created timestamptz);
             INSERT INTO legacy_entries
                 SELECT i, 'acct-' || (i % 50000), 'tr-' || (i / 2), ((i % 10000) - 5000) / 100.0, 'EUR',
                        (i % 1000000) / 100.0, NULLIF(i - 2, -1),
                        timestamptz '2024-01-01' + i * interval '1 second'
                   FROM generate_series(1, {rows}) i;
             ANALYZE legacy_entries;"
        ))
        .await
        .unwrap();
    target
        .batch_execute(&format!(
            "CREATE TABLE ledger_entries (id bigint PRIMARY KEY, account text NOT NULL, transfer_id text NOT NULL,
                 amount_minor bigint NOT NULL, currency text NOT NULL, balance_after bigint NOT NULL,
                 prev_id bigint, created_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX ledger_entries_account_idx ON ledger_entries (account, id);
             CREATE INDEX ledger_entries_transfer_idx ON ledger_entries (transfer_id);
             CREATE INDEX ledger_entries_created_idx ON ledger_entries (created_at);
             INSERT INTO ledger_entries
                 SELECT i, 'acct-live', 'tr-live-' || i, 1, 'EUR', 1, NULL, now()
                   FROM generate_series({rows} + 1, {rows} + 1000) i;"
        ))
        .await
        .unwrap();

    // The writer: one statement every 2 ms, latency recorded per phase.
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer_client = connect(&target_url).await;
    let writer = {
        let (phase, stop) = (phase.clone(), stop.clone());
        tokio::spawn(async move {
            let mut lat: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
            let mut errors = 0u64;
            let mut n: i64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                n += 1;
                let id = rows as i64 + 10_000 + n;
                let began = Instant::now();
                let result = if n % 2 == 0 {
                    writer_client
                        .execute(
                            "INSERT INTO ledger_entries (id, account, transfer_id, amount_minor, currency, balance_after) \
                             VALUES ($1, 'acct-w', 'tr-w-' || $1::bigint, 5, 'EUR', 5)",
                            &[&id],
                        )
                        .await
                } else {
                    writer_client
                        .execute(
                            "UPDATE ledger_entries SET amount_minor = amount_minor + 1 WHERE id = $1",
                            &[&(rows as i64 + 1 + (n % 1000))],
                        )
                        .await
                };
                let ms = began.elapsed().as_secs_f64() * 1000.0;
                match result {
                    Ok(_) => lat[phase.load(Ordering::SeqCst)].push(ms),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;

    let data = tempfile::tempdir().unwrap();
    let mut table = TableSpec::new("ledger_entries", TRANSFORM);
    table.chunk_rows = chunk_rows;
    table.throttle = Duration::from_millis(throttle_ms);
    let settings = BackfillSettings::new(legacy_url.clone(), target_url.clone(), vec![table]);
    let step_times: Arc<Mutex<Vec<(Step, bool, Instant)>>> = Arc::default();
    let backfill = {
        let (phase, times) = (phase.clone(), step_times.clone());
        Backfill::new(
            settings,
            Arc::new(LocalFileSystem::new_with_prefix(data.path()).unwrap()),
        )
        .unwrap()
        .on_progress(move |p| {
            let starting =
                p.message == "starting" || p.step == Step::Flip && p.message.starts_with("caught up");
            if starting {
                phase.store(p.step.number() + 1, Ordering::SeqCst);
            }
            if p.message == "starting" || p.message == "done" {
                times.lock().unwrap().push((p.step, starting, Instant::now()));
            }
        })
    };
    let began = Instant::now();
    let report = backfill.run().await.expect("the backfill runs");
    let total_secs = began.elapsed().as_secs_f64();
    phase.store(PHASES.len() - 1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut lat, errors) = writer.await.unwrap();

    let t = &report.tables[0];
    let count: i64 = target
        .query_one(
            "SELECT count(*) FROM ledger_entries WHERE id <= $1",
            &[&(rows as i64)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count as u64, rows, "every backfilled row is in the flipped table");

    let times = step_times.lock().unwrap().clone();
    let step_secs: serde_json::Map<String, serde_json::Value> = Step::ALL
        .iter()
        .filter(|s| **s != Step::Flip)
        .filter_map(|s| {
            let start = times.iter().find(|(st, b, _)| st == s && *b)?.2;
            let end = times.iter().find(|(st, b, _)| st == s && !*b)?.2;
            Some((s.as_str().to_owned(), json!(round3((end - start).as_secs_f64()))))
        })
        .collect();
    let mut writer = serde_json::Map::new();
    for (i, name) in PHASES.iter().enumerate() {
        let l = &mut lat[i];
        l.sort_by(f64::total_cmp);
        writer.insert(
            (*name).to_owned(),
            json!({"n": l.len(), "p50_ms": round3(percentile(l, 0.5)), "p99_ms": round3(percentile(l, 0.99)), "max_ms": round3(l.last().copied().unwrap_or(0.0))}),
        );
    }
    let base_p99 = percentile(&lat[0], 0.99);
    let ratio = |i: usize| round3(percentile(&lat[i], 0.99) / base_p99.max(1e-9));
    println!(
        "{}",
        json!({
            "bench": "migrate_backfill",
            "rows": rows,
            "chunk_rows": chunk_rows,
            "throttle_ms": throttle_ms,
            "import_rows_per_sec_copy": (t.imported_rows as f64 / t.import_copy_secs.max(1e-9)).round(),
            "import_rows_per_sec_wall": (t.imported_rows as f64 / t.import_secs.max(1e-9)).round(),
            "import_copy_secs": round3(t.import_copy_secs),
            "step_secs": step_secs,
            "flip_lock_ms": round3(t.flip_secs * 1000.0),
            "total_secs": round3(total_secs),
            "writer": writer,
            "writer_p99_ratio": {"import": ratio(4), "index": ratio(6), "flip": ratio(7)},
            "writer_errors": errors,
        })
    );

    drop((legacy, target));
    for db in [&legacy_db, &target_db] {
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await;
    }
    if let Some((dir, script)) = started_server {
        let _ = Command::new("bash")
            .args([script, "stop", dir.path().to_str().unwrap()])
            .status();
    }
}
