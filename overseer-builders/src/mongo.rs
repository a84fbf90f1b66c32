//! MongoDB change streams.
//!
//! [`Mongo`] reads change events as a change stream delivers them
//! (<https://www.mongodb.com/docs/manual/reference/change-events/>), written
//! as relaxed or canonical Extended JSON v2, one event per line:
//!
//! | `operationType` | operation | change |
//! |---|---|---|
//! | `insert` | [`Operation::Insert`] | [`Change::Full`] of `fullDocument` |
//! | `replace` | [`Operation::Replace`] | [`Change::Full`] of `fullDocument` |
//! | `update` | [`Operation::Update`] | [`Change::Patch`] of `updateDescription` |
//! | `delete` | [`Operation::Delete`] | [`Change::Delete`] |
//! | `drop`, `rename`, `invalidate`, `dropDatabase`, other DDL and internal events | — | [`Consumed::Control`] |
//!
//! Any other `operationType` is rejected, naming it.
//!
//! **Record.** The model is [`FormatOptions::model`] if set, else the event's
//! `ns.coll`. The record id is the text of `documentKey._id` (see
//! [`id_text`]): a string as is, an ObjectId as its hex string, a number as
//! its decimal text, anything else (a document `_id`, ...) as its compact
//! relaxed Extended JSON text.
//!
//! **Time and position.** The commit time is `wallTime` (milliseconds) when
//! the event has it, else the seconds of `clusterTime`. The position is
//! `clusterTime` as `(t, i)`, then the resume token (`_id._data`, a hex
//! string whose order is the stream's order: within one transaction, whose
//! events share a `clusterTime`, it orders them by their index in the
//! transaction), then a digest of the raw event, so that distinct events
//! never share a position and a re-delivered event keeps its own.
//!
//! **Values.** Documents and values are stored in relaxed Extended JSON
//! ([`to_relaxed`]), so that an event read in canonical form and the same
//! event in relaxed form give the same state: `{"$numberInt": "5"}` becomes
//! `5`, a `$date` between the years 1970 and 9999 becomes
//! `{"$date": "2022-07-19T09:47:53.123Z"}`; ObjectIds, decimals, binaries,
//! timestamps, regular expressions, non-finite doubles and out-of-range dates
//! keep their Extended JSON form. Field order is preserved.
//!
//! **Updates.** An update is folded from its delta (`updatedFields` with
//! dotted paths into nested documents and array elements, `removedFields`,
//! `truncatedArrays`, and `disambiguatedPaths` for field names containing
//! dots), even when the event also carries a `fullDocument`
//! (`fullDocument: "updateLookup"`): the looked-up document is the
//! majority-committed document at lookup time, which may already include
//! later changes, while the delta is what this event changed at its own
//! time. An insert or replace whose `fullDocument` has no `_id` gets the
//! document key's `_id` as its first field. A path deeper than a MongoDB
//! document can nest (more than [`MAX_PATH_SEGMENTS`] levels) is
//! rejected: such an event is corrupt or forged.
//!
//! **Simplified events.** Events without `operationType`, shaped like
//! `{"_id": "t-1", "fullDocument": {...}, "clusterTime": 1658224073}` or
//! `{"_id": "t-1", "updateDescription": {...}, "clusterTime": 1658224074}`,
//! are read too: the record id is `documentKey._id` if present, else the
//! top-level `_id`; `clusterTime` may be integer Unix seconds; the operation
//! is an update when there is an `updateDescription`, else an insert when
//! there is a `fullDocument`. Such events rarely name their collection, so
//! the model comes from [`FormatOptions::model`] (`--model`) or `ns.coll`.
//!
//! ```
//! use overseer_builders::{FormatOptions, mongo::Mongo};
//! use overseer_core::{Consumed, Consumer, Operation};
//!
//! let mongo = Mongo::new(FormatOptions::default());
//! let event = br#"{"_id": {"_data": "8262A3"}, "operationType": "insert",
//!     "clusterTime": {"$timestamp": {"t": 1654878543, "i": 1}},
//!     "ns": {"db": "engineering", "coll": "users"},
//!     "documentKey": {"_id": {"$oid": "58a4eb4a30c75625e00d2820"}},
//!     "fullDocument": {"_id": {"$oid": "58a4eb4a30c75625e00d2820"}, "age": {"$numberInt": "42"}}}"#;
//! let Consumed::Record(record) = mongo.consume(event)? else { unreachable!() };
//! assert_eq!(record.key.to_string(), "users/58a4eb4a30c75625e00d2820");
//! assert_eq!(record.operation, Operation::Insert);
//! # Ok::<(), overseer_core::ConsumeError>(())
//! ```

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use overseer_core::change::{FieldPath, MAX_PATH_SEGMENTS, Patch};
use overseer_core::{
    Change, ConsumeError, Consumed, ConsumedRecord, Consumer, Format, Model, Operation, RecordId, RecordKey,
    SourcePosition, StateBuilder, Timestamp, UpdateDocument,
};
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;

use crate::FormatOptions;

