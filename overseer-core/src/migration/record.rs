//! Discrepancy records: their layout, and how they reach the Overseer store.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Phase;
use super::compare::{Difference, present};
use crate::change::Change;
use crate::consumer::{Consumed, ConsumedRecord, Consumer, References};
use crate::error::{ConsumeError, Error, Result};
use crate::ingest::{BatchReport, Ingestor};
use crate::model::{Format, Model, Operation, RecordId, RecordKey, SourceId, SourcePosition};
use crate::store::Store;
use crate::time::Timestamp;
use crate::topic::{Message, Topic};

/// The default model of discrepancy records.
pub const DEFAULT_MODEL: &str = "migration_discrepancies";

/// The format discrepancy events are stored in: whole-record JSON, the
/// `json` format of `overseer-builders`.
const FORMAT: &str = "json";

/// Whether a discrepancy was found on a read or a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// A read call.
    Read,
    /// A write call.
    Write,
}

/// What kind of discrepancy a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DiscrepancyKind {
    /// Both sides succeeded with results that differ (see
    /// [`Discrepancy::differences`]).
    Mismatch,
    /// A read: the new side failed (error, panic or timeout) while legacy
    /// succeeded.
    NewFailed,
    /// The legacy side failed while the new side succeeded.
    LegacyFailed,
    /// A write: the legacy write succeeded and the new one failed (error,
    /// panic or timeout). The new store misses this write: repair it.
    WriteFailed,
}

/// One discrepancy, as stored: the state of a record of model
/// [`DEFAULT_MODEL`] (or the recorder's model) whose id is
/// [`Discrepancy::record_id`]`(operation, key)`. Each occurrence is one
/// update of that record, so a key's discrepancies form its history.
///
/// Read it back with the DAL as any record (`Dal::get::<Discrepancy>`,
/// `Dal::history`), with a DAL that has the `json` builder of
/// `overseer-builders`.
///
/// The JSON layout:
///
/// ```json
/// {
///   "id": "get_balance:acct-1",
///   "operation": "get_balance",
///   "key": "acct-1",
///   "access": "read",
///   "kind": "mismatch",
///   "phase": "shadow",
///   "legacy": {"cents": 100},
///   "new": {"cents": 101},
///   "differences": [{"path": "cents", "legacy": 100, "new": 101}],
///   "updated_at": "2026-11-29T09:00:00.123456Z",
///   "sequence": 7
/// }
/// ```
///
/// `legacy` / `new` are absent when that side failed, and `legacy_error` /
/// `new_error` are present instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Discrepancy {
    /// The record id: [`Discrepancy::record_id`] of the operation and key.
    pub id: String,
    /// The operation the caller named (`get_balance`).
    pub operation: String,
    /// The business key the caller named (`acct-1`).
    pub key: String,
    /// Read or write.
    pub access: Access,
    /// What kind of discrepancy.
    pub kind: DiscrepancyKind,
    /// The phase the call ran in.
    pub phase: Phase,
    /// The legacy result, serialized (absent if legacy failed).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub legacy: Option<Value>,
    /// The new result, serialized (absent if new failed).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub new: Option<Value>,
    /// The legacy error, if legacy failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_error: Option<String>,
    /// The new error (or `panicked: ...`, `timed out after ...`), if new failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_error: Option<String>,
    /// The differences the comparator found (for [`DiscrepancyKind::Mismatch`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<Difference>,
    /// When it was observed, RFC 3339 (the update's commit time).
    pub updated_at: String,
    /// A per-router sequence number: with the time, it makes every
    /// occurrence a distinct update.
    pub sequence: u64,
}

impl Discrepancy {
    /// The record id of the discrepancies of `operation` on `key`:
    /// `operation:key`, with `%` and `:` in the operation escaped (`%25`,
    /// `%3A`) so that different pairs never share an id.
    ///
    /// ```
    /// use overseer_core::migration::Discrepancy;
    /// assert_eq!(Discrepancy::record_id("get_balance", "acct:1"), "get_balance:acct:1");
    /// assert_eq!(Discrepancy::record_id("a:b", "c"), "a%3Ab:c");
    /// ```
    pub fn record_id(operation: &str, key: &str) -> String {
        let op = operation.replace('%', "%25").replace(':', "%3A");
        format!("{op}:{key}")
    }

