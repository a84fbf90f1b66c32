//! Consumers and state builders for the change formats Overseer reads.
//!
//! One module per format, each a [`Consumer`] (raw event → record change, at
//! ingestion) and a [`StateBuilder`] (stored update → [`Change`], at read
//! time):
//!
//! | module | format name | events |
//! |---|---|---|
//! | [`mongo`] | `mongo` | MongoDB change stream events (relaxed or canonical Extended JSON v2, or the simplified `_id`/`clusterTime` shape) |
//! | [`postgres`] | `wal2json` | wal2json `format-version` 2 changes |
//! | [`postgres`] | `pgoutput` | decoded pgoutput row changes ([`postgres::PgRowChange`] as JSON) |
//! | [`debezium`] | `debezium` | Debezium relational connector envelopes, with or without the `schema`/`payload` wrapper |
//! | [`json`] | `json` | whole records written by an application |
//!
//! Every format reads the JSON values that end up in a record's state
//! through [`exact`], which allocates objects and arrays at their exact size.
//!
//! For relational sources a row's record id is its primary-key value as text
//! (`42`, `abc`; a composite key as the JSON array text of its values), and
//! its state is a JSON object of column name to value with the JSON types the
//! source gives.
//!
//! ```
//! use overseer_builders::{FormatName, FormatOptions};
//! let consumer = overseer_builders::consumer("mongo".parse()?, FormatOptions::default())?;
//! assert_eq!(consumer.format().as_str(), "mongo");
//! # Ok::<(), overseer_builders::Error>(())
//! ```

pub mod debezium;
pub mod exact;
pub mod json;
pub mod migrate;
pub mod mongo;
pub mod postgres;
mod relational;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use overseer_core::{Consumer, Dal, Model, StateBuilder, Store};

#[doc(no_inline)]
pub use overseer_core::Change;

/// Errors of `overseer-builders`: configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The format name is not one this crate knows.
    #[error("unknown format {name:?}; known formats: {known}")]
    UnknownFormat {
        /// The name given.
        name: String,
        /// The known names, comma-separated.
        known: &'static str,
    },
    /// An option is missing or invalid for the chosen format.
    #[error("format {format}: {reason}")]
    InvalidOption {
        /// The format.
        format: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

/// The formats of this crate, by name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FormatName {
    /// MongoDB change streams ([`mongo`]).
    Mongo,
    /// wal2json format-version 2 ([`postgres`]).
    Wal2json,
    /// Decoded pgoutput row changes ([`postgres`]).
    Pgoutput,
    /// Debezium relational envelopes ([`debezium`]).
    Debezium,
    /// Whole application records ([`json`]).
    Json,
}

const KNOWN: &str = "mongo, wal2json, pgoutput, debezium, json";

impl FormatName {
    /// Every format.
    pub const ALL: [FormatName; 5] = [
        FormatName::Mongo,
        FormatName::Wal2json,
        FormatName::Pgoutput,
        FormatName::Debezium,
        FormatName::Json,
    ];

    /// The format's name as stored with each update.
    pub fn as_str(self) -> &'static str {
        match self {
            FormatName::Mongo => mongo::FORMAT,
            FormatName::Wal2json => postgres::WAL2JSON_FORMAT,
            FormatName::Pgoutput => postgres::PGOUTPUT_FORMAT,
            FormatName::Debezium => debezium::FORMAT,
            FormatName::Json => json::FORMAT,
        }
    }
}

impl fmt::Display for FormatName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FormatName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| Error::UnknownFormat {
                name: s.to_owned(),
                known: KNOWN,
            })
    }
}

/// Options of a consumer; each format reads the ones that apply to it.
#[derive(Clone, Debug, Default)]
pub struct FormatOptions {
    /// The model of every event, instead of the event's own collection or
    /// table name. Required for `json`.
    pub model: Option<Model>,
    /// Relational formats: the primary-key columns, for events that do not
    /// name them (wal2json without `include-pk`, Debezium values without
    /// their key). Default: the event's own key information, else `id`.
    pub key_columns: Vec<String>,
    /// `json`: the field holding the record id (default `id`).
    pub id_field: Option<String>,
    /// `json`: the field holding the commit time, RFC 3339 or epoch
    /// milliseconds (default `updated_at`).
    pub time_field: Option<String>,
}

/// The consumer of a format, configured by `options`.
pub fn consumer(format: FormatName, options: FormatOptions) -> Result<Arc<dyn Consumer>, Error> {
    Ok(match format {
        FormatName::Mongo => Arc::new(mongo::Mongo::new(options)),
        FormatName::Wal2json => Arc::new(postgres::Wal2Json::new(options)),
        FormatName::Pgoutput => Arc::new(postgres::PgOutput::new(options)),
        FormatName::Debezium => Arc::new(debezium::Debezium::new(options)),
        FormatName::Json => Arc::new(json::Json::new(options)?),
    })
}

/// The state builders of every format of this crate.
pub fn builders() -> Vec<Arc<dyn StateBuilder>> {
    vec![
        Arc::new(mongo::Mongo::default()),
        Arc::new(postgres::Wal2Json::default()),
        Arc::new(postgres::PgOutput::default()),
        Arc::new(debezium::Debezium::default()),
        Arc::new(json::Json::builder()),
    ]
}

