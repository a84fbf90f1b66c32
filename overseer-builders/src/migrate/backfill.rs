//! Repeatable, zero-downtime backfill of live Postgres tables.
//!
//! A [`Backfill`] moves the output of a transformation query on a *legacy*
//! database into tables of a *target* database that keep taking writes, as a
//! plan of idempotent, resumable [`Step`]s per table:
//!
//! | step | what it does |
//! |---|---|
//! | [`Step::Copy`] | creates the unindexed copy `<table>_backfill` (`LIKE <table> INCLUDING DEFAULTS ...`) |
//! | [`Step::Triggers`] | installs a trigger on the live table that records the primary key of every inserted, updated or deleted row, with the writing transaction's id, in `<table>_backfill_touched` |
//! | [`Step::Generate`] | runs the table's transformation SQL on the legacy database and unloads its output with `COPY (query) TO STDOUT` into chunk files on an object store, with a manifest (row count and sha256 per chunk); it runs after the trigger is installed, so a live write after its snapshot (a delete above all) is logged and wins over the data files |
//! | [`Step::Import`] | `COPY ... FROM STDIN` of every chunk into the copy, verifying its checksum, throttled; each chunk is committed with its record, so a killed run resumes at the next chunk |
//! | [`Step::Resolve`] | replaces, in one snapshot, every copied row whose key is in the live table or was touched by the triggers with the live row (live writes win, deleted keys stay deleted); rejects duplicate keys |
//! | [`Step::Index`] | builds every index of the live table on the copy with `CREATE INDEX CONCURRENTLY` (an index left INVALID by a killed run is dropped and rebuilt), turns the primary key and unique constraints' indexes into constraints, and brings the copy up to date again |
//! | [`Step::Flip`] | in one transaction for every table: `LOCK TABLE`, apply the writes since the last catch-up, hand owned sequences over, drop the live table with its trigger, rename the copy and its indexes into place |
//!
//! Live writes reach the copy through the key log rather than by writing the
//! copy from the trigger: a trigger that updated or deleted rows of an
//! unindexed copy would scan it on every write. Each catch-up (in
//! [`Step::Resolve`], [`Step::Index`] and [`Step::Flip`]) runs in one
//! `REPEATABLE READ` snapshot, records it, and the next one re-reads exactly
//! the keys whose last writer that snapshot did not see
//! (`pg_visible_in_snapshot`), so the flip holds its lock only for the writes
//! of the last moments.
//!
//! Progress is recorded in the target database, schema `overseer_migrate`
//! (tables `state`, `chunks` and `sync`), in the same transaction as the work
//! whenever the work is transactional; every other step checks the catalog
//! before acting. A killed run continues where it stopped; after
//! [`Backfill::reset`], running again from a clean slate gives the same
//! tables.
//!
//! ```no_run
//! use std::sync::Arc;
//! use overseer_builders::migrate::backfill::{Backfill, BackfillConfig};
//! use overseer_core::object_store::local::LocalFileSystem;
//! # async fn demo() -> Result<(), overseer_builders::migrate::backfill::BackfillError> {
//! let config = BackfillConfig::load("backfill.toml".as_ref())?;
//! let store = Arc::new(LocalFileSystem::new_with_prefix(&config.data_dir).expect("data dir"));
//! let backfill = Backfill::new(config.settings()?, store)?;
//! for step in backfill.plan().await?.steps {
//!     println!("-- {} {}\n{}", step.table, step.step, step.sql.join(";\n"));
//! }
//! let report = backfill.run().await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use overseer_core::object_store::path::Path as ObjectPath;
use overseer_core::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use overseer_core::store::layout::encode_segment;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, NoTls};

/// The schema holding the backfill's state in the target database.
pub const DEFAULT_STATE_SCHEMA: &str = "overseer_migrate";

/// The name of the trigger installed on each live table.
pub const TRIGGER_NAME: &str = "overseer_backfill";

/// The column of `<table>_backfill_touched` holding the last writer's
/// transaction id.
const XID_COLUMN: &str = "overseer_xid";

/// The advisory lock one run holds on the target database.
const RUN_LOCK: i64 = 0x6f76_6572_6266_696c; // "overbfil"

/// How long a run waits for another run's advisory lock (a killed run's
/// session may still be finishing a statement).
const RUN_LOCK_WAIT: Duration = Duration::from_secs(120);

/// How many times the flip is tried when it times out waiting for its
/// locks or is chosen as a deadlock victim.
const FLIP_ATTEMPTS: u32 = 5;

/// The longest table name: `<table>_backfill_touched` must fit Postgres'
/// 63-byte identifiers.
const MAX_TABLE_NAME: usize = 63 - "_backfill_touched".len();

/// The largest `lock_timeout` Postgres accepts, in milliseconds.
const MAX_LOCK_TIMEOUT_MS: u128 = i32::MAX as u128;

