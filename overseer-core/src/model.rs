//! The data model: records, sources, time, operations, update documents and
//! notifications.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::time::Timestamp;

/// A table of shared names. Models, sources and formats are few while every
/// record key, update and notification carries one, so each distinct name
/// is allocated once, for the life of the process, and copied as a plain
/// pointer: no reference count that every thread's clones would contend on.
/// The table is bounded: names beyond [`MAX_INTERNED`] (a hostile stream
/// inventing collection names) are reference-counted allocations of their
/// own instead of growing it.
struct Interner(OnceLock<RwLock<HashMap<&'static str, &'static String>>>);

/// How many distinct names one [`Interner`] keeps.
const MAX_INTERNED: usize = 4096;

impl Interner {
    const fn new() -> Self {
        Self(OnceLock::new())
    }

    fn get(&self, value: &str) -> Shared {
        let table = self.0.get_or_init(RwLock::default);
        if let Some(name) = table.read().unwrap_or_else(PoisonError::into_inner).get(value) {
            return Shared::Interned(name);
        }
        // Only `insert` writes the map, so a poisoned lock still holds a
        // consistent one.
        let mut names = table.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = names.get(value) {
            return Shared::Interned(name);
        }
        if names.len() >= MAX_INTERNED {
            return Shared::Counted(Arc::new(value.to_owned()));
        }
        let name: &'static String = Box::leak(Box::new(value.to_owned()));
        names.insert(name.as_str(), name);
        Shared::Interned(name)
    }
}

/// The text of an interned name: the table's copy, or past the table's
/// bound an allocation of its own. Both are thin pointers, so a name is as
/// small as an `Arc<str>`.
///
/// One table's names are unique, and a name gets its own allocation only
/// when it is not in the table, which is then full for good: two names
/// from the table are equal exactly when they are the same pointer, and a
/// name from the table never equals one outside it.
#[derive(Clone)]
enum Shared {
    Interned(&'static String),
    Counted(Arc<String>),
}

impl std::ops::Deref for Shared {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Shared::Interned(s) => s,
            Shared::Counted(s) => s,
        }
    }
}

