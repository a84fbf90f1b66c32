//! The `ledger_migration` example: a ledger moved from a legacy Postgres
//! database to a new double-entry ledger service **while it keeps taking
//! writes**, the way the Coinbase ledger migration did it:
//!
//! 1. **legacy only**: the workload writes the legacy store;
//! 2. **shadow**: dual writes (legacy first, then new) and dual reads
//!    through [`DualRouter`], discrepancies recorded; the writer's latency
//!    here is the baseline;
//! 3. **backfill** ([`Backfill`]): generate (the versioned transformation
//!    `transform.sql`, or `transform_buggy.sql` with injected faults) → copy
//!    table → triggers → import → resolve → concurrent indexes → flip;
//! 4. **repair** ([`repair`]): cumulative balances and links between
//!    entries, until a pass changes nothing;
//! 5. **verify** ([`verify`]): integrity of the new ledger and comparison
//!    with the legacy store by checksums of key ranges; findings are checked
//!    again once in-flight writes settle, and named as faults;
//! 6. **prefer new**: reads answered by the new ledger, legacy compared.
//!
//! [`run`] does all of it and returns a [`Report`]; its [`Summary`] is the
//! example's JSON line. The binary (`cargo run --release --example
//! ledger_migration`) is a thin command line over it; the test
//! (`examples/ledger_migration/tests.rs`) calls it with a small ledger.

pub mod faults;
pub mod server;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use overseer_builders::migrate::backfill::{Backfill, BackfillError, BackfillSettings, RunReport, TableSpec};
use overseer_builders::migrate::ledger::{LedgerError, LedgerSchema};
use overseer_builders::migrate::repair::{RepairOptions, RepairReport, repair};
use overseer_builders::migrate::verify::{LegacySource, VerifyOptions, VerifyReport, verify};
use overseer_core::migration::{DiscrepancyRecorder, DualRouter, MigrationStats, Phase, PhaseSwitch};
use overseer_core::object_store::local::LocalFileSystem;
use overseer_core::{SourceId, Store};
use serde::Serialize;
use tokio_postgres::Client;

use faults::{Classified, Fault, classify, faults_of};
use server::{PgGuard, connect, fresh_database};
use workload::{Sample, Workload, WorkloadLog, WorkloadSpec};

/// The reviewed transformation (also the verification's mapping).
pub const TRANSFORM_SQL: &str = include_str!("transform.sql");

/// The transformation with known faults (`--inject-bugs`).
pub const TRANSFORM_BUGGY_SQL: &str = include_str!("transform_buggy.sql");

/// The legacy table, one row per transaction, amounts as decimal text, no
/// balances.
pub const LEGACY_SCHEMA: &str = "CREATE TABLE transactions (
    id bigint NOT NULL,
    from_account text NOT NULL,
    to_account text NOT NULL,
    amount text NOT NULL,
    currency text NOT NULL,
    created_at timestamptz NOT NULL)";

/// The new ledger service's table (what `overseer_builders::migrate::ledger`
/// expects by default): double entry, cumulative balances, links.
pub const LEDGER_SCHEMA: &str = "CREATE TABLE ledger_entries (
    id bigint PRIMARY KEY,
    tx_id text NOT NULL,
    account text NOT NULL,
    amount_minor bigint NOT NULL,
    currency text NOT NULL,
    balance_after bigint,
    prev_id bigint,
    created_at timestamptz NOT NULL);
CREATE INDEX ledger_entries_account_id ON ledger_entries (account, id);
CREATE INDEX ledger_entries_tx_id ON ledger_entries (tx_id)";

/// Repair runs again until a pass changes nothing, at most this often: a
/// pass racing a live write on an account it is fixing may leave that write's
/// balance to the next pass.
const MAX_REPAIR_PASSES: usize = 10;

