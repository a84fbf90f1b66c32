//! Batch ingestion: raw events in, immutable updates, references and dead
//! letters stored, notifications out, the batch's last position acknowledged.

use std::sync::Arc;

use bytes::Bytes;

use crate::consumer::{Consumed, ConsumedRecord, Consumer, References};
use crate::error::{ConsumeError, Error, Result};
use crate::model::{Notification, SourceId, SourcePosition, UpdateDocument};
use crate::store::{Checkpoint, DeadLetter, PutOutcome, Store};
use crate::time::Timestamp;

/// Batches at least this large are consumed on several threads.
const PARALLEL_CONSUME_THRESHOLD: usize = 512;

/// The latest commit time ingestion accepts: the last microsecond of the
/// year 9999. A later one comes from a corrupt or forged event, and would
/// move its source's watermark past any real time.
const LATEST_COMMIT: Timestamp = Timestamp::from_micros(253_402_300_799_999_999);

/// What ingesting one batch did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchReport {
    /// Events read.
    pub read: usize,
    /// Updates newly stored.
    pub stored: usize,
    /// Updates already stored before (re-delivered events).
    pub duplicates: usize,
    /// Events rejected into the dead-letter area (including ones already
    /// dead-lettered before).
    pub dead_lettered: usize,
    /// Events that change no record (transaction boundaries, heartbeats).
    pub control: usize,
    /// One notification per newly stored update, in batch order.
    pub notifications: Vec<Notification>,
    /// The position of the batch's last event that had one.
    pub last_position: Option<SourcePosition>,
    /// The latest source commit time seen in the batch.
    pub watermark: Option<Timestamp>,
}

impl BatchReport {
    /// Adds another batch's counters to this one (notifications are not kept).
    pub fn absorb(&mut self, other: BatchReport) {
        self.read += other.read;
        self.stored += other.stored;
        self.duplicates += other.duplicates;
        self.dead_lettered += other.dead_lettered;
        self.control += other.control;
        if other.last_position.is_some() {
            self.last_position = other.last_position;
        }
        self.watermark = self.watermark.max(other.watermark);
    }
}

/// Ingests the events of one source through one consumer into a store.
///
/// An event the consumer rejects, or whose commit time is before 1970 or
/// after the year 9999 (which no source writes, and which would move the
/// source's watermark past any real time), is dead-lettered: kept in the
/// store's dead-letter area, counted, and logged; the batch goes on.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> overseer_core::Result<()> {
/// use overseer_core::{Ingestor, Store, SourceId, References};
/// # use overseer_core::testing::LinesConsumer;
/// let store = Store::in_memory();
/// let ingestor = Ingestor::new(store.clone(), SourceId::new("app")?, LinesConsumer, References::new());
/// let report = ingestor.ingest_batch(&["a 1".into(), "a 1".into(), "garbage".into()]).await?;
/// assert_eq!((report.stored, report.duplicates, report.dead_lettered), (1, 1, 1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Ingestor {
    store: Store,
    source: SourceId,
    consumer: Arc<dyn Consumer>,
    references: Arc<References>,
    /// The source's acknowledged watermark, once known.
    watermark: Arc<tokio::sync::Mutex<Option<Timestamp>>>,
    /// Where stored updates and references are written through, if anywhere.
    dal: Option<crate::Dal>,
    /// Whether `dal` takes the decoded changes too (it has the format's builder).
    prime_changes: bool,
}

impl std::fmt::Debug for Ingestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingestor")
            .field("source", &self.source)
            .field("format", &self.consumer.format())
            .finish_non_exhaustive()
    }
}

enum Outcome {
    /// A record change, with its references already extracted (on the
    /// consuming thread, which also frees the parsed change).
    /// The change is kept only when a DAL is primed with it.
    Record(Box<ConsumedRecord>, Vec<crate::Reference>),
    Control(Option<Timestamp>, Option<SourcePosition>),
    Rejected(ConsumeError),
}

impl Ingestor {
    /// An ingestor for `source`, reading events with `consumer`.
    pub fn new(store: Store, source: SourceId, consumer: impl Consumer, references: References) -> Self {
        Self {
            store,
            source,
            consumer: Arc::new(consumer),
            references: Arc::new(references),
            watermark: Arc::default(),
            dal: None,
            prime_changes: false,
        }
    }

    /// Write-through: every update and reference this ingestor stores is
    /// also handed to `dal`: to its index, if it is
    /// [indexed](crate::Dal::indexed), and, already decoded, to its cache, so
    /// that reading it back (checks run right after ingestion) neither lists
    /// the store nor parses the update again.
    ///
    /// Handing over the decoded change relies on the format's contract that
    /// the [`Consumer`]'s change for an event is the change its
    /// [`StateBuilder`](crate::StateBuilder) decodes from the stored update
    /// (every builder of `overseer-builders` is tested for it); changes of a
    /// format `dal` has no builder for are not handed over. The embedded
    /// pipeline sets this up itself.
    pub fn with_dal(mut self, dal: &crate::Dal) -> Self {
        self.prime_changes = dal.has_builder(&self.consumer.format());
        self.dal = Some(dal.clone());
        self
    }

