//! The `overseer` operator command line, as a library.
//!
//! [`Cli`] is the clap definition of every command and flag; [`run`] runs a
//! parsed command line and returns a typed [`Error`], which maps to the
//! documented exit code with [`Error::exit_code`]. The `overseer` binary is
//! only:
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     let cli = overseer_cli::Cli::parse();
//!     overseer_cli::init_logging(cli.verbose);
//!     overseer_cli::report(overseer_cli::run(cli).await)
//! }
//! ```
//!
//! Commands:
//!
//! | command | what it does |
//! |---|---|
//! | `overseer ingest --store DIR --format F FILE...` | ingest change events, one per line, into a local store |
//! | `overseer view --store DIR MODEL ID [--at TIME]` | a record's state at a time, as JSON |
//! | `overseer history --store DIR MODEL ID` | every update of a record, with the fields it changed |
//! | `overseer dead-letters --store DIR` | the events that could not be ingested |
//! | `overseer audit --store DIR [--check NAME] [--model M --id ID] [--incidents]` | check executions and incidents |
//! | `overseer migrate plan --config FILE` | the SQL of every step of a live-table backfill |
//! | `overseer migrate run --config FILE [--until STEP]` | run (or resume) the backfill |
//! | `overseer migrate status --config FILE` | which step each table is in |
//! | `overseer migrate reset --config FILE` | forget the backfill's progress, drop what an unfinished run left |
//! | `overseer migrate repair --config FILE [--json]` | recompute a ledger's cumulative balances and entry links |
//! | `overseer migrate verify --config FILE [--json]` | verify a migrated ledger (integrity; completeness and correctness against legacy) |
//!
//! Data goes to stdout (machine-readable), messages and progress to stderr.
//!
//! Exit codes: [`EXIT_OK`] (0), [`EXIT_NOT_FOUND`] (1: the record does not
//! exist at the time asked, or has no updates; or the check named by
//! `overseer audit --check` has no executions or incidents), [`EXIT_ERROR`] (2: usage
//! error, unreadable input, store error; clap's own usage errors exit with 2
//! as well), [`EXIT_DISCREPANCIES`] (3: `overseer migrate verify` found
//! discrepancies; the report is printed first).

mod audit;
mod cli;
mod dead_letters;
mod ingest;
pub mod migrate;
pub mod migrate_verify;
mod output;
mod record;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use overseer_core::Store;

pub use cli::{
    AuditArgs, Cli, Command, DeadLettersArgs, FormatArg, HistoryArgs, IngestArgs, MigrateCommand, RefArg,
    StoreArgs, ViewArgs,
};

/// Exit code of success.
pub const EXIT_OK: u8 = 0;
/// Exit code of "not found": the record does not exist at the time asked, or
/// has no updates at all; or the check named by `overseer audit --check` has
/// no executions or incidents in the store.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code of usage errors, unreadable inputs and store errors.
pub const EXIT_ERROR: u8 = 2;
/// Exit code of `overseer migrate verify` when it found discrepancies (the
/// report is printed first).
pub const EXIT_DISCREPANCIES: u8 = 3;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The record asked for does not exist at the time asked, or has no
    /// updates at all; or the check asked for has no executions or
    /// incidents (exit code 1).
    #[error("{0}")]
    NotFound(String),
    /// An argument is not acceptable.
    #[error("{0}")]
    Usage(String),
    /// The store directory of a read command does not exist.
    #[error("store directory {} does not exist", .0.display())]
    MissingStore(PathBuf),
    /// The store path of a read command exists but is not a directory.
    #[error("store {} is not a directory: pass the directory of an Overseer store", .0.display())]
    StoreNotADirectory(PathBuf),
    /// The store directory of a read command holds files, but none of a
    /// store's areas (`updates`, `audit`, ...): a mistyped path would
    /// otherwise read as an empty store.
    #[error("{} is not an Overseer store: it holds none of {}{hint}", dir.display(), overseer_core::store::layout::AREAS.join(", "))]
    NotAStore {
        /// The directory given.
        dir: PathBuf,
        /// What to try instead (empty when there is nothing to suggest).
        hint: String,
    },
    /// An input could not be read.
    #[error("cannot read {input}: {source}")]
    Input {
        /// The input (a path, or `-` for stdin).
        input: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Ingesting an input failed; batches before the failing one are stored
    /// and acknowledged.
    #[error(
        "ingesting {input} failed at lines {first_line}-{last_line} ({stored} updates stored before): {source}"
    )]
    Ingest {
        /// The input (a path, or `-` for stdin).
        input: String,
        /// The first line of the failing batch (1-based).
        first_line: u64,
        /// The last line of the failing batch.
        last_line: u64,
        /// Updates this command stored from the input before the failure.
        stored: usize,
        /// The failure.
        #[source]
        source: Box<overseer_core::Error>,
    },
    /// The store or the data access layer failed.
    #[error(transparent)]
    Core(Box<overseer_core::Error>),
    /// A format cannot work with the options given.
    #[error(transparent)]
    Format(#[from] overseer_builders::Error),
    /// Writing to stdout failed.
    #[error("cannot write to stdout: {0}")]
    Output(#[source] io::Error),
    /// A backfill step failed, or its configuration is invalid (exit code 2).
    #[error(transparent)]
    Backfill(Box<overseer_builders::migrate::backfill::BackfillError>),
    /// A migration's repair or verification failed to run.
    #[error(transparent)]
    Migrate(Box<overseer_builders::migrate::ledger::LedgerError>),
    /// A migration's verification ran and found discrepancies (exit code 3).
    #[error("{0}")]
    Discrepancies(String),
}

impl From<overseer_builders::migrate::ledger::LedgerError> for Error {
    fn from(e: overseer_builders::migrate::ledger::LedgerError) -> Self {
        Error::Migrate(Box::new(e))
    }
}

impl From<overseer_core::Error> for Error {
    fn from(e: overseer_core::Error) -> Self {
        Error::Core(Box::new(e))
    }
}

impl Error {
    /// The process exit code of this error: [`EXIT_NOT_FOUND`] or
    /// [`EXIT_ERROR`].
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NotFound(_) => EXIT_NOT_FOUND,
            Error::Discrepancies(_) => EXIT_DISCREPANCIES,
            _ => EXIT_ERROR,
        }
    }
}

