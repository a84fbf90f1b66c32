//! The router: phase routing, fallbacks, off-path comparison and recording.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::compare::{Comparator, Compare};
use super::record::{Access, Discrepancy, DiscrepancyKind, DiscrepancyRecorder};
use super::{Counters, MigrationStats, Phase, PhaseSwitch};
use crate::error::{Error, Result};
use crate::time::Timestamp;

/// The default capacity of the comparison queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// The default capacity of the repair queue (failed new-side writes).
pub const DEFAULT_REPAIR_CAPACITY: usize = 16_384;

/// The default number of off-path reads in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// Comparisons taken from the queues at once.
const WORKER_BATCH: usize = 256;

/// How long the background task lets comparisons gather before taking them.
const WORKER_LINGER: Duration = Duration::from_millis(2);

/// Attempts to store one batch of records.
const RECORD_ATTEMPTS: u32 = 4;

/// Serializes one side's result, on the worker.
type Serializer = Box<dyn FnOnce() -> std::result::Result<Value, String> + Send>;

/// One side of a call, as the worker receives it.
enum Side {
    /// It succeeded; the result is serialized on the worker.
    Ok(Serializer),
    /// It failed: the error, panic or timeout, described.
    Failed(String),
}

impl Side {
    fn ok<T: Serialize + Send + 'static>(value: T) -> Self {
        Side::Ok(Box::new(move || {
            serde_json::to_value(&value).map_err(|e| format!("cannot serialize the result: {e}"))
        }))
    }

    fn of<T, E>(result: &std::result::Result<T, E>) -> Self
    where
        T: Serialize + Clone + Send + 'static,
        E: fmt::Display,
    {
        match result {
            Ok(value) => Side::ok(value.clone()),
            Err(e) => Side::Failed(e.to_string()),
        }
    }

    fn resolve(self) -> std::result::Result<Value, String> {
        match self {
            Side::Ok(serialize) => serialize(),
            Side::Failed(reason) => Err(reason),
        }
    }
}

/// A call whose two sides are to be compared (or a failed write to record).
struct CompareJob {
    operation: String,
    key: String,
    access: Access,
    phase: Phase,
    at: Timestamp,
    legacy: Side,
    new: Side,
}

enum Job {
    Compare(Box<CompareJob>),
    Flush(oneshot::Sender<()>),
}

/// What a contained call of the new side gave.
enum NewOutcome<T, E> {
    Ok(T),
    Err(E),
    Panicked(String),
    TimedOut(Duration),
}

impl<T, E: fmt::Display> NewOutcome<T, E> {
    /// The failure, described (`None` for success).
    fn failure(&self) -> Option<String> {
        match self {
            NewOutcome::Ok(_) => None,
            NewOutcome::Err(e) => Some(e.to_string()),
            NewOutcome::Panicked(message) => Some(format!("panicked: {message}")),
            NewOutcome::TimedOut(d) => Some(format!("timed out after {d:?}")),
        }
    }
}

/// What calls share: the phase, the queues, the counters.
struct Shared {
    phase: PhaseSwitch,
    counters: Arc<Counters>,
    compare_tx: mpsc::Sender<Job>,
    repair_tx: mpsc::Sender<Job>,
    in_flight: Arc<Semaphore>,
    max_in_flight: u32,
    new_timeout: Option<Duration>,
    handle: tokio::runtime::Handle,
    recorder: DiscrepancyRecorder,
}

/// Routes a service's store calls to its legacy and new stores by the
/// current [`Phase`], compares their results off the caller's path, and
/// records discrepancies into the Overseer store (see the
/// [module documentation](super)).
///
/// Each call names an *operation* (`get_balance`) and a *key* (`acct-1`),
/// and passes two closures that start the legacy and the new call. Both
/// return `Result<T, E>` with the same `T` and `E`; `T` is serialized with
/// serde for comparisons and records, `E`'s `Display` is recorded.
///
/// * The legacy side is the caller's production path: its errors and
///   panics reach the caller as they are, in every phase but
///   [`Phase::NewOnly`].
/// * In [`Phase::Shadow`] and [`Phase::PreferNew`] the new side is
///   *contained*: its errors, panics (caught with `catch_unwind`) and
///   timeouts ([`DualRouterBuilder::new_side_timeout`]) are counted and
///   recorded, never returned. In [`Phase::NewOnly`] it is the production
///   path and nothing is contained.
///
/// Clones share everything (phase, queues, counters). The router must be
/// built inside a Tokio runtime with time enabled (`#[tokio::main]`,
/// `Runtime::new`); its background task stops when the last clone is
/// dropped, after storing what is queued.
#[derive(Clone)]
pub struct DualRouter {
    shared: Arc<Shared>,
}