/// Where the Postgres server comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerChoice {
    /// Start a throwaway server with this `scripts/pg.sh` and stop it at the
    /// end.
    Start {
        /// The harness script.
        script: PathBuf,
    },
    /// Use the server at this URL (its databases `<prefix>legacy` and
    /// `<prefix>ledger` are created; an earlier run's are dropped first).
    Url(String),
}

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// The server.
    pub server: ServerChoice,
    /// Prefix of the two database names (`<prefix>legacy`, `<prefix>ledger`).
    pub db_prefix: String,
    /// Legacy transactions seeded before the workload starts.
    pub rows: u64,
    /// Accounts the transactions move money between (at least 2).
    pub accounts: u64,
    /// Backfill with `transform_buggy.sql` instead of `transform.sql`.
    pub inject_bugs: bool,
    /// How long the workload writes the legacy store only.
    pub legacy_only: Duration,
    /// How long it dual-writes before the backfill (the latency baseline).
    pub baseline: Duration,
    /// How long it runs in the prefer-new phase at the end.
    pub prefer_new: Duration,
    /// Pause between two operations of the writer.
    pub write_interval: Duration,
    /// Rows per backfill chunk file.
    pub chunk_rows: u64,
    /// Seed of the workload's choices.
    pub seed: u64,
    /// Progress messages on stderr.
    pub progress: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerChoice::Start {
                script: server::default_script(),
            },
            db_prefix: String::new(),
            rows: 250_000,
            accounts: 1_000,
            inject_bugs: false,
            legacy_only: Duration::from_secs(1),
            baseline: Duration::from_secs(5),
            prefer_new: Duration::from_secs(2),
            write_interval: Duration::from_millis(2),
            chunk_rows: 100_000,
            seed: 1,
            progress: true,
        }
    }
}

impl Config {
    /// Every problem at once.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        if self.rows == 0 {
            problems.push("rows: must be at least 1".to_owned());
        }
        if self.rows > 500_000_000 {
            problems.push("rows: at most 500000000".to_owned());
        }
        if self.accounts < 2 {
            problems.push("accounts: must be at least 2".to_owned());
        }
        if self.chunk_rows == 0 {
            problems.push("chunk_rows: must be at least 1".to_owned());
        }
        if self.db_prefix.len() > 40 {
            problems.push("db_prefix: at most 40 bytes".to_owned());
        }
        if self.db_prefix.contains('\0') {
            problems.push("db_prefix: cannot contain NUL".to_owned());
        }
        if let ServerChoice::Url(url) = &self.server
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            problems.push(format!(
                "database_url: {:?} is not a postgres:// URL",
                server::redact(url)
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config { problems })
        }
    }
}

/// The example's JSON line.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Legacy transactions at the end.
    pub legacy_rows: u64,
    /// New ledger entries at the end (two per transaction).
    pub new_rows: u64,
    /// Workload writes committed from the start of the backfill to the end
    /// of verification.
    pub live_writes_during: u64,
    /// Workload writes (posts, amendments, cancellations, in every phase)
    /// whose effect is not in the new ledger at the end; transactions hit by
    /// an injected fault are counted as faults instead.
    pub lost_writes: u64,
    /// Entry ids present more than once, plus entries beyond two per
    /// transaction.
    pub duplicate_rows: u64,
    /// Rows the repair changed (balances or links), over its passes.
    pub repaired_rows: u64,
    /// Entries verification found missing on one side (after in-flight
    /// writes settled).
    pub verify_missing: u64,
    /// Entries verification found differing (after in-flight writes settled).
    pub verify_mismatched: u64,
    /// Discrepancies of the dual reads and writes (shadow and prefer-new).
    pub shadow_mismatches: u64,
    /// Imported rows per second of backfill wall time (generate to flip).
    pub backfill_rows_per_sec: f64,
    /// New-ledger entries verified per second.
    pub verify_rows_per_sec: f64,
    /// The writer's p99 latency while dual-writing before the backfill.
    pub writer_p99_ms_baseline: f64,
    /// The writer's p99 latency while the backfill ran.
    pub writer_p99_ms_during: f64,
}

