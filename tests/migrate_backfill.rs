//! The backfill of live Postgres tables, against a real server (see
//! `scripts/pg.sh`): concurrent writers during every step, kills at every
//! step, a clean-slate rerun, the plan and the status.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use overseer_builders::migrate::backfill::{Backfill, BackfillError, BackfillSettings, Step, TableSpec};
use overseer_core::object_store::local::LocalFileSystem;
use overseer_tests::{PgDatabase, pg_database};
use tokio_postgres::Client;

/// Rows of the legacy table.
const LEGACY_ROWS: i64 = 3_000;

/// A ledger row as compared: (account, amount_minor, transfer_id).
type Row = (String, i64, String);

const TRANSFORM: &str = "
    -- The reviewed transformation: legacy entries to ledger_entries.
    SELECT entry_no AS id,
           'acct-' || (entry_no % 37) AS account,
           (amount * 100)::bigint AS amount_minor,
           'tr-' || entry_no AS transfer_id
      FROM old_entries
     ORDER BY entry_no;
";

/// The transformation's output, computed independently.
fn legacy_rows() -> BTreeMap<i64, Row> {
    (1..=LEGACY_ROWS)
        .map(|i| (i, (format!("acct-{}", i % 37), i * 100 + 25, format!("tr-{i}"))))
        .collect()
}

struct Fixture {
    legacy: PgDatabase,
    target: PgDatabase,
    _data: tempfile::TempDir,
    backfill: Backfill,
}

async fn fixture(name: &str, chunk_rows: u64, throttle_ms: u64) -> Option<Fixture> {
    let legacy = pg_database(&format!("{name}_legacy")).await?;
    let target = pg_database(&format!("{name}_target")).await?;
    legacy
        .client()
        .batch_execute(&format!(
            "CREATE TABLE old_entries (entry_no bigint PRIMARY KEY, amount numeric(12, 2) NOT NULL);
             INSERT INTO old_entries SELECT i, i + 0.25 FROM generate_series(1, {LEGACY_ROWS}) i;"
        ))
        .await
        .unwrap();
    // The live table: a primary key, a unique constraint, a plain index, an
    // owned sequence and a check constraint; some rows already dual-written
    // (ids 1-100, with values the legacy data does not have: live wins) and
    // some the legacy data does not have at all.
    target
        .client()
        .batch_execute(
            "CREATE TABLE ledger_entries (
                 id bigint PRIMARY KEY,
                 line bigserial NOT NULL,
                 account text NOT NULL,
                 amount_minor bigint NOT NULL CHECK (amount_minor > -1000000),
                 transfer_id text NOT NULL CONSTRAINT ledger_entries_transfer_uq UNIQUE,
                 created_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX ledger_entries_account_idx ON ledger_entries (account, id);
             INSERT INTO ledger_entries (id, account, amount_minor, transfer_id)
                 SELECT i, 'live-' || i, -1, 'tr-' || i FROM generate_series(1, 100) i;
             INSERT INTO ledger_entries (id, account, amount_minor, transfer_id)
                 SELECT i, 'live-only', 7, 'lo-' || i FROM generate_series(900001, 900020) i;",
        )
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalFileSystem::new_with_prefix(data.path()).unwrap());
    let mut table = TableSpec::new("ledger_entries", TRANSFORM);
    table.chunk_rows = chunk_rows;
    table.throttle = Duration::from_millis(throttle_ms);
    let settings = BackfillSettings::new(legacy.url(), target.url(), vec![table]);
    let backfill = Backfill::new(settings, store).unwrap();
    Some(Fixture {
        legacy,
        target,
        _data: data,
        backfill,
    })
}

/// The rows the live table starts with.
fn initial_live() -> BTreeMap<i64, Row> {
    let mut rows: BTreeMap<i64, Row> = (1..=100)
        .map(|i| (i, (format!("live-{i}"), -1, format!("tr-{i}"))))
        .collect();
    rows.extend((900_001..=900_020).map(|i| (i, ("live-only".to_owned(), 7, format!("lo-{i}")))));
    rows
}

/// What a backfill with no concurrent writer must end with.
fn expected_without_writer() -> BTreeMap<i64, Row> {
    let mut rows = legacy_rows();
    rows.extend(initial_live());
    rows
}

