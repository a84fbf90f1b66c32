//! Postgres logical decoding: [`Wal2Json`] (wal2json `format-version` 2) and
//! [`PgOutput`] (decoded pgoutput row changes, [`PgRowChange`] as JSON).
//!
//! Both read one JSON object per event and share the relational rules of
//! this crate: the model is the table name (not schema-qualified) unless
//! [`FormatOptions::model`] is set; the record id is the primary-key value as
//! text (`42`, `abc`, a composite key as the JSON array text `[1,"a"]`); the
//! state is a JSON object of column name to value.
//!
//! # wal2json
//!
//! Start the slot with `format-version=2`, `include-timestamp=1` (required:
//! the commit time of every row change), and preferably `include-lsn=1`,
//! `include-pk=1` (key columns) and `include-transaction=1` (the default;
//! `B`/`C` records advance the watermark). The position of a row change is
//! its `lsn` followed by a digest of the event; without `include-lsn` it is
//! the digest only, and changes of one transaction (which share a commit
//! time) then have no order among themselves.
//!
//! | action | result |
//! |---|---|
//! | `I` | [`Change::Full`] of `columns`, [`Operation::Insert`] |
//! | `U` | [`Change::Merge`] of `columns`, [`Operation::Update`] |
//! | `D` | [`Change::Delete`], key from `identity`, [`Operation::Delete`] |
//! | `B`, `C` | control: commit time from `timestamp`, position from `lsn` |
//! | `M`, `T` | control (messages and truncates change no single record) |
//!
//! wal2json omits unchanged TOAST columns from an update's `columns`, so an
//! update is a merge: columns it carries replace the previous values, the
//! others keep them.
//!
//! Key columns are the `pk` of the event (with `include-pk`), else
//! [`FormatOptions::key_columns`], else `id`. The id of an insert or update
//! is the key of its new row (`columns`, falling back to `identity`); the id
//! of a delete is its old key (`identity`). **An update that changes the
//! primary key** is recorded as a merge into the record of the *new* key;
//! the record of the old key is left as it was (a wal2json event is one
//! change of one record, and the old row's full content is not carried).
//! Reconcile such tables with a key that does not change.
//!
//! Values are taken as wal2json writes them: numbers unquoted (`numeric` too,
//! so a `numeric` beyond `f64` precision loses digits; use
//! `numeric-data-types-as-string=1` to keep them exact, as strings), booleans,
//! strings, `null`.
//!
//! # pgoutput
//!
//! [`PgRowChange`] is the decoded form of one pgoutput `Insert`, `Update` or
//! `Delete` message with its relation and transaction, one JSON object per
//! event; see its documentation for the shape and the conversion of values.

use overseer_core::{
    Change, ConsumeError, Consumed, ConsumedRecord, Consumer, Format, Operation, SourcePosition, State,
    StateBuilder, Timestamp, UpdateDocument,
};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::FormatOptions;
use crate::relational::{self, json_kind};

/// The format name of wal2json changes.
pub const WAL2JSON_FORMAT: &str = "wal2json";
/// The format name of decoded pgoutput row changes.
pub const PGOUTPUT_FORMAT: &str = "pgoutput";

/// What one event of either format is, before its record key is resolved
/// (the builder needs only the change; the consumer also needs the key).
#[derive(Debug, PartialEq)]
enum Event {
    Row(Box<RowEvent>),
    Control {
        commit_time: Option<Timestamp>,
        position: Option<SourcePosition>,
    },
}

/// One row change.
#[derive(Debug, PartialEq)]
struct RowEvent {
    table: String,
    /// The key columns the event names itself (empty if none).
    key_columns: Vec<String>,
    operation: Operation,
    change: Change,
    /// Where the key values are looked up after the change's own row, in
    /// order of preference ([`relational::key_rows`]).
    key_rows: [Option<State>; 2],
    commit_time: Timestamp,
    position: SourcePosition,
}

impl RowEvent {
    fn into_consumed(self, format: &str, options: &FormatOptions) -> Result<Consumed, ConsumeError> {
        let columns = relational::key_columns(&self.key_columns, options);
        let key = relational::record_key(
            format,
            options,
            &self.table,
            &columns,
            &relational::key_rows(&self.change, &self.key_rows),
        )?;
        Ok(Consumed::Record(ConsumedRecord {
            key,
            operation: self.operation,
            commit_time: self.commit_time,
            position: self.position,
            change: self.change,
        }))
    }
}

fn format_of(name: &'static str) -> Format {
    Format::new(name).unwrap_or_else(|_| unreachable!("format names are non-empty literals"))
}