/// Everything a run found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The JSON line.
    pub summary: Summary,
    /// The faults the buggy transformation put into the new ledger (empty
    /// without `inject_bugs`).
    pub injected: BTreeSet<Fault>,
    /// What verification's findings name.
    pub found: Classified,
    /// Injected faults verification did not name.
    pub missed: Vec<Fault>,
    /// Faults verification named that were not injected.
    pub unexpected: Vec<Fault>,
    /// Verification findings that were in-flight writes (gone on a second
    /// look once the writer stopped).
    pub in_flight: u64,
    /// The backfill's report.
    pub backfill: RunReport,
    /// The repair passes.
    pub repairs: Vec<RepairReport>,
    /// The verification.
    pub verify: VerifyReport,
    /// The dual router's counters.
    pub stats: MigrationStats,
    /// Workload operations and reads.
    pub workload_writes: u64,
    /// Reads through the router.
    pub workload_reads: u64,
}

/// Errors of a run, with what was being done.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work.
    Config {
        /// Every problem.
        problems: Vec<String>,
    },
    /// The server could not be started or used.
    Server {
        /// What went wrong and what to do.
        reason: String,
    },
    /// A connection failed.
    Connect {
        /// To what.
        what: String,
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A statement failed.
    Sql {
        /// What was being done.
        step: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A file-system operation failed.
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The backfill failed.
    Backfill(BackfillError),
    /// Repair or verification failed.
    Ledger(LedgerError),
    /// The dual router could not be built.
    Overseer(overseer_core::Error),
    /// The workload failed (a legacy write failing is downtime).
    Workload {
        /// What failed.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { problems } => write!(f, "invalid configuration: {}", problems.join("; ")),
            Error::Server { reason } => write!(f, "postgres server: {reason}"),
            Error::Connect { what, url, source } => {
                write!(f, "cannot connect to {what} at {url}: {}", pg_message(source))
            }
            Error::Sql { step, source } => write!(f, "{step} failed: {}", pg_message(source)),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Backfill(e) => write!(f, "backfill: {e}"),
            Error::Ledger(e) => write!(f, "{e}"),
            Error::Overseer(e) => write!(f, "overseer: {e}"),
            Error::Workload { reason } => write!(f, "workload: {reason}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } | Error::Sql { source, .. } => Some(source),
            Error::Io { source, .. } => Some(source),
            Error::Backfill(e) => Some(e),
            Error::Ledger(e) => Some(e),
            Error::Overseer(e) => Some(e),
            Error::Config { .. } | Error::Server { .. } | Error::Workload { .. } => None,
        }
    }
}

/// The server's message when there is one (the driver's `Display` says only
/// "db error"), else the driver's error with its cause.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn sql_err(step: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |source| Error::Sql {
        step: step.to_owned(),
        source,
    }
}

/// Progress on stderr, with the time since the start.
#[derive(Clone)]
struct Progress {
    on: bool,
    started: Instant,
}

impl Progress {
    fn say(&self, message: impl fmt::Display) {
        if self.on {
            eprintln!("[{:>6.1}s] {message}", self.started.elapsed().as_secs_f64());
        }
    }
}

