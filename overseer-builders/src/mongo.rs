//! MongoDB change streams. (Being written.)

use overseer_core::{Change, ConsumeError, Consumed, Consumer, Format, StateBuilder, UpdateDocument};

use crate::FormatOptions;

/// The format name of MongoDB change events.
pub const FORMAT: &str = "mongo";

/// Consumer and builder of MongoDB change stream events.
#[derive(Clone, Debug, Default)]
pub struct Mongo {
    options: FormatOptions,
}

impl Mongo {
    /// A consumer with these options.
    pub fn new(options: FormatOptions) -> Self {
        Self { options }
    }
}

impl Consumer for Mongo {
    fn format(&self) -> Format {
        Format::new(FORMAT).unwrap_or_else(|_| unreachable!())
    }
    fn consume(&self, _raw: &[u8]) -> Result<Consumed, ConsumeError> {
        let _ = &self.options;
        Err(ConsumeError::new(FORMAT, "not yet implemented"))
    }
}

impl StateBuilder for Mongo {
    fn format(&self) -> Format {
        Consumer::format(self)
    }
    fn decode(&self, _update: &UpdateDocument) -> Result<Change, ConsumeError> {
        Err(ConsumeError::new(FORMAT, "not yet implemented"))
    }
}