/// Runs a parsed command line, writing its data to stdout.
///
/// A closed stdout (`overseer history ... | head`) ends the command quietly
/// with success.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let mut out = io::BufWriter::new(io::stdout());
    let result = run_with_output(cli, &mut out).await;
    let result = result.and_then(|()| out.flush().map_err(Error::Output));
    match result {
        Err(Error::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Runs a parsed command line, writing its data (what [`run`] prints on
/// stdout) to `out`. Messages and progress still go to stderr.
pub async fn run_with_output(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    match cli.command {
        Command::Ingest(args) => {
            let store = Store::local(&args.store.store)?;
            ingest::run(store, &args, out).await
        }
        Command::View(args) => record::view(open_existing(&args.store.store)?, &args, out).await,
        Command::History(args) => record::history(open_existing(&args.store.store)?, &args, out).await,
        Command::DeadLetters(args) => dead_letters::run(open_existing(&args.store.store)?, &args, out).await,
        Command::Audit(args) => audit::run(open_existing(&args.store.store)?, &args, out).await,
        Command::Migrate(MigrateCommand::Plan(args)) => migrate::plan(&args, out).await,
        Command::Migrate(MigrateCommand::Run(args)) => migrate::run(&args, out).await,
        Command::Migrate(MigrateCommand::Status(args)) => migrate::status(&args, out).await,
        Command::Migrate(MigrateCommand::Reset(args)) => migrate::reset(&args, out).await,
        Command::Migrate(MigrateCommand::Repair(args)) => migrate_verify::run_repair(&args, out).await,
        Command::Migrate(MigrateCommand::Verify(args)) => migrate_verify::run_verify(&args, out).await,
    }
}

/// Opens the store of a read command, which must exist (a mistyped
/// directory is an error, not an empty store, and is not created).
///
/// A non-empty directory must hold at least one of the store's areas
/// (`updates`, `audit`, ...): pointing a read command at the wrong directory
/// (a store's `audit` area, the directory of the input files) is an error
/// rather than an empty answer. An empty directory is an empty store.
fn open_existing(dir: &Path) -> Result<Store, Error> {
    if !dir.exists() {
        return Err(Error::MissingStore(dir.to_owned()));
    }
    if !dir.is_dir() {
        return Err(Error::StoreNotADirectory(dir.to_owned()));
    }
    check_is_store(dir)?;
    Ok(Store::local(dir)?)
}

/// Fails with [`Error::NotAStore`] when `dir` holds entries but none of a
/// store's areas. Hidden entries and `lost+found` (a fresh file system's
/// root) do not count.
fn check_is_store(dir: &Path) -> Result<(), Error> {
    use overseer_core::store::layout::AREAS;

    let unreadable = |source| Error::Input {
        input: dir.display().to_string(),
        source,
    };
    let mut other = false;
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let name = entry.map_err(unreadable)?.file_name();
        let name = name.to_string_lossy();
        if AREAS.contains(&name.as_ref()) {
            return Ok(());
        }
        other |= !name.starts_with('.') && name != "lost+found";
    }
    if !other {
        return Ok(());
    }
    // A store's own area given instead of the store: name the store.
    let parent = dir
        .file_name()
        .and_then(|name| {
            AREAS
                .contains(&name.to_string_lossy().as_ref())
                .then(|| dir.parent())
        })
        .flatten();
    let hint = match parent {
        // A relative area (`--store audit`) is in the current directory.
        Some(parent) if parent.as_os_str().is_empty() => " (it is the area of a store: pass .)".to_owned(),
        Some(parent) => format!(" (it is the area of a store: pass {})", parent.display()),
        None => String::new(),
    };
    Err(Error::NotAStore {
        dir: dir.to_owned(),
        hint,
    })
}

/// Reports the outcome of [`run`]: an error is printed on stderr, and the
/// outcome is mapped to its exit code.
pub fn report(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            // One line whatever the error quotes (ids, paths, stored data):
            // control characters are escaped as in data lines, never sent
            // to the terminal.
            let _ = writeln!(io::stderr(), "overseer: {}", output::field(&e.to_string()));
            ExitCode::from(e.exit_code())
        }
    }
}

/// Installs the log subscriber (on stderr) for a `-v` count: nothing is
/// logged without `-v` unless `RUST_LOG` is set; `-v` logs warnings, `-vv`
/// info, `-vvv` debug, more trace. `RUST_LOG`, when set, chooses the levels.
/// Does nothing if a subscriber is already installed.
pub fn init_logging(verbose: u8) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;

    let from_env = std::env::var_os(EnvFilter::DEFAULT_ENV).is_some_and(|v| !v.is_empty());
    if verbose == 0 && !from_env {
        return;
    }
    let default = match verbose {
        0 | 1 => "warn",
        2 => "info",
        3 => "debug",
        _ => "trace",
    };
    let filter = if from_env {
        EnvFilter::builder()
            .with_default_directive(tracing::level_filters::LevelFilter::WARN.into())
            .from_env_lossy()
    } else {
        EnvFilter::new(default)
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .try_init();
}
