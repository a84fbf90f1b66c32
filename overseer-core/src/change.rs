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
    MAP + state
        .iter()
        .map(|(k, v)| SLOT + k.len() + value_size(v))
        .sum::<usize>()
}

/// [`approx_size`]'s weight of a map.
const MAP: usize = 64;
/// [`approx_size`]'s weight of a map's slot, beyond its key's bytes.
const SLOT: usize = 80;
/// [`approx_size`]'s weight of an array's element, beyond its heap.
const VALUE: usize = 32;

/// The heap memory a value holds beyond its own 32 bytes.
fn value_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(|i| VALUE + value_size(i)).sum(),
        Value::Object(map) => approx_size(map),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// How a change moves a state's [`approx_size`], counted as the change is
/// applied (so in time proportional to the change, not to the state);
/// nothing is counted when off. It also holds what is left of the change's
/// padding budget ([`MAX_PADDING`]).
struct Delta {
    on: bool,
    added: usize,
    removed: usize,
    padding_left: usize,
}

impl Default for Delta {
    fn default() -> Self {
        Self {
            on: false,
            added: 0,
            removed: 0,
            padding_left: MAX_PADDING,
        }
    }
}

impl Delta {
    fn counting() -> Self {
        Self {
            on: true,
            ..Self::default()
        }
    }

    /// A key of `key_len` bytes of a map was set to a value of `new` size,
    /// replacing `old`.
    fn field(&mut self, key_len: usize, new: usize, old: Option<&Value>) {
        if self.on {
            match old {
                None => self.added += SLOT + key_len + new,
                Some(old) => self.replaced(new, old),
            }
        }
    }

    /// An element or field now holds a value of `new` size instead of `old`.
    fn replaced(&mut self, new: usize, old: &Value) {
        if self.on {
            self.added += new;
            self.removed += value_size(old);
        }
    }

    /// `key` and its value were removed from a map.
    fn removed_field(&mut self, key: &str, old: &Value) {
        if self.on {
            self.removed += SLOT + key.len() + value_size(old);
        }
    }

    /// Nulls were appended to an array.
    fn padded(&mut self, nulls: usize) {
        if self.on {
            self.added += VALUE * nulls;
        }
    }

    /// Elements were cut off an array.
    fn cut(&mut self, items: &[Value]) {
        if self.on {
            self.removed += items.iter().map(|i| VALUE + value_size(i)).sum::<usize>();
        }
    }

    /// The size of a value, when counting.
    fn size_of(&self, v: &Value) -> usize {
        if self.on { value_size(v) } else { 0 }
    }

    /// `size` moved by what was counted.
    fn applied_to(&self, size: usize) -> usize {
        (size + self.added).saturating_sub(self.removed)
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

fn step_mut<'a>(
    value: &'a mut Value,
    segment: &str,
    create: bool,
    delta: &mut Delta,
) -> Option<&'a mut Value> {
    match value {
        Value::Object(map) => {
            if create && !map.contains_key(segment) {
                delta.field(segment.len(), MAP, None);
                map.insert(segment.to_owned(), Value::Object(Map::new()));
            }
            map.get_mut(segment)
        }
        Value::Array(items) => {
            let i = segment.parse::<usize>().ok()?;
            if create {
                pad(items, i, delta)
            } else {
                items.get_mut(i)
            }
        }
        _ => None,
    }
}

/// The most segments a patch's path may have: MongoDB nests documents at
/// most 100 levels deep. A deeper path, which no MongoDB update can carry,
/// is ignored with a warning when applied (a path of a hundred thousand
/// segments would build a state nested so deep that dropping it overflows
/// the stack); the MongoDB consumer rejects such an event instead.
pub const MAX_PATH_SEGMENTS: usize = 100;

/// Whether `path` may be applied (see [`MAX_PATH_SEGMENTS`]).
fn applicable(path: &FieldPath) -> bool {
    let ok = path.0.len() <= MAX_PATH_SEGMENTS;
    if !ok {
        tracing::warn!(
            segments = path.0.len(),
            max = MAX_PATH_SEGMENTS,
            "field path too deep to apply; change ignored"
        );
    }
    ok
}

/// The most nulls one change may pad arrays with, in all: more array
/// elements than a 16 MiB BSON document can hold (each takes at least 3
/// bytes: its type, a one-digit key and the key's NUL), so a change padding
/// more did not come from MongoDB. It bounds what one forged event can make
/// a state allocate (about 180 MB at most).
const MAX_PADDING: usize = (16 << 20) / 3;

