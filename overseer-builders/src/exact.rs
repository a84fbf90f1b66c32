//! JSON values with their objects and arrays allocated at their exact size.
//!
//! `serde_json` builds a [`Value`]'s objects and arrays by pushing entries
//! one at a time (JSON does not say how many follow), so their storage
//! grows by doubling as they are read: several allocations and copies per
//! object, and room for up to twice the entries it holds, kept for as long
//! as the value lives. A record's state lives long (it is folded into the
//! record's memo and read by the checks), and a change event is made of
//! many small objects (`{"$date": …}`, `{"$numberDecimal": …}`, nested
//! documents). Here each object's entries are first gathered in a buffer
//! reused from one event to the next, then moved into a map allocated for
//! exactly that many: the same value (same entries, same order, the same
//! duplicate-key rule: the last value wins, at the first key's place), in
//! less memory (`docs/performance.md` has the figures).
//!
//! The built-in formats read every value that ends up in a record's state
//! through this module; a consumer of another format can too, for the
//! `State`s it returns.
//!
//! ```
//! use serde::Deserialize;
//! use serde_json::{Map, Value, json};
//!
//! let value = overseer_builders::exact::parse(br#"{"a":[1,2],"b":{"c":null}}"#)?;
//! assert_eq!(value, json!({"a": [1, 2], "b": {"c": null}}));
//!
//! // A typed envelope whose document is read exactly sized.
//! #[derive(Deserialize)]
//! struct Envelope {
//!     op: String,
//!     #[serde(default, deserialize_with = "overseer_builders::exact::opt_object")]
//!     after: Option<Map<String, Value>>,
//! }
//! let e: Envelope = serde_json::from_str(r#"{"op":"u","after":{"id":7}}"#)?;
//! assert_eq!(e.op, "u");
//! assert_eq!(e.after.map(Value::Object), Some(json!({"id": 7})));
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::cell::RefCell;
use std::fmt;
use std::thread::LocalKey;

use serde::Deserializer;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Buffers kept per thread, one per level of nesting being read.
const POOLED_BUFFERS: usize = 32;
/// A buffer that grew past this many entries (a huge object or array) is
/// freed rather than kept.
const POOLED_CAPACITY: usize = 512;

thread_local! {
    static ARRAYS: RefCell<Vec<Vec<Value>>> = const { RefCell::new(Vec::new()) };
    static OBJECTS: RefCell<Vec<Vec<(String, Value)>>> = const { RefCell::new(Vec::new()) };
}

/// Takes a buffer from `pool` (an empty one, possibly with room; a new one
/// when the pool is empty or the thread is exiting).
fn take<T>(pool: &'static LocalKey<RefCell<Vec<Vec<T>>>>) -> Vec<T> {
    pool.try_with(|p| p.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Gives an emptied buffer back to `pool`, unless it is too big to keep.
fn give<T>(pool: &'static LocalKey<RefCell<Vec<Vec<T>>>>, mut buffer: Vec<T>) {
    buffer.clear();
    if buffer.capacity() == 0 || buffer.capacity() > POOLED_CAPACITY {
        return;
    }
    // A thread that is exiting frees it instead.
    let _ = pool.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOLED_BUFFERS {
            p.push(buffer);
        }
    });
}

/// What `fill` reads, gathered in a buffer of `pool` and then collected
/// into a `C` allocated for exactly that many (a `Vec`, or a `Map`, sizes
/// itself from the iterator's exact length). The buffer goes back to the
/// pool emptied, when `fill` fails too.
fn gather<T, C: FromIterator<T>, E>(
    pool: &'static LocalKey<RefCell<Vec<Vec<T>>>>,
    fill: impl FnOnce(&mut Vec<T>) -> Result<(), E>,
) -> Result<C, E> {
    let mut buffer = take(pool);
    let gathered = fill(&mut buffer).map(|()| buffer.drain(..).collect());
    give(pool, buffer);
    gathered
}

/// Reads one JSON value of any kind, exactly sized (a [`DeserializeSeed`]
/// and its own [`Visitor`]).
#[derive(Clone, Copy, Debug)]
struct Exact;