/// A step of the backfill of one table, in execution order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// 0: create the unindexed copy table.
    Copy,
    /// 1: install the trigger logging live writes.
    Triggers,
    /// 2: transform on the legacy database, unload into chunk files. It
    /// runs after the trigger is installed, so every live write after its
    /// snapshot (a delete above all) is logged and wins over the data files.
    Generate,
    /// 3: import the chunk files into the copy.
    Import,
    /// 4: resolve the overlap between imported rows and live rows.
    Resolve,
    /// 5: build the live table's indexes on the copy, concurrently.
    Index,
    /// 6: swap the copy in, in one transaction.
    Flip,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 7] = [
        Step::Copy,
        Step::Triggers,
        Step::Generate,
        Step::Import,
        Step::Resolve,
        Step::Index,
        Step::Flip,
    ];

    /// The step's name (`generate`, `copy`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Generate => "generate",
            Step::Copy => "copy",
            Step::Triggers => "triggers",
            Step::Import => "import",
            Step::Resolve => "resolve",
            Step::Index => "index",
            Step::Flip => "flip",
        }
    }

    /// The step's number (0 for copy .. 6 for flip).
    pub fn number(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Step {
    type Err = BackfillError;
    fn from_str(s: &str) -> Result<Self, BackfillError> {
        Step::ALL
            .into_iter()
            .find(|step| step.as_str() == s || step.number().to_string() == s)
            .ok_or_else(|| BackfillError::Config {
                problems: vec![format!(
                    "unknown step {s:?}; steps: generate, copy, triggers, import, resolve, index, flip (or 0-6)"
                )],
            })
    }
}

/// Errors of the backfill, with the table and step they happened in.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackfillError {
    /// The configuration is invalid; every problem found is listed.
    #[error("invalid backfill configuration:\n  {}", problems.join("\n  "))]
    Config {
        /// The problems, each naming the key or table.
        problems: Vec<String>,
    },
    /// A configuration or transformation file cannot be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A database cannot be reached.
    #[error("cannot connect to the {database} database: {source}")]
    Connect {
        /// `legacy` or `target`.
        database: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement failed.
    #[error("{table}: step {step}: {message}{}; statement: {sql}", sql_state.as_deref().map(|s| format!(" (SQLSTATE {s})")).unwrap_or_default())]
    Sql {
        /// The table (`schema.table`; `*` for statements on every table).
        table: String,
        /// The step.
        step: Step,
        /// The server's SQLSTATE, when the server reported the error.
        sql_state: Option<String>,
        /// The server's message (with detail and hint), or the driver's.
        message: String,
        /// The statement, cut to 300 characters.
        sql: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The object store failed.
    #[error("{table}: step {step}: object store: {source}")]
    Store {
        /// The table.
        table: String,
        /// The step.
        step: Step,
        /// The object store's error.
        #[source]
        source: Box<overseer_core::object_store::Error>,
    },
    /// The data is not what the plan expects: a missing or corrupt chunk or
    /// manifest, duplicate keys, an unsupported table.
    #[error("{table}: step {step}: {reason}")]
    Data {
        /// The table.
        table: String,
        /// The step.
        step: Step,
        /// What is wrong.
        reason: String,
    },
    /// Another run holds the target database's backfill lock.
    #[error("another backfill run holds the lock on the target database (waited {waited:?})")]
    Busy {
        /// How long this run waited.
        waited: Duration,
    },
}

/// `Result` of the backfill.
pub type Result<T, E = BackfillError> = std::result::Result<T, E>;

fn sql_error(table: &str, step: Step, sql: &str, source: tokio_postgres::Error) -> BackfillError {
    let (sql_state, message) = match source.as_db_error() {
        Some(db) => {
            let mut message = db.message().to_owned();
            if let Some(detail) = db.detail() {
                message.push_str(": ");
                message.push_str(detail);
            }
            if let Some(hint) = db.hint() {
                message.push_str(" (hint: ");
                message.push_str(hint);
                message.push(')');
            }
            (Some(db.code().code().to_owned()), message)
        }
        None => (source.code().map(|c| c.code().to_owned()), source.to_string()),
    };
    let mut sql: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if sql.chars().count() > 300 {
        sql = sql.chars().take(300).collect::<String>() + "...";
    }
    BackfillError::Sql {
        table: table.to_owned(),
        step,
        sql_state,
        message,
        sql,
        source,
    }
}

/// `name` as a quoted SQL identifier (`"` doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a SQL string literal (`'` doubled; standard-conforming strings).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

// ---------------------------------------------------------------------------
// Configuration

/// One table to backfill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// The table's schema (default `public`).
    pub schema: String,
    /// The live table in the target database.
    pub name: String,
    /// The transformation: one query on the legacy database whose output
    /// columns are named like the target table's columns (missing columns
    /// get their defaults).
    pub transform_sql: String,
    /// Rows per chunk file.
    pub chunk_rows: u64,
    /// Pause between two imported chunks.
    pub throttle: Duration,
}

impl TableSpec {
    /// A table of schema `public` with 100,000-row chunks and no throttle.
    pub fn new(name: impl Into<String>, transform_sql: impl Into<String>) -> Self {
        TableSpec {
            schema: "public".into(),
            name: name.into(),
            transform_sql: transform_sql.into(),
            chunk_rows: 100_000,
            throttle: Duration::ZERO,
        }
    }

    /// `schema.table`, as the state tables and messages name it.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Everything a [`Backfill`] needs besides the object store.
#[derive(Clone, Debug)]
pub struct BackfillSettings {
    /// The legacy database (read by [`Step::Generate`] only).
    pub legacy_url: String,
    /// The target database holding the live tables.
    pub target_url: String,
    /// The schema of the state tables in the target database.
    pub state_schema: String,
    /// Where the chunk files go in the object store.
    pub data_prefix: String,
    /// How long the flip waits for its table locks before giving up (it is
    /// then retried by the next run); 0 waits forever.
    pub flip_lock_timeout: Duration,
    /// The tables, backfilled together (step by step; flipped in one
    /// transaction).
    pub tables: Vec<TableSpec>,
}

impl BackfillSettings {
    /// Settings with the default state schema, data prefix `backfill` and
    /// a 10 s flip lock timeout.
    pub fn new(legacy_url: impl Into<String>, target_url: impl Into<String>, tables: Vec<TableSpec>) -> Self {
        BackfillSettings {
            legacy_url: legacy_url.into(),
            target_url: target_url.into(),
            state_schema: DEFAULT_STATE_SCHEMA.into(),
            data_prefix: "backfill".into(),
            flip_lock_timeout: Duration::from_secs(10),
            tables,
        }
    }

    fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.legacy_url.trim().is_empty() {
            problems.push("legacy_url: is empty".to_owned());
        }
        if self.target_url.trim().is_empty() {
            problems.push("target_url: is empty".to_owned());
        }
        if self.state_schema.is_empty() || self.state_schema.len() > 63 {
            problems.push("state_schema: must be 1 to 63 bytes".to_owned());
        }
        if self.flip_lock_timeout.as_millis() > MAX_LOCK_TIMEOUT_MS {
            problems.push(format!(
                "flip_lock_timeout_ms: {} is more than {MAX_LOCK_TIMEOUT_MS}, the largest lock_timeout \
                 Postgres accepts (0 waits forever)",
                self.flip_lock_timeout.as_millis()
            ));
        }
        if self.tables.is_empty() {
            problems.push("tables: no table to backfill".to_owned());
        }
        let mut seen = BTreeSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let at = format!("tables[{i}] ({})", t.qualified());
            if t.name.is_empty() || t.name.len() > MAX_TABLE_NAME {
                problems.push(format!(
                    "{at}: name must be 1 to {MAX_TABLE_NAME} bytes (the copy's side table adds `_backfill_touched`)"
                ));
            }
            if t.schema.is_empty() || t.schema.len() > 63 {
                problems.push(format!("{at}: schema must be 1 to 63 bytes"));
            }
            if t.name.contains('\0') || t.schema.contains('\0') {
                problems.push(format!("{at}: names cannot contain NUL"));
            }
            if t.chunk_rows == 0 {
                problems.push(format!("{at}: chunk_rows must be at least 1"));
            }
            if transform_query(&t.transform_sql).is_empty() {
                problems.push(format!("{at}: the transformation SQL is empty"));
            }
            if !seen.insert(t.qualified()) {
                problems.push(format!("{at}: listed twice"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BackfillError::Config { problems })
        }
    }
}

fn default_chunk_rows() -> u64 {
    100_000
}

fn default_state_schema() -> String {
    DEFAULT_STATE_SCHEMA.into()
}

fn default_flip_lock_timeout_ms() -> u64 {
    10_000
}

/// A table of a [`BackfillConfig`] file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The live table: `table` or `schema.table`.
    pub name: String,
    /// The transformation SQL file, relative to the configuration file.
    pub transform: PathBuf,
    /// Rows per chunk file (default 100000).
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: u64,
    /// Milliseconds to pause between two imported chunks (default 0).
    #[serde(default)]
    pub throttle_ms: u64,
}

/// The backfill configuration file (TOML, or JSON when the file name ends
/// in `.json`).
///
/// ```toml
/// legacy_url = "postgres://reader@legacy-db/ledger"
/// target_url = "postgres://migrator@ledger-db/ledger"
/// data_dir = "backfill-data"          # relative to this file
///
/// [[tables]]
/// name = "public.ledger_entries"
/// transform = "sql/ledger_entries.sql"
/// chunk_rows = 100000
/// throttle_ms = 20
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackfillConfig {
    /// The legacy database's connection URL.
    pub legacy_url: String,
    /// The target database's connection URL.
    pub target_url: String,
    /// The directory of the chunk files (a local object store), relative to
    /// the configuration file.
    pub data_dir: PathBuf,
    /// The schema of the state tables (default `overseer_migrate`).
    #[serde(default = "default_state_schema")]
    pub state_schema: String,
    /// How long the flip waits for its locks, in milliseconds (default
    /// 10000; 0 waits forever).
    #[serde(default = "default_flip_lock_timeout_ms")]
    pub flip_lock_timeout_ms: u64,
    /// The tables.
    pub tables: Vec<TableConfig>,
    /// The directory relative paths are resolved against (the file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

impl BackfillConfig {
    /// Reads and parses a configuration file; relative paths in it are
    /// resolved against its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| BackfillError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let mut config = Self::parse(&text, is_json).map_err(|e| BackfillError::Config {
            problems: vec![format!("{}: {e}", path.display())],
        })?;
        config.base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        config.data_dir = config.base_dir.join(&config.data_dir);
        Ok(config)
    }

    /// Parses configuration text (TOML, or JSON when `json`).
    pub fn parse(text: &str, json: bool) -> Result<Self, String> {
        if json {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
        }
    }

    /// The settings: reads every transformation file and validates
    /// everything, reporting every problem at once.
    pub fn settings(&self) -> Result<BackfillSettings> {
        let mut problems = Vec::new();
        let mut tables = Vec::new();
        for (i, t) in self.tables.iter().enumerate() {
            let (schema, name) = match t.name.split_once('.') {
                Some((s, n)) => (s.to_owned(), n.to_owned()),
                None => ("public".to_owned(), t.name.clone()),
            };
            let path = self.base_dir.join(&t.transform);
            let sql = match std::fs::read_to_string(&path) {
                Ok(sql) => sql,
                Err(e) => {
                    problems.push(format!(
                        "tables[{i}] ({}): transform {}: {e}",
                        t.name,
                        path.display()
                    ));
                    continue;
                }
            };
            tables.push(TableSpec {
                schema,
                name,
                transform_sql: sql,
                chunk_rows: t.chunk_rows,
                throttle: Duration::from_millis(t.throttle_ms),
            });
        }
        let settings = BackfillSettings {
            legacy_url: self.legacy_url.clone(),
            target_url: self.target_url.clone(),
            state_schema: self.state_schema.clone(),
            data_prefix: String::new(),
            flip_lock_timeout: Duration::from_millis(self.flip_lock_timeout_ms),
            tables,
        };
        if let Err(BackfillError::Config { problems: more }) = settings.validate() {
            problems.extend(more);
        }
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(BackfillError::Config { problems })
        }
    }
}

/// The query of a transformation file: trimmed, without trailing `;`.
fn transform_query(sql: &str) -> &str {
    sql.trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
}

// ---------------------------------------------------------------------------
// Manifest

/// One chunk file of a table's generated data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// The object's path in the store.
    pub path: String,
    /// Rows in the chunk.
    pub rows: u64,
    /// Bytes in the chunk.
    pub bytes: u64,
    /// Hex sha256 of the chunk's bytes.
    pub sha256: String,
}

/// What [`Step::Generate`] wrote for a table; [`Step::Import`] verifies
/// every chunk against it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `schema.table`.
    pub table: String,
    /// The output columns of the transformation, in order.
    pub columns: Vec<String>,
    /// `COPY` format of the chunks (`text`).
    pub format: String,
    /// Hex sha256 of the transformation SQL.
    pub transform_sha256: String,
    /// Total rows.
    pub rows: u64,
    /// The chunks, in order.
    pub chunks: Vec<ChunkInfo>,
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// Catalog

#[derive(Clone, Debug)]
struct IndexInfo {
    /// The live index's name.
    name: String,
    /// The copy's index name while both tables exist.
    temp_name: String,
    /// `UNIQUE ` or empty.
    unique: bool,
    /// From ` USING ` on: method, keys, INCLUDE, WITH, WHERE.
    rest: String,
    /// The constraint the index backs: (`p` or `u`, name).
    constraint: Option<(char, String)>,
}

