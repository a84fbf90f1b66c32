//! The processors runner: selection, scheduling, translation, execution,
//! escalation and audit of checks.
//!
//! The runner is driven by three calls, which the embedded pipeline
//! ([`Overseer`](crate::pipeline::Overseer)), the testkit and simulations
//! make in the order they choose:
//!
//! * [`Runner::notify`]: updates stored by ingestion. Advances the sources'
//!   watermarks, selects the checks whose views read the updated model,
//!   resolves each update to its root record(s), and schedules one pending
//!   run per (check, root record) with the check's strategy. Repeated
//!   triggers for a pending run coalesce into it.
//! * [`Runner::observe_watermark`]: a source proves it has delivered
//!   everything up to a time (heartbeats, transaction commits).
//! * [`Runner::run_ready`]: runs every pending run that is ready on the
//!   runner's clock, and returns what happened.

use std::collections::{BTreeMap, HashMap, HashSet};

// A fast, randomly seeded hasher: record ids come from the outside world.
use foldhash::fast::RandomState;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, stream};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::Value;

use crate::check::{Check, Registry, RegistryError, Verdict};
use crate::clock::Clock;
use crate::dal::Dal;
use crate::error::Result;
use crate::escalation::{Dispatcher, Escalation, Incident, IncidentChange, LogEscalation};
use crate::model::{Model, Notification, RecordKey, SourceId};
use crate::store::{AuditEntry, IncidentEntry, OutcomeKind};
use crate::strategy::{Plan, Trigger};
use crate::time::Timestamp;
use crate::view::JoinDirection;

/// Tuning of the runner.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// First delay before an indeterminate run is retried (doubles per attempt).
    pub retry_delay: Duration,
    /// Attempts before an indeterminate run is abandoned (counted, not escalated).
    pub max_attempts: u32,
    /// Executions in flight at once.
    pub concurrency: usize,
    /// Write an audit record for every execution.
    pub audit: bool,
    /// How long [`Runner::flush_escalations`] waits for the escalations
    /// queued so far (default 60 s): a paging system that hangs cannot
    /// hold a flush, or a shutdown, for longer.
    pub flush_timeout: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            retry_delay: Duration::from_secs(5),
            max_attempts: 5,
            concurrency: 64,
            audit: true,
            flush_timeout: Duration::from_secs(60),
        }
    }
}

/// What one execution concluded.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The check ran and returned a verdict.
    Verdict(Verdict),
    /// The view could not be loaded (retried; never escalated).
    Indeterminate(String),
    /// The check panicked, timed out or errored (recorded; never escalated
    /// as a disagreement).
    Error(String),
}

impl Outcome {
    /// The kind of this outcome.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Verdict(Verdict::Pass) => OutcomeKind::Pass,
            Outcome::Verdict(Verdict::Fail(_)) => OutcomeKind::Fail,
            Outcome::Verdict(Verdict::NotApplicable) => OutcomeKind::NotApplicable,
            Outcome::Indeterminate(_) => OutcomeKind::Indeterminate,
            Outcome::Error(_) => OutcomeKind::Error,
        }
    }
}

/// One execution, as reported by [`Runner::run_ready`].
#[derive(Clone, Debug, PartialEq)]
pub struct Execution {
    /// The check's name.
    pub check: String,
    /// The root record.
    pub root: RecordKey,
    /// The (latest) trigger.
    pub trigger: Trigger,
    /// The source time the view was loaded as of.
    pub as_of: Timestamp,
    /// The runner clock at execution.
    pub executed_at: Timestamp,
    /// What it concluded.
    pub outcome: Outcome,
    /// Sources that had not caught up (a capped wait ran it anyway).
    pub lagging_sources: Vec<SourceId>,
    /// How many triggers it covered.
    pub coalesced: u32,
    /// The incident transition it caused, if any.
    pub incident: Option<(IncidentChange, Incident)>,
    /// Wall time the execution took.
    pub duration: Duration,
}

/// Counters of a runner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunnerStats {
    /// Notifications received.
    pub notifications: u64,
    /// Triggers (check, root) produced by selection.
    pub triggers: u64,
    /// Triggers merged into an already pending run.
    pub coalesced: u64,
    /// Executions.
    pub executions: u64,
    /// Passing executions.
    pub passes: u64,
    /// Failing executions.
    pub failures: u64,
    /// Not-applicable executions.
    pub not_applicable: u64,
    /// Indeterminate executions (view not loadable).
    pub indeterminate: u64,
    /// Executions that panicked, timed out or errored.
    pub errors: u64,
    /// Indeterminate runs given up after the last attempt.
    pub abandoned: u64,
    /// Runs made after a capped wait, with sources lagging.
    pub degraded: u64,
    /// Incidents opened.
    pub incidents_opened: u64,
    /// Incidents resolved.
    pub incidents_resolved: u64,
    /// Escalations that returned an error.
    pub escalation_errors: u64,
}