impl fmt::Debug for DualRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DualRouter")
            .field("phase", &self.shared.phase.get())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Configures a [`DualRouter`]; see [`DualRouter::builder`].
pub struct DualRouterBuilder {
    recorder: DiscrepancyRecorder,
    phase: PhaseSwitch,
    comparator: Arc<dyn Compare>,
    queue_capacity: usize,
    repair_capacity: usize,
    max_in_flight: usize,
    new_timeout: Option<Duration>,
}

impl fmt::Debug for DualRouterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DualRouterBuilder")
            .field("phase", &self.phase.get())
            .field("queue_capacity", &self.queue_capacity)
            .field("repair_capacity", &self.repair_capacity)
            .field("max_in_flight", &self.max_in_flight)
            .field("new_timeout", &self.new_timeout)
            .finish_non_exhaustive()
    }
}

impl DualRouterBuilder {
    /// The phase switch (default: a new one at [`Phase::LegacyOnly`]). Keep
    /// a clone to switch phases at run time.
    pub fn phase(mut self, phase: PhaseSwitch) -> Self {
        self.phase = phase;
        self
    }

    /// The comparison (default: an exact [`Comparator`]).
    pub fn comparator(mut self, comparator: impl Compare) -> Self {
        self.comparator = Arc::new(comparator);
        self
    }

    /// How many comparisons may wait (default [`DEFAULT_QUEUE_CAPACITY`],
    /// at least 1). When the queue is full, further comparisons are sampled
    /// away.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// How many failed new-side writes may wait to be recorded (default
    /// [`DEFAULT_REPAIR_CAPACITY`], at least 1). They are recorded before
    /// any comparison; beyond this, they are logged at error level and
    /// counted in [`MigrationStats::record_failures`].
    pub fn repair_capacity(mut self, capacity: usize) -> Self {
        self.repair_capacity = capacity.max(1);
        self
    }

    /// How many off-path reads (the new side in the shadow phase, the
    /// legacy side in the prefer-new phase) may run at once (default
    /// [`DEFAULT_MAX_IN_FLIGHT`], at least 1). Beyond this, the off-path read
    /// is skipped and counted as sampled away, so a slow store never piles
    /// up work.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.clamp(1, u32::MAX as usize);
        self
    }

    /// Gives up on a new-side call after `timeout` in the shadow and
    /// prefer-new phases (default: no limit). A timeout counts as a
    /// new-side error: a read falls back, a write is recorded for repair.
    pub fn new_side_timeout(mut self, timeout: Duration) -> Self {
        self.new_timeout = Some(timeout);
        self
    }

    /// Builds the router and starts its background task on the current
    /// Tokio runtime.
    ///
    /// Fails with [`Error::NoRuntime`] outside a runtime, or in one whose
    /// time driver is disabled.
    pub fn build(self) -> Result<DualRouter> {
        let no_runtime = || Error::NoRuntime {
            component: "DualRouter",
        };
        let handle = tokio::runtime::Handle::try_current().map_err(|_| no_runtime())?;
        // Timeouts and retries need the time driver; creating a timer
        // without one panics, so probe once here rather than later.
        let has_time = std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO))).is_ok();
        if !has_time {
            return Err(no_runtime());
        }
        let counters = Arc::new(Counters::default());
        let (compare_tx, compare_rx) = mpsc::channel(self.queue_capacity);
        let (repair_tx, repair_rx) = mpsc::channel(self.repair_capacity);
        let worker = Worker {
            comparator: self.comparator,
            counters: counters.clone(),
            recorder: self.recorder.clone(),
            sequence: AtomicU64::new(0),
        };
        // Failed writes get their own task: a slow or hung comparator never
        // holds back their records.
        let worker = Arc::new(worker);
        handle.spawn(worker.clone().run(repair_rx));
        handle.spawn(worker.run(compare_rx));
        let max_in_flight = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        Ok(DualRouter {
            shared: Arc::new(Shared {
                phase: self.phase,
                counters,
                compare_tx,
                repair_tx,
                in_flight: Arc::new(Semaphore::new(max_in_flight as usize)),
                max_in_flight,
                new_timeout: self.new_timeout,
                handle,
                recorder: self.recorder,
            }),
        })
    }
}

