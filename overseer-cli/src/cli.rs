//! The command line: clap definitions of every command and flag.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::LazyLock;

use clap::builder::PossibleValue;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use overseer_builders::FormatName;
use overseer_core::{Model, Timestamp};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  not found: the record does not exist at the time asked, or has no updates;
     or the check of audit --check has no executions or incidents
  2  usage error, unreadable input, or store error";

const LONG_ABOUT: &str = "\
Operate an Overseer store: ingest change events, view records at any time, read their history, \
dead letters and check audit (executions, incidents); plan, run and verify migrations of live \
Postgres tables.

Data goes to stdout (machine-readable); messages and progress go to stderr.

Exit codes:
  0  success
  1  not found: the record does not exist at the time asked, or has no updates;
     or the check of audit --check has no executions or incidents
  2  usage error, unreadable input, or store error";

/// The `overseer` operator command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "overseer",
    version,
    about = "Operate an Overseer store: ingest change events, view records at any time, \
             read their history, dead letters and check audit; migrate live Postgres tables",
    long_about = LONG_ABOUT,
)]
pub struct Cli {
    /// Log to stderr: -v shows warnings (such as why each event was
    /// dead-lettered), -vv info, -vvv debug, -vvvv trace. RUST_LOG, when set,
    /// chooses the levels instead.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `overseer`.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Ingest change events (one per line) from files or stdin into a store.
    #[command(
        long_about = "Ingest change events into a store.\n\n\
            Each input is read line by line; every non-empty line is one event of the \
            chosen --format. Lines are ingested in batches (--batch-size): each batch is \
            stored and then acknowledged (the source's checkpoint is written). Events that \
            cannot be read are kept in the store's dead-letter area (see `overseer \
            dead-letters`). Ingesting the same events again stores nothing new: they are \
            counted as duplicates.\n\n\
            A summary is printed on stdout (--json for a JSON object); progress and \
            messages go to stderr.",
        after_long_help = EXIT_CODES
    )]
    Ingest(IngestArgs),

    /// Print a record's state at a time, as JSON.
    #[command(
        long_about = "Print a record's state at a time, as JSON on stdout.\n\n\
            The state is every update of the record committed at or before --at, folded \
            by its format. If the record does not exist at that time (not yet inserted, \
            or deleted), nothing is printed on stdout, a message goes to stderr and the \
            exit code is 1.\n\n\
            MongoDB records are addressed by their `_id` as text: an ObjectId by its hex \
            string (64b7f0c2a1b2c3d4e5f60718). Relational rows are addressed by their \
            primary-key value (42), a composite key by the JSON array of its values \
            ([1,\"a\"]).",
        after_long_help = EXIT_CODES
    )]
    View(ViewArgs),

    /// List every update of a record, oldest first.
    #[command(
        long_about = "List every update of a record, oldest first, one per line on stdout.\n\n\
            Each line holds, separated by tabs: the commit time (RFC 3339), the operation, \
            the source, the position in the source, and the fields the update changed \
            (comma-separated; - when none; ? when the record's format is not a built-in one, \
            such as a custom format of an embedding service). With --json, each line is a \
            JSON object with those fields (changed_fields null when unknown) plus \
            ingested_at, format and references.\n\n\
            A record with no updates is reported on stderr with exit code 1.",
        after_long_help = EXIT_CODES
    )]
    History(HistoryArgs),

    /// List the events that could not be ingested.
    #[command(
        long_about = "List the events that could not be ingested (the dead-letter area), \
            in the order they arrived in, one per line on stdout.\n\n\
            Each line holds, separated by tabs: the time the event was received, its \
            source, its format, its position (- when unknown), the error, and the raw \
            event (as UTF-8, invalid bytes replaced; cut to 200 characters; tabs and line \
            breaks escaped). With --json, each line is a JSON object with the full raw \
            event (raw; when it is not valid UTF-8, raw has the invalid bytes replaced and \
            raw_hex holds its exact bytes in hex, else raw_hex is null) and its index in \
            the batch it arrived in (batch_index).",
        after_long_help = EXIT_CODES
    )]
    DeadLetters(DeadLettersArgs),

    /// List check executions, or incidents, from the audit area.
    #[command(
        long_about = "List check executions (every run of every check, oldest first), or with \
            --incidents the open incidents (--all: also the resolved ones), one per line on \
            stdout.\n\n\
            An execution line holds, separated by tabs: when it ran (runner clock), the check, \
            the root record, the outcome (pass, fail, not_applicable, indeterminate, error), \
            the source time the view was loaded as of, the triggering record, and the \
            message (- when none). An incident line holds: opened at, resolved at (or \
            open), the check, the root record, how many runs have failed, when the latest \
            failed, and its message (- when none). With --json each line is a \
            JSON object with every field, failure details included.",
        after_long_help = EXIT_CODES
    )]
    Audit(AuditArgs),

    /// Safe migrations of live Postgres tables: plan, run and follow a
    /// zero-downtime backfill; repair and verify the result.
    #[command(subcommand)]
    Migrate(MigrateCommand),
}