impl<'de> DeserializeSeed<'de> for Exact {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Exact {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As `serde_json` does: a number JSON cannot hold is null.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        gather(&ARRAYS, |items| {
            while let Some(item) = seq.next_element_seed(Exact)? {
                items.push(item);
            }
            Ok(())
        })
        .map(Value::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        read_object(&mut map).map(Value::Object)
    }
}

/// Reads an object's entries into a map of exactly their number (a
/// repeated key keeps its first place and takes its last value, as
/// `serde_json` reads it).
fn read_object<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Map<String, Value>, A::Error> {
    gather(&OBJECTS, |entries| {
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Exact)?;
            entries.push((key, value));
        }
        Ok(())
    })
}

/// Reads a JSON object only (a [`Visitor`] that refuses anything else).
#[derive(Clone, Copy)]
struct ExactObject;

impl<'de> Visitor<'de> for ExactObject {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        read_object(&mut map)
    }
}

/// Any JSON value, exactly sized: for `#[serde(deserialize_with)]`.
///
/// # Errors
///
/// The deserializer's own (malformed input, nesting past its limit).
pub fn value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    Exact.deserialize(deserializer)
}

/// `null` or what `inner` reads, as `serde` reads an `Option` (an absent
/// field needs `#[serde(default)]` as well).
struct Opt<V>(V);

impl<'de, V: Visitor<'de> + Copy> Visitor<'de> for Opt<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)?;
        f.write_str(" or null")
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self.0).map(Some)
    }
}

/// An optional JSON value, exactly sized (`null` is `None`; an absent
/// field needs `#[serde(default)]` as well).
///
/// # Errors
///
/// The deserializer's own (malformed input, nesting past its limit).
pub fn opt_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    deserializer.deserialize_option(Opt(Exact))
}

/// An optional JSON object, exactly sized (`null` is `None`; an absent
/// field needs `#[serde(default)]` as well).
///
/// # Errors
///
/// Any other kind of value ("invalid type: …, expected a JSON object"),
/// and the deserializer's own.
pub fn opt_object<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Map<String, Value>>, D::Error> {
    deserializer.deserialize_option(Opt(ExactObject))
}

