//! `ledger_migration`: a ledger moved from a legacy Postgres database to a
//! new double-entry ledger while a workload keeps writing, end to end:
//! shadow phase (dual writes and reads) → backfill (generate with the
//! versioned `transform.sql`, copy table, triggers, import, resolve,
//! concurrent indexes, flip) → repair → verify → prefer-new.
//!
//! Starts its own throwaway Postgres with `scripts/pg.sh` (stopped at the
//! end, also on errors and Ctrl-C), or uses `--database-url`. Progress on
//! stderr; one JSON line on stdout:
//!
//! ```text
//! {"legacy_rows":N,"new_rows":N,"live_writes_during":N,"lost_writes":N,"duplicate_rows":N,"repaired_rows":N,"verify_missing":N,"verify_mismatched":N,"shadow_mismatches":N,"backfill_rows_per_sec":F,"verify_rows_per_sec":F,"writer_p99_ms_baseline":F,"writer_p99_ms_during":F}
//! ```
//!
//! ```sh
//! cargo run --release --example ledger_migration
//! cargo run --release --example ledger_migration -- --inject-bugs
//! cargo run --release --example ledger_migration -- --rows 5000000
//! cargo run --release --example ledger_migration -- --database-url postgres://postgres@127.0.0.1:5432/postgres
//! ```
//!
//! Exit codes: 0 clean migration (or, with `--inject-bugs`, exactly the
//! injected faults found); 1 the run failed; 2 usage error (clap); 3 the
//! migration lost or duplicated writes, or verification did not name
//! exactly the injected faults.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use overseer_examples::ledger_migration::{Config, Report, ServerChoice, run, server};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Migrates a legacy ledger to a new double-entry ledger under live writes.
#[derive(Debug, Parser)]
#[command(name = "ledger_migration", version)]
struct Args {
    /// Legacy transactions to seed.
    #[arg(long, default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..=500_000_000))]
    rows: u64,
    /// Backfill with transform_buggy.sql: a rounding error, dropped rows and
    /// a wrong sign, which verification must name exactly.
    #[arg(long)]
    inject_bugs: bool,
    /// Use this server (its databases <prefix>legacy and <prefix>ledger are
    /// created) instead of starting one with scripts/pg.sh.
    #[arg(long, value_name = "URL", env = "LEDGER_MIGRATION_DATABASE_URL")]
    database_url: Option<String>,
    /// Prefix of the two databases' names.
    #[arg(long, default_value = "", value_name = "PREFIX")]
    db_prefix: String,
    /// Accounts the transactions move money between.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(2..=100_000_000))]
    accounts: u64,
    /// How long the writer writes the legacy store only, then dual-writes
    /// before the backfill (its latency baseline), then runs prefer-new.
    #[arg(long, value_name = "LEGACY,SHADOW,PREFER_NEW", default_value = "1s,5s,2s", value_parser = parse_windows)]
    windows: (Duration, Duration, Duration),
    /// Pause between two writes of the workload.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    write_interval: Duration,
    /// Rows per backfill chunk file.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    chunk_rows: u64,
    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The harness script that starts Postgres.
    #[arg(long, value_name = "FILE", default_value_os_t = server::default_script())]
    pg_script: PathBuf,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_windows(s: &str) -> Result<(Duration, Duration, Duration), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [a, b, c] = parts.as_slice() else {
        return Err(format!("expected three durations like 1s,5s,2s, got {s:?}"));
    };
    let parse = |d: &str| humantime::parse_duration(d).map_err(|e| format!("{d:?}: {e}"));
    Ok((parse(a)?, parse(b)?, parse(c)?))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (legacy_only, baseline, prefer_new) = args.windows;
    let config = Config {
        server: match args.database_url {
            Some(url) => ServerChoice::Url(url),
            None => ServerChoice::Start {
                script: args.pg_script,
            },
        },
        db_prefix: args.db_prefix,
        rows: args.rows,
        accounts: args.accounts,
        inject_bugs: args.inject_bugs,
        legacy_only,
        baseline,
        prefer_new,
        write_interval: args.write_interval,
        chunk_rows: args.chunk_rows,
        seed: args.seed,
        progress: !args.quiet,
    };
    // Ctrl-C drops the run, and with it the server's guard (which stops it).
    let outcome = tokio::select! {
        r = run(&config) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("ledger_migration: interrupted");
            return ExitCode::from(130);
        }
    };
    match outcome {
        Ok(report) => {
            match serde_json::to_string(&report.summary) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("ledger_migration: cannot print the summary: {e}");
                    return ExitCode::FAILURE;
                }
            }
            if succeeded(&report, config.inject_bugs) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("ledger_migration: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// No write lost or duplicated, and verification found exactly what was
/// injected (nothing on a clean run).
fn succeeded(report: &Report, inject_bugs: bool) -> bool {
    let s = &report.summary;
    let faults_ok = report.missed.is_empty() && report.unexpected.is_empty() && report.found.other.is_empty();
    let clean_ok = inject_bugs || (s.verify_missing == 0 && s.verify_mismatched == 0);
    s.lost_writes == 0 && s.duplicate_rows == 0 && faults_ok && clean_ok
}