fn consume_with(
    format: &'static str,
    options: &FormatOptions,
    parse: fn(&[u8]) -> Result<Event, String>,
    raw: &[u8],
) -> Result<Consumed, ConsumeError> {
    match parse(raw).map_err(|reason| ConsumeError::new(format, reason))? {
        Event::Row(row) => (*row).into_consumed(format, options),
        Event::Control {
            commit_time,
            position,
        } => Ok(Consumed::Control {
            commit_time,
            position,
        }),
    }
}

fn decode_with(
    format: &'static str,
    parse: fn(&[u8]) -> Result<Event, String>,
    update: &UpdateDocument,
) -> Result<Change, ConsumeError> {
    match parse(&update.raw).map_err(|reason| ConsumeError::new(format, reason))? {
        Event::Row(row) => Ok(row.change),
        Event::Control { .. } => Err(ConsumeError::new(
            format,
            "the stored update is not a row change (insert, update or delete)",
        )),
    }
}

// ---------------------------------------------------------------------------
// wal2json
// ---------------------------------------------------------------------------

/// Consumer and state builder of wal2json `format-version` 2 changes (see the
/// [module documentation](self)).
///
/// ```
/// use overseer_builders::{FormatOptions, postgres::Wal2Json};
/// use overseer_core::{Consumed, Consumer};
/// let line = br#"{"action":"I","timestamp":"2024-03-01 12:00:00+00","lsn":"0/16B3748","schema":"public","table":"accounts","columns":[{"name":"id","type":"integer","value":1},{"name":"owner","type":"text","value":"ann"}]}"#;
/// let Consumed::Record(record) = Wal2Json::new(FormatOptions::default()).consume(line)? else { unreachable!() };
/// assert_eq!(record.key.to_string(), "accounts/1");
/// # Ok::<(), overseer_core::ConsumeError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Wal2Json {
    options: FormatOptions,
}

impl Wal2Json {
    /// A consumer with these options (`model`, `key_columns`).
    pub fn new(options: FormatOptions) -> Self {
        Self { options }
    }
}

impl Consumer for Wal2Json {
    fn format(&self) -> Format {
        format_of(WAL2JSON_FORMAT)
    }

    fn consume(&self, raw: &[u8]) -> Result<Consumed, ConsumeError> {
        consume_with(WAL2JSON_FORMAT, &self.options, parse_wal2json, raw)
    }
}

impl StateBuilder for Wal2Json {
    fn format(&self) -> Format {
        Consumer::format(self)
    }

    fn decode(&self, update: &UpdateDocument) -> Result<Change, ConsumeError> {
        decode_with(WAL2JSON_FORMAT, parse_wal2json, update)
    }
}

fn parse_object(raw: &[u8]) -> Result<Map<String, Value>, String> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err("empty event".into());
    }
    match crate::exact::parse(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("expected a JSON object, got {}", json_kind(&other))),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// An optional string field (absent and `null` are `None`).
fn opt_str<'a>(event: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, String> {
    match event.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("\"{field}\" is {}, expected a string", json_kind(other))),
    }
}

fn parse_wal2json(raw: &[u8]) -> Result<Event, String> {
    // The common case, a well-formed event, is read straight into its
    // fields; anything else is read again as a JSON value, whose checks say
    // precisely what is wrong.
    match crate::parse_json_object::<Wal2JsonFields<'_>>(raw) {
        Ok(fields) if fields.action.is_some() => interpret_wal2json(fields, raw),
        _ => interpret_wal2json(wal2json_fields_of(raw)?, raw),
    }
}

/// The fields of a wal2json v2 event that Overseer reads (others are
/// ignored).
#[derive(Deserialize, Debug, PartialEq)]
struct Wal2JsonFields<'a> {
    #[serde(borrow, default)]
    action: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    lsn: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    table: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "wal2json_state")]
    columns: Option<State>,
    #[serde(default, deserialize_with = "wal2json_state")]
    identity: Option<State>,
    #[serde(default, deserialize_with = "wal2json_pk_names")]
    pk: Vec<String>,
    /// Whether the event has format-version 1's `change` array (only read
    /// from the JSON value, to explain a missing `action`).
    #[serde(skip)]
    v1: bool,
}

/// One `{"name", "type", "value"}` column (the type is not needed).
#[derive(Deserialize)]
struct Wal2JsonColumn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(deserialize_with = "crate::exact::value")]
    value: Value,
}

#[derive(Deserialize)]
struct Wal2JsonPk {
    name: String,
}

fn wal2json_state<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<State>, D::Error> {
    let columns: Option<Vec<crate::ObjectOnly<Wal2JsonColumn<'de>>>> = Option::deserialize(d)?;
    Ok(columns.map(|columns| {
        columns
            .into_iter()
            .map(|crate::ObjectOnly(c)| (c.name.into_owned(), c.value))
            .collect()
    }))
}

