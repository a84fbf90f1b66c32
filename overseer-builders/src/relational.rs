//! What the relational formats share: record ids from key values, the
//! choice of key columns and model, and the parsing of Postgres text forms
//! (LSNs, `timestamptz` output).

use std::sync::LazyLock;

use chrono::format::{self, Item, ParseResult, Parsed, StrftimeItems};
use overseer_core::{Change, ConsumeError, Model, RecordId, RecordKey, State, Timestamp};
use serde_json::Value;

use crate::FormatOptions;

/// The rows a row change's key values are looked up in, in order of
/// preference: the change's own row (the new row of an insert or update;
/// the change holds it, so it is not copied), then `others`.
pub(crate) fn key_rows<'a>(change: &'a Change, others: &'a [Option<State>; 2]) -> [Option<&'a State>; 3] {
    let own = match change {
        Change::Full(row) | Change::Merge(row) => Some(row),
        Change::Patch(_) | Change::Delete => None,
    };
    [own, others[0].as_ref(), others[1].as_ref()]
}

/// The key column used when neither the event nor the options name one.
pub(crate) const DEFAULT_KEY_COLUMN: &str = "id";

/// The most columns a key may list (Postgres's `INDEX_MAX_KEYS`).
const MAX_KEY_COLUMNS: usize = 32;

/// The record id of a row from its key values: one value as text (`42`,
/// `abc`), several as the JSON array text of the values.
pub(crate) fn key_text(values: &[&Value]) -> Option<String> {
    match values {
        [] => None,
        [one] => match one {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null => None,
            other => Some(other.to_string()),
        },
        many => serde_json::to_string(many).ok(),
    }
}

/// The key columns of an event: the event's own (`from_event`, when it names
/// any), else the configured [`FormatOptions::key_columns`], else `id`.
pub(crate) fn key_columns<'a>(from_event: &'a [String], options: &'a FormatOptions) -> Vec<&'a str> {
    if !from_event.is_empty() {
        from_event.iter().map(String::as_str).collect()
    } else if !options.key_columns.is_empty() {
        options.key_columns.iter().map(String::as_str).collect()
    } else {
        vec![DEFAULT_KEY_COLUMN]
    }
}

/// The record key of a row of `table`: the model is the table name (or the
/// configured [`FormatOptions::model`]), the id the values of `columns`
/// looked up in `rows`, first row that has the column first (a new row, then
/// the old key).
///
/// Errors name the missing or unusable column; `format` names the rejecting
/// format.
pub(crate) fn record_key(
    format: &str,
    options: &FormatOptions,
    table: &str,
    columns: &[&str],
    rows: &[Option<&State>],
) -> Result<RecordKey, ConsumeError> {
    let model = match &options.model {
        Some(model) => model.clone(),
        None => Model::new(table)
            .map_err(|_| ConsumeError::new(format, "the table name is empty; set a model"))?,
    };
    // Postgres keys have at most 32 columns (INDEX_MAX_KEYS); a longer list
    // is forged, and would make the check for repeats below quadratic.
    if columns.len() > MAX_KEY_COLUMNS {
        return Err(ConsumeError::new(
            format,
            format!(
                "the key of table {table:?} lists {} columns; a Postgres key has at most {MAX_KEY_COLUMNS}",
                columns.len()
            ),
        ));
    }
    let mut values = Vec::with_capacity(columns.len());
    for (i, column) in columns.iter().enumerate() {
        if columns[..i].contains(column) {
            return Err(ConsumeError::new(
                format,
                format!("the key of table {table:?} lists column {column:?} twice"),
            ));
        }
        let value = rows
            .iter()
            .flatten()
            .find_map(|row| row.get(*column))
            .ok_or_else(|| {
                ConsumeError::new(
                    format,
                    format!(
                        "key column {column:?} is not in the row of table {table:?}; \
                         configure the table's key columns (FormatOptions::key_columns)"
                    ),
                )
            })?;
        if value.is_null() {
            return Err(ConsumeError::new(
                format,
                format!("key column {column:?} of table {table:?} is null"),
            ));
        }
        values.push(value);
    }
    let id = key_text(&values)
        .and_then(|text| RecordId::new(text).ok())
        .ok_or_else(|| {
            ConsumeError::new(
                format,
                format!(
                    "the key of table {table:?} ({}) gives an empty record id",
                    columns.join(", ")
                ),
            )
        })?;
    Ok(RecordKey { model, id })
}

