//! Debezium relational connector change events: the message *value*, either
//! bare (`value.converter.schemas.enable=false`) or wrapped as
//! `{"schema": {...}, "payload": {...}}`.
//!
//! | `op` | result |
//! |---|---|
//! | `c` | [`Change::Full`] of `after`, [`Operation::Insert`] |
//! | `r` | [`Change::Full`] of `after`, [`Operation::Snapshot`] |
//! | `u` | [`Change::Full`] of `after`, or [`Change::Merge`] without its unavailable columns, [`Operation::Update`] |
//! | `d` | [`Change::Delete`], key from `before`, [`Operation::Delete`] |
//! | `t`, `m` | control (truncates and messages change no single record) |
//! | tombstone (`null`) | control without a time |
//!
//! Any other `op`, or none (a heartbeat's value has only `ts_ms`), rejects the
//! event.
//!
//! In an update, a column whose value is Debezium's placeholder
//! `__debezium_unavailable_value` (its default
//! `unavailable.value.placeholder`; for binary columns the base64 of those
//! bytes, for arrays a one-element array of it) is an unchanged TOAST column
//! that Postgres did not send: it is left out and the update is a merge, so
//! the column keeps its previous value.
//!
//! The model is `source.table` (not schema-qualified) unless
//! [`FormatOptions::model`] is set. A value carries no key, so the key
//! columns are [`FormatOptions::key_columns`], else `id`; the record id is
//! read from `after` (falling back to `before`), for a delete from `before`.
//! (Debezium turns a primary-key change into a delete of the old key and a
//! create of the new one, so both records are right.) The commit time is
//! `source.ts_us` if present, else `source.ts_ms`. The position is
//! `source.lsn` (Postgres connector), else `source.ts_ms`, followed by a
//! digest of the event (snapshot rows share an LSN).
//!
//! Values are taken as the connector writes them (its `decimal.handling.mode`,
//! `time.precision.mode`, ... decide their JSON types).

use overseer_core::{
    Change, ConsumeError, Consumed, ConsumedRecord, Consumer, Format, Operation, SourcePosition, State,
    StateBuilder, Timestamp, UpdateDocument,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

use crate::FormatOptions;
use crate::relational::{self, json_kind};

/// The format name of Debezium envelopes.
pub const FORMAT: &str = "debezium";

/// Debezium's default placeholder for values it does not have (unchanged
/// TOAST columns).
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// The placeholder as Debezium writes it in a binary (`bytea`) column: the
/// base64 of its bytes.
const UNAVAILABLE_VALUE_BASE64: &str = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==";

/// Consumer and state builder of Debezium relational change events (see the
/// [module documentation](self)).
///
/// ```
/// use overseer_builders::{FormatOptions, debezium::Debezium};
/// use overseer_core::{Consumed, Consumer};
/// let value = br#"{"before":null,"after":{"id":1,"owner":"ann"},"source":{"connector":"postgresql","ts_ms":1709294400000,"schema":"public","table":"accounts","lsn":23867208},"op":"c","ts_ms":1709294400100}"#;
/// let Consumed::Record(record) = Debezium::new(FormatOptions::default()).consume(value)? else { unreachable!() };
/// assert_eq!(record.key.to_string(), "accounts/1");
/// # Ok::<(), overseer_core::ConsumeError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Debezium {
    options: FormatOptions,
}

impl Debezium {
    /// A consumer with these options (`model`, `key_columns`).
    pub fn new(options: FormatOptions) -> Self {
        Self { options }
    }
}

impl Consumer for Debezium {
    fn format(&self) -> Format {
        Format::new(FORMAT).unwrap_or_else(|_| unreachable!("a non-empty literal"))
    }

    fn consume(&self, raw: &[u8]) -> Result<Consumed, ConsumeError> {
        match parse(raw).map_err(reject)? {
            Event::Control {
                commit_time,
                position,
            } => Ok(Consumed::Control {
                commit_time,
                position,
            }),
            Event::Row(row) => {
                let columns = relational::key_columns(&[], &self.options);
                let table = match (&self.options.model, row.table) {
                    (Some(_), table) => table.unwrap_or_default(),
                    (None, Some(table)) => table,
                    (None, None) => {
                        return Err(reject("no \"source.table\"; set a model".into()));
                    }
                };
                let key = relational::record_key(
                    FORMAT,
                    &self.options,
                    &table,
                    &columns,
                    &relational::key_rows(&row.change, &row.key_rows),
                )?;
                Ok(Consumed::Record(ConsumedRecord {
                    key,
                    operation: row.operation,
                    commit_time: row.commit_time,
                    position: row.position,
                    change: row.change,
                }))
            }
        }
    }
}