/// Element `i` of `items`, padding the array with nulls up to it as
/// MongoDB does when a field is set past the end; `None` (and nothing
/// changed) when that would exceed what is left of the change's padding
/// budget ([`MAX_PADDING`]).
fn pad<'a>(items: &'a mut Vec<Value>, i: usize, delta: &mut Delta) -> Option<&'a mut Value> {
    if let Some(beyond) = i.checked_sub(items.len()) {
        // `beyond + 1` nulls are needed; compared first, so nothing overflows.
        if beyond >= delta.padding_left {
            tracing::warn!(
                index = i,
                budget = delta.padding_left,
                "array index past what the change may pad; set ignored"
            );
            return None;
        }
        delta.padding_left -= beyond + 1;
        delta.padded(beyond + 1);
        items.resize(i + 1, Value::Null);
    }
    items.get_mut(i)
}

/// Walks to the parent of the path's last segment. With `create`, missing
/// intermediate documents are created (as MongoDB does for `$set`).
fn parent_mut<'a>(
    state: &'a mut State,
    path: &[String],
    create: bool,
    delta: &mut Delta,
) -> Option<&'a mut Value> {
    let (first, rest) = path.split_first()?;
    if create && !state.contains_key(first) {
        delta.field(first.len(), MAP, None);
        state.insert(first.clone(), Value::Object(Map::new()));
    }
    let mut current = state.get_mut(first)?;
    for segment in rest {
        current = step_mut(current, segment, create, delta)?;
    }
    Some(current)
}

/// Sets `key` of `map` to `value` (in place of its value, if it has one),
/// counting what that adds and replaces.
fn insert(map: &mut Map<String, Value>, key: String, value: Value, delta: &mut Delta) {
    let (key_len, size) = (key.len(), delta.size_of(&value));
    let old = map.insert(key, value);
    delta.field(key_len, size, old.as_ref());
}

