//! Conversions between the domain types and their protobuf messages.

use bytes::Bytes;
use prost::Message;

use super::compression::Encoder;
use crate::error::{Error, Result};
use crate::model::{
    Format, Model, Operation, RecordId, RecordKey, Reference, SourceId, SourcePosition, UpdateDocument,
};
use crate::proto;
use crate::time::Timestamp;

/// The envelope version of an update whose raw event is stored as received.
pub(crate) const ENVELOPE_VERSION: u32 = 1;
/// The envelope version of an update whose raw event is compressed.
pub(crate) const ENVELOPE_VERSION_COMPRESSED: u32 = 2;

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

pub(crate) fn corrupt(path: &str, message: &'static str, reason: impl Into<String>) -> Error {
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

/// Encodes an update, its raw event compressed against `encoder` when
/// given and when that makes it smaller.
pub(crate) fn encode_update(doc: &UpdateDocument, encoder: Option<&Encoder>) -> Bytes {
    let compressed = encoder.and_then(|e| Some((e.id, e.compress(&doc.raw)?)));
    let (version, raw, raw_dictionary) = match compressed {
        Some((id, frame)) => (ENVELOPE_VERSION_COMPRESSED, Bytes::from(frame), id),
        None => (ENVELOPE_VERSION, doc.raw.clone(), 0),
    };
    let envelope = proto::UpdateEnvelope {
        version,
        key: Some(key_to_proto(&doc.key)),
        source: doc.source.to_string(),
        position: doc.position.as_str().to_owned(),
        commit_time_micros: doc.commit_time.as_micros(),
        ingested_at_micros: doc.ingested_at.as_micros(),
        operation: operation_to_proto(doc.operation).into(),
        format: doc.format.to_string(),
        raw,
        references: doc.references.iter().map(reference_to_proto).collect(),
        raw_dictionary,
    };
    Bytes::from(envelope.encode_to_vec())
}

/// The name of an update envelope in errors.
pub(crate) const UPDATE_ENVELOPE: &str = "UpdateEnvelope";

/// Decodes an update envelope. The raw event is returned as stored, with
/// the id of the dictionary it is compressed against (0: as received).
pub(crate) fn decode_update(path: &str, bytes: Bytes) -> Result<(UpdateDocument, u32)> {
    const M: &str = UPDATE_ENVELOPE;
    let e = proto::UpdateEnvelope::decode(bytes).map_err(|e| corrupt(path, M, e.to_string()))?;
    match (e.version, e.raw_dictionary) {
        (ENVELOPE_VERSION, 0) | (ENVELOPE_VERSION_COMPRESSED, 1..) => {}
        (ENVELOPE_VERSION | ENVELOPE_VERSION_COMPRESSED, _) => {
            return Err(corrupt(
                path,
                M,
                format!(
                    "envelope version {} does not match raw_dictionary {}",
                    e.version, e.raw_dictionary
                ),
            ));
        }
        (version, _) => {
            return Err(corrupt(
                path,
                M,
                format!("unsupported envelope version {version}"),
            ));
        }
    }
    let operation = operation_from_proto(e.operation)
        .ok_or_else(|| corrupt(path, M, format!("unknown operation {}", e.operation)))?;
    let dictionary = e.raw_dictionary;
    let doc = UpdateDocument {
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
    };
    Ok((doc, dictionary))
}

/// Decodes any message, naming it in the error.
pub(crate) fn decode<M: Message + Default>(path: &str, name: &'static str, bytes: Bytes) -> Result<M> {
    M::decode(bytes).map_err(|e| corrupt(path, name, e.to_string()))
}