/// The format name of MongoDB change events.
pub const FORMAT: &str = "mongo";

/// The operation types of change events that change no document (DDL,
/// stream and sharding events); they are consumed as [`Consumed::Control`].
pub const CONTROL_OPERATION_TYPES: &[&str] = &[
    "drop",
    "rename",
    "dropDatabase",
    "invalidate",
    "create",
    "createIndexes",
    "dropIndexes",
    "modify",
    "shardCollection",
    "refineCollectionShardKey",
    "reshardCollection",
    "reshardBegin",
    "reshardDoneCatchUp",
    "reshardBlockingWrites",
    "migrateChunkToNewShard",
    "migrateLastChunkFromShard",
    "startIndexBuild",
    "abortIndexBuild",
    "endOfTransaction",
];

/// The longest prefix of a resume token kept in a position: enough for the
/// cluster time, token version and type, the index of the event in its
/// transaction and the collection UUID; the digest breaks any remaining tie.
const MAX_TOKEN_CHARS: usize = 128;

/// Consumer and builder of MongoDB change stream events (see the
/// [module documentation](self) for what is read and how).
#[derive(Clone, Debug, Default)]
pub struct Mongo {
    options: FormatOptions,
}

impl Mongo {
    /// A consumer with these options; it reads [`FormatOptions::model`] only.
    pub fn new(options: FormatOptions) -> Self {
        Self { options }
    }
}

fn reject(reason: impl Into<String>) -> ConsumeError {
    ConsumeError::new(FORMAT, reason)
}

/// The JSON type of a value, for error messages.
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

/// A value's compact JSON text for an error message, cut to 80 characters.
fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// What an event is, from its `operationType` (or its shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A document change with its operation; `simplified` when the event
    /// has no `operationType`.
    Record { operation: Operation, simplified: bool },
    /// An event that changes no document.
    Control,
}

/// Parses one raw event into its top-level object.
fn parse_root(raw: &[u8]) -> Result<Map<String, Value>, ConsumeError> {
    match crate::exact::parse(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(reject(format!(
            "expected a JSON object (one change event), found {}",
            type_name(&other)
        ))),
        Err(e) => Err(reject(format!("not valid JSON: {e}"))),
    }
}

fn kind_of(root: &Map<String, Value>) -> Result<Kind, ConsumeError> {
    let record = |operation| {
        Ok(Kind::Record {
            operation,
            simplified: false,
        })
    };
    match root.get("operationType") {
        Some(Value::String(op)) => match op.as_str() {
            "insert" => record(Operation::Insert),
            "update" => record(Operation::Update),
            "replace" => record(Operation::Replace),
            "delete" => record(Operation::Delete),
            other if CONTROL_OPERATION_TYPES.contains(&other) => Ok(Kind::Control),
            other => Err(reject(format!(
                "unknown operationType {other:?}; expected insert, update, replace, delete or one of {}",
                CONTROL_OPERATION_TYPES.join(", ")
            ))),
        },
        Some(other) => Err(reject(format!(
            "operationType must be a string, found {}",
            type_name(other)
        ))),
        None => {
            let operation = if root.contains_key("updateDescription") {
                Operation::Update
            } else if root.contains_key("fullDocument") {
                Operation::Insert
            } else {
                return Err(reject(
                    "event has no operationType, and neither an updateDescription nor a fullDocument \
                     to infer it from",
                ));
            };
            Ok(Kind::Record {
                operation,
                simplified: true,
            })
        }
    }
}

/// The `_id` of the changed document: `documentKey._id`, or for simplified
/// events without a `documentKey`, the top-level `_id`.
fn document_id(root: &Map<String, Value>, simplified: bool) -> Result<&Value, ConsumeError> {
    match root.get("documentKey") {
        Some(Value::Object(key)) => key.get("_id").ok_or_else(|| reject("documentKey has no _id")),
        Some(other) => Err(reject(format!(
            "documentKey must be an object, found {}",
            type_name(other)
        ))),
        None if simplified => root
            .get("_id")
            .ok_or_else(|| reject("event has no documentKey and no _id: cannot tell which record changed")),
        None => Err(reject(
            "event has no documentKey: cannot tell which record changed",
        )),
    }
}

/// The record id text of a MongoDB `_id` value (canonical or relaxed
/// Extended JSON): a string as is, an ObjectId as its hex string, a number
/// (including `$numberInt`, `$numberLong`, `$numberDouble` and
/// `$numberDecimal`) as its decimal text, anything else as its compact
/// relaxed Extended JSON text. `None` for an empty string.
///
/// ```
/// use overseer_builders::mongo::id_text;
/// use serde_json::json;
/// assert_eq!(id_text(&json!({"$oid": "58a4eb4a30c75625e00d2820"})).as_deref(), Some("58a4eb4a30c75625e00d2820"));
/// assert_eq!(id_text(&json!({"$numberLong": "42"})).as_deref(), Some("42"));
/// assert_eq!(id_text(&json!({"a": {"$numberInt": "1"}})).as_deref(), Some(r#"{"a":1}"#));
/// assert_eq!(id_text(&json!("")), None);
/// ```
pub fn id_text(value: &Value) -> Option<String> {
    let relaxed = to_relaxed(value);
    let text = match &relaxed {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(map) if map.len() == 1 => match map.iter().next() {
            Some((k, Value::String(s))) if k == "$oid" || k == "$numberDecimal" => s.clone(),
            _ => serde_json::to_string(&relaxed).ok()?,
        },
        other => serde_json::to_string(other).ok()?,
    };
    (!text.is_empty()).then_some(text)
}