#[derive(Clone, Debug)]
struct TableInfo {
    /// Every stored column (not generated, not dropped), in order.
    columns: Vec<String>,
    /// Primary-key columns with their types.
    key: Vec<(String, String)>,
    indexes: Vec<IndexInfo>,
    /// Sequences owned by a column of the live table: (qualified sequence, column).
    owned_sequences: Vec<(String, String)>,
    /// Identity columns.
    identity: Vec<String>,
}

/// The quoted names of one table's objects.
#[derive(Clone, Debug)]
struct Names {
    qualified: String,
    schema: String,
    live: String,
    copy_name: String,
    copy: String,
    touched: String,
    function: String,
}

impl Names {
    fn of(t: &TableSpec) -> Names {
        let s = quote_ident(&t.schema);
        let copy_name = format!("{}_backfill", t.name);
        Names {
            qualified: t.qualified(),
            schema: s.clone(),
            live: format!("{s}.{}", quote_ident(&t.name)),
            copy: format!("{s}.{}", quote_ident(&copy_name)),
            copy_name,
            touched: format!("{s}.{}", quote_ident(&format!("{}_backfill_touched", t.name))),
            function: format!("{s}.{}", quote_ident(&format!("{}_backfill_fn", t.name))),
        }
    }
}

fn temp_index_name(name: &str) -> String {
    let mut end = name.len().min(60);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}_bf", &name[..end])
}

// ---------------------------------------------------------------------------
// Plan, status and report types

/// The SQL of one step of one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedStep {
    /// `schema.table`.
    pub table: String,
    /// The step.
    pub step: Step,
    /// What the step does, in a sentence.
    pub summary: String,
    /// Its statements, in order (`COPY` statements are run once per chunk).
    pub sql: Vec<String>,
}

/// Every step's SQL, as [`Backfill::plan`] renders it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The steps, table by table within each step, in execution order.
    pub steps: Vec<PlannedStep>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            writeln!(
                f,
                "-- {} step {} {}: {}",
                s.table,
                s.step.number(),
                s.step,
                s.summary
            )?;
            for sql in &s.sql {
                writeln!(f, "{sql};")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Where one step of one table stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepStatus {
    /// The step.
    pub step: Step,
    /// `done`, `running` (partly done: see `detail`) or `pending`.
    pub status: String,
    /// Step-specific detail (rows, chunks, indexes).
    pub detail: String,
    /// When the state last changed (RFC 3339), if it did.
    pub updated_at: Option<String>,
}

/// Where one table's backfill stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableStatus {
    /// `schema.table`.
    pub table: String,
    /// The first step not done (`None`: flipped, finished).
    pub current: Option<Step>,
    /// Every step.
    pub steps: Vec<StepStatus>,
}

/// What a run did for one table.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TableReport {
    /// `schema.table`.
    pub table: String,
    /// The steps this run executed (steps already done are skipped).
    pub executed: Vec<Step>,
    /// Rows generated (when generate ran).
    pub generated_rows: u64,
    /// Chunks imported by this run.
    pub imported_chunks: u64,
    /// Rows imported by this run.
    pub imported_rows: u64,
    /// Seconds spent in `COPY ... FROM STDIN` (throttle pauses excluded).
    pub import_copy_secs: f64,
    /// Seconds the import took, pauses included.
    pub import_secs: f64,
    /// Seconds building indexes.
    pub index_secs: f64,
    /// Imported rows replaced or removed by the overlap resolution and later
    /// catch-ups (live writes win).
    pub replaced_rows: u64,
    /// Live rows written into the copy by the resolution and catch-ups.
    pub live_rows: u64,
    /// Seconds the flip transaction took (locks held), when this run flipped.
    pub flip_secs: f64,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunReport {
    /// One report per table.
    pub tables: Vec<TableReport>,
}

/// A progress message of a run.
#[derive(Clone, Debug)]
pub struct Progress {
    /// `schema.table` (`*` for every table).
    pub table: String,
    /// The step.
    pub step: Step,
    /// What happened.
    pub message: String,
}

type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

// ---------------------------------------------------------------------------
// The backfill

/// A backfill of one or more live tables; see the [module documentation](self).
#[derive(Clone)]
pub struct Backfill {
    settings: BackfillSettings,
    store: Arc<dyn ObjectStore>,
    progress: Option<ProgressFn>,
}

impl fmt::Debug for Backfill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backfill")
            .field("settings", &self.settings)
            .field("store", &self.store.to_string())
            .finish_non_exhaustive()
    }
}

struct Target {
    client: Client,
    state: String,
}

impl Backfill {
    /// A backfill with these settings, writing its chunk files to `store`.
    pub fn new(settings: BackfillSettings, store: Arc<dyn ObjectStore>) -> Result<Self> {
        settings.validate()?;
        Ok(Backfill {
            settings,
            store,
            progress: None,
        })
    }

    /// Calls `f` with every progress message of a run.
    pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// The settings.
    pub fn settings(&self) -> &BackfillSettings {
        &self.settings
    }

    fn report(&self, table: &str, step: Step, message: impl Into<String>) {
        if let Some(f) = &self.progress {
            f(&Progress {
                table: table.to_owned(),
                step,
                message: message.into(),
            });
        }
    }

    async fn connect(url: &str, database: &'static str) -> Result<Client> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|source| BackfillError::Connect { database, source })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    async fn target(&self) -> Result<Target> {
        let client = Self::connect(&self.settings.target_url, "target").await?;
        // A killed client's statements stop within a second instead of
        // running (and holding locks) to the end.
        let _ = client
            .batch_execute("SET client_connection_check_interval = '1s'")
            .await;
        Ok(Target {
            client,
            state: quote_ident(&self.settings.state_schema),
        })
    }

    fn chunk_path(&self, t: &TableSpec, n: usize) -> ObjectPath {
        ObjectPath::from(format!("{}/chunk-{n:06}.tsv", self.table_prefix(t)))
    }

    fn manifest_path(&self, t: &TableSpec) -> ObjectPath {
        ObjectPath::from(format!("{}/manifest.json", self.table_prefix(t)))
    }