/// Runs the whole example (see the [module documentation](self)).
pub async fn run(config: &Config) -> Result<Report, Error> {
    config.validate()?;
    let progress = Progress {
        on: config.progress,
        started: Instant::now(),
    };
    // The guard lives until the end of this function: the server stops on
    // every way out of it (error, panic, a cancelled future).
    let (_guard, server_url) = match &config.server {
        ServerChoice::Start { script } => {
            progress.say(format!("starting postgres with {}", script.display()));
            let guard = PgGuard::start(script)?;
            let url = guard.url().to_owned();
            progress.say(format!("postgres at {url}"));
            (Some(guard), url)
        }
        ServerChoice::Url(url) => (None, url.clone()),
    };
    let legacy_url = fresh_database(&server_url, &format!("{}legacy", config.db_prefix)).await?;
    let ledger_url = fresh_database(&server_url, &format!("{}ledger", config.db_prefix)).await?;
    let legacy = connect(&legacy_url, "the legacy database").await?;
    let ledger = connect(&ledger_url, "the ledger database").await?;

    progress.say(format!(
        "seeding {} legacy transactions between {} accounts",
        config.rows, config.accounts
    ));
    let seeded = Instant::now();
    seed_legacy(&legacy, config.rows, config.accounts).await?;
    ledger
        .batch_execute(LEDGER_SCHEMA)
        .await
        .map_err(sql_err("creating the new ledger schema"))?;
    progress.say(format!("seeded in {:.1}s", seeded.elapsed().as_secs_f64()));

    let phase = PhaseSwitch::new(Phase::LegacyOnly);
    let recorder = DiscrepancyRecorder::new(
        Store::in_memory(),
        SourceId::new("ledger-migration").map_err(Error::Overseer)?,
    );
    let router = DualRouter::builder(recorder)
        .phase(phase.clone())
        .build()
        .map_err(Error::Overseer)?;
    let rows = i64::try_from(config.rows).unwrap_or(i64::MAX);
    let workload = Workload::start(
        router.clone(),
        connect(&legacy_url, "the legacy database (writer)").await?,
        connect(&ledger_url, "the ledger database (writer)").await?,
        WorkloadSpec {
            first_id: rows + 1,
            accounts: config.accounts,
            interval: config.write_interval,
            seed: config.seed,
            seeded: rows,
        },
    );
    let data_dir = tempfile::Builder::new()
        .prefix("overseer-ledger-backfill.")
        .tempdir()
        .map_err(|source| Error::Io {
            what: "creating the backfill's data directory".into(),
            source,
        })?;
    let migration = Migration {
        config,
        progress: &progress,
        phase: &phase,
        legacy_url: &legacy_url,
        ledger_url: &ledger_url,
        data_dir: data_dir.path().to_owned(),
    };
    // The writer stops whatever happens to the migration.
    let outcome = migration.run(&workload).await;
    let log = workload.finish().await;
    let (steps, log) = match (outcome, log) {
        (Ok(steps), Ok(log)) => (steps, log),
        // A writer that failed explains why the migration stopped.
        (_, Err(writer)) => return Err(writer),
        (Err(e), Ok(_)) => return Err(e),
    };
    router.flush().await;
    progress.say(format!(
        "writer stopped after {} writes and {} reads",
        log.samples.len(),
        log.reads
    ));
    let report = measure(config, &progress, &legacy, &ledger, steps, log, router.stats()).await?;
    progress.say("done");
    Ok(report)
}

/// What the migration steps produced.
struct Steps {
    shadow_at: Instant,
    backfill_at: Instant,
    flipped_at: Instant,
    writes_during: u64,
    backfill: RunReport,
    backfill_secs: f64,
    repairs: Vec<RepairReport>,
    verify: VerifyReport,
}

struct Migration<'a> {
    config: &'a Config,
    progress: &'a Progress,
    phase: &'a PhaseSwitch,
    legacy_url: &'a str,
    ledger_url: &'a str,
    data_dir: PathBuf,
}

