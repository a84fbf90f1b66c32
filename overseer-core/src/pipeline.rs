//! The embedded pipeline: ingestion, the topic and the runner in one
//! process, built with [`Overseer::builder`].
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use overseer_core::pipeline::{Overseer, SourceConfig};
//! use overseer_core::testing::LinesConsumer;
//! use overseer_core::{Registry, Store};
//! # use overseer_core::{check::{Check, Verdict}, view::{DataView, ViewContext, ViewError, ViewSpec}};
//! # #[derive(serde::Deserialize)] struct Line { n: i64 }
//! # impl DataView for Line {
//! #     fn spec() -> ViewSpec { ViewSpec { root: "lines", joins: vec![] } }
//! #     async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> { ctx.root_as().await }
//! # }
//! # async fn small(l: Line) -> Verdict { if l.n < 100 { Verdict::pass() } else { Verdict::fail("too big") } }
//!
//! let mut overseer = Overseer::builder()
//!     .store(Store::in_memory())
//!     .state_builder(LinesConsumer)
//!     .source(SourceConfig::new("app", LinesConsumer)?.models(["lines"])?)
//!     .checks(Registry::new().add(Check::new("small", small)))
//!     .build()?;
//! overseer.ingest("app", &["a 5".into(), "b 500".into()]).await?;
//! overseer.drain().await?;
//! assert_eq!(overseer.runner().stats().incidents_opened, 1);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::check::Registry;
use crate::clock::{Clock, ManualClock, WallClock};
use crate::consumer::{Consumer, ReferenceSpec, References, StateBuilder};
use crate::dal::Dal;
use crate::error::{BoxError, Error};
use crate::escalation::Escalation;
use crate::ingest::{BatchReport, Ingestor};
use crate::model::{Model, SourceId, SourcePosition};
use crate::runner::{Execution, ModelSources, Runner, RunnerConfig, RunnerError};
use crate::store::Store;
use crate::topic::{InProcessTopic, Message, Topic};

/// One source of the pipeline: its id, the consumer of its format, and the
/// models it delivers (what freshness waits for, and what checks may read).
#[derive(Clone)]
pub struct SourceConfig {
    id: SourceId,
    consumer: Arc<dyn Consumer>,
    models: Vec<Model>,
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("id", &self.id)
            .field("format", &self.consumer.format())
            .field("models", &self.models)
            .finish()
    }
}

impl SourceConfig {
    /// A source named `id` read with `consumer`.
    pub fn new(id: impl AsRef<str>, consumer: impl Consumer) -> Result<Self, Error> {
        Ok(Self {
            id: SourceId::new(id)?,
            consumer: Arc::new(consumer),
            models: Vec::new(),
        })
    }

    /// A source read with a shared consumer.
    pub fn with_shared(id: impl AsRef<str>, consumer: Arc<dyn Consumer>) -> Result<Self, Error> {
        Ok(Self {
            id: SourceId::new(id)?,
            consumer,
            models: Vec::new(),
        })
    }

    /// The models this source delivers.
    pub fn models<I, S>(mut self, models: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for m in models {
            self.models.push(Model::new(m)?);
        }
        Ok(self)
    }
}

/// Why a pipeline could not be built or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// Something required was not configured.
    #[error("pipeline configuration: {0}")]
    Config(String),
    /// The check registry is invalid.
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// A store or ingestion error.
    #[error(transparent)]
    Core(#[from] Error),
    /// The topic failed.
    #[error("topic: {0}")]
    Topic(BoxError),
    /// [`Scenario::advance_to`](crate::testing::Scenario::advance_to) was
    /// asked to move the virtual clock back (a test that would otherwise go
    /// on as if time had moved).
    #[error(
        "cannot move the virtual clock back from {now} to {to}: advance_to takes a time at or after now()"
    )]
    ClockBackwards {
        /// The clock's time.
        now: crate::Timestamp,
        /// The earlier time asked for.
        to: crate::Timestamp,
    },
    /// A source failed.
    #[error("source {source_id}: {error}")]
    Source {
        /// The source.
        source_id: String,
        /// Its error.
        error: BoxError,
    },
}

/// Configures an [`Overseer`].
#[derive(Default)]
pub struct OverseerBuilder {
    store: Option<Store>,
    state_builders: Vec<Arc<dyn StateBuilder>>,
    sources: Vec<SourceConfig>,
    references: References,
    registry: Registry,
    escalations: HashMap<String, Arc<dyn Escalation>>,
    clock: Option<Arc<dyn Clock>>,
    manual: Option<Arc<ManualClock>>,
    topic: Option<Arc<dyn Topic>>,
    config: RunnerConfig,
    cache_bytes: Option<u64>,
}

