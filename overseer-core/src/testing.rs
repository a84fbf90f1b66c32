//! Helpers for tests and documentation examples.

use serde_json::{Map, Value, json};

use crate::change::Change;
use crate::consumer::{Consumed, ConsumedRecord, Consumer, StateBuilder};
use crate::error::ConsumeError;
use crate::model::{Format, Operation, RecordKey, SourcePosition, UpdateDocument};
use crate::time::Timestamp;

/// A tiny line format for examples and tests: `ID N` sets record `ID` of
/// model `lines` to `{"id": ID, "n": N}`, committed at Unix second `N`;
/// `ID -` deletes it. Anything else is rejected.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinesConsumer;

impl LinesConsumer {
    fn parse(raw: &[u8]) -> Result<(String, Option<i64>), ConsumeError> {
        let reject = |reason: &str| ConsumeError::new("lines", reason);
        let text = std::str::from_utf8(raw).map_err(|_| reject("not UTF-8"))?;
        let (id, n) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| reject("expected `ID N`"))?;
        if n == "-" {
            return Ok((id.to_owned(), None));
        }
        let n = n.parse().map_err(|_| reject("N is not an integer"))?;
        Ok((id.to_owned(), Some(n)))
    }

    fn change(id: &str, n: Option<i64>) -> Change {
        match n {
            None => Change::Delete,
            Some(n) => {
                let mut m = Map::new();
                m.insert("id".into(), json!(id));
                m.insert("n".into(), Value::from(n));
                Change::Full(m)
            }
        }
    }
}

impl Consumer for LinesConsumer {
    fn format(&self) -> Format {
        Format::new("lines").unwrap_or_else(|_| unreachable!("non-empty literal"))
    }

    fn consume(&self, raw: &[u8]) -> Result<Consumed, ConsumeError> {
        let (id, n) = Self::parse(raw)?;
        let key = RecordKey::new("lines", &id).map_err(|e| ConsumeError::new("lines", e.to_string()))?;
        Ok(Consumed::Record(ConsumedRecord {
            key,
            operation: if n.is_some() {
                Operation::Insert
            } else {
                Operation::Delete
            },
            commit_time: Timestamp::from_secs(n.unwrap_or(0)),
            position: SourcePosition::default().with_digest_of(raw),
            change: Self::change(&id, n),
        }))
    }
}

impl StateBuilder for LinesConsumer {
    fn format(&self) -> Format {
        Consumer::format(self)
    }

    fn decode(&self, update: &UpdateDocument) -> Result<Change, ConsumeError> {
        let (id, n) = Self::parse(&update.raw)?;
        Ok(Self::change(&id, n))
    }
}

/// A scenario runner for tests of checks: declare sources, feed events,
/// move a virtual clock, and assert executions and incidents.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use overseer_core::check::{Check, Verdict};
/// use overseer_core::strategy::FixedDelay;
/// use overseer_core::testing::{LinesConsumer, Scenario};
/// use overseer_core::{Registry, Timestamp};
/// # use overseer_core::view::{DataView, ViewContext, ViewError, ViewSpec};
/// # #[derive(serde::Deserialize)] struct Line { n: i64 }
/// # impl DataView for Line {
/// #     fn spec() -> ViewSpec { ViewSpec { root: "lines", joins: vec![] } }
/// #     async fn load(ctx: &ViewContext<'_>) -> Result<Self, ViewError> { ctx.root_as().await }
/// # }
///
/// async fn small(line: Line) -> Verdict {
///     if line.n < 100 { Verdict::pass() } else { Verdict::fail("too big") }
/// }
///
/// let checks = Registry::new()
///     .add(Check::new("small", small).with_strategy(FixedDelay(Duration::from_secs(60))));
/// let mut s = Scenario::builder(checks)
///     .source("app", LinesConsumer, &["lines"])
///     .state_builder(LinesConsumer)
///     .start(Timestamp::from_secs(0))?;
///
/// s.feed("app", ["a 500"]).await?;              // committed at t = 500 s
/// s.advance_to(Timestamp::from_secs(559)).await?;
/// assert!(s.open_incidents().is_empty());       // the 60 s delay has not passed
/// s.advance_to(Timestamp::from_secs(560)).await?;
/// assert_eq!(s.open_incidents()[0].message, "too big");
/// # Ok(()) }
/// ```
pub struct Scenario {
    overseer: crate::pipeline::Overseer,
    clock: std::sync::Arc<crate::clock::ManualClock>,
    executions: Vec<crate::runner::Execution>,
}

/// Configures a [`Scenario`].
pub struct ScenarioBuilder {
    builder: crate::pipeline::OverseerBuilder,
    error: Option<crate::pipeline::PipelineError>,
}

impl ScenarioBuilder {
    /// Adds a source delivering `models` through `consumer`.
    pub fn source(mut self, id: &str, consumer: impl Consumer, models: &[&str]) -> Self {
        match crate::pipeline::SourceConfig::new(id, consumer).and_then(|s| s.models(models.iter().copied()))
        {
            Ok(s) => self.builder = self.builder.source(s),
            Err(e) => self.error = Some(e.into()),
        }
        self
    }