const MIGRATE_EXIT_CODES: &str = "\
Exit codes:
  0  success
  2  usage error, invalid configuration, or database / data file error";

/// The commands of `overseer migrate`.
#[derive(Debug, Clone, Subcommand)]
pub enum MigrateCommand {
    /// Print the SQL of every backfill step of every table.
    #[command(
        long_about = "Print the SQL of every backfill step of every configured table, in \
            execution order, from the target database's catalog (nothing is changed).\n\n\
            Steps: 0 copy (unindexed copy table), 1 triggers (log live writes' keys), \
            2 generate (COPY of the transformation's output from the legacy database into chunk \
            files, after the trigger exists so later live writes win), \
            3 import (COPY FROM STDIN, chunk by chunk, checksums verified, throttled), \
            4 resolve (live rows and touched keys win over imported rows), 5 index (CREATE INDEX \
            CONCURRENTLY of every index), 6 flip (one transaction: lock, catch up, swap the \
            tables, drop the old one).",
        after_long_help = MIGRATE_EXIT_CODES
    )]
    Plan(crate::migrate::MigratePlanArgs),

    /// Run the backfill, resuming where a previous run stopped.
    #[command(
        long_about = "Run every backfill step not done yet (up to --until), resuming where a \
            previous (killed) run stopped: progress is recorded in the target database \
            (schema overseer_migrate). Progress goes to stderr; a summary per table to stdout.\n\n\
            A finished backfill is not run again: `overseer migrate reset` starts over from a \
            clean slate.",
        after_long_help = MIGRATE_EXIT_CODES
    )]
    Run(crate::migrate::MigrateRunArgs),

    /// Show which step each table is in.
    #[command(
        long_about = "Show the state of every step of every table, one line each, separated by \
            tabs: the table, the step's number (marked * when it is the current one), its name, \
            its status (done, running, pending), its detail (- when none) and when it last \
            changed (- when never).",
        after_long_help = MIGRATE_EXIT_CODES
    )]
    Status(crate::migrate::MigrateStatusArgs),

    /// Forget the backfill's progress and drop what an unfinished run left.
    #[command(
        long_about = "Forget every table's backfill progress and drop what an unfinished run \
            left in the target database (copy table, side table, trigger, function), so the \
            next run starts from a clean slate. A flipped table stays as it is.",
        after_long_help = MIGRATE_EXIT_CODES
    )]
    Reset(crate::migrate::MigrateResetArgs),

    /// Recompute a ledger's cumulative balances and entry links (after the flip).
    #[command(
        long_about = "Recompute every account's cumulative balances (balance_after, the running sum \
            of the amounts in id order) and the links between its sequential entries (prev_id), \
            with window functions, in short batches of whole accounts (one transaction each). \
            Only wrong rows are written; a second run changes nothing. Prints how many rows \
            changed (--json for a JSON object). Configuration: a JSON file, see \
            docs/migrations-verify.md.",
        after_long_help = MIGRATE_EXIT_CODES
    )]
    Repair(crate::migrate_verify::MigrateRepairArgs),

    /// Verify a migrated ledger: integrity, and completeness and correctness against legacy.
    #[command(
        long_about = "Verify a migrated ledger. Integrity in the new store: every account's chain \
            is complete (no gap, no fork), every cumulative balance equals the running sum, every \
            transaction sums to zero. With a legacy store configured: rows missing on either \
            side, rows that differ (with the columns), per-account totals, found by comparing \
            checksums of key ranges and descending only into ranges that differ. Prints the \
            report naming the offending ids (--json for a JSON object). Configuration: a JSON \
            file, see docs/migrations-verify.md.",
        after_long_help = VERIFY_EXIT_CODES
    )]
    Verify(crate::migrate_verify::MigrateVerifyArgs),
}

