//! The normalized change every format decodes to, and the fold that turns a
//! record's changes into its state.
//!
//! A [`StateBuilder`](crate::StateBuilder) only decodes one raw event into a
//! [`Change`]; [`apply`] is shared by every format, so the semantics of
//! "update some fields", "keep unchanged columns", "delete" are the same
//! whichever database the record came from.

use serde_json::{Map, Value};

/// A record's state: a JSON object (MongoDB document, relational row as
/// column name to value).
pub type State = Map<String, Value>;

/// One change to a record, in a form independent of its source format.
#[derive(Clone, PartialEq, Debug)]
pub enum Change {
    /// The whole new state (insert, replace, snapshot, a full-row update).
    Full(State),
    /// Column values that replace the previous state's; columns absent keep
    /// their previous values (Postgres unchanged TOAST columns, Debezium
    /// unavailable values).
    Merge(State),
    /// Field-level edits (MongoDB `updateDescription`).
    Patch(Patch),
    /// The record was deleted.
    Delete,
}

/// An estimate of the heap memory a state takes, in bytes: what the DAL's
/// caches weigh entries by.
///
/// It counts the map itself, a slot per field (key, value and index: about
/// 80 bytes with `preserve_order`), the bytes of every key and string, and
/// the elements of arrays, recursively.
pub(crate) fn approx_size(state: &State) -> usize {
    const MAP: usize = 64;
    const SLOT: usize = 80;
    MAP + state
        .iter()
        .map(|(k, v)| SLOT + k.len() + value_size(v))
        .sum::<usize>()
}

/// The heap memory a value holds beyond its own 32 bytes.
fn value_size(v: &Value) -> usize {
    const VALUE: usize = 32;
    match v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(|i| VALUE + value_size(i)).sum(),
        Value::Object(map) => approx_size(map),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

impl Change {
    /// An estimate of the heap memory the change takes, in bytes (see
    /// [`approx_size`]).
    pub(crate) fn approx_size(&self) -> usize {
        let path = |f: &FieldPath| 24 + f.0.iter().map(|s| 24 + s.len()).sum::<usize>();
        match self {
            Change::Full(s) | Change::Merge(s) => approx_size(s),
            Change::Patch(p) => {
                p.truncated.iter().map(|(f, _)| path(f) + 8).sum::<usize>()
                    + p.removed.iter().map(path).sum::<usize>()
                    + p.updated
                        .iter()
                        .map(|(f, v)| path(f) + 32 + value_size(v))
                        .sum::<usize>()
            }
            Change::Delete => 0,
        }
    }
}

/// Field-level edits, applied in the order: truncate arrays, remove fields,
/// set fields (the order in which MongoDB reports a delta).
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Patch {
    /// Arrays truncated to a new length.
    pub truncated: Vec<(FieldPath, usize)>,
    /// Fields removed.
    pub removed: Vec<FieldPath>,
    /// Fields set to a value; paths may go through nested documents and
    /// array elements (`meta.region`, `status_history.2`).
    pub updated: Vec<(FieldPath, Value)>,
}

/// A dotted path into a document: `a.b.0.c`. A numeric segment addresses an
/// array element when the value at that point is an array, and an object
/// field otherwise.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Splits a dotted path (`meta.region`) into segments.
    ///
    /// ```
    /// use overseer_core::change::FieldPath;
    /// assert_eq!(FieldPath::parse("a.b.0").segments(), ["a", "b", "0"]);
    /// ```
    pub fn parse(dotted: &str) -> Self {
        Self(dotted.split('.').map(str::to_owned).collect())
    }

    /// A path from its segments (field names may contain dots).
    pub fn from_segments(segments: Vec<String>) -> Self {
        Self(segments)
    }

    /// A path of a single top-level field, even if its name contains dots.
    pub fn field(name: impl Into<String>) -> Self {
        Self(vec![name.into()])
    }

    /// The path's segments.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The dotted form of the path.
    pub fn dotted(&self) -> String {
        self.0.join(".")
    }

    /// The value at this path in `state`, if any.
    pub fn lookup<'a>(&self, state: &'a State) -> Option<&'a Value> {
        let (first, rest) = self.0.split_first()?;
        let mut current = state.get(first)?;
        for segment in rest {
            current = step(current, segment)?;
        }
        Some(current)
    }
}

fn step<'a>(value: &'a Value, segment: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

fn step_mut<'a>(value: &'a mut Value, segment: &str, create: bool) -> Option<&'a mut Value> {
    match value {
        Value::Object(map) => {
            if create && !map.contains_key(segment) {
                map.insert(segment.to_owned(), Value::Object(Map::new()));
            }
            map.get_mut(segment)
        }
        Value::Array(items) => {
            let i = segment.parse::<usize>().ok()?;
            if create {
                // MongoDB pads with nulls when setting past the end.
                while items.len() <= i {
                    items.push(Value::Null);
                }
            }
            items.get_mut(i)
        }
        _ => None,
    }
}