    /// The table's directory: `schema.table` as one key segment of the
    /// store layout (`a/b` becomes `a+2Fb`), so two tables never share
    /// their chunk files.
    fn table_prefix(&self, t: &TableSpec) -> String {
        let name = encode_segment(&t.qualified()).into_owned();
        let prefix = self.settings.data_prefix.trim_matches('/');
        if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        }
    }

    /// Every step's SQL for every table, from the target database's catalog.
    pub async fn plan(&self) -> Result<Plan> {
        let target = self.target().await?;
        let mut per_table = Vec::new();
        for t in &self.settings.tables {
            let info = load_info(&target.client, t).await?;
            per_table.push((t, info));
        }
        let mut steps = Vec::new();
        for step in Step::ALL {
            for (t, info) in &per_table {
                let n = Names::of(t);
                let (summary, sql) = match step {
                    Step::Generate => (
                        format!(
                            "unload the transformation (sha256 {}) from the legacy database in chunks of {} rows",
                            hex_sha256(transform_query(&t.transform_sql).as_bytes()),
                            t.chunk_rows
                        ),
                        vec![format!(
                            "COPY (\n{}\n) TO STDOUT",
                            transform_query(&t.transform_sql)
                        )],
                    ),
                    Step::Copy => ("create the unindexed copy".into(), copy_sql(&n)),
                    Step::Triggers => ("log the key of every live write".into(), triggers_sql(&n, info)?),
                    Step::Import => (
                        format!(
                            "import every chunk (verified against the manifest), pausing {} ms between chunks",
                            t.throttle.as_millis()
                        ),
                        vec![format!(
                            "COPY {} ({}) FROM STDIN",
                            n.copy,
                            column_list(&info.columns)
                        )],
                    ),
                    Step::Resolve => (
                        "live rows and touched keys win over imported rows (REPEATABLE READ)".into(),
                        resolve_sql(&n, info, None),
                    ),
                    Step::Index => (
                        "build every index concurrently, then catch up".into(),
                        index_sql(&n, info),
                    ),
                    Step::Flip => (
                        "swap the copy in, in one transaction with every table".into(),
                        flip_sql(&n, t, info, "<snapshot of the last catch-up>"),
                    ),
                };
                steps.push(PlannedStep {
                    table: t.qualified(),
                    step,
                    summary,
                    sql,
                });
            }
        }
        Ok(Plan { steps })
    }

    /// Where every table stands, from the state tables.
    pub async fn status(&self) -> Result<Vec<TableStatus>> {
        let target = self.target().await?;
        let exists: bool = target
            .client
            .query_one(
                "SELECT to_regclass(quote_ident($1) || '.state') IS NOT NULL",
                &[&self.settings.state_schema],
            )
            .await
            .map_err(|e| sql_error("*", Step::Generate, "to_regclass", e))?
            .get(0);
        let mut out = Vec::new();
        for t in &self.settings.tables {
            let qualified = t.qualified();
            let mut rows: BTreeMap<Step, StepStatus> = BTreeMap::new();
            let mut chunks_done = 0i64;
            if exists {
                let sql = format!(
                    "SELECT step, status, detail, to_char(updated_at AT TIME ZONE 'UTC', \
                     'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM {}.state WHERE table_name = $1",
                    target.state
                );
                let found = target
                    .client
                    .query(&sql, &[&qualified])
                    .await
                    .map_err(|e| sql_error(&qualified, Step::Generate, &sql, e))?;
                for r in found {
                    let step: String = r.get(0);
                    if let Ok(step) = step.parse::<Step>() {
                        rows.insert(
                            step,
                            StepStatus {
                                step,
                                status: r.get(1),
                                detail: r.get(2),
                                updated_at: r.get(3),
                            },
                        );
                    }
                }
                let sql = format!(
                    "SELECT count(*) FROM {}.chunks WHERE table_name = $1",
                    target.state
                );
                chunks_done = target
                    .client
                    .query_one(&sql, &[&qualified])
                    .await
                    .map_err(|e| sql_error(&qualified, Step::Import, &sql, e))?
                    .get(0);
            }
            let steps: Vec<StepStatus> = Step::ALL
                .into_iter()
                .map(|step| {
                    rows.remove(&step).unwrap_or_else(|| StepStatus {
                        step,
                        status: if step == Step::Import && chunks_done > 0 {
                            "running".into()
                        } else {
                            "pending".into()
                        },
                        detail: if step == Step::Import && chunks_done > 0 {
                            format!("{chunks_done} chunks imported")
                        } else {
                            String::new()
                        },
                        updated_at: None,
                    })
                })
                .collect();
            let current = steps.iter().find(|s| s.status != "done").map(|s| s.step);
            out.push(TableStatus {
                table: qualified,
                current,
                steps,
            });
        }
        Ok(out)
    }

    /// Runs every step not done yet, resuming where a previous run stopped.
    pub async fn run(&self) -> Result<RunReport> {
        self.run_until(Step::Flip).await
    }

    /// Runs every step not done yet up to and including `last`, for every
    /// table (step by step: every table's generate, then every table's
    /// copy, ...; the flip swaps every table in one transaction).
    pub async fn run_until(&self, last: Step) -> Result<RunReport> {
        let target = self.target().await?;
        self.lock(&target).await?;
        let result = self.run_locked(&target, last).await;
        let _ = target
            .client
            .batch_execute("SELECT pg_advisory_unlock_all()")
            .await;
        result
    }

    async fn lock(&self, target: &Target) -> Result<()> {
        let started = Instant::now();
        loop {
            let got: bool = target
                .client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&RUN_LOCK])
                .await
                .map_err(|e| sql_error("*", Step::Generate, "SELECT pg_try_advisory_lock($1)", e))?
                .get(0);
            if got {
                return Ok(());
            }
            if started.elapsed() > RUN_LOCK_WAIT {
                return Err(BackfillError::Busy {
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn run_locked(&self, target: &Target, last: Step) -> Result<RunReport> {
        ensure_state_tables(&target.client, &target.state).await?;
        let mut reports: Vec<TableReport> = self
            .settings
            .tables
            .iter()
            .map(|t| TableReport {
                table: t.qualified(),
                ..TableReport::default()
            })
            .collect();
        let mut infos: Vec<Option<TableInfo>> = vec![None; self.settings.tables.len()];
        for step in Step::ALL.into_iter().take_while(|s| *s <= last) {
            if step == Step::Flip {
                self.flip(target, &mut infos, &mut reports).await?;
                continue;
            }
            for (i, t) in self.settings.tables.iter().enumerate() {
                let q = t.qualified();
                if state_done(&target.client, &target.state, &q, step).await? {
                    continue;
                }
                self.report(&q, step, "starting");
                if step != Step::Generate && infos[i].is_none() {
                    infos[i] = Some(load_info(&target.client, t).await?);
                }
                let report = &mut reports[i];
                match step {
                    Step::Generate => self.generate(target, t, report).await?,
                    Step::Copy => self.create_copy(target, t).await?,
                    Step::Triggers => self.install_triggers(target, t, info(&infos[i])?).await?,
                    Step::Import => self.import(target, t, info(&infos[i])?, report).await?,
                    Step::Resolve => self.resolve(target, t, info(&infos[i])?, report).await?,
                    Step::Index => self.build_indexes(target, t, info(&infos[i])?, report).await?,
                    Step::Flip => {}
                }
                report.executed.push(step);
                self.report(&q, step, "done");
            }
        }
        Ok(RunReport { tables: reports })
    }

    // Step 0 ---------------------------------------------------------------

    async fn generate(&self, target: &Target, t: &TableSpec, report: &mut TableReport) -> Result<()> {
        let q = t.qualified();
        let step = Step::Generate;
        let legacy = Self::connect(&self.settings.legacy_url, "legacy").await?;
        let query = transform_query(&t.transform_sql);
        let statement = legacy
            .prepare(query)
            .await
            .map_err(|e| sql_error(&q, step, query, e))?;
        let columns: Vec<String> = statement.columns().iter().map(|c| c.name().to_owned()).collect();
        let mut unique = BTreeSet::new();
        if columns.is_empty() || !columns.iter().all(|c| unique.insert(c.as_str())) {
            return Err(BackfillError::Data {
                table: q,
                step,
                reason: format!(
                    "the transformation must return uniquely named columns (named like the target's); it returns {columns:?}"
                ),
            });
        }
        // On lines of its own: a trailing line comment cannot swallow the `)`.
        let copy = format!("COPY (\n{query}\n) TO STDOUT");
        let stream = legacy
            .copy_out(&copy)
            .await
            .map_err(|e| sql_error(&q, step, &copy, e))?;
        let mut stream = std::pin::pin!(stream);
        let mut chunks = Vec::new();
        let mut buf = BytesMut::new();
        let mut rows_in_buf = 0u64;
        let mut total = 0u64;
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| sql_error(&q, step, &copy, e))?;
            let mut rest: &[u8] = &piece;
            while !rest.is_empty() {
                // Take whole rows until the chunk is full.
                let need = t.chunk_rows - rows_in_buf;
                let mut taken = 0usize;
                let mut found = 0u64;
                for (i, b) in rest.iter().enumerate() {
                    if *b == b'\n' {
                        found += 1;
                        if found == need {
                            taken = i + 1;
                            break;
                        }
                    }
                }
                if found < need {
                    buf.extend_from_slice(rest);
                    rows_in_buf += found;
                    break;
                }
                buf.extend_from_slice(&rest[..taken]);
                rows_in_buf += found;
                rest = &rest[taken..];
                total += rows_in_buf;
                let data = buf.split().freeze();
                chunks.push(self.put_chunk(t, chunks.len() + 1, data, rows_in_buf).await?);
                rows_in_buf = 0;
                self.report(&q, step, format!("{total} rows in {} chunks", chunks.len()));
            }
        }
        if !buf.is_empty() {
            if !buf.ends_with(b"\n") {
                return Err(BackfillError::Data {
                    table: q,
                    step,
                    reason: "the COPY output does not end with a complete row".into(),
                });
            }
            total += rows_in_buf;
            let data = buf.split().freeze();
            chunks.push(self.put_chunk(t, chunks.len() + 1, data, rows_in_buf).await?);
        }
        let manifest = Manifest {
            table: q.clone(),
            columns,
            format: "text".into(),
            transform_sha256: hex_sha256(query.as_bytes()),
            rows: total,
            chunks,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BackfillError::Data {
            table: q.clone(),
            step,
            reason: format!("cannot encode the manifest: {e}"),
        })?;
        self.store
            .put(&self.manifest_path(t), PutPayload::from(json))
            .await
            .map_err(|e| store_error(&q, step, e))?;
        report.generated_rows = total;
        let detail = format!("{total} rows in {} chunks", manifest.chunks.len());
        mark_done(&target.client, &target.state, &q, step, &detail).await
    }

    async fn put_chunk(&self, t: &TableSpec, n: usize, data: Bytes, rows: u64) -> Result<ChunkInfo> {
        let path = self.chunk_path(t, n);
        let info = ChunkInfo {
            path: path.to_string(),
            rows,
            bytes: data.len() as u64,
            sha256: hex_sha256(&data),
        };
        self.store
            .put(&path, PutPayload::from(data))
            .await
            .map_err(|e| store_error(&t.qualified(), Step::Generate, e))?;
        Ok(info)
    }

    async fn manifest(&self, t: &TableSpec, step: Step) -> Result<Manifest> {
        let q = t.qualified();
        let bytes = self
            .store
            .get(&self.manifest_path(t))
            .await
            .map_err(|e| store_error(&q, step, e))?
            .bytes()
            .await
            .map_err(|e| store_error(&q, step, e))?;
        serde_json::from_slice(&bytes).map_err(|e| BackfillError::Data {
            table: q,
            step,
            reason: format!("the manifest {} is invalid: {e}", self.manifest_path(t)),
        })
    }

    // Step 1 ---------------------------------------------------------------

    async fn create_copy(&self, target: &Target, t: &TableSpec) -> Result<()> {
        let n = Names::of(t);
        let mut sql = vec!["BEGIN".to_owned()];
        sql.extend(copy_sql(&n));
        sql.push(mark_done_sql(&target.state, &n.qualified, Step::Copy, "created"));
        sql.push("COMMIT".into());
        exec_all(&target.client, &n.qualified, Step::Copy, &sql).await
    }

    // Step 2 ---------------------------------------------------------------

    async fn install_triggers(&self, target: &Target, t: &TableSpec, info: &TableInfo) -> Result<()> {
        let n = Names::of(t);
        let mut sql = vec!["BEGIN".to_owned()];
        sql.extend(triggers_sql(&n, info)?);
        sql.push(mark_done_sql(
            &target.state,
            &n.qualified,
            Step::Triggers,
            "installed",
        ));
        sql.push("COMMIT".into());
        exec_all(&target.client, &n.qualified, Step::Triggers, &sql).await
    }

    // Step 3 ---------------------------------------------------------------

    async fn import(
        &self,
        target: &Target,
        t: &TableSpec,
        info: &TableInfo,
        report: &mut TableReport,
    ) -> Result<()> {
        let q = t.qualified();
        let step = Step::Import;
        let n = Names::of(t);
        let manifest = self.manifest(t, step).await?;
        let configured = hex_sha256(transform_query(&t.transform_sql).as_bytes());
        if manifest.transform_sha256 != configured {
            return Err(BackfillError::Data {
                table: q,
                step,
                reason: format!(
                    "the transformation changed since step generate wrote the chunk files \
                     (manifest sha256 {}, configured {configured}); run reset, then run again \
                     to generate the data with the new transformation",
                    manifest.transform_sha256
                ),
            });
        }
        let known: BTreeSet<&str> = info.columns.iter().map(String::as_str).collect();
        let unknown: Vec<&String> = manifest
            .columns
            .iter()
            .filter(|c| !known.contains(c.as_str()))
            .collect();
        if !unknown.is_empty() {
            return Err(BackfillError::Data {
                table: q,
                step,
                reason: format!(
                    "the transformation's columns {unknown:?} are not columns of the table (it has {:?})",
                    info.columns
                ),
            });
        }
        if manifest.format != "text" {
            return Err(BackfillError::Data {
                table: q,
                step,
                reason: format!("unsupported chunk format {:?}", manifest.format),
            });
        }
        let sql = format!("SELECT chunk FROM {}.chunks WHERE table_name = $1", target.state);
        let done: BTreeSet<i32> = target
            .client
            .query(&sql, &[&q])
            .await
            .map_err(|e| sql_error(&q, step, &sql, e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let copy = format!("COPY {} ({}) FROM STDIN", n.copy, column_list(&manifest.columns));
        let record = format!(
            "INSERT INTO {}.chunks (table_name, chunk, rows, sha256) VALUES ($1, $2, $3, $4)",
            target.state
        );
        let started = Instant::now();
        let mut copying = Duration::ZERO;
        let total = manifest.chunks.len();
        let mut first = true;
        for (i, chunk) in manifest.chunks.iter().enumerate() {
            let number = i32::try_from(i + 1).map_err(|_| BackfillError::Data {
                table: q.clone(),
                step,
                reason: "too many chunks".into(),
            })?;
            if done.contains(&number) {
                continue;
            }
            if !first && !t.throttle.is_zero() {
                tokio::time::sleep(t.throttle).await;
            }
            first = false;
            let data = self
                .store
                .get(&self.chunk_path(t, i + 1))
                .await
                .map_err(|e| store_error(&q, step, e))?
                .bytes()
                .await
                .map_err(|e| store_error(&q, step, e))?;
            let sum = hex_sha256(&data);
            let rows = data.iter().filter(|b| **b == b'\n').count() as u64;
            if sum != chunk.sha256 || rows != chunk.rows {
                return Err(BackfillError::Data {
                    table: q,
                    step,
                    reason: format!(
                        "chunk {} does not match the manifest: sha256 {sum} ({} expected), {rows} rows ({} expected); run generate again (reset)",
                        chunk.path, chunk.sha256, chunk.rows
                    ),
                });
            }
            let began = Instant::now();
            let c = &target.client;
            c.batch_execute("BEGIN")
                .await
                .map_err(|e| sql_error(&q, step, "BEGIN", e))?;
            let imported = async {
                let sink = c
                    .copy_in::<_, Bytes>(&copy)
                    .await
                    .map_err(|e| sql_error(&q, step, &copy, e))?;
                let mut sink = std::pin::pin!(sink);
                let mut at = 0;
                while at < data.len() {
                    let end = (at + (1 << 20)).min(data.len());
                    sink.feed(data.slice(at..end))
                        .await
                        .map_err(|e| sql_error(&q, step, &copy, e))?;
                    at = end;
                }
                let copied = sink
                    .as_mut()
                    .finish()
                    .await
                    .map_err(|e| sql_error(&q, step, &copy, e))?;
                if copied != chunk.rows {
                    return Err(BackfillError::Data {
                        table: q.clone(),
                        step,
                        reason: format!(
                            "chunk {} imported {copied} rows, {} expected",
                            chunk.path, chunk.rows
                        ),
                    });
                }
                let rows_i64 = i64::try_from(chunk.rows).unwrap_or(i64::MAX);
                c.execute(&record, &[&q, &number, &rows_i64, &chunk.sha256])
                    .await
                    .map_err(|e| sql_error(&q, step, &record, e))?;
                c.batch_execute("COMMIT")
                    .await
                    .map_err(|e| sql_error(&q, step, "COMMIT", e))
            }
            .await;
            if let Err(e) = imported {
                let _ = c.batch_execute("ROLLBACK").await;
                return Err(e);
            }
            copying += began.elapsed();
            report.imported_chunks += 1;
            report.imported_rows += chunk.rows;
            self.report(&q, step, format!("chunk {}/{total}: {} rows", i + 1, chunk.rows));
        }
        report.import_copy_secs += copying.as_secs_f64();
        report.import_secs += started.elapsed().as_secs_f64();
        let detail = format!("{} rows in {total} chunks", manifest.rows);
        mark_done(&target.client, &target.state, &q, step, &detail).await
    }

    // Step 4 ---------------------------------------------------------------

    async fn resolve(
        &self,
        target: &Target,
        t: &TableSpec,
        info: &TableInfo,
        report: &mut TableReport,
    ) -> Result<()> {
        let n = Names::of(t);
        let step = Step::Resolve;
        let (replaced, live) = self.catch_up(target, &n, info, step, true).await?;
        report.replaced_rows += replaced;
        report.live_rows += live;
        Ok(())
    }

    /// Brings the copy up to date with the live table in one snapshot: the
    /// first time (`first`) for every live row and touched key, afterwards
    /// for the keys whose last writer the previous snapshot did not see.
    /// Records the snapshot (and, for resolve, the step) in the same
    /// transaction.
    async fn catch_up(
        &self,
        target: &Target,
        n: &Names,
        info: &TableInfo,
        step: Step,
        first: bool,
    ) -> Result<(u64, u64)> {
        let q = &n.qualified;
        let c = &target.client;
        let begin = "BEGIN ISOLATION LEVEL REPEATABLE READ";
        c.batch_execute(begin)
            .await
            .map_err(|e| sql_error(q, step, begin, e))?;
        let result = async {
            let snap_sql = "SELECT pg_current_snapshot()::text";
            let snapshot: String = c
                .query_one(snap_sql, &[])
                .await
                .map_err(|e| sql_error(q, step, snap_sql, e))?
                .get(0);
            let previous = if first { None } else { last_snapshot(c, &target.state, q, step).await? };
            let sql = resolve_sql(n, info, previous.as_deref());
            let mut counts = Vec::new();
            for s in &sql {
                counts.push(c.execute(s.as_str(), &[]).await.map_err(|e| sql_error(q, step, s, e))?);
            }
            let replaced: u64 = counts[..counts.len() - 1].iter().sum();
            let live = counts[counts.len() - 1];
            if first {
                let key = column_list(&info.key.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>());
                let dup = format!(
                    "SELECT count(*), min(k::text) FROM (SELECT ({key}) AS k FROM {} GROUP BY {key} HAVING count(*) > 1) d",
                    n.copy
                );
                let row = c.query_one(&dup, &[]).await.map_err(|e| sql_error(q, step, &dup, e))?;
                let dups: i64 = row.get(0);
                if dups > 0 {
                    let example: Option<String> = row.get(1);
                    return Err(BackfillError::Data {
                        table: q.clone(),
                        step,
                        reason: format!(
                            "{dups} primary keys appear more than once in the imported data (e.g. {}); fix the transformation, reset and run again",
                            example.unwrap_or_default()
                        ),
                    });
                }
            }
            let save = format!(
                "INSERT INTO {}.sync (table_name, snapshot, synced_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (table_name) DO UPDATE SET snapshot = EXCLUDED.snapshot, synced_at = now()",
                target.state
            );
            c.execute(&save, &[q, &snapshot]).await.map_err(|e| sql_error(q, step, &save, e))?;
            if step == Step::Resolve {
                let detail = format!("{replaced} imported rows replaced, {live} live rows");
                let mark = mark_done_sql(&target.state, q, step, &detail);
                c.batch_execute(&mark).await.map_err(|e| sql_error(q, step, &mark, e))?;
            }
            Ok((replaced, live))
        }
        .await;
        match result {
            Ok(counts) => {
                c.batch_execute("COMMIT")
                    .await
                    .map_err(|e| sql_error(q, step, "COMMIT", e))?;
                self.report(
                    q,
                    step,
                    format!("caught up: {} rows replaced, {} live rows", counts.0, counts.1),
                );
                Ok(counts)
            }
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    }

    // Step 5 ---------------------------------------------------------------

    async fn build_indexes(
        &self,
        target: &Target,
        t: &TableSpec,
        info: &TableInfo,
        report: &mut TableReport,
    ) -> Result<()> {
        let n = Names::of(t);
        let q = &n.qualified;
        let step = Step::Index;
        let c = &target.client;
        let started = Instant::now();
        for idx in &info.indexes {
            let check = "SELECT i.indisvalid, con.conname IS NOT NULL FROM pg_index i \
                 JOIN pg_class ic ON ic.oid = i.indexrelid \
                 JOIN pg_namespace ns ON ns.oid = ic.relnamespace \
                 LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid \
                 WHERE ns.nspname = $1 AND ic.relname = $2";
            let existing = c
                .query_opt(check, &[&t.schema, &idx.temp_name])
                .await
                .map_err(|e| sql_error(q, step, check, e))?;
            let (mut valid, mut constrained) =
                existing.as_ref().map_or((false, false), |r| (r.get(0), r.get(1)));
            if existing.is_some() && !valid {
                // A CREATE INDEX CONCURRENTLY that was killed leaves an
                // INVALID index: drop it and build it again.
                self.report(
                    q,
                    step,
                    format!("dropping invalid index {} left by a killed run", idx.temp_name),
                );
                let drop = format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                    n.schema,
                    quote_ident(&idx.temp_name)
                );
                c.batch_execute(&drop)
                    .await
                    .map_err(|e| sql_error(q, step, &drop, e))?;
                valid = false;
                constrained = false;
            }
            if !valid {
                let sql = create_index_sql(&n, idx);
                self.report(q, step, format!("building {}", idx.temp_name));
                c.batch_execute(&sql)
                    .await
                    .map_err(|e| sql_error(q, step, &sql, e))?;
            }
            if let (Some((kind, _)), false) = (&idx.constraint, constrained) {
                let sql = add_constraint_sql(&n, idx, *kind);
                c.batch_execute(&sql)
                    .await
                    .map_err(|e| sql_error(q, step, &sql, e))?;
            }
        }
        report.index_secs += started.elapsed().as_secs_f64();
        let analyze = format!("ANALYZE {}", n.copy);
        c.batch_execute(&analyze)
            .await
            .map_err(|e| sql_error(q, step, &analyze, e))?;
        let (replaced, live) = self.catch_up(target, &n, info, step, false).await?;
        report.replaced_rows += replaced;
        report.live_rows += live;
        let detail = format!("{} indexes", info.indexes.len());
        mark_done(c, &target.state, q, step, &detail).await
    }

    // Step 6 ---------------------------------------------------------------

    async fn flip(
        &self,
        target: &Target,
        infos: &mut [Option<TableInfo>],
        reports: &mut [TableReport],
    ) -> Result<()> {
        let c = &target.client;
        let mut pending = Vec::new();
        for (i, t) in self.settings.tables.iter().enumerate() {
            if state_done(c, &target.state, &t.qualified(), Step::Flip).await? {
                continue;
            }
            if infos[i].is_none() {
                infos[i] = Some(load_info(c, t).await?);
            }
            pending.push(i);
        }
        if pending.is_empty() {
            return Ok(());
        }
        // Catch up outside the lock first, so the flip only applies the
        // writes of its last moments.
        for &i in &pending {
            let t = &self.settings.tables[i];
            let (replaced, live) = self
                .catch_up(target, &Names::of(t), info(&infos[i])?, Step::Flip, false)
                .await?;
            reports[i].replaced_rows += replaced;
            reports[i].live_rows += live;
        }
        // Lock in a stable order (every table's name) so two flips cannot
        // deadlock; writers wait for the whole transaction.
        pending.sort_by_key(|&i| self.settings.tables[i].qualified());
        // A lock timeout (writers holding the table) or a deadlock rolls
        // the flip back entirely: try again a few times.
        let mut attempt = 1;
        let (started, counts) = loop {
            let started = Instant::now();
            match self.flip_transaction(target, &pending, infos).await {
                Ok(counts) => break (started, counts),
                Err(e) if attempt < FLIP_ATTEMPTS && is_retryable(&e) => {
                    self.report(
                        "*",
                        Step::Flip,
                        format!("attempt {attempt} failed ({e}); retrying"),
                    );
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        for (&i, (replaced, live)) in pending.iter().zip(counts) {
            reports[i].replaced_rows += replaced;
            reports[i].live_rows += live;
        }
        let took = started.elapsed().as_secs_f64();
        for &i in &pending {
            let t = &self.settings.tables[i];
            reports[i].flip_secs = took;
            reports[i].executed.push(Step::Flip);
            let n = Names::of(t);
            let analyze = format!("ANALYZE {}", n.live);
            c.batch_execute(&analyze)
                .await
                .map_err(|e| sql_error(&n.qualified, Step::Flip, &analyze, e))?;
            self.report(
                &n.qualified,
                Step::Flip,
                format!("flipped ({:.0} ms under lock)", took * 1000.0),
            );
        }
        Ok(())
    }

    /// The flip's transaction: lock every pending table, catch up, swap.
    /// Returns each table's (replaced, live) row counts of the last catch-up.
    async fn flip_transaction(
        &self,
        target: &Target,
        pending: &[usize],
        infos: &[Option<TableInfo>],
    ) -> Result<Vec<(u64, u64)>> {
        let c = &target.client;
        let begin = "BEGIN";
        c.batch_execute(begin)
            .await
            .map_err(|e| sql_error("*", Step::Flip, begin, e))?;
        let result = async {
            let timeout = format!(
                "SET LOCAL lock_timeout = '{}ms'",
                self.settings.flip_lock_timeout.as_millis()
            );
            c.batch_execute(&timeout)
                .await
                .map_err(|e| sql_error("*", Step::Flip, &timeout, e))?;
            for &i in pending {
                let n = Names::of(&self.settings.tables[i]);
                let lock = format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", n.live);
                c.batch_execute(&lock)
                    .await
                    .map_err(|e| sql_error(&n.qualified, Step::Flip, &lock, e))?;
            }
            let mut counts = Vec::new();
            for &i in pending {
                let t = &self.settings.tables[i];
                let n = Names::of(t);
                let info = info(&infos[i])?;
                let snapshot = last_snapshot(c, &target.state, &n.qualified, Step::Flip)
                    .await?
                    .ok_or_else(|| BackfillError::Data {
                        table: n.qualified.clone(),
                        step: Step::Flip,
                        reason: "no catch-up snapshot recorded; run the resolve step first".into(),
                    })?;
                let mut sql = flip_sql(&n, t, info, &snapshot);
                let identity = identity_sql(c, &n, t, info).await?;
                // Identity values go right after the catch-up, before the
                // live table is dropped.
                sql.splice(2..2, identity);
                sql.push(mark_done_sql(&target.state, &n.qualified, Step::Flip, "flipped"));
                let mut affected = Vec::new();
                for s in &sql {
                    affected.push(
                        c.execute(s.as_str(), &[])
                            .await
                            .map_err(|e| sql_error(&n.qualified, Step::Flip, s, e))?,
                    );
                }
                counts.push((affected[0], affected[1]));
            }
            Ok::<_, BackfillError>(counts)
        }
        .await;
        match result {
            Ok(counts) => {
                c.batch_execute("COMMIT")
                    .await
                    .map_err(|e| sql_error("*", Step::Flip, "COMMIT", e))?;
                Ok(counts)
            }
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    }

    /// Forgets every table's progress and removes what an unfinished run
    /// left in the target database (copy, side table, trigger, function),
    /// so the next run starts from a clean slate: generate again, copy the
    /// (already flipped or not) live table again, ... Chunk files are
    /// overwritten by the next generate.
    pub async fn reset(&self) -> Result<()> {
        let target = self.target().await?;
        self.lock(&target).await?;
        let result = async {
            ensure_state_tables(&target.client, &target.state).await?;
            for t in &self.settings.tables {
                let n = Names::of(t);
                let q = &n.qualified;
                let exists: bool = target
                    .client
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&n.live])
                    .await
                    .map_err(|e| sql_error(q, Step::Generate, "to_regclass", e))?
                    .get(0);
                let mut sql = vec!["BEGIN".to_owned()];
                if exists {
                    sql.push(format!("DROP TRIGGER IF EXISTS {TRIGGER_NAME} ON {}", n.live));
                }
                sql.push(format!("DROP TABLE IF EXISTS {}", n.copy));
                sql.push(format!("DROP TABLE IF EXISTS {}", n.touched));
                sql.push(format!("DROP FUNCTION IF EXISTS {}()", n.function));
                for table in ["state", "chunks", "sync"] {
                    sql.push(format!(
                        "DELETE FROM {}.{table} WHERE table_name = {}",
                        target.state,
                        quote_literal(q)
                    ));
                }
                sql.push("COMMIT".into());
                exec_all(&target.client, q, Step::Generate, &sql).await?;
            }
            Ok(())
        }
        .await;
        let _ = target
            .client
            .batch_execute("SELECT pg_advisory_unlock_all()")
            .await;
        result
    }
}

fn info(info: &Option<TableInfo>) -> Result<&TableInfo> {
    info.as_ref().ok_or_else(|| BackfillError::Data {
        table: "*".into(),
        step: Step::Generate,
        reason: "internal: table catalog not loaded".into(),
    })
}

/// Lock timeouts (55P03) and deadlocks (40P01): the transaction rolled back
/// and can simply be tried again.
fn is_retryable(e: &BackfillError) -> bool {
    matches!(e, BackfillError::Sql { sql_state: Some(s), .. } if s == "55P03" || s == "40P01")
}

fn store_error(table: &str, step: Step, e: overseer_core::object_store::Error) -> BackfillError {
    BackfillError::Store {
        table: table.to_owned(),
        step,
        source: Box::new(e),
    }
}

fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

fn key_match(key: &[(String, String)], a: &str, b: &str) -> String {
    key.iter()
        .map(|(k, _)| format!("{a}.{k} = {b}.{k}", k = quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

// ---------------------------------------------------------------------------
// SQL of each step

fn copy_sql(n: &Names) -> Vec<String> {
    vec![
        format!("DROP TABLE IF EXISTS {}", n.copy),
        format!(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE \
             INCLUDING GENERATED INCLUDING IDENTITY)",
            n.copy, n.live
        ),
    ]
}

fn triggers_sql(n: &Names, info: &TableInfo) -> Result<Vec<String>> {
    let keys: Vec<String> = info.key.iter().map(|(k, _)| quote_ident(k)).collect();
    let key_defs: Vec<String> = info
        .key
        .iter()
        .map(|(k, ty)| format!("{} {ty} NOT NULL", quote_ident(k)))
        .collect();
    let xid = quote_ident(XID_COLUMN);
    let log = |row: &str| {
        format!(
            "INSERT INTO {} ({}, {xid}) VALUES ({}, pg_current_xact_id()) ON CONFLICT ({}) DO UPDATE SET {xid} = EXCLUDED.{xid};",
            n.touched,
            keys.join(", "),
            keys.iter()
                .map(|k| format!("{row}.{k}"))
                .collect::<Vec<_>>()
                .join(", "),
            keys.join(", ")
        )
    };
    let body = format!(
        "BEGIN\n  IF TG_OP IN ('UPDATE', 'DELETE') THEN\n    {}\n  END IF;\n  IF TG_OP IN ('INSERT', 'UPDATE') THEN\n    {}\n  END IF;\n  RETURN NULL;\nEND",
        log("OLD"),
        log("NEW")
    );
    let tag = "$overseer_backfill$";
    if body.contains(tag) {
        return Err(BackfillError::Data {
            table: n.qualified.clone(),
            step: Step::Triggers,
            reason: format!("a key column name contains {tag}"),
        });
    }
    Ok(vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}, {xid} xid8 NOT NULL, PRIMARY KEY ({}))",
            n.touched,
            key_defs.join(", "),
            keys.join(", ")
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {tag}\n{body}\n{tag}",
            n.function
        ),
        format!("DROP TRIGGER IF EXISTS {TRIGGER_NAME} ON {}", n.live),
        format!(
            "CREATE TRIGGER {TRIGGER_NAME} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()",
            n.live, n.function
        ),
    ])
}

/// The catch-up statements: deletes (their counts are replaced rows), then
/// one insert of live rows (last). With no previous snapshot: every live row
/// and touched key; else the keys whose last writer `previous` did not see.
fn resolve_sql(n: &Names, info: &TableInfo, previous: Option<&str>) -> Vec<String> {
    let cols = column_list(&info.columns);
    let l_cols = info
        .columns
        .iter()
        .map(|c| format!("l.{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let xid = quote_ident(XID_COLUMN);
    match previous {
        None => vec![
            format!(
                "DELETE FROM {} c USING {} k WHERE {}",
                n.copy,
                n.touched,
                key_match(&info.key, "c", "k")
            ),
            format!(
                "DELETE FROM {} c USING {} l WHERE {}",
                n.copy,
                n.live,
                key_match(&info.key, "c", "l")
            ),
            format!(
                "INSERT INTO {} ({cols}) OVERRIDING SYSTEM VALUE SELECT {l_cols} FROM {} l",
                n.copy, n.live
            ),
        ],
        Some(snapshot) => {
            let unseen = format!(
                "NOT pg_visible_in_snapshot(k.{xid}, {}::pg_snapshot)",
                quote_literal(snapshot)
            );
            vec![
                format!(
                    "DELETE FROM {} c USING {} k WHERE {} AND {unseen}",
                    n.copy,
                    n.touched,
                    key_match(&info.key, "c", "k")
                ),
                format!(
                    "INSERT INTO {} ({cols}) OVERRIDING SYSTEM VALUE SELECT {l_cols} FROM {} l JOIN {} k ON {} WHERE {unseen}",
                    n.copy,
                    n.live,
                    n.touched,
                    key_match(&info.key, "l", "k")
                ),
            ]
        }
    }
}

fn create_index_sql(n: &Names, idx: &IndexInfo) -> String {
    format!(
        "CREATE {}INDEX CONCURRENTLY {}.{} ON {}{}",
        if idx.unique { "UNIQUE " } else { "" },
        n.schema,
        quote_ident(&idx.temp_name),
        n.copy,
        idx.rest
    )
    .replacen(
        &format!("{}.{}", n.schema, quote_ident(&idx.temp_name)),
        &quote_ident(&idx.temp_name),
        1,
    )
}

fn add_constraint_sql(n: &Names, idx: &IndexInfo, kind: char) -> String {
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {} {} USING INDEX {}",
        n.copy,
        quote_ident(&idx.temp_name),
        if kind == 'p' { "PRIMARY KEY" } else { "UNIQUE" },
        quote_ident(&idx.temp_name)
    )
}

fn index_sql(n: &Names, info: &TableInfo) -> Vec<String> {
    let mut sql = Vec::new();
    for idx in &info.indexes {
        sql.push(create_index_sql(n, idx));
        if let Some((kind, _)) = &idx.constraint {
            sql.push(add_constraint_sql(n, idx, *kind));
        }
    }
    sql.push(format!("ANALYZE {}", n.copy));
    sql.extend(resolve_sql(n, info, Some("<snapshot of the previous catch-up>")));
    sql
}

/// The flip of one table, after its lock: catch-up delete, catch-up insert,
/// sequences, drop, renames, cleanup.
fn flip_sql(n: &Names, t: &TableSpec, info: &TableInfo, snapshot: &str) -> Vec<String> {
    let mut sql = resolve_sql(n, info, Some(snapshot));
    for (seq, column) in &info.owned_sequences {
        sql.push(format!(
            "ALTER SEQUENCE {seq} OWNED BY {}.{}",
            n.copy,
            quote_ident(column)
        ));
    }
    sql.push(format!("DROP TABLE {}", n.live));
    sql.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        n.copy,
        quote_ident(&t.name)
    ));
    for idx in &info.indexes {
        match &idx.constraint {
            Some((_, name)) => sql.push(format!(
                "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                n.live,
                quote_ident(&idx.temp_name),
                quote_ident(name)
            )),
            None => sql.push(format!(
                "ALTER INDEX {}.{} RENAME TO {}",
                n.schema,
                quote_ident(&idx.temp_name),
                quote_ident(&idx.name)
            )),
        }
    }
    sql.push(format!("DROP TABLE {}", n.touched));
    sql.push(format!("DROP FUNCTION {}()", n.function));
    sql
}

/// Sets the copy's identity sequences to the live ones' positions.
async fn identity_sql(c: &Client, n: &Names, t: &TableSpec, info: &TableInfo) -> Result<Vec<String>> {
    let mut sql = Vec::new();
    for column in &info.identity {
        let q = "SELECT pg_get_serial_sequence($1, $2), pg_get_serial_sequence($3, $2)";
        let copy_name = format!("{}.{}", quote_ident(&t.schema), quote_ident(&n.copy_name));
        let row = c
            .query_one(q, &[&n.live, column, &copy_name])
            .await
            .map_err(|e| sql_error(&n.qualified, Step::Flip, q, e))?;
        let (Some(live_seq), Some(copy_seq)) =
            (row.get::<_, Option<String>>(0), row.get::<_, Option<String>>(1))
        else {
            continue;
        };
        sql.push(format!(
            "SELECT setval({}, s.last_value, s.is_called) FROM {live_seq} s",
            quote_literal(&copy_seq)
        ));
    }
    Ok(sql)
}

// ---------------------------------------------------------------------------
// State tables

async fn ensure_state_tables(c: &Client, state: &str) -> Result<()> {
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {state};
         CREATE TABLE IF NOT EXISTS {state}.state (
             table_name text NOT NULL, step text NOT NULL, status text NOT NULL,
             detail text NOT NULL DEFAULT '', updated_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (table_name, step));
         CREATE TABLE IF NOT EXISTS {state}.chunks (
             table_name text NOT NULL, chunk integer NOT NULL, rows bigint NOT NULL,
             sha256 text NOT NULL, imported_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (table_name, chunk));
         CREATE TABLE IF NOT EXISTS {state}.sync (
             table_name text PRIMARY KEY, snapshot text NOT NULL, synced_at timestamptz NOT NULL)"
    );
    c.batch_execute(&sql)
        .await
        .map_err(|e| sql_error("*", Step::Generate, &sql, e))
}

