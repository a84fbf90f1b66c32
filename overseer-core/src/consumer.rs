//! The two traits a format implements: [`Consumer`] on the ingestion side and
//! [`StateBuilder`] on the read side, plus reference extraction.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::change::{Change, FieldPath};
use crate::error::{ConsumeError, Error, Result};
use crate::model::{
    Format, Model, Operation, RecordId, RecordKey, Reference, SourcePosition, UpdateDocument,
};
use crate::time::Timestamp;

/// What a consumer found in one raw event.
#[derive(Clone, PartialEq, Debug)]
pub enum Consumed {
    /// A change of one record.
    Record(ConsumedRecord),
    /// An event that changes no record (a transaction boundary, a heartbeat,
    /// a tombstone). It may still prove that the source has delivered
    /// everything up to a commit time.
    Control {
        /// The source commit time this event proves delivered, if any.
        commit_time: Option<Timestamp>,
        /// The event's position, if it has one.
        position: Option<SourcePosition>,
    },
}

/// A change of one record, as extracted from a raw event.
#[derive(Clone, PartialEq, Debug)]
pub struct ConsumedRecord {
    /// The record.
    pub key: RecordKey,
    /// What the change did.
    pub operation: Operation,
    /// When it committed in its source.
    pub commit_time: Timestamp,
    /// Where it is in its source.
    pub position: SourcePosition,
    /// The change, normalized (used to extract references).
    pub change: Change,
}

/// Turns raw events of one format into record changes (ingestion side).
///
/// Consumers are pure and synchronous: parsing is CPU work, and ingestion
/// calls them from several threads at once.
pub trait Consumer: Send + Sync + 'static {
    /// The format this consumer reads; stored with every update so the
    /// matching [`StateBuilder`] folds it later.
    fn format(&self) -> Format;

    /// Reads one raw event.
    fn consume(&self, raw: &[u8]) -> Result<Consumed, ConsumeError>;
}

/// Decodes stored updates of one format into [`Change`]s (read side). The
/// fold itself ([`change::apply`](crate::change::apply)) is shared, so a
/// builder is stateless: fixing a builder fixes all history at once, with no
/// backfill.
pub trait StateBuilder: Send + Sync + 'static {
    /// The format this builder reads.
    fn format(&self) -> Format;

    /// Decodes one stored update.
    fn decode(&self, update: &UpdateDocument) -> Result<Change, ConsumeError>;
}

impl<T: Consumer + ?Sized> Consumer for Arc<T> {
    fn format(&self) -> Format {
        (**self).format()
    }
    fn consume(&self, raw: &[u8]) -> Result<Consumed, ConsumeError> {
        (**self).consume(raw)
    }
}

impl<T: StateBuilder + ?Sized> StateBuilder for Arc<T> {
    fn format(&self) -> Format {
        (**self).format()
    }
    fn decode(&self, update: &UpdateDocument) -> Result<Change, ConsumeError> {
        (**self).decode(update)
    }
}

/// One configured reference: records of `model` point at records of
/// `target` through the value at `field`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReferenceSpec {
    /// The referencing model.
    pub model: Model,
    /// The field (dotted path) holding the target's id.
    pub field: String,
    /// The model pointed at.
    pub target: Model,
}

impl ReferenceSpec {
    /// Parses `model.field -> target` (the field may be a dotted path).
    ///
    /// ```
    /// use overseer_core::ReferenceSpec;
    /// let spec = ReferenceSpec::parse("ledger_entries.transfer_id -> transfers")?;
    /// assert_eq!(spec.field, "transfer_id");
    /// assert!(ReferenceSpec::parse("no arrow").is_err());
    /// # Ok::<(), overseer_core::Error>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidInput {
            what: "reference",
            reason: format!("{text:?}: {reason}; expected `model.field -> target_model`"),
        };
        let (left, target) = text.split_once("->").ok_or_else(|| invalid("no `->`"))?;
        let (model, field) = left
            .trim()
            .split_once('.')
            .ok_or_else(|| invalid("no `.field`"))?;
        if field.trim().is_empty() {
            return Err(invalid("empty field"));
        }
        // One arrow only: `a.f -> b -> c` is not a target named `b -> c`.
        for (part, what) in [(model, "model"), (field, "field"), (target, "target model")] {
            if part.contains("->") {
                return Err(invalid(&format!("{what} {:?} holds a second `->`", part.trim())));
            }
        }
        Ok(Self {
            model: Model::new(model.trim()).map_err(|_| invalid("empty model"))?,
            field: field.trim().to_owned(),
            target: Model::new(target.trim()).map_err(|_| invalid("empty target model"))?,
        })
    }

    /// A reference of `model` through `field` to `target`.
    pub fn new(model: Model, field: impl Into<String>, target: Model) -> Self {
        Self {
            model,
            field: field.into(),
            target,
        }
    }
}

/// The configured references of every model, and their extraction from changes.
#[derive(Clone, Debug, Default)]
pub struct References {
    by_model: HashMap<Model, Vec<(FieldPath, ReferenceSpec)>>,
}

impl References {
    /// No references.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one reference.
    pub fn with(mut self, spec: ReferenceSpec) -> Self {
        self.by_model
            .entry(spec.model.clone())
            .or_default()
            .push((FieldPath::parse(&spec.field), spec));
        self
    }

    /// The configured references of `model`.
    pub fn of(&self, model: &Model) -> impl Iterator<Item = &ReferenceSpec> {
        self.by_model.get(model).into_iter().flatten().map(|(_, s)| s)
    }

    /// The references a change of `key` carries: for each configured field,
    /// the target id(s) the change writes there (strings, numbers, MongoDB
    /// ObjectIds; every element of an array).
    pub fn extract(&self, key: &RecordKey, change: &Change) -> Vec<Reference> {
        let mut out = Vec::new();
        for (path, spec) in self.by_model.get(&key.model).into_iter().flatten() {
            for value in change.values_at(path) {
                let mut push = |v: &Value| {
                    if let Some(id) = id_text(v).and_then(|t| RecordId::new(t).ok()) {
                        out.push(Reference {
                            field: spec.field.clone(),
                            target: RecordKey {
                                model: spec.target.clone(),
                                id,
                            },
                        });
                    }
                };
                match value {
                    Value::Array(items) => items.iter().for_each(&mut push),
                    other => push(other),
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The text form of an id value: a string as is, a number or boolean as its
/// JSON text, a MongoDB ObjectId (`{"$oid": hex}`) as its hex string, other
/// Extended JSON numbers (`$numberLong`, `$numberInt`, ...) as their digits;
/// anything else has no id text.
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(map) if map.len() == 1 => {
            let (k, v) = map.iter().next()?;
            match (k.as_str(), v) {
                ("$oid" | "$numberLong" | "$numberInt" | "$numberDecimal" | "$uuid", Value::String(s)) => {
                    Some(s.clone())
                }
                _ => None,
            }
        }
        _ => None,
    }
}