impl PartialEq for Shared {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Shared::Interned(a), Shared::Interned(b)) => std::ptr::eq(*a, *b),
            (Shared::Counted(a), Shared::Counted(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Shared {}

impl PartialOrd for Shared {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Shared {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

impl std::hash::Hash for Shared {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

/// Allocates a name of a type whose values are not shared.
fn allocate(value: &str) -> Arc<str> {
    Arc::from(value)
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        name_type!($(#[$doc])* $name, $what, allocate);
    };
    ($(#[$doc:meta])* $name:ident, $what:literal, interned) => {
        name_type!(@define $(#[$doc])* $name, $what, Shared, {
            static NAMES: Interner = Interner::new();
            |value: &str| NAMES.get(value)
        });
    };
    ($(#[$doc:meta])* $name:ident, $what:literal, $make:expr) => {
        name_type!(@define $(#[$doc])* $name, $what, Arc<str>, $make);
    };
    (@define $(#[$doc:meta])* $name:ident, $what:literal, $repr:ty, $make:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name($repr);

        impl $name {
            #[doc = concat!("Creates a ", $what, "; an empty string is an [`Error::InvalidInput`].")]
            pub fn new(value: impl AsRef<str>) -> Result<Self> {
                let value = value.as_ref();
                if value.is_empty() {
                    return Err(Error::InvalidInput {
                        what: $what,
                        reason: "it is empty".into(),
                    });
                }
                Ok(Self(($make)(value)))
            }

            /// The text of this name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(value: &str) -> Result<Self> {
                Self::new(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }
    };
}

name_type!(
    /// The name of a model: a MongoDB collection, a Postgres table, an
    /// application entity. Any non-empty UTF-8 text.
    Model,
    "model name",
    interned
);
name_type!(
    /// The id of a record within its model, as text: a MongoDB `_id`
    /// (an ObjectId as its hex string), a primary-key value (`42`, `abc`), or
    /// for composite keys the JSON array text of the key's values.
    ///
    /// Ids come from the outside world and are untrusted: any non-empty UTF-8
    /// text is accepted and stored safely (see the store layout).
    RecordId,
    "record id"
);
name_type!(
    /// The name of a source: one database or change stream that delivers
    /// events, with its own positions and its own watermark.
    SourceId,
    "source id",
    interned
);
name_type!(
    /// The name of an event format (`mongo`, `wal2json`, `debezium`,
    /// `pgoutput`, `json`, or your own), which selects the
    /// [`StateBuilder`](crate::StateBuilder) that folds its updates.
    Format,
    "format name",
    interned
);

/// The identity of a record: its model and its id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RecordKey {
    /// The record's model.
    pub model: Model,
    /// The record's id within the model.
    pub id: RecordId,
}

impl RecordKey {
    /// Creates a key from a model name and an id, both non-empty.
    ///
    /// ```
    /// use overseer_core::RecordKey;
    /// let key = RecordKey::new("transfers", "t-1")?;
    /// assert_eq!(key.to_string(), "transfers/t-1");
    /// assert!(RecordKey::new("transfers", "").is_err());
    /// # Ok::<(), overseer_core::Error>(())
    /// ```
    pub fn new(model: impl AsRef<str>, id: impl AsRef<str>) -> Result<Self> {
        Ok(Self {
            model: Model::new(model)?,
            id: RecordId::new(id)?,
        })
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.model, self.id)
    }
}

/// An event's position in its source: a MongoDB resume token or cluster
/// time, a Postgres LSN, ... Positions are text whose byte order is the
/// source's order (consumers pad numbers to a fixed width).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct SourcePosition(String);

impl SourcePosition {
    /// A position from its text. The text must order like the source's events.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// A position from numbers, most significant first, each written as 16
    /// hex digits so that text order equals numeric order.
    ///
    /// ```
    /// use overseer_core::SourcePosition;
    /// let a = SourcePosition::from_numbers(&[1, 2]);
    /// let b = SourcePosition::from_numbers(&[1, 10]);
    /// assert!(a < b);
    /// assert_eq!(a.as_str(), "0000000000000001.0000000000000002");
    /// ```
    pub fn from_numbers(numbers: &[u64]) -> Self {
        let mut text = String::with_capacity(numbers.len() * 17);
        for (i, n) in numbers.iter().enumerate() {
            if i > 0 {
                text.push('.');
            }
            // 16 lower-case hex digits, as `{n:016x}` writes them.
            crate::store::layout::push_hex(&mut text, &n.to_be_bytes());
        }
        Self(text)
    }

    /// Appends a short digest of `raw` to this position. Consumers use it
    /// where a source's native position is not unique per event (snapshot
    /// rows sharing an LSN, events without a resume token), so that distinct
    /// events get distinct positions while a re-delivered event keeps its own.
    pub fn with_digest_of(self, raw: &[u8]) -> Self {
        let mut text = self.0;
        if !text.is_empty() {
            text.push('.');
        }
        crate::store::layout::push_short_digest(&mut text, raw);
        Self(text)
    }

    /// The text of this position.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the position is empty (unknown).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a change did to its record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Operation {
    /// The record was created.
    Insert,
    /// Some fields of the record changed.
    Update,
    /// The whole record was replaced.
    Replace,
    /// The record was deleted.
    Delete,
    /// The record's state as read by an initial snapshot.
    Snapshot,
}

impl Operation {
    /// The operation's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Replace => "replace",
            Operation::Delete => "delete",
            Operation::Snapshot => "snapshot",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference from a record to another record, found in a field.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Reference {
    /// The field (dotted path) of the referencing record holding the reference.
    pub field: String,
    /// The record pointed at.
    pub target: RecordKey,
}

/// One update of one record: the raw event exactly as received, plus the
/// metadata ingestion extracted from it. Immutable once stored.
#[derive(Clone, PartialEq, Debug)]
pub struct UpdateDocument {
    /// The record this update belongs to.
    pub key: RecordKey,
    /// The source that delivered it.
    pub source: SourceId,
    /// Its position in the source.
    pub position: SourcePosition,
    /// The change's commit time in its own database.
    pub commit_time: Timestamp,
    /// When Overseer received it.
    pub ingested_at: Timestamp,
    /// What the change did.
    pub operation: Operation,
    /// The format of `raw`.
    pub format: Format,
    /// The event exactly as received.
    pub raw: Bytes,
    /// The references to other records this update carries.
    pub references: Vec<Reference>,
}

impl UpdateDocument {
    /// Where the update goes in its record's history: updates are ordered
    /// by commit time, then source, then position.
    pub fn history_order(&self) -> (Timestamp, &SourceId, &SourcePosition) {
        (self.commit_time, &self.source, &self.position)
    }
}

/// Emitted by ingestion once per newly stored update; what the runner
/// selects checks from.
#[derive(Clone, PartialEq, Debug)]
pub struct Notification {
    /// The updated record.
    pub key: RecordKey,
    /// The source that delivered the update.
    pub source: SourceId,
    /// The update's position in its source.
    pub position: SourcePosition,
    /// The update's commit time in its source.
    pub commit_time: Timestamp,
    /// When the update was received.
    pub ingested_at: Timestamp,
    /// What the update did.
    pub operation: Operation,
    /// The store key of the update object.
    pub object: String,
    /// References the update carries.
    pub references: Vec<Reference>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_from_numbers_are_sixteen_hex_digits_each() {
        for n in [0, 1, 15, 16, 255, 1 << 32, 0x0123_4567_89ab_cdef, u64::MAX] {
            let position = SourcePosition::from_numbers(&[n, u64::MAX - n]);
            assert_eq!(position.as_str(), format!("{n:016x}.{:016x}", u64::MAX - n));
        }
        assert_eq!(SourcePosition::from_numbers(&[]).as_str(), "");
    }

    /// Whether two names are the same allocation.
    fn same(a: &str, b: &str) -> bool {
        std::ptr::eq(a.as_ptr(), b.as_ptr())
    }

    #[test]
    fn models_sources_and_formats_share_one_allocation_per_name_record_ids_do_not() {
        let a = RecordKey::new("interned_model", "1").unwrap();
        let b = RecordKey::new(String::from("interned_model"), "1").unwrap();
        assert!(same(a.model.as_str(), b.model.as_str()));
        assert!(!same(a.id.as_str(), b.id.as_str()));
        let s = SourceId::new("interned_source").unwrap();
        assert!(same(
            s.as_str(),
            SourceId::new("interned_source").unwrap().as_str()
        ));
        let f = Format::new("interned_format").unwrap();
        assert!(same(f.as_str(), Format::new("interned_format").unwrap().as_str()));
        assert_eq!(a, b);
    }

    #[test]
    fn a_stream_of_new_names_does_not_grow_the_table_without_bound() {
        let table = Interner::new();
        for i in 0..MAX_INTERNED + 100 {
            assert_eq!(&*table.get(&format!("m{i}")), format!("m{i}"));
        }
        let len = table.0.get().and_then(|t| t.read().ok().map(|t| t.len()));
        assert_eq!(len, Some(MAX_INTERNED));
        // Names past the bound are still right, equal and ordered by their
        // text, just not shared.
        let late = format!("m{}", MAX_INTERNED + 50);
        assert_eq!(&*table.get(&late), late);
        assert!(!same(&table.get(&late), &table.get(&late)));
        assert!(table.get(&late) == table.get(&late));
        assert!(table.get("m1") < table.get(&late));
        assert!(table.get("m1") != table.get(&late));
        assert!(table.get("m1") == table.get("m1"));
        assert_eq!(std::mem::size_of::<Shared>(), std::mem::size_of::<Arc<str>>());
        assert!(same(&table.get("m1"), &table.get("m1")));
    }
}