/// Parses one raw event into a JSON value, exactly sized: read as text when
/// it is UTF-8 (`serde_json` then checks no string on its own), as bytes
/// otherwise, so that an error is `serde_json`'s own, with its line and
/// column.
///
/// # Errors
///
/// `serde_json`'s error when `raw` is not one JSON value (trailing
/// whitespace allowed), or nests deeper than its recursion limit.
pub fn parse(raw: &[u8]) -> serde_json::Result<Value> {
    crate::parse_json_seed(raw, Exact)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize;
    use serde_json::{Map, Value, json};

    use super::{ARRAYS, OBJECTS, POOLED_CAPACITY, parse};

    /// Every array in `v`, however deep, holds exactly its length.
    fn arrays_exact(v: &Value) -> bool {
        match v {
            Value::Array(items) => items.capacity() == items.len() && items.iter().all(arrays_exact),
            Value::Object(map) => map.values().all(arrays_exact),
            _ => true,
        }
    }

    #[test]
    fn events_read_as_serde_json_reads_them() {
        let events: [&[u8]; 6] = [
            br#"{"_id":{"_data":"82"},"fullDocument":{"_id":"tr-1","amount":{"$numberDecimal":"12.34"},"meta":{"ip":"10.0.0.1","n":[1,2,3]},"status_history":[{"status":"created","at":{"$date":"2024-03-01T12:00:00.190Z"}}]}}"#,
            br#"{"a":1,"b":2,"a":3}"#,
            br#"[18446744073709551615,-9223372036854775808,1.5,-0.0,1e300,true,false,null,"\u00e9\ud83d\ude00"]"#,
            br#"{"":{"":[]},"x":{}}"#,
            b"  \"text\"  ",
            b"42",
        ];
        for raw in events {
            let ours = parse(raw).unwrap();
            let theirs: Value = serde_json::from_slice(raw).unwrap();
            assert_eq!(ours, theirs);
            // Same order of keys, not only the same entries.
            assert_eq!(ours.to_string(), theirs.to_string());
            assert!(arrays_exact(&ours));
        }
        // A repeated key keeps its first place and its last value.
        assert_eq!(
            parse(br#"{"a":1,"b":2,"a":3}"#).unwrap().to_string(),
            r#"{"a":3,"b":2}"#
        );
    }

    #[test]
    fn bad_json_gets_serde_jsons_own_error() {
        for raw in [
            &b"{\"id\":"[..],
            b"{\"id\":\"tr-\xff\"}",
            b"[1,2",
            b"{} x",
            b"",
            b"{\"a\" 1}",
        ] {
            let ours = parse(raw).unwrap_err().to_string();
            let theirs = serde_json::from_slice::<Value>(raw).unwrap_err().to_string();
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn a_huge_object_or_array_leaves_no_huge_buffer_behind() {
        let many: Vec<u32> = (0..10_000).collect();
        let object: Map<String, Value> = (0..10_000).map(|i| (format!("k{i}"), json!(i))).collect();
        let raw = serde_json::to_vec(&json!({"many": many, "object": object})).unwrap();
        let value = parse(&raw).unwrap();
        assert_eq!(value["many"].as_array().map(Vec::len), Some(10_000));
        assert_eq!(value["object"].as_object().map(Map::len), Some(10_000));
        ARRAYS.with(|p| assert!(p.borrow().iter().all(|b| b.capacity() <= POOLED_CAPACITY)));
        OBJECTS.with(|p| assert!(p.borrow().iter().all(|b| b.capacity() <= POOLED_CAPACITY)));
        // The buffers of an error are given back too, emptied.
        assert!(parse(br#"{"a":[1,2,{"b":"#).is_err());
        assert_eq!(parse(br#"{"c":[3]}"#).unwrap(), json!({"c": [3]}));
    }

    #[test]
    fn hostile_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let ours = parse(deep.as_bytes()).unwrap_err().to_string();
        let theirs = serde_json::from_str::<Value>(&deep).unwrap_err().to_string();
        assert_eq!(ours, theirs);
        assert!(ours.contains("recursion limit"), "{ours}");
        // Nothing of it is left in the buffers.
        assert_eq!(parse(b"[[1]]").unwrap(), json!([[1]]));
    }

    /// Every array in the state a change writes holds exactly its length.
    fn change_arrays_exact(change: &overseer_core::Change) -> bool {
        use overseer_core::Change;
        match change {
            Change::Full(state) | Change::Merge(state) => state.values().all(arrays_exact),
            Change::Patch(patch) => patch.updated.iter().all(|(_, v)| arrays_exact(v)),
            Change::Delete => true,
        }
    }

    #[test]
    fn every_built_in_format_reads_its_states_exactly_sized() {
        use overseer_core::{Consumed, Model};

        use crate::{FormatName, FormatOptions, consumer};

        // Each event's document holds arrays of three (that serde_json's
        // doubling would give room for four).
        let mongo_tail =
            r#""clusterTime": {"$timestamp": {"t": 1654878000, "i": 3}}, "ns": {"db": "d", "coll": "c"}"#;
        let cases: [(FormatName, Option<&str>, String); 8] = [
            (
                FormatName::Mongo,
                None,
                format!(
                    r#"{{"_id": {{"_data": "82AB"}}, "operationType": "insert", "documentKey": {{"_id": "k"}}, "fullDocument": {{"_id": "k", "h": [{{"s": 1}}, 2, [3, 4, 5]]}}, {mongo_tail}}}"#
                ),
            ),
            (
                FormatName::Mongo,
                None,
                format!(
                    r#"{{"_id": {{"_data": "82AB"}}, "operationType": "update", "documentKey": {{"_id": "k"}}, "updateDescription": {{"updatedFields": {{"h": [1, 2, 3]}}, "removedFields": [], "truncatedArrays": []}}, {mongo_tail}}}"#
                ),
            ),
            (
                // The simplified shape, read through the JSON-value path.
                FormatName::Mongo,
                None,
                format!(
                    r#"{{"_id": "simplified", "operationType": "insert", "documentKey": {{"_id": "k"}}, "fullDocument": {{"h": [1, 2, 3]}}, {mongo_tail}}}"#
                ),
            ),
            (
                FormatName::Debezium,
                None,
                r#"{"before": null, "after": {"id": 1, "tags": ["a", "b", "c"]}, "source": {"ts_ms": 1709294400000, "table": "t", "lsn": 1}, "op": "c"}"#.to_owned(),
            ),
            (
                // With the JSON converter's wrapping: the JSON-value path.
                FormatName::Debezium,
                None,
                r#"{"schema": null, "payload": {"before": null, "after": {"id": 1, "tags": ["a", "b", "c"]}, "source": {"ts_ms": 1709294400000, "table": "t", "lsn": 1}, "op": "c"}}"#.to_owned(),
            ),
            (
                FormatName::Wal2json,
                None,
                r#"{"action": "I", "timestamp": "2024-03-01 12:00:00.000000+00", "lsn": "0/16B3750", "schema": "public", "table": "t", "columns": [{"name": "id", "type": "integer", "value": 1}, {"name": "tags", "type": "jsonb", "value": ["a", "b", "c"]}], "pk": [{"name": "id", "type": "integer"}]}"#.to_owned(),
            ),
            (
                // A jsonb column's text (type 3802), parsed.
                FormatName::Pgoutput,
                None,
                r#"{"relation": {"schema": "public", "table": "t", "key_columns": ["id"]}, "op": "insert", "commit_time": "2024-03-01T12:00:00Z", "lsn": "0/1A2B3C4D", "new": [{"name": "id", "type_oid": 23, "value": {"text": "1"}}, {"name": "tags", "type_oid": 3802, "value": {"text": "[\"a\", \"b\", \"c\"]"}}]}"#.to_owned(),
            ),
            (
                FormatName::Json,
                Some("records"),
                r#"{"id": "r-1", "tags": ["a", "b", "c"], "updated_at": "2024-05-01T12:00:00Z"}"#.to_owned(),
            ),
        ];
        for (format, model, raw) in cases {
            let options = FormatOptions {
                model: model.map(|m| Model::new(m).unwrap()),
                ..FormatOptions::default()
            };
            let consumed = consumer(format, options).unwrap().consume(raw.as_bytes());
            let Ok(Consumed::Record(record)) = consumed else {
                panic!("{format:?}: {consumed:?} for {raw}");
            };
            assert!(
                change_arrays_exact(&record.change),
                "{format:?}: {:?}",
                record.change
            );
        }
        // And serde_json alone would not have sized them so.
        let doubled: Value = serde_json::from_str(r#"{"h": [1, 2, 3]}"#).unwrap();
        assert!(!arrays_exact(&doubled));
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct Fields {
        #[serde(default, deserialize_with = "super::opt_value")]
        value: Option<Value>,
        #[serde(default, deserialize_with = "super::opt_object")]
        object: Option<Map<String, Value>>,
    }

    #[test]
    fn optional_fields_read_as_options_do() {
        let read = |raw: &str| serde_json::from_str::<Fields>(raw);
        let fields = read(r#"{"value":[1,{"a":null}],"object":{"b":2}}"#).unwrap();
        assert_eq!(fields.value, Some(json!([1, {"a": null}])));
        assert_eq!(fields.object, json!({"b": 2}).as_object().cloned());
        let empty = Fields {
            value: None,
            object: None,
        };
        assert_eq!(read(r#"{"value":null,"object":null}"#).unwrap(), empty);
        assert_eq!(read("{}").unwrap(), empty);
        let error = read(r#"{"object":"text"}"#).unwrap_err().to_string();
        assert!(error.contains("expected a JSON object"), "{error}");
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec(("[a-c]{0,2}", inner), 0..8).prop_map(|entries| {
                    // Through text, so that repeated keys reach the parser.
                    let body: Vec<String> = entries
                        .iter()
                        .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                        .collect();
                    serde_json::from_str(&format!("{{{}}}", body.join(","))).unwrap_or(Value::Null)
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_value_reads_back_the_same(value in json_value()) {
            let text = value.to_string();
            let ours = parse(text.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(ours.to_string(), theirs.to_string());
            prop_assert_eq!(&ours, &theirs);
            prop_assert!(arrays_exact(&ours));
        }
    }
}