/// How a JSON value is named in error messages: `a string`, `an object`, ...
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a Postgres LSN in its text form `X/Y` (two hexadecimal 32-bit
/// halves, as `pg_lsn` prints it: `0/16B3748`).
pub(crate) fn parse_lsn(text: &str) -> Result<u64, String> {
    let invalid = || format!("LSN {text:?} is not of the form X/Y with hexadecimal X and Y (0/16B3748)");
    let (high, low) = text.split_once('/').ok_or_else(invalid)?;
    let half = |s: &str| {
        if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            None
        } else {
            u32::from_str_radix(s, 16).ok()
        }
    };
    let high = half(high).ok_or_else(invalid)?;
    let low = half(low).ok_or_else(invalid)?;
    Ok((u64::from(high) << 32) | u64::from(low))
}

/// Formats an LSN as Postgres prints it (`0/16B3748`).
pub(crate) fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The items of `%Y-%m-%d` and `%H:%M:%S%.f`, parsed once: chrono's
/// `parse_from_str` parses its format string at every call.
static DATE: LazyLock<Vec<Item<'static>>> = LazyLock::new(|| StrftimeItems::new("%Y-%m-%d").collect());
static TIME: LazyLock<Vec<Item<'static>>> = LazyLock::new(|| StrftimeItems::new("%H:%M:%S%.f").collect());

