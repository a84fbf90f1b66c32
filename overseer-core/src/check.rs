//! Checks: plain async functions over a [`DataView`] that
//! return a [`Verdict`], erased into [`Check`]s the runner can call.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::dal::Dal;
use crate::model::RecordKey;
use crate::strategy::{ExecutionStrategy, Freshness};
use crate::time::Timestamp;
use crate::view::{DataView, ViewContext, ViewError, ViewSpec};

/// Why a check failed: a message for people and structured details for tools.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// What disagrees, in one sentence.
    pub message: String,
    /// Structured details (amounts, ids, ...), `null` if none.
    pub details: Value,
}

impl Failure {
    /// A failure with a message and no details.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            details: Value::Null,
        }
    }

    /// Adds structured details (anything serde can serialize).
    pub fn with_details(mut self, details: impl Serialize) -> Self {
        self.details = serde_json::to_value(details).unwrap_or(Value::Null);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// What a check concluded about one root record.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The systems agree.
    Pass,
    /// The systems disagree.
    Fail(Failure),
    /// The check does not apply to this record (yet).
    NotApplicable,
}

impl Verdict {
    /// The systems agree.
    pub fn pass() -> Self {
        Verdict::Pass
    }

    /// The systems disagree.
    ///
    /// ```
    /// use overseer_core::check::Verdict;
    /// let v = Verdict::fail("completed transfer has no bank payment");
    /// assert!(v.is_fail());
    /// ```
    pub fn fail(message: impl Into<String>) -> Self {
        Verdict::Fail(Failure::new(message))
    }

    /// The systems disagree, with structured details.
    pub fn fail_with(message: impl Into<String>, details: impl Serialize) -> Self {
        Verdict::Fail(Failure::new(message).with_details(details))
    }

    /// The check does not apply.
    pub fn not_applicable() -> Self {
        Verdict::NotApplicable
    }

    /// Whether this is a failure.
    pub fn is_fail(&self) -> bool {
        matches!(self, Verdict::Fail(_))
    }
}

/// What a check function may return: a [`Verdict`] or `Result<(), Failure>`
/// (so `?` and [`ensure!`](crate::ensure) work).
#[diagnostic::on_unimplemented(
    message = "a check must return `Verdict` or `Result<(), Failure>`, not `{Self}`",
    note = "return `Verdict::pass()` / `Verdict::fail(..)`, or `Ok(())` / `Err(Failure::new(..))`"
)]
pub trait IntoVerdict {
    /// Converts into a verdict.
    fn into_verdict(self) -> Verdict;
}

impl IntoVerdict for Verdict {
    fn into_verdict(self) -> Verdict {
        self
    }
}

impl IntoVerdict for Result<(), Failure> {
    fn into_verdict(self) -> Verdict {
        match self {
            Ok(()) => Verdict::Pass,
            Err(f) => Verdict::Fail(f),
        }
    }
}

/// Returns `Err(Failure)` from the enclosing check unless a condition holds.
///
/// ```
/// use overseer_core::{ensure, check::Failure};
/// fn amounts_agree(a: i64, b: i64) -> Result<(), Failure> {
///     ensure!(a == b, "amounts differ: {a} vs {b}");
///     Ok(())
/// }
/// assert_eq!(amounts_agree(1, 2).unwrap_err().message, "amounts differ: 1 vs 2");
/// ```
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return ::core::result::Result::Err($crate::check::Failure::new(::std::format!($($fmt)+)));
        }
    };
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A check's function with its view type erased. The future it returns
/// borrows the DAL, the record and the function itself: an execution
/// clones nothing.
trait RunCheck: Send + Sync {
    fn run<'a>(
        &'a self,
        dal: &'a Dal,
        root: &'a RecordKey,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<Verdict, ViewError>>;
}

/// A check function taking the data view `V`.
struct CheckFn<V, F> {
    f: F,
    view: std::marker::PhantomData<fn() -> V>,
}

impl<V, F, Fut, R> RunCheck for CheckFn<V, F>
where
    V: DataView,
    F: Fn(V) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoVerdict,
{
    fn run<'a>(
        &'a self,
        dal: &'a Dal,
        root: &'a RecordKey,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<Verdict, ViewError>> {
        Box::pin(async move {
            let view = V::load(&ViewContext::new(dal, root, at)).await?;
            Ok((self.f)(view).await.into_verdict())
        })
    }
}