    /// The source this ingestor reads.
    pub fn source(&self) -> &SourceId {
        &self.source
    }

    fn consume_one(&self, raw: &[u8]) -> Outcome {
        let consumed = self.consumer.consume(raw);
        let commit_time = match &consumed {
            Ok(Consumed::Record(r)) => Some(r.commit_time),
            Ok(Consumed::Control { commit_time, .. }) => *commit_time,
            Err(_) => None,
        };
        if let Some(t) = commit_time
            && !(Timestamp::EPOCH..=LATEST_COMMIT).contains(&t)
        {
            return Outcome::Rejected(ConsumeError::new(
                self.consumer.format().as_str(),
                format!(
                    "commit time {t} is not between 1970 and the year 9999 (a corrupt or forged \
                     event; it would move the source's watermark away from any real time)"
                ),
            ));
        }
        match consumed {
            Ok(Consumed::Record(mut r)) => {
                let references = self.references.extract(&r.key, &r.change);
                if !self.prime_changes {
                    // Free the parsed change here, on the consuming thread.
                    r.change = crate::Change::Delete;
                }
                Outcome::Record(Box::new(r), references)
            }
            Ok(Consumed::Control {
                commit_time,
                position,
            }) => Outcome::Control(commit_time, position),
            Err(e) => Outcome::Rejected(e),
        }
    }

    fn consume_all(&self, batch: &[Bytes]) -> Vec<Outcome> {
        use rayon::prelude::*;
        if batch.len() < PARALLEL_CONSUME_THRESHOLD {
            return batch.iter().map(|raw| self.consume_isolated(raw)).collect();
        }
        // rayon's pool keeps its threads (and their allocator caches) from
        // batch to batch; the order of the outcomes is the batch's.
        batch
            .par_iter()
            .with_min_len(64)
            .map(|raw| self.consume_isolated(raw))
            .collect()
    }

