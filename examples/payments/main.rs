//! `payments`: Overseer's main job, as a runnable example.
//!
//! Simulates three systems of a payments platform (transfers in MongoDB, a
//! double-entry ledger in Postgres via wal2json, a bank gateway via
//! Debezium), each with its own delivery lag and one stalled source, injects
//! discrepancies, and reconciles them with five checks through the embedded
//! pipeline on simulated time. Progress and detections go to stderr when it
//! is a terminal; one JSON line goes to stdout at the end:
//!
//! ```text
//! {"events":N,"events_per_sec":F,"injected":N,"detected":N,"false_alarms":N,"ttd_p50_ms":F,"ttd_p99_ms":F,"peak_rss_mb":F}
//! ```
//!
//! ```sh
//! cargo run --release --example payments                                  # 2,000 transfers
//! cargo run --release --example payments -- --transfers 100000 --seed 7
//! cargo run --release --example payments -- --strategy immediate          # false alarms: data in flight
//! cargo run --release --example payments -- --strategy delay --stall bank=4m  # false alarms: the stall
//! cargo run --release --example payments -- --lag bank=10s..60s --stall ledger=5m
//! cargo run --release --example payments -- --write-input /tmp/pay        # keep the input files
//! cargo run --release --example payments -- --input /tmp/pay --report incidents.jsonl
//! ```
#![allow(clippy::print_stdout)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use overseer_core::{Compression, ZstdOptions};
use overseer_examples::payments::delivery::{Lag, SOURCES, source_index};
use overseer_examples::payments::{Config, RunReport, StallSpec, StoreKind, StrategyMode, metrics, run};

/// The example is an application: it picks its allocator (glibc's malloc
/// fragments under this allocation pattern; mimalloc is what the benches use).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Strategy {
    /// Each check's grace period or SLA on source time, then waiting for
    /// every source its view reads to catch up (the default).
    Freshness,
    /// Every check runs as soon as it is triggered (raises false alarms on
    /// data still in flight).
    Immediate,
    /// Every check runs its grace period or SLA after the trigger's commit
    /// time, without waiting for lagging sources (raises false alarms over a
    /// stalled source).
    Delay,
}

/// Simulates a payments platform and reconciles it with Overseer.
#[derive(Debug, Parser)]
#[command(name = "payments", version)]
struct Args {
    /// Transfers to simulate.
    #[arg(long, default_value_t = 2000)]
    transfers: usize,
    /// Seed of the simulation (stories, lags, which source stalls).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// When checks run.
    #[arg(long, value_enum, default_value_t = Strategy::Freshness)]
    strategy: Strategy,
    /// `memory`, or a directory for a local file-system store.
    #[arg(long, default_value = "memory")]
    store: String,
    /// Read transfers.mongo.jsonl, ledger.wal2json.jsonl, bank.debezium.jsonl
    /// (and expected.json, if present) from DIR instead of generating them.
    #[arg(long, value_name = "DIR")]
    input: Option<PathBuf>,
    /// Also write the input files (and expected.json) to DIR.
    #[arg(long, value_name = "DIR")]
    write_input: Option<PathBuf>,
    /// Delivery lag of a source: SOURCE=DURATION or SOURCE=MIN..MAX
    /// (sources: transfers, ledger, bank; e.g. bank=5s..30s). Repeatable.
    #[arg(long, value_name = "SOURCE=LAG")]
    lag: Vec<String>,
    /// The stalled source: SOURCE=DURATION (delivery stops that long at 40%
    /// of the run, then catches up), or `none`. Default: a source chosen by
    /// the seed, for 4 minutes.
    #[arg(long, value_name = "SOURCE=DURATION")]
    stall: Option<String>,
    /// Feed at most this many events per second of wall time.
    #[arg(long, value_name = "EVENTS_PER_SEC")]
    max_rate: Option<f64>,
    /// Write every incident opened to FILE, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Simulated time over which deliveries are batched per source.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Simulated idle time after which a live source sends a heartbeat.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Do not write an audit record per execution (to measure their cost).
    #[arg(long)]
    no_audit: bool,
    /// Memory budget of each of the DAL's two caches (decoded updates,
    /// records' latest states), in MiB.
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,
    /// Store raw events as received instead of compressing them (to
    /// measure what compression saves and costs).
    #[arg(long)]
    no_compression: bool,
    /// The zstd level raw events are compressed at (the store's default
    /// is 1; negative levels are faster and compress less).
    #[arg(long, default_value_t = ZstdOptions::default().level, allow_negative_numbers = true,
          conflicts_with = "no_compression")]
    zstd_level: i32,
    /// No progress or detections on stderr, even on a terminal.
    #[arg(long)]
    quiet: bool,
    /// Let the kernel back the heap with transparent huge pages, as the
    /// system allows (by default they are off for this process: the same
    /// speed for less memory).
    #[arg(long)]
    huge_pages: bool,
}