impl DualRouter {
    /// Starts configuring a router whose discrepancies `recorder` stores.
    pub fn builder(recorder: DiscrepancyRecorder) -> DualRouterBuilder {
        DualRouterBuilder {
            recorder,
            phase: PhaseSwitch::default(),
            comparator: Arc::new(Comparator::new()),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            repair_capacity: DEFAULT_REPAIR_CAPACITY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            new_timeout: None,
        }
    }

    /// The phase switch (a clone: setting it switches this router).
    pub fn phase(&self) -> PhaseSwitch {
        self.shared.phase.clone()
    }

    /// The recorder (its model, and [`DiscrepancyRecorder::key_of`] to find
    /// a key's record).
    pub fn recorder(&self) -> &DiscrepancyRecorder {
        &self.shared.recorder
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MigrationStats {
        self.shared.counters.snapshot()
    }

    /// A read: which store is called and whose result is returned depends
    /// on the phase at the start of the call.
    ///
    /// * legacy only: `legacy`, returned;
    /// * shadow: `new` starts in a background task, `legacy` runs on the
    ///   caller's path and is returned; the two are compared off the path;
    /// * prefer new: `new` runs on the caller's path; if it succeeds it is
    ///   returned and `legacy` is then read in a background task and
    ///   compared; if it fails (error, panic, timeout), `legacy` runs on the
    ///   caller's path and is returned, and the failure is recorded;
    /// * new only: `new`, returned.
    ///
    /// The closures are `'static` because one of them may run in a
    /// background task: move owned keys and cloned clients into them.
    pub async fn read<T, E, L, LF, N, NF>(
        &self,
        operation: &str,
        key: &str,
        legacy: L,
        new: N,
    ) -> std::result::Result<T, E>
    where
        T: Serialize + Clone + Send + 'static,
        E: fmt::Display + Send + 'static,
        L: FnOnce() -> LF + Send + 'static,
        LF: Future<Output = std::result::Result<T, E>> + Send + 'static,
        N: FnOnce() -> NF + Send + 'static,
        NF: Future<Output = std::result::Result<T, E>> + Send + 'static,
    {
        let s = &self.shared;
        Counters::bump(&s.counters.reads);
        let phase = s.phase.get();
        match phase {
            Phase::LegacyOnly => legacy().await,
            Phase::NewOnly => new().await,
            Phase::Shadow => {
                let Some(permit) = s.permit() else {
                    return legacy().await;
                };
                let (legacy_tx, legacy_rx) = oneshot::channel::<Side>();
                let task = self.shared.clone();
                let (op, k) = (operation.to_owned(), key.to_owned());
                s.handle.spawn(async move {
                    let outcome = task.contained(new).await;
                    let new_side = match outcome {
                        NewOutcome::Ok(value) => Side::ok(value),
                        failed => Side::Failed(failed.failure().unwrap_or_default()),
                    };
                    // No legacy side: the caller was cancelled; nothing to compare.
                    if let Ok(legacy_side) = legacy_rx.await {
                        task.compare_later(op, k, Access::Read, phase, legacy_side, new_side);
                    }
                    drop(permit);
                });
                let result = legacy().await;
                let _ = legacy_tx.send(Side::of(&result));
                result
            }
            Phase::PreferNew => match s.contained(new).await {
                NewOutcome::Ok(value) => {
                    if let Some(permit) = s.permit() {
                        let task = self.shared.clone();
                        let new_side = Side::ok(value.clone());
                        let (op, k) = (operation.to_owned(), key.to_owned());
                        s.handle.spawn(async move {
                            // Off the caller's path, a legacy panic is contained too.
                            let legacy_side = match AssertUnwindSafe(async move { legacy().await })
                                .catch_unwind()
                                .await
                            {
                                Ok(result) => Side::of(&result),
                                Err(payload) => {
                                    Side::Failed(format!("panicked: {}", crate::panic_message(payload)))
                                }
                            };
                            task.compare_later(op, k, Access::Read, phase, legacy_side, new_side);
                            drop(permit);
                        });
                    }
                    Ok(value)
                }
                failed => {
                    Counters::bump(&s.counters.fallbacks);
                    let failure = failed.failure().unwrap_or_default();
                    let result = legacy().await;
                    let legacy_side = Side::of(&result);
                    s.compare_later(
                        operation.to_owned(),
                        key.to_owned(),
                        Access::Read,
                        phase,
                        legacy_side,
                        Side::Failed(failure),
                    );
                    result
                }
            },
        }
    }

    /// A write: which stores are written, in what order, and whose result
    /// is returned depends on the phase at the start of the call.
    ///
    /// * legacy only: `legacy`, returned;
    /// * shadow: `legacy` first; if it fails its error is returned and
    ///   `new` is not called. Then `new` (contained): its failure never
    ///   fails the caller and is recorded for repair
    ///   ([`DiscrepancyKind::WriteFailed`]); the legacy result is returned,
    ///   and the two results are compared off the path;
    /// * prefer new: the same order and rules (legacy stays complete, so
    ///   the migration can go back), but the new result is returned, or the
    ///   legacy one if `new` failed;
    /// * new only: `new`, returned.
    ///
    /// Both sides run on the caller's path, one after the other.
    pub async fn write<T, E, L, LF, N, NF>(
        &self,
        operation: &str,
        key: &str,
        legacy: L,
        new: N,
    ) -> std::result::Result<T, E>
    where
        T: Serialize + Clone + Send + 'static,
        E: fmt::Display,
        L: FnOnce() -> LF,
        LF: Future<Output = std::result::Result<T, E>>,
        N: FnOnce() -> NF,
        NF: Future<Output = std::result::Result<T, E>>,
    {
        let s = &self.shared;
        Counters::bump(&s.counters.writes);
        let phase = s.phase.get();
        match phase {
            Phase::LegacyOnly => legacy().await,
            Phase::NewOnly => new().await,
            Phase::Shadow | Phase::PreferNew => {
                let legacy_value = legacy().await?;
                match s.contained(new).await {
                    NewOutcome::Ok(new_value) => {
                        let (returned, legacy_side, new_side) = if phase == Phase::Shadow {
                            let side = Side::ok(legacy_value.clone());
                            (legacy_value, side, Side::ok(new_value))
                        } else {
                            let side = Side::ok(new_value.clone());
                            (new_value, Side::ok(legacy_value), side)
                        };
                        s.compare_later(
                            operation.to_owned(),
                            key.to_owned(),
                            Access::Write,
                            phase,
                            legacy_side,
                            new_side,
                        );
                        Ok(returned)
                    }
                    failed => {
                        let failure = failed.failure().unwrap_or_default();
                        Counters::bump(&s.counters.write_failures);
                        if phase == Phase::PreferNew {
                            Counters::bump(&s.counters.fallbacks);
                        }
                        s.repair_later(CompareJob {
                            operation: operation.to_owned(),
                            key: key.to_owned(),
                            access: Access::Write,
                            phase,
                            at: Timestamp::now(),
                            legacy: Side::ok(legacy_value.clone()),
                            new: Side::Failed(failure),
                        });
                        Ok(legacy_value)
                    }
                }
            }
        }
    }

    /// Waits until every comparison and record queued so far (including
    /// those of off-path reads still running) is compared and stored. For
    /// tests and graceful shutdown; off-path reads started while it waits
    /// are sampled away. It waits for off-path reads still running: with a
    /// store that can hang, set [`DualRouterBuilder::new_side_timeout`] (a
    /// legacy read running off-path in the prefer-new phase is not limited).
    pub async fn flush(&self) {
        let s = &self.shared;
        if let Ok(all) = s.in_flight.acquire_many(s.max_in_flight).await {
            drop(all);
        }
        for tx in [&s.repair_tx, &s.compare_tx] {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(Job::Flush(done_tx)).await.is_ok() {
                let _ = done_rx.await;
            }
        }
    }
}

impl Shared {
    /// A permit for one off-path read; `None` (counted as sampled away)
    /// when too many are in flight.
    fn permit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.in_flight.clone().try_acquire_owned().ok();
        if permit.is_none() {
            Counters::bump(&self.counters.sampled_away);
        }
        permit
    }