impl Migration<'_> {
    async fn run(&self, workload: &Workload) -> Result<Steps, Error> {
        let p = self.progress;
        p.say(format!(
            "phase legacy_only: the writer writes the legacy store ({:?})",
            self.config.legacy_only
        ));
        hold(workload, self.config.legacy_only).await?;
        self.phase.set(Phase::Shadow);
        let shadow_at = Instant::now();
        p.say(format!(
            "phase shadow: dual writes and reads; measuring the writer's baseline ({:?})",
            self.config.baseline
        ));
        hold(workload, self.config.baseline).await?;

        let transform = if self.config.inject_bugs {
            p.say("backfill with transform_buggy.sql (faults injected)");
            TRANSFORM_BUGGY_SQL
        } else {
            p.say("backfill with transform.sql");
            TRANSFORM_SQL
        };
        let mut table = TableSpec::new("ledger_entries", transform);
        table.chunk_rows = self.config.chunk_rows;
        let settings = BackfillSettings::new(self.legacy_url, self.ledger_url, vec![table]);
        let store = LocalFileSystem::new_with_prefix(&self.data_dir).map_err(|e| Error::Io {
            what: format!("opening {}", self.data_dir.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
        let progress = self.progress.clone();
        let backfill = Backfill::new(settings, Arc::new(store))
            .map_err(Error::Backfill)?
            .on_progress(move |m| progress.say(format!("backfill {} {}: {}", m.step, m.table, m.message)));
        let writes_before = workload.writes();
        let backfill_at = Instant::now();
        // Cancellations (deletes) go on throughout: the backfill installs its
        // key-logging trigger before generate takes the legacy snapshot.
        let report = alongside(workload, backfill.run())
            .await?
            .map_err(Error::Backfill)?;
        let flipped_at = Instant::now();
        let backfill_secs = (flipped_at - backfill_at).as_secs_f64();
        p.say(format!("backfill done in {backfill_secs:.1}s"));

        let schema = LedgerSchema::default();
        let mut repairs = Vec::new();
        for pass in 1..=MAX_REPAIR_PASSES {
            let mut attempt = 0;
            let r = loop {
                match alongside(
                    workload,
                    repair(self.ledger_url, &schema, &RepairOptions::default()),
                )
                .await?
                {
                    Ok(r) => break r,
                    // A batch chosen as a deadlock victim by a live write (or
                    // timing out on its locks) changed nothing: run the pass
                    // again, it is idempotent.
                    Err(LedgerError::Query { source, step, .. })
                        if attempt < 5
                            && source
                                .code()
                                .is_some_and(|c| matches!(c.code(), "40P01" | "55P03")) =>
                    {
                        attempt += 1;
                        p.say(format!(
                            "repair pass {pass}: {step} gave way to a live write ({}), again",
                            pg_message(&source)
                        ));
                    }
                    Err(e) => return Err(Error::Ledger(e)),
                }
            };
            p.say(format!("repair pass {pass}: {r}"));
            let done = r.rows_changed == 0;
            repairs.push(r);
            if done {
                break;
            }
        }

        let legacy = LegacySource {
            url: self.legacy_url.to_owned(),
            query: mapping(),
        };
        let options = VerifyOptions {
            max_listed: 1_000_000,
            ..VerifyOptions::default()
        };
        let verified = alongside(
            workload,
            verify(self.ledger_url, &schema, Some(&legacy), &options),
        )
        .await?
        .map_err(Error::Ledger)?;
        p.say(format!(
            "verification done in {} ms ({} entries)",
            verified.elapsed_ms,
            verified.comparison.as_ref().map_or(0, |c| c.new_rows)
        ));
        let writes_during = workload.writes() - writes_before;

        self.phase.set(Phase::PreferNew);
        p.say(format!(
            "phase prefer_new: reads answered by the new ledger ({:?})",
            self.config.prefer_new
        ));
        hold(workload, self.config.prefer_new).await?;
        Ok(Steps {
            shadow_at,
            backfill_at,
            flipped_at,
            writes_during,
            backfill: report,
            backfill_secs,
            repairs,
            verify: verified,
        })
    }
}

/// The verification's mapping: the reviewed transformation as a subquery.
fn mapping() -> String {
    format!(
        "{}\n",
        TRANSFORM_SQL
            .trim()
            .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
    )
}

/// Waits `d`, failing early when the writer stopped (its error is the run's).
async fn hold(workload: &Workload, d: Duration) -> Result<(), Error> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if workload.is_finished() {
            return Err(Error::Workload {
                reason: "the writer stopped early (its error follows when it is collected)".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20).min(until - Instant::now())).await;
    }
    Ok(())
}

/// Runs `f` while watching the writer: a writer that stops (a legacy write
/// failed: downtime) fails the run at once.
async fn alongside<T>(workload: &Workload, f: impl Future<Output = T>) -> Result<T, Error> {
    tokio::pin!(f);
    loop {
        tokio::select! {
            out = &mut f => return Ok(out),
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                if workload.is_finished() {
                    return Err(Error::Workload {
                        reason: "the writer stopped during the migration (its error follows when it is collected)".into(),
                    });
                }
            }
        }
    }
}

