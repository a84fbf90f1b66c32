//! The driver: feeds the three sources to the embedded pipeline in delivery
//! order on simulated time, and collects what the checks escalate.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use overseer_core::clock::ManualClock;
use overseer_core::escalation::{FnEscalation, Incident, IncidentChange};
use overseer_core::pipeline::{Intake, Overseer, SourceConfig};
use overseer_core::runner::{RunnerConfig, RunnerStats};
use overseer_core::strategy::{FixedDelay, Immediate};
use overseer_core::{BoxError, Compression, ReferenceSpec, Registry, Store, Timestamp};

use crate::payments::checks::{self, ESCALATION};
use crate::payments::delivery::{self, Delivery, Lag, LagCurve, MAX_LAG, SOURCES, Stall};
use crate::payments::files::{self, FORMATS, Input, LineReader};
use crate::payments::metrics::{self, IncidentRecord, Score, Summary};
use crate::payments::sim::{Expected, Micros, Rng, SimConfig};

/// When checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrategyMode {
    /// Each check's own strategy: a grace period or SLA on source time, then
    /// waiting for every source its view reads (the default).
    Freshness,
    /// Every check runs as soon as it is triggered, on the latest data.
    Immediate,
    /// Every check runs its grace period or SLA after the trigger's commit
    /// time, without waiting for lagging sources (a stalled source raises
    /// false alarms).
    FixedDelay,
}

/// Where updates are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// In memory.
    Memory,
    /// In a local directory.
    Dir(PathBuf),
}

/// Which source stalls, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallSpec {
    /// No stall.
    None,
    /// A source chosen by the seed, for 4 minutes.
    Default,
    /// This source (index into [`SOURCES`]) for this long.
    Source(usize, Duration),
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Transfers to simulate.
    pub transfers: usize,
    /// PRNG seed (stories and delivery lags).
    pub seed: u64,
    /// When checks run.
    pub strategy: StrategyMode,
    /// Where updates are stored.
    pub store: StoreKind,
    /// Read the sources from this directory instead of generating them.
    pub input: Option<PathBuf>,
    /// Write the generated (or read) sources to this directory.
    pub write_input: Option<PathBuf>,
    /// Delivery lag of each source.
    pub lags: [Lag; 3],
    /// The stall.
    pub stall: StallSpec,
    /// Feed at most this many events per second of wall time.
    pub max_rate: Option<f64>,
    /// Write every incident opened to this file, one JSON object per line.
    pub report: Option<PathBuf>,
    /// Show progress and detections (on stderr).
    pub progress: bool,
    /// Deliveries are grouped into batches per source over this much
    /// simulated time; the runner's clock moves in these steps.
    pub window: Duration,
    /// An idle source sends a heartbeat after this much simulated time.
    pub heartbeat: Duration,
    /// Write an audit record for every execution (the runner's default).
    pub audit: bool,
    /// Memory budget of each of the DAL's caches.
    pub cache_bytes: u64,
    /// How the store keeps raw events (the store's default: zstd).
    pub compression: Compression,
}

/// The slowest [`Config::max_rate`] accepted, in events per second.
pub const MIN_RATE: f64 = 0.001;

