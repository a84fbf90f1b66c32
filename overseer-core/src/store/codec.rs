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
/// The envelope version of an update whose raw event is compressed (read,
/// no longer written).
pub(crate) const ENVELOPE_VERSION_COMPRESSED: u32 = 2;
/// The envelope version of an update whose raw event and metadata are
/// compressed together (`sealed`).
pub(crate) const ENVELOPE_VERSION_SEALED: u32 = 3;

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

/// The part of an update that a version 3 envelope compresses: also what a
/// source's dictionary is trained on.
pub(crate) fn sealed_update(doc: &UpdateDocument) -> proto::SealedUpdate {
    proto::SealedUpdate {
        raw: doc.raw.clone(),
        key: Some(key_to_proto(&doc.key)),
        position: doc.position.as_str().to_owned(),
        format: doc.format.to_string(),
        references: doc.references.iter().map(reference_to_proto).collect(),
    }
}

/// Encodes an update: sealed (its raw event and the metadata read from it
/// compressed together against `encoder`) when given and when that makes it
/// smaller, as received otherwise.
pub(crate) fn encode_update(doc: &UpdateDocument, encoder: Option<&Encoder>) -> Bytes {
    let sealed = sealed_update(doc);
    let mut envelope = proto::UpdateEnvelope {
        version: ENVELOPE_VERSION,
        source: doc.source.to_string(),
        commit_time_micros: doc.commit_time.as_micros(),
        ingested_at_micros: doc.ingested_at.as_micros(),
        operation: operation_to_proto(doc.operation).into(),
        ..Default::default()
    };
    match encoder.and_then(|e| Some((e.id, e.compress(&sealed.encode_to_vec())?))) {
        Some((id, frame)) => {
            envelope.version = ENVELOPE_VERSION_SEALED;
            envelope.raw_dictionary = id;
            envelope.sealed = Bytes::from(frame);
        }
        None => {
            envelope.key = sealed.key;
            envelope.position = sealed.position;
            envelope.format = sealed.format;
            envelope.raw = sealed.raw;
            envelope.references = sealed.references;
        }
    }
    Bytes::from(envelope.encode_to_vec())
}

/// The name of an update envelope in errors.
pub(crate) const UPDATE_ENVELOPE: &str = "UpdateEnvelope";

/// Decodes an update envelope and checks that its version and dictionary
/// agree. A compressed envelope (version 2 or 3) is returned as stored:
/// [`unseal`] or the dictionary's decoder opens it.
pub(crate) fn decode_envelope(path: &str, bytes: Bytes) -> Result<proto::UpdateEnvelope> {
    const M: &str = UPDATE_ENVELOPE;
    let e = proto::UpdateEnvelope::decode(bytes).map_err(|e| corrupt(path, M, e.to_string()))?;
    match (e.version, e.raw_dictionary) {
        (ENVELOPE_VERSION, 0) | (ENVELOPE_VERSION_COMPRESSED | ENVELOPE_VERSION_SEALED, 1..) => Ok(e),
        (ENVELOPE_VERSION | ENVELOPE_VERSION_COMPRESSED | ENVELOPE_VERSION_SEALED, _) => Err(corrupt(
            path,
            M,
            format!(
                "envelope version {} does not match raw_dictionary {}",
                e.version, e.raw_dictionary
            ),
        )),
        (version, _) => Err(corrupt(
            path,
            M,
            format!("unsupported envelope version {version}"),
        )),
    }
}

/// Moves the fields of a sealed envelope's decompressed `SealedUpdate`
/// back into it, making it a version 1 envelope.
pub(crate) fn unseal(path: &str, e: &mut proto::UpdateEnvelope, sealed: Vec<u8>) -> Result<()> {
    let s = proto::SealedUpdate::decode(sealed.as_slice())
        .map_err(|err| corrupt(path, UPDATE_ENVELOPE, format!("sealed: {err}")))?;
    e.version = ENVELOPE_VERSION;
    e.raw_dictionary = 0;
    e.sealed = Bytes::new();
    e.key = s.key;
    e.position = s.position;
    e.format = s.format;
    e.raw = s.raw;
    e.references = s.references;
    Ok(())
}

/// The update a version 1 envelope (as stored, or once decompressed) holds.
pub(crate) fn update_from_envelope(path: &str, e: proto::UpdateEnvelope) -> Result<UpdateDocument> {
    const M: &str = UPDATE_ENVELOPE;
    if e.version != ENVELOPE_VERSION {
        return Err(corrupt(
            path,
            M,
            format!("envelope version {} is still compressed", e.version),
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
