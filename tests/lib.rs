//! Shared helpers for the cross-crate tests: a scripted test format whose
//! events say exactly which [`Change`] they make, and the store backends
//! every conformance test runs on.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use overseer_core::change::{FieldPath, Patch};
use overseer_core::object_store::ObjectStore;
use overseer_core::object_store::local::LocalFileSystem;
use overseer_core::object_store::memory::InMemory;
use overseer_core::{
    Change, ConsumeError, Consumed, ConsumedRecord, Consumer, Format, Operation, RecordKey, SourcePosition,
    StateBuilder, Timestamp, UpdateDocument,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One event of the scripted format (`"script"`), as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptEvent {
    /// Model.
    pub model: String,
    /// Record id.
    pub id: String,
    /// Commit time, microseconds.
    pub t: i64,
    /// Position (ordered within the source).
    pub pos: u64,
    /// `full`, `merge`, `patch` or `delete`.
    pub op: String,
    /// The state (`full`), the columns (`merge`) or the fields set (`patch`, dotted paths).
    #[serde(default)]
    pub data: Map<String, Value>,
    /// Fields removed (`patch`).
    #[serde(default)]
    pub unset: Vec<String>,
}

impl ScriptEvent {
    /// The event as one JSON line.
    pub fn line(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap().into()
    }

    /// The change this event makes.
    pub fn change(&self) -> Option<Change> {
        Some(match self.op.as_str() {
            "full" => Change::Full(self.data.clone()),
            "merge" => Change::Merge(self.data.clone()),
            "patch" => Change::Patch(Patch {
                truncated: Vec::new(),
                removed: self.unset.iter().map(|p| FieldPath::parse(p)).collect(),
                updated: self
                    .data
                    .iter()
                    .map(|(k, v)| (FieldPath::parse(k), v.clone()))
                    .collect(),
            }),
            "delete" => Change::Delete,
            _ => return None,
        })
    }
}

/// Consumer and builder of [`ScriptEvent`] lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct Script;

fn parse(raw: &[u8]) -> Result<(ScriptEvent, Change), ConsumeError> {
    let e: ScriptEvent =
        serde_json::from_slice(raw).map_err(|e| ConsumeError::new("script", e.to_string()))?;
    let change = e
        .change()
        .ok_or_else(|| ConsumeError::new("script", format!("unknown op {:?}", e.op)))?;
    Ok((e, change))
}

impl Consumer for Script {
    fn format(&self) -> Format {
        Format::new("script").unwrap()
    }

    fn consume(&self, raw: &[u8]) -> Result<Consumed, ConsumeError> {
        let (e, change) = parse(raw)?;
        let key =
            RecordKey::new(&e.model, &e.id).map_err(|err| ConsumeError::new("script", err.to_string()))?;
        Ok(Consumed::Record(ConsumedRecord {
            key,
            operation: match e.op.as_str() {
                "full" => Operation::Replace,
                "delete" => Operation::Delete,
                _ => Operation::Update,
            },
            commit_time: Timestamp::from_micros(e.t),
            position: SourcePosition::from_numbers(&[e.pos]),
            change,
        }))
    }
}

impl StateBuilder for Script {
    fn format(&self) -> Format {
        Consumer::format(self)
    }

    fn decode(&self, update: &UpdateDocument) -> Result<Change, ConsumeError> {
        parse(&update.raw).map(|(_, c)| c)
    }
}

/// A named object store backend for the conformance suite.
pub struct Backend {
    /// Its name, for assertion messages.
    pub name: &'static str,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Keeps a temporary directory alive.
    pub _dir: Option<tempfile::TempDir>,
}

/// Every backend the store must work on: InMemory and LocalFileSystem.
pub fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let fs = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    vec![
        Backend {
            name: "memory",
            store: Arc::new(InMemory::new()),
            _dir: None,
        },
        Backend {
            name: "local",
            store: Arc::new(fs),
            _dir: Some(dir),
        },
    ]
}