/// A non-negative integer from a JSON number or an Extended JSON
/// `$numberInt`/`$numberLong`.
fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::Object(map) if map.len() == 1 => match map.iter().next() {
            Some((k, Value::String(s))) if k == "$numberInt" || k == "$numberLong" => s.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// `clusterTime` as `(t, i)`: a BSON Timestamp `{"$timestamp": {"t", "i"}}`,
/// or (simplified events) integer Unix seconds, with `i = 0`.
fn cluster_time(root: &Map<String, Value>) -> Result<Option<(u32, u32)>, ConsumeError> {
    let Some(value) = root.get("clusterTime") else {
        return Ok(None);
    };
    let invalid = || {
        reject(format!(
            "clusterTime must be a Timestamp {{\"$timestamp\": {{\"t\": <seconds>, \"i\": <increment>}}}} \
             or integer Unix seconds, found {}",
            excerpt(value)
        ))
    };
    let in_range = |n: u64, what: &str| {
        u32::try_from(n).map_err(|_| {
            reject(format!(
                "clusterTime {what} {n} is out of range for Unix seconds (is it in milliseconds?)"
            ))
        })
    };
    if let Value::Object(map) = value
        && let Some(ts) = map.get("$timestamp")
    {
        let Value::Object(ts) = ts else {
            return Err(invalid());
        };
        let t = ts.get("t").and_then(as_u64).ok_or_else(invalid)?;
        let i = ts.get("i").and_then(as_u64).ok_or_else(invalid)?;
        return Ok(Some((in_range(t, "t")?, in_range(i, "i")?)));
    }
    let secs = as_u64(value).ok_or_else(invalid)?;
    Ok(Some((in_range(secs, "seconds")?, 0)))
}

/// `wallTime`: `{"$date": "<ISO-8601>"}`, `{"$date": {"$numberLong": "<ms>"}}`
/// or `{"$date": <ms>}`.
fn wall_time(root: &Map<String, Value>) -> Result<Option<Timestamp>, ConsumeError> {
    let Some(value) = root.get("wallTime") else {
        return Ok(None);
    };
    date_of(value).map(Some).ok_or_else(|| {
        reject(format!(
            "wallTime must be a date {{\"$date\": \"2022-07-19T09:47:53.123Z\"}} or \
             {{\"$date\": {{\"$numberLong\": \"<ms>\"}}}}, found {}",
            excerpt(value)
        ))
    })
}

fn date_of(value: &Value) -> Option<Timestamp> {
    let Value::Object(map) = value else {
        return None;
    };
    match map.get("$date")? {
        Value::String(s) => date_text(s),
        Value::Number(n) => n.as_i64().map(Timestamp::from_millis),
        Value::Object(inner) => match inner.get("$numberLong")? {
            Value::String(s) => s.parse().ok().map(Timestamp::from_millis),
            _ => None,
        },
        _ => None,
    }
}

/// A `$date` string: ISO-8601 (RFC 3339).
fn date_text(s: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| Timestamp::from_micros(t.timestamp_micros()))
}

/// The resume token (`_id._data`) if it is a hex string, upper-cased (as
/// MongoDB writes it) and cut to [`MAX_TOKEN_CHARS`].
fn resume_token(root: &Map<String, Value>) -> Option<String> {
    let Some(Value::Object(id)) = root.get("_id") else {
        return None;
    };
    let Some(Value::String(data)) = id.get("_data") else {
        return None;
    };
    token_of(data)
}

/// [`resume_token`] from the text of `_id._data`.
fn token_of(data: &str) -> Option<String> {
    if data.is_empty() || !data.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut token = data.to_ascii_uppercase();
    token.truncate(MAX_TOKEN_CHARS);
    Some(token)
}

fn position_of(root: &Map<String, Value>, cluster: (u32, u32), raw: &[u8]) -> SourcePosition {
    position_with(resume_token(root), cluster, raw)
}

fn position_with(token: Option<String>, (t, i): (u32, u32), raw: &[u8]) -> SourcePosition {
    let base = SourcePosition::from_numbers(&[u64::from(t), u64::from(i)]);
    let base = match token {
        Some(token) => SourcePosition::new(format!("{base}.{token}")),
        None => base,
    };
    base.with_digest_of(raw)
}

fn commit_time_of(wall: Option<Timestamp>, cluster: Option<(u32, u32)>) -> Option<Timestamp> {
    wall.or_else(|| cluster.map(|(t, _)| Timestamp::from_secs(i64::from(t))))
}