async fn table_rows(c: &Client) -> BTreeMap<i64, Row> {
    c.query(
        "SELECT id, account, amount_minor, transfer_id FROM ledger_entries",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
    .collect()
}

/// The first column of every row of `sql`, as text.
async fn first_column(c: &Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The flipped table is a normal table: its constraints and indexes have
/// their names, the sequence still serves inserts, nothing is left behind.
async fn assert_clean_flip(c: &Client) {
    let indexes = first_column(
        c,
        "SELECT indexname FROM pg_indexes WHERE tablename = 'ledger_entries' ORDER BY 1",
    )
    .await;
    assert_eq!(
        indexes,
        [
            "ledger_entries_account_idx",
            "ledger_entries_pkey",
            "ledger_entries_transfer_uq"
        ]
    );
    let constraints = first_column(
        c,
        "SELECT conname || ':' || contype::text FROM pg_constraint WHERE conrelid = 'ledger_entries'::regclass \
         AND contype IN ('p', 'u', 'c') ORDER BY 1",
    )
    .await;
    assert_eq!(constraints.len(), 3, "{constraints:?}");
    assert!(
        constraints.contains(&"ledger_entries_pkey:p".to_owned()),
        "{constraints:?}"
    );
    assert!(
        constraints.contains(&"ledger_entries_transfer_uq:u".to_owned()),
        "{constraints:?}"
    );
    let leftovers: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'ledger_entries_backfill%' \
             OR relname LIKE '%\\_bf' ",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0, "copy, side table or temporary index names left");
    let triggers: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'overseer_backfill'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
    let seq: Option<String> = c
        .query_one("SELECT pg_get_serial_sequence('ledger_entries', 'line')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(seq.is_some(), "the line sequence belongs to the new table");
    c.execute(
        "INSERT INTO ledger_entries (id, account, amount_minor, transfer_id) VALUES (-1, 'x', 1, 'probe')",
        &[],
    )
    .await
    .unwrap();
    c.execute("DELETE FROM ledger_entries WHERE id = -1", &[])
        .await
        .unwrap();
}

/// A writer committing inserts, updates and deletes on the live table and
/// remembering the last committed state of every key it touched.
struct Writer {
    stop: Arc<AtomicBool>,
    /// Deletes of keys that came from the legacy data or existed before are
    /// only made once the triggers log them, which is before generate takes
    /// its legacy snapshot (a delete before that cannot be told from a key
    /// that never existed; see the docs).
    may_delete_old: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<BTreeMap<i64, Option<Row>>>,
}

fn spawn_writer(client: Client, seed: u64) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let may_delete_old = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let (stop2, delete2, ops2) = (stop.clone(), may_delete_old.clone(), ops.clone());
    let task = tokio::spawn(async move {
        let mut rng = seed;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            rng >> 33
        };
        let mut seen: BTreeMap<i64, Option<Row>> = BTreeMap::new();
        let mut own = Vec::new();
        let mut n = 0i64;
        while !stop2.load(Ordering::SeqCst) {
            n += 1;
            let roll = next() % 10;
            let result = if roll < 4 {
                let id = 500_000 + n;
                own.push(id);
                client
                    .query_opt(
                        "INSERT INTO ledger_entries (id, account, amount_minor, transfer_id) \
                         VALUES ($1, 'writer', $2, $3) \
                         RETURNING id, account, amount_minor, transfer_id",
                        &[&id, &n, &format!("w-{id}")],
                    )
                    .await
            } else if roll < 8 {
                // Update a legacy key (absent from the live table before the
                // flip: no row), a pre-existing one or the writer's own.
                let id = match next() % 3 {
                    0 => 1 + (next() % LEGACY_ROWS as u64) as i64,
                    1 => 1 + (next() % 100) as i64,
                    _ if !own.is_empty() => own[(next() as usize) % own.len()],
                    _ => 900_001,
                };
                client
                    .query_opt(
                        "UPDATE ledger_entries SET amount_minor = $2, account = 'upd' WHERE id = $1 \
                         RETURNING id, account, amount_minor, transfer_id",
                        &[&id, &(n * 10)],
                    )
                    .await
            } else {
                let id = if delete2.load(Ordering::SeqCst) && next() % 2 == 0 {
                    1 + (next() % LEGACY_ROWS as u64) as i64
                } else if !own.is_empty() {
                    own[(next() as usize) % own.len()]
                } else {
                    continue;
                };
                client
                    .query_opt(
                        "DELETE FROM ledger_entries WHERE id = $1 RETURNING id, account, amount_minor, transfer_id",
                        &[&id],
                    )
                    .await
                    .map(|r| {
                        if let Some(r) = &r {
                            seen.insert(r.get(0), None);
                        }
                        None
                    })
            };
            match result {
                Ok(Some(r)) => {
                    seen.insert(r.get(0), Some((r.get(1), r.get(2), r.get(3))));
                }
                Ok(None) => {}
                Err(e) => panic!("the writer's statement failed (no downtime allowed): {e:?}"),
            }
            ops2.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen
    });
    Writer {
        stop,
        may_delete_old,
        ops,
        task,
    }
}

impl Writer {
    /// Lets the writer commit a few more statements.
    async fn advance(&self, by: u64) {
        let until = self.ops.load(Ordering::SeqCst) + by;
        while self.ops.load(Ordering::SeqCst) < until && !self.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn finish(self) -> BTreeMap<i64, Option<Row>> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_during_every_step_are_kept_exactly() {
    let Some(f) = fixture("bf_writer", 400, 5).await else {
        return;
    };
    let writer = spawn_writer(f.target.connect().await, 7);
    writer.advance(20).await;
    for step in Step::ALL {
        let report = f.backfill.run_until(step).await.unwrap();
        assert_eq!(
            report.tables[0].executed,
            [step],
            "each call runs the next step only"
        );
        if step == Step::Triggers {
            writer.may_delete_old.store(true, Ordering::SeqCst);
        }
        // Writes land between every two steps too.
        writer.advance(20).await;
    }
    let writes = writer.finish().await;
    assert!(writes.len() > 50, "the writer made {} writes", writes.len());
    assert!(writes.values().any(Option::is_none), "the writer deleted rows");
    assert!(
        writes.keys().any(|k| (1..=LEGACY_ROWS).contains(k)),
        "the writer touched backfilled keys"
    );

    let mut expected = expected_without_writer();
    for (id, row) in &writes {
        match row {
            Some(row) => expected.insert(*id, row.clone()),
            None => expected.remove(id),
        };
    }
    let actual = table_rows(f.target.client()).await;
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !actual.contains_key(k))
        .take(5)
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(k))
        .take(5)
        .collect();
    let differ: Vec<_> = expected
        .iter()
        .filter(|(k, v)| actual.get(k).is_some_and(|a| a != *v))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "missing {missing:?}, extra {extra:?}, differing {differ:?}"
    );
    assert_eq!(actual.len(), expected.len());
    assert_clean_flip(f.target.client()).await;

    let status = f.backfill.status().await.unwrap();
    assert_eq!(status[0].current, None);
    assert!(status[0].steps.iter().all(|s| s.status == "done"), "{status:?}");
    // Running again does nothing.
    let again = f.backfill.run().await.unwrap();
    assert!(again.tables[0].executed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_after_any_step_finishes_with_the_same_table() {
    let expected = expected_without_writer();
    for step in Step::ALL {
        let Some(f) = fixture(&format!("bf_stop_{}", step.as_str()), 700, 0).await else {
            return;
        };
        f.backfill.run_until(step).await.unwrap();
        let status = f.backfill.status().await.unwrap();
        let next = Step::ALL.into_iter().find(|s| *s > step);
        assert_eq!(status[0].current, next, "after {step}");
        let report = f.backfill.run().await.unwrap();
        let executed: Vec<Step> = Step::ALL.into_iter().filter(|s| *s > step).collect();
        assert_eq!(report.tables[0].executed, executed, "resumed after {step}");
        assert_eq!(
            table_rows(f.target.client()).await,
            expected,
            "stopped after {step}"
        );
        assert_clean_flip(f.target.client()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_mid_chunk_resumes_without_duplicates() {
    let Some(f) = fixture("bf_kill_import", 200, 30).await else {
        return;
    };
    let backfill = f.backfill.clone();
    let run = tokio::spawn(async move { backfill.run_until(Step::Import).await });
    // Kill the run once a few of its 15 chunks are in.
    let c = f.target.client();
    loop {
        let n: i64 = match c
            .query_one("SELECT count(*) FROM overseer_migrate.chunks", &[])
            .await
        {
            Ok(r) => r.get(0),
            Err(_) => 0,
        };
        if n >= 3 {
            break;
        }
        assert!(!run.is_finished(), "the import ended before it could be killed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    let status = f.backfill.status().await.unwrap();
    assert_eq!(status[0].current, Some(Step::Import));
    assert_eq!(status[0].steps[Step::Import.number()].status, "running");

    let report = f.backfill.run().await.unwrap();
    assert!(
        report.tables[0].imported_chunks < 15,
        "imported chunks are not imported again"
    );
    let imported: i64 = c
        .query_one("SELECT sum(rows)::bigint FROM overseer_migrate.chunks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(imported, LEGACY_ROWS);
    assert_eq!(table_rows(c).await, expected_without_writer());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_index_left_by_a_killed_build_is_rebuilt() {
    let Some(f) = fixture("bf_invalid_index", 1000, 0).await else {
        return;
    };
    f.backfill.run_until(Step::Resolve).await.unwrap();
    let c = f.target.client();
    // What a killed CREATE INDEX CONCURRENTLY leaves: an INVALID index
    // (here made invalid by a duplicate key, then the duplicate removed).
    c.batch_execute("INSERT INTO ledger_entries_backfill (id, account, amount_minor, transfer_id) VALUES (1, 'dup', 0, 'dup')")
        .await
        .unwrap();
    assert!(
        c.batch_execute(
            "CREATE UNIQUE INDEX CONCURRENTLY ledger_entries_pkey_bf ON ledger_entries_backfill (id)"
        )
        .await
        .is_err()
    );
    c.batch_execute("DELETE FROM ledger_entries_backfill WHERE transfer_id = 'dup'")
        .await
        .unwrap();
    let valid: bool = c
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ledger_entries_pkey_bf'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!valid);
    f.backfill.run().await.unwrap();
    assert_eq!(table_rows(c).await, expected_without_writer());
    assert_clean_flip(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_slate_rerun_gives_the_same_table() {
    let Some(f) = fixture("bf_rerun", 1000, 0).await else {
        return;
    };
    f.backfill.run().await.unwrap();
    let first = table_rows(f.target.client()).await;
    assert_eq!(first, expected_without_writer());
    f.backfill.reset().await.unwrap();
    let status = f.backfill.status().await.unwrap();
    assert_eq!(status[0].current, Some(Step::Copy));
    let report = f.backfill.run().await.unwrap();
    assert_eq!(report.tables[0].executed, Step::ALL);
    assert_eq!(table_rows(f.target.client()).await, first);
    assert_clean_flip(f.target.client()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_in_the_data_stop_the_resolve() {
    let Some(f) = fixture("bf_dups", 1000, 0).await else {
        return;
    };
    f.legacy
        .client()
        .batch_execute(
            "ALTER TABLE old_entries DROP CONSTRAINT old_entries_pkey; INSERT INTO old_entries VALUES (500, 1)",
        )
        .await
        .unwrap();
    let err = f.backfill.run().await.unwrap_err();
    match &err {
        BackfillError::Data { step, reason, .. } => {
            assert_eq!(*step, Step::Resolve);
            assert!(
                reason.contains("1 primary keys appear more than once"),
                "{reason}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
    // Nothing was flipped: the live table is untouched.
    assert_eq!(table_rows(f.target.client()).await, initial_live());
}

#[tokio::test]
async fn plan_shows_every_steps_sql_and_status_reports_steps() {
    let Some(f) = fixture("bf_plan", 1000, 0).await else {
        return;
    };
    let plan = f.backfill.plan().await.unwrap();
    let steps: Vec<Step> = plan.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, Step::ALL);
    let text = plan.to_string();
    for needle in [
        "COPY (\n-- The reviewed transformation",
        "SELECT entry_no AS id,",
        "ORDER BY entry_no\n) TO STDOUT",
        "CREATE TABLE \"public\".\"ledger_entries_backfill\" (LIKE \"public\".\"ledger_entries\" INCLUDING DEFAULTS",
        "CREATE TRIGGER overseer_backfill AFTER INSERT OR UPDATE OR DELETE ON \"public\".\"ledger_entries\"",
        "pg_current_xact_id()",
        "COPY \"public\".\"ledger_entries_backfill\" (\"id\", \"line\", \"account\", \"amount_minor\", \"transfer_id\", \"created_at\") FROM STDIN",
        "DELETE FROM \"public\".\"ledger_entries_backfill\" c USING \"public\".\"ledger_entries\" l",
        "CREATE UNIQUE INDEX CONCURRENTLY \"ledger_entries_pkey_bf\" ON \"public\".\"ledger_entries_backfill\" USING btree (id)",
        "CREATE INDEX CONCURRENTLY \"ledger_entries_account_idx_bf\" ON \"public\".\"ledger_entries_backfill\" USING btree (account, id)",
        "ADD CONSTRAINT \"ledger_entries_pkey_bf\" PRIMARY KEY USING INDEX",
        "ADD CONSTRAINT \"ledger_entries_transfer_uq_bf\" UNIQUE USING INDEX",
        "ALTER SEQUENCE \"public\".\"ledger_entries_line_seq\" OWNED BY \"public\".\"ledger_entries_backfill\".\"line\"",
        "DROP TABLE \"public\".\"ledger_entries\"",
        "ALTER TABLE \"public\".\"ledger_entries_backfill\" RENAME TO \"ledger_entries\"",
        "RENAME CONSTRAINT \"ledger_entries_pkey_bf\" TO \"ledger_entries_pkey\"",
        "ALTER INDEX \"public\".\"ledger_entries_account_idx_bf\" RENAME TO \"ledger_entries_account_idx\"",
    ] {
        assert!(text.contains(needle), "the plan lacks {needle:?}:\n{text}");
    }
    // Planning changes nothing.
    let status = f.backfill.status().await.unwrap();
    assert_eq!(status[0].current, Some(Step::Copy));
    assert!(status[0].steps.iter().all(|s| s.status == "pending"));

    f.backfill.run_until(Step::Import).await.unwrap();
    let status = f.backfill.status().await.unwrap();
    assert_eq!(status[0].current, Some(Step::Resolve));
    let done: Vec<Step> = status[0]
        .steps
        .iter()
        .filter(|s| s.status == "done")
        .map(|s| s.step)
        .collect();
    assert_eq!(done, [Step::Copy, Step::Triggers, Step::Generate, Step::Import]);
    assert_eq!(
        status[0].steps[Step::Import.number()].detail,
        "3000 rows in 3 chunks"
    );
    assert!(
        status[0].steps[0]
            .updated_at
            .as_deref()
            .is_some_and(|t| t.ends_with('Z'))
    );
}

#[tokio::test]
async fn identifiers_from_the_config_are_quoted() {
    let Some(target) = pg_database("bf_quoted_target").await else {
        return;
    };
    let legacy = pg_database("bf_quoted_legacy").await.unwrap();
    target
        .client()
        .batch_execute(
            "CREATE SCHEMA \"Odd\"\"Schema\";
             CREATE TABLE \"Odd\"\"Schema\".\"we;ird \"\"t\" (\"K\" int PRIMARY KEY, \"v al\" text);
             INSERT INTO \"Odd\"\"Schema\".\"we;ird \"\"t\" VALUES (1, 'live')",
        )
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut table = TableSpec::new(
        "we;ird \"t",
        "SELECT g AS \"K\", 'v' || g AS \"v al\" FROM generate_series(1, 50) g",
    );
    table.schema = "Odd\"Schema".into();
    table.chunk_rows = 16;
    let settings = BackfillSettings::new(legacy.url(), target.url(), vec![table]);
    let store = Arc::new(LocalFileSystem::new_with_prefix(data.path()).unwrap());
    let backfill = Backfill::new(settings, store).unwrap();
    let report = backfill.run().await.unwrap();
    assert_eq!(report.tables[0].imported_rows, 50);
    let rows: Vec<(i32, String)> = target
        .client()
        .query(
            "SELECT \"K\", \"v al\" FROM \"Odd\"\"Schema\".\"we;ird \"\"t\" ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[0], (1, "live".to_owned()), "live wins");
    assert_eq!(rows[49], (50, "v50".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_that_cannot_get_its_lock_changes_nothing_and_is_retried() {
    let Some(f) = fixture("bf_flip_lock", 1000, 0).await else {
        return;
    };
    let mut settings = f.backfill.settings().clone();
    settings.flip_lock_timeout = Duration::from_millis(100);
    let store = Arc::new(LocalFileSystem::new_with_prefix(f._data.path()).unwrap());
    let backfill = Backfill::new(settings, store).unwrap();
    backfill.run_until(Step::Index).await.unwrap();

    // A long transaction holding a lock that conflicts with the flip's.
    let holder = f.target.connect().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE ledger_entries IN ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let err = backfill.run().await.unwrap_err();
    match &err {
        BackfillError::Sql { step, sql_state, .. } => {
            assert_eq!(
                (*step, sql_state.as_deref()),
                (Step::Flip, Some("55P03")),
                "{err}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(backfill.status().await.unwrap()[0].current, Some(Step::Flip));
    assert_eq!(
        table_rows(f.target.client()).await,
        initial_live(),
        "nothing flipped"
    );

    // Released while the flip is retrying: the flip goes through.
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        holder.batch_execute("COMMIT").await.unwrap();
    });
    let report = backfill.run().await.unwrap();
    release.await.unwrap();
    assert_eq!(report.tables[0].executed, [Step::Flip]);
    assert_eq!(table_rows(f.target.client()).await, expected_without_writer());
    assert_clean_flip(f.target.client()).await;
}

/// A legacy and a target database (the target running `live`) and a
/// directory for the chunk files.
async fn databases(name: &str, live: &str) -> Option<(PgDatabase, PgDatabase, tempfile::TempDir)> {
    let target = pg_database(&format!("{name}_target")).await?;
    let legacy = pg_database(&format!("{name}_legacy")).await.unwrap();
    target.client().batch_execute(live).await.unwrap();
    Some((legacy, target, tempfile::tempdir().unwrap()))
}

fn backfill_of(
    legacy: &PgDatabase,
    target: &PgDatabase,
    data: &tempfile::TempDir,
    tables: Vec<TableSpec>,
) -> Backfill {
    let settings = BackfillSettings::new(legacy.url(), target.url(), tables);
    let store = Arc::new(LocalFileSystem::new_with_prefix(data.path()).unwrap());
    Backfill::new(settings, store).unwrap()
}

type OddRow = (i64, Option<String>, Option<i64>);

async fn odd_rows(c: &Client, sql: &str) -> Vec<OddRow> {
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn odd_text_nulls_and_extreme_numbers_survive_one_row_chunks() {
    let Some((legacy, target, data)) = databases(
        "bf_odd",
        "CREATE TABLE t (id bigint PRIMARY KEY, v text, n bigint)",
    )
    .await
    else {
        return;
    };
    legacy
        .client()
        .batch_execute(
            "CREATE TABLE src (id bigint, v text, n bigint);
             INSERT INTO src VALUES (1, E'a\\nb', -9223372036854775808), (2, E'tab\\there', 9223372036854775807),
               (3, E'back\\\\slash', 0), (4, '\\N', NULL), (5, NULL, 1), (6, 'quo''te\"', 2), (7, '50%/x', 3),
               (8, E'\\r\\n', 4), (9, '', 5), (10, '🦀', 6);",
        )
        .await
        .unwrap();
    let expected = odd_rows(legacy.client(), "SELECT id, v, n FROM src ORDER BY id").await;
    let mut table = TableSpec::new("t", "SELECT id, v, n FROM src");
    table.chunk_rows = 1;
    let report = backfill_of(&legacy, &target, &data, vec![table])
        .run()
        .await
        .unwrap();
    assert_eq!(report.tables[0].imported_chunks, 10);
    assert_eq!(
        odd_rows(target.client(), "SELECT id, v, n FROM t ORDER BY id").await,
        expected
    );
}

#[tokio::test]
async fn an_empty_transformation_flips_the_live_rows_only() {
    let Some((legacy, target, data)) = databases(
        "bf_empty",
        "CREATE TABLE t (id bigint PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'live')",
    )
    .await
    else {
        return;
    };
    legacy
        .client()
        .batch_execute("CREATE TABLE src (id bigint, v text)")
        .await
        .unwrap();
    let backfill = backfill_of(
        &legacy,
        &target,
        &data,
        vec![TableSpec::new("t", "SELECT id, v FROM src")],
    );
    let report = backfill.run().await.unwrap();
    assert_eq!(report.tables[0].imported_rows, 0);
    assert_eq!(
        first_column(target.client(), "SELECT id || v FROM t").await,
        ["1live"]
    );
}

#[tokio::test]
async fn bad_data_and_configuration_stop_with_the_step_that_failed() {
    let Some((legacy, target, data)) =
        databases("bf_bad", "CREATE TABLE t (id bigint PRIMARY KEY, v text)").await
    else {
        return;
    };
    let cases = [
        (
            "t",
            "SELECT NULL::bigint AS id, 'x' AS v",
            Step::Import,
            "violates not-null constraint",
        ),
        (
            "t",
            "SELECT 1 AS id, 'x' AS nope",
            Step::Import,
            "[\"nope\"] are not columns of the table",
        ),
        (
            "t",
            "SELECT 'abc' AS id",
            Step::Import,
            "invalid input syntax for type bigint",
        ),
        (
            "t",
            "SELECT FROM nowhere",
            Step::Generate,
            "relation \"nowhere\" does not exist",
        ),
        (
            "missing",
            "SELECT 1 AS id",
            Step::Copy,
            "the table does not exist",
        ),
    ];
    for (table, sql, failed, message) in cases {
        let backfill = backfill_of(&legacy, &target, &data, vec![TableSpec::new(table, sql)]);
        let err = backfill.run().await.unwrap_err();
        match &err {
            BackfillError::Sql { step, .. } | BackfillError::Data { step, .. } => {
                assert_eq!(*step, failed, "{sql}: {err}");
            }
            other => panic!("{sql}: unexpected error {other}"),
        }
        assert!(err.to_string().contains(message), "{sql}: {err}");
        backfill.reset().await.unwrap();
    }
    let rows: i64 = target
        .client()
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn tables_whose_names_differ_by_a_slash_keep_their_own_chunk_files() {
    let Some((legacy, target, data)) = databases(
        "bf_slash",
        "CREATE TABLE \"a/b\" (id bigint PRIMARY KEY, v text); CREATE TABLE a_b (id bigint PRIMARY KEY, v text)",
    )
    .await
    else {
        return;
    };
    // Both tables' files went to `public.a_b/`: `a/b` imported the rows of
    // `a_b`'s transformation.
    let backfill = backfill_of(
        &legacy,
        &target,
        &data,
        vec![
            TableSpec::new("a/b", "SELECT g AS id, 'slash' AS v FROM generate_series(1, 3) g"),
            TableSpec::new(
                "a_b",
                "SELECT g AS id, 'under' AS v FROM generate_series(10, 14) g",
            ),
        ],
    );
    backfill.run().await.unwrap();
    assert_eq!(
        first_column(target.client(), "SELECT id || v FROM \"a/b\" ORDER BY id").await,
        ["1slash", "2slash", "3slash"]
    );
    assert_eq!(
        first_column(target.client(), "SELECT id || v FROM a_b ORDER BY id").await,
        ["10under", "11under", "12under", "13under", "14under"]
    );
    assert!(data.path().join("backfill/public.a+2Fb/manifest.json").exists());
}

#[tokio::test]
async fn a_transformation_changed_after_generate_is_refused_until_reset() {
    let Some((legacy, target, data)) =
        databases("bf_changed", "CREATE TABLE t (id bigint PRIMARY KEY, v text)").await
    else {
        return;
    };
    let spec = |v: &str| {
        TableSpec::new(
            "t",
            format!("SELECT g AS id, '{v}' AS v FROM generate_series(1, 3) g"),
        )
    };
    backfill_of(&legacy, &target, &data, vec![spec("old")])
        .run_until(Step::Generate)
        .await
        .unwrap();
    // The fixed transformation: the run imported the old chunk files.
    let fixed = backfill_of(&legacy, &target, &data, vec![spec("new")]);
    let err = fixed.run().await.unwrap_err();
    match &err {
        BackfillError::Data { step, reason, .. } => {
            assert_eq!(*step, Step::Import);
            assert!(
                reason.contains("the transformation changed since step generate"),
                "{reason}"
            );
            assert!(reason.contains("run reset"), "{reason}");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(first_column(target.client(), "SELECT v FROM t").await.is_empty());
    fixed.reset().await.unwrap();
    fixed.run().await.unwrap();
    assert_eq!(
        first_column(target.client(), "SELECT v FROM t").await,
        ["new", "new", "new"]
    );
}