impl OverseerBuilder {
    /// The memory budget, in estimated bytes, of each of the DAL's two
    /// caches: decoded updates, and records' latest folded states (default
    /// [`DEFAULT_CACHE_BYTES`](crate::dal::DEFAULT_CACHE_BYTES) each). A
    /// budget smaller than the records checks read within a few minutes of
    /// source time makes checks decode and fold updates again.
    ///
    /// The estimate counts the decoded data, not the allocator's rounding
    /// or the caches' own bookkeeping: in the `payments` example at 100,000
    /// transfers, the two caches at 64 MiB each took about 255 MiB of
    /// resident memory. Budget about half of the memory to give them.
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = Some(bytes);
        self
    }

    /// A clock driven by the caller (replays, simulations, tests): the
    /// runner measures delays on it, and [`Overseer::drain`] moves it past
    /// pending deadlines.
    pub fn manual_clock(mut self, clock: Arc<ManualClock>) -> Self {
        self.clock = Some(clock.clone());
        self.manual = Some(clock);
        self
    }

    /// The store (required).
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Adds the state builder of one format.
    pub fn state_builder(mut self, builder: impl StateBuilder) -> Self {
        self.state_builders.push(Arc::new(builder));
        self
    }

    /// Adds shared state builders (e.g. `overseer_builders::builders()`).
    pub fn state_builders(mut self, builders: impl IntoIterator<Item = Arc<dyn StateBuilder>>) -> Self {
        self.state_builders.extend(builders);
        self
    }

    /// Adds a source.
    pub fn source(mut self, source: SourceConfig) -> Self {
        self.sources.push(source);
        self
    }

    /// Adds a reference (`ledger_entries.transfer_id -> transfers`).
    pub fn reference(mut self, spec: ReferenceSpec) -> Self {
        self.references = self.references.with(spec);
        self
    }

    /// The checks to run (e.g. [`registered()`](crate::registered)).
    pub fn checks(mut self, registry: Registry) -> Self {
        self.registry = self.registry.extend(registry);
        self
    }

    /// Registers an escalation under the name checks use (`escalate = name`).
    pub fn escalation(mut self, name: impl Into<String>, escalation: impl Escalation) -> Self {
        self.escalations.insert(name.into(), Arc::new(escalation));
        self
    }

    /// The runner's clock (default: the wall clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The topic between ingestion and the runner (default: in-process).
    pub fn topic(mut self, topic: Arc<dyn Topic>) -> Self {
        self.topic = Some(topic);
        self
    }

    /// Runner tuning.
    pub fn runner_config(mut self, config: RunnerConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates everything at once and builds the pipeline.
    pub fn build(self) -> Result<Overseer, PipelineError> {
        let store = self.store.ok_or_else(|| {
            PipelineError::Config("no store: call .store(Store::in_memory()) or Store::local(dir)".into())
        })?;
        if self.sources.is_empty() {
            return Err(PipelineError::Config(
                "no sources: add at least one .source(SourceConfig::new(..))".into(),
            ));
        }
        let dal = self
            .state_builders
            .into_iter()
            .fold(Dal::new(store.clone()), Dal::with_shared_builder)
            .indexed();
        let dal = match self.cache_bytes {
            Some(bytes) => dal.with_cache_bytes(bytes),
            None => dal,
        };
        let mut model_sources: ModelSources = HashMap::new();
        let mut ingestors = HashMap::new();
        for s in &self.sources {
            if ingestors.contains_key(&s.id) {
                return Err(PipelineError::Config(format!(
                    "source {} is configured twice",
                    s.id
                )));
            }
            if s.models.is_empty() {
                return Err(PipelineError::Config(format!(
                    "source {} delivers no model: list them with SourceConfig::models([..])",
                    s.id
                )));
            }
            // Without its format's builder no record of the source can be
            // read: every check over it would stay indeterminate, silently.
            let format = s.consumer.format();
            if !dal.has_builder(&format) {
                let known = dal.formats();
                return Err(PipelineError::Config(format!(
                    "source {} delivers format {:?}, which no state builder reads, so no record of it \
                     could be loaded: add .state_builders(overseer_builders::builders()) or \
                     .state_builder(..) for it (state builders: {})",
                    s.id,
                    format.as_str(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            for m in &s.models {
                model_sources.entry(m.clone()).or_default().push(s.id.clone());
            }
            ingestors.insert(
                s.id.clone(),
                Ingestor::new(
                    store.clone(),
                    s.id.clone(),
                    s.consumer.clone(),
                    self.references.clone(),
                )
                .with_dal(&dal),
            );
        }
        let clock = self.clock.unwrap_or_else(|| Arc::new(WallClock));
        let runner = Runner::new(
            dal,
            clock,
            &self.registry,
            &model_sources,
            self.escalations,
            self.config,
        )?;
        Ok(Overseer {
            store,
            intake: Intake {
                ingestors: Arc::new(ingestors),
                topic: self.topic.unwrap_or_else(|| Arc::new(InProcessTopic::new())),
            },
            runner,
            manual: self.manual,
        })
    }
}

/// A batch source for [`Overseer::run`]: hands over batches of raw events
/// and is told, after each batch is stored, the batch's last position.
#[async_trait]
pub trait Source: Send + 'static {
    /// The source's id (as configured with [`SourceConfig`]).
    fn id(&self) -> &SourceId;

    /// The next batch; `None` when the source is exhausted.
    async fn next_batch(&mut self) -> Result<Option<Vec<Bytes>>, BoxError>;

    /// Acknowledges that everything up to `position` is durably stored.
    async fn ack(&mut self, position: Option<&SourcePosition>) -> Result<(), BoxError>;
}

/// The embedded pipeline. Drive it step by step ([`ingest`](Self::ingest),
/// [`tick`](Self::tick), [`drain`](Self::drain)) or let
/// [`run`](Self::run) drive it from [`Source`]s until shutdown.
pub struct Overseer {
    store: Store,
    intake: Intake,
    runner: Runner,
    manual: Option<Arc<ManualClock>>,
}

impl std::fmt::Debug for Overseer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overseer")
            .field("sources", &self.intake.ingestors.keys().collect::<Vec<_>>())
            .field("runner", &self.runner)
            .finish_non_exhaustive()
    }
}

/// The ingestion side of an [`Overseer`] ([`Overseer::intake`]): cheap to
/// clone, usable from any task or thread. A batch's notifications reach the
/// runner (at its next [`tick`](Overseer::tick)) only once the whole batch is
/// stored, so ingesting while checks run never shows a check half a batch.
#[derive(Clone)]
pub struct Intake {
    ingestors: Arc<HashMap<SourceId, Ingestor>>,
    topic: Arc<dyn Topic>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("sources", &self.ingestors.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Intake {
    fn ingestor(&self, source: &str) -> Result<&Ingestor, PipelineError> {
        let id = SourceId::new(source)?;
        self.ingestors.get(&id).ok_or_else(|| {
            let mut known: Vec<&str> = self.ingestors.keys().map(SourceId::as_str).collect();
            known.sort_unstable();
            PipelineError::Config(format!("unknown source {source:?} (known: {})", known.join(", ")))
        })
    }

    /// Ingests one batch of `source` (stores it, acknowledges it, publishes
    /// its notifications and watermark to the topic).
    pub async fn ingest(&self, source: &str, batch: &[Bytes]) -> Result<BatchReport, PipelineError> {
        let ingestor = self.ingestor(source)?;
        let mut report = ingestor.ingest_and_ack(batch).await?;
        let mut messages: Vec<Message> = report
            .notifications
            .drain(..)
            .map(Message::Notification)
            .collect();
        if let Some(time) = report.watermark {
            messages.push(Message::Watermark {
                source: ingestor.source().clone(),
                time,
            });
        }
        self.topic.publish(messages).await.map_err(PipelineError::Topic)?;
        Ok(report)
    }

    /// Records that `source` has delivered everything up to `time` (a
    /// heartbeat of an idle source).
    pub async fn heartbeat(&self, source: &str, time: crate::Timestamp) -> Result<(), PipelineError> {
        let source = self.ingestor(source)?.source().clone();
        self.topic
            .publish(vec![Message::Watermark { source, time }])
            .await
            .map_err(PipelineError::Topic)
    }
}

/// How many messages the runner takes from the topic at once.
const POLL_MAX: usize = 65_536;

impl Overseer {
    /// Starts configuring a pipeline.
    pub fn builder() -> OverseerBuilder {
        OverseerBuilder::default()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The runner (stats, open incidents, watermarks).
    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// A handle that ingests into this pipeline from other tasks or threads
    /// while the pipeline runs its checks ([`tick`](Self::tick)).
    pub fn intake(&self) -> Intake {
        self.intake.clone()
    }

    /// Ingests one batch of `source` (stores it, acknowledges it, publishes
    /// its notifications and watermark to the topic).
    pub async fn ingest(&self, source: &str, batch: &[Bytes]) -> Result<BatchReport, PipelineError> {
        self.intake.ingest(source, batch).await
    }

    /// Records that `source` has delivered everything up to `time` (a
    /// heartbeat of an idle source).
    pub async fn heartbeat(&self, source: &str, time: crate::Timestamp) -> Result<(), PipelineError> {
        self.intake.heartbeat(source, time).await
    }

    /// Takes what the topic holds into the runner, then runs every ready
    /// check; returns the executions.
    pub async fn tick(&mut self) -> Result<Vec<Execution>, PipelineError> {
        self.absorb().await?;
        Ok(self.runner.run_ready().await?)
    }

    /// Takes what the topic holds into the runner without running checks:
    /// advances the watermarks, selects the checks the stored updates
    /// trigger and schedules their runs. Returns how many messages it took.
    ///
    /// [`tick`](Self::tick) does this first. Calling it while waiting for
    /// ingestion (for a batch of another task or thread to be stored) does
    /// that work in time that would otherwise be idle, and leaves the next
    /// tick less to do. A trigger taken in is stamped with the clock's time
    /// then ([`Trigger::received_at`](crate::strategy::Trigger::received_at),
    /// which [`Immediate`](crate::strategy::Immediate) reads as of); with
    /// the clock unchanged, the runs are those `tick` alone would make.
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use overseer_core::pipeline::{Overseer, SourceConfig};
    /// use overseer_core::testing::LinesConsumer;
    /// use overseer_core::{Registry, Store};
    /// # use overseer_core::{check::{Check, Verdict}, view::{DataView, ViewContext, ViewError, ViewSpec}};
    /// # #[derive(serde::Deserialize)] struct Line { n: i64 }
    /// # impl DataView for Line {
    /// #     fn spec() -> ViewSpec { ViewSpec { root: "lines", joins: vec![] } }
    /// #     async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> { ctx.root_as().await }
    /// # }
    /// # async fn small(l: Line) -> Verdict { if l.n < 100 { Verdict::pass() } else { Verdict::fail("too big") } }
    ///
    /// let mut overseer = Overseer::builder()
    ///     .store(Store::in_memory())
    ///     .state_builder(LinesConsumer)
    ///     .source(SourceConfig::new("app", LinesConsumer)?.models(["lines"])?)
    ///     .checks(Registry::new().add(Check::new("small", small)))
    ///     .build()?;
    /// let intake = overseer.intake();
    /// let batch = tokio::spawn(async move { intake.ingest("app", &["a 5".into(), "b 500".into()]).await });
    /// batch.await??;
    /// // Selected and scheduled, not run yet.
    /// assert!(overseer.absorb().await? >= 2);
    /// assert_eq!(overseer.runner().pending(), 2);
    /// assert_eq!(overseer.runner().stats().executions, 0);
    /// overseer.drain().await?;
    /// assert_eq!(overseer.runner().stats().executions, 2);
    /// # Ok(()) }
    /// ```
    pub async fn absorb(&mut self) -> Result<usize, PipelineError> {
        let mut taken = 0;
        loop {
            let messages = self
                .intake
                .topic
                .poll(POLL_MAX)
                .await
                .map_err(PipelineError::Topic)?;
            if messages.is_empty() {
                break;
            }
            taken += messages.len();
            let mut notifications = Vec::with_capacity(messages.len());
            for m in messages {
                match m {
                    Message::Notification(n) => notifications.push(n),
                    Message::Watermark { source, time } => {
                        self.runner.notify(&notifications).await?;
                        notifications.clear();
                        self.runner.observe_watermark(&source, time);
                    }
                }
            }
            self.runner.notify(&notifications).await?;
        }
        Ok(taken)
    }

    /// Waits until every escalation queued so far has been delivered, for
    /// at most [`RunnerConfig::flush_timeout`]; returns whether they all
    /// were (see [`Runner::flush_escalations`]).
    pub async fn flush_escalations(&mut self) -> bool {
        self.runner.flush_escalations().await
    }

    /// Runs every pending check, as if every delay had passed: the
    /// [`ManualClock`] given to [`OverseerBuilder::manual_clock`] is moved
    /// to each pending deadline in turn. With another clock, runs whose time
    /// has not come stay pending. Used at the end of a replay or a test.
    pub async fn drain(&mut self) -> Result<Vec<Execution>, PipelineError> {
        let mut all = self.tick().await?;
        let Some(clock) = self.manual.clone() else {
            return Ok(all);
        };
        while let Some(deadline) = self.runner.next_deadline() {
            clock.advance_to(deadline);
            let ran = self.tick().await?;
            if ran.is_empty() && self.runner.next_deadline() == Some(deadline) {
                // Nothing can make progress (cannot happen with the built-in
                // strategies, whose deadlines always make their runs ready).
                break;
            }
            all.extend(ran);
        }
        Ok(all)
    }

    /// Runs the pipeline from `sources` until they are exhausted or
    /// `shutdown` completes; then stops reading, runs what is ready, and
    /// returns the pipeline (for its stats). Each source is read in its own
    /// task; a batch is acknowledged to its source only once stored.
    pub async fn run(
        mut self,
        sources: Vec<Box<dyn Source>>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Self, PipelineError> {
        let (done_tx, mut done_rx) =
            tokio::sync::mpsc::channel::<Result<(), PipelineError>>(sources.len().max(1));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut handles = Vec::new();
        let expected = sources.len();
        // Every source is matched with its ingestor before any is started:
        // one started before the error would ingest and acknowledge batches
        // no runner checks.
        let sources = sources
            .into_iter()
            .map(|source| match self.intake.ingestors.get(source.id()) {
                Some(ingestor) => Ok((source, ingestor.clone())),
                None => Err(PipelineError::Config(format!(
                    "source {} is not configured",
                    source.id()
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (mut source, ingestor) in sources {
            let topic = self.intake.topic.clone();
            let done = done_tx.clone();
            let stop = stop.clone();
            handles.push(tokio::spawn(async move {
                let result = pump(&mut *source, &ingestor, topic.as_ref(), stop).await;
                let _ = done.send(result).await;
            }));
        }
        drop(done_tx);
        tokio::pin!(shutdown);
        let mut finished = 0;
        // Ends at shutdown, when every source is exhausted, or with the first
        // error (of a source, or of a tick).
        let outcome: Result<(), PipelineError> = async {
            loop {
                let sleep_until = self.runner.next_deadline();
                let now = self.runner.clock().now();
                let nap = sleep_until
                    .map(|t| {
                        std::time::Duration::from_micros(
                            (t.as_micros() - now.as_micros()).max(0).unsigned_abs(),
                        )
                    })
                    .unwrap_or(std::time::Duration::from_secs(1))
                    .min(std::time::Duration::from_secs(1));
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    r = done_rx.recv(), if finished < expected => {
                        match r {
                            Some(Ok(())) => finished += 1,
                            Some(Err(e)) => return Err(e),
                            None => finished = expected,
                        }
                        if finished == expected {
                            return Ok(());
                        }
                    }
                    _ = self.intake.topic.wait() => {}
                    _ = tokio::time::sleep(nap) => {}
                }
                self.tick().await?;
            }
        }
        .await;
        // The other sources finish the batch they are storing (and
        // acknowledge it), whatever ended the loop: it is checked before
        // returning, or no run would ever check it.
        let _ = stop_tx.send(true);
        for h in handles {
            let _ = h.await;
        }
        let last = self.tick().await;
        self.flush_escalations().await;
        match (outcome, last) {
            (Ok(()), Ok(_)) => {}
            (Ok(()), Err(e)) => return Err(e),
            (Err(e), last) => {
                if let Err(tick) = last {
                    tracing::error!(error = %tick, "checking the last stored batches failed");
                }
                return Err(e);
            }
        }
        Ok(self)
    }
}

/// Reads one source until it is exhausted or told to stop: each batch is
/// stored, then published, then acknowledged to the source.
async fn pump(
    source: &mut dyn Source,
    ingestor: &Ingestor,
    topic: &dyn Topic,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    fn source_err(id: &SourceId, error: BoxError) -> PipelineError {
        PipelineError::Source {
            source_id: id.to_string(),
            error,
        }
    }
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let batch = tokio::select! {
            _ = stop.changed() => return Ok(()),
            b = source.next_batch() => b.map_err(|e| source_err(ingestor.source(), e))?,
        };
        let Some(batch) = batch else { return Ok(()) };
        let mut report = ingestor.ingest_and_ack(&batch).await?;
        let mut messages: Vec<Message> = report
            .notifications
            .drain(..)
            .map(Message::Notification)
            .collect();
        if let Some(time) = report.watermark {
            messages.push(Message::Watermark {
                source: ingestor.source().clone(),
                time,
            });
        }
        topic.publish(messages).await.map_err(PipelineError::Topic)?;
        source
            .ack(report.last_position.as_ref())
            .await
            .map_err(|e| source_err(ingestor.source(), e))?;
    }
}