/// Converts canonical Extended JSON v2 to relaxed, recursively:
/// `$numberInt` and `$numberLong` become JSON numbers, `$numberDouble`
/// becomes a JSON number unless it is `Infinity`, `-Infinity` or `NaN`, and
/// `{"$date": {"$numberLong": ms}}` becomes `{"$date": "<ISO-8601 UTC,
/// milliseconds>"}` when its year is 1970 to 9999. Every other value is kept
/// as is (ObjectIds, decimals, binaries, timestamps, regular expressions,
/// relaxed values), and field order is preserved.
///
/// ```
/// use overseer_builders::mongo::to_relaxed;
/// use serde_json::json;
/// let canonical = json!({
///     "n": {"$numberInt": "5"},
///     "x": {"$numberDouble": "1.5"},
///     "inf": {"$numberDouble": "Infinity"},
///     "at": {"$date": {"$numberLong": "1658224073123"}},
///     "id": {"$oid": "58a4eb4a30c75625e00d2820"},
/// });
/// assert_eq!(to_relaxed(&canonical), json!({
///     "n": 5,
///     "x": 1.5,
///     "inf": {"$numberDouble": "Infinity"},
///     "at": {"$date": "2022-07-19T09:47:53.123Z"},
///     "id": {"$oid": "58a4eb4a30c75625e00d2820"},
/// }));
/// ```
pub fn to_relaxed(value: &Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(to_relaxed).collect()),
        Value::Object(map) => {
            if map.len() == 1
                && let Some((key, inner)) = map.iter().next()
                && TYPE_WRAPPERS.contains(&key.as_str())
            {
                // A typed value: converted, or kept exactly as written (an
                // out-of-range `$date` keeps its inner `$numberLong`).
                return relaxed_wrapper(key, inner).unwrap_or_else(|| value.clone());
            }
            Value::Object(relaxed_map(map))
        }
        other => other.clone(),
    }
}

/// Converts a value to relaxed Extended JSON in place (no copy of what is
/// already relaxed).
fn relax_in_place(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(relax_in_place),
        Value::Object(map) => {
            if map.len() == 1
                && let Some((key, inner)) = map.iter().next()
                && TYPE_WRAPPERS.contains(&key.as_str())
            {
                if let Some(relaxed) = relaxed_wrapper(key, inner) {
                    *value = relaxed;
                }
                return;
            }
            map.values_mut().for_each(relax_in_place);
        }
        _ => {}
    }
}

fn relaxed_map(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter().map(|(k, v)| (k.clone(), to_relaxed(v))).collect()
}

/// The keys of one-key Extended JSON v2 objects that stand for a typed value.
const TYPE_WRAPPERS: &[&str] = &[
    "$numberInt",
    "$numberLong",
    "$numberDouble",
    "$numberDecimal",
    "$date",
    "$oid",
    "$binary",
    "$uuid",
    "$timestamp",
    "$regularExpression",
    "$dbPointer",
    "$symbol",
    "$code",
    "$minKey",
    "$maxKey",
    "$undefined",
];

/// The relaxed form of a one-key Extended JSON wrapper, if it has one.
fn relaxed_wrapper(key: &str, inner: &Value) -> Option<Value> {
    match (key, inner) {
        ("$numberInt", Value::String(text)) => text.parse::<i32>().ok().map(Value::from),
        ("$numberLong", Value::String(text)) => text.parse::<i64>().ok().map(Value::from),
        ("$numberDouble", Value::String(text)) => match text.as_str() {
            "Infinity" | "-Infinity" | "NaN" => None,
            _ => text
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number),
        },
        ("$date", Value::Object(wrapped)) if wrapped.len() == 1 => {
            let Some(Value::String(ms)) = wrapped.get("$numberLong") else {
                return None;
            };
            let time = DateTime::<Utc>::from_timestamp_millis(ms.parse().ok()?)?;
            (1970..=9999).contains(&time.year()).then(|| {
                let mut out = Map::new();
                out.insert(
                    "$date".to_owned(),
                    Value::String(time.to_rfc3339_opts(SecondsFormat::Millis, true)),
                );
                Value::Object(out)
            })
        }
        _ => None,
    }
}

fn object_field<'a>(
    map: &'a Map<String, Value>,
    name: &str,
    owner: &str,
) -> Result<Option<&'a Map<String, Value>>, ConsumeError> {
    match map.get(name) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(reject(format!(
            "{owner}{name} must be an object, found {}",
            type_name(other)
        ))),
    }
}

fn array_field<'a>(
    map: &'a Map<String, Value>,
    name: &str,
    owner: &str,
) -> Result<&'a [Value], ConsumeError> {
    match map.get(name) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(reject(format!(
            "{owner}{name} must be an array, found {}",
            type_name(other)
        ))),
    }
}