impl Config {
    /// Checks the settings a run steps through or sleeps on: the window
    /// (1 ms to 1 h), the heartbeat, each lag and the stall (at most
    /// [`MAX_LAG`]), the rate (at least [`MIN_RATE`]). The simulation moves
    /// window by window to a horizon past the longest lag, so a lag of
    /// years or a window of a microsecond would run for hours.
    pub fn validate(&self) -> Result<(), String> {
        let span = |d: Duration| humantime::format_duration(d).to_string();
        if self.window < Duration::from_millis(1) || self.window > Duration::from_secs(3600) {
            return Err(format!(
                "the window {} must be between 1ms and 1h",
                span(self.window)
            ));
        }
        if self.heartbeat > MAX_LAG {
            return Err(format!(
                "the heartbeat {} must be at most {}",
                span(self.heartbeat),
                span(MAX_LAG)
            ));
        }
        for (source, lag) in SOURCES.iter().zip(&self.lags) {
            if lag.min > lag.max || lag.max > MAX_LAG {
                return Err(format!(
                    "the lag of {source} ({lag}) must be a range of at most {}",
                    span(MAX_LAG)
                ));
            }
        }
        if let StallSpec::Source(source, d) = self.stall {
            if source >= SOURCES.len() {
                return Err(format!(
                    "the stalled source {source} is not one of {}",
                    SOURCES.join(", ")
                ));
            }
            if d > MAX_LAG {
                return Err(format!("the stall {} must be at most {}", span(d), span(MAX_LAG)));
            }
        }
        if let Some(rate) = self.max_rate
            && !(rate.is_finite() && rate >= MIN_RATE)
        {
            return Err(format!(
                "the rate {rate:?} must be a number of events per second of at least {MIN_RATE}"
            ));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            transfers: 2000,
            seed: 1,
            strategy: StrategyMode::Freshness,
            store: StoreKind::Memory,
            input: None,
            write_input: None,
            lags: [Lag::default_for(0), Lag::default_for(1), Lag::default_for(2)],
            stall: StallSpec::Default,
            max_rate: None,
            report: None,
            progress: false,
            window: Duration::from_secs(1),
            heartbeat: Duration::from_secs(2),
            audit: true,
            cache_bytes: overseer_core::dal::DEFAULT_CACHE_BYTES,
            compression: Compression::default(),
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct RunReport {
    /// The summary line.
    pub summary: Summary,
    /// The scoring.
    pub score: Score,
    /// Every incident opened.
    pub incidents: Vec<IncidentRecord>,
    /// The runner's counters.
    pub stats: RunnerStats,
    /// The stall applied, if any.
    pub stall: Option<Stall>,
    /// Wall time spent generating or reading the input.
    pub prepare: Duration,
    /// Wall time of the pipeline (ingest to the end of the drain).
    pub pipeline: Duration,
    /// Wall time the driver waited for a window's batches to be stored
    /// (ingestion runs alongside the checks; this is what it did not hide),
    /// taking into the runner what the sources done meanwhile stored.
    pub ingest_wait: Duration,
    /// Wall time spent inside `Overseer::tick` and the drain.
    pub checks: Duration,
    /// Simulated time covered (first to last delivery, plus the tail).
    pub simulated: Duration,
    /// Events per source.
    pub per_source: [usize; 3],
    /// Peak RSS (MiB) once the input was generated or read, before the
    /// pipeline started.
    pub rss_after_input: Option<f64>,
}

const SECOND: Micros = 1_000_000;

/// How long the sources stay up (idle, heartbeating) after the last event:
/// past the SLA, the grace period and the slowest lag, so that every check
/// runs fresh before the final drain.
fn tail(lags: &[Lag; 3]) -> Micros {
    let slowest = lags
        .iter()
        .map(|l| l.max.as_micros() as Micros)
        .max()
        .unwrap_or(0);
    (checks::SLA_SECS.max(checks::GRACE_SECS) as Micros + 120) * SECOND + slowest
}

/// Shared state of the run's escalation.
#[derive(Default)]
struct Desk {
    incidents: Vec<IncidentRecord>,
    open: HashMap<String, usize>,
    detections: usize,
    false_alarms: usize,
}

fn incident_record(i: &Incident) -> IncidentRecord {
    let transfer_id = match i.root.model.as_str() {
        "transfers" => i.root.id.as_str().to_owned(),
        _ => i
            .details
            .get("transfer_id")
            .and_then(|v| v.as_str())
            .unwrap_or(i.root.id.as_str())
            .to_owned(),
    };
    IncidentRecord {
        check: i.check.clone(),
        root_model: i.root.model.as_str().to_owned(),
        root_id: i.root.id.as_str().to_owned(),
        transfer_id,
        message: i.message.clone(),
        opened_at: i.opened_at.as_micros(),
        resolved_at: None,
        trigger_commit: i.trigger_commit_time.as_micros(),
        dedup_key: i.dedup_key.clone(),
    }
}

/// Builds the registry of the five checks: with their own strategies, all
/// [`Immediate`], or all a [`FixedDelay`] of their grace period or SLA.
pub fn registry(mode: StrategyMode) -> Result<Registry, BoxError> {
    let base = checks::registry()?;
    Ok(match mode {
        StrategyMode::Freshness => base,
        StrategyMode::Immediate => base
            .checks()
            .iter()
            .fold(Registry::new(), |r, c| r.add(c.clone().with_strategy(Immediate))),
        StrategyMode::FixedDelay => base.checks().iter().fold(Registry::new(), |r, c| {
            let secs = if c.name() == "completed_transfer_is_paid" {
                checks::SLA_SECS
            } else {
                checks::GRACE_SECS
            };
            r.add(c.clone().with_strategy(FixedDelay(Duration::from_secs(secs))))
        }),
    })
}

fn prepare(cfg: &Config) -> Result<Input, BoxError> {
    match (&cfg.input, &cfg.write_input) {
        (Some(dir), write) => {
            let input = files::read(dir)?;
            if let Some(to) = write.as_deref().filter(|to| *to != dir.as_path()) {
                files::copy(dir, to)?;
            }
            Ok(input)
        }
        (None, write) => {
            let sim = SimConfig {
                transfers: cfg.transfers,
                seed: cfg.seed,
                ..SimConfig::default()
            };
            files::generate(&sim, write.as_deref())
        }
    }
}

/// Runs the simulation end to end and scores it.
pub async fn run(cfg: &Config) -> Result<RunReport, BoxError> {
    cfg.validate()?;
    // Created first, so that a path that cannot be written fails the run
    // before it starts, not after.
    let report = match &cfg.report {
        Some(path) => Some(
            std::fs::File::create(path)
                .map_err(|e| format!("cannot create the report {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let started = Instant::now();
    let input = prepare(cfg)?;
    let prepare_time = started.elapsed();
    let rss_after_input = metrics::peak_rss_mb();
    let readers = input.readers()?;
    let commits = &input.commits;
    let expected = input.expected.clone();
    let per_source = [commits[0].len(), commits[1].len(), commits[2].len()];
    let total: usize = per_source.iter().sum();

    // Delivery plans.
    let first_commit = commits
        .iter()
        .filter_map(|c| c.first())
        .copied()
        .min()
        .unwrap_or(0);
    let last_commit = commits
        .iter()
        .filter_map(|c| c.last())
        .copied()
        .max()
        .unwrap_or(0);
    let stall = match cfg.stall {
        StallSpec::None => None,
        StallSpec::Default => Some((cfg.seed % 3) as usize).map(|s| (s, 4 * 60 * SECOND)),
        StallSpec::Source(s, d) => Some((s, d.as_micros() as Micros)),
    }
    .map(|(source, length)| {
        let from = first_commit + (last_commit - first_commit) * 2 / 5;
        Stall {
            source,
            from,
            until: from + length,
        }
    });
    let mut rng = Rng::new(cfg.seed ^ 0x5eed_1a95);
    let plans: Vec<Delivery> = (0..3)
        .map(|s| {
            let curve = LagCurve::new(cfg.lags[s], first_commit, last_commit + tail(&cfg.lags), &mut rng);
            delivery::plan(s, &commits[s], curve, stall)
        })
        .collect();

    // The pipeline.
    let start = plans
        .iter()
        .filter_map(|p| p.at.first())
        .copied()
        .min()
        .unwrap_or(first_commit);
    let clock = Arc::new(ManualClock::new(Timestamp::from_micros(start)));
    let store = match &cfg.store {
        StoreKind::Memory => Store::in_memory(),
        StoreKind::Dir(dir) => Store::local(dir)?,
    }
    .with_compression(cfg.compression);
    let pb = if cfg.progress {
        let pb = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} events {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let desk = Arc::new(Mutex::new(Desk::default()));
    let expected_kinds: Arc<HashMap<String, Expected>> = Arc::new(
        expected
            .iter()
            .flatten()
            .map(|e| (e.transfer_id.clone(), e.clone()))
            .collect(),
    );
    let escalation = {
        let desk = desk.clone();
        let pb = pb.clone();
        let known = expected_kinds.clone();
        let live = cfg.progress;
        let scored = expected.is_some();
        FnEscalation::new(move |change: IncidentChange, incident: &Incident| {
            let Ok(mut desk) = desk.lock() else { return };
            match change {
                IncidentChange::Opened => {
                    let record = incident_record(incident);
                    let line = match known.get(&record.transfer_id) {
                        Some(e) if metrics::check_for(e.kind) == record.check => {
                            desk.detections += 1;
                            let ttd = e.observable_at.map_or(String::new(), |t| {
                                format!(" after {:.1} s", (record.opened_at - t) as f64 / 1e6)
                            });
                            Some(format!(
                                "detected  {} {}{ttd}: {}",
                                record.check, record.transfer_id, record.message
                            ))
                        }
                        Some(_) => Some(format!(
                            "other     {} {}: {}",
                            record.check, record.transfer_id, record.message
                        )),
                        None if scored => {
                            desk.false_alarms += 1;
                            (desk.false_alarms <= 10).then(|| {
                                format!(
                                    "FALSE ALARM {} {}: {}{}",
                                    record.check,
                                    record.transfer_id,
                                    record.message,
                                    if desk.false_alarms == 10 {
                                        " (further false alarms not shown)"
                                    } else {
                                        ""
                                    }
                                )
                            })
                        }
                        None => Some(format!(
                            "incident  {} {}: {}",
                            record.check, record.transfer_id, record.message
                        )),
                    };
                    if live && let Some(line) = line {
                        pb.println(line);
                    }
                    let n = desk.incidents.len();
                    desk.open.insert(record.dedup_key.clone(), n);
                    desk.incidents.push(record);
                }
                IncidentChange::Resolved => {
                    if let Some(i) = desk.open.remove(&incident.dedup_key)
                        && let Some(r) = desk.incidents.get_mut(i)
                    {
                        r.resolved_at = incident.resolved_at.map(Timestamp::as_micros);
                    }
                }
                IncidentChange::Updated => {}
            }
        })
    };
    let mut builder = Overseer::builder()
        .store(store)
        .state_builders(overseer_builders::builders())
        .manual_clock(clock.clone())
        .checks(registry(cfg.strategy)?)
        .escalation(ESCALATION, escalation)
        .cache_bytes(cfg.cache_bytes)
        .runner_config(RunnerConfig {
            audit: cfg.audit,
            ..RunnerConfig::default()
        });
    let models = ["transfers", "ledger_entries", "bank_payments"];
    for ((name, format), model) in SOURCES.iter().zip(FORMATS).zip(models) {
        let consumer = overseer_builders::consumer(format, overseer_builders::FormatOptions::default())?;
        builder = builder.source(SourceConfig::with_shared(name, consumer)?.models([model])?);
    }
    for r in [
        "ledger_entries.transfer_id -> transfers",
        "bank_payments.transfer_id -> transfers",
        "ledger_entries.account -> accounts",
    ] {
        builder = builder.reference(ReferenceSpec::parse(r)?);
    }
    let mut overseer = builder.build()?;

    // Feed in delivery order, one batch per source per window.
    let window = (cfg.window.as_micros() as Micros).max(1);
    let heartbeat_every = cfg.heartbeat.as_micros() as Micros;
    let last_delivery = plans
        .iter()
        .filter_map(|p| p.at.last())
        .copied()
        .max()
        .unwrap_or(start);
    let horizon = last_delivery.max(last_commit + tail(&cfg.lags));
    // Input handed to ingestion (`read`) runs ahead of what the window being
    // checked has delivered (`delivered`, `last_seen`).
    let mut read = [0usize; 3];
    let mut delivered = [0usize; 3];
    let mut last_seen = [start; 3];
    let mut fed = 0usize;
    let mut ingest_wait = Duration::ZERO;
    let mut check_time = Duration::ZERO;
    let pipeline_start = Instant::now();
    let intake = overseer.intake();
    let all_read = |read: &[usize; 3]| read.iter().zip(&plans).all(|(c, p)| *c >= p.at.len());
    // One window's deliveries: how many events each source delivers in it,
    // and what each source delivered by the window's end.
    let next_window = |w: Micros, read: &mut [usize; 3], fed: &mut usize| {
        let end = w + window;
        let mut counts: Vec<(usize, usize)> = Vec::with_capacity(3);
        let mut window_delivered = [None; 3];
        for s in 0..3 {
            let from = read[s];
            let at = &plans[s].at;
            let to = from + at[from..].partition_point(|&t| t < end);
            if to > from {
                read[s] = to;
                window_delivered[s] = Some((to, at[to - 1]));
                *fed += to - from;
                counts.push((s, to - from));
            }
        }
        (counts, window_delivered)
    };
    // Each source's batches are ingested on its own thread, in order, as
    // each source's consumer would be, while the runner checks: up to
    // `WINDOWS_AHEAD` windows past the one being checked.
    let mut ingesters = Ingesters::start(&intake, readers)?;
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(WINDOWS_AHEAD + 1);
    let mut w = start - start.rem_euclid(window);
    let mut next_start = w;
    loop {
        let end = w + window;
        while next_start < end + WINDOWS_AHEAD as Micros * window && !all_read(&read) {
            let (counts, window_delivered) = next_window(next_start, &mut read, &mut fed);
            in_flight.push_back(InFlight {
                delivered: window_delivered,
                stored: ingesters.submit(&intake, counts).await?,
            });
            next_start += window;
        }
        // This window's deliveries (windows are handed over in order, from
        // the first) are stored before the clock passes its end.
        if let Some(f) = in_flight.pop_front() {
            let t = Instant::now();
            Ingesters::wait(f.stored, &mut overseer).await?;
            ingest_wait += t.elapsed();
            for (s, d) in f.delivered.iter().enumerate() {
                if let Some((to, at)) = *d {
                    delivered[s] = to;
                    last_seen[s] = at;
                }
            }
        }
        clock.advance_to(Timestamp::from_micros(end));
        for s in 0..3 {
            if end - last_seen[s] >= heartbeat_every && !stall.is_some_and(|st| st.holds(s, end)) {
                let next = commits[s].get(delivered[s]).copied();
                let h = delivery::heartbeat(&plans[s].curve, end, next);
                overseer.heartbeat(SOURCES[s], Timestamp::from_micros(h)).await?;
                last_seen[s] = end;
            }
        }
        let t = Instant::now();
        overseer.tick().await?;
        check_time += t.elapsed();
        pb.set_position(fed as u64);
        if let Ok(d) = desk.lock() {
            pb.set_message(format!(
                "sim {} · detected {} · false alarms {}",
                metrics::rfc3339(end),
                d.detections,
                d.false_alarms
            ));
        }
        if let Some(rate) = cfg.max_rate {
            // Past what a Duration holds, the run waits as long as it can.
            let due = Duration::try_from_secs_f64(fed as f64 / rate).unwrap_or(Duration::MAX);
            let spent = pipeline_start.elapsed();
            if due > spent {
                tokio::time::sleep(due - spent).await;
            }
        }
        w = end;
        if in_flight.is_empty() && all_read(&read) && w >= horizon {
            break;
        }
    }
    let t = Instant::now();
    overseer.drain().await?;
    // Escalations run in the background: every incident is on the desk
    // before it is scored.
    if !overseer.flush_escalations().await {
        eprintln!(
            "payments: some escalations were still queued at the flush's deadline; the score may miss them"
        );
    }
    check_time += t.elapsed();
    let pipeline = pipeline_start.elapsed();
    pb.finish_and_clear();

    let stats = overseer.runner().stats().clone();
    let mut incidents = desk.lock().map(|d| d.incidents.clone()).unwrap_or_default();
    incidents.sort_by(|a, b| (a.opened_at, &a.check, &a.root_id).cmp(&(b.opened_at, &b.check, &b.root_id)));
    let score = metrics::score(expected.as_deref(), &incidents);
    let summary = Summary {
        events: fed,
        events_per_sec: fed as f64 / pipeline.as_secs_f64().max(1e-9),
        injected: score.injected,
        detected: score.detected,
        false_alarms: score.injected.map(|_| score.false_alarms),
        ttd_p50_ms: metrics::percentile(&score.ttd_ms, 50.0),
        ttd_p99_ms: metrics::percentile(&score.ttd_ms, 99.0),
        peak_rss_mb: metrics::peak_rss_mb(),
    };
    if let (Some(file), Some(path)) = (report, &cfg.report) {
        write_report(file, &incidents)
            .map_err(|e| format!("cannot write the report {}: {e}", path.display()))?;
    }
    Ok(RunReport {
        summary,
        score,
        incidents,
        stats,
        stall,
        prepare: prepare_time,
        pipeline,
        ingest_wait,
        checks: check_time,
        simulated: Duration::from_micros((w - start).max(0) as u64),
        per_source,
        rss_after_input,
    })
}

/// How many windows past the one being checked ingestion may take in hand.
/// With more than one, a source whose batch is stored goes on with its next
/// window while a slower source finishes its own, instead of leaving a core
/// idle at every window's end; deliveries still reach the store in order,
/// and each window's are stored before the clock passes its end. Four
/// rather than two since the driver takes in what is stored while it waits
/// ([`Ingesters::wait`]): more is stored by then (faster in 6 of 8
/// alternated pairs at 100,000 transfers; eight was no faster than four).
const WINDOWS_AHEAD: usize = 4;

/// Resolves when a window's batches handed to the ingestion threads are stored.
type Stored = Vec<tokio::sync::oneshot::Receiver<Result<(), BoxError>>>;

/// A window handed to ingestion.
struct InFlight {
    /// Per source that delivered in the window: its input cursor after the
    /// window, and its last delivery time.
    delivered: [Option<(usize, Micros)>; 3],
    /// The window's batches being stored.
    stored: Stored,
}

/// How many events a source's ingestion thread reads as its next batch, and
/// where to send the outcome.
type Job = (usize, tokio::sync::oneshot::Sender<Result<(), BoxError>>);

/// Reads the next `n` events of a source's input.
fn read_batch(reader: &mut LineReader, n: usize) -> Result<Vec<Bytes>, BoxError> {
    let mut batch = Vec::with_capacity(n);
    for _ in 0..n {
        batch.push(reader.next_line()?.ok_or("an input file ended early")?);
    }
    Ok(batch)
}

/// One ingestion thread per source for the whole run, as each source would
/// have its own consumer task: the sources' batches (reading the input,
/// parsing, store writes) run in parallel with each other and with the
/// checks; the driver only tells each thread how many events its next batch
/// holds.
///
/// The threads are the run's own. Starting three per window cost about 3 %
/// of the run's CPU; tokio's blocking pool spread the batches over the many
/// threads a directory store's file operations keep in that pool, each
/// keeping its own allocator cache, which raised peak RSS by about 40 %.
struct Ingesters {
    /// One sender per source, in the order of [`SOURCES`]; empty on a
    /// single-threaded runtime, where batches are ingested in turn. Dropping
    /// them ends the threads, each once the batches queued to it are done
    /// (not joined: joining on a runtime thread could wait on work that
    /// needs it).
    jobs: Vec<std::sync::mpsc::Sender<Job>>,
    /// The sources' inputs, on a single-threaded runtime (the threads own
    /// them otherwise).
    readers: Option<[LineReader; 3]>,
}

impl Ingesters {
    fn start(intake: &Intake, readers: [LineReader; 3]) -> Result<Self, BoxError> {
        let handle = tokio::runtime::Handle::current();
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Ok(Self {
                jobs: Vec::new(),
                readers: Some(readers),
            });
        }
        let mut jobs = Vec::with_capacity(SOURCES.len());
        for (source, mut reader) in SOURCES.into_iter().zip(readers) {
            let (sender, batches) = std::sync::mpsc::channel::<Job>();
            let (intake, handle) = (intake.clone(), handle.clone());
            std::thread::Builder::new()
                .name(format!("ingest-{source}"))
                .spawn(move || {
                    for (n, done) in batches {
                        let outcome = match read_batch(&mut reader, n) {
                            Ok(batch) => handle
                                .block_on(intake.ingest(source, &batch))
                                .map(drop)
                                .map_err(BoxError::from),
                            Err(e) => Err(e),
                        };
                        // The run stopped waiting (it failed): nothing to tell.
                        let _ = done.send(outcome);
                    }
                })?;
            jobs.push(sender);
        }
        Ok(Self { jobs, readers: None })
    }

    /// Hands one window's batches (per source, how many events it
    /// delivers) to their sources' threads; on a single-threaded runtime,
    /// reads and ingests them in turn.
    async fn submit(&mut self, intake: &Intake, counts: Vec<(usize, usize)>) -> Result<Stored, BoxError> {
        let mut stored = Vec::with_capacity(counts.len());
        for (s, n) in counts {
            if let Some(readers) = &mut self.readers {
                let reader = readers.get_mut(s).ok_or("no input for a source")?;
                let batch = read_batch(reader, n)?;
                intake.ingest(SOURCES[s], &batch).await?;
                continue;
            }
            let jobs = self.jobs.get(s).ok_or("no ingestion thread for a source")?;
            let (done, outcome) = tokio::sync::oneshot::channel();
            jobs.send((n, done)).map_err(|_| "an ingestion thread stopped")?;
            stored.push(outcome);
        }
        Ok(stored)
    }

    /// Waits until every batch of a window is stored. As each source's
    /// batch is, what the topic holds is taken into the runner
    /// ([`Overseer::absorb`]): the runner selects and schedules the checks
    /// of the sources done while the slower ones are still storing, instead
    /// of at the next tick with the cores otherwise idle.
    async fn wait(stored: Stored, overseer: &mut Overseer) -> Result<(), BoxError> {
        let mut stored: FuturesUnordered<_> = stored.into_iter().collect();
        while let Some(outcome) = stored.next().await {
            outcome.map_err(|_| "an ingestion thread stopped")??;
            overseer.absorb().await?;
        }
        Ok(())
    }
}

fn write_report(file: std::fs::File, incidents: &[IncidentRecord]) -> Result<(), BoxError> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(file);
    for i in incidents {
        serde_json::to_writer(&mut out, &i.report_line())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
