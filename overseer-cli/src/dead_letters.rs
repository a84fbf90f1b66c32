//! `overseer dead-letters`: the events that could not be ingested.

use std::io::Write;

use overseer_core::Store;
use overseer_core::store::DeadLetter;
use serde_json::json;

use crate::cli::DeadLettersArgs;
use crate::{Error, output};

/// How many characters of a raw event the table form shows.
const RAW_CHARS: usize = 200;

pub(crate) async fn run(store: Store, args: &DeadLettersArgs, out: &mut dyn Write) -> Result<(), Error> {
    let letters = store.dead_letters().await?;
    if letters.is_empty() {
        // A message, not data: stdout stays empty.
        let _ = writeln!(std::io::stderr(), "no dead letters");
    }
    for letter in &letters {
        if args.json {
            output::json_line(out, &letter_json(letter))?;
        } else {
            output::line(out, &letter_line(letter))?;
        }
    }
    Ok(())
}

fn letter_line(d: &DeadLetter) -> String {
    let raw = String::from_utf8_lossy(&d.raw);
    [
        d.received_at.to_string(),
        output::field(d.source.as_str()),
        output::field(&d.format),
        output::field_or_dash(d.position.as_ref().map_or("", |p| p.as_str())),
        output::field(&d.error),
        output::field(&output::truncate(&raw, RAW_CHARS)),
    ]
    .join("\t")
}

fn letter_json(d: &DeadLetter) -> serde_json::Value {
    json!({
        "received_at": d.received_at.to_string(),
        "batch_index": d.batch_index,
        "source": d.source.as_str(),
        "format": d.format,
        "position": d.position.as_ref().map(|p| p.as_str()),
        "error": d.error,
        "raw": String::from_utf8_lossy(&d.raw),
        "raw_hex": raw_hex(&d.raw),
    })
}

/// The exact bytes of a raw event that is not valid UTF-8, as lowercase
/// hex (its `raw` has them replaced); `None` for a UTF-8 event, whose
/// `raw` is exact.
fn raw_hex(raw: &[u8]) -> Option<String> {
    use std::fmt::Write as _;
    std::str::from_utf8(raw).is_err().then(|| {
        raw.iter()
            .fold(String::with_capacity(raw.len() * 2), |mut out, b| {
                let _ = write!(out, "{b:02x}");
                out
            })
    })
}

#[cfg(test)]
mod tests {
    use overseer_core::{SourceId, SourcePosition, Timestamp};

    use super::*;

    fn letter(raw: &[u8], position: Option<&str>) -> DeadLetter {
        DeadLetter {
            source: SourceId::new("app").unwrap(),
            position: position.map(SourcePosition::new),
            format: "json".into(),
            raw: raw.to_vec().into(),
            error: "json event rejected: expected value\tat line 1".into(),
            received_at: Timestamp::from_secs(60),
            batch_index: 0,
        }
    }

    #[test]
    fn table_lines() {
        let long = "x".repeat(300);
        let line = letter_line(&letter(long.as_bytes(), None));
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 6, "{line}");
        assert_eq!(fields[..4], ["1970-01-01T00:01:00Z", "app", "json", "-"]);
        assert_eq!(fields[4], "json event rejected: expected value\\tat line 1");
        assert_eq!(fields[5], format!("{}…", "x".repeat(200)));

        let line = letter_line(&letter(b"not \xff json", Some("0/16B3748")));
        assert!(
            line.ends_with("\t0/16B3748\tjson event rejected: expected value\\tat line 1\tnot \u{fffd} json")
        );
    }

    #[test]
    fn json_has_the_full_event() {
        let long = "x".repeat(300);
        let v = letter_json(&letter(long.as_bytes(), None));
        assert_eq!(v["raw"], long.as_str());
        assert_eq!(v["position"], serde_json::Value::Null);
        assert_eq!(v["error"], "json event rejected: expected value\tat line 1");
        assert_eq!(v["raw_hex"], serde_json::Value::Null);
    }

    /// An event that is not UTF-8 keeps its exact bytes in `raw_hex` (its
    /// `raw` has the invalid bytes replaced), so it can be replayed.
    #[test]
    fn json_keeps_the_exact_bytes_of_a_non_utf8_event() {
        let v = letter_json(&letter(b"not \xff json", None));
        assert_eq!(v["raw"], "not \u{fffd} json");
        assert_eq!(v["raw_hex"], "6e6f7420ff206a736f6e");
    }
}