impl StateBuilder for Debezium {
    fn format(&self) -> Format {
        Consumer::format(self)
    }

    fn decode(&self, update: &UpdateDocument) -> Result<Change, ConsumeError> {
        match parse(&update.raw).map_err(reject)? {
            Event::Row(row) => Ok(row.change),
            Event::Control { .. } => Err(reject(
                "the stored update is not a row change (op c, u, d or r)".into(),
            )),
        }
    }
}

fn reject(reason: String) -> ConsumeError {
    ConsumeError::new(FORMAT, reason)
}

#[derive(Debug, PartialEq)]
enum Event {
    Row(Box<RowEvent>),
    Control {
        commit_time: Option<Timestamp>,
        position: Option<SourcePosition>,
    },
}

#[derive(Debug, PartialEq)]
struct RowEvent {
    table: Option<String>,
    operation: Operation,
    change: Change,
    /// Where the key values are looked up after the change's own row, in
    /// order of preference ([`relational::key_rows`]).
    key_rows: [Option<State>; 2],
    commit_time: Timestamp,
    position: SourcePosition,
}

/// The fields of a change event that Overseer reads (others are ignored).
#[derive(Deserialize, Debug, PartialEq)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "crate::exact::opt_object")]
    before: Option<State>,
    #[serde(default, deserialize_with = "crate::exact::opt_object")]
    after: Option<State>,
    #[serde(borrow, default, deserialize_with = "crate::opt_object_only")]
    source: Option<SourceFields<'a>>,
}

/// `source` fields as read: the table, the commit time and the LSN.
#[derive(Deserialize, Debug, PartialEq, Default)]
struct SourceFields<'a> {
    #[serde(borrow, default)]
    table: Option<Cow<'a, str>>,
    #[serde(default)]
    ts_ms: Option<i64>,
    #[serde(default)]
    ts_us: Option<i64>,
    #[serde(default)]
    ts_usec: Option<i64>,
    #[serde(default)]
    lsn: Option<i64>,
}

impl SourceFields<'_> {
    /// The commit time: `ts_us` (or the older `ts_usec`), else `ts_ms`.
    fn commit_time(&self) -> Option<Timestamp> {
        match (self.ts_us, self.ts_usec, self.ts_ms) {
            (Some(us), _, _) | (None, Some(us), _) => Some(Timestamp::from_micros(us)),
            (None, None, Some(ms)) => Some(Timestamp::from_millis(ms)),
            (None, None, None) => None,
        }
    }
}

fn parse(raw: &[u8]) -> Result<Event, String> {
    // The common case, a well-formed change event, is read straight into
    // its fields; anything else (tombstones, the JSON converter's
    // `payload` wrapping, mistakes) is read again as a JSON value, whose
    // checks say precisely what is wrong.
    match crate::parse_json_object::<Envelope<'_>>(raw) {
        Ok(envelope) if envelope.op.is_some() => interpret(envelope, raw),
        _ => match envelope_of(raw)? {
            Some(envelope) => interpret(envelope, raw),
            None => Ok(Event::Control {
                commit_time: None,
                position: None,
            }),
        },
    }
}

