//! `overseer migrate plan|run|status|reset`: the zero-downtime backfill of
//! live Postgres tables (`overseer_builders::migrate::backfill`), configured
//! by one TOML (or `.json`) file; see `docs/migrations-backfill.md`.
//!
//! Data goes to stdout (the plan's SQL, the status, the run's summary; one
//! JSON document with `--json`); progress goes to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use overseer_builders::migrate::backfill::{Backfill, BackfillConfig, BackfillError, Step, TableReport};
use overseer_core::object_store::ObjectStore;
use overseer_core::object_store::local::LocalFileSystem;
use overseer_core::object_store::memory::InMemory;

use crate::{Error, output};

/// Where the backfill's configuration is.
#[derive(Debug, Clone, clap::Args)]
pub struct BackfillConfigArgs {
    /// The backfill configuration file: TOML, or JSON when it ends in
    /// `.json` (legacy_url, target_url, data_dir, `[[tables]]` name,
    /// transform, chunk_rows, throttle_ms).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Arguments of `overseer migrate plan`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigratePlanArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: BackfillConfigArgs,
    /// Print the plan as one JSON object (steps with their SQL statements).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `overseer migrate run`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateRunArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: BackfillConfigArgs,
    /// Stop after this step (generate, copy, triggers, import, resolve,
    /// index, flip; or 0-6) [default: flip, the last].
    #[arg(long, value_name = "STEP", value_parser = parse_step)]
    pub until: Option<Step>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `overseer migrate status`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateStatusArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: BackfillConfigArgs,
    /// Print one JSON object per table instead of tab-separated lines.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `overseer migrate reset`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateResetArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: BackfillConfigArgs,
}

fn parse_step(text: &str) -> Result<Step, String> {
    text.parse::<Step>().map_err(|e| match e {
        BackfillError::Config { problems } => problems.join("; "),
        other => other.to_string(),
    })
}

impl From<BackfillError> for Error {
    fn from(e: BackfillError) -> Self {
        Error::Backfill(Box::new(e))
    }
}

/// Whether opening a backfill may create its `data_dir`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// It writes state (`run`, `reset`, ...).
    Write,
    /// It only reads (`plan`, `status`): a `data_dir` that does not exist
    /// yet holds nothing, and is not created.
    Read,
}

fn open(path: &Path, progress: bool, access: Access) -> Result<Backfill, Error> {
    let config = BackfillConfig::load(path)?;
    let settings = config.settings()?;
    let store: Arc<dyn ObjectStore> = if access == Access::Read && !config.data_dir.exists() {
        Arc::new(InMemory::new())
    } else {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Usage(format!(
                "cannot create data_dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        Arc::new(
            LocalFileSystem::new_with_prefix(&config.data_dir)
                .map_err(|e| Error::Usage(format!("data_dir {}: {e}", config.data_dir.display())))?,
        )
    };
    let backfill = Backfill::new(settings, store)?;
    Ok(if progress {
        backfill.on_progress(|p| {
            let _ = writeln!(std::io::stderr(), "{} {}: {}", p.table, p.step, p.message);
        })
    } else {
        backfill
    })
}

fn json_value<T: serde::Serialize>(value: &T) -> serde_json::Value {
    // Our report types serialize to JSON without failure (plain data).
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// `overseer migrate plan`: every step's SQL, from the target's catalog.
pub(crate) async fn plan(args: &MigratePlanArgs, out: &mut dyn Write) -> Result<(), Error> {
    let plan = open(&args.config.config, false, Access::Read)?.plan().await?;
    if args.json {
        output::json_line(out, &json_value(&plan))
    } else {
        write!(out, "{plan}").map_err(Error::Output)
    }
}

/// `overseer migrate run`: every step not done yet (up to `--until`).
pub(crate) async fn run(args: &MigrateRunArgs, out: &mut dyn Write) -> Result<(), Error> {
    let backfill = open(&args.config.config, true, Access::Write)?;
    let report = backfill.run_until(args.until.unwrap_or(Step::Flip)).await?;
    if args.json {
        return output::json_line(out, &json_value(&report));
    }
    for t in &report.tables {
        output::line(out, &summary_line(t))?;
    }
    Ok(())
}

fn summary_line(t: &TableReport) -> String {
    let steps = if t.executed.is_empty() {
        "nothing to do".to_owned()
    } else {
        t.executed
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "{}\tsteps: {steps}\tgenerated: {}\timported: {} rows in {} chunks\treplaced: {}\tlive rows: {}",
        output::field(&t.table),
        t.generated_rows,
        t.imported_rows,
        t.imported_chunks,
        t.replaced_rows,
        t.live_rows
    )
}

/// `overseer migrate status`: one line per table and step.
pub(crate) async fn status(args: &MigrateStatusArgs, out: &mut dyn Write) -> Result<(), Error> {
    let status = open(&args.config.config, false, Access::Read)?.status().await?;
    for t in &status {
        if args.json {
            output::json_line(out, &json_value(t))?;
            continue;
        }
        for s in &t.steps {
            let current = if Some(s.step) == t.current { "*" } else { " " };
            output::line(
                out,
                &format!(
                    "{}\t{current}{}\t{}\t{}\t{}\t{}",
                    output::field(&t.table),
                    s.step.number(),
                    s.step,
                    s.status,
                    output::field_or_dash(&s.detail),
                    s.updated_at.as_deref().unwrap_or("-")
                ),
            )?;
        }
    }
    Ok(())
}

/// `overseer migrate reset`: forget the progress, drop what an unfinished
/// run left.
pub(crate) async fn reset(args: &MigrateResetArgs, out: &mut dyn Write) -> Result<(), Error> {
    let backfill = open(&args.config.config, false, Access::Write)?;
    backfill.reset().await?;
    for t in &backfill.settings().tables {
        output::line(out, &format!("{}\treset", output::field(&t.qualified())))?;
    }
    Ok(())
}