/// Walks to the parent of the path's last segment. With `create`, missing
/// intermediate documents are created (as MongoDB does for `$set`).
fn parent_mut<'a>(state: &'a mut State, path: &[String], create: bool) -> Option<&'a mut Value> {
    let (first, rest) = path.split_first()?;
    if create && !state.contains_key(first) {
        state.insert(first.clone(), Value::Object(Map::new()));
    }
    let mut current = state.get_mut(first)?;
    for segment in rest {
        current = step_mut(current, segment, create)?;
    }
    Some(current)
}

fn set(state: &mut State, path: &FieldPath, value: Value) {
    match path.0.split_last() {
        None => {}
        Some((last, [])) => {
            state.insert(last.clone(), value);
        }
        Some((last, parents)) => {
            if let Some(parent) = parent_mut(state, parents, true) {
                match parent {
                    Value::Object(map) => {
                        map.insert(last.clone(), value);
                    }
                    Value::Array(items) => {
                        if let Ok(i) = last.parse::<usize>() {
                            while items.len() <= i {
                                items.push(Value::Null);
                            }
                            items[i] = value;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn remove(state: &mut State, path: &FieldPath) {
    match path.0.split_last() {
        None => {}
        Some((last, [])) => {
            state.shift_remove(last);
        }
        Some((last, parents)) => {
            if let Some(parent) = parent_mut(state, parents, false) {
                match parent {
                    Value::Object(map) => {
                        map.shift_remove(last);
                    }
                    // `$unset` of an array element sets it to null.
                    Value::Array(items) => {
                        if let Some(item) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                            *item = Value::Null;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn truncate(state: &mut State, path: &FieldPath, len: usize) {
    let target = match path.0.split_last() {
        None => None,
        Some((last, [])) => state.get_mut(last),
        Some((last, parents)) => parent_mut(state, parents, false).and_then(|p| step_mut(p, last, false)),
    };
    if let Some(Value::Array(items)) = target {
        items.truncate(len);
    }
}

/// Applies one change to a record's state; `None` is "does not exist".
///
/// A [`Change::Patch`] or [`Change::Merge`] on a record that does not exist
/// (its insert was never seen, e.g. a change stream opened mid-life) applies
/// to an empty document, so the fields that are known are not lost.
///
/// ```
/// use overseer_core::change::{apply, Change, FieldPath, Patch};
/// use serde_json::json;
///
/// let inserted = json!({"_id": "t1", "type": "watergun", "color": "blue"});
/// let state = apply(None, &Change::Full(inserted.as_object().unwrap().clone()));
/// let patch = Patch {
///     updated: vec![(FieldPath::parse("type"), json!("balloon"))],
///     ..Patch::default()
/// };
/// let state = apply(state, &Change::Patch(patch)).unwrap();
/// assert_eq!(serde_json::Value::Object(state), json!({"_id": "t1", "type": "balloon", "color": "blue"}));
/// ```
pub fn apply(state: Option<State>, change: &Change) -> Option<State> {
    match change {
        Change::Full(full) => Some(full.clone()),
        Change::Delete => None,
        Change::Merge(columns) => Some(merge(state, columns.iter().map(|(n, v)| (n.clone(), v.clone())))),
        Change::Patch(patch) => Some(patch_state(
            state,
            patch,
            patch.updated.iter().map(|(p, v)| (p, v.clone())),
        )),
    }
}

/// [`apply`], consuming the change: its values move into the state instead
/// of being copied (what ingestion does with a change it no longer needs).
///
/// ```
/// use overseer_core::change::{apply, apply_owned, Change};
/// use serde_json::json;
///
/// let row = json!({"id": 1, "amount": 5}).as_object().unwrap().clone();
/// let change = Change::Merge(row);
/// assert_eq!(apply(None, &change), apply_owned(None, change));
/// ```
pub fn apply_owned(state: Option<State>, change: Change) -> Option<State> {
    match change {
        Change::Full(full) => Some(full),
        Change::Delete => None,
        Change::Merge(columns) => Some(match state {
            None => columns,
            state => merge(state, columns),
        }),
        Change::Patch(mut patch) => {
            let updated = std::mem::take(&mut patch.updated);
            Some(patch_state(state, &patch, updated))
        }
    }
}

/// `columns` written over `state` (or over an empty document).
fn merge(state: Option<State>, columns: impl IntoIterator<Item = (String, Value)>) -> State {
    let mut state = state.unwrap_or_default();
    state.extend(columns);
    state
}

/// A patch's truncations and removals, then `updated`, applied to `state`
/// (or to an empty document).
fn patch_state<P: std::borrow::Borrow<FieldPath>>(
    state: Option<State>,
    patch: &Patch,
    updated: impl IntoIterator<Item = (P, Value)>,
) -> State {
    let mut state = state.unwrap_or_default();
    for (path, len) in &patch.truncated {
        truncate(&mut state, path, *len);
    }
    for path in &patch.removed {
        remove(&mut state, path);
    }
    for (path, value) in updated {
        set(&mut state, path.borrow(), value);
    }
    state
}

impl Change {
    /// The values this change writes at `path`: the value in a full or merged
    /// state, or a patch's value for that path (or for a path inside it).
    /// Used to extract references at ingestion.
    pub fn values_at<'a>(&'a self, path: &FieldPath) -> Vec<&'a Value> {
        match self {
            Change::Full(state) | Change::Merge(state) => path.lookup(state).into_iter().collect(),
            Change::Delete => Vec::new(),
            Change::Patch(patch) => {
                let mut found = Vec::new();
                for (updated, value) in &patch.updated {
                    let u = updated.segments();
                    let p = path.segments();
                    if u == p {
                        found.push(value);
                    } else if p.starts_with(u) {
                        // The patch sets a parent document of the path.
                        let mut current = Some(value);
                        for segment in &p[u.len()..] {
                            current = current.and_then(|v| step(v, segment));
                        }
                        found.extend(current);
                    }
                }
                found
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_estimate_grows_with_every_field_string_and_element() {
        let small = json!({"id": 1, "account": "a"});
        let base = approx_size(small.as_object().unwrap());
        let long = json!({"id": 1, "account": "a".repeat(1000)});
        assert!(approx_size(long.as_object().unwrap()) >= base + 999);
        let nested = json!({"id": 1, "account": "a", "meta": {"tags": ["x", "y", "z"]}});
        let with_nested = approx_size(nested.as_object().unwrap());
        assert!(with_nested > base + 3 * 32, "{with_nested} vs {base}");
        let patch = Change::Patch(Patch {
            updated: vec![(FieldPath::parse("meta.note"), json!("n".repeat(500)))],
            ..Patch::default()
        });
        assert!(patch.approx_size() >= 500);
        assert_eq!(Change::Delete.approx_size(), 0);
    }
    use serde_json::json;

    fn obj(v: Value) -> State {
        match v {
            Value::Object(m) => m,
            _ => State::new(),
        }
    }

    #[test]
    fn patch_sets_nested_fields_and_array_elements() {
        let state = obj(json!({"a": {"b": 1}, "arr": [1, 2, 3], "gone": true}));
        let patch = Patch {
            truncated: vec![(FieldPath::parse("arr"), 2)],
            removed: vec![FieldPath::parse("gone")],
            updated: vec![
                (FieldPath::parse("a.c"), json!(2)),
                (FieldPath::parse("arr.3"), json!(9)),
                (FieldPath::parse("new.deep"), json!("x")),
            ],
        };
        let out = apply(Some(state), &Change::Patch(patch));
        assert_eq!(
            out.map(Value::Object),
            Some(json!({"a": {"b": 1, "c": 2}, "arr": [1, 2, null, 9], "new": {"deep": "x"}}))
        );
    }

    #[test]
    fn merge_keeps_absent_columns_and_delete_removes_record() {
        let state = obj(json!({"id": 1, "big": "toasted", "n": 1}));
        let merged = apply(Some(state), &Change::Merge(obj(json!({"id": 1, "n": 2}))));
        assert_eq!(
            merged.clone().map(Value::Object),
            Some(json!({"id": 1, "big": "toasted", "n": 2}))
        );
        assert_eq!(apply(merged, &Change::Delete), None);
    }

    #[test]
    fn applying_a_change_by_value_gives_the_same_state_as_by_reference() {
        let state = obj(json!({"id": 1, "a": {"b": 1}, "arr": [1, 2, 3], "gone": true}));
        let changes = [
            Change::Full(obj(json!({"id": 1, "fresh": [1, {"x": "y"}]}))),
            Change::Delete,
            Change::Merge(obj(json!({"n": 2, "a": null}))),
            Change::Patch(Patch {
                truncated: vec![(FieldPath::parse("arr"), 1)],
                removed: vec![FieldPath::parse("gone"), FieldPath::parse("a.b")],
                updated: vec![
                    (FieldPath::parse("a.c"), json!(2)),
                    (FieldPath::parse("arr.2"), json!(9)),
                    (FieldPath::parse("new.deep"), json!("x")),
                ],
            }),
        ];
        for change in changes {
            for before in [None, Some(state.clone())] {
                let by_ref = apply(before.clone(), &change);
                assert_eq!(apply_owned(before, change.clone()), by_ref, "{change:?}");
            }
        }
    }

    #[test]
    fn values_at_finds_reference_inside_patched_parent() {
        let patch = Patch {
            updated: vec![(FieldPath::parse("meta"), json!({"ref": "x"}))],
            ..Patch::default()
        };
        let change = Change::Patch(patch);
        assert_eq!(change.values_at(&FieldPath::parse("meta.ref")), vec![&json!("x")]);
        assert!(change.values_at(&FieldPath::parse("other")).is_empty());
    }
}