/// The fields of an event read through a JSON value, with an error that
/// names what is wrong; `None` for a tombstone.
fn envelope_of(raw: &[u8]) -> Result<Option<Envelope<'static>>, String> {
    // A Kafka tombstone has a null value: `null`, or nothing at all.
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value = crate::exact::parse(raw).map_err(|e| format!("not valid JSON: {e}"))?;
    let mut envelope = match value {
        Value::Null => return Ok(None),
        Value::Object(map) => map,
        other => return Err(format!("expected a JSON object, got {}", json_kind(&other))),
    };
    // `{"schema": ..., "payload": ...}` with the JSON converter's schemas on.
    if !envelope.contains_key("op") && envelope.contains_key("payload") {
        envelope = match envelope.remove("payload") {
            Some(Value::Object(map)) => map,
            Some(Value::Null) | None => return Ok(None),
            Some(other) => {
                return Err(format!(
                    "\"payload\" is {}, expected an object",
                    json_kind(&other)
                ));
            }
        };
    }
    let op = match envelope.get("op") {
        Some(Value::String(op)) => op.clone(),
        Some(other) => return Err(format!("\"op\" is {}, expected a string", json_kind(other))),
        None => {
            return Err("no \"op\": not a change event (a heartbeat or another message?)".into());
        }
    };
    let source = source(&envelope)?;
    // Rows are read only for row changes (and after the commit time is
    // known to be there: that error comes first).
    let rows = matches!(op.as_str(), "c" | "u" | "d" | "r") && source.commit_time().is_some();
    let (before, after) = if rows {
        (row(&envelope, "before")?, row(&envelope, "after")?)
    } else {
        (None, None)
    };
    Ok(Some(Envelope {
        op: Some(Cow::Owned(op)),
        before,
        after,
        source: Some(source),
    }))
}

fn interpret(envelope: Envelope<'_>, raw: &[u8]) -> Result<Event, String> {
    let Envelope {
        op,
        before,
        after,
        source,
    } = envelope;
    let op = op.as_deref().unwrap_or_default();
    let source = source.unwrap_or_default();
    let commit_time = source.commit_time();
    let lsn = source
        .lsn
        .map(|l| u64::try_from(l).map_err(|_| format!("\"source.lsn\" is negative ({l})")))
        .transpose()?;
    let operation = match op {
        "c" => Operation::Insert,
        "u" => Operation::Update,
        "d" => Operation::Delete,
        "r" => Operation::Snapshot,
        "t" | "m" => {
            return Ok(Event::Control {
                commit_time,
                position: lsn.map(|l| SourcePosition::from_numbers(&[l])),
            });
        }
        other => {
            return Err(format!("unknown op {other:?}; expected one of c, u, d, r, t, m"));
        }
    };
    let commit_time =
        commit_time.ok_or_else(|| format!("op {op:?} has no \"source.ts_ms\" (commit time)"))?;
    let (change, key_rows) = match operation {
        Operation::Delete => {
            let before = before
                .ok_or("op \"d\" has no \"before\" row (the table's REPLICA IDENTITY gives no old key)")?;
            (Change::Delete, [Some(before), after])
        }
        Operation::Update => {
            let mut after = after.ok_or("op \"u\" has no \"after\" row")?;
            let before_len = after.len();
            after.retain(|_, value| !is_unavailable(value));
            let change = if after.len() == before_len {
                Change::Full(after)
            } else {
                Change::Merge(after)
            };
            (change, [before, None])
        }
        _ => {
            let after = after.ok_or_else(|| format!("op {op:?} has no \"after\" row"))?;
            (Change::Full(after), [before, None])
        }
    };
    let sequence = match (lsn, source.ts_ms) {
        (Some(lsn), _) => SourcePosition::from_numbers(&[lsn]),
        (None, Some(ms)) => SourcePosition::from_numbers(&[u64::try_from(ms).unwrap_or(0)]),
        (None, None) => {
            SourcePosition::from_numbers(&[u64::try_from(commit_time.as_micros() / 1000).unwrap_or(0)])
        }
    };
    Ok(Event::Row(Box::new(RowEvent {
        table: source.table.filter(|t| !t.is_empty()).map(Cow::into_owned),
        operation,
        change,
        key_rows,
        commit_time,
        position: sequence.with_digest_of(raw),
    })))
}

fn source(envelope: &Map<String, Value>) -> Result<SourceFields<'static>, String> {
    let source = match envelope.get("source") {
        None | Some(Value::Null) => return Ok(SourceFields::default()),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(format!("\"source\" is {}, expected an object", json_kind(other))),
    };
    let integer = |field: &str| -> Result<Option<i64>, String> {
        match source.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("\"source.{field}\" is {n}, expected an integer")),
            Some(other) => Err(format!(
                "\"source.{field}\" is {}, expected an integer",
                json_kind(other)
            )),
        }
    };
    let ts_ms = integer("ts_ms")?;
    let ts_us = integer("ts_us")?;
    let ts_usec = integer("ts_usec")?;
    let lsn = integer("lsn")?;
    if let Some(l) = lsn.filter(|l| *l < 0) {
        return Err(format!("\"source.lsn\" is negative ({l})"));
    }
    let table = match source.get("table") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(Cow::Owned(t.clone())),
        Some(other) => {
            return Err(format!(
                "\"source.table\" is {}, expected a string",
                json_kind(other)
            ));
        }
    };
    Ok(SourceFields {
        table,
        ts_ms,
        ts_us,
        ts_usec,
        lsn,
    })
}