/// The default timeout of a check execution.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The escalation used when a check names none.
pub const DEFAULT_ESCALATION: &str = "log";

/// A check ready to run: its function, erased, plus what the runner needs
/// to know about it (name, view spec, trigger models, strategy, timeout,
/// escalation, where it was defined).
///
/// `#[check]` builds these; by hand:
///
/// ```
/// # use overseer_core::view::{DataView, ViewContext, ViewError, ViewSpec};
/// # struct Transfer;
/// # impl DataView for Transfer {
/// #     fn spec() -> ViewSpec { ViewSpec { root: "transfers", joins: vec![] } }
/// #     async fn load(_: &ViewContext<'_>) -> Result<Self, ViewError> { Ok(Transfer) }
/// # }
/// use std::time::Duration;
/// use overseer_core::check::{Check, Verdict};
///
/// async fn always_fine(_t: Transfer) -> Verdict { Verdict::pass() }
///
/// let check = Check::new("always_fine", always_fine).with_timeout(Duration::from_secs(1));
/// assert_eq!(check.name(), "always_fine");
/// assert_eq!(check.models(), ["transfers"]);
/// ```
#[derive(Clone)]
pub struct Check {
    name: Cow<'static, str>,
    location: Location,
    spec: ViewSpec,
    on: Option<Vec<&'static str>>,
    strategy: Arc<dyn ExecutionStrategy>,
    timeout: Duration,
    escalation: Cow<'static, str>,
    run: Arc<dyn RunCheck>,
}

/// Where a check was defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Location {
    /// `module_path!()`.
    pub module_path: &'static str,
    /// `file!()`.
    pub file: &'static str,
    /// `line!()`.
    pub line: u32,
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("location", &self.location)
            .field("spec", &self.spec)
            .field("on", &self.on)
            .field("strategy", &self.strategy)
            .field("timeout", &self.timeout)
            .field("escalation", &self.escalation)
            .finish_non_exhaustive()
    }
}

impl Check {
    /// A check named `name` running `f`, with the defaults: triggered by
    /// every model its view reads, the [`Freshness`] strategy, a 5 s
    /// timeout, the `log` escalation.
    pub fn new<V, F, Fut, R>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        V: DataView,
        F: Fn(V) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoVerdict,
    {
        let run = CheckFn {
            f,
            view: std::marker::PhantomData,
        };
        Self {
            name: name.into(),
            location: Location::default(),
            spec: V::spec(),
            on: None,
            strategy: Arc::new(Freshness::default()),
            timeout: DEFAULT_TIMEOUT,
            escalation: Cow::Borrowed(DEFAULT_ESCALATION),
            run: Arc::new(run),
        }
    }

    /// Records where the check was defined.
    pub fn at(mut self, module_path: &'static str, file: &'static str, line: u32) -> Self {
        self.location = Location {
            module_path,
            file,
            line,
        };
        self
    }

    /// Only updates of these models trigger the check (default: every model
    /// its view reads).
    pub fn on(mut self, models: &[&'static str]) -> Self {
        self.on = Some(models.to_vec());
        self
    }

    /// Schedules the check with `strategy` (default [`Freshness`]).
    pub fn with_strategy(mut self, strategy: impl ExecutionStrategy) -> Self {
        self.strategy = Arc::new(strategy);
        self
    }

    /// Schedules the check with a shared strategy.
    pub fn with_shared_strategy(mut self, strategy: Arc<dyn ExecutionStrategy>) -> Self {
        self.strategy = strategy;
        self
    }

    /// Gives up an execution after `timeout` (default 5 s).
    ///
    /// A timeout ends a check that awaits; a check that blocks its thread
    /// cannot be interrupted, and the runner stops waiting for it once no
    /// run of its round has ended for longer than the round's longest
    /// timeout plus a second (see `docs/checks.md`).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Escalates failures through the escalation registered under `name`
    /// (default `log`).
    pub fn escalate_to(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.escalation = name.into();
        self
    }

    /// The check's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the check was defined.
    pub fn location(&self) -> Location {
        self.location
    }

    /// What its view reads.
    pub fn spec(&self) -> &ViewSpec {
        &self.spec
    }

    /// The models whose updates trigger it.
    pub fn models(&self) -> Vec<&'static str> {
        match &self.on {
            Some(on) => on.clone(),
            None => self.spec.models().collect(),
        }
    }

