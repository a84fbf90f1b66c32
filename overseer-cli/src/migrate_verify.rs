//! `overseer migrate repair` and `overseer migrate verify`: the repair and
//! verification steps of a ledger migration
//! (`overseer_builders::migrate`), configured by one JSON file (see
//! `overseer_builders::migrate::ledger::LedgerMigrationConfig` and
//! `docs/migrations-verify.md`).
//!
//! Output on stdout: the report, human-readable, or one JSON object with
//! `--json`. `verify` exits with [`crate::EXIT_DISCREPANCIES`] when it found
//! anything, after printing the report.

use std::io::Write;
use std::path::PathBuf;

use overseer_builders::migrate::ledger::{LedgerMigrationConfig, read_config};
use overseer_builders::migrate::{repair, verify};

use crate::{Error, output};

/// Arguments of `overseer migrate repair`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateRepairArgs {
    /// The ledger migration's configuration file (JSON, see docs/migrations-verify.md).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `overseer migrate verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateVerifyArgs {
    /// The ledger migration's configuration file (JSON, see docs/migrations-verify.md).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Only check integrity inside the new store, even if a legacy store is
    /// configured.
    #[arg(long)]
    pub integrity_only: bool,
}

fn load(path: &std::path::Path) -> Result<LedgerMigrationConfig, Error> {
    read_config(path).map_err(Error::from)
}

fn print<T: serde::Serialize + std::fmt::Display>(
    value: &T,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    if json {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        output::json_line(out, &value)
    } else {
        write!(out, "{}", value.to_string().trim_end()).map_err(Error::Output)?;
        writeln!(out).map_err(Error::Output)
    }
}

/// Runs `overseer migrate repair`: recomputes cumulative balances and links,
/// printing how many rows changed.
pub async fn run_repair(args: &MigrateRepairArgs, out: &mut dyn Write) -> Result<(), Error> {
    let config = load(&args.config)?;
    let report = repair::repair(&config.new_url, &config.schema, &config.repair).await?;
    print(&report, args.json, out)
}

/// Runs `overseer migrate verify`: integrity and (with a legacy store
/// configured) the comparison; prints the report and fails with
/// [`Error::Discrepancies`] when it found anything.
pub async fn run_verify(args: &MigrateVerifyArgs, out: &mut dyn Write) -> Result<(), Error> {
    let config = load(&args.config)?;
    let legacy = if args.integrity_only {
        None
    } else {
        config.legacy.as_ref()
    };
    let report = verify::verify(&config.new_url, &config.schema, legacy, &config.verify).await?;
    print(&report, args.json, out)?;
    if report.is_clean() {
        Ok(())
    } else {
        Err(Error::Discrepancies(format!(
            "verification of {} found problems (see the report on stdout)",
            report.table
        )))
    }
}
