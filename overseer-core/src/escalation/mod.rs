//! Escalation: what happens when an incident opens or resolves.
//!
//! A failing (check, root record) opens one [`Incident`]; later failures
//! update it; a later pass resolves it. Escalations are told about each
//! transition, so a webhook pages once and resolves once — no alert storms.

use std::collections::HashMap;
use std::fmt::{self, Debug};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;

use crate::error::BoxError;
use crate::model::RecordKey;
use crate::time::Timestamp;

#[cfg(feature = "webhook")]
mod webhook;
#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub use webhook::{Severity, Webhook};

/// One incident: a (check, root record) that fails.
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    /// The failing check.
    pub check: String,
    /// The record it fails for.
    pub root: RecordKey,
    /// A key stable for this incident, for deduplication by paging
    /// systems: `check/model/id/opened_at` (microseconds), each name with
    /// `/`, `%`, control and non-ASCII characters percent-encoded, so that
    /// two incidents never share a key.
    pub dedup_key: String,
    /// When the incident opened (runner clock).
    pub opened_at: Timestamp,
    /// When it was last updated by a failing run.
    pub updated_at: Timestamp,
    /// When it resolved, if it has.
    pub resolved_at: Option<Timestamp>,
    /// How many failing runs it has seen.
    pub failures: u32,
    /// The latest failure's message.
    pub message: String,
    /// The latest failure's details.
    pub details: Value,
    /// Commit time of the update that made the discrepancy observable (the
    /// trigger of the first failing run).
    pub trigger_commit_time: Timestamp,
}

/// What happened to an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncidentChange {
    /// A new failure opened it.
    Opened,
    /// Another failing run updated it.
    Updated,
    /// A passing run resolved it.
    Resolved,
}

/// Told about every incident transition of the checks that name it.
///
/// ```
/// use overseer_core::escalation::{Escalation, IncidentChange, Incident, FnEscalation};
/// let pages = FnEscalation::new(|change: IncidentChange, incident: &Incident| {
///     if change == IncidentChange::Opened {
///         eprintln!("{} fails for {}: {}", incident.check, incident.root, incident.message);
///     }
/// });
/// ```
#[async_trait]
pub trait Escalation: Send + Sync + Debug + 'static {
    /// Escalates one transition. An error is logged and counted; the
    /// incident itself is kept either way.
    async fn escalate(&self, change: IncidentChange, incident: &Incident) -> Result<(), BoxError>;
}

/// Logs incidents with `tracing` (the default escalation, named `log`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogEscalation;

#[async_trait]
impl Escalation for LogEscalation {
    async fn escalate(&self, change: IncidentChange, incident: &Incident) -> Result<(), BoxError> {
        match change {
            IncidentChange::Opened => tracing::warn!(
                check = %incident.check, root = %incident.root, message = %incident.message,
                "incident opened"
            ),
            IncidentChange::Updated => tracing::debug!(
                check = %incident.check, root = %incident.root, failures = incident.failures,
                "incident still failing"
            ),
            IncidentChange::Resolved => tracing::info!(
                check = %incident.check, root = %incident.root, "incident resolved"
            ),
        }
        Ok(())
    }
}

/// An escalation from a plain function (collect incidents in tests, send
/// them to your own system).
///
/// The function runs on tokio's blocking pool, so it may block (write a
/// file, call a blocking client) without holding up the runtime's threads,
/// which the checks need (and, on a current-thread runtime, everything
/// else). A panic in it fails that one transition, counted in
/// [`RunnerStats::escalation_errors`](crate::runner::RunnerStats::escalation_errors).
pub struct FnEscalation<F>(Arc<F>);

impl<F> FnEscalation<F>
where
    F: Fn(IncidentChange, &Incident) + Send + Sync + 'static,
{
    /// Escalates by calling `f`.
    pub fn new(f: F) -> Self {
        Self(Arc::new(f))
    }
}

impl<F> Debug for FnEscalation<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnEscalation")
    }
}

#[async_trait]
impl<F> Escalation for FnEscalation<F>
where
    F: Fn(IncidentChange, &Incident) + Send + Sync + 'static,
{
    async fn escalate(&self, change: IncidentChange, incident: &Incident) -> Result<(), BoxError> {
        let (f, incident) = (Arc::clone(&self.0), incident.clone());
        tokio::task::spawn_blocking(move || f(change, &incident))
            .await
            .map_err(|e| match e.try_into_panic() {
                Ok(panic) => panicked(panic).into(),
                Err(e) => BoxError::from(e),
            })
    }
}