fn mark_done_sql(state: &str, table: &str, step: Step, detail: &str) -> String {
    format!(
        "INSERT INTO {state}.state (table_name, step, status, detail, updated_at) VALUES ({}, {}, 'done', {}, now()) \
         ON CONFLICT (table_name, step) DO UPDATE SET status = 'done', detail = EXCLUDED.detail, updated_at = now()",
        quote_literal(table),
        quote_literal(step.as_str()),
        quote_literal(detail)
    )
}

async fn mark_done(c: &Client, state: &str, table: &str, step: Step, detail: &str) -> Result<()> {
    let sql = mark_done_sql(state, table, step, detail);
    c.batch_execute(&sql)
        .await
        .map_err(|e| sql_error(table, step, &sql, e))
}

async fn state_done(c: &Client, state: &str, table: &str, step: Step) -> Result<bool> {
    let sql = format!("SELECT status = 'done' FROM {state}.state WHERE table_name = $1 AND step = $2");
    Ok(c.query_opt(&sql, &[&table, &step.as_str()])
        .await
        .map_err(|e| sql_error(table, step, &sql, e))?
        .is_some_and(|r| r.get::<_, bool>(0)))
}

async fn last_snapshot(c: &Client, state: &str, table: &str, step: Step) -> Result<Option<String>> {
    let sql = format!("SELECT snapshot FROM {state}.sync WHERE table_name = $1");
    Ok(c.query_opt(&sql, &[&table])
        .await
        .map_err(|e| sql_error(table, step, &sql, e))?
        .map(|r| r.get(0)))
}