/// A DAL over `store` that reads every format of this crate.
pub fn dal(store: Store) -> Dal {
    builders()
        .into_iter()
        .fold(Dal::new(store), Dal::with_shared_builder)
}

/// Parses one raw event as JSON. The event is checked to be UTF-8 once, as
/// a whole, and then read as text: reading bytes, `serde_json` checks every
/// string on its own, which on events of short strings costs more than
/// the rest of the parse. Events that are not UTF-8 are read as bytes, so
/// the error is `serde_json`'s own (with its line and column).
pub(crate) fn parse_json<'a, T: serde::Deserialize<'a>>(raw: &'a [u8]) -> serde_json::Result<T> {
    parse_json_seed(raw, std::marker::PhantomData)
}

/// A struct read from a JSON object only. serde's derived `Deserialize`
/// also reads a struct from an array, field by field in declaration order,
/// which each format's JSON-value path rejects ("expected a JSON object"):
/// the fast paths read their structs through this, so that they never take
/// an event that path refuses.
pub(crate) struct ObjectOnly<T>(pub(crate) T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Fields(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

/// [`parse_json`] of a struct from a JSON object only ([`ObjectOnly`]).
pub(crate) fn parse_json_object<'a, T: serde::Deserialize<'a>>(raw: &'a [u8]) -> serde_json::Result<T> {
    parse_json::<ObjectOnly<T>>(raw).map(|ObjectOnly(t)| t)
}

/// `#[serde(deserialize_with)]` of a struct read from an object only
/// ([`ObjectOnly`]).
pub(crate) fn object_only<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    let ObjectOnly(found) = serde::Deserialize::deserialize(deserializer)?;
    Ok(found)
}

/// `#[serde(deserialize_with)]` of an optional struct read from an object
/// only ([`ObjectOnly`]): absent and `null` are `None`.
pub(crate) fn opt_object_only<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    let found: Option<ObjectOnly<T>> = serde::Deserialize::deserialize(deserializer)?;
    Ok(found.map(|ObjectOnly(t)| t))
}

/// [`parse_json`] through a [`DeserializeSeed`](serde::de::DeserializeSeed)
/// (such as [`exact`]'s), the whole of `raw` being one JSON value.
pub(crate) fn parse_json_seed<'a, S: serde::de::DeserializeSeed<'a>>(
    raw: &'a [u8],
    seed: S,
) -> serde_json::Result<S::Value> {
    fn read<'a, R: serde_json::de::Read<'a>, S: serde::de::DeserializeSeed<'a>>(
        mut de: serde_json::Deserializer<R>,
        seed: S,
    ) -> serde_json::Result<S::Value> {
        let value = seed.deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }
    match std::str::from_utf8(raw) {
        Ok(text) => read(serde_json::Deserializer::from_str(text), seed),
        Err(_) => read(serde_json::Deserializer::from_slice(raw), seed),
    }
}

#[cfg(test)]
mod json_tests {
    use std::borrow::Cow;

    use super::parse_json;

    #[test]
    fn text_is_read_borrowed_and_bytes_that_are_not_utf8_get_serde_jsons_error() {
        let raw = br#"{"id":"tr-1","n":2}"#;
        #[derive(serde::Deserialize)]
        struct Fields<'a> {
            #[serde(borrow)]
            id: Cow<'a, str>,
            n: u32,
        }
        let fields: Fields<'_> = parse_json(raw).unwrap();
        assert!(matches!(fields.id, Cow::Borrowed("tr-1")));
        assert_eq!(fields.n, 2);

        // An invalid byte inside a string: the error says where it is.
        let error = parse_json::<serde_json::Value>(b"{\"id\":\"tr-\xff\"}").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid unicode code point at line 1 column 11"
        );
        assert!(parse_json::<serde_json::Value>(b"{\"id\":").is_err());
    }

    #[test]
    fn every_format_rejects_an_event_that_is_not_utf8_with_where_it_breaks() {
        let events: [(crate::FormatName, &[u8]); 3] = [
            (
                crate::FormatName::Mongo,
                b"{\"operationType\":\"insert\",\"clusterTime\":{\"$timestamp\":{\"t\":1,\"i\":1}},\"documentKey\":{\"_id\":\"a\"},\"ns\":{\"db\":\"d\",\"coll\":\"c\"},\"fullDocument\":{\"_id\":\"a\",\"x\":\"\xff\"}}",
            ),
            (
                crate::FormatName::Wal2json,
                b"{\"action\":\"I\",\"schema\":\"public\",\"table\":\"t\",\"columns\":[{\"name\":\"id\",\"type\":\"text\",\"value\":\"\xff\"}]}",
            ),
            (
                crate::FormatName::Debezium,
                b"{\"op\":\"c\",\"before\":null,\"after\":{\"id\":\"\xff\"},\"source\":{\"table\":\"t\",\"ts_ms\":1}}",
            ),
        ];
        for (format, raw) in events {
            let consumer = crate::consumer(format, crate::FormatOptions::default()).unwrap();
            let error = consumer.consume(raw).unwrap_err().to_string();
            assert!(
                error.contains("invalid unicode code point at line 1 column"),
                "{format:?}: {error}"
            );
        }
    }
}
