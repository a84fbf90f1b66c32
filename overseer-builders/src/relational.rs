//! What the relational formats share: record ids from key values.

use serde_json::Value;

/// The record id of a row from its key values: one value as text (`42`,
/// `abc`), several as the JSON array text of the values.
#[allow(dead_code)] // used by the relational formats being written
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