/// `text` read with `items`, then made a value by `to`.
fn parse_items<T>(
    text: &str,
    items: &[Item<'_>],
    to: impl FnOnce(&Parsed) -> ParseResult<T>,
) -> ParseResult<T> {
    let mut parsed = Parsed::new();
    format::parse(&mut parsed, text, items.iter())?;
    to(&parsed)
}

/// Parses a Postgres `timestamptz` in its ISO text form, as
/// `timestamptz_to_str` writes it: `2024-03-01 12:00:00.123456+00`, with a
/// numeric UTC offset of hours, optionally minutes and seconds (`+00`,
/// `+05:30`, `-03`, `+0000`, `-03:00:00`) or `Z`. A `T` between date and time
/// (RFC 3339) is accepted as well.
pub(crate) fn parse_pg_timestamp(text: &str) -> Result<Timestamp, String> {
    let invalid = |why: &str| {
        format!(
            "timestamp {text:?} is not a Postgres timestamptz like \
             \"2024-03-01 12:00:00.123456+00\": {why}"
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find([' ', 'T'])
        .ok_or_else(|| invalid("no space between date and time"))?;
    let (date, rest) = (&trimmed[..split], &trimmed[split + 1..]);
    let offset_at = rest
        .find(['+', '-', 'Z', 'z'])
        .ok_or_else(|| invalid("no UTC offset (+00)"))?;
    let (time, offset) = (&rest[..offset_at], &rest[offset_at..]);
    let date = parse_items(date, &DATE, Parsed::to_naive_date).map_err(|e| invalid(&e.to_string()))?;
    let time = parse_items(time, &TIME, Parsed::to_naive_time).map_err(|e| invalid(&e.to_string()))?;
    let offset_secs = parse_offset(offset).ok_or_else(|| invalid("bad UTC offset"))?;
    let local = date.and_time(time).and_utc().timestamp_micros();
    local
        .checked_sub(offset_secs * 1_000_000)
        .map(Timestamp::from_micros)
        .ok_or_else(|| invalid("out of range"))
}

/// A UTC offset (`Z`, `+05`, `+05:30`, `-0330`, `+05:30:15`) in seconds east.
fn parse_offset(text: &str) -> Option<i64> {
    if text.eq_ignore_ascii_case("z") {
        return Some(0);
    }
    let (sign, digits) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    if !digits.bytes().all(|b| b.is_ascii_digit() || b == b':') {
        return None;
    }
    let parts: Vec<&str> = if digits.contains(':') {
        digits.split(':').collect()
    } else {
        match digits.len() {
            2 => vec![digits],
            4 => vec![&digits[..2], &digits[2..]],
            6 => vec![&digits[..2], &digits[2..4], &digits[4..]],
            _ => return None,
        }
    };
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let mut secs = 0i64;
    for (i, part) in parts.iter().enumerate() {
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: i64 = part.parse().ok()?;
        if i > 0 && n >= 60 {
            return None;
        }
        secs += n * [3600, 60, 1][i];
    }
    Some(sign * secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_text_of_single_and_composite_keys() {
        assert_eq!(key_text(&[&json!(42)]).as_deref(), Some("42"));
        assert_eq!(key_text(&[&json!("abc")]).as_deref(), Some("abc"));
        assert_eq!(key_text(&[&json!(1), &json!("a")]).as_deref(), Some(r#"[1,"a"]"#));
        assert_eq!(key_text(&[&Value::Null]), None);
    }

    /// A key that lists a column twice (a forged event: each repeat would
    /// copy the value into the id again), or more columns than a Postgres
    /// key can have, is refused.
    #[test]
    fn a_key_listing_a_column_twice_is_refused() {
        let row: State = json!({"id": "x".repeat(1000), "n": 1})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let options = FormatOptions::default();
        let key = record_key("wal2json", &options, "t", &["id", "n"], &[Some(&row)]);
        assert_eq!(
            key.map(|k| k.id.to_string()),
            Ok(format!(r#"["{}",1]"#, "x".repeat(1000)))
        );
        let error = record_key("wal2json", &options, "t", &["id", "n", "id"], &[Some(&row)]).unwrap_err();
        assert_eq!(error.reason, r#"the key of table "t" lists column "id" twice"#);
        let many: Vec<String> = (0..=MAX_KEY_COLUMNS).map(|i| format!("c{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let error = record_key("wal2json", &options, "t", &many, &[Some(&row)]).unwrap_err();
        assert!(error.reason.contains("lists 33 columns"), "{}", error.reason);
    }

    #[test]
    fn lsn_round_trips() {
        assert_eq!(parse_lsn("0/16B3748"), Ok(0x16B_3748));
        assert_eq!(parse_lsn("1/0"), Ok(1 << 32));
        assert_eq!(format_lsn(0x16B_3748), "0/16B3748");
        assert_eq!(parse_lsn(&format_lsn(0xABCD_0000_1234)), Ok(0xABCD_0000_1234));
        for bad in ["", "0", "/1", "1/", "x/1", "123456789/1", "0/-1", "0/1/2"] {
            assert!(parse_lsn(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn postgres_timestamps_with_offsets() {
        let utc = Timestamp::parse("2024-03-01T12:00:00.123456Z").map_err(|e| e.to_string());
        assert_eq!(parse_pg_timestamp("2024-03-01 12:00:00.123456+00"), utc);
        assert_eq!(parse_pg_timestamp("2024-03-01 17:30:00.123456+05:30"), utc);
        assert_eq!(parse_pg_timestamp("2024-03-01 09:00:00.123456-03"), utc);
        assert_eq!(parse_pg_timestamp("2024-03-01 12:00:00.123456+0000"), utc);
        assert_eq!(parse_pg_timestamp("2024-03-01T12:00:00.123456Z"), utc);
        assert_eq!(
            parse_pg_timestamp("2024-03-01 12:00:00+00"),
            Ok(Timestamp::from_micros(1_709_294_400_000_000))
        );
        for bad in [
            "",
            "2024-03-01",
            "2024-03-01 12:00:00",
            "2024-03-01 12:00:00+5",
            "2024-13-01 12:00:00+00",
            "2024-03-01 25:00:00+00",
            "infinity",
            "2024-03-01 12:00:00+05:99",
            "2024-03-01 12:00:00+a\u{e9}1",
            "2024-03-01 12:00:00+\u{e9}\u{e9}",
            "2024-03-01\u{e9}12:00:00+00",
        ] {
            assert!(parse_pg_timestamp(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn text_parsers_never_panic(text in "\\PC{0,40}") {
            let _ = parse_pg_timestamp(&text);
            let _ = parse_lsn(&text);
        }

        #[test]
        fn timestamps_in_any_offset_parse_to_the_same_instant(
            micros in 0i64..4_102_444_800_000_000,
            offset_minutes in -720i32..=840,
        ) {
            let offset = chrono::FixedOffset::east_opt(offset_minutes * 60).unwrap_or_else(|| unreachable!());
            let Some(utc) = chrono::DateTime::from_timestamp_micros(micros) else { unreachable!() };
            let text = utc.with_timezone(&offset).format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string();
            proptest::prop_assert_eq!(parse_pg_timestamp(&text), Ok(Timestamp::from_micros(micros)), "{}", text);
        }

        #[test]
        fn lsns_round_trip(lsn in proptest::prelude::any::<u64>()) {
            proptest::prop_assert_eq!(parse_lsn(&format_lsn(lsn)), Ok(lsn));
        }
    }
}
