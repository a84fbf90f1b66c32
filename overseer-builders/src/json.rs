//! Whole application records.
//!
//! [`Json`] reads events that are each a whole record as the application
//! wrote it: one JSON object per event, for example
//! `{"id": "t-1", "amount": 10, "updated_at": "2024-05-01T12:00:00Z"}`.
//!
//! - The model is [`FormatOptions::model`] (`--model`), required: the events
//!   do not name it.
//! - The record id is the value of the top-level field
//!   [`FormatOptions::id_field`] (default `id`): a non-empty string as is, a
//!   number as its JSON text. A missing id, or one of another type, rejects
//!   the event.
//! - The commit time is the value of the top-level field
//!   [`FormatOptions::time_field`] (default `updated_at`): an RFC 3339 string
//!   or an integer number of milliseconds since the Unix epoch. A missing or
//!   invalid time rejects the event.
//! - `"_deleted": true` marks a delete ([`Change::Delete`],
//!   [`Operation::Delete`]). Otherwise the event is the record's whole new
//!   state, stored exactly as written ([`Change::Full`] of the object, the
//!   `_deleted` field included if present), with [`Operation::Replace`]: a
//!   whole record does not tell whether it was created or replaced, so
//!   inserts are reported as replaces too.
//! - The position is a digest of the event's bytes: the same line ingested
//!   twice is stored once.
//!
//! The builder ([`Json::builder`]) needs no options: it only reads the
//! `_deleted` marker and the object itself.
//!
//! ```
//! use overseer_builders::{FormatOptions, json::Json};
//! use overseer_core::{Consumed, Consumer, Model, Operation};
//!
//! let json = Json::new(FormatOptions { model: Some(Model::new("transfers")?), ..FormatOptions::default() })?;
//! let Consumed::Record(record) = json.consume(br#"{"id": 7, "updated_at": 1714564800000}"#)? else {
//!     unreachable!()
//! };
//! assert_eq!(record.key.to_string(), "transfers/7");
//! assert_eq!(record.operation, Operation::Replace);
//! assert_eq!(record.commit_time.to_string(), "2024-05-01T12:00:00Z");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use chrono::DateTime;
use overseer_core::{
    Change, ConsumeError, Consumed, ConsumedRecord, Consumer, Format, Operation, RecordId, RecordKey,
    SourcePosition, StateBuilder, Timestamp, UpdateDocument,
};
use serde_json::{Map, Value};

use crate::FormatOptions;

/// The format name of whole-record JSON events.
pub const FORMAT: &str = "json";

/// The default field of the record id.
pub const DEFAULT_ID_FIELD: &str = "id";

/// The default field of the commit time.
pub const DEFAULT_TIME_FIELD: &str = "updated_at";

/// The field that marks a delete when it is `true`.
pub const DELETED_FIELD: &str = "_deleted";

/// Consumer and builder of whole-record JSON events (see the
/// [module documentation](self)).
#[derive(Clone, Debug, Default)]
pub struct Json {
    options: FormatOptions,
}

impl Json {
    /// A consumer with these options: [`FormatOptions::model`] is required,
    /// [`FormatOptions::id_field`] and [`FormatOptions::time_field`] must not
    /// be empty when given.
    pub fn new(options: FormatOptions) -> Result<Self, crate::Error> {
        let invalid = |reason: &str| crate::Error::InvalidOption {
            format: FORMAT,
            reason: reason.to_owned(),
        };
        if options.model.is_none() {
            return Err(invalid("the json format needs a model: pass --model NAME"));
        }
        if options.id_field.as_deref() == Some("") {
            return Err(invalid("the id field name is empty"));
        }
        if options.time_field.as_deref() == Some("") {
            return Err(invalid("the time field name is empty"));
        }
        Ok(Self { options })
    }

    /// The builder (needs no options).
    pub fn builder() -> Self {
        Self::default()
    }