const VERIFY_EXIT_CODES: &str = "\
Exit codes:
  0  clean
  2  usage error, invalid configuration, or database error
  3  discrepancies found (the report is printed first)";

/// Where the store is.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The store directory (a local Overseer store).
    #[arg(long, value_name = "DIR", env = "OVERSEER_STORE")]
    pub store: PathBuf,
}

/// Arguments of `overseer ingest`.
#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,

    /// The format of the events.
    #[arg(long, short = 'f', value_name = "FORMAT")]
    pub format: FormatArg,

    /// The model of every event, instead of the event's own collection or
    /// table name. Required for the json format.
    #[arg(long, value_name = "NAME", value_parser = parse_model)]
    pub model: Option<Model>,

    /// The source id of the events [default: the input's file name without
    /// its directory; `stdin` for -].
    #[arg(long, value_name = "NAME", value_parser = non_empty)]
    pub source: Option<String>,

    /// A reference to record: FIELD=MODEL means the (dotted) FIELD of the
    /// ingested records holds the id of a record of MODEL. It applies to the
    /// --model when given, else to every model the events carry. To scope a
    /// reference to one model of a many-model source, write
    /// `MODEL.FIELD->TARGET`. Repeatable.
    #[arg(long = "ref", value_name = "FIELD=MODEL", value_parser = parse_ref)]
    pub refs: Vec<RefArg>,

    /// Relational formats: a primary-key column, for events that do not name
    /// their key. Repeatable, or comma-separated [default: the event's own key
    /// information, else `id`].
    #[arg(long = "key-column", value_name = "COL", value_delimiter = ',')]
    pub key_columns: Vec<String>,

    /// json format: the field holding the record id [default: id].
    #[arg(long, value_name = "F")]
    pub id_field: Option<String>,

    /// json format: the field holding the commit time, RFC 3339 or epoch
    /// milliseconds [default: updated_at].
    #[arg(long, value_name = "F")]
    pub time_field: Option<String>,

    /// How many events to store and acknowledge at once.
    #[arg(long, value_name = "N", default_value = "1000")]
    pub batch_size: NonZeroUsize,

    /// Print the summary as a JSON object.
    #[arg(long)]
    pub json: bool,

    /// The files to read, one event per line; - reads stdin.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

/// Arguments of `overseer view`.
#[derive(Debug, Clone, Args)]
pub struct ViewArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,

    /// The record's model (collection, table).
    #[arg(value_name = "MODEL")]
    pub model: String,

    /// The record's id.
    #[arg(value_name = "ID")]
    pub id: String,

    /// The time to view the record at: RFC 3339 (2024-05-01T12:00:00Z) or
    /// integer Unix seconds, not milliseconds [default: now].
    #[arg(long, value_name = "TIME", value_parser = parse_time, allow_negative_numbers = true)]
    pub at: Option<Timestamp>,

    /// Print the JSON on one line instead of indented.
    #[arg(long)]
    pub compact: bool,
}