    /// The time it was observed.
    pub fn observed_at(&self) -> Result<Timestamp> {
        Timestamp::parse(&self.updated_at)
    }

    /// The event bytes: one JSON object.
    fn to_event(&self) -> Result<Bytes> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|e| Error::InvalidInput {
                what: "discrepancy",
                reason: format!("cannot serialize: {e}"),
            })
    }
}

/// Reads discrepancy events exactly like the `json` consumer of
/// `overseer-builders` with `--model <model>` and the default `id` and
/// `updated_at` fields: the same key, commit time, position (a digest of
/// the bytes) and stored format, so the same event ingested either way is
/// one object.
#[derive(Clone, Debug)]
struct DiscrepancyConsumer {
    model: Model,
}

impl Consumer for DiscrepancyConsumer {
    fn format(&self) -> Format {
        Format::new(FORMAT).unwrap_or_else(|_| unreachable!("the format name is not empty"))
    }

    fn consume(&self, raw: &[u8]) -> std::result::Result<Consumed, ConsumeError> {
        let reject = |reason: String| ConsumeError::new(FORMAT, reason);
        let record: Map<String, Value> =
            serde_json::from_slice(raw).map_err(|e| reject(format!("not a JSON object: {e}")))?;
        let id = match record.get("id") {
            Some(Value::String(s)) => RecordId::new(s).map_err(|e| reject(e.to_string()))?,
            _ => return Err(reject("the record has no string id".into())),
        };
        let commit_time = match record.get("updated_at") {
            Some(Value::String(s)) => Timestamp::parse(s).map_err(|e| reject(e.to_string()))?,
            _ => return Err(reject("the record has no updated_at time".into())),
        };
        Ok(Consumed::Record(ConsumedRecord {
            key: RecordKey {
                model: self.model.clone(),
                id,
            },
            operation: Operation::Replace,
            commit_time,
            position: SourcePosition::default().with_digest_of(raw),
            change: Change::Full(record),
        }))
    }
}

/// Writes [`Discrepancy`] records into the Overseer store, as one more
/// source.
///
/// Each batch goes through an [`Ingestor`] and is acknowledged
/// ([`Ingestor::ingest_and_ack`]): the source gets a checkpoint and a
/// watermark like any other, so freshness strategies work. With
/// [`with_topic`](Self::with_topic), the notifications and the watermark are
/// also published to the runner's topic, so checks over the discrepancy
/// model run and open incidents like checks over any source.
///
/// The events are stored in the `json` format of `overseer-builders`
/// (whole records, id field `id`, time field `updated_at`): register its
/// builder (`overseer_builders::json::Json::builder()`, included in
/// `overseer_builders::dal`) to read them, which the CLI does.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> overseer_core::Result<()> {
/// use overseer_core::migration::DiscrepancyRecorder;
/// use overseer_core::{SourceId, Store};
///
/// let recorder = DiscrepancyRecorder::new(Store::in_memory(), SourceId::new("ledger-migration")?);
/// assert_eq!(recorder.key_of("get_balance", "acct-1")?.to_string(),
///            "migration_discrepancies/get_balance:acct-1");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct DiscrepancyRecorder {
    store: Store,
    model: Model,
    ingestor: Ingestor,
    topic: Option<Arc<dyn Topic>>,
}

impl DiscrepancyRecorder {
    /// A recorder into `store`, as source `source`, of model [`DEFAULT_MODEL`].
    pub fn new(store: Store, source: SourceId) -> Self {
        let model = Model::new(DEFAULT_MODEL).unwrap_or_else(|_| unreachable!("non-empty literal"));
        Self::build(store, source, model, None)
    }