#[derive(Clone, Copy, Debug)]
enum Role {
    Root,
    Referrer { on: &'static str },
    Referenced { via: &'static str },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Timed(Timestamp, u64),
    /// Waiting for the sources to reach the as-of time (first), or for
    /// the clock to reach the cap on that wait (second).
    Fresh(Timestamp, Timestamp, u64),
}

#[derive(Debug)]
struct Pending {
    plan: Plan,
    trigger: Trigger,
    coalesced: u32,
    attempt: u32,
    slot: Slot,
}

#[derive(Debug)]
struct CheckSlot {
    root_model: Model,
    sources: Vec<SourceId>,
    timed: BTreeMap<(Timestamp, u64), RecordKey>,
    fresh: BTreeMap<(Timestamp, u64), RecordKey>,
    /// The runs of `fresh` by the time their wait is capped: caps need not
    /// follow as-of times (coalesced runs keep their first cap; a custom
    /// strategy may wait longer for some records than for others).
    capped: BTreeMap<(Timestamp, u64), RecordKey>,
    pending: HashMap<RecordKey, Pending, RandomState>,
}

struct Ready {
    check: usize,
    root: RecordKey,
    pending: Pending,
    as_of: Timestamp,
    lagging: Vec<SourceId>,
}

/// Why a runner could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The check registry is invalid.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Selects, schedules and runs checks. See the [module docs](self).
pub struct Runner {
    dal: Dal,
    clock: Arc<dyn Clock>,
    config: RunnerConfig,
    /// Each check's scheduling state, by the check's index in `runnable`.
    checks: Vec<CheckSlot>,
    /// The checks, shared with the tasks that execute them.
    runnable: Arc<[Check]>,
    /// The checks each model's updates trigger, and how (shared, so that
    /// a notification takes them without copying the list).
    selection: HashMap<Model, Arc<[(usize, Role)]>, RandomState>,
    watermarks: HashMap<SourceId, Timestamp, RandomState>,
    escalations: HashMap<String, Dispatcher>,
    escalation_errors: Arc<std::sync::atomic::AtomicU64>,
    incidents: HashMap<(usize, RecordKey), Incident, RandomState>,
    /// The opening times of incidents resolved while the clock had not yet
    /// passed them (or found in the store at a restart before it had): one
    /// reopened for the same (check, record) opens after it, so that the
    /// two are distinct incidents (in the store, whose incidents are keyed
    /// by opening time, and for paging systems).
    reopen_after: HashMap<(usize, RecordKey), Timestamp, RandomState>,
    /// Whether the incidents left open in the store (by an earlier run over
    /// it) have been taken into `incidents`.
    incidents_restored: bool,
    stats: RunnerStats,
    seq: u64,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field(
                "checks",
                &self.runnable.iter().map(Check::name).collect::<Vec<_>>(),
            )
            .field("watermarks", &self.watermarks)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The sources each model is delivered by (what freshness waits for).
pub type ModelSources = HashMap<Model, Vec<SourceId>>;

impl Runner {
    /// A runner for the checks of `registry`, reading through `dal`.
    ///
    /// `model_sources` says which sources deliver each model: the registry
    /// is validated against those models and the `escalations` (plus the
    /// built-in `log`), reporting every problem at once.
    pub fn new(
        dal: Dal,
        clock: Arc<dyn Clock>,
        registry: &Registry,
        model_sources: &ModelSources,
        escalations: HashMap<String, Arc<dyn Escalation>>,
        config: RunnerConfig,
    ) -> Result<Self, RunnerError> {
        let mut escalations = escalations;
        escalations
            .entry(crate::check::DEFAULT_ESCALATION.to_owned())
            .or_insert_with(|| Arc::new(LogEscalation));
        let models: Vec<&str> = model_sources.keys().map(Model::as_str).collect();
        let names: Vec<&str> = escalations.keys().map(String::as_str).collect();
        registry.validate(&models, &names)?;

        let escalation_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut checks = Vec::new();
        let mut selection: HashMap<Model, Vec<(usize, Role)>, RandomState> = HashMap::default();
        for (i, check) in registry.checks().iter().enumerate() {
            let spec = check.spec();
            let triggers: HashSet<&str> = check.models().into_iter().collect();
            let mut add = |model: &str, role: Role| {
                if triggers.contains(model)
                    && let Ok(m) = Model::new(model)
                {
                    selection.entry(m).or_default().push((i, role));
                }
            };
            add(spec.root, Role::Root);
            for join in &spec.joins {
                let role = match join.direction {
                    JoinDirection::Referrers => Role::Referrer { on: join.on },
                    JoinDirection::Referenced => Role::Referenced { via: join.on },
                };
                add(join.model, role);
            }
            let mut sources: Vec<SourceId> = spec
                .models()
                .filter_map(|m| Model::new(m).ok())
                .flat_map(|m| model_sources.get(&m).cloned().unwrap_or_default())
                .collect();
            sources.sort();
            sources.dedup();
            let root_model = Model::new(spec.root).map_err(|e| RegistryError {
                problems: vec![format!("check {:?}: {e}", check.name())],
            })?;
            tracing::info!(check = check.name(), models = ?check.models(), sources = ?sources, "check registered");
            checks.push(CheckSlot {
                root_model,
                sources,
                timed: BTreeMap::new(),
                fresh: BTreeMap::new(),
                capped: BTreeMap::new(),
                pending: HashMap::default(),
            });
        }
        Ok(Self {
            dal,
            clock,
            config,
            runnable: registry.checks().iter().cloned().collect(),
            checks,
            selection: selection.into_iter().map(|(m, v)| (m, Arc::from(v))).collect(),
            watermarks: HashMap::default(),
            escalations: escalations
                .into_iter()
                .map(|(name, e)| (name.clone(), Dispatcher::new(name, e, escalation_errors.clone())))
                .collect(),
            escalation_errors,
            incidents: HashMap::default(),
            reopen_after: HashMap::default(),
            incidents_restored: false,
            stats: RunnerStats::default(),
            seq: 0,
        })
    }

    /// The runner's counters (`escalation_errors` as of the last
    /// [`flush_escalations`](Self::flush_escalations)).
    pub fn stats(&self) -> &RunnerStats {
        &self.stats
    }

    /// The open incidents.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.values()
    }

    /// How many runs are pending.
    pub fn pending(&self) -> usize {
        self.checks.iter().map(|c| c.pending.len()).sum()
    }

    /// A source's watermark, if it has reported one.
    pub fn watermark(&self, source: &SourceId) -> Option<Timestamp> {
        self.watermarks.get(source).copied()
    }

    /// The runner's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Records that `source` has delivered everything up to `time`.
    pub fn observe_watermark(&mut self, source: &SourceId, time: Timestamp) {
        let w = self.watermarks.entry(source.clone()).or_insert(time);
        *w = (*w).max(time);
    }

    /// Takes stored updates: advances watermarks, selects the checks they
    /// trigger, resolves root records, and schedules (or coalesces) runs.
    pub async fn notify(&mut self, notifications: &[Notification]) -> Result<()> {
        let now = self.clock.now();
        for n in notifications {
            self.stats.notifications += 1;
            self.observe_watermark(&n.source, n.commit_time);
            let Some(selected) = self.selection.get(&n.key.model).cloned() else {
                continue;
            };
            for &(check, role) in selected.iter() {
                let roots = self.roots(check, role, n).await?;
                for root in roots {
                    let trigger = Trigger {
                        root: root.clone(),
                        updated: n.key.clone(),
                        source: n.source.clone(),
                        commit_time: n.commit_time,
                        received_at: now,
                    };
                    self.schedule(check, trigger);
                }
            }
        }
        Ok(())
    }

    async fn roots(&self, check: usize, role: Role, n: &Notification) -> Result<Vec<RecordKey>> {
        let root_model = &self.checks[check].root_model;
        Ok(match role {
            Role::Root => vec![n.key.clone()],
            Role::Referrer { on } => {
                // The joined record points at its root(s): the update's own
                // references, plus every reference it ever had (so a root it
                // stopped pointing at is re-checked too).
                let mut roots: Vec<RecordKey> = n
                    .references
                    .iter()
                    .filter(|r| r.field == on && &r.target.model == root_model)
                    .map(|r| r.target.clone())
                    .collect();
                if n.operation != crate::model::Operation::Insert || roots.is_empty() {
                    for e in self.dal.references(&n.key, Timestamp::MAX).await? {
                        if e.reference.field == on && &e.reference.target.model == root_model {
                            roots.push(e.reference.target);
                        }
                    }
                }
                roots.sort();
                roots.dedup();
                roots
            }
            Role::Referenced { via } => {
                let mut roots: Vec<RecordKey> = self
                    .dal
                    .referrer_entries(&n.key, Timestamp::MAX)
                    .await?
                    .into_iter()
                    .filter(|e| &e.from.model == root_model && e.reference.field == via)
                    .map(|e| e.from)
                    .collect();
                roots.sort();
                roots.dedup();
                roots
            }
        })
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn schedule(&mut self, check: usize, trigger: Trigger) {
        self.stats.triggers += 1;
        let plan = self.runnable[check].strategy().plan(&trigger);
        let seq = self.next_seq();
        let slot_of = |plan: &Plan, seq| Slot::Timed(plan.not_before, seq);
        let c = &mut self.checks[check];
        // The pending run is updated where it is; only its slot moves.
        match c.pending.get_mut(&trigger.root) {
            Some(pending) => {
                self.stats.coalesced += 1;
                let old_slot = pending.slot;
                let as_of = pending.plan.as_of.max(plan.as_of);
                // The wait for sources stays capped where the first trigger
                // capped it: moving the cap with every trigger would never
                // run a record updated more often than the cap (degraded).
                let cap = |p: &Plan| p.as_of.saturating_add(p.max_wait);
                let cap = cap(&pending.plan).min(cap(&plan));
                let max_wait = u64::try_from(cap.as_micros().saturating_sub(as_of.as_micros()))
                    .map_or(Duration::ZERO, Duration::from_micros);
                pending.plan = Plan {
                    as_of,
                    not_before: pending.plan.not_before.max(plan.not_before),
                    await_sources: pending.plan.await_sources || plan.await_sources,
                    max_wait,
                };
                pending.trigger = trigger;
                pending.coalesced += 1;
                pending.attempt = 0;
                pending.slot = slot_of(&pending.plan, seq);
                let (slot, root) = (pending.slot, pending.trigger.root.clone());
                remove_slot(c, old_slot);
                insert_slot(c, slot, root);
            }
            None => {
                let slot = slot_of(&plan, seq);
                insert_slot(c, slot, trigger.root.clone());
                c.pending.insert(
                    trigger.root.clone(),
                    Pending {
                        plan,
                        trigger,
                        coalesced: 1,
                        attempt: 0,
                        slot,
                    },
                );
            }
        }
    }

    fn min_watermark(&self, sources: &[SourceId]) -> Option<Timestamp> {
        let mut min = Timestamp::MAX;
        for s in sources {
            // A source that has not reported yet blocks.
            min = min.min(*self.watermarks.get(s)?);
        }
        Some(min)
    }

    /// The earliest clock time at which a pending run becomes ready by the
    /// passing of time alone (a delay ends, or a freshness wait is capped).
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        for c in &self.checks {
            if let Some((&(t, _), _)) = c.timed.first_key_value() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
            if let Some((&(t, _), _)) = c.capped.first_key_value() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    fn collect_ready(&mut self, now: Timestamp) -> Vec<Ready> {
        let mut ready = Vec::new();
        for i in 0..self.checks.len() {
            // Delays that have ended move on to the freshness wait, or run.
            while let Some((&(t, seq), _)) = self.checks[i].timed.first_key_value() {
                if t > now {
                    break;
                }
                let Some((_, root)) = self.checks[i].timed.pop_first() else {
                    break;
                };
                let Some(p) = self.checks[i].pending.get_mut(&root) else {
                    continue;
                };
                if p.plan.await_sources {
                    p.slot = Slot::Fresh(p.plan.as_of, p.plan.as_of.saturating_add(p.plan.max_wait), seq);
                    let slot = p.slot;
                    insert_slot(&mut self.checks[i], slot, root);
                } else if let Some(pending) = self.checks[i].pending.remove(&root) {
                    let as_of = pending.plan.as_of;
                    ready.push(Ready {
                        check: i,
                        root,
                        pending,
                        as_of,
                        lagging: Vec::new(),
                    });
                }
            }
            let min_wm = self.min_watermark(&self.checks[i].sources);
            // Runs whose sources have caught up, by as-of time.
            while let Some((&(as_of, seq), root)) = self.checks[i].fresh.first_key_value() {
                if min_wm.is_none_or(|w| w < as_of) {
                    break;
                }
                let root = root.clone();
                let Some((_, pending)) = self.take_fresh(i, &root, seq) else {
                    self.checks[i].fresh.pop_first();
                    continue;
                };
                // The latest time every source is complete up to (and not
                // past the clock).
                let consistent = min_wm.unwrap_or(as_of).min(now).max(as_of);
                ready.push(Ready {
                    check: i,
                    root,
                    pending,
                    as_of: consistent,
                    lagging: Vec::new(),
                });
            }
            // Runs whose wait is capped, by cap: run anyway, degraded.
            while let Some((&(cap, seq), root)) = self.checks[i].capped.first_key_value() {
                if cap > now {
                    break;
                }
                let root = root.clone();
                let Some((as_of, pending)) = self.take_fresh(i, &root, seq) else {
                    self.checks[i].capped.pop_first();
                    continue;
                };
                let lagging = self.checks[i]
                    .sources
                    .iter()
                    .filter(|s| self.watermarks.get(*s).is_none_or(|w| *w < as_of))
                    .cloned()
                    .collect();
                ready.push(Ready {
                    check: i,
                    root,
                    pending,
                    as_of,
                    lagging,
                });
            }
        }
        ready
    }

    /// Takes the pending run of `root` out of the freshness wait (both of
    /// its indexes) with its as-of time, if its slot is the freshness slot
    /// numbered `seq`; `None` for an index entry that is stale.
    fn take_fresh(&mut self, check: usize, root: &RecordKey, seq: u64) -> Option<(Timestamp, Pending)> {
        let c = &mut self.checks[check];
        let slot = c.pending.get(root)?.slot;
        let Slot::Fresh(as_of, _, s) = slot else {
            return None;
        };
        if s != seq {
            return None;
        }
        remove_slot(c, slot);
        c.pending.remove(root).map(|p| (as_of, p))
    }

    /// Runs every pending run that is ready on the runner's clock, and
    /// returns the executions, in no particular order.
    pub async fn run_ready(&mut self) -> Result<Vec<Execution>> {
        self.restore_incidents().await?;
        let mut all = Vec::new();
        loop {
            let now = self.clock.now();
            if !self.reopen_after.is_empty() {
                self.reopen_after.retain(|_, opened| *opened >= now);
            }
            let ready = self.collect_ready(now);
            if ready.is_empty() {
                return Ok(all);
            }
            let jobs = ready.iter().map(|r| (r.check, r.root.clone(), r.as_of)).collect();
            let outcomes = execute_all(&self.runnable, &self.dal, jobs, self.config.concurrency).await;
            let mut audit = Vec::with_capacity(if self.config.audit { ready.len() } else { 0 });
            all.reserve(ready.len());
            for (ready, (outcome, duration)) in ready.into_iter().zip(outcomes) {
                all.push(self.conclude(ready, outcome, duration, now, &mut audit).await?);
            }
            if !audit.is_empty() {
                // One object per check and round, not one per execution.
                self.dal.store().put_audit_batch(&audit).await?;
            }
        }
    }

    async fn conclude(
        &mut self,
        r: Ready,
        outcome: Outcome,
        duration: Duration,
        now: Timestamp,
        audit: &mut Vec<AuditEntry>,
    ) -> Result<Execution> {
        self.stats.executions += 1;
        if !r.lagging.is_empty() {
            self.stats.degraded += 1;
        }
        let check_name = self.runnable[r.check].name().to_owned();
        let mut incident = None;
        match &outcome {
            Outcome::Verdict(Verdict::Pass) => {
                self.stats.passes += 1;
                incident = self.resolve(r.check, &r.root, now).await?;
            }
            Outcome::Verdict(Verdict::NotApplicable) => {
                self.stats.not_applicable += 1;
                incident = self.resolve(r.check, &r.root, now).await?;
            }
            Outcome::Verdict(Verdict::Fail(f)) => {
                self.stats.failures += 1;
                incident = Some(self.fail(r.check, &r.root, f, &r.pending.trigger, now).await?);
            }
            Outcome::Indeterminate(reason) => {
                self.stats.indeterminate += 1;
                let attempt = r.pending.attempt + 1;
                if attempt < self.config.max_attempts {
                    self.retry(r.check, &r, attempt, now);
                } else {
                    self.stats.abandoned += 1;
                    tracing::warn!(check = %check_name, root = %r.root, %reason, "indeterminate run abandoned");
                }
            }
            Outcome::Error(reason) => {
                self.stats.errors += 1;
                tracing::error!(check = %check_name, root = %r.root, %reason, "check execution failed");
            }
        }
        let (message, details) = match &outcome {
            Outcome::Verdict(Verdict::Fail(f)) => (f.message.clone(), f.details.clone()),
            Outcome::Indeterminate(m) | Outcome::Error(m) => (m.clone(), Value::Null),
            Outcome::Verdict(_) => (String::new(), Value::Null),
        };
        if self.config.audit {
            audit.push(AuditEntry {
                check: check_name.clone(),
                root: r.root.clone(),
                trigger_key: r.pending.trigger.updated.clone(),
                trigger_source: r.pending.trigger.source.clone(),
                trigger_commit_time: r.pending.trigger.commit_time,
                as_of: r.as_of,
                executed_at: now,
                outcome: outcome.kind(),
                message,
                details,
                duration,
                lagging_sources: r.lagging.iter().map(ToString::to_string).collect(),
                coalesced: r.pending.coalesced,
            });
        }
        Ok(Execution {
            check: check_name,
            root: r.root,
            trigger: r.pending.trigger,
            as_of: r.as_of,
            executed_at: now,
            outcome,
            lagging_sources: r.lagging,
            coalesced: r.pending.coalesced,
            incident,
            duration,
        })
    }

    fn retry(&mut self, check: usize, r: &Ready, attempt: u32, now: Timestamp) {
        let c = &mut self.checks[check];
        if c.pending.contains_key(&r.root) {
            // A newer trigger is already pending; it will run anyway.
            return;
        }
        let backoff = self
            .config
            .retry_delay
            .saturating_mul(1u32 << (attempt - 1).min(16));
        self.seq += 1;
        let mut plan = r.pending.plan;
        plan.not_before = now.saturating_add(backoff);
        let slot = Slot::Timed(plan.not_before, self.seq);
        insert_slot(c, slot, r.root.clone());
        c.pending.insert(
            r.root.clone(),
            Pending {
                plan,
                trigger: r.pending.trigger.clone(),
                coalesced: r.pending.coalesced,
                attempt,
                slot,
            },
        );
    }

    async fn escalate(&mut self, check: usize, change: IncidentChange, incident: &Incident) {
        let name = self.runnable[check].escalation();
        if let Some(d) = self.escalations.get_mut(name) {
            d.send(change, incident.clone());
        }
    }

    /// Waits until every escalation queued so far has been delivered (or
    /// has failed), for at most [`RunnerConfig::flush_timeout`]; returns
    /// whether they all were. Escalations otherwise run in the background,
    /// in order, so a slow paging system never delays checks; those not
    /// delivered by the deadline stay queued, and a warning names their
    /// escalation.
    pub async fn flush_escalations(&mut self) -> bool {
        // No deadline for a timeout past what a clock can hold.
        let deadline = tokio::time::Instant::now().checked_add(self.config.flush_timeout);
        let mut all = true;
        for d in self.escalations.values_mut() {
            all &= d.flush(deadline).await;
        }
        self.stats.escalation_errors = self.escalation_errors.load(std::sync::atomic::Ordering::Relaxed);
        all
    }

    /// Takes the incidents an earlier run over the store left open (of this
    /// runner's checks), once: a restart then updates or resolves them
    /// instead of opening a second incident or leaving them open forever.
    async fn restore_incidents(&mut self) -> Result<()> {
        if self.incidents_restored {
            return Ok(());
        }
        let now = self.clock.now();
        for entry in self.dal.store().incidents().await? {
            let Some(check) = self.runnable.iter().position(|c| c.name() == entry.check) else {
                continue;
            };
            // One opened at this time or later (the clock did not move
            // since): an incident opened now must open after it, not share
            // its key, as `resolve` arranges within one run.
            if entry.opened_at >= now {
                let after = self
                    .reopen_after
                    .entry((check, entry.root.clone()))
                    .or_insert(entry.opened_at);
                *after = (*after).max(entry.opened_at);
            }
            if entry.resolved_at.is_some() {
                continue;
            }
            self.incidents
                .entry((check, entry.root.clone()))
                .or_insert(Incident {
                    check: entry.check,
                    root: entry.root,
                    dedup_key: entry.dedup_key,
                    opened_at: entry.opened_at,
                    updated_at: entry.updated_at,
                    resolved_at: None,
                    failures: entry.failures,
                    message: entry.message,
                    details: entry.details,
                    trigger_commit_time: entry.trigger_commit_time,
                });
        }
        self.incidents_restored = true;
        Ok(())
    }

    async fn fail(
        &mut self,
        check: usize,
        root: &RecordKey,
        failure: &crate::check::Failure,
        trigger: &Trigger,
        now: Timestamp,
    ) -> Result<(IncidentChange, Incident)> {
        let key = (check, root.clone());
        let name = self.runnable[check].name().to_owned();
        let (change, incident) = match self.incidents.get_mut(&key) {
            Some(open) => {
                open.failures = open.failures.saturating_add(1);
                // Not before its opening (moved past the clock by a reopening).
                open.updated_at = now.max(open.opened_at);
                open.message = failure.message.clone();
                open.details = failure.details.clone();
                let updated = open.clone();
                // So that a restart resumes the count, and an operator sees
                // the latest failure.
                self.dal.store().put_incident(&incident_entry(&updated)).await?;
                (IncidentChange::Updated, updated)
            }
            None => {
                // After an incident of the same (check, record) opened at
                // this time or later (the clock did not move in between).
                let opened_at = match self.reopen_after.remove(&key) {
                    Some(previous) if previous >= now => {
                        Timestamp::from_micros(previous.as_micros().saturating_add(1))
                    }
                    _ => now,
                };
                let incident = Incident {
                    dedup_key: dedup_key(&name, root, opened_at),
                    check: name,
                    root: root.clone(),
                    opened_at,
                    updated_at: opened_at,
                    resolved_at: None,
                    failures: 1,
                    message: failure.message.clone(),
                    details: failure.details.clone(),
                    trigger_commit_time: trigger.commit_time,
                };
                self.stats.incidents_opened += 1;
                self.dal.store().put_incident(&incident_entry(&incident)).await?;
                self.incidents.insert(key, incident.clone());
                (IncidentChange::Opened, incident)
            }
        };
        self.escalate(check, change, &incident).await;
        Ok((change, incident))
    }

    async fn resolve(
        &mut self,
        check: usize,
        root: &RecordKey,
        now: Timestamp,
    ) -> Result<Option<(IncidentChange, Incident)>> {
        let Some(mut incident) = self.incidents.remove(&(check, root.clone())) else {
            return Ok(None);
        };
        // Not before its opening (moved past the clock by a reopening).
        incident.resolved_at = Some(now.max(incident.opened_at));
        if incident.opened_at >= now {
            self.reopen_after
                .insert((check, root.clone()), incident.opened_at);
        }
        self.stats.incidents_resolved += 1;
        self.dal.store().put_incident(&incident_entry(&incident)).await?;
        self.escalate(check, IncidentChange::Resolved, &incident).await;
        Ok(Some((IncidentChange::Resolved, incident)))
    }
}

/// What a part of a dedup key escapes: `/`, which separates the parts,
/// `%`, which starts an escape, and control characters (paging systems
/// show the key). Non-ASCII characters are escaped as UTF-8 bytes.
const DEDUP_ESCAPED: &AsciiSet = &CONTROLS.add(b'/').add(b'%');

/// An incident's dedup key: `check/model/id/opened_at` (microseconds),
/// each part escaped so that no two incidents share a key, whatever their
/// names hold (a record id `x/1` of model `m` is not record `1` of a model
/// `m/x`). Names of plain characters are kept as written.
fn dedup_key(check: &str, root: &RecordKey, opened_at: Timestamp) -> String {
    format!(
        "{}/{}/{}/{}",
        utf8_percent_encode(check, DEDUP_ESCAPED),
        utf8_percent_encode(root.model.as_str(), DEDUP_ESCAPED),
        utf8_percent_encode(root.id.as_str(), DEDUP_ESCAPED),
        opened_at.as_micros()
    )
}

fn incident_entry(i: &Incident) -> IncidentEntry {
    IncidentEntry {
        check: i.check.clone(),
        root: i.root.clone(),
        dedup_key: i.dedup_key.clone(),
        opened_at: i.opened_at,
        updated_at: i.updated_at,
        resolved_at: i.resolved_at,
        failures: i.failures,
        message: i.message.clone(),
        details: i.details.clone(),
        trigger_commit_time: i.trigger_commit_time,
    }
}

fn insert_slot(c: &mut CheckSlot, slot: Slot, root: RecordKey) {
    match slot {
        Slot::Timed(t, s) => c.timed.insert((t, s), root),
        Slot::Fresh(t, cap, s) => {
            c.capped.insert((cap, s), root.clone());
            c.fresh.insert((t, s), root)
        }
    };
}

fn remove_slot(c: &mut CheckSlot, slot: Slot) {
    match slot {
        Slot::Timed(t, s) => c.timed.remove(&(t, s)),
        Slot::Fresh(t, cap, s) => {
            c.capped.remove(&(cap, s));
            c.fresh.remove(&(t, s))
        }
    };
}

/// Executions handed to one task at least (below this, a round is split
/// into fewer tasks).
const MIN_EXECUTIONS_PER_TASK: usize = 16;
/// Tasks per runtime worker a round is split into, so that work stealing
/// can even out checks of different cost.
const TASKS_PER_WORKER: usize = 4;
/// How long past the longest timeout of a round's checks the runner waits
/// for the next execution to end before it takes the rest as stuck.
const STUCK_GRACE: Duration = Duration::from_secs(1);

/// Executes `jobs` (check, root record, as-of time) and returns their
/// outcomes in the order of `jobs`, with at most `concurrency` in flight.
///
/// The jobs are spread over a few tasks per runtime worker, not one task
/// each: a task per execution cost the runner about a tenth of its CPU in
/// spawning, waking and joining. Isolation is kept: every execution has its
/// own timeout and its own panic boundary, so a panic, an error or a hang
/// that awaits affects only that execution.
///
/// A check that blocks its thread (a synchronous call that never returns)
/// cannot be ended by a timeout, and it holds up the executions that share
/// its task. When no execution has ended for longer than the round's
/// longest timeout plus [`STUCK_GRACE`], the runner stops waiting: the
/// executions that had started end as errors, the ones that had not are
/// indeterminate (and retried), and the round's other tasks are unaffected.
async fn execute_all(
    checks: &Arc<[Check]>,
    dal: &Dal,
    jobs: Vec<(usize, RecordKey, Timestamp)>,
    concurrency: usize,
) -> Vec<(Outcome, Duration)> {
    let start = Instant::now();
    let n = jobs.len();
    let workers = tokio::runtime::Handle::current().metrics().num_workers().max(1);
    let tasks = (workers * TASKS_PER_WORKER)
        .min(n.div_ceil(MIN_EXECUTIONS_PER_TASK))
        .min(concurrency)
        .max(1);
    let per_task = (concurrency / tasks).max(1);
    let patience = jobs
        .iter()
        .filter_map(|(check, _, _)| checks.get(*check))
        .map(Check::timeout)
        .max()
        .unwrap_or_default()
        .saturating_add(STUCK_GRACE);
    // Job `i` goes to task `i % tasks`: a round lists each check's runs
    // together, and striding spreads every check over every task.
    let mut shares: Vec<Vec<(usize, usize, RecordKey, Timestamp)>> = (0..tasks)
        .map(|_| Vec::with_capacity(n.div_ceil(tasks)))
        .collect();
    for (i, (check, root, as_of)) in jobs.into_iter().enumerate() {
        if let Some(share) = shares.get_mut(i % tasks) {
            share.push((i, check, root, as_of));
        }
    }
    // What each execution concluded, and whether it started; how many ended.
    let slots: Arc<[OnceLock<(Outcome, Duration)>]> = (0..n).map(|_| OnceLock::new()).collect();
    let started: Arc<[AtomicBool]> = (0..n).map(|_| AtomicBool::new(false)).collect();
    let ended = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let (checks, dal) = (checks.clone(), dal.clone());
            let (slots, started, ended) = (slots.clone(), started.clone(), ended.clone());
            tokio::spawn(async move {
                stream::iter(share)
                    .for_each_concurrent(per_task, |(i, check, root, as_of)| {
                        let (checks, dal, slots, started, ended) = (&checks, &dal, &slots, &started, &ended);
                        async move {
                            if let Some(s) = started.get(i) {
                                s.store(true, AtomicOrdering::Relaxed);
                            }
                            let outcome = match checks.get(check) {
                                Some(check) => execute(check, dal, &root, as_of).await,
                                None => (Outcome::Error(format!("no check #{check}")), Duration::ZERO),
                            };
                            if let Some(slot) = slots.get(i) {
                                let _ = slot.set(outcome);
                            }
                            ended.fetch_add(1, AtomicOrdering::Relaxed);
                        }
                    })
                    .await
            })
        })
        .collect();
    let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
    let mut all = futures::future::join_all(handles);
    let (mut seen, mut progressed) = (0, Instant::now());
    // Tasks that end early (a runtime shutting down cancels them) leave
    // their executions unset, as stuck ones do.
    while tokio::time::timeout(patience / 4, &mut all).await.is_err() {
        let now = ended.load(AtomicOrdering::Relaxed);
        if now != seen {
            (seen, progressed) = (now, Instant::now());
        } else if progressed.elapsed() >= patience {
            // Nothing ended for longer than any check may run: the tasks
            // left are held up by a check blocking their thread.
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
            break;
        }
    }
    (0..n)
        .map(|i| {
            if let Some(outcome) = slots.get(i).and_then(OnceLock::get) {
                return outcome.clone();
            }
            let outcome = if started.get(i).is_some_and(|s| s.load(AtomicOrdering::Relaxed)) {
                Outcome::Error(format!(
                    "the check did not end within {patience:?}: it, or a check running beside it, \
                     blocks its thread (a timeout only ends a check that awaits)"
                ))
            } else {
                Outcome::Indeterminate("not run: a check blocked the thread it was to run on".to_owned())
            };
            (outcome, start.elapsed())
        })
        .collect()
}

/// Runs one check with its timeout, catching its panics: a panic, an error
/// or a hang affects only this execution.
async fn execute(check: &Check, dal: &Dal, root: &RecordKey, as_of: Timestamp) -> (Outcome, Duration) {
    let start = Instant::now();
    let timeout = check.timeout();
    let run = std::panic::AssertUnwindSafe(check.run(dal, root, as_of)).catch_unwind();
    let name = check.name();
    let outcome = match tokio::time::timeout(timeout, run).await {
        Err(_) => Outcome::Error(format!("check {name} timed out after {timeout:?}")),
        Ok(Err(panic)) => Outcome::Error(format!("check {name} panicked: {}", crate::panic_message(panic))),
        Ok(Ok(Ok(verdict))) => Outcome::Verdict(verdict),
        // The view could not be loaded (a record missing, the store
        // failing): says nothing about agreement.
        Ok(Ok(Err(e))) => Outcome::Indeterminate(e.to_string()),
    };
    (outcome, start.elapsed())
}
