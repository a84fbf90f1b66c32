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
        model: key.model.as_str().to_owned(),
        id: key.id.as_str().to_owned(),
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
        format: doc.format.as_str().to_owned(),
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
        source: doc.source.as_str().to_owned(),
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
        None => unseal(&mut envelope, sealed),
    }
    Bytes::from(envelope.encode_to_vec())
}

/// Moves the fields of `sealed` into the envelope, where a version 1 or 2
/// envelope holds them.
fn unseal(envelope: &mut proto::UpdateEnvelope, sealed: proto::SealedUpdate) {
    envelope.key = sealed.key;
    envelope.position = sealed.position;
    envelope.format = sealed.format;
    envelope.raw = sealed.raw;
    envelope.references = sealed.references;
}

/// The name of an update envelope in errors.
pub(crate) const UPDATE_ENVELOPE: &str = "UpdateEnvelope";

/// An update object as decoded: the update, or an envelope still
/// compressed against a dictionary of its source.
pub(crate) enum Decoded {
    Update(UpdateDocument),
    Compressed {
        source: SourceId,
        dictionary: u32,
        envelope: proto::UpdateEnvelope,
    },
}

/// Decodes an update object and checks that its version and dictionary
/// agree; a compressed one (version 2 or 3) is opened by
/// [`decompress_update`] with the dictionary it names.
pub(crate) fn decode_update(path: &str, bytes: Bytes) -> Result<Decoded> {
    const M: &str = UPDATE_ENVELOPE;
    let e = proto::UpdateEnvelope::decode(bytes).map_err(|e| corrupt(path, M, e.to_string()))?;
    let source = || SourceId::new(&e.source).map_err(|err| corrupt(path, M, err.to_string()));
    match (e.version, e.raw_dictionary) {
        (ENVELOPE_VERSION, 0) => {
            let source = source()?;
            update_from(path, e, source).map(Decoded::Update)
        }
        (ENVELOPE_VERSION_COMPRESSED | ENVELOPE_VERSION_SEALED, 1..) => Ok(Decoded::Compressed {
            source: source()?,
            dictionary: e.raw_dictionary,
            envelope: e,
        }),
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

/// The update a [`Decoded::Compressed`] envelope holds, its frame (`sealed`
/// in version 3, `raw` in version 2) decompressed by `decompress`.
pub(crate) fn decompress_update(
    path: &str,
    mut e: proto::UpdateEnvelope,
    source: SourceId,
    decompress: impl Fn(&[u8]) -> std::result::Result<Vec<u8>, String>,
) -> Result<UpdateDocument> {
    let failed = |what: &str, reason: String| corrupt(path, UPDATE_ENVELOPE, format!("{what}: {reason}"));
    if e.version == ENVELOPE_VERSION_SEALED {
        let content = decompress(&e.sealed).map_err(|r| failed("sealed", r))?;
        let sealed =
            proto::SealedUpdate::decode(content.as_slice()).map_err(|r| failed("sealed", r.to_string()))?;
        unseal(&mut e, sealed);
    } else {
        e.raw = Bytes::from(decompress(&e.raw).map_err(|r| failed("raw", r))?);
    }
    update_from(path, e, source)
}

/// The update an envelope's fields (as stored, or decompressed) describe.
fn update_from(path: &str, e: proto::UpdateEnvelope, source: SourceId) -> Result<UpdateDocument> {
    const M: &str = UPDATE_ENVELOPE;
    let operation = operation_from_proto(e.operation)
        .ok_or_else(|| corrupt(path, M, format!("unknown operation {}", e.operation)))?;
    Ok(UpdateDocument {
        key: key_from_proto(e.key, path, M)?,
        source,
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