/// Arguments of `overseer history`.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,

    /// The record's model (collection, table).
    #[arg(value_name = "MODEL")]
    pub model: String,

    /// The record's id.
    #[arg(value_name = "ID")]
    pub id: String,

    /// Print one JSON object per update instead of tab-separated lines.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `overseer dead-letters`.
#[derive(Debug, Clone, Args)]
pub struct DeadLettersArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,

    /// Print one JSON object per dead letter (with the full raw event)
    /// instead of tab-separated lines.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `overseer audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,

    /// Only this check.
    #[arg(long, value_name = "NAME", value_parser = non_empty)]
    pub check: Option<String>,

    /// Only this root record's model (with --id).
    #[arg(long, value_name = "MODEL", requires = "id")]
    pub model: Option<String>,

    /// Only this root record's id (with --model).
    #[arg(long, value_name = "ID", requires = "model")]
    pub id: Option<String>,

    /// Only executions with this outcome (not with --incidents: an incident
    /// has no outcome).
    #[arg(long, value_name = "OUTCOME", value_parser = ["pass", "fail", "not_applicable", "indeterminate", "error"], conflicts_with = "incidents")]
    pub outcome: Option<String>,

    /// List incidents instead of executions (open ones; --all for every one).
    #[arg(long)]
    pub incidents: bool,

    /// With --incidents, also the resolved incidents.
    #[arg(long, requires = "incidents")]
    pub all: bool,

    /// One JSON object per line instead of tab-separated lines.
    #[arg(long)]
    pub json: bool,
}

/// A format of `overseer-builders`, as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatArg(pub FormatName);

static FORMATS: LazyLock<Vec<FormatArg>> =
    LazyLock::new(|| FormatName::ALL.into_iter().map(FormatArg).collect());

impl ValueEnum for FormatArg {
    fn value_variants<'a>() -> &'a [Self] {
        &FORMATS
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self.0 {
            FormatName::Mongo => "MongoDB change stream events (Extended JSON)",
            FormatName::Wal2json => "Postgres wal2json format-version 2 changes",
            FormatName::Pgoutput => "Postgres pgoutput row changes, decoded to JSON",
            FormatName::Debezium => "Debezium relational connector envelopes",
            FormatName::Json => "whole application records (needs --model)",
        };
        Some(PossibleValue::new(self.0.as_str()).help(help))
    }
}

/// A `--ref` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefArg {
    /// The referencing model, when scoped (`MODEL.FIELD->TARGET`); `None`
    /// for `FIELD=MODEL`.
    pub model: Option<Model>,
    /// The (dotted) field holding the target's id.
    pub field: String,
    /// The model pointed at.
    pub target: Model,
}

fn parse_ref(text: &str) -> Result<RefArg, String> {
    if text.contains("->") {
        let spec = overseer_core::ReferenceSpec::parse(text).map_err(|e| e.to_string())?;
        return Ok(RefArg {
            model: Some(spec.model),
            field: spec.field,
            target: spec.target,
        });
    }
    let (field, target) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not FIELD=MODEL (or MODEL.FIELD->TARGET)"))?;
    let (field, target) = (field.trim(), target.trim());
    if field.is_empty() {
        return Err(format!("{text:?}: the field is empty; expected FIELD=MODEL"));
    }
    let target =
        Model::new(target).map_err(|_| format!("{text:?}: the model is empty; expected FIELD=MODEL"))?;
    Ok(RefArg {
        model: None,
        field: field.to_owned(),
        target,
    })
}

/// The largest integer `--at` taken as Unix seconds: 9999-12-31T23:59:59Z,
/// the last second RFC 3339 can write. A larger integer is most likely epoch
/// milliseconds (what `ingest --time-field` also accepts), which read as
/// seconds would be a time tens of thousands of years ahead: the latest
/// state, shown as if it were the state at the time meant.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