fn source_arg(text: &str, what: &str) -> Result<(usize, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{what} {text:?}: expected SOURCE=VALUE"))?;
    let source = source_index(name.trim()).ok_or_else(|| {
        format!(
            "{what} {text:?}: unknown source {name:?} (sources: {})",
            SOURCES.join(", ")
        )
    })?;
    Ok((source, value.trim().to_owned()))
}

fn config(args: Args) -> Result<Config, String> {
    let mut cfg = Config {
        transfers: args.transfers,
        seed: args.seed,
        strategy: match args.strategy {
            Strategy::Freshness => StrategyMode::Freshness,
            Strategy::Immediate => StrategyMode::Immediate,
            Strategy::Delay => StrategyMode::FixedDelay,
        },
        store: match args.store.as_str() {
            "memory" => StoreKind::Memory,
            dir => StoreKind::Dir(PathBuf::from(dir)),
        },
        input: args.input,
        write_input: args.write_input,
        max_rate: args.max_rate,
        report: args.report,
        progress: !args.quiet && std::io::stderr().is_terminal(),
        window: args.window,
        heartbeat: args.heartbeat,
        audit: !args.no_audit,
        cache_bytes: args
            .cache_mb
            .checked_mul(1024 * 1024)
            .ok_or_else(|| format!("--cache-mb {} is too large", args.cache_mb))?,
        compression: if args.no_compression {
            Compression::None
        } else {
            Compression::Zstd(ZstdOptions {
                level: args.zstd_level,
                ..ZstdOptions::default()
            })
        },
        ..Config::default()
    };
    for text in &args.lag {
        let (source, value) = source_arg(text, "--lag")?;
        cfg.lags[source] = value.parse::<Lag>().map_err(|e| format!("--lag {text:?}: {e}"))?;
    }
    cfg.stall = match args.stall.as_deref() {
        None => StallSpec::Default,
        Some("none") => StallSpec::None,
        Some(text) => {
            let (source, value) = source_arg(text, "--stall")?;
            let d = humantime::parse_duration(&value).map_err(|e| format!("--stall {text:?}: {e}"))?;
            StallSpec::Source(source, d)
        }
    };
    cfg.validate()?;
    Ok(cfg)
}

fn describe(cfg: &Config, r: &RunReport) {
    let s = &r.stats;
    let stall = r.stall.map_or("none".to_owned(), |st| {
        format!(
            "{} for {} s",
            SOURCES[st.source],
            (st.until - st.from) / 1_000_000
        )
    });
    let lags: Vec<String> = SOURCES
        .iter()
        .zip(&cfg.lags)
        .map(|(s, l)| format!("{s} {l}"))
        .collect();
    eprintln!(
        "payments: {} events (transfers {}, ledger {}, bank {}) over {:.0} min of simulated time; lags {}; stall {}",
        r.summary.events,
        r.per_source[0],
        r.per_source[1],
        r.per_source[2],
        r.simulated.as_secs_f64() / 60.0,
        lags.join(", "),
        stall
    );
    eprintln!(
        "payments: input {:.2} s (peak RSS {:.0} MiB), pipeline {:.2} s (waiting for ingestion, taking in what is stored, {:.2} s; checks {:.2} s); executions {} (pass {}, fail {}, n/a {}, indeterminate {}, errors {}, degraded {}); triggers {} coalesced {}",
        r.prepare.as_secs_f64(),
        r.rss_after_input.unwrap_or(0.0),
        r.pipeline.as_secs_f64(),
        r.ingest_wait.as_secs_f64(),
        r.checks.as_secs_f64(),
        s.executions,
        s.passes,
        s.failures,
        s.not_applicable,
        s.indeterminate,
        s.errors,
        s.degraded,
        s.triggers,
        s.coalesced
    );
    let mut by_check: Vec<_> = r.score.false_alarms_by_check.iter().collect();
    by_check.sort();
    eprintln!(
        "payments: incidents {} (resolved {}); false alarms by check {:?}; other-check incidents {}; missed {:?}",
        r.incidents.len(),
        r.incidents.iter().filter(|i| i.resolved_at.is_some()).count(),
        by_check,
        r.score.other_check,
        r.score
            .missed
            .iter()
            .map(|e| (e.kind.as_str(), e.transfer_id.as_str()))
            .collect::<Vec<_>>()
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    if !args.huge_pages
        && let Err(e) = metrics::disable_transparent_huge_pages()
    {
        eprintln!("payments: transparent huge pages stay as the system sets them: {e}");
    }
    let cfg = match config(args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("payments: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&cfg).await {
        Ok(report) => {
            describe(&cfg, &report);
            println!("{}", report.summary.json());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("payments: {e}");
            ExitCode::FAILURE
        }
    }
}