    fn id_field(&self) -> &str {
        self.options.id_field.as_deref().unwrap_or(DEFAULT_ID_FIELD)
    }

    fn time_field(&self) -> &str {
        self.options.time_field.as_deref().unwrap_or(DEFAULT_TIME_FIELD)
    }
}

fn reject(reason: impl Into<String>) -> ConsumeError {
    ConsumeError::new(FORMAT, reason)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses one event into its object.
fn parse_object(raw: &[u8]) -> Result<Map<String, Value>, ConsumeError> {
    match crate::exact::parse(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(reject(format!(
            "expected a JSON object (one record), found {}",
            type_name(&other)
        ))),
        Err(e) => Err(reject(format!("not valid JSON: {e}"))),
    }
}

/// Whether the record is deleted: `_deleted` is `true` (absent, `null` and
/// `false` are not deletes; any other value is rejected).
fn is_deleted(record: &Map<String, Value>) -> Result<bool, ConsumeError> {
    match record.get(DELETED_FIELD) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(reject(format!(
            "{DELETED_FIELD} must be a boolean, found {}",
            type_name(other)
        ))),
    }
}

/// The change of one event and its operation: shared by the consumer and
/// the builder.
fn decode_change(record: Map<String, Value>) -> Result<(Operation, Change), ConsumeError> {
    if is_deleted(&record)? {
        Ok((Operation::Delete, Change::Delete))
    } else {
        Ok((Operation::Replace, Change::Full(record)))
    }
}

fn id_of(record: &Map<String, Value>, field: &str) -> Result<RecordId, ConsumeError> {
    let text = match record.get(field) {
        None => return Err(reject(format!("the record has no id field {field:?}"))),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(reject(format!("the id field {field:?} is an empty string")));
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(reject(format!(
                "the id field {field:?} must be a string or a number, found {}",
                type_name(other)
            )));
        }
    };
    RecordId::new(text).map_err(|e| reject(e.to_string()))
}

fn time_of(record: &Map<String, Value>, field: &str) -> Result<Timestamp, ConsumeError> {
    match record.get(field) {
        None => Err(reject(format!("the record has no time field {field:?}"))),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| Timestamp::from_micros(t.timestamp_micros()))
            .map_err(|e| {
                reject(format!(
                    "the time field {field:?} is {s:?}, not an RFC 3339 time (2024-05-01T12:00:00Z): {e}"
                ))
            }),
        Some(Value::Number(n)) => n.as_i64().map(Timestamp::from_millis).ok_or_else(|| {
            reject(format!(
                "the time field {field:?} is {n}, not an integer number of epoch milliseconds"
            ))
        }),
        Some(other) => Err(reject(format!(
            "the time field {field:?} must be an RFC 3339 string or integer epoch milliseconds, found {}",
            type_name(other)
        ))),
    }
}

impl Consumer for Json {
    fn format(&self) -> Format {
        Format::new(FORMAT).unwrap_or_else(|_| unreachable!("the format name is not empty"))
    }

    fn consume(&self, raw: &[u8]) -> Result<Consumed, ConsumeError> {
        let Some(model) = self.options.model.clone() else {
            return Err(reject("the json format needs a model: pass --model NAME"));
        };
        let record = parse_object(raw)?;
        let id = id_of(&record, self.id_field())?;
        let commit_time = time_of(&record, self.time_field())?;
        let (operation, change) = decode_change(record)?;
        Ok(Consumed::Record(ConsumedRecord {
            key: RecordKey { model, id },
            operation,
            commit_time,
            position: SourcePosition::default().with_digest_of(raw),
            change,
        }))
    }
}

impl StateBuilder for Json {
    fn format(&self) -> Format {
        Consumer::format(self)
    }

    fn decode(&self, update: &UpdateDocument) -> Result<Change, ConsumeError> {
        decode_change(parse_object(&update.raw)?).map(|(_, change)| change)
    }
}