/// The path of an updated or removed field: from `disambiguatedPaths` when
/// it lists the dotted name, else the dotted name split on dots. A path
/// deeper than a MongoDB document can nest is refused.
fn field_path(dotted: &str, disambiguated: Option<&Map<String, Value>>) -> Result<FieldPath, ConsumeError> {
    let too_deep = |depth: usize| {
        let start: String = dotted.chars().take(40).collect();
        reject(format!(
            "updated path {start:?}… has {depth} levels; MongoDB documents nest at most \
             {MAX_PATH_SEGMENTS}, so the event is corrupt or forged"
        ))
    };
    // A dotted path is measured before it is split, so that a forged one
    // is not split first; one listed in `disambiguatedPaths` once read.
    if !disambiguated.is_some_and(|d| d.contains_key(dotted)) {
        let depth = dotted.bytes().filter(|&b| b == b'.').count() + 1;
        if depth > MAX_PATH_SEGMENTS {
            return Err(too_deep(depth));
        }
    }
    let path = split_field_path(dotted, disambiguated)?;
    match path.segments().len() {
        depth if depth > MAX_PATH_SEGMENTS => Err(too_deep(depth)),
        _ => Ok(path),
    }
}

fn split_field_path(
    dotted: &str,
    disambiguated: Option<&Map<String, Value>>,
) -> Result<FieldPath, ConsumeError> {
    let Some(entry) = disambiguated.and_then(|d| d.get(dotted)) else {
        return Ok(FieldPath::parse(dotted));
    };
    let Value::Array(items) = entry else {
        return Err(reject(format!(
            "updateDescription.disambiguatedPaths.{dotted} must be an array, found {}",
            type_name(entry)
        )));
    };
    let mut segments = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(s) => segments.push(s.clone()),
            other => match as_u64(other) {
                Some(n) => segments.push(n.to_string()),
                None => {
                    return Err(reject(format!(
                        "updateDescription.disambiguatedPaths.{dotted} holds {}; expected field names \
                         and array indexes",
                        type_name(other)
                    )));
                }
            },
        }
    }
    match segments.as_slice() {
        [] => Err(reject(format!(
            "updateDescription.disambiguatedPaths.{dotted} is empty"
        ))),
        [one] => Ok(FieldPath::field(one.clone())),
        many if many.iter().any(|s| s.contains('.')) => Err(reject(format!(
            "updated path {dotted:?} goes through a field whose name contains a dot below the top level \
             ({many:?}), which cannot be represented"
        ))),
        many => Ok(FieldPath::parse(&many.join("."))),
    }
}

/// The patch of an update event's `updateDescription`.
fn patch_of(root: &mut Map<String, Value>) -> Result<Patch, ConsumeError> {
    // The updated values are taken out of the parsed event, not copied.
    let updated_fields = match root.get_mut("updateDescription") {
        Some(Value::Object(d)) => d.remove("updatedFields"),
        _ => None,
    };
    let root: &Map<String, Value> = root;
    let description = match root.get("updateDescription") {
        Some(Value::Object(d)) => d,
        Some(other) => {
            return Err(reject(format!(
                "updateDescription must be an object, found {}",
                type_name(other)
            )));
        }
        None if root.contains_key("rawUpdateDescription") => {
            return Err(reject(
                "update event has a rawUpdateDescription (showRawUpdateDescription) instead of an \
                 updateDescription; open the change stream without it",
            ));
        }
        None => return Err(reject("update event has no updateDescription")),
    };
    const OWNER: &str = "updateDescription.";
    let disambiguated = object_field(description, "disambiguatedPaths", OWNER)?;
    let mut patch = Patch::default();
    for item in array_field(description, "truncatedArrays", OWNER)? {
        let Value::Object(t) = item else {
            return Err(reject(format!(
                "updateDescription.truncatedArrays holds {}; expected {{\"field\": .., \"newSize\": ..}}",
                type_name(item)
            )));
        };
        let field = match t.get("field") {
            Some(Value::String(f)) => f,
            _ => {
                return Err(reject(
                    "updateDescription.truncatedArrays entry has no string field",
                ));
            }
        };
        let size = t
            .get("newSize")
            .and_then(as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                reject(format!(
                    "updateDescription.truncatedArrays entry for {field:?} has no non-negative integer newSize"
                ))
            })?;
        patch.truncated.push((field_path(field, disambiguated)?, size));
    }
    for item in array_field(description, "removedFields", OWNER)? {
        let Value::String(field) = item else {
            return Err(reject(format!(
                "updateDescription.removedFields holds {}; expected field names",
                type_name(item)
            )));
        };
        patch.removed.push(field_path(field, disambiguated)?);
    }
    match updated_fields {
        None => {}
        Some(Value::Object(updated)) => {
            for (field, mut value) in updated {
                relax_in_place(&mut value);
                patch.updated.push((field_path(&field, disambiguated)?, value));
            }
        }
        Some(other) => {
            return Err(reject(format!(
                "{OWNER}updatedFields must be an object, found {}",
                type_name(&other)
            )));
        }
    }
    Ok(patch)
}