    fn build(store: Store, source: SourceId, model: Model, topic: Option<Arc<dyn Topic>>) -> Self {
        let consumer = DiscrepancyConsumer { model: model.clone() };
        let ingestor = Ingestor::new(store.clone(), source, consumer, References::new());
        Self {
            store,
            model,
            ingestor,
            topic,
        }
    }

    /// Records of `model` instead of [`DEFAULT_MODEL`] (one model per
    /// migration, say).
    pub fn with_model(self, model: Model) -> Self {
        let source = self.ingestor.source().clone();
        Self::build(self.store, source, model, self.topic)
    }

    /// Also publishes each batch's notifications and watermark to `topic`
    /// (the runner's topic), as the pipeline does for its sources.
    pub fn with_topic(mut self, topic: Arc<dyn Topic>) -> Self {
        self.topic = Some(topic);
        self
    }

    /// The model of the records.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The source the records come from.
    pub fn source(&self) -> &SourceId {
        self.ingestor.source()
    }

    /// The key of the record of `operation` on `key`.
    pub fn key_of(&self, operation: &str, key: &str) -> Result<RecordKey> {
        Ok(RecordKey {
            model: self.model.clone(),
            id: RecordId::new(Discrepancy::record_id(operation, key))?,
        })
    }

    /// Stores discrepancies (idempotently: the same discrepancy stored twice
    /// is one update), acknowledges them, and publishes them if a topic is
    /// set.
    pub async fn record(&self, discrepancies: &[Discrepancy]) -> Result<BatchReport> {
        let batch = discrepancies
            .iter()
            .map(Discrepancy::to_event)
            .collect::<Result<Vec<_>>>()?;
        let report = self.ingestor.ingest_and_ack(&batch).await?;
        if let Some(topic) = &self.topic {
            let mut messages: Vec<Message> = report
                .notifications
                .iter()
                .cloned()
                .map(Message::Notification)
                .collect();
            if let Some(time) = report.watermark {
                messages.push(Message::Watermark {
                    source: self.ingestor.source().clone(),
                    time,
                });
            }
            topic
                .publish(messages)
                .await
                .map_err(|source| Error::Topic { source })?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> Discrepancy {
        Discrepancy {
            id: Discrepancy::record_id("get", "k"),
            operation: "get".into(),
            key: "k".into(),
            access: Access::Read,
            kind: DiscrepancyKind::Mismatch,
            phase: Phase::Shadow,
            legacy: Some(Value::Null),
            new: Some(json!(1)),
            legacy_error: None,
            new_error: None,
            differences: vec![Difference::new("", Some(Value::Null), Some(json!(1)))],
            updated_at: Timestamp::from_secs(10).to_string(),
            sequence: 1,
        }
    }

    #[test]
    fn layout_round_trips() {
        let d = sample();
        let value = serde_json::to_value(&d).unwrap();
        assert_eq!(value["legacy"], Value::Null);
        assert_eq!(value["kind"], "mismatch");
        assert_eq!(value["phase"], "shadow");
        assert!(value.get("new_error").is_none());
        let back: Discrepancy = serde_json::from_value(value).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.observed_at().unwrap(), Timestamp::from_secs(10));
    }

    #[test]
    fn ids_are_injective() {
        assert_ne!(
            Discrepancy::record_id("a:b", "c"),
            Discrepancy::record_id("a", "b:c")
        );
        assert_ne!(
            Discrepancy::record_id("a%3Ab", "c"),
            Discrepancy::record_id("a:b", "c")
        );
    }

    #[tokio::test]
    async fn recording_is_idempotent_and_distinct() {
        let store = Store::in_memory();
        let recorder = DiscrepancyRecorder::new(store, SourceId::new("m").unwrap());
        let d = sample();
        let report = recorder.record(&[d.clone(), d.clone()]).await.unwrap();
        assert_eq!((report.stored, report.duplicates), (1, 1));
        let mut again = d;
        again.sequence = 2;
        let report = recorder.record(&[again]).await.unwrap();
        assert_eq!((report.stored, report.dead_lettered), (1, 0));
        assert_eq!(report.notifications[0].key, recorder.key_of("get", "k").unwrap());
    }
}