/// `before` or `after`: an object, or absent/null.
fn row(envelope: &Map<String, Value>, field: &str) -> Result<Option<State>, String> {
    match envelope.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map.clone())),
        Some(other) => Err(format!("\"{field}\" is {}, expected an object", json_kind(other))),
    }
}

/// Whether a column value is Debezium's unavailable-value placeholder.
fn is_unavailable(value: &Value) -> bool {
    match value {
        Value::String(s) => s == UNAVAILABLE_VALUE || s == UNAVAILABLE_VALUE_BASE64,
        Value::Array(items) => matches!(items.as_slice(), [Value::String(s)] if s == UNAVAILABLE_VALUE),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The event as read through a JSON value only (the path that explains
    /// mistakes).
    fn through_value(raw: &[u8]) -> Result<Event, String> {
        match envelope_of(raw)? {
            Some(envelope) => interpret(envelope, raw),
            None => Ok(Event::Control {
                commit_time: None,
                position: None,
            }),
        }
    }

    #[test]
    fn events_read_the_same_directly_and_through_a_json_value() {
        let fixtures = concat!(
            include_str!("../tests/fixtures/debezium/cross.jsonl"),
            include_str!("../tests/fixtures/debezium/events.jsonl"),
            include_str!("../tests/fixtures/debezium/key_columns.jsonl"),
            include_str!("../tests/fixtures/debezium/malformed.jsonl"),
        );
        let extra = [
            r#"{"op":"t","before":5,"source":{"ts_ms":1,"lsn":7}}"#,
            r#"{"op":"c","after":{"id":1},"source":{"ts_ms":1,"lsn":-1}}"#,
            r#"{"op":"c","after":{"id":1},"source":{"ts_ms":1.5}}"#,
            r#"{"op":"c","after":{"id":1},"source":{"table":""}}"#,
            r#"{"op":"c","op":"d","before":{"id":1},"source":{"ts_us":5}}"#,
            r#"{"op":"u","after":{"id":1,"b":"__debezium_unavailable_value"},"source":{"ts_usec":5,"table":"t"}}"#,
            r#"{"schema":{},"payload":{"op":"r","after":{"id":2},"source":{"ts_ms":3}}}"#,
            r#"{"schema":{},"payload":null}"#,
            "null",
            "",
            r#"{"op":"x","source":{"ts_ms":1}}"#,
            r#"{"op":"c","after":[1],"source":{"ts_ms":1}}"#,
            // Arrays where objects belong (serde reads a struct from one,
            // field by field).
            r#"["c",null,{"id":1},{"table":"t","ts_ms":1,"lsn":7}]"#,
            r#"{"op":"c","after":{"id":1},"source":["t",1]}"#,
        ];
        let mut rows = 0;
        for line in fixtures.lines().chain(extra) {
            let raw = line.as_bytes();
            let event = parse(raw);
            assert_eq!(event, through_value(raw), "{line}");
            rows += usize::from(matches!(event, Ok(Event::Row(_))));
        }
        assert!(rows > 10, "{rows} row events read");
    }

    /// Standard base64 with padding, for checking the constant.
    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn placeholder_forms_are_recognized() {
        assert_eq!(base64(UNAVAILABLE_VALUE.as_bytes()), UNAVAILABLE_VALUE_BASE64);
        assert!(is_unavailable(&json!(UNAVAILABLE_VALUE_BASE64)));
        assert!(is_unavailable(&json!(UNAVAILABLE_VALUE)));
        assert!(is_unavailable(&json!([UNAVAILABLE_VALUE])));
        assert!(!is_unavailable(&json!("x")));
        assert!(!is_unavailable(&Value::Null));
    }
}