    /// Adds a state builder.
    pub fn state_builder(mut self, builder: impl StateBuilder) -> Self {
        self.builder = self.builder.state_builder(builder);
        self
    }

    /// Adds shared state builders.
    pub fn state_builders(
        mut self,
        builders: impl IntoIterator<Item = std::sync::Arc<dyn StateBuilder>>,
    ) -> Self {
        self.builder = self.builder.state_builders(builders);
        self
    }

    /// Adds a reference (`model.field -> target`).
    pub fn reference(mut self, spec: &str) -> Self {
        match crate::consumer::ReferenceSpec::parse(spec) {
            Ok(r) => self.builder = self.builder.reference(r),
            Err(e) => self.error = Some(e.into()),
        }
        self
    }

    /// Registers an escalation.
    pub fn escalation(mut self, name: &str, e: impl crate::escalation::Escalation) -> Self {
        self.builder = self.builder.escalation(name, e);
        self
    }

    /// Tunes the runner (concurrency, retries, audit); the default is
    /// [`RunnerConfig::default`](crate::runner::RunnerConfig::default).
    pub fn runner_config(mut self, config: crate::runner::RunnerConfig) -> Self {
        self.builder = self.builder.runner_config(config);
        self
    }

    /// Builds the scenario with its virtual clock at `start`.
    pub fn start(self, start: Timestamp) -> Result<Scenario, crate::pipeline::PipelineError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let clock = std::sync::Arc::new(crate::clock::ManualClock::new(start));
        let overseer = self
            .builder
            .store(crate::store::Store::in_memory())
            .manual_clock(clock.clone())
            .build()?;
        Ok(Scenario {
            overseer,
            clock,
            executions: Vec::new(),
        })
    }
}

impl Scenario {
    /// Starts configuring a scenario for `checks`.
    pub fn builder(checks: crate::check::Registry) -> ScenarioBuilder {
        ScenarioBuilder {
            builder: crate::pipeline::Overseer::builder().checks(checks),
            error: None,
        }
    }

    /// Feeds raw events to a source (delivered now), then runs what is ready.
    pub async fn feed<I, E>(
        &mut self,
        source: &str,
        events: I,
    ) -> Result<crate::ingest::BatchReport, crate::pipeline::PipelineError>
    where
        I: IntoIterator<Item = E>,
        E: AsRef<[u8]>,
    {
        let batch: Vec<bytes::Bytes> = events
            .into_iter()
            .map(|e| bytes::Bytes::copy_from_slice(e.as_ref()))
            .collect();
        let report = self.overseer.ingest(source, &batch).await?;
        let ran = self.overseer.tick().await?;
        self.overseer.flush_escalations().await;
        self.executions.extend(ran);
        Ok(report)
    }

    /// A heartbeat: `source` has delivered everything up to `time`.
    pub async fn heartbeat(
        &mut self,
        source: &str,
        time: Timestamp,
    ) -> Result<(), crate::pipeline::PipelineError> {
        self.overseer.heartbeat(source, time).await?;
        let ran = self.overseer.tick().await?;
        self.overseer.flush_escalations().await;
        self.executions.extend(ran);
        Ok(())
    }

    /// Moves the virtual clock to `t` and runs what becomes ready.
    ///
    /// The clock only moves forward: a `t` before [`now`](Self::now) is
    /// [`PipelineError::ClockBackwards`](crate::pipeline::PipelineError::ClockBackwards)
    /// (nothing runs), rather than a silent no-op that would let a test
    /// assert on a time it never reached.
    pub async fn advance_to(&mut self, t: Timestamp) -> Result<(), crate::pipeline::PipelineError> {
        use crate::clock::Clock;
        let now = self.clock.now();
        if t < now {
            return Err(crate::pipeline::PipelineError::ClockBackwards { now, to: t });
        }
        self.clock.advance_to(t);
        let ran = self.overseer.tick().await?;
        self.overseer.flush_escalations().await;
        self.executions.extend(ran);
        Ok(())
    }

    /// Moves the virtual clock past every pending deadline, running everything.
    pub async fn finish(&mut self) -> Result<(), crate::pipeline::PipelineError> {
        let ran = self.overseer.drain().await?;
        self.overseer.flush_escalations().await;
        self.executions.extend(ran);
        Ok(())
    }

    /// The virtual clock's time.
    pub fn now(&self) -> Timestamp {
        use crate::clock::Clock;
        self.clock.now()
    }

    /// Every execution so far, in execution order.
    pub fn executions(&self) -> &[crate::runner::Execution] {
        &self.executions
    }

    /// The open incidents, ordered by check and record.
    pub fn open_incidents(&self) -> Vec<crate::escalation::Incident> {
        let mut v: Vec<_> = self.overseer.runner().open_incidents().cloned().collect();
        v.sort_by(|a, b| (&a.check, &a.root).cmp(&(&b.check, &b.root)));
        v
    }

    /// The pipeline (store, runner stats).
    pub fn overseer(&self) -> &crate::pipeline::Overseer {
        &self.overseer
    }
}