    /// Consumes one event; a consumer that panics (a bug in the consumer)
    /// rejects only that event.
    fn consume_isolated(&self, raw: &[u8]) -> Outcome {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.consume_one(raw))).unwrap_or_else(
            |payload| {
                Outcome::Rejected(ConsumeError::new(
                    self.consumer.format().as_str(),
                    format!(
                        "the consumer panicked on this event: {}",
                        crate::panic_message(payload)
                    ),
                ))
            },
        )
    }

    /// Ingests one batch: consumes every event, stores the new updates and
    /// their references, dead-letters what cannot be consumed, and returns
    /// what happened. A store error fails the whole batch (nothing is
    /// acknowledged; ingesting it again is safe, since every write is
    /// idempotent).
    pub async fn ingest_batch(&self, batch: &[Bytes]) -> Result<BatchReport> {
        let received_at = Timestamp::now();
        let format = self.consumer.format();
        let outcomes = self.consume_all(batch);
        let mut report = BatchReport {
            read: batch.len(),
            ..BatchReport::default()
        };
        let mut docs = Vec::with_capacity(batch.len());
        let mut changes = Vec::with_capacity(if self.prime_changes { batch.len() } else { 0 });
        // Each with its index in the batch, which dead letters keep.
        let mut rejected: Vec<(u32, Bytes, Option<SourcePosition>, String)> = Vec::new();
        let mut indices: Vec<u32> = Vec::with_capacity(batch.len());
        // Whether the batch's last position is that of the last record (it
        // is cloned once, after the loop).
        let mut last_is_record = false;
        for ((index, raw), outcome) in (0u32..).zip(batch).zip(outcomes) {
            match outcome {
                Outcome::Record(r, references) => {
                    let r = *r;
                    last_is_record = true;
                    report.watermark = report.watermark.max(Some(r.commit_time));
                    docs.push(UpdateDocument {
                        key: r.key,
                        source: self.source.clone(),
                        position: r.position,
                        commit_time: r.commit_time,
                        ingested_at: received_at,
                        operation: r.operation,
                        format: format.clone(),
                        raw: raw.clone(),
                        references,
                    });
                    indices.push(index);
                    if self.prime_changes {
                        changes.push(r.change);
                    }
                }
                Outcome::Control(commit_time, position) => {
                    report.control += 1;
                    report.watermark = report.watermark.max(commit_time);
                    if position.is_some() {
                        report.last_position = position;
                        last_is_record = false;
                    }
                }
                Outcome::Rejected(e) => rejected.push((index, raw.clone(), None, e.to_string())),
            }
        }
        if last_is_record {
            report.last_position = docs.last().map(|d| d.position.clone());
        }

        if let Some(dal) = &self.dal {
            dal.start_index().await?;
        }
        // Data first, then the references that make it reachable.
        let outcomes = self.store.put_updates(docs).await;
        let mut changes = changes.into_iter();
        let mut stored = Vec::with_capacity(outcomes.len());
        let mut redelivered = Vec::new();
        for ((doc, path, outcome), index) in outcomes.into_iter().zip(indices) {
            let change = changes.next();
            match outcome {
                Ok(PutOutcome::Created) => {
                    if let Some(dal) = &self.dal {
                        dal.prime(&path, &doc, change);
                    }
                    stored.push((doc, path))
                }
                Ok(PutOutcome::Duplicate) => {
                    report.duplicates += 1;
                    // Stored before, perhaps by a run that stopped before
                    // storing its references: they are stored again
                    // (create-only; readers keep a reference stored twice
                    // once).
                    if !doc.references.is_empty() {
                        redelivered.push((doc.key, doc.references, doc.commit_time));
                    }
                }
                Err(e @ Error::PositionConflict { .. }) => {
                    rejected.push((index, doc.raw.clone(), Some(doc.position.clone()), e.to_string()))
                }
                Err(e) => return Err(e),
            }
        }
        let with_refs: Vec<(&crate::RecordKey, &[crate::Reference], Timestamp)> = stored
            .iter()
            .map(|(d, _)| (&d.key, d.references.as_slice(), d.commit_time))
            .chain(redelivered.iter().map(|(k, r, t)| (k, r.as_slice(), *t)))
            .filter(|(_, r, _)| !r.is_empty())
            .collect();
        self.store.add_batch_references(&with_refs).await?;
        if let Some(dal) = &self.dal {
            for (d, _) in &stored {
                if !d.references.is_empty() {
                    dal.prime_references(&d.key, &d.references, d.commit_time);
                }
            }
        }

        for (batch_index, raw, position, error) in rejected {
            tracing::warn!(source = %self.source, %error, "event dead-lettered");
            let letter = DeadLetter {
                source: self.source.clone(),
                position,
                format: format.to_string(),
                raw,
                error,
                received_at,
                batch_index,
            };
            self.store.put_dead_letter(&letter).await?;
            report.dead_lettered += 1;
        }

        report.stored = stored.len();
        report.notifications = stored
            .into_iter()
            .map(|(d, object)| Notification {
                object,
                key: d.key,
                source: d.source,
                position: d.position,
                commit_time: d.commit_time,
                ingested_at: d.ingested_at,
                operation: d.operation,
                references: d.references,
            })
            .collect();
        Ok(report)
    }

    /// Ingests a batch and then acknowledges it: the source's checkpoint
    /// (last position and watermark) is written only after every update of
    /// the batch is durably stored.
    pub async fn ingest_and_ack(&self, batch: &[Bytes]) -> Result<BatchReport> {
        let report = self.ingest_batch(batch).await?;
        if let Some(position) = &report.last_position {
            // The watermark never goes back: the max of what this source ever
            // acknowledged (read from the store once, then kept).
            let mut known = self.watermark.lock().await;
            let previous = match *known {
                Some(w) => Some(w),
                None => self.store.checkpoint(&self.source).await?.map(|c| c.watermark),
            };
            let watermark = previous.max(report.watermark).unwrap_or(Timestamp::EPOCH);
            *known = Some(watermark);
            self.store
                .put_checkpoint(
                    &self.source,
                    &Checkpoint {
                        position: position.clone(),
                        watermark,
                    },
                )
                .await?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::References;
    use crate::testing::LinesConsumer;

    /// A commit time before 1970 or after the year 9999 is a corrupt or
    /// forged event: dead-lettered, and the source's watermark does not
    /// move to it; the batch's other events are stored.
    #[tokio::test]
    async fn commit_times_no_source_can_have_are_dead_lettered() {
        let store = Store::in_memory();
        let ingestor = Ingestor::new(
            store,
            SourceId::new("app").unwrap(),
            LinesConsumer,
            References::new(),
        );
        let last_second = LATEST_COMMIT.as_micros() / 1_000_000;
        let batch: Vec<Bytes> = [
            "a 7",
            "b -5",
            &format!("c {}", last_second + 1),
            &format!("d {last_second}"),
        ]
        .map(|line| Bytes::from(line.to_owned()))
        .into();
        let report = ingestor.ingest_batch(&batch).await.unwrap();
        assert_eq!((report.read, report.stored, report.dead_lettered), (4, 2, 2));
        assert_eq!(report.watermark, Some(Timestamp::from_secs(last_second)));
    }
}