fn parse_time(text: &str) -> Result<Timestamp, String> {
    let time = Timestamp::parse(text).map_err(|e| e.to_string())?;
    let text = text.trim();
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    if integer && time.as_micros().unsigned_abs() > MAX_UNIX_SECONDS.unsigned_abs() * 1_000_000 {
        let secs = time.as_micros() / 1_000_000;
        return Err(format!(
            "{text:?} is beyond year 9999 as Unix seconds: give seconds, not milliseconds \
             ({} if it is milliseconds) or RFC 3339",
            secs / 1_000
        ));
    }
    Ok(time)
}

fn parse_model(text: &str) -> Result<Model, String> {
    Model::new(text).map_err(|e| e.to_string())
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("it is empty".into())
    } else {
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    /// An empty `--check` is refused, not read as "every check".
    #[test]
    fn an_empty_check_name_is_refused() {
        let error = Cli::try_parse_from(["overseer", "audit", "--store", "/tmp/x", "--check", ""])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--check") && error.contains("it is empty"),
            "{error}"
        );
        assert!(Cli::try_parse_from(["overseer", "audit", "--store", "/tmp/x", "--check", "c"]).is_ok());
    }

    /// `--outcome` filters executions only: with `--incidents` it would be
    /// ignored, listing every incident as if it matched.
    #[test]
    fn outcome_with_incidents_is_refused() {
        let error = Cli::try_parse_from([
            "overseer",
            "audit",
            "--store",
            "/tmp/x",
            "--incidents",
            "--outcome",
            "pass",
        ])
        .map(|_| ())
        .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        let text = error.to_string();
        assert!(
            text.contains("--outcome") && text.contains("--incidents"),
            "{text}"
        );
        assert!(Cli::try_parse_from(["overseer", "audit", "--store", "/tmp/x", "--outcome", "pass"]).is_ok());
    }

    /// Integer `--at` values are Unix seconds; epoch milliseconds (an
    /// easy mistake) are refused instead of read as a far-future time.
    #[test]
    fn at_takes_seconds_and_refuses_milliseconds() {
        let at = |value: &str| {
            Cli::try_parse_from(["overseer", "view", "--store", "/tmp/x", "m", "i", "--at", value]).map(
                |cli| match cli.command {
                    Command::View(args) => args.at,
                    _ => None,
                },
            )
        };
        assert_eq!(
            at("1709294520").unwrap(),
            Some(Timestamp::from_secs(1_709_294_520))
        );
        assert_eq!(
            at("253402300799").unwrap(),
            Some(Timestamp::from_secs(253_402_300_799))
        );
        assert_eq!(at("-5").unwrap(), Some(Timestamp::from_secs(-5)));
        assert_eq!(
            at("2024-03-01T12:02:00Z").unwrap(),
            Some(Timestamp::from_secs(1_709_294_520))
        );
        let error = at("1709294520000").unwrap_err().to_string();
        assert!(
            error.contains("beyond year 9999 as Unix seconds")
                && error.contains("not milliseconds (1709294520 if it is milliseconds)"),
            "{error}"
        );
        assert!(at("-1709294520000").is_err());
    }

    #[test]
    fn refs_parse() {
        let r = parse_ref("owner_id=users").unwrap();
        assert_eq!(
            (r.model, r.field.as_str(), r.target.as_str()),
            (None, "owner_id", "users")
        );
        let r = parse_ref("toys.meta.owner -> users").unwrap();
        assert_eq!(r.model.unwrap().as_str(), "toys");
        assert_eq!(r.field, "meta.owner");
        assert!(parse_ref("owner_id").is_err());
        assert!(parse_ref("=users").is_err());
        assert!(parse_ref("owner_id=").is_err());
        assert!(parse_ref("toys -> users").is_err());
    }

    #[test]
    fn formats_are_every_builder_format() {
        let names: Vec<String> = FormatArg::value_variants()
            .iter()
            .filter_map(|f| f.to_possible_value())
            .map(|v| v.get_name().to_owned())
            .collect();
        assert_eq!(names, ["mongo", "wal2json", "pgoutput", "debezium", "json"]);
    }
}
