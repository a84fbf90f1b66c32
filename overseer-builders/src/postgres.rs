//! Postgres logical decoding: wal2json and pgoutput. (Being written.)

use overseer_core::{Change, ConsumeError, Consumed, Consumer, Format, StateBuilder, UpdateDocument};

use crate::FormatOptions;

/// The format name of wal2json changes.
pub const WAL2JSON_FORMAT: &str = "wal2json";
/// The format name of decoded pgoutput row changes.
pub const PGOUTPUT_FORMAT: &str = "pgoutput";

/// A decoded pgoutput row change.
#[derive(Clone, Debug, Default)]
pub struct PgRowChange;

macro_rules! placeholder {
    ($name:ident, $format:ident) => {
        /// Consumer and builder.
        #[derive(Clone, Debug, Default)]
        pub struct $name {
            options: FormatOptions,
        }

        impl $name {
            /// A consumer with these options.
            pub fn new(options: FormatOptions) -> Self {
                Self { options }
            }
        }

        impl Consumer for $name {
            fn format(&self) -> Format {
                Format::new($format).unwrap_or_else(|_| unreachable!())
            }
            fn consume(&self, _raw: &[u8]) -> Result<Consumed, ConsumeError> {
                let _ = &self.options;
                Err(ConsumeError::new($format, "not yet implemented"))
            }
        }

        impl StateBuilder for $name {
            fn format(&self) -> Format {
                Consumer::format(self)
            }
            fn decode(&self, _update: &UpdateDocument) -> Result<Change, ConsumeError> {
                Err(ConsumeError::new($format, "not yet implemented"))
            }
        }
    };
}

placeholder!(Wal2Json, WAL2JSON_FORMAT);
placeholder!(PgOutput, PGOUTPUT_FORMAT);