fn wal2json_pk_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let pk: Option<Vec<crate::ObjectOnly<Wal2JsonPk>>> = Option::deserialize(d)?;
    Ok(pk
        .unwrap_or_default()
        .into_iter()
        .map(|crate::ObjectOnly(c)| c.name)
        .collect())
}

/// The fields of a wal2json event read through a JSON value, with an error
/// that names what is wrong.
fn wal2json_fields_of(raw: &[u8]) -> Result<Wal2JsonFields<'_>, String> {
    let event = parse_object(raw)?;
    let text = |field: &str| opt_str(&event, field).map(|s| s.map(|s| Cow::Owned(s.to_owned())));
    let action = text("action")?;
    let mut fields = Wal2JsonFields {
        timestamp: text("timestamp")?,
        lsn: text("lsn")?,
        table: None,
        columns: None,
        identity: None,
        pk: Vec::new(),
        v1: event.contains_key("change"),
        action,
    };
    // Transaction records and messages carry no row: their other fields
    // are not read.
    if matches!(fields.action.as_deref(), Some("I" | "U" | "D")) {
        fields.table = text("table")?;
        fields.columns = wal2json_columns(&event, "columns")?;
        fields.identity = wal2json_columns(&event, "identity")?;
        fields.pk = wal2json_pk(&event)?;
    }
    Ok(fields)
}

fn interpret_wal2json(event: Wal2JsonFields<'_>, raw: &[u8]) -> Result<Event, String> {
    let Some(action) = event.action.as_deref() else {
        return Err(if event.v1 {
            "this is wal2json format-version 1 output (a \"change\" array); start the slot with format-version=2"
                .into()
        } else {
            "no \"action\"; expected wal2json format-version 2 output".into()
        });
    };
    let commit_time = event
        .timestamp
        .as_deref()
        .map(relational::parse_pg_timestamp)
        .transpose()?;
    let lsn = event.lsn.as_deref().map(relational::parse_lsn).transpose()?;
    let operation = match action {
        "I" => Operation::Insert,
        "U" => Operation::Update,
        "D" => Operation::Delete,
        // Transaction boundaries, logical messages and truncates change no
        // single record (a truncate is not applied to the table's records).
        "B" | "C" | "M" | "T" => {
            return Ok(Event::Control {
                commit_time,
                position: lsn.map(|l| SourcePosition::from_numbers(&[l])),
            });
        }
        other => {
            return Err(format!(
                "unknown action {other:?}; expected one of B, C, I, U, D, M, T"
            ));
        }
    };
    let table = event
        .table
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("action {action} has no \"table\""))?
        .to_owned();
    let commit_time = commit_time.ok_or_else(|| {
        format!("action {action} has no \"timestamp\"; start the slot with include-timestamp=1")
    })?;
    let (change, key_rows) = match operation {
        Operation::Insert => {
            let columns = event.columns.ok_or("action I has no \"columns\"")?;
            (Change::Full(columns), [event.identity, None])
        }
        Operation::Update => {
            let columns = event.columns.ok_or("action U has no \"columns\"")?;
            (Change::Merge(columns), [event.identity, None])
        }
        _ => {
            let identity = event
                .identity
                .ok_or("action D has no \"identity\" (the table's REPLICA IDENTITY gives no old key)")?;
            (Change::Delete, [Some(identity), None])
        }
    };
    let position = lsn
        .map_or_else(SourcePosition::default, |l| SourcePosition::from_numbers(&[l]))
        .with_digest_of(raw);
    Ok(Event::Row(Box::new(RowEvent {
        table,
        key_columns: event.pk,
        operation,
        change,
        key_rows,
        commit_time,
        position,
    })))
}

/// The `columns` or `identity` of a wal2json v2 event: an array of
/// `{"name", "type", "value"}` objects, as a state.
fn wal2json_columns(event: &Map<String, Value>, field: &str) -> Result<Option<State>, String> {
    let items = match event.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(format!("\"{field}\" is {}, expected an array", json_kind(other))),
    };
    let mut state = State::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(column) = item else {
            return Err(format!("{field}[{i}] is {}, expected an object", json_kind(item)));
        };
        let Some(Value::String(name)) = column.get("name") else {
            return Err(format!("{field}[{i}] has no string \"name\""));
        };
        let value = column
            .get("value")
            .ok_or_else(|| format!("{field}[{i}] ({name:?}) has no \"value\""))?;
        state.insert(name.clone(), value.clone());
    }
    Ok(Some(state))
}