/// Seeds the legacy table with `rows` transactions in one set-based insert:
/// amounts never whole (so a rounding fault always shows), two different
/// accounts each.
async fn seed_legacy(legacy: &Client, rows: u64, accounts: u64) -> Result<(), Error> {
    let sql = format!(
        "{LEGACY_SCHEMA};
         INSERT INTO transactions
         SELECT i,
                'acct-' || lpad((i * 7919 % {accounts})::text, 6, '0'),
                'acct-' || lpad(((i * 7919 % {accounts} + 1 + i % ({accounts} - 1)) % {accounts})::text, 6, '0'),
                ((i * 104729) % 5000)::text || '.' || lpad((1 + (i * 31) % 99)::text, 2, '0'),
                'USD',
                timestamptz '2020-01-01 00:00:00+00' + i * interval '1 second'
           FROM generate_series(1, {rows}::int8) i;
         ALTER TABLE transactions ADD PRIMARY KEY (id);
         ANALYZE transactions"
    );
    legacy
        .batch_execute(&sql)
        .await
        .map_err(sql_err("seeding the legacy transactions"))
}

fn p99(samples: &[Sample], from: Instant, to: Instant) -> f64 {
    let mut ms: Vec<f64> = samples
        .iter()
        .filter(|s| s.at >= from && s.at <= to)
        .map(|s| s.ms)
        .collect();
    if ms.is_empty() {
        return 0.0;
    }
    ms.sort_by(f64::total_cmp);
    let rank = ((ms.len() as f64) * 0.99).ceil() as usize;
    round3(ms[rank.clamp(1, ms.len()) - 1])
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn count(client: &Client, sql: &str, step: &str) -> Result<u64, Error> {
    let row = client.query_one(sql, &[]).await.map_err(sql_err(step))?;
    Ok(row.get::<_, i64>(0).unsigned_abs())
}

/// Every id verification reported, checked again now that the writer has
/// stopped: the ids whose legacy mapping and new entry still differ.
async fn recheck(legacy: &Client, ledger: &Client, report: &VerifyReport) -> Result<BTreeSet<i64>, Error> {
    let Some(cmp) = &report.comparison else {
        return Ok(BTreeSet::new());
    };
    let ids: Vec<i64> = cmp
        .missing_in_new
        .items
        .iter()
        .chain(&cmp.missing_in_legacy.items)
        .copied()
        .chain(cmp.differing.items.iter().map(|r| r.id))
        .collect();
    if ids.is_empty() {
        return Ok(BTreeSet::new());
    }
    type Entry = (String, String, i64, String, String);
    let fetch = |rows: Vec<tokio_postgres::Row>| -> BTreeMap<i64, Entry> {
        rows.iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))))
            .collect()
    };
    let old = legacy
        .query(
            &format!(
                "SELECT id::int8, tx_id::text, account::text, amount_minor::int8, currency::text, created_at::text \
                 FROM ({}) m WHERE id = ANY($1)",
                mapping()
            ),
            &[&ids],
        )
        .await
        .map_err(sql_err("re-reading the reported ids from legacy"))?;
    let new = ledger
        .query(
            "SELECT id, tx_id, account, amount_minor, currency, created_at::text FROM ledger_entries WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(sql_err("re-reading the reported ids from the new ledger"))?;
    let (old, new) = (fetch(old), fetch(new));
    Ok(ids.into_iter().filter(|id| old.get(id) != new.get(id)).collect())
}