async fn exec_all(c: &Client, table: &str, step: Step, sql: &[String]) -> Result<()> {
    for s in sql {
        if let Err(e) = c.batch_execute(s).await {
            if s != "BEGIN" {
                let _ = c.batch_execute("ROLLBACK").await;
            }
            return Err(sql_error(table, step, s, e));
        }
    }
    Ok(())
}

/// Reads the live table's columns, key, indexes and sequences.
async fn load_info(c: &Client, t: &TableSpec) -> Result<TableInfo> {
    let n = Names::of(t);
    let q = &n.qualified;
    let step = Step::Copy;
    let rel_sql = "SELECT c.oid FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace \
                   WHERE ns.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";
    let rel: u32 = c
        .query_opt(rel_sql, &[&t.schema, &t.name])
        .await
        .map_err(|e| sql_error(q, step, rel_sql, e))?
        .ok_or_else(|| BackfillError::Data {
            table: q.clone(),
            step,
            reason: "the table does not exist in the target database".into(),
        })?
        .get(0);
    let cols_sql = "SELECT attname, attidentity <> '' FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 \
                    AND NOT attisdropped AND attgenerated = '' ORDER BY attnum";
    let rows = c
        .query(cols_sql, &[&rel])
        .await
        .map_err(|e| sql_error(q, step, cols_sql, e))?;
    let columns: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let identity: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    let key_sql = "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_constraint con \
                   CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord) \
                   JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum \
                   WHERE con.conrelid = $1 AND con.contype = 'p' ORDER BY k.ord";
    let key: Vec<(String, String)> = c
        .query(key_sql, &[&rel])
        .await
        .map_err(|e| sql_error(q, step, key_sql, e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if key.is_empty() {
        return Err(BackfillError::Data {
            table: q.clone(),
            step,
            reason: "the table has no primary key; the backfill matches rows by it".into(),
        });
    }
    if key.iter().any(|(k, _)| k == XID_COLUMN) {
        return Err(BackfillError::Data {
            table: q.clone(),
            step,
            reason: format!("a primary-key column is named {XID_COLUMN}, which the side table uses"),
        });
    }
    let idx_sql = "SELECT ic.relname, i.indisunique, pg_get_indexdef(i.indexrelid), con.contype::text, con.conname, \
                   quote_ident(ic.relname), quote_ident(ns.nspname) || '.' || quote_ident(tc.relname), quote_ident(tc.relname) \
                   FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
                   JOIN pg_class tc ON tc.oid = i.indrelid JOIN pg_namespace ns ON ns.oid = tc.relnamespace \
                   LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid \
                   WHERE i.indrelid = $1 ORDER BY ic.relname";
    let mut indexes = Vec::new();
    for r in c
        .query(idx_sql, &[&rel])
        .await
        .map_err(|e| sql_error(q, step, idx_sql, e))?
    {
        let name: String = r.get(0);
        let unique: bool = r.get(1);
        let def: String = r.get(2);
        let contype: Option<String> = r.get(3);
        let conname: Option<String> = r.get(4);
        let quoted_name: String = r.get(5);
        let constraint = match contype.as_deref() {
            None => None,
            Some("p") => conname.map(|c| ('p', c)),
            Some("u") => conname.map(|c| ('u', c)),
            Some(other) => {
                return Err(BackfillError::Data {
                    table: q.clone(),
                    step,
                    reason: format!(
                        "index {name} backs a constraint of kind {other:?}, which the backfill cannot rebuild"
                    ),
                });
            }
        };
        let head = format!(
            "{}INDEX {quoted_name} ON ",
            if unique { "CREATE UNIQUE " } else { "CREATE " }
        );
        let rest = def.strip_prefix(&head).and_then(|after| {
            let after = after.strip_prefix("ONLY ").unwrap_or(after);
            [r.get::<_, String>(6), r.get::<_, String>(7)]
                .iter()
                .find_map(|table| after.strip_prefix(table.as_str()))
                .filter(|rest| rest.starts_with(" USING "))
                .map(str::to_owned)
        });
        let Some(rest) = rest else {
            return Err(BackfillError::Data {
                table: q.clone(),
                step,
                reason: format!("cannot read the definition of index {name}: {def}"),
            });
        };
        indexes.push(IndexInfo {
            temp_name: temp_index_name(&name),
            name,
            unique,
            rest,
            constraint,
        });
    }
    let seq_sql = "SELECT sn.nspname, s.relname, a.attname \
                   FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
                   JOIN pg_namespace sn ON sn.oid = s.relnamespace \
                   JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
                   WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
                   AND d.refobjid = $1 AND d.deptype = 'a' ORDER BY 1, 2";
    let owned_sequences = c
        .query(seq_sql, &[&rel])
        .await
        .map_err(|e| sql_error(q, step, seq_sql, e))?
        .iter()
        .map(|r| {
            let (schema, name): (String, String) = (r.get(0), r.get(1));
            (
                format!("{}.{}", quote_ident(&schema), quote_ident(&name)),
                r.get(2),
            )
        })
        .collect();
    Ok(TableInfo {
        columns,
        key,
        indexes,
        owned_sequences,
        identity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("ledger"), "\"ledger\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn steps_parse_by_name_or_number() {
        assert_eq!("import".parse::<Step>().ok(), Some(Step::Import));
        assert_eq!("6".parse::<Step>().ok(), Some(Step::Flip));
        assert!("later".parse::<Step>().is_err());
        assert!(Step::Generate < Step::Flip);
    }

    #[test]
    fn temp_index_names_fit_identifiers() {
        assert_eq!(temp_index_name("ledger_pkey"), "ledger_pkey_bf");
        let long = "é".repeat(40);
        assert!(temp_index_name(&long).len() <= 63);
    }

    #[test]
    fn transform_query_drops_trailing_semicolons() {
        assert_eq!(transform_query("  SELECT 1;\n; \n"), "SELECT 1");
    }

    #[test]
    fn a_flip_lock_timeout_postgres_refuses_is_a_configuration_error() {
        let mut settings = BackfillSettings::new(
            "postgres://l",
            "postgres://t",
            vec![TableSpec::new("t", "SELECT 1")],
        );
        settings.flip_lock_timeout = Duration::from_millis(2_147_483_647);
        assert!(settings.validate().is_ok());
        // Failed only at the flip, after every other step: SET lock_timeout
        // refuses values above i32::MAX milliseconds.
        settings.flip_lock_timeout = Duration::from_millis(2_147_483_648);
        let err = settings.validate().unwrap_err().to_string();
        assert!(
            err.contains("flip_lock_timeout_ms: 2147483648 is more than 2147483647"),
            "{err}"
        );
    }

    #[test]
    fn config_reports_every_problem() {
        let text = r#"
            legacy_url = ""
            target_url = "postgres://x/y"
            data_dir = "data"
            [[tables]]
            name = "a"
            transform = "missing.sql"
            chunk_rows = 0
        "#;
        let config = BackfillConfig::parse(text, false).unwrap_or_else(|e| panic!("{e}"));
        let Err(BackfillError::Config { problems }) = config.settings() else {
            panic!("invalid config accepted");
        };
        let all = problems.join("\n");
        assert!(all.contains("missing.sql"), "{all}");
        assert!(all.contains("legacy_url"), "{all}");
        assert!(BackfillConfig::parse("legacy_url = 1", false).is_err());
        assert!(BackfillConfig::parse(r#"{"legacy_url": "a", "nope": 1}"#, true).is_err());
    }
}
