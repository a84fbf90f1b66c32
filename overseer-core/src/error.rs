//! The error type of `overseer-core`.

/// A boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `overseer-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value given by a caller or found in an event is not acceptable.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was invalid (`record id`, `time`, ...).
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The object store failed.
    #[error("store {operation} of {path:?} failed: {source}")]
    Store {
        /// The store operation (`put`, `get`, `list`).
        operation: &'static str,
        /// The key or prefix involved.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// An object in the store could not be decoded: the store was written by
    /// an incompatible version or was corrupted.
    #[error("object {path:?} is not a valid {message}: {reason}")]
    Corrupt {
        /// The key of the object.
        path: String,
        /// The protobuf message expected.
        message: &'static str,
        /// Why it could not be decoded.
        reason: String,
    },
    /// Another event was already stored at the same source position for the
    /// same record with different bytes.
    #[error(
        "position conflict: {source_id} position {position} of {key} is already stored with different content"
    )]
    PositionConflict {
        /// The source.
        source_id: String,
        /// The position.
        position: String,
        /// The record.
        key: String,
    },
    /// An event could not be consumed.
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    /// A stored update could not be folded into a state.
    #[error("cannot build the state of {key}: update at {position} ({format}): {reason}")]
    Build {
        /// The record.
        key: String,
        /// The update's position.
        position: String,
        /// The update's format.
        format: String,
        /// Why.
        reason: String,
    },
    /// No state builder is registered for a format found in the store.
    #[error("no state builder for format {format:?} (known: {known})")]
    UnknownFormat {
        /// The format.
        format: String,
        /// The known formats, comma-separated.
        known: String,
    },
    /// A component that runs background tasks was built outside a Tokio
    /// runtime.
    #[error("{component} must be built inside a Tokio runtime (it spawns background tasks)")]
    NoRuntime {
        /// The component (`DualRouter`).
        component: &'static str,
    },
    /// Publishing to a topic failed.
    #[error("publishing to the topic failed: {source}")]
    Topic {
        /// The topic's error.
        #[source]
        source: BoxError,
    },
    /// A typed read could not deserialize a record's state into the user's type.
    #[error(
        "record {key} does not fit type {type_name}: {}{source}",
        if field.is_empty() { String::new() } else { format!("at {field}: ") }
    )]
    Deserialize {
        /// The record.
        key: String,
        /// The Rust type asked for.
        type_name: &'static str,
        /// The path of the field that does not fit (`meta.attempt`,
        /// `items[2].amount`), empty when it is the whole record.
        field: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Why one raw event could not be consumed. Consumers return it; ingestion
/// dead-letters the event with this reason and carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format} event rejected: {reason}")]
pub struct ConsumeError {
    /// The format of the consumer that rejected the event.
    pub format: String,
    /// What is wrong with the event, specific enough to fix it.
    pub reason: String,
}

impl ConsumeError {
    /// A rejection by a consumer of `format`.
    pub fn new(format: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            format: format.into(),
            reason: reason.into(),
        }
    }
}