/// The primary-key column names of `pk` (`include-pk`); empty if absent.
fn wal2json_pk(event: &Map<String, Value>) -> Result<Vec<String>, String> {
    let items = match event.get("pk") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(format!("\"pk\" is {}, expected an array", json_kind(other))),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.get("name") {
            Some(Value::String(name)) => Ok(name.clone()),
            _ => Err(format!("pk[{i}] has no string \"name\"")),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// pgoutput
// ---------------------------------------------------------------------------

/// Type OIDs of the Postgres built-in types whose text form is converted.
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const OID: u32 = 26;
    pub(super) const JSON: u32 = 114;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const NUMERIC: u32 = 1700;
    pub(super) const JSONB: u32 = 3802;
}

/// A decoded pgoutput row change: one logical replication `Insert`, `Update`
/// or `Delete` message, with the relation it refers to (from the preceding
/// `Relation` message) and its transaction's commit time and LSN (from
/// `Begin`/`Commit`). Serialized as one JSON object per event:
///
/// ```json
/// {"relation": {"schema": "public", "table": "accounts", "key_columns": ["id"]},
///  "op": "update",
///  "commit_time": "2024-03-01T12:00:00.123456Z",
///  "lsn": "0/16B3748",
///  "new": [{"name": "id", "type_oid": 23, "value": {"text": "1"}},
///          {"name": "bio", "type_oid": 25, "value": "unchanged_toast"},
///          {"name": "note", "type_oid": 25, "value": "null"}],
///  "old": [{"name": "id", "type_oid": 23, "value": {"text": "1"}}]}
/// ```
///
/// Values are pgoutput's text form ([`PgValue`]), converted to JSON by type
/// OID:
///
/// | type (OID) | JSON |
/// |---|---|
/// | `bool` (16) | `t`/`f` to `true`/`false` |
/// | `int2`, `int4`, `int8`, `oid` (21, 23, 20, 26) | integer |
/// | `float4`, `float8` (700, 701) | number; `NaN`, `Infinity`, `-Infinity` stay strings |
/// | `numeric` (1700) | number if the nearest `f64` has exactly the text's value (its shortest decimal form is the same number: `12.50`, `0.1`), else the text as a string, so no digit is ever lost (`12345678901234567890.5`, `NaN`, `Infinity`) |
/// | `json`, `jsonb` (114, 3802) | the parsed JSON |
/// | any other type | the text as a string |
///
/// Numbers get the JSON type a JSON parser gives the same literal, as
/// wal2json writes them unquoted (`3` an integer, `3.0` and `1e3` floats),
/// with correctly rounded floats. A text that is not valid for its type
/// rejects the event.
///
/// `insert` is a [`Change::Full`] of `new`; `update` a [`Change::Full`] of
/// `new`, or, when some columns are `unchanged_toast`, a [`Change::Merge`]
/// without them (so they keep their values; a full row also drops columns
/// the table no longer has); `delete` a [`Change::Delete`] whose key is read
/// from `old` (else `new`). The key columns are `relation.key_columns`, else
/// [`FormatOptions::key_columns`], else `id`. The record id of an insert or
/// update is the key of `new` (falling back to `old`): an update that
/// changes the key is a change of the new key's record, as for wal2json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PgRowChange {
    /// The table changed.
    pub relation: PgRelation,
    /// What the message did.
    pub op: PgOperation,
    /// The commit time of the message's transaction, RFC 3339 in JSON.
    #[serde(with = "rfc3339")]
    pub commit_time: Timestamp,
    /// The LSN of the change (else of its transaction's commit), `X/Y` in
    /// JSON like Postgres prints it. Without it, positions are a digest of
    /// the event only.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "lsn_text")]
    pub lsn: Option<u64>,
    /// The new row (`insert`, `update`; the `N` tuple), every column of the
    /// relation in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new: Vec<PgColumn>,
    /// The old row (`update`, `delete`): the old key (`K` tuple, non-key
    /// columns null) or the whole old row with `REPLICA IDENTITY FULL`
    /// (`O` tuple); absent when pgoutput sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Vec<PgColumn>>,
}

/// The relation of a [`PgRowChange`] (from pgoutput's `Relation` message).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgRelation {
    /// The namespace.
    #[serde(default)]
    pub schema: String,
    /// The table name: the model of its records.
    pub table: String,
    /// The primary-key columns, in key order; empty if not known (the
    /// consumer's [`FormatOptions::key_columns`], else `id`, apply). The
    /// `Relation` message flags the replica identity columns: with the
    /// default identity they are the primary key, but with `REPLICA IDENTITY
    /// FULL` every column is flagged, so a producer should then give the
    /// primary key (from the catalog) or leave this empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_columns: Vec<String>,
}