/// The workload's transactions whose final state is not in the new ledger
/// (transactions with an injected fault excepted).
async fn lost_writes(
    ledger: &Client,
    log: &WorkloadLog,
    first_id: i64,
    injected: &BTreeSet<i64>,
) -> Result<Vec<i64>, Error> {
    let rows = ledger
        .query(
            "SELECT id, account, amount_minor FROM ledger_entries WHERE id >= $1",
            &[&(first_id * 2)],
        )
        .await
        .map_err(sql_err("reading the workload's entries"))?;
    let entries: BTreeMap<i64, (String, i64)> =
        rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect();
    let mut lost = Vec::new();
    for (&tx, state) in &log.txs {
        if injected.contains(&tx) {
            continue;
        }
        let (debit, credit) = (entries.get(&(tx * 2)), entries.get(&(tx * 2 + 1)));
        let ok = if state.deleted {
            debit.is_none() && credit.is_none()
        } else {
            debit == Some(&(state.from.clone(), -state.minor))
                && credit == Some(&(state.to.clone(), state.minor))
        };
        if !ok {
            lost.push(tx);
        }
    }
    Ok(lost)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    config: &Config,
    progress: &Progress,
    legacy: &Client,
    ledger: &Client,
    steps: Steps,
    log: WorkloadLog,
    stats: MigrationStats,
) -> Result<Report, Error> {
    let first_id = i64::try_from(config.rows).unwrap_or(i64::MAX) + 1;
    // The faults the buggy transformation put in: every legacy transaction
    // it transformed (all but those dual-written, whose live rows won)
    // meeting a fault's condition.
    let mut injected = BTreeSet::new();
    if config.inject_bugs {
        let rows = legacy
            .query(
                "SELECT id FROM transactions WHERE id % 1499 = 2 OR id % 1201 = 3 OR id % 997 = 1 ORDER BY id",
                &[],
            )
            .await
            .map_err(sql_err("listing the transactions the faults hit"))?;
        for row in rows {
            let tx: i64 = row.get(0);
            if log.txs.get(&tx).is_some_and(|t| t.dual) {
                continue;
            }
            for kind in faults_of(tx) {
                injected.insert(Fault { kind, tx });
            }
        }
    }
    let faulty: BTreeSet<i64> = injected.iter().map(|f| f.tx).collect();

    let confirmed = recheck(legacy, ledger, &steps.verify).await?;
    let reported = steps.verify.comparison.as_ref().map_or(0, |c| {
        c.missing_in_new.total + c.missing_in_legacy.total + c.differing.total
    });
    let in_flight = reported.saturating_sub(confirmed.len() as u64);
    let found = classify(&steps.verify, &confirmed);
    let missed: Vec<Fault> = injected.difference(&found.faults).copied().collect();
    let unexpected: Vec<Fault> = found.faults.difference(&injected).copied().collect();

    let (mut verify_missing, mut verify_mismatched) = (0, 0);
    if let Some(cmp) = &steps.verify.comparison {
        verify_missing = cmp
            .missing_in_new
            .items
            .iter()
            .chain(&cmp.missing_in_legacy.items)
            .filter(|id| confirmed.contains(id))
            .count() as u64;
        verify_mismatched = cmp
            .differing
            .items
            .iter()
            .filter(|r| confirmed.contains(&r.id))
            .count() as u64;
    }

    let lost = lost_writes(ledger, &log, first_id, &faulty).await?;
    let duplicate_rows = count(
        ledger,
        "SELECT (coalesce((SELECT sum(c - 1) FROM (SELECT count(*) c FROM ledger_entries GROUP BY id HAVING count(*) > 1) d), 0)
              + coalesce((SELECT sum(c - 2) FROM (SELECT count(*) c FROM ledger_entries GROUP BY tx_id HAVING count(*) > 2) t), 0))::int8",
        "counting duplicate entries",
    )
    .await?;
    let legacy_rows = count(
        legacy,
        "SELECT count(*) FROM transactions",
        "counting legacy rows",
    )
    .await?;
    let new_rows = count(
        ledger,
        "SELECT count(*) FROM ledger_entries",
        "counting ledger rows",
    )
    .await?;
    let imported: u64 = steps.backfill.tables.iter().map(|t| t.imported_rows).sum();
    let verify_secs = (steps.verify.elapsed_ms as f64 / 1e3).max(1e-3);
    let verified_rows = steps.verify.comparison.as_ref().map_or(0, |c| c.new_rows);

    let summary = Summary {
        legacy_rows,
        new_rows,
        live_writes_during: steps.writes_during,
        lost_writes: lost.len() as u64,
        duplicate_rows,
        repaired_rows: steps.repairs.iter().map(|r| r.rows_changed).sum(),
        verify_missing,
        verify_mismatched,
        shadow_mismatches: stats.mismatches,
        backfill_rows_per_sec: (imported as f64 / steps.backfill_secs.max(1e-3)).round(),
        verify_rows_per_sec: (verified_rows as f64 / verify_secs).round(),
        writer_p99_ms_baseline: p99(&log.samples, steps.shadow_at, steps.backfill_at),
        writer_p99_ms_during: p99(&log.samples, steps.backfill_at, steps.flipped_at),
    };

    // What the run found, for people.
    if let Some(i) = &steps.verify.integrity {
        progress.say(format!(
            "integrity: {} entries, {} accounts, {} transactions; {} broken links, {} forks, {} wrong balances, {} unbalanced transactions",
            i.entries,
            i.accounts,
            i.transactions,
            i.broken_links.total,
            i.forks.total,
            i.balance_mismatches.total,
            i.unbalanced_transactions.total
        ));
        for u in i.unbalanced_transactions.items.iter().take(20) {
            progress.say(format!(
                "  unbalanced transaction {}: sums to {} {} (entries {:?})",
                u.tx_id.as_deref().unwrap_or("?"),
                u.sum,
                u.currency.as_deref().unwrap_or("?"),
                u.ids
            ));
        }
    }
    progress.say(format!(
        "comparison: {reported} findings, {in_flight} of them in-flight writes (settled on a second look), {} confirmed",
        confirmed.len()
    ));
    if config.inject_bugs {
        progress.say(format!("injected {} faults:", injected.len()));
        for f in &injected {
            progress.say(format!(
                "  injected {f} (entries {} and {})",
                f.tx * 2,
                f.tx * 2 + 1
            ));
        }
        progress.say(format!("verification named {} faults:", found.faults.len()));
        for f in &found.faults {
            progress.say(format!("  found {f}"));
        }
        if missed.is_empty() && unexpected.is_empty() {
            progress.say("verification named exactly the injected faults");
        }
        for f in &missed {
            progress.say(format!("  MISSED {f}"));
        }
        for f in &unexpected {
            progress.say(format!("  UNEXPECTED {f}"));
        }
    }
    for other in found.other.iter().take(20) {
        progress.say(format!("  unexplained finding: {other}"));
    }
    if !lost.is_empty() {
        progress.say(format!(
            "LOST writes of transactions {:?}",
            &lost[..lost.len().min(20)]
        ));
    }
    if stats.write_failures > 0 {
        progress.say(format!(
            "{} new-side writes failed (recorded for repair)",
            stats.write_failures
        ));
    }

    Ok(Report {
        summary,
        injected,
        found,
        missed,
        unexpected,
        in_flight,
        backfill: steps.backfill,
        repairs: steps.repairs,
        verify: steps.verify,
        stats,
        workload_writes: log.samples.len() as u64,
        workload_reads: log.reads,
    })
}