/// The whole new document of an insert or replace, in relaxed form, with
/// the document key's `_id` as first field if the document has none.
fn full_document(
    root: &mut Map<String, Value>,
    id: &Value,
    operation: Operation,
) -> Result<Change, ConsumeError> {
    // The document is taken out of the parsed event, not copied.
    let mut relaxed = match root.remove("fullDocument") {
        Some(Value::Object(d)) => d,
        Some(other) => {
            return Err(reject(format!(
                "fullDocument must be an object, found {}",
                type_name(&other)
            )));
        }
        None => return Err(reject(format!("{operation} event has no fullDocument"))),
    };
    for value in relaxed.values_mut() {
        relax_in_place(value);
    }
    if relaxed.contains_key("_id") {
        return Ok(Change::Full(relaxed));
    }
    let mut with_id = Map::with_capacity(relaxed.len() + 1);
    with_id.insert("_id".to_owned(), to_relaxed(id));
    with_id.extend(relaxed);
    Ok(Change::Full(with_id))
}

/// A parsed record event: what the consumer and the builder share.
struct RecordEvent {
    operation: Operation,
    simplified: bool,
    id: Value,
    change: Change,
}

/// Decodes the change of a record event (`None` for control events). Used
/// by both [`Consumer::consume`] and [`StateBuilder::decode`].
fn decode_record(root: &mut Map<String, Value>) -> Result<Option<RecordEvent>, ConsumeError> {
    let Kind::Record {
        operation,
        simplified,
    } = kind_of(root)?
    else {
        return Ok(None);
    };
    let id = document_id(root, simplified)?.clone();
    let change = match operation {
        Operation::Insert | Operation::Replace | Operation::Snapshot => full_document(root, &id, operation)?,
        Operation::Update => Change::Patch(patch_of(root)?),
        Operation::Delete => Change::Delete,
    };
    Ok(Some(RecordEvent {
        operation,
        simplified,
        id,
        change,
    }))
}

/// The common shape of a document change event (relaxed Extended JSON,
/// with `operationType`, a `$timestamp` cluster time and a string `$date`
/// wall time), read straight into the fields Overseer uses: the envelope's
/// other fields and sub-documents are skipped instead of being built as
/// JSON values. Any other shape, and any event the fast path cannot take
/// as it is, is read through a JSON value (see [`Mongo::consume`]), whose
/// checks say precisely what is wrong.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "_id", borrow, default, deserialize_with = "crate::opt_object_only")]
    token: Option<TokenFields<'a>>,
    #[serde(rename = "operationType", borrow)]
    operation_type: Cow<'a, str>,
    #[serde(rename = "clusterTime", deserialize_with = "crate::object_only")]
    cluster_time: ClusterTimeFields,
    #[serde(
        rename = "wallTime",
        borrow,
        default,
        deserialize_with = "crate::opt_object_only"
    )]
    wall_time: Option<DateFields<'a>>,
    #[serde(borrow, default, deserialize_with = "crate::opt_object_only")]
    ns: Option<NamespaceFields<'a>>,
    #[serde(rename = "documentKey", default, deserialize_with = "crate::exact::opt_value")]
    document_key: Option<Value>,
    #[serde(
        rename = "fullDocument",
        default,
        deserialize_with = "crate::exact::opt_value"
    )]
    full_document: Option<Value>,
    #[serde(
        rename = "updateDescription",
        default,
        deserialize_with = "crate::exact::opt_value"
    )]
    update_description: Option<Value>,
}

#[derive(Deserialize)]
struct TokenFields<'a> {
    #[serde(rename = "_data", borrow, default)]
    data: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ClusterTimeFields {
    #[serde(rename = "$timestamp", deserialize_with = "crate::object_only")]
    timestamp: TimestampFields,
}

#[derive(Deserialize)]
struct TimestampFields {
    t: u64,
    i: u64,
}

#[derive(Deserialize)]
struct DateFields<'a> {
    #[serde(rename = "$date", borrow)]
    date: Cow<'a, str>,
}

#[derive(Deserialize)]
struct NamespaceFields<'a> {
    #[serde(borrow, default)]
    coll: Option<Cow<'a, str>>,
}

/// A document change read by the fast path.
struct FastRecord {
    record: RecordEvent,
    coll: Option<String>,
    commit_time: Timestamp,
    cluster: (u32, u32),
    token: Option<String>,
}

/// Reads a document change of the common shape; `None` for anything else
/// (other shapes, control events, and every event the JSON-value path
/// would reject), which that path then reads. Where it returns a record,
/// it is the record that path reads (tested on every fixture).
fn fast_record(raw: &[u8]) -> Option<FastRecord> {
    let e: Envelope<'_> = crate::parse_json_object(raw).ok()?;
    if !matches!(&*e.operation_type, "insert" | "update" | "replace" | "delete") {
        return None;
    }
    let TimestampFields { t, i } = e.cluster_time.timestamp;
    let cluster = (u32::try_from(t).ok()?, u32::try_from(i).ok()?);
    let wall = match &e.wall_time {
        Some(w) => Some(date_text(&w.date)?),
        None => None,
    };
    let coll = match e.ns {
        Some(NamespaceFields { coll: Some(c) }) if !c.is_empty() => Some(c.into_owned()),
        Some(NamespaceFields { coll: Some(_) }) => return None,
        _ => None,
    };
    // What `decode_record` reads of the event, moved, not copied.
    let mut root = Map::with_capacity(4);
    root.insert(
        "operationType".to_owned(),
        Value::String(e.operation_type.into_owned()),
    );
    for (field, value) in [
        ("documentKey", e.document_key),
        ("fullDocument", e.full_document),
        ("updateDescription", e.update_description),
    ] {
        if let Some(value) = value {
            root.insert(field.to_owned(), value);
        }
    }
    let record = decode_record(&mut root).ok()??;
    Some(FastRecord {
        record,
        coll,
        commit_time: commit_time_of(wall, Some(cluster)).unwrap_or(Timestamp::EPOCH),
        cluster,
        token: e.token.and_then(|t| t.data).and_then(|d| token_of(&d)),
    })
}