/// The operation of a [`PgRowChange`]: `insert`, `update` or `delete` in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgOperation {
    /// An `Insert` message.
    Insert,
    /// An `Update` message.
    Update,
    /// A `Delete` message.
    Delete,
}

/// One column of a pgoutput tuple.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgColumn {
    /// The column name.
    pub name: String,
    /// The column's type OID (from the `Relation` message).
    pub type_oid: u32,
    /// The value.
    pub value: PgValue,
}

/// A pgoutput column value: `"null"`, `"unchanged_toast"` or
/// `{"text": "..."}` in JSON (pgoutput's `n`, `u` and `t` kinds; the binary
/// kind `b` is not supported: stream in text mode, the default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PgValue {
    /// SQL `NULL`.
    Null,
    /// An unchanged TOASTed value, not sent: the column keeps its value.
    UnchangedToast,
    /// The value in the type's text output form.
    Text(String),
}

/// `Timestamp` as RFC 3339 text.
mod rfc3339 {
    use overseer_core::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(t)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An optional LSN as `X/Y` text.
mod lsn_text {
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)] // the signature serde's `with` requires
    pub(super) fn serialize<S: Serializer>(lsn: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match lsn {
            Some(lsn) => s.serialize_some(&crate::relational::format_lsn(*lsn)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| crate::relational::parse_lsn(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl PgRowChange {
    /// The columns of a tuple as a state, without unchanged TOAST columns;
    /// the flag tells whether any was left out.
    fn state(columns: &[PgColumn]) -> Result<(State, bool), String> {
        let mut state = State::new();
        let mut omitted = false;
        for column in columns {
            let value = match &column.value {
                PgValue::Null => Value::Null,
                PgValue::UnchangedToast => {
                    omitted = true;
                    continue;
                }
                PgValue::Text(text) => text_to_json(column.type_oid, text).map_err(|why| {
                    format!("column {:?} (type OID {}): {why}", column.name, column.type_oid)
                })?,
            };
            state.insert(column.name.clone(), value);
        }
        Ok((state, omitted))
    }
}

/// A pgoutput text value as JSON, by type OID (see [`PgRowChange`]).
fn text_to_json(type_oid: u32, text: &str) -> Result<Value, String> {
    let special = |t: &str| matches!(t, "NaN" | "Infinity" | "-Infinity");
    match type_oid {
        oid::BOOL => match text {
            "t" => Ok(Value::Bool(true)),
            "f" => Ok(Value::Bool(false)),
            _ => Err(format!("{text:?} is not a boolean (t or f)")),
        },
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => text
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("{text:?} is not an integer")),
        oid::FLOAT4 | oid::FLOAT8 => match number(text) {
            Some(n) => Ok(Value::Number(n)),
            None if special(text) => Ok(Value::String(text.to_owned())),
            None => Err(format!("{text:?} is not a floating-point number")),
        },
        oid::NUMERIC => match number(text) {
            Some(n) if !n.is_f64() || same_decimal(text, &n.to_string()) => Ok(Value::Number(n)),
            Some(_) => Ok(Value::String(text.to_owned())),
            None if special(text) || is_json_number(text) => Ok(Value::String(text.to_owned())),
            None => Err(format!("{text:?} is not a numeric")),
        },
        oid::JSON | oid::JSONB => {
            crate::exact::parse(text.as_bytes()).map_err(|e| format!("not valid JSON: {e}"))
        }
        _ => Ok(Value::String(text.to_owned())),
    }
}

/// Whether `text` is a JSON number literal (`-1`, `2.50`, `1e+20`).
fn is_json_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if bytes.first() == Some(&b'-') {
        i += 1;
    }
    match bytes.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == bytes.len()
}

/// A number text as JSON, typed as a JSON parser types the same literal
/// (no fraction or exponent: an integer; else a float), but with a
/// correctly rounded float (serde_json's default parsing is best-effort).
/// `None` if it is not a JSON number literal or overflows a float.
fn number(text: &str) -> Option<Number> {
    if !is_json_number(text) {
        return None;
    }
    // `-0` is a float for JSON parsers (there is no negative integer zero).
    if !text.contains(['.', 'e', 'E']) && text != "-0" {
        if let Ok(n) = text.parse::<i64>() {
            return Some(Number::from(n));
        }
        if let Ok(n) = text.parse::<u64>() {
            return Some(Number::from(n));
        }
    }
    text.parse::<f64>().ok().and_then(Number::from_f64)
}

/// Whether two decimal number texts (`4.560`, `4.56`, `1.5e3`) have the same
/// value.
fn same_decimal(a: &str, b: &str) -> bool {
    matches!((decimal_parts(a), decimal_parts(b)), (Some(x), Some(y)) if x == y)
}

/// A decimal number text as (negative, significant digits, exponent of the
/// last digit); zero is `(false, "", 0)`.
fn decimal_parts(text: &str) -> Option<(bool, String, i64)> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], unsigned[i + 1..].parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let all = format!("{int}{frac}");
    let digits = all.trim_start_matches('0');
    let significant = digits.trim_end_matches('0');
    if significant.is_empty() {
        return Some((false, String::new(), 0));
    }
    let frac_len = i64::try_from(frac.len()).ok()?;
    let trailing = i64::try_from(digits.len() - significant.len()).ok()?;
    // An exponent at the edge of i64 (a forged value) has no such form.
    let last = exponent.checked_sub(frac_len)?.checked_add(trailing)?;
    Some((negative, significant.to_owned(), last))
}