/// Runs an escalation off the runner's path: transitions are queued and
/// escalated in order by a task of their own, so a slow or failing paging
/// system never delays checks.
///
/// An incident's `Updated` transitions that wait in the queue are merged:
/// the one queued is replaced by the latest, so a record failing again and
/// again while the paging system is slow or down queues one update per
/// incident, not one per failure.
pub(crate) struct Dispatcher {
    name: String,
    escalation: Arc<dyn Escalation>,
    sender: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    errors: Arc<std::sync::atomic::AtomicU64>,
    /// The latest update of each incident with an `Updated` job queued, by
    /// dedup key.
    updates: Arc<Mutex<Updates>>,
}

/// The latest update of each incident with an `Updated` job queued.
type Updates = HashMap<String, Box<Incident>>;

/// The queued updates. Nothing panics while holding the lock and each
/// access leaves the map whole, so a poisoned lock still guards it.
fn lock(updates: &Mutex<Updates>) -> std::sync::MutexGuard<'_, Updates> {
    updates.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What an escalation error says of a panic.
fn panicked(payload: Box<dyn std::any::Any + Send>) -> String {
    format!("it panicked: {}", crate::panic_message(payload))
}

pub(crate) enum Job {
    Escalate(IncidentChange, Box<Incident>),
    /// The incident's latest update, taken from `Dispatcher::updates`.
    Updated(String),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Dispatcher {
    pub(crate) fn new(
        name: String,
        escalation: Arc<dyn Escalation>,
        errors: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Self {
            name,
            escalation,
            sender: None,
            errors,
            updates: Arc::default(),
        }
    }

    fn sender(&mut self) -> &tokio::sync::mpsc::UnboundedSender<Job> {
        let (name, escalation, errors) = (self.name.clone(), self.escalation.clone(), self.errors.clone());
        let updates = Arc::clone(&self.updates);
        self.sender.get_or_insert_with(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
            tokio::spawn(async move {
                while let Some(job) = rx.recv().await {
                    let (change, incident) = match job {
                        Job::Escalate(change, incident) => (change, incident),
                        Job::Updated(key) => {
                            let taken = lock(&updates).remove(&key);
                            match taken {
                                Some(incident) => (IncidentChange::Updated, incident),
                                None => continue,
                            }
                        }
                        Job::Flush(done) => {
                            let _ = done.send(());
                            continue;
                        }
                    };
                    // A panicking escalation (a bug in it) fails this
                    // transition only: the worker goes on with the ones
                    // queued behind it.
                    let run = std::panic::AssertUnwindSafe(escalation.escalate(change, &incident));
                    let err = match futures::FutureExt::catch_unwind(run).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(err)) => err.to_string(),
                        Err(panic) => panicked(panic),
                    };
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(escalation = %name, error = %err, "escalation failed");
                }
            });
            tx
        })
    }

    /// Queues one transition (must be called within a tokio runtime).
    pub(crate) fn send(&mut self, change: IncidentChange, incident: Incident) {
        let job = if change == IncidentChange::Updated {
            let key = incident.dedup_key.clone();
            let mut updates = lock(&self.updates);
            // One is queued already: it will carry this one.
            if updates.insert(key.clone(), Box::new(incident)).is_some() {
                return;
            }
            Job::Updated(key)
        } else {
            Job::Escalate(change, Box::new(incident))
        };
        if let Err(tokio::sync::mpsc::error::SendError(job)) = self.sender().send(job) {
            // The worker is gone (its runtime shut down): the transition
            // goes to a new one.
            self.sender = None;
            tracing::warn!(escalation = %self.name, "escalation worker restarted");
            // The updates queued to the old worker go to the new one too.
            let pending: Vec<Job> = lock(&self.updates).keys().cloned().map(Job::Updated).collect();
            for job in std::iter::once(job).chain(pending) {
                if self.sender().send(job).is_err() {
                    self.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(escalation = %self.name, "escalation lost: no worker could be started");
                }
            }
        }
    }

    /// Waits until every queued transition has been escalated, or until
    /// `deadline` if there is one; returns whether they all were.
    pub(crate) async fn flush(&mut self, deadline: Option<tokio::time::Instant>) -> bool {
        if self.sender.is_none() {
            return true;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.sender().send(Job::Flush(tx)).is_err() {
            return true;
        }
        let Some(deadline) = deadline else {
            // A worker gone without answering has nothing left to deliver.
            let _ = rx.await;
            return true;
        };
        if tokio::time::timeout_at(deadline, rx).await.is_ok() {
            return true;
        }
        tracing::warn!(escalation = %self.name, "escalations still queued at the flush's deadline");
        false
    }
}