    /// Runs the new side contained: errors, panics and timeouts are
    /// counted and returned as values.
    async fn contained<T, E, N, NF>(&self, new: N) -> NewOutcome<T, E>
    where
        N: FnOnce() -> NF,
        NF: Future<Output = std::result::Result<T, E>>,
    {
        let call = AssertUnwindSafe(async move { new().await }).catch_unwind();
        let caught = match self.new_timeout {
            None => call.await,
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(caught) => caught,
                Err(_) => {
                    Counters::bump(&self.counters.new_errors);
                    return NewOutcome::TimedOut(limit);
                }
            },
        };
        match caught {
            Ok(Ok(value)) => NewOutcome::Ok(value),
            Ok(Err(e)) => {
                Counters::bump(&self.counters.new_errors);
                NewOutcome::Err(e)
            }
            Err(payload) => {
                Counters::bump(&self.counters.new_errors);
                Counters::bump(&self.counters.new_panics);
                let message = crate::panic_message(payload);
                tracing::warn!(%message, "the new side panicked (contained)");
                NewOutcome::Panicked(message)
            }
        }
    }

    /// Queues a comparison without waiting: when the queue is full it is
    /// sampled away.
    fn compare_later(
        &self,
        operation: String,
        key: String,
        access: Access,
        phase: Phase,
        legacy: Side,
        new: Side,
    ) {
        let job = CompareJob {
            operation,
            key,
            access,
            phase,
            at: Timestamp::now(),
            legacy,
            new,
        };
        if self.compare_tx.try_send(Job::Compare(Box::new(job))).is_err() {
            Counters::bump(&self.counters.sampled_away);
        }
    }

    /// Queues a failed write to record, without waiting.
    fn repair_later(&self, job: CompareJob) {
        match self.repair_tx.try_send(Job::Compare(Box::new(job))) {
            Ok(()) => {}
            Err(TrySendError::Full(Job::Compare(job)) | TrySendError::Closed(Job::Compare(job))) => {
                Counters::bump(&self.counters.record_failures);
                tracing::error!(
                    operation = %job.operation,
                    key = %job.key,
                    "the repair queue is full: a failed new-side write is not recorded"
                );
            }
            Err(_) => Counters::bump(&self.counters.record_failures),
        }
    }
}