fn parse_pgoutput(raw: &[u8]) -> Result<Event, String> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err("empty event".into());
    }
    let change: PgRowChange =
        crate::parse_json(raw).map_err(|e| format!("not a pgoutput row change (PgRowChange JSON): {e}"))?;
    if change.relation.table.is_empty() {
        return Err("relation.table is empty".into());
    }
    let (new, omitted) = if change.new.is_empty() {
        (None, false)
    } else {
        let (state, omitted) = PgRowChange::state(&change.new).map_err(|e| format!("new: {e}"))?;
        (Some(state), omitted)
    };
    let old = match &change.old {
        Some(columns) if !columns.is_empty() => {
            Some(PgRowChange::state(columns).map_err(|e| format!("old: {e}"))?.0)
        }
        _ => None,
    };
    let (operation, row_change, key_rows) = match change.op {
        PgOperation::Insert => {
            let new = new.ok_or("insert without a \"new\" row")?;
            if omitted {
                return Err("insert with an unchanged_toast column".into());
            }
            (Operation::Insert, Change::Full(new), [old, None])
        }
        PgOperation::Update => {
            let new = new.ok_or("update without a \"new\" row")?;
            let row_change = if omitted {
                Change::Merge(new)
            } else {
                Change::Full(new)
            };
            (Operation::Update, row_change, [old, None])
        }
        PgOperation::Delete => {
            if old.is_none() && new.is_none() {
                return Err("delete without an \"old\" row (the key of the deleted row)".into());
            }
            (Operation::Delete, Change::Delete, [old, new])
        }
    };
    let position = change
        .lsn
        .map_or_else(SourcePosition::default, |l| SourcePosition::from_numbers(&[l]))
        .with_digest_of(raw);
    Ok(Event::Row(Box::new(RowEvent {
        table: change.relation.table,
        key_columns: change.relation.key_columns,
        operation,
        change: row_change,
        key_rows,
        commit_time: change.commit_time,
        position,
    })))
}

/// Consumer and state builder of decoded pgoutput row changes
/// ([`PgRowChange`] as JSON, one per event).
#[derive(Clone, Debug, Default)]
pub struct PgOutput {
    options: FormatOptions,
}

impl PgOutput {
    /// A consumer with these options (`model`, `key_columns`).
    pub fn new(options: FormatOptions) -> Self {
        Self { options }
    }
}

impl Consumer for PgOutput {
    fn format(&self) -> Format {
        format_of(PGOUTPUT_FORMAT)
    }

    fn consume(&self, raw: &[u8]) -> Result<Consumed, ConsumeError> {
        consume_with(PGOUTPUT_FORMAT, &self.options, parse_pgoutput, raw)
    }
}

impl StateBuilder for PgOutput {
    fn format(&self) -> Format {
        Consumer::format(self)
    }

