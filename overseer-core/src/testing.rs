//! Helpers for tests and documentation examples.

use serde_json::{Map, Value, json};

use crate::change::Change;
use crate::consumer::{Consumed, ConsumedRecord, Consumer, StateBuilder};
use crate::error::ConsumeError;
use crate::model::{Format, Operation, RecordKey, SourcePosition, UpdateDocument};
use crate::time::Timestamp;

/// A tiny line format for examples and tests: `ID N` sets record `ID` of
/// model `lines` to `{"id": ID, "n": N}`, committed at Unix second `N`;
/// `ID -` deletes it. Anything else is rejected.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinesConsumer;

impl LinesConsumer {
    fn parse(raw: &[u8]) -> Result<(String, Option<i64>), ConsumeError> {
        let reject = |reason: &str| ConsumeError::new("lines", reason);
        let text = std::str::from_utf8(raw).map_err(|_| reject("not UTF-8"))?;
        let (id, n) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| reject("expected `ID N`"))?;
        if n == "-" {
            return Ok((id.to_owned(), None));
        }
        let n = n.parse().map_err(|_| reject("N is not an integer"))?;
        Ok((id.to_owned(), Some(n)))
    }

    fn change(id: &str, n: Option<i64>) -> Change {
        match n {
            None => Change::Delete,
            Some(n) => {
                let mut m = Map::new();
                m.insert("id".into(), json!(id));
                m.insert("n".into(), Value::from(n));
                Change::Full(m)
            }
        }
    }
}

impl Consumer for LinesConsumer {
    fn format(&self) -> Format {
        Format::new("lines").unwrap_or_else(|_| unreachable!("non-empty literal"))
    }

    fn consume(&self, raw: &[u8]) -> Result<Consumed, ConsumeError> {
        let (id, n) = Self::parse(raw)?;
        let key = RecordKey::new("lines", &id).map_err(|e| ConsumeError::new("lines", e.to_string()))?;
        Ok(Consumed::Record(ConsumedRecord {
            key,
            operation: if n.is_some() {
                Operation::Insert
            } else {
                Operation::Delete
            },
            commit_time: Timestamp::from_secs(n.unwrap_or(0)),
            position: SourcePosition::default().with_digest_of(raw),
            change: Self::change(&id, n),
        }))
    }
}

impl StateBuilder for LinesConsumer {
    fn format(&self) -> Format {
        Consumer::format(self)
    }

    fn decode(&self, update: &UpdateDocument) -> Result<Change, ConsumeError> {
        let (id, n) = Self::parse(&update.raw)?;
        Ok(Self::change(&id, n))
    }
}