/// The background task: compares, then stores discrepancies.
struct Worker {
    comparator: Arc<dyn Compare>,
    counters: Arc<Counters>,
    recorder: DiscrepancyRecorder,
    sequence: AtomicU64,
}

impl Worker {
    async fn run(self: Arc<Self>, mut queue: mpsc::Receiver<Job>) {
        while let Some(first) = queue.recv().await {
            if !matches!(first, Job::Flush(_)) {
                // Let a batch gather: one wake-up (and one blocking-pool
                // hand-off, one store write) per batch, not per call, keeps
                // the background cost off the cores the callers run on.
                tokio::time::sleep(WORKER_LINGER).await;
            }
            let mut jobs = vec![first];
            while jobs.len() < WORKER_BATCH {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let mut work = Vec::with_capacity(jobs.len());
            let mut flushes = Vec::new();
            for job in jobs {
                match job {
                    Job::Compare(job) => work.push(*job),
                    Job::Flush(done) => flushes.push(done),
                }
            }
            if !work.is_empty() {
                // Comparators are user code and may be slow: keep them off
                // the runtime's threads.
                let me = self.clone();
                let records = match tokio::task::spawn_blocking(move || me.compare_all(work)).await {
                    Ok(records) => records,
                    Err(e) => {
                        tracing::error!(error = %e, "the comparison task failed");
                        Vec::new()
                    }
                };
                if !records.is_empty() {
                    self.store(records).await;
                }
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    }

    fn compare_all(&self, jobs: Vec<CompareJob>) -> Vec<Discrepancy> {
        jobs.into_iter()
            .filter_map(|job| {
                std::panic::catch_unwind(AssertUnwindSafe(|| self.compare_one(job))).unwrap_or_else(
                    |payload| {
                        Counters::bump(&self.counters.comparator_panics);
                        tracing::warn!(message = %crate::panic_message(payload), "a comparison panicked (contained)");
                        None
                    },
                )
            })
            .collect()
    }

    fn compare_one(&self, job: CompareJob) -> Option<Discrepancy> {
        // A side that succeeded but whose result cannot be serialized is
        // not a failed side: it cannot be compared, so it is a mismatch.
        let legacy_failed = matches!(job.legacy, Side::Failed(_));
        let new_failed = matches!(job.new, Side::Failed(_));
        let legacy = job.legacy.resolve();
        let new = job.new.resolve();
        let (kind, differences) = match (&legacy, &new) {
            _ if (legacy.is_err() && !legacy_failed) || (new.is_err() && !new_failed) => {
                (DiscrepancyKind::Mismatch, Vec::new())
            }
            (Ok(l), Ok(n)) => {
                let found = self.comparator.compare(&job.operation, l, n);
                if found.is_match() {
                    Counters::bump(&self.counters.matches);
                    return None;
                }
                (DiscrepancyKind::Mismatch, found.differences)
            }
            (Ok(_), Err(_)) if job.access == Access::Write => (DiscrepancyKind::WriteFailed, Vec::new()),
            (Ok(_), Err(_)) => (DiscrepancyKind::NewFailed, Vec::new()),
            (Err(_), Ok(_)) => (DiscrepancyKind::LegacyFailed, Vec::new()),
            (Err(_), Err(_)) => {
                Counters::bump(&self.counters.matches);
                return None;
            }
        };
        Counters::bump(&self.counters.mismatches);
        Some(Discrepancy {
            id: Discrepancy::record_id(&job.operation, &job.key),
            operation: job.operation,
            key: job.key,
            access: job.access,
            kind,
            phase: job.phase,
            legacy: legacy.as_ref().ok().cloned(),
            new: new.as_ref().ok().cloned(),
            legacy_error: legacy.err(),
            new_error: new.err(),
            differences,
            updated_at: job.at.to_string(),
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Stores records, retrying (storing is idempotent); what cannot be
    /// stored is logged and counted.
    async fn store(&self, records: Vec<Discrepancy>) {
        let total = records.len() as u64;
        let repairs = records
            .iter()
            .filter(|d| d.kind == DiscrepancyKind::WriteFailed)
            .count() as u64;
        let mut pause = Duration::from_millis(50);
        for attempt in 1..=RECORD_ATTEMPTS {
            match self.recorder.record(&records).await {
                Ok(report) if report.dead_lettered > 0 => {
                    // Rejected by the store's consumer (too deep, ...): kept
                    // as dead letters, not as records.
                    let rejected = report.dead_lettered as u64;
                    tracing::error!(
                        rejected,
                        "discrepancies were dead-lettered, not stored as records"
                    );
                    Counters::add(
                        &self.counters.discrepancies_recorded,
                        total.saturating_sub(rejected),
                    );
                    Counters::add(&self.counters.record_failures, rejected);
                    return;
                }
                Ok(_) => {
                    Counters::add(&self.counters.discrepancies_recorded, total);
                    Counters::add(&self.counters.write_failures_recorded, repairs);
                    return;
                }
                Err(error) if attempt < RECORD_ATTEMPTS => {
                    tracing::warn!(%error, attempt, "storing discrepancies failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(error) => {
                    Counters::add(&self.counters.record_failures, total);
                    for d in &records {
                        tracing::error!(
                            %error,
                            operation = %d.operation,
                            key = %d.key,
                            kind = ?d.kind,
                            "a discrepancy could not be stored"
                        );
                    }
                }
            }
        }
    }
}