    /// Its strategy.
    pub fn strategy(&self) -> &Arc<dyn ExecutionStrategy> {
        &self.strategy
    }

    /// Its timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The name of its escalation.
    pub fn escalation(&self) -> &str {
        &self.escalation
    }

    /// Loads the view of `root` as of `at` and runs the check on it.
    pub async fn run(&self, dal: &Dal, root: &RecordKey, at: Timestamp) -> Result<Verdict, ViewError> {
        self.run.run(dal, root, at).await
    }
}

/// A registration submitted by `#[check]` through `inventory`.
#[doc(hidden)]
pub struct CheckRegistration {
    /// Builds the check.
    pub build: fn() -> Check,
}

inventory::collect!(CheckRegistration);

/// Every check registered with `#[check]` in the crates linked into this
/// binary, sorted by name.
///
/// Checks in a crate that nothing else references are not linked
/// (rust-lang/rust#64731): add `use my_checks as _;` to your binary, or
/// register them by hand with [`Registry::add`].
pub fn registered() -> Registry {
    let mut checks: Vec<Check> = inventory::iter::<CheckRegistration>
        .into_iter()
        .map(|r| (r.build)())
        .collect();
    checks.sort_by(|a, b| a.name.cmp(&b.name));
    Registry { checks }
}

/// A set of checks: those registered with `#[check]` ([`registered`]), those
/// added by hand, or both.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    checks: Vec<Check>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check.
    #[allow(clippy::should_implement_trait)] // the builder-style name users expect
    pub fn add(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    /// Adds every check of another registry.
    pub fn extend(mut self, other: Registry) -> Self {
        self.checks.extend(other.checks);
        self
    }

    /// Keeps only the checks for which `keep` is true.
    pub fn filter(mut self, keep: impl Fn(&Check) -> bool) -> Self {
        self.checks.retain(|c| keep(c));
        self
    }

    /// The checks.
    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    /// Validates the whole registry at once against the known models and
    /// escalations, reporting every problem in one error: no checks at all,
    /// duplicate names, unknown models, unknown escalations.
    pub fn validate(&self, models: &[&str], escalations: &[&str]) -> Result<(), RegistryError> {
        let mut problems = Vec::new();
        if self.checks.is_empty() {
            problems.push(
                "no checks: none was registered with #[check] in a linked crate (add `use my_checks as _;` to your binary) and none was added by hand".to_owned(),
            );
        }
        let mut seen: std::collections::HashMap<&str, Location> = std::collections::HashMap::new();
        for check in &self.checks {
            let here = check.location;
            if check.name.trim().is_empty() {
                problems.push(format!(
                    "a check defined at {}:{} has an empty name: give it one with `Check::new(\"name\", ..)`",
                    here.file, here.line
                ));
            }
            if let Some(first) = seen.insert(&check.name, here) {
                problems.push(format!(
                    "duplicate check name {:?}: defined at {}:{} and at {}:{}",
                    check.name, first.file, first.line, here.file, here.line
                ));
            }
            let mut known_models: Vec<&str> = models.to_vec();
            known_models.sort_unstable();
            for model in check.spec.models().chain(check.models()) {
                if !models.contains(&model) {
                    problems.push(format!(
                        "check {:?} reads unknown model {model:?} (known models: {}): list it in the \
                         models of the source that delivers it (SourceConfig::models), or correct \
                         the view's model name",
                        check.name,
                        known_models.join(", ")
                    ));
                }
            }
            // An update of a model the view does not read cannot be
            // resolved to a root record: such a trigger never runs the check.
            let read: Vec<&str> = check.spec.models().collect();
            for model in check.models() {
                if !read.contains(&model) {
                    problems.push(format!(
                        "check {:?} is triggered on model {model:?}, which its view does not read \
                         (it reads: {}): its updates could never run the check",
                        check.name,
                        read.join(", ")
                    ));
                }
            }
            if !escalations.contains(&check.escalation()) {
                problems.push(format!(
                    "check {:?} escalates to unknown escalation {:?} (known: {}): register it \
                     under that name (OverseerBuilder::escalation), or correct the name",
                    check.name,
                    check.escalation,
                    escalations.join(", ")
                ));
            }
        }
        problems.dedup();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RegistryError { problems })
        }
    }
}

/// Every problem found in a registry at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid check registry:\n  - {}", problems.join("\n  - "))]
pub struct RegistryError {
    /// One sentence per problem.
    pub problems: Vec<String>,
}
