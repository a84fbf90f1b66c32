//! Conversions between the domain types and their protobuf messages.

use bytes::Bytes;
use prost::Message;

use crate::error::{Error, Result};
use crate::model::{
    Format, Model, Operation, RecordId, RecordKey, Reference, SourceId, SourcePosition, UpdateDocument,
};
use crate::proto;
use crate::time::Timestamp;

pub(crate) const ENVELOPE_VERSION: u32 = 1;

pub(crate) fn operation_to_proto(op: Operation) -> proto::Operation {
    match op {
        Operation::Insert => proto::Operation::Insert,
        Operation::Update => proto::Operation::Update,
        Operation::Replace => proto::Operation::Replace,
        Operation::Delete => proto::Operation::Delete,
        Operation::Snapshot => proto::Operation::Snapshot,
    }
}

pub(crate) fn operation_from_proto(op: i32) -> Option<Operation> {
    match proto::Operation::try_from(op).ok()? {
        proto::Operation::Insert => Some(Operation::Insert),
        proto::Operation::Update => Some(Operation::Update),
        proto::Operation::Replace => Some(Operation::Replace),
        proto::Operation::Delete => Some(Operation::Delete),
        proto::Operation::Snapshot => Some(Operation::Snapshot),
        proto::Operation::Unspecified => None,
    }
}

pub(crate) fn key_to_proto(key: &RecordKey) -> proto::RecordKey {
    proto::RecordKey {
        model: key.model.to_string(),
        id: key.id.to_string(),
    }
}

fn corrupt(path: &str, message: &'static str, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_owned(),
        message,
        reason: reason.into(),
    }
}

pub(crate) fn key_from_proto(
    key: Option<proto::RecordKey>,
    path: &str,
    message: &'static str,
) -> Result<RecordKey> {
    let key = key.ok_or_else(|| corrupt(path, message, "record key missing"))?;
    Ok(RecordKey {
        model: Model::new(&key.model).map_err(|e| corrupt(path, message, e.to_string()))?,
        id: RecordId::new(&key.id).map_err(|e| corrupt(path, message, e.to_string()))?,
    })
}

pub(crate) fn reference_to_proto(r: &Reference) -> proto::Reference {
    proto::Reference {
        field: r.field.clone(),
        target: Some(key_to_proto(&r.target)),
    }
}

pub(crate) fn reference_from_proto(
    r: proto::Reference,
    path: &str,
    message: &'static str,
) -> Result<Reference> {
    Ok(Reference {
        field: r.field,
        target: key_from_proto(r.target, path, message)?,
    })
}

pub(crate) fn encode_update(doc: &UpdateDocument) -> Bytes {
    let envelope = proto::UpdateEnvelope {
        version: ENVELOPE_VERSION,
        key: Some(key_to_proto(&doc.key)),
        source: doc.source.to_string(),
        position: doc.position.as_str().to_owned(),
        commit_time_micros: doc.commit_time.as_micros(),
        ingested_at_micros: doc.ingested_at.as_micros(),
        operation: operation_to_proto(doc.operation).into(),
        format: doc.format.to_string(),
        raw: doc.raw.clone(),
        references: doc.references.iter().map(reference_to_proto).collect(),
    };
    Bytes::from(envelope.encode_to_vec())
}

pub(crate) fn decode_update(path: &str, bytes: Bytes) -> Result<UpdateDocument> {
    const M: &str = "UpdateEnvelope";
    let e = proto::UpdateEnvelope::decode(bytes).map_err(|e| corrupt(path, M, e.to_string()))?;
    if e.version != ENVELOPE_VERSION {
        return Err(corrupt(
            path,
            M,
            format!("unsupported envelope version {}", e.version),
        ));
    }
    let operation = operation_from_proto(e.operation)
        .ok_or_else(|| corrupt(path, M, format!("unknown operation {}", e.operation)))?;
    Ok(UpdateDocument {
        key: key_from_proto(e.key, path, M)?,
        source: SourceId::new(&e.source).map_err(|err| corrupt(path, M, err.to_string()))?,
        position: SourcePosition::new(e.position),
        commit_time: Timestamp::from_micros(e.commit_time_micros),
        ingested_at: Timestamp::from_micros(e.ingested_at_micros),
        operation,
        format: Format::new(&e.format).map_err(|err| corrupt(path, M, err.to_string()))?,
        raw: e.raw,
        references: e
            .references
            .into_iter()
            .map(|r| reference_from_proto(r, path, M))
            .collect::<Result<_>>()?,
    })
}

/// Decodes any message, naming it in the error.
pub(crate) fn decode<M: Message + Default>(path: &str, name: &'static str, bytes: Bytes) -> Result<M> {
    M::decode(bytes).map_err(|e| corrupt(path, name, e.to_string()))
}
