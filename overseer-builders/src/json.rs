//! Whole application records. (Being written.)

use overseer_core::{Change, ConsumeError, Consumed, Consumer, Format, StateBuilder, UpdateDocument};

use crate::FormatOptions;

/// The format name of whole-record JSON events.
pub const FORMAT: &str = "json";

/// Consumer and builder of whole-record JSON events.
#[derive(Clone, Debug, Default)]
pub struct Json {
    options: FormatOptions,
}

impl Json {
    /// A consumer with these options.
    pub fn new(options: FormatOptions) -> Result<Self, crate::Error> {
        Ok(Self { options })
    }

    /// The builder (needs no options).
    pub fn builder() -> Self {
        Self::default()
    }
}

impl Consumer for Json {
    fn format(&self) -> Format {
        Format::new(FORMAT).unwrap_or_else(|_| unreachable!())
    }
    fn consume(&self, _raw: &[u8]) -> Result<Consumed, ConsumeError> {
        let _ = &self.options;
        Err(ConsumeError::new(FORMAT, "not yet implemented"))
    }
}

impl StateBuilder for Json {
    fn format(&self) -> Format {
        Consumer::format(self)
    }
    fn decode(&self, _update: &UpdateDocument) -> Result<Change, ConsumeError> {
        Err(ConsumeError::new(FORMAT, "not yet implemented"))
    }
}