    fn decode(&self, update: &UpdateDocument) -> Result<Change, ConsumeError> {
        decode_with(PGOUTPUT_FORMAT, parse_pgoutput, update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wal2json_events_read_the_same_directly_and_through_a_json_value() {
        let fixtures = concat!(
            include_str!("../tests/fixtures/wal2json/accounts.jsonl"),
            include_str!("../tests/fixtures/wal2json/composite.jsonl"),
            include_str!("../tests/fixtures/wal2json/cross.jsonl"),
            include_str!("../tests/fixtures/wal2json/key_columns.jsonl"),
            include_str!("../tests/fixtures/wal2json/malformed.jsonl"),
            include_str!("../tests/fixtures/wal2json/no_pk.jsonl"),
        );
        let extra = [
            r#"{"action":"B","xid":1,"table":5,"columns":"x","timestamp":"2024-03-01 12:00:00+00"}"#,
            r#"{"action":"I","table":"t","timestamp":"2024-03-01 12:00:00+00","columns":[{"name":"id","value":1},{"name":"id","value":2}]}"#,
            r#"{"action":"I","action":"D","table":"t","timestamp":"2024-03-01 12:00:00+00","identity":[{"name":"id","value":1}]}"#,
            r#"{"action":"I","table":"t","timestamp":"2024-03-01 12:00:00+00","columns":[{"name":"n\u00e9","value":"\"q\""}],"pk":[{"name":"id","type":"int"}]}"#,
            r#"{"action":"U","table":"t","timestamp":"2024-03-01 12:00:00+00","columns":[{"name":"id"}]}"#,
            r#"{"action":null,"change":[]}"#,
            // Arrays where objects belong (serde reads a struct from one,
            // field by field).
            r#"["I","2024-03-01 12:00:00+00","0/16",null,[{"name":"id","value":1}]]"#,
            r#"{"action":"I","table":"t","timestamp":"2024-03-01 12:00:00+00","columns":[["id",1]]}"#,
            r#"{"action":"I","table":"t","timestamp":"2024-03-01 12:00:00+00","columns":[{"name":"id","value":1}],"pk":[["id"]]}"#,
        ];
        let mut rows = 0;
        for line in fixtures.lines().chain(extra).filter(|l| !l.trim().is_empty()) {
            let raw = line.as_bytes();
            let through_value = wal2json_fields_of(raw).and_then(|f| interpret_wal2json(f, raw));
            let event = parse_wal2json(raw);
            assert_eq!(event, through_value, "{line}");
            rows += usize::from(matches!(event, Ok(Event::Row(_))));
        }
        assert!(rows > 20, "{rows} row events read");
    }

    #[test]
    fn text_values_convert_by_type_oid() {
        let cases: &[(u32, &str, Value)] = &[
            (oid::BOOL, "t", json!(true)),
            (oid::BOOL, "f", json!(false)),
            (oid::INT2, "-7", json!(-7)),
            (oid::INT4, "42", json!(42)),
            (
                oid::INT8,
                "9223372036854775807",
                json!(9_223_372_036_854_775_807_i64),
            ),
            (oid::OID, "4294967295", json!(4_294_967_295_u32)),
            (oid::FLOAT8, "1.5", json!(1.5)),
            (oid::FLOAT8, "1", json!(1)),
            (oid::FLOAT4, "1e+20", json!(1e20)),
            (oid::FLOAT8, "NaN", json!("NaN")),
            (oid::FLOAT8, "-Infinity", json!("-Infinity")),
            (oid::NUMERIC, "4.560", json!(4.56)),
            (oid::NUMERIC, "100", json!(100)),
            (oid::NUMERIC, "0.1", json!(0.1)),
            (
                oid::NUMERIC,
                "12345678901234567890.5",
                json!("12345678901234567890.5"),
            ),
            (
                oid::NUMERIC,
                "0.10000000000000000001",
                json!("0.10000000000000000001"),
            ),
            (
                oid::NUMERIC,
                "123456789012345678901234567890",
                json!("123456789012345678901234567890"),
            ),
            (oid::NUMERIC, "NaN", json!("NaN")),
            (oid::NUMERIC, "1e400", json!("1e400")),
            // serde_json's default (best-effort) parsing misses this value by
            // an ulp; the correctly rounded float has the text's value.
            (
                oid::NUMERIC,
                "44964106540443870000000000000000000000000000000000000000000000000",
                json!(4.496_410_654_044_387e64),
            ),
            (oid::FLOAT8, "1.7976931348623157e308", json!(f64::MAX)),
            (oid::JSONB, r#"{"a": [1, "x"]}"#, json!({"a": [1, "x"]})),
            (oid::JSON, "null", Value::Null),
            (25, "hello", json!("hello")),
            (1184, "2024-03-01 12:00:00+00", json!("2024-03-01 12:00:00+00")),
        ];
        for (type_oid, text, expected) in cases {
            assert_eq!(
                text_to_json(*type_oid, text).as_ref(),
                Ok(expected),
                "{type_oid} {text:?}"
            );
        }
        for (type_oid, text) in [
            (oid::BOOL, "yes"),
            (oid::INT4, "4.5"),
            (oid::INT8, "99999999999999999999"),
            (oid::FLOAT8, "one"),
            (oid::FLOAT8, " 1"),
            (oid::FLOAT8, "inf"),
            (oid::INT4, ""),
            (oid::NUMERIC, "1,5"),
            (oid::JSONB, "{"),
        ] {
            assert!(text_to_json(type_oid, text).is_err(), "{type_oid} {text:?}");
        }
    }

    #[test]
    fn numbers_are_typed_like_a_json_parser_types_them() {
        for text in [
            "0",
            "-0",
            "7",
            "-7",
            "18446744073709551615",
            "18446744073709551616",
            "1.0",
            "2.50",
            "1e3",
            "-1E-3",
        ] {
            let ours = number(text).map(|n| (n.is_i64(), n.is_u64(), n.is_f64(), n.as_f64()));
            let theirs = serde_json::from_str::<Number>(text)
                .ok()
                .map(|n| (n.is_i64(), n.is_u64(), n.is_f64(), n.as_f64()));
            assert_eq!(ours, theirs, "{text}");
        }
        for text in [
            "", "-", "01", "1.", ".5", "+1", "1e", "1e+", " 1", "1 ", "0x10", "1_0", "NaN", "inf",
        ] {
            assert!(!is_json_number(text), "{text:?}");
        }
    }

    #[test]
    fn decimal_values_compare_by_value() {
        assert!(same_decimal("4.560", "4.56"));
        assert!(same_decimal("100.00", "100.0"));
        assert!(same_decimal("1e3", "1000"));
        assert!(same_decimal("0.000", "0"));
        assert!(same_decimal("-0.5", "-5e-1"));
        assert!(!same_decimal("0.5", "-0.5"));
        assert!(!same_decimal("1.2345678901234567e19", "12345678901234567890"));
        assert!(!same_decimal("abc", "abc"));
        // An exponent at the edge of i64 (a forged value) compares unequal
        // rather than overflowing.
        assert!(!same_decimal("1.5e-9223372036854775808", "0"));
        assert!(!same_decimal(
            "0.1e-9223372036854775808",
            "0.1e-9223372036854775808"
        ));
        assert!(!same_decimal("100e9223372036854775807", "1e9223372036854775807"));
    }

    #[test]
    fn pg_row_change_serde_shape() {
        let change = PgRowChange {
            relation: PgRelation {
                schema: "public".into(),
                table: "t".into(),
                key_columns: vec!["id".into()],
            },
            op: PgOperation::Update,
            commit_time: Timestamp::from_secs(1_709_294_400),
            lsn: Some(0x16B_3748),
            new: vec![
                PgColumn {
                    name: "id".into(),
                    type_oid: 23,
                    value: PgValue::Text("1".into()),
                },
                PgColumn {
                    name: "big".into(),
                    type_oid: 25,
                    value: PgValue::UnchangedToast,
                },
                PgColumn {
                    name: "x".into(),
                    type_oid: 25,
                    value: PgValue::Null,
                },
            ],
            old: None,
        };
        let json = serde_json::to_value(&change).map_err(|e| e.to_string());
        assert_eq!(
            json,
            Ok(json!({
                "relation": {"schema": "public", "table": "t", "key_columns": ["id"]},
                "op": "update",
                "commit_time": "2024-03-01T12:00:00Z",
                "lsn": "0/16B3748",
                "new": [
                    {"name": "id", "type_oid": 23, "value": {"text": "1"}},
                    {"name": "big", "type_oid": 25, "value": "unchanged_toast"},
                    {"name": "x", "type_oid": 25, "value": "null"}
                ]
            }))
        );
        let back = json.and_then(|j| serde_json::from_value::<PgRowChange>(j).map_err(|e| e.to_string()));
        assert_eq!(back, Ok(change));
    }

    proptest::proptest! {
        #[test]
        fn finite_floats_as_numeric_text_stay_numbers(x in proptest::num::f64::NORMAL | proptest::num::f64::ZERO) {
            // The text as JSON prints the float (ryu's shortest form; Rust's
            // `Display` may pick another shortest form, which JSON would
            // print differently, so that one rightly stays a string).
            let text = serde_json::Number::from_f64(x).map(|n| n.to_string()).unwrap_or_default();
            let value = text_to_json(oid::NUMERIC, &text);
            proptest::prop_assert_eq!(value.as_ref().ok().and_then(Value::as_f64), Some(x), "{}", text);
        }

        #[test]
        fn long_numeric_text_is_never_rounded(int in "[1-9][0-9]{0,30}", frac in "[0-9]{0,12}") {
            let text = if frac.is_empty() { int } else { format!("{int}.{frac}") };
            match text_to_json(oid::NUMERIC, &text) {
                Ok(Value::String(s)) => proptest::prop_assert_eq!(s, text),
                Ok(Value::Number(n)) => proptest::prop_assert!(same_decimal(&text, &n.to_string()), "{} became {}", text, n),
                other => proptest::prop_assert!(false, "{} gave {:?}", text, other),
            }
        }
    }
}
