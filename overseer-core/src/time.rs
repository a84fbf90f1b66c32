//! Source time: commit times in microseconds since the Unix epoch (UTC).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::error::{Error, Result};

/// A point in time, in microseconds since the Unix epoch (UTC).
///
/// Used for source commit times (when a change committed in its own
/// database) and for delivery times (when Overseer received it); the two
/// clocks are kept apart by the types that hold them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The latest representable time; `at(Timestamp::MAX)` means "now and forever".
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// From microseconds since the epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// From milliseconds since the epoch (saturating).
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis.saturating_mul(1_000))
    }

    /// From whole seconds since the epoch (saturating).
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1_000_000))
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        // Straight from the system clock: `Utc::now` would also work out
        // the calendar date, which nothing here needs (the store stamps
        // every object it writes with this).
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Self(
            match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
                Ok(since) => micros(since),
                Err(before) => -micros(before.duration()),
            },
        )
    }

    /// This time plus a duration (saturating).
    pub fn saturating_add(self, d: Duration) -> Self {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(micros))
    }

    /// This time minus a duration (saturating).
    pub fn saturating_sub(self, d: Duration) -> Self {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(micros))
    }

    /// Parses RFC 3339 (`2024-05-01T12:00:00Z`, `2024-05-01T12:00:00.5+02:00`)
    /// or an integer number of Unix seconds (`1714564800`).
    ///
    /// ```
    /// use overseer_core::Timestamp;
    /// let a = Timestamp::parse("2022-07-19T09:47:53Z")?;
    /// let b = Timestamp::parse("1658224073")?;
    /// assert_eq!(a, b);
    /// assert!(Timestamp::parse("yesterday").is_err());
    /// # Ok::<(), overseer_core::Error>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            // Integer Unix seconds, as far as microseconds in an i64 go.
            return text
                .parse::<i64>()
                .ok()
                .and_then(|secs| secs.checked_mul(1_000_000))
                .map(Self)
                .ok_or_else(|| Error::InvalidInput {
                    what: "time",
                    reason: format!(
                        "{text:?} is out of range as Unix seconds (at most {})",
                        i64::MAX / 1_000_000
                    ),
                });
        }
        DateTime::parse_from_rfc3339(text)
            .map(|t| Self(t.timestamp_micros()))
            .map_err(|e| Error::InvalidInput {
                what: "time",
                reason: format!(
                    "{text:?} is neither RFC 3339 (2024-05-01T12:00:00Z) nor integer Unix seconds: {e}"
                ),
            })
    }

    /// The time as a chrono `DateTime`, if representable.
    fn to_datetime(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.0)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with microseconds where they are not zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_datetime() {
            Some(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            None => write!(f, "{}us", self.0),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_the_system_clock_in_microseconds_since_the_epoch() {
        let before = Utc::now().timestamp_micros();
        let now = Timestamp::now().as_micros();
        let after = Utc::now().timestamp_micros();
        assert!(before <= now && now <= after, "{before} <= {now} <= {after}");
    }

    #[test]
    fn times_parse_as_rfc_3339_or_unix_seconds_in_range() {
        let parse = |text: &str| Timestamp::parse(text).ok();
        assert_eq!(parse("1700000000"), Some(Timestamp::from_secs(1_700_000_000)));
        assert_eq!(parse(" -5 "), Some(Timestamp::from_secs(-5)));
        assert_eq!(parse("+5"), Some(Timestamp::from_secs(5)));
        assert_eq!(
            parse("2024-05-01T12:00:00Z"),
            Some(Timestamp::from_secs(1_714_564_800))
        );
        for out_of_range in ["99999999999999999999", "9223372036855", "-9223372036855"] {
            let error = Timestamp::parse(out_of_range).unwrap_err().to_string();
            assert!(
                error.contains("out of range as Unix seconds"),
                "{out_of_range}: {error}"
            );
        }
        let error = Timestamp::parse("soon").unwrap_err().to_string();
        assert!(error.contains("neither RFC 3339"), "{error}");
        assert!(Timestamp::parse("-").is_err());
    }
}