fn set(state: &mut State, path: &FieldPath, value: Value, delta: &mut Delta) {
    if !applicable(path) {
        return;
    }
    match path.0.split_last() {
        None => {}
        Some((last, [])) => insert(state, last.clone(), value, delta),
        Some((last, parents)) => {
            if let Some(parent) = parent_mut(state, parents, true, delta) {
                match parent {
                    Value::Object(map) => insert(map, last.clone(), value, delta),
                    Value::Array(items) => {
                        let size = delta.size_of(&value);
                        if let Some(slot) = last.parse::<usize>().ok().and_then(|i| pad(items, i, delta)) {
                            let old = std::mem::replace(slot, value);
                            delta.replaced(size, &old);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn remove(state: &mut State, path: &FieldPath, delta: &mut Delta) {
    if !applicable(path) {
        return;
    }
    match path.0.split_last() {
        None => {}
        Some((last, [])) => {
            if let Some(old) = state.shift_remove(last) {
                delta.removed_field(last, &old);
            }
        }
        Some((last, parents)) => {
            if let Some(parent) = parent_mut(state, parents, false, delta) {
                match parent {
                    Value::Object(map) => {
                        if let Some(old) = map.shift_remove(last) {
                            delta.removed_field(last, &old);
                        }
                    }
                    // `$unset` of an array element sets it to null.
                    Value::Array(items) => {
                        if let Some(item) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                            let old = std::mem::take(item);
                            delta.replaced(0, &old);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn truncate(state: &mut State, path: &FieldPath, len: usize, delta: &mut Delta) {
    if !applicable(path) {
        return;
    }
    let target = match path.0.split_last() {
        None => None,
        Some((last, [])) => state.get_mut(last),
        Some((last, parents)) => {
            parent_mut(state, parents, false, delta).and_then(|p| step_mut(p, last, false, delta))
        }
    };
    if let Some(Value::Array(items)) = target
        && items.len() > len
    {
        delta.cut(&items[len..]);
        items.truncate(len);
    }
}

/// Applies one change to a record's state; `None` is "does not exist".
///
/// A [`Change::Patch`] or [`Change::Merge`] on a record that does not exist
/// (its insert was never seen, e.g. a change stream opened mid-life) applies
/// to an empty document, so the fields that are known are not lost.
///
/// A patch that sets an array element past the end pads the array with
/// nulls, as MongoDB does, up to 5,592,405 nulls per change in all (more
/// array elements than a 16 MiB MongoDB document can hold): a set that
/// would pad past that is ignored, with a warning logged, instead of
/// growing arrays without bound; so is a path of more than
/// [`MAX_PATH_SEGMENTS`] segments.
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
    let delta = &mut Delta::default();
    match change {
        Change::Full(full) => Some(full.clone()),
        Change::Delete => None,
        Change::Merge(columns) => Some(merge(
            state,
            columns.iter().map(|(n, v)| (n.clone(), v.clone())),
            delta,
        )),
        Change::Patch(patch) => Some(patch_state(
            state,
            patch,
            patch.updated.iter().map(|(p, v)| (p, v.clone())),
            delta,
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
    apply_counted(state, change, &mut Delta::default())
}

/// [`apply_owned`] to a state whose [`approx_size`] is `size` (any value
/// when `state` is `None`), with the new state's: what the change adds and
/// removes is weighed as it is applied, so a small change to a large state
/// is weighed in time proportional to the change, not to the state.
pub(crate) fn apply_owned_sized(state: Option<State>, size: usize, change: Change) -> (Option<State>, usize) {
    // A full state is weighed whole; a merge or patch from the state it
    // applies to (an empty document when there is none).
    let full = match &change {
        Change::Full(full) => Some(approx_size(full)),
        Change::Delete => Some(0),
        Change::Merge(_) | Change::Patch(_) => None,
    };
    let size = if state.is_some() { size } else { MAP };
    let mut delta = Delta::counting();
    let state = apply_counted(state, change, &mut delta);
    (state, full.unwrap_or_else(|| delta.applied_to(size)))
}

fn apply_counted(state: Option<State>, change: Change, delta: &mut Delta) -> Option<State> {
    match change {
        Change::Full(full) => Some(full),
        Change::Delete => None,
        Change::Merge(columns) => Some(merge(state, columns, delta)),
        Change::Patch(mut patch) => {
            let updated = std::mem::take(&mut patch.updated);
            Some(patch_state(state, &patch, updated, delta))
        }
    }
}

/// `columns` written over `state` (or over an empty document).
fn merge(
    state: Option<State>,
    columns: impl IntoIterator<Item = (String, Value)>,
    delta: &mut Delta,
) -> State {
    let mut state = state.unwrap_or_default();
    for (name, value) in columns {
        insert(&mut state, name, value, delta);
    }
    state
}

/// A patch's truncations and removals, then `updated`, applied to `state`
/// (or to an empty document).
fn patch_state<P: std::borrow::Borrow<FieldPath>>(
    state: Option<State>,
    patch: &Patch,
    updated: impl IntoIterator<Item = (P, Value)>,
    delta: &mut Delta,
) -> State {
    let mut state = state.unwrap_or_default();
    for (path, len) in &patch.truncated {
        truncate(&mut state, path, *len, delta);
    }
    for path in &patch.removed {
        remove(&mut state, path, delta);
    }
    for (path, value) in updated {
        set(&mut state, path.borrow(), value, delta);
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

    mod sized {
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        use super::super::*;

        /// Keys and path segments from a small set, some of them array
        /// indexes, so that changes often meet what the state holds.
        const NAMES: &str = "[abc0-2]|5";

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<i64>().prop_map(Value::from),
                "[xyz]{0,20}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 32, 5, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::vec((NAMES, inner), 0..5)
                        .prop_map(|e| Value::Object(e.into_iter().collect::<Map<_, _>>())),
                ]
            })
        }

        fn state() -> impl Strategy<Value = State> {
            prop::collection::vec((NAMES, value()), 0..6).prop_map(|e| e.into_iter().collect())
        }

        fn path() -> impl Strategy<Value = FieldPath> {
            prop::collection::vec(NAMES, 1..4).prop_map(FieldPath::from_segments)
        }

        fn change() -> impl Strategy<Value = Change> {
            prop_oneof![
                state().prop_map(Change::Full),
                state().prop_map(Change::Merge),
                Just(Change::Delete),
                (
                    prop::collection::vec((path(), 0usize..4), 0..3),
                    prop::collection::vec(path(), 0..3),
                    prop::collection::vec((path(), value()), 0..4),
                )
                    .prop_map(|(truncated, removed, updated)| {
                        Change::Patch(Patch {
                            truncated,
                            removed,
                            updated,
                        })
                    }),
            ]
        }

        proptest! {
            /// Weighing a fold by what the change adds and removes gives
            /// the weight of the state it leads to, and the same state.
            #[test]
            fn a_fold_weighs_its_state_as_a_walk_of_it_does(
                before in proptest::option::of(state()),
                changes in prop::collection::vec(change(), 1..5),
            ) {
                let mut state = before;
                let mut size = state.as_ref().map_or(0, approx_size);
                for change in changes {
                    let expected = apply(state.clone(), &change);
                    let (next, next_size) = apply_owned_sized(state, size, change);
                    prop_assert_eq!(&next, &expected);
                    prop_assert_eq!(next_size, next.as_ref().map_or(0, approx_size));
                    (state, size) = (next, next_size);
                }
            }
        }
    }

    /// A hostile array index (past what a MongoDB document can hold) is
    /// ignored: no giant array, no panic, and the rest of the change is
    /// applied.
    #[test]
    fn an_array_index_no_document_can_hold_is_ignored() {
        let state = obj(json!({"arr": [1], "n": 0}));
        let patch = Patch {
            updated: vec![
                (FieldPath::parse("arr.18446744073709551615"), json!(1)),
                (FieldPath::parse("arr.4000000000"), json!(1)),
                (FieldPath::parse("arr.4000000000.deep"), json!(1)),
                (FieldPath::parse("arr.2"), json!(3)),
                (FieldPath::parse("n"), json!(1)),
            ],
            ..Patch::default()
        };
        let (out, size) = apply_owned_sized(Some(state.clone()), approx_size(&state), Change::Patch(patch));
        let out = out.unwrap();
        assert_eq!(Value::Object(out.clone()), json!({"arr": [1, null, 3], "n": 1}));
        assert_eq!(size, approx_size(&out));
        // The bound is on the change's padding in all, not per index: once
        // one array took the whole budget, another cannot pad one null.
        let path = |p: &str| FieldPath::parse(p);
        let patch = Patch {
            updated: vec![
                (path("x"), json!([[], []])),
                (path(&format!("x.1.{}", MAX_PADDING)), json!(1)),
                (path(&format!("x.1.{}", MAX_PADDING - 1)), json!(1)),
                (path("x.0.0"), json!(1)),
            ],
            ..Patch::default()
        };
        let out = apply(None, &Change::Patch(patch)).unwrap();
        let lens: Vec<usize> = out["x"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_array().unwrap().len())
            .collect();
        assert_eq!(lens, [0, MAX_PADDING]);
    }

    /// The padding budget is spent across the sets of one change and
    /// refreshed for the next.
    #[test]
    fn the_padding_budget_is_per_change() {
        let mut delta = Delta {
            padding_left: 10,
            ..Delta::default()
        };
        let mut items = Vec::new();
        assert!(pad(&mut items, 5, &mut delta).is_some());
        assert_eq!((items.len(), delta.padding_left), (6, 4));
        assert!(pad(&mut items, 7, &mut delta).is_some());
        assert_eq!((items.len(), delta.padding_left), (8, 2));
        assert!(pad(&mut items, 3, &mut delta).is_some(), "no padding needed");
        assert!(pad(&mut items, 10, &mut delta).is_none(), "3 more nulls, 2 left");
        assert!(pad(&mut items, usize::MAX, &mut delta).is_none());
        assert_eq!((items.len(), delta.padding_left), (8, 2));
        assert_eq!(Delta::default().padding_left, MAX_PADDING);
    }

    /// A path deeper than any MongoDB document nests is ignored, so a
    /// hostile event cannot build a state too deep to drop.
    #[test]
    fn a_path_deeper_than_any_document_is_ignored() {
        let deep = FieldPath::parse(&vec!["a"; 200_000].join("."));
        let at_limit = FieldPath::from_segments(vec!["b".to_owned(); MAX_PATH_SEGMENTS]);
        let patch = Patch {
            truncated: vec![(deep.clone(), 0)],
            removed: vec![deep.clone()],
            updated: vec![(deep, json!(1)), (at_limit.clone(), json!(2))],
        };
        let (out, size) = apply_owned_sized(None, 0, Change::Patch(patch));
        let out = out.unwrap();
        assert!(!out.contains_key("a"));
        assert_eq!(at_limit.lookup(&out), Some(&json!(2)));
        assert_eq!(size, approx_size(&out));
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