impl Mongo {
    /// [`Consumer::consume`] of an event the fast path reads.
    fn consume_fast(&self, raw: &[u8]) -> Option<ConsumedRecord> {
        let fast = fast_record(raw)?;
        let model = match &self.options.model {
            Some(model) => model.clone(),
            None => Model::new(fast.coll?).ok()?,
        };
        let id = id_text(&fast.record.id)?;
        Some(ConsumedRecord {
            key: RecordKey {
                model,
                id: RecordId::new(&id).ok()?,
            },
            operation: fast.record.operation,
            commit_time: fast.commit_time,
            position: position_with(fast.token, fast.cluster, raw),
            change: fast.record.change,
        })
    }

    /// [`Consumer::consume`] through a JSON value: every shape, every error.
    fn consume_value(&self, raw: &[u8]) -> Result<Consumed, ConsumeError> {
        let mut root = parse_root(raw)?;
        let record = decode_record(&mut root)?;
        let wall = wall_time(&root)?;
        let cluster = cluster_time(&root)?;
        let Some(record) = record else {
            return Ok(Consumed::Control {
                commit_time: commit_time_of(wall, cluster),
                position: cluster.map(|ct| position_of(&root, ct, raw)),
            });
        };
        let cluster =
            cluster.ok_or_else(|| reject("event has no clusterTime: cannot tell when it committed"))?;
        let id = id_text(&record.id).ok_or_else(|| reject("the document _id is an empty string"))?;
        let key = RecordKey {
            model: self.model_of(&root, record.simplified)?,
            id: RecordId::new(&id).map_err(|e| reject(e.to_string()))?,
        };
        let commit_time = commit_time_of(wall, Some(cluster)).unwrap_or(Timestamp::EPOCH);
        Ok(Consumed::Record(ConsumedRecord {
            key,
            operation: record.operation,
            commit_time,
            position: position_of(&root, cluster, raw),
            change: record.change,
        }))
    }

    fn model_of(&self, root: &Map<String, Value>, simplified: bool) -> Result<Model, ConsumeError> {
        if let Some(model) = &self.options.model {
            return Ok(model.clone());
        }
        let coll = match root.get("ns") {
            Some(Value::Object(ns)) => match ns.get("coll") {
                Some(Value::String(coll)) if !coll.is_empty() => Some(coll),
                None => None,
                Some(other) => {
                    return Err(reject(format!(
                        "ns.coll must be a non-empty string, found {}",
                        excerpt(other)
                    )));
                }
            },
            Some(other) => {
                return Err(reject(format!(
                    "ns must be an object, found {}",
                    type_name(other)
                )));
            }
            None => None,
        };
        let coll = coll.ok_or_else(|| {
            if simplified {
                reject(
                    "the event names no collection (no ns.coll): pass --model NAME to give the model \
                     of these events",
                )
            } else {
                reject("event has no ns.coll: pass --model NAME to give the model of these events")
            }
        })?;
        Model::new(coll).map_err(|e| reject(e.to_string()))
    }
}

impl Consumer for Mongo {
    fn format(&self) -> Format {
        Format::new(FORMAT).unwrap_or_else(|_| unreachable!("the format name is not empty"))
    }

    fn consume(&self, raw: &[u8]) -> Result<Consumed, ConsumeError> {
        match self.consume_fast(raw) {
            Some(record) => Ok(Consumed::Record(record)),
            None => self.consume_value(raw),
        }
    }
}

impl StateBuilder for Mongo {
    fn format(&self) -> Format {
        Consumer::format(self)
    }

