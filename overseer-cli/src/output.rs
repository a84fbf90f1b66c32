//! Writing data to the output (stdout): lines, JSON, one-line text fields.

use std::io::Write;

use crate::Error;

/// Writes one line.
pub(crate) fn line(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    writeln!(out, "{text}").map_err(Error::Output)
}

/// Writes a JSON value on one line.
pub(crate) fn json_line(out: &mut dyn Write, value: &serde_json::Value) -> Result<(), Error> {
    // Serializing a `Value` cannot fail; only the write can.
    let text = value.to_string();
    line(out, &text)
}

/// Makes text fit in one tab-separated field: tabs, line breaks and other
/// control characters are escaped (`\t`, `\n`, `\r`, `\u{1b}`), backslashes
/// doubled.
pub(crate) fn field(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// [`field`] of `text`, or `-` when it is empty: how a line shows a field
/// with nothing in it.
pub(crate) fn field_or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        field(text)
    }
}

/// The first `max` characters of `text`, with `…` appended when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_stay_on_one_line() {
        assert_eq!(field("a\tb\nc\r\\d\u{1b}"), "a\\tb\\nc\\r\\\\d\\u{1b}");
        assert_eq!(field("plain é"), "plain é");
    }

    #[test]
    fn truncates_on_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "abc…");
        assert_eq!(truncate("ééé", 2), "éé…");
        assert_eq!(truncate("", 0), "");
    }
}