    fn decode(&self, update: &UpdateDocument) -> Result<Change, ConsumeError> {
        if let Some(fast) = fast_record(&update.raw) {
            return Ok(fast.record.change);
        }
        let mut root = parse_root(&update.raw)?;
        decode_record(&mut root)?
            .map(|r| r.change)
            .ok_or_else(|| reject("the event changes no document (a DDL or control event)"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The fixtures, plus events of shapes the fast path must leave to the
    /// JSON-value path (or take exactly as that path does).
    fn events() -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mongo");
        let mut events: Vec<Vec<u8>> = ["relaxed.jsonl", "canonical.jsonl", "malformed.jsonl"]
            .iter()
            .flat_map(|f| {
                std::fs::read(dir.join(f))
                    .unwrap()
                    .split(|b| *b == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .filter(|l| !l.is_empty())
            .collect();
        let base =
            r#""clusterTime": {"$timestamp": {"t": 1654878000, "i": 3}}, "ns": {"db": "d", "coll": "c"}"#;
        for extra in [
            // Ordinary events, a lower-case or odd resume token, no wall time.
            r#""_id": {"_data": "82abCD"}, "operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {"a": 1}"#,
            r#""_id": {"_data": "not hex"}, "operationType": "delete", "documentKey": {"_id": {"$oid": "58a4eb4a30c75625e00d2820"}}, "wallTime": {"$date": "2022-07-19T09:47:53.123Z"}"#,
            r#""_id": {"_data": "82AB"}, "operationType": "update", "documentKey": {"_id": 7}, "updateDescription": {"updatedFields": {"a.b": {"$numberInt": "5"}}, "removedFields": ["c"], "truncatedArrays": []}, "fullDocument": null"#,
            r#""operationType": "replace", "documentKey": {"_id": "k"}, "fullDocument": {"_id": "k", "n": {"$numberLong": "9"}}, "lsid": {"id": 1}, "txnNumber": 4"#,
            // Shapes left to the JSON-value path.
            r#""_id": "simplified", "operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {}"#,
            r#""operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": null"#,
            r#""operationType": "insert", "documentKey": null, "fullDocument": {}"#,
            r#""operationType": "update", "documentKey": {"_id": "k"}, "rawUpdateDescription": {}"#,
            r#""operationType": "update", "documentKey": {"_id": "k"}, "updateDescription": null"#,
            r#""operationType": "insert", "documentKey": {"_id": ""}, "fullDocument": {}"#,
            r#""operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {}, "wallTime": {"$date": "yesterday"}"#,
            r#""operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {}, "wallTime": {"$date": 1658224073123}"#,
            r#""operationType": "drop""#,
            r#""operationType": "shuffle", "documentKey": {"_id": "k"}"#,
        ] {
            events.push(format!("{{{extra}, {base}}}").into_bytes());
        }
        for other in [
            r#"{"operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {}, "clusterTime": {"$timestamp": {"t": 99999999999, "i": 1}}, "ns": {"coll": "c"}}"#,
            r#"{"operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {}, "clusterTime": 1654878000, "ns": {"coll": "c"}}"#,
            r#"{"operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {}, "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"coll": ""}}"#,
            r#"{"operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {}, "clusterTime": {"$timestamp": {"t": 1, "i": 1}}}"#,
            r#"{"operationType": "insert", "operationType": "delete", "documentKey": {"_id": "k"}, "fullDocument": {}, "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"coll": "c"}}"#,
            // Arrays where objects belong, which serde reads into a struct
            // field by field: the JSON-value path rejects them.
            r#"{"operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {}, "clusterTime": {"$timestamp": [1, 1]}, "ns": {"coll": "c"}}"#,
            r#"{"operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {}, "clusterTime": [[1, 1]], "ns": {"coll": "c"}}"#,
            r#"{"operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {}, "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": ["c"]}"#,
            r#"{"operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {}, "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"coll": "c"}, "wallTime": ["2022-07-19T09:47:53.123Z"]}"#,
            r#"{"_id": ["82AB"], "operationType": "insert", "documentKey": {"_id": "k"}, "fullDocument": {}, "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "ns": {"coll": "c"}}"#,
            r#"[null, "insert", {"$timestamp": {"t": 1, "i": 1}}, null, {"coll": "c"}, {"_id": "k"}, {}]"#,
        ] {
            events.push(other.as_bytes().to_vec());
        }
        events
    }

    #[test]
    fn the_fast_path_reads_what_the_json_value_path_reads() {
        let with_model = FormatOptions {
            model: Some(Model::new("forced").unwrap()),
            ..FormatOptions::default()
        };
        let mut fast = 0;
        for options in [FormatOptions::default(), with_model] {
            let mongo = Mongo::new(options);
            for raw in events() {
                let text = String::from_utf8_lossy(&raw).into_owned();
                if let Some(record) = mongo.consume_fast(&raw) {
                    fast += 1;
                    assert_eq!(
                        Some(Consumed::Record(record)),
                        mongo.consume_value(&raw).ok(),
                        "{text}"
                    );
                }
                if let Some(f) = fast_record(&raw) {
                    let mut root = parse_root(&raw).unwrap();
                    let slow = decode_record(&mut root).unwrap().unwrap();
                    assert_eq!(f.record.change, slow.change, "{text}");
                }
                // Whichever path reads it, the outcome is the value path's.
                assert_eq!(mongo.consume(&raw).ok(), mongo.consume_value(&raw).ok(), "{text}");
            }
        }
        // At least the eight document changes of the relaxed fixture and the
        // four ordinary events above took the fast path, with and without a
        // model.
        assert!(fast >= 2 * (8 + 4), "the fast path read {fast} events");
    }
}
